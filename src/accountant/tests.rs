//! The accountant as a whole over a fake /proc: hand-over after death, vram eviction and pins.

use super::*;
use std::path::Path;

use crate::journal::Durability;
use crate::kernel::dmabuf::DmaBufInfo;
use crate::ledger::{Event, Inode, LedgerError, LimitKind};

/// A process in a fake /proc holding `buffers` (inode, size) of the system heap by fd.
fn put_process(proc_root: &Path, pid: u32, uid: u32, cgroup: &str, buffers: &[(Inode, u64)]) {
    let dir = proc_root.join(pid.to_string());
    std::fs::create_dir_all(dir.join("fdinfo")).unwrap();
    std::fs::write(dir.join("status"), format!("Name:\tapp\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")).unwrap();
    std::fs::write(dir.join("cgroup"), format!("0::{cgroup}\n")).unwrap();
    std::fs::write(
        dir.join("stat"),
        format!("{pid} (app) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {} 0 0\n", 1000 + pid),
    )
    .unwrap();
    std::fs::write(dir.join("maps"), "").unwrap();
    for (fd, (inode, size)) in buffers.iter().enumerate() {
        let info = format!(
            "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t{inode}\nsize:\t{size}\ncount:\t1\nexp_name:\tsystem\n"
        );
        std::fs::write(dir.join("fdinfo").join((fd + 3).to_string()), info).unwrap();
    }
}

/// An accountant with the embedded policy over the fake /proc at `proc_root`, scanning it,
/// in memory only.
fn over(proc_root: &Path) -> Accountant {
    let config = Config {
        proc_root: proc_root.to_path_buf(),
        cgroup_root: None,
        state_dir: None,
        durability: Durability::None,
        pidfds: false,
        scan: crate::kernel::ScanChoice::Procfs,
    };
    Accountant::open(config, Policy::embedded_default()).unwrap()
}

#[test]
fn a_charge_parked_on_the_dead_owners_app_cgroup_stays_there_across_reconciles() {
    let dir = tempfile::tempdir().unwrap();
    let proc_root = dir.path().join("proc");
    // App 10001's pid 100 pays for buffer 7; another app's pid 200 holds it too.
    put_process(&proc_root, 100, 10001, "/uid_10001/pid_100", &[(7, 4096)]);
    put_process(&proc_root, 200, 10002, "/uid_10002/pid_200", &[(7, 4096)]);
    let accountant = over(&proc_root);
    let buffer = DmaBufInfo { inode: 7, size: 4096, exporter: "system".into(), name: None };
    accountant.charge(&Caller::new(100, 10001), &buffer, None).unwrap();
    let payer = || accountant.charges(0).first().map(|b| (b.pid, b.cgroup.clone()));
    let parked = Some((0, "/uid_10001".to_string()));

    std::fs::remove_dir_all(proc_root.join("100")).unwrap();
    assert_eq!(accountant.reconcile().unwrap().moved, [7]);
    assert_eq!(payer(), parked, "no process of the app holds it: the app's cgroup pays, not the other app");
    for _ in 0..2 {
        let report = accountant.reconcile().unwrap();
        assert!(report.moved.is_empty(), "{report:?}");
        assert_eq!(payer(), parked, "a parked charge must not climb a level per pass");
    }
    // A process of the same app that holds the buffer takes the charge back.
    put_process(&proc_root, 300, 10001, "/uid_10001/pid_300", &[(7, 4096)]);
    assert_eq!(accountant.reconcile().unwrap().moved, [7]);
    assert_eq!(payer(), Some((300, "/uid_10001/pid_300".to_string())));
}

/// Threads of `pid` in a fake /proc (task/TID/stat), each exiting (PF_EXITING) or not; an
/// exiting process has lost its fds (the kernel drops the fd table before the pidfd reports the
/// exit).
fn put_threads(proc_root: &Path, pid: u32, threads: &[(u32, bool)]) {
    for &(tid, exiting) in threads {
        let dir = proc_root.join(format!("{pid}/task/{tid}"));
        std::fs::create_dir_all(&dir).unwrap();
        let flags = if exiting { 0x404044 } else { 0x400040 };
        std::fs::write(dir.join("stat"), format!("{tid} (app) S 1 1 1 0 -1 {flags} 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0\n"))
            .unwrap();
    }
}

/// A payer whose every thread is exiting has lost its fds to the exit before its pidfd says it is
/// gone: reconcile settles its charge by the death rule (parked on its app, which no process of
/// holds it any more), not by the let-go rule (to the other app holding it) — the outcome must not
/// depend on a scan landing during the exit. A process whose main thread exited while another
/// runs is alive: when it closes the buffer, the let-go rule applies.
#[test]
fn an_exiting_payers_charge_follows_the_death_rule_not_the_let_go_rule() {
    for (threads, payer) in [
        (&[(100, true), (101, true)][..], (0, "/uid_10001")),
        (&[(100, true), (101, false)][..], (200, "/uid_10002/pid_200")),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let proc_root = dir.path().join("proc");
        put_process(&proc_root, 100, 10001, "/uid_10001/pid_100", &[(7, 4096)]);
        put_process(&proc_root, 200, 10002, "/uid_10002/pid_200", &[(7, 4096)]);
        let accountant = over(&proc_root);
        let buffer = DmaBufInfo { inode: 7, size: 4096, exporter: "system".into(), name: None };
        accountant.charge(&Caller::new(100, 10001), &buffer, None).unwrap();

        std::fs::remove_file(proc_root.join("100/fdinfo/3")).unwrap();
        put_threads(&proc_root, 100, threads);
        assert_eq!(accountant.reconcile().unwrap().moved, [7], "{threads:?}");
        let now = accountant.charges(0).first().map(|b| (b.pid, b.cgroup.clone()));
        assert_eq!(now, Some((payer.0, payer.1.to_string())), "{threads:?}");
    }
}

/// Under the SELinux rule the context decides: gralloc's uid in an app's context may not charge
/// on another's behalf (and the refusal changes nothing); in gralloc's context it may.
#[test]
fn with_selinux_the_callers_context_not_its_uid_decides_an_on_behalf_charge() {
    let dir = tempfile::tempdir().unwrap();
    let proc_root = dir.path().join("proc");
    put_process(&proc_root, 100, 10001, "/uid_10001/pid_100", &[(7, 4096)]);
    put_process(&proc_root, 200, 1003, "/system/gralloc", &[(7, 4096)]);
    let accountant = over(&proc_root);
    accountant.set_trust_rule(TrustRule::Contexts);
    let buffer = DmaBufInfo { inode: 7, size: 4096, exporter: "system".into(), name: None };
    let gralloc_as = |context: &str| Caller { pid: 200, uid: 1003, context: Some(context.into()) };

    let refused = accountant.charge(&gralloc_as("u:r:untrusted_app:s0:c512,c768"), &buffer, Some(100));
    assert!(matches!(refused, Err(Error::NotTrusted { uid: 1003, .. })), "{refused:?}");
    assert!(accountant.charges(0).is_empty());
    let no_context = Caller { pid: 200, uid: 1003, context: None };
    assert!(matches!(accountant.charge(&no_context, &buffer, Some(100)), Err(Error::NotTrusted { .. })));

    let b = accountant.charge(&gralloc_as("u:r:hal_graphics_allocator_default:s0"), &buffer, Some(100)).unwrap();
    assert_eq!((b.pid, b.cgroup.as_str()), (100, "/uid_10001/pid_100"));
}

/// Eviction reported by the GPU driver's userspace (trusted, uid 1003 in the shipped policy): the *owner's* memcg
/// pays for the evicted bytes, never the reporter's; a restore over the owner's dmem max is
/// refused and the buffer stays evicted; pins count against the pin limit; untrusted apps
/// cannot report any of it.
#[test]
fn eviction_charges_the_owner_not_the_reporter_and_restore_respects_dmem_max() {
    const MIB: u64 = 1 << 20;
    let vram = "drm/0000:03:00.0/vram0";
    let dir = tempfile::tempdir().unwrap();
    let proc_root = dir.path().join("proc");
    put_process(&proc_root, 100, 10001, "/uid_10001/pid_100", &[]);
    put_process(&proc_root, 500, 1003, "/system/gpu", &[]);
    let accountant = over(&proc_root);
    let (app, driver) = (Caller::new(100, 10001), Caller::new(500, 1003));
    accountant
        .apply_events(vec![
            Event::RegionAdded { region: vram.into(), capacity: 1 << 30 },
            Event::HeapAdded {
                heap: crate::ledger::HeapSpec {
                    name: "vram".into(),
                    class: crate::ledger::HeapClass::Vram,
                    region: Some(vram.into()),
                },
                enforce: true,
            },
        ])
        .unwrap();
    let buffer = DmaBufInfo { inode: 9, size: 64 * MIB, exporter: "vram".into(), name: None };
    accountant.charge(&app, &buffer, None).unwrap();
    let usage = |cg: &str, pool: &str| accountant.with_ledger(|l| l.counter(cg, pool).map_or(0, |c| c.usage));

    assert!(matches!(accountant.evict(&app, 9), Err(Error::NotTrusted { .. })));
    accountant.evict(&driver, 9).unwrap();
    assert_eq!((usage("/uid_10001/pid_100", "memcg"), usage("/uid_10001/pid_100", vram)), (64 * MIB, 0));
    assert_eq!(usage("/system/gpu", "memcg"), 0, "the reporter never pays");

    accountant.with_ledger_mut(|l| Ok(((), vec![l.set_limit("/uid_10001", vram, LimitKind::Max, 32 * MIB)?]))).unwrap();
    assert!(matches!(accountant.restore(&driver, 9), Err(Error::Ledger(LedgerError::OverLimit { .. }))));
    assert!(accountant.charges(0)[0].evicted, "a refused restore leaves it evicted");
    accountant
        .with_ledger_mut(|l| Ok(((), vec![l.set_limit("/uid_10001", vram, LimitKind::Max, crate::ledger::UNLIMITED)?])))
        .unwrap();
    accountant.restore(&driver, 9).unwrap();
    assert_eq!((usage("/uid_10001/pid_100", "memcg"), usage("/uid_10001/pid_100", vram)), (0, 64 * MIB));

    accountant
        .with_ledger_mut(|l| Ok(((), vec![l.set_limit("/uid_10001", vram, LimitKind::PinMax, 16 * MIB)?])))
        .unwrap();
    assert!(matches!(accountant.pin(&driver, 9, true), Err(Error::Ledger(LedgerError::OverPinLimit { .. }))));
    assert_eq!(accountant.eviction_advice(vram, MIB).unwrap(), [9]);
    accountant.with_ledger(|l| l.check_invariants()).unwrap();
}
