//! Hot keys against three real memcached: detection under load, the local cache (served by the
//! proxy, invalidated by writes through it, never older than its ttl), suffix split (reads
//! spread over the copies' servers, no false misses, writes delete the copies), cooling, and
//! that no read ever returns another key's value.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{
    free_port, http_get, kvrouter_admin, mc_stat, memcached, metric, scrape, wait_for, Mc, Proc,
    TempDir,
};

struct Setup {
    _dir: TempDir,
    servers: Vec<Proc>,
    proxy: Proc,
    admin: SocketAddr,
}

fn setup(hot_keys: &str) -> Setup {
    let dir = TempDir::new();
    let servers: Vec<Proc> = (0..3).map(|_| memcached()).collect();
    let port = free_port();
    let yaml = format!(
        "workers: 2\npools:\n  users:\n    protocol: memcache\n    servers: [\"{}:1 mc-a\", \"{}:1 mc-b\", \"{}:1 mc-c\"]\nlisteners:\n  - listen: 127.0.0.1:{port}\n    protocol: memcache\n    route: users\n    hot_keys: {hot_keys}\n",
        servers[0].addr, servers[1].addr, servers[2].addr
    );
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (proxy, admin) = kvrouter_admin(&dir, &yaml, listen);
    Setup {
        _dir: dir,
        servers,
        proxy,
        admin,
    }
}

/// `get` counts of each memcached.
fn gets(servers: &[Proc]) -> Vec<u64> {
    servers
        .iter()
        .map(|s| mc_stat(&mut Mc::connect(s.addr), "cmd_get"))
        .collect()
}

/// Values encode their key and a version: `KEY:VERSION:padding`.
fn value(key: &str, version: u64) -> Vec<u8> {
    format!("{key}:{version}:{}", "x".repeat(20)).into_bytes()
}

/// The version in a value, checking it belongs to `key`.
fn version_of(key: &str, v: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(v);
    let mut parts = text.split(':');
    assert_eq!(parts.next(), Some(key), "the value of another key: {text}");
    parts.next().unwrap().parse().unwrap()
}

/// Readers hammering `key` (single gets, and multi-gets mixing it with cold keys), each
/// checking that no reply carries another key's value, and that no read started after a
/// write through the proxy was acknowledged (`committed`) returns an older version.
fn readers(
    addr: SocketAddr,
    key: &'static str,
    n: usize,
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    reads: Arc<AtomicU64>,
) -> Vec<JoinHandle<()>> {
    (0..n)
        .map(|t| {
            let (stop, committed, reads) = (stop.clone(), committed.clone(), reads.clone());
            std::thread::spawn(move || {
                let mut c = Mc::connect(addr);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let floor = committed.load(Ordering::Acquire);
                    if i % 4 == 3 {
                        let cold = format!("cold{}", (i * 7 + t as u64) % COLD);
                        c.send(format!("get {cold} {key} {cold}\r\n").as_bytes());
                        let items = c.values().unwrap();
                        for (k, _, v) in &items {
                            let v = version_of(k, v);
                            if k == key {
                                assert!(v >= floor, "read version {v} after {floor} was written");
                            }
                        }
                        let names: Vec<&str> = items.iter().map(|i| i.0.as_str()).collect();
                        assert!(names == [cold.as_str(), key, cold.as_str()], "{names:?}");
                    } else {
                        c.send(format!("get {key}\r\n").as_bytes());
                        let items = c.values().unwrap();
                        assert_eq!(items.len(), 1, "the hot key always has a value here");
                        assert_eq!(items[0].0, key);
                        assert_eq!(items[0].1, 42, "flags kept");
                        let v = version_of(key, &items[0].2);
                        assert!(v >= floor, "read version {v} after {floor} was written");
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect()
}

/// Cold keys read by the readers' multi-gets: many, so none of them is hot.
const COLD: u64 = 2000;

fn set_cold(c: &mut Mc) {
    let mut batch = Vec::new();
    for i in 0..COLD {
        let (k, v) = (format!("cold{i}"), value(&format!("cold{i}"), 0));
        batch.extend_from_slice(format!("set {k} 42 0 {} noreply\r\n", v.len()).as_bytes());
        batch.extend_from_slice(&v);
        batch.extend_from_slice(b"\r\n");
    }
    c.send(&batch);
    c.send(b"mn\r\n");
    assert_eq!(c.line(), "MN");
}

fn set_flags(c: &mut Mc, key: &str, flags: u32, exptime: u32, v: &[u8]) {
    let mut req = format!("set {key} {flags} {exptime} {}\r\n", v.len()).into_bytes();
    req.extend_from_slice(v);
    req.extend_from_slice(b"\r\n");
    c.send(&req);
    assert_eq!(c.line(), "STORED");
}

fn hotkeys(admin: SocketAddr) -> serde_json::Value {
    let (status, body) = http_get(admin, "/hotkeys");
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

fn hot_now(admin: SocketAddr) -> Vec<String> {
    hotkeys(admin)["hot_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_celebrity_key_is_served_from_the_local_cache_and_never_stale() {
    let s = setup("{ threshold: 2000/s, local_cache: { ttl: 200ms, capacity: 1000 } }");
    let key = "celebrity";
    let mut w = Mc::connect(s.proxy.addr);
    set_flags(&mut w, key, 42, 0, &value(key, 0));
    set_cold(&mut w);
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let threads = readers(
        s.proxy.addr,
        key,
        3,
        stop.clone(),
        committed.clone(),
        reads.clone(),
    );

    // It turns hot, and /hotkeys says so.
    wait_for(5, "the celebrity to turn hot", || {
        hot_now(s.admin).contains(&key.to_string()).then_some(())
    });
    let hk = hotkeys(s.admin);
    assert_eq!(hk["enabled"], true);
    assert_eq!(hk["hot_keys"][0]["action"], "local_cache");
    assert!(
        hk["hot_keys"][0]["rate"].as_f64().unwrap() >= 2000.0,
        "{hk}"
    );

    // Served by the proxy: over one second, the backends see a handful of gets of it per
    // ttl window and worker (cold keys of the multi-gets aside), not one per read.
    std::thread::sleep(Duration::from_millis(300));
    let (before, r0) = (gets(&s.servers), reads.load(Ordering::Relaxed));
    std::thread::sleep(Duration::from_secs(1));
    let (after, r1) = (gets(&s.servers), reads.load(Ordering::Relaxed));
    let backend: u64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
    let client = r1 - r0;
    let multi = client / 4; // each multi-get also reads two cold keys: at most 2 backend gets
    assert!(client > 1000, "the load is real: {client} reads in 1 s");
    assert!(
        backend <= 2 * multi + 60,
        "backends saw {backend} gets for {client} client reads ({multi} multi-gets)"
    );

    // Writes through the proxy: once acknowledged, no read returns the old value.
    for v in 1..=30u64 {
        set_flags(&mut w, key, 42, 0, &value(key, v));
        committed.store(v, Ordering::Release);
        // The writer's own read right after its write.
        w.send(format!("get {key}\r\n").as_bytes());
        let items = w.values().unwrap();
        assert_eq!(version_of(key, &items[0].2), v);
        std::thread::sleep(Duration::from_millis(20));
    }

    // A write straight to the backend (not through the proxy) shows within ttl.
    let owner = s
        .servers
        .iter()
        .find(|p| Mc::connect(p.addr).get(key).is_some())
        .expect("some server holds the key");
    let mut direct = Mc::connect(owner.addr);
    set_flags(&mut direct, key, 42, 0, &value(key, 1000));
    let written = Instant::now();
    loop {
        let v = version_of(key, &w.get(key).unwrap());
        if v == 1000 {
            break;
        }
        assert!(
            written.elapsed() < Duration::from_millis(200 + 150),
            "still version {v} {:?} after the direct write",
            written.elapsed()
        );
    }
    committed.store(1000, Ordering::Release);

    let m = scrape(s.admin);
    let l = [("result", "hit")];
    assert!(metric(&m, "kvrouter_hot_key_local_cache_total", &l).unwrap() > 1000.0);
    assert_eq!(
        metric(&m, "kvrouter_hot_keys", &[]),
        Some(1.0),
        "one key hot now"
    );
    assert_eq!(
        metric(&m, "kvrouter_hot_key_transitions_total", &[("to", "hot")]),
        Some(1.0)
    );

    // Cooling: without load it turns cold again, and the counters say so.
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    wait_for(8, "the celebrity to cool", || {
        hot_now(s.admin).is_empty().then_some(())
    });
    let m = scrape(s.admin);
    assert_eq!(
        metric(&m, "kvrouter_hot_key_transitions_total", &[("to", "cold")]),
        Some(1.0)
    );
    assert_eq!(metric(&m, "kvrouter_hot_keys", &[]), Some(0.0));
    // Cold again: every get goes to the backend.
    let before: u64 = gets(&s.servers).iter().sum();
    for _ in 0..20 {
        assert_eq!(version_of(key, &w.get(key).unwrap()), 1000);
    }
    let after: u64 = gets(&s.servers).iter().sum();
    assert_eq!(after - before, 20);
}

#[test]
fn split_spreads_reads_of_a_hot_key_over_its_copies() {
    let s = setup("{ threshold: 2000/s, split: 8 }");
    let key = "star";
    let mut w = Mc::connect(s.proxy.addr);
    set_flags(&mut w, key, 42, 3600, &value(key, 0));
    set_cold(&mut w);
    let owner = s
        .servers
        .iter()
        .position(|p| Mc::connect(p.addr).get(key).is_some())
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let threads = readers(
        s.proxy.addr,
        key,
        3,
        stop.clone(),
        committed.clone(),
        reads.clone(),
    );
    wait_for(5, "the star to turn hot", || {
        hot_now(s.admin).contains(&key.to_string()).then_some(())
    });
    assert_eq!(hotkeys(s.admin)["hot_keys"][0]["action"], "split");
    std::thread::sleep(Duration::from_millis(300));

    // The copies exist, on more than one server, with the original's flags and a TTL capped
    // at the copy TTL (10 s) although the original has an hour.
    let mut holders = std::collections::BTreeSet::new();
    for i in 0..8 {
        let copy = copy_name(key, i);
        for (n, p) in s.servers.iter().enumerate() {
            let mut c = Mc::connect(p.addr);
            c.send(format!("mg {copy} v f t\r\n").as_bytes());
            let head = c.line();
            if head.starts_with("VA ") {
                let body = c.line();
                assert_eq!(version_of(key, body.as_bytes()), 0);
                assert!(head.contains(" f42"), "{head}");
                let ttl: i64 = head.split(" t").nth(1).unwrap().parse().unwrap();
                assert!((1..=10).contains(&ttl), "copy TTL {ttl}");
                holders.insert(n);
            } else {
                assert_eq!(head, "EN");
            }
        }
    }
    assert!(holders.len() >= 2, "copies on servers {holders:?}");

    // Reads spread: over one second no server carries more than ~3/4 of the hot key's gets,
    // and servers other than the original's serve a good share.
    let before = gets(&s.servers);
    std::thread::sleep(Duration::from_secs(1));
    let after = gets(&s.servers);
    let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let total: u64 = delta.iter().sum();
    assert!(total > 1000, "{delta:?}");
    let others: u64 = delta
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != owner)
        .map(|(_, d)| d)
        .sum();
    assert!(
        others * 4 >= total,
        "the original's server {owner} still carries {delta:?}"
    );
    let m = scrape(s.admin);
    assert!(metric(&m, "kvrouter_hot_key_split_total", &[("op", "copy_hit")]).unwrap() > 500.0);

    // Copies that vanish (evicted, expired, deleted behind the proxy's back) are no false
    // misses: the readers, still running, assert that every single get finds the key; the
    // original answers and refills the copies.
    let misses = |m: &[common::Sample]| {
        metric(m, "kvrouter_hot_key_split_total", &[("op", "copy_miss")]).unwrap()
    };
    let before = misses(&scrape(s.admin));
    for p in &s.servers {
        let mut c = Mc::connect(p.addr);
        for i in 0..8 {
            c.send(format!("delete {}\r\n", copy_name(key, i)).as_bytes());
            c.line();
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(misses(&scrape(s.admin)) > before);

    // Writes through the proxy reach the original and delete the copies: no read after the
    // acknowledgement returns the old value.
    for v in 1..=20u64 {
        set_flags(&mut w, key, 42, 3600, &value(key, v));
        committed.store(v, Ordering::Release);
        w.send(format!("get {key}\r\n").as_bytes());
        assert_eq!(version_of(key, &w.values().unwrap()[0].2), v);
        std::thread::sleep(Duration::from_millis(30));
    }
    assert!(
        metric(
            &scrape(s.admin),
            "kvrouter_hot_key_split_total",
            &[("op", "delete")]
        )
        .unwrap()
            >= 20.0 * 8.0
    );
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    // A delete through the proxy: the hot key is gone, copies too (no false hits).
    w.send(format!("delete {key}\r\n").as_bytes());
    assert_eq!(w.line(), "DELETED");
    for _ in 0..50 {
        assert_eq!(w.get(key), None);
    }
}

/// The name kvrouter gives copy `i` of `key`.
fn copy_name(key: &str, i: usize) -> String {
    let copy = kvrouter::hotkey::split::copy_key(key.as_bytes(), i, None);
    String::from_utf8(copy.to_vec()).unwrap()
}
