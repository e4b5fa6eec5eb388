//! Lifecycle of charges: an owner's death, the hand-over rule for a buffer that outlives its
//! owner, and reconcile against the procfs truth.

use std::collections::{BTreeSet, HashMap};

use log::{info, warn};

use super::cgroup_path::uid_of_cgroup;
use super::state::State;
use super::Accountant;
use crate::error::{Error, Result};
use crate::identity::Process;
use crate::ledger::{BufferInfo, Event, Inode, LedgerError};

/// What a reconcile pass found and repaired.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReconcileReport {
    pub released: Vec<Inode>,
    pub moved: Vec<Inode>,
    pub unaccounted: Vec<Inode>,
    pub unaccounted_bytes: u64,
    pub migrated: Vec<u32>,
    pub reparented: Vec<String>,
    pub processes_scanned: usize,
    pub buffers_seen: usize,
}

impl Accountant {
    /// The documented handoff rule when an owner is gone but the buffer lives on:
    /// 1. another live process of the same uid that holds it becomes the owner (same app,
    ///    same budget; lowest pid for determinism);
    /// 2. otherwise the charge moves to the parent of the dead owner's cgroup (pid_X → uid_X),
    ///    as the kernel reparents, with no owning process: the app's family keeps paying and no
    ///    other app is charged without consent; it stays there until a process of that uid
    ///    holds the buffer again (rule 1);
    /// 3. once no process holds the buffer, it is released (by reconcile).
    fn hand_over(
        &self,
        state: &mut State,
        inode: Inode,
        dead_uid: Option<u32>,
        holders: &BTreeSet<u32>,
    ) -> Result<Option<Event>> {
        let b = state.ledger.buffer(inode).ok_or(LedgerError::UnknownBuffer(inode))?;
        for &pid in holders {
            if pid == b.pid {
                continue;
            }
            let Ok(p) = self.processes.resolve(pid) else { continue };
            if Some(p.uid) == dead_uid {
                // Same app: it pays even over its limit (the excess shows in max_events). A
                // holder in a cgroup the ledger cannot represent (a name with a space) cannot
                // pay: the next holder, or the parent rule, does.
                match state.ledger.reassign(inode, p.pid, &p.cgroup) {
                    Ok(event) => {
                        state.track(p);
                        return Ok(Some(event));
                    }
                    Err(e) => warn!("buffer {inode}: holder pid {pid} cannot take the charge: {e}"),
                }
            }
        }
        // Already parked on the dead owner's parent cgroup: it stays there. Moving it again would
        // climb one level per reconcile pass until the root paid for the app's buffer.
        if b.pid == 0 {
            return Ok(None);
        }
        let parent = match b.cgroup.rfind('/') {
            Some(0) | None => "/".to_string(),
            Some(i) => b.cgroup[..i].to_string(),
        };
        Ok(Some(state.ledger.reassign(inode, 0, &parent)?))
    }

    /// A process died (binder death notification or pidfd): each of its charges is released when
    /// no other process holds the buffer, or handed over by the rule in [`Self::hand_over`]. When
    /// the scan could not read every process, nothing is released on its word: the charge is
    /// handed over instead and the next complete reconcile settles it.
    pub fn process_died(&self, pid: u32) -> Result<usize> {
        self.processes.forget(pid);
        let (inodes, uid) = {
            let mut state = self.lock();
            let Some(dead) = state.owners.remove(&pid) else { return Ok(0) };
            (state.ledger.buffers_of_pid(pid), dead.uid)
        };
        if inodes.is_empty() {
            return Ok(0);
        }
        let scan = self.processes.procfs().scan_all().map_err(Error::from)?;
        let n = inodes.len();
        self.change(|state, events| {
            for inode in inodes {
                // The lock was dropped for the scan: skip charges that changed hands meanwhile.
                if state.ledger.buffer(inode).is_none_or(|b| b.pid != pid) {
                    continue;
                }
                let holders: BTreeSet<u32> = scan
                    .buffers
                    .get(&inode)
                    .map(|b| b.holders.keys().copied().filter(|p| *p != pid).collect())
                    .unwrap_or_default();
                if holders.is_empty() && scan.is_complete() {
                    events.push(state.ledger.release(inode)?);
                    state.kernel_payer.remove(&inode);
                } else if let Some(e) = self.hand_over(state, inode, Some(uid), &holders)? {
                    events.push(e);
                }
                state.tickets.forget_buffer(inode);
            }
            info!("pid {pid} died: {n} charges handled");
            Ok(n)
        })
    }

    /// Compares the ledger with the procfs truth and repairs it: releases buffers no process
    /// holds, hands over charges of dead owners, follows cgroup moves, reparents removed cgroups,
    /// and reports dma-bufs nobody charged.
    pub fn reconcile(&self) -> Result<ReconcileReport> {
        let scan = self.processes.procfs().scan_all().map_err(Error::from)?;
        let mut report = ReconcileReport {
            processes_scanned: scan.processes,
            buffers_seen: scan.buffers.len(),
            ..ReconcileReport::default()
        };
        let live: HashMap<u32, Process> = scan
            .buffers
            .values()
            .flat_map(|b| b.holders.keys().copied())
            .chain(self.lock().owners.keys().copied())
            .collect::<BTreeSet<u32>>()
            .into_iter()
            .filter_map(|pid| self.processes.resolve_fresh(pid).ok().map(|p| (pid, p)))
            .collect();
        self.change(|state, events| {
            let known: Vec<BufferInfo> = state.ledger.buffers().collect();
            for b in &known {
                let Some(seen) = scan.buffers.get(&b.inode) else {
                    // A process the scan could not read may hold it: release only on a full view.
                    if !scan.is_complete() {
                        continue;
                    }
                    events.push(state.ledger.release(b.inode)?);
                    state.tickets.forget_buffer(b.inode);
                    state.kernel_payer.remove(&b.inode);
                    report.released.push(b.inode);
                    continue;
                };
                let owner_alive = state
                    .owners
                    .get(&b.pid)
                    .is_some_and(|o| live.get(&b.pid).is_some_and(|l| l.start_time == o.start_time));
                if !owner_alive {
                    let dead_uid = state.owners.get(&b.pid).map(|o| o.uid).or_else(|| uid_of_cgroup(&b.cgroup));
                    let holders: BTreeSet<u32> = seen.holders.keys().copied().filter(|p| *p != b.pid).collect();
                    if let Some(e) = self.hand_over(state, b.inode, dead_uid, &holders)? {
                        events.push(e);
                        report.moved.push(b.inode);
                    }
                }
            }
            for (pid, process) in &live {
                let was = state.owners.get(pid).cloned();
                if let Some(known) = was {
                    if known.start_time == process.start_time
                        && known.cgroup != process.cgroup
                        && !state.ledger.buffers_of_pid(*pid).is_empty()
                    {
                        // One process in a cgroup the ledger cannot represent must not stop the
                        // pass for everyone else: its charges stay where they are.
                        match state.ledger.migrate(*pid, &process.cgroup) {
                            Ok(e) => {
                                events.push(e);
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
            if let Some(cgroupfs) = &self.cgroupfs {
                let mut paths = state.ledger.cgroups();
                paths.reverse();
                for path in paths {
                    if path != "/"
                        && !cgroupfs.exists(&path)
                        && state.ledger.reparent(&path).map(|e| events.push(e)).is_ok()
                    {
                        report.reparented.push(path);
                    }
                }
            }
            for (inode, seen) in &scan.buffers {
                let known = state.ledger.buffer(*inode).is_some();
                let ours = seen.exporter.as_deref().is_some_and(|e| state.ledger.heap(e).is_some());
                if !known && ours {
                    report.unaccounted.push(*inode);
                    // Sizes come from /proc: a corrupt fdinfo must not overflow the report.
                    report.unaccounted_bytes = report.unaccounted_bytes.saturating_add(seen.size);
                }
            }
            Ok(())
        })?;
        report.released.sort_unstable();
        report.moved.sort_unstable();
        report.unaccounted.sort_unstable();
        report.migrated.sort_unstable();
        if !report.released.is_empty() || !report.moved.is_empty() {
            info!("reconcile: released {:?}, moved {:?}", report.released, report.moved);
        }
        Ok(report)
    }
}
