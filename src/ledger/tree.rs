//! The cgroup tree: one node per cgroup path with one [`Counter`] per pool. Nodes are created with
//! their ancestors on first use (like `mkdir -p`) and removed by reparenting; the indices of
//! removed nodes are reused.

use std::collections::HashMap;

use super::{Counter, LedgerError, PoolId, Result};

/// Index of a cgroup node. Indices of removed cgroups are reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CgroupId(u32);

impl CgroupId {
    pub(super) fn index(self) -> usize {
        self.0 as usize
    }
}

pub(super) const ROOT: CgroupId = CgroupId(0);

#[derive(Debug)]
pub(super) struct Node {
    pub path: String,
    pub parent: Option<CgroupId>,
    pub live_children: u32,
    /// One counter per pool, indexed by `PoolId`; grown when regions are added.
    pub counters: Vec<Counter>,
    pub alive: bool,
}

#[derive(Debug)]
pub(super) struct Tree {
    nodes: Vec<Node>,
    ids: HashMap<String, CgroupId>,
    free: Vec<CgroupId>,
}

/// Walks from a cgroup up to (not including) `stop`, or to the root inclusive.
pub(super) struct Ancestors<'a> {
    nodes: &'a [Node],
    next: Option<CgroupId>,
    stop: Option<CgroupId>,
}

impl Iterator for Ancestors<'_> {
    type Item = CgroupId;
    fn next(&mut self) -> Option<CgroupId> {
        let id = self.next?;
        if Some(id) == self.stop {
            return None;
        }
        self.next = self.nodes[id.index()].parent;
        Some(id)
    }
}

impl Tree {
    pub fn new() -> Tree {
        let root = Node {
            path: "/".to_string(),
            parent: None,
            live_children: 0,
            counters: vec![Counter::default()],
            alive: true,
        };
        Tree { nodes: vec![root], ids: HashMap::from([("/".to_string(), ROOT)]), free: Vec::new() }
    }

    pub fn id(&self, path: &str) -> Option<CgroupId> {
        self.ids.get(path).copied()
    }

    /// The id of a live cgroup, or `UnknownCgroup`.
    pub fn known(&self, path: &str) -> Result<CgroupId> {
        self.id(path).ok_or_else(|| LedgerError::UnknownCgroup(path.to_string()))
    }

    pub fn node(&self, id: CgroupId) -> &Node {
        &self.nodes[id.index()]
    }

    /// Every node slot, removed ones included (`alive == false`), indexed by `CgroupId`.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn path(&self, id: CgroupId) -> &str {
        &self.nodes[id.index()].path
    }

    /// Every live cgroup path, parents before children.
    pub fn paths(&self) -> Vec<String> {
        let mut paths: Vec<String> = self.ids.keys().cloned().collect();
        paths.sort_by(|a, b| depth(a).cmp(&depth(b)).then(a.cmp(b)));
        paths
    }

    /// Finds or creates (with its ancestors, like `mkdir -p`) the node for `path`, with
    /// `pools` counters.
    pub fn get_or_create(&mut self, path: &str, pools: usize) -> Result<CgroupId> {
        if let Some(id) = self.ids.get(path) {
            return Ok(*id);
        }
        if !valid_path(path) {
            return Err(LedgerError::InvalidCgroupPath(path.to_string()));
        }
        let parent_path = match path.rfind('/') {
            Some(0) => "/",
            Some(i) => &path[..i],
            None => unreachable!("valid paths start with '/'"),
        };
        let parent = self.get_or_create(parent_path, pools)?;
        let node = Node {
            path: path.to_string(),
            parent: Some(parent),
            live_children: 0,
            counters: vec![Counter::default(); pools],
            alive: true,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.nodes[id.index()] = node;
                id
            }
            None => {
                self.nodes.push(node);
                CgroupId(self.nodes.len() as u32 - 1)
            }
        };
        self.nodes[parent.index()].live_children += 1;
        self.ids.insert(path.to_string(), id);
        Ok(id)
    }

    /// The node for `path`, or its nearest existing ancestor when the path is not yet known:
    /// nodes about to be created carry no limits, so checking from there is exact and lets a
    /// refused operation create nothing.
    pub fn existing_ancestor(&self, path: &str) -> Result<CgroupId> {
        if !valid_path(path) {
            return Err(LedgerError::InvalidCgroupPath(path.to_string()));
        }
        let mut p = path;
        loop {
            if let Some(id) = self.ids.get(p) {
                return Ok(*id);
            }
            p = match p.rfind('/') {
                Some(0) => "/",
                Some(i) => &p[..i],
                None => return Ok(ROOT),
            };
        }
    }

    pub fn ancestors(&self, from: CgroupId, stop: Option<CgroupId>) -> Ancestors<'_> {
        Ancestors { nodes: &self.nodes, next: Some(from), stop }
    }

    pub fn lowest_common_ancestor(&self, a: CgroupId, b: CgroupId) -> CgroupId {
        let chain: Vec<CgroupId> = self.ancestors(a, None).collect();
        self.ancestors(b, None).find(|id| chain.contains(id)).unwrap_or(ROOT)
    }

    pub fn counter(&self, id: CgroupId, pool: PoolId) -> Counter {
        self.nodes[id.index()].counters.get(pool.0 as usize).copied().unwrap_or_default()
    }

    /// The node's counter for `pool`, growing its counters to `pools` when regions were added
    /// after the node was created.
    pub fn counter_mut(&mut self, id: CgroupId, pool: PoolId, pools: usize) -> &mut Counter {
        let counters = &mut self.nodes[id.index()].counters;
        if counters.len() <= pool.0 as usize {
            counters.resize(pools, Counter::default());
        }
        &mut counters[pool.0 as usize]
    }

    /// Removes a leaf cgroup, folding its own charges into its parent's; returns (removed,
    /// parent). The caller moves the buffers the removed node owned.
    pub fn remove_leaf(&mut self, path: &str, pools: usize) -> Result<(CgroupId, CgroupId)> {
        let id = self.known(path)?;
        let parent = self.nodes[id.index()].parent.ok_or(LedgerError::RootRemoval)?;
        if self.nodes[id.index()].live_children > 0 {
            return Err(LedgerError::CgroupHasChildren(path.to_string()));
        }
        let counters = std::mem::take(&mut self.nodes[id.index()].counters);
        for (i, c) in counters.iter().enumerate() {
            self.counter_mut(parent, PoolId(i as u16), pools).local += c.local;
        }
        self.nodes[id.index()].alive = false;
        self.nodes[parent.index()].live_children -= 1;
        self.ids.remove(path);
        self.free.push(id);
        Ok((id, parent))
    }
}

pub(super) fn depth(path: &str) -> usize {
    if path == "/" {
        0
    } else {
        path.matches('/').count()
    }
}

fn valid_path(path: &str) -> bool {
    path == "/"
        || (path.starts_with('/')
            && path[1..].split('/').all(|c| {
                !c.is_empty() && c != "." && c != ".." && !c.contains(char::is_whitespace) && !c.contains('\0')
            }))
}
