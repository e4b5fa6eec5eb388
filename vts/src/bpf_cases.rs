//! The BPF scan backend against the procfs scan on the same kernel state: buffers shared between
//! processes, a buffer only mapped, processes dying while both scan, and the Android route
//! (iterators pinned in bpffs, read by path).

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use chargetransfer::kernel::bpf::BpfScanner;
use chargetransfer::kernel::{DmaBufScan, ProcFs};

use crate::cases::{check, Outcome};
use crate::harness::{Child, Env};

const HEAP: &str = "system";
const SIZE: u64 = 4 * 4096;

/// Why the BPF backend cannot load here (the dmem lane's kernel is built without BPF_SYSCALL):
/// these cases are then listed as skipped with that reason.
pub fn absent() -> Option<String> {
    BpfScanner::load().err().map(|e| format!("the BPF scan backend does not load: {e}"))
}

fn scanner() -> Result<BpfScanner, String> {
    BpfScanner::load().map_err(|e| e.to_string())
}

/// One buffer as a scan sees it: inode, size, name, and (pid, fds, mappings) per holder.
type Seen = (u64, u64, Option<String>, Vec<(u32, u32, u32)>);

/// Both scans restricted to the buffers some of `pids` hold, holders restricted to `pids`:
/// other cases' leftovers and the service's own fds are not this case's state.
fn view(scan: &DmaBufScan, pids: &[u32]) -> Vec<Seen> {
    scan.buffers
        .iter()
        .filter_map(|b| {
            let holders: Vec<_> = b
                .holders
                .iter()
                .filter(|(pid, _)| pids.contains(pid))
                .map(|(pid, h)| (pid, h.fd_count, h.map_count))
                .collect();
            (!holders.is_empty()).then(|| (b.inode, b.size, b.name.map(str::to_string), holders))
        })
        .collect()
}

/// Maps a dma-buf read-only over its whole size and keeps the mapping until the process ends.
fn map_whole(fd: impl AsFd) -> Result<(), String> {
    // SAFETY: a fresh shared read-only mapping the process never unmaps or touches through Rust
    // references; it stays valid until exit.
    unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            SIZE as usize,
            rustix::mm::ProtFlags::READ,
            rustix::mm::MapFlags::SHARED,
            fd,
            0,
        )
    }
    .map(drop)
    .map_err(|e| format!("mmap: {e}"))
}

pub fn bpf_scan_gives_the_procfs_answer(env: &Env) -> Outcome {
    let bpf = scanner()?;
    let procfs = ProcFs::new("/proc");
    // Three processes: a's buffer is shared with b (two fds) and c; b also has one of its own.
    let mut a = env.spawn(10_161, None)?;
    let mut b = env.spawn(10_162, None)?;
    let mut c = env.spawn(10_163, None)?;
    let (shared, _) = a.alloc(HEAP, SIZE)?;
    a.give(shared, &mut b)?;
    a.give(shared, &mut b)?;
    a.give(shared, &mut c)?;
    b.alloc(HEAP, SIZE)?;
    // A buffer only mapped: this process maps it and closes its fd.
    let only_mapped =
        chargetransfer::kernel::alloc_from_heap(Path::new("/dev/dma_heap/system"), SIZE).map_err(|e| e.to_string())?;
    let mapped_inode = rustix::fs::fstat(&only_mapped).map_err(|e| e.to_string())?.st_ino;
    map_whole(&only_mapped)?;
    drop(only_mapped);
    let pids = [a.pid, b.pid, c.pid, std::process::id()];

    let by_bpf = bpf.scan_all().map_err(|e| e.to_string())?;
    let by_procfs = procfs.scan_all().map_err(|e| e.to_string())?;
    check(by_bpf.is_complete(), || "a BPF scan is always complete".into())?;
    check(by_procfs.is_complete(), || format!("procfs scan as root incomplete: {:?}", by_procfs.errors))?;
    let (bv, pv) = (view(&by_bpf, &pids), view(&by_procfs, &pids));
    check(bv == pv, || format!("BPF view {bv:?} differs from procfs view {pv:?}"))?;
    check(bv.len() >= 3, || format!("expected the shared, own and mapped buffers, saw {bv:?}"))?;
    let mapped = by_bpf.buffers.get(mapped_inode).ok_or("the mapped-only buffer is missing from the BPF view")?;
    check(mapped.holders.get(std::process::id()).is_some_and(|h| h.fd_count == 0 && h.map_count == 1), || {
        format!("mapped-only buffer holders {:?}", mapped.holders)
    })?;
    // Only the BPF view knows the exporter of a buffer no process has an fd of.
    check(mapped.exporter == Some(HEAP), || format!("mapped-only exporter {:?}", mapped.exporter))?;
    // Every buffer both saw with an fd agrees on the exporter too.
    for p in by_procfs.buffers.iter() {
        if let (Some(e), Some(b)) = (p.exporter, by_bpf.buffers.get(p.inode)) {
            check(b.exporter == Some(e), || format!("inode {}: exporter {:?} vs {e:?}", p.inode, b.exporter))?;
        }
    }
    println!(
        "bpf_scan: {} buffers in {} processes by BPF, {} in {} by procfs",
        by_bpf.buffers.len(),
        by_bpf.processes,
        by_procfs.buffers.len(),
        by_procfs.processes
    );
    for child in [a, b, c] {
        child.exit();
    }
    Ok(())
}

pub fn bpf_scan_stays_whole_while_processes_die(env: &Env) -> Outcome {
    let bpf = scanner()?;
    let mut keeper = env.spawn(10_164, None)?;
    let (slot, inode) = keeper.alloc(HEAP, SIZE)?;
    let stop = AtomicBool::new(false);
    let scans = std::thread::scope(|s| -> Result<usize, String> {
        let churn = s.spawn(|| -> Result<(), String> {
            while !stop.load(Ordering::Relaxed) {
                let mut victim: Child = env.spawn(10_165, None)?;
                victim.alloc(HEAP, SIZE)?;
                victim.kill();
            }
            Ok(())
        });
        let mut n = 0;
        let result = (|| {
            for _ in 0..20 {
                let scan = bpf.scan_all().map_err(|e| format!("BPF scan during churn: {e}"))?;
                let held = scan.buffers.get(inode).map(|b| b.holders.get(keeper.pid));
                check(held.flatten().is_some_and(|h| h.fd_count == 1), || {
                    format!("the keeper's buffer {inode} is not in scan {n}: {held:?}")
                })?;
                n += 1;
            }
            Ok(n)
        })();
        stop.store(true, Ordering::Relaxed);
        churn.join().map_err(|_| "churn thread panicked".to_string())??;
        result
    })?;
    keeper.ok(&format!("close {slot}"))?;
    let scan = bpf.scan_all().map_err(|e| e.to_string())?;
    check(!scan.buffers.contains(inode), || format!("buffer {inode} still listed after its only fd closed"))?;
    println!("bpf_scan: {scans} BPF scans while processes were killed, each whole");
    keeper.exit();
    Ok(())
}

/// The Android route: bpfloader pins the programs and the service reads them by path. Here the
/// case pins what it loaded into a fresh bpffs, then opens the pins as the service would.
pub fn bpf_scan_reads_iterators_pinned_in_bpffs(_env: &Env) -> Outcome {
    let bpf = scanner()?;
    let dir = Path::new("/tmp/chargetransfer-vts-bpffs");
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    rustix::mount::mount("bpf", dir, "bpf", rustix::mount::MountFlags::empty(), None)
        .map_err(|e| format!("mounting bpffs on {}: {e}", dir.display()))?;
    let held =
        chargetransfer::kernel::alloc_from_heap(Path::new("/dev/dma_heap/system"), SIZE).map_err(|e| e.to_string())?;
    let result = (|| {
        bpf.pin(dir).map_err(|e| e.to_string())?;
        let pinned = BpfScanner::pinned(dir).map_err(|e| e.to_string())?;
        let me = [std::process::id()];
        let (a, b) = (pinned.scan_all().map_err(|e| e.to_string())?, bpf.scan_all().map_err(|e| e.to_string())?);
        let (av, bv) = (view(&a, &me), view(&b, &me));
        check(!av.is_empty() && av == bv, || format!("pinned iterators saw {av:?}, loaded ones {bv:?}"))?;
        println!("bpf_scan: read {} buffers through iterators pinned in {}", a.buffers.len(), dir.display());
        Ok(())
    })();
    let _ = rustix::mount::unmount(dir, rustix::mount::UnmountFlags::DETACH);
    drop(held);
    result
}
