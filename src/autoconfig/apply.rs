//! Apply: write the plan's kernel limits to cgroupfs and turn the rest into ledger events.
//!
//! Idempotent: every file is read first and written only when its value differs, so a second run
//! changes nothing and a run after the kernel changed (dmem appeared) converges: limits move from
//! the ledger to the kernel files and the ledger's copies are reset, so nothing is enforced twice.
//! A dry run reads, compares and reports, and writes nothing (not even the ledger).
//! Failures (a refused write, a ledger refusal) are collected; the rest still applies.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::limits::{Plan, MEMORY_POOL};
use super::topology::{Enforcer, Topology};
use crate::kernel::cgroupfs::{CgroupFs, DmemFile};
use crate::kernel::error::KernelError;
use crate::ledger::{Counter, Event, HeapSpec, Ledger, LimitKind, MEMCG_POOL};
use crate::policy::{format_bytes, Mode};

/// One cgroup file that was (or in a dry run would be) written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChange {
    /// The file, relative to the cgroup root (`/uid_10001/dmem.max`).
    pub file: String,
    /// What it held for this key before, when readable.
    pub from: Option<String>,
    /// The line written.
    pub to: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub dry_run: bool,
    pub changes: Vec<FileChange>,
    /// Ledger events applied (in a dry run: that would be applied).
    pub events: Vec<Event>,
    pub failures: Vec<String>,
}

fn limit_text(v: u64) -> String {
    if v == crate::ledger::UNLIMITED {
        "max".into()
    } else {
        v.to_string()
    }
}

fn dmem_file(kind: LimitKind) -> Option<DmemFile> {
    match kind {
        LimitKind::Max => Some(DmemFile::Max),
        LimitKind::Low => Some(DmemFile::Low),
        LimitKind::Min => Some(DmemFile::Min),
        LimitKind::PinMax => None,
    }
}

fn kind_file(kind: LimitKind) -> &'static str {
    match kind {
        LimitKind::Max => "max",
        LimitKind::Low => "low",
        LimitKind::Min => "min",
        LimitKind::PinMax => "pin.max",
    }
}

/// A sortable key for a limit kind (LimitKind is not Ord).
fn kind_key(kind: LimitKind) -> usize {
    LimitKind::ALL.iter().position(|k| *k == kind).unwrap_or(usize::MAX)
}

/// Reads each kernel file once per run.
#[derive(Default)]
struct Current {
    memory: BTreeMap<(String, usize), Option<u64>>,
    dmem: BTreeMap<(String, usize), Option<BTreeMap<String, u64>>>,
}

impl Current {
    fn memory(&mut self, fs: &CgroupFs, cgroup: &str, kind: LimitKind) -> Option<u64> {
        *self
            .memory
            .entry((cgroup.to_string(), kind_key(kind)))
            .or_insert_with(|| fs.read_memory_limit(cgroup, kind).ok())
    }

    fn dmem(&mut self, fs: &CgroupFs, cgroup: &str, kind: LimitKind, region: &str) -> Option<u64> {
        let file = dmem_file(kind)?;
        self.dmem
            .entry((cgroup.to_string(), kind_key(kind)))
            .or_insert_with(|| fs.dmem(cgroup, file).ok())
            .as_ref()?
            .get(region)
            .copied()
    }
}

/// Writes the kernel's share of the plan; returns what changed.
fn apply_kernel(fs: &CgroupFs, topology: &Topology, plan: &Plan, dry_run: bool, out: &mut Applied) {
    if !topology.controllers_to_enable.is_empty() {
        let names: Vec<&str> = topology.controllers_to_enable.iter().map(String::as_str).collect();
        let from = fs.subtree_control("/").ok().map(|v| v.join(" "));
        let to = names.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(" ");
        record(out, dry_run, FileChange { file: "/cgroup.subtree_control".into(), from, to }, || {
            fs.enable_controllers("/", &names)
        });
    }
    let mut current = Current::default();
    for e in plan.entries.iter().filter(|e| e.enforced_by == Enforcer::Kernel && e.pool != MEMCG_POOL) {
        let (now, file, line) = if e.pool == MEMORY_POOL {
            (current.memory(fs, &e.cgroup, e.kind), format!("memory.{}", kind_file(e.kind)), limit_text(e.value))
        } else {
            (
                current.dmem(fs, &e.cgroup, e.kind, &e.pool),
                format!("dmem.{}", kind_file(e.kind)),
                format!("{} {}", e.pool, limit_text(e.value)),
            )
        };
        if now == Some(e.value) {
            continue;
        }
        let from =
            now.map(|v| if e.pool == MEMORY_POOL { limit_text(v) } else { format!("{} {}", e.pool, limit_text(v)) });
        let change = FileChange { file: format!("{}/{file}", e.cgroup.trim_end_matches('/')), from, to: line };
        record(out, dry_run, change, || {
            if e.pool == MEMORY_POOL {
                fs.write_memory_limit(&e.cgroup, e.kind, e.value)
            } else {
                fs.write_dmem_limit(&e.cgroup, &e.pool, e.kind, e.value)
            }
        });
    }
}

fn record(out: &mut Applied, dry_run: bool, change: FileChange, write: impl FnOnce() -> Result<(), KernelError>) {
    if dry_run {
        out.changes.push(change);
        return;
    }
    match write() {
        Ok(()) => out.changes.push(change),
        Err(e) => out.failures.push(e.to_string()),
    }
}

/// The ledger events that bring the ledger in line with the topology and plan.
fn ledger_events(topology: &Topology, plan: &Plan, ledger: &Ledger) -> Vec<Event> {
    let mut events = Vec::new();
    let mut pools: BTreeSet<String> = ledger.pools().map(|(_, name, _)| name.to_string()).collect();
    let capacity = |name: &str| ledger.pools().find(|(_, n, _)| *n == name).map(|(_, _, c)| c);

    if let Some(total) = topology.memcg.mem_total {
        if capacity(MEMCG_POOL) != Some(total) {
            events.push(Event::RegionAdded { region: MEMCG_POOL.into(), capacity: total });
        }
    }
    for r in topology.regions.iter().filter(|r| !r.heaps.is_empty()) {
        let now = capacity(&r.name);
        let want = match (now, r.capacity) {
            (None, c) => Some(c.unwrap_or(0)),
            (Some(old), Some(c)) if old != c => Some(c),
            _ => None,
        };
        if let Some(capacity) = want {
            events.push(Event::RegionAdded { region: r.name.clone(), capacity });
            pools.insert(r.name.clone());
        }
    }
    for h in topology.heaps.iter().filter(|h| h.declarable()) {
        let spec = HeapSpec { name: h.name.clone(), class: h.class, region: h.region.clone() };
        let enforce = h.mode == Mode::Enforce;
        if ledger.heap(&h.name) != Some((&spec, enforce)) {
            events.push(Event::HeapAdded { heap: spec, enforce });
        }
    }

    // Limits the ledger keeps: service-enforced, and observed ones (counted in max_events).
    let mut kept: BTreeSet<(&str, &str, usize)> = BTreeSet::new();
    let ledger_limit =
        |cgroup: &str, pool: &str, kind: LimitKind| ledger.counter(cgroup, pool).unwrap_or_default().limit(kind);
    for e in plan
        .entries
        .iter()
        .filter(|e| e.enforced_by != Enforcer::Kernel && e.pool != MEMORY_POOL && pools.contains(&e.pool))
    {
        kept.insert((&e.cgroup, &e.pool, kind_key(e.kind)));
        if ledger_limit(&e.cgroup, &e.pool, e.kind) != e.value {
            events.push(Event::LimitSet {
                cgroup: e.cgroup.clone(),
                pool: e.pool.clone(),
                kind: e.kind,
                value: e.value,
            });
        }
    }
    // Pools the kernel now enforces: the ledger's copies go back to the defaults.
    let kernel: BTreeSet<(&str, usize)> = plan
        .defaults
        .iter()
        .filter(|e| e.enforced_by == Enforcer::Kernel && e.pool != MEMORY_POOL)
        .map(|e| (e.pool.as_str(), kind_key(e.kind)))
        .collect();
    if !kernel.is_empty() {
        let default = Counter::default();
        for cgroup in ledger.cgroups() {
            for &(pool, k) in &kernel {
                let kind = LimitKind::ALL[k];
                if !kept.contains(&(cgroup.as_str(), pool, k))
                    && ledger_limit(&cgroup, pool, kind) != default.limit(kind)
                {
                    events.push(Event::LimitSet {
                        cgroup: cgroup.clone(),
                        pool: pool.into(),
                        kind,
                        value: default.limit(kind),
                    });
                }
            }
        }
    }
    events
}

/// Applies `plan`: kernel files through `cgroupfs` (none without a cgroup v2 root), the rest as
/// ledger events. With `dry_run`, nothing is written and the ledger is left untouched.
pub fn apply(
    cgroupfs: Option<&CgroupFs>,
    topology: &Topology,
    plan: &Plan,
    ledger: &mut Ledger,
    dry_run: bool,
) -> Applied {
    let mut out = Applied { dry_run, ..Applied::default() };
    if let Some(fs) = cgroupfs {
        apply_kernel(fs, topology, plan, dry_run, &mut out);
    }
    for event in ledger_events(topology, plan, ledger) {
        if dry_run {
            out.events.push(event);
            continue;
        }
        match ledger.apply(&event) {
            Ok(()) => out.events.push(event),
            Err(e) => out.failures.push(format!("ledger refused {}: {e}", describe(&event))),
        }
    }
    out
}

/// An event in words, for failures and the report.
pub fn describe(event: &Event) -> String {
    match event {
        Event::RegionAdded { region, capacity } => format!("region {region} capacity {}", format_bytes(*capacity)),
        Event::HeapAdded { heap, enforce } => format!(
            "heap {} ({}{}) {}",
            heap.name,
            heap.class.name(),
            heap.region.as_deref().map(|r| format!(" in {r}")).unwrap_or_default(),
            if *enforce { "enforce" } else { "observe" }
        ),
        Event::LimitSet { cgroup, pool, kind, value } => {
            format!("{cgroup} {pool} {} = {}", kind.name(), format_bytes(*value))
        }
        other => format!("{other:?}"),
    }
}
