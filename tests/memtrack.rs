//! Issue 17 on the host: the memtrack HAL served from the ledger (through its binder stub,
//! in-process, so the caller is this test process) over a fixture /proc, and the trace counters
//! written after each committed change.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use chargetransfer::accountant::{Accountant, Config};
use chargetransfer::binder::aidl::android::hardware::memtrack::{
    IMemtrack::IMemtrack, MemtrackRecord as record, MemtrackType::MemtrackType,
};
use chargetransfer::binder::{self, Exception};
use chargetransfer::identity::Caller;
use chargetransfer::journal::Durability;
use chargetransfer::kernel::fake_proc::{dmabuf_fdinfo, FakeProc, FakeProcess};
use chargetransfer::kernel::DmaBufInfo;
use chargetransfer::memtrack::TraceCounters;
use chargetransfer::policy::Policy;
use chargetransfer::service::MemtrackService;

const APP: u32 = 4242;
const COMPOSITOR: u32 = 4243;

/// This process's uid is trusted, so the in-process caller may read any pid.
fn policy() -> Policy {
    let me = rustix::process::getuid().as_raw();
    Policy::from_json(&format!(
        r#"{{"version": 1, "trusted": {{"uids": [{me}]}}, "heaps": {{
            "system": {{"class": "system"}},
            "display": {{"class": "cma", "region": "cma/display"}},
            "secure": {{"class": "carveout", "region": "carveout/secure"}}}}}}"#
    ))
    .unwrap()
}

fn open(proc_root: &Path) -> Arc<Accountant> {
    let config = Config {
        proc_root: proc_root.to_path_buf(),
        cgroup_root: None,
        state_dir: None,
        durability: Durability::None,
        pidfds: false,
        scan: chargetransfer::kernel::ScanChoice::Procfs,
    };
    Arc::new(Accountant::open(config, policy()).unwrap())
}

fn buffer(inode: u64, size: u64, exporter: &str) -> DmaBufInfo {
    DmaBufInfo { inode, size, exporter: exporter.into(), name: None }
}

/// An app paying for a private system-heap buffer, a system-heap buffer the compositor also holds,
/// a CMA buffer and a carve-out buffer.
fn phone(dir: &Path) -> (FakeProc, Arc<Accountant>) {
    let proc = FakeProc::new(dir.join("proc"));
    proc.spawn(&FakeProcess::new(APP, 10001, "/uid_10001/pid_4242", 100)).unwrap();
    proc.spawn(&FakeProcess::new(COMPOSITOR, 1000, "/system/pid_4243", 50)).unwrap();
    for (fd, (inode, size, exporter)) in
        [(7, 4096, "system"), (8, 8192, "system"), (9, 16384, "display"), (10, 32768, "secure")].into_iter().enumerate()
    {
        proc.put_fd(APP, fd as u32 + 3, dmabuf_fdinfo(Some(inode), size, 1, exporter, None)).unwrap();
    }
    proc.put_fd(COMPOSITOR, 3, dmabuf_fdinfo(Some(8), 8192, 2, "system", None)).unwrap();
    let accountant = open(proc.root());
    let app = Caller::new(APP, 10001);
    for (inode, size, exporter) in
        [(7, 4096, "system"), (8, 8192, "system"), (9, 16384, "display"), (10, 32768, "secure")]
    {
        accountant.charge(&app, &buffer(inode, size, exporter), None).unwrap();
    }
    (proc, accountant)
}

fn graphics(memtrack: &dyn IMemtrack, pid: i32) -> Vec<(i32, i64)> {
    let mut got: Vec<(i32, i64)> =
        memtrack.getMemory(pid, MemtrackType::GRAPHICS).unwrap().iter().map(|r| (r.flags, r.sizeInBytes)).collect();
    got.sort();
    got
}

#[test]
fn get_memory_answers_a_pids_charged_bytes_per_pool_with_memtracks_flags() {
    let dir = tempfile::tempdir().unwrap();
    let (_proc, accountant) = phone(dir.path());
    let memtrack = binder::new_memtrack_service(MemtrackService::new(accountant, dir.path().join("sys")));
    let (unaccounted, private, shared) = (record::FLAG_SMAPS_UNACCOUNTED, record::FLAG_PRIVATE, record::FLAG_SHARED);
    let mut expected = vec![
        (unaccounted | private | record::FLAG_SYSTEM, 4096),
        (unaccounted | shared | record::FLAG_SYSTEM, 8192),
        (unaccounted | private | record::FLAG_SYSTEM, 16384),
        (unaccounted | private | record::FLAG_DEDICATED, 32768),
    ];
    expected.sort();
    assert_eq!(graphics(&*memtrack, APP as i32), expected);
    let total: i64 = expected.iter().map(|(_, b)| b).sum();
    assert_eq!(total, 4096 + 8192 + 16384 + 32768, "each buffer once: the CMA one is not counted in memcg too");
    assert!(graphics(&*memtrack, COMPOSITOR as i32).is_empty(), "holding is not paying");
    for other in [MemtrackType::OTHER, MemtrackType::GL, MemtrackType::MULTIMEDIA, MemtrackType::CAMERA] {
        assert!(memtrack.getMemory(APP as i32, other).unwrap().is_empty(), "{other:?}");
    }
    assert!(memtrack.getMemory(1, MemtrackType::GRAPHICS).unwrap().is_empty(), "AOSP's VTS asks for init");
    assert!(memtrack.getMemory(0, MemtrackType::GRAPHICS).unwrap().is_empty(), "pid 0 is nobody, not parked charges");
    assert!(memtrack.getMemory(99999, MemtrackType::GRAPHICS).unwrap().is_empty(), "no such process");
}

#[test]
fn bad_arguments_are_illegal_argument_exceptions_as_aosps_vts_expects() {
    let dir = tempfile::tempdir().unwrap();
    let (_proc, accountant) = phone(dir.path());
    let memtrack = binder::new_memtrack_service(MemtrackService::new(accountant, dir.path().join("sys")));
    for (pid, kind) in [(-1, MemtrackType::GRAPHICS), (1, MemtrackType(-1)), (1, MemtrackType(5))] {
        let status = memtrack.getMemory(pid, kind).unwrap_err();
        assert_eq!(binder::exception_of(&status), Some(Exception::IllegalArgument), "{pid} {kind:?}: {status:?}");
    }
}

#[test]
fn a_recycled_pid_gets_nothing_of_the_dead_owners_charges() {
    let dir = tempfile::tempdir().unwrap();
    let (proc, accountant) = phone(dir.path());
    let memtrack = binder::new_memtrack_service(MemtrackService::new(Arc::clone(&accountant), dir.path().join("sys")));
    proc.spawn(&FakeProcess::new(APP, 10002, "/uid_10002/pid_4242", 900)).unwrap();
    accountant.processes().forget(APP);
    assert!(graphics(&*memtrack, APP as i32).is_empty());
}

#[test]
fn gpu_device_info_lists_the_drm_cards_by_driver() {
    let dir = tempfile::tempdir().unwrap();
    let (_proc, accountant) = phone(dir.path());
    let card = dir.path().join("sys/class/drm/card0/device");
    std::fs::create_dir_all(&card).unwrap();
    std::fs::write(card.join("uevent"), "DRIVER=virtio_gpu\n").unwrap();
    let memtrack = binder::new_memtrack_service(MemtrackService::new(accountant, dir.path().join("sys")));
    let devices = memtrack.getGpuDeviceInfo().unwrap();
    assert_eq!(devices.iter().map(|d| (d.id, d.name.as_str())).collect::<Vec<_>>(), vec![(0, "virtio_gpu")]);
}

#[derive(Clone, Default)]
struct Marker(Arc<Mutex<Vec<String>>>);

impl Write for Marker {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().push(String::from_utf8_lossy(buf).into_owned());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn trace_counters_follow_each_committed_change_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let proc = FakeProc::new(dir.path().join("proc"));
    proc.spawn(&FakeProcess::new(APP, 10001, "/uid_10001/pid_4242", 100)).unwrap();
    proc.spawn(&FakeProcess::new(COMPOSITOR, 10002, "/uid_10002/pid_4243", 50)).unwrap();
    proc.put_fd(APP, 3, dmabuf_fdinfo(Some(7), 4096, 1, "system", None)).unwrap();
    let accountant = open(proc.root());
    let marker = Marker::default();
    accountant.set_trace_counters(Arc::new(TraceCounters::to(Box::new(marker.clone()), "trace_marker".into())));
    let app = Caller::new(APP, 10001);
    accountant.charge(&app, &buffer(7, 4096, "system"), None).unwrap();
    accountant.charge(&app, &buffer(8, 8192, "system"), None).unwrap();
    // Another app pushing its costs is refused: nothing changed, nothing is written.
    assert!(accountant.transfer(&Caller::new(COMPOSITOR, 10002), &buffer(7, 4096, "system"), APP).is_err());
    accountant.release(&app, 8).unwrap();
    assert_eq!(
        *marker.0.lock().unwrap(),
        vec![
            "C|4242|chargetransfer.charged_bytes|4096",
            "C|4242|chargetransfer.charged_bytes|12288",
            "C|4242|chargetransfer.charged_bytes|4096",
        ]
    );
}

#[test]
fn chargectl_top_prints_n_tables_against_the_service_over_rpc() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ct.sock");
    let mut service = std::process::Command::new(env!("CARGO_BIN_EXE_chargetransferd"))
        .args(["--rpc", socket.to_str().unwrap(), "--no-autoconfig", "--durability", "none", "--reconcile-secs", "0"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !socket.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chargectl"))
        .args(["--rpc", socket.to_str().unwrap(), "--wait", "20", "top", "-n", "2", "--delay", "0.1"])
        .output()
        .unwrap();
    let _ = service.kill();
    let _ = service.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "chargectl top failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.matches("graphics memory charged:").count(), 2, "{text}");
    assert_eq!(text.matches("APP").count(), 2, "{text}");
}
