use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::ledger::testing::{self, op, run};
use crate::ledger::{BufferInfo, Counter, Inode};

/// The events of a phone-like ledger (as in the ledger's tests): system heap, a CMA display
/// region, a secure carve-out and vram.
fn phone(l: &mut Ledger) -> Vec<Event> {
    let events = testing::phone().to_events();
    for e in &events {
        l.apply(e).unwrap();
    }
    events
}

fn open(dir: &Path) -> (Journal, Ledger, RecoveryReport) {
    Journal::open(dir, Durability::None).unwrap()
}

/// Applies `event` to the ledger and journals it, as the service does under its mutex.
fn record(j: &mut Journal, l: &mut Ledger, event: Event) {
    l.apply(&event).unwrap();
    j.append(&event).unwrap();
}

fn charge(inode: Inode, cgroup: &str) -> Event {
    Event::Charged {
        inode,
        size: 4096 * (inode + 1),
        heap: "system".into(),
        pid: 1000 + inode as u32,
        start: 50_000 + inode,
        cgroup: cgroup.into(),
    }
}

/// A dir holding generation 1: the phone set-up and `n` charges.
fn journal_with_charges(n: u64) -> (tempfile::TempDir, Journal, Ledger) {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, mut l, _) = open(dir.path());
    let setup = phone(&mut l);
    j.append_all(&setup).unwrap();
    for inode in 0..n {
        record(&mut j, &mut l, charge(inode, &format!("/uid_{}/pid_{inode}", 10_000 + inode % 3)));
    }
    (dir, j, l)
}

/// What survives a restart: buffers, and counters without `peak`/`max_events`. Cgroups whose
/// counters are then all default need not survive a snapshot and are left out.
type State = (BTreeMap<String, Vec<(String, Counter)>>, Vec<BufferInfo>);

fn state(l: &Ledger) -> State {
    let cgroups = l
        .cgroups()
        .into_iter()
        .filter_map(|cg| {
            let counters: Vec<_> = l
                .counters(&cg)
                .unwrap()
                .into_iter()
                .map(|(p, c)| (p, Counter { peak: 0, max_events: 0, ..c }))
                .collect();
            counters.iter().any(|(_, c)| *c != Counter::default()).then_some((cg, counters))
        })
        .collect();
    let mut buffers: Vec<_> = l.buffers().collect();
    buffers.sort_by_key(|b| b.inode);
    (cgroups, buffers)
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

fn clean(report: &RecoveryReport) -> bool {
    report.corrupt.is_none() && report.torn_bytes == 0 && report.events_refused == 0
}

#[test]
fn new_dir_starts_generation_one_with_an_empty_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (j, l, report) = open(dir.path());
    assert_eq!(report, RecoveryReport { generation: 1, ..RecoveryReport::default() });
    assert_eq!((j.generation(), j.records(), j.bytes(), l.buffer_count()), (1, 0, 0, 0));
    assert_eq!(files(dir.path()), ["journal.log", "snapshot.1"]);
}

#[test]
fn appended_events_replay_after_reopen_and_appends_continue() {
    let (dir, j, l) = journal_with_charges(5);
    drop(j);
    let (mut j, mut again, report) = open(dir.path());
    assert_eq!(state(&again), state(&l));
    assert!(clean(&report), "{report:?}");
    assert_eq!((report.generation, report.snapshot_events, report.journal_events), (1, 0, 13));
    record(&mut j, &mut again, Event::Released { inode: 2 });
    drop(j);
    let (_, third, report) = open(dir.path());
    assert_eq!(report.journal_events, 14);
    assert!(third.buffer(2).is_none());
    assert_eq!(third.buffer_count(), 4);
    third.check_invariants().unwrap();
}

#[test]
fn compaction_leaves_one_snapshot_and_an_empty_journal_of_the_next_generation() {
    let (dir, mut j, l) = journal_with_charges(5);
    j.compact(&l).unwrap();
    assert_eq!((j.generation(), j.records(), j.bytes()), (2, 0, 0));
    assert_eq!(files(dir.path()), ["journal.log", "snapshot.2"]);
    drop(j);
    let (_, again, report) = open(dir.path());
    assert_eq!(state(&again), state(&l));
    assert!(clean(&report), "{report:?}");
    assert_eq!((report.generation, report.snapshot_events, report.journal_events), (2, l.to_events().len() as u64, 0));
}

#[test]
fn should_compact_follows_the_record_and_byte_limits() {
    let (_dir, mut j, mut l) = journal_with_charges(0);
    j.set_compaction_policy(CompactionPolicy { records: 10, bytes: u64::MAX });
    assert!(!j.should_compact(), "8 set-up records");
    record(&mut j, &mut l, charge(1, "/a"));
    record(&mut j, &mut l, charge(2, "/a"));
    assert!(j.should_compact());
    j.compact(&l).unwrap();
    assert!(!j.should_compact());
    j.set_compaction_policy(CompactionPolicy { records: u64::MAX, bytes: 100 });
    record(&mut j, &mut l, charge(3, "/uid_10001/pid_3"));
    assert!(!j.should_compact(), "{} bytes", j.bytes());
    record(&mut j, &mut l, charge(4, "/uid_10001/pid_4"));
    record(&mut j, &mut l, charge(5, "/uid_10001/pid_5"));
    assert!(j.should_compact(), "{} bytes", j.bytes());
}

#[test]
fn every_cut_inside_the_last_record_loses_only_that_record() {
    let (dir, mut j, mut l) = journal_with_charges(3);
    let before = state(&l);
    let start = j.len;
    let last = charge(99, "/uid_10099/pid_12345");
    record(&mut j, &mut l, last.clone());
    let end = j.len;
    let after = state(&l);
    drop(j);
    let full = fs::read(dir.path().join(JOURNAL)).unwrap();
    let snapshot = fs::read(dir.path().join("snapshot.1")).unwrap();
    for cut in start..end {
        let case = tempfile::tempdir().unwrap();
        fs::write(case.path().join("snapshot.1"), &snapshot).unwrap();
        fs::write(case.path().join(JOURNAL), &full[..cut as usize]).unwrap();
        let (mut j, mut l, report) = open(case.path());
        assert_eq!(state(&l), before, "cut at {cut}");
        assert_eq!(
            (report.torn_bytes, report.journal_events, &report.corrupt),
            (cut - start, 11, &None),
            "cut at {cut}"
        );
        assert_eq!(fs::metadata(case.path().join(JOURNAL)).unwrap().len(), start, "torn tail truncated");
        record(&mut j, &mut l, last.clone());
        drop(j);
        let (_, l, report) = open(case.path());
        assert_eq!(state(&l), after, "cut at {cut}");
        assert!(clean(&report), "cut at {cut}: {report:?}");
    }
}

#[test]
fn a_flipped_byte_stops_replay_there_and_is_reported() {
    let (dir, mut j, mut l) = journal_with_charges(4);
    let before = state(&l);
    let start = j.len as usize;
    record(&mut j, &mut l, charge(50, "/uid_10050/pid_50"));
    let end = j.len as usize;
    for inode in 51..55 {
        record(&mut j, &mut l, charge(inode, "/uid_10050/pid_50"));
    }
    drop(j);
    let full = fs::read(dir.path().join(JOURNAL)).unwrap();
    let snapshot = fs::read(dir.path().join("snapshot.1")).unwrap();
    for at in start..end {
        let case = tempfile::tempdir().unwrap();
        fs::write(case.path().join("snapshot.1"), &snapshot).unwrap();
        let mut damaged = full.clone();
        damaged[at] ^= 0xff;
        fs::write(case.path().join(JOURNAL), &damaged).unwrap();
        let (mut j, mut l, report) = open(case.path());
        assert_eq!(state(&l), before, "flip at {at}");
        assert_eq!((report.journal_events, report.torn_bytes), (12, (full.len() - start) as u64), "flip at {at}");
        // A damaged length can look like a record running past the end (torn); a damaged
        // checksum or payload is always reported as corruption, and the cut bytes kept.
        if at >= start + 4 {
            let why = report.corrupt.as_deref().unwrap_or_else(|| panic!("flip at {at}: not reported"));
            assert!(why.contains("checksum mismatch") && why.contains(&format!("offset {start}")), "{why}");
            let kept = fs::read(case.path().join("journal.1.tail.damaged")).unwrap();
            assert_eq!(kept, &damaged[start..]);
        }
        record(&mut j, &mut l, charge(60, "/uid_1/pid_1"));
        drop(j);
        let (_, again, report) = open(case.path());
        assert_eq!(state(&again), state(&l), "flip at {at}");
        assert!(clean(&report), "flip at {at}: {report:?}");
    }
}

#[test]
fn events_the_ledger_refuses_on_replay_are_counted_and_skipped() {
    let (dir, mut j, l) = journal_with_charges(2);
    j.append(&Event::Released { inode: 999 }).unwrap();
    j.append(&charge(0, "/elsewhere")).unwrap();
    drop(j);
    let (_, again, report) = open(dir.path());
    assert_eq!((report.journal_events, report.events_refused, &report.corrupt), (12, 2, &None));
    assert_eq!(state(&again), state(&l));
}

#[test]
fn an_oversized_event_is_refused_and_the_journal_stays_usable() {
    let (dir, mut j, mut l) = journal_with_charges(1);
    let huge = Event::Reparented { cgroup: format!("/{}", "x".repeat(2 << 20)) };
    assert!(matches!(j.append_all(&[charge(7, "/a"), huge]), Err(JournalError::TooLarge { .. })));
    record(&mut j, &mut l, charge(8, "/b"));
    drop(j);
    let (_, again, report) = open(dir.path());
    assert!(clean(&report), "{report:?}");
    assert!(again.buffer(7).is_none(), "nothing of a refused batch is written");
    assert_eq!(state(&again), state(&l));
}

#[test]
fn batched_appends_are_readable_after_a_background_sync() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, mut l, _) = Journal::open(dir.path(), Durability::Batch).unwrap();
    let setup = phone(&mut l);
    j.append_all(&setup).unwrap();
    for inode in 0..100 {
        record(&mut j, &mut l, charge(inode, "/uid_10001/pid_7"));
    }
    j.take_unsynced().unwrap().expect("unsynced appends").sync_data().unwrap();
    assert!(j.take_unsynced().unwrap().is_none(), "synced: nothing left to sync");
    record(&mut j, &mut l, charge(100, "/uid_10001/pid_7"));
    assert!(j.take_unsynced().unwrap().is_some(), "a later append is unsynced again");
    j.sync_failed();
    assert!(matches!(j.append_all(&[charge(101, "/uid_10001/pid_7")]), Err(JournalError::Poisoned { .. })));
    drop(j);
    let (_, again, report) = Journal::open(dir.path(), Durability::Fsync).unwrap();
    assert!(clean(&report));
    assert_eq!(state(&again), state(&l));
}

#[test]
fn fsynced_appends_replay() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, mut l, _) = Journal::open(dir.path(), Durability::Fsync).unwrap();
    let setup = phone(&mut l);
    j.append_all(&setup).unwrap();
    record(&mut j, &mut l, charge(1, "/uid_10001/pid_7"));
    j.compact(&l).unwrap();
    record(&mut j, &mut l, charge(2, "/uid_10001/pid_7"));
    drop(j);
    let (_, again, report) = Journal::open(dir.path(), Durability::Fsync).unwrap();
    assert!(clean(&report));
    assert_eq!((report.generation, report.journal_events), (2, 1));
    assert_eq!(state(&again), state(&l));
}

#[test]
fn a_newer_format_version_is_refused_and_left_untouched() {
    let (dir, j, _) = journal_with_charges(1);
    drop(j);
    let path = dir.path().join(JOURNAL);
    let mut data = fs::read(&path).unwrap();
    let mut header = Vec::new();
    record::push(&mut header, |out| {
        codec::encode_header(&Header { kind: Kind::Journal, version: codec::VERSION, generation: 1, events: 0 }, out);
        out[record::FRAME + 4] = 9;
    })
    .unwrap();
    data[..header.len()].copy_from_slice(&header);
    fs::write(&path, &data).unwrap();
    let err = Journal::open(dir.path(), Durability::None).unwrap_err();
    assert!(matches!(err, JournalError::Version { found: 9, supported: codec::VERSION, .. }), "{err}");
    assert_eq!(fs::read(&path).unwrap(), data);
    assert_eq!(files(dir.path()), ["journal.log", "snapshot.1"]);
}

/// A state dir an older build wrote in format 1 (no start times): it is read, its owners' start
/// times are unknown (0), and it is rewritten at once as a new generation in the current format
/// so that no file mixes the two.
#[test]
fn a_version_1_state_dir_is_read_and_rewritten_in_the_current_format() {
    let dir = tempfile::tempdir().unwrap();
    let header = |kind, events| {
        let mut data = Vec::new();
        record::push(&mut data, |out| codec::encode_header(&Header { kind, version: 1, generation: 1, events }, out))
            .unwrap();
        data
    };
    let setup = phone(&mut Ledger::new());
    let mut snapshot = header(Kind::Snapshot, setup.len() as u64);
    for e in &setup {
        record::push(&mut snapshot, |out| codec::encode(e, out)).unwrap();
    }
    fs::write(dir.path().join("snapshot.1"), snapshot).unwrap();
    let cgroup = "/uid_10001/pid_42";
    let charged =
        Event::Charged { inode: 7, size: 4096, heap: "system".into(), pid: 42, start: 0, cgroup: cgroup.into() };
    let mut journal = header(Kind::Journal, 0);
    record::push(&mut journal, |out| {
        codec::encode(&charged, out);
        // Format 1 has no start time: drop its byte (a 0) in front of the cgroup's length.
        let at = out.len() - cgroup.len() - 2;
        assert_eq!(out.remove(at), 0);
    })
    .unwrap();
    fs::write(dir.path().join(JOURNAL), journal).unwrap();

    let (j, l, report) = open(dir.path());
    assert!(clean(&report), "{report:?}");
    assert_eq!(l.buffer(7).map(|b| (b.pid, b.start, b.cgroup)), Some((42, 0, cgroup.to_string())));
    assert_eq!(j.generation(), 2);
    drop(j);
    assert_eq!(files(dir.path()), ["journal.log", "snapshot.2"]);
    let (_, again, report) = open(dir.path());
    assert!(clean(&report), "{report:?}");
    assert_eq!(state(&again), state(&l));
}

/// The files of each step of a compaction from generation 1 to 2, as a crash would leave them.
#[test]
fn a_crash_at_any_step_of_compaction_loads_every_event_exactly_once() {
    let (dir, mut j, l) = journal_with_charges(6);
    let read = |name: &str| fs::read(dir.path().join(name)).unwrap();
    let (s1, j1) = (read("snapshot.1"), read(JOURNAL));
    j.compact(&l).unwrap();
    drop(j);
    let (s2, j2) = (read("snapshot.2"), read(JOURNAL));
    type Files<'a> = Vec<(&'a str, &'a [u8])>;
    let steps: [(&str, Files); 5] = [
        ("writing the snapshot", vec![("snapshot.1", &s1), (JOURNAL, &j1), (SNAPSHOT_TMP, &s2[..s2.len() / 2])]),
        ("snapshot renamed", vec![("snapshot.1", &s1), (JOURNAL, &j1), ("snapshot.2", &s2)]),
        ("new journal written", vec![("snapshot.1", &s1), (JOURNAL, &j1), ("snapshot.2", &s2), (JOURNAL_TMP, &j2)]),
        ("journal renamed", vec![("snapshot.1", &s1), ("snapshot.2", &s2), (JOURNAL, &j2)]),
        ("old snapshot deleted", vec![("snapshot.2", &s2), (JOURNAL, &j2)]),
    ];
    for (step, contents) in steps {
        let case = tempfile::tempdir().unwrap();
        for (name, data) in contents {
            fs::write(case.path().join(name), data).unwrap();
        }
        let (mut j, mut again, report) = open(case.path());
        let replayed = report.journal_events;
        assert_eq!(state(&again), state(&l), "{step}");
        assert!(clean(&report), "{step}: {report:?}");
        assert_eq!(
            files(case.path()),
            ["journal.log".to_string(), format!("snapshot.{}", report.generation)],
            "{step}"
        );
        let extra = charge(77, "/uid_10077/pid_77");
        record(&mut j, &mut again, extra);
        drop(j);
        let (_, third, report) = open(case.path());
        assert!(clean(&report), "{step}: {report:?}");
        assert_eq!(report.journal_events, replayed + 1, "{step}");
        assert_eq!(state(&third), state(&again), "{step}");
    }
}

#[test]
fn a_damaged_snapshot_is_set_aside_and_its_journal_not_replayed_on_another_base() {
    let (dir, mut j, l) = journal_with_charges(3);
    let s1 = fs::read(dir.path().join("snapshot.1")).unwrap();
    j.compact(&l).unwrap();
    let mut extra = l;
    record(&mut j, &mut extra, charge(40, "/uid_1/pid_1"));
    drop(j);
    fs::write(dir.path().join("snapshot.1"), &s1).unwrap();
    let snapshot = dir.path().join("snapshot.2");
    let mut data = fs::read(&snapshot).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x10;
    fs::write(&snapshot, &data).unwrap();

    let (_, again, report) = open(dir.path());
    let why = report.corrupt.as_deref().unwrap();
    assert!(why.contains("snapshot.2") && why.contains("generation 2 has no valid snapshot"), "{why}");
    assert_eq!(again.buffer_count(), 0, "snapshot 1 was the empty start");
    assert_eq!(report.generation, 3);
    assert_eq!(files(dir.path()), ["journal.log", "journal.log.damaged", "snapshot.2.damaged", "snapshot.3"]);
}

// ---- property tests: random operations (shapes from the ledger's tests), random damage ----

/// Damage done to a journal file.
#[derive(Clone, Debug)]
enum Harm {
    Flip { at: prop::sample::Index, mask: u8 },
    Cut { at: prop::sample::Index },
    Insert { at: prop::sample::Index, bytes: Vec<u8> },
}

fn harm() -> impl Strategy<Value = Harm> {
    prop_oneof![
        (any::<prop::sample::Index>(), 1..=255u8).prop_map(|(at, mask)| Harm::Flip { at, mask }),
        any::<prop::sample::Index>().prop_map(|at| Harm::Cut { at }),
        (any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..24))
            .prop_map(|(at, bytes)| Harm::Insert { at, bytes }),
    ]
}

fn inflict(data: &mut Vec<u8>, harm: &Harm) {
    if data.is_empty() {
        return;
    }
    match harm {
        Harm::Flip { at, mask } => {
            let i = at.index(data.len());
            data[i] ^= mask;
        }
        Harm::Cut { at } => data.truncate(at.index(data.len())),
        Harm::Insert { at, bytes } => {
            let i = at.index(data.len());
            data.splice(i..i, bytes.iter().copied());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn reopening_rebuilds_the_ledger_with_or_without_compaction(
        ops in prop::collection::vec(op(), 1..120),
        compact_at in prop::option::of(0..120usize),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, mut l, _) = open(dir.path());
        let setup = phone(&mut l);
        j.append_all(&setup).unwrap();
        let mut appended = setup.len() as u64;
        for (i, op) in ops.iter().enumerate() {
            if Some(i) == compact_at {
                j.compact(&l).unwrap();
                appended = 0;
            }
            let before = state(&l);
            match run(&mut l, op) {
                Ok(event) => {
                    j.append(&event).unwrap();
                    appended += 1;
                }
                Err(_) => prop_assert_eq!(state(&l), before, "refused {:?} changed the ledger", op),
            }
        }
        drop(j);
        let (_, again, report) = open(dir.path());
        prop_assert_eq!(state(&again), state(&l));
        prop_assert_eq!(report.journal_events, appended);
        prop_assert!(report.corrupt.is_none() && report.torn_bytes == 0, "{:?}", report);
        if compact_at.is_none_or(|at| at >= ops.len()) {
            prop_assert_eq!(report.events_refused, 0);
        }
        prop_assert!(again.check_invariants().is_ok());
    }

    /// Any damage to a journal: the open succeeds, keeps a prefix of the events, and leaves a
    /// journal that takes appends and reopens clean.
    #[test]
    fn a_damaged_journal_opens_to_a_prefix_and_stays_appendable(
        ops in prop::collection::vec(op(), 1..60),
        harms in prop::collection::vec(harm(), 1..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, mut l, _) = open(dir.path());
        let setup = phone(&mut l);
        j.append_all(&setup).unwrap();
        for op in &ops {
            if let Ok(event) = run(&mut l, op) {
                j.append(&event).unwrap();
            }
        }
        drop(j);
        let path = dir.path().join(JOURNAL);
        let mut data = fs::read(&path).unwrap();
        for h in &harms {
            inflict(&mut data, h);
        }
        fs::write(&path, &data).unwrap();
        let (mut j, mut again, _) = open(dir.path());
        prop_assert!(again.check_invariants().is_ok());
        record(&mut j, &mut again, Event::RegionAdded { region: "after/damage".into(), capacity: 1 });
        drop(j);
        let (_, third, report) = open(dir.path());
        prop_assert!(report.corrupt.is_none() && report.torn_bytes == 0, "{:?}", report);
        prop_assert_eq!(state(&third), state(&again));
        prop_assert!(third.pool_id("after/damage").is_some());
    }

    #[test]
    fn random_bytes_as_journal_or_snapshot_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        as_snapshot in any::<bool>(),
        with_header in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (j, _, _) = open(dir.path());
        drop(j);
        let (name, kind) = if as_snapshot { ("snapshot.1", Kind::Snapshot) } else { (JOURNAL, Kind::Journal) };
        let mut data = Vec::new();
        if with_header {
            record::push(&mut data, |out| codec::encode_header(&Header { kind, version: codec::VERSION, generation: 1, events: 3 }, out)).unwrap();
        }
        data.extend_from_slice(&bytes);
        fs::write(dir.path().join(name), &data).unwrap();
        let (mut j, mut l, report) = open(dir.path());
        prop_assert!(l.check_invariants().is_ok());
        prop_assert!(report.generation >= 1);
        record(&mut j, &mut l, Event::RegionAdded { region: "after/noise".into(), capacity: 1 });
        drop(j);
        let (_, again, report) = open(dir.path());
        prop_assert!(report.corrupt.is_none() && report.torn_bytes == 0, "{:?}", report);
        prop_assert!(again.pool_id("after/noise").is_some());
    }
}
