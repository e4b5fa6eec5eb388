//! The handoff rule over real processes and dma-bufs: apps pass a buffer to each other and
//! neither calls the service. First with the fd copied into the receiver (pidfd_getfd) and an
//! explicit reconcile; then over real binder transactions between app processes that never
//! talk to the HAL (each serves a small binder object registered with the lane's service
//! manager), where the service learns of the sender's close from the kernel's events and the
//! receiver pays without anyone calling reconcile: the latency from the close is printed.
//! Last, the kernel fact the rule's exception for a dying payer rests on: when a process counts
//! as exiting.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use chargetransfer::binder::aidl::vendor::chargetransfer::{
    ChargeInfo::ChargeInfo, IChargeTransfer::IChargeTransfer, ReconcileReport::ReconcileReport, RegionInfo::RegionInfo,
    UsageReport::UsageReport,
};
use chargetransfer::binder::{self, BinderFeatures, Interface, ParcelFileDescriptor, SpIBinder, Status, Strong};
use chargetransfer::kernel::cgroupfs::DmemFile;
use chargetransfer::ledger::LimitKind;

use crate::cases::{charged_bytes_of, check, mem_accounting, owner_of, Outcome};
use crate::harness::{Child, Env, AID_GRAPHICS};

const MIB: u64 = 1 << 20;
/// How long a case waits for the event-driven handoff before it calls it missed.
const HANDOFF_DEADLINE: Duration = Duration::from_secs(10);
/// Time for the service's re-check after an app received a buffer (see [`received`]).
const RECEIPT_SETTLE: Duration = Duration::from_millis(300);

/// Says the case is skipped, and why, where app processes have no kernel binder between them
/// (the RPC transport).
fn skipped_without_kernel_binder(env: &Env) -> bool {
    let skip = env.rpc.is_some();
    if skip {
        println!("skipped: needs kernel binder between app processes");
    }
    skip
}

fn reconcile(env: &Env) -> Outcome {
    env.client.service().reconcile().map(drop).map_err(|e| format!("reconcile: {e:?}"))
}

fn pays(env: &Env, inode: u64, who: &Child) -> Outcome {
    let owner = owner_of(env, inode)?;
    check(owner == Some((who.pid as i32, who.cgroup.clone())), || {
        format!("buffer {inode} is paid by {owner:?}, expected pid {} in {}", who.pid, who.cgroup)
    })
}

pub fn a_buffer_apps_pass_on_is_paid_by_whoever_still_holds_it(env: &Env) -> Outcome {
    let mut a = env.spawn(10080, None)?;
    let mut b = env.spawn(10081, None)?;
    let mut c = env.spawn(10082, None)?;
    let (slot_a, inode) = a.alloc("system", MIB)?;
    a.ok(&format!("charge {slot_a}"))?;

    // A → B; A still holds it, so A pays.
    let slot_b = a.give(slot_a, &mut b)?;
    reconcile(env)?;
    pays(env, inode, &a)?;
    // A lets go: B pays (at the next reconcile at the latest), in the ledger and in B's usage.
    a.ok(&format!("close {slot_a}"))?;
    reconcile(env)?;
    pays(env, inode, &b)?;
    check(charged_bytes_of(env, a.pid)? == 0 && charged_bytes_of(env, b.pid)? == MIB as i64, || {
        format!("usage after the handoff: A {:?} B {:?}", charged_bytes_of(env, a.pid), charged_bytes_of(env, b.pid))
    })?;

    // B → C and B lets go: C pays.
    let slot_c = b.give(slot_b, &mut c)?;
    b.ok(&format!("close {slot_b}"))?;
    reconcile(env)?;
    pays(env, inode, &c)?;

    // C shares it with B and A again, then lets go: of the apps holding it the lowest pid pays.
    let back_b = c.give(slot_c, &mut b)?;
    let back_a = c.give(slot_c, &mut a)?;
    c.ok(&format!("close {slot_c}"))?;
    reconcile(env)?;
    let lowest = if a.pid < b.pid { &a } else { &b };
    pays(env, inode, lowest)?;
    a.ok(&format!("close {back_a}"))?;
    b.ok(&format!("close {back_b}"))?;
    reconcile(env)?;
    check(owner_of(env, inode)?.is_none(), || format!("buffer {inode} still charged after every holder let go"))
}

// ---- over binder, between apps that never call the HAL ----

/// The service manager name an app child serves its inbox under (not an IChargeTransfer
/// instance name: the suite's instance listing never sees it).
fn inbox_name(pid: u32) -> String {
    format!("vts.handoff/{pid}")
}

/// Buffers this child received over binder, until `take` moves them to its slots.
static INBOX: Mutex<Vec<OwnedFd>> = Mutex::new(Vec::new());

/// An app's binder object that keeps the dma-buf fds other apps send it. It speaks the
/// IChargeTransfer interface only as a carrier: `charge(fd)` is the one-way "here is a buffer"
/// of an app-to-app parcel (as a HardwareBuffer would travel); everything else is refused.
struct Inbox;

fn not_here() -> Status {
    binder::exception(binder::Exception::IllegalArgument, "an app's inbox, not the HAL".into())
}

impl Interface for Inbox {}

impl IChargeTransfer for Inbox {
    fn charge(&self, buffer: &ParcelFileDescriptor) -> binder::Result<ChargeInfo> {
        let fd = buffer.as_fd().try_clone_to_owned().map_err(|_| not_here())?;
        INBOX.lock().unwrap_or_else(PoisonError::into_inner).push(fd);
        Ok(ChargeInfo::default())
    }
    fn chargeOnBehalf(&self, _: &ParcelFileDescriptor, _: i32) -> binder::Result<ChargeInfo> {
        Err(not_here())
    }
    fn release(&self, _: i64) -> binder::Result<()> {
        Err(not_here())
    }
    fn transfer(&self, _: &ParcelFileDescriptor, _: i32) -> binder::Result<ChargeInfo> {
        Err(not_here())
    }
    fn offer(&self, _: &ParcelFileDescriptor, _: i32, _: i32) -> binder::Result<i64> {
        Err(not_here())
    }
    fn accept(&self, _: i64, _: &ParcelFileDescriptor) -> binder::Result<ChargeInfo> {
        Err(not_here())
    }
    fn registerClient(&self, _: &SpIBinder) -> binder::Result<()> {
        Err(not_here())
    }
    fn getProcessUsage(&self, _: i32) -> binder::Result<UsageReport> {
        Err(not_here())
    }
    fn getUidUsage(&self, _: i32) -> binder::Result<UsageReport> {
        Err(not_here())
    }
    fn getCgroupUsage(&self, _: &str) -> binder::Result<UsageReport> {
        Err(not_here())
    }
    fn listCharges(&self, _: i32) -> binder::Result<Vec<ChargeInfo>> {
        Err(not_here())
    }
    fn getRegions(&self) -> binder::Result<Vec<RegionInfo>> {
        Err(not_here())
    }
    fn evict(&self, _: i64) -> binder::Result<()> {
        Err(not_here())
    }
    fn restore(&self, _: i64) -> binder::Result<()> {
        Err(not_here())
    }
    fn pin(&self, _: i64) -> binder::Result<()> {
        Err(not_here())
    }
    fn unpin(&self, _: i64) -> binder::Result<()> {
        Err(not_here())
    }
    fn evictionAdvice(&self, _: &str, _: i64) -> binder::Result<Vec<i64>> {
        Err(not_here())
    }
    fn reconcile(&self) -> binder::Result<ReconcileReport> {
        Err(not_here())
    }
    fn autoconfigure(&self, _: bool, _: bool) -> binder::Result<String> {
        Err(not_here())
    }
    fn dumpState(&self) -> binder::Result<String> {
        Err(not_here())
    }
    fn ping(&self) -> binder::Result<()> {
        Ok(())
    }
}

/// The child's side: `serve` registers this child's inbox, `send SLOT PID` passes a buffer to
/// another child's inbox in a binder transaction, `take` moves a received buffer to a slot.
pub fn command(args: &[&str], slots: &mut Vec<Option<OwnedFd>>) -> Option<Result<String, String>> {
    Some(match args.first().copied()? {
        "serve" => {
            let inbox: Strong<dyn IChargeTransfer> = binder::new_service(Inbox, BinderFeatures::default());
            binder::add_service(&inbox_name(std::process::id()), inbox.as_binder()).map(|()| {
                binder::start_thread_pool();
                // The registration holds the object; this keeps the local handle alive too.
                std::mem::forget(inbox);
                "ok".to_string()
            })
        }
        "send" => (|| {
            let n: usize = args.get(1).and_then(|s| s.parse().ok()).ok_or("bad slot")?;
            let fd = slots.get(n).and_then(|s| s.as_ref()).ok_or("empty slot")?;
            let to: u32 = args.get(2).and_then(|s| s.parse().ok()).ok_or("pid?")?;
            let inbox = binder::check_interface::<dyn IChargeTransfer>(&inbox_name(to))?;
            let parcel = ParcelFileDescriptor::new(fd.try_clone().map_err(|e| e.to_string())?);
            inbox.charge(&parcel).map_err(|e| format!("send to {to}: {e:?}"))?;
            Ok("ok".to_string())
        })(),
        "take" => match INBOX.lock().unwrap_or_else(PoisonError::into_inner).pop() {
            Some(fd) => {
                let ino = rustix::fs::fstat(&fd).map(|s| s.st_ino).unwrap_or(0);
                slots.push(Some(fd));
                Ok(format!("ok {} {ino}", slots.len() - 1))
            }
            None => Err("nothing received".into()),
        },
        _ => return None,
    })
}

impl Child {
    fn serve(&mut self) -> Outcome {
        self.ok("serve").map(drop)
    }

    /// Sends the buffer in `slot` to `to` over binder; returns `to`'s slot for it.
    fn send_over_binder(&mut self, slot: usize, to: &mut Child) -> Result<usize, String> {
        self.ok(&format!("send {slot} {}", to.pid))?;
        to.ok("take")?[0].parse().map_err(|_| "slot".to_string())
    }
}

/// The heap the binder cases allocate from, and the kernel counter that shows its charge: the
/// CMA heap and dmem.current where the lane has them, the system heap and memory.current
/// otherwise.
fn heap() -> (&'static str, &'static str) {
    if std::path::Path::new("/dev/dma_heap/default_cma_region").exists() {
        ("default_cma_region", "dmem.current cma/reserved")
    } else {
        ("system", "memory.current")
    }
}

fn kernel_counter(env: &Env, cgroup: &str) -> Result<u64, String> {
    if heap().0 == "system" {
        return env.cgroup.memory(cgroup).map(|m| m.current).map_err(|e| e.to_string());
    }
    let map = env.cgroup.dmem(cgroup, DmemFile::Current).map_err(|e| e.to_string())?;
    Ok(map.get("cma/reserved").copied().unwrap_or(0))
}

/// Polls the service (never calling reconcile) until `who` pays for `inode`; returns how long
/// it took from `since`.
fn paid_within(env: &Env, inode: u64, who: &Child, since: Instant) -> Result<Duration, String> {
    loop {
        if owner_of(env, inode)? == Some((who.pid as i32, who.cgroup.clone())) {
            return Ok(since.elapsed());
        }
        if since.elapsed() > HANDOFF_DEADLINE {
            return Err(format!(
                "buffer {inode}: pid {} did not pay within {HANDOFF_DEADLINE:?} of the sender's close (paid by {:?}); {}",
                who.pid,
                owner_of(env, inode)?,
                handoff_mode(env)?
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn handoff_mode(env: &Env) -> Result<String, String> {
    let dump = env.client.service().dumpState().map_err(|e| format!("dumpState: {e:?}"))?;
    Ok(dump.lines().find(|l| l.starts_with("Handoffs follow:")).unwrap_or("Handoffs follow: (not in dumpState)").into())
}

/// Until the service has seen `app` holding what was charged on its behalf (its receipt settled:
/// the binder driver's fd_recv event from `app` starts that re-check), the charge stays with the
/// app whatever it does with the buffer; the cases let that re-check run before the app passes
/// the buffer on. Nothing observable says when it ran, hence the pause.
fn received() {
    std::thread::sleep(RECEIPT_SETTLE);
}

/// The allocator makes a buffer for `app`, charges it on the app's behalf and hands it over in a
/// binder transaction, as gralloc does; returns the app's slot and the inode.
fn allocate_for(gralloc: &mut Child, app: &mut Child, size: u64) -> Result<(usize, u64), String> {
    let (slot, inode) = gralloc.alloc(heap().0, size)?;
    gralloc.ok(&format!("charge_for {slot} {}", app.pid))?;
    let app_slot = gralloc.send_over_binder(slot, app)?;
    gralloc.ok(&format!("close {slot}"))?;
    received();
    Ok((app_slot, inode))
}

/// Two apps in their own cgroups, neither calling the HAL: A sends its buffer to B in a binder
/// transaction and closes it; B pays without anyone calling reconcile. The kernel's counter
/// stays where the kernel charged it at allocation (it cannot move a charge): the same total
/// before and after, nothing double-counted or lost; the service's usage moved from A to B.
pub fn an_app_that_sends_a_buffer_over_binder_and_closes_it_stops_paying(env: &Env) -> Outcome {
    if skipped_without_kernel_binder(env) {
        return Ok(());
    }
    println!("handoff: {}", handoff_mode(env)?);
    let mut gralloc = env.spawn(AID_GRAPHICS, None)?;
    let mut a = env.spawn_without_hal(10090)?;
    let mut b = env.spawn_without_hal(10091)?;
    a.serve()?;
    b.serve()?;
    let (slot_a, inode) = allocate_for(&mut gralloc, &mut a, MIB)?;
    pays(env, inode, &a)?;
    let _slot_b = a.send_over_binder(slot_a, &mut b)?;
    pays(env, inode, &a)?;
    let cgroups = [gralloc.cgroup.clone(), a.cgroup.clone(), b.cgroup.clone()];
    let kernel_before: Vec<u64> = cgroups.iter().map(|c| kernel_counter(env, c)).collect::<Result<_, _>>()?;

    let closed = Instant::now();
    a.ok(&format!("close {slot_a}"))?;
    let latency = paid_within(env, inode, &b, closed)?;
    let kernel_after: Vec<u64> = cgroups.iter().map(|c| kernel_counter(env, c)).collect::<Result<_, _>>()?;
    let (usage_a, usage_b) = (charged_bytes_of(env, a.pid)?, charged_bytes_of(env, b.pid)?);
    println!(
        "handoff over binder ({}): receiver pid {} paid {} ms after the sender's close (no reconcile); kernel {} \
         [allocator, A, B] before {kernel_before:?} after {kernel_after:?}; service usage A {usage_a} B {usage_b}",
        heap().0,
        b.pid,
        latency.as_millis(),
        heap().1
    );
    check(usage_a == 0 && usage_b == MIB as i64, || {
        format!("service usage after the handoff: A {usage_a} B {usage_b}")
    })?;
    check(kernel_before.iter().sum::<u64>() == kernel_after.iter().sum::<u64>() || heap().0 == "system", || {
        format!("the kernel's {} moved across the handoff: {kernel_before:?} → {kernel_after:?}", heap().1)
    })
}

/// A → B → C over binder, each sender closing its fd: the charge follows to C. Then a buffer A
/// sends to both B and C before it lets go: of the two holders (both with an fd) the lower pid
/// pays. All without a reconcile call.
pub fn a_chain_and_a_shared_buffer_over_binder_follow_the_holders(env: &Env) -> Outcome {
    if skipped_without_kernel_binder(env) {
        return Ok(());
    }
    let mut gralloc = env.spawn(AID_GRAPHICS, None)?;
    let mut a = env.spawn_without_hal(10092)?;
    let mut b = env.spawn_without_hal(10093)?;
    let mut c = env.spawn_without_hal(10094)?;
    for app in [&mut a, &mut b, &mut c] {
        app.serve()?;
    }
    let (slot_a, inode) = allocate_for(&mut gralloc, &mut a, MIB)?;
    let slot_b = a.send_over_binder(slot_a, &mut b)?;
    let closed = Instant::now();
    a.ok(&format!("close {slot_a}"))?;
    let first = paid_within(env, inode, &b, closed)?;
    let slot_c = b.send_over_binder(slot_b, &mut c)?;
    let closed = Instant::now();
    b.ok(&format!("close {slot_b}"))?;
    let second = paid_within(env, inode, &c, closed)?;
    c.ok(&format!("close {slot_c}"))?;

    let (slot_a, shared) = allocate_for(&mut gralloc, &mut a, MIB)?;
    a.send_over_binder(slot_a, &mut b)?;
    a.send_over_binder(slot_a, &mut c)?;
    let closed = Instant::now();
    a.ok(&format!("close {slot_a}"))?;
    let lowest = if b.pid < c.pid { &b } else { &c };
    let third = paid_within(env, shared, lowest, closed)?;
    println!(
        "handoff chain A→B→C over binder: B paid {} ms, C {} ms after each sender's close; shared by B and C: \
         pid {} (lower pid) paid {} ms after A's close",
        first.as_millis(),
        second.as_millis(),
        lowest.pid,
        third.as_millis()
    );
    Ok(())
}

/// The receiver is over its limit: the sender keeps paying and dumpState says why. Where the
/// service enforces the app's dma-buf budget (no mem_accounting) the receiver's own charges
/// fill it; where the kernel charges the system heap at allocation (mem_accounting) the
/// receiver's memory.max is lowered under its memory.current plus the buffer, which the kernel
/// charged to the allocator: the budget check an accept makes refuses the move.
pub fn a_receiver_over_its_limit_leaves_the_charge_with_the_sender(env: &Env) -> Outcome {
    if skipped_without_kernel_binder(env) {
        return Ok(());
    }
    let mut gralloc = env.spawn(AID_GRAPHICS, None)?;
    let mut a = env.spawn_without_hal(10095)?;
    let mut b = env.spawn_without_hal(10096)?;
    a.serve()?;
    b.serve()?;
    let level = format!("/uid_{}", b.uid);
    let (slot, inode) = gralloc.alloc("system", 4 * MIB)?;
    gralloc.ok(&format!("charge_for {slot} {}", a.pid))?;
    let slot_a = gralloc.send_over_binder(slot, &mut a)?;
    gralloc.ok(&format!("close {slot}"))?;
    received();
    let why = if mem_accounting() {
        let current = env.cgroup.memory(&level).map_err(|e| e.to_string())?.current;
        let max = (current + 3 * MIB).div_ceil(4096) * 4096;
        env.cgroup.write_memory_limit(&level, LimitKind::Max, max).map_err(|e| e.to_string())?;
        format!("{level} memory.max {max} (memory.current {current}; the kernel charged the buffer to the allocator)")
    } else {
        let (own, _) = gralloc.alloc("system", 14 * MIB)?;
        gralloc.ok(&format!("charge_for {own} {}", b.pid))?;
        gralloc.send_over_binder(own, &mut b)?;
        gralloc.ok(&format!("close {own}"))?;
        "the receiver already pays 14 of its 16 MiB dma-buf budget".to_string()
    };
    a.send_over_binder(slot_a, &mut b)?;
    a.ok(&format!("close {slot_a}"))?;
    let closed = Instant::now();
    let refusal = loop {
        let dump = env.client.service().dumpState().map_err(|e| format!("dumpState: {e:?}"))?;
        if let Some(line) = dump.lines().find(|l| l.contains(&format!("buffer {inode}: to pid {}", b.pid))) {
            break line.trim().to_string();
        }
        if closed.elapsed() > HANDOFF_DEADLINE {
            return Err(format!("no refused handoff of {inode} in dumpState within {HANDOFF_DEADLINE:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    println!(
        "handoff to a receiver over its limit ({why}): refused {} ms after the close: {refusal}",
        closed.elapsed().as_millis()
    );
    pays(env, inode, &a)
}

/// `chargetransfer-vts --main-thread-exits` (spawned by the case below): the main thread leaves
/// with the thread-only exit system call while a second thread keeps the process alive until
/// stdin closes — a live process whose main thread is a zombie.
pub fn main_thread_exits() -> ! {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0)
    });
    // SAFETY: SYS_exit ends only the calling thread and runs nothing of it: no Rust frame is
    // unwound or returned to; the other thread owns everything it uses.
    unsafe { libc::syscall(libc::SYS_exit, 0) };
    unreachable!("SYS_exit returned")
}

/// The state of the main thread of `pid` (field 3 of /proc/PID/stat), if it can be read.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().next()?.chars().next()
}

fn wait_for_state(pid: u32, want: char) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(10);
    while state(pid) != Some(want) {
        check(Instant::now() < deadline, || format!("pid {pid} never reached state {want}: {:?}", state(pid)))?;
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// A payer that lets go of a buffer passes its charge to another app; one that dies parks it on
/// its app. A dying process loses its fds before its pidfd reports the death, so the service
/// tells the two apart by `ProcFs::exiting`: every thread past `PF_EXITING`. Against this
/// kernel: a running process is not exiting; an exited, unreaped one is; one whose main thread
/// exited while another thread runs is not.
pub fn a_process_counts_as_exiting_only_when_every_thread_is(_env: &Env) -> Outcome {
    let procfs = chargetransfer::kernel::ProcFs::new("/proc");
    let exiting = |pid: u32| procfs.exiting(pid).map_err(|e| format!("exiting({pid}): {e}"));
    let spawn = |cmd: &mut std::process::Command| {
        cmd.stdin(std::process::Stdio::piped()).spawn().map_err(|e| format!("spawn: {e}"))
    };
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;

    let mut running = spawn(std::process::Command::new("sleep").arg("100"))?;
    let pid = running.id();
    wait_for_state(pid, 'S')?;
    check(!exiting(pid)?, || format!("running pid {pid} counted as exiting"))?;
    running.kill().map_err(|e| e.to_string())?;
    wait_for_state(pid, 'Z')?;
    check(exiting(pid)?, || format!("exited, unreaped pid {pid} not counted as exiting"))?;
    running.wait().map_err(|e| e.to_string())?;

    let mut half = spawn(std::process::Command::new(&exe).arg("--main-thread-exits"))?;
    let pid = half.id();
    wait_for_state(pid, 'Z')?;
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| e.to_string())?.count();
    check(threads == 2, || format!("pid {pid} has {threads} threads, expected the zombie main thread and one more"))?;
    check(!exiting(pid)?, || format!("pid {pid}, alive in its second thread, counted as exiting"))?;
    drop(half.stdin.take());
    half.wait().map_err(|e| e.to_string())?;
    println!("exiting: a running process no, an exited one yes, one whose main thread exited while another runs no");
    Ok(())
}
