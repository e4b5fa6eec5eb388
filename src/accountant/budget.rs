//! The kernel budget: where the kernel charges a heap to memcg (mem_accounting), it charges the
//! *allocating* process, so the service enforces the app's memory.max for those bytes itself.
//! The cgroup files are read before the ledger is locked ([`Accountant::kernel_budget`]); the
//! check itself is pure.

use super::cgroup_path::{in_subtree, owner_level};
use super::state::State;
use super::Accountant;
use crate::error::Result;
use crate::identity::Process;
use crate::ledger::{Inode, LedgerError, LimitKind, UNLIMITED};

/// An owner level's memory.max and memory.current as read from cgroupfs.
pub(super) struct KernelBudget {
    level: String,
    max: u64,
    current: u64,
}

impl Accountant {
    /// Reads the owner level's memory limit and usage (file I/O: call it before locking). `None`
    /// where there is no cgroupfs or no limit.
    pub(super) fn kernel_budget(&self, owner: &Process) -> Option<KernelBudget> {
        let fs = self.cgroupfs.as_ref()?;
        let level = owner_level(&owner.cgroup);
        let max = fs.read_memory_limit(level, LimitKind::Max).unwrap_or(UNLIMITED);
        if max == UNLIMITED {
            return None;
        }
        Some(KernelBudget { level: level.to_string(), max, current: fs.memory_current(level).unwrap_or(0) })
    }
}

/// A buffer made on an app's behalf, or pushed to it, sits in another cgroup's memory.current
/// and the app's memory.max cannot see it: the app's kernel usage, plus what it pays for but the
/// kernel counts elsewhere, plus `size`, must fit its owner-level memory.max.
pub(super) fn check_kernel_budget(
    state: &State,
    budget: Option<&KernelBudget>,
    owner: &Process,
    size: u64,
) -> Result<()> {
    let Some(KernelBudget { level, max, current }) = budget else { return Ok(()) };
    let usage = current.saturating_add(state.kernel_charged.unseen(level));
    if usage.saturating_add(size) > *max {
        return Err(LedgerError::OverLimit {
            cgroup: owner.cgroup.clone(),
            limit_cgroup: level.clone(),
            pool: "memory (kernel-charged to the allocator)".into(),
            size,
            usage,
            max: *max,
        }
        .into());
    }
    Ok(())
}

/// [`check_kernel_budget`] for a buffer changing hands: needed when the kernel counts it outside
/// the receiver's owner-level cgroup and the ledger did not already count it there.
pub(super) fn check_kernel_budget_on_move(
    state: &State,
    budget: Option<&KernelBudget>,
    inode: Inode,
    from: &str,
    to: &Process,
) -> Result<()> {
    let level = owner_level(&to.cgroup);
    let misattributed = state.kernel_charged.charged_outside(inode, level);
    if misattributed && !in_subtree(from, level) {
        let size = state.ledger.buffer(inode).map_or(0, |b| b.size);
        check_kernel_budget(state, budget, to, size)?;
    }
    Ok(())
}
