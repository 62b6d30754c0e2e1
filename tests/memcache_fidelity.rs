//! Fidelity of the memcached listener: the same bytes to a real memcached and to kvrouter in
//! front of real memcacheds must get the same replies (version strings aside), including what
//! memcached does with the rest of the stream after a bad line, an oversized `set`, or an
//! HTTP request line.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{free_port, kvrouter, kvrouter_admin, mc_stat, memcached, Mc, Proc, TempDir};

/// `memcached()` runs with `-I 2m`: the pools get the same item_size_max.
const ITEM_SIZE_MAX: usize = 2 * 1024 * 1024;

/// Two memcacheds behind kvrouter, and a third one to compare with.
struct Pair {
    _servers: Vec<Proc>,
    direct: Proc,
    proxy: Proc,
    _dir: TempDir,
}

fn pair() -> Pair {
    let (a, b, direct) = (memcached(), memcached(), memcached());
    let dir = TempDir::new();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let yaml = format!(
        "pools:\n  p:\n    protocol: memcache\n    item_size_max: {ITEM_SIZE_MAX}\n    servers: [\"{}:1 a\", \"{}:1 b\"]\nlisteners:\n  - {{ listen: {addr}, protocol: memcache, route: p }}\n",
        a.addr, b.addr
    );
    let proxy = kvrouter(&dir, &yaml, addr);
    Pair {
        _servers: vec![a, b],
        direct,
        proxy,
        _dir: dir,
    }
}

/// Send `input` then `version`; the bytes up to the `VERSION` reply (its text replaced by
/// `VERSION`), and whether the connection was closed instead.
fn exchange(addr: SocketAddr, input: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.write_all(input).unwrap();
    let _ = s.write_all(b"version\r\n");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 65536];
    loop {
        if let Some(at) = find_version(&out) {
            out.truncate(at);
            return (format!("{}VERSION", String::from_utf8_lossy(&out)), false);
        }
        assert!(Instant::now() < deadline, "no reply to {input:?}: {out:?}");
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                return (String::from_utf8_lossy(&out).into_owned(), true)
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Where a complete `VERSION ...\r\n` line starts at the end of `out`.
fn find_version(out: &[u8]) -> Option<usize> {
    if !out.ends_with(b"\r\n") {
        return None;
    }
    let body = &out[..out.len() - 2];
    let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    body[start..].starts_with(b"VERSION ").then_some(start)
}

fn same(p: &Pair, input: &[u8]) {
    let want = exchange(p.direct.addr, input);
    let got = exchange(p.proxy.addr, input);
    assert_eq!(
        got,
        want,
        "kvrouter differs from memcached on {:?}",
        String::from_utf8_lossy(input)
    );
}

#[test]
fn malformed_storage_lines_consume_what_memcached_consumes() {
    let p = pair();
    // Each line is followed by a would-be data block `abc\r\n`, then `version`: memcached reads
    // that block as a command (ERROR) when it refused the line before its data, and swallows it
    // otherwise.
    let lines: &[&str] = &[
        "set k blah 0 3",
        "set k 0 blah 3",
        "set k 0 0 blah",
        "set k 0 0 -1",
        "set k 0 0",
        "set k 0",
        "set k",
        "set",
        "set k 0 0 3 noreply extra",
        "set k 0 0 3 a b c",
        "set k -1 0 3",
        "set k 99999999999999999999 0 3",
        "set k 0 0 3.0",
        "set k 0 0 +3",
        "set k 0 0 3 junk",
        "cas k 0 0 3",
        "cas k 0 0 3 ",
        "cas k 0 0 3 x",
        "cas k 0 0 3 -1",
        "cas k 0 0 3 1 noreply",
        "add k 0 0 blah",
        "replace k x 0 3",
        "append k 0 0",
        "prepend k 0 0 3 1 2",
        "set k 0 0 3 noreply",
        "set k blah 0 3 noreply",
    ];
    for l in lines {
        same(&p, format!("{l}\r\nabc\r\n").as_bytes());
    }
    // The two examples, with no data block at all.
    same(&p, b"set k blah 0 0\r\n");
    same(&p, b"cas foo 0 0 6 \r\n");
    // A key over 250 bytes: refused before the data block.
    same(
        &p,
        format!("set {} 0 0 3\r\nabc\r\n", "k".repeat(251)).as_bytes(),
    );
    // A data block of the wrong length.
    same(&p, b"set k 0 0 3\r\nabcd\r\n");
    same(&p, b"set k 0 0 3\r\nab\r\n\r\n");
}

#[test]
fn verbosity_noreply_gets_no_reply() {
    let p = pair();
    for l in [
        "verbosity noreply",
        "verbosity 1 noreply",
        "verbosity 1",
        "verbosity",
        "verbosity x noreply",
    ] {
        same(&p, format!("{l}\r\n").as_bytes());
    }
    let (got, _) = exchange(p.proxy.addr, b"verbosity noreply\r\n");
    assert_eq!(got, "VERSION");
}

#[test]
fn http_request_lines_close_the_connection() {
    let p = pair();
    for l in [
        "GET / HTTP/1.0",
        "POST /x HTTP/1.1",
        "PUT / HTTP/1.1",
        "HEAD / HTTP/1.0",
        "DELETE /k HTTP/1.1",
        "OPTIONS * HTTP/1.1",
        "foo HTTP/",
        // Not closed by memcached: a known command, a first byte it dispatches on, `HTTP/`
        // not last, lower case, 23 tokens before it.
        "get HTTP/1.1",
        "stats HTTP/1.1",
        "gopher / HTTP/1.0",
        "GET / HTTP/1.0 noreply",
        "GET / http/1.0",
        "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17 w18 w19 w20 w21 HTTP/1.1",
        "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17 w18 w19 w20 w21 w22 HTTP/1.1",
    ] {
        same(&p, format!("{l}\r\n").as_bytes());
    }
    let (_, closed) = exchange(p.proxy.addr, b"GET / HTTP/1.0\r\n");
    assert!(closed);
}

#[test]
fn refused_oversized_set_unlinks_the_old_item() {
    let p = pair();
    let big = vec![b'x'; ITEM_SIZE_MAX + 1];
    let n = big.len();
    for line in [
        format!("set k 0 0 {n}"),
        format!("add k 0 0 {n}"),
        format!("append k 0 0 {n}"),
        format!("cas k 0 0 {n} 1"),
        format!("ms k {n}"),
        format!("ms k {n} q"),
        format!("ms aw== {n} b"),
    ] {
        let mut input = format!("set k 0 0 3\r\nMOO\r\n{line}\r\n").into_bytes();
        input.extend_from_slice(&big);
        input.extend_from_slice(b"\r\nget k\r\n");
        same(&p, &input);
    }
    // noreply: no error, but the item is gone all the same.
    let mut input =
        format!("set k 0 0 3\r\nMOO\r\nset k 0 0 {} noreply\r\n", big.len()).into_bytes();
    input.extend_from_slice(&big);
    input.extend_from_slice(b"\r\nget k\r\n");
    same(&p, &input);
    let (got, _) = exchange(p.proxy.addr, &input);
    assert_eq!(got, "STORED\r\nEND\r\nVERSION");
}

/// The lines of a reply up to `END` (or the one line of an error).
fn stat_reply(c: &mut Mc, cmd: &str) -> Vec<String> {
    c.send(format!("{cmd}\r\n").as_bytes());
    let mut out = Vec::new();
    loop {
        let l = c.line();
        let last = !l.starts_with("STAT ");
        out.push(l);
        if last {
            return out;
        }
    }
}

fn stat_value(lines: &[String], name: &str) -> Option<u64> {
    lines.iter().find_map(|l| {
        let mut t = l.split(' ');
        (t.next() == Some("STAT") && t.next() == Some(name)).then(|| t.next()?.parse().ok())?
    })
}

#[test]
fn stats_subcommands_answer_like_memcached() {
    let p = pair();
    let mut kv = Mc::connect(p.proxy.addr);
    let mut mc = Mc::connect(p.direct.addr);
    for i in 0..40 {
        assert_eq!(kv.set(&format!("key{i}"), b"v"), "STORED");
        assert_eq!(mc.set(&format!("key{i}"), b"v"), "STORED");
    }
    // Same shape: the terminating line, and for items/slabs the same names.
    for cmd in [
        "stats items",
        "stats slabs",
        "stats sizes",
        "stats settings",
        "stats conns",
        "stats detail dump",
        "stats detail on",
        "stats detail off",
        "stats detail",
        "stats nonsense",
        "stats reset",
    ] {
        let want = stat_reply(&mut mc, cmd);
        let got = stat_reply(&mut kv, cmd);
        assert_eq!(got.last(), want.last(), "{cmd}: {got:?} vs {want:?}");
        if cmd == "stats items" || cmd == "stats slabs" || cmd == "stats sizes" {
            let names = |v: &[String]| -> Vec<String> {
                v.iter()
                    .filter_map(|l| l.split(' ').nth(1).map(str::to_string))
                    .collect()
            };
            assert_eq!(names(&got), names(&want), "{cmd}");
        }
    }
    // items: the sum over the pool's servers, which hold all 40 keys between them.
    let items = stat_reply(&mut kv, "stats items");
    assert_eq!(stat_value(&items, "items:1:number"), Some(40), "{items:?}");
    let slabs = stat_reply(&mut kv, "stats slabs");
    assert_eq!(stat_value(&slabs, "1:used_chunks"), Some(40), "{slabs:?}");
    assert_eq!(
        stat_value(&slabs, "1:chunk_size"),
        stat_value(&stat_reply(&mut mc, "stats slabs"), "1:chunk_size")
    );
}

#[test]
fn stats_counts_its_own_listener_and_pipelined_gets() {
    let (mc_server, redis) = (memcached(), common::redis_server());
    let dir = TempDir::new();
    let mc_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let redis_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let yaml = format!(
        "pools:\n  m: {{ protocol: memcache, servers: [\"{}:1\"] }}\n  r: {{ protocol: redis, servers: [\"{}:1\"] }}\nlisteners:\n  - {{ listen: {mc_addr}, protocol: memcache, route: m }}\n  - {{ listen: {redis_addr}, protocol: redis, route: r }}\n",
        mc_server.addr, redis.addr
    );
    let (_proxy, _admin) = kvrouter_admin(&dir, &yaml, mc_addr);
    // Every listener is bound before kvrouter reports its first one ready.
    // Three Redis clients, one of them sending a bad command: not counted by memcached stats.
    let mut redis_clients = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(redis_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"PING\r\n").unwrap();
        let mut b = [0u8; 7];
        s.read_exact(&mut b).unwrap();
        redis_clients.push(s);
    }
    redis_clients[0]
        .write_all(b"*1\r\n$7\r\nNOSUCHX\r\n")
        .unwrap();
    let mut b = [0u8; 64];
    let _ = redis_clients[0].read(&mut b).unwrap();

    let mut c = Mc::connect(mc_addr);
    assert_eq!(mc_stat(&mut c, "curr_connections"), 1);
    assert_eq!(mc_stat(&mut c, "client_errors"), 0);
    assert_eq!(c.set("a", b"1"), "STORED");
    let hits = mc_stat(&mut c, "get_hits");
    // A get and a stats in one write: the stats includes the get's hit.
    c.send(b"get a\r\nstats\r\n");
    assert_eq!(c.values().unwrap().len(), 1);
    let mut got = None;
    loop {
        let l = c.line();
        if l == "END" {
            break;
        }
        if let Some(v) = l.strip_prefix("STAT get_hits ") {
            got = Some(v.parse::<u64>().unwrap());
        }
    }
    assert_eq!(got, Some(hits + 1));
    drop(redis_clients);
}
