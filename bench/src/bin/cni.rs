//! CNI ADD and DEL latency: the `k8s-ovs` plugin (with the agent creating the
//! veth, the OVS port and the pod's flows) beside the upstream `bridge` +
//! `host-local` chain, both exec'd the same way (CNI_* environment, the
//! configuration on stdin, from the node's namespace) in the same run, pod
//! by pod alternately so both see the same machine load.
//!
//! `cargo build --workspace --bins && cargo run -p bench --bin cni -- --pods 100`
//! (the dev profile, opt-level 1: the binaries measured are the ones the tests
//! run; the time goes to processes, netlink and OVS, not to our CPU).
//! Figures: p50/p99 per command and the ratio ours/upstream; JSON in
//! `bench/results/cni.json`, with every sample (`samples_ms`) for `--bin plot`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Result};
use clap::Parser;
use lab::cluster::{cni, upstream, Agent, CniCall};
use lab::Lab;
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Pods per plugin.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    #[arg(long, default_value = "bench/results/cni.json")]
    json: PathBuf,
    /// Copy the agent's log here before the lab goes (set K8S_OVS_LAB_LOG=k8s_ovs_agent=debug
    /// for per-step timings).
    #[arg(long)]
    agent_log: Option<PathBuf>,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

struct Series {
    name: &'static str,
    samples: Vec<Duration>,
}

impl Series {
    fn new(name: &'static str) -> Series {
        Series { name, samples: Vec::new() }
    }

    /// Percentiles and the raw samples (ms to the microsecond, in the order
    /// measured, for `--bin plot`); sorts the samples.
    fn summary(&mut self) -> serde_json::Value {
        let samples_ms: Vec<f64> =
            self.samples.iter().map(|d| (d.as_secs_f64() * 1e6).round() / 1e3).collect();
        self.samples.sort();
        json!({"p50_ms": percentile(&self.samples, 0.5), "p99_ms": percentile(&self.samples, 0.99),
               "max_ms": percentile(&self.samples, 1.0), "n": self.samples.len(), "samples_ms": samples_ms})
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut lab = Lab::start(1)?;
    lab.put_network_config("k8s-ovs-multitenant")?;
    lab.put_node_subnet(1)?;
    lab.put_netnamespace("bench", 100)?;
    let agent = Agent::start(&lab, 1, &["--no-kube"])?;
    let ipam_dir = lab.dir.join("host-local");
    let reference = json!({
        "cniVersion": "1.0.0", "name": "ref", "type": "bridge", "bridge": "cnibr0", "isGateway": true,
        "ipMasq": false, "hairpinMode": true,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}]],
                 "dataDir": ipam_dir},
    });
    let (mut ours_add, mut ours_del) = (Series::new("k8s-ovs ADD"), Series::new("k8s-ovs DEL"));
    let (mut ref_add, mut ref_del) =
        (Series::new("bridge+host-local ADD"), Series::new("bridge+host-local DEL"));
    let mut calls = Vec::new();
    for i in 0..args.pods {
        let ours = CniCall::pod(
            &format!("bench-ours-{i}"),
            &lab.pod_netns(&format!("o{i}"))?,
            "bench",
            &format!("o{i}"),
        );
        let theirs = CniCall::pod(
            &format!("bench-ref-{i}"),
            &lab.pod_netns(&format!("r{i}"))?,
            "bench",
            &format!("r{i}"),
        );
        calls.push((ours, theirs));
    }
    for (ours, theirs) in &calls {
        let o = cni(&lab, 1, "ADD", ours)?;
        ensure!(o.code == Some(0), "k8s-ovs ADD: {}", o.stdout);
        ours_add.samples.push(o.elapsed);
        let r = upstream(&lab, 1, "bridge", "ADD", theirs, reference.clone())?;
        ensure!(r.code == Some(0), "bridge ADD: {} {}", r.stdout, r.stderr);
        ref_add.samples.push(r.elapsed);
    }
    for (ours, theirs) in &calls {
        let o = cni(&lab, 1, "DEL", ours)?;
        ensure!(o.code == Some(0), "k8s-ovs DEL: {}", o.stdout);
        ours_del.samples.push(o.elapsed);
        let r = upstream(&lab, 1, "bridge", "DEL", theirs, reference.clone())?;
        ensure!(r.code == Some(0), "bridge DEL: {} {}", r.stdout, r.stderr);
        ref_del.samples.push(r.elapsed);
    }
    let mut out = serde_json::Map::new();
    println!("{:<26} {:>9} {:>9} {:>9}", "CNI, exec'd per pod", "p50 ms", "p99 ms", "max ms");
    for s in [&mut ours_add, &mut ref_add, &mut ours_del, &mut ref_del] {
        let v = s.summary();
        println!(
            "{:<26} {:>9.2} {:>9.2} {:>9.2}",
            s.name,
            v["p50_ms"].as_f64().unwrap_or(f64::NAN),
            v["p99_ms"].as_f64().unwrap_or(f64::NAN),
            v["max_ms"].as_f64().unwrap_or(f64::NAN)
        );
        out.insert(s.name.to_string(), v);
    }
    let ratio = |a: &Series, b: &Series| percentile(&a.samples, 0.5) / percentile(&b.samples, 0.5);
    let (add_ratio, del_ratio) = (ratio(&ours_add, &ref_add), ratio(&ours_del, &ref_del));
    println!(
        "ratio p50 k8s-ovs / upstream: ADD {add_ratio:.2}, DEL {del_ratio:.2} (below 1 = we are faster)"
    );
    out.insert("add_p50_ratio_ours_over_upstream".into(), add_ratio.into());
    out.insert("del_p50_ratio_ours_over_upstream".into(), del_ratio.into());
    out.insert("pods".into(), args.pods.into());
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&serde_json::Value::Object(out))? + "\n")?;
    println!("wrote {}", args.json.display());
    if let Some(to) = &args.agent_log {
        std::fs::copy(&agent.daemon.log, to)?;
    }
    Ok(())
}
