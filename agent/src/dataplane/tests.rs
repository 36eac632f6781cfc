//! The dataplane's logic over the in-memory node (`fake.rs`), without root:
//! ADD, DEL, CHECK, GC, adoption at restart, live limits, and every
//! rollback branch of `wire`, each ending with the world consistent: what a
//! failed ADD made is gone, what a DEL owned is gone, and the switch holds
//! exactly the flows the dataplane believes it holds.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use cni::protocol::{Command, Request};
use cni::spec::{Attachment, CniError, CniResult, ErrorCode};
use ovs_flows::pipeline::{Mode, NodeState};
use ovs_flows::{Action, Ipv4Prefix};
use serde_json::json;

use super::fake::{Fake, Op};
use super::*;
use crate::bandwidth::Rate;
use crate::ipam::IpamStore;
use crate::metrics::Metrics;

/// A scratch directory for the IPAM log, removed at drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("k8s-ovs-dataplane-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const SUBNET: &str = "172.11.0.0/22";

/// One node: a dataplane over a fake world, namespace `red` at VNI 100.
struct Node {
    dp: Dataplane<Fake, Fake, Fake>,
    fake: Fake,
    _dir: Scratch,
}

/// A started node: its base flows on the switch, as the agent starts.
async fn node(datapath: DatapathType) -> Node {
    let mut n = node_on(Fake::default(), Scratch::new(), datapath);
    n.dp.full_reconcile().await.expect("the base flows");
    n.fake.world().calls.clear();
    n
}

fn node_on(fake: Fake, dir: Scratch, datapath: DatapathType) -> Node {
    let subnet: Ipv4Network = SUBNET.parse().expect("subnet");
    let ipam = IpamStore::open(&dir.0, subnet).expect("ipam");
    let mut state = NodeState::new(
        Mode::MultiTenant,
        "192.0.2.11".parse().expect("ip"),
        prefix_of(subnet),
        Ipv4Prefix::new("172.11.0.0".parse().expect("ip"), 16),
        Ipv4Prefix::new("10.96.0.0".parse().expect("ip"), 12),
    );
    state.vnis = BTreeMap::from([("red".to_string(), 100), ("blue".to_string(), 200)]);
    let settings = NodeSettings {
        bridge: "br0".into(),
        pod_mtu: 1450,
        datapath,
        node_name: "n1".into(),
        ovs_rundir: None,
    };
    let metrics = Arc::new(Metrics::default());
    let edges = Edges { switch: fake.clone(), vswitch: fake.clone(), host: fake.clone() };
    let dp = Dataplane::new(settings, edges, ipam, state, 1, metrics);
    Node { dp, fake, _dir: dir }
}

fn req(command: Command, cid: &str, name: &str) -> Request {
    Request {
        container_id: cid.into(),
        netns: format!("/run/netns/{name}"),
        ifname: "eth0".into(),
        pod_namespace: Some("red".into()),
        pod_name: Some(name.into()),
        ..Request::new(command)
    }
}

/// An ADD asking for an egress limit through runtimeConfig.
fn limited(cid: &str, name: &str, egress_bps: u64) -> Request {
    let bw = json!({"bandwidth": {"egressRate": egress_bps, "egressBurst": 100_000}});
    Request { runtime_config: Some(bw), ..req(Command::Add, cid, name) }
}

fn ip_of(r: &CniResult) -> String {
    r.ips[0].address.split('/').next().unwrap_or_default().to_string()
}

impl Node {
    async fn add(&mut self, cid: &str, name: &str) -> Result<CniResult, CniError> {
        self.dp.add(&req(Command::Add, cid, name)).await
    }

    /// The switch holds exactly what the dataplane committed, and that is
    /// the whole pipeline of the dataplane's state, computed afresh (plus
    /// the service flows kept after a start).
    fn assert_switch_in_step(&self) {
        let w = self.fake.world();
        let show = |f: &FlowSet| f.to_strings();
        assert_eq!(show(&w.flows), show(&self.dp.desired()), "the switch and the dataplane disagree");
        let mut whole = ovs_flows::pipeline::pipeline(self.dp.state(), self.dp.pipeline.round());
        for f in self.dp.kept_service_flows.iter().flat_map(FlowSet::iter) {
            if !whole.contains(&f.key()) {
                whole.insert(f.clone());
            }
        }
        assert_eq!(show(&w.flows), show(&whole), "the switch's flows are not the whole pipeline's");
        let meters: BTreeMap<u32, Meter> = w.meters.clone();
        assert_eq!(meters, self.dp.meters, "the switch's meters and the dataplane's disagree");
    }

    /// Nothing of any pod is left: no veth, ifb, port, meter, pod flow or IP.
    fn assert_no_pod_left(&self) {
        self.assert_switch_in_step();
        let w = self.fake.world();
        assert!(w.veths.is_empty(), "veths left: {:?}", w.veths.keys());
        assert!(w.links.is_empty(), "links left: {:?}", w.links);
        assert!(w.ports.is_empty(), "ports left: {:?}", w.ports.keys());
        assert!(w.meters.is_empty(), "meters left: {:?}", w.meters);
        assert!(w.shaping.is_empty(), "shaping left: {:?}", w.shaping);
        let pod_flows = w.flows.iter().filter(|f| f.cookie.category() == Some(Category::Pod)).count();
        assert_eq!(pod_flows, 0, "pod flows left");
        assert!(self.dp.pods.is_empty(), "the dataplane still knows pods");
        assert!(self.dp.ipam.allocations().is_empty(), "IPs left: {:?}", self.dp.ipam.allocations());
    }

    fn pod_flows(&self, ofport: u32) -> Vec<ovs_flows::Flow> {
        let w = self.fake.world();
        w.flows
            .iter()
            .filter(|f| f.cookie.owner() == Cookie::new(1, Category::Pod, ofport).owner())
            .cloned()
            .collect()
    }
}

use ovs_flows::Cookie;

/// What a restarted agent does first: adopts the pods found on the
/// bridge's ports (their external_ids); how many.
async fn adopt_ports(n: &mut Node) -> usize {
    let ports = n.fake.list_ports("br0").await.expect("ports");
    let adopted: Vec<PodRecord> = ports
        .iter()
        .filter_map(|p| PodRecord::from_external_ids(&p.name, p.ofport?, &p.external_ids))
        .collect();
    let count = adopted.len();
    n.dp.adopt(adopted, []);
    count
}

#[tokio::test]
async fn add_wires_veth_port_flows_and_address() {
    let mut n = node(DatapathType::Netdev).await;
    let r = n.add("c1", "a").await.expect("ADD");
    let ip = ip_of(&r);
    assert_eq!(r.ips[0].address, format!("{ip}/16"));
    let rec = n.dp.pods.values().next().cloned().expect("recorded");
    {
        let w = n.fake.world();
        let veth = w.veths.get(&rec.host_veth).expect("veth");
        assert_eq!(veth.pod_ifname, "eth0");
        assert_eq!(veth.pod_mac, MacAddr(rec.mac.0));
        assert!(veth.configured, "the pod end is up, addressed and routed");
        assert!(w.guarded.contains(&rec.host_veth), "netdev: the veth is guarded");
        let (ofport, ids) = w.ports.get(&rec.host_veth).expect("port");
        assert_eq!(*ofport, rec.ofport);
        assert_eq!(ids, &rec.external_ids());
        assert!(w.meters.is_empty() && w.links.is_empty(), "no limits asked, none made");
    }
    assert!(!n.pod_flows(rec.ofport).is_empty(), "the pod's flows are on the switch");
    n.assert_switch_in_step();
    // A repeated ADD returns the same result and makes nothing new.
    let again = n.add("c1", "a").await.expect("repeated ADD");
    assert_eq!(ip_of(&again), ip);
    assert_eq!(n.fake.world().ports.len(), 1);
    // A second pod gets another address and ofport.
    let r2 = n.add("c2", "b").await.expect("ADD b");
    assert_ne!(ip_of(&r2), ip);
    let ofports: HashSet<u32> = n.dp.pods.values().map(|r| r.ofport).collect();
    assert_eq!(ofports.len(), 2);
}

#[tokio::test]
async fn del_removes_everything_and_is_idempotent() {
    let mut n = node(DatapathType::Netdev).await;
    n.dp.add(&limited("c1", "a", 5_000_000)).await.expect("ADD");
    assert_eq!(n.fake.world().meters.len(), 1);
    n.dp.del(&req(Command::Del, "c1", "a")).await.expect("DEL");
    n.assert_no_pod_left();
    n.dp.del(&req(Command::Del, "c1", "a")).await.expect("DEL again");
    n.dp.del(&req(Command::Del, "never", "x")).await.expect("DEL of an unknown attachment");
    n.assert_no_pod_left();
}

#[tokio::test]
async fn del_that_cannot_remove_the_flows_keeps_the_pod_for_a_retry() {
    let mut n = node(DatapathType::Netdev).await;
    n.add("c1", "a").await.expect("ADD");
    n.fake.world().fail(Op::Bundle);
    let e = n.dp.del(&req(Command::Del, "c1", "a")).await.expect_err("the bundle fails");
    assert!(e.to_string().contains("removing the pod's flows failed"), "{e}");
    assert_eq!(n.dp.pods.len(), 1, "the pod is still known");
    assert_eq!(n.fake.world().veths.len(), 1, "nothing was torn down half way");
    n.assert_switch_in_step();
    n.dp.del(&req(Command::Del, "c1", "a")).await.expect("the retry");
    n.assert_no_pod_left();
}

#[tokio::test]
async fn kernel_datapath_shapes_egress_with_an_ifb_and_del_removes_it() {
    let mut n = node(DatapathType::System).await;
    n.dp.add(&limited("c1", "a", 5_000_000)).await.expect("ADD");
    {
        let w = n.fake.world();
        assert!(w.meters.is_empty(), "no meter on the kernel datapath");
        assert_eq!(w.links.len(), 1, "the egress ifb");
        assert!(w.shaping.values().all(|l| l.egress.is_some()));
    }
    n.dp.del(&req(Command::Del, "c1", "a")).await.expect("DEL");
    n.assert_no_pod_left();
}

#[tokio::test]
async fn netdev_egress_is_a_meter_added_before_the_flows_that_name_it() {
    let mut n = node(DatapathType::Netdev).await;
    n.dp.add(&limited("c1", "a", 5_000_000)).await.expect("ADD");
    let rec = n.dp.pods.values().next().cloned().expect("pod");
    let want = meter::egress_meter(rec.ofport, &Rate { bits_per_sec: 5_000_000, burst_bits: 100_000 });
    assert_eq!(n.fake.world().meters.get(&rec.ofport), Some(&want));
    // The two that let its packets on (its drop flow polices nothing).
    let guard: Vec<_> = n
        .pod_flows(rec.ofport)
        .into_iter()
        .filter(|f| f.table == Table::SpoofGuard.id() && f.priority == 100)
        .collect();
    assert_eq!(guard.len(), 2);
    assert!(guard.iter().all(|f| f.actions.first() == Some(&Action::Meter(rec.ofport))), "{guard:?}");
    let calls = n.fake.world().calls.clone();
    let meter_at = calls.iter().position(|c| c.starts_with("meter Add")).expect("meter added");
    let bundle_at = calls.iter().position(|c| c.starts_with("bundle")).expect("bundle sent");
    assert!(meter_at < bundle_at, "the meter must exist before the flows naming it: {calls:?}");
    assert!(n.fake.world().shaping.is_empty(), "no tc share: the meter is the whole limit");
    n.assert_switch_in_step();
    // CHECK reads the meter back.
    n.dp.check(&req(Command::Check, "c1", "a")).await.expect("CHECK");
}

#[tokio::test]
async fn live_limits_change_the_meter_and_removing_them_deletes_it_after_the_flows() {
    let mut n = node(DatapathType::Netdev).await;
    n.add("c1", "a").await.expect("ADD");
    let rec = n.dp.pods.values().next().cloned().expect("pod");
    let annotations = |v: Option<&str>| -> PodAnnotations {
        let mut a = BTreeMap::new();
        if let Some(v) = v {
            a.insert(bandwidth::EGRESS_ANNOTATION.to_string(), v.to_string());
        }
        BTreeMap::from([(PodName::new("red", "a"), a)])
    };
    n.dp.on_pods(&annotations(Some("5M"))).await;
    assert_eq!(n.fake.world().meters.get(&rec.ofport).map(|m| m.kbps), Some(5_000));
    n.assert_switch_in_step();
    n.dp.on_pods(&annotations(Some("8M"))).await;
    assert_eq!(n.fake.world().meters.get(&rec.ofport).map(|m| m.kbps), Some(8_000));
    // The same again changes nothing on the switch.
    let calls = n.fake.world().calls.len();
    n.dp.on_pods(&annotations(Some("8M"))).await;
    assert_eq!(n.fake.world().calls.len(), calls);
    // An invalid value keeps the limit.
    n.dp.on_pods(&annotations(Some("-5M"))).await;
    assert_eq!(n.fake.world().meters.get(&rec.ofport).map(|m| m.kbps), Some(8_000));
    // Removed: flows stop naming the meter, then it goes (the fake would
    // have deleted the pod's flows with it otherwise).
    n.dp.on_pods(&annotations(None)).await;
    assert!(n.fake.world().meters.is_empty());
    // Its two flows that let packets on, and its drop flow.
    assert_eq!(n.pod_flows(rec.ofport).iter().filter(|f| f.table == Table::SpoofGuard.id()).count(), 3);
    n.assert_switch_in_step();
}

#[tokio::test]
async fn check_fails_for_each_part_that_is_gone_or_changed() {
    let mut n = node(DatapathType::Netdev).await;
    let r = n.dp.add(&limited("c1", "a", 5_000_000)).await.expect("ADD");
    let rec = n.dp.pods.values().next().cloned().expect("pod");
    let check =
        |prev: Option<serde_json::Value>| Request { prev_result: prev, ..req(Command::Check, "c1", "a") };
    let prev = serde_json::to_value(&r).expect("json");
    n.dp.check(&check(Some(prev.clone()))).await.expect("CHECK of a whole attachment");

    let mut other = prev.clone();
    other["ips"][0]["address"] = json!("172.11.3.3/16");
    let e = n.dp.check(&check(Some(other))).await.expect_err("prevResult names another IP");
    assert_eq!(e.code, ErrorCode::InvalidNetworkConfig as u32);

    let e = n.dp.check(&req(Command::Check, "nope", "x")).await.expect_err("unknown");
    assert_eq!(e.code, ErrorCode::UnknownContainer as u32);

    let meter = n.fake.world().meters.get(&rec.ofport).copied().expect("meter");
    n.fake.world().meters.insert(rec.ofport, Meter { kbps: 1, ..meter });
    let e = n.dp.check(&check(None)).await.expect_err("meter changed");
    assert!(e.details.contains("installed meter"), "{e:?}");
    n.fake.world().meters.insert(rec.ofport, meter);

    n.fake.world().ports.remove(&rec.host_veth);
    let e = n.dp.check(&check(None)).await.expect_err("port gone");
    assert_eq!(e.code, ErrorCode::UnknownContainer as u32);

    if let Some(v) = n.fake.world().veths.get_mut(&rec.host_veth) {
        v.pod_mac = MacAddr([2, 0, 0, 0, 0, 1]);
    }
    let e = n.dp.check(&check(None)).await.expect_err("MAC changed");
    assert!(e.msg.contains("another MAC"), "{e:?}");

    n.fake.world().veths.clear();
    let e = n.dp.check(&check(None)).await.expect_err("veth gone");
    assert_eq!(e.code, ErrorCode::UnknownContainer as u32);
}

#[tokio::test]
async fn check_fails_when_the_tc_shaping_is_gone() {
    let mut n = node(DatapathType::System).await;
    n.dp.add(&limited("c1", "a", 5_000_000)).await.expect("ADD");
    n.dp.check(&req(Command::Check, "c1", "a")).await.expect("CHECK");
    n.fake.world().shaping.clear();
    let e = n.dp.check(&req(Command::Check, "c1", "a")).await.expect_err("shaping removed by hand");
    assert!(e.msg.contains("bandwidth shaping is not as requested"), "{e:?}");
}

#[tokio::test]
async fn gc_removes_what_the_runtime_no_longer_knows_and_leaked_addresses() {
    let mut n = node(DatapathType::Netdev).await;
    n.add("keep", "a").await.expect("ADD");
    n.add("stale", "b").await.expect("ADD");
    // An address leaked by an ADD that never completed.
    n.dp.ipam.allocate(&Owner::new("leaked", "eth0")).expect("leak");
    let gc = Request {
        valid_attachments: Some(vec![Attachment { container_id: "keep".into(), ifname: "eth0".into() }]),
        ..Request::new(Command::Gc)
    };
    n.dp.gc(&gc).await.expect("GC");
    let left: Vec<String> = n.dp.pods.keys().map(|k| k.container_id.clone()).collect();
    assert_eq!(left, ["keep"]);
    let owners: Vec<String> = n.dp.ipam.allocations().into_iter().map(|(_, o)| o.container_id).collect();
    assert_eq!(owners, ["keep"]);
    assert_eq!(n.fake.world().ports.len(), 1);
    assert_eq!(n.fake.world().veths.len(), 1);
    n.assert_switch_in_step();
    let e = n.dp.gc(&Request::new(Command::Gc)).await.expect_err("GC without the list");
    assert_eq!(e.code, ErrorCode::InvalidNetworkConfig as u32);
}

/// A restarted agent: a new dataplane on the same world, adopting the pods
/// from the ports' external_ids and their limits from the switch's meters.
#[tokio::test]
async fn a_restart_adopts_the_pods_keeps_their_flows_and_meters_and_serves_them() {
    let mut n = node(DatapathType::Netdev).await;
    n.dp.add(&limited("c1", "a", 5_000_000)).await.expect("ADD a");
    n.add("c2", "b").await.expect("ADD b");
    let flows_before = n.fake.world().flows.clone();
    let meters_before = n.fake.world().meters.clone();
    let Node { fake, _dir: dir, dp } = n;
    drop(dp);

    let mut n = node_on(fake, dir, DatapathType::Netdev);
    assert_eq!(adopt_ports(&mut n).await, 2);
    n.dp.read_adopted_shaping().await;
    n.dp.full_reconcile().await.expect("reconcile");
    let strip = |fs: &FlowSet| -> Vec<String> {
        fs.iter().map(|f| Flow { cookie: f.cookie.with_round(0), ..f.clone() }.to_string()).collect()
    };
    assert_eq!(strip(&n.fake.world().flows), strip(&flows_before), "the same flows, new round");
    assert_eq!(n.fake.world().meters, meters_before, "the meter kept as it was");
    n.assert_switch_in_step();
    // It serves the adopted pods: a repeated ADD answers, DEL removes.
    n.add("c2", "b").await.expect("repeated ADD of an adopted pod");
    n.dp.del(&req(Command::Del, "c1", "a")).await.expect("DEL a");
    n.dp.del(&req(Command::Del, "c2", "b")).await.expect("DEL b");
    n.assert_no_pod_left();
}

use ovs_flows::Flow;

#[tokio::test]
async fn a_restarted_vswitchd_gets_its_meters_back_before_the_flows() {
    let mut n = node(DatapathType::Netdev).await;
    n.dp.add(&limited("c1", "a", 5_000_000)).await.expect("ADD");
    {
        let mut w = n.fake.world();
        w.flows = FlowSet::new();
        w.meters.clear();
    }
    n.dp.full_reconcile().await.expect("replay");
    n.assert_switch_in_step();
    assert_eq!(n.fake.world().meters.len(), 1);
    // A meter nobody needs (a pod deleted while the agent was down) goes.
    n.fake.world().meters.insert(77, Meter { id: 77, kbps: 1, burst_kbits: 1 });
    n.dp.resync().await.expect("resync");
    assert!(!n.fake.world().meters.contains_key(&77));
    n.assert_switch_in_step();
}

#[tokio::test]
async fn an_upgrade_moves_an_in_pod_tbf_to_a_meter() {
    let mut n = node(DatapathType::Netdev).await;
    n.add("c1", "a").await.expect("ADD");
    let rec = n.dp.pods.values().next().cloned().expect("pod");
    let tbf = Rate { bits_per_sec: 5_000_000, burst_bits: 100_000 };
    n.fake.world().pod_tbfs.insert((PathBuf::from(&rec.netns), rec.key.ifname.clone()), tbf);
    let Node { fake, _dir: dir, dp } = n;
    drop(dp);
    let mut n = node_on(fake, dir, DatapathType::Netdev);
    n.dp.adopt(vec![PodRecord { limits: Limits::NONE, ..rec.clone() }], []);
    n.dp.read_adopted_shaping().await;
    n.dp.full_reconcile().await.expect("reconcile");
    assert!(n.fake.world().pod_tbfs.is_empty(), "the in-pod tbf is removed");
    assert_eq!(n.fake.world().meters.get(&rec.ofport), Some(&meter::egress_meter(rec.ofport, &tbf)));
    n.assert_switch_in_step();
}

// --- the rollback branches of `wire`: each leaves nothing behind ---

async fn failed_add(op: Op, datapath: DatapathType, request: Request) -> (Node, CniError) {
    let mut n = node(datapath).await;
    n.fake.world().fail(op);
    let e = n.dp.add(&request).await.expect_err("the ADD fails");
    (n, e)
}

#[tokio::test]
async fn rollback_when_the_veth_cannot_be_made() {
    let (n, e) = failed_add(Op::WirePod, DatapathType::Netdev, req(Command::Add, "c1", "a")).await;
    assert!(e.msg.contains("wiring the pod interface failed"), "{e:?}");
    n.assert_no_pod_left();
}

#[tokio::test]
async fn rollback_when_the_pod_end_cannot_be_configured() {
    let (n, e) = failed_add(Op::ConfigurePod, DatapathType::Netdev, limited("c1", "a", 5_000_000)).await;
    assert!(e.msg.contains("wiring the pod interface failed"), "{e:?}");
    n.assert_no_pod_left();
}

/// A host veth left by an ADD the agent did not finish (it crashed) is
/// replaced; a pod that has the interface already fails the ADD and keeps it.
#[tokio::test]
async fn a_leftover_veth_is_replaced_and_a_taken_ifname_refused() {
    let mut n = node(DatapathType::Netdev).await;
    let key = PodKey { container_id: "c1".into(), ifname: "eth0".into() };
    let leftover = fake::Veth {
        pod_netns: PathBuf::from("/run/netns/gone"),
        pod_ifname: "eth0".into(),
        pod_mac: MacAddr([0; 6]),
        configured: false,
    };
    n.fake.world().veths.insert(host_veth_name(&key), leftover);
    n.add("c1", "a").await.expect("ADD over a leftover");
    let veth = n.fake.world().veths.get(&host_veth_name(&key)).cloned().expect("veth");
    assert_eq!(veth.pod_netns, PathBuf::from("/run/netns/a"));
    n.assert_switch_in_step();
    // Another attachment into the same pod's eth0.
    let e = n.dp.add(&req(Command::Add, "c2", "a")).await.expect_err("eth0 is taken");
    assert!(e.msg.contains("wiring the pod interface failed"), "{e:?}");
    assert_eq!(n.fake.world().veths.len(), 1, "the first pod's veth stays");
    assert_eq!(n.dp.pods.len(), 1);
    n.dp.del(&req(Command::Del, "c1", "a")).await.expect("DEL");
    n.assert_no_pod_left();
}

#[tokio::test]
async fn rollback_when_the_veth_cannot_be_guarded() {
    let (n, e) = failed_add(Op::GuardVeth, DatapathType::Netdev, req(Command::Add, "c1", "a")).await;
    assert!(e.msg.contains("guarding the pod veth failed"), "{e:?}");
    n.assert_no_pod_left();
}

#[tokio::test]
async fn rollback_when_the_meter_cannot_be_added() {
    let (n, e) = failed_add(Op::MeterMod, DatapathType::Netdev, limited("c1", "a", 5_000_000)).await;
    assert!(e.msg.contains("egress meter failed"), "{e:?}");
    n.assert_no_pod_left();
}

#[tokio::test]
async fn rollback_when_ovsdb_cannot_add_the_port() {
    let (n, e) = failed_add(Op::AddPort, DatapathType::Netdev, limited("c1", "a", 5_000_000)).await;
    assert!(e.msg.contains("adding the OVS port failed"), "{e:?}");
    n.assert_no_pod_left();
}

#[tokio::test]
async fn rollback_when_the_bundle_fails() {
    let (n, e) = failed_add(Op::Bundle, DatapathType::Netdev, limited("c1", "a", 5_000_000)).await;
    assert!(e.msg.contains("installing the pod's flows failed"), "{e:?}");
    n.assert_no_pod_left();
}

#[tokio::test]
async fn rollback_when_the_shaping_cannot_be_installed() {
    let mut r = limited("c1", "a", 5_000_000);
    r.runtime_config = Some(json!({"bandwidth": {"ingressRate": 10_000_000, "ingressBurst": 100_000}}));
    let (n, e) = failed_add(Op::ApplyShaping, DatapathType::System, r).await;
    assert!(e.msg.contains("bandwidth shaping failed"), "{e:?}");
    n.assert_no_pod_left();
}

#[tokio::test]
async fn rollback_when_the_port_and_the_bundle_both_fail() {
    let mut n = node(DatapathType::Netdev).await;
    n.fake.world().fail(Op::AddPort);
    n.fake.world().fail(Op::Bundle);
    n.dp.add(&req(Command::Add, "c1", "a")).await.expect_err("fails");
    n.assert_no_pod_left();
}

#[tokio::test]
async fn a_bad_bandwidth_value_fails_the_add_before_anything_exists() {
    let r = Request {
        runtime_config: Some(json!({"bandwidth": {"egressRate": 5_000_000}})),
        ..req(Command::Add, "c1", "a")
    };
    let mut n = node(DatapathType::Netdev).await;
    let e = n.dp.add(&r).await.expect_err("a rate without burst");
    assert_eq!(e.code, ErrorCode::InvalidPodConfig as u32);
    assert!(n.fake.world().calls.is_empty(), "nothing was touched: {:?}", n.fake.world().calls);
    n.assert_no_pod_left();
}

/// ovs-vswitchd gives the port another ofport than requested (the number
/// is held by a port the agent did not know): the pod's flows and meter
/// follow the number it got, and nothing is left at the requested one.
#[tokio::test]
async fn an_ofport_request_not_honoured_moves_the_flows_and_the_meter() {
    let mut n = node(DatapathType::Netdev).await;
    let requested = n.dp.free_ofport();
    n.fake.world().foreign_ofports.insert(requested);
    n.dp.add(&limited("c1", "a", 5_000_000)).await.expect("ADD");
    let rec = n.dp.pods.values().next().cloned().expect("pod");
    assert_ne!(rec.ofport, requested);
    assert_eq!(n.fake.world().ports.get(&rec.host_veth).map(|p| p.0), Some(rec.ofport));
    assert!(n.pod_flows(requested).is_empty(), "flows left at the requested ofport");
    assert!(!n.pod_flows(rec.ofport).is_empty());
    let meters: Vec<u32> = n.fake.world().meters.keys().copied().collect();
    assert_eq!(meters, [rec.ofport]);
    n.assert_switch_in_step();
}

/// Namespace ids survive a restart: the new agent reads them from the pods'
/// flows, and keeps the ids only the kept service flows name (a namespace
/// with services and no pods here) reserved with their SERVICE_VNI flows,
/// so until its first Service list every kept service flow still points at
/// its own namespace. (Assigned afresh, blue would take red's id and red's
/// service would check blue's VNI.)
#[tokio::test]
async fn a_restart_keeps_the_namespace_ids_the_kept_service_flows_name() {
    use ovs_flows::pipeline::{Protocol, Service, ServicePort};
    let mut n = node(DatapathType::Netdev).await;
    let vnis = BTreeMap::from([("kube-system".to_string(), 0)]);
    let ops = n.dp.pipeline.set_vnis(&vnis);
    n.dp.commit(ops).await.expect("VNIs");
    n.add("c1", "a").await.expect("ADD red/a");
    let dns = Service {
        ip: "10.96.0.10".parse().expect("ip"),
        namespace: "kube-system".into(),
        ports: vec![ServicePort { protocol: Protocol::Udp, port: 53 }],
    };
    let web = Service {
        ip: "10.96.5.5".parse().expect("ip"),
        namespace: "red".into(),
        ports: vec![ServicePort { protocol: Protocol::Tcp, port: 80 }],
    };
    let services = Services::of(BTreeMap::from([(dns.ip, dns), (web.ip, web)]));
    n.dp.on_services(&services).await.expect("services");
    let blue = Request { pod_namespace: Some("blue".into()), ..req(Command::Add, "c2", "b") };
    n.dp.add(&blue).await.expect("ADD blue/b");
    let ids_before = n.dp.state().namespace_ids.clone();
    assert_eq!(
        ids_before,
        BTreeMap::from([("red".into(), 1), ("kube-system".into(), 2), ("blue".into(), 3)])
    );
    let flows_before = n.fake.world().flows.clone();
    let Node { fake, _dir: dir, dp } = n;
    drop(dp);

    let mut n = node_on(fake, dir, DatapathType::Netdev);
    // Sent with the full reconcile below, as at a start.
    let _ = n.dp.pipeline.set_vnis(&vnis);
    n.dp.await_services();
    let ports = n.fake.list_ports("br0").await.expect("ports");
    let adopted = ports
        .iter()
        .filter_map(|p| PodRecord::from_external_ids(&p.name, p.ofport?, &p.external_ids))
        .collect();
    n.dp.adopt(adopted, []);
    n.dp.full_reconcile().await.expect("reconcile");
    let strip = |fs: &FlowSet| -> Vec<String> {
        fs.iter().map(|f| Flow { cookie: f.cookie.with_round(0), ..f.clone() }.to_string()).collect()
    };
    assert_eq!(strip(&n.fake.world().flows), strip(&flows_before), "a flow changed across the restart");
    assert_eq!(n.dp.state().namespace_ids, BTreeMap::from([("red".into(), 1), ("blue".into(), 3)]));
    assert!(n.dp.state().reserved_namespace_ids.contains(&2));
    // The first Service list ends the reservation: ids follow the services again.
    n.dp.on_services(&Services::of(BTreeMap::new())).await.expect("empty list");
    assert!(n.dp.state().reserved_namespace_ids.is_empty());
    n.assert_switch_in_step();
}

/// An event sends only what it changes (a join: the namespace's few flows,
/// not the node's); a bundle that fails leaves the switch as it was, and
/// the next commit, whatever its event, sends the change that was missed.
#[tokio::test]
async fn a_missed_change_goes_out_with_the_next_commit() {
    let mut n = node(DatapathType::Netdev).await;
    for (cid, name) in [("c1", "a"), ("c2", "b"), ("c3", "c")] {
        n.add(cid, name).await.expect("ADD");
    }
    use crate::etcd_source::tests::{config, netns, P};
    let mut view = EtcdView::default();
    view.apply(P, &config().0, Some(&config().1));
    let mut put_vni = |vni: u32| {
        let (key, value) = netns("red", vni);
        view.apply(P, &key, Some(&value));
        view.clone()
    };
    n.dp.on_view(&put_vni(100)).await.expect("VNI 100");
    n.assert_switch_in_step();
    n.fake.world().calls.clear();
    n.dp.on_view(&put_vni(200)).await.expect("VNI 200");
    // SOURCE_VNI x3 + DEST_VNI x2 modified, ISOLATION's and GATEWAY_REPLY's
    // flows of 100 out and of 200 in, REFUSED's of VNI 100 out and of 200 in.
    assert_eq!(n.fake.world().calls, ["bundle 11"], "a join sends only the namespace's flows");
    n.fake.world().fail(Op::Bundle);
    let missed = put_vni(300);
    n.dp.on_view(&missed).await.expect_err("the bundle fails");
    assert!(n.dp.installed_differs);
    n.fake.world().calls.clear();
    // An event that changes nothing itself still sends the missed change.
    n.dp.on_view(&missed).await.expect("the next commit");
    assert_eq!(n.fake.world().calls, ["bundle 11"]);
    n.assert_switch_in_step();
    assert!(!n.dp.installed_differs);
}

/// After the first list, a Service's change reaches the switch through the
/// services' change log: its own flows only (two in SERVICE, its
/// namespace's SERVICE_VNI flow), and the switch holds the whole pipeline.
#[tokio::test]
async fn a_service_change_sends_only_its_flows() {
    let mut n = node(DatapathType::Netdev).await;
    n.add("c1", "a").await.expect("ADD");
    let mut services = Services::listed(&[]);
    n.dp.on_services(&services).await.expect("the first list");
    let web: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "red"},
        "spec": {"clusterIP": "10.96.5.5", "ports": [{"port": 80}]}
    }))
    .expect("service");
    assert!(services.applied(&web));
    n.fake.world().calls.clear();
    n.dp.on_services(&services).await.expect("web added");
    assert_eq!(n.fake.world().calls, ["bundle 3"]);
    n.assert_switch_in_step();
    assert!(services.deleted(&web));
    n.fake.world().calls.clear();
    n.dp.on_services(&services).await.expect("web deleted");
    assert_eq!(n.fake.world().calls, ["bundle 3"]);
    n.assert_switch_in_step();
}

/// The policy view of a cluster where namespace `red` denies all ingress
/// (`podSelector: {}`, no rules) and `known` pods of it have labels.
fn deny_red_ingress(known: &[&str]) -> Arc<PolicyView> {
    use ovs_flows::policy::{LabelSelector, Policy, PolicyPod};
    let mut view = PolicyView::default();
    let deny = Policy {
        namespace: "red".into(),
        name: "deny".into(),
        pod_selector: LabelSelector::everything(),
        ingress: Some(vec![]),
        egress: None,
    };
    view.policies.insert(("red".into(), "deny".into()), deny);
    for name in known {
        let pod = PolicyPod {
            namespace: "red".into(),
            name: name.to_string(),
            ip: None,
            labels: BTreeMap::from([("app".to_string(), name.to_string())]),
            named_ports: BTreeMap::new(),
        };
        view.pods.insert(("red".into(), name.to_string()), pod);
    }
    Arc::new(view)
}

/// The switch's INGRESS_POLICY drop flow of an isolated pod at `ip`.
fn isolated(n: &Node, ip: &str) -> bool {
    let w = n.fake.world();
    let want = format!("priority=50,ip,nw_dst={ip} actions=drop");
    let found = w.flows.iter().any(|f| {
        f.table == Table::IngressPolicy.id()
            && f.cookie.category() == Some(Category::Policy)
            && f.to_string().ends_with(&want)
    });
    found
}

/// A pod that a deny policy selects is isolated by the same bundle that
/// makes it reachable at all (its LOCAL_POD flow): there is no moment when
/// it is wired and unprotected. A pod the view does not know yet is isolated
/// too (fail closed); a namespace without policies is untouched.
#[tokio::test]
async fn a_new_pod_a_deny_policy_selects_is_isolated_in_its_own_bundle() {
    let mut n = node(DatapathType::Netdev).await;
    n.dp.on_policies(deny_red_ingress(&["a"])).await.expect("the first view");
    assert_eq!(n.dp.pipeline.policy_flow_count(), 0, "no pod of red here yet");
    n.fake.world().calls.clear();
    let a = n.add("c1", "a").await.expect("ADD a");
    let bundles: Vec<String> =
        n.fake.world().calls.iter().filter(|c| c.starts_with("bundle")).cloned().collect();
    assert_eq!(bundles.len(), 1, "{bundles:?}");
    assert!(isolated(&n, &ip_of(&a)), "a is isolated by its ADD's bundle");
    let unknown = n.add("c2", "not-in-the-view").await.expect("ADD");
    assert!(isolated(&n, &ip_of(&unknown)), "a pod without labels yet is isolated (fail closed)");
    let blue =
        n.dp.add(&Request { pod_namespace: Some("blue".into()), ..req(Command::Add, "c3", "b") }).await;
    assert!(!isolated(&n, &ip_of(&blue.expect("ADD blue"))), "blue has no policy");
    n.assert_switch_in_step();
    // The policy gone: one bundle takes every drop away.
    n.fake.world().calls.clear();
    n.dp.on_policies(Arc::new(PolicyView::default())).await.expect("no policies");
    assert_eq!(n.fake.world().calls.len(), 1);
    assert!(!isolated(&n, &ip_of(&a)));
    assert_eq!(n.dp.metrics.policy_flows.load(Ordering::Relaxed), 0);
    n.assert_switch_in_step();
}

/// A restarted agent keeps the policy flows it finds until the first
/// policy view: the apiserver being slow or down never opens an isolated pod.
#[tokio::test]
async fn a_restart_keeps_the_policy_flows_until_the_first_policy_view() {
    let mut n = node(DatapathType::Netdev).await;
    n.dp.on_policies(deny_red_ingress(&["a"])).await.expect("view");
    let a = n.add("c1", "a").await.expect("ADD a");
    assert!(isolated(&n, &ip_of(&a)));
    let Node { fake, _dir: dir, dp } = n;
    drop(dp);
    let mut n = node_on(fake, dir, DatapathType::Netdev);
    adopt_ports(&mut n).await;
    n.dp.await_policies();
    n.dp.full_reconcile().await.expect("reconcile");
    assert!(isolated(&n, &ip_of(&a)), "kept across the restart");
    // The first view: here the policy is gone, so its flows go.
    n.dp.on_policies(Arc::new(PolicyView::default())).await.expect("first view");
    assert!(!isolated(&n, &ip_of(&a)), "deleted by the first view");
    n.assert_switch_in_step();
}

/// `/debug/pods` carries the node's policy facts: who a policy isolates,
/// and the rule behind each conjunction id of its flows.
#[tokio::test]
async fn node_pods_name_the_isolating_policies_and_the_rules_of_the_conjunctions() {
    use ovs_flows::policy::{Direction, PolicyRule};
    let mut n = node(DatapathType::Netdev).await;
    n.dp.on_policies(deny_red_ingress(&["a"])).await.expect("view");
    let a = n.add("c1", "a").await.expect("ADD a");
    let ip: std::net::Ipv4Addr = ip_of(&a).parse().expect("pod ip");
    let facts = n.dp.node_pods();
    assert_eq!(facts.isolated.len(), 1, "{facts:?}");
    let iso = &facts.isolated[0];
    assert_eq!((iso.ip, iso.direction), (ip, Direction::Ingress));
    assert_eq!(iso.policies.iter().map(ToString::to_string).collect::<Vec<_>>(), ["red/deny"]);
    assert!(facts.rules.is_empty(), "deny has no rules: {facts:?}");
    // A second policy admitting everything: one rule, one conjunction id.
    let mut view = (*deny_red_ingress(&["a"])).clone();
    let mut allow = view.policies[&("red".to_string(), "deny".to_string())].clone();
    allow.name = "allow".into();
    allow.ingress = Some(vec![PolicyRule { peers: None, ports: None }]);
    view.policies.insert(("red".into(), "allow".into()), allow);
    n.dp.on_policies(Arc::new(view)).await.expect("view");
    let facts = n.dp.node_pods();
    assert_eq!(facts.rules.len(), 1, "{facts:?}");
    let rule = &facts.rules[0];
    assert_eq!(
        (rule.policy.to_string(), rule.direction, rule.rule),
        ("red/allow".into(), Direction::Ingress, 0)
    );
    let flows = n.fake.world().flows.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert!(
        flows.iter().any(|f| f.contains(&format!("conj_id={},ip", rule.id))),
        "the switch has the conjunction the facts name: {flows:#?}"
    );
    let by: Vec<String> = facts.isolated[0].policies.iter().map(ToString::to_string).collect();
    assert_eq!(by, ["red/allow", "red/deny"]);
}
