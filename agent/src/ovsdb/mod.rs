//! A native OVSDB client (RFC 7047 JSON-RPC) for the `Open_vSwitch`
//! database, with the few operations the agent needs. No `ovs-vsctl`.
//!
//! ```no_run
//! # async fn f() -> Result<(), k8s_ovs_agent::ovsdb::OvsdbError> {
//! use std::time::Duration;
//! use k8s_ovs_agent::ovsdb::{BridgeSpec, Client, DatapathType, PortKind, PortSpec};
//! let ovs = Client::connect("unix:/var/run/openvswitch/db.sock").await?;
//! ovs.ensure_bridge(&BridgeSpec::new("br0", DatapathType::Netdev), Duration::from_secs(5)).await?;
//! let port = PortSpec::new("veth1234", PortKind::System).external_id("k8s-ovs.pod", "ns/pod");
//! let ofport = ovs.add_port("br0", &port, Duration::from_secs(5)).await?;
//! # Ok(()) }
//! ```
//!
//! How "applied" is known: every change also increments
//! `Open_vSwitch.next_cfg`; ovs-vswitchd copies it to `cur_cfg` once it has
//! reconfigured (as `ovs-vsctl` waits). A wait watches both with a `monitor`
//! (no polling): an interface that still has no ofport when `cur_cfg` caught
//! up failed, and its `error` column says why. A bridge whose datapath cannot
//! open (e.g. `datapath_type` `system` without the kernel module) leaves its
//! local interface without ofport and with an empty `error`: reported as such.
//!
//! Pod ports carry `external_ids` on their Interface row; [`Client::list_ports`]
//! returns them so the agent can rebuild its state after a restart.
//!
//! Reconnects: ovsdb-server may restart under the agent (a package upgrade,
//! a crash, `ovs-ctl restart`). Its database is on disk, so nothing is lost
//! but the connection. A [`Client`] notices the closed connection at its
//! next request and opens a new one first, retrying with backoff for at
//! most [`RECONNECT_WINDOW`]; if the server stays down the request fails
//! with [`OvsdbError::Unreachable`] instead of hanging. Concurrent requests
//! share one reconnect. A request is sent again on the new connection only
//! when it cannot have changed anything: it never left the client (the
//! connection was already closed), or it is a transaction of `select`s
//! only, or a monitor (which dies with its connection). A transaction that
//! was sent and lost its connection before the reply may or may not have
//! committed (its `next_cfg` bump with it): it fails with
//! [`OvsdbError::Disconnected`] and the caller, who knows what it meant,
//! decides (the agent's operations are idempotent `ensure`s and deletes, so
//! the caller's own retry is safe where a blind one here would not be).
//! Waits ([`Client::wait_ofport`], [`Client::wait_applied`]) whose monitor
//! loses its connection start it again on the new one, within their timeout.

mod datum;
pub(crate) mod jsonrpc;
mod vswitch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use jsonrpc::{CallError, Connection};
use ovs_flows::backoff::Backoff;
pub use vswitch::{BridgeSpec, Change, DatapathType, PortInfo, PortKind, PortSpec};

/// The database every operation works on.
pub const DB: &str = "Open_vSwitch";

/// How long a request keeps trying to reconnect to a server that went away
/// before it fails: short enough for a CNI request to fail with a reason
/// well within its runtime's timeout.
pub const RECONNECT_WINDOW: Duration = Duration::from_secs(3);

/// Bounds of the (jittered) pause between reconnect attempts: the first, and
/// the most it doubles to; short, as the whole window is a few seconds.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum OvsdbError {
    #[error("bad OVSDB endpoint {0:?}: expected unix:<path> or tcp:<host>:<port>")]
    BadEndpoint(String),
    #[error("connect to OVSDB at {endpoint}: {source}")]
    Connect { endpoint: String, source: std::io::Error },
    #[error("OVSDB connection closed")]
    Disconnected,
    #[error(
        "OVSDB connection lost and not re-established within {after:?} (is ovsdb-server running?): {last}"
    )]
    Unreachable { after: Duration, last: Box<OvsdbError> },
    #[error("OVSDB protocol error: {0}")]
    Protocol(String),
    #[error("OVSDB {method} failed: {error}")]
    Rpc { method: String, error: Value },
    #[error("OVSDB transaction failed at operation {index}: {error}: {details}")]
    Transaction { index: usize, error: String, details: String },
    #[error("bridge {0} does not exist")]
    NoSuchBridge(String),
    #[error("port {port} exists on another bridge than {bridge}")]
    PortOnOtherBridge { port: String, bridge: String },
    #[error("interface {name} did not come up: {error}")]
    Interface { name: String, error: String },
    #[error("timed out after {after:?} waiting for {what} (is ovs-vswitchd running?)")]
    Timeout { what: String, after: Duration },
}

/// A connection to ovsdb-server that is re-opened when the server goes away
/// (see the module doc). Requests may be issued concurrently from several
/// tasks (`&self`); replies are matched by id.
pub struct Client {
    endpoint: String,
    /// The current connection; replaced (never mutated) by a reconnect.
    conn: Mutex<Arc<Connection>>,
    /// Held while reconnecting, so concurrent requests share one reconnect.
    reconnecting: tokio::sync::Mutex<()>,
    reconnect_window: Duration,
    /// Shareable, so the agent's metrics read it directly.
    reconnects: Arc<AtomicU64>,
    next_monitor: AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

/// Opens one connection to `unix:<path>` or `tcp:<host>:<port>`.
async fn open(endpoint: &str) -> Result<Connection, OvsdbError> {
    let conn_err = |source| OvsdbError::Connect { endpoint: endpoint.to_string(), source };
    if let Some(path) = endpoint.strip_prefix("unix:") {
        let s = tokio::net::UnixStream::connect(path).await.map_err(conn_err)?;
        let (r, w) = s.into_split();
        Ok(Connection::start(r, w))
    } else if let Some(addr) = endpoint.strip_prefix("tcp:") {
        let s = tokio::net::TcpStream::connect(addr).await.map_err(conn_err)?;
        // Requests are small and latency-bound.
        s.set_nodelay(true).map_err(conn_err)?;
        let (r, w) = s.into_split();
        Ok(Connection::start(r, w))
    } else {
        Err(OvsdbError::BadEndpoint(endpoint.to_string()))
    }
}

/// A transaction that only reads cannot have changed anything, whatever
/// became of it: it may be sent again.
fn read_only(ops: &[Value]) -> bool {
    ops.iter().all(|op| op.get("op").and_then(Value::as_str) == Some("select"))
}

impl Client {
    /// Connects to `unix:<path>` or `tcp:<host>:<port>` (the notation of
    /// ovsdb-server's `--remote`). This first connection is not retried.
    pub async fn connect(endpoint: &str) -> Result<Client, OvsdbError> {
        Ok(Client::from_connection(open(endpoint).await?, endpoint))
    }

    fn from_connection(conn: Connection, endpoint: &str) -> Client {
        Client {
            endpoint: endpoint.to_string(),
            conn: Mutex::new(Arc::new(conn)),
            reconnecting: tokio::sync::Mutex::new(()),
            reconnect_window: RECONNECT_WINDOW,
            reconnects: Arc::new(AtomicU64::new(0)),
            next_monitor: AtomicU64::new(0),
        }
    }

    /// Replaces [`RECONNECT_WINDOW`].
    pub fn with_reconnect_window(mut self, window: Duration) -> Client {
        self.reconnect_window = window;
        self
    }

    /// Counts reconnects in `counter` (e.g. a metric) instead of a private one.
    pub fn with_reconnect_counter(mut self, counter: Arc<AtomicU64>) -> Client {
        self.reconnects = counter;
        self
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Whether the current connection is closed; the next request reconnects.
    pub fn is_closed(&self) -> bool {
        self.current().is_closed()
    }

    /// How many times a lost connection was replaced.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    fn current(&self) -> Arc<Connection> {
        // Only ever assigned whole: a panic elsewhere cannot leave it half-set.
        Arc::clone(&self.conn.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The current connection, or a new one if it is closed.
    async fn live(&self) -> Result<Arc<Connection>, OvsdbError> {
        let conn = self.current();
        if conn.is_closed() {
            return self.reconnect(&conn).await;
        }
        Ok(conn)
    }

    /// Replaces the closed connection `stale`, trying with backoff for the
    /// reconnect window; a request that waited for another's reconnect uses
    /// its result.
    async fn reconnect(&self, stale: &Arc<Connection>) -> Result<Arc<Connection>, OvsdbError> {
        let _one_at_a_time = self.reconnecting.lock().await;
        let conn = self.current();
        if !Arc::ptr_eq(&conn, stale) && !conn.is_closed() {
            return Ok(conn);
        }
        tracing::warn!(endpoint = %self.endpoint, "OVSDB connection lost, reconnecting");
        let started = Instant::now();
        let deadline = started + self.reconnect_window;
        let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            // A TCP connect to a host that is gone could hang for minutes.
            let attempt = tokio::time::timeout_at(deadline.into(), open(&self.endpoint)).await;
            let last = match attempt {
                Ok(Ok(new)) => {
                    let new = Arc::new(new);
                    *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&new);
                    self.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(endpoint = %self.endpoint, attempts, after = ?started.elapsed(),
                                   "OVSDB reconnected");
                    return Ok(new);
                }
                Ok(Err(e @ OvsdbError::BadEndpoint(_))) => return Err(e),
                Ok(Err(e)) => e,
                Err(_) => OvsdbError::Connect {
                    endpoint: self.endpoint.clone(),
                    source: std::io::ErrorKind::TimedOut.into(),
                },
            };
            let pause = backoff.next_delay();
            if Instant::now() + pause >= deadline {
                let after = self.reconnect_window;
                tracing::warn!(endpoint = %self.endpoint, attempts, error = %last, "OVSDB still unreachable");
                return Err(OvsdbError::Unreachable { after, last: Box::new(last) });
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Sends a request on a live connection. It goes again on a new
    /// connection if the old one refused it unsent, or if `resend` (the
    /// request changes nothing) and the old one was lost with it in flight.
    async fn call(&self, method: &str, params: Value, resend: bool) -> Result<Value, OvsdbError> {
        let conn = self.live().await?;
        match conn.request(method, params.clone()).await {
            Err(CallError::NotSent) => {}
            Err(CallError::Failed(OvsdbError::Disconnected)) if resend => {}
            Err(CallError::Failed(e)) => return Err(e),
            Ok(v) => return Ok(v),
        }
        let conn = self.reconnect(&conn).await?;
        conn.call(method, params).await
    }

    /// Runs `ops` as one atomic transaction on `Open_vSwitch`; returns one
    /// result per operation, or the first operation's error.
    pub async fn transact(&self, ops: Vec<Value>) -> Result<Vec<Value>, OvsdbError> {
        let resend = read_only(&ops);
        let mut params = vec![json!(DB)];
        params.extend(ops);
        let n_ops = params.len() - 1;
        let result = self.call("transact", Value::Array(params), resend).await?;
        let Value::Array(results) = result else {
            return Err(OvsdbError::Protocol(format!("transact result is not an array: {result}")));
        };
        // One entry per operation; a failed commit adds one more with the error.
        for (index, r) in results.iter().enumerate() {
            if let Some(error) = r.get("error").filter(|e| !e.is_null()) {
                let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_string();
                return Err(OvsdbError::Transaction {
                    index,
                    error: error.as_str().map(str::to_string).unwrap_or_else(|| error.to_string()),
                    details: text(r.get("details")),
                });
            }
        }
        if results.len() < n_ops {
            return Err(OvsdbError::Protocol(format!(
                "transact returned {} results for {n_ops} ops",
                results.len()
            )));
        }
        Ok(results)
    }

    /// Starts a `monitor` on `Open_vSwitch` with the given per-table requests
    /// (`{"Table": {"columns": [..]}}`): the initial contents and a stream of
    /// updates, on the connection current at the start. End it with
    /// [`Monitor::cancel`]. A monitor changes nothing, so one lost in the
    /// making is made again on a new connection.
    pub(crate) async fn monitor(&self, requests: &Value) -> Result<Monitor, OvsdbError> {
        let conn = self.live().await?;
        match self.monitor_on(Arc::clone(&conn), requests).await {
            Err(OvsdbError::Disconnected) => {
                let conn = self.reconnect(&conn).await?;
                self.monitor_on(conn, requests).await
            }
            r => r,
        }
    }

    async fn monitor_on(&self, conn: Arc<Connection>, requests: &Value) -> Result<Monitor, OvsdbError> {
        let n = self.next_monitor.fetch_add(1, Ordering::Relaxed);
        let id = json!(format!("k8s-ovs-{n}"));
        // Subscribed before the request: updates may follow the reply at once.
        let updates = conn.subscribe(&id)?;
        // Built before the request, so that dropping this future half-way
        // (or an error) still cancels a monitor the server may have made.
        let mut monitor = Monitor { conn, id, initial: None, updates, cancelled: false };
        let initial = monitor.conn.call("monitor", json!([DB, monitor.id, requests])).await?;
        monitor.initial = Some(initial);
        Ok(monitor)
    }
}

/// A running monitor: first the initial table contents, then each update.
/// Dropped without [`Monitor::cancel`] (say, a caller's timeout dropped the
/// wait), it still cancels itself on the server. It lives and dies with the
/// connection it was made on: [`Monitor::next`] then fails with
/// [`OvsdbError::Disconnected`].
pub(crate) struct Monitor {
    conn: Arc<Connection>,
    id: Value,
    initial: Option<Value>,
    updates: mpsc::UnboundedReceiver<Value>,
    cancelled: bool,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if !self.cancelled {
            self.conn.unsubscribe(&self.id);
            self.conn.send_detached("monitor_cancel", json!([self.id]));
        }
    }
}

impl Monitor {
    /// The next table-updates object (the initial contents first).
    pub async fn next(&mut self) -> Result<Value, OvsdbError> {
        if let Some(v) = self.initial.take() {
            return Ok(v);
        }
        self.updates.recv().await.ok_or(OvsdbError::Disconnected)
    }

    /// Stops the monitor on the server (best effort: the connection may be gone).
    pub async fn cancel(mut self) {
        self.cancelled = true;
        self.conn.unsubscribe(&self.id);
        if let Err(e) = self.conn.call("monitor_cancel", json!([self.id])).await {
            tracing::debug!(error = %e, "monitor_cancel");
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A successful reply: one empty result per operation of a `transact`.
    fn reply_to(req: &Value) -> Vec<u8> {
        let result = match req["method"].as_str() {
            Some("transact") => {
                let ops = req["params"].as_array().map_or(0, |p| p.len().saturating_sub(1));
                Value::Array(vec![json!({}); ops])
            }
            _ => json!({}),
        };
        json!({"id": req["id"], "result": result, "error": null}).to_string().into_bytes()
    }

    /// A scripted ovsdb-server: answers every request with an empty result
    /// (no operations for `transact`) and reports the methods it received,
    /// in order.
    fn fake_server() -> (Client, mpsc::UnboundedReceiver<String>) {
        let (client_side, server_side) = tokio::io::duplex(1 << 16);
        let (cr, cw) = tokio::io::split(client_side);
        let client = Client::from_connection(jsonrpc::Connection::start(cr, cw), "fake");
        let (seen_tx, seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (mut sr, mut sw) = tokio::io::split(server_side);
            let mut framer = jsonrpc::Framer::default();
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                for req in framer.push(&buf[..n]).expect("json") {
                    let _ = seen_tx.send(req["method"].as_str().unwrap_or_default().to_string());
                    sw.write_all(&reply_to(&req)).await.expect("write");
                }
            }
        });
        (client, seen)
    }

    async fn next(seen: &mut mpsc::UnboundedReceiver<String>) -> String {
        seen.recv().await.unwrap_or_default()
    }

    #[tokio::test]
    async fn a_dropped_monitor_is_cancelled_before_the_next_request() {
        let (client, mut seen) = fake_server();
        let monitor = client.monitor(&json!({"Interface": {"columns": ["name"]}})).await.expect("monitor");
        drop(monitor);
        client.transact(vec![]).await.expect("transact");
        assert_eq!(next(&mut seen).await, "monitor");
        assert_eq!(next(&mut seen).await, "monitor_cancel");
        assert_eq!(next(&mut seen).await, "transact");
    }

    #[tokio::test]
    async fn a_monitor_request_dropped_in_flight_is_cancelled_too() {
        let (client, mut seen) = fake_server();
        {
            let requests = json!({});
            let mut pending = Box::pin(client.monitor(&requests));
            // One poll sends the request; then the caller gives up.
            assert!(futures::poll!(&mut pending).is_pending());
        }
        client.transact(vec![]).await.expect("transact");
        assert_eq!(next(&mut seen).await, "monitor");
        assert_eq!(next(&mut seen).await, "monitor_cancel");
        assert_eq!(next(&mut seen).await, "transact");
    }

    /// What the scripted server does with the n-th request of its k-th connection.
    #[derive(Clone, Copy)]
    enum Act {
        Answer,
        AnswerThenHangUp,
        HangUp,
    }

    /// A scripted ovsdb-server on a Unix socket of its own, accepting any
    /// number of connections; it reports `(connection, params)` of every
    /// request. Dropping it stops it and removes the socket.
    struct UnixServer {
        path: std::path::PathBuf,
        accept: tokio::task::JoinHandle<()>,
        seen: mpsc::UnboundedReceiver<(usize, Value)>,
    }

    impl Drop for UnixServer {
        fn drop(&mut self) {
            self.accept.abort();
            let _ = std::fs::remove_file(&self.path);
        }
    }

    impl UnixServer {
        fn start(tag: &str, script: fn(usize, usize) -> Act) -> UnixServer {
            let path = std::env::temp_dir().join(format!("k8s-ovs-{}-{tag}.sock", std::process::id()));
            let _ = std::fs::remove_file(&path);
            let listener = tokio::net::UnixListener::bind(&path).expect("bind");
            let (seen_tx, seen) = mpsc::unbounded_channel();
            let accept = tokio::spawn(async move {
                for k in 0.. {
                    let Ok((stream, _)) = listener.accept().await else { return };
                    tokio::spawn(serve(k, stream, script, seen_tx.clone()));
                }
            });
            UnixServer { path, accept, seen }
        }

        fn endpoint(&self) -> String {
            format!("unix:{}", self.path.display())
        }

        /// Stops accepting and removes the socket: the server is down.
        fn stop(&self) {
            self.accept.abort();
            let _ = std::fs::remove_file(&self.path);
        }

        fn seen(&mut self) -> Vec<(usize, Value)> {
            std::iter::from_fn(|| self.seen.try_recv().ok()).collect()
        }
    }

    async fn serve(
        k: usize,
        stream: tokio::net::UnixStream,
        script: fn(usize, usize) -> Act,
        seen: mpsc::UnboundedSender<(usize, Value)>,
    ) {
        let (mut r, mut w) = stream.into_split();
        let mut framer = jsonrpc::Framer::default();
        let mut buf = vec![0u8; 4096];
        let mut nth = 0;
        while let Ok(n @ 1..) = r.read(&mut buf).await {
            for req in framer.push(&buf[..n]).expect("json") {
                let _ = seen.send((k, req["params"].clone()));
                let act = script(k, nth);
                nth += 1;
                if let Act::Answer | Act::AnswerThenHangUp = act {
                    w.write_all(&reply_to(&req)).await.expect("write");
                }
                if let Act::AnswerThenHangUp | Act::HangUp = act {
                    return;
                }
            }
        }
    }

    fn insert_op() -> Value {
        json!({"op": "insert", "table": "Port", "row": {"name": "p"}})
    }

    fn select_op() -> Value {
        json!({"op": "select", "table": "Port", "where": []})
    }

    async fn until_closed(client: &Client) {
        while !client.is_closed() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_closed_connection_is_reopened_by_the_next_request() {
        let mut server = UnixServer::start("reopen", |_, _| Act::AnswerThenHangUp);
        let client = Client::connect(&server.endpoint()).await.expect("connect");
        client.transact(vec![insert_op()]).await.expect("first");
        until_closed(&client).await;
        client.transact(vec![insert_op()]).await.expect("after the server hung up");
        assert_eq!(client.reconnects(), 1);
        let conns: Vec<usize> = server.seen().into_iter().map(|(k, _)| k).collect();
        assert_eq!(conns, [0, 1]);
    }

    #[tokio::test]
    async fn a_write_lost_in_flight_is_not_sent_again_but_a_read_is() {
        // Connections 0 and 1 hang up on their first request unanswered.
        let mut server = UnixServer::start("inflight", |k, _| if k < 2 { Act::HangUp } else { Act::Answer });
        let client = Client::connect(&server.endpoint()).await.expect("connect");
        let err = client.transact(vec![insert_op()]).await.expect_err("lost in flight");
        assert!(matches!(err, OvsdbError::Disconnected), "{err:?}");
        client.transact(vec![select_op()]).await.expect("a read is sent again");
        let seen = server.seen();
        let ops: Vec<(usize, &str)> =
            seen.iter().map(|(k, p)| (*k, p[1]["op"].as_str().unwrap_or_default())).collect();
        assert_eq!(ops, [(0, "insert"), (1, "select"), (2, "select")]);
        assert_eq!(client.reconnects(), 2);
    }

    #[tokio::test]
    async fn a_server_that_stays_down_fails_requests_within_the_window() {
        let server = UnixServer::start("down", |_, _| Act::AnswerThenHangUp);
        let window = Duration::from_millis(400);
        let client =
            Client::connect(&server.endpoint()).await.expect("connect").with_reconnect_window(window);
        client.transact(vec![]).await.expect("first");
        server.stop();
        until_closed(&client).await;
        let t0 = Instant::now();
        let err = client.transact(vec![insert_op()]).await.expect_err("down");
        let took = t0.elapsed();
        assert!(matches!(err, OvsdbError::Unreachable { .. }), "{err:?}");
        assert!(err.to_string().contains("not re-established"), "{err}");
        // It waited at least one pause and tried again before giving up (the
        // first pause is at least half of BACKOFF_FIRST; how many more fit in
        // the window depends on the jitter), and gave up within the window.
        assert!(took >= BACKOFF_FIRST / 2 && took < Duration::from_secs(2), "{took:?}");
    }
}
