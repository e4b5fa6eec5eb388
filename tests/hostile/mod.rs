//! What the hostile harnesses share: case counts and seeds, the runner, the report line, and
//! the strings a person or a fuzzer would try. Each harness is its own test file
//! (`tests/hostile_*.rs`) and uses a part of this, so unused items are allowed here.
//!
//! CI runs a fixed number of cases; `HOSTILE_CASES=N` multiplies every count by N, and
//! `HOSTILE_SEED` replays one run (the seed is printed; the services' timing still varies).
//! Each harness prints its counts to stderr (uncaptured, so they show in `cargo test` output).

#![allow(dead_code)]

use std::io::Write;
use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

/// `HOSTILE_CASES=N` runs N times the CI case counts.
pub fn scale() -> u32 {
    std::env::var("HOSTILE_CASES").ok().and_then(|s| s.parse().ok()).filter(|n| *n > 0).unwrap_or(1)
}

pub fn base_seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        std::env::var("HOSTILE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
        })
    })
}

/// A runner with its own deterministic stream per harness. Stateful harnesses (a live service)
/// cannot be shrunk meaningfully, so they fail with the case as generated.
pub fn runner(harness: u64, cases: u32, shrink: bool) -> TestRunner {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&base_seed().to_le_bytes());
    seed[8..16].copy_from_slice(&harness.to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: if shrink { 2048 } else { 0 },
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed))
}

/// Written to stderr directly: the test harness captures `eprintln!`, not the stream itself.
pub fn report(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Prints the harness's headline and detail, with its time and seed.
pub fn finished(harness: &str, headline: String, detail: String, started: Instant) {
    report(&format!(
        "hostile: {harness}: {headline}; {detail} ({:.1} s, seed {}, HOSTILE_CASES={})",
        started.elapsed().as_secs_f64(),
        base_seed(),
        scale()
    ));
}

pub fn run<S: Strategy>(runner: &mut TestRunner, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}\n(replay with HOSTILE_SEED={})", base_seed());
    }
}

/// Strings a person or a fuzzer would try: separators, escapes, control characters, unicode,
/// numbers at the edges.
pub const NASTY: &[&str] = &[
    "",
    " ",
    "\t",
    "\n",
    "\r\n",
    "\0",
    "/",
    "//",
    "/.",
    "/..",
    "..",
    ".",
    "*",
    "**",
    "%",
    "-",
    "+",
    ":",
    "\\",
    "\"",
    "max",
    "MAX",
    "-1",
    "+1",
    "0",
    "0x10",
    "1e3",
    "1K",
    "1.5G",
    "16E",
    "101%",
    "100%",
    "0.00001%",
    "18446744073709551615",
    "18446744073709551616",
    "4294967295",
    "4294967296",
    "-9223372036854775808",
    "ü",
    "\u{202e}",
    "\u{feff}",
    "\u{200b}",
    "🦀",
    "a b",
    "a\0b",
];

pub fn nasty() -> impl Strategy<Value = String> {
    prop::sample::select(NASTY).prop_map(String::from)
}

/// A string from the list, a random short ASCII string, or any unicode string.
pub fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![3 => nasty(), 2 => "[/a-z0-9_.:* %-]{0,24}", 1 => any::<String>(), 1 => (1usize..20_000).prop_map(|n| "x".repeat(n))]
}
