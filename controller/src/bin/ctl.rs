//! `k8s-ovs-ctl`: the operator's commands, as the etcd edits K8S-OVS
//! operators make by hand, or (`--via kube`) as the NetNamespace objects'
//! specs a tenant-network admin writes with kubectl.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use controller::args::{init_tracing, EtcdArgs};
use controller::ctl::{self, Outcome};
use controller::ctl_kube;
use controller::dry_run;
use controller::trace;
use etcd_schema::Action;
use ovs_flows::pipeline::gateway_of;
use ovs_flows::{Ipv4Prefix, Mac};

#[derive(Debug, Parser)]
#[command(
    name = "k8s-ovs-ctl",
    version,
    about = "The k8s-ovs operator CLI: tenant actions (join, isolate, global), list, subnets, and trace"
)]
struct Cli {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Return once the controller applied the edit (or report its error).
    #[arg(long, global = true)]
    wait: bool,
    /// join, isolate, global: print what the action would change (who
    /// newly reaches whom, who no longer, how many flows each node's switch
    /// would change) and write nothing. Reads etcd and the agents.
    #[arg(long, global = true)]
    dry_run: bool,
    /// The agents' HTTP port (their --metrics-addr) on the node IPs, for
    /// trace, top and --dry-run.
    #[arg(long, global = true, default_value_t = 9190)]
    agent_port: u16,
    /// How long --wait waits.
    #[arg(long, global = true, default_value_t = 30)]
    timeout_secs: u64,
    /// The agents' debug token (the file of their --debug-token-file),
    /// sent as a bearer token to /debug/* by trace.
    #[arg(long, global = true, env = "K8S_OVS_DEBUG_TOKEN_FILE")]
    debug_token_file: Option<std::path::PathBuf>,
    /// The agents' metrics token (the file of their --metrics-token-file),
    /// sent as a bearer token to /metrics by top: without it the agents
    /// give no tenant series.
    #[arg(long, global = true, env = "K8S_OVS_METRICS_TOKEN_FILE")]
    metrics_token_file: Option<std::path::PathBuf>,
    /// Where join, isolate, global and list go: etcd (the records, with etcd
    /// credentials) or kube (the NetNamespace objects, through the Kubernetes
    /// API and its RBAC; no etcd credentials needed).
    #[arg(long, global = true, value_enum, default_value_t = Via::Etcd)]
    via: Via,
    /// Kubernetes API URL (without auth), for --via kube and for trace to
    /// follow a Service to its EndpointSlices; else the kubeconfig or
    /// in-cluster config, if any.
    #[arg(long, global = true, env = "K8S_OVS_KUBE_URL")]
    kube_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Via {
    Etcd,
    Kube,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Share OTHER's VNI: pods and services of both reach each other.
    Join {
        namespace: String,
        #[arg(long)]
        to: String,
    },
    /// Give NAMESPACE a VNI of its own.
    Isolate { namespace: String },
    /// Make NAMESPACE global (VNI 0): reaches and is reached by all.
    Global { namespace: String },
    /// Namespaces with their NetID, pending action and last error.
    List,
    /// Node subnets.
    Subnets,
    /// Whether and why two pods can talk: etcd's VNIs beside what each
    /// node's switch does with a probe packet (ofproto/trace via the agents),
    /// and the NetworkPolicy rule or isolation that decided it.
    /// Pods as namespace/name or IP. Exit code: 0 allowed, 3 denied (by
    /// tenancy or by NetworkPolicy), 4 etcd and the switch disagree.
    Trace {
        /// The sending pod: namespace/name, or its IP.
        src: String,
        /// The receiving pod (namespace/name, or its IP), or a service's
        /// CLUSTER_IP:PORT (TCP; add /udp for UDP).
        dst: String,
        /// The probe to a pod: an ICMP echo (the default), or TCP or UDP
        /// to --port.
        #[arg(long, value_parser = ["icmp", "tcp", "udp"])]
        protocol: Option<String>,
        /// The destination port of a TCP or UDP probe to a pod.
        #[arg(long)]
        port: Option<u16>,
        /// Also print each node's full ofproto/trace output.
        #[arg(long)]
        raw: bool,
    },
    /// Per-namespace traffic rates across the nodes (packets and bytes per
    /// second sent, received, sent out of the cluster, refused by
    /// isolation), from each agent's /metrics read twice an interval apart.
    Top {
        /// Seconds between the two reads (at least the agents'
        /// --traffic-stats-secs, which is how often their counters move).
        #[arg(long, default_value_t = 10)]
        interval_secs: u64,
    },
}

fn print_rows(rows: &[ctl::NamespaceRow]) {
    println!("{:<32} {:>9}  {:<20} ERROR", "NAMESPACE", "NETID", "PENDING");
    for r in rows {
        let id = r.net_id.map(|i| i.to_string()).unwrap_or_else(|| "-".into());
        println!("{:<32} {:>9}  {:<20} {}", r.namespace, id, r.pending, r.error);
    }
}

/// `--via kube`: the actions as NetNamespace objects' specs.
async fn via_kube(cli: &Cli) -> Result<()> {
    let api = ctl_kube::api(ctl_kube::client(cli.kube_url.as_deref()).await?);
    let (namespace, action) = match &cli.command {
        Command::Join { namespace, to } => (namespace, Action::Join(to.clone())),
        Command::Isolate { namespace } => (namespace, Action::Isolate),
        Command::Global { namespace } => (namespace, Action::Global),
        Command::List => {
            print_rows(&ctl_kube::list(&api).await?);
            return Ok(());
        }
        Command::Subnets | Command::Trace { .. } | Command::Top { .. } => {
            bail!("--via kube serves join, isolate, global and list; subnets, trace and top read etcd")
        }
    };
    let (uid, generation) = match ctl_kube::request(&api, namespace, &action).await? {
        ctl_kube::Asked::Already { net_id } => {
            let id = net_id.map(|i| i.to_string()).unwrap_or_else(|| "-".into());
            println!("{namespace}: already so (NetID {id})");
            return Ok(());
        }
        ctl_kube::Asked::Request { uid, generation } => (uid, generation),
    };
    if !cli.wait {
        println!("requested (NetNamespace {namespace} generation {generation})");
        return Ok(());
    }
    let timeout = Duration::from_secs(cli.timeout_secs);
    match ctl_kube::wait(&api, namespace, (&uid, generation), timeout).await? {
        Outcome::Applied(id) => println!("{namespace}: NetID {id}"),
        Outcome::Rejected(e) => bail!("rejected: {e}"),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    init_tracing();
    let cli = Cli::parse();
    // trace's probe flags are checked before anything is asked.
    let packet = match &cli.command {
        Command::Trace { protocol, port, .. } => trace::Packet::from_flags(protocol.as_deref(), *port)?,
        _ => trace::Packet::Echo,
    };
    if cli.via == Via::Kube {
        if cli.dry_run {
            bail!("--dry-run reads etcd's records and the agents: leave out --via kube");
        }
        return via_kube(&cli).await;
    }
    let token = read_token(cli.debug_token_file.as_deref(), "debug")?;
    let metrics_token = read_token(cli.metrics_token_file.as_deref(), "metrics")?;
    let agents = (cli.agent_port, token.as_deref());
    let mut client = cli.etcd.connect().await?;
    let (config, keys) = ctl::network(&mut client, &cli.etcd.prefix).await?;
    let (namespace, action) = match cli.command {
        Command::Join { namespace, to } => (namespace, Action::Join(to)),
        Command::Isolate { namespace } => (namespace, Action::Isolate),
        Command::Global { namespace } => (namespace, Action::Global),
        Command::List => {
            print_rows(&ctl::list(&mut client, &keys).await?);
            return Ok(());
        }
        Command::Subnets => {
            println!("{:<16} {:<24} {:<18} ASSIGN", "HOSTIP", "HOST", "SUBNET");
            for s in ctl::subnets(&mut client, &keys, &config).await? {
                match s {
                    Ok(s) => {
                        let net = s.subnet.map(|n| n.to_string()).unwrap_or_else(|| "(pending)".into());
                        println!("{:<16} {:<24} {:<18} {}", s.host_ip, s.host, net, s.assign);
                    }
                    Err(e) => println!("invalid: {e}"),
                }
            }
            return Ok(());
        }
        Command::Top { interval_secs } => {
            let agents = (cli.agent_port, metrics_token.as_deref());
            return top(&mut client, &keys, &config, agents, interval_secs).await;
        }
        Command::Trace { src, dst, raw, .. } => {
            let kube_url = cli.kube_url.as_deref();
            let pair = (src.as_str(), dst.as_str(), &packet);
            let code = trace(&mut client, &keys, &config, pair, agents, kube_url, raw).await?;
            std::process::exit(code);
        }
    };
    if cli.dry_run {
        return dry_run(&mut client, &keys, &config, &namespace, &action, agents).await;
    }
    let rev = ctl::request(&mut client, &keys, &namespace, action).await?;
    if !cli.wait {
        println!("requested (revision {rev})");
        return Ok(());
    }
    match ctl::wait(&mut client, &keys, &namespace, rev, Duration::from_secs(cli.timeout_secs)).await? {
        Outcome::Applied(id) => println!("{namespace}: NetID {id}"),
        Outcome::Rejected(e) => bail!("rejected: {e}"),
    }
    Ok(())
}

/// `top`: every node's agent's /metrics, twice, `interval_secs` apart.
/// The token in `path` (a `what` token file), if one is given.
fn read_token(path: Option<&std::path::Path>, what: &str) -> Result<Option<String>> {
    path.map(|p| {
        std::fs::read_to_string(p)
            .with_context(|| format!("read the {what} token file {}", p.display()))
            .map(|t| t.trim().to_string())
    })
    .transpose()
}

async fn top(
    client: &mut etcd_client::Client,
    keys: &etcd_schema::Keys,
    config: &etcd_schema::NetworkConfig,
    (agent_port, token): (u16, Option<&str>),
    interval_secs: u64,
) -> Result<()> {
    let node_ips: Vec<_> = ctl::subnets(client, keys, config)
        .await?
        .into_iter()
        .filter_map(|s| s.ok())
        .map(|s| std::net::SocketAddrV4::new(s.host_ip, agent_port))
        .collect();
    let read_all = || {
        futures::future::join_all(
            node_ips.iter().map(|a| async move { (*a, trace::http_get(*a, "/metrics", token).await) }),
        )
    };
    let first = read_all().await;
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(interval_secs.max(1))).await;
    let second = read_all().await;
    let secs = started.elapsed().as_secs_f64();
    let mut samples = Vec::new();
    for ((addr, a), (_, b)) in first.into_iter().zip(second) {
        match (a, b) {
            (Ok(a), Ok(b)) => samples.push((a, b)),
            (Err(e), _) | (_, Err(e)) => eprintln!("warning: {addr}: not counted: {e:#}"),
        }
    }
    // Each VNI's namespaces, for what isolation refused from it.
    let mut vnis: std::collections::BTreeMap<u32, Vec<String>> = Default::default();
    for row in ctl::list(client, keys).await? {
        if let Some(id) = row.net_id {
            vnis.entry(id).or_default().push(row.namespace);
        }
    }
    print!("{}", controller::top::table(&controller::top::rates(&samples, secs, &vnis)));
    println!("{} of {} nodes, over {secs:.1} s", samples.len(), node_ips.len());
    if token.is_none() {
        eprintln!("note: without --metrics-token-file the agents give no tenant series");
    }
    Ok(())
}

/// `--dry-run`: the prediction from etcd's records and the agents' pods.
async fn dry_run(
    client: &mut etcd_client::Client,
    keys: &etcd_schema::Keys,
    config: &etcd_schema::NetworkConfig,
    namespace: &str,
    action: &Action,
    (agent_port, token): (u16, Option<&str>),
) -> Result<()> {
    let ids =
        ctl::list(client, keys).await?.into_iter().filter_map(|r| Some((r.namespace, r.net_id?))).collect();
    let (p, _) = dry_run::predict(&config.plugin, namespace, action, &ids)?;
    let after = match p.new_net_id {
        true => format!("a new NetID (the controller picks it; {} or another unused)", p.net_id_after),
        false => p.net_id_after.to_string(),
    };
    println!("{namespace}: NetID {} -> {after}", p.net_id_before);
    let list = |v: &[String]| if v.is_empty() { "(none)".to_string() } else { v.join(" ") };
    println!("newly reaches: {}", list(&p.newly_reaches));
    println!("stops reaching: {}", list(&p.stops_reaching));
    let node_ips: Vec<_> = ctl::subnets(client, keys, config)
        .await?
        .into_iter()
        .filter_map(|s| s.ok())
        .map(|s| s.host_ip)
        .collect();
    let (nodes, failed) = trace::node_pods(&node_ips, agent_port, token).await;
    println!("{:<16} FLOWS", "NODE");
    for n in &nodes {
        println!(
            "{:<16} {}",
            n.node_ip,
            dry_run::flow_changes(&config.plugin, n, &ids, namespace, p.net_id_after)
        );
    }
    for f in &failed {
        println!("{f}: not asked");
    }
    println!("dry run: nothing was written");
    Ok(())
}

async fn trace(
    client: &mut etcd_client::Client,
    keys: &etcd_schema::Keys,
    config: &etcd_schema::NetworkConfig,
    (src, dst, packet): (&str, &str, &trace::Packet),
    (agent_port, token): (u16, Option<&str>),
    kube_url: Option<&str>,
    raw: bool,
) -> Result<i32> {
    let subnets: Vec<_> =
        ctl::subnets(client, keys, config).await?.into_iter().filter_map(|s| s.ok()).collect();
    let node_ips: Vec<_> = subnets.iter().map(|s| s.host_ip).collect();
    let (nodes, failed) = trace::node_pods(&node_ips, agent_port, token).await;
    for f in &failed {
        eprintln!("warning: {f}");
    }
    let (src, dst) = (trace::locate(src, &nodes)?, trace::target(dst, &nodes)?);
    packet.check_target(&dst)?;
    let vnis: std::collections::BTreeMap<String, Option<u32>> =
        ctl::list(client, keys).await?.into_iter().map(|r| (r.namespace, r.net_id)).collect();
    let vni_of = |ns: &str| vnis.get(ns).copied().flatten();
    let policy_to = |ns: &str| {
        trace::policy(&config.plugin, (&src.pod.namespace, vni_of(&src.pod.namespace)), (ns, vni_of(ns)))
    };
    let policy = policy_to(dst.namespace());
    let legs = trace::run_legs(&src, (&dst, packet), agent_port, token).await?;
    // A Service handed to the gateway goes on through kube-proxy's DNAT:
    // follow it to each endpoint (the switch decides again there).
    let mut endpoints = None;
    if let trace::Target::Service { service, protocol, port } = &dst {
        let at_gateway = trace::delivery(&legs, &dst).delivered;
        let gateway_mac =
            subnets.iter().find(|s| s.host_ip == src.node_ip).and_then(|s| s.subnet).map(|net| {
                Mac::for_ipv4(gateway_of(Ipv4Prefix::new(net.network(), net.prefix()))).to_string()
            });
        match (at_gateway, gateway_mac, service_endpoints(kube_url, service, *port, protocol).await) {
            (true, Some(mac), Ok(eps)) => {
                let agents = (agent_port, token);
                endpoints = Some(
                    trace::trace_endpoints(&src, &mac, &eps, &nodes, protocol, policy_to, agents).await?,
                );
            }
            (true, _, Err(e)) => eprintln!("note: the endpoints were not followed: {e:#}"),
            _ => {}
        }
    }
    let (text, code) = trace::report(&src, (&dst, packet), &policy, &legs, &nodes, endpoints.as_deref(), raw);
    print!("{text}");
    Ok(code)
}

/// The endpoints of the Service with `service`'s cluster IP, from the
/// Kubernetes API (the objects kube-proxy follows).
async fn service_endpoints(
    kube_url: Option<&str>,
    service: &ovs_flows::trace::TraceService,
    port: u16,
    protocol: &str,
) -> Result<Vec<(std::net::Ipv4Addr, u16)>> {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let config = match kube_url {
        Some(url) => kube::Config::new(url.parse().context("--kube-url")?),
        None => kube::Config::infer().await.context("no --kube-url and no kubeconfig")?,
    };
    let client = kube::Client::try_from(config).context("kube client")?;
    let services: kube::Api<Service> = kube::Api::namespaced(client.clone(), &service.namespace);
    let ip = service.ip.to_string();
    let list = services.list(&Default::default()).await.context("list Services")?;
    let svc = list
        .items
        .into_iter()
        .find(|s| s.spec.as_ref().and_then(|sp| sp.cluster_ip.as_deref()) == Some(ip.as_str()))
        .with_context(|| format!("no Service with cluster IP {ip} in {}", service.namespace))?;
    let name = svc.metadata.name.clone().unwrap_or_default();
    let slices: kube::Api<EndpointSlice> = kube::Api::namespaced(client, &service.namespace);
    let params = kube::api::ListParams::default().labels(&format!("kubernetes.io/service-name={name}"));
    let slices = slices.list(&params).await.context("list EndpointSlices")?;
    Ok(trace::endpoints_of(&svc, &slices.items, port, protocol))
}
