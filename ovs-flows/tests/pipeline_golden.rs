//! Golden tests of the pipeline: representative node states in both modes,
//! compared line by line with the flows as `ovs-ofctl dump-flows` prints
//! them (files under `tests/golden/`). After an intended pipeline change,
//! regenerate with `UPDATE_GOLDEN=1 cargo nextest run -p ovs-flows --test pipeline_golden`
//! and review the diff: it is the change of the dataplane.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ovs_flows::pipeline::{pipeline, LocalPod, Mode, NodeState, Protocol, RemoteNode, Service, ServicePort};
use ovs_flows::{Ipv4Prefix, Mac};

fn prefix(s: &str) -> Ipv4Prefix {
    let (a, l) = s.split_once('/').expect("a/len");
    Ipv4Prefix::new(a.parse().expect("addr"), l.parse().expect("len"))
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("ip")
}

fn mac(s: &str) -> Mac {
    s.parse().expect("mac")
}

/// Node 1 of a two-node cluster: pods of three namespaces (one of them
/// global), one remote node, a service in a tenant namespace and one in a
/// global namespace.
fn two_node_state(mode: Mode) -> NodeState {
    let mut s = NodeState::new(
        mode,
        ip("192.0.2.11"),
        prefix("172.11.0.0/22"),
        prefix("172.11.0.0/16"),
        prefix("10.96.0.0/12"),
    );
    for (port, last, ns) in [(3, 2, "red"), (4, 3, "red"), (5, 4, "blue"), (6, 5, "kube-system")] {
        s.pods.insert(
            port,
            LocalPod {
                ofport: port,
                ip: Ipv4Addr::new(172, 11, 0, last),
                mac: mac(&format!("0a:58:ac:0b:00:{last:02x}")),
                namespace: ns.into(),
                name: format!("pod{port}"),
                // One pod with an egress limit (userspace datapath).
                egress_meter: (port == 4).then_some(4),
            },
        );
    }
    s.remote_nodes
        .insert(ip("192.0.2.12"), RemoteNode { ip: ip("192.0.2.12"), subnet: prefix("172.11.4.0/22") });
    s.services.insert(
        ip("10.96.0.10"),
        Service {
            ip: ip("10.96.0.10"),
            namespace: "kube-system".into(),
            ports: vec![
                ServicePort { protocol: Protocol::Udp, port: 53 },
                ServicePort { protocol: Protocol::Tcp, port: 53 },
            ],
        },
    );
    add_red_web(&mut s);
    s.vnis = BTreeMap::from([("red".into(), 100), ("blue".into(), 200), ("kube-system".into(), 0)]);
    s
}

fn check_golden(name: &str, lines: Vec<String>) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{name}.txt"));
    let actual = lines.join("\n") + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if expected != actual {
        let exp: Vec<&str> = expected.lines().collect();
        let act: Vec<&str> = actual.lines().collect();
        let missing: Vec<_> = exp.iter().filter(|l| !act.contains(l)).collect();
        let extra: Vec<_> = act.iter().filter(|l| !exp.contains(l)).collect();
        panic!("{name}: pipeline differs from {}\nmissing: {missing:#?}\nextra: {extra:#?}", path.display());
    }
}

#[test]
fn multi_tenant_node() {
    check_golden("multi_tenant", pipeline(&two_node_state(Mode::MultiTenant), 1).to_strings());
}

/// The two-node state with NetworkPolicies in `red`: `db-from-web`
/// (pod3, app=db, takes TCP 6379 from red's app=web pods, one of them on the
/// other node) and `egress-dns-only` (every red pod may send only DNS to
/// kube-system). The golden file holds the policy owner's flows.
fn policy_state() -> NodeState {
    use ovs_flows::policy::{
        LabelSelector, Peer, Policy, PolicyPod, PolicyPort, PolicyProtocol, PolicyRule, PolicyView, PortMatch,
    };
    let mut s = two_node_state(Mode::MultiTenant);
    let labels = |app: &str| BTreeMap::from([("app".to_string(), app.to_string())]);
    let app = |a: &str| LabelSelector { match_labels: labels(a), match_expressions: vec![] };
    let mut v = PolicyView::default();
    let pods = [
        ("red", "pod3", None, "db"),
        ("red", "pod4", None, "web"),
        ("red", "far", Some("172.11.4.7"), "web"),
        ("kube-system", "pod6", None, "dns"),
    ];
    for (ns, name, far_ip, a) in pods {
        let p = PolicyPod {
            namespace: ns.into(),
            name: name.into(),
            ip: far_ip.map(ip),
            labels: labels(a),
            named_ports: BTreeMap::new(),
        };
        v.pods.insert((ns.into(), name.into()), p);
    }
    let db = Policy {
        namespace: "red".into(),
        name: "db-from-web".into(),
        pod_selector: app("db"),
        ingress: Some(vec![PolicyRule {
            peers: Some(vec![Peer::Pods { namespaces: None, pods: Some(app("web")) }]),
            ports: Some(vec![PolicyPort {
                protocol: PolicyProtocol::Tcp,
                port: PortMatch::Range(6379, 6379),
            }]),
        }]),
        egress: None,
    };
    let kube_system = LabelSelector {
        match_labels: BTreeMap::from([(
            "kubernetes.io/metadata.name".to_string(),
            "kube-system".to_string(),
        )]),
        match_expressions: vec![],
    };
    let dns = Policy {
        namespace: "red".into(),
        name: "egress-dns-only".into(),
        pod_selector: LabelSelector::everything(),
        ingress: None,
        egress: Some(vec![PolicyRule {
            peers: Some(vec![Peer::Pods { namespaces: Some(kube_system), pods: None }]),
            ports: Some(vec![PolicyPort { protocol: PolicyProtocol::Udp, port: PortMatch::Range(53, 53) }]),
        }]),
    };
    for p in [db, dns] {
        v.policies.insert((p.namespace.clone(), p.name.clone()), p);
    }
    s.policies = std::sync::Arc::new(v);
    s
}

#[test]
fn network_policy_node() {
    let s = policy_state();
    let flows = pipeline(&s, 1);
    let policy: Vec<String> = flows
        .iter()
        .filter(|f| f.cookie.category() == Some(ovs_flows::Category::Policy))
        .map(|f| f.to_string())
        .collect();
    check_golden("network_policy", policy);
    // The event-by-event pipeline ends where the whole one does: policies
    // set first, then a pod added and removed.
    let mut without = s.clone();
    let pod4 = without.pods.remove(&4).expect("pod4");
    let mut node = ovs_flows::pipeline::NodePipeline::new(without, 1);
    node.put_pod(pod4);
    assert_eq!(node.flows().to_strings(), flows.to_strings());
    node.remove_pod(3);
    let mut fewer = s.clone();
    fewer.pods.remove(&3);
    assert_eq!(node.flows().to_strings(), pipeline(&fewer, 1).to_strings());
}

#[test]
fn single_tenant_node() {
    check_golden("single_tenant", pipeline(&two_node_state(Mode::SingleTenant), 1).to_strings());
}

#[test]
fn empty_node() {
    let s = NodeState::new(
        Mode::MultiTenant,
        ip("192.0.2.11"),
        prefix("172.11.0.0/22"),
        prefix("172.11.0.0/16"),
        prefix("10.96.0.0/12"),
    );
    check_golden("empty_node", pipeline(&s, 7).to_strings());
}

/// Red's service `10.96.5.5:80/tcp`.
fn add_red_web(s: &mut NodeState) {
    let web = Service {
        ip: ip("10.96.5.5"),
        namespace: "red".into(),
        ports: vec![ServicePort { protocol: Protocol::Tcp, port: 80 }],
    };
    s.services.insert(web.ip, web);
}

/// A node with `n` pods in `red` (and a service there), 5 in `blue`.
fn sized_state(n: u32) -> NodeState {
    let mut s = NodeState::new(
        Mode::MultiTenant,
        ip("192.0.2.11"),
        prefix("172.11.0.0/22"),
        prefix("172.11.0.0/16"),
        prefix("10.96.0.0/12"),
    );
    for i in 0..n + 5 {
        let port = 3 + i;
        let addr = Ipv4Addr::from(u32::from(ip("172.11.0.2")) + i);
        let namespace = if i < n { "red" } else { "blue" };
        s.pods.insert(
            port,
            LocalPod {
                ofport: port,
                ip: addr,
                mac: Mac::for_ipv4(addr),
                namespace: namespace.into(),
                name: format!("pod{port}"),
                egress_meter: None,
            },
        );
    }
    add_red_web(&mut s);
    s.vnis = BTreeMap::from([("red".into(), 100), ("blue".into(), 200)]);
    s.assign_namespace_ids();
    s
}

/// How many flow changes a VNI change of `red` asks of the node.
fn cost_of(n: u32, vni: u32) -> usize {
    let before = sized_state(n);
    let mut after = before.clone();
    after.vnis.insert("red".into(), vni);
    ovs_flows::reconcile::delta(&pipeline(&before, 1), &pipeline(&after, 1)).len()
}

/// Join (red takes blue's VNI), isolate (a VNI of its own) and global
/// (VNI 0) change the same few flows per node for a namespace of 20 pods
/// and of 200: the namespace's SOURCE_VNI, DEST_VNI and SERVICE_VNI flows,
/// at most two ISOLATION flows, its GATEWAY_REPLY flow and the REFUSED flows
/// of the VNIs it leaves and takes, never a pod's or a service's.
#[test]
fn a_tenant_action_costs_the_same_at_20_pods_and_200() {
    // The figures docs/pipeline.md gives ("Namespace ids"): the 5 SOURCE_VNI
    // and DEST_VNI flows modified, SERVICE_VNI's replaced (2), the
    // namespace's own ISOLATION flow for its VNI replaced (2; a global
    // namespace's matches no VNI), its GATEWAY_REPLY flow, which steers
    // replies from its own VNI only, replaced (2); REFUSED's flow of VNI 100
    // deleted (red was its only namespace), and for isolate that of VNI 300
    // added.
    for (action, vni, want) in [("join", 200, 12), ("isolate", 300, 13), ("global", 0, 12)] {
        let (small, large) = (cost_of(20, vni), cost_of(200, vni));
        eprintln!("{action}: {small} flows changed at 20 pods, {large} at 200");
        assert_eq!(small, large, "{action}: the cost grows with the namespace");
        assert_eq!(large, want, "{action}: {large} flows changed");
    }
}

/// What a restarted agent reads back: the ids of the namespaces with pods,
/// and the ids only service flows name (reserved); an id two namespaces
/// claim is nobody's.
#[test]
fn namespace_ids_are_recovered_from_the_flows() {
    use ovs_flows::pipeline::recovered_namespace_ids;
    let mut s = sized_state(2);
    s.services.insert(
        ip("10.96.0.10"),
        Service {
            ip: ip("10.96.0.10"),
            namespace: "kube-system".into(),
            ports: vec![ServicePort { protocol: Protocol::Udp, port: 53 }],
        },
    );
    s.vnis.insert("kube-system".into(), 0);
    s.assign_namespace_ids();
    let flows: Vec<_> = pipeline(&s, 1).iter().cloned().collect();
    let pods: BTreeMap<u32, String> = s.pods.values().map(|p| (p.ofport, p.namespace.clone())).collect();
    let (ids, reserved) = recovered_namespace_ids(&flows, &pods);
    let mut expected = s.namespace_ids.clone();
    let dns = expected.remove("kube-system").expect("kube-system has an id");
    assert_eq!(ids, expected);
    assert_eq!(reserved, std::collections::BTreeSet::from([dns]));
    // Red's two pods read as two namespaces: the id is dropped, not guessed.
    let mut confused = pods.clone();
    confused.insert(3, "green".into());
    let (ids, _) = recovered_namespace_ids(&flows, &confused);
    assert!(!ids.contains_key("red") && !ids.contains_key("green"), "{ids:?}");
}

use ovs_flows::samples::random_below;

/// A pod of the random sequences at `port`, with the address sized_state
/// gives the port (IPAM: one address, one pod).
fn random_pod(port: u32, namespace: String, metered: bool) -> LocalPod {
    let addr = Ipv4Addr::from(u32::from(ip("172.11.0.2")) + port - 3);
    LocalPod {
        ofport: port,
        ip: addr,
        mac: Mac::for_ipv4(addr),
        namespace,
        name: format!("pod{port}"),
        egress_meter: metered.then_some(port),
    }
}

/// Remote node `i` of the random sequences, there or not.
fn toggle_remote_node(state: &mut NodeState, i: u32, present: bool) {
    let node = Ipv4Addr::from(u32::from(ip("192.0.2.12")) + i);
    if present {
        let subnet = Ipv4Prefix::new(Ipv4Addr::from(u32::from(ip("172.11.4.0")) + (i << 10)), 22);
        state.remote_nodes.insert(node, RemoteNode { ip: node, subnet });
    } else {
        state.remote_nodes.remove(&node);
    }
}

/// Incremental updates end where the whole pipeline does: random sequences
/// of pod, namespace (VNI), remote node and service events, on a node whose
/// namespace ids the agent's way keeps assigned; after every event the
/// incremental flows equal `pipeline()`'s, and the operations it returned
/// take the previous flows there.
#[test]
fn incremental_updates_equal_the_whole_pipeline_on_random_events() {
    use ovs_flows::pipeline::{touched, Incremental};
    use ovs_flows::reconcile::delta;
    let mut next = random_below(0x2545_f491_4f6c_dd1d);
    for sequence in 0..20 {
        let mut state = sized_state(3);
        let mut inc = Incremental::new(&state, 1);
        assert_eq!(inc.flows().to_strings(), pipeline(&state, 1).to_strings());
        for step in 0..60 {
            let old = state.clone();
            let ns = ["red", "blue", "green", "kube-system"][next(4) as usize].to_string();
            match next(7) {
                0 => {
                    let port = 3 + next(12) as u32;
                    let pod = random_pod(port, ns, next(3) == 0);
                    state.pods.insert(port, pod);
                }
                1 => {
                    state.pods.remove(&(3 + next(12) as u32));
                }
                2 => {
                    state.vnis.insert(ns, [0, 100, 200, 300][next(4) as usize]);
                }
                3 => {
                    state.vnis.remove(&ns);
                }
                4 => {
                    toggle_remote_node(&mut state, next(4) as u32, next(2) == 0);
                }
                5 => {
                    let svc_ip = Ipv4Addr::from(u32::from(ip("10.96.1.0")) + next(6) as u32);
                    let ports = vec![ServicePort { protocol: Protocol::Udp, port: 53 + next(2) as u16 }];
                    state.services.insert(svc_ip, Service { ip: svc_ip, namespace: ns, ports });
                }
                _ => {
                    state.services.remove(&Ipv4Addr::from(u32::from(ip("10.96.1.0")) + next(6) as u32));
                }
            }
            state.assign_namespace_ids();
            let before = inc.flows();
            let owners = touched(&old, &state).expect("no node-wide change");
            let ops = inc.update(&state, &owners);
            let whole = pipeline(&state, 1);
            assert_eq!(inc.flows().to_strings(), whole.to_strings(), "sequence {sequence}, step {step}");
            let expected = delta(&before, &whole);
            if ops.len() != expected.len() {
                for o in &ops {
                    eprintln!("INC {o}");
                }
                for o in &expected {
                    eprintln!("WHOLE {o}");
                }
            }
            assert_eq!(ops.len(), expected.len(), "sequence {sequence}, step {step}: ops");
        }
    }
}

/// The agent's core, event by event: random sequences of pods put and
/// removed (namespaces changing under one ofport too), VNI maps, remote
/// node maps, service maps changed several entries at a time, a mode
/// switch, reserved ids released. After every event the `NodePipeline`'s
/// namespace ids equal `assign_namespace_ids`'s on the same state, its
/// flows equal `pipeline()`'s, and the operations it returned take the
/// previous flows exactly there, with no more operations than the whole
/// diff.
#[test]
fn a_node_pipeline_fed_events_equals_the_whole_pipeline() {
    use ovs_flows::pipeline::NodePipeline;
    use ovs_flows::reconcile::{apply, delta};
    let mut next = random_below(0x1234_5678_9abc_def1);
    let namespaces = ["red", "blue", "green", "kube-system", "aaa"];
    for sequence in 0..20 {
        let mut shadow = sized_state(3);
        // Some sequences start as after a restart: ids read back, two reserved.
        if sequence % 2 == 1 {
            shadow.namespace_ids = BTreeMap::from([("red".into(), 4), ("blue".into(), 9)]);
            shadow.reserved_namespace_ids = [2, 5].into();
        }
        let mut np = NodePipeline::new(shadow.clone(), 1);
        shadow.assign_namespace_ids();
        assert_eq!(np.flows().to_strings(), pipeline(&shadow, 1).to_strings());
        let mut switch = np.flows();
        for step in 0..80 {
            let ns = |k: u64| namespaces[k as usize].to_string();
            let ops = match next(9) {
                0 | 1 => {
                    let port = 3 + next(12) as u32;
                    let pod = random_pod(port, ns(next(5)), next(3) == 0);
                    shadow.pods.insert(port, pod.clone());
                    np.put_pod(pod)
                }
                2 => {
                    let port = 3 + next(12) as u32;
                    shadow.pods.remove(&port);
                    np.remove_pod(port)
                }
                3 => {
                    for _ in 0..1 + next(3) {
                        match next(3) {
                            0 => shadow.vnis.remove(&ns(next(5))),
                            _ => shadow.vnis.insert(ns(next(5)), [0, 100, 200, 300][next(4) as usize]),
                        };
                    }
                    // The whole map, or (as the agent's followers do) the keys that may have changed.
                    match next(2) {
                        0 => np.set_vnis(&shadow.vnis),
                        _ => np.update_vnis(
                            namespaces.iter().map(|n| (n.to_string(), shadow.vnis.get(*n).copied())),
                        ),
                    }
                }
                4 => {
                    for _ in 0..1 + next(2) {
                        toggle_remote_node(&mut shadow, next(4) as u32, next(2) == 0);
                    }
                    match next(2) {
                        0 => np.set_remote_nodes(&shadow.remote_nodes),
                        _ => np.update_remote_nodes(
                            (0..4)
                                .map(|i| Ipv4Addr::from(u32::from(ip("192.0.2.12")) + i))
                                .map(|n| (n, shadow.remote_nodes.get(&n).copied())),
                        ),
                    }
                }
                5 | 6 => {
                    for _ in 0..1 + next(3) {
                        let svc_ip = Ipv4Addr::from(u32::from(ip("10.96.1.0")) + next(6) as u32);
                        if next(3) == 0 {
                            shadow.services.remove(&svc_ip);
                        } else {
                            let ports =
                                vec![ServicePort { protocol: Protocol::Udp, port: 53 + next(2) as u16 }];
                            shadow
                                .services
                                .insert(svc_ip, Service { ip: svc_ip, namespace: ns(next(5)), ports });
                        }
                    }
                    match next(2) {
                        0 => np.set_services(&shadow.services),
                        _ => np.update_services(
                            (0..6)
                                .map(|i| Ipv4Addr::from(u32::from(ip("10.96.1.0")) + i))
                                .map(|s| (s, shadow.services.get(&s).cloned())),
                        ),
                    }
                }
                7 if next(4) == 0 => {
                    shadow.mode = match shadow.mode {
                        Mode::MultiTenant => Mode::SingleTenant,
                        Mode::SingleTenant => Mode::MultiTenant,
                    };
                    np.set_mode(shadow.mode)
                }
                8 if !shadow.reserved_namespace_ids.is_empty() => {
                    shadow.reserved_namespace_ids.clear();
                    np.release_reserved_ids();
                    Vec::new()
                }
                _ => Vec::new(),
            };
            shadow.assign_namespace_ids();
            let at = format!("sequence {sequence}, step {step}");
            assert_eq!(np.state(), &shadow, "{at}: state");
            let whole = pipeline(&shadow, 1);
            assert_eq!(np.flows().to_strings(), whole.to_strings(), "{at}: flows");
            assert!(ops.len() <= delta(&switch, &whole).len(), "{at}: more ops than the whole diff");
            apply(&mut switch, &ops);
            assert_eq!(switch.to_strings(), whole.to_strings(), "{at}: the ops end elsewhere");
        }
    }
}
