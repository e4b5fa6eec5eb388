//! The charge engine: bytes moving along a chain of cgroup counters. Every operation first checks
//! the whole chain ([`Ledger::check`]) and only then changes it ([`Ledger::apply_charge`]), so a
//! refused charge, release or transfer leaves no trace.

use super::buffer::{Buffer, PINNED};
use super::{CgroupId, Inode, Ledger, LedgerError, PoolId, PoolSet, Result, StartTime};

/// One amount on one chain of cgroups: `size` bytes in `pools` (and pinned in `pin`), counted
/// from `from` up to, not including, `stop` (or up to the root when `stop` is `None`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Charge {
    pub from: CgroupId,
    pub stop: Option<CgroupId>,
    pub pools: PoolSet,
    pub pin: Option<PoolId>,
    pub size: u64,
}

impl Ledger {
    /// What `b` holds from its owner up to the root.
    pub(super) fn charge_of(&self, b: &Buffer) -> Charge {
        Charge { from: b.owner, stop: None, pools: self.pool_set(b), pin: self.pin_pool(b), size: b.size }
    }

    pub(super) fn pool_set(&self, b: &Buffer) -> PoolSet {
        self.registry.pool_set(b.heap, b.evicted())
    }

    /// The pool a buffer pins in (its region), if it is pinned.
    pub(super) fn pin_pool(&self, b: &Buffer) -> Option<PoolId> {
        if !b.pinned() || b.evicted() {
            return None;
        }
        self.registry.heap(b.heap).region
    }

    /// Checks that `charge` fits every counter (and pin counter) on its chain; `who` is the
    /// cgroup named in a refusal. With `enforce` off only an overflow is refused (observe mode,
    /// migrations and reassignments, which record what already happened).
    pub(super) fn check(&self, who: &str, charge: &Charge, enforce: bool) -> Result<()> {
        let size = charge.size;
        for pool in charge.pools.iter() {
            for id in self.tree.ancestors(charge.from, charge.stop) {
                let c = self.tree.counter(id, pool);
                if enforce && !c.fits(size) {
                    return Err(LedgerError::OverLimit {
                        cgroup: who.to_string(),
                        limit_cgroup: self.tree.path(id).to_string(),
                        pool: self.registry.pool_name(pool).to_string(),
                        size,
                        usage: c.usage,
                        max: c.max,
                    });
                }
                if c.usage.checked_add(size).is_none() {
                    return Err(LedgerError::InvalidState { inode: 0, reason: "usage would overflow" });
                }
            }
        }
        if let (Some(pool), true) = (charge.pin, enforce) {
            for id in self.tree.ancestors(charge.from, charge.stop) {
                let c = self.tree.counter(id, pool);
                if !c.pin_fits(size) {
                    return Err(LedgerError::OverPinLimit {
                        cgroup: who.to_string(),
                        limit_cgroup: self.tree.path(id).to_string(),
                        pool: self.registry.pool_name(pool).to_string(),
                        size,
                        pinned: c.pinned,
                        max: c.pin_max,
                    });
                }
            }
        }
        Ok(())
    }

    /// Adds (or with `add == false` removes) `charge` along its chain; callers checked first.
    pub(super) fn apply_charge(&mut self, charge: &Charge, add: bool) {
        let Charge { from, stop, pools, pin, size } = *charge;
        let n_pools = self.registry.pool_count();
        let chain: Vec<CgroupId> = self.tree.ancestors(from, stop).collect();
        for pool in pools.iter() {
            for &id in &chain {
                let c = self.tree.counter_mut(id, pool, n_pools);
                if add {
                    if !c.fits(size) {
                        c.max_events += 1;
                    }
                    c.add(size);
                } else {
                    c.sub(size);
                }
            }
            let c = self.tree.counter_mut(from, pool, n_pools);
            if add {
                c.local += size;
            } else {
                c.local -= size;
            }
        }
        if let Some(pool) = pin {
            for &id in &chain {
                let c = self.tree.counter_mut(id, pool, n_pools);
                if add {
                    c.pinned += size;
                } else {
                    c.pinned -= size;
                }
            }
        }
    }

    pub(super) fn do_charge(
        &mut self,
        inode: Inode,
        size: u64,
        heap: &str,
        pid: u32,
        start: StartTime,
        cgroup: &str,
    ) -> Result<()> {
        if size == 0 {
            return Err(LedgerError::ZeroSize);
        }
        let heap_id = self.registry.heap_id(heap)?;
        if let Some(b) = self.buffers.get(inode) {
            return Err(LedgerError::AlreadyCharged { inode, pid: b.pid, cgroup: self.tree.path(b.owner).to_string() });
        }
        let existing = self.tree.existing_ancestor(cgroup)?;
        let h = self.registry.heap(heap_id);
        let flags = if h.spec.class.always_pinned() { PINNED } else { 0 };
        let enforce = h.enforce;
        let b = Buffer { size, owner: existing, pid, start, heap: heap_id, flags };
        let charge = self.charge_of(&b);
        self.check(cgroup, &charge, enforce)?;
        let id = self.tree.get_or_create(cgroup, self.registry.pool_count())?;
        self.apply_charge(&Charge { from: id, ..charge }, true);
        self.buffers.insert(inode, Buffer { owner: id, ..b });
        Ok(())
    }

    pub(super) fn do_release(&mut self, inode: Inode) -> Result<()> {
        let b = self.buffers.remove(inode).ok_or(LedgerError::UnknownBuffer(inode))?;
        self.apply_charge(&self.charge_of(&b), false);
        Ok(())
    }

    /// Moves a buffer's charge. Counters shared by both sides (the common ancestors) never change,
    /// so a transfer cannot fail because source and destination were counted at once.
    pub(super) fn move_buffer(
        &mut self,
        inode: Inode,
        pid: u32,
        start: StartTime,
        cgroup: &str,
        enforce: bool,
    ) -> Result<()> {
        let b = *self.buffers.get(inode).ok_or(LedgerError::UnknownBuffer(inode))?;
        let existing = self.tree.existing_ancestor(cgroup)?;
        let lca = self.tree.lowest_common_ancestor(b.owner, existing);
        let leaving = Charge { stop: Some(lca), ..self.charge_of(&b) };
        self.check(cgroup, &Charge { from: existing, ..leaving }, enforce)?;
        let to = self.tree.get_or_create(cgroup, self.registry.pool_count())?;
        if b.owner != to {
            self.apply_charge(&leaving, false);
            self.apply_charge(&Charge { from: to, ..leaving }, true);
        }
        self.buffers.set_owner(inode, to, pid, start);
        Ok(())
    }

    pub(super) fn do_transfer(&mut self, inode: Inode, pid: u32, start: StartTime, cgroup: &str) -> Result<()> {
        let b = self.buffers.get(inode).ok_or(LedgerError::UnknownBuffer(inode))?;
        let enforce = self.registry.heap(b.heap).enforce;
        self.move_buffer(inode, pid, start, cgroup, enforce)
    }

    /// The process already moved in the kernel; the ledger follows without refusing (the move
    /// cannot be undone), counting any excess in `max_events`.
    pub(super) fn do_migrate(&mut self, pid: u32, cgroup: &str) -> Result<()> {
        self.tree.get_or_create(cgroup, self.registry.pool_count())?;
        for inode in self.buffers.of_pid(pid) {
            let start = self.buffers.get(inode).expect("listed above").start;
            self.move_buffer(inode, pid, start, cgroup, false)?;
        }
        Ok(())
    }
}
