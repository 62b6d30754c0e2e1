//! Unit tests: defaults of both formats, and one test per error class asserting the exact
//! `line:col: reason`. A stub resolver keeps them off the network.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

fn stub_resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    match host {
        "localhost" => Ok(SocketAddr::from(([127, 0, 0, 1], port))),
        h => h
            .parse::<IpAddr>()
            .map(|ip| SocketAddr::new(ip, port))
            .map_err(|_| format!("cannot resolve '{h}': unknown host")),
    }
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse_with(Path::new("t.yml"), text, &stub_resolve)
}

fn ok(text: &str) -> Config {
    parse(text).unwrap_or_else(|e| panic!("{e}"))
}

/// The error as `LINE:COL: reason`.
fn err(text: &str) -> String {
    let e = parse(text).expect_err("config should be refused");
    let full = e.to_string();
    assert!(full.starts_with("t.yml:"), "{full}");
    full["t.yml:".len()..].to_string()
}

const TW: &str = "\
alpha:
  listen: 127.0.0.1:22121
  servers:
    - 127.0.0.1:11211:1
";

#[test]
fn twemproxy_defaults() {
    let c = ok(TW);
    assert_eq!(c.format, Format::Twemproxy);
    assert_eq!(c.admin, None);
    assert_eq!(c.workers, None);
    let p = &c.pools[0];
    assert_eq!(p.name, "alpha");
    assert_eq!(p.protocol, Protocol::Memcache);
    assert_eq!(p.hash, HashKind::Fnv1a_64);
    assert_eq!(p.distribution, DistributionKind::Ketama);
    assert_eq!(p.hash_tag, None);
    assert_eq!(p.timeout, None);
    assert_eq!(p.connections, 1);
    assert!(!p.auto_eject_hosts);
    assert_eq!(p.failure_limit, 2);
    assert_eq!(p.retry_timeout, Duration::from_millis(30_000));
    assert!(!p.preconnect && !p.tcpkeepalive);
    assert_eq!(p.item_size_max, 1 << 20);
    assert_eq!((p.redis_auth.clone(), p.redis_db), (None, 0));
    assert_eq!(p.location, Location { line: 1, col: 1 });
    let s = &p.servers[0];
    assert_eq!(
        (s.host.as_str(), s.port, s.weight, s.name.clone()),
        ("127.0.0.1", 11211, 1, None)
    );
    assert_eq!(s.placement_name(), "127.0.0.1");
    assert_eq!(s.location, Location { line: 4, col: 7 });
    let l = &c.listeners[0];
    assert_eq!(
        l.listen,
        ListenAddr::Tcp("127.0.0.1:22121".parse().unwrap())
    );
    assert_eq!(l.protocol, Protocol::Memcache);
    assert_eq!(
        l.route,
        Route::Pool {
            name: "alpha".into(),
            location: Location { line: 1, col: 1 }
        }
    );
    assert_eq!((l.backlog, l.max_clients, l.reuseport), (512, 0, false));
    assert_eq!(l.location, Location { line: 2, col: 11 });
}

#[test]
fn twemproxy_every_key() {
    let c = ok("\
alpha:
  listen: localhost:22121
  hash: murmur
  hash_tag: \"{}\"
  distribution: modula
  timeout: 400
  backlog: 1024
  client_connections: 100
  redis: true
  tcpkeepalive: true
  reuseport: true
  redis_auth: secret
  redis_db: 3
  preconnect: true
  auto_eject_hosts: true
  server_connections: 2
  server_retry_timeout: 5000
  server_failure_limit: 4
  servers:
    - 10.0.0.1:6379:2 r1
    - cache.example:6380:1
    - /var/run/redis.sock:1
");
    let p = &c.pools[0];
    assert_eq!(p.protocol, Protocol::Redis);
    assert_eq!(p.hash, HashKind::Murmur);
    assert_eq!(p.hash_tag, Some(*b"{}"));
    assert_eq!(p.distribution, DistributionKind::Modula);
    assert_eq!(p.timeout, Some(Duration::from_millis(400)));
    assert_eq!(p.connections, 2);
    assert!(p.auto_eject_hosts && p.preconnect && p.tcpkeepalive);
    assert_eq!(p.failure_limit, 4);
    assert_eq!(p.retry_timeout, Duration::from_secs(5));
    assert_eq!((p.redis_auth.as_deref(), p.redis_db), (Some("secret"), 3));
    let names: Vec<String> = p.servers.iter().map(|s| s.placement_name()).collect();
    assert_eq!(names, ["r1", "cache.example:6380", "/var/run/redis.sock:"]);
    assert_eq!(p.servers[2].address(), "/var/run/redis.sock");
    let l = &c.listeners[0];
    assert_eq!(
        l.listen,
        ListenAddr::Tcp("127.0.0.1:22121".parse().unwrap())
    );
    assert_eq!(
        (l.protocol, l.backlog, l.max_clients, l.reuseport),
        (Protocol::Redis, 1024, 100, true)
    );
}

#[test]
fn twemproxy_timeout_zero_waits_forever() {
    let c = ok(&TW.replace("  servers:", "  timeout: 0\n  servers:"));
    assert_eq!(c.pools[0].timeout, None);
}

#[test]
fn twemproxy_unix_listen() {
    let c = ok(&TW.replace("127.0.0.1:22121", "/tmp/nc.sock 0666"));
    assert_eq!(
        c.listeners[0].listen,
        ListenAddr::Unix {
            path: "/tmp/nc.sock".into(),
            mode: Some(0o666)
        }
    );
    let c = ok(&TW.replace("127.0.0.1:22121", "/tmp/nc.sock"));
    assert_eq!(
        c.listeners[0].listen,
        ListenAddr::Unix {
            path: "/tmp/nc.sock".into(),
            mode: None
        }
    );
}

#[test]
fn every_hash_name() {
    for kind in crate::routing::HashKind::ALL {
        let name = kind.name();
        let c = ok(&TW.replace("  servers:", &format!("  hash: {name}\n  servers:")));
        assert_eq!(c.pools[0].hash, kind);
    }
}

#[test]
fn pools_keep_file_order() {
    let text = format!(
        "{TW}{}",
        TW.replace("alpha", "zeta").replace("22121", "22122")
    );
    let c = ok(&text.replace("alpha", "omega"));
    let names: Vec<&str> = c.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["omega", "zeta"]);
}

// ---- twemproxy errors -------------------------------------------------------------------

#[test]
fn tw_unknown_key() {
    assert_eq!(
        err(&TW.replace("  servers:", "  bogus: 1\n  servers:")),
        "3:3: unknown field `bogus`, expected one of listen, hash, hash_tag, distribution, timeout, backlog, client_connections, redis, tcpkeepalive, reuseport, redis_auth, redis_db, preconnect, auto_eject_hosts, server_connections, server_retry_timeout, server_failure_limit, servers"
    );
}

#[test]
fn tw_bad_number() {
    assert_eq!(
        err(&TW.replace("  servers:", "  timeout: 1s\n  servers:")),
        "3:12: timeout: '1s' is not a number"
    );
    assert_eq!(
        err(&TW.replace("  servers:", "  backlog: -1\n  servers:")),
        "3:12: backlog: '-1' is not a number"
    );
}

#[test]
fn tw_bad_bool() {
    assert_eq!(
        err(&TW.replace("  servers:", "  redis: yes\n  servers:")),
        "3:10: redis: 'yes' is not \"true\" or \"false\""
    );
}

#[test]
fn tw_bad_type() {
    assert_eq!(
        err(&TW.replace("  servers:", "  hash: [md5]\n  servers:")),
        "3:9: expected string scalar"
    );
}

#[test]
fn tw_bad_hash_and_distribution_and_tag() {
    assert_eq!(
        err(&TW.replace("  servers:", "  hash: sha1\n  servers:")),
        "3:9: unknown hash 'sha1', expected one of one_at_a_time, md5, crc16, crc32, crc32a, fnv1_64, fnv1a_64, fnv1_32, fnv1a_32, hsieh, murmur, jenkins"
    );
    assert_eq!(
        err(&TW.replace("  servers:", "  distribution: vnode\n  servers:")),
        "3:17: unknown distribution 'vnode', expected one of ketama, modula, random"
    );
    assert_eq!(
        err(&TW.replace("  servers:", "  hash_tag: \"{\"\n  servers:")),
        "3:13: invalid hash_tag '{': must be exactly two characters, e.g. \"{}\""
    );
}

#[test]
fn tw_missing_listen_and_servers() {
    assert_eq!(
        err("alpha:\n  servers: [\"127.0.0.1:11211:1\"]\n"),
        "1:1: pool 'alpha': missing `listen`"
    );
    assert_eq!(
        err("alpha:\n  listen: 127.0.0.1:1\n"),
        "1:1: pool 'alpha' has no servers"
    );
    assert_eq!(
        err("alpha:\n  listen: 127.0.0.1:1\n  servers: []\n"),
        "3:12: pool 'alpha' has no servers"
    );
}

#[test]
fn tw_bad_listen() {
    assert_eq!(
        err(&TW.replace("127.0.0.1:22121", "127.0.0.1")),
        "2:11: invalid listen address '127.0.0.1': expected \"host:port\" or a unix socket path"
    );
    assert_eq!(
        err(&TW.replace("127.0.0.1:22121", "127.0.0.1:0")),
        "2:11: invalid port in listen address '127.0.0.1:0'"
    );
    assert_eq!(
        err(&TW.replace("127.0.0.1:22121", "/tmp/x.sock 0999")),
        "2:11: invalid permission '0999' in \"socket_path permission\" '/tmp/x.sock 0999' (octal, at most 0777)"
    );
    assert_eq!(
        err(&TW.replace("127.0.0.1:22121", "nowhere.invalid:22121")),
        "2:11: cannot resolve 'nowhere.invalid': unknown host"
    );
}

#[test]
fn tw_bad_servers() {
    let with = |s: &str| err(&TW.replace("127.0.0.1:11211:1", s));
    assert_eq!(
        with("127.0.0.1:11211"),
        "4:7: invalid server '127.0.0.1:11211': expected \"host:port:weight [name]\" or \"/path/unix_socket:weight [name]\""
    );
    assert_eq!(
        with("127.0.0.1:11211:0"),
        "4:7: zero weight in server '127.0.0.1:11211:0': weight must be at least 1"
    );
    assert_eq!(
        with("127.0.0.1:11211:x"),
        "4:7: invalid weight in server '127.0.0.1:11211:x'"
    );
    assert_eq!(
        with("127.0.0.1:99999:1"),
        "4:7: invalid port in server '127.0.0.1:99999:1'"
    );
    assert_eq!(with(":11211:1"), "4:7: invalid host in server ':11211:1'");
    assert_eq!(with("/tmp/mc.sock"), "4:7: invalid server '/tmp/mc.sock': expected \"host:port:weight [name]\" or \"/path/unix_socket:weight [name]\"");
}

#[test]
fn tw_duplicate_servers() {
    // Unnamed: host:port (or host for 11211) must differ.
    assert_eq!(
        err(&TW.replace(
            "    - 127.0.0.1:11211:1\n",
            "    - 127.0.0.1:11211:1\n    - 127.0.0.1:11211:2\n"
        )),
        "5:7: pool 'alpha' has two servers named '127.0.0.1' (the other is at line 4)"
    );
    // Named: only the names count.
    assert_eq!(
        err(&TW.replace(
            "    - 127.0.0.1:11211:1\n",
            "    - 127.0.0.1:11211:1 a\n    - 127.0.0.1:11212:1 a\n"
        )),
        "5:7: pool 'alpha' has two servers named 'a' (the other is at line 4)"
    );
    // Same address under different names is fine (twemproxy agrees).
    ok(&TW.replace(
        "    - 127.0.0.1:11211:1\n",
        "    - 127.0.0.1:11211:1 a\n    - 127.0.0.1:11211:1 b\n",
    ));
}

#[test]
fn tw_duplicate_listen_and_pool_names() {
    let two = format!("{TW}{}", TW.replace("alpha", "beta"));
    assert_eq!(
        err(&two),
        "6:11: listen address 127.0.0.1:22121 is already used at line 2"
    );
    let same = format!("{TW}{}", TW.replace("22121", "22122"));
    assert_eq!(err(&same), "5:1: duplicate key `alpha`");
}

#[test]
fn tw_server_connections_zero() {
    assert_eq!(
        err(&TW.replace("  servers:", "  server_connections: 0\n  servers:")),
        "3:23: server_connections: cannot be 0"
    );
}

#[test]
fn empty_and_non_mapping_documents() {
    assert_eq!(err(""), "1:1: no pools configured");
    assert_eq!(err("# only a comment\n"), "1:1: no pools configured");
    assert_eq!(err("- a\n"), "1:1: expected mapping start");
    assert_eq!(err("alpha: 3\n"), "1:8: expected mapping start");
}

#[test]
fn bad_yaml_syntax_has_a_location() {
    let e = err("alpha:\n  listen: [1\n");
    assert!(e.starts_with("2:") || e.starts_with("3:"), "{e}");
}

// ---- native format ----------------------------------------------------------------------

const NATIVE: &str = "\
pools:
  users:
    protocol: memcache
    servers: [\"127.0.0.1:11211:1 mc-a\", \"127.0.0.1:11212:1 mc-b\"]
listeners:
  - listen: 127.0.0.1:11311
    protocol: memcache
    route: users
";

#[test]
fn native_defaults() {
    let c = ok(NATIVE);
    assert_eq!(c.format, Format::Native);
    assert_eq!((c.admin, c.workers), (None, None));
    let p = &c.pools[0];
    assert_eq!(p.protocol, Protocol::Memcache);
    assert_eq!(p.hash, HashKind::Fnv1a_64);
    assert_eq!(p.distribution, DistributionKind::Ketama);
    assert_eq!(p.timeout, Some(Duration::from_secs(1)));
    assert_eq!(p.connections, 1);
    assert_eq!(p.failure_limit, 3);
    assert_eq!(p.retry_timeout, Duration::from_secs(10));
    assert!(!p.auto_eject_hosts && !p.preconnect && !p.tcpkeepalive);
    assert_eq!(p.item_size_max, 1_048_576);
    assert_eq!(p.location, Location { line: 2, col: 3 });
    assert_eq!(p.servers[1].name.as_deref(), Some("mc-b"));
    let l = &c.listeners[0];
    assert_eq!(
        l.route,
        Route::Pool {
            name: "users".into(),
            location: Location { line: 8, col: 12 }
        }
    );
    assert_eq!((l.backlog, l.max_clients, l.reuseport), (512, 0, false));
    assert_eq!(l.location, Location { line: 6, col: 13 });
}

#[test]
fn native_every_key() {
    let c = ok("\
admin: { listen: 127.0.0.1:9292 }
workers: 4
pools:
  s:
    protocol: redis
    distribution: random
    hash: crc32a
    hash_tag: \"{}\"
    servers: [\"127.0.0.1:6379:1\"]
    timeout: 200ms
    connections: 2
    failure_limit: 5
    retry_timeout: 1m
    auto_eject_hosts: true
    preconnect: true
    tcpkeepalive: true
    item_size_max: 2097152
    redis_auth: pw
    redis_db: 1
    allow_commands: [FLUSHALL, keys, flushall]
listeners:
  - { listen: /tmp/kv.sock 0600, protocol: redis, route: { pool: s }, max_clients: 9, backlog: 64, reuseport: true }
");
    assert_eq!(c.admin, Some("127.0.0.1:9292".parse().unwrap()));
    assert_eq!(c.workers, Some(4));
    let p = &c.pools[0];
    assert_eq!(
        (p.protocol, p.distribution, p.hash),
        (Protocol::Redis, DistributionKind::Random, HashKind::Crc32a)
    );
    assert_eq!(p.timeout, Some(Duration::from_millis(200)));
    assert_eq!((p.connections, p.failure_limit), (2, 5));
    assert_eq!(p.retry_timeout, Duration::from_secs(60));
    assert_eq!(p.item_size_max, 2 << 20);
    assert_eq!(p.allow_commands, ["flushall", "keys"]);
    let l = &c.listeners[0];
    assert_eq!(
        l.listen,
        ListenAddr::Unix {
            path: "/tmp/kv.sock".into(),
            mode: Some(0o600)
        }
    );
    assert_eq!((l.max_clients, l.backlog, l.reuseport), (9, 64, true));
    assert_eq!(
        l.route,
        Route::Pool {
            name: "s".into(),
            location: Location { line: 22, col: 66 }
        }
    );
}

#[test]
fn native_design_example_routes_parse_into_trees() {
    let c = ok("\
pools:
  users: { protocol: memcache, servers: [\"127.0.0.1:11211:1\"] }
  users-gutter: { protocol: memcache, servers: [\"127.0.0.1:11221:1\"] }
listeners:
  - listen: 127.0.0.1:11311
    protocol: memcache
    route:
      failover: [users, { gutter: users-gutter, max_ttl: 10s }]
  - listen: 127.0.0.1:11312
    protocol: memcache
    route:
      failover: { children: [users, users-gutter], limit: 1, on: [timeout, tko], writes: false }
  - listen: 127.0.0.1:11313
    protocol: memcache
    route: { prefix: { \"a:\": users, default: { pool: users-gutter } } }
  - listen: 127.0.0.1:11314
    protocol: memcache
    route: { operation: { get: users, set: { all_sync: [users, users-gutter], reply: all_ok }, default: users } }
  - listen: 127.0.0.1:11315
    protocol: memcache
    route: { shadow: { route: users, shadow: users-gutter, fraction: 0.1 } }
  - listen: 127.0.0.1:11316
    protocol: memcache
    route: { warm_up: { cold: users, warm: users-gutter, exptime: 30s } }
");
    let handles: Vec<&str> = c.listeners.iter().map(|l| l.route.handle()).collect();
    assert_eq!(
        handles,
        [
            "failover",
            "failover",
            "prefix",
            "operation",
            "shadow",
            "warm_up"
        ]
    );
    let pool = |n: &str, line, col| Route::Pool {
        name: n.into(),
        location: Location { line, col },
    };
    assert_eq!(
        c.listeners[0].route,
        Route::Failover {
            children: vec![
                pool("users", 8, 18),
                Route::Gutter {
                    pool: "users-gutter".into(),
                    max_ttl: Duration::from_secs(10),
                    location: Location { line: 8, col: 27 },
                },
            ],
            limit: None,
            on: FailoverOn::default(),
            writes: true,
            location: Location { line: 8, col: 7 }
        }
    );
    let Route::Failover {
        limit, on, writes, ..
    } = &c.listeners[1].route
    else {
        panic!("failover")
    };
    assert_eq!((*limit, *writes), (Some(1), false));
    assert!(on.timeout && on.tko && !on.refused && !on.server_error);
    let Route::Prefix {
        prefixes, default, ..
    } = &c.listeners[2].route
    else {
        panic!("prefix")
    };
    assert_eq!(prefixes[0].0, "a:");
    assert!(default.is_some());
    let Route::Shadow { fraction, .. } = &c.listeners[4].route else {
        panic!("shadow")
    };
    assert_eq!(*fraction, 0.1);
    let Route::WarmUp { exptime, .. } = &c.listeners[5].route else {
        panic!("warm_up")
    };
    assert_eq!(*exptime, Duration::from_secs(30));
    assert_eq!(c.listeners[0].route.pools(), vec!["users", "users-gutter"]);
}

#[test]
fn gutter_outside_failover_and_incomplete_routes_are_refused() {
    let base = "\
pools:
  a: { protocol: memcache, servers: [\"127.0.0.1:11211:1\"] }
  b: { protocol: memcache, servers: [\"127.0.0.1:11212:1\"] }
listeners:
  - listen: 127.0.0.1:11311
    protocol: memcache
    route: ";
    for (route, want) in [
        ("{ gutter: b }", "`gutter` is a failover child"),
        ("{ operation: { get: a } }", "needs a `default` route"),
        ("{ shadow: { route: a } }", "`shadow` needs `shadow`"),
        ("{ failover: { limit: 2 } }", "needs `children"),
        ("{ failover: { children: [a], limit: 0 } }", "at least 1"),
        ("{ all_sync: [] }", "at least one route"),
    ] {
        let err = Config::parse(Path::new("r.yml"), &format!("{base}{route}\n")).unwrap_err();
        assert!(err.reason.contains(want), "{route}: {err}");
        assert_eq!(err.location.line, 7, "{route}: {err}");
    }
}

const NATIVE_TWO_POOLS: &str = "\
pools:
  users:
    protocol: memcache
    servers: [\"127.0.0.1:11211:1\"]
  sessions:
    protocol: redis
    servers: [\"127.0.0.1:6379:1\"]
listeners:
  - listen: 127.0.0.1:11311
    protocol: memcache
    route: users
";

#[test]
fn native_route_errors() {
    let with = |route: &str| err(&NATIVE_TWO_POOLS.replace("route: users", route));
    assert_eq!(with("route: nobody"), "11:12: unknown pool 'nobody'");
    assert_eq!(
        with("route: { pool: nobody }"),
        "11:20: unknown pool 'nobody'"
    );
    assert_eq!(
        with("route: sessions"),
        "11:12: pool 'sessions' speaks redis, but this listener speaks memcache"
    );
    assert_eq!(
        with("route: { failover: [users, { gutter: nobody }] }"),
        "11:42: unknown pool 'nobody'"
    );
    assert_eq!(
        with("route: { teleport: users }"),
        "11:14: unknown route handle `teleport`, expected one of pool, failover, gutter, prefix, operation, all_sync, shadow, warm_up"
    );
    assert_eq!(
        with("route: { pool: users, extra: 1 }"),
        "11:27: unexpected key `extra` in a `pool` route"
    );
    assert_eq!(
        with("route: { failover: [users, { gutter: users, max_ttl: soon }] }"),
        "11:58: invalid duration 'soon': expected a number and a unit (us, ms, s, m, h), e.g. 200ms"
    );
    assert_eq!(
        with("route: [users]"),
        "11:12: expected a route (a pool name or a mapping), found a list"
    );
    assert_eq!(
        with("route: { operation: { get: users, put: users } }"),
        "11:39: unexpected key `put` in `operation` (get, set, delete, default)"
    );
}

#[test]
fn native_duplicate_listeners() {
    let text =
        format!("{NATIVE}  - listen: 127.0.0.1:11311\n    protocol: memcache\n    route: users\n");
    assert_eq!(
        err(&text),
        "9:13: listen address 127.0.0.1:11311 is already used at line 6"
    );
}

#[test]
fn native_unknown_keys() {
    assert_eq!(
        err(&format!("bogus: 1\n{NATIVE}")),
        "1:1: unknown field `bogus`, expected one of admin, workers, log, pools, listeners"
    );
    assert!(err(&NATIVE.replace(
        "    protocol: memcache\n    servers",
        "    protocol: memcache\n    wieght: 1\n    servers"
    ))
    .starts_with("4:5: unknown field `wieght`, expected one of protocol,"));
    assert!(
        err(&NATIVE.replace("    route: users", "    route: users\n    colour: red"))
            .starts_with("9:5: unknown field `colour`, expected one of listen,")
    );
}

#[test]
fn native_reserved_keys_are_refused() {
    assert_eq!(
        err(&NATIVE.replace(
            "    protocol: memcache\n    servers",
            "    protocol: memcache\n    cluster: { seeds: [\"127.0.0.1:7000\"] }\n    servers"
        )),
        "4:14: `cluster` applies to redis pools only"
    );
}

#[test]
fn hot_keys_per_listener() {
    assert_eq!(ok(NATIVE).listeners[0].hot_keys, None);
    let with = |h: &str| {
        NATIVE.replace(
            "    route: users",
            &format!("    route: users\n    hot_keys: {h}"),
        )
    };
    let c = ok(&with(
        "{ threshold: 2000/s, local_cache: { ttl: 200ms, capacity: 10000 }, split: 8 }",
    ));
    let h = c.listeners[0].hot_keys.as_ref().unwrap();
    assert_eq!(h.threshold, 2000.0);
    assert_eq!(
        h.local_cache,
        Some(LocalCacheConfig {
            ttl: Duration::from_millis(200),
            capacity: 10000
        })
    );
    assert_eq!(h.split, Some(8));
    let v = c.to_json_redacted();
    assert_eq!(v["listeners"][0]["hot_keys"]["split"], 8);
    assert_eq!(v["listeners"][0]["hot_keys"]["local_cache"]["ttl_ms"], 200);
    // Detection only, and a per-minute rate.
    let h = ok(&with("{ threshold: 600/m }")).listeners[0]
        .hot_keys
        .clone()
        .unwrap();
    assert_eq!((h.threshold, h.local_cache, h.split), (10.0, None, None));
    // Every mistake is located.
    assert_eq!(
        err(&with("{ split: 8 }")),
        "9:15: `hot_keys` needs a `threshold`, e.g. 2000/s"
    );
    assert_eq!(
        err(&with("{ threshold: 2000 }")),
        "9:28: invalid rate '2000': expected a number per second or minute, e.g. 2000/s"
    );
    assert_eq!(
        err(&with("{ threshold: 0/s }")),
        "9:28: invalid rate '0/s': must be more than 0"
    );
    assert_eq!(
        err(&with("{ threshold: 10/s, split: 1 }")),
        "9:41: `split` must be between 2 and 64"
    );
    assert_eq!(
        err(&with(
            "{ threshold: 10/s, local_cache: { ttl: 0ms, capacity: 5 } }"
        )),
        "9:54: `ttl` must be more than 0"
    );
    assert_eq!(
        err(&with("{ threshold: 10/s, local_cache: { ttl: 1s } }")),
        "9:47: `local_cache` needs a `capacity` (entries)"
    );
    assert!(
        err(&with("{ threshold: 10/s, colour: red }")).starts_with("9:34: unknown field `colour`")
    );
}

#[test]
fn native_value_errors() {
    assert_eq!(
        err(&NATIVE.replace(
            "    protocol: memcache\n    servers",
            "    protocol: memcache\n    timeout: 200\n    servers"
        )),
        "4:14: invalid duration '200': expected a number and a unit (us, ms, s, m, h), e.g. 200ms"
    );
    assert_eq!(
        err(&NATIVE.replacen("protocol: memcache", "protocol: memcached", 1)),
        "3:15: unknown protocol 'memcached', expected memcache or redis"
    );
    assert_eq!(
        err(&NATIVE.replace(
            "    protocol: memcache\n    servers",
            "    protocol: memcache\n    connections: 0\n    servers"
        )),
        "4:18: connections must be at least 1"
    );
    assert_eq!(
        err(&NATIVE.replace(
            "    protocol: memcache\n    servers",
            "    protocol: memcache\n    connections: many\n    servers"
        )),
        "4:18: invalid u64"
    );
    assert_eq!(
        err(&format!("workers: 0\n{NATIVE}")),
        "1:10: workers must be at least 1"
    );
    assert_eq!(
        err(&format!("admin: {{ listen: /tmp/a.sock }}\n{NATIVE}")),
        "1:18: admin.listen must be a TCP host:port"
    );
    assert_eq!(
        err(&NATIVE.replace("mc-b\"", "mc-a\"")),
        "4:41: pool 'users' has two servers named 'mc-a' (the other is at line 4)"
    );
    assert_eq!(
        err(&NATIVE.replace("127.0.0.1:11212:1 mc-b", "127.0.0.1:11212 mc-b")),
        "4:41: invalid server '127.0.0.1:11212 mc-b': expected \"host:port:weight [name]\" or \"/path/unix_socket:weight [name]\""
    );
}

#[test]
fn native_missing_pieces() {
    assert_eq!(err("pools: {}\n"), "1:8: no pools configured");
    let no_listeners = NATIVE.split("listeners:").next().unwrap().to_string();
    assert_eq!(err(&no_listeners), "1:1: no listeners configured");
    assert_eq!(
        err(&format!("{no_listeners}listeners: []\n")),
        "5:12: no listeners configured"
    );
    assert_eq!(
        err(&NATIVE.replace("    protocol: memcache\n    route", "    route")),
        "7:5: missing field `protocol`"
    );
}

#[test]
fn durations() {
    use syntax::parse_duration as d;
    assert_eq!(d("200ms"), Ok(Duration::from_millis(200)));
    assert_eq!(d("1s"), Ok(Duration::from_secs(1)));
    assert_eq!(d("10s"), Ok(Duration::from_secs(10)));
    assert_eq!(d("1m"), Ok(Duration::from_secs(60)));
    assert_eq!(d("2h"), Ok(Duration::from_secs(7200)));
    assert_eq!(d("5us"), Ok(Duration::from_micros(5)));
    for bad in [
        "",
        "1",
        "ms",
        "1.5s",
        "-1s",
        "1 s",
        "1S",
        "99999999999999999999s",
        "18446744073709551615h",
    ] {
        assert!(d(bad).is_err(), "{bad}");
    }
}

// ---- robustness ---------------------------------------------------------------------------

fn examples() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    v.extend([
        TW.to_string(),
        NATIVE.to_string(),
        NATIVE_TWO_POOLS.to_string(),
    ]);
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Arbitrary text never panics.
    #[test]
    fn random_text_never_panics(text in "\\PC{0,200}") {
        let _ = parse(&text);
    }

    /// Mutated valid configs (bytes replaced, inserted, deleted) never panic, and every error
    /// carries a real location.
    #[test]
    fn mutated_configs_never_panic(
        which in 0usize..16,
        edits in proptest::collection::vec((any::<usize>(), 0u8..3, prop::sample::select(
            vec![":", " ", "\n", "-", "{", "}", "[", "]", "0", "x", "\"", "'", "#", "&a", "*a", "\t", "/", "ms", "~"]
        )), 1..6),
    ) {
        let all = examples();
        let mut text = all[which % all.len()].clone();
        for (pos, op, s) in edits {
            if text.is_empty() { text.push_str(s); continue; }
            let mut at = pos % text.len();
            while !text.is_char_boundary(at) { at -= 1; }
            match op {
                0 => text.insert_str(at, s),
                1 => { let end = (at + 1..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap(); text.replace_range(at..end, s) }
                _ => { let end = (at + 1..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap(); text.replace_range(at..end, "") }
            }
        }
        if let Err(e) = parse(&text) {
            prop_assert!(e.location.line >= 1 && e.location.col >= 1, "{e}");
        }
    }
}

#[test]
fn flow_sequence_locations() {
    // Items of a flow sequence are located at their first character.
    assert_eq!(
        err(&NATIVE.replace("127.0.0.1:11211:1 mc-a", "127.0.0.1:11211:0 mc-a")),
        "4:15: zero weight in server '127.0.0.1:11211:0 mc-a': weight must be at least 1"
    );
}

#[test]
fn native_log_section() {
    let c = ok(&format!(
        "log: {{ level: \"info,kvrouter::backend=debug\", file: /var/log/kvrouter.log }}\n{NATIVE}"
    ));
    assert_eq!(c.log.level.as_deref(), Some("info,kvrouter::backend=debug"));
    assert_eq!(
        c.log.file.as_deref(),
        Some(Path::new("/var/log/kvrouter.log"))
    );
    assert_eq!(ok(NATIVE).log, LogConfig::default());
    assert!(err(&format!("log: {{ level: inof }}\n{NATIVE}"))
        .starts_with("1:15: log.level 'inof': 'inof' is not a level"));
    assert!(err(&format!("log: {{ level: \"info,x=loud\" }}\n{NATIVE}"))
        .starts_with("1:15: log.level 'info,x=loud': 'x=loud' is not TARGET=LEVEL"));
    assert!(err(&format!("log: {{ colour: red }}\n{NATIVE}"))
        .starts_with("1:8: unknown field `colour`"));
}

#[test]
fn json_export_redacts_secrets() {
    let c = ok(&NATIVE.replacen(
        "    protocol: memcache\n",
        "    protocol: memcache\n    redis_auth: hunter2\n",
        1,
    ));
    let v = c.to_json_redacted();
    let text = v.to_string();
    assert!(!text.contains("hunter2"), "{text}");
    let pool = v["pools"].as_object().unwrap().values().next().unwrap();
    assert_eq!(pool["redis_auth"], "<redacted>");
    assert_eq!(v["format"], "kvrouter");
    assert!(v["listeners"][0]["route"]["pool"].is_string());
}

#[test]
fn coalesce_misses_per_listener() {
    assert!(!ok(NATIVE).listeners[0].coalesce_misses);
    assert!(!ok(TW).listeners[0].coalesce_misses);
    let on = NATIVE.replace(
        "    route: users",
        "    route: users\n    coalesce_misses: true",
    );
    assert!(ok(&on).listeners[0].coalesce_misses);
    let off = NATIVE.replace(
        "    route: users",
        "    route: users\n    coalesce_misses: false",
    );
    assert!(!ok(&off).listeners[0].coalesce_misses);
    let redis = format!(
        "{NATIVE}  - listen: 127.0.0.1:6380\n    protocol: redis\n    route: users\n    coalesce_misses: true\n"
    );
    assert!(
        err(&redis).contains("coalesce_misses applies to memcache listeners only"),
        "{}",
        err(&redis)
    );
    assert!(err(&NATIVE.replace(
        "    route: users",
        "    route: users\n    coalesce_misses: 3"
    ))
    .starts_with("9:22:"));
}

#[test]
fn client_output_and_request_limits_per_listener() {
    for c in [ok(NATIVE), ok(TW)] {
        assert_eq!(c.listeners[0].max_client_output, 32 << 20);
        assert_eq!(
            c.listeners[0].client_request_timeout,
            Some(std::time::Duration::from_secs(30))
        );
    }
    let set = NATIVE.replace(
        "    route: users",
        "    route: users\n    max_client_output: 1048576\n    client_request_timeout: 2s",
    );
    let l = &ok(&set).listeners[0];
    assert_eq!(l.max_client_output, 1 << 20);
    assert_eq!(
        l.client_request_timeout,
        Some(std::time::Duration::from_secs(2))
    );
    let v = ok(&set).to_json_redacted();
    assert_eq!(v["listeners"][0]["max_client_output"], 1 << 20);
    assert_eq!(v["listeners"][0]["client_request_timeout_ms"], 2000);
    let off = NATIVE.replace(
        "    route: users",
        "    route: users\n    client_request_timeout: 0s",
    );
    assert_eq!(ok(&off).listeners[0].client_request_timeout, None);
    let small = NATIVE.replace(
        "    route: users",
        "    route: users\n    max_client_output: 1000",
    );
    assert!(
        err(&small).contains("`max_client_output` must be at least 65536"),
        "{}",
        err(&small)
    );
}

#[test]
fn native_allow_commands() {
    let redis = "\
pools:
  s:
    protocol: redis
    servers: [\"127.0.0.1:6379:1\"]
    allow_commands: [keys, get]
listeners:
  - { listen: 127.0.0.1:6390, protocol: redis, route: s }
";
    assert_eq!(
        err(redis),
        "5:28: allow_commands: 'get' is not one of the commands a pool can enable: flushall, flushdb, keys, migrate"
    );
    assert_eq!(
        ok(&redis.replace("[keys, get]", "[MIGRATE]")).pools[0].allow_commands,
        ["migrate"]
    );
    assert!(ok(&redis.replace("[keys, get]", "[]")).pools[0]
        .allow_commands
        .is_empty());
    assert_eq!(
        err(&NATIVE.replace(
            "    protocol: memcache\n    servers",
            "    protocol: memcache\n    allow_commands: [keys]\n    servers"
        )),
        "4:21: allow_commands applies to redis pools only"
    );
}

#[test]
fn native_scripts_switch() {
    let redis = "\
pools:
  s:
    protocol: redis
    servers: [\"127.0.0.1:6379:1\"]
    scripts: false
listeners:
  - { listen: 127.0.0.1:6390, protocol: redis, route: s }
";
    assert!(!ok(redis).pools[0].scripts);
    assert!(ok(&redis.replace("    scripts: false\n", "")).pools[0].scripts);
    assert!(err(&redis.replace("false", "maybe")).starts_with("5:14"));
    assert_eq!(
        err(&NATIVE.replace(
            "    protocol: memcache\n    servers",
            "    protocol: memcache\n    scripts: false\n    servers"
        )),
        "4:14: `scripts` applies to redis pools only"
    );
}

#[test]
fn native_cluster_pools() {
    let redis = "\
pools:
  s:
    protocol: redis
    cluster: { seeds: [\"127.0.0.1:7000\", \"localhost:7001\"], read_from: prefer_replica }
listeners:
  - { listen: 127.0.0.1:6390, protocol: redis, route: s }
";
    let c = ok(redis);
    let p = &c.pools[0];
    assert!(p.servers.is_empty());
    let cl = p.cluster.as_ref().unwrap();
    assert_eq!(cl.seeds, ["127.0.0.1:7000", "localhost:7001"]);
    assert_eq!(cl.read_from, crate::config::ReadFrom::PreferReplica);
    assert_eq!(p.hash_tag, Some(*b"{}"));
    assert_eq!(
        ok(&redis.replace(", read_from: prefer_replica", "")).pools[0]
            .cluster
            .as_ref()
            .unwrap()
            .read_from,
        crate::config::ReadFrom::Primary
    );
    assert_eq!(
        err(&redis.replace("prefer_replica", "nearest")),
        "4:72: read_from 'nearest': expected primary, prefer_replica or replica"
    );
    assert_eq!(
        err(&redis.replace("\"localhost:7001\"", "\"localhost\"")),
        "4:42: cluster seed 'localhost' is not host:port"
    );
    assert!(err(&redis.replace(
        "    cluster:",
        "    servers: [\"127.0.0.1:6379:1\"]\n    cluster:"
    ))
    .contains("is a cluster pool"));
    assert!(
        err(&redis.replace("    cluster:", "    hash: md5\n    cluster:"))
            .contains("`hash` does not apply to a cluster pool")
    );
}

#[test]
fn native_replicas_per_server() {
    let redis = "\
pools:
  s:
    protocol: redis
    servers: [\"127.0.0.1:7000:1 r0\", \"127.0.0.1:7010:1\"]
    replicas: { r0: [\"127.0.0.1:7001\", \"127.0.0.1:7002\"], \"127.0.0.1:7010\": [\"localhost:7011\"] }
listeners:
  - { listen: 127.0.0.1:6390, protocol: redis, route: s }
";
    let c = ok(redis);
    let r = &c.pools[0].replicas;
    assert_eq!(r.len(), 2);
    let addrs = |i: usize| r[i].iter().map(|s| s.address()).collect::<Vec<_>>();
    assert_eq!(addrs(0), ["127.0.0.1:7001", "127.0.0.1:7002"]);
    assert_eq!(addrs(1), ["localhost:7011"]);
    assert_eq!(r[0][1].location, Location { line: 5, col: 40 });
    assert!(ok(&redis.replace(
        "    replicas: { r0: [\"127.0.0.1:7001\", \"127.0.0.1:7002\"], \"127.0.0.1:7010\": [\"localhost:7011\"] }\n",
        ""
    ))
    .pools[0]
        .replicas
        .is_empty());
    assert_eq!(
        err(&redis.replace("{ r0:", "{ r9:")),
        "5:17: `replicas`: unknown server 'r9' (servers of this pool: r0, 127.0.0.1:7010)"
    );
    assert_eq!(
        err(&redis.replace("\"127.0.0.1:7002\"", "\"127.0.0.1\"")),
        "5:40: invalid replica address '127.0.0.1': expected \"host:port\""
    );
    assert_eq!(
        err(&redis.replace("\"127.0.0.1:7002\"", "\"127.0.0.1:0\"")),
        "5:40: invalid replica address '127.0.0.1:0': expected \"host:port\""
    );
    assert_eq!(
        err(&redis.replace("\"127.0.0.1:7002\"", "\"127.0.0.1:7010\"")),
        "5:40: `replicas`: 127.0.0.1:7010 is already a server or replica of this pool"
    );
    assert_eq!(
        err(&redis.replace("[\"localhost:7011\"]", "[]")),
        "5:77: `replicas`: an empty list (give at least one host:port)"
    );
    assert_eq!(
        err(&redis.replace("    replicas", "    auto_eject_hosts: true\n    replicas")),
        "6:15: `replicas` needs TKO health (reads fail over while the ring stays put); auto_eject_hosts moves keys instead: drop one of them"
    );
    assert_eq!(
        err(&NATIVE.replace(
            "    protocol: memcache\n    servers",
            "    protocol: memcache\n    replicas: { a: [\"127.0.0.1:1\"] }\n    servers"
        )),
        "4:15: `replicas` applies to redis pools only (memcached has no replication: use a failover route to a gutter pool)"
    );
}
