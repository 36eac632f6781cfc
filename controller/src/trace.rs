//! `k8s-ovs-ctl trace SRC DST`: can a pod reach another pod (or a Service's
//! cluster IP and port), and why (not)?
//!
//! Two answers are put side by side. The policy, from etcd: the namespaces'
//! VNIs (equal, or either global, or single-tenant mode). And the switch's:
//! each node's agent runs `ofproto/trace` of a probe from SRC's port (an
//! ICMP echo to a pod; across nodes also the same packet arriving through
//! the tunnel on DST's node; a TCP/UDP packet to a Service, which the
//! SERVICE table hands to tun0 or drops) and the tables it crossed are read
//! back. When the two disagree, the node is out of step with etcd: that is
//! the bug to chase. The probe to a pod may be TCP or UDP to a port
//! ([`Packet`]); the NetworkPolicy tables it crossed are read too
//! ([`netpol`]): the rule that admitted it, or the policies isolating the
//! pod whose drop took it, named by the agents.
//!
//! The agents are found through etcd's node subnet records (HostIP) and
//! asked over their HTTP listener: `/debug/pods`, `/debug/trace?flow=`.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use etcd_schema::{PluginName, GLOBAL_VNI};
use ovs_flows::pipeline::{table_name, Table};
use ovs_flows::policy::compile::PRIORITY_ISOLATED;
use ovs_flows::policy::Direction;
use ovs_flows::trace::{self, NodePods, Outcome, Step, Trace, TracePod, TraceService};
use tokio::net::TcpStream;

/// What etcd says about the pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub allowed: bool,
    pub reason: String,
}

/// The isolation rule: same VNI, or either side global (0); everything in
/// single-tenant mode. `None`: the namespace has no VNI (yet).
pub fn policy(plugin: &PluginName, src: (&str, Option<u32>), dst: (&str, Option<u32>)) -> Policy {
    let (allowed, reason) = match (plugin, src.1, dst.1) {
        (PluginName::Subnet, _, _) => {
            (true, "single-tenant network (k8s-ovs-subnet): every pod reaches every pod".into())
        }
        (_, None, _) => (false, format!("namespace {} has no VNI in etcd (yet)", src.0)),
        (_, _, None) => (false, format!("namespace {} has no VNI in etcd (yet)", dst.0)),
        (_, Some(a), Some(b)) if a == b && src.0 == dst.0 => {
            (true, format!("same namespace {} (VNI {a})", src.0))
        }
        (_, Some(a), Some(b)) if a == b => (true, format!("{} and {} share VNI {a}", src.0, dst.0)),
        (_, Some(GLOBAL_VNI), Some(_)) => (true, format!("{} is global (VNI 0)", src.0)),
        (_, Some(_), Some(GLOBAL_VNI)) => (true, format!("{} is global (VNI 0)", dst.0)),
        (_, Some(a), Some(b)) => (
            false,
            format!("{} (VNI {a}) and {} (VNI {b}) differ and neither is global (VNI 0)", src.0, dst.0),
        ),
    };
    Policy { allowed, reason }
}

/// A pod found on a node.
#[derive(Debug, Clone)]
pub struct Located {
    pub pod: TracePod,
    pub node_ip: Ipv4Addr,
}

/// `namespace/name` or an IP address, looked up in every node's pods.
pub fn locate(reference: &str, nodes: &[NodePods]) -> Result<Located> {
    let wanted = |p: &TracePod| match reference.parse::<Ipv4Addr>() {
        Ok(ip) => p.ip == ip,
        Err(_) => reference.split_once('/') == Some((p.namespace.as_str(), p.name.as_str())),
    };
    let mut found = nodes.iter().flat_map(|n| {
        n.pods.iter().filter(|p| wanted(p)).map(|p| Located { pod: p.clone(), node_ip: n.node_ip })
    });
    match (found.next(), found.next()) {
        (Some(one), None) => Ok(one),
        (Some(a), Some(b)) => {
            bail!(
                "{reference} is ambiguous: {}/{} on {} and {}/{} on {}",
                a.pod.namespace,
                a.pod.name,
                a.node_ip,
                b.pod.namespace,
                b.pod.name,
                b.node_ip
            )
        }
        (None, _) => {
            bail!("{reference}: no such pod on any node that answered (give namespace/name or the pod IP)")
        }
    }
}

/// What the packet is sent to: a pod, or a ClusterIP service's port.
#[derive(Debug, Clone)]
pub enum Target {
    Pod(Located),
    Service { service: TraceService, protocol: String, port: u16 },
}

impl Target {
    /// The namespace whose VNI the policy compares.
    pub fn namespace(&self) -> &str {
        match self {
            Target::Pod(l) => &l.pod.namespace,
            Target::Service { service, .. } => &service.namespace,
        }
    }
}

/// The probe a pod target is traced with: an ICMP echo, or a TCP or UDP
/// packet to a port (what NetworkPolicy rules with ports decide on).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Packet {
    #[default]
    Echo,
    L4 {
        protocol: String,
        port: u16,
    },
}

impl Packet {
    /// From `--protocol` (`icmp`, the default, `tcp`, `udp`) and `--port`:
    /// a port needs TCP or UDP, and TCP or UDP a port.
    pub fn from_flags(protocol: Option<&str>, port: Option<u16>) -> Result<Packet> {
        match (protocol.unwrap_or("icmp"), port) {
            ("icmp", None) => Ok(Packet::Echo),
            ("icmp", Some(_)) => bail!("--port needs --protocol tcp or udp (an ICMP echo has no port)"),
            ("tcp" | "udp", None) => bail!("--protocol {} needs --port N", protocol.unwrap_or_default()),
            (_, Some(0)) => bail!("--port 0: a port is 1 to 65535"),
            (p @ ("tcp" | "udp"), Some(port)) => Ok(Packet::L4 { protocol: p.to_string(), port }),
            (other, _) => bail!("--protocol {other}: expected icmp, tcp or udp"),
        }
    }

    /// `--protocol`/`--port` shape the probe to a pod; a Service's
    /// protocol and port are in its `CLUSTER_IP:PORT[/udp]`.
    pub fn check_target(&self, dst: &Target) -> Result<()> {
        match (self, dst) {
            (Packet::L4 { .. }, Target::Service { .. }) => bail!(
                "--protocol and --port are for a pod; a Service's protocol and port are in DST \
                 (CLUSTER_IP:PORT or CLUSTER_IP:PORT/udp)"
            ),
            _ => Ok(()),
        }
    }
}

impl std::fmt::Display for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Packet::Echo => write!(f, "an ICMP echo"),
            Packet::L4 { protocol, port } => write!(f, "{} to port {port}", protocol.to_uppercase()),
        }
    }
}

/// `IP:PORT` or `IP:PORT/udp` (a service, TCP unless said), else a pod as
/// for [`locate`].
pub fn target(reference: &str, nodes: &[NodePods]) -> Result<Target> {
    let Some((ip, rest)) = reference.split_once(':') else {
        return Ok(Target::Pod(locate(reference, nodes)?));
    };
    let ip: Ipv4Addr = ip.parse().with_context(|| format!("{reference}: expected IP:PORT[/tcp|/udp]"))?;
    let (port, protocol) = rest.split_once('/').unwrap_or((rest, "tcp"));
    let port: u16 = port.parse().with_context(|| format!("{reference}: bad port {port}"))?;
    if protocol != "tcp" && protocol != "udp" {
        bail!("{reference}: protocol must be tcp or udp");
    }
    let service = nodes
        .iter()
        .flat_map(|n| &n.services)
        .find(|s| s.ip == ip)
        .with_context(|| format!("{ip}: no such service in the agents' SERVICE tables"))?
        .clone();
    Ok(Target::Service { service, protocol: protocol.to_string(), port })
}

/// One traced leg: on which node, with which probe, and what came back.
#[derive(Debug, Clone)]
pub struct Leg {
    pub node_ip: Ipv4Addr,
    pub probe: String,
    pub text: String,
    pub trace: Trace,
}

/// The switch's answer over all legs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub delivered: bool,
    pub detail: String,
}

/// Reads the legs: delivered when the last one outputs to DST's port on
/// DST's node; for a service, when it is handed to the gateway (tun0),
/// where kube-proxy's rules take it to an endpoint.
pub fn delivery(legs: &[Leg], dst: &Target) -> Delivery {
    let Some(last) = legs.last() else {
        return Delivery { delivered: false, detail: "no trace".into() };
    };
    let at = last.node_ip;
    let outcome = &last.trace.outcome;
    let (delivered, detail) = match (dst, outcome) {
        (Target::Service { .. }, Outcome::Output { port }) if trace::is_gateway(*port) => {
            (true, format!("handed to the gateway (tun0) on {at}, where kube-proxy's rules pick an endpoint"))
        }
        (Target::Service { .. }, other) => (false, outcome_text(other, at)),
        (Target::Pod(dst), Outcome::Output { port }) if *port == dst.pod.ofport && at == dst.node_ip => {
            (true, format!("delivered to port {port} ({}) on {at}", dst.pod.name))
        }
        (Target::Pod(_), Outcome::Output { port }) if trace::is_gateway(*port) => {
            (false, format!("sent to the node's gateway (port {port}, tun0) on {at}, not to the pod"))
        }
        (Target::Pod(dst), Outcome::Output { port }) => {
            (false, format!("sent out of port {port} on {at}, not the pod's port {}", dst.pod.ofport))
        }
        (Target::Pod(dst), Outcome::Tunnel { vni, remote }) => (
            false,
            format!("tunnelled with VNI {vni} to {remote}, which is not the pod's node {}", dst.node_ip),
        ),
        (Target::Pod(_), other) => (false, outcome_text(other, at)),
    };
    Delivery { delivered, detail }
}

fn outcome_text(outcome: &Outcome, at: Ipv4Addr) -> String {
    match outcome {
        Outcome::Output { port } => format!("sent out of port {port} on {at}"),
        Outcome::Tunnel { vni, remote } => format!("tunnelled with VNI {vni} to {remote}"),
        Outcome::Dropped { table } => {
            format!(
                "dropped in table {table} {} on {at}: {}",
                table_name(*table),
                trace::drop_meaning(*table)
            )
        }
        Outcome::Unknown => format!("the trace on {at} could not be read (see --raw)"),
    }
}

/// The `conj_id=N` of a flow's match as `ofproto/trace` prints it
/// (`conj_id=2844123137,ip`): the conjunction that admitted the packet.
fn conj_id(matched: &str) -> Option<u32> {
    matched.split(',').find_map(|f| f.strip_prefix("conj_id=")).and_then(|v| v.parse().ok())
}

/// Whether the trace ends in a drop in EGRESS_POLICY or INGRESS_POLICY.
pub fn dropped_by_network_policy(legs: &[Leg]) -> bool {
    let policy_tables = [Table::EgressPolicy.id(), Table::IngressPolicy.id()];
    matches!(legs.last().map(|l| &l.trace.outcome), Some(Outcome::Dropped { table }) if policy_tables.contains(table))
}

/// What NetworkPolicy decided for a pod-to-pod trace, one line per direction
/// whose table the packet reached: EGRESS_POLICY on SRC's node, for SRC's
/// egress; INGRESS_POLICY on DST's node, for DST's ingress. A `conj_id`
/// match names the admitting rule, the priority-50 drop the policies that
/// isolate the pod (each node's agent serves both with `/debug/pods`), the
/// table's default that no policy selects the pod there.
pub fn netpol(src: &Located, dst: &Located, legs: &[Leg], nodes: &[NodePods]) -> Vec<String> {
    let mut out = Vec::new();
    for (direction, pod) in [(Direction::Egress, src), (Direction::Ingress, dst)] {
        let table = direction.table().id();
        let Some(leg) = legs.iter().find(|l| l.trace.steps.iter().any(|s| s.table == table)) else {
            continue;
        };
        let steps: Vec<&Step> = leg.trace.steps.iter().filter(|s| s.table == table).collect();
        let Some(last) = steps.last() else { continue };
        let facts = nodes.iter().find(|n| n.node_ip == leg.node_ip);
        let name = format!("{}/{}", pod.pod.namespace, pod.pod.name);
        let dir = direction.name();
        let isolating: Option<String> = facts
            .and_then(|n| n.isolated.iter().find(|i| i.ip == pod.pod.ip && i.direction == direction))
            .filter(|i| !i.policies.is_empty())
            .map(|i| i.policies.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "));
        let flow = |s: &Step| {
            let m = if s.matched.is_empty() { "(any)" } else { s.matched.as_str() };
            format!("{m} (priority {})", s.priority.map(|p| p.to_string()).unwrap_or_else(|| "?".into()))
        };
        let dropped_here = matches!(leg.trace.outcome, Outcome::Dropped { table: t } if t == table);
        let text = match (steps.iter().find_map(|s| conj_id(&s.matched)), dropped_here) {
            (Some(id), _) => match facts.and_then(|n| n.rules.iter().find(|r| r.id == id)) {
                Some(r) => {
                    format!(
                        "admitted by NetworkPolicy {} ({} rule {})",
                        r.policy,
                        r.direction.name(),
                        r.rule + 1
                    )
                }
                None => format!(
                    "admitted by conjunction {id}, a rule the agent on {} does not name (an agent older \
                     than this k8s-ovs-ctl, or out of step with its flows: see --raw)",
                    leg.node_ip
                ),
            },
            (None, true) if last.priority == Some(PRIORITY_ISOLATED) => match &isolating {
                Some(by) => format!(
                    "refused by NetworkPolicy: {name} is isolated for {dir} by {by}, and no rule of theirs \
                     admits this packet"
                ),
                None => format!(
                    "refused by NetworkPolicy: {name} is isolated for {dir}, and no rule admits this packet \
                     (the agent on {} names no policy isolating it: an agent older than this \
                     k8s-ovs-ctl, or out of step with its flows: see --raw)",
                    leg.node_ip
                ),
            },
            (None, true) => format!("dropped by {}, which is no policy's flow (see --raw)", flow(last)),
            (None, false) if last.priority == Some(0) => match &isolating {
                Some(by) => format!(
                    "passed by the table's default although the agent says {by} isolate {name}: the \
                     switch is out of step with the agent (see --raw)"
                ),
                None => format!("no NetworkPolicy selects {name} for {dir}"),
            },
            (None, false) => format!(
                "not decided by a policy: passed by {} (the node's own traffic, ARP, or a reply)",
                flow(last)
            ),
        };
        out.push(format!("{dir} of {name}: {text}"));
    }
    out
}

/// The printed report and the exit code: 0 both say yes, 3 both say no,
/// 4 etcd and the switch disagree. A pod target's report also reads the
/// NetworkPolicy tables ([`netpol`], with the agents' `nodes`): a packet
/// tenancy allows and a policy table drops is denied by NetworkPolicy (3:
/// the switch agrees with the policies).
/// A Service's traced `endpoints` (when known) join the verdict: allowed
/// when the ClusterIP and at least one endpoint are.
pub fn report(
    src: &Located,
    (dst, packet): (&Target, &Packet),
    policy: &Policy,
    legs: &[Leg],
    nodes: &[NodePods],
    endpoints: Option<&[EndpointTrace]>,
    raw: bool,
) -> (String, i32) {
    let d = delivery(legs, dst);
    let mut out = String::new();
    let vni = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_else(|| "none".into());
    let pods: Vec<(&str, &Located)> = match dst {
        Target::Pod(l) => vec![("from", src), ("to", l)],
        Target::Service { .. } => vec![("from", src)],
    };
    for (label, l) in pods {
        let _ = writeln!(
            out,
            "{label:<6}{}/{}  {} on node {} (port {}, VNI {} on that node)",
            l.pod.namespace,
            l.pod.name,
            l.pod.ip,
            l.node_ip,
            l.pod.ofport,
            vni(l.pod.vni)
        );
    }
    if let Target::Service { service, protocol, port } = dst {
        let _ = writeln!(
            out,
            "to    service {}:{port}/{protocol} in namespace {} (VNI {}; ports {})",
            service.ip,
            service.namespace,
            vni(service.vni),
            service.ports.join(" ")
        );
    }
    if let Packet::L4 { .. } = packet {
        let _ = writeln!(out, "probe   {packet}");
    }
    let _ = writeln!(out, "policy  {}: {}", if policy.allowed { "allowed" } else { "denied" }, policy.reason);
    if let Target::Pod(to) = dst {
        for line in netpol(src, to, legs, nodes) {
            let _ = writeln!(out, "netpol  {line}");
        }
    }
    let _ = writeln!(out, "switch  {}", d.detail);
    let _ = writeln!(out, "\npath (ofproto/trace on each node):");
    for leg in legs {
        for s in &leg.trace.steps {
            let matched = if s.matched.is_empty() { "(any)" } else { s.matched.as_str() };
            let prio = s.priority.map(|p| format!("priority {p}")).unwrap_or_default();
            let actions: Vec<&str> =
                s.actions.iter().filter(|a| !a.starts_with("->")).map(String::as_str).collect();
            let _ = writeln!(
                out,
                "  {:<15} {:>2} {:<12} {:<13} {}  => {}",
                leg.node_ip,
                s.table,
                table_name(s.table),
                prio,
                matched,
                actions.join(", ")
            );
        }
    }
    let can = |yes: bool| match (dst, yes) {
        (Target::Pod(_), true) => "the pods can talk",
        (Target::Pod(_), false) => "the pods cannot talk",
        (Target::Service { .. }, true) => "the pod can reach the service",
        (Target::Service { .. }, false) => "the pod cannot reach the service",
    };
    let (mut allowed, mut delivered) = (policy.allowed, d.delivered);
    if let Some(eps) = endpoints {
        let (section, ep_allowed, ep_delivered) = report_endpoints(eps);
        out.push_str(&section);
        allowed &= ep_allowed;
        delivered &= ep_delivered;
    }
    let by_network_policy = matches!(dst, Target::Pod(_)) && dropped_by_network_policy(legs);
    let (verdict, code) = match (allowed, delivered) {
        (true, true) => (format!("ALLOWED: {} (the switch agrees with etcd)", can(true)), 0),
        // Tenancy lets it through, a policy table drops it: the policies decide.
        (true, false) if by_network_policy => (
            format!(
                "DENIED by NetworkPolicy: {} (etcd's tenancy allows it; the switch agrees with the policies)",
                can(false)
            ),
            3,
        ),
        (false, false) => (format!("DENIED: {} (the switch agrees with etcd)", can(false)), 3),
        (p, _) => (
            format!(
                "MISMATCH: etcd says {}, the switch {}; the agent is out of step with etcd \
                 (check its log, k8s_ovs_flow_errors_total, and the VNIs above)",
                if p { "allowed" } else { "denied" },
                if delivered { "delivers" } else { "does not deliver" }
            ),
            4,
        ),
    };
    let _ = writeln!(out, "\nverdict {verdict}");
    if raw {
        for leg in legs {
            let _ = writeln!(
                out,
                "\n$ ovs-appctl ofproto/trace {}  # on {}\n{}",
                leg.probe, leg.node_ip, leg.text
            );
        }
    }
    (out, code)
}

/// The probes to run: SRC's node first; across nodes, DST's node with the
/// VNI the first leg put on the tunnel (known only after it ran).
/// A pod target is probed with `packet`.
pub fn next_probe(
    src: &Located,
    (dst, packet): (&Target, &Packet),
    legs: &[Leg],
) -> Option<(Ipv4Addr, String)> {
    let dst = match dst {
        Target::Pod(l) => l,
        Target::Service { service, protocol, port } => {
            let probe = trace::service_probe(&src.pod, service.ip, protocol, *port);
            return legs.is_empty().then_some((src.node_ip, probe));
        }
    };
    match legs {
        [] => Some((
            src.node_ip,
            match packet {
                Packet::Echo => trace::pod_probe(&src.pod, &dst.pod),
                Packet::L4 { protocol, port } => trace::pod_l4_probe(&src.pod, &dst.pod, (protocol, *port)),
            },
        )),
        [first] => match first.trace.outcome {
            Outcome::Tunnel { vni, remote } if remote == dst.node_ip && remote != src.node_ip => Some((
                remote,
                match packet {
                    Packet::Echo => trace::tunnel_probe(vni, src.node_ip, remote, &src.pod, &dst.pod),
                    Packet::L4 { protocol, port } => trace::tunnel_l4_probe(
                        vni,
                        (src.node_ip, remote),
                        &src.pod,
                        &dst.pod,
                        (protocol, *port),
                    ),
                },
            )),
            _ => None,
        },
        _ => None,
    }
}

/// `GET http://<addr><path>` on the agent's plain-HTTP listener, with the
/// agents' debug token as a bearer token; the body of a 200, else an error
/// with the agent's message.
pub async fn http_get(addr: SocketAddrV4, path: &str, token: Option<&str>) -> Result<String> {
    // The agent rate-limits /debug/trace (a few per second): a trace of
    // several legs waits for its turn instead of failing.
    let mut waited = Duration::ZERO;
    loop {
        match http_get_once(addr, path, token).await? {
            (429, body) if waited < Duration::from_secs(10) => {
                tracing::debug!(%addr, body = body.trim(), "rate-limited; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                waited += Duration::from_millis(500);
            }
            (200, body) => return Ok(body),
            (status, body) => bail!("agent at {addr}: {path}: HTTP {status}: {}", body.trim()),
        }
    }
}

/// One GET over a fresh HTTP/1.1 connection (hyper's client): the status and
/// the body.
async fn http_get_once(addr: SocketAddrV4, path: &str, token: Option<&str>) -> Result<(u16, String)> {
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    use hyper::header::{AUTHORIZATION, HOST};
    let exchange = async {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        // The connection is driven beside the request and ends with it.
        let driver = tokio::spawn(conn);
        let mut request = hyper::Request::get(path).header(HOST, addr.to_string());
        if let Some(t) = token {
            request = request.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let response = sender.send_request(request.body(Empty::<Bytes>::new())?).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        driver.abort();
        Ok::<_, anyhow::Error>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(15), exchange)
        .await
        .with_context(|| format!("agent at {addr}: no answer within 15 s"))?
        .with_context(|| format!("agent at {addr}"))
}

/// Asks every node's agent for its pods. Nodes whose agent does not answer
/// are reported, not fatal (the pair may live elsewhere).
pub async fn node_pods(
    node_ips: &[Ipv4Addr],
    port: u16,
    token: Option<&str>,
) -> (Vec<NodePods>, Vec<String>) {
    let asks = node_ips.iter().map(|ip| async move {
        let body = http_get(SocketAddrV4::new(*ip, port), "/debug/pods", token).await?;
        serde_json::from_str::<NodePods>(&body)
            .with_context(|| format!("agent at {ip}: bad /debug/pods answer"))
    });
    let mut nodes = Vec::new();
    let mut failed = Vec::new();
    for r in futures::future::join_all(asks).await {
        match r {
            Ok(n) => nodes.push(n),
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    (nodes, failed)
}

/// Runs the legs against the agents.
pub async fn run_legs(
    src: &Located,
    dst: (&Target, &Packet),
    port: u16,
    token: Option<&str>,
) -> Result<Vec<Leg>> {
    run_probes(|legs| next_probe(src, dst, legs), port, token).await
}

/// Runs the probes `next` asks for, one leg after the other.
async fn run_probes(
    next: impl Fn(&[Leg]) -> Option<(Ipv4Addr, String)>,
    port: u16,
    token: Option<&str>,
) -> Result<Vec<Leg>> {
    let mut legs = Vec::new();
    while let Some((node_ip, probe)) = next(&legs) {
        let path = format!("/debug/trace?flow={probe}");
        let text = http_get(SocketAddrV4::new(node_ip, port), &path, token).await?;
        let trace = trace::parse(&text);
        legs.push(Leg { node_ip, probe, text, trace });
    }
    Ok(legs)
}

/// One endpoint of a traced Service: where kube-proxy may DNAT the
/// connection, and what the pipeline does with it there.
#[derive(Debug, Clone)]
pub struct EndpointTrace {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// The endpoint pod, if an agent has it.
    pub pod: Option<Located>,
    pub policy: Option<Policy>,
    pub legs: Vec<Leg>,
}

impl EndpointTrace {
    fn delivered(&self) -> bool {
        self.pod.as_ref().is_some_and(|p| delivery(&self.legs, &Target::Pod(p.clone())).delivered)
    }
}

/// The endpoints kube-proxy picks from for `port`/`protocol` of `svc`:
/// the ready addresses of its EndpointSlices, at the target port of the
/// slice port named like the service port.
pub fn endpoints_of(
    svc: &k8s_openapi::api::core::v1::Service,
    slices: &[k8s_openapi::api::discovery::v1::EndpointSlice],
    port: u16,
    protocol: &str,
) -> Vec<(Ipv4Addr, u16)> {
    let proto = protocol.to_uppercase();
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let Some(sp) = svc.spec.as_ref().and_then(|s| s.ports.as_ref()).and_then(|ps| {
        ps.iter().find(|p| p.port == i32::from(port) && p.protocol.as_deref().unwrap_or("TCP") == proto)
    }) else {
        return vec![];
    };
    let port_name = sp.name.as_deref().unwrap_or_default();
    let mut out = Vec::new();
    for slice in slices {
        let labels = slice.metadata.labels.as_ref();
        if labels.and_then(|l| l.get("kubernetes.io/service-name")).map(String::as_str) != Some(name)
            || slice.address_type != "IPv4"
        {
            continue;
        }
        let target = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or_default() == port_name
                && p.protocol.as_deref().unwrap_or("TCP") == proto
        });
        let Some(target) = target.and_then(|p| p.port).and_then(|p| u16::try_from(p).ok()) else { continue };
        for ep in slice.endpoints.iter().flatten() {
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            out.extend(ep.addresses.iter().filter_map(|a| a.parse::<Ipv4Addr>().ok()).map(|ip| (ip, target)));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The probes for a DNATed service connection from `client` to `endpoint`:
/// from tun0 on the client's node, then, across nodes, the tunnel leg.
pub fn next_endpoint_probe(
    client: &Located,
    gateway_mac: &str,
    endpoint: &Located,
    (protocol, port): (&str, u16),
    legs: &[Leg],
) -> Option<(Ipv4Addr, String)> {
    match legs {
        [] => Some((
            client.node_ip,
            trace::gateway_probe(client.pod.ip, gateway_mac, &endpoint.pod, protocol, port),
        )),
        [first] => match first.trace.outcome {
            Outcome::Tunnel { vni, remote } if remote == endpoint.node_ip && remote != client.node_ip => {
                Some((
                    remote,
                    trace::gateway_tunnel_probe(
                        vni,
                        (client.node_ip, remote),
                        client.pod.ip,
                        gateway_mac,
                        &endpoint.pod,
                        (protocol, port),
                    ),
                ))
            }
            _ => None,
        },
        _ => None,
    }
}

/// Traces each endpoint: where kube-proxy's DNAT takes the connection.
pub async fn trace_endpoints(
    client: &Located,
    gateway_mac: &str,
    endpoints: &[(Ipv4Addr, u16)],
    nodes: &[NodePods],
    protocol: &str,
    policy_of: impl Fn(&str) -> Policy,
    (agent_port, token): (u16, Option<&str>),
) -> Result<Vec<EndpointTrace>> {
    let mut out = Vec::new();
    for (ip, port) in endpoints {
        let pod = locate(&ip.to_string(), nodes).ok();
        let (policy, legs) = match &pod {
            Some(ep) => {
                let next =
                    |legs: &[Leg]| next_endpoint_probe(client, gateway_mac, ep, (protocol, *port), legs);
                (Some(policy_of(&ep.pod.namespace)), run_probes(next, agent_port, token).await?)
            }
            None => (None, vec![]),
        };
        out.push(EndpointTrace { ip: *ip, port: *port, pod, policy, legs });
    }
    Ok(out)
}

/// The endpoints section of a Service's report, and whether some endpoint
/// is allowed by etcd and delivered by the switch (for the verdict).
pub fn report_endpoints(endpoints: &[EndpointTrace]) -> (String, bool, bool) {
    let mut out = String::from(
        "
endpoints (kube-proxy DNATs to one of them in the node; the packet keeps the client's VNI):
",
    );
    if endpoints.is_empty() {
        out.push_str(
            "  none: kube-proxy rejects the connection
",
        );
    }
    for ep in endpoints {
        match (&ep.pod, &ep.policy) {
            (Some(pod), Some(policy)) => {
                let d = delivery(&ep.legs, &Target::Pod(pod.clone()));
                let _ = writeln!(
                    out,
                    "  {}:{} {}/{} on {}: policy {}: {}; switch {}",
                    ep.ip,
                    ep.port,
                    pod.pod.namespace,
                    pod.pod.name,
                    pod.node_ip,
                    if policy.allowed { "allowed" } else { "denied" },
                    policy.reason,
                    d.detail
                );
                for leg in &ep.legs {
                    for s in &leg.trace.steps {
                        let matched = if s.matched.is_empty() { "(any)" } else { s.matched.as_str() };
                        let _ = writeln!(
                            out,
                            "      {:<15} {:>2} {:<13} {}",
                            leg.node_ip,
                            s.table,
                            table_name(s.table),
                            matched
                        );
                    }
                }
            }
            _ => {
                let _ = writeln!(out, "  {}:{}: not a pod any agent knows (not traced)", ep.ip, ep.port);
            }
        }
    }
    let allowed = endpoints.iter().any(|e| e.policy.as_ref().is_some_and(|p| p.allowed));
    let delivered = endpoints.iter().any(EndpointTrace::delivered);
    (out, allowed, delivered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn located(ns: &str, name: &str, ip: [u8; 4], ofport: u32, node: [u8; 4]) -> Located {
        Located {
            pod: TracePod {
                namespace: ns.into(),
                name: name.into(),
                ip: Ipv4Addr::from(ip),
                mac: "0a:58:0a:01:00:02".into(),
                ofport,
                vni: Some(100),
            },
            node_ip: Ipv4Addr::from(node),
        }
    }

    fn service() -> TraceService {
        TraceService {
            namespace: "red".into(),
            ip: Ipv4Addr::new(10, 96, 5, 5),
            ports: vec!["tcp/80".into()],
            vni: Some(100),
        }
    }

    fn leg(node: [u8; 4], text: &str) -> Leg {
        Leg {
            node_ip: Ipv4Addr::from(node),
            probe: String::new(),
            text: text.into(),
            trace: trace::parse(text),
        }
    }

    #[test]
    fn policy_is_same_vni_or_global_or_single_tenant() {
        let mt = PluginName::MultiTenant;
        assert!(policy(&mt, ("red", Some(100)), ("red", Some(100))).allowed);
        assert!(policy(&mt, ("red", Some(100)), ("blue", Some(100))).reason.contains("share VNI 100"));
        assert!(policy(&mt, ("red", Some(0)), ("blue", Some(200))).allowed);
        assert!(policy(&mt, ("red", Some(100)), ("kube-system", Some(0))).allowed);
        let denied = policy(&mt, ("red", Some(100)), ("blue", Some(200)));
        assert!(!denied.allowed && denied.reason.contains("differ"), "{denied:?}");
        assert!(!policy(&mt, ("red", None), ("blue", Some(0))).allowed);
        assert!(policy(&PluginName::Subnet, ("red", Some(100)), ("blue", Some(200))).allowed);
    }

    #[test]
    fn locate_by_name_or_ip_and_refuse_unknown() -> Result<()> {
        let n = NodePods {
            node_ip: Ipv4Addr::new(172, 30, 0, 11),
            bridge: "br0".into(),
            pods: vec![located("red", "red1", [10, 1, 0, 2], 3, [0; 4]).pod],
            services: vec![service()],
            rules: vec![],
            isolated: vec![],
        };
        let nodes = [n];
        assert_eq!(locate("red/red1", &nodes)?.pod.ofport, 3);
        assert_eq!(locate("10.1.0.2", &nodes)?.node_ip, Ipv4Addr::new(172, 30, 0, 11));
        assert!(locate("red/red9", &nodes).is_err());
        assert!(locate("red1", &nodes).is_err());
        assert!(
            matches!(target("10.96.5.5:80", &nodes)?, Target::Service { port: 80, ref protocol, .. } if protocol == "tcp")
        );
        assert!(matches!(target("10.96.5.5:53/udp", &nodes)?, Target::Service { port: 53, .. }));
        assert!(target("10.96.9.9:80", &nodes).is_err(), "no such service");
        assert!(target("10.96.5.5:http", &nodes).is_err() && target("10.96.5.5:80/sctp", &nodes).is_err());
        assert!(matches!(target("red/red1", &nodes)?, Target::Pod(_)));
        Ok(())
    }

    #[test]
    fn a_cross_node_pair_is_traced_on_both_nodes_with_the_tunnel_vni() {
        let src = located("red", "a", [10, 1, 0, 2], 3, [172, 30, 0, 11]);
        let dst = Target::Pod(located("red", "b", [10, 1, 4, 2], 5, [172, 30, 0, 12]));
        let (node, probe) = next_probe(&src, (&dst, &Packet::Echo), &[]).expect("first leg");
        assert_eq!(node, src.node_ip);
        assert!(probe.starts_with("in_port=3,"));
        let first = leg([172, 30, 0, 11], "70. ip, priority 100, cookie 0x1\n    set_field:172.30.0.12->tun_dst\n    move:NXM_NX_REG0[]->NXM_NX_TUN_ID[0..31]\n     -> NXM_NX_TUN_ID[0..31] is now 0x64\n    output:1\n");
        let (node, probe) =
            next_probe(&src, (&dst, &Packet::Echo), std::slice::from_ref(&first)).expect("second leg");
        assert_eq!(node, Ipv4Addr::new(172, 30, 0, 12));
        assert!(
            probe.starts_with("in_port=1,tun_id=0x64,tun_src=172.30.0.11,tun_dst=172.30.0.12,"),
            "{probe}"
        );
        let second = leg([172, 30, 0, 12], "60. reg0=0x64,reg1=0x64, priority 200, cookie 0x1\n    output:NXM_NX_REG2[]\n     -> output port is 5\n");
        let legs = [first, second];
        assert_eq!(next_probe(&src, (&dst, &Packet::Echo), &legs), None);
        assert!(delivery(&legs, &dst).delivered);
        let allowed = policy(&PluginName::MultiTenant, ("red", Some(100)), ("red", Some(100)));
        let (text, code) = report(&src, (&dst, &Packet::Echo), &allowed, &legs, &[], None, false);
        assert_eq!(code, 0, "{text}");
        assert!(text.contains("ISOLATION") && text.contains("ALLOWED"), "{text}");
    }

    #[test]
    fn a_drop_is_denied_and_a_disagreement_is_a_mismatch() {
        let src = located("red", "a", [10, 1, 0, 2], 3, [172, 30, 0, 11]);
        let dst = Target::Pod(located("blue", "b", [10, 1, 0, 3], 4, [172, 30, 0, 11]));
        let legs = [leg([172, 30, 0, 11], "60. priority 0, cookie 0x1\n    drop\n")];
        let d = delivery(&legs, &dst);
        assert!(!d.delivered && d.detail.contains("table 60 ISOLATION"), "{d:?}");
        let denied = policy(&PluginName::MultiTenant, ("red", Some(100)), ("blue", Some(200)));
        assert_eq!(report(&src, (&dst, &Packet::Echo), &denied, &legs, &[], None, false).1, 3);
        let allowed = policy(&PluginName::MultiTenant, ("red", Some(100)), ("blue", Some(100)));
        let (text, code) = report(&src, (&dst, &Packet::Echo), &allowed, &legs, &[], None, true);
        assert_eq!(code, 4);
        assert!(text.contains("MISMATCH") && text.contains("ofproto/trace"), "{text}");
        // Delivered to another port than the pod's is not delivery.
        let wrong = [leg(
            [172, 30, 0, 11],
            "60. priority 300, cookie 0x1\n    output:NXM_NX_REG2[]\n     -> output port is 9\n",
        )];
        assert!(!delivery(&wrong, &dst).delivered);
    }

    #[test]
    fn a_service_is_reached_through_the_gateway_or_dropped_by_service() {
        let src = located("blue", "a", [10, 1, 0, 2], 3, [172, 30, 0, 11]);
        let dst = Target::Service { service: service(), protocol: "tcp".into(), port: 80 };
        let (node, probe) = next_probe(&src, (&dst, &Packet::Echo), &[]).expect("one leg");
        assert_eq!(node, src.node_ip);
        assert!(
            probe.contains(",tcp,") && probe.ends_with("nw_dst=10.96.5.5,nw_ttl=64,tcp_dst=80"),
            "{probe}"
        );
        let dropped =
            [leg([172, 30, 0, 11], "30. ip,nw_dst=10.96.0.0/12, priority 100, cookie 0x1\n    drop\n")];
        assert_eq!(next_probe(&src, (&dst, &Packet::Echo), &dropped), None);
        let d = delivery(&dropped, &dst);
        assert!(!d.delivered && d.detail.contains("table 30 SERVICE"), "{d:?}");
        let denied = policy(&PluginName::MultiTenant, ("blue", Some(200)), (dst.namespace(), Some(100)));
        let (text, code) = report(&src, (&dst, &Packet::Echo), &denied, &dropped, &[], None, false);
        assert_eq!(code, 3, "{text}");
        assert!(text.contains("to    service 10.96.5.5:80/tcp in namespace red"), "{text}");
        let to_gw = [leg(
            [172, 30, 0, 11],
            "30. tcp,reg0=0x64,nw_dst=10.96.5.5,tp_dst=80, priority 200, cookie 0x1\n    output:2\n",
        )];
        assert!(delivery(&to_gw, &dst).delivered);
    }

    // Real OVS 3.1 ofproto/trace answers (captured from a lab switch holding
    // tests/golden multi_tenant + network_policy): node 192.0.2.11 with
    // red/pod3 172.11.0.2 (port 3; red/db-from-web admits TCP 6379 from app=web
    // to it), red/pod4 172.11.0.3 (port 4, app=web), kube-system/pod6
    // 172.11.0.5 (port 6, global); red/egress-dns-only lets red's pods send
    // only UDP 53 to kube-system.
    const EGRESS_ADMITTED: &str = include_str!("testdata/egress_conj_admitted.txt");
    const EGRESS_REFUSED: &str = include_str!("testdata/egress_isolated_refused.txt");
    const INGRESS_REFUSED: &str = include_str!("testdata/ingress_isolated_refused.txt");
    const INGRESS_ADMITTED_TUNNEL: &str = include_str!("testdata/ingress_conj_admitted_tunnel.txt");

    const NODE: [u8; 4] = [192, 0, 2, 11];

    fn policy_node() -> NodePods {
        use ovs_flows::trace::{PolicyName, TraceIsolated, TraceRule};
        let name = |n: &str| PolicyName { namespace: "red".into(), name: n.into() };
        let isolated = |ip: [u8; 4], direction, by: &str| TraceIsolated {
            ip: Ipv4Addr::from(ip),
            direction,
            policies: vec![name(by)],
        };
        NodePods {
            node_ip: Ipv4Addr::from(NODE),
            bridge: "br0".into(),
            pods: vec![],
            services: vec![],
            rules: vec![
                TraceRule {
                    id: 2844123137,
                    policy: name("db-from-web"),
                    direction: Direction::Ingress,
                    rule: 0,
                },
                TraceRule {
                    id: 4132204545,
                    policy: name("egress-dns-only"),
                    direction: Direction::Egress,
                    rule: 0,
                },
            ],
            isolated: vec![
                isolated([172, 11, 0, 2], Direction::Ingress, "db-from-web"),
                isolated([172, 11, 0, 2], Direction::Egress, "egress-dns-only"),
                isolated([172, 11, 0, 3], Direction::Egress, "egress-dns-only"),
            ],
        }
    }

    fn pod3() -> Located {
        located("red", "pod3", [172, 11, 0, 2], 3, NODE)
    }
    fn pod4() -> Located {
        located("red", "pod4", [172, 11, 0, 3], 4, NODE)
    }
    fn pod6() -> Located {
        located("kube-system", "pod6", [172, 11, 0, 5], 6, NODE)
    }

    fn tcp(port: u16) -> Packet {
        Packet::L4 { protocol: "tcp".into(), port }
    }

    fn same_vni() -> Policy {
        policy(&PluginName::MultiTenant, ("red", Some(100)), ("red", Some(100)))
    }

    #[test]
    fn an_admitting_conjunction_is_named_by_its_policy_and_rule() {
        let legs = [leg(NODE, EGRESS_ADMITTED)];
        let dst = Target::Pod(pod6());
        let udp = Packet::L4 { protocol: "udp".into(), port: 53 };
        let nodes = [policy_node()];
        let lines = netpol(&pod3(), &pod6(), &legs, &nodes);
        assert_eq!(
            lines,
            [
                "egress of red/pod3: admitted by NetworkPolicy red/egress-dns-only (egress rule 1)",
                "ingress of kube-system/pod6: no NetworkPolicy selects kube-system/pod6 for ingress",
            ]
        );
        let global = policy(&PluginName::MultiTenant, ("red", Some(100)), ("kube-system", Some(0)));
        let (text, code) = report(&pod3(), (&dst, &udp), &global, &legs, &nodes, None, false);
        assert_eq!(code, 0, "{text}");
        assert!(text.contains("\nprobe   UDP to port 53\n"), "{text}");
        let order: Vec<&str> = text.lines().filter_map(|l| l.split_whitespace().next()).take(6).collect();
        assert_eq!(order, ["from", "to", "probe", "policy", "netpol", "netpol"], "{text}");
        assert!(text.contains("verdict ALLOWED"), "{text}");
        // An agent that does not serve the facts (older): the id, unnamed.
        let lines = netpol(&pod3(), &pod6(), &legs, &[]);
        assert!(
            lines[0]
                .contains("admitted by conjunction 4132204545, a rule the agent on 192.0.2.11 does not name"),
            "{lines:?}"
        );
    }

    #[test]
    fn an_isolation_drop_names_the_isolating_policies_and_denies_by_network_policy() {
        let nodes = [policy_node()];
        // pod4 may send only DNS: its egress refuses TCP 6379.
        let legs = [leg(NODE, EGRESS_REFUSED)];
        let dst = Target::Pod(pod3());
        assert!(dropped_by_network_policy(&legs));
        assert_eq!(
            netpol(&pod4(), &pod3(), &legs, &nodes),
            ["egress of red/pod4: refused by NetworkPolicy: red/pod4 is isolated for egress by \
              red/egress-dns-only, and no rule of theirs admits this packet"],
            "INGRESS_POLICY was not reached: no ingress line"
        );
        let (text, code) = report(&pod4(), (&dst, &tcp(6379)), &same_vni(), &legs, &nodes, None, false);
        assert_eq!(code, 3, "{text}");
        assert!(text.contains("verdict DENIED by NetworkPolicy: the pods cannot talk"), "{text}");
        assert!(text.contains("switch  dropped in table 36 EGRESS_POLICY on 192.0.2.11"), "{text}");
        assert!(!text.contains("MISMATCH"), "{text}");
        // Tenancy closed as well: tenancy's verdict, as before.
        let closed = policy(&PluginName::MultiTenant, ("red", Some(100)), ("red", Some(200)));
        let (text, code) = report(&pod4(), (&dst, &tcp(6379)), &closed, &legs, &nodes, None, false);
        assert_eq!(code, 3);
        assert!(
            text.contains("verdict DENIED: the pods cannot talk (the switch agrees with etcd)"),
            "{text}"
        );

        // pod6 sends anything (no policy selects it), pod3 admits only app=web.
        let legs = [leg(NODE, INGRESS_REFUSED)];
        let lines = netpol(&pod6(), &pod3(), &legs, &nodes);
        assert_eq!(
            lines,
            [
                "egress of kube-system/pod6: no NetworkPolicy selects kube-system/pod6 for egress",
                "ingress of red/pod3: refused by NetworkPolicy: red/pod3 is isolated for ingress by \
                 red/db-from-web, and no rule of theirs admits this packet",
            ]
        );
        let global = policy(&PluginName::MultiTenant, ("kube-system", Some(0)), ("red", Some(100)));
        let (text, code) = report(&pod6(), (&dst, &tcp(6379)), &global, &legs, &nodes, None, false);
        assert_eq!(code, 3, "{text}");
        assert!(text.contains("DENIED by NetworkPolicy") && text.contains("62 INGRESS_POLICY"), "{text}");
        // An older agent: the drop is still the policy table's, unnamed.
        let lines = netpol(&pod6(), &pod3(), &legs, &[]);
        assert!(lines[1].contains("red/pod3 is isolated for ingress, and no rule admits this packet (the agent on 192.0.2.11 names no policy"), "{lines:?}");
        assert_eq!(report(&pod6(), (&dst, &tcp(6379)), &global, &legs, &[], None, false).1, 3);
    }

    #[test]
    fn across_nodes_the_receiving_nodes_ingress_rule_is_named() {
        let far = located("red", "far", [172, 11, 4, 7], 3, [192, 0, 2, 12]);
        let dst = Target::Pod(pod3());
        let (node, probe) = next_probe(&far, (&dst, &tcp(6379)), &[]).expect("first leg");
        assert_eq!(node, Ipv4Addr::new(192, 0, 2, 12));
        assert!(probe.starts_with("in_port=3,tcp,") && probe.ends_with(",tcp_dst=6379"), "{probe}");
        // Node 192.0.2.12: no egress policy selects far (its default), then the tunnel.
        let first = leg([192, 0, 2, 12], "36. priority 0, cookie 0x1014b00000000\n    goto_table:38\n70. ip,nw_dst=172.11.0.0/22, priority 100, cookie 0x1\n    move:NXM_NX_REG0[]->NXM_NX_TUN_ID[0..31]\n     -> NXM_NX_TUN_ID[0..31] is now 0x64\n    set_field:192.0.2.11->tun_dst\n    output:1\n");
        let (node, probe) =
            next_probe(&far, (&dst, &tcp(6379)), std::slice::from_ref(&first)).expect("second leg");
        assert_eq!(node, Ipv4Addr::from(NODE));
        assert!(
            probe.starts_with("in_port=1,tun_id=0x64,tun_src=192.0.2.12,tun_dst=192.0.2.11,tcp,")
                && probe.ends_with(",tcp_dst=6379"),
            "{probe}"
        );
        let legs = [first, leg(NODE, INGRESS_ADMITTED_TUNNEL)];
        let far_node = NodePods {
            node_ip: Ipv4Addr::new(192, 0, 2, 12),
            rules: vec![],
            isolated: vec![],
            ..policy_node()
        };
        let nodes = [far_node, policy_node()];
        assert_eq!(
            netpol(&far, &pod3(), &legs, &nodes),
            [
                "egress of red/far: no NetworkPolicy selects red/far for egress",
                "ingress of red/pod3: admitted by NetworkPolicy red/db-from-web (ingress rule 1)",
            ]
        );
        let (text, code) = report(&far, (&dst, &tcp(6379)), &same_vni(), &legs, &nodes, None, false);
        assert_eq!(code, 0, "{text}");
        assert!(text.contains("delivered to port 3 (pod3) on 192.0.2.11"), "{text}");
    }

    #[test]
    fn a_switch_passing_an_isolated_pod_is_called_out_of_step() {
        // The agent says red/egress-dns-only isolates pod3, the switch's
        // EGRESS_POLICY let it through its default flow.
        let text = EGRESS_ADMITTED.replace("36. conj_id=4132204545,ip, priority 100", "36. priority 0");
        let legs = [leg(NODE, &text)];
        let lines = netpol(&pod3(), &pod6(), &legs, &[policy_node()]);
        assert!(
            lines[0].contains("although the agent says red/egress-dns-only isolate red/pod3"),
            "{lines:?}"
        );
    }

    #[test]
    fn the_probe_flags_need_each_other_and_a_pod() -> Result<()> {
        assert_eq!(Packet::from_flags(None, None)?, Packet::Echo);
        assert_eq!(Packet::from_flags(Some("icmp"), None)?, Packet::Echo);
        assert_eq!(
            Packet::from_flags(Some("udp"), Some(53))?,
            Packet::L4 { protocol: "udp".into(), port: 53 }
        );
        let err = |p: Option<&str>, port| Packet::from_flags(p, port).map_err(|e| e.to_string()).err();
        assert_eq!(
            err(None, Some(80)).as_deref(),
            Some("--port needs --protocol tcp or udp (an ICMP echo has no port)")
        );
        assert_eq!(err(Some("tcp"), None).as_deref(), Some("--protocol tcp needs --port N"));
        assert!(err(Some("udp"), Some(0)).is_some_and(|e| e.contains("1 to 65535")));
        assert!(err(Some("sctp"), Some(80)).is_some_and(|e| e.contains("expected icmp, tcp or udp")));
        let svc = Target::Service { service: service(), protocol: "tcp".into(), port: 80 };
        assert!(tcp(80).check_target(&svc).is_err());
        assert!(Packet::Echo.check_target(&svc).is_ok());
        assert!(tcp(80).check_target(&Target::Pod(pod3())).is_ok());
        assert_eq!(tcp(80).to_string(), "TCP to port 80");
        // An echo's report has no probe line (as before the flags).
        let legs = [leg(NODE, EGRESS_ADMITTED)];
        let (text, _) =
            report(&pod3(), (&Target::Pod(pod6()), &Packet::Echo), &same_vni(), &legs, &[], None, false);
        assert!(!text.contains("probe"), "{text}");
        Ok(())
    }

    #[test]
    fn endpoints_come_from_the_slices_of_the_service_port() -> Result<()> {
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "red"},
            "spec": {"clusterIP": "10.96.5.5", "ports": [
                {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
                {"name": "dns", "port": 53, "protocol": "UDP"}]}
        }))?;
        let slice = |svc_name: &str, ready: bool| -> Result<k8s_openapi::api::discovery::v1::EndpointSlice> {
            Ok(serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("{svc_name}-x"), "labels": {"kubernetes.io/service-name": svc_name}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["172.11.4.3"], "conditions": {"ready": ready}},
                              {"addresses": ["172.11.0.9"]}],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}]
            }))?)
        };
        let slices = [slice("web", true)?, slice("other", true)?];
        let ip = |s: &str| -> Ipv4Addr { s.parse().unwrap_or(Ipv4Addr::UNSPECIFIED) };
        assert_eq!(
            endpoints_of(&svc, &slices, 80, "tcp"),
            vec![(ip("172.11.0.9"), 8080), (ip("172.11.4.3"), 8080)]
        );
        assert_eq!(endpoints_of(&svc, &slices, 53, "udp").len(), 2);
        assert!(endpoints_of(&svc, &slices, 81, "tcp").is_empty(), "no such service port");
        // Not ready: kube-proxy leaves it out.
        assert_eq!(endpoints_of(&svc, &[slice("web", false)?], 80, "tcp"), vec![(ip("172.11.0.9"), 8080)]);
        Ok(())
    }
}
