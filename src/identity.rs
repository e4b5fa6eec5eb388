//! Who a caller is. Identity comes from the binder driver (calling pid and uid), never from
//! arguments; the pid is pinned with a pidfd at once so a recycled pid cannot inherit it, and its
//! uid is checked against what the driver reported.
//!
//! Resolved processes are cached with their pidfd: while the pidfd does not report an exit, the
//! pid still names the same process, so a repeat caller costs one poll instead of four /proc
//! reads. A cached cgroup can be stale after a migration; reconcile refreshes it.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::kernel::procfs::ProcFs;

/// What the binder driver (or the RPC socket's peer credentials) says about the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub pid: u32,
    pub uid: u32,
    /// The caller's SELinux security context (`u:r:surfaceflinger:s0`) as the binder driver
    /// delivered it; `None` without SELinux and over the RPC transport.
    pub context: Option<String>,
}

/// A live process as the service knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub uid: u32,
    /// Its cgroup v2 path, which is both its memcg and its dmem cgroup.
    pub cgroup: String,
    /// Start time in clock ticks since boot: tells a recycled pid from the original.
    pub start_time: u64,
}

/// Resolves pids against a procfs root. With `pidfds` on (production), a pidfd is opened before
/// /proc is read, so the process cannot be swapped under us between the two.
pub struct Processes {
    procfs: ProcFs,
    pidfds: bool,
    live: Mutex<HashMap<u32, (Process, OwnedFd)>>,
}

fn exited(pidfd: &OwnedFd) -> bool {
    let mut fds = [rustix::event::PollFd::new(pidfd, rustix::event::PollFlags::IN)];
    let now = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
    rustix::event::poll(&mut fds, Some(&now)).is_ok_and(|n| n > 0)
}

impl Processes {
    pub fn new(procfs: ProcFs, pidfds: bool) -> Processes {
        Processes { procfs, pidfds, live: Mutex::new(HashMap::new()) }
    }

    pub fn procfs(&self) -> &ProcFs {
        &self.procfs
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u32, (Process, OwnedFd)>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The process `pid`, from the cache while its pidfd says it is alive.
    pub fn resolve(&self, pid: u32) -> Result<Process> {
        if let Some((p, fd)) = self.live().get(&pid) {
            if !exited(fd) {
                return Ok(p.clone());
            }
        }
        self.resolve_fresh(pid)
    }

    /// The process `pid` for a query about it (usage, an offer's receiver): from the cache if
    /// it is there, else read from /proc without a pidfd and without caching it. Only owners and
    /// callers are pinned; otherwise a client asking about every pid would make the service hold
    /// a pidfd for every process on the device.
    pub fn peek(&self, pid: u32) -> Result<Process> {
        if let Some((p, fd)) = self.live().get(&pid) {
            if !exited(fd) {
                return Ok(p.clone());
            }
        }
        if pid == 0 || pid > i32::MAX as u32 {
            return Err(Error::NoSuchProcess(pid));
        }
        self.read(pid)
    }

    fn read(&self, pid: u32) -> Result<Process> {
        let gone = |_| Error::NoSuchProcess(pid);
        Ok(Process {
            pid,
            uid: self.procfs.uid_of(pid).map_err(gone)?,
            cgroup: self.procfs.cgroup_of(pid).map_err(gone)?,
            start_time: self.procfs.starttime(pid).map_err(gone)?,
        })
    }

    /// Reads /proc again (pinning the pid with a pidfd first): current cgroup and all.
    pub fn resolve_fresh(&self, pid: u32) -> Result<Process> {
        if pid == 0 || pid > i32::MAX as u32 {
            return Err(Error::NoSuchProcess(pid));
        }
        let pidfd = if self.pidfds {
            let raw = rustix::process::Pid::from_raw(pid as i32).ok_or(Error::NoSuchProcess(pid))?;
            Some(
                rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty())
                    .map_err(|_| Error::NoSuchProcess(pid))?,
            )
        } else {
            None
        };
        let process = self.read(pid)?;
        if let Some(fd) = pidfd {
            self.live().insert(pid, (process.clone(), fd));
        }
        Ok(process)
    }

    /// Resolves the binder caller and checks the driver's uid against /proc: a mismatch means the
    /// pid was recycled after the call was sent.
    pub fn resolve_caller(&self, caller: &Caller) -> Result<Process> {
        let process = self.resolve(caller.pid)?;
        if process.uid != caller.uid {
            return Err(Error::NoSuchProcess(caller.pid));
        }
        Ok(process)
    }

    /// Pids whose pidfd reports an exit, dropped from the cache.
    pub fn reap_exited(&self) -> Vec<u32> {
        let mut live = self.live();
        let dead: Vec<u32> = live.iter().filter(|(_, (_, fd))| exited(fd)).map(|(pid, _)| *pid).collect();
        for pid in &dead {
            live.remove(pid);
        }
        dead
    }

    pub fn forget(&self, pid: u32) {
        self.live().remove(&pid);
    }
}
