//! Cgroup path arithmetic the accountant needs: the owner level limits are set on, the per-app
//! cgroup of a uid, subtree membership.

/// The owner-level cgroup limits are set on: the first component (`/uid_10001/pid_5` →
/// `/uid_10001`).
pub(super) fn owner_level(cgroup: &str) -> &str {
    match cgroup[1..].find('/') {
        Some(i) => &cgroup[..i + 1],
        None => cgroup,
    }
}

/// Android's per-app cgroup of a uid.
pub fn uid_cgroup(uid: u32) -> String {
    format!("/uid_{uid}")
}

pub(super) fn in_subtree(path: &str, root: &str) -> bool {
    root == "/" || path == root || path.strip_prefix(root).is_some_and(|rest| rest.starts_with('/'))
}

/// The uid of an Android per-app cgroup path (`/uid_10001/pid_5` → 10001).
pub(super) fn uid_of_cgroup(path: &str) -> Option<u32> {
    path.split('/').find_map(|c| c.strip_prefix("uid_")?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_level_is_the_first_component() {
        assert_eq!(owner_level("/uid_10001/pid_5"), "/uid_10001");
        assert_eq!(owner_level("/system"), "/system");
        assert_eq!(owner_level("/"), "/");
    }

    #[test]
    fn subtree_and_uid_parsing() {
        assert!(in_subtree("/uid_1/pid_2", "/uid_1"));
        assert!(!in_subtree("/uid_10/pid_2", "/uid_1"));
        assert!(in_subtree("/x", "/"));
        assert_eq!(uid_of_cgroup("/apps/uid_10001/pid_5"), Some(10001));
        assert_eq!(uid_of_cgroup("/system"), None);
    }
}
