//! The fault run: the service SIGKILLed 100 times under load, misbehaving clients, and at the
//! end the ledger compared with the procfs truth.
//!
//! The orchestrator (root) supervises the service the way init does: it starts `chargetransferd`
//! with the suite's arguments (`CT_SERVICE_ARGS`), kills it at random moments, starts it again
//! at once and waits until it is registered. Meanwhile eight clients — an allocator, a
//! compositor and six apps (two uids with two processes each, two with one) — run a seeded
//! random workload: allocate and charge, charge on behalf, push, offer and accept, share, release,
//! close, exit and respawn; a payer closing a buffer it shared makes the handoff rule move the
//! charge on the kernel's fd events, racing the kills. Their calls fail while the service is gone; they reconnect and send
//! again (see `child`). One kill in five is a SIGTERM followed within 3 ms by the SIGKILL, so
//! that some land inside the shutdown compaction.
//!
//! The orchestrator models who holds which buffer for one reason: it only releases a charge
//! nobody else holds, so every buffer a client keeps stays charged. That is the invariant the end
//! checks, after one more kill during which clients die and free buffers: every dma-buf of a
//! policy heap a client holds is charged exactly once, every charge has a live holder, and every
//! cgroup's counters are the sum of the buffers charged below it (a replayed event applied twice
//! would show there even where the buffer list looks right).
//!
//! With the service stable and the workload still running, misbehaving clients come one at a
//! time — killed mid-call, flooding offers, flooding death tokens, occupying every binder thread —
//! and a probe client must be served throughout.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::OpenOptions;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chargetransfer::binder::aidl::vendor::chargetransfer::ErrorCode::ErrorCode;
use chargetransfer::client::Client;
use chargetransfer::kernel::cgroupfs::CgroupFs;
use chargetransfer::offers::MAX_OFFERS_PER_PROCESS;
use chargetransfer::policy::Policy;

use crate::harness::{Child, Env, Refusal, AID_GRAPHICS, AID_SYSTEM};
use crate::rng::Rng;
use crate::world::{Truth, Verdict};

const HEAP: &str = "system";
const PAGE: u64 = 4096;
/// Buffers one client keeps at most; past it, it closes or releases instead of allocating.
const MAX_HELD: usize = 10;
/// How long the service may take to register again after a start.
const START_WAIT: Duration = Duration::from_secs(30);
/// Threads of the client that occupies the service's binder threads: one more than the pool
/// (rsbinder's default of 15), so a call of the hog is always queued.
const HOG_THREADS: u64 = 16;
/// A probe round (three calls) while another client occupies every binder thread: generous for
/// a one-CPU emulated guest, far below "starved".
const HOG_BOUND: Duration = Duration::from_secs(15);

pub struct Options {
    pub kills: u32,
    pub seed: u64,
    /// The service binary and its arguments.
    pub service: Vec<String>,
    /// Where every instance of the service logs (appended).
    pub service_log: PathBuf,
    pub binder: Option<String>,
    pub cgroup_root: PathBuf,
    /// The whole run is abandoned (exit 3) after this long.
    pub budget: Duration,
}

impl Options {
    /// From the VTS binary's flags (`--kills`, `--seed`, `--service-log`, `--budget-secs`) and
    /// `CT_SERVICE_ARGS` (the service's arguments as the guest script passes them), with
    /// `CT_SERVICE_BIN` (default `chargetransferd`).
    pub fn from_args(args: &mut Vec<String>, binder: Option<String>, cgroup_root: PathBuf) -> Result<Options, String> {
        let mut take = |flag: &str| crate::take_flag(args, flag);
        let kills = take("--kills").map_or(Ok(100), |v| v.parse().map_err(|_| format!("--kills {v}")))?;
        let seed = take("--seed").map_or_else(
            || {
                Ok(std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64))
            },
            |v| v.parse().map_err(|_| format!("--seed {v}")),
        )?;
        let budget = take("--budget-secs").map_or(Ok(420), |v| v.parse().map_err(|_| format!("--budget-secs {v}")))?;
        let service_log = take("--service-log").map_or_else(|| PathBuf::from("faults-service.log"), PathBuf::from);
        let args = std::env::var("CT_SERVICE_ARGS")
            .map_err(|_| "CT_SERVICE_ARGS must hold the service's arguments".to_string())?;
        let mut service = vec![std::env::var("CT_SERVICE_BIN").unwrap_or_else(|_| "chargetransferd".into())];
        service.extend(args.split_whitespace().map(str::to_string));
        Ok(Options { kills, seed, service, service_log, binder, cgroup_root, budget: Duration::from_secs(budget) })
    }

    /// The heaps of the policy the service runs with: the dma-bufs the ledger is answerable for.
    fn policy_heaps(&self) -> Result<BTreeSet<String>, String> {
        let files: Vec<PathBuf> =
            self.service.windows(2).filter(|w| w[0] == "--policy").map(|w| PathBuf::from(&w[1])).collect();
        let policy = if files.is_empty() {
            Policy::embedded_default()
        } else {
            Policy::load(&files).map_err(|e| e.to_string())?
        };
        Ok(policy.heaps().iter().map(|h| h.name.clone()).collect())
    }
}

/// The service process, supervised as init would (also by the allocator outage run).
pub(crate) struct Service {
    cmd: Vec<String>,
    log: PathBuf,
    binder: Option<String>,
    process: Option<std::process::Child>,
    /// From the kill to the next successful ping.
    downtimes: Vec<Duration>,
}

impl Service {
    pub(crate) fn new(opts: &Options) -> Service {
        Service {
            cmd: opts.service.clone(),
            log: opts.service_log.clone(),
            binder: opts.binder.clone(),
            process: None,
            downtimes: Vec::new(),
        }
    }

    /// Starts an instance and waits until it answers a ping through the service manager.
    pub(crate) fn start(&mut self) -> Result<Client, String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let process = Command::new(&self.cmd[0])
            .args(&self.cmd[1..])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("start {}: {e}", self.cmd[0]))?;
        let process = self.process.insert(process);
        let deadline = Instant::now() + START_WAIT;
        loop {
            if let Ok(Some(status)) = process.try_wait() {
                return Err(format!("the service exited during start-up ({status}); see {}", self.log.display()));
            }
            if let Ok(client) = Client::connect_binder(self.binder.as_deref(), Duration::from_millis(100)) {
                if client.service().ping().is_ok() {
                    return Ok(client);
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("the service did not register within {START_WAIT:?}; see {}", self.log.display()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILLs the running instance, after a SIGTERM `term_first` earlier if given. True when
    /// the SIGKILL is what ended it (a SIGTERM may finish the shutdown first).
    pub(crate) fn kill(&mut self, term_first: Option<Duration>) -> Result<bool, String> {
        let mut process = self.process.take().ok_or("the service is not running")?;
        if let Some(delay) = term_first {
            let pid = rustix::process::Pid::from_raw(process.id() as i32).ok_or("pid")?;
            rustix::process::kill_process(pid, rustix::process::Signal::TERM).map_err(|e| format!("SIGTERM: {e}"))?;
            std::thread::sleep(delay);
        }
        let _ = process.kill();
        let status = process.wait().map_err(|e| e.to_string())?;
        Ok(status.signal() == Some(rustix::process::Signal::KILL.as_raw()))
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Role {
    Allocator,
    Compositor,
    App,
}

impl Role {
    fn cgroup(self) -> Option<&'static str> {
        (self == Role::Compositor).then_some("/system/surfaceflinger")
    }
}

/// One of the eight client seats; a respawn puts a new process in it.
struct Member {
    role: Role,
    uid: u32,
    child: Child,
    /// (slot in the child, inode) of every buffer it holds.
    held: Vec<(usize, u64)>,
}

#[derive(Default)]
struct Stats {
    ops: u64,
    refusals: BTreeMap<i32, u64>,
    /// Failures without a typed code after the child's reconnects, and harness failures.
    untyped: u64,
    first_untyped: Vec<String>,
    handoffs: u64,
    respawns: u64,
    /// Times a client reconnected after the service died under one of its calls.
    reconnects: u64,
}

struct Workload<'a> {
    env: &'a Env,
    members: Vec<Mutex<Member>>,
    /// inode → members holding it.
    holders: Mutex<HashMap<u64, BTreeSet<usize>>>,
    stats: Mutex<Stats>,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn field<T: std::str::FromStr>(r: &[String], i: usize) -> Result<T, String> {
    r.get(i).and_then(|v| v.parse().ok()).ok_or_else(|| format!("reply field {i} missing in {r:?}"))
}

impl<'a> Workload<'a> {
    fn new(env: &'a Env) -> Result<Workload<'a>, String> {
        let seats = [
            (Role::Allocator, AID_GRAPHICS),
            (Role::Compositor, AID_SYSTEM),
            (Role::App, 10100),
            (Role::App, 10100),
            (Role::App, 10101),
            (Role::App, 10101),
            (Role::App, 10102),
            (Role::App, 10103),
        ];
        let mut members = Vec::new();
        for (role, uid) in seats {
            let child = env.spawn(uid, role.cgroup())?;
            members.push(Mutex::new(Member { role, uid, child, held: Vec::new() }));
        }
        Ok(Workload { env, members, holders: Mutex::default(), stats: Mutex::default(), stop: AtomicBool::new(false) })
    }

    fn pids(&self) -> BTreeSet<u32> {
        self.members.iter().map(|m| lock(m).child.pid).collect()
    }

    /// Counts one command's outcome; the fields when it succeeded.
    fn outcome(&self, what: &str, r: Result<Vec<String>, Refusal>) -> Option<Vec<String>> {
        let mut stats = lock(&self.stats);
        stats.ops += 1;
        match r {
            Ok(fields) => Some(fields),
            Err(r) if r.code > 0 => {
                *stats.refusals.entry(r.code).or_default() += 1;
                None
            }
            Err(r) => {
                stats.untyped += 1;
                if stats.first_untyped.len() < 8 {
                    stats.first_untyped.push(format!("{what}: {}", r.message));
                }
                None
            }
        }
    }

    fn harness_failure(&self, what: String) {
        let mut stats = lock(&self.stats);
        stats.untyped += 1;
        if stats.first_untyped.len() < 8 {
            stats.first_untyped.push(what);
        }
    }

    fn hold(&self, inode: u64, member: usize) {
        lock(&self.holders).entry(inode).or_default().insert(member);
    }

    fn unhold(&self, inode: u64, member: usize) {
        let mut holders = lock(&self.holders);
        if let Some(set) = holders.get_mut(&inode) {
            set.remove(&member);
            if set.is_empty() {
                holders.remove(&inode);
            }
        }
    }

    fn holds(&self, inode: u64, member: usize) -> bool {
        lock(&self.holders).get(&inode).is_some_and(|s| s.contains(&member))
    }

    fn sole_holder(&self, inode: u64, member: usize) -> bool {
        lock(&self.holders).get(&inode).is_some_and(|s| s.len() == 1 && s.contains(&member))
    }

    /// Both seats locked, in index order so that two-party operations cannot deadlock.
    fn pair(&self, i: usize, j: usize) -> (MutexGuard<'_, Member>, MutexGuard<'_, Member>) {
        if i < j {
            let a = lock(&self.members[i]);
            (a, lock(&self.members[j]))
        } else {
            let b = lock(&self.members[j]);
            (lock(&self.members[i]), b)
        }
    }

    fn other(&self, i: usize, rng: &mut Rng, apps_only: bool) -> usize {
        loop {
            let j = rng.below(self.members.len() as u64) as usize;
            if j != i && (!apps_only || j >= 2) {
                return j;
            }
        }
    }

    /// Hands `slot` of `from` to `to` (as binder would), recording that `to` holds it.
    fn give(
        &self,
        from: &mut Member,
        slot: usize,
        inode: u64,
        to: &mut Member,
        to_index: usize,
    ) -> Result<usize, String> {
        let to_slot = from.child.give(slot, &mut to.child)?;
        to.held.push((to_slot, inode));
        self.hold(inode, to_index);
        lock(&self.stats).handoffs += 1;
        Ok(to_slot)
    }

    fn close(&self, m: &mut Member, i: usize, at: usize) {
        let (slot, inode) = m.held.swap_remove(at);
        self.outcome("close", m.child.cmd(&format!("close {slot}")));
        self.unhold(inode, i);
    }

    fn alloc_charge(&self, m: &mut Member, i: usize, rng: &mut Rng) -> Result<Option<(usize, u64)>, String> {
        let size = PAGE * (1 + rng.below(16));
        match self.outcome("alloc_charge", m.child.cmd(&format!("alloc_charge {HEAP} {size}"))) {
            Some(r) => {
                let (slot, inode) = (field(&r, 0)?, field(&r, 1)?);
                m.held.push((slot, inode));
                self.hold(inode, i);
                Ok(Some((slot, inode)))
            }
            None => Ok(None),
        }
    }

    /// The trusted allocator allocates, charges the app on its behalf, hands the buffer over and
    /// drops its own fd.
    fn charge_for(&self, i: usize, rng: &mut Rng) -> Result<(), String> {
        let j = self.other(i, rng, true);
        let (mut a, mut b) = self.pair(i, j);
        let size = PAGE * (1 + rng.below(16));
        let line = format!("alloc_charge_for {HEAP} {size} {}", b.child.pid);
        let Some(r) = self.outcome("alloc_charge_for", a.child.cmd(&line)) else { return Ok(()) };
        let (slot, inode) = (field(&r, 0)?, field(&r, 1)?);
        a.held.push((slot, inode));
        self.hold(inode, i);
        self.give(&mut a, slot, inode, &mut b, j)?;
        let at = a.held.len() - 1;
        self.close(&mut a, i, at);
        Ok(())
    }

    /// The compositor allocates and charges a buffer, hands it to an app and pushes the charge.
    fn push(&self, i: usize, rng: &mut Rng) -> Result<(), String> {
        let j = self.other(i, rng, true);
        let (mut a, mut b) = self.pair(i, j);
        let Some((slot, inode)) = self.alloc_charge(&mut a, i, rng)? else { return Ok(()) };
        self.give(&mut a, slot, inode, &mut b, j)?;
        self.outcome("transfer", a.child.cmd(&format!("transfer {slot} {}", b.child.pid)));
        if rng.percent() < 50 {
            let at = a.held.len() - 1;
            self.close(&mut a, i, at);
        }
        Ok(())
    }

    /// Offers a held buffer to another member, hands it over, and the receiver accepts.
    fn offer(&self, i: usize, rng: &mut Rng) -> Result<(), String> {
        let j = self.other(i, rng, false);
        let (mut a, mut b) = self.pair(i, j);
        let candidates: Vec<usize> = (0..a.held.len()).filter(|&k| !self.holds(a.held[k].1, j)).collect();
        let Some(&at) = candidates.get(rng.below(candidates.len() as u64) as usize) else { return Ok(()) };
        let (slot, inode) = a.held[at];
        let Some(r) = self.outcome("offer", a.child.cmd(&format!("offer {slot} {} 5000", b.child.pid))) else {
            return Ok(());
        };
        let ticket: i64 = field(&r, 0)?;
        let to_slot = self.give(&mut a, slot, inode, &mut b, j)?;
        self.outcome("accept", b.child.cmd(&format!("accept {ticket} {to_slot}")));
        if rng.percent() < 50 {
            self.close(&mut a, i, at);
        }
        Ok(())
    }

    /// Shares a held buffer with another member; the charge stays where it is.
    fn share(&self, i: usize, rng: &mut Rng) -> Result<(), String> {
        let j = self.other(i, rng, false);
        let (mut a, mut b) = self.pair(i, j);
        let candidates: Vec<usize> = (0..a.held.len()).filter(|&k| !self.holds(a.held[k].1, j)).collect();
        let Some(&at) = candidates.get(rng.below(candidates.len() as u64) as usize) else { return Ok(()) };
        let (slot, inode) = a.held[at];
        self.give(&mut a, slot, inode, &mut b, j)?;
        Ok(())
    }

    /// Closes a buffer only this member holds, then releases its charge (an owner cannot release
    /// a buffer it still holds). A refusal (not the owner, already released) is fine: closing
    /// then leaves a charge without a holder, which reconcile must clear.
    fn release_close(&self, i: usize, rng: &mut Rng) {
        let mut m = lock(&self.members[i]);
        let candidates: Vec<usize> = (0..m.held.len()).filter(|&k| self.sole_holder(m.held[k].1, i)).collect();
        let Some(&at) = candidates.get(rng.below(candidates.len() as u64) as usize) else { return };
        let line = format!("release {}", m.held[at].1);
        self.close(&mut m, i, at);
        self.outcome("release", m.child.cmd(&line));
    }

    fn close_any(&self, i: usize, rng: &mut Rng) {
        let mut m = lock(&self.members[i]);
        if !m.held.is_empty() {
            let at = rng.below(m.held.len() as u64) as usize;
            self.close(&mut m, i, at);
        }
    }

    /// The member's process exits (cleanly or SIGKILLed) and a new one of the same uid takes
    /// its seat, with a death token half the time.
    fn respawn(&self, i: usize, rng: &mut Rng) -> Result<(), String> {
        let mut m = lock(&self.members[i]);
        let fresh = self.env.spawn(m.uid, m.role.cgroup())?;
        let mut old = std::mem::replace(&mut m.child, fresh);
        self.count_reconnects(&mut old);
        for (_, inode) in std::mem::take(&mut m.held) {
            self.unhold(inode, i);
        }
        let cgroup = old.cgroup.clone();
        if rng.percent() < 50 {
            old.exit();
        } else {
            old.kill();
        }
        if m.role.cgroup().is_none() {
            // An emptied per-process cgroup goes, as on Android: reconcile reparents its charges.
            let _ = self.env.cgroup.remove(&cgroup);
        }
        if rng.percent() < 50 {
            self.outcome("register", m.child.cmd("register"));
        }
        lock(&self.stats).respawns += 1;
        Ok(())
    }

    fn count_reconnects(&self, child: &mut Child) {
        if let Ok(r) = child.cmd("stats") {
            lock(&self.stats).reconnects += field::<u64>(&r, 0).unwrap_or(0);
        }
    }

    fn step(&self, i: usize, rng: &mut Rng) -> Result<(), String> {
        let role = lock(&self.members[i]).role;
        let full = lock(&self.members[i]).held.len() >= MAX_HELD;
        let p = rng.percent();
        match role {
            Role::Allocator => match p {
                0..=79 => self.charge_for(i, rng)?,
                80..=97 => {
                    let mut m = lock(&self.members[i]);
                    self.outcome("ping", m.child.cmd("ping"));
                }
                _ => self.respawn(i, rng)?,
            },
            Role::Compositor | Role::App => match p {
                0..=29 if !full => {
                    if role == Role::Compositor {
                        self.push(i, rng)?;
                    } else {
                        let mut m = lock(&self.members[i]);
                        self.alloc_charge(&mut m, i, rng)?;
                    }
                }
                0..=44 => self.offer(i, rng)?,
                45..=54 => self.share(i, rng)?,
                55..=71 => self.release_close(i, rng),
                72..=88 => self.close_any(i, rng),
                89..=97 => {
                    let mut m = lock(&self.members[i]);
                    self.outcome("ping", m.child.cmd("ping"));
                }
                _ => self.respawn(i, rng)?,
            },
        }
        Ok(())
    }

    fn run_member(&self, i: usize, seed: u64) {
        let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0x5851_f42d_4c95_7f2d));
        while !self.stop.load(Ordering::Relaxed) {
            if let Err(e) = self.step(i, &mut rng) {
                self.harness_failure(format!("member {i}: {e}"));
            }
            // A child that died under us (it should not) is replaced, so the seat keeps working.
            let dead = lock(&self.members[i]).child.exited();
            if dead {
                self.harness_failure(format!("member {i}: child exited on its own"));
                if let Err(e) = self.respawn(i, &mut rng) {
                    self.harness_failure(format!("member {i}: respawn: {e}"));
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

fn compare(client: &Client, heaps: &BTreeSet<String>, clients: &BTreeSet<u32>) -> Result<Verdict, String> {
    Truth::take(client, heaps)?.verdict(client, Some(clients))
}

/// A well-behaved client's round: ping, allocate and charge, close, release. Its duration.
fn probe(child: &mut Child) -> Result<Duration, String> {
    let t = Instant::now();
    child.ok("ping")?;
    let r = child.ok(&format!("alloc_charge {HEAP} {PAGE}"))?;
    let (slot, inode): (usize, u64) = (field(&r, 0)?, field(&r, 1)?);
    child.ok(&format!("close {slot}"))?;
    child.ok(&format!("release {inode}"))?;
    Ok(t.elapsed())
}

fn charged(client: &Client, inode: u64) -> Result<bool, String> {
    let all = client.service().listCharges(0).map_err(|e| format!("listCharges: {e:?}"))?;
    Ok(all.iter().any(|c| c.inode as u64 == inode))
}

/// Typed-flood reply: (accepted, typed refusals, untyped failures, first refusal code).
fn flood_counts(r: &[String]) -> Result<(u64, u64, u64, i32), String> {
    Ok((field(r, 0)?, field(r, 1)?, field(r, 2)?, field(r, 3)?))
}

/// Each misbehaving client in turn, with the workload running and a probe that must be served.
fn misbehave(env: &Env, client: &Client, rng: &mut Rng) -> Result<Vec<String>, String> {
    let mut report = Vec::new();
    let mut probe_child = env.spawn(10300, None)?;
    let mut slowest = Duration::ZERO;

    // Killed mid-call: a client charging in a loop is SIGKILLed; its charge must go.
    for _ in 0..10 {
        let mut victim = env.spawn(10400, None)?;
        let (slot, inode) = {
            let r = victim.ok(&format!("alloc_charge {HEAP} {PAGE}"))?;
            (field::<usize>(&r, 0)?, field::<u64>(&r, 1)?)
        };
        victim.send(&format!("spam_charge {slot} 1000000")).map_err(|r| r.message)?;
        std::thread::sleep(rng.millis(5, 60));
        let pid = victim.kill();
        slowest = slowest.max(probe(&mut probe_child)?);
        crate::cases::eventually(
            || Ok(!charged(client, inode)?),
            &format!("charge of pid {pid}, killed mid-call, released"),
        )?;
    }
    report.push(format!("10 clients SIGKILLed mid-call: charges released, probe served (slowest round {slowest:?})"));

    // Offer flood: the per-process cap refuses with a typed code and the table stops growing.
    let mut flooder = env.spawn(10401, None)?;
    let r = flooder.ok(&format!("alloc_charge {HEAP} {PAGE}"))?;
    let slot: usize = field(&r, 0)?;
    let n = 2000;
    flooder.send(&format!("offer_flood {slot} {} {n} 60000", probe_child.pid)).map_err(|r| r.message)?;
    let during = probe(&mut probe_child)?;
    let (ok, typed, untyped, code) = flood_counts(&flooder.reply("offer_flood").map_err(|r| r.message)?)?;
    let dump = client.service().dumpState().map_err(|e| format!("dumpState: {e:?}"))?;
    let open: usize = dump
        .split(" open offers")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX);
    crate::cases::check(
        ok == MAX_OFFERS_PER_PROCESS as u64 && typed == n - ok && untyped == 0 && code == ErrorCode::INVALID_ARGUMENT.0,
        || {
            format!("offer flood of {n}: {ok} accepted, {typed} refused (code {code}), {untyped} untyped; cap is {MAX_OFFERS_PER_PROCESS}")
        },
    )?;
    crate::cases::check(open < MAX_OFFERS_PER_PROCESS + 64, || format!("{open} open offers after the flood"))?;
    report.push(format!("offer flood of {n}: {ok} open, {typed} refused INVALID_ARGUMENT, {open} offers open in all, probe served in {during:?}"));
    flooder.kill();

    // Death-token flood: a per-process cap, typed refusals.
    let mut registrar = env.spawn(10402, None)?;
    let n = 3000;
    registrar.send(&format!("register_flood {n}")).map_err(|r| r.message)?;
    let during = probe(&mut probe_child)?;
    let (ok, typed, untyped, code) = flood_counts(&registrar.reply("register_flood").map_err(|r| r.message)?)?;
    crate::cases::check(ok < 100 && typed == n - ok && untyped == 0 && code == ErrorCode::INVALID_ARGUMENT.0, || {
        format!("token flood of {n}: {ok} accepted, {typed} refused (code {code}), {untyped} untyped")
    })?;
    report.push(format!(
        "death-token flood of {n}: {ok} registered, {typed} refused INVALID_ARGUMENT, probe served in {during:?}"
    ));
    registrar.kill();

    // Binder threads held: HOG_THREADS threads calling back to back; the probe still gets
    // through. Then a second hog is SIGKILLed with its calls in flight.
    let mut hog = env.spawn(10403, None)?;
    hog.send(&format!("hog {HOG_THREADS} 3000")).map_err(|r| r.message)?;
    let (mut rounds, mut slowest) = (0, Duration::ZERO);
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        slowest = slowest.max(probe(&mut probe_child)?);
        rounds += 1;
    }
    let r = hog.reply("hog").map_err(|r| r.message)?;
    let (calls, failures): (u64, u64) = (field(&r, 0)?, field(&r, 1)?);
    crate::cases::check(failures == 0, || format!("the hog's own calls failed {failures} times"))?;
    // Binder queues calls first come, first served: the probe waits behind the hog's queued
    // calls (the service has fewer threads than the hog), not behind the hog as a whole.
    let hog_call = Duration::from_millis(3000 * HOG_THREADS / calls.max(1));
    crate::cases::check(rounds > 0 && slowest < HOG_BOUND, || {
        format!("probe: {rounds} rounds, slowest {slowest:?} (a hog call takes {hog_call:?})")
    })?;
    hog.send(&format!("hog {HOG_THREADS} 10000")).map_err(|r| r.message)?;
    std::thread::sleep(Duration::from_millis(500));
    hog.kill();
    slowest = slowest.max(probe(&mut probe_child)?);
    report.push(format!(
        "{HOG_THREADS} threads holding every binder thread ({calls} dumpState calls in 3 s, {hog_call:?} each; then SIGKILLed mid-call): probe served {rounds}× (slowest round {slowest:?})"
    ));
    Ok(report)
}

/// Re-checks that moved charges, and the charges they moved, as the services' log says (every
/// start of the service appends to it): the handoffs of the workload's shared-then-closed
/// buffers that the kernel's events drove, between kills.
fn handoffs_by_events(log: &std::path::Path) -> (usize, usize) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once("handoff events: moved [").map(|(_, rest)| rest))
        .fold((0, 0), |(batches, moved), rest| (batches + 1, moved + rest.split(',').count()))
}

/// Runs the fault phase; the process exit code (0 only when every check held).
pub fn run(opts: Options) -> i32 {
    let budget = opts.budget;
    std::thread::spawn(move || {
        std::thread::sleep(budget);
        eprintln!("faults: FAIL: the run did not finish within {budget:?}");
        std::process::exit(3);
    });
    match run_inner(&opts) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            println!("faults: FAIL: {e}");
            1
        }
    }
}

fn run_inner(opts: &Options) -> Result<bool, String> {
    let started = Instant::now();
    let heaps = opts.policy_heaps()?;
    println!("faults: seed {}, {} kills, service: {}", opts.seed, opts.kills, opts.service.join(" "));
    let mut service = Service {
        cmd: opts.service.clone(),
        log: opts.service_log.clone(),
        binder: opts.binder.clone(),
        process: None,
        downtimes: Vec::new(),
    };
    let mut client = service.start()?;
    let env = Env {
        exe: std::env::current_exe().map_err(|e| e.to_string())?,
        cgroup: CgroupFs::new(&opts.cgroup_root),
        rpc: None,
        binder: opts.binder.clone(),
        instance: chargetransfer::service::INSTANCE.to_string(),
        client: Client::connect_binder(opts.binder.as_deref(), Duration::from_secs(5)).map_err(|e| e.to_string())?,
        selinux: false,
    };
    let workload = Workload::new(&env)?;
    let mut rng = Rng::new(opts.seed);
    let (mut sigkills, mut in_shutdown, mut graceful) = (0u32, 0u32, 0u32);
    let mut misbehaviour = Vec::new();
    let mut kill_phase = Duration::ZERO;

    let phase: Result<(), String> = std::thread::scope(|s| {
        for i in 0..workload.members.len() {
            let (w, seed) = (&workload, opts.seed);
            s.spawn(move || w.run_member(i, seed));
        }
        let result = (|| {
            let mut reported = 0;
            while sigkills < opts.kills {
                std::thread::sleep(rng.millis(50, 1000));
                let term_first = (rng.percent() < 20).then(|| Duration::from_micros(rng.below(3000)));
                let t = Instant::now();
                if service.kill(term_first)? {
                    sigkills += 1;
                    in_shutdown += u32::from(term_first.is_some());
                } else {
                    graceful += 1;
                }
                if rng.percent() < 30 {
                    // init's restart delay: clients die and free buffers while nobody watches.
                    std::thread::sleep(rng.millis(1, 300));
                }
                client = service.start()?;
                service.downtimes.push(t.elapsed());
                if sigkills % 20 == 0 && sigkills != reported {
                    reported = sigkills;
                    let ops = lock(&workload.stats).ops;
                    println!(
                        "faults: {sigkills}/{} kills, {ops} ops, {:.0} s",
                        opts.kills,
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            kill_phase = started.elapsed();
            misbehaviour = misbehave(&env, &client, &mut rng)?;
            Ok(())
        })();
        workload.stop.store(true, Ordering::Relaxed);
        result
    });
    phase?;

    // The last kill: while the service is down, two apps die and another frees all it holds.
    // Their seats are refilled once it is back.
    service.kill(None)?;
    let died = [6, 7];
    for i in died {
        let mut m = lock(&workload.members[i]);
        for (_, inode) in std::mem::take(&mut m.held) {
            workload.unhold(inode, i);
        }
        workload.count_reconnects(&mut m.child);
        m.child.sigkill();
    }
    {
        let mut m = lock(&workload.members[2]);
        while !m.held.is_empty() {
            workload.close(&mut m, 2, 0);
        }
    }
    let t = Instant::now();
    client = service.start()?;
    service.downtimes.push(t.elapsed());
    for i in died {
        let mut m = lock(&workload.members[i]);
        m.child = env.spawn(m.uid, None)?;
    }
    let clients = workload.pids();
    let before = compare(&client, &heaps, &clients)?;
    let reconciled = client.service().reconcile().map_err(|e| format!("reconcile: {e:?}"))?;
    let after = compare(&client, &heaps, &clients)?;

    for m in &workload.members {
        workload.count_reconnects(&mut lock(m).child);
    }
    let stats = lock(&workload.stats);
    let downtimes = &service.downtimes;
    let mean = downtimes.iter().sum::<Duration>() / downtimes.len().max(1) as u32;
    let worst = downtimes.iter().max().copied().unwrap_or_default();
    println!(
        "faults: kill phase {:.0} s: {sigkills} SIGKILLs ({in_shutdown} during shutdown compaction), {graceful} graceful exits; down {:?} on average, {:?} at worst",
        kill_phase.as_secs_f64(),
        mean,
        worst
    );
    println!(
        "faults: workload: {} ops, {} handoffs, {} respawns, {} client reconnects, refusals by code {:?}",
        stats.ops, stats.handoffs, stats.respawns, stats.reconnects, stats.refusals
    );
    let (batches, moved) = handoffs_by_events(&opts.service_log);
    println!(
        "faults: handoff rule on the kernel's fd events: {moved} charges moved in {batches} re-checks (service log)"
    );
    for line in &misbehaviour {
        println!("faults: {line}");
    }
    println!("faults: after the final restart (start-up reconcile): {}", before.describe());
    println!(
        "faults: reconcile released {}, moved {}, {} unaccounted; then {}",
        reconciled.releasedInodes.len(),
        reconciled.movedInodes.len(),
        reconciled.unaccountedInodes.len(),
        after.describe()
    );
    if stats.untyped > 0 {
        println!("faults: {} calls failed without a typed code: {:?}", stats.untyped, stats.first_untyped);
    }
    let equal = after.ok() && before.ok();
    println!(
        "faults: {sigkills} service kills, {} clients, {} ops, {} live charges, ledger {} procfs, {} lost, {} duplicated",
        workload.members.len(),
        stats.ops,
        after.charges,
        if equal { "==" } else { "!=" },
        after.lost.len().max(before.lost.len()),
        after.duplicated.len().max(before.duplicated.len())
    );
    println!("faults: {:.0} s in all", started.elapsed().as_secs_f64());
    drop(stats);
    service.kill(None)?;
    let untyped = lock(&workload.stats).untyped;
    Ok(equal && untyped == 0 && sigkills == opts.kills)
}
