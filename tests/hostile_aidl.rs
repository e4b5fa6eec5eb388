//! Hostile binder calls: random call sequences against the real `chargetransferd` over RPC —
//! random methods, random arguments, fds of every kind the host can make, raw parcels with random
//! contents, and a fixture /proc that changes under the service between calls.
//!
//! `HOSTILE_SERVICE_LOG=info` raises the services' log level; `HOSTILE_DEBUG=1` prints what a
//! reconcile changed while the final check waits for it to settle.

mod hostile;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

use chargetransfer::binder::aidl::vendor::chargetransfer::ErrorCode::ErrorCode;
use chargetransfer::binder::aidl::vendor::chargetransfer::IChargeClient::{BnChargeClient, IChargeClient};
use chargetransfer::binder::aidl::vendor::chargetransfer::IChargeTransfer::IChargeTransfer;
use chargetransfer::client::{Client, ClientError};
use chargetransfer::kernel::fake_proc::{dmabuf_fdinfo, plain_fdinfo, FakeProc, FakeProcess};
use chargetransfer::kernel::{self};
use chargetransfer::ledger::BufferInfo;
use chargetransfer::policy::Policy;

use hostile::*;

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
struct FixtureProcess {
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
    proc: FakeProc,
    cgroup_root: PathBuf,
    trusted_policy: PathBuf,
    untrusted_policy: PathBuf,
    me: u32,
    procs: BTreeMap<u32, FixtureProcess>,
    variants: BTreeSet<usize>,
    variant: usize,
    /// Sizes fixture processes were said to hold each inode at: the service's catch-up charges a
    /// held, uncharged buffer at the size its holder's fdinfo shows.
    held_sizes: BTreeMap<u64, BTreeSet<u64>>,
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
            proc: FakeProc::new(proc_root),
            cgroup_root,
            trusted_policy,
            untrusted_policy,
            me: std::process::id(),
            procs: BTreeMap::new(),
            variants: BTreeSet::new(),
            variant: usize::MAX,
            held_sizes: BTreeMap::new(),
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
            self.proc.root().display().to_string(),
            "--cgroup-root".into(),
            self.cgroup_root.display().to_string(),
            "--policy".into(),
            base,
            "--policy".into(),
            over.display().to_string(),
        ]
    }

    fn pid_dir(&self, pid: u32) -> PathBuf {
        self.proc.pid_dir(pid)
    }

    /// A process appears (or a pid is recycled: same pid, new start time).
    fn spawn(&mut self, pid: u32, uid: u32, cgroup: &str, start: u64) {
        let process = FakeProcess { comm: "fake", ..FakeProcess::new(pid, uid, cgroup, start) };
        self.proc.spawn(&process).unwrap();
        self.procs.insert(pid, FixtureProcess { cgroup: cgroup.to_string(), start });
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
        let dir = self.proc.root().join(format!("fdinfo-variants/{v}"));
        if self.variants.insert(v) {
            let text = match v.checked_sub(EXPORTERS.len() * SIZES.len()) {
                None => dmabuf_fdinfo(None, SIZES[v % SIZES.len()], 2, EXPORTERS[v / SIZES.len()], None),
                Some(0) => plain_fdinfo(3),
                Some(1) => "pos:\t0\nexp_name:\tsystem\n".to_string(),
                Some(_) => dmabuf_fdinfo(Some(1), "8192", 2, "system", Some("name:\tsize:\t1")),
            };
            fs::create_dir_all(&dir).unwrap();
            for fd in 0..FD_SPAN {
                fs::write(dir.join(fd.to_string()), &text).unwrap();
            }
        }
        let link = self.proc.root().join("self/fdinfo");
        let tmp = self.proc.root().join("self/fdinfo.tmp");
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
                self.held_sizes.entry(ino).or_default().insert(*size);
                let n = 10 + fd.index(64);
                let _ = fs::write(
                    self.pid_dir(pid).join(format!("fdinfo/{n}")),
                    dmabuf_fdinfo(Some(ino), size, 2, "system", None),
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
            self.held_sizes.entry(ino).or_default().insert(4096);
            let _ = fs::write(
                self.pid_dir(me).join(format!("fdinfo/{}", 100 + i)),
                dmabuf_fdinfo(Some(ino), 4096, 2, "system", None),
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

    fn learn(&mut self, info: &chargetransfer::binder::aidl::vendor::chargetransfer::ChargeInfo::ChargeInfo) {
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
                            let caught_up = u64::try_from(info.size).is_ok_and(|size| {
                                self.fixture.held_sizes.get(&(info.inode as u64)).is_some_and(|s| s.contains(&size))
                            });
                            if info.size != wire && !caught_up {
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
                    // Another app's usage is for trusted callers only.
                    if lane == 1 || code != ErrorCode::NOT_TRUSTED {
                        return Err(format!("usage of uid {uid} refused: {}", chargetransfer::error::code_name(code)));
                    }
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
                // Any live process may be asked about by the trusted caller; one that exited
                // meanwhile is refused. The untrusted callers are refused everyone else's pids
                // and pids that name no process alike (no pid-existence oracle).
                let allowed: &[ErrorCode] = if SERVICE_NAMES[lane] == "trusted" {
                    &[ErrorCode::NO_SUCH_PROCESS]
                } else {
                    &[ErrorCode::NO_SUCH_PROCESS, ErrorCode::NOT_TRUSTED]
                };
                for pid in pids {
                    if let Err(code) = typed(s.getProcessUsage(pid), tally)? {
                        only(Err::<(), _>(code), allowed, "usage of a host process")?;
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
        // Only a trusted caller sees the device-wide totals; the untrusted one sees its own uid.
        if lane == 1 {
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
        // Kept open on purpose: a pidfd per cached process and the usage counters of the
        // fixture's few cgroups; a leak of received fds over thousands of calls is far more.
        assert!(
            fds <= l.fds_start + 32,
            "{}: fds grew from {} to {fds}; received fds leak?",
            l.daemon.name,
            l.fds_start
        );
    }
    w.fixture.restore_me(&w.pool);
    let mut journaled = Vec::new();
    // The fixture service whose caller sees every charge (the host one never charges anything;
    // the untrusted one's listCharges shows its own uid only, so it cannot be compared whole).
    for (lane, name) in SERVICE_NAMES.iter().enumerate().skip(1).take(1) {
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

// =====================================================================================
// Directed regressions for what the AIDL harness found.
// =====================================================================================

/// A fixture /proc for the accountant: `(pid, uid, cgroup, held inodes)`.
fn accountant_proc(root: &Path, procs: &[(u32, u32, &str, &[u64])]) {
    let fake = FakeProc::new(root);
    for (pid, uid, cgroup, held) in procs {
        fake.spawn(&FakeProcess::new(*pid, *uid, cgroup, 1000 + u64::from(*pid))).unwrap();
        for (fd, inode) in (3..).zip(held.iter()) {
            fake.put_fd(*pid, fd, dmabuf_fdinfo(Some(*inode), 4096, 1, "system", None)).unwrap();
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
    use chargetransfer::identity::Caller;
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
        scan: chargetransfer::kernel::ScanChoice::Procfs,
    };
    let a = Accountant::open(config, policy).unwrap();
    let caller = Caller::new(100, 10001);
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
