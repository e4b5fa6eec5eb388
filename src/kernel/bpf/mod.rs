//! The full view of who holds which dma-buf, from the BPF iterators of holders.bpf.c: one read of
//! each replaces the whole procfs scan, and it sees every process whatever its uid or SELinux
//! domain, where reading other processes' fdinfo needs `sys_ptrace` (which Android's vendor
//! policy never grants).
//!
//! The programs come either from bpffs, where Android's bpfloader pins the vendor partition's
//! programs at boot, or from the object built into the service, loaded by the service itself
//! where it may (root, or CAP_BPF + CAP_PERFMON, as in the kernel lanes). Each scan attaches a
//! fresh iterator link and reads it to the end.
//!
//! aya loads the object: pure Rust (so the static guest binaries need no libbpf/libelf/zlib
//! build), CO-RE relocation against /sys/kernel/btf/vmlinux, and `Iter` programs since 0.14.

mod radix;
mod records;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use aya::programs::Iter;
use aya::{Btf, Ebpf};

use super::error::KernelError;
use super::view::DmaBufScan;
use records::Reads;

/// The iterators (fds and buffers read at once, processes after buffers, mappings after both,
/// see [`BpfScanner::scan_all_timed`]): the program's function name and its attach target.
const ITERATORS: [(&str, &str); 4] =
    [("fds", "task_file"), ("processes", "task"), ("buffers", "dmabuf"), ("mappings", "task_vma")];

/// The object file's name (without `.o`) as Android's bpfloader derives pin names from it:
/// `prog_<object>_<section with '/' as '_'>`, e.g. `prog_chargetransfer_holders_iter_dmabuf`.
pub const OBJECT_NAME: &str = "chargetransfer_holders";

/// Where bpfloader pins programs from the vendor partition (unverified on a device).
pub const ANDROID_PIN_DIR: &str = "/sys/fs/bpf/vendor";

/// The compiled holders.bpf.c, 8-byte aligned as the ELF reader needs.
#[cfg(chargetransfer_bpf)]
static OBJECT: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/holders.bpf.o")));

#[cfg(chargetransfer_bpf)]
#[repr(C, align(8))]
struct Aligned<B: ?Sized>(B);

/// Where the programs came from, for `chargectl probe` and the reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Read from programs pinned in this directory.
    Pinned(PathBuf),
    /// Loaded by the service from the object built into it.
    Loaded,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Pinned(dir) => write!(f, "programs pinned in {}", dir.display()),
            Origin::Loaded => f.write_str("programs loaded from the built-in object"),
        }
    }
}

enum Programs {
    Loaded(Ebpf),
    Pinned(Vec<Iter>),
}

pub struct BpfScanner {
    programs: Mutex<Programs>,
    /// Each iterator's last read, kept for the next scan: its pages are already faulted in and
    /// large enough, so a scan reads straight into them.
    reads: Mutex<[Vec<u8>; 4]>,
    origin: Origin,
}

impl fmt::Debug for BpfScanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BpfScanner").field("origin", &self.origin).finish_non_exhaustive()
    }
}

fn bpf_err(what: impl fmt::Display, e: impl fmt::Display) -> KernelError {
    KernelError::Bpf(format!("{what}: {e}"))
}

/// The pin path bpfloader gives one of the iterators.
fn pin_path(dir: &Path, target: &str) -> PathBuf {
    dir.join(format!("prog_{OBJECT_NAME}_iter_{target}"))
}

impl BpfScanner {
    /// Pinned programs in `pin_dir` first (how Android runs them), else the object built into
    /// the service. The error says why neither can be used; the caller falls back to procfs.
    pub fn open(pin_dir: &Path) -> Result<BpfScanner, KernelError> {
        let pinned = match BpfScanner::pinned(pin_dir) {
            Ok(scanner) => return Ok(scanner),
            Err(e) => e,
        };
        BpfScanner::load()
            .map_err(|loaded| KernelError::Bpf(format!("{}; {}", pinned.into_reason(), loaded.into_reason())))
    }

    /// Reads iterators pinned as `prog_chargetransfer_holders_iter_<target>` in `dir`.
    pub fn pinned(dir: &Path) -> Result<BpfScanner, KernelError> {
        let programs = ITERATORS
            .iter()
            .map(|(_, target)| {
                let path = pin_path(dir, target);
                Iter::from_pin(&path).map_err(|e| bpf_err(format_args!("no pinned iterator {}", path.display()), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(BpfScanner {
            programs: Mutex::new(Programs::Pinned(programs)),
            reads: Mutex::default(),
            origin: Origin::Pinned(dir.to_path_buf()),
        })
    }

    /// Loads the built-in object, relocated against the running kernel's BTF.
    pub fn load() -> Result<BpfScanner, KernelError> {
        let mut ebpf = load_object()?;
        let btf = Btf::from_sys_fs().map_err(|e| bpf_err("kernel BTF", e))?;
        for (name, target) in ITERATORS {
            iter(&mut ebpf, name)?.load(target, &btf).map_err(|e| bpf_err(format_args!("loading iter/{target}"), e))?;
        }
        Ok(BpfScanner { programs: Mutex::new(Programs::Loaded(ebpf)), reads: Mutex::default(), origin: Origin::Loaded })
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Pins the loaded programs where [`BpfScanner::pinned`] finds them, as bpfloader would
    /// (the lanes use this to prove the Android path). `dir` must be on a bpffs.
    pub fn pin(&self, dir: &Path) -> Result<(), KernelError> {
        let mut programs = self.programs.lock().unwrap_or_else(PoisonError::into_inner);
        for (i, (name, target)) in ITERATORS.iter().enumerate() {
            let program = match &mut *programs {
                Programs::Loaded(ebpf) => iter(ebpf, name)?,
                Programs::Pinned(iters) => &mut iters[i],
            };
            let path = pin_path(dir, target);
            program.pin(&path).map_err(|e| bpf_err(format_args!("pinning {}", path.display()), e))?;
        }
        Ok(())
    }

    /// Every process's dma-bufs, merged by inode: the same answer as
    /// [`ProcFs::scan_all`](super::ProcFs::scan_all) on a full view, always complete.
    pub fn scan_all(&self) -> Result<DmaBufScan, KernelError> {
        self.scan_all_timed().map(|(scan, _)| scan)
    }

    /// [`BpfScanner::scan_all`] with the time each iterator read and the records took to become a
    /// view, for the scan benchmark's breakdown.
    ///
    /// The two long walks run at once: iter/task_file (every open file of every task) then
    /// iter/task on a thread of its own, which also sorts the holders found, and iter/dmabuf here,
    /// which lists the buffers by inode. Both links are attached before either is read. Whatever
    /// the two walks' interleaving, [`records::assemble`] keeps a buffer only if both saw it (see
    /// its rule for a buffer created or freed while they ran). iter/task_vma, when needed, is read
    /// after both.
    pub fn scan_all_timed(&self) -> Result<(DmaBufScan, ScanPhases), KernelError> {
        let mut programs = self.programs.lock().unwrap_or_else(PoisonError::into_inner);
        let mut bytes = self.reads.lock().unwrap_or_else(PoisonError::into_inner);
        let [fds, processes, buffers, mappings] = &mut *bytes;
        let mut phases = ScanPhases {
            reads: ITERATORS.map(|(_, target)| (target, None)),
            holders: Duration::ZERO,
            listing: Duration::ZERO,
            merge: Duration::ZERO,
        };
        let mut open = |i: usize| {
            let (name, target) = ITERATORS[i];
            let program = match &mut *programs {
                Programs::Loaded(ebpf) => iter(ebpf, name)?,
                Programs::Pinned(iters) => &mut iters[i],
            };
            open(program).map_err(|e| bpf_err(format_args!("attaching iter/{target}"), e))
        };
        let (fd_walk, process_walk, buffer_walk) = (open(0)?, open(1)?, open(2)?);
        let (fd_side, here) = std::thread::scope(|s| {
            let fd_thread = s.spawn(|| read_holders(&fd_walk, fds, &process_walk, processes));
            let here = read_buffers(&buffer_walk, buffers);
            (fd_thread.join(), here)
        });
        let (fd_read, process_read, held, sorted) =
            fd_side.map_err(|_| KernelError::Bpf("the iter/task_file reader panicked".into()))??;
        let (buffer_read, listed, listing) = here?;
        phases.holders = sorted;
        phases.listing = listing;
        phases.reads[0].1 = Some(fd_read);
        phases.reads[1].1 = Some(process_read);
        phases.reads[2].1 = Some(buffer_read);
        // Walking every VMA of every process is the dearest read: only when a buffer is mapped.
        mappings.clear();
        if listed.mapped {
            phases.reads[3].1 = Some(timed_read(3, &open(3)?, mappings)?);
        }
        let t = Instant::now();
        let scan = records::assemble(Reads { buffers: listed, held, mappings, processes })?;
        phases.merge = t.elapsed();
        Ok((scan, phases))
    }
}

/// Where one BPF scan's time went: each iterator's read in [`ITERATORS`] order (its target, and
/// the time to read it to the end and the bytes read, if it was read; iter/task_file's and
/// iter/task's on a thread of their own, beside iter/dmabuf's), the holders' sort on that
/// thread, the buffers' listing by inode on the scanning thread, and the merge of the two once
/// both are done.
#[derive(Clone, Copy, Debug)]
pub struct ScanPhases {
    pub reads: [(&'static str, Option<(Duration, usize)>); 4],
    pub holders: Duration,
    pub listing: Duration,
    pub merge: Duration,
}

fn iter<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Iter, KernelError> {
    let program = ebpf.program_mut(name).ok_or_else(|| KernelError::Bpf(format!("object has no program {name}")))?;
    program.try_into().map_err(|e| bpf_err(format_args!("program {name}"), e))
}

#[cfg(chargetransfer_bpf)]
fn load_object() -> Result<Ebpf, KernelError> {
    Ebpf::load(&OBJECT.0).map_err(|e| bpf_err("loading the holders object", e))
}

#[cfg(not(chargetransfer_bpf))]
fn load_object() -> Result<Ebpf, KernelError> {
    Err(KernelError::Bpf("built without the BPF object (no clang when it was compiled)".into()))
}

/// One read's time and size.
type Read = (Duration, usize);

/// [`read`] of iterator `i` of [`ITERATORS`], timed.
fn timed_read(i: usize, file: &std::fs::File, into: &mut Vec<u8>) -> Result<Read, KernelError> {
    let t = Instant::now();
    read(file, into).map_err(|e| bpf_err(format_args!("reading iter/{}", ITERATORS[i].1), e))?;
    Ok((t.elapsed(), into.len()))
}

/// The other thread's share: iter/task_file and iter/task read, then the holders sorted (and
/// how long that took).
fn read_holders(
    fd_walk: &std::fs::File,
    fds: &mut Vec<u8>,
    process_walk: &std::fs::File,
    processes: &mut Vec<u8>,
) -> Result<(Read, Read, Vec<records::Held>, Duration), KernelError> {
    let fd_read = timed_read(0, fd_walk, fds)?;
    let process_read = timed_read(1, process_walk, processes)?;
    let t = Instant::now();
    let held = records::holders(fds)?;
    Ok((fd_read, process_read, held, t.elapsed()))
}

/// The scanning thread's share: iter/dmabuf read, then the buffers listed by inode (and how long
/// that took).
fn read_buffers(
    buffer_walk: &std::fs::File,
    buffers: &mut Vec<u8>,
) -> Result<(Read, records::Listed, Duration), KernelError> {
    let buffer_read = timed_read(2, buffer_walk, buffers)?;
    let t = Instant::now();
    let listed = records::listed(buffers)?;
    Ok((buffer_read, listed, t.elapsed()))
}

/// A new link of an iterator and an iterator fd from it: each read of it walks anew.
fn open(program: &mut Iter) -> Result<std::fs::File, Box<dyn std::error::Error>> {
    let id = program.attach()?;
    Ok(program.take_link(id)?.into_file()?)
}

/// One pass of an iterator read to the end into `buf` (cleared first). Each read() fills at most
/// the kernel's seq buffer (8 pages) and then stops and restarts the iterator, so reads ask for
/// more than that, straight into `buf`'s capacity, which stays with the scanner for the next
/// scan.
fn read(file: &std::fs::File, buf: &mut Vec<u8>) -> rustix::io::Result<()> {
    const READ: usize = 256 << 10;
    buf.clear();
    loop {
        buf.reserve(READ);
        if rustix::io::read(file, rustix::buffer::spare_capacity(buf))? == 0 {
            return Ok(());
        }
    }
}
