//! The proxy's own counters, reported by the memcached `stats` command (memcached's names, so
//! existing monitoring keeps working). Relaxed atomics: counted from every worker without locks.
//! Each memcached listener has its own (`ByListener`), so its `stats` reports its own clients
//! only, across reloads; Redis listeners share one.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// Each memcached listener's counters, by listener name (its address): they survive reloads.
#[derive(Debug, Default)]
pub struct ByListener(Mutex<HashMap<String, Arc<Stats>>>);

impl ByListener {
    pub fn get(&self, listener: &str) -> Arc<Stats> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(listener.to_string()).or_default().clone()
    }
}

/// `stats items` / `stats slabs` of several servers as one reply: each `STAT name value` summed
/// over the servers that have it, except sizes and ages (`chunk_size`, `chunks_per_page`,
/// `age*`), which are the same or comparable on each server and take the largest. Lines that
/// are not numbers keep the first server's value.
pub fn sum_stat_replies<'a>(replies: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut rows: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for reply in replies {
        for line in reply.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(rest) = line.strip_prefix(b"STAT ") else {
                continue;
            };
            let text = String::from_utf8_lossy(rest);
            let Some((name, value)) = text.split_once(' ') else {
                continue;
            };
            let order = rows.len();
            let field = name.rsplit(':').next().unwrap_or(name);
            let largest = field.starts_with("age") || field.starts_with("chunk");
            match rows.get_mut(name) {
                None => {
                    rows.insert(name.to_string(), (order, value.to_string()));
                }
                Some((_, old)) => {
                    if let (Ok(a), Ok(b)) = (old.parse::<u64>(), value.parse::<u64>()) {
                        *old = if largest { a.max(b) } else { a + b }.to_string();
                    }
                }
            }
        }
    }
    // In the order the names first appeared (memcached's order, per slab class).
    let mut rows: Vec<(String, (usize, String))> = rows.into_iter().collect();
    rows.sort_by_key(|(_, (order, _))| *order);
    let mut out = String::new();
    for (name, (_, value)) in rows {
        out.push_str(&format!("STAT {name} {value}\r\n"));
    }
    out.push_str("END\r\n");
    out
}

pub fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Stats {
    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// `stats reset`: the counters back to zero, except the open connections (as memcached).
    pub fn reset(&self) {
        for c in [
            &self.total_connections,
            &self.rejected_connections,
            &self.cmd_get,
            &self.cmd_set,
            &self.cmd_touch,
            &self.cmd_flush,
            &self.get_hits,
            &self.get_misses,
            &self.get_failed_keys,
            &self.get_coalesced,
            &self.delete_cmds,
            &self.incr_cmds,
            &self.decr_cmds,
            &self.cas_cmds,
            &self.client_errors,
            &self.server_errors,
        ] {
            c.store(0, Ordering::Relaxed);
        }
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
