//! The VTS cases. Each runs against the live service with real processes, uids, cgroups and
//! dma-bufs, and checks the service's numbers against the kernel's where the kernel has them.

use chargetransfer::binder::aidl::vendor::chargetransfer::{ErrorCode::ErrorCode, IChargeTransfer};

use crate::harness::{Child, Env, AID_GRAPHICS, AID_SYSTEM};

pub type Outcome = Result<(), String>;

const MIB: u64 = 1 << 20;

pub fn check(cond: bool, what: impl FnOnce() -> String) -> Outcome {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

/// The command must be refused with `code`.
pub fn refused(child: &mut Child, line: &str, code: ErrorCode) -> Outcome {
    match child.cmd(line) {
        Ok(r) => Err(format!("{line:?} by pid {} should be refused with {code:?}, got ok {r:?}", child.pid)),
        Err(r) if r.code == code.0 => Ok(()),
        Err(r) => Err(format!("{line:?} refused with code {} ({}), expected {code:?}", r.code, r.message)),
    }
}

/// Bytes the service counts for a process in a pool.
pub fn usage_of(env: &Env, pid: u32, pool: &str) -> Result<i64, String> {
    let u = env.client.service().getProcessUsage(pid as i32).map_err(|e| format!("getProcessUsage({pid}): {e:?}"))?;
    Ok(u.pools.iter().find(|p| p.pool == pool).map_or(0, |p| p.usage))
}

pub fn charged_bytes_of(env: &Env, pid: u32) -> Result<i64, String> {
    let u = env.client.service().getProcessUsage(pid as i32).map_err(|e| format!("getProcessUsage({pid}): {e:?}"))?;
    Ok(u.bufferBytes)
}

pub fn owner_of(env: &Env, inode: u64) -> Result<Option<(i32, String)>, String> {
    let all = env.client.service().listCharges(0).map_err(|e| format!("listCharges: {e:?}"))?;
    Ok(all.into_iter().find(|c| c.inode as u64 == inode).map(|c| (c.ownerPid, c.ownerCgroup)))
}

pub fn version_and_hash_are_served(env: &Env) -> Outcome {
    let svc = env.client.service();
    let version = svc.getInterfaceVersion().map_err(|e| format!("{e:?}"))?;
    let hash = svc.getInterfaceHash().map_err(|e| format!("{e:?}"))?;
    check(version == IChargeTransfer::VERSION, || format!("version {version}"))?;
    check(hash == IChargeTransfer::HASH, || format!("hash {hash} != {}", IChargeTransfer::HASH))
}

pub fn charge_on_behalf_lands_on_the_app_cgroup(env: &Env) -> Outcome {
    let mut gralloc = env.spawn(AID_GRAPHICS, None)?;
    let app = env.spawn(10001, None)?;
    let (slot, inode) = gralloc.alloc("system", 4 * MIB)?;
    let r = gralloc.ok(&format!("charge_for {slot} {}", app.pid))?;
    check(r[2] == app.pid.to_string() && r[3] == app.cgroup, || {
        format!("charged to {r:?}, expected pid {} in {}", app.pid, app.cgroup)
    })?;
    check(usage_of(env, app.pid, "memcg")? == 4 * MIB as i64, || "app memcg usage is not 4 MiB".into())?;
    check(charged_bytes_of(env, gralloc.pid)? == 0, || "the allocator must not pay".into())?;
    let uid = env.client.service().getUidUsage(10001).map_err(|e| format!("{e:?}"))?;
    check(uid.bufferBytes >= 4 * MIB as i64, || format!("uid usage {uid:?}"))?;
    let owner = owner_of(env, inode)?;
    check(owner == Some((app.pid as i32, app.cgroup.clone())), || format!("ledger owner {owner:?}"))
}

pub fn untrusted_caller_cannot_charge_others(env: &Env) -> Outcome {
    let mut app1 = env.spawn(10002, None)?;
    let app2 = env.spawn(10003, None)?;
    let (slot, _) = app1.alloc("system", MIB)?;
    refused(&mut app1, &format!("charge_for {slot} {}", app2.pid), ErrorCode::NOT_TRUSTED)?;
    check(charged_bytes_of(env, app2.pid)? == 0, || "victim was charged".into())?;
    app1.ok(&format!("charge {slot}"))?;
    check(charged_bytes_of(env, app1.pid)? == MIB as i64, || "self charge failed".into())
}

pub fn non_dma_buf_fds_are_rejected(env: &Env) -> Outcome {
    let mut app = env.spawn(10004, None)?;
    let memfd = app.ok("memfd")?[0].clone();
    refused(&mut app, &format!("charge {memfd}"), ErrorCode::NOT_DMA_BUF)?;
    let pipe = app.ok("pipe")?[0].clone();
    refused(&mut app, &format!("charge {pipe}"), ErrorCode::NOT_DMA_BUF)
}

pub fn release_and_transfer_move_the_numbers(env: &Env) -> Outcome {
    let mut sf = env.spawn(AID_SYSTEM, Some("/system/surfaceflinger"))?;
    let mut app = env.spawn(10005, None)?;
    let (slot, inode) = sf.alloc("system", 2 * MIB)?;
    sf.ok(&format!("charge {slot}"))?;
    check(charged_bytes_of(env, sf.pid)? == 2 * MIB as i64, || "sf charge".into())?;
    let app_slot = sf.give(slot, &mut app)?;
    sf.ok(&format!("transfer {slot} {}", app.pid))?;
    check(charged_bytes_of(env, sf.pid)? == 0 && charged_bytes_of(env, app.pid)? == 2 * MIB as i64, || {
        "transfer did not move the charge".into()
    })?;
    let mut other = env.spawn(10015, None)?;
    refused(&mut other, &format!("release {inode}"), ErrorCode::NOT_OWNER)?;
    // The owner still holds the buffer: it cannot stop paying for memory it keeps.
    refused(&mut app, &format!("release {inode}"), ErrorCode::INVALID_STATE)?;
    app.ok(&format!("close {app_slot}"))?;
    app.ok(&format!("release {inode}"))?;
    check(charged_bytes_of(env, app.pid)? == 0, || "release did not uncharge".into())?;
    refused(&mut app, &format!("release {inode}"), ErrorCode::NOT_CHARGED)?;
    Ok(())
}

/// Polls until `f` holds (the death watchers work asynchronously), at most ~5 s.
pub fn eventually(mut f: impl FnMut() -> Result<bool, String>, what: &str) -> Outcome {
    for _ in 0..100 {
        if f()? {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(format!("timed out waiting for: {what}"))
}

pub fn killed_client_charges_are_released(env: &Env) -> Outcome {
    // One client with a death token (binder death notification), one without (pidfd polling).
    for register in [true, false] {
        let mut app = env.spawn(10006, None)?;
        if register {
            app.ok("register")?;
        }
        let (slot, inode) = app.alloc("system", MIB)?;
        app.ok(&format!("charge {slot}"))?;
        let pid = app.kill();
        eventually(
            || Ok(owner_of(env, inode)?.is_none()),
            &format!("charge of killed pid {pid} released (token: {register})"),
        )?;
    }
    Ok(())
}

pub fn mem_accounting() -> bool {
    std::fs::read_to_string("/sys/module/dma_heap/parameters/mem_accounting")
        .is_ok_and(|v| matches!(v.trim(), "Y" | "1"))
}

/// The memcg pool of the system heap is the kernel's when `dma_heap.mem_accounting=1`, the
/// service's otherwise; the service says which.
pub fn system_heap_enforcer_follows_mem_accounting(env: &Env) -> Outcome {
    let regions = env.client.service().getRegions().map_err(|e| format!("{e:?}"))?;
    let memcg = regions.iter().find(|r| r.name == "memcg").ok_or("no memcg pool")?;
    let expected = if mem_accounting() { "kernel" } else { "service" };
    println!("mem_accounting={} → memcg enforced by {} ({})", mem_accounting(), memcg.enforcedBy, memcg.why);
    check(memcg.enforcedBy == expected, || format!("memcg enforced by {}, expected {expected}", memcg.enforcedBy))
}

/// Where the service enforces the app's dma-buf budget (kernel blind), a charge over it is
/// refused with OVER_LIMIT and a smaller one still fits. Where the kernel enforces, the kernel's
/// memory.max does it and the ledger adds no second limit.
pub fn over_limit_charge_is_refused_while_a_smaller_one_succeeds(env: &Env) -> Outcome {
    let mut app = env.spawn(10030, None)?;
    let (a, _) = app.alloc("system", 12 * MIB)?;
    app.ok(&format!("charge {a}"))?;
    let (b, _) = app.alloc("system", 8 * MIB)?;
    let (c, _) = app.alloc("system", 2 * MIB)?;
    if mem_accounting() {
        app.ok(&format!("charge {b}"))?;
        let u = env.client.service().getProcessUsage(app.pid as i32).map_err(|e| format!("{e:?}"))?;
        let memcg = u.pools.iter().find(|p| p.pool == "memcg").ok_or("no memcg")?;
        println!(
            "kernel-enforced: ledger memcg {} (max {}), kernel memory.current {}",
            memcg.usage, memcg.max, memcg.kernelUsage
        );
        check(memcg.max == -1, || "the ledger must not add a limit the kernel enforces".into())?;
        return check(memcg.kernelUsage >= 20 * MIB as i64, || {
            format!("the kernel should count the app's own 20 MiB: {}", memcg.kernelUsage)
        });
    }
    refused(&mut app, &format!("charge {b}"), ErrorCode::OVER_LIMIT)?;
    check(charged_bytes_of(env, app.pid)? == 12 * MIB as i64, || "the refused charge left a trace".into())?;
    app.ok(&format!("charge {c}"))?;
    check(charged_bytes_of(env, app.pid)? == 14 * MIB as i64, || "the smaller charge did not land".into())
}

/// Autoconfig gives an app's `/uid_<uid>` cgroup real memory limits before its first charge.
pub fn autoconfig_writes_real_memory_limits_for_a_new_app(env: &Env) -> Outcome {
    let mut app = env.spawn(10031, None)?;
    let (slot, _) = app.alloc("system", MIB)?;
    app.ok(&format!("charge {slot}"))?;
    let dir = env.cgroup.root().join(format!("uid_{}", app.uid));
    let max = std::fs::read_to_string(dir.join("memory.max")).map_err(|e| e.to_string())?;
    println!("/uid_{}/memory.max = {}", app.uid, max.trim());
    check(max.trim() != "max" && max.trim().parse::<u64>().is_ok(), || format!("memory.max not set: {max:?}"))
}

/// `chargectl dump`'s text shows each app's charges (printed into the lane log).
pub fn dump_shows_per_app_charges(env: &Env) -> Outcome {
    let mut gralloc = env.spawn(AID_GRAPHICS, None)?;
    let apps = [env.spawn(10040, None)?, env.spawn(10041, None)?];
    for (i, app) in apps.iter().enumerate() {
        let (slot, _) = gralloc.alloc("system", (i as u64 + 1) * 3 * MIB)?;
        gralloc.ok(&format!("charge_for {slot} {}", app.pid))?;
    }
    let dump = env.client.service().dumpState().map_err(|e| format!("{e:?}"))?;
    println!("{dump}");
    for app in &apps {
        check(dump.contains(&app.cgroup), || format!("dump lacks {}", app.cgroup))?;
    }
    Ok(())
}

/// With `dma_heap.mem_accounting=1` the kernel charges gralloc for what it allocates on an app's
/// behalf, so the app's memory.max cannot see those bytes: the service counts them against it.
/// (Without mem_accounting the ledger's own dma-buf budget does this; see the over-limit case.)
pub fn on_behalf_bytes_the_kernel_charged_to_the_allocator_count_against_the_app(env: &Env) -> Outcome {
    let mut gralloc = env.spawn(AID_GRAPHICS, None)?;
    let app = env.spawn(10050, None)?;
    let level = format!("/uid_{}", app.uid);
    let (first, _) = gralloc.alloc("system", MIB)?;
    gralloc.ok(&format!("charge_for {first} {}", app.pid))?;
    let current = env.cgroup.memory(&level).map_err(|e| e.to_string())?.current;
    let max = (current + 24 * MIB).div_ceil(4096) * 4096;
    env.cgroup.write_memory_limit(&level, chargetransfer::ledger::LimitKind::Max, max).map_err(|e| e.to_string())?;
    let (a, _) = gralloc.alloc("system", 16 * MIB)?;
    gralloc.ok(&format!("charge_for {a} {}", app.pid))?;
    let app_kernel = env.cgroup.memory(&level).map_err(|e| e.to_string())?.current;
    println!(
        "{level}: memory.max {max}, kernel memory.current {app_kernel} (gralloc was charged), ledger {} bytes",
        charged_bytes_of(env, app.pid)?
    );
    let (b, _) = gralloc.alloc("system", 16 * MIB)?;
    refused(&mut gralloc, &format!("charge_for {b} {}", app.pid), ErrorCode::OVER_LIMIT)?;
    let (c, _) = gralloc.alloc("system", 2 * MIB)?;
    gralloc.ok(&format!("charge_for {c} {}", app.pid))?;
    check(charged_bytes_of(env, app.pid)? == 19 * MIB as i64, || "the app should pay 1 + 16 + 2 MiB".into())
}
