//! Heap classes decide which pools a buffer pays into. This is the one place that encodes the
//! uneven accounting of device memory: system-heap pages are ordinary memory, CMA is ordinary
//! memory *and* a scarce region, carve-outs sit outside the page allocator, and vram is a region
//! while resident but ordinary memory once evicted.

use serde::{Deserialize, Serialize};

/// Index of a pool: 0 is memcg, every dmem region gets its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PoolId(pub u16);

impl PoolId {
    pub const MEMCG: PoolId = PoolId(0);
}

/// Name of the memcg pool in reports, events and config.
pub const MEMCG_POOL: &str = "memcg";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HeapId(pub u16);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeapClass {
    /// Page-allocator memory (dma-heap `system`): memcg only.
    System,
    /// A contiguous-memory area: struct-page memory (memcg) and a scarce region (dmem); always pinned.
    Cma,
    /// Reserved memory outside the page allocator (secure video, modem): dmem only.
    Carveout,
    /// Device memory: dmem while resident, the owner's memcg once evicted to system memory.
    Vram,
}

impl HeapClass {
    pub fn name(self) -> &'static str {
        match self {
            HeapClass::System => "system",
            HeapClass::Cma => "cma",
            HeapClass::Carveout => "carveout",
            HeapClass::Vram => "vram",
        }
    }

    /// Whether buffers of this class need a dmem region to charge.
    pub fn needs_region(self) -> bool {
        !matches!(self, HeapClass::System)
    }

    /// Buffers that cannot move: CMA pages are pinned for the buffer's lifetime.
    pub fn always_pinned(self) -> bool {
        matches!(self, HeapClass::Cma)
    }
}

/// A heap the ledger knows: its name (as under /dev/dma_heap or the exporter name), its class,
/// and the dmem region it draws from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeapSpec {
    pub name: String,
    pub class: HeapClass,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// The pools one buffer is charged to at a moment: at most memcg and one region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSet {
    pools: [Option<PoolId>; 2],
}

impl PoolSet {
    /// No pools: a change that only touches pin counters.
    pub const NONE: PoolSet = PoolSet { pools: [None, None] };

    pub fn of(class: HeapClass, region: Option<PoolId>, evicted: bool) -> PoolSet {
        let pools = match class {
            HeapClass::System => [Some(PoolId::MEMCG), None],
            HeapClass::Cma => [Some(PoolId::MEMCG), region],
            HeapClass::Carveout => [region, None],
            HeapClass::Vram if evicted => [Some(PoolId::MEMCG), None],
            HeapClass::Vram => [region, None],
        };
        PoolSet { pools }
    }

    pub fn iter(&self) -> impl Iterator<Item = PoolId> + '_ {
        self.pools.iter().flatten().copied()
    }

    pub fn contains(&self, pool: PoolId) -> bool {
        self.iter().any(|p| p == pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools(class: HeapClass, evicted: bool) -> Vec<PoolId> {
        PoolSet::of(class, Some(PoolId(3)), evicted).iter().collect()
    }

    #[test]
    fn heap_classes_charge_the_documented_pools() {
        assert_eq!(pools(HeapClass::System, false), vec![PoolId::MEMCG]);
        assert_eq!(pools(HeapClass::Cma, false), vec![PoolId::MEMCG, PoolId(3)]);
        assert_eq!(pools(HeapClass::Carveout, false), vec![PoolId(3)]);
        assert_eq!(pools(HeapClass::Vram, false), vec![PoolId(3)]);
        assert_eq!(pools(HeapClass::Vram, true), vec![PoolId::MEMCG]);
    }
}
