//! The agent's flow computation at the scale model of issue 15, without OVS:
//! one node of a 1,000-node cluster (110 local pods, 999 remote nodes),
//! 10,000 namespaces and 20,000 service ports. For each kind of event (pod
//! added or removed, VNI changed, remote node added or removed, service
//! added or removed) the time the agent spends today: the whole pipeline
//! recomputed and diffed against the previous flow set (`pipeline()` +
//! `reconcile::delta`), p50 and p99; how many flow operations the event
//! sends; the node's flow count; the process's resident memory holding the
//! state and one flow set. Beside it, in the same run, the incremental
//! computation (`ovs_flows::pipeline::Incremental::update` of the owners the
//! event touches); which owners those are is computed outside the timer
//! (`touched`, the tests' oracle: the agent knows what its events touch),
//! and so is the namespace-id assignment. The agent does not use the
//! incremental path yet.
//!
//! `cargo run -p bench --bin scale [--release]`; JSON in
//! `bench/results/scale.json`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use ovs_flows::pipeline::{
    pipeline, touched, Incremental, LocalPod, Mode, NodeState, Protocol, RemoteNode, Service, ServicePort,
};
use ovs_flows::{reconcile, FlowSet, Ipv4Prefix, Mac};
use serde_json::json;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1000)]
    nodes: u32,
    #[arg(long, default_value_t = 110)]
    pods_per_node: u32,
    #[arg(long, default_value_t = 10_000)]
    namespaces: u32,
    #[arg(long, default_value_t = 20_000)]
    service_ports: u32,
    /// Events of each kind.
    #[arg(long, default_value_t = 40)]
    events: u32,
    #[arg(long, default_value = "bench/results/scale.json")]
    json: PathBuf,
}

fn node_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + i)
}

/// Node `i`'s /24 in 172.16.0.0/12 (the cluster range).
fn subnet(i: u32) -> Ipv4Prefix {
    Ipv4Prefix::new(Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + (i << 8)), 24)
}

fn namespace(i: u32) -> String {
    format!("ns{i}")
}

fn pod(ofport: u32, ns: u32) -> LocalPod {
    let ip = Ipv4Addr::from(u32::from(subnet(0).addr()) + ofport);
    LocalPod { ofport, ip, mac: Mac::for_ipv4(ip), namespace: namespace(ns), egress_meter: None }
}

fn service(i: u32, namespaces: u32) -> Service {
    Service {
        ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i),
        namespace: namespace(i % namespaces),
        ports: vec![
            ServicePort { protocol: Protocol::Tcp, port: 80 },
            ServicePort { protocol: Protocol::Tcp, port: 443 },
        ],
    }
}

fn model(a: &Args) -> NodeState {
    let mut s = NodeState::new(
        Mode::MultiTenant,
        node_ip(0),
        subnet(0),
        Ipv4Prefix::new(Ipv4Addr::new(172, 16, 0, 0), 12),
        Ipv4Prefix::new(Ipv4Addr::new(10, 96, 0, 0), 12),
    );
    for i in 1..a.nodes {
        s.remote_nodes.insert(node_ip(i), RemoteNode { ip: node_ip(i), subnet: subnet(i) });
    }
    s.vnis = (0..a.namespaces).map(|i| (namespace(i), 10 + i)).collect();
    for p in 0..a.pods_per_node {
        // Local pods spread over the namespaces as the cluster's are.
        s.pods.insert(3 + p, pod(3 + p, p * 97 % a.namespaces));
    }
    for i in 0..a.service_ports / 2 {
        let svc = service(i, a.namespaces);
        s.services.insert(svc.ip, svc);
    }
    s.assign_namespace_ids();
    s
}

/// Today's cost of one event: the whole pipeline of the new state, and
/// its difference from the flows of the old one.
fn full_recompute(old: &FlowSet, new_state: &mut NodeState) -> (Duration, usize, FlowSet) {
    let t = Instant::now();
    new_state.assign_namespace_ids();
    let new = pipeline(new_state, 1);
    let ops = reconcile::delta(old, &new).len();
    (t.elapsed(), ops, new)
}

fn quantile(v: &mut [Duration], q: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i].as_secs_f64() * 1e3
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

type Event = fn(&mut NodeState, u32, &Args);

fn main() -> Result<()> {
    let a = Args::parse();
    let mut state = model(&a);
    let mut flows = pipeline(&state, 1);
    let rss = rss_mib();
    let mut inc = Incremental::new(&state, 1);
    println!(
        "scale model: {} nodes, {} local pods, {} namespaces, {} service ports: {} flows on the node, {rss:.1} MiB resident",
        a.nodes,
        a.pods_per_node,
        a.namespaces,
        a.service_ports,
        flows.len()
    );
    let kinds: [(&str, Event); 7] = [
        ("pod added", |s, k, a| {
            let port = 1000 + k;
            s.pods.insert(port, pod(port, k * 31 % a.namespaces));
        }),
        ("pod removed", |s, k, _| {
            s.pods.remove(&(1000 + k));
        }),
        ("VNI changed (join)", |s, k, a| {
            let ns = namespace(k * 97 % a.pods_per_node.min(a.namespaces));
            s.vnis.insert(ns, 5_000_000 + k);
        }),
        ("remote node added", |s, k, a| {
            let i = a.nodes + k;
            s.remote_nodes.insert(node_ip(i), RemoteNode { ip: node_ip(i), subnet: subnet(i) });
        }),
        ("remote node removed", |s, k, a| {
            s.remote_nodes.remove(&node_ip(a.nodes + k));
        }),
        ("service added", |s, k, a| {
            let svc = service(a.service_ports + k, a.namespaces);
            s.services.insert(svc.ip, svc);
        }),
        ("service removed", |s, k, a| {
            s.services.remove(&service(a.service_ports + k, a.namespaces).ip);
        }),
    ];
    let mut results = BTreeMap::new();
    for (name, event) in kinds {
        let mut times = Vec::new();
        let mut inc_times = Vec::new();
        let mut ops = Vec::new();
        for k in 0..a.events {
            let old = state.clone();
            event(&mut state, k, &a);
            let (t, n, new) = full_recompute(&flows, &mut state);
            let owners = touched(&old, &state).unwrap_or_default();
            let t_inc = Instant::now();
            let inc_ops = inc.update(&state, &owners);
            inc_times.push(t_inc.elapsed());
            anyhow::ensure!(
                inc_ops.len() == n,
                "{name}: incremental sent {} ops, the whole diff {n}",
                inc_ops.len()
            );
            flows = new;
            times.push(t);
            ops.push(n);
        }
        anyhow::ensure!(
            inc.len() == flows.len(),
            "{name}: incremental holds {} flows, the whole set {}",
            inc.len(),
            flows.len()
        );
        let (p50, p99) = (quantile(&mut times.clone(), 0.5), quantile(&mut times, 0.99));
        let (i50, i99) = (quantile(&mut inc_times.clone(), 0.5), quantile(&mut inc_times, 0.99));
        let ops_max = ops.iter().copied().max().unwrap_or(0);
        println!(
            "{name:<22} full recompute p50 {p50:7.2} ms p99 {p99:7.2} ms | incremental p50 {i50:6.3} ms p99 {i99:6.3} ms | flow ops <= {ops_max}"
        );
        results.insert(
            name,
            json!({"full_recompute_ms": {"p50": p50, "p99": p99}, "incremental_ms": {"p50": i50, "p99": i99}, "flow_ops_max": ops_max}),
        );
    }
    let out = json!({
        "model": {"nodes": a.nodes, "local_pods": a.pods_per_node, "namespaces": a.namespaces,
                   "service_ports": a.service_ports, "events_per_kind": a.events},
        "flows_per_node": flows.len(),
        "resident_mib": rss,
        "events": results,
        "incremental": "Incremental::update of the touched owners (owners and namespace ids computed outside the timer); the agent does not use it yet",
        "goals": {"p99_ms": 1.0, "resident_mib": 50.0},
    });
    if let Some(dir) = a.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&a.json, serde_json::to_string_pretty(&out)? + "\n")?;
    println!("written to {}", a.json.display());
    Ok(())
}
