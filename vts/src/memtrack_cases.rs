//! Issue 17's cases: the memtrack HAL the service also registers, compared with the ledger and
//! with the kernel's own cgroup files (memory.current where the kernel charges the system heap,
//! dmem.current in the dmem lane) after the SurfaceFlinger double hop, an eviction and a death;
//! memtrackproxy's permission model and AOSP's VTS contract; `chargectl top` against the
//! service; and the trace counters read back from tracefs.

use std::time::Duration;

use chargetransfer::binder::aidl::android::hardware::memtrack::{
    IMemtrack::{self, IMemtrack as _},
    MemtrackRecord as record,
    MemtrackType::MemtrackType,
};
use chargetransfer::binder::{self, Exception, Strong};
use chargetransfer::kernel::cgroupfs::DmemFile;
use chargetransfer::service::MEMTRACK_INSTANCE;

use crate::cases::{charged_bytes_of, check, eventually, usage_of, Outcome};
use crate::harness::{Env, AID_GRAPHICS, AID_SYSTEM};

const MIB: u64 = 1 << 20;
/// What a client's own memory may move a memcg's memory.current by between two readings.
const SLACK: u64 = 512 << 10;
const CMA_HEAP: &str = "default_cma_region";
const CMA_REGION: &str = "cma/reserved";
const TRACEFS: &str = "/sys/kernel/tracing";
/// A holder view may be this old (src/memtrack/holders.rs MAX_AGE, plus margin).
const HOLDERS_SETTLE: Duration = Duration::from_millis(1200);

/// Why the memtrack cases cannot run: over RPC the service serves one root object.
pub fn absent(rpc: bool) -> Option<&'static str> {
    rpc.then_some("memtrack is registered on kernel binder only (the RPC transport serves one root object)")
}

/// Why the eviction case cannot run here: no vram region in this kernel.
pub fn vram_absent() -> Option<String> {
    let capacity = std::fs::read_to_string("/sys/fs/cgroup/dmem.capacity").unwrap_or_default();
    if capacity.lines().any(|l| l.starts_with("drm/")) {
        return None;
    }
    Some("no vram region in this lane's kernel (dmem.capacity lists no drm/ region; the simulated VRAM device of issue 15 is not in this branch)".into())
}

/// Why the trace-counter case cannot run here.
pub fn trace_absent() -> Option<String> {
    let marker = std::path::Path::new(TRACEFS).join("trace_marker");
    (!marker.exists()).then(|| format!("{} does not exist (no tracefs in this guest)", marker.display()))
}

fn memtrack() -> Result<Strong<dyn IMemtrack::IMemtrack>, String> {
    binder::check_interface::<dyn IMemtrack::IMemtrack>(MEMTRACK_INSTANCE)
        .map_err(|e| format!("{MEMTRACK_INSTANCE} is not registered: {e}"))
}

/// memtrack's GRAPHICS records for `pid`, asked by this process (root): (flags, bytes), sorted.
fn records(pid: u32) -> Result<Vec<(i32, u64)>, String> {
    let mut r: Vec<(i32, u64)> = memtrack()?
        .getMemory(pid as i32, MemtrackType::GRAPHICS)
        .map_err(|e| format!("getMemory({pid}): {e:?}"))?
        .iter()
        .map(|r| (r.flags, r.sizeInBytes as u64))
        .collect();
    r.sort();
    Ok(r)
}

fn total(records: &[(i32, u64)]) -> u64 {
    records.iter().map(|(_, b)| b).sum()
}

fn flags(shared: bool, dedicated: bool) -> i32 {
    record::FLAG_SMAPS_UNACCOUNTED
        | if shared { record::FLAG_SHARED } else { record::FLAG_PRIVATE }
        | if dedicated { record::FLAG_DEDICATED } else { record::FLAG_SYSTEM }
}

fn describe(records: &[(i32, u64)]) -> String {
    let one = |(f, b): &(i32, u64)| {
        let mut names = Vec::new();
        for (bit, name) in [
            (record::FLAG_SMAPS_UNACCOUNTED, "UNACCOUNTED"),
            (record::FLAG_SHARED, "SHARED"),
            (record::FLAG_PRIVATE, "PRIVATE"),
            (record::FLAG_SYSTEM, "SYSTEM"),
            (record::FLAG_DEDICATED, "DEDICATED"),
        ] {
            if f & bit != 0 {
                names.push(name);
            }
        }
        format!("{}:{} KiB", names.join("|"), b >> 10)
    };
    format!("[{}]", records.iter().map(one).collect::<Vec<_>>().join(", "))
}

/// The heap the lane charges to a kernel file the VTS can read: the CMA heap and its dmem region
/// in the dmem lane, the system heap and memory.current where the kernel charges it
/// (`dma_heap.mem_accounting=1`), else the system heap with no kernel file (the kernel is blind).
#[derive(Clone, Copy, PartialEq)]
enum KernelView {
    Dmem,
    Memcg,
    Blind,
}

fn kernel_view(env: &Env) -> KernelView {
    let cma = std::path::Path::new("/dev/dma_heap").join(CMA_HEAP).exists()
        && env.cgroup.dmem_capacity().is_ok_and(|c| c.iter().any(|(r, _)| r == CMA_REGION));
    match (cma, crate::cases::mem_accounting()) {
        (true, _) => KernelView::Dmem,
        (false, true) => KernelView::Memcg,
        (false, false) => KernelView::Blind,
    }
}

impl KernelView {
    fn heap(self) -> &'static str {
        if self == KernelView::Dmem {
            CMA_HEAP
        } else {
            "system"
        }
    }

    /// The kernel's count for `cgroup` in the file this view reads.
    fn current(self, env: &Env, cgroup: &str) -> Result<Option<u64>, String> {
        Ok(match self {
            KernelView::Dmem => Some(
                env.cgroup
                    .dmem(cgroup, DmemFile::Current)
                    .map_err(|e| e.to_string())?
                    .get(CMA_REGION)
                    .copied()
                    .unwrap_or(0),
            ),
            KernelView::Memcg => Some(env.cgroup.memory(cgroup).map_err(|e| e.to_string())?.current),
            KernelView::Blind => None,
        })
    }

    fn file(self) -> &'static str {
        match self {
            KernelView::Dmem => "dmem.current (cma/reserved)",
            KernelView::Memcg => "memory.current",
            KernelView::Blind => "no kernel file (dma_heap.mem_accounting=0: the kernel charges nobody)",
        }
    }

    /// Checks that the kernel moved `cgroup`'s count by `bytes` between `before` and `after`:
    /// exactly in dmem, within SLACK in memcg (the process's own pages move it too).
    fn moved_by(self, cgroup: &str, before: Option<u64>, after: Option<u64>, bytes: i64) -> Outcome {
        let (Some(b), Some(a)) = (before, after) else { return Ok(()) };
        let moved = a as i64 - b as i64;
        let ok = match self {
            KernelView::Dmem => moved == bytes,
            _ => (moved - bytes).unsigned_abs() <= SLACK,
        };
        check(ok, || format!("the kernel's {} of {cgroup} moved by {moved}, expected {bytes}", self.file()))
    }
}

/// AOSP's VtsHalMemtrackTargetTest's checks: a negative pid and an unknown type are
/// EX_ILLEGAL_ARGUMENT, every type for pid 1 answers, the GPU list answers; and the interface is
/// AOSP's frozen version 1 with its hash.
pub fn memtrack_keeps_aosps_vts_contract(_env: &Env) -> Outcome {
    let m = memtrack()?;
    check(m.getInterfaceVersion().ok() == Some(1), || "memtrack must serve version 1".into())?;
    let hash = m.getInterfaceHash().map_err(|e| format!("{e:?}"))?;
    check(hash == IMemtrack::HASH, || format!("memtrack hash {hash}, AOSP's is {}", IMemtrack::HASH))?;
    let types =
        [MemtrackType::OTHER, MemtrackType::GL, MemtrackType::GRAPHICS, MemtrackType::MULTIMEDIA, MemtrackType::CAMERA];
    for kind in types {
        let status = m.getMemory(-1, kind).err();
        let got = status.as_ref().and_then(binder::exception_of);
        check(got == Some(Exception::IllegalArgument), || format!("getMemory(-1, {kind:?}) answered {status:?}"))?;
        m.getMemory(1, kind).map_err(|e| format!("getMemory(1, {kind:?}): {e:?}"))?;
    }
    let status = m.getMemory(1, MemtrackType(-1)).err();
    let got = status.as_ref().and_then(binder::exception_of);
    check(got == Some(Exception::IllegalArgument), || format!("getMemory(1, -1) answered {status:?}"))?;
    let gpus = m.getGpuDeviceInfo().map_err(|e| format!("getGpuDeviceInfo: {e:?}"))?;
    println!("memtrack getGpuDeviceInfo: {:?}", gpus.iter().map(|d| (d.id, d.name.clone())).collect::<Vec<_>>());
    check(gpus.iter().all(|d| !d.name.is_empty()), || "a GPU without a name".into())
}

/// memtrackproxy's model: an app reads its own pid only and no GPU list; system (and root,
/// shell) read any pid. Refusals are EX_SECURITY.
pub fn memtrack_lets_an_app_read_only_itself_and_system_read_anyone(env: &Env) -> Outcome {
    let mut app = env.spawn(10190, None)?;
    let other = env.spawn(10191, None)?;
    let mut system = env.spawn(AID_SYSTEM, None)?;
    app.ok(&format!("memtrack {}", app.pid))?;
    for line in [format!("memtrack {}", other.pid), "gpus".to_string()] {
        match app.cmd(&line) {
            Err(r) if r.code == -1 && r.message.contains("security") => {
                check(!r.message.contains(&other.pid.to_string()), || {
                    format!("the refusal names pid {}: {}", other.pid, r.message)
                })?
            }
            r => return Err(format!("an app's {line:?} answered {r:?}, expected EX_SECURITY")),
        }
    }
    system.ok(&format!("memtrack {}", other.pid))?;
    system.ok("gpus")?;
    Ok(())
}

/// gralloc allocates for SurfaceFlinger, SurfaceFlinger hands the buffer to the app and pushes
/// the charge: memtrack then answers the app's bytes (SHARED while SurfaceFlinger holds it,
/// PRIVATE once it lets go), equal to the ledger's, and to what the kernel's file moved by at
/// the allocator, which the kernel charged; nobody else's memtrack shows them.
pub fn memtrack_after_the_double_hop_matches_the_ledger_and_the_kernel(env: &Env) -> Outcome {
    let view = kernel_view(env);
    let size = 4 * MIB;
    let mut gralloc = env.spawn(AID_GRAPHICS, None)?;
    let mut sf = env.spawn(AID_SYSTEM, Some("/system/surfaceflinger"))?;
    let mut app = env.spawn(10192, None)?;
    let before = view.current(env, &gralloc.cgroup)?;
    let (g_slot, _) = gralloc.alloc(view.heap(), size)?;
    gralloc.ok(&format!("charge_for {g_slot} {}", sf.pid))?;
    let sf_slot = gralloc.give(g_slot, &mut sf)?;
    gralloc.ok(&format!("close {g_slot}"))?;
    sf.give(sf_slot, &mut app)?;
    sf.ok(&format!("transfer {sf_slot} {}", app.pid))?;
    let after = view.current(env, &gralloc.cgroup)?;
    std::thread::sleep(HOLDERS_SETTLE);

    let shared = records(app.pid)?;
    let ledger = charged_bytes_of(env, app.pid)?;
    println!(
        "double hop ({} heap): memtrack app {} = {} KiB, ledger {} KiB; kernel {} of gralloc {}: {before:?} -> {after:?}",
        view.heap(),
        describe(&shared),
        total(&shared) >> 10,
        ledger >> 10,
        view.file(),
        gralloc.cgroup
    );
    check(shared == vec![(flags(true, false), size)], || {
        format!("memtrack for the app: {}, expected one SHARED|SYSTEM record of {size}", describe(&shared))
    })?;
    check(total(&shared) as i64 == ledger, || format!("memtrack {} vs ledger {ledger}", total(&shared)))?;
    view.moved_by(&gralloc.cgroup, before, after, size as i64)?;
    for who in [&gralloc, &sf] {
        let r = records(who.pid)?;
        check(r.is_empty(), || {
            format!("pid {} ({}) pays nothing, memtrack says {}", who.pid, who.cgroup, describe(&r))
        })?;
    }

    sf.ok(&format!("close {sf_slot}"))?;
    std::thread::sleep(HOLDERS_SETTLE);
    let private = records(app.pid)?;
    println!("after SurfaceFlinger let go: memtrack app {}", describe(&private));
    check(private == vec![(flags(false, false), size)], || {
        format!("memtrack for the app: {}, expected one PRIVATE|SYSTEM record of {size}", describe(&private))
    })
}

/// An app that pays for its own buffer dies: memtrack, the ledger and the kernel's file all go
/// back by the buffer's size.
pub fn memtrack_after_a_death_matches_the_ledger_and_the_kernel(env: &Env) -> Outcome {
    let view = kernel_view(env);
    let size = 2 * MIB;
    let mut app = env.spawn(10193, None)?;
    let (pid, cgroup) = (app.pid, app.cgroup.clone());
    let before = view.current(env, &cgroup)?;
    let (slot, _) = app.alloc(view.heap(), size)?;
    app.ok(&format!("charge {slot}"))?;
    let alive = records(pid)?;
    let during = view.current(env, &cgroup)?;
    println!(
        "death ({} heap): alive memtrack {} ledger {} KiB, kernel {} of {cgroup}: {before:?} -> {during:?}",
        view.heap(),
        describe(&alive),
        charged_bytes_of(env, pid)? >> 10,
        view.file()
    );
    check(alive == vec![(flags(false, false), size)], || format!("memtrack while alive: {}", describe(&alive)))?;
    check(charged_bytes_of(env, pid)? == size as i64, || "ledger while alive".into())?;
    view.moved_by(&cgroup, before, during, size as i64)?;
    let parent = format!("/uid_{}", app.uid);
    let parent_during = view.current(env, &parent)?;
    app.kill();
    eventually(
        || {
            Ok(records(pid)?.is_empty()
                && env.client.service().listCharges(0).is_ok_and(|l| l.iter().all(|c| c.ownerPid as u32 != pid)))
        },
        "memtrack and the ledger forget the dead app",
    )?;
    // The process's own cgroup may be gone with it: its app's (`/uid_<uid>`) went back.
    let mut parent_after = None;
    eventually(
        || {
            parent_after = view.current(env, &parent)?;
            Ok(view.moved_by(&parent, parent_during, parent_after, -(size as i64)).is_ok())
        },
        "the kernel uncharges the freed buffer",
    )?;
    println!(
        "after the death: memtrack [] ledger 0; kernel {} of {parent}: {parent_during:?} -> {parent_after:?}",
        view.file()
    );
    Ok(())
}

/// A vram buffer is DEDICATED while resident; once evicted its bytes are system memory charged
/// to the owner's memcg, and memtrack says SYSTEM, as the ledger does.
pub fn memtrack_after_an_eviction_matches_the_ledger(env: &Env) -> Outcome {
    let regions = env.client.service().getRegions().map_err(|e| format!("{e:?}"))?;
    let (region, heap) = regions
        .iter()
        .filter(|r| r.regionClass == "vram")
        .find_map(|r| {
            let heap = r.heaps.iter().find(|h| std::path::Path::new("/dev/dma_heap").join(h).exists())?;
            Some((r.name.clone(), heap.clone()))
        })
        .ok_or_else(|| format!("no vram region with a dma-heap the service knows: {regions:?}"))?;
    let size = 4 * MIB;
    let mut app = env.spawn(10194, None)?;
    let (slot, inode) = app.alloc(&heap, size)?;
    app.ok(&format!("charge {slot}"))?;
    let resident = records(app.pid)?;
    let kernel = env.cgroup.dmem(&app.cgroup, DmemFile::Current).map_err(|e| e.to_string())?;
    println!("vram {region} ({heap}): resident memtrack {}, kernel dmem.current {kernel:?}", describe(&resident));
    check(resident == vec![(flags(false, true), size)], || format!("resident: {}", describe(&resident)))?;
    check(usage_of(env, app.pid, &region)? == size as i64, || "the ledger's vram pool".into())?;
    env.client.service().evict(inode as i64).map_err(|e| format!("evict: {e:?}"))?;
    let evicted = records(app.pid)?;
    println!("evicted: memtrack {}, ledger memcg {}", describe(&evicted), usage_of(env, app.pid, "memcg")?);
    check(evicted == vec![(flags(false, false), size)], || format!("evicted: {}", describe(&evicted)))?;
    check(usage_of(env, app.pid, "memcg")? == size as i64 && usage_of(env, app.pid, &region)? == 0, || {
        "the ledger should have moved the bytes from the region to memcg".into()
    })
}

/// `chargectl top -n 2` against the service in the guest: one row per paying app, with the app's
/// uid, bytes and pools (recorded in the VTS log).
pub fn chargectl_top_shows_who_pays(env: &Env) -> Outcome {
    let mut gralloc = env.spawn(AID_GRAPHICS, None)?;
    let app = env.spawn(10195, None)?;
    let (slot, _) = gralloc.alloc("system", 3 * MIB)?;
    gralloc.ok(&format!("charge_for {slot} {}", app.pid))?;
    let out = std::process::Command::new("chargectl")
        .args(["top", "-n", "2", "--delay", "0.5"])
        .output()
        .map_err(|e| format!("chargectl: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    println!("$ chargectl top -n 2 --delay 0.5\n{text}");
    check(out.status.success(), || format!("chargectl top failed: {}", String::from_utf8_lossy(&out.stderr)))?;
    let row = text
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(&app.pid.to_string()))
        .ok_or_else(|| format!("no row for pid {}", app.pid))?;
    check(row.contains(&app.uid.to_string()) && row.contains("3 MiB") && row.contains("memcg"), || {
        format!("the app's row should show uid {}, 3 MiB in memcg: {row}", app.uid)
    })?;
    check(text.matches("graphics memory charged:").count() == 2, || "two refreshes".into())
}

/// The counter events the service wrote for `pid`, from tracefs's `trace`, in order.
fn trace_counters(pid: u32) -> Result<Vec<u64>, String> {
    let path = format!("{TRACEFS}/trace");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let prefix = format!("C|{pid}|chargetransfer.charged_bytes|");
    Ok(text.lines().filter_map(|l| l.split_once(&prefix)).filter_map(|(_, v)| v.trim().parse().ok()).collect())
}

/// With the policy's `trace.counters` on (the lanes' policy), each change of an app's total is
/// one counter event in the kernel trace, and nothing else is: a repeated charge writes none, a
/// release and the app's death write the new totals.
pub fn trace_counters_reach_tracefs_when_a_total_changes(env: &Env) -> Outcome {
    let _ = std::fs::write(format!("{TRACEFS}/tracing_on"), "1");
    let mut app = env.spawn(10196, None)?;
    let pid = app.pid;
    let (a, _) = app.alloc("system", MIB)?;
    let (b, b_inode) = app.alloc("system", 2 * MIB)?;
    app.ok(&format!("charge {a}"))?;
    app.ok(&format!("charge {b}"))?;
    app.ok(&format!("charge {a}"))?;
    app.ok(&format!("close {b}"))?;
    app.ok(&format!("release {b_inode}"))?;
    let alive = trace_counters(pid)?;
    println!("trace counters of pid {pid}: {alive:?}");
    check(alive == vec![MIB, 3 * MIB, MIB], || {
        format!("expected [1 MiB, 3 MiB, 1 MiB] in bytes, the trace has {alive:?}")
    })?;
    app.kill();
    let mut after = Vec::new();
    eventually(
        || {
            after = trace_counters(pid)?;
            Ok(after.last() == Some(&0))
        },
        "the app's death writes its total 0",
    )?;
    println!("after the death: {after:?}");
    check(after.len() == 4, || format!("one more event at the death: {after:?}"))
}

/// The child side (`memtrack PID`, `gpus`): the calls an app or system process makes itself.
/// Refusals are `err -1 security ...` (EX_SECURITY's code), a bad argument `err -3 ...`.
pub fn command(args: &[&str]) -> Option<Result<String, String>> {
    let call = |f: &dyn Fn(&dyn IMemtrack::IMemtrack) -> Result<String, binder::Status>| -> Result<String, String> {
        let m = memtrack()?;
        f(&*m).map_err(|s| match binder::exception_of(&s) {
            Some(Exception::Security) => format!("err -1 security {}", binder::status_message(&s)),
            Some(Exception::IllegalArgument) => format!("err -3 illegal argument {}", binder::status_message(&s)),
            None => format!("err 0 {s:?}"),
        })
    };
    match args.first().copied()? {
        "memtrack" => {
            let pid: i32 = args.get(1).and_then(|p| p.parse().ok()).unwrap_or(-1);
            Some(call(&|m| Ok(format!("ok {}", m.getMemory(pid, MemtrackType::GRAPHICS)?.len()))))
        }
        "gpus" => Some(call(&|m| Ok(format!("ok {}", m.getGpuDeviceInfo()?.len())))),
        _ => None,
    }
}
