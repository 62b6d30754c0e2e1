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
        let port = free_port();
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
            continue; // port taken meanwhile: try another
        }
        wait_port(addr, &mut child);
        return Proc { child, addr };
    }
    panic!("could not start memcached");
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
