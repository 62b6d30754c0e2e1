//! Route handles against real memcached pools: prefix, operation, all_sync, shadow, warm_up.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{free_port, kvrouter, memcached, Mc, Proc, TempDir};

struct Pools {
    _dir: TempDir,
    a: Proc,
    b: Proc,
    proxy: Proc,
}

/// Two one-server pools `a` and `b` behind a listener with `route`.
fn with_route(route: &str) -> Pools {
    let dir = TempDir::new();
    let (a, b) = (memcached(), memcached());
    let port = free_port();
    let yaml = format!(
        "pools:
  a: {{ protocol: memcache, servers: [\"{}:1\"], timeout: 500ms }}
  b: {{ protocol: memcache, servers: [\"{}:1\"], timeout: 500ms }}
listeners:
  - listen: 127.0.0.1:{port}
    protocol: memcache
    route: {route}
",
        a.addr, b.addr
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let proxy = kvrouter(&dir, &yaml, addr);
    Pools {
        _dir: dir,
        a,
        b,
        proxy,
    }
}

fn has(addr: SocketAddr, key: &str) -> Option<Vec<u8>> {
    Mc::connect(addr).get(key)
}

#[test]
fn prefix_routes_by_the_longest_matching_prefix() {
    let p = with_route(r#"{ prefix: { "user:": a, "user:vip:": b, default: b } }"#);
    let mut c = Mc::connect(p.proxy.addr);
    for (k, on_a) in [("user:1", true), ("user:vip:1", false), ("other", false)] {
        assert_eq!(c.set(k, k.as_bytes()), "STORED");
        assert_eq!(has(p.a.addr, k).is_some(), on_a, "{k}");
        assert_eq!(has(p.b.addr, k).is_some(), !on_a, "{k}");
    }
    // A multi-get across prefixes merges in key order.
    c.send(b"get other user:1 nope user:vip:1\r\n");
    let keys: Vec<String> = c.values().unwrap().into_iter().map(|(k, _, _)| k).collect();
    assert_eq!(keys, ["other", "user:1", "user:vip:1"]);
}

#[test]
fn operation_splits_gets_sets_and_deletes() {
    let p = with_route("{ operation: { get: a, set: { all_sync: [a, b], reply: all_ok }, delete: b, default: a } }");
    let mut c = Mc::connect(p.proxy.addr);
    assert_eq!(c.set("k", b"v"), "STORED");
    assert_eq!(has(p.a.addr, "k").unwrap(), b"v", "all_sync set reached a");
    assert_eq!(has(p.b.addr, "k").unwrap(), b"v", "all_sync set reached b");
    c.send(b"delete k\r\n");
    assert_eq!(c.line(), "DELETED");
    assert!(has(p.b.addr, "k").is_none(), "delete went to b");
    assert_eq!(has(p.a.addr, "k").unwrap(), b"v", "only to b");
    assert_eq!(c.get("k").unwrap(), b"v", "gets read a");
}

#[test]
fn all_sync_all_ok_reports_the_first_failure() {
    let p = with_route("{ all_sync: [a, b], reply: all_ok }");
    let mut c = Mc::connect(p.proxy.addr);
    assert_eq!(Mc::connect(p.b.addr).set("x", b"1"), "STORED");
    // add succeeds on a, fails on b (exists there): all_ok reports the failure.
    c.send(b"add x 0 0 1\r\n2\r\n");
    assert_eq!(c.line(), "NOT_STORED");
    assert_eq!(has(p.a.addr, "x").unwrap(), b"2");
    let q = with_route("{ all_sync: [a, b], reply: first }");
    assert_eq!(Mc::connect(q.b.addr).set("x", b"1"), "STORED");
    let mut c = Mc::connect(q.proxy.addr);
    c.send(b"add x 0 0 1\r\n2\r\n");
    assert_eq!(c.line(), "STORED", "first: a's reply");
}

#[test]
fn shadow_mirrors_traffic_and_drops_its_replies() {
    // The shadow is a dead port: the main reply must not wait on it.
    let dir = TempDir::new();
    let a = memcached();
    let dead = free_port();
    let shadow = memcached();
    let port = free_port();
    let yaml = format!(
        "pools:
  a: {{ protocol: memcache, servers: [\"{}:1\"], timeout: 500ms }}
  s: {{ protocol: memcache, servers: [\"{}:1\"], timeout: 500ms }}
  dead: {{ protocol: memcache, servers: [\"127.0.0.1:{dead}:1\"], timeout: 500ms }}
listeners:
  - listen: 127.0.0.1:{port}
    protocol: memcache
    route: {{ shadow: {{ route: a, shadow: s, fraction: 1.0 }} }}
  - listen: 127.0.0.1:{}
    protocol: memcache
    route: {{ shadow: {{ route: a, shadow: dead, fraction: 1.0 }} }}
",
        a.addr,
        shadow.addr,
        free_port()
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let proxy = kvrouter(&dir, &yaml, addr);
    let mut c = Mc::connect(proxy.addr);
    assert_eq!(c.set("m", b"1"), "STORED");
    let deadline = Instant::now() + Duration::from_secs(2);
    while has(shadow.addr, "m").is_none() {
        assert!(Instant::now() < deadline, "the shadow got the set");
        std::thread::sleep(Duration::from_millis(10));
    }
    let second: SocketAddr = yaml
        .lines()
        .filter(|l| l.contains("listen:"))
        .nth(1)
        .unwrap()
        .trim()
        .trim_start_matches("- listen: ")
        .parse()
        .unwrap();
    let mut c2 = Mc::connect(second);
    let t = Instant::now();
    assert_eq!(
        c2.set("n", b"1"),
        "STORED",
        "a dead shadow does not fail the request"
    );
    assert_eq!(c2.get("n").unwrap(), b"1");
    assert!(t.elapsed() < Duration::from_millis(300));
}

#[test]
fn warm_up_reads_warm_on_a_cold_miss_and_fills_cold() {
    let p = with_route("{ warm_up: { cold: a, warm: b, exptime: 60s } }");
    assert_eq!(Mc::connect(p.b.addr).set("w", b"warm"), "STORED");
    let mut c = Mc::connect(p.proxy.addr);
    assert_eq!(c.get("w").unwrap(), b"warm", "miss on cold, hit on warm");
    let deadline = Instant::now() + Duration::from_secs(2);
    while has(p.a.addr, "w").is_none() {
        assert!(Instant::now() < deadline, "cold filled");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut m = Mc::connect(p.a.addr);
    m.send(b"mg w t\r\n");
    let l = m.line();
    let ttl: i64 = l.split(' ').find(|f| f.starts_with('t')).unwrap()[1..]
        .parse()
        .unwrap();
    assert!(
        (55..=60).contains(&ttl),
        "filled with the warm_up exptime: {l}"
    );
    // gets: the cas unique comes from cold.
    assert_eq!(Mc::connect(p.b.addr).set("g", b"x"), "STORED");
    c.send(b"gets g\r\n");
    let line = c.line();
    assert!(line.starts_with("VALUE g 0 1 "), "{line}");
    c.line();
    assert_eq!(c.line(), "END");
    assert!(has(p.a.addr, "g").is_some());
    // Sets go to cold only.
    assert_eq!(c.set("s", b"1"), "STORED");
    assert!(has(p.a.addr, "s").is_some() && has(p.b.addr, "s").is_none());
}
