//! "Can pod A talk to pod B, and why not?" in the switch's own words.
//!
//! A question becomes one probe packet per node it crosses (an ICMP echo
//! from A's port, and on B's node the same packet as it arrives through the
//! tunnel), `ovs-appctl ofproto/trace` runs it through the tables, and
//! [`parse`] turns the text back into steps and an [`Outcome`]: delivered to
//! a port, sent into the tunnel with a VNI, or dropped in a named table.
//! Pure: the agent runs the trace, `k8s-ovs-ctl trace` asks and explains.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::pipeline::{Table, GATEWAY_OFPORT, VXLAN_OFPORT};
use crate::policy::{Compiled, Direction};

/// A pod as its node's switch sees it (the agent's `/debug/pods` answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TracePod {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    pub ofport: u32,
    /// The VNI its traffic carries on this node; None while etcd has none.
    pub vni: Option<u32>,
}

/// A ClusterIP service as a node's pipeline knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceService {
    pub namespace: String,
    pub ip: Ipv4Addr,
    /// `tcp/80`, `udp/53`.
    pub ports: Vec<String>,
    /// The VNI of its namespace on this node; None while etcd has none.
    pub vni: Option<u32>,
}

/// What a node's agent reports for tracing: its address, bridge, pods,
/// the services its SERVICE table holds, and its NetworkPolicy facts (an
/// agent from before NetworkPolicy reports none: the defaults).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePods {
    pub node_ip: Ipv4Addr,
    pub bridge: String,
    pub pods: Vec<TracePod>,
    #[serde(default)]
    pub services: Vec<TraceService>,
    /// The rule each conjunction id of the node's policy tables stands for.
    #[serde(default)]
    pub rules: Vec<TraceRule>,
    /// The node's pods a NetworkPolicy isolates, per direction.
    #[serde(default)]
    pub isolated: Vec<TraceIsolated>,
}

/// A policy by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PolicyName {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PolicyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The NetworkPolicy rule a conjunction id (`conj_id=N` in a trace) stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceRule {
    pub id: u32,
    #[serde(flatten)]
    pub policy: PolicyName,
    pub direction: Direction,
    /// Index in the policy's `ingress` / `egress` list (0 is the first).
    pub rule: usize,
}

/// A local pod isolated for `direction`, and the policies selecting it:
/// what none of their rules admits is dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceIsolated {
    pub ip: Ipv4Addr,
    pub direction: Direction,
    pub policies: Vec<PolicyName>,
}

/// A node's compiled policies as `/debug/pods` reports them.
pub fn policy_facts(compiled: &Compiled) -> (Vec<TraceRule>, Vec<TraceIsolated>) {
    let rules = compiled
        .rules
        .iter()
        .map(|(id, r)| TraceRule {
            id: *id,
            policy: PolicyName { namespace: r.namespace.clone(), name: r.name.clone() },
            direction: r.direction,
            rule: r.rule,
        })
        .collect();
    let isolated = compiled
        .isolated_by
        .iter()
        .map(|((ip, direction), by)| TraceIsolated {
            ip: *ip,
            direction: *direction,
            policies: by
                .iter()
                .map(|(namespace, name)| PolicyName { namespace: namespace.clone(), name: name.clone() })
                .collect(),
        })
        .collect();
    (rules, isolated)
}

/// The flow for `src` opening `protocol`/`port` on a service's cluster IP
/// (`protocol`: `tcp` or `udp`). Only SERVICE looks past the addresses, and
/// it matches the protocol and the port.
pub fn service_probe(src: &TracePod, ip: Ipv4Addr, protocol: &str, port: u16) -> String {
    format!(
        "in_port={},{protocol},dl_src={},nw_src={},nw_dst={ip},nw_ttl=64,{protocol}_dst={port}",
        src.ofport, src.mac, src.ip
    )
}

/// A service connection after kube-proxy's DNAT, as the client's node
/// kernel sends it back into the bridge: from tun0 (addressed from the
/// gateway's MAC to the endpoint's), with the client pod's address as the
/// source, to the endpoint's address and target port.
pub fn gateway_probe(
    client: Ipv4Addr,
    gateway_mac: &str,
    endpoint: &TracePod,
    protocol: &str,
    port: u16,
) -> String {
    format!("in_port={GATEWAY_OFPORT},{}", l4_packet(client, gateway_mac, endpoint, protocol, port))
}

/// [`gateway_probe`]'s packet as the endpoint's node receives it from the tunnel.
pub fn gateway_tunnel_probe(
    vni: u32,
    (src_node, dst_node): (Ipv4Addr, Ipv4Addr),
    client: Ipv4Addr,
    gateway_mac: &str,
    endpoint: &TracePod,
    (protocol, port): (&str, u16),
) -> String {
    format!(
        "in_port={VXLAN_OFPORT},tun_id={vni:#x},tun_src={src_node},tun_dst={dst_node},{}",
        l4_packet(client, gateway_mac, endpoint, protocol, port)
    )
}

/// A `protocol` (`tcp` or `udp`) packet to `endpoint`'s `port`. The port is
/// `tcp_dst` / `udp_dst`: `ofproto/trace` reads `tp_dst` as TCP's field and
/// refuses it on a UDP packet.
fn l4_packet(client: Ipv4Addr, src_mac: &str, endpoint: &TracePod, protocol: &str, port: u16) -> String {
    format!(
        "{protocol},dl_src={src_mac},dl_dst={},nw_src={client},nw_dst={},nw_ttl=64,{protocol}_dst={port}",
        endpoint.mac, endpoint.ip
    )
}

/// The flow `ofproto/trace` runs for `src` sending an ICMP echo to `dst`,
/// entering the switch at `src`'s port (on `src`'s node). Pods reach the
/// whole cluster range on-link, so the frame is addressed to `dst`'s MAC.
pub fn pod_probe(src: &TracePod, dst: &TracePod) -> String {
    format!("in_port={},{}", src.ofport, packet(src, dst))
}

/// The same packet as `dst`'s node receives it from the tunnel: from
/// `src_node` with the VNI the sending node put in the VXLAN header.
pub fn tunnel_probe(
    vni: u32,
    src_node: Ipv4Addr,
    dst_node: Ipv4Addr,
    src: &TracePod,
    dst: &TracePod,
) -> String {
    format!(
        "in_port={VXLAN_OFPORT},tun_id={vni:#x},tun_src={src_node},tun_dst={dst_node},{}",
        packet(src, dst)
    )
}

/// [`pod_probe`] with a `protocol` (`tcp` or `udp`) packet to `dst`'s
/// `port` instead of an echo: what NetworkPolicy rules with ports decide on.
pub fn pod_l4_probe(src: &TracePod, dst: &TracePod, (protocol, port): (&str, u16)) -> String {
    format!("in_port={},{}", src.ofport, l4_packet(src.ip, &src.mac, dst, protocol, port))
}

/// [`pod_l4_probe`]'s packet as `dst`'s node receives it from the tunnel.
pub fn tunnel_l4_probe(
    vni: u32,
    (src_node, dst_node): (Ipv4Addr, Ipv4Addr),
    src: &TracePod,
    dst: &TracePod,
    (protocol, port): (&str, u16),
) -> String {
    format!(
        "in_port={VXLAN_OFPORT},tun_id={vni:#x},tun_src={src_node},tun_dst={dst_node},{}",
        l4_packet(src.ip, &src.mac, dst, protocol, port)
    )
}

fn packet(src: &TracePod, dst: &TracePod) -> String {
    format!(
        "icmp,dl_src={},dl_dst={},nw_src={},nw_dst={},nw_ttl=64,icmp_type=8",
        src.mac, dst.mac, src.ip, dst.ip
    )
}

/// Whether `flow` is a flow spec `ofproto/trace` may be handed: the
/// characters of `field=value,...` only (no spaces, no shell or URL syntax).
pub fn is_probe_text(flow: &str) -> bool {
    !flow.is_empty()
        && flow.len() <= 512
        && flow.bytes().all(|b| b.is_ascii_alphanumeric() || b",=:./_-[]".contains(&b))
}

/// One table the packet crossed: the flow it matched and that flow's actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub table: u8,
    /// The flow's match as OVS prints it (`priority 0` flows: empty),
    /// or "no match".
    pub matched: String,
    pub priority: Option<u16>,
    pub cookie: Option<u64>,
    /// The actions, and OVS's notes on them (`-> output port is 3`).
    pub actions: Vec<String>,
}

/// Where the packet went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Out of an ordinary port (a pod, or the gateway).
    Output { port: u32 },
    /// Into the VXLAN tunnel, keyed with `vni`, to the node `remote`.
    Tunnel { vni: u32, remote: Ipv4Addr },
    /// Dropped; in this table (its default flow, or no match).
    Dropped { table: u8 },
    /// The trace could not be read (the text is kept for the operator).
    Unknown,
}

/// A parsed `ofproto/trace` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    pub steps: Vec<Step>,
    pub outcome: Outcome,
}

/// Reads `ofproto/trace`'s text (OVS 2.x/3.x layout): every `NN. <match>,
/// priority P, cookie C` line starts a step, the indented lines under it are
/// its actions; the outputs and the tunnel fields give the outcome.
pub fn parse(text: &str) -> Trace {
    let mut steps: Vec<Step> = Vec::new();
    // The bridge the trace starts in; a native tunnel's output is traced on
    // into the underlay bridge (`bridge("br-phy")`, nested or not): that is
    // not our pipeline, and ends the reading.
    let mut bridge: Option<&str> = None;
    // Between a pass's summary (`Final flow:` ...) and the next section: a
    // `ct(table=...)` recirculation resumes the trace in a section of its
    // own (`recirc(0x..) - resume conntrack ...`), in the same bridge.
    let mut between = false;
    for line in text.lines() {
        let t = line.trim_start();
        if between {
            between = !(t.starts_with("recirc(") && t.contains("resume conntrack"));
            continue;
        }
        if let Some(b) = t.strip_prefix("bridge(") {
            match bridge {
                None if steps.is_empty() => bridge = Some(b),
                Some(first) if first == b => {}
                _ => break,
            }
            continue;
        }
        if line.starts_with("Final flow:") || line.starts_with("Datapath actions:") {
            between = true;
            continue;
        }
        if let Some(step) = step_header(line) {
            steps.push(step);
        } else if let Some(last) = steps.last_mut() {
            // `thaw` / `Resuming from table N` open a resumed section.
            if !t.is_empty() && line.starts_with(' ') && t != "thaw" && !t.starts_with("Resuming from table")
            {
                last.actions.push(t.to_string());
            }
        }
    }
    let outcome = outcome(&steps);
    Trace { steps, outcome }
}

/// `20. ip,in_port=3, priority 100, cookie 0x1024b00000003`, `30. priority 0,
/// cookie 0x1`, or `50. No match.`
fn step_header(line: &str) -> Option<Step> {
    let trimmed = line.trim_start();
    // Step headers sit at the left edge (ours use goto_table, never nested
    // resubmits); action lines are indented by four spaces.
    if line.len() - trimmed.len() > 2 {
        return None;
    }
    let (num, rest) = trimmed.split_once(". ")?;
    let table: u8 = num.parse().ok()?;
    if rest.starts_with("No match") {
        return Some(Step {
            table,
            matched: "no match".into(),
            priority: None,
            cookie: None,
            actions: vec![],
        });
    }
    let (head, cookie) = match rest.rsplit_once("cookie ") {
        Some((h, c)) => (
            h.trim_end().trim_end_matches(','),
            u64::from_str_radix(c.trim().trim_start_matches("0x"), 16).ok(),
        ),
        None => (rest, None),
    };
    let (matched, priority) = match head.rsplit_once("priority ") {
        Some((m, p)) => (m.trim_end().trim_end_matches(',').to_string(), p.trim().parse().ok()),
        None => (head.to_string(), None),
    };
    Some(Step { table, matched, priority, cookie, actions: vec![] })
}

fn outcome(steps: &[Step]) -> Outcome {
    let Some(last) = steps.last() else { return Outcome::Unknown };
    let (mut vni, mut remote) = (None, None);
    for step in steps {
        for a in &step.actions {
            if let Some(v) = a.strip_prefix("-> NXM_NX_TUN_ID[0..31] is now ") {
                vni = parse_num(v);
            } else if let Some(v) = a.strip_prefix("set_field:").and_then(|v| v.strip_suffix("->tun_id")) {
                vni = parse_num(v);
            } else if let Some(v) = a.strip_prefix("set_field:").and_then(|v| v.strip_suffix("->tun_dst")) {
                remote = v.parse().ok();
            }
        }
    }
    let mut port = None;
    for a in &last.actions {
        if let Some(p) = a.strip_prefix("-> output port is ") {
            port = p.trim().parse().ok();
        } else if let Some(p) = a.strip_prefix("output:") {
            if let Ok(p) = p.trim().parse::<u32>() {
                port = Some(p);
            }
        }
    }
    match port {
        Some(VXLAN_OFPORT) => match (vni, remote) {
            (Some(vni), Some(remote)) => Outcome::Tunnel { vni, remote },
            _ => Outcome::Unknown,
        },
        Some(port) => Outcome::Output { port },
        None if last.actions.iter().any(|a| a == "drop")
            || last.matched == "no match"
            || last.actions.is_empty() =>
        {
            Outcome::Dropped { table: last.table }
        }
        None => Outcome::Unknown,
    }
}

fn parse_num(s: &str) -> Option<u32> {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// What a drop in `table` means, for the operator (docs/operations.md has
/// the same list with what to look at).
pub fn drop_meaning(table: u8) -> &'static str {
    match Table::from_id(table) {
        Some(Table::Classifier) => "the packet entered on no known port",
        Some(Table::TunnelIn) => "the tunnel source is not a known node",
        Some(Table::GatewayIn) | Some(Table::GatewayReply) => "the pipeline's defaults were changed by hand",
        Some(Table::SpoofGuard) => {
            "the source port, MAC and IP do not match the pod's flow (changed or spoofed address, or the pod's flows are missing)"
        }
        Some(Table::SourceVni) | Some(Table::DestVni) => "the pod's namespace has no VNI yet (no netnamespace record)",
        Some(Table::Service) => "no such Service port",
        Some(Table::ServiceVni) => "a Service of another tenant",
        Some(Table::Routing) => "no route for the destination",
        Some(Table::LocalPod) => "no pod with that IP on this node",
        Some(Table::Isolation) | Some(Table::Refused) => "the VNIs differ and neither is global (0): isolation, as configured",
        Some(Table::RemoteNode) => "no node owns the destination's subnet",
        Some(Table::EgressPolicy) => "the source pod's NetworkPolicy egress admits no such connection",
        Some(Table::IngressPolicy) => "the destination pod's NetworkPolicy ingress admits no such connection",
        Some(Table::EgressCommit) | Some(Table::IngressCommit) | Some(Table::RelatedPeer) => {
            "the pipeline's defaults were changed by hand"
        }
        None => "a table k8s-ovs does not use",
    }
}

/// Whether `port` is the node's gateway (tun0).
pub fn is_gateway(port: u32) -> bool {
    port == GATEWAY_OFPORT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, ip: [u8; 4], ofport: u32) -> TracePod {
        TracePod {
            namespace: ns.into(),
            name: name.into(),
            ip: Ipv4Addr::from(ip),
            mac: format!("0a:58:{:02x}:{:02x}:{:02x}:{:02x}", ip[0], ip[1], ip[2], ip[3]),
            ofport,
            vni: Some(13),
        }
    }

    // Real OVS 3.1 output (docs/operations.md), lightly trimmed.
    const TO_TUNNEL: &str = "bridge(\"br0\")
-------------
 0. priority 0, cookie 0x1014b00000000
    goto_table:20
20. ip,in_port=3,dl_src=0a:58:ac:0b:00:02,nw_src=172.11.0.2, priority 100, cookie 0x1024b00000003
    set_field:0xd->reg0
    goto_table:30
30. priority 0, cookie 0x1014b00000000
    goto_table:40
40. ip,nw_dst=172.11.0.0/16, priority 100, cookie 0x1064b00000000
    goto_table:70
70. ip,nw_dst=172.11.4.0/22, priority 100, cookie 0x1034bac1e000c
    move:NXM_NX_REG0[]->NXM_NX_TUN_ID[0..31]
     -> NXM_NX_TUN_ID[0..31] is now 0xd
    set_field:172.30.0.12->tun_dst
    output:1
     -> output to native tunnel
     -> tunneling to 172.30.0.12 via br-phy

bridge(\"br-phy\")
----------------
 0. priority 0
    NORMAL
     -> forwarding to learned port
    drop

Final flow: unchanged
Megaflow: recirc_id=0,eth,icmp,in_port=3
Datapath actions: tnl_push(tnl_port(4),header(size=50)),out_port(1)),2
";

    const TO_PORT: &str = " 0. in_port=1, priority 200, cookie 0x1014b00000000
    goto_table:10
10. tun_src=172.30.0.11, priority 100, cookie 0x1034bac1e000b
    move:NXM_NX_TUN_ID[0..31]->NXM_NX_REG0[]
     -> NXM_NX_REG0[] is now 0xd
    goto_table:50
50. ip,nw_dst=172.11.4.2, priority 100, cookie 0x1024b00000003
    set_field:0xd->reg1
    set_field:0x3->reg2
    goto_table:60
60. reg0=0xd,reg1=0xd, priority 200, cookie 0x1044b0000000d
    output:NXM_NX_REG2[]
     -> output port is 3

Final flow: unchanged
Datapath actions: 3
";

    const DROPPED: &str =
        "20. ip,in_port=3,dl_src=0a:58:ac:0b:00:02,nw_src=172.11.0.2, priority 100, cookie 0x1024b00000003
    set_field:0xd->reg0
    goto_table:30
60. priority 0, cookie 0x1014b00000000
    drop

Final flow: icmp,reg0=0xd,reg1=0xe,reg2=0x4,in_port=3
Datapath actions: drop
";

    /// A packet to a local pod passes GATEWAY_REPLY's conntrack lookup: the
    /// trace resumes after the recirculation (as OVS 3.1 prints it).
    const RECIRCULATED: &str = "Flow: icmp,in_port=3,vlan_tci=0x0000,dl_src=0a:58:ac:0b:00:02,dl_dst=0a:58:ac:0b:00:03,nw_src=172.11.0.2,nw_dst=172.11.0.3,nw_tos=0,nw_ecn=0,nw_ttl=64,nw_frag=no,icmp_type=8,icmp_code=0

bridge(\"br0\")
-------------
 0. priority 0, cookie 0x1014b00000000
    goto_table:20
20. ip,in_port=3,dl_src=0a:58:ac:0b:00:02,nw_src=172.11.0.2, priority 100, cookie 0x1024b00000003
    set_field:0x64->reg0
    goto_table:30
30. priority 0, cookie 0x1014b00000000
    goto_table:40
40. ip,nw_dst=172.11.0.0/22, priority 200, cookie 0x1064b00000000
    goto_table:50
50. ip,nw_dst=172.11.0.3, priority 100, cookie 0x1024b00000004
    set_field:0x64->reg1
    set_field:0x4->reg2
    goto_table:55
55. ct_state=-trk,ip, priority 100, cookie 0x1014b00000000
    ct(table=55,zone=64000)
    drop
     -> A clone of the packet is forked to recirculate. The forked pipeline will be resumed at table 55.
     -> Sets the packet to an untracked state, and clears all the conntrack fields.

Final flow: icmp,reg0=0x64,reg1=0x64,reg2=0x4,in_port=3,vlan_tci=0x0000
Megaflow: recirc_id=0,eth,icmp,in_port=3,dl_src=0a:58:ac:0b:00:02,nw_src=172.11.0.2,nw_dst=172.11.0.3,nw_frag=no
Datapath actions: ct(zone=64000),recirc(0x1)

===============================================================================
recirc(0x1) - resume conntrack with default ct_state=trk|new (use --ct-next to customize)
===============================================================================

Flow: recirc_id=0x1,ct_state=new|trk,ct_zone=64000,eth,icmp,reg0=0x64,reg1=0x64,reg2=0x4,in_port=3

bridge(\"br0\")
-------------
    thaw
        Resuming from table 55
55. priority 0, cookie 0x1014b00000000
    goto_table:60
60. reg0=0x64,reg1=0x64, priority 200, cookie 0x1044b00000064
    output:NXM_NX_REG2[]
     -> output port is 4

Final flow: unchanged
Megaflow: recirc_id=0x1,ct_state=-rpl+trk,eth,ip,reg0=0x64,reg1=0x64,in_port=3,nw_frag=no
Datapath actions: 4
";

    #[test]
    fn a_trace_goes_on_after_a_conntrack_recirculation() {
        let t = parse(RECIRCULATED);
        assert_eq!(t.outcome, Outcome::Output { port: 4 });
        let tables: Vec<u8> = t.steps.iter().map(|s| s.table).collect();
        assert_eq!(tables, vec![0, 20, 30, 40, 50, 55, 55, 60]);
        assert!(t.steps.iter().all(|s| s.actions.iter().all(|a| a != "thaw")));
        // Cut before the resumed section, the same trace ends in the lookup.
        let first_pass = RECIRCULATED.split("=====").next().unwrap_or_default();
        assert_eq!(parse(first_pass).outcome, Outcome::Dropped { table: 55 });
    }

    #[test]
    fn a_tunnelled_packet_carries_the_senders_vni_to_the_node() {
        let t = parse(TO_TUNNEL);
        assert_eq!(t.steps.iter().map(|s| s.table).collect::<Vec<_>>(), [0, 20, 30, 40, 70]);
        assert_eq!(t.outcome, Outcome::Tunnel { vni: 13, remote: Ipv4Addr::new(172, 30, 0, 12) });
        let s20 = &t.steps[1];
        assert_eq!(s20.matched, "ip,in_port=3,dl_src=0a:58:ac:0b:00:02,nw_src=172.11.0.2");
        assert_eq!((s20.priority, s20.cookie), (Some(100), Some(0x1024b00000003)));
        assert_eq!(s20.actions, ["set_field:0xd->reg0", "goto_table:30"]);
        assert_eq!(t.steps[0].matched, "");
    }

    #[test]
    fn output_to_reg2_is_delivery_to_that_port() {
        let t = parse(TO_PORT);
        assert_eq!(t.outcome, Outcome::Output { port: 3 });
        assert_eq!(t.steps.last().map(|s| s.table), Some(60));
    }

    #[test]
    fn a_default_flow_drop_names_its_table() {
        assert_eq!(parse(DROPPED).outcome, Outcome::Dropped { table: 60 });
        let no_match = "50. No match.\n    drop\n";
        assert_eq!(parse(no_match).outcome, Outcome::Dropped { table: 50 });
        assert!(drop_meaning(60).contains("isolation"));
    }

    #[test]
    fn output_to_the_gateway_and_garbage() {
        let t = parse("40. ip,nw_dst=172.11.0.1, priority 300, cookie 0x1\n    output:2\n");
        assert_eq!(t.outcome, Outcome::Output { port: 2 });
        assert!(is_gateway(2));
        assert_eq!(parse("ovs-vswitchd: no bridge named br9").outcome, Outcome::Unknown);
        // Into the tunnel without the fields is not a readable answer.
        assert_eq!(parse("70. priority 100, cookie 0x1\n    output:1\n").outcome, Outcome::Unknown);
    }

    #[test]
    fn probes_address_the_destination_pod_directly() {
        let (a, b) = (pod("red", "a", [10, 1, 0, 2], 3), pod("red", "b", [10, 1, 4, 2], 5));
        assert_eq!(
            pod_probe(&a, &b),
            "in_port=3,icmp,dl_src=0a:58:0a:01:00:02,dl_dst=0a:58:0a:01:04:02,nw_src=10.1.0.2,nw_dst=10.1.4.2,nw_ttl=64,icmp_type=8"
        );
        let t = tunnel_probe(13, Ipv4Addr::new(172, 30, 0, 11), Ipv4Addr::new(172, 30, 0, 12), &a, &b);
        assert!(t.starts_with("in_port=1,tun_id=0xd,tun_src=172.30.0.11,tun_dst=172.30.0.12,icmp,"), "{t}");
        assert!(is_probe_text(&t) && is_probe_text(&pod_probe(&a, &b)));
        assert!(
            !is_probe_text("in_port=3 ip")
                && !is_probe_text("a;b")
                && !is_probe_text("")
                && !is_probe_text("x&y")
        );
        let svc = service_probe(&a, Ipv4Addr::new(10, 96, 5, 5), "tcp", 80);
        assert_eq!(
            svc,
            "in_port=3,tcp,dl_src=0a:58:0a:01:00:02,nw_src=10.1.0.2,nw_dst=10.96.5.5,nw_ttl=64,tcp_dst=80"
        );
        assert!(is_probe_text(&svc));
        assert!(service_probe(&a, Ipv4Addr::new(10, 96, 0, 10), "udp", 53).ends_with(",udp_dst=53"));
    }

    #[test]
    fn policy_facts_name_each_conjunction_and_isolated_pod_and_old_agents_parse() {
        use crate::policy::RuleRef;
        let ip = Ipv4Addr::new(172, 11, 0, 2);
        let rule = |name: &str, direction, rule| RuleRef {
            namespace: "red".into(),
            name: name.into(),
            direction,
            rule,
        };
        let compiled = Compiled {
            flows: vec![],
            rules: [(4097, rule("web", Direction::Ingress, 0)), (8194, rule("dns", Direction::Egress, 1))]
                .into(),
            isolated_by: [(
                (ip, Direction::Ingress),
                vec![("red".into(), "web".into()), ("red".into(), "deny".into())],
            )]
            .into(),
        };
        let (rules, isolated) = policy_facts(&compiled);
        let node = NodePods {
            node_ip: Ipv4Addr::new(172, 30, 0, 11),
            bridge: "br0".into(),
            pods: vec![],
            services: vec![],
            rules,
            isolated,
        };
        let json = serde_json::to_value(&node).expect("serialize");
        assert_eq!(
            json["rules"],
            serde_json::json!([
                {"id": 4097, "namespace": "red", "name": "web", "direction": "ingress", "rule": 0},
                {"id": 8194, "namespace": "red", "name": "dns", "direction": "egress", "rule": 1}
            ])
        );
        assert_eq!(
            json["isolated"],
            serde_json::json!([{"ip": "172.11.0.2", "direction": "ingress", "policies": [
                {"namespace": "red", "name": "web"}, {"namespace": "red", "name": "deny"}]}])
        );
        assert_eq!(serde_json::from_value::<NodePods>(json).expect("round trip"), node);
        // An agent from before NetworkPolicy (and before services).
        let old: NodePods =
            serde_json::from_str(r#"{"node_ip":"172.30.0.11","bridge":"br0","pods":[]}"#).expect("old agent");
        assert!(old.rules.is_empty() && old.isolated.is_empty() && old.services.is_empty());
        assert_eq!(PolicyName { namespace: "red".into(), name: "web".into() }.to_string(), "red/web");
    }

    #[test]
    fn l4_probes_open_the_port_on_the_destination_pod() {
        let (a, b) = (pod("red", "a", [10, 1, 0, 2], 3), pod("red", "b", [10, 1, 4, 2], 5));
        let tcp = pod_l4_probe(&a, &b, ("tcp", 8080));
        assert_eq!(
            tcp,
            "in_port=3,tcp,dl_src=0a:58:0a:01:00:02,dl_dst=0a:58:0a:01:04:02,nw_src=10.1.0.2,nw_dst=10.1.4.2,nw_ttl=64,tcp_dst=8080"
        );
        // UDP names its own port field (ofproto/trace refuses tp_dst on UDP).
        assert_eq!(
            pod_l4_probe(&a, &b, ("udp", 53)),
            "in_port=3,udp,dl_src=0a:58:0a:01:00:02,dl_dst=0a:58:0a:01:04:02,nw_src=10.1.0.2,nw_dst=10.1.4.2,nw_ttl=64,udp_dst=53"
        );
        let nodes = (Ipv4Addr::new(172, 30, 0, 11), Ipv4Addr::new(172, 30, 0, 12));
        let t = tunnel_l4_probe(13, nodes, &a, &b, ("udp", 53));
        assert_eq!(
            t,
            "in_port=1,tun_id=0xd,tun_src=172.30.0.11,tun_dst=172.30.0.12,udp,dl_src=0a:58:0a:01:00:02,dl_dst=0a:58:0a:01:04:02,nw_src=10.1.0.2,nw_dst=10.1.4.2,nw_ttl=64,udp_dst=53"
        );
        assert!(is_probe_text(&tcp) && is_probe_text(&t));
    }
}
