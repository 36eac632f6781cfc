//! A node's pipeline kept current one event at a time: the agent's core.
//!
//! [`NodePipeline`] holds the node's state, its namespace ids and its flows
//! grouped by owner ([`Incremental`]). Each event (a pod put or removed, the
//! VNIs, remote nodes or services as etcd and the apiserver now give them)
//! changes the state, gives or frees namespace ids exactly as
//! [`NodeState::assign_namespace_ids`] would, recomputes the flows of the
//! owners it touches and returns the operations that take the switch from
//! the flows before to the flows after. Its cost is that of what the event
//! touches (plus, for the maps, one comparison of the old map with the new),
//! never that of the node's flow count. A new pipeline (start, restart,
//! replay, a mode change) is computed owner by owner by the same code.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::ids::FreeIds;
use super::incremental::{namespace_id_flows, owner_flows, owners, vni_flows, Incremental, Owner};
use super::{LocalPod, Mode, NamespaceUse, NodeState, RemoteNode, Service};
use crate::cookie::Category;
use crate::flow::{Flow, FlowSet};
use crate::ofp::FlowOp;
use crate::reconcile;

/// How many of the node's pods and services a namespace has (one with
/// neither has no id).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Uses {
    pods: usize,
    services: usize,
}

impl Uses {
    fn any(self) -> bool {
        self.pods > 0 || self.services > 0
    }
}

/// A node's state and flows, changed event by event.
#[derive(Debug, Clone)]
pub struct NodePipeline {
    state: NodeState,
    round: u16,
    flows: Incremental,
    /// By namespace, for those with pods or services here.
    uses: BTreeMap<String, Uses>,
    /// Namespace id -> namespace (the inverse of `state.namespace_ids`).
    by_id: BTreeMap<u32, String>,
    /// Ids neither assigned nor reserved.
    free_ids: FreeIds,
    /// Tenant VNI -> how many namespaces of the cluster have it (a VNI
    /// has a REFUSED flow while it has one).
    vni_users: BTreeMap<u32, usize>,
}

/// What the index knows of the namespaces, for computing an owner's flows.
struct Index<'a> {
    state: &'a NodeState,
    round: u16,
    uses: &'a BTreeMap<String, Uses>,
    by_id: &'a BTreeMap<u32, String>,
    vni_users: &'a BTreeMap<u32, usize>,
}

impl Index<'_> {
    fn flows_of(&self, owner: Owner) -> Vec<Flow> {
        match owner {
            (Category::NamespaceId, id) => match self.by_id.get(&id) {
                Some(ns) => {
                    let u = self.uses.get(ns).copied().unwrap_or_default();
                    let uses = NamespaceUse { pods: u.pods > 0, services: u.services > 0 };
                    namespace_id_flows(self.state, self.round, id, ns, uses)
                }
                None => Vec::new(),
            },
            // Looked up in the counts, not by scanning the cluster's namespaces.
            (Category::Namespace, vni) => match self.vni_users.contains_key(&vni) {
                true => vni_flows(self.state, self.round, vni),
                false => Vec::new(),
            },
            _ => owner_flows(self.state, self.round, owner),
        }
    }
}

/// The keys whose values differ between two maps, with the new value
/// (`None`: gone), by one walk of both in order.
fn changes<K: Ord + Clone, V: PartialEq + Clone>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
) -> Vec<(K, Option<V>)> {
    use std::cmp::Ordering::*;
    let mut out = Vec::new();
    let (mut a, mut b) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return out,
            (Some(&(ka, _)), None) => {
                out.push((ka.clone(), None));
                a.next();
            }
            (None, Some(&(kb, vb))) => {
                out.push((kb.clone(), Some(vb.clone())));
                b.next();
            }
            (Some(&(ka, va)), Some(&(kb, vb))) => match ka.cmp(kb) {
                Less => {
                    out.push((ka.clone(), None));
                    a.next();
                }
                Greater => {
                    out.push((kb.clone(), Some(vb.clone())));
                    b.next();
                }
                Equal => {
                    if va != vb {
                        out.push((kb.clone(), Some(vb.clone())));
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
}

/// What one event changed, for [`NodePipeline::settle`].
#[derive(Default)]
struct Change {
    owners: BTreeSet<Owner>,
    /// Namespaces whose pods changed (their ISOLATION flow may change too).
    pod_namespaces: BTreeSet<String>,
    /// Namespaces whose services changed.
    service_namespaces: BTreeSet<String>,
}

impl NodePipeline {
    /// The whole pipeline of `state`; namespaces in use get ids (those the
    /// state has are kept).
    pub fn new(mut state: NodeState, round: u16) -> NodePipeline {
        state.assign_namespace_ids();
        let mut uses: BTreeMap<String, Uses> = BTreeMap::new();
        for p in state.pods.values() {
            uses.entry(p.namespace.clone()).or_default().pods += 1;
        }
        for s in state.services.values() {
            uses.entry(s.namespace.clone()).or_default().services += 1;
        }
        let by_id: BTreeMap<u32, String> =
            state.namespace_ids.iter().map(|(ns, id)| (*id, ns.clone())).collect();
        let free_ids =
            FreeIds::without(state.namespace_ids.values().chain(&state.reserved_namespace_ids).copied());
        let mut vni_users: BTreeMap<u32, usize> = BTreeMap::new();
        for v in super::refusing_vnis_of_each(&state) {
            *vni_users.entry(v).or_default() += 1;
        }
        let index = Index { state: &state, round, uses: &uses, by_id: &by_id, vni_users: &vni_users };
        let flows = Incremental::of(round, owners(&state), |o| index.flows_of(o));
        NodePipeline { state, round, flows, uses, by_id, free_ids, vni_users }
    }

    pub fn state(&self) -> &NodeState {
        &self.state
    }

    /// The cookie round of every flow.
    pub fn round(&self) -> u16 {
        self.round
    }

    /// Every flow (a copy: for the whole-set paths, not per event).
    pub fn flows(&self) -> FlowSet {
        self.flows.flows()
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether the pipeline has a flow of `flow`'s owner and identity
    /// (whatever its round and actions).
    pub fn holds(&self, flow: &Flow) -> bool {
        self.flows.holds(flow)
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// How many NetworkPolicy flows the node holds.
    pub fn policy_flow_count(&self) -> usize {
        self.flows.len_of((Category::Policy, 0))
    }

    /// A pod added, or changed (its meter, or another pod at its ofport).
    pub fn put_pod(&mut self, pod: LocalPod) -> Vec<FlowOp> {
        if self.state.pods.get(&pod.ofport) == Some(&pod) {
            return Vec::new();
        }
        let mut change = self.pod_change();
        change.owners.insert((Category::Pod, pod.ofport));
        change.pod_namespaces.insert(pod.namespace.clone());
        self.count_pod(&pod.namespace, true);
        if let Some(old) = self.state.pods.insert(pod.ofport, pod) {
            self.count_pod(&old.namespace, false);
            change.pod_namespaces.insert(old.namespace);
        }
        self.settle(change)
    }

    /// A pod gone (unknown ofport: nothing to do).
    pub fn remove_pod(&mut self, ofport: u32) -> Vec<FlowOp> {
        let Some(old) = self.state.pods.remove(&ofport) else { return Vec::new() };
        let mut change = self.pod_change();
        change.owners.insert((Category::Pod, ofport));
        self.count_pod(&old.namespace, false);
        change.pod_namespaces.insert(old.namespace);
        self.settle(change)
    }

    /// A local pod's change: with policies, their flows too (which pods are
    /// local decides which rules this node enforces).
    fn pod_change(&self) -> Change {
        let mut change = Change::default();
        if !self.state.policies.policies.is_empty() {
            change.owners.insert((Category::Policy, 0));
        }
        change
    }

    /// The cluster's NetworkPolicies and what they select, as they are now.
    /// Its cost is that of the node's policy flows (one owner), never of the
    /// rest of the pipeline. Put the view first when a pod arrives, so the
    /// pod's flows and its policy's go out in one bundle.
    pub fn set_policies(&mut self, view: std::sync::Arc<crate::policy::PolicyView>) -> Vec<FlowOp> {
        if *self.state.policies == *view {
            return Vec::new();
        }
        self.state.policies = view;
        self.recompute(&BTreeSet::from([(Category::Policy, 0)]))
    }

    /// A pod of `ns` comes (`true`) or goes: its namespace's count.
    fn count_pod(&mut self, ns: &str, comes: bool) {
        let u = &mut self.uses.entry(ns.to_string()).or_default().pods;
        *u = if comes { *u + 1 } else { u.saturating_sub(1) };
    }

    /// The namespaces' VNIs as they are now (the whole map: etcd's view).
    pub fn set_vnis(&mut self, vnis: &BTreeMap<String, u32>) -> Vec<FlowOp> {
        let changed = changes(&self.state.vnis, vnis);
        self.update_vnis(changed)
    }

    /// Some namespaces' VNIs (`None`: it has none), the others unchanged:
    /// what a reader of etcd's change log knows.
    pub fn update_vnis(&mut self, vnis: impl IntoIterator<Item = (String, Option<u32>)>) -> Vec<FlowOp> {
        let mut owners = BTreeSet::new();
        for (ns, vni) in vnis {
            if self.state.vnis.get(&ns).copied() != vni {
                self.change_vni(&ns, vni, &mut owners);
            }
        }
        self.recompute(&owners)
    }

    /// Sets a VNI, naming the owners whose flows that changes: the
    /// namespace's id flows (its ISOLATION flows among them), and REFUSED's
    /// flows of the VNI it leaves and the one it takes.
    fn change_vni(&mut self, ns: &str, vni: Option<u32>, owners: &mut BTreeSet<Owner>) {
        let old = match vni {
            Some(v) => self.state.vnis.insert(ns.to_string(), v),
            None => self.state.vnis.remove(ns),
        };
        if let Some(id) = self.state.namespace_ids.get(ns) {
            owners.insert((Category::NamespaceId, *id));
        }
        let mode = self.state.mode;
        let tenant = |v: &u32| super::refuses_from(mode, *v);
        if let Some(v) = old.filter(tenant) {
            if let Some(n) = self.vni_users.get_mut(&v) {
                *n -= 1;
                if *n == 0 {
                    self.vni_users.remove(&v);
                }
            }
            owners.insert((Category::Namespace, v));
        }
        if let Some(v) = vni.filter(tenant) {
            *self.vni_users.entry(v).or_default() += 1;
            owners.insert((Category::Namespace, v));
        }
    }

    /// The other nodes as they are now (this node among them is ignored).
    pub fn set_remote_nodes(&mut self, nodes: &BTreeMap<Ipv4Addr, RemoteNode>) -> Vec<FlowOp> {
        let changed = changes(&self.state.remote_nodes, nodes);
        self.update_remote_nodes(changed)
    }

    /// Some other nodes (`None`: gone), the others unchanged.
    pub fn update_remote_nodes(
        &mut self,
        nodes: impl IntoIterator<Item = (Ipv4Addr, Option<RemoteNode>)>,
    ) -> Vec<FlowOp> {
        let mut owners = BTreeSet::new();
        for (ip, node) in nodes {
            if self.state.remote_nodes.get(&ip) != node.as_ref() {
                self.change_remote_node(ip, node, &mut owners);
            }
        }
        self.recompute(&owners)
    }

    fn change_remote_node(&mut self, ip: Ipv4Addr, node: Option<RemoteNode>, owners: &mut BTreeSet<Owner>) {
        owners.insert((Category::RemoteNode, u32::from(ip)));
        match node {
            Some(n) => self.state.remote_nodes.insert(ip, n),
            None => self.state.remote_nodes.remove(&ip),
        };
    }

    /// The services as they are now (the whole map: the apiserver's view).
    pub fn set_services(&mut self, services: &BTreeMap<Ipv4Addr, Service>) -> Vec<FlowOp> {
        let changed = changes(&self.state.services, services);
        self.update_services(changed)
    }

    /// Some services (`None`: gone), the others unchanged: one batch, so a
    /// namespace keeps its id when one of its services goes as another
    /// comes.
    pub fn update_services(
        &mut self,
        services: impl IntoIterator<Item = (Ipv4Addr, Option<Service>)>,
    ) -> Vec<FlowOp> {
        let mut change = Change::default();
        for (ip, svc) in services {
            if self.state.services.get(&ip) != svc.as_ref() {
                self.change_service(ip, svc, &mut change);
            }
        }
        self.settle(change)
    }

    fn change_service(&mut self, ip: Ipv4Addr, service: Option<Service>, change: &mut Change) {
        change.owners.insert((Category::Service, u32::from(ip)));
        if let Some(s) = &service {
            self.uses.entry(s.namespace.clone()).or_default().services += 1;
            change.service_namespaces.insert(s.namespace.clone());
        }
        let old = match service {
            Some(s) => self.state.services.insert(ip, s),
            None => self.state.services.remove(&ip),
        };
        if let Some(old) = old {
            self.uses.entry(old.namespace.clone()).or_default().services -= 1;
            change.service_namespaces.insert(old.namespace);
        }
    }

    /// The tenancy mode: every flow may change, so the pipeline is computed
    /// anew (namespace ids kept).
    pub fn set_mode(&mut self, mode: Mode) -> Vec<FlowOp> {
        if self.state.mode == mode {
            return Vec::new();
        }
        let before = self.flows.flows();
        let mut state = self.state.clone();
        state.mode = mode;
        *self = NodePipeline::new(state, self.round);
        reconcile::delta(&before, &self.flows.flows())
    }

    /// The ids kept reserved since a restart (for service flows not known
    /// yet) may be given out again. No flow changes.
    pub fn release_reserved_ids(&mut self) {
        for id in std::mem::take(&mut self.state.reserved_namespace_ids) {
            if !self.by_id.contains_key(&id) {
                self.free_ids.give(id);
            }
        }
    }

    /// Frees the ids of the namespaces the change left unused, gives ids to
    /// those it brought into use (in name order, lowest free id first: what
    /// `assign_namespace_ids` does), and recomputes what it touched.
    fn settle(&mut self, mut change: Change) -> Vec<FlowOp> {
        let namespaces: BTreeSet<&String> =
            change.pod_namespaces.iter().chain(&change.service_namespaces).collect();
        for ns in &namespaces {
            if let Some(id) = self.state.namespace_ids.get(*ns) {
                change.owners.insert((Category::NamespaceId, *id));
            }
            if !self.uses.get(*ns).is_some_and(|u| u.any()) {
                self.uses.remove(*ns);
                if let Some(id) = self.state.namespace_ids.remove(*ns) {
                    self.by_id.remove(&id);
                    self.free_ids.give(id);
                }
            }
        }
        for ns in namespaces {
            if self.uses.contains_key(ns) && !self.state.namespace_ids.contains_key(ns) {
                // Four billion namespaces on one node would exhaust the ids:
                // the namespace then has none (reaches nothing), as unknown.
                if let Some(id) = self.free_ids.take_lowest() {
                    self.state.namespace_ids.insert(ns.clone(), id);
                    self.by_id.insert(id, ns.clone());
                    change.owners.insert((Category::NamespaceId, id));
                }
            }
        }
        self.recompute(&change.owners)
    }

    fn recompute(&mut self, owners: &BTreeSet<Owner>) -> Vec<FlowOp> {
        let index = Index {
            state: &self.state,
            round: self.round,
            uses: &self.uses,
            by_id: &self.by_id,
            vni_users: &self.vni_users,
        };
        self.flows.update_with(owners, |o| index.flows_of(o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_name_added_changed_and_removed_keys_only() {
        let old = BTreeMap::from([(1, 'a'), (2, 'b'), (4, 'd')]);
        let new = BTreeMap::from([(2, 'B'), (3, 'c'), (4, 'd'), (5, 'e')]);
        assert_eq!(changes(&old, &new), vec![(1, None), (2, Some('B')), (3, Some('c')), (5, Some('e'))]);
        assert!(changes(&new, &new).is_empty());
    }
}
