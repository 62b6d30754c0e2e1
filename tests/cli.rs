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

/// Run `kvrouter ARGS` with `input` on stdin: (exit ok, stdout, stderr).
fn run_with_stdin(args: &[&std::ffi::OsStr], input: String) -> (bool, String, String) {
    use std::process::Stdio;
    let mut child = Command::new(kvrouter_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

/// `n` random printable keys (no spaces), one per line, from a fixed seed.
fn random_keys(n: usize, seed: u64) -> Vec<String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n)
        .map(|_| {
            let len = rng.usize(1..60);
            (0..len).map(|_| rng.u8(0x21..0x7f) as char).collect()
        })
        .collect()
}

#[test]
fn keymap_reads_100k_keys_from_stdin_in_one_pass() {
    let dir = TempDir::new();
    let servers: String = (0..12)
        .map(|i| format!("    - 10.0.0.{i}:11211:{} s{i}\n", 1 + i % 3))
        .collect();
    let conf = dir.write(
        "km.yml",
        &format!("alpha:\n  listen: 127.0.0.1:22121\n  servers:\n{servers}"),
    );
    let keys = random_keys(100_000, 1);
    let start = Instant::now();
    let (ok, out, err) = run_with_stdin(
        &[os("keymap"), os("-c"), conf.as_os_str(), os("-")],
        keys.join("\n") + "\n",
    );
    let took = start.elapsed();
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), keys.len());
    for (line, key) in lines.iter().zip(&keys) {
        assert!(line.starts_with(&format!("{key}\t")), "{line} for {key}");
    }
    // Measured: 0.21 s for a debug build, 0.03 s for a release build (one ring, built once).
    // Rebuilding the ring per key took 8.5 s for 50,000 keys.
    eprintln!("keymap: 100,000 stdin keys in {took:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    // The same placement as keys given as arguments.
    let some: Vec<&String> = keys.iter().step_by(997).collect();
    let args = Command::new(kvrouter_bin())
        .arg("keymap")
        .arg("-c")
        .arg(&conf)
        .arg("--")
        .args(&some)
        .output()
        .unwrap();
    let args = String::from_utf8(args.stdout).unwrap();
    let picked: Vec<&str> = lines.iter().step_by(997).copied().collect();
    assert_eq!(args.lines().collect::<Vec<_>>(), picked);
}

#[test]
fn keymap_without_keys_is_an_error() {
    let dir = TempDir::new();
    let conf = dir.write(
        "km.yml",
        "alpha:\n  listen: 127.0.0.1:22121\n  servers:\n    - 10.0.0.1:11211:1\n",
    );
    let out = Command::new(kvrouter_bin())
        .arg("keymap")
        .arg("-c")
        .arg(&conf)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("no keys given"), "{err}");
}

#[test]
fn keymap_diff_prints_a_line_per_given_key() {
    let dir = TempDir::new();
    let three = "alpha:\n  listen: 127.0.0.1:22121\n  servers:\n    - 10.0.0.1:11211:1 a\n    - 10.0.0.2:11211:1 b\n    - 10.0.0.3:11211:1 c\n";
    let four = format!("{three}    - 10.0.0.4:11211:1 d\n");
    let a = dir.write("a.yml", three);
    let b = dir.write("b.yml", &four);
    // Random keys: fnv1a's poor mixing puts `user:0`..`user:399` all outside the new
    // server's arcs.
    let keys = random_keys(400, 4);
    let out = Command::new(kvrouter_bin())
        .arg("keymap")
        .arg("--diff")
        .arg(&a)
        .arg(&b)
        .arg("--")
        .args(&keys)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let place = |conf: &std::path::Path| -> Vec<String> {
        let o = Command::new(kvrouter_bin())
            .arg("keymap")
            .arg("-c")
            .arg(conf)
            .arg("--")
            .args(&keys)
            .output()
            .unwrap();
        String::from_utf8(o.stdout)
            .unwrap()
            .lines()
            .map(|l| l.split('\t').nth(3).unwrap().to_string())
            .collect()
    };
    let (before, after) = (place(&a), place(&b));
    let mut moves = 0;
    assert_eq!(text.lines().count(), keys.len(), "{text}");
    for (i, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 8, "{line}");
        assert_eq!(f[0], keys[i]);
        assert_eq!((f[3], f[6]), (before[i].as_str(), after[i].as_str()));
        let moved = before[i] != after[i];
        assert_eq!(f[7], if moved { "moves" } else { "stays" }, "{line}");
        if moved {
            // Ketama: a key that moves goes to the new server.
            assert_eq!(f[5], "d", "{line}");
            moves += 1;
        }
    }
    assert!((50..150).contains(&moves), "{moves} of 400 moved");
    // The same from stdin.
    let (ok, stdin_out, err) = run_with_stdin(
        &[
            os("keymap"),
            os("--diff"),
            a.as_os_str(),
            b.as_os_str(),
            os("-"),
        ],
        keys.join("\n"),
    );
    assert!(ok, "{err}");
    assert_eq!(stdin_out, text);
}

#[test]
fn keymap_diff_sample_reports_progress() {
    let dir = TempDir::new();
    let a = dir.write(
        "a.yml",
        "alpha:\n  listen: 127.0.0.1:22121\n  servers:\n    - 10.0.0.1:11211:1\n    - 10.0.0.2:11211:1\n",
    );
    let out = Command::new(kvrouter_bin())
        .args(["keymap", "--sample", "2000000", "--diff"])
        .arg(&a)
        .arg(&a)
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("pool alpha: 1000000/2000000 keys compared"),
        "{err}"
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("\t0/2000000 keys move"), "{text}");
}

/// keymap of `keys` on every listener of `conf` (one block per listener).
fn keymap_all(conf: &std::path::Path, listeners: &[String], keys: &[String]) -> Vec<String> {
    listeners
        .iter()
        .map(|l| {
            let (ok, out, err) = run_with_stdin(
                &[
                    os("keymap"),
                    os("-c"),
                    conf.as_os_str(),
                    os("--listener"),
                    os(l),
                    os("-"),
                ],
                keys.join("\n"),
            );
            assert!(ok, "{l}: {err}");
            assert_eq!(out.lines().count(), keys.len());
            out
        })
        .collect()
}

/// `kvrouter convert` of `conf`, checked by `-t` and written next to it.
fn convert(dir: &TempDir, conf: &std::path::Path) -> std::path::PathBuf {
    let out = Command::new(kvrouter_bin())
        .arg("convert")
        .arg(conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let converted = dir.write("converted.yml", &text);
    let t = Command::new(kvrouter_bin())
        .arg("-t")
        .arg("-c")
        .arg(&converted)
        .output()
        .unwrap();
    assert!(
        t.status.success(),
        "{}\n{text}",
        String::from_utf8_lossy(&t.stderr)
    );
    assert!(String::from_utf8(t.stdout)
        .unwrap()
        .contains("kvrouter format"));
    converted
}

#[test]
fn convert_keeps_every_key_in_place_for_the_example_nutcracker_config() {
    let dir = TempDir::new();
    let conf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/nutcracker.yml");
    let converted = convert(&dir, &conf);
    let listeners: Vec<String> = [
        "127.0.0.1:22121",
        "127.0.0.1:22122",
        "/tmp/kvrouter-gamma.sock",
        "127.0.0.1:22124",
    ]
    .map(String::from)
    .to_vec();
    let keys = random_keys(2000, 2);
    assert_eq!(
        keymap_all(&conf, &listeners, &keys),
        keymap_all(&converted, &listeners, &keys)
    );
}

#[test]
fn convert_keeps_every_key_in_place_for_a_generated_config() {
    let dir = TempDir::new();
    let mut rng = fastrand::Rng::with_seed(16);
    let hashes = [
        "one_at_a_time",
        "md5",
        "crc16",
        "crc32",
        "crc32a",
        "fnv1_64",
        "fnv1a_64",
        "fnv1_32",
        "fnv1a_32",
        "hsieh",
        "murmur",
        "jenkins",
    ];
    let mut yaml = String::new();
    let mut listeners = Vec::new();
    for p in 0..8 {
        let port = 23000 + p;
        listeners.push(format!("127.0.0.1:{port}"));
        yaml.push_str(&format!(
            "pool{p}:\n  listen: 127.0.0.1:{port}\n  hash: {}\n  distribution: {}\n",
            hashes[rng.usize(..hashes.len())],
            if rng.bool() { "ketama" } else { "modula" },
        ));
        if rng.bool() {
            yaml.push_str("  hash_tag: \"{}\"\n");
        }
        if p % 2 == 1 {
            yaml.push_str("  redis: true\n  redis_db: 3\n  redis_auth: s3cret\n");
        }
        yaml.push_str(&format!(
            "  timeout: {}\n  auto_eject_hosts: {}\n  server_retry_timeout: 5000\n  server_failure_limit: 4\n  servers:\n",
            rng.u32(100..2000),
            rng.bool()
        ));
        for s in 0..rng.usize(1..9) {
            let named = if rng.bool() {
                format!(" n{s}")
            } else {
                String::new()
            };
            let port = if rng.bool() { 11211 } else { 11300 + s };
            yaml.push_str(&format!(
                "    - 10.1.{p}.{s}:{port}:{}{named}\n",
                rng.u32(1..5)
            ));
        }
    }
    let conf = dir.write("generated.yml", &yaml);
    let converted = convert(&dir, &conf);
    let keys = random_keys(2000, 3);
    let (before, after) = (
        keymap_all(&conf, &listeners, &keys),
        keymap_all(&converted, &listeners, &keys),
    );
    // Keys spread over several servers: the comparison can tell placements apart.
    let servers: std::collections::HashSet<&str> = before
        .iter()
        .flat_map(|b| b.lines().map(|l| l.rsplit('\t').next().unwrap()))
        .collect();
    assert!(servers.len() > 10, "{servers:?}");
    assert_eq!(before, after);
    // Secrets and settings survive: the converted file holds the auth and the db.
    let text = std::fs::read_to_string(&converted).unwrap();
    assert!(
        text.contains("redis_auth: s3cret") && text.contains("redis_db: 3"),
        "{text}"
    );
}

#[test]
fn default_config_paths_are_searched_in_order() {
    let dir = TempDir::new();
    let conf = dir.write(
        "nutcracker.yml",
        "alpha:\n  listen: 127.0.0.1:22121\n  servers:\n    - 10.0.0.1:11211:1\n",
    );
    let missing = dir.0.join("kvrouter.yml");
    let list = std::env::join_paths([&missing, &conf]).unwrap();
    let out = Command::new(kvrouter_bin())
        .arg("-t")
        .env("KVROUTER_TEST_DEFAULT_CONFIGS", &list)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(said.contains(conf.to_str().unwrap()), "{said}");
    // Neither exists: a clear failure naming both paths.
    let list = std::env::join_paths([&missing, &dir.0.join("nope.yml")]).unwrap();
    let out = Command::new(kvrouter_bin())
        .arg("-t")
        .env("KVROUTER_TEST_DEFAULT_CONFIGS", &list)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("no -c FILE given")
            && err.contains("kvrouter.yml")
            && err.contains("nope.yml"),
        "{err}"
    );
    // The real list, as a unit that starts the binary with no arguments gets it.
    let out = Command::new(kvrouter_bin())
        .arg("-t")
        .env_remove("KVROUTER_TEST_DEFAULT_CONFIGS")
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    if !std::path::Path::new("/etc/kvrouter/kvrouter.yml").exists()
        && !std::path::Path::new("/etc/nutcracker/nutcracker.yml").exists()
    {
        assert!(
            err.contains("/etc/kvrouter/kvrouter.yml, /etc/nutcracker/nutcracker.yml"),
            "{err}"
        );
    }
}

/// Every line of a log file, each parsed as a JSON object.
fn json_lines(log: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            for k in ["timestamp", "level", "target", "fields"] {
                assert!(v.get(k).is_some(), "no {k}: {l}");
            }
            assert!(v["fields"]["message"].is_string(), "{l}");
            v
        })
        .collect()
}

#[test]
fn json_logs_name_each_listener_and_a_reload_says_what_moves() {
    let dir = TempDir::new();
    let (mc, redis) = (free_port(), free_port());
    let dead = common::dead_port();
    let conf_text = |servers: usize| {
        let list: Vec<String> = (1..=servers)
            .map(|i| format!("\"127.0.0.{i}:{dead}:1 s{i}\""))
            .collect();
        format!(
            "pools:\n  cache: {{ protocol: memcache, servers: [{}] }}\n  store: {{ protocol: redis, servers: [\"127.0.0.1:{dead}:1\"] }}\nlisteners:\n  - {{ listen: 127.0.0.1:{mc}, protocol: memcache, route: cache }}\n  - {{ listen: 127.0.0.1:{redis}, protocol: redis, route: store }}\n",
            list.join(", ")
        )
    };
    let conf = dir.write("kv.yml", &conf_text(3));
    let log = dir.0.join("kv.log");
    let addr: SocketAddr = format!("127.0.0.1:{mc}").parse().unwrap();
    let (proc_, admin) = common::kvrouter_conf(
        &conf,
        addr,
        &["--log-format", "json", "-o", log.to_str().unwrap()],
    );
    let listening = common::wait_for(10, "startup lines", || {
        let lines: Vec<serde_json::Value> = json_lines(&log)
            .into_iter()
            .filter(|v| v["fields"]["listen"].is_string())
            .collect();
        (lines.len() == 2).then_some(lines)
    });
    assert_eq!(listening[0]["fields"]["listen"], format!("127.0.0.1:{mc}"));
    assert_eq!(listening[0]["fields"]["protocol"], "memcache");
    assert_eq!(
        listening[1]["fields"]["listen"],
        format!("127.0.0.1:{redis}")
    );
    assert_eq!(listening[1]["fields"]["protocol"], "redis");

    // build_info in /metrics.
    let samples = common::scrape(admin);
    assert_eq!(
        common::metric(
            &samples,
            "kvrouter_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    // /config says it is not a config file.
    let (_, config) = http_get(admin, "/config");
    assert!(config.contains("not a config file"), "{config}");

    // Remove one of three servers: about a third of the keys move, and the log says so.
    common::replace_file(&conf, &conf_text(2));
    unsafe { kill(proc_.child.id() as i32, 1) };
    let change = common::wait_for(10, "the reload's pool line", || {
        json_lines(&log)
            .into_iter()
            .find(|v| v["fields"]["pool"] == "cache")
    });
    let f = &change["fields"];
    let removed = f["removed"].as_str().unwrap();
    assert!(
        removed.contains(&format!("s3 127.0.0.3:{dead}")),
        "{change}"
    );
    assert_eq!(f["added"], "[]");
    let moved = f["moved_fraction"].as_f64().unwrap();
    assert!((0.2..0.45).contains(&moved), "{change}");
    assert!(
        json_lines(&log).iter().any(|v| v["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("config reloaded")),
        "the reload is logged"
    );
}

#[test]
fn log_format_from_the_config_switches_on_reload() {
    let dir = TempDir::new();
    let port = free_port();
    let dead = common::dead_port();
    let log = dir.0.join("kv.log");
    let text = |format: &str| {
        format!(
            "log: {{ file: {}, format: {format} }}\npools:\n  p: {{ protocol: memcache, servers: [\"127.0.0.1:{dead}:1\"] }}\nlisteners:\n  - {{ listen: 127.0.0.1:{port}, protocol: memcache, route: p }}\n",
            log.display()
        )
    };
    let conf = dir.write("kv.yml", &text("json"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (proc_, _admin) = common::kvrouter_conf(&conf, addr, &[]);
    common::wait_for(10, "a JSON startup line", || {
        json_lines(&log)
            .iter()
            .any(|v| v["fields"]["listen"].is_string())
            .then_some(())
    });
    let before = std::fs::read_to_string(&log).unwrap().lines().count();
    common::replace_file(&conf, &text("text"));
    unsafe { kill(proc_.child.id() as i32, 1) };
    let after = common::wait_for(10, "a text line after the reload", || {
        let all = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<String> = all.lines().skip(before).map(String::from).collect();
        lines
            .iter()
            .any(|l| l.contains("config reloaded"))
            .then_some(lines)
    });
    let reloaded = after
        .iter()
        .find(|l| l.contains("config reloaded"))
        .unwrap();
    assert!(
        serde_json::from_str::<serde_json::Value>(reloaded).is_err(),
        "text after the switch: {reloaded}"
    );
}
