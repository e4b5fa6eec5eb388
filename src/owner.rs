//! Who a caller is. Identity comes from the binder driver (calling pid and uid), never from
//! arguments; the pid is pinned with a pidfd at once so a recycled pid cannot inherit it, and its
//! uid is checked against what the driver reported.

use std::os::fd::OwnedFd;

use crate::error::{Error, Result};
use crate::kernel::procfs::ProcFs;

/// What the binder driver (or the RPC socket's peer credentials) says about the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub pid: u32,
    pub uid: u32,
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
}

impl Processes {
    pub fn new(procfs: ProcFs, pidfds: bool) -> Processes {
        Processes { procfs, pidfds }
    }

    pub fn procfs(&self) -> &ProcFs {
        &self.procfs
    }

    /// The process `pid` now, with a pidfd when running against the real /proc.
    pub fn resolve(&self, pid: u32) -> Result<(Process, Option<OwnedFd>)> {
        if pid == 0 || pid > i32::MAX as u32 {
            return Err(Error::NoSuchProcess(pid));
        }
        let pidfd = if self.pidfds {
            let raw = rustix::process::Pid::from_raw(pid as i32).ok_or(Error::NoSuchProcess(pid))?;
            Some(rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()).map_err(|_| Error::NoSuchProcess(pid))?)
        } else {
            None
        };
        let gone = |_| Error::NoSuchProcess(pid);
        let process = Process {
            pid,
            uid: self.procfs.uid_of(pid).map_err(gone)?,
            cgroup: self.procfs.cgroup_of(pid).map_err(gone)?,
            start_time: self.procfs.starttime(pid).map_err(gone)?,
        };
        Ok((process, pidfd))
    }

    /// Resolves the binder caller and checks the driver's uid against /proc: a mismatch means the
    /// pid was recycled after the call was sent.
    pub fn resolve_caller(&self, caller: Caller) -> Result<(Process, Option<OwnedFd>)> {
        let (process, pidfd) = self.resolve(caller.pid)?;
        if process.uid != caller.uid {
            return Err(Error::NoSuchProcess(caller.pid));
        }
        Ok((process, pidfd))
    }

    /// Is this very process (not a successor with the same pid) still alive?
    pub fn is_alive(&self, process: &Process) -> bool {
        self.procfs.starttime(process.pid).is_ok_and(|t| t == process.start_time)
    }
}
