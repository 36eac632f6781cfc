//! Command-line options shared by `k8s-ovs-controller` and `k8s-ovs-ctl`.

use anyhow::Result;
use clap::Args;
use etcd_schema::connect::{EtcdTls, EtcdTlsArgs};
use etcd_schema::DEFAULT_PREFIX;

#[derive(Debug, Clone, Args)]
pub struct EtcdArgs {
    /// etcd client URLs, comma separated.
    #[arg(
        long = "etcd-endpoints",
        visible_alias = "endpoints",
        env = "K8S_OVS_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Key prefix of the network records (K8S-OVS's by default).
    #[arg(long, env = "K8S_OVS_PREFIX", default_value = DEFAULT_PREFIX)]
    pub prefix: String,
    #[command(flatten)]
    pub tls_files: EtcdTlsArgs,
}

impl EtcdArgs {
    /// The TLS files, read now so a wrong path fails at start; refuses a
    /// plain-http endpoint off loopback unless --etcd-insecure.
    pub fn tls(&self) -> Result<Option<EtcdTls>> {
        Ok(self.tls_files.load(&self.endpoints)?)
    }

    pub async fn connect(&self) -> Result<etcd_client::Client> {
        crate::store::connect_with(&self.endpoints, self.tls()?.as_ref()).await
    }
}

/// Logs go to stderr; `RUST_LOG` filters (default: info).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
