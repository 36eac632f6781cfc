//! Pod bandwidth shaping on the real kernel: qdiscs installed through
//! netlink, read back by this module and by `tc`, changed and removed; and
//! the rates they enforce, measured with iperf3 over a plain veth pair
//! between two namespaces the test creates (one standing in for the node,
//! one for the pod; no OVS, so the ifb path is the kernel-datapath one).

mod common;

use anyhow::{ensure, Context, Result};
use common::ScratchNetns;
use k8s_ovs_agent::bandwidth::tc::{self, PodDevices, ShapingError};
use k8s_ovs_agent::bandwidth::{Limits, Rate};
use k8s_ovs_agent::config::DatapathType;
use k8s_ovs_agent::netlink::Netlink;

const MTU: u32 = 1450;
const NODE_IP: &str = "10.77.0.1";
const POD_IP: &str = "10.77.0.2";
/// Each iperf3 run: 4 s, the first omitted by the helper (`-O 1`).
const IPERF_SECS: u32 = 4;
/// A measured rate must be within this fraction of the limit.
const TOLERANCE: f64 = 0.15;

/// A node namespace and a pod namespace joined by a veth: `host_veth` in
/// the node, `eth0` in the pod, addressed and up.
struct Pair {
    node: ScratchNetns,
    pod: ScratchNetns,
    pod_path: std::path::PathBuf,
    host_veth: String,
}

impl Pair {
    fn create(host_veth: &str) -> Result<Pair> {
        let node = ScratchNetns::create("bwnode")?;
        let pod = ScratchNetns::create("bwpod")?;
        let add = format!("link add {host_veth} mtu {MTU} type veth peer name eth0 netns {}", pod.netns.name);
        node.netns.ip(&add.split_whitespace().collect::<Vec<_>>())?;
        node.netns.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", host_veth])?;
        pod.netns.ip(&["addr", "add", &format!("{POD_IP}/24"), "dev", "eth0"])?;
        node.netns.ip(&["link", "set", host_veth, "up"])?;
        pod.netns.ip(&["link", "set", "eth0", "up"])?;
        Ok(Pair { node, pod_path: pod.path(), pod, host_veth: host_veth.to_string() })
    }

    fn devices(&self, datapath: DatapathType) -> PodDevices<'_> {
        PodDevices { host_veth: &self.host_veth, pod_netns: &self.pod_path, pod_ifname: "eth0", datapath }
    }

    /// Mbit/s from the pod to the node (the pod's egress).
    fn egress_mbps(&self) -> Result<f64> {
        lab::traffic::iperf3(&self.node.netns, NODE_IP, &self.pod.netns, IPERF_SECS, false)
    }

    /// Mbit/s from the node to the pod (the pod's ingress).
    fn ingress_mbps(&self) -> Result<f64> {
        lab::traffic::iperf3(&self.pod.netns, POD_IP, &self.node.netns, IPERF_SECS, false)
    }
}

fn limits(ingress_bps: Option<u64>, egress_bps: Option<u64>) -> Limits {
    Limits {
        ingress: ingress_bps.map(|r| Rate::with_default_burst(r, MTU)),
        egress: egress_bps.map(|r| Rate::with_default_burst(r, MTU)),
    }
}

/// `tc qdisc show dev <dev>` (optionally `ingress`) inside a namespace.
fn tc_qdisc(ns: &ScratchNetns, dev: &str) -> Result<String> {
    ns.netns.exec(&["tc", "-s", "qdisc", "show", "dev", dev])
}

/// The `rate` and `burst` words of tc's line for a root tbf, as printed.
fn tc_tbf(ns: &ScratchNetns, dev: &str) -> Result<(String, u64)> {
    let out = tc_qdisc(ns, dev)?;
    let line = out
        .lines()
        .find(|l| l.starts_with("qdisc tbf ") && l.contains(" root "))
        .with_context(|| format!("no root tbf on {dev}: {out}"))?;
    let word_after = |key: &str| -> Result<String> {
        let mut words = line.split_whitespace();
        words.find(|w| *w == key).with_context(|| format!("no {key} in {line}"))?;
        words.next().map(str::to_string).with_context(|| format!("nothing after {key} in {line}"))
    };
    let burst = word_after("burst")?;
    // tc prints bytes as "25000b", or "24Kb" for multiples of 1024.
    let bytes = if let Some(kb) = burst.strip_suffix("Kb") {
        kb.parse::<u64>()? * 1024
    } else if let Some(mb) = burst.strip_suffix("Mb") {
        mb.parse::<u64>()? * 1024 * 1024
    } else {
        burst.strip_suffix('b').with_context(|| format!("burst {burst}"))?.parse()?
    };
    Ok((word_after("rate")?, bytes))
}

fn assert_near(what: &str, got: u64, want: u64) {
    let diff = got.abs_diff(want) as f64;
    assert!(diff <= want as f64 / 100.0, "{what}: tc shows {got}, wanted {want}");
}

fn link_exists(ns: &ScratchNetns, name: &str) -> bool {
    ns.netns.ip(&["link", "show", name]).is_ok()
}

#[tokio::test]
async fn lab_bandwidth_kernel_datapath_qdiscs_installed_read_back_changed_removed() -> Result<()> {
    lab::needs_root!();
    let pair = Pair::create("vethbw1")?;
    let host = Netlink::in_netns(&pair.node.path())?;
    let devices = pair.devices(DatapathType::System);
    let ifb = tc::ifb_name("vethbw1");
    assert_eq!(ifb, "ifbvethbw1");

    // Install: ingress 10M on the veth, egress 5M through the ifb.
    let want = limits(Some(10_000_000), Some(5_000_000));
    tc::apply(&host, &devices, &want).await?;
    let got = tc::installed(&host, &devices).await?;
    assert_eq!(got.ingress.map(|r| r.bits_per_sec), Some(10_000_000));
    assert_eq!(got.egress.map(|r| r.bits_per_sec), Some(5_000_000));
    tc::check(&host, &devices, &want).await?;
    // ...as tc sees it: default bursts of 20 ms at the rate.
    let (rate, burst) = tc_tbf(&pair.node, "vethbw1")?;
    assert_eq!(rate, "10Mbit");
    assert_near("veth burst", burst, 25_000);
    let (rate, burst) = tc_tbf(&pair.node, &ifb)?;
    assert_eq!(rate, "5Mbit");
    assert_near("ifb burst", burst, 12_500);
    let ingress = tc_qdisc(&pair.node, "vethbw1")?;
    assert!(ingress.contains("qdisc ingress ffff: parent ffff:fff1"), "{ingress}");
    let filters = pair.node.netns.exec(&["tc", "filter", "show", "dev", "vethbw1", "ingress"])?;
    assert!(
        filters.contains("u32") && filters.contains(&format!("Egress Redirect to device {ifb}")),
        "{filters}"
    );
    assert!(filters.contains("protocol all"), "ETH_P_ALL in network byte order: {filters}");
    let ifb_link = pair.node.netns.ip(&["-o", "link", "show", &ifb])?;
    assert!(ifb_link.contains("state UNKNOWN") || ifb_link.contains(",UP"), "ifb is up: {ifb_link}");
    assert!(tc_qdisc(&pair.pod, "eth0")?.contains("noqueue"), "nothing inside the pod on this datapath");

    // Idempotent: the same limits again change nothing (same qdisc handle,
    // one filter).
    let before = tc_qdisc(&pair.node, &ifb)?;
    tc::apply(&host, &devices, &want).await?;
    let handle = |s: &str| s.split_whitespace().nth(2).map(str::to_string);
    assert_eq!(handle(&tc_qdisc(&pair.node, &ifb)?), handle(&before));
    assert_eq!(host.ingress_redirects(host.link("vethbw1").await?.context("veth")?.index).await?.len(), 1);

    // Change: ingress 10M -> 20M, egress removed (ifb and hook go).
    let changed = limits(Some(20_000_000), None);
    tc::apply(&host, &devices, &changed).await?;
    tc::check(&host, &devices, &changed).await?;
    assert_eq!(tc_tbf(&pair.node, "vethbw1")?.0, "20Mbit");
    assert!(!link_exists(&pair.node, &ifb), "ifb removed with the egress limit");
    assert!(!tc_qdisc(&pair.node, "vethbw1")?.contains("qdisc ingress"));
    // CHECK against the old limits names what differs.
    let e = tc::check(&host, &devices, &want).await.expect_err("changed");
    assert!(matches!(e, ShapingError::Mismatch { direction: "ingress", .. }), "{e}");

    // Egress back, then CHECK notices shaping removed behind our back.
    tc::apply(&host, &devices, &want).await?;
    pair.node.netns.exec(&["tc", "qdisc", "del", "dev", &ifb, "root"])?;
    let e = tc::check(&host, &devices, &want).await.expect_err("tbf gone");
    assert_eq!(
        e.to_string(),
        format!("egress shaping on {ifb}: wanted {}, installed none", want.egress.context("egress")?)
    );
    // ...and apply repairs it.
    tc::apply(&host, &devices, &want).await?;
    tc::check(&host, &devices, &want).await?;

    // Remove: nothing left behind; removing again is success.
    tc::remove(&host, &devices).await?;
    assert_eq!(tc::installed(&host, &devices).await?, Limits::NONE);
    let veth = tc_qdisc(&pair.node, "vethbw1")?;
    assert!(!veth.contains("tbf") && !veth.contains("ingress"), "{veth}");
    assert!(!link_exists(&pair.node, &ifb));
    tc::remove(&host, &devices).await?;
    // None = no shaping: apply with no limits is a removal too.
    tc::apply(&host, &devices, &want).await?;
    tc::apply(&host, &devices, &Limits::NONE).await?;
    assert!(!link_exists(&pair.node, &ifb));
    assert_eq!(tc::installed(&host, &devices).await?, Limits::NONE);
    Ok(())
}

/// On the netdev datapath tc shapes ingress only: egress is an OpenFlow
/// meter in the switch (`bandwidth::meter`, measured in the lab's agent
/// tests), so nothing is left inside the pod, where the pod could remove it.
/// A tbf an earlier version put there is taken over.
#[tokio::test]
async fn lab_bandwidth_netdev_datapath_leaves_the_pod_alone() -> Result<()> {
    lab::needs_root!();
    let pair = Pair::create("vethbw2")?;
    let host = Netlink::in_netns(&pair.node.path())?;
    let devices = pair.devices(DatapathType::Netdev);
    let want = limits(Some(10_000_000), Some(5_000_000));
    tc::apply(&host, &devices, &want).await?;
    tc::check(&host, &devices, &want).await?;
    assert_eq!(tc_tbf(&pair.node, "vethbw2")?.0, "10Mbit");
    assert!(!tc_qdisc(&pair.pod, "eth0")?.contains("tbf"), "nothing inside the pod");
    assert!(!link_exists(&pair.node, &tc::ifb_name("vethbw2")), "no ifb on the netdev datapath");
    assert!(!tc_qdisc(&pair.node, "vethbw2")?.contains("qdisc ingress"));
    assert_eq!(tc::installed(&host, &devices).await?, Limits { ingress: want.ingress, egress: None });

    // An earlier version's in-pod tbf: read, removed, its rate handed on.
    pair.pod.netns.exec(&[
        "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "5mbit", "burst", "12500", "latency",
        "25ms",
    ])?;
    let taken = tc::take_pod_tbf(&devices).await?.context("the in-pod tbf")?;
    assert_eq!(taken.bits_per_sec, 5_000_000);
    assert!(!tc_qdisc(&pair.pod, "eth0")?.contains("tbf"), "taken over, so removed");
    assert_eq!(tc::take_pod_tbf(&devices).await?, None);

    // DEL order: the runtime may remove the namespace first; remove still
    // cleans the host side and reports success.
    let gone = PodDevices { pod_netns: std::path::Path::new("/run/netns/k8s-ovs-no-such-pod"), ..devices };
    assert_eq!(tc::take_pod_tbf(&gone).await?, None);
    tc::remove(&host, &gone).await?;
    assert!(!tc_qdisc(&pair.node, "vethbw2")?.contains("tbf"));
    Ok(())
}

#[tokio::test]
async fn lab_bandwidth_rates_hold_on_a_veth_pair() -> Result<()> {
    lab::needs_root!();
    let pair = Pair::create("vethbw3")?;
    let host = Netlink::in_netns(&pair.node.path())?;

    let free_egress = pair.egress_mbps()?;
    let free_ingress = pair.ingress_mbps()?;

    // Kernel datapath style: ingress tbf on the veth, egress via the ifb.
    let devices = pair.devices(DatapathType::System);
    tc::apply(&host, &devices, &limits(Some(10_000_000), Some(5_000_000))).await?;
    let egress = pair.egress_mbps()?;
    let ingress = pair.ingress_mbps()?;
    // A live change of the ingress limit (the netdev datapath's tc share).
    let netdev = pair.devices(DatapathType::Netdev);
    tc::apply(&host, &netdev, &limits(Some(20_000_000), Some(5_000_000))).await?;
    let ingress_20 = pair.ingress_mbps()?;
    // Removed: full speed again.
    tc::remove(&host, &netdev).await?;
    let restored = pair.ingress_mbps()?;

    eprintln!(
        "unshaped egress {free_egress:.1} ingress {free_ingress:.1}; ifb egress 5M -> {egress:.2}, \
         ingress 10M -> {ingress:.2}; ingress 20M -> {ingress_20:.2}; removed -> {restored:.1} Mbit/s"
    );
    let within = |what: &str, got: f64, limit: f64| -> Result<()> {
        ensure!((got - limit).abs() <= limit * TOLERANCE, "{what}: {got:.2} Mbit/s, limit {limit} (±15%)");
        Ok(())
    };
    within("egress through the ifb", egress, 5.0)?;
    within("ingress on the veth", ingress, 10.0)?;
    within("ingress after the change", ingress_20, 20.0)?;
    ensure!(free_egress >= 5.0 * 10.0 && free_ingress >= 5.0 * 10.0, "unshaped is at least 5x the limits");
    ensure!(restored >= 5.0 * 20.0, "removal restores full speed: {restored:.1}");
    Ok(())
}

/// kubernetes#90838: runtimes pass a burst of u32::MAX bits, so a fresh
/// bucket lets the first seconds through unshaped. The default burst (20 ms
/// at the rate) keeps even the first second at the limit.
#[tokio::test]
async fn lab_bandwidth_default_burst_holds_from_the_first_second() -> Result<()> {
    lab::needs_root!();
    let pair = Pair::create("vethbw4")?;
    let host = Netlink::in_netns(&pair.node.path())?;
    let devices = pair.devices(DatapathType::System);
    // Counted from the first byte; each apply after a remove starts with a
    // full bucket.
    let from_first_byte =
        || lab::traffic::iperf3_omitting(&pair.node.netns, NODE_IP, &pair.pod.netns, IPERF_SECS, false, 0);

    tc::apply(&host, &devices, &limits(None, Some(5_000_000))).await?;
    let default_burst = from_first_byte()?;
    tc::remove(&host, &devices).await?;
    let runtime_burst = Rate { bits_per_sec: 5_000_000, burst_bits: u64::from(u32::MAX) };
    tc::apply(&host, &devices, &Limits { ingress: None, egress: Some(runtime_burst) }).await?;
    let huge_burst = from_first_byte()?;

    eprintln!("egress 5M from the first byte: default burst {default_burst:.2}, u32::MAX-bit burst {huge_burst:.1} Mbit/s");
    ensure!(
        (default_burst - 5.0).abs() <= 5.0 * TOLERANCE,
        "default burst: {default_burst:.2} Mbit/s over the first {IPERF_SECS} s, limit 5"
    );
    ensure!(huge_burst >= 2.0 * 5.0, "a u32::MAX-bit burst overshoots: {huge_burst:.1}");
    Ok(())
}
