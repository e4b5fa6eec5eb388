//! Eviction advice for a region under pressure, honouring dmem min/low protection the way the
//! kernel's `dmem_cgroup_state_evict_valuable()` does: first only buffers of cgroups above their
//! `low`, then those above `min`, never a cgroup at or below its `min`. Pinned buffers never move,
//! and neither does a buffer its owner's memcg budget (the eviction budget) has no room for:
//! evicted vram must have somewhere to go.

use std::collections::HashMap;

use super::{CgroupId, HeapClass, Inode, Ledger, LedgerError, PoolId, Result, UNLIMITED};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Protection {
    None,
    Low,
    Min,
}

impl Ledger {
    /// Buffers to evict from `region` to free at least `bytes`, in order. May free less when
    /// protection, pins or the owners' eviction budgets forbid more.
    pub fn eviction_advice(&self, region: &str, bytes: u64) -> Result<Vec<Inode>> {
        let pool = self
            .pool_id(region)
            .filter(|p| *p != PoolId::MEMCG)
            .ok_or_else(|| LedgerError::UnknownPool(region.to_string()))?;
        let mut candidates: Vec<(Protection, u64, Inode, CgroupId)> = self
            .buffers
            .iter()
            .filter(|(_, b)| {
                let heap = self.registry.heap(b.heap);
                heap.spec.class == HeapClass::Vram && heap.region == Some(pool) && !b.evicted() && !b.pinned()
            })
            .map(|(inode, b)| (self.protection(b.owner, pool), b.size, inode, b.owner))
            .filter(|(p, _, _, _)| *p != Protection::Min)
            .collect();
        // Unprotected before low-protected; within a class, big buffers first (fewest moves).
        candidates.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
        let mut freed = 0u64;
        let mut advice = Vec::new();
        // Bytes this advice already sends to each memcg on the way.
        let mut planned: HashMap<CgroupId, u64> = HashMap::new();
        for (_, size, inode, owner) in candidates {
            if freed >= bytes {
                break;
            }
            let path: Vec<CgroupId> = self.tree.ancestors(owner, None).collect();
            let fits = path.iter().all(|id| {
                let c = self.tree.counter(*id, PoolId::MEMCG);
                let after = c.usage.saturating_add(planned.get(id).copied().unwrap_or(0)).saturating_add(size);
                c.max == UNLIMITED || after <= c.max
            });
            if !fits {
                continue;
            }
            for id in path {
                *planned.entry(id).or_default() += size;
            }
            freed += size;
            advice.push(inode);
        }
        Ok(advice)
    }

    /// The strongest protection any cgroup on the owner's path to the root still enjoys.
    fn protection(&self, owner: CgroupId, pool: PoolId) -> Protection {
        self.tree
            .ancestors(owner, None)
            .map(|id| {
                let c = self.tree.counter(id, pool);
                if c.usage <= c.min {
                    Protection::Min
                } else if c.usage <= c.low {
                    Protection::Low
                } else {
                    Protection::None
                }
            })
            .max()
            .unwrap_or(Protection::None)
    }
}

#[cfg(test)]
mod tests {
    use crate::ledger::{HeapClass, HeapSpec, Ledger, LimitKind};

    const MIB: u64 = 1 << 20;
    const VRAM: &str = "drm/0000:03:00.0/vram0";

    #[test]
    fn advice_takes_unprotected_first_then_low_never_min_nor_pinned() {
        let mut l = Ledger::new();
        l.add_region(VRAM, 1024 * MIB).unwrap();
        l.add_heap(HeapSpec { name: "vram".into(), class: HeapClass::Vram, region: Some(VRAM.into()) }, true).unwrap();
        l.charge(1, 64 * MIB, "vram", 1, 0, "/bg/pid_1").unwrap();
        l.charge(2, 32 * MIB, "vram", 1, 0, "/bg/pid_1").unwrap();
        l.charge(3, 128 * MIB, "vram", 2, 0, "/fg/pid_2").unwrap();
        l.charge(4, 16 * MIB, "vram", 3, 0, "/sf/pid_3").unwrap();
        l.charge(5, 256 * MIB, "vram", 1, 0, "/bg/pid_1").unwrap();
        l.pin(5).unwrap();
        l.set_limit("/fg", VRAM, LimitKind::Low, 256 * MIB).unwrap();
        l.set_limit("/sf", VRAM, LimitKind::Min, 64 * MIB).unwrap();
        assert_eq!(l.eviction_advice(VRAM, 80 * MIB).unwrap(), vec![1, 2]);
        assert_eq!(l.eviction_advice(VRAM, 150 * MIB).unwrap(), vec![1, 2, 3]);
        assert_eq!(l.eviction_advice(VRAM, 10_000 * MIB).unwrap(), vec![1, 2, 3], "min-protected and pinned stay");
        assert!(l.eviction_advice("memcg", 1).is_err());
    }

    #[test]
    fn advice_stays_within_each_owners_eviction_budget_in_memcg() {
        let mut l = Ledger::new();
        l.add_region(VRAM, 1024 * MIB).unwrap();
        l.add_heap(HeapSpec { name: "vram".into(), class: HeapClass::Vram, region: Some(VRAM.into()) }, true).unwrap();
        l.add_heap(HeapSpec { name: "system".into(), class: HeapClass::System, region: None }, true).unwrap();
        // /game may keep 96 MiB of dma-bufs in RAM; 32 MiB of system-heap buffers are there already.
        l.set_limit("/game", "memcg", LimitKind::Max, 96 * MIB).unwrap();
        l.charge(1, 32 * MIB, "system", 1, 0, "/game/pid_1").unwrap();
        l.charge(2, 48 * MIB, "vram", 1, 0, "/game/pid_1").unwrap();
        l.charge(3, 32 * MIB, "vram", 1, 0, "/game/pid_1").unwrap();
        l.charge(4, 16 * MIB, "vram", 1, 0, "/game/pid_1").unwrap();
        l.charge(5, 8 * MIB, "vram", 2, 0, "/bg/pid_2").unwrap();
        // Room for 64 MiB: 2 (48) and 4 (16) fit, 3 (32) would not; /bg has no budget of its own.
        assert_eq!(l.eviction_advice(VRAM, 1024 * MIB).unwrap(), vec![2, 4, 5]);
        l.evict(2).unwrap();
        assert_eq!(l.eviction_advice(VRAM, 1024 * MIB).unwrap(), vec![4, 5], "16 MiB of room left");
    }
}
