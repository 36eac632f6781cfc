//! The latency distributions of the `cni` and `actions` benchmarks, each
//! beside its baseline, as one SVG (empirical CDFs on a log axis).
//!
//! `cargo run -p bench --bin plot` reads `bench/results/cni.json` and
//! `bench/results/actions.json` (their `samples_ms`) and writes
//! `bench/results/latency.svg`. Runs no benchmark.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bench::plot::{self, series_samples, Panel, Series};
use clap::Parser;
use serde_json::Value;

#[derive(Parser)]
#[command(about = "Plots the CNI and actions latency distributions beside their baselines (SVG)")]
struct Args {
    #[arg(long, default_value = "bench/results/cni.json")]
    cni: PathBuf,
    #[arg(long, default_value = "bench/results/actions.json")]
    actions: PathBuf,
    #[arg(long, default_value = "bench/results/latency.svg")]
    out: PathBuf,
}

const CNI_RUN: &str = "cargo build --workspace --bins && cargo run -p bench --bin cni -- --pods 100";
const ACTIONS_RUN: &str = "cargo run -p bench --bin actions";

fn read(path: &Path, rerun: &str) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {} (written by `{rerun}`)", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON; re-run `{rerun}`", path.display()))
}

/// A series named `name` from `key` of a results document.
fn series(doc: &Value, key: &str, path: &Path, rerun: &str, name: &str, baseline: bool) -> Result<Series> {
    let samples_ms = series_samples(doc, key, &path.display().to_string(), rerun)?;
    Ok(Series { name: name.into(), samples_ms, baseline })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let cni = read(&args.cni, CNI_RUN)?;
    let actions = read(&args.actions, ACTIONS_RUN)?;
    let pods = cni.get("pods").and_then(Value::as_u64).map(|n| format!(", {n} pods")).unwrap_or_default();
    let cni_panel = |op: &str| -> Result<Panel> {
        Ok(Panel {
            title: format!("CNI {op}{pods}"),
            series: vec![
                series(&cni, &format!("k8s-ovs {op}"), &args.cni, CNI_RUN, "k8s-ovs", false)?,
                series(
                    &cni,
                    &format!("bridge+host-local {op}"),
                    &args.cni,
                    CNI_RUN,
                    "bridge + host-local (baseline)",
                    true,
                )?,
            ],
        })
    };
    let burst =
        actions.get("burst_size").and_then(Value::as_u64).map_or("bursts".into(), |n| format!("{n} at once"));
    let a = |key: &str, name: &str, baseline: bool| {
        series(&actions, key, &args.actions, ACTIONS_RUN, name, baseline)
    };
    let panels = vec![
        cni_panel("ADD")?,
        cni_panel("DEL")?,
        Panel {
            title: "Operator action: etcd write of Action -> Action cleared by the controller".into(),
            series: vec![
                a("action_latency", "actions, one at a time", false)?,
                a("burst_action_latency", &format!("actions, {burst}"), false)?,
                a("baseline_put_to_watch", "bare etcd put seen on a watch (baseline)", true)?,
            ],
        },
    ];
    let svg = plot::svg("Latency distributions, k8s-ovs beside its baselines (one run each)", &panels)?;
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&args.out, svg).with_context(|| format!("writing {}", args.out.display()))?;
    println!("wrote {}", args.out.display());
    Ok(())
}
