//! Who reaches whom: pods of several namespaces wired through the CNI binary,
//! and the ping matrix held against the VNIs etcd's records give them (two
//! pods talk when their namespaces' NetIDs are equal or either is 0).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::cluster::{cni, CniCall, NAME, PREFIX};
use crate::{traffic, Lab, Netns};

/// A pod of the matrix.
pub struct TestPod {
    pub name: String,
    pub namespace: String,
    pub netns: Netns,
    pub ip: String,
}

/// Pod `namespace/name` on node `node`, through the CNI binary.
pub fn add_pod(lab: &mut Lab, node: usize, namespace: &str, name: &str) -> Result<TestPod> {
    let netns = lab.pod_netns(name)?;
    let out = cni(lab, node, "ADD", &CniCall::pod(&format!("cid-{name}"), &netns, namespace, name))?;
    ensure!(out.code == Some(0), "ADD {name}: {} {}", out.stdout, out.stderr);
    let ip =
        out.stdout["ips"][0]["address"].as_str().unwrap_or_default().split('/').next().unwrap_or_default();
    Ok(TestPod { name: name.into(), namespace: namespace.into(), netns, ip: ip.to_string() })
}

pub fn netns_key(ns: &str) -> String {
    format!("{PREFIX}/{NAME}/netnamespaces/{ns}")
}

/// The record of `ns` as etcd holds it (waits until the controller made it).
pub fn record(lab: &Lab, ns: &str) -> Result<serde_json::Value> {
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

pub fn vni_of(lab: &Lab, ns: &str) -> Result<u32> {
    Ok(record(lab, ns)?["NetID"].as_u64().context("NetID")? as u32)
}

/// Pings every pair of `pods` and requires the verdicts etcd's VNIs give.
pub fn matrix_matches_etcd(lab: &Lab, pods: &[TestPod]) -> Result<()> {
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
            let got = h.join().map_err(|_| anyhow::anyhow!("ping thread panicked"))?? > 0;
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
    let pairs: Vec<(&Netns, &str)> = late.iter().map(|(a, b)| (&a.netns, b.ip.as_str())).collect();
    for ((a, b), took) in late.iter().zip(traffic::retry_reach(&pairs, Duration::from_secs(5))?) {
        match took {
            Some(d) => eprintln!("{} -> {} answered {d:?} later (ARP retry)", a.name, b.name),
            None => wrong.push(format!("{} -> {}: policy allows, never reached", a.name, b.name)),
        }
    }
    ensure!(wrong.is_empty(), "reachability differs from etcd's VNIs:\n{}", wrong.join("\n"));
    Ok(())
}

/// Waits until the path `from` -> `to` is `reach` (the agents have applied
/// an edit); the limit only turns a hang into a failure.
pub fn wait_reach(from: &TestPod, to: &TestPod, reach: bool) -> Result<Duration> {
    match traffic::time_until(&from.netns, &to.ip, reach, Instant::now(), Duration::from_secs(30))? {
        Some(d) => Ok(d),
        None => bail!("{} -> {}: reach={reach} not seen within 30 s", from.name, to.name),
    }
}
