//! A pool at run time: its placement table and the health of its servers, shared by all workers.
//!
//! The placement is immutable and read through arc-swap. Only twemproxy's `auto_eject_hosts`
//! changes it: when a server is ejected (or its retry time passes) the first request to notice
//! rebuilds the table without (or with) it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use bytes::Bytes;

use crate::backend::health::now_ms;
use crate::backend::{ServerHealth, ServerSpec};
use crate::config::{PoolConfig, Protocol};
use crate::protocol::memcache::Limits;
use crate::protocol::resp::encode_request;
use crate::routing::{Node, Placement};

pub struct PoolRuntime {
    pub config: PoolConfig,
    pub specs: Vec<Arc<ServerSpec>>,
    pub limits: Limits,
    nodes: Vec<Node>,
    placement: ArcSwap<Placement>,
    /// Bumped by backend connections when they eject a server.
    epoch: Arc<AtomicU64>,
    /// The epoch the current placement was built for.
    built_epoch: AtomicU64,
    /// When the next ejected server's retry time passes (u64::MAX = none ejected).
    next_readmit: AtomicU64,
    rebuild: Mutex<()>,
}

/// What every backend connection of a Redis pool sends first: `AUTH redis_auth` when set,
/// `SELECT redis_db` when not 0 (twemproxy does the same on each server connection).
fn backend_init(config: &PoolConfig) -> Vec<(String, Bytes)> {
    let mut init = Vec::new();
    if config.protocol != Protocol::Redis {
        return init;
    }
    if let Some(pw) = &config.redis_auth {
        init.push(("AUTH".to_string(), encode_request(&["AUTH", pw]).raw));
    }
    if config.redis_db != 0 {
        let db = config.redis_db.to_string();
        init.push((format!("SELECT {db}"), encode_request(&["SELECT", &db]).raw));
    }
    init
}

impl PoolRuntime {
    pub fn new(config: PoolConfig) -> PoolRuntime {
        let epoch = Arc::new(AtomicU64::new(0));
        let init = backend_init(&config);
        let specs: Vec<Arc<ServerSpec>> = config
            .servers
            .iter()
            .map(|s| {
                Arc::new(ServerSpec {
                    address: s.address(),
                    unix: s.is_unix(),
                    timeout: config.timeout,
                    tcpkeepalive: config.tcpkeepalive,
                    health: Arc::new(ServerHealth::default()),
                    pool_epoch: epoch.clone(),
                    auto_eject: config.auto_eject_hosts,
                    failure_limit: config.failure_limit,
                    retry_timeout: config.retry_timeout,
                    init: init.clone(),
                })
            })
            .collect();
        let nodes: Vec<Node> = config
            .servers
            .iter()
            .map(|s| Node {
                name: s.placement_name(),
                weight: s.weight,
            })
            .collect();
        let live = vec![true; nodes.len()];
        let placement = Placement::new(
            config.distribution,
            config.hash,
            config.hash_tag,
            &nodes,
            &live,
        );
        let limits = Limits {
            item_size_max: config.item_size_max,
            ..Limits::default()
        };
        PoolRuntime {
            config,
            specs,
            limits,
            nodes,
            placement: ArcSwap::from_pointee(placement),
            epoch,
            built_epoch: AtomicU64::new(0),
            next_readmit: AtomicU64::new(u64::MAX),
            rebuild: Mutex::new(()),
        }
    }

    /// The server index that owns `key`, or None when every server is ejected.
    pub fn server_for(&self, key: &[u8]) -> Option<usize> {
        if self.config.auto_eject_hosts {
            self.maybe_rebuild();
        }
        self.placement.load().server_for(key)
    }

    fn maybe_rebuild(&self) {
        let epoch = self.epoch.load(Ordering::Relaxed);
        let now = now_ms();
        if epoch == self.built_epoch.load(Ordering::Relaxed)
            && now < self.next_readmit.load(Ordering::Relaxed)
        {
            return;
        }
        let Ok(_guard) = self.rebuild.try_lock() else {
            return; // another worker is rebuilding
        };
        let mut next = u64::MAX;
        let live: Vec<bool> = self
            .specs
            .iter()
            .map(|s| {
                let until = s.health.ejected_until();
                if until == 0 {
                    true
                } else if now >= until {
                    s.health.readmit();
                    tracing::info!(server = %s.address, "ejected server back in service");
                    true
                } else {
                    next = next.min(until);
                    false
                }
            })
            .collect();
        let placement = Placement::new(
            self.config.distribution,
            self.config.hash,
            self.config.hash_tag,
            &self.nodes,
            &live,
        );
        self.placement.store(Arc::new(placement));
        self.built_epoch.store(epoch, Ordering::Relaxed);
        self.next_readmit.store(next, Ordering::Relaxed);
    }

    /// True when at least one server is in service.
    pub fn has_live_server(&self) -> bool {
        let now = now_ms();
        self.specs.iter().any(|s| !s.health.is_ejected(now))
    }
}
