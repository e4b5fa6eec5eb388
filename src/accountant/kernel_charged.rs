//! Buffers the kernel charged to another cgroup than the one that pays in the ledger (a heap the
//! kernel accounts at allocation, made by the allocator on an app's behalf): where the kernel
//! charged each, and per owner level the bytes paid under it that its memory.current cannot
//! see. The sum is kept up to date as the ledger changes, so a charge's budget check is a lookup,
//! not a walk over every such buffer.

use std::collections::HashMap;

use super::cgroup_path::{in_subtree, owner_level};
use crate::ledger::{Event, Inode, Ledger};

struct Entry {
    /// The cgroup the kernel charged (the allocating process's).
    payer: String,
    /// What this buffer adds to [`KernelCharged::unseen`] now: its owner level and size.
    counted: Option<(String, u64)>,
}

#[derive(Default)]
pub(super) struct KernelCharged {
    entries: HashMap<Inode, Entry>,
    unseen: HashMap<String, u64>,
}

impl KernelCharged {
    /// Where the kernel charged `inode`, if it did.
    pub(super) fn payer(&self, inode: Inode) -> Option<&str> {
        self.entries.get(&inode).map(|e| e.payer.as_str())
    }

    /// Whether the kernel charged `inode` outside `level`.
    pub(super) fn charged_outside(&self, inode: Inode, level: &str) -> bool {
        self.payer(inode).is_some_and(|payer| !in_subtree(payer, level))
    }

    /// Bytes paid under owner level `level` that the kernel charged outside it.
    pub(super) fn unseen(&self, level: &str) -> u64 {
        self.unseen.get(level).copied().unwrap_or(0)
    }

    /// Records that the kernel charged `inode` to `payer` (the first record stands).
    pub(super) fn insert(&mut self, inode: Inode, payer: String, ledger: &Ledger) {
        self.entries.entry(inode).or_insert(Entry { payer, counted: None });
        self.refresh(inode, ledger);
    }

    pub(super) fn remove(&mut self, inode: Inode) {
        if let Some(entry) = self.entries.remove(&inode) {
            self.uncount(entry.counted);
        }
    }

    /// Follows a ledger change: the buffers `event` touched are counted where they are now.
    pub(super) fn follow(&mut self, event: &Event, ledger: &Ledger) {
        match event {
            Event::Charged { inode, .. }
            | Event::Released { inode }
            | Event::Transferred { inode, .. }
            | Event::Reassigned { inode, .. } => self.refresh(*inode, ledger),
            // Whole cgroups move: rare (a process migrating, a cgroup removed).
            Event::Migrated { .. } | Event::Reparented { .. } => {
                let inodes: Vec<Inode> = self.entries.keys().copied().collect();
                inodes.into_iter().for_each(|inode| self.refresh(inode, ledger));
            }
            Event::RegionAdded { .. }
            | Event::HeapAdded { .. }
            | Event::LimitSet { .. }
            | Event::Evicted { .. }
            | Event::Restored { .. }
            | Event::Pinned { .. }
            | Event::Unpinned { .. } => {}
        }
    }

    fn refresh(&mut self, inode: Inode, ledger: &Ledger) {
        let Some(entry) = self.entries.get_mut(&inode) else { return };
        let now = ledger.buffer(inode).and_then(|b| {
            let level = owner_level(&b.cgroup);
            (!in_subtree(&entry.payer, level)).then(|| (level.to_string(), b.size))
        });
        let before = std::mem::replace(&mut entry.counted, now.clone());
        self.uncount(before);
        if let Some((level, size)) = now {
            *self.unseen.entry(level).or_default() += size;
        }
    }

    fn uncount(&mut self, counted: Option<(String, u64)>) {
        let Some((level, size)) = counted else { return };
        if let Some(sum) = self.unseen.get_mut(&level) {
            *sum -= size;
            if *sum == 0 {
                self.unseen.remove(&level);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{HeapClass, HeapSpec};

    const MIB: u64 = 1 << 20;

    fn ledger() -> Ledger {
        let mut l = Ledger::new();
        let heap = HeapSpec { name: "system".into(), class: HeapClass::System, region: None };
        l.apply(&Event::HeapAdded { heap, enforce: true }).unwrap();
        l
    }

    fn apply(l: &mut Ledger, k: &mut KernelCharged, e: Event) {
        l.apply(&e).unwrap();
        k.follow(&e, l);
    }

    fn charged(inode: Inode, pid: u32, cgroup: &str) -> Event {
        Event::Charged { inode, size: MIB, heap: "system".into(), pid, start: 0, cgroup: cgroup.into() }
    }

    /// The walk the sum replaces.
    fn walked(k: &KernelCharged, l: &Ledger, level: &str) -> u64 {
        k.entries
            .iter()
            .filter(|(_, e)| !in_subtree(&e.payer, level))
            .filter_map(|(inode, _)| l.buffer(*inode))
            .filter(|b| in_subtree(&b.cgroup, level))
            .map(|b| b.size)
            .sum()
    }

    #[test]
    fn the_sum_follows_charges_moves_and_releases_as_the_walk_would() {
        let (mut l, mut k) = (ledger(), KernelCharged::default());
        let levels = ["/uid_10001", "/uid_10002", "/uid_1003", "/system"];
        let check = |k: &KernelCharged, l: &Ledger| {
            for level in levels {
                assert_eq!(k.unseen(level), walked(k, l, level), "{level}");
            }
        };
        // The allocator (kernel-charged in /uid_1003) makes two buffers for app 10001.
        for inode in [1, 2] {
            apply(&mut l, &mut k, charged(inode, 7, "/uid_10001/pid_7"));
            k.insert(inode, "/uid_1003/pid_3".into(), &l);
        }
        // One the allocator keeps for itself: the kernel sees it where it is paid.
        apply(&mut l, &mut k, charged(3, 3, "/uid_1003/pid_3"));
        k.insert(3, "/uid_1003/pid_3".into(), &l);
        check(&k, &l);
        assert_eq!(k.unseen("/uid_10001"), 2 * MIB);
        // Moves: to another app, back to the allocator, a reassignment.
        apply(&mut l, &mut k, Event::Transferred { inode: 1, pid: 8, start: 0, cgroup: "/uid_10002/pid_8".into() });
        apply(&mut l, &mut k, Event::Transferred { inode: 3, pid: 8, start: 0, cgroup: "/uid_10002/pid_8".into() });
        apply(&mut l, &mut k, Event::Reassigned { inode: 2, pid: 3, start: 0, cgroup: "/uid_1003/pid_3".into() });
        check(&k, &l);
        assert_eq!((k.unseen("/uid_10001"), k.unseen("/uid_10002")), (0, 2 * MIB));
        // A migration moves every buffer of the process.
        apply(&mut l, &mut k, Event::Migrated { pid: 8, cgroup: "/system".into() });
        check(&k, &l);
        assert_eq!(k.unseen("/system"), 2 * MIB);
        // Released and forgotten, in either order.
        apply(&mut l, &mut k, Event::Released { inode: 1 });
        k.remove(1);
        k.remove(3);
        apply(&mut l, &mut k, Event::Released { inode: 3 });
        check(&k, &l);
        assert!(k.unseen.is_empty(), "{:?}", k.unseen);
        assert_eq!(k.payer(2), Some("/uid_1003/pid_3"));
        assert!(!k.charged_outside(2, "/uid_1003") && k.charged_outside(2, "/uid_10001"));
    }
}
