//! Policy: which heaps exist and how they are charged, who may charge on another's behalf, which
//! owner class a process belongs to, and the limits each owner class gets per region class.
//!
//! The policy is JSON, layered like Android's task_profiles.json: a base file plus optional
//! vendor/ODM override files merged in order (see [`merge`] for the rule). The schema is
//! documented in `config/README.md`; `config/policy.json` is the embedded default.
//!
//! A bad policy is rejected with the JSON path of the offending value and the reason, e.g.
//! `heaps.camera.region: a cma heap needs a region`.

mod amount;
mod parse;
mod trust;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ledger::{HeapClass, HeapSpec};

pub use amount::{format_bytes, parse_amount, parse_bytes, Amount, AmountError};
pub use parse::merge;
pub use trust::TrustRule;

/// Android's first application uid (AID_APP_START).
pub const AID_APP_START: u32 = 10000;

/// Android user ids: uid = user × AID_USER_OFFSET + app id.
pub const AID_USER_OFFSET: u32 = 100_000;

/// The shipped default policy (a phone), compiled in so the service always has one.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/policy.json");

#[derive(Debug, Error)]
pub enum PolicyError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not JSON at all: where the parser stopped.
    #[error("{}line {line} column {column}: {message}", file_prefix(file))]
    Syntax { file: Option<PathBuf>, line: usize, column: usize, message: String },
    /// JSON, but not a valid policy: the path of the value (`heaps.camera.region`) and why.
    #[error("{}{path}: {reason}", files_prefix(files))]
    Invalid { files: Vec<PathBuf>, path: String, reason: String },
}

fn file_prefix(file: &Option<PathBuf>) -> String {
    file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default()
}

fn files_prefix(files: &[PathBuf]) -> String {
    match files {
        [] => String::new(),
        [one] => format!("{}: ", one.display()),
        many => format!(
            "policy merged from {}: ",
            many.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Whether over-limit charges of a heap are refused or only counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Observe,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Observe => "observe",
        }
    }
}

/// What a region is used for; limits are given per region class, not per region, so one policy
/// fits devices whose region names differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegionClass {
    Display,
    Render,
    Camera,
    Codec,
    Secure,
    Vram,
    System,
}

impl RegionClass {
    pub const ALL: [RegionClass; 7] = [
        RegionClass::Display,
        RegionClass::Render,
        RegionClass::Camera,
        RegionClass::Codec,
        RegionClass::Secure,
        RegionClass::Vram,
        RegionClass::System,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RegionClass::Display => "display",
            RegionClass::Render => "render",
            RegionClass::Camera => "camera",
            RegionClass::Codec => "codec",
            RegionClass::Secure => "secure",
            RegionClass::Vram => "vram",
            RegionClass::System => "system",
        }
    }

    pub fn from_name(s: &str) -> Option<RegionClass> {
        RegionClass::ALL.into_iter().find(|c| c.name() == s)
    }

    /// The class a region gets when no policy heap names one.
    pub fn default_for(class: HeapClass) -> RegionClass {
        match class {
            HeapClass::Vram => RegionClass::Vram,
            HeapClass::Carveout => RegionClass::Secure,
            HeapClass::System | HeapClass::Cma => RegionClass::System,
        }
    }
}

impl fmt::Display for RegionClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Who a cgroup's owner is, for limits: ordinary apps, platform processes (SurfaceFlinger, the
/// camera HAL, system_server), and apps the platform marked background.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OwnerClass {
    App,
    System,
    Background,
}

impl OwnerClass {
    pub const ALL: [OwnerClass; 3] = [OwnerClass::App, OwnerClass::System, OwnerClass::Background];

    pub fn name(self) -> &'static str {
        match self {
            OwnerClass::App => "app",
            OwnerClass::System => "system",
            OwnerClass::Background => "background",
        }
    }

    pub fn from_name(s: &str) -> Option<OwnerClass> {
        OwnerClass::ALL.into_iter().find(|c| c.name() == s)
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for OwnerClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One heap as the policy declares it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeapPolicy {
    pub name: String,
    pub class: HeapClass,
    /// The dmem region (`cma/display`, `drm/*/vram*`); `*` matches within one path component,
    /// resolved against the regions the device has.
    pub region: Option<String>,
    pub region_class: RegionClass,
    pub mode: Mode,
}

impl HeapPolicy {
    /// Whether `region` is a pattern to resolve against the device rather than a name.
    pub fn region_is_pattern(&self) -> bool {
        self.region.as_deref().is_some_and(|r| r.contains('*'))
    }
}

/// dmem limits of one owner class in one region class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DmemLimits {
    pub max: Amount,
    pub low: Amount,
    pub min: Amount,
    pub pin_max: Amount,
}

impl Default for DmemLimits {
    fn default() -> Self {
        DmemLimits { max: Amount::Max, low: Amount::Bytes(0), min: Amount::Bytes(0), pin_max: Amount::Max }
    }
}

/// Memory limits of one owner class; shares are of MemTotal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemcgLimits {
    /// The owner's own memory (anon, file): what `memory.max` holds before dma-bufs are added.
    pub max: Amount,
    pub low: Amount,
    pub min: Amount,
    /// dma-buf memory in RAM the owner may hold (system heap, CMA, evicted vram). Kept by the
    /// ledger's memcg pool; added to `memory.max` for the heaps the kernel charges to memcg.
    pub dmabuf_max: Amount,
}

impl Default for MemcgLimits {
    fn default() -> Self {
        MemcgLimits { max: Amount::Max, low: Amount::Bytes(0), min: Amount::Bytes(0), dmabuf_max: Amount::Max }
    }
}

/// Inclusive uid range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UidRange {
    pub first: u32,
    pub last: u32,
}

impl UidRange {
    pub fn contains(&self, uid: u32) -> bool {
        (self.first..=self.last).contains(&uid)
    }
}

/// An owner-class rule: matches when the app id is in one of `uids` (if any are given), the
/// cgroup path matches one of `cgroups` (if any are given), and every process of the owner has an
/// `oom_score_adj` of at least `min_oom_score_adj` (if given).
///
/// `oom_score_adj` is the background signal every Android device has: the framework's process
/// list sets it for each process state (foreground 0, visible 100, perceptible 200, service 500,
/// home 600, previous 700, cached 900..=999, `ProcessList.java`). Owners are `/uid_<uid>`
/// cgroups, so no cgroup path can say "background"; the lowest adj among the owner's processes
/// can, and changes whenever the app changes state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerRule {
    pub name: String,
    pub class: OwnerClass,
    pub uids: Vec<UidRange>,
    pub cgroups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_oom_score_adj: Option<i32>,
}

impl OwnerRule {
    /// `app_id` is `uid % 100000`; `oom_score_adj` the lowest among the owner's live processes
    /// (`None` when it has none, or it could not be read: then a rule that needs it does not match).
    pub fn matches(&self, app_id: u32, cgroup: &str, oom_score_adj: Option<i32>) -> bool {
        (self.uids.is_empty() || self.uids.iter().any(|r| r.contains(app_id)))
            && (self.cgroups.is_empty() || self.cgroups.iter().any(|p| glob_match(p, cgroup)))
            && self.min_oom_score_adj.is_none_or(|min| oom_score_adj.is_some_and(|adj| adj >= min))
    }
}

/// The validated policy: what was configured, nothing found at run time.
#[derive(Clone, Debug)]
pub struct Policy {
    heaps: Vec<HeapPolicy>,
    trusted_uids: Vec<UidRange>,
    trusted_contexts: Vec<String>,
    owner_rules: Vec<OwnerRule>,
    default_owner_class: OwnerClass,
    dmem_limits: BTreeMap<RegionClass, [DmemLimits; 3]>,
    default_dmem_limits: [DmemLimits; 3],
    memcg_limits: [MemcgLimits; 3],
    /// `trace.counters`: per-app totals to the kernel trace (off by default).
    trace_counters: bool,
}

impl Policy {
    /// Whether per-app totals go to the kernel trace as counters (`trace.counters`).
    pub fn trace_counters(&self) -> bool {
        self.trace_counters
    }

    /// One policy document.
    pub fn from_json(text: &str) -> Result<Policy, PolicyError> {
        let value = parse::json(text, None)?;
        parse::policy(&value).map_err(|(path, reason)| PolicyError::Invalid { files: Vec::new(), path, reason })
    }

    /// A base file and its overrides, merged in order (later wins), then validated as a whole.
    /// The base must exist; a missing override (an ODM file a device does not ship) is skipped.
    pub fn load(paths: &[PathBuf]) -> Result<Policy, PolicyError> {
        let mut merged: Option<serde_json::Value> = None;
        for (i, path) in paths.iter().enumerate() {
            let text = match std::fs::read_to_string(path) {
                Err(e) if i > 0 && e.kind() == std::io::ErrorKind::NotFound => continue,
                r => r.map_err(|source| PolicyError::Io { path: path.clone(), source })?,
            };
            let value = parse::json(&text, Some(path))?;
            match &mut merged {
                None => merged = Some(value),
                Some(base) => merge(base, value),
            }
        }
        let merged = merged.ok_or_else(|| PolicyError::Invalid {
            files: Vec::new(),
            path: "(policy)".to_string(),
            reason: "no policy file given".to_string(),
        })?;
        parse::policy(&merged).map_err(|(path, reason)| PolicyError::Invalid { files: paths.to_vec(), path, reason })
    }

    /// The embedded default merged with override documents (tests, fixtures).
    pub fn default_with(overrides: &[&str]) -> Result<Policy, PolicyError> {
        let mut base = parse::json(EMBEDDED_DEFAULT, Some(Path::new("config/policy.json")))?;
        for text in overrides {
            merge(&mut base, parse::json(text, None)?);
        }
        parse::policy(&base).map_err(|(path, reason)| PolicyError::Invalid { files: Vec::new(), path, reason })
    }

    /// `config/policy.json`, compiled in. A test keeps it valid.
    pub fn embedded_default() -> Policy {
        Policy::from_json(EMBEDDED_DEFAULT).expect("config/policy.json is valid (checked by a test)")
    }

    /// All heaps, sorted by name.
    pub fn heaps(&self) -> &[HeapPolicy] {
        &self.heaps
    }

    pub fn heap(&self, name: &str) -> Option<&HeapPolicy> {
        self.heaps.iter().find(|h| h.name == name)
    }

    /// The heaps the ledger can declare from the policy alone, with their enforce flag. Heaps
    /// whose region is a pattern (`drm/*/vram*`) are left out: autoconfig declares them once it
    /// has resolved the pattern on the device.
    pub fn heap_specs(&self) -> Vec<(HeapSpec, bool)> {
        self.heaps
            .iter()
            .filter(|h| !h.region_is_pattern())
            .map(|h| {
                (HeapSpec { name: h.name.clone(), class: h.class, region: h.region.clone() }, h.mode == Mode::Enforce)
            })
            .collect()
    }

    pub fn is_trusted_uid(&self, uid: u32) -> bool {
        self.trusted_uids.iter().any(|r| r.contains(uid))
    }

    /// A trusted entry with colons (`u:r:surfaceflinger:s0`) must equal the whole context; one
    /// without (`surfaceflinger`) matches the context's type, whatever its user, role and level.
    pub fn is_trusted_context(&self, context: &str) -> bool {
        let context = context.trim_end_matches('\0');
        let domain = context.split(':').nth(2);
        self.trusted_contexts.iter().any(|t| if t.contains(':') { t == context } else { Some(t.as_str()) == domain })
    }

    /// The first matching rule's class, or the default class. Rules see the app id
    /// (`uid % 100000`), so a secondary user's processes classify like the primary user's;
    /// `oom_score_adj` is the lowest among the owner's processes (see [`OwnerRule`]).
    pub fn owner_class(&self, uid: u32, cgroup: &str, oom_score_adj: Option<i32>) -> OwnerClass {
        let app_id = uid % AID_USER_OFFSET;
        self.owner_rules
            .iter()
            .find(|r| r.matches(app_id, cgroup, oom_score_adj))
            .map(|r| r.class)
            .unwrap_or(self.default_owner_class)
    }

    pub fn owner_rules(&self) -> &[OwnerRule] {
        &self.owner_rules
    }

    /// dmem limits for an owner class in a region class (the `default` entry when the policy
    /// does not list the region class).
    pub fn dmem_limits(&self, region: RegionClass, owner: OwnerClass) -> DmemLimits {
        self.dmem_limits.get(&region).unwrap_or(&self.default_dmem_limits)[owner.index()]
    }

    pub fn memcg_limits(&self, owner: OwnerClass) -> MemcgLimits {
        self.memcg_limits[owner.index()]
    }
}

/// Matches a cgroup path against a pattern: `*` matches within one path component, `**` any
/// number of characters including `/`; everything else literally. The whole path must match.
/// A table over (pattern position, path position), so a pattern with many `**` costs
/// pattern × path steps rather than backtracking exponentially.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let w = t.len() + 1;
    // m[i * w + j]: does p[i..] match t[j..]?
    let mut m = vec![false; (p.len() + 1) * w];
    m[p.len() * w + t.len()] = true;
    for i in (0..p.len()).rev() {
        for j in (0..=t.len()).rev() {
            let more = j < t.len();
            m[i * w + j] = match (p[i], p.get(i + 1)) {
                (b'*', Some(b'*')) => m[(i + 2) * w + j] || (more && m[i * w + j + 1]),
                (b'*', _) => m[(i + 1) * w + j] || (more && t[j] != b'/' && m[i * w + j + 1]),
                (c, _) => more && t[j] == c && m[(i + 1) * w + j + 1],
            };
        }
    }
    m[0]
}

#[cfg(test)]
mod tests;
