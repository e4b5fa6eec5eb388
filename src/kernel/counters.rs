//! A cgroup's usage counters (memory.current, dmem.current) kept open, so a usage query reads
//! each with one pread at offset 0 (a cgroup file is a seq_file: reading from the start shows it
//! afresh) instead of an open, a size check, reads and a close.
//!
//! A file that could not be opened is tried again after [`RETRY`] (a controller may be enabled
//! later); a read that fails (the cgroup was removed) drops the file, so the next query opens it
//! again. Past [`MAX_OPEN`] files the table starts over: fds are a bounded resource.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags, CWD};

use super::cgroupfs::CgroupFs;
use super::error::KernelError;
use super::parse::{self, Result};

/// How long a file that could not be opened is taken as absent.
const RETRY: Duration = Duration::from_secs(1);
/// Two files per app cgroup of a phone's few hundred processes, well inside a service's fd limit.
const MAX_OPEN: usize = 1024;

/// The counters read, each a slot in a cgroup's entry.
#[derive(Clone, Copy)]
enum Counter {
    Memory = 0,
    Dmem = 1,
}

impl Counter {
    fn file(self) -> &'static str {
        match self {
            Counter::Memory => "memory.current",
            Counter::Dmem => "dmem.current",
        }
    }
}

/// An open counter file and its path (for errors).
struct OpenFile {
    fd: OwnedFd,
    path: PathBuf,
}

#[derive(Default)]
enum Slot {
    #[default]
    Unopened,
    Open(Arc<OpenFile>),
    /// Since when, and the path for the error (a query of a cgroup without the file, such as
    /// the root's memory.current, builds no path).
    Missing(Instant, PathBuf),
}

/// Keyed by the cgroup as the ledger names it, so a query that finds its files open builds no
/// path (a path join and a component-wise key compare cost more than the pread under emulation).
pub struct OpenCounters {
    fs: CgroupFs,
    files: Mutex<HashMap<String, [Slot; 2]>>,
}

impl OpenCounters {
    pub fn new(fs: CgroupFs) -> OpenCounters {
        OpenCounters { fs, files: Mutex::new(HashMap::new()) }
    }

    pub fn memory_current(&self, cgroup: &str) -> Result<u64> {
        self.read(cgroup, Counter::Memory, |path, bytes| parse::single(path, bytes, parse::number))
    }

    pub fn dmem_current(&self, cgroup: &str) -> Result<BTreeMap<String, u64>> {
        self.read(cgroup, Counter::Dmem, |path, bytes| {
            Ok(parse::keyed(path, bytes, "region", parse::number)?.into_iter().collect())
        })
    }

    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<String, [Slot; 2]>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, cgroup: &str, counter: Counter) -> Result<PathBuf> {
        Ok(self.fs.dir(cgroup)?.join(counter.file()))
    }

    fn open(&self, cgroup: &str, counter: Counter) -> Result<Arc<OpenFile>> {
        if let Some(slots) = self.files().get(cgroup) {
            match &slots[counter as usize] {
                Slot::Open(file) => return Ok(Arc::clone(file)),
                Slot::Missing(since, path) if since.elapsed() < RETRY => {
                    return Err(KernelError::io(path, io::Error::from(io::ErrorKind::NotFound)));
                }
                Slot::Missing(..) | Slot::Unopened => {}
            }
        }
        let path = self.path(cgroup, counter)?;
        let opened = rustix::fs::openat(CWD, &path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty());
        let mut files = self.files();
        if files.len() * 2 >= MAX_OPEN {
            files.clear();
        }
        let slot = &mut files.entry(cgroup.to_string()).or_default()[counter as usize];
        match opened {
            Ok(fd) => {
                let file = Arc::new(OpenFile { fd, path });
                *slot = Slot::Open(Arc::clone(&file));
                Ok(file)
            }
            Err(e) => {
                let err = KernelError::io(&path, e);
                *slot = Slot::Missing(Instant::now(), path);
                Err(err)
            }
        }
    }

    /// Reads the counter into a stack buffer (a counter file is a line or a few) and parses it.
    fn read<T>(&self, cgroup: &str, counter: Counter, parse: impl FnOnce(&Path, &[u8]) -> Result<T>) -> Result<T> {
        let file = self.open(cgroup, counter)?;
        let failed = |e| {
            if let Some(slots) = self.files().get_mut(cgroup) {
                slots[counter as usize] = Slot::Unopened;
            }
            KernelError::io(&file.path, e)
        };
        let mut small = [0u8; 512];
        let n = rustix::io::pread(&file.fd, &mut small, 0).map_err(failed)?;
        if n < small.len() {
            return parse(&file.path, &small[..n]);
        }
        let mut buf = vec![0u8; 2 * small.len()];
        loop {
            let n = rustix::io::pread(&file.fd, &mut buf, 0).map_err(failed)?;
            if n < buf.len() {
                return parse(&file.path, &buf[..n]);
            }
            buf.resize(buf.len() * 2, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use tempfile::TempDir;

    use super::*;

    #[test]
    fn counters_are_read_afresh_from_the_open_file_and_a_missing_one_is_an_error() {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path().join("uid_1/pid_2");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.current"), "4096\n").unwrap();
        std::fs::write(dir.join("dmem.current"), "drm/0000:03:00.0/vram0 8192\n").unwrap();
        let counters = OpenCounters::new(CgroupFs::new(tmp.path()));
        assert_eq!(counters.memory_current("/uid_1/pid_2").unwrap(), 4096);
        std::fs::write(dir.join("memory.current"), "12288\n").unwrap();
        assert_eq!(counters.memory_current("/uid_1/pid_2").unwrap(), 12288);
        assert_eq!(
            counters.dmem_current("/uid_1/pid_2").unwrap().into_iter().collect::<Vec<_>>(),
            [("drm/0000:03:00.0/vram0".to_string(), 8192)]
        );
        // Longer than the first read's buffer: read whole all the same.
        let long: String = (0..40).map(|i| format!("drm/0000:{i:02x}:00.0/vram0 {i}\n")).collect();
        std::fs::write(dir.join("dmem.current"), &long).unwrap();
        assert!(long.len() > 1024);
        assert_eq!(counters.dmem_current("/uid_1/pid_2").unwrap().len(), 40);
        assert!(matches!(counters.memory_current("/uid_1"), Err(KernelError::Io { .. })));
        assert!(matches!(counters.memory_current("relative"), Err(KernelError::InvalidCgroupPath(_))));
    }
}
