//! `k8s-ovs`: the CNI plugin binary. The runtime execs it per pod with the
//! CNI_* environment and the network configuration on stdin; it forwards the
//! call to the node agent and prints a spec-conformant result or error.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cni::env::{CniEnv, EnvCommand};
use cni::protocol::{Command, Request, Response};
use cni::spec::{version_json, CniError, CniResult, ErrorCode, NetConf, CURRENT_VERSION};
use serde_json::Value;

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let (version, outcome) = match read {
        Ok(_) => run(&stdin),
        Err(e) => {
            (None, Err(CniError::new(ErrorCode::IoFailure, "cannot read stdin").with_details(e.to_string())))
        }
    };
    let (out, code) = match outcome {
        Ok(Some(v)) => (Some(v), ExitCode::SUCCESS),
        Ok(None) => (None, ExitCode::SUCCESS),
        Err(mut e) => {
            e.cni_version = version.unwrap_or_else(|| CURRENT_VERSION.to_string());
            (serde_json::to_value(&e).ok(), ExitCode::FAILURE)
        }
    };
    if let Some(v) = out {
        let mut stdout = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut stdout, &v);
        let _ = stdout.write_all(b"\n");
    }
    code
}

/// Returns the config's cniVersion (for the error reply) and what to print.
fn run(stdin: &[u8]) -> (Option<String>, Result<Option<Value>, CniError>) {
    let env = match CniEnv::from_vars(|k| std::env::var(k).ok()) {
        Ok(e) => e,
        Err(e) => return (None, Err(e)),
    };
    let EnvCommand::Agent(command) = env.command else {
        // VERSION: stdin holds at most {"cniVersion": ...}.
        let asked = serde_json::from_slice::<Value>(stdin).ok();
        let asked = asked.as_ref().and_then(|v| v.get("cniVersion")).and_then(Value::as_str);
        return (None, Ok(Some(version_json(asked))));
    };
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => return (None, Err(e)),
    };
    let version = conf.cni_version.clone();
    (Some(version), forward(command, &env, conf))
}

fn forward(command: Command, env: &CniEnv, conf: NetConf) -> Result<Option<Value>, CniError> {
    if command == Command::Check && conf.prev_result.is_none() {
        return Err(CniError::new(ErrorCode::InvalidNetworkConfig, "CHECK needs prevResult"));
    }
    let socket = PathBuf::from(conf.agent_socket.clone().unwrap_or_else(|| cni::DEFAULT_AGENT_SOCKET.into()));
    let timeout = Duration::from_secs(conf.timeout_seconds.unwrap_or(30));
    let req = Request {
        command,
        container_id: env.container_id.clone(),
        netns: env.netns.clone(),
        ifname: env.ifname.clone(),
        pod_namespace: env.pod_namespace(),
        pod_name: env.pod_name(),
        runtime_config: conf.runtime_config.clone(),
        prev_result: conf.prev_result.clone(),
        valid_attachments: conf.valid_attachments.clone(),
    };
    match cni::client::call(&socket, &req, timeout)? {
        Response::Error(e) => Err(e),
        Response::Ok { result: None } => Ok(None),
        Response::Ok { result: Some(mut r) } => {
            if let Some(dns) = conf.dns.clone() {
                r.dns = dns;
            }
            Ok(Some(merge_prev(conf.prev_result.as_ref(), r, &conf.cni_version)?))
        }
    }
}

/// When a plugin ran before us in the chain, our interfaces and IPs are
/// appended to its result (interface indexes shifted), as chained plugins
/// expect; otherwise our result stands alone.
fn merge_prev(prev: Option<&Value>, ours: CniResult, version: &str) -> Result<Value, CniError> {
    let Some(prev) = prev else { return Ok(ours.to_json(version)) };
    let mut merged: CniResult = serde_json::from_value(prev.clone()).map_err(|e| {
        CniError::new(ErrorCode::DecodeFailure, "cannot decode prevResult").with_details(e.to_string())
    })?;
    let shift = merged.interfaces.len();
    merged.interfaces.extend(ours.interfaces);
    merged.ips.extend(ours.ips.into_iter().map(|mut ip| {
        ip.interface = ip.interface.map(|i| i + shift);
        ip
    }));
    merged.routes.extend(ours.routes);
    if merged.dns == Default::default() {
        merged.dns = ours.dns;
    }
    Ok(merged.to_json(version))
}
