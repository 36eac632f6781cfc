//! The controller's decisions, as a pure function of what it knows: which
//! records to create, change, restore or delete, and which errors to show.
//! The shell applies each `Write` as one etcd transaction that compares the
//! record's mod_revision, so a write planned on a stale view never lands.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use etcd_schema::{
    Action, HostSubnet, Keys, NetNamespace, NetworkConfig, PluginName, RecordError, RequestOutcome,
    GLOBAL_VNI,
};
use ipnetwork::Ipv4Network;

use crate::alloc::{AllocError, SubnetAllocator, VniAllocator};
use crate::model::{Entry, KubeView, Records};
use crate::netns_object::{describe, untaken, Untaken};

/// What happens to the record itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordWrite {
    Put(String),
    Delete,
    /// Leave the record as it is (only the error beside it changes).
    Keep,
}

/// What happens to the error key beside the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorWrite {
    Put(RecordError),
    Clear,
    Keep,
}

/// One transaction: the record (if still at `expect_rev`), its error key
/// and, for a net namespace, the controller's applied copy that agents
/// program: the copy changes only in the same fenced transaction as the
/// validated record, so no unvalidated NetID is ever in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub key: String,
    /// The mod_revision the record must still have; 0 = must not exist.
    pub expect_rev: i64,
    pub record: RecordWrite,
    pub error_key: String,
    pub error: ErrorWrite,
    /// `applied/netnamespaces/<ns>` and what happens to it.
    pub applied: Option<(String, RecordWrite)>,
    /// `kube/netnamespaces/<ns>`: the NetNamespace object request this
    /// write takes (applies, refuses or supersedes), in the same transaction,
    /// so a request is taken exactly once.
    pub request: Option<(String, RecordWrite)>,
    /// What this write does, for the log.
    pub why: String,
    /// The namespace's NetID changes by an action: once committed, an Event
    /// on the Namespace says so (`kubectl describe namespace`).
    pub tenancy: Option<TenancyChange>,
}

/// An applied action that changed a namespace's NetID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenancyChange {
    pub namespace: String,
    pub action: Action,
    pub old_net_id: u32,
    pub new_net_id: u32,
    /// Where the request came from (an etcd edit, a NetNamespace object).
    pub via: String,
}

impl TenancyChange {
    /// `Some` when the NetID changes.
    fn of(namespace: &str, action: &Action, old: u32, new: u32, via: String) -> Option<TenancyChange> {
        (old != new).then(|| TenancyChange {
            namespace: namespace.to_string(),
            action: action.clone(),
            old_net_id: old,
            new_net_id: new,
            via,
        })
    }

    /// The Event's message.
    pub fn message(&self) -> String {
        let what = match &self.action {
            Action::Join(to) => format!("joined {to}"),
            Action::Isolate => "isolated".to_string(),
            Action::Global => "made global".to_string(),
        };
        format!("{what} ({}): NetID {} -> {}", self.via, self.old_net_id, self.new_net_id)
    }
}

/// Namespaces that always get VNI 0 and refuse actions.
#[derive(Debug, Clone)]
pub struct Policy {
    pub admin_namespaces: BTreeSet<String>,
}

impl Policy {
    /// `kube-system` plus the given admin namespaces.
    pub fn new(admin: impl IntoIterator<Item = String>) -> Policy {
        let mut admin_namespaces: BTreeSet<String> = admin.into_iter().collect();
        admin_namespaces.insert("kube-system".to_string());
        Policy { admin_namespaces }
    }

    pub fn is_admin(&self, ns: &str) -> bool {
        self.admin_namespaces.contains(ns)
    }
}

/// Why an action is refused; its text is what the operator reads beside
/// the record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error("join: a namespace cannot join itself")]
    JoinItself,
    #[error("join: namespace {0} does not exist (it has no record)")]
    JoinUnknown(String),
    #[error("isolate: {source}")]
    Isolate { source: AllocError },
}

/// The NetID `name` (now at `current`) gets from `action`, or why not.
/// `ids` is the current NetID of every namespace with a record.
pub fn apply_action(
    name: &str,
    current: u32,
    action: &Action,
    ids: &BTreeMap<String, u32>,
    vnis: &mut VniAllocator,
) -> Result<u32, ActionError> {
    match action {
        Action::Join(to) if to == name => Err(ActionError::JoinItself),
        Action::Join(to) => ids.get(to).copied().ok_or_else(|| ActionError::JoinUnknown(to.clone())),
        Action::Isolate => {
            let shared = ids.iter().any(|(n, &id)| n != name && id == current);
            if current == GLOBAL_VNI || shared {
                vnis.allocate().map_err(|source| ActionError::Isolate { source })
            } else {
                Ok(current)
            }
        }
        Action::Global => Ok(GLOBAL_VNI),
    }
}

/// Everything the planner reads.
pub struct Inputs<'a> {
    pub keys: &'a Keys,
    pub config: &'a NetworkConfig,
    pub records: &'a Records,
    pub kube: &'a KubeView,
    pub policy: &'a Policy,
    pub now: Instant,
}

/// How long a node that still exists but reports no InternalIP keeps its
/// subnet record: a kubelet restarting, or a node briefly without its
/// address, must not cost the node its subnet (the other nodes would drop
/// its tunnel flows, and it would come back with a new subnet its agent
/// refuses). The clock starts when the planner first sees the node so.
#[derive(Debug, Clone)]
pub struct SubnetGrace {
    pub period: Duration,
    /// Host IP of the record -> when its node was first seen without an IP.
    since: BTreeMap<String, Instant>,
}

impl SubnetGrace {
    pub fn new(period: Duration) -> SubnetGrace {
        SubnetGrace { period, since: BTreeMap::new() }
    }

    /// Whether the record of `ip` stays for now (starts its clock).
    fn keep(&mut self, ip: &str, now: Instant) -> bool {
        let since = *self.since.entry(ip.to_string()).or_insert(now);
        now.duration_since(since) < self.period
    }

    /// When the next grace runs out: the controller plans again then.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.since.values().map(|s| *s + self.period).min()
    }
}

/// All writes that bring etcd to the desired state. Applying them and
/// planning again yields nothing (the plan is idempotent).
pub fn plan(
    inp: &Inputs<'_>,
    vnis: &mut VniAllocator,
    subnets: &mut SubnetAllocator,
    grace: &mut SubnetGrace,
) -> Vec<Write> {
    let mut out = Vec::new();
    if inp.config.plugin == PluginName::MultiTenant {
        plan_netnamespaces(inp, vnis, &mut out);
    }
    plan_subnets(inp, subnets, grace, &mut out);
    out
}

/// The record key and its error key.
type KeyPair = (String, String);

fn netns_keys(inp: &Inputs<'_>, name: &str) -> KeyPair {
    (inp.keys.netnamespace(name), inp.keys.netnamespace_error(name))
}

fn subnet_keys(inp: &Inputs<'_>, ip: &str) -> KeyPair {
    (inp.keys.subnet(ip), inp.keys.subnet_error(ip))
}

fn write(
    (key, error_key): KeyPair,
    rev: i64,
    record: RecordWrite,
    error: Option<RecordError>,
    why: String,
) -> Write {
    let error = error.map_or(ErrorWrite::Clear, ErrorWrite::Put);
    Write { key, expect_rev: rev, record, error_key, error, applied: None, request: None, why, tenancy: None }
}

/// A net namespace write: the applied copy follows the record (the
/// controller only ever puts validated records without an action).
fn netns_write(
    inp: &Inputs<'_>,
    name: &str,
    rev: i64,
    record: RecordWrite,
    error: Option<RecordError>,
    why: String,
) -> Write {
    let mut w = write(netns_keys(inp, name), rev, record.clone(), error, why);
    w.applied = Some((inp.keys.applied_netnamespace(name), record));
    w
}

fn rejected(message: String, raw: &str, rev: i64) -> Option<RecordError> {
    Some(RecordError { error: message, edit: raw.to_string(), edit_revision: rev })
}

fn plan_netnamespaces(inp: &Inputs<'_>, vnis: &mut VniAllocator, out: &mut Vec<Write>) {
    let recs = inp.records;
    let start = out.len();
    // The NetID each namespace holds now: its safe one when an edit is
    // pending, or while its record is deleted (the applied copy stands).
    let mut ids: BTreeMap<String, u32> = recs
        .netns
        .iter()
        .filter_map(|(n, e)| {
            let id = recs.safe_netns.get(n).copied().or(e.parsed.as_ref().ok().map(|r| r.net_id))?;
            Some((n.clone(), id))
        })
        .collect();
    for (n, id) in &recs.safe_netns {
        ids.entry(n.clone()).or_insert(*id);
    }
    vnis.reset_in_use(ids.values().copied());
    let known = inp.kube.namespaces.as_ref();

    for (name, entry) in &recs.netns {
        let key = inp.keys.netnamespace(name);
        // The NetNamespace object's request etcd says is not taken yet.
        let request = inp
            .kube
            .objects
            .as_ref()
            .and_then(|o| o.get(name))
            .and_then(|o| untaken(name, o, recs.taken(name)));
        if known.is_some_and(|k| !k.contains(name)) {
            // Vanished namespace (collected quietly) or an operator's record
            // for a namespace that never existed (collected with an error).
            let error = (!recs.safe_netns.contains_key(name)).then(|| RecordError {
                error: format!("{key}: namespace {name} does not exist; record removed"),
                edit: entry.raw.clone(),
                edit_revision: entry.rev,
            });
            ids.remove(name);
            let mut w = netns_write(
                inp,
                name,
                entry.rev,
                RecordWrite::Delete,
                error,
                format!("collect record of {name}"),
            );
            if recs.requests.contains_key(name) {
                w.request = Some((inp.keys.kube_request(name), RecordWrite::Delete));
            }
            out.push(w);
            continue;
        }
        let safe = recs.safe_netns.get(name).copied();
        let restore_to = |id: u32| RecordWrite::Put(NetNamespace::new(name, id).to_json());
        let rec = match &entry.parsed {
            Ok(rec) => rec,
            Err(e) => {
                let id = match safe {
                    Some(id) => id,
                    None if known.is_none() => continue,
                    None if inp.policy.is_admin(name) => GLOBAL_VNI,
                    None => match vnis.allocate() {
                        Ok(id) => id,
                        Err(_) => continue,
                    },
                };
                ids.insert(name.clone(), id);
                let error = rejected(e.to_string(), &entry.raw, entry.rev);
                out.push(netns_write(
                    inp,
                    name,
                    entry.rev,
                    restore_to(id),
                    error,
                    format!("restore {name} to NetID {id}"),
                ));
                continue;
            }
        };
        if let Some(s) = safe.filter(|&s| s != rec.net_id) {
            let msg = format!(
                "{key}: field NetID = {}: changed without an action (was {s}); use join, isolate or global",
                rec.net_id
            );
            out.push(netns_write(
                inp,
                name,
                entry.rev,
                restore_to(s),
                rejected(msg, &entry.raw, entry.rev),
                format!("restore {name} to NetID {s}"),
            ));
            continue;
        }
        if inp.policy.is_admin(name) {
            if rec.action.is_some() {
                let msg =
                    format!("{key}: field Action: {name} is an admin namespace and stays global (NetID 0)");
                let error = rejected(msg, &entry.raw, entry.rev);
                out.push(netns_write(
                    inp,
                    name,
                    entry.rev,
                    restore_to(GLOBAL_VNI),
                    error,
                    format!("refuse action on {name}"),
                ));
            } else if rec.net_id != GLOBAL_VNI {
                ids.insert(name.clone(), GLOBAL_VNI);
                out.push(netns_write(
                    inp,
                    name,
                    entry.rev,
                    restore_to(GLOBAL_VNI),
                    None,
                    format!("make admin {name} global"),
                ));
            } else if let Some(req) = &request {
                out.push(take_request(inp, name, entry, rec, req, &mut ids, vnis));
            }
            continue;
        }
        if safe.is_none() && rec.action.is_none() {
            // A record the controller never validated (created by hand, or
            // re-created while no controller ran): its NetID may be typed,
            // and another tenant's or global one is never taken over.
            let holder = ids.iter().find(|(n, &id)| *n != name && id == rec.net_id).map(|(n, _)| n.clone());
            if rec.net_id == GLOBAL_VNI || holder.is_some() {
                let Ok(id) = vnis.allocate() else { continue };
                ids.insert(name.clone(), id);
                let held = holder.map_or_else(|| "global".to_string(), |h| format!("held by namespace {h}"));
                let msg = format!(
                    "{key}: field NetID = {}: {held}; a new record gets its own NetID (use join or global)",
                    rec.net_id
                );
                let why = format!("give new record {name} NetID {id}");
                out.push(netns_write(
                    inp,
                    name,
                    entry.rev,
                    restore_to(id),
                    rejected(msg, &entry.raw, entry.rev),
                    why,
                ));
                continue;
            }
        }
        let Some(action) = &rec.action else {
            // A clean record: the object's request, if any, is taken now.
            if let Some(req) = &request {
                out.push(take_request(inp, name, entry, rec, req, &mut ids, vnis));
            }
            continue;
        };
        if inp.kube.objects.is_none() {
            // Not yet known whether an object asks something of this
            // namespace too: an action waits for the objects' first list (or
            // for the news that none are served), so two requests pending
            // together resolve by the rule below, not by which list came first.
            continue;
        }
        match apply_action(name, rec.net_id, action, &ids, vnis) {
            Ok(id) => {
                ids.insert(name.clone(), id);
                let why = format!("{action:?} on {name}: NetID {} -> {id}", rec.net_id);
                let mut w = netns_write(inp, name, entry.rev, restore_to(id), None, why);
                let via = format!("etcd edit at revision {}", entry.rev);
                w.tenancy = TenancyChange::of(name, action, rec.net_id, id, via);
                // Both paths at once: the etcd edit wins, in this transaction,
                // and the object's request is answered as superseded (never
                // applied later: no flip-flop between the two).
                if let Some(req) = &request {
                    let msg = format!(
                        "not applied: the etcd edit at revision {} ({}) was pending at the same time and won; \
                         change the object again to ask once more",
                        entry.rev,
                        describe(action)
                    );
                    let taken = req.taken(RequestOutcome::Superseded, msg);
                    w.request = Some((inp.keys.kube_request(name), RecordWrite::Put(taken.to_json())));
                }
                out.push(w);
            }
            Err(msg) => {
                let error = rejected(format!("{key}: {msg}"), &entry.raw, entry.rev);
                let why = format!("refuse {action:?} on {name}");
                out.push(netns_write(inp, name, entry.rev, restore_to(rec.net_id), error, why));
            }
        }
    }

    if let Some(known) = known {
        create_missing(inp, known, &mut ids, vnis, out);
    }
    sync_applied(inp, &ids, start, out);
}

/// Takes the request of `name`'s NetNamespace object on its clean record
/// (valid, validated, no etcd action pending): applies it as an etcd edit of
/// the same action would be, or refuses it with the error beside the record.
/// Either way the request record says it is taken, in the same transaction.
fn take_request(
    inp: &Inputs<'_>,
    name: &str,
    entry: &Entry<NetNamespace>,
    rec: &NetNamespace,
    req: &Untaken,
    ids: &mut BTreeMap<String, u32>,
    vnis: &mut VniAllocator,
) -> Write {
    let object = format!("NetNamespace {name} (generation {})", req.generation);
    let outcome = match &req.asked {
        Err(e) => Err(e.to_string()),
        Ok(_) if inp.policy.is_admin(name) => {
            Err(format!("{name} is an admin namespace and stays global (NetID 0)"))
        }
        Ok(action) => apply_action(name, rec.net_id, action, ids, vnis)
            .map(|id| (action, id))
            .map_err(|e| e.to_string()),
    };
    let request_key = inp.keys.kube_request(name);
    match outcome {
        Ok((action, id)) => {
            ids.insert(name.to_string(), id);
            // Already so (a join to the NetID it has, isolate when alone):
            // the record stays, only the error goes.
            let record = if id == rec.net_id {
                RecordWrite::Keep
            } else {
                RecordWrite::Put(NetNamespace::new(name, id).to_json())
            };
            let why = format!("{object}: {action:?}: NetID {} -> {id}", rec.net_id);
            let mut w = netns_write(inp, name, entry.rev, record, None, why);
            w.tenancy = TenancyChange::of(name, action, rec.net_id, id, object.clone());
            let taken = req.taken(RequestOutcome::Applied, format!("{}: NetID {id}", describe(action)));
            w.request = Some((request_key, RecordWrite::Put(taken.to_json())));
            w
        }
        Err(msg) => {
            // EditRevision 0: the edit came through the Kubernetes API, not
            // as an etcd write (so no `k8s-ovs-ctl --wait` takes it for its own).
            let error =
                RecordError { error: format!("{object}: {msg}"), edit: req.spec.clone(), edit_revision: 0 };
            let mut w =
                netns_write(inp, name, entry.rev, RecordWrite::Keep, Some(error), format!("refuse {object}"));
            let taken = req.taken(RequestOutcome::Rejected, msg);
            w.request = Some((request_key, RecordWrite::Put(taken.to_json())));
            w
        }
    }
}

/// Records for namespaces that have none: a namespace whose record was
/// deleted by hand gets it back with the NetID it still holds.
fn create_missing(
    inp: &Inputs<'_>,
    known: &BTreeSet<String>,
    ids: &mut BTreeMap<String, u32>,
    vnis: &mut VniAllocator,
    out: &mut Vec<Write>,
) {
    let recs = inp.records;
    for name in known.iter().filter(|n| !recs.netns.contains_key(*n)) {
        let id = if inp.policy.is_admin(name) {
            GLOBAL_VNI
        } else if let Some(&id) = recs.safe_netns.get(name) {
            id
        } else {
            match vnis.allocate() {
                Ok(id) => id,
                Err(e) => {
                    tracing::error!(namespace = %name, "cannot create record: {e}");
                    continue;
                }
            }
        };
        ids.insert(name.clone(), id);
        let record = RecordWrite::Put(NetNamespace::new(name, id).to_json());
        out.push(netns_write(inp, name, 0, record, None, format!("create record of {name} with NetID {id}")));
    }
}

/// The applied copies of the records this plan does not write anyway: put
/// where missing or different from the validated NetID (an upgrade from a
/// version without them, a copy lost or written by someone else), deleted
/// where the namespace is gone; then, once all agree, `applied/complete`.
fn sync_applied(inp: &Inputs<'_>, ids: &BTreeMap<String, u32>, start: usize, out: &mut Vec<Write>) {
    let recs = inp.records;
    let touched: BTreeSet<String> = out[start..].iter().map(|w| w.key.clone()).collect();
    let known = inp.kube.namespaces.as_ref();
    let keep = |name: &str, rev: i64, applied: RecordWrite, why: String| Write {
        key: inp.keys.netnamespace(name),
        expect_rev: rev,
        record: RecordWrite::Keep,
        error_key: inp.keys.netnamespace_error(name),
        error: ErrorWrite::Keep,
        applied: Some((inp.keys.applied_netnamespace(name), applied)),
        request: None,
        why,
        tenancy: None,
    };
    for (name, entry) in &recs.netns {
        let Some(&id) = ids.get(name) else { continue };
        // A record never validated is copied only once Kubernetes says its
        // namespace exists (else it is collected, not copied).
        let unvalidated = !recs.safe_netns.contains_key(name) && !known.is_some_and(|k| k.contains(name));
        if unvalidated || touched.contains(&inp.keys.netnamespace(name)) {
            continue;
        }
        let want = NetNamespace::new(name, id);
        if recs.applied.get(name).is_some_and(|a| a.parsed.as_ref() == Ok(&want)) {
            continue;
        }
        let why = format!("write the applied copy of {name} (NetID {id})");
        out.push(keep(name, entry.rev, RecordWrite::Put(want.to_json()), why));
    }
    if let Some(known) = known {
        // What a namespace that is gone (and has no record) left: its applied
        // copy, its object request record.
        let left: BTreeSet<&String> = recs.applied.keys().chain(recs.requests.keys()).collect();
        for name in left.into_iter().filter(|n| !recs.netns.contains_key(*n) && !known.contains(*n)) {
            let mut w = keep(name, 0, RecordWrite::Delete, format!("collect what namespace {name} left"));
            if !recs.applied.contains_key(name) {
                w.applied = None;
            }
            if recs.requests.contains_key(name) {
                w.request = Some((inp.keys.kube_request(name), RecordWrite::Delete));
            }
            out.push(w);
        }
    }
    if !recs.applied_complete && known.is_some() && out.len() == start {
        out.push(Write {
            key: inp.keys.applied_complete(),
            expect_rev: 0,
            record: RecordWrite::Put("{}".to_string()),
            error_key: String::new(),
            error: ErrorWrite::Keep,
            applied: None,
            request: None,
            why: "every namespace has its applied copy: agents take VNIs from them alone".to_string(),
            tenancy: None,
        });
    }
}

fn plan_subnets(
    inp: &Inputs<'_>,
    alloc: &mut SubnetAllocator,
    grace: &mut SubnetGrace,
    out: &mut Vec<Write>,
) {
    let recs = inp.records;
    let nodes = inp.kube.nodes.as_ref();
    // Clocks of records whose node has its IP back (or is gone) stop.
    let ip_missing = |host: &str| nodes.is_some_and(|n| n.get(host).is_some_and(|ip| ip.is_none()));
    grace.since.retain(|ip, _| {
        recs.subnets
            .get(ip)
            .is_some_and(|e| e.parsed.as_ref().is_ok_and(|r| !r.assign && ip_missing(&r.host)))
    });
    // Who holds which subnet now: the safe holder first, so a duplicate typed
    // by hand loses against the record that had it.
    let mut holder: BTreeMap<Ipv4Network, String> = BTreeMap::new();
    for (ip, s) in &recs.safe_subnets {
        if let Some(net) = s.subnet {
            holder.insert(net, ip.clone());
        }
    }
    for (ip, e) in &recs.subnets {
        if let Ok(HostSubnet { subnet: Some(net), .. }) = &e.parsed {
            holder.entry(*net).or_insert_with(|| ip.clone());
        }
    }
    alloc.reset_in_use(holder.keys().copied());
    let node_at = |ip: &str| -> Option<&String> {
        let ip: Ipv4Addr = ip.parse().ok()?;
        nodes?.iter().find(|(_, a)| **a == Some(ip)).map(|(n, _)| n)
    };

    for (ip, entry) in &recs.subnets {
        let key = inp.keys.subnet(ip);
        let safe = recs.safe_subnets.get(ip);
        let reported =
            recs.errors.get(&inp.keys.subnet_error(ip)).map(|e| e.edit_revision) == Some(entry.rev);
        let restore = |s: HostSubnet, error: Option<RecordError>| {
            let why = format!("restore subnet record of {ip}");
            write(subnet_keys(inp, ip), entry.rev, RecordWrite::Put(s.to_json()), error, why)
        };
        let fresh = |host: &str, assign: bool, alloc: &mut SubnetAllocator| -> Option<HostSubnet> {
            let subnet = alloc.allocate().ok()?;
            Some(HostSubnet {
                host: host.to_string(),
                host_ip: ip.parse().ok()?,
                subnet: Some(subnet),
                assign,
            })
        };
        let rec = match &entry.parsed {
            Ok(rec) => rec,
            Err(e) => {
                let error = rejected(e.to_string(), &entry.raw, entry.rev);
                let restored = match (safe, node_at(ip)) {
                    (Some(s), _) => Some(s.clone()),
                    (None, Some(node)) => fresh(node, false, alloc),
                    (None, None) => None,
                };
                match restored {
                    Some(s) => out.push(restore(s, error)),
                    None if !reported => {
                        let why = format!("report bad subnet record of {ip}");
                        out.push(write(subnet_keys(inp, ip), entry.rev, RecordWrite::Keep, error, why));
                    }
                    None => {}
                }
                continue;
            }
        };
        let node_backed = !rec.assign;
        if node_backed && nodes.is_some() && node_at(ip).is_none_or(|n| *n != rec.host) {
            if ip_missing(&rec.host) && grace.keep(ip, inp.now) {
                continue;
            }
            out.push(write(
                subnet_keys(inp, ip),
                entry.rev,
                RecordWrite::Delete,
                None,
                format!("release subnet of {ip}"),
            ));
            continue;
        }
        match rec.subnet {
            None => {
                let Some(s) = fresh(&rec.host, true, alloc) else {
                    tracing::error!(host_ip = %ip, "no free subnet left for an Assign request");
                    continue;
                };
                let why = format!("assign {:?} to {ip}", s.subnet);
                out.push(write(subnet_keys(inp, ip), entry.rev, RecordWrite::Put(s.to_json()), None, why));
            }
            Some(net) => {
                let changed = safe.is_some_and(|s| s.subnet != Some(net));
                let duplicate = holder.get(&net).is_some_and(|h| h != ip);
                if !changed && !duplicate {
                    continue;
                }
                let msg = if changed {
                    format!("{key}: field Subnet = \"{net}\": a subnet is not edited by hand; delete the record to release it")
                } else {
                    format!(
                        "{key}: field Subnet = \"{net}\": already held by {}",
                        holder.get(&net).map_or("", |h| h)
                    )
                };
                let restored = match safe {
                    Some(s) => Some(s.clone()),
                    None => fresh(&rec.host, rec.assign, alloc),
                };
                if let Some(s) = restored {
                    out.push(restore(s, rejected(msg, &entry.raw, entry.rev)));
                }
            }
        }
    }

    let Some(nodes) = nodes else { return };
    for (node, ip) in nodes {
        let Some(ip) = ip else { continue };
        let ip_s = ip.to_string();
        if recs.subnets.contains_key(&ip_s) {
            continue;
        }
        let Ok(subnet) = alloc.allocate() else {
            tracing::error!(%node, "no free subnet left for node");
            continue;
        };
        let rec = HostSubnet { host: node.clone(), host_ip: *ip, subnet: Some(subnet), assign: false };
        let why = format!("allocate {subnet} to node {node} ({ip})");
        out.push(write(subnet_keys(inp, &ip_s), 0, RecordWrite::Put(rec.to_json()), None, why));
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
