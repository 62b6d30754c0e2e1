//! Every panel query of dashboards/kvrouter.json returns data from a real Prometheus that
//! scrapes a running kvrouter under traffic against real memcached and redis-server; the
//! request panels show both protocols, and the failover, gutter, authentication and client-limit
//! panels show events that really happened (a pool on a dead port failing over to a gutter,
//! wrong passwords, idle clients closed).
//!
//! Needs /usr/bin/prometheus (Debian package `prometheus`; scripts/test and .ci/run install it).

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    dead_port, free_port, http_get, kvrouter_admin, memcached, redis_server, wait_port, Mc, Proc,
    Resp, TempDir,
};

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// Grafana's variables, as a person looking at the dashboard with "All" selected would get.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "10s")
        .replace("$__range", "1m")
        .replace("$__interval", "5s")
        .replace("${pool}", ".*")
        .replace("$pool", ".*")
        .replace("${instance}", ".*")
        .replace("$instance", ".*")
        .replace("${job}", ".*")
        .replace("$job", ".*")
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `/api/v1/query`: the series of the result.
fn query(prom: SocketAddr, expr: &str) -> Result<Vec<serde_json::Value>, String> {
    let (status, body) = http_get(prom, &format!("/api/v1/query?query={}", urlencode(expr)));
    if status != 200 {
        return Err(format!("HTTP {status}: {body}"));
    }
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    if v["status"] != "success" {
        return Err(body);
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// Whether a query's result shows what its panel is for: some data, and for the request
/// panels a series of each protocol.
fn shows(expr: &str, result: &[serde_json::Value]) -> bool {
    let has = |p: &str| result.iter().any(|s| s["metric"]["protocol"] == p);
    // Panels of events that are zero in a healthy fleet: a series that exists is not enough.
    let nonzero = || {
        result.iter().any(|s| {
            s["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)
        })
    };
    !result.is_empty()
        && (!expr.contains("kvrouter_requests_total") || (has("memcache") && has("redis")))
        && (!EVENT_METRICS.iter().any(|m| expr.contains(m)) || nonzero())
}

/// Counters the test's traffic makes move, whose panels must show a rate above zero.
const EVENT_METRICS: [&str; 4] = [
    "kvrouter_route_failovers_total",
    "kvrouter_route_gutter_requests_total",
    "kvrouter_auth_failures_total",
    "kvrouter_clients_dropped_total",
];

/// Every (panel title, query) of the dashboard, rows' nested panels included.
fn panel_queries(dash: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(panels: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            if p["type"] == "row" {
                walk(&p["panels"], out);
                continue;
            }
            let title = p["title"].as_str().unwrap_or("?").to_string();
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            assert!(!targets.is_empty(), "panel {title} has no query");
            for t in targets {
                let expr = t["expr"].as_str().expect("a PromQL expr").to_string();
                out.push((title.clone(), expr));
            }
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

#[test]
fn every_dashboard_panel_has_data_in_a_real_prometheus() {
    assert!(
        std::path::Path::new(PROMETHEUS).exists(),
        "{PROMETHEUS} is missing: install the Debian package `prometheus` (scripts/test and .ci/run do)"
    );
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dashboards/kvrouter.json"
    ))
    .unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let queries = panel_queries(&dash);
    assert!(queries.len() >= 26, "{} queries", queries.len());
    // The datasource is a variable, so the dashboard imports into any Grafana.
    let vars = dash["templating"]["list"].as_array().unwrap();
    assert!(vars
        .iter()
        .any(|v| v["type"] == "datasource" && v["name"] == "datasource"));
    assert!(!text.contains("\"uid\": \"prometheus\""));

    let dir = TempDir::new();
    let (a, b) = (memcached(), memcached());
    let r = redis_server();
    let (port, rport, fport, aport) = (free_port(), free_port(), free_port(), free_port());
    // `dead` has nothing listening: every request to it fails over to the `users` gutter. The
    // failover listener closes clients idle for 1 s; the auth listener wants a password.
    let yaml = format!(
        "pools:\n  users:\n    protocol: memcache\n    servers: [\"{}:1 mc-a\", \"{}:1 mc-b\"]\n  dead:\n    protocol: memcache\n    servers: [\"127.0.0.1:{}:1 dead-a\"]\n  sessions:\n    protocol: redis\n    servers: [\"{}:1 r-a\"]\nlisteners:\n  - {{ listen: 127.0.0.1:{port}, protocol: memcache, route: users, hot_keys: {{ threshold: 300/s, local_cache: {{ ttl: 100ms, capacity: 100 }}, split: 2 }} }}\n  - {{ listen: 127.0.0.1:{rport}, protocol: redis, route: sessions }}\n  - {{ listen: 127.0.0.1:{fport}, protocol: memcache, route: {{ failover: [dead, {{ gutter: users, max_ttl: 10s }}] }}, client_idle_timeout: 1s }}\n  - {{ listen: 127.0.0.1:{aport}, protocol: redis, route: sessions, users: [{{ name: default, password: dashboard-secret }}] }}\n",
        a.addr, b.addr, dead_port(), r.addr
    );
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let rlisten: SocketAddr = format!("127.0.0.1:{rport}").parse().unwrap();
    let flisten: SocketAddr = format!("127.0.0.1:{fport}").parse().unwrap();
    let alisten: SocketAddr = format!("127.0.0.1:{aport}").parse().unwrap();
    let (proxy, admin) = kvrouter_admin(&dir, &yaml, listen);

    // Traffic: sets, hits, misses and multi-gets from two clients, until the checks are done.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = Mc::connect(listen);
            let mut _other = Mc::connect(listen);
            let mut rc = Resp::connect(rlisten);
            let mut fc = Mc::connect(flisten);
            let mut ac = Resp::connect(alisten);
            let mut idle = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(40);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let k = format!("dash{}", i % 200);
                assert_eq!(c.set(&k, b"value"), "STORED");
                c.get(&k);
                c.get(&format!("absent{i}"));
                c.send(format!("get {k} dash{} absent\r\n", (i + 7) % 200).as_bytes());
                c.values().unwrap();
                // A celebrity key: it turns hot (local cache, split copies, shared reads) and
                // is written now and then (copy deletes).
                if i.is_multiple_of(100) {
                    assert_eq!(c.set("celebrity", b"value"), "STORED");
                }
                c.send(&b"get celebrity\r\n".repeat(10));
                for _ in 0..10 {
                    c.values().unwrap();
                }
                // Redis: writes, reads, a multi-key read, and now and then a bad request.
                assert_eq!(rc.cmd(&format!("SET {k} value")), "OK");
                assert_eq!(rc.cmd(&format!("GET {k}")), "value");
                rc.cmd(&format!("MGET {k} absent{i}"));
                if i.is_multiple_of(10) {
                    assert!(rc.cmd("NOSUCHCOMMAND").starts_with("-ERR unknown command"));
                    assert!(ac.cmd("AUTH wrong-password").starts_with("-WRONGPASS"));
                }
                // Failover to the gutter: the write and the read both land there.
                assert_eq!(fc.set(&k, b"gutter"), "STORED");
                assert_eq!(fc.get(&k).as_deref(), Some(&b"gutter"[..]));
                // Clients left idle, closed by client_idle_timeout (a few at a time).
                if i.is_multiple_of(100) && idle.len() < 20 {
                    idle.push(Mc::connect(flisten));
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    // One reload, so the reload panel has something to show.
    unsafe { libc::kill(proxy.child.id() as i32, libc::SIGHUP) };

    let prom_port = free_port();
    let prom_addr: SocketAddr = format!("127.0.0.1:{prom_port}").parse().unwrap();
    let conf = dir.write(
        "prometheus.yml",
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: kvrouter\n    static_configs:\n      - targets: [\"{admin}\"]\n"
        ),
    );
    let tsdb = dir.0.join("tsdb");
    let mut child = Command::new(PROMETHEUS)
        .arg(format!("--config.file={}", conf.display()))
        .arg(format!("--storage.tsdb.path={}", tsdb.display()))
        .arg(format!("--web.listen-address={prom_addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    wait_port(prom_addr, &mut child);
    let _prom = Proc {
        child,
        addr: prom_addr,
    };

    // Rates need a few scrapes; give every query up to 25 s to see data.
    let deadline = Instant::now() + Duration::from_secs(25);
    let mut pending: Vec<(String, String)> = queries;
    let mut last_error = String::new();
    while !pending.is_empty() && Instant::now() < deadline {
        pending.retain(|(title, expr)| match query(prom_addr, &substitute(expr)) {
            Ok(result) => !shows(expr, &result),
            Err(e) => {
                last_error = format!("{title}: {e}");
                true
            }
        });
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(
        pending.is_empty(),
        "panels without data (or without both protocols): {pending:#?}\nlast error: {last_error}"
    );
    // The scrape target was healthy throughout.
    let (_, body) = http_get(
        prom_addr,
        &format!("/api/v1/query?query={}", urlencode("up")),
    );
    assert!(body.contains("\"1\""), "{body}");
    drop(proxy);
}

#[test]
fn provisioning_and_scrape_examples_are_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dash = std::fs::read_to_string(format!(
        "{root}/dashboards/provisioning/dashboards/kvrouter.yml"
    ))
    .unwrap();
    assert!(dash.contains("type: file") && dash.contains("apiVersion: 1"));
    let ds = std::fs::read_to_string(format!(
        "{root}/dashboards/provisioning/datasources/prometheus.yml"
    ))
    .unwrap();
    assert!(ds.contains("type: prometheus"));
    let promtool = "/usr/bin/promtool";
    assert!(
        std::path::Path::new(promtool).exists(),
        "{promtool} is missing: install the Debian package `prometheus`"
    );
    let out = Command::new(promtool)
        .args(["check", "config"])
        .arg(format!("{root}/dashboards/prometheus.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
