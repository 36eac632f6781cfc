//! The iptables rules the agent installs, once at start, with the `iptables`
//! tool (not a hot path; the `-C` check makes each install idempotent
//! across agent restarts):
//! - masquerade: pods reaching outside the cluster leave behind the node's
//!   address;
//! - on the userspace (netdev) datapath only: the node kernel drops what it
//!   receives on pod veths (see [`ensure_pod_port_drop`]);
//! - no VXLAN datagram from the pipeline into the node kernel (see
//!   [`ensure_no_vxlan_from_gateway`]).

use anyhow::{bail, Context, Result};
use ipnetwork::Ipv4Network;
use tokio::process::Command;

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `-t nat POSTROUTING`: from the cluster to outside it, masqueraded.
pub fn masquerade_rule(cluster: Ipv4Network) -> Vec<String> {
    let c = cluster.to_string();
    strings(&[
        "-s",
        &c,
        "!",
        "-d",
        &c,
        "-m",
        "comment",
        "--comment",
        "k8s-ovs: pods leaving the cluster",
        "-j",
        "MASQUERADE",
    ])
}

/// `-t raw PREROUTING`: everything arriving on a pod veth (`<prefix>+`) dropped.
pub fn pod_port_drop_rule(veth_prefix: &str) -> Vec<String> {
    let iface = format!("{veth_prefix}+");
    strings(&["-i", &iface, "-m", "comment", "--comment", "k8s-ovs: pod veths belong to OVS", "-j", "DROP"])
}

/// `-t raw PREROUTING`: UDP to the VXLAN port arriving from tun0, dropped.
pub fn no_vxlan_from_gateway_rule(gateway: &str, vxlan_port: u16) -> Vec<String> {
    let port = vxlan_port.to_string();
    strings(&[
        "-i",
        gateway,
        "-p",
        "udp",
        "--dport",
        &port,
        "-m",
        "comment",
        "--comment",
        "k8s-ovs: no VXLAN from pods",
        "-j",
        "DROP",
    ])
}

async fn iptables(table: &str, op: &str, chain: &str, rule: &[String]) -> Result<bool> {
    let status = Command::new("iptables")
        .args(["-w", "5", "-t", table, op, chain])
        .args(rule)
        // `-C` reports a missing rule on stderr: expected, not worth a log line.
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .context("run iptables")?;
    Ok(status.success())
}

async fn ensure(table: &str, chain: &str, rule: Vec<String>) -> Result<()> {
    if iptables(table, "-C", chain, &rule).await? {
        return Ok(());
    }
    if !iptables(table, "-A", chain, &rule).await? {
        bail!("iptables refused `-t {table} -A {chain} {}`", rule.join(" "));
    }
    Ok(())
}

pub async fn ensure_masquerade(cluster: Ipv4Network) -> Result<()> {
    ensure("nat", "POSTROUTING", masquerade_rule(cluster)).await
}

/// On the userspace datapath OVS reads pod veths through AF_PACKET, which
/// taps frames without stealing them: the node kernel sees every pod frame
/// too, and would route packets sent to it around the pipeline (and so
/// around tenant isolation). This rule drops them in the kernel; OVS already
/// has its copy. ARP is not IP, so each veth also gets `arp_ignore=8`
/// (see `dataplane`), else the kernel would answer pods' ARP for the
/// gateway with the veth's MAC.
pub async fn ensure_pod_port_drop(veth_prefix: &str) -> Result<()> {
    ensure("raw", "PREROUTING", pod_port_drop_rule(veth_prefix)).await
}

/// Everything that enters the node kernel from tun0 comes from a pod or was
/// routed through the pipeline. A pod's datagram to any node address's
/// VXLAN port (this node's, another node's once masqueraded, a gateway's
/// through the tunnel) would be decapsulated by a node with a VNI of the
/// pod's choosing; it is dropped here, before NAT and before any VXLAN
/// socket sees it (the pipeline drops those to node addresses already).
pub async fn ensure_no_vxlan_from_gateway(gateway: &str, vxlan_port: u16) -> Result<()> {
    ensure("raw", "PREROUTING", no_vxlan_from_gateway_rule(gateway, vxlan_port)).await
}
