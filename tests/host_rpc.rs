//! Host IPC tier: the real service binary over rsbinder's RPC transport on a unix socket (peer
//! credentials and fd passing), without a kernel binder driver. Kernel behaviour (dma-bufs,
//! binder, cgroups) is tested in the QEMU lanes; here: identity, typed refusals, queries.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chargetransfer::binder::aidl::vendor::chargetransfer::{ErrorCode::ErrorCode, IChargeTransfer};
use chargetransfer::client::{Client, ClientError};

struct Service {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(extra: &[&str]) -> Service {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ct.sock");
    let state = dir.path().join("state");
    let child = Command::new(env!("CARGO_BIN_EXE_chargetransferd"))
        .args([
            "--rpc",
            socket.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--no-autoconfig",
            "--durability",
            "none",
        ])
        .args(extra)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "service did not create {}", socket.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    Service { child, socket, _dir: dir }
}

fn connect(socket: &Path) -> Client {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect_rpc(socket) {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("connect: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn code(r: Result<impl std::fmt::Debug, ClientError>) -> ErrorCode {
    match r {
        Err(e) => e.code().unwrap_or_else(|| panic!("untyped error {e}")),
        Ok(v) => panic!("expected a refusal, got {v:?}"),
    }
}

#[test]
fn serves_version_hash_and_ping_over_rpc() {
    let svc = start(&[]);
    let client = connect(&svc.socket);
    let s = client.service();
    assert_eq!(s.getInterfaceVersion().unwrap(), IChargeTransfer::VERSION);
    assert_eq!(s.getInterfaceHash().unwrap(), IChargeTransfer::HASH);
    s.ping().unwrap();
}

#[test]
fn non_dma_buf_fds_are_refused_with_typed_errors() {
    let svc = start(&[]);
    let client = connect(&svc.socket);
    let memfd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    assert_eq!(code(client.charge(&memfd)), ErrorCode::NOT_DMA_BUF);
    let (r, _w) = rustix::pipe::pipe().unwrap();
    assert_eq!(code(client.charge(&r)), ErrorCode::NOT_DMA_BUF);
    let file = std::fs::File::open("/proc/self/status").unwrap();
    assert_eq!(code(client.charge(&file)), ErrorCode::NOT_DMA_BUF);
}

#[test]
fn bad_arguments_are_refused_not_panicked() {
    let svc = start(&[]);
    let client = connect(&svc.socket);
    let s = client.service();
    let memfd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    assert_eq!(code(client.release(-5)), ErrorCode::INVALID_ARGUMENT);
    assert_eq!(code(client.release(12345)), ErrorCode::NOT_CHARGED);
    assert_eq!(code(client.charge_for(&memfd, -1)), ErrorCode::INVALID_ARGUMENT);
    assert_eq!(code(client.accept(-1, &memfd)), ErrorCode::BAD_TICKET);
    assert_eq!(code(s.getCgroupUsage("relative/path").map_err(ClientError::from)), ErrorCode::INVALID_ARGUMENT);
    assert_eq!(code(s.evictionAdvice("no-such-region", 1).map_err(ClientError::from)), ErrorCode::NOT_TRUSTED);
    assert_eq!(code(s.getProcessUsage(0).map_err(ClientError::from)), ErrorCode::INVALID_ARGUMENT);
    // The service is still there after all of that.
    s.ping().unwrap();
}

/// The shipped policy trusts no uid this test runs as: the caller reads its own usage and the
/// regions, and its dump shows its own uid only.
#[test]
fn queries_answer_for_the_caller_and_the_tree() {
    let svc = start(&[]);
    let client = connect(&svc.socket);
    let s = client.service();
    let me = s.getProcessUsage(std::process::id() as i32).unwrap();
    assert!(me.cgroup.starts_with('/'), "{me:?}");
    assert_eq!(me.bufferCount, 0);
    let regions = s.getRegions().unwrap();
    assert!(regions.iter().any(|r| r.name == "memcg"), "{regions:?}");
    let dump = s.dumpState().unwrap();
    assert!(dump.contains("the full dump is for trusted callers") && !dump.contains("Owners"), "{dump}");
}

/// A policy that trusts the test's uid (no security context over RPC: the uid rule applies)
/// opens the diagnostics.
#[test]
fn a_trusted_uid_reads_the_dump_and_eviction_advice() {
    let dir = tempfile::tempdir().unwrap();
    let overlay = dir.path().join("trust-me.json");
    let uid = rustix::process::getuid().as_raw();
    std::fs::write(&overlay, format!(r#"{{"trusted": {{"uids": [{uid}]}}}}"#)).unwrap();
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/policy.json");
    let svc = start(&["--policy", shipped, "--policy", overlay.to_str().unwrap()]);
    let client = connect(&svc.socket);
    let s = client.service();
    let dump = s.dumpState().unwrap();
    assert!(dump.contains("Regions:") && dump.contains("Owners"), "{dump}");
    assert_eq!(code(s.evictionAdvice("no-such-region", 1).map_err(ClientError::from)), ErrorCode::INVALID_ARGUMENT);
}
