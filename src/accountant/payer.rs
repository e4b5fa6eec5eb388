//! The one-payer choice among a buffer's holders, shared by the rules that pick a payer nobody
//! asked for: catch-up (a held buffer nobody pays for) and the handoff rule (the payer let go of
//! a buffer others still hold).

use crate::identity::Process;
use crate::kernel::view::Holder;

/// Android's first app uid (AID_APP_START): below it, platform processes.
const FIRST_APP_UID: u32 = 10_000;

/// Whether `uid` is an app's (Android's app range), not a platform process's.
pub fn is_app(uid: u32) -> bool {
    uid >= FIRST_APP_UID
}

/// A holder that is a live process the service can resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub process: Process,
    pub holder: Holder,
}

/// The payer among a buffer's holders: an app (uid ≥ 10000) before a platform process (gralloc
/// and SurfaceFlinger hold buffers for others), a holder with an fd before one that only maps
/// it, then the lowest pid — deterministic, so every pass picks the same one.
pub fn choose_payer(candidates: &[Candidate]) -> Option<&Candidate> {
    candidates.iter().min_by_key(|c| (!is_app(c.process.uid), c.holder.fd_count == 0, c.process.pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(pid: u32, uid: u32, fd_count: u32) -> Candidate {
        Candidate {
            process: Process { pid, uid, cgroup: format!("/uid_{uid}/pid_{pid}"), start_time: 1, context: None },
            holder: Holder { fd_count, map_count: 1 },
        }
    }

    #[test]
    fn an_app_pays_before_the_allocator_that_holds_the_buffer_too() {
        let gralloc = candidate(50, 1003, 1);
        let app = candidate(900, 10001, 1);
        assert_eq!(choose_payer(&[gralloc.clone(), app.clone()]), Some(&app));
        assert_eq!(choose_payer(std::slice::from_ref(&gralloc)), Some(&gralloc), "a platform holder alone pays itself");
        assert_eq!(choose_payer(&[]), None);
    }

    #[test]
    fn of_several_apps_one_with_an_fd_then_the_lowest_pid_pays() {
        let mapped_only = candidate(100, 10001, 0);
        let (a, b) = (candidate(300, 10002, 1), candidate(200, 10003, 2));
        assert_eq!(choose_payer(&[mapped_only.clone(), a.clone(), b.clone()]), Some(&b));
        assert_eq!(choose_payer(std::slice::from_ref(&mapped_only)), Some(&mapped_only));
    }
}
