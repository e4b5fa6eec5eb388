//! VRAM operations reported by the GPU driver's userspace (trusted): eviction to system memory,
//! restore, pins, and which buffers to evict first.

use super::Accountant;
use crate::error::Result;
use crate::identity::Caller;
use crate::ledger::{Event, Inode};
use crate::permission::Op;

impl Accountant {
    pub fn evict(&self, caller: &Caller, inode: Inode) -> Result<()> {
        self.permit(caller, Op::ReportVram)?;
        self.change(|state| state.apply(Event::Evicted { inode }))
    }

    pub fn restore(&self, caller: &Caller, inode: Inode) -> Result<()> {
        self.permit(caller, Op::ReportVram)?;
        self.change(|state| state.apply(Event::Restored { inode }))
    }

    pub fn pin(&self, caller: &Caller, inode: Inode, pin: bool) -> Result<()> {
        self.permit(caller, Op::ReportVram)?;
        self.change(|state| state.apply(if pin { Event::Pinned { inode } } else { Event::Unpinned { inode } }))
    }

    pub fn eviction_advice(&self, region: &str, bytes: u64) -> Result<Vec<Inode>> {
        Ok(self.lock().ledger.eviction_advice(region, bytes)?)
    }
}
