//! The one place that decides trust (keystore2's `permission.rs`): every operation a caller can
//! ask for is an [`Op`] in a [`Class`], and [`check`] says whether this caller may do it. The
//! accountant and the service call it; nothing else compares uids or contexts.
//!
//! The trust rule ([`TrustRule`]) is the kernel's, chosen once at start, not the caller's: where
//! SELinux is active the policy's `trusted.contexts` decide, a uid alone never makes a caller
//! trusted and a caller without a context is not trusted; without SELinux the policy's
//! `trusted.uids` decide, whatever context a caller carries.
//!
//! The memtrack HAL's reads ([`Op::ReadMemtrack`], [`Op::ReadGpuDevices`]) follow the framework's
//! memtrackproxy instead, because its callers expect that model: a process may read its own pid,
//! and root, system and shell (memtrackproxy's `CheckUid`) or a trusted caller any. Who reaches
//! the memtrack service at all is sepolicy's decision (`hal_memtrack` clients), not the uid's.

use crate::error::{Error, Result};
use crate::identity::Caller;
use crate::policy::{Policy, TrustRule};

/// Who may do an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Anyone, on what is their own (their buffers, their uid's usage).
    OwnBuffers,
    /// Trusted allocators and compositors: charges and pushes for other processes, the GPU
    /// driver's eviction reports.
    Push,
    /// Trusted callers only: state of the whole device and of other apps.
    Diagnostics,
    /// Memtrack's readers of other processes: memtrackproxy's uids (root, system, shell) or
    /// trusted callers.
    SystemReader,
}

/// The uids memtrackproxy lets read any pid (frameworks/native services/memtrackproxy
/// `CheckUid`: AID_ROOT, AID_SYSTEM, AID_SHELL; shell for `adb shell dumpsys meminfo`).
pub const MEMTRACK_READER_UIDS: [u32; 3] = [0, 1000, 2000];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Charge,
    ReleaseOwn,
    Offer,
    Accept,
    RegisterClient,
    /// Usage or charges of processes of `uid`: own class for the caller's own uid. `None`: the
    /// pid asked about names no process; that is refused like another app's, so an untrusted
    /// caller cannot learn which pids exist.
    ReadUsage {
        uid: Option<u32>,
    },
    ChargeOnBehalf,
    Push,
    /// Release a charge the caller does not own.
    ReleaseOthers,
    /// Evict, restore, pin, unpin (the GPU driver's userspace).
    ReportVram,
    /// Usage of a cgroup outside the caller's app, eviction advice.
    ReadDevice,
    Dump,
    Reconcile,
    AutoconfigureDryRun,
    AutoconfigureApply,
    /// memtrack's `getMemory` for `pid`: own class for the caller's own pid.
    ReadMemtrack {
        pid: u32,
    },
    /// memtrack's `getGpuDeviceInfo`.
    ReadGpuDevices,
}

impl Op {
    /// The class of the operation for `caller`.
    pub fn class(self, caller: &Caller) -> Class {
        match self {
            Op::Charge | Op::ReleaseOwn | Op::Offer | Op::Accept | Op::RegisterClient => Class::OwnBuffers,
            Op::ReadUsage { uid: Some(uid) } if uid == caller.uid => Class::OwnBuffers,
            Op::ReadMemtrack { pid } if pid == caller.pid => Class::OwnBuffers,
            Op::ReadMemtrack { .. } | Op::ReadGpuDevices => Class::SystemReader,
            Op::ChargeOnBehalf | Op::Push | Op::ReleaseOthers | Op::ReportVram => Class::Push,
            Op::ReadUsage { .. }
            | Op::ReadDevice
            | Op::Dump
            | Op::Reconcile
            | Op::AutoconfigureDryRun
            | Op::AutoconfigureApply => Class::Diagnostics,
        }
    }

    /// What the refusal says the caller tried (never whom else it concerns).
    fn what(self) -> &'static str {
        match self {
            Op::Charge => "charge",
            Op::ReleaseOwn => "release",
            Op::Offer => "offer",
            Op::Accept => "accept",
            Op::RegisterClient => "register a client",
            Op::ReadUsage { .. } => "read another app's usage",
            Op::ChargeOnBehalf => "charge on behalf of another process",
            Op::Push => "push a charge to another process",
            Op::ReleaseOthers => "release a charge it does not own",
            Op::ReportVram => "report eviction, restore or pins",
            Op::ReadDevice => "read device-wide state",
            Op::Dump => "dump the service state",
            Op::Reconcile => "reconcile",
            Op::AutoconfigureDryRun => "read the autoconfig report",
            Op::AutoconfigureApply => "apply autoconfig",
            Op::ReadMemtrack { .. } => "read another process's memtrack records",
            Op::ReadGpuDevices => "read the GPU device list",
        }
    }
}

/// May `caller` do `op` under the kernel's trust `rule`? A refusal names the caller and the
/// operation only.
pub fn check(policy: &Policy, rule: TrustRule, caller: &Caller, op: Op) -> Result<()> {
    match op.class(caller) {
        Class::OwnBuffers => Ok(()),
        Class::SystemReader if MEMTRACK_READER_UIDS.contains(&caller.uid) => Ok(()),
        Class::Push | Class::Diagnostics | Class::SystemReader
            if policy.trusts(rule, caller.uid, caller.context.as_deref()) =>
        {
            Ok(())
        }
        Class::Push | Class::Diagnostics | Class::SystemReader => {
            Err(Error::NotTrusted { uid: caller.uid, pid: caller.pid, what: op.what() })
        }
    }
}

/// Whether `caller` may see other apps' processes and cgroups (in listings and in refusals).
pub fn sees_others(policy: &Policy, rule: TrustRule, caller: &Caller) -> bool {
    check(policy, rule, caller, Op::ReadDevice).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::from_json(
            r#"{"version": 1, "heaps": {"system": {"class": "system"}},
                "trusted": {"uids": [1003], "contexts": ["surfaceflinger"]}}"#,
        )
        .unwrap()
    }

    #[test]
    fn own_buffers_are_everyones_push_and_diagnostics_are_the_trusted_ones() {
        let (p, app, gralloc) = (policy(), Caller::new(5, 10001), Caller::new(6, 1003));
        for op in
            [Op::Charge, Op::ReleaseOwn, Op::Offer, Op::Accept, Op::RegisterClient, Op::ReadUsage { uid: Some(10001) }]
        {
            assert!(check(&p, TrustRule::Uids, &app, op).is_ok(), "{op:?}");
        }
        for op in
            [Op::ChargeOnBehalf, Op::Push, Op::ReportVram, Op::Dump, Op::Reconcile, Op::ReadUsage { uid: Some(10002) }]
        {
            assert!(matches!(check(&p, TrustRule::Uids, &app, op), Err(Error::NotTrusted { pid: 5, .. })), "{op:?}");
            assert!(check(&p, TrustRule::Uids, &gralloc, op).is_ok(), "{op:?}");
        }
    }

    #[test]
    fn uid_1000_is_not_trusted_by_the_shipped_policy() {
        let system_server = Caller::new(7, 1000);
        assert!(check(&Policy::embedded_default(), TrustRule::Uids, &system_server, Op::Push).is_err());
    }

    #[test]
    fn with_selinux_the_context_decides_and_the_uid_alone_never_does() {
        let p = policy();
        let gralloc_uid_app_context =
            Caller { pid: 6, uid: 1003, context: Some("u:r:untrusted_app:s0:c12,c257".into()) };
        assert!(check(&p, TrustRule::Contexts, &gralloc_uid_app_context, Op::Push).is_err());
        let surfaceflinger = Caller { pid: 8, uid: 1000, context: Some("u:r:surfaceflinger:s0".into()) };
        assert!(check(&p, TrustRule::Contexts, &surfaceflinger, Op::Push).is_ok());
    }

    #[test]
    fn with_selinux_a_caller_without_a_context_is_not_trusted_whatever_its_uid() {
        assert!(check(&policy(), TrustRule::Contexts, &Caller::new(6, 1003), Op::Push).is_err());
    }

    #[test]
    fn without_selinux_the_uid_decides_whatever_context_a_caller_carries() {
        let p = policy();
        let gralloc_uid_app_context =
            Caller { pid: 6, uid: 1003, context: Some("u:r:untrusted_app:s0:c12,c257".into()) };
        assert!(check(&p, TrustRule::Uids, &gralloc_uid_app_context, Op::Push).is_ok());
        let surfaceflinger_app_uid = Caller { pid: 8, uid: 10001, context: Some("u:r:surfaceflinger:s0".into()) };
        assert!(check(&p, TrustRule::Uids, &surfaceflinger_app_uid, Op::Push).is_err());
    }

    #[test]
    fn memtrack_follows_memtrackproxy_own_pid_for_anyone_any_pid_for_root_system_shell() {
        let p = policy();
        for rule in [TrustRule::Uids, TrustRule::Contexts] {
            let app = Caller { pid: 5, uid: 10001, context: Some("u:r:untrusted_app:s0".into()) };
            assert!(check(&p, rule, &app, Op::ReadMemtrack { pid: 5 }).is_ok());
            assert!(check(&p, rule, &app, Op::ReadMemtrack { pid: 6 }).is_err());
            assert!(check(&p, rule, &app, Op::ReadGpuDevices).is_err());
            for uid in MEMTRACK_READER_UIDS {
                let reader = Caller { pid: 7, uid, context: Some("u:r:system_server:s0".into()) };
                assert!(check(&p, rule, &reader, Op::ReadMemtrack { pid: 6 }).is_ok(), "uid {uid}");
                assert!(check(&p, rule, &reader, Op::ReadGpuDevices).is_ok(), "uid {uid}");
            }
        }
        let surfaceflinger = Caller { pid: 8, uid: 1003, context: Some("u:r:surfaceflinger:s0".into()) };
        assert!(check(&p, TrustRule::Contexts, &surfaceflinger, Op::ReadMemtrack { pid: 6 }).is_ok());
    }

    #[test]
    fn a_refusal_names_only_the_caller() {
        let err = check(&policy(), TrustRule::Uids, &Caller::new(5, 10001), Op::ReadUsage { uid: Some(10002) })
            .unwrap_err()
            .to_string();
        assert!(!err.contains("10002"), "{err}");
    }
}
