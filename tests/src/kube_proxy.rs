//! kube-proxy for the lab: the iptables rules that kube-proxy's iptables
//! proxier writes (Kubernetes 1.2x-1.3x, `../shared/reference/kube-proxy.md`),
//! generated from the Service and EndpointSlice objects of the test
//! apiserver and kept in step with them on every node, as kube-proxy does.
//!
//! [`rules`] is a pure function from the objects to the `iptables-restore`
//! input kube-proxy would feed (`--noflush`: only the `KUBE-*` chains are
//! rewritten); [`KubeProxy`] follows the store and applies it inside each
//! node's namespace, after ensuring the jumps from the built-in chains, which
//! is kube-proxy's order too. It writes what kube-proxy writes with its
//! defaults (`masqueradeAll: false`, `detectLocalMode: ClusterCIDR` when a
//! cluster CIDR is given, `--random-fully` masquerade), no more:
//! - ClusterIP: `KUBE-SERVICES` -> `KUBE-SVC-*` (`! -s <cluster CIDR>` ->
//!   `KUBE-MARK-MASQ` when the CIDR is set; every source with
//!   `masquerade_all`) -> `KUBE-SEP-*` (`-s <endpoint>` -> `KUBE-MARK-MASQ`,
//!   the hairpin; DNAT), endpoints picked with `-m statistic --probability`
//!   exactly as kube-proxy spreads them;
//! - NodePort (last rule of `KUBE-SERVICES`, `--dst-type LOCAL`), externalIPs
//!   and LoadBalancer ingress IPs through `KUBE-EXT-*` (masqueraded with
//!   `externalTrafficPolicy: Cluster`; with `Local`, kube-proxy's
//!   `KUBE-SVL-*` of this node's endpoints);
//! - `KUBE-POSTROUTING` masquerading marked packets only; the filter
//!   table's `KUBE-FORWARD` and the REJECT of a service port without
//!   endpoints.
//!
//! Simplified, and said so: no session affinity (`KUBE-SVC` recent-match
//! rules), no `loadBalancerSourceRanges` firewall chains, no health-check
//! node ports, no terminating endpoints; chain names hash with FNV-1a
//! instead of kube-proxy's SHA-256 (the same 16 base32 characters, other
//! values). Endpoints are ready unless a slice says otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::cmd;
use crate::kube_api::{Kind, Store};
use crate::netns::Netns;

/// kube-proxy's settings that change the rules.
#[derive(Debug, Clone, Default)]
pub struct ProxyConfig {
    /// `--cluster-cidr` (kubeadm sets it to the pod network): off-cluster
    /// sources of a ClusterIP are masqueraded.
    pub cluster_cidr: Option<String>,
    /// `masqueradeAll: true`.
    pub masquerade_all: bool,
}

/// kube-proxy's jumps from the built-in chains: (table, chain, match, target, comment).
const JUMPS: [(&str, &str, &str, &str, &str); 9] = [
    (
        "filter",
        "INPUT",
        "-m conntrack --ctstate NEW",
        "KUBE-EXTERNAL-SERVICES",
        "kubernetes externally-visible service portals",
    ),
    (
        "filter",
        "FORWARD",
        "-m conntrack --ctstate NEW",
        "KUBE-EXTERNAL-SERVICES",
        "kubernetes externally-visible service portals",
    ),
    ("filter", "FORWARD", "-m conntrack --ctstate NEW", "KUBE-SERVICES", "kubernetes service portals"),
    ("filter", "OUTPUT", "-m conntrack --ctstate NEW", "KUBE-SERVICES", "kubernetes service portals"),
    ("filter", "FORWARD", "", "KUBE-FORWARD", "kubernetes forwarding rules"),
    ("nat", "OUTPUT", "", "KUBE-SERVICES", "kubernetes service portals"),
    ("nat", "PREROUTING", "", "KUBE-SERVICES", "kubernetes service portals"),
    ("nat", "POSTROUTING", "", "KUBE-POSTROUTING", "kubernetes postrouting rules"),
    ("filter", "INPUT", "", "KUBE-NODEPORTS", "kubernetes health check service ports"),
];

/// One endpoint of a service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Endpoint {
    ip: String,
    port: i64,
    node: Option<String>,
}

/// One service port, with everything its rules need.
struct ServicePort {
    /// `ns/name:port` (kube-proxy's servicePortName; `ns/name` when unnamed).
    name: String,
    protocol: String,
    cluster_ip: Option<String>,
    port: i64,
    node_port: Option<i64>,
    external: Vec<String>,
    local_only: bool,
    endpoints: Vec<Endpoint>,
}

/// 16 characters of base32 of a hash, as kube-proxy names its chains.
fn chain(prefix: &str, key: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    const B32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut name = String::from(prefix);
    let mut v = h;
    for i in 0..16 {
        if i == 12 {
            v = h.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15;
        }
        name.push(B32[(v & 31) as usize] as char);
        v >>= 5;
    }
    name
}

fn str_of(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

/// The service ports of `services`, each with its ready endpoints from the
/// EndpointSlices labelled `kubernetes.io/service-name`.
fn service_ports(services: &[Value], slices: &[Value]) -> Vec<ServicePort> {
    let mut out = Vec::new();
    for svc in services {
        let ns = svc["metadata"]["namespace"].as_str().unwrap_or("default");
        let name = svc["metadata"]["name"].as_str().unwrap_or_default();
        let spec = &svc["spec"];
        let cluster_ip = str_of(&spec["clusterIP"]).filter(|ip| ip != "None" && !ip.is_empty());
        if spec["type"].as_str() == Some("ExternalName") {
            continue;
        }
        let mut external: Vec<String> =
            spec["externalIPs"].as_array().into_iter().flatten().filter_map(str_of).collect();
        external.extend(
            svc["status"]["loadBalancer"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| str_of(&i["ip"])),
        );
        let local_only = spec["externalTrafficPolicy"].as_str() == Some("Local");
        let my_slices: Vec<&Value> = slices
            .iter()
            .filter(|s| {
                s["metadata"]["namespace"].as_str() == Some(ns)
                    && s["metadata"]["labels"]["kubernetes.io/service-name"].as_str() == Some(name)
                    && s["addressType"].as_str().unwrap_or("IPv4") == "IPv4"
            })
            .collect();
        for p in spec["ports"].as_array().into_iter().flatten() {
            let port_name = p["name"].as_str().unwrap_or("");
            let protocol = p["protocol"].as_str().unwrap_or("TCP").to_lowercase();
            let mut endpoints = BTreeSet::new();
            for slice in &my_slices {
                let Some(sp) = slice["ports"].as_array().into_iter().flatten().find(|sp| {
                    sp["name"].as_str().unwrap_or("") == port_name
                        && sp["protocol"].as_str().unwrap_or("TCP").to_lowercase() == protocol
                }) else {
                    continue;
                };
                let Some(target) = sp["port"].as_i64() else { continue };
                for ep in slice["endpoints"].as_array().into_iter().flatten() {
                    if ep["conditions"]["ready"].as_bool() == Some(false) {
                        continue;
                    }
                    for ip in ep["addresses"].as_array().into_iter().flatten().filter_map(str_of) {
                        endpoints.insert(Endpoint { ip, port: target, node: str_of(&ep["nodeName"]) });
                    }
                }
            }
            let spn = if port_name.is_empty() {
                format!("{ns}/{name}")
            } else {
                format!("{ns}/{name}:{port_name}")
            };
            out.push(ServicePort {
                name: spn,
                protocol,
                cluster_ip: cluster_ip.clone(),
                port: p["port"].as_i64().unwrap_or(0),
                node_port: p["nodePort"].as_i64(),
                external: external.clone(),
                local_only,
                endpoints: endpoints.into_iter().collect(),
            });
        }
    }
    out
}

/// The `iptables-restore --noflush` input kube-proxy writes on `node` for
/// these objects; `stale` are chains written before that no longer exist
/// (declared and deleted, as kube-proxy does). Returns the input and the
/// nat chains it defines.
pub fn rules(
    services: &[Value],
    slices: &[Value],
    cfg: &ProxyConfig,
    node: &str,
    stale: &BTreeSet<String>,
) -> (String, BTreeSet<String>) {
    let ports = service_ports(services, slices);
    let mut filter = String::new();
    let mut nat_chains: BTreeSet<String> = BTreeSet::new();
    let mut nat = String::new();
    let mut svc_rules = String::new();
    let mut nodeport_rules = String::new();
    let mut ext_reject = String::new();
    for sp in &ports {
        let proto = &sp.protocol;
        let dport = |port: i64| format!("-p {proto} -m {proto} --dport {port}");
        if sp.endpoints.is_empty() {
            // kube-proxy rejects, rather than blackholes, a port without endpoints.
            if let Some(ip) = &sp.cluster_ip {
                let _ = writeln!(
                    filter,
                    "-A KUBE-SERVICES -d {ip}/32 {} -m comment --comment \"{} has no endpoints\" -j REJECT --reject-with icmp-port-unreachable",
                    dport(sp.port),
                    sp.name
                );
            }
            for ip in &sp.external {
                let _ = writeln!(
                    ext_reject,
                    "-A KUBE-EXTERNAL-SERVICES -d {ip}/32 {} -m comment --comment \"{} has no endpoints\" -j REJECT --reject-with icmp-port-unreachable",
                    dport(sp.port),
                    sp.name
                );
            }
            if let Some(np) = sp.node_port {
                let _ = writeln!(
                    ext_reject,
                    "-A KUBE-EXTERNAL-SERVICES -m addrtype --dst-type LOCAL {} -m comment --comment \"{} has no endpoints\" -j REJECT --reject-with icmp-port-unreachable",
                    dport(np),
                    sp.name
                );
            }
            continue;
        }
        let key = format!("{}{}", sp.name, sp.protocol);
        let svc = chain("KUBE-SVC-", &key);
        nat_chains.insert(svc.clone());
        if let Some(ip) = &sp.cluster_ip {
            let _ = writeln!(
                svc_rules,
                "-A KUBE-SERVICES -d {ip}/32 {} -m comment --comment \"{} cluster IP\" -j {svc}",
                dport(sp.port),
                sp.name
            );
            let masq_match = match (&cfg.cluster_cidr, cfg.masquerade_all) {
                (_, true) => Some(String::new()),
                (Some(cidr), false) => Some(format!("! -s {cidr} ")),
                (None, false) => None,
            };
            if let Some(m) = masq_match {
                let _ = writeln!(
                    nat,
                    "-A {svc} {m}-d {ip}/32 {} -m comment --comment \"{} cluster IP\" -j KUBE-MARK-MASQ",
                    dport(sp.port),
                    sp.name
                );
            }
        }
        let seps: Vec<(String, &Endpoint)> = sp
            .endpoints
            .iter()
            .map(|ep| (chain("KUBE-SEP-", &format!("{key}{}:{}", ep.ip, ep.port)), ep))
            .collect();
        spread(&mut nat, &svc, &seps.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(), &sp.name);
        for (sep, ep) in &seps {
            nat_chains.insert(sep.clone());
            let _ = writeln!(
                nat,
                "-A {sep} -s {}/32 -m comment --comment \"{}\" -j KUBE-MARK-MASQ",
                ep.ip, sp.name
            );
            let _ = writeln!(
                nat,
                "-A {sep} -p {proto} -m comment --comment \"{}\" -m {proto} -j DNAT --to-destination {}:{}",
                sp.name, ep.ip, ep.port
            );
        }
        if sp.node_port.is_some() || !sp.external.is_empty() {
            let ext = chain("KUBE-EXT-", &key);
            nat_chains.insert(ext.clone());
            for ip in &sp.external {
                let _ = writeln!(
                    svc_rules,
                    "-A KUBE-SERVICES -d {ip}/32 {} -m comment --comment \"{} external IP\" -j {ext}",
                    dport(sp.port),
                    sp.name
                );
            }
            if let Some(np) = sp.node_port {
                let _ = writeln!(
                    nodeport_rules,
                    "-A KUBE-NODEPORTS {} -m comment --comment \"{}\" -j {ext}",
                    dport(np),
                    sp.name
                );
            }
            if sp.local_only {
                // Pods and the node itself still reach every endpoint; traffic
                // from outside only this node's, unmasqueraded.
                let local: Vec<&str> = seps
                    .iter()
                    .filter(|(_, ep)| ep.node.as_deref() == Some(node))
                    .map(|(c, _)| c.as_str())
                    .collect();
                if let Some(cidr) = &cfg.cluster_cidr {
                    let _ = writeln!(nat, "-A {ext} -s {cidr} -m comment --comment \"pod traffic for {} external destinations\" -j {svc}", sp.name);
                }
                let _ = writeln!(nat, "-A {ext} -m comment --comment \"masquerade LOCAL traffic for {} external destinations\" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ", sp.name);
                let _ = writeln!(nat, "-A {ext} -m comment --comment \"route LOCAL traffic for {} external destinations\" -m addrtype --src-type LOCAL -j {svc}", sp.name);
                if local.is_empty() {
                    // kube-proxy drops external traffic in the filter table then.
                    for ip in &sp.external {
                        let _ = writeln!(ext_reject, "-A KUBE-EXTERNAL-SERVICES -d {ip}/32 {} -m comment --comment \"{} has no local endpoints\" -j DROP", dport(sp.port), sp.name);
                    }
                    if let Some(np) = sp.node_port {
                        let _ = writeln!(ext_reject, "-A KUBE-EXTERNAL-SERVICES -m addrtype --dst-type LOCAL {} -m comment --comment \"{} has no local endpoints\" -j DROP", dport(np), sp.name);
                    }
                } else {
                    let svl = chain("KUBE-SVL-", &key);
                    nat_chains.insert(svl.clone());
                    let _ = writeln!(nat, "-A {ext} -j {svl}");
                    spread(&mut nat, &svl, &local, &sp.name);
                }
            } else {
                let _ = writeln!(
                    nat,
                    "-A {ext} -m comment --comment \"masquerade traffic for {} external destinations\" -j KUBE-MARK-MASQ",
                    sp.name
                );
                let _ = writeln!(nat, "-A {ext} -j {svc}");
            }
        }
    }
    let mut out = String::from("*filter\n");
    for c in ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS"] {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    out.push_str(&filter);
    out.push_str(&ext_reject);
    out.push_str("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n");
    out.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n");
    out.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
    out.push_str("COMMIT\n*nat\n");
    let fixed = ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"];
    for c in fixed.iter().map(|c| c.to_string()).chain(nat_chains.iter().cloned()) {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    let gone: Vec<&String> = stale.iter().filter(|c| !nat_chains.contains(*c)).collect();
    for c in &gone {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    out.push_str("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n");
    out.push_str("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n");
    out.push_str("-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n");
    out.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");
    out.push_str(&svc_rules);
    out.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    out.push_str(&nodeport_rules);
    out.push_str(&nat);
    for c in &gone {
        let _ = writeln!(out, "-X {c}");
    }
    out.push_str("COMMIT\n");
    (out, nat_chains)
}

/// kube-proxy's endpoint choice: endpoint i of n is taken with probability
/// 1/(n-i), the last one unconditionally, so each gets 1/n.
fn spread(out: &mut String, from: &str, to: &[&str], comment: &str) {
    let n = to.len();
    for (i, sep) in to.iter().enumerate() {
        if i + 1 < n {
            let p = 1.0 / (n - i) as f64;
            let _ = writeln!(
                out,
                "-A {from} -m comment --comment \"{comment}\" -m statistic --mode random --probability {p:.11} -j {sep}"
            );
        } else {
            let _ = writeln!(out, "-A {from} -m comment --comment \"{comment}\" -j {sep}");
        }
    }
}

/// An EndpointSlice as the EndpointSlice controller writes it for `service`
/// (namespace/name) whose selector picks `pods`: (ip, node name, pod name).
/// `ports`: (port name, protocol, target port).
pub fn endpoint_slice(
    namespace: &str,
    service: &str,
    pods: &[(&str, &str, &str)],
    ports: &[(&str, &str, u16)],
) -> Value {
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|(ip, node, pod)| {
            json!({
                "addresses": [ip],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": node,
                "targetRef": {"kind": "Pod", "namespace": namespace, "name": pod},
            })
        })
        .collect();
    let ports: Vec<Value> = ports
        .iter()
        .map(|(name, proto, port)| json!({"name": name, "protocol": proto, "port": port}))
        .collect();
    json!({
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-abcde"),
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    })
}

struct Shared {
    stop: AtomicBool,
    /// The store revision whose rules are on every node.
    applied: AtomicU64,
    error: Mutex<Option<String>>,
}

/// kube-proxy on a set of nodes, following the test apiserver's objects.
/// Stops (leaving its rules, as a stopped kube-proxy does) when dropped.
pub struct KubeProxy {
    store: Store,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl KubeProxy {
    /// `nodes`: (namespace, Kubernetes node name) of each node.
    pub fn start(store: Store, nodes: Vec<(Netns, String)>, cfg: ProxyConfig) -> Result<KubeProxy> {
        for (ns, _) in &nodes {
            ensure_jumps(ns)?;
        }
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            applied: AtomicU64::new(0),
            error: Mutex::new(None),
        });
        let (st, sh) = (store.clone(), shared.clone());
        let thread = std::thread::spawn(move || follow(&st, &sh, &nodes, &cfg));
        Ok(KubeProxy { store, shared, thread: Some(thread) })
    }

    /// Waits until the rules of the store's current objects are on every node.
    pub fn wait_synced(&self, timeout: Duration) -> Result<()> {
        let want = self.store.revision();
        let deadline = Instant::now() + timeout;
        while self.shared.applied.load(Ordering::Relaxed) < want {
            if let Some(e) = self.shared.error.lock().unwrap_or_else(|p| p.into_inner()).clone() {
                bail!("kube-proxy stand-in: {e}");
            }
            if Instant::now() > deadline {
                bail!("kube-proxy stand-in did not apply revision {want} within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for KubeProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// kube-proxy's `EnsureChain` + `EnsureRule(Prepend, ...)` for its jumps.
fn ensure_jumps(ns: &Netns) -> Result<()> {
    for (table, builtin, m, target, comment) in JUMPS {
        let _ = ns.exec_full(&["iptables", "-w", "5", "-t", table, "-N", target], Duration::from_secs(10));
        let mut rule: Vec<&str> = m.split_whitespace().collect();
        rule.extend(["-m", "comment", "--comment", comment, "-j", target]);
        let mut check = vec!["iptables", "-w", "5", "-t", table, "-C", builtin];
        check.extend(&rule);
        if !ns.exec_full(&check, Duration::from_secs(10))?.success() {
            let mut insert = vec!["iptables", "-w", "5", "-t", table, "-I", builtin];
            insert.extend(&rule);
            ns.exec(&insert).with_context(|| format!("{table} {builtin} -> {target}"))?;
        }
    }
    Ok(())
}

fn follow(store: &Store, shared: &Shared, nodes: &[(Netns, String)], cfg: &ProxyConfig) {
    let mut chains: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut last = 0;
    while !shared.stop.load(Ordering::Relaxed) && !store.stopped() {
        let rv = store.revision();
        if rv != last {
            let services = store.objects(Kind::Service);
            let slices = store.objects(Kind::EndpointSlice);
            let mut failed = None;
            for (ns, node) in nodes {
                let stale = chains.get(&ns.name).cloned().unwrap_or_default();
                let (input, written) = rules(&services, &slices, cfg, node, &stale);
                match restore(ns, &input) {
                    Ok(()) => {
                        chains.insert(ns.name.clone(), written);
                    }
                    Err(e) => failed = Some(format!("{e:#}\n{input}")),
                }
            }
            match failed {
                None => {
                    shared.applied.store(rv, Ordering::Relaxed);
                    last = rv;
                }
                Some(e) => *shared.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e),
            }
        }
        store.wait_newer(rv, Duration::from_millis(200));
    }
}

fn restore(ns: &Netns, input: &str) -> Result<()> {
    let path = std::env::temp_dir().join(format!("kube-proxy-{}-{}.rules", ns.name, std::process::id()));
    std::fs::write(&path, input)?;
    let file = path.to_string_lossy().to_string();
    let out = cmd::run_full(
        &ns.wrap(&["iptables-restore", "-w", "5", "--noflush", &file]),
        &[],
        Duration::from_secs(20),
    );
    let _ = std::fs::remove_file(&path);
    let out = out?;
    if !out.success() {
        bail!("iptables-restore in {}: {}", ns.name, out.stderr);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web(ports: Value) -> Value {
        json!({"kind": "Service", "metadata": {"name": "web", "namespace": "red"},
               "spec": {"clusterIP": "10.96.5.5", "ports": ports}})
    }

    #[test]
    fn cluster_ip_rules_follow_kube_proxy() {
        let svc = web(json!([{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]));
        let slice = endpoint_slice("red", "web", &[("172.11.4.3", "n2", "web-1")], &[("http", "TCP", 8080)]);
        let cfg = ProxyConfig { cluster_cidr: Some("172.11.0.0/16".into()), masquerade_all: false };
        let (r, chains) =
            rules(std::slice::from_ref(&svc), std::slice::from_ref(&slice), &cfg, "n1", &BTreeSet::new());
        let svc_chain = chain("KUBE-SVC-", "red/web:httptcp");
        let sep = chain("KUBE-SEP-", "red/web:httptcp172.11.4.3:8080");
        assert!(chains.contains(&svc_chain) && chains.contains(&sep) && chains.len() == 2, "{chains:?}");
        for want in [
            format!("-A KUBE-SERVICES -d 10.96.5.5/32 -p tcp -m tcp --dport 80 -m comment --comment \"red/web:http cluster IP\" -j {svc_chain}"),
            format!("-A {svc_chain} ! -s 172.11.0.0/16 -d 10.96.5.5/32 -p tcp -m tcp --dport 80 -m comment --comment \"red/web:http cluster IP\" -j KUBE-MARK-MASQ"),
            format!("-A {svc_chain} -m comment --comment \"red/web:http\" -j {sep}"),
            format!("-A {sep} -s 172.11.4.3/32 -m comment --comment \"red/web:http\" -j KUBE-MARK-MASQ"),
            format!("-A {sep} -p tcp -m comment --comment \"red/web:http\" -m tcp -j DNAT --to-destination 172.11.4.3:8080"),
            "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN".to_string(),
        ] {
            assert!(r.lines().any(|l| l == want), "missing {want}\n{r}");
        }
        // The NodePort jump is the last rule of KUBE-SERVICES.
        let last = r.lines().rfind(|l| l.starts_with("-A KUBE-SERVICES")).unwrap_or_default();
        assert!(last.contains("KUBE-NODEPORTS"), "{last}");
        // Without --cluster-cidr there is no masquerade rule for cluster sources.
        let (r, _) = rules(&[svc], &[slice], &ProxyConfig::default(), "n1", &BTreeSet::new());
        assert!(
            !r.lines().any(|l| l.starts_with(&format!("-A {svc_chain}")) && l.contains("KUBE-MARK-MASQ")),
            "{r}"
        );
    }

    #[test]
    fn endpoints_are_spread_and_empty_services_rejected() {
        let dns = json!({"kind": "Service", "metadata": {"name": "kube-dns", "namespace": "kube-system"},
                         "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}});
        let slice = endpoint_slice(
            "kube-system",
            "kube-dns",
            &[("172.11.0.5", "n1", "a"), ("172.11.4.6", "n2", "b"), ("172.11.4.7", "n2", "c")],
            &[("dns", "UDP", 53)],
        );
        let (r, _) =
            rules(std::slice::from_ref(&dns), &[slice], &ProxyConfig::default(), "n1", &BTreeSet::new());
        let probs: Vec<&str> = r.lines().filter(|l| l.contains("--probability")).collect();
        assert_eq!(probs.len(), 2, "{r}");
        assert!(probs[0].contains("0.33333333333") && probs[1].contains("0.50000000000"), "{probs:?}");
        // No endpoints: REJECT in filter, no nat chain.
        let (r, chains) = rules(&[dns], &[], &ProxyConfig::default(), "n1", &BTreeSet::new());
        assert!(chains.is_empty());
        assert!(r.contains("-A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m udp --dport 53 -m comment --comment \"kube-system/kube-dns:dns has no endpoints\" -j REJECT"), "{r}");
    }

    #[test]
    fn node_ports_masquerade_and_stale_chains_go() {
        let svc = json!({"kind": "Service", "metadata": {"name": "web", "namespace": "red"},
                         "spec": {"type": "NodePort", "clusterIP": "10.96.5.5", "externalIPs": ["192.0.2.50"],
                                  "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}});
        let slice = endpoint_slice("red", "web", &[("172.11.4.3", "n2", "web-1")], &[("", "TCP", 8080)]);
        let (r, chains) = rules(&[svc], &[slice], &ProxyConfig::default(), "n1", &BTreeSet::new());
        let ext = chain("KUBE-EXT-", "red/webtcp");
        assert!(chains.contains(&ext));
        assert!(
            r.contains(&format!(
                "-A KUBE-NODEPORTS -p tcp -m tcp --dport 30080 -m comment --comment \"red/web\" -j {ext}"
            )),
            "{r}"
        );
        assert!(r.contains(&format!("-A KUBE-SERVICES -d 192.0.2.50/32 -p tcp -m tcp --dport 80 -m comment --comment \"red/web external IP\" -j {ext}")), "{r}");
        assert!(r.contains(&format!("-A {ext} -m comment --comment \"masquerade traffic for red/web external destinations\" -j KUBE-MARK-MASQ")), "{r}");
        // The service is deleted: its chains are declared and removed.
        let (r, now) = rules(&[], &[], &ProxyConfig::default(), "n1", &chains);
        assert!(now.is_empty());
        for c in &chains {
            assert!(r.contains(&format!("-X {c}\n")), "{c} not removed:\n{r}");
        }
    }
}
