//! dma-buf fds: what a received fd is, and allocating one from a dma-buf heap.
//!
//! A dma-buf is recognised the way libdmabufinfo does it: its fdinfo has an `exp_name:` line.
//! Its identity is the inode (`fstat().st_ino`), which every holder's fdinfo and maps agree on.
//!
//! This host has no dma-buf heap, so the tests here cover the refusals (pipe, memfd, socket,
//! regular file, closed fd) and the fdinfo parse path through a fixture proc root; real dma-buf
//! fds are exercised in the QEMU lane, which has `/dev/dma_heap/system`.

use std::fs;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;
use rustix::ioctl::{opcode, Opcode, Updater};

use super::error::KernelError;
use super::parse::{byte_lines, number, Result};
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

/// Describes `fd` if it is a dma-buf. `proc_root` is `/proc` in production; the fdinfo read is
/// `<proc_root>/self/fdinfo/<fd>`. The inode always comes from fstat of the fd itself.
pub fn inspect(fd: BorrowedFd<'_>, proc_root: &Path) -> Result<DmaBufInfo> {
    let stat = rustix::fs::fstat(fd).map_err(|e| match e {
        Errno::BADF => KernelError::NotDmaBuf { reason: "bad file descriptor".to_string() },
        e => KernelError::io(Path::new(&format!("fstat of fd {}", fd.as_raw_fd())), e),
    })?;
    let path = proc_root.join("self/fdinfo").join(fd.as_raw_fd().to_string());
    let bytes = fs::read(&path).map_err(|e| KernelError::io(&path, e))?;
    match parse_fdinfo(&path, &bytes)? {
        Some(info) => Ok(DmaBufInfo { inode: stat.st_ino, size: info.size, exporter: info.exporter, name: info.name }),
        None => Err(KernelError::NotDmaBuf {
            reason: format!("{}: no exp_name in fdinfo", describe(fd, stat.st_mode, proc_root)),
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

/// `struct dma_heap_allocation_data` from include/uapi/linux/dma-heap.h.
#[repr(C)]
struct DmaHeapAllocationData {
    len: u64,
    fd: u32,
    fd_flags: u32,
    heap_flags: u64,
}

/// `_IOWR('H', 0x0, struct dma_heap_allocation_data)`.
const DMA_HEAP_IOCTL_ALLOC: Opcode = opcode::read_write::<DmaHeapAllocationData>(b'H', 0);

/// Allocates `len` bytes from a dma-buf heap (`/dev/dma_heap/system`); the fd is O_RDWR|O_CLOEXEC.
pub fn alloc_from_heap(heap_dev: &Path, len: u64) -> Result<OwnedFd> {
    let heap = rustix::fs::open(heap_dev, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| KernelError::io(heap_dev, e))?;
    let mut data =
        DmaHeapAllocationData { len, fd: 0, fd_flags: (OFlags::RDWR | OFlags::CLOEXEC).bits(), heap_flags: 0 };
    // SAFETY: the opcode and the struct layout are the kernel's DMA_HEAP_IOCTL_ALLOC ABI.
    let done = unsafe { rustix::ioctl::ioctl(&heap, Updater::<DMA_HEAP_IOCTL_ALLOC, _>::new(&mut data)) };
    match done {
        // SAFETY: on success the kernel installed a new fd that nobody else owns.
        Ok(()) => Ok(unsafe { OwnedFd::from_raw_fd(data.fd as i32) }),
        Err(errno @ (Errno::AGAIN | Errno::NOMEM)) => {
            Err(KernelError::HeapAllocFailed { heap: heap_dev.to_path_buf(), len, errno })
        }
        Err(e) => Err(KernelError::io(heap_dev, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::fd::AsFd;
    use tempfile::TempDir;

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
        let dir = tmp.path().join("self/fdinfo");
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join(fd.as_raw_fd().to_string()),
            "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1\nsize:\t8192\ncount:\t1\nexp_name:\tsystem\nname:\tgralloc buffer\n",
        )
        .unwrap();
        let info = inspect(fd, tmp.path()).unwrap();
        let inode = rustix::fs::fstat(fd).unwrap().st_ino;
        assert_eq!(
            info,
            DmaBufInfo { inode, size: 8192, exporter: "system".into(), name: Some("gralloc buffer".into()) }
        );
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

    #[test]
    fn the_alloc_ioctl_number_matches_the_kernel_header() {
        assert_eq!(DMA_HEAP_IOCTL_ALLOC as u64, 0xc018_4800);
        assert_eq!(std::mem::size_of::<DmaHeapAllocationData>(), 24);
    }

    #[test]
    fn allocating_from_something_that_is_not_a_heap_names_the_device() {
        let missing = Path::new("/dev/dma_heap/no-such-heap");
        assert!(matches!(alloc_from_heap(missing, 4096), Err(KernelError::Io { path, .. }) if path == missing));
        let null = Path::new("/dev/null");
        match alloc_from_heap(null, 4096) {
            Err(KernelError::Io { path, source }) => {
                assert_eq!(path, null);
                assert_eq!(source.raw_os_error(), Some(Errno::NOTTY.raw_os_error()));
            }
            other => panic!("expected ENOTTY from /dev/null, got {other:?}"),
        }
    }

    proptest! {
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
