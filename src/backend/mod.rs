//! Backend connections: per server and per worker, long-lived, pipelined and shared by many
//! clients of that worker. A backend connection knows no clients, only requests and replies.
//! `dedicated` connections are the exception: opened for one client's transaction, blocking
//! command or subscriptions, used by nobody else, closed when that client is done.

pub mod connection;
pub mod dedicated;
pub mod health;
pub mod io;
pub mod metrics;
pub mod probe;
pub mod tls;

pub use connection::{BackendError, BackendHandle, Probe, Reply, ReplyKind, ServerSpec};
pub use dedicated::{Dedicated, PushSink};
pub use health::ServerHealth;
pub use metrics::ServerMetrics;
