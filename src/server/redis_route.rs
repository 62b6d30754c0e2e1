//! Route trees and replica read failover for redis listeners.
//!
//! A redis listener whose route is more than one plain pool, or whose pool lists `replicas`,
//! sends its keyed commands (design.md's "route" and "split" commands: GET, SET, MGET, DEL, ...)
//! through a tree of `RNode`s compiled per worker, like the memcached route trees
//! (`server::route`):
//! - `pool`: the pool's placement picks the server; a read-only command (by the command table)
//!   whose primary fails (timeout, refused, closed, TKO down, or a `-LOADING`/`-MASTERDOWN`
//!   reply) is retried on that server's replicas in order; a write fails fast with an error
//!   saying writes need the primary. Multi-key commands are split per server as usual, and each
//!   failed read part is retried on its own server's replicas.
//! - `failover`: children in order, up to `limit`, on the failures `on:` lists; `writes: false`
//!   makes failed writes fail instead.
//! - `prefix` (longest prefix of the key), `operation` (get = read-only commands, set = writes,
//!   delete = DEL/UNLINK, default = the rest): every key of a command must take the same route,
//!   else the command is refused (split it, or keep the keys under one prefix).
//! - `shadow`: the shadow route gets a copy of a `fraction` of the commands; its replies are
//!   dropped.
//! - `all_sync`: every child gets the command; the reply is the first child's (`first`) or the
//!   first error reply or failure (`all_ok`).
//! - `warm_up`: GET misses on `cold` are read from `warm`, and a value found there is added to
//!   cold (`SET NX EX exptime`) in the background; everything else goes to cold.
//!
//! `gutter` is refused for redis listeners (see `check`): it caps memcached expiry times.
//!
//! Each command runs as its own task, so a failover waiting on a timeout never holds up the
//! client's other commands; the first try is sent before the task is spawned, so one client's
//! commands to one server keep their order.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{join_all, FutureExt, LocalBoxFuture};

use super::pool::PoolRuntime;
use super::stats::{bump, Stats};
use crate::backend::{BackendError, BackendHandle, Reply, ReplyKind};
use crate::config::{AllSyncReply, FailoverOn, Location, Route};
use crate::failover::policy::{fails_over, Failure, OpClass};
use crate::protocol::redis_commands::{self as rc, key_indices, CommandInfo, Merge};
use crate::protocol::resp::merge::{self, bulk_payload, error};
use crate::protocol::resp::{encode_request, RespRequest};
use crate::routing::route::{ByOperation, ByPrefix};

/// Why writes cannot fail over to a replica.
pub const WRITES_NEED_PRIMARY: &str = "writes need its primary (a replica cannot take writes \
without promotion, which is Sentinel's or the cluster's job)";

/// A pool as a route leaf: its placement and this worker's connections to its servers and to
/// their replicas.
#[derive(Clone)]
pub struct RTarget {
    pub pool: Arc<PoolRuntime>,
    /// `backends[server][connection]`.
    pub backends: Rc<Vec<Vec<BackendHandle>>>,
    /// `replicas[server][replica][connection]` (empty when the pool has none).
    pub replicas: Rc<Vec<Vec<Vec<BackendHandle>>>>,
}

pub enum RNode {
    Pool(RTarget),
    Failover {
        children: Vec<Rc<RNode>>,
        limit: usize,
        on: FailoverOn,
        writes: bool,
    },
    Prefix(ByPrefix<Rc<RNode>>),
    Operation(ByOperation<Rc<RNode>>),
    Shadow {
        route: Rc<RNode>,
        shadow: Rc<RNode>,
        fraction: f64,
    },
    AllSync {
        children: Vec<Rc<RNode>>,
        reply: AllSyncReply,
    },
    WarmUp {
        cold: Rc<RNode>,
        warm: Rc<RNode>,
        exptime: Duration,
    },
}

/// The first route handle a redis listener cannot serve, with its location and why.
pub fn check(route: &Route) -> Option<(Location, String)> {
    let refuse = |r: &Route, why: &str| Some((r.location(), why.to_string()));
    match route {
        Route::Pool { .. } => None,
        Route::Gutter { .. } => refuse(
            route,
            "route handle `gutter` is not implemented for redis listeners: it caps memcached \
             expiry times for a cache; for Redis use `failover` between pools, and `replicas` \
             so reads survive a primary",
        ),
        Route::Failover { children, .. } | Route::AllSync { children, .. } => {
            children.iter().find_map(check)
        }
        Route::WarmUp { cold, warm, .. } => check(cold).or_else(|| check(warm)),
        Route::Prefix {
            prefixes, default, ..
        } => prefixes
            .iter()
            .map(|(_, r)| r)
            .chain(default.as_deref())
            .find_map(check),
        Route::Operation {
            get,
            set,
            delete,
            default,
            ..
        } => [get, set, delete, default]
            .into_iter()
            .flatten()
            .find_map(|r| check(r)),
        Route::Shadow { route, shadow, .. } => check(route).or_else(|| check(shadow)),
    }
}

/// design.md's operation classes for Redis commands.
pub fn class_of(info: &CommandInfo) -> OpClass {
    match info.name {
        "del" | "unlink" => OpClass::Delete,
        _ if info.is_readonly() => OpClass::Get,
        _ if info.is_write() => OpClass::Set,
        _ => OpClass::Other,
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

/// A reply meaning the server cannot serve data right now (loading its dataset, or a replica
/// told not to serve stale data): a read may go elsewhere.
fn unavailable(b: &[u8]) -> bool {
    b.starts_with(b"-LOADING") || b.starts_with(b"-MASTERDOWN")
}

/// What a route gives back: the reply for the client (a Redis error reply from a server is a
/// reply), or a failure a failover route may act on.
pub type Outcome = Result<Bytes, (Failure, String)>;

/// One keyed command going down a tree.
pub struct RedisOp {
    pub info: &'static CommandInfo,
    pub req: RespRequest,
    /// Indices of the keys in `req.args`.
    pub keys: Vec<usize>,
    pub class: OpClass,
    /// MGET, MSET, DEL, ...: split per server and merged.
    pub split: bool,
    pub client_id: usize,
}

impl RedisOp {
    fn key(&self, i: usize) -> &[u8] {
        &self.req.args[self.keys[i]]
    }
}

/// Does this listener need a tree (a route beyond one pool, or a pool with replicas)?
pub fn needs_tree(route: &Route, pool_of: &dyn Fn(&str) -> Arc<PoolRuntime>) -> bool {
    match route {
        Route::Pool { name, .. } => pool_of(name).replicas.iter().any(|r| !r.is_empty()),
        _ => true,
    }
}

impl RNode {
    /// Compile a config route (checked by `check`) for one worker.
    pub fn build(route: &Route, target: &dyn Fn(&str) -> RTarget) -> Rc<RNode> {
        let b = |r: &Route| RNode::build(r, target);
        let ob = |r: &Option<Box<Route>>| r.as_deref().map(b);
        Rc::new(match route {
            Route::Pool { name, .. } => RNode::Pool(target(name)),
            Route::Failover {
                children,
                limit,
                on,
                writes,
                ..
            } => RNode::Failover {
                children: children.iter().map(b).collect(),
                limit: limit.unwrap_or(children.len()).max(1),
                on: *on,
                writes: *writes,
            },
            Route::Prefix {
                prefixes, default, ..
            } => RNode::Prefix(ByPrefix::new(
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
            } => RNode::Operation(ByOperation {
                get: ob(get),
                set: ob(set),
                delete: ob(delete),
                default: ob(default),
            }),
            Route::Shadow {
                route,
                shadow,
                fraction,
                ..
            } => RNode::Shadow {
                route: b(route),
                shadow: b(shadow),
                fraction: *fraction,
            },
            Route::AllSync {
                children, reply, ..
            } => RNode::AllSync {
                children: children.iter().map(b).collect(),
                reply: *reply,
            },
            Route::WarmUp {
                cold,
                warm,
                exptime,
                ..
            } => RNode::WarmUp {
                cold: b(cold),
                warm: b(warm),
                exptime: *exptime,
            },
            Route::Gutter { .. } => unreachable!("refused for redis listeners by server::check"),
        })
    }

    /// Follow `prefix` and `operation` nodes for one key; None when nothing matches.
    fn resolve<'a>(self: &'a Rc<Self>, class: OpClass, key: &[u8]) -> Option<&'a Rc<RNode>> {
        match &**self {
            RNode::Prefix(by) => by.select(key)?.resolve(class, key),
            RNode::Operation(by) => by.select(class)?.resolve(class, key),
            _ => Some(self),
        }
    }

    /// The node every key of `op` resolves to, or the error reply refusing the command.
    fn resolve_all(self: &Rc<Self>, op: &RedisOp) -> Result<Rc<RNode>, String> {
        let no_route = |key: &[u8]| {
            format!(
                "ERR no route for key '{}' (no prefix matches and no default)",
                String::from_utf8_lossy(key)
            )
        };
        let first = self
            .resolve(op.class, op.key(0))
            .ok_or_else(|| no_route(op.key(0)))?;
        for i in 1..op.keys.len() {
            let other = self
                .resolve(op.class, op.key(i))
                .ok_or_else(|| no_route(op.key(i)))?;
            let same = Rc::ptr_eq(first, other)
                || matches!((&**first, &**other), (RNode::Pool(a), RNode::Pool(b)) if Arc::ptr_eq(&a.pool, &b.pool));
            if !same {
                return Err(format!(
                    "ERR the keys of this {} take different routes ('{}' and '{}'): kvrouter sends \
                     a multi-key command to one route only; send the keys in separate commands",
                    op.info.name.to_uppercase(),
                    String::from_utf8_lossy(op.key(0)),
                    String::from_utf8_lossy(op.key(i)),
                ));
            }
        }
        Ok(first.clone())
    }

    /// The pool a key's command would reach first (failover: the first child; shadow: the
    /// main route).
    fn home(self: &Rc<Self>, class: OpClass, key: &[u8]) -> Option<&Arc<PoolRuntime>> {
        match &**self.resolve(class, key)? {
            RNode::Pool(t) => Some(&t.pool),
            RNode::Failover { children, .. } => children[0].home(class, key),
            RNode::Shadow { route, .. } => route.home(class, key),
            RNode::AllSync { children, .. } => children[0].home(class, key),
            RNode::WarmUp { cold, .. } => cold.home(class, key),
            RNode::Prefix(_) | RNode::Operation(_) => None,
        }
    }

    /// Run `op` down this tree. The first try is sent before this returns.
    pub fn exec(self: &Rc<Self>, op: Rc<RedisOp>) -> LocalBoxFuture<'static, Outcome> {
        match &**self {
            RNode::Pool(t) => t.send(op),
            RNode::Prefix(_) | RNode::Operation(_) => match self.resolve_all(&op) {
                Ok(n) => n.exec(op),
                Err(e) => ready(Ok(error(&e))),
            },
            RNode::Shadow {
                route,
                shadow,
                fraction,
            } => {
                let main = route.exec(op.clone());
                if *fraction >= 1.0 || fastrand::f64() < *fraction {
                    // The shadow's reply is dropped; it only mirrors traffic.
                    let copy = shadow.exec(op);
                    tokio::task::spawn_local(async move {
                        let _ = copy.await;
                    });
                }
                main
            }
            RNode::AllSync { children, reply } => {
                let futs: Vec<_> = children.iter().map(|c| c.exec(op.clone())).collect();
                let reply = *reply;
                async move {
                    let mut outs = join_all(futs).await;
                    let failed = |o: &Outcome| o.as_ref().map_or(true, |b| b.starts_with(b"-"));
                    match reply {
                        AllSyncReply::First => outs.swap_remove(0),
                        AllSyncReply::AllOk => match outs.iter().position(failed) {
                            Some(i) => outs.swap_remove(i),
                            None => outs.swap_remove(0),
                        },
                    }
                }
                .boxed_local()
            }
            RNode::WarmUp {
                cold,
                warm,
                exptime,
            } => {
                // Only GET has a miss to warm up from; everything else is cold's.
                if op.info.name != "get" {
                    return cold.exec(op);
                }
                let (cold, warm, exptime) = (cold.clone(), warm.clone(), *exptime);
                async move { warm_up(cold, warm, exptime, op).await }.boxed_local()
            }
            RNode::Failover {
                children,
                limit,
                on,
                writes,
            } => {
                let first = children[0].exec(op.clone());
                let rest: Vec<Rc<RNode>> = children.iter().take(*limit).skip(1).cloned().collect();
                let (on, writes) = (*on, *writes);
                async move {
                    let mut out = first.await;
                    for child in rest {
                        match &out {
                            Err((f, _)) if fails_over(on, writes, op.class, *f) => {}
                            _ => break,
                        }
                        out = child.exec(op.clone()).await;
                    }
                    out
                }
                .boxed_local()
            }
        }
    }
}

/// mcrouter's WarmUpRoute for GET: a nil from `cold` reads `warm`; a value there answers the
/// client and is added to `cold` in the background (`SET NX`, so a newer write to cold wins)
/// with `exptime` (0: no expiry).
async fn warm_up(cold: Rc<RNode>, warm: Rc<RNode>, exptime: Duration, op: Rc<RedisOp>) -> Outcome {
    let first = cold.exec(op.clone()).await;
    if !matches!(&first, Ok(b) if b.as_ref() == b"$-1\r\n" || b.as_ref() == b"_\r\n") {
        return first;
    }
    let from_warm = warm.exec(op.clone()).await;
    let Ok(value) = &from_warm else {
        return first;
    };
    let Some(payload) = bulk_payload(value) else {
        return first; // a miss there too, or an error: cold's answer stands
    };
    let key = &op.req.args[op.keys[0]];
    let secs = exptime.as_secs().to_string();
    let mut args: Vec<&[u8]> = vec![b"SET", key, &payload, b"NX"];
    if exptime.as_secs() > 0 {
        args.extend([&b"EX"[..], secs.as_bytes()]);
    }
    let req = encode_request(&args);
    let set = Rc::new(RedisOp {
        info: rc::lookup(b"set").expect("SET is in the command table"),
        keys: vec![1],
        class: OpClass::Set,
        split: false,
        client_id: op.client_id,
        req,
    });
    tokio::task::spawn_local(cold.exec(set));
    from_warm
}

fn ready(o: Outcome) -> LocalBoxFuture<'static, Outcome> {
    async move { o }.boxed_local()
}

fn flatten(r: Result<Reply, tokio::sync::oneshot::error::RecvError>) -> Reply {
    r.unwrap_or_else(|_| Err(BackendError::Closed("backend connection went away".into())))
}

impl RTarget {
    fn crossslot(&self) -> String {
        let how = if self.pool.config.hash_tag.is_some() {
            "use hash tags {...} to force them together"
        } else {
            "set the pool's hash_tag, e.g. \"{}\", and use hash tags {...} to force them together"
        };
        format!("CROSSSLOT Keys in request don't hash to the same server ({how})")
    }

    /// Send `op` to its server(s) in this pool now; the future yields the outcome.
    fn send(&self, op: Rc<RedisOp>) -> LocalBoxFuture<'static, Outcome> {
        let args = &op.req.args;
        let no_server = || {
            let why = format!("no server available in pool {}", self.pool.config.name);
            ready(Err((Failure::ServerError, why)))
        };
        // Which server each key lives on; parts in first-seen order.
        let mut servers: Vec<usize> = Vec::new();
        let mut part_of = Vec::with_capacity(op.keys.len());
        for i in 0..op.keys.len() {
            let Some(s) = self.pool.server_for(op.key(i)) else {
                return no_server();
            };
            let p = match servers.iter().position(|&x| x == s) {
                Some(p) => p,
                None => {
                    servers.push(s);
                    servers.len() - 1
                }
            };
            part_of.push(p);
        }
        let readonly = op.class == OpClass::Get;
        if servers.len() == 1 {
            return self.send_server(servers[0], op.req.raw.clone(), readonly, op.client_id);
        }
        if !op.split {
            return ready(Ok(error(&self.crossslot())));
        }
        let with_value = op.info.name == "mset";
        let mut part_args: Vec<Vec<&Bytes>> = vec![vec![&args[0]]; servers.len()];
        for (i, &p) in part_of.iter().enumerate() {
            let k = op.keys[i];
            part_args[p].push(&args[k]);
            if with_value {
                part_args[p].push(&args[k + 1]);
            }
        }
        let parts: Vec<_> = servers
            .iter()
            .zip(&part_args)
            .map(|(&s, a)| self.send_server(s, encode_request(a).raw, readonly, op.client_id))
            .collect();
        let how = rc::merge(op.info).unwrap_or(Merge::Sum);
        async move {
            let mut replies = Vec::with_capacity(parts.len());
            for r in join_all(parts).await {
                replies.push(r?);
            }
            Ok(merge::merge(how, &replies, &part_of))
        }
        .boxed_local()
    }

    /// Send one request to `server`; a read whose primary fails goes to its replicas in turn.
    fn send_server(
        &self,
        server: usize,
        bytes: Bytes,
        readonly: bool,
        client_id: usize,
    ) -> LocalBoxFuture<'static, Outcome> {
        let conns = &self.backends[server];
        let rx = conns[client_id % conns.len()].send(bytes.clone(), ReplyKind::Resp);
        let addr = self.pool.specs[server].address.clone();
        let replicas: Vec<BackendHandle> = self
            .replicas
            .get(server)
            .map(|rs| rs.iter().map(|c| c[client_id % c.len()].clone()).collect())
            .unwrap_or_default();
        async move {
            let err = match flatten(rx.await) {
                Ok(b) if !(unavailable(&b) && readonly && !replicas.is_empty()) => return Ok(b),
                Ok(b) => {
                    let text = String::from_utf8_lossy(&b[1..b.len() - 2]).into_owned();
                    (Failure::ServerError, format!("backend {addr} {text}"))
                }
                Err(e) => {
                    let mut why = format!("backend {addr} {e}");
                    if !replicas.is_empty() && !readonly {
                        why.push_str("; ");
                        why.push_str(WRITES_NEED_PRIMARY);
                    }
                    (failure_of(&e), why)
                }
            };
            if !readonly || replicas.is_empty() {
                return Err(err);
            }
            let mut tried = Vec::new();
            for r in &replicas {
                // A replica marked down answers at once (`Down`), without waiting.
                match flatten(r.send(bytes.clone(), ReplyKind::Resp).await) {
                    Ok(b) if !unavailable(&b) => return Ok(b),
                    Ok(b) => tried.push(format!(
                        "replica {} {}",
                        r.spec.address,
                        String::from_utf8_lossy(&b[1..b.len() - 2])
                    )),
                    Err(e) => tried.push(format!("replica {} {e}", r.spec.address)),
                }
            }
            Err((err.0, format!("{}; {}", err.1, tried.join("; "))))
        }
        .boxed_local()
    }
}

/// Route one keyed command (a "route" or "split" command) through `root`: the task's result
/// is the client's reply. Err: the reply refusing it at once.
pub fn dispatch(
    root: &Rc<RNode>,
    info: &'static CommandInfo,
    req: RespRequest,
    split: bool,
    client_id: usize,
    stats: Arc<Stats>,
) -> Result<tokio::task::JoinHandle<Bytes>, String> {
    let keys = key_indices(info, &req.args).map_err(|e| format!("ERR {e}"))?;
    if keys.is_empty() {
        return Err(format!(
            "ERR {} without keys cannot be routed by kvrouter: there is no key to pick a server",
            info.name.to_uppercase()
        ));
    }
    let op = Rc::new(RedisOp {
        info,
        req,
        keys,
        class: class_of(info),
        split,
        client_id,
    });
    let node = root.resolve_all(&op)?;
    let fut = node.exec(op);
    Ok(tokio::task::spawn_local(async move {
        match fut.await {
            Ok(b) => b,
            Err((_, why)) => {
                bump(&stats.server_errors, 1);
                error(&format!("ERR {why}"))
            }
        }
    }))
}

/// Commands that keep state on one connection (transactions, WATCH, blocking commands) use the
/// tree's first pool: refuse a key whose route leads elsewhere, rather than misroute it.
pub fn check_home(
    root: &Rc<RNode>,
    first: &Arc<PoolRuntime>,
    info: &CommandInfo,
    key: &[u8],
) -> Result<(), String> {
    match root.home(class_of(info), key) {
        Some(p) if Arc::ptr_eq(p, first) => Ok(()),
        other => Err(format!(
            "ERR key '{}' routes to {}, but {} on a listener with a route tree runs on its first \
             pool ({}): transactions, WATCH, blocking commands and pub/sub use that pool only",
            String::from_utf8_lossy(key),
            other.map_or("no pool".to_string(), |p| format!("pool {}", p.config.name)),
            info.name.to_uppercase(),
            first.config.name
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(name: &str) -> &'static CommandInfo {
        rc::lookup(name.as_bytes()).unwrap()
    }

    #[test]
    fn classes_follow_the_command_table() {
        assert_eq!(class_of(cmd("get")), OpClass::Get);
        assert_eq!(class_of(cmd("mget")), OpClass::Get);
        assert_eq!(class_of(cmd("hgetall")), OpClass::Get);
        assert_eq!(class_of(cmd("set")), OpClass::Set);
        assert_eq!(class_of(cmd("incr")), OpClass::Set);
        assert_eq!(class_of(cmd("expire")), OpClass::Set);
        assert_eq!(class_of(cmd("del")), OpClass::Delete);
        assert_eq!(class_of(cmd("unlink")), OpClass::Delete);
        assert_eq!(class_of(cmd("publish")), OpClass::Other);
    }

    #[test]
    fn unavailable_replies() {
        assert!(unavailable(
            b"-LOADING Redis is loading the dataset in memory\r\n"
        ));
        assert!(unavailable(b"-MASTERDOWN Link with MASTER is down\r\n"));
        assert!(!unavailable(b"-WRONGTYPE Operation against a key\r\n"));
        assert!(!unavailable(b"$1\r\nx\r\n"));
    }
}
