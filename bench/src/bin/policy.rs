//! NetworkPolicy on one node: from the policy's watch event to the bundle
//! committed on the node's switch, and the flows a policy costs.
//!
//! The node (a real ovs-vswitchd, started the way the lab does) holds 200
//! pods of namespace `db`; 200 pods of namespace `web` run elsewhere. The
//! cluster's objects live in the lab's test apiserver (in-process), and the
//! agent's own source (`policy_source::run_policies`: three reflectors
//! merged into the policy view) watches them. Each event is an apiserver
//! write; timed from the write to (1) the new view reaching the agent's
//! loop, (2) the node's policy flows computed (`NodePipeline::set_policies`),
//! (3) the bundle committed on the switch. Events, `--events` of each:
//! - the policy `db-from-web` created (200 x 200 on TCP 5432) and deleted;
//! - one `web` pod relabelled out of the policy's peers and back.
//!
//! Baselines from the same run: the apiserver's own write-to-watch latency
//! (stage 1 is it), and `ovs-ofctl --bundle add-flows` installing the same
//! policy flows from a file, beside our bundle of them.
//!
//! `cargo run -p bench --bin policy [--release]`; JSON in
//! `bench/results/policy.json`.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bench::stats::{ratio, summary};
use clap::Parser;
use k8s_ovs_agent::policy_source;
use lab::kube_api::KubeApi;
use lab::switch::PrivateSwitch;
use ovs_flows::client::{Client, ClientOptions};
use ovs_flows::ofp::FlowOp;
use ovs_flows::pipeline::{LocalPod, Mode, NodePipeline, NodeState};
use ovs_flows::policy::PolicyView;
use ovs_flows::{Category, Ipv4Prefix, Mac};
use serde_json::{json, Value};
use tokio::sync::watch;

#[derive(Parser)]
struct Args {
    /// Pods on each side of the policy.
    #[arg(long, default_value_t = 200)]
    pods: u32,
    /// Events of each kind.
    #[arg(long, default_value_t = 30)]
    events: u32,
    #[arg(long, default_value = "bench/results/policy.json")]
    json: PathBuf,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn local_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 11, 0, 2)) + i)
}

fn remote_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 11, 4, 2)) + i)
}

fn pod_object(ns: &str, name: &str, app: &str, node: &str, ip: Ipv4Addr) -> Value {
    json!({
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"name": "pg", "containerPort": 5432}]}]},
        "status": {"podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]}
    })
}

fn policy_object() -> Value {
    json!({
        "kind": "NetworkPolicy",
        "metadata": {"name": "db-from-web", "namespace": "db"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{
                "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "web"}},
                          "podSelector": {"matchLabels": {"app": "web"}}}],
                "ports": [{"protocol": "TCP", "port": 5432}]
            }]
        }
    })
}

/// The stages of one event, in milliseconds from the apiserver write.
struct Timing {
    watch: f64,
    computed: f64,
    committed: f64,
    ops: usize,
}

struct Node {
    pipeline: NodePipeline,
    switch: Client,
    views: watch::Receiver<Arc<PolicyView>>,
}

impl Node {
    /// Makes one apiserver write and follows it to the switch: waits for the
    /// view that `done` accepts (the watch may deliver intermediate ones).
    async fn event(
        &mut self,
        write: impl FnOnce() -> Result<()>,
        done: impl Fn(&PolicyView) -> bool,
    ) -> Result<Timing> {
        let t0 = Instant::now();
        write()?;
        let view = loop {
            tokio::time::timeout(Duration::from_secs(10), self.views.changed())
                .await
                .context("no view within 10 s")??;
            let v = self.views.borrow_and_update().clone();
            if done(&v) {
                break v;
            }
        };
        let watch = t0.elapsed();
        let ops = self.pipeline.set_policies(view);
        let computed = t0.elapsed();
        self.switch.bundle(&ops).await?;
        let committed = t0.elapsed();
        Ok(Timing { watch: ms(watch), computed: ms(computed), committed: ms(committed), ops: ops.len() })
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let n = args.pods;
    let api = KubeApi::start()?;
    for ns in ["db", "web"] {
        api.create_namespace(ns)?;
    }
    for i in 0..n {
        api.create(pod_object("db", &format!("db{i}"), "db", "n1", local_ip(i)))?;
        api.create(pod_object("web", &format!("web{i}"), "web", "n2", remote_ip(i)))?;
    }
    let kube = kube::Client::try_from(kube::Config::new(api.url().parse()?))?;
    let (tx, mut views) = watch::channel(Arc::new(PolicyView::default()));
    tokio::spawn(policy_source::run_policies(kube, tx));
    let all_pods = (2 * n) as usize;
    while views.borrow().pods.len() < all_pods {
        tokio::time::timeout(Duration::from_secs(20), views.changed()).await.context("the first view")??;
    }
    views.borrow_and_update();

    let sw = PrivateSwitch::start("br0")?;
    let switch =
        Client::connect(sw.endpoint().parse().map_err(anyhow::Error::msg)?, ClientOptions::default()).await?;
    let p = |a: [u8; 4], l| Ipv4Prefix::new(Ipv4Addr::from(a), l);
    let mut state = NodeState::new(
        Mode::MultiTenant,
        Ipv4Addr::new(192, 0, 2, 11),
        p([172, 11, 0, 0], 22),
        p([172, 11, 0, 0], 16),
        p([10, 96, 0, 0], 12),
    );
    state.vnis = [("db".to_string(), 100), ("web".to_string(), 100)].into();
    for i in 0..n {
        let ip = local_ip(i);
        let pod = LocalPod {
            ofport: 3 + i,
            ip,
            mac: Mac::for_ipv4(ip),
            namespace: "db".into(),
            name: format!("db{i}"),
            egress_meter: None,
        };
        state.pods.insert(pod.ofport, pod);
    }
    let mut pipeline = NodePipeline::new(state, 1);
    let base: Vec<FlowOp> = pipeline.flows().into_iter().map(FlowOp::Add).collect();
    switch.bundle(&base).await?;
    let _ = pipeline.set_policies(views.borrow().clone());
    let mut node = Node { pipeline, switch, views };
    println!(
        "policy benchmark: {n} db pods on the node, {n} web pods elsewhere, {} events of each kind",
        args.events
    );

    let has_policy = |v: &PolicyView| !v.policies.is_empty();
    let web0_app = |app: &'static str| {
        move |v: &PolicyView| {
            v.pods
                .get(&("web".into(), "web0".into()))
                .is_some_and(|p| p.labels.get("app").map(String::as_str) == Some(app))
        }
    };
    let mut samples: [(&str, Vec<Timing>); 4] = [
        ("policy created", vec![]),
        ("policy deleted", vec![]),
        ("peer relabelled out", vec![]),
        ("peer relabelled back", vec![]),
    ];
    let mut policy_flows = 0;
    for _ in 0..args.events {
        let t = node.event(|| api.create(policy_object()).map(|_| ()), has_policy).await?;
        policy_flows = node.pipeline.policy_flow_count();
        samples[0].1.push(t);
        let t = node
            .event(
                || api.update(pod_object("web", "web0", "other", "n2", remote_ip(0))).map(|_| ()),
                web0_app("other"),
            )
            .await?;
        samples[2].1.push(t);
        let t = node
            .event(
                || api.update(pod_object("web", "web0", "web", "n2", remote_ip(0))).map(|_| ()),
                web0_app("web"),
            )
            .await?;
        samples[3].1.push(t);
        let t = node
            .event(
                || api.delete(lab::kube_api::Kind::NetworkPolicy, Some("db"), "db-from-web"),
                |v| v.policies.is_empty(),
            )
            .await?;
        samples[1].1.push(t);
    }
    if policy_flows != (3 * n + 2) as usize {
        bail!("the 200 x 200 policy has {policy_flows} flows on the node, expected {}", 3 * n + 2);
    }

    // Baseline: ovs-ofctl installing the same policy flows from a file.
    node.event(|| api.create(policy_object()).map(|_| ()), has_policy).await?;
    let flows: Vec<String> = node
        .pipeline
        .flows()
        .iter()
        .filter(|f| f.cookie.category() == Some(Category::Policy))
        .map(|f| f.to_string())
        .collect();
    let file = sw.dir.join("policy-flows.txt");
    std::fs::write(&file, flows.join("\n") + "\n")?;
    let mut ofctl_ms = Vec::new();
    let mut ours_ms = Vec::new();
    let policy_ops: Vec<FlowOp> = node
        .pipeline
        .flows()
        .into_iter()
        .filter(|f| f.cookie.category() == Some(Category::Policy))
        .map(FlowOp::Add)
        .collect();
    for _ in 0..args.events {
        let t = Instant::now();
        let out = Command::new("ovs-ofctl")
            .args(["-O", "OpenFlow15", "--bundle", "add-flows", &sw.endpoint()])
            .arg(&file)
            .output()?;
        if !out.status.success() {
            bail!("ovs-ofctl: {}", String::from_utf8_lossy(&out.stderr));
        }
        ofctl_ms.push(ms(t.elapsed()));
        let t = Instant::now();
        node.switch.bundle(&policy_ops).await?;
        ours_ms.push(ms(t.elapsed()));
    }

    let mut kinds = serde_json::Map::new();
    println!(
        "{:<22} {:>6} {:>12} {:>12} {:>12} {:>12}",
        "event", "ops", "watch p50", "compute p50", "committed p50", "committed p99"
    );
    for (name, ts) in &samples {
        let watch = summary(ts.iter().map(|t| t.watch).collect());
        let compute = summary(ts.iter().map(|t| t.computed - t.watch).collect());
        let bundle = summary(ts.iter().map(|t| t.committed - t.computed).collect());
        let total = summary(ts.iter().map(|t| t.committed).collect());
        let ops = ts.first().map_or(0, |t| t.ops);
        println!(
            "{name:<22} {ops:>6} {:>10.2} ms {:>10.2} ms {:>11.2} ms {:>11.2} ms",
            watch["p50_ms"].as_f64().unwrap_or(0.0),
            compute["p50_ms"].as_f64().unwrap_or(0.0),
            total["p50_ms"].as_f64().unwrap_or(0.0),
            total["p99_ms"].as_f64().unwrap_or(0.0)
        );
        kinds.insert(
            name.to_string(),
            json!({"ops": ops, "write_to_watch": watch, "compute": compute, "bundle": bundle, "write_to_committed": total}),
        );
    }
    let ofctl = summary(ofctl_ms);
    let ours = summary(ours_ms);
    println!(
        "installing the policy's {} flows: our bundle p50 {:.2} ms, ovs-ofctl --bundle {:.2} ms ({:.2}x)",
        policy_flows,
        ours["p50_ms"].as_f64().unwrap_or(0.0),
        ofctl["p50_ms"].as_f64().unwrap_or(0.0),
        ratio(&ours, &ofctl, "p50_ms")
    );
    println!("flows per policy: {policy_flows} for {n} x {n} pods (a flow per pair would be {})", n * n);
    let doc = json!({
        "pods_each_side": n,
        "events_of_each_kind": args.events,
        "policy_flows_on_node": policy_flows,
        "pairs": n * n,
        "events": kinds,
        "install_policy_flows": {"ours_bundle": ours, "ovs_ofctl_bundle": ofctl, "ratio_p50": ratio(&ours, &ofctl, "p50_ms")},
        "loadavg": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    });
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&doc)?)?;
    println!("results: {}", args.json.display());
    Ok(())
}
