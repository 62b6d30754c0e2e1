//! A Redis listener's per-worker context, built from a generation and this worker's
//! connections (`conns::WorkerPools`).

use std::sync::Arc;

use super::leaf::{RTarget, Redis};
use super::RedisContext;
use crate::config::{ListenerConfig, Route};
use crate::protocol::resp::RespLimits;
use crate::routing::route::{self, Build};
use crate::server::conns::WorkerPools;
use crate::server::follow::Follow;
use crate::server::hot::HotCtx;
use crate::server::pool::PoolRuntime;
use crate::server::ListenerRuntime;

/// Is the route one pool without replicas? Its keyed commands then take the connection's own
/// paths (`keyed.rs`: straight onto a server's connection, no task, hot keys, cluster
/// redirections), not the tree.
fn is_direct(route: &Route, first: &PoolRuntime) -> bool {
    match route {
        Route::Pool { .. } => first.replicas.iter().all(|r| r.is_empty()),
        _ => false,
    }
}

impl RedisContext {
    /// `previous`: this listener's context in the last generation (hot-key state carries over).
    pub fn build(
        l: &ListenerRuntime,
        lc: &ListenerConfig,
        pools: &WorkerPools,
        previous: Option<&RedisContext>,
        follow: Follow<RedisContext>,
    ) -> RedisContext {
        let first = pools.pool(l.pool);
        let mut limits = RespLimits::default();
        if let Some(max) = lc.max_request_bytes {
            limits.max_bulk_len = limits.max_bulk_len.min(max);
        }
        let hot = l.hot.as_ref().map(|h| {
            // A cluster hashes `{...}` tags, whatever the pool says.
            let tag = if first.cluster.is_some() {
                Some(*b"{}")
            } else {
                first.config.hash_tag
            };
            HotCtx::new(&h.keys, previous.and_then(|p| p.hot.as_ref()), tag)
        });
        let route_metrics = pools.families.route(&l.name);
        let target = |n: &str| {
            let p = pools.index(n);
            RTarget {
                pool: pools.pool(p).clone(),
                backends: pools.servers[&p].clone(),
                replicas: pools.replicas[&p].clone(),
                cluster: pools.cluster(pools.pool(p)),
            }
        };
        let routing = route::build::<Redis>(
            &lc.route,
            &Build {
                target: &target,
                failovers: route_metrics.failovers.clone(),
                gutter_used: &|p| route_metrics.gutter(p),
            },
        );
        RedisContext {
            hot,
            pool: first.clone(),
            backends: pools.servers[&l.pool].clone(),
            cluster: pools.cluster(first),
            stats: pools.stats.clone(),
            threads: pools.threads,
            pools: pools.generation.pools.clone(),
            limits,
            tls: l.tls.clone(),
            metrics: l.metrics.clone(),
            users: Arc::new(lc.users.clone()),
            listener: l.name.clone(),
            reach: lc.route.pools().into_iter().map(String::from).collect(),
            client: crate::server::client::ClientLimits::of(lc),
            direct: is_direct(&lc.route, first),
            routing,
            follow,
        }
    }
}
