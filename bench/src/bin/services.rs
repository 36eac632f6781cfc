//! Connections per second to a ClusterIP beside the same to the endpoint's
//! own IP, in the same run: what a Service costs on k8s-ovs (SERVICE, the
//! node's kube-proxy DNAT through tun0, GATEWAY_IN's conntrack commit and
//! GATEWAY_REPLY's steering of the reply) over a direct pod-to-pod
//! connection. Two lab nodes, kube-proxy's own rules (the lab's stand-in,
//! `clusterCIDR` set), client on node 1, the endpoint on node 1 (same node)
//! and on node 2 (across the tunnel). Each round alternates the four targets
//! so all see the same machine load.
//!
//! `cargo build --workspace --bins && cargo run -p bench --bin services`
//! JSON in `bench/results/services.json`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use lab::kube_proxy::ProxyConfig;
use lab::services::{wait_answer, ServiceLab};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Connections per target and round.
    #[arg(long, default_value_t = 500)]
    connections: u32,
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    #[arg(long, default_value = "bench/results/services.json")]
    json: PathBuf,
}

/// `lab-echo ask --count`: connections one after another; (answered per
/// second, failed).
fn rate(from: &lab::Netns, ip: &str, port: u16, n: u32) -> Result<(f64, u64)> {
    let bin = lab::cluster::bin("lab-echo")?.to_string_lossy().to_string();
    let addr = format!("{ip}:{port}");
    let count = n.to_string();
    let out =
        from.exec_full(&[&bin, "ask", "tcp", &addr, "--count", &count], std::time::Duration::from_secs(600))?;
    let field = |name: &str| -> Result<f64> {
        out.stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .with_context(|| format!("no {name} in lab-echo's output: {} {}", out.stdout, out.stderr))?
            .parse()
            .with_context(|| name.to_string())
    };
    Ok((field("per_sec=")?, field("failed=")? as u64))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args = Args::parse();
    let proxy = ProxyConfig { cluster_cidr: Some(lab::cluster::NETWORK.into()), masquerade_all: false };
    let mut s = ServiceLab::start(2, &[("bench", 100)], proxy)?;
    let near = s.add_pod(1, "bench", "near")?;
    let far = s.add_pod(2, "bench", "far")?;
    let client = s.add_pod(1, "bench", "client")?;
    // The direct connections go to another port of the same pods: a
    // ClusterIP connection arrives at the endpoint as client:p -> ep:8080,
    // so a direct one to 8080 could reuse that 4-tuple while the server
    // still holds it in TIME_WAIT (kube-proxy keeps client addresses), and
    // would measure TCP's tuple reuse instead of the path.
    for ep in [&near, &far] {
        s.serve(ep, "tcp", 8080)?;
        s.serve(ep, "tcp", 8081)?;
    }
    let http = [("http", "TCP", 80, 8080)];
    s.service("bench", "near", "10.96.5.6", &http, &[], Some(&[&near]))?;
    s.service("bench", "far", "10.96.5.5", &http, &[], Some(&[&far]))?;
    s.proxy_synced()?;
    let targets = [
        ("same node, ClusterIP", "10.96.5.6".to_string(), 80),
        ("same node, endpoint IP", near.ip.clone(), 8081),
        ("across nodes, ClusterIP", "10.96.5.5".to_string(), 80),
        ("across nodes, endpoint IP", far.ip.clone(), 8081),
    ];
    for (what, ip, port) in &targets {
        wait_answer(&client.netns, "tcp", ip, *port, std::time::Duration::from_secs(10))?
            .with_context(|| format!("{what}: no answer"))?;
    }
    let load_start = bench::loadavg();
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let mut failed = vec![0u64; targets.len()];
    for _ in 0..args.rounds {
        for (i, (_, ip, port)) in targets.iter().enumerate() {
            let (r, f) = rate(&client.netns, ip, *port, args.connections)?;
            samples[i].push(r);
            failed[i] += f;
        }
    }
    println!(
        "{:<28} {:>14}   (median of {} rounds of {} connections)",
        "TCP connect+answer", "conn/s", args.rounds, args.connections
    );
    let mut out = serde_json::Map::new();
    let mut medians = Vec::new();
    for (i, (what, _, _)) in targets.iter().enumerate() {
        let m = median(&mut samples[i].clone());
        println!("{what:<28} {m:>14.0}   failed {}", failed[i]);
        out.insert(
            what.to_string(),
            json!({"median_per_sec": m, "rounds_per_sec": samples[i], "failed": failed[i]}),
        );
        medians.push(m);
    }
    let (same, across) = (medians[0] / medians[1], medians[2] / medians[3]);
    println!("ratio ClusterIP / endpoint IP: same node {same:.2}, across nodes {across:.2} (1 = a Service costs nothing)");
    out.insert("ratio_same_node".into(), same.into());
    out.insert("ratio_across_nodes".into(), across.into());
    out.insert("connections_per_round".into(), args.connections.into());
    out.insert("load_average".into(), json!({"start": load_start, "end": bench::loadavg()}));
    println!("load average (1, 5, 15 min): {load_start} at the start, {} at the end", bench::loadavg());
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&serde_json::Value::Object(out))? + "\n")?;
    println!("wrote {}", args.json.display());
    Ok(())
}
