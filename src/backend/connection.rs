//! One pipelined, multiplexed connection to one backend server.
//!
//! Many clients of one worker share it: requests are queued on an unbounded channel, written in
//! batches, and replies are matched to requests strictly in FIFO order (memcached and Redis both
//! answer in order on one connection). A request that outlives the pool timeout fails with
//! `Timeout`, and the connection is closed and reopened, so a late reply can never be handed to
//! the wrong request. Reconnects back off while the server keeps failing (up to 1 s; a server
//! refusing connections, as while it restarts, is retried at least every 100 ms).
//!
//! Redis connections may need per-connection state (AUTH, SELECT): the spec's `init` commands
//! are sent on every (re)connect and their replies checked before any queued request is
//! written, so a reconnect can never serve requests unauthenticated or in the wrong database.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use prometheus::local::LocalHistogram;
use tokio::io::Interest;
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};

use super::health::{FailureKind, FailureOutcome, ServerHealth};
use super::io::Io;
use super::metrics::ServerMetrics;
use crate::protocol::{memcache, resp};

/// How to find the end of the reply to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    /// memcached get/gets/gat/gats: VALUE items then END.
    McRetrieval,
    /// Any other memcached command: one line.
    McLine,
    /// A memcached meta command (mg/ms/md/ma/me): one line, or `VA <size> ...` and data.
    McMeta,
    /// A quiet meta command sent followed by `mn`: whatever it answered, then `MN`.
    McMetaQuiet,
    /// One RESP reply (RESP2 or RESP3, any nesting).
    Resp,
}

/// Finds reply boundaries, resuming where it stopped when a reply arrives in pieces.
#[derive(Default)]
struct Scanner {
    mc: memcache::ReplyScanner,
    /// Boxed: its fixed-size nesting stack is 4 KiB, and memcached connections never use it.
    resp: Option<Box<resp::ReplyScanner>>,
}

impl Scanner {
    fn scan(&mut self, kind: ReplyKind, buf: &[u8]) -> Result<Option<usize>, String> {
        match kind {
            ReplyKind::McRetrieval => self.mc.scan(buf, true).map_err(|e| e.0),
            ReplyKind::McLine => self.mc.scan(buf, false).map_err(|e| e.0),
            ReplyKind::McMeta => self.mc.scan_meta(buf, false).map_err(|e| e.0),
            ReplyKind::McMetaQuiet => self.mc.scan_meta(buf, true).map_err(|e| e.0),
            ReplyKind::Resp => {
                // Fast path: a whole scalar reply (the common case) needs no resumable state.
                if !buf.is_empty() && !matches!(buf[0], b'*' | b'~' | b'>' | b'%' | b'|') {
                    return resp::scan_reply(buf).map_err(|e| e.message().to_string());
                }
                self.resp
                    .get_or_insert_with(Default::default)
                    .scan(buf)
                    .map_err(|e| e.message().to_string())
            }
        }
    }
}

/// Why a request got no reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendError {
    Timeout(Duration),
    Connect(String),
    /// The server refused the connection's `AUTH` (a wrong `redis_auth`): its own error text.
    Auth(String),
    /// The connection broke while the request was in flight (or before it was sent).
    Closed(String),
    /// The server sent bytes that do not parse as a reply.
    Protocol(String),
    /// The server is marked down (TKO): the request was not sent.
    Down,
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendError::Timeout(d) => write!(f, "timed out after {}ms", d.as_millis()),
            BackendError::Connect(e) => write!(f, "connect failed: {e}"),
            BackendError::Auth(e) => write!(f, "authentication failed: {e}"),
            BackendError::Closed(e) => write!(f, "connection closed: {e}"),
            BackendError::Protocol(e) => write!(f, "bad reply: {e}"),
            BackendError::Down => write!(f, "is marked down (TKO)"),
        }
    }
}

pub type Reply = Result<Bytes, BackendError>;

/// One request queued on a backend connection.
pub struct Queued {
    pub bytes: Bytes,
    pub kind: ReplyKind,
    pub reply: oneshot::Sender<Reply>,
    /// When the request was queued: its deadline and its latency count from here.
    pub queued_at: Instant,
}

/// What a connection needs to know about its server.
#[derive(Clone, Debug)]
pub struct ServerSpec {
    /// `host:port`, resolved at each connect, or a unix socket path.
    pub address: String,
    pub unix: bool,
    pub timeout: Option<Duration>,
    pub tcpkeepalive: bool,
    pub health: Arc<ServerHealth>,
    /// Bumped when this server is ejected, so the pool rebuilds its ring.
    pub pool_epoch: Arc<AtomicU64>,
    pub auto_eject: bool,
    pub failure_limit: u32,
    pub retry_timeout: Duration,
    /// TKO (native pools): how to probe a down server. None: no TKO (twemproxy pools).
    pub tko: Option<Probe>,
    /// TLS to this server.
    pub tls: Option<super::tls::TlsClient>,
    pub metrics: ServerMetrics,
    /// Commands sent on every (re)connect before anything else, each with a label for errors
    /// (Redis `AUTH`, `SELECT`). Each must be answered with a `+` status reply.
    pub init: Vec<(String, Bytes)>,
}

/// The request a probe sends to a down server, and how its reply ends.
#[derive(Clone, Debug)]
pub struct Probe {
    pub request: Bytes,
    pub kind: ReplyKind,
}

/// The client side of a backend connection: cheap to clone, used from the worker's tasks.
#[derive(Clone)]
pub struct BackendHandle {
    tx: mpsc::UnboundedSender<Queued>,
    pub spec: Arc<ServerSpec>,
}

impl BackendHandle {
    /// Spawn the connection task on the current (worker-local) runtime.
    pub fn spawn(spec: Arc<ServerSpec>, preconnect: bool) -> BackendHandle {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::task::spawn_local(run(spec.clone(), rx, preconnect));
        BackendHandle { tx, spec }
    }

    /// Queue a request; the receiver yields its reply (or why there is none).
    pub fn send(&self, bytes: Bytes, kind: ReplyKind) -> oneshot::Receiver<Reply> {
        let (reply, rx) = oneshot::channel();
        self.spec.metrics.requests.inc();
        self.spec.metrics.inflight.inc();
        if self.spec.tko.is_some() && self.spec.health.is_down() {
            answer_err(&self.spec, reply, &BackendError::Down);
            return rx;
        }
        let queued_at = Instant::now();
        if let Err(mpsc::error::SendError(q)) = self.tx.send(Queued {
            bytes,
            kind,
            reply,
            queued_at,
        }) {
            let err = BackendError::Closed("backend task stopped".into());
            answer_err(&self.spec, q.reply, &err);
        }
        rx
    }
}

struct InFlight {
    kind: ReplyKind,
    reply: oneshot::Sender<Reply>,
    queued_at: Instant,
    deadline: Option<Instant>,
}

/// Fail one request: counted by kind, no longer in flight.
fn answer_err(spec: &ServerSpec, reply: oneshot::Sender<Reply>, err: &BackendError) {
    spec.metrics.error(err).inc();
    spec.metrics.inflight.dec();
    let _ = reply.send(Err(err.clone()));
}

const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// The longest a server that refused a connection goes untried while requests want it.
pub(super) const REFUSED_RETRY: Duration = Duration::from_millis(100);
const WRITE_HIGH_WATER: usize = 4 << 20;
/// Bytes read from a connection before letting the worker's other tasks run: a stream of big
/// replies cannot starve the clients and connections sharing the worker.
pub(super) const READ_TURN: usize = 1 << 20;

async fn run(spec: Arc<ServerSpec>, mut rx: mpsc::UnboundedReceiver<Queued>, preconnect: bool) {
    let mut backoff = Duration::ZERO;
    let mut first: Option<Queued> = None;
    let mut connect_now = preconnect;
    loop {
        if !connect_now && first.is_none() {
            match rx.recv().await {
                Some(q) => first = Some(q),
                None => return,
            }
        }
        connect_now = false;
        let stream = match open(&spec).await {
            Ok(s) => {
                backoff = Duration::ZERO;
                s
            }
            Err((err, kind)) => {
                tracing::warn!(server = %spec.address, error = %err, "backend connect failed");
                failure(&spec, &err, kind);
                if let Some(q) = first.take() {
                    answer_err(&spec, q.reply, &err);
                }
                // Fail what queued meanwhile, then back off before trying again: while the
                // server is down requests fail fast instead of piling up.
                // A refused connect costs nothing: retry it soon, so the first requests after
                // a restart find the server.
                let max = if kind == FailureKind::Refused {
                    REFUSED_RETRY
                } else {
                    MAX_BACKOFF
                };
                backoff = (backoff * 2).clamp(Duration::from_millis(50), max);
                let until = Instant::now() + backoff;
                loop {
                    tokio::select! {
                        q = rx.recv() => match q {
                            Some(q) => answer_err(&spec, q.reply, &err),
                            None => return,
                        },
                        _ = sleep_until(until) => break,
                    }
                }
                continue;
            }
        };
        let served = match &stream {
            Stream::Tcp(s) => serve(&spec, s, &mut rx, first.take()).await,
            Stream::Unix(s) => serve(&spec, s, &mut rx, first.take()).await,
        };
        match served {
            Ok(()) => return, // channel closed: the worker is going away
            Err(err) => {
                tracing::warn!(server = %spec.address, error = %err, "backend connection closed");
                let kind = match err {
                    BackendError::Timeout(_) => FailureKind::Soft,
                    _ => FailureKind::Other,
                };
                failure(&spec, &err, kind);
            }
        }
    }
}

fn failure(spec: &Arc<ServerSpec>, err: &BackendError, kind: FailureKind) {
    if matches!(err, BackendError::Timeout(_)) {
        spec.health.timeouts.fetch_add(1, Ordering::Relaxed);
    }
    if spec.tko.is_some() && spec.health.tko_failure(kind, spec.failure_limit) {
        tracing::warn!(server = %spec.address, error = %err,
            "server marked down (TKO); requests to it fail fast until a probe gets an answer");
        if spec.health.claim_probe() {
            tokio::task::spawn_local(super::probe::probe(spec.clone()));
        }
    }
    let outcome =
        spec.health
            .record_failure(spec.auto_eject, spec.failure_limit, spec.retry_timeout);
    if outcome == FailureOutcome::Ejected {
        tracing::warn!(server = %spec.address, retry_ms = spec.retry_timeout.as_millis() as u64,
            "server ejected after {} consecutive failures", spec.failure_limit);
        spec.pool_epoch.fetch_add(1, Ordering::Relaxed);
        spec.metrics.ejections.inc();
    }
}

pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Connect and run the spec's init commands: a connection ready to serve requests. A failure
/// says how TKO should count it (a refused connection marks the server down at once).
pub(crate) async fn open(spec: &ServerSpec) -> Result<Stream, (BackendError, FailureKind)> {
    let stream = connect(spec).await.map_err(|e| {
        let kind = if e.kind() == io::ErrorKind::ConnectionRefused {
            FailureKind::Refused
        } else {
            FailureKind::Soft
        };
        (BackendError::Connect(e.to_string()), kind)
    })?;
    if !spec.init.is_empty() {
        let run = async {
            match &stream {
                Stream::Tcp(s) => init(spec, s).await,
                Stream::Unix(s) => init(spec, s).await,
            }
        };
        match spec.timeout {
            Some(t) => tokio::time::timeout(t, run)
                .await
                .map_err(|_| BackendError::Connect("connection setup timed out".into()))
                .and_then(|r| r),
            None => run.await,
        }
        .map_err(|e| (e, FailureKind::Soft))?;
    }
    Ok(stream)
}

/// Send the init commands in one write and check that each is answered with `+...`; a refused
/// `AUTH` is an authentication failure, told apart from a connection that failed.
async fn init<S: Io>(spec: &ServerSpec, stream: &S) -> Result<(), BackendError> {
    init_replies(spec, stream).await.map_err(|(auth, e)| {
        if auth {
            BackendError::Auth(e)
        } else {
            BackendError::Connect(e)
        }
    })
}

/// `Err((true, text))`: the server answered `AUTH` with this error.
async fn init_replies<S: Io>(spec: &ServerSpec, stream: &S) -> Result<(), (bool, String)> {
    let plain = |e: String| (false, e);
    let mut wbuf = BytesMut::new();
    for (_, cmd) in &spec.init {
        wbuf.extend_from_slice(cmd);
    }
    super::io::write_all(stream, &mut wbuf)
        .await
        .map_err(|e| plain(e.to_string()))?;
    let mut rbuf = BytesMut::with_capacity(1024);
    for (label, _) in &spec.init {
        let reply = loop {
            if let Some(n) = resp::scan_reply(&rbuf).map_err(|e| plain(format!("{label}: {e}")))? {
                break rbuf.split_to(n);
            }
            stream
                .ready(Interest::READABLE)
                .await
                .map_err(|e| plain(e.to_string()))?;
            match stream.try_read_buf(&mut rbuf) {
                Ok(0) => return Err(plain(format!("{label}: server closed the connection"))),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(plain(format!("{label}: {e}"))),
            }
        };
        if !reply.starts_with(b"+") {
            let text = String::from_utf8_lossy(&reply);
            let text = text.trim_end().trim_start_matches('-');
            if label == "AUTH" {
                return Err((true, text.to_string()));
            }
            return Err(plain(format!("{label} failed: {text}")));
        }
    }
    if !rbuf.is_empty() {
        return Err(plain("unexpected bytes after connection setup".into()));
    }
    Ok(())
}

pub(crate) async fn connect(spec: &ServerSpec) -> io::Result<Stream> {
    let fut = async {
        if spec.unix {
            return Ok(Stream::Unix(UnixStream::connect(&spec.address).await?));
        }
        let stream = TcpStream::connect(spec.address.as_str()).await?;
        stream.set_nodelay(true)?;
        if spec.tcpkeepalive {
            socket2::SockRef::from(&stream).set_keepalive(true)?;
        }
        if let Some(tls) = &spec.tls {
            let host = spec
                .address
                .rsplit_once(':')
                .map_or(spec.address.as_str(), |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            return Ok(Stream::Unix(tls.connect(stream, host).await?));
        }
        Ok(Stream::Tcp(stream))
    };
    match spec.timeout {
        Some(t) => tokio::time::timeout(t, fut)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?,
        None => fut.await,
    }
}

/// Drive one open connection until it breaks (Err) or the channel closes (Ok).
async fn serve<S: Io>(
    spec: &ServerSpec,
    stream: &S,
    rx: &mut mpsc::UnboundedReceiver<Queued>,
    first: Option<Queued>,
) -> Result<(), BackendError> {
    let mut inflight: VecDeque<InFlight> = VecDeque::new();
    let mut wbuf = BytesMut::with_capacity(16 * 1024);
    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    let mut scanner = Scanner::default();
    let mut latency = spec.metrics.latency.local();
    let mut closed = false;
    let result = async {
        if let Some(q) = first {
            enqueue(spec, q, &mut wbuf, &mut inflight);
        }
        loop {
            if closed && inflight.is_empty() && wbuf.is_empty() {
                return Ok(());
            }
            let interest = if wbuf.is_empty() {
                Interest::READABLE
            } else {
                Interest::READABLE | Interest::WRITABLE
            };
            let deadline = inflight.front().and_then(|f| f.deadline);
            tokio::select! {
                biased;
                ready = stream.ready(interest) => {
                    let ready = ready.map_err(|e| BackendError::Closed(e.to_string()))?;
                    let mut more = false;
                    if ready.is_readable() {
                        let (replies, unread) = read_replies(spec, stream, &mut rbuf, &mut scanner, &mut inflight, &mut latency)?;
                        more = unread;
                        if replies > 0 {
                            spec.health.record_success();
                            spec.health.tko_success();
                        }
                    }
                    if ready.is_writable() && !wbuf.is_empty() {
                        flush(stream, &mut wbuf)?;
                    }
                    if more {
                        tokio::task::yield_now().await;
                    }
                }
                q = rx.recv(), if !closed && wbuf.len() < WRITE_HIGH_WATER => {
                    match q {
                        Some(q) => {
                            enqueue(spec, q, &mut wbuf, &mut inflight);
                            while wbuf.len() < WRITE_HIGH_WATER {
                                match rx.try_recv() {
                                    Ok(q) => enqueue(spec, q, &mut wbuf, &mut inflight),
                                    Err(_) => break,
                                }
                            }
                            flush(stream, &mut wbuf)?;
                        }
                        None => closed = true,
                    }
                }
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    return Err(BackendError::Timeout(spec.timeout.unwrap_or_default()));
                }
            }
        }
    }
    .await;
    if let Err(e) = &result {
        for f in inflight.drain(..) {
            answer_err(spec, f.reply, e);
        }
    }
    result
}

fn enqueue(spec: &ServerSpec, q: Queued, wbuf: &mut BytesMut, inflight: &mut VecDeque<InFlight>) {
    if q.reply.is_closed() {
        spec.metrics.inflight.dec();
        return; // the client went away before we sent it
    }
    wbuf.extend_from_slice(&q.bytes);
    inflight.push_back(InFlight {
        kind: q.kind,
        reply: q.reply,
        queued_at: q.queued_at,
        deadline: spec.timeout.map(|t| q.queued_at + t),
    });
}

pub(super) fn flush<S: Io>(stream: &S, wbuf: &mut BytesMut) -> Result<(), BackendError> {
    super::io::write_some(stream, wbuf).map_err(|e| BackendError::Closed(e.to_string()))
}

/// Read and hand out every complete reply, up to `READ_TURN` bytes: the number handed out, and
/// whether more may be waiting. Replies go out whether or not their client still wants them,
/// so one client that does not read never stops the connection it shares with others.
/// Latencies are observed into this connection's local histogram and published (with the
/// in-flight count) once per call, so a pipelined batch costs a few atomic operations, not a
/// few per reply.
fn read_replies<S: Io>(
    spec: &ServerSpec,
    stream: &S,
    rbuf: &mut BytesMut,
    scanner: &mut Scanner,
    inflight: &mut VecDeque<InFlight>,
    latency: &mut LocalHistogram,
) -> Result<(usize, bool), BackendError> {
    let mut replies = 0;
    let result = scan_replies(stream, rbuf, scanner, inflight, latency, &mut replies);
    if replies > 0 {
        spec.metrics.inflight.sub(replies as i64);
        latency.flush();
    }
    result.map(|more| (replies, more))
}

fn scan_replies<S: Io>(
    stream: &S,
    rbuf: &mut BytesMut,
    scanner: &mut Scanner,
    inflight: &mut VecDeque<InFlight>,
    latency: &mut LocalHistogram,
    replies: &mut usize,
) -> Result<bool, BackendError> {
    let mut turn = 0;
    loop {
        if rbuf.capacity() - rbuf.len() < 4096 {
            rbuf.reserve(16 * 1024);
        }
        let drained = match stream.try_read_drain(rbuf) {
            Ok(0) => return Err(BackendError::Closed("server closed the connection".into())),
            Ok(n) => {
                turn += n;
                n < rbuf.capacity() - (rbuf.len() - n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(BackendError::Closed(e.to_string())),
        };
        let now = Instant::now();
        while let Some(front) = inflight.front() {
            match scanner.scan(front.kind, rbuf) {
                Ok(Some(n)) => {
                    let reply = rbuf.split_to(n).freeze();
                    let f = inflight.pop_front().expect("front exists");
                    latency.observe(now.saturating_duration_since(f.queued_at).as_secs_f64());
                    let _ = f.reply.send(Ok(reply));
                    *replies += 1;
                }
                Ok(None) => break,
                Err(e) => return Err(BackendError::Protocol(e)),
            }
        }
        if inflight.is_empty() && !rbuf.is_empty() {
            return Err(BackendError::Protocol(format!(
                "{} unexpected bytes with no request in flight",
                rbuf.len()
            )));
        }
        if drained {
            return Ok(false); // a short read cleared the readiness: wait for the next edge
        }
        if turn >= READ_TURN {
            return Ok(true); // the socket stays readable: read on after the others had a turn
        }
    }
}
