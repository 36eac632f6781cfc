//! How the node's pipeline follows etcd's view, at the cost of what
//! changed: the view keeps a bounded log of the namespaces, nodes and
//! config it changed ([`Changes`]), and a [`ViewFollower`] applies only the
//! entries after the last one it saw. When those are not all in the log (a
//! relist, the applied records becoming complete, a reader that fell more
//! than the log's length behind, the first read) it compares the whole view
//! with the pipeline instead, which is always correct and costs one walk of
//! 10,000 namespaces at the scale model.

use std::collections::{BTreeSet, VecDeque};
use std::net::Ipv4Addr;

use ovs_flows::ofp::FlowOp;
use ovs_flows::pipeline::{NodePipeline, RemoteNode};

use crate::dataplane::prefix_of;
use crate::etcd_source::{mode_of, EtcdView};

/// What one entry of the log names as changed (its new value is in the view).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Changed {
    Config,
    Namespace(String),
    Node(Ipv4Addr),
}

/// The view's changes in order, each with a sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// The number of the latest change (0: none yet).
    last: u64,
    /// Every change from this number on is in `log`.
    complete_from: u64,
    log: VecDeque<(u64, Changed)>,
    capacity: usize,
}

impl Default for Changes {
    fn default() -> Changes {
        Changes::with_capacity(Changes::CAPACITY)
    }
}

impl Changes {
    /// Entries kept: a burst of edits longer than this between two reads
    /// costs the reader one whole comparison.
    pub const CAPACITY: usize = 4096;

    pub fn with_capacity(capacity: usize) -> Changes {
        Changes { last: 0, complete_from: 1, log: VecDeque::new(), capacity: capacity.max(1) }
    }

    pub fn push(&mut self, c: Changed) {
        self.last += 1;
        self.log.push_back((self.last, c));
        if self.log.len() > self.capacity {
            self.log.pop_front();
            self.complete_from = self.log.front().map_or(self.last + 1, |(n, _)| *n);
        }
    }

    /// Anything may have changed (a relist, a bulk change): readers compare
    /// the whole view once.
    pub fn reset(&mut self) {
        self.last += 1;
        self.log.clear();
        self.complete_from = self.last + 1;
    }

    /// The latest change's number.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Everything changed after change `seen`, each once; `None` when the
    /// log does not hold all of it.
    pub fn since(&self, seen: u64) -> Option<BTreeSet<&Changed>> {
        if seen > self.last || seen + 1 < self.complete_from {
            return None;
        }
        Some(self.log.iter().filter(|(n, _)| *n > seen).map(|(_, c)| c).collect())
    }
}

/// A pipeline's reader of the view: the last change it applied.
#[derive(Debug, Clone, Default)]
pub struct ViewFollower {
    seen: Option<u64>,
}

impl ViewFollower {
    /// Brings `pipeline` in line with `view`; the flow operations that takes.
    pub fn apply(&mut self, view: &EtcdView, pipeline: &mut NodePipeline) -> Vec<FlowOp> {
        let ops = match self.seen.and_then(|s| view.changes.since(s)) {
            Some(changed) => changed.into_iter().flat_map(|c| apply_one(view, pipeline, c)).collect(),
            None => apply_whole(view, pipeline),
        };
        self.seen = Some(view.changes.last());
        ops
    }
}

fn remote_node(ip: Ipv4Addr, net: ipnetwork::Ipv4Network) -> RemoteNode {
    RemoteNode { ip, subnet: prefix_of(net) }
}

fn apply_one(view: &EtcdView, pipeline: &mut NodePipeline, changed: &Changed) -> Vec<FlowOp> {
    match changed {
        Changed::Config => match &view.config {
            Some(cfg) => pipeline.set_mode(mode_of(cfg.plugin)),
            None => Vec::new(),
        },
        Changed::Namespace(ns) => pipeline.set_vni(ns, view.vnis.get(ns).copied()),
        Changed::Node(ip) if *ip == pipeline.state().node_ip => Vec::new(),
        Changed::Node(ip) => {
            pipeline.set_remote_node(*ip, view.subnets.get(ip).map(|n| remote_node(*ip, *n)))
        }
    }
}

/// The whole view against the pipeline: mode, every VNI, every other node.
pub fn apply_whole(view: &EtcdView, pipeline: &mut NodePipeline) -> Vec<FlowOp> {
    let mut ops = Vec::new();
    if let Some(cfg) = &view.config {
        ops.extend(pipeline.set_mode(mode_of(cfg.plugin)));
    }
    ops.extend(pipeline.set_vnis(&view.vnis));
    let node_ip = pipeline.state().node_ip;
    let remote_nodes = view
        .subnets
        .iter()
        .filter(|(ip, _)| **ip != node_ip)
        .map(|(ip, net)| (*ip, remote_node(*ip, *net)))
        .collect();
    ops.extend(pipeline.set_remote_nodes(&remote_nodes));
    ops
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ovs_flows::pipeline::{LocalPod, Mode, NodeState};
    use ovs_flows::{Ipv4Prefix, Mac};

    use super::*;
    use crate::etcd_source::tests::{applied, complete, config, netns, subnet, CONFIG, P};

    #[test]
    fn a_reader_gets_what_changed_after_it_or_nothing_when_the_log_lost_some() {
        let mut c = Changes::with_capacity(3);
        assert_eq!(c.since(0), Some(BTreeSet::new()));
        c.push(Changed::Namespace("red".into()));
        c.push(Changed::Node(Ipv4Addr::new(192, 0, 2, 1)));
        c.push(Changed::Namespace("red".into()));
        let red = Changed::Namespace("red".into());
        let node = Changed::Node(Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(c.since(0), Some(BTreeSet::from([&red, &node])), "each once");
        assert_eq!(c.since(2), Some(BTreeSet::from([&red])));
        assert_eq!(c.since(3), Some(BTreeSet::new()));
        assert_eq!(c.since(4), None, "from the future: not this log");
        c.push(Changed::Config);
        assert_eq!(c.since(0), None, "change 1 fell out of the log");
        assert!(c.since(1).is_some());
        c.reset();
        assert_eq!(c.since(4), None, "a reset: compare the whole view");
        assert_eq!(c.since(5), Some(BTreeSet::new()));
    }

    /// A node of the random test: pods of three namespaces, its own
    /// address among the subnets etcd gives.
    fn test_node() -> NodePipeline {
        let p = |a: [u8; 4], l| Ipv4Prefix::new(Ipv4Addr::from(a), l);
        let mut s = NodeState::new(
            Mode::MultiTenant,
            Ipv4Addr::new(192, 0, 2, 7),
            p([172, 11, 4, 0], 22),
            p([172, 11, 0, 0], 16),
            p([10, 96, 0, 0], 12),
        );
        for (port, ns) in [(3, "red"), (4, "red"), (5, "blue"), (6, "green")] {
            let ip = Ipv4Addr::new(172, 11, 4, port as u8);
            let pod = LocalPod {
                ofport: port,
                ip,
                mac: Mac::for_ipv4(ip),
                namespace: ns.into(),
                egress_meter: None,
            };
            s.pods.insert(port, pod);
        }
        NodePipeline::new(s, 1)
    }

    /// Random etcd edits (records and the controller's applied copies put
    /// and deleted, invalid values, subnets of this node and others, the
    /// plugin switched, the applied records becoming complete, relists):
    /// a follower reading after every edit, and one reading every seventh
    /// edit through a log too short for that (so it falls back), end with
    /// the same pipeline as one given the whole view each time.
    #[test]
    fn a_follower_ends_where_the_whole_view_does() {
        let mut seed: u64 = 0x0dd_ba11_cafe_f00d;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let subnet_config = CONFIG.replace("k8s-ovs-multitenant", "k8s-ovs-subnet");
        for sequence in 0..10 {
            let mut view = EtcdView { changes: Changes::with_capacity(3), ..EtcdView::default() };
            let mut records: BTreeMap<String, Vec<u8>> = BTreeMap::from([config()]);
            let (mut every, mut seventh, mut whole) = (test_node(), test_node(), test_node());
            let (mut f1, mut f7) = (ViewFollower::default(), ViewFollower::default());
            view.apply(P, &config().0, Some(&config().1));
            for step in 0..150 {
                let name = ["red", "blue", "green", "gone"][next(4) as usize];
                let ip = ["192.0.2.7", "192.0.2.8", "192.0.2.9"][next(3) as usize];
                let (key, value) = match next(9) {
                    0 | 1 => netns(name, [100, 200, 300, 0][next(4) as usize]),
                    2 | 3 => applied(name, [100, 200, 300, 0][next(4) as usize]),
                    4 => subnet(ip, ["172.11.8.0/22", "172.11.12.0/22", ""][next(3) as usize]),
                    5 => (netns(name, 1).0, b"{not json".to_vec()),
                    6 => (
                        config().0,
                        if next(2) == 0 { subnet_config.clone().into_bytes() } else { config().1 },
                    ),
                    7 if next(5) == 0 => complete(),
                    _ => {
                        let key = [netns(name, 0).0, applied(name, 0).0, subnet(ip, "").0][next(3) as usize]
                            .clone();
                        records.remove(&key);
                        view.apply(P, &key, None);
                        (String::new(), Vec::new())
                    }
                };
                if !key.is_empty() {
                    view.apply(P, &key, Some(&value));
                    records.insert(key, value);
                }
                if next(15) == 0 {
                    let listed: Vec<(String, Vec<u8>)> = records.clone().into_iter().collect();
                    view = EtcdView::relisted(&view, P, &listed);
                }
                let _ = apply_whole(&view, &mut whole);
                let _ = f1.apply(&view, &mut every);
                let at = format!("sequence {sequence}, step {step}");
                assert_eq!(every.state(), whole.state(), "{at}: every edit");
                assert_eq!(every.flows(), whole.flows(), "{at}: every edit");
                if step % 7 == 6 {
                    let _ = f7.apply(&view, &mut seventh);
                    assert_eq!(seventh.state(), whole.state(), "{at}: every seventh edit");
                    assert_eq!(seventh.flows(), whole.flows(), "{at}: every seventh edit");
                }
            }
        }
    }
}
