//! The topology: from what the probe found and what the policy says, the regions (with class and
//! capacity), the heaps that feed them, the pools each heap charges, and for every (heap, pool)
//! who enforces the limits there:
//! - `kernel`: the controller is there and the kernel charges this heap in this pool (memcg for
//!   the system heap with `dma_heap.mem_accounting`; dmem for a region listed in dmem.capacity);
//! - `service`: the kernel is blind to it, so the ledger enforces;
//! - `nobody`: observe mode, or nothing charges the pool.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::probe::{Found, Probe};
use crate::ledger::{HeapClass, MEMCG_POOL};
use crate::policy::{glob_match, Mode, OwnerClass, Policy, RegionClass, TrustRule};

/// Android's per-owner cgroups: `/uid_<uid>` directly under the root.
pub const OWNER_PREFIX: &str = "/uid_";

/// How a plan names the per-owner cgroup of an owner class before a uid is known.
pub const OWNER_TEMPLATE: &str = "/uid_<uid>";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcer {
    Kernel,
    Service,
    Nobody,
}

impl Enforcer {
    pub fn name(self) -> &'static str {
        match self {
            Enforcer::Kernel => "kernel",
            Enforcer::Service => "service",
            Enforcer::Nobody => "nobody",
        }
    }
}

/// Where a heap came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Policy,
    /// In /dev/dma_heap but not in the policy: mapped by name, in observe mode.
    Default,
}

/// One pool a heap's buffers are charged to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolCharge {
    pub pool: String,
    pub enforced_by: Enforcer,
    pub why: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heap {
    pub name: String,
    pub class: HeapClass,
    /// The resolved region; `None` for the system heap, or when a pattern matched nothing.
    pub region: Option<String>,
    /// The policy's region or pattern, when it differs from `region`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region_pattern: Option<String>,
    pub mode: Mode,
    pub origin: Origin,
    /// Listed in /dev/dma_heap (vram heaps are driver exporters and never are).
    pub in_dev: bool,
    /// On this device: in /dev/dma_heap, or its region exists. Absent heaps charge no pool.
    pub present: bool,
    pub pools: Vec<PoolCharge>,
}

impl Heap {
    /// Whether the ledger can declare it (a heap of a class with regions needs one).
    pub fn declarable(&self) -> bool {
        !self.class.needs_region() || self.region.is_some()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    pub name: String,
    pub class: RegionClass,
    /// The memory kind its heaps draw (cma, carveout, vram).
    pub kind: HeapClass,
    pub capacity: Option<u64>,
    /// Where the capacity came from.
    pub capacity_source: String,
    /// On this device: its capacity was found or the kernel registered it.
    pub present: bool,
    pub heaps: Vec<String>,
    /// Listed in dmem.capacity with the dmem controller available: the kernel charges it.
    pub kernel_charged: bool,
    pub enforced_by: Enforcer,
    pub why: String,
}

/// The memcg side: the owner's memory (memory.*, kernel) and the dma-buf bytes in RAM (the
/// ledger's memcg pool).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memcg {
    pub mem_total: Option<u64>,
    pub swap_total: Option<u64>,
    pub memory_controller: bool,
    /// Who enforces memory.max/low/min.
    pub memory_enforced_by: Enforcer,
    pub heaps: Vec<String>,
    /// Heaps the kernel charges to memcg itself (system heap with mem_accounting).
    pub kernel_charged_heaps: Vec<String>,
    /// Who enforces the dma-buf budget (the ledger's memcg pool).
    pub enforced_by: Enforcer,
    pub why: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub cgroup: String,
    pub uid: u32,
    pub class: OwnerClass,
    /// The background signal: the lowest `oom_score_adj` of its processes, when it has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// The kernel's page size, from the probe: memory limits are kept in whole pages.
    pub page_size: u64,
    pub controllers: Vec<String>,
    /// Controllers the root offers but does not enable for its children; apply enables them.
    pub controllers_to_enable: Vec<String>,
    pub dmem_controller: bool,
    pub mem_accounting: Option<bool>,
    pub memcg: Memcg,
    pub regions: Vec<Region>,
    pub heaps: Vec<Heap>,
    pub owners: Vec<Owner>,
    /// Owner cgroups the ledger remembers that no longer exist: no limits are written for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_owners: Vec<String>,
    pub drm: Vec<super::probe::DrmDevice>,
    /// Which trusted list decides, from whether the probe found SELinux active.
    pub trust: TrustRule,
    pub notes: Vec<String>,
}

impl Topology {
    pub fn region(&self, name: &str) -> Option<&Region> {
        self.regions.binary_search_by(|r| r.name.as_str().cmp(name)).ok().map(|i| &self.regions[i])
    }

    /// Owner cgroups of a uid-per-cgroup layout among `paths` (`/uid_10001`), classified by the
    /// policy with each owner's background signal from `oom_score_adj`.
    pub fn owners_from<'a>(
        policy: &Policy,
        paths: impl IntoIterator<Item = &'a str>,
        oom_score_adj: &BTreeMap<String, i32>,
    ) -> Vec<Owner> {
        let mut out: Vec<Owner> = paths
            .into_iter()
            .filter_map(|p| {
                let uid = owner_uid(p)?;
                let adj = oom_score_adj.get(p).copied();
                Some(Owner { cgroup: p.to_string(), uid, class: policy.owner_class(uid, p, adj), oom_score_adj: adj })
            })
            .collect();
        out.sort_by(|a, b| a.cgroup.cmp(&b.cgroup));
        out.dedup_by(|a, b| a.cgroup == b.cgroup);
        out
    }

    pub fn build(probe: &Probe, policy: &Policy) -> Topology {
        Builder::new(probe).build(policy)
    }
}

/// The uid of an owner cgroup path (`/uid_10001` → 10001); `None` for any other path.
pub fn owner_uid(cgroup: &str) -> Option<u32> {
    let uid = cgroup.strip_prefix(OWNER_PREFIX)?;
    if uid.is_empty() || !uid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    uid.parse().ok()
}

/// Lookup tables over the probe, built once so the topology is linear in what was probed.
struct Builder<'a> {
    probe: &'a Probe,
    controllers: Vec<String>,
    dmem_controller: bool,
    memory_controller: bool,
    dmem: BTreeMap<&'a str, u64>,
    notes: Vec<String>,
}

impl<'a> Builder<'a> {
    fn new(probe: &'a Probe) -> Builder<'a> {
        let controllers = probe.cgroup.get().map(|c| c.controllers.clone()).unwrap_or_default();
        let has = |c: &str| controllers.iter().any(|x| x == c);
        let dmem_controller = has("dmem");
        let memory_controller = has("memory");
        let dmem = probe
            .dmem_capacity
            .get()
            .map(|v| v.iter().map(|r| (r.name.as_str(), r.capacity)).collect())
            .unwrap_or_default();
        Builder { probe, controllers, dmem_controller, memory_controller, dmem, notes: Vec::new() }
    }

    /// Names of every region the device shows, for resolving patterns: dmem.capacity, CMA areas,
    /// carve-outs, and DRM vram not (yet) registered with dmem.
    fn known_regions(&self) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self.dmem.keys().map(|s| s.to_string()).collect();
        if let Some(areas) = self.probe.cma_areas.get() {
            names.extend(areas.iter().map(|a| format!("cma/{}", a.name)));
        }
        if let Some(nodes) = self.probe.reserved_memory.get() {
            names.extend(nodes.iter().filter(|n| !n.reusable).map(|n| format!("carveout/{}", n.base_name())));
        }
        for d in self.probe.drm.get().into_iter().flatten() {
            if let (Some(dev), Some(_)) = (&d.device, d.vram_total) {
                let prefix = format!("drm/{dev}/");
                if !self.dmem.keys().any(|k| k.starts_with(&prefix)) {
                    names.insert(format!("{prefix}{}", vram_name(d.driver.as_deref())));
                }
            }
        }
        names
    }

    /// A region's capacity and where it came from.
    fn capacity(&self, name: &str) -> (Option<u64>, String) {
        if let Some(c) = self.dmem.get(name) {
            return (Some(*c), "dmem.capacity".into());
        }
        if let Some(area) = name.strip_prefix("cma/") {
            if let Some(a) = self.probe.cma_areas.get().into_iter().flatten().find(|a| a.name == area) {
                return (Some(a.total), format!("/sys/kernel/mm/cma/{area}"));
            }
            if area == "reserved" {
                if let Some(b) = self.probe.cmdline.get().and_then(|c| c.cma_bytes) {
                    return (Some(b), "cma= on the command line".into());
                }
                if let Some(b) = self.probe.meminfo.get().and_then(|m| m.cma_total).filter(|b| *b > 0) {
                    return (Some(b), "CmaTotal in /proc/meminfo".into());
                }
            }
        }
        if let Some(node) = name.strip_prefix("carveout/") {
            let found = self
                .probe
                .reserved_memory
                .get()
                .into_iter()
                .flatten()
                .find(|n| n.base_name() == node || n.name == node);
            if let Some(size) = found.and_then(|n| n.size) {
                return (
                    Some(size),
                    format!("device tree /reserved-memory/{}", found.map(|n| n.name.as_str()).unwrap_or(node)),
                );
            }
        }
        if let Some(rest) = name.strip_prefix("drm/") {
            let dev = rest.split('/').next().unwrap_or_default();
            let found = self.probe.drm.get().into_iter().flatten().find(|d| d.device.as_deref() == Some(dev));
            if let Some((card, vram)) = found.and_then(|d| Some((&d.card, d.vram_total?))) {
                return (Some(vram), format!("/sys/class/drm/{card}/device/mem_info_vram_total"));
            }
        }
        (None, "not found on this device".into())
    }

    fn build(mut self, policy: &Policy) -> Topology {
        let known = self.known_regions();
        let dev_heaps: BTreeSet<&str> = self.probe.dma_heaps.get().into_iter().flatten().map(String::as_str).collect();
        let mem_accounting = self.probe.mem_accounting.get().copied();

        // Heaps: the policy's, then the unknown ones in /dev/dma_heap by name.
        struct Draft {
            name: String,
            class: HeapClass,
            region: Option<String>,
            pattern: Option<String>,
            region_class: RegionClass,
            mode: Mode,
            origin: Origin,
        }
        let mut drafts: Vec<Draft> = Vec::new();
        for h in policy.heaps() {
            let region = match &h.region {
                Some(p) if h.region_is_pattern() => {
                    let found = known.iter().find(|r| glob_match(p, r)).cloned();
                    if found.is_none() {
                        self.notes.push(format!(
                            "heap {}: no region on this device matches {p}; the heap is not declared",
                            h.name
                        ));
                    }
                    found
                }
                other => other.clone(),
            };
            let pattern = h.region.clone().filter(|p| Some(p) != region.as_ref());
            drafts.push(Draft {
                name: h.name.clone(),
                class: h.class,
                region,
                pattern,
                region_class: h.region_class,
                mode: h.mode,
                origin: Origin::Policy,
            });
        }
        for name in &dev_heaps {
            if policy.heap(name).is_some() {
                continue;
            }
            match default_mapping(name, self.probe) {
                Some((class, region)) => {
                    self.notes.push(format!(
                        "heap {name} in /dev/dma_heap is not in the policy: mapped to {}{} in observe mode",
                        class.name(),
                        region.as_deref().map(|r| format!(" region {r}")).unwrap_or_default()
                    ));
                    drafts.push(Draft {
                        name: name.to_string(),
                        class,
                        region_class: RegionClass::default_for(class),
                        region,
                        pattern: None,
                        mode: Mode::Observe,
                        origin: Origin::Default,
                    });
                }
                None => self.notes.push(format!("heap {name} in /dev/dma_heap is not in the policy and its name says nothing of its memory: not accounted (add it to the policy)")),
            }
        }
        drafts.sort_by(|a, b| a.name.cmp(&b.name));

        // Regions: every region a heap resolves to, plus kernel-registered ones no heap names.
        let mut regions: BTreeMap<String, Region> = BTreeMap::new();
        for d in &drafts {
            let Some(r) = &d.region else { continue };
            let entry = regions.entry(r.clone()).or_insert_with(|| {
                let (capacity, capacity_source) = self.capacity(r);
                Region {
                    name: r.clone(),
                    class: d.region_class,
                    kind: d.class,
                    present: capacity.is_some() || self.dmem.contains_key(r.as_str()),
                    capacity,
                    capacity_source,
                    heaps: Vec::new(),
                    kernel_charged: false,
                    enforced_by: Enforcer::Nobody,
                    why: String::new(),
                }
            });
            if d.origin == Origin::Policy && entry.heaps.is_empty() {
                entry.class = d.region_class;
            }
            entry.heaps.push(d.name.clone());
        }
        for (name, capacity) in &self.dmem {
            regions.entry(name.to_string()).or_insert_with(|| {
                let kind = if name.starts_with("drm/") {
                    HeapClass::Vram
                } else if name.starts_with("cma/") {
                    HeapClass::Cma
                } else {
                    HeapClass::Carveout
                };
                Region {
                    name: name.to_string(),
                    class: RegionClass::default_for(kind),
                    kind,
                    capacity: Some(*capacity),
                    capacity_source: "dmem.capacity".into(),
                    present: true,
                    heaps: Vec::new(),
                    kernel_charged: false,
                    enforced_by: Enforcer::Nobody,
                    why: String::new(),
                }
            });
        }

        let enforcing: BTreeSet<&str> =
            drafts.iter().filter(|d| d.mode == Mode::Enforce).map(|d| d.name.as_str()).collect();
        let mut absent = Vec::new();
        for r in regions.values_mut() {
            r.kernel_charged = self.dmem_controller && self.dmem.contains_key(r.name.as_str());
            if !r.present {
                (r.enforced_by, r.why) = (Enforcer::Nobody, "not on this device".into());
                absent.push(r.name.clone());
                continue;
            }
            let any_enforce = r.heaps.iter().any(|h| enforcing.contains(h.as_str()));
            (r.enforced_by, r.why) = match (r.heaps.is_empty(), any_enforce, r.kernel_charged) {
                (true, _, true) => (
                    Enforcer::Kernel,
                    "registered with dmem by its driver; no policy heap, limits by region class".into(),
                ),
                (true, _, false) => (Enforcer::Nobody, "nothing charges it".into()),
                (false, false, _) => (Enforcer::Nobody, "observe mode: limits are recorded, not enforced".into()),
                (false, true, true) => (Enforcer::Kernel, "dmem controller present and region in dmem.capacity".into()),
                (false, true, false) if !self.dmem_controller => {
                    (Enforcer::Service, "no dmem controller: the ledger enforces".into())
                }
                (false, true, false) => (
                    Enforcer::Service,
                    "dmem controller present but the kernel has no such region: the ledger enforces".into(),
                ),
            };
            if r.capacity.is_none() {
                self.notes.push(format!("region {}: capacity unknown; share limits cannot be computed", r.name));
            }
        }
        if !absent.is_empty() {
            self.notes.push(format!(
                "regions not on this device (no capacity found): {}; their heaps charge nothing",
                absent.join(", ")
            ));
        }

        // Per (heap, pool) enforcement.
        let sys_kernel = mem_accounting == Some(true) && self.memory_controller;
        let mut heaps = Vec::new();
        let mut memcg_heaps = Vec::new();
        let mut kernel_charged_heaps = Vec::new();
        let mut memcg_enforcers = BTreeSet::new();
        for d in drafts {
            let observe = d.mode == Mode::Observe;
            let mut pools = Vec::new();
            let in_dev = dev_heaps.contains(d.name.as_str());
            let region_present = d.region.as_ref().and_then(|r| regions.get(r)).is_some_and(|r| r.present);
            let present = if d.class.needs_region() { region_present } else { in_dev };
            if present && matches!(d.class, HeapClass::System | HeapClass::Cma | HeapClass::Vram) {
                let (enforced_by, why) = match d.class {
                    _ if observe => (Enforcer::Nobody, "observe mode".to_string()),
                    HeapClass::System if sys_kernel => {
                        (Enforcer::Kernel, "dma_heap.mem_accounting=Y: the kernel charges memcg".into())
                    }
                    HeapClass::System => (
                        Enforcer::Service,
                        match (mem_accounting, self.memory_controller) {
                            (_, false) => "no memory controller: the ledger counts it".to_string(),
                            (Some(false), _) => "dma_heap.mem_accounting=N: the kernel does not charge memcg".into(),
                            _ => "dma_heap.mem_accounting not available: the kernel does not charge memcg".into(),
                        },
                    ),
                    HeapClass::Cma => (Enforcer::Service, "the kernel never charges CMA pages to memcg".into()),
                    _ => (Enforcer::Service, "evicted vram is charged to the owner's memcg by the ledger".into()),
                };
                if d.class == HeapClass::System && enforced_by == Enforcer::Kernel {
                    kernel_charged_heaps.push(d.name.clone());
                }
                memcg_enforcers.insert(enforced_by);
                memcg_heaps.push(d.name.clone());
                pools.push(PoolCharge { pool: MEMCG_POOL.into(), enforced_by, why });
            }
            if let Some(r) = d.region.as_ref().and_then(|r| regions.get(r)).filter(|_| present) {
                let (enforced_by, why) = if observe {
                    (Enforcer::Nobody, "observe mode".to_string())
                } else {
                    (r.enforced_by, r.why.clone())
                };
                pools.push(PoolCharge { pool: r.name.clone(), enforced_by, why });
            }
            heaps.push(Heap {
                in_dev,
                present,
                name: d.name,
                class: d.class,
                region: d.region,
                region_pattern: d.pattern,
                mode: d.mode,
                origin: d.origin,
                pools,
            });
        }

        let (enforced_by, why) = if memcg_enforcers.contains(&Enforcer::Service) {
            (
                Enforcer::Service,
                "the kernel does not charge every enforcing heap that uses RAM: the ledger keeps the dma-buf budget"
                    .to_string(),
            )
        } else if memcg_enforcers.contains(&Enforcer::Kernel) {
            (
                Enforcer::Kernel,
                "every enforcing heap that uses RAM is charged by the kernel: the budget is part of memory.max"
                    .to_string(),
            )
        } else {
            (Enforcer::Nobody, "no enforcing heap uses RAM".to_string())
        };
        let meminfo = self.probe.meminfo.get();
        let memcg = Memcg {
            mem_total: meminfo.map(|m| m.mem_total),
            swap_total: meminfo.map(|m| m.swap_total),
            memory_controller: self.memory_controller,
            memory_enforced_by: if self.memory_controller { Enforcer::Kernel } else { Enforcer::Nobody },
            heaps: memcg_heaps,
            kernel_charged_heaps,
            enforced_by,
            why,
        };
        if meminfo.is_none() {
            self.notes.push("MemTotal unknown: memcg share limits cannot be computed".into());
        }

        let subtree: BTreeSet<&str> =
            self.probe.cgroup.get().map(|c| c.subtree_control.iter().map(String::as_str).collect()).unwrap_or_default();
        let controllers_to_enable = ["memory", "dmem"]
            .iter()
            .filter(|c| self.controllers.iter().any(|x| x == *c) && !subtree.contains(*c))
            .map(|c| c.to_string())
            .collect();
        match (&self.probe.cgroup, &self.probe.dmem_capacity) {
            (Found::Absent { reason }, _) => {
                self.notes.push(format!("no cgroup v2: {reason}; the ledger enforces everything"))
            }
            (_, Found::Present(v)) if v.is_empty() => {
                self.notes.push("dmem controller present but no driver registered a region".into())
            }
            _ => {}
        }
        if self.dmem_controller && self.probe.dmem_capacity.get().is_none() {
            self.notes
                .push(format!("dmem.capacity unreadable: {}", self.probe.dmem_capacity.reason().unwrap_or_default()));
        }

        let (children, adj) = match self.probe.cgroup.get() {
            Some(c) => (c.children.as_slice(), Some(&c.oom_score_adj)),
            None => (&[][..], None),
        };
        let owners =
            Topology::owners_from(policy, children.iter().map(String::as_str), adj.unwrap_or(&BTreeMap::new()));
        Topology {
            page_size: self.probe.page_size,
            controllers: self.controllers.clone(),
            controllers_to_enable,
            dmem_controller: self.dmem_controller,
            mem_accounting,
            memcg,
            regions: regions.into_values().collect(),
            heaps,
            owners,
            skipped_owners: Vec::new(),
            drm: self.probe.drm.get().cloned().unwrap_or_default(),
            trust: TrustRule::with_selinux(self.probe.selinux.get().is_some()),
            notes: self.notes,
        }
    }
}

/// The vram region name a driver registers (DESIGN-NOTES §3): xe numbers its regions.
fn vram_name(driver: Option<&str>) -> &'static str {
    match driver {
        Some("xe") => "vram0",
        _ => "vram",
    }
}

/// A heap the policy does not know, mapped by its name: the system heaps to System, CMA heaps to
/// a `cma/<area>` region (the default area `reserved` for `default_cma_region`).
fn default_mapping(name: &str, probe: &Probe) -> Option<(HeapClass, Option<String>)> {
    if name == "system" || name.starts_with("system-") || name == "system_uncached" {
        return Some((HeapClass::System, None));
    }
    if !(name.contains("cma") || name.contains("reserved")) {
        return None;
    }
    let areas: Vec<&str> = probe.cma_areas.get().into_iter().flatten().map(|a| a.name.as_str()).collect();
    let area = if areas.contains(&name) {
        name
    } else if name == "default_cma_region" || name == "reserved" {
        "reserved"
    } else {
        name
    };
    Some((HeapClass::Cma, Some(format!("cma/{area}"))))
}
