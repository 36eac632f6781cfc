//! Kubernetes Events, fire and forget: the agent's warnings on pods (an
//! invalid bandwidth annotation), the controller's tenancy changes on
//! namespaces. Whoever owns the object sees them in `kubectl describe`;
//! an API server that is slow or refuses costs a log line, never the
//! caller's time.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tracing::{debug, warn};

/// Who reports (the Event's source and reporting fields).
#[derive(Debug, Clone)]
pub struct Reporter {
    /// `k8s-ovs-agent`, `k8s-ovs-controller`.
    pub component: String,
    /// The node (agent) or the controller's instance id.
    pub instance: String,
}

/// What happened to `object`.
#[derive(Debug, Clone)]
pub struct Happened {
    /// `Normal` or `Warning`.
    pub type_: &'static str,
    /// CamelCase, machine-readable (`InvalidBandwidth`, `TenancyChanged`).
    pub reason: &'static str,
    /// What was done (`Shape`, `Join`, `Isolate`, `Global`).
    pub action: String,
    pub message: String,
}

/// The Event about `object`, stored in `namespace` (a namespaced object's
/// own; for a cluster-scoped one, where its owner looks: a Namespace's
/// Events go in that namespace).
pub fn event(
    namespace: &str,
    object: ObjectReference,
    by: &Reporter,
    what: Happened,
    now: Timestamp,
) -> Event {
    let name = object.name.clone().unwrap_or_default();
    Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}.")),
            namespace: Some(namespace.to_string()),
            ..Default::default()
        },
        involved_object: object,
        reason: Some(what.reason.into()),
        message: Some(what.message),
        type_: Some(what.type_.into()),
        source: Some(EventSource { component: Some(by.component.clone()), host: Some(by.instance.clone()) }),
        reporting_component: Some(by.component.clone()),
        reporting_instance: Some(by.instance.clone()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        action: Some(what.action),
        count: Some(1),
        ..Default::default()
    }
}

/// Posts `event` in the background (5 s at most), logging the outcome;
/// `about` names the object in the log.
pub fn post(client: Client, event: Event, about: String) {
    tokio::spawn(async move {
        let namespace = event.metadata.namespace.clone().unwrap_or_default();
        let events: Api<Event> = Api::namespaced(client, &namespace);
        let reason = event.reason.clone().unwrap_or_default();
        match tokio::time::timeout(Duration::from_secs(5), events.create(&PostParams::default(), &event))
            .await
        {
            Ok(Ok(_)) => debug!(object = %about, %reason, "event posted"),
            Ok(Err(e)) => warn!(object = %about, error = %e, "posting the event failed"),
            Err(_) => warn!(object = %about, "posting the event timed out"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_names_its_object_reporter_and_reason() {
        let object = ObjectReference {
            kind: Some("Namespace".into()),
            name: Some("red".into()),
            uid: Some("u-1".into()),
            ..Default::default()
        };
        let by = Reporter { component: "k8s-ovs-controller".into(), instance: "c1".into() };
        let what = Happened {
            type_: "Normal",
            reason: "TenancyChanged",
            action: "Join".into(),
            message: "m".into(),
        };
        let e = event("red", object, &by, what, Timestamp::UNIX_EPOCH);
        assert_eq!(e.metadata.generate_name.as_deref(), Some("red."));
        assert_eq!(e.metadata.namespace.as_deref(), Some("red"));
        assert_eq!(e.involved_object.kind.as_deref(), Some("Namespace"));
        assert_eq!((e.type_.as_deref(), e.reason.as_deref()), (Some("Normal"), Some("TenancyChanged")));
        assert_eq!(e.source.and_then(|s| s.host).as_deref(), Some("c1"));
        assert_eq!(e.reporting_component.as_deref(), Some("k8s-ovs-controller"));
    }
}
