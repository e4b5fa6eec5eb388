//! The view a scan gives of who holds which dma-buf: every buffer some process holds by an fd or
//! a mapping, with its size, exporter, name and holders, as both scan backends (BPF, procfs)
//! build it.
//!
//! Flat, because a scan builds one at every reconcile and a phone has ~10k buffers: the buffers
//! are one vector sorted by inode, their holders one vector sorted by (inode, pid) and sliced
//! per buffer, the strings one arena where each exporter is stored once. A view is a handful of
//! allocations whatever its size, looked up by inode (binary search) and iterated in inode order.

use std::fmt;

use super::error::KernelError;
use crate::ledger::Inode;

/// How one process holds one buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Holder {
    pub fd_count: u32,
    pub map_count: u32,
}

/// Every dma-buf held by a process at scan time.
#[derive(Debug, Default)]
pub struct DmaBufScan {
    pub buffers: ScannedBuffers,
    /// Processes read completely.
    pub processes: usize,
    /// Processes that exited while being read (normal; their buffers are no longer theirs).
    pub vanished: Vec<u32>,
    /// Processes that could not be read (EACCES without root, a malformed file). Their buffers
    /// are missing from `buffers`: a scan with errors must not be taken as proof that a buffer
    /// is gone.
    pub errors: Vec<(u32, KernelError)>,
}

impl DmaBufScan {
    /// Every listed process was read or had exited.
    pub fn is_complete(&self) -> bool {
        self.errors.is_empty()
    }
}

/// The buffers of one scan, by inode.
#[derive(Clone, Default)]
pub struct ScannedBuffers {
    /// Sorted by inode, unique.
    entries: Vec<Entry>,
    /// Each entry's holders, in entry order, each run sorted by pid.
    holders: Vec<(u32, Holder)>,
    text: String,
}

#[derive(Clone, Copy)]
struct Entry {
    inode: Inode,
    size: u64,
    exporter: Text,
    name: Text,
    /// Where this entry's holders end in `holders` (they start where the previous entry's end).
    holders_end: usize,
}

/// A string in the arena; `start == u32::MAX` when absent.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Text {
    start: u32,
    end: u32,
}

impl Text {
    const NONE: Text = Text { start: u32::MAX, end: u32::MAX };
}

/// One buffer across the system, borrowed from its [`ScannedBuffers`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScannedBuffer<'a> {
    pub inode: Inode,
    pub size: u64,
    /// Known once any holder has an fd of it (procfs), always (BPF).
    pub exporter: Option<&'a str>,
    pub name: Option<&'a str>,
    pub holders: Holders<'a>,
}

/// The processes holding one buffer, by pid.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Holders<'a>(&'a [(u32, Holder)]);

impl<'a> Holders<'a> {
    pub fn get(self, pid: u32) -> Option<Holder> {
        self.0.binary_search_by_key(&pid, |h| h.0).ok().map(|i| self.0[i].1)
    }

    pub fn contains(self, pid: u32) -> bool {
        self.get(pid).is_some()
    }

    /// Ascending.
    pub fn pids(self) -> impl DoubleEndedIterator<Item = u32> + 'a {
        self.0.iter().map(|h| h.0)
    }

    /// By ascending pid.
    pub fn iter(self) -> impl DoubleEndedIterator<Item = (u32, Holder)> + 'a {
        self.0.iter().copied()
    }

    pub fn len(self) -> usize {
        self.0.len()
    }

    pub fn is_empty(self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Holders<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter().map(|(pid, h)| (pid, h))).finish()
    }
}

impl ScannedBuffers {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, inode: Inode) -> Option<ScannedBuffer<'_>> {
        self.entries.binary_search_by_key(&inode, |e| e.inode).ok().map(|i| self.at(i))
    }

    pub fn contains(&self, inode: Inode) -> bool {
        self.entries.binary_search_by_key(&inode, |e| e.inode).is_ok()
    }

    /// In inode order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = ScannedBuffer<'_>> + ExactSizeIterator + '_ {
        (0..self.entries.len()).map(|i| self.at(i))
    }

    /// Ascending.
    pub fn inodes(&self) -> impl DoubleEndedIterator<Item = Inode> + ExactSizeIterator + '_ {
        self.entries.iter().map(|e| e.inode)
    }

    fn at(&self, i: usize) -> ScannedBuffer<'_> {
        let e = &self.entries[i];
        let start = i.checked_sub(1).map_or(0, |p| self.entries[p].holders_end);
        ScannedBuffer {
            inode: e.inode,
            size: e.size,
            exporter: self.text(e.exporter),
            name: self.text(e.name),
            holders: Holders(&self.holders[start..e.holders_end]),
        }
    }

    fn text(&self, t: Text) -> Option<&str> {
        (t != Text::NONE).then(|| &self.text[t.start as usize..t.end as usize])
    }
}

impl fmt::Debug for ScannedBuffers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// At most this many distinct exporters are stored once each (a device has a few heaps and
/// drivers); any further ones are stored per buffer, so the search for one stays short.
const SHARED_EXPORTERS: usize = 64;

/// Builds [`ScannedBuffers`] in two steps: the buffers in increasing inode order, then
/// [`Builder::holders`] with every holder in increasing (inode, pid) order, where a buffer
/// given no holder is left out. The BPF backend lists buffers while its holders are still being
/// read and sorted on another thread, so only the merge waits for both. (A builder given either
/// out of order builds a view whose lookups miss: the backends sort first.)
#[derive(Default)]
pub(crate) struct Builder {
    view: ScannedBuffers,
    exporters: Vec<Text>,
}

impl Builder {
    pub fn with_capacity(buffers: usize) -> Builder {
        let view = ScannedBuffers { entries: Vec::with_capacity(buffers), holders: Vec::new(), text: String::new() };
        Builder { view, exporters: Vec::new() }
    }

    pub fn buffer(&mut self, inode: Inode, size: u64, exporter: Option<&str>, name: Option<&str>) {
        debug_assert!(self.view.entries.last().is_none_or(|e| e.inode < inode), "buffers out of inode order");
        let exporter = exporter.map_or(Text::NONE, |e| self.exporter(e));
        let name = name.map_or(Text::NONE, |n| self.push_text(n));
        self.view.entries.push(Entry { inode, size, exporter, name, holders_end: 0 });
    }

    /// The view of the buffers given that have a holder here: `(inode, pid, holder)`, one per
    /// process holding a buffer. A holder of a buffer not given is dropped.
    pub fn holders(self, holders: impl IntoIterator<Item = (Inode, u32, Holder)>) -> ScannedBuffers {
        let mut view = self.view;
        // Most buffers have one holder.
        view.holders.reserve(view.entries.len());
        let mut holders = holders.into_iter();
        let mut next = holders.next();
        let mut kept = 0;
        for i in 0..view.entries.len() {
            let inode = view.entries[i].inode;
            let start = view.holders.len();
            while let Some((at, pid, holder)) = next {
                if at > inode {
                    break;
                }
                if at == inode {
                    debug_assert!(view.holders[start..].last().is_none_or(|h| h.0 < pid), "holders out of pid order");
                    view.holders.push((pid, holder));
                }
                next = holders.next();
            }
            if view.holders.len() > start {
                view.entries[kept] = Entry { holders_end: view.holders.len(), ..view.entries[i] };
                kept += 1;
            }
        }
        view.entries.truncate(kept);
        view
    }

    fn exporter(&mut self, exporter: &str) -> Text {
        let view = &self.view;
        if let Some(t) = self.exporters.iter().rev().find(|t| view.text(**t) == Some(exporter)) {
            return *t;
        }
        let t = self.push_text(exporter);
        if self.exporters.len() < SHARED_EXPORTERS {
            self.exporters.push(t);
        }
        t
    }

    fn push_text(&mut self, s: &str) -> Text {
        let start = self.view.text.len();
        self.view.text.push_str(s);
        let end = self.view.text.len();
        // Past 4 GiB of strings (never, from a kernel's short names) a string reads as absent.
        match (u32::try_from(start), u32::try_from(end)) {
            (Ok(start), Ok(end)) if end < u32::MAX => Text { start, end },
            _ => Text::NONE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(fd_count: u32, map_count: u32) -> Holder {
        Holder { fd_count, map_count }
    }

    fn view() -> ScannedBuffers {
        let mut b = Builder::default();
        b.buffer(3, 4096, Some("system"), None);
        b.buffer(9, 8192, None, Some("frame"));
        b.buffer(20, 16384, Some("system"), Some("camera"));
        b.holders([(3, 10, holder(1, 0)), (3, 12, holder(0, 2)), (9, 11, holder(2, 1)), (20, 10, holder(1, 1))])
    }

    #[test]
    fn buffers_are_found_by_inode_with_their_own_holders() {
        let v = view();
        assert_eq!(v.len(), 3);
        let b = v.get(3).unwrap();
        assert_eq!((b.inode, b.size, b.exporter, b.name), (3, 4096, Some("system"), None));
        assert_eq!(b.holders.iter().collect::<Vec<_>>(), [(10, holder(1, 0)), (12, holder(0, 2))]);
        assert_eq!(b.holders.get(12), Some(holder(0, 2)));
        assert!(!b.holders.contains(11), "pid 11 holds another buffer");
        let b = v.get(9).unwrap();
        assert_eq!((b.exporter, b.name, b.holders.pids().collect::<Vec<_>>()), (None, Some("frame"), vec![11]));
        let b = v.get(20).unwrap();
        assert_eq!((b.exporter, b.name, b.holders.len()), (Some("system"), Some("camera"), 1));
        for missing in [0, 4, 19, 21] {
            assert!(v.get(missing).is_none() && !v.contains(missing), "{missing}");
        }
    }

    #[test]
    fn iteration_is_in_inode_order_and_an_exporter_is_stored_once() {
        let v = view();
        assert_eq!(v.inodes().collect::<Vec<_>>(), [3, 9, 20]);
        assert_eq!(v.iter().map(|b| b.inode).collect::<Vec<_>>(), [3, 9, 20]);
        assert_eq!(v.text, "systemframecamera");
        assert!(ScannedBuffers::default().get(3).is_none());
    }

    #[test]
    fn buffers_without_a_holder_are_left_out_and_holders_of_unlisted_buffers_dropped() {
        let mut b = Builder::with_capacity(4);
        for inode in [2, 5, 7, 11] {
            b.buffer(inode, 4096, Some("system"), Some("n"));
        }
        let v = b.holders([(1, 9, holder(1, 0)), (5, 10, holder(1, 0)), (6, 10, holder(1, 0)), (11, 12, holder(0, 1))]);
        assert_eq!(v.inodes().collect::<Vec<_>>(), [5, 11]);
        assert_eq!(v.get(5).unwrap().holders.iter().collect::<Vec<_>>(), [(10, holder(1, 0))]);
        assert_eq!(v.get(11).unwrap().holders.iter().collect::<Vec<_>>(), [(12, holder(0, 1))]);
        assert!(v.get(7).is_none() && v.get(6).is_none());
    }
}
