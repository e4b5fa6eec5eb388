//! The stress case: eight client processes (apps of five uids, two uids with two processes each,
//! and one trusted allocator) run a seeded random workload of alloc, charge, give (the binder
//! handoff), offer/accept (also expired, misdirected and stale tickets), trusted push, release,
//! close without release, charge again, exit/kill with respawn, and reconcile.
//!
//! The orchestrator keeps a model of who holds and who pays for every buffer, applying the
//! documented rules (the hand-over rule on death, reconcile releasing what nobody holds and
//! moving a charge whose payer let go of the buffer to a holder), and
//! compares it with the service's ledger after every step. At the end it compares the ledger
//! with a procfs scan of the whole system: every charged buffer is held by a live process, every
//! live buffer of a known heap is charged exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chargetransfer::binder::aidl::vendor::chargetransfer::ErrorCode::ErrorCode;

use crate::cases::{check, eventually, refused, Outcome};
use crate::harness::{Child, Env, AID_GRAPHICS};
use crate::rng::Rng;
use crate::world::Truth;

const STEPS: usize = 400;
const SEED: u64 = 0x5eed_c4a2_9e7f_0b13;
/// The roles: index 0 is the trusted allocator; 10101 and 10102 run two processes each, so the
/// same-uid handoff rule gets exercised.
const UIDS: [u32; 8] = [AID_GRAPHICS, 10101, 10101, 10102, 10102, 10103, 10104, 10105];
const SIZES: [u64; 4] = [64 << 10, 128 << 10, 256 << 10, 512 << 10];
/// Buffers one client holds at most (bounds memory: 8 × 8 × 512 KiB).
const MAX_HELD: usize = 8;
const TRUSTED: usize = 0;
/// Android's first app uid: the handoff rule picks an app holder before a platform one.
const FIRST_APP_UID: u32 = 10_000;
/// Long enough for any pending offer to outlive the run; redeemed offers are checked against it.
const LONG_TTL_MS: u64 = 60_000;

/// Time for the service's re-check after a payer's close (the event, its 20 ms window, a scan)
/// before the ledger is compared with the model.
const RECHECK_SETTLE: Duration = Duration::from_millis(200);

/// Weighted operations of the workload.
const OPS: &[(Op, u64)] = &[
    (Op::Alloc, 20),
    (Op::Give, 12),
    (Op::Offer, 15),
    (Op::Redeem, 5),
    (Op::Transfer, 10),
    (Op::Release, 8),
    (Op::Close, 12),
    (Op::Recharge, 5),
    (Op::Exit, 6),
    (Op::Reconcile, 3),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Alloc,
    Give,
    Offer,
    Redeem,
    Transfer,
    Release,
    Close,
    Recharge,
    Exit,
    Reconcile,
}

struct Client {
    child: Child,
    /// Buffers it holds an fd of: inode → its slot.
    held: BTreeMap<u64, usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Payer {
    pid: u32,
    cgroup: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Charge {
    size: u64,
    payer: Payer,
}

struct Pending {
    ticket: i64,
    inode: u64,
    from: u32,
    to: u32,
    expires: Instant,
}

struct World<'a> {
    env: &'a Env,
    rng: Rng,
    clients: Vec<Client>,
    /// What the ledger must say.
    charges: BTreeMap<u64, Charge>,
    /// Offers made and not redeemed, still valid in the service.
    pending: Vec<Pending>,
    /// Buffers charged on behalf of or pushed to a receiver that no reconcile has seen holding
    /// them yet (the service's receipts). Their receivers keep their fds until then: what a
    /// receipt does past its grace period depends on time, which the model leaves out.
    awaiting: BTreeSet<u64>,
    /// Clients (pids) sent a command with a dma-buf fd during the current step.
    touched: BTreeSet<u32>,
    done: BTreeMap<Op, usize>,
    refusals: usize,
    exits: usize,
}

fn pair<T>(v: &mut [T], a: usize, b: usize) -> (&mut T, &mut T) {
    assert_ne!(a, b);
    if a < b {
        let (l, r) = v.split_at_mut(b);
        (&mut l[a], &mut r[0])
    } else {
        let (l, r) = v.split_at_mut(a);
        (&mut r[0], &mut l[b])
    }
}

fn payer_of(c: &Client) -> Payer {
    Payer { pid: c.child.pid, cgroup: c.child.cgroup.clone() }
}

/// The parent cgroup, where a charge goes when no process of its app holds the buffer any more.
fn parent(cgroup: &str) -> String {
    match cgroup.rfind('/') {
        Some(0) | None => "/".into(),
        Some(i) => cgroup[..i].into(),
    }
}

fn uid_of_cgroup(cgroup: &str) -> Option<u32> {
    cgroup.split('/').find_map(|c| c.strip_prefix("uid_")?.parse().ok())
}

fn answered(r: &[String], p: &Payer, line: &str) -> Outcome {
    check(r.get(2).map(String::as_str) == Some(p.pid.to_string().as_str()) && r.get(3) == Some(&p.cgroup), || {
        format!("{line:?} answered {r:?}, expected payer pid {} in {}", p.pid, p.cgroup)
    })
}

impl<'a> World<'a> {
    fn spawn(&mut self, uid: u32) -> Result<Client, String> {
        let mut child = self.env.spawn(uid, None)?;
        if self.rng.one_in(2) {
            child.ok("register")?;
        }
        Ok(Client { child, held: BTreeMap::new() })
    }

    fn holders(&self, inode: u64) -> Vec<usize> {
        (0..self.clients.len()).filter(|&i| self.clients[i].held.contains_key(&inode)).collect()
    }

    fn other_than(&mut self, not: usize) -> usize {
        let i = self.rng.index(self.clients.len() - 1);
        if i >= not {
            i + 1
        } else {
            i
        }
    }

    fn give(&mut self, from: usize, inode: u64, to: usize) -> Outcome {
        let slot = self.clients[from].held[&inode];
        let (f, t) = pair(&mut self.clients, from, to);
        let s = f.child.give(slot, &mut t.child)?;
        t.held.insert(inode, s);
        Ok(())
    }

    /// Makes `who` hold `inode` (handed over from a random holder); false when nobody holds it.
    fn ensure_holds(&mut self, who: usize, inode: u64) -> Result<bool, String> {
        if self.clients[who].held.contains_key(&inode) {
            return Ok(true);
        }
        let holders = self.holders(inode);
        let Some(h) = self.rng.pick(&holders) else { return Ok(false) };
        self.give(h, inode, who)?;
        Ok(true)
    }

    fn close(&mut self, who: usize, inode: u64) -> Outcome {
        let slot = self.clients[who].held.remove(&inode).expect("held");
        self.cmd(who, &format!("close {slot}"))?;
        Ok(())
    }

    /// Sends `line` to client `i`. Each command but `release` passes or closes a dma-buf fd (the
    /// client's copy in a parcel is closed after the call): the kernel's close event makes the
    /// service re-check what `i` pays for, so the step's end applies the handoff rule to it.
    fn cmd(&mut self, i: usize, line: &str) -> Result<Vec<String>, String> {
        if !line.starts_with("release ") {
            self.touched.insert(self.clients[i].child.pid);
        }
        self.clients[i].child.ok(line)
    }

    /// After a step: the handoff rule for the clients whose fd events the service saw, once its
    /// re-check is done (or the ledger already agrees).
    fn settle_handoffs(&mut self, when: &str) -> Outcome {
        let touched = std::mem::take(&mut self.touched);
        let when = &format!("{when} (fd events from {touched:?})");
        let mut waits = false;
        for pid in touched {
            let Some(who) = self.clients.iter().position(|c| c.child.pid == pid) else { continue };
            let let_go: Vec<u64> = self
                .charges
                .iter()
                .filter(|(n, c)| {
                    c.payer.pid == pid && !self.clients[who].held.contains_key(n) && !self.awaiting.contains(n)
                })
                .map(|(&n, _)| n)
                .collect();
            waits |= !let_go.is_empty();
            for inode in let_go {
                self.hand_off(inode);
            }
        }
        if !waits {
            return self.verify(when);
        }
        std::thread::sleep(RECHECK_SETTLE);
        let mut last = Ok(());
        eventually(
            || {
                last = self.verify(when);
                Ok(last.is_ok())
            },
            "the ledger to follow the handoff rule",
        )
        .map_err(|e| format!("{e}: {}", last.err().unwrap_or_default()))
    }

    /// The handoff rule in the model: a payer that let go of `inode` stops paying, the app
    /// holder with the lowest pid pays (an app's charge never goes to the allocator). Not for a
    /// buffer still awaiting its receiver (the caller skips those).
    fn hand_off(&mut self, inode: u64) {
        let payer = self.charges[&inode].payer.pid;
        let app_payer = self.clients.iter().any(|c| c.child.pid == payer && c.child.uid >= FIRST_APP_UID);
        let to = self
            .holders(inode)
            .into_iter()
            .filter(|&h| !app_payer || self.clients[h].child.uid >= FIRST_APP_UID)
            .min_by_key(|&h| {
                let child = &self.clients[h].child;
                (child.uid < FIRST_APP_UID, child.pid)
            });
        if let Some(h) = to {
            self.charges.get_mut(&inode).expect("charged").payer = payer_of(&self.clients[h]);
        }
    }

    fn forget_offers(&mut self, inode: u64) {
        self.pending.retain(|p| p.inode != inode);
    }

    /// Charged buffers whose payer is a client holding them: (client, inode).
    fn owned_and_held(&self) -> Vec<(usize, u64)> {
        let mut v = Vec::new();
        for (i, c) in self.clients.iter().enumerate() {
            for &inode in c.held.keys() {
                if self.charges.get(&inode).is_some_and(|ch| ch.payer.pid == c.child.pid) {
                    v.push((i, inode));
                }
            }
        }
        v
    }

    fn held_pairs(&self) -> Vec<(usize, u64)> {
        self.clients.iter().enumerate().flat_map(|(i, c)| c.held.keys().map(move |&n| (i, n))).collect()
    }

    /// Held buffers a client may close: not the ones it awaits a reconcile's receipt for.
    fn closable_pairs(&self) -> Vec<(usize, u64)> {
        let awaited = |&(c, n): &(usize, u64)| {
            self.awaiting.contains(&n)
                && self.charges.get(&n).is_some_and(|ch| ch.payer.pid == self.clients[c].child.pid)
        };
        self.held_pairs().into_iter().filter(|p| !awaited(p)).collect()
    }

    fn step(&mut self, op: Op) -> Result<Op, String> {
        match op {
            Op::Alloc => self.alloc(),
            Op::Give => self.give_one(),
            Op::Offer => self.offer(),
            Op::Redeem => self.redeem(),
            Op::Transfer => self.transfer(),
            Op::Release => self.release(),
            Op::Close => self.close_one(),
            Op::Recharge => self.recharge(),
            Op::Exit => self.exit_one(),
            Op::Reconcile => self.reconcile(),
        }
    }

    /// An app allocates and charges itself; the allocator allocates for an app (charge on
    /// behalf), hands the buffer over and usually drops its own fd.
    fn alloc(&mut self) -> Result<Op, String> {
        let c = self.rng.index(self.clients.len());
        if self.clients[c].held.len() >= MAX_HELD {
            let Some(&(_, inode)) = self.closable_pairs().iter().find(|(h, _)| *h == c) else { return Ok(Op::Close) };
            self.close(c, inode)?;
            return Ok(Op::Close);
        }
        let size = SIZES[self.rng.index(SIZES.len())];
        let (slot, inode) = self.clients[c].child.alloc("system", size)?;
        self.clients[c].held.insert(inode, slot);
        if c == TRUSTED {
            let app = self.other_than(TRUSTED);
            let payer = payer_of(&self.clients[app]);
            let line = format!("charge_for {slot} {}", payer.pid);
            answered(&self.cmd(c, &line)?, &payer, &line)?;
            self.charges.insert(inode, Charge { size, payer });
            self.awaiting.insert(inode);
            self.give(c, inode, app)?;
            if self.rng.one_in(2) {
                self.close(c, inode)?;
            }
        } else {
            let payer = payer_of(&self.clients[c]);
            let line = format!("charge {slot}");
            answered(&self.cmd(c, &line)?, &payer, &line)?;
            self.charges.insert(inode, Charge { size, payer });
        }
        Ok(Op::Alloc)
    }

    fn give_one(&mut self) -> Result<Op, String> {
        let Some((c, inode)) = self.rng.pick(&self.held_pairs()) else { return self.alloc() };
        let to: Vec<usize> = (0..self.clients.len())
            .filter(|&i| !self.clients[i].held.contains_key(&inode) && self.clients[i].held.len() < MAX_HELD)
            .collect();
        let Some(d) = self.rng.pick(&to) else { return self.alloc() };
        self.give(c, inode, d)?;
        Ok(Op::Give)
    }

    fn offer(&mut self) -> Result<Op, String> {
        let Some((c, inode)) = self.rng.pick(&self.owned_and_held()) else { return self.alloc() };
        let d = self.other_than(c);
        self.ensure_holds(d, inode)?;
        let (from, to) = (self.clients[c].child.pid, self.clients[d].child.pid);
        let slot = self.clients[c].held[&inode];
        let d_slot = self.clients[d].held[&inode];
        let variant = self.rng.index(8);
        let ttl = if variant == 1 { 1 } else { LONG_TTL_MS };
        let reply = self.cmd(c, &format!("offer {slot} {to} {ttl}"))?;
        let ticket: i64 =
            reply.first().and_then(|t| t.parse().ok()).ok_or_else(|| format!("offer answered {reply:?}"))?;
        let expires = Instant::now() + Duration::from_millis(ttl);
        match variant {
            0 => {
                self.pending.push(Pending { ticket, inode, from, to, expires });
                return Ok(Op::Offer);
            }
            1 => {
                std::thread::sleep(Duration::from_millis(5));
                self.refusal(d, &format!("accept {ticket} {d_slot}"), ErrorCode::BAD_TICKET)?;
                return Ok(Op::Offer);
            }
            2 => {
                let e = self.other_than(d);
                self.ensure_holds(e, inode)?;
                let e_slot = self.clients[e].held[&inode];
                self.refusal(e, &format!("accept {ticket} {e_slot}"), ErrorCode::BAD_TICKET)?;
            }
            3 => {
                let other = self.clients[d].held.iter().find(|(&n, _)| n != inode).map(|(_, &s)| s);
                if let Some(s) = other {
                    self.refusal(d, &format!("accept {ticket} {s}"), ErrorCode::BAD_TICKET)?;
                }
            }
            _ => {}
        }
        let payer = payer_of(&self.clients[d]);
        let line = format!("accept {ticket} {d_slot}");
        answered(&self.cmd(d, &line)?, &payer, &line)?;
        self.charges.get_mut(&inode).expect("charged").payer = payer;
        Ok(Op::Offer)
    }

    /// Redeems an older offer: valid while the charge is still with the offerer (or already
    /// with the receiver); refused once it changed hands.
    fn redeem(&mut self) -> Result<Op, String> {
        if self.pending.is_empty() {
            return self.offer();
        }
        let p = self.pending.swap_remove(self.rng.index(self.pending.len()));
        let Some(d) = self.clients.iter().position(|c| c.child.pid == p.to) else { return self.offer() };
        if Instant::now() + Duration::from_secs(2) >= p.expires || !self.ensure_holds(d, p.inode)? {
            return self.offer();
        }
        let line = format!("accept {} {}", p.ticket, self.clients[d].held[&p.inode]);
        let current = self
            .charges
            .get(&p.inode)
            .ok_or_else(|| format!("ticket {} outlived the charge of {}", p.ticket, p.inode))?
            .payer
            .pid;
        if current == p.from || current == p.to {
            let payer = payer_of(&self.clients[d]);
            answered(&self.cmd(d, &line)?, &payer, &line)?;
            self.charges.get_mut(&p.inode).expect("charged").payer = payer;
            self.awaiting.remove(&p.inode);
        } else {
            self.refusal(d, &line, ErrorCode::BAD_TICKET)?;
        }
        Ok(Op::Redeem)
    }

    /// The allocator pushes a charge to a process it handed the buffer to; now and then an app
    /// tries the same and is refused.
    fn transfer(&mut self) -> Result<Op, String> {
        let charged: Vec<u64> = self.charges.keys().copied().filter(|&n| !self.holders(n).is_empty()).collect();
        let Some(inode) = self.rng.pick(&charged) else { return self.alloc() };
        if self.rng.one_in(4) {
            let apps: Vec<usize> = self.holders(inode).into_iter().filter(|&h| h != TRUSTED).collect();
            if let Some(a) = self.rng.pick(&apps) {
                let d = self.other_than(a);
                self.ensure_holds(d, inode)?;
                let line = format!("transfer {} {}", self.clients[a].held[&inode], self.clients[d].child.pid);
                self.refusal(a, &line, ErrorCode::NOT_TRUSTED)?;
                return Ok(Op::Transfer);
            }
        }
        self.ensure_holds(TRUSTED, inode)?;
        let d = self.other_than(TRUSTED);
        self.ensure_holds(d, inode)?;
        let payer = payer_of(&self.clients[d]);
        let line = format!("transfer {} {}", self.clients[TRUSTED].held[&inode], payer.pid);
        answered(&self.cmd(TRUSTED, &line)?, &payer, &line)?;
        self.charges.get_mut(&inode).expect("charged").payer = payer;
        self.awaiting.insert(inode);
        self.forget_offers(inode);
        Ok(Op::Transfer)
    }

    /// The payer (or the trusted allocator) releases; another app may not. Then either a holder
    /// takes the charge itself or every holder drops the buffer, so no held buffer stays unpaid.
    fn release(&mut self) -> Result<Op, String> {
        let inodes: Vec<u64> = self.charges.keys().copied().collect();
        let Some(inode) = self.rng.pick(&inodes) else { return self.alloc() };
        let owner = self.clients.iter().position(|c| c.child.pid == self.charges[&inode].payer.pid);
        let mut by = match owner {
            Some(o) if !self.rng.one_in(5) => o,
            _ => TRUSTED,
        };
        if Some(by) == owner && self.clients[by].held.contains_key(&inode) {
            // An owner that still holds the buffer cannot stop paying for it (trusted or not).
            self.refusal(by, &format!("release {inode}"), ErrorCode::INVALID_STATE)?;
            if by == TRUSTED {
                return self.alloc();
            }
            by = TRUSTED;
        }
        if self.rng.one_in(6) {
            let strangers: Vec<usize> = (0..self.clients.len()).filter(|&i| i != TRUSTED && Some(i) != owner).collect();
            if let Some(s) = self.rng.pick(&strangers) {
                self.refusal(s, &format!("release {inode}"), ErrorCode::NOT_OWNER)?;
            }
        }
        self.cmd(by, &format!("release {inode}"))?;
        let size = self.charges.remove(&inode).expect("charged").size;
        self.awaiting.remove(&inode);
        self.forget_offers(inode);
        let holders = self.holders(inode);
        match self.rng.pick(&holders) {
            Some(h) if self.rng.one_in(2) => {
                let payer = payer_of(&self.clients[h]);
                let line = format!("charge {}", self.clients[h].held[&inode]);
                answered(&self.cmd(h, &line)?, &payer, &line)?;
                self.charges.insert(inode, Charge { size, payer });
            }
            _ => {
                for h in holders {
                    self.close(h, inode)?;
                }
            }
        }
        Ok(Op::Release)
    }

    /// A holder closes its fd without any release: the charge stays until the last holder is
    /// gone and a reconcile notices.
    fn close_one(&mut self) -> Result<Op, String> {
        let Some((c, inode)) = self.rng.pick(&self.closable_pairs()) else { return self.alloc() };
        self.close(c, inode)?;
        Ok(Op::Close)
    }

    /// Charging again: a no-op for the payer, refused for anyone else.
    fn recharge(&mut self) -> Result<Op, String> {
        let Some((c, inode)) = self.rng.pick(&self.held_pairs()) else { return self.alloc() };
        let Some(charge) = self.charges.get(&inode).cloned() else { return self.alloc() };
        let line = format!("charge {}", self.clients[c].held[&inode]);
        if charge.payer.pid == self.clients[c].child.pid {
            answered(&self.cmd(c, &line)?, &charge.payer, &line)?;
        } else {
            self.refusal(c, &line, ErrorCode::ALREADY_CHARGED)?;
        }
        Ok(Op::Recharge)
    }

    /// A client exits (cleanly or killed) and a new process of the same uid takes its role.
    fn exit_one(&mut self) -> Result<Op, String> {
        let c = self.rng.index(self.clients.len());
        let uid = self.clients[c].child.uid;
        self.end(c)?;
        let fresh = self.spawn(uid)?;
        self.clients.insert(c, fresh);
        self.exits += 1;
        Ok(Op::Exit)
    }

    /// Ends client `c` and applies the handoff rule to what it paid for, once the service has
    /// handled the death.
    fn end(&mut self, c: usize) -> Outcome {
        let gone = self.clients.remove(c);
        let (uid, cgroup) = (gone.child.uid, gone.child.cgroup.clone());
        let pid = if self.rng.one_in(2) { gone.child.exit() } else { gone.child.kill() };
        let owned: Vec<u64> = self.charges.iter().filter(|(_, ch)| ch.payer.pid == pid).map(|(&n, _)| n).collect();
        for &inode in &owned {
            let holders = self.holders(inode);
            let same_app = holders
                .iter()
                .filter(|&&h| self.clients[h].child.uid == uid)
                .min_by_key(|&&h| self.clients[h].child.pid);
            match (same_app, holders.is_empty()) {
                (Some(&h), _) => self.charges.get_mut(&inode).expect("charged").payer = payer_of(&self.clients[h]),
                (None, false) => {
                    self.charges.get_mut(&inode).expect("charged").payer = Payer { pid: 0, cgroup: parent(&cgroup) }
                }
                (None, true) => {
                    self.charges.remove(&inode);
                }
            }
            self.forget_offers(inode);
        }
        self.pending.retain(|p| p.to != pid);
        // A charge parked on a dead app's cgroup goes at the death of its last holder: any death
        // makes the service release the parked charges nobody holds any more.
        let unheld: Vec<u64> = self
            .charges
            .iter()
            .filter(|(&n, ch)| ch.payer.pid == 0 && self.holders(n).is_empty())
            .map(|(&n, _)| n)
            .collect();
        for inode in &unheld {
            self.charges.remove(inode);
            self.forget_offers(*inode);
        }
        let svc = self.env.client.service();
        if !owned.is_empty() {
            eventually(
                || Ok(svc.listCharges(pid as i32).map_err(|e| format!("{e:?}"))?.is_empty()),
                &format!("death of pid {pid} handled"),
            )?;
        }
        if !unheld.is_empty() {
            eventually(
                || {
                    let all = svc.listCharges(0).map_err(|e| format!("{e:?}"))?;
                    Ok(all.iter().all(|c| !unheld.contains(&(c.inode as u64))))
                },
                &format!("parked charges {unheld:?} released at the death of pid {pid}"),
            )?;
        }
        Ok(())
    }

    /// Reconcile from the (root, trusted) orchestrator: what nobody holds is released; a charge
    /// parked on an app's cgroup goes back to a process of that app holding the buffer; a payer
    /// that let go of a buffer others hold hands it off (to the lowest-pid app holder; an app's
    /// charge never goes to the allocator); receipts whose receivers hold their buffers are settled.
    fn reconcile(&mut self) -> Result<Op, String> {
        let released: BTreeSet<u64> = self.charges.keys().copied().filter(|&n| self.holders(n).is_empty()).collect();
        for inode in &released {
            self.charges.remove(inode);
            self.awaiting.remove(inode);
            self.forget_offers(*inode);
        }
        let let_go: Vec<u64> = self
            .charges
            .iter()
            .filter(|(n, c)| {
                c.payer.pid != 0
                    && !self.awaiting.contains(n)
                    && !self.holders(**n).iter().any(|&h| self.clients[h].child.pid == c.payer.pid)
            })
            .map(|(&n, _)| n)
            .collect();
        for inode in let_go {
            self.hand_off(inode);
        }
        self.awaiting.clear();
        let parked: Vec<u64> = self.charges.iter().filter(|(_, c)| c.payer.pid == 0).map(|(&n, _)| n).collect();
        for inode in parked {
            let uid = uid_of_cgroup(&self.charges[&inode].payer.cgroup);
            let back = self
                .holders(inode)
                .into_iter()
                .filter(|&h| Some(self.clients[h].child.uid) == uid)
                .min_by_key(|&h| self.clients[h].child.pid);
            if let Some(h) = back {
                self.charges.get_mut(&inode).expect("charged").payer = payer_of(&self.clients[h]);
            }
        }
        let report = self.env.client.service().reconcile().map_err(|e| format!("reconcile: {e:?}"))?;
        let got: BTreeSet<u64> = report.releasedInodes.iter().map(|&i| i as u64).collect();
        check(got == released, || format!("reconcile released {got:?}, the model expected {released:?}"))?;
        let held: BTreeSet<u64> = self.held_pairs().into_iter().map(|(_, n)| n).collect();
        let unpaid: Vec<i64> =
            report.unaccountedInodes.iter().copied().filter(|&i| held.contains(&(i as u64))).collect();
        check(unpaid.is_empty(), || format!("buffers held by clients reported unaccounted: {unpaid:?}"))?;
        Ok(Op::Reconcile)
    }

    fn refusal(&mut self, who: usize, line: &str, code: ErrorCode) -> Outcome {
        self.refusals += 1;
        if !line.starts_with("release ") {
            self.touched.insert(self.clients[who].child.pid);
        }
        refused(&mut self.clients[who].child, line, code)
    }

    /// The ledger must equal the model, entry for entry.
    fn verify(&self, when: &str) -> Outcome {
        let all = self.env.client.service().listCharges(0).map_err(|e| format!("listCharges: {e:?}"))?;
        let mut ledger = BTreeMap::new();
        for c in &all {
            let entry =
                Charge { size: c.size as u64, payer: Payer { pid: c.ownerPid as u32, cgroup: c.ownerCgroup.clone() } };
            if ledger.insert(c.inode as u64, entry).is_some() {
                return Err(format!("{when}: buffer {} listed twice", c.inode));
            }
        }
        if ledger == self.charges {
            return Ok(());
        }
        let keys: BTreeSet<u64> = ledger.keys().chain(self.charges.keys()).copied().collect();
        let diff: Vec<String> = keys
            .into_iter()
            .filter(|k| ledger.get(k) != self.charges.get(k))
            .map(|k| {
                let holders: Vec<u32> = self.holders(k).iter().map(|&h| self.clients[h].child.pid).collect();
                format!("{k}: ledger {:?} model {:?} (held by {holders:?})", ledger.get(&k), self.charges.get(&k))
            })
            .collect();
        Err(format!("{when}: ledger and model differ: {}", diff.join("; ")))
    }

    /// The ledger against a procfs scan of every process (the shared [`Truth`]): the same buffers,
    /// each paid once by a live process (or by the cgroup of an app none of whose processes holds
    /// it any more), and held by exactly the processes the workload handed it to.
    fn compare_with_procfs(&self) -> Result<(usize, u64), String> {
        let svc = self.env.client.service();
        let heaps: BTreeSet<String> =
            svc.getRegions().map_err(|e| format!("getRegions: {e:?}"))?.into_iter().flat_map(|r| r.heaps).collect();
        let truth = Truth::take(&self.env.client, &heaps)?;
        let verdict = truth.verdict(&self.env.client, None)?;
        check(verdict.ok(), || format!("ledger != procfs: {}", verdict.describe()))?;
        let (charges, live, procfs) = (&truth.charges, truth.live(None), &truth.proc);
        let mut bytes = 0;
        for c in charges {
            let seen =
                live.get(&(c.inode as u64)).ok_or_else(|| format!("buffer {} is not of a policy heap", c.inode))?;
            bytes += seen.size;
            check(seen.size == c.size as u64, || {
                format!("buffer {}: ledger size {} procfs {}", c.inode, c.size, seen.size)
            })?;
            if c.ownerPid > 0 {
                let pid = c.ownerPid as u32;
                let cgroup = procfs
                    .cgroup_of(pid)
                    .map_err(|e| format!("payer {pid} of buffer {} is not alive: {e}", c.inode))?;
                check(cgroup == c.ownerCgroup, || {
                    format!("payer {pid} is in {cgroup}, the ledger says {}", c.ownerCgroup)
                })?;
            } else {
                let uid = uid_of_cgroup(&c.ownerCgroup);
                let of_app: Vec<u32> = seen.holders.pids().filter(|&h| procfs.uid_of(h).ok() == uid).collect();
                check(uid.is_some() && of_app.is_empty(), || {
                    format!("buffer {} parked on {} though its app's {of_app:?} hold it", c.inode, c.ownerCgroup)
                })?;
            }
            let model: BTreeSet<u32> =
                self.holders(c.inode as u64).into_iter().map(|h| self.clients[h].child.pid).collect();
            let kernel: BTreeSet<u32> = seen.holders.pids().collect();
            check(model == kernel, || {
                format!("buffer {}: procfs holders {kernel:?}, the workload handed it to {model:?}", c.inode)
            })?;
        }
        let root = svc.getCgroupUsage("/").map_err(|e| format!("{e:?}"))?;
        let memcg = root.pools.iter().find(|p| p.pool == "memcg").map_or(0, |p| p.usage);
        check(root.bufferBytes == bytes as i64 && memcg == bytes as i64, || {
            format!(
                "procfs sees {bytes} bytes, the ledger's root counts {} bytes in buffers and {memcg} in memcg",
                root.bufferBytes
            )
        })?;
        Ok((charges.len(), bytes))
    }
}

/// The operation a roll in `0..total weight` lands on.
fn pick_op(mut roll: u64) -> Op {
    for &(op, weight) in OPS {
        if roll < weight {
            return op;
        }
        roll -= weight;
    }
    Op::Alloc
}

pub fn stress_eight_clients_random_workload_matches_procfs(env: &Env) -> Outcome {
    let start = Instant::now();
    let seed = std::env::var("CT_STRESS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(SEED);
    env.client.service().reconcile().map_err(|e| format!("reconcile: {e:?}"))?;
    let before = env.client.service().listCharges(0).map_err(|e| format!("{e:?}"))?;
    check(before.is_empty(), || format!("earlier cases left charges nobody holds: {before:?}"))?;
    let mut world = World {
        env,
        rng: Rng::new(seed),
        clients: Vec::new(),
        charges: BTreeMap::new(),
        pending: Vec::new(),
        awaiting: BTreeSet::new(),
        touched: BTreeSet::new(),
        done: BTreeMap::new(),
        refusals: 0,
        exits: 0,
    };
    for uid in UIDS {
        let c = world.spawn(uid)?;
        world.clients.push(c);
    }
    let total: u64 = OPS.iter().map(|(_, w)| w).sum();
    for step in 0..STEPS {
        let op = pick_op(world.rng.next() % total);
        let ran = world.step(op).map_err(|e| format!("step {step} ({op:?}, seed {seed:#x}): {e}"))?;
        *world.done.entry(ran).or_default() += 1;
        world.settle_handoffs(&format!("after step {step} ({ran:?}, seed {seed:#x})"))?;
    }
    // Some clients leave for good, the rest stay alive; then reconcile and compare with procfs.
    for _ in 0..3 {
        let c = world.rng.index(world.clients.len());
        world.end(c)?;
    }
    world.reconcile()?;
    world.verify("after the final reconcile")?;
    let (charges, bytes) = world.compare_with_procfs()?;
    let ops: Vec<String> = world.done.iter().map(|(op, n)| format!("{op:?} {n}").to_lowercase()).collect();
    println!(
        "stress: {STEPS} ops ({}; {} refusals, {} exits), {charges} charges ({} KiB) on {} live clients, ledger == procfs (seed {seed:#x}, {:.1}s)",
        ops.join(", "),
        world.refusals,
        world.exits,
        bytes >> 10,
        world.clients.len(),
        start.elapsed().as_secs_f64()
    );
    // Everyone leaves: nothing may stay charged.
    let pids: Vec<u32> = world.clients.drain(..).map(|c| c.child.kill()).collect();
    eventually(
        || {
            env.client.service().reconcile().map_err(|e| format!("reconcile: {e:?}"))?;
            Ok(env.client.service().listCharges(0).map_err(|e| format!("{e:?}"))?.is_empty())
        },
        &format!("all charges gone after pids {pids:?} exited"),
    )
}
