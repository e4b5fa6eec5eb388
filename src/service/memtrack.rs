//! The memtrack HAL (`android.hardware.memtrack.IMemtrack/default`, AOSP's frozen version 1),
//! served by the same process from the ledger: `getMemory(pid, GRAPHICS)` is that pid's charged
//! bytes per pool, `getGpuDeviceInfo` the DRM cards. Refusals are the binder exceptions
//! memtrack's clients and AOSP's VTS expect (`EX_ILLEGAL_ARGUMENT`, `EX_SECURITY`).

use std::path::PathBuf;
use std::sync::Arc;

use crate::accountant::Accountant;
use crate::binder::aidl::android::hardware::memtrack::{
    DeviceInfo::DeviceInfo, IMemtrack::IMemtrack, MemtrackRecord as record, MemtrackRecord::MemtrackRecord,
    MemtrackType::MemtrackType,
};
use crate::binder::{self, Exception, Interface, Status};
use crate::identity::Caller;
use crate::memtrack::{self, Holders, Record};
use crate::permission::Op;

/// The instance the memtrack HAL is registered as (AOSP's, and the VINTF fragment's).
pub const MEMTRACK_INSTANCE: &str = "android.hardware.memtrack.IMemtrack/default";

pub struct MemtrackService {
    accountant: Arc<Accountant>,
    holders: Holders,
    sys_root: PathBuf,
}

impl Interface for MemtrackService {}

fn illegal(message: String) -> Status {
    binder::exception(Exception::IllegalArgument, message)
}

/// memtrack's flags for a record: the bytes are dma-bufs, never in the process's smaps
/// (UNACCOUNTED), shared or private, system RAM or dedicated memory.
fn flags(r: &Record) -> i32 {
    record::FLAG_SMAPS_UNACCOUNTED
        | if r.shared { record::FLAG_SHARED } else { record::FLAG_PRIVATE }
        | if r.dedicated { record::FLAG_DEDICATED } else { record::FLAG_SYSTEM }
}

impl MemtrackService {
    pub fn new(accountant: Arc<Accountant>, sys_root: PathBuf) -> Self {
        MemtrackService { accountant, holders: Holders::default(), sys_root }
    }

    fn caller(&self) -> binder::Result<Caller> {
        let (pid, uid) = (binder::calling_pid(), binder::calling_uid());
        if pid <= 0 || uid == u32::MAX {
            return Err(binder::exception(Exception::Security, "call without a verifiable pid".into()));
        }
        Ok(Caller { pid: pid as u32, uid, context: binder::calling_sid() })
    }

    fn permit(&self, caller: &Caller, op: Op) -> binder::Result<()> {
        self.accountant.permit(caller, op).map_err(|e| binder::exception(Exception::Security, e.to_string()))
    }
}

impl IMemtrack for MemtrackService {
    fn getMemory(&self, pid: i32, kind: MemtrackType) -> binder::Result<Vec<MemtrackRecord>> {
        let pid = u32::try_from(pid).map_err(|_| illegal(format!("pid must not be negative, got {pid}")))?;
        let known = [
            MemtrackType::OTHER,
            MemtrackType::GL,
            MemtrackType::GRAPHICS,
            MemtrackType::MULTIMEDIA,
            MemtrackType::CAMERA,
        ];
        if !known.contains(&kind) {
            return Err(illegal(format!("unknown memtrack type {kind:?}")));
        }
        let caller = self.caller()?;
        self.permit(&caller, Op::ReadMemtrack { pid })?;
        // dma-bufs are graphics memory; the ledger knows nothing of GL or the other types.
        if kind != MemtrackType::GRAPHICS {
            return Ok(Vec::new());
        }
        let records = memtrack::graphics(&self.accountant, &self.holders, pid)
            .map_err(|e| binder::service_specific_error(e.code().0, e.to_string()))?;
        Ok(records
            .iter()
            .map(|r| MemtrackRecord { flags: flags(r), sizeInBytes: i64::try_from(r.bytes).unwrap_or(i64::MAX) })
            .collect())
    }

    fn getGpuDeviceInfo(&self) -> binder::Result<Vec<DeviceInfo>> {
        let caller = self.caller()?;
        self.permit(&caller, Op::ReadGpuDevices)?;
        Ok(memtrack::gpu::gpu_devices(&self.sys_root)
            .into_iter()
            .map(|d| DeviceInfo { id: d.id, name: d.name })
            .collect())
    }
}
