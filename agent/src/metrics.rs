//! Prometheus text metrics (served by `http` as `GET /metrics`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bucket bounds in seconds (1 ms .. 5 s), for latencies.
const LATENCY_BUCKETS: [f64; 12] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0];
/// Bucket bounds in flows, for bundle sizes.
const SIZE_BUCKETS: [f64; 8] = [1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 20000.0];

#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<(Vec<u64>, f64, u64)>, // per-bucket counts, sum, count
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, inner: Mutex::new((vec![0; bounds.len()], 0.0, 0)) }
    }

    pub fn observe(&self, v: f64) {
        if let Ok(mut g) = self.inner.lock() {
            if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
                g.0[i] += 1;
            }
            g.1 += v;
            g.2 += 1;
        }
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let Ok(g) = self.inner.lock() else { return };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&g.0) {
            cumulative += c;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let _ =
            writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}", g.2, g.1, g.2);
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
        }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut s = String::new();
        self.cni_add_seconds.render(&mut s, "k8s_ovs_cni_add_seconds", "CNI ADD latency in the agent");
        self.cni_del_seconds.render(&mut s, "k8s_ovs_cni_del_seconds", "CNI DEL latency in the agent");
        self.bundle_seconds.render(
            &mut s,
            "k8s_ovs_bundle_seconds",
            "OpenFlow bundle latency (open to commit)",
        );
        self.bundle_flows.render(&mut s, "k8s_ovs_bundle_flows", "flow changes per bundle");
        let gauges: [(&str, &str, &str, &AtomicU64); 9] = [
            (
                "k8s_ovs_bandwidth_errors_total",
                "counter",
                "bandwidth changes refused or failed",
                &self.bandwidth_errors,
            ),
            ("k8s_ovs_pods", "gauge", "pods attached to the bridge", &self.pods),
            ("k8s_ovs_cni_errors_total", "counter", "CNI requests answered with an error", &self.cni_errors),
            ("k8s_ovs_flow_errors_total", "counter", "flow bundles the switch refused", &self.flow_errors),
            (
                "k8s_ovs_ovs_reconnects_total",
                "counter",
                "OpenFlow reconnects (flows replayed)",
                &self.ovs_reconnects,
            ),
            (
                "k8s_ovs_ovsdb_reconnects_total",
                "counter",
                "OVSDB reconnects (ovsdb-server restarted or the connection broke)",
                &*self.ovsdb_reconnects,
            ),
            (
                "k8s_ovs_flow_drift_total",
                "counter",
                "flows the periodic resync found changed behind the agent's back and repaired",
                &self.flow_drift,
            ),
            (
                "k8s_ovs_ipam_recovered_total",
                "counter",
                "running pods' addresses the IPAM log lacked, taken back from the bridge's ports at start",
                &self.ipam_recovered,
            ),
            (
                "k8s_ovs_ready",
                "gauge",
                "1 once the agent serves CNI requests",
                &AtomicU64::new(u64::from(self.ready.load(Ordering::Relaxed))),
            ),
        ];
        for (name, kind, help, v) in gauges {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let m = Metrics::default();
        m.cni_add_seconds.observe(0.0015);
        m.cni_add_seconds.observe(0.3);
        m.pods.store(2, Ordering::Relaxed);
        let t = m.render();
        assert!(t.contains("k8s_ovs_cni_add_seconds_bucket{le=\"0.002\"} 1"), "{t}");
        assert!(t.contains("k8s_ovs_cni_add_seconds_bucket{le=\"0.5\"} 2"), "{t}");
        assert!(t.contains("k8s_ovs_cni_add_seconds_count 2"), "{t}");
        assert!(t.contains("k8s_ovs_pods 2"), "{t}");
        assert!(t.contains("k8s_ovs_ready 0"), "{t}");
    }
}
