//! JSON-RPC 1.0 over a stream socket, as OVSDB speaks it (RFC 7047 section 4).
//!
//! Messages are concatenated JSON objects with no framing, so the reader
//! keeps a byte buffer and takes complete values off its front
//! ([`Framer`]). One reader task per connection dispatches what arrives:
//! replies go to the request waiting on that id (several may be in flight),
//! `update` notifications to the monitor registered under their monitor id
//! (they may arrive before the reply of the transaction that caused them),
//! and the server's `echo` keep-alive is answered at once.
//!
//! Everything sent goes through one writer task in order, so a message can
//! be queued without waiting (a `Drop` can cancel a monitor, and the cancel
//! reaches the server before any later request).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use super::OvsdbError;

/// Splits a byte stream into complete JSON values.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    /// Appends bytes and returns every value now complete; an incomplete
    /// trailing value stays buffered for the next call.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Value>, OvsdbError> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut stream = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
        let mut consumed = 0;
        loop {
            match stream.next() {
                Some(Ok(v)) => {
                    consumed = stream.byte_offset();
                    out.push(v);
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => {
                    return Err(OvsdbError::Protocol(format!("malformed JSON from the server: {e}")))
                }
                None => {
                    // Only whitespace is left.
                    consumed = self.buf.len();
                    break;
                }
            }
        }
        self.buf.drain(..consumed);
        Ok(out)
    }
}

type Reply = Result<Value, OvsdbError>;

/// How a [`Connection::request`] failed.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The connection was closed before the request was queued: the server
    /// never saw it, so it may be sent again elsewhere.
    NotSent,
    /// Anything else, [`OvsdbError::Disconnected`] included: the request may
    /// have reached the server (and a transaction may have committed).
    Failed(OvsdbError),
}

#[derive(Default)]
struct Routes {
    pending: HashMap<u64, oneshot::Sender<Reply>>,
    /// Keyed by the monitor id's JSON text.
    monitors: HashMap<String, mpsc::UnboundedSender<Value>>,
    closed: bool,
}

struct Shared {
    /// Encoded messages for the writer task.
    outbox: mpsc::UnboundedSender<Vec<u8>>,
    routes: Mutex<Routes>,
    next_id: AtomicU64,
}

impl Shared {
    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        // Routes are plain maps updated in single statements: a panic
        // elsewhere cannot leave them inconsistent.
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a message for the writer task.
    fn send(&self, msg: &Value) -> Result<(), OvsdbError> {
        let mut bytes = serde_json::to_vec(msg).map_err(|e| OvsdbError::Protocol(e.to_string()))?;
        bytes.push(b'\n');
        self.outbox.send(bytes).map_err(|_| OvsdbError::Disconnected)
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Fails every waiter: the connection is gone.
    fn close(&self) {
        let mut r = self.routes();
        r.closed = true;
        for (_, tx) in r.pending.drain() {
            let _ = tx.send(Err(OvsdbError::Disconnected));
        }
        r.monitors.clear();
    }
}

/// One JSON-RPC connection. Dropping it stops its reader and writer tasks.
pub struct Connection {
    shared: Arc<Shared>,
    reader: AbortHandle,
    writer: AbortHandle,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
        self.shared.close();
    }
}

impl Connection {
    /// Starts the reader and writer tasks (must run inside a tokio runtime).
    pub fn start<R, W>(read: R, write: W) -> Connection
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let (outbox, queued) = mpsc::unbounded_channel();
        let shared =
            Arc::new(Shared { outbox, routes: Mutex::new(Routes::default()), next_id: AtomicU64::new(1) });
        let reader = tokio::spawn(read_loop(read, Arc::clone(&shared)));
        let writer = tokio::spawn(write_loop(write, queued, Arc::clone(&shared)));
        Connection { shared, reader: reader.abort_handle(), writer: writer.abort_handle() }
    }

    /// Whether the server closed the connection (or it failed).
    pub fn is_closed(&self) -> bool {
        self.shared.routes().closed
    }

    /// Sends a request and waits for its reply's `result`.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, OvsdbError> {
        self.request(method, params).await.map_err(|e| match e {
            CallError::NotSent => OvsdbError::Disconnected,
            CallError::Failed(e) => e,
        })
    }

    /// [`Connection::call`], telling apart a request the server cannot have
    /// seen (the connection was already closed) from one that failed after
    /// it was queued: a lost connection then leaves its fate unknown.
    pub(crate) async fn request(&self, method: &str, params: Value) -> Result<Value, CallError> {
        let id = self.shared.next_id();
        let (tx, rx) = oneshot::channel();
        {
            let mut r = self.shared.routes();
            if r.closed {
                return Err(CallError::NotSent);
            }
            r.pending.insert(id, tx);
        }
        let msg = json!({"method": method, "params": params, "id": id});
        if let Err(e) = self.shared.send(&msg) {
            self.shared.routes().pending.remove(&id);
            // Not queued: either unencodable, or the writer is gone.
            return Err(match e {
                OvsdbError::Disconnected => CallError::NotSent,
                e => CallError::Failed(e),
            });
        }
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(OvsdbError::Rpc { error, .. })) => {
                Err(CallError::Failed(OvsdbError::Rpc { method: method.to_string(), error }))
            }
            Ok(Err(e)) => Err(CallError::Failed(e)),
            Err(_) => Err(CallError::Failed(OvsdbError::Disconnected)),
        }
    }

    /// Registers a receiver for `update` notifications of `monitor_id`.
    /// Call before sending the `monitor` request so no update is missed.
    pub fn subscribe(&self, monitor_id: &Value) -> Result<mpsc::UnboundedReceiver<Value>, OvsdbError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut r = self.shared.routes();
        if r.closed {
            return Err(OvsdbError::Disconnected);
        }
        r.monitors.insert(monitor_id.to_string(), tx);
        Ok(rx)
    }

    pub fn unsubscribe(&self, monitor_id: &Value) {
        self.shared.routes().monitors.remove(&monitor_id.to_string());
    }

    /// Queues a request whose reply nobody waits for (clean-up from `Drop`);
    /// it still reaches the server before any request made after it.
    pub fn send_detached(&self, method: &str, params: Value) {
        let msg = json!({"method": method, "params": params, "id": self.shared.next_id()});
        if let Err(e) = self.shared.send(&msg) {
            tracing::debug!(error = %e, method, "detached request not sent");
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut write: W,
    mut queued: mpsc::UnboundedReceiver<Vec<u8>>,
    shared: Arc<Shared>,
) {
    while let Some(bytes) = queued.recv().await {
        let written = async {
            write.write_all(&bytes).await?;
            write.flush().await
        };
        if let Err(e) = written.await {
            // A stream that failed a write is unusable: fail every waiter.
            tracing::warn!(error = %e, "ovsdb connection write failed");
            shared.close();
            return;
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(mut read: R, shared: Arc<Shared>) {
    let mut framer = Framer::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match read.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "ovsdb connection read failed");
                break;
            }
        };
        let values = match framer.push(&buf[..n]) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "ovsdb connection closed");
                break;
            }
        };
        for v in values {
            if let Err(e) = dispatch(&shared, v) {
                tracing::warn!(error = %e, "ovsdb connection closed");
                shared.close();
                return;
            }
        }
    }
    shared.close();
}

fn dispatch(shared: &Shared, msg: Value) -> Result<(), OvsdbError> {
    match msg.get("method").and_then(Value::as_str) {
        Some("echo") => {
            let reply = json!({"id": msg.get("id"), "result": msg.get("params"), "error": null});
            shared.send(&reply)
        }
        Some("update") => {
            let params = msg.get("params").and_then(Value::as_array);
            if let Some([monitor_id, updates]) = params.map(Vec::as_slice) {
                let r = shared.routes();
                if let Some(tx) = r.monitors.get(&monitor_id.to_string()) {
                    let _ = tx.send(updates.clone());
                }
            }
            Ok(())
        }
        // Other notifications (locked, stolen, update2, ...) are not used.
        Some(_) => Ok(()),
        None => {
            let Some(id) = msg.get("id").and_then(Value::as_u64) else {
                return Err(OvsdbError::Protocol(format!("reply without a numeric id: {msg}")));
            };
            let Some(tx) = shared.routes().pending.remove(&id) else {
                tracing::debug!(id, "reply to a request nobody waits for");
                return Ok(());
            };
            let reply = match msg.get("error") {
                Some(e) if !e.is_null() => Err(OvsdbError::Rpc { method: String::new(), error: e.clone() }),
                _ => Ok(msg.get("result").cloned().unwrap_or(Value::Null)),
            };
            let _ = tx.send(reply);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framer_splits_concatenated_values_and_keeps_partial_ones() {
        let mut f = Framer::default();
        let whole = br#"{"id":1,"result":[]}{"method":"echo","params":[],"id":"e"}  {"id":2,"res"#;
        let got = f.push(whole).expect("values");
        assert_eq!(got.len(), 2);
        assert_eq!(got[1]["method"], "echo");
        assert!(f.push(b"ult\":{\"a\":\"}{\"}").expect("still partial").is_empty());
        let got = f.push(b",\"error\":null}\n").expect("complete");
        assert_eq!(got, [json!({"id": 2, "result": {"a": "}{"}, "error": null})]);
        assert!(f.buf.is_empty());
    }

    #[test]
    fn framer_rejects_garbage() {
        let mut f = Framer::default();
        assert!(matches!(f.push(b"{\"id\":1} ]"), Err(OvsdbError::Protocol(_))));
    }

    /// A scripted server on an in-memory pipe: it sends an `echo` and an
    /// `update` before the reply, and checks the echo is answered.
    #[tokio::test]
    async fn replies_are_matched_by_id_and_echo_is_answered() {
        let (client_side, server_side) = tokio::io::duplex(4096);
        let (cr, cw) = tokio::io::split(client_side);
        let conn = Connection::start(cr, cw);
        let mon_id = json!("m1");
        let mut updates = conn.subscribe(&mon_id).expect("subscribe");
        let server = tokio::spawn(async move {
            let (mut sr, mut sw) = tokio::io::split(server_side);
            let mut framer = Framer::default();
            let mut buf = vec![0u8; 4096];
            let mut requests = Vec::new();
            while requests.len() < 2 {
                let n = sr.read(&mut buf).await.expect("read");
                requests.extend(framer.push(&buf[..n]).expect("json"));
            }
            // Answer the second request first, with noise in between.
            let (a, b) = (&requests[0], &requests[1]);
            let out = format!(
                "{}{}{}{}",
                json!({"method": "echo", "params": ["ping"], "id": "echo-1"}),
                json!({"method": "update", "params": ["m1", {"T": {}}], "id": null}),
                json!({"id": b["id"], "result": b["params"], "error": null}),
                json!({"id": a["id"], "result": null, "error": {"error": "nope"}}),
            );
            sw.write_all(out.as_bytes()).await.expect("write");
            let mut echo_reply = Vec::new();
            while echo_reply.is_empty() {
                let n = sr.read(&mut buf).await.expect("read");
                echo_reply = framer.push(&buf[..n]).expect("json");
            }
            echo_reply.remove(0)
        });
        let (ra, rb) = tokio::join!(conn.call("first", json!([1])), conn.call("second", json!([2])));
        assert_eq!(rb.expect("second"), json!([2]));
        match ra {
            Err(OvsdbError::Rpc { method, error }) => {
                assert_eq!(method, "first");
                assert_eq!(error["error"], "nope");
            }
            other => panic!("expected an rpc error, got {other:?}"),
        }
        assert_eq!(updates.recv().await, Some(json!({"T": {}})));
        let echo = server.await.expect("server");
        assert_eq!(echo, json!({"id": "echo-1", "result": ["ping"], "error": null}));
    }

    #[tokio::test]
    async fn waiters_fail_when_the_server_goes_away() {
        let (client_side, server_side) = tokio::io::duplex(4096);
        let (cr, cw) = tokio::io::split(client_side);
        let conn = Connection::start(cr, cw);
        drop(server_side);
        let err = conn.call("x", json!([])).await.expect_err("disconnected");
        assert!(matches!(err, OvsdbError::Disconnected), "{err:?}");
        assert!(conn.is_closed());
        // Once closed is known, a request is refused before it is queued.
        let refused = conn.request("y", json!([])).await.expect_err("closed");
        assert!(matches!(refused, CallError::NotSent), "{refused:?}");
    }
}
