//! The scan benchmark for BENCHMARKS.md: the full-device view of who holds which dma-buf, by the
//! BPF iterators against the procfs scan, on the same processes and buffers in one guest run.
//! It only measures and prints; nothing here is a test.
//!
//! - `--scan-bench [--procs N] [--levels 1000,10000,100000] [--scans S] [--other-fds K:LEVEL]`
//!   (guest, root): N holder processes; at each level every holder tops up to level/N buffers of
//!   4 KiB from the system heap, then both backends scan S times. Prints
//!   `result scan_<level>_<backend>_ns`, and where the BPF scan's time went (each iterator read,
//!   the holders' sort, the buffers' listing and their merge). With `--other-fds`, at LEVEL every
//!   holder then also opens K fds that are not dma-bufs (/dev/null) and both scan again:
//!   `result scan_<level>_other_<backend>_ns` shows what every other fd on a device costs.
//! - `--scan-holder` (spawned by `--scan-bench`): for each `hold K` line, allocates until it
//!   holds K buffers, for each `other K` line opens or closes /dev/null until it has K of them,
//!   and answers `ok K`; holds them until its stdin closes.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use chargetransfer::kernel::bpf::{BpfScanner, ScanPhases};
use chargetransfer::kernel::{DmaBufScan, ProcFs};
use rustix::process::Rlimit;

const BUFFER_SIZE: u64 = 4096;

pub fn dispatch(args: &[String]) -> Option<i32> {
    let rest = args.get(2..).unwrap_or_default();
    let result = match args.get(1).map(String::as_str)? {
        "--scan-holder" => holder(),
        "--scan-bench" => bench(rest),
        _ => return None,
    };
    Some(match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("vts scan bench: {e}");
            1
        }
    })
}

fn holder() -> Result<(), String> {
    let heap = Path::new("/dev/dma_heap/system");
    let mut held = Vec::new();
    let mut others = Vec::new();
    // As many fds as the hard limit allows: 1024 is too few for the other-fds level.
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    rustix::process::setrlimit(rustix::process::Resource::Nofile, Rlimit { current: limit.maximum, ..limit })
        .map_err(|e| format!("raising RLIMIT_NOFILE: {e}"))?;
    let mut out = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let (what, target) = line.split_once(' ').ok_or(format!("bad {line:?}"))?;
        let target: usize = target.parse().map_err(|_| format!("bad {line:?}"))?;
        let reply = match what {
            "hold" => (|| {
                while held.len() < target {
                    held.push(chargetransfer::kernel::alloc_from_heap(heap, BUFFER_SIZE)?);
                }
                Ok::<_, chargetransfer::kernel::KernelError>(format!("ok {}", held.len()))
            })()
            .unwrap_or_else(|e| format!("err {e}")),
            "other" => (|| {
                others.truncate(target);
                while others.len() < target {
                    others.push(std::fs::File::open("/dev/null")?);
                }
                Ok::<_, std::io::Error>(format!("ok {}", others.len()))
            })()
            .unwrap_or_else(|e| format!("err /dev/null: {e}")),
            _ => return Err(format!("bad {line:?}")),
        };
        writeln!(out, "{reply}").and_then(|_| out.flush()).map_err(|e| e.to_string())?;
    }
    Ok(())
}

struct Holder {
    process: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

/// `scans` timed runs of `scan`; the last result is kept to report what was seen.
fn time(scans: usize, scan: impl Fn() -> Result<DmaBufScan, String>) -> Result<(Duration, DmaBufScan), String> {
    let mut times = Vec::with_capacity(scans);
    let mut last = None;
    for _ in 0..scans {
        let t = Instant::now();
        let s = scan()?;
        times.push(t.elapsed());
        last = Some(s);
    }
    Ok((p50(times), last.ok_or("no scans")?))
}

/// The BPF scan's parts at one level, each the p50 over the scans that had it:
/// `result scan_<level>_bpf_<target>_ns` (and `_bytes`, from the last scan) per iterator read,
/// `result scan_<level>_bpf_holders_ns` (the holders' sort on the iter/task_file thread),
/// `result scan_<level>_bpf_listing_ns` (the buffers by inode, on the scanning thread) and
/// `result scan_<level>_bpf_merge_ns` (the two merged, once both are done).
fn print_phases(level: usize, phases: &[ScanPhases]) {
    let Some(last) = phases.last() else { return };
    let mut line = Vec::new();
    for (i, (target, read)) in last.reads.iter().enumerate() {
        let times: Vec<_> = phases.iter().filter_map(|p| p.reads[i].1.map(|(t, _)| t)).collect();
        let (Some((_, bytes)), false) = (read, times.is_empty()) else {
            line.push(format!("iter/{target} not read"));
            continue;
        };
        let t = p50(times);
        println!("result scan_{level}_bpf_{target}_ns {}", t.as_nanos());
        println!("result scan_{level}_bpf_{target}_bytes {bytes}");
        line.push(format!("iter/{target} {t:.1?} ({bytes} B)"));
    }
    let sort = p50(phases.iter().map(|p| p.holders).collect());
    println!("result scan_{level}_bpf_holders_ns {}", sort.as_nanos());
    let listing = p50(phases.iter().map(|p| p.listing).collect());
    println!("result scan_{level}_bpf_listing_ns {}", listing.as_nanos());
    let merge = p50(phases.iter().map(|p| p.merge).collect());
    println!("result scan_{level}_bpf_merge_ns {}", merge.as_nanos());
    println!(
        "scan bench: BPF at {level}: {} (iter/task_file and iter/task on a thread of their own, then the holders sorted \
         in {sort:.1?}; the buffers listed by inode in {listing:.1?} on the other), merge {merge:.1?}",
        line.join(", ")
    );
}

/// Sends `line` to every holder, then waits for each one's `ok`.
fn tell(holders: &mut [Holder], line: &str) -> Result<(), String> {
    for h in holders.iter_mut() {
        let stdin = h.stdin.as_mut().expect("open");
        writeln!(stdin, "{line}").and_then(|_| stdin.flush()).map_err(|e| e.to_string())?;
    }
    for h in holders {
        let mut reply = String::new();
        h.stdout.read_line(&mut reply).map_err(|e| e.to_string())?;
        if !reply.starts_with("ok") {
            return Err(format!("holder {}: {}", h.process.id(), reply.trim()));
        }
    }
    Ok(())
}

fn bench(args: &[String]) -> Result<(), String> {
    let parse = |name: &str, default: &str| flag(args, name).unwrap_or_else(|| default.into());
    let procs: usize = parse("--procs", "200").parse().map_err(|_| "--procs")?;
    let scans: usize = parse("--scans", "3").parse().map_err(|_| "--scans")?;
    let levels: Vec<usize> = parse("--levels", "1000,10000,100000")
        .split(',')
        .map(|l| l.parse().map_err(|_| format!("--levels: {l:?}")))
        .collect::<Result<_, _>>()?;
    let other_fds = match flag(args, "--other-fds") {
        None => None,
        Some(v) => Some(
            v.split_once(':')
                .and_then(|(k, l)| Some((k.parse::<usize>().ok()?, l.parse::<usize>().ok()?)))
                .ok_or(format!("--other-fds: {v:?} is not K:LEVEL"))?,
        ),
    };
    let t = Instant::now();
    let bpf = BpfScanner::load().map_err(|e| e.to_string())?;
    println!("scan bench: BPF iterators loaded in {:.1?}", t.elapsed());
    let procfs = ProcFs::new("/proc");
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut holders = (0..procs)
        .map(|_| {
            let mut process = Command::new(&exe)
                .arg("--scan-holder")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("spawn {}: {e}", exe.display()))?;
            let stdin = process.stdin.take();
            let stdout = BufReader::new(process.stdout.take().expect("piped"));
            Ok(Holder { process, stdin, stdout })
        })
        .collect::<Result<Vec<_>, String>>()?;
    for level in levels {
        let per = level.div_ceil(procs);
        let t = Instant::now();
        tell(&mut holders, &format!("hold {per}"))?;
        println!("scan bench: {procs} holders x {per} dma-bufs allocated in {:.1?}", t.elapsed());
        let phases = std::cell::RefCell::new(Vec::with_capacity(scans));
        let (by_bpf, seen_bpf) = time(scans, || {
            let (scan, p) = bpf.scan_all_timed().map_err(|e| e.to_string())?;
            phases.borrow_mut().push(p);
            Ok(scan)
        })?;
        let (by_procfs, seen_procfs) = time(scans, || procfs.scan_all().map_err(|e| e.to_string()))?;
        if seen_bpf.buffers.len() != seen_procfs.buffers.len() {
            return Err(format!(
                "at {level}: BPF saw {} buffers, procfs {}",
                seen_bpf.buffers.len(),
                seen_procfs.buffers.len()
            ));
        }
        println!(
            "scan bench: {} buffers in {} processes: BPF {by_bpf:.1?}, procfs {by_procfs:.1?} (p50 of {scans}): {:.1}x",
            seen_bpf.buffers.len(),
            seen_procfs.processes,
            by_procfs.as_secs_f64() / by_bpf.as_secs_f64()
        );
        println!("result scan_{level}_buffers {}", seen_bpf.buffers.len());
        println!("result scan_{level}_bpf_ns {}", by_bpf.as_nanos());
        println!("result scan_{level}_procfs_ns {}", by_procfs.as_nanos());
        print_phases(level, &phases.into_inner());
        if let Some((others, _)) = other_fds.filter(|o| o.1 == level) {
            tell(&mut holders, &format!("other {others}"))?;
            let (by_bpf, seen) = time(scans, || bpf.scan_all().map_err(|e| e.to_string()))?;
            let (by_procfs, _) = time(scans, || procfs.scan_all().map_err(|e| e.to_string()))?;
            tell(&mut holders, "other 0")?;
            println!(
                "scan bench: {} buffers and {procs} x {others} other fds: BPF {by_bpf:.1?}, procfs {by_procfs:.1?} \
                 (p50 of {scans}): {:.1}x",
                seen.buffers.len(),
                by_procfs.as_secs_f64() / by_bpf.as_secs_f64()
            );
            println!("result scan_{level}_other_fds {}", procs * others);
            println!("result scan_{level}_other_bpf_ns {}", by_bpf.as_nanos());
            println!("result scan_{level}_other_procfs_ns {}", by_procfs.as_nanos());
        }
    }
    for h in &mut holders {
        h.stdin.take();
    }
    for mut h in holders {
        let _ = h.process.wait();
    }
    Ok(())
}
