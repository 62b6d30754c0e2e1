//! One memcached client connection: parse a batch of pipelined requests, route each key to its
//! server's backend connection, and write the replies back strictly in request order.
//!
//! Replies are forwarded as the backend sent them, except multi-server retrievals, whose items
//! are merged in the client's key order under one `END`. A server that fails in a multi-server
//! get turns its keys into misses (a miss is always safe for a cache) and is counted; when every
//! server of a retrieval fails, the client gets `SERVER_ERROR` with the reason.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::sync::{oneshot, watch};

use super::client::{self, ClientLimits, Session};
use super::follow::Follow;
use super::hot::HotCtx;
use super::metrics::{command_index, ListenerMetrics, Outcome, INVALID};
use super::pool::PoolRuntime;
use super::stats::{bump, Stats};
use crate::backend::io::Io;
use crate::backend::{BackendError, BackendHandle, Reply, ReplyKind};
use crate::protocol::memcache::{self, Command, Parsed, Request};
use crate::routing::route::Node;
use crate::routing::split::Split;
use leaf::McOp;

mod context;
mod hot;
pub mod leaf;
mod pending;

use pending::{flatten, trim_crlf, MultiGet, Part, Pending};

/// What a client connection needs from its worker.
pub struct McContext {
    pub pool: Arc<PoolRuntime>,
    /// `backends[server][i]`: this worker's connections to each server of the pool.
    pub backends: Rc<Vec<Vec<BackendHandle>>>,
    pub stats: Arc<Stats>,
    pub threads: usize,
    /// The listener's route: a pool leaf for a plain pool, else a tree (`pool` and `backends`
    /// are then its first pool's, for what is not routed by key).
    pub route: Node<leaf::Memcache>,
    /// Every pool the listener's route reaches (what `flush_all` flushes).
    pub flush_targets: Vec<leaf::Target>,
    /// Parser limits: the pool's, tightened by the listener's `max_request_bytes`.
    pub limits: memcache::Limits,
    /// The listener's per-client limits (idle and request timeouts, output).
    pub client: ClientLimits,
    /// The listener's TLS acceptor (used when a client connects).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub metrics: Arc<ListenerMetrics>,
    /// Finds this listener's context in a newer config generation after a reload.
    pub follow: Follow<McContext>,
    /// `coalesce_misses`: this worker's plain gets in flight, by key.
    pub coalesce: Option<RefCell<Coalescer>>,
    /// `hot_keys`: this worker's sampler and flights, and the listener's shared machinery.
    pub hot: Option<HotCtx>,
}

/// Miss coalescing (`coalesce_misses: true`): a plain single-key `get` of a key that another
/// client of this worker is already getting waits for that request's reply instead of sending
/// its own. A write of the key through this worker ends the sharing for later gets (they send
/// their own request), so a client that sets then gets a key always reads its own write.
#[derive(Default)]
pub struct Coalescer {
    next_id: u64,
    flights: HashMap<Bytes, Flight>,
}

struct Flight {
    id: u64,
    waiters: Rc<RefCell<Vec<oneshot::Sender<Reply>>>>,
}

/// Serve one client until it quits, closes, breaks the protocol, or the proxy shuts down.
pub async fn serve<S: Io>(
    stream: S,
    ctx: Rc<McContext>,
    client_id: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conn = Conn {
        ctx,
        older: VecDeque::new(),
        client_id,
        pending: VecDeque::new(),
        swallow: 0,
        reading: true,
    };
    if let Err(e) = client::run(&mut conn, &stream, &mut shutdown, client_id).await {
        tracing::debug!(error = %e, "client connection ended");
    }
}

struct Conn {
    ctx: Rc<McContext>,
    /// After a reload: the contexts of older generations, each with how many of the requests
    /// at the front of `pending` were sent with it (they finish on it).
    older: VecDeque<(Rc<McContext>, usize)>,
    client_id: usize,
    pending: VecDeque<Pending>,
    swallow: usize,
    /// False after quit or a fatal parse error: finish what is pending, then close.
    reading: bool,
}

/// The client loop (`server::client`) drives the connection; this is what it asks.
impl Session for Conn {
    /// Replies one client may owe before kvrouter stops reading from it.
    const MAX_PENDING: usize = 1024;

    fn limits(&self) -> &ClientLimits {
        &self.ctx.client
    }

    fn metrics(&self) -> &ListenerMetrics {
        &self.ctx.metrics
    }

    fn queued(&self) -> usize {
        self.pending.len()
    }

    fn poll_front(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        // The context the front request was sent with.
        let ctx = self.older.front().map_or(&self.ctx, |(c, _)| c);
        let front = self.pending.front_mut().expect("queued");
        match front.poll(cx, ctx) {
            Poll::Ready(Some(b)) => {
                self.pop_front();
                Poll::Ready(Some(b))
            }
            Poll::Ready(None) => {
                self.pending.clear();
                self.older.clear();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn parse(&mut self, rbuf: &mut BytesMut, max: usize) -> usize {
        self.follow_reload();
        self.parse_all(rbuf, max)
    }

    fn parsing(&self) -> bool {
        self.reading
    }

    fn mid_request(&self) -> bool {
        self.swallow > 0
    }
}

impl Conn {
    fn pop_front(&mut self) {
        self.pending.pop_front();
        if let Some((_, n)) = self.older.front_mut() {
            *n -= 1;
            if *n == 0 {
                self.older.pop_front();
            }
        }
    }

    /// After a reload, switch to the newest context; requests already sent finish on theirs.
    fn follow_reload(&mut self) {
        if let Some(new) = self.ctx.follow.newer() {
            let owed = self.pending.len() - self.older.iter().map(|(_, n)| n).sum::<usize>();
            let old = std::mem::replace(&mut self.ctx, new);
            if owed > 0 {
                self.older.push_back((old, owed));
            }
        }
    }

    /// Parse and dispatch at most `max` requests; how many were.
    fn parse_all(&mut self, rbuf: &mut BytesMut, max: usize) -> usize {
        let limits = self.ctx.limits;
        let mut n = 0;
        while self.reading && n < max {
            if self.swallow > 0 {
                let k = self.swallow.min(rbuf.len());
                let _ = rbuf.split_to(k);
                self.swallow -= k;
                if self.swallow > 0 {
                    return n;
                }
            }
            if rbuf.is_empty() {
                return n;
            }
            n += 1;
            match memcache::parse_request(rbuf, &limits) {
                Ok(None) => return n - 1,
                Ok(Some(Parsed::Request(req))) => self.dispatch(req),
                Ok(Some(Parsed::Error { reply, swallow })) => {
                    bump(&self.ctx.stats.client_errors, 1);
                    self.ctx.metrics.request(INVALID, Outcome::of_reply(&reply));
                    self.swallow = swallow;
                    self.pending.push_back(Pending::Ready(reply));
                }
                Ok(Some(Parsed::TooLarge {
                    reply,
                    swallow,
                    unlink,
                })) => {
                    bump(&self.ctx.stats.client_errors, 1);
                    self.ctx.metrics.request(INVALID, Outcome::of_reply(&reply));
                    self.swallow = swallow;
                    self.pending.push_back(Pending::Ready(reply));
                    self.unlink(unlink);
                }
                Err(fatal) => {
                    bump(&self.ctx.stats.client_errors, 1);
                    self.ctx
                        .metrics
                        .request(INVALID, Outcome::of_reply(&fatal.reply));
                    self.pending.push_back(Pending::Ready(fatal.reply));
                    self.pending.push_back(Pending::Quit);
                    self.reading = false;
                }
            }
        }
        n
    }

    /// memcached unlinks the old item of a `set`/`ms` it refuses as too large; the proxy
    /// refused it itself, so it deletes the key where the write would have gone, in order
    /// with the client's other requests. Nobody reads the reply, but it must be awaited: a
    /// backend connection skips requests whose receiver is gone.
    fn unlink(&mut self, req: Request) {
        let key = &req.keys[0];
        self.end_coalescing(key);
        let (rx, _) = self.ctx.send(self.op(req.command, key, req.raw.clone()));
        let rx = self.hot_write(key, rx);
        tokio::task::spawn_local(async move {
            let _ = rx.await;
        });
    }

    fn backend(&self, server: usize) -> &BackendHandle {
        let conns = &self.ctx.backends[server];
        &conns[self.client_id % conns.len()]
    }

    fn no_server(&self) -> Pending {
        Pending::Ready(self.ctx.no_server())
    }

    /// A single-key operation of this client.
    fn op(&self, command: Command, key: &Bytes, bytes: Bytes) -> McOp {
        McOp {
            command,
            key: key.clone(),
            bytes,
            client_id: self.client_id,
            quiet: false,
        }
    }

    fn dispatch(&mut self, req: Request) {
        let cmd = command_index(req.command);
        let stats = &self.ctx.stats;
        let pending = match req.command {
            Command::Get | Command::Gets | Command::Gat | Command::Gats => {
                bump(&stats.cmd_get, req.keys.len() as u64);
                if matches!(req.command, Command::Gat | Command::Gats) {
                    bump(&stats.cmd_touch, req.keys.len() as u64);
                }
                self.retrieval(req)
            }
            Command::Version => Pending::Ready(Bytes::from(format!(
                "VERSION kvrouter-{}\r\n",
                env!("CARGO_PKG_VERSION")
            ))),
            Command::Verbosity => Pending::Ready(if req.noreply {
                Bytes::new()
            } else {
                Bytes::from_static(b"OK\r\n")
            }),
            Command::Quit => {
                self.reading = false;
                Pending::Quit
            }
            Command::Stats => self.stats(&req),
            // Replies are already in request order, so `mn` is answered here, after every
            // earlier reply: the pipeline barrier holds across servers.
            Command::MetaNoop => Pending::Ready(Bytes::from_static(memcache::META_NOOP_REPLY)),
            c if c.is_meta() => self.meta(req),
            Command::FlushAll => {
                bump(&stats.cmd_flush, 1);
                if let Some(co) = self.ctx.coalesce.as_ref() {
                    co.borrow_mut().flights.clear();
                }
                if let Some(hot) = &self.ctx.hot {
                    hot.shared.invalidate_all();
                    hot.flights.borrow_mut().clear();
                }
                let bytes = req.to_backend();
                // Every server of every pool the listener reaches.
                let rxs = self
                    .ctx
                    .flush_targets
                    .iter()
                    .flat_map(|t| t.backends.iter().zip(&t.pool.specs))
                    .map(|(conns, spec)| {
                        // The client's own connection: in order with its other requests.
                        let conn = &conns[self.client_id % conns.len()];
                        let rx = conn.send(bytes.clone(), ReplyKind::McLine);
                        (spec.address.clone(), Some(rx))
                    })
                    .collect();
                Pending::Flush {
                    rxs,
                    failed: None,
                    noreply: req.noreply,
                    cmd,
                }
            }
            _ => {
                let counter = match req.command {
                    Command::Delete => &stats.delete_cmds,
                    Command::Incr => &stats.incr_cmds,
                    Command::Decr => &stats.decr_cmds,
                    Command::Touch => &stats.cmd_touch,
                    Command::Cas => {
                        bump(&stats.cas_cmds, 1);
                        &stats.cmd_set
                    }
                    _ => &stats.cmd_set,
                };
                bump(counter, 1);
                self.end_coalescing(&req.keys[0]);
                let (rx, server) =
                    self.ctx
                        .send(self.op(req.command, &req.keys[0], req.to_backend()));
                Pending::Single {
                    rx: self.hot_write(&req.keys[0], rx),
                    server,
                    noreply: req.noreply,
                    hit_check: false,
                    cmd,
                    quiet: false,
                }
            }
        };
        if let Pending::Ready(b) = &pending {
            self.ctx.metrics.request(cmd, Outcome::of_reply(b));
        } else if let Pending::Quit | Pending::Stats | Pending::StatsSum { .. } = &pending {
            self.ctx.metrics.request(cmd, Outcome::Ok);
        }
        self.pending.push_back(pending);
    }

    /// The reply to a single-key retrieval `req` sent by `send`, or, with `coalesce_misses`, a
    /// share of the reply to the same plain `get` already in flight on this worker.
    fn coalesced(
        &self,
        req: &Request,
        send: impl FnOnce() -> oneshot::Receiver<Reply>,
    ) -> oneshot::Receiver<Reply> {
        let Some(co) = self.ctx.coalesce.as_ref() else {
            return send();
        };
        if req.command != Command::Get {
            return send();
        }
        let key = &req.keys[0];
        let mut c = co.borrow_mut();
        if let Some(f) = c.flights.get(key) {
            let (tx, rx) = oneshot::channel();
            f.waiters.borrow_mut().push(tx);
            bump(&self.ctx.stats.get_coalesced, 1);
            return rx;
        }
        c.next_id += 1;
        let id = c.next_id;
        let waiters = Rc::new(RefCell::new(Vec::new()));
        c.flights.insert(
            key.clone(),
            Flight {
                id,
                waiters: waiters.clone(),
            },
        );
        drop(c);
        let upstream = send();
        let (tx, rx) = oneshot::channel();
        let ctx = self.ctx.clone();
        let key = key.clone();
        tokio::task::spawn_local(async move {
            let reply = flatten(upstream.await);
            if let Some(co) = ctx.coalesce.as_ref() {
                let mut c = co.borrow_mut();
                if c.flights.get(&key).is_some_and(|f| f.id == id) {
                    c.flights.remove(&key);
                }
            }
            for w in waiters.borrow_mut().drain(..) {
                let _ = w.send(reply.clone());
            }
            let _ = tx.send(reply);
        });
        rx
    }

    /// A write of `key` went through this worker: later gets of it must not share a get sent
    /// before the write.
    fn end_coalescing(&self, key: &Bytes) {
        if let Some(co) = self.ctx.coalesce.as_ref() {
            co.borrow_mut().flights.remove(key);
        }
    }

    /// mg, ms, md, ma, me: forwarded as they came (flags included) to the key's server; a quiet
    /// one is followed by `mn`, so the backend stream gets a reply to every request and the
    /// client gets exactly what memcached chose to send for it.
    fn meta(&mut self, req: Request) -> Pending {
        let stats = &self.ctx.stats;
        match req.command {
            Command::MetaGet => bump(&stats.cmd_get, 1),
            Command::MetaSet => bump(&stats.cmd_set, 1),
            Command::MetaDelete => bump(&stats.delete_cmds, 1),
            Command::MetaArithmetic => bump(&stats.incr_cmds, 1),
            _ => {}
        }
        let hit_check = req.command == Command::MetaGet;
        let write = !matches!(req.command, Command::MetaGet | Command::MetaDebug);
        if write {
            self.end_coalescing(&req.keys[0]);
        }
        if let (Some(hot), true) = (&self.ctx.hot, hit_check) {
            hot.sampler.borrow_mut().record(&req.keys[0]);
        }
        let bytes = if req.quiet {
            memcache::with_quiet_sentinel(&req.raw)
        } else {
            req.raw.clone()
        };
        let op = McOp {
            quiet: req.quiet,
            ..self.op(req.command, &req.keys[0], bytes)
        };
        let (rx, server) = self.ctx.send(op);
        Pending::Single {
            rx: if write {
                self.hot_write(&req.keys[0], rx)
            } else {
                rx
            },
            server,
            noreply: false,
            hit_check,
            // Sent down a tree, the pool leaf has stripped the `MN` already.
            quiet: req.quiet && server.is_some(),
            cmd: command_index(req.command),
        }
    }

    fn retrieval(&mut self, req: Request) -> Pending {
        if let Some(hot) = &self.ctx.hot {
            {
                let mut sampler = hot.sampler.borrow_mut();
                for k in &req.keys {
                    sampler.record(k);
                }
            }
            let d = &hot.shared.detector;
            if req.command == Command::Get && d.any_hot() && req.keys.iter().any(|k| d.is_hot(k)) {
                return self.hot_retrieval(req);
            }
        }
        if req.keys.len() == 1 {
            let mut server = None;
            let rx = self.coalesced(&req, || {
                let (rx, s) = self
                    .ctx
                    .send(self.op(req.command, &req.keys[0], req.raw.clone()));
                server = s;
                rx
            });
            return Pending::Single {
                rx,
                server,
                noreply: false,
                hit_check: true,
                cmd: command_index(req.command),
                quiet: false,
            };
        }
        if self.ctx.route.target().is_none() {
            return self.routed_retrieval(req);
        }
        // One pool: one request per server with its keys.
        let pool = &self.ctx.pool;
        let Some(Split { servers, part_of }) =
            Split::by_server(req.keys.iter().map(|k| &k[..]), |k| pool.server_for(k))
        else {
            return self.no_server();
        };
        let mut part_keys: Vec<Vec<Bytes>> = vec![Vec::new(); servers.len()];
        for (key, &p) in req.keys.iter().zip(&part_of) {
            part_keys[p].push(key.clone());
        }
        let gat = req.gat_exptime.as_deref();
        let parts = if servers.len() == 1 {
            // One server: forward the request as it came.
            vec![Part {
                server: Some(servers[0]),
                rx: Some(
                    self.backend(servers[0])
                        .send(req.raw.clone(), ReplyKind::McRetrieval),
                ),
                result: None,
            }]
        } else {
            servers
                .iter()
                .zip(&part_keys)
                .map(|(&server, keys)| {
                    let bytes = memcache::compose_retrieval(req.command, gat, keys);
                    Part {
                        server: Some(server),
                        rx: Some(self.backend(server).send(bytes, ReplyKind::McRetrieval)),
                        result: None,
                    }
                })
                .collect()
        };
        Pending::Multi(Box::new(MultiGet {
            cmd: command_index(req.command),
            keys: req.keys,
            part_of,
            parts,
        }))
    }

    /// A multi-key retrieval through a route tree: one single-key operation per key (as mcrouter
    /// cuts multi-gets), merged as usual.
    fn routed_retrieval(&mut self, req: Request) -> Pending {
        let gat = req.gat_exptime.as_deref();
        let parts = req
            .keys
            .iter()
            .map(|k| {
                let bytes = memcache::compose_retrieval(req.command, gat, std::slice::from_ref(k));
                let (rx, server) = self.ctx.send(self.op(req.command, k, bytes));
                Part {
                    server,
                    rx: Some(rx),
                    result: None,
                }
            })
            .collect();
        Pending::Multi(Box::new(MultiGet {
            part_of: (0..req.keys.len()).collect(),
            cmd: command_index(req.command),
            keys: req.keys,
            parts,
        }))
    }

    /// `stats` and its sub-commands, shaped as memcached answers them (always `END`-ended
    /// where memcached's are, so tools such as memcached-tool do not wait forever).
    fn stats(&self, req: &Request) -> Pending {
        let line = trim_crlf(&req.raw);
        let mut args = line.split(|&b| b == b' ').filter(|t| !t.is_empty()).skip(1);
        let ready = |s: &str| Pending::Ready(Bytes::from(s.to_string()));
        match (args.next(), args.next()) {
            (None, _) => Pending::Stats,
            (Some(what @ (b"items" | b"slabs")), _) => {
                let bytes = Bytes::from([b"stats ", what, b"\r\n"].concat());
                let rxs = self
                    .ctx
                    .flush_targets
                    .iter()
                    .flat_map(|t| t.backends.iter())
                    .map(|conns| {
                        let conn = &conns[self.client_id % conns.len()];
                        Some(conn.send(bytes.clone(), ReplyKind::McLine))
                    })
                    .collect();
                Pending::StatsSum {
                    rxs,
                    got: Vec::new(),
                }
            }
            (Some(b"settings"), _) => ready(&format!(
                "STAT item_size_max {}\r\nSTAT key_max_length {}\r\nSTAT num_threads {}\r\nSTAT binding_protocol ascii\r\nEND\r\n",
                self.ctx.limits.item_size_max, self.ctx.limits.max_key_len, self.ctx.threads
            )),
            (Some(b"sizes"), _) => ready("STAT sizes_status disabled\r\nEND\r\n"),
            // Per-connection rows and item dumps are the servers' business: an empty list.
            (Some(b"conns" | b"cachedump" | b"extstore"), _) => ready("END\r\n"),
            (Some(b"detail"), Some(b"on" | b"off")) => ready("OK\r\n"),
            (Some(b"detail"), Some(b"dump")) => ready("END\r\n"),
            (Some(b"detail"), _) => ready("CLIENT_ERROR usage: stats detail on|off|dump\r\n"),
            (Some(b"reset"), _) => {
                self.ctx.stats.reset();
                ready("RESET\r\n")
            }
            // memcached: an unknown sub-command is `ERROR`.
            _ => ready("ERROR\r\n"),
        }
    }
}

impl McContext {
    /// Send one single-key operation the listener's way, now. On a route that is one pool it
    /// goes straight onto its server's connection (no task, and the server is returned for
    /// error texts); else down the route tree as a task of its own, so a failover waiting on a
    /// timeout holds up no other request, and its outcome arrives as a reply (`SERVER_ERROR
    /// ...` when it failed).
    pub(super) fn send(&self, op: McOp) -> (oneshot::Receiver<Reply>, Option<usize>) {
        let Some(target) = self.route.target() else {
            let fut = self.route.route(op);
            let (tx, rx) = oneshot::channel();
            tokio::task::spawn_local(async move {
                let _ = tx.send(Ok(leaf::into_bytes(fut.await)));
            });
            return (rx, None);
        };
        match target.pool.server_for(&op.key) {
            Some(server) => {
                let conns = &target.backends[server];
                let kind = leaf::reply_kind(op.command, op.quiet);
                (
                    conns[op.client_id % conns.len()].send(op.bytes, kind),
                    Some(server),
                )
            }
            None => {
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(Ok(self.no_server()));
                (rx, None)
            }
        }
    }

    /// The reply when the pool has no server in service (all ejected).
    fn no_server(&self) -> Bytes {
        bump(&self.stats.server_errors, 1);
        Bytes::from(format!("SERVER_ERROR {}\r\n", self.pool.no_server()))
    }
}
