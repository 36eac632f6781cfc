//! Warnings the agent posts on a pod as Kubernetes Events, so whoever
//! edited the pod sees what went wrong in `kubectl describe pod` (the log
//! and the metrics are the node's view; the Event is the pod owner's).
//! Fire and forget: an API server that is slow or refuses costs a log line,
//! never the agent loop's time.

use k8s_openapi::api::core::v1::{Event, ObjectReference, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client};
use kube_view::events::{self, Happened, Reporter};
use tracing::warn;

/// Why the agent warns (the Event's `reason`).
pub const INVALID_BANDWIDTH: &str = "InvalidBandwidth";

/// The Event for `pod` (its uid ties it to this incarnation of the pod).
pub fn warning(pod: &Pod, node: &str, reason: &'static str, message: &str, now: Timestamp) -> Event {
    let (ns, name) = (pod.metadata.namespace.clone(), pod.metadata.name.clone().unwrap_or_default());
    let object = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: ns.clone(),
        name: Some(name),
        uid: pod.metadata.uid.clone(),
        resource_version: pod.metadata.resource_version.clone(),
        ..Default::default()
    };
    let by = Reporter { component: "k8s-ovs-agent".into(), instance: node.into() };
    let what = Happened { type_: "Warning", reason, action: "Shape".into(), message: message.into() };
    events::event(ns.as_deref().unwrap_or_default(), object, &by, what, now)
}

/// Posts a warning on `namespace/name` in the background.
pub fn warn_pod(
    client: Client,
    node: String,
    namespace: String,
    name: String,
    reason: &'static str,
    message: String,
) {
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        let about = format!("{namespace}/{name}");
        match tokio::time::timeout(std::time::Duration::from_secs(5), pods.get(&name)).await {
            Ok(Ok(pod)) => {
                events::post(client, warning(&pod, &node, reason, &message, Timestamp::now()), about)
            }
            Ok(Err(e)) => warn!(pod = %about, error = %e, "reading the pod for its event failed"),
            Err(_) => warn!(pod = %about, "reading the pod for its event timed out"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_warning_points_at_this_incarnation_of_the_pod() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web-1".into());
        pod.metadata.namespace = Some("shop".into());
        pod.metadata.uid = Some("u-1".into());
        let e = warning(&pod, "n1", INVALID_BANDWIDTH, "bad value", Timestamp::UNIX_EPOCH);
        assert_eq!(e.metadata.generate_name.as_deref(), Some("web-1."));
        assert_eq!(e.metadata.namespace.as_deref(), Some("shop"));
        let o = &e.involved_object;
        assert_eq!(
            (o.kind.as_deref(), o.name.as_deref(), o.uid.as_deref()),
            (Some("Pod"), Some("web-1"), Some("u-1"))
        );
        assert_eq!((e.type_.as_deref(), e.reason.as_deref()), (Some("Warning"), Some("InvalidBandwidth")));
        assert_eq!(e.source.and_then(|s| s.host).as_deref(), Some("n1"));
    }
}
