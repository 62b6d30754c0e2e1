//! Scalar syntaxes shared by both formats: listen addresses, twemproxy server strings,
//! durations, hash / distribution names, hash tags. Each parser returns the reason text only;
//! callers hold the span and attach the location, so every message points at the value.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::routing::{DistributionKind, HashKind};

use super::{ListenAddr, Location, ServerConfig};

/// A listen address before host resolution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ListenSpec {
    Tcp { host: String, port: u16 },
    Unix { path: PathBuf, mode: Option<u32> },
}

/// twemproxy's `conf_set_listen`: `/path [mode]` (octal mode, at most 0777) or `host:port`
/// split at the last colon; `[v6]:port` is accepted too.
pub(crate) fn parse_listen(s: &str) -> Result<ListenSpec, String> {
    if s.starts_with('/') {
        return match s.rsplit_once(' ') {
            None => Ok(ListenSpec::Unix {
                path: PathBuf::from(s),
                mode: None,
            }),
            Some((path, perm)) => {
                let mode = u32::from_str_radix(perm, 8)
                    .ok()
                    .filter(|m| *m <= 0o777 && !perm.is_empty())
                    .ok_or_else(|| {
                        format!("invalid permission '{perm}' in \"socket_path permission\" '{s}' (octal, at most 0777)")
                    })?;
                Ok(ListenSpec::Unix {
                    path: PathBuf::from(path.trim_end()),
                    mode: Some(mode),
                })
            }
        };
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(|| {
        format!("invalid listen address '{s}': expected \"host:port\" or a unix socket path")
    })?;
    let port = parse_port(port).ok_or_else(|| format!("invalid port in listen address '{s}'"))?;
    let host = strip_brackets(host);
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("invalid host in listen address '{s}'"));
    }
    Ok(ListenSpec::Tcp {
        host: host.to_string(),
        port,
    })
}

fn strip_brackets(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// Ports as twemproxy's `nc_valid_port`: digits only, 1..=65535.
fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|p| *p != 0)
}

/// Resolves hostnames the way `config` is told to (the system resolver in production, a stub
/// in tests so they never touch DNS).
pub(crate) type Resolver<'a> = &'a dyn Fn(&str, u16) -> Result<SocketAddr, String>;

/// The system resolver: IP literals directly, else the first address getaddrinfo returns.
pub(crate) fn system_resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    match (host, port).to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("cannot resolve '{host}': no address")),
        Err(e) => Err(format!("cannot resolve '{host}': {e}")),
    }
}

pub(crate) fn resolve_listen(spec: ListenSpec, resolve: Resolver) -> Result<ListenAddr, String> {
    match spec {
        ListenSpec::Tcp { host, port } => resolve(&host, port).map(ListenAddr::Tcp),
        ListenSpec::Unix { path, mode } => Ok(ListenAddr::Unix { path, mode }),
    }
}

/// twemproxy's `conf_add_server`: `host:port:weight [name]` or `/path/unix_socket:weight [name]`,
/// parsed from the end (so a host may itself contain colons). Weight must be >= 1. Hostnames are
/// kept as written; they are resolved when connecting. A unix socket server has port 0.
pub(crate) fn parse_server(s: &str, location: Location) -> Result<ServerConfig, String> {
    let shape = || {
        format!("invalid server '{s}': expected \"host:port:weight [name]\" or \"/path/unix_socket:weight [name]\"")
    };
    let (addr, name) = match s.rsplit_once(' ') {
        Some((a, n)) => (a, Some(n)),
        None => (s, None),
    };
    if name.is_some_and(|n| n.is_empty()) {
        return Err(format!("invalid server '{s}': empty name"));
    }
    let (host, port, weight) = if addr.starts_with('/') {
        let (path, weight) = addr.rsplit_once(':').ok_or_else(shape)?;
        (path, 0u16, weight)
    } else {
        let mut parts = addr.rsplitn(3, ':');
        let weight = parts.next().ok_or_else(shape)?;
        let port = parts.next().ok_or_else(shape)?;
        let host = parts.next().ok_or_else(shape)?;
        let port = parse_port(port).ok_or_else(|| format!("invalid port in server '{s}'"))?;
        (strip_brackets(host), port, weight)
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("invalid host in server '{s}'"));
    }
    if weight.is_empty() || !weight.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid weight in server '{s}'"));
    }
    let weight: u32 = weight
        .parse()
        .map_err(|_| format!("invalid weight in server '{s}'"))?;
    if weight == 0 {
        return Err(format!(
            "zero weight in server '{s}': weight must be at least 1"
        ));
    }
    Ok(ServerConfig {
        host: host.to_string(),
        port,
        weight,
        name: name.map(str::to_string),
        location,
    })
}

/// A rate such as `2000/s` (also `/m`): events per second.
pub(crate) fn parse_rate(s: &str) -> Result<f64, String> {
    let bad = || format!("invalid rate '{s}': expected a number per second or minute, e.g. 2000/s");
    let (num, unit) = s.split_once('/').ok_or_else(bad)?;
    let n: f64 = num.trim().parse().map_err(|_| bad())?;
    if !n.is_finite() || n <= 0.0 {
        return Err(format!("invalid rate '{s}': must be more than 0"));
    }
    match unit.trim() {
        "s" => Ok(n),
        "m" => Ok(n / 60.0),
        _ => Err(bad()),
    }
}

/// Native durations: an integer and a unit, `us`, `ms`, `s`, `m` or `h` (`200ms`, `1s`, `1m`).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = s.split_at(digits);
    let bad = || {
        format!(
            "invalid duration '{s}': expected a number and a unit (us, ms, s, m, h), e.g. 200ms"
        )
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let d = match unit {
        "us" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => n.checked_mul(60).map(Duration::from_secs).ok_or_else(bad)?,
        "h" => n
            .checked_mul(3600)
            .map(Duration::from_secs)
            .ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    Ok(d)
}

pub(crate) fn parse_hash(s: &str) -> Result<HashKind, String> {
    HashKind::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = HashKind::ALL.iter().map(|h| h.name()).collect();
        format!("unknown hash '{s}', expected one of {}", names.join(", "))
    })
}

pub(crate) fn parse_distribution(s: &str) -> Result<DistributionKind, String> {
    DistributionKind::from_name(s).ok_or_else(|| {
        format!("unknown distribution '{s}', expected one of ketama, modula, random")
    })
}

/// Exactly two bytes, as twemproxy's `conf_set_hashtag`.
pub(crate) fn parse_hash_tag(s: &str) -> Result<[u8; 2], String> {
    match s.as_bytes() {
        [a, b] => Ok([*a, *b]),
        _ => Err(format!(
            "invalid hash_tag '{s}': must be exactly two characters, e.g. \"{{}}\""
        )),
    }
}

pub(crate) fn parse_protocol(s: &str) -> Result<super::Protocol, String> {
    match s {
        "memcache" => Ok(super::Protocol::Memcache),
        "redis" => Ok(super::Protocol::Redis),
        _ => Err(format!(
            "unknown protocol '{s}', expected memcache or redis"
        )),
    }
}

pub(crate) fn protocol_name(p: super::Protocol) -> &'static str {
    match p {
        super::Protocol::Memcache => "memcache",
        super::Protocol::Redis => "redis",
    }
}

/// `log.level`: a level (`error`, `warn`, `info`, `debug`, `trace`, `off`) or tracing
/// directives (`info,kvrouter::backend=debug`). A bare word that is not a level is refused
/// rather than taken as a target name, so `inof` is a typo, not a filter that logs nothing.
pub(crate) fn parse_log_level(s: &str) -> Result<String, String> {
    const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
    let bad = |why: &str| {
        Err(format!(
            "log.level '{s}': {why} (a level: error, warn, info, debug, trace, off; or directives like info,kvrouter::backend=debug)"
        ))
    };
    if s.trim().is_empty() {
        return bad("empty");
    }
    for d in s.split(',') {
        let d = d.trim();
        match d.split_once('=') {
            None if LEVELS.contains(&d.to_ascii_lowercase().as_str()) => {}
            None => return bad(&format!("'{d}' is not a level")),
            Some((target, level)) => {
                if target.is_empty() || !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
                    return bad(&format!("'{d}' is not TARGET=LEVEL"));
                }
            }
        }
    }
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(s) {
        return bad(&e.to_string());
    }
    Ok(s.to_string())
}
