//! Online hot-key detection, without being told which keys are hot.
//!
//! Each worker counts the keys it sees in its own `Sampler`: a count-min sketch (fixed memory,
//! whatever the number of distinct keys) plus a small bounded set of candidates whose estimate
//! is high enough to matter. Every tick the worker hands its candidates to the listener's shared
//! `Detector`, which turns counts into rates over a decaying window and decides, with hysteresis,
//! which keys are hot: a key turns hot at `threshold` accesses per second and cold only below
//! half of it, so a key hovering near the threshold does not flap. The hot set is published
//! through arc-swap, so checking a key on the request path takes no lock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;

use crate::logging::untrusted;

/// How often workers hand their counts over.
pub const TICK: Duration = Duration::from_millis(100);
/// Rates are computed over windows this long, smoothed with an EWMA across windows.
const WINDOW: Duration = Duration::from_millis(250);
const SKETCH_DEPTH: usize = 4;
const SKETCH_WIDTH: usize = 4096;
/// Candidates kept per worker between ticks, and keys tracked by the detector.
const MAX_CANDIDATES: usize = 256;
const MAX_TRACKED: usize = 1024;

/// A worker-local, fixed-size frequency counter.
pub struct Sampler {
    sketch: Vec<u32>,
    candidates: HashMap<Bytes, u64>,
    /// Smallest estimate that makes a key a candidate.
    floor: u32,
    /// Count one access in `every` (1 = all).
    every: u32,
    skipped: u32,
    /// The smallest candidate estimate when the set is full (a cheap "not good enough" test).
    min_candidate: u64,
}

impl Sampler {
    /// `threshold`: accesses per second that make a key hot; `every`: sample one access in N.
    pub fn new(threshold: f64, every: u32) -> Sampler {
        let per_tick = threshold * TICK.as_secs_f64() / every.max(1) as f64;
        Sampler {
            sketch: vec![0; SKETCH_DEPTH * SKETCH_WIDTH],
            candidates: HashMap::new(),
            floor: ((per_tick / 4.0) as u32).max(4),
            every: every.max(1),
            skipped: 0,
            min_candidate: 0,
        }
    }

    /// Count one access to `key`.
    #[inline]
    pub fn record(&mut self, key: &Bytes) {
        if self.every > 1 {
            self.skipped += 1;
            if self.skipped < self.every {
                return;
            }
            self.skipped = 0;
        }
        let h = hash64(key);
        let (h1, h2) = (h as u32, (h >> 32) as u32 | 1);
        let mut est = u32::MAX;
        for d in 0..SKETCH_DEPTH {
            let i = d * SKETCH_WIDTH
                + (h1.wrapping_add((d as u32).wrapping_mul(h2)) as usize % SKETCH_WIDTH);
            let c = self.sketch[i].saturating_add(1);
            self.sketch[i] = c;
            est = est.min(c);
        }
        if est < self.floor {
            return;
        }
        let est = est as u64;
        let full = self.candidates.len() >= MAX_CANDIDATES;
        if full && est <= self.min_candidate {
            return; // not good enough to displace anyone (the common case once full)
        }
        if let Some(c) = self.candidates.get_mut(key.as_ref()) {
            *c = est;
            return;
        }
        if full {
            // Displace the smallest candidate, then find the new smallest.
            if let Some(min_key) = self
                .candidates
                .iter()
                .min_by_key(|(_, c)| **c)
                .map(|(k, _)| k.clone())
            {
                self.candidates.remove(&min_key);
            }
        }
        self.candidates.insert(key.clone(), est);
        if self.candidates.len() >= MAX_CANDIDATES {
            self.min_candidate = self.candidates.values().copied().min().unwrap_or(0);
        }
    }

    /// The candidates and their estimated accesses since the last drain (scaled back up by
    /// the sampling rate); starts a new count.
    pub fn drain(&mut self) -> Vec<(Bytes, u64)> {
        self.sketch.iter_mut().for_each(|c| *c = 0);
        self.min_candidate = 0;
        let every = self.every as u64;
        self.candidates
            .drain()
            .map(|(k, c)| (k, c * every))
            .collect()
    }
}

/// FNV-1a, 64-bit: fast for short keys, and the sketch only needs a decent spread.
#[inline]
fn hash64(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche so both halves are usable.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// A key the detector considers hot.
#[derive(Clone, Debug, PartialEq)]
pub struct HotKey {
    pub key: Bytes,
    /// Estimated accesses per second (all workers).
    pub rate: f64,
    /// When it turned hot.
    pub since: SystemTime,
}

struct Tracked {
    rate: f64,
    hot_since: Option<SystemTime>,
    /// When it last turned cold (it stays guarded for `linger` after).
    cold_since: Option<Instant>,
}

struct State {
    window_start: Instant,
    counts: HashMap<Bytes, u64>,
    tracked: HashMap<Bytes, Tracked>,
}

/// Per listener, shared by its workers.
pub struct Detector {
    threshold: f64,
    state: Mutex<State>,
    hot: ArcSwap<HashMap<Bytes, HotKey>>,
    /// Some key is hot: the request path's first, cheapest check.
    any: std::sync::atomic::AtomicBool,
    /// The hot keys plus the keys that turned cold less than `linger` ago: writes of these
    /// must still clean up what hot-key handling left behind (cache entries, split copies).
    guarded: ArcSwap<std::collections::HashSet<Bytes>>,
    any_guarded: std::sync::atomic::AtomicBool,
    linger: Duration,
    /// Keys that turned hot / cold so far.
    pub turned_hot: std::sync::atomic::AtomicU64,
    pub turned_cold: std::sync::atomic::AtomicU64,
}

impl Detector {
    pub fn new(threshold: f64) -> Detector {
        Detector {
            threshold,
            state: Mutex::new(State {
                window_start: Instant::now(),
                counts: HashMap::new(),
                tracked: HashMap::new(),
            }),
            hot: ArcSwap::from_pointee(HashMap::new()),
            any: Default::default(),
            guarded: ArcSwap::from_pointee(Default::default()),
            any_guarded: Default::default(),
            linger: Duration::ZERO,
            turned_hot: Default::default(),
            turned_cold: Default::default(),
        }
    }

    /// Keep keys that turned cold guarded (`is_guarded`) for `linger`.
    pub fn with_linger(mut self, linger: Duration) -> Detector {
        self.linger = linger;
        self
    }

    /// True when `key` is hot, or turned cold less than `linger` ago. Lock-free. Published
    /// before the hot set, so a key that is hot is always guarded.
    #[inline]
    pub fn is_guarded(&self, key: &[u8]) -> bool {
        self.any_guarded() && self.guarded.load().contains(key)
    }

    /// Any key guarded at all (a cheaper first check).
    #[inline]
    pub fn any_guarded(&self) -> bool {
        self.any_guarded.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// True when `key` is hot now. Lock-free.
    #[inline]
    pub fn is_hot(&self, key: &[u8]) -> bool {
        self.any_hot() && self.hot.load().contains_key(key)
    }

    /// Any key hot at all (a cheaper first check).
    #[inline]
    pub fn any_hot(&self) -> bool {
        self.any.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> Vec<HotKey> {
        let mut v: Vec<HotKey> = self.hot.load().values().cloned().collect();
        v.sort_by(|a, b| b.rate.total_cmp(&a.rate));
        v
    }

    /// A worker's counts since its last report.
    pub fn report(&self, counts: Vec<(Bytes, u64)>, now: Instant) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (k, c) in counts {
            *st.counts.entry(k).or_insert(0) += c;
        }
        let elapsed = now.saturating_duration_since(st.window_start);
        if elapsed >= WINDOW {
            self.roll(&mut st, elapsed.as_secs_f64(), now);
            st.window_start = now;
        }
    }

    fn roll(&self, st: &mut State, secs: f64, now: Instant) {
        use std::sync::atomic::Ordering::Relaxed;
        let counts = std::mem::take(&mut st.counts);
        // Keys not seen this window decay towards zero.
        for t in st.tracked.values_mut() {
            t.rate *= 0.5;
        }
        for (k, c) in counts {
            let inst = c as f64 / secs;
            match st.tracked.get_mut(&k) {
                // EWMA: the old rate was halved above.
                Some(t) => t.rate += 0.5 * inst,
                None => {
                    st.tracked.insert(
                        k,
                        Tracked {
                            rate: inst,
                            hot_since: None,
                            cold_since: None,
                        },
                    );
                }
            }
        }
        let mut changed = false;
        for (k, t) in st.tracked.iter_mut() {
            match t.hot_since {
                None if t.rate >= self.threshold => {
                    t.hot_since = Some(SystemTime::now());
                    t.cold_since = None;
                    self.turned_hot.fetch_add(1, Relaxed);
                    tracing::info!(key = %untrusted(k), rate = t.rate as u64, "key turned hot");
                    changed = true;
                }
                Some(_) if t.rate < self.threshold / 2.0 => {
                    t.hot_since = None;
                    t.cold_since = Some(now);
                    self.turned_cold.fetch_add(1, Relaxed);
                    tracing::info!(key = %untrusted(k), rate = t.rate as u64, "key turned cold");
                    changed = true;
                }
                _ => {}
            }
        }
        let floor = self.threshold / 20.0;
        let linger = self.linger;
        let lingers = move |t: &Tracked| {
            t.cold_since
                .is_some_and(|c| now.saturating_duration_since(c) < linger)
        };
        st.tracked
            .retain(|_, t| t.hot_since.is_some() || t.rate >= floor || lingers(t));
        if st.tracked.len() > MAX_TRACKED {
            let mut cold: Vec<(Bytes, f64)> = st
                .tracked
                .iter()
                .filter(|(_, t)| t.hot_since.is_none() && !lingers(t))
                .map(|(k, t)| (k.clone(), t.rate))
                .collect();
            cold.sort_by(|a, b| a.1.total_cmp(&b.1));
            for (k, _) in cold.into_iter().take(st.tracked.len() - MAX_TRACKED) {
                st.tracked.remove(&k);
            }
        }
        // Publish the hot set (rates refresh every window, membership on change).
        let hot: HashMap<Bytes, HotKey> = st
            .tracked
            .iter()
            .filter_map(|(k, t)| {
                t.hot_since.map(|since| {
                    (
                        k.clone(),
                        HotKey {
                            key: k.clone(),
                            rate: t.rate,
                            since,
                        },
                    )
                })
            })
            .collect();
        let guarded: std::collections::HashSet<Bytes> = st
            .tracked
            .iter()
            .filter(|(_, t)| t.hot_since.is_some() || lingers(t))
            .map(|(k, _)| k.clone())
            .collect();
        if guarded != **self.guarded.load() {
            // Before the hot set: a key is never hot without being guarded.
            self.any_guarded
                .store(true, std::sync::atomic::Ordering::Release);
            let empty = guarded.is_empty();
            self.guarded.store(std::sync::Arc::new(guarded));
            self.any_guarded
                .store(!empty, std::sync::atomic::Ordering::Release);
        }
        if changed || !hot.is_empty() || !self.hot.load().is_empty() {
            self.any
                .store(!hot.is_empty(), std::sync::atomic::Ordering::Relaxed);
            self.hot.store(std::sync::Arc::new(hot));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drive `rate_of(key)` accesses per second for `secs`, reporting each tick.
    fn drive(
        d: &Detector,
        s: &mut Sampler,
        start: Instant,
        secs: f64,
        keys: &[(&str, f64)],
    ) -> Instant {
        let ticks = (secs / TICK.as_secs_f64()) as usize;
        let mut now = start;
        for _ in 0..ticks {
            for (k, rate) in keys {
                let n = (rate * TICK.as_secs_f64()) as usize;
                let key = Bytes::copy_from_slice(k.as_bytes());
                for _ in 0..n {
                    s.record(&key);
                }
            }
            now += TICK;
            d.report(s.drain(), now);
        }
        now
    }

    #[test]
    fn a_key_turns_hot_above_the_threshold_and_cold_well_below_it() {
        let d = Detector::new(2000.0);
        let mut s = Sampler::new(2000.0, 1);
        let mut background: Vec<(String, f64)> =
            (0..2000).map(|i| (format!("k{i}"), 5.0)).collect();
        background.push(("celebrity".into(), 5000.0));
        let keys: Vec<(&str, f64)> = background.iter().map(|(k, r)| (k.as_str(), *r)).collect();
        let now = drive(&d, &mut s, Instant::now(), 2.0, &keys);
        assert!(d.is_hot(b"celebrity"));
        assert!(!d.is_hot(b"k1"));
        let snap = d.snapshot();
        assert_eq!(snap.len(), 1);
        assert!((3000.0..8000.0).contains(&snap[0].rate), "{}", snap[0].rate);
        // Just below the threshold: still hot (hysteresis).
        let now = drive(&d, &mut s, now, 2.0, &[("celebrity", 1500.0)]);
        assert!(
            d.is_hot(b"celebrity"),
            "no flapping just below the threshold"
        );
        // Well below: cold.
        drive(&d, &mut s, now, 2.0, &[("celebrity", 200.0)]);
        assert!(!d.is_hot(b"celebrity"));
        assert_eq!(d.turned_hot.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(d.turned_cold.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn a_key_stays_guarded_for_linger_after_it_cools() {
        let d = Detector::new(1000.0).with_linger(Duration::from_secs(3));
        let mut s = Sampler::new(1000.0, 1);
        let now = drive(&d, &mut s, Instant::now(), 1.0, &[("k", 4000.0)]);
        assert!(d.is_hot(b"k") && d.is_guarded(b"k"));
        assert!(!d.is_guarded(b"other"));
        let now = drive(&d, &mut s, now, 2.0, &[("k", 10.0)]);
        assert!(!d.is_hot(b"k"));
        assert!(d.is_guarded(b"k"), "cooled less than linger ago");
        drive(&d, &mut s, now, 4.0, &[]);
        assert!(!d.is_guarded(b"k"));
    }

    #[test]
    fn memory_is_bounded_whatever_the_number_of_keys() {
        let d = Detector::new(1000.0);
        let mut s = Sampler::new(1000.0, 1);
        let mut now = Instant::now();
        for round in 0..20u64 {
            for i in 0..50_000u64 {
                s.record(&Bytes::from(format!("key-{round}-{i}")));
            }
            assert!(s.candidates.len() <= MAX_CANDIDATES);
            now += TICK;
            d.report(s.drain(), now);
        }
        assert!(d.state.lock().unwrap().tracked.len() <= MAX_TRACKED);
        assert!(d.snapshot().is_empty(), "no key is hot: each was seen once");
    }

    #[test]
    fn sampling_scales_counts_back_up() {
        let d = Detector::new(2000.0);
        let mut s = Sampler::new(2000.0, 8);
        drive(
            &d,
            &mut s,
            Instant::now(),
            2.0,
            &[("hot", 4000.0), ("cool", 300.0)],
        );
        assert!(d.is_hot(b"hot"));
        assert!(!d.is_hot(b"cool"));
    }
}
