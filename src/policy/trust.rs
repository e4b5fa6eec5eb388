//! The trust rule: which of the policy's `trusted` lists decides whether a caller may act for
//! others. The kernel chooses the list, not the caller: where SELinux is active, binder hands the
//! service every caller's security context and `trusted.contexts` alone decides (a uid is shared
//! by every process that runs as it — uid 1000 is system_server and every `android.uid.system`
//! app — so a uid alone never makes a caller trusted there); without SELinux there is no context
//! and `trusted.uids` decides.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::Policy;

/// Which list decides trust, chosen by the kernel (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrustRule {
    /// SELinux is active: the caller's security context must match `trusted.contexts`.
    Contexts,
    /// No SELinux: the caller's uid must be in `trusted.uids`.
    Uids,
}

impl TrustRule {
    /// The rule for a kernel with SELinux active or not. The probe calls SELinux active when
    /// selinuxfs is mounted (`/sys/fs/selinux/enforce` exists), the same test the binder crate makes
    /// before it asks the driver for callers' contexts, so the rule is `Contexts` exactly when
    /// contexts arrive. Enforcing or permissive does not matter: the context is the caller's
    /// either way.
    pub fn with_selinux(active: bool) -> TrustRule {
        if active {
            TrustRule::Contexts
        } else {
            TrustRule::Uids
        }
    }

    /// One line for reports: which list decides and why.
    pub fn describe(self) -> &'static str {
        match self {
            TrustRule::Contexts => {
                "SELinux contexts (trusted.contexts): SELinux is active; a uid alone never makes a caller trusted"
            }
            TrustRule::Uids => "uids (trusted.uids): no SELinux, callers have no security context",
        }
    }
}

impl fmt::Display for TrustRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrustRule::Contexts => "contexts",
            TrustRule::Uids => "uids",
        })
    }
}

impl Policy {
    /// Whether a caller with `uid` and security `context` (as binder reported them) is trusted
    /// under `rule`. Under [`TrustRule::Contexts`] a caller without a context is not trusted,
    /// whatever its uid.
    pub fn trusts(&self, rule: TrustRule, uid: u32, context: Option<&str>) -> bool {
        match rule {
            TrustRule::Contexts => context.is_some_and(|c| self.is_trusted_context(c)),
            TrustRule::Uids => self.is_trusted_uid(uid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRALLOC: &str = "u:r:hal_graphics_allocator_default:s0";
    const APP: &str = "u:r:untrusted_app:s0:c512,c768";

    fn policy() -> Policy {
        Policy::from_json(
            r#"{"version": 1, "heaps": {"system": {"class": "system"}},
                "trusted": {"uids": [1000, 1003], "contexts": ["hal_graphics_allocator_default"]}}"#,
        )
        .unwrap()
    }

    #[test]
    fn with_selinux_a_trusted_context_is_trusted_whatever_its_uid() {
        let p = policy();
        assert!(p.trusts(TrustRule::Contexts, 1003, Some(GRALLOC)));
        assert!(p.trusts(TrustRule::Contexts, 10001, Some(GRALLOC)));
    }

    #[test]
    fn with_selinux_a_trusted_uid_in_an_app_context_is_not_trusted() {
        let p = policy();
        assert!(!p.trusts(TrustRule::Contexts, 1003, Some(APP)));
        assert!(!p.trusts(TrustRule::Contexts, 1000, Some(APP)));
    }

    #[test]
    fn with_selinux_a_caller_without_a_context_is_not_trusted() {
        assert!(!policy().trusts(TrustRule::Contexts, 1003, None));
    }

    #[test]
    fn without_selinux_the_uid_decides() {
        let p = policy();
        assert!(p.trusts(TrustRule::Uids, 1003, None));
        assert!(!p.trusts(TrustRule::Uids, 10001, None));
        assert!(!p.trusts(TrustRule::Uids, 10001, Some(GRALLOC)), "a context cannot stand in for a uid");
    }
}
