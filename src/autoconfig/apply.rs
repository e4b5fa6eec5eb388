//! Apply: write the plan's kernel limits to cgroupfs and turn the rest into ledger events.
//!
//! Kernel files and the ledger are applied in two steps so that no file is touched under the
//! ledger lock: [`apply_kernel`] reads and writes cgroup files (no ledger), then
//! [`ledger_events`] computes the ledger's share from its outcome (pure).
//!
//! Only autoconfig's own limits are written ([`super::written`]): a file at the kernel's default,
//! or still holding what autoconfig last wrote, is changed to the plan's value; a value another
//! component set is left alone and reported. A limit the policy does not set (`max` for max, 0 for
//! low and min: the kernel's defaults) is never written, except to undo autoconfig's own earlier
//! write.
//!
//! Idempotent: every file is read first and written only when its value differs (a value the
//! kernel rounded from autoconfig's write counts as equal), so a second run changes nothing.
//! When a pool becomes kernel-enforced, the ledger's copies of its limits are reset only where the
//! kernel now holds a limit; a write that failed leaves that limit with the ledger, which keeps
//! enforcing it, and the failure is reported with who enforces it instead.
//! A dry run reads, compares and reports, and writes nothing (not even the ledger).
//!
//! Lowering a `dmem.max` below the pool's usage makes a 7.3 kernel call the region's reclaim
//! callback (the driver evicts) before the write returns; what cannot move (pinned buffers, a
//! region without a callback) stays above the limit. Such a write is repeated at most
//! [`MAX_LIMIT_WRITES`] times while usage stays above it or the kernel answers EBUSY, and the
//! report says what was reclaimed and what is left over.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::limits::{LimitEntry, MEMORY_POOL};
use super::topology::{Enforcer, Topology};
use super::written::{Write, Writes};
use crate::kernel::cgroupfs::{CgroupFs, DmemFile};
use crate::kernel::error::KernelError;
use crate::ledger::{Counter, Event, HeapSpec, Ledger, LimitKind, MEMCG_POOL, UNLIMITED};
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

/// A kernel write that failed, and who enforces that limit instead.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedWrite {
    pub file: String,
    pub to: String,
    pub error: String,
    /// `service` for dmem limits (the ledger keeps them), `nobody` for memory.* (the ledger has no
    /// copy of an owner's own memory).
    pub enforced_by: Enforcer,
}

/// A `dmem.max` written below the pool's usage: what the kernel's reclaim freed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reclaim {
    /// The file and region (`/uid_10001/dmem.max drm/0000:03:00.0/vram`).
    pub file: String,
    pub limit: u64,
    pub usage_before: u64,
    pub usage_after: u64,
    /// Writes made (the first and the bounded retries).
    pub writes: u32,
}

/// How often a `dmem.max` is written while usage stays above it (each write runs the reclaim
/// callback again; 7.3 itself retries a callback that makes no progress 16 times per write).
pub const MAX_LIMIT_WRITES: u32 = 3;

/// A limit another component set: autoconfig did not write it and leaves it as it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftAlone {
    pub file: String,
    /// What the file holds.
    pub holds: String,
    /// What the policy would have written.
    pub policy: String,
    pub why: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub dry_run: bool,
    pub changes: Vec<FileChange>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_alone: Vec<LeftAlone>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_writes: Vec<FailedWrite>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reclaims: Vec<Reclaim>,
    /// Ledger events applied (in a dry run: that would be applied).
    pub events: Vec<Event>,
    /// Refused ledger events and other failures.
    pub failures: Vec<String>,
}

/// A limit of one owner cgroup: (cgroup, pool, kind as its index in `LimitKind::ALL`).
pub type LimitId = (String, String, usize);

/// What [`apply_kernel`] found and did: the input of [`ledger_events`].
#[derive(Clone, Debug, Default)]
pub struct KernelOutcome {
    pub applied: Applied,
    /// Kernel-enforced limits the kernel holds now (written, already equal, or another
    /// component's value): the ledger's copies go back to the defaults.
    pub held: BTreeSet<LimitId>,
    /// Kernel-enforced limits whose write failed: the ledger keeps enforcing them.
    pub failed: BTreeMap<LimitId, FailedWrite>,
}

fn limit_text(v: u64) -> String {
    if v == UNLIMITED {
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

/// What a limit file holds when nobody set it: no limit, no protection.
fn kernel_default(kind: LimitKind) -> u64 {
    match kind {
        LimitKind::Max | LimitKind::PinMax => UNLIMITED,
        LimitKind::Low | LimitKind::Min => 0,
    }
}

/// The file of a plan entry and its key among autoconfig's writes.
fn file_of(e: &LimitEntry) -> (String, String) {
    let base = e.cgroup.trim_end_matches('/');
    if e.pool == MEMORY_POOL {
        let file = format!("{base}/memory.{}", kind_file(e.kind));
        (file.clone(), file)
    } else {
        let file = format!("{base}/dmem.{}", kind_file(e.kind));
        (file.clone(), format!("{file} {}", e.pool))
    }
}

fn read_limit(fs: &CgroupFs, e: &LimitEntry) -> Result<u64, KernelError> {
    if e.pool == MEMORY_POOL {
        fs.read_memory_limit(&e.cgroup, e.kind)
    } else {
        let file = dmem_file(e.kind).ok_or(KernelError::NoKernelFile(e.kind.name()))?;
        // A region missing from the file reads as its default (the kernel lists every region).
        Ok(fs.dmem(&e.cgroup, file)?.get(&e.pool).copied().unwrap_or(kernel_default(e.kind)))
    }
}

fn write_limit(fs: &CgroupFs, e: &LimitEntry, value: u64) -> Result<(), KernelError> {
    if e.pool == MEMORY_POOL {
        fs.write_memory_limit(&e.cgroup, e.kind, value)
    } else {
        fs.write_dmem_limit(&e.cgroup, &e.pool, e.kind, value)
    }
}

fn dmem_usage(fs: &CgroupFs, e: &LimitEntry) -> Option<u64> {
    fs.dmem(&e.cgroup, DmemFile::Current).ok().map(|m| m.get(&e.pool).copied().unwrap_or(0))
}

/// Writes `e`; a `dmem.max` below usage is written again (bounded) while the kernel answers
/// EBUSY or the reclaim it ran left usage above it, and what was reclaimed is returned.
fn write_reclaiming(fs: &CgroupFs, e: &LimitEntry, key: &str) -> (Result<(), KernelError>, Option<Reclaim>) {
    if e.pool == MEMORY_POOL || e.kind != LimitKind::Max {
        return (write_limit(fs, e, e.value), None);
    }
    let before = dmem_usage(fs, e);
    let mut writes = 0;
    let result = loop {
        writes += 1;
        let r = write_limit(fs, e, e.value);
        let busy =
            matches!(&r, Err(KernelError::Write { source, .. }) if source.kind() == std::io::ErrorKind::ResourceBusy);
        let over = r.is_ok() && dmem_usage(fs, e).is_some_and(|u| u > e.value);
        if writes >= MAX_LIMIT_WRITES || !(busy || over) {
            break r;
        }
    };
    let reclaim = before.filter(|b| *b > e.value).map(|usage_before| Reclaim {
        file: key.to_string(),
        limit: e.value,
        usage_before,
        usage_after: dmem_usage(fs, e).unwrap_or(usage_before),
        writes,
    });
    (result, reclaim)
}

/// Writes the kernel's share of the plan for `entries` (the owners in scope); remembers what it
/// wrote in `writes`. No ledger access.
pub fn apply_kernel<'a>(
    fs: &CgroupFs,
    topology: &Topology,
    entries: impl Iterator<Item = &'a LimitEntry>,
    writes: &mut Writes,
    dry_run: bool,
) -> KernelOutcome {
    let mut out = KernelOutcome { applied: Applied { dry_run, ..Applied::default() }, ..KernelOutcome::default() };
    if !topology.controllers_to_enable.is_empty() {
        let names: Vec<&str> = topology.controllers_to_enable.iter().map(String::as_str).collect();
        let from = fs.subtree_control("/").ok().map(|v| v.join(" "));
        let to = names.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(" ");
        let change = FileChange { file: "/cgroup.subtree_control".into(), from, to };
        if dry_run {
            out.applied.changes.push(change);
        } else {
            match fs.enable_controllers("/", &names) {
                Ok(()) => out.applied.changes.push(change),
                Err(e) => out.applied.failures.push(e.to_string()),
            }
        }
    }
    for e in entries.filter(|e| e.enforced_by == Enforcer::Kernel && e.pool != MEMCG_POOL) {
        let (file, key) = file_of(e);
        let id = (e.cgroup.clone(), e.pool.clone(), kind_key(e.kind));
        let default = kernel_default(e.kind);
        let show = |v: u64| if e.pool == MEMORY_POOL { limit_text(v) } else { format!("{} {}", e.pool, limit_text(v)) };
        let mine = writes.get(&key);
        let now = read_limit(fs, e).ok();
        let ours_now = |now: u64| now == default || mine.is_some_and(|m| m.reads == now);
        match now {
            Some(now) if now == e.value || mine.is_some_and(|m| m.wrote == e.value && m.reads == now) => {
                out.held.insert(id);
                continue;
            }
            // The policy sets nothing here and autoconfig never wrote it: not its business.
            _ if e.value == default && mine.is_none() => {
                out.held.insert(id);
                continue;
            }
            Some(now) if !ours_now(now) => {
                let why = match mine {
                    Some(m) => format!("changed by another component since autoconfig wrote {}", format_bytes(m.wrote)),
                    None => "set by another component; autoconfig never wrote it".to_string(),
                };
                out.applied.left_alone.push(LeftAlone {
                    file: key.clone(),
                    holds: show(now),
                    policy: show(e.value),
                    why,
                });
                if !dry_run {
                    writes.forget(&key);
                }
                out.held.insert(id);
                continue;
            }
            _ => {}
        }
        let change = FileChange { file, from: now.map(show), to: show(e.value) };
        if dry_run {
            out.applied.changes.push(change);
            out.held.insert(id);
            continue;
        }
        let (written, reclaim) = write_reclaiming(fs, e, &key);
        out.applied.reclaims.extend(reclaim);
        match written {
            Ok(()) => {
                let reads = read_limit(fs, e).unwrap_or(e.value);
                if e.value == default {
                    writes.forget(&key);
                } else {
                    writes.record(key, Write { wrote: e.value, reads });
                }
                out.applied.changes.push(change);
                out.held.insert(id);
            }
            Err(err) => {
                let enforced_by = if e.pool == MEMORY_POOL { Enforcer::Nobody } else { Enforcer::Service };
                let failed = FailedWrite { file: change.file, to: change.to, error: err.to_string(), enforced_by };
                out.applied.failed_writes.push(failed.clone());
                out.failed.insert(id, failed);
            }
        }
    }
    out
}

/// The ledger events that bring the ledger in line with the topology and the plan's `entries`
/// (the owners in scope), given what the kernel holds. Pure: no file I/O.
pub fn ledger_events<'a>(
    topology: &Topology,
    entries: impl Iterator<Item = &'a LimitEntry> + Clone,
    kernel: &KernelOutcome,
    ledger: &Ledger,
) -> Vec<Event> {
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

    let ledger_limit =
        |cgroup: &str, pool: &str, kind: LimitKind| ledger.counter(cgroup, pool).unwrap_or_default().limit(kind);
    let default = Counter::default();
    for e in entries.filter(|e| e.pool != MEMORY_POOL && pools.contains(&e.pool)) {
        let id = (e.cgroup.clone(), e.pool.clone(), kind_key(e.kind));
        // The ledger enforces what the kernel does not: service- and nobody-enforced limits,
        // pins, and kernel limits whose write failed.
        let want =
            if e.enforced_by != Enforcer::Kernel || e.kind == LimitKind::PinMax || kernel.failed.contains_key(&id) {
                e.value
            } else if kernel.held.contains(&id) {
                default.limit(e.kind)
            } else {
                continue;
            };
        if ledger_limit(&e.cgroup, &e.pool, e.kind) != want {
            events.push(Event::LimitSet { cgroup: e.cgroup.clone(), pool: e.pool.clone(), kind: e.kind, value: want });
        }
    }
    events
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
