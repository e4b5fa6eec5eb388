//! What autoconfig found (pools, what feeds them, who enforces them) and its hook: autoconfig runs
//! when a charge meets an owner cgroup it has not configured yet.

use super::cgroup_path::owner_level;
use super::Accountant;
use crate::identity::Process;
use crate::ledger::MEMCG_POOL;

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

/// Called with the accountant when an owner cgroup shows up that autoconfig has not seen.
pub type NewOwnerHook = Box<dyn Fn(&Accountant) + Send + Sync>;

impl Accountant {
    pub fn set_new_owner_hook(&self, hook: NewOwnerHook) {
        let _ = self.new_owner_hook.set(hook);
    }

    /// Makes sure the owner's cgroup has its class limits before it is charged.
    pub(super) fn prepare_owner(&self, owner: &Process) {
        let Some(hook) = self.new_owner_hook.get() else { return };
        let level = owner_level(&owner.cgroup).to_string();
        if self.configured.lock().unwrap_or_else(|p| p.into_inner()).insert(level) {
            hook(self);
        }
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
