//! Who a caller or an owner is: (pid, start time, uid, security context where the kernel has one).
//! The pid and uid come from the binder driver, never from arguments; the pid is pinned with a
//! pidfd at once and its start time read, so a recycled pid is a different identity: every
//! ownership check compares all of it ([`Process::is`]).
//!
//! Resolved processes are cached with their pidfd: while the pidfd does not report an exit, the
//! pid still names the same process, so a repeat caller costs one poll instead of four /proc
//! reads. The background reaper polls every cached pidfd in one system call per 1024, outside
//! the cache's lock, so calls never wait behind it. A cached cgroup can be stale after a migration; reconcile refreshes it. An exited entry
//! that a new process with the same pid replaces is kept for [`Processes::reap_exited`], so its
//! death is still seen.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

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

impl Caller {
    /// A caller on a kernel without a security context (tests, the demo, the RPC transport).
    pub fn new(pid: u32, uid: u32) -> Caller {
        Caller { pid, uid, context: None }
    }
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
    /// Its security context, where it called us and the kernel told binder one.
    pub context: Option<String>,
}

impl Process {
    /// Whether `other` is the same process: pid, start time and uid equal, and the security
    /// contexts too where both are known. The cgroup is not identity (a process may move).
    pub fn is(&self, other: &Process) -> bool {
        self.pid == other.pid
            && self.start_time == other.start_time
            && self.uid == other.uid
            && match (&self.context, &other.context) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// `PF_KTHREAD` in /proc/<pid>/stat's flags field.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Resolves pids against a procfs root. With `pidfds` on (production), a pidfd is opened before
/// /proc is read, so the process cannot be swapped under us between the two.
pub struct Processes {
    procfs: ProcFs,
    pidfds: bool,
    live: Mutex<HashMap<u32, (Process, Arc<OwnedFd>)>>,
    /// Cached processes found exited when their pid was resolved again: reported once by
    /// [`Processes::reap_exited`].
    exited: Mutex<Vec<Process>>,
}

fn exited(pidfd: &OwnedFd) -> bool {
    let mut fds = [rustix::event::PollFd::new(pidfd, rustix::event::PollFlags::IN)];
    let now = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
    rustix::event::poll(&mut fds, Some(&now)).is_ok_and(|n| n > 0)
}

impl Processes {
    pub fn new(procfs: ProcFs, pidfds: bool) -> Processes {
        Processes { procfs, pidfds, live: Mutex::new(HashMap::new()), exited: Mutex::new(Vec::new()) }
    }

    pub fn procfs(&self) -> &ProcFs {
        &self.procfs
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u32, (Process, Arc<OwnedFd>)>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The process `pid`, from the cache while its pidfd says it is alive.
    pub fn resolve(&self, pid: u32) -> Result<Process> {
        match self.cached(pid) {
            Some(p) => Ok(p),
            None => self.resolve_fresh(pid),
        }
    }

    /// The process `pid` if it is cached and its pidfd says it is alive: a caller or an owner
    /// already resolved (never a kernel thread), at the cost of one poll.
    pub fn cached(&self, pid: u32) -> Option<Process> {
        let live = self.live();
        let (p, fd) = live.get(&pid)?;
        (!exited(fd)).then(|| p.clone())
    }

    /// Every thread of `pid` has begun to exit ([`ProcFs::exiting`]); false when that cannot be
    /// read.
    pub fn exiting(&self, pid: u32) -> bool {
        self.procfs.exiting(pid).unwrap_or(false)
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
            context: None,
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
            if let Some((old, old_fd)) = self.live().insert(pid, (process.clone(), Arc::new(fd))) {
                if !old.is(&process) || exited(&old_fd) {
                    self.exited.lock().unwrap_or_else(|p| p.into_inner()).push(old);
                }
            }
        }
        Ok(process)
    }

    /// Resolves the binder caller and checks the driver's uid against /proc: a mismatch means the
    /// pid was recycled after the call was sent. The caller's context joins its identity.
    pub fn resolve_caller(&self, caller: &Caller) -> Result<Process> {
        let process = self.resolve(caller.pid)?;
        if process.uid != caller.uid {
            return Err(Error::NoSuchProcess(caller.pid));
        }
        Ok(Process { context: caller.context.clone(), ..process })
    }

    /// Whether `pid` is a kernel thread (it has no memory of its own to charge).
    pub fn is_kernel_thread(&self, pid: u32) -> bool {
        // The flags are the 9th field of stat, counted after the command name's closing paren.
        std::fs::read_to_string(self.procfs.root().join(pid.to_string()).join("stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(6)?.parse::<u64>().ok())
                .is_some_and(|flags| flags & PF_KTHREAD != 0)
        })
    }

    /// Processes whose pidfd reports an exit (and those found exited when their pid came back),
    /// dropped from the cache.
    pub fn reap_exited(&self) -> Vec<Process> {
        let mut dead = std::mem::take(&mut *self.exited.lock().unwrap_or_else(|p| p.into_inner()));
        let cached: Vec<(u32, Arc<OwnedFd>)> =
            self.live().iter().map(|(pid, (_, fd))| (*pid, Arc::clone(fd))).collect();
        let mut gone = Vec::new();
        for chunk in cached.chunks(1024) {
            let mut fds: Vec<_> =
                chunk.iter().map(|(_, fd)| rustix::event::PollFd::new(&**fd, rustix::event::PollFlags::IN)).collect();
            let now = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
            if rustix::event::poll(&mut fds, Some(&now)).is_ok_and(|n| n > 0) {
                let ready = fds.iter().map(|f| !f.revents().is_empty());
                gone.extend(chunk.iter().zip(ready).filter(|(_, r)| *r).map(|((pid, fd), _)| (*pid, Arc::clone(fd))));
            }
        }
        let mut live = self.live();
        for (pid, fd) in gone {
            // Only the entry polled: a new process may have taken the pid meanwhile.
            if live.get(&pid).is_some_and(|(_, cur)| Arc::ptr_eq(cur, &fd)) {
                dead.extend(live.remove(&pid).map(|(p, _)| p));
            }
        }
        dead
    }

    pub fn forget(&self, pid: u32) {
        self.live().remove(&pid);
    }
}
