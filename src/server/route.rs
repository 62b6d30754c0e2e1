//! Route trees at run time (design.md's route grammar, mcrouter's route handles), for memcached.
//!
//! A config `Route` is compiled per worker into a tree of `Node`s whose leaves hold that worker's
//! backend connections. A request that goes through a tree is cut into single-key operations
//! (`McOp`, as mcrouter does with multi-gets), and each runs down the tree as its own task, so a
//! failover waiting on a timeout never holds up other requests. A leaf sends its request the
//! moment the tree reaches it, so one client's operations to one server keep their order.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::{join_all, FutureExt, LocalBoxFuture};

use super::pool::PoolRuntime;
use crate::backend::{BackendError, BackendHandle, ReplyKind};
use crate::config::{AllSyncReply, FailoverOn, Route};
use crate::failover::gutter;
use crate::failover::policy::{fails_over, Failure, OpClass};
use crate::protocol::memcache::{self, Command};
use crate::routing::route::{ByOperation, ByPrefix};

/// A pool as a route leaf: its placement and this worker's connections to its servers.
#[derive(Clone)]
pub struct Target {
    pub pool: Arc<PoolRuntime>,
    pub backends: Rc<Vec<Vec<BackendHandle>>>,
}

pub enum Node {
    Pool(Target),
    Failover {
        children: Vec<Rc<Node>>,
        limit: usize,
        on: FailoverOn,
        writes: bool,
        /// Requests sent on to a next child.
        failovers: prometheus::IntCounter,
    },
    Gutter {
        target: Target,
        max_ttl: Duration,
        /// Requests this gutter took.
        used: prometheus::IntCounter,
    },
    Prefix(ByPrefix<Rc<Node>>),
    Operation(ByOperation<Rc<Node>>),
    AllSync {
        children: Vec<Rc<Node>>,
        reply: AllSyncReply,
    },
    Shadow {
        route: Rc<Node>,
        shadow: Rc<Node>,
        fraction: f64,
    },
    WarmUp {
        cold: Rc<Node>,
        warm: Rc<Node>,
        exptime: Duration,
    },
}

/// One single-key memcached operation going down a route tree.
#[derive(Clone, Debug)]
pub struct McOp {
    pub command: Command,
    pub key: Bytes,
    /// The request as a backend gets it (no `noreply`).
    pub bytes: Bytes,
    /// Picks the connection among a server's, so a client's operations keep their order.
    pub client_id: usize,
    /// A quiet meta request: `bytes` end with `memcache::QUIET_SENTINEL`, and the leaf strips
    /// the `MN` from the reply (which may then be empty: memcached suppressed it).
    pub quiet: bool,
}

impl McOp {
    pub fn class(&self) -> OpClass {
        class_of(self.command)
    }
}

/// design.md's operation classes for memcached commands.
pub fn class_of(command: Command) -> OpClass {
    match command {
        Command::Get | Command::Gets | Command::Gat | Command::Gats | Command::MetaGet => {
            OpClass::Get
        }
        Command::Delete | Command::MetaDelete => OpClass::Delete,
        c if c.is_storage() => OpClass::Set,
        Command::Incr
        | Command::Decr
        | Command::Touch
        | Command::MetaSet
        | Command::MetaArithmetic => OpClass::Set,
        _ => OpClass::Other,
    }
}

/// What a tree gives back for one operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A reply the backend sent (not a `SERVER_ERROR`).
    Reply(Bytes),
    Failed(Failure, String),
}

impl Outcome {
    fn from_reply(b: Bytes) -> Outcome {
        if b.starts_with(b"SERVER_ERROR") {
            let text = String::from_utf8_lossy(b.strip_suffix(b"\r\n").unwrap_or(&b))
                .trim_start_matches("SERVER_ERROR ")
                .to_string();
            Outcome::Failed(Failure::ServerError, text)
        } else {
            Outcome::Reply(b)
        }
    }

    /// The bytes for the client: the reply, or `SERVER_ERROR reason`.
    pub fn into_bytes(self) -> Bytes {
        match self {
            Outcome::Reply(b) => b,
            Outcome::Failed(_, why) => Bytes::from(format!("SERVER_ERROR {why}\r\n")),
        }
    }

    /// A success for `all_sync: all_ok`: not an error, and not NOT_STORED / EXISTS / NOT_FOUND
    /// (meta: NS / EX / NF).
    fn is_ok(&self) -> bool {
        matches!(self, Outcome::Reply(b) if !memcache::is_error_reply(b)
            && !b.starts_with(b"NOT_STORED")
            && !b.starts_with(b"EXISTS")
            && !b.starts_with(b"NOT_FOUND")
            && !b.starts_with(b"NS")
            && !b.starts_with(b"EX")
            && !b.starts_with(b"NF"))
    }

    fn is_miss(&self) -> bool {
        matches!(self, Outcome::Reply(b) if b.as_ref() == b"END\r\n")
    }
}

fn failure_of(e: &BackendError) -> Failure {
    match e {
        BackendError::Timeout(_) => Failure::Timeout,
        BackendError::Connect(_) => Failure::Refused,
        BackendError::Down => Failure::Tko,
        BackendError::Closed(_) | BackendError::Protocol(_) => Failure::ServerError,
    }
}

/// How the reply to a memcached request ends.
pub fn reply_kind(command: Command, quiet: bool) -> ReplyKind {
    if command.is_retrieval() {
        ReplyKind::McRetrieval
    } else if quiet {
        ReplyKind::McMetaQuiet
    } else if command.is_meta() {
        ReplyKind::McMeta
    } else {
        ReplyKind::McLine
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Target {
    /// Send `op` to the key's server now; the future yields its outcome.
    fn send(&self, op: &McOp) -> LocalBoxFuture<'static, Outcome> {
        let Some(server) = self.pool.server_for(&op.key) else {
            let why = format!("no server available in pool {}", self.pool.config.name);
            return async move { Outcome::Failed(Failure::ServerError, why) }.boxed_local();
        };
        let conns = &self.backends[server];
        let kind = reply_kind(op.command, op.quiet);
        let rx = conns[op.client_id % conns.len()].send(op.bytes.clone(), kind);
        let addr = self.pool.specs[server].address.clone();
        let quiet = op.quiet;
        async move {
            match rx.await {
                Ok(Ok(b)) if quiet => Outcome::from_reply(memcache::strip_quiet_sentinel(b)),
                Ok(Ok(b)) => Outcome::from_reply(b),
                Ok(Err(e)) => Outcome::Failed(failure_of(&e), format!("backend {addr} {e}")),
                Err(_) => Outcome::Failed(
                    Failure::ServerError,
                    format!("backend {addr} connection went away"),
                ),
            }
        }
        .boxed_local()
    }
}

impl Node {
    /// Compile a config route for one worker; `target` resolves a pool name.
    pub fn build(
        route: &Route,
        target: &dyn Fn(&str) -> Target,
        metrics: &super::metrics::RouteMetrics,
    ) -> Rc<Node> {
        let b = |r: &Route| Node::build(r, target, metrics);
        let ob = |r: &Option<Box<Route>>| r.as_deref().map(b);
        Rc::new(match route {
            Route::Pool { name, .. } => Node::Pool(target(name)),
            Route::Failover {
                children,
                limit,
                on,
                writes,
                ..
            } => Node::Failover {
                children: children.iter().map(b).collect(),
                limit: limit.unwrap_or(children.len()).max(1),
                on: *on,
                writes: *writes,
                failovers: metrics.failovers.clone(),
            },
            Route::Gutter { pool, max_ttl, .. } => Node::Gutter {
                target: target(pool),
                max_ttl: *max_ttl,
                used: metrics.gutter(pool),
            },
            Route::Prefix {
                prefixes, default, ..
            } => Node::Prefix(ByPrefix::new(
                prefixes
                    .iter()
                    .map(|(k, r)| (k.as_bytes().to_vec(), b(r)))
                    .collect(),
                ob(default),
            )),
            Route::Operation {
                get,
                set,
                delete,
                default,
                ..
            } => Node::Operation(ByOperation {
                get: ob(get),
                set: ob(set),
                delete: ob(delete),
                default: ob(default),
            }),
            Route::AllSync {
                children, reply, ..
            } => Node::AllSync {
                children: children.iter().map(b).collect(),
                reply: *reply,
            },
            Route::Shadow {
                route,
                shadow,
                fraction,
                ..
            } => Node::Shadow {
                route: b(route),
                shadow: b(shadow),
                fraction: *fraction,
            },
            Route::WarmUp {
                cold,
                warm,
                exptime,
                ..
            } => Node::WarmUp {
                cold: b(cold),
                warm: b(warm),
                exptime: *exptime,
            },
        })
    }

    /// Run `op` down this tree. Leaves reached without waiting send at once.
    pub fn exec(self: &Rc<Self>, op: McOp) -> LocalBoxFuture<'static, Outcome> {
        match &**self {
            Node::Pool(t) => t.send(&op),
            Node::Gutter {
                target,
                max_ttl,
                used,
            } => {
                used.inc();
                let now = now_unix();
                let cap = |e| gutter::cap(e, *max_ttl, now);
                let capped = if op.command.is_meta() {
                    memcache::rewrite_meta_ttl(op.command, &op.bytes, cap)
                } else {
                    memcache::rewrite_exptime(op.command, &op.bytes, cap)
                };
                let op = match capped {
                    Some(bytes) => McOp { bytes, ..op },
                    None => op,
                };
                target.send(&op)
            }
            Node::Prefix(by) => match by.select(&op.key) {
                Some(c) => c.exec(op),
                None => {
                    let why = format!(
                        "no route for key {} (no prefix matches and no default)",
                        String::from_utf8_lossy(&op.key)
                    );
                    async move { Outcome::Failed(Failure::ServerError, why) }.boxed_local()
                }
            },
            Node::Operation(by) => match by.select(op.class()) {
                Some(c) => c.exec(op),
                None => {
                    async { Outcome::Failed(Failure::ServerError, "no route".into()) }.boxed_local()
                }
            },
            Node::AllSync { children, reply } => {
                let futs: Vec<_> = children.iter().map(|c| c.exec(op.clone())).collect();
                let reply = *reply;
                async move {
                    let mut outs = join_all(futs).await;
                    match reply {
                        AllSyncReply::First => outs.swap_remove(0),
                        AllSyncReply::AllOk => match outs.iter().position(|o| !o.is_ok()) {
                            Some(i) => outs.swap_remove(i),
                            None => outs.swap_remove(0),
                        },
                    }
                }
                .boxed_local()
            }
            Node::Shadow {
                route,
                shadow,
                fraction,
            } => {
                let main = route.exec(op.clone());
                if *fraction >= 1.0 || fastrand::f64() < *fraction {
                    // The shadow's reply is dropped; it only mirrors traffic.
                    tokio::task::spawn_local(shadow.exec(op));
                }
                main
            }
            Node::WarmUp {
                cold,
                warm,
                exptime,
            } => {
                // Meta gets carry their own lease and vivify semantics: they go to cold only.
                if op.class() != OpClass::Get || op.command.is_meta() {
                    return cold.exec(op);
                }
                let (cold, warm, exptime) = (cold.clone(), warm.clone(), *exptime);
                async move { warm_up(cold, warm, exptime, op).await }.boxed_local()
            }
            Node::Failover {
                children,
                limit,
                on,
                writes,
                failovers,
            } => {
                let node = self.clone();
                let (limit, on, writes) = (*limit, *on, *writes);
                let failovers = failovers.clone();
                let class = op.class();
                if class == OpClass::Delete {
                    // Deletes reach the primary route and every gutter, so no stale value
                    // survives in a gutter when its server recovers.
                    let gutters: Vec<_> = children
                        .iter()
                        .filter(|c| matches!(***c, Node::Gutter { .. }))
                        .map(|g| g.exec(op.clone()))
                        .collect();
                    let primary: Vec<Rc<Node>> = children
                        .iter()
                        .filter(|c| !matches!(***c, Node::Gutter { .. }))
                        .cloned()
                        .collect();
                    return async move {
                        let first =
                            failover(&primary, limit, on, writes, class, op, &failovers).await;
                        let gutter_outs = join_all(gutters).await;
                        if first
                            .as_ref()
                            .is_some_and(|o| matches!(o, Outcome::Reply(_)))
                        {
                            return first.expect("checked");
                        }
                        gutter_outs
                            .into_iter()
                            .find(|o| matches!(o, Outcome::Reply(_)))
                            .or(first)
                            .unwrap_or(Outcome::Failed(Failure::ServerError, "no route".into()))
                    }
                    .boxed_local();
                }
                async move {
                    let Node::Failover { children, .. } = &*node else {
                        unreachable!()
                    };
                    failover(children, limit, on, writes, class, op, &failovers)
                        .await
                        .unwrap_or(Outcome::Failed(Failure::ServerError, "no route".into()))
                }
                .boxed_local()
            }
        }
    }
}

/// Try children in order until one answers or a failure that must not fail over.
async fn failover(
    children: &[Rc<Node>],
    limit: usize,
    on: FailoverOn,
    writes: bool,
    class: OpClass,
    op: McOp,
    failovers: &prometheus::IntCounter,
) -> Option<Outcome> {
    let mut last = None;
    for (i, child) in children.iter().take(limit).enumerate() {
        if i > 0 {
            failovers.inc();
        }
        let out = child.exec(op.clone()).await;
        match &out {
            Outcome::Failed(f, _) if fails_over(on, writes, class, *f) => last = Some(out),
            _ => return Some(out),
        }
    }
    last
}

/// A get on cold; on a miss, read warm and, on a hit there, fill cold with `exptime` (in the
/// background for `get`/`gat`; for `gets`/`gats` the fill is awaited and cold is read again, so
/// the cas unique the client sees is cold's).
async fn warm_up(cold: Rc<Node>, warm: Rc<Node>, exptime: Duration, op: McOp) -> Outcome {
    let first = cold.exec(op.clone()).await;
    if !first.is_miss() {
        return first;
    }
    let plain = matches!(op.command, Command::Get | Command::Gat);
    let warm_op = if plain {
        op.clone()
    } else {
        McOp {
            command: Command::Get,
            bytes: memcache::compose_retrieval(Command::Get, None, std::slice::from_ref(&op.key)),
            ..op.clone()
        }
    };
    let from_warm = warm.exec(warm_op).await;
    let Outcome::Reply(b) = &from_warm else {
        return first;
    };
    let Some(item) = memcache::split_items(b).ok().and_then(|mut v| v.pop()) else {
        return first;
    };
    let Some(set) = memcache::set_from_item(&item, exptime.as_secs() as i64) else {
        return first;
    };
    let fill = cold.exec(McOp {
        command: Command::Set,
        bytes: set,
        ..op.clone()
    });
    if plain {
        tokio::task::spawn_local(fill);
        from_warm
    } else {
        fill.await;
        cold.exec(op).await
    }
}
