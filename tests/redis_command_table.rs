//! The generated Redis command table against a live redis-server: same commands, arities,
//! flags, key ranges and key specs, and `key_indices` agrees with `COMMAND GETKEYS`.
//! Regenerate with scripts/gen_redis_commands.py when this fails after a server upgrade.

mod common;

use bytes::{Bytes, BytesMut};
use kvrouter::protocol::redis_commands::{
    self as rc, flags, key_flags, Begin, CommandInfo, Find, KeySpec,
};
use kvrouter::protocol::resp::{encode_request, parse_frame, scan_reply, Frame};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

struct Client {
    s: TcpStream,
    buf: BytesMut,
}

impl Client {
    fn connect(p: &common::Proc) -> Client {
        let s = TcpStream::connect(p.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            s,
            buf: BytesMut::new(),
        }
    }

    fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Frame {
        self.s.write_all(&encode_request(args).raw).unwrap();
        loop {
            if let Some(n) = scan_reply(&self.buf).unwrap() {
                let reply = self.buf.split_to(n).freeze();
                return parse_frame(&reply).unwrap().0;
            }
            let mut chunk = [0u8; 65536];
            let n = self.s.read(&mut chunk).unwrap();
            assert!(n > 0, "server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn text(f: &Frame) -> String {
    match f {
        Frame::Simple(b) | Frame::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
        other => panic!("expected a string, got {other:?}"),
    }
}

fn int(f: &Frame) -> i64 {
    match f {
        Frame::Integer(i) => *i,
        other => panic!("expected an integer, got {other:?}"),
    }
}

fn list(f: &Frame) -> &[Frame] {
    match f {
        Frame::Array(Some(v)) => v,
        other => panic!("expected an array, got {other:?}"),
    }
}

/// A flat key/value array as (key, value) pairs.
fn map(f: &Frame) -> Vec<(String, &Frame)> {
    list(f).chunks(2).map(|c| (text(&c[0]), &c[1])).collect()
}

fn field<'a>(m: &[(String, &'a Frame)], k: &str) -> &'a Frame {
    m.iter()
        .find(|(n, _)| n == k)
        .unwrap_or_else(|| panic!("no {k}"))
        .1
}

fn spec_of<'a>(m: &[(String, &'a Frame)]) -> Vec<(String, &'a Frame)> {
    match field(m, "spec") {
        Frame::Array(Some(v)) if v.is_empty() => Vec::new(),
        f => map(f),
    }
}

fn server_spec(f: &Frame) -> KeySpec {
    let m = map(f);
    let mut kflags = 0u16;
    for fl in list(field(&m, "flags")) {
        kflags |= match text(fl).as_str() {
            "RO" => key_flags::RO,
            "RW" => key_flags::RW,
            "OW" => key_flags::OW,
            "RM" => key_flags::RM,
            "access" => key_flags::ACCESS,
            "update" => key_flags::UPDATE,
            "insert" => key_flags::INSERT,
            "delete" => key_flags::DELETE,
            "not_key" => key_flags::NOT_KEY,
            "incomplete" => key_flags::INCOMPLETE,
            "variable_flags" => key_flags::VARIABLE_FLAGS,
            other => panic!("key spec flag {other} unknown to the table"),
        };
    }
    let bs = map(field(&m, "begin_search"));
    let bss = spec_of(&bs);
    let begin = match text(field(&bs, "type")).as_str() {
        "index" => Begin::Index(int(field(&bss, "index")) as i32),
        "keyword" => {
            let kw = text(field(&bss, "keyword"));
            // Compare against the table's static keyword.
            Begin::Keyword(
                Box::leak(kw.into_boxed_str()),
                int(field(&bss, "startfrom")) as i32,
            )
        }
        _ => Begin::Unknown,
    };
    let fk = map(field(&m, "find_keys"));
    let fks = spec_of(&fk);
    let find = match text(field(&fk, "type")).as_str() {
        "range" => Find::Range {
            lastkey: int(field(&fks, "lastkey")) as i32,
            step: int(field(&fks, "keystep")) as i32,
            limit: int(field(&fks, "limit")) as i32,
        },
        "keynum" => Find::Keynum {
            idx: int(field(&fks, "keynumidx")) as i32,
            first: int(field(&fks, "firstkey")) as i32,
            step: int(field(&fks, "keystep")) as i32,
        },
        _ => Find::Unknown,
    };
    KeySpec {
        flags: kflags,
        begin,
        find,
    }
}

/// Compare one server entry with the table entry; returns how many entries were checked.
fn check(entry: &Frame, table: Option<&'static CommandInfo>) -> usize {
    let e = list(entry);
    let name = text(&e[0]).to_lowercase();
    let info = table.unwrap_or_else(|| panic!("{name} is missing from the table"));
    assert_eq!(info.name, name);
    assert_eq!(info.arity as i64, int(&e[1]), "{name} arity");
    let mut want = 0u32;
    for f in list(&e[2]) {
        let f = text(f);
        let bit = flags::NAMES
            .iter()
            .find(|(n, _)| *n == f)
            .unwrap_or_else(|| panic!("{name}: flag {f} unknown to the table"))
            .1;
        want |= bit;
    }
    assert_eq!(info.flags, want, "{name} flags");
    assert_eq!(info.is_write(), want & flags::WRITE != 0);
    assert_eq!(info.is_readonly(), want & flags::READONLY != 0);
    assert_eq!(
        (
            info.first_key as i64,
            info.last_key as i64,
            info.step as i64
        ),
        (int(&e[3]), int(&e[4]), int(&e[5])),
        "{name} first/last/step"
    );
    let specs: Vec<KeySpec> = list(&e[8]).iter().map(server_spec).collect();
    assert_eq!(info.key_specs, &specs[..], "{name} key specs");
    let subs = list(&e[9]);
    assert_eq!(
        info.subcommands.len(),
        subs.len(),
        "{name} subcommand count"
    );
    let mut n = 1;
    for s in subs {
        let sub_name = text(&list(s)[0]).to_lowercase();
        let short = sub_name.split('|').nth(1).unwrap().to_uppercase();
        n += check(s, rc::lookup_sub(info, short.as_bytes()));
    }
    n
}

#[test]
fn table_matches_live_server() {
    let server = common::redis_server();
    let mut c = Client::connect(&server);
    let info = text(&c.call(&["INFO", "server"]));
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(
        version,
        rc::REDIS_VERSION,
        "table generated from another redis version"
    );

    let all = c.call(&["COMMAND"]);
    let entries = list(&all);
    let mut checked = 0;
    for e in entries {
        let name = text(&list(e)[0]);
        checked += check(e, rc::lookup(name.to_uppercase().as_bytes()));
    }
    assert_eq!(
        entries.len(),
        rc::COMMANDS.len(),
        "table has commands the server lacks"
    );
    assert_eq!(
        int(&c.call(&["COMMAND", "COUNT"])) as usize,
        rc::COMMANDS.len()
    );
    assert!(
        checked > 300,
        "only {checked} commands and subcommands checked"
    );
}

#[test]
fn key_indices_match_command_getkeys() {
    let server = common::redis_server();
    let mut c = Client::connect(&server);
    let cases: &[&[&str]] = &[
        &["GET", "k"],
        &["MSET", "a", "1", "b", "2"],
        &["MGET", "a", "b", "c"],
        &["DEL", "a", "b"],
        &["EVAL", "return 1", "2", "a", "b", "x"],
        &["EVALSHA", "abc", "1", "a", "x"],
        &["EVAL_RO", "return 1", "1", "a"],
        &["EVALSHA_RO", "abc", "2", "a", "b"],
        &["FCALL", "f", "2", "a", "b", "c"],
        &["FCALL_RO", "f", "1", "a"],
        &["ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"],
        &["ZINTERSTORE", "d", "3", "a", "b", "c"],
        &["ZDIFFSTORE", "d", "2", "a", "b"],
        &["ZUNION", "2", "a", "b", "WITHSCORES"],
        &["ZINTER", "2", "a", "b"],
        &["ZDIFF", "2", "a", "b"],
        &["ZINTERCARD", "2", "a", "b", "LIMIT", "1"],
        &["SINTERCARD", "2", "a", "b"],
        &["LMPOP", "2", "a", "b", "LEFT", "COUNT", "2"],
        &["ZMPOP", "2", "a", "b", "MIN"],
        &["BLMPOP", "0", "2", "a", "b", "LEFT"],
        &["BZMPOP", "0", "2", "a", "b", "MAX"],
        &["XREAD", "COUNT", "1", "STREAMS", "a", "b", "0", "0"],
        &["XREAD", "BLOCK", "0", "STREAMS", "a", "$"],
        &[
            "XREADGROUP",
            "GROUP",
            "g",
            "c",
            "NOACK",
            "STREAMS",
            "a",
            "b",
            ">",
            ">",
        ],
        &["MIGRATE", "h", "1", "k", "0", "5"],
        &[
            "MIGRATE", "h", "1", "", "0", "5", "COPY", "AUTH", "pw", "KEYS", "a", "b",
        ],
        &[
            "MIGRATE", "h", "1", "", "0", "5", "AUTH2", "u", "pw", "KEYS", "a",
        ],
        &["SORT", "k", "BY", "w_*", "STORE", "d"],
        &[
            "SORT", "k", "LIMIT", "0", "1", "GET", "store", "STORE", "d", "STORE", "e",
        ],
        &["SORT", "k"],
        &["SORT_RO", "k", "BY", "x"],
        &["GEORADIUS", "k", "1", "2", "3", "km", "STORE", "a"],
        &["GEORADIUS", "k", "1", "2", "3", "km", "STOREDIST", "b"],
        &["GEORADIUSBYMEMBER", "k", "m", "3", "km", "STORE", "a"],
        &[
            "GEOSEARCHSTORE",
            "d",
            "s",
            "FROMLONLAT",
            "1",
            "2",
            "BYRADIUS",
            "1",
            "km",
        ],
        &["OBJECT", "ENCODING", "k"],
        &["OBJECT", "FREQ", "k"],
        &["MEMORY", "USAGE", "k", "SAMPLES", "5"],
        &["XINFO", "STREAM", "k"],
        &["XGROUP", "CREATE", "k", "g", "$"],
        &["SET", "k", "v", "GET"],
        &["BITFIELD", "k", "GET", "u8", "0"],
        &["BITOP", "AND", "d", "a", "b"],
        &["RENAME", "a", "b"],
        &["SMOVE", "a", "b", "m"],
        &["BLMOVE", "a", "b", "LEFT", "RIGHT", "0"],
        &["BLPOP", "a", "b", "0"],
        &["PFMERGE", "d", "a", "b"],
        &["COPY", "a", "b"],
        &["SUNIONSTORE", "d", "a", "b"],
        &["LCS", "a", "b"],
        &["TOUCH", "a", "b"],
        &["WATCH", "a", "b"],
    ];
    for case in cases {
        let args: Vec<Bytes> = case
            .iter()
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect();
        let info = rc::resolve(&args).unwrap_or_else(|| panic!("{case:?} unknown"));
        let ours: Vec<String> = rc::key_indices(info, &args)
            .unwrap_or_else(|e| panic!("{case:?}: {e}"))
            .into_iter()
            .map(|i| case[i].to_string())
            .collect();
        let mut req = vec!["COMMAND", "GETKEYS"];
        req.extend_from_slice(case);
        let theirs: Vec<String> = list(&c.call(&req)).iter().map(text).collect();
        assert_eq!(ours, theirs, "{case:?}");
    }
}
