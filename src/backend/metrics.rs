//! Per-server metric handles, created once when a config is loaded and kept in the server's
//! `ServerSpec`: the request path only touches atomics, never a label lookup.

use prometheus::{Histogram, IntCounter, IntGauge};

use super::connection::BackendError;

/// Why a request to a server got no reply (the `kind` label of the errors counter).
/// `down`: refused at once because the server is marked down (TKO).
pub const ERROR_KINDS: [&str; 5] = ["timeout", "connect", "closed", "protocol", "down"];

/// The metric handles of one server of one pool.
#[derive(Clone, Debug)]
pub struct ServerMetrics {
    /// Requests queued to the server.
    pub requests: IntCounter,
    /// Requests that got no reply, by `ERROR_KINDS`.
    pub errors: [IntCounter; 5],
    /// Times the server was ejected (`auto_eject_hosts`).
    pub ejections: IntCounter,
    /// Seconds from queueing a request on a backend connection to its reply.
    pub latency: Histogram,
    /// Requests queued or sent and not answered yet.
    pub inflight: IntGauge,
}

impl ServerMetrics {
    /// Handles registered nowhere: for tests and tools that need a spec but no metrics.
    pub fn unregistered() -> ServerMetrics {
        let c = || IntCounter::new("unregistered", "unregistered").expect("valid name");
        ServerMetrics {
            requests: c(),
            errors: [c(), c(), c(), c(), c()],
            ejections: c(),
            latency: Histogram::with_opts(prometheus::HistogramOpts::new(
                "unregistered",
                "unregistered",
            ))
            .expect("valid name"),
            inflight: IntGauge::new("unregistered", "unregistered").expect("valid name"),
        }
    }

    pub fn error(&self, e: &BackendError) -> &IntCounter {
        &self.errors[match e {
            BackendError::Timeout(_) => 0,
            BackendError::Connect(_) | BackendError::Auth(_) => 1,
            BackendError::Closed(_) => 2,
            BackendError::Protocol(_) => 3,
            BackendError::Down => 4,
        }]
    }
}
