//! The allocator's client library against the real service over the RPC transport, with the
//! service not started yet, stopped (SIGSTOP: a hung service), killed and started again. The host
//! has no dma-buf heap, so buffers here are memfds: every call reaches the service and is refused
//! NOT_DMA_BUF, which is enough to see when a call was answered, deferred or replayed. Real
//! dma-bufs, charged and caught up, are the lane's (vts/src/allocator_outage.rs).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chargetransfer::allocator::{AllocatorClient, Options, Stats, Transport, Unavailable};
use chargetransfer::binder::aidl::vendor::chargetransfer::ErrorCode::ErrorCode;
use rustix::fs::{memfd_create, MemfdFlags};

/// Generous: these tests check that a call comes back, never how fast.
const DEADLINE: Duration = Duration::from_millis(300);
const PATIENCE: Duration = Duration::from_secs(20);

struct Service {
    child: Option<Child>,
    socket: PathBuf,
    state: PathBuf,
    _dir: tempfile::TempDir,
}

impl Service {
    fn new() -> Service {
        let dir = tempfile::tempdir().unwrap();
        Service { child: None, socket: dir.path().join("ct.sock"), state: dir.path().join("state"), _dir: dir }
    }

    fn start(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_chargetransferd"))
            .args(["--rpc", self.socket.to_str().unwrap(), "--state-dir", self.state.to_str().unwrap()])
            .args(["--no-autoconfig", "--durability", "none"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        until(|| self.socket.exists(), "the service creates its socket");
    }

    fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
        let _ = std::fs::remove_file(&self.socket);
    }

    /// The process state letter from /proc/<pid>/stat (`T` once a SIGSTOP took effect).
    fn state(&self) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.as_ref()?.id())).ok()?;
        stat.rsplit_once(") ")?.1.chars().next()
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.as_ref().unwrap().id() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal(rustix::process::Signal::CONT);
            self.kill();
        }
    }
}

fn until(mut f: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn client(socket: &Path) -> AllocatorClient {
    AllocatorClient::start(Transport::Rpc(socket.to_path_buf()), Options { deadline: DEADLINE, ..Options::default() })
}

fn buffer() -> std::os::fd::OwnedFd {
    memfd_create("buffer", MemfdFlags::CLOEXEC).unwrap()
}

fn me() -> i32 {
    std::process::id() as i32
}

#[test]
fn a_charge_before_the_service_is_registered_is_deferred_and_replayed_once_it_is() {
    let mut svc = Service::new();
    let client = client(&svc.socket);
    let b = buffer();
    let answer = client.charge_on_behalf(&b, me()).unwrap();
    assert_eq!(answer.unavailable(), Some(Unavailable::NotConnected));
    assert_eq!(client.pending(), 1);

    svc.start();
    until(|| client.connected() && client.pending() == 0, "the deferred charge is replayed");
    let stats = client.stats();
    // The replay reached the service, which refused the memfd: the entry is dropped, not retried.
    assert_eq!(
        Stats { calls: 1, deferred: 1, dropped_refused: 1, connects: 1, ..Stats::default() },
        stats,
        "{stats:?}"
    );
    let refusal = client.charge_on_behalf(&b, me()).unwrap_err();
    assert_eq!(refusal.code(), Some(ErrorCode::NOT_DMA_BUF), "connected: the service's own answer");
}

#[test]
fn a_hung_service_never_holds_the_caller_beyond_the_deadline() {
    let mut svc = Service::new();
    svc.start();
    let client = client(&svc.socket);
    until(|| client.connected(), "the client connects in the background");
    svc.signal(rustix::process::Signal::STOP);
    until(|| svc.state() == Some('T'), "the service is stopped");
    let b = buffer();
    let mut reasons = Vec::new();
    for _ in 0..6 {
        let started = Instant::now();
        reasons.push(client.charge_on_behalf(&b, me()).unwrap().unavailable());
        assert!(
            started.elapsed() < PATIENCE / 2,
            "a call to a stopped service came back only after {:?}",
            started.elapsed()
        );
    }
    // Four call workers wait in the stopped service; later calls do not queue behind them.
    assert_eq!(reasons[..4], [Some(Unavailable::DeadlinePassed); 4]);
    assert_eq!(reasons[4..], [Some(Unavailable::Busy); 2]);
    // Queued once (the connector may already be replaying it into the stopped service too).
    assert!((1..=2).contains(&client.pending()), "{} deferred charges for one buffer", client.pending());

    svc.signal(rustix::process::Signal::CONT);
    until(|| client.pending() == 0, "the deferred charge is replayed after the service resumes");
    until(|| client.charge_on_behalf(&b, me()).is_err(), "the workers are free again and the service answers");
}

#[test]
fn a_killed_service_is_reconnected_in_the_background() {
    let mut svc = Service::new();
    svc.start();
    let client = client(&svc.socket);
    until(|| client.connected(), "the client connects in the background");
    assert_eq!(client.release(12345).unwrap_err().code(), Some(ErrorCode::NOT_CHARGED));

    svc.kill();
    let b = buffer();
    let why = client.charge_on_behalf(&b, me()).unwrap().unavailable();
    assert!(matches!(why, Some(Unavailable::Died | Unavailable::NotConnected)), "{why:?}");
    assert!(client.release(12345).unwrap().unavailable().is_some(), "nothing to answer while it is down");

    svc.start();
    until(|| client.connected() && client.pending() == 0, "reconnected and replayed");
    assert_eq!(client.release(12345).unwrap_err().code(), Some(ErrorCode::NOT_CHARGED));
    assert!(client.stats().connects >= 2, "{:?}", client.stats());
}
