//! The native OVSDB client against a private, real Open vSwitch; every
//! result is compared with what `ovs-vsctl` (run by the test) reports.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::ScratchOvs;
use k8s_ovs_agent::ovsdb::{
    BridgeSpec, Change, Client, DatapathType, OvsdbError, PortKind, PortSpec, RECONNECT_WINDOW,
};

const WAIT: Duration = Duration::from_secs(10);

async fn setup(tag: &str) -> Result<(ScratchOvs, Client)> {
    let ovs = ScratchOvs::start(tag)?;
    let client = Client::connect(&ovs.endpoint()).await.context("connect")?;
    Ok((ovs, client))
}

fn vsctl(ovs: &ScratchOvs, args: &[&str]) -> Result<String> {
    Ok(ovs.ovs.vsctl(args)?.trim().to_string())
}

#[tokio::test]
async fn lab_ovsdb_bridge_is_created_once_with_the_requested_settings() -> Result<()> {
    lab::needs_root!();
    let (ovs, client) = setup("br").await?;
    let spec = BridgeSpec::new("br0", DatapathType::Netdev);
    assert_eq!(client.ensure_bridge(&spec, WAIT).await?, Change::Created);
    assert_eq!(client.ensure_bridge(&spec, WAIT).await?, Change::Unchanged);
    assert_eq!(vsctl(&ovs, &["get", "bridge", "br0", "datapath_type"])?, "netdev");
    assert_eq!(vsctl(&ovs, &["get", "bridge", "br0", "fail_mode"])?, "secure");
    assert_eq!(vsctl(&ovs, &["get", "bridge", "br0", "protocols"])?, "[OpenFlow13, OpenFlow15]");
    assert_eq!(vsctl(&ovs, &["get", "interface", "br0", "ofport"])?, "65534");

    // A drifted setting is put back.
    vsctl(&ovs, &["set", "bridge", "br0", "fail_mode=standalone"])?;
    assert_eq!(client.ensure_bridge(&spec, WAIT).await?, Change::Updated);
    assert_eq!(vsctl(&ovs, &["get", "bridge", "br0", "fail_mode"])?, "secure");
    assert_eq!(vsctl(&ovs, &["list-br"])?, "br0");
    Ok(())
}

#[tokio::test]
async fn lab_ovsdb_a_bridge_whose_datapath_cannot_open_is_an_error() -> Result<()> {
    lab::needs_root!();
    if std::path::Path::new("/sys/module/openvswitch").exists() {
        eprintln!("kernel openvswitch module loaded: the system datapath would open, nothing to check");
        return Ok(());
    }
    let (_ovs, client) = setup("sys").await?;
    let err = client
        .ensure_bridge(&BridgeSpec::new("brsys", DatapathType::System), WAIT)
        .await
        .expect_err("no kernel datapath");
    assert!(matches!(err, OvsdbError::Interface { .. }), "{err}");
    assert!(err.to_string().contains("has no datapath"), "{err}");
    Ok(())
}

#[tokio::test]
async fn lab_ovsdb_ports_are_ensured_listed_and_deleted() -> Result<()> {
    lab::needs_root!();
    let (ovs, client) = setup("ports").await?;
    client.ensure_bridge(&BridgeSpec::new("br0", DatapathType::Netdev), WAIT).await?;

    let vxlan = PortSpec::new("vxlan0", PortKind::Vxlan)
        .option("remote_ip", "flow")
        .option("key", "flow")
        .option("dst_port", "4789")
        .ofport_request(1);
    assert_eq!(client.ensure_port("br0", &vxlan).await?, Change::Created);
    assert_eq!(client.wait_ofport("vxlan0", WAIT).await?, 1);
    assert_eq!(client.ensure_port("br0", &vxlan).await?, Change::Unchanged);
    assert_eq!(vsctl(&ovs, &["get", "interface", "vxlan0", "ofport"])?, "1");
    assert_eq!(vsctl(&ovs, &["get", "interface", "vxlan0", "type"])?, "vxlan");
    assert_eq!(vsctl(&ovs, &["get", "interface", "vxlan0", "options:key"])?, "flow");

    let tun0 = PortSpec::new("tun0", PortKind::Internal).ofport_request(2).mtu_request(1450);
    assert_eq!(client.add_port("br0", &tun0, WAIT).await?, 2);
    let dev = ovs.ns.netns.ip(&["-o", "link", "show", "tun0"])?;
    assert!(dev.contains("mtu 1450"), "{dev}");

    // A pod's host-side veth, made by the test, with the pod's identity.
    ovs.ns.netns.ip(&["link", "add", "vethpod1", "type", "veth", "peer", "name", "vethpod1p"])?;
    ovs.ns.netns.ip(&["link", "set", "vethpod1", "up"])?;
    let pod = PortSpec::new("vethpod1", PortKind::System)
        .external_id("k8s-ovs.pod", "default/web-1")
        .external_id("k8s-ovs.ip", "10.244.1.5");
    let ofport = client.add_port("br0", &pod, WAIT).await?;
    assert_eq!(vsctl(&ovs, &["get", "interface", "vethpod1", "ofport"])?, ofport.to_string());
    assert_eq!(
        vsctl(&ovs, &["get", "interface", "vethpod1", "external_ids:k8s-ovs.pod"])?,
        r#""default/web-1""#
    );

    // Changed identity: the port is updated in place, keeping its ofport.
    let moved = pod.clone().external_id("k8s-ovs.ip", "10.244.1.6");
    assert_eq!(client.ensure_port("br0", &moved).await?, Change::Updated);
    assert_eq!(client.wait_ofport("vethpod1", WAIT).await?, ofport);
    // add_port of a port that exists (an ADD cut short, retried): ensured
    // like ensure_port, its ofport returned.
    let retried = moved.clone().external_id("k8s-ovs.ip", "10.244.1.7");
    assert_eq!(client.add_port("br0", &retried, WAIT).await?, ofport);
    assert_eq!(vsctl(&ovs, &["get", "interface", "vethpod1", "external_ids:k8s-ovs.ip"])?, r#""10.244.1.7""#);
    assert_eq!(client.ensure_port("br0", &retried).await?, Change::Unchanged);
    assert_eq!(client.ensure_port("br0", &moved).await?, Change::Updated);
    assert_eq!(vsctl(&ovs, &["get", "interface", "vethpod1", "external_ids:k8s-ovs.ip"])?, r#""10.244.1.6""#);

    let listed = client.list_ports("br0").await?;
    let names: Vec<&str> = listed.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["br0", "tun0", "vethpod1", "vxlan0"]);
    let mut vsctl_ports: Vec<String> =
        vsctl(&ovs, &["list-ports", "br0"])?.lines().map(str::to_string).collect();
    vsctl_ports.push("br0".into());
    vsctl_ports.sort();
    assert_eq!(names, vsctl_ports);
    let p = listed.iter().find(|p| p.name == "vethpod1").context("pod port listed")?;
    assert_eq!(p.ofport, Some(ofport));
    assert_eq!(p.kind, PortKind::System);
    assert_eq!(p.external_ids.get("k8s-ovs.pod").map(String::as_str), Some("default/web-1"));
    assert_eq!(p.external_ids.get("k8s-ovs.ip").map(String::as_str), Some("10.244.1.6"));
    let v = listed.iter().find(|p| p.name == "vxlan0").context("vxlan listed")?;
    assert_eq!((v.kind.as_str(), v.ofport), ("vxlan", Some(1)));

    assert!(client.del_port("br0", "vethpod1").await?);
    assert!(!client.del_port("br0", "vethpod1").await?, "gone is success");
    assert!(!client.del_port("nosuchbr", "tun0").await?);
    assert_eq!(vsctl(&ovs, &["list-ports", "br0"])?, "tun0\nvxlan0");
    Ok(())
}

#[tokio::test]
async fn lab_ovsdb_failures_name_their_cause() -> Result<()> {
    lab::needs_root!();
    let (ovs, client) = setup("fail").await?;
    client.ensure_bridge(&BridgeSpec::new("br0", DatapathType::Netdev), WAIT).await?;
    client.ensure_bridge(&BridgeSpec::new("br1", DatapathType::Netdev), WAIT).await?;

    let err = client
        .add_port("br0", &PortSpec::new("nosuchdev", PortKind::System), WAIT)
        .await
        .expect_err("no device");
    assert!(matches!(&err, OvsdbError::Interface { name, .. } if name == "nosuchdev"), "{err}");
    assert!(err.to_string().contains("could not open network device nosuchdev"), "{err}");

    let err =
        client.ensure_port("nobr", &PortSpec::new("p", PortKind::Internal)).await.expect_err("no bridge");
    assert!(matches!(err, OvsdbError::NoSuchBridge(_)), "{err}");

    let err =
        client.add_port("nobr", &PortSpec::new("p", PortKind::Internal), WAIT).await.expect_err("no bridge");
    assert!(matches!(err, OvsdbError::NoSuchBridge(_)), "{err}");
    assert_eq!(vsctl(&ovs, &["--columns=name", "find", "interface", "name=p"])?, "", "nothing left of it");

    client.add_port("br1", &PortSpec::new("p1", PortKind::Internal), WAIT).await?;
    let err =
        client.ensure_port("br0", &PortSpec::new("p1", PortKind::Internal)).await.expect_err("other bridge");
    assert!(matches!(err, OvsdbError::PortOnOtherBridge { .. }), "{err}");
    let err = client
        .add_port("br0", &PortSpec::new("p1", PortKind::Internal), WAIT)
        .await
        .expect_err("other bridge");
    assert!(matches!(err, OvsdbError::PortOnOtherBridge { .. }), "{err}");
    assert_eq!(vsctl(&ovs, &["port-to-br", "p1"])?, "br1");

    let err = client.wait_ofport("neverexisted", WAIT).await.expect_err("absent");
    assert!(err.to_string().contains("no such interface"), "{err}");
    Ok(())
}

#[tokio::test]
async fn lab_ovsdb_bridge_external_ids_keep_other_keys() -> Result<()> {
    lab::needs_root!();
    let (ovs, client) = setup("extid").await?;
    client.ensure_bridge(&BridgeSpec::new("br0", DatapathType::Netdev), WAIT).await?;
    vsctl(&ovs, &["set", "bridge", "br0", "external_ids:other=keep"])?;
    assert_eq!(client.bridge_external_id("br0", "k8s-ovs.round").await?, None);
    client.set_bridge_external_id("br0", "k8s-ovs.round", "7").await?;
    client.set_bridge_external_id("br0", "k8s-ovs.round", "8").await?;
    assert_eq!(client.bridge_external_id("br0", "k8s-ovs.round").await?.as_deref(), Some("8"));
    assert_eq!(vsctl(&ovs, &["get", "bridge", "br0", "external_ids:k8s-ovs.round"])?, "\"8\"");
    assert_eq!(vsctl(&ovs, &["get", "bridge", "br0", "external_ids:other"])?, "keep");
    let err = client.set_bridge_external_id("nobr", "k", "v").await.expect_err("no bridge");
    assert!(matches!(err, OvsdbError::NoSuchBridge(_)), "{err}");
    Ok(())
}

#[tokio::test]
async fn lab_ovsdb_hundred_ports_in_one_transaction() -> Result<()> {
    lab::needs_root!();
    let (ovs, client) = setup("many").await?;
    client.ensure_bridge(&BridgeSpec::new("br0", DatapathType::Netdev), WAIT).await?;
    let specs: Vec<PortSpec> = (0..100)
        .map(|i| {
            PortSpec::new(&format!("int{i}"), PortKind::Internal).external_id("k8s-ovs.seq", &i.to_string())
        })
        .collect();
    let changes = client.ensure_ports("br0", &specs).await?;
    assert!(changes.iter().all(|c| *c == Change::Created), "{changes:?}");
    client.wait_applied(WAIT).await?;
    let listed = client.list_ports("br0").await?;
    assert_eq!(listed.len(), 101);
    assert!(listed.iter().all(|p| p.ofport.is_some()), "every port got an ofport");
    assert_eq!(vsctl(&ovs, &["list-ports", "br0"])?.lines().count(), 100);
    // Again: nothing to do, nothing written.
    let again = client.ensure_ports("br0", &specs).await?;
    assert!(again.iter().all(|c| *c == Change::Unchanged));
    Ok(())
}

#[test]
fn lab_ovsdb_tcp_endpoint_works_like_unix() -> Result<()> {
    lab::needs_root!();
    let ovs = ScratchOvs::start("tcp")?;
    // Listen on the scratch namespace's own loopback only.
    ovs.ovs.appctl(&["-t", "ovsdb-server", "ovsdb-server/add-remote", "ptcp:6640:127.0.0.1"])?;
    let ns_path = ovs.ns.path();
    // The client's socket must be opened inside that namespace: run the
    // whole client on a thread that entered it, with its own runtime.
    let names = std::thread::spawn(move || -> Result<Vec<String>> {
        let ns = std::fs::File::open(&ns_path)?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async {
            let client = Client::connect("tcp:127.0.0.1:6640").await?;
            client.ensure_bridge(&BridgeSpec::new("brtcp", DatapathType::Netdev), WAIT).await?;
            client.add_port("brtcp", &PortSpec::new("t0", PortKind::Internal), WAIT).await?;
            Ok(client.list_ports("brtcp").await?.into_iter().map(|p| p.name).collect())
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    assert_eq!(names, ["brtcp", "t0"]);
    assert_eq!(vsctl(&ovs, &["list-ports", "brtcp"])?, "t0");
    Ok(())
}

/// `monitors:N` from ovsdb-server's `memory/show`.
fn server_monitors(ovs: &ScratchOvs) -> Result<usize> {
    let mem = ovs.ovs.appctl(&["-t", "ovsdb-server", "memory/show"])?;
    let n = mem
        .split_whitespace()
        .find_map(|w| w.strip_prefix("monitors:"))
        .context("monitors in memory/show")?;
    Ok(n.parse()?)
}

/// Bridge `br0` with port `p0` on a stopped ovs-vswitchd: nothing is ever
/// applied, so a wait for `p0` cannot finish on its own. Also returns the
/// server's monitor count (vswitchd's own monitor has left it).
async fn setup_without_vswitchd(tag: &str) -> Result<(ScratchOvs, Client, usize)> {
    let (ovs, client) = setup(tag).await?;
    client.ensure_bridge(&BridgeSpec::new("br0", DatapathType::Netdev), WAIT).await?;
    stop_vswitchd(&ovs).await?;
    client.ensure_port("br0", &PortSpec::new("p0", PortKind::Internal)).await?;
    let baseline = server_monitors(&ovs)?;
    Ok((ovs, client, baseline))
}

/// Drives `wait` until its monitor exists on the server; it must not finish.
async fn until_watching<T: std::fmt::Debug>(
    ovs: &ScratchOvs,
    baseline: usize,
    wait: &mut std::pin::Pin<Box<impl std::future::Future<Output = T>>>,
) {
    tokio::select! {
        biased;
        r = wait => panic!("the wait cannot finish: {r:?}"),
        _ = async { while server_monitors(ovs).unwrap_or(0) <= baseline { tokio::task::yield_now().await } } => {}
    }
}

#[tokio::test]
async fn lab_ovsdb_an_abandoned_wait_leaves_no_monitor_behind() -> Result<()> {
    lab::needs_root!();
    let (ovs, client, baseline) = setup_without_vswitchd("mon").await?;
    // The caller gives up on a wait (drops its future) once the wait's
    // monitor exists on the server...
    let mut wait = Box::pin(client.wait_ofport("p0", WAIT));
    until_watching(&ovs, baseline, &mut wait).await;
    drop(wait);
    // ...and the queued cancel is processed before any later request.
    client.list_ports("br0").await?;
    assert_eq!(server_monitors(&ovs)?, baseline);
    Ok(())
}

fn ovsdb_server_pid(ovs: &ScratchOvs) -> Result<i32> {
    let pidfile = ovs.ovs.rundir().join("ovsdb-server.pid");
    Ok(std::fs::read_to_string(pidfile)?.trim().parse()?)
}

/// Blocks until ovs-vswitchd is gone (`exit`, without cleanup: its bridges
/// stay in the database).
async fn stop_vswitchd(ovs: &ScratchOvs) -> Result<()> {
    let pid = std::fs::read_to_string(ovs.ovs.rundir().join("ovs-vswitchd.pid"))?.trim().parse::<i32>()?;
    ovs.ovs.appctl(&["-t", "ovs-vswitchd", "exit"])?;
    while lab::netns::alive(pid) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[tokio::test]
async fn lab_ovsdb_the_client_rides_out_an_ovsdb_server_restart() -> Result<()> {
    lab::needs_root!();
    let (ovs, client) = setup("restart").await?;
    client.ensure_bridge(&BridgeSpec::new("br0", DatapathType::Netdev), WAIT).await?;
    client.add_port("br0", &PortSpec::new("before", PortKind::Internal), WAIT).await?;
    let first_pid = ovsdb_server_pid(&ovs)?;

    // While ovsdb-server is down a request fails, with the reason, in bounded time.
    ovs.ovs.stop_ovsdb();
    assert!(!lab::netns::alive(first_pid), "ovsdb-server {first_pid} still runs");
    let t0 = std::time::Instant::now();
    let err = client.list_ports("br0").await.expect_err("ovsdb-server is down");
    let took = t0.elapsed();
    assert!(matches!(err, OvsdbError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("is ovsdb-server running?"), "{err}");
    assert!(took < RECONNECT_WINDOW + Duration::from_secs(2), "took {took:?}");

    // Back on the same database: the same client carries on.
    ovs.ovs.start_ovsdb()?;
    assert_ne!(ovsdb_server_pid(&ovs)?, first_pid);
    let ofport = client.add_port("br0", &PortSpec::new("after", PortKind::Internal), WAIT).await?;
    assert_eq!(vsctl(&ovs, &["get", "interface", "after", "ofport"])?, ofport.to_string());
    let names: Vec<String> = client.list_ports("br0").await?.into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["after", "before", "br0"]);
    assert_eq!(client.reconnects(), 1);

    // A restart between two requests (the common case) is not even an error.
    ovs.ovs.restart_ovsdb()?;
    assert!(client.del_port("br0", "before").await?);
    client.wait_applied(WAIT).await?;
    assert_eq!(vsctl(&ovs, &["list-ports", "br0"])?, "after");
    assert_eq!(client.reconnects(), 2);
    Ok(())
}

#[tokio::test]
async fn lab_ovsdb_a_wait_resumes_on_the_new_connection() -> Result<()> {
    lab::needs_root!();
    let (ovs, client, baseline) = setup_without_vswitchd("rewait").await?;
    // The wait is still watching when ovsdb-server restarts under it.
    let mut wait = Box::pin(client.wait_ofport("p0", Duration::from_secs(20)));
    until_watching(&ovs, baseline, &mut wait).await;
    ovs.ovs.restart_ovsdb()?;
    ovs.ovs.restart_vswitchd()?;
    let ofport = wait.await?;
    assert_eq!(vsctl(&ovs, &["get", "interface", "p0", "ofport"])?, ofport.to_string());
    assert_eq!(client.reconnects(), 1);
    Ok(())
}
