//! How the node's pipeline follows etcd's view, at the cost of what
//! changed: the view keeps a log of the namespaces, nodes and config it
//! changed (`change_log`), and a [`ViewFollower`] applies only the entries
//! after the last one it saw. When those are not all in the log (a relist,
//! the applied records becoming complete, a reader that fell more than the
//! log's length behind, the first read) it compares the whole view with the
//! pipeline instead, which is always correct and costs one walk of 10,000
//! namespaces at the scale model.

use std::net::Ipv4Addr;

use ovs_flows::ofp::FlowOp;
use ovs_flows::pipeline::{NodePipeline, RemoteNode};

use crate::change_log::LogReader;
use crate::dataplane::prefix_of;
use crate::etcd_source::{mode_of, EtcdView};

/// What one entry of the view's log names as changed (its new value is
/// in the view).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Changed {
    Config,
    Namespace(String),
    Node(Ipv4Addr),
}

/// A pipeline's reader of the view.
#[derive(Debug, Clone, Default)]
pub struct ViewFollower {
    reader: LogReader,
}

impl ViewFollower {
    /// Brings `pipeline` in line with `view`; the flow operations that takes.
    pub fn apply(&mut self, view: &EtcdView, pipeline: &mut NodePipeline) -> Vec<FlowOp> {
        let Some(changed) = self.reader.read(&view.changes) else { return apply_whole(view, pipeline) };
        let mut ops = Vec::new();
        if changed.contains(&Changed::Config) {
            if let Some(cfg) = &view.config {
                ops.extend(pipeline.set_mode(mode_of(cfg.plugin)));
            }
        }
        let node_ip = pipeline.state().node_ip;
        let (mut vnis, mut nodes) = (Vec::new(), Vec::new());
        for c in changed {
            match c {
                Changed::Config => {}
                Changed::Namespace(ns) => vnis.push((ns.clone(), view.vnis.get(ns).copied())),
                Changed::Node(ip) if *ip == node_ip => {}
                Changed::Node(ip) => nodes.push((*ip, view.subnets.get(ip).map(|n| remote_node(*ip, *n)))),
            }
        }
        ops.extend(pipeline.update_vnis(vnis));
        ops.extend(pipeline.update_remote_nodes(nodes));
        ops
    }
}

fn remote_node(ip: Ipv4Addr, net: ipnetwork::Ipv4Network) -> RemoteNode {
    RemoteNode { ip, subnet: prefix_of(net) }
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
    use crate::change_log::ChangeLog;
    use crate::etcd_source::tests::{applied, complete, config, netns, subnet, CONFIG, P};

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
                name: format!("pod{port}"),
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
            let mut view = EtcdView { changes: ChangeLog::with_capacity(3), ..EtcdView::default() };
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
