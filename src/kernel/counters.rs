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
use std::path::PathBuf;
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

enum Slot {
    Open(Arc<OwnedFd>),
    Missing(Instant),
}

pub struct OpenCounters {
    fs: CgroupFs,
    files: Mutex<HashMap<PathBuf, Slot>>,
}

impl OpenCounters {
    pub fn new(fs: CgroupFs) -> OpenCounters {
        OpenCounters { fs, files: Mutex::new(HashMap::new()) }
    }

    pub fn memory_current(&self, cgroup: &str) -> Result<u64> {
        let path = self.fs.dir(cgroup)?.join("memory.current");
        let bytes = self.read(&path)?;
        parse::single(&path, &bytes, parse::number)
    }

    pub fn dmem_current(&self, cgroup: &str) -> Result<BTreeMap<String, u64>> {
        let path = self.fs.dir(cgroup)?.join("dmem.current");
        let bytes = self.read(&path)?;
        Ok(parse::keyed(&path, &bytes, "region", parse::number)?.into_iter().collect())
    }

    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Slot>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open(&self, path: &PathBuf) -> Result<Arc<OwnedFd>> {
        if let Some(slot) = self.files().get(path) {
            match slot {
                Slot::Open(fd) => return Ok(Arc::clone(fd)),
                Slot::Missing(since) if since.elapsed() < RETRY => {
                    return Err(KernelError::io(path, io::Error::from(io::ErrorKind::NotFound)))
                }
                Slot::Missing(_) => {}
            }
        }
        let opened = rustix::fs::openat(CWD, path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty());
        let mut files = self.files();
        if files.len() >= MAX_OPEN {
            files.clear();
        }
        match opened {
            Ok(fd) => {
                let fd = Arc::new(fd);
                files.insert(path.clone(), Slot::Open(Arc::clone(&fd)));
                Ok(fd)
            }
            Err(e) => {
                files.insert(path.clone(), Slot::Missing(Instant::now()));
                Err(KernelError::io(path, e))
            }
        }
    }

    fn read(&self, path: &PathBuf) -> Result<Vec<u8>> {
        let fd = self.open(path)?;
        let mut buf = vec![0u8; 512];
        loop {
            match rustix::io::pread(&*fd, &mut buf, 0) {
                Ok(n) if n < buf.len() => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Ok(_) => buf.resize(buf.len() * 2, 0),
                Err(e) => {
                    self.files().remove(path);
                    return Err(KernelError::io(path, e));
                }
            }
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
        assert!(matches!(counters.memory_current("/uid_1"), Err(KernelError::Io { .. })));
        assert!(matches!(counters.memory_current("relative"), Err(KernelError::InvalidCgroupPath(_))));
    }
}
