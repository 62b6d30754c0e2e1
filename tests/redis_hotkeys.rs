//! Hot keys on a redis listener (plain pool) against three real redis-servers: a celebrity key
//! turns hot and is served from the local cache; writes through the proxy are never followed by
//! an older read; split copies spread its reads over several servers with no false misses. On
//! a route tree, copies go down the tree like their key.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{free_port, kvrouter_admin, redis_server, Proc, Resp, TempDir};

struct Setup {
    _dir: TempDir,
    backends: Vec<Proc>,
    proxy: SocketAddr,
    _p: Proc,
}

fn setup(hot_keys: &str) -> Setup {
    let backends: Vec<Proc> = (0..3).map(|_| redis_server()).collect();
    let dir = TempDir::new();
    let port = free_port();
    let yaml = format!(
        "workers: 1\npools:\n  r:\n    protocol: redis\n    servers: [{}]\nlisteners:\n  - listen: 127.0.0.1:{port}\n    protocol: redis\n    route: r\n    hot_keys: {hot_keys}\n",
        server_list(&backends, "r")
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (p, _admin) = kvrouter_admin(&dir, &yaml, addr);
    Setup {
        _dir: dir,
        backends,
        proxy: addr,
        _p: p,
    }
}

/// `"ADDR:1 NAMEi", ...` for a pool's `servers`.
fn server_list(backends: &[Proc], name: &str) -> String {
    let servers: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("\"{}:1 {name}{i}\"", b.addr))
        .collect();
    servers.join(", ")
}

fn gets_on(b: &Proc) -> u64 {
    let info = Resp::connect(b.addr).cmd("INFO commandstats");
    info.split("cmdstat_get:calls=")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// 600 reads of a hot split `key` (all `want`: no false miss) are served by at least two of
/// `backends`.
fn read_spread(c: &mut Resp, key: &str, want: &str, backends: &[Proc]) {
    let before: Vec<u64> = backends.iter().map(gets_on).collect();
    for _ in 0..600 {
        assert_eq!(c.cmd(&format!("GET {key}")), want, "no false miss");
    }
    let after: Vec<u64> = backends.iter().map(gets_on).collect();
    let serving = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| *a - *b > 30)
        .count();
    assert!(
        serving >= 2,
        "reads spread over servers: {before:?} -> {after:?}"
    );
}

/// Read `key` through the proxy at a high rate until it is hot (the detector needs a window).
fn heat(c: &mut Resp, key: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        for _ in 0..200 {
            assert_eq!(c.cmd(&format!("GET {key}")), want);
        }
    }
}

#[test]
fn a_hot_key_is_served_from_the_local_cache_and_writes_are_never_followed_by_old_reads() {
    let s = setup("{ threshold: 200/s, local_cache: { ttl: 500ms, capacity: 100 } }");
    let mut c = Resp::connect(s.proxy);
    assert_eq!(c.cmd("SET celebrity v0"), "OK");
    heat(&mut c, "celebrity", "v0");
    let before: u64 = s.backends.iter().map(gets_on).sum();
    let t = Instant::now();
    let mut n = 0;
    while t.elapsed() < Duration::from_millis(400) {
        assert_eq!(c.cmd("GET celebrity"), "v0");
        n += 1;
    }
    let after: u64 = s.backends.iter().map(gets_on).sum();
    assert!(n > 100, "{n} reads");
    assert!(
        after - before <= 3,
        "{n} reads cost {} backend GETs",
        after - before
    );
    // A write through the proxy: no later read returns the old value.
    for i in 1..20 {
        assert_eq!(c.cmd(&format!("SET celebrity v{i}")), "OK");
        assert_eq!(c.cmd("GET celebrity"), format!("v{i}"));
    }
    // A value written behind the proxy's back is seen within ttl.
    for b in &s.backends {
        Resp::connect(b.addr).cmd("SET celebrity behind");
    }
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(c.cmd("GET celebrity"), "behind");
}

#[test]
fn split_copies_spread_a_hot_keys_reads_without_false_misses() {
    let s = setup("{ threshold: 200/s, split: 8 }");
    let mut c = Resp::connect(s.proxy);
    assert_eq!(c.cmd("SET star shine"), "OK");
    heat(&mut c, "star", "shine");
    read_spread(&mut c, "star", "shine", &s.backends);
    // Copies carry a capped TTL.
    let copies: Vec<(usize, i64)> = s
        .backends
        .iter()
        .enumerate()
        .flat_map(|(i, b)| {
            let mut r = Resp::connect(b.addr);
            (0..8)
                .map(|n| {
                    let copy = kvrouter::hotkey::split::copy_key(b"star", n, None);
                    String::from_utf8(copy.to_vec()).unwrap()
                })
                .filter_map(|k| {
                    r.cmd(&format!("PTTL {k}"))
                        .trim_start_matches(':')
                        .parse::<i64>()
                        .ok()
                })
                .filter(|t| *t > 0)
                .map(|t| (i, t))
                .collect::<Vec<_>>()
        })
        .collect();
    let keys: Vec<String> = s
        .backends
        .iter()
        .map(|b| Resp::connect(b.addr).cmd("KEYS *"))
        .collect();
    assert!(!copies.is_empty(), "copies exist: {keys:?}");
    assert!(copies.iter().all(|(_, t)| *t <= 10_000), "{copies:?}");
    // A multi-key write (split over servers) removes every copy before it is acknowledged.
    assert_eq!(c.cmd("MSET star dimmer other-key x"), "OK");
    for b in &s.backends {
        assert_eq!(
            Resp::connect(b.addr).cmd("KEYS *copy*"),
            "[]",
            "copies deleted"
        );
    }
    assert_eq!(c.cmd("GET star"), "dimmer");
    // A write reaches the original and removes every copy: the next reads see it.
    assert_eq!(c.cmd("SET star dim"), "OK");
    for _ in 0..100 {
        assert_eq!(c.cmd("GET star"), "dim");
    }
    assert_eq!(c.cmd("DEL star"), ":1");
}

#[test]
fn split_copies_on_a_route_tree_follow_their_keys_prefix() {
    let hot: Vec<Proc> = (0..3).map(|_| redis_server()).collect();
    let rest = redis_server();
    let dir = TempDir::new();
    let port = free_port();
    let yaml = format!(
        "workers: 1\npools:\n  users: {{ protocol: redis, servers: [{}] }}\n  rest: {{ protocol: redis, servers: [\"{}:1\"] }}\nlisteners:\n  - listen: 127.0.0.1:{port}\n    protocol: redis\n    route: {{ prefix: {{ \"user:\": users, default: rest }} }}\n    hot_keys: {{ threshold: 200/s, split: 8 }}\n",
        server_list(&hot, "h"),
        rest.addr
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_p, _admin) = kvrouter_admin(&dir, &yaml, addr);
    let mut c = Resp::connect(addr);
    assert_eq!(c.cmd("SET user:star shine"), "OK");
    heat(&mut c, "user:star", "shine");
    let rest_before = gets_on(&rest);
    read_spread(&mut c, "user:star", "shine", &hot);
    assert_eq!(
        gets_on(&rest),
        rest_before,
        "no copy went to the default pool"
    );
    assert_eq!(
        Resp::connect(rest.addr).cmd("DBSIZE"),
        ":0",
        "nothing written to the default pool"
    );
    // A write through the tree reaches the original and removes every copy first.
    assert_eq!(c.cmd("SET user:star dim"), "OK");
    for b in &hot {
        assert_eq!(
            Resp::connect(b.addr).cmd("KEYS *copy*"),
            "[]",
            "copies deleted"
        );
    }
    for _ in 0..100 {
        assert_eq!(c.cmd("GET user:star"), "dim");
    }
}
