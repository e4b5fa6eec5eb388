//! Autoconfig as the accountant runs it, and what it found (pools, what feeds them, who enforces
//! them, the heaps the kernel charges to memcg itself). The dependency is one-way: the accountant
//! calls [`crate::autoconfig`], which knows nothing of the accountant. A pass does its file I/O
//! (probe, kernel writes) without the ledger lock; only its ledger events are computed, applied
//! and journaled under it.

use std::sync::Arc;

use log::warn;

use super::cgroup_path::owner_level;
use super::Accountant;
use crate::autoconfig::{Autoconfig, PoolSummary, Report, Scope};
use crate::error::Result;
use crate::identity::Process;
use crate::ledger::MEMCG_POOL;

/// One pool as autoconfig found it: what feeds it and who enforces its limits.
pub type RegionSummary = PoolSummary;

impl Accountant {
    /// Configures each owner cgroup with `autoconfig` before its first charge.
    pub fn set_autoconfig(&self, autoconfig: Arc<Autoconfig>) {
        let _ = self.autoconfig.set(autoconfig);
    }

    /// Makes sure the owner's cgroup has its class limits before it is charged: that cgroup only,
    /// never another app's.
    pub(super) fn prepare_owner(&self, owner: &Process) {
        let Some(autoconfig) = self.autoconfig.get() else { return };
        let level = owner_level(&owner.cgroup);
        let first = {
            let mut configured = self.configured.lock().unwrap_or_else(|p| p.into_inner());
            !configured.contains(level) && configured.insert(level.to_string())
        };
        if first {
            match self.autoconfigure(autoconfig, Scope::Owners(vec![level.to_string()]), false) {
                Ok(report) if !report.is_clean() => warn!("autoconfig for a new owner:\n{report}"),
                Ok(_) => {}
                Err(e) => warn!("autoconfig for a new owner: {e}"),
            }
        }
    }

    /// One autoconfig pass for the owners in `scope`: the probe and the kernel writes without the
    /// ledger lock, then the ledger's share applied and journaled under it. After a real run, the
    /// kernel-charged heaps are recorded, and the pools (with every kernel write still failing)
    /// for `regions` queries.
    pub fn autoconfigure(&self, autoconfig: &Autoconfig, scope: Scope, dry_run: bool) -> Result<Report> {
        let known = self.with_ledger(|l| l.cgroups());
        let pass = autoconfig.pass(&known, scope, dry_run);
        let (events, refused) = self.with_ledger_mut(|ledger| {
            let events = pass.ledger_events(ledger);
            if dry_run {
                return Ok(((events, Vec::new()), Vec::new()));
            }
            let (mut applied, mut refused) = (Vec::new(), Vec::new());
            for event in events {
                match ledger.apply(&event) {
                    Ok(()) => applied.push(event),
                    Err(e) => {
                        refused.push(format!("ledger refused {}: {e}", crate::autoconfig::apply::describe(&event)))
                    }
                }
            }
            Ok(((applied.clone(), refused), applied))
        })?;
        if dry_run {
            return Ok(pass.report(events, refused));
        }
        *self.kernel_charged.write().unwrap_or_else(|p| p.into_inner()) =
            pass.kernel_charged_heaps().iter().cloned().collect();
        let report = pass.report(events, refused);
        self.set_regions(autoconfig.pools(&report));
        Ok(report)
    }

    /// Whether the kernel charges this heap's buffers to the allocating task's memcg (the system
    /// heap with `dma_heap.mem_accounting=1`), as autoconfig last found; false before it ran.
    pub fn kernel_charges_heap(&self, heap: &str) -> bool {
        self.kernel_charged.read().unwrap_or_else(|p| p.into_inner()).contains(heap)
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
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use super::*;
    use crate::accountant::Config;
    use crate::autoconfig::ProbeRoots;
    use crate::journal::Durability;
    use crate::policy::Policy;

    const MIB: u64 = 1 << 20;

    fn write(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    /// A small phone: memory controller, the system heap charged by the kernel, a display CMA area.
    fn device(root: &Path) -> ProbeRoots {
        write(root, "sys/fs/cgroup/cgroup.controllers", "cpu memory\n");
        write(root, "sys/fs/cgroup/cgroup.subtree_control", "cpu memory\n");
        for f in ["max", "low", "min"] {
            write(root, &format!("sys/fs/cgroup/uid_10001/memory.{f}"), if f == "max" { "max\n" } else { "0\n" });
        }
        write(root, "proc/meminfo", "MemTotal:        4194304 kB\nSwapTotal:             0 kB\n");
        write(root, "sys/module/dma_heap/parameters/mem_accounting", "Y\n");
        write(root, "sys/kernel/mm/cma/display/total_pages", "65536\n");
        write(root, "dev/dma_heap/system", "");
        write(root, "dev/dma_heap/display", "");
        ProbeRoots::under(root)
    }

    #[test]
    fn autoconfigure_journals_its_limits_and_keeps_runtime_findings_out_of_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        let roots = device(dir.path());
        let config = Config {
            proc_root: roots.proc.clone(),
            cgroup_root: Some(roots.cgroup.clone()),
            state_dir: Some(dir.path().join("state")),
            durability: Durability::None,
            pidfds: false,
            scan: crate::kernel::ScanChoice::Procfs,
        };
        let accountant = Accountant::open(config.clone(), Policy::embedded_default()).unwrap();
        let autoconfig = Autoconfig::new(roots, accountant.policy().clone(), config.state_dir.clone());
        let dry = accountant.autoconfigure(&autoconfig, Scope::All, true).unwrap();
        assert!(dry.applied.as_ref().unwrap().dry_run);
        assert!(accountant.regions().iter().all(|r| r.why == "autoconfig has not run"), "a dry run records nothing");
        assert!(!accountant.kernel_charges_heap("system"));

        let report = accountant.autoconfigure(&autoconfig, Scope::All, false).unwrap();
        assert!(report.is_clean(), "{report}");
        assert!(accountant.kernel_charges_heap("system"), "found by autoconfig, kept by the accountant");
        let display = accountant.regions().into_iter().find(|r| r.name == "cma/display").unwrap();
        assert_eq!((display.capacity, display.enforced_by.as_str()), (256 * MIB, "service"));
        drop(accountant);

        // The ledger's limits were journaled: a restarted service has them before autoconfig runs.
        let reopened = Accountant::open(config, Policy::embedded_default()).unwrap();
        let max = reopened.with_ledger(|l| l.counter("/uid_10001", "cma/display").map(|c| c.max));
        assert_eq!(max, Some(64 * MIB));
        assert!(!reopened.kernel_charges_heap("system"), "runtime findings are not configuration");
    }
}
