//! The whole system on a two-node lab: the test kube-apiserver, the
//! controller, an agent per node, pods through the CNI binary. Tenancy is
//! changed the operator's way (a raw `etcdctl put` of the record's JSON) and
//! the friendly way (`k8s-ovs-ctl`); each change is observed by ping.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use lab::cluster::{cni, ctl, start_controller, start_kube_api, Agent, CniCall};
use lab::tenancy::{matrix_matches_etcd, netns_key, record, vni_of, TestPod};
use lab::{traffic, Lab};

/// Puts `json` as namespace `ns`'s record with etcdctl, then requires the
/// path `from` -> `to` to become `reach` within 1 s of the write (the time
/// is that of the first probe showing it).
fn operator_edit_then(
    lab: &Lab,
    ns: &str,
    json: &str,
    from: &TestPod,
    to: &TestPod,
    reach: bool,
) -> Result<Duration> {
    let t = Instant::now();
    lab.etcdctl(&["put", &netns_key(ns), json])?;
    let took = traffic::time_until(&from.netns, &to.ip, reach, t, Duration::from_secs(1))?;
    match took {
        Some(d) => Ok(d),
        None => bail!("{} -> {}: reach={reach} not seen within 1 s of the edit", from.name, to.name),
    }
}

#[test]
fn lab_cluster_operator_actions_apply_end_to_end() -> Result<()> {
    lab::needs_root!();
    let mut lab = Lab::start(2)?;
    let api = start_kube_api(&lab)?;
    for i in 1..=2 {
        api.create_node(&format!("n{i}"), &lab.node(i).ip)?;
    }
    for ns in ["red", "blue", "green", "kube-system"] {
        api.create_namespace(ns)?;
    }
    let url = api.url();
    let _controller = start_controller(&lab, &url, "c1", &[])?;
    let agents = (1..=2).map(|i| Agent::start(&lab, i, &["--kube-url", &url])).collect::<Result<Vec<_>>>()?;
    let mut pods = Vec::new();
    // 3 namespaces x 2 pods on each node.
    for node in 1..=2 {
        for (ns, k) in ["red", "blue", "green"].into_iter().flat_map(|ns| [(ns, 1), (ns, 2)]) {
            let name = format!("{ns}-n{node}-{k}");
            let netns = lab.pod_netns(&name)?;
            let out = cni(&lab, node, "ADD", &CniCall::pod(&format!("cid-{name}"), &netns, ns, &name))?;
            ensure!(out.code == Some(0), "ADD {name}: {} {}", out.stdout, agents[node - 1].log_tail());
            let ip = out.stdout["ips"][0]["address"]
                .as_str()
                .unwrap_or_default()
                .split('/')
                .next()
                .unwrap_or_default()
                .to_string();
            pods.push(TestPod { name, namespace: ns.into(), netns, ip });
        }
    }
    // Every namespace has its own VNI from the controller; kube-system is global.
    let (red, blue, green) = (vni_of(&lab, "red")?, vni_of(&lab, "blue")?, vni_of(&lab, "green")?);
    ensure!(red != blue && blue != green && red != green && red >= 10, "VNIs {red} {blue} {green}");
    ensure!(vni_of(&lab, "kube-system")? == 0);
    matrix_matches_etcd(&lab, &pods)?;
    let by = |n: &str| pods.iter().find(|p| p.name == n).expect("pod");

    // join, the operator's way: red takes blue's NetID.
    let took = operator_edit_then(
        &lab,
        "red",
        &format!(r#"{{"NetName":"red","NetID":{red},"Action":"join","Namespace":"blue"}}"#),
        by("red-n1-1"),
        by("blue-n2-1"),
        true,
    )?;
    eprintln!("join observed {took:?} after the etcdctl put");
    ensure!(vni_of(&lab, "red")? == blue && record(&lab, "red")?["Action"] == "");
    matrix_matches_etcd(&lab, &pods)?;
    // isolate: red gets its own NetID back.
    let took = operator_edit_then(
        &lab,
        "red",
        &format!(r#"{{"NetName":"red","NetID":{blue},"Action":"isolate","Namespace":""}}"#),
        by("red-n1-1"),
        by("blue-n2-1"),
        false,
    )?;
    eprintln!("isolate observed {took:?} after the etcdctl put");
    matrix_matches_etcd(&lab, &pods)?;
    // global: green reaches, and is reached by, everybody.
    let took = operator_edit_then(
        &lab,
        "green",
        &format!(r#"{{"NetName":"green","NetID":{green},"Action":"global","Namespace":""}}"#),
        by("green-n1-1"),
        by("red-n2-1"),
        true,
    )?;
    eprintln!("global observed {took:?} after the etcdctl put");
    ensure!(vni_of(&lab, "green")? == 0);
    matrix_matches_etcd(&lab, &pods)?;

    // The friendly way: k8s-ovs-ctl with --wait returns once applied.
    let (code, out, err) = ctl(&lab, &["join", "blue", "--to", "red", "--wait"])?;
    ensure!(code == Some(0), "ctl join: {out} {err}");
    ensure!(
        traffic::reachable(&by("blue-n1-2").netns, &by("red-n2-1").ip, Duration::from_secs(1))?,
        "blue -> red after ctl join"
    );
    matrix_matches_etcd(&lab, &pods)?;
    let (code, out, err) = ctl(&lab, &["isolate", "blue", "--wait"])?;
    ensure!(code == Some(0), "ctl isolate: {out} {err}");
    matrix_matches_etcd(&lab, &pods)?;
    let (code, out, _) = ctl(&lab, &["list"])?;
    ensure!(code == Some(0) && out.contains("blue") && out.contains("green"), "ctl list: {out}");
    Ok(())
}
