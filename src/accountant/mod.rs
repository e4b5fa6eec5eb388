//! The accountant: every operation of the service in plain Rust types, on top of the ledger. It
//! knows nothing of binder; `service` translates. This file is the facade: the type the service
//! holds, how it opens, and where each concept lives:
//!
//! - [`state`]: the locked ledger with its journal, offers and owners; every change goes through it;
//! - [`charges`]: charge, release and the trusted push;
//! - [`offers`]: consent-based hand-over (offer, accept);
//! - [`lifecycle`]: death, hand-over to the next holder, reconcile;
//! - [`budget`]: the memory.max check for bytes the kernel charged to someone else;
//! - [`queries`]: usage and charge listings;
//! - [`vram`]: eviction, restore and pins reported by the GPU driver's userspace;
//! - [`regions`]: what autoconfig found, and its hook for owners it has not configured yet;
//! - [`cgroup_path`]: the owner-level and per-app cgroup names.

mod budget;
mod cgroup_path;
mod charges;
mod lifecycle;
mod offers;
mod queries;
mod regions;
mod state;
#[cfg(test)]
mod tests;
mod vram;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;

use log::info;

use crate::error::{Error, Result};
use crate::identity::{Caller, Processes};
use crate::journal::{Durability, Journal};
use crate::kernel::cgroupfs::CgroupFs;
use crate::kernel::procfs::ProcFs;
use crate::ledger::Ledger;
use crate::offers::Tickets;
use crate::policy::{Policy, TrustRule};

pub use cgroup_path::uid_cgroup;
pub use lifecycle::ReconcileReport;
pub use queries::{PoolUsage, Usage};
pub use regions::{NewOwnerHook, RegionSummary};
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

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn processes(&self) -> &Processes {
        &self.processes
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

    /// Sets the trust rule the kernel calls for ([`TrustRule::with_selinux`]); the first call
    /// wins, so the rule cannot change while the service runs.
    pub fn set_trust_rule(&self, rule: TrustRule) {
        let _ = self.trust_rule.set(rule);
    }

    pub fn trust_rule(&self) -> TrustRule {
        self.trust_rule.get().copied().unwrap_or(TrustRule::Uids)
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
}
