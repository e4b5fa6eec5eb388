//! Autoconfig of a 10-region device: probe (real file reads of a device tree), topology, limit
//! plan and a dry-run apply, end to end. Target: under 20 ms.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use chargetransfer::autoconfig::{self, Autoconfig, ProbeRoots, Scope};
use chargetransfer::ledger::Ledger;
use chargetransfer::policy::Policy;
use criterion::{criterion_group, criterion_main, Criterion};

const OWNERS: usize = 200;

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

/// A device with two CMA regions, a carve-out and seven GPUs' vram (10 dmem regions), the dmem
/// and memory controllers, and 200 app cgroups with their memory and dmem files.
fn ten_region_device(root: &Path) -> ProbeRoots {
    let cg = "sys/fs/cgroup";
    let mut regions = vec![
        ("cma/display".to_string(), 128u64 << 20),
        ("cma/camera".to_string(), 256 << 20),
        ("carveout/secure_video".to_string(), 96 << 20),
    ];
    regions.extend((0..7).map(|i| (format!("drm/0000:0{i}:00.0/vram0"), 8u64 << 30)));
    let capacity: String = regions.iter().map(|(r, b)| format!("{r} {b}\n")).collect();
    write(root, &format!("{cg}/cgroup.controllers"), "cpu memory dmem\n");
    write(root, &format!("{cg}/cgroup.subtree_control"), "cpu memory dmem\n");
    write(root, &format!("{cg}/dmem.capacity"), &capacity);
    let max: String = regions.iter().map(|(r, _)| format!("{r} max\n")).collect();
    for i in 0..OWNERS {
        let uid = format!("uid_{}", 10000 + i);
        for f in ["memory.max", "memory.low", "memory.min"] {
            write(root, &format!("{cg}/{uid}/{f}"), "max\n");
        }
        for f in ["dmem.max", "dmem.low", "dmem.min"] {
            write(root, &format!("{cg}/{uid}/{f}"), &max);
        }
    }
    write(
        root,
        "proc/meminfo",
        "MemTotal:        16777216 kB\nSwapTotal:             0 kB\nCmaTotal:          393216 kB\n",
    );
    write(root, "proc/cmdline", "console=ttyS0\n");
    write(root, "sys/module/dma_heap/parameters/mem_accounting", "N\n");
    for (area, pages) in [("display", 32768), ("camera", 65536)] {
        write(root, &format!("sys/kernel/mm/cma/{area}/total_pages"), &format!("{pages}\n"));
        write(root, &format!("sys/kernel/mm/cma/{area}/available_pages"), &format!("{pages}\n"));
    }
    for heap in ["system", "system-uncached", "display", "camera", "secure_video", "gpu"] {
        write(root, &format!("dev/dma_heap/{heap}"), "");
    }
    ProbeRoots::under(root)
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let roots = ten_region_device(dir.path());
    let ac = Autoconfig::new(roots, Policy::embedded_default(), None);
    let report = autoconfig::run(&ac, &mut Ledger::new(), Scope::All, true);
    let regions = report.topology.regions.len();
    assert!(regions >= 10, "the device should show 10 regions, got {regions}");
    c.bench_function("autoconfig_10_regions_200_owners_dry_run", |b| {
        b.iter(|| autoconfig::run(&ac, &mut Ledger::new(), Scope::All, true))
    });
    let mut times: Vec<Duration> = (0..50)
        .map(|_| {
            let t = Instant::now();
            autoconfig::run(&ac, &mut Ledger::new(), Scope::All, true);
            t.elapsed()
        })
        .collect();
    times.sort_unstable();
    println!(
        "autoconfig: {regions} regions, {OWNERS} owners: p50 {:?}, max {:?} (target < 20 ms)",
        times[times.len() / 2],
        times[times.len() - 1]
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
