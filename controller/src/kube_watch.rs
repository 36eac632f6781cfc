//! Watches of Namespaces, Nodes and NetNamespace objects (kube-rs `watcher`
//! through a reflector, `kube_view::reflect`: relists after a 410 Gone, backs
//! off on errors, and hands over complete lists only), folded into the
//! shared `KubeView`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::ListParams;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tokio::sync::Notify;

use crate::leader::AbortOnDrop;
use crate::model::KubeView;
use crate::netns_object::{NetNamespaceObject, ObjectView};

/// The view shared by the watch tasks, the controller loop and its object
/// task; `changed` (the loop's) and `objects_changed` (the object task's)
/// are notified after every change: each waiter has its own.
#[derive(Clone, Default)]
pub struct SharedView {
    pub view: Arc<Mutex<KubeView>>,
    pub changed: Arc<Notify>,
    pub objects_changed: Arc<Notify>,
}

impl SharedView {
    pub fn snapshot(&self) -> KubeView {
        self.view.lock().map(|v| v.clone()).unwrap_or_default()
    }

    fn update(&self, f: impl FnOnce(&mut KubeView)) {
        if let Ok(mut v) = self.view.lock() {
            f(&mut v);
        }
        self.changed.notify_one();
        self.objects_changed.notify_one();
    }
}

/// The node's InternalIP (the address K8S-OVS keys its subnet by).
pub fn node_ip(node: &Node) -> Option<Ipv4Addr> {
    let addrs = node.status.as_ref()?.addresses.as_ref()?;
    addrs.iter().filter(|a| a.type_ == "InternalIP").find_map(|a| a.address.parse().ok())
}

/// The names of `namespaces`.
pub fn namespace_names(namespaces: &[Arc<Namespace>]) -> BTreeSet<String> {
    namespaces.iter().map(|ns| ns.name_any()).collect()
}

/// Node name -> InternalIP of `nodes`.
pub fn node_ips(nodes: &[Arc<Node>]) -> BTreeMap<String, Option<Ipv4Addr>> {
    nodes.iter().map(|n| (n.name_any(), node_ip(n))).collect()
}

/// NetNamespace objects by name.
pub fn object_views(objects: &[Arc<NetNamespaceObject>]) -> BTreeMap<String, ObjectView> {
    objects.iter().map(|o| (o.name_any(), ObjectView::of(o))).collect()
}

/// Starts the three watches; they run until the returned guards are dropped.
/// Where the NetNamespace CRD is not installed (or RBAC refuses it), its
/// watch retries with backoff and the view's `objects` stays `None`: etcd
/// edits still work.
/// Each change replaces its part of the view with the reflector's complete
/// list, so the controller plans on whole lists only (a partial one after
/// a relist would look like deleted namespaces and nodes).
pub fn spawn(client: Client, shared: SharedView) -> Vec<AbortOnDrop<()>> {
    let ns_shared = shared.clone();
    let ns_api: Api<Namespace> = Api::all(client.clone());
    let namespaces = tokio::spawn(kube_view::reflect(ns_api, watcher::Config::default(), move |all| {
        ns_shared.update(|v| v.namespaces = Some(namespace_names(&all)))
    }));
    let node_api: Api<Node> = Api::all(client.clone());
    let node_shared = shared.clone();
    let nodes = tokio::spawn(kube_view::reflect(node_api, watcher::Config::default(), move |all| {
        node_shared.update(|v| v.nodes = Some(node_ips(&all)))
    }));
    let object_api: Api<NetNamespaceObject> = Api::all(client);
    let not_served = tokio::spawn(not_served(object_api.clone(), shared.clone()));
    let objects = tokio::spawn(kube_view::reflect(object_api, watcher::Config::default(), move |all| {
        shared.update(|v| v.objects = Some(object_views(&all)))
    }));
    vec![AbortOnDrop(namespaces), AbortOnDrop(nodes), AbortOnDrop(not_served), AbortOnDrop(objects)]
}

/// Where the NetNamespace CRD is not installed (404) or RBAC refuses it
/// (403), says so once: no object asks anything, and etcd's actions, which
/// wait for the objects' first list, go ahead. Should the CRD come later,
/// the reflector's first list replaces this empty view.
async fn not_served(api: Api<NetNamespaceObject>, shared: SharedView) {
    let mut backoff = ovs_flows::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => return, // served: the reflector publishes the list
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 403 => {
                tracing::warn!(
                    "NetNamespace objects are not served ({} {}): tenant actions through etcd only; install deploy/base/netnamespace-crd.yaml and the controller's RBAC for them",
                    s.code,
                    s.reason
                );
                shared.update(|v| {
                    v.objects.get_or_insert_with(BTreeMap::new);
                });
                return;
            }
            Err(e) => {
                tracing::debug!("NetNamespace list: {e}; trying again");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, addresses: serde_json::Value) -> Arc<Node> {
        let n = serde_json::json!({"metadata": {"name": name}, "status": {"addresses": addresses}});
        Arc::new(serde_json::from_value(n).unwrap())
    }

    #[test]
    fn nodes_are_keyed_by_name_with_their_internal_ip() {
        let nodes = [
            node(
                "a",
                serde_json::json!([
                    {"type": "Hostname", "address": "a"},
                    {"type": "InternalIP", "address": "fd00::1"},
                    {"type": "InternalIP", "address": "10.0.0.1"}
                ]),
            ),
            node("b", serde_json::json!([{"type": "ExternalIP", "address": "192.0.2.1"}])),
        ];
        let ips = node_ips(&nodes);
        assert_eq!(ips.get("a"), Some(&Some(Ipv4Addr::new(10, 0, 0, 1))));
        assert_eq!(ips.get("b"), Some(&None));
    }

    #[test]
    fn namespaces_are_their_names() {
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": "red"}})).unwrap();
        assert_eq!(namespace_names(&[Arc::new(ns)]), BTreeSet::from(["red".to_string()]));
    }
}
