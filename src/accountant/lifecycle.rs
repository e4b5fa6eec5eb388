//! Lifecycle of charges: an owner's death, the hand-over rule for a buffer that outlives its
//! owner, the handoff rule (at reconcile, and re-checked for just the payers the kernel saw let
//! go), the holder rule's receipts, and reconcile against the procfs truth. Every /proc and
//! cgroupfs read happens before the state is locked.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use log::{info, warn};

use super::budget::{check_kernel_budget_on_move, KernelBudget};
use super::cgroup_path::uid_of_cgroup;
use super::payer::{choose_payer, is_app, Candidate};
use super::state::{parent_of, State};
use super::Accountant;
use crate::error::{Error, Result};
use crate::identity::Process;
use crate::kernel::view::{DmaBufScan, Holders, ScannedBuffer};
use crate::ledger::{BufferInfo, Event, Inode, LedgerError};

/// What a reconcile pass found and repaired.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReconcileReport {
    pub released: Vec<Inode>,
    /// Handed over after a death, handed off because the payer let go of a buffer others hold,
    /// or given back because the receiver of a push never held it.
    pub moved: Vec<Inode>,
    /// Handoffs refused because the receiver is over its limit: the payer keeps paying.
    pub handoffs_refused: Vec<Inode>,
    /// Let go by a payer that is alive while no process that may take the charge holds it (in
    /// flight in a binder transaction, or held only by platform processes): the payer keeps paying.
    pub awaiting_holder: Vec<Inode>,
    pub unaccounted: Vec<Inode>,
    pub unaccounted_bytes: u64,
    pub migrated: Vec<u32>,
    pub reparented: Vec<String>,
    pub processes_scanned: usize,
    pub buffers_seen: usize,
}

/// The processes holding `inode` in `scan`, other than `except`.
fn holders_of(scan: &DmaBufScan, inode: Inode, except: u32) -> BTreeSet<u32> {
    scan.buffers.get(inode).map(|b| b.holders.pids().filter(|p| *p != except).collect()).unwrap_or_default()
}

impl Accountant {
    /// The documented handoff rule when an owner is gone but the buffer lives on:
    /// 1. another live process of the same uid that holds it becomes the owner (same app,
    ///    same budget; lowest pid for determinism);
    /// 2. otherwise the charge moves to the parent of the dead owner's cgroup (pid_X → uid_X),
    ///    as the kernel reparents, with no owning process: the app's family keeps paying and no
    ///    other app is charged without consent; it stays there until a process of that uid
    ///    holds the buffer again (rule 1);
    /// 3. once no process holds the buffer, it is released (at the death of its last holder, or
    ///    by reconcile).
    ///
    /// `live` holds the holders, resolved before locking.
    fn hand_over(
        state: &mut State,
        inode: Inode,
        dead_uid: Option<u32>,
        holders: &BTreeSet<u32>,
        live: &HashMap<u32, Process>,
    ) -> Result<bool> {
        let b = state.ledger.buffer(inode).ok_or(LedgerError::UnknownBuffer(inode))?;
        for &pid in holders {
            if pid == b.pid {
                continue;
            }
            let Some(p) = live.get(&pid) else { continue };
            if Some(p.uid) == dead_uid {
                // Same app: it pays even over its limit (the excess shows in max_events). A
                // holder in a cgroup the ledger cannot represent (a name with a space) cannot
                // pay: the next holder, or the parent rule, does.
                state.track(p.clone())?;
                let to = Event::Reassigned { inode, pid: p.pid, start: p.start_time, cgroup: p.cgroup.clone() };
                match state.apply(to) {
                    Ok(()) => return Ok(true),
                    Err(e) => warn!("buffer {inode}: holder pid {pid} cannot take the charge: {e}"),
                }
            }
        }
        // Already parked on the dead owner's parent cgroup: it stays there. Moving it again would
        // climb one level per reconcile pass until the root paid for the app's buffer.
        if b.pid == 0 {
            return Ok(false);
        }
        state.apply(Event::Reassigned { inode, pid: 0, start: 0, cgroup: parent_of(&b.cgroup) })?;
        Ok(true)
    }

    /// The handoff rule: a live payer that no longer holds its buffer (no fd, no mapping) while
    /// other processes do stops paying; the holder [`choose_payer`] picks pays instead (an app's
    /// charge only ever goes to another app: it keeps paying what only platform processes hold), within
    /// its limits as an accept would be (over them, the payer keeps paying and the refusal is
    /// kept for `dumpState`). The limits are the ledger's and, for a heap the kernel charges at
    /// allocation, the receiver's memory.max against what the kernel counts elsewhere — the
    /// check an accept makes (`budgets`, read before locking by [`Self::handoff_budgets`]).
    /// Needs no call from either side, so it covers apps handing buffers to each other over
    /// binder, which cannot call the service. Not while a push or on-behalf charge awaits its
    /// receiver (the holder rule settles those: at reconcile, or when the kernel reports the
    /// receiver got an fd over binder and the scan sees it holding the buffer), and only on a
    /// full view. `Ok(true)` when the charge moved.
    fn hand_off(
        state: &mut State,
        b: &BufferInfo,
        holders: Holders<'_>,
        live: &HashMap<u32, Process>,
        budgets: &HashMap<u32, KernelBudget>,
    ) -> Result<bool> {
        // An app's charge never goes to a platform process: SurfaceFlinger holds every app's
        // queued buffers, and an app closing its own fds must not make the compositor pay.
        let app_payer = state.owners.get(&b.pid).is_some_and(|o| is_app(o.uid));
        let candidates: Vec<Candidate> = holders
            .iter()
            .filter_map(|(pid, holder)| Some(Candidate { process: live.get(&pid)?.clone(), holder }))
            .filter(|c| !app_payer || is_app(c.process.uid))
            .collect();
        let Some(to) = choose_payer(&candidates).map(|c| c.process.clone()) else { return Ok(false) };
        let event = Event::Transferred { inode: b.inode, pid: to.pid, start: to.start_time, cgroup: to.cgroup.clone() };
        let moved = check_kernel_budget_on_move(state, budgets.get(&to.pid), b.inode, &b.cgroup, &to)
            .and_then(|()| state.track(to.clone()))
            .and_then(|()| state.apply(event));
        match moved {
            Ok(()) => {
                let held_by: Vec<u32> = holders.pids().collect();
                info!("buffer {}: pid {} let go of it (held by {held_by:?}); pid {} pays", b.inode, b.pid, to.pid);
                state.handoffs_refused.remove(&b.inode);
                Ok(true)
            }
            Err(Error::Ledger(e @ (LedgerError::OverLimit { .. } | LedgerError::OverPinLimit { .. }))) => {
                info!(
                    "buffer {}: pid {} let go of it; holder pid {} cannot take the charge: {e}",
                    b.inode, b.pid, to.pid
                );
                state.handoffs_refused.insert(b.inode, format!("to pid {} in {}: {e}", to.pid, to.cgroup));
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Forgets what lived beside the ledger for buffers no longer charged.
    fn forget_released(state: &mut State, inodes: &[Inode]) {
        for inode in inodes {
            state.tickets.forget_buffer(*inode);
            state.kernel_charged.remove(*inode);
            state.receipts.remove(inode);
            state.handoffs_refused.remove(inode);
        }
    }

    /// A process died (binder death notification or pidfd). If it owned charges, each is released
    /// when no other process holds the buffer, or handed over by the rule in
    /// [`Self::hand_over`]; charges parked on a dead app's cgroup that nobody holds any more are
    /// released too (this may have been their last holder). When the scan could not read every
    /// process, nothing is released on its word: the charge is handed over instead and the next
    /// complete reconcile settles it.
    pub fn process_died(&self, pid: u32) -> Result<usize> {
        self.handle_death(pid, None)
    }

    /// [`Self::process_died`] for a death known by identity (a death token, a pidfd): a notice
    /// about a process that is not the recorded owner of that pid (the pid was recycled since)
    /// leaves the owner's charges alone.
    pub fn process_exited(&self, dead: &Process) -> Result<usize> {
        self.handle_death(dead.pid, Some(dead))
    }

    fn handle_death(&self, pid: u32, expected: Option<&Process>) -> Result<usize> {
        let (dead, inodes, parked) = {
            let state = self.lock();
            let dead = state.owners.get(&pid).filter(|o| expected.is_none_or(|e| o.is(e))).cloned();
            let inodes = if dead.is_some() { state.ledger.buffers_of_pid(pid) } else { Vec::new() };
            (dead, inodes, state.ledger.buffers_of_pid(0))
        };
        // A stale notice must not unpin the process that has the pid now.
        if expected.is_none() || dead.is_some() {
            self.processes.forget(pid);
        }
        if inodes.is_empty() && parked.is_empty() {
            if let Some(d) = dead {
                self.lock().owners.retain(|_, o| !o.is(&d));
            }
            return Ok(0);
        }
        let scan = self.scanner.scan_all().map_err(Error::from)?;
        let live: HashMap<u32, Process> = inodes
            .iter()
            .flat_map(|i| holders_of(&scan, *i, pid))
            .collect::<BTreeSet<u32>>()
            .into_iter()
            .filter_map(|p| self.processes.resolve(p).ok().map(|x| (p, x)))
            .collect();
        self.change(|state| {
            let mut released = Vec::new();
            let mut handled = 0;
            let still_recorded = dead.as_ref().filter(|d| state.owners.get(&pid).is_some_and(|o| o.is(d)));
            if let Some(d) = still_recorded.cloned() {
                for &inode in &inodes {
                    // The lock was dropped for the scan: skip charges that changed hands meanwhile.
                    if state.ledger.buffer(inode).is_none_or(|b| b.pid != pid) {
                        continue;
                    }
                    let holders = holders_of(&scan, inode, pid);
                    if holders.is_empty() && scan.is_complete() {
                        state.apply(Event::Released { inode })?;
                        released.push(inode);
                    } else {
                        Self::hand_over(state, inode, Some(d.uid), &holders, &live)?;
                    }
                    handled += 1;
                }
                state.owners.remove(&pid);
            }
            if scan.is_complete() {
                for &inode in &parked {
                    let still_parked = state.ledger.buffer(inode).is_some_and(|b| b.pid == 0);
                    if still_parked && holders_of(&scan, inode, pid).is_empty() {
                        state.apply(Event::Released { inode })?;
                        released.push(inode);
                        handled += 1;
                    }
                }
            }
            state.commit()?;
            Self::forget_released(state, &released);
            if handled > 0 {
                info!("pid {pid} died: {handled} charges handled");
            }
            Ok(handled)
        })
    }

    /// Compares the ledger with the scanner's truth (BPF or procfs) and repairs it: releases
    /// buffers no process holds, hands over charges of dead owners, gives back pushes whose
    /// receiver never held the buffer, follows cgroup moves, reparents removed cgroups, and
    /// reports dma-bufs nobody charged.
    pub fn reconcile(&self) -> Result<ReconcileReport> {
        // Payers before the scan: a charge that changes hands while it runs (an accept, a push)
        // is not handed off on a view that may predate its new payer's fd.
        let payers_before: HashMap<Inode, u32> = self.lock().ledger.buffers().map(|b| (b.inode, b.pid)).collect();
        let scan = self.scanner.scan_all().map_err(Error::from)?;
        let mut report = ReconcileReport {
            processes_scanned: scan.processes,
            buffers_seen: scan.buffers.len(),
            ..ReconcileReport::default()
        };
        let (owner_pids, cgroups, givers) = {
            let state = self.lock();
            let givers: Vec<u32> = state.receipts.values().map(|r| r.giver.pid).collect();
            (state.owners.keys().copied().collect::<Vec<_>>(), state.ledger.cgroups(), givers)
        };
        let mut live: HashMap<u32, Process> = scan
            .buffers
            .iter()
            .flat_map(|b| b.holders.pids())
            .chain(owner_pids)
            .chain(givers)
            .collect::<BTreeSet<u32>>()
            .into_iter()
            .filter_map(|pid| self.processes.resolve_fresh(pid).ok().map(|p| (pid, p)))
            .collect();
        self.drop_exiting(&mut live, &scan, payers_before.iter().map(|(i, p)| (*i, *p)));
        let budgets = self.handoff_budgets(&scan, &live, None);
        let removed_cgroups: Vec<String> = match &self.cgroupfs {
            Some(fs) => cgroups.into_iter().rev().filter(|p| p != "/" && !fs.exists(p)).collect(),
            None => Vec::new(),
        };
        let now = Instant::now();
        self.change(|state| {
            let mut released = Vec::new();
            state.handoffs_refused.clear();
            let known: Vec<BufferInfo> = state.ledger.buffers().collect();
            for b in &known {
                let Some(seen) = scan.buffers.get(b.inode) else {
                    // A process the scan could not read may hold it: release only on a full view.
                    // A buffer charged while the scan ran may be newer than the scan saw (it
                    // is then missing from it): the next pass settles it.
                    if !scan.is_complete() || !payers_before.contains_key(&b.inode) {
                        continue;
                    }
                    state.apply(Event::Released { inode: b.inode })?;
                    released.push(b.inode);
                    continue;
                };
                let owner_alive = state.owners.get(&b.pid).is_some_and(|o| live.get(&b.pid).is_some_and(|l| l.is(o)));
                if owner_alive {
                    if payers_before.get(&b.inode) == Some(&b.pid) {
                        Self::settle_let_go(state, b, &seen, scan.is_complete(), &live, &budgets, &mut report)?;
                    }
                } else {
                    let dead_uid = state.owners.get(&b.pid).map(|o| o.uid).or_else(|| uid_of_cgroup(&b.cgroup));
                    let holders: BTreeSet<u32> = seen.holders.pids().filter(|p| *p != b.pid).collect();
                    if Self::hand_over(state, b.inode, dead_uid, &holders, &live)? {
                        report.moved.push(b.inode);
                    }
                }
            }
            Self::settle_receipts(state, &scan, &live, now, &mut report)?;
            for (pid, process) in &live {
                let was = state.owners.get(pid).cloned();
                if let Some(known) = was {
                    if known.is(process)
                        && known.cgroup != process.cgroup
                        && !state.ledger.buffers_of_pid(*pid).is_empty()
                    {
                        // One process in a cgroup the ledger cannot represent must not stop the
                        // pass for everyone else: its charges stay where they are.
                        match state.apply(Event::Migrated { pid: *pid, cgroup: process.cgroup.clone() }) {
                            Ok(()) => {
                                report.migrated.push(*pid);
                                state.owners.insert(*pid, process.clone());
                            }
                            Err(e) => warn!("reconcile: pid {pid} moved to {}: {e}", process.cgroup),
                        }
                    }
                }
            }
            let dead: Vec<u32> = state.owners.keys().copied().filter(|pid| !live.contains_key(pid)).collect();
            for pid in dead {
                state.owners.remove(&pid);
                self.processes.forget(pid);
            }
            for path in &removed_cgroups {
                if state.ledger.has_cgroup(path) && state.apply(Event::Reparented { cgroup: path.clone() }).is_ok() {
                    report.reparented.push(path.clone());
                }
            }
            for seen in scan.buffers.iter() {
                let known = state.ledger.buffer(seen.inode).is_some();
                let ours = seen.exporter.is_some_and(|e| state.ledger.heap(e).is_some());
                if !known && ours {
                    report.unaccounted.push(seen.inode);
                    // Sizes come from /proc: a corrupt fdinfo must not overflow the report.
                    report.unaccounted_bytes = report.unaccounted_bytes.saturating_add(seen.size);
                }
            }
            state.commit()?;
            Self::forget_released(state, &released);
            report.released = released;
            Ok(())
        })?;
        report.released.sort_unstable();
        report.moved.sort_unstable();
        report.moved.dedup();
        report.handoffs_refused.sort_unstable();
        report.unaccounted.sort_unstable();
        report.migrated.sort_unstable();
        if !report.released.is_empty() || !report.moved.is_empty() {
            info!("reconcile: released {:?}, moved {:?}", report.released, report.moved);
        }
        Ok(report)
    }

    /// The handoff rule for one buffer whose payer is alive: applied when the payer no longer
    /// holds it on a complete view and no push awaits its receiver; the outcome goes to `report`.
    fn settle_let_go(
        state: &mut State,
        b: &BufferInfo,
        seen: &ScannedBuffer<'_>,
        complete: bool,
        live: &HashMap<u32, Process>,
        budgets: &HashMap<u32, KernelBudget>,
        report: &mut ReconcileReport,
    ) -> Result<()> {
        if !complete || seen.holders.contains(b.pid) || state.receipts.contains_key(&b.inode) {
            return Ok(());
        }
        if Self::hand_off(state, b, seen.holders, live, budgets)? {
            report.moved.push(b.inode);
        } else if state.handoffs_refused.contains_key(&b.inode) {
            report.handoffs_refused.push(b.inode);
        } else {
            report.awaiting_holder.push(b.inode);
        }
        Ok(())
    }

    /// Takes out of `live` each payer the scan shows not holding a buffer it pays for (of
    /// `paid`, by inode) because it is exiting: its exit took its fds before its pidfd says it
    /// is gone, and a dying payer's charges follow the death rule (to a process of its app, else
    /// parked on the app), not the let-go rule (to another app). Which rule applies must not
    /// depend on whether a scan lands during an exit. File I/O: call it before locking.
    fn drop_exiting(
        &self,
        live: &mut HashMap<u32, Process>,
        scan: &DmaBufScan,
        paid: impl Iterator<Item = (Inode, u32)>,
    ) {
        let let_go: BTreeSet<u32> = paid
            .filter(|(i, p)| scan.buffers.get(*i).is_some_and(|b| !b.holders.contains(*p)))
            .map(|(_, p)| p)
            .collect();
        for pid in let_go {
            if live.contains_key(&pid) && self.processes.exiting(pid) {
                info!("pid {pid} is exiting: its charges follow the death rule");
                live.remove(&pid);
            }
        }
    }

    /// The kernel budgets (memory.max, memory.current) of the processes a handoff may pick:
    /// holders of charged buffers, of heaps the kernel charges at allocation, whose payer no
    /// longer holds them (`only`: of these buffers). File I/O: call it before locking.
    fn handoff_budgets(
        &self,
        scan: &DmaBufScan,
        live: &HashMap<u32, Process>,
        only: Option<&BTreeSet<Inode>>,
    ) -> HashMap<u32, KernelBudget> {
        let charged: Vec<(Inode, u32, String)> = {
            let state = self.lock();
            match only {
                Some(inodes) => {
                    inodes.iter().filter_map(|i| state.ledger.buffer(*i)).map(|b| (b.inode, b.pid, b.heap)).collect()
                }
                None => state.ledger.buffers().map(|b| (b.inode, b.pid, b.heap)).collect(),
            }
        };
        let mut budgets = HashMap::new();
        for (inode, payer, heap) in charged {
            let Some(seen) = scan.buffers.get(inode) else { continue };
            if seen.holders.contains(payer) || !self.kernel_charges_heap(&heap) {
                continue;
            }
            for pid in seen.holders.pids() {
                if let (Some(p), false) = (live.get(&pid), budgets.contains_key(&pid)) {
                    if let Some(budget) = self.kernel_budget(p) {
                        budgets.insert(pid, budget);
                    }
                }
            }
        }
        budgets
    }

    /// The handoff rule, now, for just the buffers involved: those `payers` pay for (the kernel
    /// saw them close a dma-buf fd; with `closed`, only those of the buffers it named), those
    /// pushed or charged on behalf of `receivers` (the kernel saw them receive an fd over binder:
    /// seen holding the buffer, the receipt is settled), and those in `also`. No full view when
    /// none is involved; else one, then [`Self::settle_let_go`] for each, journaled as
    /// reconcile's handoffs. Nothing else is repaired here; the periodic reconcile still runs.
    pub fn recheck_handoffs(
        &self,
        payers: &BTreeSet<u32>,
        closed: Option<&BTreeSet<Inode>>,
        receivers: &BTreeSet<u32>,
        also: &BTreeSet<Inode>,
    ) -> Result<ReconcileReport> {
        // Each buffer with its payer before the scan: one whose charge changes hands meanwhile
        // (an accept, a push) is left alone, as the scan may predate its new payer's fd.
        let inodes: BTreeMap<Inode, u32> = {
            let state = self.lock();
            let received = state.receipts.iter().filter(|(_, r)| receivers.contains(&r.receiver.pid)).map(|(i, _)| *i);
            let payer_of = |i: Inode| state.ledger.buffer(i).map(|b| (i, b.pid));
            // The closed buffers a payer pays for: a lookup each, not a walk of the ledger.
            let paid_closed: Vec<(Inode, u32)> = match closed {
                Some(c) => c.iter().filter_map(|i| payer_of(*i)).filter(|(_, p)| payers.contains(p)).collect(),
                None => payers.iter().flat_map(|p| state.ledger.buffers_of_pid(*p)).filter_map(payer_of).collect(),
            };
            paid_closed.into_iter().chain(received.chain(also.iter().copied()).filter_map(payer_of)).collect()
        };
        let mut report = ReconcileReport::default();
        if inodes.is_empty() {
            return Ok(report);
        }
        let scan = self.scanner.scan_all().map_err(Error::from)?;
        report.processes_scanned = scan.processes;
        report.buffers_seen = scan.buffers.len();
        let mut live: HashMap<u32, Process> = inodes
            .keys()
            .filter_map(|i| scan.buffers.get(*i))
            .flat_map(|b| b.holders.pids())
            .chain(payers.iter().copied())
            .collect::<BTreeSet<u32>>()
            .into_iter()
            .filter_map(|pid| self.processes.resolve_fresh(pid).ok().map(|p| (pid, p)))
            .collect();
        self.drop_exiting(&mut live, &scan, inodes.iter().map(|(i, p)| (*i, *p)));
        let budgets = self.handoff_budgets(&scan, &live, Some(&inodes.keys().copied().collect()));
        self.change(|state| {
            for (inode, payer) in &inodes {
                // The lock was dropped for the scan: a buffer released or moved meanwhile is the
                // next event's (or reconcile's) business.
                let (Some(b), Some(seen)) = (state.ledger.buffer(*inode), scan.buffers.get(*inode)) else { continue };
                if b.pid != *payer {
                    continue;
                }
                let receipt = state.receipts.get(inode);
                if receipt.is_some_and(|r| receivers.contains(&r.receiver.pid) && seen.holders.contains(r.receiver.pid))
                {
                    state.receipts.remove(inode);
                }
                let owner_alive = state.owners.get(&b.pid).is_some_and(|o| live.get(&b.pid).is_some_and(|l| l.is(o)));
                if owner_alive {
                    Self::settle_let_go(state, &b, &seen, scan.is_complete(), &live, &budgets, &mut report)?;
                }
            }
            state.commit()
        })?;
        if !report.moved.is_empty() {
            info!("handoff events: moved {:?}", report.moved);
        }
        Ok(report)
    }

    /// The holder rule: a push or on-behalf charge whose receiver still pays but was not seen
    /// holding the buffer once its grace period is over goes back to whoever made it, if that
    /// process is alive; nobody pays for what they never received. Seen holding it: settled.
    fn settle_receipts(
        state: &mut State,
        scan: &DmaBufScan,
        live: &HashMap<u32, Process>,
        now: Instant,
        report: &mut ReconcileReport,
    ) -> Result<()> {
        let receipts: Vec<(Inode, super::state::Receipt)> =
            state.receipts.iter().map(|(i, r)| (*i, r.clone())).collect();
        for (inode, r) in receipts {
            let Some(b) = state.ledger.buffer(inode) else {
                state.receipts.remove(&inode);
                continue;
            };
            let received = scan.buffers.get(inode).is_some_and(|s| s.holders.contains(r.receiver.pid));
            if received || !state.owned_by(&b, &r.receiver) {
                state.receipts.remove(&inode);
                continue;
            }
            if now < r.due {
                continue;
            }
            state.receipts.remove(&inode);
            let giver_alive = live.get(&r.giver.pid).is_some_and(|p| p.is(&r.giver));
            if giver_alive && scan.is_complete() {
                let giver = live[&r.giver.pid].clone();
                state.track(giver.clone())?;
                state.apply(Event::Reassigned {
                    inode,
                    pid: giver.pid,
                    start: giver.start_time,
                    cgroup: giver.cgroup.clone(),
                })?;
                report.moved.push(inode);
            }
        }
        Ok(())
    }
}
