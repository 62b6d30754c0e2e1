//! Backend connections: per server and per worker, long-lived, pipelined and shared by many
//! clients of that worker. A backend connection knows no clients, only requests and replies.

pub mod connection;
pub mod health;
pub mod io;
pub mod probe;
pub mod tls;

pub use connection::{BackendError, BackendHandle, Probe, Reply, ReplyKind, ServerSpec};
pub use health::ServerHealth;
