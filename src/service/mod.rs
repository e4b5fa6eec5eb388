//! The AIDL boundary: the only code that touches binder types. It takes the caller's identity
//! from the driver, inspects received fds itself, converts to plain types, calls the
//! [`Accountant`], and maps every refusal to a ServiceSpecificException with an `ErrorCode`.

mod call_times;
mod convert;
mod death;
mod memtrack;

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::accountant::{self, Accountant};
use crate::binder::aidl::vendor::chargetransfer::{
    ChargeInfo::ChargeInfo, IChargeTransfer::IChargeTransfer, ReconcileReport::ReconcileReport, RegionInfo::RegionInfo,
    UsageReport::UsageReport,
};
use crate::binder::{self, BinderFeatures, Interface, ParcelFileDescriptor, SpIBinder, Status};
use crate::catchup::CatchUp;
use crate::error::Error;
use crate::identity::Caller;
use crate::kernel::dmabuf;
use crate::permission::Op;
use call_times::{CallTimes, Method};

pub use death::DeathWatch;
pub use memtrack::{MemtrackService, MEMTRACK_INSTANCE};

/// The instance the service registers with the service manager (and the VINTF manifest declares).
pub const INSTANCE: &str = "vendor.chargetransfer.IChargeTransfer/default";

/// Runs autoconfig for the service: `(dry_run, json) -> report`. Supplied by the daemon, which
/// knows the device roots.
pub type Autoconfigure = Box<dyn Fn(&Accountant, bool, bool) -> crate::error::Result<String> + Send + Sync>;

pub struct ChargeTransferService {
    accountant: Arc<Accountant>,
    /// Where a handed buffer's fdinfo is read.
    fdinfo: dmabuf::FdInfoDir,
    deaths: Arc<DeathWatch>,
    autoconfigure: Autoconfigure,
    catch_up: Arc<CatchUp>,
    times: CallTimes,
}

impl Interface for ChargeTransferService {}

type BinderResult<T> = binder::Result<T>;

fn status(e: Error) -> Status {
    log::debug!("refused: {e}");
    binder::service_specific_error(e.code().0, e.to_string())
}

/// [`status`] for `caller`: to a caller that may not see other apps, the refusal names nobody
/// else's process or cgroup.
fn status_for(accountant: &Accountant, caller: &Caller, e: Error) -> Status {
    if accountant.sees_others(caller) {
        status(e)
    } else {
        status(e.without_others())
    }
}

fn invalid(msg: String) -> Status {
    status(Error::InvalidArgument(msg))
}

fn non_negative(name: &str, v: i64) -> BinderResult<u64> {
    u64::try_from(v).map_err(|_| invalid(format!("{name} must not be negative, got {v}")))
}

fn pid_arg(name: &str, v: i32) -> BinderResult<u32> {
    match u32::try_from(v) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(invalid(format!("{name} must be a positive pid, got {v}"))),
    }
}

/// How the service's binder is published: it asks the driver for each caller's security
/// context, which the trust rule needs where SELinux is active (the binder crate sends the request only
/// there; on Android SELinux is always active).
pub fn features() -> BinderFeatures {
    let mut features = BinderFeatures::default();
    features.set_requesting_sid = true;
    features
}

impl ChargeTransferService {
    pub fn new(
        accountant: Arc<Accountant>,
        proc_root: PathBuf,
        deaths: Arc<DeathWatch>,
        autoconfigure: Autoconfigure,
        catch_up: Arc<CatchUp>,
    ) -> Self {
        let fdinfo = dmabuf::FdInfoDir::open(&proc_root);
        ChargeTransferService { accountant, fdinfo, deaths, autoconfigure, catch_up, times: CallTimes::default() }
    }

    /// The binder caller, as the driver (or the RPC socket's peer credentials) reports it, with
    /// its security context where SELinux gives one (the service asks the driver for it: see
    /// [`features`]).
    fn caller(&self) -> BinderResult<Caller> {
        let pid = binder::calling_pid();
        let uid = binder::calling_uid();
        if pid <= 0 || uid == u32::MAX {
            return Err(status(Error::NotTrusted {
                uid,
                pid: pid.max(0) as u32,
                what: "call without a verifiable pid",
            }));
        }
        Ok(Caller { pid: pid as u32, uid, context: binder::calling_sid() })
    }

    /// Checks that `caller` may read the usage of `pid` before saying anything about it: a pid
    /// that names no process is refused like another app's to a caller who may not read those.
    fn readable_process(&self, caller: &Caller, pid: u32) -> BinderResult<()> {
        let process = self.accountant.process(pid);
        self.accountant.permit(caller, Op::ReadUsage { uid: process.as_ref().ok().map(|p| p.uid) }).map_err(status)?;
        process.map(drop).map_err(status)
    }

    /// What the fd is: for a buffer the ledger holds, its fstat only; otherwise its fdinfo too.
    fn inspect(&self, fd: &ParcelFileDescriptor) -> BinderResult<dmabuf::DmaBufInfo> {
        dmabuf::inspect_known(fd.as_fd(), &self.fdinfo, |inode| self.accountant.known_buffer(inode))
            .map_err(|e| status(e.into()))
    }
}

impl IChargeTransfer for ChargeTransferService {
    fn charge(&self, buffer: &ParcelFileDescriptor) -> BinderResult<ChargeInfo> {
        let _time = self.times.start(Method::Charge);
        let caller = self.caller()?;
        let info = self.inspect(buffer)?;
        let b = self.accountant.charge(&caller, &info, None).map_err(|e| status_for(&self.accountant, &caller, e))?;
        Ok(convert::charge_info(&self.accountant, b))
    }

    fn chargeOnBehalf(&self, buffer: &ParcelFileDescriptor, owner_pid: i32) -> BinderResult<ChargeInfo> {
        let _time = self.times.start(Method::ChargeOnBehalf);
        let caller = self.caller()?;
        let owner = pid_arg("ownerPid", owner_pid)?;
        let info = self.inspect(buffer)?;
        let b = self
            .accountant
            .charge(&caller, &info, Some(owner))
            .map_err(|e| status_for(&self.accountant, &caller, e))?;
        Ok(convert::charge_info(&self.accountant, b))
    }

    fn release(&self, inode: i64) -> BinderResult<()> {
        let _time = self.times.start(Method::Release);
        let caller = self.caller()?;
        self.accountant
            .release(&caller, non_negative("inode", inode)?)
            .map_err(|e| status_for(&self.accountant, &caller, e))
    }

    fn transfer(&self, buffer: &ParcelFileDescriptor, to_pid: i32) -> BinderResult<ChargeInfo> {
        let _time = self.times.start(Method::Transfer);
        let caller = self.caller()?;
        let to = pid_arg("toPid", to_pid)?;
        let info = self.inspect(buffer)?;
        let b = self.accountant.transfer(&caller, &info, to).map_err(|e| status_for(&self.accountant, &caller, e))?;
        Ok(convert::charge_info(&self.accountant, b))
    }

    fn offer(&self, buffer: &ParcelFileDescriptor, to_pid: i32, ttl_millis: i32) -> BinderResult<i64> {
        let _time = self.times.start(Method::Offer);
        let caller = self.caller()?;
        let to = pid_arg("toPid", to_pid)?;
        let ttl = u64::try_from(ttl_millis)
            .ok()
            .filter(|t| *t > 0)
            .ok_or_else(|| invalid(format!("ttlMillis must be positive, got {ttl_millis}")))?;
        let info = self.inspect(buffer)?;
        let ticket = self
            .accountant
            .offer(&caller, &info, to, Duration::from_millis(ttl))
            .map_err(|e| status_for(&self.accountant, &caller, e))?;
        Ok(ticket as i64)
    }

    fn accept(&self, ticket: i64, buffer: &ParcelFileDescriptor) -> BinderResult<ChargeInfo> {
        let _time = self.times.start(Method::Accept);
        let caller = self.caller()?;
        let ticket =
            u64::try_from(ticket).map_err(|_| status(Error::BadTicket { ticket: 0, reason: "negative ticket" }))?;
        let info = self.inspect(buffer)?;
        let b = self.accountant.accept(&caller, ticket, &info).map_err(|e| status_for(&self.accountant, &caller, e))?;
        Ok(convert::charge_info(&self.accountant, b))
    }

    fn registerClient(&self, token: &SpIBinder) -> BinderResult<()> {
        let caller = self.caller()?;
        self.accountant.permit(&caller, Op::RegisterClient).map_err(status)?;
        let process = self.accountant.processes().resolve_caller(&caller).map_err(status)?;
        self.deaths.register(process, token).map_err(status)
    }

    fn getProcessUsage(&self, pid: i32) -> BinderResult<UsageReport> {
        let _time = self.times.start(Method::GetProcessUsage);
        let caller = self.caller()?;
        let pid = pid_arg("pid", pid)?;
        self.readable_process(&caller, pid)?;
        let usage = self.accountant.process_usage(pid).map_err(status)?;
        Ok(convert::usage_report(&usage))
    }

    fn getUidUsage(&self, uid: i32) -> BinderResult<UsageReport> {
        let _time = self.times.start(Method::GetUidUsage);
        let caller = self.caller()?;
        let uid = u32::try_from(uid).map_err(|_| invalid(format!("uid must not be negative, got {uid}")))?;
        self.accountant.permit(&caller, Op::ReadUsage { uid: Some(uid) }).map_err(status)?;
        Ok(convert::usage_report(&self.accountant.uid_usage(uid)))
    }

    fn getCgroupUsage(&self, cgroup: &str) -> BinderResult<UsageReport> {
        let _time = self.times.start(Method::GetCgroupUsage);
        let caller = self.caller()?;
        let own = accountant::uid_cgroup(caller.uid);
        let mine = cgroup == own || cgroup.strip_prefix(&own).is_some_and(|rest| rest.starts_with('/'));
        let op = if mine { Op::ReadUsage { uid: Some(caller.uid) } } else { Op::ReadDevice };
        // A malformed path is refused as such first: that tells nobody anything. A refused
        // caller makes the service read no kernel counter.
        accountant::check_cgroup_path(cgroup).map_err(status)?;
        self.accountant.permit(&caller, op).map_err(status)?;
        Ok(convert::usage_report(&self.accountant.cgroup_usage(cgroup).map_err(status)?))
    }

    /// Trusted callers see every charge (pid 0) or a process's; others see their own uid's only,
    /// pid 0 meaning all of those.
    fn listCharges(&self, pid: i32) -> BinderResult<Vec<ChargeInfo>> {
        let _time = self.times.start(Method::ListCharges);
        let caller = self.caller()?;
        let pid = u32::try_from(pid).map_err(|_| invalid(format!("pid must not be negative, got {pid}")))?;
        let charges = if self.accountant.sees_others(&caller) {
            self.accountant.charges(pid)
        } else if pid == 0 {
            self.accountant.charges_of_uid(caller.uid)
        } else {
            self.readable_process(&caller, pid)?;
            self.accountant.charges(pid)
        };
        Ok(charges.into_iter().map(|b| convert::charge_info(&self.accountant, b)).collect())
    }

    fn getRegions(&self) -> BinderResult<Vec<RegionInfo>> {
        Ok(convert::regions(&self.accountant))
    }

    fn evict(&self, inode: i64) -> BinderResult<()> {
        let caller = self.caller()?;
        self.accountant.evict(&caller, non_negative("inode", inode)?).map_err(status)
    }

    fn restore(&self, inode: i64) -> BinderResult<()> {
        let caller = self.caller()?;
        self.accountant.restore(&caller, non_negative("inode", inode)?).map_err(status)
    }

    fn pin(&self, inode: i64) -> BinderResult<()> {
        let caller = self.caller()?;
        self.accountant.pin(&caller, non_negative("inode", inode)?, true).map_err(status)
    }

    fn unpin(&self, inode: i64) -> BinderResult<()> {
        let caller = self.caller()?;
        self.accountant.pin(&caller, non_negative("inode", inode)?, false).map_err(status)
    }

    fn evictionAdvice(&self, region: &str, bytes: i64) -> BinderResult<Vec<i64>> {
        let caller = self.caller()?;
        let bytes = non_negative("bytes", bytes)?;
        self.accountant.permit(&caller, Op::ReadDevice).map_err(status)?;
        let advice = self.accountant.eviction_advice(region, bytes).map_err(status)?;
        Ok(advice.into_iter().map(|i| i as i64).collect())
    }

    fn reconcile(&self) -> BinderResult<ReconcileReport> {
        let caller = self.caller()?;
        self.accountant.permit(&caller, Op::Reconcile).map_err(status)?;
        let (report, _) = self.catch_up.reconcile(&self.accountant).map_err(status)?;
        Ok(convert::reconcile_report(&report))
    }

    fn autoconfigure(&self, dry_run: bool, json: bool) -> BinderResult<String> {
        let caller = self.caller()?;
        let op = if dry_run { Op::AutoconfigureDryRun } else { Op::AutoconfigureApply };
        self.accountant.permit(&caller, op).map_err(status)?;
        (self.autoconfigure)(&self.accountant, dry_run, json).map_err(status)
    }

    fn dumpState(&self) -> BinderResult<String> {
        let caller = self.caller()?;
        match self.accountant.permit(&caller, Op::Dump) {
            Ok(()) => Ok(crate::dump::render(&self.accountant) + &self.catch_up.render() + &self.times.render()),
            Err(_) => Ok(crate::dump::render_for_uid(&self.accountant, caller.uid)),
        }
    }

    fn ping(&self) -> BinderResult<()> {
        let _time = self.times.start(Method::Ping);
        Ok(())
    }
}
