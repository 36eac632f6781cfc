//! ovsdb-server restarts under a running agent (an OVS package upgrade, a
//! crash): with no agent restart and no operator action, the next CNI ADD
//! and DEL work and a new pod reaches one wired before the restart.

use std::time::Duration;

use anyhow::{ensure, Result};
use lab::cluster::{cni, Agent, CniCall};
use lab::{traffic, Lab, Netns};

/// CNI ADD of pod `name` in namespace `red` on node 1; its netns and IP.
fn add_pod(lab: &mut Lab, agent: &Agent, name: &str) -> Result<(Netns, String)> {
    let netns = lab.pod_netns(name)?;
    let out = cni(lab, 1, "ADD", &CniCall::pod(&format!("cid-{name}"), &netns, "red", name))?;
    ensure!(out.code == Some(0), "ADD {name}: {}\n{}", out.stdout, agent.log_tail());
    let addr = out.stdout["ips"][0]["address"].as_str().unwrap_or_default();
    Ok((netns, addr.split('/').next().unwrap_or_default().to_string()))
}

#[test]
fn lab_ovsdb_restart_the_agent_wires_pods_after_ovsdb_server_restarts() -> Result<()> {
    lab::needs_root!();
    let mut lab = Lab::start(1)?;
    lab.put_network_config("k8s-ovs-multitenant")?;
    lab.put_node_subnet(1)?;
    lab.put_netnamespace("red", 100)?;
    let agent = Agent::start(&lab, 1, &["--no-kube"])?;
    let (a, a_ip) = add_pod(&mut lab, &agent, "a")?;

    lab.node(1).ovs.restart_ovsdb()?;
    let (b, b_ip) = add_pod(&mut lab, &agent, "b")?;
    ensure!(traffic::reachable(&b, &a_ip, Duration::from_secs(5))?, "b -> a after the restart");
    ensure!(traffic::reachable(&a, &b_ip, Duration::from_secs(5))?, "a -> b after the restart");

    lab.node(1).ovs.restart_ovsdb()?;
    let out = cni(&lab, 1, "DEL", &CniCall::pod("cid-a", &a, "red", "a"))?;
    ensure!(out.code == Some(0), "DEL a: {}\n{}", out.stdout, agent.log_tail());
    let ports = lab.node(1).ovs.vsctl(&["list-ports", "br0"])?;
    ensure!(ports.lines().count() == 3, "vxlan0, tun0 and b's port only: {ports}");
    let log = agent.log_tail();
    ensure!(log.matches("OVSDB reconnected").count() == 2, "two reconnects logged:\n{log}");
    let metrics = lab::cluster::agent_http(&lab, 1, "/metrics")?;
    ensure!(metrics.contains("k8s_ovs_ovsdb_reconnects_total 2"), "two reconnects counted:\n{metrics}");
    Ok(())
}
