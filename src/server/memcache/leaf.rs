//! memcached as a route-tree leaf (`routing::route::Leaf`): a request through a tree is one
//! single-key operation (`McOp`, as mcrouter cuts multi-gets), sent to the key's server; a
//! `SERVER_ERROR` reply or a backend failure is a `Failed` a failover may act on.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::FutureExt;

use crate::backend::{BackendHandle, ReplyKind};
use crate::failover::gutter;
use crate::failover::policy::{Failure, OpClass};
use crate::protocol::memcache::{self, Command};
use crate::routing::route::{self, Failed, Leaf, Outcome, Pending};
use crate::server::pool::PoolRuntime;

/// A pool as a route leaf: its placement and this worker's connections to its servers.
#[derive(Clone)]
pub struct Target {
    pub pool: Arc<PoolRuntime>,
    pub backends: Rc<Vec<Vec<BackendHandle>>>,
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

/// The route grammar's operation classes (docs/architecture.md) for memcached commands.
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

/// A backend's reply as an outcome: `SERVER_ERROR` is a failure a failover may act on.
fn outcome(b: Bytes) -> Outcome {
    if b.starts_with(b"SERVER_ERROR") {
        let text = String::from_utf8_lossy(b.strip_suffix(b"\r\n").unwrap_or(&b))
            .trim_start_matches("SERVER_ERROR ")
            .to_string();
        Err(Failed::new(Failure::ServerError, text))
    } else {
        Ok(b)
    }
}

/// The bytes for the client: the reply, or `SERVER_ERROR reason`.
pub fn into_bytes(o: Outcome) -> Bytes {
    match o {
        Ok(b) => b,
        Err(f) => Bytes::from(format!("SERVER_ERROR {}\r\n", f.why)),
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The memcached protocol's side of the route tree.
pub enum Memcache {}

impl Leaf for Memcache {
    type Target = Target;
    type Op = McOp;

    fn send(t: &Target, op: &McOp) -> Pending {
        let Some(server) = t.pool.server_for(&op.key) else {
            let why = t.pool.no_server();
            return route::ready(Err(Failed::new(Failure::ServerError, why)));
        };
        let conns = &t.backends[server];
        let rx = conns[op.client_id % conns.len()]
            .send(op.bytes.clone(), reply_kind(op.command, op.quiet));
        let spec = t.pool.specs[server].clone();
        let quiet = op.quiet;
        async move {
            match rx.await {
                Ok(Ok(b)) if quiet => outcome(memcache::strip_quiet_sentinel(b)),
                Ok(Ok(b)) => outcome(b),
                Ok(Err(e)) => Err(Failed::new(
                    Failure::of(&e),
                    format!("backend {} {e}", spec.address),
                )),
                Err(_) => Err(Failed::new(
                    Failure::ServerError,
                    format!("backend {} connection went away", spec.address),
                )),
            }
        }
        .boxed_local()
    }

    fn same_target(a: &Target, b: &Target) -> bool {
        Arc::ptr_eq(&a.pool, &b.pool)
    }

    fn class(op: &McOp) -> OpClass {
        class_of(op.command)
    }

    fn key(op: &McOp, i: usize) -> Option<&[u8]> {
        (i == 0).then_some(&op.key[..])
    }

    fn name(op: &McOp) -> String {
        format!("{:?}", op.command).to_lowercase()
    }

    /// Not an error, and not NOT_STORED / EXISTS / NOT_FOUND (meta: NS / EX / NF).
    fn is_ok(b: &Bytes) -> bool {
        !memcache::is_error_reply(b)
            && !b.starts_with(b"NOT_STORED")
            && !b.starts_with(b"EXISTS")
            && !b.starts_with(b"NOT_FOUND")
            && !b.starts_with(b"NS")
            && !b.starts_with(b"EX")
            && !b.starts_with(b"NF")
    }

    fn is_miss(b: &Bytes) -> bool {
        b.as_ref() == b"END\r\n"
    }

    /// memcached carries its exptime in the request: rewrite it, capped.
    fn for_gutter(op: McOp, max_ttl: Duration) -> (McOp, Vec<McOp>) {
        let now = now_unix();
        let cap = |e| gutter::cap(e, max_ttl, now);
        let capped = if op.command.is_meta() {
            memcache::rewrite_meta_ttl(op.command, &op.bytes, cap)
        } else {
            memcache::rewrite_exptime(op.command, &op.bytes, cap)
        };
        let op = match capped {
            Some(bytes) => McOp { bytes, ..op },
            None => op,
        };
        (op, Vec::new())
    }

    /// Text gets only (meta gets carry their own lease and vivify semantics: cold only); warm
    /// is read with a plain `get`, so `gets`/`gats` do not need warm's cas.
    fn warm_read(op: &McOp) -> Option<McOp> {
        match op.command {
            Command::Get | Command::Gat => Some(op.clone()),
            Command::Gets | Command::Gats => Some(McOp {
                command: Command::Get,
                bytes: memcache::compose_retrieval(
                    Command::Get,
                    None,
                    std::slice::from_ref(&op.key),
                ),
                ..op.clone()
            }),
            _ => None,
        }
    }

    fn warm_fill(op: &McOp, reply: &Bytes, exptime: Duration) -> Option<McOp> {
        let item = memcache::split_items(reply).ok()?.pop()?;
        let set = memcache::set_from_item(&item, exptime.as_secs() as i64)?;
        Some(McOp {
            command: Command::Set,
            bytes: set,
            ..op.clone()
        })
    }

    /// `gets`/`gats`: the cas unique the client sees must be cold's.
    fn reread_after_fill(op: &McOp) -> bool {
        matches!(op.command, Command::Gets | Command::Gats)
    }
}
