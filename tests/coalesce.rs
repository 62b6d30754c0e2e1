//! `coalesce_misses: true`: concurrent plain gets of one key share one backend request.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{free_port, kvrouter, memcached, signal, Mc, Proc, TempDir};

fn proxy(backend: &Proc, coalesce: bool) -> (TempDir, Proc) {
    let dir = TempDir::new();
    let port = free_port();
    let yaml = format!(
        "workers: 1
pools:
  main:
    protocol: memcache
    servers: [\"{}:1 mc-0\"]
    timeout: 5s
listeners:
  - listen: 127.0.0.1:{port}
    protocol: memcache
    route: main
    coalesce_misses: {coalesce}
",
        backend.addr
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let p = kvrouter(&dir, &yaml, addr);
    (dir, p)
}

/// memcached's own `stats` counter `name`.
fn stat(addr: SocketAddr, name: &str) -> u64 {
    let mut c = Mc::connect(addr);
    c.send(b"stats\r\n");
    let mut found = None;
    loop {
        let l = c.line();
        if l == "END" {
            return found.unwrap_or_else(|| panic!("no stat {name}"));
        }
        let mut t = l.split(' ');
        if t.nth(1) == Some(name) {
            found = t.next().map(|v| v.parse().unwrap());
        }
    }
}

/// 50 clients get `key` at once while the backend is paused (SIGSTOP), so every get is issued
/// while the first is in flight; returns (backend gets, replies).
fn fifty_concurrent_gets(
    backend: &Proc,
    proxy: &Proc,
    key: &'static str,
) -> (u64, Vec<Option<Vec<u8>>>) {
    let before = stat(backend.addr, "cmd_get");
    let clients = 50;
    let barrier = Arc::new(Barrier::new(clients + 1));
    let addr = proxy.addr;
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut c = Mc::connect(addr);
                barrier.wait();
                c.get(key)
            })
        })
        .collect();
    signal(backend, libc::SIGSTOP);
    barrier.wait();
    std::thread::sleep(Duration::from_millis(300));
    signal(backend, libc::SIGCONT);
    let replies: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    (stat(backend.addr, "cmd_get") - before, replies)
}

#[test]
fn fifty_concurrent_gets_share_one_backend_get() {
    let backend = memcached();
    let (_dir, p) = proxy(&backend, true);
    let (_dir2, plain) = proxy(&backend, false);
    assert_eq!(Mc::connect(p.addr).set("hot", b"value"), "STORED");

    let (hit_gets, replies) = fifty_concurrent_gets(&backend, &p, "hot");
    let gets = hit_gets;
    eprintln!("coalesce_misses: 50 concurrent gets of a hit -> {gets} backend get(s)");
    // Normally exactly 1; a client thread scheduled late (after the shared reply landed)
    // starts a new flight of its own, so a loaded machine may see 2.
    assert!((1..=3).contains(&gets), "{gets} backend gets");
    assert!(replies.iter().all(|r| r.as_deref() == Some(&b"value"[..])));

    let (miss_gets, replies) = fifty_concurrent_gets(&backend, &p, "missing");
    let gets = miss_gets;
    eprintln!("coalesce_misses: 50 concurrent gets of a miss -> {gets} backend get(s)");
    assert!((1..=3).contains(&gets), "{gets} backend gets");
    assert!(replies.iter().all(|r| r.is_none()));

    // Without coalescing every get reaches the backend.
    let (gets, _) = fifty_concurrent_gets(&backend, &plain, "hot");
    eprintln!("without coalescing: {gets} backend gets");
    assert_eq!(gets, 50);

    // Flights end with their reply: a later get is sent again.
    let before = stat(backend.addr, "cmd_get");
    let mut c = Mc::connect(p.addr);
    c.get("hot");
    c.get("hot");
    assert_eq!(stat(backend.addr, "cmd_get") - before, 2);
    // The proxy counts the shared gets.
    c.send(b"stats\r\n");
    let mut coalesced = 0;
    loop {
        let l = c.line();
        if l == "END" {
            break;
        }
        if let Some(v) = l.strip_prefix("STAT get_coalesced ") {
            coalesced = v.parse().unwrap();
        }
    }
    // Every get that did not reach the backend was served by a shared flight.
    assert_eq!(coalesced, 100 - hit_gets - miss_gets);
}

#[test]
fn a_get_after_a_write_never_shares_an_older_get() {
    let backend = memcached();
    let (_dir, p) = proxy(&backend, true);
    let mut a = Mc::connect(p.addr);
    let mut b = Mc::connect(p.addr);
    assert_eq!(a.set("k", b"old"), "STORED");
    signal(&backend, libc::SIGSTOP);
    // a's get is in flight (the backend is paused); b writes, then reads its own write.
    a.send(b"get k\r\n");
    std::thread::sleep(Duration::from_millis(50));
    b.send(b"set k 0 0 3\r\nnew\r\nget k\r\n");
    std::thread::sleep(Duration::from_millis(50));
    signal(&backend, libc::SIGCONT);
    assert_eq!(a.values().unwrap()[0].2, b"old");
    assert_eq!(b.line(), "STORED");
    assert_eq!(b.values().unwrap()[0].2, b"new");
}
