//! One client cannot hurt the others: a client that pipelines big reads without reading its
//! replies, a subscriber that never reads, a client trickling a request byte by byte, and many
//! idle clients each cost kvrouter a bounded amount, while the clients sharing its backend
//! connections are served as usual. Real memcached (`-I 2m`) and redis-server behind kvrouter.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    free_port, kvrouter_admin, memcached, metric, redis_server, rss_kib, scrape, wait_port, Mc,
    Proc, Resp, TempDir,
};

const MIB: u64 = 1024;

/// kvrouter (one worker, so every client shares the same backend connections) in front of two
/// memcached and two redis-servers.
struct Fleet {
    proxy: Proc,
    admin: SocketAddr,
    mc: SocketAddr,
    redis: SocketAddr,
    _backends: Vec<Proc>,
    _dir: TempDir,
}

fn fleet(listener_extra: &str) -> Fleet {
    let backends = vec![memcached(), memcached(), redis_server(), redis_server()];
    let dir = TempDir::new();
    let (pm, pr) = (free_port(), free_port());
    let yaml = format!(
        "workers: 1
pools:
  m: {{ protocol: memcache, servers: [\"{}:1\", \"{}:1\"], timeout: 400ms }}
  r: {{ protocol: redis, servers: [\"{}:1\", \"{}:1\"], timeout: 400ms }}
listeners:
  - {{ listen: 127.0.0.1:{pm}, protocol: memcache, route: m{listener_extra} }}
  - {{ listen: 127.0.0.1:{pr}, protocol: redis, route: r{listener_extra} }}
",
        backends[0].addr, backends[1].addr, backends[2].addr, backends[3].addr
    );
    let mc: SocketAddr = format!("127.0.0.1:{pm}").parse().unwrap();
    let redis: SocketAddr = format!("127.0.0.1:{pr}").parse().unwrap();
    let (mut proxy, admin) = kvrouter_admin(&dir, &yaml, mc);
    wait_port(redis, &mut proxy.child);
    Fleet {
        proxy,
        admin,
        mc,
        redis,
        _backends: backends,
        _dir: dir,
    }
}

impl Fleet {
    fn dropped(&self, reason: &str) -> f64 {
        let m = scrape(self.admin);
        metric(&m, "kvrouter_clients_dropped_total", &[("reason", reason)]).unwrap_or(0.0)
    }

    /// Backend requests that got no reply, any kind (timeout, down, closed...).
    fn server_errors(&self) -> f64 {
        let m = scrape(self.admin);
        metric(&m, "kvrouter_server_errors_total", &[]).unwrap_or(0.0)
    }
}

/// Samples kvrouter's RSS until stopped; the largest seen.
fn rss_watch(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut max = 0;
        while !stop.load(Ordering::Relaxed) {
            max = max.max(rss_kib(pid));
            std::thread::sleep(Duration::from_millis(20));
        }
        max.max(rss_kib(pid))
    })
}

/// Writes `request` over and over for `secs` without ever reading; reconnects when kvrouter
/// drops it. Returns (bytes written, connections dropped).
fn never_reads(
    addr: SocketAddr,
    request: &'static [u8],
    secs: u64,
) -> std::thread::JoinHandle<(usize, u64)> {
    std::thread::spawn(move || {
        let chunk = request.repeat(64 * 1024 / request.len());
        let deadline = Instant::now() + Duration::from_secs(secs);
        let (mut written, mut drops) = (0usize, 0u64);
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_write_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        while Instant::now() < deadline {
            match s.write(&chunk) {
                Ok(n) => written += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => {
                    drops += 1;
                    s = TcpStream::connect(addr).unwrap();
                    s.set_write_timeout(Some(Duration::from_millis(100)))
                        .unwrap();
                }
            }
        }
        (written, drops)
    })
}

/// A well-behaved client's view while another misbehaves: requests done, errors, slowest.
#[derive(Debug, Default)]
struct Seen {
    requests: u64,
    errors: Vec<String>,
    slowest: Duration,
}

fn mc_traffic(addr: SocketAddr, secs: u64) -> Seen {
    let mut c = Mc::connect(addr);
    let mut seen = Seen::default();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut i = 0u64;
    while Instant::now() < deadline {
        let key = format!("small{}", i % 50);
        let t = Instant::now();
        let r = c.set(&key, b"v");
        if r != "STORED" {
            seen.errors.push(r);
        }
        c.send(format!("get {key}\r\n").as_bytes());
        match c.values() {
            Ok(v) if v.len() == 1 => {}
            other => seen.errors.push(format!("{other:?}")),
        }
        seen.slowest = seen.slowest.max(t.elapsed());
        seen.requests += 2;
        i += 1;
    }
    seen
}

fn redis_traffic(addr: SocketAddr, secs: u64) -> Seen {
    let mut c = Resp::connect(addr);
    let mut seen = Seen::default();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut i = 0u64;
    while Instant::now() < deadline {
        let key = format!("small{}", i % 50);
        let t = Instant::now();
        let r = c.cmd(&format!("SET {key} v"));
        if r != "OK" {
            seen.errors.push(r);
        }
        let r = c.cmd(&format!("GET {key}"));
        if r != "v" {
            seen.errors.push(r);
        }
        seen.slowest = seen.slowest.max(t.elapsed());
        seen.requests += 2;
        i += 1;
    }
    seen
}

fn big_value() -> Vec<u8> {
    (0..500_000).map(|i| b'a' + (i % 26) as u8).collect()
}

/// The issue this guards against: a client pipelining `get` of a 500 kB value without reading
/// made kvrouter buffer gigabytes, and the backend connection it shared carried so much of its
/// data that other clients' requests timed out behind it.
fn pipelined_big_gets_without_reading(redis: bool) {
    let f = fleet("");
    let big = big_value();
    if redis {
        let mut c = Resp::connect(f.redis);
        assert_eq!(common::text(&c.call(&[&b"SET"[..], b"big", &big])), "OK");
    } else {
        assert_eq!(Mc::connect(f.mc).set("big", &big), "STORED");
    }
    let pid = f.proxy.child.id();
    let before = rss_kib(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let watch = rss_watch(pid, stop.clone());
    // ISOLATION_SECS=8 runs the full 8 s (the suite keeps it short).
    let secs = std::env::var("ISOLATION_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let (addr, request): (SocketAddr, &'static [u8]) = if redis {
        (f.redis, b"GET big\r\n")
    } else {
        (f.mc, b"get big\r\n")
    };
    let hog = never_reads(addr, request, secs);
    std::thread::sleep(Duration::from_millis(100));
    let seen = if redis {
        redis_traffic(addr, secs)
    } else {
        mc_traffic(addr, secs)
    };
    let (written, drops) = hog.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let max = watch.join().unwrap();
    eprintln!(
        "{}: non-reader wrote {written} bytes, dropped {drops} times; other client: {} requests, slowest {:?}; kvrouter RSS {before} KiB -> max {max} KiB",
        if redis { "redis" } else { "memcache" },
        seen.requests,
        seen.slowest
    );
    assert!(
        seen.errors.is_empty(),
        "errors: {:?}",
        &seen.errors[..seen.errors.len().min(5)]
    );
    assert!(seen.requests > 100, "{seen:?}");
    assert!(seen.slowest < Duration::from_millis(250), "{seen:?}");
    assert!(max < 256 * MIB, "kvrouter RSS reached {max} KiB");
    assert_eq!(
        f.server_errors(),
        0.0,
        "no backend timed out or was marked down"
    );
}

#[test]
fn memcache_client_pipelining_big_gets_without_reading_costs_others_nothing() {
    pipelined_big_gets_without_reading(false);
}

#[test]
fn redis_client_pipelining_big_gets_without_reading_costs_others_nothing() {
    pipelined_big_gets_without_reading(true);
}

/// A pipeline of small gets then big ones: the small replies make the big ones look cheap, so
/// many are in flight when their size shows; the client's output passes `max_client_output`,
/// and it is disconnected, while the replies still arriving for it are read and dropped.
#[test]
fn a_client_over_max_client_output_is_disconnected_and_counted() {
    let f = fleet(", max_client_output: 4194304");
    let big = big_value();
    assert_eq!(Mc::connect(f.mc).set("big", &big), "STORED");
    assert_eq!(Mc::connect(f.mc).set("s", b"x"), "STORED");
    let mut r = Resp::connect(f.redis);
    assert_eq!(common::text(&r.call(&[&b"SET"[..], b"big", &big])), "OK");
    assert_eq!(r.cmd("SET s x"), "OK");
    let pid = f.proxy.child.id();
    for (addr, small, large) in [
        (f.mc, &b"get s\r\n"[..], &b"get big\r\n"[..]),
        (f.redis, &b"GET s\r\n"[..], &b"GET big\r\n"[..]),
    ] {
        let dropped = f.dropped("output_limit");
        let mut pipeline = small.repeat(2000);
        pipeline.extend_from_slice(&large.repeat(200));
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&pipeline).unwrap();
        // Read nothing until kvrouter has given up on this client.
        common::wait_for(10, "the client is dropped", || {
            (f.dropped("output_limit") > dropped).then_some(())
        });
        // What the kernel had taken is readable, then the connection ends.
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut sink = vec![0u8; 1 << 20];
        let mut got = 0usize;
        loop {
            match s.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        assert!(got < 200 * big.len(), "the client was cut off: {got} bytes");
        assert!(rss_kib(pid) < 256 * MIB);
    }
    // The proxy serves on, on both protocols, over the same backend connections.
    assert_eq!(Mc::connect(f.mc).get("s").unwrap(), b"x");
    assert_eq!(Resp::connect(f.redis).cmd("GET s"), "x");
    assert_eq!(f.server_errors(), 0.0);
}

/// A subscriber that never reads while 100 kB messages are published: kvrouter drains its push
/// connection and drops the subscriber at its output limit; the publisher is never slowed.
#[test]
fn a_subscriber_that_never_reads_is_dropped_at_its_output_limit() {
    let f = fleet("");
    let pid = f.proxy.child.id();
    let before = rss_kib(pid);
    let mut sub = Resp::connect(f.redis);
    assert_eq!(sub.cmd("SUBSCRIBE news"), "[subscribe, news, :1]");
    let stop = Arc::new(AtomicBool::new(false));
    let watch = rss_watch(pid, stop.clone());
    let mut publisher = Resp::connect(f.redis);
    let message = vec![b'm'; 100_000];
    let deadline = Instant::now() + Duration::from_secs(3);
    let (mut delivered, mut slowest) = (0u64, Duration::ZERO);
    while Instant::now() < deadline {
        let t = Instant::now();
        let r = common::text(&publisher.call(&[&b"PUBLISH"[..], b"news", &message]));
        slowest = slowest.max(t.elapsed());
        match r.as_str() {
            ":1" => delivered += 1,
            ":0" => break, // the subscriber is gone
            other => panic!("PUBLISH answered {other}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let max = watch.join().unwrap();
    eprintln!(
        "subscriber: {delivered} messages of 100 kB published to it before it was dropped; slowest PUBLISH {slowest:?}; kvrouter RSS {before} KiB -> max {max} KiB"
    );
    assert!(f.dropped("output_limit") >= 1.0, "counted");
    assert!(max < 256 * MIB, "kvrouter RSS reached {max} KiB");
    assert!(slowest < Duration::from_millis(250), "{slowest:?}");
    // The subscriber finds its connection closed after what was in flight to it.
    sub.s
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut n = 0;
    while sub.try_read_raw().is_some() {
        n += 1;
        assert!(n < 10_000);
    }
}

/// A client sending a request a byte at a time is closed once the request has taken longer
/// than `client_request_timeout`, even though it is never idle; a client sending whole
/// requests slowly is not.
#[test]
fn a_trickling_request_is_cut_off_at_client_request_timeout() {
    let f = fleet(", client_request_timeout: 1s");
    let trickle = |addr: SocketAddr, request: &'static [u8]| {
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_nodelay(true).unwrap();
            let t = Instant::now();
            for b in request.iter().cycle() {
                if s.write_all(&[*b]).is_err() || t.elapsed() > Duration::from_secs(5) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let mut buf = [0u8; 64];
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let closed = matches!(s.read(&mut buf), Ok(0) | Err(_));
            (closed, t.elapsed())
        })
    };
    let mc = trickle(f.mc, b"set k 0 0 100000\r\n");
    let redis = trickle(f.redis, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100000\r\n");
    // Meanwhile a slow but whole-request client is served throughout.
    let mut slow = Resp::connect(f.redis);
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(slow.cmd("PING"), "PONG");
    }
    for (name, t) in [("memcache", mc), ("redis", redis)] {
        let (closed, took) = t.join().unwrap();
        eprintln!("{name}: trickling client closed after {took:?}");
        assert!(closed, "{name}: closed");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
            "{name}: {took:?}"
        );
    }
    assert_eq!(f.dropped("request_timeout"), 2.0);
}

/// Idle connections hold no buffers: open many, each after one request, and measure.
#[test]
fn idle_clients_cost_little_memory() {
    let f = fleet("");
    let pid = f.proxy.child.id();
    // Warm up: the worker's first allocations are not the clients'.
    for _ in 0..3 {
        let mut c = Mc::connect(f.mc);
        c.send(b"version\r\n");
        c.line();
    }
    std::thread::sleep(Duration::from_millis(200));
    let n = 4000;
    let before = rss_kib(pid);
    let mut clients = Vec::with_capacity(n);
    let done = AtomicU64::new(0);
    for i in 0..n {
        let mut c = Mc::connect(f.mc);
        if i % 2 == 0 {
            c.send(b"version\r\n");
            assert!(c.line().starts_with("VERSION"));
            done.fetch_add(1, Ordering::Relaxed);
        }
        clients.push(c);
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_kib(pid);
    let per_client = (after.saturating_sub(before)) * 1024 / n as u64;
    eprintln!(
        "{n} idle memcached clients ({} after one request): RSS {before} KiB -> {after} KiB, {per_client} bytes each",
        done.load(Ordering::Relaxed)
    );
    // Measured: about 2.1 KB here (debug build) and in release builds (`scripts/idle-cost`);
    // 11.7 KB before buffers were taken lazily and the per-connection futures slimmed.
    assert!(per_client < 3000, "{per_client} bytes per idle client");
    // And they are all still served.
    let c = clients.last_mut().unwrap();
    c.send(b"version\r\n");
    assert!(c.line().starts_with("VERSION"));
}
