//! The in-proxy cache for hot keys: reads of a hot key are answered from here for up to `ttl`.
//!
//! Sharded and concurrent (quick_cache), shared by a listener's workers, and touched only for
//! keys that are already hot. Freshness is conservative: an entry expires `ttl` after the
//! backend request that produced it *started*, so no value is served older than `ttl`. A write
//! or delete through the proxy invalidates its key at once, both when it is sent and when it is
//! acknowledged, and bumps an epoch: a read that started before the invalidation cannot put its
//! (possibly old) value back afterwards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quick_cache::sync::Cache;

#[derive(Clone)]
struct Entry {
    value: Bytes,
    expires: Instant,
}

pub struct LocalCache {
    cache: Cache<Bytes, Entry>,
    ttl: Duration,
    epoch: AtomicU64,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl LocalCache {
    pub fn new(ttl: Duration, capacity: usize) -> LocalCache {
        LocalCache {
            cache: Cache::new(capacity.max(1)),
            ttl,
            epoch: AtomicU64::new(0),
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

    /// Take before sending the backend request whose reply may fill the cache.
    pub fn ticket(&self) -> (u64, Instant) {
        (self.epoch.load(Ordering::Acquire), Instant::now())
    }

    /// Store `value` unless something was invalidated since `ticket` was taken.
    pub fn fill(&self, key: Bytes, value: Bytes, ticket: (u64, Instant)) {
        if self.epoch.load(Ordering::Acquire) != ticket.0 {
            return;
        }
        let expires = ticket.1 + self.ttl;
        if expires > Instant::now() {
            self.cache.insert(key.clone(), Entry { value, expires });
            // An invalidation may have slipped in between the check and the insert.
            if self.epoch.load(Ordering::Acquire) != ticket.0 {
                self.cache.remove(&key);
            }
        }
    }

    /// A write or delete of `key` went through the proxy.
    pub fn invalidate(&self, key: &[u8]) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.cache.remove(key);
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
        let t = c.ticket();
        c.fill(k.clone(), Bytes::from_static(b"v1"), t);
        assert_eq!(c.get(b"k").unwrap(), Bytes::from_static(b"v1"));
        // A read started, then a write invalidated: the read's old value is not stored.
        let t = c.ticket();
        c.invalidate(b"k");
        c.fill(k.clone(), Bytes::from_static(b"old"), t);
        assert!(c.get(b"k").is_none());
        // Never older than ttl.
        let t = c.ticket();
        c.fill(k.clone(), Bytes::from_static(b"v2"), t);
        std::thread::sleep(Duration::from_millis(120));
        assert!(c.get(b"k").is_none());
        assert!(c.hits.load(Ordering::Relaxed) >= 1);
    }
}
