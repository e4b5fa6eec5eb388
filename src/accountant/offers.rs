//! Consent-based hand-over: the owner offers its charge to one receiver, which accepts with the
//! ticket and the buffer it received. The tickets themselves are in [`crate::offers`].

use std::time::{Duration, Instant};

use super::budget::check_kernel_budget_on_move;
use super::Accountant;
use crate::error::{Error, Result};
use crate::identity::Caller;
use crate::kernel::dmabuf::DmaBufInfo;
use crate::ledger::{BufferInfo, Event, LedgerError};
use crate::permission::Op;

impl Accountant {
    /// The owner offers its charge for `buffer` to `to_pid`; returns the ticket.
    pub fn offer(&self, caller: &Caller, buffer: &DmaBufInfo, to_pid: u32, ttl: Duration) -> Result<u64> {
        self.permit(caller, Op::Offer)?;
        if to_pid == caller.pid {
            return Err(Error::InvalidArgument("cannot offer a buffer to yourself".into()));
        }
        let me = self.processes.resolve_caller(caller)?;
        let to = self.processes.peek(to_pid)?;
        let mut state = self.lock();
        let b = state.ledger.buffer(buffer.inode).ok_or(LedgerError::UnknownBuffer(buffer.inode))?;
        if !state.owned_by(&b, &me) {
            return Err(Error::NotOwner { caller: caller.pid, inode: buffer.inode });
        }
        state.tickets.offer(buffer.inode, me, to, ttl, Instant::now())
    }

    /// The receiver redeems a ticket with the buffer fd it received. If it already pays for the
    /// buffer, nothing changes (no double charge).
    pub fn accept(&self, caller: &Caller, ticket: u64, buffer: &DmaBufInfo) -> Result<BufferInfo> {
        self.permit(caller, Op::Accept)?;
        let receiver = self.processes.resolve_caller(caller)?;
        self.prepare_owner(&receiver);
        let budget = self.kernel_charges_heap(&buffer.exporter).then(|| self.kernel_budget(&receiver)).flatten();
        self.change(|state| {
            let offer = state.tickets.check(ticket, &receiver, buffer.inode, Instant::now())?;
            let current = state.ledger.buffer(buffer.inode).ok_or(LedgerError::UnknownBuffer(buffer.inode))?;
            let from_offerer = state.owned_by(&current, &offer.from);
            let already_mine = state.owned_by(&current, &receiver);
            if !from_offerer && !already_mine {
                state.tickets.consume(ticket);
                return Err(Error::BadTicket { ticket, reason: "the charge changed hands since the offer" });
            }
            state.follow_migration(&receiver)?;
            if !already_mine || current.cgroup != receiver.cgroup {
                check_kernel_budget_on_move(state, budget.as_ref(), buffer.inode, &current.cgroup, &receiver)?;
                state.track(receiver.clone())?;
                state.apply(Event::Transferred {
                    inode: buffer.inode,
                    pid: receiver.pid,
                    start: receiver.start_time,
                    cgroup: receiver.cgroup.clone(),
                })?;
            }
            state.commit()?;
            state.tickets.consume(ticket);
            state.receipts.remove(&buffer.inode);
            Ok(state.ledger.buffer(buffer.inode).expect("charged"))
        })
    }

    pub fn open_offers(&self) -> usize {
        self.lock().tickets.len()
    }
}
