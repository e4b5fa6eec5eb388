use std::io::Write;

use super::*;
use crate::ledger::UNLIMITED;

fn invalid(text: &str) -> (String, String) {
    match Policy::from_json(text) {
        Err(PolicyError::Invalid { path, reason, .. }) => (path, reason),
        Err(other) => panic!("expected a validation error, got {other}"),
        Ok(_) => panic!("accepted: {text}"),
    }
}

const MINIMAL: &str = r#"{"version": 1, "heaps": {"system": {"class": "system"}}}"#;

#[test]
fn embedded_default_is_valid_and_describes_a_phone() {
    let p = Policy::embedded_default();
    let names: Vec<&str> = p.heaps().iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["camera", "display", "gpu", "secure_video", "system", "system-uncached"]);
    let classes: Vec<HeapClass> = p.heaps().iter().map(|h| h.class).collect();
    assert!(classes.contains(&HeapClass::Carveout) && classes.contains(&HeapClass::Vram));
    assert!(!p.is_trusted_uid(1000) && p.is_trusted_uid(1003), "uid 1000 is never trusted by uid alone");
    assert!(!p.is_trusted_uid(10001));
}

#[test]
fn heap_specs_leave_out_region_patterns() {
    let specs = Policy::embedded_default().heap_specs();
    assert!(specs.iter().all(|(s, _)| s.name != "gpu"), "gpu's region is a pattern");
    let display = specs.iter().find(|(s, _)| s.name == "display").unwrap();
    assert_eq!(
        display.0,
        HeapSpec { name: "display".into(), class: HeapClass::Cma, region: Some("cma/display".into()) }
    );
    assert!(display.1, "enforce is the default mode");
}

#[test]
fn minimal_policy_has_open_limits_and_no_trust() {
    let p = Policy::from_json(MINIMAL).unwrap();
    assert_eq!(
        p.heap_specs(),
        vec![(HeapSpec { name: "system".into(), class: HeapClass::System, region: None }, true)]
    );
    assert!(!p.is_trusted_uid(1000));
    assert_eq!(p.owner_class(1000, "/uid_1000", None), OwnerClass::App);
    assert_eq!(p.dmem_limits(RegionClass::Display, OwnerClass::App), DmemLimits::default());
    assert_eq!(p.memcg_limits(OwnerClass::System).max.resolve(None), Some(UNLIMITED));
}

#[test]
fn rejections_name_the_json_path_and_reason() {
    let cases = [
        (
            r#"{"version": 1, "heaps": {"camera": {"class": "carveout"}}}"#,
            "heaps.camera.region",
            "a carveout heap needs a region",
        ),
        (
            r#"{"version": 1, "heaps": {"system": {"class": "system", "region": "x"}}}"#,
            "heaps.system.region",
            "no region",
        ),
        (r#"{"version": 1, "heaps": {"a": {"class": "dram"}}}"#, "heaps.a.class", "\"dram\" is not a heap class"),
        (r#"{"version": 1, "heaps": {"a": {"class": "system", "mdoe": "observe"}}}"#, "heaps.a.mdoe", "unknown key"),
        (r#"{"version": 1, "heaps": {"a": {"class": "system", "mode": "warn"}}}"#, "heaps.a.mode", "not a mode"),
        (r#"{"version": 2, "heaps": {}}"#, "version", "unsupported version 2"),
        (r#"{"heaps": {}}"#, "version", "missing"),
        (r#"{"version": 1, "heaps": {}}"#, "heaps", "at least one heap"),
        (
            r#"{"version": 1, "heaps": {"system": {"class": "system"}}, "limits": {"display": {"app": {"max": "12X"}}}}"#,
            "limits.display.app.max",
            "\"12X\" is not a size or percentage",
        ),
        (
            r#"{"version": 1, "heaps": {"system": {"class": "system"}}, "limits": {"display": {"app": {"max": "150%"}}}}"#,
            "limits.display.app.max",
            "at most 100%",
        ),
        (
            r#"{"version": 1, "heaps": {"system": {"class": "system"}}, "limits": {"gpu": {}}}"#,
            "limits.gpu",
            "unknown key",
        ),
        (
            r#"{"version": 1, "heaps": {"system": {"class": "system"}}, "limits": {"display": {"apps": {}}}}"#,
            "limits.display.apps",
            "unknown key",
        ),
        (
            r#"{"version": 1, "heaps": {"system": {"class": "system"}}, "limits": {"memcg": {"app": {"min": "2G", "max": "1G"}}}}"#,
            "limits.memcg.app.min",
            "above",
        ),
        (
            r#"{"version": 1, "heaps": {"system": {"class": "system"}}, "limits": {"memcg": {"app": {"max": -1}}}}"#,
            "limits.memcg.app.max",
            "not a byte count",
        ),
        (
            r#"{"version": 1, "heaps": {"system": {"class": "system"}}, "trusted": {"uids": [1000, "10x"]}}"#,
            "trusted.uids[1]",
            "not a uid",
        ),
        (
            r#"{"version": 1, "heaps": {"system": {"class": "system"}}, "trusted": {"uids": ["20-10"]}}"#,
            "trusted.uids[0]",
            "empty",
        ),
        (
            r#"{"version": 1, "heaps": {"system": {"class": "system"}}, "trusted": {"contexts": ["u:r:a b:s0"]}}"#,
            "trusted.contexts[0]",
            "whitespace",
        ),
        (
            r#"{"version": 1, "heaps": {"system": {"class": "system"}}, "owner_classes": {"rules": [{"name": "x", "class": "app"}]}}"#,
            "owner_classes.rules[0]",
            "needs uids, cgroups or min_oom_score_adj",
        ),
        (
            r#"{"version": 1, "heaps": {"system": {"class": "system"}}, "owner_classes": {"rules": [{"name": "x", "class": "system", "uids": [1000, "110000-110999"]}]}}"#,
            "owner_classes.rules[0].uids[1]",
            "uid 110999 can never match: owner rules compare app ids",
        ),
        (
            r#"{"version": 1, "heaps": {"system": {"class": "system"}}, "owner_classes": {"rules": [{"name": "x", "class": "system", "uids": [100000]}]}}"#,
            "owner_classes.rules[0].uids[0]",
            "uid 100000 can never match",
        ),
        (
            r#"{"version": 1, "heaps": {"system": {"class": "system"}}, "owner_classes": {"rules": [{"name": "x", "class": "background", "min_oom_score_adj": 1001}]}}"#,
            "owner_classes.rules[0].min_oom_score_adj",
            "not an oom_score_adj",
        ),
        (
            r#"{"version": 1, "heaps": {"system": {"class": "system"}}, "owner_classes": {"rules": [{"name": "x", "class": "app", "cgroups": ["uid_1"]}]}}"#,
            "owner_classes.rules[0].cgroups[0]",
            "must start with '/'",
        ),
        (
            r#"{"version": 1, "heaps": {"system": {"class": "system"}}, "owner_classes": {"default": "daemon"}}"#,
            "owner_classes.default",
            "not a owner class",
        ),
        (
            r#"{"version": 1, "heaps": {"a": {"class": "cma", "region": "cma/x", "region_class": "display"},
                                        "b": {"class": "cma", "region": "cma/x", "region_class": "camera"}}}"#,
            "heaps.b.region_class",
            "region cma/x is display in heaps.a",
        ),
        (
            r#"{"version": 1, "heaps": {"a": {"class": "cma", "region": "r"}, "b": {"class": "carveout", "region": "r"}}}"#,
            "heaps.b.class",
            "one kind of memory",
        ),
        (r#"{"version": 1, "heaps": {"a.b": {"class": "vram"}}}"#, "heaps[\"a.b\"].region", "needs a region"),
        (r#"[1]"#, "(top level)", "expected an object, found an array"),
    ];
    for (text, path, reason) in cases {
        let (p, r) = invalid(text);
        assert_eq!(p, path, "{text}");
        assert!(r.contains(reason), "{text}: reason {r:?} lacks {reason:?}");
    }
}

#[test]
fn display_of_a_rejection_reads_path_colon_reason() {
    let e = Policy::from_json(r#"{"version": 1, "heaps": {"camera": {"class": "carveout"}}}"#).unwrap_err();
    assert_eq!(e.to_string(), "heaps.camera.region: a carveout heap needs a region");
}

#[test]
fn syntax_errors_carry_line_and_column() {
    match Policy::from_json("{\n  \"version\": 1,\n  \"heaps\": {,}\n}") {
        Err(PolicyError::Syntax { line, column, .. }) => assert_eq!((line, column), (3, 13)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn comment_keys_are_ignored() {
    let p =
        Policy::from_json(r#"{"_comment": "hi", "version": 1, "heaps": {"system": {"class": "system", "_why": "x"}}}"#);
    assert!(p.is_ok());
}

#[test]
fn owner_rules_apply_in_order_on_app_ids_and_cgroup_patterns() {
    let p = Policy::embedded_default();
    assert_eq!(p.owner_class(1000, "/uid_1000/pid_5", None), OwnerClass::System);
    assert_eq!(p.owner_class(10001, "/uid_10001/pid_5", Some(0)), OwnerClass::App);
    assert_eq!(p.owner_class(1_010_001, "/uid_1010001", None), OwnerClass::App, "secondary user's app");
    assert_eq!(p.owner_class(1_001_000, "/uid_1001000", None), OwnerClass::System, "secondary user's system uid");
    let first_wins = Policy::from_json(
        r#"{"version": 1, "heaps": {"system": {"class": "system"}}, "owner_classes": {"default": "background", "rules": [
            {"name": "a", "class": "system", "uids": [10005]},
            {"name": "b", "class": "app", "uids": ["10000-19999"], "cgroups": ["/uid_*"]}]}}"#,
    )
    .unwrap();
    assert_eq!(first_wins.owner_class(10005, "/uid_10005", None), OwnerClass::System);
    assert_eq!(first_wins.owner_class(10006, "/uid_10006", None), OwnerClass::App);
    assert_eq!(
        first_wins.owner_class(10006, "/uid_10006/pid_1", None),
        OwnerClass::Background,
        "uid and cgroup must both match"
    );
}

/// The shipped background rule can apply to a real owner: an app whose every process the framework
/// put in a cached state (oom_score_adj >= 900) is background; one foreground process keeps it an
/// app; an owner without processes (no signal) is not background; platform uids never are.
#[test]
fn the_shipped_background_class_follows_the_owners_oom_score_adj() {
    let p = Policy::embedded_default();
    assert_eq!(p.owner_class(10001, "/uid_10001", Some(900)), OwnerClass::Background);
    assert_eq!(p.owner_class(10001, "/uid_10001", Some(999)), OwnerClass::Background);
    assert_eq!(p.owner_class(1_010_001, "/uid_1010001", Some(905)), OwnerClass::Background, "secondary user");
    assert_eq!(p.owner_class(10001, "/uid_10001", Some(700)), OwnerClass::App, "the previous app is not cached");
    assert_eq!(p.owner_class(10001, "/uid_10001", None), OwnerClass::App);
    assert_eq!(p.owner_class(1047, "/uid_1047", Some(950)), OwnerClass::System, "platform first");
}

#[test]
fn globs_stay_within_components_unless_doubled() {
    assert!(glob_match("/uid_*", "/uid_10001"));
    assert!(!glob_match("/uid_*", "/uid_10001/pid_3"));
    assert!(glob_match("/uid_*/**", "/uid_10001/pid_3"));
    assert!(glob_match("drm/*/vram*", "drm/0000:03:00.0/vram0"));
    assert!(!glob_match("drm/*/vram*", "drm/a/b/vram0"));
    assert!(glob_match("**", ""));
    assert!(!glob_match("/a", "/ab"));
}

#[test]
fn trusted_contexts_match_whole_contexts_or_domains() {
    let p = Policy::from_json(
        r#"{"version": 1, "heaps": {"system": {"class": "system"}},
            "trusted": {"uids": ["1000-1003"], "contexts": ["surfaceflinger", "u:r:hal_camera_default:s0"]}}"#,
    )
    .unwrap();
    assert!(p.is_trusted_context("u:r:surfaceflinger:s0"));
    assert!(p.is_trusted_context("u:r:surfaceflinger:s0:c512,c768"));
    assert!(p.is_trusted_context("u:r:surfaceflinger:s0\0"), "procfs attr/current ends in NUL");
    assert!(p.is_trusted_context("u:r:hal_camera_default:s0"));
    assert!(!p.is_trusted_context("u:r:hal_camera_default:s0:c1"));
    assert!(!p.is_trusted_context("u:r:untrusted_app:s0:c1"));
    assert!(!p.is_trusted_context("surfaceflinger"));
    assert!(p.is_trusted_uid(1002) && !p.is_trusted_uid(1004));
}

#[test]
fn region_classes_fall_back_to_default_per_owner_class() {
    let p = Policy::from_json(
        r#"{"version": 1, "heaps": {"system": {"class": "system"}}, "limits": {
             "camera": {"app": {"max": "30%"}},
             "default": {"app": {"max": "10%"}, "background": {"max": "1M", "min": "4096", "low": "8192"}}}}"#,
    )
    .unwrap();
    assert_eq!(p.dmem_limits(RegionClass::Camera, OwnerClass::App).max, Amount::Ppm(300_000));
    assert_eq!(p.dmem_limits(RegionClass::Camera, OwnerClass::Background).max, Amount::Bytes(1 << 20));
    assert_eq!(p.dmem_limits(RegionClass::Codec, OwnerClass::App).max, Amount::Ppm(100_000));
    let bg = p.dmem_limits(RegionClass::Codec, OwnerClass::Background);
    assert_eq!((bg.min, bg.low, bg.pin_max), (Amount::Bytes(4096), Amount::Bytes(8192), Amount::Max));
}

#[test]
fn merge_layers_objects_by_key_named_arrays_by_name_and_null_deletes() {
    let mut base: serde_json::Value = serde_json::from_str(
        r#"{"a": {"x": 1, "y": 2}, "list": [1, 2], "rules": [{"name": "p", "v": 1}, {"name": "q", "v": 2}]}"#,
    )
    .unwrap();
    let over = serde_json::from_str(
        r#"{"a": {"y": 3, "x": null}, "list": [3], "rules": [{"name": "q", "v": 9}, {"name": "r"}]}"#,
    )
    .unwrap();
    merge(&mut base, over);
    let want: serde_json::Value = serde_json::from_str(
        r#"{"a": {"y": 3}, "list": [3], "rules": [{"name": "p", "v": 1}, {"name": "q", "v": 9}, {"name": "r"}]}"#,
    )
    .unwrap();
    assert_eq!(base, want);
}

#[test]
fn load_merges_vendor_overrides_over_the_base() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("policy.json");
    std::fs::write(&base, EMBEDDED_DEFAULT).unwrap();
    let odm = dir.path().join("odm.json");
    let mut f = std::fs::File::create(&odm).unwrap();
    write!(
        f,
        r#"{{"heaps": {{"gpu": null, "qcom,display": {{"class": "cma", "region": "cma/display", "region_class": "display", "mode": "observe"}}}},
            "trusted": {{"uids": [1000]}},
            "owner_classes": {{"rules": [{{"name": "platform", "class": "system", "uids": ["0-1999"]}}]}},
            "limits": {{"display": {{"app": {{"max": "10%"}}}}}}}}"#
    )
    .unwrap();
    let p = Policy::load(&[base.clone(), odm.clone()]).unwrap();
    assert!(p.heap("gpu").is_none());
    assert_eq!(p.heap("qcom,display").unwrap().mode, Mode::Observe);
    assert!(!p.is_trusted_uid(1003), "arrays of plain values are replaced");
    assert_eq!(p.owner_class(2000, "/uid_2000", None), OwnerClass::App);
    assert_eq!(p.owner_class(1999, "/uid_1999", None), OwnerClass::System);
    assert_eq!(p.dmem_limits(RegionClass::Display, OwnerClass::App).max, Amount::Ppm(100_000));
    assert_eq!(
        p.dmem_limits(RegionClass::Display, OwnerClass::App).pin_max,
        Amount::Ppm(250_000),
        "objects merge by key"
    );

    std::fs::write(&odm, r#"{"heaps": {"camera": {"region": null}}}"#).unwrap();
    let e = Policy::load(&[base.clone(), odm.clone()]).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("policy merged from") && msg.contains("heaps.camera.region: a cma heap needs a region"),
        "{msg}"
    );

    std::fs::write(&odm, "{ nope").unwrap();
    let msg = Policy::load(&[base, odm.clone()]).unwrap_err().to_string();
    assert!(msg.starts_with(&format!("{}: line 1", odm.display())), "{msg}");
    assert!(matches!(Policy::load(&[dir.path().join("missing.json")]), Err(PolicyError::Io { .. })));
}

#[test]
fn trace_counters_are_off_unless_the_policy_turns_them_on() {
    assert!(!Policy::embedded_default().trace_counters());
    assert!(!Policy::from_json(MINIMAL).unwrap().trace_counters());
    let on = r#"{"version": 1, "heaps": {"system": {"class": "system"}}, "trace": {"counters": true}}"#;
    assert!(Policy::from_json(on).unwrap().trace_counters());
    let bad = r#"{"version": 1, "heaps": {"system": {"class": "system"}}, "trace": {"counters": "yes"}}"#;
    assert_eq!(invalid(bad), ("trace.counters".into(), "expected true or false, found a string".into()));
    let typo = r#"{"version": 1, "heaps": {"system": {"class": "system"}}, "trace": {"counter": true}}"#;
    assert_eq!(invalid(typo).0, "trace.counter");
}
