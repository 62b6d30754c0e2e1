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

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use super::listener::{self, Bound};
use super::metrics::Families;
use super::pool::PoolRuntime;
use super::{check, Generation, ListenerRuntime, Running};
use crate::config::{Config, Protocol};

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
                metrics: Arc::new(families.listener(&name, l.protocol)),
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
    pub pools_added: Vec<String>,
    pub pools_removed: Vec<String>,
    /// Pools in both configs whose servers or placement changed.
    pub pools_changed: Vec<PoolChange>,
}

/// How one pool changed: its servers (`name address` when named, else the address) and the
/// fraction of keys whose server changes, from [`MOVE_SAMPLE`] keys (what `keymap --diff`
/// computes).
#[derive(Debug, Default)]
pub struct PoolChange {
    pub pool: String,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// None when placement did not change (e.g. only a timeout), or for a cluster or random
    /// pool.
    pub moved: Option<f64>,
}

/// Keys sampled per changed pool on reload: enough for a fraction within about a percent, few
/// enough that a reload stays in the milliseconds.
pub const MOVE_SAMPLE: usize = 10_000;

impl PoolChange {
    fn between(old: &crate::config::PoolConfig, new: &crate::config::PoolConfig) -> Option<Self> {
        let label = |s: &crate::config::ServerConfig| match &s.name {
            Some(n) => format!("{n} {}", s.address()),
            None => s.address(),
        };
        let set = |p: &crate::config::PoolConfig| -> Vec<String> {
            p.servers.iter().map(label).collect()
        };
        let (before, after) = (set(old), set(new));
        let added: Vec<String> = after
            .iter()
            .filter(|s| !before.contains(s))
            .cloned()
            .collect();
        let removed: Vec<String> = before
            .iter()
            .filter(|s| !after.contains(s))
            .cloned()
            .collect();
        let placement = |p: &crate::config::PoolConfig| {
            let servers: Vec<_> = p
                .servers
                .iter()
                .map(|s| (s.placement_name(), s.weight, s.address()))
                .collect();
            (p.distribution, p.hash, p.hash_tag, servers)
        };
        // Cluster pools place by slot, random pools place no key: no fraction to give.
        let ring = |p: &crate::config::PoolConfig| {
            p.cluster.is_none() && p.distribution != crate::routing::DistributionKind::Random
        };
        let moved = (ring(old) && ring(new) && placement(old) != placement(new)).then(|| {
            crate::keymap::moved_keys(old, new, MOVE_SAMPLE, &mut |_| {}) as f64
                / MOVE_SAMPLE as f64
        });
        (!added.is_empty() || !removed.is_empty() || moved.is_some()).then(|| PoolChange {
            pool: new.name.clone(),
            added,
            removed,
            moved,
        })
    }
}

impl std::fmt::Display for PoolChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pool {}:", self.pool)?;
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        write!(
            f,
            " servers added: {}; removed: {}",
            list(&self.added),
            list(&self.removed)
        )?;
        match self.moved {
            Some(m) => write!(
                f,
                "; {:.1}% of keys move ({MOVE_SAMPLE} sampled)",
                m * 100.0
            ),
            None => write!(f, "; no key moves"),
        }
    }
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
        if !self.pools_added.is_empty() {
            write!(f, "; pools added: {}", self.pools_added.join(", "))?;
        }
        if !self.pools_removed.is_empty() {
            write!(f, "; pools removed: {}", self.pools_removed.join(", "))?;
        }
        if !self.pools_changed.is_empty() {
            let names: Vec<&str> = self.pools_changed.iter().map(|p| p.pool.as_str()).collect();
            write!(f, "; pools changed: {}", names.join(", "))?;
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
        for p in &new.config.pools {
            match old.config.pool(&p.name) {
                None => summary.pools_added.push(p.name.clone()),
                Some(o) => summary.pools_changed.extend(PoolChange::between(o, p)),
            }
        }
        for p in &old.config.pools {
            if new.config.pool(&p.name).is_none() {
                summary.pools_removed.push(p.name.clone());
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(servers: &str, timeout: &str) -> crate::config::PoolConfig {
        let text = format!(
            "alpha:\n  listen: 127.0.0.1:22121\n  timeout: {timeout}\n  servers:\n{servers}"
        );
        let c = Config::parse(std::path::Path::new("t.yml"), &text).unwrap();
        c.pools[0].clone()
    }

    #[test]
    fn a_pool_change_names_the_servers_and_the_keys_that_move() {
        let three =
            "    - 10.0.0.1:11211:1 a\n    - 10.0.0.2:11211:1 b\n    - 10.0.0.3:11211:1 c\n";
        let two = "    - 10.0.0.1:11211:1 a\n    - 10.0.0.2:11211:1 b\n";
        let c = PoolChange::between(&pool(three, "100"), &pool(two, "100")).unwrap();
        assert_eq!(c.removed, ["c 10.0.0.3:11211"]);
        assert!(c.added.is_empty());
        let moved = c.moved.unwrap();
        assert!((0.25..0.42).contains(&moved), "{moved}");
        assert!(c.to_string().contains("removed: c 10.0.0.3:11211"), "{c}");
        // A timeout is no placement change: nothing to report.
        assert!(PoolChange::between(&pool(three, "100"), &pool(three, "200")).is_none());
        // A weight change moves keys without adding or removing a server.
        let heavier = three.replace("10.0.0.3:11211:1", "10.0.0.3:11211:3");
        let c = PoolChange::between(&pool(three, "100"), &pool(&heavier, "100")).unwrap();
        assert!(c.added.is_empty() && c.removed.is_empty());
        assert!(c.moved.unwrap() > 0.1, "{c}");
    }
}
