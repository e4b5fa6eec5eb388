//! The allocator outage run: gralloc never waits on a dead service, and nothing it allocated
//! stays uncharged.
//!
//! An allocator client (uid 1003) loops — allocate a system-heap dma-buf, charge it on behalf of
//! an app through the allocator library (`chargetransfer::allocator`, deadline scaled for TCG),
//! hand the fd to the app over a unix socket (SCM_RIGHTS, as binder would) and close its own —
//! while the orchestrator SIGKILLs and restarts the service the way init does (the fault run's
//! supervisor). Then the same with the service started 5 s after the allocator. The app keeps
//! the last few buffers it received, so most buffers are freed again, some while their charge is
//! still deferred. At the end the allocator's queue has drained, a reconcile has caught up what
//! it could not replay, and every buffer the app still holds must be charged.
//!
//! Each scenario prints `allocator outage: N allocations, S stalled beyond the deadline, U
//! uncharged after catch-up, max stall X ms`; it passes when U = 0 and every allocation went
//! through. S is a timing goal (S = 0), measured and printed, not asserted: under TCG on one vCPU
//! a stall is as much the guest's scheduling as the library's, and the house rule keeps timings
//! out of pass/fail. Then a C program
//! linked with the C ABI (`vts/cabi`) charges a real dma-buf as the gralloc uid.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, IoSlice, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chargetransfer::allocator::{AllocatorClient, Answer, Options, Transport, DEFAULT_DEADLINE, TCG_SCALE};
use chargetransfer::client::Client;
use chargetransfer::kernel::cgroupfs::CgroupFs;
use chargetransfer::kernel::procfs::ProcFs;
use rustix::net::{AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType};

use crate::faults::Service;
use crate::harness::{Child, Env, AID_GRAPHICS};
use crate::rng::Rng;

/// The allocator's deadline in the emulated lanes.
const DEADLINE: Duration = Duration::from_millis(DEFAULT_DEADLINE.as_millis() as u64 * TCG_SCALE as u64);
const BUFFER: u64 = 64 << 10;
/// One allocation per frame at 60 Hz.
const INTERVAL: Duration = Duration::from_millis(16);
/// Buffers the app keeps; older ones it closes (frees).
const APP_KEEPS: usize = 8;
const RESTARTS: u32 = 20;
const LATE_START: Duration = Duration::from_secs(5);
/// How long the allocator's queue may take to drain once the service is back.
const DRAIN: Duration = Duration::from_secs(30);
/// The allocator process's real-time priority (see `pair`): SurfaceFlinger's, SCHED_FIFO 2.
const ALLOCATOR_FIFO_PRIORITY: i32 = 2;

// ---- the client side (commands of a `child`) ----

/// What the allocator loop measured.
#[derive(Default)]
struct LoopStats {
    allocations: u64,
    stalled: u64,
    max_stall: Duration,
    deferred: u64,
    refused: u64,
    alloc_failures: u64,
}

struct AllocLoop {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(LoopStats, AllocatorClient)>,
}

static LOOP: Mutex<Option<AllocLoop>> = Mutex::new(None);

fn send_fd(socket: &OwnedFd, fd: &OwnedFd) -> Result<(), String> {
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    let fds = [fd.as_fd()];
    anc.push(SendAncillaryMessage::ScmRights(&fds));
    rustix::net::sendmsg(socket, &[IoSlice::new(b"f")], &mut anc, SendFlags::empty())
        .map(drop)
        .map_err(|e| format!("sendmsg: {e}"))
}

/// The allocator: allocate, charge on behalf of `owner`, hand over, close; one per `INTERVAL`.
fn alloc_loop(
    client: AllocatorClient,
    socket: OwnedFd,
    owner: i32,
    stop: Arc<AtomicBool>,
) -> (LoopStats, AllocatorClient) {
    let heap = std::path::Path::new("/dev/dma_heap/system");
    let mut stats = LoopStats::default();
    while !stop.load(Ordering::Relaxed) {
        let next = Instant::now() + INTERVAL;
        let Ok(fd) = chargetransfer::kernel::alloc_from_heap(heap, BUFFER) else {
            stats.alloc_failures += 1;
            std::thread::sleep(INTERVAL);
            continue;
        };
        stats.allocations += 1;
        let started = Instant::now();
        let answer = client.charge_on_behalf(&fd, owner);
        let stall = started.elapsed();
        stats.max_stall = stats.max_stall.max(stall);
        stats.stalled += u64::from(stall > client.deadline());
        match answer {
            Ok(Answer::Done(_)) => {}
            Ok(Answer::Deferred(_)) => stats.deferred += 1,
            // OVER_LIMIT and the like: the allocation fails and the buffer is freed.
            Err(_) => {
                stats.refused += 1;
                continue;
            }
        }
        if send_fd(&socket, &fd).is_err() {
            stats.alloc_failures += 1;
        }
        drop(fd);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    (stats, client)
}

fn slot_fd(args: &[&str], i: usize, slots: &[Option<OwnedFd>]) -> Result<OwnedFd, String> {
    let n: usize = args.get(i).and_then(|s| s.parse().ok()).ok_or("bad slot")?;
    slots.get(n).and_then(|s| s.as_ref()).ok_or("empty slot")?.try_clone().map_err(|e| e.to_string())
}

/// The child's commands for this run; `None` for a command that is not one of them.
///
/// - `socketpair` → `ok A B`: two connected slots (one end is handed to the app).
/// - `keep_from SLOT KEEP`: receive fds on SLOT in the background, keeping the newest KEEP.
/// - `alloc_loop SLOT OWNER DEADLINE_MS`: start the allocator loop, sending fds over SLOT.
/// - `alloc_stop` → `ok N STALLED MAX_STALL_US DEFERRED FAILED PENDING REPLAYED GONE OWNER_GONE
///   REFUSED_AT_REPLAY OVERFLOW`: stop it and wait (at most `DRAIN`) for its queue to drain.
pub fn command(args: &[&str], slots: &mut Vec<Option<OwnedFd>>) -> Option<Result<String, String>> {
    Some(match args.first().copied()? {
        "socketpair" => socketpair(slots),
        "keep_from" => keep_from(args, slots),
        "alloc_loop" => start_loop(args, slots),
        "alloc_stop" => stop_loop(),
        _ => return None,
    })
}

fn num(args: &[&str], i: usize) -> i64 {
    args.get(i).and_then(|s| s.parse().ok()).unwrap_or(-1)
}

fn socketpair(slots: &mut Vec<Option<OwnedFd>>) -> Result<String, String> {
    let (a, b) = rustix::net::socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None)
        .map_err(|e| e.to_string())?;
    slots.push(Some(a));
    slots.push(Some(b));
    Ok(format!("ok {} {}", slots.len() - 2, slots.len() - 1))
}

fn keep_from(args: &[&str], slots: &[Option<OwnedFd>]) -> Result<String, String> {
    let socket = slot_fd(args, 1, slots)?;
    let keep = num(args, 2).max(1) as usize;
    std::thread::spawn(move || {
        let mut kept = std::collections::VecDeque::new();
        while let Ok(fd) = crate::child::receive(&socket) {
            kept.push_back(fd);
            if kept.len() > keep {
                kept.pop_front();
            }
        }
        // The allocator closed its end: what is kept stays held until this process exits.
        std::mem::forget(kept);
    });
    Ok("ok".to_string())
}

fn start_loop(args: &[&str], slots: &[Option<OwnedFd>]) -> Result<String, String> {
    let socket = slot_fd(args, 1, slots)?;
    let owner = num(args, 2) as i32;
    let deadline = Duration::from_millis(num(args, 3).max(1) as u64);
    let transport = Transport::Binder(std::env::var("CT_BINDER").ok());
    let client = AllocatorClient::start(transport, Options { deadline, ..Options::default() });
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    let thread = std::thread::spawn(move || alloc_loop(client, socket, owner, s));
    *LOOP.lock().unwrap_or_else(|p| p.into_inner()) = Some(AllocLoop { stop, thread });
    Ok("ok".to_string())
}

fn stop_loop() -> Result<String, String> {
    let running = LOOP.lock().unwrap_or_else(|p| p.into_inner()).take().ok_or("no allocator loop")?;
    running.stop.store(true, Ordering::Relaxed);
    let (stats, client) = running.thread.join().map_err(|_| "the allocator loop panicked")?;
    let until = Instant::now() + DRAIN;
    while (client.pending() > 0 || !client.connected()) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let q = client.stats();
    Ok(format!(
        "ok {} {} {} {} {} {} {} {} {} {} {}",
        stats.allocations,
        stats.stalled,
        stats.max_stall.as_micros(),
        stats.deferred,
        stats.refused + stats.alloc_failures,
        client.pending(),
        q.replayed,
        q.dropped_gone,
        q.dropped_owner_gone,
        q.dropped_refused,
        q.dropped_overflow
    ))
}

// ---- the orchestrator ----

fn field<T: std::str::FromStr>(r: &[String], i: usize) -> Result<T, String> {
    r.get(i).and_then(|v| v.parse().ok()).ok_or_else(|| format!("reply field {i} missing in {r:?}"))
}

/// The allocator (gralloc uid) and the app it allocates for, connected by a socket.
struct Pair {
    gralloc: Child,
    app: Child,
    socket: usize,
}

fn pair(env: &Env, app_uid: u32) -> Result<Pair, String> {
    let mut gralloc = env.spawn(AID_GRAPHICS, None)?;
    // On Android what waits on an allocation is real-time: SurfaceFlinger's main thread runs
    // SCHED_FIFO 2, and binder passes an RT caller's priority on to the allocator HAL's thread.
    // Here too, so that the service's start-up on the emulated single CPU cannot delay the
    // allocator's wake-up past its deadline (at nice -20 it still did, by < 1 ms, once in
    // ~2000 calls). Threads the allocator starts later inherit the policy; the library's connector
    // drops it (reconnects and replays are background work).
    let param = libc::sched_param { sched_priority: ALLOCATOR_FIFO_PRIORITY };
    // SAFETY: sched_setscheduler reads `param` only during the call; the pid is our child's.
    if unsafe { libc::sched_setscheduler(gralloc.pid as i32, libc::SCHED_FIFO, &param) } != 0 {
        return Err(format!("sched_setscheduler(SCHED_FIFO) of the allocator: {}", std::io::Error::last_os_error()));
    }
    let mut app = env.spawn(app_uid, None)?;
    let r = gralloc.ok("socketpair")?;
    let (a, b): (usize, usize) = (field(&r, 0)?, field(&r, 1)?);
    let app_slot = gralloc.give(b, &mut app)?;
    gralloc.ok(&format!("close {b}"))?;
    app.ok(&format!("keep_from {app_slot} {APP_KEEPS}"))?;
    Ok(Pair { gralloc, app, socket: a })
}

impl Pair {
    fn start(&mut self) -> Result<(), String> {
        let line = format!("alloc_loop {} {} {}", self.socket, self.app.pid, DEADLINE.as_millis());
        self.gralloc.ok(&line).map(drop)
    }

    /// Stops the loop, catches up, counts: the summary line, and whether S = U = 0.
    fn finish(&mut self, client: &Client, what: &str) -> Result<bool, String> {
        let r = self.gralloc.ok("alloc_stop")?;
        let [n, stalled, max_us, deferred, failed, pending, replayed, gone, owner_gone, refused, overflow] =
            std::array::from_fn(|i| field::<u64>(&r, i).unwrap_or(u64::MAX));
        let reconciled = client.service().reconcile().map_err(|e| format!("reconcile: {e:?}"))?;
        let charges = client.service().listCharges(0).map_err(|e| format!("listCharges: {e:?}"))?;
        let owners: BTreeMap<u64, i32> = charges.iter().map(|c| (c.inode as u64, c.ownerPid)).collect();
        let held: BTreeSet<u64> = ProcFs::new("/proc")
            .dmabufs(self.app.pid)
            .map_err(|e| format!("the app's dma-bufs: {e}"))?
            .into_iter()
            .map(|b| b.inode)
            .collect();
        let uncharged = held.iter().filter(|i| !owners.contains_key(i)).count();
        let elsewhere = held.iter().filter(|i| owners.get(i).is_some_and(|p| *p != self.app.pid as i32)).count();
        let dump = client.service().dumpState().map_err(|e| format!("dumpState: {e:?}"))?;
        let caught = dump.lines().find(|l| l.contains("buffers caught up")).unwrap_or("").trim().to_string();
        println!(
            "allocator outage ({what}): deadline {DEADLINE:?}; {deferred} charges deferred, {failed} allocations failed; \
             queue: {replayed} replayed, dropped {gone} freed meanwhile / {owner_gone} owner gone / {refused} refused / \
             {overflow} overflow, {pending} left; reconcile found {} unaccounted; the app holds {} buffers, {elsewhere} \
             charged to another process; catch-up: {caught}",
            reconciled.unaccountedInodes.len(),
            held.len()
        );
        println!(
            "allocator outage: {n} allocations, {stalled} stalled beyond the deadline, {uncharged} uncharged after catch-up, max stall {:.1} ms",
            max_us as f64 / 1000.0
        );
        Ok(uncharged == 0 && failed == 0 && n > 0)
    }
}

/// The C program (vts/cabi/tests/allocator.c, static) as the gralloc uid charging a real
/// dma-buf on behalf of an app.
fn c_allocator(env: &Env, client: &Client) -> Result<(), String> {
    let app = env.spawn(10502, None)?;
    let mut program = Command::new("ct-c-allocator")
        .args(["binder", &app.pid.to_string(), &(4u64 << 20).to_string(), &DEADLINE.as_millis().to_string()])
        .uid(AID_GRAPHICS)
        .gid(AID_GRAPHICS)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("ct-c-allocator: {e}"))?;
    let mut lines = BufReader::new(program.stdout.take().ok_or("stdout")?).lines();
    // It prints each step, then `ready inode N` once its charge is done (answered or replayed).
    let mut inode = -1i64;
    for line in lines.by_ref() {
        let line = line.map_err(|e| e.to_string())?;
        println!("c abi: {line}");
        if let Some(n) = line.strip_prefix("ready inode ") {
            inode = n.trim().parse().unwrap_or(-1);
            break;
        }
    }
    let charges = client.service().listCharges(0).map_err(|e| format!("listCharges: {e:?}"))?;
    let owner = charges.iter().find(|c| c.inode == inode).map(|c| (c.ownerPid, c.ownerCgroup.clone(), c.size));
    writeln!(program.stdin.as_mut().ok_or("stdin")?).map_err(|e| e.to_string())?;
    for line in lines {
        println!("c abi: {}", line.map_err(|e| e.to_string())?);
    }
    let status = program.wait().map_err(|e| e.to_string())?;
    println!("c abi: a C program as uid {AID_GRAPHICS} charged dma-buf {inode}: ledger owner {owner:?}, exit {status}");
    match owner {
        Some((pid, _, size)) if pid == app.pid as i32 && size == 4 << 20 && status.success() => Ok(()),
        _ => Err(format!("the C program's charge did not land on pid {}: {owner:?}, {status}", app.pid)),
    }
}

fn run_inner(opts: &crate::faults::Options) -> Result<bool, String> {
    let mut service = Service::new(opts);
    let mut client = service.start()?;
    let env = Env {
        exe: std::env::current_exe().map_err(|e| e.to_string())?,
        cgroup: CgroupFs::new(&opts.cgroup_root),
        rpc: None,
        binder: opts.binder.clone(),
        instance: chargetransfer::service::INSTANCE.to_string(),
        client: Client::connect_binder(opts.binder.as_deref(), Duration::from_secs(5)).map_err(|e| e.to_string())?,
        // The outage runs on the lanes without a loaded SELinux policy.
        selinux: false,
    };
    let mut rng = Rng::new(opts.seed);
    let mut ok = true;

    // 1. Restarted RESTARTS times under the allocator.
    let mut p = pair(&env, 10500)?;
    p.start()?;
    for _ in 0..RESTARTS {
        std::thread::sleep(rng.millis(200, 800));
        service.kill(None)?;
        if rng.percent() < 50 {
            std::thread::sleep(rng.millis(1, 300));
        }
        client = service.start()?;
    }
    std::thread::sleep(Duration::from_millis(500));
    ok &= p.finish(&client, &format!("service SIGKILLed and restarted {RESTARTS} times"))?;

    // 2. The service starts LATE_START after the allocator.
    let mut p = pair(&env, 10501)?;
    service.kill(None)?;
    p.start()?;
    std::thread::sleep(LATE_START);
    client = service.start()?;
    std::thread::sleep(Duration::from_secs(2));
    ok &= p.finish(&client, &format!("service started {LATE_START:?} after the allocator"))?;

    // 3. The C ABI with a real dma-buf.
    if let Err(e) = c_allocator(&env, &client) {
        println!("c abi: FAIL: {e}");
        ok = false;
    }
    service.kill(None)?;
    Ok(ok)
}

/// Runs the allocator outage phase; the process exit code.
pub fn run(opts: crate::faults::Options) -> i32 {
    match run_inner(&opts) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            println!("allocator outage: FAIL: {e}");
            1
        }
    }
}
