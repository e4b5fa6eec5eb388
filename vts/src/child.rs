//! A client process under test: it runs as an app, SurfaceFlinger or allocator uid in its own
//! cgroup and obeys one-line commands on stdin, answering `ok ...` or `err CODE message`.
//! Buffers it receives from other children arrive over the control socket (SCM_RIGHTS), the way
//! binder would hand them over.

use std::io::{BufRead, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::time::Duration;

use chargetransfer::aidl::android::hardware::chargetransfer::{
    ChargeInfo::ChargeInfo, IChargeClient::{BnChargeClient, IChargeClient},
};
use chargetransfer::client::{Client, ClientError};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

struct Token;
impl rsbinder::Interface for Token {}
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

fn connect() -> Result<Client, ClientError> {
    match std::env::var_os("CT_RPC") {
        Some(socket) => Client::connect_rpc(std::path::Path::new(&socket)),
        None => Client::connect_binder(std::env::var("CT_BINDER").ok().as_deref(), Duration::from_secs(10)),
    }
}

fn receive(control: &OwnedFd) -> Result<OwnedFd, String> {
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
    let client = match connect() {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(out, "{}", refused(e));
            std::process::exit(2);
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
                    let fd = chargetransfer::kernel::dmabuf::alloc_from_heap(&heap, num(2) as u64).map_err(|e| format!("err 0 {e}"))?;
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
                    let fd = rustix::fs::memfd_create("ct-vts", rustix::fs::MemfdFlags::CLOEXEC).map_err(|e| e.to_string())?;
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
                "charge" => format!("ok {}", info(&client.charge(slot(1, &slots)?).map_err(refused)?)),
                "charge_for" => format!("ok {}", info(&client.charge_for(slot(1, &slots)?, num(2) as i32).map_err(refused)?)),
                "transfer" => format!("ok {}", info(&client.transfer(slot(1, &slots)?, num(2) as i32).map_err(refused)?)),
                "offer" => format!("ok {}", client.offer(slot(1, &slots)?, num(2) as i32, Duration::from_millis(num(3) as u64)).map_err(refused)?),
                "accept" => format!("ok {}", info(&client.accept(num(1), slot(2, &slots)?).map_err(refused)?)),
                "release" => {
                    client.release(num(1)).map_err(refused)?;
                    "ok".into()
                }
                "evict" | "restore" | "pin" | "unpin" => {
                    let svc = client.service();
                    let inode = num(1);
                    let r = match args[0] {
                        "evict" => svc.evict(inode),
                        "restore" => svc.restore(inode),
                        "pin" => svc.pin(inode),
                        _ => svc.unpin(inode),
                    };
                    r.map_err(|e| refused(e.into()))?;
                    "ok".into()
                }
                "register" => {
                    let token = BnChargeClient::new_binder(Token);
                    client.service().registerClient(&token.as_binder()).map_err(|e| refused(e.into()))?;
                    tokens.push(token);
                    "ok".into()
                }
                "reconcile" => {
                    let r = client.service().reconcile().map_err(|e| refused(e.into()))?;
                    format!("ok {}", r.releasedInodes.len())
                }
                "exit" => std::process::exit(0),
                other => return Err(format!("err 0 unknown command {other:?}")),
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
