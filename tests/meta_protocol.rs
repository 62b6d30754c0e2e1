//! The memcached meta protocol (mg/ms/md/ma/mn/me) through kvrouter, compared byte for byte
//! with the same commands sent to one memcached directly; quiet mode and opaques across a
//! pipeline; base64 keys; leases with 50 concurrent clients; meta commands through a gutter.

mod common;

use std::io::{BufRead, Read};
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};

use common::{free_port, kvrouter, memcached, Mc, Proc, TempDir};

struct Setup {
    _dir: TempDir,
    backends: Vec<Proc>,
    proxy: Proc,
}

/// kvrouter (twemproxy format) over three memcached.
fn setup() -> Setup {
    let dir = TempDir::new();
    let backends: Vec<Proc> = (0..3).map(|_| memcached()).collect();
    let port = free_port();
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("    - {}:1 mc{i}\n", b.addr))
        .collect();
    let yaml = format!(
        "alpha:\n  listen: 127.0.0.1:{port}\n  hash: fnv1a_64\n  distribution: ketama\n  timeout: 2000\n  servers:\n{servers}"
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let proxy = kvrouter(&dir, &yaml, addr);
    Setup {
        _dir: dir,
        backends,
        proxy,
    }
}

/// Read meta replies (with their `VA` data blocks) up to and including `MN\r\n`.
fn read_to_mn(c: &mut Mc) -> Vec<u8> {
    read_mns(c, 1)
}

/// Read meta replies up to and including the `n`th `MN\r\n`.
fn read_mns(c: &mut Mc, mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut line = Vec::new();
        c.r.read_until(b'\n', &mut line).unwrap();
        assert!(line.ends_with(b"\r\n"), "bad line {:?}", show(&line));
        out.extend_from_slice(&line);
        if line == b"MN\r\n" {
            n -= 1;
            if n == 0 {
                return out;
            }
        }
        if let Some(rest) = line.strip_prefix(b"VA ") {
            let size: usize = std::str::from_utf8(rest)
                .unwrap()
                .split([' ', '\r'])
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let mut data = vec![0; size + 2];
            c.r.read_exact(&mut data).unwrap();
            out.extend_from_slice(&data);
        }
    }
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Replace what differs per server and over time: CAS values (`c<n>`, `cas=`), remaining TTL
/// (`t<n>` except `t-1`, `exp=`), last access (`l<n>`, `la=`). Data blocks are kept as they are.
fn normalise(reply: &[u8]) -> String {
    let mut out = String::new();
    let mut pos = 0;
    while pos < reply.len() {
        let nl = reply[pos..].iter().position(|&b| b == b'\n').unwrap() + pos;
        let line = std::str::from_utf8(&reply[pos..nl - 1]).unwrap();
        pos = nl + 1;
        let mut toks = line.split(' ');
        let code = toks.next().unwrap();
        let mut norm = vec![code.to_string()];
        for (i, t) in toks.enumerate() {
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            let n = if code == "ME" {
                match t.split_once('=') {
                    Some((k @ ("exp" | "la" | "cas"), v)) if v != "-1" => format!("{k}=*"),
                    _ => t.to_string(),
                }
            } else if code == "VA" && i == 0 {
                t.to_string() // the size
            } else if t.len() > 1 && matches!(&t[..1], "c" | "t" | "l") && digits(&t[1..]) {
                format!("{}*", &t[..1])
            } else {
                t.to_string()
            };
            norm.push(n);
        }
        out.push_str(&norm.join(" "));
        out.push('\n');
        if let Some(size) = line.strip_prefix("VA ") {
            let size: usize = size.split(' ').next().unwrap().parse().unwrap();
            out.push_str(&format!("<{}>\n", show(&reply[pos..pos + size])));
            pos += size + 2;
        }
    }
    out
}

/// The last CAS value (`c<n>` flag) in a reply.
fn last_cas(reply: &[u8]) -> Option<String> {
    show(reply)
        .rsplit(['\r', '\n', ' '])
        .find(|t| t.len() > 1 && t.starts_with('c') && t[1..].bytes().all(|b| b.is_ascii_digit()))
        .map(|t| t[1..].to_string())
}

/// Send each batch (followed by `mn`) to `addr` and collect the raw replies. `{cas}` in a batch
/// is replaced by the last CAS value this connection was given.
fn run_script(addr: SocketAddr, script: &[&str]) -> Vec<Vec<u8>> {
    let mut c = Mc::connect(addr);
    let mut cas = "0".to_string();
    script
        .iter()
        .map(|batch| {
            let batch = batch.replace("{cas}", &cas);
            c.send(batch.as_bytes());
            c.send(b"mn\r\n");
            let mns = batch.split("\r\n").filter(|l| l.starts_with("mn")).count();
            let reply = read_mns(&mut c, mns + 1);
            if let Some(v) = last_cas(&reply) {
                cas = v;
            }
            reply
        })
        .collect()
}

/// Every meta command and flag family, each batch compared after normalising.
const SCRIPT: &[&str] = &[
    // ms: plain, flags, returned tokens, modes, base64 keys, invalidation, CAS, errors.
    "ms m1 5\r\nhello\r\n",
    "ms m2 5 T0 F7 c k O1\r\nworld\r\n",
    "ms m2 5 C{cas} c\r\nWORLD\r\n",
    "ms bTQ= 3 b k c\r\nb64\r\n",
    "ms m5 1 ME\r\nx\r\nms m5 1 ME\r\ny\r\n",
    "ms m6 1 MR\r\nx\r\n",
    "ms m1 3 MA\r\nabc\r\nms m1 3 MP\r\nxyz\r\n",
    "ms m11 1 MS T100\r\nz\r\n",
    "ms m1 1 MX\r\nz\r\n",
    "ms m2 3 C1 c\r\nold\r\n",
    "ms m8 2 C999999\r\nhi\r\n",
    "ms m9 2 v v\r\nhi\r\n",
    "ms m9 2 zz\r\nhi\r\n",
    "ms m10 0 F4294967295\r\n\r\n",
    "ms m12 2 T-1\r\nhi\r\nmg m12 v\r\n",
    "ms !!!! 2 b\r\nhi\r\n",
    "ms m13 2 q\r\nhi\r\nms m13 2 q ME\r\nhi\r\nms m13 2 q MR O5\r\nhi\r\n",
    "ms m14 2 I\r\nhi\r\n",
    // mg: every return flag, hits, misses, TTL update, base64, quiet, errors.
    "mg m1 v\r\nmg m1\r\nmg m1 k\r\n",
    "mg m1 s v f t c k O42 h l\r\n",
    "mg m1 u v h\r\nmg m1 h l\r\n",
    "mg m2 v c f t s\r\n",
    "mg m10 v f s\r\n",
    "mg missing v\r\nmg missing\r\nmg missing k O3 v\r\n",
    "mg bTQ= b v k s\r\n",
    "mg m11 T30 t v\r\nmg m11 t\r\n",
    "mg m1 q v\r\nmg nokey q v O7\r\nmg m1 q k O8\r\nmg nokey q\r\n",
    "mg m1 zz\r\nmg m1 v v\r\nmg\r\n",
    "mg m1 E5 v\r\n",
    // Leases: vivify on miss, win/lost flags, stale after invalidation, recache.
    "mg lease1 s c v N30 t\r\nmg lease1 s c v N30 t\r\nmg lease1 v\r\n",
    "ms lease1 3 T60\r\nnew\r\nmg lease1 v c N30\r\n",
    "md lease1 I T30\r\nmg lease1 v c t\r\nmg lease1 v c\r\n",
    "ms lease1 5 C{cas} T60\r\nfresh\r\nmg lease1 v\r\n",
    "mg lease2 v R30 t\r\nms lease2 2 T10\r\nhi\r\nmg lease2 v R30 t\r\nmg lease2 v R30 t\r\n",
    "ms lease3 2 T60\r\nv1\r\nmg lease3 c\r\nms lease3 2 I C1\r\nv0\r\nmg lease3 v c\r\n",
    // md: hit, miss, quiet, CAS, key return, opaque, base64, invalidate with TTL, errors.
    "md m5\r\nmd m5\r\n",
    "md m6 q\r\nmd m10 q O9\r\n",
    "md m2 C1\r\nmd m2 k O9\r\n",
    "md bTQ= b k\r\nmg bTQ= b v\r\n",
    "md m1 I T5\r\nmg m1 v t\r\n",
    "md m1 zz\r\nmd\r\n",
    // ma: miss, vivify with initial value, delta, modes, TTL, CAS, quiet, base64, errors.
    "ma c1\r\nma c1 N0 J10 v\r\nma c1 v\r\n",
    "ma c1 D5 v t c\r\nma c1 MD D100 v\r\nma c1 M- v\r\nma c1 M+ D7 v\r\n",
    "ma c1 q\r\nma c1 v q\r\nma c2 N0 q\r\nma c3 q\r\nmg c1 v\r\n",
    "ma c1 T100 t v c\r\nma c1 C1 v\r\n",
    "ma c1 C{cas} v c\r\n",
    "ma Yzk= b N0 J3 v\r\nma Yzk= b v k\r\n",
    "ma m11 v\r\nma c1 MX\r\nma c1 Dx\r\nma\r\n",
    // me: hit, miss, base64.
    "me m11\r\nme nokey\r\nme bTQ= b\r\nme Yzk=\r\n",
    // mn inside a batch, and extra tokens after it.
    "mn\r\nmg m11 v\r\nmn extra\r\nmg m11 k\r\n",
];

#[test]
fn every_meta_command_matches_memcached_byte_for_byte() {
    let s = setup();
    let direct = memcached();
    let through = run_script(s.proxy.addr, SCRIPT);
    let plain = run_script(direct.addr, SCRIPT);
    let mut lines = 0;
    for ((batch, a), b) in SCRIPT.iter().zip(&through).zip(&plain) {
        assert_eq!(
            normalise(a),
            normalise(b),
            "batch {batch:?}\nthrough kvrouter: {:?}\ndirect:           {:?}",
            show(a),
            show(b)
        );
        lines += a.split(|&c| c == b'\n').count();
        if std::env::var_os("META_DUMP").is_some() {
            eprintln!("> {batch:?}\n{}", normalise(a));
        }
    }
    // Not a hollow comparison: the script produced hits, values, errors, and lease flags.
    let all: String = through.iter().map(|r| show(r)).collect();
    for needle in [
        "VA 5",
        "HD",
        "EN",
        "NS",
        "EX",
        "NF",
        " W",
        " Z",
        " X",
        "CLIENT_ERROR",
        "ME m11",
    ] {
        assert!(all.contains(needle), "{needle:?} never seen:\n{all}");
    }
    // The keys were spread over the servers.
    let used = s
        .backends
        .iter()
        .filter(|b| {
            let mut c = Mc::connect(b.addr);
            c.send(b"mg m11 v\r\nmg c1 v\r\nmg lease1 v\r\nmg m13 v\r\nmg lease3 v\r\nmn\r\n");
            read_to_mn(&mut c) != b"EN\r\nEN\r\nEN\r\nEN\r\nEN\r\nMN\r\n"
        })
        .count();
    assert!(used >= 2, "keys on {used} servers");
    eprintln!(
        "{} batches, {lines} reply lines compared byte for byte",
        SCRIPT.len()
    );
}

#[test]
fn quiet_pipeline_across_servers_gets_exactly_memcacheds_replies_in_order() {
    let s = setup();
    let direct = memcached();
    // One write: quiet commands on keys that live on different servers, some of whose replies
    // memcached suppresses and some it must send (hits, errors, NS/NF/EX), then `mn`.
    let mut pipeline = String::new();
    for i in 0..12 {
        pipeline.push_str(&format!("ms q{i} 2 q O{i}\r\nv{}\r\n", i % 10));
    }
    for i in 0..16 {
        pipeline.push_str(&format!("mg q{i} v q k O{}\r\n", 100 + i));
    }
    for i in 0..16 {
        pipeline.push_str(&format!("md q{i} q O{}\r\n", 200 + i));
    }
    for i in 0..4 {
        pipeline.push_str(&format!(
            "ms q{i} 2 q MR O{}\r\nzz\r\nma n{i} q O{}\r\nma n{i} q N0 O{}\r\nma n{i} q v\r\nmg q{i} zz q\r\n",
            300 + i,
            400 + i,
            500 + i
        ));
    }
    pipeline.push_str("mn\r\n");
    let mut through = Mc::connect(s.proxy.addr);
    through.send(pipeline.as_bytes());
    let a = read_to_mn(&mut through);
    let mut plain = Mc::connect(direct.addr);
    plain.send(pipeline.as_bytes());
    let b = read_to_mn(&mut plain);
    assert_eq!(
        show(&a),
        show(&b),
        "no normalisation needed: no CAS or TTL asked"
    );
    assert!(show(&a).contains("VA 2 kq0 O100\r\nv0\r\n"));
    assert!(
        show(&a).contains("NF O212\r\n"),
        "misses of md are not suppressed"
    );
    assert!(
        !show(&a).lines().any(|l| l == "EN" || l.starts_with("EN ")),
        "mg misses are suppressed"
    );
    // The pipeline's keys live on different servers.
    for i in 0..16 {
        assert_eq!(through.set(&format!("q{i}"), b"x"), "STORED");
    }
    let mut held = Vec::new();
    for b in &s.backends {
        let mut c = Mc::connect(b.addr);
        held.push(
            (0..16)
                .filter(|i| c.get(&format!("q{i}")).is_some())
                .count(),
        );
    }
    assert!(held.iter().filter(|&&n| n > 0).count() >= 2, "{held:?}");
}

#[test]
fn base64_keys_route_like_their_decoded_form() {
    let s = setup();
    let mut c = Mc::connect(s.proxy.addr);
    let b64 = |k: &str| {
        // A tiny encoder for the test (standard alphabet, padded).
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in k.as_bytes().chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    };
    for i in 0..60 {
        let key = format!("user:{i}");
        assert_eq!(c.set(&key, format!("v{i}").as_bytes()), "STORED");
    }
    for i in 0..60 {
        let key = format!("user:{i}");
        c.send(format!("mg {} b v k\r\nmn\r\n", b64(&key)).as_bytes());
        let r = read_to_mn(&mut c);
        assert_eq!(
            show(&r),
            // memcached returns the key as it was stored (in plain text here).
            format!("VA {} k{key}\r\nv{i}\r\nMN\r\n", format!("v{i}").len()),
            "{key}"
        );
    }
    // Written in base64 through the proxy, read in plain text: same server.
    for i in 0..60 {
        let key = format!("bin:{i}");
        c.send(format!("ms {} 2 b\r\nok\r\nmn\r\n", b64(&key)).as_bytes());
        assert_eq!(read_to_mn(&mut c), b"HD\r\nMN\r\n");
        assert_eq!(c.get(&key).as_deref(), Some(&b"ok"[..]), "{key}");
    }
}

#[test]
fn leases_one_winner_among_50_concurrent_misses() {
    let s = setup();
    let clients = 50;
    let barrier = Arc::new(Barrier::new(clients));
    let addr = s.proxy.addr;
    let run = |key: &'static str, cmd: &'static str| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let mut c = Mc::connect(addr);
                    barrier.wait();
                    c.send(format!("mg {key} {cmd}\r\nmn\r\n").as_bytes());
                    show(&read_to_mn(&mut c))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<String>>()
    };
    let has = |r: &String, flag: &str| r.lines().next().unwrap().split(' ').any(|t| t == flag);

    // 50 clients miss the same key at once: exactly one wins the right to recompute.
    let replies = run("hot", "s c v N30 t");
    let winners = replies.iter().filter(|r| has(r, "W")).count();
    let lost = replies.iter().filter(|r| has(r, "Z")).count();
    eprintln!("lease: {winners} winner(s), {lost} told another client won, of {clients}");
    assert_eq!(winners, 1, "{replies:?}");
    assert_eq!(lost, clients - 1);
    assert!(replies.iter().all(|r| r.starts_with("VA 0 s0 c")));

    // The winner fills it; everyone hits.
    let mut c = Mc::connect(addr);
    c.send(b"ms hot 5 T60\r\nvalue\r\nmn\r\n");
    assert_eq!(read_to_mn(&mut c), b"HD\r\nMN\r\n");
    let replies = run("hot", "v N30");
    assert!(
        replies.iter().all(|r| r == "VA 5\r\nvalue\r\nMN\r\n"),
        "{replies:?}"
    );

    // Invalidate: the value stays readable as stale; one client wins the recache.
    c.send(b"md hot I T30\r\nmn\r\n");
    assert_eq!(read_to_mn(&mut c), b"HD\r\nMN\r\n");
    let replies = run("hot", "v c N30");
    let winners = replies.iter().filter(|r| has(r, "W")).count();
    assert_eq!(winners, 1, "{replies:?}");
    assert!(replies
        .iter()
        .all(|r| has(r, "X") && r.contains("\r\nvalue\r\n")));
    assert_eq!(replies.iter().filter(|r| has(r, "Z")).count(), clients - 1);
}

#[test]
fn meta_commands_through_failover_and_gutter_with_capped_ttl() {
    let dir = TempDir::new();
    let gutter = memcached();
    // The primary pool's server is a port nobody listens on: refused, so TKO at once.
    let dead = free_port();
    let port = free_port();
    let yaml = format!(
        "pools:
  main:
    protocol: memcache
    servers: [\"127.0.0.1:{dead}:1 mc-dead\"]
    timeout: 200ms
  gutter:
    protocol: memcache
    servers: [\"{}:1 gutter-0\"]
    timeout: 200ms
listeners:
  - listen: 127.0.0.1:{port}
    protocol: memcache
    route:
      failover: [main, {{ gutter: gutter, max_ttl: 5s }}]
",
        gutter.addr
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let proxy = kvrouter(&dir, &yaml, addr);
    let mut c = Mc::connect(proxy.addr);
    let mut g = Mc::connect(gutter.addr);
    let ttl = |g: &mut Mc, key: &str| -> i64 {
        g.send(format!("mg {key} t\r\nmn\r\n").as_bytes());
        let r = show(&read_to_mn(g));
        let t = r
            .split([' ', '\r'])
            .find(|t| t.starts_with('t'))
            .unwrap_or_else(|| panic!("{r}"));
        t[1..].parse().unwrap()
    };
    c.send(b"ms a 2 T3600\r\nhi\r\nms b 2\r\nhi\r\nms c 2 q T0 O1\r\nhi\r\nmn\r\n");
    assert_eq!(read_to_mn(&mut c), b"HD\r\nHD\r\nMN\r\n");
    for key in ["a", "b", "c"] {
        let t = ttl(&mut g, key);
        assert!((1..=5).contains(&t), "{key}: TTL {t} in the gutter");
    }
    c.send(b"mg a v T9999 t\r\nmn\r\n");
    let r = show(&read_to_mn(&mut c));
    assert!(
        r.starts_with("VA 2 t") && r.ends_with("\r\nhi\r\nMN\r\n"),
        "{r}"
    );
    assert!((1..=5).contains(&ttl(&mut g, "a")));
    // A lease through the gutter: vivified with a capped TTL.
    c.send(b"mg lease v c N3600\r\nmg lease v c N3600\r\nmn\r\n");
    let r = show(&read_to_mn(&mut c));
    assert!(r.contains(" W\r\n") && r.contains(" Z\r\n"), "{r}");
    assert!((1..=5).contains(&ttl(&mut g, "lease")));
    c.send(b"ma n N3600 J5 v\r\nma n v T0\r\nmn\r\n");
    assert_eq!(
        show(&read_to_mn(&mut c)),
        "VA 1\r\n5\r\nVA 1\r\n6\r\nMN\r\n"
    );
    assert!((1..=5).contains(&ttl(&mut g, "n")));
    // Deletes reach the gutter too; quiet ones answer nothing.
    c.send(b"md a q\r\nmd a\r\nmn\r\n");
    assert_eq!(show(&read_to_mn(&mut c)), "NF\r\nMN\r\n");
    g.send(b"mg a v\r\nmn\r\n");
    assert_eq!(read_to_mn(&mut g), b"EN\r\nMN\r\n");
}
