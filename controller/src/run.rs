//! The controller's loop: campaign, and while leading, keep etcd at the
//! planner's desired state. Every etcd or kube change triggers a replan;
//! every write is a fenced transaction (see `store::apply`).

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result};
use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use etcd_schema::{KeyKind, Keys, NetworkConfig};
use futures::FutureExt;
use ovs_flows::backoff::Backoff;
use tokio::sync::watch;

use crate::alloc::{SubnetAllocator, VniAllocator};
use crate::kube_objects;
use crate::kube_watch::{self, SharedView};
use crate::leader::{AbortOnDrop, Leadership};
use crate::plan::{self, Inputs, Policy};
use crate::store::{self, Applied};

/// Everything the controller needs besides its kube client.
#[derive(Debug, Clone)]
pub struct Settings {
    pub endpoints: Vec<String>,
    pub etcd_tls: Option<crate::store::EtcdTls>,
    pub prefix: String,
    /// Written to `<prefix>/config` when no config exists yet.
    pub bootstrap: Option<NetworkConfig>,
    pub admin_namespaces: Vec<String>,
    /// This controller's name in the leader key.
    pub id: String,
    /// A crashed leader is replaced within this time (at least 3 s).
    pub lease_ttl_secs: i64,
    /// How long a node without an InternalIP keeps its subnet (`plan::SubnetGrace`).
    pub subnet_grace: Duration,
}

impl Settings {
    /// The etcd lease behind `lease_ttl_secs`: one second shorter, because
    /// after the lease runs out etcd needs up to 0.5 s to notice (its expiry
    /// sweep) and the follower a few ms to see the delete and take the key.
    /// etcd itself never grants less than 2 s.
    pub fn etcd_lease_secs(&self) -> i64 {
        (self.lease_ttl_secs - 1).max(2)
    }
}

enum Ended {
    Shutdown,
    LostLeadership,
}

/// Runs until `shutdown` resolves (then resigns leadership). `kube` None:
/// no Kubernetes (records are neither created nor collected; actions and
/// Assign requests still work).
pub async fn run(
    settings: Settings,
    kube: Option<kube::Client>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let shared = SharedView::default();
    let _watches = kube.clone().map(|c| kube_watch::spawn(c, shared.clone()));
    if kube.is_none() {
        // Without Kubernetes no object asks anything: etcd's actions need not wait.
        shared.view.lock().map(|mut v| v.objects = Some(Default::default())).ok();
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopper = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let main = async {
        // Jittered, 100 ms doubling to 5 s: controllers (and agents) that lost
        // etcd together do not come back in step.
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        // What the last session knew, so the next one keeps the last good
        // config and safe states of records that are invalid at its relist.
        let mut known = Known::default();
        loop {
            match session(&settings, &shared, kube.as_ref(), stop_rx.clone(), &mut known).await {
                Ok(Ended::Shutdown) => return Ok(()),
                Ok(Ended::LostLeadership) => {
                    tracing::warn!("lost leadership; campaigning again");
                    backoff.reset();
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!("etcd session failed: {e:#}; retrying in {delay:?}");
                    let mut stop = stop_rx.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.wait_for(|s| *s) => return Ok(()),
                    }
                }
            }
        }
    };
    tokio::pin!(main);
    tokio::select! {
        r = &mut main => return r,
        // Shutdown only raises the flag; `main` sees it, resigns and returns.
        _ = stopper => {}
    }
    main.await
}

/// Carried from one session to the next.
#[derive(Default)]
struct Known {
    config: Option<NetworkConfig>,
    records: crate::model::Records,
}

async fn session(
    settings: &Settings,
    shared: &SharedView,
    kube: Option<&kube::Client>,
    mut stop: watch::Receiver<bool>,
    known: &mut Known,
) -> Result<Ended> {
    let mut client = store::connect_with(&settings.endpoints, settings.etcd_tls.as_ref()).await?;
    let config = store::ensure_config(
        &mut client,
        &settings.prefix,
        settings.bootstrap.as_ref(),
        known.config.as_ref(),
    )
    .await?;
    known.config = Some(config.clone());
    let keys = Keys::new(&settings.prefix, &config.name);
    let leader_key = keys.leader();
    let leadership = tokio::select! {
        l = Leadership::campaign(&mut client, &leader_key, &settings.id, settings.etcd_lease_secs()) => l?,
        _ = stop.wait_for(|s| *s) => return Ok(Ended::Shutdown),
    };
    tracing::info!(id = %settings.id, "leading");
    let mut leadership = leadership;
    let view = (shared, kube);
    let result =
        lead(&mut client, &keys, &config, settings, view, &mut leadership, &mut stop, &mut known.records)
            .await;
    // Every way out resigns, so the other controller need not wait for the TTL.
    leadership.resign(&mut client).await;
    result
}

#[allow(
    clippy::too_many_arguments,
    reason = "one session's parts, each borrowed differently; a struct would only rename them"
)]
async fn lead(
    client: &mut Client,
    keys: &Keys,
    config: &NetworkConfig,
    settings: &Settings,
    (shared, kube): (&SharedView, Option<&kube::Client>),
    leadership: &mut Leadership,
    stop: &mut watch::Receiver<bool>,
    records: &mut crate::model::Records,
) -> Result<Ended> {
    let (mut fresh, rev) = store::load(client, keys, config).await?;
    fresh.keep_safe_states_from(records);
    *records = fresh;
    // The NetNamespace objects follow the records this loop committed, in a
    // task of their own that ends with this leadership.
    let (committed, committed_rx) = watch::channel(std::sync::Arc::new(records.clone()));
    let _objects = kube.map(|c| {
        let task = kube_objects::run(c.clone(), shared.clone(), keys.clone(), committed_rx);
        AbortOnDrop(tokio::spawn(task))
    });
    let mut stream = client
        .watch(keys.network_dir(), Some(WatchOptions::new().with_prefix().with_start_revision(rev + 1)))
        .await
        .context("watch the network's records")?;
    let policy = Policy::new(settings.admin_namespaces.iter().cloned());
    let mut vnis = VniAllocator::default();
    let mut subnets = SubnetAllocator::new(config);
    let mut grace = plan::SubnetGrace::new(settings.subnet_grace);
    let fence = leadership.fence.clone();
    let kube_client = kube;
    // Records changed by etcd events since the object task last got them.
    let mut dirty = false;
    loop {
        let kube = shared.snapshot();
        let now = tokio::time::Instant::now().into_std();
        let inputs = Inputs { keys, config, records, kube: &kube, policy: &policy, now };
        let writes = plan::plan(&inputs, &mut vnis, &mut subnets, &mut grace);
        // Batched: a burst of edits (or a resync) costs one round trip per
        // batch, not per record; a batch with a stale record falls back to
        // one transaction per write.
        for chunk in writes.chunks(store::BATCH) {
            if chunk.len() > 1 {
                if let Some(rev) = store::apply_batch(client, keys, config, records, chunk, &fence).await? {
                    chunk.iter().for_each(|w| log_committed(w, rev));
                    chunk.iter().for_each(|w| announce(kube_client, w, &settings.id));
                    continue;
                }
            }
            for w in chunk {
                match store::apply(client, keys, config, records, w, &fence).await? {
                    Applied::Committed(rev) => {
                        log_committed(w, rev);
                        announce(kube_client, w, &settings.id);
                    }
                    // The view changed under the plan: replan with what etcd holds now.
                    Applied::Stale => tracing::debug!(key = %w.key, "record changed meanwhile; replanning"),
                    Applied::NotLeader => return Ok(Ended::LostLeadership),
                }
            }
        }
        if dirty || !writes.is_empty() {
            committed.send_replace(std::sync::Arc::new(records.clone()));
        }
        dirty = false;
        tokio::select! {
            msg = stream.message() => {
                let resp = msg.context("etcd watch")?.context("etcd watch ended")?;
                dirty = true;
                if let Some(ended) = observe(&resp, keys, config, records, &fence)? {
                    return Ok(ended);
                }
                // Take in whatever else already arrived, so a burst of edits
                // is planned (and written) together rather than one by one.
                while let Some(msg) = stream.message().now_or_never() {
                    let resp = msg.context("etcd watch")?.context("etcd watch ended")?;
                    if let Some(ended) = observe(&resp, keys, config, records, &fence)? {
                        return Ok(ended);
                    }
                }
            }
            _ = shared.changed.notified() => {}
            // A node's subnet grace ran out: plan again to release it.
            _ = sleep_until(grace.next_deadline()) => {}
            _ = leadership.lease.lost() => return Ok(Ended::LostLeadership),
            _ = stop.wait_for(|s| *s) => return Ok(Ended::Shutdown),
        }
    }
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Feeds one etcd watch response into `records`; `Some` when leadership is gone.
fn observe(
    resp: &etcd_client::WatchResponse,
    keys: &Keys,
    config: &NetworkConfig,
    records: &mut crate::model::Records,
    fence: &store::Fence,
) -> Result<Option<Ended>> {
    if resp.canceled() {
        anyhow::bail!("etcd watch canceled (compacted at {})", resp.compact_revision());
    }
    for ev in resp.events() {
        let Some(kv) = ev.kv() else { continue };
        let Ok(key) = kv.key_str() else { continue };
        if keys.parse(key).is_some_and(|k| k.kind == KeyKind::Leader) {
            let ours = ev.event_type() == EventType::Put && kv.create_revision() == fence.create_revision;
            if !ours {
                return Ok(Some(Ended::LostLeadership));
            }
            continue;
        }
        match ev.event_type() {
            EventType::Put => {
                // Echoes of our own writes are already in `records`.
                if records_rev(records, keys, key) != Some(kv.mod_revision()) {
                    records.observe_put(keys, config, key, kv.value(), kv.mod_revision());
                }
            }
            EventType::Delete => records.observe_delete(keys, key),
        }
    }
    Ok(None)
}

/// A committed write that changed a namespace's NetID: an Event on the
/// Namespace (in the background; the Namespace is read for its uid, which
/// `kubectl describe namespace` selects its Events by).
fn announce(kube: Option<&kube::Client>, w: &plan::Write, instance: &str) {
    let (Some(client), Some(change)) = (kube, &w.tenancy) else { return };
    let (client, change, instance) = (client.clone(), change.clone(), instance.to_string());
    tokio::spawn(async move {
        use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
        use kube_view::events::{self, Happened, Reporter};
        let name = change.namespace.clone();
        let namespaces: kube::Api<Namespace> = kube::Api::all(client.clone());
        let uid = match tokio::time::timeout(Duration::from_secs(5), namespaces.get(&name)).await {
            Ok(Ok(ns)) => ns.metadata.uid,
            Ok(Err(e)) => {
                tracing::warn!(namespace = %name, error = %e, "reading the namespace for its event failed");
                None
            }
            Err(_) => None,
        };
        let object = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Namespace".into()),
            name: Some(name.clone()),
            uid,
            ..Default::default()
        };
        let by = Reporter { component: "k8s-ovs-controller".into(), instance };
        let action = match &change.action {
            etcd_schema::Action::Join(_) => "Join",
            etcd_schema::Action::Isolate => "Isolate",
            etcd_schema::Action::Global => "Global",
        };
        let what = Happened {
            type_: "Normal",
            reason: TENANCY_CHANGED,
            action: action.into(),
            message: change.message(),
        };
        let event = events::event(&name, object, &by, what, k8s_openapi::jiff::Timestamp::now());
        events::post(client, event, format!("namespace {name}"));
    });
}

/// The reason of the Event a tenancy change posts on its Namespace.
pub const TENANCY_CHANGED: &str = "TenancyChanged";

fn log_committed(w: &plan::Write, rev: i64) {
    match &w.error {
        plan::ErrorWrite::Put(e) => tracing::error!(key = %w.key, rev, "rejected edit: {}", e.error),
        plan::ErrorWrite::Clear | plan::ErrorWrite::Keep => tracing::info!(key = %w.key, rev, "{}", w.why),
    }
}

fn records_rev(records: &crate::model::Records, keys: &Keys, key: &str) -> Option<i64> {
    let k = keys.parse(key)?;
    match k.kind {
        KeyKind::NetNamespace => records.netns.get(&k.name).map(|e| e.rev),
        KeyKind::Subnet => records.subnets.get(&k.name).map(|e| e.rev),
        KeyKind::AppliedNetNamespace => records.applied.get(&k.name).map(|e| e.rev),
        KeyKind::KubeRequest => records.requests.get(&k.name).map(|e| e.rev),
        _ => None,
    }
}

/// Reads every record under the network once (for `k8s-ovs-ctl`).
pub async fn read_all(client: &mut Client, keys: &Keys) -> Result<Vec<(String, String, i64)>> {
    let resp = client
        .get(keys.network_dir(), Some(GetOptions::new().with_prefix()))
        .await
        .context("read records")?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| store::kv_text(kv).map(|(k, v)| (k.to_string(), v.to_string(), kv.mod_revision())))
        .collect())
}
