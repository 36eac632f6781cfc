//! Operator actions end to end: an `etcdctl`-style put of a record with
//! Action set (join / isolate / global, mixed), until the controller has
//! applied it and cleared Action, seen on an etcd watch as an operator's
//! tooling (`k8s-ovs-ctl --wait`) sees it.
//!
//! Two phases of `--count` actions each: one at a time (the latency an
//! operator sees), and in bursts where every namespace gets an action at once
//! (a script re-tenanting a cluster; each action timed from its own write).
//!
//! Baseline from the same run and etcd: a bare put observed on a watch (the
//! floor of any etcd-driven change). The ratio says what the controller adds.
//! Real etcd on loopback, the controller in-process watching the lab's test
//! kube-apiserver. Results as JSON (default `bench/results/actions.json`),
//! every sample included (`samples_ms`) for `--bin plot`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bench::etcd::{action_record, net_ids, put, wait_put};
use bench::stats::{ratio, summary};
use clap::Parser;
use controller::run::{run, Settings};
use etcd_client::{Client, EventType, WatchOptions};
use etcd_schema::{parse_net_namespace, Keys, NetworkConfig, PluginName};
use lab::etcd::Etcd;
use lab::kube_api::KubeApi;
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(about = "Times operator actions: etcd write to Action cleared")]
struct Args {
    /// Number of actions (join, isolate, global in turn).
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Namespaces the actions are spread over.
    #[arg(long, default_value_t = 200)]
    namespaces: usize,
    #[arg(long, default_value = "bench/results/actions.json")]
    out: PathBuf,
}

const PREFIX: &str = "/k8s.ovs.com/ovs/network";

fn config() -> Result<NetworkConfig> {
    Ok(NetworkConfig {
        name: "k8ssdn".into(),
        network: "172.11.0.0/16".parse()?,
        host_subnet_length: 10,
        service_network: "10.96.0.0/12".parse()?,
        plugin: PluginName::MultiTenant,
    })
}

fn start_etcd(dir: &std::path::Path) -> Result<Etcd> {
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if let Ok(e) = Etcd::start(None, "127.0.0.1", port, dir) {
            return Ok(e);
        }
    }
    bail!("etcd did not start")
}

type Running = tokio::task::JoinHandle<Result<()>>;

/// A controller task with the default lease TTL (10 s); dropping or
/// sending on the returned sender stops it gracefully (it resigns).
fn spawn_controller(
    id: &str,
    etcd: &Etcd,
    api: &KubeApi,
) -> Result<(tokio::sync::oneshot::Sender<()>, Running)> {
    let settings = Settings {
        endpoints: vec![etcd.endpoint.clone()],
        etcd_tls: None,
        prefix: PREFIX.into(),
        bootstrap: Some(config()?),
        admin_namespaces: vec![],
        id: id.into(),
        lease_ttl_secs: 10,
        subnet_grace: std::time::Duration::from_secs(300),
    };
    let kube = kube::Client::try_from(kube::Config::new(api.url().parse()?))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(settings, Some(kube), async move {
        let _ = stop_rx.await;
    }));
    Ok((stop_tx, task))
}

/// Polls until `f` holds; returns how long that took.
async fn time_until(what: &str, mut f: impl AsyncFnMut() -> Result<bool>) -> Result<Duration> {
    let t0 = Instant::now();
    while !f().await? {
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(60), "{what}: not within 60 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(t0.elapsed())
}

/// Leader hand-over with the default TTL: the leader crashes (its task is
/// aborted, the lease is not revoked), then the next one stops (SIGTERM-like).
async fn failover(
    etcd: &Etcd,
    api: &KubeApi,
    client: &mut Client,
    keys: &Keys,
    leader: Running,
) -> Result<Value> {
    let leader_is = |id: &'static str| {
        let mut c = client.clone();
        let key = keys.leader();
        async move || -> Result<bool> {
            let resp = c.get(key.as_str(), None).await?;
            Ok(resp.kvs().first().and_then(|kv| kv.value_str().ok()) == Some(id))
        }
    };
    let (stop_b, b) = spawn_controller("bench-b", etcd, api)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    leader.abort();
    let crash = time_until("takeover after a crash", leader_is("bench-b")).await?;
    api.create_namespace("after-crash")?;
    let key = keys.netnamespace("after-crash");
    let mut c = client.clone();
    let record = time_until("record after the takeover", async || {
        Ok(!c.get(key.as_str(), None).await?.kvs().is_empty())
    })
    .await?;
    let (stop_c, c_task) = spawn_controller("bench-c", etcd, api)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop_b.send(());
    let resign = time_until("takeover after a resign", leader_is("bench-c")).await?;
    b.await??;
    let _ = stop_c.send(());
    c_task.await??;
    Ok(json!({
        "lease_ttl_s": 10,
        "takeover_after_crash_ms": crash.as_secs_f64() * 1000.0,
        "new_namespace_record_after_takeover_ms": record.as_secs_f64() * 1000.0,
        "takeover_after_sigterm_resign_ms": resign.as_secs_f64() * 1000.0,
    }))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = lab::base_dir().join(format!("{}{}x0-bench-actions", lab::DEFAULT_PREFIX, std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = bench(&args, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn bench(args: &Args, dir: &std::path::Path) -> Result<()> {
    let etcd = start_etcd(dir)?;
    let api = KubeApi::start()?;
    let names: Vec<String> = (0..args.namespaces).map(|i| format!("bench{i:03}")).collect();
    for n in &names {
        api.create_namespace(n)?;
    }
    let (stop_tx, controller) = spawn_controller("bench", &etcd, &api)?;

    let mut client = controller::store::connect(std::slice::from_ref(&etcd.endpoint)).await?;
    let keys = Keys::new(PREFIX, "k8ssdn");
    let started = Instant::now();
    let mut ids = loop {
        let ids = net_ids(&mut client, &keys).await?;
        if ids.len() == names.len() {
            break ids;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "records not created");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // Baseline: a bare put seen on a watch.
    let ping = "/bench/ping";
    let mut watch = client.watch(ping, None).await?;
    let mut baseline = Vec::with_capacity(args.count);
    for i in 0..args.count {
        let t0 = Instant::now();
        let rev = put(&mut client, ping, i.to_string()).await?;
        wait_put(&mut watch, ping, rev - 1, |_| true).await?;
        baseline.push(t0.elapsed().as_secs_f64() * 1000.0);
    }

    // Actions, one at a time, each written as an operator would.
    let mut watch = client.watch(keys.netnamespaces_dir(), Some(WatchOptions::new().with_prefix())).await?;
    let mut latency = Vec::with_capacity(args.count);
    let mut mix: BTreeMap<&str, usize> = BTreeMap::new();
    for i in 0..args.count {
        let ns = &names[i % names.len()];
        let other = &names[(i * 7 + 3) % names.len()];
        let (action, target) = match i % 3 {
            0 if other != ns => ("join", other.as_str()),
            0 | 1 => ("isolate", ""),
            _ => ("global", ""),
        };
        *mix.entry(action).or_default() += 1;
        let id = ids.get(ns).copied().context("no NetID")?;
        let key = keys.netnamespace(ns);
        let t0 = Instant::now();
        let rev = put(&mut client, &key, action_record(ns, id, action, target)).await?;
        wait_put(&mut watch, &key, rev, |v| {
            parse_net_namespace(&key, ns, v).is_ok_and(|r| r.action.is_none())
        })
        .await?;
        latency.push(t0.elapsed().as_secs_f64() * 1000.0);
        let rec = net_ids(&mut client, &keys).await?;
        ids = rec;
    }
    // Bursts: every namespace gets an action at once (an operator script
    // re-tenanting a cluster), `count` actions in all; latency per action
    // from its own write to its own clear.
    // A reader task timestamps every cleared record as it arrives, while
    // this task is still writing the burst.
    drop(watch);
    let (clear_tx, mut clears) = tokio::sync::mpsc::unbounded_channel::<(String, i64, Instant)>();
    let mut reader_stream =
        client.watch(keys.netnamespaces_dir(), Some(WatchOptions::new().with_prefix())).await?;
    let reader = tokio::spawn(async move {
        while let Ok(Some(resp)) = reader_stream.message().await {
            let now = Instant::now();
            for ev in resp.events() {
                let Some((key, value)) =
                    ev.kv().and_then(|kv| Some((kv.key_str().ok()?, kv.value_str().ok()?)))
                else {
                    continue;
                };
                let ns = key.rsplit('/').next().unwrap_or_default();
                let cleared = parse_net_namespace(key, ns, value).is_ok_and(|r| r.action.is_none());
                if ev.event_type() == EventType::Put && cleared {
                    let rev = ev.kv().map(|kv| kv.mod_revision()).unwrap_or(0);
                    if clear_tx.send((key.to_string(), rev, now)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut burst = Vec::with_capacity(args.count);
    let mut burst_mix: BTreeMap<&str, usize> = BTreeMap::new();
    let mut round = 0;
    while burst.len() < args.count {
        round += 1;
        let n = names.len().min(args.count - burst.len());
        let mut started: BTreeMap<String, (Instant, i64)> = BTreeMap::new();
        for (j, ns) in names.iter().take(n).enumerate() {
            let (action, target) = match (round + j) % 3 {
                0 => ("join", names[(j + 1) % names.len()].as_str()),
                1 => ("isolate", ""),
                _ => ("global", ""),
            };
            *burst_mix.entry(action).or_default() += 1;
            let id = ids.get(ns).copied().context("no NetID")?;
            let t0 = Instant::now();
            let rev = put(&mut client, &keys.netnamespace(ns), action_record(ns, id, action, target)).await?;
            started.insert(keys.netnamespace(ns), (t0, rev));
        }
        while !started.is_empty() {
            let (key, mod_rev, at) = tokio::time::timeout(Duration::from_secs(30), clears.recv())
                .await
                .context("burst: no answer within 30 s")?
                .context("reader ended")?;
            if let Some(&(t0, rev)) = started.get(&key) {
                if mod_rev > rev {
                    burst.push(at.duration_since(t0).as_secs_f64() * 1000.0);
                    started.remove(&key);
                }
            }
        }
        ids = net_ids(&mut client, &keys).await?;
    }
    reader.abort();

    let errors = controller::run::read_all(&mut client, &keys)
        .await?
        .iter()
        .filter(|(k, _, _)| k.starts_with(&keys.errors_dir()))
        .count();

    let failover = failover(&etcd, &api, &mut client, &keys, controller).await?;
    drop(stop_tx);

    let actions = summary(latency);
    let base = summary(baseline);
    let result = json!({
        "benchmark": "actions",
        "what": "etcd put of a record with Action set -> the controller's write clearing Action, seen on an etcd watch",
        "setup": {
            "etcd": "3.4, private, loopback",
            "controller": "in-process, one leader, watching the lab's test kube-apiserver",
            "namespaces": args.namespaces,
            "phases": "one action at a time, then bursts of one action per namespace",
            "build": if cfg!(debug_assertions) { "dev profile (opt-level 1)" } else { "release" },
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        },
        "mix": mix,
        "rejected_edits": errors,
        "action_latency": actions,
        "burst_action_latency": summary(burst),
        "burst_size": names.len(),
        "burst_mix": burst_mix,
        "baseline_put_to_watch": base,
        "failover": failover,
        "ratio_vs_baseline": { "p50": ratio(&actions, &base, "p50_ms"), "p99": ratio(&actions, &base, "p99_ms") },
    });
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&result)? + "\n")?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}
