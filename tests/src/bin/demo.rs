//! `demo`: k8s-ovs end to end in one command, for a human watching.
//!
//! Starts a two-node lab (etcd, the test kube-apiserver, the controller and an
//! agent per node, each node with its own Open vSwitch), creates pods through
//! the CNI binary in three namespaces, prints who reaches whom, then changes
//! tenancy live the operator's way (`etcdctl put` of the record) and the
//! friendly way (`k8s-ovs-ctl`), printing the matrix after each change, and
//! (full mode) shapes a running pod's bandwidth live, measured with iperf3. Every
//! address lives inside network namespaces the lab created; nothing leaves
//! the machine. Ctrl-C (or SIGTERM) stops after the current step and tears
//! everything down.
//!
//! ```sh
//! cargo run -p k8s-ovs-tests --bin demo            # the whole tour
//! cargo run -p k8s-ovs-tests --bin demo -- --short # the tenancy steps only (CI)
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use lab::cluster::{cni, ctl, start_controller, start_kube_api, Agent, CniCall, Daemon, NAME, PREFIX};
use lab::kube_api::KubeApi;
use lab::kube_proxy::{KubeProxy, ProxyConfig};
use lab::services;
use lab::{traffic, Lab, Netns};

#[derive(Debug, Parser)]
#[command(
    name = "demo",
    about = "k8s-ovs on a two-node lab: pods, reachability, join / isolate / global live"
)]
struct Cli {
    /// CI mode: the tenancy steps only (no bandwidth part, no node inspection).
    #[arg(long)]
    short: bool,
    /// After the tour, keep the cluster up (printing how to look around) until Ctrl-C.
    #[arg(long)]
    stay: bool,
    /// Use the binaries already in target/ instead of `cargo build`ing them first.
    #[arg(long)]
    no_build: bool,
}

/// Set by the signal thread; checked between steps and before each probe
/// round, so an interrupt unwinds through the normal drop path (which ends
/// every daemon by PID and removes every namespace).
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

const NAMESPACES: [&str; 3] = ["red", "blue", "green"];

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = catch_signals() {
        eprintln!("demo: {e:#}");
        return ExitCode::FAILURE;
    }
    println!(
        "k8s-ovs demo: two nodes, each with its own Open vSwitch, in network namespaces on this machine"
    );
    println!("(no packet leaves the machine; Ctrl-C tears everything down)");
    let built = if cli.no_build { Ok(()) } else { build_binaries() };
    // The demo's own time, without the build (which depends on the cache).
    let started = Instant::now();
    let result = built.and_then(|()| demo(&cli));
    let secs = started.elapsed().as_secs_f64();
    match result {
        _ if INTERRUPTED.load(Ordering::SeqCst) => {
            println!("\ninterrupted: everything torn down ({secs:.1} s)");
            ExitCode::from(130)
        }
        Ok(()) => {
            println!("\ndemo finished in {secs:.1} s; everything torn down");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("\ndemo failed after {secs:.1} s (everything torn down): {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Turns SIGINT and SIGTERM into the INTERRUPTED flag, on a thread of its
/// own. tokio's handler is safe code and, unlike blocking the signals for
/// `sigwait`, is not inherited by the daemons the lab spawns (a blocked mask
/// survives exec, and daemons that ignore SIGTERM stall the teardown).
fn catch_signals() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("signal runtime")?;
    let (mut int, mut term) = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        Ok::<_, std::io::Error>((signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?))
    })?;
    std::thread::spawn(move || {
        rt.block_on(async move {
            loop {
                let sig = tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                };
                if !INTERRUPTED.swap(true, Ordering::SeqCst) {
                    eprintln!("\n{sig}: stopping after this step, then tearing everything down ...");
                }
            }
        })
    });
    Ok(())
}

fn checkpoint() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// `cargo build`s the daemons and the CNI binary the demo runs, in the
/// profile of this executable, so `cargo run --bin demo` is the only command
/// a user needs (cargo itself only builds the demo's own crate).
fn build_binaries() -> Result<()> {
    let t = step("building k8s-ovs, k8s-ovs-agent, k8s-ovs-controller, k8s-ovs-ctl (cargo build)");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "--bins", "--manifest-path", manifest]);
    cmd.args(["-p", "k8s-ovs-cni", "-p", "k8s-ovs-agent", "-p", "k8s-ovs-controller"]);
    let exe = std::env::current_exe().context("own path")?;
    if exe.parent().is_some_and(|d| d.ends_with("release")) {
        cmd.arg("--release");
    }
    let status = cmd.status().context("run cargo (or pass --no-build)")?;
    ensure!(status.success(), "cargo build failed ({status})");
    done(t);
    Ok(())
}

/// Prints a progress line without its newline; `done` ends it.
fn step(what: &str) -> Instant {
    print!("  {what} ... ");
    let _ = std::io::stdout().flush();
    Instant::now()
}

fn done(t: Instant) {
    println!("done ({:.1} s)", t.elapsed().as_secs_f64());
}

fn heading(text: &str) {
    println!("\n== {text}");
}

/// A pod of the demo, created through the CNI binary.
struct DemoPod {
    name: String,
    namespace: String,
    node: usize,
    netns: Netns,
    ip: String,
}

/// Everything the demo started. Fields drop in declaration order: the
/// daemons stop before the lab removes their namespaces and OVS instances.
struct Cluster {
    _servers: Servers,
    _proxy: KubeProxy,
    _agents: Vec<Agent>,
    _controller: Daemon,
    _api: KubeApi,
    pods: Vec<DemoPod>,
    lab: Lab,
}

/// Servers started in pods (dnsmasq, lab-echo), ended by PID on drop.
struct Servers(Vec<std::process::Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// red/web's ClusterIP; its endpoint is red2 (TCP 8080).
const WEB_IP: &str = "10.96.5.5";
const WEB_NAME: &str = "web.red.svc.cluster.local";

fn demo(cli: &Cli) -> Result<()> {
    let cluster = start_cluster()?;
    let result = tour(cli, &cluster);
    heading("tearing down");
    let t = step("agents, controller, API server, OVS, etcd, namespaces");
    drop(cluster);
    done(t);
    result
}

fn start_cluster() -> Result<Cluster> {
    heading("starting the cluster");
    let t = step("lab: fabric, control host with etcd, nodes n1 and n2 with OVS");
    let mut lab = Lab::start(2)?;
    done(t);
    println!(
        "  lab {}: etcd at {}, n1 {}, n2 {}",
        lab.name,
        lab.etcd_endpoint(),
        lab.node(1).ip,
        lab.node(2).ip
    );
    println!("  (look around while it runs, from another shell: ip netns exec {} etcdctl --endpoints {} get --prefix {PREFIX})", lab.ctl.name, lab.etcd_endpoint());
    checkpoint()?;

    let t = step("kube API server with nodes n1, n2 and namespaces red, blue, green, kube-system");
    let api = start_kube_api(&lab)?;
    for i in 1..=2 {
        api.create_node(&format!("n{i}"), &lab.node(i).ip)?;
    }
    for ns in NAMESPACES.iter().chain(&["kube-system"]) {
        api.create_namespace(ns)?;
    }
    done(t);
    let url = api.url();

    let t = step("k8s-ovs-controller on the control host");
    let controller = start_controller(&lab, &url, "demo", &[])?;
    done(t);
    let mut agents = Vec::new();
    for i in 1..=2 {
        checkpoint()?;
        let t = step(&format!("k8s-ovs-agent on n{i}"));
        agents.push(Agent::start(&lab, i, &["--kube-url", &url])?);
        done(t);
    }

    heading("pods, created through the CNI binary (CNI_COMMAND=ADD, as kubelet does)");
    let mut pods = Vec::new();
    for ns in NAMESPACES {
        for node in 1..=2 {
            checkpoint()?;
            let name = format!("{ns}{node}");
            let netns = lab.pod_netns(&name)?;
            let call = CniCall::pod(&format!("cid-{name}"), &netns, ns, &name);
            let t = Instant::now();
            let out = cni(&lab, node, "ADD", &call)?;
            ensure!(out.code == Some(0), "CNI ADD {name}: {} {}", out.stdout, out.stderr);
            let ip = out.stdout["ips"][0]["address"].as_str().and_then(|a| a.split('/').next());
            let ip = ip.with_context(|| format!("CNI ADD {name}: no address in {}", out.stdout))?.to_string();
            println!(
                "  {name:<7} namespace {ns:<6} node n{node}  {ip:<12} ({:.0} ms)",
                t.elapsed().as_secs_f64() * 1e3
            );
            pods.push(DemoPod { name, namespace: ns.into(), node, netns, ip });
        }
    }
    heading("services as a cluster runs them: kube-proxy's own rules, cluster DNS behind a ClusterIP");
    checkpoint()?;
    let t = step("kube-proxy on n1 and n2 (the lab's stand-in: the iptables rules kube-proxy writes)");
    let nodes = (1..=2).map(|i| (lab.node(i).netns.clone(), format!("n{i}"))).collect();
    let cidr = ProxyConfig { cluster_cidr: Some(lab::cluster::NETWORK.into()), masquerade_all: false };
    let proxy = KubeProxy::start(api.store(), nodes, cidr)?;
    done(t);
    let t = step(
        "kube-system/coredns on n2 (dnsmasq) behind kube-dns 10.96.0.10; red/web 10.96.5.5:80 -> red2:8080",
    );
    let dns = lab::cluster::add_pod(&mut lab, 2, "kube-system", "coredns")?;
    let mut servers = Servers(vec![services::spawn_dns(&dns.netns, &dns.ip, &[(WEB_NAME, WEB_IP)])?]);
    let red2 = pods.iter().find(|p| p.name == "red2").context("red2")?;
    servers.0.push(services::spawn_echo(&red2.netns, &red2.ip, "tcp", 8080, "red2")?);
    let dns_ports = [("dns", "UDP", 53, 53)];
    services::apply_service(&api, ("kube-system", "kube-dns"), services::KUBE_DNS_IP, &dns_ports, &[], true)?;
    services::apply_endpoints(&api, ("kube-system", "kube-dns"), &dns_ports, &[(&dns.ip, "n2", "coredns")])?;
    let web_ports = [("http", "TCP", 80, 8080)];
    services::apply_service(&api, ("red", "web"), WEB_IP, &web_ports, &[], true)?;
    services::apply_endpoints(&api, ("red", "web"), &web_ports, &[(&red2.ip, "n2", "red2")])?;
    proxy.wait_synced(Duration::from_secs(10))?;
    done(t);
    Ok(Cluster {
        _servers: servers,
        _proxy: proxy,
        _agents: agents,
        _controller: controller,
        _api: api,
        pods,
        lab,
    })
}

/// A name resolved from red1 through kube-dns, red's own service reached
/// by that name, and blue refused it.
fn services_tour(c: &Cluster) -> Result<()> {
    heading("DNS and a Service: through kube-proxy's DNAT, isolation at the ClusterIP and at the endpoint");
    for name in ["red1", "blue1"] {
        checkpoint()?;
        let p = pod(c, name)?;
        services::use_cluster_dns(&p.netns)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let got = loop {
            match services::resolve(&p.netns, WEB_NAME)? {
                Some(a) => break a,
                None if Instant::now() < deadline => continue,
                None => bail!("{name} could not resolve {WEB_NAME} through {}", services::KUBE_DNS_IP),
            }
        };
        println!(
            "  {name:<6} $ getent ahostsv4 {WEB_NAME}  -> {got}   (dnsmasq in kube-system/coredns on n2, via kube-dns {})",
            services::KUBE_DNS_IP
        );
        ensure!(got == WEB_IP, "{name} resolved {WEB_NAME} to {got}");
    }
    let red1 = pod(c, "red1")?;
    let answer = services::wait_answer(&red1.netns, "tcp", WEB_IP, 80, Duration::from_secs(10))?
        .context("red1 got no answer from red/web")?;
    println!(
        "  red1   -> {WEB_IP}:80 (red/web): answered \"{answer}\"  (the endpoint red2 sees red1 itself)"
    );
    let blue1 = pod(c, "blue1")?;
    let refused =
        (0..3).all(|_| services::ask(&blue1.netns, "tcp", WEB_IP, 80).map(|a| a.is_none()).unwrap_or(false));
    ensure!(refused, "blue1 reached red/web");
    println!(
        "  blue1  -> {WEB_IP}:80 (red/web): refused (blue's VNI is not red's: dropped in table 35 SERVICE_VNI)"
    );
    Ok(())
}

fn tour(cli: &Cli, c: &Cluster) -> Result<()> {
    heading("namespaces and their VNIs, as the controller allocated them (k8s-ovs-ctl list)");
    print_ctl_list(c)?;
    show_matrix(c, "every namespace on its own VNI: pods reach only their own namespace")?;
    heading("why not? k8s-ovs-ctl trace: etcd's VNIs beside each node's ofproto/trace");
    explain(c, "red1", "blue2", false)?;
    services_tour(c)?;

    heading("the operator's way: edit the record in etcd (K8S-OVS's etcdctl recipes)");
    operator_edit(c, "red", vni(c, "red")?, "join", "blue", ("red1", "blue2", true))?;
    show_matrix(c, "red joined blue: they share blue's VNI")?;
    explain(c, "red1", "blue2", true)?;
    operator_edit(c, "red", vni(c, "red")?, "isolate", "", ("red1", "blue2", false))?;
    show_matrix(c, "red isolated: a VNI of its own again")?;
    operator_edit(c, "green", vni(c, "green")?, "global", "", ("green1", "red2", true))?;
    show_matrix(c, "green global (VNI 0): reaches, and is reached by, everybody")?;

    heading("the friendly way: k8s-ovs-ctl (writes the same edit, --wait returns once applied)");
    ctl_action(c, &["join", "blue", "--to", "red"], ("blue1", "red2", true))?;
    show_matrix(c, "blue joined red")?;
    ctl_action(c, &["isolate", "blue"], ("blue1", "red2", false))?;
    ctl_action(c, &["isolate", "green"], ("green1", "red2", false))?;
    show_matrix(c, "blue and green isolated: back to one VNI per namespace")?;
    print_ctl_list(c)?;

    if !cli.short {
        bandwidth(c)?;
        inspect_node(c)?;
    }
    if cli.stay {
        stay_up(c)?;
    }
    Ok(())
}

/// Prints how to look at the running cluster, then waits for Ctrl-C. The
/// interrupt is the expected end here, so the flag is cleared again and the
/// demo ends as a success.
fn stay_up(c: &Cluster) -> Result<()> {
    heading("the cluster stays up: look around from another shell, Ctrl-C here tears it down");
    println!(
        "  etcd:     ip netns exec {} etcdctl --endpoints {} get --prefix {PREFIX}",
        c.lab.ctl.name,
        c.lab.etcd_endpoint()
    );
    println!(
        "  ctl:      ip netns exec {} {} --etcd-endpoints {} --etcd-insecure list",
        c.lab.ctl.name,
        lab::cluster::bin("k8s-ovs-ctl")?.display(),
        c.lab.etcd_endpoint()
    );
    for node in &c.lab.nodes {
        println!(
            "  n{} flows: OVS_RUNDIR={} ovs-ofctl -O OpenFlow15 dump-flows br0",
            node.index,
            node.ovs.rundir().display()
        );
    }
    for p in &c.pods {
        println!(
            "  {:<7} ip netns exec {} ping {}",
            p.name,
            p.netns.name,
            c.pods
                .iter()
                .find(|q| q.node != p.node && q.namespace == p.namespace)
                .map_or("", |q| q.ip.as_str())
        );
    }
    while !INTERRUPTED.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    INTERRUPTED.store(false, Ordering::SeqCst);
    Ok(())
}

// ---------------------------------------------------------------------------
// BANDWIDTH (placeholder): shaping is being built in the agent right now.
// When it lands, this is the place for the iperf3 part of the tour: create a
// pod with the `kubernetes.io/ingress-bandwidth` / `egress-bandwidth` limits
// (through the CNI runtimeConfig, as kubelet passes them), then measure both
// directions with `lab::traffic::iperf3` against an unshaped pod and print
// "set 10 Mbit/s, measured 9.6 Mbit/s" lines. Keep it out of `--short` (the
// measurement takes several seconds per direction).
// ---------------------------------------------------------------------------
/// The pod object an operator would edit (`kubectl annotate`), as the test
/// apiserver serves it to the agents' pod watch.
fn pod_object(p: &DemoPod, annotations: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": p.name, "namespace": p.namespace, "annotations": annotations},
        "spec": {"nodeName": format!("n{}", p.node), "containers": [{"name": "app", "image": "demo"}]}})
}

/// Waits until the pod's own eth0 has (or no longer has) the egress tbf
/// the agent installs on the userspace datapath.
fn wait_shaping(p: &DemoPod, present: bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.netns.exec(&["tc", "qdisc", "show", "dev", "eth0"])?.contains("tbf") != present {
        checkpoint()?;
        ensure!(Instant::now() < deadline, "the agent did not reshape {} within 10 s", p.name);
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn bandwidth(c: &Cluster) -> Result<()> {
    checkpoint()?;
    heading("bandwidth shaping, changed live on a running pod (iperf3, 3 s, first second omitted)");
    let find = |n: &str| c.pods.iter().find(|p| p.name == n).context("demo pod");
    let (shaped, peer) = (find("red1")?, find("red2")?);
    let rate = |server: &DemoPod, client: &DemoPod| {
        traffic::iperf3(&server.netns, &server.ip, &client.netns, 3, false)
    };
    println!("  {} -> {} unshaped: {:.1} Mbit/s", peer.name, shaped.name, rate(shaped, peer)?);
    println!(
        "  $ kubectl annotate pod {} kubernetes.io/ingress-bandwidth=10M kubernetes.io/egress-bandwidth=5M",
        shaped.name
    );
    c._api.apply(pod_object(
        shaped,
        serde_json::json!({"kubernetes.io/ingress-bandwidth": "10M", "kubernetes.io/egress-bandwidth": "5M"}),
    ))?;
    wait_shaping(shaped, true)?;
    println!("  to {} (limit 10M): {:.2} Mbit/s", shaped.name, rate(shaped, peer)?);
    println!("  from {} (limit 5M): {:.2} Mbit/s", shaped.name, rate(peer, shaped)?);
    println!(
        "  $ kubectl annotate pod {} kubernetes.io/ingress-bandwidth- kubernetes.io/egress-bandwidth-",
        shaped.name
    );
    c._api.apply(pod_object(shaped, serde_json::json!({})))?;
    wait_shaping(shaped, false)?;
    println!(
        "  to {} again unshaped: {:.1} Mbit/s (same pod, never recreated)",
        shaped.name,
        rate(shaped, peer)?
    );
    Ok(())
}

/// What an operator looks at on a node: the pipeline's flows per table.
fn inspect_node(c: &Cluster) -> Result<()> {
    checkpoint()?;
    heading("inside node n1: the OpenFlow pipeline the agent programmed (ovs-ofctl dump-flows br0)");
    let flows = c.lab.node(1).ovs.ofctl("dump-flows", "br0", &["-O", "OpenFlow15", "--no-stats"])?;
    let mut per_table: BTreeMap<u32, usize> = BTreeMap::new();
    for line in flows.lines() {
        if let Some(t) = table_of(line) {
            *per_table.entry(t).or_default() += 1;
        }
    }
    let summary: Vec<String> = per_table.iter().map(|(t, n)| format!("table {t}: {n}")).collect();
    println!("  {} flows; {}", per_table.values().sum::<usize>(), summary.join(", "));
    println!("  (docs/pipeline.md explains every table; docs/operations.md shows ofproto/trace)");
    Ok(())
}

/// The table number of a `dump-flows` line (`table=N,` or none for table 0).
fn table_of(line: &str) -> Option<u32> {
    let line = line.trim();
    if !(line.contains("actions=") || line.contains("actions:")) {
        return None;
    }
    match line.split_once("table=") {
        Some((_, rest)) => rest.split(|ch: char| !ch.is_ascii_digit()).next()?.parse().ok(),
        None => Some(0),
    }
}

fn netns_key(ns: &str) -> String {
    format!("{PREFIX}/{NAME}/netnamespaces/{ns}")
}

/// Namespace `ns`'s record (waits for the controller to create it).
fn record(c: &Cluster, ns: &str) -> Result<serde_json::Value> {
    let raw = record_text(c, ns)?;
    serde_json::from_str(&raw).with_context(|| format!("record of {ns}: {raw}"))
}

/// The record's value exactly as etcd holds it (K8S-OVS's field order).
fn record_text(c: &Cluster, ns: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = c.lab.etcdctl(&["get", "--print-value-only", &netns_key(ns)])?;
        if !v.trim().is_empty() {
            return Ok(v.trim().to_string());
        }
        checkpoint()?;
        if Instant::now() > deadline {
            bail!("the controller made no record for namespace {ns}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn vni(c: &Cluster, ns: &str) -> Result<u32> {
    let id = record(c, ns)?["NetID"].as_u64().with_context(|| format!("NetID of {ns}"))?;
    u32::try_from(id).context("NetID out of range")
}

/// `etcdctl put` of `ns`'s record with an action, printed as the operator
/// types it; then waits for the controller to apply it (Action cleared) and
/// for `probe` (from, to, reachable) to hold, and says how long each took.
fn operator_edit(
    c: &Cluster,
    ns: &str,
    current_vni: u32,
    action: &str,
    other: &str,
    probe: (&str, &str, bool),
) -> Result<()> {
    checkpoint()?;
    // K8S-OVS's field order, as operators type it.
    let value =
        format!(r#"{{"NetName":"{ns}","NetID":{current_vni},"Action":"{action}","Namespace":"{other}"}}"#);
    let key = netns_key(ns);
    println!("\n  $ etcdctl --endpoints {} put {key} '{value}'", c.lab.etcd_endpoint());
    let t = Instant::now();
    c.lab.etcdctl(&["put", &key, &value])?;
    let applied = loop {
        let raw = record_text(c, ns)?;
        let r: serde_json::Value =
            serde_json::from_str(&raw).with_context(|| format!("record of {ns}: {raw}"))?;
        if r["Action"] == "" {
            break raw;
        }
        checkpoint()?;
        if t.elapsed() > Duration::from_secs(15) {
            bail!("the controller did not apply {action} on {ns}: {r}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    println!("  controller applied it after {:.0} ms: {}", t.elapsed().as_secs_f64() * 1e3, applied);
    wait_for_path(c, t, probe, "the put")
}

/// `k8s-ovs-ctl --wait <args>`, printed as the operator types it.
fn ctl_action(c: &Cluster, args: &[&str], probe: (&str, &str, bool)) -> Result<()> {
    checkpoint()?;
    println!(
        "\n  $ k8s-ovs-ctl --etcd-endpoints {} --etcd-insecure --wait {}",
        c.lab.etcd_endpoint(),
        args.join(" ")
    );
    let t = Instant::now();
    let mut argv = vec!["--wait"];
    argv.extend_from_slice(args);
    let (code, out, err) = ctl(&c.lab, &argv)?;
    ensure!(code == Some(0), "k8s-ovs-ctl {}: {out}{err}", args.join(" "));
    println!("  {} ({:.0} ms)", out.trim(), t.elapsed().as_secs_f64() * 1e3);
    wait_for_path(c, t, probe, "the command")
}

/// Probes `from` -> `to` until its reachability is `want`; prints when that
/// was first seen after `since`. The agents apply an edit within a second;
/// the 10 s bound only turns a broken run into a clear error.
fn wait_for_path(
    c: &Cluster,
    since: Instant,
    (from, to, want): (&str, &str, bool),
    after: &str,
) -> Result<()> {
    let (a, b) = (pod(c, from)?, pod(c, to)?);
    let deadline = Duration::from_secs(10);
    match traffic::time_until(&a.netns, &b.ip, want, since, deadline)? {
        Some(d) => {
            let verb = if want { "reaches" } else { "no longer reaches" };
            println!("  {from} {verb} {to} {:.0} ms after {after}", d.as_secs_f64() * 1e3);
            Ok(())
        }
        None if INTERRUPTED.load(Ordering::SeqCst) => bail!("interrupted"),
        None => bail!("{from} -> {to}: reachable={want} not seen within {deadline:?}"),
    }
}

/// `k8s-ovs-ctl trace` of a pair, printed; its verdict must be `allowed`
/// (exit 0 allowed, 3 denied; anything else fails the demo).
fn explain(c: &Cluster, from: &str, to: &str, allowed: bool) -> Result<()> {
    checkpoint()?;
    let (a, b) = (pod(c, from)?, pod(c, to)?);
    let (src, dst) = (format!("{}/{}", a.namespace, a.name), format!("{}/{}", b.namespace, b.name));
    println!(
        "\n  $ k8s-ovs-ctl --etcd-endpoints {} --etcd-insecure --debug-token-file {} trace {src} {dst}",
        c.lab.etcd_endpoint(),
        c.lab.debug_token_file().display()
    );
    let (code, out, err) = ctl(&c.lab, &["trace", &src, &dst])?;
    for line in out.lines() {
        println!("  {line}");
    }
    let want = if allowed { 0 } else { 3 };
    ensure!(code == Some(want), "k8s-ovs-ctl trace {src} {dst}: exit {code:?}, expected {want}: {err}");
    Ok(())
}

fn pod<'a>(c: &'a Cluster, name: &str) -> Result<&'a DemoPod> {
    c.pods.iter().find(|p| p.name == name).with_context(|| format!("no pod {name}"))
}

fn print_ctl_list(c: &Cluster) -> Result<()> {
    checkpoint()?;
    let (code, out, err) = ctl(&c.lab, &["list"])?;
    ensure!(code == Some(0), "k8s-ovs-ctl list: {out}{err}");
    println!("  $ k8s-ovs-ctl --etcd-endpoints {} --etcd-insecure list", c.lab.etcd_endpoint());
    for line in out.lines() {
        println!("  {line}");
    }
    Ok(())
}

/// Pings every ordered pair of pods (3 pings each, all pairs at once) and
/// prints the matrix next to the VNIs etcd holds now. Fails if any cell
/// differs from what the VNIs say.
fn show_matrix(c: &Cluster, title: &str) -> Result<()> {
    checkpoint()?;
    let mut vnis = BTreeMap::new();
    for ns in NAMESPACES {
        vnis.insert(ns, vni(c, ns)?);
    }
    let t = Instant::now();
    let n = c.pods.len();
    let mut reach = vec![vec![None; n]; n];
    std::thread::scope(|s| -> Result<()> {
        let mut handles = Vec::new();
        for (i, a) in c.pods.iter().enumerate() {
            for (j, b) in c.pods.iter().enumerate().filter(|(j, _)| *j != i) {
                // Three pings: the first packet to a new tunnel neighbour may
                // be dropped while OVS resolves its MAC.
                handles.push((i, j, s.spawn(|| traffic::ping_count(&a.netns, &b.ip, 3, 1))));
            }
        }
        for (i, j, h) in handles {
            let replies = h.join().map_err(|_| anyhow::anyhow!("ping thread panicked"))??;
            reach[i][j] = Some(replies > 0);
        }
        Ok(())
    })?;
    checkpoint()?;
    let rows: Vec<Row> = c
        .pods
        .iter()
        .map(|p| Row { pod: p.name.clone(), node: p.node, vni: vnis[p.namespace.as_str()] })
        .collect();
    let mut matrix = Matrix { rows, reach };
    // A pod that failed to reach a peer moments ago (the matrix before an
    // edit) holds an unresolved ARP entry for it and may need the kernel's
    // next ARP retry (up to ~3 s) once the edit allows the pair. Such cells
    // are probed again for a while; a pair that should be apart is never
    // given a second chance.
    let cells: Vec<(usize, usize)> =
        matrix.mismatched_cells().into_iter().filter(|&(i, j)| matrix.reach[i][j] == Some(false)).collect();
    let pairs: Vec<(&Netns, &str)> =
        cells.iter().map(|&(i, j)| (&c.pods[i].netns, c.pods[j].ip.as_str())).collect();
    let late = traffic::retry_reach(&pairs, Duration::from_secs(5))?;
    println!(
        "\n  reachability: {title}  (ping from row to column, {} pairs in {:.1} s)",
        n * (n - 1),
        t.elapsed().as_secs_f64()
    );
    for (&(i, j), d) in cells.iter().zip(late) {
        if let Some(d) = d {
            matrix.reach[i][j] = Some(true);
            println!(
                "  ({} -> {} answered {:.1} s later: the pod's own ARP retry for a peer it could not reach before)",
                c.pods[i].name,
                c.pods[j].name,
                d.as_secs_f64()
            );
        }
    }
    print!("{}", matrix.render());
    let wrong = matrix.mismatches();
    ensure!(wrong.is_empty(), "reachability differs from the VNIs in etcd: {}", wrong.join(", "));
    Ok(())
}

/// One row (and column) of the matrix.
#[derive(Debug, Clone)]
struct Row {
    pod: String,
    node: usize,
    vni: u32,
}

/// Measured reachability between pods; `reach[i][j]` is row i -> column j
/// (None on the diagonal).
#[derive(Debug, Clone)]
struct Matrix {
    rows: Vec<Row>,
    reach: Vec<Vec<Option<bool>>>,
}

/// The multi-tenant policy: same VNI, or either side global (VNI 0).
fn allowed(a: u32, b: u32) -> bool {
    a == b || a == 0 || b == 0
}

impl Matrix {
    /// A fixed-width table: `ok` answered, `--` no answer, `!` marks a cell
    /// that differs from the policy.
    fn render(&self) -> String {
        let w = self.rows.iter().map(|r| r.pod.len()).max().unwrap_or(0).max(4) + 2;
        let mut s = format!("  {:<w$} {:>4} {:>9} ", "from\\to", "node", "VNI");
        for r in &self.rows {
            s.push_str(&format!("{:>w$}", r.pod));
        }
        s.push('\n');
        for (i, r) in self.rows.iter().enumerate() {
            let vni = if r.vni == 0 { "0 global".to_string() } else { r.vni.to_string() };
            s.push_str(&format!("  {:<w$} {:>4} {:>9} ", r.pod, format!("n{}", r.node), vni));
            for j in 0..self.rows.len() {
                let cell = match self.reach[i][j] {
                    None => ".".to_string(),
                    Some(got) => {
                        let mark = if got != allowed(r.vni, self.rows[j].vni) { "!" } else { "" };
                        format!("{}{mark}", if got { "ok" } else { "--" })
                    }
                };
                s.push_str(&format!("{cell:>w$}"));
            }
            s.push('\n');
        }
        s
    }

    /// The pairs whose measured reachability differs from the policy.
    /// (row, column) of every cell that differs from the policy.
    fn mismatched_cells(&self) -> Vec<(usize, usize)> {
        let mut v = Vec::new();
        for (i, a) in self.rows.iter().enumerate() {
            for (j, b) in self.rows.iter().enumerate() {
                if self.reach[i][j].is_some_and(|got| got != allowed(a.vni, b.vni)) {
                    v.push((i, j));
                }
            }
        }
        v
    }

    fn mismatches(&self) -> Vec<String> {
        self.mismatched_cells()
            .into_iter()
            .map(|(i, j)| {
                format!(
                    "{} -> {} measured {}",
                    self.rows[i].pod,
                    self.rows[j].pod,
                    self.reach[i][j] == Some(true)
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pod: &str, node: usize, vni: u32) -> Row {
        Row { pod: pod.into(), node, vni }
    }

    #[test]
    fn policy_is_same_vni_or_global() {
        assert!(allowed(11, 11));
        assert!(!allowed(11, 12));
        assert!(allowed(0, 12));
        assert!(allowed(12, 0));
    }

    #[test]
    fn matrix_renders_cells_and_marks_policy_violations() {
        let m = Matrix {
            rows: vec![row("red1", 1, 11), row("blue2", 2, 12), row("green1", 1, 0)],
            reach: vec![
                vec![None, Some(true), Some(true)],
                vec![Some(false), None, Some(true)],
                vec![Some(true), Some(true), None],
            ],
        };
        let text = m.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].contains("from\\to") && lines[0].ends_with("green1"), "{text}");
        let cells = |l: &str| l.split_whitespace().skip(3).map(str::to_string).collect::<Vec<_>>();
        assert_eq!(cells(lines[1]), [".", "ok!", "ok"], "{text}");
        assert_eq!(cells(lines[2]), ["--", ".", "ok"], "{text}");
        assert!(lines[3].contains("0 global"), "{text}");
        assert_eq!(m.mismatches(), ["red1 -> blue2 measured true"]);
    }

    #[test]
    fn table_of_reads_dump_flows_lines() {
        assert_eq!(table_of(" cookie=0x1, table=30, priority=100,ip actions=goto_table:40"), Some(30));
        assert_eq!(table_of(" cookie=0x1, priority=0 actions=drop"), Some(0));
        assert_eq!(table_of("NXST_FLOW reply (xid=0x4):"), None);
    }
}
