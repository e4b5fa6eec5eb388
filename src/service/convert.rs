//! Plain Rust types → AIDL parcelables. Limits of "max" become -1, as the AIDL documents.

use crate::accountant::{self, Accountant, Usage};
use crate::binder::aidl::vendor::chargetransfer::{
    ChargeInfo::ChargeInfo, PoolUsage::PoolUsage, ReconcileReport::ReconcileReport, RegionInfo::RegionInfo,
    UsageReport::UsageReport,
};
use crate::ledger::{BufferInfo, UNLIMITED};

fn bytes(v: u64) -> i64 {
    if v == UNLIMITED {
        -1
    } else {
        i64::try_from(v).unwrap_or(i64::MAX)
    }
}

pub fn charge_info(accountant: &Accountant, b: BufferInfo) -> ChargeInfo {
    ChargeInfo {
        inode: bytes(b.inode),
        size: bytes(b.size),
        ownerUid: accountant.uid_of_owner(b.pid).map_or(-1, |u| u as i32),
        ownerPid: b.pid as i32,
        heap: b.heap,
        ownerCgroup: b.cgroup,
        pools: b.pools,
        evicted: b.evicted,
        pinned: b.pinned,
    }
}

pub fn usage_report(u: &Usage) -> UsageReport {
    UsageReport {
        cgroup: u.cgroup.clone(),
        pools: u
            .pools
            .iter()
            .map(|p| PoolUsage {
                pool: p.pool.clone(),
                usage: bytes(p.counter.usage),
                peak: bytes(p.counter.peak),
                max: bytes(p.counter.max),
                low: bytes(p.counter.low),
                min: bytes(p.counter.min),
                pinned: bytes(p.counter.pinned),
                pinMax: bytes(p.counter.pin_max),
                maxEvents: bytes(p.counter.max_events),
                kernelUsage: p.kernel_usage.map_or(-1, bytes),
            })
            .collect(),
        bufferCount: i32::try_from(u.buffer_count).unwrap_or(i32::MAX),
        bufferBytes: bytes(u.buffer_bytes),
    }
}

pub fn regions(accountant: &Accountant) -> Vec<RegionInfo> {
    let usage = accountant.cgroup_usage("/").map(|u| u.pools).unwrap_or_default();
    accountant
        .regions()
        .into_iter()
        .map(|r: accountant::RegionSummary| RegionInfo {
            usage: usage.iter().find(|p| p.pool == r.name).map_or(0, |p| bytes(p.counter.usage)),
            name: r.name,
            regionClass: r.class,
            capacity: bytes(r.capacity),
            heaps: r.heaps,
            enforcedBy: r.enforced_by,
            why: r.why,
        })
        .collect()
}

pub fn reconcile_report(r: &accountant::ReconcileReport) -> ReconcileReport {
    let inodes = |v: &[u64]| v.iter().map(|i| bytes(*i)).collect();
    ReconcileReport {
        releasedInodes: inodes(&r.released),
        movedInodes: inodes(&r.moved),
        unaccountedInodes: inodes(&r.unaccounted),
        unaccountedBytes: bytes(r.unaccounted_bytes),
        migratedPids: r.migrated.iter().map(|p| *p as i32).collect(),
        processesScanned: i32::try_from(r.processes_scanned).unwrap_or(i32::MAX),
        buffersSeen: i32::try_from(r.buffers_seen).unwrap_or(i32::MAX),
    }
}
