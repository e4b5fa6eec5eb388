//! The callers benchmark, for BENCHMARKS.md (`vts/benchmarks.sh`): what the AIDL calls of a
//! device cost against a null call made by the same client in the same run.
//!
//! - `--calls-bench [--live 1000,100000] [--clients 1,2,4,8] [--iters N] [--strace PATH]` (guest,
//!   root, service running): holder processes keep each level of live buffers charged; at each
//!   level one client per caller times its cycle (an app charging itself, gralloc's uid charging on
//!   an app's behalf, the compositor charging and pushing to an app), then 1, 2, 4 and 8 app
//!   clients run at once (AIDL calls per second, p50/p99 per method). With `--strace`, at the
//!   first level, each method runs alone while strace follows the service: the system calls of
//!   its binder threads, per call.
//! - `--calls-client ROLE TARGET` (spawned by `--calls-bench`, in its own uid and cgroup): obeys
//!   `cycle N`, `prep N` and `op METHOD` lines on stdin, answering `t METHOD ns...` lines and `ok`.
//!
//! Results are `result <key> <value>` lines, as in `bench`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use chargetransfer::client::Client;
use chargetransfer::kernel::cgroupfs::CgroupFs;
use chargetransfer::kernel::procfs::ProcFs;

use crate::bench::{flag, result, service_pid, spawn_app, spawn_holder, Echo, Holder};

const BUFFER_SIZE: u64 = 4096;
/// Uids of the callers: apps from Android's AID_APP_START, gralloc as AID_GRAPHICS, the
/// compositor as AID_SYSTEM (SurfaceFlinger's).
const APP_UID: u32 = 10_000;
const GRALLOC_UID: u32 = 1003;
const COMPOSITOR_UID: u32 = 1000;
/// The app the trusted callers charge and push to, and the holders' uids.
const RECEIVER_UID: u32 = 10_999;
const HOLDER_UID: u32 = 11_000;

/// The callers and the methods each times per cycle (`null` is a ping before them).
pub const ROLES: [(&str, &[&str]); 3] = [
    ("app", &["null", "charge", "getProcessUsage", "release"]),
    ("gralloc", &["null", "charge", "getProcessUsage", "release"]),
    ("compositor", &["null", "charge", "transfer", "getProcessUsage", "release"]),
];

/// Runs the mode named by `args[1]`, if it is one of this file's, and returns its exit status.
pub fn dispatch(args: &[String]) -> Option<i32> {
    let rest = args.get(2..).unwrap_or_default();
    let outcome = match args.get(1).map(String::as_str)? {
        "--calls-bench" => orchestrate(rest),
        "--calls-client" => client_main(rest),
        _ => return None,
    };
    Some(match outcome {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("vts calls-bench: {e}");
            1
        }
    })
}

// ---------------------------------------------------------------- the client

/// What a client holds between commands: prepared buffers and the inodes of their charges.
struct ClientState {
    role: String,
    target: i32,
    me: i32,
    client: Client,
    buffers: Vec<OwnedFd>,
    inodes: Vec<i64>,
}

fn alloc() -> Result<OwnedFd, String> {
    chargetransfer::kernel::alloc_from_heap(Path::new("/dev/dma_heap/system"), BUFFER_SIZE).map_err(|e| e.to_string())
}

fn timed<T>(times: &mut BTreeMap<&'static str, Vec<u128>>, op: &'static str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let v = f();
    times.entry(op).or_default().push(t.elapsed().as_nanos());
    v
}

impl ClientState {
    /// The pid whose usage this caller asks for: its own (an app), else the app it serves.
    fn usage_pid(&self) -> i32 {
        if self.role == "app" {
            self.me
        } else {
            self.target
        }
    }

    fn charge(&self, fd: &OwnedFd) -> Result<i64, String> {
        let info = match self.role.as_str() {
            "gralloc" => self.client.charge_for(fd, self.target),
            _ => self.client.charge(fd),
        };
        info.map(|i| i.inode).map_err(|e| format!("charge: {e}"))
    }

    fn usage(&self) -> Result<(), String> {
        self.client.service().getProcessUsage(self.usage_pid()).map(drop).map_err(|e| format!("usage: {e:?}"))
    }

    fn ping(&self) -> Result<(), String> {
        self.client.service().ping().map_err(|e| format!("ping: {e:?}"))
    }

    /// `n` times the caller's cycle, each call timed; `t METHOD ns...` lines.
    fn cycle(&self, n: usize) -> Result<String, String> {
        let mut times = BTreeMap::new();
        for _ in 0..n {
            timed(&mut times, "null", || self.ping())?;
            let fd = alloc()?;
            let inode = timed(&mut times, "charge", || self.charge(&fd))?;
            if self.role == "compositor" {
                timed(&mut times, "transfer", || self.client.transfer(&fd, self.target))
                    .map_err(|e| format!("transfer: {e}"))?;
            }
            timed(&mut times, "getProcessUsage", || self.usage())?;
            // An app may release only what it no longer holds; the trusted callers release the
            // charge they made or pushed while they still hold the buffer.
            let held = (self.role != "app").then_some(fd);
            timed(&mut times, "release", || self.client.release(inode)).map_err(|e| format!("release: {e}"))?;
            drop(held);
        }
        Ok(times.iter().map(|(op, v)| format!("t {op} {}\n", join(v))).collect())
    }

    /// `n` buffers for `op` lines (the compositor's already charged to itself, to be pushed).
    fn prep(&mut self, n: usize) -> Result<(), String> {
        for _ in 0..n {
            let fd = alloc()?;
            if self.role == "compositor" {
                self.inodes.push(self.charge(&fd)?);
            }
            self.buffers.push(fd);
        }
        Ok(())
    }

    /// One method over the prepared buffers (or as many calls for `null` and `getProcessUsage`).
    fn op(&mut self, method: &str) -> Result<(), String> {
        let n = self.buffers.len().max(self.inodes.len());
        match method {
            "null" => (0..n).try_for_each(|_| self.ping()),
            "getProcessUsage" => (0..n).try_for_each(|_| self.usage()),
            "charge" => {
                self.inodes = self.buffers.iter().map(|fd| self.charge(fd)).collect::<Result<_, _>>()?;
                Ok(())
            }
            "transfer" => self.buffers.iter().try_for_each(|fd| {
                self.client.transfer(fd, self.target).map(drop).map_err(|e| format!("transfer: {e}"))
            }),
            "release" => {
                if self.role == "app" {
                    self.buffers.clear();
                }
                for inode in std::mem::take(&mut self.inodes) {
                    self.client.release(inode).map_err(|e| format!("release: {e}"))?;
                }
                self.buffers.clear();
                Ok(())
            }
            other => Err(format!("unknown method {other}")),
        }
    }
}

fn join(v: &[u128]) -> String {
    v.iter().map(u128::to_string).collect::<Vec<_>>().join(" ")
}

fn client_main(args: &[String]) -> Result<(), String> {
    let [role, target] = args else { return Err("--calls-client ROLE TARGET".into()) };
    let target: i32 = target.parse().map_err(|_| format!("bad target pid {target}"))?;
    let mut state: Option<ClientState> = None;
    let mut out = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let mut step = || -> Result<String, String> {
            if state.is_none() {
                let client =
                    Client::connect_binder(std::env::var("CT_BINDER").ok().as_deref(), Duration::from_secs(30))
                        .map_err(|e| e.to_string())?;
                let me = std::process::id() as i32;
                state = Some(ClientState {
                    role: role.clone(),
                    target,
                    me,
                    client,
                    buffers: Vec::new(),
                    inodes: Vec::new(),
                });
            }
            let s = state.as_mut().expect("connected above");
            let words: Vec<&str> = line.split_whitespace().collect();
            let count = |w: &str| w.parse::<usize>().map_err(|_| format!("bad count {w}"));
            match words[..] {
                ["cycle", n] => s.cycle(count(n)?),
                ["prep", n] => s.prep(count(n)?).map(|()| String::new()),
                ["op", method] => s.op(method).map(|()| String::new()),
                _ => Err(format!("bad command {line:?}")),
            }
        };
        let reply = match step() {
            Ok(lines) => format!("{lines}ok"),
            Err(e) => format!("err {}", e.replace('\n', " ")),
        };
        writeln!(out, "{reply}").and_then(|_| out.flush()).map_err(|e| e.to_string())?;
    }
    Ok(())
}

// ---------------------------------------------------------------- the orchestrator

struct Caller {
    pid: u32,
    process: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

fn spawn_caller(exe: &Path, cgroup: &CgroupFs, role: &str, uid: u32, target: u32) -> Result<Caller, String> {
    let (process, pid, stdin, stdout) = spawn_app(exe, &["--calls-client", role, &target.to_string()], cgroup, uid)?;
    Ok(Caller { pid, process, stdin: Some(stdin), stdout })
}

impl Caller {
    fn send(&mut self, line: &str) -> Result<(), String> {
        let stdin = self.stdin.as_mut().expect("open until stop");
        writeln!(stdin, "{line}").and_then(|_| stdin.flush()).map_err(|e| format!("{} {}: {e}", self.pid, line))
    }

    /// The reply to the last command: its `t METHOD ns...` lines as samples per method.
    fn reply(&mut self) -> Result<BTreeMap<String, Vec<u128>>, String> {
        let mut samples = BTreeMap::new();
        loop {
            let mut line = String::new();
            if self.stdout.read_line(&mut line).map_err(|e| format!("client {}: {e}", self.pid))? == 0 {
                return Err(format!("client {} exited", self.pid));
            }
            let line = line.trim();
            if line == "ok" {
                return Ok(samples);
            }
            let Some(rest) = line.strip_prefix("t ") else { return Err(format!("client {}: {line}", self.pid)) };
            let mut words = rest.split_whitespace();
            let op = words.next().unwrap_or_default().to_string();
            let v: Vec<u128> = words.filter_map(|w| w.parse().ok()).collect();
            samples.entry(op).or_insert_with(Vec::new).extend(v);
        }
    }

    fn call(&mut self, line: &str) -> Result<BTreeMap<String, Vec<u128>>, String> {
        self.send(line)?;
        self.reply()
    }

    fn stop(mut self) {
        self.stdin.take();
        let _ = self.process.wait();
    }
}

/// The AIDL method the service times for a caller's step (`null` is a ping; gralloc charges on
/// an app's behalf).
fn service_method(role: &str, step: &str) -> &'static str {
    match (role, step) {
        (_, "null") => "ping",
        ("gralloc", "charge") => "chargeOnBehalf",
        (_, "charge") => "charge",
        (_, "transfer") => "transfer",
        (_, "release") => "release",
        _ => "getProcessUsage",
    }
}

/// What the service's `dumpState` says of one method's calls so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ServiceTimes {
    calls: u64,
    total_ns: u64,
    /// Upper bound of a bucket (ns) → calls in it.
    buckets: BTreeMap<u64, u64>,
}

impl ServiceTimes {
    /// The calls since `earlier`: their mean and the upper bound of the bucket of their median.
    fn since(&self, earlier: &ServiceTimes) -> Option<(u64, u64)> {
        let calls = self.calls - earlier.calls;
        let mean = (self.total_ns - earlier.total_ns).checked_div(calls)?;
        let mut seen = 0;
        let p50 = self.buckets.iter().find_map(|(bound, n)| {
            seen += n - earlier.buckets.get(bound).copied().unwrap_or(0);
            (seen * 2 >= calls).then_some(*bound)
        })?;
        Some((mean, p50))
    }
}

/// The service's call times so far from its `dumpState`, by method.
fn service_times(client: &Client) -> Result<BTreeMap<String, ServiceTimes>, String> {
    let dump = client.service().dumpState().map_err(|e| format!("dumpState: {e:?}"))?;
    Ok(parse_service_times(&dump))
}

/// Lines `  <method> calls N, total T ns, ...; by bucket U:C ...` after `Service time per call`.
fn parse_service_times(dump: &str) -> BTreeMap<String, ServiceTimes> {
    dump.lines()
        .skip_while(|l| !l.starts_with("Service time per call"))
        .skip(1)
        .map_while(|l| {
            let rest = l.strip_prefix("  ")?;
            let (method, rest) = rest.split_once(" calls ")?;
            let (calls, rest) = rest.split_once(", total ")?;
            let (total, rest) = rest.split_once(" ns")?;
            let buckets = rest
                .split_once("; by bucket ")?
                .1
                .split(' ')
                .map(|b| b.split_once(':').and_then(|(u, c)| Some((u.parse().ok()?, c.parse().ok()?))))
                .collect::<Option<_>>()?;
            Some((
                method.to_string(),
                ServiceTimes { calls: calls.parse().ok()?, total_ns: total.parse().ok()?, buckets },
            ))
        })
        .collect()
}

/// p50 of `n` runs of `f`, in ns; with `echo`, each run right after a round trip to it.
fn p50_of(n: usize, mut echo: Option<&mut Echo>, mut f: impl FnMut() -> Result<(), String>) -> Result<u128, String> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        if let Some(echo) = echo.as_deref_mut() {
            echo.round_trip()?;
        }
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_nanos());
    }
    Ok(percentile(&mut v, 0.5))
}

/// What the work a method does beyond a null call costs in this guest, each step alone, p50 of
/// `n` (so BENCHMARKS.md can add up the floor of each method from its system-call account):
/// a bare system call, the identity check (a poll of a pidfd), binder's handling of a received
/// fd (a dup and two closes), learning a buffer (fstat and its fdinfo), the journal's write,
/// and the holder rule's check of one process (`ProcFs::holds` on `holder`, which does not hold
/// the inode asked about: the whole walk); then each again right after an [`Echo`] round trip,
/// as a handler meets them.
fn syscall_costs(holder: u32, journal_dir: &Path, n: usize) -> Result<(), String> {
    use std::os::fd::{AsFd, AsRawFd, FromRawFd};
    let buffer = alloc()?;
    let os = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, holder as libc::pid_t, 0) };
    let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd as i32) }).ok_or_else(|| os("pidfd_open"))?;
    let path = journal_dir.join("bench-write.tmp");
    let mut journal = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let procfs = ProcFs::new("/proc");
    let info =
        chargetransfer::kernel::dmabuf::inspect(buffer.as_fd(), Path::new("/proc")).map_err(|e| e.to_string())?;
    let dev = chargetransfer::kernel::dmabuf::dmabuf_dev();
    let fdinfo = chargetransfer::kernel::dmabuf::FdInfoDir::open(Path::new("/proc"));
    let poll_pidfd = || {
        let mut p = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, no wait.
        (unsafe { libc::poll(&mut p, 1, 0) } >= 0).then_some(()).ok_or_else(|| os("poll"))
    };
    let dup_close = || {
        let a = buffer.try_clone().map_err(|e| e.to_string())?;
        let b = a.try_clone().map_err(|e| e.to_string())?;
        drop((a, b));
        Ok(())
    };
    let learn = || {
        chargetransfer::kernel::dmabuf::inspect_known(buffer.as_fd(), &fdinfo, |_| None)
            .map(drop)
            .map_err(|e| e.to_string())
    };
    let mut echo = Echo::spawn()?;
    let mut line = String::from("costs (p50):");
    for switched in [false, true] {
        let mut e = switched.then_some(&mut echo);
        let costs = [
            (
                "getppid",
                p50_of(n, e.as_deref_mut(), || {
                    std::hint::black_box(rustix::process::getppid());
                    Ok(())
                })?,
            ),
            ("ppoll_pidfd", p50_of(n, e.as_deref_mut(), poll_pidfd)?),
            ("fd_dup_close", p50_of(n, e.as_deref_mut(), dup_close)?),
            (
                "fstat_dmabuf",
                p50_of(n, e.as_deref_mut(), || rustix::fs::fstat(&buffer).map(drop).map_err(|e| e.to_string()))?,
            ),
            ("learn_buffer", p50_of(n, e.as_deref_mut(), learn)?),
            (
                "journal_write",
                p50_of(n, e.as_deref_mut(), || journal.write_all(&[0u8; 48]).map_err(|e| e.to_string()))?,
            ),
            (
                "holder_check",
                p50_of(n, e, || procfs.holds(holder, info.inode, dev).map(drop).map_err(|e| e.to_string()))?,
            ),
        ];
        let suffix = if switched { "_switched" } else { "" };
        if switched {
            line = line.trim_end_matches(',').to_string() + "; after a switch:";
        }
        for (name, ns) in costs {
            result(&format!("cost_{name}{suffix}_ns"), ns);
            line += &format!(" {name} {ns} ns,");
        }
    }
    drop(journal);
    let _ = std::fs::remove_file(&path);
    println!("{}", line.trim_end_matches(','));
    Ok(())
}

fn percentile(v: &mut [u128], p: f64) -> u128 {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn uid_of(role: &str) -> u32 {
    match role {
        "gralloc" => GRALLOC_UID,
        "compositor" => COMPOSITOR_UID,
        _ => APP_UID,
    }
}

struct Bench {
    exe: PathBuf,
    cgroup: CgroupFs,
    receiver: u32,
}

impl Bench {
    /// One client per caller: p50/p99 of each method and of its null calls, and the mean time
    /// the service spent in each (its `dumpState` call times, read before and after).
    fn callers(&self, client: &Client, level: usize, iters: usize) -> Result<(), String> {
        for (role, methods) in ROLES {
            let mut c = spawn_caller(&self.exe, &self.cgroup, role, uid_of(role), self.receiver)?;
            c.call("cycle 5")?;
            let before = service_times(client)?;
            let mut samples = c.call(&format!("cycle {iters}"))?;
            let after = service_times(client)?;
            c.stop();
            let null = percentile(samples.get_mut("null").ok_or("no null samples")?, 0.5);
            let mut line = format!("calls: {level} live, {role}: null {null} ns");
            for m in methods.iter() {
                let v = samples.get_mut(*m).ok_or_else(|| format!("{role}: no {m} samples"))?;
                let (p50, p99) = (percentile(v, 0.5), percentile(v, 0.99));
                result(&format!("calls_{level}_{role}_{m}_p50_ns"), p50);
                result(&format!("calls_{level}_{role}_{m}_p99_ns"), p99);
                line += &format!(", {m} {p50}/{p99} ns ({:.2}x null)", p50 as f64 / null as f64);
                let method = service_method(role, m);
                let earlier = before.get(method).cloned().unwrap_or_default();
                if let Some((mean, p50)) = after.get(method).and_then(|t| t.since(&earlier)) {
                    result(&format!("calls_{level}_{role}_{m}_service_ns"), mean);
                    result(&format!("calls_{level}_{role}_{m}_service_p50_ns"), p50);
                    line += &format!(" [service mean {mean} ns, p50 <= {p50} ns]");
                }
            }
            println!("{line}");
        }
        Ok(())
    }

    /// `n` app clients at once, each its cycle `iters` times: calls per second over the wall
    /// time from the first command to the last reply, p50/p99 over every client's calls.
    fn concurrent(&self, level: usize, n: usize, iters: usize) -> Result<(), String> {
        let mut clients = (0..n)
            .map(|k| spawn_caller(&self.exe, &self.cgroup, "app", APP_UID + 1 + k as u32, self.receiver))
            .collect::<Result<Vec<_>, _>>()?;
        for c in &mut clients {
            c.call("cycle 5")?;
        }
        let start = Instant::now();
        for c in &mut clients {
            c.send(&format!("cycle {iters}"))?;
        }
        let mut all: BTreeMap<String, Vec<u128>> = BTreeMap::new();
        for c in &mut clients {
            for (op, v) in c.reply()? {
                all.entry(op).or_default().extend(v);
            }
        }
        let wall = start.elapsed();
        clients.into_iter().for_each(Caller::stop);
        let calls: usize = all.values().map(Vec::len).sum();
        let rate = calls as f64 / wall.as_secs_f64();
        result(&format!("conc_{level}_{n}_calls_per_s"), format!("{rate:.0}"));
        let mut line = format!("concurrency: {level} live, {n} app clients: {rate:.0} calls/s");
        for (op, v) in &mut all {
            let (p50, p99) = (percentile(v, 0.5), percentile(v, 0.99));
            result(&format!("conc_{level}_{n}_{op}_p50_ns"), p50);
            result(&format!("conc_{level}_{n}_{op}_p99_ns"), p99);
            line += &format!(", {op} {p50}/{p99} ns");
        }
        println!("{line}");
        Ok(())
    }

    /// Each caller's methods alone under strace: system calls per call on the service's binder
    /// threads (those that make binder ioctls; the lifecycle threads are left out).
    fn syscalls(&self, strace: &Path, service: u32, dir: &Path, n: usize) -> Result<(), String> {
        for (role, methods) in ROLES {
            let mut c = spawn_caller(&self.exe, &self.cgroup, role, uid_of(role), self.receiver)?;
            c.call("cycle 2")?;
            c.call(&format!("prep {n}"))?;
            for m in methods.iter() {
                if role == "compositor" && *m == "charge" {
                    continue; // made by `prep`: its own charge, the same path as an app's
                }
                let file = dir.join(format!("strace-{role}-{m}.txt"));
                let counts = traced(strace, service, &file, || c.call(&format!("op {m}")).map(drop))?;
                let total: usize = counts.values().sum();
                let per = |k: usize| k as f64 / n as f64;
                let detail: Vec<String> = counts.iter().map(|(s, k)| format!("{s}:{:.1}", per(*k))).collect();
                result(&format!("sys_{role}_{m}"), format!("{:.1}", per(total)));
                result(&format!("sysd_{role}_{m}"), detail.join(","));
                println!("syscalls: {role} {m}: {:.1} per call ({})", per(total), detail.join(", "));
            }
            c.stop();
        }
        Ok(())
    }
}

/// Runs `body` while strace follows every thread of `service` into `file`; the system calls
/// of the threads that made binder ioctls, by name.
fn traced(
    strace: &Path,
    service: u32,
    file: &Path,
    body: impl FnOnce() -> Result<(), String>,
) -> Result<BTreeMap<String, usize>, String> {
    let mut child = Command::new(strace)
        .args(["-f", "-o"])
        .arg(file)
        .args(["-p", &service.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", strace.display()))?;
    let mut err = BufReader::new(child.stderr.take().expect("piped"));
    let mut line = String::new();
    while !line.contains("attached") {
        line.clear();
        if err.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            let _ = child.wait();
            return Err(format!("strace did not attach to {service}"));
        }
    }
    // `attached` is printed per thread; let it reach them all.
    std::thread::sleep(Duration::from_millis(500));
    let outcome = body();
    std::thread::sleep(Duration::from_millis(200));
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a child's pid");
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    child.wait().map_err(|e| e.to_string())?;
    outcome?;
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(binder_thread_calls(&text))
}

/// Syscalls started per name (not `<... resumed>` halves) on threads with a binder ioctl.
pub fn binder_thread_calls(trace: &str) -> BTreeMap<String, usize> {
    let mut per_thread: BTreeMap<&str, (bool, BTreeMap<String, usize>)> = BTreeMap::new();
    for line in trace.lines() {
        let Some((tid, rest)) = line.trim_start().split_once(char::is_whitespace) else { continue };
        let rest = rest.trim_start();
        let Some((name, _)) = rest.split_once('(') else { continue };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let entry = per_thread.entry(tid).or_default();
        entry.0 |= name == "ioctl";
        *entry.1.entry(name.to_string()).or_default() += 1;
    }
    let mut total = BTreeMap::new();
    for (_, (binder, counts)) in per_thread {
        if binder {
            for (name, k) in counts {
                *total.entry(name).or_default() += k;
            }
        }
    }
    total
}

fn list(args: &[String], name: &str, default: &str) -> Result<Vec<usize>, String> {
    let v: String = flag(args, name, default.to_string())?;
    v.split(',').map(|x| x.parse().map_err(|_| format!("{name}: bad number {x}"))).collect()
}

fn orchestrate(args: &[String]) -> Result<(), String> {
    let levels = list(args, "--live", "1000,100000")?;
    let concurrency = list(args, "--clients", "1,2,4,8")?;
    let iters: usize = flag(args, "--iters", 200)?;
    let holders_n: usize = flag(args, "--holders", 200)?;
    let trace_calls: usize = flag(args, "--trace-calls", 50)?;
    let strace: Option<PathBuf> =
        args.iter().position(|a| a == "--strace").and_then(|i| args.get(i + 1)).map(PathBuf::from);
    let out_dir: PathBuf = flag(args, "--out", PathBuf::from("/tmp"))?;
    let journal_dir: PathBuf = flag(args, "--journal-dir", PathBuf::from("/data/vendor/chargetransfer"))?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let cgroup = CgroupFs::new("/sys/fs/cgroup");
    let service = service_pid(&ProcFs::new("/proc"))?;
    let client = Client::connect_binder(std::env::var("CT_BINDER").ok().as_deref(), Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    let live =
        || client.service().getCgroupUsage("/").map(|u| u.bufferCount as usize).map_err(|e| format!("usage: {e:?}"));
    result("iters", iters);
    result("trace_calls", trace_calls);
    let receiver = spawn_holder(&exe, &cgroup, RECEIVER_UID)?;
    let bench = Bench { exe: exe.clone(), cgroup: CgroupFs::new("/sys/fs/cgroup"), receiver: receiver.pid };
    let mut holders: Vec<Holder> =
        (0..holders_n).map(|i| spawn_holder(&exe, &cgroup, HOLDER_UID + i as u32)).collect::<Result<_, _>>()?;
    for (i, &level) in levels.iter().enumerate() {
        let need = level.saturating_sub(live()?);
        let per = need.div_ceil(holders_n.max(1));
        let t = Instant::now();
        if per > 0 {
            for h in &mut holders {
                h.send(&format!("charge {per}"))?;
            }
            for h in &mut holders {
                h.wait_ok()?;
            }
        }
        let now = live()?;
        println!("calls: {now} live buffers ({need} charged by {holders_n} holders in {:.1?})", t.elapsed());
        result(&format!("live_{level}"), now);
        if i == 0 {
            let holder = holders.first().map_or(receiver.pid, |h| h.pid);
            syscall_costs(holder, &journal_dir, iters)?;
        }
        bench.callers(&client, level, iters)?;
        for &n in &concurrency {
            bench.concurrent(level, n, iters)?;
        }
        if let (0, Some(strace)) = (i, &strace) {
            bench.syscalls(strace, service, &out_dir, trace_calls)?;
        }
    }
    holders.into_iter().for_each(Holder::stop);
    receiver.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_times_are_read_from_the_dump_and_give_the_quantiles_between_two_dumps() {
        let dump = |charges: &str| {
            format!(
                "Owners:\n  x\nService time per call (entry to reply):\n  ping calls 3, total 300 ns, p50 <= 128 ns, \
                 p99 <= 160 ns; by bucket 128:2 160:1\n{charges}\nCatch-up:\n"
            )
        };
        let before = parse_service_times(&dump(
            "  chargeOnBehalf calls 2, total 9000 ns, p50 <= 5120 ns, p99 <= 5120 ns; by bucket 5120:2",
        ));
        assert_eq!(before.len(), 2);
        assert_eq!(before["ping"], ServiceTimes { calls: 3, total_ns: 300, buckets: [(128, 2), (160, 1)].into() });
        let after = parse_service_times(&dump(
            "  chargeOnBehalf calls 6, total 49000 ns, p50 <= 12288 ns, p99 <= 12288 ns; by bucket 5120:2 10240:1 12288:3",
        ));
        // The four calls between: 10240 once, 12288 three times.
        assert_eq!(after["chargeOnBehalf"].since(&before["chargeOnBehalf"]), Some((10_000, 12_288)));
        assert_eq!(after["ping"].since(&before["ping"]), None);
        assert_eq!(service_method("gralloc", "charge"), "chargeOnBehalf");
    }

    #[test]
    fn only_the_binder_threads_syscall_starts_are_counted() {
        let trace = "\
101   ioctl(3, BINDER_WRITE_READ, 0x7ff) = 0
101   fstat(5, {st_mode=S_IFREG}) = 0
101   openat(AT_FDCWD, \"/proc/self/fdinfo/5\", O_RDONLY) = 6
102   poll([{fd=7, events=POLLIN}], 1, 0) = 0
101   ioctl(3, BINDER_WRITE_READ <unfinished ...>
103   ioctl(3, BINDER_WRITE_READ, 0x7ff) = 0
101   <... ioctl resumed>, 0x7ff) = 0
103   +++ exited with 0 +++
";
        let counts = binder_thread_calls(trace);
        assert_eq!(
            counts.into_iter().collect::<Vec<_>>(),
            [("fstat".to_string(), 1), ("ioctl".to_string(), 3), ("openat".to_string(), 1)]
        );
    }
}
