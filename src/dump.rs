//! dumpsys-style text: per-owner table, per-region totals, biggest buffers, and where the
//! kernel's own accounting disagrees with the ledger.

use std::fmt::Write;

use crate::accountant::Accountant;
use crate::ledger::{Counter, UNLIMITED};
use crate::policy::format_bytes;

fn cell(c: &Counter) -> String {
    if c.max == UNLIMITED {
        format_bytes(c.usage)
    } else {
        format!("{}/{}", format_bytes(c.usage), format_bytes(c.max))
    }
}

/// The per-cgroup table: one row per cgroup that has charges or limits, one column per pool.
pub fn owner_table(accountant: &Accountant) -> String {
    accountant.with_ledger(|l| {
        let pools: Vec<String> = l.pools().map(|(_, n, _)| n.to_string()).collect();
        let mut out = format!("{:<28}", "cgroup");
        for p in &pools {
            let _ = write!(out, " {:>22}", p);
        }
        out.push('\n');
        for cg in l.cgroups() {
            let counters = l.counters(&cg).unwrap_or_default();
            if counters.iter().all(|(_, c)| c.usage == 0 && c.max == UNLIMITED) {
                continue;
            }
            let _ = write!(out, "{cg:<28}");
            for (_, c) in &counters {
                let _ = write!(out, " {:>22}", cell(c));
            }
            out.push('\n');
        }
        out
    })
}

/// Starts the dump's line naming the dma-buf scan backend (`chargectl regions` shows it).
pub const SCAN_PREFIX: &str = "dma-buf scan: ";

pub fn render(accountant: &Accountant) -> String {
    let mut out = String::new();
    let charges = accountant.charges(0);
    // Buffers in different pools may together exceed u64 (each pool alone cannot).
    let total = charges.iter().fold(0u64, |sum, b| sum.saturating_add(b.size));
    let _ = writeln!(
        out,
        "chargetransfer: {} buffers, {} charged, {} open offers",
        charges.len(),
        format_bytes(total),
        accountant.open_offers()
    );
    let _ = writeln!(out, "trust: {}", accountant.trust_rule().describe());
    let _ = writeln!(out, "{SCAN_PREFIX}{}", accountant.scanner());
    if let Some(why) = accountant.journal_broken() {
        let _ = writeln!(out, "JOURNAL BROKEN: changes are refused until the service restarts: {why}");
    }
    let _ = writeln!(out, "\nRegions:");
    let _ = writeln!(out, "  {:<26} {:<8} {:>9} {:>9} {:<8} heaps", "pool", "class", "capacity", "usage", "enforced");
    let root = accountant.cgroup_usage("/").map(|u| u.pools).unwrap_or_default();
    for r in accountant.regions() {
        let usage = root.iter().find(|p| p.pool == r.name).map_or(0, |p| p.counter.usage);
        let cap = if r.capacity == 0 { "?".to_string() } else { format_bytes(r.capacity) };
        let _ = writeln!(
            out,
            "  {:<26} {:<8} {:>9} {:>9} {:<8} {}",
            r.name,
            r.class,
            cap,
            format_bytes(usage),
            r.enforced_by,
            r.heaps.join(",")
        );
    }
    let _ = writeln!(out, "\nOwners (usage/max per pool):");
    for line in owner_table(accountant).lines() {
        let _ = writeln!(out, "  {line}");
    }
    let _ = writeln!(out, "\nBiggest buffers:");
    let _ = writeln!(
        out,
        "  {:>12} {:>9} {:<20} {:>7} {:<28} kernel charged",
        "inode", "size", "heap", "pid", "owner cgroup"
    );
    for b in charges.iter().take(10) {
        let kernel = accountant.kernel_payer(b.inode).filter(|k| *k != b.cgroup).unwrap_or_else(|| "-".into());
        let flags = match (b.evicted, b.pinned) {
            (true, _) => " (evicted)",
            (_, true) => " (pinned)",
            _ => "",
        };
        let _ = writeln!(
            out,
            "  {:>12} {:>9} {:<20} {:>7} {:<28} {kernel}{flags}",
            b.inode,
            format_bytes(b.size),
            b.heap,
            b.pid,
            b.cgroup
        );
    }
    let _ = writeln!(out, "\nHandoffs follow: {}", crate::handoff_watch::mode());
    let refused = accountant.handoffs_refused();
    if !refused.is_empty() {
        let _ = writeln!(out, "\nHandoffs refused (the payer keeps paying):");
        for (inode, why) in refused {
            let _ = writeln!(out, "  buffer {inode}: {why}");
        }
    }
    let gaps: Vec<String> = accountant
        .with_ledger(|l| l.cgroups())
        .into_iter()
        .filter_map(|cg| {
            let u = accountant.cgroup_usage(&cg).ok()?;
            let lines: Vec<String> = u
                .pools
                .iter()
                .filter_map(|p| {
                    p.kernel_usage.map(|k| {
                        format!("{} kernel {} ledger {}", p.pool, format_bytes(k), format_bytes(p.counter.usage))
                    })
                })
                .collect();
            (!lines.is_empty()).then(|| format!("  {cg}: {}", lines.join("; ")))
        })
        .collect();
    if !gaps.is_empty() {
        let _ = writeln!(out, "\nKernel vs ledger:");
        for g in gaps {
            let _ = writeln!(out, "{g}");
        }
    }
    out
}

/// The dump for a caller that may not see other apps: its own uid's usage and charges only.
pub fn render_for_uid(accountant: &Accountant, uid: u32) -> String {
    let mut out = String::new();
    let charges = accountant.charges_of_uid(uid);
    let _ = writeln!(
        out,
        "chargetransfer: uid {uid} pays for {} buffers (the full dump is for trusted callers)",
        charges.len()
    );
    // The rule is the kernel's, not another app's data: every caller may see which list decides.
    let _ = writeln!(out, "trust: {}", accountant.trust_rule().describe());
    if let Some(why) = accountant.journal_broken() {
        let _ = writeln!(out, "JOURNAL BROKEN: changes are refused until the service restarts: {why}");
    }
    let usage = accountant.uid_usage(uid);
    let _ = writeln!(out, "\n{} (usage/max per pool):", usage.cgroup);
    for p in &usage.pools {
        let _ = writeln!(out, "  {:<26} {}", p.pool, cell(&p.counter));
    }
    let _ = writeln!(out, "\nBuffers:");
    for b in &charges {
        let _ = writeln!(out, "  {:>12} {:>9} {:<20} {:>7} {}", b.inode, format_bytes(b.size), b.heap, b.pid, b.cgroup);
    }
    out
}
