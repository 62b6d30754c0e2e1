//! The active config as JSON for the admin API's `GET /config`, with secrets redacted.
//!
//! This is a view for people and scripts (both formats alike, durations in milliseconds), not a
//! config file: secrets are redacted and the shape is not the config grammar. `kvrouter convert
//! FILE` writes a loadable kvrouter-format file.

use serde_json::{json, Value};

use super::{Config, Format, Protocol, Route};

/// What `/config` says about itself.
pub const NOT_A_CONFIG: &str = "a view of the active config (normalised, durations in ms, secrets redacted), not a config file: `kvrouter convert FILE` writes a loadable one";

/// What a secret reads as in `/config`.
pub const REDACTED: &str = "<redacted>";

pub(super) fn protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Memcache => "memcache",
        Protocol::Redis => "redis",
    }
}

impl Config {
    /// The config as JSON, normalised (both formats look alike, defaults filled in, durations
    /// in milliseconds), with `redis_auth` replaced by `<redacted>`.
    pub fn to_json_redacted(&self) -> Value {
        let pools: serde_json::Map<String, Value> = self
            .pools
            .iter()
            .map(|p| {
                let servers: Vec<Value> = p
                    .servers
                    .iter()
                    .map(|s| {
                        json!({
                            "name": s.placement_name(),
                            "address": s.address(),
                            "weight": s.weight,
                        })
                    })
                    .collect();
                let v = json!({
                    "protocol": protocol(p.protocol),
                    "hash": p.hash.name(),
                    "hash_tag": p.hash_tag.map(|t| String::from_utf8_lossy(&t).into_owned()),
                    "distribution": p.distribution.name(),
                    "timeout_ms": p.timeout.map(|t| t.as_millis() as u64),
                    "servers": servers,
                    "connections": p.connections,
                    "auto_eject_hosts": p.auto_eject_hosts,
                    "failure_limit": p.failure_limit,
                    "retry_timeout_ms": p.retry_timeout.as_millis() as u64,
                    "preconnect": p.preconnect,
                    "item_size_max": p.item_size_max,
                    "tcpkeepalive": p.tcpkeepalive,
                    "redis_auth": p.redis_auth.as_ref().map(|_| REDACTED),
                    "redis_db": p.redis_db,
                    "allow_commands": p.allow_commands,
                    "scripts": p.scripts,
                    "replicas": p
                        .servers
                        .iter()
                        .zip(&p.replicas)
                        .filter(|(_, r)| !r.is_empty())
                        .map(|(s, r)| {
                            let addrs: Vec<String> = r.iter().map(|r| r.address()).collect();
                            (s.placement_name(), json!(addrs))
                        })
                        .collect::<serde_json::Map<String, Value>>(),
                });
                (p.name.clone(), v)
            })
            .collect();
        let listeners: Vec<Value> = self
            .listeners
            .iter()
            .map(|l| {
                json!({
                    "listen": l.listen.to_string(),
                    "protocol": protocol(l.protocol),
                    "route": route_json(&l.route),
                    "users": l.users.iter().map(|u| json!({
                        "name": u.name,
                        "password": REDACTED,
                        "pools": u.pools,
                        "commands": u.commands,
                    })).collect::<Vec<_>>(),
                    "backlog": l.backlog,
                    "max_clients": l.max_clients,
                    "max_client_output": l.max_client_output,
                    "client_request_timeout_ms": l.client_request_timeout.map(|t| t.as_millis() as u64),
                    "reuseport": l.reuseport,
                    "hot_keys": l.hot_keys.as_ref().map(|h| json!({
                        "threshold_per_second": h.threshold,
                        "local_cache": h.local_cache.map(|c| json!({
                            "ttl_ms": c.ttl.as_millis() as u64,
                            "capacity": c.capacity,
                        })),
                        "split": h.split,
                    })),
                })
            })
            .collect();
        json!({
            "note": NOT_A_CONFIG,
            "file": self.file.display().to_string(),
            "format": match self.format {
                Format::Twemproxy => "twemproxy",
                Format::Native => "kvrouter",
            },
            "admin": self.admin.map(|a| a.to_string()),
            "admin_token": self.admin_token.as_ref().map(|_| REDACTED),
            "workers": self.workers,
            "log": log_json(&self.log),
            "pools": pools,
            "listeners": listeners,
        })
    }
}

/// `log:` as JSON, in the config grammar's shape.
pub(super) fn log_json(l: &super::LogConfig) -> Value {
    json!({
        "level": l.level,
        "file": l.file.as_ref().map(|f| f.display().to_string()),
        "format": l.format.map(|f| f.name()),
    })
}

/// A route tree as JSON, in the config grammar's shape.
pub(super) fn route_json(r: &Route) -> Value {
    let b = |r: &Route| route_json(r);
    let ob = |r: &Option<Box<Route>>| r.as_deref().map(route_json);
    match r {
        Route::Pool { name, .. } => json!({ "pool": name }),
        Route::Failover {
            children,
            limit,
            on,
            writes,
            ..
        } => {
            let kinds: Vec<&str> = [
                ("timeout", on.timeout),
                ("refused", on.refused),
                ("tko", on.tko),
                ("server_error", on.server_error),
            ]
            .iter()
            .filter(|(_, v)| *v)
            .map(|(k, _)| *k)
            .collect();
            let children: Vec<Value> = children.iter().map(b).collect();
            json!({ "failover": { "children": children, "limit": limit, "on": kinds, "writes": writes } })
        }
        Route::Gutter { pool, max_ttl, .. } => {
            json!({ "gutter": pool, "max_ttl": format!("{}ms", max_ttl.as_millis()) })
        }
        Route::Prefix {
            prefixes, default, ..
        } => {
            let mut m = serde_json::Map::new();
            for (p, r) in prefixes {
                m.insert(p.clone(), b(r));
            }
            if let Some(d) = ob(default) {
                m.insert("default".into(), d);
            }
            json!({ "prefix": m })
        }
        Route::Operation {
            get,
            set,
            delete,
            default,
            ..
        } => json!({ "operation": {
            "get": ob(get), "set": ob(set), "delete": ob(delete), "default": ob(default),
        }}),
        Route::AllSync {
            children, reply, ..
        } => {
            let children: Vec<Value> = children.iter().map(b).collect();
            let reply = match reply {
                crate::config::AllSyncReply::First => "first",
                crate::config::AllSyncReply::AllOk => "all_ok",
            };
            json!({ "all_sync": children, "reply": reply })
        }
        Route::Shadow {
            route,
            shadow,
            fraction,
            ..
        } => json!({ "shadow": { "route": b(route), "shadow": b(shadow), "fraction": fraction } }),
        Route::WarmUp {
            cold,
            warm,
            exptime,
            ..
        } => {
            json!({ "warm_up": { "cold": b(cold), "warm": b(warm), "exptime": super::convert::duration(*exptime) } })
        }
    }
}
