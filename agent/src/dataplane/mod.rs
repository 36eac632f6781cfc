//! The node's dataplane state and every operation that changes it: pods
//! wired and unwired (CNI ADD/DEL/CHECK/GC), etcd and service updates. The
//! agent loop (`run.rs`) owns one `Dataplane` and calls it one event at a
//! time. The flows come from a [`NodePipeline`]: each event (a pod put or
//! removed, etcd's view, the services) changes it and returns the flow
//! operations that event needs, sent as one atomic bundle (an ADD that fails
//! after its flows went out sends a second one to take them back, GC one per
//! stale pod). Start, replay and resync compare the whole set with what the
//! switch holds.
//!
//! The dataplane works over three small traits (`edges.rs`): the OpenFlow
//! switch, the OVSDB ports and the host's networking. The agent gives it
//! the real clients; the unit tests (`tests.rs`) an in-memory world
//! (`fake.rs`), so every branch here runs without root.
//!
//! The pods live in one store, `pods` (by CNI attachment); `put_pod` and
//! `take_pod` change it and the pipeline's view of the pod together.

mod edges;
#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

pub use edges::{Host, NetlinkHost, Switch, Vswitch};

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cni::protocol::{Command, Request, Response};
use cni::spec::{CniError, CniResult, ErrorCode};
use ipnetwork::Ipv4Network;
use ovs_flows::client::BundleError;
use ovs_flows::ofp::{FlowOp, Meter, MeterCommand};
use ovs_flows::pipeline::{
    recovered_namespace_ids, LocalPod, NodePipeline, NodeState, Protocol, Table, FIRST_POD_OFPORT,
};
use ovs_flows::policy::PolicyView;
use ovs_flows::trace::{NodePods, TracePod, TraceService};
use ovs_flows::{reconcile, Action, Category, CookieFilter, FlowSet, Ipv4Prefix};
use tracing::{debug, info, warn};

use crate::bandwidth::{self, meter, tc, Limits, PodName, RuntimeBandwidth};
use crate::change_log::LogReader;
use crate::config::DatapathType;
use crate::etcd_source::EtcdView;
use crate::ipam::{IpamStore, Owner};
use crate::kube_events;
use crate::kube_source::{PodAnnotations, Services};
use crate::metrics::Metrics;
use crate::netlink::{MacAddr, NetlinkError, PodInterface};
use crate::ovsdb::{PortKind, PortSpec};
use crate::pods::{host_veth_name, mac_for_ip, PodKey, PodRecord};
use crate::timing::{timed, Stages};
use crate::view_follow::ViewFollower;

/// How long an ADD waits for ovs-vswitchd to give the new port an ofport.
const OFPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Fixed settings of the node the dataplane works on.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub bridge: String,
    pub pod_mtu: u32,
    /// On the userspace (netdev) datapath the pod end's offloads go off, the node
    /// kernel is kept from answering on pod veths (see `iptables.rs`), and
    /// pod egress is policed by an OpenFlow meter (see `bandwidth::meter`).
    pub datapath: DatapathType,
    /// The Kubernetes Node name (the source of the agent's Events).
    pub node_name: String,
    /// Where ovs-vswitchd's control socket is, for `revalidator/purge`
    /// after a change of policy flows (see `purge_after_policy_change`);
    /// None: never purged (tests over the fake switch).
    pub ovs_rundir: Option<PathBuf>,
}

pub struct Dataplane<S, V, H> {
    settings: NodeSettings,
    ovsdb: V,
    flows: S,
    host: H,
    ipam: IpamStore,
    /// The node's pipeline: its state (pods as `local_pod` makes them) and
    /// flows, changed event by event.
    pipeline: NodePipeline,
    /// The node's pods: the one store of them.
    pods: BTreeMap<PodKey, PodRecord>,
    /// The switch may not hold the pipeline's flows (plus the kept service
    /// flows): a bundle failed, so the next commit reads the switch back and
    /// sends the whole difference. Otherwise it does, and an event's
    /// operations are all it needs.
    installed_differs: bool,
    /// The namespace ids the switch's flows use were read back (the first
    /// full reconcile of a start does it).
    ids_recovered: bool,
    /// Where the pipeline is in etcd's view.
    view: ViewFollower,
    /// Where the pipeline is in the services' change log.
    services: LogReader,
    /// How long the pipeline took for the event the next commit sends
    /// (logged with its bundle).
    computed: Duration,
    /// The meters the switch holds, by id (the pod's ofport): pod egress
    /// limits on the netdev datapath. Added before the flows that name them,
    /// deleted after.
    meters: BTreeMap<u32, Meter>,
    /// ofports of the bridge's ports that are not pods (vxlan0, tun0, others').
    other_ofports: std::collections::BTreeSet<u32>,
    /// Bandwidth annotations of this node's pods (kept current by the pod watch).
    annotations: PodAnnotations,
    /// The last bandwidth error posted as an Event per pod, so a pod watch
    /// update repeats no warning (cleared once the annotations are valid).
    bandwidth_warned: BTreeMap<PodKey, String>,
    /// For reading a pod the watch has not delivered yet (ADD races it).
    kube: Option<kube::Client>,
    metrics: Arc<Metrics>,
    /// Until the first Service list arrives after a start, the service flows
    /// the switch already holds (from the previous agent) are the best
    /// knowledge there is: they are kept, so pods keep their ClusterIPs
    /// (kube-dns's too) while the apiserver is slow or down. `None` once the
    /// services are known.
    kept_service_flows: Option<FlowSet>,
    /// The same for NetworkPolicy: until the first complete policy view
    /// after a start, the policy flows the switch holds stay, so a restart
    /// never opens what a policy closed (fail closed). `None` once known.
    kept_policy_flows: Option<FlowSet>,
    /// Where the current CNI request's time goes (logged at its end).
    stages: Stages,
    /// Asks the purge task for a `revalidator/purge` (None without a
    /// control socket). Capacity one: a request already waiting starts after
    /// this commit too, so it covers it.
    purge: Option<tokio::sync::mpsc::Sender<()>>,
}

fn agent_error(msg: impl Into<String>, e: impl std::fmt::Display) -> CniError {
    CniError::new(ErrorCode::AgentFailure, msg).with_details(e.to_string())
}

/// The three edges a dataplane works over.
pub struct Edges<S, V, H> {
    pub switch: S,
    pub vswitch: V,
    pub host: H,
}

impl<S: Switch, V: Vswitch, H: Host> Dataplane<S, V, H> {
    /// `state`: the node's pipeline state without pods (they come with
    /// `adopt` and ADD); `round`: this start's cookie round.
    pub fn new(
        settings: NodeSettings,
        edges: Edges<S, V, H>,
        ipam: IpamStore,
        state: NodeState,
        round: u16,
        metrics: Arc<Metrics>,
    ) -> Dataplane<S, V, H> {
        Dataplane {
            settings,
            ovsdb: edges.vswitch,
            flows: edges.switch,
            host: edges.host,
            ipam,
            pipeline: NodePipeline::new(state, round),
            pods: BTreeMap::new(),
            installed_differs: false,
            ids_recovered: false,
            view: ViewFollower::default(),
            services: LogReader::default(),
            computed: Duration::ZERO,
            meters: BTreeMap::new(),
            other_ofports: Default::default(),
            annotations: PodAnnotations::new(),
            bandwidth_warned: BTreeMap::new(),
            kube: None,
            metrics,
            kept_service_flows: None,
            kept_policy_flows: None,
            stages: Stages::new(),
            purge: None,
        }
    }

    /// Services will come from a watch: keep the switch's service flows
    /// until its first list (see `kept_service_flows`).
    pub fn await_services(&mut self) {
        self.kept_service_flows = Some(FlowSet::new());
    }

    /// NetworkPolicies will come from a watch: keep the switch's policy
    /// flows until its first complete view (see `kept_policy_flows`).
    pub fn await_policies(&mut self) {
        self.kept_policy_flows = Some(FlowSet::new());
    }

    /// The pipeline's state.
    fn state(&self) -> &NodeState {
        self.pipeline.state()
    }

    /// The flows the switch must hold now: the pipeline's, plus, while the
    /// services are not known yet, the service flows kept from before.
    fn desired(&self) -> FlowSet {
        let mut desired = self.pipeline.flows();
        let kept = self.kept_service_flows.iter().chain(&self.kept_policy_flows);
        for f in kept.flat_map(FlowSet::iter) {
            if !desired.contains(&f.key()) {
                desired.insert(f.clone());
            }
        }
        desired
    }

    /// How many flows the switch holds for the pipeline.
    pub fn flow_count(&self) -> usize {
        self.pipeline.len()
    }

    /// Puts a pod in the store and in the pipeline (a record moved to
    /// another ofport leaves its old one); the flow operations it needs.
    fn put_pod(&mut self, rec: PodRecord) -> Vec<FlowOp> {
        let pod = self.local_pod(&rec);
        let mut ops = Vec::new();
        if let Some(old) = self.pods.insert(rec.key.clone(), rec) {
            if old.ofport != pod.ofport {
                ops = self.pipeline.remove_pod(old.ofport);
            }
        }
        ops.extend(self.pipeline.put_pod(pod));
        ops
    }

    /// Takes a pod out of the store and the pipeline, with the flow
    /// operations that removes.
    fn take_pod(&mut self, key: &PodKey) -> Option<(PodRecord, Vec<FlowOp>)> {
        let rec = self.pods.remove(key)?;
        let ops = self.pipeline.remove_pod(rec.ofport);
        Some((rec, ops))
    }

    /// The pods as the switch sees them, and the NetworkPolicy facts a
    /// trace names (for `/debug/pods`).
    pub fn node_pods(&self) -> NodePods {
        let pods = self
            .pods
            .values()
            .map(|r| TracePod {
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                ip: r.ip,
                mac: r.mac.to_string(),
                ofport: r.ofport,
                vni: self.state().vni_of(&r.namespace),
            })
            .collect();
        let services = self
            .state()
            .services
            .values()
            .map(|s| TraceService {
                namespace: s.namespace.clone(),
                ip: s.ip,
                ports: s
                    .ports
                    .iter()
                    .map(|p| match p.protocol {
                        Protocol::Tcp => format!("tcp/{}", p.port),
                        Protocol::Udp => format!("udp/{}", p.port),
                    })
                    .collect(),
                vni: self.state().vni_of(&s.namespace),
            })
            .collect();
        // The debug path compiles the policies again: the rule behind each
        // conjunction id and who isolates whom, as the flows have them.
        let local: Vec<&LocalPod> = self.state().pods.values().collect();
        let compiled = ovs_flows::policy::compile(&local, &self.state().policies);
        let (rules, isolated) = ovs_flows::trace::policy_facts(&compiled);
        NodePods {
            node_ip: self.state().node_ip,
            bridge: self.settings.bridge.clone(),
            pods,
            services,
            rules,
            isolated,
        }
    }

    /// Who owns the switch's counting flows (for `traffic`): each pod's
    /// namespace and name by ofport, and namespace and VNI by address, each
    /// namespace id's namespace and VNI.
    pub fn traffic_owners(&self) -> crate::traffic::Owners {
        let state = self.state();
        crate::traffic::Owners {
            pods: self.pods.values().map(|r| (r.ofport, (r.namespace.clone(), r.name.clone()))).collect(),
            pod_ips: self
                .pods
                .values()
                .map(|r| (u32::from(r.ip), (r.namespace.clone(), state.vni_of(&r.namespace))))
                .collect(),
            namespaces: state
                .namespace_ids
                .iter()
                .map(|(ns, id)| (*id, (ns.clone(), state.vni_of(ns))))
                .collect(),
        }
    }

    /// Adopts pods found on the bridge at start (from their external_ids):
    /// a restarted agent keeps serving them without touching their wiring.
    /// `other_ofports`: the ofports of every other port on the bridge.
    /// Their flows go out with the first full reconcile.
    pub fn adopt(&mut self, pods: Vec<PodRecord>, other_ofports: impl IntoIterator<Item = u32>) {
        self.other_ofports = other_ofports.into_iter().collect();
        for rec in pods {
            self.put_pod(rec);
        }
        self.metrics.pods.store(self.pods.len() as u64, Ordering::Relaxed);
    }

    /// The pipeline's view of a pod: where it is, and the meter policing
    /// its egress when the datapath polices in the switch.
    fn local_pod(&self, rec: &PodRecord) -> LocalPod {
        LocalPod {
            ofport: rec.ofport,
            ip: rec.ip,
            mac: rec.mac,
            namespace: rec.namespace.clone(),
            name: rec.name.clone(),
            egress_meter: self.egress_meter(rec.ofport, &rec.limits).map(|m| m.id),
        }
    }

    /// The meter a pod's egress limit needs (netdev datapath only).
    fn egress_meter(&self, ofport: u32, limits: &Limits) -> Option<Meter> {
        let rate = limits.egress.filter(|_| !tc::shapes_egress(self.settings.datapath))?;
        Some(meter::egress_meter(ofport, &rate))
    }

    /// Makes the switch hold `m` (added, or changed in place; the same
    /// meter is not touched, so its bucket is not refilled).
    async fn put_meter(&mut self, m: Meter) -> anyhow::Result<()> {
        let command = match self.meters.get(&m.id) {
            Some(held) if *held == m => return Ok(()),
            Some(_) => MeterCommand::Modify,
            None => MeterCommand::Add,
        };
        self.flows.meter_mod(command, &m).await?;
        self.meters.insert(m.id, m);
        Ok(())
    }

    /// Deletes a meter once no flow names it (absent is success).
    async fn drop_meter(&mut self, id: u32) -> anyhow::Result<()> {
        if let Some(m) = self.meters.get(&id).copied() {
            self.flows.meter_mod(MeterCommand::Delete, &m).await?;
            self.meters.remove(&id);
        }
        Ok(())
    }

    /// Whether `limits` would change nothing the pod has: the same limits,
    /// or (an adopted pod, whose egress is known only from its meter) the
    /// same meter.
    fn enforce_the_same(&self, rec: &PodRecord, limits: &Limits) -> bool {
        let meter = |l: &Limits| self.egress_meter(rec.ofport, l);
        *limits == rec.limits
            || (limits.ingress == rec.limits.ingress
                && !tc::shapes_egress(self.settings.datapath)
                && meter(limits) == meter(&rec.limits))
    }

    /// The meters every pod's egress limit needs, by id.
    fn desired_meters(&self) -> BTreeMap<u32, Meter> {
        self.pods.values().filter_map(|r| self.egress_meter(r.ofport, &r.limits)).map(|m| (m.id, m)).collect()
    }

    /// Makes the switch hold exactly the desired flows: reads back what is
    /// installed and sends the difference in one bundle. Used at start (new
    /// round: every flow re-added with its new cookie, older rounds' leftovers
    /// deleted, no flush) and after ovs-vswitchd reconnects. Meters first: a
    /// restarted ovs-vswitchd has none, and a flow naming a missing meter is
    /// refused (the whole bundle with it); meters no pod needs go last.
    pub async fn full_reconcile(&mut self) -> anyhow::Result<usize> {
        let t = Instant::now();
        self.meters = self.flows.meters().await?.into_iter().map(|m| (m.id, m)).collect();
        let desired_meters = self.desired_meters();
        let mut meter_ops = 0;
        for m in desired_meters.values() {
            if self.meters.get(&m.id) != Some(m) {
                self.put_meter(*m).await?;
                meter_ops += 1;
            }
        }
        // Every flow, whoever wrote it: br0 belongs to the agent.
        let installed = self.flows.dump_flows(None, CookieFilter::ANY).await?;
        if !self.ids_recovered {
            // A fresh start: keep the namespace ids the switch's flows use
            // (the pipeline is computed anew with them: the whole set).
            let pods = self.pods.values().map(|r| (r.ofport, r.namespace.clone())).collect();
            let (ids, reserved) = recovered_namespace_ids(&installed, &pods);
            let mut state = self.state().clone();
            state.namespace_ids = ids;
            if self.kept_service_flows.is_some() {
                state.reserved_namespace_ids = reserved;
            }
            self.pipeline = NodePipeline::new(state, self.pipeline.round());
            self.ids_recovered = true;
        }
        if let Some(kept) = self.kept_service_flows.as_mut() {
            // The service flows, the SERVICE_VNI flows they lead to (a
            // namespace with pods here has none until its services are
            // known), and every flow of the namespaces only services name
            // (whose ids stay reserved until the first list).
            let reserved = &self.pipeline.state().reserved_namespace_ids;
            kept.extend(
                installed
                    .iter()
                    .filter(|f| match f.cookie.category() {
                        Some(Category::Service) => true,
                        Some(Category::NamespaceId) => {
                            f.table == Table::ServiceVni.id() || reserved.contains(&f.cookie.object())
                        }
                        _ => false,
                    })
                    .cloned(),
            );
        }
        if let Some(kept) = self.kept_policy_flows.as_mut() {
            kept.extend(installed.iter().filter(|f| f.cookie.category() == Some(Category::Policy)).cloned());
        }
        let desired = self.desired();
        let tables: Vec<u8> = Table::ALL.iter().map(|t| t.id()).collect();
        let (ops, foreign) = reconcile::diff_owning(&desired, &installed, &tables);
        self.flows.bundle(&ops).await?;
        self.purge_after_policy_change(&ops);
        if foreign > 0 {
            warn!(flows = foreign, "removed flows k8s-ovs did not write from its tables");
        }
        self.installed_differs = false;
        // The switch's meters belong to the agent too: one no pod needs is a
        // leftover (of a pod deleted while the agent was down) or foreign.
        let stale: Vec<u32> =
            self.meters.keys().filter(|id| !desired_meters.contains_key(id)).copied().collect();
        for id in stale {
            self.drop_meter(id).await?;
            meter_ops += 1;
        }
        let n = ops.len() + meter_ops;
        self.metrics.bundle_seconds.observe_duration(t.elapsed());
        self.metrics.bundle_flows.observe(ops.len() as f64);
        Ok(n)
    }

    /// The periodic check that the switch still holds exactly our flows:
    /// anything changed behind the agent's back (an `ovs-ofctl` by hand, a
    /// bug) is put back, counted and logged. Steady state: one flow dump,
    /// no bundle.
    pub async fn resync(&mut self) -> anyhow::Result<usize> {
        let drift = self.full_reconcile().await?;
        if drift > 0 {
            self.metrics.flow_drift.fetch_add(drift as u64, Ordering::Relaxed);
            warn!(flows = drift, "the switch's flows drifted from the desired set; repaired");
        }
        Ok(drift)
    }

    /// Sends one event's flow operations in one bundle; after a failed one
    /// (see `installed_differs`), a full reconcile instead, which covers
    /// them. On failure nothing changed on the switch.
    pub async fn commit(&mut self, ops: Vec<FlowOp>) -> anyhow::Result<()> {
        if self.installed_differs {
            return self.full_reconcile().await.map(|_| ());
        }
        if ops.is_empty() {
            return Ok(());
        }
        let t = Instant::now();
        let result = self.flows.bundle(&ops).await;
        if result.is_ok() {
            self.purge_after_policy_change(&ops);
            self.metrics.bundle_seconds.observe_duration(t.elapsed());
            self.metrics.bundle_flows.observe(ops.len() as f64);
            let computed = std::mem::take(&mut self.computed);
            debug!(?computed, bundle = ?t.elapsed(), ops = ops.len(), flows = self.pipeline.len(), "flows synced");
        }
        self.bundled(result)
    }

    /// After a bundle that changed policy flows, ovs-vswitchd's cached
    /// datapath flows are purged, off the loop. Measured on OVS 3.1 (netdev
    /// datapath, `lab_policy_truth_table_equals_the_kubernetes_rules`): after
    /// a sequence of policy changes some cached datapath flows past the
    /// conntrack recirculation kept the old verdict for over a minute while
    /// the tables and a fresh `ofproto/trace` gave the new one, and
    /// `revalidator/purge` ended every difference. Until that is understood
    /// in OVS, the agent purges: what runs in between is the old policy's
    /// verdict (which the old policy allowed), and the cost is one upcall per
    /// active megaflow after a policy change.
    fn purge_after_policy_change(&self, ops: &[FlowOp]) {
        let policy = |f: &ovs_flows::Flow| f.cookie.category() == Some(Category::Policy);
        let touched = ops.iter().any(|op| match op {
            FlowOp::Add(f) | FlowOp::ModifyStrict(f) | FlowOp::DeleteStrict(f) => {
                policy(f) || f.table == Table::EgressPolicy.id() || f.table == Table::IngressPolicy.id()
            }
            FlowOp::DeleteByCookie { .. } => true,
        });
        if let Some(tx) = self.purge.as_ref().filter(|_| touched) {
            // Full: one is waiting already, and it starts after this commit.
            let _ = tx.try_send(());
        }
    }

    /// Starts the task that purges ovs-vswitchd's datapath flows on request
    /// (needs the runtime; the agent calls it once at start).
    pub fn start_purging(&mut self) {
        let Some(rundir) = self.settings.ovs_rundir.clone() else { return };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                let r = crate::unixctl::call(
                    &rundir,
                    "ovs-vswitchd",
                    "revalidator/purge",
                    &[],
                    Duration::from_secs(5),
                )
                .await;
                match r {
                    Ok(_) => debug!("datapath flows purged after a policy change"),
                    Err(e) => warn!(error = %e, "purging the datapath flows after a policy change failed"),
                }
            }
        });
        self.purge = Some(tx);
    }

    /// Records how a bundle ended: after a failure the switch's flows are
    /// no longer known to be the pipeline's.
    fn bundled(&mut self, result: Result<(), BundleError>) -> anyhow::Result<()> {
        if let Err(e) = result {
            self.installed_differs = true;
            self.metrics.flow_errors.fetch_add(1, Ordering::Relaxed);
            return Err(e.into());
        }
        Ok(())
    }

    /// etcd changed: namespace VNIs, other nodes' subnets, the mode.
    pub async fn on_view(&mut self, view: &EtcdView) -> anyhow::Result<()> {
        let ops = self.on_view_state(view);
        self.commit(ops).await
    }

    /// The pipeline part of [`Dataplane::on_view`]: the flow operations the
    /// view's changes need, not sent yet.
    pub fn on_view_state(&mut self, view: &EtcdView) -> Vec<FlowOp> {
        let t = Instant::now();
        let ops = self.view.apply(view, &mut self.pipeline);
        self.computed = t.elapsed();
        ops
    }

    /// A complete service map (the watch's first list, or any change after it).
    pub async fn on_services(&mut self, services: &Services) -> anyhow::Result<()> {
        let ops = self.on_services_state(services);
        self.commit(ops).await
    }

    /// The pipeline part of [`Dataplane::on_services`]. The first list ends
    /// the kept service flows: those the pipeline now has are replaced by
    /// its operations, the others deleted.
    pub fn on_services_state(&mut self, services: &Services) -> Vec<FlowOp> {
        let t = Instant::now();
        let mut ops = match self.services.read(&services.changes) {
            Some(changed) => self
                .pipeline
                .update_services(changed.into_iter().map(|ip| (*ip, services.map.get(ip).cloned()))),
            None => self.pipeline.set_services(&services.map),
        };
        if let Some(kept) = self.kept_service_flows.take() {
            self.pipeline.release_reserved_ids();
            let gone = kept.into_iter().filter(|f| !self.pipeline.holds(f));
            ops.extend(gone.map(FlowOp::DeleteStrict));
            info!(
                services = services.map.len(),
                "first Service list: service flows follow the apiserver again"
            );
        }
        self.computed = t.elapsed();
        ops
    }

    /// The cluster's NetworkPolicies changed (or the pods or namespaces they
    /// select): the node's policy flows, in one bundle.
    pub async fn on_policies(&mut self, view: Arc<PolicyView>) -> anyhow::Result<()> {
        let ops = self.on_policies_state(view);
        self.commit(ops).await
    }

    /// The pipeline part of [`Dataplane::on_policies`]. The first view ends
    /// the kept policy flows: those the pipeline now has are replaced by its
    /// operations, the others deleted, in the same bundle.
    pub fn on_policies_state(&mut self, view: Arc<PolicyView>) -> Vec<FlowOp> {
        let t = Instant::now();
        self.metrics.network_policies.store(view.policies.len() as u64, Ordering::Relaxed);
        let mut ops = self.pipeline.set_policies(view);
        if let Some(kept) = self.kept_policy_flows.take() {
            let gone = kept.into_iter().filter(|f| !self.pipeline.holds(f));
            ops.extend(gone.map(FlowOp::DeleteStrict));
            info!(
                policies = self.state().policies.policies.len(),
                "first NetworkPolicy view: policy flows follow the apiserver"
            );
        }
        self.metrics.policy_flows.store(self.pipeline.policy_flow_count() as u64, Ordering::Relaxed);
        self.computed = t.elapsed();
        ops
    }

    /// Answers one CNI request.
    pub async fn handle(&mut self, req: Request) -> Response {
        let t = Instant::now();
        self.stages = Stages::new();
        let outcome = match req.command {
            Command::Add => self.add(&req).await.map(Some),
            Command::Del => self.del(&req).await.map(|()| None),
            Command::Check => self.check(&req).await.map(|()| None),
            Command::Gc => self.gc(&req).await.map(|()| None),
            Command::Status => Ok(None),
        };
        match req.command {
            Command::Add => self.metrics.cni_add_seconds.observe_duration(t.elapsed()),
            Command::Del => self.metrics.cni_del_seconds.observe_duration(t.elapsed()),
            _ => {}
        }
        if matches!(req.command, Command::Add | Command::Del) {
            self.stages.log(if req.command == Command::Add { "ADD" } else { "DEL" });
        }
        self.metrics.pods.store(self.pods.len() as u64, Ordering::Relaxed);
        match outcome {
            Ok(result) => Response::Ok { result },
            Err(e) => {
                self.metrics.cni_errors.fetch_add(1, Ordering::Relaxed);
                warn!(command = ?req.command, container = %req.container_id, error = %e, "CNI request failed");
                Response::Error(e)
            }
        }
    }

    fn key(req: &Request) -> PodKey {
        PodKey { container_id: req.container_id.clone(), ifname: req.ifname.clone() }
    }

    fn result_of(&self, rec: &PodRecord) -> CniResult {
        rec.cni_result(self.state().cluster_cidr.prefix_len(), self.state().gateway_ip, None)
    }

    async fn add(&mut self, req: &Request) -> Result<CniResult, CniError> {
        let key = Self::key(req);
        // A repeated ADD of a wired attachment returns the same result.
        if let Some(rec) = self.pods.get(&key) {
            return Ok(self.result_of(rec));
        }
        // Bandwidth first: a bad value fails the ADD before anything exists.
        let pod = PodName::new(
            req.pod_namespace.clone().unwrap_or_else(|| "default".into()),
            req.pod_name.clone().unwrap_or_default(),
        );
        let runtime = match &req.runtime_config {
            Some(rc) => RuntimeBandwidth::from_runtime_config(&pod, rc).map_err(bandwidth_error)?,
            None => None,
        };
        let annotations = self.annotations_of(&pod).await;
        let limits = Limits::resolve(&pod, &annotations, runtime.as_ref(), self.settings.pod_mtu)
            .map_err(bandwidth_error)?;
        let owner = Owner::new(key.container_id.clone(), key.ifname.clone());
        self.stages.lap("prepare");
        let ip = self.ipam.allocate(&owner).map_err(|e| agent_error("IP allocation failed", e))?;
        self.stages.lap("ipam");
        match self.wire(req, &key, ip, runtime, limits).await {
            Ok(rec) => {
                let result = self.result_of(&rec);
                info!(pod = %rec.name, namespace = %rec.namespace, %ip, ofport = rec.ofport, "pod added");
                Ok(result)
            }
            Err(e) => {
                if let Err(re) = self.ipam.release(&owner) {
                    warn!(error = %re, "releasing the IP of a failed ADD failed");
                }
                Err(e)
            }
        }
    }

    /// The meter, then at once the flows and the veth, whose pod end is
    /// configured (up, address, route) while OVS takes its port (the wait
    /// for ovs-vswitchd is the longest step on a busy bridge); then
    /// shaping. Each step is undone if a later one fails, so a failed ADD
    /// leaves nothing behind.
    async fn wire(
        &mut self,
        req: &Request,
        key: &PodKey,
        ip: Ipv4Addr,
        runtime_bandwidth: Option<RuntimeBandwidth>,
        limits: Limits,
    ) -> Result<PodRecord, CniError> {
        let host_veth = host_veth_name(key);
        let mac = mac_for_ip(ip);
        let address = Ipv4Network::new(ip, self.state().cluster_cidr.prefix_len())
            .map_err(|e| agent_error("bad pod address", e))?;
        let iface = PodInterface {
            netns: PathBuf::from(&req.netns),
            host_name: host_veth.clone(),
            ifname: key.ifname.clone(),
            mac: MacAddr(mac.0),
            mtu: self.settings.pod_mtu,
            address,
            gateway: self.state().gateway_ip,
            offloads_off: self.settings.datapath == DatapathType::Netdev,
        };
        let mut rec = PodRecord {
            key: key.clone(),
            namespace: req.pod_namespace.clone().unwrap_or_else(|| "default".into()),
            name: req.pod_name.clone().unwrap_or_default(),
            netns: req.netns.clone(),
            host_veth: host_veth.clone(),
            ofport: 0,
            ip,
            mac,
            runtime_bandwidth,
            limits,
        };
        // The agent picks the ofport (ofport_request), so the pod's flows can
        // go to the switch while the veth is made and ovs-vswitchd adds the
        // port: the round trips overlap instead of adding up. Flows for a
        // port that does not exist yet are valid and simply match nothing;
        // nothing passes the veth before its pod end is up.
        rec.ofport = self.free_ofport();
        let mut spec = PortSpec::new(&host_veth, PortKind::System).ofport_request(rec.ofport as u16);
        spec.external_ids = rec.external_ids();
        // The egress meter before the flows that name it.
        if let Some(m) = self.egress_meter(rec.ofport, &limits) {
            self.put_meter(m).await.map_err(|e| agent_error("adding the pod's egress meter failed", e))?;
        }
        self.stages.lap("meter");
        let ops = self.put_pod(rec.clone());
        self.stages.lap("compute");
        let (wired, flows) = if self.installed_differs {
            // The switch's flows are not known: a full reconcile first (it
            // covers this pod's flows), then the veth and the port.
            let (flows, bundle_took) = timed(self.commit(ops)).await;
            self.stages.record("bundle", bundle_took);
            let (wired, took) = self.wire_veth_and_port(&iface, &spec).await;
            for (stage, d) in took {
                self.stages.record(stage, d);
            }
            (wired, flows)
        } else {
            let ((wired, took), (flows, bundle_took)) =
                tokio::join!(self.wire_veth_and_port(&iface, &spec), timed(self.flows.bundle(&ops)));
            for (stage, d) in took {
                self.stages.record(stage, d);
            }
            self.stages.record("bundle", bundle_took);
            if flows.is_ok() {
                self.purge_after_policy_change(&ops);
            }
            (wired, self.bundled(flows))
        };
        self.stages.skip();
        let failure = match (wired, flows) {
            (Err(e), _) => Some(e),
            (Ok(got), Ok(())) if got == rec.ofport => None,
            (Ok(got), Ok(())) => {
                // ovs-vswitchd could not honour the request (the number was
                // taken by a port we do not know): follow what it chose.
                warn!(requested = rec.ofport, got, port = %host_veth, "ofport request not honoured");
                let requested = rec.ofport;
                rec.ofport = got;
                let moved = async {
                    if let Some(m) = self.egress_meter(got, &limits) {
                        self.put_meter(m).await?;
                    }
                    let ops = self.put_pod(rec.clone());
                    self.commit(ops).await?;
                    self.drop_meter(requested).await
                };
                let moved = moved.await.err().map(|e| agent_error("installing the pod's flows failed", e));
                self.stages.lap("moved");
                moved
            }
            (_, Err(e)) => Some(agent_error("installing the pod's flows failed", e)),
        };
        // Shaping last: ovs-vswitchd resets a port's qdiscs when it takes the
        // port (its own QoS and ingress policing, in the reconfiguration that
        // ends with the ofport written to OVSDB), so tc goes on after that.
        let failure = match failure {
            None if !self.tc_limits(&limits).is_none() => {
                let devices = self.devices(&host_veth, &req.netns, &key.ifname);
                self.host
                    .apply_shaping(&devices, &limits)
                    .await
                    .err()
                    .map(|e| agent_error("installing the pod's bandwidth shaping failed", e))
            }
            other => other,
        };
        self.stages.lap("tc");
        if let Some(err) = failure {
            let ops = self.take_pod(key).map(|(_, ops)| ops).unwrap_or_default();
            if let Err(e) = self.commit(ops).await {
                warn!(error = %e, "removing the flows of a failed ADD failed");
            } else if let Err(e) = self.drop_meter(rec.ofport).await {
                warn!(error = %e, "removing the egress meter of a failed ADD failed");
            }
            let _ = self.ovsdb.del_port(&self.settings.bridge, &host_veth).await;
            self.drop_shaping(&host_veth).await;
            let _ = self.host.del_link(&host_veth).await;
            return Err(err);
        }
        Ok(rec)
    }

    /// The pod's veth (a leftover of an earlier, half-finished ADD is
    /// replaced); then at once the OVS port and the veth's configuration
    /// (guarded on the netdev datapath before its pod end goes up). The
    /// port's row goes to OVSDB right after the veth is made: ovs-vswitchd
    /// reconfigures on the veth's appearance anyway, and a row that arrives
    /// during that reconfiguration is taken in the next one with no wait in
    /// between. Returns the ofport the switch gave, or the first failure as
    /// the ADD reports it (the caller undoes it all), with the time of each
    /// step.
    async fn wire_veth_and_port(
        &self,
        iface: &PodInterface,
        spec: &PortSpec,
    ) -> (Result<u32, CniError>, [(&'static str, Duration); 3]) {
        let t = Instant::now();
        let wiring = |e| agent_error("wiring the pod interface failed", e);
        // Looked for only when the name is taken: no request otherwise.
        let created = match self.host.create_pod_veth(iface).await {
            Err(NetlinkError::LinkExists(_))
                if self.host.del_link(&iface.host_name).await.unwrap_or(false) =>
            {
                self.host.create_pod_veth(iface).await
            }
            created => created,
        };
        let link = t.elapsed();
        if let Err(e) = created {
            return (Err(wiring(e)), [("link", link), ("pod_end", Duration::ZERO), ("port", Duration::ZERO)]);
        }
        let configured = async {
            if self.settings.datapath == DatapathType::Netdev {
                self.host
                    .guard_veth(&iface.host_name)
                    .map_err(|e| agent_error("guarding the pod veth failed", e))?;
            }
            self.host.configure_veth(iface).await.map_err(wiring)
        };
        let ((pod_end, pod_end_took), (port, port_took)) = tokio::join!(
            timed(configured),
            timed(self.ovsdb.add_port(&self.settings.bridge, spec, OFPORT_TIMEOUT))
        );
        let result = match (pod_end, port) {
            (Err(e), _) => Err(e),
            (_, Err(e)) => Err(agent_error("adding the OVS port failed", e)),
            (Ok(()), Ok(ofport)) => Ok(ofport),
        };
        (result, [("link", link), ("pod_end", pod_end_took), ("port", port_took)])
    }

    /// The part of a pod's limits tc enforces (on the netdev datapath,
    /// egress is the meter's).
    fn tc_limits(&self, limits: &Limits) -> Limits {
        Limits {
            ingress: limits.ingress,
            egress: limits.egress.filter(|_| tc::shapes_egress(self.settings.datapath)),
        }
    }

    fn devices<'a>(&self, host_veth: &'a str, netns: &'a str, ifname: &'a str) -> tc::PodDevices<'a> {
        tc::PodDevices {
            host_veth,
            pod_netns: std::path::Path::new(netns),
            pod_ifname: ifname,
            datapath: self.settings.datapath,
        }
    }

    /// Removes the egress ifb of a pod veth (kernel datapath; gone = fine).
    async fn drop_shaping(&self, host_veth: &str) {
        if self.settings.datapath == DatapathType::System {
            if let Err(e) = self.host.del_link(&tc::ifb_name(host_veth)).await {
                warn!(error = %e, veth = host_veth, "removing the egress ifb failed");
            }
        }
    }

    /// The pod's bandwidth annotations: from the pod watch, or, when an ADD
    /// overtakes the watch, read from the API server directly.
    async fn annotations_of(&self, pod: &PodName) -> BTreeMap<String, String> {
        if let Some(a) = self.annotations.get(pod) {
            return a.clone();
        }
        let Some(client) = self.kube.clone() else { return BTreeMap::new() };
        let api: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client, &pod.namespace);
        match tokio::time::timeout(Duration::from_secs(2), api.get_opt(&pod.name)).await {
            Ok(Ok(Some(p))) => crate::kube_source::bandwidth_annotations(&p),
            Ok(Ok(None)) => BTreeMap::new(),
            Ok(Err(e)) => {
                warn!(pod = %pod, error = %e, "reading the pod's annotations failed; no bandwidth limits");
                BTreeMap::new()
            }
            Err(_) => {
                warn!(pod = %pod, "reading the pod's annotations timed out; no bandwidth limits");
                BTreeMap::new()
            }
        }
    }

    pub fn set_kube(&mut self, client: kube::Client) {
        self.kube = Some(client);
    }

    /// Installs every pod's shaping again: a restarted ovs-vswitchd resets
    /// the qdiscs of the ports it takes back.
    pub async fn reapply_shaping(&mut self) {
        for rec in self.pods.values().filter(|r| !r.limits.is_none()) {
            let devices = self.devices(&rec.host_veth, &rec.netns, &rec.key.ifname);
            if let Err(e) = self.host.apply_shaping(&devices, &rec.limits).await {
                self.metrics.bandwidth_errors.fetch_add(1, Ordering::Relaxed);
                warn!(pod = %rec.name, error = %e, "re-installing bandwidth shaping failed");
            }
        }
    }

    /// Reads the limits adopted pods have (after a restart): tc's from the
    /// kernel, egress on the netdev datapath from the switch's meters. A tbf
    /// an earlier version put inside the pod is taken over by a meter.
    pub async fn read_adopted_shaping(&mut self) {
        let meters_police = !tc::shapes_egress(self.settings.datapath);
        let held: BTreeMap<u32, Meter> = match meters_police {
            true => match self.flows.meters().await {
                Ok(ms) => ms.into_iter().map(|m| (m.id, m)).collect(),
                Err(e) => {
                    warn!(error = %e, "reading the switch's meters failed; adopted pods' egress limits unknown");
                    BTreeMap::new()
                }
            },
            false => BTreeMap::new(),
        };
        let keys: Vec<PodKey> = self.pods.keys().cloned().collect();
        for k in keys {
            let Some(rec) = self.pods.get(&k).cloned() else { continue };
            let devices = self.devices(&rec.host_veth, &rec.netns, &rec.key.ifname);
            let mut limits = match self.host.installed_shaping(&devices).await {
                Ok(l) => l,
                Err(e) => {
                    warn!(pod = %rec.name, error = %e, "reading an adopted pod's shaping failed");
                    continue;
                }
            };
            if meters_police {
                limits.egress = match held.get(&rec.ofport) {
                    Some(m) => Some(meter::rate_of(m)),
                    None => match self.host.take_pod_tbf(&devices).await {
                        Ok(Some(rate)) => {
                            info!(pod = %rec.name, %rate, "egress limit moved from a qdisc inside the pod to a meter");
                            Some(rate)
                        }
                        Ok(None) => None,
                        Err(e) => {
                            warn!(pod = %rec.name, error = %e, "reading an in-pod egress qdisc failed");
                            None
                        }
                    },
                };
            }
            // Before the first full reconcile (at start) the ops need not
            // be sent; should this ever run later, the next commit makes
            // the switch whole.
            if !self.put_pod(PodRecord { limits, ..rec }).is_empty() {
                self.installed_differs = true;
            }
        }
    }

    /// Gives a pod new limits, live: tc for what tc shapes; on the netdev
    /// datapath the egress meter added or changed before the flows name it,
    /// deleted after they stop.
    async fn set_limits(&mut self, k: &PodKey, limits: Limits) -> anyhow::Result<()> {
        let Some(rec) = self.pods.get(k).cloned() else { return Ok(()) };
        let devices = self.devices(&rec.host_veth, &rec.netns, &rec.key.ifname);
        self.host.apply_shaping(&devices, &limits).await?;
        let wanted = self.egress_meter(rec.ofport, &limits);
        if let Some(m) = wanted {
            self.put_meter(m).await?;
        }
        let ofport = rec.ofport;
        let ops = self.put_pod(PodRecord { limits, ..rec });
        self.commit(ops).await?;
        if wanted.is_none() {
            self.drop_meter(ofport).await?;
        }
        Ok(())
    }

    /// The pod watch changed: bring every pod's shaping in line with its
    /// annotations, live. An invalid new value keeps the previous shaping
    /// (and is logged and counted); the pod is never recreated.
    pub async fn on_pods(&mut self, annotations: &PodAnnotations) {
        self.annotations = annotations.clone();
        let keys: Vec<PodKey> = self.pods.keys().cloned().collect();
        for k in keys {
            let Some(rec) = self.pods.get(&k).cloned() else { continue };
            let pod = rec.pod_name();
            let Some(a) = self.annotations.get(&pod) else { continue };
            let resolved = Limits::resolve(&pod, a, rec.runtime_bandwidth.as_ref(), self.settings.pod_mtu);
            if resolved.is_ok() {
                self.bandwidth_warned.remove(&k);
            }
            match resolved {
                Ok(l) if self.enforce_the_same(&rec, &l) => {}
                Ok(l) => match self.set_limits(&k, l).await {
                    Ok(()) => info!(pod = %pod, limits = %l, "bandwidth shaping changed"),
                    Err(e) => {
                        self.metrics.bandwidth_errors.fetch_add(1, Ordering::Relaxed);
                        warn!(pod = %pod, error = %e, "changing the bandwidth shaping failed");
                    }
                },
                Err(e) => {
                    let message =
                        format!("{e}; the pod keeps its current bandwidth shaping ({})", rec.limits);
                    if self.bandwidth_warned.get(&k) != Some(&message) {
                        self.metrics.bandwidth_errors.fetch_add(1, Ordering::Relaxed);
                        warn!(error = %e, "invalid bandwidth annotation; keeping the pod's current shaping");
                        if let Some(client) = self.kube.clone() {
                            let node = self.settings.node_name.clone();
                            let reason = kube_events::INVALID_BANDWIDTH;
                            kube_events::warn_pod(
                                client,
                                node,
                                pod.namespace.clone(),
                                pod.name.clone(),
                                reason,
                                message.clone(),
                            );
                        }
                        self.bandwidth_warned.insert(k.clone(), message);
                    }
                }
            }
        }
    }

    /// The lowest ofport from [`FIRST_POD_OFPORT`] that no pod and no other
    /// port of the bridge holds.
    fn free_ofport(&self) -> u32 {
        let taken: HashSet<u32> =
            self.pods.values().map(|r| r.ofport).chain(self.other_ofports.iter().copied()).collect();
        (FIRST_POD_OFPORT..).find(|p| !taken.contains(p)).unwrap_or(FIRST_POD_OFPORT)
    }

    /// Idempotent: an unknown attachment or a vanished namespace is success.
    async fn del(&mut self, req: &Request) -> Result<(), CniError> {
        let key = Self::key(req);
        self.unwire(&key).await
    }

    async fn unwire(&mut self, key: &PodKey) -> Result<(), CniError> {
        let host_veth = match self.take_pod(key) {
            Some((rec, ops)) => {
                // Flows first: no packet is sent to a port about to vanish.
                if let Err(e) = self.commit(ops).await {
                    // Still a pod (the next commit sends the whole difference).
                    self.put_pod(rec);
                    return Err(agent_error("removing the pod's flows failed", e));
                }
                self.stages.lap("flows");
                let (ofport, name) = (rec.ofport, rec.host_veth);
                // No flow names the meter any more; a failure leaves a
                // leftover the next resync deletes.
                if let Err(e) = self.drop_meter(ofport).await {
                    warn!(error = %e, "removing the pod's egress meter failed");
                }
                self.stages.lap("meter");
                name
            }
            None => host_veth_name(key),
        };
        // The port and the veth go at once (the kernel's veth teardown is the
        // slow part); deleting the host end takes the pod end with it.
        self.stages.skip();
        let ((port, port_took), (link, link_took)) = tokio::join!(
            timed(self.ovsdb.del_port(&self.settings.bridge, &host_veth)),
            timed(self.host.del_link(&host_veth))
        );
        self.stages.record("port", port_took);
        self.stages.record("link", link_took);
        self.stages.skip();
        port.map_err(|e| agent_error("removing the OVS port failed", e))?;
        link.map_err(|e| agent_error("removing the veth failed", e))?;
        // The qdiscs went with the veth; an egress ifb is a device of its own.
        self.drop_shaping(&host_veth).await;
        self.stages.lap("ifb");
        self.ipam
            .release(&Owner::new(key.container_id.clone(), key.ifname.clone()))
            .map_err(|e| agent_error("releasing the IP failed", e))?;
        self.stages.lap("ipam");
        Ok(())
    }

    /// The attachment is as ADD left it: known, veth ends present, the pod
    /// end with its address, the OVS port with its ofport, and the runtime's
    /// prevResult naming the same address.
    async fn check(&mut self, req: &Request) -> Result<(), CniError> {
        let key = Self::key(req);
        let unknown = |m: String| CniError::new(ErrorCode::UnknownContainer, m);
        let rec = self.pods.get(&key).cloned().ok_or_else(|| {
            unknown(format!("container {} / {} is not attached", key.container_id, key.ifname))
        })?;
        if let Some(prev) = &req.prev_result {
            let want = format!("{}/{}", rec.ip, self.state().cluster_cidr.prefix_len());
            let ips = prev.get("ips").and_then(|v| v.as_array()).cloned().unwrap_or_default();
            if !ips.iter().any(|i| i.get("address").and_then(|a| a.as_str()) == Some(want.as_str())) {
                return Err(CniError::new(
                    ErrorCode::InvalidNetworkConfig,
                    format!("prevResult does not hold the pod's address {want}"),
                ));
            }
        }
        match self.host.link_exists(&rec.host_veth).await {
            Ok(true) => {}
            Ok(false) => return Err(unknown(format!("host veth {} is gone", rec.host_veth))),
            Err(e) => return Err(agent_error("reading the host veth failed", e)),
        }
        match self.host.pod_link_mac(std::path::Path::new(&req.netns), &key.ifname).await {
            Ok(Some(mac)) if mac == MacAddr(rec.mac.0) => {}
            Ok(Some(_)) => return Err(agent_error("the pod interface has another MAC", &key.ifname)),
            Ok(None) => return Err(unknown(format!("interface {} is gone from the pod", key.ifname))),
            Err(e) => return Err(agent_error("reading the pod interface failed", e)),
        }
        let ports = self
            .ovsdb
            .list_ports(&self.settings.bridge)
            .await
            .map_err(|e| agent_error("reading the bridge failed", e))?;
        if !ports.iter().any(|p| p.name == rec.host_veth && p.ofport == Some(rec.ofport)) {
            return Err(unknown(format!("OVS port {} (ofport {}) is gone", rec.host_veth, rec.ofport)));
        }
        // Only shaping the agent installed is checked: without limits of its
        // own the pod may be shaped by a chained plugin (upstream bandwidth).
        if !rec.limits.is_none() {
            let devices = self.devices(&rec.host_veth, &req.netns, &key.ifname);
            self.host
                .check_shaping(&devices, &rec.limits)
                .await
                .map_err(|e| agent_error("the pod's bandwidth shaping is not as requested", e))?;
        }
        if let Some(want) = self.egress_meter(rec.ofport, &rec.limits) {
            self.check_meter(&want).await?;
        }
        Ok(())
    }

    /// CHECK on the netdev datapath: the switch holds the pod's egress
    /// meter as wanted, and the pod's SPOOF_GUARD flows name it.
    async fn check_meter(&self, want: &Meter) -> Result<(), CniError> {
        let not_as_requested = "the pod's egress meter is not as requested";
        let held =
            self.flows.meters().await.map_err(|e| agent_error("reading the switch's meters failed", e))?;
        let show = |m: &Meter| format!("meter {}: {} kbit/s burst {} kbit", m.id, m.kbps, m.burst_kbits);
        match held.iter().find(|m| m.id == want.id) {
            Some(m) if m == want => {}
            Some(m) => {
                let e = format!("wanted {}, installed {}", show(want), show(m));
                return Err(agent_error(not_as_requested, e));
            }
            None => {
                return Err(agent_error(not_as_requested, format!("{} is gone from the switch", show(want))))
            }
        }
        let flows = self
            .flows
            .dump_flows(Some(Table::SpoofGuard.id()), CookieFilter::owner(Category::Pod, want.id))
            .await
            .map_err(|e| agent_error("reading the pod's flows failed", e))?;
        // The flows that let the pod's packets on (its drop flow polices nothing).
        let passing: Vec<_> =
            flows.iter().filter(|f| f.actions.iter().any(|a| matches!(a, Action::GotoTable(_)))).collect();
        if passing.is_empty() || !passing.iter().all(|f| f.actions.contains(&Action::Meter(want.id))) {
            return Err(agent_error(
                not_as_requested,
                format!("the pod's SPOOF_GUARD flows do not use meter {}", want.id),
            ));
        }
        Ok(())
    }

    /// Removes every attachment the runtime no longer knows, and IPs leaked
    /// by attachments that never completed.
    async fn gc(&mut self, req: &Request) -> Result<(), CniError> {
        let Some(valid) = &req.valid_attachments else {
            return Err(CniError::new(ErrorCode::InvalidNetworkConfig, "GC needs cni.dev/valid-attachments"));
        };
        let keep: HashSet<PodKey> = valid
            .iter()
            .map(|a| PodKey { container_id: a.container_id.clone(), ifname: a.ifname.clone() })
            .collect();
        let stale: Vec<PodKey> = self.pods.keys().filter(|k| !keep.contains(k)).cloned().collect();
        for key in stale {
            info!(container = %key.container_id, "GC: removing a stale attachment");
            self.unwire(&key).await?;
        }
        let keep_ids: HashSet<String> = keep.iter().map(|k| k.container_id.clone()).collect();
        let freed = self.ipam.gc(&keep_ids).map_err(|e| agent_error("IPAM GC failed", e))?;
        if !freed.is_empty() {
            info!(freed = freed.len(), "GC: released leaked IPs");
        }
        Ok(())
    }
}

fn bandwidth_error(e: bandwidth::BandwidthError) -> CniError {
    CniError::new(ErrorCode::InvalidPodConfig, e.to_string())
}

/// An ipnetwork subnet as the pipeline's prefix type.
pub fn prefix_of(net: Ipv4Network) -> Ipv4Prefix {
    Ipv4Prefix::new(net.network(), net.prefix())
}
