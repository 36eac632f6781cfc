//! Watches of Namespaces and Nodes (kube-rs `watcher`, which relists after a
//! 410 Gone and backs off on errors), folded into the shared `KubeView`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use tokio::sync::Notify;

use crate::leader::AbortOnDrop;
use crate::model::KubeView;

/// The view shared by the watch tasks and the controller loop; `changed` is
/// notified after every change.
#[derive(Clone, Default)]
pub struct SharedView {
    pub view: Arc<Mutex<KubeView>>,
    pub changed: Arc<Notify>,
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
    }
}

/// The node's InternalIP (the address K8S-OVS keys its subnet by).
pub fn node_ip(node: &Node) -> Option<Ipv4Addr> {
    let addrs = node.status.as_ref()?.addresses.as_ref()?;
    addrs.iter().filter(|a| a.type_ == "InternalIP").find_map(|a| a.address.parse().ok())
}

/// Starts both watches; they run until the returned guards are dropped.
pub fn spawn(client: Client, shared: SharedView) -> Vec<AbortOnDrop<()>> {
    let ns_shared = shared.clone();
    let ns_api: Api<Namespace> = Api::all(client.clone());
    let namespaces = tokio::spawn(async move {
        let mut buffer = BTreeSet::new();
        let mut stream = watcher(ns_api, watcher::Config::default()).default_backoff().boxed();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(Event::Init) => buffer.clear(),
                Ok(Event::InitApply(ns)) => {
                    buffer.insert(ns.name_any());
                }
                Ok(Event::InitDone) => {
                    let listed = std::mem::take(&mut buffer);
                    tracing::debug!(count = listed.len(), "namespaces listed");
                    ns_shared.update(|v| v.namespaces = Some(listed));
                }
                Ok(Event::Apply(ns)) => ns_shared.update(|v| {
                    v.namespaces.get_or_insert_with(BTreeSet::new).insert(ns.name_any());
                }),
                Ok(Event::Delete(ns)) => ns_shared.update(|v| {
                    if let Some(set) = v.namespaces.as_mut() {
                        set.remove(&ns.name_any());
                    }
                }),
                Err(e) => tracing::warn!("namespace watch: {e}; retrying with backoff"),
            }
        }
    });
    let node_api: Api<Node> = Api::all(client);
    let nodes = tokio::spawn(async move {
        let mut buffer = BTreeMap::new();
        let mut stream = watcher(node_api, watcher::Config::default()).default_backoff().boxed();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(Event::Init) => buffer.clear(),
                Ok(Event::InitApply(n)) => {
                    buffer.insert(n.name_any(), node_ip(&n));
                }
                Ok(Event::InitDone) => {
                    let listed = std::mem::take(&mut buffer);
                    shared.update(|v| v.nodes = Some(listed));
                }
                Ok(Event::Apply(n)) => shared.update(|v| {
                    v.nodes.get_or_insert_with(BTreeMap::new).insert(n.name_any(), node_ip(&n));
                }),
                Ok(Event::Delete(n)) => shared.update(|v| {
                    if let Some(map) = v.nodes.as_mut() {
                        map.remove(&n.name_any());
                    }
                }),
                Err(e) => tracing::warn!("node watch: {e}; retrying with backoff"),
            }
        }
    });
    vec![AbortOnDrop(namespaces), AbortOnDrop(nodes)]
}
