//! Autoconfiguration, on every boot, for each new owner and on demand: work out what the device
//! has and what the kernel enforces, then set consistent limits.
//!
//! [`probe`] reads the device (read-only, never fails), [`topology`] combines it with the policy
//! into regions, heaps, owners and who enforces each pool, [`limits`] computes the per-owner-class
//! plan, [`apply`] writes kernel files and computes ledger events, [`written`] remembers which
//! kernel values are autoconfig's own, and [`report`] shows it all. Topology and limits are pure
//! and cheap; a saved probe replays to the same report (the fixtures under
//! `tests/fixtures/autoconfig`).
//!
//! Autoconfig knows nothing of the accountant: a run is a [`Pass`] made with file I/O and no
//! ledger ([`Autoconfig::pass`]), whose ledger share is then computed from a `&Ledger` alone
//! ([`Pass::ledger_events`]) — the caller applies and journals those under its lock.

pub mod apply;
pub mod limits;
pub mod probe;
pub mod report;
pub mod topology;
pub mod written;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;

pub use apply::{Applied, FailedWrite, FileChange, LeftAlone, Reclaim, MAX_LIMIT_WRITES};
pub use limits::{LimitEntry, Plan, MEMORY_POOL};
pub use probe::{Found, Probe, ProbeRoots};
pub use report::{PoolSummary, Report};
pub use topology::{Enforcer, Topology};

use crate::kernel::cgroupfs::CgroupFs;
use crate::ledger::{Event, Ledger};
use crate::policy::{OwnerClass, Policy};
use written::Writes;

/// Topology and plan from a probe: the pure part, used for saved probes and by [`Autoconfig`].
pub fn plan(probe: &Probe, policy: &Policy) -> (Topology, Plan) {
    let topology = Topology::build(probe, policy);
    let plan = Plan::compute(&topology, policy);
    (topology, plan)
}

/// Which owners a pass configures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every owner cgroup (boot, `chargectl autoconfig`).
    All,
    /// These owner cgroups only: an owner seen for the first time, or owners whose class changed.
    /// Nobody else's limits are touched.
    Owners(Vec<String>),
}

impl Scope {
    fn covers(&self, cgroup: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Owners(list) => list.iter().any(|c| c == cgroup),
        }
    }
}

/// Autoconfig for one device: where it looks, the policy, and what it wrote before.
pub struct Autoconfig {
    roots: ProbeRoots,
    policy: Policy,
    /// Where [`Writes`] are kept; `None` keeps them in memory (tests, demo).
    state_dir: Option<PathBuf>,
    writes: Mutex<Writes>,
    /// Each owner's class at the last pass, to notice when the background signal changes it.
    classes: Mutex<BTreeMap<String, (OwnerClass, bool)>>,
    /// Said once, in the first report: why no earlier write counts as autoconfig's.
    load_warning: Mutex<Option<String>>,
    /// Kernel writes that failed and have not succeeded since, by file and region: the ledger
    /// enforces those limits, and [`Autoconfig::pools`] says so.
    failed: Mutex<BTreeMap<apply::LimitId, FailedWrite>>,
}

/// One run's probe, plan and kernel outcome; the ledger's share is computed from it.
#[derive(Clone, Debug)]
pub struct Pass {
    pub topology: Topology,
    pub plan: Plan,
    pub scope: Scope,
    pub kernel: apply::KernelOutcome,
}

impl Autoconfig {
    pub fn new(roots: ProbeRoots, policy: Policy, state_dir: Option<PathBuf>) -> Autoconfig {
        let (writes, load_warning) = match &state_dir {
            Some(dir) => Writes::load(dir),
            None => (Writes::default(), None),
        };
        Autoconfig {
            roots,
            policy,
            state_dir,
            writes: Mutex::new(writes),
            classes: Mutex::new(BTreeMap::new()),
            load_warning: Mutex::new(load_warning),
            failed: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn roots(&self) -> &ProbeRoots {
        &self.roots
    }

    /// Probe → topology → plan → kernel writes, for the owners in `scope`. `known` are cgroups
    /// the ledger holds (its `/uid_<uid>` ones count as owners too, unless their cgroup is gone:
    /// those are skipped and reported). File I/O only: call it without holding the ledger.
    pub fn pass(&self, known: &[String], scope: Scope, dry_run: bool) -> Pass {
        let probe = Probe::run(&self.roots);
        let mut topology = Topology::build(&probe, &self.policy);
        let adj = probe.cgroup.get().map(|c| c.oom_score_adj.clone()).unwrap_or_default();
        let children: BTreeSet<&str> =
            probe.cgroup.get().into_iter().flat_map(|c| &c.children).map(String::as_str).collect();
        let mut owners: Vec<&str> = children.iter().copied().collect();
        for cgroup in known.iter().filter(|c| topology::owner_uid(c).is_some()) {
            if probe.cgroup.get().is_none() {
                owners.push(cgroup);
            } else if !children.contains(cgroup.as_str()) {
                topology.skipped_owners.push(cgroup.clone());
            }
        }
        topology.skipped_owners.sort();
        topology.skipped_owners.dedup();
        if !topology.skipped_owners.is_empty() {
            topology.notes.push(format!(
                "owner cgroups the ledger remembers but that no longer exist, skipped: {}",
                topology.skipped_owners.join(" ")
            ));
        }
        topology.owners = Topology::owners_from(&self.policy, owners, &adj);
        let plan = Plan::compute(&topology, &self.policy);

        let mut writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        let before = writes.clone();
        if !dry_run {
            for gone in &topology.skipped_owners {
                writes.forget_cgroup(gone);
            }
        }
        let entries = plan.entries.iter().filter(|e| scope.covers(&e.cgroup));
        let kernel = match probe.cgroup.get() {
            Some(_) => {
                apply::apply_kernel(&CgroupFs::new(&self.roots.cgroup), &topology, entries, &mut writes, dry_run)
            }
            None => apply::KernelOutcome::default(),
        };
        let mut kernel = kernel;
        kernel.applied.dry_run = dry_run;
        if !dry_run {
            if let Some(w) = self.load_warning.lock().unwrap_or_else(|p| p.into_inner()).take() {
                topology.notes.push(w);
            }
            if *writes != before {
                if let Some(dir) = &self.state_dir {
                    if let Err(e) = writes.save(dir) {
                        kernel.applied.failures.push(format!("{}: {e}", dir.join(written::FILE_NAME).display()));
                    }
                }
            }
            let mut classes = self.classes.lock().unwrap_or_else(|p| p.into_inner());
            for o in topology.owners.iter().filter(|o| scope.covers(&o.cgroup)) {
                classes.insert(o.cgroup.clone(), (o.class, limits::is_foreground(o)));
            }
            for gone in &topology.skipped_owners {
                classes.remove(gone);
            }
            let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
            failed.retain(|id, _| !topology.skipped_owners.contains(&id.0) && !kernel.held.contains(id));
            failed.extend(kernel.failed.iter().map(|(id, f)| (id.clone(), f.clone())));
        }
        Pass { topology, plan, scope, kernel }
    }

    /// Each pool as `regions` queries show it ([`Report::pools`]), naming every kernel write that
    /// failed in any pass and has not succeeded since.
    pub fn pools(&self, report: &Report) -> Vec<PoolSummary> {
        let failed: Vec<FailedWrite> =
            self.failed.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        report.pools_with(&failed)
    }

    /// Owners whose class or foreground state differs from the one their limits were set for
    /// (the `oom_score_adj` signal changed), from a fresh probe; empty when none did. Cheap enough for every reconcile.
    pub fn reclassified(&self) -> Vec<String> {
        let probe = Probe::run(&self.roots);
        let adj = probe.cgroup.get().map(|c| c.oom_score_adj.clone()).unwrap_or_default();
        let children = probe.cgroup.get().map(|c| c.children.as_slice()).unwrap_or_default();
        let owners = Topology::owners_from(&self.policy, children.iter().map(String::as_str), &adj);
        let classes = self.classes.lock().unwrap_or_else(|p| p.into_inner());
        owners
            .into_iter()
            .filter(|o| classes.get(&o.cgroup).is_some_and(|c| *c != (o.class, limits::is_foreground(o))))
            .map(|o| o.cgroup)
            .collect()
    }
}

impl Pass {
    /// The ledger's share of the pass: heaps, regions and the limits the ledger enforces (also
    /// those whose kernel write failed). Pure: call it under the ledger lock.
    pub fn ledger_events(&self, ledger: &Ledger) -> Vec<Event> {
        let entries = self.plan.entries.iter().filter(|e| self.scope.covers(&e.cgroup));
        apply::ledger_events(&self.topology, entries, &self.kernel, ledger)
    }

    /// The report, with the ledger events applied and the ones the ledger refused.
    pub fn report(self, events: Vec<Event>, refused: Vec<String>) -> Report {
        let mut applied = self.kernel.applied;
        applied.events = events;
        applied.failures.extend(refused);
        Report { topology: self.topology, plan: self.plan, applied: Some(applied) }
    }

    /// Heaps the kernel itself charges to memcg (the system heap with mem_accounting).
    pub fn kernel_charged_heaps(&self) -> &[String] {
        &self.topology.memcg.kernel_charged_heaps
    }
}

/// A whole pass on a ledger held by the caller: the kernel part, then the ledger events applied
/// one by one (refusals reported). With `dry_run` nothing is written, the ledger included.
pub fn run(autoconfig: &Autoconfig, ledger: &mut Ledger, scope: Scope, dry_run: bool) -> Report {
    let pass = autoconfig.pass(&ledger.cgroups(), scope, dry_run);
    let events = pass.ledger_events(ledger);
    if dry_run {
        return pass.report(events, Vec::new());
    }
    let (mut applied, mut refused) = (Vec::new(), Vec::new());
    for event in events {
        match ledger.apply(&event) {
            Ok(()) => applied.push(event),
            Err(e) => refused.push(format!("ledger refused {}: {e}", apply::describe(&event))),
        }
    }
    pass.report(applied, refused)
}
