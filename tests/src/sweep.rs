//! Removing what crashed earlier runs left behind.
//!
//! Every lab name is `<prefix><pid>x<seq>`: the PID of the test process that
//! created it. A namespace or lab directory whose creator is gone is a
//! leftover; its processes (daemons inside its namespaces) are ended by PID
//! and the namespaces deleted; processes a lab started outside its
//! namespaces (an etcd on loopback) are recorded in its directory
//! ([`record_owned`]) and ended too. Labs of live processes are never touched.

use std::path::Path;

use crate::cmd;
use crate::netns;

/// The file in a lab directory naming a process the lab started outside
/// its namespaces (an etcd on loopback): `<pid> <start time>`, the start
/// time (jiffies since boot, `/proc/<pid>/stat` field 22) so a sweep never
/// ends a process that merely reuses the PID.
const OWNED_PIDFILE: &str = "owned.pid";

/// Records `pid` as owned by the lab directory `dir`.
pub fn record_owned(dir: &Path, pid: i32) -> std::io::Result<()> {
    let start = start_time(pid).unwrap_or_default();
    std::fs::write(dir.join(OWNED_PIDFILE), format!("{pid} {start}\n"))
}

fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name start at field 3.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// Ends the processes recorded under `dir` (two levels deep) that still run
/// with the recorded start time.
fn end_owned(dir: &Path, depth: u32) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() && depth > 0 {
            end_owned(&path, depth - 1);
        } else if e.file_name() == OWNED_PIDFILE {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let mut f = text.split_whitespace().map(str::parse::<u64>);
            if let (Some(Ok(pid)), Some(Ok(start))) = (f.next(), f.next()) {
                let pid = pid as i32;
                if start_time(pid) == Some(start) {
                    netns::terminate_pids(&[pid], std::time::Duration::from_secs(2));
                }
            }
        }
    }
}

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
                end_owned(&e.path(), 2);
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
