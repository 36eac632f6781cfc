//! Lost agent state (issue 13.7): the IPAM log of a node with running pods
//! removed, or corrupted, under a stopped agent. The restarted agent takes
//! every address back from the pods' ports on the bridge before it serves an
//! ADD, so a new pod never gets a running pod's address (before: the first
//! new pod got the first running pod's address, and a corrupted log kept
//! the agent from starting at all).

use std::time::Duration;

use anyhow::{ensure, Result};
use lab::cluster::{add_pod, agent_http, Agent, CniPod};
use lab::{traffic, Lab};

fn start_cluster() -> Result<(Lab, Vec<Agent>)> {
    let lab = Lab::start(2)?;
    lab.put_network_config("k8s-ovs-multitenant")?;
    for i in 1..=2 {
        lab.put_node_subnet(i)?;
    }
    lab.put_netnamespace("red", 100)?;
    let agents = (1..=2).map(|i| Agent::start(&lab, i, &["--no-kube"])).collect::<Result<Vec<_>>>()?;
    Ok((lab, agents))
}

fn recovered(lab: &Lab) -> Result<String> {
    let m = agent_http(lab, 1, "/metrics")?;
    Ok(m.lines().find(|l| l.starts_with("k8s_ovs_ipam_recovered_total ")).unwrap_or_default().to_string())
}

/// A new pod on node 1 after the agent lost its log: an address of its own,
/// and it reaches the running pods on both nodes (none of which lost theirs).
fn check_new_pod(lab: &mut Lab, name: &str, running: &[CniPod]) -> Result<CniPod> {
    let new = add_pod(lab, 1, "red", name)?;
    for p in running {
        ensure!(new.ip != p.ip, "{name} got {}, the address of running pod {}", new.ip, p.name);
    }
    for p in running {
        ensure!(traffic::reachable(&new.netns, &p.ip, Duration::from_secs(5))?, "{name} -> {}", p.name);
    }
    ensure!(
        traffic::reachable(&running[0].netns, &running[2].ip, Duration::from_secs(5))?,
        "{} -> {} after the restart",
        running[0].name,
        running[2].name
    );
    Ok(new)
}

#[test]
fn lab_hostile_lost_ipam_log_is_rebuilt_from_the_bridge() -> Result<()> {
    lab::needs_root!();
    let (mut lab, mut agents) = start_cluster()?;
    let a = add_pod(&mut lab, 1, "red", "a")?;
    let b = add_pod(&mut lab, 1, "red", "b")?;
    let c = add_pod(&mut lab, 2, "red", "c")?;
    ensure!(traffic::reachable(&a.netns, &c.ip, Duration::from_secs(5))?, "a -> c");
    let ipam = lab.node(1).dir.join("agent-state").join("ipam");

    // The state dir removed under a stopped agent.
    agents[0].stop();
    std::fs::remove_dir_all(&ipam)?;
    agents[0] = Agent::start(&lab, 1, &["--no-kube"])?;
    let d = check_new_pod(&mut lab, "d", &[a.clone(), b.clone(), c.clone()])?;
    ensure!(recovered(&lab)? == "k8s_ovs_ipam_recovered_total 2", "metric: {:?}", recovered(&lab)?);

    // The log corrupted (a line of garbage in its middle).
    agents[0].stop();
    let log = ipam.join("allocations.jsonl");
    let text = std::fs::read_to_string(&log)?;
    let (head, tail) = text.split_once('\n').unwrap_or((&text, ""));
    std::fs::write(&log, format!("{head}\n{{\"op\":\"alloc\",\"ip\":\"172.\n{tail}"))?;
    agents[0] = Agent::start(&lab, 1, &["--no-kube"])?;
    check_new_pod(&mut lab, "e", &[a, b, c, d])?;
    ensure!(recovered(&lab)? == "k8s_ovs_ipam_recovered_total 3", "metric: {:?}", recovered(&lab)?);
    ensure!(ipam.join("allocations.jsonl.corrupt").exists(), "the corrupted log is kept for the operator");
    Ok(())
}
