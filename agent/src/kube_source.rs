//! The agent's view of Kubernetes: ClusterIP services (for the SERVICE
//! table) and its pods' bandwidth annotations. Watched with kube-rs's
//! watcher through a reflector (`kube_view`: list + watch, relist on 410,
//! backoff on errors, complete lists only); published, like the etcd view,
//! as the latest complete view through a `tokio::sync::watch` channel. The
//! services (10,000 in a large cluster) are kept change by change, with a
//! log of the cluster IPs that changed (`change_log`), so neither this task
//! nor the agent's loop walks all of them for one service's change.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service as KubeService};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use kube_view::Change;
use ovs_flows::pipeline::{Protocol, Service, ServicePort};
use tokio::sync::watch;

use crate::change_log::ChangeLog;
use crate::pods::PodName;

/// Services by cluster IP.
pub type ServiceMap = BTreeMap<Ipv4Addr, Service>;

/// A Service object's identity.
type ServiceName = (String, String);

/// The cluster's ClusterIP services, as the pipeline sees them.
#[derive(Debug, Clone, Default)]
pub struct Services {
    pub map: ServiceMap,
    /// Which object holds each IP (one that is deleted and re-created may
    /// come back with another, and for a moment two may claim one).
    owner: BTreeMap<Ipv4Addr, ServiceName>,
    by_name: BTreeMap<ServiceName, Ipv4Addr>,
    /// The cluster IPs whose entry changed.
    pub changes: ChangeLog<Ipv4Addr>,
}

impl Services {
    /// Every service at once (a list): readers compare the whole map.
    pub fn listed(services: &[Arc<KubeService>]) -> Services {
        let mut s = Services::default();
        for svc in services {
            s.applied(svc);
        }
        s.changes.reset();
        s
    }

    /// A whole map without the objects behind it (tests and benchmarks:
    /// later changes may name new objects only).
    pub fn of(map: ServiceMap) -> Services {
        let mut s = Services { map, ..Services::default() };
        s.changes.reset();
        s
    }

    /// Followed by `prev`'s readers: its numbering goes on, and they compare
    /// the whole map once.
    fn relisted(prev: &Services, services: &[Arc<KubeService>]) -> Services {
        let mut s = Services::listed(services);
        s.changes = prev.changes.clone();
        s.changes.reset();
        s
    }

    /// A Service added or changed; whether the pipeline's view changed.
    pub fn applied(&mut self, svc: &KubeService) -> bool {
        let name = (svc.namespace().unwrap_or_default(), svc.name_any());
        let new = to_service(svc);
        let current = self.by_name.get(&name).and_then(|ip| self.map.get(ip));
        if current == new.as_ref() {
            return false;
        }
        self.deleted_name(&name);
        if let Some(new) = new {
            if let Some(other) = self.owner.insert(new.ip, name.clone()) {
                self.by_name.remove(&other);
            }
            self.by_name.insert(name, new.ip);
            self.changes.push(new.ip);
            self.map.insert(new.ip, new);
        }
        true
    }

    /// A Service deleted; whether the pipeline's view changed.
    pub fn deleted(&mut self, svc: &KubeService) -> bool {
        self.deleted_name(&(svc.namespace().unwrap_or_default(), svc.name_any()))
    }

    fn deleted_name(&mut self, name: &ServiceName) -> bool {
        let Some(ip) = self.by_name.remove(name) else { return false };
        if self.owner.get(&ip) == Some(name) {
            self.owner.remove(&ip);
            self.map.remove(&ip);
            self.changes.push(ip);
        }
        true
    }
}

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
/// first view sent is the first complete list, even an empty one: the agent
/// keeps the switch's service flows until it has it. Every relist is sent
/// whole; a change after it only when the pipeline's view changed (an
/// update of a headless Service or of labels wakes no one).
pub async fn run_services(client: Client, out: watch::Sender<Services>) {
    let api: Api<KubeService> = Api::all(client);
    kube_view::reflect_changes(api, watcher::Config::default(), |change| publish_services(&out, change)).await
}

fn publish_services(out: &watch::Sender<Services>, change: Change<KubeService>) {
    match change {
        Change::Listed(all) => out.send_modify(|s| *s = Services::relisted(s, &all)),
        Change::Applied(svc) => {
            out.send_if_modified(|s| s.applied(&svc));
        }
        Change::Deleted(svc) => {
            out.send_if_modified(|s| s.deleted(&svc));
        }
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
    use crate::change_log::LogReader;

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
        let s = Services::listed(&[service("web", "10.96.0.10"), service("headless", "None")]);
        assert_eq!(s.map.keys().map(|ip| ip.to_string()).collect::<Vec<_>>(), ["10.96.0.10"]);
    }

    /// A reader of the published services: what changed since its last read
    /// (`None`: the whole map).
    fn read(rx: &mut watch::Receiver<Services>, reader: &mut LogReader) -> Option<Vec<String>> {
        let s = rx.borrow_and_update();
        reader.read(&s.changes).map(|c| c.into_iter().map(|ip| ip.to_string()).collect())
    }

    #[test]
    fn the_first_list_is_sent_even_empty_then_only_changes_the_pipeline_sees() {
        let (tx, mut rx) = watch::channel(Services::default());
        let mut reader = LogReader::default();
        publish_services(&tx, Change::Listed(vec![]));
        assert!(rx.has_changed().unwrap(), "the first (empty) list must mark services known");
        assert_eq!(read(&mut rx, &mut reader), None, "a list: compare the whole map");
        publish_services(&tx, Change::Applied(service("headless", "None")));
        assert!(!rx.has_changed().unwrap(), "a headless service changes nothing the pipeline sees");
        publish_services(&tx, Change::Applied(service("web", "10.96.0.10")));
        assert_eq!(read(&mut rx, &mut reader), Some(vec!["10.96.0.10".into()]));
        publish_services(&tx, Change::Applied(service("web", "10.96.0.10")));
        assert!(!rx.has_changed().unwrap(), "the same service again wakes no one");
        // Deleted and re-created with another IP: both IPs changed.
        publish_services(&tx, Change::Deleted(service("web", "10.96.0.10")));
        publish_services(&tx, Change::Applied(service("web", "10.96.0.11")));
        assert_eq!(read(&mut rx, &mut reader), Some(vec!["10.96.0.10".into(), "10.96.0.11".into()]));
        assert_eq!(rx.borrow().map.keys().map(|ip| ip.to_string()).collect::<Vec<_>>(), ["10.96.0.11"]);
        // Two objects claim one IP for a moment: the IP stays the later one's
        // until that one goes.
        publish_services(&tx, Change::Applied(service("web2", "10.96.0.11")));
        publish_services(&tx, Change::Deleted(service("web", "10.96.0.11")));
        assert_eq!(rx.borrow().map.len(), 1, "web's delete leaves web2's IP");
        publish_services(&tx, Change::Deleted(service("web2", "10.96.0.11")));
        assert!(rx.borrow().map.is_empty());
        publish_services(&tx, Change::Listed(vec![service("dns", "10.96.0.10")]));
        assert_eq!(read(&mut rx, &mut reader), None, "a relist: compare the whole map");
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
