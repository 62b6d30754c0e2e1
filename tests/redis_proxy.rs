//! kvrouter in front of three real redis-server processes: RESP end to end.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{
    free_port, kvrouter, redis_server, redis_server_with, text, Frame, Proc, Resp, TempDir,
};
use kvrouter::config::Config;
use kvrouter::routing::{Node, Placement};

struct Setup {
    _dir: TempDir,
    backends: Vec<Proc>,
    proxy: Proc,
    placement: Placement,
}

/// kvrouter (native format) over `backends`, with `extra` pool lines (4-space indented).
fn setup_over(backends: Vec<Proc>, extra: &str, workers: usize) -> Setup {
    let dir = TempDir::new();
    let port = free_port();
    let servers: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("\"{}:1 r{i}\"", b.addr))
        .collect();
    let yaml = format!(
        "workers: {workers}\npools:\n  r:\n    protocol: redis\n    hash: fnv1a_64\n    distribution: ketama\n    hash_tag: \"{{}}\"\n    servers: [{}]\n{extra}listeners:\n  - {{ listen: 127.0.0.1:{port}, protocol: redis, route: r }}\n",
        servers.join(", ")
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let proxy = kvrouter(&dir, &yaml, addr);
    let config = Config::load(&PathBuf::from(&dir.0).join(format!("kvrouter-{port}.yml"))).unwrap();
    let pool = &config.pools[0];
    let nodes: Vec<Node> = pool
        .servers
        .iter()
        .map(|s| Node {
            name: s.placement_name(),
            weight: s.weight,
        })
        .collect();
    let placement = Placement::new(
        pool.distribution,
        pool.hash,
        pool.hash_tag,
        &nodes,
        &vec![true; nodes.len()],
    );
    Setup {
        _dir: dir,
        backends,
        proxy,
        placement,
    }
}

fn setup_with(extra: &str) -> Setup {
    setup_over((0..3).map(|_| redis_server()).collect(), extra, 2)
}

fn setup() -> Setup {
    setup_with("    timeout: 2s\n")
}

impl Setup {
    fn client(&self) -> Resp {
        Resp::connect(self.proxy.addr)
    }

    fn owner(&self, key: &str) -> usize {
        self.placement.server_for(key.as_bytes()).unwrap()
    }

    /// A key named `prefix<N>` owned by `server`.
    fn key_on(&self, server: usize, prefix: &str) -> String {
        (0..)
            .map(|i| format!("{prefix}{i}"))
            .find(|k| self.owner(k) == server)
            .unwrap()
    }

    /// The backends holding `key`, asked directly.
    fn holders(&self, key: &str) -> Vec<usize> {
        self.backends
            .iter()
            .enumerate()
            .filter(|(_, b)| Resp::connect(b.addr).cmd(&format!("EXISTS {key}")) == ":1")
            .map(|(i, _)| i)
            .collect()
    }
}

#[test]
fn pipeline_of_10000_commands_answered_in_order() {
    let s = setup();
    let mut c = s.client();
    let mut batch = Vec::new();
    for i in 0..5000 {
        let key = format!("p:{i}");
        let val = format!("v{i}");
        batch
            .extend_from_slice(&kvrouter::protocol::resp::encode_request(&["SET", &key, &val]).raw);
        batch.extend_from_slice(&kvrouter::protocol::resp::encode_request(&["GET", &key]).raw);
    }
    c.send_raw(&batch);
    for i in 0..5000 {
        assert_eq!(text(&c.read()), "OK", "reply {}", 2 * i);
        assert_eq!(text(&c.read()), format!("v{i}"), "reply {}", 2 * i + 1);
    }
    // Keys spread over all three servers, each on the one placement says.
    let mut used = [0; 3];
    for i in (0..5000).step_by(97) {
        let key = format!("p:{i}");
        let h = s.holders(&key);
        assert_eq!(h, vec![s.owner(&key)], "{key}");
        used[h[0]] += 1;
    }
    assert!(used.iter().all(|&n| n > 0), "{used:?}");
}

#[test]
fn multi_key_commands_split_and_merge() {
    let s = setup();
    let mut c = s.client();
    // Ten keys on each server, interleaved.
    let keys: Vec<String> = (0..30)
        .map(|i| s.key_on(i % 3, &format!("mk{i}_")))
        .collect();
    let mut mset = vec!["MSET".to_string()];
    for k in &keys {
        mset.push(k.clone());
        mset.push(format!("val-{k}"));
    }
    assert_eq!(text(&c.call(&mset)), "OK");
    for k in keys.iter().step_by(7) {
        assert_eq!(s.holders(k), vec![s.owner(k)]);
    }
    // MGET in key order, with misses and a repeated key.
    let k = |i: usize| keys[i].as_str();
    let asked = [k(3), "nope1", k(0), k(29), k(3), "nope2", k(17)];
    let mut mget = vec!["MGET"];
    mget.extend(asked);
    let want: Vec<String> = asked
        .iter()
        .map(|a| {
            if a.starts_with("nope") {
                "(nil)".to_string()
            } else {
                format!("val-{a}")
            }
        })
        .collect();
    assert_eq!(text(&c.call(&mget)), format!("[{}]", want.join(", ")));
    let call = |c: &mut Resp, cmd: &str, idx: &[usize]| {
        let mut a = vec![cmd];
        a.extend(idx.iter().map(|&i| if i == 99 { "nope" } else { k(i) }));
        text(&c.call(&a))
    };
    assert_eq!(call(&mut c, "EXISTS", &[1, 2, 99, 1, 20]), ":4");
    assert_eq!(call(&mut c, "TOUCH", &[1, 2, 99, 25]), ":3");
    assert_eq!(call(&mut c, "DEL", &[1, 2, 99, 25, 26]), ":4");
    assert_eq!(call(&mut c, "UNLINK", &[1, 3, 4, 5, 6]), ":4");
    assert_eq!(
        call(&mut c, "MGET", &[1, 3, 7]),
        format!("[(nil), (nil), val-{}]", k(7))
    );
    // MSET's OK needs every server's OK; an error from one server is the reply.
    assert_eq!(c.cmd("SET {h}x 1"), "OK");
    assert_eq!(c.cmd("LPUSH {l}list a"), ":1");
    assert_eq!(call(&mut c, "MGET", &[7]), format!("[val-{}]", k(7)));
    let mixed = text(&c.call(&["MGET", "{h}x", "{l}list", k(7)]));
    assert_eq!(mixed, format!("[1, (nil), val-{}]", k(7)));
}

#[test]
fn data_types() {
    let s = setup();
    let mut c = s.client();
    let script = [
        // strings
        ("SET str hello", "OK"),
        ("APPEND str _world", ":11"),
        ("GETRANGE str 0 4", "hello"),
        ("STRLEN str", ":11"),
        ("SET n 10", "OK"),
        ("INCRBY n 5", ":15"),
        ("DECR n", ":14"),
        ("SETEX tmp 100 v", "OK"),
        ("TTL tmp", ":100"),
        ("SETNX n 1", ":0"),
        ("GETDEL tmp", "v"),
        // lists
        ("RPUSH list a b c", ":3"),
        ("LPUSH list z", ":4"),
        ("LRANGE list 0 -1", "[z, a, b, c]"),
        ("LPOP list", "z"),
        ("LLEN list", ":3"),
        ("LINDEX list 1", "b"),
        // hashes
        ("HSET h f1 v1 f2 v2", ":2"),
        ("HGET h f1", "v1"),
        ("HINCRBY h cnt 3", ":3"),
        ("HLEN h", ":3"),
        ("HMGET h f1 f2 nope", "[v1, v2, (nil)]"),
        // sets (hash tags keep the two sets together for SINTER)
        ("SADD {s}a x y z", ":3"),
        ("SADD {s}b y z w", ":3"),
        ("SISMEMBER {s}a x", ":1"),
        ("SCARD {s}a", ":3"),
        ("SINTERSTORE {s}c {s}a {s}b", ":2"),
        // sorted sets
        ("ZADD z 1 one 2 two 3 three", ":3"),
        ("ZRANGE z 0 -1 WITHSCORES", "[one, 1, two, 2, three, 3]"),
        ("ZINCRBY z 10 one", "11"),
        ("ZSCORE z one", "11"),
        ("ZRANK z one", ":2"),
        ("ZCOUNT z 0 5", ":2"),
        // streams
        ("XADD st 1-1 f v", "1-1"),
        ("XADD st 2-1 f w", "2-1"),
        ("XLEN st", ":2"),
        ("XRANGE st - + COUNT 1", "[[1-1, [f, v]]]"),
        ("XREAD COUNT 1 STREAMS st 1-1", "[[st, [[2-1, [f, w]]]]]"),
        // HyperLogLog
        ("PFADD hll a b c d", ":1"),
        ("PFCOUNT hll", ":4"),
        // bitmaps
        ("SETBIT bits 7 1", ":0"),
        ("GETBIT bits 7", ":1"),
        ("BITCOUNT bits", ":1"),
        ("BITPOS bits 1", ":7"),
        // geo
        (
            "GEOADD geo 13.361389 38.115556 Palermo 15.087269 37.502669 Catania",
            ":2",
        ),
        ("GEODIST geo Palermo Catania km", "166.2742"),
        (
            "GEOSEARCH geo FROMLONLAT 15 37 BYRADIUS 200 km ASC",
            "[Catania, Palermo]",
        ),
        // keys
        ("TYPE z", "zset"),
        ("EXPIRE list 100", ":1"),
        ("PERSIST list", ":1"),
    ];
    for (cmd, want) in script {
        assert_eq!(c.cmd(cmd), want, "{cmd}");
    }
    // Each key lives where placement says.
    for k in ["str", "list", "h", "z", "st", "hll", "bits", "geo"] {
        assert_eq!(s.holders(k), vec![s.owner(k)], "{k}");
    }
}

#[test]
fn keys_on_different_servers_are_refused_with_a_hash_tag_hint() {
    let s = setup();
    let mut c = s.client();
    let a = s.key_on(0, "ra");
    let b = s.key_on(1, "rb");
    assert_eq!(c.cmd(&format!("SET {a} 1")), "OK");
    let err = c.cmd(&format!("RENAME {a} {b}"));
    assert!(
        err.starts_with("-CROSSSLOT Keys in request don't hash to the same server")
            && err.contains("hash tags {...}"),
        "{err}"
    );
    assert!(c.cmd(&format!("SMOVE {a} {b} x")).starts_with("-CROSSSLOT"));
    assert!(text(&c.call(&["EVAL", "return 1", "2", &a, &b])).starts_with("-CROSSSLOT"));
    // Same hash tag: same server, allowed.
    assert_eq!(c.cmd("SET {user1}a 1"), "OK");
    assert_eq!(c.cmd("RENAME {user1}a {user1}b"), "OK");
    assert_eq!(c.cmd("GET {user1}b"), "1");
    assert_eq!(
        text(&c.call(&["EVAL", "return redis.call('get',KEYS[1])", "1", "{user1}b"])),
        "1"
    );
    // Still usable afterwards.
    assert_eq!(c.cmd(&format!("GET {a}")), "1");
}

#[test]
fn transactions() {
    let s = setup();
    let mut c = s.client();
    // Commit.
    assert_eq!(c.cmd("MULTI"), "OK");
    assert_eq!(c.cmd("SET {t}n 1"), "QUEUED");
    assert_eq!(c.cmd("INCR {t}n"), "QUEUED");
    assert_eq!(c.cmd("GET {t}n"), "QUEUED");
    assert_eq!(c.cmd("EXEC"), "[OK, :2, 2]");
    // Discard: nothing runs.
    assert_eq!(c.cmd("MULTI"), "OK");
    assert_eq!(c.cmd("INCR {t}n"), "QUEUED");
    assert_eq!(c.cmd("DISCARD"), "OK");
    assert_eq!(c.cmd("GET {t}n"), "2");
    assert_eq!(c.cmd("EXEC"), "-ERR EXEC without MULTI");
    // A key on another server aborts the whole transaction; nothing runs anywhere.
    let a = s.key_on(0, "ta");
    let b = s.key_on(2, "tb");
    assert_eq!(c.cmd("MULTI"), "OK");
    assert_eq!(c.cmd(&format!("SET {a} 1")), "QUEUED");
    assert!(c.cmd(&format!("SET {b} 1")).starts_with("-CROSSSLOT"));
    assert_eq!(c.cmd(&format!("SET {a} 2")), "QUEUED");
    assert_eq!(
        c.cmd("EXEC"),
        "-EXECABORT Transaction discarded because of: keys on different servers"
    );
    assert_eq!(c.cmd(&format!("EXISTS {a}")), ":0");
    assert_eq!(c.cmd(&format!("EXISTS {b}")), ":0");
    // Queue-time errors abort like redis does.
    assert_eq!(c.cmd("MULTI"), "OK");
    assert!(c
        .cmd("NOSUCHCMD x")
        .starts_with("-ERR unknown command 'NOSUCHCMD'"));
    assert_eq!(
        c.cmd("EXEC"),
        "-EXECABORT Transaction discarded because of: previous errors"
    );
    // WATCH: a change by another client makes EXEC return nil.
    let mut other = s.client();
    assert_eq!(c.cmd("SET {w}k 1"), "OK");
    assert_eq!(c.cmd("WATCH {w}k"), "OK");
    assert_eq!(c.cmd("GET {w}k"), "1");
    assert_eq!(other.cmd("SET {w}k 5"), "OK");
    assert_eq!(c.cmd("MULTI"), "OK");
    assert_eq!(c.cmd("SET {w}k 2"), "QUEUED");
    assert_eq!(c.cmd("EXEC"), "(nil)");
    assert_eq!(c.cmd("GET {w}k"), "5");
    // WATCH without interference: EXEC runs.
    assert_eq!(c.cmd("WATCH {w}k"), "OK");
    assert_eq!(c.cmd("MULTI"), "OK");
    assert_eq!(c.cmd("INCR {w}k"), "QUEUED");
    assert_eq!(c.cmd("EXEC"), "[:6]");
    // WATCH on one server, then a transaction key on another: aborted.
    assert_eq!(c.cmd(&format!("WATCH {a}")), "OK");
    assert_eq!(c.cmd("MULTI"), "OK");
    assert!(c.cmd(&format!("SET {b} 1")).starts_with("-CROSSSLOT"));
    assert!(c.cmd("EXEC").starts_with("-EXECABORT"));
    // Pipelined: earlier and later commands keep their order around the transaction.
    c.send(&["SET", "{t}p", "1"]);
    c.send(&["MULTI"]);
    c.send(&["INCR", "{t}p"]);
    c.send(&["EXEC"]);
    c.send(&["GET", "{t}p"]);
    let got: Vec<String> = (0..5).map(|_| text(&c.read())).collect();
    assert_eq!(got, ["OK", "OK", "QUEUED", "[:2]", "2"]);
}

#[test]
fn pub_sub_across_servers() {
    let s = setup();
    let mut sub = s.client();
    let mut psub = s.client();
    let mut pubc = s.client();
    // Channels on different servers.
    let ch: Vec<String> = (0..3).map(|i| s.key_on(i, "chan")).collect();
    sub.send(&["SUBSCRIBE", &ch[0], &ch[1], &ch[2]]);
    for (i, c) in ch.iter().enumerate() {
        assert_eq!(text(&sub.read()), format!("[subscribe, {c}, :{}]", i + 1));
    }
    assert_eq!(
        text(&psub.call(&["PSUBSCRIBE", "chan*"])),
        "[psubscribe, chan*, :1]"
    );
    // In subscribed mode only the subscribe family, PING and QUIT.
    assert_eq!(sub.cmd("PING"), "[pong, ]");
    assert!(sub.cmd("GET x").starts_with("-ERR Can't execute 'get'"));
    // Publishing through the proxy reaches both subscribers, once each.
    std::thread::sleep(Duration::from_millis(100));
    for (i, c) in ch.iter().enumerate() {
        let n = pubc.cmd(&format!("PUBLISH {c} hello{i}"));
        assert_eq!(n, ":2", "publish {c}");
    }
    // Messages from different servers arrive over different connections: their relative
    // order is not defined (as with any cluster of redis servers).
    let mut got: Vec<String> = (0..3).map(|_| text(&sub.read())).collect();
    got.sort();
    let mut want: Vec<String> = ch
        .iter()
        .enumerate()
        .map(|(i, c)| format!("[message, {c}, hello{i}]"))
        .collect();
    want.sort();
    assert_eq!(got, want);
    let mut got: Vec<String> = (0..3).map(|_| text(&psub.read())).collect();
    got.sort();
    let mut want: Vec<String> = ch
        .iter()
        .enumerate()
        .map(|(i, c)| format!("[pmessage, chan*, {c}, hello{i}]"))
        .collect();
    want.sort();
    assert_eq!(got, want);
    // Unsubscribe one channel: no more messages from it.
    assert_eq!(
        text(&sub.call(&["UNSUBSCRIBE", &ch[1]])),
        format!("[unsubscribe, {}, :2]", ch[1])
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(pubc.cmd(&format!("PUBLISH {} x", ch[1])), ":1");
    assert_eq!(pubc.cmd(&format!("PUBLISH {} y", ch[2])), ":2");
    assert_eq!(text(&sub.read()), format!("[message, {}, y]", ch[2]));
    // Unsubscribe from everything: back to normal mode.
    sub.send(&["UNSUBSCRIBE"]);
    let mut left: Vec<String> = (0..2).map(|_| text(&sub.read())).collect();
    left.sort();
    assert!(left[1].ends_with(":0]"), "{left:?}");
    assert_eq!(sub.cmd("SET after 1"), "OK");
    assert_eq!(
        text(&psub.read()),
        format!("[pmessage, chan*, {}, x]", ch[1])
    );
    assert_eq!(
        text(&psub.read()),
        format!("[pmessage, chan*, {}, y]", ch[2])
    );
    assert_eq!(
        text(&psub.call(&["PUNSUBSCRIBE"])),
        "[punsubscribe, chan*, :0]"
    );
    assert_eq!(psub.cmd("GET after"), "1");
    // Sharded pub/sub.
    let mut ssub = s.client();
    assert_eq!(
        text(&ssub.call(&["SSUBSCRIBE", "{sh}c"])),
        "[ssubscribe, {sh}c, :1]"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(pubc.cmd("SPUBLISH {sh}c m"), ":1");
    assert_eq!(text(&ssub.read()), "[smessage, {sh}c, m]");
}

#[test]
fn blocking_commands_use_their_own_connection() {
    // One worker and one shared connection per server: the blocked client and the busy one
    // are multiplexed on the same backend connections.
    let s = setup_over(
        (0..3).map(|_| redis_server()).collect(),
        "    timeout: 300ms\n",
        1,
    );
    let addr = s.proxy.addr;
    let blocked = std::thread::spawn(move || {
        let mut c = Resp::connect(addr);
        let t = Instant::now();
        let r = c.cmd("BLPOP {q}queue 10");
        (r, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    let mut busy = s.client();
    let t = Instant::now();
    for i in 0..200 {
        let k = format!("busy{i}");
        assert_eq!(busy.cmd(&format!("SET {k} {i}")), "OK");
        assert_eq!(busy.cmd(&format!("GET {k}")), i.to_string());
    }
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // The pool timeout (300 ms) did not cut the BLPOP short; a push wakes it.
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(busy.cmd("RPUSH {q}queue v1"), ":1");
    let (r, took) = blocked.join().unwrap();
    assert_eq!(r, "[{q}queue, v1]");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // Its own timeout governs: nil after ~1 s, longer than the pool timeout.
    let mut c = s.client();
    let t = Instant::now();
    assert_eq!(c.cmd("BRPOP {q}empty 1"), "(nil)");
    // Well past the 300 ms pool timeout (redis checks blocking timeouts on its own clock, and
    // can answer a little early on a loaded machine).
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );
    // Keys on different servers: refused.
    let a = s.key_on(0, "ba");
    let b = s.key_on(1, "bb");
    assert!(c.cmd(&format!("BLPOP {a} {b} 1")).starts_with("-CROSSSLOT"));
    // Other blocking commands.
    assert_eq!(c.cmd("RPUSH {q}src x"), ":1");
    assert_eq!(c.cmd("BLMOVE {q}src {q}dst LEFT RIGHT 1"), "x");
    assert_eq!(c.cmd("ZADD {q}z 1 a"), ":1");
    assert_eq!(c.cmd("BZPOPMIN {q}z 1"), "[{q}z, a, 1]");
    assert_eq!(c.cmd("XADD {q}st 1-1 f v"), "1-1");
    assert_eq!(
        c.cmd("XREAD BLOCK 100 STREAMS {q}st 0"),
        "[[{q}st, [[1-1, [f, v]]]]]"
    );
    assert_eq!(c.cmd("XREAD BLOCK 100 STREAMS {q}st $"), "(nil)");
    // A client that leaves while blocked cancels its command (no pop is lost).
    let mut gone = s.client();
    gone.send(&["BLPOP", "{q}later", "10"]);
    std::thread::sleep(Duration::from_millis(100));
    drop(gone);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(c.cmd("RPUSH {q}later v"), ":1");
    assert_eq!(c.cmd("LLEN {q}later"), ":1");
    // WAIT is refused with the reason.
    let w = c.cmd("WAIT 1 0");
    assert!(
        w.contains("WAIT") && w.contains("multiplexing proxy"),
        "{w}"
    );
}

#[test]
fn auth_and_db_on_backends() {
    let backends: Vec<Proc> = (0..3)
        .map(|_| redis_server_with(&["--requirepass", "s3cret"]))
        .collect();
    let s = setup_over(
        backends,
        "    timeout: 2s\n    redis_auth: s3cret\n    redis_db: 3\n",
        2,
    );
    let mut c = s.client();
    assert_eq!(c.cmd("GET k"), "-NOAUTH Authentication required.");
    assert_eq!(
        c.cmd("AUTH wrong"),
        "-WRONGPASS invalid username-password pair or user is disabled."
    );
    assert_eq!(c.cmd("PING"), "-NOAUTH Authentication required.");
    assert_eq!(c.cmd("AUTH s3cret"), "OK");
    for i in 0..20 {
        assert_eq!(c.cmd(&format!("SET dbkey{i} v{i}")), "OK");
    }
    assert_eq!(c.cmd("GET dbkey7"), "v7");
    assert_eq!(c.cmd("DBSIZE"), ":20");
    // Directly on the owning server: in db 3, not in db 0.
    let owner = s.owner("dbkey7");
    let mut direct = Resp::connect(s.backends[owner].addr);
    assert_eq!(direct.cmd("AUTH s3cret"), "OK");
    assert_eq!(direct.cmd("GET dbkey7"), "(nil)");
    assert_eq!(direct.cmd("SELECT 3"), "OK");
    assert_eq!(direct.cmd("GET dbkey7"), "v7");
    // Dedicated connections authenticate and select too.
    assert_eq!(c.cmd("MULTI"), "OK");
    assert_eq!(c.cmd("INCR dbcount"), "QUEUED");
    assert_eq!(c.cmd("EXEC"), "[:1]");
    assert_eq!(c.cmd("RPUSH dbq x"), ":1");
    assert_eq!(c.cmd("BLPOP dbq 1"), "[dbq, x]");
    // HELLO with AUTH, and AUTH default <pw>.
    let mut h = s.client();
    assert!(h.cmd("HELLO 2").starts_with("-NOAUTH HELLO must be called"));
    assert!(h
        .cmd("HELLO 2 AUTH default s3cret")
        .starts_with("[server, redis,"));
    assert_eq!(h.cmd("GET dbkey1"), "v1");
    let mut d = s.client();
    assert_eq!(d.cmd("AUTH default s3cret"), "OK");
    // A pool with a wrong backend password: an authentication failure with the reason.
    let backends: Vec<Proc> = (0..1)
        .map(|_| redis_server_with(&["--requirepass", "other"]))
        .collect();
    let bad = setup_over(backends, "    timeout: 1s\n    redis_auth: s3cret\n", 1);
    let mut c = bad.client();
    assert_eq!(c.cmd("AUTH s3cret"), "OK");
    let e = c.cmd("GET k");
    assert!(
        e.starts_with("-ERR backend 127.0.0.1:") && e.contains(" authentication failed: WRONGPASS"),
        "{e}"
    );
}

#[test]
fn local_commands_inline_and_errors() {
    let s = setup();
    let mut c = s.client();
    // Inline commands, as redis-cli and telnet send them.
    c.send_raw(b"SET inl \"a b\"\r\nGET inl\r\nPING\r\n\r\n");
    assert_eq!(text(&c.read()), "OK");
    assert_eq!(text(&c.read()), "a b");
    assert_eq!(text(&c.read()), "PONG");
    assert_eq!(c.cmd("PING hi"), "hi");
    assert_eq!(c.cmd("ECHO x"), "x");
    assert_eq!(c.cmd("SELECT 0"), "OK");
    assert!(c
        .cmd("SELECT 1")
        .starts_with("-ERR SELECT is not supported"));
    assert_eq!(
        c.cmd("HELLO 3"),
        "-NOPROTO sorry, this protocol version is not supported"
    );
    assert!(c
        .cmd("HELLO 2 SETNAME app")
        .starts_with("[server, redis, version,"));
    assert_eq!(c.cmd("CLIENT GETNAME"), "app");
    assert_eq!(c.cmd("CLIENT SETNAME worker-1"), "OK");
    assert_eq!(c.cmd("CLIENT GETNAME"), "worker-1");
    assert!(c.cmd("CLIENT ID").starts_with(':'));
    assert_ne!(c.cmd("CLIENT ID"), s.client().cmd("CLIENT ID"));
    let info = c.cmd("INFO");
    assert!(
        info.contains("# Proxy") && info.contains("kvrouter_version:"),
        "{info}"
    );
    assert!(
        info.contains("connected_clients:") && info.contains("pool_r:protocol=redis,servers=3")
    );
    let count: i64 = c.cmd("COMMAND COUNT")[1..].parse().unwrap();
    assert!(count > 200);
    assert!(c.cmd("COMMAND INFO get").starts_with("[[get, :2,"));
    assert_eq!(
        c.cmd("FOO bar baz"),
        "-ERR unknown command 'FOO', with args beginning with: 'bar' 'baz' "
    );
    assert_eq!(
        c.cmd("GET"),
        "-ERR wrong number of arguments for 'get' command"
    );
    assert_eq!(
        c.cmd("CLIENT NOPE"),
        "-ERR unknown subcommand 'NOPE'. Try CLIENT HELP."
    );
    assert!(c
        .cmd("CONFIG GET maxmemory")
        .contains("not supported by kvrouter"));
    assert!(c
        .cmd("KEYS *")
        .contains("is disabled on pool r (allow_commands)"));
    assert!(c.cmd("FLUSHALL").contains("allow_commands"));
    assert_eq!(c.cmd("GET inl"), "a b");
    // Malformed RESP: the error, then the connection is closed.
    c.send_raw(b"*1\r\n$x\r\n");
    assert_eq!(text(&c.read()), "-ERR Protocol error: invalid bulk length");
    assert!(c.closed());
    // QUIT: +OK, then closed.
    let mut q = s.client();
    assert_eq!(q.cmd("QUIT"), "OK");
    assert!(q.closed());
}

#[test]
fn dbsize_and_scan_cover_every_server() {
    let s = setup();
    let mut c = s.client();
    let mut batch = Vec::new();
    for i in 0..300 {
        batch.extend_from_slice(
            &kvrouter::protocol::resp::encode_request(&["SET", &format!("sc:{i}"), "v"]).raw,
        );
    }
    c.send_raw(&batch);
    for _ in 0..300 {
        assert_eq!(text(&c.read()), "OK");
    }
    assert_eq!(c.cmd("DBSIZE"), ":300");
    let mut seen = std::collections::HashMap::new();
    let mut cursor = "0".to_string();
    let mut rounds = 0;
    loop {
        let r = c.call(&["SCAN", &cursor, "COUNT", "25"]);
        let Frame::Array(Some(v)) = r else {
            panic!("{r:?}")
        };
        cursor = text(&v[0]);
        let Frame::Array(Some(keys)) = &v[1] else {
            panic!()
        };
        for k in keys {
            *seen.entry(text(k)).or_insert(0) += 1;
        }
        rounds += 1;
        if cursor == "0" {
            break;
        }
        assert!(rounds < 1000);
    }
    assert_eq!(seen.len(), 300);
    assert!(seen.values().all(|&n| n == 1), "every key exactly once");
    // MATCH passes through.
    let mut matched = 0;
    let mut cursor = "0".to_string();
    loop {
        let r = c.call(&["SCAN", &cursor, "MATCH", "sc:1?", "COUNT", "1000"]);
        let Frame::Array(Some(v)) = r else { panic!() };
        cursor = text(&v[0]);
        let Frame::Array(Some(keys)) = &v[1] else {
            panic!()
        };
        matched += keys.len();
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(matched, 10);
    assert_eq!(c.cmd("SCAN notanumber"), "-ERR invalid cursor");
    assert!(c.cmd("RANDOMKEY").starts_with("sc:"));
}

#[test]
fn allow_commands_enable_keys_and_flushall() {
    let s = setup_with("    timeout: 2s\n    allow_commands: [keys, flushall]\n");
    let mut c = s.client();
    for i in 0..30 {
        assert_eq!(c.cmd(&format!("SET ak{i} v")), "OK");
    }
    let Frame::Array(Some(keys)) = c.call(&["KEYS", "ak*"]) else {
        panic!()
    };
    assert_eq!(keys.len(), 30);
    assert!(c.cmd("FLUSHDB").contains("allow_commands"));
    assert_eq!(c.cmd("DBSIZE"), ":30");
    assert_eq!(c.cmd("FLUSHALL"), "OK");
    assert_eq!(c.cmd("DBSIZE"), ":0");
}

#[test]
fn backend_down_or_silent_gives_an_error_within_the_timeout() {
    // A "server" that accepts and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let holder = std::thread::spawn(move || {
        let conns: Vec<_> = silent.incoming().take(4).collect();
        std::thread::sleep(Duration::from_secs(5));
        drop(conns);
    });
    let live = redis_server();
    let dir = TempDir::new();
    let port = free_port();
    let yaml = format!(
        "pools:\n  r:\n    protocol: redis\n    timeout: 300ms\n    servers: [\"{}:1 live\", \"{silent_addr}:1 silent\"]\nlisteners:\n  - {{ listen: 127.0.0.1:{port}, protocol: redis, route: r }}\n",
        live.addr
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let _proxy = kvrouter(&dir, &yaml, addr);
    let mut c = Resp::connect(addr);
    // Find a key on each server by asking: the live one answers, the silent one times out.
    let mut saw_timeout = false;
    let mut saw_ok = false;
    for i in 0..200 {
        let t = Instant::now();
        let r = c.cmd(&format!("SET {i}:down:{} v", i * 7919));
        if r == "OK" {
            saw_ok = true;
        } else {
            assert!(
                r.starts_with(&format!("-ERR backend {silent_addr} ")),
                "{r}"
            );
            assert!(
                t.elapsed() < Duration::from_millis(1500),
                "{:?}",
                t.elapsed()
            );
            saw_timeout |= r.contains("timed out after 300ms");
        }
        if saw_ok && saw_timeout {
            break;
        }
    }
    assert!(saw_ok && saw_timeout);
    drop(holder);
    // A killed server: refused, fast, naming it.
    let gone = redis_server();
    let gone_addr = gone.addr;
    drop(gone);
    let dir2 = TempDir::new();
    let port2 = free_port();
    let yaml = format!(
        "pools:\n  r:\n    protocol: redis\n    timeout: 1s\n    servers: [\"{gone_addr}:1\"]\nlisteners:\n  - {{ listen: 127.0.0.1:{port2}, protocol: redis, route: r }}\n"
    );
    let addr2: SocketAddr = format!("127.0.0.1:{port2}").parse().unwrap();
    let _p2 = kvrouter(&dir2, &yaml, addr2);
    let mut c = Resp::connect(addr2);
    let t = Instant::now();
    let r = c.cmd("GET k");
    // The startup check may have found the refusal first (then the server is already down).
    assert!(
        r.starts_with(&format!("-ERR backend {gone_addr} connect failed"))
            || r.starts_with(&format!("-ERR backend {gone_addr} is marked down (TKO)")),
        "{r}"
    );
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(c.cmd("MGET a b c").starts_with("-ERR backend"));
}
