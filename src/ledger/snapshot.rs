//! The ledger's state as events: what a journal snapshot stores, replayed in an order that no
//! limit or region can refuse.

use super::{Counter, Event, Inode, Ledger, LimitKind, PoolId, MEMCG_POOL};

impl Ledger {
    /// The state as events that rebuild it from an empty ledger (a journal snapshot).
    pub fn to_events(&self) -> Vec<Event> {
        let mut events = Vec::new();
        for (_, name, capacity) in self.pools().skip(1) {
            events.push(Event::RegionAdded { region: name.to_string(), capacity });
        }
        let memcg_capacity = self.registry.capacity(PoolId::MEMCG);
        if memcg_capacity != 0 {
            events.push(Event::RegionAdded { region: MEMCG_POOL.to_string(), capacity: memcg_capacity });
        }
        for h in self.registry.heaps() {
            events.push(Event::HeapAdded { heap: h.spec.clone(), enforce: h.enforce });
        }
        // Evicted buffers first: each is charged resident and evicted at once, so while it is
        // replayed its region holds that one buffer, never it on top of the resident ones.
        let mut inodes: Vec<Inode> = self.buffers.iter().map(|(inode, _)| inode).collect();
        inodes.sort_unstable_by_key(|i| (!self.buffers.get(*i).expect("listed above").evicted(), *i));
        for inode in inodes {
            let b = *self.buffers.get(inode).expect("listed above");
            let info = self.info(inode, &b);
            events.push(Event::Charged {
                inode,
                size: b.size,
                heap: info.heap,
                pid: b.pid,
                start: b.start,
                cgroup: info.cgroup,
            });
            if b.evicted() {
                events.push(Event::Evicted { inode });
            }
            if b.pinned() && !info.class.always_pinned() {
                events.push(Event::Pinned { inode });
            }
        }
        // Limits last: a limit lowered below usage must not refuse the charges that preceded it.
        for path in self.cgroups() {
            let id = self.tree.id(&path).expect("a listed cgroup");
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
}
