//! A client process under test: it runs as an app, SurfaceFlinger or allocator uid in its own
//! cgroup and obeys one-line commands on stdin, answering `ok ...` or `err CODE message`.
//! Buffers it receives from other children arrive over the control socket (SCM_RIGHTS), the way
//! binder would hand them over.
//!
//! Like any client of a HAL that init restarts, a child survives the service's death: a call that
//! fails below the service (dead object, failed transaction) reconnects and is sent again. Every
//! call is safe to repeat — charging the same owner twice, a repeated transfer or release, all
//! leave the ledger as one call would, or refuse with a typed code.

use std::io::{BufRead, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chargetransfer::binder::aidl::vendor::chargetransfer::{ChargeInfo::ChargeInfo, IChargeClient::IChargeClient};
use chargetransfer::binder::{self, Interface, Status};
use chargetransfer::client::{Client, ClientError};
use chargetransfer::service::INSTANCE;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

struct Token;
impl Interface for Token {}
impl IChargeClient for Token {}

fn inode(fd: impl AsFd) -> u64 {
    rustix::fs::fstat(fd).map(|s| s.st_ino).unwrap_or(0)
}

fn info(c: &ChargeInfo) -> String {
    format!("{} {} {} {}", c.inode, c.size, c.ownerPid, c.ownerCgroup)
}

fn refused(e: ClientError) -> String {
    match e.code() {
        Some(code) => format!("err {} {}", code.0, e.to_string().replace('\n', " ")),
        None => format!("err 0 {}", e.to_string().replace('\n', " ")),
    }
}

/// How long a child waits for the service to come back before it gives up on a call.
const RECONNECT_WAIT: Duration = Duration::from_secs(20);
/// Reconnect-and-resend rounds per call: the service may be killed again while one is in flight.
const RESENDS: u32 = 5;

/// Reconnections since start, reported by `stats`.
static RECONNECTS: AtomicU64 = AtomicU64::new(0);

fn connect_once() -> Result<Client, ClientError> {
    match std::env::var_os("CT_RPC") {
        Some(socket) => Client::connect_rpc(std::path::Path::new(&socket)),
        None => {
            let instance = std::env::var("CT_INSTANCE").unwrap_or_else(|_| INSTANCE.to_string());
            Client::connect_instance(std::env::var("CT_BINDER").ok().as_deref(), &instance, Duration::from_secs(1))
        }
    }
}

/// Connects and pings until the service answers: a handle the service manager still holds for a
/// service that just died looks up fine but fails every call.
fn connect() -> Result<Client, ClientError> {
    let deadline = Instant::now() + RECONNECT_WAIT;
    loop {
        let last = match connect_once() {
            Ok(client) => match client.service().ping() {
                Ok(()) => return Ok(client),
                Err(e) => ClientError::from(e),
            },
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(last);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `call`; when it fails below the service (not a typed refusal), reconnects and sends it
/// again, at most [`RESENDS`] times.
fn retrying<T>(client: &mut Client, call: impl Fn(&Client) -> Result<T, ClientError>) -> Result<T, ClientError> {
    let mut resent = 0;
    loop {
        match call(client) {
            Err(ClientError::Binder(_)) if resent < RESENDS => {
                resent += 1;
                *client = connect()?;
                RECONNECTS.fetch_add(1, Ordering::Relaxed);
            }
            r => return r,
        }
    }
}

fn binder_call<T>(client: &mut Client, call: impl Fn(&Client) -> Result<T, Status>) -> Result<T, ClientError> {
    retrying(client, |c| call(c).map_err(ClientError::from))
}

/// Outcome counts of a flood: (accepted, typed refusals, untyped failures, first refusal code).
fn flood(n: i64, mut call: impl FnMut() -> Result<(), ClientError>) -> String {
    let (mut ok, mut typed, mut untyped, mut first) = (0, 0, 0, None);
    for _ in 0..n.max(0) {
        match call() {
            Ok(()) => ok += 1,
            Err(e) => match e.code() {
                Some(code) => {
                    typed += 1;
                    first.get_or_insert(code.0);
                }
                None => untyped += 1,
            },
        }
    }
    format!("ok {ok} {typed} {untyped} {}", first.unwrap_or(0))
}

/// `threads` threads calling `dumpState` (the heaviest call) back to back for `millis`:
/// returns "ok calls failures".
fn hog(client: &Client, threads: i64, millis: i64) -> String {
    let until = Instant::now() + Duration::from_millis(millis.max(0) as u64);
    let calls = AtomicU64::new(0);
    let failures = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, 256) {
            s.spawn(|| {
                while Instant::now() < until {
                    match client.service().dumpState() {
                        Ok(_) => calls.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failures.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
    });
    format!("ok {} {}", calls.into_inner(), failures.into_inner())
}

pub(crate) fn receive(control: &OwnedFd) -> Result<OwnedFd, String> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control_buf = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    rustix::net::recvmsg(control, &mut [IoSliceMut::new(&mut byte)], &mut control_buf, RecvFlags::CMSG_CLOEXEC)
        .map_err(|e| format!("recvmsg: {e}"))?;
    for msg in control_buf.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = msg {
            if let Some(fd) = fds.next() {
                return Ok(fd);
            }
        }
    }
    Err("no fd received".into())
}

/// The HAL connection, in a child that has one.
fn hal(client: &mut Option<Client>) -> Result<&mut Client, String> {
    client.as_mut().ok_or_else(|| "this child does not call the HAL (CT_NO_HAL)".to_string())
}

/// Runs the command loop until `exit` or end of input.
pub fn run() -> ! {
    let control_fd: i32 = std::env::var("CT_CONTROL_FD").ok().and_then(|v| v.parse().ok()).expect("CT_CONTROL_FD");
    // SAFETY: the orchestrator passed this fd number to us and nothing else owns it.
    let control = unsafe { OwnedFd::from_raw_fd(control_fd) };
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    let mut lines = stdin.lock().lines();
    // Wait until the orchestrator has moved us into our cgroup.
    let _ = lines.next();
    // Enter our SELinux domain before the binder device is opened: the driver takes the
    // caller's context from the credentials the device was opened with.
    if let Some(context) = std::env::var_os("CT_SECURITY_CONTEXT") {
        if let Err(e) = std::fs::write("/proc/thread-self/attr/current", context.as_encoded_bytes()) {
            let _ = writeln!(out, "err 0 cannot enter SELinux context {context:?}: {e}");
            std::process::exit(2);
        }
    }
    // An app that never calls the HAL (CT_NO_HAL): binder only for app-to-app transactions.
    let mut client = if std::env::var_os("CT_NO_HAL").is_some() {
        if let Err(e) = binder::open_driver(std::env::var("CT_BINDER").ok().as_deref(), 2) {
            let _ = writeln!(out, "err 0 binder: {e}");
            std::process::exit(2);
        }
        None
    } else {
        match connect() {
            Ok(c) => Some(c),
            Err(e) => {
                let _ = writeln!(out, "{}", refused(e));
                std::process::exit(2);
            }
        }
    };
    let _ = writeln!(out, "ok ready");
    let _ = out.flush();
    let mut slots: Vec<Option<OwnedFd>> = Vec::new();
    let mut tokens = Vec::new();
    for line in lines {
        let Ok(line) = line else { break };
        let args: Vec<&str> = line.split_whitespace().collect();
        let slot = |i: usize, slots: &Vec<Option<OwnedFd>>| -> Result<OwnedFd, String> {
            let n: usize = args.get(i).and_then(|s| s.parse().ok()).ok_or("bad slot")?;
            slots.get(n).and_then(|s| s.as_ref()).ok_or("empty slot")?.try_clone().map_err(|e| e.to_string())
        };
        let num = |i: usize| -> i64 { args.get(i).and_then(|s| s.parse().ok()).unwrap_or(-1) };
        let reply = (|| -> Result<String, String> {
            Ok(match args.first().copied().unwrap_or("") {
                "alloc" => {
                    let heap = std::path::Path::new("/dev/dma_heap").join(args.get(1).ok_or("heap?")?);
                    let fd = chargetransfer::kernel::alloc_from_heap(&heap, num(2) as u64)
                        .map_err(|e| format!("err 0 {e}"))?;
                    let ino = inode(&fd);
                    slots.push(Some(fd));
                    format!("ok {} {ino}", slots.len() - 1)
                }
                "recv" => {
                    let fd = receive(&control)?;
                    let ino = inode(&fd);
                    slots.push(Some(fd));
                    format!("ok {} {ino}", slots.len() - 1)
                }
                "memfd" => {
                    let fd = rustix::fs::memfd_create("ct-vts", rustix::fs::MemfdFlags::CLOEXEC)
                        .map_err(|e| e.to_string())?;
                    rustix::fs::ftruncate(&fd, 4096).map_err(|e| e.to_string())?;
                    slots.push(Some(fd));
                    format!("ok {}", slots.len() - 1)
                }
                "pipe" => {
                    let (r, _w) = rustix::pipe::pipe().map_err(|e| e.to_string())?;
                    slots.push(Some(r));
                    format!("ok {}", slots.len() - 1)
                }
                "fdnum" => {
                    let n: usize = args.get(1).and_then(|s| s.parse().ok()).ok_or("bad slot")?;
                    let fd = slots.get(n).and_then(|s| s.as_ref()).ok_or("empty slot")?;
                    format!("ok {}", std::os::fd::AsRawFd::as_raw_fd(fd))
                }
                "close" => {
                    let n: usize = args.get(1).and_then(|s| s.parse().ok()).ok_or("bad slot")?;
                    slots.get_mut(n).map(Option::take);
                    "ok".into()
                }
                "charge" => {
                    let fd = slot(1, &slots)?;
                    format!("ok {}", info(&retrying(hal(&mut client)?, |c| c.charge(&fd)).map_err(refused)?))
                }
                "charge_for" => {
                    let fd = slot(1, &slots)?;
                    format!(
                        "ok {}",
                        info(&retrying(hal(&mut client)?, |c| c.charge_for(&fd, num(2) as i32)).map_err(refused)?)
                    )
                }
                "alloc_charge" | "alloc_charge_for" => {
                    // Allocate and charge as one step: a buffer this child keeps is always
                    // charged; one the service refuses is freed at once.
                    let heap = std::path::Path::new("/dev/dma_heap").join(args.get(1).ok_or("heap?")?);
                    let fd = chargetransfer::kernel::alloc_from_heap(&heap, num(2) as u64)
                        .map_err(|e| format!("err 0 {e}"))?;
                    let charged = match args[0] {
                        "alloc_charge" => retrying(hal(&mut client)?, |c| c.charge(&fd)),
                        _ => retrying(hal(&mut client)?, |c| c.charge_for(&fd, num(3) as i32)),
                    };
                    let ino = charged.map_err(refused)?.inode;
                    slots.push(Some(fd));
                    format!("ok {} {ino}", slots.len() - 1)
                }
                "transfer" => {
                    let fd = slot(1, &slots)?;
                    format!(
                        "ok {}",
                        info(&retrying(hal(&mut client)?, |c| c.transfer(&fd, num(2) as i32)).map_err(refused)?)
                    )
                }
                "offer" => {
                    let fd = slot(1, &slots)?;
                    let ttl = Duration::from_millis(num(3) as u64);
                    format!(
                        "ok {}",
                        retrying(hal(&mut client)?, |c| c.offer(&fd, num(2) as i32, ttl)).map_err(refused)?
                    )
                }
                "accept" => {
                    let fd = slot(2, &slots)?;
                    format!("ok {}", info(&retrying(hal(&mut client)?, |c| c.accept(num(1), &fd)).map_err(refused)?))
                }
                "release" => {
                    retrying(hal(&mut client)?, |c| c.release(num(1))).map_err(refused)?;
                    "ok".into()
                }
                "ping" => {
                    binder_call(hal(&mut client)?, |c| c.service().ping()).map_err(refused)?;
                    "ok".into()
                }
                "spam_charge" => {
                    // Charges the same buffer over and over (each a no-op after the first), so
                    // that a kill lands mid-call.
                    let fd = slot(1, &slots)?;
                    let client = hal(&mut client)?;
                    for _ in 0..num(2).max(0) {
                        client.charge(&fd).map_err(refused)?;
                    }
                    "ok".into()
                }
                "offer_flood" => {
                    let fd = slot(1, &slots)?;
                    let ttl = Duration::from_millis(num(4) as u64);
                    let client = hal(&mut client)?;
                    flood(num(3), || client.offer(&fd, num(2) as i32, ttl).map(drop))
                }
                "register_flood" => {
                    let client = hal(&mut client)?;
                    flood(num(1), || {
                        let token = binder::new_client_token(Token);
                        client.service().registerClient(&token.as_binder())?;
                        tokens.push(token);
                        Ok(())
                    })
                }
                "hog" => hog(hal(&mut client)?, num(1), num(2)),
                "stats" => format!("ok {}", RECONNECTS.load(Ordering::Relaxed)),
                "evict" | "restore" | "pin" | "unpin" => {
                    let inode = num(1);
                    binder_call(hal(&mut client)?, |c| match args[0] {
                        "evict" => c.service().evict(inode),
                        "restore" => c.service().restore(inode),
                        "pin" => c.service().pin(inode),
                        _ => c.service().unpin(inode),
                    })
                    .map_err(refused)?;
                    "ok".into()
                }
                "register" => {
                    let token = binder::new_client_token(Token);
                    binder_call(hal(&mut client)?, |c| c.service().registerClient(&token.as_binder()))
                        .map_err(refused)?;
                    tokens.push(token);
                    "ok".into()
                }
                "reconcile" => {
                    let r = binder_call(hal(&mut client)?, |c| c.service().reconcile()).map_err(refused)?;
                    format!("ok {}", r.releasedInodes.len())
                }
                "uid_usage" => {
                    let u =
                        binder_call(hal(&mut client)?, |c| c.service().getUidUsage(num(1) as i32)).map_err(refused)?;
                    format!("ok {}", u.bufferBytes)
                }
                "process_usage" => {
                    let u = binder_call(hal(&mut client)?, |c| c.service().getProcessUsage(num(1) as i32))
                        .map_err(refused)?;
                    format!("ok {}", u.bufferBytes)
                }
                "list" => {
                    let all =
                        binder_call(hal(&mut client)?, |c| c.service().listCharges(num(1) as i32)).map_err(refused)?;
                    let inodes: Vec<String> = all.iter().map(|c| c.inode.to_string()).collect();
                    format!("ok {} {}", all.len(), inodes.join(" "))
                }
                "dump" => {
                    let d = binder_call(hal(&mut client)?, |c| c.service().dumpState()).map_err(refused)?;
                    format!("ok {}", if d.contains("Owners") { "full" } else { "own" })
                }
                "exit" => std::process::exit(0),
                other => match crate::allocator_outage::command(&args, &mut slots)
                    .or_else(|| crate::handoff_cases::command(&args, &mut slots))
                    .or_else(|| crate::memtrack_cases::command(&args))
                {
                    Some(reply) => reply?,
                    None => match crate::vram_cases::command(&args) {
                        Some(reply) => reply?,
                        None => return Err(format!("err 0 unknown command {other:?}")),
                    },
                },
            })
        })();
        let text = match reply {
            Ok(s) => s,
            Err(e) if e.starts_with("err ") => e,
            Err(e) => format!("err 0 {e}"),
        };
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }
    std::process::exit(0)
}
