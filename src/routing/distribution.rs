//! Distributions: turn a key into the index of the server that owns it.

use super::hash::HashKind;

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

/// An immutable placement table for one pool. Rebuilt whole when the set of live servers changes.
#[derive(Clone, Debug)]
pub struct Placement {
    _private: (),
}

impl Placement {
    /// `nodes` in config order; `live[i]` false means node i is ejected (twemproxy
    /// `auto_eject_hosts`). Indices returned by `server_for` index into `nodes` as given.
    pub fn new(
        kind: DistributionKind,
        hash: HashKind,
        hash_tag: Option<[u8; 2]>,
        nodes: &[Node],
        live: &[bool],
    ) -> Placement {
        let _ = (kind, hash, hash_tag, nodes, live);
        unimplemented!()
    }

    /// The server (index into `nodes`) that owns `key`; None when no server is live.
    pub fn server_for(&self, key: &[u8]) -> Option<usize> {
        let _ = key;
        unimplemented!()
    }
}

/// The part of `key` that is hashed: the text between the first `tag[0]` and the next `tag[1]`,
/// when that text is non-empty; otherwise the whole key.
pub fn hash_tag_key(key: &[u8], tag: Option<[u8; 2]>) -> &[u8] {
    let _ = tag;
    key
}
