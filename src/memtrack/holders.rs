//! Who else holds a buffer, for memtrack's SHARED/PRIVATE: the scanner's view of every process's
//! dma-bufs, kept for [`MAX_AGE`] so that `dumpsys meminfo`, which asks for every process in a
//! row, costs one scan and not one per process. The scan runs outside the ledger lock.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::kernel::scanner::Scanner;
use crate::ledger::Inode;

/// How old a holder view may be when an answer uses it: a SHARED/PRIVATE flag is at most this
/// late after an fd changes hands.
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// The processes holding each buffer (an fd or a mapping) at one scan.
#[derive(Debug, Default)]
pub struct HolderView {
    holders: HashMap<Inode, BTreeSet<u32>>,
}

impl HolderView {
    pub fn from_pairs(pairs: impl IntoIterator<Item = (Inode, u32)>) -> HolderView {
        let mut holders: HashMap<Inode, BTreeSet<u32>> = HashMap::new();
        for (inode, pid) in pairs {
            holders.entry(inode).or_default().insert(pid);
        }
        HolderView { holders }
    }

    /// Whether a process other than `pid` holds `inode`. A process the scan could not read
    /// (procfs without the right to) counts as holding nothing.
    pub fn held_by_other_than(&self, inode: Inode, pid: u32) -> bool {
        self.holders.get(&inode).is_some_and(|pids| pids.iter().any(|p| *p != pid))
    }
}

/// The last holder view and when it was taken.
#[derive(Default)]
pub struct Holders {
    last: Mutex<Option<(Instant, Arc<HolderView>)>>,
}

impl Holders {
    /// A view at most [`MAX_AGE`] old, scanning when the last one is older. Concurrent callers
    /// wait for one scan rather than each running their own.
    pub fn view(&self, scanner: &Scanner) -> Result<Arc<HolderView>> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, view)) = last.as_ref() {
            if at.elapsed() <= MAX_AGE {
                return Ok(Arc::clone(view));
            }
        }
        let scan = scanner.scan_all()?;
        let pairs = scan.buffers.iter().flat_map(|b| b.holders.pids().map(move |pid| (b.inode, pid)));
        let view = Arc::new(HolderView::from_pairs(pairs));
        *last = Some((Instant::now(), Arc::clone(&view)));
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_is_shared_when_a_process_other_than_the_payer_holds_it() {
        let view = HolderView::from_pairs([(1, 10), (2, 10), (2, 11), (3, 11)]);
        assert!(!view.held_by_other_than(1, 10), "only the payer holds it");
        assert!(view.held_by_other_than(2, 10), "the payer and another");
        assert!(view.held_by_other_than(3, 10), "another process only");
        assert!(!view.held_by_other_than(4, 10), "nobody holds it");
    }
}
