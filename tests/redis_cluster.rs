//! kvrouter in front of a real Redis Cluster (six redis-server nodes on loopback, three
//! primaries with one replica each): slot routing, multi-key commands across slots, CROSSSLOT,
//! read_from replica, MOVED and ASK while a slot migrates under traffic, and failover.
//!
//! Each test starts its own cluster (the migration and failover tests change the topology).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, kvrouter, text, Frame, Proc, RedisCluster, Resp, TempDir};
use kvrouter::routing::slots::key_slot;

/// kvrouter with a cluster pool `c` (read_from primary) on one listener, a pool `r`
/// (`read_from`) on a second one, and `c` as the leaves of a route tree on a third one.
fn proxy(cluster: &RedisCluster, read_from: &str) -> (TempDir, Proc, SocketAddr, SocketAddr) {
    let dir = TempDir::new();
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let seed = cluster.seed();
    let yaml = format!(
        "workers: 2\npools:\n  c:\n    protocol: redis\n    timeout: 2s\n    cluster: {{ seeds: [\"{seed}\"] }}\n  r:\n    protocol: redis\n    timeout: 2s\n    cluster: {{ seeds: [\"127.0.0.1:1\", \"{seed}\"], read_from: {read_from} }}\nlisteners:\n  - {{ listen: 127.0.0.1:{p1}, protocol: redis, route: c }}\n  - {{ listen: 127.0.0.1:{p2}, protocol: redis, route: r }}\n  - {{ listen: 127.0.0.1:{p3}, protocol: redis, route: {{ prefix: {{ \"t:\": c, default: {{ failover: [c] }} }} }} }}\n"
    );
    let addr: SocketAddr = format!("127.0.0.1:{p1}").parse().unwrap();
    let proc_ = kvrouter(&dir, &yaml, addr);
    let second: SocketAddr = format!("127.0.0.1:{p2}").parse().unwrap();
    let tree: SocketAddr = format!("127.0.0.1:{p3}").parse().unwrap();
    (dir, proc_, second, tree)
}

fn info_stat(addr: SocketAddr, section: &str, field: &str) -> u64 {
    let mut c = Resp::connect(addr);
    let info = c.cmd(&format!("INFO {section}"));
    for line in info.lines() {
        if let Some(rest) = line.strip_prefix(field) {
            // cmdstat_get:calls=12,usec=...
            let rest = rest.trim_start_matches(':');
            let v = rest.split(',').next().unwrap().trim_start_matches("calls=");
            return v.trim().parse().unwrap();
        }
    }
    0
}

/// One test: routing of thousands of keys (checked on the owning node), slot calculation
/// against CLUSTER KEYSLOT, multi-key commands across slots, CROSSSLOT, transactions in one
/// slot, fan-out, and read_from replica.
#[test]
fn cluster_routing_multikey_and_replica_reads() {
    let cluster = RedisCluster::start(5000);
    let (dir, proxy, replica_listener, tree_listener) = proxy(&cluster, "replica");
    let mut c = Resp::connect(proxy.addr);

    // keymap: the slot, and its owner as a seed tells.
    let conf = dir.0.join(format!("kvrouter-{}.yml", proxy.addr.port()));
    let out = std::process::Command::new(common::kvrouter_bin())
        .args(["keymap", "-c"])
        .arg(&conf)
        .args(["foo", "{foo}bar"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (owner, _) = cluster.owner(cluster.seed(), 12182);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("foo\tc\tslot 12182\t{owner}\n{{foo}}bar\tc\tslot 12182\t{owner}\n")
    );

    // Slots: CRC16/XMODEM with hash tags, checked against the cluster for random binary keys.
    let mut direct = Resp::connect(cluster.seed());
    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for i in 0..2000 {
        let len = (next() % 24) as usize;
        let mut key: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 5 == 0 {
            // hash tags, empty tags, unbalanced braces
            let tags: [&[u8]; 4] = [b"{user1}", b"{}", b"{", b"}{x}"];
            key.extend_from_slice(tags[i % 4]);
            key.extend_from_slice(&(next() as u16).to_le_bytes());
        }
        let Frame::Integer(want) = direct.call(&[&b"CLUSTER"[..], b"KEYSLOT", &key]) else {
            panic!("CLUSTER KEYSLOT")
        };
        assert_eq!(key_slot(&key) as i64, want, "slot of {key:?}");
    }

    // Routing: every key written through the proxy lives on its slot's primary.
    let n = 3000;
    for i in 0..n {
        c.send(&["SET", &format!("key:{i}"), &format!("value:{i}")]);
    }
    for _ in 0..n {
        assert_eq!(text(&c.read()), "OK");
    }
    let slots = common::cluster_slots(cluster.seed());
    let mut conns: HashMap<SocketAddr, Resp> = HashMap::new();
    for i in 0..n {
        let key = format!("key:{i}");
        let slot = key_slot(key.as_bytes());
        let (_, _, nodes) = slots
            .iter()
            .find(|(a, b, _)| (*a..=*b).contains(&slot))
            .unwrap();
        let owner = conns
            .entry(nodes[0])
            .or_insert_with(|| Resp::connect(nodes[0]));
        assert_eq!(owner.cmd(&format!("GET {key}")), format!("value:{i}"));
    }
    // Through the proxy too, pipelined.
    for i in 0..n {
        c.send(&["GET", &format!("key:{i}")]);
    }
    for i in 0..n {
        assert_eq!(text(&c.read()), format!("value:{i}"));
    }

    // A route tree whose leaves are the cluster pool: keys reach their slot's owner too, and
    // multi-key commands across slots are split per slot and merged.
    let mut t = Resp::connect(tree_listener);
    for i in 0..200 {
        assert_eq!(t.cmd(&format!("SET t:{i} tree:{i}")), "OK");
        assert_eq!(c.cmd(&format!("GET t:{i}")), format!("tree:{i}"));
        assert_eq!(t.cmd(&format!("GET key:{i}")), format!("value:{i}"));
    }
    let tkeys: Vec<String> = (0..20).map(|i| format!("t:{i}")).collect();
    let want: Vec<String> = (0..20).map(|i| format!("tree:{i}")).collect();
    assert_eq!(
        t.cmd(&format!("MGET {}", tkeys.join(" "))),
        format!("[{}]", want.join(", "))
    );
    assert_eq!(t.cmd(&format!("DEL {}", tkeys.join(" "))), ":20");
    assert_eq!(t.cmd("GET t:1"), "(nil)");
    assert!(t.cmd("SUNIONSTORE t:dst t:a t:b").starts_with("-CROSSSLOT"));

    // Multi-key commands across slots are split per slot and merged.
    let keys: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    let mut mset = vec!["MSET".to_string()];
    for k in &keys {
        mset.push(k.clone());
        mset.push(format!("v-{k}"));
    }
    assert_eq!(text(&c.call(&mset)), "OK");
    let mut mget = vec!["MGET".to_string()];
    mget.extend(keys.iter().cloned());
    mget.push("missing-key".into());
    let Frame::Array(Some(vals)) = c.call(&mget) else {
        panic!("MGET")
    };
    assert_eq!(vals.len(), 51);
    for (k, v) in keys.iter().zip(&vals) {
        assert_eq!(text(v), format!("v-{k}"));
    }
    assert_eq!(text(&vals[50]), "(nil)");
    let mut exists = vec!["EXISTS".to_string()];
    exists.extend(keys.iter().cloned());
    exists.push("missing-key".into());
    assert_eq!(text(&c.call(&exists)), ":50");
    let mut del = vec!["DEL".to_string()];
    del.extend(keys.iter().take(10).cloned());
    assert_eq!(text(&c.call(&del)), ":10");
    assert_eq!(c.cmd("MSET {a}1 x {a}2 y"), "OK");
    assert_eq!(c.cmd("MGET {a}1 {a}2"), "[x, y]");

    // Commands that need one slot.
    assert_ne!(key_slot(b"m20"), key_slot(b"m21"));
    let e = c.cmd("RENAME m20 m21");
    assert_eq!(
        e, "-CROSSSLOT Keys in request don't hash to the same slot",
        "{e}"
    );
    assert!(text(&c.call(&["EVAL", "return 1", "2", "m20", "m21"])).starts_with("-CROSSSLOT"));
    assert_eq!(c.cmd("RENAME {a}1 {a}3"), "OK");
    assert_eq!(
        text(&c.call(&["EVAL", "return redis.call('get',KEYS[1])", "1", "{a}3"])),
        "x"
    );
    // Transactions: pinned to the slot's owner; keys of another slot abort it.
    assert_eq!(c.cmd("MULTI"), "OK");
    assert_eq!(c.cmd("INCR {t}n"), "QUEUED");
    assert_eq!(c.cmd("INCR {t}n"), "QUEUED");
    assert_eq!(c.cmd("EXEC"), "[:1, :2]");
    assert_eq!(c.cmd("MULTI"), "OK");
    assert_eq!(c.cmd("INCR {t}n"), "QUEUED");
    assert!(c.cmd("INCR {u}n").starts_with("-CROSSSLOT"));
    assert!(c.cmd("EXEC").starts_with("-EXECABORT"));
    assert_eq!(c.cmd("GET {t}n"), "2");
    // Blocking commands on the slot's owner.
    assert_eq!(c.cmd("RPUSH {q}list a"), ":1");
    assert_eq!(c.cmd("BLPOP {q}list 1"), "[{q}list, a]");
    // Fan-out over the primaries.
    let Frame::Integer(size) = c.call(&["DBSIZE"]) else {
        panic!("DBSIZE")
    };
    assert!(size >= n as i64 + 40, "{size}");
    let mut cursor = "0".to_string();
    let mut seen = 0;
    loop {
        let Frame::Array(Some(v)) = c.call(&["SCAN", &cursor, "COUNT", "500"]) else {
            panic!("SCAN")
        };
        cursor = text(&v[0]);
        if let Frame::Array(Some(keys)) = &v[1] {
            seen += keys.len();
        }
        if cursor == "0" {
            break;
        }
    }
    assert!(seen as i64 >= size, "SCAN saw {seen} of {size}");

    // read_from: replica — reads go to the replicas (READONLY connections), writes to the
    // primaries. The first seed of that pool is dead: the next one answers.
    let before: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| info_stat(n.addr, "commandstats", "cmdstat_get"))
        .collect();
    let mut r = Resp::connect(replica_listener);
    // Replication is asynchronous: wait until the replicas have the last key written above.
    common::wait_for(10, "replicas to catch up", || {
        (r.cmd(&format!("GET key:{}", n - 1)) == format!("value:{}", n - 1)).then_some(())
    });
    let reads = 600;
    for i in 0..reads {
        assert_eq!(r.cmd(&format!("GET key:{i}")), format!("value:{i}"));
    }
    assert_eq!(r.cmd("SET written-via-r 1"), "OK");
    let slots = common::cluster_slots(cluster.seed());
    let primaries: Vec<SocketAddr> = slots.iter().map(|(_, _, n)| n[0]).collect();
    let (mut on_primaries, mut on_replicas) = (0, 0);
    for (i, node) in cluster.nodes.iter().enumerate() {
        let d = info_stat(node.addr, "commandstats", "cmdstat_get") - before[i];
        if primaries.contains(&node.addr) {
            on_primaries += d;
        } else {
            on_replicas += d;
        }
    }
    assert!(
        on_replicas >= reads as u64,
        "replicas served {on_replicas} GETs"
    );
    // (Our own INFO calls are not GETs; the primaries served none of these reads.)
    assert_eq!(on_primaries, 0, "primaries served {on_primaries} GETs");

    // A replica that leaves the cluster (forgotten by every other node): once the slot map no
    // longer lists it, kvrouter closes its connections to it instead of keeping them forever.
    let replica = cluster
        .nodes
        .iter()
        .map(|n| n.addr)
        .find(|a| !primaries.contains(a) && *a != cluster.seed() && readonly_clients(*a) > 0)
        .expect("a replica holding kvrouter's READONLY connections");
    let id = cluster.node_id(replica);
    for node in cluster.nodes.iter().filter(|n| n.addr != replica) {
        assert_eq!(
            Resp::connect(node.addr).cmd(&format!("CLUSTER FORGET {id}")),
            "OK"
        );
    }
    common::wait_for(
        20,
        "kvrouter to close its connections to the departed replica",
        || {
            // Traffic keeps the slot map refreshing (every 5 s).
            assert_eq!(r.cmd("SET written-via-r 2"), "OK");
            std::thread::sleep(Duration::from_millis(100));
            (readonly_clients(replica) == 0).then_some(())
        },
    );
    assert_eq!(c.cmd("GET written-via-r"), "2");
}

/// Clients of `addr` that sent READONLY (kvrouter's replica read connections).
fn readonly_clients(addr: SocketAddr) -> usize {
    let list = Resp::connect(addr).cmd("CLIENT LIST");
    list.lines().filter(|l| l.contains(" flags=r ")).count()
}

/// A writer/reader that keeps going through the proxy while the topology changes; records
/// errors and wrong values. Keys are `{tag}:i` (all in the tag's slot) and `other:i`.
struct Traffic {
    stop: Arc<AtomicBool>,
    errors: Arc<Mutex<Vec<(Instant, String)>>>,
    /// When reads of the tag's slot succeeded.
    ok_after: Arc<Mutex<Vec<Instant>>>,
    written: Arc<Mutex<HashMap<String, String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(proxy: SocketAddr, tag: &str, clients: usize) -> Traffic {
        let t = Traffic {
            stop: Arc::new(AtomicBool::new(false)),
            errors: Arc::new(Mutex::new(Vec::new())),
            ok_after: Arc::new(Mutex::new(Vec::new())),
            written: Arc::new(Mutex::new(HashMap::new())),
            threads: Vec::new(),
        };
        let mut threads = Vec::new();
        for id in 0..clients {
            let (stop, errors, ok_after, written) = (
                t.stop.clone(),
                t.errors.clone(),
                t.ok_after.clone(),
                t.written.clone(),
            );
            let tag = tag.to_string();
            threads.push(std::thread::spawn(move || {
                let mut c = Resp::connect(proxy);
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    for i in 0..20 {
                        let key = if i % 4 == 3 {
                            format!("other:{id}:{i}")
                        } else {
                            format!("{{{tag}}}:{id}:{i}")
                        };
                        let value = format!("{key}={round}");
                        let r = c.call(&["SET", &key, &value]);
                        let now = Instant::now();
                        if text(&r) != "OK" {
                            errors
                                .lock()
                                .unwrap()
                                .push((now, format!("SET {key}: {}", text(&r))));
                            continue;
                        }
                        written.lock().unwrap().insert(key.clone(), value.clone());
                        let got = text(&c.call(&["GET", &key]));
                        if got != value {
                            // A value of another key would be misrouting; any other is an error.
                            errors
                                .lock()
                                .unwrap()
                                .push((Instant::now(), format!("GET {key}: {got} (want {value})")));
                        } else if i % 4 != 3 {
                            ok_after.lock().unwrap().push(Instant::now());
                        }
                    }
                }
            }));
        }
        Traffic { threads, ..t }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
    }
}

/// Move one slot from its primary to another with CLUSTER SETSLOT + MIGRATE (key by key, so
/// the migration window is long) while clients write and read keys of that slot through the
/// proxy: ASK during the migration, MOVED after it; no client-visible error, no lost write.
#[test]
fn cluster_slot_migration_under_traffic() {
    let cluster = RedisCluster::start(5000);
    let (_dir, proxy, _, _) = proxy(&cluster, "primary");
    let tag = "mig";
    let slot = key_slot(tag.as_bytes());
    let (src, _) = cluster.owner(cluster.seed(), slot);
    let slots = common::cluster_slots(cluster.seed());
    let dst = slots
        .iter()
        .map(|(_, _, n)| n[0])
        .find(|a| *a != src)
        .unwrap();
    let (src_id, dst_id) = (cluster.node_id(src), cluster.node_id(dst));
    // Keys of the slot to migrate, besides the ones the traffic writes.
    let mut c = Resp::connect(proxy.addr);
    for i in 0..300 {
        assert_eq!(c.cmd(&format!("SET {{{tag}}}:pre:{i} p{i}")), "OK");
    }

    let mut traffic = Traffic::start(proxy.addr, tag, 4);
    // Transactions on the migrating slot: MULTI/INCR/EXEC, and WATCH + MULTI/SET/EXEC (which
    // may answer nil: the transaction did not run).
    let tx_stop = Arc::new(AtomicBool::new(false));
    let tx_thread = {
        let stop = tx_stop.clone();
        let addr = proxy.addr;
        let tag = tag.to_string();
        std::thread::spawn(move || {
            let mut c = Resp::connect(addr);
            let (mut incrs, mut nils, mut watched, mut errors) = (0u64, 0u64, 0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(c.cmd("MULTI"), "OK");
                assert_eq!(c.cmd(&format!("INCR {{{tag}}}:counter")), "QUEUED");
                match c.call(&["EXEC"]) {
                    Frame::Array(Some(v)) if v.len() == 1 => incrs += 1,
                    other => errors.push(format!("EXEC: {}", text(&other))),
                }
                assert_eq!(c.cmd(&format!("WATCH {{{tag}}}:watched")), "OK");
                assert_eq!(c.cmd("MULTI"), "OK");
                assert_eq!(c.cmd(&format!("SET {{{tag}}}:watched {incrs}")), "QUEUED");
                match c.call(&["EXEC"]) {
                    Frame::Array(Some(v)) if v.len() == 1 => watched += 1,
                    Frame::Array(None) | Frame::Null => nils += 1,
                    other => errors.push(format!("WATCH EXEC: {}", text(&other))),
                }
            }
            (incrs, nils, watched, errors)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut s = Resp::connect(src);
    let mut d = Resp::connect(dst);
    assert_eq!(
        d.cmd(&format!("CLUSTER SETSLOT {slot} IMPORTING {src_id}")),
        "OK"
    );
    assert_eq!(
        s.cmd(&format!("CLUSTER SETSLOT {slot} MIGRATING {dst_id}")),
        "OK"
    );
    let mut moved = 0;
    let mut mid_checks = 0;
    loop {
        let Frame::Array(Some(keys)) =
            s.call(&["CLUSTER", "GETKEYSINSLOT", &slot.to_string(), "5"])
        else {
            panic!("GETKEYSINSLOT")
        };
        if keys.is_empty() {
            break;
        }
        let mut args: Vec<String> = vec![
            "MIGRATE".into(),
            dst.ip().to_string(),
            dst.port().to_string(),
            "".into(),
            "0".into(),
            "5000".into(),
            "KEYS".into(),
        ];
        args.extend(keys.iter().map(text));
        let r = text(&s.call(&args));
        assert!(r == "OK" || r == "NOKEY", "MIGRATE: {r}");
        moved += keys.len();
        // Mid-migration, a migrated key read through the proxy comes from the target (ASK).
        if mid_checks < 20 {
            for k in keys.iter().map(text).filter(|k| k.contains(":pre:")) {
                let i = k.rsplit(':').next().unwrap();
                assert_eq!(c.cmd(&format!("GET {k}")), format!("p{i}"));
                mid_checks += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(moved >= 300, "migrated {moved} keys");
    assert!(mid_checks > 0);
    for node in [dst, src] {
        let mut n = Resp::connect(node);
        assert_eq!(
            n.cmd(&format!("CLUSTER SETSLOT {slot} NODE {dst_id}")),
            "OK"
        );
    }
    for (_, _, nodes) in slots.iter() {
        if nodes[0] != src && nodes[0] != dst {
            let mut n = Resp::connect(nodes[0]);
            assert_eq!(
                n.cmd(&format!("CLUSTER SETSLOT {slot} NODE {dst_id}")),
                "OK"
            );
        }
    }
    // The proxy still believes src owns the slot until MOVED (or a refresh) tells it.
    std::thread::sleep(Duration::from_millis(500));
    traffic.stop();
    tx_stop.store(true, Ordering::Relaxed);
    let (incrs, nils, watched, tx_errors) = tx_thread.join().unwrap();
    assert!(
        tx_errors.is_empty(),
        "transaction errors: {:?}",
        &tx_errors[..tx_errors.len().min(5)]
    );
    assert!(incrs > 20, "{incrs} transactions ran");
    assert!(
        watched > 0,
        "WATCH transactions committed too ({nils} answered nil)"
    );
    assert_eq!(
        c.cmd(&format!("GET {{{tag}}}:counter")),
        incrs.to_string(),
        "every EXEC that answered ran exactly once"
    );
    eprintln!("transactions during the migration: {incrs} MULTI/INCR/EXEC; WATCH: {watched} committed, {nils} answered nil");
    let errors = traffic.errors.lock().unwrap();
    assert!(
        errors.is_empty(),
        "client-visible errors: {:?}",
        &errors[..errors.len().min(10)]
    );
    assert!(traffic.ok_after.lock().unwrap().len() > 100);
    // No lost write: every acknowledged value is there, read through the proxy and directly.
    let written = traffic.written.lock().unwrap();
    for (k, v) in written.iter() {
        assert_eq!(c.cmd(&format!("GET {k}")), *v);
    }
    for i in 0..300 {
        assert_eq!(d.cmd(&format!("GET {{{tag}}}:pre:{i}")), format!("p{i}"));
    }
    assert_eq!(cluster.owner(cluster.seed(), slot).0, dst);

    // A blocking command whose (empty) slot moved without the proxy noticing: the old owner
    // answers MOVED (the command did not run) and kvrouter sends it to the new owner.
    let (quiet, qslot) = empty_slot(&cluster, src, "q");
    move_empty_slot(qslot, &[dst, src], &dst_id);
    assert_eq!(d.cmd(&format!("RPUSH {{{quiet}}}:jobs job-1")), ":1");
    let moved_before = errorstat(src, "MOVED");
    assert_eq!(
        c.cmd(&format!("BLPOP {{{quiet}}}:jobs 2")),
        format!("[{{{quiet}}}:jobs, job-1]")
    );
    assert!(
        errorstat(src, "MOVED") > moved_before,
        "the proxy's first try went to the old owner"
    );

    // A shard channel subscription follows its slot: the old owner drops its channels when the
    // slot leaves (`sunsubscribe`), kvrouter subscribes again and follows the MOVED.
    let (chan_tag, cslot) = empty_slot(&cluster, src, "news");
    let channel = format!("{{{chan_tag}}}:updates");
    let mut sub = Resp::connect(proxy.addr);
    assert_eq!(
        sub.cmd(&format!("SSUBSCRIBE {channel}")),
        format!("[ssubscribe, {channel}, :1]")
    );
    assert_eq!(c.cmd(&format!("SPUBLISH {channel} before")), ":1");
    assert_eq!(text(&sub.read()), format!("[smessage, {channel}, before]"));
    move_empty_slot(cslot, &[dst, src], &dst_id);
    common::wait_for(10, "the subscription to move to the new owner", || {
        (c.cmd(&format!("SPUBLISH {channel} after")) == ":1").then_some(())
    });
    assert_eq!(text(&sub.read()), format!("[smessage, {channel}, after]"));
    assert_eq!(
        Resp::connect(dst).cmd(&format!("PUBSUB SHARDNUMSUB {channel}")),
        format!("[{channel}, :1]")
    );
}

/// A hash tag `PREFIXn` whose slot `owner` serves and holds no key.
fn empty_slot(cluster: &RedisCluster, owner: SocketAddr, prefix: &str) -> (String, u16) {
    let mut o = Resp::connect(owner);
    (0..)
        .map(|n| format!("{prefix}{n}"))
        .map(|t| {
            let slot = key_slot(t.as_bytes());
            (t, slot)
        })
        .find(|(_, slot)| {
            cluster.owner(owner, *slot).0 == owner
                && o.cmd(&format!("CLUSTER COUNTKEYSINSLOT {slot}")) == ":0"
        })
        .unwrap()
}

/// Give an empty slot to node `to_id` on `nodes` (the new owner first), behind the proxy's back.
fn move_empty_slot(slot: u16, nodes: &[SocketAddr], to_id: &str) {
    for node in nodes {
        assert_eq!(
            Resp::connect(*node).cmd(&format!("CLUSTER SETSLOT {slot} NODE {to_id}")),
            "OK"
        );
    }
}

/// `INFO errorstats`: how many replies of this error kind `addr` has sent.
fn errorstat(addr: SocketAddr, kind: &str) -> u64 {
    let info = Resp::connect(addr).cmd("INFO errorstats");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("errorstat_{kind}:count=")))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// SIGKILL a primary under traffic: requests to its slots fail (clear errors, within the
/// timeout) until the cluster promotes its replica, then succeed again; no value is ever read
/// from the wrong key. Prints the recovery time.
#[test]
fn cluster_failover_under_traffic() {
    let cluster = RedisCluster::start(2000);
    let (_dir, proxy, _, _) = proxy(&cluster, "primary");
    let tag = "fo";
    let slot = key_slot(tag.as_bytes());
    let (victim, replicas) = cluster.owner(cluster.seed(), slot);
    let mut traffic = Traffic::start(proxy.addr, tag, 2);
    std::thread::sleep(Duration::from_millis(500));
    let idx = cluster.index_of(victim);
    common::signal(&cluster.nodes[idx], libc::SIGKILL);
    let killed = Instant::now();
    // Wait until a request to the victim's slot succeeds again after the kill.
    let survivor = cluster
        .nodes
        .iter()
        .map(|n| n.addr)
        .find(|a| *a != victim)
        .unwrap();
    let recovered = common::wait_for(30, "requests to succeed after the failover", || {
        traffic
            .ok_after
            .lock()
            .unwrap()
            .iter()
            .filter(|t| **t > killed)
            .count()
            .gt(&200)
            .then(Instant::now)
    });
    std::thread::sleep(Duration::from_millis(1000));
    traffic.stop();
    let errors = traffic.errors.lock().unwrap();
    let last_error = errors.iter().map(|(t, _)| *t).max();
    // Recovered for good: the victim's slot kept answering after the last error.
    if let Some(last) = last_error {
        let ok = traffic.ok_after.lock().unwrap();
        assert!(
            ok.iter().filter(|t| **t > last).count() > 50,
            "no recovery after the last error"
        );
    }
    let recovery = last_error.map_or(Duration::ZERO, |t| t.saturating_duration_since(killed));
    eprintln!(
        "failover: {} errors, last {:.2}s after SIGKILL; traffic flowing {:.2}s after",
        errors.len(),
        recovery.as_secs_f64(),
        recovered.duration_since(killed).as_secs_f64()
    );
    let mut kinds: Vec<&str> = errors.iter().map(|(_, e)| e.as_str()).collect();
    kinds.truncate(3);
    eprintln!("failover: first errors: {kinds:?}");
    for (_, e) in errors.iter() {
        // Errors are clear errors, never another key's value.
        assert!(
            !e.contains("GET") || e.contains(": -"),
            "a read returned a wrong value: {e}"
        );
    }
    assert!(
        recovery < Duration::from_secs(15),
        "recovery took {recovery:?}"
    );
    let (now_primary, _) = cluster.owner(survivor, slot);
    assert!(replicas.contains(&now_primary), "the replica was promoted");
}

/// Hot keys on a cluster pool: a hot key is served from the local cache (writes through the
/// proxy never followed by an old read), and split copies of a hash-tagged key land in other
/// slots (the suffix goes inside the tag), so its reads spread over several primaries.
#[test]
fn cluster_hot_keys_cache_and_split_across_nodes() {
    let cluster = RedisCluster::start(5000);
    let dir = TempDir::new();
    let (p1, p2) = (free_port(), free_port());
    let seed = cluster.seed();
    let yaml = format!(
        "workers: 1\npools:\n  c:\n    protocol: redis\n    timeout: 2s\n    cluster: {{ seeds: [\"{seed}\"] }}\nlisteners:\n  - {{ listen: 127.0.0.1:{p1}, protocol: redis, route: c, hot_keys: {{ threshold: 200/s, local_cache: {{ ttl: 500ms, capacity: 100 }} }} }}\n  - {{ listen: 127.0.0.1:{p2}, protocol: redis, route: c, hot_keys: {{ threshold: 200/s, split: 8 }} }}\n"
    );
    let cached: SocketAddr = format!("127.0.0.1:{p1}").parse().unwrap();
    let split: SocketAddr = format!("127.0.0.1:{p2}").parse().unwrap();
    let _proxy = kvrouter(&dir, &yaml, cached);
    let gets = |addrs: &[SocketAddr]| -> Vec<u64> {
        addrs
            .iter()
            .map(|a| info_stat(*a, "commandstats", "cmdstat_get"))
            .collect()
    };
    let heat = |c: &mut Resp, key: &str, want: &str| {
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            for _ in 0..200 {
                assert_eq!(c.cmd(&format!("GET {key}")), want);
            }
        }
    };
    let slots = common::cluster_slots(seed);
    let primaries: Vec<SocketAddr> = slots.iter().map(|(_, _, n)| n[0]).collect();

    // Local cache.
    let mut c = Resp::connect(cached);
    assert_eq!(c.cmd("SET celebrity v0"), "OK");
    heat(&mut c, "celebrity", "v0");
    let before: u64 = gets(&primaries).iter().sum();
    for _ in 0..300 {
        assert_eq!(c.cmd("GET celebrity"), "v0");
    }
    let after: u64 = gets(&primaries).iter().sum();
    assert!(
        after - before <= 3,
        "300 reads cost {} backend GETs",
        after - before
    );
    for i in 1..20 {
        assert_eq!(c.cmd(&format!("SET celebrity v{i}")), "OK");
        assert_eq!(c.cmd("GET celebrity"), format!("v{i}"));
    }

    // Split copies of a hash-tagged key: the suffix goes inside the tag, so copies change slot.
    let key = "{user42}:profile";
    let mut s = Resp::connect(split);
    assert_eq!(s.cmd(&format!("SET {key} shine")), "OK");
    heat(&mut s, key, "shine");
    let before = gets(&primaries);
    for _ in 0..600 {
        assert_eq!(s.cmd(&format!("GET {key}")), "shine", "no false miss");
    }
    let after = gets(&primaries);
    let serving = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| *a - *b > 30)
        .count();
    let copies: Vec<String> = primaries
        .iter()
        .map(|p| Resp::connect(*p).cmd("KEYS *copy*"))
        .collect();
    assert!(
        serving >= 2,
        "reads spread over primaries: {before:?} -> {after:?}; copies {copies:?}"
    );
    // A write reaches the original and removes every copy before it is acknowledged: the
    // next reads see it.
    assert_eq!(s.cmd(&format!("SET {key} dim")), "OK");
    for p in &primaries {
        assert_eq!(Resp::connect(*p).cmd("KEYS *copy*"), "[]", "copies deleted");
    }
    for _ in 0..100 {
        assert_eq!(s.cmd(&format!("GET {key}")), "dim");
    }
}
