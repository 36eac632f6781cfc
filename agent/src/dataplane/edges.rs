//! The dataplane's I/O edges, as small traits: the OpenFlow switch, the
//! OVSDB ports and the node's host networking. Today's clients implement
//! them here, in a few lines each; `fake.rs` implements them in memory, so
//! the dataplane's logic (ADD, DEL, CHECK, GC, adoption and every rollback)
//! is unit-tested without root.
//!
//! The futures are `Send` so a dataplane may move between threads; the
//! errors are each client's own, so callers keep their context.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use ovs_flows::client::{BundleError, Client as FlowClient, ClientError};
use ovs_flows::ofp::{FlowOp, Meter, MeterCommand};
use ovs_flows::{CookieFilter, Flow};

use crate::bandwidth::tc::{self, PodDevices, ShapingError};
use crate::bandwidth::{Limits, Rate};
use crate::netlink::{configure_veth, create_pod_veth, MacAddr, Netlink, NetlinkError, PodInterface};
use crate::ovsdb::{Client as OvsdbClient, OvsdbError, PortInfo, PortSpec};

/// The bridge's OpenFlow side: flows and meters.
pub trait Switch: Send + Sync {
    /// Applies `ops` atomically (all or nothing).
    fn bundle(&self, ops: &[FlowOp]) -> impl Future<Output = Result<(), BundleError>> + Send;
    /// The installed flows of `table` (or all) whose cookie matches.
    fn dump_flows(
        &self,
        table: Option<u8>,
        cookie: CookieFilter,
    ) -> impl Future<Output = Result<Vec<Flow>, ClientError>> + Send;
    fn meter_mod(
        &self,
        command: MeterCommand,
        meter: &Meter,
    ) -> impl Future<Output = Result<(), ClientError>> + Send;
    fn meters(&self) -> impl Future<Output = Result<Vec<Meter>, ClientError>> + Send;
}

/// The bridge's ports, in OVSDB.
pub trait Vswitch: Send + Sync {
    /// Adds the port and waits for its ofport (which may differ from the one
    /// requested when that is taken).
    fn add_port(
        &self,
        bridge: &str,
        spec: &PortSpec,
        timeout: Duration,
    ) -> impl Future<Output = Result<u32, OvsdbError>> + Send;
    /// Removes a port; absent is success (`false`).
    fn del_port(&self, bridge: &str, name: &str) -> impl Future<Output = Result<bool, OvsdbError>> + Send;
    fn list_ports(&self, bridge: &str) -> impl Future<Output = Result<Vec<PortInfo>, OvsdbError>> + Send;
}

/// The node's networking around a pod: its veth, the pod side of it, and
/// the tc shaping on the node's side.
pub trait Host: Send + Sync {
    /// The veth pair, its pod end inside the pod's namespace (down), its
    /// host end up and ready for OVS; a failure leaves no veth behind.
    fn create_pod_veth(&self, iface: &PodInterface) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    /// Offloads off on both ends (if asked), then the pod end up,
    /// addressed and routed inside the pod's namespace (after
    /// [`Host::create_pod_veth`]; the caller removes the veth if this fails).
    fn configure_veth(&self, iface: &PodInterface) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    /// Deletes a link of the node (an ifb too); absent is success (`false`).
    fn del_link(&self, name: &str) -> impl Future<Output = Result<bool, NetlinkError>> + Send;
    fn link_exists(&self, name: &str) -> impl Future<Output = Result<bool, NetlinkError>> + Send;
    /// The MAC of `ifname` inside the pod's namespace (`None`: it is gone).
    fn pod_link_mac(
        &self,
        netns: &Path,
        ifname: &str,
    ) -> impl Future<Output = Result<Option<MacAddr>, NetlinkError>> + Send;
    /// Userspace datapath: keeps the node kernel from answering on a pod
    /// veth (its IP is dropped by the raw-table rule; ARP is not IP).
    fn guard_veth(&self, name: &str) -> std::io::Result<()>;
    /// See [`tc::apply`].
    fn apply_shaping(
        &self,
        devices: &PodDevices<'_>,
        limits: &Limits,
    ) -> impl Future<Output = Result<(), ShapingError>> + Send;
    /// See [`tc::installed`].
    fn installed_shaping(
        &self,
        devices: &PodDevices<'_>,
    ) -> impl Future<Output = Result<Limits, ShapingError>> + Send;
    /// See [`tc::check`].
    fn check_shaping(
        &self,
        devices: &PodDevices<'_>,
        wanted: &Limits,
    ) -> impl Future<Output = Result<(), ShapingError>> + Send;
    /// See [`tc::take_pod_tbf`].
    fn take_pod_tbf(
        &self,
        devices: &PodDevices<'_>,
    ) -> impl Future<Output = Result<Option<Rate>, ShapingError>> + Send;
}

impl Switch for FlowClient {
    async fn bundle(&self, ops: &[FlowOp]) -> Result<(), BundleError> {
        FlowClient::bundle(self, ops).await
    }
    async fn dump_flows(&self, table: Option<u8>, cookie: CookieFilter) -> Result<Vec<Flow>, ClientError> {
        FlowClient::dump_flows(self, table, cookie).await
    }
    async fn meter_mod(&self, command: MeterCommand, meter: &Meter) -> Result<(), ClientError> {
        FlowClient::meter_mod(self, command, meter).await
    }
    async fn meters(&self) -> Result<Vec<Meter>, ClientError> {
        FlowClient::meters(self).await
    }
}

impl Vswitch for OvsdbClient {
    async fn add_port(&self, bridge: &str, spec: &PortSpec, timeout: Duration) -> Result<u32, OvsdbError> {
        OvsdbClient::add_port(self, bridge, spec, timeout).await
    }
    async fn del_port(&self, bridge: &str, name: &str) -> Result<bool, OvsdbError> {
        OvsdbClient::del_port(self, bridge, name).await
    }
    async fn list_ports(&self, bridge: &str) -> Result<Vec<PortInfo>, OvsdbError> {
        OvsdbClient::list_ports(self, bridge).await
    }
}

/// The real host: netlink in the agent's namespace (and the pods'), tc,
/// and the pod veths' sysctls.
pub struct NetlinkHost(pub Netlink);

impl Host for NetlinkHost {
    async fn create_pod_veth(&self, iface: &PodInterface) -> Result<(), NetlinkError> {
        create_pod_veth(&self.0, iface).await
    }
    async fn configure_veth(&self, iface: &PodInterface) -> Result<(), NetlinkError> {
        configure_veth(iface).await
    }
    async fn del_link(&self, name: &str) -> Result<bool, NetlinkError> {
        self.0.del_link(name).await
    }
    async fn link_exists(&self, name: &str) -> Result<bool, NetlinkError> {
        Ok(self.0.link(name).await?.is_some())
    }
    async fn pod_link_mac(&self, netns: &Path, ifname: &str) -> Result<Option<MacAddr>, NetlinkError> {
        let pod = Netlink::in_netns(netns)?;
        Ok(pod.link(ifname).await?.map(|l| l.mac.unwrap_or(MacAddr([0; 6]))))
    }
    fn guard_veth(&self, name: &str) -> std::io::Result<()> {
        std::fs::write(format!("/proc/sys/net/ipv4/conf/{name}/arp_ignore"), "8")?;
        std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1")
    }
    async fn apply_shaping(&self, devices: &PodDevices<'_>, limits: &Limits) -> Result<(), ShapingError> {
        tc::apply(&self.0, devices, limits).await
    }
    async fn installed_shaping(&self, devices: &PodDevices<'_>) -> Result<Limits, ShapingError> {
        tc::installed(&self.0, devices).await
    }
    async fn check_shaping(&self, devices: &PodDevices<'_>, wanted: &Limits) -> Result<(), ShapingError> {
        tc::check(&self.0, devices, wanted).await
    }
    async fn take_pod_tbf(&self, devices: &PodDevices<'_>) -> Result<Option<Rate>, ShapingError> {
        tc::take_pod_tbf(devices).await
    }
}
