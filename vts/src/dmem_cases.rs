//! Cases for the dmem lane: a kernel with the dmem controller and a CMA heap charged to the
//! `cma/reserved` region. Real `dmem.capacity`, real `dmem.current`, real refusals at `dmem.max`.

use chargetransfer::kernel::cgroupfs::DmemFile;
use chargetransfer::ledger::LimitKind;

use crate::cases::{charged_bytes_of, check, usage_of, Outcome};
use crate::harness::Env;

const MIB: u64 = 1 << 20;
const REGION: &str = "cma/reserved";
const CMA_HEAP: &str = "default_cma_region";

fn kernel_dmem(env: &Env, cgroup: &str) -> Result<u64, String> {
    let map = env.cgroup.dmem(cgroup, DmemFile::Current).map_err(|e| e.to_string())?;
    Ok(map.get(REGION).copied().unwrap_or(0))
}

pub fn dmem_capacity_lists_the_cma_region(env: &Env) -> Outcome {
    let capacity = env.cgroup.dmem_capacity().map_err(|e| e.to_string())?;
    println!("dmem.capacity: {capacity:?}");
    check(capacity.iter().any(|(r, size)| r == REGION && *size > 0), || {
        format!("{REGION} missing from dmem.capacity {capacity:?}")
    })?;
    let regions = env.client.service().getRegions().map_err(|e| format!("{e:?}"))?;
    let ours = regions
        .iter()
        .find(|r| r.name == REGION)
        .ok_or_else(|| format!("service does not know {REGION}: {regions:?}"))?;
    println!("service: {} capacity {} enforced by {} ({})", ours.name, ours.capacity, ours.enforcedBy, ours.why);
    check(ours.capacity as u64 == capacity.iter().find(|(r, _)| r == REGION).unwrap().1, || {
        "capacity differs from the kernel's".into()
    })?;
    check(ours.enforcedBy == "kernel", || {
        format!("{REGION} should be kernel-enforced, service says {}", ours.enforcedBy)
    })
}

pub fn cma_heap_charges_land_in_the_allocating_process_dmem_current(env: &Env) -> Outcome {
    let mut app = env.spawn(10020, None)?;
    let before = kernel_dmem(env, &app.cgroup)?;
    let (slot, _) = app.alloc(CMA_HEAP, 4 * MIB)?;
    let after = kernel_dmem(env, &app.cgroup)?;
    check(after - before == 4 * MIB, || format!("kernel dmem.current moved by {} not 4 MiB", after - before))?;
    app.ok(&format!("charge {slot}"))?;
    // CMA is both: the ledger attributes the bytes to memcg and the region, once each.
    let ledger_region = usage_of(env, app.pid, REGION)?;
    let ledger_memcg = usage_of(env, app.pid, "memcg")?;
    println!("cma buffer 4 MiB: kernel dmem.current {after}, ledger {REGION} {ledger_region}, ledger memcg {ledger_memcg}, kernel memory.current {:?}", env.cgroup.memory(&app.cgroup).map(|m| m.current).ok());
    check(ledger_region == 4 * MIB as i64 && ledger_memcg == 4 * MIB as i64, || {
        "ledger must count the buffer once in each pool".into()
    })?;
    check(charged_bytes_of(env, app.pid)? == 4 * MIB as i64, || "buffer bytes".into())?;
    let u = env.client.service().getProcessUsage(app.pid as i32).map_err(|e| format!("{e:?}"))?;
    let pool = u.pools.iter().find(|p| p.pool == REGION).ok_or("no region pool")?;
    check(pool.kernelUsage == after as i64, || {
        format!("service reports kernel usage {} but dmem.current is {after}", pool.kernelUsage)
    })?;
    check(pool.usage == pool.kernelUsage, || "ledger and kernel disagree: double or missing charge".into())
}

pub fn an_allocation_over_dmem_max_is_refused_by_the_kernel(env: &Env) -> Outcome {
    let mut app = env.spawn(10021, None)?;
    env.cgroup.write_dmem_limit(&app.cgroup, REGION, LimitKind::Max, 8 * MIB).map_err(|e| e.to_string())?;
    app.alloc(CMA_HEAP, 4 * MIB)?;
    match app.cmd(&format!("alloc {CMA_HEAP} {}", 8 * MIB)) {
        Ok(r) => Err(format!("12 MiB under an 8 MiB dmem.max was allowed: {r:?}")),
        Err(r) => {
            println!("kernel refused allocation over dmem.max: {}", r.message);
            check(
                r.message.contains("Resource temporarily unavailable")
                    || r.message.contains("EAGAIN")
                    || r.message.contains("os error 11"),
                || format!("expected EAGAIN, got {}", r.message),
            )?;
            check(kernel_dmem(env, &app.cgroup)? == 4 * MIB, || "the refused charge left a trace".into())
        }
    }
}

/// Autoconfig writes the region's limits into a new app's `/uid_<uid>/dmem.*` (kernel-enforced),
/// as the policy says (the VTS policy: display-class app max 8 MiB).
pub fn autoconfig_writes_real_dmem_limits(env: &Env) -> Outcome {
    let mut app = env.spawn(10023, None)?;
    let (slot, _) = app.alloc(CMA_HEAP, MIB)?;
    app.ok(&format!("charge {slot}"))?;
    let uid_cgroup = format!("/uid_{}", app.uid);
    for file in [DmemFile::Max, DmemFile::Low, DmemFile::Min] {
        let values = env.cgroup.dmem(&uid_cgroup, file).map_err(|e| e.to_string())?;
        println!("{uid_cgroup}/{}: {values:?}", file.file_name());
    }
    let max = env.cgroup.dmem(&uid_cgroup, DmemFile::Max).map_err(|e| e.to_string())?;
    check(max.get(REGION) == Some(&(8 * MIB)), || format!("dmem.max {max:?}, expected {REGION} 8 MiB"))
}
