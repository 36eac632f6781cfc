//! The agent's view of Kubernetes NetworkPolicy: every `networking.k8s.io/v1`
//! NetworkPolicy, Pod and Namespace of the cluster, turned into the model
//! the pipeline compiles (`ovs_flows::policy`) and published as one
//! [`PolicyView`] through a `tokio::sync::watch` channel, like the other
//! sources (`kube_source`).
//!
//! Reading fails closed: what the API server should have refused (a server
//! that does not validate, a newer field, an address family this dataplane
//! does not carry) never makes a policy admit more than it says. An invalid
//! `spec.podSelector` selects every pod of the namespace (isolating more
//! pods, never fewer); an invalid peer, port or selector inside a rule
//! matches nothing. Each such case is a warning naming the policy and field.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, PoisonError};

use k8s_openapi::api::core::v1::{Container, ContainerPort, Namespace, Pod, PodSpec, PodStatus};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use kube_view::Change;
use ovs_flows::policy::{
    LabelSelector, Labels, Operator, Peer, Policy, PolicyPod, PolicyPort, PolicyProtocol, PolicyRule,
    PolicyView, PortMatch, Requirement,
};
use ovs_flows::Ipv4Prefix;
use tokio::sync::watch;
use tracing::warn;

/// networking.k8s.io/v1 NetworkPolicy -> the model. Never fails: what
/// cannot be read fails closed (see the module's doc); the Strings are
/// warnings for the log.
pub fn to_policy(np: &NetworkPolicy) -> (Policy, Vec<String>) {
    let namespace = np.namespace().unwrap_or_default();
    let name = np.name_any();
    let mut w = Warnings { what: format!("NetworkPolicy {namespace}/{name}"), list: Vec::new() };
    // No spec at all reads as `{}`: every pod of the namespace, no ingress.
    let empty = NetworkPolicySpec::default();
    let spec = np.spec.as_ref().unwrap_or(&empty);
    let pod_selector = match spec.pod_selector.as_ref().map(selector).transpose() {
        Ok(sel) => sel.unwrap_or_else(LabelSelector::everything),
        Err(e) => {
            w.push("spec.podSelector", &e, "the policy selects every pod of its namespace");
            LabelSelector::everything()
        }
    };
    let (ingress, egress) = policy_types(spec, &mut w);
    let ingress = ingress.then(|| {
        let rules = spec.ingress.iter().flatten().enumerate();
        rules.map(|(i, r)| rule(&format!("spec.ingress[{i}]"), "from", &r.from, &r.ports, &mut w)).collect()
    });
    let egress = egress.then(|| {
        let rules = spec.egress.iter().flatten().enumerate();
        rules.map(|(i, r)| rule(&format!("spec.egress[{i}]"), "to", &r.to, &r.ports, &mut w)).collect()
    });
    (Policy { namespace, name, pod_selector, ingress, egress }, w.list)
}

struct Warnings {
    /// "NetworkPolicy ns/name".
    what: String,
    list: Vec<String>,
}

impl Warnings {
    fn push(&mut self, field: &str, problem: &str, consequence: &str) {
        self.list.push(format!("{}: {field}: {problem}; {consequence}", self.what));
    }
}

/// Which directions the policy isolates: `policyTypes` as given; absent or
/// empty (a server that did not default it) as the API defaults it.
fn policy_types(spec: &NetworkPolicySpec, w: &mut Warnings) -> (bool, bool) {
    let given = spec.policy_types.as_deref().unwrap_or_default();
    let (mut ingress, mut egress) = (false, false);
    for (i, t) in given.iter().enumerate() {
        match t.as_str() {
            "Ingress" => ingress = true,
            "Egress" => egress = true,
            other => w.push(&format!("spec.policyTypes[{i}]"), &format!("unknown type {other:?}"), "ignored"),
        }
    }
    if !ingress && !egress {
        // Absent, empty, or nothing known in it: the API's default, so a
        // policy whose types cannot be read still isolates its pods' ingress.
        ingress = true;
        egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
    }
    (ingress, egress)
}

/// One ingress (`peers_field` "from") or egress ("to") rule at `at`.
fn rule(
    at: &str,
    peers_field: &str,
    peers: &Option<Vec<NetworkPolicyPeer>>,
    ports: &Option<Vec<NetworkPolicyPort>>,
    w: &mut Warnings,
) -> PolicyRule {
    // Absent or empty lists mean "all"; a list whose every entry was
    // dropped as unreadable is kept empty, which admits nothing.
    let peers = peers.as_ref().filter(|p| !p.is_empty()).map(|list| {
        let read = list.iter().enumerate().map(|(i, p)| (format!("{at}.{peers_field}[{i}]"), peer(p)));
        read.filter_map(|(field, r)| r.map_err(|e| w.push(&field, &e, "this peer matches nothing")).ok())
            .collect()
    });
    let ports = ports.as_ref().filter(|p| !p.is_empty()).map(|list| {
        let read = list.iter().enumerate().map(|(i, p)| (format!("{at}.ports[{i}]"), port(p)));
        read.filter_map(|(field, r)| r.map_err(|e| w.push(&field, &e, "this port matches nothing")).ok())
            .collect()
    });
    PolicyRule { peers, ports }
}

fn peer(p: &NetworkPolicyPeer) -> Result<Peer, String> {
    match (&p.ip_block, &p.namespace_selector, &p.pod_selector) {
        (Some(block), None, None) => ip_block(block),
        (Some(_), _, _) => Err("ipBlock together with a selector".into()),
        (None, None, None) => Err("neither podSelector, namespaceSelector nor ipBlock".into()),
        (None, namespaces, pods) => Ok(Peer::Pods {
            namespaces: namespaces
                .as_ref()
                .map(selector)
                .transpose()
                .map_err(|e| format!("namespaceSelector: {e}"))?,
            pods: pods.as_ref().map(selector).transpose().map_err(|e| format!("podSelector: {e}"))?,
        }),
    }
}

fn ip_block(b: &IPBlock) -> Result<Peer, String> {
    let block = match cidr(&b.cidr)? {
        Some(c) => c,
        // A valid block that holds no IPv4 address: nothing here to admit.
        None => return Err(format!("ipBlock {} is IPv6 (this dataplane is IPv4-only)", b.cidr)),
    };
    let except = b
        .except
        .iter()
        .flatten()
        .map(|x| match cidr_inside(x, block)? {
            Some(p) => Ok(p),
            None => Err(format!("ipBlock except {x} is not inside {}", b.cidr)),
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Peer::IpBlock { cidr: block, except })
}

/// `x` if it is an IPv4 prefix inside `cidr` (the API requires that).
fn cidr_inside(x: &str, block: Ipv4Prefix) -> Result<Option<Ipv4Prefix>, String> {
    Ok(cidr(x)?.filter(|p| {
        p.prefix_len() >= block.prefix_len() && u32::from(p.addr()) & block.mask() == u32::from(block.addr())
    }))
}

/// An `a.b.c.d/len` (host bits may be set, as the API accepts them); `None`
/// for a valid IPv6 CIDR.
fn cidr(s: &str) -> Result<Option<Ipv4Prefix>, String> {
    let invalid = || format!("invalid CIDR {s:?}");
    let (addr, len) = s.split_once('/').ok_or_else(invalid)?;
    let len: u8 = len.parse().map_err(|_| invalid())?;
    match addr.parse::<IpAddr>().map_err(|_| invalid())? {
        IpAddr::V4(a) if len <= 32 => Ok(Some(Ipv4Prefix::new(a, len))),
        IpAddr::V6(_) if len <= 128 => Ok(None),
        _ => Err(invalid()),
    }
}

fn port(p: &NetworkPolicyPort) -> Result<PolicyPort, String> {
    let protocol = protocol(p.protocol.as_deref())?;
    let number = |n: i32, field: &str| {
        u16::try_from(n).ok().filter(|n| *n != 0).ok_or_else(|| format!("{field} {n} is not 1-65535"))
    };
    let port = match (&p.port, p.end_port) {
        (None, None) => PortMatch::Any,
        (None, Some(_)) => return Err("endPort without port".into()),
        (Some(IntOrString::Int(n)), end) => {
            let first = number(*n, "port")?;
            let last = end.map(|e| number(e, "endPort")).transpose()?.unwrap_or(first);
            if last < first {
                return Err(format!("endPort {last} is below port {first}"));
            }
            PortMatch::Range(first, last)
        }
        (Some(IntOrString::String(_)), Some(_)) => return Err("endPort with a named port".into()),
        (Some(IntOrString::String(name)), None) if is_port_name(name) => PortMatch::Named(name.clone()),
        (Some(IntOrString::String(name)), None) => return Err(format!("invalid port name {name:?}")),
    };
    Ok(PolicyPort { protocol, port })
}

/// The API's default is TCP; the names are case-sensitive, as it checks them.
fn protocol(p: Option<&str>) -> Result<PolicyProtocol, String> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok(PolicyProtocol::Tcp),
        "UDP" => Ok(PolicyProtocol::Udp),
        "SCTP" => Ok(PolicyProtocol::Sctp),
        other => Err(format!("unknown protocol {other:?}")),
    }
}

/// IANA_SVC_NAME, what the API requires of a named port (of a container and
/// of a policy): 1-15 of a-z, 0-9 and '-', a letter among them, no '-' at
/// either end nor two together. Anything else names no container's port.
fn is_port_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// A `metav1.LabelSelector`, or why it is invalid.
fn selector(s: &metav1::LabelSelector) -> Result<LabelSelector, String> {
    let match_expressions = s
        .match_expressions
        .iter()
        .flatten()
        .map(|r| {
            let values: std::collections::BTreeSet<String> = r.values.iter().flatten().cloned().collect();
            let operator = match r.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => return Err(format!("unknown operator {other:?} for key {:?}", r.key)),
            };
            let needs_values = matches!(operator, Operator::In | Operator::NotIn);
            if r.key.is_empty() {
                return Err("an expression without a key".into());
            }
            if needs_values == values.is_empty() {
                let want = if needs_values { "needs values" } else { "takes no values" };
                return Err(format!("{} on key {:?} {want}", r.operator, r.key));
            }
            Ok(Requirement { key: r.key.clone(), operator, values })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(LabelSelector { match_labels: s.match_labels.clone().unwrap_or_default(), match_expressions })
}

/// A Pod -> what policies know of it: its IPv4 address (status.podIPs, else
/// status.podIP), labels, and the named ports of its containers and of its
/// sidecar initContainers (restartPolicy Always: they run alongside and
/// serve), keyed (name, protocol).
///
/// A pod that has finished (Succeeded, Failed) gets no address: its IP is
/// free again and may already be another pod's. Nor does a hostNetwork pod:
/// its address is its node's, which a policy on it must not isolate nor a
/// peer selector admit (the API leaves such pods out of policy).
pub fn to_policy_pod(pod: &Pod) -> PolicyPod {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let finished = status.and_then(|s| s.phase.as_deref()).is_some_and(|p| p == "Succeeded" || p == "Failed");
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let ip = status.filter(|_| !finished && !host_network).and_then(pod_ipv4);
    let mut named_ports = BTreeMap::new();
    let sidecars = spec.into_iter().flat_map(|s| s.init_containers.iter().flatten());
    let sidecars = sidecars.filter(|c| c.restart_policy.as_deref() == Some("Always"));
    let containers = spec.into_iter().flat_map(|s| s.containers.iter());
    for p in containers.chain(sidecars).flat_map(|c| c.ports.iter().flatten()) {
        let Some(name) = p.name.as_ref().filter(|n| is_port_name(n)) else { continue };
        let (Ok(protocol), Ok(port)) = (protocol(p.protocol.as_deref()), u16::try_from(p.container_port))
        else {
            continue;
        };
        // Names are unique in a pod (the API checks it): the first stands.
        named_ports.entry((name.clone(), protocol)).or_insert(port);
    }
    PolicyPod {
        namespace: pod.namespace().unwrap_or_default(),
        name: pod.name_any(),
        ip,
        labels: pod.labels().clone(),
        named_ports,
    }
}

fn pod_ipv4(status: &PodStatus) -> Option<Ipv4Addr> {
    let listed = status.pod_ips.iter().flatten().map(|p| p.ip.as_str());
    listed.chain(status.pod_ip.as_deref()).find_map(|ip| ip.parse::<Ipv4Addr>().ok())
}

pub fn namespace_labels(ns: &Namespace) -> Labels {
    ns.labels().clone()
}

/// What the reflector's store keeps of each Pod, of every pod in the
/// cluster on every node: only what [`to_policy_pod`] reads.
fn trim_pod(pod: &mut Pod) {
    trim_meta(&mut pod.metadata);
    let port = |p: &ContainerPort| ContainerPort {
        name: p.name.clone(),
        protocol: p.protocol.clone(),
        container_port: p.container_port,
        ..ContainerPort::default()
    };
    let container = |c: &Container| Container {
        ports: c.ports.as_ref().map(|ps| ps.iter().filter(|p| p.name.is_some()).map(port).collect()),
        restart_policy: c.restart_policy.clone(),
        ..Container::default()
    };
    pod.spec = pod.spec.as_ref().map(|s| PodSpec {
        containers: s.containers.iter().map(container).collect(),
        init_containers: s.init_containers.as_ref().map(|cs| cs.iter().map(container).collect()),
        host_network: s.host_network,
        ..PodSpec::default()
    });
    pod.status = pod.status.as_ref().map(|s| PodStatus {
        phase: s.phase.clone(),
        pod_ip: s.pod_ip.clone(),
        pod_ips: s.pod_ips.clone(),
        ..PodStatus::default()
    });
}

/// Names and labels only (annotations such as kubectl's last-applied
/// configuration can be larger than the rest of the object).
fn trim_meta(meta: &mut ObjectMeta) {
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        labels: meta.labels.take(),
        ..ObjectMeta::default()
    };
}

type Key = (String, String);

fn key_of<K: ResourceExt>(o: &K) -> Key {
    (o.namespace().unwrap_or_default(), o.name_any())
}

/// One change of the view, from one of the three reflectors.
#[derive(Debug)]
enum Edit {
    Policies(BTreeMap<Key, Policy>),
    Policy(Key, Option<Policy>),
    Pods(BTreeMap<Key, PolicyPod>),
    Pod(Key, Option<PolicyPod>),
    Namespaces(BTreeMap<String, Labels>),
    Namespace(String, Option<Labels>),
}

impl Edit {
    /// Which list this completes (0 policies, 1 pods, 2 namespaces).
    fn lists(&self) -> Option<usize> {
        match self {
            Edit::Policies(_) => Some(0),
            Edit::Pods(_) => Some(1),
            Edit::Namespaces(_) => Some(2),
            _ => None,
        }
    }

    /// Whether applying it would change `view` (checked before the shared
    /// view is copied for writing).
    fn changes(&self, view: &PolicyView) -> bool {
        match self {
            Edit::Policies(all) => *all != view.policies,
            Edit::Policy(k, p) => view.policies.get(k) != p.as_ref(),
            Edit::Pods(all) => *all != view.pods,
            Edit::Pod(k, p) => view.pods.get(k) != p.as_ref(),
            Edit::Namespaces(all) => *all != view.namespaces,
            Edit::Namespace(k, l) => view.namespaces.get(k) != l.as_ref(),
        }
    }

    fn apply(self, view: &mut PolicyView) {
        match self {
            Edit::Policies(all) => view.policies = all,
            Edit::Policy(k, p) => set(&mut view.policies, k, p),
            Edit::Pods(all) => view.pods = all,
            Edit::Pod(k, p) => set(&mut view.pods, k, p),
            Edit::Namespaces(all) => view.namespaces = all,
            Edit::Namespace(k, l) => set(&mut view.namespaces, k, l),
        }
    }
}

fn set<K: Ord, V>(map: &mut BTreeMap<K, V>, k: K, v: Option<V>) {
    match v {
        Some(v) => map.insert(k, v),
        None => map.remove(&k),
    };
}

/// The three reflectors' view, held back until all three have listed.
struct Merge {
    /// The view being built, until it is first sent; then the channel's
    /// value is the view and this is None.
    pending: Option<PolicyView>,
    listed: [bool; 3],
}

impl Merge {
    fn new() -> Merge {
        Merge { pending: Some(PolicyView::default()), listed: [false; 3] }
    }

    fn edit(&mut self, out: &watch::Sender<Arc<PolicyView>>, edit: Edit) {
        if let Some(i) = edit.lists() {
            self.listed[i] = true;
        }
        match self.pending.as_mut() {
            Some(view) => {
                edit.apply(view);
                if self.listed.iter().all(|l| *l) {
                    // Sent even when equal to the initial value (an empty
                    // cluster): the first value is what says "policies known".
                    out.send_replace(Arc::new(self.pending.take().unwrap_or_default()));
                }
            }
            None => {
                out.send_if_modified(|view| {
                    if !edit.changes(view) {
                        return false;
                    }
                    // Copies the view only if a reader still holds this one.
                    edit.apply(Arc::make_mut(view));
                    true
                });
            }
        }
    }
}

fn policy_edit(change: Change<NetworkPolicy>) -> Edit {
    let read = |np: &NetworkPolicy| {
        let (policy, warnings) = to_policy(np);
        for w in warnings {
            warn!("{w}");
        }
        policy
    };
    match change {
        Change::Listed(all) => Edit::Policies(all.iter().map(|np| (key_of(&**np), read(np))).collect()),
        Change::Applied(np) => Edit::Policy(key_of(&*np), Some(read(&np))),
        Change::Deleted(np) => Edit::Policy(key_of(&*np), None),
    }
}

fn pod_edit(change: Change<Pod>) -> Edit {
    match change {
        Change::Listed(all) => Edit::Pods(all.iter().map(|p| (key_of(&**p), to_policy_pod(p))).collect()),
        Change::Applied(p) => Edit::Pod(key_of(&*p), Some(to_policy_pod(&p))),
        Change::Deleted(p) => Edit::Pod(key_of(&*p), None),
    }
}

fn namespace_edit(change: Change<Namespace>) -> Edit {
    match change {
        Change::Listed(all) => {
            Edit::Namespaces(all.iter().map(|n| (n.name_any(), namespace_labels(n))).collect())
        }
        Change::Applied(n) => Edit::Namespace(n.name_any(), Some(namespace_labels(&n))),
        Change::Deleted(n) => Edit::Namespace(n.name_any(), None),
    }
}

/// Runs forever: keeps `out` equal to the cluster's NetworkPolicies, Pods
/// (all namespaces) and Namespaces as a PolicyView, sent only when the view
/// changed; the first value is sent only once all three lists have
/// completed (until then the receiver holds the initial value), since a
/// view without the pods or namespaces would resolve peers to nothing and
/// drop live connections. Reconnects with kube_view's jittered backoff.
pub async fn run_policies(client: Client, out: watch::Sender<Arc<PolicyView>>) {
    let merge = Mutex::new(Merge::new());
    // Never held across an await: each edit is applied whole under the lock.
    let edit = |e: Edit| merge.lock().unwrap_or_else(PoisonError::into_inner).edit(&out, e);
    let cfg = watcher::Config::default;
    futures::join!(
        kube_view::reflect_changes_trimmed(
            Api::<NetworkPolicy>::all(client.clone()),
            cfg(),
            |np| trim_meta(&mut np.metadata),
            |c| edit(policy_edit(c)),
        ),
        kube_view::reflect_changes_trimmed(Api::<Pod>::all(client.clone()), cfg(), trim_pod, |c| {
            edit(pod_edit(c))
        }),
        kube_view::reflect_changes_trimmed(
            Api::<Namespace>::all(client),
            cfg(),
            |ns| {
                trim_meta(&mut ns.metadata);
                ns.spec = None;
                ns.status = None;
            },
            |c| edit(namespace_edit(c)),
        ),
    );
}

/// One pod's policy facts read straight from the API server (the CNI ADD
/// path uses it when the view does not know the pod yet): Ok(None) when
/// the pod does not exist. No timeout of its own: the caller bounds it.
pub async fn fetch_pod(client: &Client, namespace: &str, name: &str) -> anyhow::Result<Option<PolicyPod>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    Ok(api.get_opt(name).await?.map(|p| to_policy_pod(&p)))
}

#[cfg(test)]
mod tests;
