//! Charging a buffer to its owner (the caller, or on a trusted allocator's word another process),
//! releasing it, and the trusted push of a charge to another process, with the holder rule: a
//! push or an on-behalf charge is a receipt until the receiver is seen holding the buffer, and
//! an owner cannot release a buffer it still holds.

use std::sync::LazyLock;
use std::time::Instant;

use super::budget::{check_kernel_budget, check_kernel_budget_on_move};
use super::cgroup_path::{in_subtree, owner_level};
use super::state::{Receipt, State};
use super::Accountant;
use crate::error::{Error, Result};
use crate::identity::{Caller, Process};
use crate::kernel::dmabuf::DmaBufInfo;
use crate::ledger::{BufferInfo, Event, Inode, LedgerError};
use crate::permission::Op;

impl Accountant {
    fn heap_of(&self, state: &State, buffer: &DmaBufInfo) -> Result<String> {
        match state.ledger.heap(&buffer.exporter) {
            Some(_) => Ok(buffer.exporter.clone()),
            None => Err(Error::UnknownHeap(buffer.exporter.clone())),
        }
    }

    /// The receiver of a push or an on-behalf charge: a live process with memory of its own,
    /// other than init and the service itself. A cached process was a caller or a receiver
    /// already, so its /proc stat is read only the first time.
    fn receiver(&self, pid: u32) -> Result<Process> {
        // The service never forks, so its pid is read once (getpid is a system call).
        static SERVICE: LazyLock<u32> = LazyLock::new(std::process::id);
        let never = pid == 1 || pid == *SERVICE;
        if !never {
            if let Some(p) = self.processes.cached(pid) {
                return Ok(p);
            }
        }
        if never || self.processes.is_kernel_thread(pid) {
            return Err(Error::InvalidArgument(format!(
                "pid {pid} (init, a kernel thread or the service) cannot be charged for a buffer"
            )));
        }
        self.processes.resolve(pid)
    }

    /// Charges `buffer` to the caller, or with `on_behalf` to another live process (trusted
    /// callers only; the receiver must come to hold the buffer, see [`Receipt`]). Charging the
    /// same owner twice is a no-op.
    pub fn charge(&self, caller: &Caller, buffer: &DmaBufInfo, on_behalf: Option<u32>) -> Result<BufferInfo> {
        let caller_proc = self.processes.resolve_caller(caller)?;
        let owner = match on_behalf {
            Some(pid) if pid != caller.pid => {
                self.permit(caller, Op::ChargeOnBehalf)?;
                self.receiver(pid)?
            }
            _ => {
                self.permit(caller, Op::Charge)?;
                caller_proc.clone()
            }
        };
        if buffer.size == 0 {
            return Err(Error::InvalidArgument(format!("buffer {} has size 0", buffer.inode)));
        }
        self.prepare_owner(&owner);
        let kernel_charged = self.kernel_charges_heap(&buffer.exporter);
        let budget = (kernel_charged && !in_subtree(&caller_proc.cgroup, owner_level(&owner.cgroup)))
            .then(|| self.kernel_budget(&owner))
            .flatten();
        self.change(|state| {
            let heap = self.heap_of(state, buffer)?;
            state.follow_migration(&owner)?;
            let current = state.ledger.buffer(buffer.inode);
            match current {
                Some(b) if state.owned_by(&b, &owner) => return Ok(b),
                Some(b) => {
                    return Err(LedgerError::AlreadyCharged { inode: b.inode, pid: b.pid, cgroup: b.cgroup }.into())
                }
                None => check_kernel_budget(state, budget.as_ref(), &owner, buffer.size)?,
            }
            state.track(owner.clone())?;
            state.apply(Event::Charged {
                inode: buffer.inode,
                size: buffer.size,
                heap: heap.clone(),
                pid: owner.pid,
                start: owner.start_time,
                cgroup: owner.cgroup.clone(),
            })?;
            state.commit()?;
            if kernel_charged {
                state.kernel_charged.insert(buffer.inode, caller_proc.cgroup.clone(), &state.ledger);
            }
            if owner.pid != caller_proc.pid {
                self.expect_receipt(state, buffer.inode, caller_proc.clone(), owner.clone());
            }
            Ok(state.ledger.buffer(buffer.inode).expect("just charged"))
        })
    }

    /// Records that `receiver` must come to hold `inode` within the grace period, or the charge
    /// goes back to `giver` at the next reconcile.
    fn expect_receipt(&self, state: &mut State, inode: Inode, giver: Process, receiver: Process) {
        let due = Instant::now() + self.receipt_grace();
        state.receipts.insert(inode, Receipt { giver, receiver, due });
    }

    /// Releases a charge: its owner, once it no longer holds the buffer, or a trusted caller.
    /// An owner that still holds the buffer is refused (INVALID_STATE): releasing would let it
    /// keep the memory while nobody pays for it. Only an owner's fds and mappings are read
    /// (before locking); should the buffer become the caller's meanwhile, they are read then.
    pub fn release(&self, caller: &Caller, inode: Inode) -> Result<()> {
        let me = self.processes.resolve_caller(caller)?;
        let owns = |state: &State| state.ledger.buffer(inode).is_some_and(|b| state.owned_by(&b, &me));
        let mut holds: Option<bool> = None;
        loop {
            if holds.is_none() && owns(&self.lock()) {
                let dev = crate::kernel::dmabuf::dmabuf_dev();
                holds = Some(self.processes.procfs().holds(me.pid, inode, dev).unwrap_or(true));
            }
            let released = self.change(|state| {
                let b = state.ledger.buffer(inode).ok_or(LedgerError::UnknownBuffer(inode))?;
                if state.owned_by(&b, &me) {
                    self.permit(caller, Op::ReleaseOwn)?;
                    match holds {
                        None => return Ok(false),
                        Some(true) => return Err(Error::StillHeld { pid: me.pid, inode }),
                        Some(false) => {}
                    }
                } else {
                    self.permit(caller, Op::ReleaseOthers)
                        .map_err(|_| Error::NotOwner { caller: caller.pid, inode })?;
                }
                state.apply(Event::Released { inode })?;
                state.commit()?;
                state.tickets.forget_buffer(inode);
                state.kernel_charged.remove(inode);
                state.receipts.remove(&inode);
                Ok(true)
            })?;
            if released {
                return Ok(());
            }
        }
    }

    /// Trusted push: the caller presented the buffer (so it holds it) and is a trusted
    /// allocator or compositor; the charge moves to `to_pid`, which must be alive and must come
    /// to hold the buffer (see [`Receipt`]).
    pub fn transfer(&self, caller: &Caller, buffer: &DmaBufInfo, to_pid: u32) -> Result<BufferInfo> {
        self.permit(caller, Op::Push)?;
        let giver = self.processes.resolve_caller(caller)?;
        let to = self.receiver(to_pid)?;
        self.prepare_owner(&to);
        let budget = self.kernel_charges_heap(&buffer.exporter).then(|| self.kernel_budget(&to)).flatten();
        self.change(|state| {
            state.follow_migration(&to)?;
            let current = state.ledger.buffer(buffer.inode).ok_or(LedgerError::UnknownBuffer(buffer.inode))?;
            let moves = !state.owned_by(&current, &to) || current.cgroup != to.cgroup;
            if moves {
                check_kernel_budget_on_move(state, budget.as_ref(), buffer.inode, &current.cgroup, &to)?;
                state.track(to.clone())?;
                state.apply(Event::Transferred {
                    inode: buffer.inode,
                    pid: to.pid,
                    start: to.start_time,
                    cgroup: to.cgroup.clone(),
                })?;
            }
            state.commit()?;
            state.tickets.forget_buffer(buffer.inode);
            if moves {
                self.expect_receipt(state, buffer.inode, giver, to);
            }
            Ok(state.ledger.buffer(buffer.inode).expect("charged"))
        })
    }
}
