//! The locked state: one mutex guards the ledger, the journal, the open offers and the known
//! owners together, so the journal's order is the order in which changes were applied.
//!
//! A change is all or nothing, in memory and on disk: each event applied to the ledger is
//! remembered with its inverse, computed from the ledger just before; the change's events are
//! journaled (before the offers and owners beside the ledger are touched, see
//! [`State::commit`]), and when the change fails or the journal cannot be written, the inverses
//! undo it. A journal that cannot be written stays broken: every later change fails with
//! INTERNAL, queries keep working, and `dumpState` says why.

use std::collections::{BTreeMap, HashMap};
use std::sync::MutexGuard;
use std::time::Instant;

use log::{error, warn};

use super::kernel_charged::KernelCharged;
use super::Accountant;
use crate::error::{Error, Result};
use crate::identity::Process;
use crate::journal::Journal;
use crate::ledger::{BufferInfo, Event, Inode, Ledger};
use crate::offers::Tickets;

/// A push or on-behalf charge whose receiver has yet to be seen holding the buffer.
#[derive(Clone, Debug)]
pub(super) struct Receipt {
    /// Who made the charge and gets it back if the receiver never holds the buffer.
    pub(super) giver: Process,
    pub(super) receiver: Process,
    pub(super) due: Instant,
}

pub(super) struct State {
    pub(super) ledger: Ledger,
    pub(super) journal: Option<Journal>,
    /// Why the journal cannot be written, once an append failed.
    pub(super) journal_broken: Option<String>,
    pub(super) tickets: Tickets,
    /// Processes owning charges, as resolved when they got them (the ledger knows pids only).
    pub(super) owners: HashMap<u32, Process>,
    /// Where the kernel itself charged a buffer (the allocating process's cgroup), for heaps
    /// the kernel accounts: shown beside the ledger's owner so the gap is visible, and summed
    /// per owner level for the kernel budget. Follows every ledger change.
    pub(super) kernel_charged: KernelCharged,
    /// Pushes and on-behalf charges awaiting proof that the receiver holds the buffer.
    pub(super) receipts: HashMap<Inode, Receipt>,
    /// Handoffs the last reconcile could not make (the receiver over its limit): inode → why.
    pub(super) handoffs_refused: BTreeMap<Inode, String>,
    /// The events of the change in progress with their inverses, not yet journaled.
    pending: Vec<(Event, Vec<Event>)>,
    /// Processes whose totals committed changes moved, while trace counters are on (`None`: off).
    touched: Option<Vec<u32>>,
}

impl State {
    pub(super) fn new(ledger: Ledger, journal: Option<Journal>) -> State {
        State {
            ledger,
            journal,
            journal_broken: None,
            tickets: Tickets::default(),
            owners: HashMap::new(),
            kernel_charged: KernelCharged::default(),
            receipts: HashMap::new(),
            handoffs_refused: BTreeMap::new(),
            pending: Vec::new(),
            touched: None,
        }
    }

    /// From now on, remembers whose totals each committed change moves.
    pub(super) fn trace_payers(&mut self) {
        self.touched.get_or_insert_with(Vec::new);
    }

    /// The new totals of the processes committed changes moved since the last call.
    fn take_touched_totals(&mut self) -> Vec<(u32, u64)> {
        let Some(touched) = self.touched.as_mut() else { return Vec::new() };
        let mut pids = std::mem::take(touched);
        pids.sort_unstable();
        pids.dedup();
        pids.into_iter().map(|pid| (pid, self.ledger.pid_totals(pid).1)).collect()
    }

    /// Applies one event to the ledger as part of the current change.
    pub(super) fn apply(&mut self, event: Event) -> Result<()> {
        let undo = inverse(&self.ledger, &event);
        self.ledger.apply(&event)?;
        self.kernel_charged.follow(&event, &self.ledger);
        self.pending.push((event, undo));
        Ok(())
    }

    /// Makes the change's events durable now, before the caller touches what lives beside the
    /// ledger (offers, owners, receipts), so a failed write leaves those untouched too. On
    /// failure the ledger is rolled back.
    pub(super) fn commit(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        if pending.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.write(pending.iter().map(|(e, _)| e)) {
            self.undo(pending);
            return Err(e);
        }
        if let Some(touched) = &mut self.touched {
            let moved = pending.iter().flat_map(|(e, undo)| std::iter::once(e).chain(undo));
            touched.extend(moved.filter_map(crate::memtrack::counters::payer_of));
        }
        Ok(())
    }

    fn write<'a>(&mut self, events: impl IntoIterator<Item = &'a Event>) -> Result<()> {
        if let Some(why) = &self.journal_broken {
            return Err(Error::Internal(format!("journal cannot be written ({why}); nothing changed")));
        }
        let State { ledger, journal, journal_broken, .. } = self;
        let Some(j) = journal else { return Ok(()) };
        if let Err(e) = j.append_all(events) {
            error!("journal append failed, changes are refused from now on: {e}");
            *journal_broken = Some(e.to_string());
            return Err(Error::Internal(format!("journal append: {e}; nothing changed")));
        }
        if j.should_compact() {
            if let Err(e) = j.compact(ledger) {
                warn!("journal compaction failed: {e}");
            }
        }
        Ok(())
    }

    /// Undoes the events of an abandoned change, newest first.
    fn undo(&mut self, pending: Vec<(Event, Vec<Event>)>) {
        for (event, inverse) in pending.into_iter().rev() {
            for e in inverse {
                if let Err(err) = self.ledger.apply(&e) {
                    error!("cannot undo {event:?} with {e:?}: {err}");
                }
                self.kernel_charged.follow(&e, &self.ledger);
            }
        }
    }

    /// Records `process` as an owner. An earlier process with the same pid is gone (the pid was
    /// recycled before its death was handled): its charges are parked on their parent cgroups
    /// first, so the newcomer inherits none of them.
    pub(super) fn track(&mut self, process: Process) -> Result<()> {
        let stale = match self.owners.get(&process.pid) {
            Some(old) => !old.is(&process),
            // Charges under this pid whose owner is unknown (gone before a restart).
            None => self.ledger.pid_totals(process.pid).0 > 0,
        };
        if stale {
            self.park_charges_of(process.pid)?;
        }
        self.owners.insert(process.pid, process);
        Ok(())
    }

    /// Moves the charges of a gone owner to the parent of its cgroup, with no owning process
    /// (the hand-over rule's step 2), and forgets it.
    pub(super) fn park_charges_of(&mut self, pid: u32) -> Result<()> {
        for inode in self.ledger.buffers_of_pid(pid) {
            let b = self.ledger.buffer(inode).expect("listed");
            self.apply(Event::Reassigned { inode, pid: 0, start: 0, cgroup: parent_of(&b.cgroup) })?;
        }
        self.owners.remove(&pid);
        Ok(())
    }

    /// The recorded owner of `b`, if that is `process` (all of its identity; a charge recorded
    /// without a start time, by format version 1, is matched by the known owner alone).
    pub(super) fn owned_by(&self, b: &BufferInfo, process: &Process) -> bool {
        b.pid == process.pid
            && (b.start == 0 || b.start == process.start_time)
            && self.owners.get(&b.pid).is_some_and(|o| o.is(process))
    }

    /// If a process moved to another cgroup since it was last seen, its charges follow it.
    pub(super) fn follow_migration(&mut self, process: &Process) -> Result<()> {
        let moved =
            self.owners.get(&process.pid).is_some_and(|known| known.is(process) && known.cgroup != process.cgroup);
        if moved {
            self.apply(Event::Migrated { pid: process.pid, cgroup: process.cgroup.clone() })?;
        }
        Ok(())
    }
}

/// The parent of a cgroup path (`/uid_1/pid_2` → `/uid_1`; the root's parent is the root).
pub(super) fn parent_of(cgroup: &str) -> String {
    match cgroup.rfind('/') {
        Some(0) | None => "/".to_string(),
        Some(i) => cgroup[..i].to_string(),
    }
}

/// The events that undo `event` on `ledger` as it is before `event` applies. Heaps and regions
/// are declared once at start and never undone (a failed start fails the open).
fn inverse(ledger: &Ledger, event: &Event) -> Vec<Event> {
    let mut undo = inverse_of_change(ledger, event);
    // Cgroups the event creates go too, deepest first (they hold nothing once the change is
    // undone): a node left behind would be in memory but in no journaled event.
    if let Event::Charged { cgroup, .. }
    | Event::Transferred { cgroup, .. }
    | Event::Reassigned { cgroup, .. }
    | Event::Migrated { cgroup, .. }
    | Event::LimitSet { cgroup, .. } = event
    {
        let mut path = cgroup.clone();
        while path != "/" && ledger.counter(&path, crate::ledger::MEMCG_POOL).is_none() {
            undo.push(Event::Reparented { cgroup: path.clone() });
            path = parent_of(&path);
        }
    }
    undo
}

fn inverse_of_change(ledger: &Ledger, event: &Event) -> Vec<Event> {
    let back =
        |b: &BufferInfo| Event::Reassigned { inode: b.inode, pid: b.pid, start: b.start, cgroup: b.cgroup.clone() };
    match event {
        Event::RegionAdded { .. } | Event::HeapAdded { .. } => Vec::new(),
        Event::Charged { inode, .. } => vec![Event::Released { inode: *inode }],
        Event::Released { inode } => ledger.buffer(*inode).map_or_else(Vec::new, |b| {
            let mut v = vec![Event::Charged {
                inode: b.inode,
                size: b.size,
                heap: b.heap.clone(),
                pid: b.pid,
                start: b.start,
                cgroup: b.cgroup.clone(),
            }];
            if b.pinned && !b.class.always_pinned() {
                v.push(Event::Pinned { inode: b.inode });
            }
            if b.evicted {
                v.push(Event::Evicted { inode: b.inode });
            }
            v
        }),
        Event::Transferred { inode, .. } | Event::Reassigned { inode, .. } => {
            ledger.buffer(*inode).map(|b| back(&b)).into_iter().collect()
        }
        Event::Migrated { pid, .. } => {
            ledger.buffers_of_pid(*pid).into_iter().filter_map(|i| ledger.buffer(i)).map(|b| back(&b)).collect()
        }
        Event::Reparented { cgroup } => ledger.buffers().filter(|b| &b.cgroup == cgroup).map(|b| back(&b)).collect(),
        Event::LimitSet { cgroup, pool, kind, .. } => {
            let old = ledger.counter(cgroup, pool).unwrap_or_default().limit(*kind);
            vec![Event::LimitSet { cgroup: cgroup.clone(), pool: pool.clone(), kind: *kind, value: old }]
        }
        Event::Evicted { inode } => vec![Event::Restored { inode: *inode }],
        Event::Restored { inode } => vec![Event::Evicted { inode: *inode }],
        Event::Pinned { inode } => vec![Event::Unpinned { inode: *inode }],
        Event::Unpinned { inode } => vec![Event::Pinned { inode: *inode }],
    }
}

impl Accountant {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic on another binder thread must not take the service down with it: a change
        // either completes or is undone.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` with the state locked as one change: its events are journaled when it returns
    /// (unless it committed them itself); if it fails, or the journal cannot be written, every
    /// event it applied is undone.
    pub(super) fn change<T>(&self, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let mut state = self.lock();
        if let Some(why) = &state.journal_broken {
            return Err(Error::Internal(format!("journal cannot be written ({why}); nothing changed")));
        }
        match f(&mut state) {
            Ok(value) => {
                state.commit()?;
                // The marker is taken before the ledger is let go, so markers keep the ledger's
                // order; the write itself happens unlocked.
                let totals = state.take_touched_totals();
                let marker = self.trace_counters.get().filter(|_| !totals.is_empty()).map(|c| c.lock());
                drop(state);
                if let Some(mut marker) = marker {
                    marker.emit(&totals);
                }
                Ok(value)
            }
            Err(e) => {
                let pending = std::mem::take(&mut state.pending);
                state.undo(pending);
                Err(e)
            }
        }
    }

    /// Runs `f` on the ledger (read-only views: dump, regions, advice).
    pub fn with_ledger<T>(&self, f: impl FnOnce(&Ledger) -> T) -> T {
        f(&self.lock().ledger)
    }

    /// Why changes are refused, if the journal cannot be written.
    pub fn journal_broken(&self) -> Option<String> {
        self.lock().journal_broken.clone()
    }

    /// Handoffs the last reconcile could not make, with why (the receiver over its limit).
    pub fn handoffs_refused(&self) -> Vec<(Inode, String)> {
        self.lock().handoffs_refused.iter().map(|(i, why)| (*i, why.clone())).collect()
    }

    /// Applies events computed outside (autoconfig) and journals them.
    pub fn apply_events(&self, events: Vec<Event>) -> Result<()> {
        self.change(|state| events.into_iter().try_for_each(|e| state.apply(e)))
    }

    /// Runs `f` on a scratch copy of the ledger's events and applies what it returns as one
    /// change.
    pub fn with_ledger_mut<T>(&self, f: impl FnOnce(&mut Ledger) -> Result<(T, Vec<Event>)>) -> Result<T> {
        self.change(|state| {
            let mut scratch = Ledger::new();
            for e in state.ledger.to_events() {
                scratch.apply(&e)?;
            }
            let (value, events) = f(&mut scratch)?;
            events.into_iter().try_for_each(|e| state.apply(e))?;
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

    /// Syncs journal records written since the last sync (background flusher, batch mode). The
    /// fdatasync runs outside the ledger lock, so calls never wait behind the disk.
    pub fn sync_journal(&self) -> Result<()> {
        let unsynced = match &mut self.lock().journal {
            Some(j) => j.take_unsynced().map_err(|e| Error::Internal(format!("journal sync: {e}")))?,
            None => None,
        };
        let Some(file) = unsynced else { return Ok(()) };
        file.sync_data().map_err(|e| {
            if let Some(j) = &mut self.lock().journal {
                j.sync_failed();
            }
            Error::Internal(format!("journal sync: {e}"))
        })
    }
}

/// Journals the events of the start (heap declarations): there is nothing to undo yet.
pub(super) fn journal(state: &mut State, events: &[Event]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    state.write(events)
}
