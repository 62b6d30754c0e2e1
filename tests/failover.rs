//! Failover under load with real memcached servers that are killed (SIGKILL), hung (SIGSTOP)
//! and restarted: TKO, failover to a gutter pool with capped TTLs, recovery, and not one reply
//! delivered to the wrong request.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, kvrouter_admin, memcached, memcached_at, signal, Mc, Proc, TempDir};
use kvrouter::routing::{DistributionKind, HashKind, Node, Placement};

const TIMEOUT_MS: u64 = 200;
const MAX_TTL: u64 = 3;

struct Fleet {
    _dir: TempDir,
    main: Vec<Option<Proc>>,
    main_addrs: Vec<SocketAddr>,
    gutter: Proc,
    proxy: Proc,
    admin: SocketAddr,
    placement: Placement,
}

fn fleet(route_extra: &str) -> Fleet {
    let dir = TempDir::new();
    let main: Vec<Proc> = (0..3).map(|_| memcached()).collect();
    let gutter = memcached();
    let port = free_port();
    let servers: Vec<String> = main
        .iter()
        .enumerate()
        .map(|(i, p)| format!("\"{}:1 mc-{i}\"", p.addr))
        .collect();
    let yaml = format!(
        "pools:
  main:
    protocol: memcache
    servers: [{}]
    timeout: {TIMEOUT_MS}ms
    failure_limit: 2
    retry_timeout: 300ms
  gutter:
    protocol: memcache
    servers: [\"{}:1 gutter-0\"]
    timeout: {TIMEOUT_MS}ms
listeners:
  - listen: 127.0.0.1:{port}
    protocol: memcache
    route:
      failover: {{ children: [main, {{ gutter: gutter, max_ttl: {MAX_TTL}s }}]{route_extra} }}
",
        servers.join(", "),
        gutter.addr
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (proxy, admin) = kvrouter_admin(&dir, &yaml, addr);
    let nodes: Vec<Node> = (0..3)
        .map(|i| Node {
            name: format!("mc-{i}"),
            weight: 1,
        })
        .collect();
    let placement = Placement::new(
        DistributionKind::Ketama,
        HashKind::Fnv1a_64,
        None,
        &nodes,
        &[true; 3],
    );
    Fleet {
        _dir: dir,
        main_addrs: main.iter().map(|p| p.addr).collect(),
        main: main.into_iter().map(Some).collect(),
        gutter,
        proxy,
        admin,
        placement,
    }
}

impl Fleet {
    /// A key owned by main server `server`.
    fn key_on(&self, server: usize, tag: &str) -> String {
        (0..)
            .map(|i| format!("{tag}-{i}"))
            .find(|k| self.placement.server_for(k.as_bytes()) == Some(server))
            .unwrap()
    }
}

/// What a load run saw.
#[derive(Default, Debug)]
struct Seen {
    requests: u64,
    errors: u64,
    misrouted: u64,
    longest: Duration,
}

/// `threads` clients doing pipelined-free set/get of keys whose values encode the key, for
/// `dur`. Every reply is checked against its request.
fn load(addr: SocketAddr, threads: usize, dur: Duration, stop: Arc<AtomicBool>) -> Seen {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen = Seen::default();
                let mut c = Mc::connect(addr);
                let deadline = Instant::now() + dur;
                let mut n = 0u64;
                while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = format!("load{t}-{}", n % 97);
                    let t0 = Instant::now();
                    if n.is_multiple_of(3) {
                        let v = format!("{key}={n}");
                        let r = c.set(&key, v.as_bytes());
                        if r != "STORED" {
                            assert!(r.starts_with("SERVER_ERROR"), "{r}");
                            seen.errors += 1;
                        }
                    } else {
                        c.send(format!("get {key}\r\n").as_bytes());
                        match c.values() {
                            Ok(items) => {
                                for (k, _, v) in items {
                                    let v = String::from_utf8_lossy(&v).to_string();
                                    if k != key || !v.starts_with(&format!("{key}=")) {
                                        seen.misrouted += 1;
                                    }
                                }
                            }
                            Err(line) => {
                                assert!(line.starts_with("SERVER_ERROR"), "{line}");
                                seen.errors += 1;
                            }
                        }
                    }
                    seen.requests += 1;
                    seen.longest = seen.longest.max(t0.elapsed());
                }
                seen
            })
        })
        .collect();
    let mut all = Seen::default();
    for h in handles {
        let s = h.join().unwrap();
        all.requests += s.requests;
        all.errors += s.errors;
        all.misrouted += s.misrouted;
        all.longest = all.longest.max(s.longest);
    }
    all
}

/// The TTL memcached reports for `key` (`mg KEY t`): -1 means never expires, None a miss.
fn ttl_on(addr: SocketAddr, key: &str) -> Option<i64> {
    let mut c = Mc::connect(addr);
    c.send(format!("mg {key} t\r\n").as_bytes());
    let l = c.line();
    if l.starts_with("EN") {
        return None;
    }
    let t = l.split(' ').find(|f| f.starts_with('t')).expect("t flag");
    Some(t[1..].parse().unwrap())
}

fn bound() -> Duration {
    Duration::from_millis(TIMEOUT_MS + 100)
}

#[test]
fn killed_server_fails_over_to_the_gutter_with_capped_ttl_and_comes_back() {
    let mut f = fleet("");
    let proxy = f.proxy.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let bg = {
        let stop = stop.clone();
        std::thread::spawn(move || load(proxy, 3, Duration::from_secs(30), stop))
    };
    let mut c = Mc::connect(proxy);
    let k0 = f.key_on(0, "kill");
    assert_eq!(c.set(&k0, b"before"), "STORED");
    assert_eq!(
        ttl_on(f.main_addrs[0], &k0),
        Some(-1),
        "healthy: on its own server"
    );

    // SIGKILL server 0: its keys go to the gutter, with the TTL capped.
    let port0 = f.main_addrs[0].port();
    let p = f.main[0].take().unwrap();
    signal(&p, libc::SIGKILL);
    drop(p);
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    assert_eq!(
        c.set(&k0, b"during"),
        "STORED",
        "a set fails over to the gutter"
    );
    assert!(t0.elapsed() < bound(), "failover took {:?}", t0.elapsed());
    let ttl = ttl_on(f.gutter.addr, &k0).expect("the set reached the gutter");
    assert!(
        (1..=MAX_TTL as i64).contains(&ttl),
        "gutter TTL capped: {ttl}"
    );
    assert_eq!(c.get(&k0).unwrap(), b"during", "reads follow to the gutter");
    // A set with a long exptime is capped too; a delete reaches the gutter.
    let k0b = f.key_on(0, "kill-long");
    c.send(format!("set {k0b} 0 86400 1\r\nx\r\n").as_bytes());
    assert_eq!(c.line(), "STORED");
    let ttl = ttl_on(f.gutter.addr, &k0b).unwrap();
    assert!((1..=MAX_TTL as i64).contains(&ttl), "capped: {ttl}");
    // Keys of live servers are not touched.
    let k1 = f.key_on(1, "live");
    assert_eq!(c.set(&k1, b"x"), "STORED");
    assert_eq!(ttl_on(f.main_addrs[1], &k1), Some(-1));
    assert_eq!(ttl_on(f.gutter.addr, &k1), None);

    // Restart it on the same port: the probe brings it back and its keys go back to it.
    let restarted = memcached_at(port0);
    f.main[0] = Some(restarted);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert_eq!(c.set(&k0, b"after"), "STORED");
        if ttl_on(f.main_addrs[0], &k0) == Some(-1) {
            break;
        }
        assert!(Instant::now() < deadline, "traffic returned after recovery");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Deletes go to the primary and the gutter: no stale value survives recovery.
    c.send(format!("delete {k0}\r\n").as_bytes());
    assert_eq!(c.line(), "DELETED");
    assert_eq!(ttl_on(f.gutter.addr, &k0), None, "gutter copy deleted");
    assert_eq!(c.get(&k0), None);

    // The route's counters saw the failovers and the gutter use.
    let metrics = scrape(f.admin);
    let value = |prefix: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
    };
    assert!(value("kvrouter_route_failovers_total{") >= 2.0);
    assert!(value("kvrouter_route_gutter_requests_total{") >= 2.0);

    stop.store(true, Ordering::Relaxed);
    let seen = bg.join().unwrap();
    eprintln!("SIGKILL run: {seen:?}");
    assert_eq!(seen.misrouted, 0, "no reply reached the wrong request");
    assert_eq!(
        seen.errors, 0,
        "every request was answered (failover, gutter)"
    );
    assert!(seen.longest < bound(), "longest wait {:?}", seen.longest);
    assert!(seen.requests > 100);
}

#[test]
fn hung_server_times_out_then_is_skipped_and_recovers_after_sigcont() {
    let f = fleet("");
    let proxy = f.proxy.addr;
    let hung = f.main[1].as_ref().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let bg = {
        let stop = stop.clone();
        std::thread::spawn(move || load(proxy, 3, Duration::from_secs(30), stop))
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut c = Mc::connect(proxy);
    let k = f.key_on(1, "hang");
    assert_eq!(c.set(&k, b"v1"), "STORED");

    // SIGSTOP: connections are accepted, nothing is answered.
    signal(hung, libc::SIGSTOP);
    let mut waits = Vec::new();
    for i in 0..6 {
        let t = Instant::now();
        assert_eq!(c.set(&k, format!("v{i}").as_bytes()), "STORED");
        waits.push(t.elapsed());
    }
    assert!(
        waits.iter().all(|w| *w < bound()),
        "each within timeout+100ms: {waits:?}"
    );
    // After failure_limit timeouts the server is down: later requests do not wait at all.
    let fast = waits
        .iter()
        .rev()
        .take(3)
        .all(|w| *w < Duration::from_millis(50));
    assert!(fast, "TKO skips the hung server: {waits:?}");
    assert!(
        ttl_on(f.gutter.addr, &k).is_some(),
        "the gutter took the writes"
    );

    signal(hung, libc::SIGCONT);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert_eq!(c.set(&k, b"back"), "STORED");
        if ttl_on(f.main_addrs[1], &k) == Some(-1) {
            let mut direct = Mc::connect(f.main_addrs[1]);
            if direct.get(&k).as_deref() == Some(b"back".as_slice()) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "traffic returned after SIGCONT");
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let seen = bg.join().unwrap();
    eprintln!("SIGSTOP run: {seen:?}");
    assert_eq!(seen.misrouted, 0, "no reply reached the wrong request");
    assert_eq!(
        seen.errors, 0,
        "every request was answered (failover, gutter)"
    );
    assert!(seen.longest < bound(), "longest wait {:?}", seen.longest);
    assert!(seen.requests > 100);
}

#[test]
fn writes_false_fails_sets_but_reads_still_fail_over() {
    let mut f = fleet(", writes: false");
    let mut c = Mc::connect(f.proxy.addr);
    let k = f.key_on(2, "w");
    let p = f.main[2].take().unwrap();
    signal(&p, libc::SIGKILL);
    drop(p);
    std::thread::sleep(Duration::from_millis(100));
    let r = c.set(&k, b"x");
    assert!(r.starts_with("SERVER_ERROR"), "sets do not fail over: {r}");
    assert_eq!(ttl_on(f.gutter.addr, &k), None);
    // Put it in the gutter directly: a get fails over and finds it.
    assert_eq!(Mc::connect(f.gutter.addr).set(&k, b"g"), "STORED");
    assert_eq!(c.get(&k).unwrap(), b"g");
}

fn scrape(admin: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
