//! The agent's one HTTP listener (`--metrics-addr`, the node's :9190):
//! `GET /metrics` (Prometheus text), `GET /healthz` (200 once ready, else
//! 503), and two read-only operator questions that `k8s-ovs-ctl trace` asks:
//! `GET /debug/pods` (this node's pods as the switch sees them, JSON) and
//! `GET /debug/trace?flow=<flow>` (`ofproto/trace` of the bridge, text).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ovs_flows::trace::{is_probe_text, NodePods};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::metrics::Metrics;
use crate::unixctl;

/// A request for the pods, answered by the agent loop (it owns them).
pub type PodsRequest = oneshot::Sender<NodePods>;

pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub pods: mpsc::Sender<PodsRequest>,
    pub ovs_rundir: PathBuf,
    pub bridge: String,
}

struct Reply {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

impl Reply {
    fn text(status: &'static str, body: impl Into<String>) -> Reply {
        Reply { status, content_type: "text/plain; version=0.0.4", body: body.into() }
    }
}

pub async fn serve(addr: SocketAddr, state: Arc<HttpState>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (mut s, _) = listener.accept().await?;
        let state = state.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n = match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let req = String::from_utf8_lossy(&buf[..n]);
            let target = req.split_whitespace().nth(1).unwrap_or("/");
            let reply = route(target, &state).await;
            let resp = format!(
                "HTTP/1.1 {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                reply.status,
                reply.content_type,
                reply.body.len(),
                reply.body
            );
            if let Err(e) = s.write_all(resp.as_bytes()).await {
                warn!(error = %e, "http write failed");
            }
        });
    }
}

async fn route(target: &str, state: &HttpState) -> Reply {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/metrics" => Reply::text("200 OK", state.metrics.render()),
        "/healthz" if state.metrics.ready.load(Ordering::Relaxed) => Reply::text("200 OK", "ok\n"),
        "/healthz" => Reply::text("503 Service Unavailable", "not ready\n"),
        "/debug/pods" => pods(state).await,
        "/debug/trace" => trace(query, state).await,
        _ => Reply::text("404 Not Found", "not found\n"),
    }
}

async fn pods(state: &HttpState) -> Reply {
    let (tx, rx) = oneshot::channel();
    // A send that fails drops `tx`, so `rx` ends at once: "not serving".
    let _ = state.pods.send(tx).await;
    match tokio::time::timeout(Duration::from_secs(5), rx).await {
        Ok(Ok(pods)) => match serde_json::to_string(&pods) {
            Ok(body) => Reply { status: "200 OK", content_type: "application/json", body },
            Err(e) => Reply::text("500 Internal Server Error", format!("{e}\n")),
        },
        _ => Reply::text("503 Service Unavailable", "the agent is not serving yet\n"),
    }
}

async fn trace(query: &str, state: &HttpState) -> Reply {
    let flow = query.split('&').find_map(|kv| kv.strip_prefix("flow="));
    let Some(flow) = flow.filter(|f| is_probe_text(f)) else {
        return Reply::text(
            "400 Bad Request",
            "expected ?flow=<field=value,...> (ofproto/trace's flow syntax)\n",
        );
    };
    let args = [state.bridge.as_str(), flow];
    match unixctl::call(&state.ovs_rundir, "ovs-vswitchd", "ofproto/trace", &args, Duration::from_secs(10))
        .await
    {
        Ok(text) => Reply::text("200 OK", text),
        Err(e) => Reply::text("502 Bad Gateway", format!("{e}\n")),
    }
}
