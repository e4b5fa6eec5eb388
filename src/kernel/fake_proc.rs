//! A /proc in a directory, written in the formats the kernel uses and [`super::procfs`] reads:
//! the demo's simulated phone and the tests point `ProcFs` (or the service's `--proc-root`) at
//! it. It writes only the files the service reads: status, cgroup, stat, comm, cmdline, maps and
//! fdinfo/N. The one place that knows how to fake them, so the fakes agree with each other.

use std::fmt::Display;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// A fake /proc rooted at a directory.
#[derive(Clone, Debug)]
pub struct FakeProc {
    root: PathBuf,
}

/// A process as its /proc files describe it.
#[derive(Clone, Copy, Debug)]
pub struct FakeProcess<'a> {
    pub pid: u32,
    /// Real, effective, saved and filesystem uid (and gid) alike.
    pub uid: u32,
    /// The cgroup v2 path written as `0::<cgroup>`, verbatim (tests write odd ones).
    pub cgroup: &'a str,
    /// Start time in clock ticks after boot (field 22 of stat).
    pub start: u64,
    pub comm: &'a str,
    pub ppid: u32,
    pub cmdline: &'a [&'a str],
}

impl FakeProcess<'_> {
    /// A process named "app", child of init, with no arguments.
    pub fn new(pid: u32, uid: u32, cgroup: &str, start: u64) -> FakeProcess<'_> {
        FakeProcess { pid, uid, cgroup, start, comm: "app", ppid: 1, cmdline: &[] }
    }
}

/// The fdinfo the kernel prints for a dma-buf fd (`ino:` only on kernels that print it). `size`
/// is written as given, so tests can write a malformed one.
pub fn dmabuf_fdinfo(ino: Option<u64>, size: impl Display, count: u32, exporter: &str, name: Option<&str>) -> String {
    let mut s = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\n".to_string();
    if let Some(ino) = ino {
        s += &format!("ino:\t{ino}\n");
    }
    s += &format!("size:\t{size}\ncount:\t{count}\nexp_name:\t{exporter}\n");
    if let Some(name) = name {
        s += &format!("name:\t{name}\n");
    }
    s
}

/// The fdinfo of an fd that is not a dma-buf (a pipe, a socket, a file).
pub fn plain_fdinfo(ino: u64) -> String {
    format!("pos:\t0\nflags:\t02\nmnt_id:\t25\nino:\t{ino}\n")
}

impl FakeProc {
    /// A fake /proc at `root`; directories are made as files are written.
    pub fn new(root: impl Into<PathBuf>) -> FakeProc {
        FakeProc { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn pid_dir(&self, pid: u32) -> PathBuf {
        self.root.join(pid.to_string())
    }

    /// Writes `content` at `rel` under the root, making the directories on the way.
    pub fn write(&self, rel: impl AsRef<Path>, content: impl AsRef<[u8]>) -> io::Result<()> {
        let path = self.root.join(rel);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(path, content)
    }

    /// Starts `p`, replacing any earlier process with its pid: status, cgroup, stat, comm,
    /// cmdline, an empty maps and empty fdinfo/ and fd/ directories.
    pub fn spawn(&self, p: &FakeProcess) -> io::Result<()> {
        let FakeProcess { pid, uid, cgroup, start, comm, ppid, cmdline } = *p;
        let dir = self.pid_dir(pid);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        fs::create_dir_all(dir.join("fdinfo"))?;
        fs::create_dir_all(dir.join("fd"))?;
        let ids = |id: u32| format!("{id}\t{id}\t{id}\t{id}");
        fs::write(
            dir.join("status"),
            format!(
                "Name:\t{comm}\nUmask:\t0077\nState:\tS (sleeping)\nTgid:\t{pid}\nPid:\t{pid}\nPPid:\t{ppid}\nUid:\t{}\nGid:\t{}\n",
                ids(uid),
                ids(uid)
            ),
        )?;
        fs::write(dir.join("cgroup"), format!("0::{cgroup}\n"))?;
        fs::write(
            dir.join("stat"),
            format!("{pid} ({comm}) S {ppid} {ppid} 0 0 -1 4194624 1200 0 0 0 35 12 0 0 20 0 12 0 {start} 2147483648 9000 18446744073709551615\n"),
        )?;
        fs::write(dir.join("comm"), format!("{comm}\n"))?;
        let args: String = cmdline.iter().map(|a| format!("{a}\0")).collect();
        fs::write(dir.join("cmdline"), args)?;
        fs::write(dir.join("maps"), "")
    }

    /// Gives `pid` an fd `fd` whose fdinfo is `fdinfo` ([`dmabuf_fdinfo`], [`plain_fdinfo`]).
    pub fn put_fd(&self, pid: u32, fd: u32, fdinfo: impl AsRef<[u8]>) -> io::Result<()> {
        self.write(format!("{pid}/fdinfo/{fd}"), fdinfo)
    }

    /// The process exits: its directory goes.
    pub fn exit(&self, pid: u32) -> io::Result<()> {
        fs::remove_dir_all(self.pid_dir(pid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::ProcFs;

    #[test]
    fn what_the_fake_writes_procfs_reads() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = FakeProc::new(tmp.path());
        let p = FakeProcess {
            comm: "a) (b",
            cmdline: &["/system/bin/app", "--flag"],
            ..FakeProcess::new(7, 10001, "/uid_10001/pid_7", 4242)
        };
        fake.spawn(&p).unwrap();
        fake.put_fd(7, 3, dmabuf_fdinfo(Some(5001), 8192, 1, "system", Some("gralloc"))).unwrap();
        fake.put_fd(7, 4, plain_fdinfo(99)).unwrap();
        let proc = ProcFs::new(tmp.path());
        assert_eq!(proc.uid_of(7).unwrap(), 10001);
        assert_eq!(proc.cgroup_of(7).unwrap(), "/uid_10001/pid_7");
        assert_eq!(proc.starttime(7).unwrap(), 4242);
        assert_eq!(proc.comm(7).unwrap(), "a) (b");
        assert_eq!(proc.cmdline(7).unwrap(), ["/system/bin/app", "--flag"]);
        let held = proc.dmabufs(7).unwrap();
        assert_eq!(held.iter().map(|r| (r.inode, r.size, r.fd_count)).collect::<Vec<_>>(), [(5001, 8192, 1)]);
        fake.exit(7).unwrap();
        assert!(!proc.exists(7));
    }
}
