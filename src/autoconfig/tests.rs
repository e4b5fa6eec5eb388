use std::fs;
use std::path::{Path, PathBuf};

use super::probe::{CgroupProbe, CmaArea, DmemRegion, DrmDevice, MemInfo};
use super::*;
use crate::ledger::{Counter, Event, HeapClass, LimitKind, MEMCG_POOL, UNLIMITED};
use crate::policy::{OwnerClass, Policy, TrustRule};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/autoconfig")
}

/// The fixture's probe and its policy: the embedded default with the fixture's override, if any.
fn load_fixture(dir: &Path) -> (Probe, Policy) {
    let probe_path = dir.join("probe.json");
    let text = fs::read_to_string(&probe_path).unwrap_or_else(|e| panic!("{}: {e}", probe_path.display()));
    let probe = Probe::from_json(&text).unwrap_or_else(|e| panic!("{}: {e}", probe_path.display()));
    let overrides: Vec<String> = fs::read_to_string(dir.join("policy.json")).into_iter().collect();
    let refs: Vec<&str> = overrides.iter().map(String::as_str).collect();
    let policy = Policy::default_with(&refs).unwrap_or_else(|e| panic!("{}/policy.json: {e}", dir.display()));
    (probe, policy)
}

fn fixture_report(name: &str) -> Report {
    let (probe, policy) = load_fixture(&fixtures_dir().join(name));
    let (topology, plan) = plan(&probe, &policy);
    Report { topology, plan, applied: None }
}

/// Every fixture's report matches its golden `report.txt`; `UPDATE_GOLDEN=1` rewrites them.
#[test]
fn fixture_reports_match_their_golden_files() {
    let required = [
        "phone-soc",
        "camera-codec",
        "dgpu-24g-vram-16g-ram",
        "igpu-shared-memory",
        "no-dmem-controller",
        "dmem-without-regions",
    ];
    let mut names: Vec<String> = fs::read_dir(fixtures_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("probe.json").is_file())
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    names.sort();
    for r in required {
        assert!(names.iter().any(|n| n == r), "fixture {r} is missing");
    }
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut mismatched = Vec::new();
    for name in &names {
        let report = fixture_report(name);
        let text = report.to_string();
        let golden = fixtures_dir().join(name).join("report.txt");
        if update {
            fs::write(&golden, &text).unwrap();
            continue;
        }
        let want = fs::read_to_string(&golden)
            .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", golden.display()));
        if want != text {
            mismatched.push(format!("--- {}\n{text}", golden.display()));
        }
        let back: Report = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(back, report, "{name}: the JSON report round-trips");
    }
    assert!(
        mismatched.is_empty(),
        "reports differ from golden files (UPDATE_GOLDEN=1 to accept):\n{}",
        mismatched.join("\n")
    );
}

fn entry<'a>(plan: &'a Plan, owner: OwnerClass, pool: &str, kind: LimitKind) -> &'a LimitEntry {
    plan.defaults
        .iter()
        .find(|e| e.owner == owner && e.pool == pool && e.kind == kind)
        .unwrap_or_else(|| panic!("no {owner} {pool} {kind:?} in {:#?}", plan.defaults))
}

#[test]
fn planning_is_deterministic() {
    let (probe, policy) = load_fixture(&fixtures_dir().join("phone-soc"));
    let a = plan(&probe, &policy);
    let b = plan(&probe.clone(), &policy.clone());
    assert_eq!(a, b);
}

#[test]
fn phone_cma_regions_are_kernel_enforced_and_the_carveout_by_the_service() {
    let r = fixture_report("phone-soc");
    let t = &r.topology;
    assert_eq!(t.region("cma/display").unwrap().enforced_by, Enforcer::Kernel);
    assert_eq!(t.region("cma/camera").unwrap().enforced_by, Enforcer::Kernel);
    let secure = t.region("carveout/secure_video").unwrap();
    assert_eq!(
        (secure.enforced_by, secure.capacity, secure.kind),
        (Enforcer::Service, Some(192 * MIB), HeapClass::Carveout)
    );
    let display_max = entry(&r.plan, OwnerClass::App, "cma/display", LimitKind::Max);
    assert_eq!((display_max.value, display_max.enforced_by), (64 * MIB, Enforcer::Kernel));
    let pin = entry(&r.plan, OwnerClass::App, "cma/display", LimitKind::PinMax);
    assert_eq!(pin.enforced_by, Enforcer::Service, "no kernel file holds pin limits");
    assert!(t.notes.iter().any(|n| n.contains("qcom,qseecom")), "an unknown heap is reported: {:?}", t.notes);
    let gpu = t.heaps.iter().find(|h| h.name == "gpu").unwrap();
    assert!(gpu.region.is_none() && !gpu.declarable(), "the vram pattern matched nothing on a phone");
    let owners: Vec<(&str, OwnerClass)> = t.owners.iter().map(|o| (o.cgroup.as_str(), o.class)).collect();
    assert!(owners.contains(&("/uid_1047", OwnerClass::System)) && owners.contains(&("/uid_10100", OwnerClass::App)));
}

#[test]
fn memory_max_leaves_room_for_dmabufs_only_when_the_kernel_charges_them() {
    // mem_accounting=Y: memory.max = 50% + 25% of RAM, the ledger keeps 25% for CMA.
    let r = fixture_report("dgpu-24g-vram-16g-ram");
    let max = entry(&r.plan, OwnerClass::App, MEMORY_POOL, LimitKind::Max);
    assert_eq!(max.value, 12 * GIB);
    assert!(max.adjusted.as_deref().unwrap().contains("system"), "{max:?}");
    // mem_accounting=N: memory.max is the own memory alone; the ledger holds the dma-buf budget.
    let r = fixture_report("camera-codec");
    let max = entry(&r.plan, OwnerClass::App, MEMORY_POOL, LimitKind::Max);
    let ram = r.topology.memcg.mem_total.unwrap();
    assert_eq!(max.value, ram / 2 / 4096 * 4096);
    assert!(max.adjusted.is_none());
    let budget = entry(&r.plan, OwnerClass::App, MEMCG_POOL, LimitKind::Max);
    assert_eq!((budget.value, budget.enforced_by), (ram / 4 / 4096 * 4096, Enforcer::Service));
}

#[test]
fn vram_larger_than_ram_follows_the_region_and_evictions_stay_within_the_dma_buf_budget() {
    let r = fixture_report("dgpu-24g-vram-16g-ram");
    let region = "drm/0000:03:00.0/vram";
    assert_eq!(r.topology.region(region).unwrap().enforced_by, Enforcer::Kernel);
    let app = entry(&r.plan, OwnerClass::App, region, LimitKind::Max);
    assert_eq!(app.value, 12 * GIB, "50% of 24 GiB: more than a quarter of the 16 GiB of RAM");
    assert!(app.adjusted.is_none(), "{app:?}");
    assert!(app.why.contains("eviction budget: the dma-buf budget 4 GiB"), "{}", app.why);
    let budget = entry(&r.plan, OwnerClass::App, MEMCG_POOL, LimitKind::Max);
    assert_eq!(budget.value, 4 * GIB, "what an app may have evicted at once");
    let system = entry(&r.plan, OwnerClass::System, region, LimitKind::Max);
    assert_eq!(system.value, UNLIMITED, "system owners: the whole region");
    assert!(system.why.contains("eviction budget: RAM + swap 16 GiB"), "{}", system.why);
    let heap = r.topology.heaps.iter().find(|h| h.name == "amdgpu").unwrap();
    assert_eq!((heap.region.as_deref(), heap.region_pattern.as_deref()), (Some(region), Some("drm/*/vram*")));
    assert_eq!(r.topology.controllers_to_enable, ["dmem"]);
}

#[test]
fn without_dmem_every_region_is_service_enforced() {
    let r = fixture_report("no-dmem-controller");
    assert!(!r.topology.dmem_controller);
    for region in r.topology.regions.iter().filter(|x| x.present) {
        assert_eq!(region.enforced_by, Enforcer::Service, "{}", region.name);
    }
    let absent = r.topology.region("carveout/secure_video").unwrap();
    assert_eq!(
        (absent.present, absent.enforced_by),
        (false, Enforcer::Nobody),
        "the policy's carve-out is not on this device"
    );
    assert!(
        r.plan.defaults.iter().all(|e| e.pool != "carveout/secure_video"),
        "no limits for a region that is not there"
    );
    assert!(r.plan.defaults.iter().filter(|e| e.pool != MEMORY_POOL).all(|e| e.enforced_by != Enforcer::Kernel));
    let sys = r.topology.heaps.iter().find(|h| h.name == "system").unwrap();
    assert_eq!(sys.pools[0].enforced_by, Enforcer::Service, "mem_accounting absent");
}

#[test]
fn dmem_without_regions_maps_the_default_cma_heap_in_observe_mode() {
    let r = fixture_report("dmem-without-regions");
    assert!(r.topology.notes.iter().any(|n| n.contains("no driver registered a region")));
    let heap = r.topology.heaps.iter().find(|h| h.name == "default_cma_region").unwrap();
    assert_eq!((heap.region.as_deref(), heap.origin), (Some("cma/reserved"), topology::Origin::Default));
    let region = r.topology.region("cma/reserved").unwrap();
    assert_eq!((region.enforced_by, region.capacity), (Enforcer::Nobody, Some(64 * MIB)));
}

#[test]
fn integrated_gpu_has_no_vram_region() {
    let r = fixture_report("igpu-shared-memory");
    assert!(r.topology.regions.iter().all(|x| x.kind != HeapClass::Vram));
    assert_eq!(r.topology.drm[0].vram_total, None);
}

#[test]
fn new_owner_cgroups_get_their_class_defaults() {
    let r = fixture_report("phone-soc");
    let entries = r.plan.for_cgroup("/uid_10999", OwnerClass::App);
    assert!(!entries.is_empty());
    assert!(entries.iter().all(|e| e.cgroup == "/uid_10999" && e.owner == OwnerClass::App));
    assert_eq!(entries.len(), r.plan.defaults.iter().filter(|e| e.owner == OwnerClass::App).count());
}

/// A 10-region device: probe data for 10 regions and 200 owner cgroups; topology and limits
/// must stay cheap (the target is < 20 ms including the probe, in release builds).
#[test]
fn ten_regions_and_two_hundred_apps_get_every_limit_planned() {
    let regions: Vec<DmemRegion> =
        (0..10).map(|i| DmemRegion { name: format!("cma/area{i}"), capacity: (64 + i) * MIB }).collect();
    let probe = Probe {
        page_size: 4096,
        cgroup: Found::Present(CgroupProbe {
            controllers: vec!["memory".into(), "dmem".into()],
            subtree_control: vec!["memory".into(), "dmem".into()],
            children: (0..200).map(|i| format!("/uid_{}", 10000 + i)).collect(),
            oom_score_adj: Default::default(),
        }),
        dmem_capacity: Found::Present(regions.clone()),
        mem_accounting: Found::Present(true),
        dma_heaps: Found::Present((0..10).map(|i| format!("area{i}")).chain(["system".into()]).collect()),
        cma_areas: Found::Present(
            regions.iter().map(|r| CmaArea { name: r.name[4..].into(), total: r.capacity, available: None }).collect(),
        ),
        meminfo: Found::Present(MemInfo { mem_total: 8 * GIB, swap_total: 0, cma_total: None }),
        cmdline: Found::absent("test"),
        reserved_memory: Found::absent("test"),
        selinux: Found::absent("test"),
        drm: Found::Present(vec![DrmDevice {
            card: "card0".into(),
            device: None,
            driver: None,
            vendor: None,
            vram_total: None,
        }]),
    };
    let policy = Policy::embedded_default();
    let (topology, plan) = plan(&probe, &policy);
    assert_eq!(topology.regions.len(), 13, "10 probed + the policy's display, camera and secure_video");
    assert_eq!(topology.owners.len(), 200);
    assert!(plan.entries.len() > 200 * 10 * 4);
}

// ---- a fake device tree: probe → apply → idempotence → convergence ----

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

fn read(root: &Path, rel: &str) -> String {
    fs::read_to_string(root.join(rel)).unwrap()
}

const OWNERS: [&str; 2] = ["uid_1000", "uid_10001"];

/// A small phone: memory controller, a system heap and a display CMA area, no dmem yet.
fn fake_device(root: &Path) -> ProbeRoots {
    let cg = "sys/fs/cgroup";
    write(root, &format!("{cg}/cgroup.controllers"), "cpu memory\n");
    write(root, &format!("{cg}/cgroup.subtree_control"), "cpu memory\n");
    for uid in OWNERS {
        write(root, &format!("{cg}/{uid}/memory.max"), "max\n");
        write(root, &format!("{cg}/{uid}/memory.low"), "0\n");
        write(root, &format!("{cg}/{uid}/memory.min"), "0\n");
    }
    write(root, "proc/meminfo", "MemTotal:        4194304 kB\nSwapTotal:             0 kB\n");
    write(root, "proc/cmdline", "console=ttyS0\n");
    write(root, "sys/module/dma_heap/parameters/mem_accounting", "N\n");
    write(root, "sys/kernel/mm/cma/display/total_pages", "65536\n");
    write(root, "dev/dma_heap/system", "");
    write(root, "dev/dma_heap/display", "");
    ProbeRoots::under(root)
}

fn ledger_limit(ledger: &Ledger, cgroup: &str, pool: &str, kind: LimitKind) -> u64 {
    ledger.counter(cgroup, pool).unwrap_or_default().limit(kind)
}

#[test]
fn apply_writes_once_then_converges_when_dmem_appears() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let roots = fake_device(root);
    let ac = Autoconfig::new(roots, Policy::embedded_default(), None);
    let mut ledger = Ledger::new();

    // Dry run: reports the change, writes nothing, leaves the ledger alone.
    let dry = run(&ac, &mut ledger, Scope::All, true);
    let applied = dry.applied.as_ref().unwrap();
    assert!(applied.dry_run && applied.failures.is_empty());
    assert_eq!(applied.changes.iter().map(|c| c.file.as_str()).collect::<Vec<_>>(), ["/uid_10001/memory.max"]);
    assert!(!applied.events.is_empty());
    assert_eq!(read(root, "sys/fs/cgroup/uid_10001/memory.max"), "max\n");
    assert!(ledger.to_events().is_empty(), "a dry run leaves the ledger untouched");

    // First run: the app's memory.max (50% of 4 GiB; the kernel does not charge dma-bufs), and
    // the ledger gets the heaps, regions and the limits it enforces.
    let first = run(&ac, &mut ledger, Scope::All, false);
    let applied = first.applied.as_ref().unwrap();
    assert!(first.is_clean(), "{:?}", applied.failures);
    assert_eq!(
        applied.changes,
        vec![FileChange { file: "/uid_10001/memory.max".into(), from: Some("max".into()), to: "2147483648".into() }]
    );
    assert_eq!(read(root, "sys/fs/cgroup/uid_10001/memory.max"), "2147483648\n");
    assert_eq!(read(root, "sys/fs/cgroup/uid_1000/memory.max"), "max\n");
    assert_eq!(ledger.heap("display").map(|(s, e)| (s.region.clone(), e)), Some((Some("cma/display".into()), true)));
    assert_eq!(
        ledger_limit(&ledger, "/uid_10001", "cma/display", LimitKind::Max),
        64 * MIB,
        "25% of 256 MiB, service-enforced"
    );
    assert_eq!(ledger_limit(&ledger, "/uid_10001", MEMCG_POOL, LimitKind::Max), GIB, "dma-buf budget 25% of 4 GiB");
    assert_eq!(ledger_limit(&ledger, "/uid_1000", "cma/display", LimitKind::Min), 64 * MIB);
    assert!(applied.events.iter().any(|e| matches!(e, Event::HeapAdded { heap, .. } if heap.name == "system")));
    assert!(ledger.check_invariants().is_ok());

    // Second run: nothing to do.
    let second = run(&ac, &mut ledger, Scope::All, false);
    let applied = second.applied.as_ref().unwrap();
    assert!(applied.changes.is_empty() && applied.events.is_empty(), "{applied:#?}");

    // The kernel gains dmem with the display region: the controller is enabled for the
    // children, dmem limits are written, and the ledger's copies are reset.
    write(root, "sys/fs/cgroup/cgroup.controllers", "cpu memory dmem\n");
    write(root, "sys/fs/cgroup/dmem.capacity", "cma/display 268435456\n");
    for uid in OWNERS {
        write(root, &format!("sys/fs/cgroup/{uid}/dmem.max"), "cma/display max\n");
        write(root, &format!("sys/fs/cgroup/{uid}/dmem.low"), "cma/display 0\n");
        write(root, &format!("sys/fs/cgroup/{uid}/dmem.min"), "cma/display 0\n");
    }
    let third = run(&ac, &mut ledger, Scope::All, false);
    let applied = third.applied.as_ref().unwrap();
    assert!(third.is_clean(), "{:?}", applied.failures);
    let files: Vec<&str> = applied.changes.iter().map(|c| c.file.as_str()).collect();
    assert_eq!(files, ["/cgroup.subtree_control", "/uid_1000/dmem.low", "/uid_1000/dmem.min", "/uid_10001/dmem.max"]);
    assert_eq!(read(root, "sys/fs/cgroup/cgroup.subtree_control"), "+dmem\n");
    assert_eq!(read(root, "sys/fs/cgroup/uid_10001/dmem.max"), "cma/display 67108864\n");
    assert_eq!(read(root, "sys/fs/cgroup/uid_1000/dmem.min"), "cma/display 67108864\n");
    assert_eq!(
        ledger_limit(&ledger, "/uid_10001", "cma/display", LimitKind::Max),
        UNLIMITED,
        "the kernel enforces it now"
    );
    assert_eq!(ledger_limit(&ledger, "/uid_1000", "cma/display", LimitKind::Min), 0);
    assert_eq!(
        ledger_limit(&ledger, "/uid_10001", "cma/display", LimitKind::PinMax),
        64 * MIB,
        "pins stay with the ledger"
    );
    assert_eq!(third.topology.region("cma/display").unwrap().enforced_by, Enforcer::Kernel);

    // What the kernel shows once +dmem took effect; then the fourth run changes nothing.
    write(root, "sys/fs/cgroup/cgroup.subtree_control", "cpu memory dmem\n");
    let fourth = run(&ac, &mut ledger, Scope::All, false);
    let applied = fourth.applied.as_ref().unwrap();
    assert!(applied.changes.is_empty() && applied.events.is_empty(), "{applied:#?}");
    assert!(fourth.to_string().contains("changed: 0 files, 0 ledger events"));
}

#[test]
fn kernel_charged_system_heap_is_recorded_in_the_policy_and_not_limited_twice() {
    let dir = tempfile::tempdir().unwrap();
    let roots = fake_device(dir.path());
    write(dir.path(), "sys/module/dma_heap/parameters/mem_accounting", "Y\n");
    let ac = Autoconfig::new(roots, Policy::embedded_default(), None);
    let mut ledger = Ledger::new();
    let report = run(&ac, &mut ledger, Scope::All, false);
    assert!(report.is_clean());
    assert_eq!(report.topology.memcg.kernel_charged_heaps, ["system"]);
    assert_eq!(read(dir.path(), "sys/fs/cgroup/uid_10001/memory.max"), format!("{}\n", 3 * GIB), "50% + 25% of 4 GiB");
    let sys = report.topology.heaps.iter().find(|h| h.name == "system").unwrap();
    assert_eq!(sys.pools[0].enforced_by, Enforcer::Kernel);
    // CMA still uses RAM unseen by the kernel's memcg: the ledger keeps the budget.
    assert_eq!(report.topology.memcg.enforced_by, Enforcer::Service);
}

#[test]
fn a_device_without_cgroups_leaves_everything_to_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "proc/meminfo", "MemTotal: 2097152 kB\n");
    write(root, "dev/dma_heap/system", "");
    let ac = Autoconfig::new(ProbeRoots::under(root), Policy::embedded_default(), None);
    let mut ledger = Ledger::new();
    ledger.charge(1, 4096, "system", 42, 0, "/uid_10001/pid_42").unwrap_err();
    let report = run(&ac, &mut ledger, Scope::All, false);
    let applied = report.applied.as_ref().unwrap();
    assert!(report.is_clean(), "{:?}", applied.failures);
    assert!(applied.changes.is_empty());
    assert_eq!(report.topology.memcg.memory_enforced_by, Enforcer::Nobody);
    assert!(report.topology.notes.iter().any(|n| n.contains("no cgroup v2")));
    // The heap is declared, so a later charge works and owner cgroups the ledger learns get limits.
    ledger.charge(1, 4096, "system", 42, 0, "/uid_10001/pid_42").unwrap();
    let again = run(&ac, &mut ledger, Scope::All, false);
    assert_eq!(again.topology.owners.len(), 1, "owners come from the ledger too");
    assert_eq!(ledger_limit(&ledger, "/uid_10001", MEMCG_POOL, LimitKind::Max), GIB / 2);
    assert_ne!(ledger.counter("/uid_10001", MEMCG_POOL).unwrap(), Counter::default());
}

#[test]
fn memory_limits_are_whole_pages_so_they_read_back_unchanged() {
    let policy = Policy::default_with(&[
        r#"{"limits": {"memcg": {"app": {"max": 1000000, "low": "4097", "dmabuf_max": 5000}}}}"#,
    ])
    .unwrap();
    let (probe, _) = load_fixture(&fixtures_dir().join("phone-soc"));
    let (_, plan) = plan(&probe, &policy);
    let max = entry(&plan, OwnerClass::App, MEMORY_POOL, LimitKind::Max);
    assert_eq!(max.value, (1_000_000 + 5000) / 4096 * 4096);
    assert_eq!(entry(&plan, OwnerClass::App, MEMORY_POOL, LimitKind::Low).value, 4096);
}

#[test]
fn a_kernel_with_selinux_is_reported_as_trusting_by_context() {
    let (mut probe, policy) = load_fixture(&fixtures_dir().join("qemu-debian-lane"));
    assert_eq!(Topology::build(&probe, &policy).trust, TrustRule::Uids);
    probe.selinux = Found::Present(false);
    let (topology, plan) = plan(&probe, &policy);
    assert_eq!(topology.trust, TrustRule::Contexts, "permissive SELinux still delivers contexts");
    let text = Report { topology, plan, applied: None }.to_string();
    assert!(text.contains("trust: SELinux contexts (trusted.contexts)"), "{text}");
}

// ---- issue 21: background signal, page size, owners that are gone, only autoconfig's own limits ----

#[test]
fn owners_whose_processes_are_all_cached_get_the_background_class() {
    let r = fixture_report("phone-soc");
    let class = |cgroup: &str| r.topology.owners.iter().find(|o| o.cgroup == cgroup).map(|o| o.class);
    assert_eq!(class("/uid_10101"), Some(OwnerClass::Background), "oom_score_adj 905: cached");
    assert_eq!(class("/uid_1010100"), Some(OwnerClass::Background), "a secondary user's cached app");
    assert_eq!(class("/uid_10100"), Some(OwnerClass::App), "oom_score_adj 0: foreground");
    assert_eq!(class("/uid_1000"), Some(OwnerClass::System));
    let max = |cgroup: &str| {
        r.plan
            .entries
            .iter()
            .find(|e| e.cgroup == cgroup && e.pool == MEMORY_POOL && e.kind == LimitKind::Max)
            .unwrap()
            .value
    };
    assert!(max("/uid_10101") < max("/uid_10100"), "background apps get the smaller budget");
}

#[test]
fn limits_on_a_16k_page_kernel_are_whole_16k_pages() {
    let r = fixture_report("phone-16k-pages");
    assert_eq!(r.topology.page_size, 16384);
    let ram = r.topology.memcg.mem_total.unwrap();
    let app_max = entry(&r.plan, OwnerClass::App, MEMORY_POOL, LimitKind::Max).value;
    let pages = |v: u64| v / 16384 * 16384;
    assert_eq!(app_max, pages(ram / 2) + pages(ram / 4), "50% + 25% of RAM, each in whole 16 KiB pages");
    assert_ne!(app_max % 16384, 4096, "not 4 KiB pages");
    for e in r.plan.defaults.iter().filter(|e| e.pool == MEMORY_POOL && e.value != UNLIMITED) {
        assert_eq!(e.value % 16384, 0, "{e:?}");
    }
    assert!(r.to_string().contains("page size: 16 KiB"));
}

/// Writes a process of `uid` with `oom_score_adj` into the fake device's `/uid_<uid>/pid_<pid>`.
fn put_owner_process(root: &Path, uid: u32, pid: u32, adj: i32) {
    write(root, &format!("sys/fs/cgroup/uid_{uid}/pid_{pid}/cgroup.procs"), &format!("{pid}\n"));
    write(root, &format!("proc/{pid}/oom_score_adj"), &format!("{adj}\n"));
}

#[test]
fn an_owner_that_goes_to_the_background_gets_background_limits_at_the_next_reclassification() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let roots = fake_device(root);
    put_owner_process(root, 10001, 4000, 0);
    let ac = Autoconfig::new(roots, Policy::embedded_default(), None);
    let mut ledger = Ledger::new();
    assert!(run(&ac, &mut ledger, Scope::All, false).is_clean());
    assert_eq!(read(root, "sys/fs/cgroup/uid_10001/memory.max"), format!("{}\n", 2 * GIB), "app: 50% of 4 GiB");
    assert!(ac.reclassified().is_empty(), "nothing changed");

    write(root, "proc/4000/oom_score_adj", "950\n");
    let changed = ac.reclassified();
    assert_eq!(changed, ["/uid_10001"]);
    let report = run(&ac, &mut ledger, Scope::Owners(changed), false);
    assert!(report.is_clean(), "{report}");
    assert_eq!(read(root, "sys/fs/cgroup/uid_10001/memory.max"), format!("{}\n", GIB), "background: 25% of 4 GiB");
    assert_eq!(ledger_limit(&ledger, "/uid_10001", MEMCG_POOL, LimitKind::Max), 4 * GIB / 20 / 4096 * 4096);
    assert!(ac.reclassified().is_empty());
}

#[test]
fn owners_the_ledger_remembers_whose_cgroup_is_gone_are_skipped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let roots = fake_device(dir.path());
    let ac = Autoconfig::new(roots, Policy::embedded_default(), None);
    let mut ledger = Ledger::new();
    assert!(run(&ac, &mut ledger, Scope::All, false).is_clean());
    ledger.charge(1, 4096, "system", 42, 0, "/uid_10050/pid_42").unwrap();
    let report = run(&ac, &mut ledger, Scope::All, false);
    assert!(report.is_clean(), "a gone cgroup is no write failure: {report}");
    assert_eq!(report.topology.skipped_owners, ["/uid_10050"]);
    assert!(report.topology.owners.iter().all(|o| o.cgroup != "/uid_10050"));
    assert!(report.to_string().contains("no longer exist, skipped: /uid_10050"));
}

#[test]
fn limits_the_policy_does_not_set_are_never_written_over_another_components_values() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let roots = fake_device(root);
    // The system class sets no memory limit (max = max, no low or min); someone else did.
    write(root, "sys/fs/cgroup/uid_1000/memory.min", &format!("{}\n", 100 * MIB));
    write(root, "sys/fs/cgroup/uid_1000/memory.max", &format!("{}\n", 2 * GIB));
    let ac = Autoconfig::new(roots, Policy::embedded_default(), None);
    let report = run(&ac, &mut Ledger::new(), Scope::All, false);
    assert!(report.is_clean(), "{report}");
    assert_eq!(read(root, "sys/fs/cgroup/uid_1000/memory.min"), format!("{}\n", 100 * MIB));
    assert_eq!(read(root, "sys/fs/cgroup/uid_1000/memory.max"), format!("{}\n", 2 * GIB));
    let applied = report.applied.as_ref().unwrap();
    assert!(applied.changes.iter().all(|c| !c.file.starts_with("/uid_1000/")), "{:?}", applied.changes);
    assert!(applied.left_alone.is_empty(), "the policy wants nothing there, so there is no conflict");
}

#[test]
fn a_limit_another_component_set_is_left_alone_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let state = dir.path().join("state");
    let roots = fake_device(root);
    write(root, "sys/fs/cgroup/uid_10001/memory.max", &format!("{}\n", 300 * MIB));
    let ac = Autoconfig::new(roots.clone(), Policy::embedded_default(), Some(state.clone()));
    let mut ledger = Ledger::new();
    let report = run(&ac, &mut ledger, Scope::All, false);
    assert_eq!(read(root, "sys/fs/cgroup/uid_10001/memory.max"), format!("{}\n", 300 * MIB), "not overwritten");
    let left = &report.applied.as_ref().unwrap().left_alone;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!((left[0].file.as_str(), left[0].holds.as_str()), ("/uid_10001/memory.max", "314572800"));
    assert!(report
        .to_string()
        .contains("/uid_10001/memory.max: holds 314572800, policy 2147483648: set by another component"));

    // Once the other component resets it, it is autoconfig's to write; a later change by someone
    // else is theirs again, also after a restart (the writes live in the state dir).
    write(root, "sys/fs/cgroup/uid_10001/memory.max", "max\n");
    run(&ac, &mut ledger, Scope::All, false);
    assert_eq!(read(root, "sys/fs/cgroup/uid_10001/memory.max"), format!("{}\n", 2 * GIB));
    write(root, "sys/fs/cgroup/uid_10001/memory.max", &format!("{}\n", 3 * GIB));
    let restarted = Autoconfig::new(roots, Policy::embedded_default(), Some(state));
    let report = run(&restarted, &mut ledger, Scope::All, false);
    assert_eq!(read(root, "sys/fs/cgroup/uid_10001/memory.max"), format!("{}\n", 3 * GIB));
    let left = &report.applied.as_ref().unwrap().left_alone;
    assert!(left[0].why.contains("changed by another component since autoconfig wrote 2 GiB"), "{left:?}");
}

#[test]
fn a_value_the_kernel_rounded_from_autoconfigs_write_is_not_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let state = dir.path().join("state");
    let roots = fake_device(root);
    // A kernel that keeps limits in 16 KiB pages read back 2 GiB - 4 KiB written as 2 GiB - 20 KiB.
    let (wrote, reads) = (2 * GIB - 4096, 2 * GIB - 20480);
    let mut writes = written::Writes::default();
    writes.record("/uid_10001/memory.max".into(), written::Write { wrote, reads });
    writes.save(&state).unwrap();
    write(root, "sys/fs/cgroup/uid_10001/memory.max", &format!("{reads}\n"));
    let policy =
        Policy::default_with(&[&format!(r#"{{"limits": {{"memcg": {{"app": {{"max": {wrote}}}}}}}}}"#)]).unwrap();
    let ac = Autoconfig::new(roots, policy, Some(state));
    let report = run(&ac, &mut Ledger::new(), Scope::All, false);
    let applied = report.applied.as_ref().unwrap();
    assert!(applied.changes.is_empty() && applied.left_alone.is_empty(), "{report}");
}

#[test]
fn a_failed_kernel_write_leaves_the_limit_with_the_ledger_and_says_who_enforces_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let roots = fake_device(root);
    write(root, "sys/fs/cgroup/cgroup.controllers", "cpu memory dmem\n");
    write(root, "sys/fs/cgroup/cgroup.subtree_control", "cpu memory dmem\n");
    write(root, "sys/fs/cgroup/dmem.capacity", "cma/display 268435456\n");
    // /uid_1000 has its dmem files; /uid_10001's are missing (ENOENT).
    for f in ["max", "low", "min"] {
        let v = if f == "max" { "max" } else { "0" };
        write(root, &format!("sys/fs/cgroup/uid_1000/dmem.{f}"), &format!("cma/display {v}\n"));
    }
    let ac = Autoconfig::new(roots, Policy::embedded_default(), None);
    let mut ledger = Ledger::new();
    let report = run(&ac, &mut ledger, Scope::All, false);
    assert!(!report.is_clean());
    let failed = &report.applied.as_ref().unwrap().failed_writes;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!((failed[0].file.as_str(), failed[0].enforced_by), ("/uid_10001/dmem.max", Enforcer::Service));
    assert_eq!(
        ledger_limit(&ledger, "/uid_10001", "cma/display", LimitKind::Max),
        64 * MIB,
        "the ledger keeps enforcing the limit the kernel could not take"
    );
    assert_eq!(ledger_limit(&ledger, "/uid_1000", "cma/display", LimitKind::Min), 0, "held by the kernel");
    let text = report.to_string();
    assert!(text.contains("/uid_10001/dmem.max -> cma/display 67108864: "), "{text}");
    assert!(text.contains("the service enforces this limit instead"), "{text}");
    let pools = ac.pools(&report);
    let display = pools.iter().find(|p| p.name == "cma/display").unwrap();
    assert!(
        display.why.contains("kernel write /uid_10001/dmem.max failed")
            && display.why.contains("the service enforces it instead"),
        "{}",
        display.why
    );

    // The files appear (the controller was delegated): the kernel takes the limit, the ledger's
    // copy goes back to the default, and regions no longer name a failure.
    for f in ["max", "low", "min"] {
        let v = if f == "max" { "max" } else { "0" };
        write(root, &format!("sys/fs/cgroup/uid_10001/dmem.{f}"), &format!("cma/display {v}\n"));
    }
    let report = run(&ac, &mut ledger, Scope::All, false);
    assert!(report.is_clean(), "{report}");
    assert_eq!(ledger_limit(&ledger, "/uid_10001", "cma/display", LimitKind::Max), UNLIMITED);
    assert!(!ac.pools(&report).iter().any(|p| p.why.contains("failed")));
}

#[test]
fn a_new_owner_gets_limits_on_its_own_cgroup_only() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let roots = fake_device(root);
    let ac = Autoconfig::new(roots, Policy::embedded_default(), None);
    let mut ledger = Ledger::new();
    run(&ac, &mut ledger, Scope::All, false);
    // Another component lowers the running app's limit, then a new app appears.
    write(root, "sys/fs/cgroup/uid_10001/memory.max", &format!("{}\n", 300 * MIB));
    for f in ["max", "low", "min"] {
        let v = if f == "max" { "max" } else { "0" };
        write(root, &format!("sys/fs/cgroup/uid_10002/memory.{f}"), &format!("{v}\n"));
    }
    let report = run(&ac, &mut ledger, Scope::Owners(vec!["/uid_10002".into()]), false);
    let applied = report.applied.as_ref().unwrap();
    assert_eq!(applied.changes.iter().map(|c| c.file.as_str()).collect::<Vec<_>>(), ["/uid_10002/memory.max"]);
    assert!(applied.left_alone.is_empty(), "other owners are not even looked at: {:?}", applied.left_alone);
    assert_eq!(read(root, "sys/fs/cgroup/uid_10001/memory.max"), format!("{}\n", 300 * MIB));
    assert!(
        applied.events.iter().all(|e| !matches!(e, Event::LimitSet { cgroup, .. } if cgroup != "/uid_10002")),
        "ledger limits of other owners untouched: {:?}",
        applied.events
    );
}

#[test]
fn a_dmem_max_below_usage_is_retried_a_bounded_number_of_times_and_the_partial_reclaim_reported() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let roots = fake_device(root);
    write(root, "sys/fs/cgroup/cgroup.controllers", "cpu memory dmem\n");
    write(root, "sys/fs/cgroup/cgroup.subtree_control", "cpu memory dmem\n");
    write(root, "sys/fs/cgroup/dmem.capacity", "cma/display 268435456\n");
    for uid in OWNERS {
        for f in ["max", "low", "min"] {
            let v = if f == "max" { "max" } else { "0" };
            write(root, &format!("sys/fs/cgroup/{uid}/dmem.{f}"), &format!("cma/display {v}\n"));
        }
    }
    // 96 MiB in use and nothing the (fake) kernel can reclaim: the 64 MiB max is written three
    // times, then left with the usage above it.
    write(root, "sys/fs/cgroup/uid_10001/dmem.current", "cma/display 100663296\n");
    let ac = Autoconfig::new(roots, Policy::embedded_default(), None);
    let report = run(&ac, &mut Ledger::new(), Scope::All, false);
    let reclaims = &report.applied.as_ref().unwrap().reclaims;
    assert_eq!(
        reclaims,
        &vec![Reclaim {
            file: "/uid_10001/dmem.max cma/display".into(),
            limit: 64 * MIB,
            usage_before: 96 * MIB,
            usage_after: 96 * MIB,
            writes: MAX_LIMIT_WRITES,
        }]
    );
    assert!(report.is_clean(), "a partial reclaim is reported, not a failure");
    let text = report.to_string();
    assert!(text.contains("0 B reclaimed in 3 write(s); partial: 32 MiB still above the limit"), "{text}");
}

#[test]
fn the_foreground_app_gets_its_vram_low_raised_to_its_max_and_loses_it_when_it_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let roots = fake_device(root);
    let vram = "drm/0000:03:00.0/vram";
    write(root, "sys/fs/cgroup/cgroup.controllers", "cpu memory dmem\n");
    write(root, "sys/fs/cgroup/cgroup.subtree_control", "cpu memory dmem\n");
    write(root, "sys/fs/cgroup/dmem.capacity", &format!("{vram} 8589934592\n"));
    for uid in ["uid_1000", "uid_10001", "uid_10002"] {
        write(root, &format!("sys/fs/cgroup/{uid}/memory.max"), "max\n");
        for f in ["max", "low", "min"] {
            let v = if f == "max" { "max" } else { "0" };
            write(root, &format!("sys/fs/cgroup/{uid}/dmem.{f}"), &format!("{vram} {v}\n"));
        }
    }
    // 10001 is the top app (oom_score_adj 0); 10002 is visible but not on top (100).
    put_owner_process(root, 10001, 4000, 0);
    put_owner_process(root, 10002, 4001, 100);
    let ac = Autoconfig::new(roots, Policy::embedded_default(), None);
    let mut ledger = Ledger::new();
    let report = run(&ac, &mut ledger, Scope::All, false);
    assert!(report.is_clean(), "{report}");
    let low = |uid: &str| read(root, &format!("sys/fs/cgroup/{uid}/dmem.low"));
    assert_eq!(low("uid_10001"), format!("{vram} {}\n", 4 * GIB), "the app's max: 50% of 8 GiB");
    assert_eq!(low("uid_10002"), format!("{vram} 0\n"));
    let entry =
        report.plan.entries.iter().find(|e| e.cgroup == "/uid_10001" && e.pool == vram && e.kind == LimitKind::Low);
    let entry = entry.unwrap();
    assert!(entry.adjusted.as_deref().unwrap().contains("foreground (oom_score_adj 0)"), "{entry:?}");
    assert!(ac.reclassified().is_empty());

    // The user switches apps: 10002 comes to the top, 10001 goes to the background of the stack.
    write(root, "proc/4000/oom_score_adj", "100\n");
    write(root, "proc/4001/oom_score_adj", "0\n");
    let changed = ac.reclassified();
    assert_eq!(changed, ["/uid_10001", "/uid_10002"]);
    assert!(run(&ac, &mut ledger, Scope::Owners(changed), false).is_clean());
    assert_eq!(low("uid_10001"), format!("{vram} 0\n"), "protection dropped when it left");
    assert_eq!(low("uid_10002"), format!("{vram} {}\n", 4 * GIB));
}
