//! Death of clients: binder death notifications on tokens clients register, and pidfd polling
//! for owners that registered none. Both end in `Accountant::process_died`.
//!
//! Tokens are keyed by the registering process's identity (pid and start time), which the
//! service pinned with a pidfd when it registered: a recycled pid starts with no tokens, and a
//! stale token's notification only acts if the process it was registered for is the one gone.
//! An entry is removed when its notification fires.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::accountant::Accountant;
use crate::binder::{self, DeathLink, SpIBinder};
use crate::error::{Error, Result};
use crate::identity::Process;
use log::{info, warn};

/// Tokens one process may register; more would only cost the service memory.
pub const MAX_TOKENS_PER_PROCESS: usize = 16;
/// Tokens all processes together may register.
pub const MAX_TOKENS: usize = 64 * MAX_TOKENS_PER_PROCESS;

/// A process identity that cannot be recycled: pid and start time.
type Key = (u32, u64);

fn key(p: &Process) -> Key {
    (p.pid, p.start_time)
}

fn binder_died(process: &Process, watch: &Weak<DeathWatch>) {
    let Some(watch) = watch.upgrade() else { return };
    watch.forget(process);
    let Some(a) = watch.accountant.upgrade() else { return };
    let pid = process.pid;
    match a.process_exited(process) {
        Ok(n) => info!("client pid {pid} died (binder): {n} charges handled"),
        Err(e) => warn!("client pid {pid} died: {e}"),
    }
}

/// A watched token and its death link: both must stay alive for the notification to fire.
type Watched = (SpIBinder, DeathLink);

pub struct DeathWatch {
    accountant: Weak<Accountant>,
    me: Weak<DeathWatch>,
    tokens: Mutex<HashMap<Key, Vec<Watched>>>,
}

impl DeathWatch {
    pub fn new(accountant: &Arc<Accountant>) -> Arc<DeathWatch> {
        Arc::new_cyclic(|me| DeathWatch {
            accountant: Arc::downgrade(accountant),
            me: me.clone(),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// Watches `token` for `process`, the caller as resolved (and pinned) from binder.
    pub fn register(&self, process: Process, token: &SpIBinder) -> Result<()> {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = tokens.values().map(Vec::len).sum();
        if total >= MAX_TOKENS {
            return Err(Error::InvalidArgument(format!("the service watches {MAX_TOKENS} tokens; retry later")));
        }
        let pid = process.pid;
        let list = tokens.entry(key(&process)).or_default();
        if list.len() >= MAX_TOKENS_PER_PROCESS {
            return Err(Error::InvalidArgument(format!(
                "pid {pid} already registered {MAX_TOKENS_PER_PROCESS} tokens"
            )));
        }
        let watch = self.me.clone();
        let link = binder::link_to_death(token, move || binder_died(&process, &watch))
            .map_err(|e| Error::InvalidArgument(format!("cannot watch the token of pid {pid}: {e}")))?;
        list.push((token.clone(), link));
        Ok(())
    }

    fn forget(&self, process: &Process) {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner()).remove(&key(process));
    }

    pub fn registered(&self) -> usize {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner()).values().map(Vec::len).sum()
    }

    /// Polls the pidfds of known processes until `stop` says so; a readable pidfd means the
    /// process exited, and its charges are handled.
    pub fn poll_pidfds(self: &Arc<Self>, interval: Duration, stop: &dyn Fn() -> bool) {
        while !stop() {
            let Some(accountant) = self.accountant.upgrade() else { return };
            for process in accountant.processes().reap_exited() {
                self.forget(&process);
                let pid = process.pid;
                match accountant.process_exited(&process) {
                    Ok(0) => {}
                    Ok(n) => info!("pid {pid} exited (pidfd): {n} charges handled"),
                    Err(e) => warn!("pid {pid} exited: {e}"),
                }
            }
            drop(accountant);
            std::thread::sleep(interval);
        }
    }
}
