//! Hostile input to the policy: plausible-but-wrong documents and random bytes into
//! `Policy::from_json`, refused with a JSON path; the glob matcher in bounded time.

mod hostile;

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use serde_json::Value;

use chargetransfer::ledger::Ledger;
use chargetransfer::policy::{self, OwnerClass, Policy, PolicyError, RegionClass};

use hostile::*;

/// The path the policy parser gives a key under `parent` (mirrors its formatting).
fn key_path(parent: &str, k: &str) -> String {
    let plain = is_plain_key(k);
    match (parent.is_empty(), plain) {
        (true, true) => k.to_string(),
        (false, true) => format!("{parent}.{k}"),
        (_, false) => format!("{parent}[{k:?}]"),
    }
}

fn is_plain_key(k: &str) -> bool {
    !k.is_empty() && k.bytes().all(|c| c.is_ascii_alphanumeric() || b"_-,".contains(&c))
}

/// Every JSON path in a document.
fn json_paths(v: &Value, at: String, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let p = key_path(&at, k);
                out.insert(p.clone());
                json_paths(child, p, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let p = format!("{at}[{i}]");
                out.insert(p.clone());
                json_paths(child, p, out);
            }
        }
        _ => {}
    }
}

/// Does `path` name a value of `doc`, or a missing key directly under one?
fn names_a_location(doc: &Value, path: &str) -> bool {
    if path == "(top level)" {
        return true;
    }
    let mut paths = BTreeSet::new();
    json_paths(doc, String::new(), &mut paths);
    if paths.contains(path) {
        return true;
    }
    std::iter::once("").chain(paths.iter().map(String::as_str)).any(|parent| {
        path.strip_prefix(parent).is_some_and(|rest| {
            let key = if parent.is_empty() { Some(rest) } else { rest.strip_prefix('.') };
            key.is_some_and(is_plain_key)
        })
    })
}

#[derive(Clone, Debug)]
enum JsonEdit {
    Replace(Index, Value),
    Remove(Index),
    AddKey(Index, String, Value),
    Wrap(Index),
}

fn json_leaf() -> impl Strategy<Value = Value> {
    let number = prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::sample::select(vec![0i64, 1, -1, 2, 1000, 10000, 4_294_967_295, 4_294_967_296]).prop_map(Value::from),
        prop::sample::select(vec![0.5f64, -0.0, 1e308, 1.5]).prop_map(Value::from),
    ];
    let word = prop::sample::select(vec![
        "system",
        "cma",
        "carveout",
        "vram",
        "dram",
        "enforce",
        "observe",
        "app",
        "background",
        "display",
        "camera",
        "codec",
        "secure",
        "render",
        "cma/display",
        "memcg",
        "drm/*/vram*",
        "drm/**",
        "/uid_*/**",
        "/**/**/**/**/**/**/**/**/x",
        "0-9999",
        "9999-0",
        "10000-",
        "-5",
        "a-b",
        "25%",
        "50%",
        "12.5%",
        "64M",
        "1G",
        "16E",
        "max",
    ])
    .prop_map(String::from);
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        3 => number,
        4 => word.prop_map(Value::String),
        3 => hostile_string().prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![3 => prop::sample::select(vec!["class", "region", "mode", "uids", "name", "max", "app", "version", "heaps", "_c"]).prop_map(String::from), 1 => hostile_string()],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_edit() -> impl Strategy<Value = JsonEdit> {
    let key = prop_oneof![
        3 => prop::sample::select(vec![
            "version", "heaps", "trusted", "owner_classes", "limits", "class", "region", "region_class", "mode", "uids",
            "contexts", "default", "rules", "name", "cgroups", "max", "low", "min", "pin_max", "dmabuf_max", "memcg", "app",
            "system", "background", "display", "bogus", "_comment",
        ])
        .prop_map(String::from),
        1 => hostile_string(),
    ];
    prop_oneof![
        4 => (any::<Index>(), json_value()).prop_map(|(i, v)| JsonEdit::Replace(i, v)),
        2 => any::<Index>().prop_map(JsonEdit::Remove),
        2 => (any::<Index>(), key, json_value()).prop_map(|(i, k, v)| JsonEdit::AddKey(i, k, v)),
        1 => any::<Index>().prop_map(JsonEdit::Wrap),
    ]
}

/// Pointers (RFC 6901) to every value of a document, root first.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    let esc = |k: &str| k.replace('~', "~0").replace('/', "~1");
    match v {
        Value::Object(map) => map.iter().for_each(|(k, c)| pointers(c, format!("{at}/{}", esc(k)), out)),
        Value::Array(items) => items.iter().enumerate().for_each(|(i, c)| pointers(c, format!("{at}/{i}"), out)),
        _ => {}
    }
}

fn apply_edit(doc: &mut Value, edit: &JsonEdit) {
    let mut all = Vec::new();
    pointers(doc, String::new(), &mut all);
    match edit {
        JsonEdit::Replace(i, v) => *doc.pointer_mut(i.get(&all).as_str()).unwrap() = v.clone(),
        JsonEdit::Remove(i) => {
            let p = i.get(&all).as_str();
            if let Some((parent, last)) = p.rsplit_once('/') {
                let last = last.replace("~1", "/").replace("~0", "~");
                match doc.pointer_mut(parent).unwrap() {
                    Value::Object(m) => {
                        m.remove(&last);
                    }
                    Value::Array(a) => {
                        a.remove(last.parse::<usize>().unwrap());
                    }
                    _ => {}
                }
            }
        }
        JsonEdit::AddKey(i, k, v) => match doc.pointer_mut(i.get(&all).as_str()).unwrap() {
            Value::Object(m) => {
                m.insert(k.clone(), v.clone());
            }
            Value::Array(a) => a.push(v.clone()),
            other => *other = v.clone(),
        },
        JsonEdit::Wrap(i) => {
            let slot = doc.pointer_mut(i.get(&all).as_str()).unwrap();
            *slot = Value::Array(vec![slot.take()]);
        }
    }
}

#[derive(Clone, Debug)]
enum PolicyInput {
    /// The embedded default with a few edits.
    Edited(Vec<JsonEdit>),
    /// A minimal document with edits (fewer keys, so edits hit deeper rules more often).
    EditedMinimal(Vec<JsonEdit>),
    /// An override layered on the embedded default (the vendor/ODM path).
    Override(Value),
    /// An override file, possibly not JSON, loaded after the shipped base file as the service
    /// does (`--policy base --policy odm`): errors must name the file as well.
    OverrideFile(String),
    /// Random JSON from scratch.
    Random(Value),
    /// Not necessarily JSON at all.
    Text(String),
    Bytes(Vec<u8>),
}

fn policy_input() -> impl Strategy<Value = PolicyInput> {
    let soup = prop::collection::vec(
        prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "\"",
            "1",
            "-",
            "e",
            ".",
            "true",
            "null",
            " ",
            "\n",
            "\"heaps\"",
            "\"version\"",
            "\\u0000",
            "\\ud800",
        ]),
        0..64,
    )
    .prop_map(|t| t.concat());
    prop_oneof![
        6 => prop::collection::vec(json_edit(), 1..4).prop_map(PolicyInput::Edited),
        3 => prop::collection::vec(json_edit(), 1..4).prop_map(PolicyInput::EditedMinimal),
        2 => json_value().prop_map(PolicyInput::Override),
        1 => prop_oneof![json_value().prop_map(|v| v.to_string()), any::<String>()].prop_map(PolicyInput::OverrideFile),
        1 => json_value().prop_map(PolicyInput::Random),
        1 => prop_oneof![soup, any::<String>()].prop_map(PolicyInput::Text),
        1 => prop::collection::vec(any::<u8>(), 0..256).prop_map(PolicyInput::Bytes),
    ]
}

const MINIMAL_POLICY: &str = r#"{"version": 1, "heaps": {"system": {"class": "system"}, "c": {"class": "cma", "region": "cma/c"}},
  "trusted": {"uids": ["1000-1003"], "contexts": ["surfaceflinger"]},
  "owner_classes": {"default": "app", "rules": [{"name": "r", "class": "system", "uids": [1000], "cgroups": ["/system/*"]}]},
  "limits": {"default": {"app": {"max": "50%"}}, "memcg": {"app": {"max": "1G", "low": "0", "min": "0", "dmabuf_max": "25%"}}}}"#;

/// Uses an accepted policy the way the service does; none of it may panic, and its heaps must
/// declare into a ledger (a policy the service cannot start with must be refused by the parser,
/// with a JSON path).
fn exercise(p: &Policy) -> Result<(), String> {
    let mut ledger = Ledger::new();
    for (spec, enforce) in p.heap_specs() {
        if let Some(region) = &spec.region {
            if ledger.pool_id(region).is_none() {
                ledger.add_region(region, 0).map_err(|e| format!("accepted, but region {region:?}: {e}"))?;
            }
        }
        ledger.add_heap(spec.clone(), enforce).map_err(|e| format!("accepted, but heap {:?}: {e}", spec.name))?;
    }
    for h in p.heaps() {
        let _ = (h.region_is_pattern(), p.heap(&h.name));
    }
    for uid in [0, 1000, 10001, 99_999, 1_010_001, u32::MAX] {
        let _ = p.is_trusted_uid(uid);
        for cg in ["/", "/uid_10001/pid_5", "/background/uid_1/pid_2/x/y/z", "/system/surfaceflinger"] {
            let _ = p.owner_class(uid, cg, None);
        }
    }
    for ctx in ["u:r:surfaceflinger:s0", "", ":::", "surfaceflinger\0"] {
        let _ = p.is_trusted_context(ctx);
    }
    for rc in RegionClass::ALL {
        for oc in OwnerClass::ALL {
            let l = p.dmem_limits(rc, oc);
            for a in [l.max, l.low, l.min, l.pin_max] {
                for cap in [None, Some(0), Some(4096), Some(u64::MAX)] {
                    let _ = a.resolve(cap);
                }
            }
        }
    }
    for oc in OwnerClass::ALL {
        let l = p.memcg_limits(oc);
        let _ = (l.max.resolve(Some(u64::MAX)), l.dmabuf_max.resolve(Some(1 << 34)));
    }
    Ok(())
}

#[derive(Default)]
struct PolicyTally {
    accepted: usize,
    syntax: usize,
    invalid: usize,
}

fn check_policy_result(
    text: &str,
    doc: Option<&Value>,
    result: Result<Policy, PolicyError>,
    tally: &Mutex<PolicyTally>,
) -> Result<(), TestCaseError> {
    match result {
        Ok(p) => {
            exercise(&p).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            tally.lock().unwrap().accepted += 1;
        }
        Err(PolicyError::Syntax { line, column, message, .. }) => {
            let lines = text.split('\n').count();
            prop_assert!(
                line >= 1 && line <= lines + 1,
                "syntax error at line {line} of a {lines}-line text: {message}"
            );
            prop_assert!(!message.is_empty());
            let _ = column;
            tally.lock().unwrap().syntax += 1;
        }
        Err(PolicyError::Invalid { path, reason, .. }) => {
            prop_assert!(!reason.is_empty(), "no reason at {path}");
            let doc =
                doc.ok_or_else(|| TestCaseError::fail(format!("{path}: {reason} for a document that is not JSON")))?;
            prop_assert!(names_a_location(doc, &path), "error path {path:?} ({reason}) names nothing in {doc}");
            tally.lock().unwrap().invalid += 1;
        }
        Err(e @ PolicyError::Io { .. }) => return Err(TestCaseError::fail(format!("I/O error without a file: {e}"))),
    }
    Ok(())
}

#[test]
fn policy_random_documents_are_refused_with_a_json_path() {
    let started = Instant::now();
    let cases = 500 * scale();
    let tally = Mutex::new(PolicyTally::default());
    let default: Value = serde_json::from_str(policy::EMBEDDED_DEFAULT).unwrap();
    let minimal: Value = serde_json::from_str(MINIMAL_POLICY).unwrap();
    Policy::from_json(MINIMAL_POLICY).expect("the minimal seed document is valid");
    run(&mut runner(2, cases, true), policy_input(), |input| match &input {
        PolicyInput::Edited(edits) | PolicyInput::EditedMinimal(edits) => {
            let mut doc = if matches!(input, PolicyInput::Edited(_)) { default.clone() } else { minimal.clone() };
            edits.iter().for_each(|e| apply_edit(&mut doc, e));
            let text = serde_json::to_string_pretty(&doc).unwrap();
            check_policy_result(&text, Some(&doc), Policy::from_json(&text), &tally)
        }
        PolicyInput::Override(over) => {
            let text = over.to_string();
            let mut merged = default.clone();
            policy::merge(&mut merged, over.clone());
            check_policy_result(&text, Some(&merged), Policy::default_with(&[&text]), &tally)
        }
        PolicyInput::OverrideFile(text) => {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("odm-policy.json");
            fs::write(&file, text).unwrap();
            let base = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/config/policy.json"));
            let result = Policy::load(&[base.clone(), file.clone()]);
            match &result {
                Err(PolicyError::Syntax { file: f, .. }) => {
                    prop_assert_eq!(f.as_ref(), Some(&file), "syntax error names the file")
                }
                Err(PolicyError::Invalid { files, .. }) => {
                    prop_assert_eq!(files, &vec![base, file.clone()], "invalid names the files")
                }
                _ => {}
            }
            let doc = serde_json::from_str::<Value>(text).ok().map(|over| {
                let mut merged = default.clone();
                policy::merge(&mut merged, over);
                merged
            });
            check_policy_result(text, doc.as_ref(), result, &tally)
        }
        PolicyInput::Random(doc) => {
            let text = doc.to_string();
            check_policy_result(&text, Some(doc), Policy::from_json(&text), &tally)
        }
        PolicyInput::Text(text) => {
            let doc: Option<Value> = serde_json::from_str(text).ok();
            check_policy_result(text, doc.as_ref(), Policy::from_json(text), &tally)
        }
        PolicyInput::Bytes(bytes) => {
            let text = String::from_utf8_lossy(bytes).into_owned();
            let doc: Option<Value> = serde_json::from_str(&text).ok();
            check_policy_result(&text, doc.as_ref(), Policy::from_json(&text), &tally)
        }
    });
    let t = tally.into_inner().unwrap();
    finished(
        "policy",
        format!("{cases}"),
        format!(
            "{cases} documents: {} accepted, {} syntax errors (line/column), {} invalid (JSON path checked)",
            t.accepted, t.syntax, t.invalid
        ),
        started,
    );
}

/// Owner-class patterns come from vendor files and are matched against every process's cgroup:
/// a pattern with many `**` must not take exponential time.
#[test]
fn policy_glob_with_many_double_stars_matches_in_bounded_time() {
    let pattern = "/**a**a**a**a**a**a**a**a**a**a**a**a**b";
    let path = format!("/{}", "a/".repeat(40));
    let started = Instant::now();
    assert!(!policy::glob_match(pattern, &path));
    assert!(policy::glob_match("/**/x", "/a/b/c/x"));
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
}

/// The table-driven matcher agrees with the plain backtracking definition on small inputs.
#[test]
fn policy_glob_agrees_with_the_backtracking_definition() {
    fn reference(p: &[u8], t: &[u8]) -> bool {
        match p {
            [] => t.is_empty(),
            [b'*', b'*', rest @ ..] => (0..=t.len()).any(|i| reference(rest, &t[i..])),
            [b'*', rest @ ..] => {
                let stop = t.iter().position(|&c| c == b'/').unwrap_or(t.len());
                (0..=stop).any(|i| reference(rest, &t[i..]))
            }
            [c, rest @ ..] => t.first() == Some(c) && reference(rest, &t[1..]),
        }
    }
    let mut r = runner(5, 2000 * scale(), true);
    run(&mut r, ("[/ab*]{0,8}", "[/ab]{0,10}"), |(p, t)| {
        prop_assert_eq!(policy::glob_match(&p, &t), reference(p.as_bytes(), t.as_bytes()), "{:?} vs {:?}", p, t);
        Ok(())
    });
}

/// A heap whose region is `memcg` (the memory controller, not a dmem region) is a policy the
/// service could not start with: the parser must refuse it at its JSON path.
#[test]
fn policy_refuses_memcg_as_a_heap_region() {
    let text = r#"{"version": 1, "heaps": {"c": {"class": "cma", "region": "memcg"}}}"#;
    match Policy::from_json(text) {
        Err(PolicyError::Invalid { path, reason, .. }) => assert_eq!(path, "heaps.c.region", "{reason}"),
        other => panic!("{other:?}"),
    }
}
