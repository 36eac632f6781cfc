//! `k8s-ovs-ctl top`: per-namespace traffic rates across the nodes, like
//! `kubectl top`. Each agent's `/metrics` is read twice, an interval apart;
//! the growth of its per-tenant counters (`k8s_ovs_namespace_*`, which the
//! agents take from their switches' flow counters) over the interval,
//! summed over the nodes, is each namespace's rate. What isolation refused
//! is counted at the destination by the sender's VNI only (the tunnel
//! carries nothing else), so it goes to the namespaces etcd gives that VNI.
//! Pure: the parsing, the rates and the table; `bin/ctl.rs` does the
//! reading.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// What one namespace's counters hold on one node (or summed).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Traffic {
    pub sent_packets: f64,
    pub sent_bytes: f64,
    pub received_packets: f64,
    pub received_bytes: f64,
    pub outside_bytes: f64,
    /// Refused to its pods: by isolation, and by their NetworkPolicy ingress.
    pub refused_packets: f64,
    /// Refused from its pods: by their NetworkPolicy egress, and by
    /// isolation at the destination (its VNI's count).
    pub refused_out_packets: f64,
}

impl Traffic {
    fn add(&mut self, o: &Traffic) {
        self.sent_packets += o.sent_packets;
        self.sent_bytes += o.sent_bytes;
        self.received_packets += o.received_packets;
        self.received_bytes += o.received_bytes;
        self.outside_bytes += o.outside_bytes;
        self.refused_packets += o.refused_packets;
        self.refused_out_packets += o.refused_out_packets;
    }

    /// The growth from `before` to `self`, field by field; a counter that
    /// went down (the agent restarted) grew by what it holds now.
    fn since(&self, before: &Traffic) -> Traffic {
        let d = grew;
        Traffic {
            sent_packets: d(self.sent_packets, before.sent_packets),
            sent_bytes: d(self.sent_bytes, before.sent_bytes),
            received_packets: d(self.received_packets, before.received_packets),
            received_bytes: d(self.received_bytes, before.received_bytes),
            outside_bytes: d(self.outside_bytes, before.outside_bytes),
            refused_packets: d(self.refused_packets, before.refused_packets),
            refused_out_packets: d(self.refused_out_packets, before.refused_out_packets),
        }
    }

    fn scaled(&self, k: f64) -> Traffic {
        Traffic {
            sent_packets: self.sent_packets * k,
            sent_bytes: self.sent_bytes * k,
            received_packets: self.received_packets * k,
            received_bytes: self.received_bytes * k,
            outside_bytes: self.outside_bytes * k,
            refused_packets: self.refused_packets * k,
            refused_out_packets: self.refused_out_packets * k,
        }
    }
}

/// A counter's growth from `was` to `now`; one that went down (the agent
/// restarted) grew by what it holds now.
fn grew(now: f64, was: f64) -> f64 {
    if now >= was {
        now - was
    } else {
        now
    }
}

/// One sample line of the Prometheus text: name, labels, value.
fn parse_line(line: &str) -> Option<(&str, BTreeMap<&str, String>, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match head.split_once('{') {
        Some((n, rest)) => (n, rest.strip_suffix('}')?),
        None => (head, ""),
    };
    let mut out = BTreeMap::new();
    let mut rest = labels;
    while let Some((key, after)) = rest.split_once("=\"") {
        // Label values here are namespace names, VNIs and fixed words: no
        // escaped quotes; an escape is taken as is.
        let end = after.find('"')?;
        out.insert(key.trim_start_matches(',').trim(), after[..end].to_string());
        rest = &after[end + 1..];
    }
    Some((name, out, value))
}

/// One agent's counters: per namespace, and what isolation refused per
/// sending VNI.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    pub namespaces: BTreeMap<String, Traffic>,
    pub refused_from_vni: BTreeMap<u32, f64>,
}

/// The per-namespace and per-VNI counters of one agent's `/metrics` text.
pub fn parse(text: &str) -> Counters {
    let mut out: BTreeMap<String, Traffic> = BTreeMap::new();
    let mut refused_from_vni: BTreeMap<u32, f64> = BTreeMap::new();
    for (name, labels, v) in text.lines().filter_map(parse_line) {
        if name == "k8s_ovs_vni_refused_packets_total" {
            if let Some(vni) = labels.get("vni").and_then(|v| v.parse().ok()) {
                *refused_from_vni.entry(vni).or_default() += v;
            }
            continue;
        }
        let Some(ns) = labels.get("namespace") else { continue };
        let (dir, peer) =
            (labels.get("direction").map(String::as_str), labels.get("peer").map(String::as_str));
        let t = out.entry(ns.clone()).or_default();
        match (name, dir, peer) {
            ("k8s_ovs_namespace_packets_total", Some("sent"), Some("any")) => t.sent_packets += v,
            ("k8s_ovs_namespace_bytes_total", Some("sent"), Some("any")) => t.sent_bytes += v,
            ("k8s_ovs_namespace_bytes_total", Some("sent"), Some("outside")) => t.outside_bytes += v,
            ("k8s_ovs_namespace_packets_total", Some("received"), _) => t.received_packets += v,
            ("k8s_ovs_namespace_bytes_total", Some("received"), _) => t.received_bytes += v,
            ("k8s_ovs_namespace_refused_packets_total", _, _) => t.refused_packets += v,
            ("k8s_ovs_namespace_policy_refused_packets_total", Some("received"), _) => t.refused_packets += v,
            ("k8s_ovs_namespace_policy_refused_packets_total", Some("sent"), _) => t.refused_out_packets += v,
            _ => {}
        }
    }
    Counters { namespaces: out, refused_from_vni }
}

/// Per-namespace rates (per second) over `secs`, from each node's two
/// samples (`(before, after)` texts), summed over the nodes. `vnis`: the
/// namespaces of each VNI (etcd's records): what isolation refused from a
/// VNI is each of its namespaces' (namespaces joined share it); a VNI no
/// namespace has any more gets a row of its own, `(vni N)`, while it sends.
pub fn rates(
    samples: &[(String, String)],
    secs: f64,
    vnis: &BTreeMap<u32, Vec<String>>,
) -> BTreeMap<String, Traffic> {
    let per_sec = 1.0 / secs.max(f64::MIN_POSITIVE);
    let mut out: BTreeMap<String, Traffic> = BTreeMap::new();
    let mut from_vni: BTreeMap<u32, f64> = BTreeMap::new();
    for (before, after) in samples {
        let (b, a) = (parse(before), parse(after));
        for (ns, now) in &a.namespaces {
            let grown = now.since(&b.namespaces.get(ns).copied().unwrap_or_default());
            out.entry(ns.clone()).or_default().add(&grown.scaled(per_sec));
        }
        for (vni, now) in &a.refused_from_vni {
            let was = b.refused_from_vni.get(vni).copied().unwrap_or_default();
            *from_vni.entry(*vni).or_default() += grew(*now, was) * per_sec;
        }
    }
    for (vni, rate) in from_vni {
        match vnis.get(&vni).filter(|n| !n.is_empty()) {
            Some(namespaces) => {
                for ns in namespaces {
                    out.entry(ns.clone()).or_default().refused_out_packets += rate;
                }
            }
            None if rate > 0.0 => out.entry(format!("(vni {vni})")).or_default().refused_out_packets += rate,
            None => {}
        }
    }
    out
}

/// A rate as kubectl top would print it: whole numbers, k/M/G above a thousand.
fn human(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.1}G", v / 1e9),
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e4 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

/// The table: one line per namespace, busiest (bytes sent + received) first.
pub fn table(rates: &BTreeMap<String, Traffic>) -> String {
    let mut rows: Vec<(&String, &Traffic)> = rates.iter().collect();
    rows.sort_by(|a, b| {
        let load = |t: &Traffic| t.sent_bytes + t.received_bytes;
        load(b.1).total_cmp(&load(a.1)).then(a.0.cmp(b.0))
    });
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<32} {:>9} {:>9} {:>9} {:>9} {:>11} {:>14} {:>15}",
        "NAMESPACE",
        "SENT-PPS",
        "SENT-BPS",
        "RECV-PPS",
        "RECV-BPS",
        "OUTSIDE-BPS",
        "REFUSED-IN-PPS",
        "REFUSED-OUT-PPS"
    );
    for (ns, t) in rows {
        let _ = writeln!(
            out,
            "{:<32} {:>9} {:>9} {:>9} {:>9} {:>11} {:>14} {:>15}",
            ns,
            human(t.sent_packets),
            human(t.sent_bytes),
            human(t.received_packets),
            human(t.received_bytes),
            human(t.outside_bytes),
            human(t.refused_packets),
            human(t.refused_out_packets)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(sent: u64, refused: u64, own: u64, global: u64) -> String {
        format!(
            "# HELP k8s_ovs_namespace_packets_total x\n\
             # TYPE k8s_ovs_namespace_packets_total counter\n\
             k8s_ovs_namespace_packets_total{{namespace=\"red\",vni=\"12\",direction=\"sent\",peer=\"any\"}} {sent}\n\
             k8s_ovs_namespace_packets_total{{namespace=\"red\",vni=\"12\",direction=\"received\",peer=\"own_vni\"}} {own}\n\
             k8s_ovs_namespace_packets_total{{namespace=\"red\",vni=\"12\",direction=\"received\",peer=\"global\"}} {global}\n\
             k8s_ovs_namespace_bytes_total{{namespace=\"red\",vni=\"12\",direction=\"sent\",peer=\"any\"}} {}\n\
             k8s_ovs_namespace_bytes_total{{namespace=\"red\",vni=\"12\",direction=\"sent\",peer=\"outside\"}} 0\n\
             k8s_ovs_namespace_refused_packets_total{{namespace=\"blue\",vni=\"10\"}} {refused}\n\
             k8s_ovs_vni_refused_packets_total{{vni=\"12\"}} {refused}\n\
             k8s_ovs_vni_refused_packets_total{{vni=\"77\"}} 1\n\
             k8s_ovs_namespace_policy_refused_packets_total{{namespace=\"red\",vni=\"12\",direction=\"received\"}} {own}\n\
             k8s_ovs_namespace_policy_refused_packets_total{{namespace=\"red\",vni=\"12\",direction=\"sent\"}} {global}\n\
             k8s_ovs_pods 3\n",
            sent * 100
        )
    }

    #[test]
    fn the_counters_of_a_namespace_are_read_by_name_and_labels() {
        let c = parse(&text(30, 4, 10, 2));
        let t = &c.namespaces;
        assert_eq!(t["red"].sent_packets, 30.0);
        assert_eq!(t["red"].sent_bytes, 3000.0);
        assert_eq!(t["red"].received_packets, 12.0);
        assert_eq!(t["blue"].refused_packets, 4.0);
        // NetworkPolicy refusals: in (received) and out (sent).
        assert_eq!(t["red"].refused_packets, 10.0);
        assert_eq!(t["red"].refused_out_packets, 2.0);
        assert_eq!(t.len(), 2);
        assert_eq!(c.refused_from_vni, BTreeMap::from([(12, 4.0), (77, 1.0)]));
    }

    #[test]
    fn rates_are_the_growth_over_the_interval_summed_over_nodes() {
        let n1 = (text(30, 0, 0, 0), text(50, 0, 0, 0));
        // Node 2's agent restarted in between: its counter went down, so it
        // grew by what it holds now.
        let n2 = (text(100, 10, 0, 0), text(20, 30, 0, 0));
        // Red and pink share VNI 12; VNI 77 is no namespace's any more.
        let vnis = BTreeMap::from([(12, vec!["red".to_string(), "pink".to_string()])]);
        let r = rates(&[n1, n2], 2.0, &vnis);
        assert_eq!(r["red"].sent_packets, (20.0 + 20.0) / 2.0);
        assert_eq!(r["red"].sent_bytes, 2000.0);
        assert_eq!(r["blue"].refused_packets, 10.0);
        // VNI 12's refusals (node 2's grew by 20) are red's and pink's.
        assert_eq!(r["red"].refused_out_packets, 10.0);
        assert_eq!(r["pink"].refused_out_packets, 10.0);
        // VNI 77 sent nothing in the interval: no row.
        assert!(!r.contains_key("(vni 77)"));
    }

    #[test]
    fn the_table_lists_the_busiest_first_in_kubectl_top_units() {
        let mut r = BTreeMap::new();
        r.insert("quiet".to_string(), Traffic::default());
        r.insert(
            "busy".to_string(),
            Traffic { sent_bytes: 2_500_000.0, sent_packets: 12_345.0, ..Default::default() },
        );
        let t = table(&r);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("NAMESPACE") && lines[0].ends_with("REFUSED-IN-PPS REFUSED-OUT-PPS"),
            "{t}"
        );
        assert!(
            lines[1].starts_with("busy") && lines[1].contains("12.3k") && lines[1].contains("2.5M"),
            "{t}"
        );
        assert!(lines[2].starts_with("quiet"), "{t}");
        assert_eq!(human(999.4), "999");
    }
}
