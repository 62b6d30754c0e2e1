//! `kvrouter keymap`: where keys live, and how many move between two configs, without sending
//! any traffic to memcached pools.

use std::collections::HashMap;
use std::io::Write;

use crate::config::{Config, ListenAddr};
use crate::routing::slots::ClusterMap;
use crate::routing::{Node, Placement};

/// The slot map of a cluster from `CLUSTER SLOTS` of the first seed that answers within 1 s.
fn cluster_map(seeds: &[String]) -> Option<ClusterMap> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let t = std::time::Duration::from_secs(1);
    for seed in seeds {
        let Some(addr) = seed.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
            continue;
        };
        let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, t) else {
            continue;
        };
        let _ = s.set_read_timeout(Some(t));
        if s.write_all(b"*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n")
            .is_err()
        {
            continue;
        }
        let mut buf = bytes::BytesMut::new();
        let mut chunk = [0u8; 16384];
        let reply = loop {
            match crate::protocol::resp::scan_reply(&buf) {
                Ok(Some(n)) => break Some(buf.split_to(n).freeze()),
                Ok(None) => {}
                Err(_) => break None,
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => break None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        if let Some(ranges) = reply.and_then(|r| crate::server::cluster::parse_slots(&r, seed).ok())
        {
            return Some(ClusterMap::from_ranges(&ranges, 1));
        }
    }
    None
}

fn placement(pool: &crate::config::PoolConfig) -> Placement {
    let nodes: Vec<Node> = pool
        .servers
        .iter()
        .map(|s| Node {
            name: s.placement_name(),
            weight: s.weight,
        })
        .collect();
    let live = vec![true; nodes.len()];
    Placement::new(pool.distribution, pool.hash, pool.hash_tag, &nodes, &live)
}

/// Where one key lives: its pool, the server's name (for a cluster pool `slot N`) and address
/// (`?` when no cluster seed answered).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    pub pool: String,
    pub server: String,
    pub address: String,
}

/// One listener's route with every pool's ring built once, for mapping many keys.
pub struct Mapper<'a> {
    config: &'a Config,
    route: &'a crate::config::Route,
    /// Per pool name: its ring, built on first use.
    rings: HashMap<&'a str, Placement>,
    /// Cluster pools: the slot map, asked once per pool from the first seed that answers.
    maps: HashMap<&'a str, Option<ClusterMap>>,
}

impl<'a> Mapper<'a> {
    /// For the listener `listener` (its listen address as written, e.g. `127.0.0.1:22121`) or
    /// the first listener.
    pub fn new(config: &'a Config, listener: Option<&str>) -> Result<Mapper<'a>, String> {
        let l = match listener {
            None => config
                .listeners
                .first()
                .ok_or("the config has no listener")?,
            Some(want) => config
                .listeners
                .iter()
                .find(|l| match &l.listen {
                    ListenAddr::Tcp(a) => a.to_string() == want,
                    ListenAddr::Unix { path, .. } => path.to_string_lossy() == want,
                })
                .ok_or_else(|| format!("no listener on {want}"))?,
        };
        Ok(Mapper {
            config,
            route: &l.route,
            rings: HashMap::new(),
            maps: HashMap::new(),
        })
    }

    /// Where a `get` of `key` goes.
    pub fn place(&mut self, key: &[u8]) -> Result<Place, String> {
        let shown = || String::from_utf8_lossy(key).into_owned();
        let pool_name = self
            .route
            .get_pool(key)
            .ok_or_else(|| format!("no route for key {}", shown()))?;
        let config: &'a Config = self.config;
        let pool = config
            .pool(pool_name)
            .ok_or_else(|| format!("unknown pool {pool_name}"))?;
        if let Some(c) = &pool.cluster {
            let slot = crate::routing::slots::key_slot(key);
            let map = self
                .maps
                .entry(pool.name.as_str())
                .or_insert_with(|| cluster_map(&c.seeds));
            let owner = map
                .as_ref()
                .and_then(|m| m.shard(slot))
                .map_or("?".to_string(), |s| s.primary.clone());
            return Ok(Place {
                pool: pool.name.clone(),
                server: format!("slot {slot}"),
                address: owner,
            });
        }
        let ring = self
            .rings
            .entry(pool.name.as_str())
            .or_insert_with(|| placement(pool));
        let s = ring
            .server_for(key)
            .map(|i| &pool.servers[i])
            .ok_or("no server")?;
        Ok(Place {
            pool: pool.name.clone(),
            server: s.name.clone().unwrap_or_else(|| s.address()),
            address: s.address(),
        })
    }
}

/// One line per key: `KEY\tPOOL\tSERVER_NAME\tHOST:PORT`, for the listener `listener` (its
/// listen address as written, e.g. `127.0.0.1:22121`) or the first listener.
pub fn keymap(config: &Config, listener: Option<&str>, keys: &[String]) -> Result<String, String> {
    let mut m = Mapper::new(config, listener)?;
    let mut out = Vec::new();
    for key in keys {
        write_line(&mut out, key.as_bytes(), &m.place(key.as_bytes())?)
            .map_err(|e| e.to_string())?;
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// `KEY\tPOOL\tSERVER_NAME\tHOST:PORT\n`.
pub fn write_line(out: &mut impl Write, key: &[u8], p: &Place) -> std::io::Result<()> {
    out.write_all(key)?;
    writeln!(out, "\t{}\t{}\t{}", p.pool, p.server, p.address)
}

/// `KEY\tOLD_POOL\tOLD_SERVER\tOLD_ADDR\tNEW_POOL\tNEW_SERVER\tNEW_ADDR\tmoves|stays\n`: a key
/// moves when the address it reaches changes.
pub fn write_diff_line(
    out: &mut impl Write,
    key: &[u8],
    old: &Place,
    new: &Place,
) -> std::io::Result<()> {
    out.write_all(key)?;
    let verdict = if old.address == new.address {
        "stays"
    } else {
        "moves"
    };
    writeln!(
        out,
        "\t{}\t{}\t{}\t{}\t{}\t{}\t{verdict}",
        old.pool, old.server, old.address, new.pool, new.server, new.address
    )
}

/// The seed of the keys `diff` samples: the same keys every run.
const SAMPLE_SEED: u64 = 0x6b76_726f_7574_6572;

/// Keys sampled in turn from a fixed seed, generated on the fly (memory stays flat however
/// many are asked for).
fn sample_keys(n: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut rng = fastrand::Rng::with_seed(SAMPLE_SEED);
    let mut key = Vec::with_capacity(40);
    (0..n).map(move |_| {
        key.clear();
        let len = rng.usize(4..40);
        key.extend((0..len).map(|_| rng.u8(0x21..0x7f)));
        key.clone()
    })
}

/// Of `sample` random keys, how many change server (host:port) between two versions of a pool.
/// `progress` is called every `PROGRESS_EVERY` keys with the count done so far.
pub fn moved_keys(
    old: &crate::config::PoolConfig,
    new: &crate::config::PoolConfig,
    sample: usize,
    progress: &mut dyn FnMut(usize),
) -> usize {
    let (a, b) = (placement(old), placement(new));
    let mut moved = 0;
    for (i, k) in sample_keys(sample).enumerate() {
        if i > 0 && i % PROGRESS_EVERY == 0 {
            progress(i);
        }
        let sa = a.server_for(&k).map(|i| old.servers[i].address());
        let sb = b.server_for(&k).map(|i| new.servers[i].address());
        moved += usize::from(sa != sb);
    }
    moved
}

/// Keys between two progress reports of `moved_keys`.
pub const PROGRESS_EVERY: usize = 1_000_000;

/// Per pool present in both configs: the fraction of `sample` random keys whose server
/// (host:port) changes. Deterministic: the same keys are drawn every run. `progress(pool, done)`
/// is called every [`PROGRESS_EVERY`] keys.
pub fn diff(
    old: &Config,
    new: &Config,
    sample: usize,
    progress: &mut dyn FnMut(&str, usize),
) -> String {
    let mut out = String::new();
    for po in &old.pools {
        let Some(pn) = new.pool(&po.name) else {
            out.push_str(&format!("{}\tremoved\n", po.name));
            continue;
        };
        let moved = moved_keys(po, pn, sample, &mut |done| progress(&po.name, done));
        let frac = if sample == 0 {
            0.0
        } else {
            moved as f64 / sample as f64
        };
        out.push_str(&format!(
            "{}\t{frac:.4}\t{moved}/{sample} keys move\n",
            po.name
        ));
    }
    for pn in &new.pools {
        if old.pool(&pn.name).is_none() {
            out.push_str(&format!("{}\tadded\n", pn.name));
        }
    }
    out
}
