//! Redis failover with real redis-servers: replicas (`redis-server --replicaof`) serve the reads
//! of a primary that is killed (SIGKILL) or hung (SIGSTOP) under load, writes to it fail fast
//! with a clear error, and traffic returns after a restart / SIGCONT; a failover route between
//! two redis pools; prefix, operation and shadow routes on a redis listener. Every value
//! encodes its key and every reply is checked.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    free_port, http_get, kvrouter, kvrouter_admin, kvrouter_bin, redis_server_with, signal, text,
    wait_for, wait_port, Frame, Proc, Resp, TempDir,
};
use kvrouter::routing::{DistributionKind, HashKind, Node, Placement};

const TIMEOUT_MS: u64 = 200;
const KEYS: usize = 200;

fn bound() -> Duration {
    Duration::from_millis(TIMEOUT_MS + 100)
}

fn redis_bin() -> &'static str {
    ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("redis-server is installed")
}

/// A primary whose data survives a restart: `SAVE` writes `dir/p-PORT.rdb`, which a restart on
/// the same port loads.
fn primary(dir: &TempDir) -> Proc {
    primary_at(dir, free_port())
}

fn primary_at(dir: &TempDir, port: u16) -> Proc {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut child = Command::new(redis_bin())
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir.0)
            .args(["--dbfilename", &format!("p-{port}.rdb")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        std::thread::sleep(Duration::from_millis(50));
        if let Ok(None) = child.try_wait() {
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            wait_port(addr, &mut child);
            return Proc { child, addr };
        }
        assert!(Instant::now() < deadline, "could not restart on {port}");
    }
}

fn replica_of(dir: &TempDir, primary: SocketAddr) -> Proc {
    let d = dir.0.display().to_string();
    let port = primary.port().to_string();
    let file = format!("replica-of-{port}.rdb");
    let r = redis_server_with(&[
        "--replicaof",
        "127.0.0.1",
        &port,
        "--dir",
        &d,
        "--dbfilename",
        &file,
    ]);
    wait_for(10, "replica link up", || {
        info(r.addr, "replication")
            .contains("master_link_status:up")
            .then_some(())
    });
    r
}

fn info(addr: SocketAddr, section: &str) -> String {
    text(&Resp::connect(addr).call(&["INFO", section]))
}

/// `cmdstat_CMD` calls on the server (0 when never called).
fn calls(addr: SocketAddr, cmd: &str) -> u64 {
    let s = info(addr, "commandstats");
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

fn value(key: &str) -> String {
    format!("val:{key}")
}

struct Fleet {
    dir: TempDir,
    primaries: Vec<Option<Proc>>,
    primary_addrs: Vec<SocketAddr>,
    replicas: Vec<Proc>,
    proxy: Proc,
    admin: SocketAddr,
    placement: Placement,
}

fn fleet() -> Fleet {
    let dir = TempDir::new();
    let primaries: Vec<Proc> = (0..2).map(|_| primary(&dir)).collect();
    let replicas: Vec<Proc> = primaries.iter().map(|p| replica_of(&dir, p.addr)).collect();
    let port = free_port();
    let yaml = format!(
        "workers: 2
pools:
  main:
    protocol: redis
    servers: [\"{}:1 r0\", \"{}:1 r1\"]
    timeout: {TIMEOUT_MS}ms
    failure_limit: 2
    retry_timeout: 300ms
    replicas: {{ r0: [\"{}\"], r1: [\"{}\"] }}
listeners:
  - {{ listen: 127.0.0.1:{port}, protocol: redis, route: main }}
",
        primaries[0].addr, primaries[1].addr, replicas[0].addr, replicas[1].addr
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (proxy, admin) = kvrouter_admin(&dir, &yaml, addr);
    let nodes: Vec<Node> = (0..2)
        .map(|i| Node {
            name: format!("r{i}"),
            weight: 1,
        })
        .collect();
    let placement = Placement::new(
        DistributionKind::Ketama,
        HashKind::Fnv1a_64,
        None,
        &nodes,
        &[true; 2],
    );
    let f = Fleet {
        dir,
        primary_addrs: primaries.iter().map(|p| p.addr).collect(),
        primaries: primaries.into_iter().map(Some).collect(),
        replicas,
        proxy,
        admin,
        placement,
    };
    // Preload every key through the proxy; wait until each replica has them all.
    let mut c = Resp::connect(f.proxy.addr);
    for i in 0..KEYS {
        let k = format!("k{i}");
        assert_eq!(c.cmd(&format!("SET {k} {}", value(&k))), "OK");
    }
    // (WAIT on a connection of its own would not wait: it waits for that connection's writes.)
    for (p, r) in f.primary_addrs.iter().zip(&f.replicas) {
        let want = Resp::connect(*p).cmd("DBSIZE");
        wait_for(10, "the replica has every preloaded key", || {
            (Resp::connect(r.addr).cmd("DBSIZE") == want).then_some(())
        });
    }
    f
}

impl Fleet {
    fn key_on(&self, server: usize, tag: &str) -> String {
        (0..)
            .map(|i| format!("{tag}-{i}"))
            .find(|k| self.placement.server_for(k.as_bytes()) == Some(server))
            .unwrap()
    }

    /// A preloaded key on `server`.
    fn loaded_on(&self, server: usize) -> String {
        (0..KEYS)
            .map(|i| format!("k{i}"))
            .find(|k| self.placement.server_for(k.as_bytes()) == Some(server))
            .unwrap()
    }
}

#[derive(Default, Debug)]
struct Seen {
    requests: u64,
    failed: u64,
    misrouted: u64,
    longest: Duration,
}

/// `threads` clients reading preloaded keys (GET, and MGET of three keys spread over both
/// servers) until `stop`; every reply is checked against the keys asked for.
fn read_load(addr: SocketAddr, threads: usize, stop: Arc<AtomicBool>) -> Seen {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen = Seen::default();
                let mut c = Resp::connect(addr);
                let mut n = t * 31;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let keys: Vec<String> = if n % 4 == 0 {
                        (0..3)
                            .map(|j| format!("k{}", (n + j * 67) % KEYS))
                            .collect()
                    } else {
                        vec![format!("k{}", n % KEYS)]
                    };
                    let t0 = Instant::now();
                    let reply = if keys.len() == 1 {
                        c.call(&["GET", &keys[0]])
                    } else {
                        let mut args = vec!["MGET"];
                        args.extend(keys.iter().map(|k| k.as_str()));
                        c.call(&args)
                    };
                    seen.longest = seen.longest.max(t0.elapsed());
                    seen.requests += 1;
                    let got: Vec<Frame> = match reply {
                        Frame::Array(Some(v)) if keys.len() > 1 => v,
                        f @ Frame::Bulk(_) if keys.len() == 1 => vec![f],
                        Frame::Error(e) => {
                            eprintln!("read failed: {}", String::from_utf8_lossy(&e));
                            seen.failed += 1;
                            continue;
                        }
                        other => panic!("unexpected reply {other:?}"),
                    };
                    for (k, v) in keys.iter().zip(&got) {
                        if text(v) != value(k) {
                            eprintln!("misrouted: {k} got {}", text(v));
                            seen.misrouted += 1;
                        }
                    }
                }
                seen
            })
        })
        .collect();
    let mut all = Seen::default();
    for h in handles {
        let s = h.join().unwrap();
        all.requests += s.requests;
        all.failed += s.failed;
        all.misrouted += s.misrouted;
        all.longest = all.longest.max(s.longest);
    }
    all
}

/// SET through the proxy: (reply, how long it took).
fn timed_set(c: &mut Resp, key: &str, v: &str) -> (String, Duration) {
    let t0 = Instant::now();
    let r = text(&c.call(&["SET", key, v]));
    (r, t0.elapsed())
}

#[test]
fn killed_primary_reads_go_to_its_replica_writes_fail_fast_and_traffic_returns() {
    let mut f = fleet();
    let proxy = f.proxy.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let bg = {
        let stop = stop.clone();
        std::thread::spawn(move || read_load(proxy, 3, stop))
    };
    std::thread::sleep(Duration::from_millis(300));
    let replica_gets_before = calls(f.replicas[0].addr, "get") + calls(f.replicas[0].addr, "mget");
    assert_eq!(replica_gets_before, 0, "healthy: reads go to the primaries");

    // SAVE so the restarted primary has the data, then SIGKILL it.
    let port0 = f.primary_addrs[0].port();
    assert_eq!(Resp::connect(f.primary_addrs[0]).cmd("SAVE"), "OK");
    let p = f.primaries[0].take().unwrap();
    signal(&p, libc::SIGKILL);
    drop(p);
    std::thread::sleep(Duration::from_millis(500));

    // Writes to the dead primary fail fast and say why; the other primary takes writes.
    let mut c = Resp::connect(proxy);
    let k0 = f.key_on(0, "w");
    for _ in 0..3 {
        let (r, took) = timed_set(&mut c, &k0, &value(&k0));
        assert!(r.starts_with("-ERR backend "), "{r}");
        assert!(r.contains("writes need its primary (a replica cannot take writes without promotion, which is Sentinel's or the cluster's job)"), "{r}");
        assert!(took < Duration::from_millis(50), "fails fast: {took:?}");
    }
    let k1 = f.key_on(1, "w");
    assert_eq!(timed_set(&mut c, &k1, &value(&k1)).0, "OK");
    // Reads of the dead primary's keys come from its replica.
    let l0 = f.loaded_on(0);
    assert_eq!(c.cmd(&format!("GET {l0}")), value(&l0));
    let served = calls(f.replicas[0].addr, "get") + calls(f.replicas[0].addr, "mget");
    assert!(served > 10, "the replica served the reads: {served}");
    // /pools lists each primary's replicas with their own health and counters.
    let (status, body) = http_get(f.admin, "/pools");
    assert_eq!(status, 200);
    let pools: serde_json::Value = serde_json::from_str(&body).unwrap();
    let r0 = &pools["pools"][0]["servers"][0];
    assert_eq!(r0["name"], "r0");
    let replica = &r0["replicas"][0];
    let replica_addr = f.replicas[0].addr.to_string();
    assert_eq!(replica["address"], replica_addr.as_str());
    assert_eq!(
        replica["name"],
        format!("r0/replica/{replica_addr}").as_str()
    );
    assert_eq!(replica["health"], "up");
    assert!(replica["requests"].as_u64().unwrap() >= 10, "{replica}");
    assert!(r0["errors"]["connect"].as_u64().unwrap() > 0, "{r0}");

    // Restart on the same port (loading the saved data): traffic goes back to it.
    let restarted = primary_at(&f.dir, port0);
    f.primaries[0] = Some(restarted);
    wait_for(10, "writes reach the restarted primary", || {
        (timed_set(&mut c, &k0, &value(&k0)).0 == "OK").then_some(())
    });
    wait_for(10, "reads reach the restarted primary", || {
        let r = c.cmd(&format!("GETRANGE {l0} 0 -1"));
        assert_eq!(r, value(&l0));
        (calls(f.primary_addrs[0], "getrange") > 0).then_some(())
    });
    assert_eq!(
        Resp::connect(f.primary_addrs[0]).cmd(&format!("GET {k0}")),
        value(&k0)
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let seen = bg.join().unwrap();
    eprintln!("SIGKILL run: {seen:?}");
    assert!(seen.requests > 500, "{seen:?}");
    assert_eq!(seen.misrouted, 0, "no reply reached the wrong request");
    assert_eq!(seen.failed, 0, "every read succeeded");
    assert!(seen.longest < bound(), "longest wait {:?}", seen.longest);
}

#[test]
fn hung_primary_reads_time_out_to_its_replica_then_skip_it_and_recover_after_sigcont() {
    let f = fleet();
    let proxy = f.proxy.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let bg = {
        let stop = stop.clone();
        std::thread::spawn(move || read_load(proxy, 3, stop))
    };
    std::thread::sleep(Duration::from_millis(300));
    let hung = f.primaries[1].as_ref().unwrap();
    signal(hung, libc::SIGSTOP);

    // Writes: at most one timeout, then the primary is down and writes fail at once.
    let mut c = Resp::connect(proxy);
    let k1 = f.key_on(1, "h");
    let mut waits = Vec::new();
    for _ in 0..6 {
        let (r, took) = timed_set(&mut c, &k1, &value(&k1));
        assert!(r.starts_with("-ERR backend "), "{r}");
        assert!(r.contains("writes need its primary"), "{r}");
        waits.push((took, r));
    }
    assert!(
        waits.iter().all(|(w, _)| *w < bound()),
        "each within timeout+100ms: {waits:?}"
    );
    let (last, r) = waits.last().unwrap();
    assert!(
        *last < Duration::from_millis(50),
        "TKO: fails fast: {waits:?}"
    );
    assert!(r.contains("is marked down (TKO)"), "{r}");
    // Reads keep succeeding from the replica meanwhile.
    let l1 = f.loaded_on(1);
    let t0 = Instant::now();
    assert_eq!(c.cmd(&format!("GET {l1}")), value(&l1));
    assert!(t0.elapsed() < Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(500));

    signal(hung, libc::SIGCONT);
    wait_for(10, "writes reach the primary after SIGCONT", || {
        (timed_set(&mut c, &k1, &value(&k1)).0 == "OK").then_some(())
    });
    wait_for(10, "reads reach the primary after SIGCONT", || {
        assert_eq!(c.cmd(&format!("GETRANGE {l1} 0 -1")), value(&l1));
        (calls(f.primary_addrs[1], "getrange") > 0).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let seen = bg.join().unwrap();
    eprintln!("SIGSTOP run: {seen:?}");
    assert!(seen.requests > 500, "{seen:?}");
    assert_eq!(seen.misrouted, 0, "no reply reached the wrong request");
    assert_eq!(seen.failed, 0, "every read succeeded");
    assert!(seen.longest < bound(), "longest wait {:?}", seen.longest);
}

#[test]
fn failover_route_between_two_redis_pools() {
    let dir = TempDir::new();
    let a = redis_server_with(&[]);
    let b = redis_server_with(&[]);
    let (p1, p2) = (free_port(), free_port());
    let yaml = format!(
        "pools:
  a: {{ protocol: redis, servers: [\"{}:1\"], timeout: {TIMEOUT_MS}ms, failure_limit: 1 }}
  b: {{ protocol: redis, servers: [\"{}:1\"], timeout: {TIMEOUT_MS}ms }}
listeners:
  - {{ listen: 127.0.0.1:{p1}, protocol: redis, route: {{ failover: [a, b] }} }}
  - listen: 127.0.0.1:{p2}
    protocol: redis
    route: {{ failover: {{ children: [a, b], writes: false }} }}
",
        a.addr, b.addr
    );
    let addr1: SocketAddr = format!("127.0.0.1:{p1}").parse().unwrap();
    let _proxy = kvrouter(&dir, &yaml, addr1);
    let mut c = Resp::connect(addr1);
    let mut c2 = Resp::connect(format!("127.0.0.1:{p2}").parse().unwrap());
    assert_eq!(c.cmd("SET fk val:fk"), "OK");
    assert_eq!(
        Resp::connect(a.addr).cmd("GET fk"),
        "val:fk",
        "healthy: pool a"
    );
    assert_eq!(Resp::connect(b.addr).cmd("GET fk"), "(nil)");
    assert_eq!(c.cmd("MGET fk fk2"), "[val:fk, (nil)]");

    // Pool a stops answering: reads and writes go to b (writes: false refuses writes).
    signal(&a, libc::SIGSTOP);
    let t0 = Instant::now();
    assert_eq!(c.cmd("SET fk val:fk-b"), "OK");
    assert!(t0.elapsed() < bound(), "{:?}", t0.elapsed());
    assert_eq!(Resp::connect(b.addr).cmd("GET fk"), "val:fk-b");
    let t0 = Instant::now();
    assert_eq!(c.cmd("GET fk"), "val:fk-b");
    assert!(
        t0.elapsed() < Duration::from_millis(50),
        "a is TKO: no wait"
    );
    assert_eq!(c.cmd("DEL fk"), ":1");
    assert_eq!(c.cmd("MSET m1 val:m1 m2 val:m2"), "OK");
    assert_eq!(c.cmd("MGET m1 m2"), "[val:m1, val:m2]");
    let r = c2.cmd("SET w val:w");
    assert!(
        r.starts_with("-ERR backend ") && r.contains("marked down"),
        "{r}"
    );
    assert_eq!(c2.cmd("GET m1"), "val:m1", "reads still fail over");
    signal(&a, libc::SIGCONT);
    wait_for(10, "a takes writes again", || {
        (c2.cmd("SET w val:w") == "OK").then_some(())
    });
    assert_eq!(Resp::connect(a.addr).cmd("GET w"), "val:w");
}

#[test]
fn prefix_operation_and_shadow_routes_on_a_redis_listener() {
    let dir = TempDir::new();
    let users = redis_server_with(&[]);
    let sessions_r = redis_server_with(&[]);
    let sessions_w = redis_server_with(&[]);
    let rest = redis_server_with(&[]);
    let mirror = redis_server_with(&[]);
    let (p1, p2) = (free_port(), free_port());
    let yaml = format!(
        "pools:
  users: {{ protocol: redis, servers: [\"{}:1\"] }}
  sess-read: {{ protocol: redis, servers: [\"{}:1\"] }}
  sess-write: {{ protocol: redis, servers: [\"{}:1\"] }}
  rest: {{ protocol: redis, servers: [\"{}:1\"] }}
  mirror: {{ protocol: redis, servers: [\"{}:1\"] }}
listeners:
  - listen: 127.0.0.1:{p1}
    protocol: redis
    route:
      prefix:
        \"user:\": users
        \"sess:\": {{ operation: {{ get: sess-read, set: sess-write, delete: sess-write, default: sess-write }} }}
        default: rest
  - listen: 127.0.0.1:{p2}
    protocol: redis
    route: {{ shadow: {{ route: users, shadow: mirror }} }}
    users:
      - {{ name: app, password: pw-app, pools: [users] }}
      - {{ name: all, password: pw-all, pools: [users, mirror] }}
",
        users.addr, sessions_r.addr, sessions_w.addr, rest.addr, mirror.addr
    );
    let addr1: SocketAddr = format!("127.0.0.1:{p1}").parse().unwrap();
    let _proxy = kvrouter(&dir, &yaml, addr1);
    let mut c = Resp::connect(addr1);
    let direct = |a: SocketAddr, line: &str| Resp::connect(a).cmd(line);

    // prefix: longest match, default for the rest.
    assert_eq!(c.cmd("SET user:1 val:user:1"), "OK");
    assert_eq!(c.cmd("SET other val:other"), "OK");
    assert_eq!(direct(users.addr, "GET user:1"), "val:user:1");
    assert_eq!(direct(rest.addr, "GET other"), "val:other");
    assert_eq!(direct(rest.addr, "GET user:1"), "(nil)");
    assert_eq!(c.cmd("MGET user:1 user:2"), "[val:user:1, (nil)]");
    // operation: writes to sess-write, reads from sess-read, deletes to sess-write.
    assert_eq!(c.cmd("SET sess:1 val:written"), "OK");
    assert_eq!(direct(sessions_w.addr, "GET sess:1"), "val:written");
    assert_eq!(direct(sessions_r.addr, "SET sess:1 val:read-copy"), "OK");
    assert_eq!(c.cmd("GET sess:1"), "val:read-copy");
    assert_eq!(
        c.cmd("STRLEN sess:1"),
        ":13",
        "read-only by the command table"
    );
    assert_eq!(c.cmd("DEL sess:1"), ":1");
    assert_eq!(direct(sessions_w.addr, "EXISTS sess:1"), ":0");
    assert_eq!(direct(sessions_r.addr, "EXISTS sess:1"), ":1");
    // Keys of one command on different routes: refused, nothing sent.
    let r = c.cmd("MGET user:1 other");
    assert!(
        r.starts_with("-ERR the keys of this MGET take different routes ('user:1' and 'other')"),
        "{r}"
    );
    let r = c.cmd("MSET user:9 a other9 b");
    assert!(r.contains("take different routes"), "{r}");
    assert_eq!(direct(users.addr, "EXISTS user:9"), ":0");
    // Transactions use the tree's first pool (users): other keys are refused, not misrouted.
    assert_eq!(c.cmd("MULTI"), "OK");
    assert_eq!(c.cmd("SET user:tx val:user:tx"), "QUEUED");
    let r = c.cmd("SET other-tx x");
    assert!(
        r.contains("routes to pool rest") && r.contains("first pool (users)"),
        "{r}"
    );
    assert!(c.cmd("EXEC").starts_with("-EXECABORT"));
    assert_eq!(c.cmd("MULTI"), "OK");
    assert_eq!(c.cmd("SET user:tx val:user:tx"), "QUEUED");
    assert_eq!(c.cmd("EXEC"), "[OK]");
    assert_eq!(direct(users.addr, "GET user:tx"), "val:user:tx");

    // shadow: the main route answers, the shadow gets a copy.
    let mut s = Resp::connect(format!("127.0.0.1:{p2}").parse().unwrap());
    // A user needs every pool the tree can send to.
    assert!(s.cmd("AUTH app pw-app").starts_with("-NOPERM"));
    assert_eq!(s.cmd("AUTH all pw-all"), "OK");
    assert_eq!(s.cmd("SET sh val:sh"), "OK");
    assert_eq!(direct(users.addr, "GET sh"), "val:sh");
    wait_for(5, "the shadow got its copy", || {
        (direct(mirror.addr, "GET sh") == "val:sh").then_some(())
    });
    assert_eq!(direct(mirror.addr, "SET sh val:mirror-only"), "OK");
    assert_eq!(
        s.cmd("GET sh"),
        "val:sh",
        "replies come from the main route"
    );
}

#[test]
fn all_sync_and_warm_up_routes_on_a_redis_listener() {
    let dir = TempDir::new();
    let (a, b) = (redis_server_with(&[]), redis_server_with(&[]));
    let (cold, warm) = (redis_server_with(&[]), redis_server_with(&[]));
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let yaml = format!(
        "pools:
  a: {{ protocol: redis, servers: [\"{}:1\"] }}
  b: {{ protocol: redis, servers: [\"{}:1\"] }}
  cold: {{ protocol: redis, servers: [\"{}:1\"] }}
  warm: {{ protocol: redis, servers: [\"{}:1\"] }}
listeners:
  - {{ listen: 127.0.0.1:{p1}, protocol: redis, route: {{ all_sync: [a, b] }} }}
  - {{ listen: 127.0.0.1:{p2}, protocol: redis, route: {{ all_sync: [a, b], reply: all_ok }} }}
  - {{ listen: 127.0.0.1:{p3}, protocol: redis, route: {{ warm_up: {{ cold: cold, warm: warm, exptime: 100s }} }} }}
",
        a.addr, b.addr, cold.addr, warm.addr
    );
    let addr = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
    let _proxy = kvrouter(&dir, &yaml, addr(p1));
    let direct = |a: SocketAddr, line: &str| Resp::connect(a).cmd(line);

    // all_sync: every child gets the command; `first` answers with a's reply.
    let mut c = Resp::connect(addr(p1));
    assert_eq!(c.cmd("SET both 1"), "OK");
    assert_eq!(direct(a.addr, "GET both"), "1");
    assert_eq!(direct(b.addr, "GET both"), "1");
    assert_eq!(c.cmd("INCR both"), ":2");
    assert_eq!(direct(b.addr, "GET both"), "2");
    // A command that fails on b only: `first` answers a's success, `all_ok` b's error.
    assert_eq!(direct(b.addr, "SET list-on-b x"), "OK");
    assert_eq!(c.cmd("LPUSH list-on-b y"), ":1");
    let mut all_ok = Resp::connect(addr(p2));
    let r = all_ok.cmd("LPUSH list-on-b z");
    assert!(r.starts_with("-WRONGTYPE"), "{r}");
    assert_eq!(direct(a.addr, "LRANGE list-on-b 0 -1"), "[z, y]");

    // warm_up: a GET that misses on cold is read from warm and added to cold.
    let mut w = Resp::connect(addr(p3));
    assert_eq!(direct(warm.addr, "SET old-key from-warm"), "OK");
    assert_eq!(w.cmd("GET old-key"), "from-warm");
    wait_for(5, "the value is added to cold", || {
        (direct(cold.addr, "GET old-key") == "from-warm").then_some(())
    });
    let ttl: i64 = direct(cold.addr, "TTL old-key")[1..].parse().unwrap();
    assert!((1..=100).contains(&ttl), "exptime applied: {ttl}");
    // Cold answers once it has the key; writes go to cold only; misses on both stay misses.
    assert_eq!(direct(warm.addr, "SET old-key changed-on-warm"), "OK");
    assert_eq!(w.cmd("GET old-key"), "from-warm");
    assert_eq!(w.cmd("SET new-key fresh"), "OK");
    assert_eq!(direct(cold.addr, "GET new-key"), "fresh");
    assert_eq!(direct(warm.addr, "EXISTS new-key"), ":0");
    assert_eq!(w.cmd("GET nowhere"), "(nil)");
    // The fill never overwrites a newer value written to cold meanwhile (SET NX).
    assert_eq!(direct(warm.addr, "SET raced from-warm"), "OK");
    assert_eq!(direct(cold.addr, "SET raced newer"), "OK");
    assert_eq!(w.cmd("GET raced"), "newer");
    assert_eq!(direct(cold.addr, "GET raced"), "newer");
}

/// One command straight to a server, bypassing kvrouter.
fn direct(a: SocketAddr, line: &str) -> String {
    Resp::connect(a).cmd(line)
}

/// The metric line `name{labels...}` of a scrape, as a number (0 when absent).
fn metric(admin: SocketAddr, name: &str, label: &str) -> f64 {
    let (_, body) = http_get(admin, "/metrics");
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn gutter_on_a_redis_listener_caps_ttls_takes_deletes_and_counts_failovers() {
    let dir = TempDir::new();
    let a = redis_server_with(&[]);
    let g = redis_server_with(&[]);
    let port = free_port();
    let yaml = format!(
        "pools:
  a: {{ protocol: redis, servers: [\"{}:1\"], timeout: {TIMEOUT_MS}ms, failure_limit: 1 }}
  g: {{ protocol: redis, servers: [\"{}:1\"], timeout: {TIMEOUT_MS}ms }}
listeners:
  - listen: 127.0.0.1:{port}
    protocol: redis
    route: {{ failover: [a, {{ gutter: g, max_ttl: 3s }}] }}
",
        a.addr, g.addr
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_proxy, admin) = kvrouter_admin(&dir, &yaml, addr);
    let mut c = Resp::connect(addr);
    assert_eq!(c.cmd("SET gk val:gk"), "OK");
    assert_eq!(
        direct(a.addr, "GET gk"),
        "val:gk",
        "healthy: the primary pool"
    );
    assert_eq!(direct(g.addr, "EXISTS gk"), ":0");
    assert_eq!(metric(admin, "kvrouter_route_failovers_total", ""), 0.0);

    signal(&a, libc::SIGSTOP);
    // Writes land on the gutter with a TTL of at most max_ttl, whatever they asked for.
    assert_eq!(c.cmd("SET gk val:gk-g"), "OK");
    assert_eq!(c.cmd("SET long val:long EX 3600"), "OK");
    assert_eq!(c.cmd("SET short val:short PX 1500"), "OK");
    assert_eq!(c.cmd("INCR counter"), ":1");
    assert_eq!(c.cmd("MSET m1 val:m1 m2 val:m2"), "OK");
    for key in ["gk", "long", "counter", "m1", "m2"] {
        let pttl: i64 = direct(g.addr, &format!("PTTL {key}"))[1..].parse().unwrap();
        assert!(
            (1..=3000).contains(&pttl),
            "{key}: capped at 3 s, got {pttl}"
        );
    }
    let short: i64 = direct(g.addr, "PTTL short")[1..].parse().unwrap();
    assert!(
        (1..=1500).contains(&short),
        "a shorter TTL is kept: {short}"
    );
    // Reads are served from the gutter; deletes reach it.
    assert_eq!(c.cmd("GET gk"), "val:gk-g");
    assert_eq!(c.cmd("MGET m1 m2"), "[val:m1, val:m2]");
    assert_eq!(c.cmd("DEL m1"), ":1");
    assert_eq!(direct(g.addr, "EXISTS m1"), ":0");
    // 7 requests failed over (5 writes, 2 reads); the DEL went to a and the gutter at once.
    assert_eq!(
        metric(admin, "kvrouter_route_failovers_total", ""),
        7.0,
        "every request that left pool a is counted"
    );
    assert_eq!(
        metric(admin, "kvrouter_route_gutter_requests_total", "pool=\"g\""),
        8.0
    );

    signal(&a, libc::SIGCONT);
    // Deletes go to the gutter too once a is back, so its copy does not outlive the delete.
    wait_for(10, "a answers again", || {
        (c.cmd("SET back val:back") == "OK" && direct(a.addr, "GET back") == "val:back")
            .then_some(())
    });
    assert_eq!(c.cmd("DEL gk"), ":1");
    assert_eq!(
        direct(g.addr, "EXISTS gk"),
        ":0",
        "the delete reached the gutter"
    );
}

#[test]
fn route_handles_on_redis_listeners_pass_the_config_check() {
    let dir = TempDir::new();
    let check = |route: &str| {
        let conf = dir.write(
            "r.yml",
            &format!(
                "pools:
  a: {{ protocol: redis, servers: [\"127.0.0.1:6379:1\"] }}
  b: {{ protocol: redis, servers: [\"127.0.0.1:6380:1\"] }}
listeners:
  - listen: 127.0.0.1:16390
    protocol: redis
    route: {route}
"
            ),
        );
        let out = Command::new(kvrouter_bin())
            .args(["-t", "-c"])
            .arg(&conf)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.success(), err)
    };
    let (ok, err) = check("{ failover: [a, { gutter: b, max_ttl: 5s }] }");
    assert!(ok, "{err}");
    let (ok, err) = check("{ all_sync: [a, b] }");
    assert!(ok, "{err}");
    let (ok, err) = check("{ warm_up: { cold: a, warm: b } }");
    assert!(ok, "{err}");
    let (ok, err) = check("{ prefix: { \"x:\": a, default: { failover: [b, a] } } }");
    assert!(ok, "{err}");
    let (ok, err) = check("{ gutter: b }");
    assert!(!ok && err.contains("`gutter` is a failover child"), "{err}");
    // The example config loads and passes the same checks.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/redis-failover.yml");
    let out = Command::new(kvrouter_bin())
        .args(["-t", "-c"])
        .arg(&example)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
