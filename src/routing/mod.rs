//! Key placement: which server of a pool owns a key.
//!
//! Placement must match twemproxy 0.5.0 bit for bit so that a fleet can move from nutcracker to
//! kvrouter without a single cache miss. Each hash function lives in its own file under `hash/`
//! (like twemproxy's hashkit); `distribution` turns a hash into a server with ketama, modula or
//! random. `route/` is the route tree (one file per route handle, generic over a protocol
//! `Leaf`), `split` cuts a multi-key request per server, `slots` is Redis Cluster's CRC16.

pub mod distribution;
pub mod hash;
pub mod ketama;
pub mod route;
pub mod slots;
pub mod split;

pub use distribution::{hash_tag_key, DistributionKind, Node, Placement};
pub use hash::HashKind;
