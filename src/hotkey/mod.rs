//! Hot keys: find them as they happen (`detector`), then take the load off the one server that
//! owns them. Shared across workers, touched on the request path only through lock-free reads.
//!
//! This module holds what both protocols share: the per-listener `HotKeys` (detector, local
//! cache, split settings, write epochs, counters) and the per-worker `Flights` that coalesce
//! concurrent misses of a hot key. What is cached and how a copy is read or filled is protocol
//! business: it lives in the server code (`server::memcache` for memcached).

pub mod detector;
pub mod local_cache;
pub mod split;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use detector::Detector;
use local_cache::{Epochs, LocalCache, Ticket};

/// Split copies never live longer than this: copies of a key that cooled (or that a write made
/// outside this proxy left stale) expire on their own.
pub const COPY_TTL: Duration = Duration::from_secs(10);

/// One listener's hot-key machinery, shared by its workers and kept across reloads while the
/// listener's `hot_keys` settings do not change.
pub struct HotKeys {
    pub detector: Detector,
    pub cache: Option<LocalCache>,
    /// Copies per hot key (`split: N`); None: no split.
    pub split: Option<usize>,
    pub copy_ttl: Duration,
    /// Bumped by every write of a guarded key through the proxy: a split fill or a shared
    /// flight that started before the write is not used after it.
    pub writes: Epochs,
    /// Reads of a hot key answered by a split copy.
    pub copy_hits: AtomicU64,
    /// Reads of a copy that missed (the original was read instead).
    pub copy_misses: AtomicU64,
    /// Copies filled from the original.
    pub copy_fills: AtomicU64,
    /// Copy deletes sent for writes of hot keys.
    pub copy_deletes: AtomicU64,
    /// Reads of a hot key that shared another read's backend request.
    pub coalesced: AtomicU64,
}

impl HotKeys {
    /// `cache`: (ttl, capacity).
    pub fn new(threshold: f64, cache: Option<(Duration, usize)>, split: Option<usize>) -> HotKeys {
        // A key that cooled may still have cache entries (ttl) and copies (COPY_TTL): its
        // writes keep cleaning up for that long, plus a margin.
        let linger = cache
            .map_or(Duration::ZERO, |c| c.0)
            .max(if split.is_some() {
                COPY_TTL
            } else {
                Duration::ZERO
            })
            + Duration::from_secs(2);
        HotKeys {
            detector: Detector::new(threshold).with_linger(linger),
            cache: cache.map(|(ttl, cap)| LocalCache::new(ttl, cap)),
            split: split.filter(|&n| n > 1),
            copy_ttl: COPY_TTL,
            writes: Epochs::default(),
            copy_hits: AtomicU64::new(0),
            copy_misses: AtomicU64::new(0),
            copy_fills: AtomicU64::new(0),
            copy_deletes: AtomicU64::new(0),
            coalesced: AtomicU64::new(0),
        }
    }

    /// What is done with the reads of a hot key, as `/hotkeys` says it.
    pub fn action(&self) -> &'static str {
        match (self.cache.is_some(), self.split.is_some()) {
            (true, true) => "local_cache+split",
            (true, false) => "local_cache",
            (false, true) => "split",
            (false, false) => "detect_only",
        }
    }

    /// A write of `key` went through the proxy: drop its cached value and spoil every fill and
    /// shared read of it that started before now.
    pub fn invalidate(&self, key: &[u8]) {
        self.writes.bump(key);
        if let Some(c) = &self.cache {
            c.invalidate(key);
        }
    }

    /// flush_all went through the proxy.
    pub fn invalidate_all(&self) {
        self.writes.bump_all();
        if let Some(c) = &self.cache {
            c.clear();
        }
    }

    /// The copy a read goes to (uniformly random).
    pub fn pick_copy(&self) -> Option<usize> {
        self.split.map(|n| fastrand::usize(..n))
    }

    pub fn count(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Per worker and listener: the backend reads of hot keys in flight, so that concurrent misses
/// of one key share one request. A read joins a flight only if no write of the key went through
/// the proxy since the flight started (`Epochs`), so a client that wrote a key never reads,
/// through a shared flight, a value read before its write.
pub struct Flights<T> {
    next_id: u64,
    map: HashMap<Bytes, Flight<T>>,
}

struct Flight<T> {
    id: u64,
    ticket: Ticket,
    waiters: Rc<RefCell<Vec<oneshot::Sender<T>>>>,
}

/// A flight this worker started: send its outcome with `Flights::land`.
pub struct Started<T> {
    pub id: u64,
    waiters: Rc<RefCell<Vec<oneshot::Sender<T>>>>,
}

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Flights {
            next_id: 0,
            map: HashMap::new(),
        }
    }
}

impl<T: Clone> Flights<T> {
    /// A share of the flight for `key`, if one started after the last write of `key`.
    pub fn join(&mut self, key: &[u8], writes: &Epochs) -> Option<oneshot::Receiver<T>> {
        let f = self.map.get(key)?;
        if !writes.valid(&f.ticket) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        f.waiters.borrow_mut().push(tx);
        Some(rx)
    }

    /// Start the flight for `key` (replacing a stale one, whose waiters still get its outcome).
    pub fn start(&mut self, key: Bytes, ticket: Ticket) -> Started<T> {
        self.next_id += 1;
        let waiters = Rc::new(RefCell::new(Vec::new()));
        self.map.insert(
            key,
            Flight {
                id: self.next_id,
                ticket,
                waiters: waiters.clone(),
            },
        );
        Started {
            id: self.next_id,
            waiters,
        }
    }

    /// A write of `key`: later reads start their own flight.
    pub fn forget(&mut self, key: &[u8]) {
        self.map.remove(key);
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Number of reads that joined flights so far is counted by the caller; this ends flight
    /// `started` of `key` and hands `outcome` to its waiters.
    pub fn land(this: &RefCell<Self>, key: &[u8], started: Started<T>, outcome: &T) {
        {
            let mut me = this.borrow_mut();
            if me.map.get(key).is_some_and(|f| f.id == started.id) {
                me.map.remove(key);
            }
        }
        for w in started.waiters.borrow_mut().drain(..) {
            let _ = w.send(outcome.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_ends_sharing_of_reads_started_before_it() {
        let writes = Epochs::default();
        let flights = RefCell::new(Flights::<u32>::default());
        let key = Bytes::from_static(b"k");
        assert!(flights.borrow_mut().join(&key, &writes).is_none());
        let started = flights.borrow_mut().start(key.clone(), writes.ticket(&key));
        let mut shared = flights.borrow_mut().join(&key, &writes).expect("joins");
        // A write of the key: a read after it must not share the flight from before it.
        writes.bump(&key);
        assert!(flights.borrow_mut().join(&key, &writes).is_none());
        Flights::land(&flights, &key, started, &7);
        assert_eq!(shared.try_recv().unwrap(), 7);
        assert!(flights.borrow().map.is_empty());
    }

    #[test]
    fn actions_and_linger() {
        let h = HotKeys::new(100.0, Some((Duration::from_millis(200), 10)), Some(4));
        assert_eq!(h.action(), "local_cache+split");
        assert!(h.pick_copy().unwrap() < 4);
        assert_eq!(HotKeys::new(100.0, None, None).action(), "detect_only");
        assert_eq!(HotKeys::new(100.0, None, Some(1)).split, None);
    }
}
