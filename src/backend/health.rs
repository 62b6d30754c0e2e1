//! Per-server health shared by all workers: consecutive failures and twemproxy-style ejection.
//!
//! Atomics only, so the request path takes no lock. With `auto_eject_hosts` a server that fails
//! `failure_limit` times in a row is ejected for `retry_timeout` and the pool's ring is rebuilt
//! without it (twemproxy semantics: its keys move); after the timeout it is retried.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Milliseconds since the process started (monotonic).
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

#[derive(Debug, Default)]
pub struct ServerHealth {
    failures: AtomicU32,
    /// 0 = in service; otherwise ejected until this `now_ms()`.
    ejected_until: AtomicU64,
    pub errors: AtomicU64,
    pub timeouts: AtomicU64,
}

/// What a failure did to the server.
#[derive(Debug, PartialEq, Eq)]
pub enum FailureOutcome {
    Counted,
    Ejected,
}

impl ServerHealth {
    pub fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Count one failure; eject when `auto_eject` and the limit is reached.
    pub fn record_failure(&self, auto_eject: bool, limit: u32, retry: Duration) -> FailureOutcome {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if auto_eject && n >= limit.max(1) && self.ejected_until.load(Ordering::Relaxed) == 0 {
            self.failures.store(0, Ordering::Relaxed);
            self.ejected_until
                .store(now_ms() + retry.as_millis() as u64, Ordering::Relaxed);
            return FailureOutcome::Ejected;
        }
        FailureOutcome::Counted
    }

    /// True while ejected. Once the retry time has passed the server is back in service.
    pub fn is_ejected(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now < until
    }

    /// The ejection deadline, if any (0 = none).
    pub fn ejected_until(&self) -> u64 {
        self.ejected_until.load(Ordering::Relaxed)
    }

    /// Put the server back in service (its retry time passed).
    pub fn readmit(&self) {
        self.ejected_until.store(0, Ordering::Relaxed);
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejects_after_limit_only_with_auto_eject() {
        let h = ServerHealth::default();
        let retry = Duration::from_secs(30);
        assert_eq!(h.record_failure(false, 2, retry), FailureOutcome::Counted);
        assert_eq!(h.record_failure(false, 2, retry), FailureOutcome::Counted);
        assert!(!h.is_ejected(now_ms()));
        h.record_success();
        assert_eq!(h.record_failure(true, 2, retry), FailureOutcome::Counted);
        assert_eq!(h.record_failure(true, 2, retry), FailureOutcome::Ejected);
        assert!(h.is_ejected(now_ms()));
        assert!(!h.is_ejected(now_ms() + 31_000));
        h.readmit();
        assert!(!h.is_ejected(now_ms()));
    }
}
