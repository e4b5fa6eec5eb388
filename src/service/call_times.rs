//! How long the service spends in each AIDL method, from the handler's entry to its reply, so a
//! call's cost splits into the service's own work and binder's transport (shown by
//! `dumpState`; the callers benchmark reads it). Lock-free counters: a Mutex'd histogram crate
//! would make 8 concurrent callers queue on it.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The methods timed: those a device calls per buffer or per query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Ping,
    Charge,
    ChargeOnBehalf,
    Transfer,
    Release,
    Offer,
    Accept,
    GetProcessUsage,
    GetUidUsage,
    GetCgroupUsage,
    ListCharges,
}

const METHODS: [(Method, &str); 11] = [
    (Method::Ping, "ping"),
    (Method::Charge, "charge"),
    (Method::ChargeOnBehalf, "chargeOnBehalf"),
    (Method::Transfer, "transfer"),
    (Method::Release, "release"),
    (Method::Offer, "offer"),
    (Method::Accept, "accept"),
    (Method::GetProcessUsage, "getProcessUsage"),
    (Method::GetUidUsage, "getUidUsage"),
    (Method::GetCgroupUsage, "getCgroupUsage"),
    (Method::ListCharges, "listCharges"),
];

/// Buckets of a quarter power of two each, from 1 ns to 2^40 ns (~18 min).
const BUCKETS: usize = 40 * 4;

struct Histogram {
    count: AtomicU64,
    total_ns: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            count: AtomicU64::new(0),
            total_ns: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn record(&self, ns: u64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.total_ns.fetch_add(ns, Ordering::Relaxed);
        self.buckets[bucket(ns)].fetch_add(1, Ordering::Relaxed);
    }

    /// The upper bound of the bucket holding the `p` quantile.
    fn quantile(&self, count: u64, p: f64) -> u64 {
        let rank = ((count as f64 * p).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= rank {
                return upper_bound(i);
            }
        }
        upper_bound(BUCKETS - 1)
    }
}

/// log2 with two fractional bits: bucket 4k + j holds [2^k·(1 + j/4), 2^k·(1 + (j+1)/4)).
/// Times below 4 ns (no call takes them) count as 4 ns.
fn bucket(ns: u64) -> usize {
    let ns = ns.max(4);
    let k = 63 - ns.leading_zeros() as usize;
    (k * 4 + ((ns >> (k - 2)) & 3) as usize).min(BUCKETS - 1)
}

fn upper_bound(i: usize) -> u64 {
    let (k, j) = (i / 4, i % 4 + 1);
    ((1u128 << k) * (4 + j as u128) / 4) as u64
}

pub struct CallTimes {
    methods: Vec<Histogram>,
}

impl Default for CallTimes {
    fn default() -> Self {
        CallTimes { methods: METHODS.iter().map(|_| Histogram::new()).collect() }
    }
}

/// Records the time from [`CallTimes::start`] to its drop.
pub struct Timer<'a> {
    histogram: &'a Histogram,
    start: Instant,
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        self.histogram.record(self.start.elapsed().as_nanos().min(u64::MAX as u128) as u64);
    }
}

impl CallTimes {
    pub fn start(&self, method: Method) -> Timer<'_> {
        let i = METHODS.iter().position(|(m, _)| *m == method).expect("every method is listed");
        Timer { histogram: &self.methods[i], start: Instant::now() }
    }

    /// One line per method called so far: `name calls N, total T ns, p50 <= A ns, p99 <= B ns;
    /// by bucket U:C ...`, the calls C that took less than U ns (and more than the bucket
    /// before), so two dumps give the quantiles of the calls between them.
    pub fn render(&self) -> String {
        let mut out = String::from("Service time per call (entry to reply):\n");
        for ((_, name), h) in METHODS.iter().zip(&self.methods) {
            let count = h.count.load(Ordering::Relaxed);
            if count == 0 {
                continue;
            }
            let total = h.total_ns.load(Ordering::Relaxed);
            let (p50, p99) = (h.quantile(count, 0.5), h.quantile(count, 0.99));
            let _ =
                write!(out, "  {name} calls {count}, total {total} ns, p50 <= {p50} ns, p99 <= {p99} ns; by bucket");
            for (i, b) in h.buckets.iter().enumerate() {
                let n = b.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = write!(out, " {}:{n}", upper_bound(i));
                }
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_quarter_powers_of_two_and_bound_their_values() {
        for ns in [4u64, 5, 7, 100, 1000, 4095, 4096, 5000, 1 << 30, u64::MAX >> 30] {
            let i = bucket(ns);
            assert!(ns < upper_bound(i), "{ns} in bucket {i} (< {})", upper_bound(i));
            assert!(ns >= upper_bound(i - 1), "{ns} belongs below bucket {i}");
        }
        assert_eq!((bucket(4096), bucket(5120), bucket(8191)), (48, 49, 51));
    }

    #[test]
    fn quantiles_and_totals_come_from_the_recorded_calls() {
        let t = CallTimes::default();
        let h = &t.methods[1];
        for ns in (1..=100).map(|i| i * 1000) {
            h.record(ns);
        }
        assert_eq!(h.quantile(100, 0.5), upper_bound(bucket(50_000)));
        assert!(h.quantile(100, 0.99) >= 99_000);
        drop(t.start(Method::Ping));
        let text = t.render();
        assert!(text.contains("  charge calls 100, total 5050000 ns, p50 <= "), "{text}");
        let by_bucket =
            text.lines().find(|l| l.contains("charge calls")).unwrap().split_once("; by bucket ").unwrap().1;
        let counts: u64 = by_bucket.split(' ').map(|c| c.split_once(':').unwrap().1.parse::<u64>().unwrap()).sum();
        assert_eq!(counts, 100);
        assert!(by_bucket.starts_with(&format!("{}:1 ", upper_bound(bucket(1000)))), "{by_bucket}");
        assert!(text.contains("  ping calls 1, total "), "{text}");
        assert!(!text.contains("release"), "{text}");
    }
}
