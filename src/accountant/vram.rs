//! VRAM operations reported by the GPU driver's userspace (trusted): eviction to system memory,
//! restore, pins, and which buffers to evict first.

use super::Accountant;
use crate::error::Result;
use crate::identity::Caller;
use crate::ledger::Inode;

impl Accountant {
    pub fn evict(&self, caller: &Caller, inode: Inode) -> Result<()> {
        self.require_trusted(caller, "report eviction")?;
        self.change(|state, events| {
            events.push(state.ledger.evict(inode)?);
            Ok(())
        })
    }

    pub fn restore(&self, caller: &Caller, inode: Inode) -> Result<()> {
        self.require_trusted(caller, "report restore")?;
        self.change(|state, events| {
            events.push(state.ledger.restore(inode)?);
            Ok(())
        })
    }

    pub fn pin(&self, caller: &Caller, inode: Inode, pin: bool) -> Result<()> {
        self.require_trusted(caller, "pin or unpin")?;
        self.change(|state, events| {
            events.push(if pin { state.ledger.pin(inode)? } else { state.ledger.unpin(inode)? });
            Ok(())
        })
    }

    pub fn eviction_advice(&self, region: &str, bytes: u64) -> Result<Vec<Inode>> {
        Ok(self.lock().ledger.eviction_advice(region, bytes)?)
    }
}
