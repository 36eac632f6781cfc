//! Command-line options shared by `k8s-ovs-controller` and `k8s-ovs-ctl`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use etcd_schema::DEFAULT_PREFIX;

use crate::store::EtcdTls;

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
    /// CA bundle (PEM) that signed etcd's server certificate; turns TLS on.
    #[arg(long, env = "K8S_OVS_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's --client-cert-auth.
    #[arg(long, env = "K8S_OVS_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// Key (PEM) of --etcd-cert.
    #[arg(long, env = "K8S_OVS_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
}

impl EtcdArgs {
    /// The TLS files, read now so a wrong path fails at start.
    pub fn tls(&self) -> Result<Option<EtcdTls>> {
        let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("read {}", p.display()));
        let identity = match (&self.etcd_cert, &self.etcd_key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        };
        let ca = self.etcd_ca.as_ref().map(read).transpose()?;
        Ok((ca.is_some() || identity.is_some()).then_some(EtcdTls { ca, identity }))
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
