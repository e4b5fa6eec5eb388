//! Cases for the dmem lane's simulated VRAM: the test device `vts/kernel/vramsim` registers the
//! dmem region `drm/vramsim/vram` with a reclaim callback and exports the `vramsim` dma-heap.
//! The orchestrator plays the GPU driver's userspace: it evicts, pins and names owners through
//! `/dev/vramsim`, a client restores in its own context (as a driver does on the app's next
//! use), and the trusted allocator reports each step to the service. Every step is checked
//! against the kernel's `dmem.current` and `memory.current` and the device's own list.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};

use chargetransfer::binder::aidl::vendor::chargetransfer::ErrorCode::ErrorCode;
use chargetransfer::kernel::cgroupfs::DmemFile;
use chargetransfer::ledger::LimitKind;
use rustix::ioctl::{opcode, Ioctl, IoctlOutput, Opcode};

use crate::cases::{check, refused, usage_of, Outcome};
use crate::harness::{Child, Env, AID_GRAPHICS};

const MIB: u64 = 1 << 20;
const REGION: &str = "drm/vramsim/vram";
const HEAP: &str = "vramsim";
const DEVICE: &str = "/dev/vramsim";

/// `struct vramsim_req` of `vts/kernel/vramsim/vramsim.h`.
#[repr(C)]
struct Request {
    ino: u64,
    cgroup_fd: i32,
    pad: u32,
}

/// The device's ioctls (`VRAMSIM_IOC_*`, numbers 1..5 in group 'V').
#[derive(Clone, Copy)]
enum DeviceOp {
    Evict = 1,
    Restore = 2,
    Pin = 3,
    Unpin = 4,
}

struct DeviceCall {
    op: DeviceOp,
    req: Request,
}

// SAFETY: every op is `_IOW('V', n, struct vramsim_req)`: the kernel only reads `req`.
unsafe impl Ioctl for DeviceCall {
    type Output = ();
    const IS_MUTATING: bool = false;

    fn opcode(&self) -> Opcode {
        opcode::write::<Request>(b'V', self.op as u8)
    }

    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        (&mut self.req as *mut Request).cast()
    }

    unsafe fn output_from_ptr(_: IoctlOutput, _: *mut std::ffi::c_void) -> rustix::io::Result<()> {
        Ok(())
    }
}

/// One `/dev/vramsim` ioctl on the buffer `ino`; `cgroup`: the cgroup directory an eviction
/// charges.
fn device(op: DeviceOp, ino: u64, cgroup: Option<&File>) -> Result<(), String> {
    let dev = File::options().read(true).write(true).open(DEVICE).map_err(|e| format!("{DEVICE}: {e}"))?;
    let req = Request { ino, cgroup_fd: cgroup.map_or(-1, |f| f.as_raw_fd()), pad: 0 };
    // SAFETY: `DeviceCall` matches the device's ioctl ABI.
    unsafe { rustix::ioctl::ioctl(dev.as_fd(), DeviceCall { op, req }) }
        .map_err(|e| format!("vramsim ioctl {} on {ino}: {e}", op as u8))
}

/// The child's side: `vram_restore <inode>` restores in the client's own context, so the
/// device charges the client's dmem pool.
pub fn command(args: &[&str]) -> Option<Result<String, String>> {
    (args.first() == Some(&"vram_restore")).then(|| {
        let ino = args.get(1).and_then(|s| s.parse().ok()).ok_or("inode?")?;
        device(DeviceOp::Restore, ino, None).map(|()| "ok".to_string())
    })
}

/// The device's view of a buffer: (resident, pinned), from its listing.
fn device_state(ino: u64) -> Result<(bool, bool), String> {
    let list = std::fs::read_to_string(DEVICE).map_err(|e| format!("{DEVICE}: {e}"))?;
    list.lines()
        .filter_map(|l| l.strip_prefix("buffer "))
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&ino.to_string().as_str()))
        .map(|w| (w.get(2) == Some(&"resident"), w.get(3) == Some(&"pinned")))
        .ok_or_else(|| format!("{DEVICE} does not list buffer {ino}"))
}

fn reclaim_calls() -> Result<u64, String> {
    let list = std::fs::read_to_string(DEVICE).map_err(|e| format!("{DEVICE}: {e}"))?;
    list.lines()
        .find_map(|l| l.strip_prefix("reclaim calls "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no reclaim line in {DEVICE}"))
}

fn kernel_dmem(env: &Env, cgroup: &str) -> Result<u64, String> {
    let map = env.cgroup.dmem(cgroup, DmemFile::Current).map_err(|e| e.to_string())?;
    Ok(map.get(REGION).copied().unwrap_or(0))
}

fn memory_current(env: &Env, cgroup: &str) -> Result<u64, String> {
    env.cgroup.memory_current(cgroup).map_err(|e| e.to_string())
}

/// The cgroup directory the service names as the buffer's owner.
fn owner_dir(env: &Env, ino: u64) -> Result<(String, File), String> {
    let all = env.client.service().listCharges(0).map_err(|e| format!("listCharges: {e:?}"))?;
    let owner = all.into_iter().find(|c| c.inode as u64 == ino).ok_or_else(|| format!("{ino} is not charged"))?;
    let dir = env.cgroup.dir(&owner.ownerCgroup).map_err(|e| e.to_string())?;
    let file = File::open(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok((owner.ownerCgroup, file))
}

/// The kernel evicts `ino` to its owner's memcg (as the service names it), then the driver
/// reports it.
fn evict(env: &Env, gpu: &mut Child, ino: u64) -> Result<(), String> {
    let (_, dir) = owner_dir(env, ino)?;
    device(DeviceOp::Evict, ino, Some(&dir))?;
    gpu.ok(&format!("evict {ino}")).map(drop)
}

/// `memory.current` moved by `size` (pages of its own allocations may come and go beside them).
fn moved_by(before: u64, after: u64, size: u64, grew: bool) -> bool {
    let delta = if grew { after as i64 - before as i64 } else { before as i64 - after as i64 };
    delta >= size as i64 - (256 << 10) && delta <= size as i64 + (512 << 10)
}

pub fn the_vram_region_is_registered_and_served(env: &Env) -> Outcome {
    let capacity = env.cgroup.dmem_capacity().map_err(|e| e.to_string())?;
    let size = capacity.iter().find(|(r, _)| r == REGION).map(|(_, s)| *s);
    println!("dmem.capacity: {capacity:?}");
    let size = size.ok_or_else(|| format!("{REGION} missing from dmem.capacity (is vramsim loaded?)"))?;
    let regions = env.client.service().getRegions().map_err(|e| format!("{e:?}"))?;
    let ours = regions.iter().find(|r| r.name == REGION).ok_or_else(|| format!("service lacks {REGION}"))?;
    println!("service: {} capacity {} enforced by {} ({})", ours.name, ours.capacity, ours.enforcedBy, ours.why);
    check(ours.capacity as u64 == size && ours.enforcedBy == "kernel", || {
        format!("service says capacity {} by {}, kernel {size}", ours.capacity, ours.enforcedBy)
    })
}

pub fn eviction_moves_vram_from_dmem_to_the_owner_memcg_and_restore_moves_it_back(env: &Env) -> Outcome {
    let mut gpu = env.spawn(AID_GRAPHICS, None)?;
    let mut app = env.spawn(10170, None)?;
    let size = 8 * MIB;
    let dmem0 = kernel_dmem(env, &app.cgroup)?;
    let (slot, ino) = app.alloc(HEAP, size)?;
    app.ok(&format!("charge {slot}"))?;
    let dmem1 = kernel_dmem(env, &app.cgroup)?;
    check(dmem1 - dmem0 == size, || format!("allocation moved dmem.current by {} not {size}", dmem1 - dmem0))?;
    check(usage_of(env, app.pid, REGION)? == size as i64, || "ledger region usage".into())?;
    let mem1 = memory_current(env, &app.cgroup)?;
    evict(env, &mut gpu, ino)?;
    let (dmem2, mem2) = (kernel_dmem(env, &app.cgroup)?, memory_current(env, &app.cgroup)?);
    println!("evict {ino}: dmem.current {dmem1} -> {dmem2}, memory.current {mem1} -> {mem2}");
    check(dmem1 - dmem2 == size, || format!("eviction freed {} of dmem, not {size}", dmem1 - dmem2))?;
    check(moved_by(mem1, mem2, size, true), || format!("memory.current grew by {}", mem2 as i64 - mem1 as i64))?;
    check(device_state(ino)? == (false, false), || "the device does not list it evicted".into())?;
    check(usage_of(env, app.pid, REGION)? == 0, || "ledger still counts it in the region".into())?;
    check(usage_of(env, app.pid, "memcg")? >= size as i64, || "ledger does not count it in memcg".into())?;
    app.ok(&format!("vram_restore {ino}"))?;
    gpu.ok(&format!("restore {ino}"))?;
    let (dmem3, mem3) = (kernel_dmem(env, &app.cgroup)?, memory_current(env, &app.cgroup)?);
    println!("restore {ino}: dmem.current {dmem2} -> {dmem3}, memory.current {mem2} -> {mem3}");
    check(dmem3 == dmem1, || format!("restore left dmem.current at {dmem3}, not {dmem1}"))?;
    check(moved_by(mem2, mem3, size, false), || format!("memory.current fell by {}", mem2 as i64 - mem3 as i64))?;
    check(usage_of(env, app.pid, REGION)? == size as i64, || "ledger region usage after restore".into())
}

pub fn an_on_behalf_vram_buffer_is_evicted_to_the_app_memcg(env: &Env) -> Outcome {
    let mut gpu = env.spawn(AID_GRAPHICS, None)?;
    let mut app = env.spawn(10171, None)?;
    let size = 4 * MIB;
    let (slot, ino) = gpu.alloc(HEAP, size)?;
    let app_slot = gpu.give(slot, &mut app)?;
    gpu.ok(&format!("charge_for {slot} {}", app.pid))?;
    let (gpu_dmem, app_mem) = (kernel_dmem(env, &gpu.cgroup)?, memory_current(env, &app.cgroup)?);
    let gpu_mem = memory_current(env, &gpu.cgroup)?;
    let (owner, _) = owner_dir(env, ino)?;
    check(owner == app.cgroup, || format!("the service names {owner} the owner, not {}", app.cgroup))?;
    evict(env, &mut gpu, ino)?;
    let (gpu_dmem2, app_mem2) = (kernel_dmem(env, &gpu.cgroup)?, memory_current(env, &app.cgroup)?);
    let gpu_mem2 = memory_current(env, &gpu.cgroup)?;
    println!("on-behalf evict: allocator dmem {gpu_dmem} -> {gpu_dmem2}, app memory.current {app_mem} -> {app_mem2}, allocator memory.current {gpu_mem} -> {gpu_mem2}");
    check(gpu_dmem - gpu_dmem2 == size, || "the allocator's dmem charge was not dropped".into())?;
    check(moved_by(app_mem, app_mem2, size, true), || "the app's memory.current did not grow by the size".into())?;
    check(gpu_mem2 < gpu_mem + size / 2, || "the evicted pages were charged to the allocator".into())?;
    // The app's next use restores it in its context: from then on its dmem pays.
    let app_dmem = kernel_dmem(env, &app.cgroup)?;
    app.ok(&format!("vram_restore {ino}"))?;
    gpu.ok(&format!("restore {ino}"))?;
    let app_dmem2 = kernel_dmem(env, &app.cgroup)?;
    println!("app restores: app dmem {app_dmem} -> {app_dmem2}");
    check(app_dmem2 - app_dmem == size, || "the restore did not charge the app's dmem".into())?;
    app.ok(&format!("close {app_slot}")).map(drop)
}

pub fn reclaim_evicts_the_least_recently_restored_unpinned_buffer_and_never_a_pinned_one(env: &Env) -> Outcome {
    let mut gpu = env.spawn(AID_GRAPHICS, None)?;
    let mut app = env.spawn(10172, None)?;
    let size = 4 * MIB;
    let mut inodes = Vec::new();
    for _ in 0..3 {
        let (slot, ino) = app.alloc(HEAP, size)?;
        app.ok(&format!("charge {slot}"))?;
        inodes.push(ino);
    }
    let [a, b, c] = [inodes[0], inodes[1], inodes[2]];
    // a: evicted and restored, so now the most recent; b: pinned; c: the oldest unpinned.
    evict(env, &mut gpu, a)?;
    app.ok(&format!("vram_restore {a}"))?;
    gpu.ok(&format!("restore {a}"))?;
    device(DeviceOp::Pin, b, None)?;
    gpu.ok(&format!("pin {b}"))?;
    let (calls, mem) = (reclaim_calls()?, memory_current(env, &app.cgroup)?);
    env.cgroup.write_dmem_limit(&app.cgroup, REGION, LimitKind::Max, 2 * size).map_err(|e| e.to_string())?;
    let states: Vec<_> = [a, b, c].iter().map(|i| device_state(*i)).collect::<Result<_, _>>()?;
    let (dmem, mem2) = (kernel_dmem(env, &app.cgroup)?, memory_current(env, &app.cgroup)?);
    println!("dmem.max 8 MiB over 12 MiB: (resident, pinned) a {:?} b {:?} c {:?}, dmem.current {dmem}, memory.current {mem} -> {mem2}, reclaim calls +{}", states[0], states[1], states[2], reclaim_calls()? - calls);
    check(states == [(true, false), (true, true), (false, false)], || "reclaim took the wrong buffer".into())?;
    check(dmem == 2 * size && moved_by(mem, mem2, size, true), || "the kernel's numbers did not move by c".into())?;
    gpu.ok(&format!("evict {c}"))?;
    // A limit below what pins hold: reclaim takes all it may (a) and the pinned b stays.
    env.cgroup.write_dmem_limit(&app.cgroup, REGION, LimitKind::Max, 0).map_err(|e| e.to_string())?;
    let (sa, sb) = (device_state(a)?, device_state(b)?);
    let dmem = kernel_dmem(env, &app.cgroup)?;
    println!("dmem.max 0: a {sa:?} b {sb:?}, dmem.current {dmem} (partial reclaim: the pinned buffer stays)");
    check(sa == (false, false) && sb == (true, true) && dmem == size, || "pinned buffer moved or a stayed".into())?;
    gpu.ok(&format!("evict {a}"))?;
    refused(&mut gpu, &format!("evict {b}"), ErrorCode::INVALID_STATE)
}

pub fn eviction_advice_covers_the_request_and_never_names_a_pinned_buffer(env: &Env) -> Outcome {
    let mut gpu = env.spawn(AID_GRAPHICS, None)?;
    let mut app = env.spawn(10173, None)?;
    let mut inodes = Vec::new();
    for size in [2 * MIB, 4 * MIB, 4 * MIB] {
        let (slot, ino) = app.alloc(HEAP, size)?;
        app.ok(&format!("charge {slot}"))?;
        inodes.push(ino);
    }
    let pinned = inodes[1];
    device(DeviceOp::Pin, pinned, None)?;
    gpu.ok(&format!("pin {pinned}"))?;
    let want = 5 * MIB;
    let advice = env.client.service().evictionAdvice(REGION, want as i64).map_err(|e| format!("{e:?}"))?;
    let sizes = env.client.service().listCharges(0).map_err(|e| format!("{e:?}"))?;
    let covered: i64 = sizes.iter().filter(|c| advice.contains(&c.inode)).map(|c| c.size).sum();
    println!("advice for {want} bytes: {advice:?} ({covered} bytes), pinned {pinned}");
    check(!advice.contains(&(pinned as i64)), || "advice names a pinned buffer".into())?;
    check(covered >= want as i64, || format!("advice covers {covered} bytes, not {want}"))?;
    // Following the advice frees at least that much in the kernel.
    let before = kernel_dmem(env, &app.cgroup)?;
    for ino in advice.iter().map(|i| *i as u64).filter(|i| inodes.contains(i)) {
        evict(env, &mut gpu, ino)?;
    }
    let after = kernel_dmem(env, &app.cgroup)?;
    check(device_state(pinned)? == (true, true), || "the pinned buffer moved".into())?;
    device(DeviceOp::Unpin, pinned, None)?;
    gpu.ok(&format!("unpin {pinned}"))?;
    check(before - after >= want, || format!("following the advice freed {} bytes", before - after))
}

pub fn pinning_past_the_region_pin_max_is_refused_with_a_typed_error(env: &Env) -> Outcome {
    let mut gpu = env.spawn(AID_GRAPHICS, None)?;
    let mut app = env.spawn(10174, None)?;
    let mut inodes = Vec::new();
    for _ in 0..3 {
        let (slot, ino) = app.alloc(HEAP, 4 * MIB)?;
        app.ok(&format!("charge {slot}"))?;
        inodes.push(ino);
    }
    // The VTS policy: an app may pin 8 MiB of vram.
    gpu.ok(&format!("pin {}", inodes[0]))?;
    gpu.ok(&format!("pin {}", inodes[1]))?;
    refused(&mut gpu, &format!("pin {}", inodes[2]), ErrorCode::OVER_PIN_LIMIT)?;
    let u = env.client.service().getProcessUsage(app.pid as i32).map_err(|e| format!("{e:?}"))?;
    let pool = u.pools.iter().find(|p| p.pool == REGION).ok_or("no region pool")?;
    println!("pins: {} of pin max {}", pool.pinned, pool.pinMax);
    check(pool.pinned == 8 * MIB as i64, || format!("pinned {} after the refusal", pool.pinned))
}

fn mem_total() -> Result<u64, String> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").map_err(|e| e.to_string())?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib << 10)
        .ok_or_else(|| "no MemTotal".into())
}

/// VRAM larger than RAM: the region (4 GiB in the lane) is larger than the guest's memory, an
/// app's `dmem.max` follows the region (the VTS policy: 50% of it), far above its dma-buf budget
/// in memcg (16 MiB); the eviction advice keeps to that budget, so what it evicts has room.
pub fn vram_larger_than_ram_follows_the_region_and_advice_keeps_to_the_eviction_budget(env: &Env) -> Outcome {
    let capacity = env.cgroup.dmem_capacity().map_err(|e| e.to_string())?;
    let region = capacity.iter().find(|(r, _)| r == REGION).map(|(_, s)| *s).ok_or("no vram region")?;
    let ram = mem_total()?;
    check(region > ram, || format!("the lane's region ({region}) is not larger than RAM ({ram})"))?;
    let mut app = env.spawn(10175, None)?;
    let mut big = Vec::new();
    for _ in 0..12 {
        let (slot, ino) = app.alloc(HEAP, 128 * MIB)?;
        app.ok(&format!("charge {slot}"))?;
        big.push(ino);
    }
    let (slot, small) = app.alloc(HEAP, 8 * MIB)?;
    app.ok(&format!("charge {slot}"))?;
    let uid_cgroup = format!("/uid_{}", app.uid);
    let max = env.cgroup.dmem(&uid_cgroup, DmemFile::Max).map_err(|e| e.to_string())?.get(REGION).copied();
    let held = kernel_dmem(env, &app.cgroup)?;
    let u = env.client.service().getUidUsage(app.uid as i32).map_err(|e| format!("{e:?}"))?;
    let budget = u.pools.iter().find(|p| p.pool == "memcg").map(|p| p.max).ok_or("no memcg pool")?;
    println!("region {region} > RAM {ram}: {uid_cgroup} dmem.max {max:?}, app holds {held} in vram, eviction budget {budget}");
    check(max == Some(region / 2), || format!("dmem.max {max:?} does not follow the region"))?;
    check(held == 12 * 128 * MIB + 8 * MIB && held > budget as u64, || "the app could not hold its vram".into())?;
    let advice = env.client.service().evictionAdvice(REGION, (2 * region) as i64).map_err(|e| format!("{e:?}"))?;
    let ours: Vec<u64> = advice.iter().map(|i| *i as u64).filter(|i| big.contains(i) || *i == small).collect();
    println!("advice for the whole region names {ours:?} of the app's buffers");
    check(ours == [small], || format!("advice {ours:?}: only the 8 MiB buffer fits the 16 MiB budget"))?;
    let mut gpu = env.spawn(AID_GRAPHICS, None)?;
    let mem = memory_current(env, &app.cgroup)?;
    evict(env, &mut gpu, small)?;
    let mem2 = memory_current(env, &app.cgroup)?;
    check(moved_by(mem, mem2, 8 * MIB, true), || "the advised eviction did not land in the app's memcg".into())
}

/// Bytes resident in the device (its listing's first line).
fn device_resident() -> Result<(u64, u64), String> {
    let list = std::fs::read_to_string(DEVICE).map_err(|e| format!("{DEVICE}: {e}"))?;
    let w: Vec<&str> = list.lines().next().unwrap_or("").split_whitespace().collect();
    match (w.get(3).and_then(|s| s.parse().ok()), w.get(5).and_then(|s| s.parse().ok())) {
        (Some(size), Some(resident)) => Ok((size, resident)),
        _ => Err(format!("unexpected {DEVICE} header {w:?}")),
    }
}

/// Android's signal: the framework sets each process's `oom_score_adj` from its state (0 for
/// the top app, 100 visible, 200 perceptible, 900+ cached).
fn set_oom_score_adj(pid: u32, adj: i32) -> Result<(), String> {
    std::fs::write(format!("/proc/{pid}/oom_score_adj"), adj.to_string()).map_err(|e| format!("pid {pid}: {e}"))
}

fn fill(app: &mut Child, chunks: u64) -> Result<Vec<u64>, String> {
    (0..chunks)
        .map(|_| {
            let (slot, ino) = app.alloc(HEAP, 128 * MIB)?;
            app.ok(&format!("charge {slot}"))?;
            Ok(ino)
        })
        .collect()
}

/// Foreground protection: the top app's `/uid_<uid>` gets `dmem.low` = its vram max from the
/// service; when the region is full and room is needed, the device (as TTM does) evicts the
/// background app's buffers and the foreground app keeps all of its own, though they are older.
/// When it leaves the foreground, its protection is dropped.
pub fn the_foreground_app_keeps_its_vram_when_the_full_region_needs_room(env: &Env) -> Outcome {
    let (size, resident) = device_resident()?;
    check(resident == 0, || format!("the region is not empty at the start: {resident} bytes resident"))?;
    let mut fg = env.spawn(10176, None)?;
    let mut bg = env.spawn(10177, None)?;
    let mut filler = env.spawn(10178, None)?;
    set_oom_score_adj(bg.pid, 200)?;
    set_oom_score_adj(filler.pid, 200)?;
    // fg 3/8 of the region, first (so its buffers are the oldest); bg half; filler the rest.
    let chunks = size / (128 * MIB);
    let fg_bufs = fill(&mut fg, chunks * 3 / 8)?;
    let bg_bufs = fill(&mut bg, chunks / 2)?;
    fill(&mut filler, chunks - chunks * 3 / 8 - chunks / 2)?;
    let low = |uid: u32| -> Result<u64, String> {
        let m = env.cgroup.dmem(&format!("/uid_{uid}"), DmemFile::Low).map_err(|e| e.to_string())?;
        Ok(m.get(REGION).copied().unwrap_or(0))
    };
    let (fg_low, bg_low) = (low(fg.uid)?, low(bg.uid)?);
    println!(
        "region full ({} resident of {size}); dmem.low: foreground {fg_low}, background {bg_low}",
        device_resident()?.1
    );
    check(fg_low == size / 2 && bg_low == 0, || "the service did not protect (only) the foreground app".into())?;
    let (fg_dmem, bg_dmem, bg_mem) =
        (kernel_dmem(env, &fg.cgroup)?, kernel_dmem(env, &bg.cgroup)?, memory_current(env, &bg.cgroup)?);
    // One more buffer needs room: the device evicts.
    let (slot, _) = filler.alloc(HEAP, 128 * MIB)?;
    filler.ok(&format!("charge {slot}"))?;
    let (fg_dmem2, bg_dmem2, bg_mem2) =
        (kernel_dmem(env, &fg.cgroup)?, kernel_dmem(env, &bg.cgroup)?, memory_current(env, &bg.cgroup)?);
    let evicted: Vec<u64> = bg_bufs.iter().copied().filter(|i| device_state(*i).is_ok_and(|s| !s.0)).collect();
    let fg_evicted = fg_bufs.iter().filter(|i| device_state(**i).is_ok_and(|s| !s.0)).count();
    println!("room for 128 MiB: foreground dmem {fg_dmem} -> {fg_dmem2}, background dmem {bg_dmem} -> {bg_dmem2}, background memory.current {bg_mem} -> {bg_mem2}; evicted background {evicted:?}, foreground {fg_evicted}");
    check(fg_dmem2 == fg_dmem && fg_evicted == 0, || "the foreground app lost vram".into())?;
    check(evicted == bg_bufs[..1] && bg_dmem - bg_dmem2 == 128 * MIB, || {
        "the background app's oldest buffer should go".into()
    })?;
    check(moved_by(bg_mem, bg_mem2, 128 * MIB, true), || {
        "the evicted bytes are not in the background app's memcg".into()
    })?;
    let mut gpu = env.spawn(AID_GRAPHICS, None)?;
    gpu.ok(&format!("evict {}", evicted[0]))?;
    // The app leaves the foreground: the next autoconfig pass drops its protection.
    set_oom_score_adj(fg.pid, 200)?;
    env.client.service().autoconfigure(false, false).map_err(|e| format!("autoconfigure: {e:?}"))?;
    let fg_low2 = low(fg.uid)?;
    println!("foreground app left the top: dmem.low {fg_low} -> {fg_low2}");
    check(fg_low2 == 0, || "protection stayed after the app left the foreground".into())
}
