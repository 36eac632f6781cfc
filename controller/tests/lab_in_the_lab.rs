//! The deployment shape: the test apiserver and the controller binary on the
//! lab's control host, etcd there too, and the operator's k8s-ovs-ctl and a
//! node's API client inside a node namespace, across the lab fabric.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use etcd_schema::{parse_host_subnet, parse_net_namespace};
use lab::kube_api::KubeApi;
use lab::{Lab, CTL_IP};
use support::Daemon;

mod support;

fn wait_for(what: &str, mut f: impl FnMut() -> Result<Option<String>>) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("gave up waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn lab_controller_runs_on_the_control_host() -> Result<()> {
    lab::needs_root!();
    let lab = Lab::start(1)?;
    let api = KubeApi::start_in(&lab.ctl, CTL_IP, 0)?;
    let node_ip = lab.node(1).ip.clone();
    api.create_node("node1", &node_ip)?;
    api.create_namespace("web")?;
    api.create(serde_json::json!({"kind": "Pod", "metadata": {"name": "w1", "namespace": "web"},
                                  "spec": {"nodeName": "node1", "containers": []}}))?;

    let log = std::fs::File::create(lab.dir.join("controller.log"))?;
    let (bin, ep, url) = (env!("CARGO_BIN_EXE_k8s-ovs-controller"), lab.etcd_endpoint(), api.url());
    let argv = lab.ctl.wrap(&[
        bin,
        "--etcd-endpoints",
        &ep,
        "--etcd-insecure",
        "--kube-url",
        &url,
        "--network",
        "172.11.0.0/16",
    ]);
    let child = Command::new(argv[0])
        .args(&argv[1..])
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("spawn")?;
    let _controller = Daemon(child);

    let keys = support::keys();
    let get = |key: &str| -> Result<Option<String>> {
        let v = lab.etcdctl(&["get", "--print-value-only", key])?;
        Ok(Some(v.trim().to_string()).filter(|s| !s.is_empty()))
    };
    let web_key = keys.netnamespace("web");
    let raw = wait_for("web's record", || get(&web_key))?;
    assert!(parse_net_namespace(&web_key, "web", &raw)?.net_id >= 10);
    let subnet_key = keys.subnet(&node_ip);
    let raw = wait_for("node1's subnet", || get(&subnet_key))?;
    let config =
        etcd_schema::parse_network_config(&keys.config(), &wait_for("config", || get(&keys.config()))?)?;
    assert!(parse_host_subnet(&subnet_key, &node_ip, &raw, &config)?.subnet.is_some());

    // The operator on a node: k8s-ovs-ctl over the fabric.
    let ctl = env!("CARGO_BIN_EXE_k8s-ovs-ctl");
    let out =
        lab.node(1).netns.exec(&[ctl, "--endpoints", &ep, "--etcd-insecure", "--wait", "global", "web"])?;
    assert_eq!(out.trim(), "web: NetID 0");

    // A node-local client of the apiserver (as the agent will be): its pods only.
    let pods = format!("{url}/api/v1/pods?fieldSelector=spec.nodeName%3Dnode1");
    let body = lab.node(1).netns.exec(&["curl", "-sS", "--max-time", "10", &pods])?;
    let list: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(list["items"][0]["metadata"]["name"], "w1");
    Ok(())
}
