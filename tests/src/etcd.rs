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
    /// The command line (`ip netns exec ... etcd ...`), for `restart`.
    argv: Vec<String>,
    log: PathBuf,
}

/// One member's identity in its cluster.
struct Member<'a> {
    name: &'a str,
    ip: &'a str,
    /// Its peer port is the next one.
    client_port: u16,
    /// `--initial-cluster`: every member's `name=peer URL`.
    initial_cluster: &'a str,
    /// `--initial-cluster-token` of a cluster (None: a lone member).
    token: Option<&'a str>,
}

fn spawn_logged(argv: &[String], log: &Path) -> Result<Child> {
    let out = File::options().create(true).append(true).open(log).context("etcd log file")?;
    // `ip netns exec` execs etcd in place, so the child's PID is etcd's.
    Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("spawn etcd")
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
        let peer = format!("http://{ip}:{}", client_port + 1);
        let member =
            Member { name: "ctl", ip, client_port, initial_cluster: &format!("ctl={peer}"), token: None };
        let mut etcd = Etcd::spawn(netns, &member, dir, tls)?;
        etcd.wait_healthy(Duration::from_secs(15))?;
        Ok(etcd)
    }

    /// Starts one member without waiting for it: a member of a cluster is
    /// healthy only once a quorum of its peers runs.
    fn spawn(netns: Option<&Netns>, m: &Member<'_>, dir: &Path, tls: Option<&Pki>) -> Result<Etcd> {
        let data_dir = dir.join("etcd-data");
        std::fs::create_dir_all(dir)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://{}:{}", m.ip, m.client_port);
        let peer = format!("http://{}:{}", m.ip, m.client_port + 1);
        let data = data_dir.to_string_lossy().into_owned();
        let mut args: Vec<String> = [
            "etcd",
            "--name",
            m.name,
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
            m.initial_cluster,
            "--log-level",
            "warn",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(token) = m.token {
            // Unique per lab: members of two labs never take each other in.
            args.extend([
                "--initial-cluster-token".into(),
                token.into(),
                "--initial-cluster-state".into(),
                "new".into(),
            ]);
        }
        if let Some(pki) = tls {
            for (flag, file) in
                [("--cert-file", "server.crt"), ("--key-file", "server.key"), ("--trusted-ca-file", "ca.crt")]
            {
                args.extend([flag.to_string(), pki.path(file)]);
            }
            args.push("--client-cert-auth".into());
        }
        let argv = match netns {
            Some(ns) => {
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                ns.wrap(&a).into_iter().map(str::to_string).collect::<Vec<_>>()
            }
            None => args,
        };
        let log = dir.join("etcd.log");
        let child = spawn_logged(&argv, &log)?;
        if netns.is_none() {
            // Outside any lab namespace nothing else would end it if the
            // test process dies: let the sweep find it.
            crate::sweep::record_owned(dir, child.id() as i32).context("record etcd's PID")?;
        }
        Ok(Etcd { child, netns: netns.cloned(), endpoint: client, tls: tls.cloned(), data_dir, argv, log })
    }

    /// SIGKILL by PID: the member dies as in a crash (no clean shutdown).
    pub fn kill(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    /// Starts the stopped (or killed) member again on its data dir, and
    /// waits until it is healthy (with a cluster: back in it).
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.child = spawn_logged(&self.argv, &self.log)?;
        self.wait_healthy(Duration::from_secs(15))
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
        etcdctl_at(&self.endpoint, self.tls.as_ref(), cn, from, args)
    }

    /// Ends etcd (by its PID) and reaps it.
    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            netns::terminate_pids(&[self.pid()], Duration::from_secs(3));
            let _ = self.child.wait();
        }
    }
}

/// `etcdctl --endpoints <endpoints> <args>` (a comma-separated list), with
/// the client certificate `<cn>.crt` of `tls`, run in `from`.
fn etcdctl_at(
    endpoints: &str,
    tls: Option<&Pki>,
    cn: &str,
    from: Option<&Netns>,
    args: &[&str],
) -> Result<String> {
    let mut v = vec!["etcdctl", "--dial-timeout=2s", "--command-timeout=5s", "--endpoints", endpoints];
    let tls_flags: Vec<String> = match tls {
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

/// An etcd cluster of several members in one lab namespace: one address,
/// a client port (and the next, its peer port) per member, each member's
/// data dir and log under `dir/etcd<i>`. Members end by PID with the value.
#[derive(Debug)]
pub struct EtcdCluster {
    pub members: Vec<Etcd>,
    netns: Netns,
    tls: Option<Pki>,
}

impl EtcdCluster {
    /// Starts `client_ports.len()` members on `ip` in `netns` (cluster token
    /// `token`), waits until every one is healthy.
    pub fn start(
        netns: &Netns,
        ip: &str,
        client_ports: &[u16],
        dir: &Path,
        tls: Option<&Pki>,
        token: &str,
    ) -> Result<EtcdCluster> {
        let names: Vec<String> = (1..=client_ports.len()).map(|i| format!("etcd{i}")).collect();
        let initial: Vec<String> =
            names.iter().zip(client_ports).map(|(n, p)| format!("{n}=http://{ip}:{}", p + 1)).collect();
        let initial = initial.join(",");
        let mut c = EtcdCluster { members: Vec::new(), netns: netns.clone(), tls: tls.cloned() };
        for (name, port) in names.iter().zip(client_ports) {
            let m = Member { name, ip, client_port: *port, initial_cluster: &initial, token: Some(token) };
            c.members.push(Etcd::spawn(Some(netns), &m, &dir.join(name), tls)?);
        }
        for m in &mut c.members {
            m.wait_healthy(Duration::from_secs(20))?;
        }
        Ok(c)
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint.clone()).collect()
    }

    /// `etcdctl` against all members (it fails over between them).
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        self.etcdctl_as("client", Some(&self.netns), args)
    }

    pub fn etcdctl_as(&self, cn: &str, from: Option<&Netns>, args: &[&str]) -> Result<String> {
        etcdctl_at(&self.endpoints().join(","), self.tls.as_ref(), cn, from, args)
    }

    /// (index of the leader, every member's id), from the members that answer.
    pub fn leader(&self) -> Result<(usize, Vec<u64>)> {
        let mut ids = Vec::new();
        let mut leader = None;
        for m in &self.members {
            let out = m.etcdctl(&["endpoint", "status", "-w", "json"])?;
            let v: serde_json::Value = serde_json::from_str(&out).context("endpoint status JSON")?;
            let st = &v[0]["Status"];
            ids.push(st["header"]["member_id"].as_u64().context("member_id")?);
            leader = st["leader"].as_u64().or(leader);
        }
        let leader = leader.context("no leader")?;
        let i = ids.iter().position(|id| *id == leader).context("the leader is no member")?;
        Ok((i, ids))
    }

    /// `etcdctl move-leader` to member `to`, asked of the current leader;
    /// returns the leader's index before the move.
    pub fn move_leader(&self, to: usize) -> Result<usize> {
        let (from, ids) = self.leader()?;
        let id = format!("{:x}", ids[to]);
        self.members[from].etcdctl(&["move-leader", &id])?;
        Ok(from)
    }

    pub fn pids(&self) -> Vec<i32> {
        self.members.iter().map(Etcd::pid).collect()
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
