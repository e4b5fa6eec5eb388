//! The kernel's word, as it happens, that a dma-buf may have changed hands: a process closed a
//! dma-buf fd, or received an fd in a binder transaction. Read from a tracefs instance of the
//! service's own (`instances/chargetransfer`, so it neither sees nor disturbs other tracers):
//! - `chargetransfer/fd_close`, a return probe on `file_close_fd` — the path of close(2) and of
//!   the binder driver's deferred close. Where the kernel has BTF the probe reads the closed
//!   file's superblock magic and inode and the instance keeps only dma-buf closes; elsewhere (the
//!   dmem lane's kernel) it reports every close and the caller keeps those of processes that pay;
//! - `binder/binder_transaction_fd_recv`, the binder driver's tracepoint in the receiver.
//!
//! tracefs rather than a BPF ring buffer: the same events on every kernel the lanes boot,
//! including the dmem kernel, which has no BPF syscall; on Android, kprobe events are usually
//! off in user builds, so the close side there needs a BPF program instead (not built).

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use super::error::KernelError;

/// The instance and the probe's event group.
const NAME: &str = "chargetransfer";
/// include/uapi/linux/magic.h: the dma-buf pseudo filesystem's superblock magic.
const DMA_BUF_MAGIC: u64 = 0x444d_4142;
const CLOSE_EVENT: &str = "fd_close";
const RECV_EVENT: &str = "binder_transaction_fd_recv";

/// One event; `tid` is the thread's id (tracefs records threads, not processes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandoffEvent {
    /// A thread closed an fd; `inode` where the kernel could say which dma-buf.
    Closed { tid: u32, inode: Option<u64> },
    /// A thread received an fd in a binder transaction.
    Received { tid: u32 },
}

/// The open event stream.
pub struct HandoffEvents {
    pipe: BufReader<File>,
    /// Whether closes are filtered to dma-bufs in the kernel (the probe could read the file).
    filtered: bool,
    /// Whether the binder driver's tracepoint is enabled (binder loaded, tracepoints built in).
    binder: bool,
}

fn io_err(path: &Path, source: std::io::Error) -> KernelError {
    KernelError::Io { path: path.to_path_buf(), source }
}

/// Writes `data` in one write (tracefs control files parse each write whole).
fn put(path: &Path, data: &str, append: bool) -> Result<(), KernelError> {
    let mut f =
        OpenOptions::new().write(true).append(append).truncate(!append).open(path).map_err(|e| io_err(path, e))?;
    f.write_all(data.as_bytes()).map_err(|source| KernelError::Write {
        path: path.to_path_buf(),
        data: data.into(),
        source,
    })
}

impl HandoffEvents {
    /// Sets up the probe and the instance under `tracefs` and opens the instance's trace_pipe;
    /// `btf` is the kernel's type information (`/sys/kernel/btf/vmlinux`).
    /// Leftovers of a previous run of the service (killed before it could tidy up) are removed
    /// first. The error says what is missing; the caller then relies on the periodic reconcile.
    pub fn open(tracefs: &Path, btf: &Path) -> Result<HandoffEvents, KernelError> {
        let instance = tracefs.join("instances").join(NAME);
        let probes = tracefs.join("kprobe_events");
        if instance.exists() {
            fs::remove_dir(&instance).map_err(|e| io_err(&instance, e))?;
        }
        let _ = put(&probes, &format!("-:{NAME}/{CLOSE_EVENT}\n"), true);
        let typed = format!(
            "r:{NAME}/{CLOSE_EVENT} file_close_fd magic=$retval->f_inode->i_sb->s_magic:u64 ino=$retval->f_inode->i_ino:u64\n"
        );
        // Without BTF a kernel may still take the typed definition and read garbage: ask for
        // the fields only where the kernel has the types to resolve them.
        let filtered = btf.exists() && put(&probes, &typed, true).is_ok();
        if !filtered {
            put(&probes, &format!("r:{NAME}/{CLOSE_EVENT} file_close_fd\n"), true)?;
        }
        fs::create_dir(&instance).map_err(|e| io_err(&instance, e))?;
        let close = instance.join("events").join(NAME).join(CLOSE_EVENT);
        if filtered {
            put(&close.join("filter"), &format!("magic == {DMA_BUF_MAGIC}\n"), false)?;
        }
        put(&close.join("enable"), "1\n", false)?;
        let binder = put(&instance.join("events/binder").join(RECV_EVENT).join("enable"), "1\n", false).is_ok();
        let path = instance.join("trace_pipe");
        let pipe = BufReader::new(File::open(&path).map_err(|e| io_err(&path, e))?);
        Ok(HandoffEvents { pipe, filtered, binder })
    }

    /// One line for logs and `chargectl probe`.
    pub fn describe(&self) -> String {
        format!(
            "tracefs events: fd closes ({}), binder fd receipts ({})",
            if self.filtered { "dma-bufs only, with inode" } else { "every fd, no BTF to filter by" },
            if self.binder { "on" } else { "off: no binder tracepoint" }
        )
    }

    /// The next event, blocking until the kernel has one; `None` once the pipe fails.
    pub fn next_event(&mut self) -> Option<HandoffEvent> {
        let mut line = String::new();
        loop {
            line.clear();
            match self.pipe.read_line(&mut line) {
                Ok(0) | Err(_) => return None,
                Ok(_) => {
                    if let Some(event) = parse_line(&line) {
                        return Some(event);
                    }
                }
            }
        }
    }
}

/// One trace_pipe line, e.g.
/// `app-1234 [001] ..... 12.345678: fd_close: (__x64_sys_close+0x1c/0x70 <- file_close_fd) magic=1145913666 ino=77`
/// or `binder:1234_2-1240 [000] ..... 12.4: binder_transaction_fd_recv: transaction=9 dest_fd=5 offset=0`.
pub fn parse_line(line: &str) -> Option<HandoffEvent> {
    let (head, event, rest) = [CLOSE_EVENT, RECV_EVENT].iter().find_map(|name| {
        let at = line.find(&format!(": {name}: "))?;
        Some((&line[..at], *name, &line[at + name.len() + 4..]))
    })?;
    let tid = tid_of(head)?;
    if event == RECV_EVENT {
        return Some(HandoffEvent::Received { tid });
    }
    let field =
        |key: &str| rest.split_whitespace().find_map(|w| w.strip_prefix(key)).and_then(|v| v.parse::<u64>().ok());
    let inode = match field("magic=") {
        Some(DMA_BUF_MAGIC) => field("ino="),
        Some(_) => return None,
        None => None,
    };
    Some(HandoffEvent::Closed { tid, inode })
}

/// The thread id in a line's head, `comm-TID [CPU] flags timestamp` (comm may hold anything):
/// the text before the last `[digits]`, after its last `-`.
fn tid_of(head: &str) -> Option<u32> {
    let cpu = head.match_indices(" [").map(|(i, _)| i).filter(|&i| {
        let digits = &head[i + 2..];
        digits.find(']').is_some_and(|end| end > 0 && digits[..end].bytes().all(|b| b.is_ascii_digit()))
    });
    let task = head[..cpu.last()?].trim_end();
    let task = task.strip_suffix(')').and_then(|t| t.rsplit_once(" (")).map_or(task, |(t, _)| t.trim_end());
    task.rsplit_once('-')?.1.parse().ok()
}

/// The process (thread group) of thread `tid`, from /proc/TID/status; `None` if it is gone.
pub fn tgid_of(proc_root: &Path, tid: u32) -> Option<u32> {
    let path: PathBuf = proc_root.join(tid.to_string()).join("status");
    let status = fs::read_to_string(path).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dma_buf_close_gives_its_thread_and_inode() {
        let line = "   my-app-a [b]-1234  [001] ..... 12.345678: fd_close: (__x64_sys_close+0x1c/0x70 <- file_close_fd) magic=1145913666 ino=77\n";
        assert_eq!(parse_line(line), Some(HandoffEvent::Closed { tid: 1234, inode: Some(77) }));
    }

    #[test]
    fn another_file_s_close_is_dropped_and_an_untyped_one_kept() {
        let other = "sh-9 [000] ..... 1.0: fd_close: (x <- file_close_fd) magic=61267 ino=5";
        assert_eq!(parse_line(other), None);
        let untyped = "sh-9 (9) [000] ..... 1.0: fd_close: (x <- file_close_fd)";
        assert_eq!(parse_line(untyped), Some(HandoffEvent::Closed { tid: 9, inode: None }));
    }

    #[test]
    fn a_binder_receipt_gives_the_receiving_thread() {
        let line = "binder:1234_2-1240 [000] ..... 12.4: binder_transaction_fd_recv: transaction=9 dest_fd=5 offset=0";
        assert_eq!(parse_line(line), Some(HandoffEvent::Received { tid: 1240 }));
        assert_eq!(parse_line("cat-3 [000] ..... 1.0: sched_switch: prev_comm=cat"), None);
    }

    #[test]
    fn the_thread_group_comes_from_proc() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("1240")).unwrap();
        fs::write(dir.path().join("1240/status"), "Name:\tbinder\nTgid:\t1234\nPid:\t1240\n").unwrap();
        assert_eq!(tgid_of(dir.path(), 1240), Some(1234));
        assert_eq!(tgid_of(dir.path(), 1241), None);
    }
}
