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
//!
//! `--profile` also says where the time goes: the agent logs each ADD's and
//! DEL's stages (`k8s_ovs_agent::timing`, turned on here), the socket server
//! what it adds around them, and every pod also gets a VERSION exec of each
//! plugin (the process alone: start, exit, no socket, no netlink); the
//! medians per stage (all pods, the first 20, the last 20) are printed and
//! written under `profile`. The extra execs add load, so the headline
//! figures come from a run without it.
//!
//! `--ovs-counters` says what each ADD costs ovs-vswitchd: the node's
//! switch's coverage counters (`ovs-appctl coverage/show`: its
//! reconfigurations, netlink messages) are read before and after all of our
//! ADDs, then all of upstream's (in this mode the two do not alternate, so
//! its latencies are not the headline ones either), and the difference per
//! ADD is printed and written under `ovs_counters`.
//!
//! Upstream's plugins run from a namespace of their own, a node running
//! only bridge + host-local, as in a cluster that uses them: each side's
//! figures have only the other's CPU load in them. `--baseline-in-our-node`
//! execs them from our node's namespace instead (what this bench did until
//! 2026-12): there every link they make wakes our ovs-vswitchd, which
//! reconfigures over all of our ports for each (`--ovs-counters` shows that
//! work), on the two cores upstream's plugin runs on. That slows upstream's
//! ADD by about a third, more than ours, and so flatters our ratio
//! (`bench/README.md`). The JSON says which (`baseline_node`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use clap::Parser;
use k8s_ovs_agent::timing;
use lab::cluster::{cni, upstream_in, Agent, CniCall};
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
    /// Per-stage medians from the agent's timing lines (see the module doc).
    #[arg(long)]
    profile: bool,
    /// ovs-vswitchd's work per ADD, ours and upstream's (see the module doc).
    #[arg(long)]
    ovs_counters: bool,
    /// Exec upstream's plugins from our node's namespace, where our
    /// ovs-vswitchd reconfigures for their links, instead of a namespace of
    /// their own (see the module doc).
    #[arg(long)]
    baseline_in_our_node: bool,
}

/// The counters `--ovs-counters` reports.
const COUNTERS: &[&str] =
    &["bridge_reconfigure", "netlink_sent", "netlink_received", "nln_changed", "ofproto_update_port"];

/// ovs-vswitchd's coverage totals, and the CPU it used (`cpu_ms`, all its
/// threads, from /proc). It folds its threads' counts into the totals about
/// once a second, so this waits that long first.
fn coverage(lab: &Lab) -> Result<BTreeMap<String, u64>> {
    std::thread::sleep(Duration::from_millis(1500));
    let ovs = &lab.node(1).ovs;
    let text = ovs.appctl(&["-t", "ovs-vswitchd", "coverage/show"])?;
    let mut totals: BTreeMap<String, u64> = text
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?;
            let total = l.rsplit_once("total:")?.1.trim().parse().ok()?;
            COUNTERS.contains(&name).then(|| (name.to_string(), total))
        })
        .collect();
    let pid = std::fs::read_to_string(ovs.rundir().join("ovs-vswitchd.pid"))?;
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))?;
    // utime and stime, in clock ticks (100 a second), after the command name.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default().split(' ').collect();
    let ticks: u64 =
        fields.get(12..14).unwrap_or_default().iter().filter_map(|f| f.parse::<u64>().ok()).sum();
    totals.insert("cpu_ms".into(), ticks * 10);
    Ok(totals)
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
    if args.profile && std::env::var_os("K8S_OVS_LAB_LOG").is_none() {
        // Read by the lab when it starts the agent.
        std::env::set_var("K8S_OVS_LAB_LOG", format!("info,{}=debug", timing::TARGET));
    }
    let mut lab = Lab::start(1)?;
    lab.put_network_config("k8s-ovs-multitenant")?;
    lab.put_node_subnet(1)?;
    lab.put_netnamespace("bench", 100)?;
    let agent = Agent::start(&lab, 1, &["--no-kube"])?;
    let baseline_node = match args.baseline_in_our_node {
        true => lab.node(1).netns.name.clone(),
        false => lab.pod_netns("refnode")?.name,
    };
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
    let (mut ours_exec, mut ref_exec) = (Series::new("k8s-ovs VERSION"), Series::new("bridge VERSION"));
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
    let run = |command: &str, ours: &CniCall, theirs: &CniCall| -> Result<(Duration, Duration)> {
        let o = cni(&lab, 1, command, ours)?;
        ensure!(o.code == Some(0), "k8s-ovs {command}: {}", o.stdout);
        let r = upstream_in(&baseline_node, "bridge", command, theirs, reference.clone())?;
        ensure!(r.code == Some(0), "bridge {command}: {} {}", r.stdout, r.stderr);
        Ok((o.elapsed, r.elapsed))
    };
    let mut counters = serde_json::Map::new();
    if args.ovs_counters {
        let per_add = |before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>| {
            let n = calls.len().max(1) as f64;
            let diff = |k: &String| after.get(k).unwrap_or(&0).saturating_sub(*before.get(k).unwrap_or(&0));
            before.keys().map(|k| (k.clone(), json!(diff(k) as f64 / n))).collect::<serde_json::Map<_, _>>()
        };
        let start = coverage(&lab)?;
        for (ours, _) in &calls {
            let o = cni(&lab, 1, "ADD", ours)?;
            ensure!(o.code == Some(0), "k8s-ovs ADD: {}", o.stdout);
            ours_add.samples.push(o.elapsed);
        }
        let mid = coverage(&lab)?;
        for (_, theirs) in &calls {
            let r = upstream_in(&baseline_node, "bridge", "ADD", theirs, reference.clone())?;
            ensure!(r.code == Some(0), "bridge ADD: {} {}", r.stdout, r.stderr);
            ref_add.samples.push(r.elapsed);
        }
        let end = coverage(&lab)?;
        counters.insert("k8s-ovs ADD".into(), per_add(&start, &mid).into());
        counters.insert("bridge+host-local ADD".into(), per_add(&mid, &end).into());
        println!("ovs-vswitchd per ADD (coverage counters; ADDs not alternated in this mode):");
        for (who, v) in &counters {
            println!("  {who:<24} {v}");
        }
    }
    for (ours, theirs) in calls.iter().filter(|_| !args.ovs_counters) {
        let (o, r) = run("ADD", ours, theirs)?;
        ours_add.samples.push(o);
        ref_add.samples.push(r);
        if args.profile {
            let (o, r) = run("VERSION", ours, theirs)?;
            ours_exec.samples.push(o);
            ref_exec.samples.push(r);
        }
    }
    for (ours, theirs) in &calls {
        let (o, r) = run("DEL", ours, theirs)?;
        ours_del.samples.push(o);
        ref_del.samples.push(r);
    }
    // In the order measured (the summaries below sort them).
    let measured = [("ADD", ours_add.samples.clone()), ("DEL", ours_del.samples.clone())];
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
    out.insert("baseline_node".into(), if args.baseline_in_our_node { "ours" } else { "own" }.into());
    if args.ovs_counters {
        out.insert("ovs_counters".into(), counters.into());
    }
    if args.profile {
        let profile = profile(&agent.daemon.log, &measured, &ours_exec.samples, &ref_exec.samples)?;
        out.insert("profile".into(), profile);
    }
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

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1) / 2]
}

fn ms(d: &Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The per-stage medians of ADD and DEL: from the agent's timing lines
/// (one per request, in order), the socket server's around them, the
/// plugin's total as the runtime sees it and the VERSION execs.
fn profile(
    log: &Path,
    measured: &[(&str, Vec<Duration>)],
    ours_exec: &[Duration],
    ref_exec: &[Duration],
) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(log).with_context(|| format!("read {}", log.display()))?;
    let mut lines: BTreeMap<String, Vec<BTreeMap<String, u64>>> = BTreeMap::new();
    for (kind, stages) in text.lines().filter_map(timing::parse) {
        lines.entry(kind).or_default().push(stages);
    }
    let us = |m: &BTreeMap<String, u64>, k: &str| m.get(k).map(|v| *v as f64 / 1e3);
    let mut out = serde_json::Map::new();
    for (command, totals) in measured {
        let (Some(agent), Some(served)) = (lines.get(*command), lines.get(&format!("serve_{command}")))
        else {
            anyhow::bail!(
                "no timing lines for {command} in {}: was the agent's debug log on?",
                log.display()
            );
        };
        let n = totals.len();
        ensure!(
            agent.len() == n && served.len() == n,
            "{command}: {} agent and {} socket timing lines for {n} calls",
            agent.len(),
            served.len(),
        );
        // Every stage, per pod, in ms: the runtime's view first, then the
        // socket server's, then the dataplane's own steps.
        let mut rows: Vec<(String, Vec<Option<f64>>)> = Vec::new();
        let mut push = |name: &str, v: Vec<Option<f64>>| rows.push((name.to_string(), v));
        let outside = |i: usize| us(&served[i], "total").map(|s| ms(&totals[i]) - s);
        push("total as the runtime sees it", totals.iter().map(|d| Some(ms(d))).collect());
        if ours_exec.len() == n && *command == "ADD" {
            push("  plugin process alone (VERSION exec)", ours_exec.iter().map(|d| Some(ms(d))).collect());
            push(
                "  plugin's socket and JSON, outside the agent",
                (0..n).map(|i| outside(i).map(|o| o - ms(&ours_exec[i]))).collect(),
            );
            push("  (upstream bridge VERSION exec)", ref_exec.iter().map(|d| Some(ms(d))).collect());
        } else {
            push("  plugin process, socket, outside the agent", (0..n).map(outside).collect());
        }
        push("  agent: socket read", served.iter().map(|s| us(s, "read")).collect());
        push(
            "  agent: to the loop and back",
            (0..n).map(|i| Some(us(&served[i], "loop")? - us(&agent[i], "total")?)).collect(),
        );
        push("  agent: socket write", served.iter().map(|s| us(s, "write")).collect());
        push("  agent: request handled", agent.iter().map(|s| us(s, "total")).collect());
        let mut stages: Vec<String> = Vec::new();
        for k in agent.iter().flat_map(|a| a.keys()).filter(|k| *k != "total") {
            if !stages.contains(k) {
                stages.push(k.clone());
            }
        }
        for k in &stages {
            push(&format!("    {k}"), agent.iter().map(|s| us(s, k)).collect());
        }
        let part =
            |v: &[Option<f64>], r: std::ops::Range<usize>| median(v[r].iter().flatten().copied().collect());
        println!("\n{command}: per-stage medians, ms {:>10} {:>10} {:>10}", "all", "first 20", "last 20");
        let mut json_rows = serde_json::Map::new();
        for (name, v) in &rows {
            let (all, first, last) = (part(v, 0..n), part(v, 0..n.min(20)), part(v, n.saturating_sub(20)..n));
            println!("{name:<46} {all:>10.2} {first:>10.2} {last:>10.2}");
            json_rows.insert(
                name.trim().to_string(),
                json!({"p50_ms": all, "p50_first20_ms": first, "p50_last20_ms": last}),
            );
        }
        out.insert(command.to_string(), serde_json::Value::Object(json_rows));
    }
    Ok(serde_json::Value::Object(out))
}
