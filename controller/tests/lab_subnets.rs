//! Node subnets on a real etcd: allocated when a Node appears or a record
//! asks with "Assign": true, released when the node goes, never twice.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Result;
use etcd_schema::{parse_host_subnet, HostSubnet};
use lab::kube_api::KubeApi;
use support::*;

fn subnet(etcd: &TestEtcd, ip: &str) -> Result<Option<HostSubnet>> {
    let key = keys().subnet(ip);
    let Some(raw) = etcd.get(&key)? else { return Ok(None) };
    Ok(parse_host_subnet(&key, ip, &raw, &config()).ok().filter(|s| s.subnet.is_some()))
}

async fn wait_subnet(etcd: &TestEtcd, ip: &str) -> Result<HostSubnet> {
    eventually(&format!("subnet of {ip}"), Duration::from_secs(30), || async { subnet(etcd, ip) }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_node_subnets_follow_nodes_and_assign_requests() -> Result<()> {
    lab::needs_root!();
    let etcd = TestEtcd::start()?;
    let api = KubeApi::start()?;
    for i in 1..=3 {
        api.create_node(&format!("node{i}"), &format!("192.0.2.{i}"))?;
    }
    let c = Controller::spawn("c1", &etcd, Some(&api), 10)?;
    let mut nets = BTreeSet::new();
    for i in 1..=3 {
        let s = wait_subnet(&etcd, &format!("192.0.2.{i}")).await?;
        assert_eq!(s.host, format!("node{i}"));
        assert!(!s.assign);
        nets.insert(s.subnet.map(|n| n.to_string()));
    }
    assert_eq!(nets.len(), 3, "three distinct /22s");

    // K8S-OVS's manual way, for a load-balancer host that is not a node.
    etcd.put(
        &keys().subnet("192.0.2.100"),
        r#"{"Host":"lb1","HostIP":"192.0.2.100","Subnet":"","Assign":true}"#,
    )?;
    let lb = wait_subnet(&etcd, "192.0.2.100").await?;
    assert!(!nets.contains(&lb.subnet.map(|n| n.to_string())));
    assert_eq!(lb.host, "lb1");

    // node2 goes: its subnet is released; the manual record stays.
    let node2 = subnet(&etcd, "192.0.2.2")?.and_then(|s| s.subnet);
    api.delete(lab::kube_api::Kind::Node, None, "node2")?;
    eventually("release of node2", Duration::from_secs(30), || async {
        Ok(etcd.get(&keys().subnet("192.0.2.2"))?.is_none().then_some(()))
    })
    .await?;
    assert!(subnet(&etcd, "192.0.2.100")?.is_some());

    // A new node may get the freed subnet; no two records ever share one.
    api.create_node("node4", "192.0.2.4")?;
    wait_subnet(&etcd, "192.0.2.4").await?;
    let mut all = BTreeSet::new();
    for key in etcd.keys_with_prefix(&keys().subnets_dir())? {
        let ip = key.rsplit('/').next().unwrap_or_default();
        let s = wait_subnet(&etcd, ip).await?;
        assert!(all.insert(s.subnet), "{ip}: subnet {:?} given twice", s.subnet);
    }
    assert_eq!(all.len(), 4);
    eprintln!("node2 had {node2:?}");

    // A hand edit of a node's subnet is refused and rolled back.
    let before = wait_subnet(&etcd, "192.0.2.1").await?;
    let rev = etcd.put(
        &keys().subnet("192.0.2.1"),
        r#"{"Host":"node1","HostIP":"192.0.2.1","Subnet":"172.11.252.0/22","Assign":false}"#,
    )?;
    eventually("rollback of node1's subnet", Duration::from_secs(30), || async {
        let err = etcd.get(&keys().subnet_error("192.0.2.1"))?;
        let rolled = subnet(&etcd, "192.0.2.1")?.filter(|s| s.subnet == before.subnet);
        Ok(err.filter(|e| e.contains(&format!("\"EditRevision\":{rev}"))).and(rolled))
    })
    .await?;
    c.stop().await
}

/// A node whose InternalIP goes missing keeps its subnet through the grace
/// period (and back with its IP keeps the same one); missing for longer,
/// the subnet is released once the grace runs out, with no other event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_a_node_briefly_without_its_internal_ip_keeps_its_subnet() -> Result<()> {
    lab::needs_root!();
    let etcd = TestEtcd::start()?;
    let api = KubeApi::start()?;
    api.create_node("node1", "192.0.2.1")?;
    let grace = Duration::from_secs(3);
    let _c = Controller::spawn_with_grace("c1", &etcd, Some(&api), 10, grace)?;
    let before = wait_subnet(&etcd, "192.0.2.1").await?;
    let no_ip = serde_json::json!({"kind": "Node", "metadata": {"name": "node1"}, "spec": {},
                                   "status": {"addresses": [{"type": "Hostname", "address": "node1"}]}});
    api.update(no_ip.clone())?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(subnet(&etcd, "192.0.2.1")?, Some(before.clone()), "released inside the grace");
    api.create_node("node1", "192.0.2.1").or_else(|_| {
        api.update(serde_json::json!({"kind": "Node", "metadata": {"name": "node1"}, "spec": {},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}}))
    })?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(subnet(&etcd, "192.0.2.1")?, Some(before), "back with its IP, same subnet, past the grace");
    // Missing for longer than the grace: released after it.
    api.update(no_ip)?;
    eventually("release after the grace", Duration::from_secs(30), || async {
        Ok(etcd.get(&keys().subnet("192.0.2.1"))?.is_none().then_some(()))
    })
    .await?;
    Ok(())
}
