//! The pipeline on real switches: two lab nodes whose flows are exactly what
//! `pipeline()` computes (nothing hand-written), pods of three namespaces
//! (two tenants and a global one) on each node, and the all-pairs
//! reachability matrix measured with ping.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use lab::{Lab, Netns};
use ovs_flows::flow::dump_lines;
use ovs_flows::pipeline::{pipeline, LocalPod, Mode, NodeState, RemoteNode, GATEWAY_OFPORT, VXLAN_OFPORT};
use ovs_flows::{FlowSet, Ipv4Prefix, Mac};

const CLUSTER: &str = "172.11.0.0/16";
const NAMESPACES: [(&str, u32); 3] = [("red", 100), ("blue", 200), ("glob", 0)];

fn prefix(s: &str) -> Ipv4Prefix {
    let (a, l) = s.split_once('/').expect("a/len");
    Ipv4Prefix::new(a.parse().expect("addr"), l.parse().expect("len"))
}

fn node_subnet(node: usize) -> Ipv4Prefix {
    Ipv4Prefix::new(Ipv4Addr::new(172, 11, ((node - 1) * 4) as u8, 0), 22)
}

struct TestPod {
    name: String,
    namespace: &'static str,
    netns: Netns,
    ip: Ipv4Addr,
}

/// Sets up br0 the way the agent does (vxlan0 = 1, tun0 = 2 with the gateway address).
fn prepare_node(lab: &Lab, node: usize) -> Result<()> {
    let n = lab.node(node);
    n.ovs.add_tunnel_bridge("br0", VXLAN_OFPORT)?;
    n.ovs.vsctl(&[
        "add-port",
        "br0",
        "tun0",
        "--",
        "set",
        "interface",
        "tun0",
        "type=internal",
        &format!("ofport_request={GATEWAY_OFPORT}"),
    ])?;
    n.ovs.wait_ofport("tun0")?;
    let gw = ovs_flows::pipeline::gateway_of(node_subnet(node));
    n.netns.ip(&["addr", "add", &format!("{gw}/16"), "dev", "tun0"])?;
    n.netns.ip(&["link", "set", "tun0", "mtu", "1450", "up"])?;
    Ok(())
}

/// Installs `flows` with one `ovs-ofctl --bundle add-flows` and checks that the
/// switch then holds exactly them.
fn install(lab: &Lab, node: usize, flows: &FlowSet) -> Result<()> {
    let n = lab.node(node);
    let file = n.dir.join("flows.txt");
    std::fs::write(&file, flows.to_strings().join("\n") + "\n")?;
    let target = format!("unix:{}", n.ovs.mgmt_sock("br0").display());
    n.ovs.exec(&[
        "ovs-ofctl",
        "-O",
        "OpenFlow15",
        "--bundle",
        "add-flows",
        &target,
        &file.to_string_lossy(),
    ])?;
    let dumped = dump_lines(&n.ovs.ofctl("dump-flows", "br0", &["--no-stats"])?);
    assert_eq!(dumped, flows.to_strings(), "node {node}: the switch holds exactly the pipeline");
    Ok(())
}

/// Whether `from` gets any reply from `ip` (3 pings; the first packet to a new
/// tunnel neighbour may be lost while OVS resolves its MAC).
fn answers(from: &Netns, ip: Ipv4Addr) -> Result<bool> {
    Ok(lab::traffic::ping_count(from, &ip.to_string(), 3, 1)? > 0)
}

#[test]
fn lab_pipeline_isolates_tenants_across_nodes() -> Result<()> {
    lab::needs_root!();
    let mut lab = Lab::start_with(lab::LabConfig { etcd: false, ..lab::LabConfig::nodes(2) })?;
    let mut pods: Vec<TestPod> = Vec::new();
    let mut states = Vec::new();
    for node in 1..=2 {
        prepare_node(&lab, node)?;
        let subnet = node_subnet(node);
        let node_ip: Ipv4Addr = lab.node(node).ip.parse()?;
        let mut state =
            NodeState::new(Mode::MultiTenant, node_ip, subnet, prefix(CLUSTER), prefix("10.96.0.0/12"));
        state.vnis = NAMESPACES.iter().map(|(n, v)| (n.to_string(), *v)).collect::<BTreeMap<_, _>>();
        for (i, (ns, _)) in NAMESPACES.iter().enumerate() {
            let ip = Ipv4Addr::from(u32::from(subnet.addr()) + 2 + i as u32);
            let ofport = 3 + i as u32;
            let name = format!("{ns}{node}");
            let host_if = format!("veth-{name}");
            let pod = lab.add_pod(node, &name, &host_if, &format!("{ip}/16"), None)?;
            pod.netns.ip(&["route", "add", "default", "via", &state.gateway_ip.to_string()])?;
            lab.node(node).ovs.add_port_at("br0", &host_if, ofport)?;
            let mac: Mac = pod.mac.parse().context("pod mac")?;
            state.pods.insert(
                ofport,
                LocalPod {
                    ofport,
                    ip,
                    mac,
                    namespace: ns.to_string(),
                    name: name.clone(),
                    egress_meter: None,
                },
            );
            pods.push(TestPod { name, namespace: ns, netns: pod.netns.clone(), ip });
        }
        states.push(state);
    }
    // Each node knows the other.
    let peers: Vec<RemoteNode> =
        states.iter().map(|s| RemoteNode { ip: s.node_ip, subnet: s.subnet }).collect();
    for (i, state) in states.iter_mut().enumerate() {
        let other = peers[1 - i];
        state.remote_nodes.insert(other.ip, other);
        install(&lab, i + 1, &pipeline(state, 1))?;
    }

    let vni: BTreeMap<&str, u32> = NAMESPACES.into_iter().collect();
    let mut measured = BTreeMap::new();
    std::thread::scope(|s| -> Result<()> {
        let mut handles = Vec::new();
        for a in &pods {
            for b in &pods {
                if a.name != b.name {
                    handles.push(((a.name.clone(), b.name.clone()), s.spawn(|| answers(&a.netns, b.ip))));
                }
            }
        }
        for (pair, h) in handles {
            measured.insert(pair, h.join().expect("ping thread")?);
        }
        Ok(())
    })?;
    let mut wrong = Vec::new();
    for a in &pods {
        for b in &pods {
            if a.name == b.name {
                continue;
            }
            let (va, vb) = (vni[a.namespace], vni[b.namespace]);
            let allowed = va == vb || va == 0 || vb == 0;
            let got = measured[&(a.name.clone(), b.name.clone())];
            if got != allowed {
                wrong.push(format!("{} -> {}: expected {allowed}, measured {got}", a.name, b.name));
            }
        }
    }
    assert!(wrong.is_empty(), "reachability differs from the policy:\n{}", wrong.join("\n"));
    // Cross-node pairs really exist among the allowed ones.
    assert!(measured[&("red1".to_string(), "red2".to_string())]);
    assert!(measured[&("glob2".to_string(), "blue1".to_string())]);
    Ok(())
}
