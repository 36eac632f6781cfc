//! The agent's life: start-up (etcd view, bridge, gateway, round, adopted
//! pods, flows), then one loop that takes every input — CNI requests, etcd
//! and service changes, switch reconnects — one at a time, until shutdown.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ipnetwork::Ipv4Network;
use ovs_flows::client::{Client as FlowClient, ClientOptions, ConnEvent, Endpoint};
use ovs_flows::pipeline::{gateway_of, NodeState, GATEWAY_OFPORT, VXLAN_OFPORT, VXLAN_UDP_PORT};
use ovs_flows::policy::PolicyView;
use ovs_flows::Mac;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::config::{AgentConfig, DatapathType};
use crate::dataplane::{prefix_of, Dataplane, Edges, NetlinkHost, NodeSettings};
use crate::etcd_source::{self, EtcdSettings, EtcdView};
use crate::http::{self, HttpState, PodsRequest};
use crate::ipam::{Claim, IpamStore, LogState, Owner};
use crate::kube_source::{self, PodAnnotations, Services};
use crate::metrics::Metrics;
use crate::netlink::Netlink;
use crate::ovsdb::{BridgeSpec, Client as OvsdbClient, PortKind, PortSpec};
use crate::pods::PodRecord;
use crate::pods::VETH_PREFIX;
use crate::policy_source;
use crate::{cni_server, iptables, traffic};

/// Bridge external_ids key holding the flow round of the last agent start.
pub const ROUND_KEY: &str = "k8s-ovs-round";
pub const VXLAN_PORT: &str = "vxlan0";
pub const GATEWAY_PORT: &str = "tun0";

/// Waits until etcd has given the network config and this node's subnet.
async fn wait_for_node(view: &mut watch::Receiver<EtcdView>, cfg: &AgentConfig) -> Result<EtcdView> {
    let mut warned = false;
    loop {
        {
            let v = view.borrow_and_update();
            if v.config.is_some() && v.subnets.contains_key(&cfg.node_ip) {
                return Ok(v.clone());
            }
        }
        let changed = tokio::time::timeout(Duration::from_secs(5), view.changed()).await;
        if changed.is_err() && !warned {
            warned = true;
            info!(node_ip = %cfg.node_ip, "waiting for the network config and this node's subnet in etcd");
        }
        if let Ok(Err(_)) = changed {
            bail!("etcd source stopped");
        }
    }
}

/// The next flow round after `previous` (never 0, so a fresh bridge with no
/// round key and round 0 cookies of other programs never look like ours).
pub fn next_round(previous: Option<&str>) -> u16 {
    let prev: u16 = previous.and_then(|s| s.parse().ok()).unwrap_or(0);
    match prev.wrapping_add(1) {
        0 => 1,
        r => r,
    }
}

/// Creates or fixes `br0`, `vxlan0` and `tun0`; gives tun0 the gateway
/// address. Idempotent: a restarted agent changes nothing that is right.
async fn setup_bridge(
    cfg: &AgentConfig,
    ovsdb: &OvsdbClient,
    host: &Netlink,
    subnet: Ipv4Network,
    cluster: Ipv4Network,
    service: Ipv4Network,
) -> Result<()> {
    let spec = BridgeSpec::new(&cfg.bridge, cfg.datapath_type);
    ovsdb.ensure_bridge(&spec, Duration::from_secs(10)).await.context("bridge")?;
    let ports = [
        PortSpec::new(VXLAN_PORT, PortKind::Vxlan)
            .option("remote_ip", "flow")
            .option("key", "flow")
            .option("dst_port", &VXLAN_UDP_PORT.to_string())
            .ofport_request(VXLAN_OFPORT as u16),
        // OVS would size an internal port to the smallest MTU on the bridge.
        PortSpec::new(GATEWAY_PORT, PortKind::Internal)
            .ofport_request(GATEWAY_OFPORT as u16)
            .mtu_request(cfg.pod_mtu()),
    ];
    ovsdb.ensure_ports(&cfg.bridge, &ports).await.context("vxlan0 and tun0")?;
    for p in [VXLAN_PORT, GATEWAY_PORT] {
        let got =
            ovsdb.wait_ofport(p, Duration::from_secs(10)).await.with_context(|| format!("{p} ofport"))?;
        let want = if p == VXLAN_PORT { VXLAN_OFPORT } else { GATEWAY_OFPORT };
        if got != want {
            bail!("{p} has ofport {got}, the pipeline needs {want}: another port holds it");
        }
    }
    let gw = gateway_of(prefix_of(subnet));
    let gw_net = Ipv4Network::new(gw, cluster.prefix()).context("gateway address")?;
    host.add_ipv4(GATEWAY_PORT, gw_net).await.context("tun0 address")?;
    // The pipeline addresses what it hands the kernel to this MAC.
    let mac = crate::netlink::MacAddr(Mac::for_ipv4(gw).0);
    host.set_mac_mtu(GATEWAY_PORT, Some(mac), Some(cfg.pod_mtu())).await.context("tun0 mac and mtu")?;
    host.set_up(GATEWAY_PORT).await.context("tun0 up")?;
    if cfg.datapath_type == DatapathType::Netdev {
        host.offloads_off(GATEWAY_PORT).context("tun0 offloads")?;
    }
    // The node's own connections to a ClusterIP leave through tun0 with the
    // gateway address as their source (OpenShift SDN's route), so after
    // kube-proxy's DNAT the endpoint's reply comes back to this node whether
    // or not kube-proxy masquerades them.
    host.set_device_route(service, GATEWAY_PORT).await.context("service network route")?;
    // kube-proxy's DNAT sends a pod's service traffic back out of tun0, the
    // interface it came in on: no ICMP redirects to the pod for it.
    for dev in ["all", GATEWAY_PORT] {
        let path = format!("/proc/sys/net/ipv4/conf/{dev}/send_redirects");
        std::fs::write(&path, "0").with_context(|| format!("write {path}"))?;
    }
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enable IPv4 forwarding")?;
    Ok(())
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(cfg: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    let metrics = Arc::new(Metrics::default());
    let (pods_req_tx, mut pods_req_rx) = mpsc::channel::<PodsRequest>(16);
    // Dropped when `run` returns, whichever way: the listener stops with the agent.
    let (_http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    {
        let addr = cfg.metrics_addr;
        let state = Arc::new(HttpState {
            metrics: metrics.clone(),
            pods: pods_req_tx,
            ovs_rundir: cfg.ovs_rundir.clone(),
            bridge: cfg.bridge.clone(),
            debug: http::DebugGate::new(cfg.debug_token_file.clone()),
            metrics_token: http::TokenFile::new(cfg.metrics_token_file.clone(), "--metrics-token-file"),
        });
        tokio::spawn(async move {
            if let Err(e) = http::serve(addr, state, async { http_stopped.await.unwrap_or_default() }).await {
                error!(error = %e, %addr, "metrics endpoint failed");
            }
        });
    }

    let (view_tx, mut view_rx) = watch::channel(EtcdView::default());
    let tls = cfg.etcd_tls.load(&cfg.etcd_endpoints)?;
    let settings =
        EtcdSettings { endpoints: cfg.etcd_endpoints.clone(), prefix: cfg.etcd_prefix.clone(), tls };
    tokio::spawn(etcd_source::run(settings, view_tx));
    // Shutdown is watched from here on: an agent waiting for its subnet
    // (possibly forever) must still stop when told.
    tokio::pin!(shutdown);
    let view = tokio::select! {
        v = wait_for_node(&mut view_rx, &cfg) => v?,
        () = &mut shutdown => {
            info!("shutting down while waiting for this node's subnet");
            return Ok(());
        }
    };
    let (Some(net), Some(subnet)) = (view.config.clone(), view.subnets.get(&cfg.node_ip).copied()) else {
        bail!("etcd view incomplete");
    };
    info!(%subnet, network = %net.network, plugin = net.plugin.as_str(), "node subnet known");

    let ovsdb = OvsdbClient::connect(&cfg.ovsdb_endpoint())
        .await
        .context("OVSDB")?
        .with_reconnect_counter(metrics.ovsdb_reconnects.clone());
    let host = Netlink::current().context("netlink")?;
    setup_bridge(&cfg, &ovsdb, &host, subnet, net.network, net.service_network).await?;
    if cfg.masquerade {
        iptables::ensure_masquerade(net.network).await.context("masquerade rule")?;
    }
    if cfg.datapath_type == DatapathType::Netdev {
        iptables::ensure_pod_port_drop(VETH_PREFIX).await.context("pod veth guard")?;
    }
    iptables::ensure_no_vxlan_from_gateway(GATEWAY_PORT, VXLAN_UDP_PORT).await.context("VXLAN guard")?;

    let previous = ovsdb.bridge_external_id(&cfg.bridge, ROUND_KEY).await?;
    let round = next_round(previous.as_deref());
    ovsdb.set_bridge_external_id(&cfg.bridge, ROUND_KEY, &round.to_string()).await?;

    let mut adopted: Vec<PodRecord> = Vec::new();
    let mut other_ofports = Vec::new();
    for p in ovsdb.list_ports(&cfg.bridge).await? {
        match p.ofport.and_then(|o| PodRecord::from_external_ids(&p.name, o, &p.external_ids)) {
            Some(rec) => adopted.push(rec),
            None => other_ofports.extend(p.ofport),
        }
    }
    // Before any ADD: the IPAM log must hold every address a running pod's
    // port holds, even if the log was lost (ofport order: stable "first").
    adopted.sort_by_key(|r| r.ofport);
    let ipam = open_ipam(&cfg, subnet, &adopted, &metrics)?;

    let flows = FlowClient::connect(
        cfg.openflow_endpoint().parse::<Endpoint>().map_err(anyhow::Error::msg)?,
        ClientOptions::default(),
    )
    .await
    .context("OpenFlow")?;
    let mut ofp_events = flows.events();

    let state = NodeState::new(
        etcd_source::mode_of(net.plugin),
        cfg.node_ip,
        prefix_of(subnet),
        prefix_of(net.network),
        prefix_of(net.service_network),
    );
    let node = NodeSettings {
        bridge: cfg.bridge.clone(),
        pod_mtu: cfg.pod_mtu(),
        datapath: cfg.datapath_type,
        node_name: cfg.node_name.clone(),
        ovs_rundir: Some(cfg.ovs_rundir.clone()),
    };
    // Per-tenant traffic: read in a task of its own, which asks the loop
    // only who owns the flows it read.
    let (owners_tx, mut owners_rx) = mpsc::channel::<traffic::OwnersRequest>(1);
    if cfg.traffic_stats_secs > 0 {
        let period = Duration::from_secs(cfg.traffic_stats_secs);
        tokio::spawn(traffic::run(flows.clone(), owners_tx, metrics.clone(), period));
    }
    let edges = Edges { switch: flows, vswitch: ovsdb, host: NetlinkHost(host) };
    let mut dp = Dataplane::new(node, edges, ipam, state, round, metrics.clone());
    info!(pods = adopted.len(), round, "adopting pods found on the bridge");
    dp.adopt(adopted, other_ofports);
    dp.read_adopted_shaping().await;
    // Sent with the first full reconcile, as the adopted pods' flows.
    let _ = dp.on_view_state(&view);
    if !cfg.no_kube {
        dp.await_services();
        dp.await_policies();
    }
    dp.start_purging();
    let changed = dp.full_reconcile().await.context("initial flows")?;
    info!(changed, flows = dp.flow_count(), "flows reconciled");

    let (cni_tx, mut cni_rx) = mpsc::channel(256);
    let listener = cni_server::bind(&cfg.cni_socket)?;
    tokio::spawn(cni_server::serve(listener, cni_tx));

    let (svc_tx, mut svc_rx) = watch::channel(Services::default());
    let (pods_tx, mut pods_rx) = watch::channel(PodAnnotations::new());
    let (policy_tx, mut policy_rx) = watch::channel(Arc::new(PolicyView::default()));
    if !cfg.no_kube {
        let client = kube_client(&cfg).await?;
        dp.set_kube(client.clone());
        tokio::spawn(kube_source::run_services(client.clone(), svc_tx));
        tokio::spawn(policy_source::run_policies(client.clone(), policy_tx));
        tokio::spawn(kube_source::run_pods(client, cfg.node_name.clone(), pods_tx));
    }
    metrics.ready.store(true, Ordering::Relaxed);
    info!(socket = %cfg.cni_socket.display(), "agent ready");

    // A period of 0 disables the resync (the timer then never fires).
    let period = Duration::from_secs(cfg.flow_resync_secs.max(1));
    let mut resync = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = resync.tick(), if cfg.flow_resync_secs > 0 => {
                if let Err(e) = dp.resync().await {
                    warn!(error = %e, "periodic flow resync failed; retrying at the next one");
                }
            }
            Some((req, reply)) = cni_rx.recv() => {
                let _ = reply.send(dp.handle(req).await);
            }
            Some(reply) = pods_req_rx.recv() => {
                let _ = reply.send(dp.node_pods());
            }
            Some(reply) = owners_rx.recv() => {
                let _ = reply.send(dp.traffic_owners());
            }
            Ok(()) = view_rx.changed() => {
                // Read in place (the view holds every namespace and node):
                // the borrow ends before the bundle goes out.
                let ops = dp.on_view_state(&view_rx.borrow_and_update());
                if let Err(e) = dp.commit(ops).await {
                    warn!(error = %e, "applying an etcd change failed; retrying on the next change or reconnect");
                }
            }
            Ok(()) = pods_rx.changed() => {
                let p = pods_rx.borrow_and_update().clone();
                dp.on_pods(&p).await;
            }
            Ok(()) = policy_rx.changed() => {
                let view = policy_rx.borrow_and_update().clone();
                if let Err(e) = dp.on_policies(view).await {
                    warn!(error = %e, "applying a NetworkPolicy change failed; retrying on the next change or reconnect");
                }
            }
            Ok(()) = svc_rx.changed() => {
                let ops = dp.on_services_state(&svc_rx.borrow_and_update());
                if let Err(e) = dp.commit(ops).await {
                    warn!(error = %e, "applying a service change failed");
                }
            }
            ev = ofp_events.recv() => match ev {
                Ok(ConnEvent::Connected { generation }) if generation > 1 => {
                    metrics.ovs_reconnects.fetch_add(1, Ordering::Relaxed);
                    // ovs-vswitchd restarted (or the connection broke): make
                    // the switch hold our flows again.
                    match dp.full_reconcile().await {
                        Ok(n) => info!(generation, replayed = n, "switch reconnected; flows replayed"),
                        Err(e) => warn!(error = %e, "replaying flows after a reconnect failed"),
                    }
                    dp.reapply_shaping().await;
                }
                Ok(ConnEvent::Disconnected { reason }) => warn!(%reason, "switch connection lost"),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => bail!("OpenFlow client stopped"),
            },
            () = &mut shutdown => {
                info!("shutting down: the dataplane keeps forwarding without the agent");
                metrics.ready.store(false, Ordering::Relaxed);
                let _ = std::fs::remove_file(&cfg.cni_socket);
                return Ok(());
            }
        }
    }
}

/// Opens the IPAM store with the adopted pods' addresses claimed, and says
/// (log and `k8s_ovs_ipam_recovered_total`) what it had to rebuild.
fn open_ipam(
    cfg: &AgentConfig,
    subnet: Ipv4Network,
    pods: &[PodRecord],
    metrics: &Metrics,
) -> Result<IpamStore> {
    let claims = pods
        .iter()
        .map(|r| Claim {
            ip: r.ip,
            owner: Owner::new(r.key.container_id.clone(), r.key.ifname.clone()),
            port: r.host_veth.clone(),
        })
        .collect();
    let (ipam, rec) =
        IpamStore::open_with_claims(&cfg.state_dir.join("ipam"), subnet, claims).context("IPAM store")?;
    let r = &rec.report;
    for c in &r.outside {
        warn!(port = %c.port, ip = %c.ip, %subnet, "a pod port's address is outside this node's pod range; not claimed");
    }
    for (kept, other) in &r.conflicts {
        warn!(ip = %other.ip, port = %other.port, kept = %kept.port, kept_ip = %kept.ip,
            "two ports claim one address (or one pod two addresses): the first is kept, delete the other pod");
    }
    for (ip, owner) in &r.replaced {
        warn!(%ip, container = %owner.container_id, "an IPAM allocation contradicted by the bridge's ports was dropped");
    }
    match &rec.log {
        LogState::Corrupt { set_aside, reason } => warn!(
            set_aside = %set_aside.display(), %reason,
            claimed = r.added.len(), "the IPAM log was corrupted: set aside and rebuilt from the bridge's ports"
        ),
        LogState::Missing if rec.rebuilt() => {
            warn!(claimed = r.added.len(), "the IPAM log was missing: rebuilt from the bridge's ports")
        }
        _ if rec.rebuilt() => {
            warn!(
                claimed = r.added.len(),
                "the IPAM log lacked running pods' addresses: completed from the bridge's ports"
            )
        }
        _ => {}
    }
    metrics.ipam_recovered.fetch_add(r.added.len() as u64, Ordering::Relaxed);
    Ok(ipam)
}

async fn kube_client(cfg: &AgentConfig) -> Result<kube::Client> {
    let config = match &cfg.kube_url {
        Some(url) => kube::Config::new(url.parse().context("kube URL")?),
        None => kube::Config::infer().await.context("kubeconfig / in-cluster config")?,
    };
    kube::Client::try_from(config).context("kube client")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_advance_and_skip_zero() {
        assert_eq!(next_round(None), 1);
        assert_eq!(next_round(Some("7")), 8);
        assert_eq!(next_round(Some("65535")), 1);
        assert_eq!(next_round(Some("junk")), 1);
    }
}
