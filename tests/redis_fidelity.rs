//! Where kvrouter should behave like redis-server, it is compared with a real one on the same
//! inputs: subscribe confirmations, keyless scripts, TIME, PUBSUB, bad key counts, a backend
//! restart and a wrong backend password.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    free_port, kvrouter, redis_server, redis_server_with, text, wait_port, Frame, Proc,
    RedisCluster, Resp, TempDir,
};

/// kvrouter on a fresh port over `backends`, with `extra` pool lines (4-space indented).
fn proxy(dir: &TempDir, backends: &[&Proc], extra: &str) -> Proc {
    let port = free_port();
    let servers: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("\"{}:1 r{i}\"", b.addr))
        .collect();
    let yaml = format!(
        "workers: 2\npools:\n  r:\n    protocol: redis\n    timeout: 2s\n    servers: [{}]\n{extra}listeners:\n  - {{ listen: 127.0.0.1:{port}, protocol: redis, route: r }}\n",
        servers.join(", ")
    );
    kvrouter(dir, &yaml, format!("127.0.0.1:{port}").parse().unwrap())
}

/// SUBSCRIBE, wait for its confirmation, PUBLISH from another connection: the publisher counts
/// the subscriber and the message arrives, every round, through kvrouter as directly.
#[test]
fn subscribe_is_confirmed_once_the_server_subscribed() {
    let (a, b) = (redis_server(), redis_server());
    let dir = TempDir::new();
    let kv = proxy(&dir, &[&a, &b], "");
    for (what, addr) in [("redis-server", a.addr), ("kvrouter", kv.addr)] {
        let mut publisher = Resp::connect(addr);
        let mut lost = 0;
        for i in 0..200 {
            let ch = format!("round{i}");
            let mut sub = Resp::connect(addr);
            assert_eq!(
                text(&sub.call(&["SUBSCRIBE", &ch])),
                format!("[subscribe, {ch}, :1]")
            );
            let n = publisher.call(&["PUBLISH", &ch, "hi"]);
            if n != Frame::Integer(1) {
                lost += 1;
                continue;
            }
            assert_eq!(text(&sub.read()), format!("[message, {ch}, hi]"));
            // And once the last unsubscribe is confirmed, the subscriber is gone.
            assert_eq!(
                text(&sub.call(&["UNSUBSCRIBE"])),
                format!("[unsubscribe, {ch}, :0]")
            );
            if publisher.call(&["PUBLISH", &ch, "late"]) != Frame::Integer(0) {
                lost += 1;
            }
            assert_eq!(sub.cmd("PING"), "PONG");
        }
        assert_eq!(
            lost, 0,
            "{what}: PUBLISH after the confirmation counted wrong"
        );
    }
    // Several names in one command: one confirmation each, in order, with redis's counts.
    let script: &[&[&str]] = &[
        &["SUBSCRIBE", "x", "y", "x"],
        &["PSUBSCRIBE", "p*", "q*"],
        &["UNSUBSCRIBE", "y", "nope"],
        &["PUNSUBSCRIBE"],
        &["UNSUBSCRIBE"],
    ];
    let mut direct = Resp::connect(a.addr);
    let mut via = Resp::connect(kv.addr);
    for cmd in script {
        direct.send(cmd);
        via.send(cmd);
        let names = (cmd.len() - 1).max(if cmd[0] == "PUNSUBSCRIBE" { 2 } else { 1 });
        for _ in 0..names {
            assert_eq!(text(&via.read()), text(&direct.read()), "{cmd:?}");
        }
    }
    assert_eq!(via.cmd("PING"), "PONG");
    // Many names in one command: every confirmation, in order, promptly.
    let names: Vec<String> = (0..5000).map(|i| format!("many{i}")).collect();
    let mut cmd = vec!["SUBSCRIBE"];
    cmd.extend(names.iter().map(String::as_str));
    let start = Instant::now();
    via.send(&cmd);
    for (i, ch) in names.iter().enumerate() {
        assert_eq!(text(&via.read()), format!("[subscribe, {ch}, :{}]", i + 1));
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let mut publisher = Resp::connect(kv.addr);
    assert_eq!(publisher.cmd("PUBLISH many4999 m"), ":1");
}

/// Scripts with `numkeys 0` run on one server: SCRIPT LOAD (sent to every server) then
/// EVALSHA finds the script; FUNCTION LOAD then FCALL likewise. `scripts: false` still refuses.
#[test]
fn keyless_scripts_run_on_one_server() {
    let (a, b, c) = (redis_server(), redis_server(), redis_server());
    let dir = TempDir::new();
    let kv = proxy(&dir, &[&a, &b, &c], "");
    let mut r = Resp::connect(kv.addr);
    assert_eq!(text(&r.call(&["EVAL", "return 7", "0"])), ":7");
    let sha = text(&r.call(&["SCRIPT", "LOAD", "return 'hello'"]));
    assert_eq!(sha.len(), 40, "{sha}");
    for _ in 0..5 {
        assert_eq!(r.cmd(&format!("EVALSHA {sha} 0")), "hello");
        assert_eq!(r.cmd(&format!("EVALSHA_RO {sha} 0")), "hello");
    }
    let lib = "#!lua name=fid\nredis.register_function{function_name='f', callback=function(keys, args) return #args end, flags={'no-writes'}}";
    assert_eq!(text(&r.call(&["FUNCTION", "LOAD", lib])), "fid");
    assert_eq!(r.cmd("FCALL f 0 a b"), ":2");
    assert_eq!(r.cmd("FCALL_RO f 0 a"), ":1");
    // With keys, as before: to the keys' server.
    let set = "return redis.call('set',KEYS[1],'v')";
    assert_eq!(text(&r.call(&["EVAL", set, "1", "sk"])), "OK");
    assert_eq!(r.cmd("GET sk"), "v");

    let dir2 = TempDir::new();
    let off = proxy(&dir2, &[&a], "    scripts: false\n");
    let mut r = Resp::connect(off.addr);
    let e = text(&r.call(&["EVAL", "return 7", "0"]));
    assert!(
        e.starts_with("-ERR EVAL is disabled on pool r (scripts: false)"),
        "{e}"
    );
    let e = r.cmd(&format!("EVALSHA {sha} 0"));
    assert!(e.contains("scripts: false"), "{e}");
}

/// TIME answers with the proxy's clock, in redis's shape; PUBSUB CHANNELS/NUMSUB/NUMPAT and
/// their shard forms merge every server's answer, and equal redis-server's with the same
/// subscribers.
#[test]
fn time_and_pubsub_introspection() {
    let (a, b, c) = (redis_server(), redis_server(), redis_server());
    let single = redis_server();
    let dir = TempDir::new();
    let kv = proxy(&dir, &[&a, &b, &c], "");
    let mut r = Resp::connect(kv.addr);
    let Frame::Array(Some(t)) = r.call(&["TIME"]) else {
        panic!("TIME")
    };
    let (Frame::Bulk(Some(s)), Frame::Bulk(Some(us))) = (&t[0], &t[1]) else {
        panic!("TIME: {t:?}")
    };
    let s: u64 = std::str::from_utf8(s).unwrap().parse().unwrap();
    let us: u64 = std::str::from_utf8(us).unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(s.abs_diff(now) <= 2 && us < 1_000_000, "{s} {us}");

    // The same subscribers on one redis-server and through kvrouter (spread over three).
    let mut subs = Vec::new();
    for addr in [single.addr, kv.addr] {
        for group in [&["c1", "c2", "c3"][..], &["c2", "c4"], &["c5"]] {
            let mut s = Resp::connect(addr);
            let mut cmd = vec!["SUBSCRIBE"];
            cmd.extend(group);
            s.send(&cmd);
            for _ in group {
                s.read();
            }
            subs.push(s);
        }
        let mut s = Resp::connect(addr);
        s.send(&["PSUBSCRIBE", "p*", "q*"]);
        s.read();
        s.read();
        s.send(&["SSUBSCRIBE", "s1"]);
        s.read();
        subs.push(s);
    }
    let mut direct = Resp::connect(single.addr);
    let sorted = |f: Frame| {
        let Frame::Array(Some(mut v)) = f else {
            panic!("{f:?}")
        };
        v.sort_by_key(text);
        text(&Frame::Array(Some(v)))
    };
    for cmd in [
        "PUBSUB CHANNELS",
        "PUBSUB CHANNELS c*",
        "PUBSUB SHARDCHANNELS",
    ] {
        let args: Vec<&str> = cmd.split(' ').collect();
        assert_eq!(sorted(r.call(&args)), sorted(direct.call(&args)), "{cmd}");
    }
    for cmd in [
        "PUBSUB NUMSUB c2 nope c1 c5 c4 c3",
        "PUBSUB NUMSUB",
        "PUBSUB NUMPAT",
        "PUBSUB SHARDNUMSUB s1 x",
    ] {
        assert_eq!(r.cmd(cmd), direct.cmd(cmd), "{cmd}");
    }
    assert_eq!(r.cmd("PUBSUB NUMSUB c2"), "[c2, :2]");
}

/// A bad key count gets redis's own error text, for every command that takes one.
#[test]
fn bad_numkeys_errors_match_redis() {
    let (a, b) = (redis_server(), redis_server());
    let dir = TempDir::new();
    let kv = proxy(&dir, &[&a, &b], "");
    let mut direct = Resp::connect(a.addr);
    let mut via = Resp::connect(kv.addr);
    let cases = [
        "LMPOP 0 l LEFT",
        "LMPOP -1 l LEFT",
        "LMPOP x l LEFT",
        "LMPOP 5 l LEFT",
        "LMPOP 99999999999999999999 l LEFT",
        "BLMPOP 0 0 l LEFT",
        "BLMPOP 0 -2 l LEFT",
        "BLMPOP 0 x l LEFT",
        "BLMPOP 0 3 l LEFT",
        "SINTERCARD 0 a",
        "SINTERCARD -1 a",
        "SINTERCARD x a",
        "SINTERCARD 4 a",
        "ZMPOP 0 z MIN",
        "ZMPOP -1 z MIN",
        "ZMPOP x z MIN",
        "ZMPOP 3 z MIN",
        "BZMPOP 0 0 z MIN",
        "BZMPOP 0 -1 z MIN",
        "BZMPOP 0 x z MIN",
        "BZMPOP 0 4 z MIN",
        "ZUNION 0 a",
        "ZUNION -1 a",
        "ZUNION x a",
        "ZUNION 3 a",
        "ZINTER 0 a",
        "ZINTER -1 a",
        "ZINTER 2 a",
        "ZDIFF 0 a",
        "ZDIFF -5 a",
        "ZDIFF 9 a",
        "ZINTERCARD 0 a",
        "ZINTERCARD -1 a",
        "ZINTERCARD x a",
        "ZINTERCARD 2 a",
        "ZUNIONSTORE d 0 a",
        "ZUNIONSTORE d -1 a",
        "ZUNIONSTORE d x a",
        "ZUNIONSTORE d 3 a",
        "ZINTERSTORE d 0 a",
        "ZDIFFSTORE d 0 a",
        "ZDIFFSTORE d -3 a",
        "EVAL return -1",
        "EVAL return x",
        "EVAL return 3 a",
        "EVALSHA_RO return -2",
        "FCALL f -1",
        "FCALL f 2 a",
        "FCALL_RO f 1",
    ];
    for case in cases {
        let d = direct.cmd(case);
        assert!(d.starts_with('-'), "{case}: redis answered {d}");
        assert_eq!(via.cmd(case), d, "{case}");
    }
    // Good counts still go by their keys.
    assert_eq!(via.cmd("RPUSH {l}1 a"), ":1");
    assert_eq!(via.cmd("LMPOP 2 {l}0 {l}1 LEFT"), "[{l}1, [a]]");
}

fn redis_at(port: u16) -> Proc {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_port(addr, &mut child);
    Proc { child, addr }
}

/// A backend killed and restarted on its port: requests through kvrouter succeed within
/// ~150 ms of it listening again (a refused server is retried every 100 ms).
#[test]
fn backend_restart_is_noticed_quickly() {
    let port = free_port();
    let mut server = redis_at(port);
    let dir = TempDir::new();
    let kv = proxy(&dir, &[&server], "");
    let mut r = Resp::connect(kv.addr);
    assert_eq!(r.cmd("SET k v"), "OK");
    let mut worst = Duration::ZERO;
    for round in 0..3 {
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        // Down long enough for the backoffs to grow.
        let down = Instant::now();
        while down.elapsed() < Duration::from_millis(1500) {
            let e = r.cmd("GET k");
            assert!(e.starts_with("-ERR backend 127.0.0.1:"), "{e}");
            std::thread::sleep(Duration::from_millis(20));
        }
        server = redis_at(port);
        let listening = Instant::now();
        loop {
            let reply = r.cmd("SET k v");
            if reply == "OK" {
                break;
            }
            assert!(
                listening.elapsed() < Duration::from_secs(2),
                "round {round}: {reply}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        worst = worst.max(listening.elapsed());
    }
    eprintln!("first success after the restart: at worst {worst:?}");
    assert!(worst < Duration::from_millis(250), "{worst:?}");
}

/// A wrong `redis_auth` is an authentication failure naming the server, not a connect failure.
#[test]
fn wrong_backend_password_is_named() {
    let server = redis_server_with(&["--requirepass", "right"]);
    let dir = TempDir::new();
    let kv = proxy(&dir, &[&server], "    redis_auth: wrong\n");
    let mut r = Resp::connect(kv.addr);
    assert_eq!(r.cmd("AUTH wrong"), "OK");
    let e = r.cmd("GET k");
    let want = format!(
        "-ERR backend {} authentication failed: WRONGPASS",
        server.addr
    );
    assert!(e.starts_with(&want), "{e}");
}

/// On a cluster pool a classic SUBSCRIBE goes to the node of its channel's slot, where PUBLISH
/// through kvrouter goes, so PUBLISH counts it (a cluster node counts only its own subscribers).
#[test]
fn cluster_publish_counts_subscribers() {
    let cluster = RedisCluster::start(5000);
    let dir = TempDir::new();
    let port = free_port();
    let yaml = format!(
        "workers: 2\npools:\n  c:\n    protocol: redis\n    timeout: 2s\n    cluster: {{ seeds: [\"{}\"] }}\nlisteners:\n  - {{ listen: 127.0.0.1:{port}, protocol: redis, route: c }}\n",
        cluster.seed()
    );
    let kv = kvrouter(&dir, &yaml, format!("127.0.0.1:{port}").parse().unwrap());
    let mut sub = Resp::connect(kv.addr);
    let names: Vec<String> = (0..30).map(|i| format!("news{i}")).collect();
    let mut cmd = vec!["SUBSCRIBE"];
    cmd.extend(names.iter().map(String::as_str));
    sub.send(&cmd);
    for (i, ch) in names.iter().enumerate() {
        assert_eq!(text(&sub.read()), format!("[subscribe, {ch}, :{}]", i + 1));
    }
    let mut publisher = Resp::connect(kv.addr);
    for ch in &names {
        assert_eq!(publisher.cmd(&format!("PUBLISH {ch} m")), ":1", "{ch}");
        assert_eq!(text(&sub.read()), format!("[message, {ch}, m]"));
    }
    assert_eq!(
        publisher.cmd("PUBSUB NUMSUB news1 news7"),
        "[news1, :1, news7, :1]"
    );
    sub.send(&["UNSUBSCRIBE", "news3"]);
    assert_eq!(text(&sub.read()), "[unsubscribe, news3, :29]");
    assert_eq!(publisher.cmd("PUBLISH news3 m"), ":0");
    assert_eq!(publisher.cmd("PUBLISH news4 m"), ":1");
    assert_eq!(text(&sub.read()), "[message, news4, m]");
}
