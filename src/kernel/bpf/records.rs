//! The binary records holders.bpf.c writes, and how four reads of them make one [`DmaBufScan`].
//!
//! Layouts are the C structs' (native endian, no padding); a read whose length is not a whole
//! number of records is a [`KernelError::Parse`], never a shorter view.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::kernel::error::KernelError;
use crate::kernel::procfs::{DmaBufScan, Holder, ScannedBuffer};

/// `struct buffer_record`: inode, size, exporter[64], name[32].
const BUFFER: usize = 8 + 8 + 64 + 32;
/// `struct fd_record`: tgid, fd, inode.
const FD: usize = 4 + 4 + 8;
/// `struct vma_record`: tgid, tid, start, inode.
const VMA: usize = 4 + 4 + 8 + 8;
/// `struct process_record`: tgid.
const PROCESS: usize = 4;

/// What the four iterators returned, each read whole.
pub(super) struct Reads<'a> {
    pub buffers: &'a [u8],
    pub fds: &'a [u8],
    pub mappings: &'a [u8],
    pub processes: &'a [u8],
}

fn u32_at(r: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(r[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(r: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(r[at..at + 8].try_into().expect("8 bytes"))
}

/// A NUL-terminated C string field; empty means absent.
fn c_string(field: &[u8]) -> Option<String> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    (end > 0).then(|| String::from_utf8_lossy(&field[..end]).into_owned())
}

fn records<'a>(iter: &str, bytes: &'a [u8], size: usize) -> Result<std::slice::ChunksExact<'a, u8>, KernelError> {
    if !bytes.len().is_multiple_of(size) {
        let reason = format!("{} bytes is not a whole number of {size}-byte records", bytes.len());
        return Err(KernelError::parse(Path::new(iter), 0, reason));
    }
    Ok(bytes.chunks_exact(size))
}

/// Holders are read before buffers, so every buffer still held when its holders were listed is
/// in the buffer list; a holder whose buffer is not there anymore held a buffer freed meanwhile
/// and is dropped, as a later procfs scan would not see it either. Threads of one process share
/// its mappings: only the first thread that reports a process's mappings is counted.
pub(super) fn assemble(reads: Reads<'_>) -> Result<DmaBufScan, KernelError> {
    let mut holders: BTreeMap<u64, BTreeMap<u32, Holder>> = BTreeMap::new();
    for r in records("iter/task_file", reads.fds, FD)? {
        holders.entry(u64_at(r, 8)).or_default().entry(u32_at(r, 0)).or_default().fd_count += 1;
    }
    let mut mapping_thread: HashMap<u32, u32> = HashMap::new();
    for r in records("iter/task_vma", reads.mappings, VMA)? {
        let (tgid, tid) = (u32_at(r, 0), u32_at(r, 4));
        if *mapping_thread.entry(tgid).or_insert(tid) != tid {
            continue;
        }
        holders.entry(u64_at(r, 16)).or_default().entry(tgid).or_default().map_count += 1;
    }
    let mut scan =
        DmaBufScan { processes: records("iter/task", reads.processes, PROCESS)?.len(), ..Default::default() };
    for r in records("iter/dmabuf", reads.buffers, BUFFER)? {
        let Some(held) = holders.remove(&u64_at(r, 0)) else { continue };
        let buffer = ScannedBuffer {
            size: u64_at(r, 8),
            exporter: c_string(&r[16..80]),
            name: c_string(&r[80..112]),
            holders: held,
        };
        scan.buffers.insert(u64_at(r, 0), buffer);
    }
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(inode: u64, size: u64, exporter: &str, name: &str) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend(inode.to_ne_bytes());
        r.extend(size.to_ne_bytes());
        let mut field = |s: &str, len: usize| {
            let mut f = s.as_bytes().to_vec();
            f.resize(len, 0);
            r.extend(f);
        };
        field(exporter, 64);
        field(name, 32);
        r
    }

    fn fd(tgid: u32, fd: u32, inode: u64) -> Vec<u8> {
        [tgid.to_ne_bytes().as_slice(), &fd.to_ne_bytes(), &inode.to_ne_bytes()].concat()
    }

    fn vma(tgid: u32, tid: u32, start: u64, inode: u64) -> Vec<u8> {
        [tgid.to_ne_bytes().as_slice(), &tid.to_ne_bytes(), &start.to_ne_bytes(), &inode.to_ne_bytes()].concat()
    }

    fn scan(buffers: &[Vec<u8>], fds: &[Vec<u8>], vmas: &[Vec<u8>]) -> Result<DmaBufScan, KernelError> {
        let (b, f, m) = (buffers.concat(), fds.concat(), vmas.concat());
        assemble(Reads { buffers: &b, fds: &f, mappings: &m, processes: &[0; 12] })
    }

    #[test]
    fn fds_and_mappings_of_one_buffer_are_counted_per_process() {
        let s = scan(
            &[buffer(7, 4096, "system", "frame")],
            &[fd(10, 3, 7), fd(10, 4, 7), fd(11, 5, 7)],
            &[vma(11, 11, 0x1000, 7), vma(12, 12, 0x1000, 7)],
        )
        .unwrap();
        let b = &s.buffers[&7];
        assert_eq!((b.size, b.exporter.as_deref(), b.name.as_deref()), (4096, Some("system"), Some("frame")));
        let h: Vec<_> = b.holders.iter().map(|(p, h)| (*p, h.fd_count, h.map_count)).collect();
        assert_eq!(h, [(10, 2, 0), (11, 1, 1), (12, 0, 1)]);
        assert_eq!(s.processes, 3);
        assert!(s.is_complete());
    }

    #[test]
    fn an_unnamed_buffer_has_no_name_and_unheld_buffers_are_left_out() {
        let s = scan(&[buffer(7, 4096, "system", ""), buffer(8, 8192, "system", "")], &[fd(10, 3, 7)], &[]).unwrap();
        assert_eq!(s.buffers.keys().copied().collect::<Vec<_>>(), [7]);
        assert_eq!(s.buffers[&7].name, None);
    }

    #[test]
    fn a_holder_of_a_buffer_freed_before_the_buffer_list_is_dropped() {
        let s = scan(&[buffer(7, 4096, "system", "")], &[fd(10, 3, 7), fd(10, 4, 9)], &[]).unwrap();
        assert!(!s.buffers.contains_key(&9));
    }

    #[test]
    fn threads_of_one_process_count_its_mappings_once() {
        let s = scan(
            &[buffer(7, 4096, "system", "")],
            &[],
            &[vma(10, 10, 0x1000, 7), vma(10, 10, 0x9000, 7), vma(10, 13, 0x1000, 7)],
        )
        .unwrap();
        assert_eq!(s.buffers[&7].holders[&10], Holder { fd_count: 0, map_count: 2 });
    }

    #[test]
    fn a_torn_record_is_a_parse_error_naming_the_iterator() {
        let mut fds = fd(10, 3, 7);
        fds.pop();
        let e = scan(&[buffer(7, 4096, "system", "")], &[fds], &[]).unwrap_err();
        assert!(e.to_string().starts_with("iter/task_file: 15 bytes"), "{e}");
    }
}
