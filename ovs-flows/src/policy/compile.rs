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

/// Conjunction clauses and the `conj_id` flows that complete them.
pub const PRIORITY_RULE: u16 = 100;
/// An isolated pod: what no rule admitted is dropped.
pub const PRIORITY_ISOLATED: u16 = 50;

/// Serialized as its [`Direction::name`] (`/debug/pods`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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

/// A node's policy flows, the rule each conjunction id stands for, and the
/// policies that isolate each local pod (what a trace names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    pub flows: Vec<PolicyFlow>,
    pub rules: BTreeMap<u32, RuleRef>,
    /// (pod address, direction) -> the policies (namespace, name) selecting it.
    pub isolated_by: BTreeMap<(Ipv4Addr, Direction), Vec<(String, String)>>,
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
    isolated_by: BTreeMap<(Ipv4Addr, Direction), Vec<(String, String)>>,
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
    // Each local pod with what the view knows of it (None: no labels yet).
    let locals: Vec<(&LocalPod, Option<&PolicyPod>)> =
        local.iter().map(|p| (*p, view.pods.get(&(p.namespace.clone(), p.name.clone())))).collect();
    let slots = policy_slots(view);
    for (key, policy) in &view.policies {
        let Some(slot) = slots.get(key) else { continue };
        // The node's pods this policy selects; unknown pods of its namespace
        // count as selected for isolation only.
        let mut selected: Vec<Known> = Vec::new();
        let mut unknown: Vec<Ipv4Addr> = Vec::new();
        for (p, known) in locals.iter().filter(|(p, _)| p.namespace == policy.namespace) {
            match known {
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
                let by = out.isolated_by.entry((ip, direction)).or_default();
                by.push((policy.namespace.clone(), policy.name.clone()));
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
    Compiled { flows, rules: out.rules, isolated_by: out.isolated_by }
}

fn emit(out: &mut Out, direction: Direction, id: u32, rule: RuleRef, conj: Conjunction) {
    let table = direction.table();
    let mut clauses: Vec<Vec<Match>> =
        [Some(conj.selected), conj.peers, conj.ports].into_iter().flatten().collect();
    if clauses.iter().any(Vec::is_empty) {
        return; // a clause nothing satisfies: the rule admits nothing
    }
    if clauses.len() == 1 {
        // Any peer, any port: a second clause every IP packet satisfies (one
        // flow, shared by every such rule), so this rule has a conj_id too
        // and a trace can name it.
        clauses.push(vec![Match::new().ip()]);
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::flow::Mac;
    use crate::policy::model::{LabelSelector, Labels};

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn sel(kv: &[(&str, &str)]) -> LabelSelector {
        LabelSelector { match_labels: labels(kv), match_expressions: vec![] }
    }

    fn ip(n: u32) -> Ipv4Addr {
        Ipv4Addr::from(0x0a0b_0000 + n)
    }

    fn pod(ns: &str, name: &str, n: u32, l: &[(&str, &str)]) -> PolicyPod {
        PolicyPod {
            namespace: ns.into(),
            name: name.into(),
            ip: Some(ip(n)),
            labels: labels(l),
            named_ports: BTreeMap::new(),
        }
    }

    fn local(p: &PolicyPod, ofport: u32) -> LocalPod {
        let ip = p.ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        LocalPod {
            ofport,
            ip,
            mac: Mac::for_ipv4(ip),
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            egress_meter: None,
        }
    }

    fn view(policies: Vec<Policy>, pods: &[PolicyPod]) -> PolicyView {
        let mut v = PolicyView::default();
        for p in policies {
            v.policies.insert((p.namespace.clone(), p.name.clone()), p);
        }
        for p in pods {
            v.pods.insert((p.namespace.clone(), p.name.clone()), p.clone());
        }
        v
    }

    fn tcp(port: u16) -> PolicyPort {
        PolicyPort { protocol: PolicyProtocol::Tcp, port: PortMatch::Range(port, port) }
    }

    /// OpenShift SDN documented 40,000 flows for a rule letting 200 pods
    /// reach 200 others; a conjunction costs one flow per pod on each side.
    #[test]
    fn a_rule_from_200_pods_to_200_pods_costs_their_sum_not_their_product() {
        let mut pods = Vec::new();
        for i in 0..200 {
            pods.push(pod("db", &format!("d{i}"), i, &[("app", "db")]));
            pods.push(pod("web", &format!("w{i}"), 1000 + i, &[("app", "web")]));
        }
        let allow = Policy {
            namespace: "db".into(),
            name: "from-web".into(),
            pod_selector: sel(&[("app", "db")]),
            ingress: Some(vec![PolicyRule {
                peers: Some(vec![Peer::Pods {
                    namespaces: Some(LabelSelector::everything()),
                    pods: Some(sel(&[("app", "web")])),
                }]),
                ports: Some(vec![tcp(5432)]),
            }]),
            egress: None,
        };
        let v = view(vec![allow], &pods);
        let locals: Vec<LocalPod> =
            pods.iter().filter(|p| p.namespace == "db").zip(3..).map(|(p, o)| local(p, o)).collect();
        let refs: Vec<&LocalPod> = locals.iter().collect();
        let c = compile(&refs, &v);
        // 200 destinations + 200 sources + 1 port clause + 1 conj_id flow, and
        // one isolation drop per destination.
        assert_eq!(c.flows.len(), 200 + 200 + 1 + 1 + 200, "flows per node");
        assert_eq!(c.rules.len(), 1);
        let conj = c
            .flows
            .iter()
            .filter(|f| f.actions.iter().any(|a| matches!(a, Action::Conjunction { .. })))
            .count();
        assert_eq!(conj, 401);
        // On a node with half the destinations, half of them.
        let half: Vec<&LocalPod> = locals.iter().take(100).collect();
        assert_eq!(compile(&half, &v).flows.len(), 100 + 200 + 1 + 1 + 100);
    }

    /// Two rules naming the same source share one flow carrying both
    /// conjunctions (a second flow with the same match would replace it).
    #[test]
    fn clauses_with_one_match_are_one_flow_with_each_conjunction() {
        let a = pod("red", "a", 1, &[("app", "a")]);
        let src = pod("red", "src", 2, &[("role", "client")]);
        let rule = |port| PolicyRule {
            peers: Some(vec![Peer::Pods { namespaces: None, pods: Some(sel(&[("role", "client")])) }]),
            ports: Some(vec![tcp(port)]),
        };
        let p = |name: &str, port| Policy {
            namespace: "red".into(),
            name: name.into(),
            pod_selector: sel(&[("app", "a")]),
            ingress: Some(vec![rule(port)]),
            egress: None,
        };
        let v = view(vec![p("p1", 80), p("p2", 443)], &[a.clone(), src]);
        let la = local(&a, 3);
        let c = compile(&[&la], &v);
        let from_src: Vec<&PolicyFlow> =
            c.flows.iter().filter(|f| f.m.nw_src == Some(Ipv4Prefix::host(ip(2)))).collect();
        assert_eq!(from_src.len(), 1, "{from_src:?}");
        assert_eq!(from_src[0].actions.len(), 2);
        assert_eq!(c.rules.len(), 2);
        // One isolation flow for the pod, however many policies select it.
        let drops = c.flows.iter().filter(|f| f.priority == PRIORITY_ISOLATED).count();
        assert_eq!(drops, 1);
    }

    /// A named port is resolved on the pod that has it: destinations that
    /// give it different numbers get a conjunction each; a pod without it
    /// is not admitted by that port.
    #[test]
    fn a_named_port_is_resolved_on_each_destination() {
        let mut a = pod("red", "a", 1, &[("app", "web")]);
        a.named_ports.insert(("http".into(), PolicyProtocol::Tcp), 8080);
        let mut b = pod("red", "b", 2, &[("app", "web")]);
        b.named_ports.insert(("http".into(), PolicyProtocol::Tcp), 9090);
        let c_pod = pod("red", "c", 3, &[("app", "web")]);
        let policy = Policy {
            namespace: "red".into(),
            name: "http".into(),
            pod_selector: sel(&[("app", "web")]),
            ingress: Some(vec![PolicyRule {
                peers: None,
                ports: Some(vec![PolicyPort {
                    protocol: PolicyProtocol::Tcp,
                    port: PortMatch::Named("http".into()),
                }]),
            }]),
            egress: None,
        };
        let v = view(vec![policy], &[a.clone(), b.clone(), c_pod.clone()]);
        let locals = [local(&a, 3), local(&b, 4), local(&c_pod, 5)];
        let refs: Vec<&LocalPod> = locals.iter().collect();
        let c = compile(&refs, &v);
        assert_eq!(c.rules.len(), 2, "one conjunction per resolved number");
        let port_clause =
            |port: u16| c.flows.iter().any(|f| f.m.tp_dst == Some(crate::flow::Masked::<u16>::exact(port)));
        assert!(port_clause(8080) && port_clause(9090));
        let dst_clause = |n: u32| {
            c.flows.iter().any(|f| f.m.nw_dst == Some(Ipv4Prefix::host(ip(n))) && f.priority == PRIORITY_RULE)
        };
        assert!(dst_clause(1) && dst_clause(2));
        assert!(!dst_clause(3), "c has no port named http");
    }

    /// A local pod the view has no labels for is isolated in each direction
    /// its namespace's policies have, and no rule admits it; a policy that
    /// selects none of the node's pods costs the node nothing.
    #[test]
    fn unknown_pods_fail_closed_and_policies_elsewhere_cost_nothing() {
        let known = pod("red", "known", 1, &[("app", "db")]);
        let allow_all_egress = Policy {
            namespace: "red".into(),
            name: "p".into(),
            pod_selector: sel(&[("app", "db")]),
            ingress: Some(vec![PolicyRule { peers: None, ports: None }]),
            egress: Some(vec![]),
        };
        let v = view(vec![allow_all_egress], std::slice::from_ref(&known));
        let stranger = LocalPod { name: "stranger".into(), ip: ip(9), ..local(&known, 4) };
        let c = compile(&[&stranger], &v);
        let drops: Vec<&PolicyFlow> = c.flows.iter().filter(|f| f.priority == PRIORITY_ISOLATED).collect();
        assert_eq!(drops.len(), 2, "isolated both ways: {drops:?}");
        assert!(c.flows.iter().all(|f| f.priority == PRIORITY_ISOLATED), "no rule admits it: {:?}", c.flows);
        let other = LocalPod { namespace: "blue".into(), ..local(&known, 5) };
        assert!(compile(&[&other], &v).flows.is_empty());
        // The known pod: its ingress rule (all sources, all ports) is the pod
        // and the any-IP clause, and its conj_id flow; its egress admits nothing.
        let lk = local(&known, 3);
        let c = compile(&[&lk], &v);
        let any_ip = c.flows.iter().find(|f| f.m == Match::new().ip()).expect("the any-IP clause");
        assert!(matches!(any_ip.actions[..], [Action::Conjunction { clause: 2, n_clauses: 2, .. }]));
        assert_eq!(c.flows.len(), 2 + 1 + 2);
        assert_eq!(c.isolated_by.len(), 2);
    }

    /// Egress to pods of a labelled namespace and to an ipBlock minus its
    /// exception, on a port range: three clauses.
    #[test]
    fn an_egress_rule_has_destination_and_port_clauses() {
        let me = pod("red", "me", 1, &[("app", "me")]);
        let dns = pod("kube-system", "dns", 2, &[("k8s-app", "dns")]);
        let mut v = view(
            vec![Policy {
                namespace: "red".into(),
                name: "out".into(),
                pod_selector: LabelSelector::everything(),
                ingress: None,
                egress: Some(vec![PolicyRule {
                    peers: Some(vec![
                        Peer::Pods {
                            namespaces: Some(sel(&[("kubernetes.io/metadata.name", "kube-system")])),
                            pods: None,
                        },
                        Peer::IpBlock {
                            cidr: Ipv4Prefix::new(Ipv4Addr::new(192, 168, 0, 0), 16),
                            except: vec![Ipv4Prefix::new(Ipv4Addr::new(192, 168, 1, 0), 24)],
                        },
                    ]),
                    ports: Some(vec![PolicyPort {
                        protocol: PolicyProtocol::Udp,
                        port: PortMatch::Range(52, 55),
                    }]),
                }]),
            }],
            &[me.clone(), dns],
        );
        v.namespaces.insert("kube-system".into(), labels(&[("kubernetes.io/metadata.name", "kube-system")]));
        let lm = local(&me, 3);
        let c = compile(&[&lm], &v);
        let clause_of = |f: &PolicyFlow| {
            f.actions.iter().find_map(|a| match a {
                Action::Conjunction { clause, n_clauses: 3, .. } => Some(*clause),
                _ => None,
            })
        };
        let count = |k: u8| c.flows.iter().filter(|f| clause_of(f) == Some(k)).count();
        assert_eq!(count(1), 1, "the sender");
        // dns's address and 192.168.0.0/16 without 192.168.1.0/24 (8 prefixes).
        assert_eq!(count(2), 1 + 8);
        assert_eq!(count(3), 1, "52-55 is one masked block");
        assert!(c.flows.iter().all(|f| f.table == Table::EgressPolicy));
    }

    /// The switch's decision in one policy table, computed from the flows as
    /// OpenFlow defines conjunctive matches: the highest-priority matching
    /// flow wins; conjunction clauses take part only when every clause of
    /// one conjunction matches, and then its conj_id flow decides; with no
    /// policy flow matching, the table's default admits.
    fn switch_admits(
        flows: &[PolicyFlow],
        table: Table,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        port: u16,
    ) -> bool {
        let hits = |m: &Match| {
            let inside = |p: Option<Ipv4Prefix>, a: Ipv4Addr| {
                p.is_none_or(|p| u32::from(a) & p.mask() == u32::from(p.addr()))
            };
            inside(m.nw_src, src)
                && inside(m.nw_dst, dst)
                && m.ip_proto.is_none_or(|p| p == proto)
                && m.tp_dst.is_none_or(|t| port & t.mask == t.value)
        };
        let mut clauses: BTreeMap<u32, (u8, BTreeSet<u8>)> = BTreeMap::new();
        let mut best_plain: Option<&PolicyFlow> = None;
        for f in flows.iter().filter(|f| f.table == table && f.m.conj_id.is_none() && hits(&f.m)) {
            let mut conj = false;
            for a in &f.actions {
                if let Action::Conjunction { id, clause, n_clauses } = a {
                    conj = true;
                    let e = clauses.entry(*id).or_insert((*n_clauses, BTreeSet::new()));
                    e.1.insert(*clause);
                }
            }
            if !conj && best_plain.is_none_or(|b| b.priority < f.priority) {
                best_plain = Some(f);
            }
        }
        let complete = clauses.iter().find(|(_, (n, got))| got.len() == usize::from(*n)).map(|(id, _)| *id);
        if let Some(id) = complete {
            if best_plain.is_none_or(|b| b.priority < PRIORITY_RULE) {
                let done =
                    flows.iter().find(|f| f.table == table && f.m.conj_id == Some(id)).expect("conj_id flow");
                return done.actions.iter().any(|a| matches!(a, Action::GotoTable(_)));
            }
        }
        match best_plain {
            Some(f) => !f.actions.is_empty(),
            None => true,
        }
    }

    /// The Kubernetes rule, read straight from the model: is the pod at
    /// `me` (selected side) admitted to talk to `other` in `direction`?
    fn model_admits(
        v: &PolicyView,
        direction: Direction,
        me: &PolicyPod,
        other: Ipv4Addr,
        proto: u8,
        port: u16,
    ) -> bool {
        let other_pod = v.pods.values().find(|p| p.ip == Some(other));
        let rules: Vec<(&Policy, &PolicyRule)> = v
            .selecting(me)
            .filter_map(|p| match direction {
                Direction::Ingress => p.ingress.as_ref().map(|r| (p, r)),
                Direction::Egress => p.egress.as_ref().map(|r| (p, r)),
            })
            .flat_map(|(p, rs)| rs.iter().map(move |r| (p, r)))
            .collect();
        if v.selecting(me).all(|p| match direction {
            Direction::Ingress => p.ingress.is_none(),
            Direction::Egress => p.egress.is_none(),
        }) {
            return true;
        }
        // The destination pod holds the named ports.
        let dest = match direction {
            Direction::Ingress => Some(me),
            Direction::Egress => other_pod,
        };
        rules.iter().any(|(p, r)| {
            let peer_ok = r.peers.as_ref().is_none_or(|peers| {
                peers.iter().any(|peer| match peer {
                    Peer::IpBlock { cidr, except } => {
                        let inside = |c: &Ipv4Prefix| u32::from(other) & c.mask() == u32::from(c.addr());
                        inside(cidr) && !except.iter().any(inside)
                    }
                    Peer::Pods { .. } => other_pod.is_some_and(|o| v.peer_selects(peer, &p.namespace, o)),
                })
            });
            let port_ok = r.ports.as_ref().is_none_or(|ports| {
                ports.iter().any(|pp| {
                    pp.protocol.ip_proto() == proto
                        && match &pp.port {
                            PortMatch::Any => true,
                            PortMatch::Range(a, b) => (*a..=*b).contains(&port),
                            PortMatch::Named(n) => dest
                                .and_then(|d| d.named_ports.get(&(n.clone(), pp.protocol)))
                                .is_some_and(|v| *v == port),
                        }
                })
            });
            peer_ok && port_ok
        })
    }

    use crate::samples::random_below;

    /// Makes a random rule from a random source.
    type RuleGen<'a> = dyn FnMut(&mut dyn FnMut(usize) -> usize) -> PolicyRule + 'a;

    /// Random policies over random pods: for every pair, protocol and port,
    /// the compiled flows decide as the Kubernetes rules do, in both tables.
    #[test]
    fn compiled_flows_decide_as_the_kubernetes_rules_on_random_policies() {
        let namespaces = ["red", "blue", "green"];
        let apps = ["web", "db", "cache"];
        let ports = [53u16, 80, 443, 5432, 8080, 9000];
        let protos = [PolicyProtocol::Tcp, PolicyProtocol::Udp, PolicyProtocol::Sctp];
        let external = Ipv4Addr::new(192, 168, 7, 9);
        let mut outcomes = [0usize; 2];
        for seed in 1..=60u64 {
            let mut r = random_below(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut pick = |n: usize| r(n as u64) as usize;
            let mut v = PolicyView::default();
            for ns in namespaces {
                let team = if pick(2) == 0 { "a" } else { "b" };
                v.namespaces.insert(ns.into(), labels(&[(NAME, ns), ("team", team)]));
            }
            let mut pods = Vec::new();
            for i in 0..8u32 {
                let mut p = pod(namespaces[pick(3)], &format!("p{i}"), i + 1, &[("app", apps[pick(3)])]);
                if pick(2) == 0 {
                    p.named_ports.insert(("svc".into(), protos[pick(2)]), ports[pick(ports.len())]);
                }
                pods.push(p);
            }
            let selector = |pick: &mut dyn FnMut(usize) -> usize| match pick(3) {
                0 => LabelSelector::everything(),
                _ => sel(&[("app", apps[pick(3)])]),
            };
            let mut rule = |pick: &mut dyn FnMut(usize) -> usize| PolicyRule {
                peers: match pick(3) {
                    0 => None,
                    _ => Some(
                        (0..=pick(2))
                            .map(|_| match pick(4) {
                                0 => Peer::Pods { namespaces: None, pods: Some(selector(pick)) },
                                1 => Peer::Pods {
                                    namespaces: Some(sel(&[("team", if pick(2) == 0 { "a" } else { "b" })])),
                                    pods: None,
                                },
                                2 => Peer::Pods {
                                    namespaces: Some(LabelSelector::everything()),
                                    pods: Some(selector(pick)),
                                },
                                _ => Peer::IpBlock {
                                    cidr: Ipv4Prefix::new(Ipv4Addr::new(10, 11, 0, 0), 28),
                                    except: vec![Ipv4Prefix::new(Ipv4Addr::new(10, 11, 0, 4), 30)],
                                },
                            })
                            .collect(),
                    ),
                },
                ports: match pick(3) {
                    0 => None,
                    _ => Some(
                        (0..=pick(2))
                            .map(|_| PolicyPort {
                                protocol: protos[pick(3)],
                                port: match pick(4) {
                                    0 => PortMatch::Any,
                                    1 => PortMatch::Named("svc".into()),
                                    2 => PortMatch::Range(80, 443),
                                    _ => {
                                        let p = ports[pick(ports.len())];
                                        PortMatch::Range(p, p)
                                    }
                                },
                            })
                            .collect(),
                    ),
                },
            };
            let mut policies = Vec::new();
            for i in 0..1 + pick(3) {
                let rules = |pick: &mut dyn FnMut(usize) -> usize, rule: &mut RuleGen| match pick(3) {
                    0 => None,
                    n => Some((0..n - 1).map(|_| rule(pick)).collect()),
                };
                let ingress = rules(&mut pick, &mut rule);
                let egress = rules(&mut pick, &mut rule);
                policies.push(Policy {
                    namespace: namespaces[pick(3)].into(),
                    name: format!("np{i}"),
                    pod_selector: selector(&mut pick),
                    ingress,
                    egress,
                });
            }
            let v = view(policies, &pods).with_namespaces(v.namespaces);
            // The node: half the pods.
            let locals: Vec<LocalPod> =
                pods.iter().zip(3..).filter(|(_, o)| o % 2 == 0).map(|(p, o)| local(p, o)).collect();
            let refs: Vec<&LocalPod> = locals.iter().collect();
            let c = compile(&refs, &v);
            let addrs: Vec<Ipv4Addr> = pods.iter().filter_map(|p| p.ip).chain([external]).collect();
            for me in locals.iter().map(|l| &v.pods[&(l.namespace.clone(), l.name.clone())]) {
                let my_ip = me.ip.expect("ip");
                for other in &addrs {
                    for proto in protos {
                        for port in ports {
                            let p = proto.ip_proto();
                            for (direction, table, s, d) in [
                                (Direction::Ingress, Table::IngressPolicy, *other, my_ip),
                                (Direction::Egress, Table::EgressPolicy, my_ip, *other),
                            ] {
                                let admitted = switch_admits(&c.flows, table, s, d, p, port);
                                outcomes[usize::from(admitted)] += 1;
                                assert_eq!(
                                    admitted,
                                    model_admits(&v, direction, me, *other, p, port),
                                    "seed {seed}: {direction:?} {s} -> {d} {proto:?}/{port}\n{:#?}\n{:#?}",
                                    v.policies,
                                    c.flows
                                );
                            }
                        }
                    }
                }
            }
        }
        // Both answers, many times: the check is not vacuous.
        assert!(outcomes[0] > 1000 && outcomes[1] > 1000, "refused/admitted: {outcomes:?}");
    }

    const NAME: &str = crate::policy::model::NAME_LABEL;

    impl PolicyView {
        fn with_namespaces(mut self, namespaces: BTreeMap<String, Labels>) -> PolicyView {
            self.namespaces = namespaces;
            self
        }
    }
}
