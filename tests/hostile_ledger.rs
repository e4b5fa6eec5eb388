//! Hostile input to the pure ledger: random event sequences with hostile values; invariants
//! always hold and refusals change nothing. Plus the directed regressions it found.

mod hostile;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use chargetransfer::ledger::{BufferInfo, Counter, Event, HeapClass, HeapSpec, Ledger, LimitKind, UNLIMITED};

use hostile::*;

const MIB: u64 = 1 << 20;
const REGIONS: [&str; 3] = ["cma/display", "carveout/secure", "drm/0000:03:00.0/vram0"];
const LEDGER_HEAPS: [&str; 5] = ["system", "display", "secure", "vram", "observed"];

fn phone_events() -> Vec<Event> {
    let heap = |name: &str, class, region: Option<&str>| HeapSpec {
        name: name.into(),
        class,
        region: region.map(String::from),
    };
    let mut events: Vec<Event> =
        REGIONS.iter().map(|r| Event::RegionAdded { region: r.to_string(), capacity: 1 << 30 }).collect();
    for (spec, enforce) in [
        (heap("system", HeapClass::System, None), true),
        (heap("display", HeapClass::Cma, Some(REGIONS[0])), true),
        (heap("secure", HeapClass::Carveout, Some(REGIONS[1])), true),
        (heap("vram", HeapClass::Vram, Some(REGIONS[2])), true),
        (heap("observed", HeapClass::System, None), false),
    ] {
        events.push(Event::HeapAdded { heap: spec, enforce });
    }
    events
}

fn hostile_size() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => 1..64 * MIB,
        1 => Just(0u64),
        1 => Just(u64::MAX),
        1 => Just(u64::MAX / 2 + 1),
        1 => Just(1u64 << 63),
        1 => any::<u64>(),
    ]
}

fn hostile_limit() -> impl Strategy<Value = u64> {
    prop_oneof![3 => 0..128 * MIB, 2 => Just(UNLIMITED), 1 => Just(0u64), 1 => Just(u64::MAX - 1), 1 => any::<u64>()]
}

fn hostile_inode() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 0..24u64, 1 => Just(u64::MAX), 1 => any::<u64>()]
}

fn hostile_pid() -> impl Strategy<Value = u32> {
    prop_oneof![8 => 1..6u32, 1 => Just(0u32), 1 => Just(u32::MAX), 1 => any::<u32>()]
}

/// Cgroup paths: mostly realistic, some deep, some malformed, some random.
fn cgroup_path() -> impl Strategy<Value = String> {
    let realistic = prop::sample::select(vec![
        "/",
        "/uid_10001",
        "/uid_10001/pid_100",
        "/uid_10001/pid_101",
        "/uid_10002/pid_200",
        "/system/surfaceflinger",
        "/background/uid_10003/pid_300",
    ])
    .prop_map(String::from);
    let deep = (1usize..48, 0..3u8).prop_map(|(depth, leaf)| {
        (0..depth).map(|i| if i + 1 == depth { format!("/d{leaf}") } else { "/d".to_string() }).collect()
    });
    let odd = prop::sample::select(vec![
        "",
        "a",
        "//",
        "/a/",
        "/a//b",
        "/.",
        "/..",
        "/a/../b",
        "/./a",
        "/a b",
        "/a\tb",
        "/a\nb",
        "/a\0b",
        "/ü/ß",
        " /",
        "/\u{200b}",
        "/uid_10001/",
        "/uid_10001/pid_100/..",
        "/🦀",
    ])
    .prop_map(String::from);
    let long = (1usize..5000).prop_map(|n| format!("/{}", "x".repeat(n)));
    prop_oneof![12 => realistic, 2 => deep, 2 => odd, 1 => long, 2 => "[/a-z0-9_. -]{0,24}", 1 => any::<String>()]
}

fn heap_name() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(LEDGER_HEAPS.to_vec()).prop_map(String::from),
        1 => prop::sample::select(vec!["nope", "", "h1", "h2"]).prop_map(String::from),
        1 => any::<String>(),
    ]
}

fn pool_name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec!["memcg", REGIONS[0], REGIONS[1], REGIONS[2]]).prop_map(String::from),
        1 => prop::sample::select(vec!["nope", "", "a b", "r1", "\0"]).prop_map(String::from),
        1 => any::<String>(),
    ]
}

fn heap_class() -> impl Strategy<Value = HeapClass> {
    prop::sample::select(vec![HeapClass::System, HeapClass::Cma, HeapClass::Carveout, HeapClass::Vram])
}

fn ledger_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        10 => (hostile_inode(), hostile_size(), heap_name(), hostile_pid(), any::<u64>(), cgroup_path())
            .prop_map(|(inode, size, heap, pid, start, cgroup)| Event::Charged { inode, size, heap, pid, start, cgroup }),
        3 => hostile_inode().prop_map(|inode| Event::Released { inode }),
        3 => (hostile_inode(), hostile_pid(), any::<u64>(), cgroup_path())
            .prop_map(|(inode, pid, start, cgroup)| Event::Transferred { inode, pid, start, cgroup }),
        2 => (hostile_inode(), hostile_pid(), any::<u64>(), cgroup_path())
            .prop_map(|(inode, pid, start, cgroup)| Event::Reassigned { inode, pid, start, cgroup }),
        1 => (hostile_pid(), cgroup_path()).prop_map(|(pid, cgroup)| Event::Migrated { pid, cgroup }),
        2 => cgroup_path().prop_map(|cgroup| Event::Reparented { cgroup }),
        3 => (cgroup_path(), pool_name(), prop::sample::select(LimitKind::ALL.to_vec()), hostile_limit())
            .prop_map(|(cgroup, pool, kind, value)| Event::LimitSet { cgroup, pool, kind, value }),
        1 => hostile_inode().prop_map(|inode| Event::Evicted { inode }),
        1 => hostile_inode().prop_map(|inode| Event::Restored { inode }),
        1 => hostile_inode().prop_map(|inode| Event::Pinned { inode }),
        1 => hostile_inode().prop_map(|inode| Event::Unpinned { inode }),
        1 => (pool_name(), hostile_size()).prop_map(|(region, capacity)| Event::RegionAdded { region, capacity }),
        1 => (heap_name(), heap_class(), prop::option::of(pool_name()), any::<bool>())
            .prop_map(|(name, class, region, enforce)| Event::HeapAdded { heap: HeapSpec { name, class, region }, enforce }),
    ]
}

/// Everything observable about a ledger, including peaks and event counts: a refused operation
/// must not move any of it.
#[derive(Debug, PartialEq)]
struct LedgerView {
    pools: Vec<(String, u64)>,
    heaps: Vec<(HeapSpec, bool)>,
    cgroups: Vec<(String, Vec<(String, Counter)>)>,
    buffers: Vec<BufferInfo>,
}

fn view(l: &Ledger) -> LedgerView {
    let mut buffers: Vec<BufferInfo> = l.buffers().collect();
    buffers.sort_by_key(|b| b.inode);
    LedgerView {
        pools: l.pools().map(|(_, name, cap)| (name.to_string(), cap)).collect(),
        heaps: l.heaps().map(|(spec, enforce)| (spec.clone(), enforce)).collect(),
        cgroups: l.cgroups().into_iter().map(|cg| (cg.clone(), l.counters(&cg).unwrap())).collect(),
        buffers,
    }
}

fn without_history(counters: &[(String, Counter)]) -> Vec<(String, Counter)> {
    counters.iter().map(|(p, c)| (p.clone(), Counter { peak: 0, max_events: 0, ..*c })).collect()
}

fn ledger_sequence(events: Vec<Event>, refusals: &Mutex<BTreeMap<&'static str, usize>>) -> Result<(), TestCaseError> {
    let mut l = Ledger::new();
    for e in phone_events() {
        l.apply(&e).map_err(|err| TestCaseError::fail(format!("setup {e:?}: {err}")))?;
    }
    let mut journal = phone_events();
    for e in &events {
        let before = view(&l);
        match l.apply(e) {
            Ok(()) => journal.push(e.clone()),
            Err(err) => {
                let after = view(&l);
                prop_assert!(
                    before == after,
                    "refused {e:?} ({err}) changed the ledger:\nbefore {before:?}\nafter  {after:?}"
                );
                prop_assert!(!err.to_string().is_empty());
                let code = chargetransfer::error::Error::from(err).code();
                *refusals.lock().unwrap().entry(chargetransfer::error::code_name(code)).or_default() += 1;
            }
        }
        if let Err(broken) = l.check_invariants() {
            return Err(TestCaseError::fail(format!("after {e:?}: {broken}")));
        }
        for region in REGIONS {
            if let Ok(advice) = l.eviction_advice(region, 64 * MIB) {
                prop_assert!(
                    advice.iter().all(|i| l.buffer(*i).is_some_and(|b| !b.pinned && !b.evicted)),
                    "advice {advice:?}"
                );
            }
        }
    }
    // The journal of accepted events replays to the same ledger, peaks and all.
    let mut replayed = Ledger::new();
    for e in &journal {
        replayed.apply(e).map_err(|err| TestCaseError::fail(format!("replay of {e:?}: {err}")))?;
    }
    prop_assert_eq!(view(&l), view(&replayed));
    // A snapshot rebuilds every buffer and every non-empty counter.
    let mut from_snapshot = Ledger::new();
    for e in l.to_events() {
        from_snapshot.apply(&e).map_err(|err| TestCaseError::fail(format!("snapshot event {e:?}: {err}")))?;
    }
    from_snapshot.check_invariants().map_err(TestCaseError::fail)?;
    let (live, rebuilt) = (view(&l), view(&from_snapshot));
    prop_assert_eq!(&live.buffers, &rebuilt.buffers);
    prop_assert_eq!(&live.pools, &rebuilt.pools);
    for (cg, counters) in &live.cgroups {
        // Empty cgroups need not survive a snapshot (a past peak is history, not state).
        if without_history(counters).iter().any(|(_, c)| *c != Counter::default()) {
            let got = from_snapshot
                .counters(cg)
                .map_err(|e| TestCaseError::fail(format!("{cg} lost in the snapshot: {e}")))?;
            prop_assert_eq!(without_history(counters), without_history(&got), "cgroup {}", cg);
        }
    }
    Ok(())
}

#[test]
fn ledger_random_events_keep_invariants_and_refusals_change_nothing() {
    let started = Instant::now();
    let cases = 500 * scale();
    let refusals = Mutex::new(BTreeMap::new());
    let ops = std::sync::atomic::AtomicUsize::new(0);
    run(&mut runner(4, cases, true), prop::collection::vec(ledger_event(), 1..100), |events| {
        ops.fetch_add(events.len(), std::sync::atomic::Ordering::Relaxed);
        ledger_sequence(events, &refusals)
    });
    let refusals = refusals.into_inner().unwrap();
    let refused: usize = refusals.values().sum();
    let by_code: Vec<String> = refusals.iter().map(|(c, n)| format!("{c} {n}")).collect();
    finished(
        "ledger",
        format!("{cases}"),
        format!("{cases} sequences / {} events, {refused} refused ({})", ops.into_inner(), by_code.join(", ")),
        started,
    );
}

/// Pool and heap indices are 16-bit: the 65 537th region or heap must be refused, not wrap
/// around onto memcg or the first heap.
#[test]
fn ledger_refuses_more_regions_and_heaps_than_it_can_index() {
    let mut l = Ledger::new();
    let mut refused_region = None;
    for i in 0..70_000u32 {
        if let Err(e) = l.add_region(&format!("r{i}"), 0) {
            refused_region = Some(i);
            assert!(!e.to_string().is_empty());
            break;
        }
    }
    let n = refused_region.expect("the region table never filled up");
    assert!(n >= u16::MAX as u32 - 1, "refused early, at {n}");
    assert_eq!(l.pool_id("memcg"), Some(chargetransfer::ledger::PoolId::MEMCG));
    let mut refused_heap = None;
    for i in 0..70_000u32 {
        let spec = HeapSpec { name: format!("h{i}"), class: HeapClass::System, region: None };
        if l.add_heap(spec, true).is_err() {
            refused_heap = Some(i);
            break;
        }
    }
    assert!(refused_heap.is_some_and(|n| n >= u16::MAX as u32 - 1), "{refused_heap:?}");
    l.charge(1, 4096, "h0", 1, 0, "/a").unwrap();
    assert_eq!(l.buffer(1).unwrap().heap, "h0");
    l.check_invariants().unwrap();
}

/// Eviction records what the driver already did, so it skips limits, but a memcg counter that
/// would wrap must still refuse it (it used to panic in debug builds and wrap in release).
#[test]
fn ledger_eviction_that_would_overflow_memcg_is_refused_and_changes_nothing() {
    let mut l = Ledger::new();
    for e in phone_events() {
        l.apply(&e).unwrap();
    }
    l.charge(4, u64::MAX, "vram", 1, 0, "/").unwrap();
    l.charge(5, u64::MAX, "observed", 1, 0, "/").unwrap();
    let before = view(&l);
    let err = l.evict(4).unwrap_err();
    assert!(err.to_string().contains("buffer 4") && err.to_string().contains("overflow"), "{err}");
    assert_eq!(view(&l), before);
    l.check_invariants().unwrap();
}

/// memcg is not a dmem region: a heap that names it as its region would charge memcg twice.
#[test]
fn ledger_refuses_a_heap_whose_region_is_memcg() {
    let mut l = Ledger::new();
    let spec = HeapSpec { name: "c".into(), class: HeapClass::Cma, region: Some("memcg".into()) };
    assert!(matches!(l.add_heap(spec, true), Err(chargetransfer::ledger::LedgerError::HeapNeedsRegion { .. })));
    assert!(l.heap("c").is_none());
}
