//! Issue 12's cases over real binder, run as app uids the production policy does not trust: an
//! owner cannot release a buffer it still holds, nobody charges init or a kernel thread, a push
//! the receiver never holds goes back to its maker, and an app reads its own uid only.

use std::time::Duration;

use chargetransfer::binder::aidl::vendor::chargetransfer::ErrorCode::ErrorCode;

use crate::cases::{charged_bytes_of, check, refused, Outcome};
use crate::harness::{Env, AID_GRAPHICS};

const MIB: u64 = 1 << 20;

/// Case 1: releasing while still holding the fd would let the app keep the memory unpaid.
pub fn an_owner_cannot_release_a_buffer_it_still_holds(env: &Env) -> Outcome {
    let mut gralloc = env.spawn(AID_GRAPHICS, None)?;
    let mut app = env.spawn(10061, None)?;
    let (slot, inode) = gralloc.alloc("system", MIB)?;
    let app_slot = gralloc.give(slot, &mut app)?;
    gralloc.ok(&format!("charge_for {slot} {}", app.pid))?;
    gralloc.ok(&format!("close {slot}"))?;
    refused(&mut app, &format!("release {inode}"), ErrorCode::INVALID_STATE)?;
    check(charged_bytes_of(env, app.pid)? == MIB as i64, || "a refused release must leave the charge".into())?;
    app.ok(&format!("close {app_slot}"))?;
    app.ok(&format!("release {inode}"))?;
    check(charged_bytes_of(env, app.pid)? == 0, || "release after close did not uncharge".into())
}

/// Case 5: init and kernel threads have no memory of their own to charge.
pub fn on_behalf_of_init_or_a_kernel_thread_is_refused(env: &Env) -> Outcome {
    let mut gralloc = env.spawn(AID_GRAPHICS, None)?;
    let (slot, _) = gralloc.alloc("system", MIB)?;
    refused(&mut gralloc, &format!("charge_for {slot} 1"), ErrorCode::INVALID_ARGUMENT)?;
    // kthreadd is pid 2 on every Linux.
    refused(&mut gralloc, &format!("charge_for {slot} 2"), ErrorCode::INVALID_ARGUMENT)?;
    gralloc.ok(&format!("close {slot}"))?;
    Ok(())
}

/// Case 5: a trusted push to a process that never receives the buffer goes back to the pusher
/// at the first reconcile after the grace period; a receiver that holds it keeps paying.
pub fn a_push_the_receiver_never_holds_goes_back_to_its_maker(env: &Env) -> Outcome {
    let mut gralloc = env.spawn(AID_GRAPHICS, None)?;
    let mut holder = env.spawn(10062, None)?;
    let stranger = env.spawn(10063, None)?;
    let (kept, kept_inode) = gralloc.alloc("system", MIB)?;
    let (never, never_inode) = gralloc.alloc("system", 2 * MIB)?;
    holder.ok("ping")?;
    gralloc.give(kept, &mut holder)?;
    gralloc.ok(&format!("charge_for {kept} {}", holder.pid))?;
    gralloc.ok(&format!("charge_for {never} {}", stranger.pid))?;
    check(charged_bytes_of(env, stranger.pid)? == 2 * MIB as i64, || "the on-behalf charge did not land".into())?;
    std::thread::sleep(Duration::from_millis(5500));
    env.client.service().reconcile().map_err(|e| format!("reconcile: {e:?}"))?;
    check(charged_bytes_of(env, stranger.pid)? == 0, || {
        format!("pid {} never held buffer {never_inode} but still pays for it", stranger.pid)
    })?;
    check(charged_bytes_of(env, gralloc.pid)? == 2 * MIB as i64, || "the charge did not go back to gralloc".into())?;
    check(charged_bytes_of(env, holder.pid)? == MIB as i64, || {
        format!("pid {} holds buffer {kept_inode} and must keep paying", holder.pid)
    })
}

/// Case 7: an app sees its own uid's usage and charges, and is refused everyone else's.
pub fn an_app_reads_only_its_own_uid(env: &Env) -> Outcome {
    let mut a = env.spawn(10064, None)?;
    let mut b = env.spawn(10065, None)?;
    let (slot_a, inode_a) = a.alloc("system", MIB)?;
    a.ok(&format!("charge {slot_a}"))?;
    let (slot_b, inode_b) = b.alloc("system", MIB)?;
    b.ok(&format!("charge {slot_b}"))?;
    refused(&mut b, &format!("uid_usage {}", a.uid), ErrorCode::NOT_TRUSTED)?;
    refused(&mut b, &format!("process_usage {}", a.pid), ErrorCode::NOT_TRUSTED)?;
    refused(&mut b, &format!("list {}", a.pid), ErrorCode::NOT_TRUSTED)?;
    // A pid above PID_MAX_LIMIT names no process: the refusal must read exactly as for another
    // app's pid, or the answer tells which pids exist.
    for what in ["process_usage", "list"] {
        let absent = b.cmd(&format!("{what} 4194305")).err().map(|r| (r.code, r.message));
        let foreign = b.cmd(&format!("{what} {}", a.pid)).err().map(|r| (r.code, r.message));
        check(absent.is_some() && absent == foreign, || {
            format!("{what}: a missing pid answered {absent:?}, another app's pid {foreign:?}")
        })?;
    }
    let own = b.ok(&format!("uid_usage {}", b.uid))?;
    check(own[0] == MIB.to_string(), || format!("own uid usage answered {own:?}"))?;
    let list = b.ok("list 0")?;
    check(list[1..].contains(&inode_b.to_string()) && !list[1..].contains(&inode_a.to_string()), || {
        format!("listCharges(0) for uid {} answered {list:?}: must hold {inode_b} and not {inode_a}", b.uid)
    })?;
    let dump = b.ok("dump")?;
    check(dump[0] == "own", || "an app got the full dump".into())?;
    refused(&mut b, "reconcile", ErrorCode::NOT_TRUSTED)?;
    a.ok(&format!("close {slot_a}"))?;
    b.ok(&format!("close {slot_b}"))?;
    Ok(())
}
