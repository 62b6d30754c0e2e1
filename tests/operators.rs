//! What operators see: `/healthz` knows from the start whether a pool's servers answer (no
//! client traffic needed); `/pools` and the metrics tell a server marked down (TKO, soft or
//! hard) from an ejected one and from one in service; texts that must agree with the code.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::{
    dead_port, free_port, http_get, kvrouter_admin, kvrouter_bin, memcached, memcached_at, metric,
    redis_server, scrape, signal, wait_for, Mc, TempDir,
};

fn listen() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

fn server_health(admin: SocketAddr, pool: &str, server: &str) -> String {
    let (code, body) = http_get(admin, "/pools");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let p = v["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pool)
        .unwrap();
    let find = |list: &serde_json::Value| -> Option<String> {
        list.as_array()?
            .iter()
            .find(|s| s["name"] == server)
            .map(|s| s["health"].as_str().unwrap().to_string())
    };
    find(&p["servers"])
        .or_else(|| {
            p["servers"]
                .as_array()
                .unwrap()
                .iter()
                .find_map(|s| find(&s["replicas"]))
        })
        .unwrap_or_else(|| panic!("no server {server} in {body}"))
}

fn up(admin: SocketAddr, pool: &str, server: &str) -> Option<f64> {
    metric(
        &scrape(admin),
        "kvrouter_server_up",
        &[("pool", pool), ("server", server)],
    )
}

fn state(admin: SocketAddr, pool: &str, server: &str, state: &str) -> Option<f64> {
    metric(
        &scrape(admin),
        "kvrouter_server_state",
        &[("pool", pool), ("server", server), ("state", state)],
    )
}

#[test]
fn healthz_knows_a_refusing_server_before_any_request() {
    let dir = TempDir::new();
    let port = dead_port();
    let addr = listen();
    let yaml = format!(
        "pools:\n  solo: {{ protocol: memcache, servers: [\"127.0.0.1:{port}:1 m\"], retry_timeout: 200ms }}\nlisteners:\n  - {{ listen: {addr}, protocol: memcache, route: solo }}\n"
    );
    let (_proxy, admin) = kvrouter_admin(&dir, &yaml, addr);
    // No client has sent anything: the first check found the refusal.
    let (code, body) = http_get(admin, "/healthz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("solo"), "{body}");
    assert_eq!(server_health(admin, "solo", "m"), "hard_tko");
    assert_eq!(up(admin, "solo", "m"), Some(0.0));
    assert_eq!(state(admin, "solo", "m", "hard_tko"), Some(1.0));
    assert_eq!(state(admin, "solo", "m", "up"), Some(0.0));
    // The server comes up: the probe finds it, still without client traffic.
    let _server = memcached_at(port);
    wait_for(10, "healthz 200 once the server answers", || {
        (http_get(admin, "/healthz").0 == 200).then_some(())
    });
    assert_eq!(server_health(admin, "solo", "m"), "up");
    assert_eq!(up(admin, "solo", "m"), Some(1.0));
    assert_eq!(state(admin, "solo", "m", "up"), Some(1.0));
}

#[test]
fn healthz_is_ready_before_any_request_when_the_server_answers() {
    let server = memcached();
    let dir = TempDir::new();
    let addr = listen();
    let yaml = format!(
        "pools:\n  solo: {{ protocol: memcache, servers: [\"{}:1 m\"] }}\nlisteners:\n  - {{ listen: {addr}, protocol: memcache, route: solo }}\n",
        server.addr
    );
    let (_proxy, admin) = kvrouter_admin(&dir, &yaml, addr);
    assert_eq!(http_get(admin, "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(server_health(admin, "solo", "m"), "up");
}

#[test]
fn a_soft_tko_shows_in_pools_and_metrics() {
    let server = memcached();
    let dir = TempDir::new();
    let addr = listen();
    let yaml = format!(
        "pools:\n  solo: {{ protocol: memcache, servers: [\"{}:1 m\"], timeout: 100ms, failure_limit: 1, retry_timeout: 200ms }}\nlisteners:\n  - {{ listen: {addr}, protocol: memcache, route: solo }}\n",
        server.addr
    );
    let (_proxy, admin) = kvrouter_admin(&dir, &yaml, addr);
    assert_eq!(up(admin, "solo", "m"), Some(1.0));
    signal(&server, libc::SIGSTOP);
    let mut c = Mc::connect(addr);
    c.send(b"get k\r\n");
    assert!(c.line().starts_with("SERVER_ERROR"));
    assert_eq!(server_health(admin, "solo", "m"), "soft_tko");
    assert_eq!(up(admin, "solo", "m"), Some(0.0));
    assert_eq!(state(admin, "solo", "m", "soft_tko"), Some(1.0));
    assert_ne!(http_get(admin, "/healthz").0, 200);
    signal(&server, libc::SIGCONT);
    wait_for(10, "probe puts it back", || {
        (server_health(admin, "solo", "m") == "up").then_some(())
    });
    assert_eq!(up(admin, "solo", "m"), Some(1.0));
}

#[test]
fn replicas_have_server_up_too() {
    let (primary, replica) = (redis_server(), redis_server());
    let dead = dead_port();
    let dir = TempDir::new();
    let addr = listen();
    let yaml = format!(
        "pools:\n  main:\n    protocol: redis\n    servers: [\"{}:1 r0\"]\n    replicas: {{ r0: [\"{}\", \"127.0.0.1:{dead}\"] }}\nlisteners:\n  - {{ listen: {addr}, protocol: redis, route: main }}\n",
        primary.addr, replica.addr
    );
    let (_proxy, admin) = kvrouter_admin(&dir, &yaml, addr);
    let live = format!("r0/replica/{}", replica.addr);
    let gone = format!("r0/replica/127.0.0.1:{dead}");
    assert_eq!(up(admin, "main", "r0"), Some(1.0));
    assert_eq!(up(admin, "main", &live), Some(1.0));
    wait_for(5, "the refusing replica marked down", || {
        (up(admin, "main", &gone) == Some(0.0)).then_some(())
    });
    assert_eq!(server_health(admin, "main", &gone), "hard_tko");
    assert_eq!(server_health(admin, "main", &live), "up");
}

#[test]
fn a_missing_config_file_is_reported_without_a_position() {
    let dir = TempDir::new();
    let missing = dir.0.join("nope.yml");
    let out = Command::new(kvrouter_bin())
        .arg("-t")
        .arg("-c")
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!("{}: cannot read: ", missing.display());
    assert!(err.contains(&want), "{err}");
    assert!(!err.contains(":0:0"), "{err}");
}

#[test]
fn verbosity_levels_agree_in_help_readme_and_code() {
    use kvrouter::logging::level_for_verbosity;
    let levels = "0-3 error, 4 warn, 5-6 info";
    for (v, l) in [
        (3, "error"),
        (4, "warn"),
        (5, "info"),
        (6, "info"),
        (7, "debug"),
        (8, "trace"),
    ] {
        assert_eq!(level_for_verbosity(v), l);
    }
    let help = Command::new(kvrouter_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(help.contains(levels), "{help}");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let readme = readme.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(readme.contains(levels));
    let failover = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/redis-failover.yml"
    ))
    .unwrap();
    assert!(
        !failover.contains("not implemented"),
        "stale comment in redis-failover.yml"
    );
}

#[test]
fn a_reload_checks_the_servers_it_brings() {
    let server = memcached();
    let dir = TempDir::new();
    let (addr, addr2) = (listen(), listen());
    let port = dead_port();
    let one = format!(
        "pools:\n  a: {{ protocol: memcache, servers: [\"{}:1 m\"] }}\nlisteners:\n  - {{ listen: {addr}, protocol: memcache, route: a }}\n",
        server.addr
    );
    let conf = dir.write("kv.yml", &one);
    let (proxy, admin) = common::kvrouter_conf(&conf, addr, &[]);
    assert_eq!(http_get(admin, "/healthz").0, 200);
    let two = format!("{one}  - {{ listen: {addr2}, protocol: memcache, route: b }}\n").replace(
        "pools:\n",
        &format!("pools:\n  b: {{ protocol: memcache, servers: [\"127.0.0.1:{port}:1 gone\"] }}\n"),
    );
    common::replace_file(&conf, &two);
    signal(&proxy, libc::SIGHUP);
    // No client of the new listener has sent anything.
    let body = wait_for(10, "healthz 503 for the new pool", || {
        let (code, body) = http_get(admin, "/healthz");
        (code == 503).then_some(body)
    });
    assert!(body.contains("pool b"), "{body}");
    assert_eq!(server_health(admin, "b", "gone"), "hard_tko");
}
