//! `kvrouter convert FILE`: any loaded config (a nutcracker.yml above all) written back in
//! kvrouter's own format, every setting explicit, so moving to route trees starts from a file
//! that places every key where the original does.
//!
//! The conversion goes through the loaded `Config`, not the YAML text: what is written is what
//! kvrouter understood, defaults included (twemproxy's defaults differ from the native ones, so
//! each is spelled out). Secrets are written as they are: the output is a config file.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::export::{log_json, protocol};
use super::{Config, ListenAddr, PoolConfig, Protocol, ServerConfig, TlsConfig};

/// A duration in the config grammar: the largest unit that keeps it exact.
pub(crate) fn duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}us", d.as_micros())
    }
}

/// `host:port:weight [name]` as twemproxy writes it (`/path:weight [name]` for a unix socket).
fn server(s: &ServerConfig) -> String {
    let mut out = if s.is_unix() {
        format!("{}:{}", s.host, s.weight)
    } else if s.host.contains(':') {
        format!("[{}]:{}:{}", s.host, s.port, s.weight)
    } else {
        format!("{}:{}:{}", s.host, s.port, s.weight)
    };
    if let Some(n) = &s.name {
        out.push(' ');
        out.push_str(n);
    }
    out
}

fn listen(l: &ListenAddr) -> String {
    match l {
        ListenAddr::Tcp(a) => a.to_string(),
        ListenAddr::Unix { path, mode: None } => path.display().to_string(),
        ListenAddr::Unix {
            path,
            mode: Some(m),
        } => format!("{} {m:04o}", path.display()),
    }
}

fn tls(t: &TlsConfig) -> Value {
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string());
    json!({ "cert": path(&t.cert), "key": path(&t.key), "ca": path(&t.ca), "server_name": t.server_name })
}

fn pool(p: &PoolConfig) -> Value {
    let redis = p.protocol == Protocol::Redis;
    let mut v = json!({
        "protocol": protocol(p.protocol),
        // `0s`: no timeout (twemproxy's default when `timeout` is absent).
        "timeout": duration(p.timeout.unwrap_or(Duration::ZERO)),
        "connections": p.connections,
        "failure_limit": p.failure_limit,
        "retry_timeout": duration(p.retry_timeout),
        "preconnect": p.preconnect,
        "tcpkeepalive": p.tcpkeepalive,
        "item_size_max": p.item_size_max,
        "redis_auth": p.redis_auth,
        "tls": p.tls.as_ref().map(tls),
    });
    let m = v.as_object_mut().expect("an object");
    if let Some(c) = &p.cluster {
        let read_from = match c.read_from {
            super::ReadFrom::Primary => "primary",
            super::ReadFrom::PreferReplica => "prefer_replica",
            super::ReadFrom::Replica => "replica",
        };
        m.insert(
            "cluster".into(),
            json!({ "seeds": c.seeds, "read_from": read_from }),
        );
    } else {
        m.insert("distribution".into(), json!(p.distribution.name()));
        m.insert("hash".into(), json!(p.hash.name()));
        if let Some(t) = p.hash_tag {
            m.insert(
                "hash_tag".into(),
                json!(String::from_utf8_lossy(&t).into_owned()),
            );
        }
        m.insert("auto_eject_hosts".into(), json!(p.auto_eject_hosts));
        let servers: Vec<String> = p.servers.iter().map(server).collect();
        m.insert("servers".into(), json!(servers));
        if p.redis_db != 0 {
            m.insert("redis_db".into(), json!(p.redis_db));
        }
    }
    if redis {
        m.insert("scripts".into(), json!(p.scripts));
    }
    if !p.allow_commands.is_empty() {
        m.insert("allow_commands".into(), json!(p.allow_commands));
    }
    let replicas: Map<String, Value> = p
        .servers
        .iter()
        .zip(&p.replicas)
        .filter(|(_, r)| !r.is_empty())
        .map(|(s, r)| {
            let addrs: Vec<String> = r.iter().map(ServerConfig::address).collect();
            (s.placement_name(), json!(addrs))
        })
        .collect();
    if !replicas.is_empty() {
        m.insert("replicas".into(), Value::Object(replicas));
    }
    v
}

/// The config in kvrouter's own grammar (a value `Config::parse` reads back), secrets as they
/// are.
pub fn to_native(c: &Config) -> Value {
    let pools: Map<String, Value> = c.pools.iter().map(|p| (p.name.clone(), pool(p))).collect();
    let listeners: Vec<Value> = c
        .listeners
        .iter()
        .map(|l| {
            json!({
                "listen": listen(&l.listen),
                "protocol": protocol(l.protocol),
                "route": super::export::route_json(&l.route),
                "backlog": l.backlog,
                "max_clients": l.max_clients,
                "reuseport": l.reuseport,
                "max_request_bytes": l.max_request_bytes,
                "client_idle_timeout": l.client_idle_timeout.map(duration),
                "client_request_timeout": duration(l.client_request_timeout.unwrap_or(Duration::ZERO)),
                "max_client_output": l.max_client_output,
                "coalesce_misses": l.coalesce_misses.then_some(true),
                "tls": l.tls.as_ref().map(tls),
                "users": (!l.users.is_empty()).then(|| l.users.iter().map(|u| json!({
                    "name": u.name,
                    "password": u.password,
                    "pools": u.pools,
                    "commands": u.commands,
                })).collect::<Vec<_>>()),
                "hot_keys": l.hot_keys.as_ref().map(|h| json!({
                    "threshold": format!("{}/s", h.threshold),
                    "local_cache": h.local_cache.map(|c| json!({
                        "ttl": duration(c.ttl),
                        "capacity": c.capacity,
                    })),
                    "split": h.split,
                })),
            })
        })
        .collect();
    json!({
        "admin": c.admin.map(|a| json!({ "listen": a.to_string(), "token": c.admin_token })),
        "workers": c.workers,
        "log": log_json(&c.log),
        "pools": pools,
        "listeners": listeners,
    })
}

/// The converted config as a YAML file, with a header saying where it came from.
pub fn to_native_yaml(c: &Config) -> String {
    let mut out = format!(
        "# kvrouter format, converted by `kvrouter convert` from {} ({} format).\n\
         # Every pool keeps its hash, distribution, hash_tag and servers (names and weights), so\n\
         # every key is placed where the original places it; each setting is written out.\n",
        c.file.display(),
        match c.format {
            super::Format::Twemproxy => "twemproxy",
            super::Format::Native => "kvrouter",
        }
    );
    if c.format == super::Format::Twemproxy {
        out.push_str(
            "# One difference in behaviour: a kvrouter pool without auto_eject_hosts marks a failing\n\
             # server down (TKO, after failure_limit failures, retried every retry_timeout) and fails\n\
             # its requests at once instead of waiting on it; the ring never changes, as in twemproxy.\n",
        );
    }
    emit(&mut out, &to_native(c), 0);
    out
}

/// Block YAML for objects and lists of objects, flow (JSON, a subset of YAML) for lists of
/// scalars and for route trees' leaves; `null` members are left out.
fn emit(out: &mut String, v: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => {
            let mut members: Vec<(&String, &Value)> = m.iter().collect();
            members.sort_by_key(|(k, _)| FIRST.iter().position(|f| f == k).unwrap_or(FIRST.len()));
            for (k, v) in members {
                let empty = v
                    .as_object()
                    .is_some_and(|o| o.values().all(Value::is_null));
                if v.is_null() || empty {
                    continue;
                }
                let k = key(k);
                if is_block(v) {
                    let _ = writeln!(out, "{pad}{k}:");
                    emit(out, v, indent + 2);
                } else {
                    let _ = writeln!(out, "{pad}{k}: {}", flow(v));
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                if is_block(item) {
                    // The first member on the dash's line, the rest aligned under it.
                    let mut inner = String::new();
                    emit(&mut inner, item, indent + 2);
                    let _ = write!(out, "{pad}- {}", &inner[indent + 2..]);
                } else {
                    let _ = writeln!(out, "{pad}- {}", flow(item));
                }
            }
        }
        scalar => {
            let _ = writeln!(out, "{pad}{}", flow(scalar));
        }
    }
}

/// Members written before the others (which follow in name order), so a file reads top-down:
/// the pools before the listeners that route to them, what a pool or listener is before how.
const FIRST: [&str; 10] = [
    "admin",
    "workers",
    "log",
    "pools",
    "listeners",
    "listen",
    "protocol",
    "route",
    "servers",
    "cluster",
];

/// Non-empty objects, and lists holding an object, are written in block style.
fn is_block(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.values().any(|v| !v.is_null()),
        Value::Array(a) => a.iter().any(Value::is_object),
        _ => false,
    }
}

/// A value in flow style: JSON, with nulls left out of objects.
fn flow(v: &Value) -> String {
    match v {
        Value::String(s) if plain(s) => s.clone(),
        Value::Object(m) => {
            let parts: Vec<String> = m
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{}: {}", key(k), flow(v)))
                .collect();
            format!("{{ {} }}", parts.join(", "))
        }
        Value::Array(a) => {
            let parts: Vec<String> = a.iter().map(flow).collect();
            format!("[{}]", parts.join(", "))
        }
        other => other.to_string(),
    }
}

fn key(k: &str) -> String {
    if plain(k) {
        k.to_string()
    } else {
        Value::String(k.to_string()).to_string()
    }
}

/// A string YAML reads back as the same string without quotes: a conservative set (words of
/// letters, digits, `_`, `-`, `.`, `/`, starting with a letter), never a YAML keyword.
fn plain(s: &str) -> bool {
    const KEYWORDS: [&str; 11] = [
        "true", "false", "null", "yes", "no", "on", "off", "y", "n", "~", "nan",
    ];
    s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'))
        && !KEYWORDS.contains(&s.to_ascii_lowercase().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Every example config converts to one that loads and converts to itself: nothing is
    /// lost or changed on the way (placement included: hash, distribution, tag, servers).
    #[test]
    fn every_example_config_round_trips() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("yml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let c = Config::parse_with(&path, &text, &|_, p| {
                Ok(std::net::SocketAddr::from(([127, 0, 0, 1], p)))
            })
            .unwrap();
            let yaml = to_native_yaml(&c);
            let back = Config::parse_with(&path, &yaml, &|_, p| {
                Ok(std::net::SocketAddr::from(([127, 0, 0, 1], p)))
            })
            .unwrap_or_else(|e| panic!("{}: {e}\n{yaml}", path.display()));
            assert_eq!(back.format, super::super::Format::Native);
            assert_eq!(to_native(&back), to_native(&c), "{}", path.display());
            assert_eq!(c.pools.len(), back.pools.len());
            for a in &c.pools {
                let b = back.pool(&a.name).unwrap();
                assert_eq!(
                    (&a.name, a.hash, a.hash_tag, a.distribution, a.timeout),
                    (&b.name, b.hash, b.hash_tag, b.distribution, b.timeout)
                );
                let names = |p: &PoolConfig| -> Vec<(String, u32)> {
                    p.servers
                        .iter()
                        .map(|s| (s.placement_name(), s.weight))
                        .collect()
                };
                assert_eq!(names(a), names(b));
            }
            n += 1;
        }
        assert!(n >= 5, "only {n} example configs found");
    }

    #[test]
    fn durations_keep_their_precision() {
        assert_eq!(duration(Duration::from_secs(30)), "30s");
        assert_eq!(duration(Duration::from_millis(400)), "400ms");
        assert_eq!(duration(Duration::from_micros(1500)), "1500us");
        assert_eq!(duration(Duration::ZERO), "0s");
    }

    #[test]
    fn strings_are_quoted_unless_plain() {
        assert_eq!(flow(&json!("memcache")), "memcache");
        assert_eq!(flow(&json!("127.0.0.1:1:1 a")), "\"127.0.0.1:1:1 a\"");
        assert_eq!(flow(&json!("true")), "\"true\"");
        assert_eq!(flow(&json!("{}")), "\"{}\"");
        assert_eq!(key("session:"), "\"session:\"");
    }
}
