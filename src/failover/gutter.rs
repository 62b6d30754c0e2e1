//! Gutter expiry capping. A gutter pool absorbs the keys of a down server for a short while, so
//! everything written there must expire soon: when the server comes back its keys go back to
//! it, and whatever the gutter still holds must not be served stale for long.

use std::time::Duration;

/// memcached reads an exptime above this (30 days) as an absolute unix time.
pub const RELATIVE_LIMIT: i64 = 60 * 60 * 24 * 30;

/// The exptime to send to the gutter for a requested memcached `exptime`: never longer than
/// `max_ttl` from now. 0 (never expire) becomes `max_ttl`; negative (already expired) stays.
pub fn cap(exptime: i64, max_ttl: Duration, now_unix: i64) -> i64 {
    let max = (max_ttl.as_secs() as i64).max(1);
    if exptime < 0 {
        return exptime;
    }
    let remaining = match exptime {
        0 => i64::MAX,
        e if e > RELATIVE_LIMIT => e - now_unix,
        e => e,
    };
    if remaining <= 0 {
        -1 // an absolute time in the past: expired
    } else {
        remaining.min(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_relative_absolute_and_never() {
        let ten = Duration::from_secs(10);
        let now = 1_800_000_000;
        assert_eq!(cap(0, ten, now), 10);
        assert_eq!(cap(5, ten, now), 5);
        assert_eq!(cap(3600, ten, now), 10);
        assert_eq!(cap(now + 3, ten, now), 3);
        assert_eq!(cap(now + 3600, ten, now), 10);
        assert_eq!(cap(now - 5, ten, now), -1);
        assert_eq!(cap(-1, ten, now), -1);
        assert_eq!(
            cap(100, Duration::from_millis(200), now),
            1,
            "at least one second"
        );
    }
}
