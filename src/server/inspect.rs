//! What the admin endpoints show of the running proxy: `/pools` as JSON, and the gauges that
//! are computed when `/metrics` is scraped (server health). Read-only, off the request path.

use serde_json::{json, Value};

use super::pool::replica_name;
use super::Shared;
use crate::backend::connection::ServerSpec;
use crate::backend::health::{now_ms, HARD_TKO, SOFT_TKO};
use crate::backend::metrics::ERROR_KINDS;
use crate::config::Protocol;

/// Set the gauges that reflect state rather than events (each server's health, hot keys now),
/// and bring the hot-key counters up to date.
pub fn refresh_gauges(shared: &Shared) {
    let now = now_ms();
    let generation = shared.current();
    for l in &generation.listeners {
        if let Some(h) = &l.hot {
            h.export();
        }
    }
    for p in &generation.pools {
        for (s, (spec, name)) in p.specs.iter().zip(p.server_names()).enumerate() {
            let mut servers = vec![(spec, name.to_string())];
            for r in p.replicas.get(s).into_iter().flatten() {
                servers.push((r, replica_name(name, &r.address)));
            }
            for (spec, name) in servers {
                let state = state(spec, now);
                let f = &shared.families;
                f.server_up(&p.config.name, &name)
                    .set(i64::from(state == "up"));
                f.set_server_state(&p.config.name, &name, state);
            }
        }
    }
}

/// A server's health as `/pools` and `kvrouter_server_state` name it: ejected (twemproxy's
/// auto_eject_hosts), soft_tko / hard_tko (marked down: requests fail fast), or up.
fn state(spec: &ServerSpec, now: u64) -> &'static str {
    if spec.health.is_ejected(now) {
        return "ejected";
    }
    match spec.health.tko_state() {
        SOFT_TKO => "soft_tko",
        HARD_TKO => "hard_tko",
        _ => "up",
    }
}

/// One server's (or replica's) health and counters.
fn server_json(spec: &ServerSpec, name: &str, now: u64) -> Value {
    let m = &spec.metrics;
    let ejected = spec.health.is_ejected(now);
    let errors: serde_json::Map<String, Value> = ERROR_KINDS
        .iter()
        .zip(&m.errors)
        .map(|(k, c)| (k.to_string(), json!(c.get())))
        .collect();
    json!({
        "name": name,
        "address": spec.address,
        "health": state(spec, now),
        "ejected_for_ms": if ejected { spec.health.ejected_until().saturating_sub(now) } else { 0 },
        "consecutive_failures": spec.health.consecutive_failures(),
        "requests": m.requests.get(),
        "errors": errors,
        "ejections": m.ejections.get(),
        "inflight": m.inflight.get(),
        "latency": {
            "count": m.latency.get_sample_count(),
            "sum_seconds": m.latency.get_sample_sum(),
        },
    })
}

/// `GET /pools`: every pool of the active config with its servers, their health and counters,
/// and the listeners that route to it.
pub fn pools_json(shared: &Shared) -> Value {
    let now = now_ms();
    let generation = shared.current();
    let pools: Vec<Value> = generation
        .pools
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let servers: Vec<Value> = p
                .specs
                .iter()
                .zip(p.server_names())
                .zip(&p.config.servers)
                .enumerate()
                .map(|(s, ((spec, name), conf))| {
                    let mut v = server_json(spec, name, now);
                    v["weight"] = json!(conf.weight);
                    if let Some(replicas) = p.replicas.get(s).filter(|r| !r.is_empty()) {
                        v["replicas"] = replicas
                            .iter()
                            .map(|r| server_json(r, &replica_name(name, &r.address), now))
                            .collect();
                    }
                    v
                })
                .collect();
            let listeners: Vec<&str> = generation
                .listeners
                .iter()
                .filter(|l| l.pool == i)
                .map(|l| l.name.as_str())
                .collect();
            json!({
                "name": p.config.name,
                "protocol": match p.config.protocol {
                    Protocol::Memcache => "memcache",
                    Protocol::Redis => "redis",
                },
                "distribution": p.config.distribution.name(),
                "hash": p.config.hash.name(),
                "auto_eject_hosts": p.config.auto_eject_hosts,
                "has_live_server": p.has_live_server(),
                "listeners": listeners,
                "get_failed_keys": p.metrics.get_failed_keys.get(),
                "servers": servers,
            })
        })
        .collect();
    json!({
        "generation": generation.id,
        "config_file": generation.config.file.display().to_string(),
        "pools": pools,
    })
}
