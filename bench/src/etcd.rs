//! etcd as the benchmarks drive it: an operator's action written the way
//! K8S-OVS's recipes write it, a put awaited on a watch, the NetIDs the
//! controller has applied, and a put fanned out to many plain watchers (the
//! floor any etcd-driven change stands on).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use etcd_client::{Client, EventType, WatchOptions, WatchStream};
use etcd_schema::{parse_net_namespace, KeyKind, Keys};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// The value an operator puts to ask for `action` ("join", "isolate",
/// "global") on namespace `ns`: the record as it is, with Action (and the
/// namespace to join) set; the controller decides the new NetID.
pub fn action_record(ns: &str, net_id: u32, action: &str, join: &str) -> String {
    format!(r#"{{"NetName":"{ns}","NetID":{net_id},"Action":"{action}","Namespace":"{join}"}}"#)
}

/// Waits on `stream` for a put of `key` at a revision above `after` that
/// satisfies `done`.
pub async fn wait_put(
    stream: &mut WatchStream,
    key: &str,
    after: i64,
    done: impl Fn(&str) -> bool,
) -> Result<()> {
    loop {
        let resp = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .context("no answer within 30 s")??
            .context("watch ended")?;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            if ev.event_type() == EventType::Put
                && kv.key_str()? == key
                && kv.mod_revision() > after
                && done(kv.value_str()?)
            {
                return Ok(());
            }
        }
    }
}

/// The revision a put was committed at.
pub async fn put(client: &mut Client, key: &str, value: String) -> Result<i64> {
    let resp = client.put(key, value, None).await?;
    Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
}

/// NetID of every namespace record with no pending action.
pub async fn net_ids(client: &mut Client, keys: &Keys) -> Result<BTreeMap<String, u32>> {
    let mut ids = BTreeMap::new();
    for (key, raw, _) in controller::run::read_all(client, keys).await? {
        if let Some(k) = keys.parse(&key).filter(|k| k.kind == KeyKind::NetNamespace) {
            if let Ok(r) = parse_net_namespace(&key, &k.name, &raw) {
                if r.action.is_none() {
                    ids.insert(k.name, r.net_id);
                }
            }
        }
    }
    Ok(ids)
}

/// The NetID of `ns`'s applied copy (what the agents program), if any.
pub async fn applied_net_id(client: &mut Client, keys: &Keys, ns: &str) -> Result<Option<u32>> {
    let key = keys.applied_netnamespace(ns);
    let resp = client.get(key.as_str(), None).await?;
    let Some(kv) = resp.kvs().first() else { return Ok(None) };
    Ok(parse_net_namespace(&key, ns, kv.value_str()?).ok().map(|r| r.net_id))
}

/// Plain watchers of one key prefix, each on its own etcd connection (as
/// each agent has its own), that timestamp every put of one key as they
/// receive it.
pub struct FanOut {
    key: String,
    seen: mpsc::UnboundedReceiver<(i64, Instant)>,
    watchers: usize,
    _tasks: JoinSet<()>,
}

/// How long one put took to reach the first and the last watcher (ms).
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub first_ms: f64,
    pub last_ms: f64,
}

impl FanOut {
    /// `watchers` connections to `endpoint`, each watching `prefix`; the
    /// watchers time the puts of `key`. Returns once every watcher has
    /// seen a first put of it (so none is still being set up).
    pub async fn start(endpoint: &str, prefix: &str, key: &str, watchers: usize) -> Result<FanOut> {
        let (tx, seen) = mpsc::unbounded_channel();
        let mut tasks = JoinSet::new();
        for _ in 0..watchers {
            let mut client = Client::connect([endpoint], None).await.context("a watcher's connection")?;
            let mut stream = client.watch(prefix, Some(WatchOptions::new().with_prefix())).await?;
            let (tx, key) = (tx.clone(), key.to_string());
            tasks.spawn(async move {
                // The connection lives as long as its watch.
                let _client = client;
                while let Ok(Some(resp)) = stream.message().await {
                    let now = Instant::now();
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        if ev.event_type() == EventType::Put && kv.key() == key.as_bytes() {
                            let _ = tx.send((kv.mod_revision(), now));
                        }
                    }
                }
            });
        }
        let mut f = FanOut { key: key.to_string(), seen, watchers, _tasks: tasks };
        let mut client = Client::connect([endpoint], None).await?;
        f.time_put(&mut client, "warm-up").await.context("not every watcher saw the first put")?;
        Ok(f)
    }

    /// Puts `value` and waits until every watcher has received it.
    pub async fn time_put(&mut self, client: &mut Client, value: &str) -> Result<Delivery> {
        let t0 = Instant::now();
        let rev = put(client, &self.key, value.to_string()).await?;
        let (mut first, mut last, mut got) = (None, t0, 0);
        while got < self.watchers {
            let (r, at) = tokio::time::timeout(Duration::from_secs(30), self.seen.recv())
                .await
                .with_context(|| format!("{got} of {} watchers saw the put within 30 s", self.watchers))?
                .context("every watcher ended")?;
            ensure!(r <= rev, "a put of {} the benchmark did not make", self.key);
            if r == rev {
                got += 1;
                first.get_or_insert(at);
                last = last.max(at);
            }
        }
        let ms = |t: Instant| t.duration_since(t0).as_secs_f64() * 1e3;
        Ok(Delivery { first_ms: first.map(ms).unwrap_or(0.0), last_ms: ms(last) })
    }
}
