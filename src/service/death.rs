//! Death of clients: binder death notifications on tokens clients register, and pidfd polling
//! for owners that registered none. Both end in `Accountant::process_died`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::accountant::Accountant;
use crate::binder::{self, DeathLink, SpIBinder};
use crate::error::{Error, Result};
use log::{info, warn};

/// Tokens one process may register; more would only cost the service memory.
pub const MAX_TOKENS_PER_PROCESS: usize = 16;

fn binder_died(pid: u32, accountant: &Weak<Accountant>) {
    if let Some(a) = accountant.upgrade() {
        match a.process_died(pid) {
            Ok(n) => info!("client pid {pid} died (binder): {n} charges handled"),
            Err(e) => warn!("client pid {pid} died: {e}"),
        }
    }
}

/// A watched token and its death link: both must stay alive for the notification to fire.
type Watched = (SpIBinder, DeathLink);

pub struct DeathWatch {
    accountant: Weak<Accountant>,
    tokens: Mutex<HashMap<u32, Vec<Watched>>>,
}

impl DeathWatch {
    pub fn new(accountant: &Arc<Accountant>) -> Arc<DeathWatch> {
        Arc::new(DeathWatch { accountant: Arc::downgrade(accountant), tokens: Mutex::new(HashMap::new()) })
    }

    pub fn register(&self, pid: u32, token: &SpIBinder) -> Result<()> {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let list = tokens.entry(pid).or_default();
        if list.len() >= MAX_TOKENS_PER_PROCESS {
            return Err(Error::InvalidArgument(format!(
                "pid {pid} already registered {MAX_TOKENS_PER_PROCESS} tokens"
            )));
        }
        let accountant = self.accountant.clone();
        let link = binder::link_to_death(token, move || binder_died(pid, &accountant))
            .map_err(|e| Error::InvalidArgument(format!("cannot watch the token of pid {pid}: {e}")))?;
        list.push((token.clone(), link));
        Ok(())
    }

    fn forget(&self, pid: u32) {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner()).remove(&pid);
    }

    pub fn registered(&self) -> usize {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner()).values().map(Vec::len).sum()
    }

    /// Polls the pidfds of known processes until `stop` says so; a readable pidfd means the
    /// process exited, and its charges are handled.
    pub fn poll_pidfds(self: &Arc<Self>, interval: Duration, stop: &dyn Fn() -> bool) {
        while !stop() {
            let Some(accountant) = self.accountant.upgrade() else { return };
            for pid in accountant.processes().reap_exited() {
                self.forget(pid);
                match accountant.process_died(pid) {
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
