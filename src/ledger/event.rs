//! Every state change of the ledger is one of these events. The ledger's mutating methods build
//! an event and apply it, so a journal of events replays to exactly the same charges.

use serde::{Deserialize, Serialize};

use super::counter::LimitKind;
use super::heap::HeapSpec;

/// A dma-buf is identified by the inode of its file: stable while the buffer lives, shared by
/// every fd and mapping of it, and what libdmabufinfo keys on.
pub type Inode = u64;

/// An owner's start time (clock ticks since boot, /proc/<pid>/stat field 22): with the pid it
/// names one process for good, so a pid recycled while the service was down is told apart.
/// 0 where it is not known (pid 0, the parent-cgroup owner; records of format version 1).
pub type StartTime = u64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Event {
    /// A dmem region (or the memcg pool's capacity) became known.
    RegionAdded {
        region: String,
        capacity: u64,
    },
    /// A heap and whether over-limit charges are refused (`enforce`) or only counted.
    HeapAdded {
        heap: HeapSpec,
        enforce: bool,
    },
    /// `size` bytes of `heap` now belong to process `pid` (started at `start`) in `cgroup`.
    Charged {
        inode: Inode,
        size: u64,
        heap: String,
        pid: u32,
        #[serde(default)]
        start: StartTime,
        cgroup: String,
    },
    /// The buffer is gone (or no longer ours to count): every pool is uncharged.
    Released {
        inode: Inode,
    },
    /// The buffer's charge moved to another process and cgroup, every pool at once.
    Transferred {
        inode: Inode,
        pid: u32,
        #[serde(default)]
        start: StartTime,
        cgroup: String,
    },
    /// The buffer's owner is gone and the charge is handed on (to a surviving holder or the
    /// parent cgroup) without a limit check: the bytes exist whether or not they fit.
    Reassigned {
        inode: Inode,
        pid: u32,
        #[serde(default)]
        start: StartTime,
        cgroup: String,
    },
    /// A process moved to another cgroup; its buffers follow it.
    Migrated {
        pid: u32,
        cgroup: String,
    },
    /// A cgroup was removed; its own charges move to its parent, as the kernel reparents.
    Reparented {
        cgroup: String,
    },
    LimitSet {
        cgroup: String,
        pool: String,
        kind: LimitKind,
        value: u64,
    },
    /// A vram buffer moved to system memory: dmem released, the owner's memcg charged.
    Evicted {
        inode: Inode,
    },
    /// Back in vram: memcg released, dmem charged again.
    Restored {
        inode: Inode,
    },
    Pinned {
        inode: Inode,
    },
    Unpinned {
        inode: Inode,
    },
}
