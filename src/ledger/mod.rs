//! The ledger: who pays for which buffer, in which pool, under which limits. Pure data, no I/O.
//!
//! Cgroups form a tree of [`Counter`]s per pool; a charge walks from the owner up to the root and
//! is checked completely before anything is added, so a refused operation leaves no trace. Every
//! mutation is an [`Event`] applied by [`Ledger::apply`], which is what the journal replays.
//! The ledger is plain data (`Send + Sync`); the service shares it behind a mutex.
//!
//! Where things are: `registry` (pools and heaps), `tree` (cgroups and their counters), `buffer`
//! (live buffers and per-process totals), `charge` (the engine: a [`charge::Charge`] checked along
//! its chain, then applied), `vram` (evict, restore, pin), `evict` (eviction advice), `snapshot`
//! (the state as events), `invariants` (the self-check). This file applies events and answers
//! queries.

mod buffer;
mod charge;
mod counter;
mod error;
mod event;
mod evict;
mod heap;
mod invariants;
mod registry;
mod snapshot;
mod tree;
mod vram;

pub use buffer::BufferInfo;
pub use counter::{Counter, LimitKind, UNLIMITED};
pub use error::LedgerError;
pub use event::{Event, Inode, StartTime};
pub use heap::{HeapClass, HeapId, HeapSpec, PoolId, PoolSet, MEMCG_POOL};

use buffer::{Buffer, Buffers};
use registry::Registry;
use tree::{CgroupId, Tree};

pub type Result<T> = std::result::Result<T, LedgerError>;

/// The ledger: the pools and heaps it knows, the cgroup tree with its counters, and the live
/// buffers. Each part lives in the module named for it; this type applies events to them.
#[derive(Debug)]
pub struct Ledger {
    registry: Registry,
    tree: Tree,
    buffers: Buffers,
}

impl Default for Ledger {
    fn default() -> Self {
        Self::new()
    }
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger { registry: Registry::new(), tree: Tree::new(), buffers: Buffers::default() }
    }

    /// Applies one event: the only way the ledger changes.
    pub fn apply(&mut self, event: &Event) -> Result<()> {
        match event {
            Event::RegionAdded { region, capacity } => self.do_add_region(region, *capacity),
            Event::HeapAdded { heap, enforce } => self.do_add_heap(heap, *enforce),
            Event::Charged { inode, size, heap, pid, start, cgroup } => {
                self.do_charge(*inode, *size, heap, *pid, *start, cgroup)
            }
            Event::Released { inode } => self.do_release(*inode),
            Event::Transferred { inode, pid, start, cgroup } => self.do_transfer(*inode, *pid, *start, cgroup),
            Event::Reassigned { inode, pid, start, cgroup } => self.move_buffer(*inode, *pid, *start, cgroup, false),
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

    pub fn charge(
        &mut self,
        inode: Inode,
        size: u64,
        heap: &str,
        pid: u32,
        start: StartTime,
        cgroup: &str,
    ) -> Result<Event> {
        self.record(Event::Charged { inode, size, heap: heap.to_string(), pid, start, cgroup: cgroup.to_string() })
    }

    pub fn release(&mut self, inode: Inode) -> Result<Event> {
        self.record(Event::Released { inode })
    }

    pub fn transfer(&mut self, inode: Inode, pid: u32, start: StartTime, cgroup: &str) -> Result<Event> {
        self.record(Event::Transferred { inode, pid, start, cgroup: cgroup.to_string() })
    }

    pub fn reassign(&mut self, inode: Inode, pid: u32, start: StartTime, cgroup: &str) -> Result<Event> {
        self.record(Event::Reassigned { inode, pid, start, cgroup: cgroup.to_string() })
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
        self.registry.pool_id(name)
    }

    pub fn pool_name(&self, pool: PoolId) -> &str {
        self.registry.pool_name(pool)
    }

    /// Pool names with their capacity (0 = unknown), memcg first.
    pub fn pools(&self) -> impl Iterator<Item = (PoolId, &str, u64)> + '_ {
        self.registry.pools()
    }

    /// Heaps with their enforce flag.
    pub fn heaps(&self) -> impl Iterator<Item = (&HeapSpec, bool)> + '_ {
        self.registry.heaps().map(|h| (&h.spec, h.enforce))
    }

    pub fn heap(&self, name: &str) -> Option<(&HeapSpec, bool)> {
        self.registry.heap_named(name).map(|h| (&h.spec, h.enforce))
    }

    pub fn has_cgroup(&self, path: &str) -> bool {
        self.tree.id(path).is_some()
    }

    /// Counters of a cgroup, one per pool (memcg first).
    pub fn counters(&self, cgroup: &str) -> Result<Vec<(String, Counter)>> {
        Ok(self.node_counters(self.tree.known(cgroup)?))
    }

    pub fn counter(&self, cgroup: &str, pool: &str) -> Option<Counter> {
        let id = self.tree.id(cgroup)?;
        let pool = self.pool_id(pool)?;
        Some(self.tree.counter(id, pool))
    }

    fn node_counters(&self, id: CgroupId) -> Vec<(String, Counter)> {
        self.registry.pools().map(|(pool, name, _)| (name.to_string(), self.tree.counter(id, pool))).collect()
    }

    /// Every live cgroup path, parents before children.
    pub fn cgroups(&self) -> Vec<String> {
        self.tree.paths()
    }

    pub fn buffer(&self, inode: Inode) -> Option<BufferInfo> {
        self.buffers.get(inode).map(|b| self.info(inode, b))
    }

    pub fn buffer_count(&self) -> usize {
        self.buffers.len()
    }

    /// All live buffers (unordered).
    pub fn buffers(&self) -> impl Iterator<Item = BufferInfo> + '_ {
        self.buffers.iter().map(|(inode, b)| self.info(inode, b))
    }

    /// Inodes charged to a process.
    pub fn buffers_of_pid(&self, pid: u32) -> Vec<Inode> {
        self.buffers.of_pid(pid)
    }

    /// Buffers and bytes charged to a process.
    pub fn pid_totals(&self, pid: u32) -> (usize, u64) {
        self.buffers.pid_totals(pid)
    }

    /// Processes that own at least one buffer.
    pub fn owner_pids(&self) -> Vec<u32> {
        self.buffers.owner_pids()
    }

    fn info(&self, inode: Inode, b: &Buffer) -> BufferInfo {
        let heap = self.registry.heap(b.heap);
        BufferInfo {
            inode,
            size: b.size,
            heap: heap.spec.name.clone(),
            class: heap.spec.class,
            pid: b.pid,
            start: b.start,
            cgroup: self.tree.path(b.owner).to_string(),
            pools: self.pool_set(b).iter().map(|p| self.pool_name(p).to_string()).collect(),
            evicted: b.evicted(),
            pinned: b.pinned(),
        }
    }

    // ---- changes that are not charges ----

    fn do_add_region(&mut self, region: &str, capacity: u64) -> Result<()> {
        self.registry.add_region(region, capacity)
    }

    fn do_add_heap(&mut self, spec: &HeapSpec, enforce: bool) -> Result<()> {
        let buffers = &self.buffers;
        self.registry.add_heap(spec, enforce, |id| buffers.iter().any(|(_, b)| b.heap == id))
    }

    fn do_reparent(&mut self, cgroup: &str) -> Result<()> {
        let (removed, parent) = self.tree.remove_leaf(cgroup, self.registry.pool_count())?;
        self.buffers.reparent(removed, parent);
        Ok(())
    }

    fn do_set_limit(&mut self, cgroup: &str, pool: &str, kind: LimitKind, value: u64) -> Result<()> {
        let pool_id = self.pool_id(pool).ok_or_else(|| LedgerError::UnknownPool(pool.to_string()))?;
        if kind == LimitKind::PinMax && pool_id == PoolId::MEMCG {
            return Err(LedgerError::InvalidLimit { pool: pool.to_string(), kind: kind.name() });
        }
        let n_pools = self.registry.pool_count();
        let id = self.tree.get_or_create(cgroup, n_pools)?;
        self.tree.counter_mut(id, pool_id, n_pools).set_limit(kind, value);
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
