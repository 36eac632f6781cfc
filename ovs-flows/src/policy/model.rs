//! NetworkPolicy as the pipeline sees it: plain data, already validated and
//! with the API's defaults applied (`policyTypes`, protocol TCP), so the
//! compiler ([`super::compile`]) and the evaluators that check it share one
//! meaning. The agent turns `networking.k8s.io/v1` objects into these.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::flow::{Ipv4Prefix, IP_PROTO_SCTP, IP_PROTO_TCP, IP_PROTO_UDP};

pub type Labels = BTreeMap<String, String>;

/// The label the API server sets on every namespace: its name.
pub const NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A `metav1.LabelSelector`: every `matchLabels` pair and every expression
/// must hold; the empty selector selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelSelector {
    pub match_labels: Labels,
    pub match_expressions: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    /// Non-empty for In/NotIn, empty for Exists/DoesNotExist (checked when
    /// the object is read).
    pub values: BTreeSet<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// The selector that selects everything (`{}`).
    pub fn everything() -> LabelSelector {
        LabelSelector::default()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator {
                    Operator::In => value.is_some_and(|v| r.values.contains(v)),
                    // As labels.Selector: a missing key satisfies NotIn.
                    Operator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                    Operator::Exists => value.is_some(),
                    Operator::DoesNotExist => value.is_none(),
                }
            })
    }
}

/// A transport protocol of a policy port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyProtocol {
    Tcp,
    Udp,
    Sctp,
}

impl PolicyProtocol {
    pub fn ip_proto(self) -> u8 {
        match self {
            PolicyProtocol::Tcp => IP_PROTO_TCP,
            PolicyProtocol::Udp => IP_PROTO_UDP,
            PolicyProtocol::Sctp => IP_PROTO_SCTP,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PolicyProtocol::Tcp => "TCP",
            PolicyProtocol::Udp => "UDP",
            PolicyProtocol::Sctp => "SCTP",
        }
    }
}

/// Which ports of a protocol a rule admits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortMatch {
    /// `port` absent: every port of the protocol.
    Any,
    /// `port`, or `port`..=`endPort` (first <= last, checked when read).
    Range(u16, u16),
    /// A named container port of the pod on the far side of the rule
    /// (ingress: the selected pod; egress: the peer).
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyPort {
    pub protocol: PolicyProtocol,
    pub port: PortMatch,
}

/// One element of `from` / `to`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// `podSelector` and/or `namespaceSelector`: `namespaces` None is the
    /// policy's own namespace (podSelector alone); `pods` None is every pod
    /// of those namespaces (namespaceSelector alone).
    Pods { namespaces: Option<LabelSelector>, pods: Option<LabelSelector> },
    /// `ipBlock`: `cidr` minus every `except` (inside it).
    IpBlock { cidr: Ipv4Prefix, except: Vec<Ipv4Prefix> },
}

/// One ingress or egress rule: `peers` None admits every peer (`from`/`to`
/// absent or empty), `ports` None every port and protocol.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyRule {
    pub peers: Option<Vec<Peer>>,
    pub ports: Option<Vec<PolicyPort>>,
}

/// A NetworkPolicy: `ingress` is Some when its policyTypes include Ingress
/// (an empty list then admits nothing), `egress` likewise.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: LabelSelector,
    pub ingress: Option<Vec<PolicyRule>>,
    pub egress: Option<Vec<PolicyRule>>,
}

/// What policies know of a pod anywhere in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyPod {
    pub namespace: String,
    pub name: String,
    /// Absent until the pod has an address (status.podIP, or the agent's own
    /// IPAM for a local pod being added).
    pub ip: Option<Ipv4Addr>,
    pub labels: Labels,
    /// Named container ports: (name, protocol) -> port.
    pub named_ports: BTreeMap<(String, PolicyProtocol), u16>,
}

/// Everything the policies of a cluster depend on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyView {
    /// By (namespace, name).
    pub policies: BTreeMap<(String, String), Policy>,
    /// By (namespace, name).
    pub pods: BTreeMap<(String, String), PolicyPod>,
    /// Namespace name -> its labels (with `kubernetes.io/metadata.name`, as
    /// the API server sets it).
    pub namespaces: BTreeMap<String, Labels>,
}

impl PolicyView {
    /// Does `pod` match `peer` of a policy in `policy_ns`?
    pub fn peer_selects(&self, peer: &Peer, policy_ns: &str, pod: &PolicyPod) -> bool {
        match peer {
            Peer::IpBlock { .. } => false,
            Peer::Pods { namespaces, pods } => {
                let ns_ok = match namespaces {
                    None => pod.namespace == policy_ns,
                    // A namespace the view has not seen yet has at least the
                    // label the API server gives every namespace.
                    Some(sel) => match self.namespaces.get(&pod.namespace) {
                        Some(labels) => sel.matches(labels),
                        None => sel.matches(&Labels::from([(NAME_LABEL.to_string(), pod.namespace.clone())])),
                    },
                };
                ns_ok && pods.as_ref().is_none_or(|sel| sel.matches(&pod.labels))
            }
        }
    }

    /// The policies that select `pod` (its namespace, its labels).
    pub fn selecting<'a>(&'a self, pod: &'a PolicyPod) -> impl Iterator<Item = &'a Policy> + 'a {
        self.policies
            .values()
            .filter(move |p| p.namespace == pod.namespace && p.pod_selector.matches(&pod.labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn selectors_follow_the_label_selector_rules() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        assert!(LabelSelector::everything().matches(&l));
        assert!(LabelSelector::everything().matches(&Labels::new()));
        let by = |ml: &[(&str, &str)], ex: Vec<Requirement>| LabelSelector {
            match_labels: labels(ml),
            match_expressions: ex,
        };
        let req = |key: &str, operator, values: &[&str]| Requirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        assert!(by(&[("app", "web")], vec![]).matches(&l));
        assert!(!by(&[("app", "web"), ("x", "y")], vec![]).matches(&l));
        assert!(by(&[], vec![req("tier", Operator::In, &["front", "back"])]).matches(&l));
        assert!(!by(&[], vec![req("tier", Operator::In, &["back"])]).matches(&l));
        assert!(!by(&[], vec![req("missing", Operator::In, &["x"])]).matches(&l));
        assert!(
            by(&[], vec![req("missing", Operator::NotIn, &["x"])]).matches(&l),
            "NotIn holds when the key is absent"
        );
        assert!(!by(&[], vec![req("app", Operator::NotIn, &["web"])]).matches(&l));
        assert!(by(&[], vec![req("app", Operator::Exists, &[])]).matches(&l));
        assert!(!by(&[], vec![req("app", Operator::DoesNotExist, &[])]).matches(&l));
        assert!(
            !by(&[("app", "web")], vec![req("tier", Operator::DoesNotExist, &[])]).matches(&l),
            "all must hold"
        );
    }
}
