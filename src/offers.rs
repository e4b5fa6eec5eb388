//! Offer tickets for consent-based transfer: an owner offers a buffer to one receiver; the
//! receiver accepts by presenting the ticket and the buffer fd it got. A ticket is bound to the
//! buffer, the offering and the receiving process (their whole identity) and an expiry, and is
//! used at most once. Open offers are capped per process and in total.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::identity::Process;
use crate::ledger::Inode;

/// Offers live at most this long, whatever the caller asks.
pub const MAX_TTL: Duration = Duration::from_secs(60);
/// Outstanding offers one process may have: a client flooding offers only hurts itself.
pub const MAX_OFFERS_PER_PROCESS: usize = 256;
/// Outstanding offers in all: many processes flooding together cannot grow the service's memory
/// past this.
pub const MAX_OFFERS: usize = 16 * MAX_OFFERS_PER_PROCESS;

#[derive(Clone, Debug)]
pub struct Offer {
    pub inode: Inode,
    pub from: Process,
    pub to: Process,
    pub expires: Instant,
}

#[derive(Default)]
pub struct Tickets {
    offers: HashMap<u64, Offer>,
    keys: RandomState,
    counter: u64,
}

impl Tickets {
    /// Records an offer and returns its ticket: unguessable, though a guess would not help, as
    /// only the bound receiver can redeem it.
    pub fn offer(&mut self, inode: Inode, from: Process, to: Process, ttl: Duration, now: Instant) -> Result<u64> {
        self.expire(now);
        if self.offers.values().filter(|o| o.from.is(&from)).count() >= MAX_OFFERS_PER_PROCESS {
            return Err(Error::InvalidArgument(format!(
                "pid {} already has {MAX_OFFERS_PER_PROCESS} open offers",
                from.pid
            )));
        }
        if self.offers.len() >= MAX_OFFERS {
            return Err(Error::InvalidArgument(format!("the service holds {MAX_OFFERS} open offers; retry later")));
        }
        let ticket = loop {
            self.counter += 1;
            let t = self.keys.hash_one(self.counter) & (i64::MAX as u64);
            if t != 0 && !self.offers.contains_key(&t) {
                break t;
            }
        };
        let ttl = ttl.min(MAX_TTL);
        self.offers.insert(ticket, Offer { inode, from, to, expires: now + ttl });
        Ok(ticket)
    }

    /// Checks a ticket presented by `receiver` with buffer `inode`. The ticket stays valid when
    /// the wrong process presents it, so nobody can burn another's offer.
    pub fn check(&self, ticket: u64, receiver: &Process, inode: Inode, now: Instant) -> Result<Offer> {
        let offer = self.offers.get(&ticket).ok_or(Error::BadTicket { ticket, reason: "unknown, used or expired" })?;
        if now >= offer.expires {
            return Err(Error::BadTicket { ticket, reason: "expired" });
        }
        if !offer.to.is(receiver) {
            return Err(Error::BadTicket { ticket, reason: "meant for another process" });
        }
        if offer.inode != inode {
            return Err(Error::BadTicket { ticket, reason: "meant for another buffer" });
        }
        Ok(offer.clone())
    }

    pub fn consume(&mut self, ticket: u64) {
        self.offers.remove(&ticket);
    }

    /// Drops expired offers. (Offers of a buffer that was released or changed hands go with
    /// [`Tickets::forget_buffer`].)
    pub fn expire(&mut self, now: Instant) {
        self.offers.retain(|_, o| now < o.expires);
    }

    pub fn forget_buffer(&mut self, inode: Inode) {
        self.offers.retain(|_, o| o.inode != inode);
    }

    pub fn len(&self) -> usize {
        self.offers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(pid: u32) -> Process {
        Process {
            pid,
            uid: 10000 + pid,
            cgroup: format!("/uid_{}/pid_{pid}", 10000 + pid),
            start_time: 7,
            context: None,
        }
    }

    #[test]
    fn ticket_is_bound_to_receiver_buffer_and_expiry() {
        let mut t = Tickets::default();
        let now = Instant::now();
        let ticket = t.offer(42, proc(1), proc(2), Duration::from_secs(5), now).unwrap();
        assert!(matches!(
            t.check(ticket, &proc(3), 42, now),
            Err(Error::BadTicket { reason: "meant for another process", .. })
        ));
        let reborn = Process { start_time: 8, ..proc(2) };
        assert!(matches!(
            t.check(ticket, &reborn, 42, now),
            Err(Error::BadTicket { reason: "meant for another process", .. })
        ));
        assert!(matches!(
            t.check(ticket, &proc(2), 43, now),
            Err(Error::BadTicket { reason: "meant for another buffer", .. })
        ));
        assert!(matches!(
            t.check(ticket, &proc(2), 42, now + Duration::from_secs(6)),
            Err(Error::BadTicket { reason: "expired", .. })
        ));
        assert_eq!(t.check(ticket, &proc(2), 42, now).unwrap().from.pid, 1);
        t.consume(ticket);
        assert!(
            matches!(
                t.check(ticket, &proc(2), 42, now),
                Err(Error::BadTicket { reason: "unknown, used or expired", .. })
            ),
            "no replay"
        );
    }

    #[test]
    fn ttl_is_capped_and_flooding_is_bounded() {
        let mut t = Tickets::default();
        let now = Instant::now();
        let ticket = t.offer(1, proc(1), proc(2), Duration::from_secs(3600), now).unwrap();
        assert!(t.check(ticket, &proc(2), 1, now + MAX_TTL).is_err());
        for i in 1..MAX_OFFERS_PER_PROCESS as u64 {
            t.offer(i, proc(1), proc(2), Duration::from_secs(1), now).unwrap();
        }
        assert!(matches!(t.offer(9999, proc(1), proc(2), Duration::from_secs(1), now), Err(Error::InvalidArgument(_))));
        assert!(t.offer(9999, proc(5), proc(2), Duration::from_secs(1), now).is_ok(), "others unaffected");
        t.expire(now + Duration::from_secs(2));
        assert_eq!(t.len(), 1, "only the capped 60 s offer remains");
        t.expire(now + MAX_TTL);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn open_offers_are_capped_in_total() {
        let mut t = Tickets::default();
        let now = Instant::now();
        let per = MAX_OFFERS_PER_PROCESS as u64;
        for i in 0..MAX_OFFERS as u64 {
            t.offer(i, proc(100 + (i / per) as u32), proc(2), Duration::from_secs(5), now).unwrap();
        }
        let refused = t.offer(u64::MAX, proc(99), proc(2), Duration::from_secs(5), now).unwrap_err().to_string();
        assert!(refused.contains("open offers") && !refused.contains("pid 1"), "{refused}");
    }

    #[test]
    fn a_recycled_offerer_does_not_share_the_old_processes_cap() {
        let mut t = Tickets::default();
        let now = Instant::now();
        for i in 0..MAX_OFFERS_PER_PROCESS as u64 {
            t.offer(i, proc(1), proc(2), Duration::from_secs(5), now).unwrap();
        }
        let reborn = Process { start_time: 8, ..proc(1) };
        assert!(t.offer(9999, reborn, proc(2), Duration::from_secs(5), now).is_ok());
    }
}
