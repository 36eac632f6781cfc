//! A small kube-apiserver for tests: list and watch of Namespaces, Nodes,
//! Pods and Services (core/v1) in the real wire format, so kube-rs (and the
//! controller and agent built on it) talk to it unchanged with
//! `kube::Config::new(url)`.
//!
//! What it serves, as the real server does:
//! - `GET /api/v1/{namespaces,nodes,pods,services}` and the namespaced
//!   `/api/v1/namespaces/<ns>/{pods,services}`: a `<Kind>List` whose
//!   `metadata.resourceVersion` is the store's current revision; single
//!   objects at `.../<name>`.
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
//!
//! - `POST /api/v1/namespaces/<ns>/events`: stores the Event (with
//!   `generateName`) for tests to read with [`KubeApi::objects`].
//! - EndpointSlices (`discovery.k8s.io/v1`) under
//!   `/apis/discovery.k8s.io/v1/[namespaces/<ns>/]endpointslices`, written
//!   by tests as the EndpointSlice controller writes them (see
//!   [`crate::kube_proxy::endpoint_slice`]).
//! - [`KubeApi::set_down`] is an outage: while down, every connection is
//!   closed as soon as it is accepted and open watches end, as clients of a
//!   crashed apiserver see it; the objects survive.
//!
//! Plain HTTP/1.1 on std threads: one thread accepts, one per connection.
//! It can listen inside a lab namespace: the socket is created by a thread
//! that entered the namespace (a socket keeps the namespace it was made in)
//! and is served from the normal process.

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

ovs_flows::value_enum! {
/// The resource kinds served.
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
}
}

impl Kind {
    /// The group/version objects of the kind carry.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }

    /// Where the kind is served: the core group or a named one.
    fn group(self) -> Option<&'static str> {
        match self {
            Kind::EndpointSlice => Some("discovery.k8s.io"),
            _ => None,
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
        }
    }

    fn namespaced(self) -> bool {
        matches!(self, Kind::Pod | Kind::Service | Kind::Event | Kind::EndpointSlice)
    }

    fn from_name(s: &str) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| k.name() == s)
    }

    fn from_plural(s: &str) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| k.plural() == s)
    }
}

/// (kind, namespace ("" for cluster-scoped), name)
type ObjKey = (Kind, String, String);

struct Change {
    rv: u64,
    kind: Kind,
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
    lists: HashMap<Kind, u64>,
    watches: HashMap<Kind, u64>,
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
    /// resourceVersion and uid. Fails when it exists.
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
        write(&self.inner, object, must_exist)
    }

    /// Every stored object of `kind` (e.g. the Events clients posted).
    pub fn objects(&self, kind: Kind) -> Vec<Value> {
        self.inner.lock().objects.iter().filter(|((k, _, _), _)| *k == kind).map(|(_, v)| v.clone()).collect()
    }

    /// Deletes an object (namespace: None for cluster-scoped kinds).
    pub fn delete(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Result<()> {
        let mut st = self.inner.lock();
        let key = (kind, namespace.unwrap_or("").to_string(), name.to_string());
        let Some(mut object) = st.objects.remove(&key) else { bail!("{} {name} not found", kind.name()) };
        st.rv += 1;
        let rv = st.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.history.push(Change { rv, kind, event: "DELETED", object });
        drop(st);
        self.inner.changed.notify_all();
        Ok(())
    }

    pub fn get(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Option<Value> {
        self.inner.lock().objects.get(&(kind, namespace.unwrap_or("").to_string(), name.to_string())).cloned()
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
    pub fn list_count(&self, kind: Kind) -> u64 {
        self.inner.lock().lists.get(&kind).copied().unwrap_or(0)
    }

    pub fn watch_count(&self, kind: Kind) -> u64 {
        self.inner.lock().watches.get(&kind).copied().unwrap_or(0)
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

    pub fn objects(&self, kind: Kind) -> Vec<Value> {
        self.inner.lock().objects.iter().filter(|((k, _, _), _)| *k == kind).map(|(_, v)| v.clone()).collect()
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

/// Stores an object (`must_exist`: Some(false) create, Some(true) replace,
/// None either); fills resourceVersion and uid.
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
    let mut st = inner.lock();
    let key = (kind, ns, name);
    let existing = st.objects.get(&key).cloned();
    match (must_exist, &existing) {
        (Some(false), Some(_)) => bail!("{} {} already exists", kind.name(), key.2),
        (Some(true), None) => bail!("{} {} not found", kind.name(), key.2),
        _ => {}
    }
    st.rv += 1;
    let rv = st.rv;
    let uid = match existing.as_ref().and_then(|e| e["metadata"]["uid"].as_str()) {
        Some(u) => u.to_string(),
        None => {
            st.uid += 1;
            format!("00000000-0000-4000-8000-{:012}", st.uid)
        }
    };
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    object["metadata"]["uid"] = json!(uid);
    let event = if existing.is_some() { "MODIFIED" } else { "ADDED" };
    st.objects.insert(key, object.clone());
    st.history.push(Change { rv, kind, event, object: object.clone() });
    drop(st);
    inner.changed.notify_all();
    Ok(object)
}

struct Request {
    method: String,
    path: String,
    query: HashMap<String, String>,
    body: Vec<u8>,
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

/// Reads one request head (and skips a body); None at EOF or shutdown.
fn read_request(inner: &Inner, reader: &mut BufReader<TcpStream>) -> Result<Option<Request>> {
    let mut head = String::new();
    loop {
        if inner.stop.load(Ordering::Relaxed) || inner.down.load(Ordering::Relaxed) {
            return Ok(None);
        }
        match reader.read_line(&mut head) {
            Ok(0) => return Ok(None),
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
    let mut content_length = 0usize;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                content_length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; content_length];
    if content_length > 0 {
        reader.read_exact(&mut body)?;
    }
    let (path, qs) = target.split_once('?').unwrap_or((target, ""));
    let query = qs
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Ok(Some(Request { method, path: path.to_string(), query, body }))
}

fn serve_connection(inner: &Inner, stream: TcpStream) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.set_nodelay(true)?;
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while let Some(req) = read_request(inner, &mut reader)? {
        match route(&req) {
            Route::List { kind, namespace }
                if req.query.get("watch").is_some_and(|w| w == "true" || w == "1") =>
            {
                watch(inner, &mut out, kind, namespace.as_deref(), &req)?;
                return Ok(());
            }
            Route::List { kind, namespace } => {
                let body = list(inner, kind, namespace.as_deref(), &req);
                respond(&mut out, 200, &body)?;
            }
            Route::Create { kind, namespace } => {
                let created = serde_json::from_slice::<Value>(&req.body)
                    .map_err(anyhow::Error::from)
                    .and_then(|mut o| {
                        o["kind"] = json!(kind.name());
                        o["metadata"]["namespace"] = json!(namespace);
                        write(inner, o, Some(false))
                    });
                match created {
                    Ok(o) => respond(&mut out, 201, &o)?,
                    Err(e) => respond(&mut out, 400, &status(400, "BadRequest", &format!("{e:#}")))?,
                }
            }
            Route::Get { kind, namespace, name } => {
                let found =
                    inner.lock().objects.get(&(kind, namespace.unwrap_or_default(), name.clone())).cloned();
                match found {
                    Some(o) => respond(&mut out, 200, &o)?,
                    None => respond(
                        &mut out,
                        404,
                        &status(404, "NotFound", &format!("{} \"{name}\" not found", kind.plural())),
                    )?,
                }
            }
            Route::Version => respond(
                &mut out,
                200,
                &json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0-k8s-ovs-test"}),
            )?,
            Route::NotFound => {
                respond(&mut out, 404, &status(404, "NotFound", &format!("{} not served", req.path)))?
            }
        }
    }
    Ok(())
}

enum Route {
    List {
        kind: Kind,
        namespace: Option<String>,
    },
    /// POST to a namespaced collection (what clients create here: Events).
    Create {
        kind: Kind,
        namespace: String,
    },
    Get {
        kind: Kind,
        namespace: Option<String>,
        name: String,
    },
    Version,
    NotFound,
}

fn route(req: &Request) -> Route {
    let segs: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    // A named group (`/apis/<group>/v1/...`) is routed like the core group,
    // for the kinds that live in it.
    if let ["apis", group, "v1", rest @ ..] = segs.as_slice() {
        let mut core = vec!["api", "v1"];
        core.extend_from_slice(rest);
        return match route_core(req, &core) {
            Route::List { kind, .. } | Route::Create { kind, .. } | Route::Get { kind, .. }
                if kind.group() != Some(group) =>
            {
                Route::NotFound
            }
            r => r,
        };
    }
    match segs.as_slice() {
        ["api", "v1", plural, ..] if Kind::from_plural(plural).is_some_and(|k| k.group().is_some()) => {
            Route::NotFound
        }
        ["api", "v1", "namespaces", _, plural, ..]
            if Kind::from_plural(plural).is_some_and(|k| k.group().is_some()) =>
        {
            Route::NotFound
        }
        _ => route_core(req, &segs),
    }
}

fn route_core(req: &Request, segs: &[&str]) -> Route {
    match segs {
        ["version"] => Route::Version,
        ["api", "v1", plural] => match Kind::from_plural(plural) {
            Some(kind) => Route::List { kind, namespace: None },
            None => Route::NotFound,
        },
        ["api", "v1", plural, name] => match Kind::from_plural(plural) {
            Some(kind) if !kind.namespaced() => Route::Get { kind, namespace: None, name: name.to_string() },
            _ => Route::NotFound,
        },
        ["api", "v1", "namespaces", ns, plural] => match Kind::from_plural(plural) {
            Some(kind) if kind.namespaced() && req.method == "POST" => {
                Route::Create { kind, namespace: ns.to_string() }
            }
            Some(kind) if kind.namespaced() => Route::List { kind, namespace: Some(ns.to_string()) },
            _ => Route::NotFound,
        },
        ["api", "v1", "namespaces", ns, plural, name] => match Kind::from_plural(plural) {
            Some(kind) if kind.namespaced() => {
                Route::Get { kind, namespace: Some(ns.to_string()), name: name.to_string() }
            }
            _ => Route::NotFound,
        },
        _ => Route::NotFound,
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn respond(out: &mut TcpStream, code: u16, body: &Value) -> Result<()> {
    let text = body.to_string();
    let reason = match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Error",
    };
    write!(
        out,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
        text.len()
    )?;
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
    kind: Kind,
    namespace: Option<&'a str>,
    labels: Selector,
    fields: Selector,
}

impl Filter<'_> {
    fn new<'a>(kind: Kind, namespace: Option<&'a str>, req: &Request) -> Filter<'a> {
        Filter {
            kind,
            namespace,
            labels: Selector::parse(req.query.get("labelSelector"), true),
            fields: Selector::parse(req.query.get("fieldSelector"), false),
        }
    }

    fn matches(&self, kind: Kind, obj: &Value) -> bool {
        kind == self.kind
            && self.namespace.is_none_or(|ns| obj["metadata"]["namespace"].as_str() == Some(ns))
            && self.labels.matches(obj)
            && self.fields.matches(obj)
    }
}

fn list(inner: &Inner, kind: Kind, namespace: Option<&str>, req: &Request) -> Value {
    let filter = Filter::new(kind, namespace, req);
    let mut st = inner.lock();
    *st.lists.entry(kind).or_default() += 1;
    let items: Vec<Value> =
        st.objects.iter().filter(|((k, _, _), o)| filter.matches(*k, o)).map(|(_, o)| o.clone()).collect();
    json!({
        "kind": format!("{}List", kind.name()),
        "apiVersion": kind.api_version(),
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
    kind: Kind,
    namespace: Option<&str>,
    req: &Request,
) -> Result<()> {
    let filter = Filter::new(kind, namespace, req);
    let bookmarks = req.query.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = req.query.get("timeoutSeconds").and_then(|t| t.parse().ok()).unwrap_or(1800u64);
    let deadline = Instant::now() + Duration::from_secs(timeout);
    write!(out, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")?;
    out.flush()?;
    let start = req.query.get("resourceVersion").cloned().unwrap_or_default();
    let (mut last, generation) = {
        let mut st = inner.lock();
        *st.watches.entry(kind).or_default() += 1;
        let generation = st.generation;
        match start.parse::<u64>() {
            Ok(n) if n > 0 => {
                if n < st.compacted {
                    let msg = format!("too old resource version: {n} ({})", st.compacted);
                    drop(st);
                    chunk(out, &json!({"type": "ERROR", "object": status(410, "Expired", &msg)}))?;
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
                    .filter(|((k, _, _), o)| filter.matches(*k, o))
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
                    .filter(|c| c.rv > last && filter.matches(c.kind, &c.object))
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
            let mark = json!({"kind": kind.name(), "apiVersion": kind.api_version(), "metadata": {"resourceVersion": rv.to_string()}});
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

    #[test]
    fn routes_cover_cluster_and_namespaced_paths() {
        let r = |p: &str| {
            route(&Request { method: "GET".into(), path: p.into(), query: HashMap::new(), body: vec![] })
        };
        assert!(matches!(r("/api/v1/namespaces"), Route::List { kind: Kind::Namespace, namespace: None }));
        assert!(matches!(r("/api/v1/nodes/n1"), Route::Get { kind: Kind::Node, .. }));
        assert!(matches!(
            r("/api/v1/namespaces/d/pods"),
            Route::List { kind: Kind::Pod, namespace: Some(_) }
        ));
        assert!(matches!(r("/api/v1/namespaces/d/services/s"), Route::Get { kind: Kind::Service, .. }));
        assert!(matches!(r("/api/v1/namespaces/x"), Route::Get { kind: Kind::Namespace, .. }));
        assert!(matches!(r("/apis/apps/v1/deployments"), Route::NotFound));
    }
}
