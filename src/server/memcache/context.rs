//! A memcached listener's per-worker context, built from a generation and this worker's
//! connections (`conns::WorkerPools`).

use super::leaf::{Memcache, Target};
use super::McContext;
use crate::config::ListenerConfig;
use crate::routing::route::{self, Build};
use crate::server::conns::WorkerPools;
use crate::server::follow::Follow;
use crate::server::hot::HotCtx;
use crate::server::ListenerRuntime;

impl McContext {
    /// `previous`: this listener's context in the last generation (hot-key state carries over).
    pub fn build(
        l: &ListenerRuntime,
        lc: &ListenerConfig,
        pools: &WorkerPools,
        previous: Option<&McContext>,
        follow: Follow<McContext>,
    ) -> McContext {
        let first = pools.pool(l.pool);
        let target = |name: &str| {
            let p = pools.index(name);
            Target {
                pool: pools.pool(p).clone(),
                backends: pools.servers[&p].clone(),
            }
        };
        let route_metrics = pools.families.route(&l.name);
        let mut limits = first.limits;
        if let Some(max) = lc.max_request_bytes {
            limits.item_size_max = limits.item_size_max.min(max);
            limits.max_line_len = limits.max_line_len.min(max);
        }
        McContext {
            pool: first.clone(),
            backends: pools.servers[&l.pool].clone(),
            stats: pools.listener_stats.get(&l.name),
            threads: pools.threads,
            route: route::build::<Memcache>(
                &lc.route,
                &Build {
                    target: &target,
                    failovers: route_metrics.failovers.clone(),
                    gutter_used: &|p| route_metrics.gutter(p),
                },
            ),
            flush_targets: lc.route.pools().into_iter().map(target).collect(),
            limits,
            client: crate::server::client::ClientLimits::of(lc),
            tls: l.tls.clone(),
            coalesce: lc.coalesce_misses.then(Default::default),
            hot: l.hot.as_ref().map(|h| {
                HotCtx::new(
                    &h.keys,
                    previous.and_then(|p| p.hot.as_ref()),
                    first.config.hash_tag,
                )
            }),
            metrics: l.metrics.clone(),
            follow,
        }
    }
}
