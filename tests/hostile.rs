//! Hostile input: property/fuzz-style harnesses over the public surfaces, on stable Rust.
//!
//! - `aidl_*`: random call sequences against the real `chargetransferd` over RPC — random
//!   methods, random arguments, fds of every kind the host can make, raw parcels with random
//!   contents, and a fixture /proc that changes under the service between calls.
//! - `policy_*`: plausible-but-wrong policy documents and random bytes into `Policy::from_json`.
//! - `kernel_files_*`: random cgroupfs/procfs file contents read through `CgroupFs`/`ProcFs`.
//! - `ledger_*`: random event sequences with hostile values into the pure ledger.
//!
//! CI runs a fixed number of cases; `HOSTILE_CASES=N` multiplies every count by N, and
//! `HOSTILE_SEED` replays one run (the seed is printed; the services' timing still varies).
//! `HOSTILE_SERVICE_LOG=info` raises the services' log level; `HOSTILE_DEBUG=1` prints what a
//! reconcile changed while the final check waits for it to settle. Each harness prints its
//! counts to stderr (uncaptured, so they show in `cargo test` output), and the last one to finish
//! prints the summary line.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::Value;

use chargetransfer::aidl::vendor::chargetransfer::ErrorCode::ErrorCode;
use chargetransfer::aidl::vendor::chargetransfer::IChargeClient::{BnChargeClient, IChargeClient};
use chargetransfer::aidl::vendor::chargetransfer::IChargeTransfer::IChargeTransfer;
use chargetransfer::client::{Client, ClientError};
use chargetransfer::kernel::{self, CgroupFs, DmemFile, KernelError, ProcFs};
use chargetransfer::ledger::{BufferInfo, Counter, Event, HeapClass, HeapSpec, Ledger, LimitKind, UNLIMITED};
use chargetransfer::policy::{self, OwnerClass, Policy, PolicyError, RegionClass};

// ---- case counts, seeds and the summary ----

/// `HOSTILE_CASES=N` runs N times the CI case counts.
fn scale() -> u32 {
    std::env::var("HOSTILE_CASES").ok().and_then(|s| s.parse().ok()).filter(|n| *n > 0).unwrap_or(1)
}

fn base_seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        std::env::var("HOSTILE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
        })
    })
}

/// A runner with its own deterministic stream per harness. Stateful harnesses (a live service)
/// cannot be shrunk meaningfully, so they fail with the case as generated.
fn runner(harness: u64, cases: u32, shrink: bool) -> TestRunner {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&base_seed().to_le_bytes());
    seed[8..16].copy_from_slice(&harness.to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: if shrink { 2048 } else { 0 },
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed))
}

/// Written to stderr directly: the test harness captures `eprintln!`, not the stream itself.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

const HARNESSES: [&str; 4] = ["aidl", "policy", "files", "ledger"];

/// Each harness records its headline count; once all four passed, one summary line.
fn finished(harness: &'static str, headline: String, detail: String, started: Instant) {
    report(&format!(
        "hostile: {harness}: {headline}; {detail} ({:.1} s, seed {})",
        started.elapsed().as_secs_f64(),
        base_seed()
    ));
    static DONE: Mutex<BTreeMap<&'static str, String>> = Mutex::new(BTreeMap::new());
    let mut done = DONE.lock().unwrap_or_else(|p| p.into_inner());
    done.insert(harness, headline);
    if HARNESSES.iter().all(|h| done.contains_key(h)) {
        let parts: Vec<String> = HARNESSES.iter().map(|h| format!("{h} {}", done[h])).collect();
        report(&format!(
            "hostile: {} — 0 panics, all refusals typed (seed {}, HOSTILE_CASES={})",
            parts.join(", "),
            base_seed(),
            scale()
        ));
    }
}

fn run<S: Strategy>(runner: &mut TestRunner, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}\n(replay with HOSTILE_SEED={})", base_seed());
    }
}

/// Strings a person or a fuzzer would try: separators, escapes, control characters, unicode,
/// numbers at the edges.
const NASTY: &[&str] = &[
    "",
    " ",
    "\t",
    "\n",
    "\r\n",
    "\0",
    "/",
    "//",
    "/.",
    "/..",
    "..",
    ".",
    "*",
    "**",
    "%",
    "-",
    "+",
    ":",
    "\\",
    "\"",
    "max",
    "MAX",
    "-1",
    "+1",
    "0",
    "0x10",
    "1e3",
    "1K",
    "1.5G",
    "16E",
    "101%",
    "100%",
    "0.00001%",
    "18446744073709551615",
    "18446744073709551616",
    "4294967295",
    "4294967296",
    "-9223372036854775808",
    "ü",
    "\u{202e}",
    "\u{feff}",
    "\u{200b}",
    "🦀",
    "a b",
    "a\0b",
];

fn nasty() -> impl Strategy<Value = String> {
    prop::sample::select(NASTY).prop_map(String::from)
}

/// A string from the list, a random short ASCII string, or any unicode string.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![3 => nasty(), 2 => "[/a-z0-9_.:* %-]{0,24}", 1 => any::<String>(), 1 => (1usize..20_000).prop_map(|n| "x".repeat(n))]
}

// =====================================================================================
// Ledger: random events with hostile values; invariants always hold, refusals change nothing.
// =====================================================================================

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
        10 => (hostile_inode(), hostile_size(), heap_name(), hostile_pid(), cgroup_path())
            .prop_map(|(inode, size, heap, pid, cgroup)| Event::Charged { inode, size, heap, pid, cgroup }),
        3 => hostile_inode().prop_map(|inode| Event::Released { inode }),
        3 => (hostile_inode(), hostile_pid(), cgroup_path()).prop_map(|(inode, pid, cgroup)| Event::Transferred { inode, pid, cgroup }),
        2 => (hostile_inode(), hostile_pid(), cgroup_path()).prop_map(|(inode, pid, cgroup)| Event::Reassigned { inode, pid, cgroup }),
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
        if without_history(counters).iter().any(|(_, c)| !c.is_pristine()) {
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
    l.charge(1, 4096, "h0", 1, "/a").unwrap();
    assert_eq!(l.buffer(1).unwrap().heap, "h0");
    l.check_invariants().unwrap();
}

// =====================================================================================
// Policy: plausible-but-wrong documents and random bytes; every error is located.
// =====================================================================================

/// The path the policy parser gives a key under `parent` (mirrors its formatting).
fn key_path(parent: &str, k: &str) -> String {
    let plain = is_plain_key(k);
    match (parent.is_empty(), plain) {
        (true, true) => k.to_string(),
        (false, true) => format!("{parent}.{k}"),
        (_, false) => format!("{parent}[{k:?}]"),
    }
}

fn is_plain_key(k: &str) -> bool {
    !k.is_empty() && k.bytes().all(|c| c.is_ascii_alphanumeric() || b"_-,".contains(&c))
}

/// Every JSON path in a document.
fn json_paths(v: &Value, at: String, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let p = key_path(&at, k);
                out.insert(p.clone());
                json_paths(child, p, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let p = format!("{at}[{i}]");
                out.insert(p.clone());
                json_paths(child, p, out);
            }
        }
        _ => {}
    }
}

/// Does `path` name a value of `doc`, or a missing key directly under one?
fn names_a_location(doc: &Value, path: &str) -> bool {
    if path == "(top level)" {
        return true;
    }
    let mut paths = BTreeSet::new();
    json_paths(doc, String::new(), &mut paths);
    if paths.contains(path) {
        return true;
    }
    std::iter::once("").chain(paths.iter().map(String::as_str)).any(|parent| {
        path.strip_prefix(parent).is_some_and(|rest| {
            let key = if parent.is_empty() { Some(rest) } else { rest.strip_prefix('.') };
            key.is_some_and(is_plain_key)
        })
    })
}

#[derive(Clone, Debug)]
enum JsonEdit {
    Replace(Index, Value),
    Remove(Index),
    AddKey(Index, String, Value),
    Wrap(Index),
}

fn json_leaf() -> impl Strategy<Value = Value> {
    let number = prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::sample::select(vec![0i64, 1, -1, 2, 1000, 10000, 4_294_967_295, 4_294_967_296]).prop_map(Value::from),
        prop::sample::select(vec![0.5f64, -0.0, 1e308, 1.5]).prop_map(Value::from),
    ];
    let word = prop::sample::select(vec![
        "system",
        "cma",
        "carveout",
        "vram",
        "dram",
        "enforce",
        "observe",
        "app",
        "background",
        "display",
        "camera",
        "codec",
        "secure",
        "render",
        "cma/display",
        "memcg",
        "drm/*/vram*",
        "drm/**",
        "/uid_*/**",
        "/**/**/**/**/**/**/**/**/x",
        "0-9999",
        "9999-0",
        "10000-",
        "-5",
        "a-b",
        "25%",
        "50%",
        "12.5%",
        "64M",
        "1G",
        "16E",
        "max",
    ])
    .prop_map(String::from);
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        3 => number,
        4 => word.prop_map(Value::String),
        3 => hostile_string().prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![3 => prop::sample::select(vec!["class", "region", "mode", "uids", "name", "max", "app", "version", "heaps", "_c"]).prop_map(String::from), 1 => hostile_string()],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_edit() -> impl Strategy<Value = JsonEdit> {
    let key = prop_oneof![
        3 => prop::sample::select(vec![
            "version", "heaps", "trusted", "owner_classes", "limits", "class", "region", "region_class", "mode", "uids",
            "contexts", "default", "rules", "name", "cgroups", "max", "low", "min", "pin_max", "dmabuf_max", "memcg", "app",
            "system", "background", "display", "bogus", "_comment",
        ])
        .prop_map(String::from),
        1 => hostile_string(),
    ];
    prop_oneof![
        4 => (any::<Index>(), json_value()).prop_map(|(i, v)| JsonEdit::Replace(i, v)),
        2 => any::<Index>().prop_map(JsonEdit::Remove),
        2 => (any::<Index>(), key, json_value()).prop_map(|(i, k, v)| JsonEdit::AddKey(i, k, v)),
        1 => any::<Index>().prop_map(JsonEdit::Wrap),
    ]
}

/// Pointers (RFC 6901) to every value of a document, root first.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    let esc = |k: &str| k.replace('~', "~0").replace('/', "~1");
    match v {
        Value::Object(map) => map.iter().for_each(|(k, c)| pointers(c, format!("{at}/{}", esc(k)), out)),
        Value::Array(items) => items.iter().enumerate().for_each(|(i, c)| pointers(c, format!("{at}/{i}"), out)),
        _ => {}
    }
}

fn apply_edit(doc: &mut Value, edit: &JsonEdit) {
    let mut all = Vec::new();
    pointers(doc, String::new(), &mut all);
    match edit {
        JsonEdit::Replace(i, v) => *doc.pointer_mut(i.get(&all).as_str()).unwrap() = v.clone(),
        JsonEdit::Remove(i) => {
            let p = i.get(&all).as_str();
            if let Some((parent, last)) = p.rsplit_once('/') {
                let last = last.replace("~1", "/").replace("~0", "~");
                match doc.pointer_mut(parent).unwrap() {
                    Value::Object(m) => {
                        m.remove(&last);
                    }
                    Value::Array(a) => {
                        a.remove(last.parse::<usize>().unwrap());
                    }
                    _ => {}
                }
            }
        }
        JsonEdit::AddKey(i, k, v) => match doc.pointer_mut(i.get(&all).as_str()).unwrap() {
            Value::Object(m) => {
                m.insert(k.clone(), v.clone());
            }
            Value::Array(a) => a.push(v.clone()),
            other => *other = v.clone(),
        },
        JsonEdit::Wrap(i) => {
            let slot = doc.pointer_mut(i.get(&all).as_str()).unwrap();
            *slot = Value::Array(vec![slot.take()]);
        }
    }
}

#[derive(Clone, Debug)]
enum PolicyInput {
    /// The embedded default with a few edits.
    Edited(Vec<JsonEdit>),
    /// A minimal document with edits (fewer keys, so edits hit deeper rules more often).
    EditedMinimal(Vec<JsonEdit>),
    /// An override layered on the embedded default (the vendor/ODM path).
    Override(Value),
    /// An override file, possibly not JSON, loaded after the shipped base file as the service
    /// does (`--policy base --policy odm`): errors must name the file as well.
    OverrideFile(String),
    /// Random JSON from scratch.
    Random(Value),
    /// Not necessarily JSON at all.
    Text(String),
    Bytes(Vec<u8>),
}

fn policy_input() -> impl Strategy<Value = PolicyInput> {
    let soup = prop::collection::vec(
        prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "\"",
            "1",
            "-",
            "e",
            ".",
            "true",
            "null",
            " ",
            "\n",
            "\"heaps\"",
            "\"version\"",
            "\\u0000",
            "\\ud800",
        ]),
        0..64,
    )
    .prop_map(|t| t.concat());
    prop_oneof![
        6 => prop::collection::vec(json_edit(), 1..4).prop_map(PolicyInput::Edited),
        3 => prop::collection::vec(json_edit(), 1..4).prop_map(PolicyInput::EditedMinimal),
        2 => json_value().prop_map(PolicyInput::Override),
        1 => prop_oneof![json_value().prop_map(|v| v.to_string()), any::<String>()].prop_map(PolicyInput::OverrideFile),
        1 => json_value().prop_map(PolicyInput::Random),
        1 => prop_oneof![soup, any::<String>()].prop_map(PolicyInput::Text),
        1 => prop::collection::vec(any::<u8>(), 0..256).prop_map(PolicyInput::Bytes),
    ]
}

const MINIMAL_POLICY: &str = r#"{"version": 1, "heaps": {"system": {"class": "system"}, "c": {"class": "cma", "region": "cma/c"}},
  "trusted": {"uids": ["1000-1003"], "contexts": ["surfaceflinger"]},
  "owner_classes": {"default": "app", "rules": [{"name": "r", "class": "system", "uids": [1000], "cgroups": ["/system/*"]}]},
  "limits": {"default": {"app": {"max": "50%"}}, "memcg": {"app": {"max": "1G", "low": "0", "min": "0", "dmabuf_max": "25%"}}}}"#;

/// Uses an accepted policy the way the service does; none of it may panic, and its heaps must
/// declare into a ledger (a policy the service cannot start with must be refused by the parser,
/// with a JSON path).
fn exercise(p: &Policy) -> Result<(), String> {
    let mut ledger = Ledger::new();
    for (spec, enforce) in p.heap_specs() {
        if let Some(region) = &spec.region {
            if ledger.pool_id(region).is_none() {
                ledger.add_region(region, 0).map_err(|e| format!("accepted, but region {region:?}: {e}"))?;
            }
        }
        ledger.add_heap(spec.clone(), enforce).map_err(|e| format!("accepted, but heap {:?}: {e}", spec.name))?;
    }
    for h in p.heaps() {
        let _ = (h.region_is_pattern(), p.heap(&h.name));
    }
    for uid in [0, 1000, 10001, 99_999, 1_010_001, u32::MAX] {
        let _ = p.is_trusted_uid(uid);
        for cg in ["/", "/uid_10001/pid_5", "/background/uid_1/pid_2/x/y/z", "/system/surfaceflinger"] {
            let _ = p.owner_class(uid, cg);
        }
    }
    for ctx in ["u:r:surfaceflinger:s0", "", ":::", "surfaceflinger\0"] {
        let _ = p.is_trusted_context(ctx);
    }
    for rc in RegionClass::ALL {
        for oc in OwnerClass::ALL {
            let l = p.dmem_limits(rc, oc);
            for a in [l.max, l.low, l.min, l.pin_max] {
                for cap in [None, Some(0), Some(4096), Some(u64::MAX)] {
                    let _ = a.resolve(cap);
                }
            }
        }
    }
    for oc in OwnerClass::ALL {
        let l = p.memcg_limits(oc);
        let _ = (l.max.resolve(Some(u64::MAX)), l.dmabuf_max.resolve(Some(1 << 34)));
    }
    Ok(())
}

#[derive(Default)]
struct PolicyTally {
    accepted: usize,
    syntax: usize,
    invalid: usize,
}

fn check_policy_result(
    text: &str,
    doc: Option<&Value>,
    result: Result<Policy, PolicyError>,
    tally: &Mutex<PolicyTally>,
) -> Result<(), TestCaseError> {
    match result {
        Ok(p) => {
            exercise(&p).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            tally.lock().unwrap().accepted += 1;
        }
        Err(PolicyError::Syntax { line, column, message, .. }) => {
            let lines = text.split('\n').count();
            prop_assert!(
                line >= 1 && line <= lines + 1,
                "syntax error at line {line} of a {lines}-line text: {message}"
            );
            prop_assert!(!message.is_empty());
            let _ = column;
            tally.lock().unwrap().syntax += 1;
        }
        Err(PolicyError::Invalid { path, reason, .. }) => {
            prop_assert!(!reason.is_empty(), "no reason at {path}");
            let doc =
                doc.ok_or_else(|| TestCaseError::fail(format!("{path}: {reason} for a document that is not JSON")))?;
            prop_assert!(names_a_location(doc, &path), "error path {path:?} ({reason}) names nothing in {doc}");
            tally.lock().unwrap().invalid += 1;
        }
        Err(e @ PolicyError::Io { .. }) => return Err(TestCaseError::fail(format!("I/O error without a file: {e}"))),
    }
    Ok(())
}

#[test]
fn policy_random_documents_are_refused_with_a_json_path() {
    let started = Instant::now();
    let cases = 500 * scale();
    let tally = Mutex::new(PolicyTally::default());
    let default: Value = serde_json::from_str(policy::EMBEDDED_DEFAULT).unwrap();
    let minimal: Value = serde_json::from_str(MINIMAL_POLICY).unwrap();
    Policy::from_json(MINIMAL_POLICY).expect("the minimal seed document is valid");
    run(&mut runner(2, cases, true), policy_input(), |input| match &input {
        PolicyInput::Edited(edits) | PolicyInput::EditedMinimal(edits) => {
            let mut doc = if matches!(input, PolicyInput::Edited(_)) { default.clone() } else { minimal.clone() };
            edits.iter().for_each(|e| apply_edit(&mut doc, e));
            let text = serde_json::to_string_pretty(&doc).unwrap();
            check_policy_result(&text, Some(&doc), Policy::from_json(&text), &tally)
        }
        PolicyInput::Override(over) => {
            let text = over.to_string();
            let mut merged = default.clone();
            policy::merge(&mut merged, over.clone());
            check_policy_result(&text, Some(&merged), Policy::default_with(&[&text]), &tally)
        }
        PolicyInput::OverrideFile(text) => {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("odm-policy.json");
            fs::write(&file, text).unwrap();
            let base = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/config/policy.json"));
            let result = Policy::load(&[base.clone(), file.clone()]);
            match &result {
                Err(PolicyError::Syntax { file: f, .. }) => {
                    prop_assert_eq!(f.as_ref(), Some(&file), "syntax error names the file")
                }
                Err(PolicyError::Invalid { files, .. }) => {
                    prop_assert_eq!(files, &vec![base, file.clone()], "invalid names the files")
                }
                _ => {}
            }
            let doc = serde_json::from_str::<Value>(text).ok().map(|over| {
                let mut merged = default.clone();
                policy::merge(&mut merged, over);
                merged
            });
            check_policy_result(text, doc.as_ref(), result, &tally)
        }
        PolicyInput::Random(doc) => {
            let text = doc.to_string();
            check_policy_result(&text, Some(doc), Policy::from_json(&text), &tally)
        }
        PolicyInput::Text(text) => {
            let doc: Option<Value> = serde_json::from_str(text).ok();
            check_policy_result(text, doc.as_ref(), Policy::from_json(text), &tally)
        }
        PolicyInput::Bytes(bytes) => {
            let text = String::from_utf8_lossy(bytes).into_owned();
            let doc: Option<Value> = serde_json::from_str(&text).ok();
            check_policy_result(&text, doc.as_ref(), Policy::from_json(&text), &tally)
        }
    });
    let t = tally.into_inner().unwrap();
    finished(
        "policy",
        format!("{cases}"),
        format!(
            "{cases} documents: {} accepted, {} syntax errors (line/column), {} invalid (JSON path checked)",
            t.accepted, t.syntax, t.invalid
        ),
        started,
    );
}

// =====================================================================================
// Kernel files: random contents in a fixture tree; no panic, every error names its file.
// =====================================================================================

const APP_CG: &str = "/uid_10001/pid_123";
const FIXTURE_PID: u32 = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KernelFile {
    MemoryCurrent,
    MemoryMax,
    MemoryHigh,
    MemoryLow,
    MemoryMin,
    MemoryPeak,
    MemoryStat,
    MemoryEvents,
    DmemCapacity,
    DmemCurrent,
    DmemMax,
    DmemMin,
    DmemLow,
    DmemPeak,
    Controllers,
    SubtreeControl,
    Procs,
    Mounts,
    Mountinfo,
    Status,
    Cgroup,
    Stat,
    Comm,
    Cmdline,
    Fdinfo,
    Maps,
    SelfFdinfo,
}

const KERNEL_FILES: [KernelFile; 27] = {
    use KernelFile::*;
    [
        MemoryCurrent,
        MemoryMax,
        MemoryHigh,
        MemoryLow,
        MemoryMin,
        MemoryPeak,
        MemoryStat,
        MemoryEvents,
        DmemCapacity,
        DmemCurrent,
        DmemMax,
        DmemMin,
        DmemLow,
        DmemPeak,
        Controllers,
        SubtreeControl,
        Procs,
        Mounts,
        Mountinfo,
        Status,
        Cgroup,
        Stat,
        Comm,
        Cmdline,
        Fdinfo,
        Maps,
        SelfFdinfo,
    ]
};

const VRAM: &str = "drm/0000:03:00.0/vram0";

impl KernelFile {
    /// Path relative to the fixture root and the content the kernel would write.
    fn template(self, self_fd: i32) -> (String, String) {
        let app = format!("cgroup{APP_CG}");
        let pid = format!("proc/{FIXTURE_PID}");
        use KernelFile::*;
        let (path, content) = match self {
            MemoryCurrent => (format!("{app}/memory.current"), "1048576\n".to_string()),
            MemoryMax => (format!("{app}/memory.max"), "max\n".to_string()),
            MemoryHigh => (format!("{app}/memory.high"), "268435456\n".to_string()),
            MemoryLow => (format!("{app}/memory.low"), "0\n".to_string()),
            MemoryMin => (format!("{app}/memory.min"), "0\n".to_string()),
            MemoryPeak => (format!("{app}/memory.peak"), "2097152\n".to_string()),
            MemoryStat => (format!("{app}/memory.stat"), "anon 4096\nfile 8192\nkernel 0\nshmem 0\nfile_mapped 4096\n".to_string()),
            MemoryEvents => (format!("{app}/memory.events"), "low 0\nhigh 0\nmax 3\noom 0\noom_kill 0\noom_group_kill 0\n".to_string()),
            DmemCapacity => ("cgroup/dmem.capacity".to_string(), format!("{VRAM} 8589934592\ncma/reserved 67108864\n")),
            DmemCurrent => (format!("{app}/dmem.current"), format!("{VRAM} 0\ncma/reserved 4194304\n")),
            DmemMax => (format!("{app}/dmem.max"), format!("{VRAM} max\ncma/reserved 16777216\n")),
            DmemMin => (format!("{app}/dmem.min"), format!("{VRAM} 0\ncma/reserved 0\n")),
            DmemLow => (format!("{app}/dmem.low"), format!("{VRAM} 0\ncma/reserved max\n")),
            DmemPeak => (format!("{app}/dmem.peak"), format!("{VRAM} 0\ncma/reserved 8388608\n")),
            Controllers => ("cgroup/cgroup.controllers".to_string(), "cpuset cpu io memory pids dmem\n".to_string()),
            SubtreeControl => ("cgroup/cgroup.subtree_control".to_string(), "memory dmem\n".to_string()),
            Procs => (format!("{app}/cgroup.procs"), "123\n124\n".to_string()),
            Mounts => (
                "proc/self/mounts".to_string(),
                "proc /proc proc rw,nosuid 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n".to_string(),
            ),
            Mountinfo => ("proc/self/mountinfo".to_string(), "35 24 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw\n".to_string()),
            Status => (
                format!("{pid}/status"),
                "Name:\tsurface flinger\nUmask:\t0077\nState:\tS (sleeping)\nUid:\t10001\t10001\t10001\t10001\nGid:\t1\t1\t1\t1\n".to_string(),
            ),
            Cgroup => (format!("{pid}/cgroup"), format!("0::{APP_CG}\n")),
            Stat => (
                format!("{pid}/stat"),
                "100 (a) (b) c) S 1 100 100 0 -1 4194560 500 0 0 0 7 3 0 0 20 0 4 0 987654 123456789 2000 18446744073709551615\n".to_string(),
            ),
            Comm => (format!("{pid}/comm"), "app\n".to_string()),
            Cmdline => (format!("{pid}/cmdline"), "/system/bin/app\0--flag\0".to_string()),
            Fdinfo => (format!("{pid}/fdinfo/3"), fdinfo_text(Some(5001), "8192", "system", Some("gralloc"))),
            Maps => (
                format!("{pid}/maps"),
                "7f0000000000-7f0000002000 rw-s 00000000 00:0f 5001                      /dmabuf:gralloc\n\
                 559000000000-559000001000 r-xp 00000000 08:01 1234                       /system/bin/app\n\
                 7f0000003000-7f0000004000 rw-s 00000000 00:0f 7777                      /dmabuf:\n"
                    .to_string(),
            ),
            SelfFdinfo => (format!("proc/self/fdinfo/{self_fd}"), fdinfo_text(None, "4096", "system", None)),
        };
        (path, content)
    }
}

fn fdinfo_text(ino: Option<u64>, size: &str, exporter: &str, name: Option<&str>) -> String {
    let mut s = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\n".to_string();
    if let Some(ino) = ino {
        s += &format!("ino:\t{ino}\n");
    }
    s += &format!("size:\t{size}\ncount:\t2\nexp_name:\t{exporter}\n");
    if let Some(name) = name {
        s += &format!("name:\t{name}\n");
    }
    s
}

#[derive(Clone, Debug)]
enum ByteEdit {
    Truncate(Index),
    Insert(Index, Vec<u8>),
    ReplaceWord(Index, Vec<u8>),
    DeleteLine(Index),
    DuplicateLine(Index),
    SetByte(Index, u8),
    Append(Vec<u8>),
}

fn edit_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => nasty().prop_map(String::into_bytes),
        1 => prop::sample::select(vec![vec![0xffu8], vec![0xc3], vec![0xe2, 0x82], b"\n\n".to_vec(), b"0::".to_vec(), b"Uid:".to_vec(),
            b"exp_name:\t".to_vec(), b"size:\t".to_vec(), b"ino:\t".to_vec(), b"/dmabuf:".to_vec(), b"name:\t".to_vec(), b")".to_vec(), b" - ".to_vec(),
            b"cgroup2".to_vec(), "9".repeat(40).into_bytes()]),
        1 => prop::collection::vec(any::<u8>(), 0..16),
    ]
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        1 => any::<Index>().prop_map(ByteEdit::Truncate),
        3 => (any::<Index>(), edit_bytes()).prop_map(|(i, b)| ByteEdit::Insert(i, b)),
        4 => (any::<Index>(), edit_bytes()).prop_map(|(i, b)| ByteEdit::ReplaceWord(i, b)),
        1 => any::<Index>().prop_map(ByteEdit::DeleteLine),
        1 => any::<Index>().prop_map(ByteEdit::DuplicateLine),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| ByteEdit::SetByte(i, b)),
        1 => edit_bytes().prop_map(ByteEdit::Append),
    ]
}

/// Spans of non-separator bytes (words), for word-level replacement.
fn words(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, b) in bytes.iter().enumerate() {
        let sep = b" \t\n:()-".contains(b);
        match (start, sep) {
            (None, false) => start = Some(i),
            (Some(s), true) => {
                out.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, bytes.len()));
    }
    out
}

fn apply_byte_edit(bytes: &mut Vec<u8>, edit: &ByteEdit) {
    let lines = |b: &[u8]| -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut s = 0;
        for (i, c) in b.iter().enumerate() {
            if *c == b'\n' {
                out.push((s, i + 1));
                s = i + 1;
            }
        }
        if s < b.len() {
            out.push((s, b.len()));
        }
        out
    };
    match edit {
        ByteEdit::Truncate(i) => bytes.truncate(i.index(bytes.len() + 1)),
        ByteEdit::Insert(i, b) => {
            let at = i.index(bytes.len() + 1);
            bytes.splice(at..at, b.iter().copied());
        }
        ByteEdit::ReplaceWord(i, b) => {
            let w = words(bytes);
            if !w.is_empty() {
                let (s, e) = *i.get(&w);
                bytes.splice(s..e, b.iter().copied());
            }
        }
        ByteEdit::DeleteLine(i) => {
            let l = lines(bytes);
            if !l.is_empty() {
                let (s, e) = *i.get(&l);
                bytes.drain(s..e);
            }
        }
        ByteEdit::DuplicateLine(i) => {
            let l = lines(bytes);
            if !l.is_empty() {
                let (s, e) = *i.get(&l);
                let line = bytes[s..e].to_vec();
                bytes.splice(e..e, line);
            }
        }
        ByteEdit::SetByte(i, b) => {
            if !bytes.is_empty() {
                let at = i.index(bytes.len());
                bytes[at] = *b;
            }
        }
        ByteEdit::Append(b) => bytes.extend_from_slice(b),
    }
}

#[derive(Clone, Debug)]
enum FileContent {
    Edited(Vec<ByteEdit>),
    Random(Vec<u8>),
    Text(String),
}

fn file_case() -> impl Strategy<Value = (KernelFile, FileContent)> {
    let content = prop_oneof![
        8 => prop::collection::vec(byte_edit(), 1..5).prop_map(FileContent::Edited),
        1 => prop::collection::vec(any::<u8>(), 0..600).prop_map(FileContent::Random),
        1 => any::<String>().prop_map(FileContent::Text),
    ];
    (prop::sample::select(KERNEL_FILES.to_vec()), content)
}

struct KernelFixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    cgroupfs: CgroupFs,
    procfs: ProcFs,
    /// An open fd whose `self/fdinfo/<fd>` the fixture supplies (for `kernel::inspect`).
    memfd: OwnedFd,
}

fn put(path: &Path, content: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

fn kernel_fixture() -> KernelFixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let memfd = rustix::fs::memfd_create("hostile", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    for f in KERNEL_FILES {
        let (rel, content) = f.template(memfd.as_raw_fd());
        put(&root.join(rel), content.as_bytes());
    }
    // A second process, so a scan merges holders, and valid fds beside the fuzzed one.
    put(&root.join("proc/200/fdinfo/4"), fdinfo_text(Some(7777), "4096", "cma", None).as_bytes());
    put(&root.join("proc/200/fdinfo/5"), b"pos:\t0\nflags:\t00\nmnt_id:\t14\nino:\t424242\n");
    put(&root.join("proc/200/maps"), b"");
    put(&root.join(format!("proc/{FIXTURE_PID}/fdinfo/0")), b"pos:\t0\nflags:\t02\nmnt_id:\t25\nino:\t3\n");
    KernelFixture {
        cgroupfs: CgroupFs::new(root.join("cgroup")),
        procfs: ProcFs::new(root.join("proc")),
        root,
        _dir: dir,
        memfd,
    }
}

/// The error names `file` (the one with random contents): its path, and a line within it.
fn names_file(e: &KernelError, file: &Path, content: &[u8]) -> Result<(), String> {
    let lines = content.split(|&b| b == b'\n').count();
    match e {
        KernelError::Parse { path, line, reason } if path == file => {
            if *line > lines {
                return Err(format!("line {line} of a {lines}-line file: {reason}"));
            }
            if reason.is_empty() {
                return Err("empty reason".into());
            }
            Ok(())
        }
        KernelError::Io { path, .. } if path == file => Ok(()),
        other => Err(format!("error does not name {}: {other}", file.display())),
    }
}

/// Reads the fuzzed file through every adapter call that reads it.
fn read_through_adapters(
    fx: &KernelFixture,
    file: KernelFile,
    path: &Path,
    content: &[u8],
) -> Result<bool, TestCaseError> {
    let check = |r: Result<(), KernelError>| -> Result<bool, TestCaseError> {
        match r {
            Ok(()) => Ok(true),
            Err(e) => names_file(&e, path, content).map(|_| false).map_err(TestCaseError::fail),
        }
    };
    use KernelFile::*;
    let ok = match file {
        MemoryCurrent | MemoryMax | MemoryHigh | MemoryLow | MemoryMin | MemoryPeak | MemoryStat | MemoryEvents => {
            let ok = check(fx.cgroupfs.memory(APP_CG).map(drop))?;
            for kind in [LimitKind::Max, LimitKind::Low, LimitKind::Min] {
                let name = format!("memory.{}", kind.name());
                if path.ends_with(&name) {
                    check(fx.cgroupfs.read_memory_limit(APP_CG, kind).map(drop))?;
                }
            }
            ok
        }
        DmemCapacity => check(fx.cgroupfs.dmem_capacity().map(drop))?,
        DmemCurrent | DmemMax | DmemMin | DmemLow | DmemPeak => {
            let which = match file {
                DmemCurrent => DmemFile::Current,
                DmemMax => DmemFile::Max,
                DmemMin => DmemFile::Min,
                DmemLow => DmemFile::Low,
                _ => DmemFile::Peak,
            };
            check(fx.cgroupfs.dmem(APP_CG, which).map(drop))?
        }
        Controllers => check(fx.cgroupfs.controllers("/").map(drop))?,
        SubtreeControl => check(fx.cgroupfs.subtree_control("/").map(drop))?,
        Procs => check(fx.cgroupfs.procs(APP_CG).map(drop))?,
        Mounts | Mountinfo => check(CgroupFs::discover(fx.procfs.root()).map(drop).or_else(|e| match e {
            KernelError::NoCgroup2Mount { .. } => Ok(()),
            e => Err(e),
        }))?,
        Status => check(fx.procfs.uid_of(FIXTURE_PID).map(drop))?,
        Cgroup => check(fx.procfs.cgroup_of(FIXTURE_PID).map(drop))?,
        Stat => check(fx.procfs.starttime(FIXTURE_PID).map(drop))?,
        Comm => check(fx.procfs.comm(FIXTURE_PID).map(drop))?,
        Cmdline => check(fx.procfs.cmdline(FIXTURE_PID).map(drop))?,
        Fdinfo | Maps => {
            let ok = check(fx.procfs.dmabufs(FIXTURE_PID).map(drop))?;
            let scan = fx.procfs.scan_all().map_err(|e| TestCaseError::fail(format!("scan_all: {e}")))?;
            for (pid, e) in &scan.errors {
                prop_assert_eq!(*pid, FIXTURE_PID);
                names_file(e, path, content).map_err(TestCaseError::fail)?;
            }
            prop_assert_eq!(scan.is_complete(), ok, "scan and per-process read disagree");
            prop_assert!(scan.buffers.contains_key(&7777), "process 200's buffer must survive a bad neighbour");
            ok
        }
        SelfFdinfo => match kernel::inspect(fx.memfd.as_fd(), fx.procfs.root()) {
            Ok(info) => {
                let st = rustix::fs::fstat(&fx.memfd).unwrap();
                prop_assert_eq!(info.inode, st.st_ino, "the inode comes from fstat, never the file");
                true
            }
            Err(KernelError::NotDmaBuf { reason }) => {
                prop_assert!(reason.contains("no exp_name"), "{reason}");
                false
            }
            Err(e) => check(Err(e))?,
        },
    };
    Ok(ok)
}

#[test]
fn kernel_files_with_random_contents_never_panic_and_errors_name_the_file() {
    let started = Instant::now();
    let cases = 2000 * scale();
    let fx = kernel_fixture();
    let tally = Mutex::new((0usize, 0usize, BTreeSet::new()));
    run(&mut runner(3, cases, true), file_case(), |(file, content)| {
        let (rel, template) = file.template(fx.memfd.as_raw_fd());
        let path = fx.root.join(&rel);
        let bytes = match content {
            FileContent::Edited(edits) => {
                let mut b = template.clone().into_bytes();
                edits.iter().for_each(|e| apply_byte_edit(&mut b, e));
                b
            }
            FileContent::Random(b) => b,
            FileContent::Text(t) => t.into_bytes(),
        };
        fs::write(&path, &bytes).unwrap();
        let result = read_through_adapters(&fx, file, &path, &bytes);
        fs::write(&path, template.as_bytes()).unwrap();
        let ok = result?;
        let mut t = tally.lock().unwrap();
        if ok {
            t.0 += 1;
        } else {
            t.1 += 1;
        }
        t.2.insert(format!("{file:?}"));
        Ok(())
    });
    let (ok, refused, kinds) = tally.into_inner().unwrap();
    finished(
        "files",
        format!("{cases}"),
        format!(
            "{cases} file contents over {} kinds of file: {ok} read, {refused} refused naming the file and line",
            kinds.len()
        ),
        started,
    );
}

/// Eviction records what the driver already did, so it skips limits, but a memcg counter that
/// would wrap must still refuse it (it used to panic in debug builds and wrap in release).
#[test]
fn ledger_eviction_that_would_overflow_memcg_is_refused_and_changes_nothing() {
    let mut l = Ledger::new();
    for e in phone_events() {
        l.apply(&e).unwrap();
    }
    l.charge(4, u64::MAX, "vram", 1, "/").unwrap();
    l.charge(5, u64::MAX, "observed", 1, "/").unwrap();
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

/// Owner-class patterns come from vendor files and are matched against every process's cgroup:
/// a pattern with many `**` must not take exponential time.
#[test]
fn policy_glob_with_many_double_stars_matches_in_bounded_time() {
    let pattern = "/**a**a**a**a**a**a**a**a**a**a**a**a**b";
    let path = format!("/{}", "a/".repeat(40));
    let started = Instant::now();
    assert!(!policy::glob_match(pattern, &path));
    assert!(policy::glob_match("/**/x", "/a/b/c/x"));
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
}

/// The table-driven matcher agrees with the plain backtracking definition on small inputs.
#[test]
fn policy_glob_agrees_with_the_backtracking_definition() {
    fn reference(p: &[u8], t: &[u8]) -> bool {
        match p {
            [] => t.is_empty(),
            [b'*', b'*', rest @ ..] => (0..=t.len()).any(|i| reference(rest, &t[i..])),
            [b'*', rest @ ..] => {
                let stop = t.iter().position(|&c| c == b'/').unwrap_or(t.len());
                (0..=stop).any(|i| reference(rest, &t[i..]))
            }
            [c, rest @ ..] => t.first() == Some(c) && reference(rest, &t[1..]),
        }
    }
    let mut r = runner(5, 2000 * scale(), true);
    run(&mut r, ("[/ab*]{0,8}", "[/ab]{0,10}"), |(p, t)| {
        prop_assert_eq!(policy::glob_match(&p, &t), reference(p.as_bytes(), t.as_bytes()), "{:?} vs {:?}", p, t);
        Ok(())
    });
}

// =====================================================================================
// AIDL: random call sequences against the real service over RPC.
// =====================================================================================
//
// Three services, started once and shared by all sequences (state accumulates, as on a device):
// - `host`: the real /proc and the shipped policy. The caller is an untrusted uid and nothing
//   it sends is a dma-buf, so this exercises the refusal paths as an app would hit them.
// - `trusted`: a fixture /proc (`--proc-root`) whose `self/fdinfo` makes every fd the service
//   receives look like a dma-buf of a heap and size the sequence chooses, with a policy that
//   trusts the caller's uid. Charges, transfers, offers, releases, evictions and reconcile
//   really happen, against fixture processes with odd cgroups, recycled pids and corrupt files
//   that change between calls.
// - `untrusted`: the same fixture, without trust.

const SERVICE_NAMES: [&str; 3] = ["host", "trusted", "untrusted"];
const FIXTURE_PIDS: [u32; 12] = [4242, 4243, 4244, 4245, 4246, 4247, 4248, 4249, 4250, 4251, 4252, 4253];
/// How many fd numbers of the service the fixture's `self/fdinfo` covers.
const FD_SPAN: i32 = 160;
const EXPORTERS: [&str; 9] =
    ["system", "display", "camera", "secure_video", "vram0", "observed", "system-uncached", "gpu", "no_such_heap"];
const SIZES: [u64; 8] = [4096, 1 << 20, 64 << 20, 1, 1 << 40, i64::MAX as u64, u64::MAX, 0];

struct Daemon {
    name: &'static str,
    child: Child,
    socket: PathBuf,
    stderr: PathBuf,
    /// The journal directory (`--state-dir`).
    state: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn start(name: &'static str, extra: &[String]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("ct.sock");
        let stderr = dir.path().join("stderr.log");
        let state = dir.path().join("state");
        let child = Command::new(env!("CARGO_BIN_EXE_chargetransferd"))
            .args(["--rpc", socket.to_str().unwrap(), "--state-dir", state.to_str().unwrap(), "--no-autoconfig"])
            .args(["--durability", "none", "--reconcile-secs", "1"])
            .args(extra)
            .env("RUST_LOG", std::env::var("HOSTILE_SERVICE_LOG").unwrap_or_else(|_| "warn".into()))
            .env("RUST_BACKTRACE", "1")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut d = Daemon { name, child, socket, stderr, state, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !d.socket.exists() {
            assert!(d.child.try_wait().unwrap().is_none(), "{name} exited at start:\n{}", d.log());
            assert!(Instant::now() < deadline, "{name} did not create its socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn status_kib(&self, key: &str) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status.lines().find_map(|l| l.strip_prefix(key)?.trim().strip_suffix(" kB")?.parse().ok()).unwrap_or(0)
    }

    fn open_fds(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |d| d.count())
    }

    fn connect(&self) -> Client {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Client::connect_rpc(&self.socket) {
                Ok(c) => return c,
                Err(e) if Instant::now() > deadline => panic!("{}: connect: {e}", self.name),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// One fixture process: what its /proc files say.
#[derive(Clone, Debug)]
struct FakeProc {
    cgroup: String,
    start: u64,
}

const FIXTURE_CGROUPS: &[&str] = &[
    "/uid_10001/pid_4242",
    "/uid_10002/pid_4243",
    "/uid_10001/pid_4244",
    "/",
    "/system/hostile",
    "/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/leaf",
    "/uid_10003/background/pid_9",
    "/uid_10001/pid_4242 (deleted)",
    "/a b",
    "/x/../y",
    "relative/path",
    "/🦀",
    "/uid_10004/pid_with_a_very_long_name_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
];

fn fixture_cgroup(i: &Index) -> &'static str {
    FIXTURE_CGROUPS[i.index(FIXTURE_CGROUPS.len())]
}

/// The fixture /proc and cgroup trees the `trusted` and `untrusted` services read.
struct ServiceFixture {
    _dir: tempfile::TempDir,
    proc_root: PathBuf,
    cgroup_root: PathBuf,
    trusted_policy: PathBuf,
    untrusted_policy: PathBuf,
    me: u32,
    procs: BTreeMap<u32, FakeProc>,
    variants: BTreeSet<usize>,
    variant: usize,
}

const FDINFO_VARIANTS: usize = EXPORTERS.len() * SIZES.len() + 3;

impl ServiceFixture {
    fn new() -> ServiceFixture {
        let dir = tempfile::tempdir().unwrap();
        let proc_root = dir.path().join("proc");
        let cgroup_root = dir.path().join("cgroup");
        fs::create_dir_all(proc_root.join("self")).unwrap();
        fs::create_dir_all(&cgroup_root).unwrap();
        let heaps = r#""heaps": {"vram0": {"class": "vram", "region": "drm/0000:03:00.0/vram0", "region_class": "vram"},
                                 "observed": {"class": "system", "mode": "observe"}}"#;
        let trusted_policy = dir.path().join("trusted.json");
        fs::write(&trusted_policy, format!(r#"{{{heaps}, "trusted": {{"uids": [0, 1000]}}}}"#)).unwrap();
        let untrusted_policy = dir.path().join("untrusted.json");
        fs::write(&untrusted_policy, format!(r#"{{{heaps}}}"#)).unwrap();
        let mut fx = ServiceFixture {
            _dir: dir,
            proc_root,
            cgroup_root,
            trusted_policy,
            untrusted_policy,
            me: std::process::id(),
            procs: BTreeMap::new(),
            variants: BTreeSet::new(),
            variant: usize::MAX,
        };
        fx.spawn(fx.me, 0, "/system/hostile", 1000);
        for (i, pid) in FIXTURE_PIDS.iter().enumerate() {
            let uid = [10001, 10002, 10001, 1000, 0, 10003][i % 6];
            fx.spawn(*pid, uid, FIXTURE_CGROUPS[i % FIXTURE_CGROUPS.len()], 5000 + i as u64);
        }
        for cg in FIXTURE_CGROUPS.iter().filter(|c| c.starts_with('/')) {
            fx.mkcgroup(cg);
        }
        fx.select_variant(0);
        fx
    }

    fn policy_args(&self, trusted: bool) -> Vec<String> {
        let base = concat!(env!("CARGO_MANIFEST_DIR"), "/config/policy.json").to_string();
        let over = if trusted { &self.trusted_policy } else { &self.untrusted_policy };
        vec![
            "--proc-root".into(),
            self.proc_root.display().to_string(),
            "--cgroup-root".into(),
            self.cgroup_root.display().to_string(),
            "--policy".into(),
            base,
            "--policy".into(),
            over.display().to_string(),
        ]
    }

    fn pid_dir(&self, pid: u32) -> PathBuf {
        self.proc_root.join(pid.to_string())
    }

    /// A process appears (or a pid is recycled: same pid, new start time).
    fn spawn(&mut self, pid: u32, uid: u32, cgroup: &str, start: u64) {
        let dir = self.pid_dir(pid);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("fdinfo")).unwrap();
        fs::create_dir_all(dir.join("fd")).unwrap();
        fs::write(
            dir.join("status"),
            format!("Name:\tfake\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t{uid}\t{uid}\t{uid}\t{uid}\n"),
        )
        .unwrap();
        fs::write(dir.join("cgroup"), format!("0::{cgroup}\n")).unwrap();
        fs::write(
            dir.join("stat"),
            format!("{pid} (fake) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 1000 100 0\n"),
        )
        .unwrap();
        fs::write(dir.join("comm"), "fake\n").unwrap();
        fs::write(dir.join("maps"), "").unwrap();
        self.procs.insert(pid, FakeProc { cgroup: cgroup.to_string(), start });
    }

    fn mkcgroup(&self, cg: &str) {
        let dir = self.cgroup_root.join(cg.trim_start_matches('/'));
        if fs::create_dir_all(&dir).is_ok() {
            let _ = fs::write(dir.join("memory.current"), "0\n");
            let _ = fs::write(dir.join("dmem.current"), "drm/0000:03:00.0/vram0 0\n");
        }
    }

    /// Points `self/fdinfo` at a directory where every fd number reads as variant `v`: a dma-buf
    /// of one exporter and size, or (the last three) not a dma-buf, a dma-buf without a size, or
    /// one whose fdinfo claims a bogus inode.
    fn select_variant(&mut self, v: usize) {
        let v = v % FDINFO_VARIANTS;
        if v == self.variant {
            return;
        }
        let dir = self.proc_root.join(format!("fdinfo-variants/{v}"));
        if self.variants.insert(v) {
            let text = match v.checked_sub(EXPORTERS.len() * SIZES.len()) {
                None => fdinfo_text(None, &SIZES[v % SIZES.len()].to_string(), EXPORTERS[v / SIZES.len()], None),
                Some(0) => "pos:\t0\nflags:\t02\nmnt_id:\t25\nino:\t3\n".to_string(),
                Some(1) => "pos:\t0\nexp_name:\tsystem\n".to_string(),
                Some(_) => fdinfo_text(Some(1), "8192", "system", Some("name:\tsize:\t1")),
            };
            fs::create_dir_all(&dir).unwrap();
            for fd in 0..FD_SPAN {
                fs::write(dir.join(fd.to_string()), &text).unwrap();
            }
        }
        let link = self.proc_root.join("self/fdinfo");
        let tmp = self.proc_root.join("self/fdinfo.tmp");
        let _ = fs::remove_file(&tmp);
        symlink(&dir, &tmp).unwrap();
        fs::rename(&tmp, &link).unwrap();
        self.variant = v;
    }

    /// The size the current variant reports, if it is a well-formed dma-buf.
    fn variant_size(&self) -> Option<u64> {
        (self.variant < EXPORTERS.len() * SIZES.len()).then(|| SIZES[self.variant % SIZES.len()])
    }

    fn apply(&mut self, op: &FixtureOp, pool: &FdPool) {
        let pids: Vec<u32> = std::iter::once(self.me).chain(FIXTURE_PIDS).collect();
        match op {
            FixtureOp::Exit(i) => {
                let pid = *i.get(&pids);
                let _ = fs::remove_dir_all(self.pid_dir(pid));
                self.procs.remove(&pid);
            }
            FixtureOp::Spawn(i, cg, uid) => {
                let pid = *i.get(&pids);
                let start = self.procs.get(&pid).map_or(7000, |p| p.start + 1);
                let uid = if pid == self.me { 0 } else { *uid };
                self.spawn(pid, uid, fixture_cgroup(cg), start);
            }
            FixtureOp::Migrate(i, cg) => {
                let pid = *i.get(&pids);
                let file = self.pid_dir(pid).join("cgroup");
                if let Some(p) = self.procs.get_mut(&pid) {
                    p.cgroup = fixture_cgroup(cg).to_string();
                    let _ = fs::write(file, format!("0::{}\n", p.cgroup));
                }
            }
            FixtureOp::Corrupt(i, file, content) => {
                let pid = *i.get(&pids);
                let name = *file.get(&["status", "cgroup", "stat", "maps", "fdinfo/3", "fdinfo/abc"]);
                let _ = fs::write(self.pid_dir(pid).join(name), content);
            }
            FixtureOp::Hold(i, fd, size) => {
                let pid = *i.get(&pids);
                let (_, f) = fd.get(&pool.fds);
                let ino = rustix::fs::fstat(f).unwrap().st_ino;
                let n = 10 + fd.index(64);
                let _ = fs::write(
                    self.pid_dir(pid).join(format!("fdinfo/{n}")),
                    fdinfo_text(Some(ino), &size.to_string(), "system", None),
                );
            }
            FixtureOp::Drop(i) => {
                let pid = *i.get(&pids);
                let dir = self.pid_dir(pid).join("fdinfo");
                let _ = fs::remove_dir_all(&dir);
                let _ = fs::create_dir_all(&dir);
            }
            FixtureOp::RemoveCgroup(cg) => {
                let _ = fs::remove_dir_all(self.cgroup_root.join(fixture_cgroup(cg).trim_start_matches('/')));
            }
            FixtureOp::CreateCgroup(cg) => self.mkcgroup(fixture_cgroup(cg)),
        }
    }

    /// Our own process as the service must see it, so the next sequence starts callable.
    /// Our own process as the service must see it so the next sequence can call: alive, uid 0,
    /// in its cgroup, holding every fd of the pool (as it does), so a reconcile keeps what it
    /// charged unless a `Drop` said otherwise.
    fn restore_me(&mut self, pool: &FdPool) {
        let me = self.me;
        let start = self.procs.get(&me).map_or(1000, |p| p.start);
        self.spawn(me, 0, "/system/hostile", start);
        for (i, (_, fd)) in pool.fds.iter().enumerate() {
            let ino = rustix::fs::fstat(fd).unwrap().st_ino;
            let _ = fs::write(
                self.pid_dir(me).join(format!("fdinfo/{}", 100 + i)),
                fdinfo_text(Some(ino), "4096", "system", None),
            );
        }
    }
}

/// Changes to the fixture /proc and cgroup tree between calls.
#[derive(Clone, Debug)]
enum FixtureOp {
    Exit(Index),
    Spawn(Index, Index, u32),
    Migrate(Index, Index),
    Corrupt(Index, Index, Vec<u8>),
    /// The process holds the pool fd's buffer (an fdinfo entry with its inode).
    Hold(Index, Index, u64),
    /// The process closes every buffer.
    Drop(Index),
    RemoveCgroup(Index),
    CreateCgroup(Index),
}

/// Fds of every kind the host can make, sent again and again (so inodes repeat).
struct FdPool {
    fds: Vec<(&'static str, OwnedFd)>,
}

impl FdPool {
    fn new() -> FdPool {
        use rustix::fs::{Mode, OFlags};
        let open = |p: &str, flags: OFlags| rustix::fs::open(p, flags | OFlags::CLOEXEC, Mode::empty()).unwrap();
        let (pr, pw) = rustix::pipe::pipe().unwrap();
        let (s1, s2) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let udp = rustix::net::socket(rustix::net::AddressFamily::INET, rustix::net::SocketType::DGRAM, None).unwrap();
        let memfd = |name| rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let sealed = memfd("sealed");
        rustix::fs::ftruncate(&sealed, 4096).unwrap();
        let file: OwnedFd = tempfile::tempfile().unwrap().into();
        let me = rustix::process::getpid();
        let pidfd = rustix::process::pidfd_open(me, rustix::process::PidfdFlags::empty()).unwrap();
        let eventfd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
        let epoll = rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC).unwrap();
        FdPool {
            fds: vec![
                ("pipe-read", pr),
                ("pipe-write", pw),
                ("memfd", memfd("a")),
                ("memfd", memfd("b")),
                ("memfd-4k", sealed),
                ("socketpair", s1),
                ("socketpair", s2),
                ("udp-socket", udp),
                ("regular-file", file),
                ("/dev/null", open("/dev/null", OFlags::RDWR)),
                ("/dev/zero", open("/dev/zero", OFlags::RDONLY)),
                ("directory", open("/tmp", OFlags::RDONLY | OFlags::DIRECTORY)),
                ("o-path", open("/etc", OFlags::PATH)),
                ("proc-file", open("/proc/self/status", OFlags::RDONLY)),
                ("pidfd", pidfd),
                ("eventfd", eventfd),
                ("epoll", epoll),
            ],
        }
    }

    fn inode(&self, i: &Index) -> u64 {
        rustix::fs::fstat(&i.get(&self.fds).1).unwrap().st_ino
    }
}

#[derive(Clone, Debug)]
enum PidArg {
    Me,
    Fixture(Index),
    Service,
    Raw(i32),
}

#[derive(Clone, Debug)]
enum InodeArg {
    Pool(Index),
    Seen(Index),
    Raw(i64),
}

#[derive(Clone, Debug)]
enum RawItem {
    I32(i32),
    I64(i64),
    Bool(bool),
    Str(String),
    Bytes(Vec<u8>),
    Fd(Index),
    NullBinder,
    Binder,
}

#[derive(Clone, Debug)]
enum Call {
    Charge {
        fd: Index,
    },
    ChargeOnBehalf {
        fd: Index,
        pid: PidArg,
    },
    Release {
        inode: InodeArg,
    },
    Transfer {
        fd: Index,
        pid: PidArg,
    },
    Offer {
        fd: Index,
        pid: PidArg,
        ttl: i32,
    },
    Accept {
        ticket: Option<Index>,
        raw: i64,
        fd: Index,
    },
    RegisterClient,
    ProcessUsage {
        pid: PidArg,
    },
    UidUsage {
        uid: i32,
    },
    CgroupUsage {
        path: String,
    },
    ListCharges {
        pid: PidArg,
    },
    Regions,
    Evict {
        inode: InodeArg,
    },
    Restore {
        inode: InodeArg,
    },
    Pin {
        inode: InodeArg,
    },
    Unpin {
        inode: InodeArg,
    },
    EvictionAdvice {
        region: Option<Index>,
        raw: String,
        bytes: i64,
    },
    Reconcile,
    Autoconfigure {
        dry_run: bool,
        json: bool,
    },
    Dump,
    Ping,
    /// A closed fd number through the client API.
    ClosedFd,
    /// A transaction with random contents (typed values, fds, binders) for any code.
    Raw {
        code: u32,
        header: bool,
        oneway: bool,
        items: Vec<RawItem>,
    },
    /// Ask for the usage of every process on the host, as an app enumerating /proc would.
    SweepPids,
    /// Drop the connection (and with it every registered token) and connect again.
    Reconnect,
    /// What the next fds the service receives look like (fixture services).
    Fdinfo(Index),
    Fixture(FixtureOp),
}

fn pid_arg() -> impl Strategy<Value = PidArg> {
    prop_oneof![
        3 => Just(PidArg::Me),
        4 => any::<Index>().prop_map(PidArg::Fixture),
        1 => Just(PidArg::Service),
        2 => prop_oneof![
            prop::sample::select(vec![0, -1, 1, 2, i32::MIN, i32::MAX, 4_194_304, 99_999]),
            any::<i32>()
        ]
        .prop_map(PidArg::Raw),
    ]
}

fn inode_arg() -> impl Strategy<Value = InodeArg> {
    prop_oneof![
        3 => any::<Index>().prop_map(InodeArg::Pool),
        3 => any::<Index>().prop_map(InodeArg::Seen),
        2 => prop_oneof![prop::sample::select(vec![0i64, -1, 1, i64::MIN, i64::MAX]), any::<i64>()].prop_map(InodeArg::Raw),
    ]
}

fn raw_item() -> impl Strategy<Value = RawItem> {
    prop_oneof![
        4 => any::<i32>().prop_map(RawItem::I32),
        2 => prop::sample::select(vec![0i32, -1, 1, 2, 3, i32::MAX, i32::MIN, 0x7fff_ffff, 0x85, 0x73682a85]).prop_map(RawItem::I32),
        2 => any::<i64>().prop_map(RawItem::I64),
        1 => any::<bool>().prop_map(RawItem::Bool),
        2 => hostile_string().prop_map(RawItem::Str),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(RawItem::Bytes),
        3 => any::<Index>().prop_map(RawItem::Fd),
        1 => Just(RawItem::NullBinder),
        1 => Just(RawItem::Binder),
    ]
}

fn fixture_op() -> impl Strategy<Value = FixtureOp> {
    let content = prop_oneof![
        nasty().prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..128),
        Just(b"0::/uid_10001/pid_1\n0::/other\n".to_vec()),
        Just(b"Uid:\t-1\n".to_vec()),
        Just(b"1 (x) S".to_vec()),
    ];
    prop_oneof![
        2 => any::<Index>().prop_map(FixtureOp::Exit),
        3 => (any::<Index>(), any::<Index>(), prop::sample::select(vec![0u32, 1000, 10001, 10002, u32::MAX]))
            .prop_map(|(p, c, u)| FixtureOp::Spawn(p, c, u)),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(p, c)| FixtureOp::Migrate(p, c)),
        2 => (any::<Index>(), any::<Index>(), content).prop_map(|(p, f, c)| FixtureOp::Corrupt(p, f, c)),
        3 => (any::<Index>(), any::<Index>(), prop::sample::select(SIZES.to_vec())).prop_map(|(p, f, s)| FixtureOp::Hold(p, f, s)),
        1 => any::<Index>().prop_map(FixtureOp::Drop),
        1 => any::<Index>().prop_map(FixtureOp::RemoveCgroup),
        1 => any::<Index>().prop_map(FixtureOp::CreateCgroup),
    ]
}

fn call() -> impl Strategy<Value = Call> {
    let fd = any::<Index>;
    let ttl = prop_oneof![prop::sample::select(vec![0, -1, 1, 100, 60_000, i32::MAX, i32::MIN]), any::<i32>()];
    let code = prop_oneof![
        6 => 1u32..=22,
        1 => prop::sample::select(vec![
            0u32,
            23,
            0x00ff_ffff,
            0x0100_0000,
            rsbinder::INTERFACE_TRANSACTION,
            rsbinder::PING_TRANSACTION,
            rsbinder::DEBUG_PID_TRANSACTION,
            rsbinder::EXTENSION_TRANSACTION,
            u32::MAX,
        ]),
        1 => any::<u32>(),
    ];
    prop_oneof![
        8 => fd().prop_map(|fd| Call::Charge { fd }),
        4 => (fd(), pid_arg()).prop_map(|(fd, pid)| Call::ChargeOnBehalf { fd, pid }),
        5 => inode_arg().prop_map(|inode| Call::Release { inode }),
        4 => (fd(), pid_arg()).prop_map(|(fd, pid)| Call::Transfer { fd, pid }),
        3 => (fd(), pid_arg(), ttl).prop_map(|(fd, pid, ttl)| Call::Offer { fd, pid, ttl }),
        3 => (prop::option::of(any::<Index>()), any::<i64>(), fd()).prop_map(|(ticket, raw, fd)| Call::Accept { ticket, raw, fd }),
        1 => Just(Call::RegisterClient),
        2 => pid_arg().prop_map(|pid| Call::ProcessUsage { pid }),
        1 => prop_oneof![prop::sample::select(vec![0, 1000, 10001, -1, i32::MIN, i32::MAX]), any::<i32>()].prop_map(|uid| Call::UidUsage { uid }),
        2 => prop_oneof![
            prop::sample::select(FIXTURE_CGROUPS.to_vec()).prop_map(String::from),
            hostile_string(),
        ]
        .prop_map(|path| Call::CgroupUsage { path }),
        1 => pid_arg().prop_map(|pid| Call::ListCharges { pid }),
        1 => Just(Call::Regions),
        2 => inode_arg().prop_map(|inode| Call::Evict { inode }),
        2 => inode_arg().prop_map(|inode| Call::Restore { inode }),
        2 => inode_arg().prop_map(|inode| Call::Pin { inode }),
        1 => inode_arg().prop_map(|inode| Call::Unpin { inode }),
        1 => (prop::option::of(any::<Index>()), hostile_string(), any::<i64>())
            .prop_map(|(region, raw, bytes)| Call::EvictionAdvice { region, raw, bytes }),
        1 => Just(Call::Reconcile),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(dry_run, json)| Call::Autoconfigure { dry_run, json }),
        1 => Just(Call::Dump),
        1 => Just(Call::Ping),
        1 => Just(Call::ClosedFd),
        4 => (code, any::<bool>(), prop::bool::weighted(0.15), prop::collection::vec(raw_item(), 0..6))
            .prop_map(|(code, header, oneway, items)| Call::Raw { code, header: header || code < 23, oneway, items }),
        1 => Just(Call::Reconnect),
        1 => Just(Call::SweepPids),
        4 => any::<Index>().prop_map(Call::Fdinfo),
        5 => fixture_op().prop_map(Call::Fixture),
    ]
}

/// A token for `registerClient`: it has no methods, only a lifetime.
struct Token;
impl rsbinder::Interface for Token {}
impl IChargeClient for Token {}

/// What a sequence learned that later calls can reuse.
#[derive(Default)]
struct Seen {
    inodes: Vec<i64>,
    tickets: Vec<i64>,
    regions: Vec<String>,
    tokens: Vec<rsbinder::Strong<dyn IChargeClient>>,
}

#[derive(Default)]
struct AidlTally {
    sequences: usize,
    calls: usize,
    ok: usize,
    refused: BTreeMap<&'static str, usize>,
    raw: usize,
    raw_rejected: usize,
    fixture_ops: usize,
    closed_fd_refused_locally: usize,
    sweep_queries: usize,
    per_service: BTreeMap<&'static str, usize>,
}

/// A refusal must be a ServiceSpecific exception with an `ErrorCode` and a message. The outer
/// error is a broken rule; the inner one the service's typed refusal.
fn typed<T>(r: Result<T, rsbinder::Status>, tally: &mut AidlTally) -> Result<Result<T, ErrorCode>, String> {
    match r {
        Ok(v) => {
            tally.ok += 1;
            Ok(Ok(v))
        }
        Err(s) => {
            let code = ErrorCode(s.service_specific_error());
            let known = ErrorCode::enum_values().contains(&code);
            if s.exception_code() != rsbinder::ExceptionCode::ServiceSpecific || !known {
                return Err(format!("untyped failure: {s:?}"));
            }
            if s.message().is_none_or(str::is_empty) {
                return Err(format!("{} without a message", chargetransfer::error::code_name(code)));
            }
            *tally.refused.entry(chargetransfer::error::code_name(code)).or_default() += 1;
            Ok(Err(code))
        }
    }
}

/// The call must have been refused, with one of `codes`.
fn only<T: std::fmt::Debug>(r: Result<T, ErrorCode>, codes: &[ErrorCode], what: &str) -> Result<(), String> {
    match r {
        Err(code) if codes.contains(&code) => Ok(()),
        Err(code) => Err(format!("{what}: refused with {}", chargetransfer::error::code_name(code))),
        Ok(v) => Err(format!("{what}: accepted ({v:?})")),
    }
}

fn parcel_fd(fd: BorrowedFd<'_>) -> rsbinder::ParcelFileDescriptor {
    rsbinder::ParcelFileDescriptor::new(fd.try_clone_to_owned().unwrap())
}

struct Lane {
    daemon: Daemon,
    client: Client,
    rss_start_kib: u64,
    fds_start: usize,
}

struct AidlWorld {
    lanes: Vec<Lane>,
    fixture: ServiceFixture,
    pool: FdPool,
    seen: Seen,
}

impl AidlWorld {
    fn new() -> AidlWorld {
        let fixture = ServiceFixture::new();
        let daemons = [
            Daemon::start("host", &[]),
            Daemon::start("trusted", &fixture.policy_args(true)),
            Daemon::start("untrusted", &fixture.policy_args(false)),
        ];
        let lanes = daemons
            .into_iter()
            .map(|daemon| {
                let client = daemon.connect();
                client.service().ping().unwrap();
                // Received fds take the lowest free numbers, so they stay below this.
                assert!(
                    (daemon.open_fds() as i32) + 64 < FD_SPAN,
                    "{} already has {} fds",
                    daemon.name,
                    daemon.open_fds()
                );
                Lane { rss_start_kib: daemon.status_kib("VmRSS:"), fds_start: daemon.open_fds(), client, daemon }
            })
            .collect();
        AidlWorld { lanes, fixture, pool: FdPool::new(), seen: Seen::default() }
    }

    fn pid(&self, lane: usize, p: &PidArg) -> i32 {
        match p {
            PidArg::Me => self.fixture.me as i32,
            PidArg::Fixture(i) => *i.get(&FIXTURE_PIDS) as i32,
            PidArg::Service => self.lanes[lane].daemon.pid() as i32,
            PidArg::Raw(v) => *v,
        }
    }

    fn inode(&self, i: &InodeArg) -> i64 {
        match i {
            InodeArg::Pool(i) => self.pool.inode(i) as i64,
            InodeArg::Seen(i) if !self.seen.inodes.is_empty() => *i.get(&self.seen.inodes),
            InodeArg::Seen(i) => i.index(1 << 20) as i64,
            InodeArg::Raw(v) => *v,
        }
    }

    fn learn(&mut self, info: &chargetransfer::aidl::vendor::chargetransfer::ChargeInfo::ChargeInfo) {
        if !self.seen.inodes.contains(&info.inode) {
            self.seen.inodes.push(info.inode);
        }
    }

    /// One call: Ok(()) when the service answered as it must.
    fn call(&mut self, lane: usize, call: &Call, tally: &mut AidlTally) -> Result<(), String> {
        let on_fixture = lane != 0;
        let s = self.lanes[lane].client.service().clone();
        let fd_of = |pool: &FdPool, i: &Index| parcel_fd(i.get(&pool.fds).1.as_fd());
        tally.calls += 1;
        match call {
            Call::Charge { fd } => {
                let expected_inode = self.pool.inode(fd) as i64;
                match typed(s.charge(&fd_of(&self.pool, fd)), tally)? {
                    Ok(info) => {
                        if !on_fixture {
                            return Err(format!("{} was charged on the host: {info:?}", fd.get(&self.pool.fds).0));
                        }
                        if info.inode != expected_inode {
                            return Err(format!("charged inode {} but the fd's inode is {expected_inode}", info.inode));
                        }
                        // A buffer charged before keeps its size (charging it again is a no-op).
                        let fresh = !self.seen.inodes.contains(&info.inode);
                        if let (Some(size), true) = (self.fixture.variant_size(), fresh) {
                            // The AIDL writes u64::MAX as -1 (its "max"), other values past i64 as i64::MAX.
                            let wire = if size == u64::MAX { -1 } else { i64::try_from(size).unwrap_or(i64::MAX) };
                            if info.size != wire {
                                return Err(format!("charged size {} but fdinfo says {size}", info.size));
                            }
                        }
                        self.learn(&info);
                    }
                    Err(code) if !on_fixture && code != ErrorCode::NOT_DMA_BUF => {
                        return Err(format!(
                            "the host refused a {} with {}",
                            fd.get(&self.pool.fds).0,
                            chargetransfer::error::code_name(code)
                        ))
                    }
                    Err(_) => {}
                }
            }
            Call::ChargeOnBehalf { fd, pid } => {
                if let Ok(info) = typed(s.chargeOnBehalf(&fd_of(&self.pool, fd), self.pid(lane, pid)), tally)? {
                    self.learn(&info);
                }
            }
            Call::Release { inode } => {
                let r = typed(s.release(self.inode(inode)), tally)?;
                if !on_fixture {
                    only(
                        r,
                        &[ErrorCode::NOT_CHARGED, ErrorCode::INVALID_ARGUMENT],
                        "release on the host, where nothing is charged",
                    )?;
                }
            }
            Call::Transfer { fd, pid } => {
                if let Ok(info) = typed(s.transfer(&fd_of(&self.pool, fd), self.pid(lane, pid)), tally)? {
                    if lane == 2 {
                        return Err(format!("an untrusted caller pushed a charge: {info:?}"));
                    }
                    self.learn(&info);
                }
            }
            Call::Offer { fd, pid, ttl } => {
                if let Ok(t) = typed(s.offer(&fd_of(&self.pool, fd), self.pid(lane, pid), *ttl), tally)? {
                    if t <= 0 {
                        return Err(format!("ticket {t}"));
                    }
                    self.seen.tickets.push(t);
                }
            }
            Call::Accept { ticket, raw, fd } => {
                let t = match ticket {
                    Some(i) if !self.seen.tickets.is_empty() => *i.get(&self.seen.tickets),
                    _ => *raw,
                };
                if let Ok(info) = typed(s.accept(t, &fd_of(&self.pool, fd)), tally)? {
                    return Err(format!("accepted ticket {t} offered to someone else: {info:?}"));
                }
            }
            Call::RegisterClient => {
                let token = BnChargeClient::new_binder(Token);
                if typed(s.registerClient(&token.as_binder()), tally)?.is_ok() {
                    self.seen.tokens.push(token);
                }
            }
            Call::ProcessUsage { pid } => {
                let pid = self.pid(lane, pid);
                let r = typed(s.getProcessUsage(pid), tally)?;
                if pid <= 0 {
                    only(r, &[ErrorCode::INVALID_ARGUMENT], "usage of a pid <= 0")?;
                }
            }
            Call::UidUsage { uid } => {
                let r = typed(s.getUidUsage(*uid), tally)?;
                if *uid < 0 {
                    only(r, &[ErrorCode::INVALID_ARGUMENT], "usage of a negative uid")?;
                } else if let Err(code) = r {
                    return Err(format!("usage of uid {uid} refused: {}", chargetransfer::error::code_name(code)));
                }
            }
            Call::CgroupUsage { path } => {
                let r = typed(s.getCgroupUsage(path), tally)?;
                if !path.starts_with('/') {
                    only(r, &[ErrorCode::INVALID_ARGUMENT], "usage of a relative cgroup path")?;
                }
            }
            Call::ListCharges { pid } => {
                if let Ok(list) = typed(s.listCharges(self.pid(lane, pid)), tally)? {
                    list.iter().for_each(|c| self.learn(c));
                }
            }
            Call::Regions => {
                if let Ok(regions) = typed(s.getRegions(), tally)? {
                    for r in regions {
                        if !self.seen.regions.contains(&r.name) {
                            self.seen.regions.push(r.name);
                        }
                    }
                }
            }
            Call::Evict { inode } | Call::Restore { inode } | Call::Pin { inode } | Call::Unpin { inode } => {
                let inode = self.inode(inode);
                let r = typed(
                    match call {
                        Call::Evict { .. } => s.evict(inode),
                        Call::Restore { .. } => s.restore(inode),
                        Call::Pin { .. } => s.pin(inode),
                        _ => s.unpin(inode),
                    },
                    tally,
                )?;
                if lane != 1 {
                    only(
                        r,
                        &[ErrorCode::NOT_TRUSTED, ErrorCode::INVALID_ARGUMENT],
                        "evict/restore/pin/unpin by an untrusted caller",
                    )?;
                }
            }
            Call::EvictionAdvice { region, raw, bytes } => {
                let region = match region {
                    Some(i) if !self.seen.regions.is_empty() => i.get(&self.seen.regions).clone(),
                    _ => raw.clone(),
                };
                let r = typed(s.evictionAdvice(&region, *bytes), tally)?;
                if *bytes < 0 {
                    only(r, &[ErrorCode::INVALID_ARGUMENT], "eviction advice for negative bytes")?;
                }
            }
            Call::Reconcile => {
                if typed(s.reconcile(), tally)?.is_ok() && lane != 1 {
                    return Err(format!("{} let an untrusted caller reconcile", SERVICE_NAMES[lane]));
                }
            }
            Call::Autoconfigure { dry_run, json } => {
                let r = typed(s.autoconfigure(*dry_run, *json), tally)?;
                if !dry_run && lane != 1 {
                    only(r, &[ErrorCode::NOT_TRUSTED], "autoconfig applied by an untrusted caller")?;
                }
            }
            Call::Dump => {
                typed(s.dumpState(), tally)?
                    .map_err(|c| format!("dumpState refused: {}", chargetransfer::error::code_name(c)))?;
            }
            Call::Ping => {
                typed(s.ping(), tally)?
                    .map_err(|c| format!("ping refused: {}", chargetransfer::error::code_name(c)))?;
            }
            Call::ClosedFd => {
                // The parcel only carries open fds (`OwnedFd`); the client dups the borrowed fd
                // before sending, so a closed number fails here, before anything is sent.
                let n = {
                    let fd = rustix::io::fcntl_dupfd_cloexec(&self.pool.fds[0].1, 900).unwrap();
                    fd.as_raw_fd()
                };
                // SAFETY: `n` was just closed and nothing opens fds that high in this test; the
                // client only asks the kernel to duplicate it (EBADF), it never closes it.
                let closed = unsafe { BorrowedFd::borrow_raw(n) };
                match self.lanes[lane].client.charge(closed) {
                    Err(ClientError::Io(e)) if e.raw_os_error() == Some(rustix::io::Errno::BADF.raw_os_error()) => {
                        tally.closed_fd_refused_locally += 1
                    }
                    other => return Err(format!("a closed fd number through the client API: {other:?}")),
                }
            }
            Call::Raw { code, header, oneway, items } => {
                tally.raw += 1;
                let binder = s.as_binder();
                let remote = binder.as_remote().ok_or("the service binder is not a proxy")?;
                let mut data = remote.prepare_transact(*header).map_err(|e| format!("prepare: {e:?}"))?;
                for item in items {
                    let written = match item {
                        RawItem::I32(v) => data.write(v),
                        RawItem::I64(v) => data.write(v),
                        RawItem::Bool(v) => data.write(v),
                        RawItem::Str(v) => data.write(v),
                        RawItem::Bytes(v) => data.write(v),
                        RawItem::Fd(i) => data.write(&fd_of(&self.pool, i)),
                        RawItem::NullBinder => data.write(&Option::<rsbinder::SIBinder>::None),
                        RawItem::Binder => data.write(&BnChargeClient::new_binder(Token).as_binder()),
                    };
                    written.map_err(|e| format!("writing {item:?}: {e:?}"))?;
                }
                let flags = if *oneway { rsbinder::FLAG_ONEWAY } else { 0 };
                match remote.submit_transact(*code, &data, flags) {
                    Ok(_) => {}
                    Err(rsbinder::StatusCode::DeadObject) => {
                        return Err(format!("raw transaction {code:#x} killed the connection"))
                    }
                    Err(_) => tally.raw_rejected += 1,
                }
                // Whatever the parcel held, the service must still answer a well-formed call.
                s.ping().map_err(|e| format!("after raw transaction {code:#x}: ping failed: {e:?}"))?;
            }
            Call::SweepPids => {
                let pids: Vec<i32> =
                    fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
                tally.calls -= 1;
                for pid in pids {
                    // Any live process may be asked about; one that exited meanwhile is refused.
                    if let Err(code) = typed(s.getProcessUsage(pid), tally)? {
                        only(Err::<(), _>(code), &[ErrorCode::NO_SUCH_PROCESS], "usage of a host process")?;
                    }
                    tally.sweep_queries += 1;
                }
            }
            Call::Reconnect => {
                self.seen.tokens.clear();
                let client = self.lanes[lane].daemon.connect();
                self.lanes[lane].client = client;
            }
            Call::Fdinfo(v) => {
                tally.calls -= 1;
                self.fixture.select_variant(v.index(FDINFO_VARIANTS));
            }
            Call::Fixture(op) => {
                tally.calls -= 1;
                tally.fixture_ops += 1;
                self.fixture.apply(op, &self.pool);
            }
        }
        Ok(())
    }

    /// What the service reports must add up: the root's usage per pool is the sum of the
    /// buffers charged in that pool, and its pinned bytes those of the pinned ones.
    fn check_totals(&self, lane: usize, tally: &mut AidlTally) -> Result<(), String> {
        let s = self.lanes[lane].client.service();
        let log = || {
            self.lanes[lane].daemon.log().lines().filter(|l| l.contains("panic")).take(3).collect::<Vec<_>>().join("\n")
        };
        // The periodic reconcile may release or move charges between two queries: compare only
        // when the list is the same on both sides of the usage query.
        let (charges, root) = loop {
            let before = s.listCharges(0).map_err(|e| format!("listCharges: {e:?}\n{}", log()))?;
            let root = s.getCgroupUsage("/").map_err(|e| format!("getCgroupUsage(/): {e:?}\n{}", log()))?;
            let after = s.listCharges(0).map_err(|e| format!("listCharges: {e:?}\n{}", log()))?;
            if format!("{before:?}") == format!("{after:?}") {
                break (after, root);
            }
        };
        // Values past i64 reach the AIDL as i64::MAX, u64::MAX as -1: sums over them mean nothing.
        let clamped = |v: i64| v == i64::MAX || v == -1;
        if charges.iter().any(|c| clamped(c.size)) || root.pools.iter().any(|p| clamped(p.usage) || clamped(p.peak)) {
            return Ok(());
        }
        for p in &root.pools {
            let sum: i128 = charges.iter().filter(|c| c.pools.contains(&p.pool)).map(|c| c.size as i128).sum();
            if sum != p.usage as i128 {
                return Err(format!("root {} usage {} but its buffers sum to {sum}: {charges:?}", p.pool, p.usage));
            }
            let pinned: i128 = charges
                .iter()
                .filter(|c| c.pinned && !c.evicted && c.pools.contains(&p.pool) && p.pool != "memcg")
                .map(|c| c.size as i128)
                .sum();
            if pinned != p.pinned as i128 {
                return Err(format!("root {} pinned {} but pinned buffers sum to {pinned}", p.pool, p.pinned));
            }
            if p.peak < p.usage {
                return Err(format!("root {} peak {} below usage {}", p.pool, p.peak, p.usage));
            }
        }
        if root.bufferCount as usize != charges.len() {
            return Err(format!("root counts {} buffers, listCharges {}", root.bufferCount, charges.len()));
        }
        tally.ok += 2;
        Ok(())
    }

    /// After the last call: once the ledger is stable (a periodic reconcile has run without
    /// changing it), the service is killed and its journal must replay to exactly what it served.
    fn check_journal(&mut self, lane: usize) -> Result<usize, String> {
        let charges = |w: &AidlWorld| -> Result<Vec<String>, String> {
            let s = w.lanes[lane].client.service();
            let mut list: Vec<String> = s
                .listCharges(0)
                .map_err(|e| format!("listCharges: {e:?}"))?
                .iter()
                .map(|c| {
                    format!(
                        "{} {} {} {} {} {:?} {} {}",
                        c.inode, c.size, c.heap, c.ownerPid, c.ownerCgroup, c.pools, c.evicted, c.pinned
                    )
                })
                .collect();
            list.sort();
            Ok(list)
        };
        let mut served = charges(self)?;
        let mut stable = false;
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(1200));
            let again = charges(self)?;
            if again == served {
                stable = true;
                break;
            }
            if std::env::var("HOSTILE_DEBUG").is_ok() {
                report(&format!("{}: changed\n  from {served:?}\n  to   {again:?}", self.lanes[lane].daemon.name));
            }
            served = again;
        }
        if !stable {
            return Err(format!(
                "{}: the ledger keeps changing with /proc unchanged (reconcile does not converge)",
                self.lanes[lane].daemon.name
            ));
        }
        let l = &mut self.lanes[lane];
        l.daemon.child.kill().map_err(|e| e.to_string())?;
        l.daemon.child.wait().map_err(|e| e.to_string())?;
        // Replay logs each refused event: let it reach stderr.
        let _ = env_logger::Builder::new().filter_level(log::LevelFilter::Warn).try_init();
        let (_, ledger, report) =
            chargetransfer::journal::Journal::open(&l.daemon.state, chargetransfer::journal::Durability::None)
                .map_err(|e| format!("{}: journal does not open: {e}", l.daemon.name))?;
        if report.corrupt.is_some() || report.events_refused > 0 {
            return Err(format!("{}: journal replay: {report:?}\nservice log:\n{}", l.daemon.name, l.daemon.log()));
        }
        ledger.check_invariants().map_err(|e| format!("{}: replayed ledger: {e}", l.daemon.name))?;
        let wire = |v: u64| if v == u64::MAX { -1 } else { i64::try_from(v).unwrap_or(i64::MAX) };
        let mut replayed: Vec<String> = ledger
            .buffers()
            .map(|b| {
                format!(
                    "{} {} {} {} {} {:?} {} {}",
                    wire(b.inode),
                    wire(b.size),
                    b.heap,
                    b.pid as i32,
                    b.cgroup,
                    b.pools,
                    b.evicted,
                    b.pinned
                )
            })
            .collect();
        replayed.sort();
        if replayed != served {
            return Err(format!(
                "{}: the journal replays to\n{replayed:#?}\nbut the service served\n{served:#?}",
                l.daemon.name
            ));
        }
        Ok(served.len())
    }

    /// The service is still up, answers, and did not leak memory or fds.
    fn check_health(&mut self, lane: usize) -> Result<(), String> {
        let l = &mut self.lanes[lane];
        if !l.daemon.alive() {
            return Err(format!("{} exited:\n{}", l.daemon.name, l.daemon.log()));
        }
        l.client.service().ping().map_err(|e| format!("{}: ping: {e:?}", l.daemon.name))?;
        let log = l.daemon.log();
        if let Some(line) = log.lines().find(|l| l.contains("panic")) {
            return Err(format!("{} logged a panic: {line}\n{log}", l.daemon.name));
        }
        Ok(())
    }
}

#[test]
fn aidl_random_call_sequences_get_typed_answers_and_the_service_survives() {
    let started = Instant::now();
    let sequences = 200 * scale();
    let world = Mutex::new(AidlWorld::new());
    let tally = Mutex::new(AidlTally::default());
    let strategy = (0..SERVICE_NAMES.len(), prop::collection::vec(call(), 1..36));
    run(&mut runner(1, sequences, false), strategy, |(lane, calls)| {
        let mut guard = world.lock().unwrap();
        let w = &mut *guard;
        let mut t = tally.lock().unwrap();
        w.fixture.restore_me(&w.pool);
        t.sequences += 1;
        *t.per_service.entry(SERVICE_NAMES[lane]).or_default() += 1;
        for (i, c) in calls.iter().enumerate() {
            if let Err(e) = w.call(lane, c, &mut t) {
                let log = w.lanes[lane].daemon.log();
                let tail: Vec<&str> = match log.lines().position(|l| l.contains("panicked at")) {
                    Some(i) => log.lines().skip(i.saturating_sub(2)).take(16).collect(),
                    None => log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect(),
                };
                return Err(TestCaseError::fail(format!(
                    "{} call {i} {c:?}: {e}\nservice log:\n{}",
                    SERVICE_NAMES[lane],
                    tail.join("\n")
                )));
            }
        }
        w.fixture.restore_me(&w.pool);
        w.check_health(lane).map_err(TestCaseError::fail)?;
        if lane != 0 {
            w.check_totals(lane, &mut t).map_err(|e| TestCaseError::fail(format!("{}: {e}", SERVICE_NAMES[lane])))?;
        }
        Ok(())
    });
    // At the end: every service alive, no leaked fds, memory bounded.
    let mut w = world.into_inner().unwrap();
    w.seen.tokens.clear();
    let mut memory = Vec::new();
    for lane in 0..w.lanes.len() {
        w.check_health(lane).unwrap();
        let l = &w.lanes[lane];
        let (rss, fds) = (l.daemon.status_kib("VmRSS:"), l.daemon.open_fds());
        memory.push(format!("{} RSS {} → {} KiB, fds {} → {fds}", l.daemon.name, l.rss_start_kib, rss, l.fds_start));
        assert!(rss < l.rss_start_kib + 64 * 1024, "{}: RSS grew from {} to {rss} KiB", l.daemon.name, l.rss_start_kib);
        assert!(
            fds <= l.fds_start + 16,
            "{}: fds grew from {} to {fds}; received fds leak?",
            l.daemon.name,
            l.fds_start
        );
    }
    w.fixture.restore_me(&w.pool);
    let mut journaled = Vec::new();
    // The fixture services (the host one never charges anything).
    for (lane, name) in SERVICE_NAMES.iter().enumerate().skip(1) {
        let n = w.check_journal(lane).unwrap_or_else(|e| panic!("{e}\n(replay with HOSTILE_SEED={})", base_seed()));
        journaled.push(format!("{name} {n}"));
    }
    let t = tally.into_inner().unwrap();
    let refused: usize = t.refused.values().sum();
    let codes: Vec<String> = t.refused.iter().map(|(c, n)| format!("{c} {n}")).collect();
    let per: Vec<String> = t.per_service.iter().map(|(s, n)| format!("{s} {n}")).collect();
    finished(
        "aidl",
        format!("{} sequences / {} calls", t.sequences, t.calls),
        format!(
            "{} sequences ({}) / {} calls: {} ok, {refused} typed refusals ({}); {} raw parcels ({} rejected by the transport), \
             {} closed fds refused by the client before sending, {} usage queries sweeping every host pid, \
             {} fixture /proc changes; journals replay to the served ledger ({} charges); {}",
            t.sequences,
            per.join(", "),
            t.calls,
            t.ok,
            codes.join(", "),
            t.raw,
            t.raw_rejected,
            t.closed_fd_refused_locally,
            t.sweep_queries,
            t.fixture_ops,
            journaled.join(", "),
            memory.join("; ")
        ),
        started,
    );
}

/// A heap whose region is `memcg` (the memory controller, not a dmem region) is a policy the
/// service could not start with: the parser must refuse it at its JSON path.
#[test]
fn policy_refuses_memcg_as_a_heap_region() {
    let text = r#"{"version": 1, "heaps": {"c": {"class": "cma", "region": "memcg"}}}"#;
    match Policy::from_json(text) {
        Err(PolicyError::Invalid { path, reason, .. }) => assert_eq!(path, "heaps.c.region", "{reason}"),
        other => panic!("{other:?}"),
    }
}

// =====================================================================================
// Directed regressions for what the AIDL harness found.
// =====================================================================================

/// A fixture /proc for the accountant: `(pid, uid, cgroup, held inodes)`.
fn accountant_proc(root: &Path, procs: &[(u32, u32, &str, &[u64])]) {
    for (pid, uid, cgroup, held) in procs {
        let dir = root.join(pid.to_string());
        put(&dir.join("status"), format!("Uid:\t{uid}\t{uid}\t{uid}\t{uid}\n").as_bytes());
        put(&dir.join("cgroup"), format!("0::{cgroup}\n").as_bytes());
        put(
            &dir.join("stat"),
            format!("{pid} (app) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {} 1 1 0\n", 1000 + pid).as_bytes(),
        );
        put(&dir.join("maps"), b"");
        fs::create_dir_all(dir.join("fdinfo")).unwrap();
        for (fd, inode) in held.iter().enumerate() {
            put(&dir.join(format!("fdinfo/{}", fd + 3)), fdinfo_text(Some(*inode), "4096", "system", None).as_bytes());
        }
    }
}

/// Death handling that meets a holder it cannot charge (its cgroup path has a space, which the
/// ledger refuses) must neither stop half-way with the journal behind the ledger (a restart then
/// resurrected a released charge) nor leave the dead owner's charges in place: the buffer goes
/// to the owner's parent cgroup, and the journal replays to exactly the ledger in memory.
#[test]
fn accountant_death_handling_past_an_unchargeable_holder_stays_journaled() {
    use chargetransfer::accountant::{Accountant, Config};
    use chargetransfer::owner::Caller;
    let dir = tempfile::tempdir().unwrap();
    let (proc_root, state) = (dir.path().join("proc"), dir.path().join("state"));
    accountant_proc(&proc_root, &[(100, 10001, "/uid_10001/pid_100", &[]), (101, 10001, "/uid_10001/a b", &[2])]);
    let policy = Policy::from_json(r#"{"version": 1, "heaps": {"system": {"class": "system"}}}"#).unwrap();
    let config = Config {
        proc_root: proc_root.clone(),
        cgroup_root: None,
        state_dir: Some(state.clone()),
        durability: chargetransfer::journal::Durability::None,
        pidfds: false,
    };
    let a = Accountant::open(config, policy).unwrap();
    let caller = Caller { pid: 100, uid: 10001, context: None };
    for inode in [1, 2] {
        let buffer = kernel::DmaBufInfo { inode, size: 4096, exporter: "system".into(), name: None };
        a.charge(&caller, &buffer, None).unwrap();
    }
    fs::remove_dir_all(proc_root.join("100")).unwrap();
    a.process_died(100).unwrap();
    let in_memory: Vec<BufferInfo> = a.with_ledger(|l| {
        let mut v: Vec<BufferInfo> = l.buffers().collect();
        v.sort_by_key(|b| b.inode);
        v
    });
    assert_eq!(in_memory.len(), 1, "buffer 1 (no holder) is released: {in_memory:?}");
    assert_eq!((in_memory[0].inode, in_memory[0].cgroup.as_str(), in_memory[0].pid), (2, "/uid_10001", 0));
    drop(a);
    let (_, replayed, report) =
        chargetransfer::journal::Journal::open(&state, chargetransfer::journal::Durability::None).unwrap();
    assert_eq!(report.events_refused, 0, "{report:?}");
    let mut replayed: Vec<BufferInfo> = replayed.buffers().collect();
    replayed.sort_by_key(|b| b.inode);
    assert_eq!(replayed, in_memory);
}
