//! The capability probe: what the device has and what the kernel can enforce, read from cgroupfs,
//! /proc, /sys and /dev. Read-only and cheap (a few dozen small files, one directory listing per
//! source). A source that is missing or unreadable becomes [`Found::Absent`] with the reason;
//! the probe itself never fails.
//!
//! The result is plain serde data, so a device's probe can be saved as a fixture and replayed.
//! It carries the kernel's page size (CMA areas count pages; memory limits are kept in pages) and
//! each owner cgroup's background signal (the lowest `oom_score_adj` of its processes), so a
//! saved probe replays to the same classes and limits.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::kernel::cgroupfs::CgroupFs;
use crate::policy::parse_bytes;

/// Where the probe looks; production uses [`ProbeRoots::system`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeRoots {
    /// The cgroup v2 mount (`/sys/fs/cgroup`).
    pub cgroup: PathBuf,
    pub proc: PathBuf,
    pub sys: PathBuf,
    pub dev: PathBuf,
}

impl ProbeRoots {
    pub fn system() -> ProbeRoots {
        ProbeRoots::under(Path::new("/"))
    }

    /// The standard layout below `root` (a test tree: `root/sys/fs/cgroup`, `root/proc`, ...).
    pub fn under(root: &Path) -> ProbeRoots {
        ProbeRoots {
            cgroup: root.join("sys/fs/cgroup"),
            proc: root.join("proc"),
            sys: root.join("sys"),
            dev: root.join("dev"),
        }
    }
}

/// A probed source: its value, or why there is none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Found<T> {
    Present(T),
    Absent { reason: String },
}

impl<T> Found<T> {
    pub fn absent(reason: impl Into<String>) -> Found<T> {
        Found::Absent { reason: reason.into() }
    }

    pub fn get(&self) -> Option<&T> {
        match self {
            Found::Present(t) => Some(t),
            Found::Absent { .. } => None,
        }
    }

    /// The reason it is absent, if it is.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Found::Present(_) => None,
            Found::Absent { reason } => Some(reason),
        }
    }
}

impl<T, E: std::fmt::Display> From<Result<T, E>> for Found<T> {
    fn from(r: Result<T, E>) -> Found<T> {
        match r {
            Ok(t) => Found::Present(t),
            Err(e) => Found::absent(e.to_string()),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupProbe {
    /// Root `cgroup.controllers`: what the kernel offers.
    pub controllers: Vec<String>,
    /// Root `cgroup.subtree_control`: what is enabled for the children.
    pub subtree_control: Vec<String>,
    /// Child cgroups of the root (`/uid_10001`, ...), sorted.
    pub children: Vec<String>,
    /// Per owner cgroup (`/uid_<uid>`), the lowest `oom_score_adj` among the processes in its
    /// subtree; owners without a readable process are left out.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub oom_score_adj: BTreeMap<String, i32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DmemRegion {
    pub name: String,
    pub capacity: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CmaArea {
    pub name: String,
    pub total: u64,
    pub available: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemInfo {
    pub mem_total: u64,
    pub swap_total: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cma_total: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cmdline {
    /// The `cma=` argument as given, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cma: Option<String>,
    /// Its size part in bytes, when it parses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cma_bytes: Option<u64>,
}

/// A `/reserved-memory` child node of the device tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservedMemory {
    /// Node name as in the tree (`secure_video@b0000000`).
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compatible: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<u64>,
    /// From `reg`, or `size` for dynamically placed nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// `reusable`: the kernel hands it to the page allocator (a CMA pool), not a carve-out.
    #[serde(default)]
    pub reusable: bool,
    #[serde(default)]
    pub no_map: bool,
}

impl ReservedMemory {
    /// The node name without its unit address (`secure_video`).
    pub fn base_name(&self) -> &str {
        self.name.split('@').next().unwrap_or(&self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrmDevice {
    /// `card0`.
    pub card: String,
    /// The device's unique name as DRM regions use it: PCI slot (`0000:03:00.0`) or platform
    /// device name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// PCI vendor id (`0x1002`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// `mem_info_vram_total` (amdgpu), bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram_total: Option<u64>,
}

/// Everything the probe found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// The running kernel's page size (`sysconf(_SC_PAGESIZE)`): 4 KiB on most x86 and older
    /// arm64 kernels, 16 KiB on newer Android devices.
    pub page_size: u64,
    pub cgroup: Found<CgroupProbe>,
    pub dmem_capacity: Found<Vec<DmemRegion>>,
    /// `/sys/module/dma_heap/parameters/mem_accounting`.
    pub mem_accounting: Found<bool>,
    pub dma_heaps: Found<Vec<String>>,
    pub cma_areas: Found<Vec<CmaArea>>,
    pub meminfo: Found<MemInfo>,
    pub cmdline: Found<Cmdline>,
    pub reserved_memory: Found<Vec<ReservedMemory>>,
    pub drm: Found<Vec<DrmDevice>>,
    /// `/sys/fs/selinux/enforce`: present when SELinux is active (selinuxfs mounted), true when
    /// enforcing. Decides the trust rule ([`crate::policy::TrustRule`]).
    #[serde(default = "not_probed")]
    pub selinux: Found<bool>,
}

/// For probes saved before the field existed.
fn not_probed<T>() -> Found<T> {
    Found::absent("not probed")
}

impl Probe {
    /// Reads every source under `roots`.
    pub fn run(roots: &ProbeRoots) -> Probe {
        let page_size = rustix::param::page_size() as u64;
        let cgroupfs = CgroupFs::new(&roots.cgroup);
        let cgroup: Found<CgroupProbe> = (|| -> Result<CgroupProbe, String> {
            let controllers = cgroupfs.controllers("/").map_err(|e| format!("no cgroup v2 hierarchy: {e}"))?;
            let children = cgroupfs.children("/").unwrap_or_default();
            let oom_score_adj = children
                .iter()
                .filter(|c| c.starts_with(super::topology::OWNER_PREFIX))
                .filter_map(|c| Some((c.clone(), lowest_oom_score_adj(&cgroupfs, &roots.proc, c)?)))
                .collect();
            Ok(CgroupProbe {
                controllers,
                subtree_control: cgroupfs.subtree_control("/").unwrap_or_default(),
                children,
                oom_score_adj,
            })
        })()
        .into();
        let dmem_capacity = match cgroup.get() {
            Some(c) if !c.controllers.iter().any(|x| x == "dmem") => {
                Found::absent("dmem controller not in cgroup.controllers")
            }
            _ => cgroupfs
                .dmem_capacity()
                .map(|v| v.into_iter().map(|(name, capacity)| DmemRegion { name, capacity }).collect())
                .into(),
        };
        Probe {
            page_size,
            cgroup,
            dmem_capacity,
            mem_accounting: mem_accounting(&roots.sys.join("module/dma_heap/parameters/mem_accounting")).into(),
            dma_heaps: dma_heaps(&roots.dev.join("dma_heap")).into(),
            cma_areas: cma_areas(&roots.sys.join("kernel/mm/cma"), page_size).into(),
            meminfo: meminfo(&roots.proc.join("meminfo")).into(),
            cmdline: cmdline(&roots.proc.join("cmdline")).into(),
            reserved_memory: reserved_memory(&roots.proc.join("device-tree/reserved-memory")).into(),
            drm: drm(&roots.sys.join("class/drm")).into(),
            selinux: selinux(&roots.sys).into(),
        }
    }

    pub fn from_json(text: &str) -> Result<Probe, serde_json::Error> {
        serde_json::from_str(text)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a probe always serializes")
    }
}

fn describe(path: &Path, e: io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => format!("{} does not exist", path.display()),
        _ => format!("{}: {e}", path.display()),
    }
}

fn read_text(path: &Path) -> Result<String, String> {
    let bytes = fs::read(path).map_err(|e| describe(path, e))?;
    String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8", path.display()))
}

fn read_u64(path: &Path) -> Result<u64, String> {
    let text = read_text(path)?;
    let t = text.trim();
    let parsed = match t.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse(),
    };
    parsed.map_err(|_| format!("{}: {t:?} is not a number", path.display()))
}

/// Sorted names of the entries of a directory.
fn list(dir: &Path) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(|e| describe(dir, e))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// Whether SELinux is active under the sysfs root `sys` (`Ok(enforcing)`), or why not.
pub fn selinux(sys: &Path) -> Result<bool, String> {
    let path = sys.join("fs/selinux/enforce");
    match read_text(&path)?.trim() {
        "1" => Ok(true),
        "0" => Ok(false),
        other => Err(format!("{}: {other:?} is neither 0 nor 1", path.display())),
    }
}

fn mem_accounting(path: &Path) -> Result<bool, String> {
    let text = read_text(path)?;
    match text.trim() {
        "Y" | "y" | "1" => Ok(true),
        "N" | "n" | "0" => Ok(false),
        other => Err(format!("{}: unexpected value {other:?} (expected Y, N, 1 or 0)", path.display())),
    }
}

fn dma_heaps(dir: &Path) -> Result<Vec<String>, String> {
    list(dir)
}

/// The background signal of an owner: the lowest `oom_score_adj` among the processes of `cgroup`
/// and its descendants (`/uid_<uid>/pid_<pid>`). `None` when it has no process whose value could be
/// read (it exited meanwhile, or the cgroup is gone). A few small reads per process, outside any
/// lock; the owner's class changes when the framework moves its processes between states.
pub fn lowest_oom_score_adj(cgroupfs: &CgroupFs, proc: &Path, cgroup: &str) -> Option<i32> {
    let mut lowest: Option<i32> = None;
    let mut pending = vec![cgroup.to_string()];
    while let Some(c) = pending.pop() {
        for pid in cgroupfs.procs(&c).unwrap_or_default() {
            let adj = read_text(&proc.join(pid.to_string()).join("oom_score_adj")).ok();
            if let Some(adj) = adj.and_then(|t| t.trim().parse::<i32>().ok()) {
                lowest = Some(lowest.map_or(adj, |l| l.min(adj)));
            }
        }
        pending.extend(cgroupfs.children(&c).unwrap_or_default());
    }
    lowest
}

fn cma_areas(dir: &Path, page_size: u64) -> Result<Vec<CmaArea>, String> {
    let mut out = Vec::new();
    for name in list(dir)? {
        let area = dir.join(&name);
        // An area whose size cannot be read is useless for limits; skip it rather than guess.
        let Ok(total_pages) = read_u64(&area.join("total_pages")) else { continue };
        let available = read_u64(&area.join("available_pages")).ok().map(|p| p.saturating_mul(page_size));
        out.push(CmaArea { name, total: total_pages.saturating_mul(page_size), available });
    }
    Ok(out)
}

fn meminfo(path: &Path) -> Result<MemInfo, String> {
    let text = read_text(path)?;
    let field = |key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.split(':').next() == Some(key))?;
        let mut words = line.split(':').nth(1)?.split_whitespace();
        let n: u64 = words.next()?.parse().ok()?;
        match words.next() {
            Some("kB") => n.checked_mul(1024),
            None => Some(n),
            Some(_) => None,
        }
    };
    let mem_total = field("MemTotal").ok_or_else(|| format!("{}: no MemTotal", path.display()))?;
    Ok(MemInfo { mem_total, swap_total: field("SwapTotal").unwrap_or(0), cma_total: field("CmaTotal") })
}

fn cmdline(path: &Path) -> Result<Cmdline, String> {
    let text = read_text(path)?;
    let cma = text.split(['\0', ' ', '\n']).rev().find_map(|w| w.strip_prefix("cma=")).map(str::to_string);
    // `cma=64M`, `cma=64M@0-4G`, `cma=64M:...`: the size is what precedes '@' or ':'.
    let cma_bytes = cma.as_deref().and_then(|c| parse_bytes(c.split(['@', ':']).next().unwrap_or_default()).ok());
    Ok(Cmdline { cma, cma_bytes })
}

/// Big-endian cells of a device-tree property.
fn cells(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn cells_value(cells: &[u32]) -> Option<u64> {
    match cells {
        [one] => Some(*one as u64),
        [hi, lo] => Some((*hi as u64) << 32 | *lo as u64),
        _ => None,
    }
}

fn reserved_memory(dir: &Path) -> Result<Vec<ReservedMemory>, String> {
    let cell_count =
        |name: &str| fs::read(dir.join(name)).ok().and_then(|b| cells(&b).first().copied()).unwrap_or(2) as usize;
    let (address_cells, size_cells) = (cell_count("#address-cells"), cell_count("#size-cells"));
    let mut out = Vec::new();
    for name in list(dir)? {
        let node = dir.join(&name);
        if !node.is_dir() {
            continue;
        }
        let (mut base, mut size) = (None, None);
        if let Ok(reg) = fs::read(node.join("reg")) {
            let c = cells(&reg);
            if c.len() >= address_cells + size_cells {
                base = cells_value(&c[..address_cells]);
                size = cells_value(&c[address_cells..address_cells + size_cells]);
            }
        }
        if size.is_none() {
            size = fs::read(node.join("size")).ok().and_then(|b| cells_value(&cells(&b)));
        }
        let compatible = fs::read(node.join("compatible"))
            .map(|b| {
                b.split(|&c| c == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        out.push(ReservedMemory {
            name,
            compatible,
            base,
            size,
            reusable: node.join("reusable").exists(),
            no_map: node.join("no-map").exists(),
        });
    }
    Ok(out)
}

/// The DRM cards under `dir` (`/sys/class/drm`): autoconfig's vram plan and memtrack's GPU list.
pub fn drm(dir: &Path) -> Result<Vec<DrmDevice>, String> {
    let mut out = Vec::new();
    for card in list(dir)? {
        // card0, card1: not connectors (card0-DP-1) nor render nodes (renderD128).
        if !card.strip_prefix("card").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        let device_dir = dir.join(&card).join("device");
        let uevent = read_text(&device_dir.join("uevent")).unwrap_or_default();
        let uevent_field =
            |key: &str| uevent.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).map(str::to_string);
        let link_name = |p: &Path| fs::read_link(p).ok().and_then(|t| t.file_name()?.to_str().map(str::to_string));
        let device = uevent_field("PCI_SLOT_NAME")
            .or_else(|| link_name(&device_dir))
            .or_else(|| uevent_field("OF_FULLNAME").map(|n| n.rsplit('/').next().unwrap_or(&n).to_string()));
        let driver = uevent_field("DRIVER").or_else(|| link_name(&device_dir.join("driver")));
        out.push(DrmDevice {
            card,
            device,
            driver,
            vendor: read_text(&device_dir.join("vendor")).ok().map(|v| v.trim().to_string()),
            vram_total: read_u64(&device_dir.join("mem_info_vram_total")).ok(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, content: impl AsRef<[u8]>) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    #[test]
    fn an_empty_tree_probes_as_all_absent_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let p = Probe::run(&ProbeRoots::under(dir.path()));
        assert!(p.cgroup.reason().unwrap().contains("no cgroup v2 hierarchy"));
        assert!(p.mem_accounting.reason().unwrap().contains("does not exist"));
        assert!(p.dma_heaps.get().is_none() && p.cma_areas.get().is_none() && p.meminfo.get().is_none());
        assert!(p.drm.get().is_none() && p.reserved_memory.get().is_none() && p.cmdline.get().is_none());
    }

    #[test]
    fn selinux_is_active_when_selinuxfs_is_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        assert!(selinux(&sys).unwrap_err().contains("does not exist"));
        write(dir.path(), "sys/fs/selinux/enforce", "0");
        assert_eq!(selinux(&sys), Ok(false), "permissive");
        write(dir.path(), "sys/fs/selinux/enforce", "1");
        assert_eq!(selinux(&sys), Ok(true), "enforcing");
    }

    #[test]
    fn a_probe_saved_before_selinux_was_probed_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let mut json: serde_json::Value =
            serde_json::from_str(&Probe::run(&ProbeRoots::under(dir.path())).to_json()).unwrap();
        json.as_object_mut().unwrap().remove("selinux");
        let p = Probe::from_json(&json.to_string()).unwrap();
        assert_eq!(p.selinux.reason(), Some("not probed"));
    }

    #[test]
    fn probe_reads_every_source() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(r, "sys/fs/cgroup/cgroup.controllers", "cpu memory dmem\n");
        write(r, "sys/fs/cgroup/cgroup.subtree_control", "memory\n");
        write(r, "sys/fs/cgroup/dmem.capacity", "cma/display 268435456\ndrm/0000:03:00.0/vram0 8589934592\n");
        write(r, "sys/fs/cgroup/uid_10001/cgroup.procs", "");
        write(r, "sys/fs/cgroup/uid_10001/pid_40/cgroup.procs", "40\n41\n");
        write(r, "sys/fs/cgroup/uid_10001/pid_42/cgroup.procs", "42\n");
        write(r, "proc/40/oom_score_adj", "999\n");
        write(r, "proc/41/oom_score_adj", "905\n");
        write(r, "sys/module/dma_heap/parameters/mem_accounting", "Y\n");
        for h in ["system", "display"] {
            write(r, &format!("dev/dma_heap/{h}"), "");
        }
        write(r, "sys/kernel/mm/cma/display/total_pages", "65536\n");
        write(r, "sys/kernel/mm/cma/display/available_pages", "1024\n");
        write(r, "sys/kernel/mm/cma/broken/available_pages", "1\n");
        write(
            r,
            "proc/meminfo",
            "MemTotal:        8000000 kB\nSwapTotal:             0 kB\nCmaTotal:         262144 kB\n",
        );
        write(r, "proc/cmdline", "console=ttyS0 cma=64M@0-4G quiet\n");
        let rm = "proc/device-tree/reserved-memory";
        write(r, &format!("{rm}/#address-cells"), 2u32.to_be_bytes());
        write(r, &format!("{rm}/#size-cells"), 1u32.to_be_bytes());
        let reg: Vec<u8> = [0u32, 0xb000_0000, 0x0200_0000].iter().flat_map(|c| c.to_be_bytes()).collect();
        write(r, &format!("{rm}/secure_video@b0000000/reg"), reg);
        write(r, &format!("{rm}/secure_video@b0000000/compatible"), "vendor,secure-heap\0shared-dma-pool\0");
        write(r, &format!("{rm}/secure_video@b0000000/no-map"), "");
        let size: Vec<u8> = [0u32, 0x1000_0000].iter().flat_map(|c| c.to_be_bytes()).collect();
        write(r, &format!("{rm}/linux,cma/size"), size);
        write(r, &format!("{rm}/linux,cma/reusable"), "");
        write(r, "sys/class/drm/card0/device/uevent", "DRIVER=amdgpu\nPCI_SLOT_NAME=0000:03:00.0\n");
        write(r, "sys/class/drm/card0/device/vendor", "0x1002\n");
        write(r, "sys/class/drm/card0/device/mem_info_vram_total", "8589934592\n");
        fs::create_dir_all(r.join("sys/class/drm/card0-DP-1")).unwrap();
        fs::create_dir_all(r.join("sys/class/drm/renderD128")).unwrap();

        let p = Probe::run(&ProbeRoots::under(r));
        let cg = p.cgroup.get().unwrap();
        assert_eq!(
            (cg.controllers.len(), cg.subtree_control.as_slice(), cg.children.as_slice()),
            (3, &["memory".to_string()][..], &["/uid_10001".to_string()][..])
        );
        assert_eq!(p.page_size, rustix::param::page_size() as u64);
        assert_eq!(cg.oom_score_adj.get("/uid_10001"), Some(&905), "the lowest of the owner's processes");
        assert_eq!(
            p.dmem_capacity.get().unwrap()[1],
            DmemRegion { name: "drm/0000:03:00.0/vram0".into(), capacity: 8 << 30 }
        );
        assert_eq!(p.mem_accounting, Found::Present(true));
        assert_eq!(p.dma_heaps, Found::Present(vec!["display".into(), "system".into()]));
        let page = p.page_size;
        assert_eq!(
            p.cma_areas,
            Found::Present(vec![CmaArea { name: "display".into(), total: 65536 * page, available: Some(1024 * page) }]),
            "CMA areas count pages of the kernel's size"
        );
        assert_eq!(
            p.meminfo,
            Found::Present(MemInfo { mem_total: 8_192_000_000, swap_total: 0, cma_total: Some(256 << 20) })
        );
        assert_eq!(p.cmdline, Found::Present(Cmdline { cma: Some("64M@0-4G".into()), cma_bytes: Some(64 << 20) }));
        let rmem = p.reserved_memory.get().unwrap();
        assert_eq!(rmem[0].name, "linux,cma");
        assert_eq!((rmem[0].size, rmem[0].reusable), (Some(256 << 20), true));
        assert_eq!(rmem[1].base_name(), "secure_video");
        assert_eq!((rmem[1].base, rmem[1].size, rmem[1].no_map), (Some(0xb000_0000), Some(32 << 20), true));
        assert_eq!(rmem[1].compatible, ["vendor,secure-heap", "shared-dma-pool"]);
        let drm = p.drm.get().unwrap();
        assert_eq!(drm.len(), 1, "connectors and render nodes are skipped");
        assert_eq!(drm[0].device.as_deref(), Some("0000:03:00.0"));
        assert_eq!((drm[0].driver.as_deref(), drm[0].vram_total), (Some("amdgpu"), Some(8 << 30)));

        let back = Probe::from_json(&p.to_json()).unwrap();
        assert_eq!(back, p, "a probe round-trips through JSON");
    }

    #[test]
    fn odd_values_degrade_to_absent() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(r, "sys/module/dma_heap/parameters/mem_accounting", "maybe\n");
        write(r, "proc/meminfo", "SwapTotal: 0 kB\n");
        write(r, "sys/fs/cgroup/cgroup.controllers", "cpu memory\n");
        let p = Probe::run(&ProbeRoots::under(r));
        assert!(p.mem_accounting.reason().unwrap().contains("\"maybe\""));
        assert!(p.meminfo.reason().unwrap().contains("no MemTotal"));
        assert_eq!(p.dmem_capacity.reason(), Some("dmem controller not in cgroup.controllers"));
    }
}
