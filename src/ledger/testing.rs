//! Shared by the ledger's and the journal's property tests: a phone-like ledger and random
//! operation sequences over it.

use proptest::prelude::*;

use super::*;

pub const MIB: u64 = 1 << 20;

/// A phone-like ledger: system heap, a CMA display region, a secure carve-out and vram.
pub fn phone() -> Ledger {
    let mut l = Ledger::new();
    l.add_region("cma/display", 256 * MIB).unwrap();
    l.add_region("carveout/secure", 128 * MIB).unwrap();
    l.add_region("drm/0000:03:00.0/vram0", 1024 * MIB).unwrap();
    let heap = |name: &str, class, region: Option<&str>| HeapSpec {
        name: name.into(),
        class,
        region: region.map(String::from),
    };
    l.add_heap(heap("system", HeapClass::System, None), true).unwrap();
    l.add_heap(heap("display", HeapClass::Cma, Some("cma/display")), true).unwrap();
    l.add_heap(heap("secure", HeapClass::Carveout, Some("carveout/secure")), true).unwrap();
    l.add_heap(heap("vram", HeapClass::Vram, Some("drm/0000:03:00.0/vram0")), true).unwrap();
    l.add_heap(heap("observed", HeapClass::System, None), false).unwrap();
    l
}

#[derive(Clone, Debug)]
pub enum Op {
    Charge { inode: u64, size: u64, heap: usize, pid: u32, cg: usize },
    Release { inode: u64 },
    Transfer { inode: u64, pid: u32, cg: usize },
    Migrate { pid: u32, cg: usize },
    Reassign { inode: u64, pid: u32, cg: usize },
    Reparent { cg: usize },
    Limit { cg: usize, pool: usize, kind: usize, value: u64 },
    Evict { inode: u64 },
    Restore { inode: u64 },
    Pin { inode: u64 },
    Unpin { inode: u64 },
}

pub const CGROUPS: [&str; 7] = ["/", "/uid_1", "/uid_1/pid_1", "/uid_1/pid_2", "/uid_2", "/uid_2/pid_3", "/system/sf"];
pub const HEAPS: [&str; 5] = ["system", "display", "secure", "vram", "observed"];
pub const POOLS: [&str; 4] = ["memcg", "cma/display", "carveout/secure", "drm/0000:03:00.0/vram0"];

pub fn op() -> impl Strategy<Value = Op> {
    let inode = 0..24u64;
    let cg = 0..CGROUPS.len();
    prop_oneof![
        4 => (inode.clone(), 1..8 * MIB, 0..HEAPS.len(), 1..5u32, cg.clone())
            .prop_map(|(inode, size, heap, pid, cg)| Op::Charge { inode, size, heap, pid, cg }),
        2 => inode.clone().prop_map(|inode| Op::Release { inode }),
        2 => (inode.clone(), 1..5u32, cg.clone()).prop_map(|(inode, pid, cg)| Op::Transfer { inode, pid, cg }),
        1 => (1..5u32, cg.clone()).prop_map(|(pid, cg)| Op::Migrate { pid, cg }),
        1 => (inode.clone(), 0..5u32, cg.clone()).prop_map(|(inode, pid, cg)| Op::Reassign { inode, pid, cg }),
        1 => cg.clone().prop_map(|cg| Op::Reparent { cg }),
        2 => (cg, 0..POOLS.len(), 0..4usize, prop_oneof![Just(UNLIMITED), 0..32 * MIB])
            .prop_map(|(cg, pool, kind, value)| Op::Limit { cg, pool, kind, value }),
        1 => inode.clone().prop_map(|inode| Op::Evict { inode }),
        1 => inode.clone().prop_map(|inode| Op::Restore { inode }),
        1 => inode.clone().prop_map(|inode| Op::Pin { inode }),
        1 => inode.prop_map(|inode| Op::Unpin { inode }),
    ]
}

/// A start time per pid, so snapshots and replays carry one through.
fn start_of(pid: u32) -> u64 {
    u64::from(pid) * 1000 + 7
}

pub fn run(l: &mut Ledger, op: &Op) -> Result<Event> {
    match *op {
        Op::Charge { inode, size, heap, pid, cg } => {
            l.charge(inode, size, HEAPS[heap], pid, start_of(pid), CGROUPS[cg])
        }
        Op::Release { inode } => l.release(inode),
        Op::Transfer { inode, pid, cg } => l.transfer(inode, pid, start_of(pid), CGROUPS[cg]),
        Op::Migrate { pid, cg } => l.migrate(pid, CGROUPS[cg]),
        Op::Reassign { inode, pid, cg } => l.reassign(inode, pid, start_of(pid), CGROUPS[cg]),
        Op::Reparent { cg } => l.reparent(CGROUPS[cg]),
        Op::Limit { cg, pool, kind, value } => l.set_limit(CGROUPS[cg], POOLS[pool], LimitKind::ALL[kind], value),
        Op::Evict { inode } => l.evict(inode),
        Op::Restore { inode } => l.restore(inode),
        Op::Pin { inode } => l.pin(inode),
        Op::Unpin { inode } => l.unpin(inode),
    }
}
