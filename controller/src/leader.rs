//! Leader election on an etcd lease: the leader key holds the controller's
//! id and is bound to its lease. A crashed leader's lease expires after the
//! TTL, etcd deletes the key, and a waiting controller creates it. Every
//! write of the leader is fenced by the key's create_revision (see
//! `store::Fence`), so a deposed leader can never write.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use etcd_client::{Client, Compare, CompareOp, EventType, PutOptions, TxnOp, TxnOpResponse, WatchOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::store::Fence;

/// A spawned task that ends when this handle is dropped (also when the
/// owning task is aborted), so nothing outlives the controller that made it.
#[derive(Debug)]
pub struct AbortOnDrop<T>(pub JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A lease kept alive in the background; `lost` turns true when etcd no
/// longer confirms it.
pub struct Lease {
    pub id: i64,
    lost: watch::Receiver<bool>,
    _keeper: AbortOnDrop<()>,
}

impl Lease {
    pub async fn grant(client: &mut Client, ttl_secs: i64) -> Result<Lease> {
        let id = client.lease_grant(ttl_secs, None).await.context("grant lease")?.id();
        let (mut keeper, mut stream) = client.lease_keep_alive(id).await.context("keep lease alive")?;
        let (tx, lost) = watch::channel(false);
        // Refresh at a third of the TTL: two refreshes may fail before expiry.
        let period = Duration::from_millis((ttl_secs.max(1) as u64) * 1000 / 3);
        let task = tokio::spawn(async move {
            loop {
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match stream.message().await {
                    Ok(Some(resp)) if resp.ttl() > 0 => {}
                    _ => break,
                }
                tokio::time::sleep(period).await;
            }
            tracing::warn!(lease = id, "lease keep-alive failed");
            let _ = tx.send(true);
        });
        Ok(Lease { id, lost, _keeper: AbortOnDrop(task) })
    }

    /// Resolves once the lease is lost.
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|l| *l).await;
    }
}

/// Held while this controller leads.
pub struct Leadership {
    pub lease: Lease,
    pub fence: Fence,
}

impl Leadership {
    /// Campaigns until this controller holds `key`: creates it bound to a
    /// fresh lease when absent, else waits for its deletion and retries.
    pub async fn campaign(client: &mut Client, key: &str, id: &str, ttl_secs: i64) -> Result<Leadership> {
        let mut lease = Lease::grant(client, ttl_secs).await?;
        loop {
            let txn = etcd_client::Txn::new()
                .when([Compare::create_revision(key, CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key, id, Some(PutOptions::new().with_lease(lease.id)))])
                .or_else([TxnOp::get(key, None)]);
            let resp = client.txn(txn).await.context("campaign for leadership")?;
            if resp.succeeded() {
                let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
                return Ok(Leadership { lease, fence: Fence { key: key.to_string(), create_revision: rev } });
            }
            let holder = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => {
                    g.kvs().first().map(|kv| (kv.mod_revision(), kv.value_str().unwrap_or("?").to_string()))
                }
                _ => None,
            });
            let Some((mod_rev, holder)) = holder else { continue };
            tracing::info!(leader = %holder, "another controller leads; waiting");
            let mut stream = client
                .watch(key, Some(WatchOptions::new().with_start_revision(mod_rev + 1)))
                .await
                .context("watch the leader key")?;
            loop {
                tokio::select! {
                    msg = stream.message() => {
                        let Some(resp) = msg.context("leader key watch")? else { bail!("leader key watch ended") };
                        if resp.events().iter().any(|e| e.event_type() == EventType::Delete) {
                            break;
                        }
                    }
                    _ = lease.lost() => bail!("lost our lease while waiting to lead"),
                }
            }
        }
    }

    /// Gives leadership up at once (revoking the lease deletes the key, so
    /// the other controller takes over without waiting for the TTL).
    pub async fn resign(self, client: &mut Client) {
        if let Err(e) = client.lease_revoke(self.lease.id).await {
            tracing::warn!("resign: revoke lease {}: {e}", self.lease.id);
        }
    }
}
