//! Cut-over for Redis pools: nutcracker (`redis: true`) and kvrouter read the very same
//! nutcracker.yml (only the listen ports differ) in front of the same three redis-servers. Keys
//! written through nutcracker are all hits through kvrouter, for several hashes under ketama and
//! modula, with weights, a named server and hash tags.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;

use common::{free_port, kvrouter, nutcracker, redis_server, text, wait_port, Resp, TempDir};
use kvrouter::protocol::resp::encode_request;

const HASHES: &[&str] = &["fnv1a_64", "md5", "murmur", "crc32a", "hsieh"];
const DISTRIBUTIONS: &[&str] = &["ketama", "modula"];

/// Pipeline `cmds` and return the replies as text.
fn pipeline(addr: SocketAddr, cmds: &[Vec<String>]) -> Vec<String> {
    let mut c = Resp::connect(addr);
    let mut batch = Vec::new();
    for cmd in cmds {
        batch.extend_from_slice(&encode_request(cmd).raw);
    }
    c.send_raw(&batch);
    cmds.iter().map(|_| text(&c.read())).collect()
}

#[test]
fn keys_written_through_nutcracker_are_hits_through_kvrouter() {
    let dir = TempDir::new();
    let redis: Vec<common::Proc> = (0..3).map(|_| redis_server()).collect();
    let servers = format!(
        "    - {}:1\n    - {}:2 big\n    - {}:1\n",
        redis[0].addr, redis[1].addr, redis[2].addr
    );
    let combos: Vec<(&str, &str)> = HASHES
        .iter()
        .flat_map(|h| DISTRIBUTIONS.iter().map(move |d| (*h, *d)))
        .collect();
    // free_port is only free "a moment ago": retry with fresh ports if nutcracker cannot bind.
    let mut attempt = 0;
    let (listens, _nc, yaml) = loop {
        attempt += 1;
        let mut taken: HashSet<u16> = redis.iter().map(|r| r.addr.port()).collect();
        let listens: Vec<SocketAddr> = combos
            .iter()
            .map(|_| {
                let port = std::iter::repeat_with(free_port)
                    .find(|p| taken.insert(*p))
                    .unwrap();
                SocketAddr::from(([127, 0, 0, 1], port))
            })
            .collect();
        let mut yaml = String::new();
        for (i, ((hash, dist), listen)) in combos.iter().zip(&listens).enumerate() {
            yaml += &format!(
                "pool{i}:\n  listen: {listen}\n  redis: true\n  hash: {hash}\n  distribution: {dist}\n  hash_tag: \"{{}}\"\n  timeout: 5000\n  servers:\n{servers}"
            );
        }
        let started = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut nc = nutcracker(&dir, &yaml, listens[0]);
            for l in &listens {
                wait_port(*l, &mut nc.child);
            }
            nc
        }));
        match started {
            Ok(nc) => break (listens, nc, yaml),
            Err(e) if attempt >= 5 => std::panic::resume_unwind(e),
            Err(_) => eprintln!("nutcracker did not start (port taken?); retrying"),
        }
    };
    let kv_listens: Vec<SocketAddr> = listens
        .iter()
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let mut kv_yaml = yaml.clone();
    for (nc, kv) in listens.iter().zip(&kv_listens) {
        kv_yaml = kv_yaml.replace(&format!("listen: {nc}\n"), &format!("listen: {kv}\n"));
    }
    let mut kv = kvrouter(&dir, &kv_yaml, kv_listens[0]);
    for a in &kv_listens {
        wait_port(*a, &mut kv.child);
    }

    let mut rng = fastrand::Rng::with_seed(7);
    for (i, (hash, dist)) in combos.iter().enumerate() {
        let keys: Vec<String> = (0..300)
            .map(|n| {
                let len = rng.usize(1..24);
                let body: String = (0..len).map(|_| rng.alphanumeric()).collect();
                match n % 10 {
                    0 => format!("{{tag{}}}p{i}:{body}", n % 7),
                    _ => format!("p{i}:{body}:{n}"),
                }
            })
            .collect();
        let sets: Vec<Vec<String>> = keys
            .iter()
            .map(|k| vec!["SET".into(), k.clone(), format!("{hash}/{dist}/{k}")])
            .collect();
        assert!(pipeline(listens[i], &sets).iter().all(|r| r == "OK"));
        let gets: Vec<Vec<String>> = keys.iter().map(|k| vec!["GET".into(), k.clone()]).collect();
        let got = pipeline(kv_listens[i], &gets);
        for (k, v) in keys.iter().zip(&got) {
            assert_eq!(
                v,
                &format!("{hash}/{dist}/{k}"),
                "{hash} {dist}: {k} missed"
            );
        }
        // And the keys did spread over the servers (the comparison is not trivial).
        let spread = redis
            .iter()
            .filter(|r| {
                let mut c = Resp::connect(r.addr);
                keys.iter()
                    .any(|k| c.call(&["EXISTS", k.as_str()]) == common::Frame::Integer(1))
            })
            .count();
        assert_eq!(spread, 3, "{hash} {dist}");
    }
}
