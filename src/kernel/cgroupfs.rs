//! cgroup v2, read and written through its files under a configurable root (`/sys/fs/cgroup` in
//! production, a temporary tree in tests).
//!
//! The adapter is thin, like the kernel's own file handlers: one file, one parse or one write.
//! Writes are a single `write()` of the whole line, as kernfs wants; limits are written as
//! `max` or plain bytes. Against a fixture tree a write replaces the file's content (cgroup.procs
//! is appended to), which is what reading it back from the kernel would show for one region.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use super::error::KernelError;
use super::parse::{self, byte_lines, format_limit, limit, number, Result};
use crate::ledger::LimitKind;

/// Reads cgroup2 mount points out of a mount table.
type MountParser = fn(&Path, &[u8]) -> Result<Vec<Vec<u8>>>;

/// The usual mount point, preferred when /proc lists several cgroup2 mounts.
const DEFAULT_MOUNT: &[u8] = b"/sys/fs/cgroup";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupFs {
    root: PathBuf,
}

/// The per-cgroup dmem files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DmemFile {
    Current,
    Max,
    Min,
    Low,
    Peak,
}

impl DmemFile {
    pub fn file_name(self) -> &'static str {
        match self {
            DmemFile::Current => "dmem.current",
            DmemFile::Max => "dmem.max",
            DmemFile::Min => "dmem.min",
            DmemFile::Low => "dmem.low",
            DmemFile::Peak => "dmem.peak",
        }
    }

    /// Limit files print `max` for "no limit"; usage files only numbers.
    fn is_limit(self) -> bool {
        matches!(self, DmemFile::Max | DmemFile::Min | DmemFile::Low)
    }
}

/// The memory controller's view of one cgroup. Limits are [`crate::ledger::UNLIMITED`] for `max`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryState {
    pub current: u64,
    pub max: u64,
    pub high: u64,
    pub low: u64,
    pub min: u64,
    /// memory.peak exists since Linux 5.19.
    pub peak: Option<u64>,
    pub stat: BTreeMap<String, u64>,
    pub events: BTreeMap<String, u64>,
}

impl CgroupFs {
    pub fn new(root: impl Into<PathBuf>) -> CgroupFs {
        CgroupFs { root: root.into() }
    }

    /// Finds the cgroup2 mount in `<proc_root>/self/mounts`, else `<proc_root>/self/mountinfo`.
    /// With several cgroup2 mounts, `/sys/fs/cgroup` wins, then the first listed.
    pub fn discover(proc_root: &Path) -> Result<CgroupFs> {
        let dir = proc_root.join("self");
        let sources: [(&str, MountParser); 2] = [("mounts", parse_mounts), ("mountinfo", parse_mountinfo)];
        for (name, parser) in sources {
            let path = dir.join(name);
            let Some(bytes) = parse::read_optional(&path)? else { continue };
            let found = parser(&path, &bytes)?;
            if let Some(mount) = found.iter().find(|m| m.as_slice() == DEFAULT_MOUNT).or(found.first()) {
                return Ok(CgroupFs::new(std::ffi::OsString::from_vec(mount.clone())));
            }
        }
        Err(KernelError::NoCgroup2Mount { searched: dir })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of a cgroup given as the kernel names it ("/" or "/uid_10001/pid_123").
    pub fn dir(&self, cgroup: &str) -> Result<PathBuf> {
        let invalid = || KernelError::InvalidCgroupPath(cgroup.to_string());
        let rest = cgroup.strip_prefix('/').ok_or_else(invalid)?;
        let mut dir = self.root.clone();
        if rest.is_empty() {
            return Ok(dir);
        }
        for part in rest.split('/') {
            if part.is_empty() || part == "." || part == ".." || part.contains('\0') {
                return Err(invalid());
            }
            dir.push(part);
        }
        Ok(dir)
    }

    pub fn exists(&self, cgroup: &str) -> bool {
        self.dir(cgroup).is_ok_and(|d| d.is_dir())
    }

    /// Controllers available in this cgroup (cgroup.controllers).
    pub fn controllers(&self, cgroup: &str) -> Result<Vec<String>> {
        let path = self.file(cgroup, "cgroup.controllers")?;
        parse::words(&path, &parse::read(&path)?)
    }

    /// Controllers enabled for the children (cgroup.subtree_control).
    pub fn subtree_control(&self, cgroup: &str) -> Result<Vec<String>> {
        let path = self.file(cgroup, "cgroup.subtree_control")?;
        parse::words(&path, &parse::read(&path)?)
    }

    /// Enables controllers for the children in one write: "+memory +dmem".
    pub fn enable_controllers(&self, cgroup: &str, controllers: &[&str]) -> Result<()> {
        if controllers.is_empty() {
            return Ok(());
        }
        if let Some(bad) = controllers.iter().find(|c| !is_word(c) || c.starts_with(['+', '-'])) {
            return Err(KernelError::InvalidArgument(format!("controller name {bad:?}")));
        }
        let line = controllers.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(" ");
        write_line(&self.file(cgroup, "cgroup.subtree_control")?, &line, false)
    }

    /// Creates the cgroup and any missing parents.
    pub fn create(&self, cgroup: &str) -> Result<()> {
        let dir = self.dir(cgroup)?;
        fs::create_dir_all(&dir).map_err(|e| KernelError::io(&dir, e))
    }

    /// Removes an empty cgroup (rmdir; the kernel refuses with EBUSY while it has processes).
    pub fn remove(&self, cgroup: &str) -> Result<()> {
        let dir = self.dir(cgroup)?;
        fs::remove_dir(&dir).map_err(|e| KernelError::io(&dir, e))
    }

    pub fn procs(&self, cgroup: &str) -> Result<Vec<u32>> {
        let path = self.file(cgroup, "cgroup.procs")?;
        parse::pid_lines(&path, &parse::read(&path)?)
    }

    /// Moves a process (all its threads) into the cgroup.
    pub fn add_proc(&self, cgroup: &str, pid: u32) -> Result<()> {
        write_line(&self.file(cgroup, "cgroup.procs")?, &pid.to_string(), true)
    }

    /// Child cgroups as paths ("/uid_10001" under "/"), sorted.
    pub fn children(&self, cgroup: &str) -> Result<Vec<String>> {
        let dir = self.dir(cgroup)?;
        let entries = fs::read_dir(&dir).map_err(|e| KernelError::io(&dir, e))?;
        let prefix = cgroup.trim_end_matches('/');
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| KernelError::io(&dir, e))?;
            let is_dir = entry.file_type().map_err(|e| KernelError::io(&entry.path(), e))?.is_dir();
            if let (true, Some(name)) = (is_dir, entry.file_name().to_str()) {
                out.push(format!("{prefix}/{name}"));
            }
        }
        out.sort();
        Ok(out)
    }

    /// `memory.current` alone: one file, for hot queries.
    pub fn memory_current(&self, cgroup: &str) -> Result<u64> {
        let path = self.dir(cgroup)?.join("memory.current");
        parse::single(&path, &parse::read(&path)?, number)
    }

    pub fn memory(&self, cgroup: &str) -> Result<MemoryState> {
        let dir = self.dir(cgroup)?;
        let single = |name: &str, parser: parse::ValueParser| {
            let path = dir.join(name);
            parse::single(&path, &parse::read(&path)?, parser)
        };
        let keyed = |name: &str| -> Result<BTreeMap<String, u64>> {
            let path = dir.join(name);
            Ok(parse::keyed(&path, &parse::read(&path)?, "key", number)?.into_iter().collect())
        };
        let peak_path = dir.join("memory.peak");
        let peak = match parse::read_optional(&peak_path)? {
            Some(bytes) => Some(parse::single(&peak_path, &bytes, number)?),
            None => None,
        };
        Ok(MemoryState {
            current: single("memory.current", number)?,
            max: single("memory.max", limit)?,
            high: single("memory.high", limit)?,
            low: single("memory.low", limit)?,
            min: single("memory.min", limit)?,
            peak,
            stat: keyed("memory.stat")?,
            events: keyed("memory.events")?,
        })
    }

    /// The regions and their sizes, in the kernel's order (root dmem.capacity).
    pub fn dmem_capacity(&self) -> Result<Vec<(String, u64)>> {
        let path = self.root.join("dmem.capacity");
        parse::keyed(&path, &parse::read(&path)?, "region", number)
    }

    /// One dmem file as region → bytes; limit files map `max` to `UNLIMITED`.
    pub fn dmem(&self, cgroup: &str, file: DmemFile) -> Result<BTreeMap<String, u64>> {
        let path = self.file(cgroup, file.file_name())?;
        let value = if file.is_limit() { limit } else { number };
        Ok(parse::keyed(&path, &parse::read(&path)?, "region", value)?.into_iter().collect())
    }

    pub fn read_memory_limit(&self, cgroup: &str, kind: LimitKind) -> Result<u64> {
        let path = self.file(cgroup, &format!("memory.{}", limit_file(kind)?))?;
        parse::single(&path, &parse::read(&path)?, limit)
    }

    /// memory.max|low|min; `UNLIMITED` is written as `max`.
    pub fn write_memory_limit(&self, cgroup: &str, kind: LimitKind, value: u64) -> Result<()> {
        let path = self.file(cgroup, &format!("memory.{}", limit_file(kind)?))?;
        write_line(&path, &format_limit(value), false)
    }

    /// dmem.max|low|min for one region: one "<region> <value>" per write.
    pub fn write_dmem_limit(&self, cgroup: &str, region: &str, kind: LimitKind, value: u64) -> Result<()> {
        if !is_word(region) {
            return Err(KernelError::InvalidArgument(format!("dmem region name {region:?}")));
        }
        let path = self.file(cgroup, &format!("dmem.{}", limit_file(kind)?))?;
        write_line(&path, &format!("{region} {}", format_limit(value)), false)
    }

    fn file(&self, cgroup: &str, name: &str) -> Result<PathBuf> {
        Ok(self.dir(cgroup)?.join(name))
    }
}

fn limit_file(kind: LimitKind) -> Result<&'static str> {
    match kind {
        LimitKind::Max => Ok("max"),
        LimitKind::Low => Ok("low"),
        LimitKind::Min => Ok("min"),
        LimitKind::PinMax => Err(KernelError::NoKernelFile(kind.name())),
    }
}

/// Non-empty, no whitespace or NUL: what a region or controller name may be.
fn is_word(s: &str) -> bool {
    !s.is_empty() && !s.contains(|c: char| c.is_whitespace() || c == '\0')
}

/// One write() of the line plus a newline, like `echo`. The file must exist: a missing limit
/// file means the controller is not enabled, which must not be papered over by creating it.
fn write_line(path: &Path, line: &str, append: bool) -> Result<()> {
    let data = format!("{line}\n");
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(!append)
        .append(append)
        .open(path)
        .map_err(|e| KernelError::io(path, e))?;
    let fail = |source| KernelError::Write { path: path.to_path_buf(), data: line.to_string(), source };
    let written = file.write(data.as_bytes()).map_err(fail)?;
    if written != data.len() {
        return Err(fail(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write: {written} of {} bytes", data.len()),
        )));
    }
    Ok(())
}

/// Undoes the octal escapes of /proc mount tables (`\040` for a space, ...).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal =
            field.get(i + 1..i + 4).filter(|d| field[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                let v = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(v as u8);
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// cgroup2 mount points in /proc/self/mounts (`source target fstype options freq passno`).
fn parse_mounts(path: &Path, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for (n, line) in byte_lines(bytes) {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        if fields.len() < 3 || fields[..3].iter().any(|f| f.is_empty()) {
            return Err(KernelError::parse(path, n, "expected at least <source> <mount point> <type>"));
        }
        if fields[2] == b"cgroup2" {
            out.push(unescape(fields[1]));
        }
    }
    Ok(out)
}

/// cgroup2 mount points in /proc/self/mountinfo (mount point is field 5; the type follows " - ").
fn parse_mountinfo(path: &Path, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for (n, line) in byte_lines(bytes) {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let sep = fields.iter().position(|f| *f == b"-");
        match sep {
            Some(sep) if sep >= 6 && sep + 1 < fields.len() => {
                if fields[sep + 1] == b"cgroup2" {
                    out.push(unescape(fields[4]));
                }
            }
            _ => return Err(KernelError::parse(path, n, "expected 6+ fields, \" - \" and a filesystem type")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::UNLIMITED;
    use proptest::prelude::*;
    use tempfile::TempDir;

    const APP: &str = "/uid_10001/pid_123";
    const VRAM: &str = "drm/0000:03:00.0/vram0";
    const CMA: &str = "cma/reserved";

    /// A cgroup root laid out like /sys/fs/cgroup on an Android device with a dmem kernel.
    fn fixture() -> (TempDir, CgroupFs) {
        let tmp = TempDir::new().unwrap();
        let root = tmp.path();
        let put = |rel: &str, content: &str| {
            let p = root.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
        };
        put("cgroup.controllers", "cpuset cpu io memory pids dmem\n");
        put("cgroup.subtree_control", "memory\n");
        put("dmem.capacity", &format!("{VRAM} 8589934592\n{CMA} 67108864\n"));
        put("cgroup.procs", "1\n");
        for dir in ["uid_10001", "uid_10001/pid_123"] {
            put(&format!("{dir}/cgroup.controllers"), "memory dmem\n");
            put(&format!("{dir}/cgroup.subtree_control"), "\n");
        }
        let app = "uid_10001/pid_123";
        put(&format!("{app}/cgroup.procs"), "123\n124\n");
        put(&format!("{app}/memory.current"), "1048576\n");
        put(&format!("{app}/memory.max"), "max\n");
        put(&format!("{app}/memory.high"), "max\n");
        put(&format!("{app}/memory.low"), "0\n");
        put(&format!("{app}/memory.min"), "0\n");
        put(&format!("{app}/memory.peak"), "2097152\n");
        put(&format!("{app}/memory.stat"), "anon 4096\nfile 8192\nshmem 0\n");
        put(&format!("{app}/memory.events"), "low 0\nhigh 0\nmax 3\noom 0\noom_kill 0\noom_group_kill 0\n");
        put(&format!("{app}/dmem.current"), &format!("{VRAM} 0\n{CMA} 4194304\n"));
        put(&format!("{app}/dmem.max"), &format!("{VRAM} max\n{CMA} 16777216\n"));
        put(&format!("{app}/dmem.min"), &format!("{VRAM} 0\n{CMA} 0\n"));
        put(&format!("{app}/dmem.low"), &format!("{VRAM} 0\n{CMA} max\n"));
        put(&format!("{app}/dmem.peak"), &format!("{VRAM} 0\n{CMA} 8388608\n"));
        let fs = CgroupFs::new(root);
        (tmp, fs)
    }

    fn content(fs: &CgroupFs, cgroup: &str, name: &str) -> String {
        fs::read_to_string(fs.dir(cgroup).unwrap().join(name)).unwrap()
    }

    fn set(fs: &CgroupFs, cgroup: &str, name: &str, text: &str) {
        fs::write(fs.dir(cgroup).unwrap().join(name), text).unwrap();
    }

    /// The parse error's file name and line.
    fn parse_error(e: KernelError) -> (String, usize, String) {
        match e {
            KernelError::Parse { path, line, reason } => {
                (path.file_name().unwrap().to_string_lossy().into_owned(), line, reason)
            }
            other => panic!("expected a parse error, got {other}"),
        }
    }

    #[test]
    fn cgroup_paths_map_under_the_root_and_reject_escapes() {
        let fs = CgroupFs::new("/sys/fs/cgroup");
        assert_eq!(fs.dir("/").unwrap(), Path::new("/sys/fs/cgroup"));
        assert_eq!(fs.dir(APP).unwrap(), Path::new("/sys/fs/cgroup/uid_10001/pid_123"));
        for bad in ["", "uid_1", "/..", "/uid_1/../..", "/uid_1/.", "/uid_1//pid_2", "/uid_1/", "/a\0b"] {
            assert!(matches!(fs.dir(bad), Err(KernelError::InvalidCgroupPath(p)) if p == bad), "{bad:?}");
        }
        assert!(!fs.exists("/.."));
    }

    #[test]
    fn reads_the_android_per_app_layout() {
        let (_tmp, fs) = fixture();
        assert!(fs.exists(APP));
        assert!(!fs.exists("/uid_10001/pid_999"));
        assert_eq!(fs.children("/").unwrap(), ["/uid_10001"]);
        assert_eq!(fs.children("/uid_10001").unwrap(), [APP]);
        assert!(fs.children(APP).unwrap().is_empty());
        assert_eq!(fs.procs(APP).unwrap(), [123, 124]);
        assert_eq!(fs.controllers("/").unwrap(), ["cpuset", "cpu", "io", "memory", "pids", "dmem"]);
        assert_eq!(fs.subtree_control("/").unwrap(), ["memory"]);
        assert!(fs.subtree_control(APP).unwrap().is_empty());
    }

    #[test]
    fn reads_memory_state_with_max_as_unlimited() {
        let (_tmp, fs) = fixture();
        let m = fs.memory(APP).unwrap();
        assert_eq!(
            (m.current, m.max, m.high, m.low, m.min, m.peak),
            (1 << 20, UNLIMITED, UNLIMITED, 0, 0, Some(2 << 20))
        );
        assert_eq!(m.stat.get("file"), Some(&8192));
        assert_eq!(m.stat.len(), 3);
        assert_eq!(m.events.get("max"), Some(&3));
        fs::remove_file(fs.dir(APP).unwrap().join("memory.peak")).unwrap();
        assert_eq!(fs.memory(APP).unwrap().peak, None, "memory.peak is optional (kernels before 5.19)");
        fs::remove_file(fs.dir(APP).unwrap().join("memory.high")).unwrap();
        assert!(matches!(fs.memory(APP), Err(KernelError::Io { path, .. }) if path.ends_with("pid_123/memory.high")));
    }

    #[test]
    fn reads_dmem_files_with_region_names_containing_slashes_and_colons() {
        let (_tmp, fs) = fixture();
        assert_eq!(fs.dmem_capacity().unwrap(), vec![(VRAM.to_string(), 8 << 30), (CMA.to_string(), 64 << 20)]);
        let max = fs.dmem(APP, DmemFile::Max).unwrap();
        assert_eq!(max.get(VRAM), Some(&UNLIMITED));
        assert_eq!(max.get(CMA), Some(&(16 << 20)));
        assert_eq!(fs.dmem(APP, DmemFile::Current).unwrap().get(CMA), Some(&(4 << 20)));
        assert_eq!(fs.dmem(APP, DmemFile::Low).unwrap().get(CMA), Some(&UNLIMITED));
        assert_eq!(fs.dmem(APP, DmemFile::Min).unwrap().get(VRAM), Some(&0));
        assert_eq!(fs.dmem(APP, DmemFile::Peak).unwrap().get(CMA), Some(&(8 << 20)));
    }

    #[test]
    fn an_empty_dmem_file_means_no_regions() {
        let (_tmp, fs) = fixture();
        fs::write(fs.root().join("dmem.capacity"), "").unwrap();
        assert!(fs.dmem_capacity().unwrap().is_empty());
    }

    #[test]
    fn memory_limit_writes_round_trip_as_the_kernel_accepts_them() {
        let (_tmp, fs) = fixture();
        for (kind, file) in
            [(LimitKind::Max, "memory.max"), (LimitKind::Low, "memory.low"), (LimitKind::Min, "memory.min")]
        {
            fs.write_memory_limit(APP, kind, 256 << 20).unwrap();
            assert_eq!(content(&fs, APP, file), "268435456\n");
            assert_eq!(fs.read_memory_limit(APP, kind).unwrap(), 256 << 20);
            fs.write_memory_limit(APP, kind, UNLIMITED).unwrap();
            assert_eq!(content(&fs, APP, file), "max\n", "a shorter value replaces the longer one whole");
            assert_eq!(fs.read_memory_limit(APP, kind).unwrap(), UNLIMITED);
        }
    }

    #[test]
    fn dmem_limit_writes_one_region_line() {
        let (_tmp, fs) = fixture();
        fs.write_dmem_limit(APP, CMA, LimitKind::Max, 32 << 20).unwrap();
        assert_eq!(content(&fs, APP, "dmem.max"), "cma/reserved 33554432\n");
        assert_eq!(fs.dmem(APP, DmemFile::Max).unwrap().get(CMA), Some(&(32 << 20)));
        fs.write_dmem_limit(APP, VRAM, LimitKind::Low, UNLIMITED).unwrap();
        assert_eq!(content(&fs, APP, "dmem.low"), "drm/0000:03:00.0/vram0 max\n");
        fs.write_dmem_limit(APP, VRAM, LimitKind::Min, 0).unwrap();
        assert_eq!(content(&fs, APP, "dmem.min"), "drm/0000:03:00.0/vram0 0\n");
        for bad in ["", "cma reserved", "cma/reserved\n"] {
            assert!(
                matches!(fs.write_dmem_limit(APP, bad, LimitKind::Max, 1), Err(KernelError::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn pin_max_has_no_kernel_file() {
        let (_tmp, fs) = fixture();
        let err = fs.write_memory_limit(APP, LimitKind::PinMax, 1).unwrap_err();
        assert!(matches!(err, KernelError::NoKernelFile("pin.max")));
        assert!(err.to_string().contains("pin.max"));
        assert!(matches!(fs.read_memory_limit(APP, LimitKind::PinMax), Err(KernelError::NoKernelFile(_))));
        assert!(matches!(fs.write_dmem_limit(APP, CMA, LimitKind::PinMax, 1), Err(KernelError::NoKernelFile(_))));
    }

    #[test]
    fn writes_to_a_missing_file_fail_instead_of_creating_it() {
        let (_tmp, fs) = fixture();
        let err = fs.write_memory_limit("/uid_10001", LimitKind::Max, 1).unwrap_err();
        assert!(
            matches!(&err, KernelError::Io { path, source } if path.ends_with("uid_10001/memory.max") && source.kind() == io::ErrorKind::NotFound)
        );
        assert!(!fs.dir("/uid_10001").unwrap().join("memory.max").exists());
    }

    #[test]
    fn creates_enables_moves_and_removes() {
        let (_tmp, fs) = fixture();
        fs.create("/uid_10002/pid_200").unwrap();
        assert!(fs.exists("/uid_10002/pid_200"));
        fs.enable_controllers("/", &["memory", "dmem"]).unwrap();
        assert_eq!(content(&fs, "/", "cgroup.subtree_control"), "+memory +dmem\n");
        assert!(matches!(fs.enable_controllers("/", &["+memory"]), Err(KernelError::InvalidArgument(_))));
        assert!(matches!(fs.enable_controllers("/", &["mem ory"]), Err(KernelError::InvalidArgument(_))));
        fs.enable_controllers("/", &[]).unwrap();
        fs.add_proc("/", 77).unwrap();
        assert_eq!(fs.procs("/").unwrap(), [1, 77]);
        fs.remove("/uid_10002/pid_200").unwrap();
        assert!(!fs.exists("/uid_10002/pid_200"));
        assert!(matches!(fs.remove("/uid_10002/pid_200"), Err(KernelError::Io { .. })));
    }

    #[test]
    fn malformed_cgroup_files_name_the_file_and_line() {
        let (_tmp, fs) = fixture();
        let cases: [(&str, &str, usize, &str); 9] = [
            ("dmem.max", "cma/reserved 1\ndrm/x lots\n", 2, "invalid number \"lots\""),
            ("dmem.max", "cma/reserved 1\n 4096\n", 2, "missing region"),
            ("dmem.max", "cma/reserved\n", 1, "missing value"),
            ("dmem.max", "cma/reserved 1 junk\n", 1, "trailing junk \"junk\""),
            ("dmem.max", "cma/reserved 1\ndrm/x 2\ncma/reserved 3\n", 3, "duplicate region \"cma/reserved\""),
            ("dmem.max", "cma/reserved 1\n\ndrm/x 2\n", 2, "empty line"),
            ("dmem.current", "cma/reserved max\n", 1, "invalid number \"max\""),
            ("memory.stat", "anon 1\nfile -2\n", 2, "invalid number \"-2\""),
            ("memory.events", "low 0\nlow 1\n", 2, "duplicate key \"low\""),
        ];
        for (file, text, line, reason) in cases {
            set(&fs, APP, file, text);
            let err = match file {
                "dmem.max" => fs.dmem(APP, DmemFile::Max).unwrap_err(),
                "dmem.current" => fs.dmem(APP, DmemFile::Current).unwrap_err(),
                _ => fs.memory(APP).unwrap_err(),
            };
            assert!(err.to_string().contains(&format!("pid_123/{file}:{line}:")), "{err}");
            let (name, got_line, got_reason) = parse_error(err);
            assert_eq!((name.as_str(), got_line), (file, line), "{text:?}");
            assert!(got_reason.contains(reason), "{got_reason:?} should mention {reason:?}");
            set(&fs, APP, file, "");
        }
    }

    #[test]
    fn malformed_single_value_files_are_parse_errors() {
        let (_tmp, fs) = fixture();
        for (text, line, reason) in
            [("", 1, "empty file"), ("12x\n", 1, "\"12x\""), ("1\n2\n", 2, "extra line"), ("1 2\n", 1, "trailing junk")]
        {
            set(&fs, APP, "memory.max", text);
            let (name, got_line, got_reason) = parse_error(fs.read_memory_limit(APP, LimitKind::Max).unwrap_err());
            assert_eq!((name.as_str(), got_line), ("memory.max", line));
            assert!(got_reason.contains(reason), "{got_reason:?}");
        }
        set(&fs, APP, "cgroup.procs", "123\nabc\n");
        assert_eq!(parse_error(fs.procs(APP).unwrap_err()).1, 2);
        set(&fs, APP, "cgroup.controllers", "memory\ndmem\n");
        assert_eq!(parse_error(fs.controllers(APP).unwrap_err()).1, 2);
    }

    #[test]
    fn discovers_the_cgroup2_mount_preferring_sys_fs_cgroup() {
        let tmp = TempDir::new().unwrap();
        let proc = tmp.path();
        fs::create_dir_all(proc.join("self")).unwrap();
        assert!(matches!(CgroupFs::discover(proc), Err(KernelError::NoCgroup2Mount { .. })));
        fs::write(
            proc.join("self/mountinfo"),
            "22 1 0:21 / /proc rw - proc proc rw\n35 22 0:30 / /mnt/cg\\0402 rw,nosuid shared:9 - cgroup2 cgroup2 rw\n",
        )
        .unwrap();
        assert_eq!(CgroupFs::discover(proc).unwrap().root(), Path::new("/mnt/cg 2"));
        fs::write(
            proc.join("self/mounts"),
            "proc /proc proc rw 0 0\nnone /dev/cg2_bpf cgroup2 rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n",
        )
        .unwrap();
        assert_eq!(CgroupFs::discover(proc).unwrap().root(), Path::new("/sys/fs/cgroup"));
        fs::write(proc.join("self/mounts"), "proc /proc proc rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n")
            .unwrap();
        assert_eq!(CgroupFs::discover(proc).unwrap().root(), Path::new("/mnt/cg 2"), "falls back to mountinfo");
        fs::write(proc.join("self/mounts"), "proc /proc proc rw 0 0\ngarbage\n").unwrap();
        let (name, line, _) = parse_error(CgroupFs::discover(proc).unwrap_err());
        assert_eq!((name.as_str(), line), ("mounts", 2));
    }

    #[test]
    fn discovers_on_this_host_when_cgroup2_is_mounted() {
        let has_cgroup2 = fs::read_to_string("/proc/self/mounts")
            .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(2) == Some("cgroup2")));
        if has_cgroup2 {
            assert!(CgroupFs::discover(Path::new("/proc")).unwrap().root().join("cgroup.controllers").exists());
        }
    }

    proptest! {
        #[test]
        fn cgroup_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let p = Path::new("f");
            let _ = parse::keyed(p, &bytes, "region", limit);
            let _ = parse::keyed(p, &bytes, "key", number);
            let _ = parse::single(p, &bytes, limit);
            let _ = parse::words(p, &bytes);
            let _ = parse::pid_lines(p, &bytes);
            let _ = parse_mounts(p, &bytes);
            let _ = parse_mountinfo(p, &bytes);
            let _ = unescape(&bytes);
        }

        #[test]
        fn dmem_lines_never_panic_and_good_ones_parse(
            lines in proptest::collection::vec(("[a-z/:0-9.]{1,12}", prop_oneof!["max".prop_map(String::from), "[0-9]{1,20}", "[!-~]{0,8}"]), 0..8),
            sep in prop_oneof![Just(" "), Just("  "), Just("\t"), Just("")],
        ) {
            let text: String = lines.iter().map(|(r, v)| format!("{r}{sep}{v}\n")).collect();
            let got = parse::keyed(Path::new("dmem.max"), text.as_bytes(), "region", limit);
            if let Ok(regions) = got {
                prop_assert_eq!(regions.len(), lines.len());
                for ((region, value), (r, v)) in regions.iter().zip(&lines) {
                    prop_assert_eq!(region, r);
                    prop_assert_eq!(*value, limit(v).unwrap());
                }
            }
        }
    }
}
