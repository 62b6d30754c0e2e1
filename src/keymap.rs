//! `kvrouter keymap`: where keys live, and how many move between two configs, without sending
//! any traffic to memcached pools.

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

/// One line per key: `KEY\tPOOL\tSERVER_NAME\tHOST:PORT`, for the listener `listener` (its
/// listen address as written, e.g. `127.0.0.1:22121`) or the first listener.
pub fn keymap(config: &Config, listener: Option<&str>, keys: &[String]) -> Result<String, String> {
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
    let mut out = String::new();
    // Cluster pools: the slot map, asked once per pool from the first seed that answers.
    let mut maps: std::collections::HashMap<String, Option<ClusterMap>> = Default::default();
    for key in keys {
        let pool_name = l
            .route
            .get_pool(key.as_bytes())
            .ok_or_else(|| format!("no route for key {key}"))?;
        let pool = config
            .pool(pool_name)
            .ok_or_else(|| format!("unknown pool {pool_name}"))?;
        if let Some(c) = &pool.cluster {
            let slot = crate::routing::slots::key_slot(key.as_bytes());
            let map = maps
                .entry(pool.name.clone())
                .or_insert_with(|| cluster_map(&c.seeds));
            let owner = map
                .as_ref()
                .and_then(|m| m.shard(slot))
                .map_or("?".to_string(), |s| s.primary.clone());
            out.push_str(&format!("{key}\t{}\tslot {slot}\t{owner}\n", pool.name));
            continue;
        }
        let s = placement(pool)
            .server_for(key.as_bytes())
            .map(|i| &pool.servers[i])
            .ok_or("no server")?;
        let name = s.name.clone().unwrap_or_else(|| s.address());
        out.push_str(&format!("{key}\t{}\t{name}\t{}\n", pool.name, s.address()));
    }
    Ok(out)
}

/// Per pool present in both configs: the fraction of `sample` random keys whose server
/// (host:port) changes. Deterministic: the same keys are drawn every run.
pub fn diff(old: &Config, new: &Config, sample: usize) -> String {
    let mut rng = fastrand::Rng::with_seed(0x6b76_726f_7574_6572);
    let keys: Vec<Vec<u8>> = (0..sample)
        .map(|_| {
            let len = rng.usize(4..40);
            (0..len).map(|_| rng.u8(0x21..0x7f)).collect()
        })
        .collect();
    let mut out = String::new();
    for po in &old.pools {
        let Some(pn) = new.pool(&po.name) else {
            out.push_str(&format!("{}\tremoved\n", po.name));
            continue;
        };
        let (a, b) = (placement(po), placement(pn));
        let moved = keys
            .iter()
            .filter(|k| {
                let sa = a.server_for(k).map(|i| po.servers[i].address());
                let sb = b.server_for(k).map(|i| pn.servers[i].address());
                sa != sb
            })
            .count();
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
