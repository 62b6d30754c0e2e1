//! TLS with real peers: a client speaking TLS to kvrouter's listener, and kvrouter speaking TLS
//! to a real memcached started with `-Z` (TLS only), a TLS-only redis-server and a TLS-only
//! Redis Cluster, with certificates made for the test.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{free_port, kvrouter, wait_port, Proc, TempDir};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
};
use tokio_rustls::rustls;

struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn pki(dir: &TempDir) -> Pki {
    // Distinct names: OpenSSL (redis) takes a leaf whose issuer equals its subject for
    // self-signed, and rcgen's default name is the same for both.
    let named = |params: &mut CertificateParams, cn: &str| {
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    named(&mut ca_params, "kvrouter test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    named(&mut leaf, "localhost");
    let cert = leaf.signed_by(&key, &ca).unwrap();
    Pki {
        ca: dir.write("ca.pem", &ca.pem()),
        cert: dir.write("server.pem", &cert.pem()),
        key: dir.write("server.key", &key.serialize_pem()),
    }
}

fn tls_memcached(p: &Pki) -> Proc {
    let port = free_port();
    let mut cmd = Command::new("/usr/bin/memcached");
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
            "-Z",
            "-o",
        ])
        .arg(format!(
            "ssl_chain_cert={},ssl_key={}",
            p.cert.display(),
            p.key.display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("memcached");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_port(addr, &mut child);
    Proc { child, addr }
}

fn tls_client(
    ca: &PathBuf,
    addr: SocketAddr,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    use rustls_pki_types::pem::PemObject;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

#[test]
fn tls_from_clients_and_to_a_tls_only_memcached() {
    let dir = TempDir::new();
    let p = pki(&dir);
    let backend = tls_memcached(&p);
    let port = free_port();
    let yaml = format!(
        "pools:
  secure:
    protocol: memcache
    servers: [\"{}:1\"]
    tls: {{ ca: ca.pem, server_name: localhost }}
listeners:
  - listen: 127.0.0.1:{port}
    protocol: memcache
    route: secure
    tls: {{ cert: server.pem, key: server.key }}
",
        backend.addr
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // The config names its files relative to itself: write it into the same directory.
    let _proxy = kvrouter(&dir, &yaml, addr);
    let mut s = tls_client(&p.ca, addr);
    s.write_all(b"set t 0 0 6\r\nsecret\r\nget t\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut out = String::new();
    while !out.ends_with("END\r\n") {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "connection closed: {out}");
        out.push_str(&line);
    }
    assert_eq!(out, "STORED\r\nVALUE t 0 6\r\nsecret\r\nEND\r\n");

    // A plaintext client gets no memcached reply from a TLS listener.
    let mut plain = TcpStream::connect(addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    plain.write_all(b"get t\r\n").unwrap();
    let mut buf = [0u8; 64];
    let n = plain.read(&mut buf).unwrap_or(0);
    assert!(
        !buf[..n].starts_with(b"VALUE"),
        "plaintext must not be served"
    );
}

#[test]
fn bad_tls_files_are_refused_with_a_location() {
    let dir = TempDir::new();
    let conf = dir.write(
        "bad.yml",
        "pools:\n  p: { protocol: memcache, servers: [\"127.0.0.1:1:1\"] }\nlisteners:\n  - listen: 127.0.0.1:1\n    protocol: memcache\n    route: p\n    tls: { cert: nope.pem, key: nope.key }\n",
    );
    let out = Command::new(common::kvrouter_bin())
        .arg("-t")
        .arg("-c")
        .arg(&conf)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    // The location of the `cert` value that names the missing file.
    assert!(
        err.starts_with(&format!("{}:7:18:", conf.display())),
        "{err}"
    );
    assert!(err.contains("nope.pem"), "{err}");
}

#[test]
fn tls_to_a_tls_only_redis_server() {
    let dir = TempDir::new();
    let p = pki(&dir);
    let port = free_port();
    let mut child = Command::new("/usr/bin/redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--tls-auth-clients",
            "no",
        ])
        .arg("--tls-cert-file")
        .arg(&p.cert)
        .arg("--tls-key-file")
        .arg(&p.key)
        .arg("--tls-ca-cert-file")
        .arg(&p.ca)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server");
    let backend: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_port(backend, &mut child);
    let _backend = Proc {
        child,
        addr: backend,
    };
    let listen = free_port();
    let yaml = format!(
        "pools:
  secure:
    protocol: redis
    servers: [\"{backend}:1\"]
    tls: {{ ca: ca.pem, server_name: localhost }}
listeners:
  - {{ listen: 127.0.0.1:{listen}, protocol: redis, route: secure }}
"
    );
    let addr: SocketAddr = format!("127.0.0.1:{listen}").parse().unwrap();
    let _proxy = kvrouter(&dir, &yaml, addr);
    let mut c = common::Resp::connect(addr);
    assert_eq!(c.cmd("SET t secret"), "OK");
    assert_eq!(c.cmd("GET t"), "secret");
}

/// A TLS-only Redis Cluster (three primaries, `tls-cluster yes`): kvrouter fetches the slot map
/// and talks to every node over TLS with the pool's `tls`.
#[test]
fn tls_to_a_tls_only_redis_cluster() {
    let dir = TempDir::new();
    let p = pki(&dir);
    let tls_args = |cmd: &mut Command| {
        cmd.arg("--tls-cert-file")
            .arg(&p.cert)
            .arg("--tls-key-file")
            .arg(&p.key)
            .arg("--tls-ca-cert-file")
            .arg(&p.ca);
    };
    let nodes: Vec<Proc> = (0..3)
        .map(|_| {
            let (port, bus) = (free_port(), free_port());
            let mut cmd = Command::new("/usr/bin/redis-server");
            cmd.args(["--port", "0", "--tls-port", &port.to_string()])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus.to_string(),
                ])
                .args(["--tls-cluster", "yes", "--tls-auth-clients", "no"])
                .arg("--cluster-config-file")
                .arg(dir.0.join(format!("nodes-{port}.conf")))
                .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
                .arg("--dir")
                .arg(&dir.0);
            tls_args(&mut cmd);
            let mut child = cmd
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            wait_port(addr, &mut child);
            Proc { child, addr }
        })
        .collect();
    let cli = |args: &[String]| {
        let out = Command::new("/usr/bin/redis-cli")
            .args(["--tls", "--cacert"])
            .arg(&p.ca)
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
    };
    let mut create: Vec<String> = vec!["--cluster".into(), "create".into()];
    create.extend(nodes.iter().map(|n| n.addr.to_string()));
    create.extend([
        "--cluster-replicas".into(),
        "0".into(),
        "--cluster-yes".into(),
    ]);
    let out = cli(&create);
    assert!(out.contains("All 16384 slots covered"), "{out}");
    for n in &nodes {
        let port = n.addr.port().to_string();
        common::wait_for(20, "the cluster to be ok", || {
            let info = cli(&["-p".into(), port.clone(), "CLUSTER".into(), "INFO".into()]);
            info.contains("cluster_state:ok").then_some(())
        });
    }
    let listen = free_port();
    let yaml = format!(
        "pools:
  secure:
    protocol: redis
    timeout: 2s
    cluster: {{ seeds: [\"{}\"] }}
    tls: {{ ca: ca.pem, server_name: localhost }}
listeners:
  - {{ listen: 127.0.0.1:{listen}, protocol: redis, route: secure }}
",
        nodes[0].addr
    );
    let addr: SocketAddr = format!("127.0.0.1:{listen}").parse().unwrap();
    let _proxy = kvrouter(&dir, &yaml, addr);
    let mut c = common::Resp::connect(addr);
    for i in 0..300 {
        assert_eq!(c.cmd(&format!("SET tls:{i} v{i}")), "OK");
    }
    for i in 0..300 {
        assert_eq!(c.cmd(&format!("GET tls:{i}")), format!("v{i}"));
    }
    assert_eq!(c.cmd("MGET tls:1 tls:2 tls:3"), "[v1, v2, v3]");
    // Every node holds some of the keys: all three were reached over TLS.
    for n in &nodes {
        let port = n.addr.port().to_string();
        let size = cli(&["-p".into(), port, "DBSIZE".into()]);
        let size: u64 = size.trim().parse().unwrap_or(0);
        assert!(size > 30, "node {} holds {size} keys", n.addr);
    }
}
