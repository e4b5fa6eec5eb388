//! The ledger: who pays for which buffer, in which pool, under which limits. Pure data, no I/O.
//!
//! Cgroups form a tree of [`Counter`]s per pool; a charge walks from the owner up to the root and
//! is checked completely before anything is added, so a refused operation leaves no trace. Every
//! mutation is an [`Event`] applied by [`Ledger::apply`], which is what the journal replays.
//! The ledger is plain data (`Send + Sync`); the service shares it behind a mutex.

mod counter;
mod error;
mod event;
mod evict;
mod heap;

use std::collections::HashMap;

pub use counter::{Counter, LimitKind, UNLIMITED};
pub use error::LedgerError;
pub use event::{Event, Inode};
pub use heap::{HeapClass, HeapId, HeapSpec, PoolId, PoolSet, MEMCG_POOL};

pub type Result<T> = std::result::Result<T, LedgerError>;

/// Index of a cgroup node. Indices of removed cgroups are reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CgroupId(u32);

const ROOT: CgroupId = CgroupId(0);

#[derive(Debug)]
struct Node {
    path: String,
    parent: Option<CgroupId>,
    live_children: u32,
    /// One counter per pool, indexed by `PoolId`; grown when regions are added.
    counters: Vec<Counter>,
    alive: bool,
}

#[derive(Debug)]
struct Heap {
    spec: HeapSpec,
    region: Option<PoolId>,
    enforce: bool,
}

const EVICTED: u8 = 1;
const PINNED: u8 = 2;

/// One live buffer. Kept small: there can be hundreds of thousands.
#[derive(Clone, Copy, Debug)]
struct Buffer {
    size: u64,
    owner: CgroupId,
    pid: u32,
    heap: HeapId,
    flags: u8,
}

/// A buffer as reported to callers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferInfo {
    pub inode: Inode,
    pub size: u64,
    pub heap: String,
    pub class: HeapClass,
    pub pid: u32,
    pub cgroup: String,
    pub pools: Vec<String>,
    pub evicted: bool,
    pub pinned: bool,
}

#[derive(Debug)]
pub struct Ledger {
    pools: Vec<String>,
    capacities: Vec<u64>,
    pool_ids: HashMap<String, PoolId>,
    heaps: Vec<Heap>,
    heap_ids: HashMap<String, HeapId>,
    nodes: Vec<Node>,
    node_ids: HashMap<String, CgroupId>,
    free_nodes: Vec<CgroupId>,
    buffers: HashMap<Inode, Buffer>,
    /// Per owning process: (buffers, bytes). Kept with every change so a process's usage is a
    /// lookup, not a walk over all buffers. u128: buffers in different pools may add up past u64.
    pid_totals: HashMap<u32, (u32, u128)>,
}

impl Default for Ledger {
    fn default() -> Self {
        Self::new()
    }
}

/// Walks from a cgroup up to (not including) `stop`, or to the root inclusive.
struct Ancestors<'a> {
    nodes: &'a [Node],
    next: Option<CgroupId>,
    stop: Option<CgroupId>,
}

impl Iterator for Ancestors<'_> {
    type Item = CgroupId;
    fn next(&mut self) -> Option<CgroupId> {
        let id = self.next?;
        if Some(id) == self.stop {
            return None;
        }
        self.next = self.nodes[id.0 as usize].parent;
        Some(id)
    }
}

impl Ledger {
    pub fn new() -> Ledger {
        let root = Node {
            path: "/".to_string(),
            parent: None,
            live_children: 0,
            counters: vec![Counter::default()],
            alive: true,
        };
        Ledger {
            pools: vec![MEMCG_POOL.to_string()],
            capacities: vec![0],
            pool_ids: HashMap::from([(MEMCG_POOL.to_string(), PoolId::MEMCG)]),
            heaps: Vec::new(),
            heap_ids: HashMap::new(),
            nodes: vec![root],
            node_ids: HashMap::from([("/".to_string(), ROOT)]),
            free_nodes: Vec::new(),
            buffers: HashMap::new(),
            pid_totals: HashMap::new(),
        }
    }

    /// Applies one event: the only way the ledger changes.
    pub fn apply(&mut self, event: &Event) -> Result<()> {
        match event {
            Event::RegionAdded { region, capacity } => self.do_add_region(region, *capacity),
            Event::HeapAdded { heap, enforce } => self.do_add_heap(heap, *enforce),
            Event::Charged { inode, size, heap, pid, cgroup } => self.do_charge(*inode, *size, heap, *pid, cgroup),
            Event::Released { inode } => self.do_release(*inode),
            Event::Transferred { inode, pid, cgroup } => self.do_transfer(*inode, *pid, cgroup),
            Event::Reassigned { inode, pid, cgroup } => self.move_buffer(*inode, *pid, cgroup, false),
            Event::Migrated { pid, cgroup } => self.do_migrate(*pid, cgroup),
            Event::Reparented { cgroup } => self.do_reparent(cgroup),
            Event::LimitSet { cgroup, pool, kind, value } => self.do_set_limit(cgroup, pool, *kind, *value),
            Event::Evicted { inode } => self.do_evict(*inode),
            Event::Restored { inode } => self.do_restore(*inode),
            Event::Pinned { inode } => self.do_pin(*inode, true),
            Event::Unpinned { inode } => self.do_pin(*inode, false),
        }
    }

    /// Applies `event` and hands it back for journaling when it succeeded.
    fn record(&mut self, event: Event) -> Result<Event> {
        self.apply(&event)?;
        Ok(event)
    }

    pub fn add_region(&mut self, region: &str, capacity: u64) -> Result<Event> {
        self.record(Event::RegionAdded { region: region.to_string(), capacity })
    }

    pub fn add_heap(&mut self, heap: HeapSpec, enforce: bool) -> Result<Event> {
        self.record(Event::HeapAdded { heap, enforce })
    }

    pub fn charge(&mut self, inode: Inode, size: u64, heap: &str, pid: u32, cgroup: &str) -> Result<Event> {
        self.record(Event::Charged { inode, size, heap: heap.to_string(), pid, cgroup: cgroup.to_string() })
    }

    pub fn release(&mut self, inode: Inode) -> Result<Event> {
        self.record(Event::Released { inode })
    }

    pub fn transfer(&mut self, inode: Inode, pid: u32, cgroup: &str) -> Result<Event> {
        self.record(Event::Transferred { inode, pid, cgroup: cgroup.to_string() })
    }

    pub fn reassign(&mut self, inode: Inode, pid: u32, cgroup: &str) -> Result<Event> {
        self.record(Event::Reassigned { inode, pid, cgroup: cgroup.to_string() })
    }

    pub fn migrate(&mut self, pid: u32, cgroup: &str) -> Result<Event> {
        self.record(Event::Migrated { pid, cgroup: cgroup.to_string() })
    }

    pub fn reparent(&mut self, cgroup: &str) -> Result<Event> {
        self.record(Event::Reparented { cgroup: cgroup.to_string() })
    }

    pub fn set_limit(&mut self, cgroup: &str, pool: &str, kind: LimitKind, value: u64) -> Result<Event> {
        self.record(Event::LimitSet { cgroup: cgroup.to_string(), pool: pool.to_string(), kind, value })
    }

    pub fn evict(&mut self, inode: Inode) -> Result<Event> {
        self.record(Event::Evicted { inode })
    }

    pub fn restore(&mut self, inode: Inode) -> Result<Event> {
        self.record(Event::Restored { inode })
    }

    pub fn pin(&mut self, inode: Inode) -> Result<Event> {
        self.record(Event::Pinned { inode })
    }

    pub fn unpin(&mut self, inode: Inode) -> Result<Event> {
        self.record(Event::Unpinned { inode })
    }

    // ---- queries ----

    pub fn pool_id(&self, name: &str) -> Option<PoolId> {
        self.pool_ids.get(name).copied()
    }

    pub fn pool_name(&self, pool: PoolId) -> &str {
        &self.pools[pool.0 as usize]
    }

    /// Pool names with their capacity (0 = unknown), memcg first.
    pub fn pools(&self) -> impl Iterator<Item = (PoolId, &str, u64)> + '_ {
        self.pools
            .iter()
            .zip(&self.capacities)
            .enumerate()
            .map(|(i, (name, cap))| (PoolId(i as u16), name.as_str(), *cap))
    }

    /// Heaps with their enforce flag.
    pub fn heaps(&self) -> impl Iterator<Item = (&HeapSpec, bool)> + '_ {
        self.heaps.iter().map(|h| (&h.spec, h.enforce))
    }

    pub fn heap(&self, name: &str) -> Option<(&HeapSpec, bool)> {
        self.heap_ids.get(name).map(|id| {
            let h = &self.heaps[id.0 as usize];
            (&h.spec, h.enforce)
        })
    }

    pub fn has_cgroup(&self, path: &str) -> bool {
        self.node_ids.contains_key(path)
    }

    /// Counters of a cgroup, one per pool (memcg first).
    pub fn counters(&self, cgroup: &str) -> Result<Vec<(String, Counter)>> {
        let id = *self.node_ids.get(cgroup).ok_or_else(|| LedgerError::UnknownCgroup(cgroup.to_string()))?;
        Ok(self.node_counters(id))
    }

    pub fn counter(&self, cgroup: &str, pool: &str) -> Option<Counter> {
        let id = self.node_ids.get(cgroup)?;
        let pool = self.pool_id(pool)?;
        Some(self.nodes[id.0 as usize].counters.get(pool.0 as usize).copied().unwrap_or_default())
    }

    fn node_counters(&self, id: CgroupId) -> Vec<(String, Counter)> {
        let node = &self.nodes[id.0 as usize];
        self.pools
            .iter()
            .enumerate()
            .map(|(i, name)| (name.clone(), node.counters.get(i).copied().unwrap_or_default()))
            .collect()
    }

    /// Every live cgroup path, parents before children.
    pub fn cgroups(&self) -> Vec<String> {
        let mut paths: Vec<String> = self.node_ids.keys().cloned().collect();
        paths.sort_by(|a, b| depth(a).cmp(&depth(b)).then(a.cmp(b)));
        paths
    }

    pub fn buffer(&self, inode: Inode) -> Option<BufferInfo> {
        self.buffers.get(&inode).map(|b| self.info(inode, b))
    }

    pub fn buffer_count(&self) -> usize {
        self.buffers.len()
    }

    /// All live buffers (unordered).
    pub fn buffers(&self) -> impl Iterator<Item = BufferInfo> + '_ {
        self.buffers.iter().map(|(inode, b)| self.info(*inode, b))
    }

    /// Inodes charged to a process.
    pub fn buffers_of_pid(&self, pid: u32) -> Vec<Inode> {
        let mut v: Vec<Inode> = self.buffers.iter().filter(|(_, b)| b.pid == pid).map(|(i, _)| *i).collect();
        v.sort_unstable();
        v
    }

    /// Buffers and bytes charged to a process.
    pub fn pid_totals(&self, pid: u32) -> (usize, u64) {
        self.pid_totals.get(&pid).map_or((0, 0), |(n, b)| (*n as usize, u64::try_from(*b).unwrap_or(u64::MAX)))
    }

    /// Processes that own at least one buffer.
    pub fn owner_pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.buffers.values().map(|b| b.pid).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn info(&self, inode: Inode, b: &Buffer) -> BufferInfo {
        let heap = &self.heaps[b.heap.0 as usize];
        BufferInfo {
            inode,
            size: b.size,
            heap: heap.spec.name.clone(),
            class: heap.spec.class,
            pid: b.pid,
            cgroup: self.nodes[b.owner.0 as usize].path.clone(),
            pools: self.pool_set(b).iter().map(|p| self.pool_name(p).to_string()).collect(),
            evicted: b.flags & EVICTED != 0,
            pinned: b.flags & PINNED != 0,
        }
    }

    /// The state as events that rebuild it from an empty ledger (a journal snapshot).
    pub fn to_events(&self) -> Vec<Event> {
        let mut events = Vec::new();
        for (_, name, capacity) in self.pools().skip(1) {
            events.push(Event::RegionAdded { region: name.to_string(), capacity });
        }
        if self.capacities[0] != 0 {
            events.push(Event::RegionAdded { region: MEMCG_POOL.to_string(), capacity: self.capacities[0] });
        }
        for h in &self.heaps {
            events.push(Event::HeapAdded { heap: h.spec.clone(), enforce: h.enforce });
        }
        // Evicted buffers first: each is charged resident and evicted at once, so while it is
        // replayed its region holds that one buffer, never it on top of the resident ones.
        let mut inodes: Vec<&Inode> = self.buffers.keys().collect();
        inodes.sort_unstable_by_key(|i| (self.buffers[*i].flags & EVICTED == 0, **i));
        for inode in inodes {
            let b = self.buffers[inode];
            let info = self.info(*inode, &b);
            events.push(Event::Charged {
                inode: *inode,
                size: b.size,
                heap: info.heap,
                pid: b.pid,
                cgroup: info.cgroup,
            });
            let class = self.heaps[b.heap.0 as usize].spec.class;
            if b.flags & EVICTED != 0 {
                events.push(Event::Evicted { inode: *inode });
            }
            if b.flags & PINNED != 0 && !class.always_pinned() {
                events.push(Event::Pinned { inode: *inode });
            }
        }
        // Limits last: a limit lowered below usage must not refuse the charges that preceded it.
        for path in self.cgroups() {
            let id = self.node_ids[&path];
            for (pool, c) in self.node_counters(id) {
                for kind in LimitKind::ALL {
                    if c.limit(kind) != Counter::default().limit(kind) {
                        events.push(Event::LimitSet {
                            cgroup: path.clone(),
                            pool: pool.clone(),
                            kind,
                            value: c.limit(kind),
                        });
                    }
                }
            }
        }
        events
    }

    // ---- mutations ----

    fn do_add_region(&mut self, region: &str, capacity: u64) -> Result<()> {
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

    fn do_add_heap(&mut self, spec: &HeapSpec, enforce: bool) -> Result<()> {
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
                let in_use = self.buffers.values().any(|b| b.heap == *id);
                if in_use {
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

    /// Finds or creates (with its ancestors, like `mkdir -p`) the node for `path`.
    fn cgroup(&mut self, path: &str) -> Result<CgroupId> {
        if let Some(id) = self.node_ids.get(path) {
            return Ok(*id);
        }
        if !valid_path(path) {
            return Err(LedgerError::InvalidCgroupPath(path.to_string()));
        }
        let parent_path = match path.rfind('/') {
            Some(0) => "/",
            Some(i) => &path[..i],
            None => unreachable!("valid paths start with '/'"),
        };
        let parent = self.cgroup(parent_path)?;
        let node = Node {
            path: path.to_string(),
            parent: Some(parent),
            live_children: 0,
            counters: vec![Counter::default(); self.pools.len()],
            alive: true,
        };
        let id = match self.free_nodes.pop() {
            Some(id) => {
                self.nodes[id.0 as usize] = node;
                id
            }
            None => {
                self.nodes.push(node);
                CgroupId(self.nodes.len() as u32 - 1)
            }
        };
        self.nodes[parent.0 as usize].live_children += 1;
        self.node_ids.insert(path.to_string(), id);
        Ok(id)
    }

    /// The node for `path`, or its nearest existing ancestor when the path is not yet known:
    /// nodes about to be created carry no limits, so checking from there is exact and lets a
    /// refused operation create nothing.
    fn existing_ancestor(&self, path: &str) -> Result<CgroupId> {
        if !valid_path(path) {
            return Err(LedgerError::InvalidCgroupPath(path.to_string()));
        }
        let mut p = path;
        loop {
            if let Some(id) = self.node_ids.get(p) {
                return Ok(*id);
            }
            p = match p.rfind('/') {
                Some(0) => "/",
                Some(i) => &p[..i],
                None => return Ok(ROOT),
            };
        }
    }

    fn counter_mut(&mut self, id: CgroupId, pool: PoolId) -> &mut Counter {
        let counters = &mut self.nodes[id.0 as usize].counters;
        if counters.len() <= pool.0 as usize {
            counters.resize(self.pools.len(), Counter::default());
        }
        &mut counters[pool.0 as usize]
    }

    fn counter_ref(&self, id: CgroupId, pool: PoolId) -> Counter {
        self.nodes[id.0 as usize].counters.get(pool.0 as usize).copied().unwrap_or_default()
    }

    fn ancestors(&self, from: CgroupId, stop: Option<CgroupId>) -> Ancestors<'_> {
        Ancestors { nodes: &self.nodes, next: Some(from), stop }
    }

    fn pool_set(&self, b: &Buffer) -> PoolSet {
        let heap = &self.heaps[b.heap.0 as usize];
        PoolSet::of(heap.spec.class, heap.region, b.flags & EVICTED != 0)
    }

    /// The pool a buffer pins in (its region), if it is pinned.
    fn pin_pool(&self, b: &Buffer) -> Option<PoolId> {
        if b.flags & PINNED == 0 || b.flags & EVICTED != 0 {
            return None;
        }
        self.heaps[b.heap.0 as usize].region
    }

    /// Checks that `size` more bytes fit every counter (and pin counter) from `from` up to
    /// `stop`. With `enforce` off only an overflow is refused (observe mode, migrations and
    /// reassignments, which record what already happened).
    #[allow(clippy::too_many_arguments)] // Until the charge engine takes a `Charge` value (issue 14).
    fn check(
        &self,
        who: &str,
        from: CgroupId,
        stop: Option<CgroupId>,
        pools: PoolSet,
        pin: Option<PoolId>,
        size: u64,
        enforce: bool,
    ) -> Result<()> {
        for pool in pools.iter() {
            for id in self.ancestors(from, stop) {
                let c = self.counter_ref(id, pool);
                if enforce && !c.fits(size) {
                    return Err(LedgerError::OverLimit {
                        cgroup: who.to_string(),
                        limit_cgroup: self.nodes[id.0 as usize].path.clone(),
                        pool: self.pool_name(pool).to_string(),
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
        if let (Some(pool), true) = (pin, enforce) {
            for id in self.ancestors(from, stop) {
                let c = self.counter_ref(id, pool);
                if !c.pin_fits(size) {
                    return Err(LedgerError::OverPinLimit {
                        cgroup: who.to_string(),
                        limit_cgroup: self.nodes[id.0 as usize].path.clone(),
                        pool: self.pool_name(pool).to_string(),
                        size,
                        pinned: c.pinned,
                        max: c.pin_max,
                    });
                }
            }
        }
        Ok(())
    }

    /// Adds (or with `add == false` removes) `size` along the chain; callers checked first.
    fn apply_chain(
        &mut self,
        from: CgroupId,
        stop: Option<CgroupId>,
        pools: PoolSet,
        pin: Option<PoolId>,
        size: u64,
        add: bool,
    ) {
        let chain: Vec<CgroupId> = self.ancestors(from, stop).collect();
        for pool in pools.iter() {
            for &id in &chain {
                let c = self.counter_mut(id, pool);
                if add {
                    if !c.fits(size) {
                        c.max_events += 1;
                    }
                    c.add(size);
                } else {
                    c.sub(size);
                }
            }
            let c = self.counter_mut(from, pool);
            if add {
                c.local += size;
            } else {
                c.local -= size;
            }
        }
        if let Some(pool) = pin {
            for &id in &chain {
                let c = self.counter_mut(id, pool);
                if add {
                    c.pinned += size;
                } else {
                    c.pinned -= size;
                }
            }
        }
    }

    fn do_charge(&mut self, inode: Inode, size: u64, heap: &str, pid: u32, cgroup: &str) -> Result<()> {
        if size == 0 {
            return Err(LedgerError::ZeroSize);
        }
        let heap_id = *self.heap_ids.get(heap).ok_or_else(|| LedgerError::UnknownHeap(heap.to_string()))?;
        if let Some(b) = self.buffers.get(&inode) {
            return Err(LedgerError::AlreadyCharged {
                inode,
                pid: b.pid,
                cgroup: self.nodes[b.owner.0 as usize].path.clone(),
            });
        }
        let existing = self.existing_ancestor(cgroup)?;
        let h = &self.heaps[heap_id.0 as usize];
        let flags = if h.spec.class.always_pinned() { PINNED } else { 0 };
        let enforce = h.enforce;
        let b = Buffer { size, owner: existing, pid, heap: heap_id, flags };
        let (pools, pin) = (self.pool_set(&b), self.pin_pool(&b));
        self.check(cgroup, existing, None, pools, pin, size, enforce)?;
        let id = self.cgroup(cgroup)?;
        self.apply_chain(id, None, pools, pin, size, true);
        self.buffers.insert(inode, Buffer { owner: id, ..b });
        self.count_pid(pid, size, true);
        Ok(())
    }

    fn do_release(&mut self, inode: Inode) -> Result<()> {
        let b = self.buffers.remove(&inode).ok_or(LedgerError::UnknownBuffer(inode))?;
        self.count_pid(b.pid, b.size, false);
        let (pools, pin) = (self.pool_set(&b), self.pin_pool(&b));
        self.apply_chain(b.owner, None, pools, pin, b.size, false);
        Ok(())
    }

    fn lowest_common_ancestor(&self, a: CgroupId, b: CgroupId) -> CgroupId {
        let chain: Vec<CgroupId> = self.ancestors(a, None).collect();
        self.ancestors(b, None).find(|id| chain.contains(id)).unwrap_or(ROOT)
    }

    /// Moves a buffer's charge. Counters shared by both sides (the common ancestors) never change,
    /// so a transfer cannot fail because source and destination were counted at once.
    fn move_buffer(&mut self, inode: Inode, pid: u32, cgroup: &str, enforce: bool) -> Result<()> {
        let b = *self.buffers.get(&inode).ok_or(LedgerError::UnknownBuffer(inode))?;
        let existing = self.existing_ancestor(cgroup)?;
        let lca = self.lowest_common_ancestor(b.owner, existing);
        let (pools, pin) = (self.pool_set(&b), self.pin_pool(&b));
        self.check(cgroup, existing, Some(lca), pools, pin, b.size, enforce)?;
        let to = self.cgroup(cgroup)?;
        if b.owner != to {
            self.apply_chain(b.owner, Some(lca), pools, pin, b.size, false);
            self.apply_chain(to, Some(lca), pools, pin, b.size, true);
        }
        let entry = self.buffers.get_mut(&inode).expect("checked above");
        entry.owner = to;
        entry.pid = pid;
        if b.pid != pid {
            self.count_pid(b.pid, b.size, false);
            self.count_pid(pid, b.size, true);
        }
        Ok(())
    }

    fn count_pid(&mut self, pid: u32, size: u64, add: bool) {
        let entry = self.pid_totals.entry(pid).or_default();
        if add {
            entry.0 += 1;
            entry.1 += u128::from(size);
        } else {
            entry.0 -= 1;
            entry.1 -= u128::from(size);
            if entry.0 == 0 {
                self.pid_totals.remove(&pid);
            }
        }
    }

    fn heap_enforces(&self, inode: Inode) -> Result<bool> {
        let b = self.buffers.get(&inode).ok_or(LedgerError::UnknownBuffer(inode))?;
        Ok(self.heaps[b.heap.0 as usize].enforce)
    }

    fn do_transfer(&mut self, inode: Inode, pid: u32, cgroup: &str) -> Result<()> {
        let enforce = self.heap_enforces(inode)?;
        self.move_buffer(inode, pid, cgroup, enforce)
    }

    /// The process already moved in the kernel; the ledger follows without refusing (the move
    /// cannot be undone), counting any excess in `max_events`.
    fn do_migrate(&mut self, pid: u32, cgroup: &str) -> Result<()> {
        self.cgroup(cgroup)?;
        for inode in self.buffers_of_pid(pid) {
            self.move_buffer(inode, pid, cgroup, false)?;
        }
        Ok(())
    }

    fn do_reparent(&mut self, cgroup: &str) -> Result<()> {
        let id = *self.node_ids.get(cgroup).ok_or_else(|| LedgerError::UnknownCgroup(cgroup.to_string()))?;
        let parent = self.nodes[id.0 as usize].parent.ok_or(LedgerError::RootRemoval)?;
        if self.nodes[id.0 as usize].live_children > 0 {
            return Err(LedgerError::CgroupHasChildren(cgroup.to_string()));
        }
        for b in self.buffers.values_mut().filter(|b| b.owner == id) {
            b.owner = parent;
        }
        let counters = std::mem::take(&mut self.nodes[id.0 as usize].counters);
        for (i, c) in counters.iter().enumerate() {
            self.counter_mut(parent, PoolId(i as u16)).local += c.local;
        }
        self.nodes[id.0 as usize].alive = false;
        self.nodes[parent.0 as usize].live_children -= 1;
        self.node_ids.remove(cgroup);
        self.free_nodes.push(id);
        Ok(())
    }

    fn do_set_limit(&mut self, cgroup: &str, pool: &str, kind: LimitKind, value: u64) -> Result<()> {
        let pool_id = self.pool_id(pool).ok_or_else(|| LedgerError::UnknownPool(pool.to_string()))?;
        if kind == LimitKind::PinMax && pool_id == PoolId::MEMCG {
            return Err(LedgerError::InvalidLimit { pool: pool.to_string(), kind: kind.name() });
        }
        let id = self.cgroup(cgroup)?;
        self.counter_mut(id, pool_id).set_limit(kind, value);
        Ok(())
    }

    fn vram_buffer(&self, inode: Inode) -> Result<Buffer> {
        let b = *self.buffers.get(&inode).ok_or(LedgerError::UnknownBuffer(inode))?;
        if self.heaps[b.heap.0 as usize].spec.class != HeapClass::Vram {
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
    fn do_evict(&mut self, inode: Inode) -> Result<()> {
        let b = self.vram_buffer(inode)?;
        if b.flags & EVICTED != 0 {
            return Err(LedgerError::InvalidState { inode, reason: "already evicted" });
        }
        if b.flags & PINNED != 0 {
            return Err(LedgerError::InvalidState { inode, reason: "pinned buffers cannot be evicted" });
        }
        let evicted = Buffer { flags: b.flags | EVICTED, ..b };
        let who = self.nodes[b.owner.0 as usize].path.clone();
        self.check(&who, b.owner, None, self.pool_set(&evicted), None, b.size, false).map_err(|_| {
            LedgerError::InvalidState { inode, reason: "evicting it would overflow the owner's memcg usage" }
        })?;
        self.apply_chain(b.owner, None, self.pool_set(&b), None, b.size, false);
        self.apply_chain(b.owner, None, self.pool_set(&evicted), None, b.size, true);
        self.buffers.insert(inode, evicted);
        Ok(())
    }

    /// Restoring needs room in the owner's dmem: refused at `max`, and the buffer stays evicted.
    fn do_restore(&mut self, inode: Inode) -> Result<()> {
        let b = self.vram_buffer(inode)?;
        if b.flags & EVICTED == 0 {
            return Err(LedgerError::InvalidState { inode, reason: "not evicted" });
        }
        let resident = Buffer { flags: b.flags & !EVICTED, ..b };
        let enforce = self.heaps[b.heap.0 as usize].enforce;
        let who = self.nodes[b.owner.0 as usize].path.clone();
        self.check(&who, b.owner, None, self.pool_set(&resident), None, b.size, enforce)?;
        self.apply_chain(b.owner, None, self.pool_set(&b), None, b.size, false);
        self.apply_chain(b.owner, None, self.pool_set(&resident), None, b.size, true);
        self.buffers.insert(inode, resident);
        Ok(())
    }

    fn do_pin(&mut self, inode: Inode, pin: bool) -> Result<()> {
        let b = self.vram_buffer(inode)?;
        if (b.flags & PINNED != 0) == pin {
            return Err(LedgerError::InvalidState { inode, reason: if pin { "already pinned" } else { "not pinned" } });
        }
        if b.flags & EVICTED != 0 {
            return Err(LedgerError::InvalidState { inode, reason: "evicted buffers cannot be pinned" });
        }
        let pinned = Buffer { flags: b.flags | PINNED, ..b };
        let pool = self.pin_pool(&pinned);
        let none = PoolSet::of(HeapClass::Carveout, None, false);
        if pin {
            let who = self.nodes[b.owner.0 as usize].path.clone();
            self.check(&who, b.owner, None, none, pool, b.size, true)?;
        }
        self.apply_chain(b.owner, None, none, pool, b.size, pin);
        self.buffers.insert(inode, Buffer { flags: if pin { b.flags | PINNED } else { b.flags & !PINNED }, ..b });
        Ok(())
    }

    /// Verifies the ledger's invariants; returns the first violation. Used by tests and by the
    /// service's self-check after replay.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        let n_pools = self.pools.len();
        let mut local = vec![vec![0u64; n_pools]; self.nodes.len()];
        let mut pinned_local = vec![vec![0u64; n_pools]; self.nodes.len()];
        for (inode, b) in &self.buffers {
            let node = &self.nodes[b.owner.0 as usize];
            if !node.alive {
                return Err(format!("buffer {inode} is owned by removed cgroup {}", node.path));
            }
            for pool in self.pool_set(b).iter() {
                local[b.owner.0 as usize][pool.0 as usize] += b.size;
            }
            if let Some(pool) = self.pin_pool(b) {
                pinned_local[b.owner.0 as usize][pool.0 as usize] += b.size;
            }
        }
        let mut by_pid: HashMap<u32, (u32, u128)> = HashMap::new();
        for b in self.buffers.values() {
            let e = by_pid.entry(b.pid).or_default();
            e.0 += 1;
            e.1 += u128::from(b.size);
        }
        if by_pid != self.pid_totals {
            return Err("per-process totals differ from the buffers".to_string());
        }
        let mut usage = local.clone();
        let mut pinned = pinned_local.clone();
        // Children have higher depth; fold each live node into its parent from the deepest up.
        let mut order: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.nodes[i].alive).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(depth(&self.nodes[i].path)));
        for &i in &order {
            if let Some(p) = self.nodes[i].parent {
                for pool in 0..n_pools {
                    usage[p.0 as usize][pool] += usage[i][pool];
                    pinned[p.0 as usize][pool] += pinned[i][pool];
                }
            }
        }
        for &i in &order {
            let node = &self.nodes[i];
            for pool in 0..n_pools {
                let c = node.counters.get(pool).copied().unwrap_or_default();
                let name = &self.pools[pool];
                if c.local != local[i][pool] {
                    return Err(format!(
                        "{} {name}: own charges {} but buffers sum to {}",
                        node.path, c.local, local[i][pool]
                    ));
                }
                if c.usage != usage[i][pool] {
                    return Err(format!(
                        "{} {name}: usage {} but own + children = {}",
                        node.path, c.usage, usage[i][pool]
                    ));
                }
                if c.pinned != pinned[i][pool] {
                    return Err(format!(
                        "{} {name}: pinned {} but pinned buffers sum to {}",
                        node.path, c.pinned, pinned[i][pool]
                    ));
                }
                if c.peak < c.usage {
                    return Err(format!("{} {name}: peak {} below usage {}", node.path, c.peak, c.usage));
                }
            }
            let children = self.nodes.iter().filter(|n| n.alive && n.parent == Some(CgroupId(i as u32))).count();
            if children as u32 != node.live_children {
                return Err(format!("{}: {} children recorded, {} live", node.path, node.live_children, children));
            }
        }
        Ok(())
    }
}

fn depth(path: &str) -> usize {
    if path == "/" {
        0
    } else {
        path.matches('/').count()
    }
}

fn valid_path(path: &str) -> bool {
    path == "/"
        || (path.starts_with('/')
            && path[1..].split('/').all(|c| {
                !c.is_empty() && c != "." && c != ".." && !c.contains(char::is_whitespace) && !c.contains('\0')
            }))
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
