//! The binary records holders.bpf.c writes, and how the iterators' reads of them make one
//! [`DmaBufScan`].
//!
//! Layouts are the C structs' (native endian, no padding); a read that ends inside a record is a
//! [`KernelError::Parse`], never a shorter view.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use super::radix;
use crate::kernel::error::KernelError;
use crate::kernel::view::{Builder, DmaBufScan, Holder};

/// `struct buffer_record`'s header: inode, size, mapped, exporter_len, name_len; then the two
/// strings.
const BUFFER: usize = 8 + 8 + 1 + 1 + 1;
/// `struct fd_record`: tgid, fd, inode.
const FD: usize = 4 + 4 + 8;
/// `struct vma_record`: tgid, tid, start, inode.
const VMA: usize = 4 + 4 + 8 + 8;
/// `struct process_record`: tgid.
const PROCESS: usize = 4;

/// What the iterators returned, each read whole (`mappings` empty when it was not read).
pub(super) struct Reads<'a> {
    pub buffers: Listed,
    /// iter/task_file's records as [`holders`] sorted them.
    pub held: Vec<Held>,
    pub mappings: &'a [u8],
    pub processes: &'a [u8],
}

/// One fd or mapping of a buffer: (inode, tgid, is a mapping). Sorted, a buffer's holders are
/// one run, by process.
pub(super) type Held = (u64, u32, bool);

/// One `struct buffer_record` with its strings.
#[derive(Clone, Copy, Debug)]
struct Buffer<'a> {
    inode: u64,
    size: u64,
    mapped: bool,
    exporter: &'a [u8],
    name: &'a [u8],
}

/// iter/dmabuf's buffers in a view still without holders.
pub(super) struct Listed {
    view: Builder,
    /// Some buffer was mapped when listed: iter/task_vma must be read.
    pub mapped: bool,
}

fn u32_at(r: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(r[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(r: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(r[at..at + 8].try_into().expect("8 bytes"))
}

/// A string field; empty means absent.
fn string(field: &[u8]) -> Option<Cow<'_, str>> {
    (!field.is_empty())
        .then(|| std::str::from_utf8(field).map_or_else(|_| String::from_utf8_lossy(field), Cow::Borrowed))
}

fn records<'a>(iter: &str, bytes: &'a [u8], size: usize) -> Result<std::slice::ChunksExact<'a, u8>, KernelError> {
    if !bytes.len().is_multiple_of(size) {
        let reason = format!("{} bytes is not a whole number of {size}-byte records", bytes.len());
        return Err(KernelError::parse(Path::new(iter), 0, reason));
    }
    Ok(bytes.chunks_exact(size))
}

/// iter/dmabuf's records by inode, with their strings (on the scanning thread, while
/// iter/task_file is still read on another).
pub(super) fn listed(bytes: &[u8]) -> Result<Listed, KernelError> {
    // Where each record starts is sorted, not the records: a fraction of their size, and each
    // record is decoded once, in order.
    let mut starts = record_starts(bytes)?;
    radix::sort_by_key(&mut starts, |s| s.0);
    let mut view = Builder::with_capacity(starts.len());
    let mut mapped = false;
    for &(_, at) in &starts {
        let b = Buffer::at(bytes, at);
        mapped |= b.mapped;
        view.buffer(b.inode, b.size, string(b.exporter).as_deref(), string(b.name).as_deref());
    }
    Ok(Listed { view, mapped })
}

/// Each iter/dmabuf record's inode and where it starts, in the order read.
fn record_starts(bytes: &[u8]) -> Result<Vec<(u64, usize)>, KernelError> {
    let mut out = Vec::with_capacity(bytes.len() / (BUFFER + 8));
    let mut at = 0;
    while at < bytes.len() {
        let lengths = bytes.get(at + BUFFER - 2..at + BUFFER);
        match lengths.map(|l| at + BUFFER + usize::from(l[0]) + usize::from(l[1])) {
            Some(end) if end <= bytes.len() => {
                out.push((u64_at(bytes, at), at));
                at = end;
            }
            _ => {
                let reason = format!("a record cut short at byte {at} of {}", bytes.len());
                return Err(KernelError::parse(Path::new("iter/dmabuf"), 0, reason));
            }
        }
    }
    Ok(out)
}

impl<'a> Buffer<'a> {
    /// The record starting at `at`, one of [`record_starts`].
    fn at(bytes: &'a [u8], at: usize) -> Buffer<'a> {
        let r = &bytes[at..];
        let exporter_end = BUFFER + usize::from(r[BUFFER - 2]);
        let name_end = exporter_end + usize::from(r[BUFFER - 1]);
        Buffer {
            inode: u64_at(r, 0),
            size: u64_at(r, 8),
            mapped: r[16] != 0,
            exporter: &r[BUFFER..exporter_end],
            name: &r[exporter_end..name_end],
        }
    }
}

/// The fds of iter/task_file's records, sorted (on the reading thread, while iter/dmabuf is
/// read).
pub(super) fn holders(fds: &[u8]) -> Result<Vec<Held>, KernelError> {
    let mut held: Vec<Held> =
        records("iter/task_file", fds, FD)?.map(|r| (u64_at(r, 8), u32_at(r, 0), false)).collect();
    sort(&mut held);
    Ok(held)
}

/// By inode, then process, then fds before mappings.
fn sort(held: &mut Vec<Held>) {
    radix::sort_by_key(held, |h| u64::from(h.1) << 1 | u64::from(h.2));
    radix::sort_by_key(held, |h| h.0);
}

/// The view from the iterators' records: a buffer is in it when iter/dmabuf listed it and a
/// holder was found (an fd in iter/task_file, a mapping in iter/task_vma).
///
/// The fd and buffer walks run at the same time (see
/// [`BpfScanner::scan_all_timed`](super::BpfScanner::scan_all_timed)): each sees each task or
/// buffer at a moment of its own, in no order to the other's. So:
/// - a holder whose inode iter/dmabuf did not list held a buffer freed before that walk reached
///   it, or created after the walk had passed: dropped, as the buffer's record is unknown. A
///   freed buffer is gone for any later scan too; a new one is in the next scan, as a buffer
///   created just after this one would be;
/// - a listed buffer without a holder was created after the fd walk passed its holders, or let
///   go before the walk reached them: left out, as a buffer nobody holds.
///
/// A buffer live and held throughout the scan is in it with every holder; one created or freed
/// while the scan ran may be missing, as with the walks one after the other (the order of the
/// reads only decides which of the two it misses). Callers must not take such a buffer's absence
/// for its release: reconcile releases only buffers it knew before the scan.
///
/// Mappings are read after the buffers (only if one was mapped then): a buffer mapped but
/// without an fd when the fds were listed was already mapped when the buffers were, and a mapping
/// of a buffer newer than the list is dropped like any holder of an unlisted buffer. Threads of
/// one process share its mappings: only the first thread that reports a process's mappings is
/// counted.
///
/// Built for 100k buffers: the holders are one sorted vector merged with the buffers already in
/// the view by inode (no per-record tree search).
pub(super) fn assemble(reads: Reads<'_>) -> Result<DmaBufScan, KernelError> {
    let vmas = records("iter/task_vma", reads.mappings, VMA)?;
    let mut held = reads.held;
    if vmas.len() > 0 {
        let mut mapping_thread: HashMap<u32, u32> = HashMap::new();
        for r in vmas {
            let (tgid, tid) = (u32_at(r, 0), u32_at(r, 4));
            if *mapping_thread.entry(tgid).or_insert(tid) == tid {
                held.push((u64_at(r, 16), tgid, true));
            }
        }
        sort(&mut held);
    }
    let per_process = held.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)).map(|run| {
        let maps = run.iter().filter(|h| h.2).count() as u32;
        (run[0].0, run[0].1, Holder { fd_count: run.len() as u32 - maps, map_count: maps })
    });
    let buffers = reads.buffers.view.holders(per_process);
    let processes = records("iter/task", reads.processes, PROCESS)?.len();
    Ok(DmaBufScan { buffers, processes, ..Default::default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(inode: u64, size: u64, exporter: &str, name: &str) -> Vec<u8> {
        mapped_buffer(inode, size, false, exporter, name)
    }

    fn mapped_buffer(inode: u64, size: u64, mapped: bool, exporter: &str, name: &str) -> Vec<u8> {
        let header = [u8::from(mapped), exporter.len() as u8, name.len() as u8];
        [&inode.to_ne_bytes(), &size.to_ne_bytes(), header.as_slice(), exporter.as_bytes(), name.as_bytes()].concat()
    }

    fn fd(tgid: u32, fd: u32, inode: u64) -> Vec<u8> {
        [tgid.to_ne_bytes().as_slice(), &fd.to_ne_bytes(), &inode.to_ne_bytes()].concat()
    }

    fn vma(tgid: u32, tid: u32, start: u64, inode: u64) -> Vec<u8> {
        [tgid.to_ne_bytes().as_slice(), &tid.to_ne_bytes(), &start.to_ne_bytes(), &inode.to_ne_bytes()].concat()
    }

    fn scan(buffers: &[Vec<u8>], fds: &[Vec<u8>], vmas: &[Vec<u8>]) -> Result<DmaBufScan, KernelError> {
        let (b, f, m) = (buffers.concat(), fds.concat(), vmas.concat());
        assemble(Reads { buffers: listed(&b)?, held: holders(&f)?, mappings: &m, processes: &[0; 12] })
    }

    #[test]
    fn fds_and_mappings_of_one_buffer_are_counted_per_process() {
        let s = scan(
            &[buffer(7, 4096, "system", "frame")],
            &[fd(10, 3, 7), fd(10, 4, 7), fd(11, 5, 7)],
            &[vma(11, 11, 0x1000, 7), vma(12, 12, 0x1000, 7)],
        )
        .unwrap();
        let b = s.buffers.get(7).unwrap();
        assert_eq!((b.size, b.exporter, b.name), (4096, Some("system"), Some("frame")));
        let h: Vec<_> = b.holders.iter().map(|(p, h)| (p, h.fd_count, h.map_count)).collect();
        assert_eq!(h, [(10, 2, 0), (11, 1, 1), (12, 0, 1)]);
        assert_eq!(s.processes, 3);
        assert!(s.is_complete());
    }

    #[test]
    fn an_unnamed_buffer_has_no_name_and_unheld_buffers_are_left_out() {
        let s = scan(&[buffer(7, 4096, "system", ""), buffer(8, 8192, "system", "")], &[fd(10, 3, 7)], &[]).unwrap();
        assert_eq!(s.buffers.inodes().collect::<Vec<_>>(), [7]);
        assert_eq!(s.buffers.get(7).unwrap().name, None);
    }

    #[test]
    fn a_holder_of_a_buffer_the_buffer_walk_did_not_list_is_dropped() {
        // Inode 9 was freed before the buffer walk reached it, or created after it had passed
        // (the walks run at once): either way only its holder was seen.
        let s =
            scan(&[buffer(7, 4096, "system", "")], &[fd(10, 3, 7), fd(10, 4, 9)], &[vma(11, 11, 0x1000, 9)]).unwrap();
        assert_eq!(s.buffers.inodes().collect::<Vec<_>>(), [7]);
        assert_eq!(
            s.buffers.get(7).unwrap().holders.iter().collect::<Vec<_>>(),
            [(10, Holder { fd_count: 1, map_count: 0 })]
        );
    }

    #[test]
    fn a_buffer_listed_after_its_holders_let_go_or_before_they_got_it_is_left_out() {
        // Inode 8 was listed, but the fd walk passed process 10 before it got an fd of it (or
        // after it closed it): left out as a buffer nobody holds, the others untouched.
        let s = scan(&[buffer(8, 4096, "system", ""), buffer(7, 4096, "system", "")], &[fd(10, 3, 7)], &[]).unwrap();
        assert_eq!(s.buffers.inodes().collect::<Vec<_>>(), [7]);
    }

    #[test]
    fn the_view_does_not_depend_on_the_order_the_walks_returned_records_in() {
        let buffers = [buffer(7, 4096, "system", "a"), buffer(9, 8192, "cma", ""), buffer(8, 4096, "system", "")];
        let fds = [fd(12, 3, 9), fd(10, 3, 7), fd(11, 5, 8), fd(10, 4, 9), fd(11, 6, 7)];
        type Seen<'a> = (u64, u64, Option<&'a str>, Option<&'a str>, Vec<(u32, Holder)>);
        fn seen(s: &DmaBufScan) -> Vec<Seen<'_>> {
            s.buffers.iter().map(|b| (b.inode, b.size, b.exporter, b.name, b.holders.iter().collect())).collect()
        }
        let first = scan(&buffers, &fds, &[]).unwrap();
        assert_eq!(first.buffers.inodes().collect::<Vec<_>>(), [7, 8, 9]);
        let (mut b, mut f) = (buffers.to_vec(), fds.to_vec());
        for turn in 0..6 {
            b.rotate_left(1);
            f.rotate_left(2);
            if turn % 2 == 1 {
                f.reverse();
            }
            assert_eq!(seen(&scan(&b, &f, &[]).unwrap()), seen(&first), "turn {turn}");
        }
    }

    #[test]
    fn threads_of_one_process_count_its_mappings_once() {
        let s = scan(
            &[buffer(7, 4096, "system", "")],
            &[],
            &[vma(10, 10, 0x1000, 7), vma(10, 10, 0x9000, 7), vma(10, 13, 0x1000, 7)],
        )
        .unwrap();
        assert_eq!(s.buffers.get(7).unwrap().holders.get(10), Some(Holder { fd_count: 0, map_count: 2 }));
    }

    #[test]
    fn buffer_records_carry_their_strings_and_whether_they_are_mapped() {
        let bytes = [mapped_buffer(7, 4096, true, "system", "frame"), buffer(8, 8192, "cma", "")].concat();
        let starts = record_starts(&bytes).unwrap();
        let seen: Vec<_> = starts
            .iter()
            .map(|&(inode, at)| (inode, Buffer::at(&bytes, at)))
            .map(|(inode, b)| (inode, b.inode, b.size, b.mapped, b.exporter, b.name))
            .collect();
        let expected = [(7, 7, 4096, true, &b"system"[..], &b"frame"[..]), (8, 8, 8192, false, &b"cma"[..], &b""[..])];
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_buffer_record_cut_short_is_a_parse_error() {
        for cut in [1, 10] {
            let mut bytes = buffer(7, 4096, "system", "frame");
            bytes.truncate(bytes.len() - cut);
            let e = listed(&bytes).err().unwrap();
            assert!(e.to_string().starts_with("iter/dmabuf: a record cut short at byte 0"), "{e}");
        }
    }

    #[test]
    fn a_torn_record_is_a_parse_error_naming_the_iterator() {
        let mut fds = fd(10, 3, 7);
        fds.pop();
        let e = scan(&[buffer(7, 4096, "system", "")], &[fds], &[]).unwrap_err();
        assert!(e.to_string().starts_with("iter/task_file: 15 bytes"), "{e}");
    }
}
