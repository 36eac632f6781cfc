//! Who may talk to whom under Kubernetes NetworkPolicy, computed from the
//! objects as the apiserver stores them (`serde_json::Value`s of Namespaces,
//! Pods and `networking.k8s.io/v1` NetworkPolicies), combined with k8s-ovs
//! tenancy (VNIs). Written from the Kubernetes API's rules, not from
//! `ovs_flows::policy`: the lab tests hold the dataplane against this.
//!
//! The rules (networking.k8s.io/v1, `NetworkPolicySpec`):
//! - A pod is isolated for ingress (egress) when a policy of its namespace
//!   selects it (`spec.podSelector`, `{}` = every pod of the namespace) and
//!   lists `Ingress` (`Egress`) in `spec.policyTypes` (absent: `Ingress`,
//!   plus `Egress` when `spec.egress` has rules; the apiserver stores it
//!   defaulted). A pod no policy isolates in a direction allows everything
//!   in that direction.
//! - An isolated pod allows what any rule of any policy selecting it for
//!   that direction allows (rules are additive, never deny). `ingress: []`
//!   or no `ingress` allows nothing.
//! - A rule allows a packet when a peer matches (`from`/`to` absent or
//!   empty: every peer) and a port matches (`ports` absent or empty: every
//!   port of every protocol, ICMP included; else only TCP/UDP/SCTP packets).
//! - A peer: `ipBlock` (`cidr`, minus each `except`) matches by address;
//!   `podSelector` alone: pods of the policy's namespace; `namespaceSelector`
//!   alone: every pod of the namespaces it selects; both: the pods the pod
//!   selector picks in the namespaces the namespace selector picks.
//! - A port: `protocol` (default TCP); `port` absent: every port of it; a
//!   number, up to `endPort` when given; a name: the destination pod's
//!   container port of that name and protocol (for egress too: the port is
//!   always the destination's).
//! - Traffic between a pod and its own node is always allowed.
//!
//! Tenancy comes first: two pods talk only when their namespaces' VNIs are
//! equal or either is 0 (global), whatever the policies say.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde_json::Value;

/// The protocol of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
    Icmp,
}

impl Proto {
    /// The API's name (`NetworkPolicyPort.protocol`), `None` for ICMP.
    fn api_name(self) -> Option<&'static str> {
        match self {
            Proto::Tcp => Some("TCP"),
            Proto::Udp => Some("UDP"),
            Proto::Sctp => Some("SCTP"),
            Proto::Icmp => None,
        }
    }
}

/// One kind of packet: a protocol and (but for ICMP) a destination port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Probe {
    pub proto: Proto,
    pub port: u16,
}

impl Probe {
    pub fn tcp(port: u16) -> Probe {
        Probe { proto: Proto::Tcp, port }
    }
    pub fn udp(port: u16) -> Probe {
        Probe { proto: Proto::Udp, port }
    }
    pub fn icmp() -> Probe {
        Probe { proto: Proto::Icmp, port: 0 }
    }
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.proto {
            Proto::Icmp => write!(f, "ICMP"),
            p => write!(f, "{}/{}", self.port, p.api_name().unwrap_or_default()),
        }
    }
}

/// One end of a packet: a pod (its stored object) or a node (its name,
/// as pods' `spec.nodeName` gives it, and the address it sends from).
#[derive(Debug, Clone, Copy)]
pub enum End<'a> {
    Pod(&'a Value),
    Node { name: &'a str, ip: Ipv4Addr },
}

/// The objects the verdicts are computed from.
pub struct Cluster<'a> {
    pub namespaces: &'a [Value],
    pub policies: &'a [Value],
    /// Namespace name -> VNI (0: global). A namespace without one reaches nobody.
    pub vnis: &'a BTreeMap<String, u32>,
}

fn str_at<'v>(v: &'v Value, path: &[&str]) -> &'v str {
    path.iter().fold(v, |v, k| &v[*k]).as_str().unwrap_or_default()
}

/// A non-empty array at `v`, `None` when absent, null or empty.
fn non_empty(v: Option<&Value>) -> Option<&Vec<Value>> {
    v.and_then(Value::as_array).filter(|a| !a.is_empty())
}

fn labels(object: &Value) -> BTreeMap<String, String> {
    object["metadata"]["labels"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
        .unwrap_or_default()
}

/// A `metav1.LabelSelector`: every `matchLabels` pair and every
/// `matchExpressions` requirement holds (`{}` selects everything).
pub fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let pairs = selector["matchLabels"].as_object().into_iter().flatten();
    let exprs = selector["matchExpressions"].as_array().into_iter().flatten();
    pairs.into_iter().all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str())
        && exprs.into_iter().all(|e| {
            let have = labels.get(str_at(e, &["key"]));
            let values: Vec<&str> =
                e["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            match str_at(e, &["operator"]) {
                "In" => have.is_some_and(|h| values.contains(&h.as_str())),
                "NotIn" => have.is_none_or(|h| !values.contains(&h.as_str())),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                // The apiserver refuses any other operator.
                other => panic!("label selector operator {other:?}"),
            }
        })
}

/// `a.b.c.d/len` contains `ip`.
fn cidr_contains(cidr: &str, ip: Ipv4Addr) -> bool {
    let Some((net, len)) = cidr.split_once('/') else { return false };
    let (Ok(net), Ok(len)) = (net.parse::<Ipv4Addr>(), len.parse::<u32>()) else { return false };
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len.min(32)) };
    u32::from(ip) & mask == u32::from(net) & mask
}

impl<'a> Cluster<'a> {
    /// Whether `src` reaches `dst` with `probe`: tenancy, `src`'s egress
    /// and `dst`'s ingress all allow it.
    pub fn allowed(&self, src: End<'_>, dst: End<'_>, probe: Probe) -> bool {
        self.tenancy_allows(src, dst)
            && self.egress_allows(src, dst, probe)
            && self.ingress_allows(src, dst, probe)
    }

    /// VNIs equal, or either global; nodes count as global.
    pub fn tenancy_allows(&self, src: End<'_>, dst: End<'_>) -> bool {
        match (self.vni(src), self.vni(dst)) {
            (Some(a), Some(b)) => a == b || a == 0 || b == 0,
            _ => false,
        }
    }

    fn vni(&self, end: End<'_>) -> Option<u32> {
        match end {
            End::Pod(p) => self.vnis.get(str_at(p, &["metadata", "namespace"])).copied(),
            End::Node { .. } => Some(0),
        }
    }

    /// What `src`'s egress policies allow (everything when none isolates it).
    pub fn egress_allows(&self, src: End<'_>, dst: End<'_>, probe: Probe) -> bool {
        let End::Pod(pod) = src else { return true };
        if own_node(pod, dst) {
            return true;
        }
        self.direction_allows(pod, "Egress", "egress", "to", dst, dst, probe)
    }

    /// What `dst`'s ingress policies allow (everything when none isolates it).
    pub fn ingress_allows(&self, src: End<'_>, dst: End<'_>, probe: Probe) -> bool {
        let End::Pod(pod) = dst else { return true };
        if own_node(pod, src) {
            return true;
        }
        self.direction_allows(pod, "Ingress", "ingress", "from", src, dst, probe)
    }

    /// The policies of `pod`'s namespace selecting it for `ptype`; when
    /// there are some, whether a rule of one of them allows `peer` (the
    /// other end) with `probe` to `dst`.
    #[allow(clippy::too_many_arguments)]
    fn direction_allows(
        &self,
        pod: &Value,
        ptype: &str,
        rules_key: &str,
        peers_key: &str,
        peer: End<'_>,
        dst: End<'_>,
        probe: Probe,
    ) -> bool {
        let ns = str_at(pod, &["metadata", "namespace"]);
        let pod_labels = labels(pod);
        let mut isolated = false;
        for pol in self.policies.iter().filter(|p| str_at(p, &["metadata", "namespace"]) == ns) {
            let spec = &pol["spec"];
            if !policy_types(spec).contains(&ptype) || !selects(&spec["podSelector"], &pod_labels) {
                continue;
            }
            isolated = true;
            let rules = spec[rules_key].as_array().into_iter().flatten();
            if rules.into_iter().any(|r| self.rule_allows(r, peers_key, ns, peer, dst, probe)) {
                return true;
            }
        }
        !isolated
    }

    fn rule_allows(
        &self,
        rule: &Value,
        peers_key: &str,
        policy_ns: &str,
        peer: End<'_>,
        dst: End<'_>,
        probe: Probe,
    ) -> bool {
        let peers_ok = match non_empty(rule.get(peers_key)) {
            None => true,
            Some(peers) => peers.iter().any(|p| self.peer_matches(p, policy_ns, peer)),
        };
        peers_ok && ports_match(rule.get("ports"), dst, probe)
    }

    fn peer_matches(&self, peer: &Value, policy_ns: &str, end: End<'_>) -> bool {
        if let Some(block) = peer.get("ipBlock").filter(|b| b.is_object()) {
            let Some(ip) = address(end) else { return false };
            let except = block["except"].as_array().into_iter().flatten().filter_map(Value::as_str);
            return cidr_contains(str_at(block, &["cidr"]), ip)
                && !except.into_iter().any(|e| cidr_contains(e, ip));
        }
        // Selectors pick pods only.
        let End::Pod(pod) = end else { return false };
        let (ns_sel, pod_sel) = (peer.get("namespaceSelector"), peer.get("podSelector"));
        let pod_ns = str_at(pod, &["metadata", "namespace"]);
        let ns_ok = match ns_sel.filter(|s| s.is_object()) {
            Some(sel) => self.namespace(pod_ns).is_some_and(|n| selects(sel, &labels(n))),
            None => pod_ns == policy_ns,
        };
        let pod_ok = match pod_sel.filter(|s| s.is_object()) {
            Some(sel) => selects(sel, &labels(pod)),
            // A peer with neither selector nor ipBlock is invalid (refused by the apiserver).
            None => ns_sel.is_some_and(Value::is_object),
        };
        ns_ok && pod_ok
    }

    fn namespace(&self, name: &str) -> Option<&Value> {
        self.namespaces.iter().find(|n| str_at(n, &["metadata", "name"]) == name)
    }
}

/// `spec.policyTypes`, or its default when absent or empty.
fn policy_types(spec: &Value) -> Vec<&str> {
    match non_empty(spec.get("policyTypes")) {
        Some(t) => t.iter().filter_map(Value::as_str).collect(),
        None if non_empty(spec.get("egress")).is_some() => vec!["Ingress", "Egress"],
        None => vec!["Ingress"],
    }
}

/// The pod's node is the other end.
fn own_node(pod: &Value, other: End<'_>) -> bool {
    matches!(other, End::Node { name, .. } if name == str_at(pod, &["spec", "nodeName"]))
}

fn address(end: End<'_>) -> Option<Ipv4Addr> {
    match end {
        End::Pod(p) => str_at(p, &["status", "podIP"]).parse().ok(),
        End::Node { ip, .. } => Some(ip),
    }
}

fn ports_match(ports: Option<&Value>, dst: End<'_>, probe: Probe) -> bool {
    let Some(ports) = non_empty(ports) else { return true };
    let Some(proto) = probe.proto.api_name() else { return false };
    ports.iter().any(|p| {
        let p_proto = p["protocol"].as_str().unwrap_or("TCP");
        if p_proto != proto {
            return false;
        }
        match &p["port"] {
            Value::Null => true,
            Value::Number(n) => {
                let start = n.as_u64().unwrap_or(0);
                let end = p["endPort"].as_u64().unwrap_or(start);
                (start..=end).contains(&u64::from(probe.port))
            }
            Value::String(name) => named_port(dst, name, p_proto) == Some(probe.port),
            _ => false,
        }
    })
}

/// The destination pod's container port called `name` with `proto`.
fn named_port(dst: End<'_>, name: &str, proto: &str) -> Option<u16> {
    let End::Pod(pod) = dst else { return None };
    let containers = pod["spec"]["containers"].as_array().into_iter().flatten();
    containers
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .find(|p| p["name"] == name && p["protocol"].as_str().unwrap_or("TCP") == proto)
        .and_then(|p| p["containerPort"].as_u64())
        .map(|p| p as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ns(name: &str, labels: Value) -> Value {
        let mut l = labels;
        l["kubernetes.io/metadata.name"] = json!(name);
        json!({"kind": "Namespace", "metadata": {"name": name, "labels": l}})
    }

    fn pod(ns: &str, name: &str, labels: Value, node: &str, ip: &str) -> Value {
        json!({"kind": "Pod", "metadata": {"namespace": ns, "name": name, "labels": labels},
               "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
                   {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                   {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
               "status": {"podIP": ip, "podIPs": [{"ip": ip}]}})
    }

    fn pol(ns: &str, spec: Value) -> Value {
        json!({"kind": "NetworkPolicy", "metadata": {"namespace": ns, "name": "p"}, "spec": spec})
    }

    struct W {
        namespaces: Vec<Value>,
        vnis: BTreeMap<String, u32>,
        /// a1, a2 (ns a, app=web / app=db), b1 (ns b, app=web), g1 (ns g, other VNI).
        pods: BTreeMap<&'static str, Value>,
    }

    fn world() -> W {
        let namespaces =
            vec![ns("a", json!({"team": "x"})), ns("b", json!({"team": "y"})), ns("g", json!({}))];
        let vnis = [("a", 10), ("b", 10), ("g", 20)].into_iter().map(|(n, v)| (n.to_string(), v)).collect();
        let pods = [
            ("a1", pod("a", "a1", json!({"app": "web"}), "n1", "10.0.0.1")),
            ("a2", pod("a", "a2", json!({"app": "db"}), "n2", "10.0.1.1")),
            ("b1", pod("b", "b1", json!({"app": "web"}), "n1", "10.0.0.2")),
            ("b2", pod("b", "b2", json!({"app": "db"}), "n2", "10.0.1.2")),
            ("g1", pod("g", "g1", json!({"app": "web"}), "n1", "10.0.0.3")),
        ]
        .into_iter()
        .collect();
        W { namespaces, vnis, pods }
    }

    impl W {
        fn allowed(&self, policies: &[Value], src: &str, dst: &str, probe: Probe) -> bool {
            let c = Cluster { namespaces: &self.namespaces, policies, vnis: &self.vnis };
            c.allowed(self.end(src), self.end(dst), probe)
        }
        fn end(&self, name: &str) -> End<'_> {
            match name {
                "n1" => End::Node { name: "n1", ip: "192.168.0.1".parse().unwrap() },
                "n2" => End::Node { name: "n2", ip: "192.168.0.2".parse().unwrap() },
                p => End::Pod(&self.pods[p]),
            }
        }
    }

    const T80: Probe = Probe { proto: Proto::Tcp, port: 80 };

    #[test]
    fn tenancy_alone() {
        let w = world();
        assert!(w.allowed(&[], "a1", "b2", T80), "joined VNIs");
        assert!(!w.allowed(&[], "a1", "g1", T80), "other VNI");
        assert!(!w.allowed(&[], "g1", "a1", Probe::icmp()));
        let mut w = world();
        w.vnis.insert("g".into(), 0);
        assert!(w.allowed(&[], "g1", "a1", T80) && w.allowed(&[], "a1", "g1", T80), "global");
    }

    #[test]
    fn default_deny_ingress_and_egress() {
        let w = world();
        let deny_in = [pol("a", json!({"podSelector": {}, "policyTypes": ["Ingress"]}))];
        assert!(!w.allowed(&deny_in, "b1", "a1", T80) && !w.allowed(&deny_in, "a2", "a1", Probe::icmp()));
        assert!(w.allowed(&deny_in, "a1", "b1", T80), "egress stays open");
        let deny_out = [pol("a", json!({"podSelector": {}, "policyTypes": ["Egress"]}))];
        assert!(!w.allowed(&deny_out, "a1", "b1", T80) && w.allowed(&deny_out, "b1", "a1", T80));
        // policyTypes absent: Ingress only, even with no ingress field.
        let absent = [pol("a", json!({"podSelector": {}}))];
        assert!(!w.allowed(&absent, "b1", "a1", T80) && w.allowed(&absent, "a1", "b1", T80));
        // policyTypes absent with egress rules: both directions.
        let both =
            [pol("a", json!({"podSelector": {}, "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]}))];
        assert!(!w.allowed(&both, "b1", "a1", T80) && !w.allowed(&both, "a1", "b1", T80));
        assert!(w.allowed(&both, "a1", "b1", Probe::udp(53)));
    }

    #[test]
    fn empty_versus_absent() {
        let w = world();
        // One empty rule: everything; an empty rule list: nothing.
        let all = [pol("a", json!({"podSelector": {}, "ingress": [{}]}))];
        assert!(w.allowed(&all, "b1", "a1", Probe::icmp()) && w.allowed(&all, "b1", "a1", Probe::udp(9)));
        let none = [pol("a", json!({"podSelector": {}, "ingress": []}))];
        assert!(!w.allowed(&none, "b1", "a1", T80));
        // Empty `from` and `ports` lists mean every peer, every port.
        let empty_lists = [pol("a", json!({"podSelector": {}, "ingress": [{"from": [], "ports": []}]}))];
        assert!(w.allowed(&empty_lists, "b1", "a1", Probe::icmp()));
    }

    #[test]
    fn pod_selector_of_the_policy_and_of_peers() {
        let w = world();
        // Only app=db pods of a are isolated.
        let p =
            [pol("a", json!({"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"]}))];
        assert!(w.allowed(&p, "b1", "a1", T80) && !w.allowed(&p, "b1", "a2", T80));
        // Peer podSelector: pods of the policy's namespace only.
        let p = [pol(
            "a",
            json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}),
        )];
        assert!(w.allowed(&p, "a1", "a2", T80), "a1 is web in a");
        assert!(!w.allowed(&p, "b1", "a2", T80), "b1 is web, but in b");
        assert!(!w.allowed(&p, "a2", "a1", T80), "a2 is db");
        // Same namespace: podSelector {}.
        let p = [pol("a", json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}))];
        assert!(w.allowed(&p, "a2", "a1", T80) && !w.allowed(&p, "b1", "a1", T80));
    }

    #[test]
    fn match_expressions() {
        let w = world();
        let sel = |op: &str, values: Value| {
            [pol(
                "a",
                json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {},
                "podSelector": {"matchExpressions": [{"key": "app", "operator": op, "values": values}]}}]}]}),
            )]
        };
        assert!(w.allowed(&sel("In", json!(["web"])), "b1", "a2", T80));
        assert!(!w.allowed(&sel("In", json!(["db"])), "b1", "a2", T80));
        assert!(!w.allowed(&sel("NotIn", json!(["web"])), "b1", "a2", T80));
        assert!(w.allowed(&sel("NotIn", json!(["db"])), "b1", "a2", T80));
        assert!(w.allowed(&sel("Exists", json!([])), "b1", "a2", T80));
        assert!(!w.allowed(&sel("DoesNotExist", json!([])), "b1", "a2", T80));
        let mut labels = BTreeMap::new();
        assert!(selects(
            &json!({"matchExpressions": [{"key": "k", "operator": "NotIn", "values": ["v"]}]}),
            &labels
        ));
        labels.insert("k".to_string(), "v".to_string());
        assert!(!selects(
            &json!({"matchExpressions": [{"key": "k", "operator": "NotIn", "values": ["v"]}]}),
            &labels
        ));
        assert!(!selects(&json!({"matchLabels": {"k": "v", "j": "w"}}), &labels), "every pair must hold");
    }

    #[test]
    fn namespace_selector_alone_and_with_a_pod_selector() {
        let w = world();
        let alone = [pol(
            "a",
            json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}}}]}]}),
        )];
        assert!(w.allowed(&alone, "b1", "a1", T80) && w.allowed(&alone, "b2", "a1", T80));
        assert!(!w.allowed(&alone, "a2", "a1", T80), "its own namespace is team x");
        let both = [pol(
            "a",
            json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}},
            "podSelector": {"matchLabels": {"app": "db"}}}]}]}),
        )];
        assert!(w.allowed(&both, "b2", "a1", T80) && !w.allowed(&both, "b1", "a1", T80));
        // The same selectors as two peers: either.
        let either = [pol(
            "a",
            json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}}},
            {"podSelector": {"matchLabels": {"app": "db"}}}]}]}),
        )];
        assert!(w.allowed(&either, "b1", "a1", T80) && w.allowed(&either, "a2", "a1", T80));
        // Every namespace: {}.
        let every =
            [pol("a", json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}))];
        assert!(w.allowed(&every, "b1", "a1", T80));
    }

    #[test]
    fn a_policy_never_opens_what_the_vnis_close() {
        let mut w = world();
        let p = [pol("a", json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}))];
        assert!(!w.allowed(&p, "g1", "a1", T80), "g has another VNI");
        w.vnis.insert("g".into(), 0);
        assert!(w.allowed(&p, "g1", "a1", T80), "global");
        let deny = [pol("g", json!({"podSelector": {}, "policyTypes": ["Ingress"]}))];
        assert!(!w.allowed(&deny, "a1", "g1", T80), "a global namespace's own policy still holds");
    }

    #[test]
    fn ip_block_with_except() {
        let w = world();
        let p = [pol(
            "a",
            json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/24", "except": ["10.0.0.2/32"]}}]}]}),
        )];
        assert!(w.allowed(&p, "a1", "a2", T80), "10.0.0.1 in the block");
        assert!(!w.allowed(&p, "b1", "a2", T80), "10.0.0.2 excepted");
        assert!(!w.allowed(&p, "b2", "a2", T80), "10.0.1.2 outside");
        let p = [pol(
            "a",
            json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {"cidr": "10.0.1.0/24"}}]}]}),
        )];
        assert!(w.allowed(&p, "a1", "b2", T80) && !w.allowed(&p, "a1", "b1", T80));
        assert!(cidr_contains("0.0.0.0/0", "1.2.3.4".parse().unwrap()));
        assert!(!cidr_contains("10.0.0.0/31", "10.0.0.2".parse().unwrap()));
    }

    #[test]
    fn ports_protocols_ranges_and_names() {
        let w = world();
        let with = |ports: Value| [pol("a", json!({"podSelector": {}, "ingress": [{"ports": ports}]}))];
        let p = with(json!([{"port": 80, "protocol": "TCP"}]));
        assert!(w.allowed(&p, "b1", "a1", T80));
        assert!(!w.allowed(&p, "b1", "a1", Probe::tcp(81)) && !w.allowed(&p, "b1", "a1", Probe::udp(80)));
        assert!(!w.allowed(&p, "b1", "a1", Probe::icmp()), "ports given: no ICMP");
        // Protocol defaults to TCP; no port: every port of the protocol.
        assert!(w.allowed(&with(json!([{"port": 80}])), "b1", "a1", T80));
        let udp = with(json!([{"protocol": "UDP"}]));
        assert!(w.allowed(&udp, "b1", "a1", Probe::udp(9)) && !w.allowed(&udp, "b1", "a1", T80));
        // endPort: inclusive.
        let range = with(json!([{"port": 5000, "endPort": 5002, "protocol": "TCP"}]));
        for (port, want) in [(4999, false), (5000, true), (5002, true), (5003, false)] {
            assert_eq!(w.allowed(&range, "b1", "a1", Probe::tcp(port)), want, "{port}");
        }
        // A named port is the destination pod's, protocol included.
        let named = with(json!([{"port": "http", "protocol": "TCP"}]));
        assert!(w.allowed(&named, "b1", "a1", Probe::tcp(8080)) && !w.allowed(&named, "b1", "a1", T80));
        assert!(!w.allowed(&with(json!([{"port": "dns", "protocol": "TCP"}])), "b1", "a1", Probe::tcp(53)));
        assert!(w.allowed(&with(json!([{"port": "dns", "protocol": "UDP"}])), "b1", "a1", Probe::udp(53)));
        // Egress: the destination's name too.
        let out = [pol(
            "b",
            json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": "http"}]}]}),
        )];
        assert!(w.allowed(&out, "b1", "a1", Probe::tcp(8080)) && !w.allowed(&out, "b1", "a1", T80));
    }

    #[test]
    fn rules_and_policies_add_up() {
        let w = world();
        let p1 = pol(
            "a",
            json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}),
        );
        let mut p2 = pol("a", json!({"podSelector": {}, "ingress": [{"ports": [{"port": 81}]}]}));
        p2["metadata"]["name"] = json!("p2");
        assert!(!w.allowed(std::slice::from_ref(&p1), "b1", "a2", Probe::tcp(81)));
        assert!(w.allowed(&[p1.clone(), p2.clone()], "b1", "a2", Probe::tcp(81)), "p2 adds port 81 for all");
        assert!(!w.allowed(&[p1.clone(), p2], "b1", "a2", T80));
        // A policy in another namespace changes nothing here.
        let other = pol("b", json!({"podSelector": {}, "policyTypes": ["Ingress"]}));
        assert!(w.allowed(&[other], "b1", "a2", T80));
        // Both ends' policies must allow.
        let out = pol("b", json!({"podSelector": {}, "policyTypes": ["Egress"]}));
        assert!(!w.allowed(&[p1, out], "b1", "a1", T80) && w.allowed(&[], "b1", "a1", T80));
    }

    #[test]
    fn a_pods_own_node_is_always_allowed() {
        let w = world();
        let deny = [pol("a", json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))];
        assert!(w.allowed(&deny, "n1", "a1", T80) && w.allowed(&deny, "a1", "n1", T80));
        assert!(!w.allowed(&deny, "n1", "a2", T80), "a2 runs on n2");
        // Another node is an address: an ipBlock may allow it, a selector never does.
        let block = [pol(
            "a",
            json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "192.168.0.0/24"}}, {"namespaceSelector": {}}]}]}),
        )];
        assert!(w.allowed(&block, "n1", "a2", T80));
        let sel = [pol("a", json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}))];
        assert!(!w.allowed(&sel, "n1", "a2", T80));
    }
}
