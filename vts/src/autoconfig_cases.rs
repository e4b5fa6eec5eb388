//! Autoconfig against the real kernel: it writes only its own limits (a value another component
//! set stays, and is reported), a new app's first charge configures that app alone, a second run
//! rewrites nothing the kernel holds (limits in the kernel's pages), and a dmem write the kernel
//! cannot take leaves the limit with the service, which says so.

use chargetransfer::binder::aidl::vendor::chargetransfer::ErrorCode::ErrorCode;
use chargetransfer::ledger::LimitKind;

use crate::cases::{check, refused, Outcome};
use crate::harness::Env;

const MIB: u64 = 1 << 20;

fn memory_max(env: &Env, cgroup: &str) -> Result<u64, String> {
    env.cgroup.read_memory_limit(cgroup, LimitKind::Max).map_err(|e| format!("{cgroup}/memory.max: {e}"))
}

fn dry_run_report(env: &Env) -> Result<String, String> {
    env.client.service().autoconfigure(true, false).map_err(|e| format!("autoconfigure(dry run): {e:?}"))
}

/// A limit another component set (here: the test, as an app's memory.max of 300 MiB before its
/// first charge, and 200 MiB on an app autoconfig had already configured) is never overwritten:
/// not by the new app's own first charge, not by another app's, and a dry run reports both as
/// left alone.
pub fn autoconfig_never_overwrites_a_limit_it_did_not_write(env: &Env) -> Outcome {
    let mut configured = env.spawn(10062, None)?;
    let (slot, _) = configured.alloc("system", MIB)?;
    configured.ok(&format!("charge {slot}"))?;
    let first = format!("/uid_{}", configured.uid);
    let written = memory_max(env, &first)?;
    println!("{first}/memory.max written by autoconfig: {written}");
    check(written != chargetransfer::ledger::UNLIMITED, || format!("{first}/memory.max was not set"))?;
    env.cgroup.write_memory_limit(&first, LimitKind::Max, 200 * MIB).map_err(|e| e.to_string())?;

    let preset = "/uid_10061";
    env.cgroup.create(preset).map_err(|e| e.to_string())?;
    env.cgroup.write_memory_limit(preset, LimitKind::Max, 300 * MIB).map_err(|e| e.to_string())?;
    let mut newcomer = env.spawn(10061, None)?;
    let (slot, _) = newcomer.alloc("system", MIB)?;
    newcomer.ok(&format!("charge {slot}"))?;
    let (a, b) = (memory_max(env, preset)?, memory_max(env, &first)?);
    println!("after the new app's first charge: {preset}/memory.max {a}, {first}/memory.max {b}");
    check(a == 300 * MIB, || format!("{preset}/memory.max overwritten: {a}"))?;
    check(b == 200 * MIB, || format!("{first}/memory.max overwritten by another app's first charge: {b}"))?;

    let report = dry_run_report(env)?;
    let left: Vec<&str> =
        report.lines().skip_while(|l| !l.starts_with("left alone")).take_while(|l| !l.is_empty()).collect();
    println!("{}", left.join("\n"));
    for cgroup in [preset, first.as_str()] {
        check(left.iter().any(|l| l.contains(&format!("{cgroup}/memory.max: holds"))), || {
            format!("the report does not list {cgroup}/memory.max as left alone:\n{report}")
        })?;
    }
    Ok(())
}

/// After autoconfig wrote a new app's limits, a second run finds the kernel holding exactly them:
/// the plan rounds memory limits to the kernel's page size (from the probe), and what the kernel
/// read back is remembered, so nothing is rewritten.
pub fn a_second_autoconfig_run_rewrites_nothing_the_kernel_holds(env: &Env) -> Outcome {
    let mut app = env.spawn(10064, None)?;
    let (slot, _) = app.alloc("system", MIB)?;
    app.ok(&format!("charge {slot}"))?;
    let cgroup = format!("/uid_{}", app.uid);
    let max = memory_max(env, &cgroup)?;
    let page = chargetransfer::autoconfig::Probe::run(&chargetransfer::autoconfig::ProbeRoots::system()).page_size;
    println!("{cgroup}/memory.max {max}, kernel page size {page}");
    check(max % page == 0, || format!("memory.max {max} is not in whole {page}-byte pages"))?;
    let report = dry_run_report(env)?;
    if let Some(line) = report.lines().find(|l| l.contains("page size")) {
        println!("report:{line}");
    }
    let rewrites: Vec<&str> = report.lines().filter(|l| l.trim_start().starts_with(&format!("{cgroup}/"))).collect();
    check(rewrites.is_empty(), || format!("a second run would rewrite {rewrites:?}:\n{report}"))
}

/// dmem lane: an app whose `/uid_<uid>` cgroup has no dmem.* files (a threaded cgroup: only
/// threaded controllers, so dmem.max does not exist — ENOENT) cannot get its dmem limit from the
/// kernel. The write fails, the service keeps enforcing the limit (an over-limit charge is
/// refused with OVER_LIMIT) and `regions` names the failed write and who enforces it instead.
pub fn a_failed_dmem_write_leaves_the_limit_with_the_service(env: &Env) -> Outcome {
    const REGION: &str = "cma/reserved";
    const CMA_HEAP: &str = "default_cma_region";
    let cgroup = "/uid_10065";
    env.cgroup.create(cgroup).map_err(|e| e.to_string())?;
    let dir = env.cgroup.dir(cgroup).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("cgroup.type"), "threaded").map_err(|e| format!("{cgroup}/cgroup.type: {e}"))?;
    let files: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("dmem.") || n.starts_with("memory."))
        .collect();
    println!("{cgroup} (threaded) has memory/dmem files: {files:?}");
    check(files.is_empty(), || format!("a threaded cgroup should have no dmem files: {files:?}"))?;
    let mut app = env.spawn(10065, Some(cgroup))?;
    let (first, _) = app.alloc(CMA_HEAP, MIB)?;
    app.ok(&format!("charge {first}"))?;
    let regions = env.client.service().getRegions().map_err(|e| format!("{e:?}"))?;
    let region = regions.iter().find(|r| r.name == REGION).ok_or_else(|| format!("no {REGION}: {regions:?}"))?;
    println!("regions: {} enforced by {}: {}", region.name, region.enforcedBy, region.why);
    check(region.why.contains(&format!("{cgroup}/dmem.max failed")), || {
        format!("regions does not name the failed write: {}", region.why)
    })?;
    check(region.why.contains("the service enforces it instead"), || {
        format!("regions does not say who enforces it: {}", region.why)
    })?;
    // The VTS policy's display-class app max is 8 MiB: 1 + 8 MiB must be refused, by the service.
    let (second, _) = app.alloc(CMA_HEAP, 8 * MIB)?;
    refused(&mut app, &format!("charge {second}"), ErrorCode::OVER_LIMIT)?;
    println!("1 MiB + 8 MiB over the 8 MiB dmem max: refused by the service (OVER_LIMIT)");
    Ok(())
}
