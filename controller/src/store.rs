//! The etcd side: connecting, the config record, loading and watching the
//! network's records, and applying a planned `Write` as one transaction.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use etcd_client::{Client, Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse};
use etcd_schema::{parse_network_config, record_text, Keys, NetworkConfig};

use crate::model::Records;
use crate::plan::{ErrorWrite, RecordWrite, Write};

pub use etcd_schema::connect::EtcdTls;

/// Connects to the first reachable endpoint (etcd-client balances over all).
pub async fn connect(endpoints: &[String]) -> Result<Client> {
    connect_with(endpoints, None).await
}

/// `connect` with optional TLS (endpoints then use `https://`).
pub async fn connect_with(endpoints: &[String], tls: Option<&EtcdTls>) -> Result<Client> {
    etcd_schema::connect::connect(endpoints, tls, Duration::from_secs(10))
        .await
        .with_context(|| format!("connect to etcd at {}", endpoints.join(",")))
}

/// A key-value pair as text (keys and values of this schema are UTF-8).
pub fn kv_text(kv: &KeyValue) -> Option<(&str, &str)> {
    Some((kv.key_str().ok()?, kv.value_str().ok()?))
}

/// Reads `<prefix>/config`. When absent and `bootstrap` is given, writes it
/// (only if still absent, so two starting controllers agree on one config).
/// When it is invalid (or not UTF-8) and `last_good` is given, that one is
/// used: a bad edit of the config never stops a controller that knew it.
pub async fn ensure_config(
    client: &mut Client,
    prefix: &str,
    bootstrap: Option<&NetworkConfig>,
    last_good: Option<&NetworkConfig>,
) -> Result<NetworkConfig> {
    let key = Keys::config_key(prefix);
    loop {
        // Retried through a leader change: `k8s-ovs-ctl` reads it first.
        let resp = etcd_schema::connect::retry_transient(Duration::from_secs(15), || {
            let (mut c, key) = (client.clone(), key.clone());
            async move { c.get(key, None).await }
        })
        .await
        .context("read the network config")?;
        if let Some(kv) = resp.kvs().first() {
            let parsed = record_text(&key, kv.value()).and_then(|raw| parse_network_config(&key, raw));
            return match (parsed, last_good) {
                (Ok(c), _) => Ok(c),
                (Err(e), Some(last)) => {
                    tracing::warn!(error = %e, "invalid network config; keeping the last good one");
                    Ok(last.clone())
                }
                (Err(e), None) => Err(e.into()),
            };
        }
        let Some(cfg) = bootstrap else {
            bail!("no network config at {key}; write it with etcdctl or start the controller with --network");
        };
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), cfg.to_json(), None)]);
        client.txn(txn).await.context("write the network config")?;
    }
}

/// Reads every record of the network; returns them and the revision read at.
pub async fn load(client: &mut Client, keys: &Keys, config: &NetworkConfig) -> Result<(Records, i64)> {
    let resp = client
        .get(keys.network_dir(), Some(GetOptions::new().with_prefix()))
        .await
        .context("read the network's records")?;
    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
    let mut records = Records::default();
    for kv in resp.kvs() {
        // A value that is not UTF-8 is loaded as a bad record (restored), not skipped.
        if let Ok(k) = kv.key_str() {
            records.load(keys, config, k, kv.value(), kv.mod_revision());
        }
    }
    recover_safe_states(client, keys, config, &mut records).await;
    Ok((records, rev))
}

/// For records that are invalid right now (a bad edit made while no
/// controller ran), finds the last valid version in etcd's history, so the
/// restore goes back to the namespace's real VNI instead of a fresh one.
/// Best effort: history may be compacted.
async fn recover_safe_states(
    client: &mut Client,
    keys: &Keys,
    config: &NetworkConfig,
    records: &mut Records,
) {
    let broken: Vec<(String, i64)> = records
        .netns
        .iter()
        .filter(|(_, e)| e.parsed.is_err())
        .map(|(n, e)| (keys.netnamespace(n), e.rev))
        .chain(
            records.subnets.iter().filter(|(_, e)| e.parsed.is_err()).map(|(ip, e)| (keys.subnet(ip), e.rev)),
        )
        .collect();
    for (key, mut rev) in broken {
        // A few versions back at most: operators rarely stack bad edits.
        for _ in 0..8 {
            let Ok(resp) = client.get(key.as_str(), Some(GetOptions::new().with_revision(rev - 1))).await
            else {
                break;
            };
            let Some(kv) = resp.kvs().first() else { break };
            let mut old = Records::default();
            old.load(keys, config, &key, kv.value(), kv.mod_revision());
            if let Some((name, id)) = old.safe_netns.into_iter().next() {
                tracing::info!(%key, net_id = id, "recovered the last valid version from etcd history");
                records.safe_netns.insert(name, id);
                break;
            }
            if let Some((ip, s)) = old.safe_subnets.into_iter().next() {
                records.safe_subnets.insert(ip, s);
                break;
            }
            rev = kv.mod_revision();
        }
    }
}

/// How a write ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Committed at this revision.
    Committed(i64),
    /// The record changed since it was read; `current` is what it holds now
    /// (None: gone), already fed into the records.
    Stale,
    /// The leader key is no longer ours: stop writing.
    NotLeader,
}

/// The fence every leader write carries: the leader key must still be the
/// one this controller created.
#[derive(Debug, Clone)]
pub struct Fence {
    pub key: String,
    pub create_revision: i64,
}

/// The operations of one write: the record, its error key, its applied
/// copy and its object request record.
fn write_ops(write: &Write) -> Result<Vec<TxnOp>> {
    let mut ops = Vec::new();
    match &write.record {
        RecordWrite::Put(v) => ops.push(TxnOp::put(write.key.as_str(), v.as_str(), None)),
        RecordWrite::Delete => ops.push(TxnOp::delete(write.key.as_str(), None)),
        RecordWrite::Keep => {}
    }
    match &write.error {
        ErrorWrite::Put(e) => ops.push(TxnOp::put(write.error_key.as_str(), serde_json::to_string(e)?, None)),
        ErrorWrite::Clear => ops.push(TxnOp::delete(write.error_key.as_str(), None)),
        ErrorWrite::Keep => {}
    }
    for side in [&write.applied, &write.request] {
        match side {
            Some((key, RecordWrite::Put(v))) => ops.push(TxnOp::put(key.as_str(), v.as_str(), None)),
            Some((key, RecordWrite::Delete)) => ops.push(TxnOp::delete(key.as_str(), None)),
            Some((_, RecordWrite::Keep)) | None => {}
        }
    }
    Ok(ops)
}

/// Writes per batch: four operations each (record, error, applied copy,
/// object request) stays within etcd's default `--max-txn-ops` of 128.
pub const BATCH: usize = 30;

/// Applies several writes (at most `BATCH`, distinct keys) in one
/// transaction, all or nothing, with the same compares as `apply`. Returns
/// the revision, or None when any compare failed (then apply them one by one
/// to learn which).
pub async fn apply_batch(
    client: &mut Client,
    keys: &Keys,
    config: &NetworkConfig,
    records: &mut Records,
    writes: &[Write],
    fence: &Fence,
) -> Result<Option<i64>> {
    let mut compares =
        vec![Compare::create_revision(fence.key.as_str(), CompareOp::Equal, fence.create_revision)];
    let mut ops = Vec::new();
    for w in writes {
        compares.push(Compare::mod_revision(w.key.as_str(), CompareOp::Equal, w.expect_rev));
        ops.extend(write_ops(w)?);
    }
    let resp = client.txn(Txn::new().when(compares).and_then(ops)).await.context("batched transaction")?;
    if !resp.succeeded() {
        return Ok(None);
    }
    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
    for w in writes {
        records.committed(keys, config, w, rev);
    }
    Ok(Some(rev))
}

/// Applies `write` in one transaction: the record only if it still has
/// `expect_rev` and we still lead; the error key in the same step.
pub async fn apply(
    client: &mut Client,
    keys: &Keys,
    config: &NetworkConfig,
    records: &mut Records,
    write: &Write,
    fence: &Fence,
) -> Result<Applied> {
    let ops = write_ops(write)?;
    let txn = Txn::new()
        .when([
            Compare::mod_revision(write.key.as_str(), CompareOp::Equal, write.expect_rev),
            Compare::create_revision(fence.key.as_str(), CompareOp::Equal, fence.create_revision),
        ])
        .and_then(ops)
        .or_else([TxnOp::get(write.key.as_str(), None), TxnOp::get(fence.key.as_str(), None)]);
    let resp = client.txn(txn).await.with_context(|| format!("transaction on {}", write.key))?;
    if resp.succeeded() {
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        records.committed(keys, config, write, rev);
        return Ok(Applied::Committed(rev));
    }
    let mut gets = resp.op_responses().into_iter().filter_map(|r| match r {
        TxnOpResponse::Get(g) => Some(g),
        _ => None,
    });
    let (record, leader) = (gets.next(), gets.next());
    let still_leader = leader
        .as_ref()
        .and_then(|g| g.kvs().first())
        .is_some_and(|kv| kv.create_revision() == fence.create_revision);
    if !still_leader {
        return Ok(Applied::NotLeader);
    }
    match record.as_ref().and_then(|g| g.kvs().first()) {
        Some(kv) => {
            if let Ok(k) = kv.key_str() {
                records.observe_put(keys, config, k, kv.value(), kv.mod_revision());
            }
        }
        None => records.observe_delete(keys, &write.key),
    }
    Ok(Applied::Stale)
}
