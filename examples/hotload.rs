//! A load generator for the hot-key benchmark (scripts/bench-hotkeys): one celebrity key plus
//! Zipf(s) over N keys, memcached ASCII `get`s pipelined over blocking connections.
//!
//!   cargo run --release --example hotload -- ADDR [--fill] [--secs S] [--threads T]
//!       [--depth D] [--keys N] [--zipf S] [--celebrity P]
//!
//! `--fill` stores every key (and the celebrity) first. Prints `ops=<total> ops_per_sec=<rate>
//! hits=<hits>` on one line.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Opts {
    addr: String,
    fill: bool,
    secs: f64,
    threads: usize,
    depth: usize,
    keys: usize,
    zipf: f64,
    celebrity: f64,
}

fn opts() -> Opts {
    let mut args = std::env::args().skip(1);
    let mut o = Opts {
        addr: args.next().expect("ADDR"),
        fill: false,
        secs: 10.0,
        threads: 4,
        depth: 32,
        keys: 100_000,
        zipf: 0.99,
        celebrity: 0.25,
    };
    while let Some(a) = args.next() {
        let mut v = || args.next().expect("a value");
        match a.as_str() {
            "--fill" => o.fill = true,
            "--secs" => o.secs = v().parse().unwrap(),
            "--threads" => o.threads = v().parse().unwrap(),
            "--depth" => o.depth = v().parse().unwrap(),
            "--keys" => o.keys = v().parse().unwrap(),
            "--zipf" => o.zipf = v().parse().unwrap(),
            "--celebrity" => o.celebrity = v().parse().unwrap(),
            other => panic!("unknown argument {other}"),
        }
    }
    o
}

fn key(rank: usize) -> String {
    format!("key:{rank}")
}

const CELEBRITY: &str = "celebrity";

fn connect(addr: &str) -> (BufReader<TcpStream>, TcpStream) {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).unwrap();
    (BufReader::new(s.try_clone().unwrap()), s)
}

fn fill(o: &Opts) {
    let (mut r, mut w) = connect(&o.addr);
    let value = "v".repeat(32);
    let mut batch = String::new();
    for rank in 0..=o.keys {
        let k = if rank == o.keys {
            CELEBRITY.to_string()
        } else {
            key(rank)
        };
        batch.push_str(&format!(
            "set {k} 0 0 {} noreply\r\n{value}\r\n",
            value.len()
        ));
        if batch.len() > 64 * 1024 {
            w.write_all(batch.as_bytes()).unwrap();
            batch.clear();
        }
    }
    batch.push_str("mn\r\n");
    w.write_all(batch.as_bytes()).unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "MN\r\n", "fill failed: {line}");
}

fn main() {
    let o = opts();
    if o.fill {
        fill(&o);
    }
    // Zipf CDF over ranks 1..=keys.
    let mut cdf: Vec<f64> = (1..=o.keys)
        .map(|k| 1.0 / (k as f64).powf(o.zipf))
        .collect();
    let mut acc = 0.0;
    for c in cdf.iter_mut() {
        acc += *c;
        *c = acc;
    }
    for c in cdf.iter_mut() {
        *c /= acc;
    }
    let cdf = Arc::new(cdf);
    let ops = Arc::new(AtomicU64::new(0));
    let hits = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(o.secs);
    let start = Instant::now();
    let threads: Vec<_> = (0..o.threads)
        .map(|t| {
            let (cdf, ops, hits) = (cdf.clone(), ops.clone(), hits.clone());
            let (addr, depth, celebrity) = (o.addr.clone(), o.depth, o.celebrity);
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(t as u64 + 1);
                let (mut r, mut w) = connect(&addr);
                let mut req = String::new();
                let mut line = Vec::new();
                let (mut n, mut h) = (0u64, 0u64);
                while Instant::now() < deadline {
                    req.clear();
                    for _ in 0..depth {
                        if rng.f64() < celebrity {
                            req.push_str("get celebrity\r\n");
                        } else {
                            let u = rng.f64();
                            let rank = cdf.partition_point(|&c| c < u);
                            req.push_str(&format!("get {}\r\n", key(rank)));
                        }
                    }
                    w.write_all(req.as_bytes()).unwrap();
                    for _ in 0..depth {
                        loop {
                            line.clear();
                            r.read_until(b'\n', &mut line).unwrap();
                            if line.starts_with(b"VALUE ") {
                                let len: usize = std::str::from_utf8(&line)
                                    .unwrap()
                                    .split_whitespace()
                                    .nth(3)
                                    .unwrap()
                                    .parse()
                                    .unwrap();
                                let mut data = vec![0; len + 2];
                                r.read_exact(&mut data).unwrap();
                                h += 1;
                            } else if line.as_slice() == b"END\r\n" {
                                break;
                            } else {
                                panic!("unexpected reply {}", String::from_utf8_lossy(&line));
                            }
                        }
                    }
                    n += depth as u64;
                }
                ops.fetch_add(n, Ordering::Relaxed);
                hits.fetch_add(h, Ordering::Relaxed);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let n = ops.load(Ordering::Relaxed);
    println!(
        "ops={n} ops_per_sec={:.0} hits={}",
        n as f64 / secs,
        hits.load(Ordering::Relaxed)
    );
}
