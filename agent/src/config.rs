//! The agent's command line (every flag also readable from the environment,
//! as a DaemonSet sets them).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;

pub use crate::ovsdb::DatapathType;

#[derive(Debug, Clone, Parser)]
#[command(name = "k8s-ovs-agent", version, about = "k8s-ovs node agent: wires pods into Open vSwitch")]
pub struct AgentConfig {
    /// This node's name (Kubernetes Node name).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// This node's underlay address: the VXLAN tunnel endpoint, and the key
    /// of its subnet record in etcd.
    #[arg(long, env = "NODE_IP")]
    pub node_ip: Ipv4Addr,
    /// etcd client URLs, comma separated.
    #[arg(long, env = "K8S_OVS_ETCD_ENDPOINTS", value_delimiter = ',', required = true)]
    pub etcd_endpoints: Vec<String>,
    #[arg(long, env = "K8S_OVS_ETCD_PREFIX", default_value = etcd_schema::DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    #[command(flatten)]
    pub etcd_tls: etcd_schema::connect::EtcdTlsArgs,
    #[arg(long, default_value = "br0")]
    pub bridge: String,
    #[arg(long, value_enum, default_value = "system")]
    pub datapath_type: DatapathType,
    /// Open vSwitch run directory: `db.sock` and `<bridge>.mgmt` live here.
    #[arg(long, env = "OVS_RUNDIR", default_value = "/var/run/openvswitch")]
    pub ovs_rundir: PathBuf,
    #[arg(long, default_value = cni::DEFAULT_AGENT_SOCKET)]
    pub cni_socket: PathBuf,
    /// IPAM store and other state that must survive restarts.
    #[arg(long, default_value = "/var/lib/k8s-ovs")]
    pub state_dir: PathBuf,
    /// MTU of the underlay; pods get 50 less (VXLAN overhead).
    #[arg(long, default_value_t = 1500)]
    pub underlay_mtu: u32,
    /// Where `/metrics` and `/healthz` are served (and `/debug/*` for
    /// `k8s-ovs-ctl trace`, to callers with the debug token).
    #[arg(long, default_value = "0.0.0.0:9190")]
    pub metrics_addr: SocketAddr,
    /// File holding the bearer token `/debug/*` requires (re-read on each
    /// request). Without it `/debug/*` is disabled (403).
    #[arg(long, env = "K8S_OVS_DEBUG_TOKEN_FILE")]
    pub debug_token_file: Option<PathBuf>,
    /// File holding the bearer token (re-read on each request) that gets
    /// the tenant series of `/metrics` (per-namespace traffic, refusals,
    /// forging pods). Other callers, every pod among them, get the node's
    /// series only; without it nobody gets the tenant series.
    #[arg(long, env = "K8S_OVS_METRICS_TOKEN_FILE")]
    pub metrics_token_file: Option<PathBuf>,
    /// Kubernetes API URL without auth (tests); otherwise kubeconfig or in-cluster config.
    #[arg(long, env = "K8S_OVS_KUBE_URL")]
    pub kube_url: Option<String>,
    /// Run without a Kubernetes API (no services).
    #[arg(long)]
    pub no_kube: bool,
    /// Every this many seconds the installed flows are read back and any
    /// drift from the desired set repaired (0: never).
    #[arg(long, default_value_t = 60)]
    pub flow_resync_secs: u64,
    /// Every this many seconds the switch's flow counters are read into the
    /// per-tenant traffic metrics (`k8s_ovs_namespace_*`, `k8s_ovs_pod_spoofed_*`;
    /// 0: never). A rate over a shorter window than this is not meaningful.
    #[arg(long, env = "K8S_OVS_TRAFFIC_STATS_SECS", default_value_t = 10)]
    pub traffic_stats_secs: u64,
    /// Install the masquerade rule for traffic leaving the cluster.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub masquerade: bool,
}

impl AgentConfig {
    pub fn ovsdb_endpoint(&self) -> String {
        format!("unix:{}", self.ovs_rundir.join("db.sock").display())
    }

    pub fn openflow_endpoint(&self) -> String {
        format!("unix:{}", self.ovs_rundir.join(format!("{}.mgmt", self.bridge)).display())
    }

    pub fn pod_mtu(&self) -> u32 {
        self.underlay_mtu.saturating_sub(50)
    }
}
