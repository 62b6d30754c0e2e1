//! Listeners, worker threads and client connections.
//!
//! Envoy's and mcrouter's model: N worker threads, each running its own current-thread tokio
//! runtime and owning its client connections *and its own backend connections*, so the request
//! path crosses no thread and takes no lock. An acceptor per listener on the main thread hands
//! new clients to workers round-robin.
//!
//! The routing state (pools with their placement, health and metric handles; which listener
//! routes where) is one immutable `Generation`, read through arc-swap and swapped whole on
//! reload (see `reload`). Each worker builds its per-listener contexts from the generation and
//! rebuilds them when a new one appears, keeping the backend connections of unchanged servers.

pub mod client;
pub mod cluster;
pub mod conns;
pub mod follow;
pub mod hot;
pub mod inspect;
pub mod listener;
pub mod memcache;
pub mod metrics;
pub mod pool;
pub mod redis;
pub mod reload;
pub mod stats;
pub mod tls;
pub mod worker;

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};

use crate::config::{Config, Protocol};
use listener::Accepted;
use metrics::{Families, ListenerMetrics};
use pool::PoolRuntime;
use stats::Stats;

/// How long in-flight requests may take to finish after SIGTERM/SIGINT.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// One loaded config, immutable: swapped whole on reload.
pub struct Generation {
    /// 1 for the config kvrouter started with, +1 per successful reload.
    pub id: u64,
    pub config: Arc<Config>,
    pub pools: Vec<Arc<PoolRuntime>>,
    pub listeners: Vec<ListenerRuntime>,
}

/// A listener in one generation.
pub struct ListenerRuntime {
    /// Stable while the listener keeps its address across reloads.
    pub id: u64,
    /// The listen address as text: the metrics label and the identity across reloads.
    pub name: String,
    /// Index in `Generation::pools` of the pool it routes to.
    pub pool: usize,
    pub metrics: Arc<ListenerMetrics>,
    /// Open clients (the `kvrouter_client_connections` gauge) and the limit the acceptor
    /// enforces, shared with the acceptor, which outlives generations.
    pub max_clients: Arc<AtomicUsize>,
    /// TLS for its clients (`tls:`), built when the generation is.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// `hot_keys`: kept across reloads while the listener keeps its address and settings.
    pub hot: Option<hot::HotRuntime>,
    pub protocol: Protocol,
}

/// A listener's per-worker context, by protocol.
#[derive(Clone)]
pub enum Ctx {
    Mc(Rc<memcache::McContext>),
    Redis(Rc<redis::RedisContext>),
}

impl Ctx {
    /// The counters its clients count in (memcached `stats`).
    pub fn stats(&self) -> Arc<Stats> {
        match self {
            Ctx::Mc(c) => c.stats.clone(),
            Ctx::Redis(c) => c.stats.clone(),
        }
    }

    pub fn tls(&self) -> Option<tokio_rustls::TlsAcceptor> {
        match self {
            Ctx::Mc(c) => c.tls.clone(),
            Ctx::Redis(c) => c.tls.clone(),
        }
    }

    async fn serve<S: crate::backend::io::Io>(
        self,
        stream: S,
        id: usize,
        shutdown: watch::Receiver<bool>,
    ) {
        // Boxed (once per connection): a client's task holds only its own protocol's state.
        match self {
            Ctx::Mc(c) => {
                let conn = Box::pin(memcache::serve(stream, c, id, shutdown));
                conn.await
            }
            Ctx::Redis(c) => {
                let conn = Box::pin(redis::serve(stream, c, id, shutdown));
                conn.await
            }
        }
    }
}

/// State shared by all workers.
pub struct Shared {
    current: ArcSwap<Generation>,
    /// `current.id`, for the cheap per-batch "is there a newer generation" check.
    pub(crate) current_id: Arc<AtomicU64>,
    pub stats: Arc<Stats>,
    /// Each memcached listener's own `stats` counters.
    pub listener_stats: stats::ByListener,
    pub threads: usize,
    pub families: Families,
}

impl Shared {
    /// The active generation.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }
}

/// A running proxy.
pub struct Running {
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    senders: Vec<mpsc::UnboundedSender<(u64, Accepted, prometheus::IntGauge)>>,
    /// Wakes every worker to rebuild its contexts for a new generation.
    wake: watch::Sender<u64>,
    /// The accept loop of each listener, by listener name.
    acceptors: HashMap<String, reload::Acceptor>,
    next_listener_id: u64,
}

impl Running {
    /// `/healthz`: Ok when every listener is bound (true once started) and every pool has a
    /// server in service.
    pub fn health(&self) -> Result<(), String> {
        check_health(&self.shared)
    }

    /// Stop accepting, let in-flight requests finish (at most DRAIN_TIMEOUT), join the workers.
    pub fn shutdown(self) {
        for a in self.acceptors.values() {
            a.stop();
        }
        let _ = self.shutdown.send(true);
        for w in self.workers {
            let _ = w.join();
        }
    }
}

/// Ready when every pool has a server in service; in a TKO pool (whose servers are checked
/// when configured, see `backend::probe`), one that has answered.
pub fn check_health(shared: &Shared) -> Result<(), String> {
    for p in &shared.current().pools {
        if !p.has_live_server() {
            return Err(format!("pool {} has no server in service", p.config.name));
        }
        let checked = p.specs.iter().filter(|s| s.tko.is_some());
        if p.cluster.is_none()
            && checked.clone().count() > 0
            && !checked
                .into_iter()
                .any(|s| s.health.answered() && !s.health.is_down())
        {
            return Err(format!(
                "pool {} has no server that answered yet",
                p.config.name
            ));
        }
    }
    Ok(())
}

/// What this version cannot serve yet, reported by `kvrouter -t` and at startup: returns, for
/// each listener, the index of its first pool (plain pool routes: its pool).
pub fn check(config: &Config) -> Result<Vec<usize>, String> {
    let mut listener_pool = Vec::new();
    for l in &config.listeners {
        let at = |loc: crate::config::Location| {
            format!("{}:{}:{}", config.file.display(), loc.line, loc.col)
        };
        if let Some(t) = &l.tls {
            tls::acceptor(config, t)?;
        }
        for u in &l.users {
            for c in u.commands.iter().flatten() {
                if crate::protocol::redis_commands::lookup(c.as_bytes()).is_none() {
                    return Err(format!(
                        "{}: user {}: unknown redis command '{c}'",
                        at(u.location),
                        u.name
                    ));
                }
            }
        }
        let names = l.route.pools();
        let idx = config
            .pools
            .iter()
            .position(|p| p.name == names[0])
            .ok_or_else(|| format!("{}: unknown pool {}", at(l.route.location()), names[0]))?;
        listener_pool.push(idx);
    }
    for p in &config.pools {
        if let Some(t) = &p.tls {
            tls::client(config, t)?;
        }
    }
    Ok(listener_pool)
}

/// Bind every listener, start the workers and the accept loops (spawned on the caller's tokio
/// runtime). `registry` receives the proxy's metric families.
pub fn start(config: Config, registry: Option<&prometheus::Registry>) -> Result<Running, String> {
    check(&config)?;
    let bound = config
        .listeners
        .iter()
        .map(|l| listener::bind(l).map_err(|e| format!("cannot listen on {}: {e}", l.listen)))
        .collect::<Result<Vec<_>, _>>()?;

    let threads = config
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let families = Families::new(registry);
    let mut next_listener_id = 0;
    let generation = reload::build_generation(config, 1, None, &families, &mut next_listener_id)?;
    families.generation.set(1);
    families.last_reload_success.set(reload::unix_now());
    let shared = Arc::new(Shared {
        current: ArcSwap::from_pointee(generation),
        current_id: Arc::new(AtomicU64::new(1)),
        stats: Arc::new(Stats::default()),
        listener_stats: Default::default(),
        threads,
        families,
    });

    let (shutdown, shutdown_rx) = watch::channel(false);
    let (wake, wake_rx) = watch::channel(1u64);
    let mut senders = Vec::new();
    let mut workers = Vec::new();
    for id in 0..threads {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        let shared = shared.clone();
        let shutdown = shutdown_rx.clone();
        let wake = wake_rx.clone();
        workers.push(
            std::thread::Builder::new()
                .name(format!("kvrouter-w{id}"))
                .spawn(move || worker::run(shared, rx, shutdown, wake))
                .map_err(|e| format!("cannot start worker thread: {e}"))?,
        );
    }
    let mut running = Running {
        shared: shared.clone(),
        shutdown,
        workers,
        senders,
        wake,
        acceptors: HashMap::new(),
        next_listener_id,
    };
    let generation = shared.current();
    for (l, b) in generation.listeners.iter().zip(bound) {
        running.spawn_acceptor(l, b);
    }
    Ok(running)
}
