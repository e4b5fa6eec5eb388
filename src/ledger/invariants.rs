//! The ledger's invariants, recomputed from the buffers: each counter's own charges, usage
//! (own + children), pinned bytes and peak; the per-process totals; the live-children counts.

use std::collections::HashMap;

use super::buffer::PidTotals;
use super::tree::depth;
use super::{CgroupId, Ledger};

impl Ledger {
    /// Verifies the ledger's invariants; returns the first violation. For tests (the ledger's and
    /// journal's property tests, the hostile harness): it walks every buffer and cgroup, so the
    /// service does not run it.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        let nodes = self.tree.nodes();
        let n_pools = self.registry.pool_count();
        let mut local = vec![vec![0u64; n_pools]; nodes.len()];
        let mut pinned_local = vec![vec![0u64; n_pools]; nodes.len()];
        for (inode, b) in self.buffers.iter() {
            let node = self.tree.node(b.owner);
            if !node.alive {
                return Err(format!("buffer {inode} is owned by removed cgroup {}", node.path));
            }
            for pool in self.pool_set(b).iter() {
                local[b.owner.index()][pool.0 as usize] += b.size;
            }
            if let Some(pool) = self.pin_pool(b) {
                pinned_local[b.owner.index()][pool.0 as usize] += b.size;
            }
        }
        let mut by_pid: PidTotals = HashMap::new();
        for (_, b) in self.buffers.iter() {
            let e = by_pid.entry(b.pid).or_default();
            e.0 += 1;
            e.1 += u128::from(b.size);
        }
        if by_pid != *self.buffers.all_pid_totals() {
            return Err("per-process totals differ from the buffers".to_string());
        }
        let mut usage = local.clone();
        let mut pinned = pinned_local.clone();
        // Children have higher depth; fold each live node into its parent from the deepest up.
        let mut order: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].alive).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(depth(&nodes[i].path)));
        for &i in &order {
            if let Some(p) = nodes[i].parent {
                for pool in 0..n_pools {
                    usage[p.index()][pool] += usage[i][pool];
                    pinned[p.index()][pool] += pinned[i][pool];
                }
            }
        }
        for &i in &order {
            let node = &nodes[i];
            for pool in 0..n_pools {
                let c = node.counters.get(pool).copied().unwrap_or_default();
                let name = &self.registry.pool_names()[pool];
                if c.local != local[i][pool] {
                    return Err(format!(
                        "{} {name}: own charges {} but buffers sum to {}",
                        node.path, c.local, local[i][pool]
                    ));
                }
                if c.usage != usage[i][pool] {
                    return Err(format!(
                        "{} {name}: usage {} but own + children = {}",
                        node.path, c.usage, usage[i][pool]
                    ));
                }
                if c.pinned != pinned[i][pool] {
                    return Err(format!(
                        "{} {name}: pinned {} but pinned buffers sum to {}",
                        node.path, c.pinned, pinned[i][pool]
                    ));
                }
                if c.peak < c.usage {
                    return Err(format!("{} {name}: peak {} below usage {}", node.path, c.peak, c.usage));
                }
            }
            let children = nodes.iter().filter(|n| n.alive && n.parent.map(CgroupId::index) == Some(i)).count();
            if children as u32 != node.live_children {
                return Err(format!("{}: {} children recorded, {} live", node.path, node.live_children, children));
            }
        }
        Ok(())
    }
}
