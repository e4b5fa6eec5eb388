//! What the random workloads (`stress`, `faults`) end on: the service's ledger beside a procfs
//! scan of every process, and where they differ. Each workload models its own clients (stress
//! who pays for every buffer, faults only who holds what); the truth they are checked against,
//! and what "equal" means, is this one.

use std::collections::{BTreeMap, BTreeSet};

use chargetransfer::binder::aidl::vendor::chargetransfer::ChargeInfo::ChargeInfo;
use chargetransfer::client::Client;
use chargetransfer::kernel::{DmaBufScan, ProcFs, ScannedBuffer};

/// The ledger's charges and a complete procfs scan, taken one after the other.
pub struct Truth {
    pub charges: Vec<ChargeInfo>,
    pub scan: DmaBufScan,
    pub proc: ProcFs,
    /// The policy's heaps: the dma-bufs the ledger answers for.
    heaps: BTreeSet<String>,
}

/// The ledger against the scan.
pub struct Verdict {
    pub charges: usize,
    pub held: usize,
    /// Held (by a client, when the check names clients), not charged.
    pub lost: Vec<u64>,
    /// Charged more than once.
    pub duplicated: Vec<u64>,
    /// Charged, held by nobody.
    pub stale: Vec<u64>,
    /// Charged to a process that is gone, or orphaned all the way up to the root.
    pub misowned: Vec<String>,
    /// A cgroup's pool counter that is not the sum of the buffers charged in its subtree: a
    /// charge applied twice (or not at all) to the counters.
    pub miscounted: Vec<String>,
}

impl Truth {
    pub fn take(client: &Client, heaps: &BTreeSet<String>) -> Result<Truth, String> {
        let charges = client.service().listCharges(0).map_err(|e| format!("listCharges: {e:?}"))?;
        let proc = ProcFs::new("/proc");
        let scan = proc.scan_all().map_err(|e| format!("procfs scan: {e}"))?;
        if !scan.is_complete() {
            return Err(format!("procfs scan incomplete: {:?}", scan.errors));
        }
        Ok(Truth { charges, scan, proc, heaps: heaps.clone() })
    }

    /// Live dma-bufs of the policy's heaps, held by one of `clients` when given.
    pub fn live(&self, clients: Option<&BTreeSet<u32>>) -> BTreeMap<u64, ScannedBuffer<'_>> {
        self.scan
            .buffers
            .iter()
            .filter(|b| b.exporter.is_some_and(|e| self.heaps.contains(e)))
            .filter(|b| clients.is_none_or(|c| b.holders.pids().any(|p| c.contains(&p))))
            .map(|b| (b.inode, b))
            .collect()
    }

    /// Compares; `clients` limits "lost" to buffers those processes hold (others may hold
    /// buffers nobody asked to charge).
    pub fn verdict(&self, client: &Client, clients: Option<&BTreeSet<u32>>) -> Result<Verdict, String> {
        let held = self.live(clients);
        let mut counted: BTreeMap<u64, usize> = BTreeMap::new();
        for c in &self.charges {
            *counted.entry(c.inode as u64).or_default() += 1;
        }
        let misowned = self
            .charges
            .iter()
            .filter(|c| if c.ownerPid > 0 { !self.proc.exists(c.ownerPid as u32) } else { c.ownerCgroup == "/" })
            .map(|c| format!("{} pid {} {}", c.inode, c.ownerPid, c.ownerCgroup))
            .collect();
        Ok(Verdict {
            charges: counted.len(),
            held: held.len(),
            lost: held.keys().filter(|i| !counted.contains_key(i)).copied().collect(),
            duplicated: counted.iter().filter(|(_, n)| **n > 1).map(|(i, _)| *i).collect(),
            stale: counted.keys().filter(|i| !self.scan.buffers.contains(**i)).copied().collect(),
            misowned,
            miscounted: self.miscounted(client)?,
        })
    }

    /// Counters are hierarchical: the root and each top-level cgroup must sum their buffers.
    fn miscounted(&self, client: &Client) -> Result<Vec<String>, String> {
        let mut expected: BTreeMap<(String, String), i64> = BTreeMap::new();
        for c in &self.charges {
            let top =
                c.ownerCgroup.split('/').nth(1).filter(|t| !t.is_empty()).map_or("/".to_string(), |t| format!("/{t}"));
            for pool in &c.pools {
                *expected.entry(("/".to_string(), pool.clone())).or_default() += c.size;
                if top != "/" {
                    *expected.entry((top.clone(), pool.clone())).or_default() += c.size;
                }
            }
        }
        let mut miscounted = Vec::new();
        let cgroups: BTreeSet<String> = expected.keys().map(|(cg, _)| cg.clone()).chain(["/".to_string()]).collect();
        for cgroup in cgroups {
            let usage =
                client.service().getCgroupUsage(&cgroup).map_err(|e| format!("getCgroupUsage({cgroup}): {e:?}"))?;
            for p in &usage.pools {
                let want = expected.get(&(cgroup.clone(), p.pool.clone())).copied().unwrap_or(0);
                if p.usage != want {
                    miscounted.push(format!("{cgroup} {}: counter {} != buffers {want}", p.pool, p.usage));
                }
            }
        }
        Ok(miscounted)
    }
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.stale.is_empty()
            && self.misowned.is_empty()
            && self.miscounted.is_empty()
    }

    pub fn describe(&self) -> String {
        format!(
            "{} charges, {} held buffers; lost {:?}, duplicated {:?}, stale {:?}, misowned {:?}, miscounted {:?}",
            self.charges, self.held, self.lost, self.duplicated, self.stale, self.misowned, self.miscounted
        )
    }
}
