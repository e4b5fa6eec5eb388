//! Applies the handoff rule as the kernel reports fds closing and arriving (see
//! [`crate::kernel::handoff_events`]) instead of waiting for the periodic reconcile: events
//! within a short window are coalesced into one re-check of just the buffers involved — those of
//! the processes that closed a dma-buf fd, and, when a process received an fd over binder, those
//! pushed or charged on its behalf (its receipts) and those a payer let go of while nobody could
//! take them yet. Where the kernel names the closed buffer, only a payer's closed buffers are
//! candidates; a window without any is no scan at all. The re-checks' scans share a budget of
//! CPU time ([`ScanBudget`]), so closes cannot keep the service scanning.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::accountant::Accountant;
use crate::kernel::handoff_events::{tgid_of, HandoffEvent, HandoffEvents};
use crate::ledger::Inode;

/// How long after the first event more are gathered into the same re-check: a sender closing
/// several fds of one frame, and the receiver's fd installed after its tracepoint fired.
pub const WINDOW: Duration = Duration::from_millis(20);

/// The share of one CPU the re-checks' full views may take over time, after a burst of
/// [`BURST`]: apps close buffers every frame (and a hostile one can close in a loop), and a full
/// view of a large device is not free, so re-checks past the budget wait — gathering events
/// meanwhile, none lost — instead of scanning back to back.
const SHARE: f64 = 0.2;
const BURST: Duration = Duration::from_secs(2);

/// Time the re-checks may still spend scanning (a token bucket: refilled at [`SHARE`] of the
/// time passed, up to [`BURST`]; spent by each re-check; below zero, the next one waits).
struct ScanBudget {
    seconds: f64,
    at: Instant,
}

impl ScanBudget {
    fn new() -> ScanBudget {
        ScanBudget { seconds: BURST.as_secs_f64(), at: Instant::now() }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        self.seconds = (self.seconds + SHARE * (now - self.at).as_secs_f64()).min(BURST.as_secs_f64());
        self.at = now;
    }

    /// Sleeps until the budget is back above zero.
    fn wait(&mut self) {
        self.refill();
        if self.seconds < 0.0 {
            std::thread::sleep(Duration::from_secs_f64(-self.seconds / SHARE));
            self.refill();
        }
    }

    fn spend(&mut self, took: Duration) {
        self.refill();
        self.seconds -= took.as_secs_f64();
    }
}

/// How the service learns of handoffs, set once at start, for the autoconfig report and dumpState.
static MODE: OnceLock<String> = OnceLock::new();

/// Records the mode (the first call wins).
pub fn set_mode(mode: String) {
    let _ = MODE.set(mode);
}

/// `events (...)` or `periodic reconcile only (why)`.
pub fn mode() -> &'static str {
    MODE.get().map_or("periodic reconcile only (no event source opened)", String::as_str)
}

/// Starts the reader (blocking on the trace pipe) and the worker (the re-checks) threads.
pub fn spawn(accountant: Arc<Accountant>, mut events: HandoffEvents, proc_root: PathBuf) -> std::io::Result<()> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new().name("handoff-events".into()).spawn(move || {
        while let Some(event) = events.next_event() {
            if tx.send(event).is_err() {
                return;
            }
        }
        warn!("handoff events: the trace pipe closed; handoffs wait for the periodic reconcile");
    })?;
    std::thread::Builder::new().name("handoff-recheck".into()).spawn(move || {
        let mut awaiting: BTreeSet<Inode> = BTreeSet::new();
        let own = std::process::id();
        let mut budget = ScanBudget::new();
        while let Ok(first) = rx.recv() {
            std::thread::sleep(WINDOW);
            budget.wait();
            let (mut closing, mut receiving) = (BTreeSet::new(), BTreeSet::new());
            // The buffers closed, while every close named its buffer (BTF); else every buffer
            // the closing payers pay for is a candidate.
            let mut closed = Some(BTreeSet::new());
            let mut n = 0;
            for event in std::iter::once(first).chain(rx.try_iter()) {
                n += 1;
                match event {
                    HandoffEvent::Closed { tid, inode } => {
                        closing.insert(tid);
                        match inode {
                            Some(i) => {
                                if let Some(c) = closed.as_mut() {
                                    c.insert(i);
                                }
                            }
                            None => closed = None,
                        }
                    }
                    HandoffEvent::Received { tid } => {
                        receiving.insert(tid);
                    }
                }
            }
            // The service's own closes (its scans read /proc) and the fds clients send it are
            // never a handoff between apps.
            let processes = |tids: BTreeSet<u32>| -> BTreeSet<u32> {
                tids.into_iter().filter_map(|tid| tgid_of(&proc_root, tid)).filter(|p| *p != own).collect()
            };
            let (closers, receivers) = (processes(closing), processes(receiving));
            debug!("handoff events: {n} in the window, closers {closers:?}, receivers {receivers:?}");
            let also = if receivers.is_empty() { BTreeSet::new() } else { std::mem::take(&mut awaiting) };
            let started = Instant::now();
            let rechecked = accountant.recheck_handoffs(&closers, closed.as_ref(), &receivers, &also);
            budget.spend(started.elapsed());
            match rechecked {
                Ok(report) => {
                    awaiting.extend(report.awaiting_holder);
                    if !report.handoffs_refused.is_empty() {
                        info!("handoff events: refused {:?} (receiver over its limit)", report.handoffs_refused);
                    }
                }
                Err(e) => {
                    warn!("handoff re-check: {e}");
                    awaiting.extend(also);
                }
            }
        }
    })?;
    Ok(())
}
