//! The agent's metrics, in the Prometheus text format (served by `http` as
//! `GET /metrics`), encoded by prometheus-client.
//!
//! Counters and gauges are plain atomics the dataplane bumps; the histograms
//! are prometheus-client's. The names and HELP texts are an interface
//! (dashboards, alerts, the lab tests): they are written out here and
//! encoded through a collector, because the registry's `register` would
//! append a full stop to every HELP text.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::traffic::{Count, Series};

/// Bucket bounds in seconds (1 ms .. 5 s), for latencies.
const LATENCY_BUCKETS: [f64; 12] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0];
/// Bucket bounds in flows, for bundle sizes.
const SIZE_BUCKETS: [f64; 8] = [1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 20000.0];

#[derive(Debug)]
pub struct Histogram(histogram::Histogram);

impl Histogram {
    fn new(bounds: &[f64]) -> Histogram {
        Histogram(histogram::Histogram::new(bounds.iter().copied()))
    }

    pub fn observe(&self, v: f64) {
        self.0.observe(v);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }
}

/// Every metric the agent exports.
#[derive(Debug)]
pub struct Metrics {
    pub cni_add_seconds: Histogram,
    pub cni_del_seconds: Histogram,
    pub bundle_seconds: Histogram,
    pub bundle_flows: Histogram,
    pub pods: AtomicU64,
    pub cni_errors: AtomicU64,
    pub flow_errors: AtomicU64,
    pub ovs_reconnects: AtomicU64,
    /// The OVSDB client's reconnects (the client counts into it).
    pub ovsdb_reconnects: Arc<AtomicU64>,
    /// Flows the periodic resync had to add, change or delete: drift.
    pub flow_drift: AtomicU64,
    pub bandwidth_errors: AtomicU64,
    /// Addresses of running pods the IPAM log lacked (lost, corrupted,
    /// cut short) and that were taken back from the bridge's ports at start.
    pub ipam_recovered: AtomicU64,
    /// Set once the agent serves CNI requests with a programmed bridge.
    pub ready: AtomicBool,
    /// NetworkPolicies in the cluster (the agent's view of them).
    pub network_policies: AtomicU64,
    /// This node's NetworkPolicy flows (conjunctions, isolated pods).
    pub policy_flows: AtomicU64,
    /// Per-tenant traffic: the running totals of the switch's counting
    /// flows, as of the last read (`traffic.rs`).
    pub traffic: Mutex<BTreeMap<Series, Count>>,
    /// Reads of the flow counters that failed.
    pub traffic_read_errors: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            cni_add_seconds: Histogram::new(&LATENCY_BUCKETS),
            cni_del_seconds: Histogram::new(&LATENCY_BUCKETS),
            bundle_seconds: Histogram::new(&LATENCY_BUCKETS),
            bundle_flows: Histogram::new(&SIZE_BUCKETS),
            pods: AtomicU64::new(0),
            cni_errors: AtomicU64::new(0),
            flow_errors: AtomicU64::new(0),
            ovs_reconnects: AtomicU64::new(0),
            ovsdb_reconnects: Arc::new(AtomicU64::new(0)),
            flow_drift: AtomicU64::new(0),
            bandwidth_errors: AtomicU64::new(0),
            ipam_recovered: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            network_policies: AtomicU64::new(0),
            policy_flows: AtomicU64::new(0),
            traffic: Mutex::new(BTreeMap::new()),
            traffic_read_errors: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// The Prometheus text (version 0.0.4) of every metric; the tenant
    /// families ([`TRAFFIC_FAMILIES`]) only with `tenants`.
    pub fn render(self: &Arc<Self>, tenants: bool) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Export { metrics: self.clone(), tenants }));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &registry);
        out
    }
}

/// The metrics as the encoder sees them: names, types, HELP texts, values.
#[derive(Debug)]
struct Export {
    metrics: Arc<Metrics>,
    /// With the tenant families.
    tenants: bool,
}

impl Collector for Export {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let m = &self.metrics;
        let histograms = [
            ("k8s_ovs_cni_add_seconds", "CNI ADD latency in the agent", &m.cni_add_seconds),
            ("k8s_ovs_cni_del_seconds", "CNI DEL latency in the agent", &m.cni_del_seconds),
            ("k8s_ovs_bundle_seconds", "OpenFlow bundle latency (open to commit)", &m.bundle_seconds),
            ("k8s_ovs_bundle_flows", "flow changes per bundle", &m.bundle_flows),
        ];
        for (name, help, h) in histograms {
            h.0.encode(encoder.encode_descriptor(name, help, None, MetricType::Histogram)?)?;
        }
        let load = |v: &AtomicU64| v.load(Ordering::Relaxed);
        // Counters are named without `_total`: the encoder appends it.
        let (counter, gauge) = (MetricType::Counter, MetricType::Gauge);
        let values = [
            (
                "k8s_ovs_bandwidth_errors",
                counter,
                "bandwidth changes refused or failed",
                load(&m.bandwidth_errors),
            ),
            ("k8s_ovs_pods", gauge, "pods attached to the bridge", load(&m.pods)),
            ("k8s_ovs_cni_errors", counter, "CNI requests answered with an error", load(&m.cni_errors)),
            ("k8s_ovs_flow_errors", counter, "flow bundles the switch refused", load(&m.flow_errors)),
            (
                "k8s_ovs_ovs_reconnects",
                counter,
                "OpenFlow reconnects (flows replayed)",
                load(&m.ovs_reconnects),
            ),
            (
                "k8s_ovs_ovsdb_reconnects",
                counter,
                "OVSDB reconnects (ovsdb-server restarted or the connection broke)",
                load(&m.ovsdb_reconnects),
            ),
            (
                "k8s_ovs_flow_drift",
                counter,
                "flows the periodic resync found changed behind the agent's back and repaired",
                load(&m.flow_drift),
            ),
            (
                "k8s_ovs_ipam_recovered",
                counter,
                "running pods' addresses the IPAM log lacked, taken back from the bridge's ports at start",
                load(&m.ipam_recovered),
            ),
            (
                "k8s_ovs_network_policies",
                gauge,
                "NetworkPolicies in the cluster, as the agent's watch has them",
                load(&m.network_policies),
            ),
            (
                "k8s_ovs_policy_flows",
                gauge,
                "this node's NetworkPolicy flows (conjunction clauses, rules, isolated pods)",
                load(&m.policy_flows),
            ),
            (
                "k8s_ovs_traffic_read_errors",
                counter,
                "reads of the switch's flow counters (per-tenant traffic) that failed",
                load(&m.traffic_read_errors),
            ),
            (
                "k8s_ovs_ready",
                gauge,
                "1 once the agent serves CNI requests",
                u64::from(m.ready.load(Ordering::Relaxed)),
            ),
        ];
        for (name, kind, help, v) in values {
            let e = encoder.encode_descriptor(name, help, None, kind)?;
            if kind == counter {
                ConstCounter::new(v).encode(e)?;
            } else {
                ConstGauge::new(v).encode(e)?;
            }
        }
        if !self.tenants {
            return Ok(());
        }
        encode_traffic(&mut encoder, &m.traffic.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The per-tenant traffic families (counters with labels; `traffic.rs`
/// says what each counts). Names and labels are in docs/operations.md.
pub const TRAFFIC_FAMILIES: [(&str, &str); 10] = [
    (
        "k8s_ovs_namespace_packets",
        "packets of the namespace's pods on this node, by direction (sent, received) and peer (any, outside; own_vni, global, other_vni), from the switch's flow counters",
    ),
    ("k8s_ovs_namespace_bytes", "bytes of the traffic k8s_ovs_namespace_packets_total counts"),
    ("k8s_ovs_namespace_refused_packets", "packets to the namespace's pods on this node that isolation dropped (another tenant's)"),
    ("k8s_ovs_namespace_refused_bytes", "bytes of the packets k8s_ovs_namespace_refused_packets_total counts"),
    ("k8s_ovs_pod_spoofed_packets", "packets the pod's port sent that the switch dropped: forged MAC or IP, forged ARP, VLAN tags, non-IPv4"),
    ("k8s_ovs_pod_spoofed_bytes", "bytes of the packets k8s_ovs_pod_spoofed_packets_total counts"),
    ("k8s_ovs_vni_refused_packets", "packets from the VNI's pods that isolation dropped on this node (their destination's): who knocks"),
    ("k8s_ovs_vni_refused_bytes", "bytes of the packets k8s_ovs_vni_refused_packets_total counts"),
    (
        "k8s_ovs_namespace_policy_refused_packets",
        "packets to (direction=received) or from (sent) the namespace's pods on this node that their NetworkPolicy isolation dropped",
    ),
    ("k8s_ovs_namespace_policy_refused_bytes", "bytes of the packets k8s_ovs_namespace_policy_refused_packets_total counts"),
];

fn encode_traffic(encoder: &mut DescriptorEncoder, totals: &BTreeMap<Series, Count>) -> fmt::Result {
    for (i, (name, help)) in TRAFFIC_FAMILIES.iter().enumerate() {
        let bytes = i % 2 == 1;
        let mut e = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (series, count) in totals {
            let labels: Vec<(&str, String)> = match (series, i / 2) {
                (Series::Traffic { namespace, vni, direction, peer }, 0) => vec![
                    ("namespace", namespace.clone()),
                    ("vni", vni.to_string()),
                    ("direction", direction.as_str().to_string()),
                    ("peer", peer.as_str().to_string()),
                ],
                (Series::Refused { namespace, vni }, 1) => {
                    vec![("namespace", namespace.clone()), ("vni", vni.to_string())]
                }
                (Series::Spoofed { namespace, pod }, 2) => {
                    vec![("namespace", namespace.clone()), ("pod", pod.clone())]
                }
                (Series::RefusedFromVni { vni }, 3) => vec![("vni", vni.to_string())],
                (Series::PolicyRefused { namespace, vni, direction }, 4) => vec![
                    ("namespace", namespace.clone()),
                    ("vni", vni.to_string()),
                    ("direction", direction.as_str().to_string()),
                ],
                _ => continue,
            };
            let v = if bytes { count.bytes } else { count.packets };
            ConstCounter::new(v).encode(e.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let m = Arc::new(Metrics::default());
        m.cni_add_seconds.observe(0.0015);
        m.cni_add_seconds.observe(0.3);
        m.pods.store(2, Ordering::Relaxed);
        let t = m.render(false);
        assert!(t.contains("k8s_ovs_cni_add_seconds_bucket{le=\"0.002\"} 1"), "{t}");
        assert!(t.contains("k8s_ovs_cni_add_seconds_bucket{le=\"0.5\"} 2"), "{t}");
        assert!(t.contains("k8s_ovs_cni_add_seconds_count 2"), "{t}");
        assert!(t.contains("k8s_ovs_pods 2"), "{t}");
        assert!(t.contains("k8s_ovs_ready 0"), "{t}");
    }

    /// Names, HELP texts, types, labels and order are an interface: the
    /// whole exposition, byte for byte (the same as the hand-written one it
    /// replaced but for sums printed as floats, `_sum 0.0`).
    #[test]
    fn the_exposition_is_the_golden_one() {
        let m = Arc::new(Metrics::default());
        for v in [0.0015, 0.3, 1.0, 7.0] {
            m.cni_add_seconds.observe(v);
            m.bundle_seconds.observe(v);
        }
        for v in [1.0, 3.0, 30000.0] {
            m.bundle_flows.observe(v);
        }
        m.pods.store(2, Ordering::Relaxed);
        m.flow_drift.fetch_add(3, Ordering::Relaxed);
        m.ovsdb_reconnects.fetch_add(2, Ordering::Relaxed);
        m.ready.store(true, Ordering::Relaxed);
        {
            use crate::traffic::{Direction, Peer};
            let mut t = m.traffic.lock().expect("lock");
            let red = |direction, peer| Series::Traffic { namespace: "red".into(), vni: 12, direction, peer };
            t.insert(red(Direction::Sent, Peer::Any), Count { packets: 30, bytes: 2940 });
            t.insert(red(Direction::Received, Peer::OwnVni), Count { packets: 10, bytes: 980 });
            t.insert(Series::Refused { namespace: "blue".into(), vni: 10 }, Count { packets: 5, bytes: 490 });
            t.insert(
                Series::Spoofed { namespace: "red".into(), pod: "web-1".into() },
                Count { packets: 2, bytes: 84 },
            );
            t.insert(Series::RefusedFromVni { vni: 12 }, Count { packets: 5, bytes: 490 });
            t.insert(
                Series::PolicyRefused { namespace: "red".into(), vni: 12, direction: Direction::Received },
                Count { packets: 3, bytes: 222 },
            );
        }
        let text = m.render(true);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/metrics.txt"), &text)
                .expect("write");
        }
        assert_eq!(text, include_str!("../tests/golden/metrics.txt"));
    }
}
