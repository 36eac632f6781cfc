//! NetworkPolicy -> the flows of one node (tables EGRESS_POLICY and
//! INGRESS_POLICY; `docs/pipeline.md`).
//!
//! A node enforces the ingress rules of its own pods (the packet's
//! destination is one of them) and the egress rules of its own pods (the
//! source is one of them); the other end of a rule may be any pod of the
//! cluster, named by its address, or an ipBlock. Every rule is one
//! conjunctive match (`conjunction`) over up to three clauses: the node's
//! pods the policy selects, the peers, the ports. A rule selecting M
//! sources and N destinations on P port blocks costs M + N + P + 1 flows,
//! not M x N x P. A named port is resolved on the pod that carries it (the
//! destination: the selected pod for ingress, the peer for egress); pods
//! that resolve it to different numbers get one conjunction per number.
//!
//! A pod is isolated in a direction when a policy with that direction
//! selects it: one low-priority drop flow per isolated pod and direction,
//! under the rules. A local pod the view does not know yet (no labels) is
//! isolated in every direction some policy of its namespace has, and no
//! rule admits it: fail closed until its labels arrive (Kubernetes allows
//! exactly this: isolation before the pod starts, allow rules eventually).
//! The node's own pods have the addresses its IPAM gave them, known before
//! the pod's status shows them; other pods the address in their status.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use super::model::{Peer, Policy, PolicyPod, PolicyPort, PolicyProtocol, PolicyRule, PolicyView, PortMatch};
use super::ranges::{port_masks, subtract};
use crate::flow::{Action, Ipv4Prefix, Match};
use crate::pipeline::{LocalPod, Table};

/// Rules of one clause (only the selected pods) are plain flows, above the
/// conjunctions (OpenFlow leaves a packet matching two flows of one
/// priority undefined).
pub const PRIORITY_RULE_SINGLE: u16 = 110;
/// Conjunction clauses and the `conj_id` flows that complete them.
pub const PRIORITY_RULE: u16 = 100;
/// An isolated pod: what no rule admitted is dropped.
pub const PRIORITY_ISOLATED: u16 = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    /// The table that enforces this direction.
    pub fn table(self) -> Table {
        match self {
            Direction::Ingress => Table::IngressPolicy,
            Direction::Egress => Table::EgressPolicy,
        }
    }

    /// Where an admitted packet goes on.
    fn admitted(self) -> Table {
        match self {
            Direction::Ingress => Table::IngressCommit,
            Direction::Egress => Table::EgressCommit,
        }
    }
}

/// Which rule a conjunction id stands for (what `k8s-ovs-ctl trace` names).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleRef {
    pub namespace: String,
    pub name: String,
    pub direction: Direction,
    /// Index in the policy's `ingress` / `egress` list.
    pub rule: usize,
}

/// One flow of the policy owner (its cookie is the pipeline's to give).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyFlow {
    pub table: Table,
    pub priority: u16,
    pub m: Match,
    pub actions: Vec<Action>,
}

/// A node's policy flows and the rule each conjunction id stands for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    pub flows: Vec<PolicyFlow>,
    pub rules: BTreeMap<u32, RuleRef>,
}

/// Sub-rules (rule x named-port value) a policy can have: the low bits of
/// its conjunction ids.
const SUB_RULE_BITS: u32 = 12;
const POLICY_SLOTS: u32 = 1 << (32 - SUB_RULE_BITS);

/// A stable slot per policy: its name's hash, probing on collision (in
/// name order, so the same set of policies always gets the same ids and a
/// new policy moves only one that collides with it). Slot 0 is never used,
/// so conjunction id 0 never appears.
fn policy_slots(view: &PolicyView) -> BTreeMap<&(String, String), u32> {
    let mut taken = BTreeSet::new();
    let mut out = BTreeMap::new();
    for key in view.policies.keys() {
        let mut slot = fnv1a(key.0.as_bytes(), key.1.as_bytes()) % (POLICY_SLOTS - 1) + 1;
        while !taken.insert(slot) {
            slot = slot % (POLICY_SLOTS - 1) + 1;
        }
        out.insert(key, slot);
    }
    out
}

fn fnv1a(a: &[u8], b: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for byte in a.iter().chain(&[0u8]).chain(b) {
        h ^= u32::from(*byte);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Accumulates flows; equal (table, priority, match) flows of several
/// conjunctions become one flow carrying all their conjunction actions.
#[derive(Default)]
struct Out {
    flows: BTreeMap<(Table, u16, Match), Vec<Action>>,
    rules: BTreeMap<u32, RuleRef>,
}

impl Out {
    fn plain(&mut self, table: Table, priority: u16, m: Match, actions: Vec<Action>) {
        self.flows.insert((table, priority, m), actions);
    }

    fn clause(&mut self, table: Table, m: Match, action: Action) {
        let actions = self.flows.entry((table, PRIORITY_RULE, m)).or_default();
        if !actions.contains(&action) {
            actions.push(action);
            actions.sort();
        }
    }
}

/// One conjunction's clauses: the selected pods are always a clause.
struct Conjunction {
    selected: Vec<Match>,
    peers: Option<Vec<Match>>,
    ports: Option<Vec<Match>>,
}

/// A pod with the address the node uses for it.
#[derive(Clone, Copy)]
struct Known<'a> {
    pod: &'a PolicyPod,
    ip: Ipv4Addr,
}

/// The node's policy flows: `local` are the node's pods.
pub fn compile(local: &[&LocalPod], view: &PolicyView) -> Compiled {
    let mut out = Out::default();
    let own: HashMap<(&str, &str), Ipv4Addr> =
        local.iter().map(|p| ((p.namespace.as_str(), p.name.as_str()), p.ip)).collect();
    // Every pod with an address: the node's own with the IPAM's.
    let known: Vec<Known> = view
        .pods
        .iter()
        .filter_map(|((ns, name), pod)| {
            let ip = own.get(&(ns.as_str(), name.as_str())).copied().or(pod.ip)?;
            Some(Known { pod, ip })
        })
        .collect();
    let slots = policy_slots(view);
    for (key, policy) in &view.policies {
        let Some(slot) = slots.get(key) else { continue };
        // The node's pods this policy selects; unknown pods of its namespace
        // count as selected for isolation only.
        let mut selected: Vec<Known> = Vec::new();
        let mut unknown: Vec<Ipv4Addr> = Vec::new();
        for p in local.iter().filter(|p| p.namespace == policy.namespace) {
            match view.pods.get(&(p.namespace.clone(), p.name.clone())) {
                Some(pod) if policy.pod_selector.matches(&pod.labels) => {
                    selected.push(Known { pod, ip: p.ip })
                }
                Some(_) => {}
                None => unknown.push(p.ip),
            }
        }
        if selected.is_empty() && unknown.is_empty() {
            continue;
        }
        let mut sub = 0u32;
        for (direction, rules) in [(Direction::Ingress, &policy.ingress), (Direction::Egress, &policy.egress)]
        {
            let Some(rules) = rules else { continue };
            let side = |ip: Ipv4Addr| match direction {
                Direction::Ingress => Match::new().nw_dst(ip),
                Direction::Egress => Match::new().nw_src(ip),
            };
            for ip in selected.iter().map(|k| k.ip).chain(unknown.iter().copied()) {
                out.plain(direction.table(), PRIORITY_ISOLATED, side(ip), vec![]);
            }
            for (index, rule) in rules.iter().enumerate() {
                for conj in conjunctions(view, &known, policy, direction, rule, &selected) {
                    sub += 1;
                    if sub >= 1 << SUB_RULE_BITS {
                        // More sub-rules than ids: the rest admit nothing (fail closed).
                        break;
                    }
                    let id = slot << SUB_RULE_BITS | sub;
                    let rule_ref = RuleRef {
                        namespace: policy.namespace.clone(),
                        name: policy.name.clone(),
                        direction,
                        rule: index,
                    };
                    emit(&mut out, direction, id, rule_ref, conj);
                }
            }
        }
    }
    let flows = out
        .flows
        .into_iter()
        .map(|((table, priority, m), actions)| PolicyFlow { table, priority, m, actions })
        .collect();
    Compiled { flows, rules: out.rules }
}

fn emit(out: &mut Out, direction: Direction, id: u32, rule: RuleRef, conj: Conjunction) {
    let table = direction.table();
    let clauses: Vec<Vec<Match>> =
        [Some(conj.selected), conj.peers, conj.ports].into_iter().flatten().collect();
    if clauses.iter().any(Vec::is_empty) {
        return; // a clause nothing satisfies: the rule admits nothing
    }
    if clauses.len() == 1 {
        for m in &clauses[0] {
            out.plain(
                table,
                PRIORITY_RULE_SINGLE,
                m.clone(),
                vec![Action::GotoTable(direction.admitted().id())],
            );
        }
        // Recorded so a trace through a plain flow can be named by its match.
        out.rules.insert(id, rule);
        return;
    }
    let n = clauses.len() as u8;
    for (k, clause) in clauses.iter().enumerate() {
        for m in clause {
            out.clause(table, m.clone(), Action::Conjunction { id, clause: k as u8 + 1, n_clauses: n });
        }
    }
    out.plain(
        table,
        PRIORITY_RULE,
        Match::new().ip().conj_id(id),
        vec![Action::GotoTable(direction.admitted().id())],
    );
    out.rules.insert(id, rule);
}

/// A rule's conjunctions: one for its numeric ports (or all ports), one per
/// value each named port resolves to on the pods that carry it.
fn conjunctions(
    view: &PolicyView,
    known: &[Known],
    policy: &Policy,
    direction: Direction,
    rule: &PolicyRule,
    selected: &[Known],
) -> Vec<Conjunction> {
    let own = |ip: Ipv4Addr| match direction {
        Direction::Ingress => Match::new().nw_dst(ip),
        Direction::Egress => Match::new().nw_src(ip),
    };
    let far = |p: Ipv4Prefix| match direction {
        Direction::Ingress => Match::new().nw_src(p),
        Direction::Egress => Match::new().nw_dst(p),
    };
    let selected_ips: Vec<Ipv4Addr> = selected.iter().map(|k| k.ip).collect();
    // The peer pods (None: any source / destination at all).
    let peer_pods: Option<Vec<Known>> = rule.peers.as_ref().map(|peers| {
        known
            .iter()
            .filter(|k| peers.iter().any(|peer| view.peer_selects(peer, &policy.namespace, k.pod)))
            .copied()
            .collect()
    });
    let blocks: Vec<Ipv4Prefix> = rule
        .peers
        .iter()
        .flatten()
        .filter_map(|peer| match peer {
            Peer::IpBlock { cidr, except } => Some(subtract(*cidr, except)),
            Peer::Pods { .. } => None,
        })
        .flatten()
        .collect();
    let peer_matches = |pods: &[Known], with_blocks: bool| -> Vec<Match> {
        let mut set: BTreeSet<Ipv4Prefix> = pods.iter().map(|k| Ipv4Prefix::host(k.ip)).collect();
        if with_blocks {
            set.extend(blocks.iter().copied());
        }
        set.into_iter().map(far).collect()
    };
    let mut out = Vec::new();
    let (named, numeric): (Vec<&PolicyPort>, Vec<&PolicyPort>) = match &rule.ports {
        None => (vec![], vec![]),
        Some(ports) => ports.iter().partition(|p| matches!(p.port, PortMatch::Named(_))),
    };
    if rule.ports.is_none() || !numeric.is_empty() {
        out.push(Conjunction {
            selected: selected_ips.iter().copied().map(own).collect(),
            peers: peer_pods.as_ref().map(|pods| peer_matches(pods, true)),
            ports: rule
                .ports
                .as_ref()
                .map(|_| numeric.iter().flat_map(|p| port_flows(p.protocol, &p.port)).collect()),
        });
    }
    for port in named {
        let PortMatch::Named(name) = &port.port else { continue };
        let key = (name.clone(), port.protocol);
        match direction {
            // Resolved on each selected (destination) pod.
            Direction::Ingress => {
                let mut by_value: BTreeMap<u16, Vec<Ipv4Addr>> = BTreeMap::new();
                for k in selected {
                    if let Some(v) = k.pod.named_ports.get(&key) {
                        by_value.entry(*v).or_default().push(k.ip);
                    }
                }
                for (value, ips) in by_value {
                    out.push(Conjunction {
                        selected: ips.into_iter().map(own).collect(),
                        peers: peer_pods.as_ref().map(|pods| peer_matches(pods, true)),
                        ports: Some(port_flows(port.protocol, &PortMatch::Range(value, value))),
                    });
                }
            }
            // Resolved on each peer (destination) pod; an ipBlock has no
            // named ports, and "any peer" means any pod that has it.
            Direction::Egress => {
                let candidates: &[Known] = peer_pods.as_deref().unwrap_or(known);
                let mut by_value: BTreeMap<u16, Vec<Known>> = BTreeMap::new();
                for k in candidates {
                    if let Some(v) = k.pod.named_ports.get(&key) {
                        by_value.entry(*v).or_default().push(*k);
                    }
                }
                for (value, pods) in by_value {
                    out.push(Conjunction {
                        selected: selected_ips.iter().copied().map(own).collect(),
                        peers: Some(peer_matches(&pods, false)),
                        ports: Some(port_flows(port.protocol, &PortMatch::Range(value, value))),
                    });
                }
            }
        }
    }
    out
}

fn port_flows(protocol: PolicyProtocol, port: &PortMatch) -> Vec<Match> {
    let base = Match::new().ip_proto(protocol.ip_proto());
    match port {
        PortMatch::Any => vec![base],
        PortMatch::Range(first, last) => {
            port_masks(*first, *last).into_iter().map(|(v, m)| base.clone().tp_dst_masked(v, m)).collect()
        }
        PortMatch::Named(_) => vec![],
    }
}
