//! /proc under a configurable root: the per-process files, read so that a process exiting
//! mid-read is "gone" (ENOENT/ESRCH become [`KernelError::NoSuchProcess`]), not an error.
//! What is read from them lives in two modules: [`identity`] (cgroup, uid, start time, comm,
//! cmdline) and [`scan`] (the dma-bufs each process holds, from fdinfo and maps).

mod identity;
mod scan;

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use super::error::{is_gone, KernelError};
use super::parse::Result;

pub(crate) use scan::parse_fdinfo;
pub use scan::DmaBufRef;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcFs {
    root: PathBuf,
}

/// Maps an I/O error on a /proc/PID file: a vanished process becomes `NoSuchProcess`.
fn pid_err(pid: u32, path: impl FnOnce() -> PathBuf) -> impl FnOnce(io::Error) -> KernelError {
    move |e| if is_gone(&e) { KernelError::NoSuchProcess(pid) } else { KernelError::io(&path(), e) }
}

fn read_fd(fd: OwnedFd, buf: &mut Vec<u8>) -> io::Result<()> {
    // Not `read_to_end`: its size probe (statx, lseek) and first 32-byte read are three system
    // calls a procfs file never needs. Reads of a page until one returns nothing, through a
    // chunk on the stack: `buf` is reused across files and may be large, and zero-filling its
    // whole capacity per read cost more than the reads.
    buf.clear();
    let mut file = File::from(fd);
    let mut chunk = [0u8; 4096];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

impl ProcFs {
    pub fn new(root: impl Into<PathBuf>) -> ProcFs {
        ProcFs { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Pids of all processes (numeric entries of the root), ascending.
    pub fn pids(&self) -> Result<Vec<u32>> {
        let entries = fs::read_dir(&self.root).map_err(|e| KernelError::io(&self.root, e))?;
        let mut pids: Vec<u32> = entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
        pids.sort_unstable();
        Ok(pids)
    }

    pub fn exists(&self, pid: u32) -> bool {
        self.pid_dir(pid).is_dir()
    }

    fn pid_dir(&self, pid: u32) -> PathBuf {
        self.root.join(pid.to_string())
    }

    fn read(&self, pid: u32, name: &str) -> Result<(PathBuf, Vec<u8>)> {
        let path = self.pid_dir(pid).join(name);
        let bytes = fs::read(&path).map_err(pid_err(pid, || path.clone()))?;
        Ok((path, bytes))
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A fixture /proc shared by the identity and scan tests.

    use std::fs;
    use std::os::unix::fs::MetadataExt;
    use std::path::PathBuf;

    use tempfile::TempDir;

    use super::ProcFs;
    use crate::kernel::fake_proc::{dmabuf_fdinfo, plain_fdinfo, FakeProc};
    use crate::kernel::KernelError;

    pub const STAT_TAIL: &str =
        "S 1 100 100 0 -1 4194560 500 0 0 0 7 3 0 0 20 0 4 0 987654 123456789 2000 18446744073709551615";

    /// /proc with three processes:
    /// - 100: fds 3 and 4 on dma-buf 5001 (fdinfo with ino:), fd 5 a pipe, fd 6 a dma-buf whose
    ///   fdinfo has no ino: (inode from stat of fd/6); maps 5001 twice and 7777 (mapped only).
    ///   Its comm contains ") (".
    /// - 200: no cgroup v2 line; holds 7777 by fd (exporter known) and maps 5001.
    /// - 300: has exited: its directory has no fdinfo.
    pub fn fixture() -> (TempDir, ProcFs, u64) {
        let tmp = TempDir::new().unwrap();
        let root = tmp.path();
        let fake = FakeProc::new(root);
        let put = |rel: &str, content: &str| fake.write(rel, content).unwrap();
        put("self/status", "Uid:\t0\t0\t0\t0\n");
        put("meminfo", "MemTotal: 1 kB\n");
        put("100/cgroup", "0::/uid_10001/pid_100\n");
        put("100/status",
            "Name:\tsurface flinger\nUmask:\t0077\nState:\tS (sleeping)\nUid:\t10001\t10002\t10001\t10001\nGid:\t1\t1\t1\t1\n",
        );
        put("100/stat", &format!("100 (a) (b) c) {STAT_TAIL}\n"));
        put("100/comm", "a) (b) c\n");
        put("100/cmdline", "/system/bin/app\0--flag\0");
        put("100/fdinfo/0", &plain_fdinfo(3));
        put("100/fdinfo/3", &dmabuf_fdinfo(Some(5001), 8192, 2, "system", Some("gralloc")));
        put("100/fdinfo/4", &dmabuf_fdinfo(Some(5001), 8192, 2, "system", Some("gralloc")));
        put("100/fdinfo/5", &plain_fdinfo(424242));
        put("100/fdinfo/6", &dmabuf_fdinfo(None, 4096, 2, "cma", None));
        put("100/fd/6", "stand-in for the dma-buf fd");
        let fd6_inode = fs::metadata(root.join("100/fd/6")).unwrap().ino();
        put(
            "100/maps",
            "55d0c0a00000-55d0c0a21000 r--p 00000000 fe:01 1234                       /system/bin/app\n\
             7f0000000000-7f0000002000 rw-s 00000000 00:0f 5001                       /dmabuf:gralloc\n\
             7f0000010000-7f0000011000 rw-s 00001000 00:0f 5001                       /dmabuf:gralloc\n\
             7f0000020000-7f0000024000 rw-s 00000000 00:0f 7777                       /dmabuf:\n\
             7f0000030000-7f0000031000 rw-p 00000000 00:00 0 \n\
             7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]\n",
        );
        put("200/cgroup", "12:memory:/apps\n1:name=systemd:/user.slice\n");
        put("200/status", "Name:\tapp\nUid:\t10002\t10002\t10002\t10002\n");
        put("200/stat", &format!("200 (app) {STAT_TAIL}\n"));
        put("200/fdinfo/7", &dmabuf_fdinfo(Some(7777), 16384, 2, "system", Some("camera")));
        put("200/maps", "7f0000000000-7f0000002000 rw-s 00000000 00:0f 5001 /dmabuf:gralloc\n");
        put("300/status", "Name:\tgone\n");
        let proc = ProcFs::new(root);
        (tmp, proc, fd6_inode)
    }

    pub fn parse_error(e: KernelError) -> (PathBuf, usize, String) {
        match e {
            KernelError::Parse { path, line, reason } => (path, line, reason),
            other => panic!("expected a parse error, got {other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::testing::fixture;
    use super::*;

    #[test]
    fn lists_numeric_entries_as_pids() {
        let (_tmp, proc, _) = fixture();
        assert_eq!(proc.pids().unwrap(), [100, 200, 300]);
        assert!(proc.exists(100) && !proc.exists(101));
    }

    #[test]
    fn scans_this_hosts_proc_without_failing() {
        let proc = ProcFs::new("/proc");
        let me = std::process::id();
        assert!(proc.exists(me));
        assert!(proc.cgroup_of(me).is_ok() || !Path::new("/sys/fs/cgroup/cgroup.controllers").exists());
        assert!(proc.starttime(me).unwrap() > 0);
        let scan = proc.scan_all().unwrap();
        assert!(scan.processes >= 1);
        assert!(proc.dmabufs(me).unwrap().is_empty(), "no dma-bufs on this host");
    }
}
