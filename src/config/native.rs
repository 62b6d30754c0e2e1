//! kvrouter's own format: top-level `admin`, `workers`, `log`, `pools`, `listeners`, with its
//! own defaults (timeout 1s, failure_limit 3, retry_timeout 10s). Unknown keys are refused at
//! their location, so nobody mistakes a typo for a setting that took effect.

use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::routing::{DistributionKind, HashKind};

use super::route;
use super::syntax::{self, Resolver};
use super::yaml::{loc, problem, OrderedMap, Problem, Res};
use super::{Format, ListenerConfig, Location, LogConfig, PoolConfig, Protocol};

type Text = Option<Spanned<String>>;
/// `replicas: { SERVER: ["host:port", ...] }`.
type ReplicaMap = Option<Spanned<OrderedMap<Spanned<String>, Spanned<Vec<Spanned<String>>>>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeFile {
    admin: Option<Admin>,
    workers: Option<Spanned<usize>>,
    log: Option<Log>,
    pools: Spanned<OrderedMap<Spanned<String>, Spanned<NativePool>>>,
    listeners: Option<Spanned<Vec<Spanned<NativeListener>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Log {
    level: Option<Spanned<String>>,
    file: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Admin {
    listen: Spanned<String>,
    /// Bearer token every admin endpoint but /healthz requires.
    token: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativePool {
    protocol: Spanned<String>,
    distribution: Text,
    hash: Text,
    hash_tag: Text,
    servers: Option<Spanned<Vec<Spanned<String>>>>,
    timeout: Text,
    connections: Option<Spanned<usize>>,
    failure_limit: Option<u32>,
    retry_timeout: Text,
    auto_eject_hosts: Option<bool>,
    preconnect: Option<bool>,
    tcpkeepalive: Option<bool>,
    item_size_max: Option<Spanned<usize>>,
    redis_auth: Option<String>,
    redis_db: Option<u32>,
    cluster: Option<Spanned<NativeCluster>>,
    replicas: ReplicaMap,
    tls: Option<Spanned<NativeTls>>,
    allow_commands: Option<Spanned<Vec<Spanned<String>>>>,
    scripts: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeCluster {
    seeds: Spanned<Vec<Spanned<String>>>,
    read_from: Text,
}

/// `cluster:`: seeds are `host:port` (at least one), read_from primary|prefer_replica|replica.
fn cluster(c: &Spanned<NativeCluster>, protocol: Protocol) -> Res<super::ClusterConfig> {
    if protocol != Protocol::Redis {
        return problem(loc(c), "`cluster` applies to redis pools only");
    }
    let v = &c.value;
    if v.seeds.value.is_empty() {
        return problem(
            loc(&v.seeds),
            "`cluster.seeds` needs at least one host:port",
        );
    }
    let mut seeds = Vec::new();
    for s in &v.seeds.value {
        let ok = s
            .value
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
        if !ok {
            return problem(
                loc(s),
                format!("cluster seed '{}' is not host:port", s.value),
            );
        }
        seeds.push(s.value.clone());
    }
    let read_from = opt(&v.read_from, |r| match r {
        "primary" => Ok(super::ReadFrom::Primary),
        "prefer_replica" => Ok(super::ReadFrom::PreferReplica),
        "replica" => Ok(super::ReadFrom::Replica),
        other => Err(format!(
            "read_from '{other}': expected primary, prefer_replica or replica"
        )),
    })?
    .unwrap_or_default();
    Ok(super::ClusterConfig { seeds, read_from })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeListener {
    listen: Spanned<String>,
    protocol: Spanned<String>,
    route: Spanned<super::yaml::Node>,
    max_clients: Option<usize>,
    backlog: Option<u32>,
    reuseport: Option<bool>,
    hot_keys: Option<Spanned<NativeHotKeys>>,
    tls: Option<Spanned<NativeTls>>,
    users: Option<Spanned<Vec<Spanned<NativeUser>>>>,
    max_request_bytes: Option<Spanned<usize>>,
    client_idle_timeout: Text,
    client_request_timeout: Text,
    max_client_output: Option<Spanned<usize>>,
    coalesce_misses: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeUser {
    name: Spanned<String>,
    password: Spanned<String>,
    pools: Option<Vec<Spanned<String>>>,
    commands: Option<Vec<Spanned<String>>>,
}

/// A redis listener's `users`: unique names, non-empty passwords, known pools.
fn users(
    list: &Option<Spanned<Vec<Spanned<NativeUser>>>>,
    protocol: Protocol,
    pools: &[PoolConfig],
) -> Res<Vec<super::UserConfig>> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    if protocol != Protocol::Redis {
        return problem(loc(list), "`users` applies to redis listeners only");
    }
    let mut out: Vec<super::UserConfig> = Vec::new();
    for u in &list.value {
        let v = &u.value;
        if v.name.value.is_empty() || out.iter().any(|o| o.name == v.name.value) {
            return problem(
                loc(&v.name),
                format!("user name '{}' is empty or repeated", v.name.value),
            );
        }
        if v.password.value.is_empty() {
            return problem(loc(&v.password), "a user's password must not be empty");
        }
        if let Some(ps) = &v.pools {
            for p in ps {
                if !pools.iter().any(|c| c.name == p.value) {
                    return problem(loc(p), format!("unknown pool '{}'", p.value));
                }
            }
        }
        out.push(super::UserConfig {
            name: v.name.value.clone(),
            password: v.password.value.clone(),
            pools: v
                .pools
                .as_ref()
                .map(|ps| ps.iter().map(|p| p.value.clone()).collect()),
            commands: v
                .commands
                .as_ref()
                .map(|cs| cs.iter().map(|c| c.value.to_ascii_lowercase()).collect()),
            location: loc(u),
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeHotKeys {
    threshold: Option<Spanned<String>>,
    local_cache: Option<Spanned<NativeLocalCache>>,
    split: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeLocalCache {
    ttl: Option<Spanned<String>>,
    capacity: Option<Spanned<usize>>,
}

/// Most copies `split` may ask for.
const MAX_SPLIT: usize = 64;
/// Longest local cache `ttl`: a cache of hot keys is for smoothing bursts, not for hiding writes.
const MAX_LOCAL_TTL: Duration = Duration::from_secs(60);

fn hot_keys(h: &Option<Spanned<NativeHotKeys>>) -> Res<Option<super::HotKeysConfig>> {
    let Some(h) = h else { return Ok(None) };
    let v = &h.value;
    let Some(t) = &v.threshold else {
        return problem(loc(h), "`hot_keys` needs a `threshold`, e.g. 2000/s");
    };
    let threshold = text(t, syntax::parse_rate)?;
    let local_cache = match &v.local_cache {
        None => None,
        Some(c) => {
            let ttl = match &c.value.ttl {
                None => return problem(loc(c), "`local_cache` needs a `ttl`, e.g. 200ms"),
                Some(t) => {
                    let d = text(t, syntax::parse_duration)?;
                    if d.is_zero() {
                        return problem(loc(t), "`ttl` must be more than 0");
                    }
                    if d > MAX_LOCAL_TTL {
                        return problem(loc(t), "`ttl` must be at most 60s");
                    }
                    d
                }
            };
            let capacity = match &c.value.capacity {
                None => return problem(loc(c), "`local_cache` needs a `capacity` (entries)"),
                Some(n) if n.value == 0 => return problem(loc(n), "`capacity` must be at least 1"),
                Some(n) => n.value,
            };
            Some(super::LocalCacheConfig { ttl, capacity })
        }
    };
    let split = match &v.split {
        None => None,
        Some(n) if n.value < 2 || n.value > MAX_SPLIT => {
            return problem(loc(n), format!("`split` must be between 2 and {MAX_SPLIT}"))
        }
        Some(n) => Some(n.value),
    };
    Ok(Some(super::HotKeysConfig {
        threshold,
        local_cache,
        split,
        location: loc(h),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeTls {
    cert: Text,
    key: Text,
    ca: Text,
    server_name: Option<String>,
}

/// `listener`: cert and key required; a pool may omit both (server verification only).
fn tls(t: &Option<Spanned<NativeTls>>, listener: bool) -> Res<Option<super::TlsConfig>> {
    let Some(t) = t else { return Ok(None) };
    let v = &t.value;
    if listener && (v.cert.is_none() || v.key.is_none()) {
        return problem(loc(t), "a listener's `tls` needs `cert` and `key` files");
    }
    if v.cert.is_some() != v.key.is_some() {
        return problem(loc(t), "`tls` needs both `cert` and `key`, or neither");
    }
    if listener && v.server_name.is_some() {
        return problem(loc(t), "`server_name` is for pools (TLS to backends)");
    }
    if !listener && v.ca.is_none() {
        return problem(
            loc(t),
            "a pool's `tls` needs `ca`: the file of the CA that signed the servers' certificates",
        );
    }
    let path = |f: &Text| f.as_ref().map(|s| s.value.clone().into());
    let at = |f: &Text| f.as_ref().map_or(loc(t), loc);
    Ok(Some(super::TlsConfig {
        cert: path(&v.cert),
        key: path(&v.key),
        ca: path(&v.ca),
        server_name: v.server_name.clone(),
        location: loc(t),
        cert_at: at(&v.cert),
        key_at: at(&v.key),
        ca_at: at(&v.ca),
    }))
}

fn text<T>(v: &Spanned<String>, f: impl Fn(&str) -> Result<T, String>) -> Res<T> {
    f(&v.value).map_err(|reason| Problem {
        location: loc(v),
        reason,
    })
}

fn opt<T>(v: &Text, f: impl Fn(&str) -> Result<T, String>) -> Res<Option<T>> {
    v.as_ref().map(|v| text(v, f)).transpose()
}

pub(super) fn parse(text_in: &str, resolve: Resolver) -> Res<super::Parsed> {
    let file: NativeFile = super::yaml::from_yaml(text_in)?;
    let log = match &file.log {
        None => LogConfig::default(),
        Some(l) => LogConfig {
            level: l
                .level
                .as_ref()
                .map(|v| text(v, syntax::parse_log_level))
                .transpose()?,
            file: match &l.file {
                Some(f) if f.value.is_empty() => return problem(loc(f), "log.file is empty"),
                Some(f) => Some(f.value.clone().into()),
                None => None,
            },
            format: l
                .format
                .as_ref()
                .map(|v| text(v, super::LogFormat::parse))
                .transpose()?,
        },
    };
    let admin = match &file.admin {
        None => None,
        Some(a) => {
            let spec = text(&a.listen, syntax::parse_listen)?;
            match spec {
                syntax::ListenSpec::Tcp { host, port } => {
                    Some(resolve(&host, port).map_err(|reason| Problem {
                        location: loc(&a.listen),
                        reason,
                    })?)
                }
                syntax::ListenSpec::Unix { .. } => {
                    return problem(loc(&a.listen), "admin.listen must be a TCP host:port");
                }
            }
        }
    };
    let admin_token = match file.admin.as_ref().and_then(|a| a.token.as_ref()) {
        Some(t) if t.value.len() < 16 => {
            return problem(loc(t), "admin.token must be at least 16 characters")
        }
        t => t.map(|t| t.value.clone()),
    };
    if let Some(w) = &file.workers {
        if w.value == 0 {
            return problem(loc(w), "workers must be at least 1");
        }
    }

    let mut pools = Vec::new();
    for (name, pool) in &file.pools.value.0 {
        pools.push(convert_pool(name, pool)?);
    }
    if pools.is_empty() {
        return problem(loc(&file.pools), "no pools configured");
    }

    let mut listeners = Vec::new();
    let Some(ls) = &file.listeners else {
        return problem(Location { line: 1, col: 1 }, "no listeners configured");
    };
    if ls.value.is_empty() {
        return problem(loc(ls), "no listeners configured");
    }
    for l in &ls.value {
        listeners.push(convert_listener(l, &pools, resolve)?);
    }
    Ok(super::Parsed {
        format: Format::Native,
        admin,
        admin_token,
        workers: file.workers.map(|w| w.value),
        log,
        pools,
        listeners,
    })
}

fn convert_pool(name: &Spanned<String>, sp: &Spanned<NativePool>) -> Res<PoolConfig> {
    let p = &sp.value;
    let pname = &name.value;
    if pname.is_empty() {
        return problem(loc(name), "empty pool name");
    }
    let protocol = text(&p.protocol, syntax::parse_protocol)?;
    let cluster = p
        .cluster
        .as_ref()
        .map(|c| cluster(c, protocol))
        .transpose()?;
    let mut parsed = Vec::new();
    if cluster.is_some() {
        if let Some(s) = &p.servers {
            return problem(
                loc(s),
                format!("pool '{pname}' is a cluster pool: its servers are discovered from `cluster.seeds`, remove `servers`"),
            );
        }
        for (what, set) in [
            ("distribution", p.distribution.is_some()),
            ("hash", p.hash.is_some()),
            ("hash_tag", p.hash_tag.is_some()),
            ("auto_eject_hosts", p.auto_eject_hosts.is_some()),
            ("redis_db", p.redis_db.is_some_and(|d| d != 0)),
        ] {
            if set {
                return problem(
                    loc(name),
                    format!("pool '{pname}': `{what}` does not apply to a cluster pool (keys go by CRC16 slot, database 0 only)"),
                );
            }
        }
    } else {
        let servers = match &p.servers {
            Some(s) if !s.value.is_empty() => s,
            Some(s) => return problem(loc(s), format!("pool '{pname}' has no servers")),
            None => return problem(loc(name), format!("pool '{pname}' has no servers")),
        };
        for s in &servers.value {
            parsed.push(text(s, |v| syntax::parse_server(v, loc(s)))?);
        }
    }
    super::check_duplicate_servers(pname, &parsed)?;
    let connections = match &p.connections {
        Some(c) if c.value == 0 => return problem(loc(c), "connections must be at least 1"),
        Some(c) => c.value,
        None => 1,
    };
    let item_size_max = match &p.item_size_max {
        Some(c) if c.value == 0 => return problem(loc(c), "item_size_max must be at least 1"),
        Some(c) => c.value,
        None => super::DEFAULT_ITEM_SIZE_MAX,
    };
    let allow_commands = allowed_commands(&p.allow_commands, protocol)?;
    let scripts = match &p.scripts {
        Some(s) if protocol != Protocol::Redis => {
            return problem(loc(s), "`scripts` applies to redis pools only")
        }
        Some(s) => s.value,
        None => true,
    };
    let replicas = replicas(
        &p.replicas,
        protocol,
        &parsed,
        p.auto_eject_hosts.unwrap_or(false),
    )?;
    Ok(PoolConfig {
        name: pname.clone(),
        protocol,
        hash: opt(&p.hash, syntax::parse_hash)?.unwrap_or(HashKind::Fnv1a_64),
        distribution: opt(&p.distribution, syntax::parse_distribution)?
            .unwrap_or(DistributionKind::Ketama),
        // `0s`: wait forever, as twemproxy's absent `timeout` (what `kvrouter convert` writes).
        timeout: match opt(&p.timeout, syntax::parse_duration)? {
            None => Some(Duration::from_secs(1)),
            Some(d) if d.is_zero() => None,
            d => d,
        },
        servers: parsed,
        connections,
        auto_eject_hosts: p.auto_eject_hosts.unwrap_or(false),
        tko: !p.auto_eject_hosts.unwrap_or(false),
        failure_limit: p.failure_limit.unwrap_or(3),
        retry_timeout: opt(&p.retry_timeout, syntax::parse_duration)?
            .unwrap_or(Duration::from_secs(10)),
        preconnect: p.preconnect.unwrap_or(false),
        item_size_max,
        tcpkeepalive: p.tcpkeepalive.unwrap_or(false),
        redis_auth: p.redis_auth.clone(),
        redis_db: p.redis_db.unwrap_or(0),
        tls: tls(&p.tls, false)?,
        allow_commands,
        scripts,
        hash_tag: if cluster.is_some() {
            Some(*b"{}")
        } else {
            opt(&p.hash_tag, syntax::parse_hash_tag)?
        },
        cluster,
        replicas,
        location: loc(name),
    })
}

/// `replicas: { SERVER: ["host:port", ...] }` (redis pools): SERVER is a server's name (else
/// its `host:port`). Returns the replicas per server in `servers` order (empty: none given).
fn replicas(
    map: &ReplicaMap,
    protocol: Protocol,
    servers: &[super::ServerConfig],
    auto_eject: bool,
) -> Res<Vec<Vec<super::ServerConfig>>> {
    let Some(map) = map else {
        return Ok(Vec::new());
    };
    if protocol != Protocol::Redis {
        return problem(
            loc(map),
            "`replicas` applies to redis pools only (memcached has no replication: use a failover route to a gutter pool)",
        );
    }
    if auto_eject {
        return problem(
            loc(map),
            "`replicas` needs TKO health (reads fail over while the ring stays put); auto_eject_hosts moves keys instead: drop one of them",
        );
    }
    let mut out = vec![Vec::new(); servers.len()];
    for (key, list) in &map.value.0 {
        let Some(i) = servers
            .iter()
            .position(|s| s.placement_name() == key.value || s.address() == key.value)
        else {
            let known: Vec<String> = servers.iter().map(|s| s.placement_name()).collect();
            return problem(
                loc(key),
                format!(
                    "`replicas`: unknown server '{}' (servers of this pool: {})",
                    key.value,
                    known.join(", ")
                ),
            );
        };
        if !out[i].is_empty() {
            return problem(
                loc(key),
                format!("`replicas`: server '{}' is listed twice", key.value),
            );
        }
        if list.value.is_empty() {
            return problem(
                loc(list),
                "`replicas`: an empty list (give at least one host:port)",
            );
        }
        for r in &list.value {
            let replica = text(r, |v| parse_replica(v, loc(r)))?;
            let clash = servers
                .iter()
                .chain(out.iter().flatten())
                .any(|o| o.address() == replica.address());
            if clash {
                return problem(
                    loc(r),
                    format!(
                        "`replicas`: {} is already a server or replica of this pool",
                        replica.address()
                    ),
                );
            }
            out[i].push(replica);
        }
    }
    Ok(out)
}

/// A replica's address: `host:port`.
fn parse_replica(v: &str, location: Location) -> Result<super::ServerConfig, String> {
    let bad = || format!("invalid replica address '{v}': expected \"host:port\"");
    let (host, port) = v.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || host.contains(char::is_whitespace) || host.starts_with('/') {
        return Err(bad());
    }
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Ok(super::ServerConfig {
        host: host.to_string(),
        port,
        weight: 1,
        name: None,
        location,
    })
}

/// `allow_commands: [flushall, keys]`: Redis commands that are off by default because one
/// client could wipe or stall every server of the pool, or make a server connect anywhere
/// (MIGRATE). Names are case-insensitive.
fn allowed_commands(
    v: &Option<Spanned<Vec<Spanned<String>>>>,
    protocol: Protocol,
) -> Res<Vec<String>> {
    let Some(list) = v else { return Ok(Vec::new()) };
    if protocol != Protocol::Redis {
        return problem(loc(list), "allow_commands applies to redis pools only");
    }
    let mut out = Vec::new();
    for c in &list.value {
        let name = c.value.to_ascii_lowercase();
        if !super::GATED_COMMANDS.contains(&name.as_str()) {
            return problem(
                loc(c),
                format!(
                    "allow_commands: '{}' is not one of the commands a pool can enable: {}",
                    c.value,
                    super::GATED_COMMANDS.join(", ")
                ),
            );
        }
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

fn convert_listener(
    sl: &Spanned<NativeListener>,
    pools: &[PoolConfig],
    resolve: Resolver,
) -> Res<ListenerConfig> {
    let l = &sl.value;
    let listen = text(&l.listen, |s| {
        syntax::parse_listen(s).and_then(|spec| syntax::resolve_listen(spec, resolve))
    })?;
    let protocol: Protocol = text(&l.protocol, syntax::parse_protocol)?;
    if let Some(c) = &l.coalesce_misses {
        if c.value && protocol != Protocol::Memcache {
            return problem(loc(c), "coalesce_misses applies to memcache listeners only");
        }
    }
    let hot_keys = hot_keys(&l.hot_keys)?;
    let route = route::parse(&l.route, protocol, pools)?;
    Ok(ListenerConfig {
        listen,
        protocol,
        route,
        backlog: l.backlog.unwrap_or(512),
        max_clients: l.max_clients.unwrap_or(0),
        reuseport: l.reuseport.unwrap_or(false),
        max_request_bytes: match &l.max_request_bytes {
            Some(n) if n.value < 1024 => {
                return problem(loc(n), "`max_request_bytes` must be at least 1024")
            }
            n => n.as_ref().map(|n| n.value),
        },
        client_idle_timeout: opt(&l.client_idle_timeout, syntax::parse_duration)?,
        client_request_timeout: match opt(&l.client_request_timeout, syntax::parse_duration)? {
            None => Some(super::DEFAULT_CLIENT_REQUEST_TIMEOUT),
            Some(d) if d.is_zero() => None,
            d => d,
        },
        max_client_output: match &l.max_client_output {
            Some(n) if n.value < 65536 => {
                return problem(loc(n), "`max_client_output` must be at least 65536")
            }
            n => n
                .as_ref()
                .map_or(super::DEFAULT_MAX_CLIENT_OUTPUT, |n| n.value),
        },
        tls: tls(&l.tls, true)?,
        coalesce_misses: l.coalesce_misses.as_ref().is_some_and(|c| c.value),
        users: users(&l.users, protocol, pools)?,
        hot_keys,
        location: loc(&l.listen),
    })
}
