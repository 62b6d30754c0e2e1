//! Client authentication on redis listeners: users with passwords, and the pools and commands
//! each may use; failures are refused with redis's own errors and counted, never logged with
//! the password.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{free_port, kvrouter_admin, redis_server, Resp, TempDir};

fn scrape(admin: SocketAddr) -> String {
    let mut s = TcpStream::connect(admin).unwrap();
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

#[test]
fn users_authenticate_and_are_limited_to_their_commands_and_pools() {
    let b = redis_server();
    let other = redis_server();
    let dir = TempDir::new();
    let port = free_port();
    let yaml = format!(
        "pools:
  r: {{ protocol: redis, servers: [\"{}:1\"] }}
  other: {{ protocol: redis, servers: [\"{}:1\"] }}
listeners:
  - listen: 127.0.0.1:{port}
    protocol: redis
    route: r
    users:
      - {{ name: default, password: open-sesame }}
      - {{ name: reader, password: r3ader-pw, commands: [get, mget, ping] }}
      - {{ name: elsewhere, password: elsewhere-pw, pools: [other] }}
",
        b.addr, other.addr
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_proxy, admin) = kvrouter_admin(&dir, &yaml, addr);

    let mut c = Resp::connect(addr);
    assert!(c.cmd("GET k").starts_with("-NOAUTH"));
    assert!(c.cmd("AUTH wrong").starts_with("-WRONGPASS"));
    assert_eq!(
        c.cmd("AUTH open-sesame"),
        "OK",
        "AUTH password is the default user"
    );
    assert_eq!(c.cmd("SET k v"), "OK");

    let mut r = Resp::connect(addr);
    assert!(r.cmd("AUTH reader nope").starts_with("-WRONGPASS"));
    assert_eq!(r.cmd("AUTH reader r3ader-pw"), "OK");
    assert_eq!(r.cmd("GET k"), "v");
    let denied = r.cmd("SET k x");
    assert!(
        denied.starts_with("-NOPERM User reader has no permissions to run the 'set' command"),
        "{denied}"
    );
    assert_eq!(r.cmd("GET k"), "v", "the refused SET did not run");

    let mut e = Resp::connect(addr);
    assert!(e.cmd("AUTH elsewhere elsewhere-pw").starts_with("-NOPERM"));
    assert!(e.cmd("GET k").starts_with("-NOAUTH"));

    // HELLO AUTH works too.
    let mut h = Resp::connect(addr);
    assert!(h.cmd("HELLO 2 AUTH reader r3ader-pw").contains("kvrouter"));
    assert_eq!(h.cmd("GET k"), "v");

    let metrics = scrape(admin);
    let line = metrics
        .lines()
        .find(|l| l.starts_with("kvrouter_auth_failures_total{"))
        .expect("auth failure counter");
    assert!(line.ends_with(" 3"), "{line}");
    assert!(!metrics.contains("open-sesame") && !metrics.contains("r3ader-pw"));
}
