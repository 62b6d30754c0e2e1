//! Test harness: real memcached / nutcracker / kvrouter processes on ephemeral loopback ports.
//!
//! Every process is started by this harness and stopped by its own PID when its guard drops.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A loopback port that was free a moment ago, never the same one twice in one test process.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap();
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// Wait until something accepts TCP connections on `addr`.
pub fn wait_port(addr: SocketAddr, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("process exited before listening on {addr}: {status}");
        }
        assert!(Instant::now() < deadline, "nothing listening on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kvrouter-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (by its PID) when dropped.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(bin: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"] {
        let p = PathBuf::from(dir).join(bin);
        if p.exists() {
            return p;
        }
    }
    panic!("{bin} is not installed (scripts/test installs it: apt-get install memcached nutcracker redis-server)");
}

/// A real memcached on an ephemeral loopback port (`-I 2m` so values near 1 MiB fit).
pub fn memcached() -> Proc {
    for _ in 0..20 {
        if let Some(p) = try_memcached(free_port()) {
            return p;
        }
    }
    panic!("could not start memcached");
}

/// A real memcached on `port` (e.g. restarting one that was killed). Panics when it cannot.
pub fn memcached_at(port: u16) -> Proc {
    for _ in 0..50 {
        if let Some(p) = try_memcached(port) {
            return p;
        }
        std::thread::sleep(Duration::from_millis(50)); // the old socket may linger briefly
    }
    panic!("could not start memcached on port {port}");
}

fn try_memcached(port: u16) -> Option<Proc> {
    let mut cmd = Command::new(which("memcached"));
    // memcached refuses to start as root unless told which user to run as.
    if unsafe { libc::geteuid() } == 0 {
        cmd.args(["-u", "root"]);
    }
    let mut child = cmd
        .args([
            "-l",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "0",
            "-t",
            "1",
            "-m",
            "64",
            "-I",
            "2m",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start memcached");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    std::thread::sleep(Duration::from_millis(30));
    if let Ok(Some(_)) = child.try_wait() {
        return None; // port taken: try again
    }
    wait_port(addr, &mut child);
    Some(Proc { child, addr })
}

/// Send a signal to a process we started (SIGSTOP/SIGCONT/SIGKILL...), by its PID.
/// Send `sig` to a server of the test. SIGSTOP returns once every thread of it is stopped (a
/// loaded machine can take a moment), so a request sent next is never answered by it.
pub fn signal(p: &Proc, sig: i32) {
    let pid = p.child.id();
    let rc = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
    if sig != libc::SIGSTOP {
        return;
    }
    let stopped = || {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return true;
        };
        tasks.flatten().all(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            // The state follows the command name in parentheses.
            stat.rsplit(") ")
                .next()
                .is_some_and(|rest| rest.starts_with('T'))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while !stopped() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// nutcracker (twemproxy 0.5.0) with `yaml`; `addr` is the listen address written in it.
pub fn nutcracker(dir: &TempDir, yaml: &str, addr: SocketAddr) -> Proc {
    let conf = dir.write(&format!("nutcracker-{}.yml", addr.port()), yaml);
    let stats = free_port();
    let mut child = Command::new(which("nutcracker"))
        .arg("-c")
        .arg(&conf)
        .args(["-s", &stats.to_string(), "-a", "127.0.0.1", "-o"])
        .arg(dir.0.join(format!("nutcracker-{}.log", addr.port())))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nutcracker");
    wait_port(addr, &mut child);
    Proc { child, addr }
}

/// The kvrouter binary built by cargo for this test run.
pub fn kvrouter_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kvrouter"))
}

/// kvrouter with config text `yaml`; `addr` is a listen address written in it.
pub fn kvrouter(dir: &TempDir, yaml: &str, addr: SocketAddr) -> Proc {
    let conf = dir.write(&format!("kvrouter-{}.yml", addr.port()), yaml);
    let admin = free_port();
    let mut child = Command::new(kvrouter_bin())
        .arg("-c")
        .arg(&conf)
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start kvrouter");
    wait_port(addr, &mut child);
    Proc { child, addr }
}

/// A blocking memcached ASCII client for tests.
pub struct Mc {
    pub r: BufReader<TcpStream>,
    pub w: TcpStream,
}

impl Mc {
    pub fn connect(addr: SocketAddr) -> Mc {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Mc {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
    }

    /// One `\r\n`-terminated line, without the terminator.
    pub fn line(&mut self) -> String {
        let mut v = Vec::new();
        self.r.read_until(b'\n', &mut v).unwrap();
        assert!(
            v.ends_with(b"\r\n"),
            "bad line {:?}",
            String::from_utf8_lossy(&v)
        );
        v.truncate(v.len() - 2);
        String::from_utf8_lossy(&v).into_owned()
    }

    /// Read a retrieval reply: (key, flags, value) items until END (or an error line, returned
    /// as Err).
    pub fn values(&mut self) -> Result<Vec<(String, u32, Vec<u8>)>, String> {
        let mut out = Vec::new();
        loop {
            let l = self.line();
            if l == "END" {
                return Ok(out);
            }
            let parts: Vec<&str> = l.split(' ').collect();
            if parts[0] != "VALUE" {
                return Err(l);
            }
            let n: usize = parts[3].parse().unwrap();
            let mut data = vec![0; n + 2];
            self.r.read_exact(&mut data).unwrap();
            assert_eq!(&data[n..], b"\r\n");
            data.truncate(n);
            out.push((parts[1].to_string(), parts[2].parse().unwrap(), data));
        }
    }

    pub fn set(&mut self, key: &str, value: &[u8]) -> String {
        let mut req = format!("set {key} 0 0 {}\r\n", value.len()).into_bytes();
        req.extend_from_slice(value);
        req.extend_from_slice(b"\r\n");
        self.send(&req);
        self.line()
    }

    pub fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.send(format!("get {key}\r\n").as_bytes());
        let mut v = self.values().unwrap();
        assert!(v.len() <= 1);
        v.pop().map(|(_, _, d)| d)
    }
}

/// A real redis-server on an ephemeral loopback port (no persistence).
pub fn redis_server() -> Proc {
    redis_server_with(&[])
}

/// redis-server with extra arguments (e.g. `["--requirepass", "pw"]`).
pub fn redis_server_with(extra: &[&str]) -> Proc {
    for _ in 0..20 {
        let port = free_port();
        let mut child = Command::new(which("redis-server"))
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        std::thread::sleep(Duration::from_millis(30));
        if let Ok(Some(_)) = child.try_wait() {
            continue; // port taken meanwhile: try another
        }
        wait_port(addr, &mut child);
        return Proc { child, addr };
    }
    panic!("could not start redis-server");
}

/// kvrouter on the config file `conf` (written by the caller, so tests can replace it), with
/// extra command line arguments; returns the process (its `addr` is `addr`) and the admin
/// address.
pub fn kvrouter_conf(
    conf: &std::path::Path,
    addr: SocketAddr,
    extra: &[&str],
) -> (Proc, SocketAddr) {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut child = Command::new(kvrouter_bin())
        .arg("-c")
        .arg(conf)
        .args(["--admin", &admin.to_string()])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start kvrouter");
    wait_port(addr, &mut child);
    wait_port(admin, &mut child);
    (Proc { child, addr }, admin)
}

/// kvrouter with config text `yaml` and its admin address.
pub fn kvrouter_admin(dir: &TempDir, yaml: &str, addr: SocketAddr) -> (Proc, SocketAddr) {
    let conf = dir.write(&format!("kvrouter-{}.yml", addr.port()), yaml);
    kvrouter_conf(&conf, addr, &[])
}

/// Replace a file the way editors and Kubernetes do: write a new file, rename it over.
pub fn replace_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp-new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A plain HTTP/1.1 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return (status, body.to_string());
    }
    // Chunked (Prometheus' larger answers): size line, data, CRLF, until a size of 0.
    let (mut rest, mut out) = (body, String::new());
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    (status, out)
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parse Prometheus' text exposition format (enough of it for kvrouter's output).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), Vec::new()),
            Some((n, rest)) => {
                let rest = rest.strip_suffix('}').expect("closing brace");
                let mut labels = Vec::new();
                let mut s = rest;
                while !s.is_empty() {
                    let (k, v) = s.split_once("=\"").expect("label");
                    let end = v.find('"').expect("label value end");
                    labels.push((k.to_string(), v[..end].to_string()));
                    s = v[end + 1..].trim_start_matches(',');
                }
                (n.to_string(), labels)
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The sum of the samples named `name` whose labels include `labels`; None when none match.
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for s in samples.iter().filter(|s| s.name == name) {
        if labels
            .iter()
            .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        {
            *found.get_or_insert(0.0) += s.value;
        }
    }
    found
}

/// Scrape `/metrics` from an admin address.
pub fn scrape(admin: SocketAddr) -> Vec<Sample> {
    let (status, body) = http_get(admin, "/metrics");
    assert_eq!(status, 200, "{body}");
    parse_metrics(&body)
}

/// Poll until `f` returns Some, or panic with `what` after `secs`.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A memcached `stats` value read over an open connection.
pub fn mc_stat(c: &mut Mc, name: &str) -> u64 {
    c.send(b"stats\r\n");
    let mut found = None;
    loop {
        let l = c.line();
        if l == "END" {
            break;
        }
        let parts: Vec<&str> = l.split(' ').collect();
        if parts.len() == 3 && parts[1] == name {
            found = Some(parts[2].parse().unwrap());
        }
    }
    found.unwrap_or_else(|| panic!("no stat {name}"))
}

/// A port nothing listens on (bound, then released).
pub fn dead_port() -> u16 {
    free_port()
}

/// A blocking RESP client for tests: commands out, `Frame`s back.
pub struct Resp {
    pub s: TcpStream,
    buf: bytes::BytesMut,
}

impl Resp {
    pub fn connect(addr: SocketAddr) -> Resp {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Resp {
            s,
            buf: bytes::BytesMut::new(),
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// Queue one command (not flushed separately: TCP_NODELAY, one write per command).
    pub fn send<A: AsRef<[u8]>>(&mut self, args: &[A]) {
        let req = kvrouter::protocol::resp::encode_request(args);
        self.s.write_all(&req.raw).unwrap();
    }

    /// The next reply's raw bytes; None when the connection is closed first.
    pub fn try_read_raw(&mut self) -> Option<bytes::Bytes> {
        loop {
            if let Some(n) = kvrouter::protocol::resp::scan_reply(&self.buf).unwrap() {
                return Some(self.buf.split_to(n).freeze());
            }
            let mut chunk = [0u8; 65536];
            let n = self.s.read(&mut chunk).unwrap();
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub fn read(&mut self) -> Frame {
        let raw = self
            .try_read_raw()
            .expect("connection closed before a reply");
        kvrouter::protocol::resp::parse_frame(&raw).unwrap().0
    }

    pub fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Frame {
        self.send(args);
        self.read()
    }

    /// `call` on a space-separated command line, answered as text (see `text`).
    pub fn cmd(&mut self, line: &str) -> String {
        let args: Vec<&str> = line.split(' ').collect();
        text(&self.call(&args))
    }

    /// True when the server closed the connection (after any unread replies).
    pub fn closed(&mut self) -> bool {
        self.try_read_raw().is_none()
    }
}

pub use kvrouter::protocol::resp::Frame;

/// A reply as compact text: `OK`, `-ERR ...`, `:5`, the bulk's text, `(nil)`, `[a, b]`.
pub fn text(f: &Frame) -> String {
    match f {
        Frame::Simple(b) | Frame::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
        Frame::Error(e) => format!("-{}", String::from_utf8_lossy(e)),
        Frame::Integer(i) => format!(":{i}"),
        Frame::Bulk(None) | Frame::Array(None) | Frame::Null => "(nil)".into(),
        Frame::Array(Some(v)) => format!("[{}]", v.iter().map(text).collect::<Vec<_>>().join(", ")),
        other => format!("{other:?}"),
    }
}

/// A real Redis Cluster on loopback: `nodes[i]` are redis-server processes with
/// `--cluster-enabled yes`, joined by `redis-cli --cluster create --cluster-replicas 1`. Each
/// node's cluster bus port is chosen free too (`--cluster-port`). A short node timeout
/// (`node_timeout_ms`) makes failovers happen within seconds.
pub struct RedisCluster {
    pub nodes: Vec<Proc>,
    pub dir: TempDir,
}

fn cluster_node(dir: &TempDir, node_timeout_ms: u64) -> Proc {
    for _ in 0..20 {
        let port = free_port();
        let bus = free_port();
        let mut child = Command::new(which("redis-server"))
            .args([
                "--port",
                &port.to_string(),
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus.to_string(),
                "--cluster-config-file",
                &dir.0.join(format!("nodes-{port}.conf")).to_string_lossy(),
                "--cluster-node-timeout",
                &node_timeout_ms.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--bind",
                "127.0.0.1",
                "--dir",
                &dir.0.to_string_lossy(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        std::thread::sleep(Duration::from_millis(30));
        if let Ok(Some(_)) = child.try_wait() {
            continue;
        }
        wait_port(addr, &mut child);
        return Proc { child, addr };
    }
    panic!("could not start a cluster node");
}

/// `CLUSTER SLOTS` of the node at `addr` as (first, last, [primary, replicas...]).
pub fn cluster_slots(addr: SocketAddr) -> Vec<(u16, u16, Vec<SocketAddr>)> {
    let mut c = Resp::connect(addr);
    let Frame::Array(Some(items)) = c.call(&["CLUSTER", "SLOTS"]) else {
        panic!("CLUSTER SLOTS");
    };
    items
        .iter()
        .map(|it| {
            let Frame::Array(Some(v)) = it else { panic!() };
            let (Frame::Integer(a), Frame::Integer(b)) = (&v[0], &v[1]) else {
                panic!()
            };
            let nodes = v[2..]
                .iter()
                .map(|n| {
                    let Frame::Array(Some(n)) = n else { panic!() };
                    let (Frame::Bulk(Some(h)), Frame::Integer(p)) = (&n[0], &n[1]) else {
                        panic!()
                    };
                    format!("{}:{p}", String::from_utf8_lossy(h))
                        .parse()
                        .unwrap()
                })
                .collect();
            (*a as u16, *b as u16, nodes)
        })
        .collect()
}

impl RedisCluster {
    /// Six nodes, three primaries with one replica each; returns once every node reports
    /// `cluster_state:ok` and sees every primary with its replica.
    pub fn start(node_timeout_ms: u64) -> RedisCluster {
        let dir = TempDir::new();
        let nodes: Vec<Proc> = (0..6)
            .map(|_| cluster_node(&dir, node_timeout_ms))
            .collect();
        let out = Command::new(which("redis-cli"))
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| n.addr.to_string()))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes, dir };
        wait_for(30, "cluster_state:ok on every node", || {
            cluster
                .nodes
                .iter()
                .all(|n| cluster.healthy(n.addr))
                .then_some(())
        });
        cluster
    }

    fn healthy(&self, addr: SocketAddr) -> bool {
        let mut c = Resp::connect(addr);
        if !c.cmd("CLUSTER INFO").contains("cluster_state:ok") {
            return false;
        }
        let slots = cluster_slots(addr);
        slots
            .iter()
            .map(|(a, b, _)| (b - a) as usize + 1)
            .sum::<usize>()
            == 16384
            && slots.iter().all(|(_, _, n)| n.len() == 2)
    }

    pub fn seed(&self) -> SocketAddr {
        self.nodes[0].addr
    }

    /// The node (by index in `nodes`) at `addr`.
    pub fn index_of(&self, addr: SocketAddr) -> usize {
        self.nodes.iter().position(|n| n.addr == addr).unwrap()
    }

    /// (primary, replicas) of `slot` as `from` sees it.
    pub fn owner(&self, from: SocketAddr, slot: u16) -> (SocketAddr, Vec<SocketAddr>) {
        let slots = cluster_slots(from);
        let (_, _, n) = slots
            .iter()
            .find(|(a, b, _)| (*a..=*b).contains(&slot))
            .unwrap_or_else(|| panic!("no owner for slot {slot}"));
        (n[0], n[1..].to_vec())
    }

    /// The node id of the node at `addr`.
    pub fn node_id(&self, addr: SocketAddr) -> String {
        let mut c = Resp::connect(addr);
        c.cmd("CLUSTER MYID")
    }
}

/// A process's resident memory in KiB (`VmRSS` of /proc/PID/status).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}
