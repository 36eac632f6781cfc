//! A small kube-apiserver for tests: Namespaces, Nodes, Pods, Services,
//! Events, EndpointSlices and CustomResourceDefinitions with their custom
//! resources, in the real wire format, so kube-rs (and the controller and
//! agent built on it) and kubectl talk to it unchanged.
//!
//! What it serves, as the real server does:
//! - `GET /api/v1/<plural>`, `/apis/<group>/<version>/<plural>` and their
//!   namespaced forms: a `<Kind>List` whose `metadata.resourceVersion` is the
//!   store's current revision; single objects at `.../<name>`. With
//!   `Accept: ...;as=Table` (what `kubectl get` asks) a `meta.k8s.io/v1`
//!   Table, whose columns for a custom resource are its CRD's
//!   `additionalPrinterColumns` (evaluated with [`jsonpath`]).
//! - `?watch=true&resourceVersion=N`: a chunked stream of newline-delimited
//!   `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":...}` with every
//!   change after N; bookmarks when `allowWatchBookmarks=true`; the stream
//!   ends after `timeoutSeconds`. An N older than the kept history gets a
//!   410 Gone `ERROR` event (kube-rs then relists); [`KubeApi::expire_history`]
//!   forces that.
//! - `labelSelector` (`k=v`, `k==v`, `k!=v`, `k`, `!k`) and `fieldSelector`
//!   (`<dotted.path>=v` / `!=v`, e.g. `spec.nodeName`, `metadata.name`).
//!   An object that stops matching is simply no longer sent (the real server
//!   sends DELETED); tests here never move objects across a selector.
//! - Writes: POST (create), PUT (replace), PATCH (`application/merge-patch+json`)
//!   and DELETE (with `preconditions`), 404 / 409 AlreadyExists / 409
//!   Conflict as the real server answers them. Custom resources follow
//!   kube-apiserver's rules for them (`custom.rs`): `resourceVersion`
//!   required on update and a 409 Conflict when stale; `metadata.generation`
//!   1 on create and bumped by spec changes only; the status subresource
//!   (`.../status`) the only way to write status, and the only thing it
//!   writes; an update that changes nothing stores nothing; the CRD's
//!   structural schema applied (nulls dropped, defaults, pruning with
//!   `fieldValidation` Strict / Warn / Ignore, validation: 422 Invalid with
//!   the apiserver's causes, `schema.rs`); names checked as DNS-1123
//!   subdomains, annotations limited to 256 KiB, request bodies to 3 MiB
//!   (413). Built-in kinds are stored as given (no validation).
//! - Discovery (`/api`, `/apis`, `/api/v1`, `/apis/<group>/<version>`, the
//!   legacy format, which kubectl falls back to) and the OpenAPI v3 of the
//!   custom resources' and CRDs' PATCH (what kubectl checks to send
//!   `fieldValidation=Strict`), so real `kubectl` works against it.
//! - `POST /api/v1/namespaces/<ns>/events`: stores the Event (with
//!   `generateName`) for tests to read with [`KubeApi::objects`].
//! - [`KubeApi::set_down`] is an outage: while down, every connection is
//!   closed as soon as it is accepted and open watches end, as clients of a
//!   crashed apiserver see it; the objects survive.
//!
//! Not served (a request for them fails, never half-works): authentication
//! and RBAC (tests/tests/manifests.rs evaluates the RBAC rules instead),
//! admission, server-side apply and JSON patch (415), strategic merge patch
//! for custom resources (415, as the real server), Table watches, CRD
//! versions beyond one (no conversion), CEL validation rules (a CRD using
//! them is refused), finalizers and garbage collection (that is the
//! controller-manager's, not the apiserver's), managedFields, `limit` /
//! `continue` paging (every list is whole).
//!
//! Plain HTTP/1.1 on std threads: one thread accepts, one per connection.
//! It can listen inside a lab namespace: the socket is created by a thread
//! that entered the namespace (a socket keeps the namespace it was made in)
//! and is served from the normal process.

mod custom;
pub mod jsonpath;
pub mod schema;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::netns::Netns;
use custom::{ApiError, Custom, WriteOpts};

ovs_flows::value_enum! {
/// The built-in resource kinds served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Node,
    Pod,
    Service,
    /// Only created (POST) by clients and read by tests.
    Event,
    /// discovery.k8s.io/v1.
    EndpointSlice,
    /// networking.k8s.io/v1.
    NetworkPolicy,
    /// apiextensions.k8s.io/v1: creating one serves its custom resources.
    CustomResourceDefinition,
}
}

impl Kind {
    /// The group/version objects of the kind carry.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::NetworkPolicy => "networking.k8s.io/v1",
            Kind::CustomResourceDefinition => "apiextensions.k8s.io/v1",
            _ => "v1",
        }
    }

    /// Where the kind is served: the core group or a named one.
    fn group(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io",
            Kind::NetworkPolicy => "networking.k8s.io",
            Kind::CustomResourceDefinition => "apiextensions.k8s.io",
            _ => "",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::Event => "Event",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::CustomResourceDefinition => "CustomResourceDefinition",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::Node => "nodes",
            Kind::Pod => "pods",
            Kind::Service => "services",
            Kind::Event => "events",
            Kind::EndpointSlice => "endpointslices",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::CustomResourceDefinition => "customresourcedefinitions",
        }
    }

    fn namespaced(self) -> bool {
        matches!(self, Kind::Pod | Kind::Service | Kind::Event | Kind::EndpointSlice | Kind::NetworkPolicy)
    }

    fn from_name(s: &str) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| k.name() == s)
    }
}

/// A kind by name: a built-in [`Kind`], or a custom resource's kind (`"NetNamespace"`).
pub trait KindName {
    fn kind_name(&self) -> &str;
}

impl KindName for Kind {
    fn kind_name(&self) -> &str {
        self.name()
    }
}

impl KindName for &str {
    fn kind_name(&self) -> &str {
        self
    }
}

/// A served resource type: a built-in kind or a CRD's.
#[derive(Debug, Clone)]
struct Resource {
    /// "" for the core group.
    group: String,
    version: String,
    kind: String,
    plural: String,
    singular: String,
    short_names: Vec<String>,
    namespaced: bool,
    /// A CRD's: schema, status subresource, printer columns.
    custom: Option<Arc<Custom>>,
}

impl Resource {
    fn builtin(k: Kind) -> Resource {
        Resource {
            group: k.group().into(),
            version: "v1".into(),
            kind: k.name().into(),
            plural: k.plural().into(),
            singular: k.name().to_lowercase(),
            short_names: Vec::new(),
            namespaced: k.namespaced(),
            custom: None,
        }
    }

    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `netnamespaces.k8s-ovs.io`, `namespaces`: as errors name the resource.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    fn verbs(&self) -> Vec<&'static str> {
        if self.kind == "Event" {
            return vec!["create", "get", "list", "watch"];
        }
        vec!["create", "delete", "get", "list", "patch", "update", "watch"]
    }
}

/// (kind, namespace ("" for cluster-scoped), name)
type ObjKey = (String, String, String);

struct Change {
    rv: u64,
    kind: String,
    event: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    uid: u64,
    objects: BTreeMap<ObjKey, Value>,
    /// Every change after `compacted`, in order.
    history: Vec<Change>,
    /// A watch may start from N only if N >= compacted.
    compacted: u64,
    /// Bumped by `expire_history` to end the open watches.
    generation: u64,
    lists: HashMap<String, u64>,
    watches: HashMap<String, u64>,
    /// Custom resource types by kind, from the CRDs created.
    custom: BTreeMap<String, Resource>,
}

impl State {
    fn resource(&self, kind: &str) -> Option<Resource> {
        Kind::from_name(kind).map(Resource::builtin).or_else(|| self.custom.get(kind).cloned())
    }

    /// Every served type: the built-ins, then the CRDs'.
    fn resources(&self) -> Vec<Resource> {
        Kind::ALL.iter().map(|k| Resource::builtin(*k)).chain(self.custom.values().cloned()).collect()
    }

    fn find(&self, group: &str, version: &str, plural: &str) -> Option<Resource> {
        self.resources().into_iter().find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// Records a change: bumps the revision and returns it.
    fn record(&mut self, kind: &str, event: &'static str, object: &mut Value) -> u64 {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.history.push(Change { rv: self.rv, kind: kind.to_string(), event, object: object.clone() });
        self.rv
    }

    fn next_uid(&mut self) -> String {
        self.uid += 1;
        format!("00000000-0000-4000-8000-{:012}", self.uid)
    }
}

struct Inner {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
    /// An outage (see [`KubeApi::set_down`]).
    down: AtomicBool,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking connection thread must not take the server down with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The test API server; stops (and ends its threads) when dropped.
pub struct KubeApi {
    addr: SocketAddr,
    inner: Arc<Inner>,
    accept: Option<JoinHandle<()>>,
}

impl KubeApi {
    /// Listens on 127.0.0.1 (a free port) of the caller's namespace.
    pub fn start() -> Result<KubeApi> {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind the test apiserver")?;
        KubeApi::serve(listener)
    }

    /// Listens on `ip:port` inside `netns` (port 0: any free port), so
    /// processes in that namespace and in namespaces routed to it reach it.
    pub fn start_in(netns: &Netns, ip: &str, port: u16) -> Result<KubeApi> {
        let addr: SocketAddr = format!("{ip}:{port}").parse().context("listen address")?;
        let netns = netns.clone();
        let listener = std::thread::spawn(move || -> Result<TcpListener> {
            netns.enter_this_thread()?;
            TcpListener::bind(addr).with_context(|| format!("bind {addr} in {}", netns.name))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("listener thread panicked"))??;
        KubeApi::serve(listener)
    }

    fn serve(listener: TcpListener) -> Result<KubeApi> {
        let addr = listener.local_addr()?;
        // Polled accept, so dropping the server ends the thread without a
        // wake-up connection (which could not reach a namespaced address).
        listener.set_nonblocking(true)?;
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            down: AtomicBool::new(false),
        });
        let acc_inner = inner.clone();
        let accept = std::thread::spawn(move || {
            while !acc_inner.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    // Down: the connection is closed at once (the client sees a reset or EOF).
                    Ok((stream, _)) if acc_inner.down.load(Ordering::Relaxed) => drop(stream),
                    Ok((stream, _)) => {
                        let conn_inner = acc_inner.clone();
                        std::thread::spawn(move || {
                            let _ = serve_connection(&conn_inner, stream);
                        });
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(KubeApi { addr, inner, accept: Some(accept) })
    }

    /// `http://<ip>:<port>`, for `kube::Config::new`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Creates an object (`kind`, `metadata.name` required); fills
    /// resourceVersion and uid. Fails when it exists. A custom resource (or
    /// a CRD) goes through what an HTTP create goes through.
    pub fn create(&self, object: Value) -> Result<Value> {
        self.write(object, Some(false))
    }

    /// Replaces an existing object.
    pub fn update(&self, object: Value) -> Result<Value> {
        self.write(object, Some(true))
    }

    /// Creates or replaces.
    pub fn apply(&self, object: Value) -> Result<Value> {
        self.write(object, None)
    }

    fn write(&self, object: Value, must_exist: Option<bool>) -> Result<Value> {
        let kind = object["kind"].as_str().context("object without kind")?.to_string();
        let res = self.inner.lock().resource(&kind).with_context(|| format!("kind {kind} is not served"))?;
        if res.custom.is_none() && res.kind != Kind::CustomResourceDefinition.name() {
            return write(&self.inner, object, must_exist);
        }
        // As a client would: create, or replace on the current resourceVersion.
        let ns = object["metadata"]["namespace"].as_str().filter(|_| res.namespaced).map(str::to_string);
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let current = self.get(kind.as_str(), ns.as_deref(), &name);
        let opts = WriteOpts::default();
        let result = match (must_exist, current) {
            (Some(true), None) => bail!("{} {name} not found", res.kind),
            (Some(false), Some(_)) => bail!("{} {name} already exists", res.kind),
            (_, None) => custom::create(&self.inner, &res, ns.as_deref(), object, &opts),
            (_, Some(cur)) => {
                let mut object = object;
                object["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
                custom::update(&self.inner, &res, ns.as_deref(), &name, object, &opts, false)
            }
        };
        result.map(|(v, _)| v).map_err(|e| anyhow::anyhow!("{}", e.message))
    }

    /// Every stored object of `kind` (e.g. the Events clients posted).
    pub fn objects(&self, kind: impl KindName) -> Vec<Value> {
        objects_of(&self.inner, kind.kind_name())
    }

    /// Deletes an object (namespace: None for cluster-scoped kinds).
    pub fn delete(&self, kind: impl KindName, namespace: Option<&str>, name: &str) -> Result<()> {
        let kind = kind.kind_name();
        let res = self.inner.lock().resource(kind).with_context(|| format!("kind {kind} is not served"))?;
        custom::delete(&self.inner, &res, namespace, name, &Value::Null)
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("{}", e.message))
    }

    pub fn get(&self, kind: impl KindName, namespace: Option<&str>, name: &str) -> Option<Value> {
        let key = (kind.kind_name().to_string(), namespace.unwrap_or("").to_string(), name.to_string());
        self.inner.lock().objects.get(&key).cloned()
    }

    /// Forgets the change history and ends every open watch: clients that
    /// resume from an old resourceVersion get 410 Gone and must relist.
    pub fn expire_history(&self) {
        let mut st = self.inner.lock();
        st.rv += 1;
        st.compacted = st.rv;
        st.history.clear();
        st.generation += 1;
        drop(st);
        self.inner.changed.notify_all();
    }

    /// Takes the server down (`true`: connections are closed on accept and
    /// open watches end) or brings it back; the objects are kept.
    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::Relaxed);
        self.inner.changed.notify_all();
    }

    /// A handle on the stored objects for in-process stand-ins of other
    /// cluster components (kube-proxy), which keep working while the server
    /// is down, as the real ones keep their last state.
    pub fn store(&self) -> Store {
        Store { inner: self.inner.clone() }
    }

    /// How many lists / watches of `kind` were served (to see relists).
    pub fn list_count(&self, kind: impl KindName) -> u64 {
        self.inner.lock().lists.get(kind.kind_name()).copied().unwrap_or(0)
    }

    pub fn watch_count(&self, kind: impl KindName) -> u64 {
        self.inner.lock().watches.get(kind.kind_name()).copied().unwrap_or(0)
    }

    pub fn create_namespace(&self, name: &str) -> Result<Value> {
        self.create(json!({"kind": "Namespace", "metadata": {"name": name}, "spec": {}, "status": {"phase": "Active"}}))
    }

    pub fn delete_namespace(&self, name: &str) -> Result<()> {
        self.delete(Kind::Namespace, None, name)
    }

    /// A Node with `InternalIP` = `ip`.
    pub fn create_node(&self, name: &str, ip: &str) -> Result<Value> {
        self.create(json!({
            "kind": "Node",
            "metadata": {"name": name},
            "spec": {},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]}
        }))
    }

    /// Creates the CustomResourceDefinitions of a YAML manifest file, as
    /// `kubectl apply -f` would (the other documents are left out).
    pub fn create_crds_from(&self, path: &std::path::Path) -> Result<()> {
        use serde::Deserialize;
        let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).with_context(|| format!("{}: YAML", path.display()))?;
            if v["kind"] == "CustomResourceDefinition" {
                self.create(v)?;
            }
        }
        Ok(())
    }
}

fn objects_of(inner: &Inner, kind: &str) -> Vec<Value> {
    inner.lock().objects.iter().filter(|((k, _, _), _)| k == kind).map(|(_, v)| v.clone()).collect()
}

/// See [`KubeApi::store`].
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// The store's current resourceVersion (bumped by every change).
    pub fn revision(&self) -> u64 {
        self.inner.lock().rv
    }

    pub fn objects(&self, kind: impl KindName) -> Vec<Value> {
        objects_of(&self.inner, kind.kind_name())
    }

    /// Waits until the revision is past `rv` (or `timeout`, or the server stops).
    pub fn wait_newer(&self, rv: u64, timeout: Duration) {
        let st = self.inner.lock();
        let _ = self
            .inner
            .changed
            .wait_timeout_while(st, timeout, |st| st.rv <= rv && !self.inner.stop.load(Ordering::Relaxed));
    }

    pub fn stopped(&self) -> bool {
        self.inner.stop.load(Ordering::Relaxed)
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        self.inner.changed.notify_all();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Stores a built-in object as given (`must_exist`: Some(false) create,
/// Some(true) replace, None either); fills resourceVersion and uid.
fn write(inner: &Inner, mut object: Value, must_exist: Option<bool>) -> Result<Value> {
    let kind_s = object["kind"].as_str().context("object without kind")?;
    let kind = Kind::from_name(kind_s).with_context(|| format!("kind {kind_s} is not served"))?;
    if object["metadata"]["name"].as_str().is_none() {
        // generateName: the server appends a unique suffix.
        let prefix = object["metadata"]["generateName"].as_str().context("object without metadata.name")?;
        let n = inner.lock().uid + 1;
        object["metadata"]["name"] = json!(format!("{prefix}{n:05}"));
    }
    let name = object["metadata"]["name"].as_str().context("object without metadata.name")?.to_string();
    let ns = if kind.namespaced() {
        let ns = object["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
        object["metadata"]["namespace"] = json!(ns);
        ns
    } else {
        String::new()
    };
    object["apiVersion"] = json!(kind.api_version());
    builtin_defaults(kind, &mut object);
    let mut st = inner.lock();
    let key = (kind.name().to_string(), ns, name);
    let existing = st.objects.get(&key).cloned();
    match (must_exist, &existing) {
        (Some(false), Some(_)) => bail!("{} {} already exists", kind.name(), key.2),
        (Some(true), None) => bail!("{} {} not found", kind.name(), key.2),
        _ => {}
    }
    let uid = match existing.as_ref().and_then(|e| e["metadata"]["uid"].as_str()) {
        Some(u) => u.to_string(),
        None => st.next_uid(),
    };
    object["metadata"]["uid"] = json!(uid);
    let event = if existing.is_some() { "MODIFIED" } else { "ADDED" };
    st.record(kind.name(), event, &mut object);
    st.objects.insert(key, object.clone());
    drop(st);
    inner.changed.notify_all();
    Ok(object)
}

/// What kube-apiserver's defaulting and its registry strategies add to a
/// built-in object on every write (clients read these back, so the
/// stand-in must add them too): a Namespace's `kubernetes.io/metadata.name`
/// label (always set to its name), a NetworkPolicy's `policyTypes`
/// (Ingress, plus Egress when it has egress rules) and port protocols
/// (TCP), a Pod's container port protocols (TCP).
fn builtin_defaults(kind: Kind, object: &mut Value) {
    let tcp_default = |ports: Option<&mut Value>| {
        for port in ports.and_then(Value::as_array_mut).into_iter().flatten() {
            if port.get("protocol").is_none_or(Value::is_null) {
                port["protocol"] = json!("TCP");
            }
        }
    };
    match kind {
        Kind::Namespace => {
            let name = object["metadata"]["name"].clone();
            if !object["metadata"]["labels"].is_object() {
                object["metadata"]["labels"] = json!({});
            }
            object["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
        }
        Kind::NetworkPolicy => {
            let spec = &mut object["spec"];
            if !spec.is_object() {
                return;
            }
            let has_egress = spec["egress"].as_array().is_some_and(|e| !e.is_empty());
            if spec["policyTypes"].as_array().is_none_or(|t| t.is_empty()) {
                spec["policyTypes"] =
                    if has_egress { json!(["Ingress", "Egress"]) } else { json!(["Ingress"]) };
            }
            for dir in ["ingress", "egress"] {
                // get_mut, not spec[dir]: indexing would store `dir: null`.
                for rule in spec.get_mut(dir).and_then(Value::as_array_mut).into_iter().flatten() {
                    tcp_default(rule.get_mut("ports"));
                }
            }
        }
        Kind::Pod => {
            for list in ["initContainers", "containers"] {
                for c in object["spec"][list].as_array_mut().into_iter().flatten() {
                    tcp_default(c.get_mut("ports"));
                }
            }
        }
        _ => {}
    }
}

struct Request {
    method: String,
    path: String,
    query: HashMap<String, String>,
    /// Lower-cased names.
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }

    /// `Accept: ...;as=Table...`: `kubectl get`'s server-side printing.
    fn wants_table(&self) -> bool {
        self.header("accept").split(',').next().is_some_and(|a| a.contains("as=Table"))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => out.push(b),
                    None => out.extend_from_slice(&bytes[i..i + 3]),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The real server's limit on a request body (`--max-request-bytes`' default
/// for the apiserver's handlers: 3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// What reading a request gave.
enum Incoming {
    Request(Request),
    /// A body over [`MAX_BODY`]: answered 413, then the connection closes.
    TooLarge,
    Eof,
}

/// Reads one request (head and body); EOF or shutdown ends the connection.
fn read_request(inner: &Inner, reader: &mut BufReader<TcpStream>) -> Result<Incoming> {
    let mut head = String::new();
    loop {
        if inner.stop.load(Ordering::Relaxed) || inner.down.load(Ordering::Relaxed) {
            return Ok(Incoming::Eof);
        }
        match reader.read_line(&mut head) {
            Ok(0) => return Ok(Incoming::Eof),
            Ok(_) if head.ends_with("\r\n\r\n") || head == "\r\n" => {
                if head == "\r\n" {
                    head.clear(); // stray CRLF between requests
                    continue;
                }
                break;
            }
            Ok(_) => {}
            // The read timeout only lets us notice shutdown; what was read stays in `head`.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or("GET").to_string(), parts.next().unwrap_or("/"));
    let mut headers = HashMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let body = if headers.get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        match read_chunked(reader)? {
            Some(b) => b,
            None => return Ok(Incoming::TooLarge),
        }
    } else {
        let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        if len > MAX_BODY {
            // Read (up to a point) and dropped, so the client, still sending,
            // gets to read the 413 instead of a reset connection.
            if len <= 16 * MAX_BODY {
                let mut sink = vec![0u8; len];
                read_full(reader, &mut sink)?;
            }
            return Ok(Incoming::TooLarge);
        }
        let mut body = vec![0u8; len];
        read_full(reader, &mut body)?;
        body
    };
    let (path, qs) = target.split_once('?').unwrap_or((target, ""));
    let query = qs
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Ok(Incoming::Request(Request { method, path: percent_decode(path), query, headers, body }))
}

/// `read_exact` through the read timeouts that only let us notice shutdown.
fn read_full(reader: &mut BufReader<TcpStream>, mut buf: &mut [u8]) -> Result<()> {
    while !buf.is_empty() {
        match reader.read(buf) {
            Ok(0) => bail!("connection closed mid-body"),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A chunked body; None once it passes [`MAX_BODY`].
fn read_chunked(reader: &mut BufReader<TcpStream>) -> Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        while !size.ends_with('\n') {
            match reader.read_line(&mut size) {
                Ok(0) => bail!("connection closed mid-chunk"),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let n =
            usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).context("chunk size")?;
        if body.len() + n > MAX_BODY {
            return Ok(None);
        }
        let mut chunk = vec![0u8; n + 2]; // the data and its CRLF
        read_full(reader, &mut chunk)?;
        if n == 0 {
            return Ok(Some(body));
        }
        body.extend_from_slice(&chunk[..n]);
    }
}

fn serve_connection(inner: &Inner, stream: TcpStream) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.set_nodelay(true)?;
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let req = match read_request(inner, &mut reader)? {
            Incoming::Request(r) => r,
            Incoming::Eof => return Ok(()),
            Incoming::TooLarge => {
                let e = ApiError::new(
                    413,
                    "RequestEntityTooLarge",
                    format!("Request entity too large: limit is {MAX_BODY}"),
                );
                respond(&mut out, e.code, &e.status(), &[])?;
                return Ok(());
            }
        };
        let route = route(&inner.lock(), &req);
        match route {
            Route::Collection { res, namespace } if req.method == "GET" && is_watch(&req) => {
                watch(inner, &mut out, &res, namespace.as_deref(), &req)?;
                // The stream ended cleanly: the connection stays open for the
                // next request (HTTP/1.1 keep-alive, as the real server does),
                // unless the server is going away.
                if inner.stop.load(Ordering::Relaxed) || inner.down.load(Ordering::Relaxed) {
                    return Ok(());
                }
            }
            route => {
                let (code, body, warnings) = match handle(inner, route, &req) {
                    Ok(r) => r,
                    Err(e) => (e.code, e.status(), Vec::new()),
                };
                respond(&mut out, code, &body, &warnings)?;
            }
        }
    }
}

fn is_watch(req: &Request) -> bool {
    req.query.get("watch").is_some_and(|w| w == "true" || w == "1")
}

/// An answer: status code, body, `Warning` headers.
type Answer = (u16, Value, Vec<String>);

fn handle(inner: &Inner, route: Route, req: &Request) -> Result<Answer, ApiError> {
    let opts = WriteOpts::of(req);
    let body = || -> Result<Value, ApiError> {
        serde_json::from_slice(&req.body)
            .map_err(|e| ApiError::new(400, "BadRequest", format!("the request body is not JSON: {e}")))
    };
    match (route, req.method.as_str()) {
        (Route::Version, _) => {
            Ok((200, json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0-k8s-ovs-test"}), vec![]))
        }
        (Route::Discovery(v), _) => Ok((200, v, vec![])),
        (Route::OpenApi(v), _) => Ok((200, v, vec![])),
        (Route::Collection { res, namespace }, "GET") => {
            let list = list(inner, &res, namespace.as_deref(), req);
            if req.wants_table() {
                return Ok((
                    200,
                    custom::table(
                        &res,
                        list["items"].as_array().map_or(&[][..], Vec::as_slice),
                        &list["metadata"],
                    ),
                    vec![],
                ));
            }
            Ok((200, list, vec![]))
        }
        (Route::Collection { res, namespace }, "POST") => {
            let mut object = body()?;
            if res.custom.is_none() && res.kind != Kind::CustomResourceDefinition.name() {
                // Built-ins (Events): stored as given.
                object["kind"] = json!(res.kind);
                if let Some(ns) = &namespace {
                    object["metadata"]["namespace"] = json!(ns);
                }
                return write(inner, object, Some(false))
                    .map(|o| (201, o, vec![]))
                    .map_err(|e| ApiError::new(409, "AlreadyExists", format!("{e:#}")));
            }
            custom::create(inner, &res, namespace.as_deref(), object, &opts).map(|(o, w)| (201, o, w))
        }
        (Route::Object { res, namespace, name, sub }, method) => {
            let status = match sub.as_deref() {
                None => false,
                Some("status") if res.custom.as_ref().is_some_and(|c| c.status) => true,
                Some(s) => {
                    return Err(ApiError::not_found(&format!(
                        "{} \"{name}\" subresource {s} not served",
                        res.qualified()
                    )))
                }
            };
            let ns = namespace.as_deref();
            match method {
                "GET" => {
                    let key = (res.kind.clone(), ns.unwrap_or("").to_string(), name.clone());
                    let Some(o) = inner.lock().objects.get(&key).cloned() else {
                        return Err(ApiError::not_found(&format!(
                            "{} \"{name}\" not found",
                            res.qualified()
                        )));
                    };
                    if req.wants_table() {
                        let rv = json!({"resourceVersion": o["metadata"]["resourceVersion"]});
                        return Ok((200, custom::table(&res, std::slice::from_ref(&o), &rv), vec![]));
                    }
                    Ok((200, o, vec![]))
                }
                "PUT" => {
                    custom::update(inner, &res, ns, &name, body()?, &opts, status).map(|(o, w)| (200, o, w))
                }
                "PATCH" => {
                    custom::patch(inner, &res, ns, &name, req.header("content-type"), body()?, &opts, status)
                        .map(|(o, w)| (200, o, w))
                }
                "DELETE" => {
                    let options = if req.body.is_empty() { Value::Null } else { body()? };
                    custom::delete(inner, &res, ns, &name, &options).map(|o| (200, o, vec![]))
                }
                m => Err(ApiError::new(405, "MethodNotAllowed", format!("{m} is not supported"))),
            }
        }
        (Route::Collection { .. }, m) => {
            Err(ApiError::new(405, "MethodNotAllowed", format!("{m} on a collection is not supported")))
        }
        (Route::NotFound, _) => Err(ApiError::not_found(&format!("{} not served", req.path))),
    }
}

enum Route {
    /// `.../<plural>` (namespace: `.../namespaces/<ns>/<plural>`).
    Collection {
        res: Resource,
        namespace: Option<String>,
    },
    /// `.../<plural>/<name>[/<subresource>]`.
    Object {
        res: Resource,
        namespace: Option<String>,
        name: String,
        sub: Option<String>,
    },
    Discovery(Value),
    OpenApi(Value),
    Version,
    NotFound,
}

fn route(st: &State, req: &Request) -> Route {
    let segs: Vec<&str> = req.path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["version"] => return Route::Version,
        ["api"] => return Route::Discovery(custom::api_versions(req)),
        ["apis"] => return Route::Discovery(custom::api_groups(st)),
        ["openapi", "v3"] => return Route::OpenApi(custom::openapi_root(st)),
        ["openapi", "v3", "apis", g, v] => {
            return custom::openapi_group(st, g, v).map_or(Route::NotFound, Route::OpenApi);
        }
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (g, v, rest),
        _ => return Route::NotFound,
    };
    if rest.is_empty() {
        return custom::api_resources(st, group, version).map_or(Route::NotFound, Route::Discovery);
    }
    let found = |plural: &str| st.find(group, version, plural);
    let (namespace, rest) = match rest {
        // `/api/v1/namespaces/<ns>/<plural>...` unless <ns> is itself the object.
        ["namespaces", ns, plural, more @ ..] if found(plural).is_some_and(|r| r.namespaced) => {
            (Some(ns.to_string()), [&[*plural][..], more].concat())
        }
        other => (None, other.to_vec()),
    };
    let Some(res) = rest.first().and_then(|p| found(p)) else { return Route::NotFound };
    if namespace.is_none() && res.namespaced && rest.len() > 1 {
        return Route::NotFound; // a namespaced object needs its namespace
    }
    match rest.as_slice() {
        [_] => Route::Collection { res, namespace },
        [_, name] => Route::Object { res, namespace, name: name.to_string(), sub: None },
        [_, name, sub] => {
            Route::Object { res, namespace, name: name.to_string(), sub: Some(sub.to_string()) }
        }
        _ => Route::NotFound,
    }
}

fn respond(out: &mut TcpStream, code: u16, body: &Value, warnings: &[String]) -> Result<()> {
    let text = body.to_string();
    let reason = match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Request Entity Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        _ => "Error",
    };
    let mut head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        text.len()
    );
    for w in warnings {
        head.push_str(&format!("Warning: 299 - {}\r\n", Value::from(w.as_str())));
    }
    write!(out, "{head}\r\n{text}")?;
    out.flush()?;
    Ok(())
}

/// A label or field selector: all terms must hold.
struct Selector {
    /// (path, op, value); op: "=", "!=", "exists", "!exists".
    terms: Vec<(Vec<String>, &'static str, String)>,
}

impl Selector {
    fn parse(s: Option<&String>, labels: bool) -> Selector {
        let mut terms = Vec::new();
        for t in s.map(String::as_str).unwrap_or("").split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let path = |k: &str| -> Vec<String> {
                if labels {
                    vec!["metadata".into(), "labels".into(), k.trim().into()]
                } else {
                    k.trim().split('.').map(str::to_string).collect()
                }
            };
            if let Some((k, v)) = t.split_once("!=") {
                terms.push((path(k), "!=", v.trim().to_string()));
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                terms.push((path(k), "=", v.trim().to_string()));
            } else if let Some(k) = t.strip_prefix('!') {
                terms.push((path(k), "!exists", String::new()));
            } else {
                terms.push((path(t), "exists", String::new()));
            }
        }
        Selector { terms }
    }

    fn matches(&self, obj: &Value) -> bool {
        self.terms.iter().all(|(path, op, want)| {
            let mut v = obj;
            for p in path {
                v = &v[p.as_str()];
            }
            let got = match v {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            };
            match *op {
                "=" => got.as_deref().unwrap_or("") == want,
                "!=" => got.as_deref().unwrap_or("") != want,
                "exists" => got.is_some(),
                _ => got.is_none(),
            }
        })
    }
}

struct Filter<'a> {
    kind: &'a str,
    namespace: Option<&'a str>,
    labels: Selector,
    fields: Selector,
}

impl Filter<'_> {
    fn new<'a>(kind: &'a str, namespace: Option<&'a str>, req: &Request) -> Filter<'a> {
        Filter {
            kind,
            namespace,
            labels: Selector::parse(req.query.get("labelSelector"), true),
            fields: Selector::parse(req.query.get("fieldSelector"), false),
        }
    }

    fn matches(&self, kind: &str, obj: &Value) -> bool {
        kind == self.kind
            && self.namespace.is_none_or(|ns| obj["metadata"]["namespace"].as_str() == Some(ns))
            && self.labels.matches(obj)
            && self.fields.matches(obj)
    }
}

fn list(inner: &Inner, res: &Resource, namespace: Option<&str>, req: &Request) -> Value {
    let filter = Filter::new(&res.kind, namespace, req);
    let mut st = inner.lock();
    *st.lists.entry(res.kind.clone()).or_default() += 1;
    let items: Vec<Value> =
        st.objects.iter().filter(|((k, _, _), o)| filter.matches(k, o)).map(|(_, o)| o.clone()).collect();
    json!({
        "kind": format!("{}List", res.kind),
        "apiVersion": res.api_version(),
        "metadata": {"resourceVersion": st.rv.to_string()},
        "items": items,
    })
}

fn chunk(out: &mut TcpStream, line: &Value) -> std::io::Result<()> {
    let text = format!("{line}\n");
    write!(out, "{:x}\r\n{text}\r\n", text.len())?;
    out.flush()
}

fn watch(
    inner: &Inner,
    out: &mut TcpStream,
    res: &Resource,
    namespace: Option<&str>,
    req: &Request,
) -> Result<()> {
    let filter = Filter::new(&res.kind, namespace, req);
    let bookmarks = req.query.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = req.query.get("timeoutSeconds").and_then(|t| t.parse().ok()).unwrap_or(1800u64);
    let deadline = Instant::now() + Duration::from_secs(timeout);
    write!(out, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")?;
    out.flush()?;
    let start = req.query.get("resourceVersion").cloned().unwrap_or_default();
    let (mut last, generation) = {
        let mut st = inner.lock();
        *st.watches.entry(res.kind.clone()).or_default() += 1;
        let generation = st.generation;
        match start.parse::<u64>() {
            Ok(n) if n > 0 => {
                if n < st.compacted {
                    let msg = format!("too old resource version: {n} ({})", st.compacted);
                    drop(st);
                    let e = ApiError::new(410, "Expired", msg);
                    chunk(out, &json!({"type": "ERROR", "object": e.status()}))?;
                    write!(out, "0\r\n\r\n")?;
                    return Ok(());
                }
                (n, generation)
            }
            // "" or "0": start with the current state as ADDED events.
            _ => {
                let objects: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|((k, _, _), o)| filter.matches(k, o))
                    .map(|(_, o)| o.clone())
                    .collect();
                let rv = st.rv;
                drop(st);
                for o in objects {
                    chunk(out, &json!({"type": "ADDED", "object": o}))?;
                }
                (rv, generation)
            }
        }
    };
    let mut last_sent = Instant::now();
    loop {
        let (events, rv) = {
            let mut st = inner.lock();
            loop {
                if inner.stop.load(Ordering::Relaxed)
                    || inner.down.load(Ordering::Relaxed)
                    || st.generation != generation
                    || Instant::now() >= deadline
                {
                    drop(st);
                    write!(out, "0\r\n\r\n")?;
                    return Ok(());
                }
                let pending: Vec<Value> = st
                    .history
                    .iter()
                    .filter(|c| c.rv > last && filter.matches(&c.kind, &c.object))
                    .map(|c| json!({"type": c.event, "object": c.object}))
                    .collect();
                if !pending.is_empty()
                    || st.rv > last && bookmarks && last_sent.elapsed() > Duration::from_secs(1)
                {
                    break (pending, st.rv);
                }
                st = inner
                    .changed
                    .wait_timeout(st, Duration::from_millis(500))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
        };
        if events.is_empty() {
            let mark = json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": {"resourceVersion": rv.to_string()}});
            chunk(out, &json!({"type": "BOOKMARK", "object": mark}))?;
        }
        for e in &events {
            chunk(out, e)?;
        }
        last = rv;
        last_sent = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(percent_decode("spec.nodeName%3Dnode1"), "spec.nodeName=node1");
        assert_eq!(percent_decode("a%2Cb+c"), "a,b c");
        assert_eq!(percent_decode("bad%zz%4"), "bad%zz%4");
    }

    #[test]
    fn selectors_match_like_the_apiserver() {
        let pod = json!({"metadata": {"name": "p", "namespace": "d", "labels": {"app": "web", "tier": "1"}},
                         "spec": {"nodeName": "n1"}});
        let field = |s: &str| Selector::parse(Some(&s.to_string()), false).matches(&pod);
        let label = |s: &str| Selector::parse(Some(&s.to_string()), true).matches(&pod);
        assert!(field("spec.nodeName=n1"));
        assert!(!field("spec.nodeName=n2"));
        assert!(field("metadata.name==p,spec.nodeName!=n2"));
        assert!(field(""));
        assert!(label("app=web,tier"));
        assert!(!label("app!=web"));
        assert!(label("!missing"));
        assert!(!label("missing"));
    }

    fn req(method: &str, path: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            query: HashMap::new(),
            headers: HashMap::new(),
            body: vec![],
        }
    }

    #[test]
    fn routes_cover_cluster_and_namespaced_paths() {
        let st = State::default();
        let r = |p: &str| route(&st, &req("GET", p));
        let kind = |r: Route| match r {
            Route::Collection { res, namespace } => format!("list {} {namespace:?}", res.kind),
            Route::Object { res, namespace, name, sub } => {
                format!("get {} {namespace:?} {name} {sub:?}", res.kind)
            }
            Route::Discovery(_) => "discovery".into(),
            Route::OpenApi(_) => "openapi".into(),
            Route::Version => "version".into(),
            Route::NotFound => "404".into(),
        };
        assert_eq!(kind(r("/api/v1/namespaces")), "list Namespace None");
        assert_eq!(kind(r("/api/v1/nodes/n1")), "get Node None n1 None");
        assert_eq!(kind(r("/api/v1/namespaces/d/pods")), "list Pod Some(\"d\")");
        assert_eq!(kind(r("/api/v1/namespaces/d/services/s")), "get Service Some(\"d\") s None");
        assert_eq!(kind(r("/api/v1/namespaces/x")), "get Namespace None x None");
        assert_eq!(kind(r("/api/v1/pods/p")), "404", "a namespaced object needs its namespace");
        assert_eq!(kind(r("/apis/discovery.k8s.io/v1/endpointslices")), "list EndpointSlice None");
        assert_eq!(kind(r("/api/v1/endpointslices")), "404", "not in the core group");
        assert_eq!(kind(r("/apis/apps/v1/deployments")), "404");
        assert_eq!(kind(r("/apis")), "discovery");
        assert_eq!(
            kind(r("/apis/networking.k8s.io/v1/namespaces/d/networkpolicies/p")),
            "get NetworkPolicy Some(\"d\") p None"
        );
    }

    #[test]
    fn writes_get_the_apiservers_defaults() {
        let api = KubeApi::start().expect("start");
        let ns =
            api.create(json!({"kind": "Namespace", "metadata": {"name": "red", "labels": {"team": "r"}}}));
        let ns = ns.expect("namespace");
        assert_eq!(ns["metadata"]["labels"], json!({"team": "r", "kubernetes.io/metadata.name": "red"}));
        let forged = json!({"kind": "Namespace", "metadata": {"name": "blue", "labels": {"kubernetes.io/metadata.name": "red"}}});
        let blue = api.create(forged).expect("namespace");
        assert_eq!(
            blue["metadata"]["labels"]["kubernetes.io/metadata.name"], "blue",
            "the server overwrites it"
        );
        let np = |spec: Value| json!({"kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "red"}, "spec": spec});
        let ingress_only =
            api.apply(np(json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}))).expect("np");
        assert_eq!(ingress_only["spec"]["policyTypes"], json!(["Ingress"]));
        assert_eq!(ingress_only["spec"]["ingress"][0]["ports"][0], json!({"port": 80, "protocol": "TCP"}));
        assert_eq!(ingress_only["apiVersion"], "networking.k8s.io/v1");
        let both = api.apply(np(json!({"podSelector": {}, "egress": [{}]}))).expect("np");
        assert_eq!(both["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        let given =
            api.apply(np(json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}))).expect("np");
        assert_eq!(given["spec"]["policyTypes"], json!(["Egress"]), "given types are kept");
        let pod = json!({"kind": "Pod", "metadata": {"name": "w", "namespace": "red"},
                         "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]}});
        let pod = api.create(pod).expect("pod");
        assert_eq!(pod["spec"]["containers"][0]["ports"][0]["protocol"], "TCP");
    }
}
