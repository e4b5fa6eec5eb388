//! Live buffers: which cgroup and process own each one, its heap and its vram state, with the
//! per-process totals kept alongside so a process's usage is a lookup, not a walk.

use std::collections::HashMap;

use super::{CgroupId, HeapClass, HeapId, Inode, StartTime};

pub(super) const EVICTED: u8 = 1;
pub(super) const PINNED: u8 = 2;

/// One live buffer. Kept small: there can be hundreds of thousands.
#[derive(Clone, Copy, Debug)]
pub(super) struct Buffer {
    pub size: u64,
    pub owner: CgroupId,
    pub pid: u32,
    pub start: StartTime,
    pub heap: HeapId,
    pub flags: u8,
}

impl Buffer {
    pub fn evicted(&self) -> bool {
        self.flags & EVICTED != 0
    }

    pub fn pinned(&self) -> bool {
        self.flags & PINNED != 0
    }
}

/// A buffer as reported to callers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferInfo {
    pub inode: Inode,
    pub size: u64,
    pub heap: String,
    pub class: HeapClass,
    pub pid: u32,
    pub start: StartTime,
    pub cgroup: String,
    pub pools: Vec<String>,
    pub evicted: bool,
    pub pinned: bool,
}

/// Per owning process: (buffers, bytes). u128: buffers in different pools may add up past u64.
pub(super) type PidTotals = HashMap<u32, (u32, u128)>;

#[derive(Debug, Default)]
pub(super) struct Buffers {
    by_inode: HashMap<Inode, Buffer>,
    pid_totals: PidTotals,
}

impl Buffers {
    pub fn get(&self, inode: Inode) -> Option<&Buffer> {
        self.by_inode.get(&inode)
    }

    pub fn iter(&self) -> impl Iterator<Item = (Inode, &Buffer)> + '_ {
        self.by_inode.iter().map(|(inode, b)| (*inode, b))
    }

    pub fn len(&self) -> usize {
        self.by_inode.len()
    }

    /// Adds a new buffer to the map and to its owner's totals.
    pub fn insert(&mut self, inode: Inode, b: Buffer) {
        self.by_inode.insert(inode, b);
        self.count_pid(b.pid, b.size, true);
    }

    pub fn remove(&mut self, inode: Inode) -> Option<Buffer> {
        let b = self.by_inode.remove(&inode)?;
        self.count_pid(b.pid, b.size, false);
        Some(b)
    }

    /// Replaces a buffer's vram state; owner and size stay.
    pub fn set_flags(&mut self, inode: Inode, flags: u8) {
        if let Some(b) = self.by_inode.get_mut(&inode) {
            b.flags = flags;
        }
    }

    /// Gives a buffer a new owning cgroup and process, moving it between process totals.
    pub fn set_owner(&mut self, inode: Inode, owner: CgroupId, pid: u32, start: StartTime) {
        let entry = self.by_inode.get_mut(&inode).expect("set_owner of a live buffer");
        let b = *entry;
        entry.owner = owner;
        entry.pid = pid;
        entry.start = start;
        if b.pid != pid {
            self.count_pid(b.pid, b.size, false);
            self.count_pid(pid, b.size, true);
        }
    }

    /// Hands every buffer owned by cgroup `from` to `to` (processes stay).
    pub fn reparent(&mut self, from: CgroupId, to: CgroupId) {
        for b in self.by_inode.values_mut().filter(|b| b.owner == from) {
            b.owner = to;
        }
    }

    /// Inodes charged to a process, sorted (a walk, unless the process pays for nothing).
    pub fn of_pid(&self, pid: u32) -> Vec<Inode> {
        if !self.pid_totals.contains_key(&pid) {
            return Vec::new();
        }
        let mut v: Vec<Inode> = self.by_inode.iter().filter(|(_, b)| b.pid == pid).map(|(i, _)| *i).collect();
        v.sort_unstable();
        v
    }

    /// Buffers and bytes charged to a process.
    pub fn pid_totals(&self, pid: u32) -> (usize, u64) {
        self.pid_totals.get(&pid).map_or((0, 0), |(n, b)| (*n as usize, u64::try_from(*b).unwrap_or(u64::MAX)))
    }

    /// The kept per-process totals, for the invariant check to compare with a recount.
    pub fn all_pid_totals(&self) -> &PidTotals {
        &self.pid_totals
    }

    /// Processes that own at least one buffer.
    pub fn owner_pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.by_inode.values().map(|b| b.pid).collect();
        v.sort_unstable();
        v.dedup();
        v
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
}
