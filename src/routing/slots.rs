//! Redis Cluster key slots and the slot map.
//!
//! A key's slot is CRC16/XMODEM of the key mod 16384, where a key holding a hash tag (the bytes
//! between the first `{` and the next `}`, when not empty) is hashed by its tag alone, exactly as
//! `CLUSTER KEYSLOT` computes it (binary keys included).
//!
//! `ClusterMap` is one consistent view of the cluster's topology: for each slot, the node that
//! owns it (its primary) and that node's replicas. It is immutable; a refresh builds a new one.

use crc::{Crc, CRC_16_XMODEM};

/// Number of hash slots of a Redis Cluster.
pub const SLOTS: usize = 16384;

const CRC16: Crc<u16> = Crc::<u16>::new(&CRC_16_XMODEM);

/// The part of `key` that is hashed: the hash tag when there is a non-empty one.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = memchr::memchr(b'{', key) {
        if let Some(len) = memchr::memchr(b'}', &key[open + 1..]) {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// The slot of `key` (0..16384).
pub fn key_slot(key: &[u8]) -> u16 {
    CRC16.checksum(hash_tag(key)) & (SLOTS as u16 - 1)
}

/// One shard of the cluster: a primary and its replicas (`host:port` addresses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    pub primary: String,
    pub replicas: Vec<String>,
}

/// Slot → shard, built from `CLUSTER SLOTS`. A slot no node serves maps to nothing.
#[derive(Clone, Debug)]
pub struct ClusterMap {
    /// Index into `shards` per slot; `u16::MAX` = unassigned.
    slots: Vec<u16>,
    pub shards: Vec<Shard>,
    /// Bumped for every new map (0 = the empty map before the first refresh).
    pub version: u64,
}

const NONE: u16 = u16::MAX;

impl Default for ClusterMap {
    fn default() -> Self {
        ClusterMap {
            slots: vec![NONE; SLOTS],
            shards: Vec::new(),
            version: 0,
        }
    }
}

impl ClusterMap {
    /// A map from `(first_slot, last_slot, shard)` ranges (as CLUSTER SLOTS lists them).
    pub fn from_ranges(ranges: &[(u16, u16, Shard)], version: u64) -> ClusterMap {
        let mut map = ClusterMap {
            version,
            ..ClusterMap::default()
        };
        for (first, last, shard) in ranges {
            let idx = match map.shards.iter().position(|s| s.primary == shard.primary) {
                Some(i) => i,
                None => {
                    map.shards.push(shard.clone());
                    map.shards.len() - 1
                }
            };
            for s in *first..=(*last).min(SLOTS as u16 - 1) {
                map.slots[s as usize] = idx as u16;
            }
        }
        map
    }

    /// The shard owning `slot`.
    pub fn shard(&self, slot: u16) -> Option<&Shard> {
        match self.slots.get(slot as usize) {
            Some(&i) if i != NONE => self.shards.get(i as usize),
            _ => None,
        }
    }

    /// Copy of this map with `slot` owned by the primary `addr` (after a MOVED), as `version`
    /// (versions come from one counter with the refreshes'). A node not yet known becomes a
    /// shard of its own with no replicas until the next refresh.
    pub fn with_slot_moved(&self, slot: u16, addr: &str, version: u64) -> ClusterMap {
        let mut map = self.clone();
        let idx = match map.shards.iter().position(|s| s.primary == addr) {
            Some(i) => i,
            None => {
                map.shards.push(Shard {
                    primary: addr.to_string(),
                    replicas: Vec::new(),
                });
                map.shards.len() - 1
            }
        };
        map.slots[slot as usize] = idx as u16;
        map.version = version;
        map
    }

    /// True when every slot has an owner.
    pub fn complete(&self) -> bool {
        self.slots.iter().all(|&s| s != NONE)
    }

    /// Every address the map knows (primaries first).
    pub fn addresses(&self) -> Vec<String> {
        let mut out: Vec<String> = self.shards.iter().map(|s| s.primary.clone()).collect();
        for s in &self.shards {
            out.extend(s.replicas.iter().cloned());
        }
        out
    }

    /// The primaries that own at least one slot, in a stable (sorted) order: the fan-out and
    /// SCAN order.
    pub fn primaries(&self) -> Vec<String> {
        let mut used = vec![false; self.shards.len()];
        for &s in &self.slots {
            if s != NONE {
                used[s as usize] = true;
            }
        }
        let mut out: Vec<String> = self
            .shards
            .iter()
            .zip(used)
            .filter(|(_, u)| *u)
            .map(|(s, _)| s.primary.clone())
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hot-key split copies must spread over the slot space (CRC16 is linear: names differing in
    /// one byte stay close), so a cluster's nodes share a hot key's reads.
    #[test]
    fn split_copies_spread_over_the_slot_space() {
        let thirds = |key: &[u8]| -> usize {
            let mut seen = [false; 3];
            for i in 0..8 {
                let copy = crate::hotkey::split::copy_key(key, i, Some(*b"{}"));
                seen[key_slot(&copy) as usize * 3 / SLOTS] = true;
            }
            seen.iter().filter(|s| **s).count()
        };
        let keys: Vec<String> = (0..300)
            .map(|n| match n % 3 {
                0 => format!("user:{n}"),
                1 => format!("{{user{n}}}:profile"),
                _ => format!("session-{n}-{}", n * 7919),
            })
            .collect();
        let all_three = keys.iter().filter(|k| thirds(k.as_bytes()) == 3).count();
        let one = keys.iter().filter(|k| thirds(k.as_bytes()) == 1).count();
        // 8 random slots reach all three thirds 88% of the time, one third 0.05%.
        assert!(
            all_three >= 240,
            "{all_three} of 300 keys reach every third"
        );
        assert!(one <= 3, "{one} of 300 keys keep every copy in one third");
    }

    #[test]
    fn crc16_xmodem_check_value() {
        assert_eq!(CRC16.checksum(b"123456789"), 0x31C3);
    }

    #[test]
    fn slots_like_redis() {
        // Values from CLUSTER KEYSLOT (redis 7.0).
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        assert_eq!(hash_tag(b"{}"), b"{}");
        assert_eq!(hash_tag(b"a{b"), b"a{b");
        assert_eq!(key_slot(b""), 0);
    }

    #[test]
    fn map_ranges_and_moves() {
        let a = Shard {
            primary: "a:1".into(),
            replicas: vec!["ra:1".into()],
        };
        let b = Shard {
            primary: "b:1".into(),
            replicas: vec![],
        };
        let m = ClusterMap::from_ranges(&[(0, 8191, a.clone()), (8192, 16383, b.clone())], 1);
        assert!(m.complete());
        assert_eq!(m.shard(0), Some(&a));
        assert_eq!(m.shard(16383), Some(&b));
        assert_eq!(m.primaries(), vec!["a:1".to_string(), "b:1".to_string()]);
        let m2 = m.with_slot_moved(5, "c:1", 2);
        assert_eq!(m2.shard(5).unwrap().primary, "c:1");
        assert_eq!(m2.shard(6), Some(&a));
        assert_eq!(m2.version, 2);
        let partial = ClusterMap::from_ranges(&[(0, 10, a)], 1);
        assert!(!partial.complete());
        assert_eq!(partial.shard(11), None);
    }
}
