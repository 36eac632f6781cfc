//! The agent's view of Kubernetes: ClusterIP services (for the SERVICE
//! table) and its pods' bandwidth annotations. Watched with kube-rs's
//! watcher through a reflector (`kube_view::reflect`: list + watch, relist on
//! 410, backoff on errors, complete lists only); published, like the etcd
//! view, as the latest complete map through a `tokio::sync::watch` channel.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service as KubeService};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use ovs_flows::pipeline::{Protocol, Service, ServicePort};
use tokio::sync::watch;

use crate::pods::PodName;

/// Services by cluster IP.
pub type ServiceMap = BTreeMap<Ipv4Addr, Service>;

/// The pipeline's view of a Kubernetes Service: `None` for services without
/// an IPv4 cluster IP (headless, ExternalName, IPv6).
pub fn to_service(svc: &KubeService) -> Option<Service> {
    let spec = svc.spec.as_ref()?;
    let ip: Ipv4Addr = spec.cluster_ip.as_deref()?.parse().ok()?;
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                _ => return None, // SCTP: not carried by the pipeline
            };
            Some(ServicePort { protocol, port: u16::try_from(p.port).ok()? })
        })
        .collect();
    Some(Service { ip, namespace: svc.namespace().unwrap_or_default(), ports })
}

/// The service map of `services` (a Service's clusterIP is immutable, so the
/// IP is a stable key).
pub fn service_map(services: &[Arc<KubeService>]) -> ServiceMap {
    services.iter().filter_map(|s| to_service(s)).map(|svc| (svc.ip, svc)).collect()
}

/// Replaces `current` with `new` if they differ; whether it did (for
/// `watch::Sender::send_if_modified`, so an unchanged view wakes no one).
fn replace_if_changed<T: PartialEq>(current: &mut T, new: T) -> bool {
    let changed = *current != new;
    if changed {
        *current = new;
    }
    changed
}

/// Runs forever: keeps `out` equal to the cluster's ClusterIP services. The
/// first map sent is the first complete list, even an empty one: the agent
/// keeps the switch's service flows until it has it. Every later one is a
/// complete map too (a relist is swapped in whole), sent when it changed.
pub async fn run_services(client: Client, out: watch::Sender<ServiceMap>) {
    let api: Api<KubeService> = Api::all(client);
    let mut listed = false;
    kube_view::reflect(api, watcher::Config::default(), |services| {
        publish_services(&out, &mut listed, service_map(&services))
    })
    .await
}

/// Sends the first complete map always (it is what "services known" means
/// to the agent, however empty), every later one when it changed.
fn publish_services(out: &watch::Sender<ServiceMap>, listed: &mut bool, map: ServiceMap) {
    if std::mem::replace(listed, true) {
        out.send_if_modified(|current| replace_if_changed(current, map));
    } else {
        out.send_replace(map);
    }
}

/// The bandwidth annotations of this node's pods, by pod.
pub type PodAnnotations = BTreeMap<PodName, BTreeMap<String, String>>;

/// Only the annotations the agent acts on, so unrelated pod updates do not
/// wake the loop.
pub fn bandwidth_annotations(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| {
            k.as_str() == crate::bandwidth::INGRESS_ANNOTATION
                || k.as_str() == crate::bandwidth::EGRESS_ANNOTATION
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The bandwidth annotations of `pods`, by (namespace, name).
pub fn pod_annotations(pods: &[Arc<Pod>]) -> PodAnnotations {
    pods.iter()
        .map(|p| (PodName::new(p.namespace().unwrap_or_default(), p.name_any()), bandwidth_annotations(p)))
        .collect()
}

/// Runs forever: keeps `out` equal to the bandwidth annotations of the pods
/// scheduled on `node_name` (watch with `fieldSelector=spec.nodeName=`),
/// always a complete list, sent when it changed.
pub async fn run_pods(client: Client, node_name: String, out: watch::Sender<PodAnnotations>) {
    let api: Api<Pod> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    kube_view::reflect(api, cfg, |pods| {
        out.send_if_modified(|current| replace_if_changed(current, pod_annotations(&pods)));
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ip_services_become_pipeline_services() {
        let svc: KubeService = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "red"},
            "spec": {"clusterIP": "10.96.5.5", "ports": [
                {"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}, {"port": 9, "protocol": "SCTP"}, {"port": 81}
            ]}
        }))
        .unwrap();
        let s = to_service(&svc).unwrap();
        assert_eq!(s.ip.to_string(), "10.96.5.5");
        assert_eq!(s.namespace, "red");
        assert_eq!(s.ports.len(), 3);
        let headless: KubeService = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "h", "namespace": "red"}, "spec": {"clusterIP": "None"}
        }))
        .unwrap();
        assert!(to_service(&headless).is_none());
    }

    fn service(name: &str, ip: &str) -> Arc<KubeService> {
        let svc = serde_json::json!({
            "metadata": {"name": name, "namespace": "red"},
            "spec": {"clusterIP": ip, "ports": [{"port": 80}]}
        });
        Arc::new(serde_json::from_value(svc).unwrap())
    }

    #[test]
    fn the_service_map_holds_the_cluster_ip_services_by_ip() {
        let map = service_map(&[service("web", "10.96.0.10"), service("headless", "None")]);
        assert_eq!(map.keys().map(|ip| ip.to_string()).collect::<Vec<_>>(), ["10.96.0.10"]);
    }

    #[test]
    fn the_first_service_map_is_sent_even_empty_later_ones_when_changed() {
        let (tx, mut rx) = watch::channel(ServiceMap::new());
        let mut listed = false;
        publish_services(&tx, &mut listed, ServiceMap::new());
        assert!(rx.has_changed().unwrap(), "the first (empty) list must mark services known");
        rx.borrow_and_update();
        publish_services(&tx, &mut listed, ServiceMap::new());
        assert!(!rx.has_changed().unwrap(), "an unchanged map wakes no one");
        publish_services(&tx, &mut listed, service_map(&[service("web", "10.96.0.10")]));
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().len(), 1);
    }

    #[test]
    fn pods_are_keyed_by_namespace_and_name_with_only_bandwidth_annotations() {
        let pod: Pod = serde_json::from_value(serde_json::json!({"metadata": {
            "name": "p", "namespace": "red",
            "annotations": {"kubernetes.io/ingress-bandwidth": "1M", "other": "x"}
        }}))
        .unwrap();
        let got = pod_annotations(&[Arc::new(pod)]);
        let a = &got[&PodName::new("red", "p")];
        assert_eq!(a.keys().collect::<Vec<_>>(), [crate::bandwidth::INGRESS_ANNOTATION]);
    }
}
