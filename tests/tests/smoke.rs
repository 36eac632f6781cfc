//! Smoke test of the lab itself: two nodes, pods attached to `br0` by hand
//! with plain flows (no k8s-ovs code), VXLAN between the nodes keyed by VNI.

use std::time::Duration;

use anyhow::Result;
use lab::{traffic, Lab, Pod};

const VXLAN_OFPORT: u32 = 1;

struct PodSpec {
    name: &'static str,
    node: usize,
    ip: &'static str,
    vni: u32,
    ofport: u32,
}

const PODS: &[PodSpec] = &[
    PodSpec { name: "a", node: 1, ip: "10.244.1.2", vni: 100, ofport: 10 },
    PodSpec { name: "b", node: 1, ip: "10.244.1.3", vni: 200, ofport: 11 },
    PodSpec { name: "c", node: 2, ip: "10.244.2.2", vni: 100, ofport: 10 },
    PodSpec { name: "d", node: 2, ip: "10.244.2.3", vni: 200, ofport: 11 },
];

/// Hand-written flows for one node: table 0 classifies (tunnel: VNI from
/// tun_id; pod: its VNI) into reg0; table 1 delivers to a local pod only when
/// reg0 equals the pod's VNI, and sends the other node's subnet into the
/// tunnel keyed by reg0, so the receiving node's check is what isolates.
fn flows_for(node: usize, remote_ip: &str) -> Vec<String> {
    let mut f = vec![
        format!("table=0,priority=100,in_port={VXLAN_OFPORT},actions=move:NXM_NX_TUN_ID[0..31]->NXM_NX_REG0[],resubmit(,1)"),
        "table=0,priority=0,actions=drop".to_string(),
        "table=1,priority=0,actions=drop".to_string(),
    ];
    let remote_subnet = if node == 1 { "10.244.2.0/24" } else { "10.244.1.0/24" };
    for proto in ["ip,nw_dst", "arp,arp_tpa"] {
        f.push(format!(
            "table=1,priority=50,{proto}={remote_subnet},actions=set_field:{remote_ip}->tun_dst,move:NXM_NX_REG0[]->NXM_NX_TUN_ID[0..31],output:{VXLAN_OFPORT}"
        ));
    }
    for p in PODS.iter().filter(|p| p.node == node) {
        f.push(format!(
            "table=0,priority=100,in_port={},actions=load:{}->NXM_NX_REG0[],resubmit(,1)",
            p.ofport, p.vni
        ));
        for proto in ["ip,nw_dst", "arp,arp_tpa"] {
            f.push(format!(
                "table=1,priority=100,reg0={},{proto}={},actions=output:{}",
                p.vni, p.ip, p.ofport
            ));
        }
    }
    f
}

#[test]
fn lab_vxlan_carries_one_vni_across_nodes_and_keeps_vnis_apart() -> Result<()> {
    lab::needs_root!();
    let mut lab = Lab::start(2)?;
    for n in &lab.nodes {
        n.ovs.add_tunnel_bridge("br0", VXLAN_OFPORT)?;
    }
    let mut pods: Vec<Pod> = Vec::new();
    for p in PODS {
        let host_if = format!("veth-{}", p.name);
        let pod = lab.add_pod(p.node, p.name, &host_if, &format!("{}/16", p.ip), None)?;
        assert_eq!(lab.node(p.node).ovs.add_port_at("br0", &host_if, p.ofport)?, p.ofport);
        pods.push(pod);
    }
    for n in &lab.nodes {
        let remote = &lab.node(3 - n.index).ip;
        for flow in flows_for(n.index, remote) {
            n.ovs.ofctl("add-flow", "br0", &[&flow])?;
        }
    }
    let [a, b, c, d] = &pods[..] else { unreachable!() };

    // Same VNI across nodes: through VXLAN.
    assert!(traffic::reachable(&a.netns, &c.ip, Duration::from_secs(5))?, "a -> c (VNI 100) should connect");
    assert!(traffic::reachable(&d.netns, &b.ip, Duration::from_secs(5))?, "d -> b (VNI 200) should connect");
    // Different VNIs: not across nodes (the tunnel carries them, the receiver drops), not locally.
    assert!(traffic::unreachable(&a.netns, &d.ip, 3)?, "a (100) must not reach d (200)");
    assert!(traffic::unreachable(&c.netns, &b.ip, 3)?, "c (100) must not reach b (200)");
    assert!(traffic::unreachable(&a.netns, &b.ip, 3)?, "a (100) must not reach b (200) on the same node");

    // The packets really crossed the tunnel: vxlan0 counted them on node 2.
    let stats = lab.node(2).ovs.ofctl("dump-ports", "br0", &["1"])?;
    assert!(stats.contains("rx pkts="), "{stats}");
    assert!(!stats.contains("rx pkts=0,"), "vxlan0 on node 2 received nothing: {stats}");

    // etcd answers from inside a node namespace, on the control host's fabric address.
    let ep = lab.etcd_endpoint();
    let n1 = &lab.node(1).netns;
    let env = [("ETCDCTL_API", "3")];
    n1.exec_env(&["etcdctl", "--endpoints", &ep, "put", "/smoke/key", "from-node-1"], &env)?;
    let got = lab
        .node(2)
        .netns
        .exec_env(&["etcdctl", "--endpoints", &ep, "get", "--print-value-only", "/smoke/key"], &env)?;
    assert_eq!(got.trim(), "from-node-1");
    Ok(())
}
