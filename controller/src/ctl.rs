//! The operator commands behind `k8s-ovs-ctl`. They write exactly the edit
//! an operator would type with etcdctl (the record with `Action` and
//! `Namespace` set), but as a transaction on the record's mod_revision, so
//! an edit racing the controller is retried instead of overwriting it.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use etcd_client::{Client, Compare, CompareOp, EventType, TxnOp, WatchOptions};
use etcd_schema::{
    parse_host_subnet, parse_net_namespace, Action, HostSubnet, KeyKind, Keys, NetworkConfig, RecordError,
};

use crate::run::read_all;
use crate::store;

/// How long a command rides out a cluster changing under it (an election
/// takes about a second; a member's death costs its clients a reconnect).
const RETRY_BUDGET: Duration = Duration::from_secs(15);

/// `op` retried while etcd answers with a transient error.
async fn retry<T, Fut>(op: impl FnMut() -> Fut) -> Result<T, etcd_client::Error>
where
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    etcd_schema::connect::retry_transient(RETRY_BUDGET, op).await
}

/// Reads the config (for the network name) and builds the keys.
pub async fn network(client: &mut Client, prefix: &str) -> Result<(NetworkConfig, Keys)> {
    let config = store::ensure_config(client, prefix, None, None).await?;
    let keys = Keys::new(prefix, &config.name);
    Ok((config, keys))
}

/// Sets `action` on `namespace`'s record; returns the revision of the edit.
pub async fn request(client: &mut Client, keys: &Keys, namespace: &str, action: Action) -> Result<i64> {
    let key = keys.netnamespace(namespace);
    loop {
        let resp = retry(|| {
            let (mut c, key) = (client.clone(), key.clone());
            async move { c.get(key, None).await }
        })
        .await
        .context("read the record")?;
        let Some(kv) = resp.kvs().first() else {
            bail!("{key}: no record; does namespace {namespace} exist?");
        };
        let raw = kv.value_str().context("record is not UTF-8")?;
        let mut rec = parse_net_namespace(&key, namespace, raw)
            .with_context(|| "the record is invalid; the controller will restore it, try again")?;
        if let Some(pending) = &rec.action {
            bail!("{key}: action {pending:?} is still pending; wait for the controller");
        }
        rec.action = Some(action.clone());
        let txn = etcd_client::Txn::new()
            .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision())])
            .and_then([TxnOp::put(key.as_str(), rec.to_json(), None)]);
        // A commit whose answer was lost fails its compare when tried again
        // and the loop reads the record anew: never an edit written twice.
        let resp = retry(|| {
            let (mut c, txn) = (client.clone(), txn.clone());
            async move { c.txn(txn).await }
        })
        .await
        .context("write the action")?;
        if resp.succeeded() {
            return Ok(resp.header().map(|h| h.revision()).unwrap_or(0));
        }
    }
}

/// How the controller answered an edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied: the record now holds this NetID and no action.
    Applied(u32),
    /// Rejected: the error the controller showed beside the record.
    Rejected(String),
}

/// Waits until the controller has answered the edit made at `edit_rev`
/// (Action cleared, or the record removed), then reports its outcome.
pub async fn wait(
    client: &mut Client,
    keys: &Keys,
    namespace: &str,
    edit_rev: i64,
    timeout: Duration,
) -> Result<Outcome> {
    let key = keys.netnamespace(namespace);
    let error_key = keys.netnamespace_error(namespace);
    let answer = async {
        // From the revision after the last one seen: a watch broken by a
        // member's death (or a leader change) resumes where it stood.
        let mut from = edit_rev + 1;
        loop {
            let mut stream = retry(|| {
                let (mut c, key) = (client.clone(), key.clone());
                async move { c.watch(key, Some(WatchOptions::new().with_start_revision(from))).await }
            })
            .await
            .context("watch the record")?;
            loop {
                let resp = match stream.message().await {
                    Ok(Some(resp)) => resp,
                    Ok(None) => break,
                    Err(e) if etcd_schema::connect::is_transient(&e) => {
                        tracing::debug!(error = %e, "the watch broke; watching again");
                        break;
                    }
                    Err(e) => return Err(e.into()),
                };
                if resp.canceled() {
                    bail!("the watch was cancelled (compacted at {})", resp.compact_revision());
                }
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    from = from.max(kv.mod_revision() + 1);
                    if ev.event_type() == EventType::Delete {
                        return Ok::<_, anyhow::Error>(None);
                    }
                    let raw = kv.value_str().unwrap_or("");
                    if let Ok(rec) = parse_net_namespace(&key, namespace, raw) {
                        if rec.action.is_none() {
                            return Ok(Some(rec.net_id));
                        }
                    }
                }
            }
        }
    };
    let applied = tokio::time::timeout(timeout, answer)
        .await
        .with_context(|| format!("the controller did not answer within {timeout:?}; is it running?"))??;
    let err = retry(|| {
        let (mut c, key) = (client.clone(), error_key.clone());
        async move { c.get(key, None).await }
    })
    .await
    .context("read the error record")?;
    if let Some(kv) = err.kvs().first() {
        if let Ok(e) = serde_json::from_str::<RecordError>(kv.value_str().unwrap_or("")) {
            if e.edit_revision == edit_rev {
                return Ok(Outcome::Rejected(e.error));
            }
        }
    }
    match applied {
        Some(id) => Ok(Outcome::Applied(id)),
        None => Ok(Outcome::Rejected(format!("{key}: the record was removed"))),
    }
}

/// One line of `k8s-ovs-ctl list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceRow {
    pub namespace: String,
    /// The NetID agents program: the controller's applied copy; without one
    /// (before an upgraded controller wrote it) the record's. None when
    /// neither is valid.
    pub net_id: Option<u32>,
    pub pending: String,
    pub error: String,
}

pub async fn list(client: &mut Client, keys: &Keys) -> Result<Vec<NamespaceRow>> {
    let all = read_all(client, keys).await?;
    let mut rows: std::collections::BTreeMap<String, NamespaceRow> = Default::default();
    let mut applied: std::collections::BTreeMap<String, u32> = Default::default();
    let row = |name: &str| NamespaceRow {
        namespace: name.to_string(),
        net_id: None,
        pending: String::new(),
        error: String::new(),
    };
    for (k, v, _) in &all {
        let Some(parsed) = keys.parse(k) else { continue };
        match parsed.kind {
            KeyKind::NetNamespace => {
                let r = rows.entry(parsed.name.clone()).or_insert_with(|| row(&parsed.name));
                match parse_net_namespace(k, &parsed.name, v) {
                    Ok(rec) => {
                        r.net_id = Some(rec.net_id);
                        r.pending = match rec.action {
                            None => String::new(),
                            Some(Action::Join(to)) => format!("join {to}"),
                            Some(Action::Isolate) => "isolate".into(),
                            Some(Action::Global) => "global".into(),
                        };
                    }
                    Err(e) => r.pending = format!("(invalid: {e})"),
                }
            }
            KeyKind::AppliedNetNamespace => {
                if let Ok(rec) = parse_net_namespace(k, &parsed.name, v) {
                    applied.insert(parsed.name.clone(), rec.net_id);
                }
            }
            KeyKind::NetNamespaceError => {
                let r = rows.entry(parsed.name.clone()).or_insert_with(|| row(&parsed.name));
                r.error =
                    serde_json::from_str::<RecordError>(v).map(|e| e.error).unwrap_or_else(|_| v.clone());
            }
            _ => {}
        }
    }
    for (name, id) in applied {
        rows.entry(name.clone()).or_insert_with(|| row(&name)).net_id = Some(id);
    }
    Ok(rows.into_values().collect())
}

/// The valid subnet records, by host IP; invalid ones as their error.
pub async fn subnets(
    client: &mut Client,
    keys: &Keys,
    config: &NetworkConfig,
) -> Result<Vec<Result<HostSubnet, String>>> {
    let all = read_all(client, keys).await?;
    Ok(all
        .iter()
        .filter_map(|(k, v, _)| {
            let parsed = keys.parse(k).filter(|p| p.kind == KeyKind::Subnet)?;
            Some(parse_host_subnet(k, &parsed.name, v, config).map_err(|e| e.to_string()))
        })
        .collect())
}
