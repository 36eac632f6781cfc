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
//! (429). `/metrics` and `/healthz` stay open for Prometheus and the kubelet,
//! but the tenant series of `/metrics` (namespaces, their traffic, their
//! refusals, forging pods: what one tenant must not learn of another) go
//! only to a caller with the token of `--metrics-token-file`; anyone else
//! gets the node's own series.
//!
//! axum routes, hyper speaks HTTP/1.x (keep-alive; a request head must come
//! within `HEAD_TIMEOUT`); the listener stops when the agent's run ends.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{RawQuery, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use ovs_flows::trace::{is_probe_text, NodePods};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, warn};

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
    /// Who gets the tenant series of `/metrics`.
    pub metrics_token: TokenFile,
}

/// A bearer token kept in a file (a mounted Secret), re-read on every
/// request, so a rotated Secret takes effect without a restart.
pub struct TokenFile {
    path: Option<PathBuf>,
    /// The flag that names the file, for refusals.
    flag: &'static str,
}

/// What a request's `Authorization` is worth against a [`TokenFile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    /// No token can be valid: no file configured, or it is empty or
    /// unreadable (fail closed). Why, for the caller.
    Off(&'static str),
    /// A token is configured and the request does not carry it.
    Wrong,
    Valid,
}

impl TokenFile {
    pub fn new(path: Option<PathBuf>, flag: &'static str) -> TokenFile {
        TokenFile { path, flag }
    }

    /// Checks `authorization` (the header's value).
    pub fn check(&self, authorization: Option<&str>) -> TokenCheck {
        let Some(path) = &self.path else { return TokenCheck::Off("no token file is configured") };
        // A few bytes from a local (Secret) file: reading it inline costs
        // less than a hop to a blocking thread.
        let token = match std::fs::read_to_string(path) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            Ok(_) => return TokenCheck::Off("the token file is empty"),
            Err(e) => {
                warn!(error = %e, path = %path.display(), flag = self.flag, "cannot read the token file");
                return TokenCheck::Off("the token file cannot be read");
            }
        };
        match authorization.and_then(bearer) {
            Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => TokenCheck::Valid,
            _ => TokenCheck::Wrong,
        }
    }
}

/// Who may use `/debug/*`, and how often `/debug/trace`.
pub struct DebugGate {
    token: TokenFile,
    traces: Mutex<TokenBucket>,
}

/// `/debug/trace` calls: a burst of this many, refilled at this rate.
pub const TRACE_BURST: f64 = 5.0;
pub const TRACES_PER_SEC: f64 = 2.0;

impl DebugGate {
    /// `token_file` None: `/debug/*` is disabled.
    pub fn new(token_file: Option<PathBuf>) -> DebugGate {
        DebugGate {
            token: TokenFile::new(token_file, "--debug-token-file"),
            traces: Mutex::new(TokenBucket::new(TRACE_BURST, TRACES_PER_SEC)),
        }
    }

    /// None when `authorization` (the header's value) carries the token;
    /// else the refusal.
    fn refuse(&self, authorization: Option<&str>) -> Option<Response> {
        match self.token.check(authorization) {
            TokenCheck::Valid => None,
            TokenCheck::Off(why) => Some(text(
                StatusCode::FORBIDDEN,
                format!("/debug/* is disabled: {why} (--debug-token-file, K8S_OVS_DEBUG_TOKEN_FILE)\n"),
            )),
            TokenCheck::Wrong => Some(unauthorized("/debug/* needs the agent's bearer token\n")),
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

/// The content type of every text answer (the Prometheus text format's, as
/// `/metrics` needs; the others are plain lines).
const TEXT: &str = "text/plain; version=0.0.4";

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(CONTENT_TYPE, TEXT)], body.into()).into_response()
}

fn unauthorized(body: &'static str) -> Response {
    (StatusCode::UNAUTHORIZED, [(CONTENT_TYPE, TEXT), (WWW_AUTHENTICATE, "Bearer")], body).into_response()
}

/// How long a connection may take to send a request head, and how long an
/// idle kept-alive one stays open: the listener is reachable from every pod,
/// which must not be able to hold its connections (and the agent's file
/// descriptors) for free.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// The routes. `/debug/*` sits behind the token gate as a whole, so a route
/// added there cannot miss it, and an unknown `/debug/` path is refused
/// like a known one: the refusal tells a caller nothing about what exists.
pub fn router(state: Arc<HttpState>) -> Router {
    // Any method on /debug/*: the gate answers before anything is told about
    // the route (a 405 would say it exists). All of them are reads.
    let debug = Router::new()
        .route("/debug/pods", any(pods))
        .route("/debug/trace", any(trace))
        .route("/debug", any(not_found))
        .route("/debug/", any(not_found))
        .route("/debug/{*rest}", any(not_found))
        .route_layer(middleware::from_fn_with_state(state.clone(), gate));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .merge(debug)
        .fallback(not_found)
        .with_state(state)
}

/// Binds `addr` and answers on it until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<HttpState>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    serve_on(listener, router(state), shutdown).await;
    Ok(())
}

/// The accept loop: HTTP/1.1 (keep-alive; HTTP/1.0 too) by hyper, one task
/// per connection. axum's own `serve` would do, but it cannot bound the time
/// a request head may take.
async fn serve_on(listener: TcpListener, router: Router, shutdown: impl Future<Output = ()>) {
    // Dropped when this returns: each open connection then finishes the
    // request it is answering and closes.
    let (_closing, closing_rx) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Mostly out of file descriptors: that passes as
                    // connections close, so wait rather than stop serving.
                    warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let service = TowerToHyperService::new(router.clone());
        let mut closing = closing_rx.clone();
        tokio::spawn(async move {
            let mut builder = http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(HEAD_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => r,
                _ = closing.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            // A caller that went away or sent no head in time: its loss.
            if let Err(e) = ended {
                debug!(error = %e, "http connection ended");
            }
        });
    }
}

/// Lets a request on to `/debug/*` only with the debug token.
async fn gate(State(state): State<Arc<HttpState>>, req: Request, next: Next) -> Response {
    let auth = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Some(refused) = state.debug.refuse(auth) {
        return refused;
    }
    next.run(req).await
}

async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "not found\n")
}

/// The node's series to anyone; the tenant series too to a caller with the
/// metrics token. A token that is not the agent's is refused (401), so a
/// misconfigured Prometheus sees an error rather than series missing.
async fn metrics(State(state): State<Arc<HttpState>>, headers: axum::http::HeaderMap) -> Response {
    let auth = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    let tenants = match state.metrics_token.check(auth) {
        TokenCheck::Valid => true,
        TokenCheck::Wrong if auth.is_some() => {
            return unauthorized("/metrics: not the agent's metrics token (--metrics-token-file)\n")
        }
        TokenCheck::Wrong | TokenCheck::Off(_) => false,
    };
    text(StatusCode::OK, state.metrics.render(tenants))
}

async fn healthz(State(state): State<Arc<HttpState>>) -> Response {
    if state.metrics.ready.load(Ordering::Relaxed) {
        text(StatusCode::OK, "ok\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn pods(State(state): State<Arc<HttpState>>) -> Response {
    let (tx, rx) = oneshot::channel();
    // A send that fails drops `tx`, so `rx` ends at once: "not serving".
    let _ = state.pods.send(tx).await;
    match tokio::time::timeout(Duration::from_secs(5), rx).await {
        Ok(Ok(pods)) => match serde_json::to_string(&pods) {
            Ok(body) => (StatusCode::OK, [(CONTENT_TYPE, "application/json")], body).into_response(),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        },
        _ => text(StatusCode::SERVICE_UNAVAILABLE, "the agent is not serving yet\n"),
    }
}

async fn trace(State(state): State<Arc<HttpState>>, RawQuery(query): RawQuery) -> Response {
    // After the token gate: unauthenticated callers cost no token, so they
    // cannot starve an operator's trace.
    if !state.debug.take_trace() {
        return text(
            StatusCode::TOO_MANY_REQUESTS,
            format!("at most {TRACES_PER_SEC} traces per second (bursts of {TRACE_BURST}); try again\n"),
        );
    }
    // The raw query, not decoded: ofproto/trace's flow syntax as sent
    // (`k8s-ovs-ctl trace` does not percent-encode it).
    let query = query.unwrap_or_default();
    let flow = query.split('&').find_map(|kv| kv.strip_prefix("flow="));
    let Some(flow) = flow.filter(|f| is_probe_text(f)) else {
        return text(
            StatusCode::BAD_REQUEST,
            "expected ?flow=<field=value,...> (ofproto/trace's flow syntax)\n",
        );
    };
    let args = [state.bridge.as_str(), flow];
    match unixctl::call(&state.ovs_rundir, "ovs-vswitchd", "ofproto/trace", &args, Duration::from_secs(10))
        .await
    {
        Ok(out) => text(StatusCode::OK, out),
        Err(e) => text(StatusCode::BAD_GATEWAY, format!("{e}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::HeaderMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tower::ServiceExt;

    #[test]
    fn tokens_compare_by_content_and_length() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cret", b"s3cre"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn the_bearer_token_of_an_authorization_value() {
        assert_eq!(bearer(" Bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("Bearer"), None);
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

    fn state(token_file: Option<PathBuf>) -> Arc<HttpState> {
        with_metrics_token(token_file, None)
    }

    fn with_metrics_token(debug: Option<PathBuf>, metrics: Option<PathBuf>) -> Arc<HttpState> {
        let (pods, _) = mpsc::channel(1);
        Arc::new(HttpState {
            metrics: Arc::new(Metrics::default()),
            pods,
            ovs_rundir: PathBuf::from("/nonexistent"),
            bridge: "br0".into(),
            debug: DebugGate::new(debug),
            metrics_token: TokenFile::new(metrics, "--metrics-token-file"),
        })
    }

    struct Answer {
        status: StatusCode,
        headers: HeaderMap,
        body: String,
    }

    /// `method target` with `authorization` through the router, as hyper
    /// would hand it over.
    async fn ask(state: &Arc<HttpState>, method: &str, target: &str, authorization: Option<&str>) -> Answer {
        let mut req = Request::builder().method(method).uri(target);
        if let Some(a) = authorization {
            req = req.header(AUTHORIZATION, a);
        }
        let req = req.body(Body::empty()).expect("request");
        let resp = router(state.clone()).oneshot(req).await.expect("infallible");
        let (parts, body) = resp.into_parts();
        let body = axum::body::to_bytes(body, 1 << 20).await.expect("body");
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    async fn route(target: &str, auth: Option<&str>, state: &Arc<HttpState>) -> Answer {
        ask(state, "GET", target, auth).await
    }

    /// A token file holding `token`, in a directory of this test's own.
    fn token_file(test: &str, token: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("k8s-ovs-http-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let file = dir.join("token");
        std::fs::write(&file, token).expect("token file");
        (dir, file)
    }

    #[tokio::test]
    async fn debug_needs_the_token_metrics_and_healthz_do_not() {
        let (dir, file) = token_file("gate", "s3cret\n");

        let off = state(None);
        let r = route("/debug/pods", Some("Bearer s3cret"), &off).await;
        assert!(r.status == StatusCode::FORBIDDEN && r.body.contains("--debug-token-file"), "{}", r.body);

        let on = state(Some(file.clone()));
        for auth in [None, Some("Bearer wrong"), Some("Basic s3cret"), Some("Bearer s3cre")] {
            for path in
                ["/debug/pods", "/debug/trace?flow=in_port=1", "/debug", "/debug/", "/debug/x", "/debug/x/y"]
            {
                for method in ["GET", "POST", "HEAD"] {
                    let r = ask(&on, method, path, auth).await;
                    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {path} {auth:?}");
                    assert_eq!(r.headers.get(WWW_AUTHENTICATE).map(|v| v.as_bytes()), Some(&b"Bearer"[..]));
                }
            }
        }
        let m = route("/metrics", None, &on).await;
        assert_eq!(m.status, StatusCode::OK);
        assert_eq!(m.headers.get(CONTENT_TYPE).map(|v| v.as_bytes()), Some(TEXT.as_bytes()));
        assert!(m.body.contains("k8s_ovs_ready 0"), "{}", m.body);
        assert_eq!(
            route("/healthz", None, &on).await.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready yet"
        );
        on.metrics.ready.store(true, Ordering::Relaxed);
        assert_eq!(route("/healthz", None, &on).await.body, "ok\n");
        let r = route("/nope", None, &on).await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::NOT_FOUND, "not found\n"));
        // The right token passes the gate (the loop is not there: 503);
        // an unknown /debug path is then simply not found.
        let r = route("/debug/pods", Some("Bearer s3cret"), &on).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
        assert_eq!(route("/debug/x", Some("bearer s3cret"), &on).await.status, StatusCode::NOT_FOUND);
        // Traces beyond the burst are refused before ovs-vswitchd is asked
        // (here it is absent: 502 while allowed).
        let mut codes = Vec::new();
        for _ in 0..(TRACE_BURST as usize + 3) {
            codes.push(route("/debug/trace?flow=in_port=1", Some("Bearer s3cret"), &on).await.status);
        }
        assert!(codes[..TRACE_BURST as usize].iter().all(|c| *c == StatusCode::BAD_GATEWAY), "{codes:?}");
        assert!(
            codes[TRACE_BURST as usize..].iter().all(|c| *c == StatusCode::TOO_MANY_REQUESTS),
            "{codes:?}"
        );
        // An emptied (or vanished) file locks everyone out.
        std::fs::write(&file, "").expect("empty token file");
        assert_eq!(route("/debug/pods", Some("Bearer "), &on).await.status, StatusCode::FORBIDDEN);
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert_eq!(route("/debug/pods", Some("Bearer s3cret"), &on).await.status, StatusCode::FORBIDDEN);
    }

    /// What one tenant must not learn of another (namespaces, their traffic
    /// and refusals, forging pods) goes only to the metrics token's holder;
    /// every other caller, a pod among them, gets the node's own series.
    #[tokio::test]
    async fn tenant_series_need_the_metrics_token() {
        let (dir, file) = token_file("metrics", "m3trics\n");
        let (_, debug) = token_file("metrics-debug", "d3bug\n");
        let tenant_line = "k8s_ovs_namespace_refused_packets_total{namespace=\"blue\",vni=\"10\"} 5";
        let fill = |s: &Arc<HttpState>| {
            let mut t = s.metrics.traffic.lock().expect("lock");
            t.insert(
                crate::traffic::Series::Refused { namespace: "blue".into(), vni: 10 },
                crate::traffic::Count { packets: 5, bytes: 490 },
            );
        };
        let on = with_metrics_token(Some(debug.clone()), Some(file.clone()));
        fill(&on);
        let full = route("/metrics", Some("Bearer m3trics"), &on).await;
        assert_eq!(full.status, StatusCode::OK);
        assert!(full.body.contains(tenant_line), "{}", full.body);
        let r = route("/metrics", None, &on).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.body.contains("k8s_ovs_ready 0"), "the node's series: {}", r.body);
        assert!(!r.body.contains("namespace=") && !r.body.contains("k8s_ovs_vni_"), "{}", r.body);
        // A token that is not the metrics token (the debug one among them)
        // is refused, so a misconfigured scraper sees it.
        for auth in ["Bearer wrong", "Bearer d3bug", "Bearer ", "Basic m3trics"] {
            let r = route("/metrics", Some(auth), &on).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{auth}: {}", r.body);
            assert!(!r.body.contains("namespace="));
        }
        // No metrics token configured (or its file emptied): nobody gets them.
        let off = with_metrics_token(None, None);
        fill(&off);
        let r = route("/metrics", Some("Bearer m3trics"), &off).await;
        assert!(r.status == StatusCode::OK && !r.body.contains("namespace="), "{}", r.body);
        std::fs::write(&file, "").expect("empty token file");
        let r = route("/metrics", Some("Bearer m3trics"), &on).await;
        assert!(r.status == StatusCode::OK && !r.body.contains("namespace="), "{}", r.body);
        std::fs::remove_dir_all(&dir).expect("cleanup");
        std::fs::remove_dir_all(debug.parent().expect("dir")).expect("cleanup");
    }

    #[tokio::test]
    async fn a_trace_needs_a_flow() {
        let (dir, file) = token_file("flow", "t\n");
        let on = state(Some(file));
        for target in
            ["/debug/trace", "/debug/trace?x=1", "/debug/trace?flow=", "/debug/trace?a=b&flow=in_port=1"]
        {
            let r = route(target, Some("Bearer t"), &on).await;
            let want =
                if target.ends_with("in_port=1") { StatusCode::BAD_GATEWAY } else { StatusCode::BAD_REQUEST };
            assert_eq!(r.status, want, "{target}: {}", r.body);
        }
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// A listener on a loopback port of its own, stopped when the returned
    /// sender drops.
    async fn listen(state: Arc<HttpState>) -> (SocketAddr, oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve_on(listener, router(state), async {
            let _ = stopped.await;
        }));
        (addr, stop)
    }

    /// Writes `parts` one TCP segment each (no Nagle, a pause between), then
    /// reads one response: its head and body.
    async fn exchange(s: &mut tokio::net::TcpStream, parts: &[&str]) -> (String, String) {
        for part in parts {
            s.write_all(part.as_bytes()).await.expect("write");
            s.flush().await.expect("flush");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                    })
                    .and_then(|v| v.parse::<usize>().ok())
                    .expect("content-length");
                if body.len() >= len {
                    return (head.to_string(), body.to_string());
                }
            }
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
                .await
                .expect("an answer within 5 s")
                .expect("read");
            assert!(n > 0, "closed before a whole answer: {:?}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    #[tokio::test]
    async fn a_request_split_across_tcp_writes_is_answered_and_the_connection_kept() {
        let on = state(None);
        on.metrics.pods.store(7, Ordering::Relaxed);
        let (addr, _stop) = listen(on).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        let parts = ["GET /met", "rics HTTP/1.1\r\nHost: x\r\nAccept: text/pl", "ain\r\n", "\r", "\n"];
        let (head, body) = exchange(&mut s, &parts).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.to_ascii_lowercase().contains(&format!("content-type: {TEXT}")), "{head}");
        assert!(body.contains("\nk8s_ovs_pods 7\n"), "{body}");
        // A second request on the same connection (Prometheus keeps it).
        let (head, body) = exchange(&mut s, &["GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"]).await;
        assert!(head.starts_with("HTTP/1.1 503"), "{head}");
        assert_eq!(body, "not ready\n");
    }

    /// As a pod's `bash` or an old client asks: no Host, HTTP/1.0. Answered
    /// in HTTP/1.0 (hyper's rule), then closed.
    #[tokio::test]
    async fn an_http_1_0_request_is_answered_then_closed() {
        let (addr, _stop) = listen(state(None)).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await.expect("write");
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
            .await
            .expect("closed within 5 s")
            .expect("read");
        assert!(out.starts_with("HTTP/1.0 503") && out.ends_with("\r\n\r\nnot ready\n"), "{out}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_is_closed() {
        let (addr, _stop) = listen(state(None)).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\n").await.expect("write");
        let t = tokio::time::Instant::now();
        // The clock is paused: it jumps to the server's deadline as soon as
        // both sides wait.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
        assert!(t.elapsed() >= HEAD_TIMEOUT, "closed after {:?}", t.elapsed());
        assert!(t.elapsed() < HEAD_TIMEOUT * 2, "closed after {:?}", t.elapsed());
    }

    #[tokio::test]
    async fn the_listener_stops_on_shutdown() {
        let (addr, stop) = listen(state(None)).await;
        drop(stop);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "still accepting after the shutdown");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
