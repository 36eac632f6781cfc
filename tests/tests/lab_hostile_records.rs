//! Hostile records (issue 13.3): only the controller's writes reach a switch.
//! A NetID typed into a namespace's record by hand, or a record deleted and
//! re-created with another tenant's NetID, never lets a pod reach that
//! tenant, not for one packet of a prober pinging every 10 ms, whether the
//! controller is there to roll the edit back or not; and with etcd's auth on
//! the agents' read-only rights are all they need, while a pod holding an
//! agent's certificate cannot write a record.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use lab::cluster::{
    cni, flows_without_cookies, start_controller_etcd, Agent, CniCall, CniPod, Daemon, NAME, PREFIX,
};
use lab::kube_api::KubeApi;
use lab::traffic::Prober;
use lab::{traffic, Lab, LabConfig};

fn netns_key(ns: &str) -> String {
    format!("{PREFIX}/{NAME}/netnamespaces/{ns}")
}

fn get(lab: &Lab, key: &str) -> Result<String> {
    Ok(lab.etcdctl(&["get", "--print-value-only", key])?.trim().to_string())
}

/// Polls until `cond` holds on etcd's value of `key` (within 15 s).
fn wait_value(lab: &Lab, key: &str, what: &str, cond: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = get(lab, key)?;
        if cond(&v) {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{key}: {what} not seen within 15 s (holds {v:?})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn net_id(lab: &Lab, ns: &str) -> Result<u32> {
    let v = wait_value(lab, &netns_key(ns), "a record", |v| !v.is_empty())?;
    let rec: serde_json::Value = serde_json::from_str(&v).context("record JSON")?;
    Ok(rec["NetID"].as_u64().context("NetID")? as u32)
}

fn record(ns: &str, id: u32) -> String {
    format!(r#"{{"NetName":"{ns}","NetID":{id},"Action":"","Namespace":""}}"#)
}

fn add_pod(lab: &mut Lab, node: usize, namespace: &str, name: &str) -> Result<CniPod> {
    lab::cluster::add_pod(lab, node, namespace, name)
}

/// The lab of these tests: API server with red, blue and kube-system, a
/// controller, two agents; red1 on n1, red2 and blue2 on n2.
struct World {
    lab: Lab,
    _api: KubeApi,
    controller: Option<Daemon>,
    agents: Vec<Agent>,
    red1: CniPod,
    red2: CniPod,
    blue2: CniPod,
}

fn start_world() -> Result<World> {
    let lab = Lab::start(2)?;
    let (controller, agents) = (lab.etcd_flags(), lab.etcd_flags());
    start_world_in(lab, controller, agents)
}

/// `start_world` on `lab`, the controller and agents with these etcd flags.
fn start_world_in(mut lab: Lab, controller_etcd: Vec<String>, agent_etcd: Vec<String>) -> Result<World> {
    let api = lab::cluster::start_kube_api_with(&lab, &["red", "blue", "kube-system"])?;
    let url = api.url();
    let controller = start_controller_etcd(&lab, &url, "c1", controller_etcd, &[])?;
    // The controller has validated every namespace: agents take VNIs from
    // its applied copies alone.
    wait_value(&lab, &format!("{PREFIX}/{NAME}/applied/complete"), "applied/complete", |v| !v.is_empty())?;
    let agents = (1..=2)
        .map(|i| Agent::start_etcd(&lab, i, agent_etcd.clone(), &["--kube-url", &url]))
        .collect::<Result<Vec<_>>>()?;
    let red1 = add_pod(&mut lab, 1, "red", "red1")?;
    let red2 = add_pod(&mut lab, 2, "red", "red2")?;
    let blue2 = add_pod(&mut lab, 2, "blue", "blue2")?;
    ensure!(traffic::reachable(&red1.netns, &red2.ip, Duration::from_secs(5))?, "red1 -> red2");
    ensure!(traffic::unreachable(&red1.netns, &blue2.ip, 3)?, "red1 reaches blue2 before any edit");
    Ok(World { lab, _api: api, controller: Some(controller), agents, red1, red2, blue2 })
}

/// Runs `edit` (red's record gets blue's NetID) twice under a 100/s prober
/// red1 -> blue2: once with the controller, waiting for its rollback, once
/// with no controller (the edit stays in etcd). No reply, no flow changed.
fn attack(edit: impl Fn(&Lab, u32) -> Result<()>) -> Result<()> {
    let mut w = start_world()?;
    let (red, blue) = (net_id(&w.lab, "red")?, net_id(&w.lab, "blue")?);
    ensure!(red != blue, "red {red}, blue {blue}");
    // Without an answer to its ARP red1 would send a probe only now and
    // then: give it blue2's MAC, so every probe is an IP packet the
    // pipeline itself must drop.
    let mac = w.blue2.netns.exec(&["cat", "/sys/class/net/eth0/address"])?;
    w.red1.netns.ip(&[
        "neigh",
        "replace",
        &w.blue2.ip,
        "lladdr",
        mac.trim(),
        "dev",
        "eth0",
        "nud",
        "permanent",
    ])?;
    let before = (flows_without_cookies(&w.lab, 1)?, flows_without_cookies(&w.lab, 2)?);
    let prober = Prober::start(&w.red1.netns, &w.blue2.ip)?;
    std::thread::sleep(Duration::from_millis(300));

    // With the controller: it rolls the edit back and says why.
    edit(&w.lab, blue)?;
    let err_key = format!("{PREFIX}/{NAME}/errors/netnamespaces/red");
    wait_value(&w.lab, &err_key, "the controller's error", |v| v.contains(&blue.to_string()))?;
    wait_value(&w.lab, &netns_key("red"), "the rollback", |v| v == record("red", red))?;
    std::thread::sleep(Duration::from_millis(500));

    // Without it: the edit stays in etcd, and still changes nothing.
    if let Some(mut c) = w.controller.take() {
        c.stop();
    }
    edit(&w.lab, blue)?;
    std::thread::sleep(Duration::from_secs(2));
    ensure!(get(&w.lab, &netns_key("red"))? == record("red", blue), "the edit did not stay");
    let (sent, received) = prober.finish()?;
    eprintln!("prober red1 -> blue2: {sent} sent, {received} answered");
    ensure!(received == 0, "{received} of {sent} pings from red1 reached blue2");
    // ping paces unanswered probes itself; a few dozen a second here.
    ensure!(sent >= 100, "the prober sent only {sent}");
    let after = (flows_without_cookies(&w.lab, 1)?, flows_without_cookies(&w.lab, 2)?);
    ensure!(before == after, "flows changed:\nbefore {before:#?}\nafter {after:#?}");
    ensure!(traffic::reachable(&w.red1.netns, &w.red2.ip, Duration::from_secs(2))?, "red1 -> red2 after");
    Ok(())
}

/// `etcdctl put` of red's record with blue's NetID, Action empty.
#[test]
fn lab_hostile_hand_written_net_id_never_reaches_a_switch() -> Result<()> {
    lab::needs_root!();
    attack(|lab, blue| {
        lab.etcdctl(&["put", &netns_key("red"), &record("red", blue)])?;
        Ok(())
    })
}

/// red's record deleted and created again with blue's NetID.
#[test]
fn lab_hostile_recreated_record_never_takes_another_tenants_net_id() -> Result<()> {
    lab::needs_root!();
    attack(|lab, blue| {
        lab.etcdctl(&["del", &netns_key("red")])?;
        lab.etcdctl(&["put", &netns_key("red"), &record("red", blue)])?;
        Ok(())
    })
}

/// The users and roles of docs/operations.md ("etcd users and roles"), with
/// client-certificate CN authentication: the user is the certificate's CN.
fn enable_auth(lab: &Lab) -> Result<()> {
    let pki = lab.pki().context("TLS etcd")?;
    for cn in ["root", "k8s-ovs-controller", "k8s-ovs-agent", "k8s-ovs-operator"] {
        pki.issue_client(cn)?;
    }
    let p = PREFIX;
    let cmds: Vec<Vec<String>> = [
        "role add k8s-ovs-controller".to_string(),
        format!("role grant-permission k8s-ovs-controller --prefix=true readwrite {p}"),
        "role add k8s-ovs-agent".to_string(),
        format!("role grant-permission k8s-ovs-agent --prefix=true read {p}"),
        "role add k8s-ovs-operator".to_string(),
        format!("role grant-permission k8s-ovs-operator --prefix=true read {p}"),
        format!("role grant-permission k8s-ovs-operator --prefix=true readwrite {p}/{NAME}/netnamespaces/"),
        "user add k8s-ovs-controller --no-password".to_string(),
        "user grant-role k8s-ovs-controller k8s-ovs-controller".to_string(),
        "user add k8s-ovs-agent --no-password".to_string(),
        "user grant-role k8s-ovs-agent k8s-ovs-agent".to_string(),
        "user add k8s-ovs-operator --no-password".to_string(),
        "user grant-role k8s-ovs-operator k8s-ovs-operator".to_string(),
        "user add root --no-password".to_string(),
        "user grant-role root root".to_string(),
        // The lab's own etcdctl (certificate CN "client") sets up and
        // inspects: a second root, not a k8s-ovs role.
        "user add client --no-password".to_string(),
        "user grant-role client root".to_string(),
    ]
    .iter()
    .map(|c| c.split_whitespace().map(String::from).collect())
    .collect();
    for c in &cmds {
        let argv: Vec<&str> = c.iter().map(String::as_str).collect();
        lab.etcdctl(&argv)?;
    }
    let etcd = lab.etcd.as_ref().context("etcd")?;
    etcd.etcdctl_as("root", Some(&lab.ctl), &["auth", "enable"])?;
    Ok(())
}

/// etcd with TLS, client certificates and auth on, each daemon with its own
/// user: the agents (read only) give pods their network and follow a join
/// the operator writes; the agent's certificate, even from inside a pod,
/// is refused any write; the operator's is refused the controller's keys.
#[test]
fn lab_hostile_etcd_auth_agents_read_only_and_writes_refused() -> Result<()> {
    lab::needs_root!();
    let lab = Lab::start_with(LabConfig { etcd_tls: true, ..LabConfig::nodes(2) })?;
    enable_auth(&lab)?;
    let etcd = lab.etcd.as_ref().context("etcd")?;
    // Auth is really on: the agent's user reads but cannot write.
    let denied = etcd.etcdctl_as("k8s-ovs-agent", Some(&lab.ctl), &["put", &format!("{PREFIX}/x"), "1"]);
    ensure!(format!("{denied:?}").contains("permission denied"), "agent put: {denied:?}");

    let (controller, agent) = (lab.etcd_flags_as("k8s-ovs-controller"), lab.etcd_flags_as("k8s-ovs-agent"));
    let w = start_world_in(lab, controller, agent)?;
    let (lab, red1, blue2) = (&w.lab, &w.red1, &w.blue2);
    let (red, blue) = (net_id(lab, "red")?, net_id(lab, "blue")?);

    // A pod that stole the agent's certificate (the CA, cert and key are
    // files on the node) writes red's record from inside the pod: refused.
    let etcd = lab.etcd.as_ref().context("etcd")?;
    let evil = record("red", blue);
    let from_pod = etcd.etcdctl_as("k8s-ovs-agent", Some(&red1.netns), &["put", &netns_key("red"), &evil]);
    ensure!(format!("{from_pod:?}").contains("permission denied"), "agent-cert put from a pod: {from_pod:?}");
    ensure!(get(lab, &netns_key("red"))? == record("red", red), "the record changed");
    // The operator writes netnamespaces records, never the controller's
    // applied copies or subnets.
    let applied = format!("{PREFIX}/{NAME}/applied/netnamespaces/red");
    for key in [applied.clone(), format!("{PREFIX}/{NAME}/subnets/{}", lab.node(1).ip)] {
        let r = etcd.etcdctl_as("k8s-ovs-operator", Some(&lab.ctl), &["put", &key, &evil]);
        ensure!(format!("{r:?}").contains("permission denied"), "operator put {key}: {r:?}");
    }
    // The operator's join applies: red reaches blue.
    let join = format!(r#"{{"NetName":"red","NetID":{red},"Action":"join","Namespace":"blue"}}"#);
    etcd.etcdctl_as("k8s-ovs-operator", Some(&lab.ctl), &["put", &netns_key("red"), &join])?;
    wait_value(lab, &applied, "the join in the applied copy", |v| v == record("red", blue))?;
    ensure!(
        traffic::reachable(&red1.netns, &blue2.ip, Duration::from_secs(5))?,
        "red1 -> blue2 after the join"
    );
    // A CNI DEL works too (the agent's whole job runs on read rights).
    let out = cni(lab, 2, "DEL", &CniCall::pod(&blue2.cid, &blue2.netns, "blue", "blue2"))?;
    ensure!(out.code == Some(0), "DEL: {} {}", out.stdout, w.agents[1].log_tail());
    Ok(())
}
