//! Catch-up charging: a live dma-buf of a policy heap that someone holds but nobody pays for is
//! charged to one of its holders, so that a charge an allocator deferred while the service was
//! away (and never replayed) is not lost. Runs after every reconcile: at start, after the
//! journal's replay; periodically; and when a trusted caller asks.
//!
//! Who pays (the one-payer rules, README "Who may move a charge"): a holder pays for what it
//! holds; of several holders, [`choose_payer`] picks one deterministically — an app (uid ≥
//! 10000) before a platform process (gralloc and SurfaceFlinger hold buffers for others), a
//! holder with an fd before one that only maps it, then the lowest pid.
//!
//! Limits: the buffer already exists, so a catch-up is never refused. Within the payer's limits
//! it is an ordinary charge; over them it is recorded over the limit (the counter's `max_events`
//! counts it, as `memory.events max` does) and the app's next allocations are refused with
//! OVER_LIMIT until it is back under. Pools the kernel enforces are unaffected: the kernel
//! charged and limited those at allocation time; the ledger only records who should pay.
//!
//! How late: a dma-buf's inode carries its creation time (the kernel stamps it when it exports
//! the buffer), read by stat through the payer's `/proc/<pid>/fd`; unknown where that fd table
//! is not readable or the time is zero.

use std::fmt::Write;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use log::{info, warn};

use crate::accountant::{choose_payer, Accountant, Candidate, ReconcileReport};
use crate::error::{Error, Result};
use crate::identity::{Caller, Process};
use crate::kernel::dmabuf::DmaBufInfo;
use crate::kernel::view::ScannedBuffer;
use crate::ledger::{Inode, LedgerError};

/// One buffer charged by catch-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaughtUp {
    pub inode: Inode,
    pub size: u64,
    pub pid: u32,
    pub cgroup: String,
    /// Recorded over the payer's limit.
    pub over_limit: bool,
    /// Since the buffer was created; `None` where its creation time could not be read.
    pub late: Option<Duration>,
}

/// Totals since the service started, for `dumpState`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub buffers: u64,
    pub bytes: u64,
    pub over_limit: u64,
    /// Held buffers no live holder could be charged for (e.g. every holder exited meanwhile).
    pub unpaid: u64,
    pub max_late: Duration,
    pub total_late: Duration,
    /// How many of `buffers` have a known lateness.
    pub timed: u64,
    pub last: Option<CaughtUp>,
}

/// Catch-up charging and its running totals; one per service.
#[derive(Default)]
pub struct CatchUp {
    totals: Mutex<Totals>,
}

/// When the kernel created the dma-buf `inode`, from an fd of it in `pid`.
fn created(proc_root: &std::path::Path, pid: u32, inode: Inode) -> Option<SystemTime> {
    let dir = proc_root.join(pid.to_string()).join("fd");
    std::fs::read_dir(dir).ok()?.flatten().find_map(|entry| {
        let stat = rustix::fs::stat(entry.path()).ok()?;
        // A zero time is an inode the kernel did not stamp: unknown, not 56 years late.
        (stat.st_ino == inode && stat.st_ctime > 0)
            .then(|| SystemTime::UNIX_EPOCH + Duration::new(stat.st_ctime as u64, stat.st_ctime_nsec as u32))
    })
}

impl CatchUp {
    pub fn new() -> CatchUp {
        CatchUp::default()
    }

    pub fn totals(&self) -> Totals {
        self.totals.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reconciles, then charges what the pass found held but charged to nobody.
    pub fn reconcile(&self, accountant: &Accountant) -> Result<(ReconcileReport, Vec<CaughtUp>)> {
        let report = accountant.reconcile()?;
        let caught =
            if report.unaccounted.is_empty() { Vec::new() } else { self.charge(accountant, &report.unaccounted)? };
        Ok((report, caught))
    }

    /// Charges each of `inodes` that is still held and still uncharged to its payer.
    pub fn charge(&self, accountant: &Accountant, inodes: &[Inode]) -> Result<Vec<CaughtUp>> {
        // The view reconcile took too (BPF where it loaded, else procfs): who holds each buffer now.
        let scan = accountant.scanner().scan_all().map_err(Error::from)?;
        let procfs = accountant.processes().procfs();
        let mut caught = Vec::new();
        let mut unpaid = 0;
        for &inode in inodes {
            let Some(seen) = scan.buffers.get(inode) else { continue };
            match self.charge_one(accountant, inode, &seen) {
                Ok(Some(c)) => caught.push(c),
                Ok(None) => {}
                Err(e) => {
                    unpaid += 1;
                    warn!("catch-up of buffer {inode}: {e}");
                }
            }
        }
        let now = SystemTime::now();
        for c in &mut caught {
            c.late = created(procfs.root(), c.pid, c.inode).and_then(|t| now.duration_since(t).ok());
        }
        let mut totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        totals.unpaid += unpaid;
        for c in &caught {
            totals.buffers += 1;
            totals.bytes = totals.bytes.saturating_add(c.size);
            totals.over_limit += u64::from(c.over_limit);
            if let Some(late) = c.late {
                totals.timed += 1;
                totals.total_late += late;
                totals.max_late = totals.max_late.max(late);
            }
            totals.last = Some(c.clone());
        }
        if !caught.is_empty() {
            info!("catch-up: charged {} held buffers nobody paid for: {caught:?}", caught.len());
        }
        Ok(caught)
    }

    /// `Ok(None)` when the buffer needs nothing: charged meanwhile, not a policy heap, or held
    /// by no process the service can resolve.
    fn charge_one(&self, accountant: &Accountant, inode: Inode, seen: &ScannedBuffer<'_>) -> Result<Option<CaughtUp>> {
        let Some(exporter) = seen.exporter.map(str::to_string) else { return Ok(None) };
        if accountant.with_ledger(|l| l.heap(&exporter).is_none() || l.buffer(inode).is_some()) {
            return Ok(None);
        }
        let candidates: Vec<Candidate> = seen
            .holders
            .iter()
            .filter_map(|(pid, holder)| {
                let process = accountant.processes().resolve(pid).ok()?;
                Some(Candidate { process, holder })
            })
            .collect();
        let Some(payer) = choose_payer(&candidates) else {
            return Err(Error::NoSuchProcess(seen.holders.pids().next().unwrap_or(0)));
        };
        let payer = payer.process.clone();
        let buffer = DmaBufInfo { inode, size: seen.size, exporter, name: seen.name.map(str::to_string) };
        // The payer "charges" what it holds: the ordinary path (its limits, autoconfig for a new
        // app, the owner kept for death handling). Over a limit, the charge is recorded anyway.
        let caller = &Caller { pid: payer.pid, uid: payer.uid, context: payer.context.clone() };
        let over_limit = match accountant.charge(caller, &buffer, None) {
            Ok(_) => false,
            Err(Error::Ledger(LedgerError::AlreadyCharged { .. })) => return Ok(None),
            Err(Error::Ledger(LedgerError::OverLimit { .. })) => {
                record_over_limit(accountant, &buffer, &payer)?;
                // Charging what it already pays for changes nothing but keeps the owner known.
                accountant.charge(caller, &buffer, None)?;
                true
            }
            Err(e) => return Err(e),
        };
        Ok(Some(CaughtUp { inode, size: buffer.size, pid: payer.pid, cgroup: payer.cgroup, over_limit, late: None }))
    }

    /// The `dumpState` section.
    pub fn render(&self) -> String {
        let t = self.totals();
        let mut out = String::from("\nCatch-up (held, charged to nobody, charged to a holder):\n");
        let late = if t.timed == 0 {
            "lateness unknown".to_string()
        } else {
            let mean = t.total_late / t.timed as u32;
            format!("late by {mean:.1?} on average, {:.1?} at most ({} timed)", t.max_late, t.timed)
        };
        let _ = writeln!(
            out,
            "  {} buffers caught up ({}), {} over the payer's limit, {} without a live holder; {late}",
            t.buffers,
            crate::policy::format_bytes(t.bytes),
            t.over_limit,
            t.unpaid
        );
        if let Some(c) = &t.last {
            let late = c.late.map_or_else(|| "?".to_string(), |l| format!("{l:.1?}"));
            let _ = writeln!(
                out,
                "  last: buffer {} ({}) to pid {} in {}{}, {late} after it was made",
                c.inode,
                crate::policy::format_bytes(c.size),
                c.pid,
                c.cgroup,
                if c.over_limit { " over its limit" } else { "" }
            );
        }
        out
    }
}

/// Records a charge that does not fit the payer's limits: charged at the root (which has none)
/// and handed to the payer without a check, the way a dead owner's charge is handed over. Both
/// events are journaled together; if the second cannot apply, the first is undone.
fn record_over_limit(accountant: &Accountant, buffer: &DmaBufInfo, payer: &Process) -> Result<()> {
    accountant.with_ledger_mut(|l| {
        let charged = l.charge(buffer.inode, buffer.size, &buffer.exporter, 0, 0, "/")?;
        match l.reassign(buffer.inode, payer.pid, payer.start_time, &payer.cgroup) {
            Ok(reassigned) => Ok(((), vec![charged, reassigned])),
            Err(e) => {
                l.release(buffer.inode)?;
                Err(e.into())
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::accountant::Config;
    use crate::journal::Durability;
    use crate::ledger::LimitKind;
    use crate::policy::Policy;

    const MIB: u64 = 1 << 20;

    /// A process in a fake /proc holding `buffers` (inode, size) of the system heap by fd.
    fn put_process(proc_root: &Path, pid: u32, uid: u32, cgroup: &str, buffers: &[(Inode, u64)]) {
        let dir = proc_root.join(pid.to_string());
        std::fs::create_dir_all(dir.join("fdinfo")).unwrap();
        std::fs::write(dir.join("status"), format!("Name:\tapp\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")).unwrap();
        std::fs::write(dir.join("cgroup"), format!("0::{cgroup}\n")).unwrap();
        let stat = format!("{pid} (app) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {} 0 0\n", 1000 + pid);
        std::fs::write(dir.join("stat"), stat).unwrap();
        std::fs::write(dir.join("maps"), "").unwrap();
        for (fd, (inode, size)) in buffers.iter().enumerate() {
            let info = format!(
                "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t{inode}\nsize:\t{size}\ncount:\t1\nexp_name:\tsystem\n"
            );
            std::fs::write(dir.join("fdinfo").join((fd + 3).to_string()), info).unwrap();
        }
    }

    fn accountant(proc_root: &Path) -> Accountant {
        let config = Config {
            proc_root: proc_root.to_path_buf(),
            cgroup_root: None,
            state_dir: None,
            durability: Durability::None,
            pidfds: false,
            scan: crate::kernel::ScanChoice::Procfs,
        };
        Accountant::open(config, Policy::embedded_default()).unwrap()
    }

    fn payer(accountant: &Accountant, inode: Inode) -> Option<(u32, String)> {
        accountant.charges(0).into_iter().find(|b| b.inode == inode).map(|b| (b.pid, b.cgroup))
    }

    #[test]
    fn reconcile_charges_a_held_buffer_nobody_pays_for_to_the_app_not_the_allocator() {
        let dir = tempfile::tempdir().unwrap();
        let proc_root = dir.path().join("proc");
        // gralloc made buffer 7 for the app, handed it over and kept its own fd: nobody charged it.
        put_process(&proc_root, 50, 1003, "/system/gralloc", &[(7, MIB)]);
        put_process(&proc_root, 100, 10001, "/uid_10001/pid_100", &[(7, MIB)]);
        let accountant = accountant(&proc_root);
        let catch_up = CatchUp::new();

        let (report, caught) = catch_up.reconcile(&accountant).unwrap();
        assert_eq!(report.unaccounted, [7], "reconcile still reports what it found");
        assert_eq!(caught.len(), 1);
        assert_eq!(payer(&accountant, 7), Some((100, "/uid_10001/pid_100".to_string())));
        let (_, again) = catch_up.reconcile(&accountant).unwrap();
        assert!(again.is_empty(), "a caught-up buffer is charged once");
        assert_eq!(catch_up.totals().buffers, 1);
        assert!(
            catch_up.render().contains("1 buffers caught up (1 MiB), 0 over the payer's limit"),
            "{}",
            catch_up.render()
        );

        // The owner known to the accountant: its death releases the charge it got by catch-up.
        std::fs::remove_dir_all(proc_root.join("100")).unwrap();
        std::fs::remove_file(proc_root.join("50/fdinfo/3")).unwrap();
        accountant.process_died(100).unwrap();
        assert_eq!(payer(&accountant, 7), None);
    }

    #[test]
    fn a_catch_up_over_the_apps_limit_is_recorded_and_refuses_its_next_charge_until_it_is_back_under() {
        let dir = tempfile::tempdir().unwrap();
        let proc_root = dir.path().join("proc");
        put_process(&proc_root, 100, 10001, "/uid_10001/pid_100", &[(7, 4 * MIB)]);
        let accountant = accountant(&proc_root);
        accountant
            .with_ledger_mut(|l| Ok(((), vec![l.set_limit("/uid_10001", "memcg", LimitKind::Max, 3 * MIB)?])))
            .unwrap();
        let catch_up = CatchUp::new();

        let (_, caught) = catch_up.reconcile(&accountant).unwrap();
        assert!(caught[0].over_limit, "{caught:?}");
        let counter = accountant.with_ledger(|l| l.counter("/uid_10001", "memcg")).unwrap();
        assert_eq!((counter.usage, counter.max), (4 * MIB, 3 * MIB), "recorded over the limit");
        assert!(counter.max_events >= 1, "and reported as over it: {counter:?}");
        assert_eq!(catch_up.totals().over_limit, 1);
        accountant.with_ledger(|l| l.check_invariants()).unwrap();

        let app = &Caller::new(100, 10001);
        let small = DmaBufInfo { inode: 8, size: MIB, exporter: "system".into(), name: None };
        let refused = accountant.charge(app, &small, None);
        assert!(matches!(refused, Err(Error::Ledger(LedgerError::OverLimit { .. }))), "{refused:?}");
        // The app frees the big buffer (closes its fd, then releases it), which brings it back under.
        std::fs::remove_file(proc_root.join("100/fdinfo/3")).unwrap();
        accountant.release(app, 7).unwrap();
        accountant.charge(app, &small, None).expect("back under its limit: charges are accepted again");
    }
}
