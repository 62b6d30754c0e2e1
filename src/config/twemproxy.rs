//! twemproxy's `nutcracker.yml`, read as-is: a mapping of pool name -> pool with exactly
//! twemproxy 0.5.0's keys, acceptance rules and defaults (nc_conf.c). Each pool becomes one
//! `PoolConfig` plus one `ListenerConfig` routing to it.
//!
//! Scalars are taken as text and parsed like twemproxy does (`nc_atoi` digits only, booleans
//! exactly `true`/`false`), so a file nutcracker accepts means the same thing here.

use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::routing::{DistributionKind, HashKind};

use super::syntax::{self, Resolver};
use super::yaml::{loc, problem, OrderedMap, Problem, Res};
use super::{Format, ListenerConfig, Location, PoolConfig, Protocol, Route};

type Text = Option<Spanned<String>>;

/// One pool, every key twemproxy 0.5.0 knows; anything else is refused by serde.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TwPool {
    listen: Text,
    hash: Text,
    hash_tag: Text,
    distribution: Text,
    timeout: Text,
    backlog: Text,
    client_connections: Text,
    redis: Text,
    tcpkeepalive: Text,
    reuseport: Text,
    redis_auth: Text,
    redis_db: Text,
    preconnect: Text,
    auto_eject_hosts: Text,
    server_connections: Text,
    server_retry_timeout: Text,
    server_failure_limit: Text,
    servers: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `nc_atoi`: digits only, and it must fit twemproxy's `int`.
fn num(v: &Text, key: &str) -> Res<Option<u32>> {
    let Some(v) = v else { return Ok(None) };
    let s = v.value.as_str();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return problem(loc(v), format!("{key}: '{s}' is not a number"));
    }
    match s.parse::<u32>() {
        Ok(n) if n <= i32::MAX as u32 => Ok(Some(n)),
        _ => problem(loc(v), format!("{key}: '{s}' is too large")),
    }
}

/// `conf_set_bool`: exactly `true` or `false`.
fn boolean(v: &Text, key: &str) -> Res<Option<bool>> {
    let Some(v) = v else { return Ok(None) };
    match v.value.as_str() {
        "true" => Ok(Some(true)),
        "false" => Ok(Some(false)),
        s => problem(loc(v), format!("{key}: '{s}' is not \"true\" or \"false\"")),
    }
}

/// Parse a text field with `f`, putting the value's location on any error.
fn with<T>(v: &Text, f: impl Fn(&str) -> Result<T, String>) -> Res<Option<T>> {
    match v {
        None => Ok(None),
        Some(v) => f(&v.value).map(Some).map_err(|reason| Problem {
            location: loc(v),
            reason,
        }),
    }
}

pub(super) fn parse(text: &str, resolve: Resolver) -> Res<super::Parsed> {
    let pools: Option<OrderedMap<Spanned<String>, Spanned<TwPool>>> = super::yaml::from_yaml(text)?;
    let pools = pools.map(|m| m.0).unwrap_or_default();
    if pools.is_empty() {
        return problem(Location { line: 1, col: 1 }, "no pools configured");
    }
    let mut out = super::Parsed {
        format: Format::Twemproxy,
        admin: None,
        admin_token: None,
        workers: None,
        log: super::LogConfig::default(),
        pools: Vec::new(),
        listeners: Vec::new(),
    };
    for (name, pool) in &pools {
        let (p, l) = convert(name, pool, resolve)?;
        out.pools.push(p);
        out.listeners.push(l);
    }
    Ok(out)
}

fn convert(
    name: &Spanned<String>,
    sp: &Spanned<TwPool>,
    resolve: Resolver,
) -> Res<(PoolConfig, ListenerConfig)> {
    let p = &sp.value;
    let pname = &name.value;
    let Some(listen) = &p.listen else {
        return problem(loc(name), format!("pool '{pname}': missing `listen`"));
    };
    let listen_addr = syntax::parse_listen(&listen.value)
        .and_then(|s| syntax::resolve_listen(s, resolve))
        .map_err(|reason| Problem {
            location: loc(listen),
            reason,
        })?;

    let servers = match &p.servers {
        Some(s) if !s.value.is_empty() => s,
        Some(s) => return problem(loc(s), format!("pool '{pname}' has no servers")),
        None => return problem(loc(name), format!("pool '{pname}' has no servers")),
    };
    let mut parsed = Vec::with_capacity(servers.value.len());
    for s in &servers.value {
        let server = syntax::parse_server(&s.value, loc(s)).map_err(|reason| Problem {
            location: loc(s),
            reason,
        })?;
        parsed.push(server);
    }
    super::check_duplicate_servers(pname, &parsed)?;

    let server_connections = num(&p.server_connections, "server_connections")?.unwrap_or(1);
    if server_connections == 0 {
        let at = p.server_connections.as_ref().map(loc).unwrap_or_default();
        return problem(at, "server_connections: cannot be 0");
    }
    let protocol = if boolean(&p.redis, "redis")?.unwrap_or(false) {
        Protocol::Redis
    } else {
        Protocol::Memcache
    };
    let pool = PoolConfig {
        name: pname.clone(),
        protocol,
        hash: with(&p.hash, syntax::parse_hash)?.unwrap_or(HashKind::Fnv1a_64),
        hash_tag: with(&p.hash_tag, syntax::parse_hash_tag)?,
        distribution: with(&p.distribution, syntax::parse_distribution)?
            .unwrap_or(DistributionKind::Ketama),
        // twemproxy: absent (-1) or 0 means no timeout at all.
        timeout: num(&p.timeout, "timeout")?
            .filter(|t| *t > 0)
            .map(|t| Duration::from_millis(t.into())),
        servers: parsed,
        connections: server_connections as usize,
        auto_eject_hosts: boolean(&p.auto_eject_hosts, "auto_eject_hosts")?.unwrap_or(false),
        tls: None,
        replicas: Vec::new(),
        tko: false,
        failure_limit: num(&p.server_failure_limit, "server_failure_limit")?.unwrap_or(2),
        retry_timeout: Duration::from_millis(
            num(&p.server_retry_timeout, "server_retry_timeout")?
                .unwrap_or(30_000)
                .into(),
        ),
        preconnect: boolean(&p.preconnect, "preconnect")?.unwrap_or(false),
        item_size_max: super::DEFAULT_ITEM_SIZE_MAX,
        tcpkeepalive: boolean(&p.tcpkeepalive, "tcpkeepalive")?.unwrap_or(false),
        redis_auth: p.redis_auth.as_ref().map(|a| a.value.clone()),
        redis_db: num(&p.redis_db, "redis_db")?.unwrap_or(0),
        allow_commands: Vec::new(),
        scripts: true,
        cluster: None,
        location: loc(name),
    };
    let listener = ListenerConfig {
        listen: listen_addr,
        protocol,
        route: Route::Pool {
            name: pname.clone(),
            location: loc(name),
        },
        backlog: num(&p.backlog, "backlog")?.unwrap_or(512),
        max_clients: num(&p.client_connections, "client_connections")?.unwrap_or(0) as usize,
        reuseport: boolean(&p.reuseport, "reuseport")?.unwrap_or(false),
        max_request_bytes: None,
        client_idle_timeout: None,
        client_request_timeout: Some(super::DEFAULT_CLIENT_REQUEST_TIMEOUT),
        max_client_output: super::DEFAULT_MAX_CLIENT_OUTPUT,
        tls: None,
        coalesce_misses: false,
        users: Vec::new(),
        hot_keys: None,
        location: loc(listen),
    };
    Ok((pool, listener))
}
