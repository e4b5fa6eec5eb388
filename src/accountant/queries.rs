//! Queries: usage of a process, uid or cgroup (the ledger's counters beside the kernel's), and
//! charge listings.

use super::cgroup_path::{in_subtree, uid_cgroup, uid_of_cgroup};
use super::state::State;
use super::Accountant;
use crate::error::{Error, Result};
use crate::identity::Process;
use crate::ledger::{BufferInfo, Counter, Inode, MEMCG_POOL};

/// Usage of a process, uid or cgroup.
#[derive(Clone, Debug, PartialEq)]
pub struct Usage {
    pub cgroup: String,
    pub pools: Vec<PoolUsage>,
    pub buffer_count: usize,
    pub buffer_bytes: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PoolUsage {
    pub pool: String,
    pub counter: Counter,
    /// memory.current / dmem.current as the kernel reports them, when readable.
    pub kernel_usage: Option<u64>,
}

/// What the kernel reports for one cgroup, read before the state is locked.
struct KernelUsage {
    memory: Option<u64>,
    dmem: Option<std::collections::BTreeMap<String, u64>>,
}

/// The refusal of a malformed cgroup path that [`Accountant::cgroup_usage`] gives, for a caller
/// that must refuse it before anything else (it tells nobody anything).
pub fn check_cgroup_path(cgroup: &str) -> Result<()> {
    if !cgroup.starts_with('/') || cgroup.split('/').any(|c| c == "..") {
        return Err(Error::InvalidArgument(format!("cgroup path {cgroup:?} must be absolute")));
    }
    Ok(())
}

impl Accountant {
    /// Read from files kept open ([`OpenCounters`](crate::kernel::counters::OpenCounters)): one
    /// pread each.
    fn kernel_usage(&self, cgroup: &str) -> KernelUsage {
        let counters = self.counters.as_ref();
        KernelUsage {
            memory: counters.and_then(|c| c.memory_current(cgroup).ok()),
            dmem: counters.and_then(|c| c.dmem_current(cgroup).ok()),
        }
    }

    /// Size and heap of a charged buffer: what an fd of it needs no fdinfo read for.
    pub fn known_buffer(&self, inode: Inode) -> Option<(u64, String)> {
        self.lock().ledger.buffer(inode).map(|b| (b.size, b.heap))
    }

    fn pool_usages(state: &State, cgroup: &str, kernel: &KernelUsage) -> Vec<PoolUsage> {
        let counters = state.ledger.counters(cgroup).unwrap_or_else(|_| {
            state.ledger.pools().map(|(_, name, _)| (name.to_string(), Counter::default())).collect()
        });
        counters
            .into_iter()
            .map(|(pool, counter)| {
                let kernel_usage = if pool == MEMCG_POOL {
                    kernel.memory
                } else {
                    kernel.dmem.as_ref().and_then(|d| d.get(&pool).copied())
                };
                PoolUsage { pool, counter, kernel_usage }
            })
            .collect()
    }

    fn usage_where(&self, cgroup: &str, keep: impl Fn(&BufferInfo) -> bool) -> Usage {
        let kernel = self.kernel_usage(cgroup);
        let state = self.lock();
        // Buffers in different pools may together exceed u64 (each pool alone cannot).
        let (count, bytes) =
            state.ledger.buffers().filter(|b| keep(b)).fold((0, 0u64), |(n, s), b| (n + 1, s.saturating_add(b.size)));
        Usage {
            cgroup: cgroup.to_string(),
            pools: Self::pool_usages(&state, cgroup, &kernel),
            buffer_count: count,
            buffer_bytes: bytes,
        }
    }

    /// The process `pid` as the service knows it: its recorded identity if it owns charges, else
    /// read from /proc.
    pub fn process(&self, pid: u32) -> Result<Process> {
        let known = self.lock().owners.get(&pid).cloned();
        match known {
            Some(p) => Ok(p),
            None => self.processes.peek(pid),
        }
    }

    pub fn process_usage(&self, pid: u32) -> Result<Usage> {
        let cgroup = self.process(pid)?.cgroup;
        let kernel = self.kernel_usage(&cgroup);
        let state = self.lock();
        let (buffer_count, buffer_bytes) = state.ledger.pid_totals(pid);
        Ok(Usage { pools: Self::pool_usages(&state, &cgroup, &kernel), cgroup, buffer_count, buffer_bytes })
    }

    pub fn uid_usage(&self, uid: u32) -> Usage {
        let cgroup = uid_cgroup(uid);
        self.usage_where(&cgroup, |b| in_subtree(&b.cgroup, &cgroup))
    }

    pub fn cgroup_usage(&self, cgroup: &str) -> Result<Usage> {
        check_cgroup_path(cgroup)?;
        Ok(self.usage_where(cgroup, |b| in_subtree(&b.cgroup, cgroup)))
    }

    /// Buffers of a process (pid > 0) or all, biggest first.
    pub fn charges(&self, pid: u32) -> Vec<BufferInfo> {
        self.charges_where(|b| pid == 0 || b.pid == pid)
    }

    /// Buffers paid for by processes of `uid` or parked on its app cgroup, biggest first.
    pub fn charges_of_uid(&self, uid: u32) -> Vec<BufferInfo> {
        let owners: std::collections::HashMap<u32, u32> =
            self.lock().owners.iter().map(|(pid, p)| (*pid, p.uid)).collect();
        self.charges_where(|b| owners.get(&b.pid).copied().or_else(|| uid_of_cgroup(&b.cgroup)) == Some(uid))
    }

    fn charges_where(&self, keep: impl Fn(&BufferInfo) -> bool) -> Vec<BufferInfo> {
        let state = self.lock();
        let mut v: Vec<BufferInfo> = state.ledger.buffers().filter(|b| keep(b)).collect();
        v.sort_by(|a, b| b.size.cmp(&a.size).then(a.inode.cmp(&b.inode)));
        v
    }

    pub fn uid_of_owner(&self, pid: u32) -> Option<u32> {
        self.lock().owners.get(&pid).map(|p| p.uid)
    }

    pub fn kernel_payer(&self, inode: Inode) -> Option<String> {
        self.lock().kernel_charged.payer(inode).map(str::to_string)
    }
}
