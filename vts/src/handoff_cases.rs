//! The handoff rule over real processes and dma-bufs: apps pass a buffer to each other (the fd
//! copied into the receiver, as binder does with a HardwareBuffer in a parcel) and neither calls
//! the service; when the payer lets go, the next reconcile makes a holder pay — along a chain
//! A → B → C, and to the one-payer rule's pick when several hold it.

use std::time::Instant;

use crate::cases::{charged_bytes_of, check, owner_of, Outcome};
use crate::harness::{Child, Env};

const MIB: u64 = 1 << 20;

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
    // A lets go: B pays from the next reconcile on, in the ledger and in B's usage.
    a.ok(&format!("close {slot_a}"))?;
    let let_go = Instant::now();
    reconcile(env)?;
    let latency = let_go.elapsed();
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
    println!(
        "handoff: the receiver paid at the first reconcile after the sender let go ({} ms for that reconcile)",
        latency.as_millis()
    );
    a.ok(&format!("close {back_a}"))?;
    b.ok(&format!("close {back_b}"))?;
    reconcile(env)?;
    check(owner_of(env, inode)?.is_none(), || format!("buffer {inode} still charged after every holder let go"))
}
