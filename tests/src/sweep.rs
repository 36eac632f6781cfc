//! Removing what crashed earlier runs left behind.
//!
//! Every lab name is `<prefix><pid>x<seq>`: the PID of the test process that
//! created it. A namespace or lab directory whose creator is gone is a
//! leftover; its processes (daemons inside its namespaces) are ended by PID
//! and the namespaces deleted. Labs of live processes are never touched.

use std::path::Path;

use crate::cmd;
use crate::netns;

/// Parses the creator PID out of a lab-owned name (`kovs123x0-n1` -> 123).
pub fn owner_pid(name: &str, prefix: &str) -> Option<i32> {
    let rest = name.strip_prefix(prefix)?;
    let (pid, _) = rest.split_once('x')?;
    pid.parse().ok()
}

/// Namespace names (all, ours or not) as `ip netns list` prints them.
pub fn list_netns() -> Vec<String> {
    cmd::run(&["ip", "netns", "list"])
        .map(|s| s.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect())
        .unwrap_or_default()
}

/// Removes the namespaces and directories of labs with `prefix` whose
/// creating process no longer runs. Returns the namespaces it removed.
pub fn sweep(prefix: &str, base_dir: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    let mut dead: Vec<String> =
        list_netns().into_iter().filter(|n| owner_pid(n, prefix).is_some_and(|p| !netns::alive(p))).collect();
    // Pods first, then nodes, then the fabric: links die with their namespace
    // anyway, this only keeps the order equal to a clean stop.
    dead.sort_by_key(|n| {
        if n.ends_with("-fab") {
            2
        } else if n.contains("-n") {
            1
        } else {
            0
        }
    });
    for ns in dead {
        netns::destroy_by_name(&ns);
        removed.push(ns);
    }
    if let Ok(entries) = std::fs::read_dir(base_dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if owner_pid(&name, prefix).is_some_and(|p| !netns::alive(p)) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_only_our_names() {
        assert_eq!(owner_pid("kovs123x0-n1", "kovs"), Some(123));
        assert_eq!(owner_pid("kovs7x12-fab", "kovs"), Some(7));
        assert_eq!(owner_pid("kovsx0-fab", "kovs"), None);
        assert_eq!(owner_pid("other123x0", "kovs"), None);
        assert_eq!(owner_pid("kovs12-fab", "kovs"), None);
    }
}
