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
    /// Allow plain-http etcd endpoints that are not on loopback. Anyone on
    /// the path (a pod included) can then read and write the records:
    /// labs only.
    #[arg(long, env = "K8S_OVS_ETCD_INSECURE")]
    pub etcd_insecure: bool,
}

impl EtcdTlsArgs {
    /// The files' contents (see [`EtcdTls::from_files`]), once `endpoints`
    /// passed [`check_plaintext`]: every binary loads its TLS material here,
    /// so none can dial a plain remote etcd by accident.
    pub fn load(&self, endpoints: &[String]) -> Result<Option<EtcdTls>, EtcdArgsError> {
        let tls = EtcdTls::from_files(
            self.etcd_ca.as_deref(),
            self.etcd_cert.as_deref(),
            self.etcd_key.as_deref(),
        )?;
        if !self.etcd_insecure {
            check_plaintext(endpoints, tls.is_some())?;
        }
        Ok(tls)
    }
}

/// Why the etcd flags cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EtcdArgsError {
    #[error(transparent)]
    TlsFile(#[from] TlsFileError),
    #[error(transparent)]
    Plaintext(#[from] PlaintextEndpoint),
}

/// A plain-http endpoint off loopback, refused without `--etcd-insecure`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "refusing plain-http etcd endpoint {endpoint}: it is not on loopback, so anyone on the network \
     (a pod included) could read and write the records; use https:// with --etcd-ca/--etcd-cert/--etcd-key, \
     or pass --etcd-insecure (K8S_OVS_ETCD_INSECURE=true) to accept it"
)]
pub struct PlaintextEndpoint {
    pub endpoint: String,
}

/// Refuses the first endpoint that would be dialled without TLS (`http://`,
/// or no scheme without TLS material, as etcd-client reads it) on an
/// address that is not loopback.
pub fn check_plaintext(endpoints: &[String], tls: bool) -> Result<(), PlaintextEndpoint> {
    for ep in endpoints {
        let rest = match ep.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some(_) => continue,
            None if tls => continue,
            None => ep.as_str(),
        };
        if !is_loopback_authority(rest) {
            return Err(PlaintextEndpoint { endpoint: ep.clone() });
        }
    }
    Ok(())
}

/// `host[:port][/...]` (host a name, an IPv4 address or `[IPv6]`) names
/// this machine's loopback.
fn is_loopback_authority(rest: &str) -> bool {
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plain_http_is_refused_off_loopback_only() {
        let ok = [
            "http://127.0.0.1:2379",
            "http://127.3.4.5:2379/",
            "http://localhost:2379",
            "HTTP://[::1]:2379",
            "127.0.0.1:2379",
            "https://10.0.0.1:2379",
        ];
        assert_eq!(check_plaintext(&eps(&ok), false), Ok(()));
        for bad in
            ["http://10.0.0.1:2379", "10.0.0.1:2379", "http://etcd.example:2379", "http://[fd00::1]:2379"]
        {
            let e = check_plaintext(&eps(&["https://10.0.0.2:2379", bad]), false).expect_err(bad);
            assert_eq!(e.endpoint, bad);
            assert!(e.to_string().contains("--etcd-insecure"), "{e}");
        }
        // No scheme with TLS material is dialled as https by etcd-client.
        assert_eq!(check_plaintext(&eps(&["10.0.0.1:2379"]), true), Ok(()));
        assert!(check_plaintext(&eps(&["http://10.0.0.1:2379"]), true).is_err());
    }

    #[test]
    fn insecure_flag_lets_plain_http_through() {
        let eps = eps(&["http://10.0.0.1:2379"]);
        let strict = EtcdTlsArgs::default();
        assert!(matches!(strict.load(&eps), Err(EtcdArgsError::Plaintext(_))));
        let insecure = EtcdTlsArgs { etcd_insecure: true, ..EtcdTlsArgs::default() };
        assert!(matches!(insecure.load(&eps), Ok(None)));
    }

    #[test]
    fn the_insecure_env_reads_true_and_false_as_the_manifests_write_them() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            tls: EtcdTlsArgs,
        }
        // nextest runs each test in its own process: the variable is ours.
        for (value, want) in [("true", true), ("false", false)] {
            std::env::set_var("K8S_OVS_ETCD_INSECURE", value);
            let cli = Cli::try_parse_from(["x"]).expect("parse");
            assert_eq!(cli.tls.etcd_insecure, want, "{value}");
        }
        std::env::remove_var("K8S_OVS_ETCD_INSECURE");
    }
}
