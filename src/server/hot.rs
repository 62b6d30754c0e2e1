//! The server's side of hot keys, common to protocols: a listener's `HotRuntime` (its shared
//! `HotKeys`, kept across reloads while its settings do not change, and its metric handles),
//! each worker's `HotCtx` (its sampler and its flights), the tick that hands samples to the
//! detector, and what `/metrics` and `/hotkeys` show.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use serde_json::{json, Value};

use super::metrics::{Families, HotMetrics};
use super::Shared;
use crate::backend::Reply;
use crate::config::HotKeysConfig;
use crate::hotkey::detector::Sampler;
use crate::hotkey::{Flights, HotKeys};

/// A listener's hot-key machinery in one generation.
pub struct HotRuntime {
    pub keys: Arc<HotKeys>,
    pub config: HotKeysConfig,
    pub metrics: HotMetrics,
    /// The counter values last copied into `metrics` (shared with the generations that keep
    /// `keys`), so each scrape adds only what is new.
    exported: Arc<Mutex<[u64; 10]>>,
}

/// Same settings, wherever they are written in the file.
fn same(a: &HotKeysConfig, b: &HotKeysConfig) -> bool {
    a.threshold == b.threshold && a.local_cache == b.local_cache && a.split == b.split
}

impl HotRuntime {
    /// The runtime for `config`, keeping `previous`'s state when the settings are unchanged.
    pub fn build(
        listener: &str,
        config: &HotKeysConfig,
        previous: Option<&HotRuntime>,
        families: &Families,
    ) -> HotRuntime {
        let (cache, split) = (config.local_cache.is_some(), config.split.is_some());
        if let Some(p) = previous.filter(|p| same(&p.config, config)) {
            return HotRuntime {
                keys: p.keys.clone(),
                config: config.clone(),
                metrics: families.hot(listener, cache, split),
                exported: p.exported.clone(),
            };
        }
        if previous.is_some() {
            // New settings, new state: the series start over from the new counters.
            families.remove_hot(listener);
        }
        let metrics = families.hot(listener, cache, split);
        HotRuntime {
            keys: Arc::new(HotKeys::new(
                config.threshold,
                config.local_cache.map(|c| (c.ttl, c.capacity)),
                config.split,
            )),
            config: config.clone(),
            metrics,
            exported: Arc::new(Mutex::new([0; 10])),
        }
    }

    /// Bring the metric handles up to date (at scrape time).
    pub fn export(&self) {
        let k = &self.keys;
        let d = &k.detector;
        let (hits, misses) = k
            .cache
            .as_ref()
            .map_or((0, 0), |c| (c.hits.load(Relaxed), c.misses.load(Relaxed)));
        let now = [
            d.turned_hot.load(Relaxed),
            d.turned_cold.load(Relaxed),
            hits,
            misses,
            k.copy_hits.load(Relaxed),
            k.copy_misses.load(Relaxed),
            k.copy_fills.load(Relaxed),
            k.copy_deletes.load(Relaxed),
            k.coalesced.load(Relaxed),
            0,
        ];
        let m = &self.metrics;
        let mut targets: Vec<Option<&prometheus::IntCounter>> =
            vec![Some(&m.turned_hot), Some(&m.turned_cold)];
        targets.extend(match &m.cache {
            Some([h, mi]) => [Some(h), Some(mi)],
            None => [None, None],
        });
        match &m.split {
            Some(s) => targets.extend(s.iter().map(Some)),
            None => targets.extend([None; 4]),
        }
        targets.push(Some(&m.coalesced));
        let mut last = self.exported.lock().unwrap_or_else(|e| e.into_inner());
        for (i, t) in targets.into_iter().enumerate() {
            if let Some(t) = t {
                t.inc_by(now[i].saturating_sub(last[i]));
            }
            last[i] = last[i].max(now[i]);
        }
        m.hot_keys.set(d.snapshot().len() as i64);
        if let (Some(g), Some(c)) = (&m.cache_entries, &k.cache) {
            g.set(c.len() as i64);
        }
    }

    /// This listener in `/hotkeys`.
    pub fn json(&self, listener: &str) -> Value {
        let k = &self.keys;
        let action = k.action();
        let keys: Vec<Value> = k
            .detector
            .snapshot()
            .into_iter()
            .map(|h| {
                let since = h
                    .since
                    .duration_since(UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                json!({
                    "listener": listener,
                    "key": String::from_utf8_lossy(&h.key),
                    "rate": h.rate.round(),
                    "since": since,
                    "hot_for_seconds": h.since.elapsed().map_or(0.0, |d| d.as_secs_f64()),
                    "action": action,
                })
            })
            .collect();
        json!({
            "listener": listener,
            "threshold_per_second": self.config.threshold,
            "action": action,
            "local_cache": k.cache.as_ref().map(|c| json!({
                "ttl_ms": c.ttl().as_millis() as u64,
                "capacity": self.config.local_cache.map(|c| c.capacity),
                "entries": c.len(),
                "hits": c.hits.load(Relaxed),
                "misses": c.misses.load(Relaxed),
            })),
            "split": k.split.map(|n| json!({
                "copies": n,
                "copy_ttl_seconds": k.copy_ttl.as_secs(),
                "copy_hits": k.copy_hits.load(Relaxed),
                "copy_misses": k.copy_misses.load(Relaxed),
                "fills": k.copy_fills.load(Relaxed),
                "deletes": k.copy_deletes.load(Relaxed),
            })),
            "coalesced": k.coalesced.load(Relaxed),
            "turned_hot": k.detector.turned_hot.load(Relaxed),
            "turned_cold": k.detector.turned_cold.load(Relaxed),
            "hot_keys": keys,
        })
    }
}

/// `GET /hotkeys`: per listener with `hot_keys`, its settings, counters and hot keys now
/// (hottest first); `hot_keys` also lists them all together.
pub fn hotkeys_json(shared: &Shared) -> Value {
    let generation = shared.current();
    let listeners: Vec<Value> = generation
        .listeners
        .iter()
        .filter_map(|l| l.hot.as_ref().map(|h| h.json(&l.name)))
        .collect();
    let all: Vec<Value> = listeners
        .iter()
        .flat_map(|l| l["hot_keys"].as_array().cloned().unwrap_or_default())
        .collect();
    json!({
        "enabled": !listeners.is_empty(),
        "listeners": listeners,
        "hot_keys": all,
    })
}

/// A worker's share of a listener's hot-key machinery.
pub struct HotCtx {
    pub shared: Arc<HotKeys>,
    /// This worker's counts since the last tick.
    pub sampler: Rc<RefCell<Sampler>>,
    /// This worker's backend reads of hot keys in flight.
    pub flights: Rc<RefCell<Flights<Reply>>>,
    /// The hash tag of the pool copies are placed in.
    pub tag: Option<[u8; 2]>,
}

impl HotCtx {
    /// A context for `keys`, reusing `previous`'s sampler and flights when it is for the same
    /// `HotKeys` (a reload that kept them).
    pub fn new(keys: &Arc<HotKeys>, previous: Option<&HotCtx>, tag: Option<[u8; 2]>) -> HotCtx {
        match previous.filter(|p| Arc::ptr_eq(&p.shared, keys)) {
            Some(p) => HotCtx {
                shared: keys.clone(),
                sampler: p.sampler.clone(),
                flights: p.flights.clone(),
                tag,
            },
            None => HotCtx {
                shared: keys.clone(),
                sampler: Rc::new(RefCell::new(Sampler::new(keys.detector.threshold(), 1))),
                flights: Rc::new(RefCell::new(Flights::default())),
                tag,
            },
        }
    }

    /// The worker's tick: hand this worker's counts to the listener's detector.
    pub fn tick(&self, now: std::time::Instant) {
        let counts = self.sampler.borrow_mut().drain();
        self.shared.detector.report(counts, now);
    }
}
