//! Wire protocols: incremental, zero-copy scanners for requests and replies.
//!
//! A parser here knows no sockets, pools or config: limits come in as arguments, and it works on
//! whatever bytes have arrived so far, asking for more when a frame is incomplete.

pub mod memcache;
pub mod redis_commands;
pub mod resp;
