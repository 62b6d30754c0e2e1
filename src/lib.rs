//! kvrouter: a sharding proxy for memcached and Redis fleets.
//!
//! Data flows one way: `server` (listeners, client connections) parses requests with `protocol`,
//! asks `routing` for the backend(s), queues them on `backend` connections, and merges the replies.
//! `config` is plain data loaded from YAML; `admin` serves the HTTP endpoints.

pub mod admin;
pub mod backend;
pub mod config;
pub mod daemon;
pub mod failover;
pub mod hotkey;
pub mod keymap;
pub mod logging;
pub mod protocol;
pub mod routing;
pub mod server;
