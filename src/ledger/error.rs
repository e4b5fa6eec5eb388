use thiserror::Error;

use super::event::Inode;

/// Why the ledger refused an operation. A refused operation changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LedgerError {
    #[error("charging {size} bytes to {cgroup} would exceed {limit_cgroup} {pool}.max ({usage} used of {max})")]
    OverLimit { cgroup: String, limit_cgroup: String, pool: String, size: u64, usage: u64, max: u64 },
    #[error(
        "pinning {size} bytes in {cgroup} would exceed {limit_cgroup} {pool} pin limit ({pinned} pinned of {max})"
    )]
    OverPinLimit { cgroup: String, limit_cgroup: String, pool: String, size: u64, pinned: u64, max: u64 },
    #[error("buffer {0} is not charged")]
    UnknownBuffer(Inode),
    #[error("buffer {inode} is already charged to pid {pid} in {cgroup}")]
    AlreadyCharged { inode: Inode, pid: u32, cgroup: String },
    #[error("unknown heap {0:?}")]
    UnknownHeap(String),
    #[error("unknown pool {0:?}")]
    UnknownPool(String),
    #[error("heap {heap:?} of class {class} needs a dmem region")]
    HeapNeedsRegion { heap: String, class: &'static str },
    #[error("heap {0:?} is already defined differently")]
    HeapRedefined(String),
    #[error("unknown cgroup {0}")]
    UnknownCgroup(String),
    #[error("invalid cgroup path {0:?}: must be absolute, without empty, '.' or '..' components")]
    InvalidCgroupPath(String),
    #[error("cgroup {0} still has child cgroups")]
    CgroupHasChildren(String),
    #[error("the root cgroup cannot be removed")]
    RootRemoval,
    #[error("buffer size must be positive")]
    ZeroSize,
    #[error("buffer {inode}: {reason}")]
    InvalidState { inode: Inode, reason: &'static str },
    #[error("limit {kind} is not valid for pool {pool}")]
    InvalidLimit { pool: String, kind: &'static str },
    /// Pools and heaps are indexed with 16 bits to keep buffer records small.
    #[error("cannot add {what} {name:?}: the ledger holds at most {max}")]
    TooMany { what: &'static str, name: String, max: usize },
}
