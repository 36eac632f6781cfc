use std::net::Ipv4Addr;

use serde_json::{json, Value};

use super::*;

fn policy(spec: Value) -> (Policy, Vec<String>) {
    let np: NetworkPolicy =
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "red"}, "spec": spec})).unwrap();
    to_policy(&np)
}

/// A policy that must read without warnings.
fn clean(spec: Value) -> Policy {
    let (p, warnings) = policy(spec);
    assert!(warnings.is_empty(), "{warnings:?}");
    p
}

fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn sel(kv: &[(&str, &str)]) -> LabelSelector {
    LabelSelector { match_labels: labels(kv), match_expressions: vec![] }
}

fn prefix(s: &str) -> Ipv4Prefix {
    let (a, l) = s.split_once('/').unwrap();
    Ipv4Prefix::new(a.parse().unwrap(), l.parse().unwrap())
}

fn tcp(first: u16, last: u16) -> PolicyPort {
    PolicyPort { protocol: PolicyProtocol::Tcp, port: PortMatch::Range(first, last) }
}

/// The one ingress rule of a policy with `rule` as its only ingress rule.
fn ingress_rule(rule: Value) -> (PolicyRule, Vec<String>) {
    let (p, w) = policy(json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [rule]}));
    let mut rules = p.ingress.unwrap();
    assert_eq!(rules.len(), 1);
    (rules.remove(0), w)
}

#[test]
fn the_kubernetes_docs_example_policy() {
    // https://kubernetes.io/docs/concepts/services-networking/network-policies/
    let np: NetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "test-network-policy", "namespace": "default"},
        "spec": {
            "podSelector": {"matchLabels": {"role": "db"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{
                "from": [
                    {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
                    {"namespaceSelector": {"matchLabels": {"project": "myproject"}}},
                    {"podSelector": {"matchLabels": {"role": "frontend"}}}
                ],
                "ports": [{"protocol": "TCP", "port": 6379}]
            }],
            "egress": [{
                "to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}],
                "ports": [{"protocol": "TCP", "port": 5978}]
            }]
        }
    }))
    .unwrap();
    let (p, warnings) = to_policy(&np);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        p,
        Policy {
            namespace: "default".into(),
            name: "test-network-policy".into(),
            pod_selector: sel(&[("role", "db")]),
            ingress: Some(vec![PolicyRule {
                peers: Some(vec![
                    Peer::IpBlock { cidr: prefix("172.17.0.0/16"), except: vec![prefix("172.17.1.0/24")] },
                    Peer::Pods { namespaces: Some(sel(&[("project", "myproject")])), pods: None },
                    Peer::Pods { namespaces: None, pods: Some(sel(&[("role", "frontend")])) },
                ]),
                ports: Some(vec![tcp(6379, 6379)]),
            }]),
            egress: Some(vec![PolicyRule {
                peers: Some(vec![Peer::IpBlock { cidr: prefix("10.0.0.0/24"), except: vec![] }]),
                ports: Some(vec![tcp(5978, 5978)]),
            }]),
        }
    );
}

#[test]
fn policy_types_as_given_or_as_the_api_defaults_them() {
    let egress_rule = json!([{"to": [{"podSelector": {}}]}]);
    // Given: only the listed directions, whatever rules are there.
    let p = clean(json!({"policyTypes": ["Egress"], "ingress": [{}], "egress": egress_rule}));
    assert_eq!(p.ingress, None);
    assert_eq!(p.egress.map(|e| e.len()), Some(1));
    // Ingress given without an ingress list: isolated, nothing admitted.
    let p = clean(json!({"policyTypes": ["Ingress", "Egress"]}));
    assert_eq!((p.ingress, p.egress), (Some(vec![]), Some(vec![])));
    // Absent or empty: Ingress, and Egress when there are egress rules.
    for types in [json!(null), json!([])] {
        let p = clean(json!({"policyTypes": types}));
        assert_eq!((p.ingress, p.egress), (Some(vec![]), None));
        let p = clean(json!({"policyTypes": types, "egress": egress_rule}));
        assert_eq!(p.ingress, Some(vec![]));
        assert_eq!(p.egress.map(|e| e.len()), Some(1));
        let p = clean(json!({"policyTypes": types, "egress": []}));
        assert_eq!((p.ingress, p.egress), (Some(vec![]), None));
    }
    // No spec at all: `{}`, every pod of the namespace, no ingress.
    let np: NetworkPolicy =
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "red"}})).unwrap();
    let (p, w) = to_policy(&np);
    assert!(w.is_empty());
    assert_eq!((p.pod_selector, p.ingress, p.egress), (LabelSelector::everything(), Some(vec![]), None));
}

#[test]
fn an_unknown_policy_type_is_ignored_with_a_warning() {
    let (p, w) = policy(json!({"policyTypes": ["Egress", "Sideways"]}));
    assert_eq!((p.ingress, p.egress), (None, Some(vec![])));
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("red/p") && w[0].contains("spec.policyTypes[1]"), "{w:?}");
    // Nothing known: the default, so the pods are still isolated.
    let (p, w) = policy(json!({"policyTypes": ["ingress"]}));
    assert_eq!((p.ingress, p.egress), (Some(vec![]), None));
    assert_eq!(w.len(), 1);
}

#[test]
fn absent_or_empty_peers_and_ports_mean_all() {
    for (from, ports) in [(json!(null), json!(null)), (json!([]), json!([]))] {
        let (r, w) = ingress_rule(json!({"from": from, "ports": ports}));
        assert!(w.is_empty());
        assert_eq!(r, PolicyRule { peers: None, ports: None });
    }
    let p = clean(json!({"policyTypes": ["Egress"], "egress": [{"to": [], "ports": []}]}));
    assert_eq!(p.egress, Some(vec![PolicyRule { peers: None, ports: None }]));
}

#[test]
fn peers_by_pod_selector_namespace_selector_or_both() {
    let (r, w) = ingress_rule(json!({"from": [
        {"podSelector": {"matchLabels": {"app": "web"}}},
        {"namespaceSelector": {"matchLabels": {"team": "a"}}},
        {"namespaceSelector": {"matchLabels": {"team": "a"}}, "podSelector": {"matchLabels": {"app": "web"}}},
        {"podSelector": {}},
        {"namespaceSelector": {}},
    ]}));
    assert!(w.is_empty(), "{w:?}");
    let web = || Some(sel(&[("app", "web")]));
    let team = || Some(sel(&[("team", "a")]));
    assert_eq!(
        r.peers.unwrap(),
        [
            Peer::Pods { namespaces: None, pods: web() },
            Peer::Pods { namespaces: team(), pods: None },
            Peer::Pods { namespaces: team(), pods: web() },
            // `{}`: every pod (of the policy's namespace).
            Peer::Pods { namespaces: None, pods: Some(LabelSelector::everything()) },
            // Every pod of every namespace.
            Peer::Pods { namespaces: Some(LabelSelector::everything()), pods: None },
        ]
    );
}

#[test]
fn selector_expressions_are_read_with_their_operators() {
    let p = clean(json!({"podSelector": {
        "matchLabels": {"app": "db"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["a", "b"]},
            {"key": "env", "operator": "NotIn", "values": ["dev"]},
            {"key": "owner", "operator": "Exists"},
            {"key": "legacy", "operator": "DoesNotExist", "values": []},
        ]
    }}));
    let req = |key: &str, operator, values: &[&str]| Requirement {
        key: key.into(),
        operator,
        values: values.iter().map(|v| v.to_string()).collect(),
    };
    assert_eq!(
        p.pod_selector,
        LabelSelector {
            match_labels: labels(&[("app", "db")]),
            match_expressions: vec![
                req("tier", Operator::In, &["a", "b"]),
                req("env", Operator::NotIn, &["dev"]),
                req("owner", Operator::Exists, &[]),
                req("legacy", Operator::DoesNotExist, &[]),
            ],
        }
    );
}

#[test]
fn ports_with_protocols_ranges_and_names() {
    let (r, w) = ingress_rule(json!({"ports": [
        {"port": 80},
        {"protocol": "UDP", "port": 53},
        {"protocol": "SCTP"},
        {"protocol": "TCP", "port": 32000, "endPort": 32768},
        {"port": "http"},
        {"protocol": "UDP", "port": "dns-udp"},
    ]}));
    assert!(w.is_empty(), "{w:?}");
    let port = |protocol, port| PolicyPort { protocol, port };
    assert_eq!(
        r.ports.unwrap(),
        [
            tcp(80, 80),
            port(PolicyProtocol::Udp, PortMatch::Range(53, 53)),
            port(PolicyProtocol::Sctp, PortMatch::Any),
            tcp(32000, 32768),
            port(PolicyProtocol::Tcp, PortMatch::Named("http".into())),
            port(PolicyProtocol::Udp, PortMatch::Named("dns-udp".into())),
        ]
    );
    assert_eq!(r.peers, None);
}

#[test]
fn an_invalid_port_matches_nothing_and_the_others_stand() {
    let (r, w) = ingress_rule(json!({"ports": [
        {"protocol": "ICMP", "port": 1},
        {"port": "http", "endPort": 90},
        {"port": 90, "endPort": 80},
        {"endPort": 80},
        {"port": 0},
        {"port": 70000},
        {"port": 80, "endPort": 70000},
        {"port": "80"},
        {"port": "Http"},
        {"port": "no--double"},
        {"port": 443},
    ]}));
    assert_eq!(r.ports, Some(vec![tcp(443, 443)]));
    assert_eq!(w.len(), 10, "{w:#?}");
    for (i, w) in w.iter().enumerate() {
        assert!(w.starts_with("NetworkPolicy red/p: "), "{w}");
        assert!(w.contains(&format!("spec.ingress[0].ports[{i}]")), "{w}");
        assert!(w.ends_with("this port matches nothing"), "{w}");
    }
    assert!(w[0].contains("ICMP"), "{}", w[0]);
    // Every port unreadable: the rule admits no port, not every port.
    let (r, w) = ingress_rule(json!({"ports": [{"protocol": "icmp"}]}));
    assert_eq!(r.ports, Some(vec![]));
    assert_eq!(w.len(), 1);
}

#[test]
fn an_invalid_pod_selector_selects_every_pod_of_the_namespace() {
    for expr in [
        json!({"key": "a", "operator": "Matches", "values": ["x"]}),
        json!({"key": "a", "operator": "In"}),
        json!({"key": "a", "operator": "NotIn", "values": []}),
        json!({"key": "a", "operator": "Exists", "values": ["x"]}),
        json!({"key": "a", "operator": "DoesNotExist", "values": ["x"]}),
        json!({"key": "", "operator": "Exists"}),
    ] {
        let (p, w) = policy(json!({
            "podSelector": {"matchLabels": {"app": "db"}, "matchExpressions": [expr]},
            "ingress": [{"from": [{"podSelector": {}}]}]
        }));
        assert_eq!(p.pod_selector, LabelSelector::everything(), "{expr}");
        assert_eq!(w.len(), 1, "{expr}: {w:?}");
        assert!(w[0].contains("red/p") && w[0].contains("spec.podSelector"), "{w:?}");
        // The rules are kept as they are.
        assert_eq!(p.ingress.unwrap()[0].peers.as_ref().map(Vec::len), Some(1));
    }
}

#[test]
fn an_invalid_peer_matches_nothing_and_the_others_stand() {
    let (r, w) = ingress_rule(json!({"from": [
        {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}},
        {"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]},
         "podSelector": {}},
        {},
        {"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}},
        {"ipBlock": {"cidr": "10.0.0.0"}},
        {"ipBlock": {"cidr": "10.0.0.0/33"}},
        {"ipBlock": {"cidr": "ten/8"}},
        {"ipBlock": {"cidr": "fd00::/64"}},
        {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}},
        {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.0.0/8"]}},
        {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["fd00::/64"]}},
        {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.1.0/24", "junk"]}},
        {"podSelector": {"matchLabels": {"app": "web"}}},
    ]}));
    assert_eq!(r.peers, Some(vec![Peer::Pods { namespaces: None, pods: Some(sel(&[("app", "web")])) }]));
    assert_eq!(w.len(), 12, "{w:#?}");
    for (i, w) in w.iter().enumerate() {
        assert!(w.starts_with("NetworkPolicy red/p: "), "{w}");
        assert!(w.contains(&format!("spec.ingress[0].from[{i}]")), "{w}");
        assert!(w.ends_with("this peer matches nothing"), "{w}");
    }
    assert!(w[0].contains("podSelector") && w[1].contains("namespaceSelector"), "{w:#?}");
    assert!(w[7].contains("IPv6"), "{}", w[7]);
}

#[test]
fn ipv6_blocks_are_dropped_and_a_rule_left_without_peers_admits_nothing() {
    let p = |to: Value| {
        let (p, w) =
            policy(json!({"policyTypes": ["Egress"], "egress": [{"to": to, "ports": [{"port": 53}]}]}));
        (p.egress.unwrap().remove(0), w)
    };
    // Dual-stack blocks: the IPv4 one stands.
    let (r, w) = p(json!([{"ipBlock": {"cidr": "fd00::/8"}}, {"ipBlock": {"cidr": "10.1.2.3/16"}}]));
    // Host bits are accepted (as the API does) and masked.
    assert_eq!(r.peers, Some(vec![Peer::IpBlock { cidr: prefix("10.1.0.0/16"), except: vec![] }]));
    assert_eq!(r.ports, Some(vec![tcp(53, 53)]));
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("spec.egress[0].to[0]") && w[0].contains("IPv6"), "{w:?}");
    // Only IPv6: the rule stays but admits no one (not everyone).
    let (r, _) = p(json!([{"ipBlock": {"cidr": "::/0"}}]));
    assert_eq!(r.peers, Some(vec![]));
    // An except equal to the block is inside it: the block admits nothing,
    // which the compiler's subtraction works out.
    let (r, w) = p(json!([{"ipBlock": {"cidr": "10.0.0.0/24", "except": ["10.0.0.0/24"]}}]));
    assert!(w.is_empty());
    assert_eq!(
        r.peers,
        Some(vec![Peer::IpBlock { cidr: prefix("10.0.0.0/24"), except: vec![prefix("10.0.0.0/24")] }])
    );
}

fn pod(v: Value) -> PolicyPod {
    to_policy_pod(&serde_json::from_value(v).unwrap())
}

#[test]
fn pods_have_their_ipv4_labels_and_named_ports() {
    let p = pod(json!({
        "metadata": {"name": "web-1", "namespace": "red", "labels": {"app": "web"}},
        "spec": {
            "initContainers": [
                {"name": "setup", "ports": [{"name": "setup-port", "containerPort": 9000}]},
                {"name": "proxy", "restartPolicy": "Always",
                 "ports": [{"name": "proxy", "containerPort": 15001, "protocol": "TCP"}]},
            ],
            "containers": [
                {"name": "app", "ports": [
                    {"name": "http", "containerPort": 8080},
                    {"name": "dns", "containerPort": 5353, "protocol": "UDP"},
                    {"name": "dns", "containerPort": 5353, "protocol": "TCP"},
                    {"containerPort": 9090},
                ]},
                {"name": "metrics", "ports": [{"name": "metrics", "containerPort": 9100, "protocol": "SCTP"}]},
            ]
        },
        "status": {"phase": "Running", "podIP": "fd00::5", "podIPs": [{"ip": "fd00::5"}, {"ip": "10.1.0.5"}]}
    }));
    assert_eq!((p.namespace.as_str(), p.name.as_str()), ("red", "web-1"));
    assert_eq!(p.ip, Some(Ipv4Addr::new(10, 1, 0, 5)), "the IPv4 one of a dual-stack pod");
    assert_eq!(p.labels, labels(&[("app", "web")]));
    let ports: Vec<(&str, PolicyProtocol, u16)> =
        p.named_ports.iter().map(|((n, proto), port)| (n.as_str(), *proto, *port)).collect();
    assert_eq!(
        ports,
        [
            ("dns", PolicyProtocol::Tcp, 5353),
            ("dns", PolicyProtocol::Udp, 5353),
            ("http", PolicyProtocol::Tcp, 8080),
            ("metrics", PolicyProtocol::Sctp, 9100),
            // A sidecar's ports serve like a container's; a plain init
            // container's (setup-port) are gone by the time the pod runs.
            ("proxy", PolicyProtocol::Tcp, 15001),
        ]
    );
}

#[test]
fn pod_addresses_from_pod_ip_and_none_when_not_usable() {
    let with = |status: Value, spec: Value| {
        pod(json!({"metadata": {"name": "a", "namespace": "red"}, "spec": spec, "status": status})).ip
    };
    let plain = json!({"containers": []});
    assert_eq!(with(json!({"podIP": "10.1.0.7"}), plain.clone()), Some(Ipv4Addr::new(10, 1, 0, 7)));
    assert_eq!(with(json!({"phase": "Pending"}), plain.clone()), None, "no address yet: kept without");
    assert_eq!(with(json!({"podIP": "fd00::1"}), plain.clone()), None);
    assert_eq!(with(json!({"podIP": "garbage"}), plain.clone()), None);
    for phase in ["Succeeded", "Failed"] {
        assert_eq!(with(json!({"phase": phase, "podIP": "10.1.0.7"}), plain.clone()), None, "{phase}");
    }
    let host = json!({"hostNetwork": true, "containers": []});
    assert_eq!(with(json!({"phase": "Running", "podIP": "192.168.1.10"}), host), None);
    // No spec or status at all.
    assert_eq!(pod(json!({"metadata": {"name": "a", "namespace": "red"}})).ip, None);
}

#[test]
fn the_store_keeps_only_what_the_view_reads() {
    let full: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-1", "namespace": "red", "labels": {"app": "web"},
                     "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}"},
                     "uid": "u", "resourceVersion": "7"},
        "spec": {
            "nodeName": "n1",
            "initContainers": [{"name": "proxy", "image": "envoy", "restartPolicy": "Always",
                                "ports": [{"name": "proxy", "containerPort": 15001}]}],
            "containers": [{"name": "app", "image": "web", "env": [{"name": "A", "value": "b"}],
                            "ports": [{"name": "http", "containerPort": 8080}, {"containerPort": 1}]}],
            "volumes": [{"name": "v", "emptyDir": {}}]
        },
        "status": {"phase": "Running", "podIP": "10.1.0.5", "podIPs": [{"ip": "10.1.0.5"}],
                   "conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .unwrap();
    let mut trimmed = full.clone();
    trim_pod(&mut trimmed);
    assert_eq!(to_policy_pod(&trimmed), to_policy_pod(&full));
    assert!(trimmed.metadata.annotations.is_none());
    let spec = trimmed.spec.as_ref().unwrap();
    assert!(spec.volumes.is_none() && spec.node_name.is_none());
    assert!(spec.containers[0].env.is_none() && spec.containers[0].image.is_none());
    assert_eq!(spec.containers[0].ports.as_ref().map(Vec::len), Some(1), "unnamed ports are not kept");
    assert!(trimmed.status.as_ref().unwrap().conditions.is_none());
}

fn np(name: &str) -> Arc<NetworkPolicy> {
    Arc::new(
        serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": "red"}, "spec": {"podSelector": {}}}),
        )
        .unwrap(),
    )
}

fn kpod(name: &str, ip: Option<&str>) -> Arc<Pod> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "red", "labels": {"app": name}},
            "status": {"podIP": ip}
        }))
        .unwrap(),
    )
}

fn kns(name: &str) -> Arc<Namespace> {
    Arc::new(
        serde_json::from_value(
            json!({"metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}}),
        )
        .unwrap(),
    )
}

#[test]
fn nothing_is_sent_until_all_three_lists_are_complete() {
    let (tx, mut rx) = watch::channel(Arc::new(PolicyView::default()));
    let mut m = Merge::new();
    m.edit(&tx, policy_edit(Change::Listed(vec![np("deny")])));
    m.edit(&tx, pod_edit(Change::Listed(vec![kpod("a", None)])));
    // Changes of the lists already complete are held too.
    m.edit(&tx, pod_edit(Change::Applied(kpod("b", Some("10.1.0.2")))));
    assert!(!rx.has_changed().unwrap());
    assert_eq!(**rx.borrow(), PolicyView::default(), "the receiver keeps the initial value");
    m.edit(&tx, namespace_edit(Change::Listed(vec![kns("red")])));
    assert!(rx.has_changed().unwrap());
    let v = rx.borrow_and_update().clone();
    assert_eq!(v.policies.keys().cloned().collect::<Vec<_>>(), [("red".to_string(), "deny".to_string())]);
    assert_eq!(v.pods.len(), 2);
    assert_eq!(v.pods[&("red".to_string(), "b".to_string())].ip, Some(Ipv4Addr::new(10, 1, 0, 2)));
    assert_eq!(v.namespaces["red"], labels(&[("kubernetes.io/metadata.name", "red")]));
}

#[test]
fn the_first_view_is_sent_even_empty_then_only_changes() {
    let (tx, mut rx) = watch::channel(Arc::new(PolicyView::default()));
    let mut m = Merge::new();
    m.edit(&tx, policy_edit(Change::Listed(vec![])));
    m.edit(&tx, pod_edit(Change::Listed(vec![])));
    m.edit(&tx, namespace_edit(Change::Listed(vec![])));
    assert!(rx.has_changed().unwrap(), "the first view marks policies known, even empty");
    let held = rx.borrow_and_update().clone();
    m.edit(&tx, pod_edit(Change::Applied(kpod("a", None))));
    assert!(rx.has_changed().unwrap());
    assert!(held.pods.is_empty(), "a reader's view is not changed under it");
    rx.borrow_and_update();
    m.edit(&tx, pod_edit(Change::Applied(kpod("a", None))));
    assert!(!rx.has_changed().unwrap(), "the same pod again wakes no one");
    m.edit(&tx, pod_edit(Change::Applied(kpod("a", Some("10.1.0.9")))));
    assert!(rx.has_changed().unwrap(), "an address set is a change");
    assert_eq!(
        rx.borrow_and_update().pods[&("red".to_string(), "a".to_string())].ip,
        Some(Ipv4Addr::new(10, 1, 0, 9))
    );
    m.edit(&tx, pod_edit(Change::Deleted(kpod("a", None))));
    assert!(rx.borrow_and_update().pods.is_empty());
    m.edit(&tx, policy_edit(Change::Applied(np("deny"))));
    m.edit(&tx, namespace_edit(Change::Applied(kns("blue"))));
    m.edit(&tx, policy_edit(Change::Deleted(np("deny"))));
    let v = rx.borrow_and_update().clone();
    assert!(v.policies.is_empty());
    assert_eq!(v.namespaces.keys().collect::<Vec<_>>(), ["blue"]);
    // A relist replaces its kind whole; an identical one wakes no one.
    m.edit(&tx, namespace_edit(Change::Listed(vec![kns("green")])));
    assert_eq!(rx.borrow_and_update().namespaces.keys().collect::<Vec<_>>(), ["green"]);
    m.edit(&tx, namespace_edit(Change::Listed(vec![kns("green")])));
    assert!(!rx.has_changed().unwrap());
}
