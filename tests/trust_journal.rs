//! Case 2 of issue 12, alone in its test binary because it lowers the process's file-size limit:
//! a journal that cannot be written makes the change fail and changes nothing, in memory or on
//! disk; later changes fail loudly, queries keep working, and the dump says why.

use std::fs;
use std::path::Path;

use chargetransfer::accountant::{Accountant, Config};
use chargetransfer::error::Error;
use chargetransfer::identity::Caller;
use chargetransfer::journal::{Durability, Journal};
use chargetransfer::kernel::DmaBufInfo;
use chargetransfer::policy::Policy;
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

fn put_process(proc_root: &Path, pid: u32, uid: u32) {
    let dir = proc_root.join(pid.to_string());
    fs::create_dir_all(dir.join("fdinfo")).unwrap();
    fs::write(dir.join("status"), format!("Name:\tapp\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")).unwrap();
    fs::write(dir.join("cgroup"), format!("0::/uid_{uid}/pid_{pid}\n")).unwrap();
    fs::write(dir.join("stat"), format!("{pid} (app) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 1000 0 0\n")).unwrap();
    fs::write(dir.join("maps"), "").unwrap();
}

fn buffer(inode: u64) -> DmaBufInfo {
    DmaBufInfo { inode, size: 4096, exporter: "system".into(), name: None }
}

#[test]
fn a_journal_that_cannot_be_written_changes_nothing_and_fails_every_later_change() {
    // Past the limit a write fails with EFBIG instead of the process dying of SIGXFSZ.
    signal_hook::flag::register(signal_hook::consts::SIGXFSZ, std::sync::Arc::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (proc_root, state) = (dir.path().join("proc"), dir.path().join("state"));
    put_process(&proc_root, 100, 10001);
    let policy = Policy::from_json(r#"{"version": 1, "heaps": {"system": {"class": "system"}}}"#).unwrap();
    let config = Config {
        proc_root,
        cgroup_root: None,
        state_dir: Some(state.clone()),
        durability: Durability::None,
        pidfds: false,
        scan: chargetransfer::kernel::ScanChoice::Procfs,
    };
    let a = Accountant::open(config, policy).unwrap();
    let app = Caller::new(100, 10001);
    a.charge(&app, &buffer(1), None).unwrap();

    let largest = fs::read_dir(&state).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).max().unwrap();
    let unlimited = getrlimit(Resource::Fsize);
    setrlimit(Resource::Fsize, Rlimit { current: Some(largest), maximum: unlimited.maximum }).unwrap();
    let refused = a.charge(&app, &buffer(2), None).unwrap_err();
    let retried = a.charge(&app, &buffer(2), None).unwrap_err();
    let release = a.release(&app, 1).unwrap_err();
    setrlimit(Resource::Fsize, unlimited).unwrap();

    assert!(matches!(refused, Error::Internal(_)), "{refused}");
    assert!(matches!(retried, Error::Internal(_)), "the retry must fail loudly too: {retried}");
    assert!(matches!(release, Error::Internal(_)), "{release}");
    let inodes: Vec<u64> = a.charges(0).iter().map(|b| b.inode).collect();
    assert_eq!(inodes, [1], "nothing changed in memory");
    assert_eq!(a.uid_usage(10001).buffer_count, 1, "queries keep working");
    assert!(chargetransfer::dump::render(&a).contains("JOURNAL BROKEN"));
    drop(a);
    let (_, replayed, report) = Journal::open(&state, Durability::None).unwrap();
    assert_eq!(report.events_refused, 0, "{report:?}");
    let on_disk: Vec<u64> = replayed.buffers().map(|b| b.inode).collect();
    assert_eq!(on_disk, [1], "nothing changed on disk");
}
