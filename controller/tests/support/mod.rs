//! What the controller's integration tests share: a private etcd on
//! loopback, the lab's test kube-apiserver, and controllers run in-process
//! (stopped gracefully, or aborted to simulate a crash).

#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use controller::run::{run, Settings};
use etcd_schema::{parse_net_namespace, Keys, NetNamespace, NetworkConfig, PluginName, RecordError};
pub use lab::etcd::free_port_pair;
use lab::etcd::Etcd;
use lab::kube_api::KubeApi;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const PREFIX: &str = "/k8s.ovs.com/ovs/network";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A lab-named directory (swept if the test process dies), removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Result<TempDir> {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed) + 500;
        let dir = lab::base_dir().join(format!("{}{}x{seq}-{what}", lab::DEFAULT_PREFIX, std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A private etcd on loopback (client port and port+1 for peers).
pub struct TestEtcd {
    pub etcd: Etcd,
    _dir: TempDir,
}

impl TestEtcd {
    pub fn start() -> Result<TestEtcd> {
        lab::sweep::sweep(lab::DEFAULT_PREFIX, &lab::base_dir());
        let mut last = None;
        // A port can be taken between probing and etcd binding it: retry.
        for _ in 0..5 {
            let dir = TempDir::new("etcd")?;
            let port = free_port_pair()?;
            match Etcd::start(None, "127.0.0.1", port, &dir.0) {
                Ok(etcd) => return Ok(TestEtcd { etcd, _dir: dir }),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("etcd did not start")))
    }

    pub fn endpoint(&self) -> String {
        self.etcd.endpoint.clone()
    }

    /// `etcdctl put`, exactly as an operator types it; returns the revision.
    pub fn put(&self, key: &str, value: &str) -> Result<i64> {
        let out = self.etcd.etcdctl(&["put", "-w", "json", key, value])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("etcdctl put -w json")?;
        v["header"]["revision"].as_i64().context("no revision in etcdctl output")
    }

    pub fn get(&self, key: &str) -> Result<Option<String>> {
        let out = self.etcd.etcdctl(&["get", "--print-value-only", key])?;
        let out = out.trim_end_matches('\n');
        Ok(if out.is_empty() { None } else { Some(out.to_string()) })
    }

    pub fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        let out = self.etcd.etcdctl(&["get", "--prefix", "--keys-only", prefix])?;
        Ok(out.lines().filter(|l| !l.is_empty()).map(str::to_string).collect())
    }
}

pub fn config() -> NetworkConfig {
    NetworkConfig {
        name: "k8ssdn".into(),
        network: "172.11.0.0/16".parse().expect("cidr"),
        host_subnet_length: 10,
        service_network: "10.96.0.0/12".parse().expect("cidr"),
        plugin: PluginName::MultiTenant,
    }
}

pub fn keys() -> Keys {
    Keys::new(PREFIX, "k8ssdn")
}

/// A controller running as a task of the test.
pub struct Controller {
    pub id: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<()>>,
}

impl Controller {
    pub fn spawn(id: &str, etcd: &TestEtcd, kube: Option<&KubeApi>, ttl: i64) -> Result<Controller> {
        Controller::spawn_with_grace(id, etcd, kube, ttl, std::time::Duration::from_secs(300))
    }

    /// `spawn` with the given `--subnet-grace-secs`.
    pub fn spawn_with_grace(
        id: &str,
        etcd: &TestEtcd,
        kube: Option<&KubeApi>,
        ttl: i64,
        subnet_grace: std::time::Duration,
    ) -> Result<Controller> {
        let settings = Settings {
            endpoints: vec![etcd.endpoint()],
            etcd_tls: None,
            prefix: PREFIX.into(),
            bootstrap: Some(config()),
            admin_namespaces: vec!["admin".into()],
            id: id.to_string(),
            lease_ttl_secs: ttl,
            subnet_grace,
        };
        let kube = match kube {
            Some(api) => Some(kube::Client::try_from(kube::Config::new(api.url().parse()?))?),
            None => None,
        };
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(run(settings, kube, async move {
            let _ = rx.await;
        }));
        Ok(Controller { id: id.to_string(), stop: Some(tx), task })
    }

    /// SIGTERM-like: resigns and returns.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await?
    }

    /// A crash: the task is dropped mid-flight, its lease is not revoked.
    pub fn crash(self) {
        self.task.abort();
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `f` every 50 ms until it yields Some (waiting, not asserting time:
/// the limit only turns a hang into a failure).
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("gave up waiting for {what} after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The record of `ns` once it is valid and has no pending action.
pub fn settled(etcd: &TestEtcd, ns: &str) -> Result<Option<NetNamespace>> {
    let key = keys().netnamespace(ns);
    let Some(raw) = etcd.get(&key)? else { return Ok(None) };
    Ok(parse_net_namespace(&key, ns, &raw).ok().filter(|r| r.action.is_none()))
}

pub async fn wait_settled(etcd: &TestEtcd, ns: &str) -> Result<NetNamespace> {
    eventually(&format!("record of {ns}"), Duration::from_secs(30), || async { settled(etcd, ns) }).await
}

/// The error shown beside `ns`'s record for the edit at `rev`.
pub async fn wait_error(etcd: &TestEtcd, ns: &str, rev: i64) -> Result<RecordError> {
    let key = keys().netnamespace_error(ns);
    eventually(&format!("error of {ns} for revision {rev}"), Duration::from_secs(30), || async {
        let Some(raw) = etcd.get(&key)? else { return Ok(None) };
        let e: RecordError = serde_json::from_str(&raw)?;
        Ok((e.edit_revision == rev).then_some(e))
    })
    .await
}

/// The leader key's value (the leading controller's id).
pub fn leader(etcd: &TestEtcd) -> Result<Option<String>> {
    etcd.get(&keys().leader())
}

/// A real binary started by a test, ended by its PID.
pub struct Daemon(pub std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        lab::netns::terminate_pids(&[self.0.id() as i32], Duration::from_secs(3));
        let _ = self.0.wait();
    }
}
