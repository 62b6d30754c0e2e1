//! Resource limits and misbehaving peers: slow readers are throttled with bounded memory, idle
//! clients are closed, oversized requests refused, and a slow or broken backend delays only its
//! own requests.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::{free_port, kvrouter, memcached, redis_server, rss_kib, Mc, Resp, TempDir};

#[test]
fn a_client_that_never_reads_is_throttled_and_memory_stays_bounded() {
    let b = memcached();
    let dir = TempDir::new();
    let port = free_port();
    let yaml = format!(
        "pools:\n  p: {{ protocol: memcache, servers: [\"{}:1\"] }}\nlisteners:\n  - {{ listen: 127.0.0.1:{port}, protocol: memcache, route: p }}\n",
        b.addr
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let proxy = kvrouter(&dir, &yaml, addr);
    let value = vec![b'v'; 1000];
    assert_eq!(Mc::connect(addr).set("big", &value), "STORED");
    let before = rss_kib(proxy.child.id());

    // Try to write 1 GB of gets (each answered with ~1 KB) and never read a byte.
    let writer = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
        let chunk = b"get big\r\n".repeat(10_000);
        let mut written = 0usize;
        let deadline = Instant::now() + Duration::from_secs(20);
        while written < 1 << 30 && Instant::now() < deadline {
            match s.write(&chunk) {
                Ok(n) => written += n,
                Err(_) => break, // blocked for 3 s: kvrouter stopped reading
            }
        }
        (written, s)
    });
    // Meanwhile other clients are served.
    let mut other = Mc::connect(addr);
    for i in 0..50 {
        let t = Instant::now();
        assert_eq!(other.set(&format!("o{i}"), b"x"), "STORED");
        assert!(t.elapsed() < Duration::from_millis(500));
    }
    let (written, _s) = writer.join().unwrap();
    let after = rss_kib(proxy.child.id());
    eprintln!("slow reader: wrote {written} bytes; kvrouter RSS {before} KiB -> {after} KiB");
    // Measured: about 4 MB before the socket stops taking more; 64 MiB means no backpressure.
    assert!(
        written < 64 << 20,
        "kvrouter stopped reading: {written} bytes accepted"
    );
    // Bound: the per-client output cap (8 MiB) + 1024 pending replies of ~1 KB + socket and
    // read buffers, well under 64 MiB of growth.
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    let mut other = Mc::connect(addr);
    assert_eq!(other.get("o1").unwrap(), b"x", "still serving");
}

#[test]
fn idle_clients_are_closed_and_busy_ones_are_not() {
    let b = memcached();
    let dir = TempDir::new();
    let port = free_port();
    let yaml = format!(
        "pools:\n  p: {{ protocol: memcache, servers: [\"{}:1\"] }}\nlisteners:\n  - {{ listen: 127.0.0.1:{port}, protocol: memcache, route: p, client_idle_timeout: 300ms, max_request_bytes: 4096 }}\n",
        b.addr
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let _proxy = kvrouter(&dir, &yaml, addr);
    let mut idle = Mc::connect(addr);
    let mut busy = Mc::connect(addr);
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(busy.set("b", b"1"), "STORED");
    }
    let mut buf = [0u8; 1];
    assert_eq!(
        idle.r.read(&mut buf).unwrap(),
        0,
        "the idle client was closed"
    );
    // max_request_bytes: a value over it is refused, the connection stays in step.
    let big = vec![b'x'; 5000];
    let mut req = format!("set big 0 0 {}\r\n", big.len()).into_bytes();
    req.extend_from_slice(&big);
    req.extend_from_slice(b"\r\n");
    busy.send(&req);
    assert_eq!(busy.line(), "SERVER_ERROR object too large for cache");
    assert_eq!(busy.set("small", b"ok"), "STORED");
}

#[test]
fn idle_redis_clients_are_closed_but_not_subscribers_or_blocked_ones() {
    let b = redis_server();
    let dir = TempDir::new();
    let port = free_port();
    let yaml = format!(
        "pools:\n  r: {{ protocol: redis, servers: [\"{}:1\"] }}\nlisteners:\n  - {{ listen: 127.0.0.1:{port}, protocol: redis, route: r, client_idle_timeout: 300ms }}\n",
        b.addr
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let _proxy = kvrouter(&dir, &yaml, addr);
    let mut idle = Resp::connect(addr);
    let mut busy = Resp::connect(addr);
    let mut sub = Resp::connect(addr);
    assert_eq!(sub.cmd("SUBSCRIBE news"), "[subscribe, news, :1]");
    let mut blocked = Resp::connect(addr);
    blocked.send(&["BLPOP", "queue", "0"]);
    // Redis's rules: idle means nothing in flight; subscribers and blocked clients wait on.
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(busy.cmd("SET b 1"), "OK");
    }
    assert!(idle.closed(), "the idle client was closed");
    assert_eq!(busy.cmd("PUBLISH news hello"), ":1");
    assert_eq!(common::text(&sub.read()), "[message, news, hello]");
    assert_eq!(busy.cmd("RPUSH queue job"), ":1");
    assert_eq!(common::text(&blocked.read()), "[queue, job]");
    // Once its command is answered the client is idle again, and is closed in turn.
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        blocked.closed(),
        "the formerly blocked client was closed once idle"
    );
}

#[test]
fn max_clients_refuses_with_the_protocol_error() {
    let b = memcached();
    let dir = TempDir::new();
    let port = free_port();
    let yaml = format!(
        "pools:\n  p: {{ protocol: memcache, servers: [\"{}:1\"] }}\nlisteners:\n  - {{ listen: 127.0.0.1:{port}, protocol: memcache, route: p, max_clients: 2 }}\n",
        b.addr
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let _proxy = kvrouter(&dir, &yaml, addr);
    // The harness's own probe connection must be counted out first.
    std::thread::sleep(Duration::from_millis(300));
    let mut a = Mc::connect(addr);
    let mut c = Mc::connect(addr);
    assert_eq!(a.set("a", b"1"), "STORED");
    assert_eq!(c.set("c", b"1"), "STORED");
    let mut third = Mc::connect(addr);
    assert_eq!(third.line(), "SERVER_ERROR Too many open connections");
    let mut buf = [0u8; 1];
    assert_eq!(third.r.read(&mut buf).unwrap(), 0, "and closed");
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let mut fourth = Mc::connect(addr);
        fourth.send(b"version\r\n");
        if fourth.line().starts_with("VERSION") {
            break; // a slot freed up
        }
        assert!(
            Instant::now() < deadline,
            "the closed client's slot is given back"
        );
    }
}

/// A fake backend that answers every request with `reply`, written one byte at a time with
/// `gap` between bytes (a fault real memcached cannot produce).
fn trickler(reply: &'static [u8], gap: Duration, stall_after: Option<usize>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    for (i, b) in reply.iter().enumerate() {
                        if stall_after == Some(i) {
                            std::thread::sleep(Duration::from_secs(30));
                            return;
                        }
                        if s.write_all(&[*b]).is_err() {
                            return;
                        }
                        std::thread::sleep(gap);
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn slow_and_broken_backends_delay_only_their_own_requests() {
    let good = memcached();
    let slow = trickler(b"STORED\r\n", Duration::from_millis(100), None);
    let broken = trickler(b"VALUE k 0 10\r\nabc", Duration::ZERO, Some(17));
    let dir = TempDir::new();
    let port = free_port();
    let yaml = format!(
        "pools:
  good: {{ protocol: memcache, servers: [\"{}:1\"], timeout: 2s }}
  slow: {{ protocol: memcache, servers: [\"{slow}:1\"], timeout: 2s }}
  broken: {{ protocol: memcache, servers: [\"{broken}:1\"], timeout: 500ms }}
listeners:
  - listen: 127.0.0.1:{port}
    protocol: memcache
    route: {{ prefix: {{ \"slow:\": slow, \"broken:\": broken, default: good }} }}
",
        good.addr
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let _proxy = kvrouter(&dir, &yaml, addr);
    // Start requests to the trickling and to the half-replying backend...
    let slow_client = std::thread::spawn(move || {
        let mut c = Mc::connect(addr);
        let t = Instant::now();
        let r = c.set("slow:1", b"x");
        (r, t.elapsed())
    });
    let broken_client = std::thread::spawn(move || {
        let mut c = Mc::connect(addr);
        let t = Instant::now();
        c.send(b"get broken:1\r\n");
        let r = c.line();
        (r, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(50));
    // ...while clients of the good server are answered at full speed.
    let mut c = Mc::connect(addr);
    let t = Instant::now();
    for i in 0..200 {
        assert_eq!(c.set(&format!("k{i}"), b"v"), "STORED");
    }
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "good server's clients: {:?}",
        t.elapsed()
    );
    let (r, took) = slow_client.join().unwrap();
    assert_eq!(r, "STORED", "a trickled reply still arrives whole");
    assert!(took >= Duration::from_millis(700), "{took:?}");
    let (r, took) = broken_client.join().unwrap();
    assert!(
        r.starts_with("SERVER_ERROR") && r.contains("timed out"),
        "{r}"
    );
    // Its own timeout (500 ms) bounds it, with room for a loaded machine's scheduling.
    assert!(took < Duration::from_millis(1000), "{took:?}");
}
