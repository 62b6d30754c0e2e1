//! Live comparison with nutcracker: keys set through a real nutcracker 0.5.0 land exactly where
//! `Placement::server_for` says, for every hash x {ketama, modula}; random spreads evenly.
//!
//! Why: the golden file (`placement_golden.rs`) freezes a sample; this test draws fresh random
//! keys every run (seed printed on failure; `KVROUTER_PLACEMENT_SEED` replays one) so a
//! placement bug that the sample happens to miss still gets caught. One nutcracker process
//! serves a pool per combination, each on its own loopback port, in front of shared memcached
//! instances; keys are unique across pools, so pools cannot disturb each other.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Read};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use common::{free_port, kvrouter, memcached, nutcracker, wait_port, Mc, Proc, TempDir};
use kvrouter::routing::{hash_tag_key, DistributionKind, HashKind, Node, Placement};

const KEYS_PER_POOL: usize = 1000;
const RANDOM_KEYS: usize = 4000;

/// (weight, configured name) per memcached, in config order: named and unnamed, mixed weights.
/// The total weight (9) is not a power of two, so modula sees the high bits of every hash.
const LAYOUT: [(u32, Option<&str>); 5] = [
    (1, Some("alpha")),
    (3, None),
    (1, Some("b")),
    (2, Some("server-delta")),
    (2, None),
];
const HASH_TAG: &str = "{}";

struct Pool {
    hash: Option<HashKind>,
    dist: DistributionKind,
    listen: SocketAddr,
}

fn key_byte(rng: &mut fastrand::Rng) -> u8 {
    // memcached keys: no spaces or control characters; 0x80..=0xff allowed.
    loop {
        let b = rng.u8(0x21..=0xff);
        if b != 0x7f {
            return b;
        }
    }
}

fn random_key(rng: &mut fastrand::Rng) -> Vec<u8> {
    let len = rng.usize(1..=48);
    let mut k: Vec<u8> = (0..len).map(|_| key_byte(rng)).collect();
    if rng.u8(..10) < 3 {
        // A hash tag, sometimes empty (then the whole key is hashed).
        let inner: Vec<u8> = (0..rng.usize(0..6))
            .map(|_| key_byte(rng))
            .filter(|&b| b != b'{' && b != b'}')
            .collect();
        let at = rng.usize(..=k.len());
        let mut tagged = k[..at].to_vec();
        tagged.push(b'{');
        tagged.extend_from_slice(&inner);
        tagged.push(b'}');
        tagged.extend_from_slice(&k[at..]);
        k = tagged;
    }
    k
}

/// Set every key through `addr` (pipelined), value = `value`.
fn set_all(addr: SocketAddr, keys: &[Vec<u8>], value: &[u8]) {
    let mut mc = Mc::connect(addr);
    for chunk in keys.chunks(100) {
        let mut req = Vec::new();
        for k in chunk {
            req.extend_from_slice(b"set ");
            req.extend_from_slice(k);
            req.extend_from_slice(format!(" 0 0 {}\r\n", value.len()).as_bytes());
            req.extend_from_slice(value);
            req.extend_from_slice(b"\r\n");
        }
        mc.send(&req);
        for k in chunk {
            let l = mc.line();
            assert_eq!(l, "STORED", "set {k:?} through {addr}");
        }
    }
}

/// Multi-get `keys` on one memcached; returns the keys it holds (raw bytes).
fn held(mc: &mut Mc, keys: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut found = Vec::new();
    for chunk in keys.chunks(100) {
        let mut req = b"get".to_vec();
        for k in chunk {
            req.push(b' ');
            req.extend_from_slice(k);
        }
        req.extend_from_slice(b"\r\n");
        mc.send(&req);
        loop {
            let mut line = Vec::new();
            mc.r.read_until(b'\n', &mut line).unwrap();
            assert!(line.ends_with(b"\r\n"));
            line.truncate(line.len() - 2);
            if line == b"END" {
                break;
            }
            let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
            assert_eq!(parts[0], b"VALUE", "{:?}", String::from_utf8_lossy(&line));
            let n: usize = std::str::from_utf8(parts[3]).unwrap().parse().unwrap();
            let mut data = vec![0; n + 2];
            mc.r.read_exact(&mut data).unwrap();
            found.push(parts[1].to_vec());
        }
    }
    found
}

/// Which memcached (index into `mcs`) holds each key.
fn locate(mcs: &[SocketAddr], keys: &[Vec<u8>]) -> HashMap<Vec<u8>, usize> {
    let mut at = HashMap::new();
    for (i, addr) in mcs.iter().enumerate() {
        let mut mc = Mc::connect(*addr);
        for k in held(&mut mc, keys) {
            assert!(at.insert(k.clone(), i).is_none(), "{k:?} on two servers");
        }
    }
    at
}

struct Setup {
    _dir: TempDir,
    mcs: Vec<Proc>,
    _nc: Proc,
    /// kvrouter on the same config (only the listen ports differ), one port per pool.
    _kv: Proc,
    kv_listen: Vec<SocketAddr>,
    mc_addrs: Vec<SocketAddr>,
    nodes: Vec<Node>,
    pools: Vec<Pool>,
}

/// One nutcracker with a pool per `(hash, distribution)` (each on its own port) in front of
/// fresh memcached instances laid out as `LAYOUT`. `eject` turns on `auto_eject_hosts` with a
/// failure limit of 1 and a retry timeout longer than any test.
fn setup(combos: &[(Option<HashKind>, DistributionKind)], eject: bool) -> Setup {
    let dir = TempDir::new();
    let mcs: Vec<Proc> = LAYOUT.iter().map(|_| memcached()).collect();
    let mc_addrs: Vec<SocketAddr> = mcs.iter().map(|p| p.addr).collect();
    let nodes: Vec<Node> = LAYOUT
        .iter()
        .zip(&mc_addrs)
        .map(|((w, name), a)| Node {
            name: Node::twemproxy_name("127.0.0.1", &a.port().to_string(), *name),
            weight: *w,
        })
        .collect();
    let eject = if eject {
        "  auto_eject_hosts: true\n  server_failure_limit: 1\n  server_retry_timeout: 600000\n"
    } else {
        "  auto_eject_hosts: false\n"
    };
    // Ports from `free_port` are only free "a moment ago": another test running in parallel can
    // take one before nutcracker binds it. Retry with fresh ports when nutcracker cannot start.
    let mut attempt = 0;
    let (pools, nc, yaml) = loop {
        attempt += 1;
        let mut taken: HashSet<u16> = mc_addrs.iter().map(|a| a.port()).collect();
        let pools: Vec<Pool> = combos
            .iter()
            .map(|&(hash, dist)| {
                let port = std::iter::repeat_with(free_port)
                    .find(|p| taken.insert(*p))
                    .unwrap();
                Pool {
                    hash,
                    dist,
                    listen: SocketAddr::from(([127, 0, 0, 1], port)),
                }
            })
            .collect();
        let mut yaml = String::new();
        for (i, p) in pools.iter().enumerate() {
            yaml += &format!("pool{i}:\n  listen: {}\n", p.listen);
            if let Some(h) = p.hash {
                yaml += &format!("  hash: {}\n", h.name());
            }
            yaml += &format!(
                "  distribution: {}\n  hash_tag: \"{HASH_TAG}\"\n  timeout: 5000\n{eject}  servers:\n",
                p.dist.name()
            );
            for ((w, name), a) in LAYOUT.iter().zip(&mc_addrs) {
                yaml += &format!(
                    "    - {a}:{w}{}\n",
                    name.map(|n| format!(" {n}")).unwrap_or_default()
                );
            }
        }
        let started = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut nc = nutcracker(&dir, &yaml, pools[0].listen);
            for p in &pools {
                wait_port(p.listen, &mut nc.child);
            }
            nc
        }));
        match started {
            Ok(nc) => break (pools, nc, yaml),
            Err(e) if attempt >= 5 => std::panic::resume_unwind(e),
            Err(_) => eprintln!("nutcracker did not start (port taken?); retrying"),
        }
    };
    let (pools, nc, yaml) = (pools, nc, yaml);
    // kvrouter reads the very same nutcracker.yml; only the listen ports change.
    let kv_listen: Vec<SocketAddr> = pools
        .iter()
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let mut kv_yaml = yaml.clone();
    for (p, kv) in pools.iter().zip(&kv_listen) {
        kv_yaml = kv_yaml.replace(
            &format!("listen: {}\n", p.listen),
            &format!("listen: {kv}\n"),
        );
    }
    let mut kv = kvrouter(&dir, &kv_yaml, kv_listen[0]);
    for a in &kv_listen {
        wait_port(*a, &mut kv.child);
    }
    Setup {
        _dir: dir,
        mcs,
        _nc: nc,
        _kv: kv,
        kv_listen,
        mc_addrs,
        nodes,
        pools,
    }
}

fn seed() -> u64 {
    std::env::var("KVROUTER_PLACEMENT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..))
}

#[test]
fn placement_matches_live_nutcracker() {
    let start = Instant::now();
    let seed = seed();
    let combos: Vec<_> = HashKind::ALL
        .into_iter()
        .flat_map(|h| {
            [
                (Some(h), DistributionKind::Ketama),
                (Some(h), DistributionKind::Modula),
            ]
        })
        .collect();
    let s = setup(&combos, false);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut seen = HashSet::new();
    let key_sets: Vec<Vec<Vec<u8>>> = s
        .pools
        .iter()
        .map(|_| {
            let mut keys = Vec::with_capacity(KEYS_PER_POOL);
            while keys.len() < KEYS_PER_POOL {
                let k = random_key(&mut rng);
                if seen.insert(k.clone()) {
                    keys.push(k);
                }
            }
            keys
        })
        .collect();

    let results: Vec<Vec<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = s
            .pools
            .iter()
            .zip(&key_sets)
            .zip(&s.kv_listen)
            .map(|((pool, keys), &kv)| {
                let (nodes, mc_addrs) = (&s.nodes, &s.mc_addrs);
                scope.spawn(move || {
                    let hash = pool.hash.unwrap();
                    let tag = Some(<[u8; 2]>::try_from(HASH_TAG.as_bytes()).unwrap());
                    set_all(pool.listen, keys, b"v");
                    let at = locate(mc_addrs, keys);
                    let placement = Placement::new(pool.dist, hash, tag, nodes, &vec![true; nodes.len()]);
                    let mut bad = Vec::new();
                    for k in keys {
                        let want = placement.server_for(k);
                        let got = at.get(k).copied();
                        if want != got || got.is_none() {
                            bad.push(format!(
                                "{} {}: key {:?} (hashed part {:?}): nutcracker put it on {:?}, Placement says {:?}",
                                hash.name(),
                                pool.dist.name(),
                                String::from_utf8_lossy(k),
                                String::from_utf8_lossy(hash_tag_key(k, tag)),
                                got.map(|i| &nodes[i].name),
                                want.map(|i| &nodes[i].name),
                            ));
                        }
                    }
                    // Cut-over: every key nutcracker wrote is a hit through kvrouter...
                    let hits = held(&mut Mc::connect(kv), keys).len();
                    if hits != keys.len() {
                        bad.push(format!(
                            "{} {}: only {hits} of {} keys written by nutcracker are hits through kvrouter",
                            hash.name(), pool.dist.name(), keys.len()
                        ));
                    }
                    // ...and what kvrouter writes lands where nutcracker put it.
                    set_all(kv, keys, b"kv");
                    let again = locate(mc_addrs, keys);
                    if again != at {
                        bad.push(format!(
                            "{} {}: kvrouter placed keys differently from nutcracker",
                            hash.name(), pool.dist.name()
                        ));
                    }
                    bad
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let bad: Vec<String> = results.into_iter().flatten().collect();
    assert!(
        bad.is_empty(),
        "seed {seed}: {} keys misplaced, e.g.:\n{}",
        bad.len(),
        bad[..bad.len().min(20)].join("\n")
    );
    eprintln!(
        "{} pools x {KEYS_PER_POOL} keys matched nutcracker in {:?} (seed {seed})",
        s.pools.len(),
        start.elapsed()
    );
}

#[test]
fn random_distribution_spreads_evenly() {
    let seed = seed();
    let s = setup(&[(None, DistributionKind::Random)], false);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut seen = HashSet::new();
    let mut keys = Vec::new();
    while keys.len() < RANDOM_KEYS {
        let k = random_key(&mut rng);
        if seen.insert(k.clone()) {
            keys.push(k);
        }
    }

    // nutcracker's own spread: random ignores weights (one continuum point per live server).
    set_all(s.pools[0].listen, &keys, b"r");
    let at = locate(&s.mc_addrs, &keys);
    assert_eq!(at.len(), keys.len(), "every key landed somewhere");
    let mut theirs = vec![0usize; s.nodes.len()];
    for i in at.values() {
        theirs[*i] += 1;
    }

    // Ours, over the same nodes.
    let p = Placement::new(
        DistributionKind::Random,
        HashKind::Fnv1a_64,
        None,
        &s.nodes,
        &vec![true; s.nodes.len()],
    );
    let mut ours = vec![0usize; s.nodes.len()];
    for k in &keys {
        ours[p.server_for(k).unwrap()] += 1;
    }

    // Chi-square against uniform with 4 degrees of freedom: P(X > 25) is about 5e-5.
    let chi2 = |counts: &[usize]| {
        let e = keys.len() as f64 / counts.len() as f64;
        counts
            .iter()
            .map(|&c| (c as f64 - e).powi(2) / e)
            .sum::<f64>()
    };
    assert!(
        chi2(&theirs) < 25.0,
        "nutcracker's spread {theirs:?} is not uniform"
    );
    assert!(chi2(&ours) < 25.0, "our spread {ours:?} is not uniform");
}

/// With `auto_eject_hosts`, nutcracker rebuilds the ring without a failed server: keys move
/// exactly as `Placement::new(.., live)` with that server dead predicts (ketama recomputes every
/// server's points for the new live count and weight; modula drops the server's slots).
#[test]
fn ejected_server_matches_live_flags() {
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    let combos = [
        (Some(HashKind::Fnv1a_64), DistributionKind::Ketama),
        (Some(HashKind::Md5), DistributionKind::Ketama),
        (Some(HashKind::Murmur), DistributionKind::Modula),
        (Some(HashKind::OneAtATime), DistributionKind::Modula),
    ];
    let mut s = setup(&combos, true);
    let tag = Some(<[u8; 2]>::try_from(HASH_TAG.as_bytes()).unwrap());
    let dead = 3; // "server-delta", weight 2
    drop(s.mcs.remove(dead)); // stopped by its PID
    let mut live = vec![true; s.nodes.len()];
    live[dead] = false;

    for pool in &s.pools {
        let hash = pool.hash.unwrap();
        let before = Placement::new(pool.dist, hash, tag, &s.nodes, &vec![true; s.nodes.len()]);
        // Make nutcracker notice: a get for a key on the dead server fails once, which ejects it.
        let mut mc = Mc::connect(pool.listen);
        let mut probe = 0;
        loop {
            let k = format!("probe{probe}");
            probe += 1;
            if before.server_for(k.as_bytes()) != Some(dead) {
                continue;
            }
            mc.send(format!("get {k}\r\n").as_bytes());
            let reply = mc.line();
            if reply == "END" {
                break; // routed to a live server: the ring was rebuilt
            }
            assert!(
                probe < 10_000,
                "{}: server never ejected ({reply})",
                hash.name()
            );
        }

        let keys: Vec<Vec<u8>> = (0..KEYS_PER_POOL)
            .map(|i| {
                let mut k = random_key(&mut rng);
                k.extend_from_slice(format!("#{}{i}", pool.listen.port()).as_bytes());
                k
            })
            .collect();
        set_all(pool.listen, &keys, b"e");
        let mut addrs = s.mc_addrs.clone();
        addrs.remove(dead);
        let at = locate(&addrs, &keys);
        let after = Placement::new(pool.dist, hash, tag, &s.nodes, &live);
        for k in &keys {
            let got = at.get(k).map(|&i| if i >= dead { i + 1 } else { i });
            assert_eq!(
                got,
                after.server_for(k),
                "seed {seed}: {} {} key {:?} after ejecting {}",
                hash.name(),
                pool.dist.name(),
                String::from_utf8_lossy(k),
                s.nodes[dead].name
            );
        }
    }
}
