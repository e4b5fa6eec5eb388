//! What autoconfig wrote to kernel limit files, remembered across runs and restarts, so it writes
//! only its own limits: a file still at the kernel's default, or still holding what autoconfig
//! wrote (as the kernel read it back), is autoconfig's to change; any other value was set by
//! another component and is left alone and reported.
//!
//! Kept as `autoconfig-writes.json` in the service's state directory, next to the journal, rather
//! than as ledger events: the ledger models charges and the limits the service itself enforces,
//! while these are facts about files outside it; they change only when autoconfig runs, outside
//! the ledger lock, and losing the file is safe (every non-default value then counts as someone
//! else's, so nothing is overwritten). Written via a temporary file and rename, so a crash leaves
//! the old or the new version.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file name in the state directory.
pub const FILE_NAME: &str = "autoconfig-writes.json";

/// One write: the value autoconfig asked for and what the kernel read back (they differ where the
/// kernel rounds, e.g. memory.* to whole pages).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    pub wrote: u64,
    pub reads: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Writes {
    /// Keyed by file, relative to the cgroup root, and dmem region: `/uid_10001/memory.max`,
    /// `/uid_10001/dmem.max cma/display`.
    files: BTreeMap<String, Write>,
}

impl Writes {
    /// The writes remembered in `dir`; none when the file is missing. A file that cannot be read
    /// or parsed is reported and treated as empty (the safe side: nothing counts as ours).
    pub fn load(dir: &Path) -> (Writes, Option<String>) {
        let path = dir.join(FILE_NAME);
        match fs::read(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => (Writes::default(), None),
            Err(e) => {
                (Writes::default(), Some(format!("{}: {e}; no earlier write counts as autoconfig's", path.display())))
            }
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(w) => (w, None),
                Err(e) => (
                    Writes::default(),
                    Some(format!("{}: {e}; no earlier write counts as autoconfig's", path.display())),
                ),
            },
        }
    }

    /// Saves to `dir` atomically (temporary file, fsync, rename).
    pub fn save(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)?;
        let tmp: PathBuf = dir.join(format!("{FILE_NAME}.tmp"));
        let text = serde_json::to_vec_pretty(self).expect("writes always serialize");
        {
            use std::io::Write as _;
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, dir.join(FILE_NAME))
    }

    pub fn get(&self, key: &str) -> Option<Write> {
        self.files.get(key).copied()
    }

    pub fn record(&mut self, key: String, write: Write) {
        self.files.insert(key, write);
    }

    pub fn forget(&mut self, key: &str) {
        self.files.remove(key);
    }

    /// Drops every write to files of `cgroup` (it no longer exists: a new cgroup of the same name
    /// starts at the kernel's defaults).
    pub fn forget_cgroup(&mut self, cgroup: &str) {
        let prefix = format!("{}/", cgroup.trim_end_matches('/'));
        self.files.retain(|k, _| !k.starts_with(&prefix) || k[prefix.len()..].contains('/'));
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_round_trip_through_the_state_dir_and_a_bad_file_counts_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writes::default();
        w.record("/uid_10001/memory.max".into(), Write { wrote: 1000, reads: 0 });
        w.record("/uid_10001/dmem.max cma/display".into(), Write { wrote: 5, reads: 5 });
        w.record("/uid_10002/memory.max".into(), Write { wrote: 7, reads: 7 });
        w.save(dir.path()).unwrap();
        let (back, warning) = Writes::load(dir.path());
        assert_eq!((back.clone(), warning), (w, None));
        let mut gone = back;
        gone.forget_cgroup("/uid_10001");
        assert_eq!(gone.get("/uid_10001/memory.max"), None);
        assert_eq!(gone.get("/uid_10002/memory.max"), Some(Write { wrote: 7, reads: 7 }));

        fs::write(dir.path().join(FILE_NAME), "{not json").unwrap();
        let (empty, warning) = Writes::load(dir.path());
        assert!(empty.is_empty() && warning.unwrap().contains(FILE_NAME));
    }
}
