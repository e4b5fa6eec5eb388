//! Charging a buffer to its owner (the caller, or on a trusted allocator's word another process),
//! releasing it, and the trusted push of a charge to another process.

use super::cgroup_path::{in_subtree, owner_level};
use super::state::State;
use super::Accountant;
use crate::error::{Error, Result};
use crate::identity::Caller;
use crate::kernel::dmabuf::DmaBufInfo;
use crate::ledger::{BufferInfo, Inode, LedgerError};

impl Accountant {
    fn heap_of(&self, state: &State, buffer: &DmaBufInfo) -> Result<String> {
        match state.ledger.heap(&buffer.exporter) {
            Some(_) => Ok(buffer.exporter.clone()),
            None => Err(Error::UnknownHeap(buffer.exporter.clone())),
        }
    }

    /// Charges `buffer` to the caller, or with `on_behalf` to another live process (trusted
    /// callers only). Charging the same owner twice is a no-op.
    pub fn charge(&self, caller: &Caller, buffer: &DmaBufInfo, on_behalf: Option<u32>) -> Result<BufferInfo> {
        let caller_proc = self.processes.resolve_caller(caller)?;
        let owner = match on_behalf {
            Some(pid) if pid != caller.pid => {
                self.require_trusted(caller, "charge on behalf of another process")?;
                self.processes.resolve(pid)?
            }
            _ => caller_proc.clone(),
        };
        if buffer.size == 0 {
            return Err(Error::InvalidArgument(format!("buffer {} has size 0", buffer.inode)));
        }
        self.prepare_owner(&owner);
        self.change(|state, events| {
            let heap = self.heap_of(state, buffer)?;
            state.follow_migration(&owner, events)?;
            let kernel_charged = self.policy.kernel_charges_heap(&heap);
            if kernel_charged
                && !in_subtree(&caller_proc.cgroup, owner_level(&owner.cgroup))
                && state.ledger.buffer(buffer.inode).is_none()
            {
                self.check_kernel_budget(state, &owner, buffer.size)?;
            }
            match state.ledger.charge(buffer.inode, buffer.size, &heap, owner.pid, &owner.cgroup) {
                Ok(e) => events.push(e),
                Err(LedgerError::AlreadyCharged { pid, .. }) if pid == owner.pid => {}
                Err(e) => return Err(e.into()),
            }
            if kernel_charged {
                state.kernel_payer.entry(buffer.inode).or_insert_with(|| caller_proc.cgroup.clone());
            }
            state.track(owner);
            Ok(state.ledger.buffer(buffer.inode).expect("just charged"))
        })
    }

    /// Releases a charge: its owner, or a trusted caller.
    pub fn release(&self, caller: &Caller, inode: Inode) -> Result<()> {
        self.change(|state, events| {
            let b = state.ledger.buffer(inode).ok_or(LedgerError::UnknownBuffer(inode))?;
            if b.pid != caller.pid && !self.is_trusted(caller) {
                return Err(Error::NotOwner { caller: caller.pid, inode, owner: b.pid });
            }
            events.push(state.ledger.release(inode)?);
            state.tickets.forget_buffer(inode);
            state.kernel_payer.remove(&inode);
            Ok(())
        })
    }

    /// Trusted push: the caller presented the buffer (so it holds it) and is a trusted
    /// allocator or compositor; the charge moves to `to_pid`, which must be alive.
    pub fn transfer(&self, caller: &Caller, buffer: &DmaBufInfo, to_pid: u32) -> Result<BufferInfo> {
        self.require_trusted(caller, "push a charge to another process")?;
        self.processes.resolve_caller(caller)?;
        let to = self.processes.resolve(to_pid)?;
        self.prepare_owner(&to);
        self.change(|state, events| {
            state.follow_migration(&to, events)?;
            let current = state.ledger.buffer(buffer.inode).ok_or(LedgerError::UnknownBuffer(buffer.inode))?;
            if current.pid != to.pid || current.cgroup != to.cgroup {
                self.check_kernel_budget_on_move(state, buffer.inode, &current.cgroup, &to)?;
                events.push(state.ledger.transfer(buffer.inode, to.pid, &to.cgroup)?);
            }
            state.tickets.forget_buffer(buffer.inode);
            state.track(to);
            Ok(state.ledger.buffer(buffer.inode).expect("charged"))
        })
    }
}
