//! Per-app totals in the kernel trace, as counter events Perfetto's ftrace parser reads
//! (`C|<pid>|<name>|<value>` written to tracefs's `trace_marker`: a counter track named
//! [`COUNTER`] on that process, in bytes). Off by default; the policy's `trace.counters` turns it
//! on. A total is written only when it changed, after the change that changed it committed, and
//! never under the ledger lock: the accountant hands the new totals over with [`TraceCounters::lock`]
//! taken before it lets the ledger go, so the markers keep the ledger's order.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use log::warn;

use crate::ledger::Event;

/// The counter's name on each app's process track.
pub const COUNTER: &str = "chargetransfer.charged_bytes";

/// Where tracefs is mounted on Android and on current kernels (`/sys/kernel/debug/tracing` is the
/// older path).
pub const TRACEFS: &str = "/sys/kernel/tracing";

/// One counter event's text, as `atrace`'s `ATRACE_INT64` writes it.
pub fn counter_event(pid: u32, bytes: u64) -> String {
    format!("C|{pid}|{COUNTER}|{}", i64::try_from(bytes).unwrap_or(i64::MAX))
}

/// The process an event makes pay (or, as an undo event, made pay): the processes whose totals a
/// change can move. Parked charges (pid 0) have no process and no counter.
pub fn payer_of(event: &Event) -> Option<u32> {
    match event {
        Event::Charged { pid, .. } | Event::Transferred { pid, .. } | Event::Reassigned { pid, .. } => {
            Some(*pid).filter(|p| *p != 0)
        }
        _ => None,
    }
}

/// The trace_marker file and the last total written for each process.
pub struct TraceCounters {
    inner: Mutex<Marker>,
}

pub struct Marker {
    out: Box<dyn Write + Send>,
    path: PathBuf,
    last: HashMap<u32, u64>,
    failed: bool,
}

impl TraceCounters {
    /// Opens `tracefs`/trace_marker for writing.
    pub fn open(tracefs: &Path) -> std::io::Result<TraceCounters> {
        let path = tracefs.join("trace_marker");
        let file = OpenOptions::new().write(true).open(&path)?;
        Ok(TraceCounters::to(Box::new(file), path))
    }

    /// Writes to `out` (each event in one write, as trace_marker needs); `path` names it in logs.
    pub fn to(out: Box<dyn Write + Send>, path: PathBuf) -> TraceCounters {
        TraceCounters { inner: Mutex::new(Marker { out, path, last: HashMap::new(), failed: false }) }
    }

    /// Takes the marker; the accountant does so before it unlocks the ledger.
    pub fn lock(&self) -> MutexGuard<'_, Marker> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Marker {
    /// Writes a counter event for each process whose total differs from the last one written.
    pub fn emit(&mut self, totals: &[(u32, u64)]) {
        for &(pid, bytes) in totals {
            if self.last.get(&pid).copied().unwrap_or(0) == bytes {
                continue;
            }
            let event = counter_event(pid, bytes);
            match self.out.write_all(event.as_bytes()) {
                Ok(()) => {
                    if bytes == 0 {
                        self.last.remove(&pid);
                    } else {
                        self.last.insert(pid, bytes);
                    }
                }
                Err(e) if !self.failed => {
                    self.failed = true;
                    warn!("{}: {e}; trace counters are missing from now on", self.path.display());
                }
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<String>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(String::from_utf8(buf.to_vec()).unwrap());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn only_changed_totals_are_written_one_event_per_write_in_perfettos_counter_form() {
        let lines = Lines::default();
        let counters = TraceCounters::to(Box::new(lines.clone()), "trace_marker".into());
        counters.lock().emit(&[(7, 4096), (8, 0)]);
        counters.lock().emit(&[(7, 4096), (9, 100)]);
        counters.lock().emit(&[(7, 0)]);
        counters.lock().emit(&[(7, 0)]);
        assert_eq!(
            *lines.0.lock().unwrap(),
            vec![
                "C|7|chargetransfer.charged_bytes|4096",
                "C|9|chargetransfer.charged_bytes|100",
                "C|7|chargetransfer.charged_bytes|0"
            ]
        );
    }

    #[test]
    fn payers_are_the_processes_whose_totals_an_event_moves() {
        let charged =
            Event::Charged { inode: 1, size: 2, heap: "system".into(), pid: 5, start: 9, cgroup: "/a".into() };
        assert_eq!(payer_of(&charged), Some(5));
        assert_eq!(payer_of(&Event::Reassigned { inode: 1, pid: 0, start: 0, cgroup: "/a".into() }), None, "parked");
        assert_eq!(payer_of(&Event::Released { inode: 1 }), None, "its undo names the payer");
    }
}
