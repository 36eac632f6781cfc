//! `k8s-ovs-ctl --via kube`: the same actions through the Kubernetes API,
//! as a tenant-network admin with kubectl makes them: the spec of the
//! namespace's NetNamespace object set on the resourceVersion it was read at
//! (a 409 Conflict reads it again), then, with `--wait`, the object watched
//! until its status says the controller took that generation. No etcd
//! credentials needed: the apiserver's RBAC decides who may ask.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use etcd_schema::Action;
use futures::StreamExt;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::runtime::watcher;
use kube::Api;
use serde_json::{json, Value};

use crate::ctl::{NamespaceRow, Outcome};
use crate::netns_object::{NetNamespaceObject, APPLIED, IN_SYNC};

/// The Kubernetes client of `--kube-url` (no credentials), else the
/// kubeconfig or in-cluster config.
pub async fn client(kube_url: Option<&str>) -> Result<kube::Client> {
    let config = match kube_url {
        Some(url) => kube::Config::new(url.parse().context("--kube-url")?),
        None => kube::Config::infer().await.context("no --kube-url and no kubeconfig")?,
    };
    kube::Client::try_from(config).context("kube client")
}

pub fn api(client: kube::Client) -> Api<NetNamespaceObject> {
    Api::all(client)
}

/// The spec that asks `action`.
pub fn spec_of(action: &Action) -> Value {
    match action {
        Action::Join(to) => json!({"action": "join", "target": to}),
        Action::Isolate => json!({"action": "isolate"}),
        Action::Global => json!({"action": "global"}),
    }
}

/// A request written: the object (uid) and generation that ask it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    Request {
        uid: String,
        generation: i64,
    },
    /// The object asked this already, was answered, and the network is so.
    Already {
        net_id: Option<u32>,
    },
}

fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// The condition `type_` of a status, as (status, reason, message).
fn condition<'a>(status: Option<&'a Value>, type_: &str) -> Option<(&'a str, &'a str, &'a str)> {
    let c = status?["conditions"].as_array()?.iter().find(|c| c["type"] == type_)?;
    Some((c["status"].as_str()?, c["reason"].as_str().unwrap_or(""), c["message"].as_str().unwrap_or("")))
}

fn observed(o: &NetNamespaceObject) -> Option<i64> {
    o.status.as_ref()?["observedGeneration"].as_i64()
}

fn net_id(o: &NetNamespaceObject) -> Option<u32> {
    o.status.as_ref()?["netID"].as_u64().and_then(|v| u32::try_from(v).ok())
}

/// Sets `namespace`'s object to ask `action`. The apiserver bumps the
/// generation only when the spec changes, so a spec that already asks it
/// (and lost to an etcd edit since, or was superseded) is asked again by
/// re-creating the object: a new uid is a new request.
pub async fn request(api: &Api<NetNamespaceObject>, namespace: &str, action: &Action) -> Result<Asked> {
    let want = spec_of(action);
    loop {
        let Some(mut obj) = api.get_opt(namespace).await.context("read the NetNamespace")? else {
            let mut fresh = NetNamespaceObject::view(namespace);
            fresh.spec = Some(want.clone());
            match api.create(&PostParams::default(), &fresh).await {
                Ok(o) => return asked(&o),
                // The controller made its view meanwhile: set its spec.
                Err(e) if code(&e) == Some(409) => continue,
                Err(e) => return Err(e).context("create the NetNamespace"),
            }
        };
        if obj.spec.as_ref() == Some(&want) {
            let generation = obj.metadata.generation.unwrap_or(0);
            if observed(&obj).is_none_or(|g| g < generation) {
                return asked(&obj); // not answered yet: wait for it
            }
            let answered_in_sync = condition(obj.status.as_ref(), APPLIED).is_some_and(|c| c.0 == "True")
                && condition(obj.status.as_ref(), IN_SYNC).is_some_and(|c| c.0 == "True");
            if answered_in_sync {
                return Ok(Asked::Already { net_id: net_id(&obj) });
            }
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: obj.metadata.uid.clone(),
                    resource_version: obj.metadata.resource_version.clone(),
                }),
                ..DeleteParams::default()
            };
            match api.delete(namespace, &dp).await {
                Ok(_) => continue,
                Err(e) if matches!(code(&e), Some(404 | 409)) => continue,
                Err(e) => return Err(e).context("re-create the NetNamespace to ask again"),
            }
        }
        obj.spec = Some(want.clone());
        // On the resourceVersion read: never over an edit not seen.
        match api.replace(namespace, &PostParams::default(), &obj).await {
            Ok(o) => return asked(&o),
            Err(e) if matches!(code(&e), Some(404 | 409)) => continue,
            Err(e) => return Err(e).context("write the NetNamespace's spec"),
        }
    }
}

fn asked(o: &NetNamespaceObject) -> Result<Asked> {
    let uid = o.metadata.uid.clone().context("the apiserver returned an object without uid")?;
    Ok(Asked::Request { uid, generation: o.metadata.generation.unwrap_or(0) })
}

/// How the controller answered the request, from the object's status once
/// its observedGeneration reaches it.
pub fn answer(o: &NetNamespaceObject, uid: &str, generation: i64) -> Option<Result<Outcome>> {
    if o.metadata.uid.as_deref() != Some(uid) {
        return Some(Err(anyhow::anyhow!("the NetNamespace was re-created meanwhile (another request)")));
    }
    if observed(o).is_none_or(|g| g < generation) {
        return None;
    }
    let (status, reason, message) = condition(o.status.as_ref(), APPLIED)?;
    Some(Ok(match status {
        "True" => Outcome::Applied(net_id(o).unwrap_or_default()),
        _ => Outcome::Rejected(format!("{reason}: {message}")),
    }))
}

/// Watches `namespace`'s object until the controller answered `asked`.
pub async fn wait(
    api: &Api<NetNamespaceObject>,
    namespace: &str,
    (uid, generation): (&str, i64),
    timeout: Duration,
) -> Result<Outcome> {
    let config = watcher::Config::default().fields(&format!("metadata.name={namespace}"));
    let answered = async {
        let mut events = std::pin::pin!(watcher(api.clone(), config));
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                    if let Some(a) = answer(&o, uid, generation) {
                        return a;
                    }
                }
                Ok(watcher::Event::Delete(_)) => {
                    bail!("the NetNamespace was deleted before the controller answered")
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "watch of the NetNamespace failed; watching again"),
            }
        }
        bail!("the watch of the NetNamespace ended")
    };
    tokio::time::timeout(timeout, answered)
        .await
        .with_context(|| format!("the controller did not answer within {timeout:?}; is it running?"))?
}

/// Every object's status, as `k8s-ovs-ctl list` prints it.
pub async fn list(api: &Api<NetNamespaceObject>) -> Result<Vec<NamespaceRow>> {
    let objects = api.list(&Default::default()).await.context("list NetNamespaces")?;
    Ok(objects
        .items
        .iter()
        .map(|o| {
            let text = |field: &str| {
                o.status.as_ref().and_then(|s| s[field].as_str()).unwrap_or_default().to_string()
            };
            NamespaceRow {
                namespace: o.metadata.name.clone().unwrap_or_default(),
                net_id: net_id(o),
                pending: text("pending"),
                error: text("lastError"),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(uid: &str, generation: i64, status: Value) -> NetNamespaceObject {
        serde_json::from_value(json!({
            "metadata": {"name": "red", "uid": uid, "generation": generation},
            "spec": {"action": "global"},
            "status": status,
        }))
        .expect("object")
    }

    #[test]
    fn the_answer_is_the_applied_condition_of_the_generation_asked() {
        let applied = json!({"netID": 0, "observedGeneration": 3,
            "conditions": [{"type": "Applied", "status": "True", "reason": "Applied", "message": "global: NetID 0"}]});
        assert!(answer(&obj("u", 3, json!({"observedGeneration": 2})), "u", 3).is_none(), "not yet");
        assert!(matches!(answer(&obj("u", 3, applied.clone()), "u", 3), Some(Ok(Outcome::Applied(0)))));
        let refused = json!({"observedGeneration": 3,
            "conditions": [{"type": "Applied", "status": "False", "reason": "Rejected", "message": "no"}]});
        match answer(&obj("u", 3, refused), "u", 3) {
            Some(Ok(Outcome::Rejected(m))) => assert_eq!(m, "Rejected: no"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(answer(&obj("v", 1, applied), "u", 3), Some(Err(_))), "re-created");
    }

    #[test]
    fn specs_are_what_the_crd_describes() {
        assert_eq!(spec_of(&Action::Join("b".into())), json!({"action": "join", "target": "b"}));
        for a in [Action::Join("b".into()), Action::Isolate, Action::Global] {
            let spec = spec_of(&a);
            assert_eq!(crate::netns_object::asked("a", Some(&spec)), Ok(Some(a)));
        }
    }
}
