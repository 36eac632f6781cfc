//! How the controller, `k8s-ovs-ctl` and the agent reach etcd: the same
//! endpoints, timeouts and TLS material (K8S-OVS's `--etcd-ca`,
//! `--etcd-cert`, `--etcd-key`), so a cluster's etcd settings mean the same
//! thing to every binary. The only I/O of this crate, behind the `client`
//! feature.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// Connects to one of the endpoints: with several (a cluster), the first
/// in a rotating order whose member answers a status request. etcd-client
/// would balance over all of them, but its balancer never drops a dead
/// member: requests kept going to a killed member ("tcp connect error")
/// for as long as it was down (found by `lab_etcd_cluster_*`). One member
/// per connection instead: when it dies the session breaks, the caller
/// connects again and lands on a live one; the rotation moves a caller on
/// from a member that accepts connections but cannot serve (no quorum).
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
    if endpoints.len() <= 1 {
        return Client::connect(endpoints, Some(opts)).await;
    }
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let mut last = None;
    for i in failover_order(endpoints.len(), NEXT.fetch_add(1, Ordering::Relaxed)) {
        let attempt = async {
            let mut c = Client::connect([&endpoints[i]], Some(opts.clone())).await?;
            c.status().await?;
            Ok::<_, etcd_client::Error>(c)
        };
        match attempt.await {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| etcd_client::Error::InvalidArgs("no etcd endpoint".into())))
}

/// The order in which to try `n` endpoints, starting at `start` (mod n).
pub fn failover_order(n: usize, start: usize) -> Vec<usize> {
    (0..n).map(|k| (start + k) % n.max(1)).collect()
}

/// Whether an etcd error is what a cluster answers while it changes (a
/// leader election, a member killed, a connection to it broken) rather than
/// a refusal: the same request will succeed on another member or in a
/// moment. etcd's Go client retries these itself; etcd-client does not.
pub fn is_transient(e: &etcd_client::Error) -> bool {
    // gRPC codes (tonic's `Code` discriminants): Unavailable 14 ("leader
    // changed", "no leader", a member down), DeadlineExceeded 4 (a request
    // stuck on a dying member), Unknown 2 (a stream cut by a reset).
    const TRANSIENT: [i32; 3] = [14, 4, 2];
    match e {
        etcd_client::Error::GRpcStatus(s) => TRANSIENT.contains(&(s.code() as i32)),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

/// Runs `op` until it succeeds, fails for good (not [`is_transient`]), or
/// `budget` has passed since the first try; waits 100 ms doubling to 1 s
/// between tries. For one-shot callers (`k8s-ovs-ctl`); the daemons' loops
/// already start over on any error.
pub async fn retry_transient<T, F, Fut>(budget: Duration, mut op: F) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + budget;
    let mut wait = Duration::from_millis(100);
    loop {
        match op().await {
            Err(e) if is_transient(&e) && tokio::time::Instant::now() + wait < deadline => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: tonic::Code, msg: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, msg))
    }

    #[test]
    fn failover_tries_every_endpoint_once_from_a_rotating_start() {
        assert_eq!(failover_order(3, 0), [0, 1, 2]);
        assert_eq!(failover_order(3, 4), [1, 2, 0]);
        assert_eq!(failover_order(1, 7), [0]);
        assert!(failover_order(0, 2).is_empty());
    }

    #[test]
    fn a_leader_change_or_a_dead_member_is_transient_a_refusal_is_not() {
        assert!(is_transient(&status(tonic::Code::Unavailable, "etcdserver: leader changed")));
        assert!(is_transient(&status(tonic::Code::DeadlineExceeded, "context deadline exceeded")));
        assert!(is_transient(&etcd_client::Error::IoError(std::io::ErrorKind::ConnectionReset.into())));
        assert!(!is_transient(&status(tonic::Code::PermissionDenied, "etcdserver: permission denied")));
        assert!(!is_transient(&status(tonic::Code::InvalidArgument, "etcdserver: key is not provided")));
        assert!(!is_transient(&etcd_client::Error::InvalidArgs("x".into())));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_rides_out_a_leader_change_and_gives_up_on_refusals_and_after_the_budget() {
        let tries = std::cell::Cell::new(0);
        let got = retry_transient(Duration::from_secs(10), || {
            tries.set(tries.get() + 1);
            let n = tries.get();
            async move {
                match n {
                    1 | 2 => Err(status(tonic::Code::Unavailable, "etcdserver: leader changed")),
                    _ => Ok(n),
                }
            }
        })
        .await;
        assert_eq!(got.ok(), Some(3));

        tries.set(0);
        let refused = retry_transient(Duration::from_secs(10), || {
            tries.set(tries.get() + 1);
            async { Err::<(), _>(status(tonic::Code::PermissionDenied, "no")) }
        })
        .await;
        assert!(refused.is_err());
        assert_eq!(tries.get(), 1, "a refusal is not retried");

        tries.set(0);
        let down = retry_transient(Duration::from_secs(2), || {
            tries.set(tries.get() + 1);
            async { Err::<(), _>(status(tonic::Code::Unavailable, "etcdserver: no leader")) }
        })
        .await;
        assert!(down.is_err(), "gives up after the budget");
        // 100 + 200 + 400 + 800 ms fit in 2 s, the next wait does not.
        assert_eq!(tries.get(), 5);
    }

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
