//! Hot keys: find them as they happen (`detector`), then take the load off the one server that
//! owns them. Shared across workers, touched on the request path only through lock-free reads.

pub mod detector;
pub mod local_cache;
pub mod split;
