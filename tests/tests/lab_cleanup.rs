//! The lab cleans up after itself: on a panic half-way through a test (Drop
//! during unwinding) and, for a process killed outright, by the sweep the
//! next lab runs.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Context, Result};
use lab::{netns, sweep, Lab, LabConfig};

fn existing_namespaces(names: &[String]) -> Vec<String> {
    let all = sweep::list_netns();
    names.iter().filter(|n| all.contains(n)).cloned().collect()
}

fn live(pids: &[i32]) -> Vec<i32> {
    pids.iter().copied().filter(|&p| netns::alive(p)).collect()
}

#[test]
fn lab_panicking_test_still_cleans_up() -> Result<()> {
    lab::needs_root!();
    let seen: Mutex<(Vec<String>, Vec<i32>, PathBuf)> = Mutex::new(Default::default());
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut lab = Lab::start(1).expect("lab starts");
        lab.add_pod(1, "victim", "veth-victim", "10.244.1.2/24", None).expect("pod");
        let mut s = seen.lock().expect("lock");
        *s = (lab.namespace_names(), lab.daemon_pids(), lab.dir.clone());
        drop(s);
        panic!("half-way through the test");
    }));
    assert!(outcome.is_err(), "the closure panicked");
    let (names, pids, dir) = seen.into_inner().expect("lock");
    assert_eq!(names.len(), 4, "fabric, ctl, node and pod namespaces were created: {names:?}");
    assert_eq!(pids.len(), 3, "ovsdb-server, ovs-vswitchd and etcd ran: {pids:?}");
    assert_eq!(existing_namespaces(&names), Vec::<String>::new(), "namespaces left behind");
    assert_eq!(live(&pids), Vec::<i32>::new(), "daemons left running");
    assert!(!dir.exists(), "lab dir {} left behind", dir.display());
    Ok(())
}

/// Prefix used only by the crash test, so no concurrently starting lab's
/// sweep removes the leftovers before this test has looked at them.
const CRASH_PREFIX: &str = "kovc";
const CRASH_ENV: &str = "K8S_OVS_LAB_CRASH_REPORT";

/// Runs only as the child of `lab_sweep_removes_leftovers_of_a_killed_run`:
/// starts a lab, reports what it made, and dies without unwinding.
#[test]
#[ignore = "child process of lab_sweep_removes_leftovers_of_a_killed_run"]
fn crashing_lab_child() {
    let Some(report) = std::env::var_os(CRASH_ENV) else { return };
    let cfg = LabConfig { prefix: CRASH_PREFIX.into(), ..LabConfig::nodes(1) };
    let lab = Lab::start_with(cfg).expect("lab starts");
    // And an etcd outside the lab's namespaces, on loopback (as the
    // controller tests run theirs), recorded in the lab's directory.
    let port = lab::etcd::free_port_pair().expect("free ports");
    let loose = lab::etcd::Etcd::start(None, "127.0.0.1", port, &lab.dir.join("loose")).expect("loose etcd");
    let pids: Vec<i32> = lab.daemon_pids().into_iter().chain([loose.pid()]).collect();
    let body = serde_json::json!({
        "namespaces": lab.namespace_names(),
        "pids": pids,
        "dir": lab.dir,
    });
    std::fs::write(report, body.to_string()).expect("write report");
    std::process::abort(); // no Drop runs
}

#[test]
fn lab_sweep_removes_leftovers_of_a_killed_run() -> Result<()> {
    lab::needs_root!();
    sweep::sweep(CRASH_PREFIX, &lab::base_dir());
    let report = std::env::temp_dir().join(format!("k8s-ovs-crash-{}.json", std::process::id()));
    let status = Command::new(std::env::current_exe()?)
        .args(["--exact", "crashing_lab_child", "--ignored", "--nocapture"])
        .env(CRASH_ENV, &report)
        .status()
        .context("run the crashing child")?;
    assert!(!status.success(), "the child must die");
    let body: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).context("child report")?)?;
    let _ = std::fs::remove_file(&report);
    let names: Vec<String> = serde_json::from_value(body["namespaces"].clone())?;
    let pids: Vec<i32> = serde_json::from_value(body["pids"].clone())?;
    let dir: PathBuf = serde_json::from_value(body["dir"].clone())?;

    // The crash really left things behind ...
    assert_eq!(existing_namespaces(&names).len(), names.len(), "leftover namespaces");
    assert_eq!(live(&pids).len(), 4, "ovsdb-server, ovs-vswitchd, etcd, the loopback etcd still run");
    assert!(dir.exists());
    // ... and the sweep removes all of it.
    let removed = sweep::sweep(CRASH_PREFIX, &lab::base_dir());
    assert_eq!(removed.len(), names.len(), "swept {removed:?}");
    assert_eq!(existing_namespaces(&names), Vec::<String>::new());
    // etcd was a child of the dead process: reparented, it is reaped by init
    // soon after the kill; wait for that rather than for a fixed time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !live(&pids).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(live(&pids), Vec::<i32>::new(), "daemons left running");
    assert!(!dir.exists());
    Ok(())
}

/// The lab's kubelet execs CNI plugins as a process of the node (a thread
/// that entered the node once, not `ip netns exec` per call): the plugin
/// sees the node's links in `ip link` and in `/sys`, and none of that
/// reaches the machine's own mount table.
#[test]
fn lab_node_processes_see_the_node_and_leave_the_machine_alone() -> Result<()> {
    lab::needs_root!();
    let lab = Lab::start(1)?;
    let node = &lab.node(1).netns;
    let ls_sys = || -> Result<Vec<String>> {
        let names = std::fs::read_dir("/sys/class/net")?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<Result<Vec<String>>>()?;
        Ok(names)
    };
    let machine_before = ls_sys()?;
    let node_links: Vec<String> = node
        .ip(&["-o", "link", "show"])?
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect();
    let (sys, ip_link) = netns::node_process::run(&node.name, || -> Result<(String, String)> {
        let sys = Command::new("ls").arg("/sys/class/net").output()?;
        let ip = Command::new("ip").args(["-o", "link", "show"]).output()?;
        Ok((
            String::from_utf8_lossy(&sys.stdout).into_owned(),
            String::from_utf8_lossy(&ip.stdout).into_owned(),
        ))
    })??;
    let mut sys: Vec<String> = sys.split_whitespace().map(str::to_string).collect();
    sys.sort();
    let mut expected = node_links.clone();
    expected.sort();
    assert_eq!(sys, expected, "the node's /sys/class/net lists the node's links");
    assert!(node_links.iter().any(|l| l == "br-phy"), "the node has its underlay bridge: {node_links:?}");
    assert!(ip_link.contains("br-phy"), "ip link run as a node process sees the node: {ip_link}");
    assert_eq!(ls_sys()?, machine_before, "the machine's /sys is untouched");
    assert!(
        !machine_before.iter().any(|l| l == "br-phy"),
        "no br-phy on the machine itself: {machine_before:?}"
    );
    Ok(())
}
