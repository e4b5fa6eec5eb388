//! The accountant: every operation of the service in plain Rust types, on top of the ledger. It
//! knows nothing of binder; `service` translates. This file is the facade: the type the service
//! holds, how it opens, and where each concept lives:
//!
//! - [`state`]: the locked ledger with its journal, offers and owners; every change goes through it;
//! - [`charges`]: charge, release and the trusted push, with the holder rule;
//! - [`offers`]: consent-based hand-over (offer, accept);
//! - [`lifecycle`]: death, hand-over to the next holder, the handoff rule, reconcile;
//! - [`payer`]: which holder pays when the service picks one (catch-up, handoffs);
//! - [`budget`]: the memory.max check for bytes the kernel charged to someone else;
//! - [`kernel_charged`]: where the kernel charged such bytes, summed per owner level;
//! - [`queries`]: usage and charge listings;
//! - [`vram`]: eviction, restore and pins reported by the GPU driver's userspace;
//! - [`regions`]: autoconfig runs (all owners, and each new owner alone) and what it found;
//! - [`cgroup_path`]: the owner-level and per-app cgroup names.

mod budget;
mod cgroup_path;
mod charges;
mod kernel_charged;
mod lifecycle;
mod offers;
mod payer;
mod queries;
mod regions;
mod state;
#[cfg(test)]
mod tests;
mod vram;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use log::info;

use crate::error::{Error, Result};
use crate::identity::{Caller, Processes};
use crate::journal::{Durability, Journal};
use crate::kernel::cgroupfs::CgroupFs;
use crate::kernel::counters::OpenCounters;
use crate::kernel::procfs::ProcFs;
use crate::kernel::scanner::{ScanChoice, Scanner};
use crate::ledger::Ledger;
use crate::permission::{self, Op};
use crate::policy::{Policy, TrustRule};

pub use cgroup_path::uid_cgroup;
pub use lifecycle::ReconcileReport;
pub use payer::{choose_payer, Candidate};
pub use queries::{check_cgroup_path, PoolUsage, Usage};
pub use regions::RegionSummary;
use state::{journal, State};

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
    /// Which backend finds who holds which dma-buf (reconcile, death hand-over).
    pub scan: ScanChoice,
}

pub struct Accountant {
    policy: Policy,
    processes: Processes,
    /// Chosen once at open: BPF iterators (a full view) or the procfs scan.
    scanner: Scanner,
    cgroupfs: Option<CgroupFs>,
    /// The usage counters of cgroupfs, kept open for queries.
    counters: Option<OpenCounters>,
    state: Mutex<State>,
    /// The last autoconfig result, per pool.
    regions: Mutex<Vec<RegionSummary>>,
    /// Runs when a charge meets an owner cgroup it has not configured yet.
    autoconfig: std::sync::OnceLock<std::sync::Arc<crate::autoconfig::Autoconfig>>,
    /// Top-level owner cgroups (`/uid_<uid>`, `/system`) autoconfig has run for.
    configured: Mutex<BTreeSet<String>>,
    /// Which trusted list decides; set once at start from the kernel (uids until then).
    trust_rule: std::sync::OnceLock<TrustRule>,
    /// Heaps the kernel itself charges to memcg, as autoconfig last found them (runtime state,
    /// kept here rather than in the policy, which holds only what was configured).
    kernel_charged: std::sync::RwLock<BTreeSet<String>>,
    /// How long the receiver of a push or an on-behalf charge has to come to hold the buffer, in
    /// milliseconds.
    receipt_grace_ms: AtomicU64,
    /// Per-app totals to the kernel trace after each change (policy `trace.counters`), if on.
    trace_counters: std::sync::OnceLock<std::sync::Arc<crate::memtrack::TraceCounters>>,
}

/// The receipt grace unless the daemon sets another: ample for an allocator to hand the fd over.
pub const RECEIPT_GRACE: Duration = Duration::from_secs(5);

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
        let scanner = Scanner::choose(&config.scan, ProcFs::new(&config.proc_root)).map_err(Error::from)?;
        info!("dma-buf scan: {scanner}");
        let accountant = Accountant {
            policy,
            scanner,
            processes: Processes::new(ProcFs::new(&config.proc_root), config.pidfds),
            cgroupfs: config.cgroup_root.as_ref().map(CgroupFs::new),
            counters: config.cgroup_root.as_ref().map(|root| OpenCounters::new(CgroupFs::new(root))),
            state: Mutex::new(State::new(ledger, journal)),
            regions: Mutex::new(Vec::new()),
            autoconfig: std::sync::OnceLock::new(),
            configured: Mutex::new(BTreeSet::new()),
            trust_rule: std::sync::OnceLock::new(),
            kernel_charged: std::sync::RwLock::new(BTreeSet::new()),
            receipt_grace_ms: AtomicU64::new(RECEIPT_GRACE.as_millis() as u64),
            trace_counters: std::sync::OnceLock::new(),
        };
        accountant.declare_heaps()?;
        accountant.adopt_owners()?;
        Ok(accountant)
    }

    /// Writes each app's new total to `counters` after every change that moves it (the first
    /// call wins).
    pub fn set_trace_counters(&self, counters: std::sync::Arc<crate::memtrack::TraceCounters>) {
        if self.trace_counters.set(counters).is_ok() {
            self.lock().trace_payers();
        }
    }

    pub fn set_receipt_grace(&self, grace: Duration) {
        self.receipt_grace_ms.store(grace.as_millis().try_into().unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn receipt_grace(&self) -> Duration {
        Duration::from_millis(self.receipt_grace_ms.load(Ordering::Relaxed))
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn processes(&self) -> &Processes {
        &self.processes
    }

    pub fn scanner(&self) -> &Scanner {
        &self.scanner
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
    /// handled by the next reconcile. A pid now held by a process that started at another time
    /// than the one recorded with its charges was recycled: those charges are parked on their
    /// parent cgroup (the dead owner's app), never handed to the newcomer. Charges recorded
    /// without a start time (format version 1) fall back to the uid of their app cgroup.
    fn adopt_owners(&self) -> Result<()> {
        let pids = self.lock().ledger.owner_pids();
        for pid in pids.into_iter().filter(|p| *p != 0) {
            let Ok(process) = self.processes.resolve(pid) else { continue };
            self.change(|state| {
                let recycled =
                    state.ledger.buffers_of_pid(pid).into_iter().filter_map(|i| state.ledger.buffer(i)).any(|b| {
                        if b.start != 0 {
                            b.start != process.start_time
                        } else {
                            cgroup_path::uid_of_cgroup(&b.cgroup).is_some_and(|uid| uid != process.uid)
                        }
                    });
                if recycled {
                    state.park_charges_of(pid)
                } else {
                    state.owners.insert(pid, process.clone());
                    Ok(())
                }
            })?;
        }
        Ok(())
    }

    /// Sets the trust rule the kernel calls for ([`TrustRule::with_selinux`]); the first call
    /// wins, so the rule cannot change while the service runs.
    pub fn set_trust_rule(&self, rule: TrustRule) {
        let _ = self.trust_rule.set(rule);
    }

    pub fn trust_rule(&self) -> TrustRule {
        self.trust_rule.get().copied().unwrap_or(TrustRule::Uids)
    }

    /// Asks the permission module whether `caller` may do `op` under the kernel's trust rule.
    pub fn permit(&self, caller: &Caller, op: Op) -> Result<()> {
        permission::check(&self.policy, self.trust_rule(), caller, op)
    }

    /// Whether `caller` may see other apps' processes and cgroups (the permission module's
    /// answer under the kernel's trust rule).
    pub fn sees_others(&self, caller: &Caller) -> bool {
        permission::sees_others(&self.policy, self.trust_rule(), caller)
    }
}
