//! The `k8s-ovs` binary as a runtime execs it, without an agent: what it
//! answers locally (VERSION, environment and configuration errors) and its
//! message when the agent is not running. (With an agent: the lab tests.)

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

fn run(env: &[(&str, &str)], stdin: &str) -> (i32, Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_k8s-ovs"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn k8s-ovs");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), v)
}

#[test]
fn version_lists_every_supported_version() {
    let (code, v) = run(
        &[("CNI_COMMAND", "VERSION"), ("CNI_NETNS", "dummy"), ("CNI_IFNAME", "dummy")],
        r#"{"cniVersion":"0.4.0"}"#,
    );
    assert_eq!(code, 0);
    assert_eq!(v["cniVersion"], "0.4.0");
    let versions: Vec<&str> =
        v["supportedVersions"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(versions, ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
}

#[test]
fn environment_and_config_errors_use_spec_codes() {
    let (code, v) = run(&[], "{}");
    assert_eq!((code, v["code"].as_u64()), (1, Some(4)), "no CNI_COMMAND: {v}");
    let add = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
    ];
    let (code, v) = run(&add, "not json");
    assert_eq!((code, v["code"].as_u64()), (1, Some(6)), "bad JSON: {v}");
    let (code, v) = run(&add, r#"{"cniVersion":"9.9.9","name":"n","type":"k8s-ovs"}"#);
    assert_eq!((code, v["code"].as_u64()), (1, Some(1)), "unknown version: {v}");
    // A version we cannot speak is answered in our own current one.
    assert_eq!(v["cniVersion"], "1.1.0", "{v}");
}

#[test]
fn says_clearly_when_the_agent_is_not_running() {
    let dir = std::env::temp_dir().join(format!("k8s-ovs-cni-test-{}", std::process::id()));
    let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "k8s-ovs", "type": "k8s-ovs",
                                  "agentSocket": dir.join("absent.sock")});
    let add = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
    ];
    let (code, v) = run(&add, &conf.to_string());
    assert_eq!((code, v["code"].as_u64()), (1, Some(11)), "{v}");
    assert!(v["msg"].as_str().unwrap_or_default().contains("agent is not running"), "{v}");
}
