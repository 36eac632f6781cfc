//! What the controller knows: the records in etcd (as last seen, with the
//! last *safe* state of each), and the Namespaces and Nodes of Kubernetes.
//! Pure: the shell feeds etcd and kube events in.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use etcd_schema::{
    parse_host_subnet, parse_kube_request, parse_net_namespace, record_text, HostSubnet, KeyKind, Keys,
    KubeRequest, NetNamespace, NetworkConfig, RecordError, SchemaError,
};

use crate::netns_object::ObjectView;

/// One record as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<T> {
    /// etcd mod_revision: every write of the controller compares it.
    pub rev: i64,
    pub raw: String,
    pub parsed: Result<T, SchemaError>,
}

#[derive(Debug, Clone, Default)]
pub struct Records {
    pub netns: BTreeMap<String, Entry<NetNamespace>>,
    pub subnets: BTreeMap<String, Entry<HostSubnet>>,
    /// Last NetID the controller wrote or accepted, per namespace: what a
    /// bad edit is rolled back to.
    pub safe_netns: BTreeMap<String, u32>,
    pub safe_subnets: BTreeMap<String, HostSubnet>,
    /// The controller's validated copies (`applied/netnamespaces/<ns>`), as
    /// etcd holds them: what agents program. A valid one is the namespace's
    /// safe state, also while its operator record is deleted or re-created.
    pub applied: BTreeMap<String, Entry<NetNamespace>>,
    /// `applied/complete` exists: every namespace has its applied copy.
    pub applied_complete: bool,
    /// Error records present (full key -> the record), so an unchanged
    /// bad record is reported once, not on every plan, and the objects'
    /// status shows the error.
    pub errors: BTreeMap<String, RecordError>,
    /// The last NetNamespace object request taken, per namespace
    /// (`kube/netnamespaces/<ns>`).
    pub requests: BTreeMap<String, Entry<KubeRequest>>,
}

impl Records {
    /// Takes a record as read at startup (or by a new leader): whatever
    /// valid state it holds becomes the safe state.
    pub fn load(&mut self, keys: &Keys, config: &NetworkConfig, key: &str, value: &[u8], rev: i64) {
        self.observe_put(keys, config, key, value, rev);
        let Some(k) = keys.parse(key) else { return };
        match k.kind {
            // The applied copy, when valid, is the safe state: a record typed
            // while no controller ran does not override what agents program.
            KeyKind::NetNamespace if !self.has_valid_applied(&k.name) => {
                if let Some(Ok(rec)) = self.netns.get(&k.name).map(|e| &e.parsed) {
                    self.safe_netns.insert(k.name, rec.net_id);
                }
            }
            KeyKind::AppliedNetNamespace => {
                if let Some(Ok(rec)) = self.applied.get(&k.name).map(|e| &e.parsed) {
                    self.safe_netns.insert(k.name, rec.net_id);
                }
            }
            KeyKind::Subnet => {
                if let Some(Ok(rec)) = self.subnets.get(&k.name).map(|e| &e.parsed) {
                    if rec.subnet.is_some() {
                        self.safe_subnets.insert(k.name, rec.clone());
                    }
                }
            }
            _ => {}
        }
    }

    /// A put seen on the etcd watch (an operator's edit or an echo of ours).
    /// A value that is not UTF-8 is a bad record (restored like any other),
    /// not a missing one.
    pub fn observe_put(&mut self, keys: &Keys, config: &NetworkConfig, key: &str, value: &[u8], rev: i64) {
        let Some(k) = keys.parse(key) else { return };
        let raw = String::from_utf8_lossy(value).into_owned();
        let text = record_text(key, value);
        match k.kind {
            KeyKind::NetNamespace => {
                let parsed = text.and_then(|v| parse_net_namespace(key, &k.name, v));
                self.netns.insert(k.name, Entry { rev, raw, parsed });
            }
            // Seen, not trusted: a copy that differs from the safe state is
            // rewritten by the plan (only the controller's role may write it).
            KeyKind::AppliedNetNamespace => {
                let parsed = text.and_then(|v| parse_net_namespace(key, &k.name, v));
                self.applied.insert(k.name, Entry { rev, raw, parsed });
            }
            KeyKind::AppliedComplete => self.applied_complete = true,
            KeyKind::Subnet => {
                let parsed = text.and_then(|v| parse_host_subnet(key, &k.name, v, config));
                self.subnets.insert(k.name, Entry { rev, raw, parsed });
            }
            KeyKind::NetNamespaceError | KeyKind::SubnetError => {
                // Not ours to judge: an unreadable one is shown as it is.
                let e = serde_json::from_slice::<RecordError>(value).unwrap_or_else(|_| RecordError {
                    error: raw,
                    edit: String::new(),
                    edit_revision: -1,
                });
                self.errors.insert(key.to_string(), e);
            }
            KeyKind::KubeRequest => {
                let parsed = text.and_then(|v| parse_kube_request(key, v));
                self.requests.insert(k.name, Entry { rev, raw, parsed });
            }
            KeyKind::Config | KeyKind::Leader => {}
        }
    }

    /// The valid request record of `name`: the object request last taken.
    pub fn taken(&self, name: &str) -> Option<&KubeRequest> {
        self.requests.get(name).and_then(|e| e.parsed.as_ref().ok())
    }

    fn has_valid_applied(&self, name: &str) -> bool {
        self.applied.get(name).is_some_and(|e| e.parsed.is_ok())
    }

    /// After a relist (a new session: reconnect, lost leadership, a
    /// compacted watch), a record that is invalid right now and whose last
    /// valid version etcd's history no longer holds keeps the safe state
    /// this controller knew before: the restore then goes back to the
    /// namespace's real VNI (or the node's subnet), not to a fresh one.
    pub fn keep_safe_states_from(&mut self, prev: &Records) {
        for (name, e) in &self.netns {
            if e.parsed.is_err() && !self.safe_netns.contains_key(name) {
                if let Some(id) = prev.safe_netns.get(name) {
                    self.safe_netns.insert(name.clone(), *id);
                }
            }
        }
        for (ip, e) in &self.subnets {
            if e.parsed.is_err() && !self.safe_subnets.contains_key(ip) {
                if let Some(s) = prev.safe_subnets.get(ip) {
                    self.safe_subnets.insert(ip.clone(), s.clone());
                }
            }
        }
    }

    pub fn observe_delete(&mut self, keys: &Keys, key: &str) {
        let Some(k) = keys.parse(key) else { return };
        match k.kind {
            KeyKind::NetNamespace => {
                self.netns.remove(&k.name);
                // A deleted record does not end the namespace's network: its
                // applied copy stands, and a re-created record is judged
                // against it (another tenant's NetID is rolled back).
                if !self.has_valid_applied(&k.name) {
                    self.safe_netns.remove(&k.name);
                }
            }
            KeyKind::AppliedNetNamespace => {
                self.applied.remove(&k.name);
                if !self.netns.contains_key(&k.name) {
                    self.safe_netns.remove(&k.name);
                }
            }
            KeyKind::AppliedComplete => self.applied_complete = false,
            KeyKind::Subnet => {
                self.subnets.remove(&k.name);
                self.safe_subnets.remove(&k.name);
            }
            KeyKind::NetNamespaceError | KeyKind::SubnetError => {
                self.errors.remove(key);
            }
            KeyKind::KubeRequest => {
                self.requests.remove(&k.name);
            }
            KeyKind::Config | KeyKind::Leader => {}
        }
    }

    /// The controller's own write committed at `rev`: its record is the new
    /// safe state.
    pub fn committed(&mut self, keys: &Keys, config: &NetworkConfig, write: &crate::plan::Write, rev: i64) {
        use crate::plan::{ErrorWrite, RecordWrite};
        // The applied copy first: a record's delete keeps the safe state only
        // while a copy stands.
        for (key, op) in write.applied.iter().chain(&write.request) {
            match op {
                RecordWrite::Put(value) => self.load(keys, config, key, value.as_bytes(), rev),
                RecordWrite::Delete => self.observe_delete(keys, key),
                RecordWrite::Keep => {}
            }
        }
        match &write.record {
            RecordWrite::Put(value) => self.load(keys, config, &write.key, value.as_bytes(), rev),
            RecordWrite::Delete => self.observe_delete(keys, &write.key),
            RecordWrite::Keep => {}
        }
        match &write.error {
            ErrorWrite::Put(e) => {
                self.errors.insert(write.error_key.clone(), e.clone());
            }
            ErrorWrite::Clear => {
                self.errors.remove(&write.error_key);
            }
            ErrorWrite::Keep => {}
        }
    }
}

/// The Kubernetes side; `None` until the first complete list arrived (no
/// record is created or collected on a partial view).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeView {
    pub namespaces: Option<BTreeSet<String>>,
    /// Node name -> InternalIP (None until the node reports one).
    pub nodes: Option<BTreeMap<String, Option<Ipv4Addr>>>,
    /// NetNamespace objects by name; `None` until listed, and for good where
    /// the CRD is not installed (then only etcd edits ask for actions).
    pub objects: Option<BTreeMap<String, ObjectView>>,
}
