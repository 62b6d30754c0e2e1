//! A worker thread: its own current-thread tokio runtime, its client connections and its own
//! backend connections (Envoy's and mcrouter's model), so the request path crosses no thread
//! and takes no lock.
//!
//! `WorkerRouting` is the worker's view of the routing: its per-listener contexts and backend
//! connections, rebuilt when a reload swaps in a new generation. Servers that a reload left
//! unchanged keep their connections; each protocol builds its own context from them
//! (`McContext::build`, `RedisContext::build`), and clients move over through `Follow`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::cluster::ClusterWorker;
use super::conns::WorkerPools;
use super::follow::{Contexts, Follow};
use super::listener::Accepted;
use super::memcache::McContext;
use super::redis::RedisContext;
use super::{Ctx, Shared, DRAIN_TIMEOUT};
use crate::backend::BackendHandle;
use crate::config::Protocol;

/// Failed TLS handshakes (any client can cause them at will): one log line per interval.
static TLS_FAILURE_LOG: crate::logging::LogLimit =
    crate::logging::LogLimit::new(Duration::from_secs(10));

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

impl Contexts<McContext> for WorkerRouting {
    fn newest(&self, listener: u64) -> Option<Rc<McContext>> {
        match self.client_context(listener)? {
            Ctx::Mc(c) => Some(c),
            Ctx::Redis(_) => None,
        }
    }
}

impl Contexts<RedisContext> for WorkerRouting {
    fn newest(&self, listener: u64) -> Option<Rc<RedisContext>> {
        match self.client_context(listener)? {
            Ctx::Redis(c) => Some(c),
            Ctx::Mc(_) => None,
        }
    }
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

    /// The context a newly accepted client of `listener` starts with (either protocol), in
    /// the newest generation; None when the listener is gone.
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
        let mut pools = WorkerPools {
            generation: &generation,
            servers: HashMap::new(),
            replicas: HashMap::new(),
            clusters: HashMap::new(),
            stats: self.shared.stats.clone(),
            listener_stats: &self.shared.listener_stats,
            threads: self.shared.threads,
            families: &self.shared.families,
        };
        let backends = self.connect(&mut pools);
        let old_contexts = self.contexts.take();
        let contexts = generation
            .listeners
            .iter()
            .zip(&generation.config.listeners)
            .map(|(l, lc)| {
                let previous = old_contexts.get(&l.id);
                let ctx = match lc.protocol {
                    Protocol::Memcache => Ctx::Mc(Rc::new(McContext::build(
                        l,
                        lc,
                        &pools,
                        match previous {
                            Some(Ctx::Mc(c)) => Some(c),
                            _ => None,
                        },
                        self.follow(l.id, generation.id),
                    ))),
                    Protocol::Redis => Ctx::Redis(Rc::new(RedisContext::build(
                        l,
                        lc,
                        &pools,
                        match previous {
                            Some(Ctx::Redis(c)) => Some(c),
                            _ => None,
                        },
                        self.follow(l.id, generation.id),
                    ))),
                };
                (l.id, ctx)
            })
            .collect();
        // Connections of servers no longer configured close once no client context holds
        // them (the backend task finishes what is in flight, then sees its channel close).
        *self.backends.borrow_mut() = backends;
        *self.contexts.borrow_mut() = contexts;
        *self.clusters.borrow_mut() = std::mem::take(&mut pools.clusters);
        self.built.set(generation.id);
    }

    fn follow<C: 'static>(&self, listener: u64, built_for: u64) -> Follow<C>
    where
        WorkerRouting: Contexts<C>,
    {
        let me: Weak<dyn Contexts<C>> = self.me.clone();
        Follow::new(listener, built_for, self.shared.current_id.clone(), me)
    }

    /// Fill `pools` with this worker's connections to every pool some listener's route can
    /// reach, reusing those of unchanged servers; returns the new connection table.
    fn connect(&self, pools: &mut WorkerPools) -> HashMap<usize, Vec<BackendHandle>> {
        let generation = pools.generation;
        let mut old = self.backends.take();
        let mut backends: HashMap<usize, Vec<BackendHandle>> = HashMap::new();
        let used: Vec<usize> = generation
            .config
            .listeners
            .iter()
            .flat_map(|l| l.route.pools())
            .map(|n| pools.index(n))
            .collect();
        for p in used {
            if pools.servers.contains_key(&p) {
                continue;
            }
            let pool = &generation.pools[p];
            let mut handles = |spec: &Arc<crate::backend::ServerSpec>| {
                let key = Arc::as_ptr(spec) as usize;
                let h = match old.remove(&key).or_else(|| backends.get(&key).cloned()) {
                    Some(h) => h,
                    None => {
                        crate::backend::probe::check_new(spec);
                        (0..pool.config.connections.max(1))
                            .map(|_| BackendHandle::spawn(spec.clone(), pool.config.preconnect))
                            .collect()
                    }
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
            pools.servers.insert(p, Rc::new(servers));
            pools.replicas.insert(p, Rc::new(replicas));
        }
        let mut old_clusters = self.clusters.take();
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
                pools.clusters.insert(key, w);
            }
        }
        backends
    }

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

/// A worker thread's body: serve the clients the acceptors hand it until shutdown, then let
/// in-flight requests finish (at most DRAIN_TIMEOUT).
pub(super) fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<(u64, Accepted, prometheus::IntGauge)>,
    mut shutdown: watch::Receiver<bool>,
    mut wake: watch::Receiver<u64>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("worker runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        // This worker's contexts and backend connections, rebuilt per generation.
        let routing = WorkerRouting::new(shared.clone());
        routing.refresh();
        let mut client_id = 0usize;
        let tracker = Rc::new(());
        // Hands this worker's hot-key samples to the listeners' detectors.
        let mut hot_tick = tokio::time::interval(crate::hotkey::detector::TICK);
        hot_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = hot_tick.tick() => routing.hot_tick(),
                a = rx.recv() => {
                    let Some((listener, accepted, clients)) = a else { break };
                    let Some(ctx) = routing.client_context(listener) else {
                        // The listener was removed by a reload while this client was on its
                        // way: close it, as the listener is closed.
                        clients.dec();
                        continue;
                    };
                    client_id = client_id.wrapping_add(1);
                    tracing::debug!(client = client_id, listener, "client connected");
                    let stats = ctx.stats();
                    let sd = shutdown.clone();
                    let guard = tracker.clone();
                    let id = client_id;
                    let acceptor = ctx.tls();
                    stats.curr_connections.fetch_add(1, Ordering::Relaxed);
                    stats.total_connections.fetch_add(1, Ordering::Relaxed);
                    tokio::task::spawn_local(async move {
                        match accepted {
                            Accepted::Tcp(s) => match (tokio::net::TcpStream::from_std(s), acceptor) {
                                (Ok(s), None) => ctx.serve(s, id, sd).await,
                                (Ok(s), Some(acceptor)) => {
                                    let handshake = Box::pin(tls_handshake(acceptor, s));
                                    if let Some(s) = handshake.await {
                                        ctx.serve(s, id, sd).await
                                    }
                                }
                                (Err(e), _) => tracing::warn!(error = %e, "cannot register client"),
                            },
                            Accepted::Unix(s) => match tokio::net::UnixStream::from_std(s) {
                                Ok(s) => ctx.serve(s, id, sd).await,
                                Err(e) => tracing::warn!(error = %e, "cannot register client"),
                            },
                        }
                        clients.dec();
                        stats.curr_connections.fetch_sub(1, Ordering::Relaxed);
                        drop(guard);
                    });
                }
                _ = wake.changed() => routing.refresh(),
                _ = shutdown.changed() => break,
            }
        }
        // Drain: clients stop reading and finish what they have in flight.
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while Rc::strong_count(&tracker) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}

/// A TLS client's handshake, bridged to a plain socket. Boxed by the caller: a TLS session is
/// large, and every client's task would otherwise be as large.
async fn tls_handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    s: tokio::net::TcpStream,
) -> Option<tokio::net::UnixStream> {
    let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(s));
    match handshake.await {
        Ok(Ok(tls)) => match crate::backend::tls::bridge(tls) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot bridge a TLS client");
                None
            }
        },
        Ok(Err(e)) => {
            if let Some(suppressed) = TLS_FAILURE_LOG.check() {
                tracing::info!(error = %e, suppressed, "TLS handshake failed")
            }
            None
        }
        Err(_) => {
            if let Some(suppressed) = TLS_FAILURE_LOG.check() {
                tracing::info!(suppressed, "TLS handshake timed out")
            }
            None
        }
    }
}
