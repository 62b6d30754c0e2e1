//! The proxy's Prometheus metric families, and the per-listener / per-pool / per-server handles
//! cut from them once per loaded config (never per request).
//!
//! Labels are listener addresses, pool names, server names, command names, results and error
//! kinds: all bounded by the config. No key ever becomes a label.
//!
//! **Requests** (`kvrouter_requests_total{listener, protocol, command, result}`) are counted once
//! per request, when its reply is complete, through a handle resolved once per listener and
//! command: the request path indexes an array and bumps a counter. The `command` label is the
//! protocol's own command name:
//! - memcached: the 25 commands of `COMMANDS`, and `invalid` (did not parse). Every series
//!   exists from the start.
//! - Redis: the lower-case top-level names of the command table (subcommands fold into their
//!   container: `CLIENT SETNAME` counts as `client`), `other` (a command or subcommand not in
//!   the table) and `invalid` (not RESP). At most 242 names, but a series appears on its first
//!   request: 726 series per listener that stay at 0 would swamp the scrape.
//!
//! The `result` says whose fault a failure is (`Outcome`).

use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use std::sync::OnceLock;

use crate::backend::metrics::{ServerMetrics, ERROR_KINDS};
use crate::config::Protocol;
use crate::protocol::memcache::Command;
use crate::protocol::redis_commands::{self as rc, CommandInfo};

/// Every memcached command, in `Command` order; requests that fail to parse count as `invalid`.
pub const COMMANDS: [Command; 25] = [
    Command::Get,
    Command::Gets,
    Command::Gat,
    Command::Gats,
    Command::Set,
    Command::Add,
    Command::Replace,
    Command::Append,
    Command::Prepend,
    Command::Cas,
    Command::Incr,
    Command::Decr,
    Command::Touch,
    Command::Delete,
    Command::Version,
    Command::Verbosity,
    Command::Quit,
    Command::Stats,
    Command::FlushAll,
    Command::MetaGet,
    Command::MetaSet,
    Command::MetaDelete,
    Command::MetaArithmetic,
    Command::MetaNoop,
    Command::MetaDebug,
];
/// The `command` label index of a request that did not parse.
pub const INVALID: usize = COMMANDS.len();

/// The `command` label of memcached index `i` (`COMMANDS`, then `invalid`).
fn memcache_name(i: usize) -> &'static str {
    COMMANDS.get(i).map_or("invalid", |c| c.name())
}

/// The Redis `command` label index of a command the table knows: its row in the table, or its
/// container's row for a subcommand (`client|setname` counts as `client`).
pub fn redis_command_index(info: &'static CommandInfo) -> usize {
    let table = rc::COMMANDS.as_ptr_range();
    let at: *const CommandInfo = info;
    if table.contains(&at) {
        // A top-level row: no search on the request path.
        return (at as usize - table.start as usize) / std::mem::size_of::<CommandInfo>();
    }
    let container = info.name.split('|').next().unwrap_or(info.name);
    rc::lookup(container.as_bytes()).map_or_else(redis_other, redis_command_index)
}

/// The Redis `command` label index of a command (or subcommand) not in the table.
pub fn redis_other() -> usize {
    rc::COMMANDS.len()
}

/// The Redis `command` label index of a request that is not RESP.
pub fn redis_invalid() -> usize {
    rc::COMMANDS.len() + 1
}

/// The `command` label of Redis index `i` (the table's names, then `other`, `invalid`).
fn redis_name(i: usize) -> &'static str {
    match rc::COMMANDS.get(i) {
        Some(c) => c.name,
        None if i == redis_other() => "other",
        None => "invalid",
    }
}

/// The `command` labels of a protocol: how many, and the name of each index.
fn command_names(protocol: Protocol) -> (usize, fn(usize) -> &'static str) {
    match protocol {
        Protocol::Memcache => (INVALID + 1, memcache_name),
        Protocol::Redis => (redis_invalid() + 1, redis_name),
    }
}

/// The `protocol` label.
fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Memcache => "memcache",
        Protocol::Redis => "redis",
    }
}

/// The `result` label of `kvrouter_requests_total`: was the request answered, and if it failed,
/// whose fault was it?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered (a miss, NOT_STORED and NOT_FOUND are answers too; so is a Redis nil).
    Ok = 0,
    /// The server side failed: memcached `SERVER_ERROR`; on Redis, a backend kvrouter could not
    /// use (`-ERR backend ...`, no server available, no cluster node known) or a server that
    /// cannot serve right now (`-LOADING`, `-OOM`, `-READONLY`, `-CLUSTERDOWN` ...).
    Error = 1,
    /// The request was wrong: memcached `CLIENT_ERROR` or `ERROR`; on Redis every other error
    /// reply, kvrouter's own (unknown command, wrong arity, `-NOAUTH`, `-CROSSSLOT`, a refused
    /// command) and the server's (`-WRONGTYPE`, `-ERR syntax error`, `-NOSCRIPT` ...).
    ClientError = 2,
}
const OUTCOMES: [&str; 3] = ["ok", "error", "client_error"];

/// Redis error codes that report the server's state, not the request: redis-server's own
/// (`LOADING`, `BUSY` a script runs, `OOM`, `READONLY` a replica, `MASTERDOWN`, `MISCONF` a
/// failing save, `NOREPLICAS`) and cluster ones (`CLUSTERDOWN`, `TRYAGAIN` during resharding,
/// `MOVED`/`ASK` when kvrouter gave up following them).
const REDIS_SERVER_CODES: [&[u8]; 11] = [
    b"LOADING",
    b"BUSY",
    b"OOM",
    b"READONLY",
    b"MASTERDOWN",
    b"MISCONF",
    b"NOREPLICAS",
    b"CLUSTERDOWN",
    b"TRYAGAIN",
    b"MOVED",
    b"ASK",
];

/// The texts kvrouter starts its `-ERR` replies with when a backend failed it (timeout,
/// refused, closed, TKO, every server ejected), as opposed to rejecting the request.
const REDIS_BACKEND_FAILURES: [&[u8]; 3] = [b"backend ", b"kvrouter ", b"no server available"];

impl Outcome {
    /// Classify a memcached reply by its first line.
    pub fn of_reply(reply: &[u8]) -> Outcome {
        if reply.starts_with(b"SERVER_ERROR") {
            Outcome::Error
        } else if reply.starts_with(b"CLIENT_ERROR") || reply.starts_with(b"ERROR") {
            Outcome::ClientError
        } else {
            Outcome::Ok
        }
    }

    /// Classify a Redis reply by its first bytes: only error replies (`-`) are looked into, and
    /// only their code and the start of the text.
    pub fn of_redis_reply(reply: &[u8]) -> Outcome {
        let Some(text) = reply.strip_prefix(b"-") else {
            return Outcome::Ok;
        };
        let end = text
            .iter()
            .position(|&b| b == b' ' || b == b'\r')
            .unwrap_or(text.len());
        let (code, rest) = (&text[..end], text.get(end + 1..).unwrap_or_default());
        let server_side = if code == b"ERR" {
            REDIS_BACKEND_FAILURES.iter().any(|p| rest.starts_with(p))
        } else {
            REDIS_SERVER_CODES.contains(&code)
        };
        if server_side {
            Outcome::Error
        } else {
            Outcome::ClientError
        }
    }
}

/// The `reason` label of `kvrouter_clients_dropped_total`, indexed by the `CLOSE_*` constants.
const CLOSE_REASONS: [&str; 3] = ["output_limit", "request_timeout", "idle_timeout"];
pub const CLOSE_OUTPUT: usize = 0;
pub const CLOSE_REQUEST_TIMEOUT: usize = 1;
pub const CLOSE_IDLE: usize = 2;

/// Seconds; from 50 us (loopback) to 2.5 s (a slow or timing-out server).
const LATENCY_BUCKETS: [f64; 15] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5,
];

/// What this binary is, as `kvrouter_build_info` labels and `--version` show it: the crate
/// version, the git commit when the build set `KVROUTER_GIT_COMMIT` (e.g.
/// `KVROUTER_GIT_COMMIT=$(git rev-parse --short HEAD) cargo build`; else `unknown`), and the
/// profile.
pub fn build_labels() -> [(&'static str, &'static str); 3] {
    [
        ("version", env!("CARGO_PKG_VERSION")),
        (
            "commit",
            option_env!("KVROUTER_GIT_COMMIT").unwrap_or("unknown"),
        ),
        (
            "profile",
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        ),
    ]
}

/// `kvrouter_build_info{version,commit,profile} 1`: which build a fleet runs.
fn build_info() -> IntGaugeVec {
    let labels = build_labels();
    let names: Vec<&str> = labels.iter().map(|(k, _)| *k).collect();
    let g = gauge(
        "kvrouter_build_info",
        "Always 1; the labels say which build runs: version, commit, profile.",
        &names,
    );
    let values: Vec<&str> = labels.iter().map(|(_, v)| *v).collect();
    g.with_label_values(&values).set(1);
    g
}

/// Every metric family the proxy exports (besides the process collector).
#[derive(Clone)]
pub struct Families {
    client_connections: IntGaugeVec,
    client_connections_total: IntCounterVec,
    auth_failures: IntCounterVec,
    clients_dropped: IntCounterVec,
    requests: IntCounterVec,
    get_keys: IntCounterVec,
    server_requests: IntCounterVec,
    server_errors: IntCounterVec,
    server_ejections: IntCounterVec,
    server_latency: HistogramVec,
    server_inflight: IntGaugeVec,
    server_up: IntGaugeVec,
    server_state: IntGaugeVec,
    pool_get_failed_keys: IntCounterVec,
    route_failovers: IntCounterVec,
    route_gutter: IntCounterVec,
    reloads: IntCounterVec,
    hot_keys: IntGaugeVec,
    hot_transitions: IntCounterVec,
    local_cache: IntCounterVec,
    local_cache_entries: IntGaugeVec,
    split: IntCounterVec,
    hot_coalesced: IntCounterVec,
    pub generation: IntGauge,
    pub last_reload_success: Gauge,
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

/// The states of `kvrouter_server_state` (and of `/pools`' `health`).
pub const SERVER_STATES: [&str; 4] = ["up", "soft_tko", "hard_tko", "ejected"];

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

impl Families {
    /// Create the families and register them (an unregistered set is fine for tests).
    pub fn new(registry: Option<&Registry>) -> Families {
        let f = Families {
            client_connections: gauge(
                "kvrouter_client_connections",
                "Open client connections, per listener.",
                &["listener"],
            ),
            client_connections_total: counter(
                "kvrouter_client_connections_total",
                "Client connections accepted, per listener.",
                &["listener"],
            ),
            auth_failures: counter(
                "kvrouter_auth_failures_total",
                "Failed client authentications (AUTH/HELLO with a wrong password or user), per listener.",
                &["listener"],
            ),
            clients_dropped: counter(
                "kvrouter_clients_dropped_total",
                "Client connections kvrouter closed, by reason: output_limit (max_client_output), request_timeout (client_request_timeout), idle_timeout (client_idle_timeout).",
                &["listener", "reason"],
            ),
            requests: counter(
                "kvrouter_requests_total",
                "Client requests by listener, protocol, command (the protocol's command name; invalid: did not parse; Redis: other = not in the command table) and result (ok, error = the server side failed, client_error = a bad request).",
                &["listener", "protocol", "command", "result"],
            ),
            get_keys: counter(
                "kvrouter_get_keys_total",
                "Keys asked for by retrievals (get/gets/gat/gats), by result: hit, miss, failed (server failed in a multi-get: answered as a miss).",
                &["listener", "result"],
            ),
            server_requests: counter(
                "kvrouter_server_requests_total",
                "Requests queued to a backend server.",
                &["pool", "server"],
            ),
            server_errors: counter(
                "kvrouter_server_errors_total",
                "Backend requests that got no reply, by kind: timeout, connect (refused or unreachable), closed (connection broke), protocol (bad reply).",
                &["pool", "server", "kind"],
            ),
            server_ejections: counter(
                "kvrouter_server_ejections_total",
                "Times a server was ejected from its pool's ring (auto_eject_hosts).",
                &["pool", "server"],
            ),
            server_latency: HistogramVec::new(
                HistogramOpts::new(
                    "kvrouter_server_latency_seconds",
                    "Backend latency: from queueing a request on a backend connection to its reply.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["pool", "server"],
            )
            .expect("valid metric"),
            server_inflight: gauge(
                "kvrouter_server_inflight_requests",
                "Requests queued or sent to a server and not answered yet.",
                &["pool", "server"],
            ),
            server_up: gauge(
                "kvrouter_server_up",
                "1 when the server (or replica) is in service, 0 while it is marked down (TKO) or ejected.",
                &["pool", "server"],
            ),
            server_state: gauge(
                "kvrouter_server_state",
                "1 for the state the server (or replica) is in: up, soft_tko (marked down after consecutive timeouts), hard_tko (refused a connection), ejected (auto_eject_hosts); 0 for the others.",
                &["pool", "server", "state"],
            ),
            route_failovers: counter(
                "kvrouter_route_failovers_total",
                "Requests a failover route sent on to its next child, per listener.",
                &["listener"],
            ),
            route_gutter: counter(
                "kvrouter_route_gutter_requests_total",
                "Requests a failover route sent to a gutter pool, per listener and gutter pool.",
                &["listener", "pool"],
            ),
            pool_get_failed_keys: counter(
                "kvrouter_pool_get_failed_keys_total",
                "Keys of multi-server gets answered as misses because their server failed.",
                &["pool"],
            ),
            reloads: counter(
                "kvrouter_config_reloads_total",
                "Config reloads (SIGHUP or file change), by result: ok, failed.",
                &["result"],
            ),
            hot_keys: gauge(
                "kvrouter_hot_keys",
                "Keys hot now, per listener with hot_keys.",
                &["listener"],
            ),
            hot_transitions: counter(
                "kvrouter_hot_key_transitions_total",
                "Keys that turned hot (to=hot) or cold again (to=cold), per listener.",
                &["listener", "to"],
            ),
            local_cache: counter(
                "kvrouter_hot_key_local_cache_total",
                "Local cache lookups of hot keys by result: hit (answered by the proxy), miss (read from the backend).",
                &["listener", "result"],
            ),
            local_cache_entries: gauge(
                "kvrouter_hot_key_local_cache_entries",
                "Entries in the local cache of hot keys (fresh or expired, not yet evicted).",
                &["listener"],
            ),
            split: counter(
                "kvrouter_hot_key_split_total",
                "Split copies of hot keys, by op: copy_hit (a read answered by a copy), copy_miss (the copy missed, the original was read), fill (a copy written from the original), delete (a copy deleted for a write).",
                &["listener", "op"],
            ),
            hot_coalesced: counter(
                "kvrouter_hot_key_coalesced_total",
                "Reads of hot keys that shared another read's backend request.",
                &["listener"],
            ),
            generation: IntGauge::new(
                "kvrouter_config_generation",
                "The generation of the active config: 1 at start, +1 per successful reload.",
            )
            .expect("valid metric"),
            last_reload_success: Gauge::new(
                "kvrouter_config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful config load (start or reload).",
            )
            .expect("valid metric"),
        };
        // Both results exist from the start, so rate() and increase() see the first failure.
        f.reloads.with_label_values(&["ok"]);
        f.reloads.with_label_values(&["failed"]);
        if let Some(r) = registry {
            let cs: Vec<Box<dyn prometheus::core::Collector>> = vec![
                Box::new(f.client_connections.clone()),
                Box::new(f.client_connections_total.clone()),
                Box::new(f.auth_failures.clone()),
                Box::new(f.clients_dropped.clone()),
                Box::new(f.requests.clone()),
                Box::new(f.get_keys.clone()),
                Box::new(f.server_requests.clone()),
                Box::new(f.server_errors.clone()),
                Box::new(f.server_ejections.clone()),
                Box::new(f.server_latency.clone()),
                Box::new(f.server_inflight.clone()),
                Box::new(f.server_up.clone()),
                Box::new(f.server_state.clone()),
                Box::new(f.pool_get_failed_keys.clone()),
                Box::new(f.route_failovers.clone()),
                Box::new(f.route_gutter.clone()),
                Box::new(f.reloads.clone()),
                Box::new(f.hot_keys.clone()),
                Box::new(f.hot_transitions.clone()),
                Box::new(f.local_cache.clone()),
                Box::new(f.local_cache_entries.clone()),
                Box::new(f.split.clone()),
                Box::new(f.hot_coalesced.clone()),
                Box::new(f.generation.clone()),
                Box::new(f.last_reload_success.clone()),
            ];
            for c in cs {
                r.register(c).expect("metric registered once");
            }
            r.register(Box::new(build_info()))
                .expect("metric registered once");
        }
        f
    }

    pub fn reload(&self, ok: bool) -> IntCounter {
        self.reloads
            .with_label_values(&[if ok { "ok" } else { "failed" }])
    }

    /// A listener's handles. Its memcached request series exist from here on; its Redis ones
    /// appear on their first request.
    pub fn listener(&self, listener: &str, protocol: Protocol) -> ListenerMetrics {
        // A listener whose address moved to the other protocol leaves no series behind.
        let other = match protocol {
            Protocol::Memcache => Protocol::Redis,
            Protocol::Redis => Protocol::Memcache,
        };
        self.remove_requests(listener, other);
        let (n, name) = command_names(protocol);
        let requests = Requests {
            family: self.requests.clone(),
            listener: listener.to_string(),
            protocol: protocol_name(protocol),
            name,
            rows: (0..n).map(|_| OnceLock::new()).collect(),
        };
        if protocol == Protocol::Memcache {
            (0..n).for_each(|i| {
                requests.row(i);
            });
        }
        let keys = |r: &str| self.get_keys.with_label_values(&[listener, r]);
        ListenerMetrics {
            clients: self.client_connections.with_label_values(&[listener]),
            clients_total: self.client_connections_total.with_label_values(&[listener]),
            auth_failures: self.auth_failures.with_label_values(&[listener]),
            closed: CLOSE_REASONS.map(|r| self.clients_dropped.with_label_values(&[listener, r])),
            requests,
            hits: keys("hit"),
            misses: keys("miss"),
            failed: keys("failed"),
        }
    }

    pub fn remove_listener(&self, listener: &str) {
        let _ = self.client_connections.remove_label_values(&[listener]);
        let _ = self
            .client_connections_total
            .remove_label_values(&[listener]);
        let _ = self.auth_failures.remove_label_values(&[listener]);
        self.remove_requests(listener, Protocol::Memcache);
        self.remove_requests(listener, Protocol::Redis);
        for r in CLOSE_REASONS {
            let _ = self.clients_dropped.remove_label_values(&[listener, r]);
        }
        for r in ["hit", "miss", "failed"] {
            let _ = self.get_keys.remove_label_values(&[listener, r]);
        }
        self.remove_hot(listener);
    }

    fn remove_requests(&self, listener: &str, protocol: Protocol) {
        let (n, name) = command_names(protocol);
        let p = protocol_name(protocol);
        for i in 0..n {
            for r in OUTCOMES {
                let _ = self
                    .requests
                    .remove_label_values(&[listener, p, name(i), r]);
            }
        }
    }

    /// A listener's hot-key handles (listeners with `hot_keys`; `cache`/`split`: the series
    /// that apply).
    pub fn hot(&self, listener: &str, cache: bool, split: bool) -> HotMetrics {
        let l = listener;
        HotMetrics {
            hot_keys: self.hot_keys.with_label_values(&[l]),
            turned_hot: self.hot_transitions.with_label_values(&[l, "hot"]),
            turned_cold: self.hot_transitions.with_label_values(&[l, "cold"]),
            cache: cache.then(|| {
                [
                    self.local_cache.with_label_values(&[l, "hit"]),
                    self.local_cache.with_label_values(&[l, "miss"]),
                ]
            }),
            cache_entries: cache.then(|| self.local_cache_entries.with_label_values(&[l])),
            split: split.then(|| SPLIT_OPS.map(|op| self.split.with_label_values(&[l, op]))),
            coalesced: self.hot_coalesced.with_label_values(&[l]),
        }
    }

    pub fn remove_hot(&self, listener: &str) {
        let l = listener;
        let _ = self.hot_keys.remove_label_values(&[l]);
        for to in ["hot", "cold"] {
            let _ = self.hot_transitions.remove_label_values(&[l, to]);
        }
        for r in ["hit", "miss"] {
            let _ = self.local_cache.remove_label_values(&[l, r]);
        }
        let _ = self.local_cache_entries.remove_label_values(&[l]);
        for op in SPLIT_OPS {
            let _ = self.split.remove_label_values(&[l, op]);
        }
        let _ = self.hot_coalesced.remove_label_values(&[l]);
    }

    pub fn server(&self, pool: &str, server: &str) -> ServerMetrics {
        let l = [pool, server];
        let e = |kind: &str| self.server_errors.with_label_values(&[pool, server, kind]);
        ServerMetrics {
            requests: self.server_requests.with_label_values(&l),
            errors: ERROR_KINDS.map(e),
            ejections: self.server_ejections.with_label_values(&l),
            latency: self.server_latency.with_label_values(&l),
            inflight: self.server_inflight.with_label_values(&l),
        }
    }

    /// The health gauge of a server (set when metrics are scraped).
    pub fn server_up(&self, pool: &str, server: &str) -> IntGauge {
        self.server_up.with_label_values(&[pool, server])
    }

    /// Set a server's `kvrouter_server_state`: 1 for `state`, 0 for the other `SERVER_STATES`.
    pub fn set_server_state(&self, pool: &str, server: &str, state: &str) {
        for s in SERVER_STATES {
            self.server_state
                .with_label_values(&[pool, server, s])
                .set(i64::from(s == state));
        }
    }

    pub fn remove_server(&self, pool: &str, server: &str) {
        let l = [pool, server];
        let _ = self.server_requests.remove_label_values(&l);
        for kind in ERROR_KINDS {
            let _ = self
                .server_errors
                .remove_label_values(&[pool, server, kind]);
        }
        let _ = self.server_ejections.remove_label_values(&l);
        let _ = self.server_latency.remove_label_values(&l);
        let _ = self.server_inflight.remove_label_values(&l);
        let _ = self.server_up.remove_label_values(&l);
        for s in SERVER_STATES {
            let _ = self.server_state.remove_label_values(&[pool, server, s]);
        }
    }

    /// A listener's route handles: failovers, and gutter use per gutter pool.
    pub fn route(&self, listener: &str) -> RouteMetrics {
        RouteMetrics {
            listener: listener.to_string(),
            failovers: self.route_failovers.with_label_values(&[listener]),
            gutter: self.route_gutter.clone(),
        }
    }

    pub fn pool(&self, pool: &str) -> PoolMetrics {
        PoolMetrics {
            get_failed_keys: self.pool_get_failed_keys.with_label_values(&[pool]),
        }
    }

    pub fn remove_pool(&self, pool: &str) {
        let _ = self.pool_get_failed_keys.remove_label_values(&[pool]);
    }
}

/// One listener's handles.
#[derive(Clone, Debug)]
pub struct ListenerMetrics {
    pub clients: IntGauge,
    pub clients_total: IntCounter,
    pub auth_failures: IntCounter,
    /// `kvrouter_clients_dropped_total`, by `CLOSE_*` index.
    pub closed: [IntCounter; 3],
    requests: Requests,
    pub hits: IntCounter,
    pub misses: IntCounter,
    pub failed: IntCounter,
}

impl ListenerMetrics {
    /// Count one request of command index `cmd` with its outcome. memcached: a `COMMANDS`
    /// index, or `INVALID`; Redis: `redis_command_index`, `redis_other()` or `redis_invalid()`.
    #[inline]
    pub fn request(&self, cmd: usize, outcome: Outcome) {
        self.requests.row(cmd)[outcome as usize].inc();
    }
}

/// One listener's `kvrouter_requests_total` handles: `rows[command index][Outcome]`, each row
/// resolved at most once (memcached: when the listener is built; Redis: on its first use).
#[derive(Clone, Debug)]
struct Requests {
    family: IntCounterVec,
    listener: String,
    protocol: &'static str,
    name: fn(usize) -> &'static str,
    rows: Box<[OnceLock<[IntCounter; 3]>]>,
}

impl Requests {
    #[inline]
    fn row(&self, cmd: usize) -> &[IntCounter; 3] {
        self.rows[cmd].get_or_init(|| {
            let labels = |r| [self.listener.as_str(), self.protocol, (self.name)(cmd), r];
            OUTCOMES.map(|r| self.family.with_label_values(&labels(r)))
        })
    }
}

/// The index of a command in `COMMANDS`.
#[inline]
pub fn command_index(c: Command) -> usize {
    c as usize
}

/// One listener's route handles (looked up when its route tree is built, not per request).
#[derive(Clone, Debug)]
pub struct RouteMetrics {
    listener: String,
    pub failovers: IntCounter,
    gutter: IntCounterVec,
}

impl RouteMetrics {
    /// The counter of requests sent to gutter `pool` (resolved once per gutter node).
    pub fn gutter(&self, pool: &str) -> IntCounter {
        self.gutter.with_label_values(&[&self.listener, pool])
    }

    /// Handles registered nowhere (tests).
    pub fn unregistered() -> RouteMetrics {
        RouteMetrics {
            listener: String::new(),
            failovers: IntCounter::new("unregistered", "unregistered").expect("valid name"),
            gutter: counter("unregistered", "unregistered", &["listener", "pool"]),
        }
    }
}

/// The `op` label of `kvrouter_hot_key_split_total`.
pub const SPLIT_OPS: [&str; 4] = ["copy_hit", "copy_miss", "fill", "delete"];

/// One listener's hot-key handles, brought up to date from the `HotKeys` counters when
/// `/metrics` is scraped (the request path only touches the atomics of `HotKeys`).
#[derive(Clone, Debug)]
pub struct HotMetrics {
    pub hot_keys: IntGauge,
    pub turned_hot: IntCounter,
    pub turned_cold: IntCounter,
    /// hit, miss.
    pub cache: Option<[IntCounter; 2]>,
    pub cache_entries: Option<IntGauge>,
    /// In `SPLIT_OPS` order.
    pub split: Option<[IntCounter; 4]>,
    pub coalesced: IntCounter,
}

/// One pool's handles.
#[derive(Clone, Debug)]
pub struct PoolMetrics {
    pub get_failed_keys: IntCounter,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_indexes_match_the_label_table() {
        for (i, c) in COMMANDS.iter().enumerate() {
            assert_eq!(command_index(*c), i, "{}", c.name());
        }
    }

    #[test]
    fn redis_command_indexes_fold_subcommands() {
        for (i, c) in rc::COMMANDS.iter().enumerate() {
            assert_eq!(redis_command_index(c), i, "{}", c.name);
            assert_eq!(redis_name(i), c.name);
            for sub in c.subcommands {
                assert_eq!(redis_command_index(sub), i, "{}", sub.name);
            }
        }
        assert_eq!(redis_name(redis_other()), "other");
        assert_eq!(redis_name(redis_invalid()), "invalid");
        let get = rc::lookup(b"GET").unwrap();
        assert_eq!(redis_name(redis_command_index(get)), "get");
        // Lower-case names, no `|`: the label set is the table's top-level names.
        for i in 0..=redis_invalid() {
            let n = redis_name(i);
            assert!(!n.contains('|') && n == n.to_lowercase(), "{n}");
        }
    }

    #[test]
    fn outcome_of_redis_reply() {
        let o = |r: &[u8]| Outcome::of_redis_reply(r);
        assert_eq!(o(b"+OK\r\n"), Outcome::Ok);
        assert_eq!(o(b"$-1\r\n"), Outcome::Ok);
        assert_eq!(o(b"*1\r\n-ERR inside an array\r\n"), Outcome::Ok);
        assert_eq!(o(b""), Outcome::Ok);
        // kvrouter's backend failures.
        let timeout = b"-ERR backend 127.0.0.1:6379 timed out after 200ms\r\n";
        assert_eq!(o(timeout), Outcome::Error);
        assert_eq!(o(b"-ERR no server available in pool p\r\n"), Outcome::Error);
        assert_eq!(o(b"-ERR kvrouter routing task failed\r\n"), Outcome::Error);
        // The server's own state.
        assert_eq!(o(b"-LOADING Redis is loading\r\n"), Outcome::Error);
        assert_eq!(o(b"-OOM command not allowed\r\n"), Outcome::Error);
        assert_eq!(o(b"-CLUSTERDOWN The cluster is down\r\n"), Outcome::Error);
        assert_eq!(o(b"-MOVED 3999 127.0.0.1:6381\r\n"), Outcome::Error);
        // Bad requests, kvrouter's or the server's verdict.
        for e in [
            &b"-ERR unknown command 'x', with args beginning with: \r\n"[..],
            b"-ERR wrong number of arguments for 'get' command\r\n",
            b"-NOAUTH Authentication required.\r\n",
            b"-CROSSSLOT Keys in request don't hash to the same server\r\n",
            b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            b"-ERR syntax error\r\n",
            b"-BUSYKEY Target key name already exists.\r\n",
            b"-ERR\r\n",
            b"-\r\n",
        ] {
            assert_eq!(o(e), Outcome::ClientError, "{}", String::from_utf8_lossy(e));
        }
    }

    #[test]
    fn redis_series_appear_on_first_use_and_go_with_the_listener() {
        let f = Families::new(None);
        let m = f.listener("l", Protocol::Redis);
        let series = |f: &Families| -> usize {
            use prometheus::core::Collector;
            f.requests
                .collect()
                .iter()
                .map(|m| m.get_metric().len())
                .sum()
        };
        let get = redis_command_index(rc::lookup(b"get").unwrap());
        assert_eq!(series(&f), 0);
        m.request(get, Outcome::Ok);
        m.request(get, Outcome::Ok);
        m.request(redis_other(), Outcome::ClientError);
        let c = |cmd, r| f.requests.with_label_values(&["l", "redis", cmd, r]).get();
        assert_eq!(c("get", "ok"), 2);
        assert_eq!(c("other", "client_error"), 1);
        assert_eq!(series(&f), 2 * OUTCOMES.len());
        f.remove_listener("l");
        assert_eq!(series(&f), 0);
        // memcached series exist from the start; a listener that turns Redis drops them.
        let _m = f.listener("l", Protocol::Memcache);
        assert_eq!(series(&f), (INVALID + 1) * OUTCOMES.len());
        let _r = f.listener("l", Protocol::Redis);
        assert_eq!(series(&f), 0);
    }

    #[test]
    fn outcome_of_reply() {
        assert_eq!(Outcome::of_reply(b"STORED\r\n"), Outcome::Ok);
        assert_eq!(Outcome::of_reply(b"END\r\n"), Outcome::Ok);
        assert_eq!(Outcome::of_reply(b"SERVER_ERROR x\r\n"), Outcome::Error);
        assert_eq!(
            Outcome::of_reply(b"CLIENT_ERROR x\r\n"),
            Outcome::ClientError
        );
        assert_eq!(Outcome::of_reply(b"ERROR\r\n"), Outcome::ClientError);
    }
}
