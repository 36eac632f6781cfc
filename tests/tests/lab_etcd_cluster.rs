//! etcd as clusters run it (issue 13.8): three members, the controller and
//! the agents given all three endpoints. Every member in turn is killed
//! (SIGKILL: whichever one a client used, its connection breaks) and
//! restarted, then the leader is moved away; meanwhile a prober between two
//! same-VNI pods on different nodes loses nothing, an operator's join made
//! while a member is down applies, an isolate made right after the leader
//! change applies, and no record is lost.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use lab::cluster::{add_pod, ctl, start_controller, Agent, Daemon, NAME, PREFIX};
use lab::traffic::{self, Prober};
use lab::{Lab, LabConfig};

/// Every record under `what` (`netnamespaces`, `subnets`): key -> value.
fn records(lab: &Lab, what: &str) -> Result<BTreeMap<String, String>> {
    let out = lab.etcdctl(&["get", "--prefix", &format!("{PREFIX}/{NAME}/{what}/")])?;
    let lines: Vec<&str> = out.lines().collect();
    Ok(lines.chunks(2).filter(|c| c.len() == 2).map(|c| (c[0].to_string(), c[1].to_string())).collect())
}

fn net_id(recs: &BTreeMap<String, String>, ns: &str) -> Result<u64> {
    let v = recs.get(&format!("{PREFIX}/{NAME}/netnamespaces/{ns}")).context("no record")?;
    let rec: serde_json::Value = serde_json::from_str(v)?;
    rec["NetID"].as_u64().context("NetID")
}

/// `k8s-ovs-ctl <args> --wait`, which returns once the controller applied it.
fn ctl_wait(lab: &Lab, controller: &Daemon, args: &[&str]) -> Result<()> {
    let (code, out, err) = ctl(lab, args)?;
    ensure!(code == Some(0), "k8s-ovs-ctl {args:?}: {out} {err}\ncontroller: {}", controller.log_tail());
    Ok(())
}

#[test]
fn lab_etcd_cluster_member_kills_and_a_leader_change_lose_no_record_and_no_packet() -> Result<()> {
    lab::needs_root!();
    let mut lab = Lab::start_with(LabConfig { etcd_cluster: true, ..LabConfig::nodes(2) })?;
    ensure!(lab.etcd_endpoint().split(',').count() == 3, "endpoints {}", lab.etcd_endpoint());
    let api = lab::cluster::start_kube_api_with(&lab, &["red", "blue", "kube-system"])?;
    let url = api.url();
    let controller = start_controller(&lab, &url, "c1", &[])?;
    let agents = (1..=2).map(|i| Agent::start(&lab, i, &["--kube-url", &url])).collect::<Result<Vec<_>>>()?;
    let red1 = add_pod(&mut lab, 1, "red", "red1")?;
    let red2 = add_pod(&mut lab, 2, "red", "red2")?;
    let blue2 = add_pod(&mut lab, 2, "blue", "blue2")?;
    ensure!(traffic::reachable(&red1.netns, &red2.ip, Duration::from_secs(5))?, "red1 -> red2");
    ensure!(traffic::unreachable(&red1.netns, &blue2.ip, 3)?, "red1 reaches blue2 before the join");
    let (namespaces, subnets) = (records(&lab, "netnamespaces")?, records(&lab, "subnets")?);
    ensure!(namespaces.len() == 3 && subnets.len() == 2, "{namespaces:#?} {subnets:#?}");

    let prober = Prober::start(&red1.netns, &red2.ip)?;
    std::thread::sleep(Duration::from_millis(300));
    let members = lab.etcd_cluster.as_ref().context("cluster")?.members.len();
    for i in 0..members {
        lab.etcd_cluster.as_mut().context("cluster")?.members[i].kill();
        std::thread::sleep(Duration::from_secs(1));
        if i == 0 {
            // An edit while a member is down (and clients reconnect).
            ctl_wait(&lab, &controller, &["join", "blue", "--to", "red", "--wait"])?;
            ensure!(
                traffic::reachable(&red1.netns, &blue2.ip, Duration::from_secs(5))?,
                "the join made while a member was down did not apply\nagent 1: {}\nagent 2: {}",
                agents[0].log_tail(),
                agents[1].log_tail()
            );
        }
        lab.etcd_cluster.as_mut().context("cluster")?.members[i]
            .restart()
            .with_context(|| format!("restart member {i}"))?;
    }
    let cluster = lab.etcd_cluster.as_ref().context("cluster")?;
    let (leader, _) = cluster.leader()?;
    let to = (leader + 1) % cluster.members.len();
    cluster.move_leader(to)?;
    ctl_wait(&lab, &controller, &["isolate", "blue", "--wait"])?;
    ensure!(cluster.leader()?.0 == to, "the leader did not move to member {to}");
    ensure!(
        traffic::unreachable(&red1.netns, &blue2.ip, 3)?,
        "the isolate after the leader change did not apply"
    );
    let (sent, received) = prober.finish()?;
    eprintln!(
        "prober red1 -> red2 across member kills and a leader change: {sent} sent, {received} answered"
    );
    // The last probe may still be in flight when the prober is stopped.
    ensure!(sent - received <= 1, "{} of {sent} pings lost", sent - received);

    // No record lost: the same subnets, the same namespaces; blue holds a
    // VNI of its own again, red's and kube-system's records unchanged.
    ensure!(records(&lab, "subnets")? == subnets, "subnets changed");
    let after = records(&lab, "netnamespaces")?;
    ensure!(after.keys().eq(namespaces.keys()), "namespaces before {namespaces:#?} after {after:#?}");
    for ns in ["red", "kube-system"] {
        let key = format!("{PREFIX}/{NAME}/netnamespaces/{ns}");
        ensure!(after.get(&key) == namespaces.get(&key), "{ns}'s record changed: {after:#?}");
    }
    ensure!(net_id(&after, "blue")? != net_id(&after, "red")?, "blue still shares red's VNI: {after:#?}");
    ensure!(traffic::reachable(&red1.netns, &red2.ip, Duration::from_secs(2))?, "red1 -> red2 after");
    Ok(())
}
