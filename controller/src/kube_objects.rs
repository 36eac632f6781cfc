//! The leader's writes to the NetNamespace objects (`object_plan` decides
//! them): views created, objects of gone namespaces deleted, statuses
//! replaced on the resourceVersion they were derived from. A task of its own,
//! so a slow or absent apiserver never holds up etcd: it runs beside the
//! leader loop, from the records the loop last committed, and ends with the
//! leadership.

use std::sync::Arc;
use std::time::Duration;

use etcd_schema::Keys;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::{Api, Client};
use ovs_flows::backoff::Backoff;
use tokio::sync::watch;

use crate::kube_watch::SharedView;
use crate::model::Records;
use crate::netns_object::NetNamespaceObject;
use crate::object_plan::{plan_objects, ObjectOp};

/// RFC 3339 now, as the apiserver stores times (whole seconds, UTC).
fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Runs until aborted: after every change of the records (`records`, sent
/// by the leader loop after its writes) or of the Kubernetes view, carries
/// out what `plan_objects` asks; failures are retried with backoff.
pub async fn run(client: Client, shared: SharedView, keys: Keys, mut records: watch::Receiver<Arc<Records>>) {
    let api: Api<NetNamespaceObject> = Api::all(client);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let snapshot = records.borrow_and_update().clone();
        let ops = plan_objects(&keys, &snapshot, &shared.snapshot(), &now());
        let mut failed = false;
        for op in &ops {
            if let Err(e) = apply(&api, op).await {
                tracing::warn!("NetNamespace {}: {e}", name_of(op));
                failed = true;
            }
        }
        let retry = if failed { Some(backoff.next_delay()) } else { None };
        if !failed {
            backoff.reset();
        }
        tokio::select! {
            r = records.changed() => if r.is_err() { return },
            _ = shared.objects_changed.notified() => {}
            _ = sleep(retry) => {}
        }
    }
}

async fn sleep(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

fn name_of(op: &ObjectOp) -> &str {
    match op {
        ObjectOp::Create { name } | ObjectOp::Delete { name, .. } | ObjectOp::Status { name, .. } => name,
    }
}

/// 404 and 409: the object changed (or went) since the view was taken; the
/// watch brings the new one and the plan is made again.
fn changed_meanwhile(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404 || s.code == 409)
}

async fn apply(api: &Api<NetNamespaceObject>, op: &ObjectOp) -> Result<(), kube::Error> {
    let result = match op {
        ObjectOp::Create { name } => {
            api.create(&PostParams::default(), &NetNamespaceObject::view(name)).await.map(|_| ())
        }
        ObjectOp::Delete { name, uid } => {
            // On its uid: never a newer object of the same name.
            let dp = DeleteParams {
                preconditions: Some(Preconditions { uid: Some(uid.clone()), resource_version: None }),
                ..DeleteParams::default()
            };
            api.delete(name, &dp).await.map(|_| ())
        }
        ObjectOp::Status { name, resource_version, status } => {
            let mut object = NetNamespaceObject::view(name);
            object.metadata.resource_version = Some(resource_version.clone());
            object.status = Some(status.clone());
            api.replace_status(name, &PostParams::default(), &object).await.map(|_| ())
        }
    };
    match result {
        Err(e) if changed_meanwhile(&e) => {
            tracing::debug!(object = name_of(op), "changed meanwhile: {e}");
            Ok(())
        }
        Ok(()) => {
            match op {
                ObjectOp::Create { name } => tracing::info!(object = %name, "created the NetNamespace view"),
                ObjectOp::Delete { name, .. } => {
                    tracing::info!(object = %name, "deleted the NetNamespace of a namespace that is gone")
                }
                ObjectOp::Status { .. } => {}
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}
