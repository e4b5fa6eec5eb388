//! Queries: usage of a process, uid or cgroup (the ledger's counters beside the kernel's), and
//! charge listings.

use super::cgroup_path::{in_subtree, uid_cgroup};
use super::state::State;
use super::Accountant;
use crate::error::{Error, Result};
use crate::kernel::cgroupfs::DmemFile;
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

impl Accountant {
    fn pool_usages(&self, state: &State, cgroup: &str) -> Vec<PoolUsage> {
        let counters = state.ledger.counters(cgroup).unwrap_or_else(|_| {
            state.ledger.pools().map(|(_, name, _)| (name.to_string(), Counter::default())).collect()
        });
        let fs = self.cgroupfs.as_ref();
        let dmem = fs.and_then(|fs| fs.dmem(cgroup, DmemFile::Current).ok());
        counters
            .into_iter()
            .map(|(pool, counter)| {
                let kernel_usage = if pool == MEMCG_POOL {
                    fs.and_then(|fs| fs.memory_current(cgroup).ok())
                } else {
                    dmem.as_ref().and_then(|d| d.get(&pool).copied())
                };
                PoolUsage { pool, counter, kernel_usage }
            })
            .collect()
    }

    fn usage_where(&self, state: &State, cgroup: &str, keep: impl Fn(&BufferInfo) -> bool) -> Usage {
        // Buffers in different pools may together exceed u64 (each pool alone cannot).
        let (count, bytes) =
            state.ledger.buffers().filter(|b| keep(b)).fold((0, 0u64), |(n, s), b| (n + 1, s.saturating_add(b.size)));
        Usage {
            cgroup: cgroup.to_string(),
            pools: self.pool_usages(state, cgroup),
            buffer_count: count,
            buffer_bytes: bytes,
        }
    }

    pub fn process_usage(&self, pid: u32) -> Result<Usage> {
        let known = self.lock().owners.get(&pid).map(|p| p.cgroup.clone());
        let cgroup = match known {
            Some(c) => c,
            None => self.processes.peek(pid)?.cgroup,
        };
        let state = self.lock();
        let (buffer_count, buffer_bytes) = state.ledger.pid_totals(pid);
        Ok(Usage { pools: self.pool_usages(&state, &cgroup), cgroup, buffer_count, buffer_bytes })
    }

    pub fn uid_usage(&self, uid: u32) -> Usage {
        let cgroup = uid_cgroup(uid);
        let state = self.lock();
        self.usage_where(&state, &cgroup, |b| in_subtree(&b.cgroup, &cgroup))
    }

    pub fn cgroup_usage(&self, cgroup: &str) -> Result<Usage> {
        if !cgroup.starts_with('/') || cgroup.split('/').any(|c| c == "..") {
            return Err(Error::InvalidArgument(format!("cgroup path {cgroup:?} must be absolute")));
        }
        let state = self.lock();
        Ok(self.usage_where(&state, cgroup, |b| in_subtree(&b.cgroup, cgroup)))
    }

    /// Buffers of a process (pid > 0) or all, biggest first.
    pub fn charges(&self, pid: u32) -> Vec<BufferInfo> {
        let state = self.lock();
        let mut v: Vec<BufferInfo> = state.ledger.buffers().filter(|b| pid == 0 || b.pid == pid).collect();
        v.sort_by(|a, b| b.size.cmp(&a.size).then(a.inode.cmp(&b.inode)));
        v
    }

    pub fn uid_of_owner(&self, pid: u32) -> Option<u32> {
        self.lock().owners.get(&pid).map(|p| p.uid)
    }

    pub fn kernel_payer(&self, inode: Inode) -> Option<String> {
        self.lock().kernel_payer.get(&inode).cloned()
    }
}
