//! The admin API of a running kvrouter in front of real memcached: `/metrics` values under
//! traffic (checked against what the test sent and against the memcached-style `stats`),
//! `promtool check metrics`, `/pools`, `/hotkeys`, `/config` and `/healthz`.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use common::{
    dead_port, free_port, http_get, kvrouter_admin, mc_stat, memcached, metric, scrape, wait_for,
    Mc, Proc, TempDir,
};

struct Setup {
    _dir: TempDir,
    _backends: Vec<Proc>,
    proxy: Proc,
    admin: SocketAddr,
    /// Listener of pool `users` (two live servers) and of pool `mixed` (one live, one dead).
    users: SocketAddr,
    mixed: SocketAddr,
}

fn setup() -> Setup {
    let dir = TempDir::new();
    let a = memcached();
    let b = memcached();
    let c = memcached();
    let (pu, pm) = (free_port(), free_port());
    let dead = dead_port();
    let yaml = format!(
        "workers: 2
pools:
  users:
    protocol: memcache
    servers: [\"{}:1 mc-a\", \"{}:1 mc-b\"]
  mixed:
    protocol: memcache
    timeout: 500ms
    redis_auth: sekrit-password
    servers: [\"{}:1 mc-live\", \"127.0.0.1:{dead}:1 mc-dead\"]
listeners:
  - {{ listen: 127.0.0.1:{pu}, protocol: memcache, route: users }}
  - {{ listen: 127.0.0.1:{pm}, protocol: memcache, route: mixed }}
",
        a.addr, b.addr, c.addr
    );
    let users: SocketAddr = format!("127.0.0.1:{pu}").parse().unwrap();
    let mixed: SocketAddr = format!("127.0.0.1:{pm}").parse().unwrap();
    let (proxy, admin) = kvrouter_admin(&dir, &yaml, users);
    Setup {
        _dir: dir,
        _backends: vec![a, b, c],
        proxy,
        admin,
        users,
        mixed,
    }
}

#[test]
fn metrics_count_traffic_and_pass_promtool() {
    let s = setup();
    let lu = s.users.to_string();
    let lm = s.mixed.to_string();
    let mut c = Mc::connect(s.users);
    for i in 0..50 {
        assert_eq!(c.set(&format!("k{i}"), b"v"), "STORED");
    }
    for i in 0..50 {
        assert_eq!(c.get(&format!("k{i}")).as_deref(), Some(&b"v"[..]));
    }
    for i in 0..20 {
        assert_eq!(c.get(&format!("missing{i}")), None);
    }
    // One multi-get across both servers: 10 hits, 2 misses.
    let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    c.send(format!("get {} nope1 nope2\r\n", keys.join(" ")).as_bytes());
    assert_eq!(c.values().unwrap().len(), 10);
    c.send(b"bogus command\r\n");
    assert_eq!(c.line(), "ERROR");

    // The mixed pool: a multi-get over a live and a dead server answers the dead one's keys as
    // misses (counted as failed keys); single requests to the dead server fail to connect.
    let mut m = Mc::connect(s.mixed);
    let mkeys: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    for k in &mkeys {
        m.send(format!("set {k} 0 0 1\r\nx\r\n").as_bytes());
        let l = m.line();
        assert!(l == "STORED" || l.starts_with("SERVER_ERROR"), "{l}");
    }
    m.send(format!("get {}\r\n", mkeys.join(" ")).as_bytes());
    let got = m.values().unwrap();
    assert!(!got.is_empty() && got.len() < mkeys.len(), "{}", got.len());
    let failed_keys = mc_stat(&mut m, "get_failed_keys");
    assert_eq!(failed_keys, (mkeys.len() - got.len()) as u64);

    let samples = scrape(s.admin);
    let v = |name: &str, labels: &[(&str, &str)]| metric(&samples, name, labels).unwrap_or(-1.0);
    // Per listener: requests by command and result, keys by result, client connections.
    let req = "kvrouter_requests_total";
    assert_eq!(
        v(
            req,
            &[("listener", &lu), ("command", "set"), ("result", "ok")]
        ),
        50.0
    );
    assert_eq!(
        v(
            req,
            &[("listener", &lu), ("command", "get"), ("result", "ok")]
        ),
        71.0
    );
    assert_eq!(
        v(
            req,
            &[("listener", &lu), ("command", "get"), ("result", "error")]
        ),
        0.0
    );
    assert_eq!(
        v(
            req,
            &[
                ("listener", &lu),
                ("command", "invalid"),
                ("result", "client_error")
            ]
        ),
        1.0
    );
    let keys_m = "kvrouter_get_keys_total";
    assert_eq!(v(keys_m, &[("listener", &lu), ("result", "hit")]), 60.0);
    assert_eq!(v(keys_m, &[("listener", &lu), ("result", "miss")]), 22.0);
    assert_eq!(v(keys_m, &[("listener", &lu), ("result", "failed")]), 0.0);
    // This client; the harness's readiness probe connected and left (its close may still be
    // on its way through the worker).
    wait_for(5, "the probe connection to be closed", || {
        let now = metric(
            &scrape(s.admin),
            "kvrouter_client_connections",
            &[("listener", &lu)],
        );
        (now == Some(1.0)).then_some(())
    });
    assert_eq!(
        v("kvrouter_client_connections_total", &[("listener", &lu)]),
        2.0
    );
    let set_errors = v(
        req,
        &[("listener", &lm), ("command", "set"), ("result", "error")],
    );
    let set_ok = v(
        req,
        &[("listener", &lm), ("command", "set"), ("result", "ok")],
    );
    assert!(set_errors > 0.0 && set_ok > 0.0, "{set_errors} {set_ok}");
    assert_eq!(set_errors + set_ok, 40.0);

    // Per pool and server: every request queued was answered and timed, nothing in flight.
    let users_requests = v("kvrouter_server_requests_total", &[("pool", "users")]);
    // 50 sets + 70 single gets + the multi-get's 2 parts.
    assert_eq!(users_requests, 122.0);
    for server in ["mc-a", "mc-b"] {
        let l = [("pool", "users"), ("server", server)];
        let n = v("kvrouter_server_requests_total", &l);
        assert!(n > 10.0, "{server}: {n}");
        assert_eq!(v("kvrouter_server_latency_seconds_count", &l), n);
        assert!(v("kvrouter_server_latency_seconds_sum", &l) > 0.0);
        assert_eq!(v("kvrouter_server_inflight_requests", &l), 0.0);
        assert_eq!(v("kvrouter_server_up", &l), 1.0);
        assert_eq!(v("kvrouter_server_errors_total", &l), 0.0);
    }
    let dead = [("pool", "mixed"), ("server", "mc-dead")];
    let dead_connect = v(
        "kvrouter_server_errors_total",
        &[
            ("pool", "mixed"),
            ("server", "mc-dead"),
            ("kind", "connect"),
        ],
    );
    let dead_down = v(
        "kvrouter_server_errors_total",
        &[("pool", "mixed"), ("server", "mc-dead"), ("kind", "down")],
    );
    // The first request to the dead server found it refusing connections, which marks it down
    // (hard TKO); every later one failed at once as `down`. The multi-get's part too.
    assert!(dead_connect >= 1.0, "{dead_connect}");
    assert_eq!(dead_connect + dead_down, set_errors + 1.0);
    assert_eq!(
        v("kvrouter_server_requests_total", &dead),
        dead_connect + dead_down
    );
    assert_eq!(v("kvrouter_server_inflight_requests", &dead), 0.0);
    assert_eq!(
        v("kvrouter_pool_get_failed_keys_total", &[("pool", "mixed")]),
        failed_keys as f64
    );
    // Reloads: none yet, both results present.
    assert_eq!(v("kvrouter_config_reloads_total", &[("result", "ok")]), 0.0);
    assert_eq!(
        v("kvrouter_config_reloads_total", &[("result", "failed")]),
        0.0
    );
    assert_eq!(v("kvrouter_config_generation", &[]), 1.0);
    // The process collector.
    assert!(v("process_resident_memory_bytes", &[]) > 1e6);
    assert!(v("process_cpu_seconds_total", &[]) >= 0.0);
    assert!(v("process_open_fds", &[]) > 0.0);
    // No key ever becomes a label.
    let (_, text) = http_get(s.admin, "/metrics");
    for k in ["k1", "missing1", "m1", "nope1"] {
        assert!(!text.contains(&format!("\"{k}\"")), "key {k} in metrics");
    }
    assert!(!text.contains("sekrit"));

    // promtool's linter accepts the exposition.
    let promtool = "/usr/bin/promtool";
    assert!(
        std::path::Path::new(promtool).exists(),
        "{promtool} is missing: apt-get install prometheus (scripts/test and .ci/run install it)"
    );
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(s.proxy);
}

#[test]
fn admin_pools_hotkeys_config_healthz() {
    let s = setup();
    let mut c = Mc::connect(s.users);
    for i in 0..10 {
        assert_eq!(c.set(&format!("p{i}"), b"v"), "STORED");
    }
    let (status, body) = http_get(s.admin, "/pools");
    assert_eq!(status, 200);
    let pools: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(pools["generation"], 1);
    let users = &pools["pools"][0];
    assert_eq!(users["name"], "users");
    assert_eq!(users["listeners"][0], s.users.to_string());
    let servers = users["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 2);
    assert_eq!(servers[0]["name"], "mc-a");
    assert_eq!(servers[0]["health"], "up");
    let total: u64 = servers
        .iter()
        .map(|s| s["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 10);
    assert_eq!(servers[0]["errors"]["timeout"], 0);
    assert_eq!(pools["pools"][1]["servers"][1]["name"], "mc-dead");

    let (status, body) = http_get(s.admin, "/hotkeys");
    assert_eq!(status, 200);
    let hot: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(hot["enabled"], false);
    assert_eq!(hot["hot_keys"].as_array().unwrap().len(), 0);
    assert_eq!(hot["listeners"].as_array().unwrap().len(), 0, "{hot}");

    let (status, body) = http_get(s.admin, "/config");
    assert_eq!(status, 200);
    assert!(!body.contains("sekrit"), "secret leaked: {body}");
    let conf: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(conf["pools"]["mixed"]["redis_auth"], "<redacted>");
    assert_eq!(
        conf["pools"]["users"]["redis_auth"],
        serde_json::Value::Null
    );
    assert_eq!(conf["pools"]["users"]["servers"][1]["name"], "mc-b");
    assert_eq!(conf["pools"]["mixed"]["timeout_ms"], 500);
    assert_eq!(conf["workers"], 2);
    assert_eq!(conf["listeners"][1]["listen"], s.mixed.to_string());

    // Pool `mixed` still has a live server: healthy.
    assert_eq!(http_get(s.admin, "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(http_get(s.admin, "/nope").0, 404);
}
