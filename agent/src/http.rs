//! The agent's one HTTP listener (`--metrics-addr`, the node's :9190):
//! `GET /metrics` (Prometheus text), `GET /healthz` (200 once ready, else
//! 503), and two read-only operator questions that `k8s-ovs-ctl trace` asks:
//! `GET /debug/pods` (this node's pods as the switch sees them, JSON) and
//! `GET /debug/trace?flow=<flow>` (`ofproto/trace` of the bridge, text).
//!
//! The listener is on the node's address, which every pod can reach, so
//! `/debug/*` answers only a caller with the bearer token of
//! `--debug-token-file` (re-read on every request, so a rotated Secret takes
//! effect without a restart; none configured: `/debug/*` is off, 403), and
//! `/debug/trace`, which runs on ovs-vswitchd's main thread, is rate-limited
//! (429). `/metrics` and `/healthz` stay open for Prometheus and the kubelet.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    pub debug: DebugGate,
}

/// Who may use `/debug/*`, and how often `/debug/trace`.
pub struct DebugGate {
    token_file: Option<PathBuf>,
    traces: Mutex<TokenBucket>,
}

/// `/debug/trace` calls: a burst of this many, refilled at this rate.
pub const TRACE_BURST: f64 = 5.0;
pub const TRACES_PER_SEC: f64 = 2.0;

impl DebugGate {
    /// `token_file` None: `/debug/*` is disabled.
    pub fn new(token_file: Option<PathBuf>) -> DebugGate {
        DebugGate { token_file, traces: Mutex::new(TokenBucket::new(TRACE_BURST, TRACES_PER_SEC)) }
    }

    /// None when `authorization` (the header's value) carries the token;
    /// else the refusal.
    fn refuse(&self, authorization: Option<&str>) -> Option<Reply> {
        let Some(path) = &self.token_file else {
            return Some(Reply::text(
                "403 Forbidden",
                "/debug/* is disabled: the agent has no --debug-token-file (K8S_OVS_DEBUG_TOKEN_FILE)\n",
            ));
        };
        // Fail closed: an unreadable or empty file lets nobody in. A few
        // bytes from a local (Secret) file: reading it inline costs less
        // than a hop to a blocking thread.
        let token = match std::fs::read_to_string(path) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            Ok(_) => {
                return Some(Reply::text(
                    "403 Forbidden",
                    "/debug/* is disabled: the debug token file is empty\n",
                ))
            }
            Err(e) => {
                warn!(error = %e, path = %path.display(), "cannot read the debug token file");
                return Some(Reply::text(
                    "403 Forbidden",
                    "/debug/* is disabled: the debug token file cannot be read\n",
                ));
            }
        };
        match authorization.and_then(bearer) {
            Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => None,
            _ => Some(Reply {
                extra_headers: "www-authenticate: Bearer\r\n",
                ..Reply::text("401 Unauthorized", "/debug/* needs the agent's bearer token\n")
            }),
        }
    }

    fn take_trace(&self) -> bool {
        // A poisoned lock only means a panic elsewhere mid-update; the
        // bucket's numbers are still usable.
        let mut b = self.traces.lock().unwrap_or_else(|p| p.into_inner());
        b.take(Instant::now())
    }
}

/// The token of an `Authorization: Bearer <token>` value.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Equal contents, in a time that depends on the lengths only, so the
/// answer's timing tells a guesser nothing about how much of a guess was
/// right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// A token bucket: `burst` calls at once, then `rate` per second.
#[derive(Debug)]
pub struct TokenBucket {
    burst: f64,
    rate: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl TokenBucket {
    pub fn new(burst: f64, rate: f64) -> TokenBucket {
        TokenBucket { burst, rate, tokens: burst, at: None }
    }

    /// Takes one token at `now` if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(at) = self.at {
            let refill = now.saturating_duration_since(at).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Reply {
    status: &'static str,
    content_type: &'static str,
    /// Header lines, each ending in CRLF.
    extra_headers: &'static str,
    body: String,
}

impl Reply {
    fn text(status: &'static str, body: impl Into<String>) -> Reply {
        Reply { status, content_type: "text/plain; version=0.0.4", extra_headers: "", body: body.into() }
    }
}

/// The request line's target and the Authorization header of a request head.
fn parse_head(head: &str) -> (&str, Option<&str>) {
    let mut lines = head.split("\r\n");
    let target = lines.next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("/");
    let auth = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim());
    (target, auth)
}

/// Reads a request head (up to the blank line, 8 KiB, or 5 s).
async fn read_head(s: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 2048];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read).await.ok()?;
    (!buf.is_empty()).then(|| String::from_utf8_lossy(&buf).into_owned())
}

pub async fn serve(addr: SocketAddr, state: Arc<HttpState>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (mut s, _) = listener.accept().await?;
        let state = state.clone();
        tokio::spawn(async move {
            let Some(head) = read_head(&mut s).await else { return };
            let (target, auth) = parse_head(&head);
            let reply = route(target, auth, &state).await;
            let resp = format!(
                "HTTP/1.1 {}\r\ncontent-type: {}\r\ncontent-length: {}\r\n{}connection: close\r\n\r\n{}",
                reply.status,
                reply.content_type,
                reply.body.len(),
                reply.extra_headers,
                reply.body
            );
            if let Err(e) = s.write_all(resp.as_bytes()).await {
                warn!(error = %e, "http write failed");
            }
        });
    }
}

async fn route(target: &str, auth: Option<&str>, state: &HttpState) -> Reply {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/metrics" => Reply::text("200 OK", state.metrics.render()),
        "/healthz" if state.metrics.ready.load(Ordering::Relaxed) => Reply::text("200 OK", "ok\n"),
        "/healthz" => Reply::text("503 Service Unavailable", "not ready\n"),
        p if p == "/debug" || p.starts_with("/debug/") => {
            if let Some(refused) = state.debug.refuse(auth) {
                return refused;
            }
            match p {
                "/debug/pods" => pods(state).await,
                // After the token check: unauthenticated callers cost no
                // token, so they cannot starve an operator's trace.
                "/debug/trace" if !state.debug.take_trace() => Reply::text(
                    "429 Too Many Requests",
                    format!(
                        "at most {TRACES_PER_SEC} traces per second (bursts of {TRACE_BURST}); try again\n"
                    ),
                ),
                "/debug/trace" => trace(query, state).await,
                _ => Reply::text("404 Not Found", "not found\n"),
            }
        }
        _ => Reply::text("404 Not Found", "not found\n"),
    }
}

async fn pods(state: &HttpState) -> Reply {
    let (tx, rx) = oneshot::channel();
    // A send that fails drops `tx`, so `rx` ends at once: "not serving".
    let _ = state.pods.send(tx).await;
    match tokio::time::timeout(Duration::from_secs(5), rx).await {
        Ok(Ok(pods)) => match serde_json::to_string(&pods) {
            Ok(body) => Reply { status: "200 OK", content_type: "application/json", extra_headers: "", body },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_by_content_and_length() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cret", b"s3cre"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn the_head_gives_target_and_bearer_token() {
        let (t, a) = parse_head("GET /debug/pods HTTP/1.1\r\nHost: x\r\nauthorization:  Bearer abc \r\n\r\n");
        assert_eq!((t, a.and_then(bearer)), ("/debug/pods", Some("abc")));
        let (t, a) = parse_head("GET /metrics HTTP/1.0\r\n\r\nAuthorization: Bearer body");
        assert_eq!((t, a), ("/metrics", None), "headers end at the blank line");
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("bearer abc"), Some("abc"));
    }

    #[test]
    fn the_trace_bucket_allows_a_burst_then_its_rate() {
        let mut b = TokenBucket::new(3.0, 2.0);
        let t0 = Instant::now();
        assert!((0..3).all(|_| b.take(t0)), "the burst");
        assert!(!b.take(t0), "beyond the burst");
        assert!(!b.take(t0 + Duration::from_millis(400)), "0.8 of a token after 400 ms");
        assert!(b.take(t0 + Duration::from_millis(600)), "a token after 500 ms");
        assert!(!b.take(t0 + Duration::from_millis(600)));
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| b.take(later)).count(), 3);
    }

    fn state(token_file: Option<PathBuf>) -> HttpState {
        let (pods, _) = mpsc::channel(1);
        HttpState {
            metrics: Arc::new(Metrics::default()),
            pods,
            ovs_rundir: PathBuf::from("/nonexistent"),
            bridge: "br0".into(),
            debug: DebugGate::new(token_file),
        }
    }

    #[tokio::test]
    async fn debug_needs_the_token_metrics_and_healthz_do_not() {
        let dir = std::env::temp_dir().join(format!("k8s-ovs-http-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let file = dir.join("token");
        std::fs::write(&file, "s3cret\n").expect("token file");

        let off = state(None);
        let r = route("/debug/pods", Some("Bearer s3cret"), &off).await;
        assert!(r.status.starts_with("403") && r.body.contains("--debug-token-file"), "{}", r.body);

        let on = state(Some(file.clone()));
        for auth in [None, Some("Bearer wrong"), Some("Basic s3cret"), Some("Bearer s3cre")] {
            for path in ["/debug/pods", "/debug/trace?flow=in_port=1", "/debug", "/debug/x"] {
                let r = route(path, auth, &on).await;
                assert!(r.status.starts_with("401"), "{path} {auth:?}: {}", r.status);
                assert!(r.extra_headers.contains("www-authenticate"));
            }
        }
        assert!(route("/metrics", None, &on).await.status.starts_with("200"));
        assert!(route("/healthz", None, &on).await.status.starts_with("503"), "not ready yet, but answered");
        // The right token passes the gate (the loop is not there: 503).
        let r = route("/debug/pods", Some("Bearer s3cret"), &on).await;
        assert!(r.status.starts_with("503"), "{}", r.status);
        // Traces beyond the burst are refused before ovs-vswitchd is asked
        // (here it is absent: 502 while allowed).
        let codes: Vec<&str> = {
            let mut v = Vec::new();
            for _ in 0..(TRACE_BURST as usize + 3) {
                v.push(route("/debug/trace?flow=in_port=1", Some("Bearer s3cret"), &on).await.status);
            }
            v
        };
        assert!(codes[..TRACE_BURST as usize].iter().all(|c| c.starts_with("502")), "{codes:?}");
        assert!(codes[TRACE_BURST as usize..].iter().all(|c| c.starts_with("429")), "{codes:?}");
        // An emptied (or vanished) file locks everyone out.
        std::fs::write(&file, "").expect("empty token file");
        assert!(route("/debug/pods", Some("Bearer "), &on).await.status.starts_with("403"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert!(route("/debug/pods", Some("Bearer s3cret"), &on).await.status.starts_with("403"));
    }
}
