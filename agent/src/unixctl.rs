//! `ovs-appctl` without the process: OVS daemons answer JSON-RPC on a unix
//! socket `<rundir>/<daemon>.<pid>.ctl` (the same framing as OVSDB, so the
//! OVSDB connection is reused). Only for operator questions such as
//! `ofproto/trace`; nothing on the CNI path uses it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::ovsdb::jsonrpc::Connection;
use crate::ovsdb::OvsdbError;

#[derive(Debug, thiserror::Error)]
pub enum UnixctlError {
    #[error("read {path}: {source} (is {daemon} running with this --ovs-rundir?)")]
    Pidfile { daemon: String, path: PathBuf, source: std::io::Error },
    #[error("connect to {path}: {source}")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("{daemon} {command}: {message}")]
    Command { daemon: String, command: String, message: String },
    #[error("{daemon} did not answer {command} within {after:?}")]
    Timeout { daemon: String, command: String, after: Duration },
}

/// The control socket of `daemon` (e.g. `ovs-vswitchd`) in `rundir`, found
/// through its pidfile as `ovs-appctl -t <daemon>` finds it.
pub fn socket_path(rundir: &Path, daemon: &str) -> Result<PathBuf, UnixctlError> {
    let pidfile = rundir.join(format!("{daemon}.pid"));
    let pid = std::fs::read_to_string(&pidfile).map_err(|source| UnixctlError::Pidfile {
        daemon: daemon.to_string(),
        path: pidfile.clone(),
        source,
    })?;
    Ok(rundir.join(format!("{daemon}.{}.ctl", pid.trim())))
}

/// Runs one command (`ovs-appctl -t <daemon> <command> <args...>`) and
/// returns its text answer.
pub async fn call(
    rundir: &Path,
    daemon: &str,
    command: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<String, UnixctlError> {
    let path = socket_path(rundir, daemon)?;
    let stream = tokio::net::UnixStream::connect(&path)
        .await
        .map_err(|source| UnixctlError::Connect { path: path.clone(), source })?;
    let (r, w) = stream.into_split();
    let conn = Connection::start(r, w);
    let failed = |message: String| UnixctlError::Command {
        daemon: daemon.to_string(),
        command: command.to_string(),
        message,
    };
    let answer = tokio::time::timeout(timeout, conn.call(command, Value::from(args.to_vec())))
        .await
        .map_err(|_| UnixctlError::Timeout {
            daemon: daemon.to_string(),
            command: command.to_string(),
            after: timeout,
        })?;
    match answer {
        Ok(Value::String(text)) => Ok(text),
        Ok(other) => Ok(other.to_string()),
        // A command's own failure comes back as the reply's `error`: a string.
        Err(OvsdbError::Rpc { error: Value::String(message), .. }) => Err(failed(message.trim().to_string())),
        Err(e) => Err(failed(e.to_string())),
    }
}
