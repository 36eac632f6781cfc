//! Convergence: an operator's edit of a NetNamespace record's Action in etcd
//! (join / isolate / global, put as `etcdctl put` puts it) until the new VNI
//! is in the flows of the LAST node. The controller applies the edit (its
//! applied copy of the record, `docs/etcd-schema.md`), every agent's etcd
//! watch sees the copy, and each agent's pipeline changes the tenant's few
//! flows (5-6 here: no services).
//!
//! (a) A lab of 3 real nodes: real etcd, the `k8s-ovs-controller` and
//!     `k8s-ovs-agent` processes, an `ovs-vswitchd` per node, a 200-pod
//!     namespace spread over them (pods wired by the CNI binary) and a second
//!     namespace to join. Committed on a node = the switch holds the new
//!     VNI: this process dumps that namespace's DEST_VNI flows from each
//!     node's br0 (native OpenFlow, table + cookie owner filter) in a tight
//!     loop from the write on. The agents' own "flows synced" debug lines
//!     give their share (wall-clock time, bundle time), the controller's
//!     info line its commit; a second pass with no switch polled, timed by
//!     the logs alone, shows what the polling costs.
//! (b) The same edits fanned out to N simulated agents (N = 100, 500,
//!     1,000) against the same etcd and controller: each is the agent's own
//!     etcd source (`etcd_source::run`, its own connection) feeding a watch
//!     channel, and on each change what the agent's loop does without OVS
//!     (its `ViewFollower` applying the view's changes to its `NodePipeline`:
//!     the ops it would send).
//!     Each node is a Kubernetes Node, so the controller allocates its
//!     subnet; each holds pods of the tenant and of other namespaces. Timed
//!     until the last agent's pipeline holds the new VNI.
//! (c) Baseline in the same run and etcd: a bare put on the agents' key
//!     prefix until the last of as many plain watchers (one connection each)
//!     as there are agents has received it.
//!
//! `cargo build --workspace --bins && cargo run -p bench --bin converge`
//! (the dev profile, as the tests build the daemons). JSON in
//! `bench/results/converge.json`, with every end-to-end sample.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use bench::etcd::{action_record, applied_net_id, put, FanOut};
use bench::stats::{percentiles, ratio, summary};
use clap::Parser;
use etcd_client::{Client, EventType, GetOptions};
use etcd_schema::{parse_net_namespace, Keys};
use k8s_ovs_agent::dataplane::prefix_of;
use k8s_ovs_agent::etcd_source::{self, mode_of, EtcdSettings, EtcdView};
use k8s_ovs_agent::timing::strip_ansi;
use k8s_ovs_agent::view_follow::ViewFollower;
use lab::cluster::{add_pod, start_controller, start_kube_api_with, Agent, Daemon, NAME, PREFIX};
use lab::kube_api::KubeApi;
use lab::Lab;
use ovs_flows::client::{Client as FlowClient, ClientOptions, Endpoint};
use ovs_flows::pipeline::{LocalPod, NodePipeline, NodeState, Table, GATEWAY_OFPORT, REG_DST_VNI};
use ovs_flows::{Action, Category, CookieFilter, Field, Flow, Mac};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

#[derive(Parser, Debug)]
#[command(about = "Times an operator's action from the etcd write to the last node's flows")]
struct Args {
    /// Actions of each kind (join, isolate, global, in turn).
    #[arg(long, default_value_t = 100)]
    actions: usize,
    /// Pods of the tenant namespace on the lab (spread over its 3 nodes),
    /// and spread over the simulated agents (at least one each).
    #[arg(long, default_value_t = 200)]
    pods: usize,
    /// Simulated agent counts for part (b), in order (empty: none).
    #[arg(long, value_delimiter = ',', default_value = "100,500,1000")]
    agents: Vec<usize>,
    /// Skip part (a): no agents or pods on the lab nodes.
    #[arg(long)]
    skip_lab: bool,
    #[arg(long, default_value = "bench/results/converge.json")]
    out: PathBuf,
}

/// The namespace whose VNI the actions change, and the one it joins.
const TENANT: &str = "bench-a";
const PARTNER: &str = "bench-b";
/// Other namespaces, a few pods of which every simulated node holds.
const OTHERS: usize = 20;
/// Room for the 3 lab nodes and 1,000 simulated ones: a /24 per node (8
/// host bits) out of a /12 (4,096 subnets), apart from the service network
/// (10.96.0.0/12) and the lab's fabric (172.30.0.0/24). The lab's default
/// network has room for 64 nodes.
const NETWORK: &str = "10.112.0.0/12";
const HOST_BITS: u32 = 8;
const KINDS: [&str; 3] = ["join", "isolate", "global"];
/// Pause after each action, so the next starts from a quiet system.
const SETTLE: Duration = Duration::from_millis(20);
const TIMEOUT: Duration = Duration::from_secs(30);

fn other(i: usize) -> String {
    format!("other-{i:02}")
}

/// Simulated node `k`'s address, in the range set aside for benchmarks
/// (198.18.0.0/15). Only a string in etcd: nothing is ever sent to it.
fn sim_ip(k: usize) -> Ipv4Addr {
    let k = k as u32;
    Ipv4Addr::new(198, 18, (k / 254) as u8, (k % 254 + 1) as u8)
}

/// The key the baselines put, under the prefix the agents watch.
fn ping_key() -> String {
    format!("{PREFIX}/bench-converge/ping")
}

fn ms(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1e3
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// A `VmRSS:`-style field of `/proc/<pid>/status`, in MiB.
fn status_mib(pid: &str, field: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// CPU time (user + system) process `pid` has used so far, ms (/proc
/// counts in USER_HZ, which is 100 on Linux).
fn cpu_ms(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // utime and stime are fields 14 and 15; 3 (state) is the first after the command.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) * 10.0
}

/// The soft limit on open files raised to the hard one, before etcd starts
/// (it inherits it): N agents' connections, then as many watchers', live in
/// this process and in etcd.
fn raise_fd_limit(agents: usize) -> Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit")?;
    }
    let need = 2 * agents as u64 + 512;
    ensure!(hard >= need, "open files limited to {hard}; {agents} agents need about {need}");
    Ok(hard)
}

/// Aborts a task when dropped (a simulated agent's etcd source dies with it).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The VNI a DEST_VNI flow loads.
fn dst_vni(f: &Flow) -> Option<u32> {
    f.actions.iter().find_map(|a| match a {
        Action::SetField { dst, value } if *dst == Field::Reg(REG_DST_VNI).all() => {
            u32::try_from(*value).ok()
        }
        _ => None,
    })
}

/// What the controller's applied copy of the tenant's record says, as a
/// watcher of it sees it: (NetID, when received).
struct Monitor {
    rx: mpsc::UnboundedReceiver<(u32, Instant)>,
    _task: AbortOnDrop<()>,
}

impl Monitor {
    async fn start(endpoint: &str, keys: &Keys) -> Result<Monitor> {
        let mut client = Client::connect([endpoint], None).await?;
        let key = keys.applied_netnamespace(TENANT);
        let mut stream = client.watch(key.as_str(), None).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let _client = client;
            while let Ok(Some(resp)) = stream.message().await {
                let now = Instant::now();
                for ev in resp.events() {
                    let Some(value) = ev.kv().and_then(|kv| kv.value_str().ok()) else { continue };
                    if ev.event_type() == EventType::Put {
                        if let Ok(r) = parse_net_namespace(&key, TENANT, value) {
                            let _ = tx.send((r.net_id, now));
                        }
                    }
                }
            }
        });
        Ok(Monitor { rx, _task: AbortOnDrop(task) })
    }

    fn drain(&mut self) {
        while self.rx.try_recv().is_ok() {}
    }

    /// The next NetID other than `old`, and when it was seen.
    async fn next_change(&mut self, old: u32) -> Result<(u32, Instant)> {
        loop {
            let (id, at) = tokio::time::timeout(TIMEOUT, self.rx.recv())
                .await
                .context("the controller applied nothing within 30 s")?
                .context("monitor ended")?;
            if id != old {
                return Ok((id, at));
            }
        }
    }
}

/// One action on the tenant: its kind, the NetID it starts from, when it
/// was written.
struct Edit {
    kind: &'static str,
    old: u32,
    t0: Instant,
    wall0: SystemTime,
}

impl Edit {
    /// Writes action `i` (join, isolate, global in turn) as an operator
    /// would: the record with its current NetID and Action set.
    async fn write(client: &mut Client, keys: &Keys, i: usize, old: u32) -> Result<Edit> {
        let kind = KINDS[i % KINDS.len()];
        let join = if kind == "join" { PARTNER } else { "" };
        let value = action_record(TENANT, old, kind, join);
        let (wall0, t0) = (SystemTime::now(), Instant::now());
        put(client, &keys.netnamespace(TENANT), value).await?;
        Ok(Edit { kind, old, t0, wall0 })
    }

    /// The NetID the controller gave is the one the action asks for.
    fn check(&self, new: u32, partner: u32) -> Result<()> {
        let ok = match self.kind {
            "join" => new == partner,
            "global" => new == 0,
            _ => new != self.old && new != partner && new != 0,
        };
        ensure!(ok, "{} from NetID {} gave NetID {new} (partner {partner})", self.kind, self.old);
        Ok(())
    }
}

/// Samples by action kind, and all together.
#[derive(Default)]
struct ByKind(BTreeMap<&'static str, Vec<f64>>);

impl ByKind {
    fn push(&mut self, kind: &'static str, v: f64) {
        self.0.entry(kind).or_default().push(v);
        self.0.entry("all").or_default().push(v);
    }

    /// Percentiles per kind; with every sample for "all" when `samples`.
    fn json(&self, samples: bool) -> Value {
        let mut out = serde_json::Map::new();
        for (k, v) in &self.0 {
            let s = if samples && *k == "all" { summary(v.clone()) } else { percentiles(v.clone()) };
            out.insert(k.to_string(), s);
        }
        Value::Object(out)
    }
}

/// The baseline: `puts` bare puts on the agents' prefix, each until the
/// last of `watchers` plain watchers has it.
async fn baseline(client: &mut Client, endpoint: &str, watchers: usize, puts: usize) -> Result<Value> {
    let mut fan = FanOut::start(endpoint, PREFIX, &ping_key(), watchers).await?;
    let (mut first, mut last) = (Vec::new(), Vec::new());
    for i in 0..puts {
        let d = fan.time_put(client, &i.to_string()).await?;
        first.push(d.first_ms);
        last.push(d.last_ms);
    }
    Ok(
        json!({"watchers": watchers, "put_to_last_watcher": summary(last), "put_to_first_watcher": percentiles(first)}),
    )
}

fn main() -> Result<()> {
    let args = Args::parse();
    let fd_limit = raise_fd_limit(args.agents.iter().copied().max().unwrap_or(0))?;
    if std::env::var_os("K8S_OVS_LAB_LOG").is_none() {
        // The agents' "flows synced" line (debug) gives their own share.
        std::env::set_var("K8S_OVS_LAB_LOG", "info,k8s_ovs_agent::dataplane=debug");
    }
    let load_start = loadavg();
    let mut lab = Lab::start(3)?;
    lab.put_network_config_with("k8s-ovs-multitenant", NETWORK, HOST_BITS)?;
    let mut names = vec![TENANT.to_string(), PARTNER.to_string()];
    names.extend((0..OTHERS).map(other));
    let api = start_kube_api_with(&lab, &names.iter().map(String::as_str).collect::<Vec<_>>())?;
    let url = api.url();
    let controller = start_controller(&lab, &url, "bench", &[])?;
    let agents = match args.skip_lab {
        true => Vec::new(),
        false => start_lab_pods(&mut lab, &url, args.pods)?,
    };
    // The measuring talks to etcd at the control host's address: its
    // runtime's threads, spawned from one that entered that namespace, live
    // there. The main thread stays out: `ip netns pids` (which the lab's
    // teardown ends) would name this process otherwise.
    let mut result = std::thread::scope(|s| {
        s.spawn(|| -> Result<Value> {
            lab.ctl.enter_this_thread()?;
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(run(&args, &lab, &api, &controller, agents))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the measuring thread panicked"))?
    })?;
    result["setup"]["open_files_limit"] = json!(fd_limit);
    result["load_average"]["start"] = json!(load_start);
    result["load_average"]["end"] = json!(loadavg());
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&result)? + "\n")?;
    println!("wrote {}", args.out.display());
    Ok(())
}

/// The lab's agents, `pods` pods of the tenant round robin over the nodes
/// and one of the partner on each, all through the CNI binary.
fn start_lab_pods(lab: &mut Lab, url: &str, pods: usize) -> Result<Vec<Agent>> {
    let agents = (1..=lab.nodes.len())
        .map(|i| Agent::start(lab, i, &["--kube-url", url]))
        .collect::<Result<Vec<_>>>()?;
    let t = Instant::now();
    let nodes = lab.nodes.len();
    for j in 0..pods {
        add_pod(lab, j % nodes + 1, TENANT, &format!("a{j}"))?;
    }
    for node in 1..=nodes {
        add_pod(lab, node, PARTNER, &format!("b{node}"))?;
    }
    eprintln!("{} pods wired in {:.1} s", pods + nodes, t.elapsed().as_secs_f64());
    Ok(agents)
}

async fn run(
    args: &Args,
    lab: &Lab,
    api: &KubeApi,
    controller: &Daemon,
    agents: Vec<Agent>,
) -> Result<Value> {
    let endpoint = lab.etcd_endpoint();
    let keys = Keys::new(PREFIX, NAME);
    let mut client = Client::connect([endpoint.as_str()], None).await?;
    let started = Instant::now();
    let (mut vni, partner) = loop {
        let a = applied_net_id(&mut client, &keys, TENANT).await?;
        let b = applied_net_id(&mut client, &keys, PARTNER).await?;
        if let (Some(a), Some(b)) = (a, b) {
            break (a, b);
        }
        ensure!(started.elapsed() < TIMEOUT, "the controller wrote no applied records");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ensure!(vni != partner && vni != 0, "the tenant starts isolated (NetID {vni}, partner {partner})");
    let mut monitor = Monitor::start(&endpoint, &keys).await?;
    let mut ctx = Ctx {
        client: &mut client,
        keys: &keys,
        endpoint: &endpoint,
        monitor: &mut monitor,
        partner,
        controller_log: &controller.log,
        controller_pid: controller.pid().to_string(),
    };
    let mut result = json!({
        "benchmark": "converge",
        "what": "etcd put of the tenant's record with Action set (join / isolate / global) -> the new VNI in the flows of the last node",
        "setup": {
            "etcd": "3.4, one member on the lab's control host",
            "controller": "the k8s-ovs-controller process on the control host, watching the lab's test kube-apiserver",
            "network": NETWORK, "host_subnet_bits": HOST_BITS,
            "actions_per_kind": args.actions,
            "build": if cfg!(debug_assertions) { "dev profile (opt-level 1)" } else { "release" },
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        },
        "goals": {"lab_p99_ms": 100, "agents_1000_p99_ms": 1000},
        "load_average": {},
    });
    if !agents.is_empty() {
        result["load_average"]["lab"] = json!(loadavg());
        result["lab"] = lab_part(args, lab, &mut ctx, &mut vni).await?;
        result["load_average"]["lab_end"] = json!(loadavg());
        // Part (b) times simulated agents alone; the lab's pods stay on
        // their switches.
        drop(agents);
    }
    let mut sims = Vec::new();
    let mut nodes = 0;
    for &n in &args.agents {
        for k in nodes..n {
            api.create_node(&format!("sim{k:04}"), &sim_ip(k).to_string())?;
        }
        nodes = nodes.max(n);
        let load = loadavg();
        let mut s = sim_part(args, n, &mut ctx, &mut vni, lab).await?;
        s["load_average"] = json!({"start": load, "end": loadavg()});
        sims.push(s);
    }
    result["simulated"] = json!(sims);
    if let Some(goal) = result["lab"]["edit_to_last_node"]["all"]["p99_ms"].as_f64() {
        result["goals"]["lab_met"] = json!(goal < 100.0);
    }
    if let Some(s) = sims.iter().find(|s| s["agents"] == 1000) {
        result["goals"]["agents_1000_met"] =
            json!(s["edit_to_last_agent"]["all"]["p99_ms"].as_f64().map(|p| p < 1000.0));
    }
    Ok(result)
}

/// What both parts drive: etcd, the applied-copy monitor, the partner's NetID.
struct Ctx<'a> {
    client: &'a mut Client,
    keys: &'a Keys,
    endpoint: &'a str,
    monitor: &'a mut Monitor,
    partner: u32,
    controller_log: &'a Path,
    controller_pid: String,
}

/// When one node's switch first held the new VNI, and how many dumps that took.
struct Seen {
    node: usize,
    vni: u32,
    at: Instant,
    started: Instant,
    polls: u32,
}

/// Dumps the tenant's DEST_VNI flows on one switch (its namespace id's
/// owner cookie, that table only: 2 flows) until they load a VNI other than
/// `old`. The bundle is atomic, so both change at once.
async fn poll_until_changed(sw: FlowClient, node: usize, id: u32, old: u32) -> Result<Seen> {
    let filter = CookieFilter::owner(Category::NamespaceId, id);
    let started = Instant::now();
    let mut polls = 0;
    loop {
        let flows = sw.dump_flows(Some(Table::DestVni.id()), filter).await?;
        polls += 1;
        let vnis: BTreeSet<u32> = flows.iter().filter_map(dst_vni).collect();
        if let [vni] = vnis.iter().copied().collect::<Vec<_>>()[..] {
            if vni != old {
                return Ok(Seen { node, vni, at: Instant::now(), started, polls });
            }
        }
        ensure!(started.elapsed() < TIMEOUT, "n{node}: the tenant's DEST_VNI flows still hold {vnis:?}");
    }
}

/// The tenant's namespace id on a switch: the owner of the DEST_VNI flows
/// loading `vni` (its own, which no other namespace has).
async fn namespace_id(sw: &FlowClient, vni: u32) -> Result<u32> {
    let started = Instant::now();
    loop {
        let flows =
            sw.dump_flows(Some(Table::DestVni.id()), CookieFilter::category(Category::NamespaceId)).await?;
        let ids: BTreeSet<u32> =
            flows.iter().filter(|f| dst_vni(f) == Some(vni)).map(|f| f.cookie.object()).collect();
        if let [id] = ids.iter().copied().collect::<Vec<_>>()[..] {
            return Ok(id);
        }
        ensure!(started.elapsed() < TIMEOUT, "no single namespace id loads VNI {vni}: {ids:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one pass of actions over the lab measured.
#[derive(Default)]
struct LabRound {
    /// Edit -> the new VNI on the last node's switch (polled passes only).
    last: ByKind,
    each: Vec<f64>,
    applied: ByKind,
    poll_period: Vec<f64>,
    /// By node: edit -> seen on its switch.
    detected: Vec<Vec<f64>>,
    walls: Vec<SystemTime>,
    kinds: Vec<&'static str>,
    /// CPU this process used per action (the pollers, when polling).
    bench_cpu_ms: f64,
}

/// `puts` actions, each once every switch holds its VNI. With `poll` the
/// switches are dumped in a tight loop from before the write on; without,
/// only the agents' logs time the pass (each action is followed by a pause
/// and one check of every switch), which shows what the polling costs.
async fn lab_round(
    ctx: &mut Ctx<'_>,
    switches: &[(FlowClient, u32)],
    vni: &mut u32,
    puts: usize,
    poll: bool,
) -> Result<LabRound> {
    let mut r = LabRound { detected: vec![Vec::new(); switches.len()], ..LabRound::default() };
    let cpu = cpu_ms("self");
    for i in 0..puts {
        ctx.monitor.drain();
        let mut pollers = JoinSet::new();
        for (n, (sw, id)) in switches.iter().enumerate().filter(|_| poll) {
            pollers.spawn(poll_until_changed(sw.clone(), n + 1, *id, *vni));
        }
        let edit = Edit::write(ctx.client, ctx.keys, i, *vni).await?;
        let (new, applied_at) = ctx.monitor.next_change(edit.old).await?;
        edit.check(new, ctx.partner)?;
        if !poll {
            tokio::time::sleep(Duration::from_millis(100)).await;
            for (n, (sw, id)) in switches.iter().enumerate() {
                let seen = poll_until_changed(sw.clone(), n + 1, *id, edit.old).await?;
                ensure!(
                    seen.vni == new,
                    "n{} holds VNI {}, the controller applied {new}",
                    seen.node,
                    seen.vni
                );
            }
        }
        let mut latest = 0.0f64;
        while let Some(seen) = pollers.join_next().await {
            let seen = seen??;
            ensure!(seen.vni == new, "n{} holds VNI {}, the controller applied {new}", seen.node, seen.vni);
            let t = ms(edit.t0, seen.at);
            latest = latest.max(t);
            r.each.push(t);
            r.detected[seen.node - 1].push(t);
            r.poll_period.push(ms(seen.started, seen.at) / f64::from(seen.polls));
        }
        if poll {
            r.last.push(edit.kind, latest);
        }
        r.applied.push(edit.kind, ms(edit.t0, applied_at));
        r.walls.push(edit.wall0);
        r.kinds.push(edit.kind);
        *vni = new;
        tokio::time::sleep(SETTLE).await;
    }
    r.bench_cpu_ms = (cpu_ms("self") - cpu) / puts as f64;
    Ok(r)
}

async fn lab_part(args: &Args, lab: &Lab, ctx: &mut Ctx<'_>, vni: &mut u32) -> Result<Value> {
    let mut switches = Vec::new();
    for node in &lab.nodes {
        let ep = Endpoint::Unix(node.ovs.rundir().join("br0.mgmt"));
        let sw = FlowClient::connect(ep, ClientOptions::default()).await?;
        let id = namespace_id(&sw, *vni).await?;
        switches.push((sw, id));
    }
    let puts = KINDS.len() * args.actions;
    let base = baseline(ctx.client, ctx.endpoint, lab.nodes.len(), puts).await?;
    let polled = lab_round(ctx, &switches, vni, puts, true).await?;
    let unpolled = lab_round(ctx, &switches, vni, puts, false).await?;
    let committed = controller_times(ctx.controller_log, ctx.keys, &polled.walls)?;
    let agent = agent_share(lab, &polled.walls, &polled.detected, &committed)?;
    let committed_unpolled = controller_times(ctx.controller_log, ctx.keys, &unpolled.walls)?;
    let agent_unpolled = agent_share(lab, &unpolled.walls, &unpolled.detected, &committed_unpolled)?;
    let controller = by_kind(&polled.kinds, &committed);
    let all = polled.last.json(true);
    let b = &base["put_to_last_watcher"];
    let applied = polled.applied.json(false);
    print_rows(
        "(a) lab, 3 nodes",
        ("edit -> new VNI on the last node's switch", &all),
        &[
            ("edit -> controller logged its commit", &controller["all"]),
            ("edit -> last node's agent logged its bundle", &agent["edit_to_last_node_logged"]),
            (
                "controller's commit -> last node's agent logged",
                &agent["controller_commit_to_last_node_logged"],
            ),
            ("the agent's bundle (its log), each node", &agent["bundle_ms"]),
            ("no switch polled: edit -> last agent logged", &agent_unpolled["edit_to_last_node_logged"]),
            ("no switch polled: the agent's bundle", &agent_unpolled["bundle_ms"]),
            ("baseline: put -> last of 3 plain watchers", b),
        ],
    );
    Ok(json!({
        "nodes": lab.nodes.len(),
        "tenant_pods": args.pods,
        "partner_pods": lab.nodes.len(),
        "edit_to_last_node": all,
        "edit_to_each_node": percentiles(polled.each),
        "controller_applied_copy_seen": applied,
        "controller_log": controller,
        "agent_log": agent,
        "detection": {
            "how": "per node, OpenFlow flow-stats requests for the tenant's DEST_VNI flows (table 52, cookie owner = its namespace id) one after another from before the write until they load the new VNI",
            "poll_period_ms": percentiles(polled.poll_period),
            "bench_cpu_ms_per_action": polled.bench_cpu_ms,
            "without_polling": {
                "what": "the same number of actions again with no switch polled, timed by the agents' logs alone: what the polling costs the agents",
                "controller_applied_copy_seen": unpolled.applied.json(false),
                "bench_cpu_ms_per_action": unpolled.bench_cpu_ms,
                "agent_log": agent_unpolled,
            },
        },
        "baseline": base,
        "ratio_vs_baseline": {"p50": ratio(&all["all"], b, "p50_ms"), "p99": ratio(&all["all"], b, "p99_ms")},
    }))
}

/// The durations an agent's "flows synced" debug line gives.
struct Synced {
    computed_ms: f64,
    bundle_ms: f64,
    ops: usize,
}

/// The lines of a daemon's log that `pick` accepts (colours stripped), with
/// their wall-clock time.
fn read_log(log: &Path, pick: impl Fn(&str) -> bool) -> Result<Vec<(SystemTime, String)>> {
    let text = std::fs::read_to_string(log).with_context(|| format!("read {}", log.display()))?;
    Ok(text
        .lines()
        .map(strip_ansi)
        .filter(|l| pick(l))
        .filter_map(|l| Some((parse_rfc3339(l.split_whitespace().next()?)?, l)))
        .collect())
}

/// For action `i` (written at `walls[i]`), the first line logged before the
/// next action's write, and how long after its own write (ms).
fn in_window<'a>(
    lines: &'a [(SystemTime, String)],
    walls: &[SystemTime],
    i: usize,
) -> Option<(f64, &'a str)> {
    let (start, end) = (walls[i], walls.get(i + 1).copied());
    let (at, line) = lines.iter().find(|(at, _)| *at >= start && end.is_none_or(|e| *at < e))?;
    Some((at.duration_since(start).ok()?.as_secs_f64() * 1e3, line))
}

/// The agents' own account, from their logs: for each action the first
/// "flows synced" line after its write on each node.
/// `committed`: when the controller logged each action's commit.
fn agent_share(
    lab: &Lab,
    walls: &[SystemTime],
    detected: &[Vec<f64>],
    committed: &[Option<f64>],
) -> Result<Value> {
    let (mut bundle, mut computed, mut lag) = (Vec::new(), Vec::new(), Vec::new());
    let mut ops = BTreeSet::new();
    let mut missing = 0;
    let mut per_action = vec![0.0f64; walls.len()];
    for (n, node) in lab.nodes.iter().enumerate() {
        let lines = read_log(&node.dir.join("agent.log"), |l| l.contains("flows synced"))?;
        for (i, latest) in per_action.iter_mut().enumerate() {
            let Some((t, s)) = in_window(&lines, walls, i).and_then(|(t, l)| Some((t, parse_synced(l)?)))
            else {
                missing += 1;
                continue;
            };
            *latest = latest.max(t);
            bundle.push(s.bundle_ms);
            computed.push(s.computed_ms);
            ops.insert(s.ops);
            if let Some(d) = detected[n].get(i) {
                lag.push(d - t);
            }
        }
    }
    Ok(json!({
        "what": "the agent's debug line \"flows synced\" (written after the bundle's commit reply): its wall-clock time after the write, `bundle` (open .. commit reply) and `computed` (the ops to send, after the pipeline's update)",
        "controller_commit_to_last_node_logged":
            percentiles(per_action.iter().zip(committed).filter_map(|(a, c)| Some(a - (*c)?)).collect()),
        "edit_to_last_node_logged": percentiles(per_action),
        "bundle_ms": percentiles(bundle),
        "computed_ms": percentiles(computed),
        "ops_per_bundle": ops,
        "detected_minus_logged_ms": percentiles(lag),
        "lines_missing": missing,
    }))
}

/// The controller's own account: when it logged committing each action
/// (its info line naming the tenant's record), ms after the write.
fn controller_times(log: &Path, keys: &Keys, walls: &[SystemTime]) -> Result<Vec<Option<f64>>> {
    let token = format!("key={}", keys.netnamespace(TENANT));
    let lines = read_log(log, |l| l.split_whitespace().any(|w| w == token))?;
    Ok((0..walls.len()).map(|i| in_window(&lines, walls, i).map(|(t, _)| t)).collect())
}

/// Per-kind percentiles of per-action values, and how many are missing.
fn by_kind(kinds: &[&'static str], values: &[Option<f64>]) -> Value {
    let mut by = ByKind::default();
    for (kind, v) in kinds.iter().zip(values) {
        if let Some(v) = v {
            by.push(kind, *v);
        }
    }
    let mut v = by.json(false);
    v["missing"] = json!(values.iter().filter(|v| v.is_none()).count());
    v
}

/// The fields of `... DEBUG k8s_ovs_agent::dataplane: flows synced computed=1.2µs bundle=3.4ms ops=8 flows=700`.
fn parse_synced(line: &str) -> Option<Synced> {
    let field = |name: &str| line.split_whitespace().find_map(|w| w.strip_prefix(name));
    Some(Synced {
        computed_ms: parse_duration_ms(field("computed=")?)?,
        bundle_ms: parse_duration_ms(field("bundle=")?)?,
        ops: field("ops=")?.parse().ok()?,
    })
}

/// A `Duration`'s Debug form (`800ns`, `1.2µs`, `3.4ms`, `1.5s`) in ms.
fn parse_duration_ms(s: &str) -> Option<f64> {
    for (unit, scale) in [("ns", 1e-6), ("µs", 1e-3), ("ms", 1.0), ("s", 1e3)] {
        if let Some(v) = s.strip_suffix(unit) {
            return v.parse::<f64>().ok().map(|v| v * scale);
        }
    }
    None
}

/// A UTC timestamp `YYYY-MM-DDTHH:MM:SS[.frac]Z`, as tracing writes it.
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let (date, time) = s.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<u64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    let nanos: u32 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some(UNIX_EPOCH + Duration::new(days * 86_400 + h * 3600 + min * 60 + sec, nanos))
}

/// A simulated agent's news.
enum Report {
    Ready {
        flows: usize,
    },
    /// The tenant's VNI changed in its pipeline.
    Changed {
        vni: Option<u32>,
        arrived: Instant,
        done: Instant,
        ops: usize,
    },
    Failed {
        agent: usize,
        error: String,
    },
}

/// Pods of simulated node `k` of `n`: the tenant's `pods` round robin (at
/// least one on every node, so every node's flows change with each action),
/// the partner's on every fourth node, three of other namespaces.
fn sim_pods(k: usize, n: usize, pods: usize) -> Vec<String> {
    let tenant = (pods / n + usize::from(k < pods % n)).max(1);
    let mut v = vec![TENANT.to_string(); tenant];
    if k.is_multiple_of(4) {
        v.push(PARTNER.to_string());
    }
    v.extend((0..3).map(|j| other((k * 3 + j) % OTHERS)));
    v
}

async fn sim_agent(k: usize, settings: EtcdSettings, pods: Vec<String>, tx: mpsc::UnboundedSender<Report>) {
    if let Err(e) = sim_agent_run(k, settings, pods, &tx).await {
        let _ = tx.send(Report::Failed { agent: k, error: format!("{e:#}") });
    }
}

/// Until the view holds the network config and this node's subnet (what
/// the agent waits for before it starts).
async fn wait_for_node(view_rx: &mut watch::Receiver<EtcdView>, ip: Ipv4Addr) -> Result<EtcdView> {
    loop {
        {
            let v = view_rx.borrow_and_update();
            if v.config.is_some() && v.subnets.contains_key(&ip) {
                return Ok(v.clone());
            }
        }
        view_rx.changed().await.context("etcd source stopped")?;
    }
}

/// One simulated agent: the agent's etcd source and, on each new view,
/// what its event loop does before the bundle (`Dataplane::on_view_state`:
/// the pipeline updated, the ops to send). Not kept: the agent's copy of
/// the flows it committed (`installed`), which would double the memory of
/// a thousand agents in one process for a few microseconds of work.
async fn sim_agent_run(
    k: usize,
    settings: EtcdSettings,
    pods: Vec<String>,
    tx: &mpsc::UnboundedSender<Report>,
) -> Result<()> {
    let ip = sim_ip(k);
    let (view_tx, mut view_rx) = watch::channel(EtcdView::default());
    let _source = AbortOnDrop(tokio::spawn(etcd_source::run(settings, view_tx)));
    let view = wait_for_node(&mut view_rx, ip).await?;
    let (Some(net), Some(subnet)) = (view.config.clone(), view.subnets.get(&ip).copied()) else {
        bail!("etcd view incomplete");
    };
    let mut state = NodeState::new(
        mode_of(net.plugin),
        ip,
        prefix_of(subnet),
        prefix_of(net.network),
        prefix_of(net.service_network),
    );
    for (j, namespace) in pods.into_iter().enumerate() {
        // .1 is the gateway; ofports 1 and 2 are vxlan0 and tun0.
        let pod_ip = Ipv4Addr::from(u32::from(subnet.network()) + 2 + j as u32);
        let ofport = GATEWAY_OFPORT + 1 + j as u32;
        let pod = LocalPod {
            ofport,
            ip: pod_ip,
            mac: Mac::for_ipv4(pod_ip),
            namespace,
            name: format!("pod{ofport}"),
            egress_meter: None,
        };
        state.pods.insert(ofport, pod);
    }
    let mut pipeline = NodePipeline::new(state, 1);
    let mut follower = ViewFollower::default();
    let _ = follower.apply(&view, &mut pipeline);
    drop(view);
    tx.send(Report::Ready { flows: pipeline.len() }).context("bench gone")?;
    let mut last = pipeline.state().vnis.get(TENANT).copied();
    loop {
        view_rx.changed().await.context("etcd source stopped")?;
        let arrived = Instant::now();
        let ops = follower.apply(&view_rx.borrow_and_update(), &mut pipeline);
        let done = Instant::now();
        let vni = pipeline.state().vnis.get(TENANT).copied();
        if vni != last {
            last = vni;
            tx.send(Report::Changed { vni, arrived, done, ops: ops.len() }).context("bench gone")?;
        }
    }
}

/// Waits until the controller has given each of the first `n` simulated
/// nodes a subnet.
async fn wait_subnets(client: &mut Client, n: usize) -> Result<()> {
    let started = Instant::now();
    loop {
        let resp = client.get(PREFIX, Some(GetOptions::new().with_prefix())).await?;
        let listed: Vec<(String, Vec<u8>)> = resp
            .kvs()
            .iter()
            .filter_map(|kv| Some((kv.key_str().ok()?.to_string(), kv.value().to_vec())))
            .collect();
        let view = EtcdView::relisted(&EtcdView::default(), PREFIX, &listed);
        let have = (0..n).filter(|k| view.subnets.contains_key(&sim_ip(*k))).count();
        if have == n {
            return Ok(());
        }
        ensure!(started.elapsed() < Duration::from_secs(120), "{have} of {n} simulated nodes have a subnet");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Receives the next report, failing on a failed agent.
async fn next_report(rx: &mut mpsc::UnboundedReceiver<Report>, what: &str) -> Result<Report> {
    match tokio::time::timeout(Duration::from_secs(120), rx.recv()).await {
        Err(_) => bail!("{what}: no simulated agent reported within 120 s"),
        Ok(None) => bail!("{what}: every simulated agent ended"),
        Ok(Some(Report::Failed { agent, error })) => bail!("simulated agent {agent}: {error}"),
        Ok(Some(r)) => Ok(r),
    }
}

async fn sim_part(args: &Args, n: usize, ctx: &mut Ctx<'_>, vni: &mut u32, lab: &Lab) -> Result<Value> {
    wait_subnets(ctx.client, n).await?;
    let puts = KINDS.len() * args.actions;
    let base = baseline(ctx.client, ctx.endpoint, n, puts).await?;

    let settings =
        EtcdSettings { endpoints: vec![ctx.endpoint.to_string()], prefix: PREFIX.to_string(), tls: None };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut agents = JoinSet::new();
    let t = Instant::now();
    let mut flows = Vec::new();
    for k in 0..n {
        agents.spawn(sim_agent(k, settings.clone(), sim_pods(k, n, args.pods), tx.clone()));
        // A few at a time, as nodes of a cluster start: n lists at once
        // would only time etcd's queue.
        if k % 20 == 19 || k + 1 == n {
            while flows.len() <= k {
                if let Report::Ready { flows: f } = next_report(&mut rx, "start").await? {
                    flows.push(f);
                }
            }
        }
    }
    let started_s = t.elapsed().as_secs_f64();
    let rss = status_mib("self", "VmRSS:");
    let etcd_pid = lab.etcd.as_ref().map(|e| e.pid().to_string()).unwrap_or_default();
    let etcd_fds = std::fs::read_dir(format!("/proc/{etcd_pid}/fd")).map(|d| d.count()).unwrap_or(0);
    let etcd_rss = status_mib(&etcd_pid, "VmRSS:");

    let (mut last, mut applied, mut arrived_last) = (ByKind::default(), ByKind::default(), ByKind::default());
    let (mut pipeline, mut pipeline_last, mut ops) = (Vec::new(), Vec::new(), BTreeSet::new());
    let (mut walls, mut kinds, mut arrived) = (Vec::new(), Vec::new(), Vec::new());
    let pids = ["self", etcd_pid.as_str(), ctx.controller_pid.as_str()];
    let cpu_before = pids.map(cpu_ms);
    for i in 0..puts {
        ctx.monitor.drain();
        let edit = Edit::write(ctx.client, ctx.keys, i, *vni).await?;
        let (new, applied_at) = ctx.monitor.next_change(edit.old).await?;
        edit.check(new, ctx.partner)?;
        let (mut done_max, mut arrived_max, mut last_pipeline) = (edit.t0, edit.t0, 0.0);
        for _ in 0..n {
            let Report::Changed { vni: got, arrived, done, ops: o } = next_report(&mut rx, edit.kind).await?
            else {
                bail!("a simulated agent became ready twice");
            };
            ensure!(got == Some(new), "a simulated agent holds VNI {got:?}, the controller applied {new}");
            pipeline.push(ms(arrived, done));
            ops.insert(o);
            arrived_max = arrived_max.max(arrived);
            if done > done_max {
                done_max = done;
                last_pipeline = ms(arrived, done);
            }
        }
        last.push(edit.kind, ms(edit.t0, done_max));
        applied.push(edit.kind, ms(edit.t0, applied_at));
        arrived_last.push(edit.kind, ms(edit.t0, arrived_max));
        arrived.push(ms(edit.t0, arrived_max));
        pipeline_last.push(last_pipeline);
        walls.push(edit.wall0);
        kinds.push(edit.kind);
        *vni = new;
        tokio::time::sleep(SETTLE).await;
    }
    let cpu: Vec<f64> = pids.map(cpu_ms).iter().zip(cpu_before).map(|(a, b)| (a - b) / puts as f64).collect();
    let hwm = status_mib("self", "VmHWM:");
    agents.abort_all();
    while agents.join_next().await.is_some() {}
    // Let etcd close the agents' streams before the next phase connects.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let committed = controller_times(ctx.controller_log, ctx.keys, &walls)?;
    let controller = by_kind(&kinds, &committed);
    // From the controller's commit to the new view in the last agent: the
    // applied copy's way through etcd's watches and the agents' sources.
    let fan_out: Vec<Option<f64>> = committed.iter().zip(&arrived).map(|(c, a)| c.map(|c| a - c)).collect();
    let fan_out = by_kind(&kinds, &fan_out);
    let all = last.json(true);
    let b = &base["put_to_last_watcher"];
    let pipeline = percentiles(pipeline);
    print_rows(
        &format!("(b) {n} simulated agents"),
        ("edit -> last agent's pipeline holds the new VNI", &all),
        &[
            ("edit -> controller logged its commit", &controller["all"]),
            ("controller's commit -> new view in the last agent", &fan_out["all"]),
            ("one agent's pipeline update (ViewFollower::apply)", &pipeline),
            (&format!("baseline: put -> last of {n} plain watchers"), b),
        ],
    );
    Ok(json!({
        "agents": n,
        "tenant_pods": (0..n).map(|k| sim_pods(k, n, args.pods).iter().filter(|p| *p == TENANT).count()).sum::<usize>(),
        "flows_per_agent": {"min": flows.iter().min(), "max": flows.iter().max()},
        "agents_started_s": started_s,
        "edit_to_last_agent": all,
        "controller_log": controller,
        "controller_applied_copy_seen": applied.json(false),
        "edit_to_last_view_arrived": arrived_last.json(false),
        "controller_commit_to_last_view_arrived": fan_out,
        "pipeline_per_agent_ms": pipeline,
        "pipeline_of_the_last_agent_ms": percentiles(pipeline_last),
        "ops_per_agent": ops,
        "cpu_ms_per_action": {"bench_process": cpu[0], "etcd": cpu[1], "controller": cpu[2]},
        "bench_rss_mib": {"agents_started": rss, "peak": hwm},
        "etcd": {"rss_mib": etcd_rss, "open_fds": etcd_fds},
        "baseline": base,
        "ratio_vs_baseline": {"p50": ratio(&all["all"], b, "p50_ms"), "p99": ratio(&all["all"], b, "p99_ms")},
    }))
}

/// A table of p50 / p99 rows: the headline by kind, then the others.
fn print_rows(title: &str, (what, by_kind): (&str, &Value), rows: &[(&str, &Value)]) {
    println!("{title:<60} {:>8} {:>8}", "p50 ms", "p99 ms");
    let row = |name: &str, v: &Value| {
        let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        println!("{name:<60} {:>8.2} {:>8.2}", f("p50_ms"), f("p99_ms"));
    };
    for k in KINDS.iter().chain(&["all"]) {
        row(&format!("{what}, {k}"), &by_kind[*k]);
    }
    for (name, v) in rows {
        row(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_agents_flows_synced_line() {
        let line = "\x1b[2m2026-11-24T10:11:12.123456Z\x1b[0m \x1b[34mDEBUG\x1b[0m k8s_ovs_agent::dataplane: flows synced \x1b[3mcomputed\x1b[0m\x1b[2m=\x1b[0m1.5µs \x1b[3mbundle\x1b[0m\x1b[2m=\x1b[0m3.25ms \x1b[3mops\x1b[0m\x1b[2m=\x1b[0m8 flows=700";
        let line = strip_ansi(line);
        let s = parse_synced(&line).expect("parsed");
        let at = line.split_whitespace().next().and_then(parse_rfc3339).expect("timestamp");
        assert_eq!(at.duration_since(UNIX_EPOCH).expect("after").as_micros(), 1_795_515_072_123_456);
        assert!((s.computed_ms - 0.0015).abs() < 1e-12 && (s.bundle_ms - 3.25).abs() < 1e-12);
        assert_eq!(s.ops, 8);
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(UNIX_EPOCH));
        assert_eq!(parse_duration_ms("2s"), Some(2000.0));
    }

    #[test]
    fn every_simulated_node_holds_the_tenant() {
        for n in [100, 500, 1000] {
            let pods: Vec<usize> =
                (0..n).map(|k| sim_pods(k, n, 200).iter().filter(|p| *p == TENANT).count()).collect();
            assert!(pods.iter().all(|&p| p >= 1));
            assert_eq!(pods.iter().sum::<usize>(), n.max(200));
        }
        assert_ne!(sim_ip(253), sim_ip(254));
        assert_eq!(sim_ip(0), Ipv4Addr::new(198, 18, 0, 1));
    }
}
