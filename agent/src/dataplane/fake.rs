//! An in-memory node for the dataplane's unit tests: one [`World`] behind
//! the three edges. It keeps what the real parts keep and refuses what they
//! refuse where the dataplane's correctness depends on it:
//! - the switch applies a bundle all or nothing, refuses a flow naming a
//!   meter it does not hold (so meters must come before their flows), and
//!   deleting a meter deletes the flows naming it, as OVS does;
//! - OVSDB honours an ofport request unless the number is taken, then picks
//!   another, as ovs-vswitchd does;
//! - deleting a veth takes its pod end and its qdiscs with it.
//!
//! [`World::fail`] makes the next call of one operation fail, to drive
//! every rollback branch.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ovs_flows::client::{BundleError, ClientError};
use ovs_flows::ofp::{FlowOp, Meter, MeterCommand};
use ovs_flows::{Action, CookieFilter, Flow, FlowSet};

use super::edges::{Host, Switch, Vswitch};
use crate::bandwidth::tc::{self, PodDevices, ShapingError};
use crate::bandwidth::{Limits, Rate};
use crate::netlink::{MacAddr, NetlinkError, PodInterface};
use crate::ovsdb::{OvsdbError, PortInfo, PortKind, PortSpec};

/// An operation of an edge, for [`World::fail`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    Bundle,
    MeterMod,
    AddPort,
    DelPort,
    WirePod,
    ConfigurePod,
    DelLink,
    GuardVeth,
    ApplyShaping,
}

/// A veth's host end, and where its pod end is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Veth {
    pub pod_netns: PathBuf,
    pub pod_ifname: String,
    pub pod_mac: MacAddr,
    /// The pod end is up, addressed and routed.
    pub configured: bool,
}

/// Everything the fake node holds.
#[derive(Debug, Default)]
pub struct World {
    pub flows: FlowSet,
    pub meters: BTreeMap<u32, Meter>,
    /// Ports on the bridge: name -> (ofport, external_ids).
    pub ports: BTreeMap<String, (u32, BTreeMap<String, String>)>,
    /// ofports held by ports the dataplane does not know of (vxlan0, tun0,
    /// someone else's), which an ofport request cannot get.
    pub foreign_ofports: BTreeSet<u32>,
    /// The node's veths by host name.
    pub veths: BTreeMap<String, Veth>,
    /// Other links of the node (ifbs).
    pub links: BTreeSet<String>,
    /// tc shaping on the node's side, by host veth.
    pub shaping: BTreeMap<String, Limits>,
    /// A tbf an earlier version left inside a pod, by (netns, ifname).
    pub pod_tbfs: BTreeMap<(PathBuf, String), Rate>,
    pub guarded: BTreeSet<String>,
    fail: BTreeSet<Op>,
    /// Every call made, in order (`bundle`, `meter add 3`, ...).
    pub calls: Vec<String>,
}

impl World {
    /// The next call of `op` fails.
    pub fn fail(&mut self, op: Op) {
        self.fail.insert(op);
    }

    fn failing(&mut self, op: Op) -> bool {
        self.fail.remove(&op)
    }
}

/// One world shared by the three edges and the test.
#[derive(Debug, Clone, Default)]
pub struct Fake(pub Arc<Mutex<World>>);

impl Fake {
    pub fn world(&self) -> MutexGuard<'_, World> {
        // A test that panicked while holding the lock has failed already.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn refused(what: String) -> BundleError {
    BundleError::Client(ClientError::Protocol(what))
}

/// `ops` applied to `flows`, or why the switch refuses them.
fn applied(flows: &FlowSet, meters: &BTreeMap<u32, Meter>, ops: &[FlowOp]) -> Result<FlowSet, BundleError> {
    let mut out = flows.clone();
    for op in ops {
        match op {
            FlowOp::Add(f) => {
                for a in &f.actions {
                    if let Action::Meter(id) = a {
                        if !meters.contains_key(id) {
                            return Err(refused(format!("{f}: meter {id} does not exist")));
                        }
                    }
                }
                out.insert(f.clone());
            }
            FlowOp::ModifyStrict(f) => {
                if let Some(held) = out.get(&f.key()).cloned() {
                    out.insert(Flow { actions: f.actions.clone(), ..held });
                }
            }
            FlowOp::DeleteStrict(f) => {
                out.remove(&f.key());
            }
            FlowOp::DeleteByCookie { filter, table } => {
                let gone: Vec<_> = out
                    .iter()
                    .filter(|f| filter.matches(f.cookie) && table.is_none_or(|t| t == f.table))
                    .map(Flow::key)
                    .collect();
                for k in gone {
                    out.remove(&k);
                }
            }
        }
    }
    Ok(out)
}

impl Switch for Fake {
    async fn bundle(&self, ops: &[FlowOp]) -> Result<(), BundleError> {
        let mut w = self.world();
        w.calls.push(format!("bundle {}", ops.len()));
        if w.failing(Op::Bundle) {
            return Err(BundleError::Client(ClientError::NotConnected));
        }
        w.flows = applied(&w.flows, &w.meters, ops)?;
        Ok(())
    }

    async fn dump_flows(&self, table: Option<u8>, cookie: CookieFilter) -> Result<Vec<Flow>, ClientError> {
        let w = self.world();
        Ok(w.flows
            .iter()
            .filter(|f| table.is_none_or(|t| t == f.table) && cookie.matches(f.cookie))
            .cloned()
            .collect())
    }

    async fn meter_mod(&self, command: MeterCommand, meter: &Meter) -> Result<(), ClientError> {
        let mut w = self.world();
        w.calls.push(format!("meter {command:?} {}", meter.id));
        if w.failing(Op::MeterMod) {
            return Err(ClientError::NotConnected);
        }
        let held = w.meters.contains_key(&meter.id);
        match command {
            MeterCommand::Add if held => return Err(ClientError::Protocol("meter exists".into())),
            MeterCommand::Modify if !held => return Err(ClientError::Protocol("unknown meter".into())),
            MeterCommand::Add | MeterCommand::Modify => {
                w.meters.insert(meter.id, *meter);
            }
            MeterCommand::Delete => {
                w.meters.remove(&meter.id);
                // OVS deletes the flows that named the meter.
                let naming: Vec<_> = w
                    .flows
                    .iter()
                    .filter(|f| f.actions.contains(&Action::Meter(meter.id)))
                    .map(Flow::key)
                    .collect();
                for k in naming {
                    w.flows.remove(&k);
                }
            }
        }
        Ok(())
    }

    async fn meters(&self) -> Result<Vec<Meter>, ClientError> {
        Ok(self.world().meters.values().copied().collect())
    }
}

impl Vswitch for Fake {
    async fn add_port(&self, _bridge: &str, spec: &PortSpec, timeout: Duration) -> Result<u32, OvsdbError> {
        let mut w = self.world();
        w.calls.push(format!("add_port {}", spec.name));
        if w.failing(Op::AddPort) {
            return Err(OvsdbError::Timeout { what: format!("{} ofport", spec.name), after: timeout });
        }
        let taken: BTreeSet<u32> =
            w.ports.values().map(|(p, _)| *p).chain(w.foreign_ofports.iter().copied()).collect();
        let ofport = match spec.ofport_request.map(u32::from) {
            Some(p) if !taken.contains(&p) => p,
            _ => (1..).find(|p| !taken.contains(p)).unwrap_or(u32::MAX),
        };
        w.ports.insert(spec.name.clone(), (ofport, spec.external_ids.clone()));
        Ok(ofport)
    }

    async fn del_port(&self, _bridge: &str, name: &str) -> Result<bool, OvsdbError> {
        let mut w = self.world();
        w.calls.push(format!("del_port {name}"));
        if w.failing(Op::DelPort) {
            return Err(OvsdbError::Disconnected);
        }
        Ok(w.ports.remove(name).is_some())
    }

    async fn list_ports(&self, _bridge: &str) -> Result<Vec<PortInfo>, OvsdbError> {
        let w = self.world();
        Ok(w.ports
            .iter()
            .map(|(name, (ofport, ids))| PortInfo {
                name: name.clone(),
                kind: PortKind::System,
                ofport: Some(*ofport),
                external_ids: ids.clone(),
                error: None,
            })
            .collect())
    }
}

impl Host for Fake {
    async fn create_pod_veth(&self, iface: &PodInterface) -> Result<(), NetlinkError> {
        let mut w = self.world();
        w.calls.push(format!("create_pod_veth {}", iface.host_name));
        let taken = w.veths.contains_key(&iface.host_name)
            || w.veths.values().any(|v| v.pod_netns == iface.netns && v.pod_ifname == iface.ifname);
        if w.failing(Op::WirePod) || taken {
            return Err(NetlinkError::LinkExists(iface.host_name.clone()));
        }
        let veth = Veth {
            pod_netns: iface.netns.clone(),
            pod_ifname: iface.ifname.clone(),
            pod_mac: iface.mac,
            configured: false,
        };
        w.veths.insert(iface.host_name.clone(), veth);
        Ok(())
    }

    async fn configure_veth(&self, iface: &PodInterface) -> Result<(), NetlinkError> {
        let mut w = self.world();
        w.calls.push(format!("configure_veth {}", iface.host_name));
        if w.failing(Op::ConfigurePod) {
            return Err(NetlinkError::Socket(std::io::Error::other("netlink socket closed")));
        }
        let v = w
            .veths
            .get_mut(&iface.host_name)
            .ok_or_else(|| NetlinkError::NoSuchLink(iface.ifname.clone()))?;
        v.configured = true;
        Ok(())
    }

    async fn del_link(&self, name: &str) -> Result<bool, NetlinkError> {
        let mut w = self.world();
        w.calls.push(format!("del_link {name}"));
        if w.failing(Op::DelLink) {
            return Err(NetlinkError::Socket(std::io::Error::other("netlink socket closed")));
        }
        w.shaping.remove(name);
        w.guarded.remove(name);
        Ok(w.veths.remove(name).is_some() | w.links.remove(name))
    }

    async fn link_exists(&self, name: &str) -> Result<bool, NetlinkError> {
        let w = self.world();
        Ok(w.veths.contains_key(name) || w.links.contains(name))
    }

    async fn pod_link_mac(&self, netns: &Path, ifname: &str) -> Result<Option<MacAddr>, NetlinkError> {
        let w = self.world();
        Ok(w.veths.values().find(|v| v.pod_netns == netns && v.pod_ifname == ifname).map(|v| v.pod_mac))
    }

    fn guard_veth(&self, name: &str) -> std::io::Result<()> {
        let mut w = self.world();
        if w.failing(Op::GuardVeth) {
            return Err(std::io::Error::other("read-only /proc/sys"));
        }
        w.guarded.insert(name.to_string());
        Ok(())
    }

    async fn apply_shaping(&self, devices: &PodDevices<'_>, limits: &Limits) -> Result<(), ShapingError> {
        let mut w = self.world();
        w.calls.push(format!("apply_shaping {}", devices.host_veth));
        if w.failing(Op::ApplyShaping) || !w.veths.contains_key(devices.host_veth) {
            return Err(NetlinkError::NoSuchLink(devices.host_veth.to_string()).into());
        }
        let egress = limits.egress.filter(|_| tc::shapes_egress(devices.datapath));
        let ifb = tc::ifb_name(devices.host_veth);
        if egress.is_some() {
            w.links.insert(ifb);
        } else {
            w.links.remove(&ifb);
        }
        let held = Limits { ingress: limits.ingress, egress };
        if held.is_none() {
            w.shaping.remove(devices.host_veth);
        } else {
            w.shaping.insert(devices.host_veth.to_string(), held);
        }
        Ok(())
    }

    async fn installed_shaping(&self, devices: &PodDevices<'_>) -> Result<Limits, ShapingError> {
        let w = self.world();
        if !w.veths.contains_key(devices.host_veth) {
            return Err(NetlinkError::NoSuchLink(devices.host_veth.to_string()).into());
        }
        Ok(w.shaping.get(devices.host_veth).copied().unwrap_or_default())
    }

    async fn check_shaping(&self, devices: &PodDevices<'_>, wanted: &Limits) -> Result<(), ShapingError> {
        let installed = self.installed_shaping(devices).await?;
        tc::compare(devices, wanted, &installed)
    }

    async fn take_pod_tbf(&self, devices: &PodDevices<'_>) -> Result<Option<Rate>, ShapingError> {
        let mut w = self.world();
        Ok(w.pod_tbfs.remove(&(devices.pod_netns.to_path_buf(), devices.pod_ifname.to_string())))
    }
}
