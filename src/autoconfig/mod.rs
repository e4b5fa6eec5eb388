//! Autoconfiguration, on every boot and on demand: work out what the device has and what the
//! kernel enforces, then set consistent limits.
//!
//! [`probe`] reads the device (read-only, never fails), [`topology`] combines it with the policy
//! into regions, heaps and who enforces each pool, [`limits`] computes the per-owner-class plan,
//! [`apply`] writes kernel files and ledger events idempotently, and [`report`] shows it all.
//! The first three are pure and cheap; a saved probe replays to the same report (the fixtures
//! under `tests/fixtures/autoconfig`).

pub mod apply;
pub mod limits;
pub mod probe;
pub mod report;
pub mod topology;

#[cfg(test)]
mod tests;

pub use apply::{Applied, FileChange};
pub use limits::{LimitEntry, Plan, MEMORY_POOL};
pub use probe::{Found, Probe, ProbeRoots};
pub use report::Report;
pub use topology::{Enforcer, Topology};

use crate::accountant::{Accountant, RegionSummary};
use crate::kernel::cgroupfs::CgroupFs;
use crate::ledger::{Ledger, MEMCG_POOL};
use crate::policy::Policy;

/// Topology and plan from a probe: the pure part, used for saved probes and by [`run`].
pub fn plan(probe: &Probe, policy: &Policy) -> (Topology, Plan) {
    let topology = Topology::build(probe, policy);
    let plan = Plan::compute(&topology, policy);
    (topology, plan)
}

/// Probe → topology → limits → apply → report. Owner cgroups are those under the cgroup root
/// plus the `/uid_<uid>` cgroups the ledger already knows. With `dry_run` nothing is written,
/// the ledger included. Refused writes are listed in the report ([`Report::is_clean`]).
pub fn run(roots: &ProbeRoots, policy: &Policy, ledger: &mut Ledger, dry_run: bool) -> Report {
    let probe = Probe::run(roots);
    let mut topology = Topology::build(&probe, policy);
    let known = ledger.cgroups();
    let children = probe.cgroup.get().map(|c| c.children.as_slice()).unwrap_or_default();
    topology.owners = Topology::owners_from(policy, children.iter().chain(&known).map(String::as_str));
    let plan = Plan::compute(&topology, policy);
    let cgroupfs = probe.cgroup.get().map(|_| CgroupFs::new(&roots.cgroup));
    let applied = apply::apply(cgroupfs.as_ref(), &topology, &plan, ledger, dry_run);
    if !dry_run {
        policy.set_kernel_charged_heaps(topology.memcg.kernel_charged_heaps.iter().cloned());
    }
    Report { topology, plan, applied: Some(applied) }
}

/// [`run`] on the service's ledger: the applied events are journaled, and the pool summary (for
/// `regions` queries) and the kernel-charged heaps (for [`Policy::kernel_charges_heap`]) are
/// recorded. This is what the service runs at start and for `chargectl autoconfig`.
pub fn run_for(accountant: &Accountant, roots: &ProbeRoots, dry_run: bool) -> crate::error::Result<Report> {
    let report = accountant.with_ledger_mut(|ledger| {
        let report = run(roots, accountant.policy(), ledger, dry_run);
        let events = match &report.applied {
            Some(a) if !a.dry_run => a.events.clone(),
            _ => Vec::new(),
        };
        Ok((report, events))
    })?;
    if !dry_run {
        accountant.set_regions(region_summaries(&report.topology));
    }
    Ok(report)
}

/// The topology's pools as the accountant reports them: memcg first, then regions by name.
pub fn region_summaries(topology: &Topology) -> Vec<RegionSummary> {
    let memcg = &topology.memcg;
    let mut out = vec![RegionSummary {
        name: MEMCG_POOL.into(),
        class: "system".into(),
        capacity: memcg.mem_total.unwrap_or(0),
        heaps: memcg.heaps.clone(),
        enforced_by: memcg.enforced_by.name().into(),
        why: memcg.why.clone(),
    }];
    out.extend(topology.regions.iter().map(|r| RegionSummary {
        name: r.name.clone(),
        class: r.class.name().into(),
        capacity: r.capacity.unwrap_or(0),
        heaps: r.heaps.clone(),
        enforced_by: r.enforced_by.name().into(),
        why: r.why.clone(),
    }));
    out
}
