//! Issue 12's cases that need a /proc the guest cannot make (a recycled pid, a restart into a
//! recycled pid): the accountant over a fixture /proc, with a journal where it matters.

mod fixture;

use std::fs;

use chargetransfer::error::Error;
use chargetransfer::identity::Caller;
use fixture::{buffer, open, payer, put_process};

/// Case 3: the owner died and another uid's process got its pid before the reaper ran: it can
/// neither release nor offer the dead owner's charge, and its own first charge parks the old
/// charges on the dead app's cgroup instead of inheriting them.
#[test]
fn a_recycled_pid_inherits_nothing_of_the_dead_owner() {
    let dir = tempfile::tempdir().unwrap();
    let proc_root = dir.path().join("proc");
    put_process(&proc_root, 4242, 10001, 1000, "/uid_10001/pid_4242", &[(7, 4096)]);
    let a = open(&proc_root, None);
    a.charge(&Caller::new(4242, 10001), &buffer(7), None).unwrap();

    put_process(&proc_root, 4242, 10002, 9000, "/uid_10002/pid_4242", &[(8, 4096)]);
    let newcomer = Caller::new(4242, 10002);
    // The cached identity is read again: the fixture has no pidfds, so forget the cache.
    a.processes().forget(4242);
    assert!(matches!(a.release(&newcomer, 7), Err(Error::NotOwner { .. })));
    assert!(matches!(
        a.offer(&newcomer, &buffer(7), 1, std::time::Duration::from_secs(5)),
        Err(Error::NotOwner { .. } | Error::InvalidArgument(_) | Error::NoSuchProcess(_))
    ));
    a.charge(&newcomer, &buffer(8), None).unwrap();
    assert_eq!(payer(&a, 7), Some((0, "/uid_10001".into())), "the dead app's cgroup keeps paying");
    assert_eq!(payer(&a, 8), Some((4242, "/uid_10002/pid_4242".into())));
}

/// Case 4: across a restart, a pid recorded as an owner now belongs to a new process — of
/// another uid, or of the same uid (told apart by the start time the journal records): the
/// charge stays with the dead owner's app, and the newcomer neither owns nor can release it.
#[test]
fn after_a_restart_a_recycled_pid_does_not_own_the_dead_owners_charge() {
    for newcomer_uid in [10002, 10001] {
        let dir = tempfile::tempdir().unwrap();
        let (proc_root, state) = (dir.path().join("proc"), dir.path().join("state"));
        put_process(&proc_root, 4242, 10001, 1000, "/uid_10001/pid_4242", &[(7, 4096)]);
        let a = open(&proc_root, Some(state.clone()));
        a.charge(&Caller::new(4242, 10001), &buffer(7), None).unwrap();
        drop(a);

        let cgroup = format!("/uid_{newcomer_uid}/pid_4242");
        put_process(&proc_root, 4242, newcomer_uid, 9000, &cgroup, &[]);
        let a = open(&proc_root, Some(state));
        assert_eq!(payer(&a, 7), Some((0, "/uid_10001".into())), "newcomer of uid {newcomer_uid}");
        assert!(matches!(a.release(&Caller::new(4242, newcomer_uid), 7), Err(Error::NotOwner { .. })));
    }
}

/// The same process, still running at the next restart, keeps its charge.
#[test]
fn after_a_restart_a_running_owner_keeps_its_charge() {
    let dir = tempfile::tempdir().unwrap();
    let (proc_root, state) = (dir.path().join("proc"), dir.path().join("state"));
    put_process(&proc_root, 4243, 10001, 1200, "/uid_10001/pid_4243", &[(9, 4096)]);
    open(&proc_root, Some(state.clone())).charge(&Caller::new(4243, 10001), &buffer(9), None).unwrap();
    let a = open(&proc_root, Some(state));
    assert_eq!(payer(&a, 9), Some((4243, "/uid_10001/pid_4243".into())));
    let refused = a.release(&Caller::new(4243, 10001), 9);
    assert!(matches!(refused, Err(Error::StillHeld { .. })), "the owner, refused only as a holder: {refused:?}");
}

/// Case 1: an owner cannot release a buffer it still holds (INVALID_STATE); once closed it can.
#[test]
fn releasing_a_held_buffer_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let proc_root = dir.path().join("proc");
    put_process(&proc_root, 100, 10001, 1000, "/uid_10001/pid_100", &[(7, 4096)]);
    let a = open(&proc_root, None);
    let app = Caller::new(100, 10001);
    a.charge(&app, &buffer(7), None).unwrap();
    let refused = a.release(&app, 7).unwrap_err();
    assert!(matches!(refused, Error::StillHeld { pid: 100, inode: 7 }), "{refused}");
    assert_eq!(
        refused.code(),
        chargetransfer::binder::aidl::vendor::chargetransfer::ErrorCode::ErrorCode::INVALID_STATE
    );
    assert_eq!(payer(&a, 7), Some((100, "/uid_10001/pid_100".into())));
    put_process(&proc_root, 100, 10001, 1000, "/uid_10001/pid_100", &[]);
    a.release(&app, 7).unwrap();
    assert_eq!(payer(&a, 7), None);
}

/// Case 5: on behalf of init, a kernel thread or the service itself is refused; a push whose
/// receiver never holds the buffer goes back to its maker after the grace period.
#[test]
fn on_behalf_charges_need_a_receiver_that_comes_to_hold_the_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let proc_root = dir.path().join("proc");
    put_process(&proc_root, 1, 0, 1, "/", &[]);
    put_process(&proc_root, 300, 1003, 900, "/system/gralloc", &[(7, 4096), (8, 4096)]);
    put_process(&proc_root, 100, 10001, 1000, "/uid_10001/pid_100", &[(8, 4096)]);
    put_process(&proc_root, 200, 10002, 1000, "/uid_10002/pid_200", &[]);
    let me = std::process::id();
    put_process(&proc_root, me, 1000, 1, "/system/chargetransfer", &[]);
    let kthread = proc_root.join("2");
    fs::create_dir_all(&kthread).unwrap();
    fs::write(kthread.join("stat"), "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0\n").unwrap();
    let a = open(&proc_root, None);
    a.set_receipt_grace(std::time::Duration::ZERO);
    let gralloc = Caller::new(300, 1003);
    for pid in [1, 2, me] {
        assert!(matches!(a.charge(&gralloc, &buffer(7), Some(pid)), Err(Error::InvalidArgument(_))), "pid {pid}");
    }
    a.charge(&gralloc, &buffer(7), Some(200)).unwrap();
    a.charge(&gralloc, &buffer(8), Some(100)).unwrap();
    let report = a.reconcile().unwrap();
    assert_eq!(report.moved, [7], "{report:?}");
    assert_eq!(payer(&a, 7), Some((300, "/system/gralloc".into())), "pid 200 never held buffer 7");
    assert_eq!(payer(&a, 8), Some((100, "/uid_10001/pid_100".into())), "pid 100 holds buffer 8");
}

/// A charge parked on a dead app's cgroup is released at the death of its last holder, not at
/// the next periodic reconcile.
#[test]
fn a_parked_charge_goes_when_its_last_holder_dies() {
    let dir = tempfile::tempdir().unwrap();
    let proc_root = dir.path().join("proc");
    put_process(&proc_root, 100, 10001, 1000, "/uid_10001/pid_100", &[(7, 4096)]);
    put_process(&proc_root, 200, 10002, 1000, "/uid_10002/pid_200", &[(7, 4096)]);
    let a = open(&proc_root, None);
    a.charge(&Caller::new(100, 10001), &buffer(7), None).unwrap();
    fs::remove_dir_all(proc_root.join("100")).unwrap();
    a.process_died(100).unwrap();
    assert_eq!(payer(&a, 7), Some((0, "/uid_10001".into())), "another app holds it: parked");
    fs::remove_dir_all(proc_root.join("200")).unwrap();
    assert_eq!(a.process_died(200).unwrap(), 1);
    assert_eq!(payer(&a, 7), None, "its last holder died: released");
}

/// A death notice for a process that no longer is the recorded owner of its pid (a stale token
/// of a recycled pid) changes nothing.
#[test]
fn a_stale_death_notice_leaves_the_current_owner_alone() {
    let dir = tempfile::tempdir().unwrap();
    let proc_root = dir.path().join("proc");
    put_process(&proc_root, 100, 10001, 1000, "/uid_10001/pid_100", &[(7, 4096)]);
    let a = open(&proc_root, None);
    a.charge(&Caller::new(100, 10001), &buffer(7), None).unwrap();
    let owner = a.process(100).unwrap();
    let earlier = chargetransfer::identity::Process { start_time: 400, ..owner.clone() };
    assert_eq!(a.process_exited(&earlier).unwrap(), 0);
    assert_eq!(payer(&a, 7), Some((100, "/uid_10001/pid_100".into())));
    fs::remove_dir_all(proc_root.join("100")).unwrap();
    assert_eq!(a.process_exited(&owner).unwrap(), 1);
    assert_eq!(payer(&a, 7), None);
}
