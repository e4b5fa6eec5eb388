//! /proc under a configurable root: process identity (cgroup, uid, start time) and the dma-bufs
//! each process holds, found the way Android's libdmabufinfo finds them.
//!
//! A process holds a dma-buf through an fd (its `fdinfo/N` has `exp_name:`) or a mapping (a
//! `/dmabuf:` line in `maps`), and buffers are keyed by inode. Processes exit while they are
//! being read; ENOENT/ESRCH then mean "gone", which a scan records and moves past.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Dir, Mode, OFlags, CWD};

use super::dmabuf::parse_fdinfo;
use super::error::{is_gone, KernelError};
use super::parse::{byte_lines, number, Result};
use crate::ledger::Inode;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcFs {
    root: PathBuf,
}

/// One dma-buf as one process holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmaBufRef {
    pub inode: Inode,
    /// From fdinfo; for a buffer only mapped, the largest mapping's span.
    pub size: u64,
    /// Known when the process has an fd of it (`exp_name:`).
    pub exporter: Option<String>,
    /// From fdinfo `name:`, else from the mapping's `/dmabuf:<name>` if not empty.
    pub name: Option<String>,
    pub fd_count: u32,
    pub map_count: u32,
}

/// How one process holds one buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Holder {
    pub fd_count: u32,
    pub map_count: u32,
}

/// One buffer across the system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannedBuffer {
    pub size: u64,
    /// Known once any holder has an fd of it.
    pub exporter: Option<String>,
    pub name: Option<String>,
    pub holders: BTreeMap<u32, Holder>,
}

/// Every dma-buf held by a process at scan time.
#[derive(Debug, Default)]
pub struct DmaBufScan {
    pub buffers: BTreeMap<Inode, ScannedBuffer>,
    /// Processes read completely.
    pub processes: usize,
    /// Processes that exited while being read (normal; their buffers are no longer theirs).
    pub vanished: Vec<u32>,
    /// Processes that could not be read (EACCES without root, a malformed file). Their buffers
    /// are missing from `buffers`: a scan with errors must not be taken as proof that a buffer
    /// is gone.
    pub errors: Vec<(u32, KernelError)>,
}

impl DmaBufScan {
    /// Every listed process was read or had exited.
    pub fn is_complete(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Maps an I/O error on a /proc/PID file: a vanished process becomes `NoSuchProcess`.
fn pid_err(pid: u32, path: impl FnOnce() -> PathBuf) -> impl FnOnce(io::Error) -> KernelError {
    move |e| if is_gone(&e) { KernelError::NoSuchProcess(pid) } else { KernelError::io(&path(), e) }
}

fn read_fd(fd: OwnedFd, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    File::from(fd).read_to_end(buf).map(drop)
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

    /// The process's cgroup v2 path from the `0::/path` line of /proc/PID/cgroup. A removed
    /// cgroup's " (deleted)" suffix is dropped.
    pub fn cgroup_of(&self, pid: u32) -> Result<String> {
        let (path, bytes) = self.read(pid, "cgroup")?;
        parse_cgroup(&path, &bytes)
    }

    /// The real uid (first field of `Uid:` in /proc/PID/status).
    pub fn uid_of(&self, pid: u32) -> Result<u32> {
        let (path, bytes) = self.read(pid, "status")?;
        parse_uid(&path, &bytes)
    }

    /// Start time in clock ticks after boot (field 22 of /proc/PID/stat): with the pid, it names
    /// one process, so a recycled pid is told apart.
    pub fn starttime(&self, pid: u32) -> Result<u64> {
        let (path, bytes) = self.read(pid, "stat")?;
        parse_starttime(&path, &bytes)
    }

    pub fn comm(&self, pid: u32) -> Result<String> {
        let (_, bytes) = self.read(pid, "comm")?;
        Ok(String::from_utf8_lossy(bytes.strip_suffix(b"\n").unwrap_or(&bytes)).into_owned())
    }

    /// Arguments (empty for kernel threads and zombies).
    pub fn cmdline(&self, pid: u32) -> Result<Vec<String>> {
        let (_, bytes) = self.read(pid, "cmdline")?;
        let body = bytes.strip_suffix(b"\0").unwrap_or(&bytes);
        if body.is_empty() {
            return Ok(Vec::new());
        }
        Ok(body.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect())
    }

    /// The dma-bufs one process holds, by inode. `NoSuchProcess` if it exited meanwhile.
    pub fn dmabufs(&self, pid: u32) -> Result<Vec<DmaBufRef>> {
        self.scan_pid(pid, &mut Vec::new())
    }

    /// Every process's dma-bufs, merged by inode.
    pub fn scan_all(&self) -> Result<DmaBufScan> {
        let mut scan = DmaBufScan::default();
        let mut buf = Vec::with_capacity(16 << 10);
        for pid in self.pids()? {
            let refs = match self.scan_pid(pid, &mut buf) {
                Ok(refs) => refs,
                Err(e) if e.is_vanished() => {
                    scan.vanished.push(pid);
                    continue;
                }
                Err(e) => {
                    scan.errors.push((pid, e));
                    continue;
                }
            };
            scan.processes += 1;
            for r in refs {
                let holder = Holder { fd_count: r.fd_count, map_count: r.map_count };
                let seen = scan.buffers.entry(r.inode).or_insert_with(|| ScannedBuffer {
                    size: r.size,
                    exporter: None,
                    name: None,
                    holders: BTreeMap::new(),
                });
                merge(seen, &r);
                seen.holders.insert(pid, holder);
            }
        }
        Ok(scan)
    }

    fn pid_dir(&self, pid: u32) -> PathBuf {
        self.root.join(pid.to_string())
    }

    fn read(&self, pid: u32, name: &str) -> Result<(PathBuf, Vec<u8>)> {
        let path = self.pid_dir(pid).join(name);
        let bytes = fs::read(&path).map_err(pid_err(pid, || path.clone()))?;
        Ok((path, bytes))
    }

    /// Reads fdinfo entries and maps relative to an open /proc/PID directory, so a pid recycled
    /// mid-scan is not mixed in (the old directory's fds then fail with ESRCH/ENOENT).
    fn scan_pid(&self, pid: u32, buf: &mut Vec<u8>) -> Result<Vec<DmaBufRef>> {
        let pid_path = self.pid_dir(pid);
        let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let pid_dir = rustix::fs::openat(CWD, &pid_path, dir_flags, Mode::empty())
            .map_err(|e| pid_err(pid, || pid_path.clone())(e.into()))?;
        let fdinfo = rustix::fs::openat(&pid_dir, "fdinfo", dir_flags, Mode::empty())
            .map_err(|e| pid_err(pid, || pid_path.join("fdinfo"))(e.into()))?;
        let mut refs: BTreeMap<Inode, DmaBufRef> = BTreeMap::new();
        let mut dir = Dir::new(fdinfo).map_err(|e| pid_err(pid, || pid_path.join("fdinfo"))(e.into()))?;
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(|e| pid_err(pid, || pid_path.join("fdinfo"))(e.into()))?;
            let name = entry.file_name();
            let Ok(fd_name) = std::str::from_utf8(name.to_bytes()) else { continue };
            if fd_name.is_empty() || !fd_name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let entry_path = || pid_path.join("fdinfo").join(fd_name);
            let dir_fd = dir.fd().map_err(|e| KernelError::io(&entry_path(), e))?;
            let file = match rustix::fs::openat(dir_fd, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
                Ok(file) => file,
                Err(rustix::io::Errno::NOENT) => continue, // the fd was closed after readdir
                Err(e) => return Err(pid_err(pid, entry_path)(e.into())),
            };
            read_fd(file, buf).map_err(pid_err(pid, entry_path))?;
            let Some(info) = parse_fdinfo(&entry_path(), buf)? else { continue };
            let inode = match info.ino {
                Some(inode) => inode,
                None => match rustix::fs::statat(&pid_dir, format!("fd/{fd_name}"), AtFlags::empty()) {
                    Ok(stat) => stat.st_ino,
                    Err(rustix::io::Errno::NOENT) => continue,
                    Err(e) => return Err(pid_err(pid, || pid_path.join("fd").join(fd_name))(e.into())),
                },
            };
            let r = refs.entry(inode).or_insert_with(|| DmaBufRef {
                inode,
                size: info.size,
                exporter: None,
                name: None,
                fd_count: 0,
                map_count: 0,
            });
            if r.exporter.is_none() {
                (r.size, r.exporter, r.name) = (info.size, Some(info.exporter), info.name);
            }
            r.fd_count += 1;
        }
        drop(dir);
        let maps_path = || pid_path.join("maps");
        let maps = rustix::fs::openat(pid_dir.as_fd(), "maps", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| pid_err(pid, maps_path)(e.into()))?;
        read_fd(maps, buf).map_err(pid_err(pid, maps_path))?;
        for_each_dmabuf_mapping(&maps_path(), buf, |m| {
            let r = refs.entry(m.inode).or_insert_with(|| DmaBufRef {
                inode: m.inode,
                size: 0,
                exporter: None,
                name: None,
                fd_count: 0,
                map_count: 0,
            });
            if r.exporter.is_none() {
                r.size = r.size.max(m.span);
                if r.name.is_none() && !m.name.is_empty() {
                    r.name = Some(String::from_utf8_lossy(m.name).into_owned());
                }
            }
            r.map_count += 1;
        })?;
        Ok(refs.into_values().collect())
    }
}

/// fdinfo knowledge (exporter, exact size) beats what a mapping suggests.
fn merge(seen: &mut ScannedBuffer, r: &DmaBufRef) {
    if seen.exporter.is_some() {
        return;
    }
    if r.exporter.is_some() {
        (seen.size, seen.exporter, seen.name) = (r.size, r.exporter.clone(), r.name.clone());
    } else {
        seen.size = seen.size.max(r.size);
        if seen.name.is_none() {
            seen.name.clone_from(&r.name);
        }
    }
}

/// One `/dmabuf:` mapping.
pub(crate) struct Mapping<'a> {
    pub inode: Inode,
    pub span: u64,
    pub name: &'a [u8],
}

/// Splits the first space-separated field off, skipping the spaces after it.
fn field(s: &[u8]) -> (&[u8], &[u8]) {
    let end = s.iter().position(|&b| b == b' ').unwrap_or(s.len());
    let rest = &s[end..];
    let skip = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
    (&s[..end], &rest[skip..])
}

/// Calls `f` for each mapping of a dma-buf in a maps file
/// (`start-end perms offset dev inode   /dmabuf:<name>`). Other lines are not validated.
pub(crate) fn for_each_dmabuf_mapping<'a>(path: &Path, bytes: &'a [u8], mut f: impl FnMut(Mapping<'a>)) -> Result<()> {
    for (n, line) in byte_lines(bytes) {
        let mut fields = [&[][..]; 5];
        let mut rest = line;
        for slot in &mut fields {
            (*slot, rest) = field(rest);
        }
        let Some(name) = rest.strip_prefix(b"/dmabuf:") else { continue };
        let bad = |what: &str| KernelError::parse(path, n, format!("dma-buf mapping: {what}"));
        let range = std::str::from_utf8(fields[0]).map_err(|_| bad("invalid address range"))?;
        let (start, end) = range.split_once('-').ok_or_else(|| bad(&format!("address range {range:?} without '-'")))?;
        let hex = |s: &str| u64::from_str_radix(s, 16).ok().filter(|_| !s.starts_with('+'));
        let (Some(start), Some(end)) = (hex(start), hex(end)) else {
            return Err(bad(&format!("invalid address range {range:?}")));
        };
        let span = end
            .checked_sub(start)
            .filter(|s| *s > 0)
            .ok_or_else(|| bad(&format!("empty or reversed range {range:?}")))?;
        let inode = std::str::from_utf8(fields[4])
            .map_err(|_| bad("invalid inode"))
            .and_then(|s| number(s).map_err(|r| bad(&format!("inode: {r}"))))?;
        f(Mapping { inode, span, name });
    }
    Ok(())
}

fn parse_cgroup(path: &Path, bytes: &[u8]) -> Result<String> {
    for (n, line) in byte_lines(bytes) {
        let Some(cgroup) = line.strip_prefix(b"0::") else { continue };
        let cgroup =
            std::str::from_utf8(cgroup).map_err(|_| KernelError::parse(path, n, "cgroup path is not UTF-8"))?;
        let cgroup = cgroup.strip_suffix(" (deleted)").unwrap_or(cgroup);
        if !cgroup.starts_with('/') {
            return Err(KernelError::parse(path, n, format!("cgroup v2 path {cgroup:?} is not absolute")));
        }
        return Ok(cgroup.to_string());
    }
    Err(KernelError::parse(path, 0, "no cgroup v2 line (\"0::/path\")"))
}

fn parse_uid(path: &Path, bytes: &[u8]) -> Result<u32> {
    for (n, line) in byte_lines(bytes) {
        let Some(ids) = line.strip_prefix(b"Uid:") else { continue };
        let real = std::str::from_utf8(ids).ok().and_then(|s| s.split_whitespace().next()).unwrap_or_default();
        return number(real)
            .and_then(|u| u32::try_from(u).map_err(|_| format!("uid {u} out of range")))
            .map_err(|reason| KernelError::parse(path, n, format!("Uid: {reason}")));
    }
    Err(KernelError::parse(path, 0, "no Uid: line"))
}

/// Field 22 of stat. comm (field 2) is in parentheses and may itself contain spaces and
/// parentheses, so the fields are counted after the last ')'.
fn parse_starttime(path: &Path, bytes: &[u8]) -> Result<u64> {
    let close =
        bytes.iter().rposition(|&b| b == b')').ok_or_else(|| KernelError::parse(path, 1, "no ')' closing comm"))?;
    let line = 1 + bytes[..close].iter().filter(|&&b| b == b'\n').count();
    let rest = std::str::from_utf8(&bytes[close + 1..])
        .map_err(|_| KernelError::parse(path, line, "invalid UTF-8 after comm"))?;
    // After comm come field 3 (state) onwards: field 22 is the 20th.
    let raw = rest.split_whitespace().nth(19).ok_or_else(|| KernelError::parse(path, line, "fewer than 22 fields"))?;
    number(raw).map_err(|reason| KernelError::parse(path, line, format!("starttime (field 22): {reason}")))
}

/// Parsers over a whole fixture file, for the property tests.
#[cfg(test)]
fn parse_all(bytes: &[u8]) {
    let p = Path::new("f");
    let _ = parse_cgroup(p, bytes);
    let _ = parse_uid(p, bytes);
    let _ = parse_starttime(p, bytes);
    let _ = for_each_dmabuf_mapping(p, bytes, |_| {});
    let _ = super::parse::text(p, bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::fs::MetadataExt;
    use tempfile::TempDir;

    const STAT_TAIL: &str =
        "S 1 100 100 0 -1 4194560 500 0 0 0 7 3 0 0 20 0 4 0 987654 123456789 2000 18446744073709551615";

    fn put(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    fn dmabuf_fdinfo(ino: Option<u64>, size: u64, exporter: &str, name: Option<&str>) -> String {
        let mut s = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\n".to_string();
        if let Some(ino) = ino {
            s += &format!("ino:\t{ino}\n");
        }
        s += &format!("size:\t{size}\ncount:\t2\nexp_name:\t{exporter}\n");
        if let Some(name) = name {
            s += &format!("name:\t{name}\n");
        }
        s
    }

    /// /proc with three processes:
    /// - 100: fds 3 and 4 on dma-buf 5001 (fdinfo with ino:), fd 5 a pipe, fd 6 a dma-buf whose
    ///   fdinfo has no ino: (inode from stat of fd/6); maps 5001 twice and 7777 (mapped only).
    ///   Its comm contains ") (".
    /// - 200: no cgroup v2 line; holds 7777 by fd (exporter known) and maps 5001.
    /// - 300: has exited: its directory has no fdinfo.
    fn fixture() -> (TempDir, ProcFs, u64) {
        let tmp = TempDir::new().unwrap();
        let root = tmp.path();
        put(root, "self/status", "Uid:\t0\t0\t0\t0\n");
        put(root, "meminfo", "MemTotal: 1 kB\n");
        put(root, "100/cgroup", "0::/uid_10001/pid_100\n");
        put(
            root,
            "100/status",
            "Name:\tsurface flinger\nUmask:\t0077\nState:\tS (sleeping)\nUid:\t10001\t10002\t10001\t10001\nGid:\t1\t1\t1\t1\n",
        );
        put(root, "100/stat", &format!("100 (a) (b) c) {STAT_TAIL}\n"));
        put(root, "100/comm", "a) (b) c\n");
        put(root, "100/cmdline", "/system/bin/app\0--flag\0");
        put(root, "100/fdinfo/0", "pos:\t0\nflags:\t02\nmnt_id:\t25\nino:\t3\n");
        put(root, "100/fdinfo/3", &dmabuf_fdinfo(Some(5001), 8192, "system", Some("gralloc")));
        put(root, "100/fdinfo/4", &dmabuf_fdinfo(Some(5001), 8192, "system", Some("gralloc")));
        put(root, "100/fdinfo/5", "pos:\t0\nflags:\t00\nmnt_id:\t14\nino:\t424242\n");
        put(root, "100/fdinfo/6", &dmabuf_fdinfo(None, 4096, "cma", None));
        put(root, "100/fd/6", "stand-in for the dma-buf fd");
        let fd6_inode = fs::metadata(root.join("100/fd/6")).unwrap().ino();
        put(
            root,
            "100/maps",
            "55d0c0a00000-55d0c0a21000 r--p 00000000 fe:01 1234                       /system/bin/app\n\
             7f0000000000-7f0000002000 rw-s 00000000 00:0f 5001                       /dmabuf:gralloc\n\
             7f0000010000-7f0000011000 rw-s 00001000 00:0f 5001                       /dmabuf:gralloc\n\
             7f0000020000-7f0000024000 rw-s 00000000 00:0f 7777                       /dmabuf:\n\
             7f0000030000-7f0000031000 rw-p 00000000 00:00 0 \n\
             7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]\n",
        );
        put(root, "200/cgroup", "12:memory:/apps\n1:name=systemd:/user.slice\n");
        put(root, "200/status", "Name:\tapp\nUid:\t10002\t10002\t10002\t10002\n");
        put(root, "200/stat", &format!("200 (app) {STAT_TAIL}\n"));
        put(root, "200/fdinfo/7", &dmabuf_fdinfo(Some(7777), 16384, "system", Some("camera")));
        put(root, "200/maps", "7f0000000000-7f0000002000 rw-s 00000000 00:0f 5001 /dmabuf:gralloc\n");
        put(root, "300/status", "Name:\tgone\n");
        let proc = ProcFs::new(root);
        (tmp, proc, fd6_inode)
    }

    fn parse_error(e: KernelError) -> (PathBuf, usize, String) {
        match e {
            KernelError::Parse { path, line, reason } => (path, line, reason),
            other => panic!("expected a parse error, got {other}"),
        }
    }

    #[test]
    fn lists_numeric_entries_as_pids() {
        let (_tmp, proc, _) = fixture();
        assert_eq!(proc.pids().unwrap(), [100, 200, 300]);
        assert!(proc.exists(100) && !proc.exists(101));
    }

    #[test]
    fn reads_identity_of_a_process() {
        let (_tmp, proc, _) = fixture();
        assert_eq!(proc.cgroup_of(100).unwrap(), "/uid_10001/pid_100");
        assert_eq!(proc.uid_of(100).unwrap(), 10001, "the real uid, not the effective 10002");
        assert_eq!(proc.starttime(100).unwrap(), 987654, "comm with \") (\" inside is skipped");
        assert_eq!(proc.starttime(200).unwrap(), 987654);
        assert_eq!(proc.comm(100).unwrap(), "a) (b) c");
        assert_eq!(proc.cmdline(100).unwrap(), ["/system/bin/app", "--flag"]);
        assert!(matches!(proc.uid_of(999), Err(KernelError::NoSuchProcess(999))));
        assert!(matches!(proc.starttime(300), Err(KernelError::NoSuchProcess(300))));
    }

    #[test]
    fn a_process_without_a_cgroup_v2_line_is_a_parse_error() {
        let (tmp, proc, _) = fixture();
        let (path, line, reason) = parse_error(proc.cgroup_of(200).unwrap_err());
        assert_eq!((path, line), (tmp.path().join("200/cgroup"), 0));
        assert!(reason.contains("no cgroup v2 line"), "{reason}");
    }

    #[test]
    fn cgroup_lines_are_read_like_the_kernel_writes_them() {
        let p = Path::new("cgroup");
        assert_eq!(parse_cgroup(p, b"1:name=systemd:/x\n0::/\n").unwrap(), "/");
        assert_eq!(parse_cgroup(p, b"0::/uid_1/pid_2 (deleted)\n").unwrap(), "/uid_1/pid_2");
        assert_eq!(parse_cgroup(p, b"0::/a:b\n").unwrap(), "/a:b");
        assert_eq!(parse_error(parse_cgroup(p, b"3:cpu:/\n0::relative\n").unwrap_err()).1, 2);
    }

    #[test]
    fn malformed_stat_and_status_name_the_line() {
        let p = Path::new("stat");
        assert_eq!(parse_error(parse_starttime(p, b"1 (x S 1 2\n").unwrap_err()).1, 1);
        assert!(parse_error(parse_starttime(p, b"1 (x) S 1 2\n").unwrap_err()).2.contains("fewer than 22"));
        let bad = format!("1 (x) {}\n", STAT_TAIL.replace("987654", "98x"));
        assert!(parse_error(parse_starttime(p, bad.as_bytes()).unwrap_err()).2.contains("\"98x\""));
        assert_eq!(parse_error(parse_uid(p, b"Name:\tx\nUid:\tabc\t0\n").unwrap_err()).1, 2);
        assert_eq!(parse_error(parse_uid(p, b"Name:\tx\n").unwrap_err()).1, 0);
    }

    #[test]
    fn finds_a_processs_dmabufs_by_fd_and_by_mapping() {
        let (_tmp, proc, fd6_inode) = fixture();
        let refs = proc.dmabufs(100).unwrap();
        let by_inode: BTreeMap<Inode, DmaBufRef> = refs.into_iter().map(|r| (r.inode, r)).collect();
        assert_eq!(by_inode.len(), 3, "{by_inode:?}");
        assert_eq!(
            by_inode[&5001],
            DmaBufRef {
                inode: 5001,
                size: 8192,
                exporter: Some("system".into()),
                name: Some("gralloc".into()),
                fd_count: 2,
                map_count: 2
            }
        );
        assert_eq!(
            by_inode[&fd6_inode],
            DmaBufRef {
                inode: fd6_inode,
                size: 4096,
                exporter: Some("cma".into()),
                name: None,
                fd_count: 1,
                map_count: 0
            },
            "without ino: in fdinfo the inode comes from stat of fd/N"
        );
        assert_eq!(
            by_inode[&7777],
            DmaBufRef { inode: 7777, size: 0x4000, exporter: None, name: None, fd_count: 0, map_count: 1 },
            "mapped only: size from the span, exporter unknown"
        );
        assert!(!by_inode.contains_key(&424242), "the pipe is not a dma-buf");
        assert!(matches!(proc.dmabufs(300), Err(KernelError::NoSuchProcess(300))));
        assert!(matches!(proc.dmabufs(999), Err(KernelError::NoSuchProcess(999))));
    }

    #[test]
    fn a_system_scan_merges_holders_and_skips_vanished_processes() {
        let (_tmp, proc, fd6_inode) = fixture();
        let scan = proc.scan_all().unwrap();
        assert_eq!(scan.processes, 2);
        assert_eq!(scan.vanished, [300]);
        assert!(scan.is_complete(), "{:?}", scan.errors);
        assert_eq!(scan.buffers.keys().copied().collect::<Vec<_>>(), {
            let mut v = vec![5001, 7777, fd6_inode];
            v.sort_unstable();
            v
        });
        let shared = &scan.buffers[&5001];
        assert_eq!((shared.size, shared.exporter.as_deref()), (8192, Some("system")));
        assert_eq!(shared.holders[&100], Holder { fd_count: 2, map_count: 2 });
        assert_eq!(shared.holders[&200], Holder { fd_count: 0, map_count: 1 });
        let camera = &scan.buffers[&7777];
        assert_eq!(
            (camera.size, camera.exporter.as_deref(), camera.name.as_deref()),
            (16384, Some("system"), Some("camera")),
            "pid 200's fdinfo fills in what pid 100's mapping could not know"
        );
        assert_eq!(camera.holders.keys().copied().collect::<Vec<_>>(), [100, 200]);
    }

    #[test]
    fn a_malformed_dmabuf_file_fails_that_process_only() {
        let (tmp, proc, _) = fixture();
        put(tmp.path(), "200/fdinfo/8", "size:\tlots\ncount:\t1\nexp_name:\tsystem\n");
        let scan = proc.scan_all().unwrap();
        assert_eq!(scan.processes, 1);
        assert!(!scan.is_complete());
        let (pid, err) = &scan.errors[0];
        assert_eq!(*pid, 200);
        assert!(
            err.to_string()
                .starts_with(&format!("{}:1: size: invalid number", tmp.path().join("200/fdinfo/8").display())),
            "{err}"
        );
        put(tmp.path(), "200/fdinfo/8", "pos:\t0\n");
        put(tmp.path(), "200/maps", "zzzz 0 0 0 1 /dmabuf:\n");
        let (path, line, _) = parse_error(proc.dmabufs(200).unwrap_err());
        assert_eq!((path, line), (tmp.path().join("200/maps"), 1));
    }

    #[test]
    fn maps_lines_give_inode_span_and_name() {
        let text = b"7f00-7f10 rw-s 0 00:0f 42 /dmabuf:cam era\n1000-2000 r-xp 0 08:01 99 /lib/x.so\n";
        let mut seen = Vec::new();
        for_each_dmabuf_mapping(Path::new("maps"), text, |m| seen.push((m.inode, m.span, m.name.to_vec()))).unwrap();
        assert_eq!(seen, [(42, 0x10, b"cam era".to_vec())]);
        for bad in [
            "10-1 rw-s 0 0 1 /dmabuf:\n",
            "10 rw-s 0 0 1 /dmabuf:\n",
            "1-2 rw-s 0 0 x /dmabuf:\n",
            "1-+2 rw-s 0 0 1 /dmabuf:\n",
        ] {
            assert!(for_each_dmabuf_mapping(Path::new("maps"), bad.as_bytes(), |_| {}).is_err(), "{bad:?}");
        }
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

    proptest! {
        #[test]
        fn proc_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            parse_all(&bytes);
        }

        #[test]
        fn proc_lines_never_panic(lines in proptest::collection::vec(
            prop_oneof!["0::[ -~]{0,10}", "Uid:[ -~\t]{0,12}", "[0-9a-f-]{0,12} [rwxsp-]{4} 0 00:0f [0-9x]{0,4} +/dmabuf:[ -~]{0,4}", "[ -~()]{0,40}"],
            0..6)
        ) {
            parse_all(lines.join("\n").as_bytes());
        }
    }
}
