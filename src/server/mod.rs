//! Listeners, worker threads and client connections.
//!
//! Envoy's and mcrouter's model: N worker threads, each running its own current-thread tokio
//! runtime and owning its client connections *and its own backend connections*, so the request
//! path crosses no thread and takes no lock. An acceptor on the main thread hands new clients to
//! workers round-robin. Pools (placement, health, counters) are shared read-mostly state.

pub mod listener;
pub mod memcache;
pub mod pool;
pub mod redis;
mod redis_merge;
pub mod stats;

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::backend::BackendHandle;
use crate::config::{Config, Protocol, Route};
use crate::protocol::resp::RespLimits;
use listener::Accepted;
use pool::PoolRuntime;
use stats::Stats;

/// How long in-flight requests may take to finish after SIGTERM/SIGINT.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// State shared by all workers.
pub struct Shared {
    pub config: Config,
    pub pools: Vec<Arc<PoolRuntime>>,
    /// For each listener, the index of the pool it routes to.
    pub listener_pool: Vec<usize>,
    /// Open clients per listener.
    pub active: Vec<Arc<AtomicUsize>>,
    pub stats: Arc<Stats>,
    pub threads: usize,
}

/// A running proxy.
pub struct Running {
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
}

impl Running {
    /// `/healthz`: Ok when every listener is bound (true once started) and every pool has a
    /// server in service.
    pub fn health(&self) -> Result<(), String> {
        check_health(&self.shared)
    }

    /// Stop accepting, let in-flight requests finish (at most DRAIN_TIMEOUT), join the workers.
    pub fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for w in self.workers {
            let _ = w.join();
        }
    }
}

pub fn check_health(shared: &Shared) -> Result<(), String> {
    for p in &shared.pools {
        if !p.has_live_server() {
            return Err(format!("pool {} has no server in service", p.config.name));
        }
    }
    Ok(())
}

/// What this version cannot serve yet, reported by `kvrouter -t` and at startup: returns, for
/// each listener, the index of the pool it routes to.
pub fn check(config: &Config) -> Result<Vec<usize>, String> {
    let mut listener_pool = Vec::new();
    for l in &config.listeners {
        let pool_name = match &l.route {
            Route::Pool { name, .. } => name,
            Route::Unsupported { handle, location } => {
                return Err(format!(
                    "{}:{}:{}: route handle `{handle}` is not implemented yet (only `pool` routes are served by this version)",
                    config.file.display(), location.line, location.col
                ))
            }
        };
        let idx = config
            .pools
            .iter()
            .position(|p| &p.name == pool_name)
            .ok_or_else(|| format!("unknown pool {pool_name}"))?;
        if l.protocol != config.pools[idx].protocol {
            return Err(format!(
                "{}:{}:{}: listener protocol differs from pool {pool_name}'s",
                config.file.display(),
                l.location.line,
                l.location.col
            ));
        }
        listener_pool.push(idx);
    }
    Ok(listener_pool)
}

/// Bind every listener, start the workers and the accept loops (spawned on the caller's tokio
/// runtime).
pub fn start(config: Config) -> Result<Running, String> {
    let listener_pool = check(&config)?;
    let bound = config
        .listeners
        .iter()
        .map(|l| listener::bind(l).map_err(|e| format!("cannot listen on {}: {e}", l.listen)))
        .collect::<Result<Vec<_>, _>>()?;

    let threads = config
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let shared = Arc::new(Shared {
        pools: config
            .pools
            .iter()
            .map(|p| Arc::new(PoolRuntime::new(p.clone())))
            .collect(),
        listener_pool,
        active: config
            .listeners
            .iter()
            .map(|_| Arc::new(AtomicUsize::new(0)))
            .collect(),
        stats: Arc::new(Stats::default()),
        threads,
        config,
    });

    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut senders = Vec::new();
    let mut workers = Vec::new();
    for id in 0..threads {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        let shared = shared.clone();
        let shutdown = shutdown_rx.clone();
        workers.push(
            std::thread::Builder::new()
                .name(format!("kvrouter-w{id}"))
                .spawn(move || worker(shared, rx, shutdown))
                .map_err(|e| format!("cannot start worker thread: {e}"))?,
        );
    }
    for (i, b) in bound.into_iter().enumerate() {
        tokio::spawn(listener::accept_loop(
            b,
            i,
            senders.clone(),
            shared.config.listeners[i].max_clients,
            shared.active[i].clone(),
            shutdown_rx.clone(),
            match shared.config.listeners[i].protocol {
                Protocol::Memcache => listener::FULL_MEMCACHE,
                Protocol::Redis => listener::FULL_REDIS,
            },
        ));
    }
    Ok(Running {
        shared,
        shutdown,
        workers,
    })
}

/// A listener's per-worker context, by protocol.
enum Ctx {
    Mc(Rc<memcache::McContext>),
    Redis(Rc<redis::RedisContext>),
}

impl Ctx {
    async fn serve<S: crate::backend::io::Io>(
        self,
        stream: S,
        id: usize,
        shutdown: watch::Receiver<bool>,
    ) {
        match self {
            Ctx::Mc(c) => memcache::serve(stream, c, id, shutdown).await,
            Ctx::Redis(c) => redis::serve(stream, c, id, shutdown).await,
        }
    }
}

fn worker(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<(usize, Accepted)>,
    mut shutdown: watch::Receiver<bool>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("worker runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        // This worker's backend connections, per pool and server.
        let mut backends: HashMap<usize, Rc<Vec<Vec<BackendHandle>>>> = HashMap::new();
        for &p in &shared.listener_pool {
            backends.entry(p).or_insert_with(|| {
                let pool = &shared.pools[p];
                Rc::new(
                    pool.specs
                        .iter()
                        .map(|spec| {
                            (0..pool.config.connections.max(1))
                                .map(|_| BackendHandle::spawn(spec.clone(), pool.config.preconnect))
                                .collect()
                        })
                        .collect(),
                )
            });
        }
        let contexts: Vec<Ctx> = shared
            .listener_pool
            .iter()
            .map(|&p| match shared.pools[p].config.protocol {
                Protocol::Memcache => Ctx::Mc(Rc::new(memcache::McContext {
                    pool: shared.pools[p].clone(),
                    backends: backends[&p].clone(),
                    stats: shared.stats.clone(),
                    threads: shared.threads,
                })),
                Protocol::Redis => Ctx::Redis(Rc::new(redis::RedisContext {
                    pool: shared.pools[p].clone(),
                    backends: backends[&p].clone(),
                    stats: shared.stats.clone(),
                    threads: shared.threads,
                    pools: shared.pools.clone(),
                    limits: RespLimits::default(),
                })),
            })
            .collect();
        let mut client_id = 0usize;
        let tracker = Rc::new(());
        loop {
            tokio::select! {
                a = rx.recv() => {
                    let Some((listener, accepted)) = a else { break };
                    client_id = client_id.wrapping_add(1);
                    let ctx = match &contexts[listener] {
                        Ctx::Mc(c) => Ctx::Mc(c.clone()),
                        Ctx::Redis(c) => Ctx::Redis(c.clone()),
                    };
                    let active = shared.active[listener].clone();
                    let stats = shared.stats.clone();
                    let sd = shutdown.clone();
                    let guard = tracker.clone();
                    let id = client_id;
                    stats.curr_connections.fetch_add(1, Ordering::Relaxed);
                    stats.total_connections.fetch_add(1, Ordering::Relaxed);
                    tokio::task::spawn_local(async move {
                        match accepted {
                            Accepted::Tcp(s) => match tokio::net::TcpStream::from_std(s) {
                                Ok(s) => ctx.serve(s, id, sd).await,
                                Err(e) => tracing::warn!(error = %e, "cannot register client"),
                            },
                            Accepted::Unix(s) => match tokio::net::UnixStream::from_std(s) {
                                Ok(s) => ctx.serve(s, id, sd).await,
                                Err(e) => tracing::warn!(error = %e, "cannot register client"),
                            },
                        }
                        active.fetch_sub(1, Ordering::Relaxed);
                        stats.curr_connections.fetch_sub(1, Ordering::Relaxed);
                        drop(guard);
                    });
                }
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
