//! Pod wiring through rtnetlink in namespaces the test creates (one standing
//! in for the node, one for the pod); checked with `ip`, `ethtool -k` and a
//! ping between the two namespaces.

mod common;

use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use anyhow::{Context, Result};
use common::ScratchNetns;
use k8s_ovs_agent::netlink::{setup_pod_interface, MacAddr, Netlink, NetlinkError, PodInterface};

fn pod_spec(pod: &ScratchNetns, host_name: &str, ip: &str, gateway: &str) -> Result<PodInterface> {
    let ip: Ipv4Addr = ip.parse()?;
    Ok(PodInterface {
        netns: pod.path(),
        host_name: host_name.to_string(),
        ifname: "eth0".to_string(),
        mac: MacAddr::from_ipv4(ip),
        mtu: 1450,
        address: ipnetwork::Ipv4Network::new(ip, 24)?,
        gateway: gateway.parse()?,
        offloads_off: true,
    })
}

/// `ethtool -k` lines of interest, as "name: on|off".
fn ethtool_k(ns: &ScratchNetns, dev: &str) -> Result<Vec<String>> {
    let out = ns.netns.exec(&["ethtool", "-k", dev])?;
    let wanted = [
        "tx-checksumming:",
        "rx-checksumming:",
        "tcp-segmentation-offload:",
        "generic-segmentation-offload:",
        "generic-receive-offload:",
    ];
    let mut found: Vec<String> = out
        .lines()
        .map(str::trim)
        .filter(|l| wanted.iter().any(|w| l.starts_with(w)))
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect();
    found.sort();
    Ok(found)
}

#[tokio::test]
async fn lab_netlink_pod_interface_is_wired_checked_and_removed() -> Result<()> {
    lab::needs_root!();
    let node = ScratchNetns::create("nlnode")?;
    let pod = ScratchNetns::create("nlpod")?;
    let host = Netlink::in_netns(&node.path())?;
    let spec = pod_spec(&pod, "vethnl1", "10.99.0.5", "10.99.0.1")?;

    let links = setup_pod_interface(&host, &spec).await?;
    assert_eq!(links.container.name, "eth0");
    assert_eq!(links.container.mac, Some(spec.mac));
    assert_eq!((links.container.mtu, links.host.mtu), (1450, 1450));
    assert!(links.container.up && links.host.up);

    // What `ip` sees, from outside.
    let eth0 = pod.netns.ip(&["-o", "link", "show", "eth0"])?;
    assert!(eth0.contains("mtu 1450"), "{eth0}");
    assert!(eth0.contains(&format!("link/ether {}", spec.mac)), "{eth0}");
    assert!(eth0.contains(&format!("eth0@if{}", links.host.index)), "peer is the host end: {eth0}");
    // Promiscuous from the start: ovs-vswitchd taking it as a port changes
    // nothing it would be told of (see `create_pod_veth`).
    let host_end = node.netns.ip(&["-o", "link", "show", "vethnl1"])?;
    assert!(host_end.contains("PROMISC"), "{host_end}");
    let addr = pod.netns.ip(&["-o", "-4", "addr", "show", "eth0"])?;
    assert!(addr.contains("inet 10.99.0.5/24"), "{addr}");
    let route = pod.netns.ip(&["route", "show", "default"])?;
    assert_eq!(route.trim(), "default via 10.99.0.1 dev eth0 proto static");
    // ...and what this module reads back.
    let pod_nl = Netlink::in_netns(&pod.path())?;
    assert_eq!(pod_nl.ipv4_addresses("eth0").await?, [spec.address]);
    assert_eq!(pod_nl.default_gateway().await?, Some(spec.gateway));
    assert_eq!(host.default_gateway().await?, None);
    let veth = node.netns.ip(&["-o", "link", "show", "vethnl1"])?;
    assert!(veth.contains("mtu 1450") && veth.contains("state UP"), "{veth}");
    assert!(node.netns.ip(&["link", "show", "eth0"]).is_err(), "eth0 was created inside the pod only");

    // Offloads, as ethtool reads them back: off on the pod end; the host
    // end's stay as the kernel made the veth (see `configure_veth`).
    let off = [
        "generic-receive-offload: off",
        "generic-segmentation-offload: off",
        "rx-checksumming: off",
        "tcp-segmentation-offload: off",
        "tx-checksumming: off",
    ];
    assert_eq!(ethtool_k(&pod, "eth0")?, off);
    assert!(host.offloads("vethnl1")?.any(), "the host end's offloads are left alone");

    // The wiring carries packets: the gateway address on the host end
    // answers the pod (both namespaces are the test's own).
    node.netns.ip(&["addr", "add", "10.99.0.1/24", "dev", "vethnl1"])?;
    let ping = pod.netns.exec_full(&["ping", "-c", "1", "-W", "2", "10.99.0.1"], Duration::from_secs(10))?;
    assert!(ping.success(), "ping gateway: {}{}", ping.stdout, ping.stderr);

    // A second ADD of the same interface is refused and breaks nothing.
    let again = setup_pod_interface(&host, &spec).await.expect_err("exists");
    assert!(matches!(again, NetlinkError::LinkExists(_)), "{again}");
    assert!(pod.netns.ip(&["link", "show", "eth0"]).is_ok());

    // Deleting the host end takes the pod end with it; gone is success.
    assert!(host.del_link("vethnl1").await?);
    assert!(pod.netns.ip(&["link", "show", "eth0"]).is_err());
    assert!(node.netns.ip(&["link", "show", "vethnl1"]).is_err());
    assert!(!host.del_link("vethnl1").await?);
    Ok(())
}

#[tokio::test]
async fn lab_netlink_failed_wiring_leaves_nothing_behind() -> Result<()> {
    lab::needs_root!();
    let node = ScratchNetns::create("nlnode")?;
    let pod = ScratchNetns::create("nlpod")?;
    let host = Netlink::in_netns(&node.path())?;
    // A gateway outside the pod's subnet cannot be routed to.
    let spec = pod_spec(&pod, "vethnl2", "10.99.0.5", "10.98.0.1")?;
    let err = setup_pod_interface(&host, &spec).await.expect_err("unreachable gateway");
    assert!(err.to_string().contains("default route via 10.98.0.1"), "{err}");
    assert_eq!(err.errno(), Some(libc::ENETUNREACH), "{err}");
    assert!(node.netns.ip(&["link", "show", "vethnl2"]).is_err(), "host end removed");
    assert!(pod.netns.ip(&["link", "show", "eth0"]).is_err(), "pod end removed");
    // The same pod can then be wired correctly.
    let ok = pod_spec(&pod, "vethnl2", "10.99.0.5", "10.99.0.1")?;
    setup_pod_interface(&host, &ok).await?;
    Ok(())
}

#[tokio::test]
async fn lab_netlink_reads_links_in_the_current_and_other_namespaces() -> Result<()> {
    lab::needs_root!();
    let pod = ScratchNetns::create("nlread")?;
    let here = Netlink::current()?;
    let lo = here.link("lo").await?.context("lo exists here")?;
    assert_eq!((lo.index, lo.name.as_str()), (1, "lo"));
    assert!(here.link("nosuchlink0").await?.is_none());

    let there = Netlink::in_netns(&pod.path())?;
    pod.netns
        .ip(&["link", "add", "name", "vethrd7", "mtu", "1400", "type", "veth", "peer", "name", "vethrd7p"])?;
    assert!(here.link("vethrd7").await?.is_none(), "the veth lives in the other namespace only");
    let veth = there.link("vethrd7").await?.context("vethrd7 in the namespace")?;
    assert_eq!(veth.mtu, 1400);
    assert!(there.offloads("vethrd7")?.any(), "a fresh veth has offloads on");
    let mac: MacAddr = "0a:58:01:02:03:04".parse().map_err(anyhow::Error::msg)?;
    there.set_mac_mtu("vethrd7", Some(mac), Some(1300)).await?;
    let shown = pod.netns.ip(&["-o", "link", "show", "vethrd7"])?;
    assert!(shown.contains("mtu 1300") && shown.contains("link/ether 0a:58:01:02:03:04"), "{shown}");

    // The same namespace named the way a runtime often passes CNI_NETNS:
    // /proc/<pid>/ns/net of a process inside it (one the test starts).
    let proc_path = {
        let mut sleeper = std::process::Command::new("ip")
            .args(["netns", "exec", &pod.netns.name, "sleep", "60"])
            .spawn()
            .context("spawn a process in the namespace")?;
        let path = std::path::PathBuf::from(format!("/proc/{}/ns/net", sleeper.id()));
        let target = std::fs::metadata(pod.path())?.ino();
        // `ip netns exec` enters the namespace, then becomes `sleep`.
        while std::fs::metadata(&path).map(|m| m.ino()).ok() != Some(target) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let via_proc = Netlink::in_netns(&path)?;
        let seen = via_proc.link("vethrd7").await?;
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        assert_eq!(seen.map(|l| l.index), Some(veth.index));
        path
    };
    let gone = Netlink::in_netns(&proc_path).expect_err("process gone");
    assert!(matches!(gone, NetlinkError::Netns { .. }), "{gone}");

    let bad =
        Netlink::in_netns(std::path::Path::new("/run/netns/k8s-ovs-no-such-netns")).expect_err("no netns");
    assert!(matches!(bad, NetlinkError::Netns { .. }), "{bad}");
    Ok(())
}
