//! Ledger benchmark: charge, transfer and release with 100k live buffers across 1k app cgroups
//! (`/uid_<u>/pid_<p>`, four processes per app, three pools: memcg, a CMA region and a vram
//! region), the bytes each live record costs, and how latency scales with live buffers
//! (1k → 1M) and cgroups (10 → 10k).
//!
//! Criterion reports means. Tails need single operations: after a warm-up, each op is timed on
//! its own with `Instant` (the timer's own cost is measured and printed), and p50/p99 come from
//! the sorted samples. Memory is counted by a wrapper around the system allocator, before and
//! after inserting the buffers (first thing, on a fresh heap), and cross-checked with VmRSS,
//! which also counts the allocator's slack and the map's old table while it grows.
//!
//! The workload keeps the live set constant: each timed charge is paired with the release of the
//! oldest buffer, and transfers move a random live buffer to a random other process. Ends with a
//! summary block, one `ledger:` line per number, for BENCHMARKS.md.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use chargetransfer::ledger::{HeapClass, HeapSpec, Ledger, LimitKind};
use criterion::Criterion;

/// Counts the bytes the process holds from the allocator (requested sizes, not pages).
struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; only a counter is updated beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MIB: u64 = 1 << 20;
const CMA: &str = "cma/display";
const VRAM: &str = "drm/0000:03:00.0/vram0";
const HEAPS: [&str; 3] = ["system", "display", "vram"];
/// Processes per app: cgroups are `/uid_<10000 + i / 4>/pid_<20000 + i>`.
const PIDS_PER_APP: usize = 4;
/// Timed operations per kind and configuration.
const SAMPLES: usize = 100_000;
const WARMUP: usize = 10_000;

/// A small deterministic generator (SplitMix64), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// dma-buf sizes as a phone allocates them: mostly small, some framebuffers, a few camera buffers.
fn size_of(inode: u64) -> u64 {
    match inode % 16 {
        0..=7 => 4096 << (inode % 5),
        8..=12 => MIB,
        13 | 14 => 8 * MIB,
        _ => 32 * MIB,
    }
}

struct Bench {
    ledger: Ledger,
    /// Leaf cgroup paths and the pid living in each.
    cgroups: Vec<(u32, String)>,
    /// Live inodes are `oldest..next`.
    oldest: u64,
    next: u64,
    rng: Rng,
}

impl Bench {
    /// The regions, heaps, app cgroups (each created by one charge and release) and per-app
    /// limits, without buffers.
    fn empty(cgroups: usize) -> Bench {
        let mut ledger = Ledger::new();
        ledger.add_region(CMA, 512 * MIB).unwrap();
        ledger.add_region(VRAM, 16 << 30).unwrap();
        let heap = |name: &str, class, region: Option<&str>| HeapSpec {
            name: name.into(),
            class,
            region: region.map(String::from),
        };
        ledger.add_heap(heap("system", HeapClass::System, None), true).unwrap();
        ledger.add_heap(heap("display", HeapClass::Cma, Some(CMA)), true).unwrap();
        ledger.add_heap(heap("vram", HeapClass::Vram, Some(VRAM)), true).unwrap();
        let cgroups: Vec<(u32, String)> = (0..cgroups)
            .map(|i| ((20_000 + i) as u32, format!("/uid_{}/pid_{}", 10_000 + i / PIDS_PER_APP, 20_000 + i)))
            .collect();
        for (i, (pid, cg)) in cgroups.iter().enumerate() {
            ledger.charge(u64::MAX - i as u64, 4096, "system", *pid, 0, cg).unwrap();
            ledger.release(u64::MAX - i as u64).unwrap();
            if i % PIDS_PER_APP == 0 {
                // Limits high enough never to refuse: every charge walks and checks them.
                let app = &cg[..cg.rfind('/').unwrap()];
                for pool in ["memcg", CMA, VRAM] {
                    ledger.set_limit(app, pool, LimitKind::Max, 1 << 50).unwrap();
                }
            }
        }
        Bench { ledger, cgroups, oldest: 1, next: 1, rng: Rng(0x5eed) }
    }

    fn charge_next(&mut self) {
        let inode = self.next;
        let (pid, cg) = &self.cgroups[self.rng.below(self.cgroups.len())];
        self.ledger.charge(inode, size_of(inode), HEAPS[(inode % 3) as usize], *pid, 0, cg).unwrap();
        self.next += 1;
    }

    fn release_oldest(&mut self) {
        self.ledger.release(self.oldest).unwrap();
        self.oldest += 1;
    }

    fn transfer_random(&mut self) {
        let inode = self.oldest + self.rng.next() % (self.next - self.oldest);
        let (pid, cg) = &self.cgroups[self.rng.below(self.cgroups.len())];
        self.ledger.transfer(inode, *pid, 0, cg).unwrap();
    }

    fn filled(buffers: usize, cgroups: usize) -> Bench {
        let mut b = Bench::empty(cgroups);
        for _ in 0..buffers {
            b.charge_next();
        }
        b
    }
}

/// p50 and p99 of one operation, in nanoseconds.
#[derive(Clone, Copy)]
struct Tail {
    p50: f64,
    p99: f64,
}

fn tail(mut samples: Vec<u64>) -> Tail {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize] as f64;
    Tail { p50: at(0.50), p99: at(0.99) }
}

/// Times `n` single operations after a warm-up. `op(b, timed)` runs one step and times only
/// the part that is the operation.
fn sample(b: &mut Bench, n: usize, mut step: impl FnMut(&mut Bench) -> Duration) -> Tail {
    for _ in 0..WARMUP {
        step(b);
    }
    tail((0..n).map(|_| step(b).as_nanos() as u64).collect())
}

struct Ops {
    charge: Tail,
    transfer: Tail,
    release: Tail,
}

/// Charge and release are measured in pairs (a new buffer in, the oldest out), so the live set
/// stays at its size; transfers move a random live buffer to a random process.
fn measure(b: &mut Bench, n: usize) -> Ops {
    let charge = sample(b, n, |b| {
        let t = Instant::now();
        b.charge_next();
        let d = t.elapsed();
        b.release_oldest();
        d
    });
    let release = sample(b, n, |b| {
        b.charge_next();
        let t = Instant::now();
        b.release_oldest();
        t.elapsed()
    });
    let transfer = sample(b, n, |b| {
        let t = Instant::now();
        b.transfer_random();
        t.elapsed()
    });
    Ops { charge, transfer, release }
}

/// What an `Instant` pair costs by itself (included in every sample).
fn timer_overhead() -> Tail {
    tail(
        (0..SAMPLES)
            .map(|_| {
                let t = Instant::now();
                black_box(());
                t.elapsed().as_nanos() as u64
            })
            .collect(),
    )
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix(" kB")?.parse().ok()).unwrap_or(0)
}

/// Allocator bytes and RSS per live record when `buffers` are inserted into a ledger that
/// already has its cgroups.
fn bytes_per_record(buffers: usize, cgroups: usize) -> (f64, f64) {
    let mut b = Bench::empty(cgroups);
    let (held, rss) = (HELD.load(Ordering::Relaxed), rss_kib());
    for _ in 0..buffers {
        b.charge_next();
    }
    let (held_after, rss_after) = (HELD.load(Ordering::Relaxed), rss_kib());
    black_box(&b.ledger);
    ((held_after - held) as f64 / buffers as f64, (rss_after.saturating_sub(rss) * 1024) as f64 / buffers as f64)
}

fn criterion_benches(c: &mut Criterion, b: &mut Bench) {
    // Not named "ledger…": BENCHMARKS.md takes the lines that start with that.
    let mut group = c.benchmark_group("100k buffers x 1k cgroups");
    group.bench_function("charge", |bench| {
        bench.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                b.charge_next();
                total += t.elapsed();
                b.release_oldest();
            }
            total
        })
    });
    group.bench_function("release", |bench| {
        bench.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                b.charge_next();
                let t = Instant::now();
                b.release_oldest();
                total += t.elapsed();
            }
            total
        })
    });
    group.bench_function("transfer", |bench| bench.iter(|| b.transfer_random()));
    group.finish();
}

fn fmt_ns(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} µs", v / 1000.0)
    } else {
        format!("{v:.0} ns")
    }
}

fn main() {
    let started = Instant::now();
    // Short by default (the whole bench stays well under three minutes); command-line
    // options (`--quick`, `--measurement-time`, ...) still override these.
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .without_plots()
        .configure_from_args();

    // First, while the heap is fresh: later, freed memory would be reused without growing RSS.
    let (alloc_per, rss_per) = bytes_per_record(100_000, 1_000);
    let mut main = Bench::filled(100_000, 1_000);
    criterion_benches(&mut criterion, &mut main);
    criterion.final_summary();

    let timer = timer_overhead();
    let ops = measure(&mut main, SAMPLES);
    main.ledger.check_invariants().expect("the workload keeps the ledger consistent");
    assert_eq!(main.ledger.buffer_count(), 100_000);
    drop(main);

    println!();
    println!("latency vs scale (timed single ops, {SAMPLES} per op; p50 / p99):");
    println!("{:>9} {:>8} | {:>19} | {:>19} | {:>19}", "buffers", "cgroups", "charge", "transfer", "release");
    let mut rows = Vec::new();
    let configs = [
        (1_000, 1_000),
        (10_000, 1_000),
        (100_000, 1_000),
        (1_000_000, 1_000),
        (100_000, 10),
        (100_000, 100),
        (100_000, 10_000),
    ];
    for (buffers, cgroups) in configs {
        let mut b = Bench::filled(buffers, cgroups);
        let o = measure(&mut b, SAMPLES);
        let cell = |t: Tail| format!("{} / {}", fmt_ns(t.p50), fmt_ns(t.p99));
        println!(
            "{buffers:>9} {cgroups:>8} | {:>19} | {:>19} | {:>19}",
            cell(o.charge),
            cell(o.transfer),
            cell(o.release)
        );
        rows.push((buffers, cgroups, o));
    }
    let worst_p99 = rows.iter().flat_map(|(_, _, o)| [o.charge.p99, o.transfer.p99, o.release.p99]).fold(0.0, f64::max);
    let best_p99 =
        rows.iter().flat_map(|(_, _, o)| [o.charge.p99, o.transfer.p99, o.release.p99]).fold(f64::MAX, f64::min);

    // For the plot: `plot: <axis> <op>_<quantile> <x> <ns>`; 100k x 1k is on both axes.
    println!();
    let mut points = Vec::new();
    for (buffers, cgroups, o) in &rows {
        let mut axes = Vec::new();
        if *cgroups == 1_000 {
            axes.push(("buffers", *buffers));
        }
        if *buffers == 100_000 {
            axes.push(("cgroups", *cgroups));
        }
        for (axis, x) in axes {
            for (op, t) in [("charge", o.charge), ("transfer", o.transfer), ("release", o.release)] {
                points.push((axis, op, x, t));
            }
        }
    }
    points.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
    for (axis, op, x, t) in points {
        println!("plot: {axis} {op}_p50 {x} {:.0}", t.p50);
        println!("plot: {axis} {op}_p99 {x} {:.0}", t.p99);
    }

    let p99_max = ops.charge.p99.max(ops.transfer.p99).max(ops.release.p99);
    let met = |ok: bool| if ok { "met" } else { "NOT MET" };
    // Two trailing spaces: each line stays a line when the block is pasted into Markdown.
    let lines = [
        format!("ledger summary: 100000 live buffers in 1000 app cgroups (/uid_<u>/pid_<p>), 3 pools; {SAMPLES} timed ops each, after {WARMUP} warm-up"),
        format!("ledger: charge p50 {}", fmt_ns(ops.charge.p50)),
        format!("ledger: charge p99 {}", fmt_ns(ops.charge.p99)),
        format!("ledger: transfer p50 {}", fmt_ns(ops.transfer.p50)),
        format!("ledger: transfer p99 {}", fmt_ns(ops.transfer.p99)),
        format!("ledger: release p50 {}", fmt_ns(ops.release.p50)),
        format!("ledger: release p99 {}", fmt_ns(ops.release.p99)),
        format!("ledger: timer overhead in each sample p50 {} (p99 {})", fmt_ns(timer.p50), fmt_ns(timer.p99)),
        format!("ledger: bytes per live record {alloc_per:.1} (allocator), {rss_per:.1} (VmRSS)"),
        format!(
            "ledger: p99 across 1k..1M buffers and 10..10k cgroups {}..{} (every op, every size in the table above)",
            fmt_ns(best_p99),
            fmt_ns(worst_p99)
        ),
        format!("ledger: target p99 < 1 µs at 100k x 1k {} (worst op {})", met(p99_max < 1000.0), fmt_ns(p99_max)),
        format!("ledger: target <= 128 bytes per record {} ({alloc_per:.1})", met(alloc_per <= 128.0)),
    ];
    let scale = rows.iter().map(|(buffers, cgroups, o)| {
        let pair = |t: Tail| format!("{:.0}/{:.0}", t.p50, t.p99);
        format!(
            "ledger: at {buffers} buffers x {cgroups} cgroups, p50/p99 ns: charge {}, transfer {}, release {}",
            pair(o.charge),
            pair(o.transfer),
            pair(o.release)
        )
    });
    println!();
    for l in lines.into_iter().chain(scale) {
        println!("{l}  ");
    }
    println!("ledger: bench time {:.0} s  ", started.elapsed().as_secs_f64());
}
