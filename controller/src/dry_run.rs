//! What a join, isolate or global would do, before it is done: which
//! namespaces the namespace would newly reach (and be reached by), which it
//! would stop reaching, and how many flows each node's switch would change.
//! Pure: the NetIDs come from etcd's records, the nodes' pods and services
//! from their agents (`/debug/pods`); nothing is written.
//!
//! The new NetID is the one [`apply_action`] gives, the controller's own
//! rule; for isolate that is a NetID no namespace has (which one is the
//! controller's choice when it runs). The reach is [`crate::trace::policy`],
//! the rule `k8s-ovs-ctl trace` checks switches against. The flows are the
//! operations the agent's own `NodePipeline` returns for the VNI change.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use etcd_schema::{Action, PluginName};
use ovs_flows::pipeline::{LocalPod, Mode, NodePipeline, NodeState, Service};
use ovs_flows::trace::NodePods;
use ovs_flows::{Ipv4Prefix, Mac};

use crate::alloc::VniAllocator;
use crate::plan::{apply_action, ActionError};
use crate::trace::policy;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DryRunError {
    #[error("namespace {0} has no record in etcd")]
    Unknown(String),
    #[error(transparent)]
    Refused(#[from] ActionError),
}

/// What an action would change in who reaches whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prediction {
    pub namespace: String,
    pub net_id_before: u32,
    pub net_id_after: u32,
    /// The NetID after is a new one (isolate of a shared or global
    /// namespace): the controller picks which when it runs.
    pub new_net_id: bool,
    /// Namespaces reached after and not before (reach goes both ways).
    pub newly_reaches: Vec<String>,
    /// Namespaces reached before and not after.
    pub stops_reaching: Vec<String>,
}

/// The NetID of every namespace after `action` on `namespace`, and what it
/// changes; `ids` are the records' NetIDs now.
pub fn predict(
    plugin: &PluginName,
    namespace: &str,
    action: &Action,
    ids: &BTreeMap<String, u32>,
) -> Result<(Prediction, BTreeMap<String, u32>), DryRunError> {
    let before = *ids.get(namespace).ok_or_else(|| DryRunError::Unknown(namespace.into()))?;
    let mut vnis = VniAllocator::default();
    vnis.reset_in_use(ids.values().copied());
    let after = apply_action(namespace, before, action, ids, &mut vnis)?;
    let mut after_ids = ids.clone();
    after_ids.insert(namespace.to_string(), after);
    let reach = |ids: &BTreeMap<String, u32>, other: &str| {
        let src = (namespace, ids.get(namespace).copied());
        let dst = (other, ids.get(other).copied());
        policy(plugin, src, dst).allowed
    };
    let others = ids.keys().filter(|n| *n != namespace);
    let (mut newly_reaches, mut stops_reaching) = (Vec::new(), Vec::new());
    for other in others {
        match (reach(ids, other), reach(&after_ids, other)) {
            (false, true) => newly_reaches.push(other.clone()),
            (true, false) => stops_reaching.push(other.clone()),
            _ => {}
        }
    }
    let new_net_id = after != before && !ids.values().any(|id| *id == after);
    let prediction = Prediction {
        namespace: namespace.to_string(),
        net_id_before: before,
        net_id_after: after,
        new_net_id,
        newly_reaches,
        stops_reaching,
    };
    Ok((prediction, after_ids))
}

/// How many flow operations the VNI change of `namespace` (to `after`)
/// would send to `node`'s switch, given the NetIDs now (`ids`): the agent's
/// pipeline of the node's pods and services, changed the way the agent
/// changes it. Addresses the VNIs do not touch (the node's subnets, ports,
/// meters) are left out: no flow they shape changes with a VNI.
pub fn flow_changes(
    plugin: &PluginName,
    node: &NodePods,
    ids: &BTreeMap<String, u32>,
    namespace: &str,
    after: u32,
) -> usize {
    let mode = match plugin {
        PluginName::MultiTenant => Mode::MultiTenant,
        PluginName::Subnet => Mode::SingleTenant,
    };
    let any = Ipv4Prefix::new(Ipv4Addr::UNSPECIFIED, 0);
    let mut state = NodeState::new(mode, node.node_ip, any, any, any);
    for p in &node.pods {
        let pod = LocalPod {
            ofport: p.ofport,
            ip: p.ip,
            mac: Mac::for_ipv4(p.ip),
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            egress_meter: None,
        };
        state.pods.insert(p.ofport, pod);
    }
    for s in &node.services {
        state.services.insert(s.ip, Service { ip: s.ip, namespace: s.namespace.clone(), ports: Vec::new() });
    }
    state.vnis = ids.clone();
    let mut pipeline = NodePipeline::new(state, 1);
    pipeline.update_vnis([(namespace.to_string(), Some(after))]).len()
}

#[cfg(test)]
mod tests {
    use ovs_flows::trace::{TracePod, TraceService};

    use super::*;

    fn ids() -> BTreeMap<String, u32> {
        [("red", 100), ("pink", 100), ("blue", 200), ("kube-system", 0)]
            .into_iter()
            .map(|(n, id)| (n.to_string(), id))
            .collect()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn each_action_names_who_is_newly_reached_and_who_no_longer() {
        let mt = PluginName::MultiTenant;
        let (join, after) = predict(&mt, "red", &Action::Join("blue".into()), &ids()).expect("join");
        assert_eq!((join.net_id_before, join.net_id_after, join.new_net_id), (100, 200, false));
        assert_eq!(join.newly_reaches, names(&["blue"]));
        assert_eq!(join.stops_reaching, names(&["pink"]), "red leaves pink's VNI");
        assert_eq!(after["red"], 200);
        let (isolate, _) = predict(&mt, "red", &Action::Isolate, &ids()).expect("isolate");
        assert!(isolate.new_net_id && isolate.net_id_after != 100 && isolate.net_id_after != 0);
        assert_eq!((isolate.newly_reaches, isolate.stops_reaching), (vec![], names(&["pink"])));
        let (global, _) = predict(&mt, "red", &Action::Global, &ids()).expect("global");
        assert_eq!(global.newly_reaches, names(&["blue"]));
        assert!(global.stops_reaching.is_empty());
        // Isolating a namespace alone in its VNI changes nothing.
        let (alone, _) = predict(&mt, "blue", &Action::Isolate, &ids()).expect("isolate blue");
        assert_eq!((alone.net_id_after, alone.new_net_id), (200, false));
        assert!(alone.newly_reaches.is_empty() && alone.stops_reaching.is_empty());
        // Single-tenant: everyone reaches everyone, before and after.
        let (flat, _) =
            predict(&PluginName::Subnet, "red", &Action::Join("blue".into()), &ids()).expect("flat");
        assert!(flat.newly_reaches.is_empty() && flat.stops_reaching.is_empty());
    }

    #[test]
    fn refused_actions_are_errors_as_the_controller_would_report() {
        let mt = PluginName::MultiTenant;
        let e = predict(&mt, "red", &Action::Join("nowhere".into()), &ids()).expect_err("unknown target");
        assert_eq!(e, DryRunError::Refused(ActionError::JoinUnknown("nowhere".into())));
        let e = predict(&mt, "ghost", &Action::Global, &ids()).expect_err("no record");
        assert_eq!(e.to_string(), "namespace ghost has no record in etcd");
    }

    fn node(red_pods: u32, others: &[(&str, u32)]) -> NodePods {
        let mut pods = Vec::new();
        let pods_of = |ns: &str, n: u32, pods: &mut Vec<TracePod>| {
            for _ in 0..n {
                let port = 3 + pods.len() as u32;
                let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 11, 0, 2)) + port);
                let pod = TracePod {
                    namespace: ns.into(),
                    name: format!("p{port}"),
                    ip,
                    mac: String::new(),
                    ofport: port,
                    vni: None,
                };
                pods.push(pod);
            }
        };
        pods_of("red", red_pods, &mut pods);
        for (ns, n) in others {
            pods_of(ns, *n, &mut pods);
        }
        let web = TraceService {
            namespace: "red".into(),
            ip: Ipv4Addr::new(10, 96, 5, 5),
            ports: vec![],
            vni: None,
        };
        NodePods {
            node_ip: Ipv4Addr::new(192, 0, 2, 11),
            bridge: "br0".into(),
            pods,
            services: vec![web],
            rules: vec![],
            isolated: vec![],
        }
    }

    #[test]
    fn flow_changes_per_node_do_not_grow_with_the_namespace() {
        let mt = PluginName::MultiTenant;
        let join = |n: &NodePods| flow_changes(&mt, n, &ids(), "red", 200);
        assert_eq!(join(&node(20, &[("blue", 5)])), join(&node(200, &[("blue", 5)])));
        // SOURCE_VNI x3 and DEST_VNI x2 modified, SERVICE_VNI replaced (its
        // match names the VNI: a delete and an add), and red's own ISOLATION
        // and GATEWAY_REPLY flows for its VNI replaced (the same: 2 each).
        assert_eq!(join(&node(20, &[("blue", 5)])), 11);
        // Other namespaces' pods change nothing of it: each namespace has
        // its own ISOLATION flows.
        assert_eq!(join(&node(20, &[("blue", 5), ("pink", 1)])), 11);
        // No red pod here: only red's SERVICE_VNI flow (services are everywhere).
        assert_eq!(join(&node(0, &[("blue", 5)])), 2);
        // Red keeps VNI 100's REFUSED flow (pink has VNI 100 too); blue, alone
        // in VNI 200, takes 200's with it when it joins red: SOURCE_VNI x3,
        // DEST_VNI x2, its ISOLATION and GATEWAY_REPLY flows (2 each) and that
        // REFUSED flow.
        assert_eq!(flow_changes(&mt, &node(20, &[("blue", 5)]), &ids(), "blue", 100), 10);
    }
}
