//! The locked state: one mutex guards the ledger, the journal, the open offers and the known
//! owners together, so the journal's order is the order in which changes were applied, and each
//! change is durable before the caller hears it succeeded.

use std::collections::HashMap;
use std::sync::MutexGuard;

use log::warn;

use super::Accountant;
use crate::error::{Error, Result};
use crate::identity::Process;
use crate::journal::Journal;
use crate::ledger::{Event, Inode, Ledger};
use crate::offers::Tickets;

pub(super) struct State {
    pub(super) ledger: Ledger,
    pub(super) journal: Option<Journal>,
    pub(super) tickets: Tickets,
    /// Processes owning charges, as resolved when they got them.
    pub(super) owners: HashMap<u32, Process>,
    /// Where the kernel itself charged a buffer (the allocating process's cgroup), for heaps
    /// the kernel accounts: shown beside the ledger's owner so the gap is visible.
    pub(super) kernel_payer: HashMap<Inode, String>,
}

impl State {
    pub(super) fn track(&mut self, process: Process) {
        self.owners.insert(process.pid, process);
    }

    /// If a process moved to another cgroup since it was last seen, its charges follow it.
    pub(super) fn follow_migration(&mut self, process: &Process, events: &mut Vec<Event>) -> Result<()> {
        let moved = self
            .owners
            .get(&process.pid)
            .is_some_and(|known| known.start_time == process.start_time && known.cgroup != process.cgroup);
        if moved {
            events.push(self.ledger.migrate(process.pid, &process.cgroup)?);
        }
        Ok(())
    }
}

impl Accountant {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic on another binder thread must not take the service down with it: the ledger
        // is only changed through `apply`, which either completes or leaves it untouched.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` with the ledger locked; `f` pushes each event it applies. They are journaled
    /// before returning — also when `f` fails part-way, since what it applied stays applied
    /// (otherwise a restart would replay a ledger the service never had).
    pub(super) fn change<T>(&self, f: impl FnOnce(&mut State, &mut Vec<Event>) -> Result<T>) -> Result<T> {
        let mut state = self.lock();
        let mut events = Vec::new();
        let result = f(&mut state, &mut events);
        journal(&mut state, &events)?;
        result
    }

    /// Runs `f` on the ledger (read-only views: dump, regions, advice).
    pub fn with_ledger<T>(&self, f: impl FnOnce(&Ledger) -> T) -> T {
        f(&self.lock().ledger)
    }

    /// Applies events computed outside (autoconfig) and journals them.
    pub fn apply_events(&self, events: Vec<Event>) -> Result<()> {
        self.change(|state, applied| {
            for e in events {
                state.ledger.apply(&e)?;
                applied.push(e);
            }
            Ok(())
        })
    }

    /// Runs `f` with mutable access to the ledger and journals the events it returns.
    pub fn with_ledger_mut<T>(&self, f: impl FnOnce(&mut Ledger) -> Result<(T, Vec<Event>)>) -> Result<T> {
        self.change(|state, events| {
            let (value, applied) = f(&mut state.ledger)?;
            events.extend(applied);
            Ok(value)
        })
    }

    /// Writes a snapshot and starts a new journal generation (on shutdown, and when the journal
    /// grew past its threshold).
    pub fn compact(&self) -> Result<()> {
        let mut state = self.lock();
        let State { ledger, journal, .. } = &mut *state;
        if let Some(j) = journal {
            j.compact(ledger).map_err(|e| Error::Internal(format!("compaction: {e}")))?;
        }
        Ok(())
    }

    /// Syncs journal records written since the last sync (background flusher, batch mode).
    pub fn sync_journal(&self) -> Result<()> {
        match &mut self.lock().journal {
            Some(j) => j.flush().map_err(|e| Error::Internal(format!("journal sync: {e}"))),
            None => Ok(()),
        }
    }
}

/// Makes `events` durable. A failure here is reported as INTERNAL; the events stay applied in
/// memory and the next reconcile re-derives any charge the journal missed.
pub(super) fn journal(state: &mut State, events: &[Event]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let State { ledger, journal, .. } = state;
    if let Some(j) = journal {
        j.append_all(events).map_err(|e| Error::Internal(format!("journal append: {e}")))?;
        if j.should_compact() {
            if let Err(e) = j.compact(ledger) {
                warn!("journal compaction failed: {e}");
            }
        }
    }
    Ok(())
}
