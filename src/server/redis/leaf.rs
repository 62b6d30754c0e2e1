//! Redis as a route-tree leaf (`routing::route::Leaf`), and replica read failover.
//!
//! A keyed command (`Handling::Route` and `Handling::Split` in the command table: GET, SET,
//! MGET, DEL, ...) goes down the listener's tree as one `RedisOp`. At a pool leaf the pool's
//! placement picks the server; multi-key commands are split per server and merged as usual.
//! A read-only command (by the command table) whose primary fails (timeout, refused, closed,
//! TKO down, or a `-LOADING`/`-MASTERDOWN` reply) is retried on that server's `replicas` in
//! order; a write fails fast with an error saying writes need the primary.
//!
//! A gutter caps a write's time to live with `PEXPIRE key max_ttl LT` sent right behind it on
//! the same connection (Redis 7: a key without a TTL counts as infinite for LT, so the cap
//! applies to persistent keys too, and never lengthens a shorter TTL). `warm_up` fills cold
//! with `SET NX`, so a newer write to cold is never overwritten.

use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{join_all, FutureExt};

use crate::backend::{BackendError, BackendHandle, Reply, ReplyKind};
use crate::failover::policy::{Failure, OpClass};
use crate::protocol::redis_commands::{self as rc, key_indices, CommandInfo, Merge};
use crate::protocol::resp::merge::{self, bulk_payload, error};
use crate::protocol::resp::{encode_request, RespRequest};
use crate::routing::route::{self, Failed, Leaf, Node, Outcome, Pending};
use crate::routing::slots;
use crate::routing::split::Split;
use crate::server::cluster::ClusterWorker;
use crate::server::pool::PoolRuntime;
use crate::server::stats::{bump, Stats};

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
    /// A Redis Cluster pool: this worker's node connections and the slot map (a key's
    /// "server" is then its slot, and `backends` is empty).
    pub cluster: Option<Rc<ClusterWorker>>,
}

/// The route grammar's operation classes (docs/architecture.md) for Redis commands.
pub fn class_of(info: &CommandInfo) -> OpClass {
    match info.name {
        "del" | "unlink" => OpClass::Delete,
        _ if info.is_readonly() => OpClass::Get,
        _ if info.is_write() => OpClass::Set,
        _ => OpClass::Other,
    }
}

/// A reply meaning the server cannot serve data right now (loading its dataset, or a replica
/// told not to serve stale data): a read may go elsewhere.
fn unavailable(b: &[u8]) -> bool {
    b.starts_with(b"-LOADING") || b.starts_with(b"-MASTERDOWN")
}

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

    /// A single-key command of this client, built by the proxy (warm-up fills, gutter caps).
    fn own(&self, name: &[u8], args: &[&[u8]]) -> Rc<RedisOp> {
        let req = encode_request(args);
        Rc::new(RedisOp {
            info: rc::lookup(name).expect("kvrouter's own commands are in the table"),
            keys: vec![1],
            class: OpClass::Set,
            split: false,
            client_id: self.client_id,
            req,
        })
    }
}

/// The Redis protocol's side of the route tree.
pub enum Redis {}

impl Leaf for Redis {
    type Target = RTarget;
    type Op = Rc<RedisOp>;

    fn send(t: &RTarget, op: &Rc<RedisOp>) -> Pending {
        t.send(op.clone())
    }

    fn same_target(a: &RTarget, b: &RTarget) -> bool {
        Arc::ptr_eq(&a.pool, &b.pool)
    }

    fn class(op: &Rc<RedisOp>) -> OpClass {
        op.class
    }

    fn key(op: &Rc<RedisOp>, i: usize) -> Option<&[u8]> {
        op.keys.get(i).map(|&k| &op.req.args[k][..])
    }

    fn name(op: &Rc<RedisOp>) -> String {
        op.info.name.to_uppercase()
    }

    fn is_ok(b: &Bytes) -> bool {
        !b.starts_with(b"-")
    }

    fn is_miss(b: &Bytes) -> bool {
        b.as_ref() == b"$-1\r\n" || b.as_ref() == b"_\r\n"
    }

    fn for_gutter(op: Rc<RedisOp>, max_ttl: Duration) -> (Rc<RedisOp>, Vec<Rc<RedisOp>>) {
        if op.class != OpClass::Set {
            return (op, Vec::new());
        }
        let ms = max_ttl.as_millis().max(1).to_string();
        let caps = (0..op.keys.len())
            .map(|i| op.own(b"pexpire", &[b"PEXPIRE", op.key(i), ms.as_bytes(), b"LT"]))
            .collect();
        (op, caps)
    }

    /// Only GET has a miss to warm up from.
    fn warm_read(op: &Rc<RedisOp>) -> Option<Rc<RedisOp>> {
        (op.info.name == "get").then(|| op.clone())
    }

    /// `SET key value NX [EX exptime]` (0: no expiry).
    fn warm_fill(op: &Rc<RedisOp>, reply: &Bytes, exptime: Duration) -> Option<Rc<RedisOp>> {
        let payload = bulk_payload(reply)?;
        let secs = exptime.as_secs().to_string();
        let mut args: Vec<&[u8]> = vec![b"SET", op.key(0), &payload, b"NX"];
        if exptime.as_secs() > 0 {
            args.extend([&b"EX"[..], secs.as_bytes()]);
        }
        Some(op.own(b"set", &args))
    }

    fn reread_after_fill(_op: &Rc<RedisOp>) -> bool {
        false
    }
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
    fn send(&self, op: Rc<RedisOp>) -> Pending {
        let keys = (0..op.keys.len()).map(|i| op.key(i));
        let place = |k: &[u8]| match &self.cluster {
            Some(_) => Some(slots::key_slot(k) as usize),
            None => self.pool.server_for(k),
        };
        let Some(Split { servers, part_of }) = Split::by_server(keys, place) else {
            let why = self.pool.no_server();
            return route::ready(Err(Failed::new(Failure::ServerError, why)));
        };
        let readonly = op.class == OpClass::Get;
        if servers.len() == 1 {
            return self.send_server(servers[0], op.req.raw.clone(), readonly, op.client_id);
        }
        if !op.split {
            if self.cluster.is_some() {
                let msg = "CROSSSLOT Keys in request don't hash to the same slot";
                return route::ready(Ok(error(msg)));
            }
            return route::ready(Ok(error(&self.crossslot())));
        }
        let part_args =
            super::keyed::split_args(op.info, &op.req.args, &op.keys, servers.len(), &part_of);
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

    /// Send one request to `server` (a cluster pool: to the owner of slot `server`, following
    /// redirections); a read whose primary fails goes to its replicas in turn.
    fn send_server(
        &self,
        server: usize,
        bytes: Bytes,
        readonly: bool,
        client_id: usize,
    ) -> Pending {
        if let Some(c) = &self.cluster {
            let mut rx = c.send(server as u16, bytes, readonly, client_id);
            return async move { cluster_outcome(poll_fn(|cx| rx.poll(cx)).await) }.boxed_local();
        }
        let conns = &self.backends[server];
        let rx = conns[client_id % conns.len()].send(bytes.clone(), ReplyKind::Resp);
        let spec = self.pool.specs[server].clone();
        let replicas: Vec<BackendHandle> = self
            .replicas
            .get(server)
            .map(|rs| rs.iter().map(|c| c[client_id % c.len()].clone()).collect())
            .unwrap_or_default();
        async move {
            let addr = &spec.address;
            let err = match flatten(rx.await) {
                Ok(b) if !(unavailable(&b) && readonly && !replicas.is_empty()) => return Ok(b),
                Ok(b) => {
                    let text = String::from_utf8_lossy(&b[1..b.len() - 2]).into_owned();
                    Failed::new(Failure::ServerError, format!("backend {addr} {text}"))
                }
                Err(e) => {
                    let mut why = format!("backend {addr} {e}");
                    if !replicas.is_empty() && !readonly {
                        why.push_str("; ");
                        why.push_str(WRITES_NEED_PRIMARY);
                    }
                    Failed::new(Failure::of(&e), why)
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
            Err(Failed::new(
                err.failure,
                format!("{}; {}", err.why, tried.join("; ")),
            ))
        }
        .boxed_local()
    }
}

/// A cluster reply as an outcome: the node that could not be reached (kvrouter's own `-ERR
/// backend ...`) is a failure a failover may act on; anything a node answered is a reply.
fn cluster_outcome(b: Bytes) -> Outcome {
    if b.starts_with(b"-ERR backend ") {
        let text = String::from_utf8_lossy(&b[5..b.len().saturating_sub(2)]).into_owned();
        return Err(Failed::new(Failure::ServerError, text));
    }
    Ok(b)
}

/// Route one keyed command (a "route" or "split" command) through `root`: the task's result
/// is the client's reply. Err: the reply refusing it at once.
pub fn dispatch(
    root: &Node<Redis>,
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
    let fut = root.route(op);
    Ok(tokio::task::spawn_local(async move {
        match fut.await {
            Ok(b) => b,
            Err(f) => {
                bump(&stats.server_errors, 1);
                error(&format!("ERR {}", f.why))
            }
        }
    }))
}

/// Commands that keep state on one connection (transactions, WATCH, blocking commands) use the
/// tree's first pool: refuse a key whose route leads elsewhere, rather than misroute it.
pub fn check_home(
    root: &Node<Redis>,
    first: &Arc<PoolRuntime>,
    info: &CommandInfo,
    key: &[u8],
) -> Result<(), String> {
    match root.home(class_of(info), key).map(|t| &t.pool) {
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
