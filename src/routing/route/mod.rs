//! The route tree: one set of route handles (mcrouter's RouteHandles) for both protocols.
//!
//! A listener's `route:` compiles, per worker, into a tree of handles (`Node`). Each handle is
//! written once, in its own file, generic over a protocol `Leaf`: the leaf says how to send a
//! request to a pool and what a reply means (hit, miss, success), and how a gutter caps a
//! request's time to live. Handles never see bytes of a protocol themselves, so adding one
//! means its config syntax (`config::route`), its file here, and one line in `build`.
//!
//! A request goes down the tree as an `Op` of its protocol and comes back as an `Outcome`: the
//! reply bytes for the client, or a `Failed` with the failure kind a failover acts on. Leaves
//! send the moment the tree reaches them, so one client's requests to one server keep their
//! order; a failover waiting on a timeout is a future of its own and holds up nothing else.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{FutureExt, LocalBoxFuture};

use crate::config::Route;
use crate::failover::policy::{Failure, OpClass};

mod all_sync;
mod failover;
mod gutter;
mod operation;
mod pool;
mod prefix;
mod shadow;
mod warm_up;

pub use operation::ByOperation;
pub use prefix::ByPrefix;

/// A try that did not produce a reply for the client: why, and the text the client gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failed {
    pub failure: Failure,
    pub why: String,
}

impl Failed {
    pub fn new(failure: Failure, why: impl Into<String>) -> Failed {
        Failed {
            failure,
            why: why.into(),
        }
    }
}

/// What a route gives back: the reply for the client (an error reply a server sent is a
/// reply), or a failure a failover may act on.
pub type Outcome = Result<Bytes, Failed>;

/// An outcome on its way.
pub type Pending = LocalBoxFuture<'static, Outcome>;

/// An outcome known at once.
pub fn ready(o: Outcome) -> Pending {
    async move { o }.boxed_local()
}

/// What a protocol supplies to the route handles.
pub trait Leaf: 'static {
    /// A pool as one worker reaches it: placement and that worker's connections.
    type Target: 'static;
    /// One request going down the tree (cheap to clone: failover and all_sync copy it).
    type Op: Clone + 'static;

    /// Send `op` to its server(s) in `target` now; the future yields the outcome.
    fn send(target: &Self::Target, op: &Self::Op) -> Pending;
    /// Whether two leaves reach the same pool (a multi-key request may then take either).
    fn same_target(a: &Self::Target, b: &Self::Target) -> bool;
    /// The route grammar's operation class (get, set, delete, other; docs/architecture.md).
    fn class(op: &Self::Op) -> OpClass;
    /// Key `i` of `op` (every op has key 0); None past the last. Indexed rather than a list
    /// so a prefix or operation node allocates nothing per request.
    fn key(op: &Self::Op, i: usize) -> Option<&[u8]>;
    /// The request's name for error texts (`MGET`, `get`).
    fn name(op: &Self::Op) -> String;
    /// A success for `all_sync: all_ok` (not an error, not "not stored"/"not found").
    fn is_ok(reply: &Bytes) -> bool;
    /// A plain miss (what `warm_up` reads warm for).
    fn is_miss(reply: &Bytes) -> bool;
    /// What a gutter sends for `op`: the request with its time to live capped at `max_ttl`, and
    /// requests to send right after it on the same connections (their replies are awaited and
    /// dropped), for protocols that cap with a second command.
    fn for_gutter(op: Self::Op, max_ttl: Duration) -> (Self::Op, Vec<Self::Op>);
    /// `warm_up`: how to read `op`'s value from warm when cold misses; None when `op` is not a
    /// read warm_up handles (it goes to cold only).
    fn warm_read(op: &Self::Op) -> Option<Self::Op>;
    /// `warm_up`: the request that stores warm's `reply` to `op` in cold, with `exptime`.
    fn warm_fill(op: &Self::Op, reply: &Bytes, exptime: Duration) -> Option<Self::Op>;
    /// `warm_up`: whether the client must get cold's reply after the fill (e.g. memcached
    /// `gets`, whose cas unique must be cold's), rather than warm's reply at once.
    fn reread_after_fill(op: &Self::Op) -> bool;
}

/// One route handle.
pub trait Handle<L: Leaf> {
    /// Run `op` down this handle. Leaves reached without waiting send before this returns.
    fn route(&self, op: L::Op) -> Pending;

    /// The pool a leaf sends to (None for every other handle).
    fn target(&self) -> Option<&L::Target> {
        None
    }

    /// The pool a request of `class` for `key` reaches first (failover: its first child;
    /// shadow: the main route), for requests that must stay on one pool.
    fn home(&self, class: OpClass, key: &[u8]) -> Option<&L::Target>;

    /// A gutter: a failover also sends it deletes, so no stale value survives there.
    fn is_gutter(&self) -> bool {
        false
    }
}

/// A built route handle.
pub type Node<L> = Rc<dyn Handle<L>>;

/// What building a tree needs from the worker: pools by name, and metric handles.
pub struct Build<'a, L: Leaf> {
    pub target: &'a dyn Fn(&str) -> L::Target,
    /// `kvrouter_route_failovers_total` of the listener.
    pub failovers: prometheus::IntCounter,
    /// `kvrouter_route_gutter_total` of the listener, for a gutter pool.
    pub gutter_used: &'a dyn Fn(&str) -> prometheus::IntCounter,
}

/// Compile a config route (validated by `config`) for one worker: the registry of handles.
pub fn build<L: Leaf>(route: &Route, b: &Build<L>) -> Node<L> {
    match route {
        Route::Pool { name, .. } => pool::build(name, b),
        Route::Failover {
            children,
            limit,
            on,
            writes,
            ..
        } => failover::build(children, *limit, *on, *writes, b),
        Route::Gutter { pool, max_ttl, .. } => gutter::build(pool, *max_ttl, b),
        Route::Prefix {
            prefixes, default, ..
        } => prefix::build(prefixes, default.as_deref(), b),
        Route::Operation {
            get,
            set,
            delete,
            default,
            ..
        } => operation::build([get, set, delete, default].map(|r| r.as_deref()), b),
        Route::AllSync {
            children, reply, ..
        } => all_sync::build(children, *reply, b),
        Route::Shadow {
            route,
            shadow,
            fraction,
            ..
        } => shadow::build(route, shadow, *fraction, b),
        Route::WarmUp {
            cold,
            warm,
            exptime,
            ..
        } => warm_up::build(cold, warm, *exptime, b),
    }
}

/// The child every key of `op` selects, or the failure refusing it: a multi-key request goes
/// to one route only (two children that are the same pool count as one).
fn select_for_all<'a, L: Leaf>(
    op: &L::Op,
    select: impl Fn(&[u8]) -> Option<&'a Node<L>>,
    none: impl Fn(&[u8]) -> String,
) -> Result<&'a Node<L>, Failed> {
    let first_key = L::key(op, 0).unwrap_or_default();
    let first =
        select(first_key).ok_or_else(|| Failed::new(Failure::ServerError, none(first_key)))?;
    for key in (1..).map_while(|i| L::key(op, i)) {
        let other = select(key).ok_or_else(|| Failed::new(Failure::ServerError, none(key)))?;
        let same = Rc::ptr_eq(first, other)
            || matches!((first.target(), other.target()), (Some(a), Some(b)) if L::same_target(a, b));
        if !same {
            return Err(Failed::new(
                Failure::ServerError,
                format!(
                    "the keys of this {} take different routes ('{}' and '{}'): kvrouter sends a \
                     multi-key command to one route only; send the keys in separate commands",
                    L::name(op),
                    String::from_utf8_lossy(first_key),
                    String::from_utf8_lossy(key),
                ),
            ));
        }
    }
    Ok(first)
}

#[cfg(test)]
mod tests;
