//! Android's own meters, fed from the ledger: the memtrack HAL's answer for a pid (its charged
//! bytes per pool, flagged the way memtrack's clients read them), the GPU list memtrack reports,
//! per-app counters in the kernel trace, and the table `chargectl top` shows.
//!
//! [`records`] turns a pid's buffers into memtrack records (pure), [`holders`] says which buffers
//! another process holds (from the scanner, at most [`holders::MAX_AGE`] old), [`gpu`] lists the
//! DRM cards, [`counters`] writes trace_marker counter events after a change commits, [`top`]
//! renders the per-app table. The AIDL boundary is `service::memtrack`.

pub mod counters;
pub mod gpu;
pub mod holders;
pub mod records;
pub mod top;

pub use counters::TraceCounters;
pub use gpu::GpuDevice;
pub use holders::Holders;
pub use records::Record;

use crate::accountant::Accountant;
use crate::error::Result;
use crate::ledger::BufferInfo;

/// What memtrack answers for `pid`'s GRAPHICS memory: its charged bytes per pool, shared where
/// another process holds the buffer. Empty for pid 0 (charges parked on a cgroup, no process)
/// and for a pid whose recorded owner is gone (the pid now names another process).
pub fn graphics(accountant: &Accountant, holders: &Holders, pid: u32) -> Result<Vec<Record>> {
    if pid == 0 {
        return Ok(Vec::new());
    }
    let buffers: Vec<BufferInfo> =
        accountant.with_ledger(|l| l.buffers_of_pid(pid).into_iter().filter_map(|inode| l.buffer(inode)).collect());
    if buffers.is_empty() || !owner_is_alive(accountant, pid) {
        return Ok(Vec::new());
    }
    let view = holders.view(accountant.scanner())?;
    Ok(records::records(&buffers, |inode| view.held_by_other_than(inode, pid)))
}

/// Whether the process the ledger's owner `pid` was recorded as still runs under that pid.
fn owner_is_alive(accountant: &Accountant, pid: u32) -> bool {
    match (accountant.process(pid), accountant.processes().peek(pid)) {
        (Ok(recorded), Ok(live)) => recorded.is(&live),
        _ => false,
    }
}
