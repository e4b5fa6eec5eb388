//! The VTS cases. Each runs against the live service with real processes, uids, cgroups and
//! dma-bufs, and checks the service's numbers against the kernel's where the kernel has them.

use chargetransfer::aidl::android::hardware::chargetransfer::{ErrorCode::ErrorCode, IChargeTransfer};

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

fn owner_of(env: &Env, inode: u64) -> Result<Option<(i32, String)>, String> {
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
    check(r[2] == app.pid.to_string() && r[3] == app.cgroup, || format!("charged to {r:?}, expected pid {} in {}", app.pid, app.cgroup))?;
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
    check(charged_bytes_of(env, sf.pid)? == 0 && charged_bytes_of(env, app.pid)? == 2 * MIB as i64, || "transfer did not move the charge".into())?;
    let mut other = env.spawn(10015, None)?;
    refused(&mut other, &format!("release {inode}"), ErrorCode::NOT_OWNER)?;
    app.ok(&format!("release {inode}"))?;
    check(charged_bytes_of(env, app.pid)? == 0, || "release did not uncharge".into())?;
    refused(&mut app, &format!("release {inode}"), ErrorCode::NOT_CHARGED)?;
    app.ok(&format!("close {app_slot}"))?;
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
        eventually(|| Ok(owner_of(env, inode)?.is_none()), &format!("charge of killed pid {pid} released (token: {register})"))?;
    }
    Ok(())
}
