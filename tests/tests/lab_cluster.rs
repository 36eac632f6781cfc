//! The whole system on a two-node lab: the test kube-apiserver, the
//! controller, an agent per node, pods through the CNI binary. Tenancy is
//! changed the operator's way (a raw `etcdctl put` of the record's JSON) and
//! the friendly way (`k8s-ovs-ctl`); each change is observed by ping.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use lab::cluster::{cni, ctl, start_controller, start_kube_api, Agent, CniCall, NAME, PREFIX};
use lab::{traffic, Lab, Netns};

struct TestPod {
    name: String,
    namespace: String,
    netns: Netns,
    ip: String,
}

fn netns_key(ns: &str) -> String {
    format!("{PREFIX}/{NAME}/netnamespaces/{ns}")
}

/// The record of `ns` as etcd holds it (waits until the controller made it).
fn record(lab: &Lab, ns: &str) -> Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = lab.etcdctl(&["get", "--print-value-only", &netns_key(ns)])?;
        if !v.trim().is_empty() {
            return serde_json::from_str(v.trim()).context("record JSON");
        }
        if Instant::now() > deadline {
            bail!("no record for namespace {ns}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn vni_of(lab: &Lab, ns: &str) -> Result<u32> {
    Ok(record(lab, ns)?["NetID"].as_u64().context("NetID")? as u32)
}

fn matrix_matches_etcd(lab: &Lab, pods: &[TestPod]) -> Result<()> {
    let mut vni = BTreeMap::new();
    for p in pods {
        vni.insert(p.namespace.clone(), vni_of(lab, &p.namespace)?);
    }
    let mut wrong = Vec::new();
    let mut late = Vec::new();
    std::thread::scope(|s| -> Result<()> {
        let mut hs = Vec::new();
        for a in pods {
            for b in pods.iter().filter(|b| b.name != a.name) {
                hs.push((a, b, s.spawn(|| traffic::ping_count(&a.netns, &b.ip, 3, 1))));
            }
        }
        for (a, b, h) in hs {
            let got = h.join().expect("ping thread")? > 0;
            let (va, vb) = (vni[&a.namespace], vni[&b.namespace]);
            let allowed = va == vb || va == 0 || vb == 0;
            if allowed && !got {
                late.push((a, b));
            } else if got != allowed {
                wrong.push(format!("{}({va}) -> {}({vb}): policy {allowed}, measured {got}", a.name, b.name));
            }
        }
        Ok(())
    })?;
    // Allowed pairs that missed the first round get the pods' ARP retry.
    let pairs: Vec<(&lab::Netns, &str)> = late.iter().map(|(a, b)| (&a.netns, b.ip.as_str())).collect();
    for ((a, b), took) in late.iter().zip(traffic::retry_reach(&pairs, Duration::from_secs(5))?) {
        match took {
            Some(d) => eprintln!("{} -> {} answered {d:?} later (ARP retry)", a.name, b.name),
            None => wrong.push(format!("{} -> {}: policy allows, never reached", a.name, b.name)),
        }
    }
    ensure!(wrong.is_empty(), "reachability differs from etcd's VNIs:\n{}", wrong.join("\n"));
    Ok(())
}

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
