//! The dma-bufs each process holds, found the way Android's libdmabufinfo finds them: through
//! an fd (its `fdinfo/N` has `exp_name:`) or a mapping (a `/dmabuf:` line in `maps`), keyed by
//! inode and merged across processes. The fdinfo and maps parsers live here with their one user
//! (fd inspection in `dmabuf` reuses the fdinfo parser).

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Dir, Mode, OFlags, CWD};

use super::{pid_err, read_fd, ProcFs};
use crate::kernel::error::KernelError;
use crate::kernel::parse::{byte_lines, number, Result};
use crate::kernel::view::{Builder, DmaBufScan, Holder};
use crate::ledger::Inode;

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

impl ProcFs {
    /// The dma-bufs one process holds, by inode. `NoSuchProcess` if it exited meanwhile.
    pub fn dmabufs(&self, pid: u32) -> Result<Vec<DmaBufRef>> {
        self.scan_pid(pid, &mut Vec::new())
    }

    /// Whether process `pid` holds the dma-buf `inode` by an fd or a mapping ([`ProcFs::dmabufs`]
    /// for one buffer). With `dev`, the dma-buf filesystem's device, each fd is matched by one
    /// stat of its /proc link instead of an open, read and close of its fdinfo.
    pub fn holds(&self, pid: u32, inode: Inode, dev: Option<u64>) -> Result<bool> {
        let Some(dev) = dev else { return Ok(self.dmabufs(pid)?.iter().any(|r| r.inode == inode)) };
        let (pid_path, pid_dir, mut dir) = self.open_pid(pid)?;
        let mut buf = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(|e| pid_err(pid, || pid_path.join("fdinfo"))(e.into()))?;
            let name = entry.file_name();
            let Ok(fd_name) = std::str::from_utf8(name.to_bytes()) else { continue };
            if fd_name.is_empty() || !fd_name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            match rustix::fs::statat(&pid_dir, format!("fd/{fd_name}"), AtFlags::empty()) {
                Ok(stat) if stat.st_dev == dev && stat.st_ino == inode => return Ok(true),
                Ok(_) => continue,
                // No link to stat (the fd was closed, or a tree without fd links): its fdinfo.
                Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(pid_err(pid, || pid_path.join("fd").join(fd_name))(e.into())),
            }
            let entry_path = || pid_path.join("fdinfo").join(fd_name);
            let dir_fd = dir.fd().map_err(|e| KernelError::io(&entry_path(), e))?;
            let file = match rustix::fs::openat(dir_fd, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
                Ok(file) => file,
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(pid_err(pid, entry_path)(e.into())),
            };
            read_fd(file, &mut buf).map_err(pid_err(pid, entry_path))?;
            if parse_fdinfo(&entry_path(), &buf)?.is_some_and(|info| info.ino == Some(inode)) {
                return Ok(true);
            }
        }
        drop(dir);
        let maps_path = || pid_path.join("maps");
        let maps = rustix::fs::openat(pid_dir.as_fd(), "maps", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| pid_err(pid, maps_path)(e.into()))?;
        read_fd(maps, &mut buf).map_err(pid_err(pid, maps_path))?;
        let mut mapped = false;
        for_each_dmabuf_mapping(&maps_path(), &buf, |m| mapped |= m.inode == inode)?;
        Ok(mapped)
    }

    /// Every process's dma-bufs, merged by inode.
    pub fn scan_all(&self) -> Result<DmaBufScan> {
        let mut scan = DmaBufScan::default();
        let mut buf = Vec::with_capacity(16 << 10);
        // Each process's refs in pid order, then sorted by inode (stable: each buffer's holders
        // stay in pid order, as the merge and the view want them).
        let mut held: Vec<(u32, DmaBufRef)> = Vec::new();
        for pid in self.pids()? {
            match self.scan_pid(pid, &mut buf) {
                Ok(refs) => {
                    scan.processes += 1;
                    held.extend(refs.into_iter().map(|r| (pid, r)));
                }
                Err(e) if e.is_vanished() => scan.vanished.push(pid),
                Err(e) => scan.errors.push((pid, e)),
            }
        }
        held.sort_by_key(|(_, r)| r.inode);
        let mut view = Builder::with_capacity(held.len());
        for run in held.chunk_by(|a, b| a.1.inode == b.1.inode) {
            let (size, exporter, name) = merged(run);
            view.buffer(run[0].1.inode, size, exporter, name);
        }
        scan.buffers = view.holders(
            held.iter().map(|(pid, r)| (r.inode, *pid, Holder { fd_count: r.fd_count, map_count: r.map_count })),
        );
        Ok(scan)
    }

    /// /proc/PID opened, with its fdinfo directory for listing: both relative to the one open
    /// directory, so a recycled pid cannot mix in.
    fn open_pid(&self, pid: u32) -> Result<(PathBuf, OwnedFd, Dir)> {
        let pid_path = self.pid_dir(pid);
        let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let pid_dir = rustix::fs::openat(CWD, &pid_path, dir_flags, Mode::empty())
            .map_err(|e| pid_err(pid, || pid_path.clone())(e.into()))?;
        let fdinfo = rustix::fs::openat(&pid_dir, "fdinfo", dir_flags, Mode::empty())
            .map_err(|e| pid_err(pid, || pid_path.join("fdinfo"))(e.into()))?;
        let dir = Dir::new(fdinfo).map_err(|e| pid_err(pid, || pid_path.join("fdinfo"))(e.into()))?;
        Ok((pid_path, pid_dir, dir))
    }

    /// Reads fdinfo entries and maps relative to an open /proc/PID directory, so a pid recycled
    /// mid-scan is not mixed in (the old directory's fds then fail with ESRCH/ENOENT).
    fn scan_pid(&self, pid: u32, buf: &mut Vec<u8>) -> Result<Vec<DmaBufRef>> {
        let (pid_path, pid_dir, mut dir) = self.open_pid(pid)?;
        let mut refs: BTreeMap<Inode, DmaBufRef> = BTreeMap::new();
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

/// One buffer's size, exporter and name from its holders' refs in pid order: fdinfo knowledge
/// (exporter, exact size) beats what a mapping suggests, so the first holder with an fd gives
/// all three; without one, the largest mapping's span and the first name a mapping shows.
fn merged(run: &[(u32, DmaBufRef)]) -> (u64, Option<&str>, Option<&str>) {
    let (mut size, mut name) = (0, None);
    for (_, r) in run {
        if let Some(exporter) = &r.exporter {
            return (r.size, Some(exporter), r.name.as_deref());
        }
        size = size.max(r.size);
        name = name.or(r.name.as_deref());
    }
    (size, None, name)
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

/// The dma-buf part of one fdinfo file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fdinfo {
    /// `ino:` (procfs prints it on newer kernels); without it, stat /proc/PID/fd/N.
    pub ino: Option<Inode>,
    pub size: u64,
    pub exporter: String,
    pub name: Option<String>,
}

/// Parses fdinfo; `None` when it has no `exp_name:` (not a dma-buf). Fields of other files are
/// not validated, so whatever an unrelated driver prints cannot fail a scan.
///
/// The kernel prints the generic lines, then `size`, `count`, `exp_name` and last the
/// user-settable `name`. So the first occurrence of a key wins and every line after `name:`
/// belongs to the name: a name containing "\nsize:\t1" cannot spoof the size.
pub(crate) fn parse_fdinfo(path: &Path, bytes: &[u8]) -> Result<Option<Fdinfo>> {
    let mut ino = None;
    let mut size = None;
    let mut exporter: Option<&[u8]> = None;
    let mut name: Option<Vec<u8>> = None;
    for (n, line) in byte_lines(bytes) {
        if let Some(name) = name.as_mut() {
            name.push(b'\n');
            name.extend_from_slice(line);
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (key, value) = (&line[..colon], &line[colon + 1..]);
        match key {
            b"ino" if ino.is_none() => ino = Some((n, value.trim_ascii())),
            b"size" if size.is_none() => size = Some((n, value.trim_ascii())),
            b"exp_name" if exporter.is_none() => exporter = Some(value.trim_ascii()),
            b"name" if exporter.is_some() => name = Some(value.strip_prefix(b"\t").unwrap_or(value).to_vec()),
            _ => {}
        }
    }
    let Some(exporter) = exporter else { return Ok(None) };
    let field = |what: &str, (n, raw): (usize, &[u8])| {
        let text =
            std::str::from_utf8(raw).map_err(|_| KernelError::parse(path, n, format!("{what}: invalid UTF-8")))?;
        number(text).map_err(|reason| KernelError::parse(path, n, format!("{what}: {reason}")))
    };
    let size = match size {
        Some(s) => field("size", s)?,
        None => return Err(KernelError::parse(path, 0, "dma-buf fdinfo (has exp_name:) without size:")),
    };
    if exporter.is_empty() {
        return Err(KernelError::parse(path, 0, "empty exp_name:"));
    }
    Ok(Some(Fdinfo {
        ino: ino.map(|i| field("ino", i)).transpose()?,
        size,
        exporter: String::from_utf8_lossy(exporter).into_owned(),
        name: name.map(|n| String::from_utf8_lossy(&n).into_owned()),
    }))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;

    use super::super::testing::{fixture, parse_error};
    use super::*;
    use crate::kernel::fake_proc::FakeProc;

    #[test]
    fn holds_agrees_with_the_full_scan_of_one_process_with_and_without_the_dmabuf_device() {
        let (_tmp, proc, fd6_inode) = fixture();
        let held: Vec<Inode> = proc.dmabufs(100).unwrap().into_iter().map(|r| r.inode).collect();
        // The fixture's fd 6 link stands in for a dma-buf: its file's device plays the dma-buf
        // filesystem's; the other fds have no link, so their fdinfo answers.
        let dev = std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(proc.root().join("100/fd/6")).unwrap());
        for dev in [None, Some(dev)] {
            for inode in held.iter().copied().chain([fd6_inode, 1, 999_999]) {
                assert_eq!(proc.holds(100, inode, dev).unwrap(), held.contains(&inode), "inode {inode}, dev {dev:?}");
            }
            assert!(proc.holds(424_242, 5001, dev).unwrap_err().is_vanished());
        }
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
        assert_eq!(scan.buffers.inodes().collect::<Vec<_>>(), {
            let mut v = vec![5001, 7777, fd6_inode];
            v.sort_unstable();
            v
        });
        let shared = scan.buffers.get(5001).unwrap();
        assert_eq!((shared.size, shared.exporter), (8192, Some("system")));
        assert_eq!(shared.holders.get(100), Some(Holder { fd_count: 2, map_count: 2 }));
        assert_eq!(shared.holders.get(200), Some(Holder { fd_count: 0, map_count: 1 }));
        let camera = scan.buffers.get(7777).unwrap();
        assert_eq!(
            (camera.size, camera.exporter, camera.name),
            (16384, Some("system"), Some("camera")),
            "pid 200's fdinfo fills in what pid 100's mapping could not know"
        );
        assert_eq!(camera.holders.pids().collect::<Vec<_>>(), [100, 200]);
    }

    #[test]
    fn a_malformed_dmabuf_file_fails_that_process_only() {
        let (tmp, proc, _) = fixture();
        let fake = FakeProc::new(tmp.path());
        let put = |rel: &str, content: &str| fake.write(rel, content).unwrap();
        put("200/fdinfo/8", "size:\tlots\ncount:\t1\nexp_name:\tsystem\n");
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
        put("200/fdinfo/8", "pos:\t0\n");
        put("200/maps", "zzzz 0 0 0 1 /dmabuf:\n");
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
    fn fdinfo_parsing_follows_the_kernels_order() {
        let p = Path::new("fdinfo/3");
        let parse = |s: &str| parse_fdinfo(p, s.as_bytes());
        assert_eq!(parse("pos:\t0\nflags:\t02\nmnt_id:\t9\nino:\t123\n").unwrap(), None, "a pipe");
        assert_eq!(parse("").unwrap(), None);
        let no_ino = parse("pos:\t0\nsize:\t4096\ncount:\t2\nexp_name:\tcma\n").unwrap().unwrap();
        assert_eq!(no_ino, Fdinfo { ino: None, size: 4096, exporter: "cma".into(), name: None });
        let spoof = parse("ino:\t7\nsize:\t4096\ncount:\t1\nexp_name:\tsystem\nname:\tx\nsize:\t1\n").unwrap().unwrap();
        assert_eq!((spoof.ino, spoof.size, spoof.name.as_deref()), (Some(7), 4096, Some("x\nsize:\t1")));
        assert!(matches!(parse("exp_name:\tsystem\n"), Err(KernelError::Parse { line: 0, .. })));
        assert!(matches!(parse("ino:\tx\nsize:\t1\nexp_name:\ts\n"), Err(KernelError::Parse { line: 1, .. })));
        assert!(matches!(parse("size:\t1\nexp_name:\n"), Err(KernelError::Parse { line: 0, .. })));
    }

    proptest! {
        #[test]
        fn maps_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = for_each_dmabuf_mapping(Path::new("f"), &bytes, |_| {});
        }

        #[test]
        fn maps_lines_never_panic(lines in proptest::collection::vec(
            prop_oneof!["[0-9a-f-]{0,12} [rwxsp-]{4} 0 00:0f [0-9x]{0,4} +/dmabuf:[ -~]{0,4}", "[ -~()]{0,40}"],
            0..6)
        ) {
            let _ = for_each_dmabuf_mapping(Path::new("f"), lines.join("\n").as_bytes(), |_| {});
        }

        #[test]
        fn fdinfo_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_fdinfo(Path::new("f"), &bytes);
        }

        #[test]
        fn fdinfo_lines_never_panic(lines in proptest::collection::vec(
            (prop_oneof!["ino", "size", "count", "exp_name", "name", "pos", "[a-z]{1,4}"], "[ -~\t]{0,12}"), 0..10)
        ) {
            let text: String = lines.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
            if let Ok(Some(info)) = parse_fdinfo(Path::new("f"), text.as_bytes()) {
                prop_assert!(!info.exporter.is_empty());
            }
        }
    }
}
