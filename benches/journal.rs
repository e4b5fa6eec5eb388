//! Journal benchmarks: append throughput per durability, replay of 1M records, snapshot size.
//!
//! Besides criterion's statistics, each measurement prints one summary line (`journal: ...`)
//! from a single timed run, for BENCHMARKS.md. Files go to the system temp dir.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use chargetransfer::journal::{Durability, Journal};
use chargetransfer::ledger::{Event, HeapClass, HeapSpec, Ledger};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const MIB: u64 = 1 << 20;
const REPLAY_RECORDS: u64 = 1_000_000;
/// Buffers alive at the end of the replay workload (what the snapshot holds).
const LIVE: u64 = 100_000;
const APPS: u64 = 200;

fn setup(l: &mut Ledger) -> Vec<Event> {
    let heap = |name: &str, class, region: Option<&str>| HeapSpec {
        name: name.into(),
        class,
        region: region.map(String::from),
    };
    vec![
        l.add_region("cma/display", 256 * MIB).unwrap(),
        l.add_heap(heap("system", HeapClass::System, None), true).unwrap(),
        l.add_heap(heap("display", HeapClass::Cma, Some("cma/display")), true).unwrap(),
    ]
}

fn app(i: u64) -> (u32, String) {
    let a = i % APPS;
    (20_000 + a as u32, format!("/uid_{}/pid_{}", 10_000 + a, 20_000 + a))
}

/// The service's hot path as events: each buffer is charged to one app, handed to another,
/// and released once `LIVE` newer ones exist. Applied to `l` as generated, so all are valid.
fn workload(l: &mut Ledger, records: u64) -> Vec<Event> {
    let mut events = Vec::with_capacity(records as usize);
    for inode in 0.. {
        for step in 0..3 {
            if events.len() as u64 == records {
                return events;
            }
            let event = match step {
                0 => {
                    let (pid, cgroup) = app(inode);
                    let heap = if inode % 8 == 3 { "display" } else { "system" };
                    l.charge(inode, 4096 * (1 + inode % 64), heap, pid, 0, &cgroup)
                }
                1 => {
                    let (pid, cgroup) = app(inode * 7 + 3);
                    l.transfer(inode, pid, 0, &cgroup)
                }
                _ if inode >= LIVE => l.release(inode - LIVE),
                _ => continue,
            };
            events.push(event.unwrap());
        }
    }
    unreachable!("the loop returns once `records` events exist")
}

fn charged(inode: u64) -> Event {
    let (pid, cgroup) = app(inode);
    Event::Charged {
        inode,
        size: 4096 * (1 + inode % 64),
        heap: "system".into(),
        pid,
        start: 4_000_000 + inode,
        cgroup,
    }
}

fn per_second(n: u64, d: Duration) -> String {
    let rate = n as f64 / d.as_secs_f64();
    if rate >= 1e6 {
        format!("{:.2}M", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{:.1}k", rate / 1e3)
    } else {
        format!("{rate:.0}")
    }
}

/// Appends `n` records one by one (or in batches of `batch`) and returns the elapsed time.
fn time_appends(durability: Durability, n: u64, batch: usize) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _, _) = Journal::open(dir.path(), durability).unwrap();
    let events: Vec<Event> = (0..n).map(charged).collect();
    let start = Instant::now();
    for chunk in events.chunks(batch) {
        j.append_all(chunk).unwrap();
    }
    j.flush().unwrap();
    start.elapsed()
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

fn appends(c: &mut Criterion) {
    for (name, durability, n, batch) in [
        ("append fsync", Durability::Fsync, 500, 1),
        ("append_all(64) fsync", Durability::Fsync, 500 * 64, 64),
        ("append batch, one flush", Durability::Batch, 200_000, 1),
    ] {
        let d = time_appends(durability, n, batch);
        println!(
            "journal: {name:<24} {:>8} records/s ({:.2} µs/record, {n} records)",
            per_second(n, d),
            d.as_secs_f64() * 1e6 / n as f64
        );
    }

    let mut group = c.benchmark_group("journal_append");
    group.throughput(Throughput::Elements(1));
    for (name, durability) in [("fsync", Durability::Fsync), ("batch", Durability::Batch)] {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _, _) = Journal::open(dir.path(), durability).unwrap();
        let mut inode = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                inode += 1;
                j.append(black_box(&charged(inode))).unwrap();
            })
        });
        j.flush().unwrap();
    }
    group.finish();
}

fn replay(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, mut l, _) = Journal::open(dir.path(), Durability::Batch).unwrap();
    j.append_all(&setup(&mut l)).unwrap();
    let events = workload(&mut l, REPLAY_RECORDS);
    for chunk in events.chunks(4096) {
        j.append_all(chunk).unwrap();
    }
    j.flush().unwrap();
    drop(j);
    let journal_bytes = file_len(&dir.path().join("journal.log"));

    let start = Instant::now();
    let (mut j, replayed, report) = Journal::open(dir.path(), Durability::Batch).unwrap();
    let d = start.elapsed();
    assert_eq!((report.journal_events, report.events_refused), (REPLAY_RECORDS + 3, 0));
    assert_eq!(replayed.buffer_count(), l.buffer_count());
    println!(
        "journal: replay {REPLAY_RECORDS} records    {:>8.0} ms ({} records/s; {:.1} MB, {:.1} B/record)",
        d.as_secs_f64() * 1e3,
        per_second(REPLAY_RECORDS, d),
        journal_bytes as f64 / 1e6,
        journal_bytes as f64 / REPLAY_RECORDS as f64
    );

    let json_bytes: usize = events.iter().map(|e| serde_json::to_vec(e).unwrap().len() + 8).sum();
    let json: Vec<Vec<u8>> = events.iter().map(|e| serde_json::to_vec(e).unwrap()).collect();
    let start = Instant::now();
    for bytes in &json {
        black_box(serde_json::from_slice::<Event>(bytes).unwrap());
    }
    let d = start.elapsed();
    println!(
        "journal: as JSON instead             {:.1} B/record; decoding alone {:.0} ms per {REPLAY_RECORDS}",
        json_bytes as f64 / REPLAY_RECORDS as f64,
        d.as_secs_f64() * 1e3
    );

    let start = Instant::now();
    j.compact(&replayed).unwrap();
    let d = start.elapsed();
    let snapshot = file_len(&dir.path().join(format!("snapshot.{}", j.generation())));
    let n = replayed.to_events().len() as u64;
    println!(
        "journal: snapshot of {} buffers  {:.1} MB, {n} events, {:.1} B/event, compaction {:.0} ms",
        replayed.buffer_count(),
        snapshot as f64 / 1e6,
        snapshot as f64 / n as f64,
        d.as_secs_f64() * 1e3
    );
    let start = Instant::now();
    let (_, _, report) = Journal::open(dir.path(), Durability::Batch).unwrap();
    println!(
        "journal: open from that snapshot    {:>8.0} ms ({} events)",
        start.elapsed().as_secs_f64() * 1e3,
        report.snapshot_events
    );
    drop((j, replayed, l, events, json));

    // Criterion's own run over a fresh copy of the 1M-record journal each time would cost as
    // much to build as to measure; the journal is rebuilt once and reopened read-only instead.
    let dir = tempfile::tempdir().unwrap();
    let (mut j, mut l, _) = Journal::open(dir.path(), Durability::Batch).unwrap();
    j.append_all(&setup(&mut l)).unwrap();
    for chunk in workload(&mut l, REPLAY_RECORDS).chunks(4096) {
        j.append_all(chunk).unwrap();
    }
    j.flush().unwrap();
    drop((j, l));
    let mut group = c.benchmark_group("journal_replay");
    group.sample_size(10);
    group.throughput(Throughput::Elements(REPLAY_RECORDS));
    group.bench_function("1M records", |b| {
        b.iter_batched(|| (), |()| Journal::open(dir.path(), Durability::None).unwrap(), BatchSize::PerIteration)
    });
    group.finish();
}

criterion_group!(benches, appends, replay);
criterion_main!(benches);
