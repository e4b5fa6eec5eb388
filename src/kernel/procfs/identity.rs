//! Who a process is, from /proc/PID: its cgroup v2 path, real uid and start time (which with
//! the pid names one process, so a recycled pid is told apart), its comm and cmdline, and
//! whether it is exiting.

use std::fs;
use std::path::Path;

use super::{pid_err, ProcFs};
use crate::kernel::error::{is_gone, KernelError};
use crate::kernel::parse::{byte_lines, number, Result};

impl ProcFs {
    /// The process's cgroup v2 path from the `0::/path` line of /proc/PID/cgroup. A removed
    /// cgroup's " (deleted)" suffix is dropped.
    pub fn cgroup_of(&self, pid: u32) -> Result<String> {
        let (path, bytes) = self.read(pid, "cgroup")?;
        parse_cgroup(&path, &bytes)
    }

    /// The real uid (first field of `Uid:` in /proc/PID/status).
    pub fn uid_of(&self, pid: u32) -> Result<u32> {
        let (path, bytes) = self.read(pid, "status")?;
        parse_uid(&path, &bytes)
    }

    /// Start time in clock ticks after boot (field 22 of /proc/PID/stat): with the pid, it names
    /// one process, so a recycled pid is told apart.
    pub fn starttime(&self, pid: u32) -> Result<u64> {
        let (path, bytes) = self.read(pid, "stat")?;
        stat_field(&path, &bytes, 22, "starttime")
    }

    /// Every thread of the process has begun to exit (`PF_EXITING` in the flags, field 9 of
    /// each /proc/PID/task/TID/stat): its fds and mappings are being torn down, though its pidfd
    /// says it is alive until the last thread is gone. A process whose main thread exited while
    /// others run is not exiting. Without a task directory (the process is gone, or a fixture
    /// wrote none) the answer is [`KernelError::NoSuchProcess`].
    pub fn exiting(&self, pid: u32) -> Result<bool> {
        let tasks = self.pid_dir(pid).join("task");
        let mut exiting = false;
        for entry in fs::read_dir(&tasks).map_err(pid_err(pid, || tasks.clone()))? {
            let path = entry.map_err(pid_err(pid, || tasks.clone()))?.path().join("stat");
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) if is_gone(&e) => continue, // a thread that has just gone
                Err(e) => return Err(KernelError::io(&path, e)),
            };
            if stat_field(&path, &bytes, 9, "flags")? & PF_EXITING == 0 {
                return Ok(false);
            }
            exiting = true;
        }
        Ok(exiting)
    }

    pub fn comm(&self, pid: u32) -> Result<String> {
        let (_, bytes) = self.read(pid, "comm")?;
        Ok(String::from_utf8_lossy(bytes.strip_suffix(b"\n").unwrap_or(&bytes)).into_owned())
    }

    /// Arguments (empty for kernel threads and zombies).
    pub fn cmdline(&self, pid: u32) -> Result<Vec<String>> {
        let (_, bytes) = self.read(pid, "cmdline")?;
        let body = bytes.strip_suffix(b"\0").unwrap_or(&bytes);
        if body.is_empty() {
            return Ok(Vec::new());
        }
        Ok(body.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect())
    }
}

fn parse_cgroup(path: &Path, bytes: &[u8]) -> Result<String> {
    for (n, line) in byte_lines(bytes) {
        let Some(cgroup) = line.strip_prefix(b"0::") else { continue };
        let cgroup =
            std::str::from_utf8(cgroup).map_err(|_| KernelError::parse(path, n, "cgroup path is not UTF-8"))?;
        let cgroup = cgroup.strip_suffix(" (deleted)").unwrap_or(cgroup);
        if !cgroup.starts_with('/') {
            return Err(KernelError::parse(path, n, format!("cgroup v2 path {cgroup:?} is not absolute")));
        }
        return Ok(cgroup.to_string());
    }
    Err(KernelError::parse(path, 0, "no cgroup v2 line (\"0::/path\")"))
}

fn parse_uid(path: &Path, bytes: &[u8]) -> Result<u32> {
    for (n, line) in byte_lines(bytes) {
        let Some(ids) = line.strip_prefix(b"Uid:") else { continue };
        let real = std::str::from_utf8(ids).ok().and_then(|s| s.split_whitespace().next()).unwrap_or_default();
        return number(real)
            .and_then(|u| u32::try_from(u).map_err(|_| format!("uid {u} out of range")))
            .map_err(|reason| KernelError::parse(path, n, format!("Uid: {reason}")));
    }
    Err(KernelError::parse(path, 0, "no Uid: line"))
}

/// Linux's `PF_EXITING` (include/linux/sched.h): set as a thread enters do_exit, never cleared.
const PF_EXITING: u64 = 0x4;

/// Numeric field `n` (3 or more) of stat, named `name` in errors. comm (field 2) is in
/// parentheses and may itself contain spaces and parentheses, so the fields are counted after
/// the last ')'.
fn stat_field(path: &Path, bytes: &[u8], n: usize, name: &str) -> Result<u64> {
    let close =
        bytes.iter().rposition(|&b| b == b')').ok_or_else(|| KernelError::parse(path, 1, "no ')' closing comm"))?;
    let line = 1 + bytes[..close].iter().filter(|&&b| b == b'\n').count();
    let rest = std::str::from_utf8(&bytes[close + 1..])
        .map_err(|_| KernelError::parse(path, line, "invalid UTF-8 after comm"))?;
    // After comm come field 3 (state) onwards.
    let raw = rest
        .split_whitespace()
        .nth(n - 3)
        .ok_or_else(|| KernelError::parse(path, line, format!("fewer than {n} fields")))?;
    number(raw).map_err(|reason| KernelError::parse(path, line, format!("{name} (field {n}): {reason}")))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;

    use super::super::testing::{fixture, parse_error, STAT_TAIL};
    use super::*;

    #[test]
    fn reads_identity_of_a_process() {
        let (_tmp, proc, _) = fixture();
        assert_eq!(proc.cgroup_of(100).unwrap(), "/uid_10001/pid_100");
        assert_eq!(proc.uid_of(100).unwrap(), 10001, "the real uid, not the effective 10002");
        assert_eq!(proc.starttime(100).unwrap(), 987654, "comm with \") (\" inside is skipped");
        assert_eq!(proc.starttime(200).unwrap(), 987654);
        assert_eq!(proc.comm(100).unwrap(), "a) (b) c");
        assert_eq!(proc.cmdline(100).unwrap(), ["/system/bin/app", "--flag"]);
        assert!(matches!(proc.uid_of(999), Err(KernelError::NoSuchProcess(999))));
        assert!(matches!(proc.starttime(300), Err(KernelError::NoSuchProcess(300))));
    }

    #[test]
    fn a_process_is_exiting_when_every_thread_is() {
        let (tmp, proc, _) = fixture();
        let thread = |tid: u32, flags: u32| {
            let dir = tmp.path().join(format!("100/task/{tid}"));
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("stat"), format!("{tid} (a) (b) c) S 1 100 100 0 -1 {flags} 0 0\n")).unwrap();
        };
        assert!(matches!(proc.exiting(100), Err(KernelError::NoSuchProcess(100))), "no task directory");
        thread(100, 0x0040_4044);
        assert!(proc.exiting(100).unwrap());
        thread(101, 0x0040_0040);
        assert!(!proc.exiting(100).unwrap(), "a thread still runs");
        thread(101, 0x0000_0004);
        assert!(proc.exiting(100).unwrap());
    }

    #[test]
    fn a_process_without_a_cgroup_v2_line_is_a_parse_error() {
        let (tmp, proc, _) = fixture();
        let (path, line, reason) = parse_error(proc.cgroup_of(200).unwrap_err());
        assert_eq!((path, line), (tmp.path().join("200/cgroup"), 0));
        assert!(reason.contains("no cgroup v2 line"), "{reason}");
    }

    #[test]
    fn cgroup_lines_are_read_like_the_kernel_writes_them() {
        let p = Path::new("cgroup");
        assert_eq!(parse_cgroup(p, b"1:name=systemd:/x\n0::/\n").unwrap(), "/");
        assert_eq!(parse_cgroup(p, b"0::/uid_1/pid_2 (deleted)\n").unwrap(), "/uid_1/pid_2");
        assert_eq!(parse_cgroup(p, b"0::/a:b\n").unwrap(), "/a:b");
        assert_eq!(parse_error(parse_cgroup(p, b"3:cpu:/\n0::relative\n").unwrap_err()).1, 2);
    }

    #[test]
    fn malformed_stat_and_status_name_the_line() {
        let p = Path::new("stat");
        assert_eq!(parse_error(stat_field(p, b"1 (x S 1 2\n", 22, "starttime").unwrap_err()).1, 1);
        assert!(parse_error(stat_field(p, b"1 (x) S 1 2\n", 22, "starttime").unwrap_err()).2.contains("fewer than 22"));
        let bad = format!("1 (x) {}\n", STAT_TAIL.replace("987654", "98x"));
        assert!(parse_error(stat_field(p, bad.as_bytes(), 22, "starttime").unwrap_err()).2.contains("\"98x\""));
        assert_eq!(parse_error(parse_uid(p, b"Name:\tx\nUid:\tabc\t0\n").unwrap_err()).1, 2);
        assert_eq!(parse_error(parse_uid(p, b"Name:\tx\n").unwrap_err()).1, 0);
    }

    proptest! {
        #[test]
        fn identity_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            parse_all(&bytes);
        }

        #[test]
        fn identity_lines_never_panic(lines in proptest::collection::vec(
            prop_oneof!["0::[ -~]{0,10}", "Uid:[ -~\t]{0,12}", "[ -~()]{0,40}"],
            0..6)
        ) {
            parse_all(lines.join("\n").as_bytes());
        }
    }

    fn parse_all(bytes: &[u8]) {
        let p = Path::new("f");
        let _ = parse_cgroup(p, bytes);
        let _ = parse_uid(p, bytes);
        let _ = stat_field(p, bytes, 22, "starttime");
        let _ = crate::kernel::parse::text(p, bytes);
    }
}
