//! Issue 5's cases: charges that follow buffers across binder handoffs (trusted push, offer and
//! accept), every refusal of the transfer protocol, the handoff rule when an owner dies, and
//! buffers freed without a release call. Each case checks the ledger through the service and, where
//! the kernel accounts the heap itself, the kernel's memcg numbers.

use std::time::Duration;

use chargetransfer::binder::aidl::vendor::chargetransfer::{ChargeInfo::ChargeInfo, ErrorCode::ErrorCode};

use crate::cases::{charged_bytes_of, check, eventually, refused, usage_of, Outcome};
use crate::harness::{Child, Env, AID_GRAPHICS, AID_SYSTEM};

const MIB: u64 = 1 << 20;
/// What a client's own memory may move a memcg's memory.current by between two readings.
const SLACK: u64 = 256 << 10;

/// The ledger's charge of `inode`, if any.
pub fn charge_of(env: &Env, inode: u64) -> Result<Option<ChargeInfo>, String> {
    let all = env.client.service().listCharges(0).map_err(|e| format!("listCharges: {e:?}"))?;
    Ok(all.into_iter().find(|c| c.inode as u64 == inode))
}

/// Who pays for `inode`: (owner pid, owner cgroup); pid 0 when a cgroup pays without a process.
pub fn payer(env: &Env, inode: u64) -> Result<Option<(u32, String)>, String> {
    Ok(charge_of(env, inode)?.map(|c| (c.ownerPid as u32, c.ownerCgroup)))
}

fn expect_payer(env: &Env, inode: u64, pid: u32, cgroup: &str) -> Outcome {
    let now = payer(env, inode)?;
    check(now.as_ref().is_some_and(|(p, c)| *p == pid && c == cgroup), || {
        format!("buffer {inode} should be charged to pid {pid} in {cgroup}, the ledger says {now:?}")
    })
}

fn expect_bytes(env: &Env, who: &Child, bytes: u64) -> Outcome {
    let charged = charged_bytes_of(env, who.pid)?;
    let memcg = usage_of(env, who.pid, "memcg")?;
    check(charged == bytes as i64 && memcg == bytes as i64, || {
        format!(
            "pid {} (uid {}, {}) should pay {bytes} bytes, the service counts {charged} (memcg pool {memcg})",
            who.pid, who.uid, who.cgroup
        )
    })
}

/// Bytes charged under `/uid_<uid>` (its processes and the uid cgroup itself).
fn uid_bytes(env: &Env, uid: u32) -> Result<i64, String> {
    let u = env.client.service().getUidUsage(uid as i32).map_err(|e| format!("getUidUsage({uid}): {e:?}"))?;
    Ok(u.bufferBytes)
}

fn expect_uid_bytes(env: &Env, uid: u32, bytes: u64) -> Outcome {
    let now = uid_bytes(env, uid)?;
    check(now == bytes as i64, || format!("uid {uid} should pay {bytes} bytes, the service counts {now}"))
}

/// memory.current of a cgroup, when the kernel charges system-heap dma-bufs to the allocating
/// task (`dma_heap.mem_accounting=1`); `None` where it does not, so the kernel check is skipped.
fn kernel_memcg(env: &Env, cgroup: &str) -> Option<u64> {
    let on = std::fs::read_to_string("/sys/module/dma_heap/parameters/mem_accounting").is_ok_and(|v| v.trim() == "Y");
    if !on {
        return None;
    }
    env.cgroup.memory(cgroup).ok().map(|m| m.current)
}

fn ticket(reply: &[String]) -> Result<i64, String> {
    reply.first().and_then(|t| t.parse().ok()).ok_or_else(|| format!("offer answered {reply:?}, expected a ticket"))
}

fn reconcile(env: &Env) -> Result<Vec<u64>, String> {
    let report = env.client.service().reconcile().map_err(|e| format!("reconcile: {e:?}"))?;
    Ok(report.releasedInodes.iter().map(|i| *i as u64).collect())
}

/// dequeueBuffer: SurfaceFlinger asks gralloc for a buffer, gralloc charges SurfaceFlinger; then
/// SurfaceFlinger hands it to the app and pushes the charge along. The app ends up paying; the
/// kernel (which charged the allocator at allocation) keeps its charge on gralloc.
pub fn double_hop_gralloc_to_surfaceflinger_to_app_ends_with_the_app_paying(env: &Env) -> Outcome {
    let size = 8 * MIB;
    let mut gralloc = env.spawn(AID_GRAPHICS, None)?;
    let mut sf = env.spawn(AID_SYSTEM, Some("/system/surfaceflinger"))?;
    let mut app = env.spawn(10221, None)?;
    let kernel_before = kernel_memcg(env, &gralloc.cgroup);

    let (g_slot, inode) = gralloc.alloc("system", size)?;
    let r = gralloc.ok(&format!("charge_for {g_slot} {}", sf.pid))?;
    check(r[2] == sf.pid.to_string() && r[3] == sf.cgroup, || {
        format!("first hop charged {r:?}, expected SurfaceFlinger")
    })?;
    let sf_slot = gralloc.give(g_slot, &mut sf)?;
    gralloc.ok(&format!("close {g_slot}"))?;
    expect_bytes(env, &sf, size)?;
    expect_bytes(env, &gralloc, 0)?;

    let _app_slot = sf.give(sf_slot, &mut app)?;
    let r = sf.ok(&format!("transfer {sf_slot} {}", app.pid))?;
    check(r[2] == app.pid.to_string() && r[3] == app.cgroup, || {
        format!("second hop answered {r:?}, expected the app")
    })?;
    expect_payer(env, inode, app.pid, &app.cgroup)?;
    expect_bytes(env, &app, size)?;
    expect_bytes(env, &sf, 0)?;
    expect_bytes(env, &gralloc, 0)?;
    expect_uid_bytes(env, app.uid, size)?;
    let sf_group = env.client.service().getCgroupUsage(&sf.cgroup).map_err(|e| format!("{e:?}"))?;
    check(sf_group.bufferBytes == 0, || format!("{} still pays {} bytes", sf.cgroup, sf_group.bufferBytes))?;

    if let (Some(before), Some(after)) = (kernel_before, kernel_memcg(env, &gralloc.cgroup)) {
        check(after >= before + size, || {
            format!("the kernel should have charged gralloc's memcg {size} bytes: {before} -> {after}")
        })?;
        let app_kernel = kernel_memcg(env, &app.cgroup).unwrap_or(0);
        println!(
            "kernel memcg: gralloc {} +{} KiB (allocator charged at allocation), app {} {} KiB; ledger: app pays",
            gralloc.cgroup,
            (after - before) >> 10,
            app.cgroup,
            app_kernel >> 10
        );
        check(app_kernel < size, || {
            format!("the kernel does not move charges, yet the app's memory.current is {app_kernel}")
        })?;
    }
    Ok(())
}

/// Pushing is for trusted allocators and compositors only: an app that hands its buffer to another
/// app cannot make that app pay, neither by transfer nor by charging on its behalf.
pub fn an_app_cannot_push_its_buffer_onto_another_app(env: &Env) -> Outcome {
    let size = 2 * MIB;
    let mut app = env.spawn(10222, None)?;
    let mut victim = env.spawn(10223, None)?;
    let (slot, inode) = app.alloc("system", size)?;
    app.ok(&format!("charge {slot}"))?;
    let victim_slot = app.give(slot, &mut victim)?;
    refused(&mut app, &format!("transfer {slot} {}", victim.pid), ErrorCode::NOT_TRUSTED)?;
    refused(&mut app, &format!("charge_for {slot} {}", victim.pid), ErrorCode::NOT_TRUSTED)?;
    // Holding the buffer does not let the victim be pushed either: it cannot even push it back.
    refused(&mut victim, &format!("transfer {victim_slot} {}", app.pid), ErrorCode::NOT_TRUSTED)?;
    expect_payer(env, inode, app.pid, &app.cgroup)?;
    expect_bytes(env, &app, size)?;
    expect_bytes(env, &victim, 0)?;
    expect_uid_bytes(env, victim.uid, 0)
}

pub fn offer_and_accept_move_the_charge_with_consent(env: &Env) -> Outcome {
    let size = 2 * MIB;
    let mut owner = env.spawn(10224, None)?;
    let mut receiver = env.spawn(10225, None)?;
    let (slot, inode) = owner.alloc("system", size)?;
    owner.ok(&format!("charge {slot}"))?;
    let r_slot = owner.give(slot, &mut receiver)?;
    let t = ticket(&owner.ok(&format!("offer {slot} {} 10000", receiver.pid))?)?;
    // An offer alone moves nothing: the receiver has not agreed yet.
    expect_payer(env, inode, owner.pid, &owner.cgroup)?;
    expect_bytes(env, &receiver, 0)?;
    let r = receiver.ok(&format!("accept {t} {r_slot}"))?;
    check(r[2] == receiver.pid.to_string() && r[3] == receiver.cgroup, || format!("accept answered {r:?}"))?;
    expect_payer(env, inode, receiver.pid, &receiver.cgroup)?;
    expect_bytes(env, &receiver, size)?;
    expect_bytes(env, &owner, 0)?;
    expect_uid_bytes(env, owner.uid, 0)?;
    expect_uid_bytes(env, receiver.uid, size)
}

/// A ticket names its receiver process (pid and start time), not its uid: another process of
/// the same app, or another app, holding the same buffer cannot redeem it, and trying does not
/// burn it.
pub fn a_ticket_for_another_process_is_refused_and_still_works_for_its_receiver(env: &Env) -> Outcome {
    let size = MIB;
    let mut owner = env.spawn(10226, None)?;
    let mut receiver = env.spawn(10227, None)?;
    let mut same_app = env.spawn(10227, None)?;
    let mut other_app = env.spawn(10228, None)?;
    let (slot, inode) = owner.alloc("system", size)?;
    owner.ok(&format!("charge {slot}"))?;
    let r_slot = owner.give(slot, &mut receiver)?;
    let s_slot = owner.give(slot, &mut same_app)?;
    let o_slot = owner.give(slot, &mut other_app)?;
    let t = ticket(&owner.ok(&format!("offer {slot} {} 10000", receiver.pid))?)?;
    refused(&mut same_app, &format!("accept {t} {s_slot}"), ErrorCode::BAD_TICKET)?;
    refused(&mut other_app, &format!("accept {t} {o_slot}"), ErrorCode::BAD_TICKET)?;
    expect_payer(env, inode, owner.pid, &owner.cgroup)?;
    expect_bytes(env, &same_app, 0)?;
    expect_bytes(env, &other_app, 0)?;
    receiver.ok(&format!("accept {t} {r_slot}"))?;
    expect_payer(env, inode, receiver.pid, &receiver.cgroup)?;
    expect_bytes(env, &receiver, size)
}

/// A ticket names its buffer: presenting another buffer (even one the same owner offers) is
/// refused and changes neither buffer's payer.
pub fn a_ticket_presented_with_another_buffer_is_refused(env: &Env) -> Outcome {
    let mut owner = env.spawn(10229, None)?;
    let mut receiver = env.spawn(10230, None)?;
    let (a, a_inode) = owner.alloc("system", MIB)?;
    let (b, b_inode) = owner.alloc("system", 2 * MIB)?;
    owner.ok(&format!("charge {a}"))?;
    owner.ok(&format!("charge {b}"))?;
    let ra = owner.give(a, &mut receiver)?;
    let rb = owner.give(b, &mut receiver)?;
    let t = ticket(&owner.ok(&format!("offer {a} {} 10000", receiver.pid))?)?;
    refused(&mut receiver, &format!("accept {t} {rb}"), ErrorCode::BAD_TICKET)?;
    expect_payer(env, a_inode, owner.pid, &owner.cgroup)?;
    expect_payer(env, b_inode, owner.pid, &owner.cgroup)?;
    expect_bytes(env, &receiver, 0)?;
    receiver.ok(&format!("accept {t} {ra}"))?;
    expect_payer(env, a_inode, receiver.pid, &receiver.cgroup)?;
    expect_payer(env, b_inode, owner.pid, &owner.cgroup)?;
    expect_bytes(env, &receiver, MIB)?;
    expect_bytes(env, &owner, 2 * MIB)
}

/// A ticket is used at most once: after the charge went back to the first owner, replaying the
/// old ticket does not pull it over again.
pub fn a_used_ticket_cannot_be_replayed(env: &Env) -> Outcome {
    let size = MIB;
    let mut owner = env.spawn(10231, None)?;
    let mut receiver = env.spawn(10232, None)?;
    let (slot, inode) = owner.alloc("system", size)?;
    owner.ok(&format!("charge {slot}"))?;
    let r_slot = owner.give(slot, &mut receiver)?;
    let t1 = ticket(&owner.ok(&format!("offer {slot} {} 10000", receiver.pid))?)?;
    receiver.ok(&format!("accept {t1} {r_slot}"))?;
    refused(&mut receiver, &format!("accept {t1} {r_slot}"), ErrorCode::BAD_TICKET)?;
    let t2 = ticket(&receiver.ok(&format!("offer {r_slot} {} 10000", owner.pid))?)?;
    owner.ok(&format!("accept {t2} {slot}"))?;
    expect_payer(env, inode, owner.pid, &owner.cgroup)?;
    refused(&mut receiver, &format!("accept {t1} {r_slot}"), ErrorCode::BAD_TICKET)?;
    refused(&mut owner, &format!("accept {t2} {slot}"), ErrorCode::BAD_TICKET)?;
    expect_payer(env, inode, owner.pid, &owner.cgroup)?;
    expect_bytes(env, &owner, size)?;
    expect_bytes(env, &receiver, 0)
}

/// An offer nobody accepted in time expires and the charge stays with the owner.
pub fn an_expired_offer_leaves_the_charge_where_it_was(env: &Env) -> Outcome {
    let size = MIB;
    let mut owner = env.spawn(10233, None)?;
    let mut receiver = env.spawn(10234, None)?;
    let (slot, inode) = owner.alloc("system", size)?;
    owner.ok(&format!("charge {slot}"))?;
    let r_slot = owner.give(slot, &mut receiver)?;
    let t = ticket(&owner.ok(&format!("offer {slot} {} 100", receiver.pid))?)?;
    std::thread::sleep(Duration::from_millis(300));
    refused(&mut receiver, &format!("accept {t} {r_slot}"), ErrorCode::BAD_TICKET)?;
    expect_payer(env, inode, owner.pid, &owner.cgroup)?;
    expect_bytes(env, &owner, size)?;
    expect_bytes(env, &receiver, 0)
}

/// Only the payer may offer a charge: a holder cannot give away what someone else pays for, and
/// a buffer nobody pays for cannot be offered at all.
pub fn offering_a_buffer_you_do_not_own_is_refused(env: &Env) -> Outcome {
    let size = MIB;
    let mut owner = env.spawn(10235, None)?;
    let mut holder = env.spawn(10236, None)?;
    let third = env.spawn(10237, None)?;
    let (slot, inode) = owner.alloc("system", size)?;
    owner.ok(&format!("charge {slot}"))?;
    let h_slot = owner.give(slot, &mut holder)?;
    refused(&mut holder, &format!("offer {h_slot} {} 10000", third.pid), ErrorCode::NOT_OWNER)?;
    refused(&mut holder, &format!("offer {h_slot} {} 10000", owner.pid), ErrorCode::NOT_OWNER)?;
    refused(&mut holder, &format!("release {inode}"), ErrorCode::NOT_OWNER)?;
    let (uncharged, _) = holder.alloc("system", size)?;
    refused(&mut holder, &format!("offer {uncharged} {} 10000", third.pid), ErrorCode::NOT_CHARGED)?;
    expect_payer(env, inode, owner.pid, &owner.cgroup)?;
    expect_bytes(env, &owner, size)?;
    expect_bytes(env, &holder, 0)?;
    expect_bytes(env, &third, 0)
}

/// A pid that is not a live process cannot be made to pay, by offer or by a trusted push; a
/// negative pid is not a pid at all.
pub fn offering_or_pushing_to_a_dead_or_non_existent_process_is_refused(env: &Env) -> Outcome {
    let size = MIB;
    let mut owner = env.spawn(10238, None)?;
    let mut sf = env.spawn(AID_SYSTEM, Some("/system/surfaceflinger"))?;
    let mut receiver = env.spawn(10239, None)?;
    let (slot, inode) = owner.alloc("system", size)?;
    owner.ok(&format!("charge {slot}"))?;
    let (sf_slot, sf_inode) = sf.alloc("system", size)?;
    sf.ok(&format!("charge {sf_slot}"))?;
    owner.give(slot, &mut receiver)?;
    sf.give(sf_slot, &mut receiver)?;
    let dead = receiver.kill();
    // Far above any pid_max, yet a valid positive pid.
    let never = i32::MAX as u32 - 7;
    for to in [dead, never] {
        refused(&mut owner, &format!("offer {slot} {to} 10000"), ErrorCode::NO_SUCH_PROCESS)?;
        refused(&mut sf, &format!("transfer {sf_slot} {to}"), ErrorCode::NO_SUCH_PROCESS)?;
    }
    refused(&mut owner, &format!("offer {slot} -5 10000"), ErrorCode::INVALID_ARGUMENT)?;
    refused(&mut sf, &format!("transfer {sf_slot} -5"), ErrorCode::INVALID_ARGUMENT)?;
    expect_payer(env, inode, owner.pid, &owner.cgroup)?;
    expect_payer(env, sf_inode, sf.pid, &sf.cgroup)?;
    expect_bytes(env, &owner, size)?;
    expect_bytes(env, &sf, size)
}

/// A receiver that already pays (it accepted an earlier offer of the same buffer, or charges it
/// again itself) is not charged a second time: one payer per buffer.
pub fn a_receiver_that_already_pays_is_not_charged_twice(env: &Env) -> Outcome {
    let size = 2 * MIB;
    let mut owner = env.spawn(10240, None)?;
    let mut receiver = env.spawn(10241, None)?;
    let (slot, inode) = owner.alloc("system", size)?;
    owner.ok(&format!("charge {slot}"))?;
    let r_slot = owner.give(slot, &mut receiver)?;
    let t1 = ticket(&owner.ok(&format!("offer {slot} {} 10000", receiver.pid))?)?;
    let t2 = ticket(&owner.ok(&format!("offer {slot} {} 10000", receiver.pid))?)?;
    receiver.ok(&format!("accept {t1} {r_slot}"))?;
    let r = receiver.ok(&format!("accept {t2} {r_slot}"))?;
    check(r[2] == receiver.pid.to_string(), || format!("second accept answered {r:?}"))?;
    receiver.ok(&format!("charge {r_slot}"))?;
    refused(&mut owner, &format!("charge {slot}"), ErrorCode::ALREADY_CHARGED)?;
    expect_payer(env, inode, receiver.pid, &receiver.cgroup)?;
    expect_bytes(env, &receiver, size)?;
    expect_bytes(env, &owner, 0)?;
    expect_uid_bytes(env, receiver.uid, size)?;
    let entries = env
        .client
        .service()
        .listCharges(0)
        .map_err(|e| format!("{e:?}"))?
        .iter()
        .filter(|c| c.inode as u64 == inode)
        .count();
    check(entries == 1, || format!("buffer {inode} has {entries} ledger entries"))
}

/// The documented handoff rule, step by step, on one buffer held by three processes:
/// 1. the owner dies → another live process of the same uid that holds it pays;
/// 2. that one dies too, only another app holds it → the charge reparents to `/uid_<owner uid>`
///    with no owning process (as the kernel reparents), never onto the other app, and stays
///    there across reconcile passes;
/// 3. the last holder closes it → the next reconcile releases it.
pub fn a_buffer_shared_by_three_processes_lands_by_the_documented_rule_when_its_owner_dies(env: &Env) -> Outcome {
    let size = 4 * MIB;
    let app = 10242;
    let mut owner = env.spawn(app, None)?;
    let mut sibling = env.spawn(app, None)?;
    let mut other = env.spawn(10243, None)?;
    owner.ok("register")?;
    let (slot, inode) = owner.alloc("system", size)?;
    owner.ok(&format!("charge {slot}"))?;
    owner.give(slot, &mut sibling)?;
    let o_slot = owner.give(slot, &mut other)?;

    let dead = owner.kill();
    let (s_pid, s_cgroup) = (sibling.pid, sibling.cgroup.clone());
    eventually(
        || Ok(payer(env, inode)? == Some((s_pid, s_cgroup.clone()))),
        &format!("owner {dead} died: its sibling {s_pid} (same uid) pays"),
    )?;
    expect_bytes(env, &sibling, size)?;
    expect_bytes(env, &other, 0)?;
    expect_uid_bytes(env, app, size)?;
    expect_uid_bytes(env, other.uid, 0)?;

    sibling.kill();
    let parent = format!("/uid_{app}");
    eventually(
        || Ok(payer(env, inode)? == Some((0, parent.clone()))),
        &format!("sibling {s_pid} died: {parent} pays"),
    )?;
    for _ in 0..2 {
        reconcile(env)?;
        expect_payer(env, inode, 0, &parent)?;
    }
    expect_bytes(env, &other, 0)?;
    expect_uid_bytes(env, app, size)?;
    expect_uid_bytes(env, other.uid, 0)?;

    other.ok(&format!("close {o_slot}"))?;
    let released = reconcile(env)?;
    check(released.contains(&inode), || format!("reconcile released {released:?}, expected {inode}"))?;
    check(payer(env, inode)?.is_none(), || format!("buffer {inode} still charged"))?;
    expect_uid_bytes(env, app, 0)
}

/// Every holder closes its fd and nobody calls release: the ledger cannot see a close, so the
/// charge stays until the next reconcile finds no holder and releases it. Apps may not run
/// reconcile; the root orchestrator may.
pub fn a_buffer_freed_by_every_holder_without_release_disappears_at_the_next_reconcile(env: &Env) -> Outcome {
    let size = 4 * MIB;
    let mut owner = env.spawn(10244, None)?;
    let mut holder = env.spawn(10245, None)?;
    let (slot, inode) = owner.alloc("system", size)?;
    owner.ok(&format!("charge {slot}"))?;
    let h_slot = owner.give(slot, &mut holder)?;
    let kernel_held = kernel_memcg(env, &owner.cgroup);
    // The holder lets go first: were the owner first, the handoff rule would make the holder pay.
    holder.ok(&format!("close {h_slot}"))?;
    expect_payer(env, inode, owner.pid, &owner.cgroup)?;
    owner.ok(&format!("close {slot}"))?;
    expect_payer(env, inode, owner.pid, &owner.cgroup)?;
    refused(&mut holder, "reconcile", ErrorCode::NOT_TRUSTED)?;

    let released = reconcile(env)?;
    check(released.contains(&inode), || format!("reconcile released {released:?}, expected {inode}"))?;
    check(payer(env, inode)?.is_none(), || format!("buffer {inode} still charged after reconcile"))?;
    expect_bytes(env, &owner, 0)?;
    expect_uid_bytes(env, owner.uid, 0)?;
    if let (Some(held), Some(now)) = (kernel_held, kernel_memcg(env, &owner.cgroup)) {
        println!(
            "kernel memcg of {}: {} KiB while held, {} KiB after the last close",
            owner.cgroup,
            held >> 10,
            now >> 10
        );
        check(now + size <= held + SLACK, || {
            format!("the kernel should have freed {size} bytes from {}: {held} -> {now}", owner.cgroup)
        })?;
    }
    Ok(())
}
