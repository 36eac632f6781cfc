//! How the controller, `k8s-ovs-ctl` and the agent reach etcd: the same
//! endpoints, timeouts and TLS material (K8S-OVS's `--etcd-ca`,
//! `--etcd-cert`, `--etcd-key`), so a cluster's etcd settings mean the same
//! thing to every binary. The only I/O of this crate, behind the `client`
//! feature.

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

/// The TLS flags every binary takes (flatten into its clap options).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EtcdTlsArgs {
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

impl EtcdTlsArgs {
    /// The files' contents (see [`EtcdTls::from_files`]).
    pub fn load(&self) -> Result<Option<EtcdTls>, TlsFileError> {
        EtcdTls::from_files(self.etcd_ca.as_deref(), self.etcd_cert.as_deref(), self.etcd_key.as_deref())
    }
}

/// TLS material for etcd (PEM bytes).
#[derive(Debug, Clone, Default)]
pub struct EtcdTls {
    /// CA that signed the server certificate (needed for any private CA).
    pub ca: Option<Vec<u8>>,
    /// Client certificate and key, for etcd's `--client-cert-auth`.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// A TLS file that could not be read (named, so a wrong mount is obvious).
#[derive(Debug, thiserror::Error)]
#[error("read etcd TLS file {path}: {source}")]
pub struct TlsFileError {
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

impl EtcdTls {
    /// Reads the files now, so a wrong path fails at start rather than at
    /// the first reconnect. None when no file is given (plain HTTP).
    pub fn from_files(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Option<EtcdTls>, TlsFileError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| TlsFileError { path: p.display().to_string(), source })
        };
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        };
        let ca = ca.map(read).transpose()?;
        Ok((ca.is_some() || identity.is_some()).then_some(EtcdTls { ca, identity }))
    }

    fn options(&self) -> TlsOptions {
        let mut t = TlsOptions::new();
        if let Some(ca) = &self.ca {
            t = t.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &self.identity {
            t = t.identity(Identity::from_pem(cert, key));
        }
        t
    }
}

/// Connects to the endpoints (etcd-client balances over all of them).
/// `request_timeout` bounds every unary request, so a silent etcd is
/// noticed; the keep-alive notices a dead connection under a watch.
pub async fn connect(
    endpoints: &[String],
    tls: Option<&EtcdTls>,
    request_timeout: Duration,
) -> Result<Client, etcd_client::Error> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(request_timeout)
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
    if let Some(tls) = tls {
        opts = opts.with_tls(tls.options());
    }
    Client::connect(endpoints, Some(opts)).await
}
