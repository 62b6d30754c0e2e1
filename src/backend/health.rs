//! Per-server health shared by all workers: consecutive failures, twemproxy-style ejection, and
//! mcrouter-style TKO ("technical knock-out").
//!
//! Atomics only, so the request path takes no lock. Two policies, chosen per pool:
//! - twemproxy pools with `auto_eject_hosts`: a server that fails `failure_limit` times in a row
//!   is ejected for `retry_timeout` and the pool's ring is rebuilt without it (its keys move);
//!   after the timeout it is simply retried.
//! - native pools: TKO never changes the ring. `failure_limit` consecutive timeouts or connect
//!   errors mark a server down (soft TKO); a refused connection marks it down at once (hard TKO).
//!   While down, requests to it fail at once (no waiting for a timeout) so a failover route can
//!   take over, and one probe (see `probe.rs`) checks it with backoff until it answers.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
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
    /// TKO state: UP, SOFT_TKO or HARD_TKO.
    tko: AtomicU8,
    /// Consecutive failures counted towards a soft TKO.
    tko_failures: AtomicU32,
    /// A probe task is running for this server.
    probing: AtomicBool,
    /// Times this server was marked down.
    pub tko_count: AtomicU64,
    /// A reply came from this server (a request's or a probe's) since it was configured.
    answered: AtomicBool,
    /// Its first check (`probe::startup`) was claimed, by whichever worker saw it first.
    checking: AtomicBool,
}

pub const UP: u8 = 0;
pub const SOFT_TKO: u8 = 1;
pub const HARD_TKO: u8 = 2;

/// A failure as TKO sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// Connection refused: the server is certainly down.
    Refused,
    /// A timeout or another connect error.
    Soft,
    /// The connection broke or sent garbage: not counted towards TKO.
    Other,
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

    /// True while the server is marked down (TKO): requests to it fail at once.
    pub fn is_down(&self) -> bool {
        self.tko.load(Ordering::Relaxed) != UP
    }

    pub fn tko_state(&self) -> u8 {
        self.tko.load(Ordering::Relaxed)
    }

    /// Count a failure towards TKO; true when this call marked the server down.
    pub fn tko_failure(&self, kind: FailureKind, limit: u32) -> bool {
        let next = match kind {
            FailureKind::Refused => HARD_TKO,
            FailureKind::Soft => {
                let n = self.tko_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if n < limit.max(1) {
                    return false;
                }
                SOFT_TKO
            }
            FailureKind::Other => return false,
        };
        let marked = self
            .tko
            .compare_exchange(UP, next, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if marked {
            self.tko_count.fetch_add(1, Ordering::Relaxed);
        }
        marked
    }

    /// A reply arrived: consecutive failures start again from zero.
    pub fn tko_success(&self) {
        if self.tko_failures.load(Ordering::Relaxed) != 0 {
            self.tko_failures.store(0, Ordering::Relaxed);
        }
        self.mark_answered();
    }

    /// The server answered something: readiness can count it.
    pub fn mark_answered(&self) {
        if !self.answered.load(Ordering::Relaxed) {
            self.answered.store(true, Ordering::Relaxed);
        }
    }

    pub fn answered(&self) -> bool {
        self.answered.load(Ordering::Relaxed)
    }

    /// Neither answered nor marked down yet: its state is not known.
    pub fn unknown(&self) -> bool {
        !self.answered() && !self.is_down()
    }

    /// Claim the right to run the server's first check.
    pub fn claim_startup_check(&self) -> bool {
        self.checking
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Claim the right to run the one probe for this server.
    pub fn claim_probe(&self) -> bool {
        self.probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// The probe got an answer: back in service.
    pub fn probe_succeeded(&self) {
        self.mark_answered();
        self.tko_failures.store(0, Ordering::Relaxed);
        self.tko.store(UP, Ordering::Release);
        self.probing.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_tko_after_limit_hard_tko_at_once_probe_restores() {
        let h = ServerHealth::default();
        assert!(!h.tko_failure(FailureKind::Soft, 3));
        assert!(!h.tko_failure(FailureKind::Soft, 3));
        h.tko_success();
        assert!(!h.tko_failure(FailureKind::Soft, 3));
        assert!(!h.tko_failure(FailureKind::Soft, 3));
        assert!(!h.is_down());
        assert!(h.tko_failure(FailureKind::Soft, 3));
        assert_eq!(h.tko_state(), SOFT_TKO);
        assert!(!h.tko_failure(FailureKind::Refused, 3), "already down");
        assert!(h.claim_probe());
        assert!(!h.claim_probe(), "one probe at a time");
        h.probe_succeeded();
        assert!(!h.is_down());
        assert!(h.tko_failure(FailureKind::Refused, 3));
        assert_eq!(h.tko_state(), HARD_TKO);
        assert!(!h.tko_failure(FailureKind::Other, 1));
        assert_eq!(h.tko_count.load(Ordering::Relaxed), 2);
    }

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
