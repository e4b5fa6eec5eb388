use proptest::prelude::*;

use super::testing::*;
use super::*;

fn usage(l: &Ledger, cg: &str, pool: &str) -> u64 {
    l.counter(cg, pool).map_or(0, |c| c.usage)
}

#[test]
fn cma_charges_memcg_and_region_up_the_tree() {
    let mut l = phone();
    l.charge(1, 4 * MIB, "display", 100, 0, "/uid_10001/pid_100").unwrap();
    for cg in ["/uid_10001/pid_100", "/uid_10001", "/"] {
        assert_eq!(usage(&l, cg, "memcg"), 4 * MIB, "{cg}");
        assert_eq!(usage(&l, cg, "cma/display"), 4 * MIB, "{cg}");
        assert_eq!(l.counter(cg, "cma/display").unwrap().pinned, 4 * MIB, "CMA is always pinned");
    }
    assert!(l.buffer(1).unwrap().pinned);
    l.check_invariants().unwrap();
}

#[test]
fn over_limit_charge_is_refused_and_touches_nothing() {
    let mut l = phone();
    l.set_limit("/uid_10001", "memcg", LimitKind::Max, 10 * MIB).unwrap();
    l.charge(1, 8 * MIB, "system", 100, 0, "/uid_10001/pid_100").unwrap();
    let before = l.counters("/uid_10001").unwrap();
    let err = l.charge(2, 4 * MIB, "system", 100, 0, "/uid_10001/pid_100").unwrap_err();
    assert!(
        matches!(&err, LedgerError::OverLimit { limit_cgroup, pool, .. } if limit_cgroup == "/uid_10001" && pool == "memcg"),
        "{err}"
    );
    assert_eq!(l.counters("/uid_10001").unwrap(), before);
    assert!(l.buffer(2).is_none());
    l.charge(3, 2 * MIB, "system", 100, 0, "/uid_10001/pid_100").unwrap();
    l.check_invariants().unwrap();
}

#[test]
fn dmem_limit_refuses_even_when_memcg_fits() {
    let mut l = phone();
    l.set_limit("/uid_1", "cma/display", LimitKind::Max, 4 * MIB).unwrap();
    let err = l.charge(1, 5 * MIB, "display", 1, 0, "/uid_1/pid_1").unwrap_err();
    assert!(matches!(err, LedgerError::OverLimit { ref pool, .. } if pool == "cma/display"));
    assert_eq!(usage(&l, "/uid_1", "memcg"), 0, "memcg part must not be left behind");
}

#[test]
fn observe_mode_lets_charges_through_and_counts_events() {
    let mut l = phone();
    l.set_limit("/uid_1", "memcg", LimitKind::Max, MIB).unwrap();
    l.charge(1, 2 * MIB, "observed", 1, 0, "/uid_1/pid_1").unwrap();
    let c = l.counter("/uid_1", "memcg").unwrap();
    assert_eq!((c.usage, c.max_events), (2 * MIB, 1));
}

#[test]
fn transfer_moves_every_pool_together() {
    let mut l = phone();
    l.charge(7, 4 * MIB, "display", 1000, 0, "/system/surfaceflinger").unwrap();
    l.transfer(7, 100, 0, "/uid_10001/pid_100").unwrap();
    assert_eq!(usage(&l, "/system/surfaceflinger", "memcg"), 0);
    assert_eq!(usage(&l, "/system/surfaceflinger", "cma/display"), 0);
    assert_eq!(usage(&l, "/uid_10001/pid_100", "memcg"), 4 * MIB);
    assert_eq!(usage(&l, "/uid_10001/pid_100", "cma/display"), 4 * MIB);
    assert_eq!(usage(&l, "/", "cma/display"), 4 * MIB, "root unchanged");
    let b = l.buffer(7).unwrap();
    assert_eq!((b.pid, b.cgroup.as_str()), (100, "/uid_10001/pid_100"));
    l.check_invariants().unwrap();
}

#[test]
fn transfer_within_a_full_parent_does_not_fail_spuriously() {
    let mut l = phone();
    l.set_limit("/uid_1", "memcg", LimitKind::Max, 4 * MIB).unwrap();
    l.charge(1, 4 * MIB, "system", 1, 0, "/uid_1/pid_1").unwrap();
    // The parent is exactly full; moving between siblings must not count the bytes twice.
    l.transfer(1, 2, 0, "/uid_1/pid_2").unwrap();
    assert_eq!(usage(&l, "/uid_1", "memcg"), 4 * MIB);
    assert_eq!(usage(&l, "/uid_1/pid_2", "memcg"), 4 * MIB);
}

#[test]
fn transfer_into_a_full_cgroup_is_refused_and_charge_stays() {
    let mut l = phone();
    l.set_limit("/uid_2", "memcg", LimitKind::Max, MIB).unwrap();
    l.charge(1, 2 * MIB, "system", 1, 0, "/uid_1/pid_1").unwrap();
    assert!(matches!(l.transfer(1, 2, 0, "/uid_2/pid_2"), Err(LedgerError::OverLimit { .. })));
    assert_eq!(l.buffer(1).unwrap().cgroup, "/uid_1/pid_1");
    l.check_invariants().unwrap();
}

#[test]
fn double_charge_of_one_inode_is_refused() {
    let mut l = phone();
    l.charge(1, MIB, "system", 1, 0, "/a").unwrap();
    assert!(matches!(l.charge(1, MIB, "system", 2, 0, "/b"), Err(LedgerError::AlreadyCharged { pid: 1, .. })));
    assert_eq!(usage(&l, "/", "memcg"), MIB);
}

#[test]
fn reparent_moves_own_charges_to_parent() {
    let mut l = phone();
    l.charge(1, MIB, "display", 5, 0, "/uid_1/pid_5").unwrap();
    l.charge(2, MIB, "system", 6, 0, "/uid_1/pid_6").unwrap();
    assert!(matches!(l.reparent("/uid_1"), Err(LedgerError::CgroupHasChildren(_))));
    l.reparent("/uid_1/pid_5").unwrap();
    assert!(!l.has_cgroup("/uid_1/pid_5"));
    assert_eq!(l.buffer(1).unwrap().cgroup, "/uid_1");
    let c = l.counter("/uid_1", "cma/display").unwrap();
    assert_eq!((c.usage, c.local), (MIB, MIB));
    assert!(matches!(l.reparent("/"), Err(LedgerError::RootRemoval)));
    l.check_invariants().unwrap();
}

#[test]
fn migrate_moves_a_process_buffers_even_over_limit() {
    let mut l = phone();
    l.set_limit("/bg", "memcg", LimitKind::Max, MIB).unwrap();
    l.charge(1, MIB, "system", 9, 0, "/uid_1/pid_9").unwrap();
    l.charge(2, MIB, "system", 9, 0, "/uid_1/pid_9").unwrap();
    l.charge(3, MIB, "system", 8, 0, "/uid_1/pid_9").unwrap();
    l.migrate(9, "/bg").unwrap();
    assert_eq!(usage(&l, "/bg", "memcg"), 2 * MIB);
    assert_eq!(l.counter("/bg", "memcg").unwrap().max_events, 1);
    assert_eq!(l.buffer(3).unwrap().cgroup, "/uid_1/pid_9");
    l.check_invariants().unwrap();
}

#[test]
fn eviction_moves_vram_to_the_owners_memcg_and_restore_respects_dmem_max() {
    let mut l = phone();
    let vram = "drm/0000:03:00.0/vram0";
    l.charge(1, 64 * MIB, "vram", 1, 0, "/uid_1/pid_1").unwrap();
    l.evict(1).unwrap();
    assert_eq!(usage(&l, "/uid_1/pid_1", vram), 0);
    assert_eq!(usage(&l, "/uid_1/pid_1", "memcg"), 64 * MIB);
    l.set_limit("/uid_1", vram, LimitKind::Max, 32 * MIB).unwrap();
    assert!(matches!(l.restore(1), Err(LedgerError::OverLimit { .. })));
    assert!(l.buffer(1).unwrap().evicted, "refused restore leaves it evicted");
    l.set_limit("/uid_1", vram, LimitKind::Max, UNLIMITED).unwrap();
    l.restore(1).unwrap();
    assert_eq!(usage(&l, "/uid_1/pid_1", vram), 64 * MIB);
    assert_eq!(usage(&l, "/uid_1/pid_1", "memcg"), 0);
    l.check_invariants().unwrap();
}

#[test]
fn pin_limit_refuses_and_pinned_buffers_cannot_be_evicted() {
    let mut l = phone();
    let vram = "drm/0000:03:00.0/vram0";
    l.set_limit("/uid_1", vram, LimitKind::PinMax, 16 * MIB).unwrap();
    l.charge(1, 8 * MIB, "vram", 1, 0, "/uid_1/pid_1").unwrap();
    l.charge(2, 16 * MIB, "vram", 1, 0, "/uid_1/pid_1").unwrap();
    l.pin(1).unwrap();
    assert!(matches!(l.pin(2), Err(LedgerError::OverPinLimit { .. })));
    assert!(matches!(l.evict(1), Err(LedgerError::InvalidState { .. })));
    l.unpin(1).unwrap();
    l.pin(2).unwrap();
    assert!(matches!(l.pin(1), Err(LedgerError::OverPinLimit { .. })));
    assert!(matches!(l.set_limit("/", "memcg", LimitKind::PinMax, 1), Err(LedgerError::InvalidLimit { .. })));
    l.check_invariants().unwrap();
}

#[test]
fn migration_is_never_refused_by_a_pin_limit() {
    let mut l = phone();
    l.charge(10, MIB, "display", 4, 0, "/uid_2").unwrap();
    l.set_limit("/uid_1", "cma/display", LimitKind::PinMax, 0).unwrap();
    l.charge(9, MIB, "secure", 4, 0, "/").unwrap();
    l.migrate(4, "/uid_1").unwrap();
    assert_eq!(l.buffer(9).unwrap().cgroup, "/uid_1");
    assert_eq!(l.buffer(10).unwrap().cgroup, "/uid_1");
    l.check_invariants().unwrap();
}

#[test]
fn bad_input_is_refused_with_typed_errors() {
    let mut l = phone();
    assert!(matches!(l.charge(1, 0, "system", 1, 0, "/a"), Err(LedgerError::ZeroSize)));
    assert!(matches!(l.charge(1, 1, "nope", 1, 0, "/a"), Err(LedgerError::UnknownHeap(_))));
    for bad in ["", "a", "/a/", "/a//b", "/a/../b", "/a b"] {
        assert!(matches!(l.charge(1, 1, "system", 1, 0, bad), Err(LedgerError::InvalidCgroupPath(_))), "{bad:?}");
    }
    let no_region = HeapSpec { name: "c".into(), class: HeapClass::Cma, region: None };
    assert!(matches!(l.add_heap(no_region, true), Err(LedgerError::HeapNeedsRegion { .. })));
    assert!(matches!(l.evict(42), Err(LedgerError::UnknownBuffer(42))));
    l.charge(1, 1, "system", 1, 0, "/a").unwrap();
    assert!(matches!(l.evict(1), Err(LedgerError::InvalidState { .. })));
    l.check_invariants().unwrap();
}

#[test]
fn ledger_is_shareable_between_binder_threads() {
    use std::sync::{Arc, Mutex};
    let l = Arc::new(Mutex::new(phone()));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let l = Arc::clone(&l);
            std::thread::spawn(move || {
                for i in 0..100 {
                    l.lock()
                        .unwrap()
                        .charge(t * 1000 + i, 4096, "system", t as u32, 0, &format!("/uid_{t}/pid_{t}"))
                        .unwrap();
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let l = l.lock().unwrap();
    assert_eq!(usage(&l, "/", "memcg"), 400 * 4096);
    l.check_invariants().unwrap();
}

// ---- property tests over random operation sequences ----

/// Each cgroup's counters per pool, and each buffer.
type Observable = (Vec<(String, Vec<(String, Counter)>)>, Vec<(u64, BufferInfo)>);

/// Everything observable about a ledger, for comparing two of them.
fn observable(l: &Ledger) -> Observable {
    let cgroups = l
        .cgroups()
        .into_iter()
        .map(|cg| {
            let counters = l
                .counters(&cg)
                .unwrap()
                .into_iter()
                .map(|(p, c)| (p, Counter { peak: 0, max_events: 0, ..c }))
                .collect();
            (cg, counters)
        })
        .collect();
    let mut buffers: Vec<_> = l.buffers().map(|b| (b.inode, b)).collect();
    buffers.sort_by_key(|(i, _)| *i);
    (cgroups, buffers)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_after_every_operation(ops in prop::collection::vec(op(), 1..120)) {
        let mut l = phone();
        for op in &ops {
            let before = observable(&l);
            match run(&mut l, op) {
                Ok(_) => {}
                Err(_) => prop_assert_eq!(&before, &observable(&l), "a refused {:?} changed the ledger", op),
            }
            if let Err(e) = l.check_invariants() {
                return Err(TestCaseError::fail(format!("after {op:?}: {e}")));
            }
            let total: u64 = l.buffers().filter(|b| b.pools.iter().any(|p| p == "memcg")).map(|b| b.size).sum();
            prop_assert_eq!(usage(&l, "/", "memcg"), total, "root memcg equals the sum of live buffers");
        }
    }

    #[test]
    fn replaying_events_rebuilds_the_same_ledger(ops in prop::collection::vec(op(), 1..80)) {
        let mut l = phone();
        let mut journal = Vec::new();
        for op in &ops {
            if let Ok(e) = run(&mut l, op) {
                journal.push(e);
            }
        }
        let mut replayed = phone();
        for e in &journal {
            replayed.apply(e).unwrap();
        }
        prop_assert_eq!(observable(&l), observable(&replayed));
        let mut from_snapshot = Ledger::new();
        for e in l.to_events() {
            from_snapshot.apply(&e).unwrap();
        }
        let (cg_a, buf_a) = observable(&l);
        let (_, buf_b) = observable(&from_snapshot);
        prop_assert_eq!(buf_a, buf_b);
        for (cg, counters) in cg_a {
            // Empty cgroups need not survive a snapshot; charged or limited ones must.
            if counters.iter().any(|(_, c)| *c != Counter::default()) {
                let got: Vec<_> = from_snapshot.counters(&cg).unwrap().into_iter().map(|(p, c)| (p, Counter { peak: 0, max_events: 0, ..c })).collect();
                prop_assert_eq!(counters, got, "cgroup {}", cg);
            }
        }
    }

    #[test]
    fn events_round_trip_through_json(ops in prop::collection::vec(op(), 1..40)) {
        let mut l = phone();
        for op in &ops {
            if let Ok(e) = run(&mut l, op) {
                let json = serde_json::to_string(&e).unwrap();
                prop_assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), e);
            }
        }
    }
}
