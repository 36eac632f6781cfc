//! Async OpenFlow 1.5 client over `unix:<rundir>/<bridge>.mgmt` or `tcp:ip:port`.
//!
//! One supervisor task owns the connection: connect (jittered exponential
//! backoff, [`crate::backoff`]),
//! HELLO, then a reader task (replies matched to waiters by xid, echo
//! requests answered, silence turned into echo probes and then a dead
//! connection) and a writer task fed whole pre-encoded buffers through a
//! channel, so a bundle of 10,000 flow_mods is one buffer written with a few
//! syscalls and many requests can be in flight. When the connection drops,
//! every waiter fails with [`ClientError::ConnectionLost`] and
//! [`ConnEvent::Disconnected`] / [`ConnEvent::Connected`] tell the caller to
//! replay its flows after the reconnect.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::cookie::CookieFilter;
use crate::flow::Flow;
use crate::ofp::{
    self, BundleCtrlType, CodecError, Features, FlowOp, Message, OfpError, BUNDLE_ATOMIC, BUNDLE_ORDERED,
    OFP_VERSION_1_5,
};

/// Where the switch listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl FromStr for Endpoint {
    type Err = String;
    /// `unix:/path/br0.mgmt` or `tcp:127.0.0.1:6653`.
    fn from_str(s: &str) -> Result<Endpoint, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            Ok(Endpoint::Unix(p.into()))
        } else if let Some(a) = s.strip_prefix("tcp:") {
            a.parse().map(Endpoint::Tcp).map_err(|e| format!("bad tcp endpoint {s:?}: {e}"))
        } else {
            Err(format!("endpoint {s:?} is neither unix:<path> nor tcp:<ip>:<port>"))
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How long [`Client::connect`] keeps trying (with backoff) to get the
    /// first connection, and the limit for one connect + HELLO.
    pub connect_timeout: Duration,
    /// How long one request may wait for its reply (a live but stuck switch).
    pub request_timeout: Duration,
    /// Silence after which we send an echo request; twice that = dead.
    pub echo_interval: Duration,
    /// Bounds of the pause between connection attempts (jittered, see
    /// [`Backoff`]): the first, and the most it doubles to.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            echo_interval: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("not connected to the switch")]
    NotConnected,
    #[error("connection to the switch lost before the reply")]
    ConnectionLost,
    #[error("no reply from the switch within {0:?}")]
    Timeout(Duration),
    #[error("could not connect to {endpoint} within {after:?}: {source}")]
    Connect { endpoint: String, after: Duration, source: HandshakeError },
    #[error("switch error: {0}")]
    Switch(OfpError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("unexpected reply: {0}")]
    Protocol(String),
    /// A task panicked while holding the client's state: its replies can no
    /// longer be matched, so a request fails at once instead of waiting for
    /// its timeout.
    #[error("OpenFlow client state poisoned (a task panicked holding it); restart the client")]
    Poisoned,
}

/// Why one connection attempt (connect + HELLO) failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("send HELLO: {0}")]
    Write(#[source] std::io::Error),
    #[error("read HELLO: {0}")]
    Read(#[source] std::io::Error),
    #[error("connection closed during handshake")]
    Closed,
    #[error("HELLO: {0}")]
    Codec(#[from] CodecError),
    #[error(
        "switch does not speak OpenFlow 1.5 (negotiated {0:?}); create the bridge with protocols=OpenFlow13,OpenFlow15"
    )]
    Version(Option<u8>),
    #[error("switch refused HELLO: {0}")]
    Refused(OfpError),
    #[error("expected HELLO, got {0}")]
    Unexpected(String),
    #[error("handshake timed out after {0:?}")]
    Timeout(Duration),
}

/// Why a bundle did not commit. The switch rolled back: nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle rejected, nothing changed: {}", describe_failures(.failures, .bundle_error))]
    Rejected {
        /// Each failing op with the switch's reason.
        failures: Vec<(FlowOp, OfpError)>,
        /// The error on the bundle itself (commit/open), if any.
        bundle_error: Option<OfpError>,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
}

fn describe_failures(failures: &[(FlowOp, OfpError)], bundle: &Option<OfpError>) -> String {
    let mut parts: Vec<String> = failures.iter().map(|(op, e)| format!("{op}: {e}")).collect();
    if let Some(e) = bundle {
        parts.push(format!("bundle: {e}"));
    }
    parts.join("; ")
}

/// Connection state changes, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnEvent {
    /// Connected (again); `generation` counts connections from 1. After a
    /// reconnect the switch may have lost or kept flows: replay them.
    Connected {
        generation: u64,
    },
    Disconnected {
        reason: String,
    },
}

enum Waiter {
    Reply(oneshot::Sender<Result<Message, ClientError>>),
    Stats { flows: Vec<ofp::CountedFlow>, tx: oneshot::Sender<Result<Vec<ofp::CountedFlow>, ClientError>> },
}

/// Errors for a range of xids (the adds of one bundle), collected by the reader.
struct ErrorWatch {
    id: u64,
    first: u32,
    last: u32,
    errors: Vec<(u32, OfpError)>,
}

#[derive(Default)]
struct Pending {
    waiters: HashMap<u32, Waiter>,
    watches: Vec<ErrorWatch>,
}

struct Shared {
    endpoint: Endpoint,
    opts: ClientOptions,
    pending: Mutex<Pending>,
    out: Mutex<Option<mpsc::UnboundedSender<Vec<u8>>>>,
    next_xid: AtomicU32,
    next_bundle: AtomicU32,
    next_watch: AtomicU64,
    events: broadcast::Sender<ConnEvent>,
    generation: watch::Sender<u64>,
    features: Mutex<Option<Features>>,
    /// Why the last connection attempt failed (for the first-connect error).
    last_error: Mutex<Option<HandshakeError>>,
}

/// A handle to the switch connection; cheap to clone.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    _stop: Arc<StopOnDrop>,
}

/// Ends the supervisor when the last client handle goes away.
struct StopOnDrop(tokio::task::AbortHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.abort();
        debug!("openflow client stopped");
    }
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

impl Client {
    /// Starts the connection supervisor and waits for the first connection.
    pub async fn connect(endpoint: Endpoint, opts: ClientOptions) -> Result<Client, ClientError> {
        let (client, first_rx) = Client::start(endpoint.clone(), opts.clone());
        let mut gen_rx = client.shared.generation.subscribe();
        if !matches!(tokio::time::timeout(opts.connect_timeout, first_rx).await, Ok(Ok(()))) {
            // No attempt ended yet: the first one is still hanging (a TCP
            // peer that does not answer), which is a timeout too.
            let last = client.shared.last_error.lock().ok().and_then(|mut e| e.take());
            return Err(ClientError::Connect {
                endpoint: endpoint.to_string(),
                after: opts.connect_timeout,
                source: last.unwrap_or(HandshakeError::Timeout(opts.connect_timeout)),
            });
        }
        // Wait until the generation is visible so requests do not race the state.
        let _ = gen_rx.wait_for(|g| *g > 0).await;
        let f = client.request_features().await?;
        if let Ok(mut slot) = client.shared.features.lock() {
            *slot = Some(f);
        }
        Ok(client)
    }

    /// The client and its supervisor, and what tells of the first connection.
    fn start(endpoint: Endpoint, opts: ClientOptions) -> (Client, oneshot::Receiver<()>) {
        let (events, _) = broadcast::channel(64);
        let (generation, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            endpoint: endpoint.clone(),
            opts: opts.clone(),
            pending: Mutex::new(Pending::default()),
            out: Mutex::new(None),
            next_xid: AtomicU32::new(1),
            next_bundle: AtomicU32::new(1),
            next_watch: AtomicU64::new(1),
            events,
            generation,
            features: Mutex::new(None),
            last_error: Mutex::new(None),
        });
        let (first_tx, first_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(supervise(shared.clone(), first_tx));
        (Client { shared, _stop: Arc::new(StopOnDrop(task.abort_handle())) }, first_rx)
    }

    /// Connection events (connects, disconnects) from now on.
    pub fn events(&self) -> broadcast::Receiver<ConnEvent> {
        self.shared.events.subscribe()
    }

    /// How many times a connection was established (0 = never).
    pub fn generation(&self) -> u64 {
        *self.shared.generation.borrow()
    }

    /// FEATURES of the switch as of the first connection.
    pub fn features(&self) -> Option<Features> {
        self.shared.features.lock().ok().and_then(|f| *f)
    }

    fn xids(&self, n: u32) -> u32 {
        // Skip xid 0 on wrap-around; switches use it for unsolicited messages.
        loop {
            let first = self.shared.next_xid.fetch_add(n, Ordering::Relaxed);
            if first != 0 && first.checked_add(n).is_some() {
                return first;
            }
        }
    }

    /// The pending requests. A poisoned lock is an error, never skipped: a
    /// waiter not registered would wait its whole timeout for nothing.
    fn pending(&self) -> Result<MutexGuard<'_, Pending>, ClientError> {
        self.shared.pending.lock().map_err(|_| ClientError::Poisoned)
    }

    fn send(&self, buf: Vec<u8>) -> Result<(), ClientError> {
        let out = self.shared.out.lock().map_err(|_| ClientError::Poisoned)?;
        match out.as_ref() {
            Some(tx) => tx.send(buf).map_err(|_| ClientError::NotConnected),
            None => Err(ClientError::NotConnected),
        }
    }

    fn register(&self, xid: u32, w: Waiter) -> Result<(), ClientError> {
        self.pending()?.waiters.insert(xid, w);
        Ok(())
    }

    fn unregister(&self, xid: u32) {
        // Best effort: with a poisoned lock the request fails anyway.
        if let Ok(mut p) = self.pending() {
            p.waiters.remove(&xid);
        }
    }

    /// Starts collecting the switch's errors for xids `first..=last`.
    fn watch_errors(&self, first: u32, last: u32) -> Result<u64, ClientError> {
        let id = self.shared.next_watch.fetch_add(1, Ordering::Relaxed);
        self.pending()?.watches.push(ErrorWatch { id, first, last, errors: Vec::new() });
        Ok(id)
    }

    /// Stops collecting and returns the errors seen, by xid. A poisoned lock
    /// is an error: "no errors" could commit what the switch refused.
    fn take_watch(&self, id: u64) -> Result<Vec<(u32, OfpError)>, ClientError> {
        let mut p = self.pending()?;
        Ok(p.watches
            .iter()
            .position(|w| w.id == id)
            .map(|i| p.watches.swap_remove(i).errors)
            .unwrap_or_default())
    }

    /// Sends `buf` (whose last message has `xid`) and waits for that reply.
    async fn transact(&self, xid: u32, buf: Vec<u8>) -> Result<Message, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.register(xid, Waiter::Reply(tx))?;
        if let Err(e) = self.send(buf) {
            self.unregister(xid);
            return Err(e);
        }
        self.wait(xid, rx).await
    }

    /// Waits for a registered reply, at most `request_timeout`.
    async fn wait<T>(
        &self,
        xid: u32,
        rx: oneshot::Receiver<Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        let limit = self.shared.opts.request_timeout;
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ClientError::ConnectionLost),
            Err(_) => {
                self.unregister(xid);
                Err(ClientError::Timeout(limit))
            }
        }
    }

    async fn request_features(&self) -> Result<Features, ClientError> {
        let xid = self.xids(1);
        let mut buf = Vec::new();
        ofp::encode_features_request(&mut buf, xid);
        match self.transact(xid, buf).await? {
            Message::FeaturesReply(f) => Ok(f),
            m => Err(ClientError::Protocol(format!("features request answered by {m:?}"))),
        }
    }

    /// Waits until the switch processed everything sent before.
    pub async fn barrier(&self) -> Result<(), ClientError> {
        let xid = self.xids(1);
        let mut buf = Vec::new();
        ofp::encode_barrier(&mut buf, xid);
        self.expect_barrier(xid, buf).await
    }

    async fn expect_barrier(&self, xid: u32, buf: Vec<u8>) -> Result<(), ClientError> {
        match self.transact(xid, buf).await? {
            Message::BarrierReply => Ok(()),
            m => Err(ClientError::Protocol(format!("barrier answered by {m:?}"))),
        }
    }

    /// An echo round trip (a liveness check).
    pub async fn echo(&self) -> Result<(), ClientError> {
        let xid = self.xids(1);
        let mut buf = Vec::new();
        ofp::encode_echo(&mut buf, xid, false, b"k8s-ovs")?;
        match self.transact(xid, buf).await? {
            Message::EchoReply(_) => Ok(()),
            m => Err(ClientError::Protocol(format!("echo answered by {m:?}"))),
        }
    }

    /// Applies `ops` atomically and in order: one bundle (open, adds, commit).
    /// If any op fails the switch applies none, and the error names each
    /// failing op with the switch's reason.
    pub async fn bundle(&self, ops: &[FlowOp]) -> Result<(), BundleError> {
        if ops.is_empty() {
            return Ok(());
        }
        let n = u32::try_from(ops.len()).map_err(|_| ClientError::Protocol("too many ops".into()))?;
        let flags = BUNDLE_ATOMIC | BUNDLE_ORDERED;
        let bundle_id = self.shared.next_bundle.fetch_add(1, Ordering::Relaxed);
        // xids: open, n adds, barrier, commit/discard
        let base = self.xids(n + 3);
        let (open_xid, first_add, barrier_xid, end_xid) = (base, base + 1, base + 1 + n, base + 2 + n);
        // ~ 100 bytes per flow_mod; one allocation for the whole bundle.
        let mut buf = Vec::with_capacity(ops.len() * 128 + 64);
        ofp::encode_bundle_control(&mut buf, open_xid, bundle_id, BundleCtrlType::OpenRequest, flags);
        for (i, op) in ops.iter().enumerate() {
            ofp::encode_bundle_add(&mut buf, first_add + i as u32, bundle_id, flags, op)
                .map_err(ClientError::from)?;
        }
        // OVS checks each message when it is added and, on a bad one, sends an
        // error but keeps the bundle open: a commit would then apply the rest.
        // So: a barrier after the adds, and commit only if no add failed.
        ofp::encode_barrier(&mut buf, barrier_xid);

        let watch_id = self.watch_errors(open_xid, end_xid)?;
        let result = self.run_bundle(buf, bundle_id, flags, open_xid, barrier_xid, end_xid).await;
        let errors = self.take_watch(watch_id)?;
        let mut failures = Vec::new();
        let mut bundle_error = None;
        for (xid, e) in errors {
            if xid >= first_add && xid < barrier_xid {
                failures.push((ops[(xid - first_add) as usize].clone(), e));
            } else if bundle_error.is_none() {
                bundle_error = Some(e);
            }
        }
        match result {
            Ok(()) if failures.is_empty() && bundle_error.is_none() => Ok(()),
            Ok(()) => Err(BundleError::Rejected { failures, bundle_error }),
            Err(ClientError::Switch(e)) => {
                Err(BundleError::Rejected { failures, bundle_error: bundle_error.or(Some(e)) })
            }
            Err(e) => Err(BundleError::Client(e)),
        }
    }

    async fn run_bundle(
        &self,
        buf: Vec<u8>,
        bundle_id: u32,
        flags: u16,
        open_xid: u32,
        barrier_xid: u32,
        end_xid: u32,
    ) -> Result<(), ClientError> {
        let (open_tx, open_rx) = oneshot::channel();
        self.register(open_xid, Waiter::Reply(open_tx))?;
        let barrier = self.expect_barrier(barrier_xid, buf).await;
        let open = match self.wait(open_xid, open_rx).await {
            Ok(Message::BundleControl { kind: BundleCtrlType::OpenReply, .. }) => Ok(()),
            Ok(m) => Err(ClientError::Protocol(format!("bundle open answered by {m:?}"))),
            Err(e) => Err(e),
        };
        barrier?;
        let add_failed = self.pending()?.watches.iter().any(|w| w.first == open_xid && !w.errors.is_empty());
        open?;
        let kind = if add_failed { BundleCtrlType::DiscardRequest } else { BundleCtrlType::CommitRequest };
        let mut end = Vec::with_capacity(16);
        ofp::encode_bundle_control(&mut end, end_xid, bundle_id, kind, flags);
        match self.transact(end_xid, end).await? {
            Message::BundleControl {
                kind: BundleCtrlType::CommitReply | BundleCtrlType::DiscardReply,
                ..
            } => Ok(()),
            m => Err(ClientError::Protocol(format!("bundle {kind:?} answered by {m:?}"))),
        }
    }

    /// Sends `ops` as plain flow_mods followed by one barrier (not atomic).
    pub async fn send_ops(&self, ops: &[FlowOp]) -> Result<(), BundleError> {
        let n = u32::try_from(ops.len()).map_err(|_| ClientError::Protocol("too many ops".into()))?;
        let base = self.xids(n + 1);
        let mut buf = Vec::with_capacity(ops.len() * 112 + 8);
        for (i, op) in ops.iter().enumerate() {
            ofp::encode_flow_op(&mut buf, base + i as u32, op).map_err(ClientError::from)?;
        }
        ofp::encode_barrier(&mut buf, base + n);
        let watch_id = self.watch_errors(base, base + n)?;
        let r = self.expect_barrier(base + n, buf).await;
        let errors = self.take_watch(watch_id)?;
        r?;
        if errors.is_empty() {
            return Ok(());
        }
        let failures = errors
            .into_iter()
            .filter_map(|(xid, e)| ops.get((xid - base) as usize).map(|op| (op.clone(), e)))
            .collect();
        Err(BundleError::Rejected { failures, bundle_error: None })
    }

    /// Deletes every flow whose cookie matches `filter` (in `table` or all),
    /// and waits until the switch did it.
    pub async fn delete_by_cookie(&self, filter: CookieFilter, table: Option<u8>) -> Result<(), BundleError> {
        self.send_ops(&[FlowOp::DeleteByCookie { filter, table }]).await
    }

    /// Adds, changes or deletes a meter, and waits until the switch did it
    /// (its error, if it refused, e.g. adding a meter that exists).
    pub async fn meter_mod(&self, command: ofp::MeterCommand, meter: &ofp::Meter) -> Result<(), ClientError> {
        let base = self.xids(2);
        let mut buf = Vec::new();
        ofp::encode_meter_mod(&mut buf, base, command, meter)?;
        ofp::encode_barrier(&mut buf, base + 1);
        let watch_id = self.watch_errors(base, base)?;
        let r = self.expect_barrier(base + 1, buf).await;
        let errors = self.take_watch(watch_id)?;
        r?;
        match errors.into_iter().next() {
            Some((_, e)) => Err(ClientError::Switch(e)),
            None => Ok(()),
        }
    }

    /// Every meter the switch holds (drop bands).
    pub async fn meters(&self) -> Result<Vec<ofp::Meter>, ClientError> {
        let xid = self.xids(1);
        let mut buf = Vec::new();
        ofp::encode_meter_config_request(&mut buf, xid)?;
        match self.transact(xid, buf).await? {
            Message::MeterConfigReply { more: false, meters } => Ok(meters),
            m => Err(ClientError::Protocol(format!("meter config request answered by {m:?}"))),
        }
    }

    /// The installed flows of `table` (or all tables) whose cookie matches.
    pub async fn dump_flows(
        &self,
        table: Option<u8>,
        cookie: CookieFilter,
    ) -> Result<Vec<Flow>, ClientError> {
        Ok(self.flow_stats(table, cookie).await?.into_iter().map(|c| c.flow).collect())
    }

    /// The installed flows of `table` (or all tables) whose cookie matches,
    /// each with its packet and byte counters and age (the same request as
    /// [`Client::dump_flows`]: OpenFlow 1.5 replies always carry them).
    pub async fn flow_stats(
        &self,
        table: Option<u8>,
        cookie: CookieFilter,
    ) -> Result<Vec<ofp::CountedFlow>, ClientError> {
        let xid = self.xids(1);
        let mut buf = Vec::new();
        ofp::encode_flow_stats_request(&mut buf, xid, table, cookie);
        let (tx, rx) = oneshot::channel();
        self.register(xid, Waiter::Stats { flows: Vec::new(), tx })?;
        if let Err(e) = self.send(buf) {
            self.unregister(xid);
            return Err(e);
        }
        self.wait(xid, rx).await
    }
}

async fn open_stream(endpoint: &Endpoint) -> std::io::Result<(Reader, Writer)> {
    match endpoint {
        Endpoint::Unix(p) => {
            let s = tokio::net::UnixStream::connect(p).await?;
            let (r, w) = s.into_split();
            Ok((Box::new(r), Box::new(w)))
        }
        Endpoint::Tcp(a) => {
            let s = tokio::net::TcpStream::connect(a).await?;
            s.set_nodelay(true)?;
            let (r, w) = s.into_split();
            Ok((Box::new(r), Box::new(w)))
        }
    }
}

/// Reads one whole message (used during the handshake only).
async fn read_frame(r: &mut Reader, buf: &mut Vec<u8>) -> Result<Vec<u8>, HandshakeError> {
    loop {
        if let Some(n) = ofp::frame_len(buf)? {
            return Ok(buf.drain(..n).collect());
        }
        let mut chunk = [0u8; 4096];
        let k = r.read(&mut chunk).await.map_err(HandshakeError::Read)?;
        if k == 0 {
            return Err(HandshakeError::Closed);
        }
        buf.extend_from_slice(&chunk[..k]);
    }
}

/// Connects and exchanges HELLO; returns the streams and any bytes read past HELLO.
async fn handshake(
    endpoint: &Endpoint,
    timeout: Duration,
) -> Result<(Reader, Writer, Vec<u8>), HandshakeError> {
    let fut = async {
        let (mut r, mut w) = open_stream(endpoint).await.map_err(HandshakeError::Connect)?;
        let mut hello = Vec::new();
        ofp::encode_hello(&mut hello, 0);
        w.write_all(&hello).await.map_err(HandshakeError::Write)?;
        let mut buf = Vec::new();
        let frame = read_frame(&mut r, &mut buf).await?;
        let f = ofp::decode(&frame)?;
        match f.msg {
            Message::Hello { version_bitmap } => match ofp::negotiate(f.version, version_bitmap) {
                Some(OFP_VERSION_1_5) => Ok((r, w, buf)),
                v => Err(HandshakeError::Version(v)),
            },
            Message::Error(e) => Err(HandshakeError::Refused(e)),
            m => Err(HandshakeError::Unexpected(format!("{m:?}"))),
        }
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| HandshakeError::Timeout(timeout))?
}

async fn supervise(shared: Arc<Shared>, first: oneshot::Sender<()>) {
    let mut first = Some(first);
    let mut backoff = Backoff::new(shared.opts.backoff_initial, shared.opts.backoff_max);
    let mut generation = 0u64;
    loop {
        match handshake(&shared.endpoint, shared.opts.connect_timeout).await {
            Ok((r, w, leftover)) => {
                backoff.reset();
                generation += 1;
                let (tx, rx) = mpsc::unbounded_channel();
                if let Ok(mut out) = shared.out.lock() {
                    *out = Some(tx.clone());
                }
                info!(endpoint = %shared.endpoint, generation, "openflow connected");
                shared.generation.send_replace(generation);
                let _ = shared.events.send(ConnEvent::Connected { generation });
                if let Some(f) = first.take() {
                    let _ = f.send(());
                }
                let writer = tokio::spawn(write_loop(w, rx));
                let reason = read_loop(&shared, r, leftover, tx).await;
                writer.abort();
                if let Ok(mut out) = shared.out.lock() {
                    *out = None;
                }
                // Dropping the waiters' senders fails them with ConnectionLost.
                if let Ok(mut p) = shared.pending.lock() {
                    p.waiters.clear();
                }
                warn!(endpoint = %shared.endpoint, %reason, "openflow connection lost; reconnecting");
                let _ = shared.events.send(ConnEvent::Disconnected { reason });
            }
            Err(reason) => {
                debug!(endpoint = %shared.endpoint, %reason, "openflow connect failed");
                if let Ok(mut last) = shared.last_error.lock() {
                    *last = Some(reason);
                }
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn write_loop(mut w: Writer, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(buf) = rx.recv().await {
        if let Err(e) = w.write_all(&buf).await {
            debug!(error = %e, "openflow write failed");
            return;
        }
    }
}

/// Reads until the connection ends; returns why.
async fn read_loop(
    shared: &Shared,
    mut r: Reader,
    mut buf: Vec<u8>,
    out: mpsc::UnboundedSender<Vec<u8>>,
) -> String {
    let interval = shared.opts.echo_interval;
    let mut silent_intervals = 0u32;
    let mut chunk = vec![0u8; 256 * 1024];
    let mut echo_xid = 0xf000_0000u32;
    loop {
        // Deliver every complete message in the buffer.
        let mut start = 0;
        loop {
            match ofp::frame_len(&buf[start..]) {
                Ok(Some(n)) => {
                    dispatch(shared, &buf[start..start + n], &out);
                    start += n;
                }
                Ok(None) => break,
                Err(e) => return format!("cannot frame switch messages: {e}"),
            }
        }
        buf.drain(..start);
        match tokio::time::timeout(interval, r.read(&mut chunk)).await {
            Ok(Ok(0)) => return "switch closed the connection".into(),
            Ok(Ok(k)) => {
                silent_intervals = 0;
                buf.extend_from_slice(&chunk[..k]);
            }
            Ok(Err(e)) => return format!("read error: {e}"),
            Err(_) => {
                silent_intervals += 1;
                if silent_intervals >= 2 {
                    return format!("no answer to echo within {:?}", interval * 2);
                }
                echo_xid = echo_xid.wrapping_add(1);
                let mut e = Vec::new();
                if ofp::encode_echo(&mut e, echo_xid, false, b"").is_ok() && out.send(e).is_err() {
                    return "writer ended".into();
                }
            }
        }
    }
}

fn dispatch(shared: &Shared, frame: &[u8], out: &mpsc::UnboundedSender<Vec<u8>>) {
    let decoded = ofp::decode(frame);
    let xid = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let Ok(mut p) = shared.pending.lock() else { return };
    let f = match decoded {
        Ok(f) => f,
        Err(e) => {
            warn!(xid, error = %e, "undecodable message from switch");
            if let Some(w) = p.waiters.remove(&xid) {
                match w {
                    Waiter::Reply(tx) => {
                        let _ = tx.send(Err(ClientError::Codec(e)));
                    }
                    Waiter::Stats { tx, .. } => {
                        let _ = tx.send(Err(ClientError::Codec(e)));
                    }
                }
            }
            return;
        }
    };
    match f.msg {
        Message::EchoRequest(data) => {
            let mut b = Vec::new();
            if ofp::encode_echo(&mut b, f.xid, true, &data).is_ok() {
                let _ = out.send(b);
            }
        }
        Message::Error(e) => {
            if let Some(w) = p.watches.iter_mut().find(|w| (w.first..=w.last).contains(&f.xid)) {
                w.errors.push((f.xid, e.clone()));
            }
            match p.waiters.remove(&f.xid) {
                Some(Waiter::Reply(tx)) => {
                    let _ = tx.send(Err(ClientError::Switch(e)));
                }
                Some(Waiter::Stats { tx, .. }) => {
                    let _ = tx.send(Err(ClientError::Switch(e)));
                }
                None => {
                    if !p.watches.iter().any(|w| (w.first..=w.last).contains(&f.xid)) {
                        warn!(xid = f.xid, error = %e, "switch error for no pending request");
                    }
                }
            }
        }
        Message::FlowStatsReply { more, flows } => {
            if let Some(Waiter::Stats { flows: acc, .. }) = p.waiters.get_mut(&f.xid) {
                acc.extend(flows);
                if !more {
                    if let Some(Waiter::Stats { flows, tx }) = p.waiters.remove(&f.xid) {
                        let _ = tx.send(Ok(flows));
                    }
                }
            }
        }
        msg => {
            if let Some(Waiter::Reply(tx)) = p.waiters.remove(&f.xid) {
                let _ = tx.send(Ok(msg));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_poisoned_state_fails_requests_at_once() {
        // No switch: a waiter that were silently not registered would make
        // each request wait its whole timeout; a poisoned lock must not.
        let opts = ClientOptions { request_timeout: Duration::from_secs(30), ..ClientOptions::default() };
        let (client, _first) = Client::start(Endpoint::Unix("/nonexistent/br0.mgmt".into()), opts);
        let shared = Arc::clone(&client.shared);
        let poisoner = std::thread::spawn(move || {
            let _held = shared.pending.lock();
            panic!("a task panicking while it holds the pending requests");
        });
        assert!(poisoner.join().is_err());
        let started = std::time::Instant::now();
        assert!(matches!(client.barrier().await, Err(ClientError::Poisoned)));
        assert!(matches!(client.dump_flows(None, CookieFilter::ANY).await, Err(ClientError::Poisoned)));
        let deleted = client.delete_by_cookie(CookieFilter::ANY, None).await;
        assert!(matches!(deleted, Err(BundleError::Client(ClientError::Poisoned))), "{deleted:?}");
        let bundle =
            client.bundle(&[FlowOp::DeleteByCookie { filter: CookieFilter::ANY, table: None }]).await;
        assert!(matches!(bundle, Err(BundleError::Client(ClientError::Poisoned))), "{bundle:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_failed_first_connect_keeps_the_io_error() {
        let opts = ClientOptions { connect_timeout: Duration::from_millis(300), ..ClientOptions::default() };
        let Err(e) = Client::connect(Endpoint::Unix("/nonexistent/br0.mgmt".into()), opts).await else {
            panic!("connected to nothing");
        };
        let ClientError::Connect { source: HandshakeError::Connect(io), .. } = &e else { panic!("{e:?}") };
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
        // The chain reaches the io::Error for callers that walk sources.
        let io_in_chain = std::error::Error::source(&e)
            .and_then(std::error::Error::source)
            .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some());
        assert!(io_in_chain, "{e}");
    }
}
