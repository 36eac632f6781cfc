//! Hostile tenants against the dataplane: a pod that forges VXLAN for a
//! node's tunnel port, tags its frames with a VLAN, or sends broadcast,
//! multicast and IPv6 where nobody should hear them. Each defence is
//! measured where it matters: what the victim's network stack received.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use lab::cluster::{self, CniPod};
use lab::kube_proxy::ProxyConfig;
use lab::services::{send_udp, udp_received, wait_answer, ServiceLab};
use lab::Netns;

fn forge(from: &Netns, node: &str, vni: u32, src: &str, dst: &str, port: u16) -> Result<()> {
    let bin = cluster::bin("lab-forge")?.to_string_lossy().to_string();
    let vni = vni.to_string();
    let port = port.to_string();
    // The exit status is not the point (an ICMP error reported on the
    // socket can fail a later send): what counts is what the victim got.
    from.exec_full(&[&bin, "vxlan", node, &vni, src, dst, &port, "20"], Duration::from_secs(30))?;
    Ok(())
}

fn received(p: &CniPod) -> Result<u64> {
    udp_received(&p.netns)
}

/// A red pod sends complete VXLAN datagrams to every node's tunnel port
/// (its own node's too) with VNI 0, the victim's VNI and its own, each
/// carrying a UDP datagram for a blue pod: none reaches a blue pod. The
/// same datagram sent by a node itself does arrive (the forgery is well
/// formed), and a node cannot pass off another node's pods as its own
/// (TUNNEL_IN takes only the sending node's subnet).
#[test]
fn lab_hostile_crafted_vxlan_from_a_pod_reaches_no_one() -> Result<()> {
    lab::needs_root!();
    let mut s = ServiceLab::start(2, &[("red", 100), ("blue", 200)], ProxyConfig::default())?;
    let far = s.add_pod(2, "blue", "bluefar")?;
    let near = s.add_pod(1, "blue", "bluenear")?;
    let red = s.add_pod(1, "red", "red1")?;
    for v in [&far, &near] {
        s.serve(v, "udp", 5353)?;
    }
    let (n1, n2) = (s.lab.node(1).ip.clone(), s.lab.node(2).ip.clone());
    for node in [&n1, &n2] {
        for vni in [0, 200, 100] {
            for victim in [&far, &near] {
                let before = received(victim)?;
                forge(&red.netns, node, vni, &red.ip, &victim.ip, 5353)?;
                let got = received(victim)? - before;
                ensure!(
                    got == 0,
                    "{got} of 20 forged datagrams (to {node}:4789, VNI {vni}) reached {}",
                    victim.name
                );
            }
        }
    }
    // Control: node 1 itself (not a pod) sends the same datagram to node 2,
    // with a source inside its own subnet: it arrives, so what stopped the
    // pod's copies was the defences, not a malformed packet.
    let host1 = s.lab.node(1).netns.clone();
    let before = received(&far)?;
    forge(&host1, &n2, 200, "172.11.0.200", &far.ip, 5353)?;
    ensure!(
        received(&far)? > before,
        "a well-formed VXLAN datagram from node 1 did not arrive: the test proves nothing"
    );
    // TUNNEL_IN: node 1 claims a source in node 2's subnet: refused.
    let before = received(&far)?;
    forge(&host1, &n2, 200, "172.11.4.200", &far.ip, 5353)?;
    ensure!(received(&far)? == before, "node 2 took an inner source from its own subnet off node 1's tunnel");
    Ok(())
}

/// Frames a pod's eth0 receives (`ip -s link`): what the switch delivered
/// to it, whatever its stack then made of them.
fn rx_frames(p: &CniPod) -> Result<u64> {
    let j: serde_json::Value =
        serde_json::from_str(&p.netns.exec(&["ip", "-s", "-j", "link", "show", "eth0"])?)?;
    j[0]["stats64"]["rx"]["packets"].as_u64().context("no rx counter")
}

/// Sends `n` raw Ethernet frames out of the pod's eth0 (AF_PACKET, as a
/// pod with CAP_NET_RAW can): UDP from `src` to `dst`:5353, tagged with
/// VLAN `vlan` when given.
fn send_frames(from: &CniPod, dst: &CniPod, vlan: Option<u16>, n: u32) -> Result<()> {
    let (src_ip, dst_ip): (std::net::Ipv4Addr, std::net::Ipv4Addr) = (from.ip.parse()?, dst.ip.parse()?);
    let mut frame = lab::forge::udp_frame(src_ip, dst_ip, 40000, 5353, b"tagged");
    if let Some(id) = vlan {
        let tag = [0x81, 0x00, (id >> 8) as u8 & 0x0f, id as u8];
        frame.splice(12..12, tag);
    }
    lab::raw::send_frames(&from.netns, "eth0", &[frame], n)?;
    Ok(())
}

/// A pod sends VLAN-tagged frames (its own MAC and IP inside, so every
/// other check of SPOOF_GUARD passes) to a pod of its own tenant on the
/// other node and on its own: none is delivered; the same frames untagged
/// are (the control).
#[test]
fn lab_hostile_vlan_tagged_frames_from_a_pod_are_dropped() -> Result<()> {
    lab::needs_root!();
    let mut s = ServiceLab::start(2, &[("red", 100)], ProxyConfig::default())?;
    let a = s.add_pod(1, "red", "reda")?;
    let b = s.add_pod(2, "red", "redb")?;
    let c = s.add_pod(1, "red", "redc")?;
    for peer in [&b, &c] {
        s.serve(peer, "udp", 5353)?;
        // Resolves the neighbours and the tunnel's next hop first.
        ensure!(
            wait_answer(&a.netns, "udp", &peer.ip, 5353, Duration::from_secs(10))?.is_some(),
            "{} silent",
            peer.name
        );
        let before = udp_received(&peer.netns)?;
        send_frames(&a, peer, None, 20)?;
        let got = udp_received(&peer.netns)? - before;
        ensure!(got >= 18, "control: only {got} of 20 untagged frames reached {}", peer.name);
        let before = rx_frames(peer)?;
        send_frames(&a, peer, Some(100), 20)?;
        let got = rx_frames(peer)? - before;
        // A stray ARP refresh may land in the window; 20 tagged frames may not.
        ensure!(got < 5, "{got} frames reached {} while 20 VLAN-tagged ones were sent", peer.name);
    }
    Ok(())
}

/// Limited broadcast, multicast and IPv6 from a pod reach neither the node
/// nor another pod.
#[test]
fn lab_hostile_broadcast_multicast_and_ipv6_from_a_pod_go_nowhere() -> Result<()> {
    lab::needs_root!();
    let mut s = ServiceLab::start(2, &[("red", 100)], ProxyConfig::default())?;
    let a = s.add_pod(1, "red", "reda")?;
    let b = s.add_pod(1, "red", "redb")?;
    s.serve(&b, "udp", 5353)?;
    // A node process listening on every address of node 1.
    let host = s.lab.node(1).netns.clone();
    let listener = lab::cluster::bin("lab-echo")?.to_string_lossy().to_string();
    let argv = host.wrap(&[&listener, "serve", "udp", "0.0.0.0:5353", "node1"]);
    let mut child = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let result = (|| -> Result<()> {
        for dst in ["255.255.255.255", "224.0.0.251", "172.11.255.255"] {
            let (node_before, pod_before) = (udp_received(&host)?, received(&b)?);
            send_udp(&a.netns, dst, 5353, 20)?;
            let (node_got, pod_got) = (udp_received(&host)? - node_before, received(&b)? - pod_before);
            ensure!(node_got == 0 && pod_got == 0, "{dst}: node 1 got {node_got}, redb got {pod_got}");
        }
        // IPv6 to all nodes on the link: the other pod hears no echo
        // request (the pod's own stack answers itself, which proves nothing).
        let echos = |p: &CniPod| -> Result<u64> {
            let t = p.netns.exec(&["cat", "/proc/net/snmp6"])?;
            Ok(t.lines()
                .find_map(|l| l.strip_prefix("Icmp6InEchos"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0))
        };
        let before = echos(&b)?;
        a.netns.exec_full(
            &["ping", "-6", "-c", "5", "-i", "0.2", "-W", "1", "-I", "eth0", "ff02::1"],
            Duration::from_secs(10),
        )?;
        ensure!(echos(&b)? == before, "IPv6 echo requests from reda reached redb");
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// br0 belongs to the agent: a flow someone else wrote in its tables (here
/// the classic `priority=1000,actions=NORMAL`, which switches everything
/// past isolation) is gone within a resync period and counted; one in a
/// table no flow of ours leads to stays, harmless.
#[test]
fn lab_hostile_a_foreign_flow_is_removed_by_the_resync() -> Result<()> {
    lab::needs_root!();
    let mut s = ServiceLab::start_with(
        2,
        &[("red", 100), ("blue", 200)],
        ProxyConfig::default(),
        &["--flow-resync-secs", "1"],
    )?;
    let red = s.add_pod(1, "red", "red1")?;
    let blue = s.add_pod(1, "blue", "blue1")?;
    s.serve(&blue, "udp", 5353)?;
    let ovs = &s.lab.node(1).ovs;
    ovs.ofctl("add-flow", "br0", &["priority=1000,actions=NORMAL"])?;
    ovs.ofctl("add-flow", "br0", &["cookie=0x77,table=200,priority=1,actions=drop"])?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let dump = ovs.ofctl("dump-flows", "br0", &["--no-stats"])?;
        if !dump.contains("priority=1000") {
            ensure!(dump.contains("table=200"), "the flow in the unused table went too: {dump}");
            break;
        }
        ensure!(std::time::Instant::now() < deadline, "the NORMAL flow stayed: {dump}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Isolation holds again.
    std::thread::sleep(Duration::from_millis(200));
    let before = udp_received(&blue.netns)?;
    send_udp(&red.netns, &blue.ip, 5353, 10)?;
    ensure!(udp_received(&blue.netns)? == before, "red still reaches blue");
    let metrics = lab::cluster::agent_http(&s.lab, 1, "/metrics")?;
    ensure!(
        metrics.lines().any(|l| l.starts_with("k8s_ovs_flow_drift_total") && !l.ends_with(" 0")),
        "not counted: {metrics}"
    );
    Ok(())
}
