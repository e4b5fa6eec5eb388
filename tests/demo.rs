//! `chargectl demo` end to end: the day plays through, writes its plot and transcript, and the
//! transcript shows the behaviours the demo exists to show.

use std::fs;
use std::path::Path;

use chargetransfer::demo;

/// Runs the demo into `dir` and returns its transcript.
fn play(dir: &Path) -> String {
    demo::run(dir).unwrap_or_else(|e| panic!("demo failed: {e}"));
    fs::read_to_string(dir.join("transcript.txt")).expect("transcript.txt")
}

/// The text of step `n`, from its title to the next step's.
fn step(transcript: &str, n: usize) -> &str {
    let start = transcript.find(&format!("== Step {n}:")).unwrap_or_else(|| panic!("no step {n} in:\n{transcript}"));
    let rest = &transcript[start..];
    let end = rest[3..].find("\n== ").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

/// The first table row of `cgroup` after `marker` in `text`.
fn row<'a>(text: &'a str, marker: &str, cgroup: &str) -> Option<&'a str> {
    let at = text.find(marker)?;
    text[at..].lines().find(|l| l.split_whitespace().next() == Some(cgroup))
}

#[test]
fn the_day_plays_through_and_writes_an_svg_plot() {
    let dir = tempfile::tempdir().unwrap();
    let transcript = play(dir.path());
    let svg = fs::read_to_string(dir.path().join("usage.svg")).expect("usage.svg");
    assert!(svg.trim_start().starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    for label in ["maps (uid 10061)", "game (uid 10082)", "camera app (uid 10097)", "charged to the app"] {
        assert!(svg.contains(label), "the plot has no {label:?}");
    }
    assert!(transcript.contains(&format!("plot: {}", dir.path().join("usage.svg").display())));
    for n in 1..=7 {
        assert!(step(&transcript, n).contains(&format!("ledger after step {n}")), "step {n} prints no table");
    }
}

#[test]
fn the_double_hop_ends_with_the_game_paying_and_surfaceflinger_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    let transcript = play(dir.path());
    let hop = step(&transcript, 3);
    let sf_between =
        row(hop, "ledger between the hops", "/uid_1000/pid_640").expect("SurfaceFlinger pays between the hops");
    assert!(sf_between.contains("9.9 MiB"), "{sf_between}");
    assert!(
        hop.contains(
            "after the double hop: SurfaceFlinger pays nothing; the game pays memcg 9.9 MiB + cma/display 9.9 MiB"
        ),
        "{hop}"
    );
    assert!(row(hop, "ledger after step 3", "/uid_1000/pid_640").is_none(), "SurfaceFlinger still has a row:\n{hop}");
    let game = row(hop, "ledger after step 3", "/uid_10082/pid_4388").expect("the game's row");
    assert_eq!(game.matches("9.9 MiB").count(), 2, "memcg and cma/display: {game}");
}

#[test]
fn the_game_over_its_budget_is_refused_with_over_limit_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let transcript = play(dir.path());
    let limit = step(&transcript, 4);
    let refused = limit.lines().skip_while(|l| !l.contains("REFUSED")).nth(1).expect("a refusal");
    assert!(
        refused.trim_start().starts_with("OVER_LIMIT: charging 134217728 bytes to /uid_10082/pid_4388"),
        "{refused}"
    );
    assert!(refused.contains("would exceed /uid_10082 memcg.max"), "{refused}");
    assert!(limit.contains("the refused charge left no trace"), "{limit}");
    let charged = limit.matches("): charged;").count();
    assert_eq!(charged, 7, "1 GiB budget, 9.9 MiB window, 128 MiB packs: the eighth is refused\n{limit}");
}

#[test]
fn the_dead_games_charges_are_released_except_the_buffer_surfaceflinger_holds() {
    let dir = tempfile::tempdir().unwrap();
    let transcript = play(dir.path());
    let death = step(&transcript, 6);
    assert!(death.contains("released, nobody else holds them: 7 buffers, 896 MiB"), "{death}");
    assert!(
        death.contains("still held by SurfaceFlinger (pid 640), so its charge moves to /uid_10082 (no owning process)"),
        "{death}"
    );
    assert!(row(death, "ledger after step 6", "/uid_10082/pid_4388").is_none(), "the dead game still pays:\n{death}");
    let family = row(death, "ledger after step 6", "/uid_10082").expect("the game's uid row");
    assert!(family.contains("9.9 MiB"), "{family}");
    let reconcile = step(&transcript, 7);
    assert!(reconcile.contains("released (charged, but no process holds them): dma-buf 40001, 40004"), "{reconcile}");
    assert!(reconcile.contains("unaccounted (held, but nobody charged them): dma-buf 40017 (4 MiB)"), "{reconcile}");
    let family = row(reconcile, "ledger after step 7", "/uid_10082").expect("the game's uid row");
    assert!(!family.contains("9.9 MiB"), "{family}");
}

#[test]
fn a_rerun_into_the_same_directory_prints_the_same_day() {
    let dir = tempfile::tempdir().unwrap();
    let first = play(dir.path());
    let second = play(dir.path());
    assert_eq!(first, second);
}

#[test]
fn a_directory_the_demo_did_not_make_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("tree")).unwrap();
    fs::write(dir.path().join("tree/precious"), "keep me").unwrap();
    let err = demo::run(dir.path()).unwrap_err();
    assert!(err.contains("was not made by `chargectl demo`"), "{err}");
    assert_eq!(fs::read_to_string(dir.path().join("tree/precious")).unwrap(), "keep me");
}
