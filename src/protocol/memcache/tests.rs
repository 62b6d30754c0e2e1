//! Unit tests and property tests for the memcached parser and reply scanner.

use super::*;
use proptest::prelude::*;

fn lim() -> Limits {
    Limits::default()
}

/// Parse one item from `input`; returns it and how many bytes it consumed.
fn one(input: &[u8]) -> (Option<Parsed>, usize) {
    one_with(input, &lim())
}

fn one_with(input: &[u8], limits: &Limits) -> (Option<Parsed>, usize) {
    let mut buf = BytesMut::from(input);
    let p = parse_request(&mut buf, limits).expect("not fatal");
    (p, input.len() - buf.len())
}

fn req(input: &[u8]) -> Request {
    match one(input) {
        (Some(Parsed::Request(r)), n) => {
            assert_eq!(n, r.raw.len());
            r
        }
        other => panic!("expected a request for {input:?}, got {other:?}"),
    }
}

/// Expect an error: (reply, swallow, consumed).
fn err(input: &[u8]) -> (Vec<u8>, usize, usize) {
    match one(input) {
        (Some(Parsed::Error { reply, swallow }), n) => (reply.to_vec(), swallow, n),
        (Some(Parsed::TooLarge { reply, swallow, .. }), n) => (reply.to_vec(), swallow, n),
        other => panic!("expected an error for {input:?}, got {other:?}"),
    }
}

/// The reply and swallow of an error (too large ones included).
fn err_of(p: Option<Parsed>) -> (Vec<u8>, usize) {
    match p {
        Some(Parsed::Error { reply, swallow } | Parsed::TooLarge { reply, swallow, .. }) => {
            (reply.to_vec(), swallow)
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

fn keys(r: &Request) -> Vec<&[u8]> {
    r.keys.iter().map(|k| &k[..]).collect()
}

// ---- retrieval ----

#[test]
fn get_one_and_many_keys() {
    let r = req(b"get foo\r\n");
    assert_eq!(r.command, Command::Get);
    assert_eq!(keys(&r), [b"foo"]);
    assert!(!r.noreply && r.gat_exptime.is_none());
    assert_eq!(&r.raw[..], b"get foo\r\n");

    let r = req(b"gets a  bb   ccc\r\nget x\r\n");
    assert_eq!(r.command, Command::Gets);
    assert_eq!(keys(&r), [&b"a"[..], b"bb", b"ccc"]);
    assert_eq!(&r.raw[..], b"gets a  bb   ccc\r\n");
}

#[test]
fn get_keys_are_slices_of_raw() {
    let r = req(b"get alpha beta\r\n");
    let base = r.raw.as_ptr() as usize;
    let k = r.keys[1].as_ptr() as usize;
    assert_eq!(k - base, 10);
}

#[test]
fn get_bare_newline_and_trailing_spaces() {
    let r = req(b"get a b\n");
    assert_eq!(keys(&r), [b"a", b"b"]);
    assert_eq!(r.raw.len(), 8);
    let r = req(b"get a   \r\n");
    assert_eq!(keys(&r), [b"a"]);
}

#[test]
fn gat_and_gats() {
    let r = req(b"gat 100 k1 k2\r\n");
    assert_eq!(r.command, Command::Gat);
    assert_eq!(r.gat_exptime.as_deref(), Some(&b"100"[..]));
    assert_eq!(keys(&r), [b"k1", b"k2"]);
    let r = req(b"gats -1 k\r\n");
    assert_eq!(r.command, Command::Gats);
    assert_eq!(r.gat_exptime.as_deref(), Some(&b"-1"[..]));
    assert_eq!(keys(&r), [b"k"]);
}

#[test]
fn retrieval_errors() {
    // memcached: no argument at all is `ERROR`; `gat 10` without keys is an empty answer.
    assert_eq!(err(b"get\r\n"), (ERROR.to_vec(), 0, 5));
    assert_eq!(err(b"gets   \r\n"), (ERROR.to_vec(), 0, 9));
    assert_eq!(err(b"gat 10\r\n"), (EMPTY_RETRIEVAL.to_vec(), 0, 8));
    assert_eq!(err(b"gat\r\n"), (ERROR.to_vec(), 0, 5));
    assert_eq!(err(b"gat x k\r\n"), (BAD_EXPTIME.to_vec(), 0, 9));
    let long = format!("get a {}\r\nget b\r\n", "k".repeat(251));
    assert_eq!(err(long.as_bytes()), (BAD_FORMAT.to_vec(), 0, 6 + 251 + 2));
    assert_eq!(err(b"get a\tb\r\n"), (BAD_KEY.to_vec(), 0, 9));
    assert_eq!(err(b"get a\x7f\r\n"), (BAD_KEY.to_vec(), 0, 8));
    assert_eq!(err(b"get a\r\r\n"), (BAD_KEY.to_vec(), 0, 8));
}

#[test]
fn key_of_exactly_max_len_is_fine() {
    let line = format!("get {}\r\n", "k".repeat(250));
    assert_eq!(req(line.as_bytes()).keys[0].len(), 250);
    let small = Limits {
        max_key_len: 3,
        ..lim()
    };
    assert!(matches!(
        one_with(b"get abc\r\n", &small).0,
        Some(Parsed::Request(_))
    ));
    assert!(matches!(
        one_with(b"get abcd\r\n", &small).0,
        Some(Parsed::Error { .. })
    ));
}

#[test]
fn get_of_1000_keys() {
    let keys_in: Vec<String> = (0..1000)
        .map(|i| format!("key:{i:06}:{}", "x".repeat(i % 200)))
        .collect();
    let line = format!("get {}\r\n", keys_in.join(" "));
    let r = req(line.as_bytes());
    assert_eq!(r.keys.len(), 1000);
    for (k, want) in r.keys.iter().zip(&keys_in) {
        assert_eq!(&k[..], want.as_bytes());
    }
    assert_eq!(r.raw.len(), line.len());
    // Recomposing the full key list gives the same line back.
    assert_eq!(
        compose_retrieval(Command::Get, None, &r.keys),
        line.as_bytes()
    );
}

// ---- storage ----

#[test]
fn storage_commands() {
    for (word, cmd) in [
        ("set", Command::Set),
        ("add", Command::Add),
        ("replace", Command::Replace),
        ("append", Command::Append),
        ("prepend", Command::Prepend),
    ] {
        let input = format!("{word} key 5 0 3\r\nabc\r\nget key\r\n");
        let r = req(input.as_bytes());
        assert_eq!(r.command, cmd);
        assert_eq!(keys(&r), [b"key"]);
        assert_eq!(
            &r.raw[..],
            format!("{word} key 5 0 3\r\nabc\r\n").as_bytes()
        );
        assert!(!r.noreply);
        assert!(cmd.is_storage() && !cmd.is_retrieval());
    }
}

#[test]
fn cas_command() {
    let r = req(b"cas k 0 -1 2 12345\r\nhi\r\n");
    assert_eq!(r.command, Command::Cas);
    assert_eq!(keys(&r), [b"k"]);
    assert_eq!(r.raw.len(), 24);
    let r = req(b"cas k 0 0 2 1 noreply\r\nhi\r\n");
    assert!(r.noreply);
    assert_eq!(&r.to_backend()[..], b"cas k 0 0 2 1\r\nhi\r\n");
}

#[test]
fn storage_data_may_contain_crlf_and_anything() {
    let r = req(b"set k 0 0 6\r\na\r\nb\x00\n\r\n");
    assert_eq!(r.raw.len(), 13 + 8);
    let r = req(b"set k 0 0 0\r\n\r\n");
    assert_eq!(r.raw.len(), 15);
}

#[test]
fn storage_waits_for_whole_data_block() {
    let full = b"set k 0 0 5\r\nhello\r\n";
    for cut in 0..full.len() {
        assert_eq!(one(&full[..cut]), (None, 0), "cut at {cut}");
    }
    assert_eq!(req(full).raw.len(), full.len());
}

#[test]
fn storage_noreply_and_extra_token() {
    let r = req(b"set k 1 2 3 noreply\r\nabc\r\n");
    assert!(r.noreply);
    assert_eq!(&r.to_backend()[..], b"set k 1 2 3\r\nabc\r\n");
    // memcached accepts any fifth token; only `noreply` means noreply.
    let r = req(b"set k 1 2 3 whatever\r\nabc\r\n");
    assert!(!r.noreply);
    assert_eq!(r.to_backend(), r.raw);
}

#[test]
fn storage_flexible_spacing_and_numbers() {
    let r = req(b"set  k  +1 +5 01 \r\nx\r\n");
    assert_eq!(keys(&r), [b"k"]);
    let r = req(b"set k 4294967295 0 1\nx\r\n");
    assert_eq!(r.raw.len(), 24);
}

#[test]
fn storage_errors() {
    // Bad data terminator: exactly <bytes>+2 consumed, nothing more to swallow.
    assert_eq!(
        err(b"set k 0 0 2\r\nabcd\r\n"),
        (BAD_CHUNK.to_vec(), 0, 13 + 4)
    );
    assert_eq!(
        err(b"set k 0 0 1\nx\nget a\n"),
        (BAD_CHUNK.to_vec(), 0, 12 + 3)
    );
    // Bad numbers: memcached refuses the line before reading the data block, which it then
    // reads as commands: only the line is consumed.
    assert_eq!(err(b"set k x 0 2\r\nab\r\n"), (BAD_FORMAT.to_vec(), 0, 13));
    assert_eq!(err(b"set k -1 0 2\r\n"), (BAD_FORMAT.to_vec(), 0, 14));
    assert_eq!(err(b"set k 0 x1 2\r\n"), (BAD_FORMAT.to_vec(), 0, 14));
    assert_eq!(err(b"cas k 0 0 2 -5\r\n"), (BAD_FORMAT.to_vec(), 0, 16));
    assert_eq!(err(b"cas k 0 0 2 x\r\n"), (BAD_FORMAT.to_vec(), 0, 15));
    // memcached's strtoul/strtol readings: flags up to 2^64-1 (kept modulo 2^32), `-0`, and a
    // length read into an int32 (4294967298 is 2).
    for ok in [
        &b"set k 4294967296 0 2\r\nab\r\n"[..],
        b"set k 18446744073709551615 0 2\r\nab\r\n",
        b"set k -0 0 2\r\nab\r\n",
        b"set k 0 0 4294967298\r\nab\r\n",
        b"cas k 0 0 2 -0\r\nab\r\n",
    ] {
        assert_eq!(req(ok).raw.len(), ok.len());
    }
    // Bad length: nothing to swallow.
    assert_eq!(err(b"set k 0 0 -1\r\n"), (BAD_FORMAT.to_vec(), 0, 14));
    assert_eq!(err(b"set k 0 0 abc\r\n"), (BAD_FORMAT.to_vec(), 0, 15));
    assert_eq!(
        err(b"set k 0 0 2147483646\r\n"),
        (BAD_FORMAT.to_vec(), 0, 22)
    );
    // Wrong token counts: `ERROR`, and the data block is read as commands.
    assert_eq!(err(b"set k 0 0\r\n"), (ERROR.to_vec(), 0, 11));
    assert_eq!(err(b"set\r\n"), (ERROR.to_vec(), 0, 5));
    assert_eq!(err(b"cas k 0 0 2\r\nab\r\n"), (ERROR.to_vec(), 0, 13));
    assert_eq!(
        err(b"set k 0 0 1 noreply extra\r\nx\r\n"),
        (ERROR.to_vec(), 0, 27)
    );
    assert_eq!(
        err(b"set k 0 0 1 a b c d e f\r\nx\r\n"),
        (ERROR.to_vec(), 0, 25)
    );
    // Keys: too long is refused before the block; a control character (the proxy's own
    // refusal, memcached would store it) takes its block along.
    let long = format!("set {} 0 0 2\r\nab\r\n", "k".repeat(251));
    assert_eq!(
        err(long.as_bytes()),
        (KEY_TOO_LONG.to_vec(), 0, 4 + 251 + 8)
    );
    assert_eq!(err(b"set a\x01b 0 0 1\r\nx\r\n"), (BAD_KEY.to_vec(), 3, 15));
    // Too large: the reply comes at once, without waiting for the data.
    assert_eq!(
        err(b"set k 0 0 2000000\r\n"),
        (TOO_LARGE.to_vec(), 2_000_002, 19)
    );
    let small = Limits {
        item_size_max: 4,
        ..lim()
    };
    assert!(matches!(
        one_with(b"set k 0 0 4\r\nabcd\r\n", &small).0,
        Some(Parsed::Request(_))
    ));
    let mut buf = BytesMut::from(&b"set k 0 0 5\r\nabcde\r\n"[..]);
    assert_eq!(
        err_of(parse_request(&mut buf, &small).unwrap()),
        (TOO_LARGE.to_vec(), 7)
    );
    assert_eq!(buf.len(), 7);
}

#[test]
fn storage_bad_chunk_waits_for_the_block() {
    assert_eq!(one(b"set k 0 0 2\r\nabc"), (None, 0));
}

#[test]
fn noreply_errors_are_silent() {
    assert_eq!(err(b"set k x 0 2 noreply\r\nab\r\n"), (vec![], 0, 21));
    // memcached reads noreply from the last token whatever the count: `decr k noreply` is a
    // (silent) bad delta, `cas k 0 0 2 noreply` a silent bad cas unique.
    assert_eq!(err(b"decr k noreply\r\n"), (vec![], 0, 16));
    assert_eq!(err(b"cas k 0 0 2 noreply\r\nab\r\n"), (vec![], 0, 21));
    assert_eq!(err(b"set k 0 0 2 noreply\r\nabcd\r\n"), (vec![], 0, 25));
    assert_eq!(
        err(b"set k 0 0 2000000 noreply\r\n"),
        (vec![], 2_000_002, 27)
    );
    assert_eq!(err(b"incr a x noreply\r\n"), (vec![], 0, 18));
    assert_eq!(err(b"touch a x noreply\r\n"), (vec![], 0, 19));
    assert_eq!(err(b"verbosity x noreply\r\n"), (vec![], 0, 21));
    assert_eq!(err(b"delete a b noreply\r\n"), (vec![], 0, 20));
    assert_eq!(err(b"flush_all x noreply\r\n"), (vec![], 0, 21));
    // Unknown commands and wrong arity are not silenced (memcached does not know noreply yet),
    // but a last `noreply` silences even the error about the token it stands in for.
    assert_eq!(err(b"foo noreply\r\n"), (ERROR.to_vec(), 0, 13));
    assert_eq!(err(b"touch a noreply\r\n"), (vec![], 0, 17));
    assert_eq!(err(b"incr a 1 2 noreply\r\n"), (ERROR.to_vec(), 0, 20));
}

#[test]
fn one_megabyte_value() {
    let data = vec![b'v'; 1_000_000];
    let mut input = b"set big 0 0 1000000\r\n".to_vec();
    input.extend_from_slice(&data);
    input.extend_from_slice(b"\r\nget big\r\n");
    let mut buf = BytesMut::new();
    // Arrives in 64 KiB reads.
    let mut out = Vec::new();
    for chunk in input.chunks(65536) {
        buf.extend_from_slice(chunk);
        while let Some(p) = parse_request(&mut buf, &lim()).unwrap() {
            out.push(p);
        }
    }
    assert!(buf.is_empty());
    assert_eq!(out.len(), 2);
    let Parsed::Request(set) = &out[0] else {
        panic!()
    };
    assert_eq!(set.raw.len(), 21 + 1_000_002);
    assert_eq!(&set.raw[21..21 + 1_000_000], &data[..]);
    // And exactly at the limit (1 MiB) is accepted, one more byte is not.
    let n = lim().item_size_max;
    let line = format!("set k 0 0 {n}\r\n");
    let mut input = line.clone().into_bytes();
    input.resize(line.len() + n, b'x');
    input.extend_from_slice(b"\r\n");
    assert!(matches!(one(&input).0, Some(Parsed::Request(_))));
    assert_eq!(err(format!("set k 0 0 {}\r\n", n + 1).as_bytes()).1, n + 3);
}

// ---- other keyed commands ----

#[test]
fn incr_decr() {
    let r = req(b"incr c 5\r\n");
    assert_eq!((r.command, keys(&r)), (Command::Incr, vec![&b"c"[..]]));
    let r = req(b"decr c 18446744073709551615 noreply\r\n");
    assert_eq!(r.command, Command::Decr);
    assert!(r.noreply);
    assert_eq!(&r.to_backend()[..], b"decr c 18446744073709551615\r\n");
    assert!(!req(b"incr c 1 2\r\n").noreply);
    assert_eq!(err(b"incr c x\r\n"), (BAD_DELTA.to_vec(), 0, 10));
    assert_eq!(err(b"incr c -1\r\n"), (BAD_DELTA.to_vec(), 0, 11));
    assert_eq!(req(b"incr c -0\r\n").keys.len(), 1);
    assert_eq!(err(b"decr c 18446744073709551616\r\n").0, BAD_DELTA);
    assert_eq!(err(b"incr c\r\n"), (ERROR.to_vec(), 0, 8));
    assert_eq!(err(b"incr c 1 noreply x\r\n"), (ERROR.to_vec(), 0, 20));
    assert_eq!(err(b"incr \x01 1\r\n").0, BAD_KEY);
}

#[test]
fn touch() {
    let r = req(b"touch k 10\r\n");
    assert_eq!((r.command, keys(&r)), (Command::Touch, vec![&b"k"[..]]));
    let r = req(b"touch k -10 noreply\r\n");
    assert!(r.noreply);
    assert_eq!(&r.to_backend()[..], b"touch k -10\r\n");
    assert_eq!(err(b"touch k x\r\n"), (BAD_EXPTIME.to_vec(), 0, 11));
    assert_eq!(err(b"touch k\r\n"), (ERROR.to_vec(), 0, 9));
}

#[test]
fn delete() {
    let r = req(b"delete k\r\n");
    assert_eq!(
        (r.command, keys(&r), r.noreply),
        (Command::Delete, vec![&b"k"[..]], false)
    );
    assert!(!req(b"delete k 0\r\n").noreply);
    let r = req(b"delete k noreply\r\n");
    assert!(r.noreply);
    assert_eq!(&r.to_backend()[..], b"delete k\r\n");
    let r = req(b"delete k 0 noreply\r\n");
    assert!(r.noreply);
    assert_eq!(&r.to_backend()[..], b"delete k 0\r\n");
    assert_eq!(err(b"delete k 5\r\n"), (BAD_DELETE.to_vec(), 0, 12));
    assert_eq!(err(b"delete k 0 0\r\n"), (BAD_DELETE.to_vec(), 0, 14));
    assert_eq!(err(b"delete\r\n"), (ERROR.to_vec(), 0, 8));
    assert_eq!(err(b"delete k 0 noreply x\r\n"), (ERROR.to_vec(), 0, 22));
    let long = format!("delete {}\r\n", "k".repeat(251));
    assert_eq!(err(long.as_bytes()).0, KEY_TOO_LONG);
}

// ---- keyless commands ----

#[test]
fn keyless_commands() {
    for (input, cmd, noreply) in [
        (&b"version\r\n"[..], Command::Version, false),
        (b"version extra\r\n", Command::Version, false),
        (b"quit\r\n", Command::Quit, false),
        (b"stats\r\n", Command::Stats, false),
        (b"stats slabs\r\n", Command::Stats, false),
        (b"stats cachedump 1 2\r\n", Command::Stats, false),
        (b"verbosity 1\r\n", Command::Verbosity, false),
        (b"verbosity 1 noreply\r\n", Command::Verbosity, true),
        (b"flush_all\r\n", Command::FlushAll, false),
        (b"flush_all 10\r\n", Command::FlushAll, false),
        (b"flush_all -1\r\n", Command::FlushAll, false),
        (b"flush_all noreply\r\n", Command::FlushAll, true),
        (b"flush_all 10 noreply\r\n", Command::FlushAll, true),
        (b"flush_all 10 x\r\n", Command::FlushAll, false),
    ] {
        let r = req(input);
        assert_eq!((r.command, r.noreply), (cmd, noreply), "{input:?}");
        assert!(r.keys.is_empty());
        assert_eq!(&r.raw[..], input);
    }
    assert_eq!(
        &req(b"flush_all noreply\r\n").to_backend()[..],
        b"flush_all\r\n"
    );
    assert_eq!(
        &req(b"flush_all 10 noreply\r\n").to_backend()[..],
        b"flush_all 10\r\n"
    );
    assert_eq!(
        &req(b"verbosity 1  noreply \n").to_backend()[..],
        b"verbosity 1\n"
    );
}

#[test]
fn keyless_errors() {
    assert_eq!(err(b"verbosity\r\n"), (ERROR.to_vec(), 0, 11));
    assert_eq!(err(b"verbosity x\r\n"), (BAD_FORMAT.to_vec(), 0, 13));
    assert_eq!(err(b"verbosity 1 2 3\r\n"), (ERROR.to_vec(), 0, 17));
    assert_eq!(err(b"flush_all x\r\n"), (BAD_EXPTIME.to_vec(), 0, 13));
    assert_eq!(err(b"flush_all 1 2 3\r\n"), (ERROR.to_vec(), 0, 17));
}

#[test]
fn unknown_and_empty() {
    assert_eq!(err(b"\r\n"), (ERROR.to_vec(), 0, 2));
    assert_eq!(err(b"\n"), (ERROR.to_vec(), 0, 1));
    assert_eq!(err(b"   \r\n"), (ERROR.to_vec(), 0, 5));
    assert_eq!(err(b"GET a\r\n"), (ERROR.to_vec(), 0, 7));
    assert_eq!(err(b"bogus a b c\r\nget a\r\n"), (ERROR.to_vec(), 0, 13));
    assert_eq!(err(b"get\ta\r\n"), (ERROR.to_vec(), 0, 7));
}

#[test]
fn incomplete_line_consumes_nothing() {
    for input in [&b""[..], b"g", b"get a", b"get a\r", b"set k 0 0 1\r"] {
        assert_eq!(one(input), (None, 0));
    }
}

#[test]
fn line_too_long_is_fatal() {
    let l = Limits {
        max_line_len: 10,
        ..lim()
    };
    // 10 bytes including the newline fit.
    assert!(matches!(
        one_with(b"get 12345\n", &l).0,
        Some(Parsed::Request(_))
    ));
    assert!(matches!(
        one_with(b"get 1234\r\n", &l).0,
        Some(Parsed::Request(_))
    ));
    assert_eq!(one_with(b"get 12345", &l), (None, 0));
    let mut buf = BytesMut::from(&b"get 1234567"[..]);
    assert_eq!(
        parse_request(&mut buf, &l),
        Err(Fatal {
            reply: Bytes::from_static(b"CLIENT_ERROR line too long\r\n")
        })
    );
    let mut buf = BytesMut::from(&b"get 123456\r\n"[..]);
    assert!(parse_request(&mut buf, &l).is_err());
    // The data block does not count against the line limit.
    let mut buf = BytesMut::from(&b"set k 0 0 20\r\n01234567890123456789\r\n"[..]);
    let l = Limits {
        max_line_len: 16,
        ..lim()
    };
    assert!(matches!(
        parse_request(&mut buf, &l),
        Ok(Some(Parsed::Request(_)))
    ));
}

#[test]
fn to_backend_is_zero_copy_without_noreply() {
    let r = req(b"set k 0 0 1\r\nx\r\n");
    let b = r.to_backend();
    assert_eq!(b.as_ptr(), r.raw.as_ptr());
    assert_eq!(b.len(), r.raw.len());
    // A key named noreply is not the noreply token.
    let r = req(b"delete noreply\r\n");
    assert!(!r.noreply);
    assert_eq!(r.keys[0], "noreply");
}

#[test]
fn command_names_round_trip() {
    use Command::*;
    for c in [
        Get, Gets, Gat, Gats, Set, Add, Replace, Append, Prepend, Cas, Incr, Decr, Touch, Delete,
        Version, Verbosity, Quit, Stats, FlushAll,
    ] {
        assert_eq!(Command::from_name(c.name().as_bytes()), Some(c));
    }
    assert_eq!(FlushAll.name(), "flush_all");
}

#[test]
fn compose() {
    let ks = [Bytes::from_static(b"k1"), Bytes::from_static(b"k2")];
    assert_eq!(
        compose_retrieval(Command::Get, None, &ks),
        &b"get k1 k2\r\n"[..]
    );
    assert_eq!(
        compose_retrieval(Command::Gets, None, &ks[..1]),
        &b"gets k1\r\n"[..]
    );
    assert_eq!(
        compose_retrieval(Command::Gats, Some(b"-5"), &ks),
        &b"gats -5 k1 k2\r\n"[..]
    );
    assert_eq!(
        compose_retrieval(Command::Gat, Some(b"10"), &ks),
        &b"gat 10 k1 k2\r\n"[..]
    );
}

// ---- replies ----

#[test]
fn scan_single_line_replies() {
    for line in [
        &b"STORED\r\n"[..],
        b"NOT_STORED\r\n",
        b"EXISTS\r\n",
        b"NOT_FOUND\r\n",
        b"DELETED\r\n",
        b"TOUCHED\r\n",
        b"OK\r\n",
        b"VERSION 1.6.18\r\n",
        b"12345\r\n",
        b"ERROR\r\n",
        b"CLIENT_ERROR bad command line format\r\n",
        b"SERVER_ERROR out of memory\r\n",
        b"END\r\n",
    ] {
        let mut buf = line.to_vec();
        buf.extend_from_slice(b"STORED\r\n");
        assert_eq!(scan_reply(&buf, false), Ok(Some(line.len())));
        for cut in 0..line.len() {
            assert_eq!(scan_reply(&line[..cut], false), Ok(None));
        }
    }
    assert!(scan_reply(b"VALUE k 0 1\r\nx\r\nEND\r\n", false).is_err());
}

#[test]
fn scan_stats_reply() {
    let r = b"STAT pid 1\r\nSTAT uptime 2\r\nEND\r\nOK\r\n";
    assert_eq!(scan_reply(r, false), Ok(Some(r.len() - 4)));
    assert_eq!(scan_reply(&r[..20], false), Ok(None));
    assert_eq!(
        scan_reply(b"ITEM a [1 b; 0 s]\r\nEND\r\n", false),
        Ok(Some(24))
    );
    assert!(scan_reply(b"STAT a 1\r\nSTORED\r\n", false).is_err());
}

#[test]
fn scan_retrieval_replies() {
    let r = b"VALUE a 0 1\r\nx\r\nVALUE bb 5 4 99\r\n\r\n\r\n\r\nEND\r\nSTORED\r\n";
    let n = r.len() - 8;
    assert_eq!(scan_reply(r, true), Ok(Some(n)));
    for cut in 0..n {
        assert_eq!(scan_reply(&r[..cut], true), Ok(None), "cut {cut}");
    }
    assert_eq!(scan_reply(b"END\r\n", true), Ok(Some(5)));
    assert_eq!(scan_reply(b"SERVER_ERROR x\r\nEND\r\n", true), Ok(Some(16)));
    assert_eq!(
        scan_reply(b"VALUE a 0 1\r\nx\r\nSERVER_ERROR oom\r\n", true),
        Ok(Some(34))
    );
    // Garbage.
    for bad in [
        &b"STORED\r\n"[..],
        b"VALUE a 0\r\n",
        b"VALUE a 0 x\r\n",
        b"VALUE a x 1\r\nx\r\nEND\r\n",
        b"VALUE a 0 1 2 3\r\nx\r\nEND\r\n",
        b"VALUE a 0 1 z\r\nx\r\nEND\r\n",
        b"VALUE a 0 1\r\nxy\r\nEND\r\n",
        b"VALUE a 0 99999999999999999999\r\n",
        b"VALUE a 0 18446744073709551615\r\n",
        b"VALUE\r\n",
    ] {
        assert!(scan_reply(bad, true).is_err(), "{bad:?}");
    }
    let long = vec![b'V'; MAX_REPLY_LINE];
    assert!(scan_reply(&long, true).is_err());
    assert_eq!(scan_reply(&long[..MAX_REPLY_LINE - 1], true), Ok(None));
}

#[test]
fn scanner_resumes() {
    let r = b"VALUE a 0 1\r\nx\r\nVALUE b 0 3\r\nyyy\r\nEND\r\n";
    let mut s = ReplyScanner::new();
    assert_eq!(s.scan(&r[..20], true), Ok(None));
    assert_eq!(s.pos, 16);
    assert_eq!(s.scan(&r[..30], true), Ok(None));
    assert_eq!(s.scan(r, true), Ok(Some(r.len())));
    assert_eq!(s.pos, 0);
    assert_eq!(s.scan(b"OK\r\n", false), Ok(Some(4)));
}

#[test]
fn split_items_works() {
    let reply = Bytes::from_static(b"VALUE a 0 1\r\nx\r\nVALUE bb 5 4 99\r\n\r\n\r\n\r\nEND\r\n");
    let items = split_items(&reply).unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].key, "a");
    assert_eq!(items[0].raw, &b"VALUE a 0 1\r\nx\r\n"[..]);
    assert_eq!(items[1].key, "bb");
    assert_eq!(items[1].raw, &b"VALUE bb 5 4 99\r\n\r\n\r\n\r\n"[..]);
    assert_eq!(items[1].raw.as_ptr() as usize - reply.as_ptr() as usize, 16);
    assert_eq!(split_items(&Bytes::from_static(b"END\r\n")), Ok(vec![]));
    let e = Bytes::from_static(b"SERVER_ERROR oops\r\n");
    assert_eq!(split_items(&e), Err(e.clone()));
    let e = Bytes::from_static(b"VALUE a 0 1\r\nx\r\nSERVER_ERROR oom\r\n");
    assert_eq!(
        split_items(&e),
        Err(Bytes::from_static(b"SERVER_ERROR oom\r\n"))
    );
}

#[test]
fn error_reply_detection() {
    assert!(is_error_reply(b"ERROR"));
    assert!(is_error_reply(b"CLIENT_ERROR x"));
    assert!(is_error_reply(b"SERVER_ERROR x"));
    assert!(!is_error_reply(b"END"));
    assert!(!is_error_reply(b"STORED"));
}

// ---- property tests ----

/// Drive the parser like the server does: parse until None or Fatal, honouring swallow.
/// Returns every outcome with the number of bytes it accounted for (consumed + swallowed).
#[derive(Default)]
struct Driver {
    buf: BytesMut,
    swallow: usize,
    out: Vec<(Parsed, usize)>,
    fatal: bool,
}

impl Driver {
    fn feed(&mut self, mut chunk: &[u8], limits: &Limits) {
        if self.fatal {
            return;
        }
        let skip = self.swallow.min(chunk.len());
        self.swallow -= skip;
        if let Some(last) = self.out.last_mut() {
            last.1 += skip;
        }
        chunk = &chunk[skip..];
        self.buf.extend_from_slice(chunk);
        loop {
            if self.swallow > 0 {
                let skip = self.swallow.min(self.buf.len());
                let _ = self.buf.split_to(skip);
                self.swallow -= skip;
                self.out.last_mut().unwrap().1 += skip;
                if self.swallow > 0 {
                    return;
                }
            }
            let before = self.buf.len();
            match parse_request(&mut self.buf, limits) {
                Ok(None) => {
                    assert_eq!(before, self.buf.len(), "Ok(None) consumed bytes");
                    return;
                }
                Ok(Some(p)) => {
                    let used = before - self.buf.len();
                    if let Parsed::Request(r) = &p {
                        assert_eq!(r.raw.len(), used);
                    }
                    if let Parsed::Error { swallow, .. } | Parsed::TooLarge { swallow, .. } = &p {
                        self.swallow = *swallow;
                    }
                    self.out.push((p, used));
                }
                Err(_) => {
                    self.fatal = true;
                    return;
                }
            }
        }
    }
}

/// A request to generate, with what the parser must make of it.
#[derive(Clone, Debug)]
struct Gen {
    bytes: Vec<u8>,
    command: Option<Command>,
    keys: Vec<Vec<u8>>,
    noreply: bool,
    /// A meta command with the `q` flag.
    quiet: bool,
    /// Some((reply, swallow)) when it must be refused.
    error: Option<(Vec<u8>, usize)>,
}

fn key_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => proptest::collection::vec(0x21u8..0x7f, 1..12),
        1 => proptest::collection::vec(0x21u8..0x7f, 240..=250),
        1 => proptest::collection::vec(prop_oneof![0x21u8..0x7f, 0x80u8..=0xff], 1..20),
    ]
}

fn value_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => proptest::collection::vec(any::<u8>(), 0..40),
        2 => proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b' '), any::<u8>()], 0..40),
        1 => proptest::collection::vec(any::<u8>(), 0..4096),
    ]
}

fn sp() -> impl Strategy<Value = String> {
    prop_oneof![8 => Just(" ".to_string()), 1 => Just("  ".to_string()), 1 => Just("   ".to_string())]
}

fn eol() -> impl Strategy<Value = &'static str> {
    prop_oneof![6 => Just("\r\n"), 1 => Just("\n")]
}

fn gen_request() -> impl Strategy<Value = Gen> {
    let storage = (
        prop::sample::select(vec!["set", "add", "replace", "append", "prepend", "cas"]),
        key_strategy(),
        any::<u32>(),
        -100i64..100_000,
        value_strategy(),
        any::<u64>(),
        any::<bool>(),
        sp(),
        eol(),
    )
        .prop_map(|(w, k, flags, exp, v, cas, noreply, s, eol)| {
            let mut b = format!("{w}{s}").into_bytes();
            b.extend_from_slice(&k);
            b.extend_from_slice(format!("{s}{flags}{s}{exp}{s}{}", v.len()).as_bytes());
            if w == "cas" {
                b.extend_from_slice(format!(" {cas}").as_bytes());
            }
            if noreply {
                b.extend_from_slice(b" noreply");
            }
            b.extend_from_slice(eol.as_bytes());
            b.extend_from_slice(&v);
            b.extend_from_slice(b"\r\n");
            Gen {
                bytes: b,
                command: Command::from_name(w.as_bytes()),
                keys: vec![k],
                noreply,
                quiet: false,
                error: None,
            }
        });
    let retrieval = (
        prop::sample::select(vec!["get", "gets", "gat", "gats"]),
        proptest::collection::vec(key_strategy(), 1..20),
        -10i64..1000,
        sp(),
        eol(),
    )
        .prop_map(|(w, keys, exp, s, eol)| {
            let mut b = w.as_bytes().to_vec();
            if w.starts_with("gat") {
                b.extend_from_slice(format!("{s}{exp}").as_bytes());
            }
            for k in &keys {
                b.extend_from_slice(s.as_bytes());
                b.extend_from_slice(k);
            }
            b.extend_from_slice(eol.as_bytes());
            Gen {
                bytes: b,
                command: Command::from_name(w.as_bytes()),
                keys,
                noreply: false,
                quiet: false,
                error: None,
            }
        });
    let keyed = (
        prop::sample::select(vec!["incr", "decr", "touch", "delete", "delete0"]),
        key_strategy(),
        any::<u32>(),
        any::<bool>(),
        eol(),
    )
        .prop_map(|(w, k, n, noreply, eol)| {
            let word = if w == "delete0" { "delete" } else { w };
            let mut b = format!("{word} ").into_bytes();
            b.extend_from_slice(&k);
            match w {
                "delete" => {}
                "delete0" => b.extend_from_slice(b" 0"),
                _ => b.extend_from_slice(format!(" {n}").as_bytes()),
            }
            if noreply {
                b.extend_from_slice(b" noreply");
            }
            b.extend_from_slice(eol.as_bytes());
            Gen {
                bytes: b,
                command: Command::from_name(word.as_bytes()),
                keys: vec![k],
                noreply,
                quiet: false,
                error: None,
            }
        });
    let keyless = prop::sample::select(vec![
        ("version\r\n", Command::Version, false),
        ("verbosity 1\r\n", Command::Verbosity, false),
        ("verbosity 0 noreply\r\n", Command::Verbosity, true),
        ("quit\r\n", Command::Quit, false),
        ("stats\r\n", Command::Stats, false),
        ("stats items\r\n", Command::Stats, false),
        ("flush_all\r\n", Command::FlushAll, false),
        ("flush_all 30\n", Command::FlushAll, false),
        ("flush_all noreply\r\n", Command::FlushAll, true),
        ("flush_all 0 noreply\r\n", Command::FlushAll, true),
    ])
    .prop_map(|(s, c, noreply)| Gen {
        bytes: s.as_bytes().to_vec(),
        command: Some(c),
        keys: vec![],
        noreply,
        quiet: false,
        error: None,
    });
    let errors = (
        prop::sample::select(vec![0u8, 1, 2, 3, 4, 5, 6]),
        value_strategy(),
    )
        .prop_map(|(kind, v)| {
            let n = v.len();
            let (line, data, reply, swallow): (String, Vec<u8>, &[u8], usize) = match kind {
                // Refused before the data block: none is sent (it would be read as commands).
                0 => (
                    format!("set {} 0 0 {n}\r\n", "k".repeat(251)),
                    vec![],
                    KEY_TOO_LONG,
                    0,
                ),
                1 => (format!("set k x 0 {n}\r\n"), vec![], BAD_FORMAT, 0),
                2 => (
                    format!("set k 0 0 {}\r\n", 2_000_000 + n),
                    vec![b'z'; 2_000_000 + n],
                    TOO_LARGE,
                    2_000_002 + n,
                ),
                3 => {
                    let mut d = v;
                    d.extend_from_slice(b"xx");
                    (format!("set k 0 0 {n}\r\n"), d, BAD_CHUNK, 0)
                }
                4 => ("bogus command\r\n".into(), vec![], ERROR, 0),
                5 => ("\r\n".into(), vec![], ERROR, 0),
                _ => ("get a\x01b\r\n".into(), vec![], BAD_KEY, 0),
            };
            let mut b = line.into_bytes();
            b.extend_from_slice(&data);
            if kind == 2 {
                b.extend_from_slice(b"\r\n");
            }
            Gen {
                bytes: b,
                command: None,
                keys: vec![],
                noreply: false,
                quiet: false,
                error: Some((reply.to_vec(), swallow)),
            }
        });
    // Meta commands: a plain key, or a base64 one with the `b` flag (routed by its bytes).
    let meta_key = prop_oneof![
        4 => key_strategy().prop_map(|k| (k.clone(), k, false)),
        1 => proptest::collection::vec(any::<u8>(), 1..40)
            .prop_map(|k| (b64(&k).into_bytes(), k, true)),
    ];
    let meta_flags = proptest::collection::vec(
        prop::sample::select(vec![
            "v", "c", "k", "s", "t", "f", "h", "l", "u", "q", "O123", "Oabc", "T30", "N30", "R5",
            "I", "C99", "F7", "MS", "ME", "MD", "J5", "D2", "zz",
        ]),
        0..7,
    );
    let meta = (
        prop::sample::select(vec!["mg", "md", "ma", "me", "ms", "mn"]),
        meta_key,
        meta_flags,
        value_strategy(),
        sp(),
        eol(),
    )
        .prop_map(|(w, (wire_key, route_key, b), flags, v, s, eol)| {
            let mut b_line = w.as_bytes().to_vec();
            let mut keys = vec![route_key];
            if w == "mn" {
                keys.clear();
            } else {
                b_line.extend_from_slice(s.as_bytes());
                b_line.extend_from_slice(&wire_key);
                if w == "ms" {
                    b_line.extend_from_slice(format!("{s}{}", v.len()).as_bytes());
                }
                for f in &flags {
                    b_line.extend_from_slice(format!("{s}{f}").as_bytes());
                }
                if b {
                    b_line.extend_from_slice(b" b");
                }
            }
            b_line.extend_from_slice(eol.as_bytes());
            if w == "ms" {
                b_line.extend_from_slice(&v);
                b_line.extend_from_slice(b"\r\n");
            }
            Gen {
                bytes: b_line,
                command: Command::from_name(w.as_bytes()),
                keys,
                noreply: false,
                quiet: w != "mn" && flags.contains(&"q"),
                error: None,
            }
        });
    let meta_errors =
        (prop::sample::select(vec![0u8, 1, 2]), value_strategy()).prop_map(|(kind, v)| {
            let n = v.len();
            let (line, data, reply, swallow): (String, Vec<u8>, &[u8], usize) = match kind {
                0 => {
                    let flags: Vec<String> = (0..17).map(|i| format!("O{i}")).collect();
                    (
                        format!("ms k {n} {}\r\n", flags.join(" ")),
                        vec![],
                        META_FLAGS_TOO_LONG,
                        0,
                    )
                }
                1 => {
                    let mut d = v;
                    d.extend_from_slice(b"xx");
                    (format!("ms k {n} T1\r\n"), d, BAD_CHUNK, 0)
                }
                _ => ("mg\r\n".into(), vec![], ERROR, 0),
            };
            let mut b = line.into_bytes();
            b.extend_from_slice(&data);
            Gen {
                bytes: b,
                command: None,
                keys: vec![],
                noreply: false,
                quiet: false,
                error: Some((reply.to_vec(), swallow)),
            }
        });
    prop_oneof![
        4 => storage,
        4 => retrieval,
        3 => keyed,
        1 => keyless,
        1 => errors,
        4 => meta,
        1 => meta_errors
    ]
}

fn check_against_gen(out: &[(Parsed, usize)], gens: &[Gen]) {
    assert_eq!(out.len(), gens.len());
    for ((p, used), g) in out.iter().zip(gens) {
        assert_eq!(
            *used,
            g.bytes.len(),
            "bytes accounted for {:?}",
            String::from_utf8_lossy(&g.bytes[..g.bytes.len().min(60)])
        );
        match (p, &g.error) {
            (Parsed::Request(r), None) => {
                assert_eq!(Some(r.command), g.command);
                assert_eq!(r.noreply, g.noreply);
                assert_eq!(r.quiet, g.quiet);
                assert_eq!(&r.raw[..], &g.bytes[..]);
                let ks: Vec<&[u8]> = r.keys.iter().map(|k| &k[..]).collect();
                let want: Vec<&[u8]> = g.keys.iter().map(|k| &k[..]).collect();
                assert_eq!(ks, want);
                let back = r.to_backend();
                if r.noreply {
                    assert_eq!(back.len(), r.raw.len() - 8);
                    assert!(!back.windows(8).any(|w| w == b" noreply") || r.command.is_storage());
                } else {
                    assert_eq!(back, r.raw);
                }
            }
            (
                Parsed::Error { reply, swallow } | Parsed::TooLarge { reply, swallow, .. },
                Some((want, want_swallow)),
            ) => {
                assert_eq!(&reply[..], &want[..]);
                assert_eq!(swallow, want_swallow);
            }
            other => panic!("mismatch: {other:?} for {g:?}"),
        }
    }
}

fn splits(len: usize, cuts: &[usize]) -> Vec<usize> {
    let mut v: Vec<usize> = cuts.iter().map(|c| c % (len + 1)).collect();
    v.push(0);
    v.push(len);
    v.sort_unstable();
    v.dedup();
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn pipelines_parse_the_same_however_split(
        gens in proptest::collection::vec(gen_request(), 1..30),
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        let input: Vec<u8> = gens.iter().flat_map(|g| g.bytes.iter().copied()).collect();
        let limits = lim();
        let mut whole = Driver::default();
        whole.feed(&input, &limits);
        prop_assert!(!whole.fatal);
        prop_assert!(whole.buf.is_empty());
        check_against_gen(&whole.out, &gens);

        let mut split = Driver::default();
        let points = splits(input.len(), &cuts);
        for w in points.windows(2) {
            split.feed(&input[w[0]..w[1]], &limits);
        }
        prop_assert!(split.buf.is_empty() && split.swallow == 0 && !split.fatal);
        prop_assert_eq!(&split.out, &whole.out);
        let total: usize = split.out.iter().map(|(_, n)| n).sum();
        prop_assert_eq!(total, input.len());
    }

    #[test]
    fn replies_scan_the_same_however_split(
        replies in proptest::collection::vec(gen_reply(), 1..20),
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        let input: Vec<u8> = replies.iter().flat_map(|r| r.bytes.iter().copied()).collect();
        let points = splits(input.len(), &cuts);
        let mut buf = BytesMut::new();
        let mut scanner = ReplyScanner::new();
        let mut next = 0;
        for w in points.windows(2) {
            buf.extend_from_slice(&input[w[0]..w[1]]);
            while let Some(want) = replies.get(next) {
                let stateless = scan_reply(&buf, want.retrieval);
                let resumed = scanner.scan(&buf, want.retrieval);
                prop_assert_eq!(&stateless, &resumed);
                match resumed {
                    Ok(Some(n)) => {
                        prop_assert_eq!(n, want.bytes.len());
                        let reply = buf.split_to(n).freeze();
                        if want.retrieval {
                            match split_items(&reply) {
                                Ok(items) => {
                                    prop_assert!(want.error.is_none());
                                    let ks: Vec<&[u8]> = items.iter().map(|i| &i.key[..]).collect();
                                    let wk: Vec<&[u8]> = want.items.iter().map(|(k, _)| &k[..]).collect();
                                    prop_assert_eq!(ks, wk);
                                    for (item, (_, raw)) in items.iter().zip(&want.items) {
                                        prop_assert_eq!(&item.raw[..], &raw[..]);
                                    }
                                }
                                Err(line) => prop_assert_eq!(Some(&line[..]), want.error.as_deref()),
                            }
                        }
                        next += 1;
                    }
                    Ok(None) => break,
                    Err(e) => return Err(TestCaseError::fail(format!("{e:?}"))),
                }
            }
        }
        prop_assert_eq!(next, replies.len());
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn random_bytes_never_panic(
        chunks in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..64),
                prop::sample::select(vec![
                    &b"get "[..], b"gat ", b"set ", b"cas ", b"delete ", b"incr ", b"noreply",
                    b" ", b"\r\n", b"\n", b"0", b"-1", b"99999999999999999999", b"5", b"VALUE ",
                    b"END", b"STAT ", b"SERVER_ERROR", b"flush_all", b"verbosity", b"touch ",
                    b"mg ", b"ms ", b"md ", b"ma ", b"mn", b"me ", b" q", b" b", b"VA ", b"MN",
                    b"EN", b"HD",
                ]).prop_map(|s| s.to_vec()),
            ],
            0..40,
        ),
        max_line in 1usize..64,
        max_key in 0usize..8,
        item_max in 0usize..32,
        max_forward in 0usize..48,
    ) {
        let input: Vec<u8> = chunks.concat();
        let limits = Limits {
            max_key_len: max_key,
            item_size_max: item_max,
            max_line_len: max_line,
            max_forward_line: max_forward,
        };
        let mut d = Driver::default();
        for c in &chunks {
            d.feed(c, &limits);
        }
        let mut d = Driver::default();
        d.feed(&input, &lim());
        for retrieval in [false, true] {
            let _ = scan_reply(&input, retrieval);
            let mut s = ReplyScanner::new();
            let mut buf = Vec::new();
            for c in &chunks {
                buf.extend_from_slice(c);
                match s.scan(&buf, retrieval) {
                    Ok(Some(n)) => { buf.drain(..n); }
                    Ok(None) => {}
                    Err(_) => break,
                }
            }
        }
        for quiet in [false, true] {
            let mut s = ReplyScanner::new();
            let mut buf = Vec::new();
            for c in &chunks {
                buf.extend_from_slice(c);
                match s.scan_meta(&buf, quiet) {
                    Ok(Some(n)) => { buf.drain(..n); }
                    Ok(None) => {}
                    Err(_) => break,
                }
            }
        }
        let _ = split_items(&Bytes::from(input));
    }
}

#[derive(Clone, Debug)]
struct GenReply {
    bytes: Vec<u8>,
    retrieval: bool,
    items: Vec<(Vec<u8>, Vec<u8>)>,
    error: Option<Vec<u8>>,
}

fn gen_reply() -> impl Strategy<Value = GenReply> {
    let item = (
        key_strategy(),
        any::<u32>(),
        value_strategy(),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(k, flags, v, cas)| {
            let mut raw = b"VALUE ".to_vec();
            raw.extend_from_slice(&k);
            raw.extend_from_slice(format!(" {flags} {}", v.len()).as_bytes());
            if let Some(c) = cas {
                raw.extend_from_slice(format!(" {c}").as_bytes());
            }
            raw.extend_from_slice(b"\r\n");
            raw.extend_from_slice(&v);
            raw.extend_from_slice(b"\r\n");
            (k, raw)
        });
    let err_line = prop::sample::select(vec![
        &b"ERROR\r\n"[..],
        b"CLIENT_ERROR bad command line format\r\n",
        b"SERVER_ERROR out of memory\r\n",
    ]);
    let retrieval = (
        proptest::collection::vec(item, 0..6),
        proptest::option::of(err_line.clone()),
    )
        .prop_map(|(items, error)| {
            let mut bytes: Vec<u8> = items.iter().flat_map(|(_, r)| r.iter().copied()).collect();
            match &error {
                Some(e) => bytes.extend_from_slice(e),
                None => bytes.extend_from_slice(b"END\r\n"),
            }
            GenReply {
                bytes,
                retrieval: true,
                items,
                error: error.map(|e| e.to_vec()),
            }
        });
    let line = prop_oneof![
        prop::sample::select(vec![
            &b"STORED\r\n"[..],
            b"NOT_STORED\r\n",
            b"EXISTS\r\n",
            b"NOT_FOUND\r\n",
            b"DELETED\r\n",
            b"TOUCHED\r\n",
            b"OK\r\n",
            b"VERSION 1.6.18\r\n",
            b"STAT pid 1\r\nSTAT threads 4\r\nEND\r\n",
        ])
        .prop_map(|s| s.to_vec()),
        any::<u64>().prop_map(|n| format!("{n}\r\n").into_bytes()),
        err_line.prop_map(|s| s.to_vec()),
    ]
    .prop_map(|bytes| GenReply {
        bytes,
        retrieval: false,
        items: vec![],
        error: None,
    });
    prop_oneof![retrieval, line]
}

#[test]
fn rewrite_exptime_of_storage_touch_and_gat() {
    let set = Bytes::from_static(b"set k 5 100 3\r\nabc\r\n");
    let out = rewrite_exptime(Command::Set, &set, |e| {
        assert_eq!(e, 100);
        10
    });
    assert_eq!(out.unwrap(), Bytes::from_static(b"set k 5 10 3\r\nabc\r\n"));
    let cas = Bytes::from_static(b"cas  k 0 0 1 77\r\nx\r\n");
    assert_eq!(
        rewrite_exptime(Command::Cas, &cas, |_| 9).unwrap(),
        Bytes::from_static(b"cas  k 0 9 1 77\r\nx\r\n")
    );
    let touch = Bytes::from_static(b"touch k 0\r\n");
    assert_eq!(
        rewrite_exptime(Command::Touch, &touch, |_| 10).unwrap(),
        Bytes::from_static(b"touch k 10\r\n")
    );
    let gat = Bytes::from_static(b"gat 3600 a b\r\n");
    assert_eq!(
        rewrite_exptime(Command::Gat, &gat, |_| 10).unwrap(),
        Bytes::from_static(b"gat 10 a b\r\n")
    );
    assert!(rewrite_exptime(Command::Get, &Bytes::from_static(b"get a\r\n"), |_| 1).is_none());
}

#[test]
fn set_from_an_item() {
    let item = Item {
        key: Bytes::from_static(b"k"),
        raw: Bytes::from_static(b"VALUE k 7 3 99\r\nabc\r\n"),
    };
    assert_eq!(
        set_from_item(&item, 30).unwrap(),
        Bytes::from_static(b"set k 7 30 3\r\nabc\r\n")
    );
}

// ---- meta commands ----

fn b64(data: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
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
}

#[test]
fn meta_commands_parse() {
    let r = req(b"mg foo v c O123 q\r\n");
    assert_eq!(r.command, Command::MetaGet);
    assert_eq!(keys(&r), vec![&b"foo"[..]]);
    assert!(r.quiet && !r.noreply);
    assert_eq!(r.to_backend(), r.raw);
    let r = req(b"mg foo\n");
    assert!(!r.quiet);
    let r = req(b"md  foo  qx I T30\r\n");
    assert_eq!((r.command, r.quiet), (Command::MetaDelete, true));
    assert_eq!(keys(&r), vec![&b"foo"[..]]);
    let r = req(b"ma n N0 J5 D2 MD v\r\n");
    assert_eq!(
        (r.command, keys(&r)),
        (Command::MetaArithmetic, vec![&b"n"[..]])
    );
    let r = req(b"me foo\r\n");
    assert_eq!(r.command, Command::MetaDebug);
    let r = req(b"mn\r\n");
    assert_eq!((r.command, r.keys.len()), (Command::MetaNoop, 0));
    let r = req(b"mn whatever\r\n");
    assert_eq!(r.command, Command::MetaNoop);
    // Flags the backend will refuse still go to it (it answers one error line).
    let r = req(b"mg foo zz v v\r\n");
    assert_eq!(r.command, Command::MetaGet);
}

#[test]
fn meta_set_frames_its_data_block() {
    let r = req(b"ms k 5 T30 F3 q\r\nhello\r\n");
    assert_eq!((r.command, r.quiet), (Command::MetaSet, true));
    assert_eq!(keys(&r), vec![&b"k"[..]]);
    assert_eq!(&r.raw[..], b"ms k 5 T30 F3 q\r\nhello\r\n");
    let r = req(b"ms k 0\r\n\r\n");
    assert_eq!(r.raw.len(), 10);
    let r = req(b"ms k +4\r\na\r\nb\r\n");
    assert_eq!(&r.raw[r.raw.len() - 6..], b"a\r\nb\r\n");
    assert_eq!(one(b"ms k 5 T30\r\nhel"), (None, 0));
    // Bad data block: memcached reads <datalen>+2 bytes and refuses them.
    assert_eq!(err(b"ms k 2\r\nhixx"), (BAD_CHUNK.to_vec(), 0, 12));
    // No length, or one memcached cannot read: nothing to swallow.
    assert_eq!(err(b"ms k\r\n"), (BAD_FORMAT.to_vec(), 0, 6));
    assert_eq!(err(b"ms k S2 T1\r\n"), (BAD_FORMAT.to_vec(), 0, 12));
    assert_eq!(err(b"ms k -1\r\n"), (BAD_FORMAT.to_vec(), 0, 9));
    assert_eq!(err(b"ms k 2147483646\r\n").1, 0);
    // Errors memcached answers without reading the block (then read as commands): the same.
    let flags: Vec<String> = (0..17).map(|i| format!("O{i}")).collect();
    let line = format!("ms k 2 {}\r\n", flags.join(" "));
    assert_eq!(
        err(format!("{line}hi\r\n").as_bytes()),
        (META_FLAGS_TOO_LONG.to_vec(), 0, line.len())
    );
    let line = format!("ms {} 2\r\n", "k".repeat(251));
    assert_eq!(
        err(format!("{line}hi\r\n").as_bytes()),
        (KEY_TOO_LONG.to_vec(), 0, line.len())
    );
    let line = format!("ms k 2 {}\r\n", flags[..16].join(" "));
    assert_eq!(
        req(format!("{line}hi\r\n").as_bytes()).command,
        Command::MetaSet
    );
    let long = format!("ms {} 2\r\nhi\r\n", "k".repeat(251));
    assert_eq!(
        err(long.as_bytes()),
        (KEY_TOO_LONG.to_vec(), 0, long.len() - 4)
    );
    let limits = Limits {
        item_size_max: 4,
        ..lim()
    };
    assert_eq!(
        one_with(b"ms k 5\r\nhello\r\n", &limits).0,
        Some(Parsed::TooLarge {
            reply: Bytes::from_static(TOO_LARGE),
            swallow: 7,
            unlink: Request {
                command: Command::MetaDelete,
                keys: vec![Bytes::from_static(b"k")],
                gat_exptime: None,
                noreply: true,
                quiet: false,
                raw: Bytes::from_static(b"md k\r\n"),
            }
        })
    );
    // A base64 key is routed decoded and deleted as sent.
    match one_with(b"ms aw== 5 b\r\nhello\r\n", &limits).0 {
        Some(Parsed::TooLarge { unlink, .. }) => {
            assert_eq!(&unlink.raw[..], b"md aw== b\r\n");
            assert_eq!(&unlink.keys[0][..], b"k");
        }
        other => panic!("{other:?}"),
    }
    // Only `set` unlinks among the classic commands (as memcached).
    assert!(matches!(
        one_with(b"add k 0 0 5\r\nhello\r\n", &limits).0,
        Some(Parsed::Error { .. })
    ));
    match one_with(b"set k 0 0 5 noreply\r\nhello\r\n", &limits).0 {
        Some(Parsed::TooLarge { reply, unlink, .. }) => {
            assert!(reply.is_empty());
            assert_eq!(&unlink.raw[..], b"delete k\r\n");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn meta_errors() {
    assert_eq!(err(b"mg\r\n"), (ERROR.to_vec(), 0, 4));
    assert_eq!(err(b"md \r\n"), (ERROR.to_vec(), 0, 5));
    assert_eq!(err(b"me\r\n"), (BAD_FORMAT.to_vec(), 0, 4));
    assert_eq!(err(b"mg a\x01b v\r\n").0, BAD_KEY.to_vec());
    let long = format!("mg {} v\r\n", "k".repeat(251));
    assert_eq!(err(long.as_bytes()).0, KEY_TOO_LONG.to_vec());
    // Case-sensitive, like memcached.
    assert_eq!(err(b"MG k\r\n").0, ERROR.to_vec());
}

#[test]
fn base64_keys_route_by_their_decoded_bytes() {
    for data in [&b"f"[..], b"fo", b"foo", b"foob", b"\x00\xff\x80binary"] {
        let enc = b64(data);
        assert_eq!(
            base64_decode(enc.as_bytes()).as_deref(),
            Some(data),
            "{enc}"
        );
        let r = req(format!("mg {enc} b v\r\n").as_bytes());
        assert_eq!(keys(&r), vec![data]);
        assert_eq!(
            &r.raw[..],
            format!("mg {enc} b v\r\n").as_bytes(),
            "forwarded as is"
        );
        let r = req(format!("ms {enc} 1 b\r\nx\r\n").as_bytes());
        assert_eq!(keys(&r), vec![data]);
    }
    for bad in [
        &b"a"[..],
        b"abc",
        b"ab=c",
        b"a===",
        b"!!!!",
        b"Zg==Zg==",
        b"",
    ] {
        assert_eq!(
            base64_decode(bad),
            None,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // Undecodable: routed by the text, memcached answers the error.
    assert_eq!(keys(&req(b"mg !!!! b\r\n")), vec![&b"!!!!"[..]]);
}

#[test]
fn quiet_sentinel_round_trip() {
    let r = req(b"mg k v q\r\n");
    assert_eq!(&with_quiet_sentinel(&r.raw)[..], b"mg k v q\r\nmn\r\n");
    assert_eq!(
        strip_quiet_sentinel(Bytes::from_static(b"MN\r\n")),
        Bytes::new()
    );
    assert_eq!(
        strip_quiet_sentinel(Bytes::from_static(b"VA 2\r\nMN\r\nMN\r\n")),
        Bytes::from_static(b"VA 2\r\nMN\r\n")
    );
}

#[test]
fn scan_meta_replies() {
    let s = |b: &[u8], q| ReplyScanner::new().scan_meta(b, q);
    assert_eq!(s(b"HD\r\n", false), Ok(Some(4)));
    assert_eq!(s(b"EN\r\nHD\r\n", false), Ok(Some(4)));
    assert_eq!(s(b"HD c12 t-1 kfoo O1\r\n", false), Ok(Some(20)));
    assert_eq!(s(b"VA 2 c1\r\nhi\r\nHD\r\n", false), Ok(Some(13)));
    assert_eq!(
        s(b"VA 4\r\nMN\r\n\r\n", false),
        Ok(Some(12)),
        "data that looks like MN"
    );
    assert_eq!(s(b"VA 2 c1\r\nhi", false), Ok(None));
    assert_eq!(s(b"VA 2 c1\r\nhi\r", false), Ok(None));
    let me = b"ME k exp=-1 la=1 cas=2 fetch=no cls=1 size=63\r\n";
    assert_eq!(s(me, false), Ok(Some(me.len())));
    assert_eq!(
        s(b"CLIENT_ERROR bad command line format\r\n", false),
        Ok(Some(38))
    );
    assert!(s(b"VA x\r\n", false).is_err());
    assert!(s(b"VA 2\r\nhixx", false).is_err());
    assert!(s(b"VALUE k 0 1\r\nx\r\nEND\r\n", false).is_err());
    // Quiet: everything up to MN.
    assert_eq!(s(b"MN\r\n", true), Ok(Some(4)));
    assert_eq!(s(b"HD\r\nMN\r\n", true), Ok(Some(8)));
    assert_eq!(s(b"VA 4\r\nMN\r\n\r\nMN\r\n", true), Ok(Some(16)));
    assert_eq!(s(b"NF\r\n", true), Ok(None));
    // Resumes across reads.
    let all = b"VA 10 c5\r\n0123456789\r\nMN\r\n";
    let mut sc = ReplyScanner::new();
    for n in 0..all.len() {
        assert_eq!(sc.scan_meta(&all[..n], true), Ok(None), "{n}");
    }
    assert_eq!(sc.scan_meta(all, true), Ok(Some(all.len())));
}

#[test]
fn rewrite_meta_ttls() {
    let cap = |e: i64| if e == 0 || e > 10 { 10 } else { e };
    let r = |c, b: &'static [u8]| rewrite_meta_ttl(c, &Bytes::from_static(b), cap);
    assert_eq!(
        r(Command::MetaSet, b"ms k 2 T3600 c\r\nhi\r\n").unwrap(),
        &b"ms k 2 T10 c\r\nhi\r\n"[..]
    );
    assert_eq!(
        r(Command::MetaSet, b"ms k 2 T5\r\nhi\r\n"),
        Some(Bytes::from_static(b"ms k 2 T5\r\nhi\r\n"))
    );
    assert_eq!(
        r(Command::MetaSet, b"ms k 2 c\r\nhi\r\n").unwrap(),
        &b"ms k 2 c T10\r\nhi\r\n"[..]
    );
    assert_eq!(
        r(Command::MetaSet, b"ms k 2\nhi\r\n").unwrap(),
        &b"ms k 2 T10\nhi\r\n"[..]
    );
    assert_eq!(
        r(Command::MetaSet, b"ms k 2 q\r\nhi\r\nmn\r\n").unwrap(),
        &b"ms k 2 q T10\r\nhi\r\nmn\r\n"[..]
    );
    // The key or data length is never taken for a flag.
    assert_eq!(
        r(Command::MetaSet, b"ms T100 2\r\nhi\r\n").unwrap(),
        &b"ms T100 2 T10\r\nhi\r\n"[..]
    );
    assert_eq!(
        r(Command::MetaGet, b"mg N99 v N3600 T0 t\r\n").unwrap(),
        &b"mg N99 v N10 T10 t\r\n"[..]
    );
    assert_eq!(r(Command::MetaGet, b"mg k v\r\n"), None);
    assert_eq!(
        r(Command::MetaArithmetic, b"ma k N0 J1\r\n").unwrap(),
        &b"ma k N10 J1\r\n"[..]
    );
    assert_eq!(
        r(Command::MetaDelete, b"md k I T3600\r\n").unwrap(),
        &b"md k I T10\r\n"[..]
    );
    assert_eq!(r(Command::MetaDelete, b"md k N3600\r\n"), None);
    // A bad token is left for memcached to refuse.
    assert_eq!(r(Command::MetaGet, b"mg k Tx\r\n"), None);
    assert_eq!(r(Command::MetaNoop, b"mn\r\n"), None);
}

/// One meta reply as a backend sends it: (bytes, sent for a quiet request).
fn gen_meta_reply() -> impl Strategy<Value = (Vec<u8>, bool)> {
    let one = prop_oneof![
        prop::sample::select(vec![
            &b"HD\r\n"[..],
            b"HD c42 t-1 kfoo O9\r\n",
            b"EN\r\n",
            b"NF\r\n",
            b"NS\r\n",
            b"EX c1\r\n",
            b"ME k exp=-1 la=3 cas=7 fetch=no cls=1 size=63\r\n",
            b"CLIENT_ERROR bad command line format\r\n",
            b"SERVER_ERROR out of memory\r\n",
        ])
        .prop_map(|s| s.to_vec()),
        (
            value_strategy(),
            prop::sample::select(vec!["", " c5", " W", " Z X", " s3 t10 kk"])
        )
            .prop_map(|(v, flags)| {
                let mut b = format!("VA {}{flags}\r\n", v.len()).into_bytes();
                b.extend_from_slice(&v);
                b.extend_from_slice(b"\r\n");
                b
            }),
    ];
    (proptest::option::of(one), any::<bool>()).prop_map(|(one, quiet)| match (one, quiet) {
        (Some(mut b), true) => {
            b.extend_from_slice(b"MN\r\n");
            (b, true)
        }
        (None, true) => (b"MN\r\n".to_vec(), true),
        (Some(b), false) => (b, false),
        (None, false) => (b"HD\r\n".to_vec(), false),
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn meta_replies_scan_the_same_however_split(
        replies in proptest::collection::vec(gen_meta_reply(), 1..20),
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        let input: Vec<u8> = replies.iter().flat_map(|(b, _)| b.iter().copied()).collect();
        let points = splits(input.len(), &cuts);
        let mut buf = BytesMut::new();
        let mut scanner = ReplyScanner::new();
        let mut next = 0;
        for w in points.windows(2) {
            buf.extend_from_slice(&input[w[0]..w[1]]);
            while let Some((want, quiet)) = replies.get(next) {
                let stateless = ReplyScanner::new().scan_meta(&buf, *quiet);
                let resumed = scanner.scan_meta(&buf, *quiet);
                prop_assert_eq!(&stateless, &resumed);
                match resumed {
                    Ok(Some(n)) => {
                        prop_assert_eq!(&buf[..n], &want[..]);
                        let _ = buf.split_to(n);
                        next += 1;
                    }
                    Ok(None) => break,
                    Err(e) => return Err(TestCaseError::fail(format!("{e:?}"))),
                }
            }
        }
        prop_assert_eq!(next, replies.len());
    }
}

// ---- lines memcached would close the connection on ----

fn line_of(prefix: &[u8], len: usize, end: &[u8]) -> Vec<u8> {
    let mut v = prefix.to_vec();
    v.resize(len, b'z');
    v.extend_from_slice(end);
    v
}

#[test]
fn long_lines_are_refused_not_forwarded() {
    let max = lim().max_forward_line;
    assert!(max + LINE_REWRITE_HEADROOM <= MEMCACHED_LINE_MAX);
    // `incr k 1 zzz...`: memcached accepts (and ignores) the last token, but closes the
    // connection when more than 2048 bytes of the line arrive before its `\n`.
    let ok = line_of(b"incr k 1 ", max, b"\n");
    assert_eq!(req(&ok).keys.len(), 1);
    let ok = line_of(b"incr k 1 ", max - 1, b"\r\n");
    assert_eq!(req(&ok).keys.len(), 1);
    for (len, end) in [(max + 1, &b"\n"[..]), (max, b"\r\n"), (17000, b"\r\n")] {
        let long = line_of(b"incr k 1 ", len, end);
        assert_eq!(
            err(&long),
            (b"CLIENT_ERROR line too long\r\n".to_vec(), 0, long.len())
        );
    }
    // The same refusal for gat, meta commands and even mn: only get/gets may be long. (A
    // malformed long line keeps its own error: it is not forwarded either.)
    let gat = format!("gat 0{}", " k".repeat(1500));
    for prefix in [
        gat.as_bytes(),
        b"mg k O",
        b"mn ",
        b"version ",
        b"touch k 1 ",
    ] {
        let long = line_of(prefix, 3000, b"\r\n");
        assert_eq!(
            err(&long).0,
            b"CLIENT_ERROR line too long\r\n",
            "{prefix:.10?}"
        );
    }
    let keys: Vec<u8> = (0..1000)
        .flat_map(|i| format!(" k{i}").into_bytes())
        .collect();
    for (cmd, spaces) in [("get", 0), ("gets", 0), ("get", 100)] {
        let mut line = vec![b' '; spaces];
        line.extend_from_slice(cmd.as_bytes());
        line.extend_from_slice(&keys);
        line.extend_from_slice(b"\r\n");
        assert_eq!(req(&line).keys.len(), 1000, "{cmd} after {spaces} spaces");
    }
    // memcached closes on more than 100 leading spaces before a long get.
    let mut line = vec![b' '; 101];
    line.extend_from_slice(b"get");
    line.extend_from_slice(&keys);
    line.extend_from_slice(b"\r\n");
    assert_eq!(err(&line).0, b"CLIENT_ERROR line too long\r\n");
}

#[test]
fn long_storage_line_swallows_its_data_block() {
    // A set whose line is too long but well formed: refused with its data block consumed, so
    // the data is never read as a command; the next request parses.
    let mut input = line_of(b"set k 0 0 5", 2500, b"");
    for b in &mut input[11..] {
        *b = b' ';
    }
    input.extend_from_slice(b"\r\nhello\r\nget k\r\n");
    let mut d = Driver::default();
    d.feed(&input, &lim());
    assert!(!d.fatal);
    assert_eq!(d.out.len(), 2, "{:?}", d.out);
    assert!(
        matches!(&d.out[0].0, Parsed::Error { reply, .. } if &reply[..] == b"CLIENT_ERROR line too long\r\n")
    );
    assert!(matches!(&d.out[1].0, Parsed::Request(r) if r.command == Command::Get));
    // With noreply the refusal is silent, as memcached's errors are.
    let mut input = line_of(b"set k 0 0 5 noreply", 2500, b"");
    for b in &mut input[19..] {
        *b = b' ';
    }
    input.extend_from_slice(b"\r\nhello\r\n");
    assert_eq!(err(&input), (Vec::new(), 0, input.len()));
}

#[test]
fn http_request_lines_are_fatal_without_a_reply() {
    for line in [
        &b"GET / HTTP/1.0\r\n"[..],
        b"POST /x HTTP/1.1\r\n",
        b"foo  HTTP/  \r\n",
        b"HTTP/1.1\r\n",
    ] {
        let mut buf = BytesMut::from(line);
        assert_eq!(
            parse_request(&mut buf, &lim()),
            Err(Fatal {
                reply: Bytes::new()
            }),
            "{line:?}"
        );
    }
    // memcached answers these `ERROR` (or serves them): a first byte it dispatches on, a
    // known command, `HTTP/` not last.
    for line in [
        &b"gopher / HTTP/1.0\r\n"[..],
        b"stats HTTP/1.1\r\n",
        b"GET / HTTP/1.0 noreply\r\n",
    ] {
        let mut buf = BytesMut::from(line);
        assert!(parse_request(&mut buf, &lim()).is_ok(), "{line:?}");
    }
}
