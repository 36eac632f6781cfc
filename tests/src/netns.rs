//! Network namespaces the lab creates, and the processes inside them.

use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cmd::{self, Output};

pub mod node_process;

/// A named network namespace (`/run/netns/<name>`) created by the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates the namespace with loopback up.
    pub fn create(name: &str) -> Result<Netns> {
        cmd::run(&["ip", "netns", "add", name]).with_context(|| format!("create netns {name}"))?;
        let ns = Netns { name: name.to_string() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `/run/netns/<name>`: what a runtime passes as `CNI_NETNS`.
    pub fn path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        cmd::run(&v)
    }

    /// Runs a program inside the namespace; it must succeed.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        self.exec_env(args, &[])
    }

    /// Runs a program inside the namespace with extra environment.
    pub fn exec_env(&self, args: &[&str], env: &[(&str, &str)]) -> Result<String> {
        cmd::run_env(&self.wrap(args), env)
    }

    /// Runs a program inside the namespace; returns its output even on failure.
    pub fn exec_full(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        cmd::run_full(&self.wrap(args), &[], timeout)
    }

    /// The argv that runs `args` inside this namespace (for spawning daemons).
    pub fn wrap<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["ip", "netns", "exec", self.name.as_str()];
        v.extend_from_slice(args);
        v
    }

    /// `sysctl -w key=value` inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")])?;
        Ok(())
    }

    /// Turns off checksum and segmentation offloads: veths attached to an
    /// OVS netdev bridge stall TCP otherwise (AF_PACKET sees partial checksums).
    pub fn offloads_off(&self, dev: &str) -> Result<()> {
        self.exec(&["ethtool", "-K", dev, "tx", "off", "rx", "off", "tso", "off", "gso", "off", "gro", "off"])
            .map(|_| ())
            .with_context(|| format!("offloads off on {dev} in {}", self.name))
    }

    /// PIDs of every process whose network namespace is this one.
    pub fn pids(&self) -> Vec<i32> {
        pids_in(&self.name)
    }

    /// Moves the calling thread into the namespace: sockets it opens from
    /// then on, and threads it spawns (a tokio runtime's workers), live
    /// there. For a test process to reach addresses inside the lab; not
    /// from its main thread: `ip netns pids` goes by the main thread's
    /// namespace, and destroying the namespace would end the process itself.
    pub fn enter_this_thread(&self) -> Result<()> {
        let path = self.path();
        let f = std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns into {}", self.name))
    }

    /// Deletes the namespace after ending every process inside it (all of
    /// them were started by the lab: nobody else knows its unique name).
    pub fn destroy(&self) {
        destroy_by_name(&self.name);
    }
}

pub(crate) fn pids_in(ns: &str) -> Vec<i32> {
    cmd::run(&["ip", "netns", "pids", ns])
        .map(|s| s.split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

/// Ends processes by PID: SIGTERM, a grace period, then SIGKILL.
pub fn terminate_pids(pids: &[i32], grace: Duration) {
    for &p in pids {
        let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
    }
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if pids.iter().all(|&p| !alive(p)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for &p in pids {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
}

/// Whether a process exists (zombies of our own children count as gone).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // state is the field after the parenthesised command name
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

pub(crate) fn destroy_by_name(name: &str) {
    node_process::forget(name);
    let pids = pids_in(name);
    if !pids.is_empty() {
        terminate_pids(&pids, Duration::from_secs(2));
    }
    cmd::run_quiet(&["ip", "netns", "del", name]);
    // `ip netns exec` bind-mounts /etc/netns/<name>/* (a pod's resolv.conf).
    let _ = std::fs::remove_dir_all(std::path::Path::new("/etc/netns").join(name));
}
