//! Links, addresses and routes through rtnetlink, in the agent's namespace or
//! in a pod's, plus device offloads. No `ip` or `ethtool` process.
//!
//! A [`Netlink`] is a connection bound to one network namespace: the
//! current one ([`Netlink::current`]) or another given by path
//! ([`Netlink::in_netns`], e.g. the `CNI_NETNS` a runtime passes). The pod
//! wiring the agent needs is one call, [`setup_pod_interface`]:
//!
//! ```no_run
//! # async fn f() -> Result<(), k8s_ovs_agent::netlink::NetlinkError> {
//! use k8s_ovs_agent::netlink::{setup_pod_interface, MacAddr, Netlink, PodInterface};
//! let host = Netlink::current()?;
//! let ip = "10.244.1.5".parse().unwrap();
//! let links = setup_pod_interface(&host, &PodInterface {
//!     netns: "/proc/1234/ns/net".into(),
//!     host_name: "veth1a2b3c4d".into(),
//!     ifname: "eth0".into(),
//!     mac: MacAddr::from_ipv4(ip),
//!     mtu: 1450,
//!     address: ipnetwork::Ipv4Network::new(ip, 24).unwrap(),
//!     gateway: "10.244.1.1".parse().unwrap(),
//!     offloads_off: true,
//! }).await?;
//! # Ok(()) }
//! ```

mod ethtool;
mod netns;
mod tc;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};
use tokio::task::AbortHandle;

pub use ethtool::Offloads;
pub use tc::Qdisc;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("network namespace {path}: {source}")]
    Netns { path: PathBuf, source: std::io::Error },
    #[error("open netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("{op}: {source}")]
    Netlink { op: String, source: rtnetlink::Error },
    #[error("link {0} does not exist")]
    NoSuchLink(String),
    #[error("link {0} already exists")]
    LinkExists(String),
    #[error("{op} on {dev}: {source}")]
    Ethtool { dev: String, op: &'static str, source: std::io::Error },
}

impl NetlinkError {
    /// The errno of a kernel refusal, if that is what this is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Netlink { source: rtnetlink::Error::NetlinkError(m), .. } => Some(-m.raw_code()),
            _ => None,
        }
    }
}

fn nl_err(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let op = op.into();
    move |source| NetlinkError::Netlink { op, source }
}

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// `0a:58:` + the IPv4 address: locally administered, unique per pod IP
    /// (the convention of the Kubernetes CNI plugins), so a pod's MAC is
    /// known from its IP without asking anyone.
    pub fn from_ipv4(ip: Ipv4Addr) -> MacAddr {
        let [a, b, c, d] = ip.octets();
        MacAddr([0x0a, 0x58, a, b, c, d])
    }

    fn from_slice(bytes: &[u8]) -> Option<MacAddr> {
        bytes.try_into().ok().map(MacAddr)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl std::str::FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<MacAddr, String> {
        let parts: Vec<u8> = s
            .split(':')
            .map(|p| if p.len() == 2 { u8::from_str_radix(p, 16).ok() } else { None })
            .collect::<Option<_>>()
            .ok_or_else(|| format!("bad MAC address {s:?}"))?;
        MacAddr::from_slice(&parts).ok_or_else(|| format!("bad MAC address {s:?}"))
    }
}

/// What the kernel reports about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
}

impl LinkInfo {
    fn from_message(m: &LinkMessage) -> LinkInfo {
        let mut info = LinkInfo {
            index: m.header.index,
            name: String::new(),
            mac: None,
            mtu: 0,
            up: m.header.flags.contains(LinkFlags::Up),
        };
        for attr in &m.attributes {
            match attr {
                LinkAttribute::IfName(n) => info.name = n.clone(),
                LinkAttribute::Address(a) => info.mac = MacAddr::from_slice(a),
                LinkAttribute::Mtu(mtu) => info.mtu = *mtu,
                _ => {}
            }
        }
        info
    }
}

/// An rtnetlink connection bound to one network namespace.
pub struct Netlink {
    handle: Handle,
    connection: AbortHandle,
    /// `None`: the agent's own namespace.
    netns: Option<PathBuf>,
}

impl fmt::Debug for Netlink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netlink").field("netns", &self.netns).finish_non_exhaustive()
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

type NlConnection = rtnetlink::proto::Connection<netlink_packet_route::RouteNetlinkMessage>;

impl Netlink {
    /// A connection in the calling thread's namespace (needs a tokio runtime).
    pub fn current() -> Result<Netlink, NetlinkError> {
        let runtime = runtime()?;
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        Ok(Netlink::start(&runtime, conn, handle, None))
    }

    /// A connection whose socket lives in the namespace at `path`. Its socket
    /// is opened by a short-lived thread that entered the namespace (a few
    /// tens of microseconds of blocking).
    pub fn in_netns(path: &Path) -> Result<Netlink, NetlinkError> {
        Netlink::in_netns_and(path, || Ok(()))
    }

    /// [`Netlink::in_netns`], running `first` in the namespace too (on the
    /// same thread, before the socket opens): one entry for both, e.g. for
    /// an ethtool change there.
    pub fn in_netns_and(
        path: &Path,
        first: impl FnOnce() -> Result<(), NetlinkError> + Send + 'static,
    ) -> Result<Netlink, NetlinkError> {
        let runtime = runtime()?;
        let inside = runtime.clone();
        let (conn, handle) = netns::run_in(path, move || {
            first()?;
            // The socket is registered with the caller's runtime; where the
            // registration happens does not matter, where the socket is
            // opened does.
            let _guard = inside.enter();
            let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
            Ok((conn, handle))
        })?;
        Ok(Netlink::start(&runtime, conn, handle, Some(path.to_path_buf())))
    }

    fn start(
        runtime: &tokio::runtime::Handle,
        conn: NlConnection,
        handle: Handle,
        netns: Option<PathBuf>,
    ) -> Netlink {
        let task = runtime.spawn(conn);
        Netlink { handle, connection: task.abort_handle(), netns }
    }

    /// The namespace path this connection works in (`None`: the agent's).
    pub fn netns(&self) -> Option<&Path> {
        self.netns.as_deref()
    }

    /// The link named `name`, or `None`.
    pub async fn link(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        let mut links = self.handle.link().get().match_name(name.to_string()).execute();
        match links.try_next().await {
            Ok(Some(m)) => Ok(Some(LinkInfo::from_message(&m))),
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(m)) if -m.raw_code() == libc::ENODEV => Ok(None),
            Err(e) => Err(nl_err(format!("get link {name}"))(e)),
        }
    }

    async fn require_link(&self, name: &str) -> Result<LinkInfo, NetlinkError> {
        self.link(name).await?.ok_or_else(|| NetlinkError::NoSuchLink(name.to_string()))
    }

    /// Sets a link administratively up.
    pub async fn set_up(&self, name: &str) -> Result<(), NetlinkError> {
        let link = self.require_link(name).await?;
        self.set_up_at(&link).await
    }

    async fn set_up_at(&self, link: &LinkInfo) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(link.index).up().build())
            .execute()
            .await
            .map_err(nl_err(format!("set {} up", link.name)))
    }

    /// Sets MAC and/or MTU of a link.
    pub async fn set_mac_mtu(
        &self,
        name: &str,
        mac: Option<MacAddr>,
        mtu: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let link = self.require_link(name).await?;
        let mut msg = LinkUnspec::new_with_index(link.index);
        if let Some(mac) = mac {
            msg = msg.address(mac.0.to_vec());
        }
        if let Some(mtu) = mtu {
            msg = msg.mtu(mtu);
        }
        self.handle.link().set(msg.build()).execute().await.map_err(nl_err(format!("set mac/mtu of {name}")))
    }

    /// Adds `address` (IP and prefix length) to the link; an address already
    /// present is success.
    pub async fn add_ipv4(&self, name: &str, address: Ipv4Network) -> Result<(), NetlinkError> {
        let link = self.require_link(name).await?;
        self.add_ipv4_at(&link, address).await
    }

    async fn add_ipv4_at(&self, link: &LinkInfo, address: Ipv4Network) -> Result<(), NetlinkError> {
        let name = &link.name;
        self.handle
            .address()
            .add(link.index, IpAddr::V4(address.ip()), address.prefix())
            .replace()
            .execute()
            .await
            .map_err(nl_err(format!("add address {address} to {name}")))
    }

    /// The IPv4 addresses (with prefix length) on a link.
    pub async fn ipv4_addresses(&self, name: &str) -> Result<Vec<Ipv4Network>, NetlinkError> {
        let link = self.require_link(name).await?;
        let messages: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute()
            .try_collect()
            .await
            .map_err(nl_err(format!("list addresses of {name}")))?;
        let mut out = Vec::new();
        for m in messages.iter().filter(|m| m.header.family == AddressFamily::Inet) {
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) | AddressAttribute::Address(IpAddr::V4(ip)) => {
                    Some(*ip)
                }
                _ => None,
            });
            if let Some(net) = ip.and_then(|ip| Ipv4Network::new(ip, m.header.prefix_len).ok()) {
                out.push(net);
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The gateway of the IPv4 default route in the main table, if any.
    pub async fn default_gateway(&self) -> Result<Option<Ipv4Addr>, NetlinkError> {
        let routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("list routes"))?;
        Ok(routes
            .iter()
            .filter(|r| {
                r.header.destination_prefix_length == 0 && r.header.table == RouteHeader::RT_TABLE_MAIN
            })
            .flat_map(|r| &r.attributes)
            .find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(gw)) => Some(*gw),
                _ => None,
            }))
    }

    /// Installs (or replaces) the default route via `gateway`.
    pub async fn set_default_route(&self, gateway: Ipv4Addr) -> Result<(), NetlinkError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).build();
        self.replace_route(route, format!("add default route via {gateway}")).await
    }

    /// `ip route replace`: adds the route or replaces the one with its key.
    async fn replace_route(&self, route: RouteMessage, what: String) -> Result<(), NetlinkError> {
        self.handle.route().add(route).replace().execute().await.map_err(nl_err(what))
    }

    /// Installs (or replaces) an on-link route to `dest` through the link
    /// `name` (`ip route replace DEST dev NAME`).
    pub async fn set_device_route(&self, dest: Ipv4Network, name: &str) -> Result<(), NetlinkError> {
        let link = self.require_link(name).await?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dest.network(), dest.prefix())
            .output_interface(link.index)
            .scope(netlink_packet_route::route::RouteScope::Link)
            .build();
        self.replace_route(route, format!("add route {dest} dev {name}")).await
    }

    /// Deletes a link (a veth takes its peer with it). Returns whether it
    /// existed: gone is success.
    pub async fn del_link(&self, name: &str) -> Result<bool, NetlinkError> {
        let Some(link) = self.link(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(true),
            // Deleted by someone else (or with its peer) in between.
            Err(rtnetlink::Error::NetlinkError(m)) if -m.raw_code() == libc::ENODEV => Ok(false),
            Err(e) => Err(nl_err(format!("delete link {name}"))(e)),
        }
    }

    /// Creates a veth pair: `host_name` in this connection's namespace and
    /// `peer_name` created directly inside the namespace at `peer_netns`
    /// (so it never clashes with a host device such as `eth0`; and no
    /// device moves between namespaces, which costs the kernel an RCU
    /// barrier, ~18 ms on a loaded machine), both with `mtu`, the peer with
    /// `peer_mac`. The peer stays down (the kernel refuses to bring it up
    /// in the request that creates it: ENOTCONN, its peer is not linked
    /// yet); the host end is set as `flags` says in the same request.
    pub async fn create_veth(
        &self,
        host_name: &str,
        peer_netns: &Path,
        peer_name: &str,
        peer_mac: Option<MacAddr>,
        mtu: u32,
        flags: VethFlags,
    ) -> Result<(), NetlinkError> {
        let ns = netns::open(peer_netns)?;
        let mut peer = LinkUnspec::new_with_name(peer_name).mtu(mtu).setns_by_fd(ns.as_raw_fd());
        if let Some(mac) = peer_mac {
            peer = peer.address(mac.0.to_vec());
        }
        let mut msg = LinkVeth::new(host_name, peer_name).mtu(mtu);
        if flags.host_up {
            msg = msg.up();
        }
        if flags.host_promiscuous {
            msg = msg.promiscuous(true);
        }
        let msg = msg.set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build()))).build();
        // `ns` stays open until the kernel has answered.
        let result = self.handle.link().add(msg).execute().await;
        drop(ns);
        match result {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(m)) if -m.raw_code() == libc::EEXIST => Err(
                NetlinkError::LinkExists(format!("{host_name} (or {peer_name} in {})", peer_netns.display())),
            ),
            Err(e) => Err(nl_err(format!("create veth {host_name} <-> {peer_name}"))(e)),
        }
    }

    /// Turns off tx/rx checksum, TSO, GSO and GRO of a device in this
    /// connection's namespace (see `ethtool.rs` for why).
    pub fn offloads_off(&self, dev: &str) -> Result<(), NetlinkError> {
        let dev = dev.to_string();
        self.in_own_netns(move || ethtool::offloads_off(&dev))
    }

    /// Reads the offloads of a device in this connection's namespace.
    pub fn offloads(&self, dev: &str) -> Result<Offloads, NetlinkError> {
        let dev = dev.to_string();
        self.in_own_netns(move || ethtool::offloads(&dev))
    }

    fn in_own_netns<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, NetlinkError> + Send + 'static,
    ) -> Result<T, NetlinkError> {
        match &self.netns {
            Some(path) => netns::run_in(path, f),
            None => f(),
        }
    }
}

/// The caller's tokio runtime: the connection task runs there (an error,
/// not a panic, when there is none).
fn runtime() -> Result<tokio::runtime::Handle, NetlinkError> {
    tokio::runtime::Handle::try_current()
        .map_err(|e| NetlinkError::Socket(std::io::Error::other(format!("no tokio runtime: {e}"))))
}

/// A pod's network interface as the agent wires it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    /// The pod's namespace (`CNI_NETNS`).
    pub netns: PathBuf,
    /// Host end of the veth, in the agent's namespace (goes into OVS).
    pub host_name: String,
    /// Name inside the pod (`CNI_IFNAME`, usually `eth0`).
    pub ifname: String,
    pub mac: MacAddr,
    pub mtu: u32,
    /// The pod's IP with the node subnet's prefix length.
    pub address: Ipv4Network,
    pub gateway: Ipv4Addr,
    /// Turn the pod end's offloads off (needed on the netdev datapath; see
    /// [`configure_veth`]).
    pub offloads_off: bool,
}

/// How [`Netlink::create_veth`] creates the two ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VethFlags {
    pub host_up: bool,
    /// What ovs-vswitchd (either datapath) sets when it takes the device as
    /// a port; set beforehand, taking the port changes nothing the node's
    /// rtnetlink listeners are told of, and ovs-vswitchd does not
    /// reconfigure once more for it (see `create_pod_veth`).
    pub host_promiscuous: bool,
}

/// Both ends of a wired pod interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLinks {
    pub host: LinkInfo,
    pub container: LinkInfo,
}

/// Wires a pod: [`create_pod_veth`], then [`configure_veth`]; on
/// failure the veth is deleted again, so a retry starts clean. Fails with
/// [`NetlinkError::LinkExists`] when the pod has `ifname` already.
pub async fn setup_pod_interface(host: &Netlink, spec: &PodInterface) -> Result<PodLinks, NetlinkError> {
    create_pod_veth(host, spec).await?;
    let wired = async {
        configure_veth(spec).await?;
        let pod = Netlink::in_netns(&spec.netns)?;
        Ok(PodLinks {
            host: host.require_link(&spec.host_name).await?,
            container: pod.require_link(&spec.ifname).await?,
        })
    };
    let wired = wired.await;
    if wired.is_err() {
        if let Err(e) = host.del_link(&spec.host_name).await {
            tracing::warn!(error = %e, link = %spec.host_name, "removing a half-wired veth failed");
        }
    }
    wired
}

/// The first half of wiring a pod, one request in the node's namespace:
/// the veth pair with the pod end created inside the pod's namespace under
/// `ifname` with its MAC and MTU (down), the host end up and promiscuous.
/// Fails with [`NetlinkError::LinkExists`] when the host end or the pod's
/// interface exists (nothing changed then). The host end exists from here
/// on: OVS may take it while the veth is configured ([`configure_veth`]);
/// nothing passes before the pod end is up.
///
/// Why promiscuous: ovs-vswitchd sets that when it adds the port, and the
/// change (a link notification for a device it owns now) made it run its
/// whole reconfiguration once more, work in proportion to the bridge's
/// ports, right after the ADD (measured: `bench/README.md`, "CNI ADD /
/// DEL"). Made here, it reaches ovs-vswitchd with the veth itself.
pub async fn create_pod_veth(host: &Netlink, spec: &PodInterface) -> Result<(), NetlinkError> {
    let flags = VethFlags { host_up: true, host_promiscuous: true };
    host.create_veth(&spec.host_name, &spec.netns, &spec.ifname, Some(spec.mac), spec.mtu, flags).await
}

/// The second half, inside the pod's namespace, entered once (one thread
/// turns the pod end's offloads off, if asked, and opens the netlink
/// socket there): the pod end up, its address and the default route via
/// the gateway, four requests. The caller deletes the host end on failure.
///
/// The host end's offloads stay as the kernel made them: on the netdev
/// datapath ovs-vswitchd reads and writes that end whole frames through a
/// packet socket, so its offloads change no byte (what matters is the pod
/// end: with its offloads on, the pod's frames would carry partial
/// checksums). Changing them would be one more link notification in the
/// node's namespace, and ovs-vswitchd answers each with a reconfiguration
/// over every port (`bench/README.md`, "CNI ADD / DEL").
pub async fn configure_veth(spec: &PodInterface) -> Result<(), NetlinkError> {
    let offloads = spec.offloads_off.then(|| spec.ifname.clone());
    let pod = Netlink::in_netns_and(&spec.netns, move || match &offloads {
        Some(dev) => ethtool::offloads_off(dev),
        None => Ok(()),
    })?;
    let link = pod.require_link(&spec.ifname).await?;
    pod.set_up_at(&link).await?;
    pod.add_ipv4_at(&link, spec.address).await?;
    pod.set_default_route(spec.gateway).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_runtime_is_an_error_not_a_panic() {
        let err = Netlink::current().expect_err("no runtime");
        assert!(err.to_string().contains("no tokio runtime"), "{err}");
    }

    #[test]
    fn mac_from_ip_is_locally_administered_and_round_trips() {
        let mac = MacAddr::from_ipv4(Ipv4Addr::new(10, 244, 1, 5));
        assert_eq!(mac.to_string(), "0a:58:0a:f4:01:05");
        assert_eq!(mac.0[0] & 0b10, 0b10, "locally administered bit");
        assert_eq!(mac.0[0] & 0b1, 0, "unicast");
        assert_eq!("0a:58:0a:f4:01:05".parse::<MacAddr>(), Ok(mac));
        assert!("0a:58:0a:f4:01".parse::<MacAddr>().is_err());
        assert!("0a:58:0a:f4:01:5".parse::<MacAddr>().is_err());
        assert!("zz:58:0a:f4:01:05".parse::<MacAddr>().is_err());
    }
}
