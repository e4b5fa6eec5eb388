//! A dma-buf fd handed to the service: is it one, and which (inode, size, exporter, name).
//!
//! A dma-buf is recognised the way libdmabufinfo does it: its fdinfo has an `exp_name:` line.
//! Its identity is the inode (`fstat().st_ino`), which every holder's fdinfo and maps agree on.
//! Every dma-buf lives on the kernel's one dma-buf filesystem, so once an fdinfo proved an fd a
//! dma-buf, that filesystem's device is known: a later fd on it whose inode the caller already
//! knows (a charged buffer) needs only its fstat ([`inspect_known`]).
//!
//! This host has no dma-buf heap, so the tests here cover the refusals (pipe, memfd, socket,
//! regular file, closed fd) and the fdinfo read through a fixture proc root; real dma-buf fds
//! are exercised in the QEMU lane, which has `/dev/dma_heap/system`.

use std::ffi::OsString;
use std::fs;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{FileType, Mode, OFlags, CWD};
use rustix::io::Errno;

use super::error::KernelError;
use super::parse::Result;
use super::procfs::parse_fdinfo;
use crate::ledger::Inode;

/// What the service needs to know about a dma-buf fd it was handed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmaBufInfo {
    pub inode: Inode,
    pub size: u64,
    /// The exporter (`exp_name:`), for heap buffers the heap's name ("system").
    pub exporter: String,
    /// The name set with DMA_BUF_SET_NAME, if any.
    pub name: Option<String>,
}

/// The device of the dma-buf filesystem, once an fdinfo showed an fd on it to be a dma-buf
/// (`u64::MAX` until then: no device has that number).
static DMABUF_DEV: AtomicU64 = AtomicU64::new(u64::MAX);

/// The dma-buf filesystem's device, if an fd on it has been inspected.
pub fn dmabuf_dev() -> Option<u64> {
    Some(DMABUF_DEV.load(Ordering::Relaxed)).filter(|d| *d != u64::MAX)
}

/// Describes `fd` if it is a dma-buf. `proc_root` is `/proc` in production; the fdinfo read is
/// `<proc_root>/self/fdinfo/<fd>`. The inode always comes from fstat of the fd itself.
pub fn inspect(fd: BorrowedFd<'_>, proc_root: &Path) -> Result<DmaBufInfo> {
    inspect_known(fd, &FdInfoDir::open(proc_root), |_| None)
}

/// This process's fdinfo directory, opened once, so reading a buffer's fdinfo is one lookup (the
/// fd's number) instead of a walk through `/proc/self`, a symlink the kernel formats from the pid
/// on every walk: in the guest that walk was half of a charge's kernel time.
pub struct FdInfoDir {
    proc_root: PathBuf,
    /// `None` where `<proc_root>/self/fdinfo` could not be opened (a fixture without it): each
    /// read walks the path, and fails as it would.
    dir: Option<OwnedFd>,
}

impl FdInfoDir {
    pub fn open(proc_root: &Path) -> FdInfoDir {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let dir = rustix::fs::openat(CWD, proc_root.join("self/fdinfo"), flags, Mode::empty()).ok();
        FdInfoDir { proc_root: proc_root.to_path_buf(), dir }
    }

    /// Parses the fdinfo of `fd` (`parse` gets its path, for errors), read in one open, read and
    /// close: a seq_file that fits the buffer comes whole in the first read, so a short read is
    /// the end. A dma-buf's fdinfo is a few short lines: the first read is into the stack.
    fn read<T>(&self, fd: BorrowedFd<'_>, parse: impl FnOnce(&Path, &[u8]) -> Result<T>) -> Result<T> {
        let number = rustix::path::DecInt::from_fd(fd);
        // Built by hand: two `Path::join`s and an integer `to_string` cost more than the read.
        let mut path = OsString::with_capacity(self.proc_root.as_os_str().len() + 24);
        path.push(&self.proc_root);
        path.push("/self/fdinfo/");
        path.push(number.as_str());
        let path = PathBuf::from(path);
        let flags = OFlags::RDONLY | OFlags::CLOEXEC;
        let file = match &self.dir {
            Some(dir) => rustix::fs::openat(dir, number.as_c_str(), flags, Mode::empty()),
            None => rustix::fs::openat(CWD, &path, flags, Mode::empty()),
        }
        .map_err(|e| KernelError::io(&path, e))?;
        let mut small = [0u8; 1024];
        let n = rustix::io::read(&file, &mut small).map_err(|e| KernelError::io(&path, e))?;
        if n < small.len() {
            return parse(&path, &small[..n]);
        }
        let mut buf = small.to_vec();
        let mut len = n;
        loop {
            buf.resize(buf.len() * 2, 0);
            let n = rustix::io::read(&file, &mut buf[len..]).map_err(|e| KernelError::io(&path, e))?;
            len += n;
            if n == 0 || len < buf.len() {
                return parse(&path, &buf[..len]);
            }
        }
    }
}

/// [`inspect`], where `known` gives the size and exporter of a buffer the caller already
/// recorded: an fd on the dma-buf filesystem with such an inode is described without its
/// fdinfo (its inode is its identity; size and exporter never change).
pub fn inspect_known(
    fd: BorrowedFd<'_>,
    fdinfo: &FdInfoDir,
    known: impl FnOnce(Inode) -> Option<(u64, String)>,
) -> Result<DmaBufInfo> {
    let stat = rustix::fs::fstat(fd).map_err(|e| match e {
        Errno::BADF => KernelError::NotDmaBuf { reason: "bad file descriptor".to_string() },
        e => KernelError::io(Path::new(&format!("fstat of fd {}", fd.as_raw_fd())), e),
    })?;
    if dmabuf_dev() == Some(stat.st_dev) {
        if let Some((size, exporter)) = known(stat.st_ino) {
            return Ok(DmaBufInfo { inode: stat.st_ino, size, exporter, name: None });
        }
    }
    match fdinfo.read(fd, parse_fdinfo)? {
        Some(info) => {
            DMABUF_DEV.store(stat.st_dev, Ordering::Relaxed);
            Ok(DmaBufInfo { inode: stat.st_ino, size: info.size, exporter: info.exporter, name: info.name })
        }
        None => Err(KernelError::NotDmaBuf {
            reason: format!("{}: no exp_name in fdinfo", describe(fd, stat.st_mode, &fdinfo.proc_root)),
        }),
    }
}

/// What kind of file a non-dma-buf fd is, for the refusal message.
fn describe(fd: BorrowedFd<'_>, mode: u32, proc_root: &Path) -> String {
    let link = || {
        let path = proc_root.join("self/fd").join(fd.as_raw_fd().to_string());
        fs::read_link(path).map(|l| l.to_string_lossy().into_owned()).unwrap_or_default()
    };
    match FileType::from_raw_mode(mode) {
        FileType::Fifo => "pipe".to_string(),
        FileType::Socket => "socket".to_string(),
        FileType::RegularFile if link().starts_with("/memfd:") => "memfd".to_string(),
        FileType::RegularFile => "regular file".to_string(),
        FileType::Directory => "directory".to_string(),
        FileType::CharacterDevice => "character device".to_string(),
        FileType::BlockDevice => "block device".to_string(),
        FileType::Symlink => "symlink".to_string(),
        FileType::Unknown => match link() {
            l if l.starts_with("anon_inode:") => format!("anonymous inode {}", &l["anon_inode:".len()..]),
            _ => "anonymous inode".to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use tempfile::TempDir;

    use super::*;
    use crate::kernel::fake_proc::{dmabuf_fdinfo, FakeProc};

    fn refusal(fd: BorrowedFd<'_>) -> String {
        match inspect(fd, Path::new("/proc")) {
            Err(KernelError::NotDmaBuf { reason }) => reason,
            other => panic!("expected NotDmaBuf, got {other:?}"),
        }
    }

    #[test]
    fn pipes_memfds_sockets_files_and_closed_fds_are_refused_with_distinct_reasons() {
        let (r, _w) = rustix::pipe::pipe().unwrap();
        let memfd = rustix::fs::memfd_create("not-a-dmabuf", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let socket =
            rustix::net::socket(rustix::net::AddressFamily::UNIX, rustix::net::SocketType::STREAM, None).unwrap();
        let file = tempfile::tempfile().unwrap();
        let reasons = [
            refusal(r.as_fd()),
            refusal(memfd.as_fd()),
            refusal(socket.as_fd()),
            refusal(file.as_fd()),
            // SAFETY: only fstat()ed; fd numbers this high are never open in the test process.
            refusal(unsafe { BorrowedFd::borrow_raw(999_999) }),
        ];
        assert_eq!(
            reasons,
            [
                "pipe: no exp_name in fdinfo",
                "memfd: no exp_name in fdinfo",
                "socket: no exp_name in fdinfo",
                "regular file: no exp_name in fdinfo",
                "bad file descriptor",
            ]
        );
    }

    #[test]
    fn a_fixture_fdinfo_with_exp_name_is_a_dmabuf_keyed_by_the_fds_inode() {
        let tmp = TempDir::new().unwrap();
        let file = tempfile::tempfile().unwrap();
        let fd = file.as_fd();
        let fdinfo = dmabuf_fdinfo(Some(1), 8192, 1, "system", Some("gralloc buffer"));
        FakeProc::new(tmp.path()).write(format!("self/fdinfo/{}", fd.as_raw_fd()), fdinfo).unwrap();
        let info = inspect(fd, tmp.path()).unwrap();
        let inode = rustix::fs::fstat(fd).unwrap().st_ino;
        assert_eq!(
            info,
            DmaBufInfo { inode, size: 8192, exporter: "system".into(), name: Some("gralloc buffer".into()) }
        );
    }

    #[test]
    fn an_fdinfo_longer_than_the_first_read_is_read_whole() {
        let tmp = TempDir::new().unwrap();
        let file = tempfile::tempfile().unwrap();
        let fd = file.as_fd();
        // A long name puts exp_name and the name past the first 1024 bytes' read.
        let name = "n".repeat(3000);
        let fdinfo = format!("pos:\t0\nflags:\t02000002\nlong:\t{name}\nsize:\t4096\ncount:\t1\nexp_name:\tsystem\n");
        FakeProc::new(tmp.path()).write(format!("self/fdinfo/{}", fd.as_raw_fd()), fdinfo).unwrap();
        let info = inspect(fd, tmp.path()).unwrap();
        assert_eq!((info.size, info.exporter.as_str()), (4096, "system"));
    }

    #[test]
    fn a_known_buffer_on_the_learned_device_needs_no_fdinfo_and_an_unknown_one_does() {
        let tmp = TempDir::new().unwrap();
        let (first, second) = (tempfile::tempfile_in(tmp.path()).unwrap(), tempfile::tempfile_in(tmp.path()).unwrap());
        let fdinfo = dmabuf_fdinfo(Some(1), 8192, 1, "system", None);
        FakeProc::new(tmp.path()).write(format!("self/fdinfo/{}", first.as_fd().as_raw_fd()), fdinfo).unwrap();
        let learned = inspect(first.as_fd(), tmp.path()).unwrap();
        assert_eq!(dmabuf_dev(), Some(rustix::fs::fstat(&first).unwrap().st_dev));
        let inode = rustix::fs::fstat(&second).unwrap().st_ino;
        let fdinfo = FdInfoDir::open(tmp.path());
        let known = inspect_known(second.as_fd(), &fdinfo, |i| (i == inode).then(|| (4096, "system".into())));
        assert_eq!(known.unwrap(), DmaBufInfo { inode, size: 4096, exporter: "system".into(), name: None });
        // Unknown to the caller: its fdinfo is read, and this one has none.
        assert!(matches!(inspect_known(second.as_fd(), &fdinfo, |_| None), Err(KernelError::Io { .. })));
        assert_eq!(learned.size, 8192);
    }

    #[test]
    fn a_missing_or_malformed_fixture_fdinfo_is_an_error_naming_the_file() {
        let tmp = TempDir::new().unwrap();
        let file = tempfile::tempfile().unwrap();
        let fd = file.as_fd();
        let path = tmp.path().join("self/fdinfo").join(fd.as_raw_fd().to_string());
        assert!(matches!(inspect(fd, tmp.path()), Err(KernelError::Io { path: p, .. }) if p == path));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, "size:\t12k\ncount:\t1\nexp_name:\tsystem\n").unwrap();
        assert!(matches!(inspect(fd, tmp.path()), Err(KernelError::Parse { path: p, line: 1, .. }) if p == path));
    }
}
