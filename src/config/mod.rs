//! Configuration: plain data loaded from YAML, never sockets or tasks.
//!
//! Two formats are accepted and normalised into one `Config`: twemproxy's `nutcracker.yml`, read
//! as-is (each pool becomes a pool plus a listener routing to it), and kvrouter's own format with
//! top-level `pools:` and `listeners:`. Every error carries `file:line:col`, cross-field ones too.
//!
//! Layout: `yaml` (serde-saphyr glue, spans), `syntax` (addresses, server strings, durations,
//! names), `twemproxy` and `native` (one per format), `route` (the route grammar). Values keep
//! their `Spanned` location until validation is done, then become the plain types below.

pub mod convert;
mod export;
pub mod files;
mod native;
mod route;
mod syntax;
#[cfg(test)]
mod tests;
mod twemproxy;
pub mod watch;
mod yaml;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::routing::{DistributionKind, HashKind};

use yaml::{problem, OrderedMap, Problem, Res};

/// `item_size_max` when not configured: memcached's default 1 MiB item limit.
pub const DEFAULT_ITEM_SIZE_MAX: usize = 1024 * 1024;

/// Redis commands refused unless a pool lists them in `allow_commands`: FLUSHALL, FLUSHDB and
/// KEYS act on every server of the pool at once (wiping them, or walking every key while
/// blocking each server); MIGRATE makes a server connect to a host the client names. The
/// server's command policy (`protocol::redis_commands::OPT_IN`) says why for each.
pub const GATED_COMMANDS: &[&str] = &["flushall", "flushdb", "keys", "migrate"];

/// Where a config value came from (1-based line and column).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub col: usize,
}

/// A refused config: `FILE:LINE:COL: reason`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub location: Location,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Line 0: the file as a whole (it cannot be read): no position to give.
        if self.location.line == 0 {
            return write!(f, "{}: {}", self.file.display(), self.reason);
        }
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.location.line,
            self.location.col,
            self.reason
        )
    }
}

impl std::error::Error for ConfigError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Memcache,
    Redis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Twemproxy,
    Native,
}

/// A listen address: TCP (`host:port`, hostnames resolved at load time) or a unix socket path
/// with an optional permission mode (twemproxy's `/path/sock 0666`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix { path: PathBuf, mode: Option<u32> },
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix { path, .. } => write!(f, "{}", path.display()),
        }
    }
}

/// One backend server: twemproxy's `host:port:weight [name]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Host as written (IP or hostname); resolved when connecting.
    pub host: String,
    pub port: u16,
    pub weight: u32,
    /// The optional configured name.
    pub name: Option<String>,
    pub location: Location,
}

impl ServerConfig {
    /// The name twemproxy uses for placement: the configured name, else `host:port`, else just
    /// `host` when the port is 11211 (libmemcached compatibility).
    /// An unnamed unix-socket server (`/path:weight`) is named `/path:` as twemproxy does.
    pub fn placement_name(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None if self.is_unix() => format!("{}:", self.host),
            None if self.port == 11211 => self.host.clone(),
            None => format!("{}:{}", self.host, self.port),
        }
    }

    /// `host:port`, for connecting and for messages (the path for a unix-socket server).
    pub fn address(&self) -> String {
        if self.is_unix() {
            return self.host.clone();
        }
        format!("{}:{}", self.host, self.port)
    }

    /// A unix-socket server (`/path/to/sock:weight`): `host` is the path, `port` is 0.
    pub fn is_unix(&self) -> bool {
        self.host.starts_with('/')
    }
}

/// TLS settings, from files. On a listener: `cert` and `key` are required, and `ca` makes
/// clients present a certificate signed by it. On a pool (to backends): `ca` verifies the
/// servers (else the system has no roots here: `ca` is required), `cert`+`key` are a client
/// certificate, `server_name` the name checked in the servers' certificates (default: the
/// host of each server). Relative paths are relative to the config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub server_name: Option<String>,
    pub location: Location,
    /// Where `cert`, `key` and `ca` are written (the `tls` key's location when absent), for
    /// errors about the files they name.
    pub cert_at: Location,
    pub key_at: Location,
    pub ca_at: Location,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub protocol: Protocol,
    pub hash: HashKind,
    /// Two bytes, e.g. `{}`.
    pub hash_tag: Option<[u8; 2]>,
    pub distribution: DistributionKind,
    /// Per-try timeout; None waits forever (twemproxy's default).
    pub timeout: Option<Duration>,
    pub servers: Vec<ServerConfig>,
    /// Backend connections per server per worker thread (twemproxy `server_connections`, native
    /// `connections`; default 1).
    pub connections: usize,
    pub auto_eject_hosts: bool,
    /// Mark failing servers down (TKO) without changing the ring: native pools unless they ask
    /// for twemproxy's `auto_eject_hosts`. twemproxy-format pools never do.
    pub tko: bool,
    /// Consecutive failures before a server is ejected / marked down (twemproxy default 2).
    pub failure_limit: u32,
    /// How long an ejected server stays out before it is retried (twemproxy default 30 s).
    pub retry_timeout: Duration,
    pub preconnect: bool,
    /// Largest value accepted from clients (default 1 MiB).
    pub item_size_max: usize,
    pub tcpkeepalive: bool,
    pub redis_auth: Option<String>,
    pub redis_db: u32,
    /// TLS to the backends.
    pub tls: Option<TlsConfig>,
    /// Redis commands enabled with `allow_commands` (lowercase; a subset of `GATED_COMMANDS`).
    pub allow_commands: Vec<String>,
    /// `scripts` (redis pools, default true): false refuses EVAL*, FCALL*, SCRIPT and FUNCTION,
    /// since a script can run commands the proxy would refuse.
    pub scripts: bool,
    /// A Redis Cluster pool (`cluster:`): its servers are discovered, `servers` is empty.
    pub cluster: Option<ClusterConfig>,
    /// `replicas` (redis pools, native format): per server, in `servers` order, the replicas
    /// its reads fail over to (empty: no replicas anywhere). Replicas have weight 1, no name.
    pub replicas: Vec<Vec<ServerConfig>>,
    pub location: Location,
}

/// `cluster: { seeds: [...], read_from: ... }` of a Redis pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `host:port` of nodes asked for the topology (any node of the cluster will do).
    pub seeds: Vec<String>,
    pub read_from: ReadFrom,
}

/// Where read-only commands of a cluster pool go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReadFrom {
    /// The slot's primary (default).
    #[default]
    Primary,
    /// A replica of the slot (READONLY connections), the primary when no replica answers.
    PreferReplica,
    /// A replica of the slot only.
    Replica,
}

/// A route tree (the route grammar: README "Route trees", `route.rs`), as written in the config.
#[derive(Clone, Debug, PartialEq)]
pub enum Route {
    /// `POOL` or `{ pool: POOL }`.
    Pool { name: String, location: Location },
    /// `{ failover: [route, ...] }` or the long form with `children`, `limit`, `on`, `writes`.
    Failover {
        children: Vec<Route>,
        /// Most children tried (the first included); None = all of them.
        limit: Option<usize>,
        on: FailoverOn,
        /// Sets fail over too (default true); false makes a failed set fail.
        writes: bool,
        location: Location,
    },
    /// `{ gutter: POOL, max_ttl: DURATION }`: only as a failover child.
    Gutter {
        pool: String,
        max_ttl: std::time::Duration,
        location: Location,
    },
    /// `{ prefix: { "PREFIX": route, ..., default: route } }`: longest prefix wins.
    Prefix {
        prefixes: Vec<(String, Route)>,
        default: Option<Box<Route>>,
        location: Location,
    },
    /// `{ operation: { get, set, delete, default } }`.
    Operation {
        get: Option<Box<Route>>,
        set: Option<Box<Route>>,
        delete: Option<Box<Route>>,
        default: Option<Box<Route>>,
        location: Location,
    },
    /// `{ all_sync: [route, ...], reply: first | all_ok }`.
    AllSync {
        children: Vec<Route>,
        reply: AllSyncReply,
        location: Location,
    },
    /// `{ shadow: { route, shadow, fraction } }`: the shadow's replies are dropped.
    Shadow {
        route: Box<Route>,
        shadow: Box<Route>,
        fraction: f64,
        location: Location,
    },
    /// `{ warm_up: { cold, warm, exptime } }`: a miss on cold reads warm and fills cold.
    WarmUp {
        cold: Box<Route>,
        warm: Box<Route>,
        exptime: std::time::Duration,
        location: Location,
    },
}

impl Route {
    /// The handle's name as written in the config.
    pub fn handle(&self) -> &'static str {
        match self {
            Route::Pool { .. } => "pool",
            Route::Failover { .. } => "failover",
            Route::Gutter { .. } => "gutter",
            Route::Prefix { .. } => "prefix",
            Route::Operation { .. } => "operation",
            Route::AllSync { .. } => "all_sync",
            Route::Shadow { .. } => "shadow",
            Route::WarmUp { .. } => "warm_up",
        }
    }

    pub fn location(&self) -> Location {
        match self {
            Route::Pool { location, .. }
            | Route::Failover { location, .. }
            | Route::Gutter { location, .. }
            | Route::Prefix { location, .. }
            | Route::Operation { location, .. }
            | Route::AllSync { location, .. }
            | Route::Shadow { location, .. }
            | Route::WarmUp { location, .. } => *location,
        }
    }

    /// The routes directly below this one, in config order: the one traversal every walk over
    /// a route (its pools, checks, export) shares.
    pub fn children(&self) -> Vec<&Route> {
        match self {
            Route::Pool { .. } | Route::Gutter { .. } => Vec::new(),
            Route::Failover { children, .. } | Route::AllSync { children, .. } => {
                children.iter().collect()
            }
            Route::Prefix {
                prefixes, default, ..
            } => prefixes
                .iter()
                .map(|(_, c)| c)
                .chain(default.as_deref())
                .collect(),
            Route::Operation {
                get,
                set,
                delete,
                default,
                ..
            } => [get, set, delete, default]
                .into_iter()
                .filter_map(|c| c.as_deref())
                .collect(),
            Route::Shadow { route, shadow, .. } => vec![route, shadow],
            Route::WarmUp { cold, warm, .. } => vec![cold, warm],
        }
    }

    /// The pool this route node itself sends to (`pool` and `gutter`; None for the others).
    pub fn own_pool(&self) -> Option<&str> {
        match self {
            Route::Pool { name, .. } => Some(name),
            Route::Gutter { pool, .. } => Some(pool),
            _ => None,
        }
    }

    /// This route and every route below it, depth first, in config order.
    pub fn walk(&self) -> Vec<&Route> {
        let mut out = vec![self];
        let mut i = 0;
        while i < out.len() {
            let r = out[i];
            let at = i + 1;
            for (n, c) in r.children().into_iter().enumerate() {
                out.insert(at + n, c);
            }
            i += 1;
        }
        out
    }

    /// The pool a healthy `get` of `key` reaches: the first child of a failover, the matching
    /// prefix, the get branch of an operation route, the first of all_sync, the main route of a
    /// shadow, the cold route of a warm_up.
    pub fn get_pool(&self, key: &[u8]) -> Option<&str> {
        match self {
            Route::Pool { name, .. } => Some(name),
            Route::Gutter { pool, .. } => Some(pool),
            Route::Failover { children, .. } | Route::AllSync { children, .. } => {
                children.first()?.get_pool(key)
            }
            Route::Prefix {
                prefixes, default, ..
            } => {
                let best = prefixes
                    .iter()
                    .filter(|(p, _)| key.starts_with(p.as_bytes()))
                    .max_by_key(|(p, _)| p.len())
                    .map(|(_, r)| r);
                best.or(default.as_deref())?.get_pool(key)
            }
            Route::Operation { get, default, .. } => {
                get.as_deref().or(default.as_deref())?.get_pool(key)
            }
            Route::Shadow { route, .. } => route.get_pool(key),
            Route::WarmUp { cold, .. } => cold.get_pool(key),
        }
    }

    /// Every pool this route can send to, each once, in first-seen order.
    pub fn pools(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for name in self.walk().into_iter().filter_map(Route::own_pool) {
            if !out.contains(&name) {
                out.push(name);
            }
        }
        out
    }
}

/// Which failures make a failover route try its next child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailoverOn {
    pub timeout: bool,
    pub refused: bool,
    pub tko: bool,
    pub server_error: bool,
}

impl Default for FailoverOn {
    fn default() -> Self {
        FailoverOn {
            timeout: true,
            refused: true,
            tko: true,
            server_error: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllSyncReply {
    /// The first child's reply.
    First,
    /// The first child's reply when every child succeeded, else the first failure.
    AllOk,
}

/// Default `max_ttl` of a gutter route (mcrouter's FailoverWithExptime uses 10 s too).
pub const DEFAULT_GUTTER_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// Default `max_client_output` (redis's hard output limit for subscribers).
pub const DEFAULT_MAX_CLIENT_OUTPUT: usize = 32 << 20;
/// Default `client_request_timeout`.
pub const DEFAULT_CLIENT_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq)]
pub struct ListenerConfig {
    pub listen: ListenAddr,
    pub protocol: Protocol,
    pub route: Route,
    /// twemproxy `backlog` (default 512).
    pub backlog: u32,
    /// twemproxy `client_connections` (0 = unlimited).
    pub max_clients: usize,
    pub reuseport: bool,
    /// Largest request accepted from a client, data block included (default: the pool's
    /// `item_size_max` for memcached).
    pub max_request_bytes: Option<usize>,
    /// Close a client that sends nothing for this long while it has nothing in flight.
    pub client_idle_timeout: Option<std::time::Duration>,
    /// A request must arrive whole within this of its first byte (None: `0s`, no bound).
    pub client_request_timeout: Option<std::time::Duration>,
    /// Most bytes of replies held for one client; a client over it is disconnected.
    pub max_client_output: usize,
    /// TLS for clients.
    pub tls: Option<TlsConfig>,
    /// `coalesce_misses: true` (memcached listeners): concurrent plain single-key `get`s of one
    /// key on one worker share one backend request.
    pub coalesce_misses: bool,
    /// `users` (redis listeners): who may connect, and what each may do.
    pub users: Vec<UserConfig>,
    /// `hot_keys: { threshold, local_cache, split }` (memcached listeners).
    pub hot_keys: Option<HotKeysConfig>,
    pub location: Location,
}

/// A client identity of a redis listener (`AUTH name password`; `AUTH password` is the user
/// named `default`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserConfig {
    pub name: String,
    pub password: String,
    /// Pools this user may use (None: all). A user who may not use the listener's pool cannot
    /// authenticate on it.
    pub pools: Option<Vec<String>>,
    /// Commands this user may run, lowercase (None: all).
    pub commands: Option<Vec<String>>,
    pub location: Location,
}

/// A listener's hot-key handling: detect keys read more than `threshold` times per second, then
/// serve their plain `get`s from an in-proxy cache and/or spread them over `split` copies.
#[derive(Clone, Debug, PartialEq)]
pub struct HotKeysConfig {
    /// Accesses per second (all workers) that make a key hot; cold again below half of it.
    pub threshold: f64,
    pub local_cache: Option<LocalCacheConfig>,
    /// Copies per hot key (`KEY::0..N-1`); None: no split.
    pub split: Option<usize>,
    pub location: Location,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalCacheConfig {
    pub ttl: std::time::Duration,
    pub capacity: usize,
}

/// `log: { level, file, format }`: the log filter (a level such as `info`, or tracing
/// directives such as `info,kvrouter::backend=debug`), the log file and the line format.
/// RUST_LOG and -v win over `level`, -o over `file`, --log-format over `format`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogConfig {
    pub level: Option<String>,
    pub file: Option<PathBuf>,
    pub format: Option<LogFormat>,
}

/// How a log line is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable text (tracing's default format).
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

impl LogFormat {
    pub fn parse(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("log format '{s}': expected text or json")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub file: PathBuf,
    pub format: Format,
    /// `admin.listen` (native format only).
    pub admin: Option<SocketAddr>,
    /// `admin.token`: a bearer token every admin endpoint but `/healthz` requires (secret:
    /// redacted in `/config`).
    pub admin_token: Option<String>,
    /// Worker threads (`workers:`; None = number of cores).
    pub workers: Option<usize>,
    /// `log: { level, file }` (native format only).
    pub log: LogConfig,
    pub pools: Vec<PoolConfig>,
    pub listeners: Vec<ListenerConfig>,
}

impl Config {
    /// Read, parse and validate a config file (either format, told apart by a top-level `pools:`).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let error = |reason: String| ConfigError {
            file: path.to_path_buf(),
            location: Location { line: 0, col: 0 },
            reason,
        };
        let bytes = files::read_limited(path, files::MAX_CONFIG_FILE).map_err(|why| {
            error(if why.starts_with("cannot read") {
                why
            } else {
                format!("cannot read: {why}")
            })
        })?;
        let text = String::from_utf8(bytes).map_err(|e| error(format!("not UTF-8: {e}")))?;
        Config::parse(path, &text)
    }

    /// Parse and validate config text; `path` is used for error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        Config::parse_with(path, text, &syntax::system_resolve)
    }

    /// `parse` with a chosen hostname resolver (tests use one that never touches DNS).
    pub(crate) fn parse_with(
        path: &Path,
        text: &str,
        resolve: syntax::Resolver,
    ) -> Result<Config, ConfigError> {
        let to_error = |p: Problem| ConfigError {
            file: path.to_path_buf(),
            location: p.location,
            reason: p.reason,
        };
        let parsed = parse_text(text, resolve).map_err(to_error)?;
        Ok(Config {
            file: path.to_path_buf(),
            format: parsed.format,
            admin: parsed.admin,
            admin_token: parsed.admin_token,
            workers: parsed.workers,
            log: parsed.log,
            pools: parsed.pools,
            listeners: parsed.listeners,
        })
    }

    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// One line for `kvrouter -t`: e.g. `ok: twemproxy format, 2 pools, 2 listeners, 5 servers`.
    pub fn summary(&self) -> String {
        let servers: usize = self.pools.iter().map(|p| p.servers.len()).sum();
        format!(
            "{}: configuration ok: {} format, {} pools, {} listeners, {} servers",
            self.file.display(),
            match self.format {
                Format::Twemproxy => "twemproxy",
                Format::Native => "kvrouter",
            },
            self.pools.len(),
            self.listeners.len(),
            servers
        )
    }
}

/// What a format parser produces; `Config` adds the file name.
pub(crate) struct Parsed {
    format: Format,
    admin: Option<SocketAddr>,
    admin_token: Option<String>,
    workers: Option<usize>,
    log: LogConfig,
    pools: Vec<PoolConfig>,
    listeners: Vec<ListenerConfig>,
}

/// Detect the format (a top-level `pools:` key means native), parse it, then run the checks
/// that span the whole file.
fn parse_text(text: &str, resolve: syntax::Resolver) -> Res<Parsed> {
    let top: Option<OrderedMap<String, serde::de::IgnoredAny>> = yaml::from_yaml(text)?;
    let native = top.is_some_and(|m| m.0.iter().any(|(k, _)| k == "pools"));
    let parsed = if native {
        native::parse(text, resolve)?
    } else {
        twemproxy::parse(text, resolve)?
    };
    check_duplicate_listeners(&parsed.listeners)?;
    Ok(parsed)
}

/// Servers in one pool must differ by placement name, as twemproxy's `conf_validate_server`
/// demands (the name when given, else `host:port`, or `host` for port 11211).
fn check_duplicate_servers(pool: &str, servers: &[ServerConfig]) -> Res<()> {
    for (i, s) in servers.iter().enumerate() {
        let name = s.placement_name();
        if let Some(first) = servers[..i].iter().find(|o| o.placement_name() == name) {
            return problem(
                s.location,
                format!(
                    "pool '{pool}' has two servers named '{name}' (the other is at line {})",
                    first.location.line
                ),
            );
        }
    }
    Ok(())
}

/// No two listeners (twemproxy: pools) may share an address.
fn check_duplicate_listeners(listeners: &[ListenerConfig]) -> Res<()> {
    for (i, l) in listeners.iter().enumerate() {
        if let Some(first) = listeners[..i].iter().find(|o| o.listen == l.listen) {
            return problem(
                l.location,
                format!(
                    "listen address {} is already used at line {}",
                    l.listen, first.location.line
                ),
            );
        }
    }
    Ok(())
}
