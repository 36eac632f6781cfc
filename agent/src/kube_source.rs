//! The agent's view of Kubernetes: ClusterIP services (for the SERVICE
//! table). Watched with kube-rs's watcher (list + watch, relist on 410,
//! backoff on errors); published, like the etcd view, as the latest complete
//! map through a `tokio::sync::watch` channel.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service as KubeService;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use ovs_flows::pipeline::{Protocol, Service, ServicePort};
use tokio::sync::watch;
use tracing::{info, warn};

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

/// Runs forever: keeps `out` equal to the cluster's ClusterIP services.
pub async fn run_services(client: Client, out: watch::Sender<ServiceMap>) {
    let api: Api<KubeService> = Api::all(client);
    let mut stream = watcher::watcher(api, watcher::Config::default()).default_backoff().boxed();
    // Objects of a relist are buffered and swapped in at InitDone, so a
    // relist never shows a half-empty map (which would drop service flows).
    let mut relist: Option<ServiceMap> = None;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(Event::Init) => relist = Some(ServiceMap::new()),
            Ok(Event::InitApply(s)) => {
                if let (Some(m), Some(svc)) = (relist.as_mut(), to_service(&s)) {
                    m.insert(svc.ip, svc);
                }
            }
            Ok(Event::InitDone) => {
                if let Some(m) = relist.take() {
                    info!(services = m.len(), "services listed");
                    out.send_replace(m);
                }
            }
            // A Service's clusterIP is immutable, so the IP is a stable key.
            Ok(Event::Apply(s)) => {
                if let Some(svc) = to_service(&s) {
                    out.send_modify(|m| {
                        m.insert(svc.ip, svc);
                    });
                }
            }
            Ok(Event::Delete(s)) => {
                if let Some(svc) = to_service(&s) {
                    out.send_modify(|m| {
                        m.remove(&svc.ip);
                    });
                }
            }
            Err(e) => warn!(error = %e, "service watch error; retrying with backoff"),
        }
    }
}

/// The bandwidth annotations of this node's pods, by (namespace, name).
pub type PodAnnotations = BTreeMap<(String, String), BTreeMap<String, String>>;

/// Only the annotations the agent acts on, so unrelated pod updates do not
/// wake the loop.
pub fn bandwidth_annotations(pod: &k8s_openapi::api::core::v1::Pod) -> BTreeMap<String, String> {
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

/// Runs forever: keeps `out` equal to the bandwidth annotations of the pods
/// scheduled on `node_name` (watch with `fieldSelector=spec.nodeName=`).
pub async fn run_pods(client: Client, node_name: String, out: watch::Sender<PodAnnotations>) {
    use k8s_openapi::api::core::v1::Pod;
    let api: Api<Pod> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
    let mut relist: Option<PodAnnotations> = None;
    let key = |p: &Pod| (p.namespace().unwrap_or_default(), p.name_any());
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(Event::Init) => relist = Some(PodAnnotations::new()),
            Ok(Event::InitApply(p)) => {
                if let Some(m) = relist.as_mut() {
                    m.insert(key(&p), bandwidth_annotations(&p));
                }
            }
            Ok(Event::InitDone) => {
                if let Some(m) = relist.take() {
                    out.send_if_modified(|cur| std::mem::replace(cur, m.clone()) != m);
                }
            }
            Ok(Event::Apply(p)) => {
                let (k, v) = (key(&p), bandwidth_annotations(&p));
                out.send_if_modified(|m| m.insert(k, v.clone()).as_ref() != Some(&v));
            }
            Ok(Event::Delete(p)) => {
                let k = key(&p);
                out.send_if_modified(|m| m.remove(&k).is_some());
            }
            Err(e) => warn!(error = %e, "pod watch error; retrying with backoff"),
        }
    }
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
}
