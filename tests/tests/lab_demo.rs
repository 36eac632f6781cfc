//! The README's demo, run as a user runs it (the `demo` binary, short mode):
//! it must finish, show the reachability matrices, and leave nothing behind,
//! also when interrupted with Ctrl-C half-way.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};

use anyhow::{ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const DEMO: &str = env!("CARGO_BIN_EXE_demo");

/// Lab namespaces (`kovs<pid>x...`) the demo process `pid` left behind.
fn leftovers(pid: u32) -> Vec<String> {
    let prefix = format!("{}{pid}x", lab::DEFAULT_PREFIX);
    lab::sweep::list_netns().into_iter().filter(|n| n.starts_with(&prefix)).collect()
}

/// `demo --short`; --no-build: the test run already built the workspace's binaries.
fn spawn_demo(stderr: Stdio) -> Result<Child> {
    Command::new(DEMO)
        .args(["--short", "--no-build"])
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .context("spawn demo")
}

#[test]
fn lab_demo_short_runs_end_to_end() -> Result<()> {
    lab::needs_root!();
    let child = spawn_demo(Stdio::piped())?;
    let pid = child.id();
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "demo exited {}:\n{stdout}\n{stderr}", out.status);

    // The initial matrix and one after each of the five changes the tour
    // prints a matrix for; each has the six pods as columns.
    let matrices: Vec<&str> = stdout.lines().filter(|l| l.trim_start().starts_with("from\\to")).collect();
    ensure!(matrices.len() == 6, "expected 6 matrices, got {}:\n{stdout}", matrices.len());
    for header in &matrices {
        for pod in ["red1", "red2", "blue1", "blue2", "green1", "green2"] {
            ensure!(header.contains(pod), "matrix header without {pod}: {header}");
        }
    }
    // Both ways of changing tenancy were shown, and the global step shows VNI 0.
    for needle in [
        "$ etcdctl --endpoints",
        "\"Action\":\"join\"",
        "\"Action\":\"isolate\"",
        "\"Action\":\"global\"",
        "$ k8s-ovs-ctl --etcd-endpoints",
        "--wait join blue --to red",
        "0 global",
        "-> 10.96.5.5   (dnsmasq in kube-system/coredns on n2",
        "(red/web): answered \"red2 peer=172.11.0.",
        "(red/web): refused",
        "everything torn down",
    ] {
        ensure!(stdout.contains(needle), "demo output lacks {needle:?}:\n{stdout}");
    }
    // The demo checks every cell against the VNIs itself and fails on a
    // difference; a `!` would mark such a cell.
    ensure!(!stdout.contains("ok!") && !stdout.contains("--!"), "{stdout}");
    ensure!(!stdout.contains("bandwidth"), "short mode skips the bandwidth part:\n{stdout}");
    ensure!(leftovers(pid).is_empty(), "namespaces left: {:?}", leftovers(pid));
    Ok(())
}

#[test]
fn lab_demo_ctrl_c_tears_everything_down() -> Result<()> {
    lab::needs_root!();
    let mut child = spawn_demo(Stdio::null())?;
    let pid = child.id();
    let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
    let mut seen = String::new();
    // Interrupt once the cluster is up and pods exist (the first matrix).
    let mut line = String::new();
    while stdout.read_line(&mut line)? > 0 {
        seen.push_str(&line);
        if line.contains("reachability:") {
            break;
        }
        line.clear();
    }
    ensure!(seen.contains("reachability:"), "demo ended before its first matrix:\n{seen}");
    ensure!(!leftovers(pid).is_empty(), "the lab should be up while the demo runs");
    kill(Pid::from_raw(pid as i32), Signal::SIGINT)?;
    stdout.read_to_string(&mut seen)?;
    let status = child.wait()?;
    ensure!(status.code() == Some(130), "demo exited {status} after SIGINT:\n{seen}");
    ensure!(seen.contains("interrupted: everything torn down"), "{seen}");
    ensure!(leftovers(pid).is_empty(), "namespaces left after Ctrl-C: {:?}", leftovers(pid));
    Ok(())
}
