//! Cases for the `selinux` lane: SELinux active (permissive) with the lane's policy
//! (`vts/lane/selinux/policy.conf`), every client in the domain of its role. They prove that
//! binder hands the service each caller's security context and that the context, not the uid,
//! decides trust. Each client answers with the owner the service recorded, so the cases need no
//! query the service might restrict to the caller's own data.

use chargetransfer::binder::aidl::vendor::chargetransfer::ErrorCode::ErrorCode;

use crate::cases::{check, refused, Outcome};
use crate::harness::{context_of, Child, Env, AID_GRAPHICS, AID_SYSTEM};

const MIB: u64 = 1 << 20;
const GRALLOC: &str = "hal_graphics_allocator_default";

/// The context the kernel gives `child`: what binder sends for its calls.
fn context(child: &Child) -> Result<String, String> {
    let path = format!("/proc/{}/attr/current", child.pid);
    let raw = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    Ok(raw.trim_end_matches(['\0', '\n']).to_string())
}

fn in_domain(child: &Child, domain: &str) -> Outcome {
    let now = context(child)?;
    check(now == context_of(domain), || format!("pid {} runs as {now}, expected {}", child.pid, context_of(domain)))
}

/// `charge_for` by `by` on behalf of `owner`: the (owner pid, owner cgroup) the service recorded.
fn charge_for(by: &mut Child, slot: usize, owner: &Child) -> Result<(String, String), String> {
    let r = by.ok(&format!("charge_for {slot} {}", owner.pid))?;
    Ok((r[2].clone(), r[3].clone()))
}

/// An app uid, which no policy trusts by uid, in the allocator's domain may charge on behalf of
/// another app: only the context binder delivered can have made it trusted.
pub fn the_calling_context_reaches_the_service(env: &Env) -> Outcome {
    let dump = env.client.service().dumpState().map_err(|e| format!("dumpState: {e:?}"))?;
    let rule = dump.lines().find(|l| l.starts_with("trust: ")).unwrap_or("(no trust line)");
    println!("selinux: service says {rule}");
    check(rule.starts_with("trust: SELinux contexts"), || format!("the service does not trust by context: {rule}"))?;
    let mut allocator = env.spawn_in(10031, None, Some(GRALLOC))?;
    let app = env.spawn(10032, None)?;
    in_domain(&allocator, GRALLOC)?;
    let (slot, _) = allocator.alloc("system", MIB)?;
    let owner = charge_for(&mut allocator, slot, &app)?;
    println!(
        "selinux: uid {} as {} charged on behalf of pid {}: owner pid {} in {}",
        allocator.uid,
        context(&allocator)?,
        app.pid,
        owner.0,
        owner.1
    );
    check(owner == (app.pid.to_string(), app.cgroup.clone()), || {
        format!("charged to {owner:?}, expected pid {} in {}", app.pid, app.cgroup)
    })
}

/// The double hop with Android's domains: gralloc charges SurfaceFlinger on its behalf,
/// SurfaceFlinger pushes the charge to the app that holds the buffer.
pub fn a_trusted_context_can_push_and_charge_on_behalf(env: &Env) -> Outcome {
    let mut gralloc = env.spawn(AID_GRAPHICS, None)?;
    let mut sf = env.spawn(AID_SYSTEM, None)?;
    let mut app = env.spawn(10033, None)?;
    in_domain(&gralloc, GRALLOC)?;
    in_domain(&sf, "surfaceflinger")?;
    in_domain(&app, "untrusted_app")?;
    let (slot, _) = gralloc.alloc("system", MIB)?;
    let owner = charge_for(&mut gralloc, slot, &sf)?;
    println!("selinux: {} charged on behalf of pid {}: owner pid {}", context(&gralloc)?, sf.pid, owner.0);
    check(owner.0 == sf.pid.to_string(), || format!("on-behalf charge went to {owner:?}, expected pid {}", sf.pid))?;
    let at_sf = gralloc.give(slot, &mut sf)?;
    sf.give(at_sf, &mut app)?;
    let r = sf.ok(&format!("transfer {at_sf} {}", app.pid))?;
    println!("selinux: {} pushed to pid {}: owner pid {} in {}", context(&sf)?, app.pid, r[2], r[3]);
    check(r[2] == app.pid.to_string() && r[3] == app.cgroup, || {
        format!("push went to {r:?}, expected pid {} in {}", app.pid, app.cgroup)
    })
}

/// gralloc's uid (and system's) in an app's domain is an app: no on-behalf charge, no push, and
/// the buffer stays where it was.
pub fn a_trusted_uid_in_an_app_context_is_not_trusted(env: &Env) -> Outcome {
    let mut impostor = env.spawn_in(AID_GRAPHICS, None, Some("untrusted_app"))?;
    let mut victim = env.spawn(10034, None)?;
    in_domain(&impostor, "untrusted_app")?;
    let (slot, _) = impostor.alloc("system", MIB)?;
    refused(&mut impostor, &format!("charge_for {slot} {}", victim.pid), ErrorCode::NOT_TRUSTED)?;
    println!("selinux: uid {} as {}: charge on behalf refused NOT_TRUSTED", impostor.uid, context(&impostor)?);
    let own = impostor.ok(&format!("charge {slot}"))?;
    check(own[2] == impostor.pid.to_string(), || format!("own charge went to {own:?}"))?;
    impostor.give(slot, &mut victim)?;
    refused(&mut impostor, &format!("transfer {slot} {}", victim.pid), ErrorCode::NOT_TRUSTED)?;
    println!("selinux: uid {} as {}: push refused NOT_TRUSTED", impostor.uid, context(&impostor)?);
    // Charging again is a no-op that answers with the recorded owner: still the impostor.
    let again = impostor.ok(&format!("charge {slot}"))?;
    check(again[2] == impostor.pid.to_string(), || format!("after the refused push the owner is {again:?}"))?;

    let mut system_app = env.spawn_in(AID_SYSTEM, None, Some("platform_app"))?;
    in_domain(&system_app, "platform_app")?;
    let (slot, _) = system_app.alloc("system", MIB)?;
    refused(&mut system_app, &format!("charge_for {slot} {}", victim.pid), ErrorCode::NOT_TRUSTED)?;
    println!("selinux: uid {} as {}: charge on behalf refused NOT_TRUSTED", system_app.uid, context(&system_app)?);
    Ok(())
}
