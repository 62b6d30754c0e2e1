//! Soak test (not part of the test run; `scripts/soak MINUTES`): mixed memcached and Redis load
//! through one kvrouter while backends are SIGKILLed and restarted and the config is reloaded
//! (file replaced by rename, and SIGHUP). A checker verifies that every reply belongs to its
//! request (values encode their keys) and that no acknowledged write to a server that stayed up
//! is lost, and prints the counts. Everything runs on 127.0.0.1 ephemeral ports and every
//! process is stopped by its own PID.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvrouter::routing::{DistributionKind, HashKind, Node, Placement};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        assert!(Instant::now() < deadline, "nothing listening on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Memcached,
    Redis,
}

fn start(kind: Kind, port: u16) -> Child {
    let mut cmd = match kind {
        Kind::Memcached => {
            let mut c = Command::new("/usr/bin/memcached");
            if unsafe { libc::geteuid() } == 0 {
                c.args(["-u", "root"]);
            }
            c.args([
                "-l",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "0",
                "-t",
                "1",
            ]);
            c
        }
        Kind::Redis => {
            let mut c = Command::new("/usr/bin/redis-server");
            c.args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ]);
            c
        }
    };
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start backend");
    wait_port(port);
    child
}

struct Backend {
    kind: Kind,
    port: u16,
    child: Mutex<Child>,
    /// When it was last killed (None: never).
    killed_at: Mutex<Option<Instant>>,
}

struct Counts {
    requests: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    misrouted: AtomicU64,
    lost: AtomicU64,
    kills: AtomicU64,
    reloads: AtomicU64,
}

fn config(
    mc: &[Arc<Backend>],
    rd: &[Arc<Backend>],
    mc_port: u16,
    rd_port: u16,
    gen: u64,
) -> String {
    let servers = |bs: &[Arc<Backend>], p: &str| {
        bs.iter()
            .enumerate()
            .map(|(i, b)| format!("\"127.0.0.1:{}:1 {p}{i}\"", b.port))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "# soak config, generation {gen}
pools:
  mc: {{ protocol: memcache, servers: [{}], timeout: 500ms, failure_limit: 2, retry_timeout: 1s }}
  rd: {{ protocol: redis, servers: [{}], timeout: 500ms, failure_limit: 2, retry_timeout: 1s }}
listeners:
  - {{ listen: 127.0.0.1:{mc_port}, protocol: memcache, route: mc }}
  - {{ listen: 127.0.0.1:{rd_port}, protocol: redis, route: rd }}
",
        servers(mc, "mc"),
        servers(rd, "rd")
    )
}

fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// One line, without `\r\n`.
fn line(r: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut v = Vec::new();
    r.read_until(b'\n', &mut v)?;
    if !v.ends_with(b"\r\n") {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    v.truncate(v.len() - 2);
    Ok(String::from_utf8_lossy(&v).into_owned())
}

enum Reply {
    Ok,
    Value(String),
    Miss,
    Error(#[allow(dead_code)] String), // the text, kept for debugging
}

fn mc_set(
    r: &mut BufReader<TcpStream>,
    w: &mut TcpStream,
    key: &str,
    val: &str,
) -> std::io::Result<Reply> {
    write!(w, "set {key} 0 0 {}\r\n{val}\r\n", val.len())?;
    let l = line(r)?;
    Ok(if l == "STORED" {
        Reply::Ok
    } else {
        Reply::Error(l)
    })
}

fn mc_get(r: &mut BufReader<TcpStream>, w: &mut TcpStream, key: &str) -> std::io::Result<Reply> {
    write!(w, "get {key}\r\n")?;
    let l = line(r)?;
    if l == "END" {
        return Ok(Reply::Miss);
    }
    let parts: Vec<&str> = l.split(' ').collect();
    if parts[0] != "VALUE" {
        return Ok(Reply::Error(l));
    }
    let n: usize = parts[3].parse().unwrap();
    let mut data = vec![0; n + 2];
    r.read_exact(&mut data)?;
    data.truncate(n);
    let end = line(r)?;
    assert_eq!(end, "END");
    if parts[1] != key {
        return Ok(Reply::Value(format!("WRONG-KEY {}", parts[1])));
    }
    Ok(Reply::Value(String::from_utf8_lossy(&data).into_owned()))
}

fn rd_cmd(
    r: &mut BufReader<TcpStream>,
    w: &mut TcpStream,
    args: &[&str],
) -> std::io::Result<Reply> {
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    w.write_all(req.as_bytes())?;
    let l = line(r)?;
    Ok(match l.as_bytes().first() {
        Some(b'+') => Reply::Ok,
        Some(b'-') => Reply::Error(l),
        Some(b'$') if l == "$-1" => Reply::Miss,
        Some(b'$') => {
            let n: usize = l[1..].parse().unwrap();
            let mut data = vec![0; n + 2];
            r.read_exact(&mut data)?;
            data.truncate(n);
            Reply::Value(String::from_utf8_lossy(&data).into_owned())
        }
        _ => Reply::Error(l),
    })
}

fn placement(prefix: &str) -> Placement {
    let nodes: Vec<Node> = (0..3)
        .map(|i| Node {
            name: format!("{prefix}{i}"),
            weight: 1,
        })
        .collect();
    Placement::new(
        DistributionKind::Ketama,
        HashKind::Fnv1a_64,
        None,
        &nodes,
        &[true; 3],
    )
}

fn client(
    t: usize,
    kind: Kind,
    port: u16,
    owners: Vec<Arc<Backend>>,
    stop: Arc<AtomicBool>,
    c: Arc<Counts>,
) {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let place = placement(if kind == Kind::Memcached { "mc" } else { "rd" });
    let mut rng = fastrand::Rng::with_seed(t as u64);
    // key -> (seq, when acknowledged)
    let mut acked: HashMap<String, (u64, Instant)> = HashMap::new();
    let mut seq = 0u64;
    'outer: while !stop.load(Relaxed) {
        let Ok(s) = TcpStream::connect(addr) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        while !stop.load(Relaxed) {
            let key = format!("soak{t}-{}", rng.u32(0..300));
            let owner = &owners[place.server_for(key.as_bytes()).unwrap()];
            c.requests.fetch_add(1, Relaxed);
            let write = rng.bool();
            let res = if write {
                seq += 1;
                let val = format!("{key}={seq}");
                let sent = Instant::now();
                let res = match kind {
                    Kind::Memcached => mc_set(&mut r, &mut w, &key, &val),
                    Kind::Redis => rd_cmd(&mut r, &mut w, &["SET", &key, &val]),
                };
                if let Ok(Reply::Ok) = res {
                    acked.insert(key.clone(), (seq, sent));
                }
                res
            } else {
                let asked = Instant::now();
                let res = match kind {
                    Kind::Memcached => mc_get(&mut r, &mut w, &key),
                    Kind::Redis => rd_cmd(&mut r, &mut w, &["GET", &key]),
                };
                if let Ok(reply) = &res {
                    // Lost only if the owner was not killed since the write was acknowledged.
                    let survived =
                        |since: Instant| owner.killed_at.lock().unwrap().is_none_or(|k| k < since);
                    match (reply, acked.get(&key)) {
                        (Reply::Value(v), _) if !v.starts_with(&format!("{key}=")) => {
                            c.misrouted.fetch_add(1, Relaxed);
                        }
                        (Reply::Value(v), Some(&(want, at))) => {
                            let got: u64 = v.rsplit('=').next().unwrap().parse().unwrap_or(0);
                            if got < want && survived(at) && at < asked {
                                c.lost.fetch_add(1, Relaxed);
                            }
                        }
                        (Reply::Miss, Some(&(_, at))) if survived(at) && at < asked => {
                            c.lost.fetch_add(1, Relaxed);
                        }
                        _ => {}
                    }
                }
                res
            };
            match res {
                Ok(Reply::Error(_)) => {
                    c.errors.fetch_add(1, Relaxed);
                }
                Ok(_) => {
                    c.ok.fetch_add(1, Relaxed);
                }
                Err(_) => {
                    c.errors.fetch_add(1, Relaxed);
                    continue 'outer; // reconnect
                }
            }
        }
    }
}

fn main() {
    let minutes: f64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2.0);
    let bin = std::env::args()
        .nth(2)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/release/kvrouter"));
    let dir = std::env::temp_dir().join(format!("kvrouter-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mk = |kind| {
        let port = free_port();
        Arc::new(Backend {
            kind,
            port,
            child: Mutex::new(start(kind, port)),
            killed_at: Mutex::new(None),
        })
    };
    let mc: Vec<Arc<Backend>> = (0..3).map(|_| mk(Kind::Memcached)).collect();
    let rd: Vec<Arc<Backend>> = (0..3).map(|_| mk(Kind::Redis)).collect();
    let (mc_port, rd_port, admin) = (free_port(), free_port(), free_port());
    let conf = dir.join("kvrouter.yml");
    std::fs::write(&conf, config(&mc, &rd, mc_port, rd_port, 0)).unwrap();
    let mut proxy = Command::new(&bin)
        .arg("-c")
        .arg(&conf)
        .args(["--admin", &format!("127.0.0.1:{admin}"), "-v", "3"])
        .spawn()
        .expect("start kvrouter");
    wait_port(mc_port);
    wait_port(rd_port);

    let counts = Arc::new(Counts {
        requests: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        misrouted: AtomicU64::new(0),
        lost: AtomicU64::new(0),
        kills: AtomicU64::new(0),
        reloads: AtomicU64::new(0),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for t in 0..4 {
        let (kind, port, owners) = if t % 2 == 0 {
            (Kind::Memcached, mc_port, mc.clone())
        } else {
            (Kind::Redis, rd_port, rd.clone())
        };
        let (stop, c) = (stop.clone(), counts.clone());
        threads.push(std::thread::spawn(move || {
            client(t, kind, port, owners, stop, c)
        }));
    }

    // Chaos: kill and restart a backend, reload the config, alternately by file and SIGHUP.
    let all: Vec<Arc<Backend>> = mc.iter().chain(&rd).cloned().collect();
    let end = Instant::now() + Duration::from_secs_f64(minutes * 60.0);
    let mut rng = fastrand::Rng::with_seed(42);
    let mut gen = 0;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_secs(3));
        let b = &all[rng.usize(..all.len())];
        {
            let mut child = b.child.lock().unwrap();
            *b.killed_at.lock().unwrap() = Some(Instant::now());
            let _ = child.kill(); // SIGKILL, by PID
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(500 + rng.u64(0..1000)));
            *child = start(b.kind, b.port);
        }
        counts.kills.fetch_add(1, Relaxed);
        gen += 1;
        if gen % 2 == 0 {
            replace_file(&conf, &config(&mc, &rd, mc_port, rd_port, gen));
        } else {
            unsafe { libc::kill(proxy.id() as i32, libc::SIGHUP) };
        }
        counts.reloads.fetch_add(1, Relaxed);
    }
    stop.store(true, Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let alive = proxy.try_wait().unwrap().is_none();
    unsafe { libc::kill(proxy.id() as i32, libc::SIGTERM) };
    let _ = proxy.wait();
    for b in &all {
        let mut c = b.child.lock().unwrap();
        let _ = c.kill();
        let _ = c.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
    let g = |a: &AtomicU64| a.load(Relaxed);
    println!(
        "soak {minutes} min: requests {} ok {} errors {} misrouted {} lost_acknowledged_writes {} backend_kills {} reloads {} kvrouter_survived {alive}",
        g(&counts.requests), g(&counts.ok), g(&counts.errors), g(&counts.misrouted), g(&counts.lost), g(&counts.kills), g(&counts.reloads)
    );
    if g(&counts.misrouted) > 0 || g(&counts.lost) > 0 || !alive {
        std::process::exit(1);
    }
}
