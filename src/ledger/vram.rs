//! The vram state machine: a vram buffer is resident (charged to its dmem region) or evicted
//! (charged to its owner's memcg), and pinned only while resident. Eviction already happened in
//! the driver and is never refused; restoring and pinning need room and may be.

use super::buffer::{Buffer, EVICTED, PINNED};
use super::charge::Charge;
use super::{HeapClass, Inode, Ledger, LedgerError, PoolSet, Result};

impl Ledger {
    fn vram_buffer(&self, inode: Inode) -> Result<Buffer> {
        let b = *self.buffers.get(inode).ok_or(LedgerError::UnknownBuffer(inode))?;
        if self.registry.heap(b.heap).spec.class != HeapClass::Vram {
            return Err(LedgerError::InvalidState {
                inode,
                reason: "only vram buffers can be evicted, restored, pinned or unpinned",
            });
        }
        Ok(b)
    }

    /// Eviction already happened in the driver: dmem is released and the owner's memcg charged
    /// without refusal (excess shows in `max_events`). Only a memcg counter that would overflow
    /// refuses it.
    pub(super) fn do_evict(&mut self, inode: Inode) -> Result<()> {
        let b = self.vram_buffer(inode)?;
        if b.flags & EVICTED != 0 {
            return Err(LedgerError::InvalidState { inode, reason: "already evicted" });
        }
        if b.flags & PINNED != 0 {
            return Err(LedgerError::InvalidState { inode, reason: "pinned buffers cannot be evicted" });
        }
        let evicted = Buffer { flags: b.flags | EVICTED, ..b };
        let (before, after) = (self.charge_of(&b), self.charge_of(&evicted));
        self.check(self.tree.path(b.owner), &after, false).map_err(|_| LedgerError::InvalidState {
            inode,
            reason: "evicting it would overflow the owner's memcg usage",
        })?;
        self.apply_charge(&before, false);
        self.apply_charge(&after, true);
        self.buffers.set_flags(inode, evicted.flags);
        Ok(())
    }

    /// Restoring needs room in the owner's dmem: refused at `max`, and the buffer stays evicted.
    pub(super) fn do_restore(&mut self, inode: Inode) -> Result<()> {
        let b = self.vram_buffer(inode)?;
        if b.flags & EVICTED == 0 {
            return Err(LedgerError::InvalidState { inode, reason: "not evicted" });
        }
        let resident = Buffer { flags: b.flags & !EVICTED, ..b };
        let enforce = self.registry.heap(b.heap).enforce;
        let (before, after) = (self.charge_of(&b), self.charge_of(&resident));
        self.check(self.tree.path(b.owner), &after, enforce)?;
        self.apply_charge(&before, false);
        self.apply_charge(&after, true);
        self.buffers.set_flags(inode, resident.flags);
        Ok(())
    }

    pub(super) fn do_pin(&mut self, inode: Inode, pin: bool) -> Result<()> {
        let b = self.vram_buffer(inode)?;
        if (b.flags & PINNED != 0) == pin {
            return Err(LedgerError::InvalidState { inode, reason: if pin { "already pinned" } else { "not pinned" } });
        }
        if b.flags & EVICTED != 0 {
            return Err(LedgerError::InvalidState { inode, reason: "evicted buffers cannot be pinned" });
        }
        let pinned = Buffer { flags: b.flags | PINNED, ..b };
        // Only the pin counters change: the bytes stay in the region either way.
        let charge = Charge { pools: PoolSet::NONE, ..self.charge_of(&pinned) };
        if pin {
            self.check(self.tree.path(b.owner), &charge, true)?;
        }
        self.apply_charge(&charge, pin);
        self.buffers.set_flags(inode, if pin { b.flags | PINNED } else { b.flags & !PINNED });
        Ok(())
    }
}
