//! Hostile kernel files: random cgroupfs/procfs contents read through `CgroupFs`/`ProcFs`
//! and `kernel::inspect`; nothing panics and every error names its file.

mod hostile;

use std::collections::BTreeSet;
use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

use chargetransfer::kernel::fake_proc::{dmabuf_fdinfo, plain_fdinfo, FakeProc};
use chargetransfer::kernel::{self, CgroupFs, DmemFile, KernelError, ProcFs};
use chargetransfer::ledger::LimitKind;

use hostile::*;

const APP_CG: &str = "/uid_10001/pid_123";
const FIXTURE_PID: u32 = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KernelFile {
    MemoryCurrent,
    MemoryMax,
    MemoryHigh,
    MemoryLow,
    MemoryMin,
    MemoryPeak,
    MemoryStat,
    MemoryEvents,
    DmemCapacity,
    DmemCurrent,
    DmemMax,
    DmemMin,
    DmemLow,
    DmemPeak,
    Controllers,
    SubtreeControl,
    Procs,
    Mounts,
    Mountinfo,
    Status,
    Cgroup,
    Stat,
    Comm,
    Cmdline,
    Fdinfo,
    Maps,
    SelfFdinfo,
}

const KERNEL_FILES: [KernelFile; 27] = {
    use KernelFile::*;
    [
        MemoryCurrent,
        MemoryMax,
        MemoryHigh,
        MemoryLow,
        MemoryMin,
        MemoryPeak,
        MemoryStat,
        MemoryEvents,
        DmemCapacity,
        DmemCurrent,
        DmemMax,
        DmemMin,
        DmemLow,
        DmemPeak,
        Controllers,
        SubtreeControl,
        Procs,
        Mounts,
        Mountinfo,
        Status,
        Cgroup,
        Stat,
        Comm,
        Cmdline,
        Fdinfo,
        Maps,
        SelfFdinfo,
    ]
};

const VRAM: &str = "drm/0000:03:00.0/vram0";

impl KernelFile {
    /// Path relative to the fixture root and the content the kernel would write.
    fn template(self, self_fd: i32) -> (String, String) {
        let app = format!("cgroup{APP_CG}");
        let pid = format!("proc/{FIXTURE_PID}");
        use KernelFile::*;
        let (path, content) = match self {
            MemoryCurrent => (format!("{app}/memory.current"), "1048576\n".to_string()),
            MemoryMax => (format!("{app}/memory.max"), "max\n".to_string()),
            MemoryHigh => (format!("{app}/memory.high"), "268435456\n".to_string()),
            MemoryLow => (format!("{app}/memory.low"), "0\n".to_string()),
            MemoryMin => (format!("{app}/memory.min"), "0\n".to_string()),
            MemoryPeak => (format!("{app}/memory.peak"), "2097152\n".to_string()),
            MemoryStat => (format!("{app}/memory.stat"), "anon 4096\nfile 8192\nkernel 0\nshmem 0\nfile_mapped 4096\n".to_string()),
            MemoryEvents => (format!("{app}/memory.events"), "low 0\nhigh 0\nmax 3\noom 0\noom_kill 0\noom_group_kill 0\n".to_string()),
            DmemCapacity => ("cgroup/dmem.capacity".to_string(), format!("{VRAM} 8589934592\ncma/reserved 67108864\n")),
            DmemCurrent => (format!("{app}/dmem.current"), format!("{VRAM} 0\ncma/reserved 4194304\n")),
            DmemMax => (format!("{app}/dmem.max"), format!("{VRAM} max\ncma/reserved 16777216\n")),
            DmemMin => (format!("{app}/dmem.min"), format!("{VRAM} 0\ncma/reserved 0\n")),
            DmemLow => (format!("{app}/dmem.low"), format!("{VRAM} 0\ncma/reserved max\n")),
            DmemPeak => (format!("{app}/dmem.peak"), format!("{VRAM} 0\ncma/reserved 8388608\n")),
            Controllers => ("cgroup/cgroup.controllers".to_string(), "cpuset cpu io memory pids dmem\n".to_string()),
            SubtreeControl => ("cgroup/cgroup.subtree_control".to_string(), "memory dmem\n".to_string()),
            Procs => (format!("{app}/cgroup.procs"), "123\n124\n".to_string()),
            Mounts => (
                "proc/self/mounts".to_string(),
                "proc /proc proc rw,nosuid 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n".to_string(),
            ),
            Mountinfo => ("proc/self/mountinfo".to_string(), "35 24 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw\n".to_string()),
            Status => (
                format!("{pid}/status"),
                "Name:\tsurface flinger\nUmask:\t0077\nState:\tS (sleeping)\nUid:\t10001\t10001\t10001\t10001\nGid:\t1\t1\t1\t1\n".to_string(),
            ),
            Cgroup => (format!("{pid}/cgroup"), format!("0::{APP_CG}\n")),
            Stat => (
                format!("{pid}/stat"),
                "100 (a) (b) c) S 1 100 100 0 -1 4194560 500 0 0 0 7 3 0 0 20 0 4 0 987654 123456789 2000 18446744073709551615\n".to_string(),
            ),
            Comm => (format!("{pid}/comm"), "app\n".to_string()),
            Cmdline => (format!("{pid}/cmdline"), "/system/bin/app\0--flag\0".to_string()),
            Fdinfo => (format!("{pid}/fdinfo/3"), dmabuf_fdinfo(Some(5001), 8192, 2, "system", Some("gralloc"))),
            Maps => (
                format!("{pid}/maps"),
                "7f0000000000-7f0000002000 rw-s 00000000 00:0f 5001                      /dmabuf:gralloc\n\
                 559000000000-559000001000 r-xp 00000000 08:01 1234                       /system/bin/app\n\
                 7f0000003000-7f0000004000 rw-s 00000000 00:0f 7777                      /dmabuf:\n"
                    .to_string(),
            ),
            SelfFdinfo => (format!("proc/self/fdinfo/{self_fd}"), dmabuf_fdinfo(None, 4096, 2, "system", None)),
        };
        (path, content)
    }
}

#[derive(Clone, Debug)]
enum ByteEdit {
    Truncate(Index),
    Insert(Index, Vec<u8>),
    ReplaceWord(Index, Vec<u8>),
    DeleteLine(Index),
    DuplicateLine(Index),
    SetByte(Index, u8),
    Append(Vec<u8>),
}

fn edit_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => nasty().prop_map(String::into_bytes),
        1 => prop::sample::select(vec![vec![0xffu8], vec![0xc3], vec![0xe2, 0x82], b"\n\n".to_vec(), b"0::".to_vec(), b"Uid:".to_vec(),
            b"exp_name:\t".to_vec(), b"size:\t".to_vec(), b"ino:\t".to_vec(), b"/dmabuf:".to_vec(), b"name:\t".to_vec(), b")".to_vec(), b" - ".to_vec(),
            b"cgroup2".to_vec(), "9".repeat(40).into_bytes()]),
        1 => prop::collection::vec(any::<u8>(), 0..16),
    ]
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        1 => any::<Index>().prop_map(ByteEdit::Truncate),
        3 => (any::<Index>(), edit_bytes()).prop_map(|(i, b)| ByteEdit::Insert(i, b)),
        4 => (any::<Index>(), edit_bytes()).prop_map(|(i, b)| ByteEdit::ReplaceWord(i, b)),
        1 => any::<Index>().prop_map(ByteEdit::DeleteLine),
        1 => any::<Index>().prop_map(ByteEdit::DuplicateLine),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| ByteEdit::SetByte(i, b)),
        1 => edit_bytes().prop_map(ByteEdit::Append),
    ]
}

/// Spans of non-separator bytes (words), for word-level replacement.
fn words(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, b) in bytes.iter().enumerate() {
        let sep = b" \t\n:()-".contains(b);
        match (start, sep) {
            (None, false) => start = Some(i),
            (Some(s), true) => {
                out.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, bytes.len()));
    }
    out
}

fn apply_byte_edit(bytes: &mut Vec<u8>, edit: &ByteEdit) {
    let lines = |b: &[u8]| -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut s = 0;
        for (i, c) in b.iter().enumerate() {
            if *c == b'\n' {
                out.push((s, i + 1));
                s = i + 1;
            }
        }
        if s < b.len() {
            out.push((s, b.len()));
        }
        out
    };
    match edit {
        ByteEdit::Truncate(i) => bytes.truncate(i.index(bytes.len() + 1)),
        ByteEdit::Insert(i, b) => {
            let at = i.index(bytes.len() + 1);
            bytes.splice(at..at, b.iter().copied());
        }
        ByteEdit::ReplaceWord(i, b) => {
            let w = words(bytes);
            if !w.is_empty() {
                let (s, e) = *i.get(&w);
                bytes.splice(s..e, b.iter().copied());
            }
        }
        ByteEdit::DeleteLine(i) => {
            let l = lines(bytes);
            if !l.is_empty() {
                let (s, e) = *i.get(&l);
                bytes.drain(s..e);
            }
        }
        ByteEdit::DuplicateLine(i) => {
            let l = lines(bytes);
            if !l.is_empty() {
                let (s, e) = *i.get(&l);
                let line = bytes[s..e].to_vec();
                bytes.splice(e..e, line);
            }
        }
        ByteEdit::SetByte(i, b) => {
            if !bytes.is_empty() {
                let at = i.index(bytes.len());
                bytes[at] = *b;
            }
        }
        ByteEdit::Append(b) => bytes.extend_from_slice(b),
    }
}

#[derive(Clone, Debug)]
enum FileContent {
    Edited(Vec<ByteEdit>),
    Random(Vec<u8>),
    Text(String),
}

fn file_case() -> impl Strategy<Value = (KernelFile, FileContent)> {
    let content = prop_oneof![
        8 => prop::collection::vec(byte_edit(), 1..5).prop_map(FileContent::Edited),
        1 => prop::collection::vec(any::<u8>(), 0..600).prop_map(FileContent::Random),
        1 => any::<String>().prop_map(FileContent::Text),
    ];
    (prop::sample::select(KERNEL_FILES.to_vec()), content)
}

struct KernelFixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    cgroupfs: CgroupFs,
    procfs: ProcFs,
    /// An open fd whose `self/fdinfo/<fd>` the fixture supplies (for `kernel::inspect`).
    memfd: OwnedFd,
}

fn put(path: &Path, content: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

fn kernel_fixture() -> KernelFixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let memfd = rustix::fs::memfd_create("hostile", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    for f in KERNEL_FILES {
        let (rel, content) = f.template(memfd.as_raw_fd());
        put(&root.join(rel), content.as_bytes());
    }
    // A second process, so a scan merges holders, and valid fds beside the fuzzed one.
    let proc = FakeProc::new(root.join("proc"));
    proc.put_fd(200, 4, dmabuf_fdinfo(Some(7777), 4096, 2, "cma", None)).unwrap();
    proc.put_fd(200, 5, plain_fdinfo(424242)).unwrap();
    proc.write("200/maps", "").unwrap();
    proc.put_fd(FIXTURE_PID, 0, plain_fdinfo(3)).unwrap();
    KernelFixture {
        cgroupfs: CgroupFs::new(root.join("cgroup")),
        procfs: ProcFs::new(root.join("proc")),
        root,
        _dir: dir,
        memfd,
    }
}

/// The error names `file` (the one with random contents): its path, and a line within it.
fn names_file(e: &KernelError, file: &Path, content: &[u8]) -> Result<(), String> {
    let lines = content.split(|&b| b == b'\n').count();
    match e {
        KernelError::Parse { path, line, reason } if path == file => {
            if *line > lines {
                return Err(format!("line {line} of a {lines}-line file: {reason}"));
            }
            if reason.is_empty() {
                return Err("empty reason".into());
            }
            Ok(())
        }
        KernelError::Io { path, .. } if path == file => Ok(()),
        other => Err(format!("error does not name {}: {other}", file.display())),
    }
}

/// Reads the fuzzed file through every adapter call that reads it.
fn read_through_adapters(
    fx: &KernelFixture,
    file: KernelFile,
    path: &Path,
    content: &[u8],
) -> Result<bool, TestCaseError> {
    let check = |r: Result<(), KernelError>| -> Result<bool, TestCaseError> {
        match r {
            Ok(()) => Ok(true),
            Err(e) => names_file(&e, path, content).map(|_| false).map_err(TestCaseError::fail),
        }
    };
    use KernelFile::*;
    let ok = match file {
        MemoryCurrent | MemoryMax | MemoryHigh | MemoryLow | MemoryMin | MemoryPeak | MemoryStat | MemoryEvents => {
            let ok = check(fx.cgroupfs.memory(APP_CG).map(drop))?;
            for kind in [LimitKind::Max, LimitKind::Low, LimitKind::Min] {
                let name = format!("memory.{}", kind.name());
                if path.ends_with(&name) {
                    check(fx.cgroupfs.read_memory_limit(APP_CG, kind).map(drop))?;
                }
            }
            ok
        }
        DmemCapacity => check(fx.cgroupfs.dmem_capacity().map(drop))?,
        DmemCurrent | DmemMax | DmemMin | DmemLow | DmemPeak => {
            let which = match file {
                DmemCurrent => DmemFile::Current,
                DmemMax => DmemFile::Max,
                DmemMin => DmemFile::Min,
                DmemLow => DmemFile::Low,
                _ => DmemFile::Peak,
            };
            check(fx.cgroupfs.dmem(APP_CG, which).map(drop))?
        }
        Controllers => check(fx.cgroupfs.controllers("/").map(drop))?,
        SubtreeControl => check(fx.cgroupfs.subtree_control("/").map(drop))?,
        Procs => check(fx.cgroupfs.procs(APP_CG).map(drop))?,
        Mounts | Mountinfo => check(CgroupFs::discover(fx.procfs.root()).map(drop).or_else(|e| match e {
            KernelError::NoCgroup2Mount { .. } => Ok(()),
            e => Err(e),
        }))?,
        Status => check(fx.procfs.uid_of(FIXTURE_PID).map(drop))?,
        Cgroup => check(fx.procfs.cgroup_of(FIXTURE_PID).map(drop))?,
        Stat => check(fx.procfs.starttime(FIXTURE_PID).map(drop))?,
        Comm => check(fx.procfs.comm(FIXTURE_PID).map(drop))?,
        Cmdline => check(fx.procfs.cmdline(FIXTURE_PID).map(drop))?,
        Fdinfo | Maps => {
            let ok = check(fx.procfs.dmabufs(FIXTURE_PID).map(drop))?;
            let scan = fx.procfs.scan_all().map_err(|e| TestCaseError::fail(format!("scan_all: {e}")))?;
            for (pid, e) in &scan.errors {
                prop_assert_eq!(*pid, FIXTURE_PID);
                names_file(e, path, content).map_err(TestCaseError::fail)?;
            }
            prop_assert_eq!(scan.is_complete(), ok, "scan and per-process read disagree");
            prop_assert!(scan.buffers.contains(7777), "process 200's buffer must survive a bad neighbour");
            ok
        }
        SelfFdinfo => match kernel::inspect(fx.memfd.as_fd(), fx.procfs.root()) {
            Ok(info) => {
                let st = rustix::fs::fstat(&fx.memfd).unwrap();
                prop_assert_eq!(info.inode, st.st_ino, "the inode comes from fstat, never the file");
                true
            }
            Err(KernelError::NotDmaBuf { reason }) => {
                prop_assert!(reason.contains("no exp_name"), "{reason}");
                false
            }
            Err(e) => check(Err(e))?,
        },
    };
    Ok(ok)
}

#[test]
fn kernel_files_with_random_contents_never_panic_and_errors_name_the_file() {
    let started = Instant::now();
    let cases = 2000 * scale();
    let fx = kernel_fixture();
    let tally = Mutex::new((0usize, 0usize, BTreeSet::new()));
    run(&mut runner(3, cases, true), file_case(), |(file, content)| {
        let (rel, template) = file.template(fx.memfd.as_raw_fd());
        let path = fx.root.join(&rel);
        let bytes = match content {
            FileContent::Edited(edits) => {
                let mut b = template.clone().into_bytes();
                edits.iter().for_each(|e| apply_byte_edit(&mut b, e));
                b
            }
            FileContent::Random(b) => b,
            FileContent::Text(t) => t.into_bytes(),
        };
        fs::write(&path, &bytes).unwrap();
        let result = read_through_adapters(&fx, file, &path, &bytes);
        fs::write(&path, template.as_bytes()).unwrap();
        let ok = result?;
        let mut t = tally.lock().unwrap();
        if ok {
            t.0 += 1;
        } else {
            t.1 += 1;
        }
        t.2.insert(format!("{file:?}"));
        Ok(())
    });
    let (ok, refused, kinds) = tally.into_inner().unwrap();
    finished(
        "files",
        format!("{cases}"),
        format!(
            "{cases} file contents over {} kinds of file: {ok} read, {refused} refused naming the file and line",
            kinds.len()
        ),
        started,
    );
}
