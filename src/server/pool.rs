//! A pool at run time: its placement table and the health of its servers, shared by all workers.
//!
//! The placement is immutable and read through arc-swap. Only twemproxy's `auto_eject_hosts`
//! changes it: when a server is ejected (or its retry time passes) the first request to notice
//! rebuilds the table without (or with) it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::backend::health::now_ms;
use bytes::Bytes;

use crate::backend::tls::TlsClient;
use crate::backend::{Probe, ReplyKind, ServerHealth, ServerMetrics, ServerSpec};
use crate::config::{PoolConfig, Protocol};
use crate::protocol::memcache::Limits;
use crate::protocol::resp::encode_request;
use crate::routing::{Node, Placement};

use super::metrics::{Families, PoolMetrics};

pub struct PoolRuntime {
    pub config: PoolConfig,
    pub specs: Vec<Arc<ServerSpec>>,
    /// `replicas[server]`: the replicas reads of that server fail over to (redis pools), each
    /// with its own health (TKO, probed with PING), metrics and the pool's AUTH/SELECT.
    pub replicas: Vec<Vec<Arc<ServerSpec>>>,
    pub limits: Limits,
    pub metrics: PoolMetrics,
    /// A Redis Cluster pool's topology (its `specs` are empty: nodes are discovered).
    pub cluster: Option<Arc<super::cluster::ClusterShared>>,
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
    /// A pool with unregistered metrics and no TLS (tests, tools).
    pub fn new(config: PoolConfig) -> PoolRuntime {
        PoolRuntime::build(config, None, &Families::new(None), None)
    }

    /// Build a pool. On reload, `old` is the pool of the same name in the running config: a
    /// server whose name, address and connection settings are unchanged keeps its `ServerSpec`
    /// (its health, its metrics, and in every worker its backend connections). `tls`: the
    /// pool's backend TLS client, built from its config (see `server::tls`); TLS servers always
    /// get new connections on reload, so changed certificates take effect.
    pub fn build(
        config: PoolConfig,
        old: Option<&PoolRuntime>,
        families: &Families,
        tls: Option<TlsClient>,
    ) -> PoolRuntime {
        let epoch = old.map_or_else(|| Arc::new(AtomicU64::new(0)), |o| o.epoch.clone());
        let init = backend_init(&config);
        let probe = match config.protocol {
            Protocol::Memcache => Probe {
                request: Bytes::from_static(b"version\r\n"),
                kind: ReplyKind::McLine,
            },
            Protocol::Redis => Probe {
                request: Bytes::from_static(b"PING\r\n"),
                kind: ReplyKind::Resp,
            },
        };
        let specs: Vec<Arc<ServerSpec>> = config
            .servers
            .iter()
            .map(|s| {
                let name = s.placement_name();
                let fresh = ServerSpec {
                    address: s.address(),
                    unix: s.is_unix(),
                    timeout: config.timeout,
                    tcpkeepalive: config.tcpkeepalive,
                    health: Arc::new(ServerHealth::default()),
                    pool_epoch: epoch.clone(),
                    auto_eject: config.auto_eject_hosts,
                    failure_limit: config.failure_limit,
                    retry_timeout: config.retry_timeout,
                    tls: tls.clone(),
                    tko: config.tko.then(|| probe.clone()),
                    init: init.clone(),
                    metrics: ServerMetrics::unregistered(),
                };
                if let Some(o) = old {
                    let same = o.nodes.iter().zip(&o.specs).find(|(n, spec)| {
                        n.name == name
                            && o.config.connections == config.connections
                            && o.config.preconnect == config.preconnect
                            && same_connection(spec, &fresh)
                    });
                    if let Some((_, spec)) = same {
                        return spec.clone();
                    }
                }
                Arc::new(ServerSpec {
                    metrics: families.server(&config.name, &name),
                    ..fresh
                })
            })
            .collect();
        let replicas: Vec<Vec<Arc<ServerSpec>>> = config
            .servers
            .iter()
            .zip(&config.replicas)
            .map(|(primary, list)| {
                list.iter()
                    .map(|r| {
                        let fresh = ServerSpec {
                            address: r.address(),
                            unix: false,
                            timeout: config.timeout,
                            tcpkeepalive: config.tcpkeepalive,
                            health: Arc::new(ServerHealth::default()),
                            pool_epoch: Arc::new(AtomicU64::new(0)),
                            auto_eject: false,
                            failure_limit: config.failure_limit,
                            retry_timeout: config.retry_timeout,
                            tls: tls.clone(),
                            tko: Some(probe.clone()),
                            init: init.clone(),
                            metrics: ServerMetrics::unregistered(),
                        };
                        let kept = old.and_then(|o| {
                            o.replicas.iter().flatten().find(|spec| {
                                o.config.connections == config.connections
                                    && same_connection(spec, &fresh)
                            })
                        });
                        match kept {
                            Some(spec) => spec.clone(),
                            None => Arc::new(ServerSpec {
                                metrics: families.server(
                                    &config.name,
                                    &replica_name(&primary.placement_name(), &r.address()),
                                ),
                                ..fresh
                            }),
                        }
                    })
                    .collect()
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
        // Servers kept from the running config keep their ejection.
        let now = now_ms();
        let live: Vec<bool> = specs.iter().map(|s| !s.health.is_ejected(now)).collect();
        let next_readmit = specs
            .iter()
            .map(|s| s.health.ejected_until())
            .filter(|&u| u != 0)
            .min()
            .unwrap_or(u64::MAX);
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
        let cluster = config.cluster.as_ref().map(|_| {
            let template = ServerSpec {
                address: String::new(),
                unix: false,
                timeout: config.timeout,
                tcpkeepalive: config.tcpkeepalive,
                health: Arc::new(ServerHealth::default()),
                pool_epoch: epoch.clone(),
                auto_eject: false,
                failure_limit: config.failure_limit,
                retry_timeout: config.retry_timeout,
                tls: tls.clone(),
                tko: None,
                init: init.clone(),
                metrics: ServerMetrics::unregistered(),
            };
            match old.and_then(|o| o.cluster.as_ref()) {
                Some(c) if c.reusable(&config, &template) => c.clone(),
                _ => Arc::new(super::cluster::ClusterShared::new(
                    &config, template, families,
                )),
            }
        });
        PoolRuntime {
            cluster,
            metrics: families.pool(&config.name),
            config,
            specs,
            replicas,
            limits,
            nodes,
            placement: ArcSwap::from_pointee(placement),
            epoch: epoch.clone(),
            built_epoch: AtomicU64::new(epoch.load(Ordering::Relaxed)),
            next_readmit: AtomicU64::new(next_readmit),
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

    /// The placement names of the servers, in `specs` order.
    pub fn server_names(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(|n| n.name.as_str())
    }

    /// The metric names of the replicas (`server` label), in `replicas` order.
    pub fn replica_names(&self) -> Vec<String> {
        self.nodes
            .iter()
            .zip(&self.replicas)
            .flat_map(|(n, rs)| rs.iter().map(|r| replica_name(&n.name, &r.address)))
            .collect()
    }

    /// Why a key of this pool has nowhere to go (every server ejected): the one text both
    /// protocols answer with.
    pub fn no_server(&self) -> String {
        format!("no server available in pool {}", self.config.name)
    }

    /// True when at least one server is in service.
    pub fn has_live_server(&self) -> bool {
        if let Some(c) = &self.cluster {
            return c.map().complete();
        }
        let now = now_ms();
        self.specs
            .iter()
            .any(|s| !s.health.is_ejected(now) && !s.health.is_down())
    }
}

/// A replica's `server` metric label: `PRIMARY/replica/HOST:PORT`.
pub fn replica_name(primary: &str, address: &str) -> String {
    format!("{primary}/replica/{address}")
}

/// Whether a backend connection to `a` serves `b` as well.
fn same_connection(a: &ServerSpec, b: &ServerSpec) -> bool {
    a.address == b.address
        && a.unix == b.unix
        && a.timeout == b.timeout
        && a.tcpkeepalive == b.tcpkeepalive
        && a.auto_eject == b.auto_eject
        && a.failure_limit == b.failure_limit
        && a.retry_timeout == b.retry_timeout
        && a.tko.is_some() == b.tko.is_some()
        && a.init == b.init
        && a.tls.is_none()
        && b.tls.is_none()
}
