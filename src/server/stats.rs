//! The proxy's own counters, reported by the memcached `stats` command (memcached's names, so
//! existing monitoring keeps working). Relaxed atomics: counted from every worker without locks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug)]
pub struct Stats {
    started: Instant,
    started_unix: u64,
    pub curr_connections: AtomicU64,
    pub total_connections: AtomicU64,
    pub rejected_connections: AtomicU64,
    pub cmd_get: AtomicU64,
    pub cmd_set: AtomicU64,
    pub cmd_touch: AtomicU64,
    pub cmd_flush: AtomicU64,
    pub get_hits: AtomicU64,
    pub get_misses: AtomicU64,
    /// Keys of a multi-get answered as misses because their server failed.
    pub get_failed_keys: AtomicU64,
    /// Plain gets answered by sharing another client's in-flight request (`coalesce_misses`).
    pub get_coalesced: AtomicU64,
    pub delete_cmds: AtomicU64,
    pub incr_cmds: AtomicU64,
    pub decr_cmds: AtomicU64,
    pub cas_cmds: AtomicU64,
    pub client_errors: AtomicU64,
    pub server_errors: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            curr_connections: AtomicU64::new(0),
            total_connections: AtomicU64::new(0),
            rejected_connections: AtomicU64::new(0),
            cmd_get: AtomicU64::new(0),
            cmd_set: AtomicU64::new(0),
            cmd_touch: AtomicU64::new(0),
            cmd_flush: AtomicU64::new(0),
            get_hits: AtomicU64::new(0),
            get_misses: AtomicU64::new(0),
            get_failed_keys: AtomicU64::new(0),
            get_coalesced: AtomicU64::new(0),
            delete_cmds: AtomicU64::new(0),
            incr_cmds: AtomicU64::new(0),
            decr_cmds: AtomicU64::new(0),
            cas_cmds: AtomicU64::new(0),
            client_errors: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
        }
    }
}

pub fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Stats {
    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// memcached's `stats` reply: `STAT name value` lines ended by `END`.
    pub fn memcache_report(&self, threads: usize) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let rows: Vec<(&str, String)> = vec![
            ("pid", std::process::id().to_string()),
            ("uptime", self.uptime_secs().to_string()),
            ("time", now.to_string()),
            ("version", format!("kvrouter-{}", env!("CARGO_PKG_VERSION"))),
            ("started", self.started_unix.to_string()),
            ("threads", threads.to_string()),
            ("curr_connections", g(&self.curr_connections).to_string()),
            ("total_connections", g(&self.total_connections).to_string()),
            (
                "rejected_connections",
                g(&self.rejected_connections).to_string(),
            ),
            ("cmd_get", g(&self.cmd_get).to_string()),
            ("cmd_set", g(&self.cmd_set).to_string()),
            ("cmd_flush", g(&self.cmd_flush).to_string()),
            ("cmd_touch", g(&self.cmd_touch).to_string()),
            ("get_hits", g(&self.get_hits).to_string()),
            ("get_misses", g(&self.get_misses).to_string()),
            ("get_failed_keys", g(&self.get_failed_keys).to_string()),
            ("get_coalesced", g(&self.get_coalesced).to_string()),
            ("delete_cmds", g(&self.delete_cmds).to_string()),
            ("incr_cmds", g(&self.incr_cmds).to_string()),
            ("decr_cmds", g(&self.decr_cmds).to_string()),
            ("cas_cmds", g(&self.cas_cmds).to_string()),
            ("client_errors", g(&self.client_errors).to_string()),
            ("server_errors", g(&self.server_errors).to_string()),
        ];
        let mut out = String::new();
        for (k, v) in rows {
            out.push_str("STAT ");
            out.push_str(k);
            out.push(' ');
            out.push_str(&v);
            out.push_str("\r\n");
        }
        out.push_str("END\r\n");
        out
    }
}
