//! The pools and heaps the ledger knows: memcg plus one pool per dmem region (with its capacity),
//! and each heap with its class, its region and whether over-limit charges are refused.

use std::collections::HashMap;

use super::{HeapId, HeapSpec, LedgerError, PoolId, PoolSet, Result, MEMCG_POOL};

#[derive(Debug)]
pub(super) struct Heap {
    pub spec: HeapSpec,
    pub region: Option<PoolId>,
    pub enforce: bool,
}

#[derive(Debug)]
pub(super) struct Registry {
    pools: Vec<String>,
    capacities: Vec<u64>,
    pool_ids: HashMap<String, PoolId>,
    heaps: Vec<Heap>,
    heap_ids: HashMap<String, HeapId>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry {
            pools: vec![MEMCG_POOL.to_string()],
            capacities: vec![0],
            pool_ids: HashMap::from([(MEMCG_POOL.to_string(), PoolId::MEMCG)]),
            heaps: Vec::new(),
            heap_ids: HashMap::new(),
        }
    }

    pub fn pool_id(&self, name: &str) -> Option<PoolId> {
        self.pool_ids.get(name).copied()
    }

    pub fn pool_name(&self, pool: PoolId) -> &str {
        &self.pools[pool.0 as usize]
    }

    /// How many pools there are, memcg included: the length of every node's counters.
    pub fn pool_count(&self) -> usize {
        self.pools.len()
    }

    pub fn pool_names(&self) -> &[String] {
        &self.pools
    }

    pub fn capacity(&self, pool: PoolId) -> u64 {
        self.capacities[pool.0 as usize]
    }

    /// Pool names with their capacity (0 = unknown), memcg first.
    pub fn pools(&self) -> impl Iterator<Item = (PoolId, &str, u64)> + '_ {
        self.pools
            .iter()
            .zip(&self.capacities)
            .enumerate()
            .map(|(i, (name, cap))| (PoolId(i as u16), name.as_str(), *cap))
    }

    pub fn heap_id(&self, name: &str) -> Result<HeapId> {
        self.heap_ids.get(name).copied().ok_or_else(|| LedgerError::UnknownHeap(name.to_string()))
    }

    pub fn heap(&self, id: HeapId) -> &Heap {
        &self.heaps[id.0 as usize]
    }

    pub fn heap_named(&self, name: &str) -> Option<&Heap> {
        self.heap_ids.get(name).map(|id| self.heap(*id))
    }

    pub fn heaps(&self) -> impl Iterator<Item = &Heap> + '_ {
        self.heaps.iter()
    }

    /// The pools a buffer of `heap` is charged to, resident or evicted.
    pub fn pool_set(&self, heap: HeapId, evicted: bool) -> PoolSet {
        let heap = self.heap(heap);
        PoolSet::of(heap.spec.class, heap.region, evicted)
    }

    /// Adds a region, or sets the capacity of a known one (memcg included).
    pub fn add_region(&mut self, region: &str, capacity: u64) -> Result<()> {
        if region.is_empty() || region.chars().any(|c| c.is_whitespace()) {
            return Err(LedgerError::UnknownPool(region.to_string()));
        }
        if let Some(id) = self.pool_id(region) {
            self.capacities[id.0 as usize] = capacity;
            return Ok(());
        }
        let id = PoolId(u16::try_from(self.pools.len()).map_err(|_| LedgerError::TooMany {
            what: "region",
            name: region.to_string(),
            max: u16::MAX as usize + 1,
        })?);
        self.pools.push(region.to_string());
        self.capacities.push(capacity);
        self.pool_ids.insert(region.to_string(), id);
        Ok(())
    }

    /// Adds a heap or updates a known one; `in_use` says whether a heap has live buffers, which
    /// forbids changing its class or region.
    pub fn add_heap(&mut self, spec: &HeapSpec, enforce: bool, in_use: impl Fn(HeapId) -> bool) -> Result<()> {
        let region = match (&spec.region, spec.class.needs_region()) {
            // memcg is not a dmem region: a CMA heap "in" memcg would charge memcg twice.
            (Some(r), true) if self.pool_id(r) == Some(PoolId::MEMCG) => {
                return Err(LedgerError::HeapNeedsRegion { heap: spec.name.clone(), class: spec.class.name() })
            }
            (Some(r), true) => Some(self.pool_id(r).ok_or_else(|| LedgerError::UnknownPool(r.clone()))?),
            (None, true) => {
                return Err(LedgerError::HeapNeedsRegion { heap: spec.name.clone(), class: spec.class.name() })
            }
            (_, false) => None,
        };
        if let Some(id) = self.heap_ids.get(&spec.name) {
            let heap = &mut self.heaps[id.0 as usize];
            if heap.spec != *spec {
                if in_use(*id) {
                    return Err(LedgerError::HeapRedefined(spec.name.clone()));
                }
                heap.spec = spec.clone();
                heap.region = region;
            }
            heap.enforce = enforce;
            return Ok(());
        }
        let id = HeapId(u16::try_from(self.heaps.len()).map_err(|_| LedgerError::TooMany {
            what: "heap",
            name: spec.name.clone(),
            max: u16::MAX as usize + 1,
        })?);
        self.heaps.push(Heap { spec: spec.clone(), region, enforce });
        self.heap_ids.insert(spec.name.clone(), id);
        Ok(())
    }
}
