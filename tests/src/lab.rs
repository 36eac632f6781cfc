//! The cluster in a box.
//!
//! ```text
//!  <lab>-fab: Linux bridge "fabric"──veth── <lab>-ctl  eth0 172.30.0.254 (etcd :2379)
//!                              ├─veth── <lab>-n1   eth0 in OVS br-phy, node IP 172.30.0.11 on br-phy
//!                              └─veth── <lab>-n2   ...                          172.30.0.12
//!  <lab>-n1 ──veth── <lab>-p-<pod>  eth0 (a pod)
//! ```
//! Every address lives inside these namespaces; nothing leaves the machine.
//! Each node runs its own ovsdb-server + ovs-vswitchd (netdev datapath) with
//! run/db/log dirs under the lab directory. The underlay port sits in the
//! `br-phy` bridge whose internal port carries the node IP (OVS userspace
//! tunnelling), so a VXLAN port on another bridge of the node reaches the
//! other nodes. Dropping the lab (also while a test panics) ends every
//! process it started, by PID, and removes every namespace and directory.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};

use crate::etcd::{Etcd, EtcdCluster};
use crate::netns::Netns;
use crate::ovs::Ovs;
use crate::pki::Pki;
use crate::sweep;

/// Prefix of every name a lab creates (namespaces, lab directory).
pub const DEFAULT_PREFIX: &str = "kovs";
/// The fabric subnet; node i (1-based) is `.10+i`, the control host `.254`.
pub const FABRIC_PREFIX: &str = "172.30.0";
pub const CTL_IP: &str = "172.30.0.254";
pub const ETCD_PORT: u16 = 2379;
/// Client ports of a cluster's members on the control host (peer: +1).
pub const ETCD_CLUSTER_PORTS: [u16; 3] = [2379, 2479, 2579];

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Where lab directories live (`K8S_OVS_LAB_DIR`, default `/tmp/k8s-ovs-lab`).
pub fn base_dir() -> PathBuf {
    std::env::var_os("K8S_OVS_LAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/k8s-ovs-lab"))
}

#[derive(Debug, Clone)]
pub struct LabConfig {
    pub nodes: usize,
    /// Start etcd on the control host.
    pub etcd: bool,
    /// etcd serves HTTPS and requires client certificates (`Lab::pki`).
    pub etcd_tls: bool,
    /// etcd as clusters run it: three members on the control host (one
    /// address, ports `ETCD_CLUSTER_PORTS`), every binary given all three.
    pub etcd_cluster: bool,
    /// Name prefix; tests of the sweep use their own so they never race a
    /// concurrently starting lab's sweep.
    pub prefix: String,
}

impl LabConfig {
    pub fn nodes(n: usize) -> LabConfig {
        LabConfig {
            nodes: n,
            etcd: true,
            etcd_tls: false,
            etcd_cluster: false,
            prefix: DEFAULT_PREFIX.into(),
        }
    }
}

/// A lab node: a namespace with its own OVS and an underlay address.
#[derive(Debug)]
pub struct Node {
    /// 1-based.
    pub index: usize,
    pub netns: Netns,
    /// Node IP on the fabric (on br-phy's internal port).
    pub ip: String,
    /// MAC of the underlay port (and of br-phy).
    pub mac: String,
    pub ovs: Ovs,
    pub dir: PathBuf,
}

/// A pod: a namespace with `eth0`, its veth peer in a node namespace.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub netns: Netns,
    /// Index (1-based) of the node holding the host end.
    pub node: usize,
    pub host_if: String,
    /// Address without prefix length.
    pub ip: String,
    pub mac: String,
}

#[derive(Debug)]
pub struct Lab {
    pub name: String,
    pub dir: PathBuf,
    pub fabric: Netns,
    pub ctl: Netns,
    pub etcd: Option<Etcd>,
    /// The members, with `LabConfig::etcd_cluster` (then `etcd` is None).
    pub etcd_cluster: Option<EtcdCluster>,
    pub nodes: Vec<Node>,
    pods: Vec<Netns>,
    /// Every namespace in creation order (removed in reverse).
    namespaces: Vec<Netns>,
}

impl Lab {
    /// Starts a lab with `n` nodes and etcd.
    pub fn start(n: usize) -> Result<Lab> {
        Lab::start_with(LabConfig::nodes(n))
    }

    pub fn start_with(cfg: LabConfig) -> Result<Lab> {
        let base = base_dir();
        sweep::sweep(&cfg.prefix, &base);
        let name = format!("{}{}x{}", cfg.prefix, std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst));
        let dir = base.join(&name);
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;

        // Built up step by step inside a Lab value, so a failure half-way
        // drops it and cleans up whatever already exists.
        let fabric = Netns { name: format!("{name}-fab") };
        let ctl = Netns { name: format!("{name}-ctl") };
        let mut lab = Lab {
            name: name.clone(),
            dir,
            fabric: fabric.clone(),
            ctl: ctl.clone(),
            etcd: None,
            etcd_cluster: None,
            nodes: Vec::new(),
            pods: Vec::new(),
            namespaces: Vec::new(),
        };
        lab.write_token(&lab.debug_token_file())?;
        lab.write_token(&lab.metrics_token_file())?;
        lab.namespaces.push(Netns::create(&fabric.name)?);
        fabric.ip(&["link", "add", "name", "fabric", "type", "bridge"])?;
        fabric.ip(&["link", "set", "fabric", "up"])?;

        lab.namespaces.push(Netns::create(&ctl.name)?);
        lab.plug_into_fabric(&ctl, "ctl")?;
        ctl.ip(&["addr", "add", &format!("{CTL_IP}/24"), "dev", "eth0"])?;
        ctl.ip(&["link", "set", "eth0", "up"])?;
        if cfg.etcd {
            let pki = match cfg.etcd_tls {
                true => Some(Pki::create(&lab.dir.join("pki"), CTL_IP)?),
                false => None,
            };
            let dir = lab.dir.join("ctl");
            if cfg.etcd_cluster {
                let c = EtcdCluster::start(&ctl, CTL_IP, &ETCD_CLUSTER_PORTS, &dir, pki.as_ref(), &lab.name)?;
                lab.etcd_cluster = Some(c);
            } else {
                lab.etcd = Some(Etcd::start_with(Some(&ctl), CTL_IP, ETCD_PORT, &dir, pki.as_ref())?);
            }
        }
        for i in 1..=cfg.nodes {
            lab.add_node(i)?;
        }
        Ok(lab)
    }

    /// Creates a veth `<fabric_if>` (in the fabric bridge) <-> `eth0` (in `ns`).
    fn plug_into_fabric(&self, ns: &Netns, fabric_if: &str) -> Result<()> {
        self.fabric.ip(&[
            "link", "add", "name", fabric_if, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ])?;
        self.fabric.ip(&["link", "set", fabric_if, "master", "fabric", "up"])?;
        // Frames from the fabric reach OVS's AF_PACKET socket on the node;
        // with offloads on they carry partial checksums and TCP stalls.
        self.fabric.offloads_off(fabric_if)?;
        ns.offloads_off("eth0")?;
        Ok(())
    }

    fn add_node(&mut self, index: usize) -> Result<()> {
        let netns = Netns::create(&format!("{}-n{index}", self.name))?;
        self.namespaces.push(netns.clone());
        self.plug_into_fabric(&netns, &format!("n{index}"))?;
        let ip = format!("{FABRIC_PREFIX}.{}", 10 + index);
        // The underlay port also hands every frame to the node kernel (AF_PACKET
        // taps, not steals): keep the kernel from answering ARP for br-phy's
        // address on it and from accepting what it should not.
        netns.sysctl("net.ipv4.conf.eth0.arp_ignore", "8")?;
        netns.sysctl("net.ipv4.conf.eth0.rp_filter", "1")?;
        netns.sysctl("net.ipv6.conf.eth0.disable_ipv6", "1")?;
        netns.sysctl("net.ipv4.ip_forward", "1")?;
        netns.ip(&["link", "set", "eth0", "up"])?;
        let mac = netns.exec(&["cat", "/sys/class/net/eth0/address"])?.trim().to_string();
        let dir = self.dir.join(format!("n{index}"));
        let ovs = Ovs::start(&netns, &dir)?;
        let node = Node { index, netns: netns.clone(), ip: ip.clone(), mac: mac.clone(), ovs, dir };
        self.nodes.push(node);
        let ovs = &self.nodes[index - 1].ovs;
        ovs.add_bridge("br-phy", &[&format!("other_config:hwaddr=\"{mac}\"")])?;
        ovs.vsctl(&["add-port", "br-phy", "eth0"])?;
        ovs.wait_ofport("eth0")?;
        netns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "br-phy"])?;
        netns.ip(&["link", "set", "br-phy", "up"])?;
        Ok(())
    }

    /// Node by 1-based index.
    pub fn node(&self, index: usize) -> &Node {
        &self.nodes[index - 1]
    }

    /// etcd's client URL on the fabric (reachable from every node
    /// namespace); with a cluster every member's, comma separated (as
    /// `--etcd-endpoints` and etcdctl take them).
    pub fn etcd_endpoint(&self) -> String {
        if let Some(c) = &self.etcd_cluster {
            return c.endpoints().join(",");
        }
        match self.etcd.as_ref() {
            Some(e) => e.endpoint.clone(),
            None => format!("http://{CTL_IP}:{ETCD_PORT}"),
        }
    }

    /// The file holding the lab's agent debug token (`--debug-token-file`
    /// of its agents and of `k8s-ovs-ctl`).
    pub fn debug_token_file(&self) -> PathBuf {
        self.dir.join("debug-token")
    }

    /// The token itself.
    pub fn debug_token(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.debug_token_file())?.trim().to_string())
    }

    /// The file holding the lab's metrics token (`--metrics-token-file` of
    /// its agents and of `k8s-ovs-ctl`: the tenant series of `/metrics`).
    pub fn metrics_token_file(&self) -> PathBuf {
        self.dir.join("metrics-token")
    }

    /// The token itself.
    pub fn metrics_token(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.metrics_token_file())?.trim().to_string())
    }

    fn write_token(&self, file: &std::path::Path) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        use std::time::{SystemTime, UNIX_EPOCH};
        // Unguessable enough for a lab that lives a minute; production
        // tokens come from a Secret (docs/operations.md).
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let token = format!("lab-{}-{name}-{nanos:x}", self.name);
        let mut f = std::fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(file)
            .with_context(|| format!("create the lab's token file {}", file.display()))?;
        std::io::Write::write_all(&mut f, token.as_bytes())?;
        Ok(())
    }

    /// The PKI of a TLS etcd (`LabConfig::etcd_tls`).
    pub fn pki(&self) -> Option<&Pki> {
        match &self.etcd_cluster {
            Some(c) => c.members.first()?.tls.as_ref(),
            None => self.etcd.as_ref()?.tls.as_ref(),
        }
    }

    /// `--etcd-endpoints <url>` plus, with TLS, the client certificate
    /// flags, without TLS `--etcd-insecure` (the lab's plain etcd is on the
    /// fabric, not loopback): how every k8s-ovs binary of the lab reaches etcd.
    pub fn etcd_flags(&self) -> Vec<String> {
        let mut v = vec!["--etcd-endpoints".to_string(), self.etcd_endpoint()];
        match self.pki() {
            Some(pki) => v.extend(pki.client_flags()),
            None => v.push("--etcd-insecure".to_string()),
        }
        v
    }

    /// `etcd_flags` with the TLS client certificate `<cn>.crt`
    /// (`Pki::issue_client`): an etcd user of its own once auth is on.
    pub fn etcd_flags_as(&self, cn: &str) -> Vec<String> {
        let mut v = vec!["--etcd-endpoints".to_string(), self.etcd_endpoint()];
        match self.pki() {
            Some(pki) => v.extend(pki.client_flags_as(cn)),
            None => v.push("--etcd-insecure".to_string()),
        }
        v
    }

    /// `etcdctl` against the lab's etcd, run on the control host.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        if let Some(c) = &self.etcd_cluster {
            return c.etcdctl(args);
        }
        self.etcd.as_ref().context("this lab runs no etcd")?.etcdctl(args)
    }

    /// Creates a pod namespace `<lab>-p-<name>` whose `eth0` (with `ip_cidr`,
    /// and `mac` if given) is the peer of `host_if` in node `node`'s namespace.
    /// The caller attaches `host_if` to a bridge; offloads are off on both ends.
    pub fn add_pod(
        &mut self,
        node: usize,
        name: &str,
        host_if: &str,
        ip_cidr: &str,
        mac: Option<&str>,
    ) -> Result<Pod> {
        let node_ns = self.node(node).netns.clone();
        let netns = Netns::create(&format!("{}-p-{name}", self.name))?;
        self.pods.push(netns.clone());
        node_ns.ip(&[
            "link",
            "add",
            "name",
            host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &netns.name,
        ])?;
        if let Some(mac) = mac {
            netns.ip(&["link", "set", "eth0", "address", mac])?;
        }
        netns.ip(&["addr", "add", ip_cidr, "dev", "eth0"])?;
        netns.ip(&["link", "set", "eth0", "mtu", "1450", "up"])?;
        node_ns.ip(&["link", "set", host_if, "up"])?;
        node_ns.offloads_off(host_if)?;
        netns.offloads_off("eth0")?;
        let mac = netns.exec(&["cat", "/sys/class/net/eth0/address"])?.trim().to_string();
        let ip = ip_cidr.split('/').next().unwrap_or(ip_cidr).to_string();
        Ok(Pod { name: name.into(), netns, node, host_if: host_if.into(), ip, mac })
    }

    /// An empty pod namespace `<lab>-p-<name>` for a CNI plugin to wire
    /// (`CNI_NETNS` = its path under `/run/netns`); removed with the lab.
    pub fn pod_netns(&mut self, name: &str) -> Result<Netns> {
        let netns = Netns::create(&format!("{}-p-{name}", self.name))?;
        self.pods.push(netns.clone());
        Ok(netns)
    }

    /// Every namespace of this lab (for leak checks in tests).
    pub fn namespace_names(&self) -> Vec<String> {
        self.pods.iter().chain(self.namespaces.iter()).map(|n| n.name.clone()).collect()
    }

    /// PIDs of the daemons this lab started (for leak checks in tests).
    pub fn daemon_pids(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self.nodes.iter().flat_map(|n| n.ovs.pids()).collect();
        v.extend(self.etcd.as_ref().map(|e| e.pid()));
        v.extend(self.etcd_cluster.iter().flat_map(EtcdCluster::pids));
        v
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.pods.drain(..).rev() {
            ns.destroy();
        }
        for node in self.nodes.iter_mut() {
            node.ovs.stop();
        }
        self.nodes.clear();
        if let Some(mut e) = self.etcd.take() {
            e.stop();
        }
        // Each member ends by its PID as it drops.
        drop(self.etcd_cluster.take());
        for ns in self.namespaces.drain(..).rev() {
            ns.destroy();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
