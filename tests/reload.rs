//! Hot reload of a running kvrouter in front of real memcached: the config file replaced by
//! rename (as editors and Kubernetes do) or SIGHUP; connected clients follow the new routing;
//! a bad config keeps the old one serving and is counted; listeners open and close; unchanged
//! servers keep their backend connections; the log level follows the config; no request
//! fails across reloads under load.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    free_port, kvrouter_conf, mc_stat, memcached, metric, replace_file, scrape, wait_for, Mc, Proc,
    TempDir,
};

/// A native config: one pool `p` of `servers` (name, address), one listener per port.
fn conf(servers: &[(&str, SocketAddr)], ports: &[u16], extra: &str) -> String {
    let servers: Vec<String> = servers
        .iter()
        .map(|(n, a)| format!("\"{a}:1 {n}\""))
        .collect();
    let listeners: String = ports
        .iter()
        .map(|p| format!("  - {{ listen: 127.0.0.1:{p}, protocol: memcache, route: p }}\n"))
        .collect();
    format!(
        "workers: 1\n{extra}pools:\n  p:\n    protocol: memcache\n    servers: [{}]\nlisteners:\n{listeners}",
        servers.join(", ")
    )
}

fn addr(port: u16) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

struct Running {
    dir: TempDir,
    file: PathBuf,
    proxy: Proc,
    admin: SocketAddr,
}

fn start(text: &str, port: u16, extra_args: &[&str]) -> Running {
    let dir = TempDir::new();
    // The config lives in its own directory, as in /etc/kvrouter/.
    std::fs::create_dir_all(dir.0.join("etc")).unwrap();
    let file = dir.0.join("etc/kvrouter.yml");
    std::fs::write(&file, text).unwrap();
    let (proxy, admin) = kvrouter_conf(&file, addr(port), extra_args);
    Running {
        dir,
        file,
        proxy,
        admin,
    }
}

fn reloads(admin: SocketAddr, result: &str) -> f64 {
    metric(
        &scrape(admin),
        "kvrouter_config_reloads_total",
        &[("result", result)],
    )
    .unwrap()
}

fn wait_reloads(admin: SocketAddr, result: &str, n: f64) {
    wait_for(10, &format!("{n} reloads with result {result}"), || {
        (reloads(admin, result) >= n).then_some(())
    });
}

#[test]
fn replaced_file_moves_a_connected_clients_routing() {
    let (a, b) = (memcached(), memcached());
    let port = free_port();
    let r = start(&conf(&[("s", a.addr)], &[port], ""), port, &[]);
    let mut c = Mc::connect(addr(port));
    assert_eq!(c.set("before", b"1"), "STORED");
    assert!(Mc::connect(a.addr).get("before").is_some());

    // Same server name, another address: the server is replaced.
    replace_file(&r.file, &conf(&[("s", b.addr)], &[port], ""));
    wait_reloads(r.admin, "ok", 1.0);
    assert_eq!(
        metric(&scrape(r.admin), "kvrouter_config_generation", &[]),
        Some(2.0)
    );
    // The same client connection now writes to b.
    assert_eq!(c.set("after", b"2"), "STORED");
    assert!(Mc::connect(b.addr).get("after").is_some());
    assert!(Mc::connect(a.addr).get("after").is_none());
    assert_eq!(c.get("before"), None, "reads go to the new server too");
    drop(r.proxy);
}

#[test]
fn bad_config_keeps_the_old_one_serving_and_is_counted() {
    let (a, b) = (memcached(), memcached());
    let port = free_port();
    let r = start(&conf(&[("s", a.addr)], &[port], ""), port, &[]);
    let mut c = Mc::connect(addr(port));
    // An unknown key on line 6: refused with its location.
    let bad = conf(&[("s", b.addr)], &[port], "").replace(
        "    protocol: memcache\n",
        "    protocol: memcache\n    colour: red\n",
    );
    replace_file(&r.file, &bad);
    wait_reloads(r.admin, "failed", 1.0);
    assert_eq!(reloads(r.admin, "ok"), 0.0);
    assert_eq!(c.set("k", b"v"), "STORED");
    assert!(Mc::connect(a.addr).get("k").is_some(), "old routing serves");
    assert!(Mc::connect(b.addr).get("k").is_none());

    // Changing the number of workers needs a restart: refused, counted.
    replace_file(
        &r.file,
        &conf(&[("s", b.addr)], &[port], "").replace("workers: 1", "workers: 2"),
    );
    wait_reloads(r.admin, "failed", 2.0);
    assert_eq!(c.set("k2", b"v"), "STORED");
    assert!(Mc::connect(a.addr).get("k2").is_some());
    assert_eq!(
        metric(&scrape(r.admin), "kvrouter_config_generation", &[]),
        Some(1.0)
    );
    drop(r.proxy);
}

#[test]
fn reload_errors_are_logged_with_their_location() {
    let a = memcached();
    let port = free_port();
    let dir_log = TempDir::new();
    let log = dir_log.0.join("kvrouter.log");
    let log_arg = log.to_str().unwrap().to_string();
    let r = start(
        &conf(&[("s", a.addr)], &[port], ""),
        port,
        &["-o", &log_arg],
    );
    let bad = conf(&[("s", a.addr)], &[port], "").replace(
        "    protocol: memcache\n",
        "    protocol: memcache\n    colour: red\n",
    );
    replace_file(&r.file, &bad);
    wait_reloads(r.admin, "failed", 1.0);
    let text = wait_for(5, "the reload error in the log", || {
        let t = std::fs::read_to_string(&log).ok()?;
        t.contains("config reload failed").then_some(t)
    });
    let want = format!("{}:5:5: unknown field `colour`", r.file.display());
    assert!(text.contains(&want), "no {want} in:\n{text}");
    drop(r.proxy);
}

#[test]
fn listeners_open_and_close() {
    let a = memcached();
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let r = start(&conf(&[("s", a.addr)], &[p1, p2], ""), p1, &[]);
    assert_eq!(Mc::connect(addr(p2)).set("x", b"1"), "STORED");
    assert!(std::net::TcpStream::connect(addr(p3)).is_err());

    replace_file(&r.file, &conf(&[("s", a.addr)], &[p1, p3], ""));
    wait_reloads(r.admin, "ok", 1.0);
    assert_eq!(Mc::connect(addr(p3)).get("x").as_deref(), Some(&b"1"[..]));
    wait_for(5, "the removed listener to close", || {
        std::net::TcpStream::connect(addr(p2))
            .is_err()
            .then_some(())
    });
    assert_eq!(Mc::connect(addr(p1)).get("x").as_deref(), Some(&b"1"[..]));
    // The removed listener's series are gone from /metrics, the new one's are there.
    let m = scrape(r.admin);
    let l2 = addr(p2).to_string();
    let l3 = addr(p3).to_string();
    assert!(metric(
        &m,
        "kvrouter_client_connections_total",
        &[("listener", &l2)]
    )
    .is_none());
    assert_eq!(
        metric(
            &m,
            "kvrouter_client_connections_total",
            &[("listener", &l3)]
        ),
        Some(1.0)
    );
    drop(r.proxy);
}

#[test]
fn sighup_reloads_and_unchanged_servers_keep_their_connections() {
    let (a, b, c) = (memcached(), memcached(), memcached());
    let port = free_port();
    let r = start(
        &conf(&[("a", a.addr), ("b", b.addr)], &[port], ""),
        port,
        &[],
    );
    let mut client = Mc::connect(addr(port));
    for i in 0..40 {
        assert_eq!(client.set(&format!("k{i}"), b"v"), "STORED");
    }
    // One open probe connection per server reads its connection counter.
    let mut probe_a = Mc::connect(a.addr);
    let before = mc_stat(&mut probe_a, "total_connections");
    let on_a = |m: &[common::Sample]| {
        metric(m, "kvrouter_server_requests_total", &[("server", "a")]).unwrap()
    };
    let a_before = on_a(&scrape(r.admin));
    assert!(a_before > 0.0);

    // SIGHUP reloads even an unchanged file.
    unsafe { libc::kill(r.proxy.child.id() as i32, libc::SIGHUP) };
    wait_reloads(r.admin, "ok", 1.0);
    assert_eq!(
        metric(&scrape(r.admin), "kvrouter_config_generation", &[]),
        Some(2.0)
    );

    // Server b is replaced by c; a is unchanged.
    replace_file(&r.file, &conf(&[("a", a.addr), ("c", c.addr)], &[port], ""));
    wait_reloads(r.admin, "ok", 2.0);
    let mut on_c = 0;
    for i in 0..40 {
        let key = format!("n{i}");
        assert_eq!(client.set(&key, b"v"), "STORED");
        on_c += usize::from(Mc::connect(c.addr).get(&key).is_some());
    }
    assert!(on_c > 0 && on_c < 40, "{on_c} keys on c");
    assert_eq!(
        mc_stat(&mut probe_a, "total_connections"),
        before,
        "kvrouter reconnected to the unchanged server"
    );
    // b's series are gone, a's counters went on.
    let m = scrape(r.admin);
    assert!(metric(&m, "kvrouter_server_requests_total", &[("server", "b")]).is_none());
    assert_eq!(on_a(&m), a_before + (40 - on_c) as f64);
    drop(r.proxy);
}

#[test]
fn log_level_follows_the_config() {
    let a = memcached();
    let port = free_port();
    let dir_log = TempDir::new();
    let log = dir_log.0.join("kvrouter.log");
    let logcfg = |level: &str| format!("log: {{ level: {level}, file: {} }}\n", log.display());
    let r = start(&conf(&[("s", a.addr)], &[port], &logcfg("info")), port, &[]);
    // A client connecting is logged at debug level only.
    let touch = || {
        let mut c = Mc::connect(addr(port));
        c.send(b"version\r\n");
        c.line();
    };
    touch();
    std::thread::sleep(Duration::from_millis(100));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("admin listening"), "{text}");
    assert!(!text.contains("client connected"), "{text}");

    replace_file(&r.file, &conf(&[("s", a.addr)], &[port], &logcfg("debug")));
    wait_reloads(r.admin, "ok", 1.0);
    touch();
    wait_for(5, "a debug line in the log", || {
        let t = std::fs::read_to_string(&log).ok()?;
        t.contains("client connected").then_some(())
    });

    // Taking `file` out of the config sends logging back to stderr: the file stops growing.
    replace_file(
        &r.file,
        &conf(&[("s", a.addr)], &[port], "log: { level: debug }\n"),
    );
    wait_reloads(r.admin, "ok", 2.0);
    let size = std::fs::metadata(&log).unwrap().len();
    touch();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        std::fs::metadata(&log).unwrap().len(),
        size,
        "nothing more is written to the old file"
    );
    drop(r.dir);
}

#[test]
fn no_request_fails_across_reloads_under_load() {
    let (a, b, c) = (memcached(), memcached(), memcached());
    let port = free_port();
    let r = start(
        &conf(&[("a", a.addr), ("b", b.addr)], &[port], ""),
        port,
        &[],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut threads = Vec::new();
    for t in 0..4 {
        let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
        threads.push(std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut client = Mc::connect(addr(port));
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let key = format!("t{t}-{}", i % 100);
                // A pipeline of a set and a multi-get, and every fourth batch a new connection.
                client.send(
                    format!("set {key} 0 0 1\r\nv\r\nget {key} t{t}-x t{t}-y t{t}-z\r\n")
                        .as_bytes(),
                );
                let l = client.line();
                if l != "STORED" {
                    failures.lock().unwrap().push(l);
                }
                // A miss is no failure: a reload that moves the key between the set and the
                // get (two reads apart) sends the get to the key's new server.
                match client.values() {
                    Ok(v) if v.is_empty() => {}
                    Ok(v) if v.len() == 1 && v[0].0 == key && v[0].2 == b"v" => {}
                    Ok(v) => failures.lock().unwrap().push(format!("{v:?} for {key}")),
                    Err(l) => failures.lock().unwrap().push(l),
                }
                i += 1;
                done.fetch_add(2, Ordering::Relaxed);
                if i.is_multiple_of(4) {
                    client = Mc::connect(addr(port));
                }
            }
        }));
    }
    // Reload four times while the load runs: add c, remove b, add b, SIGHUP.
    let configs = [
        conf(&[("a", a.addr), ("b", b.addr), ("c", c.addr)], &[port], ""),
        conf(&[("a", a.addr), ("c", c.addr)], &[port], ""),
        conf(&[("a", a.addr), ("b", b.addr), ("c", c.addr)], &[port], ""),
    ];
    for (i, text) in configs.iter().enumerate() {
        std::thread::sleep(Duration::from_millis(300));
        replace_file(&r.file, text);
        wait_reloads(r.admin, "ok", (i + 1) as f64);
    }
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(r.proxy.child.id() as i32, libc::SIGHUP) };
    wait_reloads(r.admin, "ok", 4.0);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    let n = done.load(Ordering::Relaxed);
    eprintln!("{n} requests across 4 reloads, {} failed", failures.len());
    assert!(n > 1000, "only {n} requests");
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(reloads(r.admin, "failed"), 0.0);
    drop(r.proxy);
}

#[test]
fn a_connected_redis_client_follows_the_new_routing_and_auth() {
    let (a, b) = (common::redis_server(), common::redis_server());
    let port = free_port();
    let other = a.addr;
    let redis_conf = |server: SocketAddr, users: &str| {
        format!(
            "workers: 1\npools:\n  r: {{ protocol: redis, servers: [\"{server}:1 s\"] }}\n  other: {{ protocol: redis, servers: [\"{other}:1 o\"] }}\nlisteners:\n  - listen: 127.0.0.1:{port}\n    protocol: redis\n    route: r\n{users}"
        )
    };
    let r = start(&redis_conf(a.addr, ""), port, &[]);
    let mut c = common::Resp::connect(addr(port));
    assert_eq!(c.cmd("SET before 1"), "OK");
    assert_eq!(common::Resp::connect(a.addr).cmd("EXISTS before"), ":1");

    replace_file(&r.file, &redis_conf(b.addr, ""));
    wait_reloads(r.admin, "ok", 1.0);
    assert_eq!(c.cmd("SET after 2"), "OK");
    assert_eq!(common::Resp::connect(b.addr).cmd("EXISTS after"), ":1");
    assert_eq!(common::Resp::connect(a.addr).cmd("EXISTS after"), ":0");

    // Users added by a reload apply to connected clients too: they must AUTH now.
    let users = "    users:\n      - { name: default, password: new-password-123 }\n";
    replace_file(&r.file, &redis_conf(b.addr, users));
    wait_reloads(r.admin, "ok", 2.0);
    assert!(c.cmd("GET after").starts_with("-NOAUTH"));
    assert_eq!(c.cmd("AUTH new-password-123"), "OK");
    assert_eq!(c.cmd("GET after"), "2");

    // A signed-in user stays signed in across a reload that keeps them as they were...
    let users = "    users:\n      - { name: default, password: new-password-123 }\n      - { name: app, password: app-pw-1, pools: [r] }\n";
    replace_file(&r.file, &redis_conf(b.addr, users));
    wait_reloads(r.admin, "ok", 3.0);
    let mut app = common::Resp::connect(addr(port));
    assert_eq!(app.cmd("AUTH app app-pw-1"), "OK");
    let users = "    users:\n      - { name: default, password: new-password-123 }\n      - { name: app, password: app-pw-1, pools: [r] }\n      - { name: ops, password: ops-pw-1 }\n";
    replace_file(&r.file, &redis_conf(b.addr, users));
    wait_reloads(r.admin, "ok", 4.0);
    assert_eq!(app.cmd("GET after"), "2");
    // ...but not once the listener's pool is taken from them...
    let users = "    users:\n      - { name: default, password: new-password-123 }\n      - { name: app, password: app-pw-1, pools: [other] }\n";
    replace_file(&r.file, &redis_conf(b.addr, users));
    wait_reloads(r.admin, "ok", 5.0);
    assert!(app.cmd("GET after").starts_with("-NOAUTH"));
    assert!(app.cmd("AUTH app app-pw-1").starts_with("-NOPERM"));
    // ...or their password is rotated.
    let users = "    users:\n      - { name: default, password: rotated-pw-456 }\n";
    replace_file(&r.file, &redis_conf(b.addr, users));
    wait_reloads(r.admin, "ok", 6.0);
    assert!(c.cmd("GET after").starts_with("-NOAUTH"));
    assert_eq!(c.cmd("AUTH rotated-pw-456"), "OK");
    assert_eq!(c.cmd("GET after"), "2");
    drop(r.proxy);
}
