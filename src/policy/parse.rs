//! From JSON to a validated [`Policy`]: a walk over `serde_json::Value` that knows where it is,
//! so every rejection names the JSON path of the value and the reason.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};

use super::{
    parse_amount, Amount, DmemLimits, HeapPolicy, MemcgLimits, Mode, OwnerClass, OwnerRule, Policy, PolicyError,
    RegionClass, UidRange,
};
use crate::ledger::HeapClass;

/// A rejection: JSON path and reason.
pub(super) type Invalid = (String, String);
type Result<T> = std::result::Result<T, Invalid>;

/// The only schema version so far.
const VERSION: u64 = 1;

pub(super) fn json(text: &str, file: Option<&Path>) -> std::result::Result<Value, PolicyError> {
    serde_json::from_str(text).map_err(|e| PolicyError::Syntax {
        file: file.map(Path::to_path_buf),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })
}

/// Merges an override document into a base, the way vendor and ODM policy files layer:
/// - objects merge key by key, recursively; a key set to `null` removes it from the base;
/// - arrays of objects that all have a `"name"` merge by name: an entry replaces the base entry
///   of the same name in place, new names are appended in order (like task_profiles.json);
/// - anything else (numbers, strings, other arrays) is replaced by the override.
pub fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(&k);
                } else if let Some(slot) = b.get_mut(&k) {
                    merge(slot, v);
                } else {
                    b.insert(k, v);
                }
            }
        }
        (Value::Array(b), Value::Array(o)) if named(b) && named(&o) => {
            for item in o {
                let name = item["name"].clone();
                match b.iter_mut().find(|x| x["name"] == name) {
                    Some(slot) => *slot = item,
                    None => b.push(item),
                }
            }
        }
        (slot, over) => *slot = over,
    }
}

fn named(items: &[Value]) -> bool {
    items.iter().all(|x| x.get("name").is_some_and(Value::is_string))
}

/// A JSON path under construction: `heaps.camera.region`, `owner_classes.rules[2].uids[0]`.
#[derive(Clone)]
struct At(String);

impl At {
    fn key(&self, k: &str) -> At {
        let plain = !k.is_empty() && k.bytes().all(|c| c.is_ascii_alphanumeric() || b"_-,".contains(&c));
        match (self.0.is_empty(), plain) {
            (true, true) => At(k.to_string()),
            (false, true) => At(format!("{}.{k}", self.0)),
            (_, false) => At(format!("{}[{k:?}]", self.0)),
        }
    }

    fn index(&self, i: usize) -> At {
        At(format!("{}[{i}]", self.0))
    }

    fn fail<T>(&self, reason: impl Into<String>) -> Result<T> {
        Err((if self.0.is_empty() { "(top level)".to_string() } else { self.0.clone() }, reason.into()))
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An object whose keys must be among `allowed`. Keys starting with `_` are comments.
fn object<'a>(at: &At, v: &'a Value, allowed: &[&str]) -> Result<Vec<(&'a str, &'a Value)>> {
    let Value::Object(map) = v else {
        return at.fail(format!("expected an object, found {}", kind(v)));
    };
    entries(at, map, allowed)
}

fn entries<'a>(at: &At, map: &'a Map<String, Value>, allowed: &[&str]) -> Result<Vec<(&'a str, &'a Value)>> {
    let mut out = Vec::new();
    for (k, v) in map {
        if k.starts_with('_') {
            continue;
        }
        if !allowed.is_empty() && !allowed.contains(&k.as_str()) {
            return at.key(k).fail(format!("unknown key; expected one of {}", allowed.join(", ")));
        }
        out.push((k.as_str(), v));
    }
    Ok(out)
}

fn string<'a>(at: &At, v: &'a Value) -> Result<&'a str> {
    v.as_str().map_or_else(|| at.fail(format!("expected a string, found {}", kind(v))), Ok)
}

fn boolean(at: &At, v: &Value) -> Result<bool> {
    v.as_bool().map_or_else(|| at.fail(format!("expected true or false, found {}", kind(v))), Ok)
}

fn array<'a>(at: &At, v: &'a Value) -> Result<&'a [Value]> {
    v.as_array().map_or_else(|| at.fail(format!("expected an array, found {}", kind(v))), |a| Ok(a.as_slice()))
}

fn one_of<T: Copy>(at: &At, v: &Value, what: &str, options: &[(&str, T)]) -> Result<T> {
    let s = string(at, v)?;
    match options.iter().find(|(n, _)| *n == s) {
        Some((_, t)) => Ok(*t),
        None => {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            at.fail(format!("{s:?} is not a {what}; expected one of {}", names.join(", ")))
        }
    }
}

const HEAP_CLASSES: [(&str, HeapClass); 4] = [
    ("system", HeapClass::System),
    ("cma", HeapClass::Cma),
    ("carveout", HeapClass::Carveout),
    ("vram", HeapClass::Vram),
];
const MODES: [(&str, Mode); 2] = [("enforce", Mode::Enforce), ("observe", Mode::Observe)];

fn region_classes() -> Vec<(&'static str, RegionClass)> {
    RegionClass::ALL.iter().map(|c| (c.name(), *c)).collect()
}

fn owner_classes() -> Vec<(&'static str, OwnerClass)> {
    OwnerClass::ALL.iter().map(|c| (c.name(), *c)).collect()
}

/// A size or share: a JSON number is bytes; a string is `max`, memparse bytes or a percentage.
fn amount(at: &At, v: &Value) -> Result<Amount> {
    match v {
        Value::Number(n) => match n.as_u64() {
            Some(b) => Ok(Amount::Bytes(b)),
            None => at.fail(format!("{n} is not a byte count (a whole number >= 0)")),
        },
        Value::String(s) => parse_amount(s).or_else(|e| at.fail(e.to_string())),
        other => at.fail(format!("expected a size or percentage string, found {}", kind(other))),
    }
}

fn uid(at: &At, s: &str) -> Result<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return at.fail(format!("{s:?} is not a uid"));
    }
    s.parse().or_else(|_| at.fail(format!("uid {s} out of range")))
}

/// `1000`, `"1000"` or `"10000-19999"`.
fn uid_range(at: &At, v: &Value) -> Result<UidRange> {
    match v {
        Value::Number(n) => match n.as_u64().and_then(|u| u32::try_from(u).ok()) {
            Some(u) => Ok(UidRange { first: u, last: u }),
            None => at.fail(format!("{n} is not a uid")),
        },
        Value::String(s) => {
            let (first, last) = match s.split_once('-') {
                Some((a, b)) => (uid(at, a)?, uid(at, b)?),
                None => {
                    let u = uid(at, s)?;
                    (u, u)
                }
            };
            if first > last {
                return at.fail(format!("range {s:?} is empty (first uid above last)"));
            }
            Ok(UidRange { first, last })
        }
        other => at.fail(format!("expected a uid or a \"first-last\" range, found {}", kind(other))),
    }
}

fn uid_ranges(at: &At, v: &Value) -> Result<Vec<UidRange>> {
    array(at, v)?.iter().enumerate().map(|(i, x)| uid_range(&at.index(i), x)).collect()
}

/// Owner rules compare app ids (`uid % 100000`, see [`super::Policy::owner_class`]): a uid of
/// 100000 or more could never match, so it is refused where it is written.
fn app_id_ranges(at: &At, v: &Value) -> Result<Vec<UidRange>> {
    let ranges = uid_ranges(at, v)?;
    if let Some((i, r)) = ranges.iter().enumerate().find(|(_, r)| r.last >= super::AID_USER_OFFSET) {
        return at.index(i).fail(format!(
            "uid {} can never match: owner rules compare app ids (uid % {}), which are below {}",
            r.last,
            super::AID_USER_OFFSET,
            super::AID_USER_OFFSET
        ));
    }
    Ok(ranges)
}

/// The kernel's range for `/proc/<pid>/oom_score_adj`.
fn oom_score_adj(at: &At, v: &Value) -> Result<i32> {
    match v.as_i64() {
        Some(n) if (-1000..=1000).contains(&n) => Ok(n as i32),
        _ => at.fail(format!("{v} is not an oom_score_adj (a whole number from -1000 to 1000)")),
    }
}

fn token(at: &At, v: &Value, what: &str) -> Result<String> {
    let s = string(at, v)?;
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return at.fail(format!("{s:?} is not a valid {what} (empty, or contains whitespace)"));
    }
    Ok(s.to_string())
}

pub(super) fn policy(root: &Value) -> Result<Policy> {
    let at = At(String::new());
    let fields = object(&at, root, &["version", "heaps", "trusted", "owner_classes", "limits", "trace"])?;
    let get = |k: &str| fields.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);

    match get("version") {
        None => return at.key("version").fail("missing; this service reads version 1"),
        Some(v) if v.as_u64() == Some(VERSION) => {}
        Some(v) => {
            return at.key("version").fail(format!("unsupported version {v}; this service reads version {VERSION}"))
        }
    }

    let heaps = match get("heaps") {
        Some(v) => heaps(&at.key("heaps"), v)?,
        None => return at.key("heaps").fail("missing; a policy must declare at least one heap"),
    };

    let (mut trusted_uids, mut trusted_contexts) = (Vec::new(), Vec::new());
    if let Some(v) = get("trusted") {
        let at = at.key("trusted");
        for (k, v) in object(&at, v, &["uids", "contexts"])? {
            let at = at.key(k);
            match k {
                "uids" => trusted_uids = uid_ranges(&at, v)?,
                _ => {
                    for (i, c) in array(&at, v)?.iter().enumerate() {
                        trusted_contexts.push(token(&at.index(i), c, "SELinux context or domain")?);
                    }
                }
            }
        }
    }

    let (mut owner_rules, mut default_owner_class) = (Vec::new(), OwnerClass::App);
    if let Some(v) = get("owner_classes") {
        let at = at.key("owner_classes");
        for (k, v) in object(&at, v, &["default", "rules"])? {
            match k {
                "default" => default_owner_class = one_of(&at.key(k), v, "owner class", &owner_classes())?,
                _ => owner_rules = rules(&at.key(k), v)?,
            }
        }
    }

    let mut limits = Limits::default();
    if let Some(v) = get("limits") {
        limits = self::limits(&at.key("limits"), v)?;
    }

    let mut trace_counters = false;
    if let Some(v) = get("trace") {
        let at = at.key("trace");
        for (k, v) in object(&at, v, &["counters"])? {
            trace_counters = boolean(&at.key(k), v)?;
        }
    }

    Ok(Policy {
        heaps,
        trusted_uids,
        trace_counters,
        trusted_contexts,
        owner_rules,
        default_owner_class,
        dmem_limits: limits.dmem,
        default_dmem_limits: limits.default_dmem,
        memcg_limits: limits.memcg,
    })
}

fn heaps(at: &At, v: &Value) -> Result<Vec<HeapPolicy>> {
    let list = object(at, v, &[])?;
    if list.is_empty() {
        return at.fail("a policy must declare at least one heap");
    }
    let mut out: Vec<HeapPolicy> = Vec::new();
    // Region → (class, region class, first heap naming it): heaps sharing a region must agree.
    let mut regions: BTreeMap<String, (HeapClass, RegionClass, String)> = BTreeMap::new();
    for (name, v) in list {
        let at = at.key(name);
        if name.is_empty() || name.contains('/') || name.chars().any(char::is_whitespace) {
            return at.fail("a heap name must be non-empty, without '/' or whitespace");
        }
        let fields = object(&at, v, &["class", "region", "region_class", "mode"])?;
        let get = |k: &str| fields.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        let class = match get("class") {
            Some(c) => one_of(&at.key("class"), c, "heap class", &HEAP_CLASSES)?,
            None => return at.key("class").fail("missing; one of system, cma, carveout, vram"),
        };
        let region = get("region").map(|r| token(&at.key("region"), r, "region name")).transpose()?;
        match (&region, class.needs_region()) {
            (None, true) => return at.key("region").fail(format!("a {} heap needs a region", class.name())),
            (Some(_), false) => return at.key("region").fail("a system heap charges memcg only and has no region"),
            _ => {}
        }
        let region_class = match get("region_class") {
            Some(c) => one_of(&at.key("region_class"), c, "region class", &region_classes())?,
            None => RegionClass::default_for(class),
        };
        let mode = match get("mode") {
            Some(m) => one_of(&at.key("mode"), m, "mode", &MODES)?,
            None => Mode::Enforce,
        };
        if let Some(r) = &region {
            if r == crate::ledger::MEMCG_POOL {
                return at.key("region").fail("memcg is the memory controller's pool, not a dmem region");
            }
            if r.contains("**") {
                return at
                    .key("region")
                    .fail("'**' is not allowed in a region pattern; '*' matches within one component");
            }
            match regions.get(r) {
                Some((c, _, other)) if *c != class => {
                    return at.key("class").fail(format!(
                        "region {r} is fed by {} heap {other}; a region holds one kind of memory",
                        c.name()
                    ))
                }
                Some((_, rc, other)) if *rc != region_class => {
                    return at
                        .key("region_class")
                        .fail(format!("region {r} is {rc} in heaps.{other}; heaps sharing a region must agree"))
                }
                Some(_) => {}
                None => {
                    regions.insert(r.clone(), (class, region_class, name.to_string()));
                }
            }
        }
        out.push(HeapPolicy { name: name.to_string(), class, region, region_class, mode });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn rules(at: &At, v: &Value) -> Result<Vec<OwnerRule>> {
    let mut out: Vec<OwnerRule> = Vec::new();
    for (i, r) in array(at, v)?.iter().enumerate() {
        let at = at.index(i);
        let fields = object(&at, r, &["name", "class", "uids", "cgroups", "min_oom_score_adj"])?;
        let get = |k: &str| fields.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        let name = match get("name") {
            Some(n) => token(&at.key("name"), n, "rule name")?,
            None => return at.key("name").fail("missing; rules are merged by name"),
        };
        if out.iter().any(|o| o.name == name) {
            return at.key("name").fail(format!("duplicate rule name {name:?}"));
        }
        let class = match get("class") {
            Some(c) => one_of(&at.key("class"), c, "owner class", &owner_classes())?,
            None => return at.key("class").fail("missing; one of app, system, background"),
        };
        let min_oom_score_adj =
            get("min_oom_score_adj").map(|v| oom_score_adj(&at.key("min_oom_score_adj"), v)).transpose()?;
        let uids = get("uids").map(|u| app_id_ranges(&at.key("uids"), u)).transpose()?.unwrap_or_default();
        let mut cgroups = Vec::new();
        if let Some(c) = get("cgroups") {
            let at = at.key("cgroups");
            for (j, p) in array(&at, c)?.iter().enumerate() {
                let p = token(&at.index(j), p, "cgroup pattern")?;
                if !p.starts_with('/') && !p.starts_with('*') {
                    return at.index(j).fail(format!(
                        "{p:?}: a cgroup pattern matches absolute paths and must start with '/' or '*'"
                    ));
                }
                cgroups.push(p);
            }
        }
        if uids.is_empty() && cgroups.is_empty() && min_oom_score_adj.is_none() {
            return at.fail(
                "a rule needs uids, cgroups or min_oom_score_adj; use owner_classes.default for everything else",
            );
        }
        out.push(OwnerRule { name, class, uids, cgroups, min_oom_score_adj });
    }
    Ok(out)
}

#[derive(Default)]
struct Limits {
    dmem: BTreeMap<RegionClass, [DmemLimits; 3]>,
    default_dmem: [DmemLimits; 3],
    memcg: [MemcgLimits; 3],
}

fn limits(at: &At, v: &Value) -> Result<Limits> {
    let mut allowed: Vec<&str> = RegionClass::ALL.iter().map(|c| c.name()).collect();
    allowed.extend(["default", "memcg"]);
    let mut out = Limits::default();
    // An owner class a region class leaves out falls back to `default` for that owner class.
    let mut listed: BTreeMap<RegionClass, [Option<DmemLimits>; 3]> = BTreeMap::new();
    for (k, v) in object(at, v, &allowed)? {
        let at = at.key(k);
        let owners = object(&at, v, &["app", "system", "background"])?;
        for (owner, v) in owners {
            let at = at.key(owner);
            let idx = OwnerClass::from_name(owner).expect("allowed above").index();
            if k == "memcg" {
                out.memcg[idx] = memcg(&at, v)?;
                continue;
            }
            let limits = dmem(&at, v)?;
            match RegionClass::from_name(k) {
                Some(rc) => listed.entry(rc).or_default()[idx] = Some(limits),
                None => out.default_dmem[idx] = limits,
            }
        }
    }
    for (rc, owners) in listed {
        let mut full = out.default_dmem;
        for (slot, given) in full.iter_mut().zip(owners) {
            if let Some(l) = given {
                *slot = l;
            }
        }
        out.dmem.insert(rc, full);
    }
    Ok(out)
}

fn dmem(at: &At, v: &Value) -> Result<DmemLimits> {
    let mut l = DmemLimits::default();
    for (k, v) in object(at, v, &["max", "low", "min", "pin_max"])? {
        let a = amount(&at.key(k), v)?;
        match k {
            "max" => l.max = a,
            "low" => l.low = a,
            "min" => l.min = a,
            _ => l.pin_max = a,
        }
    }
    protection_order(at, l.min, l.low, l.max)?;
    Ok(l)
}

fn memcg(at: &At, v: &Value) -> Result<MemcgLimits> {
    let mut l = MemcgLimits::default();
    for (k, v) in object(at, v, &["max", "low", "min", "dmabuf_max"])? {
        let a = amount(&at.key(k), v)?;
        match k {
            "max" => l.max = a,
            "low" => l.low = a,
            "min" => l.min = a,
            _ => l.dmabuf_max = a,
        }
    }
    protection_order(at, l.min, l.low, l.max)?;
    Ok(l)
}

/// min <= max and low <= max where both sides are of the same kind (bytes with bytes, shares with
/// shares); mixed kinds are checked once capacities are known.
fn protection_order(at: &At, min: Amount, low: Amount, max: Amount) -> Result<()> {
    let le = |a: Amount, b: Amount| match (a, b) {
        (_, Amount::Max) => true,
        (Amount::Max, _) => false,
        (Amount::Bytes(x), Amount::Bytes(y)) => x <= y,
        (Amount::Ppm(x), Amount::Ppm(y)) => x <= y,
        _ => true,
    };
    if !le(low, max) {
        return at.key("low").fail(format!("low {low} is above max {max}"));
    }
    if !le(min, max) {
        return at.key("min").fail(format!("min {min} is above max {max}"));
    }
    Ok(())
}
