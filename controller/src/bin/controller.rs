//! `k8s-ovs-controller`: allocates VNIs and node subnets and applies
//! operators' actions; run two for availability (one leads).

use anyhow::{Context, Result};
use clap::Parser;
use controller::args::{init_tracing, EtcdArgs};
use controller::run::{run, Settings};
use etcd_schema::{NetworkConfig, PluginName, DEFAULT_NETWORK_NAME};
use ipnetwork::Ipv4Network;

#[derive(Debug, Parser)]
#[command(name = "k8s-ovs-controller", version, about)]
struct Cli {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Kubeconfig file; default: in-cluster or $KUBECONFIG (kube's inference).
    #[arg(long, env = "KUBECONFIG", conflicts_with = "kube_url")]
    kubeconfig: Option<std::path::PathBuf>,
    /// Talk to this API server URL without credentials (tests, kubectl proxy).
    #[arg(long)]
    kube_url: Option<String>,
    /// Run without Kubernetes: only actions and Assign requests are served.
    #[arg(long, conflicts_with_all = ["kubeconfig", "kube_url"])]
    no_kube: bool,
    /// Namespaces that get VNI 0 besides kube-system (comma separated).
    #[arg(long, value_delimiter = ',')]
    admin_namespaces: Vec<String>,
    /// Name in the leader key (default: hostname-pid).
    #[arg(long)]
    id: Option<String>,
    /// Leader lease TTL in seconds: a crashed leader is replaced within it (min 3).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i64).range(3..))]
    lease_ttl: i64,
    /// Seconds a node that reports no InternalIP (a kubelet restarting, an
    /// address briefly gone) keeps its subnet before it is released.
    #[arg(long, env = "K8S_OVS_SUBNET_GRACE_SECS", default_value_t = 300)]
    subnet_grace_secs: u64,
    /// Pod network; when given and etcd has no config yet, the controller writes it.
    #[arg(long)]
    network: Option<Ipv4Network>,
    #[arg(long, default_value_t = 10)]
    host_subnet_length: u8,
    #[arg(long, default_value = "10.96.0.0/12")]
    service_network: Ipv4Network,
    #[arg(long, default_value = DEFAULT_NETWORK_NAME)]
    network_name: String,
    /// k8s-ovs-multitenant or k8s-ovs-subnet.
    #[arg(long, default_value = "k8s-ovs-multitenant", value_parser = parse_plugin)]
    plugin: PluginName,
}

fn parse_plugin(s: &str) -> Result<PluginName, String> {
    PluginName::parse(s).ok_or_else(|| format!("{s}: expected k8s-ovs-multitenant or k8s-ovs-subnet"))
}

async fn kube_client(cli: &Cli) -> Result<Option<kube::Client>> {
    if cli.no_kube {
        return Ok(None);
    }
    let config = if let Some(url) = &cli.kube_url {
        kube::Config::new(url.parse().context("--kube-url")?)
    } else if let Some(path) = &cli.kubeconfig {
        let kc =
            kube::config::Kubeconfig::read_from(path).with_context(|| format!("read {}", path.display()))?;
        kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.context("kubeconfig")?
    } else {
        kube::Config::infer().await.context("no kube config (in-cluster or ~/.kube/config)")?
    };
    Ok(Some(kube::Client::try_from(config).context("kube client")?))
}

#[tokio::main]
async fn main() -> Result<()> {
    init_tracing();
    let cli = Cli::parse();
    let bootstrap = match cli.network {
        Some(network) => {
            let raw = NetworkConfig {
                name: cli.network_name.clone(),
                network,
                host_subnet_length: cli.host_subnet_length,
                service_network: cli.service_network,
                plugin: cli.plugin,
            };
            // Validate the flags exactly as a record read from etcd would be.
            Some(etcd_schema::parse_network_config("--network flags", &raw.to_json())?)
        }
        None => None,
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let settings = Settings {
        endpoints: cli.etcd.endpoints.clone(),
        etcd_tls: cli.etcd.tls()?,
        prefix: cli.etcd.prefix.clone(),
        bootstrap,
        admin_namespaces: cli.admin_namespaces.clone(),
        id: cli.id.clone().unwrap_or_else(|| format!("{}-{}", host.trim(), std::process::id())),
        lease_ttl_secs: cli.lease_ttl,
        subnet_grace: std::time::Duration::from_secs(cli.subnet_grace_secs),
    };
    let kube = kube_client(&cli).await?;
    let shutdown = async {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                return std::future::pending().await;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: resigning"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: resigning"),
        }
    };
    run(settings, kube, shutdown).await
}
