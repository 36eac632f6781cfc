//! What each counting flow of the pipeline counts. The switch keeps packet
//! and byte counters per flow; the flows below are split per namespace id
//! (or per pod) so that their counters are per-tenant traffic, without a
//! table of their own (`docs/operations.md`, "Tenant traffic"). The agent
//! reads them with flow stats and names the namespace or pod of the flow's
//! owner (cookie object: the namespace id, the pod's ofport, the VNI), or
//! for a NetworkPolicy isolation drop the pod of the address it matches.

use super::{Table, GATEWAY_OFPORT};
use crate::cookie::Category;
use crate::flow::{Flow, Ipv4Prefix};
use crate::policy::compile::PRIORITY_ISOLATED;

/// The priorities of the counting flows (the pipeline builds them with
/// these; [`counted`] reads them back by them).
pub(super) mod prio {
    /// ISOLATION: from the namespace's own VNI (not global).
    pub const FROM_OWN_VNI: u16 = 200;
    /// ISOLATION: a global namespace receiving from any other VNI.
    pub const FROM_OTHER_VNI: u16 = 305;
    /// ISOLATION: from a global sender.
    pub const FROM_GLOBAL: u16 = 310;
    /// ISOLATION: from another tenant, on to REFUSED.
    pub const REFUSED: u16 = 100;
    /// REFUSED: what ISOLATION refused from one VNI, dropped.
    pub const REFUSED_FROM: u16 = 100;
    /// ROUTING: out of the cluster (below the cluster range's 100).
    pub const LEAVING: u16 = 60;
    /// SPOOF_GUARD: anything else from the pod's port, dropped.
    pub const SPOOFED: u16 = 10;
    /// SOURCE_VNI: what the namespace's pods send (IP and ARP).
    pub const SENT: u16 = 100;
}

/// What a counting flow's counters are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Counted {
    /// Everything the namespace's pods on this node sent into the switch
    /// (SOURCE_VNI; their service traffic coming back DNATed from the node
    /// is not counted twice).
    Sent,
    /// What they sent out of the pod network (ROUTING to the node, which
    /// routes and masquerades it).
    SentOutside,
    /// Delivered to its pods from pods of its own VNI (ISOLATION).
    ReceivedOwnVni,
    /// Delivered to its pods from global senders: global namespaces' pods,
    /// the node, outside the cluster.
    ReceivedGlobal,
    /// Delivered to a global namespace's pods from tenants' pods.
    ReceivedOtherVni,
    /// Refused to its pods: another tenant's (ISOLATION's verdict).
    Refused,
    /// Refused to another tenant's pods, sent from this VNI (REFUSED's
    /// drop, on the destination's node). The object is the VNI.
    RefusedFromVni,
    /// Refused to a local pod by its NetworkPolicy ingress isolation (the
    /// priority-50 drop of INGRESS_POLICY). The object is the pod's IPv4.
    PolicyRefusedIngress,
    /// Refused from a local pod by its NetworkPolicy egress isolation (the
    /// priority-50 drop of EGRESS_POLICY). The object is the pod's IPv4.
    PolicyRefusedEgress,
    /// Dropped at a pod's port: forged MAC or IP, forged ARP, VLAN tags,
    /// other protocols (SPOOF_GUARD). The object is the pod's ofport.
    Spoofed,
}

/// What `flow` counts, with its object (a namespace id; for
/// [`Counted::Spoofed`] a pod's ofport, for [`Counted::RefusedFromVni`] a
/// VNI, for the policy drops the isolated pod's IPv4); `None` for every
/// other flow.
pub fn counted(flow: &Flow) -> Option<(Counted, u32)> {
    let object = flow.cookie.object();
    let category = flow.cookie.category()?;
    let table = Table::from_id(flow.table)?;
    // A policy isolation drop matches its pod's address alone.
    let host = |p: Option<Ipv4Prefix>| p.filter(|p| p.is_host()).map(|p| u32::from(p.addr()));
    let kind = match (category, table, flow.priority) {
        (Category::Policy, Table::IngressPolicy, PRIORITY_ISOLATED) => {
            return Some((Counted::PolicyRefusedIngress, host(flow.m.nw_dst)?))
        }
        (Category::Policy, Table::EgressPolicy, PRIORITY_ISOLATED) => {
            return Some((Counted::PolicyRefusedEgress, host(flow.m.nw_src)?))
        }
        (Category::Namespace, Table::Refused, prio::REFUSED_FROM) => Counted::RefusedFromVni,
        (Category::Pod, Table::SpoofGuard, prio::SPOOFED) => Counted::Spoofed,
        // Not the priority-200 flow: that is the pod's service traffic
        // coming back from the node after kube-proxy's DNAT, sent already.
        (Category::NamespaceId, Table::SourceVni, prio::SENT) if flow.m.in_port != Some(GATEWAY_OFPORT) => {
            Counted::Sent
        }
        (Category::NamespaceId, Table::Routing, prio::LEAVING) => Counted::SentOutside,
        (Category::NamespaceId, Table::Isolation, prio::FROM_OWN_VNI) => Counted::ReceivedOwnVni,
        (Category::NamespaceId, Table::Isolation, prio::FROM_GLOBAL) => Counted::ReceivedGlobal,
        (Category::NamespaceId, Table::Isolation, prio::FROM_OTHER_VNI) => Counted::ReceivedOtherVni,
        (Category::NamespaceId, Table::Isolation, prio::REFUSED) => Counted::Refused,
        _ => return None,
    };
    Some((kind, object))
}

/// The tables (and owner category) holding counting flows: what a reader
/// asks the switch for.
pub const COUNTING_TABLES: [(Table, Category); 7] = [
    (Table::SpoofGuard, Category::Pod),
    (Table::SourceVni, Category::NamespaceId),
    (Table::EgressPolicy, Category::Policy),
    (Table::Routing, Category::NamespaceId),
    (Table::Isolation, Category::NamespaceId),
    (Table::Refused, Category::Namespace),
    (Table::IngressPolicy, Category::Policy),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::pipeline;
    use std::collections::BTreeMap;

    /// Every counting flow of a node is found, once per namespace (and pod)
    /// and kind, and no other flow is taken for one.
    #[test]
    fn every_namespace_and_pod_has_its_counting_flows() {
        let s = crate::samples::tenant_node(
            &[(3, "red"), (4, "red"), (5, "blue"), (6, "kube-system")],
            &[("red", 100), ("blue", 200), ("kube-system", 0)],
        );
        let mut got: BTreeMap<(Counted, u32), usize> = BTreeMap::new();
        for f in pipeline(&s, 1).iter() {
            if let Some(c) = counted(f) {
                assert!(COUNTING_TABLES.contains(&(
                    Table::from_id(f.table).expect("table"),
                    f.cookie.category().expect("ours")
                )));
                *got.entry(c).or_default() += 1;
            }
        }
        let (red, blue, sys) =
            (s.namespace_ids["red"], s.namespace_ids["blue"], s.namespace_ids["kube-system"]);
        use Counted::*;
        let mut want = BTreeMap::new();
        for port in [3, 4, 5, 6] {
            want.insert((Spoofed, port), 1);
        }
        for id in [red, blue, sys] {
            // SOURCE_VNI's IP and ARP flows.
            want.insert((Sent, id), 2);
            want.insert((SentOutside, id), 1);
            want.insert((ReceivedGlobal, id), 1);
            want.insert((Refused, id), 1);
        }
        want.insert((ReceivedOwnVni, red), 1);
        want.insert((ReceivedOwnVni, blue), 1);
        want.insert((ReceivedOtherVni, sys), 1);
        // One REFUSED flow per tenant VNI (not the global one).
        want.insert((RefusedFromVni, 100), 1);
        want.insert((RefusedFromVni, 200), 1);
        assert_eq!(got, want);
    }

    /// A NetworkPolicy isolating red's pods both ways: each pod's two drops
    /// count for it, by its address; the rule flows count for no one.
    #[test]
    fn policy_isolation_drops_count_for_their_pod() {
        use crate::policy::{LabelSelector, Policy, PolicyPod, PolicyRule, PolicyView};
        let mut s = crate::samples::tenant_node(
            &[(3, "red"), (4, "red"), (5, "blue")],
            &[("red", 100), ("blue", 200)],
        );
        let mut view = PolicyView::default();
        for p in s.pods.values() {
            let pod = PolicyPod {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                ip: Some(p.ip),
                labels: Default::default(),
                named_ports: Default::default(),
            };
            view.pods.insert((p.namespace.clone(), p.name.clone()), pod);
        }
        // Red admits ingress from its own pods, and nothing out.
        let policy = Policy {
            namespace: "red".into(),
            name: "isolate".into(),
            pod_selector: LabelSelector::everything(),
            ingress: Some(vec![PolicyRule { peers: None, ports: None }]),
            egress: Some(vec![]),
        };
        view.policies.insert(("red".into(), "isolate".into()), policy);
        s.policies = std::sync::Arc::new(view);
        let ip = |port: u32| u32::from(s.pods[&port].ip);
        let mut got: BTreeMap<(Counted, u32), usize> = BTreeMap::new();
        for f in pipeline(&s, 1).iter().filter(|f| f.cookie.category() == Some(Category::Policy)) {
            if let Some(c) = counted(f) {
                *got.entry(c).or_default() += 1;
            }
        }
        use Counted::*;
        let want = BTreeMap::from([
            ((PolicyRefusedIngress, ip(3)), 1),
            ((PolicyRefusedIngress, ip(4)), 1),
            ((PolicyRefusedEgress, ip(3)), 1),
            ((PolicyRefusedEgress, ip(4)), 1),
        ]);
        assert_eq!(got, want);
    }
}
