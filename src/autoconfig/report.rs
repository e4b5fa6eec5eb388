//! The autoconfig report: per pool its class, capacity, heaps, limits per owner class, who
//! enforces them and why; then heaps, owners, notes and (after apply) what changed. Text for
//! people (`chargectl autoconfig`), JSON for tools (`--json`).

use std::fmt::{self, Write};

use serde::{Deserialize, Serialize};

use super::apply::{describe, Applied, FailedWrite};
use super::limits::{LimitEntry, Plan, MEMORY_POOL};
use super::topology::{Enforcer, Topology, OWNER_TEMPLATE};
use crate::ledger::{LimitKind, MEMCG_POOL};
use crate::policy::{format_bytes, OwnerClass};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub topology: Topology,
    pub plan: Plan,
    /// What apply did; `None` for a plan computed from a saved probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<Applied>,
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }

    /// True when apply ran without any refused write or ledger event.
    pub fn is_clean(&self) -> bool {
        self.applied.as_ref().is_none_or(|a| a.failures.is_empty() && a.failed_writes.is_empty())
    }

    /// Each pool as `regions` queries show it: memcg first, then regions by name. A pool with
    /// kernel writes that failed (this run's) says so in `why`, with who enforces them instead.
    pub fn pools(&self) -> Vec<PoolSummary> {
        self.pools_with(self.applied.as_ref().map(|a| a.failed_writes.as_slice()).unwrap_or_default())
    }

    /// [`Report::pools`] naming the given failed writes.
    pub fn pools_with(&self, failed_writes: &[FailedWrite]) -> Vec<PoolSummary> {
        let t = &self.topology;
        let failed = |pool: &str| -> String {
            let of_pool: Vec<String> = failed_writes
                .iter()
                .filter(|f| f.to.split(' ').next() == Some(pool) && f.to.contains(' '))
                .map(|f| format!("{} failed ({})", f.file, f.error))
                .collect();
            if of_pool.is_empty() {
                String::new()
            } else {
                format!("; kernel write {}: the service enforces it instead", of_pool.join(", "))
            }
        };
        let memcg = &t.memcg;
        let mut out = vec![PoolSummary {
            name: MEMCG_POOL.into(),
            class: "system".into(),
            capacity: memcg.mem_total.unwrap_or(0),
            heaps: memcg.heaps.clone(),
            enforced_by: memcg.enforced_by.name().into(),
            why: memcg.why.clone(),
        }];
        out.extend(t.regions.iter().map(|r| PoolSummary {
            name: r.name.clone(),
            class: r.class.name().into(),
            capacity: r.capacity.unwrap_or(0),
            heaps: r.heaps.clone(),
            enforced_by: r.enforced_by.name().into(),
            why: format!("{}{}", r.why, failed(&r.name)),
        }));
        out
    }
}

/// One pool as autoconfig found it: what feeds it and who enforces its limits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolSummary {
    pub name: String,
    pub class: String,
    pub capacity: u64,
    pub heaps: Vec<String>,
    /// "kernel", "service" or "nobody".
    pub enforced_by: String,
    pub why: String,
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
fn table(out: &mut String, indent: &str, rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    for row in rows {
        let mut line = indent.to_string();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

fn cell(e: &LimitEntry) -> String {
    let value = format_bytes(e.value);
    let mut s = if e.policy.contains('%') { format!("{value} ({})", e.policy) } else { value };
    if e.adjusted.is_some() {
        s.push('*');
    }
    s
}

fn capacity(c: Option<u64>) -> String {
    c.map(format_bytes).unwrap_or_else(|| "unknown".into())
}

impl Report {
    fn limits_block(&self, out: &mut String, pool: &str) {
        let entries: Vec<&LimitEntry> = self.plan.defaults.iter().filter(|e| e.pool == pool).collect();
        if entries.is_empty() {
            out.push_str("    no limits\n");
            return;
        }
        let mut rows =
            vec![vec!["kind".to_string(), "app".into(), "system".into(), "background".into(), "enforced by".into()]];
        let mut footnotes = Vec::new();
        for kind in LimitKind::ALL {
            let of_kind: Vec<&&LimitEntry> = entries.iter().filter(|e| e.kind == kind).collect();
            if of_kind.is_empty() {
                continue;
            }
            let mut row = vec![kind.name().to_string()];
            for class in OwnerClass::ALL {
                match of_kind.iter().find(|e| e.owner == class) {
                    Some(e) => {
                        row.push(cell(e));
                        if let Some(a) = &e.adjusted {
                            footnotes.push(format!("* {} {class}: {a}", kind.name()));
                        }
                    }
                    None => row.push("-".into()),
                }
            }
            let mut by: Vec<&str> = of_kind.iter().map(|e| e.enforced_by.name()).collect();
            by.dedup();
            row.push(by.join("/"));
            rows.push(row);
        }
        table(out, "    ", &rows);
        for f in footnotes {
            let _ = writeln!(out, "    {f}");
        }
        // Vram: what each class may have evicted at once (the plan's eviction guarantee).
        for class in OwnerClass::ALL {
            let max = entries.iter().find(|e| e.owner == class && e.kind == LimitKind::Max);
            if let Some(budget) = max.and_then(|e| e.why.split_once("eviction budget: ")).map(|(_, b)| b) {
                let _ = writeln!(out, "    eviction budget {class}: {budget}");
            }
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.topology;
        let mut out = String::new();

        out.push_str("kernel\n");
        let controllers =
            if t.controllers.is_empty() { "none (no cgroup v2)".to_string() } else { t.controllers.join(" ") };
        let _ = writeln!(out, "  cgroup2 controllers: {controllers}");
        if !t.controllers_to_enable.is_empty() {
            let _ = writeln!(out, "  to enable for children: {}", t.controllers_to_enable.join(" "));
        }
        let accounting = match t.mem_accounting {
            Some(true) => "Y",
            Some(false) => "N",
            None => "not available",
        };
        let _ = writeln!(out, "  dma_heap.mem_accounting: {accounting}");
        let _ = writeln!(out, "  trust: {}", t.trust.describe());
        let _ = writeln!(out, "  page size: {} (memory limits in whole pages)", format_bytes(t.page_size));
        let _ = writeln!(
            out,
            "  memory: MemTotal {}, SwapTotal {}",
            capacity(t.memcg.mem_total),
            capacity(t.memcg.swap_total)
        );
        for d in &t.drm {
            let _ = writeln!(
                out,
                "  drm {}: {} {}, {}",
                d.card,
                d.driver.as_deref().unwrap_or("unknown driver"),
                d.device.as_deref().unwrap_or("unknown device"),
                d.vram_total
                    .map(|v| format!("vram {}", format_bytes(v)))
                    .unwrap_or_else(|| "no vram (system memory)".into())
            );
        }

        out.push_str("\npools (limits per owner cgroup ");
        out.push_str(OWNER_TEMPLATE);
        out.push_str(")\n");
        let _ = writeln!(out, "  {MEMORY_POOL}: the owner's memory, capacity {}", capacity(t.memcg.mem_total));
        let _ = writeln!(
            out,
            "    enforced by {}: {}",
            t.memcg.memory_enforced_by.name(),
            if t.memcg.memory_enforced_by == Enforcer::Kernel { "memory controller" } else { "no memory controller" }
        );
        self.limits_block(&mut out, MEMORY_POOL);
        let _ = writeln!(out, "  {MEMCG_POOL}: dma-bufs in RAM, heaps {}", list(&t.memcg.heaps));
        let _ = writeln!(out, "    enforced by {}: {}", t.memcg.enforced_by.name(), t.memcg.why);
        self.limits_block(&mut out, MEMCG_POOL);
        for r in &t.regions {
            let size = match r.capacity {
                Some(c) => format!("capacity {} from {}", format_bytes(c), r.capacity_source),
                None => "capacity unknown".into(),
            };
            let _ =
                writeln!(out, "  {}: {} region ({}), {size}, heaps {}", r.name, r.class, r.kind.name(), list(&r.heaps));
            let _ = writeln!(out, "    enforced by {}: {}", r.enforced_by.name(), r.why);
            if r.present {
                self.limits_block(&mut out, &r.name);
            }
        }

        out.push_str("\nheaps\n");
        let mut rows = vec![vec![
            "heap".to_string(),
            "class".into(),
            "region".into(),
            "mode".into(),
            "from".into(),
            "/dev".into(),
            "pools".into(),
        ]];
        let absent = |h: &super::topology::Heap| if h.present { "none" } else { "none (not on this device)" };
        for h in &t.heaps {
            let region = match (&h.region, &h.region_pattern) {
                (Some(r), Some(p)) => format!("{r} ({p})"),
                (Some(r), None) => r.clone(),
                (None, Some(p)) => format!("none ({p})"),
                (None, None) => "-".into(),
            };
            let pools =
                h.pools.iter().map(|p| format!("{} {}", p.pool, p.enforced_by.name())).collect::<Vec<_>>().join(", ");
            rows.push(vec![
                h.name.clone(),
                h.class.name().into(),
                region,
                h.mode.name().into(),
                format!("{:?}", h.origin).to_lowercase(),
                if h.in_dev { "yes" } else { "no" }.into(),
                if pools.is_empty() { absent(h).into() } else { pools },
            ]);
        }
        table(&mut out, "  ", &rows);

        let _ = writeln!(out, "\nowners ({})", t.owners.len());
        for class in OwnerClass::ALL {
            let of: Vec<String> = t
                .owners
                .iter()
                .filter(|o| o.class == class)
                .map(|o| match o.oom_score_adj {
                    Some(adj) => format!("{} (oom_score_adj {adj})", o.cgroup),
                    None => o.cgroup.clone(),
                })
                .collect();
            if !of.is_empty() {
                let _ = writeln!(out, "  {class}: {}", of.join(" "));
            }
        }

        let notes: Vec<&String> = t.notes.iter().chain(&self.plan.notes).collect();
        if !notes.is_empty() {
            out.push_str("\nnotes\n");
            for n in notes {
                let _ = writeln!(out, "  - {n}");
            }
        }

        if let Some(a) = &self.applied {
            let verb = if a.dry_run { "would change" } else { "changed" };
            let _ = writeln!(out, "\n{verb}: {} files, {} ledger events", a.changes.len(), a.events.len());
            for c in &a.changes {
                let _ = writeln!(out, "  {}: {} -> {}", c.file, c.from.as_deref().unwrap_or("(unreadable)"), c.to);
            }
            for e in &a.events {
                let _ = writeln!(out, "  ledger: {}", describe(e));
            }
            if !a.left_alone.is_empty() {
                let _ = writeln!(out, "\nleft alone ({}): limits autoconfig did not write", a.left_alone.len());
                for l in &a.left_alone {
                    let _ = writeln!(out, "  {}: holds {}, policy {}: {}", l.file, l.holds, l.policy, l.why);
                }
            }
            if !a.failed_writes.is_empty() {
                let _ = writeln!(out, "\nfailed writes ({})", a.failed_writes.len());
                for f in &a.failed_writes {
                    let instead = match f.enforced_by {
                        Enforcer::Service => "the service enforces this limit instead",
                        _ => "nobody enforces this limit (the service keeps no copy of memory.*)",
                    };
                    let _ = writeln!(out, "  - {} -> {}: {}; {instead}", f.file, f.to, f.error);
                }
            }
            if !a.reclaims.is_empty() {
                let _ = writeln!(out, "\nreclaim ({}): dmem.max written below usage", a.reclaims.len());
                for r in &a.reclaims {
                    let left = r.usage_after.saturating_sub(r.limit);
                    let partial = if left > 0 {
                        format!("; partial: {} still above the limit (pinned or not evictable)", format_bytes(left))
                    } else {
                        String::new()
                    };
                    let _ = writeln!(
                        out,
                        "  {}: usage {} -> {} at limit {}, {} reclaimed in {} write(s){partial}",
                        r.file,
                        format_bytes(r.usage_before),
                        format_bytes(r.usage_after),
                        format_bytes(r.limit),
                        format_bytes(r.usage_before.saturating_sub(r.usage_after)),
                        r.writes
                    );
                }
            }
            if !a.failures.is_empty() {
                let _ = writeln!(out, "\nfailures ({})", a.failures.len());
                for e in &a.failures {
                    let _ = writeln!(out, "  - {e}");
                }
            }
        }
        f.write_str(&out)
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}
