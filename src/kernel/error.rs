//! The one error type of the kernel adapters. Every variant carries what a person needs to act
//! on it: the file, the line, the pid, the value that was written.

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum KernelError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The kernel refused a write (EINVAL for an unknown region, EBUSY, ...), or took only part
    /// of it.
    #[error("writing {data:?} to {}: {source}", path.display())]
    Write {
        path: PathBuf,
        data: String,
        #[source]
        source: io::Error,
    },
    /// A file did not have the format the kernel writes. `line` is 1-based; 0 means the file as a
    /// whole (something missing rather than something wrong on a line).
    #[error("{}: {reason}", location(path, *line))]
    Parse { path: PathBuf, line: usize, reason: String },
    /// The fd is something else than a dma-buf. The reason says what it is instead, so the
    /// service's error (which adds "not a dma-buf") reads well.
    #[error("{reason}")]
    NotDmaBuf { reason: String },
    #[error("no cgroup2 mount in {0}/mounts or {0}/mountinfo", .searched.display())]
    NoCgroup2Mount { searched: PathBuf },
    #[error("no such process: pid {0}")]
    NoSuchProcess(u32),
    #[error("invalid cgroup path {0:?}: must be absolute, without empty, '.' or '..' components")]
    InvalidCgroupPath(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A limit the service enforces itself (`pin.max`): there is no cgroup file to read or write.
    #[error("limit {0} has no kernel file; the service enforces it")]
    NoKernelFile(&'static str),
    /// The BPF backend could not be opened or read: what was being done and why it failed.
    #[error("BPF: {0}")]
    Bpf(String),
    /// The heap ran out of memory (ENOMEM) or the dmem limit refused the charge (EAGAIN).
    #[error("allocating {len} bytes from {}: {errno}", heap.display())]
    HeapAllocFailed { heap: PathBuf, len: u64, errno: rustix::io::Errno },
}

fn location(path: &Path, line: usize) -> String {
    match line {
        0 => path.display().to_string(),
        n => format!("{}:{n}", path.display()),
    }
}

impl KernelError {
    /// The message without the "BPF: " of a [`KernelError::Bpf`], for a line that already says
    /// it is about BPF.
    pub(crate) fn into_reason(self) -> String {
        match self {
            KernelError::Bpf(reason) => reason,
            e => e.to_string(),
        }
    }

    pub(crate) fn io(path: &Path, source: impl Into<io::Error>) -> KernelError {
        KernelError::Io { path: path.to_path_buf(), source: source.into() }
    }

    pub(crate) fn parse(path: &Path, line: usize, reason: impl Into<String>) -> KernelError {
        KernelError::Parse { path: path.to_path_buf(), line, reason: reason.into() }
    }

    /// The process behind a /proc file is gone (or the file never existed, which in /proc is the
    /// same thing).
    pub fn is_vanished(&self) -> bool {
        match self {
            KernelError::NoSuchProcess(_) => true,
            KernelError::Io { source, .. } => is_gone(source),
            _ => false,
        }
    }
}

/// ENOENT and ESRCH are what reading /proc/PID/... gives once PID has exited.
pub(crate) fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bpf_reason_loses_only_its_prefix() {
        let why = KernelError::Bpf("kernel BTF: error parsing /sys/kernel/btf/vmlinux".into());
        assert_eq!(why.to_string(), "BPF: kernel BTF: error parsing /sys/kernel/btf/vmlinux");
        assert_eq!(why.into_reason(), "kernel BTF: error parsing /sys/kernel/btf/vmlinux");
        let other = KernelError::NoKernelFile("pin.max");
        assert_eq!(other.into_reason(), "limit pin.max has no kernel file; the service enforces it");
    }
}
