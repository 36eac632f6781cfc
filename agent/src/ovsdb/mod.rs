//! A native OVSDB client (RFC 7047 JSON-RPC) for the `Open_vSwitch`
//! database, with the few operations the agent needs. No `ovs-vsctl`.
//!
//! ```no_run
//! # async fn f() -> Result<(), k8s_ovs_agent::ovsdb::OvsdbError> {
//! use std::time::Duration;
//! use k8s_ovs_agent::ovsdb::{BridgeSpec, Client, PortSpec};
//! let ovs = Client::connect("unix:/var/run/openvswitch/db.sock").await?;
//! ovs.ensure_bridge(&BridgeSpec::new("br0", "netdev"), Duration::from_secs(5)).await?;
//! let port = PortSpec::new("veth1234", "").external_id("k8s-ovs.pod", "ns/pod");
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

mod datum;
pub(crate) mod jsonrpc;
mod vswitch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;

pub use vswitch::{BridgeSpec, Change, PortInfo, PortSpec};

/// The database every operation works on.
pub const DB: &str = "Open_vSwitch";

#[derive(Debug, thiserror::Error)]
pub enum OvsdbError {
    #[error("bad OVSDB endpoint {0:?}: expected unix:<path> or tcp:<host>:<port>")]
    BadEndpoint(String),
    #[error("connect to OVSDB at {endpoint}: {source}")]
    Connect { endpoint: String, source: std::io::Error },
    #[error("OVSDB connection closed")]
    Disconnected,
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

/// A connection to ovsdb-server. Requests may be issued concurrently from
/// several tasks (`&self`); replies are matched by id.
pub struct Client {
    conn: jsonrpc::Connection,
    endpoint: String,
    next_monitor: AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `unix:<path>` or `tcp:<host>:<port>` (the notation of
    /// ovsdb-server's `--remote`).
    pub async fn connect(endpoint: &str) -> Result<Client, OvsdbError> {
        let conn_err = |source| OvsdbError::Connect { endpoint: endpoint.to_string(), source };
        let conn = if let Some(path) = endpoint.strip_prefix("unix:") {
            let s = tokio::net::UnixStream::connect(path).await.map_err(conn_err)?;
            let (r, w) = s.into_split();
            jsonrpc::Connection::start(r, w)
        } else if let Some(addr) = endpoint.strip_prefix("tcp:") {
            let s = tokio::net::TcpStream::connect(addr).await.map_err(conn_err)?;
            // Requests are small and latency-bound.
            s.set_nodelay(true).map_err(conn_err)?;
            let (r, w) = s.into_split();
            jsonrpc::Connection::start(r, w)
        } else {
            return Err(OvsdbError::BadEndpoint(endpoint.to_string()));
        };
        Ok(Client::from_connection(conn, endpoint))
    }

    fn from_connection(conn: jsonrpc::Connection, endpoint: &str) -> Client {
        Client { conn, endpoint: endpoint.to_string(), next_monitor: AtomicU64::new(0) }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Whether the server closed the connection; reconnect with [`Client::connect`].
    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    /// Runs `ops` as one atomic transaction on `Open_vSwitch`; returns one
    /// result per operation, or the first operation's error.
    pub async fn transact(&self, ops: Vec<Value>) -> Result<Vec<Value>, OvsdbError> {
        let mut params = vec![json!(DB)];
        params.extend(ops);
        let n_ops = params.len() - 1;
        let result = self.conn.call("transact", Value::Array(params)).await?;
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
    /// updates. End it with [`Monitor::cancel`].
    pub(crate) async fn monitor(&self, requests: Value) -> Result<Monitor<'_>, OvsdbError> {
        let n = self.next_monitor.fetch_add(1, Ordering::Relaxed);
        let id = json!(format!("k8s-ovs-{n}"));
        // Subscribed before the request: updates may follow the reply at once.
        let updates = self.conn.subscribe(&id)?;
        // Built before the request, so that dropping this future half-way
        // (or an error) still cancels a monitor the server may have made.
        let mut monitor = Monitor { client: self, id, initial: None, updates, cancelled: false };
        let initial = self.conn.call("monitor", json!([DB, monitor.id, requests])).await?;
        monitor.initial = Some(initial);
        Ok(monitor)
    }
}

/// A running monitor: first the initial table contents, then each update.
/// Dropped without [`Monitor::cancel`] (say, a caller's timeout dropped the
/// wait), it still cancels itself on the server.
pub(crate) struct Monitor<'a> {
    client: &'a Client,
    id: Value,
    initial: Option<Value>,
    updates: mpsc::UnboundedReceiver<Value>,
    cancelled: bool,
}

impl Drop for Monitor<'_> {
    fn drop(&mut self) {
        if !self.cancelled {
            self.client.conn.unsubscribe(&self.id);
            self.client.conn.send_detached("monitor_cancel", json!([self.id]));
        }
    }
}

impl Monitor<'_> {
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
        self.client.conn.unsubscribe(&self.id);
        if let Err(e) = self.client.conn.call("monitor_cancel", json!([self.id])).await {
            tracing::debug!(error = %e, "monitor_cancel");
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

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
                    let result = if req["method"] == "transact" { json!([]) } else { json!({}) };
                    let reply = json!({"id": req["id"], "result": result, "error": null});
                    sw.write_all(reply.to_string().as_bytes()).await.expect("write");
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
        let monitor = client.monitor(json!({"Interface": {"columns": ["name"]}})).await.expect("monitor");
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
            let mut pending = Box::pin(client.monitor(json!({})));
            // One poll sends the request; then the caller gives up.
            assert!(futures::poll!(&mut pending).is_pending());
        }
        client.transact(vec![]).await.expect("transact");
        assert_eq!(next(&mut seen).await, "monitor");
        assert_eq!(next(&mut seen).await, "monitor_cancel");
        assert_eq!(next(&mut seen).await, "transact");
    }
}
