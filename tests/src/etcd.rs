//! A private etcd 3.4 server with a temporary data dir, inside a lab namespace
//! (or on loopback of the test's own namespace).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::netns::{self, Netns};
use crate::pki::Pki;

#[derive(Debug)]
pub struct Etcd {
    child: Child,
    netns: Option<Netns>,
    /// `http://<ip>:<port>` (`https://` with TLS), the client URL.
    pub endpoint: String,
    /// Set when clients must present a certificate of this PKI.
    pub tls: Option<Pki>,
    pub data_dir: PathBuf,
}

impl Etcd {
    /// Starts etcd listening on `ip:client_port` (peer port = client + 1) in
    /// `netns` (None = the caller's own namespace), and waits until healthy.
    pub fn start(netns: Option<&Netns>, ip: &str, client_port: u16, dir: &Path) -> Result<Etcd> {
        Etcd::start_with(netns, ip, client_port, dir, None)
    }

    /// `start`, and with `tls` etcd serves HTTPS with `pki`'s server
    /// certificate and requires client certificates signed by its CA.
    pub fn start_with(
        netns: Option<&Netns>,
        ip: &str,
        client_port: u16,
        dir: &Path,
        tls: Option<&Pki>,
    ) -> Result<Etcd> {
        let data_dir = dir.join("etcd-data");
        std::fs::create_dir_all(dir)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://{ip}:{client_port}");
        let peer = format!("http://{ip}:{}", client_port + 1);
        let log = File::create(dir.join("etcd.log")).context("etcd log file")?;
        let data = data_dir.to_string_lossy().into_owned();
        let args: Vec<String> = [
            "etcd",
            "--name",
            "ctl",
            "--data-dir",
            &data,
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("ctl={peer}"),
            "--log-level",
            "warn",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut args = args;
        if let Some(pki) = tls {
            for (flag, file) in
                [("--cert-file", "server.crt"), ("--key-file", "server.key"), ("--trusted-ca-file", "ca.crt")]
            {
                args.extend([flag.to_string(), pki.path(file)]);
            }
            args.push("--client-cert-auth".into());
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let argv = match netns {
            Some(ns) => ns.wrap(&argv).into_iter().map(str::to_string).collect::<Vec<_>>(),
            None => args.clone(),
        };
        // `ip netns exec` execs etcd in place, so the child's PID is etcd's.
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn etcd")?;
        if netns.is_none() {
            // Outside any lab namespace nothing else would end it if the
            // test process dies: let the sweep find it.
            crate::sweep::record_owned(dir, child.id() as i32).context("record etcd's PID")?;
        }
        let mut etcd = Etcd { child, netns: netns.cloned(), endpoint: client, tls: tls.cloned(), data_dir };
        etcd.wait_healthy(Duration::from_secs(15))?;
        Ok(etcd)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait()? {
                bail!("etcd exited early ({st}); see {}/../etcd.log", self.data_dir.display());
            }
            if self.etcdctl(&["endpoint", "health"]).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("etcd at {} not healthy within {timeout:?}", self.endpoint);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `etcdctl --endpoints <this> <args>` from etcd's own namespace.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        self.etcdctl_as("client", self.netns.as_ref(), args)
    }

    /// `etcdctl` with the client certificate `<cn>.crt` (TLS only; the etcd
    /// user when auth is on), run in `from` (None: the caller's namespace).
    pub fn etcdctl_as(&self, cn: &str, from: Option<&Netns>, args: &[&str]) -> Result<String> {
        let mut v = vec![
            "etcdctl",
            "--dial-timeout=2s",
            "--command-timeout=5s",
            "--endpoints",
            self.endpoint.as_str(),
        ];
        let tls_flags: Vec<String> = match &self.tls {
            Some(pki) => vec![
                format!("--cacert={}", pki.path("ca.crt")),
                format!("--cert={}", pki.path(&format!("{cn}.crt"))),
                format!("--key={}", pki.path(&format!("{cn}.key"))),
            ],
            None => vec![],
        };
        v.extend(tls_flags.iter().map(String::as_str));
        v.extend_from_slice(args);
        let env = [("ETCDCTL_API", "3")];
        match from {
            Some(ns) => ns.exec_env(&v, &env),
            None => cmd::run_env(&v, &env),
        }
    }

    /// Ends etcd (by its PID) and reaps it.
    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            netns::terminate_pids(&[self.pid()], Duration::from_secs(3));
            let _ = self.child.wait();
        }
    }
}

/// A client port on loopback whose successor (the peer port) is free too.
pub fn free_port_pair() -> Result<u16> {
    for _ in 0..20 {
        let a = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = a.local_addr()?.port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free pair of loopback ports")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
