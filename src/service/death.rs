//! Death of clients: binder death notifications on tokens clients register, and pidfd polling
//! for owners that registered none. Both end in `Accountant::process_died`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use log::{info, warn};
use rsbinder::{DeathRecipient, SIBinder, WIBinder};

use crate::accountant::Accountant;
use crate::error::{Error, Result};

/// Tokens one process may register; more would only cost the service memory.
pub const MAX_TOKENS_PER_PROCESS: usize = 16;

struct Recipient {
    pid: u32,
    accountant: Weak<Accountant>,
}

impl DeathRecipient for Recipient {
    fn binder_died(&self, _who: &WIBinder) {
        if let Some(a) = self.accountant.upgrade() {
            match a.process_died(self.pid) {
                Ok(n) => info!("client pid {} died (binder): {n} charges handled", self.pid),
                Err(e) => warn!("client pid {} died: {e}", self.pid),
            }
        }
    }
}

/// A watched token and its recipient: both must stay alive for the notification to fire.
type Watched = (SIBinder, Arc<Recipient>);

pub struct DeathWatch {
    accountant: Weak<Accountant>,
    tokens: Mutex<HashMap<u32, Vec<Watched>>>,
}

impl DeathWatch {
    pub fn new(accountant: &Arc<Accountant>) -> Arc<DeathWatch> {
        Arc::new(DeathWatch { accountant: Arc::downgrade(accountant), tokens: Mutex::new(HashMap::new()) })
    }

    pub fn register(&self, pid: u32, token: &SIBinder) -> Result<()> {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let list = tokens.entry(pid).or_default();
        if list.len() >= MAX_TOKENS_PER_PROCESS {
            return Err(Error::InvalidArgument(format!(
                "pid {pid} already registered {MAX_TOKENS_PER_PROCESS} tokens"
            )));
        }
        let recipient = Arc::new(Recipient { pid, accountant: self.accountant.clone() });
        token
            .link_to_death_arc(&recipient)
            .map_err(|e| Error::InvalidArgument(format!("cannot watch the token of pid {pid}: {e:?}")))?;
        list.push((token.clone(), recipient));
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
