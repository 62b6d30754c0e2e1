//! The Redis command policy against real redis-servers: malformed multi-key commands answer
//! redis's own error and leave the connection usable, commands that reach outside the pool or
//! administer a server are refused (and MIGRATE really connects nowhere), `allow_commands`
//! and `scripts` switch them per pool, and client-chosen text cannot forge or flood the log.

mod common;

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use common::{
    free_port, kvrouter, kvrouter_admin, metric, redis_server, scrape, text, Proc, Resp, TempDir,
};

struct Setup {
    _dir: TempDir,
    backends: Vec<Proc>,
    _proxy: Proc,
    /// The listener routing straight to pool `r`.
    addr: SocketAddr,
    /// A listener whose route is a tree (`failover: [r, spare]`), so keyed commands take the
    /// route-tree path.
    tree: SocketAddr,
}

/// kvrouter over two redis-servers (pool `r`), with `extra` lines for pool `r`.
fn setup(extra: &str) -> Setup {
    let backends: Vec<Proc> = (0..2).map(|_| redis_server()).collect();
    let spare = redis_server();
    let dir = TempDir::new();
    let (port, tree) = (free_port(), free_port());
    let yaml = format!(
        "pools:
  r:
    protocol: redis
    hash_tag: \"{{}}\"
    hash: murmur
    timeout: 2s
    servers: [\"{}:1 r0\", \"{}:1 r1\"]
{extra}  spare: {{ protocol: redis, servers: [\"{}:1\"] }}
listeners:
  - {{ listen: 127.0.0.1:{port}, protocol: redis, route: r }}
  - {{ listen: 127.0.0.1:{tree}, protocol: redis, route: {{ failover: [r, spare] }} }}
",
        backends[0].addr, backends[1].addr, spare.addr
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let proxy = kvrouter(&dir, &yaml, addr);
    let tree: SocketAddr = format!("127.0.0.1:{tree}").parse().unwrap();
    common::wait_for(10, "the tree listener", || {
        std::net::TcpStream::connect(tree).ok()
    });
    Setup {
        _dir: dir,
        backends,
        _proxy: proxy,
        addr,
        tree,
    }
}

impl Setup {
    /// A key stored (through the proxy) on backend `server`.
    fn key_on(&self, server: usize, prefix: &str) -> String {
        let mut c = Resp::connect(self.addr);
        let mut direct = Resp::connect(self.backends[server].addr);
        for i in 0..200 {
            let k = format!("{prefix}{i}");
            assert_eq!(c.cmd(&format!("SET {k} v")), "OK");
            if direct.cmd(&format!("EXISTS {k}")) == ":1" {
                return k;
            }
        }
        panic!("no key of 200 landed on server {server}");
    }
}

#[test]
fn mset_with_a_dangling_key_answers_like_redis_and_the_connection_stays_usable() {
    let s = setup("");
    let (a, b) = (s.key_on(0, "a"), s.key_on(1, "b"));
    let mut direct = Resp::connect(s.backends[0].addr);
    for addr in [s.addr, s.tree] {
        let mut c = Resp::connect(addr);
        for cmd in ["MSET", "MSETNX"] {
            let line = format!("{cmd} {a} 1 {b}");
            let want = direct.cmd(&line);
            assert_eq!(
                want,
                format!(
                    "-ERR wrong number of arguments for '{}' command",
                    cmd.to_lowercase()
                )
            );
            assert_eq!(c.cmd(&line), want, "{line} via {addr}");
            assert_eq!(c.cmd("PING"), "PONG", "the connection stays usable");
        }
        // Pipelined: the bad one answers in its place, the rest runs.
        let bad = format!(
            "*4\r\n$4\r\nMSET\r\n${}\r\n{a}\r\n$1\r\n1\r\n${}\r\n{b}\r\n",
            a.len(),
            b.len()
        );
        c.send_raw(bad.as_bytes());
        c.send(&["MSET", &a, "x", &b, "y"]);
        c.send(&["MGET", &a, &b]);
        assert!(text(&c.read()).starts_with("-ERR wrong number of arguments for 'mset'"));
        assert_eq!(text(&c.read()), "OK");
        assert_eq!(text(&c.read()), "[x, y]");
    }
}

/// A loopback socket nothing should ever connect to.
fn trap() -> TcpListener {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    l
}

fn assert_untouched(l: &TcpListener) {
    std::thread::sleep(Duration::from_millis(300));
    match l.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok((_, from)) => panic!("a backend connected to the trap from {from}"),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn migrate_is_refused_and_no_connection_leaves_the_backend() {
    let s = setup("");
    let k = s.key_on(0, "m");
    let t = trap();
    let port = t.local_addr().unwrap().port().to_string();
    let mut c = Resp::connect(s.addr);
    let mut tree = Resp::connect(s.tree);
    for args in [
        vec!["MIGRATE", "127.0.0.1", &port, &k, "0", "1000"],
        vec![
            "MIGRATE",
            "127.0.0.1",
            &port,
            "",
            "0",
            "1000",
            "COPY",
            "KEYS",
            &k,
        ],
        vec!["migrate", "127.0.0.1", &port, &k, "0", "1000", "AUTH", "pw"],
    ] {
        for conn in [&mut c, &mut tree] {
            let r = text(&conn.call(&args));
            assert!(
                r.starts_with("-ERR MIGRATE is disabled on pool r (allow_commands): ")
                    && r.contains("`allow_commands: [migrate]`"),
                "{r}"
            );
        }
    }
    assert_eq!(c.cmd(&format!("EXISTS {k}")), ":1");
    assert_untouched(&t);
}

#[test]
fn allow_commands_opts_in_to_migrate() {
    let s = setup("    allow_commands: [migrate, keys]\n");
    let k = s.key_on(1, "mo");
    let target = redis_server();
    let mut c = Resp::connect(s.addr);
    let port = target.addr.port().to_string();
    assert_eq!(
        text(&c.call(&["MIGRATE", "127.0.0.1", &port, &k, "0", "2000"])),
        "OK"
    );
    assert_eq!(c.cmd(&format!("EXISTS {k}")), ":0");
    assert_eq!(Resp::connect(target.addr).cmd(&format!("GET {k}")), "v");
    // Still off: FLUSHALL was not listed.
    assert!(c.cmd("FLUSHALL").contains("`allow_commands: [flushall]`"));
}

#[test]
fn refused_commands_answer_an_error_naming_them_and_never_reach_a_server() {
    let s = setup("");
    let k = s.key_on(0, "rf");
    let t = trap();
    let tp = t.local_addr().unwrap().port().to_string();
    let mut c = Resp::connect(s.addr);
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("REPLICAOF", vec!["REPLICAOF", "127.0.0.1", &tp]),
        ("SLAVEOF", vec!["SLAVEOF", "127.0.0.1", &tp]),
        ("DEBUG", vec!["DEBUG", "SLEEP", "0"]),
        ("SHUTDOWN", vec!["SHUTDOWN", "NOSAVE"]),
        ("MONITOR", vec!["MONITOR"]),
        ("SYNC", vec!["SYNC"]),
        ("PSYNC", vec!["PSYNC", "?", "-1"]),
        ("FAILOVER", vec!["FAILOVER", "TO", "127.0.0.1", &tp]),
        ("MODULE LOAD", vec!["MODULE", "LOAD", "/nonexistent.so"]),
        ("CONFIG SET", vec!["CONFIG", "SET", "maxmemory", "1"]),
        ("CONFIG REWRITE", vec!["CONFIG", "REWRITE"]),
        ("CONFIG RESETSTAT", vec!["CONFIG", "RESETSTAT"]),
        ("CLIENT KILL", vec!["CLIENT", "KILL", "ID", "1"]),
        ("CLIENT PAUSE", vec!["CLIENT", "PAUSE", "5000"]),
        ("CLIENT UNPAUSE", vec!["CLIENT", "UNPAUSE"]),
        ("CLIENT NO-EVICT", vec!["CLIENT", "NO-EVICT", "on"]),
        ("CLIENT REPLY", vec!["CLIENT", "REPLY", "OFF"]),
        ("SAVE", vec!["SAVE"]),
        ("BGSAVE", vec!["BGSAVE"]),
        ("BGREWRITEAOF", vec!["BGREWRITEAOF"]),
        (
            "ACL SETUSER",
            vec!["ACL", "SETUSER", "eve", "on", ">pw", "+@all"],
        ),
        ("ACL DELUSER", vec!["ACL", "DELUSER", "default"]),
        ("ACL LOAD", vec!["ACL", "LOAD"]),
        ("CLUSTER MEET", vec!["CLUSTER", "MEET", "127.0.0.1", &tp]),
        ("CLUSTER RESET", vec!["CLUSTER", "RESET"]),
        ("SCRIPT KILL", vec!["SCRIPT", "KILL"]),
        ("FUNCTION KILL", vec!["FUNCTION", "KILL"]),
        ("MOVE", vec!["MOVE", &k, "1"]),
        ("SWAPDB", vec!["SWAPDB", "0", "1"]),
        ("COPY", vec!["COPY", &k, "copied", "DB", "5"]),
        ("COPY", vec!["copy", &k, "copied", "replace", "db", "0"]),
        ("WAIT", vec!["WAIT", "0", "0"]),
    ];
    for (name, args) in &cases {
        let r = text(&c.call(args));
        assert!(
            r.starts_with(&format!("-ERR {name} is not supported by kvrouter: ")),
            "{args:?}: {r}"
        );
        assert_eq!(c.cmd("PING"), "PONG", "usable after {args:?}");
    }
    // Nothing of it reached a server.
    assert_untouched(&t);
    for b in &s.backends {
        let mut d = Resp::connect(b.addr);
        assert_eq!(d.cmd("CONFIG GET maxmemory"), "[maxmemory, 0]");
        assert!(d.cmd("ROLE").starts_with("[master"));
        assert_eq!(d.cmd("ACL USERS"), "[default]");
        assert_eq!(d.cmd("SELECT 5"), "OK");
        assert_eq!(d.cmd("DBSIZE"), ":0");
    }
    assert_eq!(c.cmd(&format!("GET {k}")), "v");
    // COPY without DB still works.
    let dst = format!("{{{k}}}copy");
    assert_eq!(c.cmd(&format!("COPY {k} {dst}")), ":1");
    assert_eq!(c.cmd(&format!("GET {dst}")), "v");
}

#[test]
fn scripts_switch_refuses_scripts_entirely() {
    let on = setup("");
    let off = setup("    scripts: false\n");
    let mut c_on = Resp::connect(on.addr);
    let mut c_off = Resp::connect(off.addr);
    let eval = ["EVAL", "return redis.call('GET', KEYS[1])", "1", "sk"];
    assert_eq!(c_on.cmd("SET sk v"), "OK");
    assert_eq!(text(&c_on.call(&eval)), "v");
    assert_eq!(c_off.cmd("SET sk v"), "OK");
    let refused: Vec<(&str, Vec<&str>)> = vec![
        ("EVAL", eval.to_vec()),
        ("EVAL_RO", vec!["EVAL_RO", "return 1", "1", "sk"]),
        (
            "EVALSHA",
            vec![
                "EVALSHA",
                "e0e1f9fabfc9d4800c877a703b823ac0578ff8db",
                "1",
                "sk",
            ],
        ),
        ("FCALL", vec!["FCALL", "f", "1", "sk"]),
        ("SCRIPT LOAD", vec!["SCRIPT", "LOAD", "return 1"]),
        (
            "FUNCTION LOAD",
            vec![
                "FUNCTION",
                "LOAD",
                "#!lua name=l\nredis.register_function('f', function() return 1 end)",
            ],
        ),
    ];
    for (name, args) in &refused {
        let r = text(&c_off.call(args));
        assert!(
            r.starts_with(&format!(
                "-ERR {name} is disabled on pool r (scripts: false): "
            )),
            "{r}"
        );
    }
    assert_eq!(c_off.cmd("GET sk"), "v");
    for b in &off.backends {
        assert_eq!(
            Resp::connect(b.addr).cmd("SCRIPT EXISTS e0e1f9fabfc9d4800c877a703b823ac0578ff8db"),
            "[:0]"
        );
        assert_eq!(Resp::connect(b.addr).cmd("FUNCTION LIST"), "[]");
    }
}

#[test]
fn auth_user_names_cannot_forge_or_flood_the_log() {
    let backend = redis_server();
    let dir = TempDir::new();
    let log = dir.0.join("kvrouter.log");
    let port = free_port();
    let yaml = format!(
        "log: {{ level: info, file: {} }}
pools:
  r: {{ protocol: redis, redis_auth: secret, servers: [\"{}:1\"] }}
listeners:
  - {{ listen: 127.0.0.1:{port}, protocol: redis, route: r }}
",
        log.display(),
        backend.addr
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_proxy, admin) = kvrouter_admin(&dir, &yaml, addr);
    let mut c = Resp::connect(addr);
    let forged = "eve\n2030-01-01T00:00:00.000000Z ERROR kvrouter: forged line";
    assert!(text(&c.call(&["AUTH", forged, "nope"])).starts_with("-WRONGPASS"));
    let lines = common::wait_for(5, "the failed AUTH logged", || {
        let t = std::fs::read_to_string(&log).ok()?;
        t.contains("authentication failed").then_some(t)
    });
    for line in lines.lines().filter(|l| l.contains("forged")) {
        assert!(
            line.contains("authentication failed")
                && line
                    .contains(r#"user="eve\n2030-01-01T00:00:00.000000Z ERROR kvrouter: forged"#),
            "a client-chosen name made its own line: {line:?}"
        );
    }
    assert!(!lines.lines().any(|l| l.starts_with("2030-")));

    // 3,000 wrong AUTHs with a 10 kB name, pipelined 100 at a time.
    let before = std::fs::metadata(&log).unwrap().len();
    let name = "n".repeat(10 * 1024);
    let start = Instant::now();
    for _ in 0..30 {
        for _ in 0..100 {
            c.send(&["AUTH", &name, "nope"]);
        }
        for _ in 0..100 {
            assert!(text(&c.read()).starts_with("-WRONGPASS"));
        }
    }
    let took = start.elapsed();
    assert_eq!(
        c.cmd("AUTH secret"),
        "OK",
        "the client can still authenticate"
    );
    std::thread::sleep(Duration::from_millis(200));
    let grew = std::fs::metadata(&log).unwrap().len() - before;
    eprintln!("3000 failed AUTHs in {took:?} added {grew} bytes of log");
    assert!(
        grew < 1 << 20,
        "3000 failed AUTHs wrote {grew} bytes of log"
    );
    let failures = metric(&scrape(admin), "kvrouter_auth_failures_total", &[]);
    assert_eq!(failures, Some(3001.0), "the metric counts every failure");
}
