//! The accountant: every operation of the service in plain Rust types, with trust and identity
//! checks, on top of the ledger. It knows nothing of binder; `service` translates.
//!
//! One mutex guards the ledger, the journal and the open offers together, so the journal's
//! order is the order in which changes were applied, and each change is durable before the
//! caller hears it succeeded.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::error::{Error, Result};
use crate::journal::{Durability, Journal};
use crate::kernel::cgroupfs::{CgroupFs, DmemFile};
use crate::kernel::dmabuf::DmaBufInfo;
use crate::kernel::procfs::ProcFs;
use crate::ledger::{BufferInfo, Counter, Event, Inode, Ledger, LedgerError, MEMCG_POOL};
use crate::owner::{Caller, Process, Processes};
use crate::policy::{Policy, TrustRule};
use crate::transfer::Tickets;

/// Where the accountant finds the system and keeps its state.
#[derive(Clone, Debug)]
pub struct Config {
    pub proc_root: PathBuf,
    /// cgroup v2 mount; `None` where there is none (the ledger then enforces everything).
    pub cgroup_root: Option<PathBuf>,
    /// Journal directory; `None` keeps the ledger in memory only (tests, demo).
    pub state_dir: Option<PathBuf>,
    pub durability: Durability,
    /// Pin processes with pidfds (only meaningful against the real /proc).
    pub pidfds: bool,
}

/// Usage of a process, uid or cgroup.
#[derive(Clone, Debug, PartialEq)]
pub struct Usage {
    pub cgroup: String,
    pub pools: Vec<PoolUsage>,
    pub buffer_count: usize,
    pub buffer_bytes: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PoolUsage {
    pub pool: String,
    pub counter: Counter,
    /// memory.current / dmem.current as the kernel reports them, when readable.
    pub kernel_usage: Option<u64>,
}

/// What a reconcile pass found and repaired.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReconcileReport {
    pub released: Vec<Inode>,
    pub moved: Vec<Inode>,
    pub unaccounted: Vec<Inode>,
    pub unaccounted_bytes: u64,
    pub migrated: Vec<u32>,
    pub reparented: Vec<String>,
    pub processes_scanned: usize,
    pub buffers_seen: usize,
}

/// One pool as autoconfig found it: what feeds it and who enforces its limits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionSummary {
    pub name: String,
    pub class: String,
    pub capacity: u64,
    pub heaps: Vec<String>,
    /// "kernel", "service" or "nobody".
    pub enforced_by: String,
    pub why: String,
}

struct State {
    ledger: Ledger,
    journal: Option<Journal>,
    tickets: Tickets,
    /// Processes owning charges, as resolved when they got them.
    owners: HashMap<u32, Process>,
    /// Where the kernel itself charged a buffer (the allocating process's cgroup), for heaps
    /// the kernel accounts: shown beside the ledger's owner so the gap is visible.
    kernel_payer: HashMap<Inode, String>,
}

pub struct Accountant {
    policy: Policy,
    processes: Processes,
    cgroupfs: Option<CgroupFs>,
    state: Mutex<State>,
    /// The last autoconfig result, per pool.
    regions: Mutex<Vec<RegionSummary>>,
    /// Runs autoconfig when a charge meets an owner cgroup it has not configured yet.
    new_owner_hook: std::sync::OnceLock<NewOwnerHook>,
    /// Top-level owner cgroups (`/uid_<uid>`, `/system`) the hook has run for.
    configured: Mutex<BTreeSet<String>>,
    /// Which trusted list decides; set once at start from the kernel (uids until then).
    trust_rule: std::sync::OnceLock<TrustRule>,
}

/// Called with the accountant when an owner cgroup shows up that autoconfig has not seen.
pub type NewOwnerHook = Box<dyn Fn(&Accountant) + Send + Sync>;

/// The owner-level cgroup limits are set on: the first component (`/uid_10001/pid_5` →
/// `/uid_10001`).
fn owner_level(cgroup: &str) -> &str {
    match cgroup[1..].find('/') {
        Some(i) => &cgroup[..i + 1],
        None => cgroup,
    }
}

/// Android's per-app cgroup of a uid.
pub fn uid_cgroup(uid: u32) -> String {
    format!("/uid_{uid}")
}

impl Accountant {
    /// Loads the journal (if any), then declares the policy's heaps.
    pub fn open(config: Config, policy: Policy) -> Result<Accountant> {
        let (ledger, journal) = match &config.state_dir {
            Some(dir) => {
                let (journal, ledger, report) = Journal::open(dir, config.durability)
                    .map_err(|e| Error::Internal(format!("journal in {}: {e}", dir.display())))?;
                info!("journal {}: {report:?}", dir.display());
                (ledger, Some(journal))
            }
            None => (Ledger::new(), None),
        };
        let accountant = Accountant {
            policy,
            processes: Processes::new(ProcFs::new(&config.proc_root), config.pidfds),
            cgroupfs: config.cgroup_root.as_ref().map(CgroupFs::new),
            state: Mutex::new(State {
                ledger,
                journal,
                tickets: Tickets::default(),
                owners: HashMap::new(),
                kernel_payer: HashMap::new(),
            }),
            regions: Mutex::new(Vec::new()),
            new_owner_hook: std::sync::OnceLock::new(),
            configured: Mutex::new(BTreeSet::new()),
            trust_rule: std::sync::OnceLock::new(),
        };
        accountant.declare_heaps()?;
        accountant.adopt_owners();
        Ok(accountant)
    }

    pub fn set_new_owner_hook(&self, hook: NewOwnerHook) {
        let _ = self.new_owner_hook.set(hook);
    }

    /// Sets the trust rule the kernel calls for ([`TrustRule::with_selinux`]); the first call
    /// wins, so the rule cannot change while the service runs.
    pub fn set_trust_rule(&self, rule: TrustRule) {
        let _ = self.trust_rule.set(rule);
    }

    pub fn trust_rule(&self) -> TrustRule {
        self.trust_rule.get().copied().unwrap_or(TrustRule::Uids)
    }

    /// Makes sure the owner's cgroup has its class limits before it is charged.
    fn prepare_owner(&self, owner: &Process) {
        let Some(hook) = self.new_owner_hook.get() else { return };
        let level = owner_level(&owner.cgroup).to_string();
        if self.configured.lock().unwrap_or_else(|p| p.into_inner()).insert(level) {
            hook(self);
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn processes(&self) -> &Processes {
        &self.processes
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic on another binder thread must not take the service down with it: the ledger
        // is only changed through `apply`, which either completes or leaves it untouched.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn declare_heaps(&self) -> Result<()> {
        let mut state = self.lock();
        let mut events = Vec::new();
        for (spec, enforce) in self.policy.heap_specs() {
            if let Some(region) = &spec.region {
                if state.ledger.pool_id(region).is_none() {
                    events.push(state.ledger.add_region(region, 0)?);
                }
            }
            if state.ledger.heap(&spec.name) != Some((&spec, enforce)) {
                events.push(state.ledger.add_heap(spec, enforce)?);
            }
        }
        journal(&mut state, &events)
    }

    /// After a restart, owners recorded in the journal are looked up again; the dead ones are
    /// handled by the next reconcile.
    fn adopt_owners(&self) {
        let pids = self.lock().ledger.owner_pids();
        for pid in pids.into_iter().filter(|p| *p != 0) {
            if let Ok(process) = self.processes.resolve(pid) {
                self.lock().owners.insert(pid, process);
            }
        }
    }

    fn track(state: &mut State, process: Process) {
        state.owners.insert(process.pid, process);
    }

    /// Runs `f` with the ledger locked; `f` pushes each event it applies. They are journaled
    /// before returning — also when `f` fails part-way, since what it applied stays applied
    /// (otherwise a restart would replay a ledger the service never had).
    fn change<T>(&self, f: impl FnOnce(&mut State, &mut Vec<Event>) -> Result<T>) -> Result<T> {
        let mut state = self.lock();
        let mut events = Vec::new();
        let result = f(&mut state, &mut events);
        journal(&mut state, &events)?;
        result
    }

    /// Whether the caller may act for others: the policy's rule under the kernel's trust rule.
    pub fn is_trusted(&self, caller: &Caller) -> bool {
        self.policy.trusts(self.trust_rule(), caller.uid, caller.context.as_deref())
    }

    fn require_trusted(&self, caller: &Caller, what: &'static str) -> Result<()> {
        if self.is_trusted(caller) {
            Ok(())
        } else {
            Err(Error::NotTrusted { uid: caller.uid, pid: caller.pid, what })
        }
    }

    /// If a process moved to another cgroup since it was last seen, its charges follow it.
    fn follow_migration(state: &mut State, process: &Process, events: &mut Vec<Event>) -> Result<()> {
        let moved = state
            .owners
            .get(&process.pid)
            .is_some_and(|known| known.start_time == process.start_time && known.cgroup != process.cgroup);
        if moved {
            events.push(state.ledger.migrate(process.pid, &process.cgroup)?);
        }
        Ok(())
    }

    fn heap_of(&self, state: &State, buffer: &DmaBufInfo) -> Result<String> {
        match state.ledger.heap(&buffer.exporter) {
            Some(_) => Ok(buffer.exporter.clone()),
            None => Err(Error::UnknownHeap(buffer.exporter.clone())),
        }
    }

    /// Charges `buffer` to the caller, or with `on_behalf` to another live process (trusted
    /// callers only). Charging the same owner twice is a no-op.
    pub fn charge(&self, caller: &Caller, buffer: &DmaBufInfo, on_behalf: Option<u32>) -> Result<BufferInfo> {
        let caller_proc = self.processes.resolve_caller(caller)?;
        let owner = match on_behalf {
            Some(pid) if pid != caller.pid => {
                self.require_trusted(caller, "charge on behalf of another process")?;
                self.processes.resolve(pid)?
            }
            _ => caller_proc.clone(),
        };
        if buffer.size == 0 {
            return Err(Error::InvalidArgument(format!("buffer {} has size 0", buffer.inode)));
        }
        self.prepare_owner(&owner);
        self.change(|state, events| {
            let heap = self.heap_of(state, buffer)?;
            Self::follow_migration(state, &owner, events)?;
            let kernel_charged = self.policy.kernel_charges_heap(&heap);
            if kernel_charged
                && !in_subtree(&caller_proc.cgroup, owner_level(&owner.cgroup))
                && state.ledger.buffer(buffer.inode).is_none()
            {
                self.check_kernel_budget(state, &owner, buffer.size)?;
            }
            match state.ledger.charge(buffer.inode, buffer.size, &heap, owner.pid, &owner.cgroup) {
                Ok(e) => events.push(e),
                Err(LedgerError::AlreadyCharged { pid, .. }) if pid == owner.pid => {}
                Err(e) => return Err(e.into()),
            }
            if kernel_charged {
                state.kernel_payer.entry(buffer.inode).or_insert_with(|| caller_proc.cgroup.clone());
            }
            Self::track(state, owner);
            Ok(state.ledger.buffer(buffer.inode).expect("just charged"))
        })
    }

    /// Where the kernel charges a heap to memcg (mem_accounting), it charges the *allocating*
    /// process: a buffer made on an app's behalf, or pushed to it, sits in another cgroup's
    /// memory.current and the app's memory.max cannot see it. The service enforces that limit for
    /// those bytes: the app's kernel usage, plus what it pays for but the kernel counts
    /// elsewhere, plus `size`, must fit its owner-level memory.max.
    fn check_kernel_budget(&self, state: &State, owner: &Process, size: u64) -> Result<()> {
        let Some(fs) = &self.cgroupfs else { return Ok(()) };
        let level = owner_level(&owner.cgroup);
        let max = fs.read_memory_limit(level, crate::ledger::LimitKind::Max).unwrap_or(crate::ledger::UNLIMITED);
        if max == crate::ledger::UNLIMITED {
            return Ok(());
        }
        let current = fs.memory_current(level).unwrap_or(0);
        let elsewhere: u64 = state
            .kernel_payer
            .iter()
            .filter(|(_, payer)| !in_subtree(payer, level))
            .filter_map(|(inode, _)| state.ledger.buffer(*inode))
            .filter(|b| in_subtree(&b.cgroup, level))
            .fold(0u64, |sum, b| sum.saturating_add(b.size));
        let usage = current.saturating_add(elsewhere);
        if usage.saturating_add(size) > max {
            return Err(LedgerError::OverLimit {
                cgroup: owner.cgroup.clone(),
                limit_cgroup: level.to_string(),
                pool: "memory (kernel-charged to the allocator)".into(),
                size,
                usage,
                max,
            }
            .into());
        }
        Ok(())
    }

    /// [`Self::check_kernel_budget`] for a buffer changing hands: needed when the kernel counts
    /// it outside the receiver's owner-level cgroup and the ledger did not already count it there.
    fn check_kernel_budget_on_move(&self, state: &State, inode: Inode, from: &str, to: &Process) -> Result<()> {
        let level = owner_level(&to.cgroup);
        let misattributed = state.kernel_payer.get(&inode).is_some_and(|payer| !in_subtree(payer, level));
        if misattributed && !in_subtree(from, level) {
            let size = state.ledger.buffer(inode).map_or(0, |b| b.size);
            self.check_kernel_budget(state, to, size)?;
        }
        Ok(())
    }

    /// Releases a charge: its owner, or a trusted caller.
    pub fn release(&self, caller: &Caller, inode: Inode) -> Result<()> {
        self.change(|state, events| {
            let b = state.ledger.buffer(inode).ok_or(LedgerError::UnknownBuffer(inode))?;
            if b.pid != caller.pid && !self.is_trusted(caller) {
                return Err(Error::NotOwner { caller: caller.pid, inode, owner: b.pid });
            }
            events.push(state.ledger.release(inode)?);
            state.tickets.forget_buffer(inode);
            state.kernel_payer.remove(&inode);
            Ok(())
        })
    }

    /// Trusted push: the caller presented the buffer (so it holds it) and is a trusted
    /// allocator or compositor; the charge moves to `to_pid`, which must be alive.
    pub fn transfer(&self, caller: &Caller, buffer: &DmaBufInfo, to_pid: u32) -> Result<BufferInfo> {
        self.require_trusted(caller, "push a charge to another process")?;
        self.processes.resolve_caller(caller)?;
        let to = self.processes.resolve(to_pid)?;
        self.prepare_owner(&to);
        self.change(|state, events| {
            Self::follow_migration(state, &to, events)?;
            let current = state.ledger.buffer(buffer.inode).ok_or(LedgerError::UnknownBuffer(buffer.inode))?;
            if current.pid != to.pid || current.cgroup != to.cgroup {
                self.check_kernel_budget_on_move(state, buffer.inode, &current.cgroup, &to)?;
                events.push(state.ledger.transfer(buffer.inode, to.pid, &to.cgroup)?);
            }
            state.tickets.forget_buffer(buffer.inode);
            Self::track(state, to);
            Ok(state.ledger.buffer(buffer.inode).expect("charged"))
        })
    }

    /// The owner offers its charge for `buffer` to `to_pid`; returns the ticket.
    pub fn offer(&self, caller: &Caller, buffer: &DmaBufInfo, to_pid: u32, ttl: Duration) -> Result<u64> {
        if to_pid == caller.pid {
            return Err(Error::InvalidArgument("cannot offer a buffer to yourself".into()));
        }
        self.processes.resolve_caller(caller)?;
        let to = self.processes.peek(to_pid)?;
        let mut state = self.lock();
        let b = state.ledger.buffer(buffer.inode).ok_or(LedgerError::UnknownBuffer(buffer.inode))?;
        if b.pid != caller.pid {
            return Err(Error::NotOwner { caller: caller.pid, inode: buffer.inode, owner: b.pid });
        }
        state.tickets.offer(buffer.inode, caller.pid, to, ttl, Instant::now())
    }

    /// The receiver redeems a ticket with the buffer fd it received. If it already pays for the
    /// buffer, nothing changes (no double charge).
    pub fn accept(&self, caller: &Caller, ticket: u64, buffer: &DmaBufInfo) -> Result<BufferInfo> {
        let receiver = self.processes.resolve_caller(caller)?;
        self.prepare_owner(&receiver);
        self.change(|state, events| {
            let offer = state.tickets.check(ticket, &receiver, buffer.inode, Instant::now())?;
            let current = state.ledger.buffer(buffer.inode).ok_or(LedgerError::UnknownBuffer(buffer.inode))?;
            if current.pid != offer.from_pid && current.pid != receiver.pid {
                state.tickets.consume(ticket);
                return Err(Error::BadTicket { ticket, reason: "the charge changed hands since the offer" });
            }
            Self::follow_migration(state, &receiver, events)?;
            if current.pid != receiver.pid || current.cgroup != receiver.cgroup {
                self.check_kernel_budget_on_move(state, buffer.inode, &current.cgroup, &receiver)?;
                events.push(state.ledger.transfer(buffer.inode, receiver.pid, &receiver.cgroup)?);
            }
            state.tickets.consume(ticket);
            Self::track(state, receiver);
            Ok(state.ledger.buffer(buffer.inode).expect("charged"))
        })
    }

    /// The documented handoff rule when an owner is gone but the buffer lives on:
    /// 1. another live process of the same uid that holds it becomes the owner (same app,
    ///    same budget; lowest pid for determinism);
    /// 2. otherwise the charge moves to the parent of the dead owner's cgroup (pid_X → uid_X),
    ///    as the kernel reparents, with no owning process: the app's family keeps paying and no
    ///    other app is charged without consent; it stays there until a process of that uid
    ///    holds the buffer again (rule 1);
    /// 3. once no process holds the buffer, it is released (by reconcile).
    fn hand_over(
        &self,
        state: &mut State,
        inode: Inode,
        dead_uid: Option<u32>,
        holders: &BTreeSet<u32>,
    ) -> Result<Option<Event>> {
        let b = state.ledger.buffer(inode).ok_or(LedgerError::UnknownBuffer(inode))?;
        for &pid in holders {
            if pid == b.pid {
                continue;
            }
            let Ok(p) = self.processes.resolve(pid) else { continue };
            if Some(p.uid) == dead_uid {
                // Same app: it pays even over its limit (the excess shows in max_events). A
                // holder in a cgroup the ledger cannot represent (a name with a space) cannot
                // pay: the next holder, or the parent rule, does.
                match state.ledger.reassign(inode, p.pid, &p.cgroup) {
                    Ok(event) => {
                        Self::track(state, p);
                        return Ok(Some(event));
                    }
                    Err(e) => warn!("buffer {inode}: holder pid {pid} cannot take the charge: {e}"),
                }
            }
        }
        // Already parked on the dead owner's parent cgroup: it stays there. Moving it again would
        // climb one level per reconcile pass until the root paid for the app's buffer.
        if b.pid == 0 {
            return Ok(None);
        }
        let parent = match b.cgroup.rfind('/') {
            Some(0) | None => "/".to_string(),
            Some(i) => b.cgroup[..i].to_string(),
        };
        Ok(Some(state.ledger.reassign(inode, 0, &parent)?))
    }

    /// A process died (binder death notification or pidfd): each of its charges is released when
    /// no other process holds the buffer, or handed over by the rule in [`Self::hand_over`]. When
    /// the scan could not read every process, nothing is released on its word: the charge is
    /// handed over instead and the next complete reconcile settles it.
    pub fn process_died(&self, pid: u32) -> Result<usize> {
        self.processes.forget(pid);
        let (inodes, uid) = {
            let mut state = self.lock();
            let Some(dead) = state.owners.remove(&pid) else { return Ok(0) };
            (state.ledger.buffers_of_pid(pid), dead.uid)
        };
        if inodes.is_empty() {
            return Ok(0);
        }
        let scan = self.processes.procfs().scan_all().map_err(Error::from)?;
        let n = inodes.len();
        self.change(|state, events| {
            for inode in inodes {
                // The lock was dropped for the scan: skip charges that changed hands meanwhile.
                if state.ledger.buffer(inode).is_none_or(|b| b.pid != pid) {
                    continue;
                }
                let holders: BTreeSet<u32> = scan
                    .buffers
                    .get(&inode)
                    .map(|b| b.holders.keys().copied().filter(|p| *p != pid).collect())
                    .unwrap_or_default();
                if holders.is_empty() && scan.is_complete() {
                    events.push(state.ledger.release(inode)?);
                    state.kernel_payer.remove(&inode);
                } else if let Some(e) = self.hand_over(state, inode, Some(uid), &holders)? {
                    events.push(e);
                }
                state.tickets.forget_buffer(inode);
            }
            info!("pid {pid} died: {n} charges handled");
            Ok(n)
        })
    }

    /// Compares the ledger with the procfs truth and repairs it: releases buffers no process
    /// holds, hands over charges of dead owners, follows cgroup moves, reparents removed cgroups,
    /// and reports dma-bufs nobody charged.
    pub fn reconcile(&self) -> Result<ReconcileReport> {
        let scan = self.processes.procfs().scan_all().map_err(Error::from)?;
        let mut report = ReconcileReport {
            processes_scanned: scan.processes,
            buffers_seen: scan.buffers.len(),
            ..ReconcileReport::default()
        };
        let live: HashMap<u32, Process> = scan
            .buffers
            .values()
            .flat_map(|b| b.holders.keys().copied())
            .chain(self.lock().owners.keys().copied())
            .collect::<BTreeSet<u32>>()
            .into_iter()
            .filter_map(|pid| self.processes.resolve_fresh(pid).ok().map(|p| (pid, p)))
            .collect();
        self.change(|state, events| {
            let known: Vec<BufferInfo> = state.ledger.buffers().collect();
            for b in &known {
                let Some(seen) = scan.buffers.get(&b.inode) else {
                    // A process the scan could not read may hold it: release only on a full view.
                    if !scan.is_complete() {
                        continue;
                    }
                    events.push(state.ledger.release(b.inode)?);
                    state.tickets.forget_buffer(b.inode);
                    state.kernel_payer.remove(&b.inode);
                    report.released.push(b.inode);
                    continue;
                };
                let owner_alive = state
                    .owners
                    .get(&b.pid)
                    .is_some_and(|o| live.get(&b.pid).is_some_and(|l| l.start_time == o.start_time));
                if !owner_alive {
                    let dead_uid = state.owners.get(&b.pid).map(|o| o.uid).or_else(|| uid_of_cgroup(&b.cgroup));
                    let holders: BTreeSet<u32> = seen.holders.keys().copied().filter(|p| *p != b.pid).collect();
                    if let Some(e) = self.hand_over(state, b.inode, dead_uid, &holders)? {
                        events.push(e);
                        report.moved.push(b.inode);
                    }
                }
            }
            for (pid, process) in &live {
                let was = state.owners.get(pid).cloned();
                if let Some(known) = was {
                    if known.start_time == process.start_time
                        && known.cgroup != process.cgroup
                        && !state.ledger.buffers_of_pid(*pid).is_empty()
                    {
                        // One process in a cgroup the ledger cannot represent must not stop the
                        // pass for everyone else: its charges stay where they are.
                        match state.ledger.migrate(*pid, &process.cgroup) {
                            Ok(e) => {
                                events.push(e);
                                report.migrated.push(*pid);
                                state.owners.insert(*pid, process.clone());
                            }
                            Err(e) => warn!("reconcile: pid {pid} moved to {}: {e}", process.cgroup),
                        }
                    }
                }
            }
            let dead: Vec<u32> = state.owners.keys().copied().filter(|pid| !live.contains_key(pid)).collect();
            for pid in dead {
                state.owners.remove(&pid);
                self.processes.forget(pid);
            }
            if let Some(cgroupfs) = &self.cgroupfs {
                let mut paths = state.ledger.cgroups();
                paths.reverse();
                for path in paths {
                    if path != "/"
                        && !cgroupfs.exists(&path)
                        && state.ledger.reparent(&path).map(|e| events.push(e)).is_ok()
                    {
                        report.reparented.push(path);
                    }
                }
            }
            for (inode, seen) in &scan.buffers {
                let known = state.ledger.buffer(*inode).is_some();
                let ours = seen.exporter.as_deref().is_some_and(|e| state.ledger.heap(e).is_some());
                if !known && ours {
                    report.unaccounted.push(*inode);
                    // Sizes come from /proc: a corrupt fdinfo must not overflow the report.
                    report.unaccounted_bytes = report.unaccounted_bytes.saturating_add(seen.size);
                }
            }
            Ok(())
        })?;
        report.released.sort_unstable();
        report.moved.sort_unstable();
        report.unaccounted.sort_unstable();
        report.migrated.sort_unstable();
        if !report.released.is_empty() || !report.moved.is_empty() {
            info!("reconcile: released {:?}, moved {:?}", report.released, report.moved);
        }
        Ok(report)
    }

    // ---- queries ----

    fn pool_usages(&self, state: &State, cgroup: &str) -> Vec<PoolUsage> {
        let counters = state.ledger.counters(cgroup).unwrap_or_else(|_| {
            state.ledger.pools().map(|(_, name, _)| (name.to_string(), Counter::default())).collect()
        });
        let fs = self.cgroupfs.as_ref();
        let dmem = fs.and_then(|fs| fs.dmem(cgroup, DmemFile::Current).ok());
        counters
            .into_iter()
            .map(|(pool, counter)| {
                let kernel_usage = if pool == MEMCG_POOL {
                    fs.and_then(|fs| fs.memory_current(cgroup).ok())
                } else {
                    dmem.as_ref().and_then(|d| d.get(&pool).copied())
                };
                PoolUsage { pool, counter, kernel_usage }
            })
            .collect()
    }

    fn usage_where(&self, state: &State, cgroup: &str, keep: impl Fn(&BufferInfo) -> bool) -> Usage {
        // Buffers in different pools may together exceed u64 (each pool alone cannot).
        let (count, bytes) =
            state.ledger.buffers().filter(|b| keep(b)).fold((0, 0u64), |(n, s), b| (n + 1, s.saturating_add(b.size)));
        Usage {
            cgroup: cgroup.to_string(),
            pools: self.pool_usages(state, cgroup),
            buffer_count: count,
            buffer_bytes: bytes,
        }
    }

    pub fn process_usage(&self, pid: u32) -> Result<Usage> {
        let known = self.lock().owners.get(&pid).map(|p| p.cgroup.clone());
        let cgroup = match known {
            Some(c) => c,
            None => self.processes.peek(pid)?.cgroup,
        };
        let state = self.lock();
        let (buffer_count, buffer_bytes) = state.ledger.pid_totals(pid);
        Ok(Usage { pools: self.pool_usages(&state, &cgroup), cgroup, buffer_count, buffer_bytes })
    }

    pub fn uid_usage(&self, uid: u32) -> Usage {
        let cgroup = uid_cgroup(uid);
        let state = self.lock();
        self.usage_where(&state, &cgroup, |b| in_subtree(&b.cgroup, &cgroup))
    }

    pub fn cgroup_usage(&self, cgroup: &str) -> Result<Usage> {
        if !cgroup.starts_with('/') || cgroup.split('/').any(|c| c == "..") {
            return Err(Error::InvalidArgument(format!("cgroup path {cgroup:?} must be absolute")));
        }
        let state = self.lock();
        Ok(self.usage_where(&state, cgroup, |b| in_subtree(&b.cgroup, cgroup)))
    }

    /// Buffers of a process (pid > 0) or all, biggest first.
    pub fn charges(&self, pid: u32) -> Vec<BufferInfo> {
        let state = self.lock();
        let mut v: Vec<BufferInfo> = state.ledger.buffers().filter(|b| pid == 0 || b.pid == pid).collect();
        v.sort_by(|a, b| b.size.cmp(&a.size).then(a.inode.cmp(&b.inode)));
        v
    }

    pub fn uid_of_owner(&self, pid: u32) -> Option<u32> {
        self.lock().owners.get(&pid).map(|p| p.uid)
    }

    pub fn kernel_payer(&self, inode: Inode) -> Option<String> {
        self.lock().kernel_payer.get(&inode).cloned()
    }

    /// Runs `f` on the ledger (read-only views: dump, regions, advice).
    pub fn with_ledger<T>(&self, f: impl FnOnce(&Ledger) -> T) -> T {
        f(&self.lock().ledger)
    }

    /// Applies events computed outside (autoconfig) and journals them.
    pub fn apply_events(&self, events: Vec<Event>) -> Result<()> {
        self.change(|state, applied| {
            for e in events {
                state.ledger.apply(&e)?;
                applied.push(e);
            }
            Ok(())
        })
    }

    /// Runs `f` with mutable access to the ledger and journals the events it returns.
    pub fn with_ledger_mut<T>(&self, f: impl FnOnce(&mut Ledger) -> Result<(T, Vec<Event>)>) -> Result<T> {
        self.change(|state, events| {
            let (value, applied) = f(&mut state.ledger)?;
            events.extend(applied);
            Ok(value)
        })
    }

    // ---- vram: eviction and pins (trusted: the GPU driver's userspace) ----

    pub fn evict(&self, caller: &Caller, inode: Inode) -> Result<()> {
        self.require_trusted(caller, "report eviction")?;
        self.change(|state, events| {
            events.push(state.ledger.evict(inode)?);
            Ok(())
        })
    }

    pub fn restore(&self, caller: &Caller, inode: Inode) -> Result<()> {
        self.require_trusted(caller, "report restore")?;
        self.change(|state, events| {
            events.push(state.ledger.restore(inode)?);
            Ok(())
        })
    }

    pub fn pin(&self, caller: &Caller, inode: Inode, pin: bool) -> Result<()> {
        self.require_trusted(caller, "pin or unpin")?;
        self.change(|state, events| {
            events.push(if pin { state.ledger.pin(inode)? } else { state.ledger.unpin(inode)? });
            Ok(())
        })
    }

    pub fn eviction_advice(&self, region: &str, bytes: u64) -> Result<Vec<Inode>> {
        Ok(self.lock().ledger.eviction_advice(region, bytes)?)
    }

    /// Writes a snapshot and starts a new journal generation (on shutdown, and when the journal
    /// grew past its threshold).
    pub fn compact(&self) -> Result<()> {
        let mut state = self.lock();
        let State { ledger, journal, .. } = &mut *state;
        if let Some(j) = journal {
            j.compact(ledger).map_err(|e| Error::Internal(format!("compaction: {e}")))?;
        }
        Ok(())
    }

    /// Pools with what feeds them and who enforces them: autoconfig's view where it ran,
    /// otherwise derived from the ledger (heaps in enforce mode → service, else nobody).
    pub fn regions(&self) -> Vec<RegionSummary> {
        let known = self.regions.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if !known.is_empty() {
            return known;
        }
        self.with_ledger(|l| {
            l.pools()
                .map(|(id, name, capacity)| {
                    let feeding: Vec<(String, bool)> = l
                        .heaps()
                        .filter(|(h, _)| {
                            crate::ledger::PoolSet::of(h.class, h.region.as_deref().and_then(|r| l.pool_id(r)), false)
                                .contains(id)
                        })
                        .map(|(h, enforce)| (h.name.clone(), enforce))
                        .collect();
                    let enforced = feeding.iter().any(|(_, e)| *e);
                    RegionSummary {
                        name: name.to_string(),
                        class: if name == MEMCG_POOL { "system".into() } else { "unknown".into() },
                        capacity,
                        heaps: feeding.into_iter().map(|(h, _)| h).collect(),
                        enforced_by: if enforced { "service" } else { "nobody" }.into(),
                        why: "autoconfig has not run".into(),
                    }
                })
                .collect()
        })
    }

    pub fn set_regions(&self, regions: Vec<RegionSummary>) {
        *self.regions.lock().unwrap_or_else(|p| p.into_inner()) = regions;
    }

    /// Syncs journal records written since the last sync (background flusher, batch mode).
    pub fn sync_journal(&self) -> Result<()> {
        match &mut self.lock().journal {
            Some(j) => j.flush().map_err(|e| Error::Internal(format!("journal sync: {e}"))),
            None => Ok(()),
        }
    }

    pub fn open_offers(&self) -> usize {
        self.lock().tickets.len()
    }
}

/// Makes `events` durable. A failure here is reported as INTERNAL; the events stay applied in
/// memory and the next reconcile re-derives any charge the journal missed.
fn journal(state: &mut State, events: &[Event]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let State { ledger, journal, .. } = state;
    if let Some(j) = journal {
        j.append_all(events).map_err(|e| Error::Internal(format!("journal append: {e}")))?;
        if j.should_compact() {
            if let Err(e) = j.compact(ledger) {
                warn!("journal compaction failed: {e}");
            }
        }
    }
    Ok(())
}

fn in_subtree(path: &str, root: &str) -> bool {
    root == "/" || path == root || path.strip_prefix(root).is_some_and(|rest| rest.starts_with('/'))
}

/// The uid of an Android per-app cgroup path (`/uid_10001/pid_5` → 10001).
fn uid_of_cgroup(path: &str) -> Option<u32> {
    path.split('/').find_map(|c| c.strip_prefix("uid_")?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use crate::journal::Durability;
    use crate::ledger::LimitKind;

    /// A process in a fake /proc holding `buffers` (inode, size) of the system heap by fd.
    fn put_process(proc_root: &Path, pid: u32, uid: u32, cgroup: &str, buffers: &[(Inode, u64)]) {
        let dir = proc_root.join(pid.to_string());
        std::fs::create_dir_all(dir.join("fdinfo")).unwrap();
        std::fs::write(dir.join("status"), format!("Name:\tapp\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")).unwrap();
        std::fs::write(dir.join("cgroup"), format!("0::{cgroup}\n")).unwrap();
        std::fs::write(
            dir.join("stat"),
            format!("{pid} (app) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {} 0 0\n", 1000 + pid),
        )
        .unwrap();
        std::fs::write(dir.join("maps"), "").unwrap();
        for (fd, (inode, size)) in buffers.iter().enumerate() {
            let info = format!(
                "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t{inode}\nsize:\t{size}\ncount:\t1\nexp_name:\tsystem\n"
            );
            std::fs::write(dir.join("fdinfo").join((fd + 3).to_string()), info).unwrap();
        }
    }

    #[test]
    fn owner_level_is_the_first_component() {
        assert_eq!(owner_level("/uid_10001/pid_5"), "/uid_10001");
        assert_eq!(owner_level("/system"), "/system");
        assert_eq!(owner_level("/"), "/");
    }

    #[test]
    fn subtree_and_uid_parsing() {
        assert!(in_subtree("/uid_1/pid_2", "/uid_1"));
        assert!(!in_subtree("/uid_10/pid_2", "/uid_1"));
        assert!(in_subtree("/x", "/"));
        assert_eq!(uid_of_cgroup("/apps/uid_10001/pid_5"), Some(10001));
        assert_eq!(uid_of_cgroup("/system"), None);
    }

    #[test]
    fn a_charge_parked_on_the_dead_owners_app_cgroup_stays_there_across_reconciles() {
        let dir = tempfile::tempdir().unwrap();
        let proc_root = dir.path().join("proc");
        // App 10001's pid 100 pays for buffer 7; another app's pid 200 holds it too.
        put_process(&proc_root, 100, 10001, "/uid_10001/pid_100", &[(7, 4096)]);
        put_process(&proc_root, 200, 10002, "/uid_10002/pid_200", &[(7, 4096)]);
        let config = Config {
            proc_root: proc_root.clone(),
            cgroup_root: None,
            state_dir: None,
            durability: Durability::None,
            pidfds: false,
        };
        let accountant = Accountant::open(config, Policy::embedded_default()).unwrap();
        let buffer = DmaBufInfo { inode: 7, size: 4096, exporter: "system".into(), name: None };
        accountant.charge(&Caller { pid: 100, uid: 10001, context: None }, &buffer, None).unwrap();
        let payer = || accountant.charges(0).first().map(|b| (b.pid, b.cgroup.clone()));
        let parked = Some((0, "/uid_10001".to_string()));

        std::fs::remove_dir_all(proc_root.join("100")).unwrap();
        assert_eq!(accountant.reconcile().unwrap().moved, [7]);
        assert_eq!(payer(), parked, "no process of the app holds it: the app's cgroup pays, not the other app");
        for _ in 0..2 {
            let report = accountant.reconcile().unwrap();
            assert!(report.moved.is_empty(), "{report:?}");
            assert_eq!(payer(), parked, "a parked charge must not climb a level per pass");
        }
        // A process of the same app that holds the buffer takes the charge back.
        put_process(&proc_root, 300, 10001, "/uid_10001/pid_300", &[(7, 4096)]);
        assert_eq!(accountant.reconcile().unwrap().moved, [7]);
        assert_eq!(payer(), Some((300, "/uid_10001/pid_300".to_string())));
    }

    /// Under the SELinux rule the context decides: gralloc's uid in an app's context may not charge
    /// on another's behalf (and the refusal changes nothing); in gralloc's context it may.
    #[test]
    fn with_selinux_the_callers_context_not_its_uid_decides_an_on_behalf_charge() {
        let dir = tempfile::tempdir().unwrap();
        let proc_root = dir.path().join("proc");
        put_process(&proc_root, 100, 10001, "/uid_10001/pid_100", &[(7, 4096)]);
        put_process(&proc_root, 200, 1003, "/system/gralloc", &[(7, 4096)]);
        let config = Config {
            proc_root: proc_root.clone(),
            cgroup_root: None,
            state_dir: None,
            durability: Durability::None,
            pidfds: false,
        };
        let accountant = Accountant::open(config, Policy::embedded_default()).unwrap();
        accountant.set_trust_rule(TrustRule::Contexts);
        let buffer = DmaBufInfo { inode: 7, size: 4096, exporter: "system".into(), name: None };
        let gralloc_as = |context: &str| Caller { pid: 200, uid: 1003, context: Some(context.into()) };

        let refused = accountant.charge(&gralloc_as("u:r:untrusted_app:s0:c512,c768"), &buffer, Some(100));
        assert!(matches!(refused, Err(Error::NotTrusted { uid: 1003, .. })), "{refused:?}");
        assert!(accountant.charges(0).is_empty());
        let no_context = Caller { pid: 200, uid: 1003, context: None };
        assert!(matches!(accountant.charge(&no_context, &buffer, Some(100)), Err(Error::NotTrusted { .. })));

        let b = accountant.charge(&gralloc_as("u:r:hal_graphics_allocator_default:s0"), &buffer, Some(100)).unwrap();
        assert_eq!((b.pid, b.cgroup.as_str()), (100, "/uid_10001/pid_100"));
    }

    /// Eviction reported by the GPU driver's userspace (trusted, uid 1000): the *owner's* memcg
    /// pays for the evicted bytes, never the reporter's; a restore over the owner's dmem max is
    /// refused and the buffer stays evicted; pins count against the pin limit; untrusted apps
    /// cannot report any of it.
    #[test]
    fn eviction_charges_the_owner_not_the_reporter_and_restore_respects_dmem_max() {
        const MIB: u64 = 1 << 20;
        let vram = "drm/0000:03:00.0/vram0";
        let dir = tempfile::tempdir().unwrap();
        let proc_root = dir.path().join("proc");
        put_process(&proc_root, 100, 10001, "/uid_10001/pid_100", &[]);
        put_process(&proc_root, 500, 1000, "/system/gpu", &[]);
        let config = Config {
            proc_root: proc_root.clone(),
            cgroup_root: None,
            state_dir: None,
            durability: Durability::None,
            pidfds: false,
        };
        let accountant = Accountant::open(config, Policy::embedded_default()).unwrap();
        let (app, driver) =
            (Caller { pid: 100, uid: 10001, context: None }, Caller { pid: 500, uid: 1000, context: None });
        accountant
            .apply_events(vec![
                Event::RegionAdded { region: vram.into(), capacity: 1 << 30 },
                Event::HeapAdded {
                    heap: crate::ledger::HeapSpec {
                        name: "vram".into(),
                        class: crate::ledger::HeapClass::Vram,
                        region: Some(vram.into()),
                    },
                    enforce: true,
                },
            ])
            .unwrap();
        let buffer = DmaBufInfo { inode: 9, size: 64 * MIB, exporter: "vram".into(), name: None };
        accountant.charge(&app, &buffer, None).unwrap();
        let usage = |cg: &str, pool: &str| accountant.with_ledger(|l| l.counter(cg, pool).map_or(0, |c| c.usage));

        assert!(matches!(accountant.evict(&app, 9), Err(Error::NotTrusted { .. })));
        accountant.evict(&driver, 9).unwrap();
        assert_eq!((usage("/uid_10001/pid_100", "memcg"), usage("/uid_10001/pid_100", vram)), (64 * MIB, 0));
        assert_eq!(usage("/system/gpu", "memcg"), 0, "the reporter never pays");

        accountant
            .with_ledger_mut(|l| Ok(((), vec![l.set_limit("/uid_10001", vram, LimitKind::Max, 32 * MIB)?])))
            .unwrap();
        assert!(matches!(accountant.restore(&driver, 9), Err(Error::Ledger(LedgerError::OverLimit { .. }))));
        assert!(accountant.charges(0)[0].evicted, "a refused restore leaves it evicted");
        accountant
            .with_ledger_mut(|l| {
                Ok(((), vec![l.set_limit("/uid_10001", vram, LimitKind::Max, crate::ledger::UNLIMITED)?]))
            })
            .unwrap();
        accountant.restore(&driver, 9).unwrap();
        assert_eq!((usage("/uid_10001/pid_100", "memcg"), usage("/uid_10001/pid_100", vram)), (0, 64 * MIB));

        accountant
            .with_ledger_mut(|l| Ok(((), vec![l.set_limit("/uid_10001", vram, LimitKind::PinMax, 16 * MIB)?])))
            .unwrap();
        assert!(matches!(accountant.pin(&driver, 9, true), Err(Error::Ledger(LedgerError::OverPinLimit { .. }))));
        assert_eq!(accountant.eviction_advice(vram, MIB).unwrap(), [9]);
        accountant.with_ledger(|l| l.check_invariants()).unwrap();
    }
}
