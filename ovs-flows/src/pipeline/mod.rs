//! The k8s-ovs OpenFlow pipeline: a pure function from a node's state to the
//! flows its bridge must hold. `docs/pipeline.md` documents every table with
//! an example flow; keep the two in step.
//!
//! Packet walk (multi-tenant; `docs/pipeline.md` has it table by table):
//! ```text
//! CLASSIFIER ─ vxlan0 ─> TUNNEL_IN (known node? tun_id -> REG_SRC_VNI) ──────> LOCAL_POD
//!            ─ tun0 ───> GATEWAY_IN (a local pod's DNATed traffic: its namespace id and
//!                                    FLAG_FROM_GATEWAY -> SOURCE_VNI; else REG_SRC_VNI = 0 -> ROUTING)
//!            ─ pod ────> SPOOF_GUARD (port+MAC+IP; the pod's namespace id -> REG_SRC_NS)
//!   SOURCE_VNI: REG_SRC_NS -> REG_SRC_VNI; from tun0 -> ct -> EGRESS_POLICY, ip -> SERVICE, arp -> ROUTING
//!   SERVICE: a service port -> REG_DST_NS = the service's namespace id -> SERVICE_VNI;
//!            other ip -> ct -> EGRESS_POLICY
//!   SERVICE_VNI: the client's VNI is the service's (or either is global) -> tun0
//!   EGRESS_POLICY: replies, related packets from their peer (RELATED_PEER), the sender's
//!                  egress rules -> EGRESS_COMMIT (new: ct commit) -> ROUTING; else drop
//!   ROUTING: gateway -> tun0 | local subnet -> LOCAL_POD | cluster -> REMOTE_NODE | else tun0
//!   LOCAL_POD: the pod's namespace id -> REG_DST_NS, its port -> REG_DST_PORT -> DEST_VNI
//!   DEST_VNI: REG_DST_NS -> REG_DST_VNI; ip -> GATEWAY_REPLY, arp -> ISOLATION
//!   GATEWAY_REPLY: reply of a DNATed connection, or an ICMP error about it from its peer,
//!                  from the client's own VNI -> tun0; else ISOLATION
//!   ISOLATION: src VNI = dst VNI, or either is 0 -> INGRESS_POLICY; else REFUSED (counted, drop)
//!   INGRESS_POLICY: ARP, replies, related packets from their peer, the receiver's ingress
//!                   rules -> INGRESS_COMMIT (new: ct commit) -> output:REG_DST_PORT; else drop
//!   REMOTE_NODE: tun_id = REG_SRC_VNI, tun_dst = node IP -> vxlan0
//! ```
//!
//! Pod and service flows carry a namespace id of this node
//! ([`NodeState::assign_namespace_ids`]), never a VNI: the VNI of a
//! namespace is in its few SOURCE_VNI, DEST_VNI and SERVICE_VNI flows, so a
//! join, isolate or global changes the same handful of flows per node
//! whatever the namespace's size.

mod counted;
mod ids;
mod incremental;
mod node;
mod state;

pub use counted::{counted, Counted, COUNTING_TABLES};
pub use incremental::{owner_flows, touched, Incremental, Owner};
pub use node::NodePipeline;
pub use state::{LocalPod, Mode, NodeState, Protocol, RemoteNode, Service, ServicePort, GLOBAL_VNI};

/// The conntrack zone of the connections the node's kernel sends into the
/// bridge (GATEWAY_IN commits them, GATEWAY_REPLY looks their replies up).
pub const CT_ZONE: u16 = 64000;
/// The `ct_mark` bit of a connection that entered the bridge from tun0.
pub const CT_MARK_FROM_GATEWAY: u32 = 0x1;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::cookie::{Category, Cookie};
use crate::flow::{ct_state, Action, Field, FieldRange, Flow, FlowSet, Ipv4Prefix, Match, Reg};

/// The fixed OpenFlow port of the VXLAN port (`vxlan0`).
pub const VXLAN_OFPORT: u32 = 1;
/// The fixed OpenFlow port of the node gateway (`tun0`, internal port).
pub const GATEWAY_OFPORT: u32 = 2;
/// The first ofport a pod can get (the agent requests ports from here on).
pub const FIRST_POD_OFPORT: u32 = 3;
/// The UDP port of the VXLAN underlay (`vxlan0`'s `dst_port`).
pub const VXLAN_UDP_PORT: u16 = 4789;

value_enum! {
/// The tables, declared once, in packet order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table: u8 {
    /// Dispatch by in_port: tunnel, gateway or pod.
    Classifier = 0,
    /// Tunnel traffic: accepted only from known nodes; VNI from tun_id.
    TunnelIn = 10,
    /// Traffic from the node (tun0): a local pod's service traffic after
    /// kube-proxy's DNAT keeps the pod's VNI and is committed to conntrack.
    GatewayIn = 15,
    /// Pod anti-spoofing (port + MAC + IP, ARP sender); the pod's namespace id.
    SpoofGuard = 20,
    /// The sender's namespace id -> its VNI.
    SourceVni = 25,
    /// ClusterIP traffic: a service port -> the service's namespace id.
    Service = 30,
    /// A service is reached only from its own VNI or by a global pod.
    ServiceVni = 35,
    /// NetworkPolicy egress of the sending local pod (conntrack looked up).
    EgressPolicy = 36,
    /// Whether a related packet's sender is the peer of the connection it
    /// belongs to (resubmitted to from both policy tables).
    RelatedPeer = 37,
    /// Commits an admitted connection that leaves this node.
    EgressCommit = 38,
    /// L3 dispatch: gateway, local subnet, other nodes, outside.
    Routing = 40,
    /// Destination is a local pod (or the gateway): its namespace id and port.
    LocalPod = 50,
    /// The destination's namespace id -> its VNI.
    DestVni = 52,
    /// Replies of connections committed in GATEWAY_IN go back to the node
    /// kernel, which undoes kube-proxy's DNAT.
    GatewayReply = 55,
    /// The isolation point: source VNI vs destination VNI.
    Isolation = 60,
    /// What ISOLATION refused, counted by the sender's VNI, and dropped.
    Refused = 61,
    /// NetworkPolicy ingress of the local destination pod.
    IngressPolicy = 62,
    /// Commits an admitted connection to a local pod and delivers it.
    IngressCommit = 64,
    /// Destination is another node's subnet: into the tunnel.
    RemoteNode = 70,
}
}

impl Table {
    pub fn id(self) -> u8 {
        self as u8
    }

    pub fn name(self) -> &'static str {
        match self {
            Table::Classifier => "CLASSIFIER",
            Table::TunnelIn => "TUNNEL_IN",
            Table::GatewayIn => "GATEWAY_IN",
            Table::SpoofGuard => "SPOOF_GUARD",
            Table::SourceVni => "SOURCE_VNI",
            Table::Service => "SERVICE",
            Table::ServiceVni => "SERVICE_VNI",
            Table::EgressPolicy => "EGRESS_POLICY",
            Table::RelatedPeer => "RELATED_PEER",
            Table::EgressCommit => "EGRESS_COMMIT",
            Table::Routing => "ROUTING",
            Table::LocalPod => "LOCAL_POD",
            Table::DestVni => "DEST_VNI",
            Table::GatewayReply => "GATEWAY_REPLY",
            Table::Isolation => "ISOLATION",
            Table::Refused => "REFUSED",
            Table::IngressPolicy => "INGRESS_POLICY",
            Table::IngressCommit => "INGRESS_COMMIT",
            Table::RemoteNode => "REMOTE_NODE",
        }
    }

    pub fn from_id(id: u8) -> Option<Table> {
        Table::from_repr(id)
    }
}

/// Source VNI of the packet (pod's, tunnel's tun_id, or 0 from the gateway).
pub const REG_SRC_VNI: Reg = Reg::R0;
/// VNI of the destination (a local pod; 0 for the gateway).
pub const REG_DST_VNI: Reg = Reg::R1;
/// OpenFlow port of the destination, output by ISOLATION.
pub const REG_DST_PORT: Reg = Reg::R2;
/// The sender's namespace id (a local pod's), mapped to its VNI by SOURCE_VNI.
pub const REG_SRC_NS: Reg = Reg::R3;
/// The destination's namespace id (a local pod's, or a service's), mapped
/// by DEST_VNI (or checked by SERVICE_VNI).
pub const REG_DST_NS: Reg = Reg::R4;
/// Flags of the packet's walk: [`FLAG_FROM_GATEWAY`], [`FLAG_STEER`].
pub const REG_FLAGS: Reg = Reg::R5;
/// In [`REG_FLAGS`]: a local pod's service traffic after kube-proxy's DNAT
/// (GATEWAY_IN); its connection is committed with [`CT_MARK_FROM_GATEWAY`].
pub const FLAG_FROM_GATEWAY: u32 = 0x1;
/// In [`REG_FLAGS`], set in GATEWAY_REPLY: the packet belongs back in the
/// kernel if its sender may reach the client (the per-namespace steer
/// flows decide): the reply of a connection committed with
/// [`CT_MARK_FROM_GATEWAY`], or an ICMP error about one from its peer.
pub const FLAG_STEER: u32 = 0x2;
/// RELATED_PEER's operands: a related packet's sender (`nw_src`) and the
/// peer of the connection it belongs to (`ct_nw_dst` of a reply, `ct_nw_src`
/// otherwise). [`REG_SENDER`] is 0 until a policy table has a related packet
/// checked (no packet's source is 0.0.0.0; a peer read as 0 would only fail
/// the check, never loop it); after the check it holds [`FROM_PEER`] if the
/// two were equal.
pub const REG_SENDER: Reg = Reg::R6;
pub const REG_PEER: Reg = Reg::R7;
/// In [`REG_SENDER`] after RELATED_PEER: the related packet's sender is its
/// connection's peer (no packet's source is 255.255.255.255).
pub const FROM_PEER: u32 = u32::MAX;

fn reg(r: Reg) -> FieldRange {
    Field::Reg(r).all()
}

fn tun_id_low32() -> FieldRange {
    // A VNI is 24 bits; moving 32 keeps the register's high byte zero.
    Field::TunId.bits(0, 31).expect("bits 0..31 of a 64-bit field")
}

fn goto(t: Table) -> Action {
    Action::GotoTable(t.id())
}

/// Builds the flows, each owned by the cookie of its object in one round.
struct Builder {
    round: u16,
    flows: Built,
}

/// Where a [`Builder`] puts its flows: the node's whole set, or the few
/// flows of one owner (an event's work) in a vector, sorted once at the
/// end. A set would allocate a 5.8 KB B-tree node for two to eleven flows,
/// and the event would build one more from the owner's old flows to diff
/// them; sorted vectors diff in one walk, with one allocation of the flows'
/// own size.
enum Built {
    Set(FlowSet),
    Group(Vec<Flow>),
}

impl Builder {
    /// For the node's whole flow set.
    fn set(round: u16) -> Builder {
        Builder { round, flows: Built::Set(FlowSet::new()) }
    }

    /// For one owner's flows.
    fn group(round: u16) -> Builder {
        Builder { round, flows: Built::Group(Vec::new()) }
    }

    fn add(&mut self, table: Table, priority: u16, owner: (Category, u32), m: Match, actions: Vec<Action>) {
        let cookie = Cookie::new(self.round, owner.0, owner.1);
        let flow = Flow::new(table.id(), priority, cookie, m, actions);
        match &mut self.flows {
            Built::Set(set) => {
                set.insert(flow);
            }
            Built::Group(group) => group.push(flow),
        }
    }

    fn into_set(self) -> FlowSet {
        match self.flows {
            Built::Set(set) => set,
            Built::Group(group) => group.into_iter().collect(),
        }
    }

    /// The flows as an owner's group ([`incremental::group`]).
    fn into_group(self) -> Vec<Flow> {
        match self.flows {
            Built::Set(set) => set.into_iter().collect(),
            Built::Group(flows) => incremental::group(flows),
        }
    }
}

const PIPELINE: (Category, u32) = (Category::Pipeline, 0);
const NODE: (Category, u32) = (Category::Node, 0);
const POLICY: (Category, u32) = (Category::Policy, 0);

/// The complete desired flow set of a node, every cookie in `round`.
pub fn pipeline(state: &NodeState, round: u16) -> FlowSet {
    let mut b = Builder::set(round);
    static_flows(&mut b);
    node_flows(&mut b, state);
    // The state's ids (the agent keeps them sticky), and for a namespace in
    // use that has none the one it would get: a caller that never assigns
    // still gets a complete pipeline.
    let ids = state.assigned_namespace_ids();
    let to_kernel = to_gateway(state);
    let with_pods: BTreeSet<&str> = state.pods.values().map(|p| p.namespace.as_str()).collect();
    let with_services: BTreeSet<&str> = state.services.values().map(|s| s.namespace.as_str()).collect();
    for (namespace, id) in &ids {
        if let Some(vni) = state.vni_of(namespace) {
            let uses = NamespaceUse {
                pods: with_pods.contains(namespace.as_str()),
                services: with_services.contains(namespace.as_str()),
            };
            namespace_flows(&mut b, *id, vni, uses, &to_kernel);
        }
    }
    for pod in state.pods.values() {
        if let Some(id) = ids.get(&pod.namespace) {
            pod_flows(&mut b, pod, *id);
        }
    }
    for node in state.remote_nodes.values() {
        if node.ip != state.node_ip {
            remote_node_flows(&mut b, node);
        }
    }
    for svc in state.services.values() {
        if let Some(id) = ids.get(&svc.namespace) {
            service_flows(&mut b, svc, *id);
        }
    }
    for vni in refusing_vnis(state) {
        refused_flows(&mut b, vni);
    }
    policy_flows(&mut b, state);
    b.into_set()
}

/// The node's NetworkPolicy flows (one owner: a flow there may carry the
/// conjunction clauses of several policies).
fn policy_flows(b: &mut Builder, state: &NodeState) {
    if state.policies.policies.is_empty() {
        return;
    }
    let local: Vec<&LocalPod> = state.pods.values().collect();
    for f in crate::policy::compile(&local, &state.policies).flows {
        b.add(f.table, f.priority, POLICY, f.m, f.actions);
    }
}

/// The namespace ids a switch's flows use, read back after a restart so the
/// new agent keeps them (a changed id would leave the service flows it keeps
/// from before its first Service list pointing at another namespace).
/// `pod_namespaces`: each adopted pod's namespace by ofport. Returns the ids
/// of the namespaces with pods (from their SPOOF_GUARD flows), and the ids
/// service flows name that no pod's namespace has: those stay reserved, with
/// their SERVICE_VNI flows, until the services are known.
pub fn recovered_namespace_ids(
    installed: &[Flow],
    pod_namespaces: &BTreeMap<u32, String>,
) -> (BTreeMap<String, u32>, BTreeSet<u32>) {
    let loaded = |f: &Flow, r: Reg| {
        f.actions.iter().find_map(|a| match a {
            Action::SetField { dst, value } if *dst == reg(r) => u32::try_from(*value).ok(),
            _ => None,
        })
    };
    let mut ids = BTreeMap::new();
    for f in installed.iter().filter(|f| f.table == Table::SpoofGuard.id()) {
        if f.cookie.category() != Some(Category::Pod) {
            continue;
        }
        if let (Some(ns), Some(id)) = (pod_namespaces.get(&f.cookie.object()), loaded(f, REG_SRC_NS)) {
            ids.entry(ns.clone()).or_insert(id);
        }
    }
    // Two namespaces claiming one id (flows edited by hand): neither keeps it.
    let mut owners: BTreeMap<u32, usize> = BTreeMap::new();
    for id in ids.values() {
        *owners.entry(*id).or_default() += 1;
    }
    ids.retain(|_, id| owners.get(id) == Some(&1));
    let claimed: BTreeSet<u32> = ids.values().copied().collect();
    let reserved = installed
        .iter()
        .filter(|f| f.table == Table::Service.id() && f.cookie.category() == Some(Category::Service))
        .filter_map(|f| loaded(f, REG_DST_NS))
        .filter(|id| !claimed.contains(id))
        .collect();
    (ids, reserved)
}

/// What a namespace has on this node, so it gets only the flows it needs
/// (most namespaces of a large cluster have services here and no pods).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct NamespaceUse {
    pods: bool,
    services: bool,
}

/// The flows of one namespace on this node: where its id becomes its VNI.
/// A join, isolate or global changes these (and ISOLATION's per-VNI flow),
/// nothing else.
fn namespace_flows(b: &mut Builder, id: u32, vni: u32, uses: NamespaceUse, to_kernel: &[Action]) {
    use Table::*;
    let owner = (Category::NamespaceId, id);
    if uses.services {
        // SERVICE_VNI: the namespace's services take its own VNI; a global
        // namespace's take every VNI. (Global clients are let through in
        // SERVICE already.)
        let clients = match vni {
            GLOBAL_VNI => Match::new().reg(REG_DST_NS, id),
            _ => Match::new().reg(REG_DST_NS, id).reg(REG_SRC_VNI, vni),
        };
        b.add(ServiceVni, 100, owner, clients, to_kernel.to_vec());
    }
    if !uses.pods {
        return;
    }
    let src = |next: Table| vec![Action::load_reg(REG_SRC_VNI, vni), goto(next)];
    // SOURCE_VNI: a local pod's DNATed traffic back from the kernel goes on
    // to ROUTING (it went through SERVICE on its way out), the pod's own IP
    // to SERVICE, its ARP to ROUTING.
    // DNATed traffic is checked against the pod's egress policy there, with
    // the endpoint's address.
    b.add(
        SourceVni,
        200,
        owner,
        Match::new().ip().in_port(GATEWAY_OFPORT).reg(REG_SRC_NS, id),
        vec![Action::load_reg(REG_SRC_VNI, vni), Action::ct_lookup(CT_ZONE, EgressPolicy.id())],
    );
    b.add(SourceVni, 100, owner, Match::new().ip().reg(REG_SRC_NS, id), src(Service));
    b.add(SourceVni, 100, owner, Match::new().arp().reg(REG_SRC_NS, id), src(Routing));
    // DEST_VNI: IP passes GATEWAY_REPLY (it may be a reply to steer back to
    // the kernel); ARP goes straight to ISOLATION.
    let dst = |next: Table| vec![Action::load_reg(REG_DST_VNI, vni), goto(next)];
    b.add(DestVni, 100, owner, Match::new().ip().reg(REG_DST_NS, id), dst(GatewayReply));
    b.add(DestVni, 100, owner, Match::new().arp().reg(REG_DST_NS, id), dst(Isolation));
    // GATEWAY_REPLY: replies of the namespace's DNATed connections go back
    // to the kernel when ISOLATION would pass them: from its own VNI (a
    // global namespace: from any). A connection to another tenant's endpoint
    // on another node is committed here before that node refuses it: the
    // endpoint's "reply" must not ride it past the wall, and goes on to
    // ISOLATION's drop instead.
    let steer = match vni {
        GLOBAL_VNI => steered().reg(REG_DST_NS, id),
        _ => steered().reg(REG_SRC_VNI, vni).reg(REG_DST_NS, id),
    };
    b.add(GatewayReply, 200, owner, steer, to_kernel.to_vec());
    // ISOLATION: the namespace's own verdicts, so the switch counts what it
    // receives and refuses per namespace (`docs/operations.md`, "Tenant
    // traffic"); the same decisions as one flow per VNI would make. Only the
    // first depends on the VNI: a tenant action changes one ISOLATION flow
    // of the namespace, whatever its size.
    // What ISOLATION admits goes on to the destination's ingress policy.
    use counted::prio;
    let out = vec![goto(IngressPolicy)];
    match vni {
        // A global namespace's pods take every VNI's packets (the next flow
        // takes those of global senders: its own VNI).
        GLOBAL_VNI => {
            b.add(Isolation, prio::FROM_OTHER_VNI, owner, Match::new().reg(REG_DST_NS, id), out.clone());
        }
        _ => {
            let own = Match::new().reg(REG_SRC_VNI, vni).reg(REG_DST_NS, id);
            b.add(Isolation, prio::FROM_OWN_VNI, owner, own, out.clone());
        }
    }
    // From a global sender (a global namespace's pods, the node, outside).
    let from_global = Match::new().reg(REG_SRC_VNI, GLOBAL_VNI).reg(REG_DST_NS, id);
    b.add(Isolation, prio::FROM_GLOBAL, owner, from_global, out);
    // From another tenant: refused, and counted by its sender's VNI in
    // REFUSED, which drops it (below it, the table's default drop catches
    // nothing but what no namespace owns).
    b.add(Isolation, prio::REFUSED, owner, Match::new().reg(REG_DST_NS, id), vec![goto(Refused)]);
    // ROUTING: what its pods send out of the cluster, counted per namespace
    // (the same action as the node's priority-50 flow below it).
    b.add(Routing, prio::LEAVING, owner, Match::new().ip().reg(REG_SRC_NS, id), to_kernel.to_vec());
}

/// The VNIs that own a REFUSED flow: every tenant VNI of the cluster (a
/// refused packet may come from any of them, from this node or over the
/// tunnel, where the VNI is all that is known of its sender). None in
/// single-tenant mode, where nothing is refused.
pub(super) fn refusing_vnis(state: &NodeState) -> BTreeSet<u32> {
    refusing_vnis_of_each(state).collect()
}

/// The tenant VNI of each namespace (repeated for namespaces joined).
pub(super) fn refusing_vnis_of_each(state: &NodeState) -> impl Iterator<Item = u32> + '_ {
    state.vnis.values().copied().filter(move |v| refuses_from(state.mode, *v))
}

/// Whether `vni` has a REFUSED flow when some namespace has it: a tenant
/// VNI in multi-tenant mode (a global sender is never refused).
pub(super) fn refuses_from(mode: Mode, vni: u32) -> bool {
    mode == Mode::MultiTenant && vni != GLOBAL_VNI
}

/// REFUSED's flow of one tenant VNI: what ISOLATION refused from its pods,
/// counted (`docs/operations.md`, "Tenant traffic") and dropped. A VNI's
/// flow comes with its first namespace and goes with its last: a tenant
/// action adds or removes at most one.
fn refused_flows(b: &mut Builder, vni: u32) {
    let m = Match::new().reg(REG_SRC_VNI, vni);
    b.add(Table::Refused, counted::prio::REFUSED_FROM, (Category::Namespace, vni), m, vec![Action::Drop]);
}

/// Flows that are the same on every node: table defaults and fixed ports.
fn static_flows(b: &mut Builder) {
    use Table::*;
    // CLASSIFIER
    b.add(Classifier, 200, PIPELINE, Match::new().in_port(VXLAN_OFPORT), vec![goto(TunnelIn)]);
    b.add(Classifier, 200, PIPELINE, Match::new().in_port(GATEWAY_OFPORT), vec![goto(GatewayIn)]);
    b.add(Classifier, 0, PIPELINE, Match::new(), vec![goto(SpoofGuard)]);
    // GATEWAY_IN: whatever no local pod's flow claims is the node itself (its
    // own connections, masqueraded traffic, un-DNATed replies): global.
    b.add(
        GatewayIn,
        0,
        PIPELINE,
        Match::new(),
        vec![Action::load_reg(REG_SRC_VNI, GLOBAL_VNI), goto(Routing)],
    );
    // GATEWAY_REPLY: traffic from the gateway needs no steering; other IP
    // to a local pod is looked up in the zone GATEWAY_IN commits to.
    b.add(GatewayReply, 300, PIPELINE, Match::new().in_port(GATEWAY_OFPORT), vec![goto(Isolation)]);
    steer_candidates(b);
    b.add(
        GatewayReply,
        100,
        PIPELINE,
        Match::new().ip().ct_state(0, ct_state::TRK),
        vec![Action::ct_lookup(CT_ZONE, GatewayReply.id())],
    );
    b.add(GatewayReply, 0, PIPELINE, Match::new(), vec![goto(Isolation)]);
    // Defaults: whatever no flow claims is dropped (in SOURCE_VNI, DEST_VNI
    // and SERVICE_VNI: a namespace without a VNI yet).
    for t in [TunnelIn, SpoofGuard, SourceVni, ServiceVni, LocalPod, DestVni, Isolation, Refused, RemoteNode]
    {
        b.add(t, 0, PIPELINE, Match::new(), vec![Action::Drop]);
    }
    // SERVICE: a local pod's IP that is no service goes through its egress
    // policy, with its connection's state.
    // (Only IP comes here, and conntrack takes only IP.)
    b.add(Service, 0, PIPELINE, Match::new().ip(), vec![Action::ct_lookup(CT_ZONE, EgressPolicy.id())]);
    b.add(Routing, 0, PIPELINE, Match::new(), vec![Action::Drop]);
    // ISOLATION: either end global; on to the destination's ingress policy.
    let on = vec![goto(IngressPolicy)];
    b.add(Isolation, 300, PIPELINE, Match::new().reg(REG_SRC_VNI, GLOBAL_VNI), on.clone());
    b.add(Isolation, 300, PIPELINE, Match::new().reg(REG_DST_VNI, GLOBAL_VNI), on);
    policy_static_flows(b);
}

/// The policy tables' fixed flows: replies and related packets of admitted
/// connections pass, admitted new connections are committed where this
/// node's last decision on them is taken (INGRESS_COMMIT for a local
/// destination, EGRESS_COMMIT otherwise), so conntrack holds only
/// connections both ends' policies admitted. Packets in a connection's
/// original direction meet the rules every time: a policy change applies to
/// established connections too.
///
/// A related packet passes only from the peer of the connection it belongs
/// to: conntrack relates an ICMP error to the connection it quotes whoever
/// sent it, and a pod can quote its neighbour's connections. Anyone else's
/// is judged by the rules like any other packet of its sender
/// ([`related_peer_flows`]).
fn policy_static_flows(b: &mut Builder) {
    use Table::*;
    let deliver = Action::OutputReg(reg(REG_DST_PORT));
    let tracked = |set: u32, clear: u32| Match::new().ip().ct_state(ct_state::TRK | set, clear);
    // A reply that is no related packet; a related packet from the peer.
    let reply = || tracked(ct_state::RPL, ct_state::REL);
    let related_from_peer = || tracked(ct_state::REL, 0).reg(REG_SENDER, FROM_PEER);
    // EGRESS_POLICY (entered through ct(table=36), so tracked).
    related_peer_check(b, EgressPolicy);
    b.add(EgressPolicy, 300, PIPELINE, reply(), vec![goto(Routing)]);
    b.add(EgressPolicy, 300, PIPELINE, related_from_peer(), vec![goto(Routing)]);
    b.add(EgressPolicy, 0, PIPELINE, Match::new(), vec![goto(EgressCommit)]);
    related_peer_flows(b);
    // EGRESS_COMMIT: a connection from the DNAT path carries the mark that
    // GATEWAY_REPLY steers its replies by.
    let new = || Match::new().ip().ct_state(ct_state::TRK | ct_state::NEW, 0);
    b.add(
        EgressCommit,
        100,
        PIPELINE,
        new().reg_masked(REG_FLAGS, FLAG_FROM_GATEWAY, FLAG_FROM_GATEWAY),
        vec![Action::ct_commit(CT_ZONE, CT_MARK_FROM_GATEWAY), goto(Routing)],
    );
    b.add(EgressCommit, 90, PIPELINE, new(), vec![Action::ct_commit_plain(CT_ZONE), goto(Routing)]);
    b.add(EgressCommit, 0, PIPELINE, Match::new(), vec![goto(Routing)]);
    // INGRESS_POLICY: ARP and the gateway as destination are not policed;
    // untracked IP (from the tunnel it was looked up in GATEWAY_REPLY, from a
    // local pod in SERVICE) is looked up here.
    b.add(IngressPolicy, 400, PIPELINE, Match::new().arp(), vec![deliver.clone()]);
    b.add(
        IngressPolicy,
        400,
        PIPELINE,
        Match::new().reg(REG_DST_PORT, GATEWAY_OFPORT),
        vec![deliver.clone()],
    );
    b.add(
        IngressPolicy,
        300,
        PIPELINE,
        Match::new().ip().ct_state(0, ct_state::TRK),
        vec![Action::ct_lookup(CT_ZONE, IngressPolicy.id())],
    );
    // ICMP errors the node kernel forwards (no local pod's DNATed traffic):
    // routers outside the cluster quote a pod's connections (path MTU,
    // unreachable, TTL), and no router is any connection's peer.
    b.add(
        IngressPolicy,
        330,
        PIPELINE,
        tracked(ct_state::REL, 0).in_port(GATEWAY_OFPORT).reg_masked(REG_FLAGS, 0, FLAG_FROM_GATEWAY),
        vec![deliver.clone()],
    );
    related_peer_check(b, IngressPolicy);
    b.add(IngressPolicy, 200, PIPELINE, reply(), vec![deliver.clone()]);
    b.add(IngressPolicy, 200, PIPELINE, related_from_peer(), vec![deliver.clone()]);
    b.add(IngressPolicy, 0, PIPELINE, Match::new(), vec![goto(IngressCommit)]);
    b.add(
        IngressCommit,
        100,
        PIPELINE,
        new().reg_masked(REG_FLAGS, FLAG_FROM_GATEWAY, FLAG_FROM_GATEWAY),
        vec![Action::ct_commit(CT_ZONE, CT_MARK_FROM_GATEWAY), deliver.clone()],
    );
    b.add(IngressCommit, 90, PIPELINE, new(), vec![Action::ct_commit_plain(CT_ZONE), deliver.clone()]);
    b.add(IngressCommit, 0, PIPELINE, Match::new(), vec![deliver]);
}

/// In a policy table: a related packet not checked yet (see [`REG_SENDER`])
/// gets its sender and its connection's peer into [`REG_SENDER`] /
/// [`REG_PEER`] (the peer of a reply is the connection's original
/// destination, else its original source), RELATED_PEER marks the sender
/// [`FROM_PEER`] if they are equal, and the table is looked up again: marked
/// it passes as a related packet, unmarked it meets the rules. The verdict
/// stays with the packet to its destination on this node.
fn related_peer_check(b: &mut Builder, table: Table) {
    for (rpl, peer) in [((ct_state::RPL, 0), Field::CtNwDst), ((0, ct_state::RPL), Field::CtNwSrc)] {
        let unchecked =
            Match::new().ip().ct_state(ct_state::TRK | ct_state::REL | rpl.0, rpl.1).reg(REG_SENDER, 0);
        b.add(table, 320, PIPELINE, unchecked, check_peer(peer, table));
    }
}

/// The actions of a peer check: the sender and `peer` (the field holding
/// the connection's peer) into [`REG_SENDER`] / [`REG_PEER`], RELATED_PEER,
/// then `table` looked up again with the verdict.
fn check_peer(peer: Field, table: Table) -> Vec<Action> {
    vec![
        Action::Move { src: Field::IpSrc.all(), dst: reg(REG_SENDER) },
        Action::Move { src: peer.all(), dst: reg(REG_PEER) },
        Action::Resubmit(Table::RelatedPeer.id()),
        Action::Resubmit(table.id()),
    ]
}

/// RELATED_PEER: [`REG_SENDER`] and [`REG_PEER`] differ in some bit (one
/// flow per bit and value: OpenFlow compares no two fields), which leaves
/// the sender as it is, or they are equal (the default), which marks it
/// [`FROM_PEER`].
fn related_peer_flows(b: &mut Builder) {
    for bit in 0..32 {
        let m = 1u32 << bit;
        for (sender, peer) in [(m, 0), (0, m)] {
            let differ = Match::new().reg_masked(REG_SENDER, sender, m).reg_masked(REG_PEER, peer, m);
            b.add(Table::RelatedPeer, 100, PIPELINE, differ, vec![Action::Drop]);
        }
    }
    b.add(Table::RelatedPeer, 0, PIPELINE, Match::new(), vec![Action::load_reg(REG_SENDER, FROM_PEER)]);
}

/// Flows that depend on this node's addresses.
fn node_flows(b: &mut Builder, s: &NodeState) {
    use Table::*;
    let gw = Ipv4Prefix::host(s.gateway_ip);
    let to_kernel = to_gateway(s);
    // SERVICE: a global pod reaches every service; other ClusterIP traffic
    // needs a per-service flow, else it is dropped.
    b.add(
        Service,
        300,
        NODE,
        Match::new().ip().reg(REG_SRC_VNI, GLOBAL_VNI).nw_dst(s.service_cidr),
        to_kernel.clone(),
    );
    b.add(Service, 100, NODE, Match::new().ip().nw_dst(s.service_cidr), vec![Action::Drop]);
    // ROUTING: a pod's datagram to a node's VXLAN port would be decapsulated
    // there with a VNI of the sender's choosing (this node's own address
    // here; the other nodes' in their REMOTE_NODE owner's flows).
    b.add(Routing, 400, NODE, vxlan_to(s.node_ip), vec![Action::Drop]);
    // No multicast or limited broadcast from pods into the node kernel (the
    // pipeline never floods, so nothing else would receive them).
    b.add(
        Routing,
        400,
        NODE,
        Match::new().ip().nw_dst(Ipv4Prefix::new(Ipv4Addr::new(224, 0, 0, 0), 4)),
        vec![Action::Drop],
    );
    b.add(Routing, 400, NODE, Match::new().ip().nw_dst(Ipv4Addr::BROADCAST), vec![Action::Drop]);
    b.add(Routing, 300, NODE, Match::new().ip().nw_dst(gw), to_kernel.clone());
    b.add(Routing, 300, NODE, Match::new().arp().arp_tpa(gw), vec![Action::Output(GATEWAY_OFPORT)]);
    b.add(Routing, 200, NODE, Match::new().ip().nw_dst(s.subnet), vec![goto(LocalPod)]);
    b.add(Routing, 200, NODE, Match::new().arp().arp_tpa(s.subnet), vec![goto(LocalPod)]);
    b.add(Routing, 100, NODE, Match::new().ip().nw_dst(s.cluster_cidr), vec![goto(RemoteNode)]);
    b.add(Routing, 100, NODE, Match::new().arp().arp_tpa(s.cluster_cidr), vec![goto(RemoteNode)]);
    // Anything else IP leaves the cluster through the gateway (masqueraded there).
    b.add(Routing, 50, NODE, Match::new().ip(), to_kernel.clone());
    // GATEWAY_REPLY: the reply of a connection that entered from tun0 (a
    // local pod's service connection after kube-proxy's DNAT) goes back to
    // the kernel, whose conntrack turns the endpoint's address back into the
    // ClusterIP; sent straight to the client it would be dropped there.
    // From a global sender here; from a tenant's pod, by the client
    // namespace's flow (`namespace_flows`).
    b.add(GatewayReply, 200, NODE, steered().reg(REG_SRC_VNI, GLOBAL_VNI), to_kernel);
    // LOCAL_POD: the gateway as a destination arriving over the tunnel
    // (another node's pods reaching this node's host).
    let to_gw = vec![
        Action::load_reg(REG_DST_VNI, GLOBAL_VNI),
        Action::load_reg(REG_DST_PORT, GATEWAY_OFPORT),
        goto(Isolation),
    ];
    b.add(LocalPod, 100, NODE, Match::new().ip().nw_dst(gw), to_gw.clone());
    b.add(LocalPod, 100, NODE, Match::new().arp().arp_tpa(gw), to_gw);
    // Traffic between a pod and its own node is always allowed (Kubernetes'
    // rule): to the gateway or the node's address (EGRESS_POLICY), and from
    // tun0 with the node's own source: the gateway and node addresses
    // (kubelet's probes, masqueraded traffic) and ClusterIPs (the kernel's
    // un-DNATed replies of service connections). Other sources from tun0
    // (replies from outside the cluster) meet the policy.
    for dst in [gw, Ipv4Prefix::host(s.node_ip)] {
        b.add(EgressPolicy, 400, NODE, Match::new().ip().nw_dst(dst), vec![goto(Routing)]);
    }
    let deliver = vec![Action::OutputReg(reg(REG_DST_PORT))];
    for src in [gw, Ipv4Prefix::host(s.node_ip), s.service_cidr] {
        b.add(
            IngressPolicy,
            390,
            NODE,
            Match::new().ip().in_port(GATEWAY_OFPORT).nw_src(src),
            deliver.clone(),
        );
    }
    // EGRESS_COMMIT: what stays on this node is committed at its ingress.
    b.add(EgressCommit, 200, NODE, Match::new().ip().nw_dst(s.subnet), vec![goto(Routing)]);
}

/// What GATEWAY_REPLY may hand back to the kernel ([`steer_candidates`]
/// marked it); the steer flows add who may send it.
fn steered() -> Match {
    Match::new().ip().reg(REG_FLAGS, FLAG_STEER)
}

/// GATEWAY_REPLY's candidates for the kernel, marked [`FLAG_STEER`] and
/// looked up again (the steer flows, one per client namespace, then
/// match the flag, whichever kind it was): in the direction of the reply
/// of a connection a local pod opened through a ClusterIP (committed with
/// [`CT_MARK_FROM_GATEWAY`]),
/// - a reply;
/// - an ICMP error from the connection's peer, the endpoint: port
///   unreachable for a UDP client of a ClusterIP with nothing listening
///   behind it, or a path MTU report. The kernel's conntrack translates
///   the error back as it does the reply (the ClusterIP as its source and
///   in the datagram it quotes), so the client's socket gets its "connection
///   refused" at once. Delivered straight, it quotes an address the client
///   never sent to, and the socket waits for its timeout. Over the tunnel
///   the error comes here unchecked (`REG_SENDER` 0) and goes through
///   RELATED_PEER first; from a local pod EGRESS_POLICY checked it. From
///   anyone else an error is not steered: any pod could quote its
///   neighbour's service connection and have the kernel hand it a
///   "connection refused" from the ClusterIP.
fn steer_candidates(b: &mut Builder) {
    use Table::GatewayReply;
    // `REG_FLAGS` holds no other flag here: FLAG_FROM_GATEWAY comes only
    // with what tun0 sent in, which the priority-300 flow sent on to
    // ISOLATION. So the flag is set as the whole register (a partial load
    // reads back from an OpenFlow 1.3 dump as `load:`, not `set_field:`).
    let unmarked = |state: u32| {
        Match::new()
            .ip()
            .ct_state(ct_state::TRK | ct_state::RPL | state, 0)
            .ct_mark(CT_MARK_FROM_GATEWAY, CT_MARK_FROM_GATEWAY)
            .reg(REG_FLAGS, 0)
    };
    let mark = || vec![Action::load_reg(REG_FLAGS, FLAG_STEER), Action::Resubmit(GatewayReply.id())];
    // A reply's peer is its connection's original destination.
    let unchecked = unmarked(ct_state::REL).reg(REG_SENDER, 0);
    b.add(GatewayReply, 250, PIPELINE, unchecked, check_peer(Field::CtNwDst, GatewayReply));
    b.add(GatewayReply, 220, PIPELINE, unmarked(ct_state::EST), mark());
    b.add(GatewayReply, 220, PIPELINE, unmarked(ct_state::REL).reg(REG_SENDER, FROM_PEER), mark());
}

/// Into the node kernel: addressed to tun0's MAC, whatever MAC the sender
/// used (a pod's neighbour cache may hold another one after an ICMP
/// redirect or an agent upgrade), so the kernel never discards it as
/// "not for this host".
fn to_gateway(s: &NodeState) -> Vec<Action> {
    vec![Action::set_eth_dst(s.gateway_mac), Action::Output(GATEWAY_OFPORT)]
}

fn pod_flows(b: &mut Builder, p: &LocalPod, ns_id: u32) {
    use Table::*;
    let owner = (Category::Pod, p.ofport);
    let ip = Ipv4Prefix::host(p.ip);
    // GATEWAY_IN: the pod's own address coming back from the node kernel is
    // its service traffic after kube-proxy's DNAT (kube-proxy masquerades
    // only hairpin and off-cluster sources). It keeps the pod's VNI, so the
    // endpoint's ISOLATION decides as for pod-to-pod traffic, and it is
    // flagged, so its connection is committed with the mark by which
    // GATEWAY_REPLY sends the endpoint's reply back to the kernel.
    b.add(
        GatewayIn,
        100,
        owner,
        Match::new().ip().nw_src(ip),
        vec![
            Action::load_reg(REG_SRC_NS, ns_id),
            Action::load_reg(REG_FLAGS, FLAG_FROM_GATEWAY),
            goto(SourceVni),
        ],
    );
    // SPOOF_GUARD: only the pod's own MAC and IP leave its port, untagged,
    // and its ARP must state them too; anything else from the port is
    // dropped (a VLAN-tagged frame would carry its payload past a switch
    // that trunks VLANs).
    // The egress meter comes first: what the pod sends is policed in the
    // switch, where the pod cannot reach it (a qdisc inside the pod's
    // namespace is the pod's to delete).
    let mut from_pod: Vec<Action> = p.egress_meter.map(Action::Meter).into_iter().collect();
    from_pod.extend([Action::load_reg(REG_SRC_NS, ns_id), goto(SourceVni)]);
    b.add(
        SpoofGuard,
        100,
        owner,
        Match::new().ip().in_port(p.ofport).untagged().dl_src(p.mac).nw_src(ip),
        from_pod.clone(),
    );
    b.add(
        SpoofGuard,
        100,
        owner,
        Match::new().arp().in_port(p.ofport).untagged().dl_src(p.mac).arp_spa(ip).arp_sha(p.mac),
        from_pod,
    );
    // Anything else from the port is dropped by the pod's own flow (not only
    // the table's default), so the switch counts each pod's forgeries.
    b.add(SpoofGuard, counted::prio::SPOOFED, owner, Match::new().in_port(p.ofport), vec![Action::Drop]);
    // LOCAL_POD: the pod's namespace id and port; DEST_VNI takes it on.
    let to_pod =
        vec![Action::load_reg(REG_DST_NS, ns_id), Action::load_reg(REG_DST_PORT, p.ofport), goto(DestVni)];
    b.add(LocalPod, 100, owner, Match::new().ip().nw_dst(ip), to_pod.clone());
    b.add(LocalPod, 100, owner, Match::new().arp().arp_tpa(ip), to_pod);
}

/// A pod's UDP to `node`'s VXLAN port.
fn vxlan_to(node: Ipv4Addr) -> Match {
    Match::new().udp().nw_dst(node).tp_dst(VXLAN_UDP_PORT)
}

fn remote_node_flows(b: &mut Builder, n: &RemoteNode) {
    use Table::*;
    let owner = (Category::RemoteNode, u32::from(n.ip));
    // TUNNEL_IN: tunnel traffic only from a node we know, and only what that
    // node may send: its pods and its gateway (its subnet), or the node
    // itself. A datagram forged into the underlay carries another source;
    // its VNI (tun_id) is never taken. Straight to LOCAL_POD: what arrives
    // by tunnel is never sent on again.
    let accept = vec![Action::move_field(tun_id_low32(), reg(REG_SRC_VNI)), goto(LocalPod)];
    b.add(TunnelIn, 100, owner, Match::new().ip().tun_src(n.ip).nw_src(n.subnet), accept.clone());
    b.add(TunnelIn, 100, owner, Match::new().ip().tun_src(n.ip).nw_src(n.ip), accept.clone());
    b.add(TunnelIn, 100, owner, Match::new().arp().tun_src(n.ip).arp_spa(n.subnet), accept);
    // ROUTING: no pod datagram to the node's VXLAN port.
    b.add(Routing, 400, owner, vxlan_to(n.ip), vec![Action::Drop]);
    // REMOTE_NODE: the node's subnet goes into the tunnel keyed by the source VNI.
    let out = vec![
        Action::move_field(reg(REG_SRC_VNI), tun_id_low32()),
        Action::set_tun_dst(n.ip),
        Action::Output(VXLAN_OFPORT),
    ];
    b.add(RemoteNode, 100, owner, Match::new().ip().nw_dst(n.subnet), out.clone());
    b.add(RemoteNode, 100, owner, Match::new().arp().arp_tpa(n.subnet), out);
}

fn service_flows(b: &mut Builder, s: &Service, ns_id: u32) {
    let owner = (Category::Service, u32::from(s.ip));
    // Which clients may reach it is the namespace's question (SERVICE_VNI):
    // these flows do not change when its VNI does.
    let check = vec![Action::load_reg(REG_DST_NS, ns_id), goto(Table::ServiceVni)];
    for port in &s.ports {
        let m = match port.protocol {
            Protocol::Tcp => Match::new().tcp(),
            Protocol::Udp => Match::new().udp(),
        };
        b.add(Table::Service, 200, owner, m.nw_dst(Ipv4Prefix::host(s.ip)).tp_dst(port.port), check.clone());
    }
    // Fragments carry no port for the switch (OVS's "normal" fragment
    // handling zeroes them, the first fragment's too): they pass for the
    // service's address and VNI alone. The node kernel reassembles the
    // datagram before kube-proxy's DNAT, which then sees the real port, so a
    // fragment of a port the service lacks goes nowhere; large UDP to a
    // ClusterIP (DNS with EDNS) works.
    b.add(Table::Service, 200, owner, Match::new().fragment().nw_dst(Ipv4Prefix::host(s.ip)), check);
}

/// The table a flow with this id belongs to, by name (for docs and traces).
pub fn table_name(id: u8) -> String {
    Table::from_id(id).map(|t| t.name().to_string()).unwrap_or_else(|| format!("table {id}"))
}

/// The gateway address of a node subnet (its first address).
pub fn gateway_of(subnet: Ipv4Prefix) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.addr()) + 1)
}
