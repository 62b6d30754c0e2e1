//! Distributions: turn a key into the index of the server that owns it.
//!
//! This is twemproxy's `server_pool_idx` and the three `*_update`/`*_dispatch` pairs in
//! hashkit, reproduced so a pool moved from nutcracker to kvrouter keeps every key on its server:
//!
//! - servers are ordered by name with twemproxy's `string_compare` (shorter name first, then
//!   bytes) before anything else, so under modula a server's slot is its sorted position, not
//!   its line in the config;
//! - the hash tag (if any) cuts the key first; a pool of one configured server skips hashing
//!   (hash 0), and an empty key hashes to 0;
//! - ketama: see [`super::ketama`]; modula: each live server gets `weight` consecutive slots and
//!   the key takes slot `hash % total_live_weight`; random: a uniformly random live server,
//!   weights ignored, key ignored.
//!
//! Indices returned are positions in the `nodes` slice given to [`Placement::new`] (config
//! order), so callers never see the sorted order.

use std::cmp::Ordering;

use super::hash::HashKind;
use super::ketama::{Continuum, RingServer};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DistributionKind {
    Ketama,
    Modula,
    Random,
}

impl DistributionKind {
    pub fn name(self) -> &'static str {
        match self {
            DistributionKind::Ketama => "ketama",
            DistributionKind::Modula => "modula",
            DistributionKind::Random => "random",
        }
    }

    pub fn from_name(name: &str) -> Option<DistributionKind> {
        [Self::Ketama, Self::Modula, Self::Random]
            .into_iter()
            .find(|d| d.name() == name)
    }
}

/// One server as the distribution sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The name twemproxy hashes and sorts by: the configured name, else `host:port`,
    /// else `host` when the port is 11211.
    pub name: String,
    pub weight: u32,
}

/// twemproxy's `CONF_DEFAULT_KETAMA_PORT`: servers on it are named by host alone.
pub const LIBMEMCACHED_PORT: u16 = 11211;

impl Node {
    /// The name twemproxy gives a server line `host:port:weight [name]`: `name` when given,
    /// else `host` when the port is 11211 (libmemcached compatibility), else `host:port`.
    ///
    /// `port` is the port as written in the config (twemproxy copies the text, so `:011212`
    /// stays `011212`); the 11211 test is on its numeric value.
    pub fn twemproxy_name(host: &str, port: &str, name: Option<&str>) -> String {
        match name {
            Some(n) => n.to_string(),
            None if port.parse::<u16>() == Ok(LIBMEMCACHED_PORT) => host.to_string(),
            None => format!("{host}:{port}"),
        }
    }
}

/// twemproxy's `string_compare`: a shorter string sorts first; equal lengths compare bytes
/// (`strncmp`, unsigned, stopping at a NUL byte).
pub fn twemproxy_name_cmp(a: &[u8], b: &[u8]) -> Ordering {
    if a.len() != b.len() {
        return a.len().cmp(&b.len());
    }
    for (x, y) in a.iter().zip(b) {
        match x.cmp(y) {
            Ordering::Equal if *x == 0 => return Ordering::Equal,
            Ordering::Equal => {}
            other => return other,
        }
    }
    Ordering::Equal
}

#[derive(Clone, Debug)]
enum Table {
    /// No live server.
    Empty,
    Ketama(Continuum),
    /// One entry per weight unit: the config index of its server.
    Modula(Vec<usize>),
    /// The config indices of live servers.
    Random(Vec<usize>),
}

/// An immutable placement table for one pool. Rebuilt whole when the set of live servers changes.
#[derive(Clone, Debug)]
pub struct Placement {
    hash: HashKind,
    hash_tag: Option<[u8; 2]>,
    /// twemproxy skips hashing when the pool has exactly one server (live or not).
    single: bool,
    table: Table,
}

impl Placement {
    /// `nodes` in config order; `live[i]` false means node i is ejected (twemproxy
    /// `auto_eject_hosts`). Indices returned by `server_for` index into `nodes` as given.
    /// A missing `live` entry counts as live.
    pub fn new(
        kind: DistributionKind,
        hash: HashKind,
        hash_tag: Option<[u8; 2]>,
        nodes: &[Node],
        live: &[bool],
    ) -> Placement {
        let mut order: Vec<usize> = (0..nodes.len()).collect();
        order.sort_by(|&a, &b| {
            twemproxy_name_cmp(nodes[a].name.as_bytes(), nodes[b].name.as_bytes())
        });
        let alive: Vec<usize> = order
            .into_iter()
            .filter(|&i| live.get(i).copied().unwrap_or(true))
            .collect();
        let table = if alive.is_empty() {
            Table::Empty
        } else {
            match kind {
                DistributionKind::Ketama => {
                    let ring: Vec<RingServer<'_>> = alive
                        .iter()
                        .map(|&i| RingServer {
                            name: nodes[i].name.as_bytes(),
                            weight: nodes[i].weight,
                            server: i,
                        })
                        .collect();
                    Table::Ketama(Continuum::build(&ring))
                }
                DistributionKind::Modula => Table::Modula(
                    alive
                        .iter()
                        .flat_map(|&i| std::iter::repeat_n(i, nodes[i].weight as usize))
                        .collect(),
                ),
                DistributionKind::Random => Table::Random(alive),
            }
        };
        Placement {
            hash,
            hash_tag,
            single: nodes.len() == 1,
            table,
        }
    }

    /// The hash twemproxy dispatches `key` with (after the hash tag; 0 for an empty key or a
    /// one-server pool). Meaningless for random.
    pub fn key_hash(&self, key: &[u8]) -> u32 {
        let key = hash_tag_key(key, self.hash_tag);
        if self.single || key.is_empty() {
            0
        } else {
            self.hash.hash(key)
        }
    }

    /// The server (index into `nodes`) that owns `key`; None when no server is live.
    pub fn server_for(&self, key: &[u8]) -> Option<usize> {
        match &self.table {
            Table::Empty => None,
            Table::Ketama(ring) => ring.dispatch(self.key_hash(key)),
            Table::Modula(slots) if slots.is_empty() => None,
            Table::Modula(slots) => Some(slots[self.key_hash(key) as usize % slots.len()]),
            Table::Random(live) => Some(live[fastrand::usize(..live.len())]),
        }
    }
}

/// The part of `key` that is hashed: the text between the first `tag[0]` and the next `tag[1]`,
/// when that text is non-empty; otherwise the whole key.
pub fn hash_tag_key(key: &[u8], tag: Option<[u8; 2]>) -> &[u8] {
    let Some([open, close]) = tag else {
        return key;
    };
    let Some(start) = memchr::memchr(open, key) else {
        return key;
    };
    let inner = &key[start + 1..];
    match memchr::memchr(close, inner) {
        Some(end) if end > 0 => &inner[..end],
        _ => key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, weight: u32) -> Node {
        Node {
            name: name.to_string(),
            weight,
        }
    }

    #[test]
    fn server_names() {
        assert_eq!(
            Node::twemproxy_name("127.0.0.1", "11211", None),
            "127.0.0.1"
        );
        assert_eq!(
            Node::twemproxy_name("127.0.0.1", "11212", None),
            "127.0.0.1:11212"
        );
        assert_eq!(Node::twemproxy_name("mc.example", "11211", Some("a")), "a");
        assert_eq!(Node::twemproxy_name("h", "11213", Some("b")), "b");
    }

    #[test]
    fn name_order_is_shorter_first() {
        assert_eq!(twemproxy_name_cmp(b"zz", b"aaa"), Ordering::Less);
        assert_eq!(twemproxy_name_cmp(b"ab", b"aa"), Ordering::Greater);
        assert_eq!(twemproxy_name_cmp(b"\x80", b"a"), Ordering::Greater);
        assert_eq!(twemproxy_name_cmp(b"a\0x", b"a\0y"), Ordering::Equal);
    }

    #[test]
    fn hash_tags() {
        let t = Some(*b"{}");
        assert_eq!(hash_tag_key(b"user:{42}:name", t), b"42");
        assert_eq!(hash_tag_key(b"{}x", t), b"{}x");
        assert_eq!(hash_tag_key(b"a{b", t), b"a{b");
        assert_eq!(hash_tag_key(b"a}b{c}", t), b"c");
        assert_eq!(hash_tag_key(b"{a{b}c}", t), b"a{b");
        // Only the first open tag counts, even when its tag is empty.
        assert_eq!(hash_tag_key(b"{}{x}", t), b"{}{x}");
        assert_eq!(hash_tag_key(b"plain", None), b"plain");
        assert_eq!(hash_tag_key(b"$a$b", Some(*b"$$")), b"a");
    }

    #[test]
    fn modula_uses_sorted_name_order_and_weights() {
        // Config order b, a(2): sorted a, b -> slots [a, a, b].
        let nodes = [node("b", 1), node("a", 2)];
        let p = Placement::new(
            DistributionKind::Modula,
            HashKind::Crc16,
            None,
            &nodes,
            &[true, true],
        );
        for key in [&b"k1"[..], b"k2", b"k3", b"k4", b"zz"] {
            let want = if HashKind::Crc16.hash(key) % 3 < 2 {
                1
            } else {
                0
            };
            assert_eq!(p.server_for(key), Some(want), "key {key:?}");
        }
        // Swapping the config lines moves no key.
        let swapped = [node("a", 2), node("b", 1)];
        let q = Placement::new(
            DistributionKind::Modula,
            HashKind::Crc16,
            None,
            &swapped,
            &[true, true],
        );
        for key in [&b"k1"[..], b"k2", b"k3", b"k4", b"zz"] {
            assert_eq!(
                nodes[p.server_for(key).unwrap()],
                swapped[q.server_for(key).unwrap()]
            );
        }
    }

    #[test]
    fn single_server_and_empty_key_hash_to_zero() {
        let one = Placement::new(
            DistributionKind::Ketama,
            HashKind::Md5,
            None,
            &[node("x", 1)],
            &[true],
        );
        assert_eq!(one.key_hash(b"anything"), 0);
        assert_eq!(one.server_for(b"anything"), Some(0));
        let two = Placement::new(
            DistributionKind::Ketama,
            HashKind::Md5,
            Some(*b"{}"),
            &[node("x", 1), node("y", 1)],
            &[true, true],
        );
        assert_eq!(two.key_hash(b""), 0);
        assert_eq!(two.key_hash(b"a{b}c"), HashKind::Md5.hash(b"b"));
    }

    #[test]
    fn dead_servers_get_nothing() {
        let nodes = [node("a", 1), node("b", 1), node("c", 1)];
        for kind in [
            DistributionKind::Ketama,
            DistributionKind::Modula,
            DistributionKind::Random,
        ] {
            let p = Placement::new(kind, HashKind::Fnv1a_64, None, &nodes, &[true, false, true]);
            for i in 0..500u32 {
                assert_ne!(p.server_for(format!("key{i}").as_bytes()), Some(1));
            }
            let none = Placement::new(kind, HashKind::Fnv1a_64, None, &nodes, &[false; 3]);
            assert_eq!(none.server_for(b"k"), None);
        }
    }

    #[test]
    fn ketama_only_moves_keys_of_the_dead_server() {
        let nodes = [node("a", 1), node("b", 1), node("c", 1)];
        let all = Placement::new(
            DistributionKind::Ketama,
            HashKind::Md5,
            None,
            &nodes,
            &[true; 3],
        );
        let two = Placement::new(
            DistributionKind::Ketama,
            HashKind::Md5,
            None,
            &nodes,
            &[true, false, true],
        );
        for i in 0..2000u32 {
            let k = format!("key{i}");
            let before = all.server_for(k.as_bytes()).unwrap();
            if before != 1 {
                assert_eq!(two.server_for(k.as_bytes()), Some(before));
            }
        }
    }
}
