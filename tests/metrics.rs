//! The admin API of a running kvrouter in front of real memcached: `/metrics` values under
//! traffic (checked against what the test sent and against the memcached-style `stats`),
//! `promtool check metrics`, `/pools`, `/hotkeys`, `/config` and `/healthz`; and the request
//! counts of Redis listeners in front of real redis-servers.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    dead_port, free_port, http_get, kvrouter_admin, mc_stat, memcached, metric, redis_server,
    scrape, wait_for, Mc, Proc, Resp, Sample, TempDir,
};

/// `promtool check metrics` accepts the exposition.
fn promtool_check(text: &str) {
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
}

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
    // The first check of the dead server (when the config was loaded) found it refusing
    // connections, which marks it down (hard TKO): requests fail at once as `down` (the
    // multi-get's part too), or as `connect` if one raced that check.
    assert!(dead_down >= 1.0, "{dead_down}");
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
    promtool_check(&text);
    // A memcached listener has memcached command names only.
    let samples = parse(&text);
    let mc_series = requests_of(&samples, &lu);
    assert_eq!(mc_series.len(), 26 * 3);
    assert!(mc_series.iter().all(|s| label(s, "protocol") == "memcache"));
    drop(s.proxy);
}

fn parse(text: &str) -> Vec<Sample> {
    common::parse_metrics(text)
}

fn label<'a>(s: &'a Sample, name: &str) -> &'a str {
    s.labels
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

/// The `kvrouter_requests_total` samples of one listener.
fn requests_of<'a>(samples: &'a [Sample], listener: &str) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| s.name == "kvrouter_requests_total" && label(s, "listener") == listener)
        .collect()
}

/// A backend that accepts connections and never answers (kvrouter's requests to it time out),
/// until the returned flag is set or 30 s have passed.
fn silent_server() -> (SocketAddr, Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let t = std::thread::spawn(move || {
        let mut held = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
            match l.accept() {
                Ok((c, _)) => held.push(c),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    (addr, stop, t)
}

#[test]
fn redis_requests_are_counted_by_command_and_result() {
    let dir = TempDir::new();
    let (a, b, live) = (redis_server(), redis_server(), redis_server());
    let (silent, silent_stop, silent_thread) = silent_server();
    let (pr, pf) = (free_port(), free_port());
    let yaml = format!(
        "workers: 2
pools:
  cache:
    protocol: redis
    servers: [\"{}:1 r-a\", \"{}:1 r-b\"]
  flaky:
    protocol: redis
    timeout: 200ms
    servers: [\"{}:1 r-live\", \"{silent}:1 r-silent\"]
listeners:
  - {{ listen: 127.0.0.1:{pr}, protocol: redis, route: cache }}
  - {{ listen: 127.0.0.1:{pf}, protocol: redis, route: flaky }}
",
        a.addr, b.addr, live.addr
    );
    let rl: SocketAddr = format!("127.0.0.1:{pr}").parse().unwrap();
    let rf: SocketAddr = format!("127.0.0.1:{pf}").parse().unwrap();
    let (proxy, admin) = kvrouter_admin(&dir, &yaml, rl);
    let (lr, lf) = (rl.to_string(), rf.to_string());

    let mut c = Resp::connect(rl);
    // Spread keys (short similar ones can all land on one server).
    let all: Vec<String> = (0..30)
        .map(|i| format!("metrics-key-{}", i * 7919))
        .collect();
    for (i, k) in all.iter().enumerate() {
        assert_eq!(c.cmd(&format!("SET {k} v{i}")), "OK");
    }
    for (i, k) in all.iter().enumerate() {
        assert_eq!(c.cmd(&format!("GET {k}")), format!("v{i}"));
    }
    for i in 0..10 {
        assert_eq!(c.cmd(&format!("GET missing{i}")), "(nil)");
    }
    // Which server holds which key, asked of the servers themselves.
    let on = |server: SocketAddr| -> Vec<String> {
        let mut d = Resp::connect(server);
        all.iter()
            .filter(|k| d.cmd(&format!("EXISTS {k}")) == ":1")
            .cloned()
            .collect()
    };
    let (on_a, on_b) = (on(a.addr), on(b.addr));
    assert!(!on_a.is_empty() && !on_b.is_empty(), "{on_a:?} {on_b:?}");
    assert_eq!(on_a.len() + on_b.len(), 30);
    // MGET over both servers: one request each, however many parts.
    for _ in 0..5 {
        let r = c.cmd(&format!("MGET {}", all.join(" ")));
        assert!(r.contains("v0") && r.contains("v29"), "{r}");
    }
    // 200 pipelined INCRs: each counted once.
    for _ in 0..200 {
        c.send(&["INCR", "counter"]);
    }
    for i in 1..=200 {
        assert_eq!(common::text(&c.read()), format!(":{i}"));
    }
    // Subcommands count under their container; unknown commands and subcommands as `other`.
    assert_eq!(c.cmd("CLIENT SETNAME metrics-test"), "OK");
    assert_eq!(c.cmd("CLIENT GETNAME"), "metrics-test");
    assert!(c.cmd("FOOBAR 1 2").starts_with("-ERR unknown command"));
    assert!(c
        .cmd("CLIENT NOSUCH")
        .starts_with("-ERR unknown subcommand"));
    // The client's mistakes, found by kvrouter (arity, keys on two servers) or by the server
    // (WRONGTYPE): client_error.
    assert!(c.cmd("GET").starts_with("-ERR wrong number of arguments"));
    let cross = c.cmd(&format!("RENAME {} {}", on_a[0], on_b[0]));
    assert!(cross.starts_with("-CROSSSLOT"), "{cross}");
    assert_eq!(c.cmd("LPUSH list x"), ":1");
    assert!(c.cmd("GET list").starts_with("-WRONGTYPE"));
    // A transaction: each queued command counts when queued (+QUEUED), EXEC by its reply.
    assert_eq!(c.cmd("MULTI"), "OK");
    assert_eq!(c.cmd(&format!("SET {} again", on_a[0])), "QUEUED");
    assert_eq!(c.cmd("EXEC"), "[OK]");
    // Not RESP: counted as invalid, and the connection is closed.
    let mut bad = Resp::connect(rl);
    bad.send_raw(b"*1\r\n$abc\r\n");
    assert!(common::text(&bad.read()).starts_with("-ERR Protocol error"));
    assert!(bad.closed());

    // A pool with a silent server: its keys time out (then fail fast once it is down).
    let mut f = Resp::connect(rf);
    let (mut ok, mut failed, mut timed_out) = (0.0, 0.0, false);
    for i in 0..20 {
        let r = f.cmd(&format!("GET flaky-key-{}", i * 7919));
        if r == "(nil)" {
            ok += 1.0;
        } else {
            assert!(r.starts_with(&format!("-ERR backend {silent} ")), "{r}");
            timed_out |= r.contains("timed out");
            failed += 1.0;
        }
    }
    assert!(ok > 0.0 && failed > 0.0 && timed_out, "{ok} {failed}");

    let (_, text) = http_get(admin, "/metrics");
    let samples = parse(&text);
    let v = |l: &str, cmd: &str, result: &str| {
        let labels = [("listener", l), ("command", cmd), ("result", result)];
        metric(&samples, "kvrouter_requests_total", &labels).unwrap_or(0.0)
    };
    let expected = [
        ("set", "ok", 31.0),
        ("get", "ok", 40.0),
        ("get", "client_error", 2.0),
        ("mget", "ok", 5.0),
        ("incr", "ok", 200.0),
        ("client", "ok", 2.0),
        ("other", "client_error", 2.0),
        ("rename", "client_error", 1.0),
        ("lpush", "ok", 1.0),
        ("multi", "ok", 1.0),
        ("exec", "ok", 1.0),
        ("invalid", "client_error", 1.0),
    ];
    for (cmd, result, n) in expected {
        assert_eq!(v(&lr, cmd, result), n, "{cmd} {result}");
    }
    // Nothing else was counted (no double counts), and only Redis names on Redis listeners.
    let series = requests_of(&samples, &lr);
    let total: f64 = series.iter().map(|s| s.value).sum();
    assert_eq!(total, expected.iter().map(|e| e.2).sum::<f64>());
    assert!(series.iter().all(|s| label(s, "protocol") == "redis"));
    assert!(!series.iter().any(|s| label(s, "command") == "gets"));
    // The backend failures: error; the live server's answers: ok.
    assert_eq!(v(&lf, "get", "error"), failed);
    assert_eq!(v(&lf, "get", "ok"), ok);
    assert_eq!(
        requests_of(&samples, &lf)
            .iter()
            .map(|s| s.value)
            .sum::<f64>(),
        20.0
    );
    promtool_check(&text);

    silent_stop.store(true, Ordering::Relaxed);
    silent_thread.join().unwrap();
    drop(proxy);
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
