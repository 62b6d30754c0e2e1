//! Config generations and hot reload.
//!
//! A reload builds a new `Generation` from a validated config and swaps it in whole (arc-swap).
//! Nothing is patched in place:
//! - servers whose pool, name, address and connection settings are unchanged keep their
//!   `ServerSpec` (health, metrics) and, in every worker, their backend connections;
//! - each worker notices the new generation (woken by a watch channel, and checked cheaply by
//!   every client at its next request batch) and builds new per-listener contexts; a client
//!   switches at its next batch, while the replies it still owes are finished on the context
//!   (and backend connections) they were sent with;
//! - listeners are keyed by their address: new ones are bound before the swap (a bind error
//!   fails the reload, nothing changes), removed ones stop accepting and close; their
//!   connected clients keep being served on the old routing until they disconnect.
//!
//! `workers` cannot change without a restart (the worker threads are started once).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use super::cluster::ClusterWorker;
use super::hot::HotCtx;
use super::listener::{self, Bound};
use super::memcache::McContext;
use super::metrics::Families;
use super::pool::PoolRuntime;
use super::redis::RedisContext;
use super::redis_route::{self, RNode, RTarget};
use super::route::{Node, Target};
use super::Ctx;
use super::{check, Generation, ListenerRuntime, Running, Shared};
use crate::backend::BackendHandle;
use crate::config::{Config, Protocol, Route};
use crate::protocol::resp::RespLimits;

/// Seconds since the Unix epoch, for the last-reload gauge.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Build generation `id` from `config`. With `old`, pools of the same name reuse unchanged
/// servers and listeners of the same address keep their id and client limit.
pub(crate) fn build_generation(
    config: Config,
    id: u64,
    old: Option<&Generation>,
    families: &Families,
    next_listener_id: &mut u64,
) -> Result<Generation, String> {
    let listener_pool = check(&config)?;
    let pools: Vec<Arc<PoolRuntime>> = config
        .pools
        .iter()
        .map(|p| {
            let previous = old.and_then(|g| g.pools.iter().find(|o| o.config.name == p.name));
            let tls = p
                .tls
                .as_ref()
                .map(|t| super::tls::client(&config, t))
                .transpose()?;
            Ok(Arc::new(PoolRuntime::build(
                p.clone(),
                previous.map(|p| &**p),
                families,
                tls,
            )))
        })
        .collect::<Result<_, String>>()?;
    let listeners = config
        .listeners
        .iter()
        .zip(listener_pool)
        .map(|(l, pool)| {
            let name = l.listen.to_string();
            let previous = old.and_then(|g| g.listeners.iter().find(|o| o.name == name));
            let (lid, max_clients) = match previous {
                Some(p) => {
                    p.max_clients.store(l.max_clients, Ordering::Relaxed);
                    (p.id, p.max_clients.clone())
                }
                None => {
                    *next_listener_id += 1;
                    (*next_listener_id, Arc::new(AtomicUsize::new(l.max_clients)))
                }
            };
            let hot = match &l.hot_keys {
                Some(h) => Some(super::hot::HotRuntime::build(
                    &name,
                    h,
                    previous.and_then(|p| p.hot.as_ref()),
                    families,
                )),
                None => {
                    if previous.is_some_and(|p| p.hot.is_some()) {
                        families.remove_hot(&name);
                    }
                    None
                }
            };
            Ok(ListenerRuntime {
                id: lid,
                hot,
                metrics: Arc::new(families.listener(&name)),
                name,
                pool,
                max_clients,
                tls: l
                    .tls
                    .as_ref()
                    .map(|t| super::tls::acceptor(&config, t))
                    .transpose()?,
                protocol: l.protocol,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(Generation {
        id,
        config: Arc::new(config),
        pools,
        listeners,
    })
}

/// An accept loop on the main runtime, stopped when its listener is removed or at shutdown.
pub(crate) struct Acceptor {
    stop: watch::Sender<bool>,
}

impl Acceptor {
    pub(crate) fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// What a reload changed, for the log.
#[derive(Debug, Default)]
pub struct ReloadSummary {
    pub generation: u64,
    pub listeners_added: Vec<String>,
    pub listeners_removed: Vec<String>,
    pub servers_kept: usize,
    pub servers_new: usize,
}

impl std::fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "generation {}: {} servers kept, {} new",
            self.generation, self.servers_kept, self.servers_new
        )?;
        if !self.listeners_added.is_empty() {
            write!(f, "; listeners opened: {}", self.listeners_added.join(", "))?;
        }
        if !self.listeners_removed.is_empty() {
            write!(
                f,
                "; listeners closed: {}",
                self.listeners_removed.join(", ")
            )?;
        }
        Ok(())
    }
}

impl Running {
    pub(crate) fn spawn_acceptor(&mut self, l: &ListenerRuntime, bound: Bound) {
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(listener::accept_loop(
            bound,
            l.id,
            self.senders.clone(),
            l.max_clients.clone(),
            l.metrics.clients.clone(),
            l.metrics.clients_total.clone(),
            stop_rx,
            match l.protocol {
                Protocol::Memcache => listener::FULL_MEMCACHE,
                Protocol::Redis => listener::FULL_REDIS,
            },
        ));
        self.acceptors.insert(l.name.clone(), Acceptor { stop });
    }

    /// Count a reload attempt (`kvrouter_config_reloads_total{result}`).
    pub fn count_reload(&self, ok: bool) {
        self.shared.families.reload(ok).inc();
    }

    /// Swap in `config` (already loaded and validated by `Config::load`). On error nothing
    /// changed: the running config keeps serving. Must run on the main runtime (it spawns the
    /// accept loops of new listeners there).
    pub fn reload(&mut self, config: Config) -> Result<ReloadSummary, String> {
        let old = self.shared.current();
        let file = config.file.display().to_string();
        if config.workers != old.config.workers {
            let show = |w: Option<usize>| w.map_or("one per core".to_string(), |w| w.to_string());
            return Err(format!(
                "{file}: workers changed from {} to {}: this needs a restart (reload refused, the running config stays)",
                show(old.config.workers),
                show(config.workers)
            ));
        }
        check(&config)?;

        // Bind new listeners first: a bind error fails the reload with nothing changed.
        let mut bound = HashMap::new();
        for l in &config.listeners {
            let name = l.listen.to_string();
            if !self.acceptors.contains_key(&name) {
                let b = listener::bind(l)
                    .map_err(|e| format!("{file}: cannot listen on {name}: {e}"))?;
                bound.insert(name, b);
            }
        }

        let id = old.id + 1;
        let new = build_generation(
            config,
            id,
            Some(&old),
            &self.shared.families,
            &mut self.next_listener_id,
        )?;
        let mut summary = ReloadSummary {
            generation: id,
            ..ReloadSummary::default()
        };
        let old_specs: HashSet<*const _> = old
            .pools
            .iter()
            .flat_map(|p| p.specs.iter().map(Arc::as_ptr))
            .collect();
        for p in &new.pools {
            for s in &p.specs {
                if old_specs.contains(&Arc::as_ptr(s)) {
                    summary.servers_kept += 1;
                } else {
                    summary.servers_new += 1;
                }
            }
        }

        let new = Arc::new(new);
        self.shared.current.store(new.clone());
        self.shared.current_id.store(id, Ordering::Release);
        let _ = self.wake.send(id);

        // Listeners: close removed ones, open new ones.
        let keep: HashSet<&str> = new.listeners.iter().map(|l| l.name.as_str()).collect();
        let removed: Vec<String> = self
            .acceptors
            .keys()
            .filter(|k| !keep.contains(k.as_str()))
            .cloned()
            .collect();
        for name in removed {
            if let Some(a) = self.acceptors.remove(&name) {
                a.stop();
            }
            self.shared.families.remove_listener(&name);
            summary.listeners_removed.push(name);
        }
        for l in &new.listeners {
            if let Some(b) = bound.remove(&l.name) {
                self.spawn_acceptor(l, b);
                summary.listeners_added.push(l.name.clone());
            }
        }

        // Metric series of servers (and replicas) and pools that are gone.
        let labels = |p: &PoolRuntime| {
            let mut v: Vec<String> = p.server_names().map(str::to_string).collect();
            v.extend(p.replica_names());
            v
        };
        let now: HashSet<(String, String)> = new
            .pools
            .iter()
            .flat_map(|p| labels(p).into_iter().map(|s| (p.config.name.clone(), s)))
            .collect();
        for p in &old.pools {
            for s in labels(p) {
                if !now.contains(&(p.config.name.clone(), s.clone())) {
                    self.shared.families.remove_server(&p.config.name, &s);
                }
            }
            if !new.pools.iter().any(|n| n.config.name == p.config.name) {
                self.shared.families.remove_pool(&p.config.name);
            }
        }
        self.shared.families.generation.set(id as i64);
        self.shared.families.last_reload_success.set(unix_now());
        Ok(summary)
    }
}

/// One worker's view of the routing: its per-listener contexts and its backend connections,
/// rebuilt when a new generation appears. Worker-local (Rc, RefCell): never crosses threads.
pub struct WorkerRouting {
    shared: Arc<Shared>,
    me: Weak<WorkerRouting>,
    built: Cell<u64>,
    contexts: RefCell<HashMap<u64, Ctx>>,
    /// Backend connections per server, keyed by the server's `ServerSpec` (kept alive by the
    /// handles themselves, so the key cannot be reused while present).
    backends: RefCell<HashMap<usize, Vec<BackendHandle>>>,
    /// This worker's side of each cluster pool, keyed by its `ClusterShared` (kept while a
    /// reload keeps the pool's cluster state, so its node connections survive).
    clusters: RefCell<HashMap<usize, Rc<ClusterWorker>>>,
}

impl WorkerRouting {
    pub fn new(shared: Arc<Shared>) -> Rc<WorkerRouting> {
        Rc::new_cyclic(|me| WorkerRouting {
            shared,
            me: me.clone(),
            built: Cell::new(0),
            contexts: RefCell::new(HashMap::new()),
            backends: RefCell::new(HashMap::new()),
            clusters: RefCell::new(HashMap::new()),
        })
    }

    /// The context for new requests of `listener`'s clients, in the newest generation; None
    /// when the listener is gone.
    pub fn context(&self, listener: u64) -> Option<Rc<McContext>> {
        match self.client_context(listener)? {
            Ctx::Mc(c) => Some(c),
            Ctx::Redis(_) => None,
        }
    }

    /// The context a newly accepted client of `listener` starts with (either protocol).
    pub fn client_context(&self, listener: u64) -> Option<Ctx> {
        self.refresh();
        self.contexts.borrow().get(&listener).cloned()
    }

    /// Rebuild the contexts if the active generation is newer than the one they were built for.
    pub fn refresh(&self) {
        let generation = self.shared.current();
        if generation.id == self.built.get() {
            return;
        }
        let mut old = self.backends.take();
        let mut backends: HashMap<usize, Vec<BackendHandle>> = HashMap::new();
        let mut per_pool: HashMap<usize, Rc<Vec<Vec<BackendHandle>>>> = HashMap::new();
        let mut per_pool_replicas: HashMap<usize, Rc<Vec<Vec<Vec<BackendHandle>>>>> =
            HashMap::new();
        let pool_index = |name: &str| {
            generation
                .pools
                .iter()
                .position(|p| p.config.name == name)
                .expect("routes name known pools (checked by config)")
        };
        // Every pool some listener's route can reach.
        let used: Vec<usize> = generation
            .config
            .listeners
            .iter()
            .flat_map(|l| l.route.pools())
            .map(pool_index)
            .collect();
        for p in used {
            if per_pool.contains_key(&p) {
                continue;
            }
            let pool = &generation.pools[p];
            let mut handles = |spec: &Arc<crate::backend::ServerSpec>| {
                let key = Arc::as_ptr(spec) as usize;
                let h = match old.remove(&key).or_else(|| backends.get(&key).cloned()) {
                    Some(h) => h,
                    None => (0..pool.config.connections.max(1))
                        .map(|_| BackendHandle::spawn(spec.clone(), pool.config.preconnect))
                        .collect(),
                };
                backends.insert(key, h.clone());
                h
            };
            let servers: Vec<Vec<BackendHandle>> = pool.specs.iter().map(&mut handles).collect();
            let replicas: Vec<Vec<Vec<BackendHandle>>> = pool
                .replicas
                .iter()
                .map(|rs| rs.iter().map(&mut handles).collect())
                .collect();
            per_pool.insert(p, Rc::new(servers));
            per_pool_replicas.insert(p, Rc::new(replicas));
        }
        let target = |name: &str| {
            let p = pool_index(name);
            Target {
                pool: generation.pools[p].clone(),
                backends: per_pool[&p].clone(),
            }
        };
        let mut old_clusters = self.clusters.take();
        let mut clusters = HashMap::new();
        for p in &generation.pools {
            if let Some(c) = &p.cluster {
                let key = Arc::as_ptr(c) as usize;
                let w = old_clusters.remove(&key).unwrap_or_else(|| {
                    Rc::new(ClusterWorker::new(
                        c.clone(),
                        p.config.connections,
                        self.shared.stats.clone(),
                    ))
                });
                c.maybe_refresh();
                clusters.insert(key, w);
            }
        }
        drop(old_clusters);
        let old_contexts = self.contexts.take();
        let contexts = generation
            .listeners
            .iter()
            .zip(&generation.config.listeners)
            .map(|(l, lc)| {
                if lc.protocol == Protocol::Redis {
                    let mut limits = RespLimits::default();
                    if let Some(max) = lc.max_request_bytes {
                        limits.max_bulk_len = limits.max_bulk_len.min(max);
                    }
                    let hot = l.hot.as_ref().map(|h| {
                        let previous = match old_contexts.get(&l.id) {
                            Some(Ctx::Redis(c)) => c.hot.as_ref(),
                            _ => None,
                        };
                        let pool = &generation.pools[l.pool];
                        // A cluster hashes `{...}` tags, whatever the pool says.
                        let tag = if pool.cluster.is_some() {
                            Some(*b"{}")
                        } else {
                            pool.config.hash_tag
                        };
                        HotCtx::new(&h.keys, previous, tag)
                    });
                    let ctx = RedisContext {
                        hot,
                        pool: generation.pools[l.pool].clone(),
                        backends: per_pool[&l.pool].clone(),
                        cluster: generation.pools[l.pool]
                            .cluster
                            .as_ref()
                            .map(|c| clusters[&(Arc::as_ptr(c) as usize)].clone()),
                        stats: self.shared.stats.clone(),
                        threads: self.shared.threads,
                        pools: generation.pools.clone(),
                        limits,
                        tls: l.tls.clone(),
                        metrics: l.metrics.clone(),
                        users: Arc::new(lc.users.clone()),
                        listener: l.name.clone(),
                        reach: lc.route.pools().into_iter().map(String::from).collect(),
                        client: super::client::ClientLimits::of(lc),
                        routing: redis_route::needs_tree(&lc.route, &|n| {
                            generation.pools[pool_index(n)].clone()
                        })
                        .then(|| {
                            RNode::build(&lc.route, &|n| {
                                let p = pool_index(n);
                                RTarget {
                                    pool: generation.pools[p].clone(),
                                    backends: per_pool[&p].clone(),
                                    replicas: per_pool_replicas[&p].clone(),
                                }
                            })
                        }),
                        follow: Follow {
                            listener: l.id,
                            built_for: generation.id,
                            current: self.shared.current_id.clone(),
                            worker: self.me.clone(),
                        },
                    };
                    return (l.id, Ctx::Redis(Rc::new(ctx)));
                }
                let hot = l.hot.as_ref().map(|h| {
                    let previous = match old_contexts.get(&l.id) {
                        Some(Ctx::Mc(c)) => c.hot.as_ref(),
                        _ => None,
                    };
                    HotCtx::new(&h.keys, previous, generation.pools[l.pool].config.hash_tag)
                });
                let route_metrics = self.shared.families.route(&l.name);
                let mut limits = generation.pools[l.pool].limits;
                if let Some(max) = lc.max_request_bytes {
                    limits.item_size_max = limits.item_size_max.min(max);
                    limits.max_line_len = limits.max_line_len.min(max);
                }
                let ctx = McContext {
                    pool: generation.pools[l.pool].clone(),
                    backends: per_pool[&l.pool].clone(),
                    stats: self.shared.stats.clone(),
                    threads: self.shared.threads,
                    route: match &lc.route {
                        Route::Pool { .. } => None,
                        r => Some(Node::build(r, &target, &route_metrics)),
                    },
                    flush_targets: lc.route.pools().into_iter().map(&target).collect(),
                    limits,
                    client: super::client::ClientLimits::of(lc),
                    tls: l.tls.clone(),
                    coalesce: lc.coalesce_misses.then(Default::default),
                    hot,
                    metrics: l.metrics.clone(),
                    follow: Follow {
                        listener: l.id,
                        built_for: generation.id,
                        current: self.shared.current_id.clone(),
                        worker: self.me.clone(),
                    },
                };
                (l.id, Ctx::Mc(Rc::new(ctx)))
            })
            .collect();
        // Connections of servers no longer configured close once no client context holds
        // them (the backend task finishes what is in flight, then sees its channel close).
        drop(old);
        *self.backends.borrow_mut() = backends;
        *self.contexts.borrow_mut() = contexts;
        *self.clusters.borrow_mut() = clusters;
        self.built.set(generation.id);
    }
}

impl WorkerRouting {
    /// Every TICK: hand this worker's hot-key samples to each listener's detector.
    pub fn hot_tick(&self) {
        let now = std::time::Instant::now();
        for ctx in self.contexts.borrow().values() {
            let hot = match ctx {
                Ctx::Mc(c) => c.hot.as_ref(),
                Ctx::Redis(c) => c.hot.as_ref(),
            };
            if let Some(h) = hot {
                h.tick(now);
            }
        }
    }
}

/// Lets a client connection notice, at its next request batch, that a newer generation is
/// active, and fetch its new context.
pub struct Follow {
    listener: u64,
    built_for: u64,
    current: Arc<AtomicU64>,
    worker: Weak<WorkerRouting>,
}

impl Follow {
    /// The newer context for this client's listener, if a reload happened since this one was
    /// built (one relaxed atomic load when nothing changed).
    #[inline]
    pub fn newer(&self) -> Option<Rc<McContext>> {
        if self.current.load(Ordering::Relaxed) == self.built_for {
            return None;
        }
        self.worker.upgrade()?.context(self.listener)
    }

    /// The same for a redis client.
    #[inline]
    pub fn newer_redis(&self) -> Option<Rc<RedisContext>> {
        if self.current.load(Ordering::Relaxed) == self.built_for {
            return None;
        }
        match self.worker.upgrade()?.client_context(self.listener)? {
            Ctx::Redis(c) => Some(c),
            Ctx::Mc(_) => None,
        }
    }
}
