//! The handoff rule (README "Who may move a charge"): a payer that lets go of a buffer other
//! processes still hold stops paying, with no call from anyone — how charges follow buffers that
//! apps pass to each other over binder, where they cannot call the service. Over a fixture /proc;
//! the kernel lanes show the same with real processes and dma-bufs.

mod fixture;

use std::time::Duration;

use chargetransfer::identity::Caller;
use chargetransfer::ledger::LimitKind;
use fixture::{buffer, open, payer, put_process};

const A: (u32, u32, &str) = (100, 10001, "/uid_10001/pid_100");
const B: (u32, u32, &str) = (200, 10002, "/uid_10002/pid_200");
const C: (u32, u32, &str) = (300, 10003, "/uid_10003/pid_300");

fn holds(proc_root: &std::path::Path, (pid, uid, cgroup): (u32, u32, &str), inodes: &[u64]) {
    let buffers: Vec<(u64, u64)> = inodes.iter().map(|i| (*i, 4096)).collect();
    put_process(proc_root, pid, uid, 1000, cgroup, &buffers);
}

#[test]
fn a_chain_of_handoffs_moves_the_charge_to_whoever_still_holds_the_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let proc_root = dir.path().join("proc");
    holds(&proc_root, A, &[7]);
    holds(&proc_root, B, &[]);
    holds(&proc_root, C, &[]);
    let a = open(&proc_root, None);
    a.charge(&Caller::new(A.0, A.1), &buffer(7), None).unwrap();

    // A → B: B receives the fd, A closes its own.
    holds(&proc_root, B, &[7]);
    assert!(a.reconcile().unwrap().moved.is_empty(), "A still holds it: A pays");
    holds(&proc_root, A, &[]);
    assert_eq!(a.reconcile().unwrap().moved, [7]);
    assert_eq!(payer(&a, 7), Some((B.0, B.2.into())));

    // B → C, and B lets go: C pays.
    holds(&proc_root, C, &[7]);
    holds(&proc_root, B, &[]);
    a.reconcile().unwrap();
    assert_eq!(payer(&a, 7), Some((C.0, C.2.into())));
    a.with_ledger(|l| l.check_invariants()).unwrap();
}

#[test]
fn a_buffer_shared_by_two_apps_goes_to_the_holder_the_one_payer_rule_picks() {
    let dir = tempfile::tempdir().unwrap();
    let proc_root = dir.path().join("proc");
    holds(&proc_root, A, &[7]);
    let a = open(&proc_root, None);
    a.charge(&Caller::new(A.0, A.1), &buffer(7), None).unwrap();
    // B and C both hold it when A lets go, and so does a platform process: an app pays, the
    // lowest pid of the apps holding an fd.
    holds(&proc_root, A, &[]);
    holds(&proc_root, C, &[7]);
    holds(&proc_root, B, &[7]);
    put_process(&proc_root, 50, 1000, 10, "/system/surfaceflinger", &[(7, 4096)]);
    assert_eq!(a.reconcile().unwrap().moved, [7]);
    assert_eq!(payer(&a, 7), Some((B.0, B.2.into())));
    // Every pass picks the same payer: nothing moves again.
    assert!(a.reconcile().unwrap().moved.is_empty());
}

#[test]
fn a_receiver_over_its_limit_leaves_the_charge_with_the_payer_and_the_refusal_is_visible() {
    let dir = tempfile::tempdir().unwrap();
    let proc_root = dir.path().join("proc");
    holds(&proc_root, A, &[7]);
    holds(&proc_root, B, &[]);
    let a = open(&proc_root, None);
    a.charge(&Caller::new(A.0, A.1), &buffer(7), None).unwrap();
    a.with_ledger_mut(|l| Ok(((), vec![l.set_limit("/uid_10002", "memcg", LimitKind::Max, 1024)?]))).unwrap();
    holds(&proc_root, B, &[7]);
    holds(&proc_root, A, &[]);

    let report = a.reconcile().unwrap();
    assert!(report.moved.is_empty(), "{report:?}");
    assert_eq!(report.handoffs_refused, [7]);
    assert_eq!(payer(&a, 7), Some((A.0, A.2.into())), "the payer keeps paying");
    let dump = chargetransfer::dump::render(&a);
    assert!(dump.contains("Handoffs refused") && dump.contains("buffer 7: to pid 200"), "{dump}");

    // Back under: the next pass moves it and forgets the refusal.
    a.with_ledger_mut(|l| Ok(((), vec![l.set_limit("/uid_10002", "memcg", LimitKind::Max, 1 << 20)?]))).unwrap();
    let report = a.reconcile().unwrap();
    assert_eq!((report.moved.as_slice(), report.handoffs_refused.as_slice()), (&[7][..], &[][..]));
    assert!(a.handoffs_refused().is_empty());
}

#[test]
fn an_apps_charge_is_never_handed_to_the_allocator() {
    let dir = tempfile::tempdir().unwrap();
    let proc_root = dir.path().join("proc");
    put_process(&proc_root, 300, 1003, 900, "/system/gralloc", &[(7, 4096)]);
    holds(&proc_root, A, &[]);
    let a = open(&proc_root, None);
    a.set_receipt_grace(Duration::from_secs(3600));
    a.charge(&Caller::new(300, 1003), &buffer(7), Some(A.0)).unwrap();
    // gralloc holds it, the app does not yet: within the grace period the app keeps paying.
    assert!(a.reconcile().unwrap().moved.is_empty());
    assert_eq!(payer(&a, 7), Some((A.0, A.2.into())));
    // Once the app held it the receipt is settled; when it later lets go while only gralloc
    // holds it, the app keeps paying: a platform process never takes an app's charge (else an
    // app could shed its buffers onto the allocator or the compositor by closing its fds).
    holds(&proc_root, A, &[7]);
    a.reconcile().unwrap();
    holds(&proc_root, A, &[]);
    assert!(a.reconcile().unwrap().moved.is_empty());
    assert_eq!(payer(&a, 7), Some((A.0, A.2.into())));
}
