//! The pipeline one owner at a time: an event recomputes the flows of the
//! owners it touches (a pod, a namespace id, a remote node, a service), not the node's whole flow set. [`super::pipeline`]
//! stays the reference: start, restart and replay compute the whole set,
//! and the tests check that incremental updates always end where it does.
//!
//! Owners are the cookie's (category, object): every flow belongs to
//! exactly one, so the flows of a node are the union of its owners' flows.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::{
    namespace_flows, node_flows, pod_flows, refused_flows, refuses_from, refusing_vnis, remote_node_flows,
    service_flows, static_flows, to_gateway, Builder, NamespaceUse, NodeState,
};
use crate::cookie::Category;
use crate::flow::{Flow, FlowSet};
use crate::ofp::FlowOp;
use crate::reconcile;

/// Who a flow belongs to: the cookie's category and object.
pub type Owner = (Category, u32);

/// The flows of one owner in `state`, every cookie in `round`, as a group
/// ([`group`]); empty when the owner has none (a pod gone, a namespace
/// without a VNI). Namespace ids are `state.namespace_ids`, which the
/// caller keeps assigned.
pub fn owner_flows(state: &NodeState, round: u16, owner: Owner) -> Vec<Flow> {
    let mut b = Builder::group(round);
    let ids = &state.namespace_ids;
    let (category, object) = owner;
    match category {
        Category::Pipeline | Category::Node => {
            static_flows(&mut b);
            node_flows(&mut b, state);
            let mut flows = b.into_group();
            flows.retain(|f| f.cookie.category() == Some(category));
            return flows;
        }
        Category::Pod => {
            if let Some(p) = state.pods.get(&object) {
                if let Some(id) = ids.get(&p.namespace) {
                    pod_flows(&mut b, p, *id);
                }
            }
        }
        Category::NamespaceId => {
            if let Some((ns, _)) = ids.iter().find(|(_, id)| **id == object) {
                let uses = NamespaceUse {
                    pods: state.pods.values().any(|p| &p.namespace == ns),
                    services: state.services.values().any(|s| &s.namespace == ns),
                };
                return namespace_id_flows(state, round, object, ns, uses);
            }
        }
        // A tenant VNI owns its REFUSED flow (ISOLATION's are its
        // namespaces' own, so each can be counted).
        Category::Namespace => {
            if state.vnis.values().any(|v| *v == object) {
                return vni_flows(state, round, object);
            }
        }
        Category::RemoteNode => {
            let ip = Ipv4Addr::from(object);
            if let Some(n) = state.remote_nodes.get(&ip).filter(|_| ip != state.node_ip) {
                remote_node_flows(&mut b, n);
            }
        }
        Category::Service => {
            if let Some(svc) = state.services.get(&Ipv4Addr::from(object)) {
                if let Some(id) = ids.get(&svc.namespace) {
                    service_flows(&mut b, svc, *id);
                }
            }
        }
        Category::Policy => super::policy_flows(&mut b, state),
        Category::Test => {}
    }
    b.into_group()
}

/// The flows of namespace id `id`, held by `namespace` with `uses` (the
/// caller's index of them: [`owner_flows`] scans the state, the
/// [`super::NodePipeline`] keeps counts).
pub(super) fn namespace_id_flows(
    state: &NodeState,
    round: u16,
    id: u32,
    namespace: &str,
    uses: NamespaceUse,
) -> Vec<Flow> {
    let mut b = Builder::group(round);
    if let Some(vni) = state.vni_of(namespace) {
        namespace_flows(&mut b, id, vni, uses, &to_gateway(state));
    }
    b.into_group()
}

/// The flows of tenant VNI `vni`, which some namespace has (the caller's
/// index says so: [`owner_flows`] scans the state, the
/// [`super::NodePipeline`] keeps counts).
pub(super) fn vni_flows(state: &NodeState, round: u16, vni: u32) -> Vec<Flow> {
    let mut b = Builder::group(round);
    if refuses_from(state.mode, vni) {
        refused_flows(&mut b, vni);
    }
    b.into_group()
}

/// Every owner with flows in `state` (a superset is harmless).
pub(super) fn owners(state: &NodeState) -> BTreeSet<Owner> {
    let mut out = BTreeSet::from([(Category::Pipeline, 0), (Category::Node, 0)]);
    out.extend(state.pods.keys().map(|p| (Category::Pod, *p)));
    out.extend(state.namespace_ids.values().map(|id| (Category::NamespaceId, *id)));
    out.extend(state.remote_nodes.keys().map(|ip| (Category::RemoteNode, u32::from(*ip))));
    out.extend(state.services.keys().map(|ip| (Category::Service, u32::from(*ip))));
    out.extend(refusing_vnis(state).into_iter().map(|v| (Category::Namespace, v)));
    if !state.policies.policies.is_empty() {
        out.insert((Category::Policy, 0));
    }
    out
}

/// The owners whose flows may differ between two states; `None` when a
/// node-wide setting changed (mode, addresses, ranges): then every flow may.
/// The agent knows what its events touch and names them directly; this is
/// the diff the tests check those against.
pub fn touched(old: &NodeState, new: &NodeState) -> Option<BTreeSet<Owner>> {
    let node_wide = |s: &NodeState| {
        (s.mode, s.node_ip, s.subnet, s.gateway_ip, s.gateway_mac, s.cluster_cidr, s.service_cidr)
    };
    if node_wide(old) != node_wide(new) {
        return None;
    }
    let mut out = BTreeSet::new();
    let ns_owners = |s: &NodeState, ns: &str, out: &mut BTreeSet<Owner>| {
        if let Some(id) = s.namespace_ids.get(ns) {
            out.insert((Category::NamespaceId, *id));
        }
    };
    for port in old.pods.keys().chain(new.pods.keys()) {
        let (a, b) = (old.pods.get(port), new.pods.get(port));
        if a != b {
            out.insert((Category::Pod, *port));
            for (s, p) in [(old, a), (new, b)] {
                if let Some(p) = p {
                    ns_owners(s, &p.namespace, &mut out);
                }
            }
        }
    }
    for ip in old.services.keys().chain(new.services.keys()) {
        let (a, b) = (old.services.get(ip), new.services.get(ip));
        if a != b {
            out.insert((Category::Service, u32::from(*ip)));
            for (s, svc) in [(old, a), (new, b)] {
                if let Some(svc) = svc {
                    ns_owners(s, &svc.namespace, &mut out);
                }
            }
        }
    }
    for ip in old.remote_nodes.keys().chain(new.remote_nodes.keys()) {
        if old.remote_nodes.get(ip) != new.remote_nodes.get(ip) {
            out.insert((Category::RemoteNode, u32::from(*ip)));
        }
    }
    let namespaces: BTreeSet<&String> = old.vnis.keys().chain(new.vnis.keys()).collect();
    for ns in namespaces {
        let (a, b) = (old.vnis.get(ns), new.vnis.get(ns));
        if a != b {
            ns_owners(old, ns, &mut out);
            ns_owners(new, ns, &mut out);
            // The VNI left and the one taken: REFUSED's flow of each may
            // come or go.
            out.extend(a.into_iter().chain(b).map(|v| (Category::Namespace, *v)));
        }
    }
    // A namespace whose id changed: its own flows and every pod's and
    // service's of it (they carry the id).
    let with_ids: BTreeSet<&String> = old.namespace_ids.keys().chain(new.namespace_ids.keys()).collect();
    for ns in with_ids {
        if old.namespace_ids.get(ns) != new.namespace_ids.get(ns) {
            ns_owners(old, ns, &mut out);
            ns_owners(new, ns, &mut out);
            out.extend(new.pods.values().filter(|p| &p.namespace == ns).map(|p| (Category::Pod, p.ofport)));
            out.extend(
                new.services
                    .values()
                    .filter(|s| &s.namespace == ns)
                    .map(|s| (Category::Service, u32::from(s.ip))),
            );
        }
    }
    // Policy flows depend on the view and on which pods are local.
    let with_policies = !old.policies.policies.is_empty() || !new.policies.policies.is_empty();
    if old.policies != new.policies || (with_policies && old.pods != new.pods) {
        out.insert((Category::Policy, 0));
    }
    Some(out)
}

/// A node's flows kept by owner, changed owner by owner.
#[derive(Debug, Clone)]
pub struct Incremental {
    round: u16,
    /// Each owner's few flows as a group ([`group`]): a map per owner
    /// would reserve room for eleven flows in each of the 20,000 owners of
    /// a large node (the scale model: 107 MiB instead of about 20).
    groups: BTreeMap<Owner, Vec<Flow>>,
}

/// An owner's flows as the pipeline keeps them: sorted by identity (a
/// [`FlowSet`]'s order, so two groups diff in one walk), each identity once
/// (the last flow given for it, as a set's insert keeps), exact capacity.
pub(super) fn group(mut flows: Vec<Flow>) -> Vec<Flow> {
    flows.sort_by(|a, b| a.identity().cmp(&b.identity()));
    // `later` comes after `kept` in the vector: it replaces it.
    flows.dedup_by(|later, kept| {
        let same = later.identity() == kept.identity();
        if same {
            std::mem::swap(later, kept);
        }
        same
    });
    flows.shrink_to_fit();
    flows
}

impl Incremental {
    /// The whole flow set of `state`, grouped by owner.
    pub fn new(state: &NodeState, round: u16) -> Incremental {
        Incremental::of(round, owners(state), |owner| owner_flows(state, round, owner))
    }

    /// The flows of `owners`, from `flows_of`.
    pub(super) fn of(
        round: u16,
        owners: impl IntoIterator<Item = Owner>,
        mut flows_of: impl FnMut(Owner) -> Vec<Flow>,
    ) -> Incremental {
        let mut inc = Incremental { round, groups: BTreeMap::new() };
        for owner in owners {
            let flows = flows_of(owner);
            if !flows.is_empty() {
                inc.groups.insert(owner, flows);
            }
        }
        inc
    }

    /// Every flow (for tests and benchmarks: it copies them all).
    pub fn flows(&self) -> FlowSet {
        self.groups.values().flatten().cloned().collect()
    }

    /// How many flows the node holds.
    pub fn len(&self) -> usize {
        self.groups.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// How many flows one owner has.
    pub fn len_of(&self, owner: Owner) -> usize {
        self.groups.get(&owner).map_or(0, Vec::len)
    }

    /// Whether a flow of `flow`'s owner and identity is held.
    pub fn holds(&self, flow: &Flow) -> bool {
        let Some(category) = flow.cookie.category() else { return false };
        let key = flow.key();
        self.groups.get(&(category, flow.cookie.object())).is_some_and(|g| g.iter().any(|f| f.key() == key))
    }

    /// `state` changed in ways that touch only `owners`: their flows are
    /// recomputed, and the operations that take the switch from the old
    /// flows to the new are returned. The cost is that of the owners
    /// touched, not of the node.
    pub fn update<'a>(
        &mut self,
        state: &NodeState,
        owners: impl IntoIterator<Item = &'a Owner>,
    ) -> Vec<FlowOp> {
        let round = self.round;
        self.update_with(owners, |owner| owner_flows(state, round, owner))
    }

    /// [`Incremental::update`] with the owners' new flows from `flows_of`
    /// (each a [`group`]).
    pub(super) fn update_with<'a>(
        &mut self,
        owners: impl IntoIterator<Item = &'a Owner>,
        mut flows_of: impl FnMut(Owner) -> Vec<Flow>,
    ) -> Vec<FlowOp> {
        let mut ops = Vec::new();
        for owner in owners {
            let new = flows_of(*owner);
            // One search of the 20,000 owners, not a remove and an insert.
            match self.groups.entry(*owner) {
                Entry::Occupied(mut held) => {
                    ops.append(&mut reconcile::delta_sorted(held.get(), &new));
                    if new.is_empty() {
                        held.remove();
                    } else {
                        *held.get_mut() = new;
                    }
                }
                Entry::Vacant(none) => {
                    ops.append(&mut reconcile::delta_sorted(&[], &new));
                    if !new.is_empty() {
                        none.insert(new);
                    }
                }
            }
        }
        ops
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cookie::Cookie;
    use crate::flow::{Action, Match};

    /// A group is a set's flows in a set's order: sorted by identity, and
    /// for an identity given twice the later flow, as a set's insert keeps.
    #[test]
    fn a_group_holds_what_a_set_of_the_same_flows_holds() {
        let f = |port: u32, out: u32| {
            Flow::new(
                3,
                100,
                Cookie::new(1, Category::Pod, port),
                Match::new().in_port(port),
                vec![Action::Output(out)],
            )
        };
        let flows = vec![f(9, 1), f(4, 1), f(9, 2), f(7, 1), f(4, 3), f(9, 4)];
        let set: FlowSet = flows.iter().cloned().collect();
        let g = group(flows);
        assert_eq!(g, set.iter().cloned().collect::<Vec<_>>());
        assert_eq!(g.capacity(), g.len());
    }
}
