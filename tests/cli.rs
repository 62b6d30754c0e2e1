//! The command line contract: -t, keymap, twemproxy's flags, the admin /healthz endpoint.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, kvrouter_bin, memcached, Mc, TempDir};

fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(addr, path, "")
}

fn http_get_auth(addr: SocketAddr, path: &str, token: &str) -> (u16, String) {
    request(addr, path, &format!("Authorization: Bearer {token}\r\n"))
}

/// One HTTP/1.1 GET with extra header lines; (status, body).
fn request(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.split(' ').nth(1).unwrap().parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}

fn wait_http(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "admin never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn test_conf_accepts_a_valid_file_with_a_summary() {
    let dir = TempDir::new();
    let conf = dir.write(
        "ok.yml",
        "alpha:\n  listen: 127.0.0.1:22121\n  hash: fnv1a_64\n  distribution: ketama\n  servers:\n    - 127.0.0.1:11211:1\n    - 127.0.0.1:11212:1\n",
    );
    let out = Command::new(kvrouter_bin())
        .arg("-t")
        .arg("-c")
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "one-line summary: {stdout}");
    assert!(stdout.contains("ok"), "{stdout}");
    // twemproxy's long form works too.
    let out = Command::new(kvrouter_bin())
        .args(["--test-conf", "--conf-file"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn test_conf_refuses_a_bad_file_with_file_line_col() {
    let dir = TempDir::new();
    let conf = dir.write(
        "bad.yml",
        "alpha:\n  listen: 127.0.0.1:22121\n  servers:\n    - 127.0.0.1:11211:1\n  bogus_key: 3\n",
    );
    let out = Command::new(kvrouter_bin())
        .arg("-t")
        .arg("-c")
        .arg(&conf)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let want = format!("{}:5:", conf.display());
    assert!(stderr.starts_with(&want), "expected {want}...: {stderr}");
    assert!(stderr.contains("bogus_key"), "{stderr}");
}

#[test]
fn keymap_prints_where_the_proxy_puts_each_key() {
    let backends: Vec<_> = (0..3).map(|_| memcached()).collect();
    let dir = TempDir::new();
    let port = free_port();
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("    - {}:1 mc{i}\n", b.addr))
        .collect();
    let yaml = format!("alpha:\n  listen: 127.0.0.1:{port}\n  servers:\n{servers}");
    let conf = dir.write("km.yml", &yaml);
    let keys: Vec<String> = (0..40).map(|i| format!("key{i}")).collect();
    let out = Command::new(kvrouter_bin())
        .arg("keymap")
        .arg("-c")
        .arg(&conf)
        .args(&keys)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let proxy = common::kvrouter(&dir, &yaml, addr);
    let mut c = Mc::connect(proxy.addr);
    for (line, key) in text.lines().zip(&keys) {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 4, "{line}");
        assert_eq!(f[0], key);
        assert_eq!(f[1], "alpha");
        assert_eq!(c.set(key, b"x"), "STORED");
        let idx: usize = f[2].trim_start_matches("mc").parse().unwrap();
        assert_eq!(f[3], backends[idx].addr.to_string());
        assert!(
            Mc::connect(backends[idx].addr).get(key).is_some(),
            "{key} on {}",
            f[2]
        );
    }
    assert_eq!(text.lines().count(), keys.len());
}

#[test]
fn keymap_diff_reports_the_fraction_of_keys_that_move() {
    let dir = TempDir::new();
    let three = "alpha:\n  listen: 127.0.0.1:22121\n  servers:\n    - 10.0.0.1:11211:1\n    - 10.0.0.2:11211:1\n    - 10.0.0.3:11211:1\n";
    let four = format!("{three}    - 10.0.0.4:11211:1\n");
    let a = dir.write("a.yml", three);
    let b = dir.write("b.yml", &four);
    let out = Command::new(kvrouter_bin())
        .args(["keymap", "--sample", "20000", "--diff"])
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let f: Vec<&str> = text.lines().next().unwrap().split('\t').collect();
    assert_eq!(f[0], "alpha");
    let frac: f64 = f[1].parse().unwrap();
    // Ketama: adding a 4th server moves about a quarter of the keys.
    assert!((0.15..0.35).contains(&frac), "{text}");
    let same = Command::new(kvrouter_bin())
        .args(["keymap", "--sample", "1000", "--diff"])
        .arg(&a)
        .arg(&a)
        .output()
        .unwrap();
    assert!(String::from_utf8(same.stdout)
        .unwrap()
        .contains("\t0.0000\t"));
}

#[test]
fn healthz_and_twemproxy_flags() {
    let b = memcached();
    let dir = TempDir::new();
    let port = free_port();
    let stats = free_port();
    let conf = dir.write(
        "h.yml",
        &format!(
            "alpha:\n  listen: 127.0.0.1:{port}\n  servers:\n    - {}:1\n",
            b.addr
        ),
    );
    let pid = dir.0.join("kv.pid");
    let log = dir.0.join("kv.log");
    // twemproxy's unit-file flags: -s/-a for the stats (admin) listener, -p, -o, -v, -i, -m.
    let child = Command::new(kvrouter_bin())
        .arg("--conf-file")
        .arg(&conf)
        .args([
            "-s",
            &stats.to_string(),
            "-a",
            "127.0.0.1",
            "-v",
            "6",
            "-i",
            "10000",
            "-m",
            "16384",
        ])
        .arg("-p")
        .arg(&pid)
        .arg("-o")
        .arg(&log)
        .spawn()
        .unwrap();
    let mut guard = common::Proc {
        child,
        addr: b.addr,
    };
    let admin: SocketAddr = format!("127.0.0.1:{stats}").parse().unwrap();
    wait_http(admin);
    let (code, body) = http_get(admin, "/healthz");
    assert_eq!(code, 200, "{body}");
    let written: u32 = std::fs::read_to_string(&pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(written, guard.child.id());
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("ignores"),
        "ignored flags are warned about: {logged}"
    );
    // SIGHUP reopens the log file: move it away, signal, and a new one appears.
    std::fs::rename(&log, dir.0.join("kv.log.1")).unwrap();
    unsafe { kill(guard.child.id() as i32, 1) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log.exists() {
        assert!(Instant::now() < deadline, "log reopened on SIGHUP");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = guard.child.kill();
}

#[test]
fn healthz_is_503_when_a_pool_has_no_server_in_service() {
    let dir = TempDir::new();
    let port = free_port();
    let admin = free_port();
    let dead = free_port();
    let conf = dir.write(
        "h.yml",
        &format!("alpha:\n  listen: 127.0.0.1:{port}\n  auto_eject_hosts: true\n  server_failure_limit: 1\n  servers:\n    - 127.0.0.1:{dead}:1\n"),
    );
    let child = Command::new(kvrouter_bin())
        .arg("-c")
        .arg(&conf)
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = child;
    common::wait_port(addr, &mut child);
    let _guard = common::Proc { child, addr };
    let mut c = Mc::connect(addr);
    c.send(b"get x\r\n");
    assert!(c.line().starts_with("SERVER_ERROR"));
    let (code, body) = http_get(format!("127.0.0.1:{admin}").parse().unwrap(), "/healthz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("alpha"), "{body}");
}

#[test]
fn daemonize_detaches_and_writes_the_pid_file() {
    let b = memcached();
    let dir = TempDir::new();
    let port = free_port();
    let conf = dir.write(
        "d.yml",
        &format!(
            "alpha:\n  listen: 127.0.0.1:{port}\n  servers:\n    - {}:1\n",
            b.addr
        ),
    );
    let pid = dir.0.join("d.pid");
    let admin = free_port();
    let status = Command::new(kvrouter_bin())
        .arg("-d")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(&pid)
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .status()
        .unwrap();
    assert!(status.success(), "the parent returns at once");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pid.exists() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(50));
    let daemon: i32 = std::fs::read_to_string(&pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut c = Mc::connect(addr);
    assert_eq!(c.set("d", b"1"), "STORED");
    drop(c);
    // Stop it by its own PID.
    unsafe { kill(daemon, 15) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(daemon) {
        assert!(Instant::now() < deadline, "daemon exits on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Running and not a zombie (the daemon's parent is init, which may reap it late).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

#[test]
fn admin_token_protects_everything_but_healthz() {
    let b = memcached();
    let dir = TempDir::new();
    let port = free_port();
    let admin = free_port();
    let token = "s3cret-token-0123456789";
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:{admin}, token: {token} }}\npools:\n  p: {{ protocol: memcache, servers: [\"{}:1\"] }}\nlisteners:\n  - {{ listen: 127.0.0.1:{port}, protocol: memcache, route: p }}\n",
        b.addr
    );
    let conf = dir.write("admin.yml", &yaml);
    let mut child = Command::new(kvrouter_bin())
        .arg("-c")
        .arg(&conf)
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    common::wait_port(addr, &mut child);
    let _guard = common::Proc { child, addr };
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    wait_http(admin);
    assert_eq!(
        http_get(admin, "/healthz").0,
        200,
        "healthz stays open for probes"
    );
    for path in ["/metrics", "/pools", "/config", "/hotkeys"] {
        assert_eq!(http_get(admin, path).0, 401, "{path} without a token");
        assert_eq!(
            http_get_auth(admin, path, "wrong-token-0123456789").0,
            401,
            "{path}"
        );
        let (code, body) = http_get_auth(admin, path, token);
        assert_eq!(code, 200, "{path}: {body}");
        assert!(!body.contains(token), "{path} never shows the token");
    }
    let (_, config) = http_get_auth(admin, "/config", token);
    assert!(
        config.contains("\"admin_token\": \"<redacted>\""),
        "{config}"
    );
}

/// `kvrouter -t` on a config whose listener `tls` names `cert`: (exit ok, stderr, seconds).
fn test_conf_with_cert(dir: &TempDir, cert: &str) -> (bool, String, f64) {
    let key = dir.write("key.pem", "not a key\n");
    let conf = dir.write(
        "tls.yml",
        &format!(
            "pools:\n  p: {{ protocol: memcache, servers: [\"127.0.0.1:1:1\"] }}\nlisteners:\n  - listen: 127.0.0.1:1\n    protocol: memcache\n    route: p\n    tls:\n      key: {}\n      cert: {cert}\n",
            key.display()
        ),
    );
    let start = Instant::now();
    let mut child = Command::new(kvrouter_bin())
        .arg("-t")
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: a kvrouter that reads /dev/zero would never exit on its own.
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kvrouter -t did not finish within 10 s on cert {cert}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let prefix = format!("{}:9:13: ", conf.display());
    assert!(err.starts_with(&prefix), "want {prefix}...: {err}");
    (status.success(), err, start.elapsed().as_secs_f64())
}

#[test]
fn test_conf_refuses_tls_files_that_are_not_small_regular_files() {
    let dir = TempDir::new();
    let (ok, err, secs) = test_conf_with_cert(&dir, "/dev/zero");
    assert!(
        !ok && err.contains("/dev/zero") && err.contains("not a regular file"),
        "{err}"
    );
    assert!(secs < 1.0, "/dev/zero took {secs:.2} s to refuse");

    let fifo = dir.0.join("cert.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let (ok, err, secs) = test_conf_with_cert(&dir, fifo.to_str().unwrap());
    assert!(!ok && err.contains("a FIFO"), "{err}");
    assert!(secs < 1.0, "a FIFO took {secs:.2} s to refuse");

    let big = dir.0.join("big.pem");
    std::fs::write(&big, vec![b'A'; 2 * 1024 * 1024]).unwrap();
    let (ok, err, _) = test_conf_with_cert(&dir, big.to_str().unwrap());
    assert!(!ok && err.contains("larger than 1048576"), "{err}");

    let (ok, err, _) = test_conf_with_cert(&dir, dir.0.to_str().unwrap());
    assert!(!ok && err.contains("a directory"), "{err}");

    // A small regular file gets as far as its contents.
    let junk = dir.write("junk.pem", "not a certificate\n");
    let (ok, err, _) = test_conf_with_cert(&dir, junk.to_str().unwrap());
    assert!(!ok && err.contains("no certificate"), "{err}");
}

/// Read until the peer closes; how long it took (None: still open after `limit`).
fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 1024];
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {} // e.g. a 408 before the close
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

#[test]
fn admin_connections_are_bounded_in_time_and_number() {
    use kvrouter::admin::{HEADER_READ_TIMEOUT, MAX_CONNECTIONS};
    let b = memcached();
    let dir = TempDir::new();
    let port = free_port();
    let conf = dir.write(
        "a.yml",
        &format!(
            "alpha:\n  listen: 127.0.0.1:{port}\n  servers:\n    - {}:1\n",
            b.addr
        ),
    );
    let (_proxy, admin) =
        common::kvrouter_conf(&conf, format!("127.0.0.1:{port}").parse().unwrap(), &[]);
    let partial = b"GET /metrics HTTP/1.1\r\nHost: x\r\n";

    // Half a request is closed once the header timeout has passed, not kept for long.
    let mut s = TcpStream::connect(admin).unwrap();
    s.write_all(partial).unwrap();
    let took = closed_within(&mut s, HEADER_READ_TIMEOUT + Duration::from_secs(3))
        .expect("a half request kept the admin connection open");
    assert!(
        took + Duration::from_millis(300) >= HEADER_READ_TIMEOUT,
        "closed after {took:?}"
    );

    // The cap: MAX_CONNECTIONS half requests hold every slot; one more is closed at once.
    let mut held: Vec<TcpStream> = (0..MAX_CONNECTIONS)
        .map(|_| {
            let mut s = TcpStream::connect(admin).unwrap();
            s.write_all(partial).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = TcpStream::connect(admin).unwrap();
    let _ = extra.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let took = closed_within(&mut extra, Duration::from_secs(1))
        .expect("a connection over the cap was served or kept waiting");
    assert!(took < HEADER_READ_TIMEOUT, "closed after {took:?}");
    // The held ones are still open (they were not the ones closed).
    held[0]
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert!(
        held[0].read(&mut buf).is_err(),
        "a held connection was closed"
    );

    // Once they are closed, /metrics answers again.
    held.clear();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = TcpStream::connect(admin).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        if out.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/metrics did not answer after the cap: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
