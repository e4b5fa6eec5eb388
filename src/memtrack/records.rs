//! A pid's charged buffers as memtrack records: one per pool and sharing, each buffer counted
//! once, in the pool where its bytes are (a CMA buffer pays memcg and its region for the same
//! pages: memtrack, which sums records, sees it under the region only).

use std::collections::BTreeMap;

use crate::ledger::{BufferInfo, HeapClass, Inode, MEMCG_POOL};

/// One record of a memtrack answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The pool the bytes are in: `memcg` or a dmem region.
    pub pool: String,
    /// Outside system RAM (memtrack's DEDICATED): carve-outs and vram while resident. System
    /// heap, CMA and evicted vram are SYSTEM.
    pub dedicated: bool,
    /// Another process holds at least one of these buffers (SHARED), or none does (PRIVATE).
    pub shared: bool,
    pub bytes: u64,
}

/// The pool a buffer's bytes are reported in: its region where it has one, memcg otherwise.
fn home_pool(b: &BufferInfo) -> &str {
    b.pools.iter().map(String::as_str).find(|p| *p != MEMCG_POOL).unwrap_or(MEMCG_POOL)
}

fn dedicated(b: &BufferInfo) -> bool {
    match b.class {
        HeapClass::Carveout => true,
        HeapClass::Vram => !b.evicted,
        HeapClass::System | HeapClass::Cma => false,
    }
}

/// The records for `buffers` (one pid's), `shared` saying which another process holds; ordered
/// by pool, private before shared.
pub fn records(buffers: &[BufferInfo], shared: impl Fn(Inode) -> bool) -> Vec<Record> {
    let mut groups: BTreeMap<(&str, bool, bool), u64> = BTreeMap::new();
    for b in buffers {
        let bytes = groups.entry((home_pool(b), dedicated(b), shared(b.inode))).or_default();
        *bytes = bytes.saturating_add(b.size);
    }
    groups
        .into_iter()
        .map(|((pool, dedicated, shared), bytes)| Record { pool: pool.to_string(), dedicated, shared, bytes })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(inode: Inode, size: u64, class: HeapClass, pools: &[&str], evicted: bool) -> BufferInfo {
        BufferInfo {
            inode,
            size,
            heap: class.name().into(),
            class,
            pid: 7,
            start: 70,
            cgroup: "/uid_10001/pid_7".into(),
            pools: pools.iter().map(|p| p.to_string()).collect(),
            evicted,
            pinned: false,
        }
    }

    fn record(pool: &str, dedicated: bool, shared: bool, bytes: u64) -> Record {
        Record { pool: pool.into(), dedicated, shared, bytes }
    }

    #[test]
    fn bytes_are_grouped_per_pool_and_sharing_and_each_buffer_counts_once() {
        let buffers = [
            buffer(1, 100, HeapClass::System, &["memcg"], false),
            buffer(2, 200, HeapClass::System, &["memcg"], false),
            buffer(3, 400, HeapClass::Cma, &["memcg", "cma/display"], false),
            buffer(4, 800, HeapClass::Carveout, &["carveout/secure"], false),
        ];
        let got = records(&buffers, |inode| inode == 2);
        assert_eq!(
            got,
            vec![
                record("carveout/secure", true, false, 800),
                record("cma/display", false, false, 400),
                record("memcg", false, false, 100),
                record("memcg", false, true, 200),
            ]
        );
        assert_eq!(got.iter().map(|r| r.bytes).sum::<u64>(), 1500, "memtrack's sum is the buffers' bytes, CMA once");
    }

    #[test]
    fn vram_is_dedicated_while_resident_and_system_once_evicted() {
        let resident = records(&[buffer(1, 64, HeapClass::Vram, &["drm/gpu/vram"], false)], |_| false);
        assert_eq!(resident, vec![record("drm/gpu/vram", true, false, 64)]);
        let evicted = records(&[buffer(1, 64, HeapClass::Vram, &["memcg"], true)], |_| false);
        assert_eq!(evicted, vec![record("memcg", false, false, 64)]);
    }

    #[test]
    fn no_buffers_no_records() {
        assert!(records(&[], |_| true).is_empty());
    }
}
