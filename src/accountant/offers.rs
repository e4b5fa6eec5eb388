//! Consent-based hand-over: the owner offers its charge to one receiver, which accepts with the
//! ticket and the buffer it received. The tickets themselves are in [`crate::offers`].

use std::time::{Duration, Instant};

use super::Accountant;
use crate::error::{Error, Result};
use crate::identity::Caller;
use crate::kernel::dmabuf::DmaBufInfo;
use crate::ledger::{BufferInfo, LedgerError};

impl Accountant {
    /// The owner offers its charge for `buffer` to `to_pid`; returns the ticket.
    pub fn offer(&self, caller: &Caller, buffer: &DmaBufInfo, to_pid: u32, ttl: Duration) -> Result<u64> {
        if to_pid == caller.pid {
            return Err(Error::InvalidArgument("cannot offer a buffer to yourself".into()));
        }
        self.processes.resolve_caller(caller)?;
        let to = self.processes.peek(to_pid)?;
        let mut state = self.lock();
        let b = state.ledger.buffer(buffer.inode).ok_or(LedgerError::UnknownBuffer(buffer.inode))?;
        if b.pid != caller.pid {
            return Err(Error::NotOwner { caller: caller.pid, inode: buffer.inode, owner: b.pid });
        }
        state.tickets.offer(buffer.inode, caller.pid, to, ttl, Instant::now())
    }

    /// The receiver redeems a ticket with the buffer fd it received. If it already pays for the
    /// buffer, nothing changes (no double charge).
    pub fn accept(&self, caller: &Caller, ticket: u64, buffer: &DmaBufInfo) -> Result<BufferInfo> {
        let receiver = self.processes.resolve_caller(caller)?;
        self.prepare_owner(&receiver);
        self.change(|state, events| {
            let offer = state.tickets.check(ticket, &receiver, buffer.inode, Instant::now())?;
            let current = state.ledger.buffer(buffer.inode).ok_or(LedgerError::UnknownBuffer(buffer.inode))?;
            if current.pid != offer.from_pid && current.pid != receiver.pid {
                state.tickets.consume(ticket);
                return Err(Error::BadTicket { ticket, reason: "the charge changed hands since the offer" });
            }
            state.follow_migration(&receiver, events)?;
            if current.pid != receiver.pid || current.cgroup != receiver.cgroup {
                self.check_kernel_budget_on_move(state, buffer.inode, &current.cgroup, &receiver)?;
                events.push(state.ledger.transfer(buffer.inode, receiver.pid, &receiver.cgroup)?);
            }
            state.tickets.consume(ticket);
            state.track(receiver);
            Ok(state.ledger.buffer(buffer.inode).expect("charged"))
        })
    }

    pub fn open_offers(&self) -> usize {
        self.lock().tickets.len()
    }
}
