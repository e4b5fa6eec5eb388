//! Applies the handoff rule as the kernel reports fds closing and arriving (see
//! [`crate::kernel::handoff_events`]) instead of waiting for the periodic reconcile: events
//! within a short window are coalesced into one re-check of just the buffers involved — those of
//! the processes that closed a dma-buf fd, and, when a process received an fd over binder, those
//! pushed or charged on its behalf (its receipts) and those a payer let go of while nobody could
//! take them yet.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, OnceLock};
use std::time::Duration;

use log::{debug, info, warn};

use crate::accountant::Accountant;
use crate::kernel::handoff_events::{tgid_of, HandoffEvent, HandoffEvents};
use crate::ledger::Inode;

/// How long after the first event more are gathered into the same re-check: a sender closing
/// several fds of one frame, and the receiver's fd installed after its tracepoint fired.
pub const WINDOW: Duration = Duration::from_millis(20);

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
        while let Ok(first) = rx.recv() {
            std::thread::sleep(WINDOW);
            let (mut closing, mut receiving) = (BTreeSet::new(), BTreeSet::new());
            let mut n = 0;
            for event in std::iter::once(first).chain(rx.try_iter()) {
                n += 1;
                match event {
                    HandoffEvent::Closed { tid, .. } => closing.insert(tid),
                    HandoffEvent::Received { tid } => receiving.insert(tid),
                };
            }
            // The service's own closes (its scans read /proc) and the fds clients send it are
            // never a handoff between apps.
            let processes = |tids: BTreeSet<u32>| -> BTreeSet<u32> {
                tids.into_iter().filter_map(|tid| tgid_of(&proc_root, tid)).filter(|p| *p != own).collect()
            };
            let (closers, receivers) = (processes(closing), processes(receiving));
            debug!("handoff events: {n} in the window, closers {closers:?}, receivers {receivers:?}");
            let also = if receivers.is_empty() { BTreeSet::new() } else { std::mem::take(&mut awaiting) };
            match accountant.recheck_handoffs(&closers, &receivers, &also) {
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
