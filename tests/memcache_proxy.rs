//! kvrouter in front of real memcached servers: the memcached ASCII protocol end to end.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::{free_port, kvrouter, memcached, Mc, Proc, TempDir};

struct Setup {
    _dir: TempDir,
    backends: Vec<Proc>,
    proxy: Proc,
}

fn setup_with(extra: &str, n: usize) -> Setup {
    let dir = TempDir::new();
    let backends: Vec<Proc> = (0..n).map(|_| memcached()).collect();
    let port = free_port();
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("    - {}:1 mc{i}\n", b.addr))
        .collect();
    let yaml = format!(
        "alpha:\n  listen: 127.0.0.1:{port}\n  hash: fnv1a_64\n  distribution: ketama\n{extra}  servers:\n{servers}"
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let proxy = kvrouter(&dir, &yaml, addr);
    Setup {
        _dir: dir,
        backends,
        proxy,
    }
}

fn setup() -> Setup {
    setup_with("  timeout: 2000\n", 3)
}

/// Which backends hold `key` (checked directly on each memcached).
fn holders(s: &Setup, key: &str) -> Vec<usize> {
    s.backends
        .iter()
        .enumerate()
        .filter(|(_, b)| Mc::connect(b.addr).get(key).is_some())
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn set_get_delete_spread_over_servers() {
    let s = setup();
    let mut c = Mc::connect(s.proxy.addr);
    let mut used = [0usize; 3];
    for i in 0..200 {
        let key = format!("key:{i}");
        assert_eq!(c.set(&key, format!("v{i}").as_bytes()), "STORED");
        let h = holders(&s, &key);
        assert_eq!(h.len(), 1, "{key} must live on exactly one server");
        used[h[0]] += 1;
    }
    assert!(used.iter().all(|&n| n > 0), "keys spread: {used:?}");
    for i in 0..200 {
        let key = format!("key:{i}");
        assert_eq!(c.get(&key).unwrap(), format!("v{i}").into_bytes());
    }
    c.send(b"delete key:1\r\n");
    assert_eq!(c.line(), "DELETED");
    c.send(b"delete key:1\r\n");
    assert_eq!(c.line(), "NOT_FOUND");
    assert_eq!(c.get("key:1"), None);
}

#[test]
fn multi_get_merges_in_client_order_with_repeats_and_misses() {
    let s = setup();
    let mut c = Mc::connect(s.proxy.addr);
    let keys: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    for k in keys.iter().step_by(2) {
        assert_eq!(c.set(k, k.as_bytes()), "STORED");
    }
    // Keys on every server, misses, and a repeated key.
    let mut asked: Vec<String> = keys.clone();
    asked.push("m0".into());
    asked.insert(3, "m4".into());
    c.send(format!("get {}\r\n", asked.join(" ")).as_bytes());
    let got = c.values().unwrap();
    let expect: Vec<String> = asked
        .iter()
        .filter(|k| k[1..].parse::<usize>().unwrap() % 2 == 0)
        .cloned()
        .collect();
    let got_keys: Vec<String> = got.iter().map(|(k, _, _)| k.clone()).collect();
    assert_eq!(got_keys, expect);
    for (k, _, v) in &got {
        assert_eq!(v, k.as_bytes());
    }
    // gets carries a cas unique per item.
    c.send(b"gets m0 m2 m4 m6\r\n");
    let mut n = 0;
    loop {
        let l = c.line();
        if l == "END" {
            break;
        }
        let parts: Vec<&str> = l.split(' ').collect();
        assert_eq!(parts.len(), 5, "gets item has a cas: {l}");
        let mut data = vec![0; parts[3].parse::<usize>().unwrap() + 2];
        c.r.read_exact(&mut data).unwrap();
        n += 1;
    }
    assert_eq!(n, 4);
}

#[test]
fn get_with_1000_keys_and_a_1mb_value() {
    let s = setup();
    let mut c = Mc::connect(s.proxy.addr);
    let keys: Vec<String> = (0..1000).map(|i| format!("k{i:04}")).collect();
    for k in keys.iter().step_by(3) {
        assert_eq!(c.set(k, k.as_bytes()), "STORED");
    }
    c.send(format!("get {}\r\n", keys.join(" ")).as_bytes());
    let got = c.values().unwrap();
    assert_eq!(got.len(), keys.iter().step_by(3).count());
    assert!(got
        .iter()
        .zip(keys.iter().step_by(3))
        .all(|((k, _, _), e)| k == e));

    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(c.set("big", &big), "STORED");
    assert_eq!(c.get("big").unwrap(), big);
}

#[test]
fn every_storage_and_arithmetic_command() {
    let s = setup();
    let mut c = Mc::connect(s.proxy.addr);
    let ask = |c: &mut Mc, req: &[u8], want: &str| {
        c.send(req);
        assert_eq!(
            c.line(),
            want,
            "reply to {:?}",
            String::from_utf8_lossy(req)
        );
    };
    ask(&mut c, b"add a 5 0 1\r\nx\r\n", "STORED");
    ask(&mut c, b"add a 5 0 1\r\ny\r\n", "NOT_STORED");
    ask(&mut c, b"replace a 6 0 2\r\nxy\r\n", "STORED");
    ask(&mut c, b"replace nope 0 0 1\r\nx\r\n", "NOT_STORED");
    ask(&mut c, b"append a 0 0 2\r\nzz\r\n", "STORED");
    ask(&mut c, b"prepend a 0 0 2\r\naa\r\n", "STORED");
    c.send(b"get a\r\n");
    assert_eq!(
        c.values().unwrap(),
        vec![("a".into(), 6, b"aaxyzz".to_vec())]
    );
    c.send(b"gets a\r\n");
    let l = c.line();
    let cas: u64 = l.rsplit(' ').next().unwrap().parse().unwrap();
    let mut rest = vec![0; 8];
    c.r.read_exact(&mut rest).unwrap();
    assert_eq!(c.line(), "END");
    ask(
        &mut c,
        format!("cas a 0 0 1 {}\r\nq\r\n", cas + 1000).as_bytes(),
        "EXISTS",
    );
    ask(
        &mut c,
        format!("cas a 0 0 1 {cas}\r\nq\r\n").as_bytes(),
        "STORED",
    );
    ask(&mut c, b"cas nope 0 0 1 1\r\nq\r\n", "NOT_FOUND");
    ask(&mut c, b"set n 0 0 2\r\n10\r\n", "STORED");
    ask(&mut c, b"incr n 5\r\n", "15");
    ask(&mut c, b"decr n 20\r\n", "0");
    ask(&mut c, b"incr nope 1\r\n", "NOT_FOUND");
    ask(&mut c, b"touch n 100\r\n", "TOUCHED");
    ask(&mut c, b"touch nope 100\r\n", "NOT_FOUND");
    c.send(b"gat 100 n a nope\r\n");
    let v = c.values().unwrap();
    assert_eq!(v.len(), 2);
    c.send(b"gats 100 a\r\n");
    assert_eq!(c.line().split(' ').count(), 5);
    let mut rest = vec![0; 3];
    c.r.read_exact(&mut rest).unwrap();
    assert_eq!(c.line(), "END");
}

#[test]
fn noreply_sends_no_bytes_and_pipelines_keep_order() {
    let s = setup();
    let mut c = Mc::connect(s.proxy.addr);
    let mut req = Vec::new();
    for i in 0..300 {
        req.extend_from_slice(
            format!("set p{i} 0 0 {} noreply\r\nv{i}\r\n", format!("v{i}").len()).as_bytes(),
        );
    }
    req.extend_from_slice(b"delete p0 noreply\r\nincr p1 1 noreply\r\ntouch p2 10 noreply\r\n");
    req.extend_from_slice(b"verbosity 1 noreply\r\nflush_all 100 noreply\r\n");
    for i in 0..300 {
        req.extend_from_slice(format!("get p{i}\r\n").as_bytes());
    }
    req.extend_from_slice(b"version\r\n");
    c.send(&req);
    assert_eq!(c.values().unwrap(), vec![]); // p0 was deleted
    for i in 1..300 {
        let v = c.values().unwrap();
        assert_eq!(v.len(), 1, "p{i}");
        assert_eq!(v[0].0, format!("p{i}"));
    }
    assert!(c.line().starts_with("VERSION "));
}

#[test]
fn a_pipeline_split_at_every_byte_boundary() {
    let s = setup();
    let mut c = Mc::connect(s.proxy.addr);
    let req = b"set s1 1 0 5\r\nhello\r\nget s1\r\nset s2 2 0 3 noreply\r\nabc\r\nget s1 s2 s3\r\ndelete s1\r\n";
    // Send one byte at a time, with small pauses so each arrives in its own read.
    for b in req.iter() {
        c.send(&[*b]);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(c.line(), "STORED");
    assert_eq!(
        c.values().unwrap(),
        vec![("s1".into(), 1, b"hello".to_vec())]
    );
    assert_eq!(
        c.values().unwrap(),
        vec![
            ("s1".into(), 1, b"hello".to_vec()),
            ("s2".into(), 2, b"abc".to_vec())
        ]
    );
    assert_eq!(c.line(), "DELETED");
}

#[test]
fn bad_input_gets_errors_and_the_connection_stays_usable() {
    let s = setup();
    let mut c = Mc::connect(s.proxy.addr);
    let long = "k".repeat(251);
    c.send(format!("get {long}\r\n").as_bytes());
    assert!(c.line().starts_with("CLIENT_ERROR"));
    c.send(format!("set {long} 0 0 3\r\nabc\r\n").as_bytes());
    assert!(c.line().starts_with("CLIENT_ERROR"));
    // As memcached: refused before its data block, which is then read as a command.
    assert_eq!(c.line(), "ERROR");
    c.send(b"get bad\x01key\r\n");
    assert!(c.line().starts_with("CLIENT_ERROR"));
    let huge = vec![b'x'; 1024 * 1024 + 1];
    let mut req = format!("set huge 0 0 {}\r\n", huge.len()).into_bytes();
    req.extend_from_slice(&huge);
    req.extend_from_slice(b"\r\n");
    c.send(&req);
    assert_eq!(c.line(), "SERVER_ERROR object too large for cache");
    c.send(b"set chunk 0 0 3\r\nabcde\r\n");
    assert_eq!(c.line(), "CLIENT_ERROR bad data chunk");
    // As memcached: the 3+2 bytes after the line were the block; the `\r\n` left over is an
    // empty command.
    assert_eq!(c.line(), "ERROR");
    c.send(b"bogus command\r\n");
    assert_eq!(c.line(), "ERROR");
    c.send(b"set x 0 0 notanumber\r\n");
    assert!(c.line().starts_with("CLIENT_ERROR"));
    // Still in step.
    assert_eq!(c.set("after", b"ok"), "STORED");
    assert_eq!(c.get("after").unwrap(), b"ok");
    assert_eq!(c.get("huge"), None);
}

#[test]
fn local_commands_version_stats_verbosity_flush_quit() {
    let s = setup();
    let mut c = Mc::connect(s.proxy.addr);
    c.send(b"version\r\n");
    assert!(c.line().starts_with("VERSION "));
    c.send(b"verbosity 1\r\n");
    assert_eq!(c.line(), "OK");
    assert_eq!(c.set("f1", b"1"), "STORED");
    assert_eq!(c.get("f1").unwrap(), b"1");
    assert_eq!(c.get("nothing"), None);
    c.send(b"stats\r\n");
    let mut stats = std::collections::HashMap::new();
    loop {
        let l = c.line();
        if l == "END" {
            break;
        }
        let parts: Vec<&str> = l.splitn(3, ' ').collect();
        assert_eq!(parts[0], "STAT");
        stats.insert(parts[1].to_string(), parts[2].to_string());
    }
    for k in [
        "uptime",
        "curr_connections",
        "total_connections",
        "cmd_get",
        "cmd_set",
        "get_hits",
        "get_misses",
    ] {
        assert!(stats.contains_key(k), "stats has {k}");
    }
    assert!(stats["get_hits"].parse::<u64>().unwrap() >= 1);
    assert!(stats["get_misses"].parse::<u64>().unwrap() >= 1);
    assert!(stats["cmd_set"].parse::<u64>().unwrap() >= 1);
    // flush_all reaches every server.
    for i in 0..30 {
        c.set(&format!("fl{i}"), b"x");
    }
    c.send(b"flush_all\r\n");
    assert_eq!(c.line(), "OK");
    for b in &s.backends {
        assert_eq!(Mc::connect(b.addr).get("fl1"), None);
    }
    assert!((0..30).all(|i| c.get(&format!("fl{i}")).is_none()));
    c.send(b"quit\r\n");
    let mut buf = [0u8; 1];
    assert_eq!(c.r.read(&mut buf).unwrap(), 0, "quit closes the connection");
}

/// A backend that accepts connections and never answers: a fault real memcached cannot produce.
fn black_hole() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

#[test]
fn a_silent_backend_times_out_with_server_error_and_reconnects() {
    let (hole, hole_addr) = black_hole();
    let real = memcached();
    let dir = TempDir::new();
    let port = free_port();
    let yaml = format!(
        "alpha:\n  listen: 127.0.0.1:{port}\n  timeout: 300\n  distribution: modula\n  servers:\n    - {}:1 hole\n    - {}:1 real\n",
        hole_addr, real.addr
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let proxy = kvrouter(&dir, &yaml, addr);
    let mut c = Mc::connect(proxy.addr);
    // Find a key on each server.
    let mut on_hole = None;
    let mut on_real = None;
    for i in 0..100 {
        let k = format!("t{i}");
        let t = Instant::now();
        let r = c.set(&k, b"v");
        if r == "STORED" {
            on_real.get_or_insert(k);
        } else {
            assert!(r.starts_with("SERVER_ERROR"), "{r}");
            assert!(r.contains("timed out"), "{r}");
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "answered within the timeout"
            );
            on_hole.get_or_insert(k);
        }
        if on_hole.is_some() && on_real.is_some() {
            break;
        }
    }
    let (on_hole, on_real) = (on_hole.unwrap(), on_real.unwrap());
    // A multi-get over both: the silent server's keys are misses, the rest still answer.
    c.send(format!("get {on_hole} {on_real}\r\n").as_bytes());
    let v = c.values().unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].0, on_real);
    // The timed-out connection was closed and a new one opened: the hole saw several.
    hole.set_nonblocking(true).unwrap();
    let mut accepted = 0;
    while hole.accept().is_ok() {
        accepted += 1;
    }
    assert!(
        accepted >= 2,
        "reconnected after timeouts ({accepted} connections)"
    );
}

#[test]
fn auto_eject_hosts_moves_keys_off_a_dead_server_and_back() {
    let live = memcached();
    let dead_port = free_port(); // nothing listens here: connection refused
    let dir = TempDir::new();
    let port = free_port();
    let yaml = format!(
        "alpha:\n  listen: 127.0.0.1:{port}\n  timeout: 500\n  auto_eject_hosts: true\n  server_failure_limit: 1\n  server_retry_timeout: 1000\n  servers:\n    - {}:1 live\n    - 127.0.0.1:{dead_port}:1 dead\n",
        live.addr
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let proxy = kvrouter(&dir, &yaml, addr);
    let mut c = Mc::connect(proxy.addr);
    let mut errors = 0;
    for i in 0..50 {
        if c.set(&format!("e{i}"), b"v") != "STORED" {
            errors += 1;
        }
    }
    assert!(
        (1..10).contains(&errors),
        "a few errors before ejection: {errors}"
    );
    // Ejected: every key now goes to the live server.
    for i in 0..50 {
        assert_eq!(c.set(&format!("e{i}"), b"v"), "STORED");
    }
    // After the retry timeout the dead server is tried again (and fails again).
    std::thread::sleep(Duration::from_millis(1200));
    let mut errors = 0;
    for i in 0..50 {
        if c.set(&format!("e{i}"), b"v") != "STORED" {
            errors += 1;
        }
    }
    assert!(errors >= 1, "retried after server_retry_timeout");
}

#[test]
fn many_clients_in_parallel_never_get_each_others_replies() {
    let s = setup_with("  timeout: 5000\n  server_connections: 2\n", 3);
    let addr = s.proxy.addr;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Mc::connect(addr);
                for i in 0..300 {
                    let k = format!("c{t}:{i}");
                    let v = format!("{t}/{i}");
                    // Pipelined set then get of the same key: must never race.
                    let mut req =
                        format!("set {k} 0 0 {}\r\n{v}\r\nget {k}\r\n", v.len()).into_bytes();
                    req.extend_from_slice(format!("get {k} c{t}:0 nope\r\n").as_bytes());
                    c.send(&req);
                    assert_eq!(c.line(), "STORED");
                    assert_eq!(c.values().unwrap()[0].2, v.as_bytes());
                    let m = c.values().unwrap();
                    assert_eq!(m[0].0, k);
                    assert_eq!(m[1].0, format!("c{t}:0"));
                    assert_eq!(m.len(), 2);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn sigterm_finishes_in_flight_requests_and_exits() {
    // A backend that answers after 500 ms: the request is in flight when SIGTERM arrives.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf);
        std::thread::sleep(Duration::from_millis(500));
        let _ = s.write_all(b"STORED\r\n");
        std::thread::sleep(Duration::from_secs(5));
    });
    let dir = TempDir::new();
    let port = free_port();
    let yaml = format!("alpha:\n  listen: 127.0.0.1:{port}\n  servers:\n    - {backend}:1\n");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut proxy = kvrouter(&dir, &yaml, addr);
    let mut c = Mc::connect(addr);
    c.send(b"set slow 0 0 1\r\nx\r\n");
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    unsafe { libc_kill(proxy.child.id() as i32, 15) };
    assert_eq!(c.line(), "STORED", "the in-flight request finished");
    let deadline = Instant::now() + Duration::from_secs(7);
    loop {
        if let Some(status) = proxy.child.try_wait().unwrap() {
            assert!(status.success(), "clean exit: {status}");
            break;
        }
        assert!(Instant::now() < deadline, "exited within a few seconds");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(t.elapsed() < Duration::from_secs(7));
    assert!(TcpStream::connect(addr).is_err(), "no longer accepting");
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn unix_socket_listener() {
    let b = memcached();
    let dir = TempDir::new();
    let sock = dir.0.join("kv.sock");
    let yaml = format!(
        "alpha:\n  listen: {} 0600\n  servers:\n    - {}:1\n",
        sock.display(),
        b.addr
    );
    let conf = dir.write("unix.yml", &yaml);
    let admin = free_port();
    let child = std::process::Command::new(common::kvrouter_bin())
        .arg("-c")
        .arg(&conf)
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .spawn()
        .unwrap();
    let _guard = Proc {
        child,
        addr: b.addr,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        if let Ok(s) = std::os::unix::net::UnixStream::connect(&sock) {
            break s;
        }
        assert!(Instant::now() < deadline, "unix socket never appeared");
        std::thread::sleep(Duration::from_millis(20));
    };
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mut w = stream.try_clone().unwrap();
    w.write_all(b"set u 0 0 2\r\nhi\r\nget u\r\n").unwrap();
    let mut r = std::io::BufReader::new(stream);
    let mut out = String::new();
    while !out.ends_with("END\r\n") {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut r, &mut line).unwrap();
        out.push_str(&line);
    }
    assert_eq!(out, "STORED\r\nVALUE u 0 2\r\nhi\r\nEND\r\n");
}
