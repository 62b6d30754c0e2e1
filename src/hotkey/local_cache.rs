//! The in-proxy cache for hot keys: reads of a hot key are answered from here for up to `ttl`.
//!
//! Sharded and concurrent (quick_cache), shared by a listener's workers, and touched only for
//! keys that are already hot. Freshness is conservative: an entry expires `ttl` after the
//! backend request that produced it *started*, so no value is served older than `ttl`. A write
//! or delete through the proxy invalidates its key at once, both when it is sent and when it is
//! acknowledged, and bumps the key's epoch: a read that started before the invalidation cannot
//! put its (possibly old) value back afterwards. Epochs are striped by key hash, so writes of
//! other keys do not spoil a fill in flight.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quick_cache::sync::Cache;

/// Write epochs, striped by key hash: `ticket(key)` before a read, `valid(ticket)` before using
/// what it read to fill something, `bump(key)` on every write of the key.
pub struct Epochs {
    stripes: Box<[AtomicU64]>,
    /// Bumped by `bump_all` (flush_all): part of every ticket.
    all: AtomicU64,
}

/// What `Epochs::ticket` hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    stripe: usize,
    epoch: u64,
    all: u64,
    pub started: Instant,
}

const STRIPES: usize = 1024;

impl Default for Epochs {
    fn default() -> Epochs {
        Epochs {
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            all: AtomicU64::new(0),
        }
    }
}

impl Epochs {
    #[inline]
    fn stripe(key: &[u8]) -> usize {
        let mut h: u32 = 0x811c_9dc5;
        for &b in key {
            h = (h ^ b as u32).wrapping_mul(0x0100_0193);
        }
        h as usize % STRIPES
    }

    pub fn ticket(&self, key: &[u8]) -> Ticket {
        let stripe = Self::stripe(key);
        Ticket {
            stripe,
            epoch: self.stripes[stripe].load(Ordering::Acquire),
            all: self.all.load(Ordering::Acquire),
            started: Instant::now(),
        }
    }

    /// No write of the ticket's key (or of a key sharing its stripe) since it was taken.
    pub fn valid(&self, t: &Ticket) -> bool {
        self.stripes[t.stripe].load(Ordering::Acquire) == t.epoch
            && self.all.load(Ordering::Acquire) == t.all
    }

    pub fn bump(&self, key: &[u8]) {
        self.stripes[Self::stripe(key)].fetch_add(1, Ordering::AcqRel);
    }

    pub fn bump_all(&self) {
        self.all.fetch_add(1, Ordering::AcqRel);
    }
}

#[derive(Clone)]
struct Entry {
    value: Bytes,
    expires: Instant,
}

pub struct LocalCache {
    cache: Cache<Bytes, Entry>,
    ttl: Duration,
    epochs: Epochs,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl LocalCache {
    pub fn new(ttl: Duration, capacity: usize) -> LocalCache {
        LocalCache {
            cache: Cache::new(capacity.max(1)),
            ttl,
            epochs: Epochs::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A fresh cached value for `key`.
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        match self.cache.get(key) {
            Some(e) if e.expires > Instant::now() => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(e.value)
            }
            Some(_) => {
                self.cache.remove(key);
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Take before sending the backend request whose reply may fill the cache with `key`.
    pub fn ticket(&self, key: &[u8]) -> Ticket {
        self.epochs.ticket(key)
    }

    /// Store `value` unless `key` was invalidated since `ticket` was taken. Returns whether it
    /// was stored.
    pub fn fill(&self, key: Bytes, value: Bytes, ticket: Ticket) -> bool {
        if !self.epochs.valid(&ticket) {
            return false;
        }
        let expires = ticket.started + self.ttl;
        if expires <= Instant::now() {
            return false;
        }
        self.cache.insert(key.clone(), Entry { value, expires });
        // An invalidation may have slipped in between the check and the insert.
        if !self.epochs.valid(&ticket) {
            self.cache.remove(&key);
            return false;
        }
        true
    }

    /// A write or delete of `key` went through the proxy.
    pub fn invalidate(&self, key: &[u8]) {
        self.epochs.bump(key);
        self.cache.remove(key);
    }

    /// Everything was invalidated (flush_all).
    pub fn clear(&self) {
        self.epochs.bump_all();
        self.cache.clear();
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_until_ttl_and_invalidation_wins_over_a_late_fill() {
        let c = LocalCache::new(Duration::from_millis(100), 100);
        let k = Bytes::from_static(b"k");
        let t = c.ticket(&k);
        assert!(c.fill(k.clone(), Bytes::from_static(b"v1"), t));
        assert_eq!(c.get(b"k").unwrap(), Bytes::from_static(b"v1"));
        // A read started, then a write invalidated: the read's old value is not stored.
        let t = c.ticket(&k);
        c.invalidate(b"k");
        assert!(!c.fill(k.clone(), Bytes::from_static(b"old"), t));
        assert!(c.get(b"k").is_none());
        // A write of another key (another stripe) does not spoil the fill.
        let t = c.ticket(&k);
        let other = (0..)
            .map(|i| format!("o{i}"))
            .find(|o| Epochs::stripe(o.as_bytes()) != Epochs::stripe(b"k"))
            .unwrap();
        c.invalidate(other.as_bytes());
        assert!(c.fill(k.clone(), Bytes::from_static(b"v1b"), t));
        // flush_all spoils every fill in flight.
        let t = c.ticket(&k);
        c.clear();
        assert!(!c.fill(k.clone(), Bytes::from_static(b"old"), t));
        assert!(c.get(b"k").is_none());
        // Never older than ttl.
        let t = c.ticket(&k);
        c.fill(k.clone(), Bytes::from_static(b"v2"), t);
        std::thread::sleep(Duration::from_millis(120));
        assert!(c.get(b"k").is_none());
        assert!(c.hits.load(Ordering::Relaxed) >= 1);
    }
}
