//! Running the lab's helper programs (ip, ovs-vsctl, etcdctl, ...) with a
//! deadline and errors that say what ran and what it printed.
//!
//! The lab is test scaffolding, not a hot path: spawning `ip` and `ovs-vsctl`
//! here keeps it obviously equal to the recipes in the reference docs.

use std::ffi::OsStr;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Default deadline for one helper command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
}

fn describe<S: AsRef<OsStr>>(args: &[S]) -> String {
    args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
}

/// Runs `args` (program first) with the given extra environment and deadline;
/// returns its output whatever the exit status. A command that outlives the
/// deadline is killed (by its PID) and reported as an error.
pub fn run_full<S: AsRef<OsStr>>(args: &[S], env: &[(&str, &str)], timeout: Duration) -> Result<Output> {
    run_stdin(args, env, None, timeout)
}

/// [`run_full`] with `stdin` written to the command's standard input.
pub fn run_stdin<S: AsRef<OsStr>>(
    args: &[S],
    env: &[(&str, &str)],
    stdin: Option<&str>,
    timeout: Duration,
) -> Result<Output> {
    let Some((prog, rest)) = args.split_first() else {
        bail!("empty command");
    };
    let mut child = Command::new(prog)
        .args(rest)
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn `{}`", describe(args)))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        // Dropped at the end of the block: the command sees EOF.
        pipe.write_all(text.as_bytes()).context("write stdin")?;
    }
    // Drain pipes on threads so a chatty command cannot block on a full pipe.
    let mut out = child.stdout.take().context("stdout pipe")?;
    let mut err = child.stderr.take().context("stderr pipe")?;
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().context("wait")? {
            break st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{}` did not finish within {:?}", describe(args), timeout);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(Output {
        status: status.code(),
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}

/// Runs a command that must succeed; returns its stdout.
pub fn run<S: AsRef<OsStr>>(args: &[S]) -> Result<String> {
    run_env(args, &[])
}

/// Like [`run`], with extra environment variables.
pub fn run_env<S: AsRef<OsStr>>(args: &[S], env: &[(&str, &str)]) -> Result<String> {
    let o = run_full(args, env, DEFAULT_TIMEOUT)?;
    if !o.success() {
        bail!(
            "`{}` failed ({:?}): {}{}",
            describe(args),
            o.status,
            o.stderr.trim(),
            if o.stderr.trim().is_empty() { o.stdout.trim() } else { "" }
        );
    }
    Ok(o.stdout)
}

/// Best effort: runs and ignores the outcome (used on cleanup paths).
pub fn run_quiet<S: AsRef<OsStr>>(args: &[S]) {
    let _ = run_full(args, &[], Duration::from_secs(10));
}
