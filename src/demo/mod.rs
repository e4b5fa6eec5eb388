//! `chargectl demo`: a scripted day on a simulated phone, through the code production runs.
//!
//! [`phone`] lays out a tree standing in for /sys/fs/cgroup, /proc, /sys and /dev; the
//! [`Accountant`](crate::accountant::Accountant) and autoconfig run against it exactly as the
//! service runs against the device; [`script`] plays the day (allocations on behalf of apps, the
//! SurfaceFlinger double hop, a refusal at a limit, a consented transfer, a death, a reconcile)
//! and prints the ledger after each step; [`plot`] draws charges per app over the day.
//!
//! Output in `out`: `tree/` (the phone), `state/` (the service's journal), `transcript.txt`
//! (what was printed) and `usage.svg`.

pub mod chart;
mod phone;
mod plot;
mod script;

use std::fs;
use std::path::Path;

/// Marks a directory as the demo's, so a rerun may clear the `tree/` and `state/` it left.
const MARKER: &str = ".chargectl-demo";

/// Plays the day into `out`. Errors are one line, naming the step and what failed.
pub fn run(out: &Path) -> Result<(), String> {
    prepare(out)?;
    let mut transcript = Transcript::default();
    let result = script::play(out, &mut transcript);
    if let Err(e) = &result {
        transcript.text.push_str(&format!("error: {e}\n"));
    }
    let path = out.join("transcript.txt");
    fs::write(&path, &transcript.text).map_err(|e| format!("{}: {e}", path.display()))?;
    result
}

/// Creates `out`, or clears the `tree/` and `state/` of an earlier run. Refuses to delete
/// anything in a directory the demo did not make.
fn prepare(out: &Path) -> Result<(), String> {
    fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let marker = out.join(MARKER);
    for sub in ["tree", "state"] {
        let dir = out.join(sub);
        if !dir.exists() {
            continue;
        }
        if !marker.exists() {
            return Err(format!("{} exists and was not made by `chargectl demo`; choose another --out", dir.display()));
        }
        fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    fs::write(&marker, "made by `chargectl demo`: its tree/ and state/ are replaced on every run\n")
        .map_err(|e| format!("{}: {e}", marker.display()))
}

/// What the demo prints, kept for `transcript.txt`.
#[derive(Default)]
pub(crate) struct Transcript {
    text: String,
}

impl Transcript {
    pub fn line(&mut self, line: impl AsRef<str>) {
        let line = line.as_ref();
        println!("{line}");
        self.text.push_str(line);
        self.text.push('\n');
    }

    /// Every line of `block`, indented.
    pub fn block(&mut self, indent: &str, block: &str) {
        for line in block.lines() {
            self.line(format!("{indent}{line}").trim_end());
        }
    }
}
