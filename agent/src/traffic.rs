//! Per-tenant traffic from the switch's own counters: every period the
//! agent reads the counting flows of the pipeline (`ovs_flows::pipeline::
//! counted`: per namespace id in SOURCE_VNI, ROUTING and ISOLATION, per
//! tenant VNI in REFUSED, per pod in SPOOF_GUARD and in the policy tables'
//! isolation drops) with flow stats, names each flow's namespace or pod, and
//! adds what each flow counted since the last read to a running total per
//! label set, which `/metrics` exports (`metrics.rs`).
//!
//! The totals stay monotonic whatever the switch does to its flows: a flow
//! modified in place (a VNI change rewrites its actions) keeps counting and
//! adds its growth; a flow replaced (an ADD of the same identity, a
//! restarted ovs-vswitchd: its counters or its age went down) adds its whole
//! count; a flow deleted adds nothing more (what it counted after the last
//! read is lost: the counters' granularity is one period). Labels name
//! namespaces and VNIs, never pod pairs; only forgeries are per pod, and a
//! pod's series goes when the pod leaves the node.
//!
//! The read runs in a task of its own (`run`), off the agent loop: the loop
//! only answers "who is who" (`Owners`, a few maps) once per period.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ovs_flows::client::Client as FlowClient;
use ovs_flows::ofp::CountedFlow;
use ovs_flows::pipeline::{counted, Counted, COUNTING_TABLES};
use ovs_flows::{CookieFilter, FlowKey};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::metrics::Metrics;

/// Who the counting flows' owners are, as the agent knows them now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owners {
    /// Pod ofport -> (namespace, pod name).
    pub pods: BTreeMap<u32, (String, String)>,
    /// Namespace id on this node -> (namespace, its VNI if it has one).
    pub namespaces: BTreeMap<u32, (String, Option<u32>)>,
    /// Pod IPv4 (as u32) -> (namespace, its VNI if it has one).
    pub pod_ips: BTreeMap<u32, (String, Option<u32>)>,
}

/// A request for the owners, answered by the agent loop.
pub type OwnersRequest = oneshot::Sender<Owners>;

/// Which way the traffic goes, from the namespace's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Sent,
    Received,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Sent => "sent",
            Direction::Received => "received",
        }
    }
}

/// The other end of the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// Sent: to anyone (everything the namespace's pods sent).
    Any,
    /// Sent out of the pod network.
    Outside,
    /// Received from the namespace's own VNI.
    OwnVni,
    /// Received from a global sender.
    Global,
    /// Received by a global namespace from tenants' pods.
    OtherVni,
}

impl Peer {
    pub fn as_str(self) -> &'static str {
        match self {
            Peer::Any => "any",
            Peer::Outside => "outside",
            Peer::OwnVni => "own_vni",
            Peer::Global => "global",
            Peer::OtherVni => "other_vni",
        }
    }
}

/// One exported series.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Series {
    /// `k8s_ovs_namespace_packets_total` / `_bytes_total`.
    Traffic { namespace: String, vni: u32, direction: Direction, peer: Peer },
    /// `k8s_ovs_namespace_refused_packets_total` / `_bytes_total`.
    Refused { namespace: String, vni: u32 },
    /// `k8s_ovs_vni_refused_packets_total` / `_bytes_total`: sent from the
    /// VNI's pods, refused by isolation at their destination.
    RefusedFromVni { vni: u32 },
    /// `k8s_ovs_namespace_policy_refused_packets_total` / `_bytes_total`:
    /// refused by a NetworkPolicy isolating the namespace's pods, on the
    /// way in (received) or out (sent).
    PolicyRefused { namespace: String, vni: u32, direction: Direction },
    /// `k8s_ovs_pod_spoofed_packets_total` / `_bytes_total`.
    Spoofed { namespace: String, pod: String },
}

/// Packets and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

/// The series a counting flow adds to, given who is who (`None`: not a
/// counting flow, or an owner the agent no longer knows).
pub fn series_of(kind: Counted, object: u32, owners: &Owners) -> Option<Series> {
    // Namespace-id flows name their namespace and its VNI; the policy drops
    // a pod's address, whose namespace and VNI the pods say.
    let traffic = |direction, peer| {
        let (namespace, vni) = owners.namespaces.get(&object)?;
        Some(Series::Traffic { namespace: namespace.clone(), vni: (*vni)?, direction, peer })
    };
    let policy = |direction| {
        let (namespace, vni) = owners.pod_ips.get(&object)?;
        Some(Series::PolicyRefused { namespace: namespace.clone(), vni: (*vni)?, direction })
    };
    match kind {
        Counted::Sent => traffic(Direction::Sent, Peer::Any),
        Counted::SentOutside => traffic(Direction::Sent, Peer::Outside),
        Counted::ReceivedOwnVni => traffic(Direction::Received, Peer::OwnVni),
        Counted::ReceivedGlobal => traffic(Direction::Received, Peer::Global),
        Counted::ReceivedOtherVni => traffic(Direction::Received, Peer::OtherVni),
        Counted::Refused => {
            let (namespace, vni) = owners.namespaces.get(&object)?;
            Some(Series::Refused { namespace: namespace.clone(), vni: (*vni)? })
        }
        Counted::RefusedFromVni => Some(Series::RefusedFromVni { vni: object }),
        Counted::PolicyRefusedIngress => policy(Direction::Received),
        Counted::PolicyRefusedEgress => policy(Direction::Sent),
        Counted::Spoofed => {
            let (namespace, pod) = owners.pods.get(&object)?.clone();
            Some(Series::Spoofed { namespace, pod })
        }
    }
}

/// A flow's counters at the last read.
#[derive(Debug, Clone, Copy)]
struct Seen {
    packets: u64,
    bytes: u64,
    age: Option<Duration>,
}

/// The running totals, and what each flow had counted at the last read.
#[derive(Debug, Default)]
pub struct Totals {
    last: HashMap<FlowKey, Seen>,
    totals: BTreeMap<Series, Count>,
}

impl Totals {
    /// Takes one read of the counting flows: each flow's growth since the
    /// last read (its whole count if it is new or was replaced) goes to its
    /// series. Flows no longer read are forgotten; series of pods no longer
    /// on the node go.
    pub fn update(&mut self, flows: &[CountedFlow], owners: &Owners) {
        let mut last = HashMap::with_capacity(flows.len());
        for c in flows {
            let Some((kind, object)) = counted(&c.flow) else { continue };
            let (Some(packets), Some(bytes)) = (c.stats.packets, c.stats.bytes) else { continue };
            let now = Seen { packets, bytes, age: c.stats.duration };
            let key = c.flow.key();
            let grown = match self.last.get(&key) {
                // The same flow, still counting: its growth.
                Some(was) if !replaced(was, &now) => {
                    Count { packets: packets - was.packets, bytes: bytes.saturating_sub(was.bytes) }
                }
                // New, or replaced since (its counters restarted).
                _ => Count { packets, bytes },
            };
            last.insert(key, now);
            if let Some(series) = series_of(kind, object, owners) {
                let t = self.totals.entry(series).or_default();
                t.packets = t.packets.saturating_add(grown.packets);
                t.bytes = t.bytes.saturating_add(grown.bytes);
            }
        }
        self.last = last;
        let pods: std::collections::BTreeSet<&(String, String)> = owners.pods.values().collect();
        self.totals.retain(|s, _| match s {
            Series::Spoofed { namespace, pod } => pods.contains(&(namespace.clone(), pod.clone())),
            _ => true,
        });
    }

    pub fn totals(&self) -> &BTreeMap<Series, Count> {
        &self.totals
    }
}

/// Whether the flow read `now` is not the one read `was`: fewer packets or
/// bytes than before, or younger.
fn replaced(was: &Seen, now: &Seen) -> bool {
    let younger = matches!((was.age, now.age), (Some(a), Some(b)) if b < a);
    now.packets < was.packets || now.bytes < was.bytes || younger
}

/// Every `period`, reads the counting flows and updates `metrics`' totals,
/// until the loop (the owners' answerer) is gone.
pub async fn run(
    switch: FlowClient,
    owners: mpsc::Sender<OwnersRequest>,
    metrics: Arc<Metrics>,
    period: Duration,
) {
    let mut totals = Totals::default();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let flows = match read(&switch).await {
            Ok(f) => f,
            Err(e) => {
                metrics.traffic_read_errors.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "reading the switch's flow counters failed; trying again next period");
                continue;
            }
        };
        let (tx, rx) = oneshot::channel();
        if owners.send(tx).await.is_err() {
            return;
        }
        let Ok(who) = rx.await else { return };
        totals.update(&flows, &who);
        debug!(flows = flows.len(), series = totals.totals().len(), "flow counters read");
        // A poisoned lock only means a panic elsewhere mid-copy: overwritten here.
        metrics.traffic.lock().unwrap_or_else(|p| p.into_inner()).clone_from(totals.totals());
    }
}

/// The counting flows with their counters: one flow stats request per
/// table that holds them, filtered by owner category on the switch.
async fn read(switch: &FlowClient) -> Result<Vec<CountedFlow>, ovs_flows::client::ClientError> {
    let mut out = Vec::new();
    for (table, category) in COUNTING_TABLES {
        out.extend(switch.flow_stats(Some(table.id()), CookieFilter::category(category)).await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovs_flows::ofp::FlowStats;
    use ovs_flows::pipeline::{pipeline, NodeState, Table};
    use ovs_flows::Flow;

    fn state(red_vni: u32) -> NodeState {
        ovs_flows::samples::tenant_node(&[(3, "red"), (4, "blue")], &[("red", red_vni), ("blue", 200)])
    }

    fn owners(s: &NodeState) -> Owners {
        Owners {
            pods: s
                .pods
                .values()
                .map(|p| (p.ofport, (p.namespace.clone(), format!("{}-pod", p.namespace))))
                .collect(),
            namespaces: s.namespace_ids.iter().map(|(ns, id)| (*id, (ns.clone(), s.vni_of(ns)))).collect(),
            pod_ips: s
                .pods
                .values()
                .map(|p| (u32::from(p.ip), (p.namespace.clone(), s.vni_of(&p.namespace))))
                .collect(),
        }
    }

    /// The node's flows, each counting `n(flow)` packets of 100 bytes, `age` old.
    fn read(s: &NodeState, age: u64, n: impl Fn(&Flow) -> u64) -> Vec<CountedFlow> {
        pipeline(s, 1)
            .iter()
            .map(|f| CountedFlow {
                flow: f.clone(),
                stats: FlowStats {
                    packets: Some(n(f)),
                    bytes: Some(100 * n(f)),
                    duration: Some(Duration::from_secs(age)),
                },
            })
            .collect()
    }

    fn of(t: &Totals, series: &Series) -> Count {
        t.totals().get(series).copied().unwrap_or_default()
    }

    fn red(vni: u32, direction: Direction, peer: Peer) -> Series {
        Series::Traffic { namespace: "red".into(), vni, direction, peer }
    }

    #[test]
    fn counters_go_to_their_namespace_and_stay_monotonic_across_replacement_and_a_vni_change() {
        let s = state(100);
        let who = owners(&s);
        let own = |f: &Flow| counted(f);
        let red_id = s.namespace_ids["red"];
        let sent_by_red = |k: u64| {
            move |f: &Flow| {
                if own(f) == Some((Counted::Sent, red_id)) && f.m.eth_type == Some(0x0800) {
                    k
                } else {
                    0
                }
            }
        };
        let mut t = Totals::default();
        t.update(&read(&s, 10, sent_by_red(5)), &who);
        assert_eq!(of(&t, &red(100, Direction::Sent, Peer::Any)), Count { packets: 5, bytes: 500 });
        // Growth only.
        t.update(&read(&s, 20, sent_by_red(8)), &who);
        assert_eq!(of(&t, &red(100, Direction::Sent, Peer::Any)).packets, 8);
        // Replaced (younger, fewer): its whole new count is added.
        t.update(&read(&s, 1, sent_by_red(2)), &who);
        assert_eq!(of(&t, &red(100, Direction::Sent, Peer::Any)).packets, 10);
        // Red moves to VNI 300: the flow (modified in place) keeps counting;
        // the growth goes to the new VNI's series, the old one stays.
        let moved = state(300);
        t.update(&read(&moved, 30, sent_by_red(6)), &owners(&moved));
        assert_eq!(of(&t, &red(100, Direction::Sent, Peer::Any)).packets, 10);
        assert_eq!(of(&t, &red(300, Direction::Sent, Peer::Any)).packets, 4);
        // Nothing else was counted for red or blue.
        let others: u64 = t
            .totals()
            .iter()
            .filter(|(s, _)| !matches!(s, Series::Traffic { direction: Direction::Sent, peer: Peer::Any, namespace, .. } if namespace == "red"))
            .map(|(_, c)| c.packets)
            .sum();
        assert_eq!(others, 0);
    }

    #[test]
    fn each_counting_flow_feeds_its_series_and_spoofed_pods_go_with_the_pod() {
        let s = state(100);
        let mut who = owners(&s);
        let mut t = Totals::default();
        t.update(&read(&s, 1, |_| 1), &who);
        let blue = |direction, peer| Series::Traffic { namespace: "blue".into(), vni: 200, direction, peer };
        // IP and ARP flows of SOURCE_VNI.
        assert_eq!(of(&t, &red(100, Direction::Sent, Peer::Any)).packets, 2);
        assert_eq!(of(&t, &red(100, Direction::Sent, Peer::Outside)).packets, 1);
        assert_eq!(of(&t, &blue(Direction::Received, Peer::OwnVni)).packets, 1);
        assert_eq!(of(&t, &blue(Direction::Received, Peer::Global)).packets, 1);
        assert_eq!(of(&t, &Series::Refused { namespace: "blue".into(), vni: 200 }).packets, 1);
        assert_eq!(of(&t, &Series::RefusedFromVni { vni: 100 }).packets, 1);
        assert_eq!(of(&t, &Series::RefusedFromVni { vni: 200 }).packets, 1);
        let spoofed = Series::Spoofed { namespace: "red".into(), pod: "red-pod".into() };
        assert_eq!(of(&t, &spoofed).packets, 1);
        // No other flow is counted: 2 namespaces x (2 + 1 + 1 + 1 + 1) + 2
        // VNIs + 2 pods.
        assert_eq!(t.totals().values().map(|c| c.packets).sum::<u64>(), 16);
        // The table's own default drop (no owner) counts for nobody.
        assert!(read(&s, 1, |_| 1)
            .iter()
            .any(|c| c.flow.table == Table::Isolation.id() && c.flow.priority == 0));
        who.pods.remove(&3);
        t.update(&read(&s, 2, |_| 1), &who);
        assert!(!t.totals().contains_key(&spoofed));
    }

    /// A NetworkPolicy drop counts for the namespace of the pod whose
    /// address it matches, by direction; one for an address the agent does
    /// not know (a pod gone) counts for no one.
    #[test]
    fn policy_drops_count_for_their_pods_namespace() {
        use ovs_flows::cookie::Category;
        use ovs_flows::pipeline::Table;
        use ovs_flows::{Cookie, Match};
        let s = state(100);
        let who = owners(&s);
        let red_ip = s.pods[&3].ip;
        let drop = |table: Table, m: Match, packets: u64| CountedFlow {
            flow: Flow::new(table.id(), 50, Cookie::new(1, Category::Policy, 0), m, vec![]),
            stats: FlowStats {
                packets: Some(packets),
                bytes: Some(60 * packets),
                duration: Some(Duration::from_secs(1)),
            },
        };
        let flows = [
            drop(Table::IngressPolicy, Match::new().nw_dst(red_ip), 4),
            drop(Table::EgressPolicy, Match::new().nw_src(red_ip), 2),
            drop(Table::IngressPolicy, Match::new().nw_dst(std::net::Ipv4Addr::new(172, 11, 9, 9)), 7),
        ];
        let mut t = Totals::default();
        t.update(&flows, &who);
        let red = |direction| Series::PolicyRefused { namespace: "red".into(), vni: 100, direction };
        assert_eq!(of(&t, &red(Direction::Received)), Count { packets: 4, bytes: 240 });
        assert_eq!(of(&t, &red(Direction::Sent)), Count { packets: 2, bytes: 120 });
        assert_eq!(t.totals().values().map(|c| c.packets).sum::<u64>(), 6);
    }

    #[test]
    fn unknown_counts_are_skipped() {
        let s = state(100);
        let mut flows = read(&s, 1, |_| 1);
        for c in &mut flows {
            c.stats.packets = None;
        }
        let mut t = Totals::default();
        t.update(&flows, &owners(&s));
        assert!(t.totals().is_empty());
    }
}
