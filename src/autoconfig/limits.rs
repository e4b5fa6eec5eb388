//! Limit computation: from the topology and the policy, the limits of every owner class in every
//! pool, and who enforces each. Deterministic: the same inputs give the same sorted plan.
//!
//! Where limits go: Android puts every process in `/uid_<uid>/pid_<pid>`, so limits are set on
//! each owner's `/uid_<uid>` cgroup and cover all its processes. The plan holds the class-level
//! defaults (cgroup [`OWNER_TEMPLATE`]) and their instances for the owner cgroups that exist;
//! an owner that appears later gets [`Plan::for_cgroup`].
//!
//! Pools:
//! - `memory`: the kernel's memory.max/low/min of the owner (its whole memory);
//! - `memcg`: the ledger's count of the owner's dma-buf bytes in RAM (system heap, CMA, evicted
//!   vram), capped at the class's `dmabuf_max`;
//! - each dmem region: max/low/min (kernel files or the ledger) and pin.max (always the ledger).
//!
//! Corrections:
//! - when the kernel charges system-heap buffers to memcg (`mem_accounting`), memory.max is the
//!   class's own memory plus its dma-buf budget, so those buffers have room; otherwise memory.max
//!   is the own memory alone and the ledger holds the dma-buf budget;
//! - vram: a vram max follows the region (the class's share of it), also where VRAM is larger
//!   than RAM. Evicted buffers land in the owner's memcg, so what may be evicted is bounded
//!   instead: an owner's *eviction budget* is its dma-buf budget in memcg (or RAM + swap when
//!   that is unlimited); the ledger's eviction advice never names a buffer whose owner's memcg
//!   could not take it, and the kernel refuses an eviction past the owner's memory.max, so the
//!   rest of its vram stays resident and reclaim moves on to other owners (README, "Eviction");
//! - foreground protection: an app owner in the foreground (a process at Android's
//!   `FOREGROUND_APP_ADJ`, `oom_score_adj` 0 or below: the top app) gets its vram regions' `low`
//!   raised to its `max`, so the kernel's reclaim and a driver's eviction take from background
//!   apps first; it drops back to the class's `low` when the app leaves the foreground (the
//!   service re-reads `oom_score_adj` after each periodic reconcile). `low`, not `min`: when only
//!   the foreground app is left to evict, eviction still proceeds;
//! - low, min and pin.max are clamped to max;
//! - shares are rounded down to whole pages of the kernel's page size (the probe's), and memory.*
//!   values always: the kernel keeps memory limits in pages and reads them back rounded down, so
//!   a value rounded with another page size would be rewritten on every run.

use serde::{Deserialize, Serialize};

use super::topology::{Enforcer, Owner, Region, Topology, OWNER_TEMPLATE};
use crate::ledger::{HeapClass, LimitKind, MEMCG_POOL, UNLIMITED};
use crate::policy::{format_bytes, Amount, OwnerClass, Policy};

/// The plan's name for the kernel's memory.* files of an owner.
pub const MEMORY_POOL: &str = "memory";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitEntry {
    pub owner: OwnerClass,
    pub cgroup: String,
    pub pool: String,
    pub kind: LimitKind,
    pub value: u64,
    pub enforced_by: Enforcer,
    /// The policy's amount as written (`25%`, `16 MiB`, `max`; `50% + 25%` for memory.max
    /// with the dma-buf budget added).
    pub policy: String,
    /// Set when the value differs from the policy's amount, saying why (cap, clamp, budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adjusted: Option<String>,
    /// The whole derivation: the value's origin and who enforces it.
    pub why: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Per owner class, on [`OWNER_TEMPLATE`].
    pub defaults: Vec<LimitEntry>,
    /// The defaults instantiated for each owner cgroup of the topology.
    pub entries: Vec<LimitEntry>,
    pub notes: Vec<String>,
}

fn kind_order(kind: LimitKind) -> usize {
    LimitKind::ALL.iter().position(|k| *k == kind).unwrap_or(usize::MAX)
}

/// memory first, then memcg, then regions by name.
fn pool_order(pool: &str) -> (u8, &str) {
    match pool {
        MEMORY_POOL => (0, ""),
        MEMCG_POOL => (1, ""),
        region => (2, region),
    }
}

fn sort(entries: &mut [LimitEntry]) {
    entries.sort_by(|a, b| {
        (a.cgroup.as_str(), a.owner, pool_order(&a.pool), kind_order(a.kind)).cmp(&(
            b.cgroup.as_str(),
            b.owner,
            pool_order(&b.pool),
            kind_order(b.kind),
        ))
    });
}

fn saturating(a: u64, b: u64) -> u64 {
    if a == UNLIMITED || b == UNLIMITED {
        UNLIMITED
    } else {
        a.saturating_add(b).min(UNLIMITED - 1)
    }
}

/// How an amount became bytes: `25% of 256 MiB`, `16 MiB`, `no limit`.
fn explain(amount: Amount, base: Option<u64>, of: &str) -> String {
    match amount {
        Amount::Max => "no limit".into(),
        Amount::Bytes(b) => format!("policy {}", format_bytes(b)),
        Amount::Ppm(_) => format!("{amount} of {of} {}", base.map(format_bytes).unwrap_or_else(|| "?".into())),
    }
}

/// The kernel keeps memory.* limits in whole pages and reads them back rounded down; writing
/// them rounded keeps a second run from rewriting them.
fn page_floor(v: u64, page: u64) -> u64 {
    if v == UNLIMITED || page == 0 {
        v
    } else {
        v / page * page
    }
}

/// An amount in bytes: a share (below 100%) rounded down to whole pages, bytes as written.
fn resolve(amount: Amount, capacity: Option<u64>, page: u64) -> Option<u64> {
    let v = amount.resolve(capacity)?;
    Some(match amount {
        Amount::Ppm(_) if Some(v) != capacity => page_floor(v, page),
        _ => v,
    })
}

/// An owner class's dma-buf budget in RAM: its eviction budget (evicted vram lands there).
struct Budget {
    bytes: Option<u64>,
    amount: Amount,
    /// RAM + swap: the bound when the budget is unlimited.
    ram_swap: Option<u64>,
}

/// Android's `ProcessList.FOREGROUND_APP_ADJ`: the top app's `oom_score_adj`.
pub const FOREGROUND_APP_ADJ: i32 = 0;

/// An app owner with a process at or below [`FOREGROUND_APP_ADJ`].
pub fn is_foreground(o: &Owner) -> bool {
    o.class == OwnerClass::App && o.oom_score_adj.is_some_and(|adj| adj <= FOREGROUND_APP_ADJ)
}

/// Raises each vram region's `low` among one owner's `entries` to that region's `max`.
fn protect_foreground(entries: &mut [LimitEntry], vram: &[&str], adj: i32) {
    let max_of = |entries: &[LimitEntry], pool: &str| {
        entries.iter().find(|e| e.pool == pool && e.kind == LimitKind::Max).map(|e| e.value)
    };
    for i in 0..entries.len() {
        let e = &entries[i];
        if e.kind != LimitKind::Low || !vram.contains(&e.pool.as_str()) {
            continue;
        }
        if let Some(max) = max_of(entries, &e.pool).filter(|m| *m > e.value) {
            let e = &mut entries[i];
            e.value = max;
            e.adjusted = Some(format!(
                "foreground (oom_score_adj {adj}): raised to max so reclaim takes from background apps first"
            ));
        }
    }
}

/// A protection or pin limit above max means nothing more than max.
fn clamp(v: u64, max: Option<u64>) -> (u64, Option<String>) {
    match max {
        Some(m) if v > m => (m, Some(format!("clamped to max {}", format_bytes(m)))),
        _ => (v, None),
    }
}

impl Plan {
    pub fn compute(topology: &Topology, policy: &Policy) -> Plan {
        let mut plan = Plan::default();
        for class in OwnerClass::ALL {
            plan.class_defaults(topology, policy, class);
        }
        sort(&mut plan.defaults);
        let vram: Vec<&str> =
            topology.regions.iter().filter(|r| r.kind == HeapClass::Vram).map(|r| r.name.as_str()).collect();
        plan.instantiate(&topology.owners, &vram);
        plan.cma_note(topology);
        plan
    }

    /// The defaults of `class` applied to one owner cgroup (a `/uid_<uid>` that appeared after
    /// autoconfig ran).
    pub fn for_cgroup(&self, cgroup: &str, class: OwnerClass) -> Vec<LimitEntry> {
        self.defaults
            .iter()
            .filter(|e| e.owner == class)
            .map(|e| LimitEntry { cgroup: cgroup.to_string(), ..e.clone() })
            .collect()
    }

    /// Replaces `entries` with the defaults instantiated for `owners`; foreground app owners get
    /// their `vram` regions' `low` raised to their `max`.
    pub fn instantiate(&mut self, owners: &[Owner], vram: &[&str]) {
        self.entries = owners
            .iter()
            .flat_map(|o| {
                let mut entries = self.for_cgroup(&o.cgroup, o.class);
                if let Some(adj) = o.oom_score_adj.filter(|_| is_foreground(o)) {
                    protect_foreground(&mut entries, vram, adj);
                }
                entries
            })
            .collect();
        sort(&mut self.entries);
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        owner: OwnerClass,
        pool: &str,
        kind: LimitKind,
        value: u64,
        enforced_by: Enforcer,
        policy: String,
        adjusted: Option<String>,
        why: String,
    ) {
        let why = match &adjusted {
            Some(a) => format!("{why}; {a}"),
            None => why,
        };
        self.defaults.push(LimitEntry {
            owner,
            cgroup: OWNER_TEMPLATE.into(),
            pool: pool.into(),
            kind,
            value,
            enforced_by,
            policy,
            adjusted,
            why,
        });
    }

    fn class_defaults(&mut self, topology: &Topology, policy: &Policy, class: OwnerClass) {
        let memcg = &topology.memcg;
        let page = topology.page_size;
        let m = policy.memcg_limits(class);
        let ram = memcg.mem_total;
        let dmabuf = resolve(m.dmabuf_max, ram, page);
        let own = resolve(m.max, ram, page);
        let kernel_sys = !memcg.kernel_charged_heaps.is_empty();

        // memory.max/low/min: the kernel's files.
        let mem_by = memcg.memory_enforced_by;
        let mem_why = if mem_by == Enforcer::Nobody {
            "no memory controller: not written"
        } else {
            "the kernel enforces memory.*"
        };
        let mut mem_max = None;
        match (own, dmabuf) {
            (Some(own), Some(d)) => {
                let (value, policy_text, adjusted) = if kernel_sys && own != UNLIMITED {
                    let adjusted = format!(
                        "dma-buf budget {} added: the kernel charges {} to memcg",
                        explain(m.dmabuf_max, ram, "RAM"),
                        memcg.kernel_charged_heaps.join(", ")
                    );
                    (saturating(own, d), format!("{} + {}", m.max, m.dmabuf_max), Some(adjusted))
                } else {
                    (own, m.max.to_string(), None)
                };
                let value = page_floor(value, page);
                mem_max = Some(value);
                let why = format!("own memory {}; {mem_why}", explain(m.max, ram, "RAM"));
                self.push(class, MEMORY_POOL, LimitKind::Max, value, mem_by, policy_text, adjusted, why);
            }
            _ => self.notes.push(format!("{class}: memory.max needs MemTotal (policy {} + {})", m.max, m.dmabuf_max)),
        }
        for (kind, amount) in [(LimitKind::Low, m.low), (LimitKind::Min, m.min)] {
            if let Some(v) = resolve(amount, ram, page) {
                let (v, adjusted) = clamp(page_floor(v, page), mem_max);
                self.push(
                    class,
                    MEMORY_POOL,
                    kind,
                    v,
                    mem_by,
                    amount.to_string(),
                    adjusted,
                    format!("{}; {mem_why}", explain(amount, ram, "RAM")),
                );
            }
        }

        // The ledger's memcg pool: the dma-buf budget.
        if let Some(d) = dmabuf {
            let why = format!("dma-buf budget {}; {}", explain(m.dmabuf_max, ram, "RAM"), memcg.why);
            self.push(class, MEMCG_POOL, LimitKind::Max, d, memcg.enforced_by, m.dmabuf_max.to_string(), None, why);
        }

        // dmem regions.
        let swap = memcg.swap_total.unwrap_or(0);
        for r in &topology.regions {
            if !r.present || (r.heaps.is_empty() && r.enforced_by == Enforcer::Nobody) {
                continue;
            }
            let budget = Budget { bytes: dmabuf, amount: m.dmabuf_max, ram_swap: ram.map(|t| saturating(t, swap)) };
            self.region_defaults(r, policy, class, &budget, page);
        }
    }

    fn region_defaults(&mut self, r: &Region, policy: &Policy, class: OwnerClass, budget: &Budget, page: u64) {
        let Budget { bytes: dmabuf, amount: dmabuf_amount, ram_swap } = *budget;
        let l = policy.dmem_limits(r.class, class);
        let cap = r.capacity;
        let of = format!("{} region", r.class);
        let Some(max) = resolve(l.max, cap, page) else { return };
        let (by, pin_by) = match r.enforced_by {
            Enforcer::Kernel => (Enforcer::Kernel, Enforcer::Service),
            other => (other, other),
        };
        let why = |amount: Amount, enforcement: &str| format!("{}; {enforcement}", explain(amount, cap, &of));
        let mut max_why = why(l.max, &r.why);
        if r.kind == HeapClass::Vram {
            let evictable = match dmabuf {
                Some(d) if d != UNLIMITED => Some(format!(
                    "the dma-buf budget {} ({})",
                    format_bytes(d),
                    explain(dmabuf_amount, ram_swap, "RAM")
                )),
                _ => ram_swap.map(|b| format!("RAM + swap {}", format_bytes(b))),
            };
            if let Some(evictable) = evictable {
                max_why.push_str(&format!("; eviction budget: {evictable} in memcg, the rest stays resident"));
            }
        }
        self.push(class, &r.name, LimitKind::Max, max, by, l.max.to_string(), None, max_why);
        for (kind, amount) in [(LimitKind::Low, l.low), (LimitKind::Min, l.min)] {
            if let Some(v) = resolve(amount, cap, page) {
                let (v, adjusted) = clamp(v, Some(max));
                self.push(class, &r.name, kind, v, by, amount.to_string(), adjusted, why(amount, &r.why));
            }
        }
        // Pins: CMA buffers are pinned for life, vram ones on request; no kernel file exists.
        if matches!(r.kind, HeapClass::Cma | HeapClass::Vram) {
            if let Some(v) = resolve(l.pin_max, cap, page) {
                // `max` means no pin limit of its own; anything else above max is clamped.
                let (v, adjusted) = if v == UNLIMITED { (v, None) } else { clamp(v, Some(max)) };
                let pin_why = if pin_by == Enforcer::Nobody {
                    r.why.as_str()
                } else {
                    "no kernel pin limit: the ledger enforces"
                };
                self.push(
                    class,
                    &r.name,
                    LimitKind::PinMax,
                    v,
                    pin_by,
                    l.pin_max.to_string(),
                    adjusted,
                    why(l.pin_max, pin_why),
                );
            }
        }
    }

    /// Several CMA regions share one memcg budget: say so when an app's CMA maxima exceed it.
    fn cma_note(&mut self, topology: &Topology) {
        let cma: Vec<&str> = topology
            .regions
            .iter()
            .filter(|r| r.kind == HeapClass::Cma && !r.heaps.is_empty())
            .map(|r| r.name.as_str())
            .collect();
        if cma.len() < 2 {
            return;
        }
        for class in OwnerClass::ALL {
            let find = |pool: &str| {
                self.defaults
                    .iter()
                    .find(|e| e.owner == class && e.pool == pool && e.kind == LimitKind::Max)
                    .map(|e| e.value)
            };
            let Some(budget) = find(MEMCG_POOL).filter(|b| *b != UNLIMITED) else { continue };
            let sum = cma.iter().filter_map(|r| find(r)).fold(0u64, saturating);
            if sum > budget {
                self.notes.push(format!(
                    "{class}: CMA maxima ({}) sum to {} > dma-buf budget {}: the memcg budget binds first",
                    cma.join(", "),
                    format_bytes(sum),
                    format_bytes(budget)
                ));
            }
        }
    }
}
