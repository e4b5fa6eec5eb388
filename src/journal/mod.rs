//! Durable ledger: an append-only journal of ledger events with periodic compaction into a
//! snapshot, under a state dir (`/data/vendor/chargetransfer` on Android).
//!
//! Why a format of our own rather than sled, redb or rusqlite: there is exactly one writer (the
//! service, under its ledger mutex) and the data is an append-only event log, not a keyed store;
//! recovery must keep every record before the first torn one and say what it dropped, where an
//! embedded database hides that inside its own recovery or refuses to open; and the whole format
//! is a few hundred lines with no dependency to vendor into an Android build.
//!
//! Files (framing in `record`, payloads in `codec`):
//! - `journal.log`: records `[u32 len LE][u32 crc32 LE][payload]`; the first is a header (magic
//!   `CTJL`, format version, generation g), each later one is one [`Event`].
//! - `snapshot.<g>`: the same framing; a header (magic `CTSN`, version, g, event count), then
//!   [`Ledger::to_events`]. Journal generation g replays on top of snapshot g and no other.
//!
//! Compaction to generation n: `snapshot.tmp` is written, fsynced and renamed to `snapshot.<n>`,
//! the directory fsynced; then `journal.tmp` gets the header n, is fsynced and renamed over
//! `journal.log`, the directory fsynced; then older snapshots are deleted. A crash at any step
//! leaves (snapshot g, journal g) or (snapshot n, journal g < n). [`Journal::open`] takes a
//! journal older than the newest snapshot as already folded into it, so no event is applied
//! twice, and deletes `*.tmp` leftovers. Files it cannot use are kept as `*.damaged`, never read.
//!
//! Concurrency: a `Journal` is `Send` and meant for one owner. The service keeps it beside the
//! [`Ledger`] under one mutex and appends each event before releasing the lock it applied it
//! under, so the order in the journal is the order of application, and an event is on disk
//! before the caller hears it succeeded. A failed append leaves the ledger ahead of the disk
//! (the restart's reconcile closes that gap); after a failed sync the journal is poisoned and
//! only a reopen, which reads back what really reached the disk, makes it usable again.

mod codec;
mod record;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use log::{info, warn};
use thiserror::Error;

use crate::ledger::{Event, Ledger};
use codec::{Header, HeaderError, Kind};
use record::{Damage, Records};

const JOURNAL: &str = "journal.log";
const JOURNAL_TMP: &str = "journal.tmp";
const SNAPSHOT_TMP: &str = "snapshot.tmp";
const SNAPSHOT_PREFIX: &str = "snapshot.";

/// Refused replay events logged one by one before only the total is reported.
const REFUSALS_LOGGED: u64 = 10;

/// When an append counts as recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Each append is fdatasync'ed before it returns: survives power loss (`--durability fsync`).
    Fsync,
    /// Appends reach the kernel at once (they survive the service being killed) and the disk on
    /// [`Journal::flush`]. The service default (`--durability batch`): after a power loss no
    /// dma-buf survives either, so a synced record would add nothing.
    #[default]
    Batch,
    /// Never synced, not even snapshots: tests only.
    None,
}

/// When [`Journal::should_compact`] says yes: whichever limit is reached first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// Records appended since the last snapshot.
    pub records: u64,
    /// Bytes appended since the last snapshot.
    pub bytes: u64,
}

impl Default for CompactionPolicy {
    /// About 0.1 s of replay either way: 200k records, or 16 MiB.
    fn default() -> Self {
        CompactionPolicy { records: 200_000, bytes: 16 << 20 }
    }
}

/// What [`Journal::open`] found. Counts include refused events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The generation the journal continues with.
    pub generation: u64,
    pub snapshot_events: u64,
    pub journal_events: u64,
    /// Bytes cut from the end of the journal: a torn last append, or everything from the first
    /// corrupt record on.
    pub torn_bytes: u64,
    /// What was damaged and what was dropped because of it, if anything was.
    pub corrupt: Option<String>,
    /// Events the ledger refused on replay: skipped, each logged.
    pub events_refused: u64,
}

impl RecoveryReport {
    fn note_corrupt(&mut self, what: String) {
        warn!("{what}");
        self.corrupt = Some(match self.corrupt.take() {
            Some(earlier) => format!("{earlier}; {what}"),
            None => what,
        });
    }
}

#[derive(Debug, Error)]
pub enum JournalError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: format version {found}, this build reads version {supported}; left untouched", path.display())]
    Version { path: PathBuf, found: u16, supported: u16 },
    #[error("journal in {} refuses appends after a failed write or sync; reopen it", dir.display())]
    Poisoned { dir: PathBuf },
    #[error("event of {size} bytes exceeds the {max}-byte record limit")]
    TooLarge { size: usize, max: usize },
}

type Result<T, E = JournalError> = std::result::Result<T, E>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> JournalError + 'a {
    move |source| JournalError::Io { op, path: path.to_path_buf(), source }
}

/// The open journal: appends go to `journal.log` of the current generation.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    durability: Durability,
    policy: CompactionPolicy,
    file: File,
    generation: u64,
    /// Length of `journal.log` up to the last complete record we wrote.
    len: u64,
    header_len: u64,
    records: u64,
    /// Appended but not yet synced (`Batch`).
    dirty: bool,
    /// A write or sync failed and could not be undone: what is on disk is unknown.
    poisoned: bool,
    /// Encoding buffer, reused across appends.
    buf: Vec<u8>,
}

impl Journal {
    /// Loads the newest valid snapshot and its journal into a fresh ledger, repairs what a crash
    /// left behind, and returns the journal ready for appends. Damage never fails the open: it
    /// is logged, reported, and replay stops before it. Errors are I/O failures and files of a
    /// newer format version, which are left untouched.
    pub fn open(dir: impl AsRef<Path>, durability: Durability) -> Result<(Journal, Ledger, RecoveryReport)> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let mut report = RecoveryReport::default();
        let listing = list(&dir)?;
        for name in [SNAPSHOT_TMP, JOURNAL_TMP] {
            if listing.tmp.iter().any(|t| t == name) {
                info!("{}: removing the leftover of an interrupted compaction", dir.join(name).display());
                remove(&dir.join(name))?;
            }
        }

        let mut base = None;
        for &generation in listing.snapshots.iter().rev() {
            let path = snapshot_path(&dir, generation);
            match load_snapshot(&path, generation)? {
                Ok((ledger, events, refused)) => {
                    report.snapshot_events = events;
                    report.events_refused += refused;
                    base = Some((generation, ledger));
                    break;
                }
                Err(reason) => {
                    report.note_corrupt(format!("{}: {reason}; set aside, an older snapshot is used", path.display()));
                    set_aside(&path)?;
                }
            }
        }
        let newest_seen = listing.snapshots.last().copied().unwrap_or(0);

        let path = dir.join(JOURNAL);
        let data = match fs::read(&path) {
            Ok(data) => Some(data),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let mut records = Records::new(data.as_deref().unwrap_or_default());
        let header = data.as_ref().map(|_| read_header(&mut records, Kind::Journal, &path)).transpose()?;

        let (snapshot_gen, mut ledger) = match base {
            Some((g, ledger)) => (Some(g), ledger),
            None => (None, Ledger::new()),
        };
        let journal_gen = match &header {
            Some(Ok(h)) => Some(h.generation),
            _ => None,
        };
        if let (Some(s), Some(Ok(h))) = (snapshot_gen, &header) {
            if s == h.generation {
                let data = data.as_deref().unwrap_or_default();
                let mut journal = Self::resume(dir, durability, &mut ledger, data, (h, records.pos), &mut report)?;
                if h.version < codec::VERSION {
                    // Appends never mix formats in one file: the state moves to a new generation
                    // written in this build's format before anything is appended.
                    info!("{}: format version {} rewritten as {}", journal.dir.display(), h.version, codec::VERSION);
                    journal.compact(&ledger)?;
                    report.generation = journal.generation;
                }
                for &old in listing.snapshots.iter().filter(|&&g| g < s) {
                    if let Err(e) = remove(&snapshot_path(&journal.dir, old)) {
                        warn!("{e}");
                    }
                }
                return Ok((journal, ledger, report));
            }
        }

        // No (snapshot g, journal g) pair: settle on what was loaded and start a new generation,
        // numbered past everything seen so that no file is ever mistaken for another.
        match (&header, snapshot_gen) {
            (None, None) if listing.snapshots.is_empty() => info!("{}: new state dir", dir.display()),
            (None, _) => warn!("{}: no journal; anything recorded after the snapshot is lost", dir.display()),
            (Some(Ok(h)), Some(s)) if h.generation < s => info!(
                "{}: generation {} predates snapshot {s}, which already holds its events (compaction was interrupted)",
                path.display(),
                h.generation
            ),
            (Some(Ok(h)), s) => report.note_corrupt(format!(
                "{}: generation {} has no valid snapshot (newest valid: {}); its events are dropped, file set aside",
                path.display(),
                h.generation,
                s.map_or("none".to_string(), |s| s.to_string())
            )),
            (Some(Err(reason)), _) => {
                report.note_corrupt(format!("{}: {reason}; its events are dropped, file set aside", path.display()))
            }
        }
        if journal_gen.is_none_or(|j| Some(j) > snapshot_gen) && data.is_some() {
            set_aside(&path)?;
        }
        let generation = newest_seen.max(journal_gen.unwrap_or(0)).saturating_add(1);
        let (file, header_len) = start_generation(&dir, durability, &ledger, generation).map_err(|f| f.error)?;
        report.generation = generation;
        let journal = Journal::new(dir, durability, file, generation, header_len);
        Ok((journal, ledger, report))
    }

    fn new(dir: PathBuf, durability: Durability, file: File, generation: u64, len: u64) -> Journal {
        Journal {
            dir,
            durability,
            policy: CompactionPolicy::default(),
            file,
            generation,
            len,
            header_len: len,
            records: 0,
            dirty: false,
            poisoned: false,
            buf: Vec::new(),
        }
    }

    /// Replays `data`, the journal whose `header` ends at `header_len`; cuts any damaged tail
    /// and opens the journal for appends.
    fn resume(
        dir: PathBuf,
        durability: Durability,
        ledger: &mut Ledger,
        data: &[u8],
        (header, header_len): (&Header, usize),
        report: &mut RecoveryReport,
    ) -> Result<Journal> {
        let (version, generation) = (header.version, header.generation);
        let path = dir.join(JOURNAL);
        let mut records = Records::new(data);
        records.pos = header_len;
        let mut replay = Replay::default();
        let damage = loop {
            let at = records.pos;
            match records.next_payload() {
                Ok(None) => break None,
                Ok(Some(payload)) => match codec::decode(payload, version) {
                    Ok(event) => replay.apply(ledger, &event, &path),
                    Err(reason) => {
                        records.pos = at;
                        break Some(Damage::Corrupt(format!("undecodable event: {reason}")));
                    }
                },
                Err(damage) => break Some(damage),
            }
        };
        replay.finish(&path);
        report.journal_events = replay.events;
        report.events_refused += replay.refused;
        report.generation = generation;
        let good = records.pos as u64;
        let file = OpenOptions::new().append(true).open(&path).map_err(io_err("open", &path))?;
        if let Some(damage) = damage {
            let end = data.len() as u64;
            report.torn_bytes = end - good;
            let what = format!("{} at offset {good}: {}; {} bytes cut", path.display(), damage.reason(), end - good);
            match damage {
                Damage::Torn(_) => warn!("{what} (torn by a crash during an append)"),
                Damage::Corrupt(_) => {
                    let tail = dir.join(format!("journal.{generation}.tail.damaged"));
                    fs::write(&tail, &data[good as usize..]).map_err(io_err("write", &tail))?;
                    report.note_corrupt(format!("{what}, kept in {}", tail.display()));
                }
            }
            file.set_len(good).map_err(io_err("truncate", &path))?;
            if durability != Durability::None {
                file.sync_all().map_err(io_err("sync", &path))?;
            }
        }
        let mut journal = Journal::new(dir, durability, file, generation, header_len as u64);
        journal.len = good;
        journal.records = replay.events;
        Ok(journal)
    }

    /// Sets when [`should_compact`](Self::should_compact) says yes.
    pub fn set_compaction_policy(&mut self, policy: CompactionPolicy) {
        self.policy = policy;
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Records in the journal since the last snapshot.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Bytes of records in the journal since the last snapshot.
    pub fn bytes(&self) -> u64 {
        self.len - self.header_len
    }

    /// Records one event (see [`append_all`](Self::append_all)).
    pub fn append(&mut self, event: &Event) -> Result<()> {
        self.append_all(std::slice::from_ref(event))
    }

    /// Records `events` in one write and, with [`Durability::Fsync`], one sync. On error none of
    /// them is in the journal, or the journal is poisoned and refuses further appends.
    pub fn append_all<'a>(&mut self, events: impl IntoIterator<Item = &'a Event>) -> Result<()> {
        if self.poisoned {
            return Err(JournalError::Poisoned { dir: self.dir.clone() });
        }
        self.buf.clear();
        let mut count = 0;
        for event in events {
            record::push(&mut self.buf, |out| codec::encode(event, out))
                .map_err(|size| JournalError::TooLarge { size, max: record::MAX_PAYLOAD })?;
            count += 1;
        }
        if count == 0 {
            return Ok(());
        }
        if let Err(e) = self.file.write_all(&self.buf) {
            // A partial record would hide every later one from replay: cut it off, or stop.
            if self.file.set_len(self.len).is_err() {
                self.poisoned = true;
            }
            return Err(io_err("append to", &self.dir.join(JOURNAL))(e));
        }
        self.len += self.buf.len() as u64;
        self.records += count;
        match self.durability {
            Durability::Fsync => self.sync(),
            Durability::Batch => {
                self.dirty = true;
                Ok(())
            }
            Durability::None => Ok(()),
        }
    }

    /// Syncs appends made under [`Durability::Batch`] now; a no-op otherwise.
    pub fn flush(&mut self) -> Result<()> {
        if self.poisoned {
            return Err(JournalError::Poisoned { dir: self.dir.clone() });
        }
        if self.dirty && self.durability == Durability::Batch {
            self.sync()?;
        }
        Ok(())
    }

    /// What a background sync of [`Durability::Batch`] appends must make durable: a second
    /// handle of the journal file while appends are unsynced, else `None`. The caller syncs it
    /// outside the lock the journal lives under (an fdatasync takes milliseconds on flash and
    /// every call would wait behind it) and reports a failure with
    /// [`sync_failed`](Self::sync_failed). Appends made meanwhile mark the journal unsynced
    /// again; a compaction meanwhile syncs its new files itself, so syncing the old one is
    /// harmless.
    pub fn take_unsynced(&mut self) -> Result<Option<File>> {
        if self.poisoned {
            return Err(JournalError::Poisoned { dir: self.dir.clone() });
        }
        if !self.dirty || self.durability != Durability::Batch {
            return Ok(None);
        }
        let file = self.file.try_clone().map_err(io_err("duplicate", &self.dir.join(JOURNAL)))?;
        self.dirty = false;
        Ok(Some(file))
    }

    /// A sync of the handle from [`take_unsynced`](Self::take_unsynced) failed: as after any
    /// failed sync, the journal refuses appends until it is reopened.
    pub fn sync_failed(&mut self) {
        self.poisoned = true;
    }

    fn sync(&mut self) -> Result<()> {
        // After a failed fdatasync the page cache may claim data the disk lacks; retrying
        // could "succeed" over the loss, so the journal stops until it is reopened.
        self.file.sync_data().map_err(|e| {
            self.poisoned = true;
            io_err("sync", &self.dir.join(JOURNAL))(e)
        })?;
        self.dirty = false;
        Ok(())
    }

    /// Whether the journal grew past the [`CompactionPolicy`].
    pub fn should_compact(&self) -> bool {
        self.records >= self.policy.records || self.bytes() >= self.policy.bytes
    }

    /// Writes `ledger` (which must hold everything appended so far) as the snapshot of a new
    /// generation and starts its empty journal. On error the current journal stays in use,
    /// unless the failure came too late to undo; then the journal is poisoned.
    pub fn compact(&mut self, ledger: &Ledger) -> Result<()> {
        if self.poisoned {
            return Err(JournalError::Poisoned { dir: self.dir.clone() });
        }
        let generation = self.generation.saturating_add(1);
        match start_generation(&self.dir, self.durability, ledger, generation) {
            Ok((file, header_len)) => {
                self.file = file;
                self.generation = generation;
                self.len = header_len;
                self.header_len = header_len;
                self.records = 0;
                self.dirty = false;
                Ok(())
            }
            Err(failure) => {
                self.poisoned = failure.stale;
                Err(failure.error)
            }
        }
    }
}

/// A failed [`start_generation`]; `stale` when the old journal can no longer be appended to
/// (its replacement, or a newer snapshot that outranks it, may be on disk).
struct GenerationFailure {
    error: JournalError,
    stale: bool,
}

/// Writes `ledger` as `snapshot.<generation>`, then an empty `journal.log` of that generation,
/// then deletes older snapshots. Returns the new journal opened for appends and its length.
fn start_generation(
    dir: &Path,
    durability: Durability,
    ledger: &Ledger,
    generation: u64,
) -> Result<(File, u64), GenerationFailure> {
    let sync = durability != Durability::None;
    let fail = |error| GenerationFailure { error, stale: false };

    let events = ledger.to_events();
    let mut data = Vec::new();
    let header = Header { kind: Kind::Snapshot, version: codec::VERSION, generation, events: events.len() as u64 };
    record::push(&mut data, |out| codec::encode_header(&header, out)).expect("headers are small");
    for event in &events {
        record::push(&mut data, |out| codec::encode(event, out))
            .map_err(|size| fail(JournalError::TooLarge { size, max: record::MAX_PAYLOAD }))?;
    }
    let tmp = dir.join(SNAPSHOT_TMP);
    let snapshot = snapshot_path(dir, generation);
    write_new(&tmp, &data, sync)
        .map(drop)
        .and_then(|()| fs::rename(&tmp, &snapshot).map_err(io_err("rename", &tmp)))
        .map_err(|e| {
        let _ = fs::remove_file(&tmp);
        fail(e)
    })?;

    // From here the new snapshot outranks the old journal: undo it or give the journal up.
    let undo = |error: JournalError| {
        let undone = fs::remove_file(&snapshot).is_ok() && (!sync || sync_dir(dir).is_ok());
        GenerationFailure { error, stale: !undone }
    };
    if sync {
        sync_dir(dir).map_err(undo)?;
    }
    let tmp = dir.join(JOURNAL_TMP);
    data.clear();
    let header = Header { kind: Kind::Journal, version: codec::VERSION, generation, events: 0 };
    record::push(&mut data, |out| codec::encode_header(&header, out)).expect("headers are small");
    let file = write_new(&tmp, &data, sync).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        undo(e)
    })?;
    let journal = dir.join(JOURNAL);
    fs::rename(&tmp, &journal).map_err(io_err("rename", &tmp)).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        undo(e)
    })?;
    if sync {
        sync_dir(dir).map_err(|error| GenerationFailure { error, stale: true })?;
    }

    // Older snapshots are outranked and harmless; failing to delete one is only worth a line.
    match list(dir) {
        Ok(listing) => {
            for old in listing.snapshots.into_iter().filter(|&g| g != generation) {
                if let Err(e) = remove(&snapshot_path(dir, old)) {
                    warn!("{e}");
                }
            }
        }
        Err(e) => warn!("{e}"),
    }
    Ok((file, data.len() as u64))
}

/// Creates `path` afresh with `data`, synced if asked, and returns it open for appends.
fn write_new(path: &Path, data: &[u8], sync: bool) -> Result<File> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err("remove", path)(e)),
        _ => {}
    }
    let mut file = OpenOptions::new().append(true).create_new(true).open(path).map_err(io_err("create", path))?;
    file.write_all(data).map_err(io_err("write", path))?;
    if sync {
        file.sync_all().map_err(io_err("sync", path))?;
    }
    Ok(file)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("sync", dir))
}

fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

/// Keeps a file recovery cannot use as `<name>.damaged` for inspection, out of recovery's way.
fn set_aside(path: &Path) -> Result<()> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".damaged");
    fs::rename(path, &aside).map_err(io_err("rename", path))
}

fn snapshot_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("{SNAPSHOT_PREFIX}{generation}"))
}

struct Listing {
    /// Generations of `snapshot.<g>` files, ascending.
    snapshots: Vec<u64>,
    tmp: Vec<String>,
}

fn list(dir: &Path) -> Result<Listing> {
    let mut listing = Listing { snapshots: Vec::new(), tmp: Vec::new() };
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let name = entry.map_err(io_err("list", dir))?.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == SNAPSHOT_TMP || name == JOURNAL_TMP {
            listing.tmp.push(name.to_string());
        } else if let Some(digits) = name.strip_prefix(SNAPSHOT_PREFIX) {
            // Only names we write: `snapshot.7`, not `snapshot.007` or `snapshot.7.damaged`.
            if let Some(g) = digits.parse::<u64>().ok().filter(|g| g.to_string() == digits) {
                listing.snapshots.push(g);
            }
        }
    }
    listing.snapshots.sort_unstable();
    Ok(listing)
}

/// Reads a file's header record. The outer error is fatal (a newer format); the inner one is
/// damage.
fn read_header(records: &mut Records<'_>, kind: Kind, path: &Path) -> Result<Result<Header, String>> {
    let payload = match records.next_payload() {
        Ok(Some(p)) => p,
        Ok(None) => return Ok(Err("empty file".to_string())),
        Err(damage) => return Ok(Err(format!("header record: {}", damage.reason()))),
    };
    match codec::decode_header(kind, payload) {
        Ok(h) => Ok(Ok(h)),
        Err(HeaderError::Version(found)) => {
            Err(JournalError::Version { path: path.to_path_buf(), found, supported: codec::VERSION })
        }
        Err(HeaderError::Invalid(reason)) => Ok(Err(reason)),
    }
}

/// Loads a whole snapshot into a fresh ledger: (ledger, events, refused). A snapshot is all or
/// nothing: any damage makes it unusable (the inner error).
fn load_snapshot(path: &Path, generation: u64) -> Result<Result<(Ledger, u64, u64), String>> {
    let data = fs::read(path).map_err(io_err("read", path))?;
    let mut records = Records::new(&data);
    let header = match read_header(&mut records, Kind::Snapshot, path)? {
        Ok(h) => h,
        Err(reason) => return Ok(Err(reason)),
    };
    if header.generation != generation {
        return Ok(Err(format!("header says generation {}", header.generation)));
    }
    let mut ledger = Ledger::new();
    let mut replay = Replay::default();
    loop {
        let at = records.pos;
        match records.next_payload() {
            Ok(None) => break,
            Ok(Some(payload)) => match codec::decode(payload, header.version) {
                Ok(event) => replay.apply(&mut ledger, &event, path),
                Err(reason) => return Ok(Err(format!("offset {at}: undecodable event: {reason}"))),
            },
            Err(damage) => return Ok(Err(format!("offset {at}: {}", damage.reason()))),
        }
    }
    if replay.events != header.events {
        return Ok(Err(format!("{} events where the header promises {}", replay.events, header.events)));
    }
    replay.finish(path);
    Ok(Ok((ledger, replay.events, replay.refused)))
}

/// Applies replayed events, counting and logging the ones the ledger refuses.
#[derive(Default)]
struct Replay {
    events: u64,
    refused: u64,
}

impl Replay {
    fn apply(&mut self, ledger: &mut Ledger, event: &Event, path: &Path) {
        self.events += 1;
        if let Err(e) = ledger.apply(event) {
            self.refused += 1;
            if self.refused <= REFUSALS_LOGGED {
                warn!("{} record {}: replay of {event:?} refused, skipped: {e}", path.display(), self.events);
            }
        }
    }

    fn finish(&self, path: &Path) {
        if self.refused > REFUSALS_LOGGED {
            warn!("{}: {} of {} events refused on replay in all", path.display(), self.refused, self.events);
        }
    }
}

#[cfg(test)]
mod tests;
