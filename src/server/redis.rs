//! One Redis (RESP2) client connection: parse pipelined commands, route each by its keys to its
//! server's shared backend connection, and write the replies back strictly in request order.
//!
//! Per command, the command table (`protocol::redis_commands`) says what to do:
//! - **route**: every key of the command must live on one server (else `-CROSSSLOT`, which
//!   names hash tags as the way to keep keys together); the request is forwarded untouched and
//!   the reply passed through byte for byte.
//! - **split**: MGET, MSET, DEL, UNLINK, EXISTS, TOUCH go to each server with that server's keys,
//!   and the replies are merged (`redis_merge`); a failed server fails the whole command with an
//!   `-ERR` naming it (design.md: no partial answers for Redis).
//! - **local**: PING, ECHO, QUIT, SELECT 0, HELLO 2, AUTH, RESET, CLIENT SETNAME/GETNAME/ID,
//!   INFO, COMMAND COUNT are answered here: the client's connection is to the proxy.
//! - **fan-out**: DBSIZE, SCAN (a cursor walking the servers in turn), RANDOMKEY, SCRIPT
//!   LOAD/EXISTS/FLUSH, FUNCTION LOAD/DELETE/FLUSH; FLUSHALL, FLUSHDB and KEYS only when the pool
//!   lists them in `allow_commands`.
//! - **dedicated**: state a shared connection cannot hold for one client gets a connection of
//!   its own (`backend::Dedicated`): blocking commands (so a BLPOP never stalls the clients
//!   multiplexed behind it, and no pool timeout cuts it short), WATCH (the watched keys live on
//!   that connection until EXEC/DISCARD/UNWATCH), EXEC (MULTI, the queued commands and EXEC are
//!   sent together on the client's own connection), and subscriptions (one connection per
//!   server the client subscribes on; patterns subscribe on every server).
//!
//! **Order.** Replies are queued in request order. A command that goes over a dedicated
//! connection is a *barrier*: it waits until every earlier reply is in (so it runs after them
//! on the server, as it would on one connection), and nothing after it is parsed until its own
//! reply is in. Shared-connection commands keep the per-server FIFO order of the backends.
//!
//! **Transactions** are queued in the proxy: MULTI answers `+OK`, each command is checked
//! (known, arity, keys) and answered `+QUEUED`, and EXEC sends `MULTI ... EXEC` at once on the
//! client's dedicated connection (the one WATCH opened, or a fresh one). The first keyed command
//! (or WATCH) decides the server; a key on another server gets `-CROSSSLOT` and makes EXEC answer
//! `-EXECABORT Transaction discarded because of: keys on different servers` with nothing run.
//!
//! **RESP3 is not offered**: `HELLO 3` gets `-NOPROTO`. Replies are passed through from RESP2
//! backend connections unparsed; serving RESP3 would mean either a second set of RESP3 backend
//! connections (whose replies differ in shape) or re-encoding every reply, and push messages of
//! pub/sub would change shape too. Clients fall back to RESP2 on `-NOPROTO`.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot, watch};

use super::cluster::{ClusterRx, ClusterWorker};
use super::pool::PoolRuntime;
use super::redis_merge::{self, error};
use super::stats::{bump, Stats};
use crate::backend::io::{write_all, write_some, Io};
use crate::backend::{BackendError, BackendHandle, Dedicated, Reply, ReplyKind, ServerSpec};
use crate::config::GATED_COMMANDS;
use crate::protocol::redis_commands::{
    self as rc, flags, handling_for, key_indices, CommandInfo, Handling, Merge,
};
use crate::protocol::resp::{self, encode_request, parse_request, RespLimits, RespRequest};
use crate::routing::slots;

#[path = "redis_hot.rs"]
mod hot;
#[path = "redis_local.rs"]
mod local;
#[path = "redis_pinned.rs"]
mod pinned;

/// Stop reading from a client that has this many replies outstanding, or this much unsent
/// output: a client that pipelines without reading is throttled instead of growing memory.
const MAX_PENDING: usize = 4096;
const MAX_OUTPUT: usize = 8 << 20;
/// While a barrier command waits, input is read but not parsed (so a client that goes away is
/// noticed); at most this much is buffered meanwhile.
const MAX_UNPARSED: usize = 1 << 20;

/// CLIENT ID: unique across workers.
static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

/// What a client connection needs from its worker.
pub struct RedisContext {
    pub pool: Arc<PoolRuntime>,
    /// `backends[server][i]`: this worker's connections to each server of the pool.
    pub backends: Rc<Vec<Vec<BackendHandle>>>,
    /// A Redis Cluster pool: this worker's node connections and the slot map. Then a
    /// "server" index in this file is a slot (see `cluster.rs`), and `backends` is empty.
    pub cluster: Option<Rc<ClusterWorker>>,
    pub stats: Arc<Stats>,
    pub threads: usize,
    /// Every pool of the proxy, for INFO.
    pub pools: Vec<Arc<PoolRuntime>>,
    pub limits: RespLimits,
    /// The listener's TLS acceptor (used when a client connects).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub metrics: Arc<super::metrics::ListenerMetrics>,
    /// The listener's `users` (empty: the pool's `redis_auth`, if any, is the one password).
    pub users: Arc<Vec<crate::config::UserConfig>>,
    /// The listener's address, for logs.
    pub listener: String,
    /// `hot_keys`: this worker's sampler and the listener's shared machinery.
    pub hot: Option<super::hot::HotCtx>,
    /// The route tree keyed commands take (`redis_route`), when the route is more than one
    /// pool or the pool has replicas; `pool` and `backends` are then the tree's first pool,
    /// which keyless, fan-out and dedicated-connection commands use.
    pub routing: Option<Rc<super::redis_route::RNode>>,
    /// Every pool the listener's route reaches (computed once from the config).
    pub reach: Vec<String>,
    /// The listener's `client_idle_timeout`: like redis-server's `timeout`, it closes a client
    /// with nothing in flight, but never a subscriber or a client blocked in a command.
    pub idle_timeout: Option<std::time::Duration>,
    /// Finds this listener's context in a newer config generation after a reload.
    pub follow: super::reload::Follow,
}

impl RedisContext {
    /// Whether a new client starts authenticated.
    fn open(&self) -> bool {
        self.users.is_empty() && self.pool.config.redis_auth.is_none()
    }

    /// Whether user `i` may use every pool this listener's route can send to.
    fn user_reaches(&self, i: usize) -> bool {
        self.users[i]
            .pools
            .as_ref()
            .is_none_or(|pools| self.reach.iter().all(|r| pools.contains(r)))
    }
}

/// Constant-time comparison: a password cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One command's reply, in the order the client sent it.
enum Pending {
    Ready(Bytes),
    /// A reply passed through from one server.
    Single {
        rx: Rx,
        server: usize,
    },
    /// Parts on several servers, merged when all are in.
    Merged(Box<Merged>),
    /// One step of a SCAN walk: the server's cursor is rewritten.
    Scan {
        rx: Rx,
        server: usize,
        n: usize,
    },
    /// MULTI, the queued commands and EXEC on a dedicated connection; the EXEC reply is the
    /// client's (the connection is closed when this completes).
    Exec {
        rxs: VecDeque<oneshot::Receiver<Reply>>,
        first: Option<Bytes>,
        last: Option<Bytes>,
        server: usize,
        _conn: Dedicated,
    },
    /// A command sent through the route tree (`redis_route`): the task yields the reply.
    Routed(tokio::task::JoinHandle<Bytes>),
    /// A blocking command on a cluster pool: a MOVED/ASK reply (it did not run) sends it again
    /// to the node named, on a connection this pending owns, so a client that leaves still
    /// cancels it by closing that connection.
    Blocking(Box<Blocking>),
    /// Close after the replies before it.
    Quit,
}

struct Blocking {
    rx: oneshot::Receiver<Reply>,
    raw: Bytes,
    server: usize,
    redirects: u32,
    /// The connection to the node a redirection named, and the ASKING reply's receiver (a
    /// request nobody waits for is not sent).
    hop: Option<(Dedicated, Option<oneshot::Receiver<Reply>>)>,
}

struct Merged {
    how: Merge,
    parts: Vec<Part>,
    part_of: Vec<usize>,
}

struct Part {
    server: usize,
    rx: Option<Rx>,
    result: Option<Reply>,
}

/// A reply on its way: from one backend connection, or a cluster request that follows
/// redirections (whose transport errors arrive already turned into `-ERR` replies).
enum Rx {
    Plain(oneshot::Receiver<Reply>),
    Cluster(ClusterRx),
    /// Through the route tree (hot-key copies of a tree listener): errors arrive as replies.
    Routed(tokio::task::JoinHandle<Bytes>),
}

impl From<oneshot::Receiver<Reply>> for Rx {
    fn from(rx: oneshot::Receiver<Reply>) -> Rx {
        Rx::Plain(rx)
    }
}

impl Rx {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Reply> {
        match self {
            Rx::Plain(rx) => Pin::new(rx).poll(cx).map(flatten),
            Rx::Cluster(c) => c.poll(cx).map(Ok),
            Rx::Routed(t) => Pin::new(t)
                .poll(cx)
                .map(|r| r.map_err(|e| BackendError::Closed(format!("routing task failed: {e}")))),
        }
    }
}

fn flatten(r: Result<Reply, oneshot::error::RecvError>) -> Reply {
    r.unwrap_or_else(|_| Err(BackendError::Closed("backend connection went away".into())))
}

fn backend_error(ctx: &RedisContext, server: usize, e: &BackendError) -> Bytes {
    bump(&ctx.stats.server_errors, 1);
    let addr = server_address(ctx, server);
    error(&format!("ERR backend {addr} {e}"))
}

/// The address of `server` for messages (cluster pools: the current owner of that slot).
fn server_address(ctx: &RedisContext, server: usize) -> String {
    match &ctx.cluster {
        Some(c) => c
            .shared
            .map()
            .shard(server.min(u16::MAX as usize) as u16)
            .map_or_else(|| "(cluster)".to_string(), |s| s.primary.clone()),
        None => ctx.pool.specs[server].address.clone(),
    }
}

impl Pending {
    /// The reply once complete; `None` means close the connection.
    fn poll(&mut self, cx: &mut Context<'_>, ctx: &RedisContext) -> Poll<Option<Bytes>> {
        match self {
            Pending::Ready(b) => Poll::Ready(Some(std::mem::take(b))),
            Pending::Quit => Poll::Ready(None),
            Pending::Routed(task) => Pin::new(task).poll(cx).map(|r| {
                Some(r.unwrap_or_else(|e| error(&format!("ERR kvrouter routing task failed: {e}"))))
            }),
            Pending::Single { rx, server } => match rx.poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(r) => Poll::Ready(Some(match r {
                    Ok(b) => b,
                    Err(e) => backend_error(ctx, *server, &e),
                })),
            },
            Pending::Scan { rx, server, n } => match rx.poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(r) => Poll::Ready(Some(match r {
                    Ok(b) => redis_merge::scan_reply(&b, *server, *n),
                    Err(e) => backend_error(ctx, *server, &e),
                })),
            },
            Pending::Merged(m) => {
                let mut waiting = false;
                for p in m.parts.iter_mut() {
                    if let Some(rx) = p.rx.as_mut() {
                        match rx.poll(cx) {
                            Poll::Pending => waiting = true,
                            Poll::Ready(r) => {
                                p.result = Some(r);
                                p.rx = None;
                            }
                        }
                    }
                }
                if waiting {
                    return Poll::Pending;
                }
                let mut replies = Vec::with_capacity(m.parts.len());
                for p in &m.parts {
                    match p.result.as_ref().expect("part complete") {
                        Ok(b) => replies.push(b.clone()),
                        Err(e) => return Poll::Ready(Some(backend_error(ctx, p.server, e))),
                    }
                }
                Poll::Ready(Some(redis_merge::merge(m.how, &replies, &m.part_of)))
            }
            Pending::Blocking(b) => loop {
                let r = match Pin::new(&mut b.rx).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => flatten(r),
                };
                if let (Ok(reply), Some(c)) = (&r, &ctx.cluster) {
                    if b.redirects < super::cluster::MAX_REDIRECTS {
                        if let Some((to, asking)) = c.shared.redirection(reply) {
                            b.redirects += 1;
                            let conn = Dedicated::open(c.shared.spec(&to, false), None);
                            let ask = asking.then(|| conn.send(super::cluster::asking_bytes()));
                            b.rx = conn.send(b.raw.clone());
                            b.hop = Some((conn, ask));
                            continue;
                        }
                    }
                }
                return Poll::Ready(Some(match r {
                    Ok(reply) => reply,
                    Err(e) => backend_error(ctx, b.server, &e),
                }));
            },
            Pending::Exec {
                rxs,
                first,
                last,
                server,
                _conn: _,
            } => {
                while let Some(rx) = rxs.front_mut() {
                    let r = match Pin::new(rx).poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(r) => flatten(r),
                    };
                    rxs.pop_front();
                    match r {
                        Err(e) => {
                            rxs.clear();
                            return Poll::Ready(Some(backend_error(ctx, *server, &e)));
                        }
                        Ok(b) if first.is_none() => *first = Some(b),
                        Ok(b) => *last = Some(b),
                    }
                }
                let first = first.take().unwrap_or_default();
                Poll::Ready(Some(if first.as_ref() != b"+OK\r\n" {
                    first // MULTI itself failed (e.g. NOAUTH): that is the answer
                } else {
                    last.take().unwrap_or_default()
                }))
            }
        }
    }
}

/// A transaction being queued (MULTI seen, EXEC not yet).
struct Multi {
    /// The commands, as received.
    cmds: Vec<Bytes>,
    /// The server the first keyed command chose.
    server: Option<usize>,
    /// Why EXEC must fail (redis: "previous errors").
    abort: Option<&'static str>,
}

/// Subscribed mode: one push connection per server subscribed on.
struct PubSub {
    /// By server (cluster pools: by slot for SSUBSCRIBE, `slots::SLOTS` for the rest).
    conns: std::collections::HashMap<usize, Dedicated>,
    sink: mpsc::UnboundedSender<(usize, Reply)>,
    rx: mpsc::UnboundedReceiver<(usize, Reply)>,
    channels: Vec<Bytes>,
    patterns: Vec<Bytes>,
    shard: Vec<Bytes>,
    /// Cluster: shard subscriptions moved per slot since its last message (bounds a MOVED
    /// back-and-forth between nodes that disagree).
    moves: std::collections::HashMap<usize, u32>,
}

impl PubSub {
    fn count(&self) -> usize {
        self.channels.len() + self.patterns.len()
    }
}

/// Serve one client until it quits, closes, breaks the protocol, or the proxy shuts down.
pub async fn serve<S: Io>(
    stream: S,
    ctx: Rc<RedisContext>,
    client_id: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conn = Conn {
        authed: ctx.open(),
        user: None,
        ctx,
        client_id,
        id: NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed),
        name: None,
        pending: VecDeque::new(),
        rbuf: BytesMut::with_capacity(16 * 1024),
        wbuf: BytesMut::with_capacity(16 * 1024),
        reading: true,
        parsing: true,
        barrier: false,
        blocking: false,
        deferred: None,
        multi: None,
        watch: None,
        watch_moved: Rc::default(),
        blocker: None,
        pubsub: None,
    };
    if let Err(e) = conn.run(&stream, &mut shutdown).await {
        tracing::debug!(error = %e, "client connection ended");
    }
}

struct Conn {
    ctx: Rc<RedisContext>,
    client_id: usize,
    /// CLIENT ID.
    id: u64,
    /// CLIENT SETNAME.
    name: Option<Bytes>,
    authed: bool,
    /// The `users` entry this client authenticated as.
    user: Option<usize>,
    pending: VecDeque<Pending>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// False after EOF or shutdown.
    reading: bool,
    /// False after QUIT or a protocol error: nothing more is parsed.
    parsing: bool,
    /// A barrier command is outstanding: parse nothing until the queue is empty.
    barrier: bool,
    /// ... and it is a blocking command (the client leaving cancels it).
    blocking: bool,
    /// A barrier command waiting for the replies before it.
    deferred: Option<RespRequest>,
    multi: Option<Multi>,
    /// The connection holding this client's WATCHed keys, and its server.
    watch: Option<(usize, Dedicated)>,
    /// Cluster pools: a WATCH of this watch connection was answered MOVED/ASK.
    watch_moved: Rc<std::cell::Cell<bool>>,
    /// The connection the last blocking command used (reused while alive, same server).
    blocker: Option<(usize, Dedicated)>,
    pubsub: Option<PubSub>,
}

impl Conn {
    async fn run<S: Io>(
        &mut self,
        stream: &S,
        shutdown: &mut watch::Receiver<bool>,
    ) -> io::Result<()> {
        if *shutdown.borrow() {
            return Ok(());
        }
        // One registration for the connection's life, not one per loop turn.
        let mut stopping = std::pin::pin!(shutdown.changed());
        loop {
            // Move every completed reply at the front into the output buffer.
            let mut closing = false;
            {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                while let Some(front) = self.pending.front_mut() {
                    match front.poll(&mut cx, &self.ctx) {
                        Poll::Ready(Some(b)) => {
                            self.wbuf.extend_from_slice(&b);
                            self.pending.pop_front();
                        }
                        Poll::Ready(None) => {
                            self.pending.clear();
                            closing = true;
                        }
                        Poll::Pending => break,
                    }
                }
            }
            if !closing && self.pending.is_empty() && (self.barrier || self.deferred.is_some()) {
                // The barrier is done (or may start now): carry on with the input.
                self.barrier = false;
                self.blocking = false;
                if let Some(req) = self.deferred.take() {
                    self.handle(req);
                }
                self.parse_all();
                continue;
            }
            if !self.wbuf.is_empty() {
                self.flush(stream)?;
            }
            if closing || (!self.reading && self.pending.is_empty() && self.deferred.is_none()) {
                return self.drain(stream).await;
            }
            let paused = self.barrier || self.deferred.is_some();
            let can_read = self.reading
                && self.pending.len() < MAX_PENDING
                && self.wbuf.len() < MAX_OUTPUT
                && !(paused && self.rbuf.len() >= MAX_UNPARSED);
            let interest = match (can_read, !self.wbuf.is_empty()) {
                (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
                (true, false) => Some(Interest::READABLE),
                (false, true) => Some(Interest::WRITABLE),
                (false, false) => None,
            };
            let ctx = self.ctx.clone();
            let idle = match self.ctx.idle_timeout {
                Some(t)
                    if self.pending.is_empty() && self.wbuf.is_empty() && self.pubsub.is_none() =>
                {
                    Some(t)
                }
                _ => None,
            };
            let pushes = self.pubsub.as_mut().map(|p| &mut p.rx);
            // A subscriber that stops reading stops taking messages (its output is bounded).
            let subscribed = pushes.is_some() && self.wbuf.len() < MAX_OUTPUT;
            tokio::select! {
                biased;
                ready = async { stream.ready(interest.expect("guarded")).await }, if interest.is_some() => {
                    let ready = ready?;
                    if ready.is_readable() && can_read && !self.read(stream)? {
                        return Ok(()); // the client left while blocked: cancel
                    }
                }
                done = poll_fn(|cx| self.pending.front_mut().expect("guarded").poll(cx, &ctx)), if !self.pending.is_empty() => {
                    match done {
                        Some(b) => {
                            self.wbuf.extend_from_slice(&b);
                            self.pending.pop_front();
                        }
                        None => {
                            self.pending.clear();
                            return self.drain(stream).await;
                        }
                    }
                }
                msg = async { pushes.expect("guarded").recv().await }, if subscribed => {
                    if let Some((server, reply)) = msg {
                        if !self.pushed(server, reply) {
                            self.parsing = false;
                            self.reading = false;
                        }
                    }
                }
                _ = &mut stopping, if self.reading => {
                    self.reading = false;
                    if self.blocking || self.pubsub.is_some() {
                        return Ok(());
                    }
                }
                _ = async { tokio::time::sleep(idle.expect("guarded")).await }, if idle.is_some() => {
                    tracing::debug!(client = self.client_id, "closing an idle client");
                    return Ok(());
                }
            }
        }
    }

    /// Write whatever can be written now without waiting.
    fn flush<S: Io>(&mut self, stream: &S) -> io::Result<()> {
        write_some(stream, &mut self.wbuf)
    }

    /// Write out everything left, then return (the connection closes when dropped).
    async fn drain<S: Io>(&mut self, stream: &S) -> io::Result<()> {
        write_all(stream, &mut self.wbuf).await
    }

    /// Read and parse what arrived. Returns false when the client left while a blocking command
    /// was waiting: the caller drops everything, which closes the dedicated connection.
    fn read<S: Io>(&mut self, stream: &S) -> io::Result<bool> {
        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
            self.rbuf.reserve(16 * 1024);
        }
        match stream.try_read_drain(&mut self.rbuf) {
            Ok(0) => {
                self.reading = false;
                return Ok(!self.blocking);
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) => return Err(e),
        }
        self.follow_reload();
        self.parse_all();
        Ok(true)
    }

    /// After a reload, move to the new routing at the first batch boundary where nothing is in
    /// flight and no connection is pinned (transaction, WATCH, blocking, pub/sub): replies
    /// never mix routing tables, and pinned state stays on the server it was made on.
    fn follow_reload(&mut self) {
        let idle = self.pending.is_empty()
            && self.deferred.is_none()
            && self.multi.is_none()
            && self.watch.is_none()
            && self.blocker.is_none()
            && self.pubsub.is_none();
        if !idle {
            return;
        }
        let Some(newer) = self.ctx.follow.newer_redis() else {
            return;
        };
        // Keep the client's identity if its user still exists with the same password and may
        // still use the listener's pools; else it must AUTH again.
        if let Some(u) = self.user {
            let old = &self.ctx.users[u];
            self.user = newer
                .users
                .iter()
                .position(|n| {
                    n.name == old.name && same(n.password.as_bytes(), old.password.as_bytes())
                })
                .filter(|&i| newer.user_reaches(i));
            self.authed = self.user.is_some();
        } else if self.authed && !self.ctx.open() {
            // Authenticated with the pool's password: still fine unless users now apply.
            self.authed = newer.users.is_empty();
        } else {
            // Open before (or not authenticated): authentication is whatever the new config says.
            self.authed = newer.open();
        }
        self.ctx = newer;
    }

    fn parse_all(&mut self) {
        while self.parsing && !self.barrier && self.deferred.is_none() {
            match parse_request(&mut self.rbuf, &self.ctx.limits) {
                Ok(None) => return,
                Ok(Some(req)) => self.handle(req),
                Err(fatal) => {
                    bump(&self.ctx.stats.client_errors, 1);
                    self.pending.push_back(Pending::Ready(fatal.to_reply()));
                    self.pending.push_back(Pending::Quit);
                    self.parsing = false;
                }
            }
        }
    }

    fn reply(&mut self, b: Bytes) {
        self.pending.push_back(Pending::Ready(b));
    }

    fn reply_static(&mut self, b: &'static [u8]) {
        self.reply(Bytes::from_static(b));
    }

    /// An error reply; inside MULTI it also dooms the transaction, as redis does.
    fn reject(&mut self, msg: &str) {
        bump(&self.ctx.stats.client_errors, 1);
        if let Some(m) = self.multi.as_mut() {
            m.abort.get_or_insert("previous errors");
        }
        self.reply(error(msg));
    }

    fn backend(&self, server: usize) -> &BackendHandle {
        let conns = &self.ctx.backends[server];
        &conns[self.client_id % conns.len()]
    }

    /// Wait for the replies before this command (a barrier); true when it must wait.
    fn defer(&mut self, req: &RespRequest) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        self.deferred = Some(req.clone());
        true
    }

    fn handle(&mut self, req: RespRequest) {
        let args = &req.args;
        let Some(info) = rc::resolve(args) else {
            let msg = unknown_command(args);
            return self.reject(&msg);
        };
        if !info.arity_ok(args.len()) {
            return self.reject(&format!(
                "ERR wrong number of arguments for '{}' command",
                info.name
            ));
        }
        if !self.authed && !matches!(info.name, "auth" | "hello" | "quit") {
            return self.reject("NOAUTH Authentication required.");
        }
        if let Some(u) = self.user {
            let user = &self.ctx.users[u];
            if let Some(allowed) = &user.commands {
                let base = info.name.split('|').next().unwrap_or(info.name);
                let exempt = matches!(base, "auth" | "hello" | "quit" | "reset");
                if !exempt && !allowed.iter().any(|c| c == base || c == info.name) {
                    let msg = format!(
                        "NOPERM User {} has no permissions to run the '{}' command",
                        user.name,
                        info.name.replace('|', " ")
                    );
                    return self.reject(&msg);
                }
            }
        }
        if self.pubsub.is_some() {
            return self.subscribed(info, req);
        }
        if self.multi.is_some() {
            return self.queue(info, req);
        }
        let handling = handling_for(info, args);
        if let Some(root) = self.ctx.routing.clone() {
            let keyed = matches!(handling, Handling::Route | Handling::Split);
            // PUBLISH goes where the subscriptions are: the first pool.
            if keyed && !matches!(info.name, "publish" | "spublish") {
                if let Some(p) = self.hot_get(info, &req) {
                    return self.pending.push_back(p);
                }
                let hot_keys = self.hot_written_keys(info, &req);
                let split = handling == Handling::Split;
                let stats = self.ctx.stats.clone();
                return match super::redis_route::dispatch(
                    &root,
                    info,
                    req,
                    split,
                    self.client_id,
                    stats,
                ) {
                    Ok(task) => {
                        let pending = match hot_keys {
                            None => Pending::Routed(task),
                            Some(keys) => self.hot_write(keys, 0, Rx::Routed(task)),
                        };
                        self.pending.push_back(pending)
                    }
                    Err(e) => self.reject(&e),
                };
            }
        }
        match handling {
            Handling::Route => self.route(info, req),
            Handling::Split => self.split(info, req),
            Handling::Local => self.local(info, req),
            Handling::FanOut => self.fan_out(info, req),
            Handling::Dedicated => self.dedicated(info, req),
            Handling::Refuse(why) => self.reject(&format!(
                "ERR {} is not supported by kvrouter: {why}",
                info.name.replace('|', " ").to_uppercase()
            )),
        }
    }

    /// The one server all keys of the command map to (None: the command has no key).
    fn server_of(&self, info: &CommandInfo, args: &[Bytes]) -> Result<Option<usize>, String> {
        let keys = key_indices(info, args).map_err(|e| format!("ERR {e}"))?;
        let mut server = None;
        for k in keys {
            if let Some(root) = &self.ctx.routing {
                super::redis_route::check_home(root, &self.ctx.pool, info, &args[k])?;
            }
            let s = self.place(&args[k]).ok_or_else(|| {
                format!(
                    "ERR no server available in pool {}",
                    self.ctx.pool.config.name
                )
            })?;
            match server {
                None => server = Some(s),
                Some(x) if x != s => return Err(self.crossslot("Keys in request don't")),
                _ => {}
            }
        }
        Ok(server)
    }

    fn crossslot(&self, what: &str) -> String {
        if self.ctx.cluster.is_some() {
            return format!("CROSSSLOT {what} hash to the same slot");
        }
        let how = if self.ctx.pool.config.hash_tag.is_some() {
            "use hash tags {...} to force them together"
        } else {
            "set the pool's hash_tag, e.g. \"{}\", and use hash tags {...} to force them together"
        };
        format!("CROSSSLOT {what} hash to the same server ({how})")
    }

    fn route(&mut self, info: &CommandInfo, req: RespRequest) {
        if let Some(p) = self.hot_get(info, &req) {
            return self.pending.push_back(p);
        }
        match self.server_of(info, &req.args) {
            Ok(Some(server)) => {
                let hot_keys = self.hot_written_keys(info, &req);
                let rx = self.send(server, req.raw, info.is_readonly());
                let pending = match hot_keys {
                    Some(keys) => self.hot_write(keys, server, rx),
                    None => Pending::Single { rx, server },
                };
                self.pending.push_back(pending);
            }
            Ok(None) => self.reject(&format!(
                "ERR {} without keys cannot be routed by kvrouter: there is no key to pick a server",
                info.name.to_uppercase()
            )),
            Err(e) => self.reject(&e),
        }
    }

    /// MGET, MSET, DEL, UNLINK, EXISTS, TOUCH: one request per server with its keys.
    fn split(&mut self, info: &CommandInfo, req: RespRequest) {
        let args = &req.args;
        let keys = match key_indices(info, args) {
            Ok(k) => k,
            Err(e) => return self.reject(&format!("ERR {e}")),
        };
        let hot_keys = self.hot_written_keys(info, &req);
        let with_value = info.name == "mset";
        let mut servers: Vec<usize> = Vec::new();
        let mut part_args: Vec<Vec<&Bytes>> = Vec::new();
        let mut part_of = Vec::with_capacity(keys.len());
        for &k in &keys {
            let Some(server) = self.place(&args[k]) else {
                let msg = format!(
                    "ERR no server available in pool {}",
                    self.ctx.pool.config.name
                );
                return self.reject(&msg);
            };
            let p = match servers.iter().position(|&s| s == server) {
                Some(p) => p,
                None => {
                    servers.push(server);
                    part_args.push(vec![&args[0]]);
                    servers.len() - 1
                }
            };
            part_args[p].push(&args[k]);
            if with_value {
                part_args[p].push(&args[k + 1]);
            }
            part_of.push(p);
        }
        let read = info.is_readonly();
        if servers.len() == 1 {
            let server = servers[0];
            let rx = self.send(server, req.raw, read);
            return self.pending.push_back(Pending::Single { rx, server });
        }
        let how = rc::merge(info).unwrap_or(Merge::Sum);
        let parts = servers
            .iter()
            .zip(&part_args)
            .map(|(&server, a)| Part {
                server,
                rx: Some(self.send(server, encode_request(a).raw, read)),
                result: None,
            })
            .collect();
        let merged = Pending::Merged(Box::new(Merged {
            how,
            parts,
            part_of,
        }));
        let pending = match hot_keys {
            None => merged,
            // MSET/DEL/UNLINK of hot keys: the same two invalidation rounds as a single write.
            Some(keys) => {
                let ctx = self.ctx.clone();
                let mut merged = merged;
                let task = tokio::task::spawn_local(async move {
                    poll_fn(|cx| merged.poll(cx, &ctx))
                        .await
                        .unwrap_or_default()
                });
                self.hot_write(keys, 0, Rx::Routed(task))
            }
        };
        self.pending.push_back(pending);
    }

    fn fan_out(&mut self, info: &CommandInfo, req: RespRequest) {
        let pool = &self.ctx.pool.config;
        if GATED_COMMANDS.contains(&info.name)
            && !pool.allow_commands.iter().any(|c| c == info.name)
        {
            let msg = format!(
                "ERR {} is disabled on pool {} (allow_commands): it acts on every server of the pool; \
                 add `allow_commands: [{}]` to the pool to enable it",
                info.name.to_uppercase(),
                pool.name,
                info.name
            );
            return self.reject(&msg);
        }
        if let Some(c) = self.ctx.cluster.clone() {
            return self.cluster_fan_out(&c, info, req);
        }
        let n = self.ctx.pool.specs.len();
        if info.name == "scan" {
            let cursor = std::str::from_utf8(&req.args[1])
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            let Some(cursor) = cursor else {
                return self.reject("ERR invalid cursor");
            };
            let (server, backend_cursor) = redis_merge::split_cursor(cursor, n);
            let c = backend_cursor.to_string();
            let mut args: Vec<&[u8]> = req.args.iter().map(|a| a.as_ref()).collect();
            args[1] = c.as_bytes();
            let rx = self
                .backend(server)
                .send(encode_request(&args).raw, ReplyKind::Resp)
                .into();
            return self.pending.push_back(Pending::Scan { rx, server, n });
        }
        let how = rc::merge(info).unwrap_or(Merge::AllEqual);
        let parts = (0..n)
            .map(|server| Part {
                server,
                rx: Some(
                    self.backend(server)
                        .send(req.raw.clone(), ReplyKind::Resp)
                        .into(),
                ),
                result: None,
            })
            .collect();
        self.pending.push_back(Pending::Merged(Box::new(Merged {
            how,
            parts,
            part_of: Vec::new(),
        })));
    }
}

/// The first element of a pushed array (`message`, `subscribe`, ...).
fn push_kind(frame: &Bytes) -> Option<&[u8]> {
    let rest = frame.strip_prefix(b"*")?;
    let nl = memchr::memchr(b'\n', rest)?;
    let rest = rest[nl + 1..].strip_prefix(b"$")?;
    let nl2 = memchr::memchr(b'\n', rest)?;
    let len: usize = std::str::from_utf8(&rest[..nl2.checked_sub(1)?])
        .ok()?
        .parse()
        .ok()?;
    rest.get(nl2 + 1..nl2 + 1 + len)
}

/// `[kind, name, count]` as redis sends it for (un)subscribe confirmations.
fn push_msg(out: &mut BytesMut, kind: &str, name: Option<&Bytes>, count: usize) {
    resp::write_array_len(out, Some(3));
    resp::write_bulk(out, Some(kind.as_bytes()));
    resp::write_bulk(out, name.map(|n| n.as_ref()));
    resp::write_integer(out, count as i64);
}

fn bulk(b: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(b.len() + 16);
    resp::write_bulk(&mut out, Some(b));
    out.freeze()
}

fn integer(v: i64) -> Bytes {
    let mut out = BytesMut::with_capacity(24);
    resp::write_integer(&mut out, v);
    out.freeze()
}

/// redis 7.0's `unknown command` / `unknown subcommand` texts.
fn unknown_command(args: &[Bytes]) -> String {
    let lossy = |b: &[u8], max: usize| {
        let s = String::from_utf8_lossy(&b[..b.len().min(max)]).into_owned();
        s.replace(['\r', '\n'], " ")
    };
    if let Some(container) = args.first().and_then(|a| rc::lookup(a)) {
        if args.len() >= 2 && !container.subcommands.is_empty() {
            return format!(
                "ERR unknown subcommand '{}'. Try {} HELP.",
                lossy(&args[1], 128),
                container.name.to_uppercase()
            );
        }
    }
    let mut rest = String::new();
    for a in args.iter().skip(1) {
        if rest.len() >= 128 {
            break;
        }
        rest.push_str(&format!("'{}' ", lossy(a, 128 - rest.len())));
    }
    format!(
        "ERR unknown command '{}', with args beginning with: {rest}",
        lossy(args.first().map_or(&b""[..], |a| a), 128)
    )
}

/// A cluster pool whose map has no owner for what a command needs.
const NO_MAP: &str =
    "CLUSTERDOWN kvrouter knows no cluster node for this yet (refreshing the slot map); try again";

/// Where `key` goes: its server (sharded pools) or its slot (cluster pools).
fn place(ctx: &RedisContext, key: &[u8]) -> Option<usize> {
    if ctx.cluster.is_some() {
        return Some(slots::key_slot(key) as usize);
    }
    ctx.pool.server_for(key)
}

/// Send a request to `server` on the connection `client_id` uses; on a cluster pool to the
/// owner of that slot (or a replica for reads, per `read_from`), following redirections.
fn send(ctx: &RedisContext, client_id: usize, server: usize, raw: Bytes, read: bool) -> Rx {
    match &ctx.cluster {
        Some(c) => Rx::Cluster(c.send(server as u16, raw, read, client_id)),
        None => {
            let conns = &ctx.backends[server];
            conns[client_id % conns.len()]
                .send(raw, ReplyKind::Resp)
                .into()
        }
    }
}

/// Cluster pools (see `cluster.rs`): a "server" index is a slot; `SLOTS` stands for "any node"
/// (SUBSCRIBE and PSUBSCRIBE: a cluster broadcasts PUBLISH to every node).
impl Conn {
    fn place(&self, key: &[u8]) -> Option<usize> {
        place(&self.ctx, key)
    }

    fn send(&self, server: usize, raw: Bytes, read: bool) -> Rx {
        send(&self.ctx, self.client_id, server, raw, read)
    }

    /// The spec of a dedicated connection to `server` (cluster pools: the slot's primary).
    fn spec_of(&self, server: usize) -> Result<Arc<ServerSpec>, String> {
        let Some(c) = &self.ctx.cluster else {
            return Ok(self.ctx.pool.specs[server].clone());
        };
        let map = c.shared.map();
        let addr = if server < slots::SLOTS {
            map.shard(server as u16).map(|s| s.primary.clone())
        } else {
            map.primaries().first().cloned()
        };
        match addr {
            Some(a) => Ok(c.shared.spec(&a, false)),
            None => {
                c.shared.refresh();
                Err(NO_MAP.to_string())
            }
        }
    }

    /// DBSIZE, SCAN, RANDOMKEY, SCRIPT ...: over the primaries of the current map. The SCAN
    /// cursor encodes the primary's index, so a walk is only complete while the topology is
    /// stable.
    fn cluster_fan_out(&mut self, c: &Rc<ClusterWorker>, info: &CommandInfo, req: RespRequest) {
        let primaries = c.shared.map().primaries();
        if primaries.is_empty() {
            c.shared.refresh();
            return self.reject(NO_MAP);
        }
        let n = primaries.len();
        if info.name == "scan" {
            let cursor = std::str::from_utf8(&req.args[1])
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            let Some(cursor) = cursor else {
                return self.reject("ERR invalid cursor");
            };
            let (server, backend_cursor) = redis_merge::split_cursor(cursor, n);
            let cur = backend_cursor.to_string();
            let mut args: Vec<&[u8]> = req.args.iter().map(|a| a.as_ref()).collect();
            args[1] = cur.as_bytes();
            let raw = encode_request(&args).raw;
            let rx = Rx::Cluster(c.send_to(&primaries[server], raw, self.client_id));
            return self.pending.push_back(Pending::Scan { rx, server, n });
        }
        let how = rc::merge(info).unwrap_or(Merge::AllEqual);
        let parts = primaries
            .iter()
            .enumerate()
            .map(|(server, addr)| Part {
                server,
                rx: Some(Rx::Cluster(c.send_to(
                    addr,
                    req.raw.clone(),
                    self.client_id,
                ))),
                result: None,
            })
            .collect();
        self.pending.push_back(Pending::Merged(Box::new(Merged {
            how,
            parts,
            part_of: Vec::new(),
        })));
    }
}
