//! The one NAT rule the agent installs: traffic from pods to outside the
//! cluster leaves masqueraded behind the node's address.
//!
//! Installed once at start with the `iptables` tool (not a hot path; its
//! `-C` check makes the install idempotent across agent restarts).

use anyhow::{bail, Context, Result};
use ipnetwork::Ipv4Network;
use tokio::process::Command;

/// The rule's arguments after `-t nat -X POSTROUTING`.
pub fn rule(cluster: Ipv4Network) -> Vec<String> {
    let c = cluster.to_string();
    [
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
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn iptables(op: &str, cluster: Ipv4Network) -> Result<bool> {
    let status = Command::new("iptables")
        .args(["-w", "5", "-t", "nat", op, "POSTROUTING"])
        .args(rule(cluster))
        .status()
        .await
        .context("run iptables")?;
    Ok(status.success())
}

/// Adds the rule unless it is present.
pub async fn ensure(cluster: Ipv4Network) -> Result<()> {
    if iptables("-C", cluster).await? {
        return Ok(());
    }
    if !iptables("-A", cluster).await? {
        bail!("iptables refused the masquerade rule for {cluster}");
    }
    Ok(())
}
