//! Benchmark modes of the VTS binary, for BENCHMARKS.md (`vts/benchmarks.sh`). Tests don't
//! time anything; these modes only measure and print.
//!
//! - `--bench [--procs N] [--bufs M] [--chargectl PATH]` (guest, root, service running):
//!   N holder processes as app uids in `uid_<uid>/pid_<pid>` cgroups, each holding and charging
//!   M 4 KiB dma-bufs; then the service's `getProcessUsage` against a libdmabufinfo-style scan
//!   of /proc (`ProcFs::scan_all`), the service's RSS, and `chargectl bench` at that load.
//! - `--holder` (spawned by `--bench`): allocates and charges buffers when told to, holds them
//!   until its stdin closes.
//! - `--rss BUFFERS CGROUPS` (host): an in-memory accountant charged with BUFFERS synthetic
//!   buffers spread over CGROUPS app cgroups; VmRSS before and after.
//! - `--accountant-cycles N` (host and guest): chargectl bench's cycle (charge, getProcessUsage,
//!   transfer to the parent, release) N times straight on an in-memory accountant, no binder and
//!   no file I/O beyond the pidfd polls: what the service's own code costs where it runs, so the
//!   guest's emulation factor for it is measured, not guessed.
//! - `--plot IN OUT`: the ledger latency curves in IN (`panel op/p50 x nanoseconds` lines, one
//!   chart per panel, log x) as an SVG plot.
//!
//! Results are printed as `result <key> <value>` lines for the report script to pick up.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use chargetransfer::client::Client;
use chargetransfer::kernel::cgroupfs::CgroupFs;
use chargetransfer::kernel::procfs::ProcFs;

/// First app uid of the holders (Android's AID_APP_START).
const FIRST_APP_UID: u32 = 10_000;
const BUFFER_SIZE: u64 = 4096;

/// Runs the mode named by `args[1]`, if it is a benchmark mode, and returns its exit status.
pub fn dispatch(args: &[String]) -> Option<i32> {
    let rest = args.get(2..).unwrap_or_default();
    let result = match args.get(1).map(String::as_str)? {
        "--holder" => holder(),
        "--bench" => guest(rest),
        "--rss" => rss(rest),
        "--accountant-cycles" => accountant_cycles(rest),
        "--plot" => plot(rest),
        _ => return None,
    };
    Some(match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("vts bench: {e}");
            1
        }
    })
}

pub(crate) fn result(key: &str, value: impl std::fmt::Display) {
    println!("result {key} {value}");
}

pub(crate) fn flag<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T, String> {
    match args.iter().position(|a| a == name) {
        Some(i) => args.get(i + 1).and_then(|v| v.parse().ok()).ok_or_else(|| format!("{name} needs a value")),
        None => Ok(default),
    }
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn ns(d: Duration) -> u128 {
    d.as_nanos()
}

/// VmRSS of a process in KiB.
fn rss_kib(status: &Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(status).map_err(|e| format!("{}: {e}", status.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("{}: no VmRSS line", status.display()))
}

/// The holder child: for each `charge K` line on stdin (the first arrives once it is in its
/// cgroup) it allocates and charges K more buffers and answers `ok <held>`; it holds them all
/// until stdin closes.
fn holder() -> Result<(), String> {
    let mut out = std::io::stdout();
    let heap = Path::new("/dev/dma_heap/system");
    let mut client = None;
    let mut held = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let mut round = || -> Result<(), String> {
            let count: usize = line
                .strip_prefix("charge ")
                .and_then(|k| k.trim().parse().ok())
                .ok_or_else(|| format!("bad command {line:?}"))?;
            if client.is_none() {
                let c = Client::connect_binder(std::env::var("CT_BINDER").ok().as_deref(), Duration::from_secs(30))
                    .map_err(|e| e.to_string())?;
                client = Some(c);
            }
            let client = client.as_ref().expect("connected above");
            for _ in 0..count {
                let fd = chargetransfer::kernel::alloc_from_heap(heap, BUFFER_SIZE).map_err(|e| e.to_string())?;
                client.charge(&fd).map_err(|e| e.to_string())?;
                held.push(fd);
            }
            Ok(())
        };
        let reply = match round() {
            Ok(()) => format!("ok {}", held.len()),
            Err(e) => format!("err {}", e.replace('\n', " ")),
        };
        writeln!(out, "{reply}").and_then(|_| out.flush()).map_err(|e| e.to_string())?;
    }
    Ok(())
}

pub(crate) struct Holder {
    pub(crate) pid: u32,
    process: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

/// This binary with `args` as app `uid` in its own `/uid_<uid>/pid_<pid>` cgroup, driven by
/// lines on its stdin: the process, its pid, stdin and stdout.
pub(crate) fn spawn_app(
    exe: &Path,
    args: &[&str],
    cgroup: &CgroupFs,
    uid: u32,
) -> Result<(Child, u32, ChildStdin, BufReader<ChildStdout>), String> {
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    std::os::unix::process::CommandExt::uid(&mut cmd, uid);
    std::os::unix::process::CommandExt::gid(&mut cmd, uid);
    let mut process = cmd.spawn().map_err(|e| format!("spawn {}: {e}", exe.display()))?;
    let pid = process.id();
    let path = format!("/uid_{uid}/pid_{pid}");
    cgroup.create(&path).map_err(|e| e.to_string())?;
    cgroup.add_proc(&path, pid).map_err(|e| e.to_string())?;
    let stdin = process.stdin.take().expect("piped");
    let stdout = BufReader::new(process.stdout.take().expect("piped"));
    Ok((process, pid, stdin, stdout))
}

pub(crate) fn spawn_holder(exe: &Path, cgroup: &CgroupFs, uid: u32) -> Result<Holder, String> {
    let (process, pid, stdin, stdout) = spawn_app(exe, &["--holder"], cgroup, uid)?;
    Ok(Holder { pid, process, stdin: Some(stdin), stdout })
}

impl Holder {
    pub(crate) fn send(&mut self, line: &str) -> Result<(), String> {
        let stdin = self.stdin.as_mut().expect("open until the end");
        writeln!(stdin, "{line}").and_then(|_| stdin.flush()).map_err(|e| format!("holder {}: {e}", self.pid))
    }

    /// Closes its stdin (it drops its buffers and exits) and waits for it.
    pub(crate) fn stop(mut self) {
        self.stdin.take();
        let _ = self.process.wait();
    }

    pub(crate) fn wait_ok(&mut self) -> Result<(), String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line).map_err(|e| format!("holder {}: {e}", self.pid))?;
        if line.starts_with("ok") {
            Ok(())
        } else {
            Err(format!("holder {}: {}", self.pid, line.trim()))
        }
    }
}

pub(crate) fn service_pid(proc: &ProcFs) -> Result<u32, String> {
    let pids = proc.pids().map_err(|e| e.to_string())?;
    pids.into_iter()
        .find(|&p| proc.comm(p).is_ok_and(|c| c == "chargetransferd"))
        .ok_or_else(|| "chargetransferd is not running".into())
}

/// The guest measurement: per-app usage from the service vs from a /proc scan.
fn guest(args: &[String]) -> Result<(), String> {
    let procs: usize = flag(args, "--procs", 200)?;
    let bufs: usize = flag(args, "--bufs", 50)?;
    let calls: usize = flag(args, "--calls", 400)?;
    let scans: usize = flag(args, "--scans", 5)?;
    let chargectl: Option<PathBuf> =
        args.iter().position(|a| a == "--chargectl").and_then(|i| args.get(i + 1)).map(PathBuf::from);
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let cgroup = CgroupFs::new("/sys/fs/cgroup");
    let proc = ProcFs::new("/proc");
    let service = service_pid(&proc)?;
    let status = PathBuf::from(format!("/proc/{service}/status"));
    let client = Client::connect_binder(std::env::var("CT_BINDER").ok().as_deref(), Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    let svc = client.service();
    let ledger_buffers =
        || svc.getCgroupUsage("/").map(|u| u.bufferCount).map_err(|e| format!("getCgroupUsage: {e:?}"));
    let rss_before = rss_kib(&status)?;
    let buffers_before = ledger_buffers()?;

    // Two rounds over the same processes: each charges half its buffers, then the rest, all in
    // parallel. The second round's growth of the service's RSS is its cost per buffer alone;
    // the first round's also carries what it keeps per client process.
    let start = Instant::now();
    let mut holders = Vec::with_capacity(procs);
    for i in 0..procs {
        holders.push(spawn_holder(&exe, &cgroup, FIRST_APP_UID + i as u32)?);
    }
    let mut rss = Vec::new();
    for count in [bufs / 2, bufs - bufs / 2] {
        for h in &mut holders {
            h.send(&format!("charge {count}"))?;
        }
        for h in &mut holders {
            h.wait_ok()?;
        }
        rss.push((rss_kib(&status)?, ledger_buffers()?));
    }
    let setup = start.elapsed();
    println!("bench: {procs} holders x {bufs} dma-bufs of {BUFFER_SIZE} bytes allocated and charged in {setup:.1?}");
    let [(rss_mid, buffers_mid), (rss_after, buffers_after)] = rss[..] else { unreachable!("two rounds") };

    // The service's answer for one app, rotating over the holders.
    let report = svc.getProcessUsage(holders[0].pid as i32).map_err(|e| format!("getProcessUsage: {e:?}"))?;
    if report.bufferCount as usize != bufs {
        return Err(format!("getProcessUsage({}) counts {} buffers, not {bufs}", holders[0].pid, report.bufferCount));
    }
    let (mut null, mut usage) = (Vec::with_capacity(calls), Vec::with_capacity(calls));
    for i in 0..calls {
        let t = Instant::now();
        svc.ping().map_err(|e| format!("ping: {e:?}"))?;
        null.push(t.elapsed());
        let pid = holders[i % holders.len()].pid as i32;
        let t = Instant::now();
        svc.getProcessUsage(pid).map_err(|e| format!("getProcessUsage({pid}): {e:?}"))?;
        usage.push(t.elapsed());
    }
    let (null, usage) = (p50(null), p50(usage));

    // What a tool without the service does: read every process's fdinfo and maps, merge by
    // inode, then sum the app's buffers (libdmabufinfo's ReadDmaBufFdRefs + ReadDmaBufMapRefs
    // over all pids).
    let mut full = Vec::with_capacity(scans);
    let mut found = (0, 0);
    for _ in 0..scans {
        let t = Instant::now();
        let scan = proc.scan_all().map_err(|e| e.to_string())?;
        let app = holders[0].pid;
        let bytes: u64 = scan.buffers.iter().filter(|b| b.holders.contains(app)).map(|b| b.size).sum();
        full.push(t.elapsed());
        std::hint::black_box(bytes);
        found = (scan.buffers.len(), scan.processes);
    }
    let full_min = *full.iter().min().expect("scans > 0");
    let full = p50(full);
    // One process only: cheaper, but it cannot tell who pays for a shared buffer.
    let mut one = Vec::with_capacity(calls);
    for i in 0..calls.min(100) {
        let pid = holders[i % holders.len()].pid;
        let t = Instant::now();
        std::hint::black_box(proc.dmabufs(pid).map_err(|e| e.to_string())?);
        one.push(t.elapsed());
    }
    let one = p50(one);

    println!(
        "bench: per-app usage, p50: getProcessUsage {usage:.1?} (null call {null:.1?}); full /proc scan {full:.1?} ({} buffers in {} processes): {:.0}x; one process's fdinfo+maps {one:.1?}: {:.1}x",
        found.0,
        found.1,
        full.as_secs_f64() / usage.as_secs_f64(),
        one.as_secs_f64() / usage.as_secs_f64()
    );
    println!(
        "bench: service VmRSS {rss_before} KiB at {buffers_before} live buffers, {rss_mid} KiB at {buffers_mid}, {rss_after} KiB at {buffers_after}: {:.0} bytes per buffer in the second round",
        (rss_after.saturating_sub(rss_mid) * 1024) as f64 / (buffers_after - buffers_mid).max(1) as f64
    );
    result("procs", procs);
    result("bufs_per_proc", bufs);
    result("setup_ms", setup.as_millis());
    result("null_p50_ns", ns(null));
    result("usage_p50_ns", ns(usage));
    result("full_scan_p50_ns", ns(full));
    result("full_scan_min_ns", ns(full_min));
    result("full_scan_runs", scans);
    result("scan_buffers", found.0);
    result("scan_processes", found.1);
    result("pid_scan_p50_ns", ns(one));
    result("ledger_buffers_before", buffers_before);
    result("ledger_buffers_after", buffers_after);
    result("service_rss_before_kib", rss_before);
    result("ledger_buffers_mid", buffers_mid);
    result("service_rss_mid_kib", rss_mid);
    result("service_rss_after_kib", rss_after);

    if let Some(chargectl) = chargectl {
        println!("bench: chargectl bench at {buffers_after} live buffers:");
        let out = Command::new(&chargectl)
            .args(["bench", "--iterations", &calls.to_string()])
            .output()
            .map_err(|e| format!("{}: {e}", chargectl.display()))?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            return Err(format!("chargectl bench: {}", out.status));
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

/// Host: the accountant's resident memory per live buffer.
fn rss(args: &[String]) -> Result<(), String> {
    use chargetransfer::accountant::{Accountant, Config};
    let buffers: u64 = args.first().and_then(|v| v.parse().ok()).ok_or("--rss BUFFERS CGROUPS")?;
    let cgroups: u64 = args.get(1).and_then(|v| v.parse().ok()).ok_or("--rss BUFFERS CGROUPS")?;
    let status = Path::new("/proc/self/status");
    let config = Config {
        proc_root: "/proc".into(),
        cgroup_root: None,
        state_dir: None,
        durability: chargetransfer::journal::Durability::None,
        pidfds: false,
        scan: chargetransfer::kernel::ScanChoice::Procfs,
    };
    let accountant =
        Accountant::open(config, chargetransfer::policy::Policy::embedded_default()).map_err(|e| e.to_string())?;
    let before = rss_kib(status)?;
    let t = Instant::now();
    accountant
        .with_ledger_mut(|ledger| {
            // The events are what the accountant applies to its own ledger.
            let mut events = Vec::new();
            for inode in 0..buffers {
                let app = inode % cgroups;
                let (pid, cgroup) =
                    (20_000 + app as u32, format!("/uid_{}/pid_{}", FIRST_APP_UID as u64 + app, 20_000 + app));
                events.push(ledger.charge(inode + 1, BUFFER_SIZE * (1 + inode % 16), "system", pid, 0, &cgroup)?);
            }
            Ok(((), events))
        })
        .map_err(|e| e.to_string())?;
    let took = t.elapsed();
    // The change was built on a scratch copy of the ledger (a refused change must leave the
    // real one untouched); hand its freed pages back so RSS counts what stays live.
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
    let after = rss_kib(status)?;
    let live = accountant.with_ledger(|l| l.buffer_count());
    let per = (after.saturating_sub(before) * 1024) as f64 / live as f64;
    println!("rss: {live} buffers in {cgroups} cgroups charged in {took:.1?}; VmRSS {before} KiB -> {after} KiB: {per:.0} bytes per buffer");
    result("rss_buffers", live);
    result("rss_cgroups", cgroups);
    result("rss_before_kib", before);
    result("rss_after_kib", after);
    result("rss_bytes_per_buffer", format!("{per:.0}"));
    Ok(())
}

/// A process to switch to and back (`cat` over two pipes): code timed right after a round trip
/// to it runs as a binder call's handler does, woken after another process ran on the CPU. Under
/// TCG that matters: the emulator drops its translated-code jump cache and software TLB when
/// the guest switches address spaces, so such code costs several times its cost in a loop.
pub(crate) struct Echo {
    child: Child,
    to: ChildStdin,
    from: ChildStdout,
}

impl Echo {
    pub(crate) fn spawn() -> Result<Echo, String> {
        let mut child = Command::new("cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cat: {e}"))?;
        let (to, from) = (child.stdin.take().ok_or("cat: no stdin")?, child.stdout.take().ok_or("cat: no stdout")?);
        Ok(Echo { child, to, from })
    }

    pub(crate) fn round_trip(&mut self) -> Result<(), String> {
        use std::io::Read;
        self.to.write_all(b"x").and_then(|()| self.from.read_exact(&mut [0u8])).map_err(|e| format!("cat: {e}"))
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The service's code alone: p50 per method of `N` cycles (see the module docs), in a tight
/// loop and again with an [`Echo`] round trip before each call, as a binder call reaches the
/// service: `result cycles_<method>_ns` and `cycles_<method>_switched_ns`.
fn accountant_cycles(args: &[String]) -> Result<(), String> {
    use chargetransfer::accountant::{Accountant, Config};
    use chargetransfer::identity::Caller;
    use chargetransfer::kernel::dmabuf::DmaBufInfo;
    let n: u64 = args.first().and_then(|v| v.parse().ok()).ok_or("--accountant-cycles N")?;
    let config = Config {
        proc_root: "/proc".into(),
        cgroup_root: None,
        state_dir: None,
        durability: chargetransfer::journal::Durability::None,
        pidfds: true,
        scan: chargetransfer::kernel::ScanChoice::Procfs,
    };
    // The lanes' policy trusts root, as it does the benchmarks' chargectl.
    let policy = chargetransfer::policy::Policy::default_with(&[include_str!("../guest/policy-vts.json")])
        .map_err(|e| e.to_string())?;
    let accountant = Accountant::open(config, policy).map_err(|e| e.to_string())?;
    let me = std::process::id();
    let parent = rustix::process::getppid().map_or(1, |p| p.as_raw_nonzero().get() as u32);
    let caller = Caller { pid: me, uid: rustix::process::getuid().as_raw(), context: None };
    let mut echo = Echo::spawn()?;
    let methods = ["charge", "getProcessUsage", "transfer", "release"];
    let mut line = format!("accountant cycles: {n}, p50:");
    for switched in [false, true] {
        let mut times: [Vec<Duration>; 4] = Default::default();
        for i in 0..n {
            let info = DmaBufInfo { inode: 1_000_000 + i, size: BUFFER_SIZE, exporter: "system".into(), name: None };
            for (m, t) in times.iter_mut().enumerate() {
                if switched {
                    echo.round_trip()?;
                }
                let start = Instant::now();
                match m {
                    0 => accountant.charge(&caller, &info, None).map(drop),
                    1 => accountant.process_usage(me).map(|u| drop(std::hint::black_box(u))),
                    2 => accountant.transfer(&caller, &info, parent).map(drop),
                    _ => accountant.release(&caller, info.inode),
                }
                .map_err(|e| e.to_string())?;
                t.push(start.elapsed());
            }
        }
        let suffix = if switched { "_switched" } else { "" };
        if switched {
            line = line.trim_end_matches(',').to_string() + "; after a switch:";
        }
        for (method, t) in methods.into_iter().zip(times) {
            let ns = p50(t).as_nanos();
            result(&format!("cycles_{method}{suffix}_ns"), ns);
            line += &format!(" {method} {ns} ns,");
        }
    }
    println!("{}", line.trim_end_matches(','));
    Ok(())
}

/// One line of the plot input.
struct Point {
    panel: String,
    series: String,
    x: f64,
    ns: f64,
}

fn plot(args: &[String]) -> Result<(), String> {
    let [input, output] = args else { return Err("--plot IN OUT".into()) };
    let text = std::fs::read_to_string(input).map_err(|e| format!("{input}: {e}"))?;
    let mut points = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#')) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let bad = || format!("{input}:{}: expected `panel series x nanoseconds`, got {line:?}", n + 1);
        let [panel, series, x, y] = f[..] else { return Err(bad()) };
        points.push(Point {
            panel: panel.into(),
            series: series.into(),
            x: x.parse().map_err(|_| bad())?,
            ns: y.parse().map_err(|_| bad())?,
        });
    }
    draw(Path::new(output), &points).map_err(|e| format!("{output}: {e}"))
}

fn draw(path: &Path, points: &[Point]) -> Result<(), Box<dyn std::error::Error>> {
    use chargetransfer::demo::chart;
    use plotters::prelude::*;
    let mut panels: Vec<&str> = Vec::new();
    for p in points {
        if !panels.contains(&p.panel.as_str()) {
            panels.push(&p.panel);
        }
    }
    if panels.is_empty() {
        return Err("no points to plot".into());
    }
    let root = SVGBackend::new(path, (560 * panels.len() as u32, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let y_max = points.iter().map(|p| p.ns).fold(0.0, f64::max) * 1.2;
    for (area, panel) in root.split_evenly((1, panels.len())).iter().zip(&panels) {
        let mine: Vec<&Point> = points.iter().filter(|p| p.panel == *panel).collect();
        let (lo, hi) = mine.iter().fold((f64::MAX, 0f64), |(lo, hi), p| (lo.min(p.x), hi.max(p.x)));
        let mut chart = ChartBuilder::on(area)
            .caption(format!("ledger op latency vs {panel}"), ("sans-serif", 20))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d((lo / 1.5..hi * 1.5).log_scale(), 0f64..y_max)?;
        chart
            .configure_mesh()
            .x_desc(format!("live {panel} (log scale)"))
            .y_desc("ns per op")
            .x_label_formatter(&|x| match *x {
                x if x >= 1e6 => format!("{:.0}M", x / 1e6),
                x if x >= 1e3 => format!("{:.0}k", x / 1e3),
                x => format!("{x:.0}"),
            })
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        let mut series: Vec<&str> = Vec::new();
        for p in &mine {
            if !series.contains(&p.series.as_str()) {
                series.push(&p.series);
            }
        }
        // `op/p50` and `op/p99` share a colour; p99 is dashed.
        let mut ops: Vec<&str> = Vec::new();
        for name in &series {
            let op = name.split('/').next().unwrap_or(name);
            if !ops.contains(&op) {
                ops.push(op);
            }
        }
        for name in &series {
            let op = name.split('/').next().unwrap_or(name);
            let color = chart::PALETTE[ops.iter().position(|o| *o == op).unwrap_or(0) % chart::PALETTE.len()];
            let line: Vec<(f64, f64)> = mine.iter().filter(|p| p.series == *name).map(|p| (p.x, p.ns)).collect();
            chart::line(&mut chart, line, &name.replace('/', " "), color.stroke_width(2), name.ends_with("p99"))?;
        }
        chart::legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    }
    root.present()?;
    Ok(())
}
