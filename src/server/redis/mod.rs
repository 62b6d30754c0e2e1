//! One Redis (RESP2) client connection: parse pipelined commands, route each by its keys to its
//! server's shared backend connection, and write the replies back strictly in request order.
//!
//! Per command, the command table (`protocol::redis_commands`) says what to do:
//! - **route**: every key of the command must live on one server (else `-CROSSSLOT`, which
//!   names hash tags as the way to keep keys together); the request is forwarded untouched and
//!   the reply passed through byte for byte.
//! - **split**: MGET, MSET, DEL, UNLINK, EXISTS, TOUCH go to each server with that server's keys,
//!   and the replies are merged (`redis_merge`); a failed server fails the whole command with an
//!   `-ERR` naming it (no partial answers for Redis).
//! - **local**: PING, ECHO, QUIT, SELECT 0, HELLO 2, AUTH, RESET, CLIENT SETNAME/GETNAME/ID,
//!   INFO, COMMAND COUNT, TIME are answered here: the client's connection is to the proxy.
//! - **first server**: scripts with numkeys 0 and bad key counts (redis answers its own error).
//! - **fan-out**: DBSIZE, SCAN (a cursor walking the servers in turn), RANDOMKEY, SCRIPT
//!   LOAD/EXISTS/FLUSH, FUNCTION LOAD/DELETE/FLUSH, PUBSUB CHANNELS/NUMSUB/NUMPAT/...; FLUSHALL, FLUSHDB and KEYS only when the pool
//!   lists them in `allow_commands`.
//! - **dedicated**: state a shared connection cannot hold for one client gets a connection of
//!   its own (`backend::Dedicated`): blocking commands (so a BLPOP never stalls the clients
//!   multiplexed behind it, and no pool timeout cuts it short), WATCH (the watched keys live on
//!   that connection until EXEC/DISCARD/UNWATCH), EXEC (MULTI, the queued commands and EXEC are
//!   sent together on the client's own connection), and subscriptions (one connection per
//!   server the client subscribes on; patterns subscribe on every server). A (un)subscribe
//!   confirmation waits for the servers' own, so a PUBLISH after it counts the subscriber.
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
//! **Files.** This one holds the connection (its I/O loop, parsing, dispatch by the command
//! table); `keyed.rs` the keyed commands (route, split, fan-out), `leaf.rs` Redis as a
//! route-tree leaf (and replica failover), `context.rs` the per-worker context, `pending.rs` the
//! replies on their way, `local.rs` the commands answered here, `pinned.rs`
//! transactions, blocking commands and pub/sub, `hot.rs` hot keys, `policy.rs` the
//! command policy (refused commands, `allow_commands`, `scripts`) checked before any routing.
//!
//! **RESP3 is not offered**: `HELLO 3` gets `-NOPROTO`. Replies are passed through from RESP2
//! backend connections unparsed; serving RESP3 would mean either a second set of RESP3 backend
//! connections (whose replies differ in shape) or re-encoding every reply, and push messages of
//! pub/sub would change shape too. Clients fall back to RESP2 on `-NOPROTO`.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot, watch};

use super::client::{self, ClientLimits, Session};
use super::cluster::{ClusterRx, ClusterWorker};
use super::pool::PoolRuntime;
use super::stats::{bump, Stats};
use crate::backend::io::Io;
use crate::backend::{BackendError, BackendHandle, Dedicated, Reply, ReplyKind, ServerSpec};
use crate::protocol::redis_commands::{
    self as rc, flags, handling_for, key_indices, CommandInfo, Handling, Merge,
};
use crate::protocol::resp::merge::{self, error};
use crate::protocol::resp::{self, encode_request, parse_request, RespLimits, RespRequest};
use crate::routing::route::Node;
use crate::routing::slots;

mod context;
mod hot;
mod keyed;
pub mod leaf;
mod local;
mod pending;
mod pinned;
mod policy;

use super::metrics::{redis_command_index, redis_invalid, redis_other};
use keyed::{place, send, NO_MAP};
use pending::{backend_error, flatten, Blocking, Merged, Part, Pending, Queue, Rx};

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
    /// The listener's route (a pool leaf, or a tree of them: `leaf`); `pool` and `backends` are
    /// its first pool, which keyless, fan-out and dedicated-connection commands use.
    pub routing: Node<leaf::Redis>,
    /// The route is one pool without replicas: keyed commands skip the tree (see `keyed.rs`).
    pub direct: bool,
    /// Every pool the listener's route reaches (computed once from the config).
    pub reach: Vec<String>,
    /// The listener's per-client limits. `client_idle_timeout` is like redis-server's
    /// `timeout`: it closes a client with nothing in flight, but never a subscriber or a client
    /// blocked in a command.
    pub client: ClientLimits,
    /// Finds this listener's context in a newer config generation after a reload.
    pub follow: super::follow::Follow<RedisContext>,
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

/// A transaction being queued (MULTI seen, EXEC not yet).
struct Multi {
    /// The commands, as received.
    cmds: Vec<Bytes>,
    /// The server the first keyed command chose.
    server: Option<usize>,
    /// Why EXEC must fail (redis: "previous errors").
    abort: Option<&'static str>,
}

/// Subscribed mode: one push connection per server subscribed on. Their channel is emptied into
/// the client's queue whenever the client's task runs (`poll_events`), where `max_client_output`
/// bounds it, and a push connection reads at most `READ_TURN` (1 MiB) per turn: the channel never
/// holds more than that per connection.
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
    /// Cluster: the nodes classic channels subscribe on (connection key `SLOTS + 1 + index`),
    /// and each channel's connection key, so UNSUBSCRIBE goes where SUBSCRIBE went.
    nodes: Vec<String>,
    homes: std::collections::HashMap<Bytes, usize>,
    /// Per server, the names sent to it and not yet confirmed by it, in the order sent.
    awaiting: std::collections::HashMap<usize, VecDeque<Await>>,
    /// Subscribe-family commands sent so far (tells one command's names from the next's).
    commands: u64,
    /// The client unsubscribed from everything: the connections stay until the servers
    /// confirm (so a PUBLISH after the last confirmation counts 0), and deliver nothing more.
    closing: bool,
}

/// A name sent to a server in a (un)subscribe command: `tx` fires when the server confirms it.
struct Await {
    kind: &'static str,
    name: Bytes,
    command: u64,
    tx: oneshot::Sender<()>,
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
        pending: Queue::default(),
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
    if let Err(e) = client::run(&mut conn, &stream, &mut shutdown, client_id).await {
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
    pending: Queue,
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
    /// Boxed: most clients never subscribe, and every connection's task carries this struct.
    pubsub: Option<Box<PubSub>>,
}

/// The client loop (`server::client`) drives the connection; this is what it asks.
impl Session for Conn {
    /// Replies one client may owe before kvrouter stops reading from it.
    const MAX_PENDING: usize = 4096;

    fn limits(&self) -> &ClientLimits {
        &self.ctx.client
    }

    fn metrics(&self) -> &super::metrics::ListenerMetrics {
        &self.ctx.metrics
    }

    fn queued(&self) -> usize {
        self.pending.len()
    }

    fn poll_front(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let front = self.pending.front_mut().expect("queued");
        match front.poll(cx, &self.ctx) {
            Poll::Ready(Some(b)) => {
                self.pending.pop_front();
                Poll::Ready(Some(b))
            }
            Poll::Ready(None) => {
                self.pending.clear();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Subscription pushes: all that arrived is queued at once (the client's output limit
    /// bounds them), so the channel holds no more than one read of the push connections.
    fn poll_events(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut got = false;
        while let Some(ps) = self.pubsub.as_mut() {
            let Poll::Ready(Some((server, reply))) = ps.rx.poll_recv(cx) else {
                break;
            };
            got = true;
            if ps.closing {
                match reply {
                    Ok(frame) => _ = ps.confirmed(server, &frame),
                    Err(_) => ps.awaiting.clear(), // gone: nothing left to confirm
                }
                if ps.awaiting.is_empty() {
                    self.pubsub = None;
                }
                continue;
            }
            if !self.pushed(server, reply) {
                self.parsing = false;
            }
        }
        if got {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn parse(&mut self, rbuf: &mut BytesMut, max: usize) -> usize {
        self.follow_reload();
        self.parse_all(rbuf, max)
    }

    fn parsing(&self) -> bool {
        self.parsing
    }

    fn paused(&self) -> bool {
        self.barrier || self.deferred.is_some()
    }

    /// The barrier is done (or may start now): run the deferred command.
    fn resume(&mut self) -> bool {
        if !self.paused() {
            return false;
        }
        self.barrier = false;
        self.blocking = false;
        if let Some(req) = self.deferred.take() {
            self.handle(req);
        }
        true
    }

    fn blocked(&self) -> bool {
        self.blocking
    }

    fn subscribed(&self) -> bool {
        self.in_pubsub()
    }
}

impl Conn {
    /// In subscribed mode (not just waiting for the servers to confirm the last unsubscribe).
    fn in_pubsub(&self) -> bool {
        self.pubsub.as_ref().is_some_and(|p| !p.closing)
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
        let Some(newer) = self.ctx.follow.newer() else {
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

    /// Parse and handle at most `max` commands; how many were.
    fn parse_all(&mut self, rbuf: &mut BytesMut, max: usize) -> usize {
        let mut n = 0;
        while self.parsing && !self.barrier && self.deferred.is_none() && n < max {
            n += 1;
            match parse_request(rbuf, &self.ctx.limits) {
                Ok(None) => return n - 1,
                Ok(Some(req)) => self.handle(req),
                Err(fatal) => {
                    bump(&self.ctx.stats.client_errors, 1);
                    self.pending.count_next(redis_invalid());
                    self.pending.push_back(Pending::Ready(fatal.to_reply()));
                    self.pending.push_back(Pending::Quit);
                    self.parsing = false;
                }
            }
        }
        n
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

    /// Serve one request; its first reply counts it in `kvrouter_requests_total`.
    fn handle(&mut self, req: RespRequest) {
        self.dispatch(req);
        self.pending.count_none(); // deferred: counted when it is handled again
    }

    fn dispatch(&mut self, req: RespRequest) {
        let args = &req.args;
        let Some(info) = rc::resolve(args) else {
            self.pending.count_next(redis_other());
            let msg = unknown_command(args);
            return self.reject(&msg);
        };
        self.pending.count_next(redis_command_index(info));
        if let Err(msg) = rc::check(info, args) {
            return self.reject(&msg);
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
        let handling = handling_for(info, args);
        if let Some(msg) = self.refused(info, handling) {
            return self.reject(&msg);
        }
        if self.in_pubsub() {
            return self.subscribed(info, req);
        }
        if self.multi.is_some() {
            return self.queue(info, req);
        }
        if matches!(handling, Handling::Route | Handling::Dedicated)
            && rc::to_first_server(info, args)
        {
            return self.first_server(req.raw);
        }
        if !self.ctx.direct {
            let root = self.ctx.routing.clone();
            let keyed = matches!(handling, Handling::Route | Handling::Split);
            // PUBLISH goes where the subscriptions are: the first pool.
            if keyed && !matches!(info.name, "publish" | "spublish") {
                if let Some(p) = self.hot_get(info, &req) {
                    return self.pending.push_back(p);
                }
                let hot_keys = self.hot_written_keys(info, &req);
                let split = handling == Handling::Split;
                let stats = self.ctx.stats.clone();
                return match leaf::dispatch(&root, info, req, split, self.client_id, stats) {
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
            Handling::Refuse(why) => self.reject(&policy::refusal(info, why)),
        }
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
