//! Combining the replies of a Redis command that was split over servers (MGET, MSET, DEL, ...)
//! or sent to every server (DBSIZE, KEYS, FLUSHALL, SCRIPT ...), and the SCAN cursor that walks
//! the servers in turn. Pure functions over reply bytes, so they are unit-tested here.

use bytes::{Bytes, BytesMut};

use crate::protocol::redis_commands::Merge;
use crate::protocol::resp::{self, parse_frame, Frame};

/// The payload of a RESP2 bulk reply (`$n\r\n...\r\n`); None for anything else.
pub fn bulk_payload(b: &Bytes) -> Option<Bytes> {
    let rest = b.strip_prefix(b"$")?;
    let nl = rest.iter().position(|&c| c == b'\r')?;
    let len: usize = std::str::from_utf8(&rest[..nl]).ok()?.parse().ok()?;
    let start = 1 + nl + 2;
    (b.len() == start + len + 2).then(|| b.slice(start..start + len))
}

/// `-<msg>\r\n` with CR/LF in `msg` turned into spaces (an error line cannot hold them).
pub fn error(msg: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(msg.len() + 3);
    let clean: String = msg
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    resp::write_error(&mut out, &clean);
    out.freeze()
}

fn frame(reply: &Bytes) -> Result<Frame, Bytes> {
    parse_frame(reply)
        .map(|(f, _)| f)
        .map_err(|e| error(&format!("ERR kvrouter could not parse a server reply: {e}")))
}

fn array(reply: &Bytes) -> Result<Vec<Frame>, Bytes> {
    match frame(reply)? {
        Frame::Array(Some(v)) | Frame::Set(v) => Ok(v),
        Frame::Array(None) => Ok(Vec::new()),
        other => Err(error(&format!(
            "ERR kvrouter expected an array from the server, got {other:?}"
        ))),
    }
}

fn integer(reply: &Bytes) -> Result<i64, Bytes> {
    match frame(reply)? {
        Frame::Integer(i) => Ok(i),
        other => Err(error(&format!(
            "ERR kvrouter expected an integer from the server, got {other:?}"
        ))),
    }
}

/// Merge complete part replies (all successful transport-wise, in part order). `part_of` gives,
/// for `KeyOrderArray`, the part of each key in the client's order. A server error reply in any
/// part is returned as the command's reply.
pub fn merge(how: Merge, replies: &[Bytes], part_of: &[usize]) -> Bytes {
    if let Some(e) = replies.iter().find(|r| r.first() == Some(&b'-')) {
        return e.clone();
    }
    match merge_inner(how, replies, part_of) {
        Ok(b) | Err(b) => b,
    }
}

fn merge_inner(how: Merge, replies: &[Bytes], part_of: &[usize]) -> Result<Bytes, Bytes> {
    let mut out = BytesMut::new();
    match how {
        Merge::KeyOrderArray => {
            let parts = replies.iter().map(array).collect::<Result<Vec<_>, _>>()?;
            let mut cursor = vec![0usize; parts.len()];
            resp::write_array_len(&mut out, Some(part_of.len()));
            for &p in part_of {
                let item = parts[p].get(cursor[p]).ok_or_else(|| {
                    error("ERR kvrouter: a server answered fewer values than keys asked")
                })?;
                cursor[p] += 1;
                item.encode_resp2(&mut out);
            }
        }
        Merge::AllOk => {
            if let Some(bad) = replies.iter().find(|r| r.as_ref() != b"+OK\r\n") {
                return Ok(bad.clone());
            }
            resp::write_simple(&mut out, b"OK");
        }
        Merge::Sum => {
            let mut sum = 0i64;
            for r in replies {
                sum = sum.saturating_add(integer(r)?);
            }
            resp::write_integer(&mut out, sum);
        }
        Merge::Max => {
            let mut max = 0i64;
            for r in replies {
                max = max.max(integer(r)?);
            }
            resp::write_integer(&mut out, max);
        }
        Merge::Concat => {
            let parts = replies.iter().map(array).collect::<Result<Vec<_>, _>>()?;
            resp::write_array_len(&mut out, Some(parts.iter().map(Vec::len).sum()));
            parts
                .iter()
                .flatten()
                .for_each(|f| f.encode_resp2(&mut out));
        }
        Merge::FirstNonNil => {
            let nil = |r: &Bytes| r.as_ref() == b"$-1\r\n" || r.as_ref() == b"*-1\r\n";
            return Ok(replies
                .iter()
                .find(|r| !nil(r))
                .cloned()
                .unwrap_or_else(|| Bytes::from_static(b"$-1\r\n")));
        }
        Merge::AllEqual => {
            if replies.windows(2).any(|w| w[0] != w[1]) {
                return Err(error(
                    "ERR the servers of the pool answered differently; run the command on each server",
                ));
            }
            return Ok(replies[0].clone());
        }
        Merge::ElementwiseMin => {
            let parts = replies.iter().map(array).collect::<Result<Vec<_>, _>>()?;
            let n = parts[0].len();
            resp::write_array_len(&mut out, Some(n));
            for i in 0..n {
                let mut min = i64::MAX;
                for p in &parts {
                    match p.get(i) {
                        Some(Frame::Integer(v)) => min = min.min(*v),
                        _ => return Err(error("ERR kvrouter: servers answered unlike arrays")),
                    }
                }
                resp::write_integer(&mut out, min);
            }
        }
        Merge::Union => {
            let parts = replies.iter().map(array).collect::<Result<Vec<_>, _>>()?;
            let mut seen = std::collections::HashSet::new();
            let mut names = Vec::new();
            for f in parts.iter().flatten() {
                let mut b = BytesMut::new();
                f.encode_resp2(&mut b);
                if seen.insert(b.clone()) {
                    names.push(b);
                }
            }
            resp::write_array_len(&mut out, Some(names.len()));
            names.iter().for_each(|b| out.extend_from_slice(b));
        }
        Merge::PairSums => {
            let parts = replies.iter().map(array).collect::<Result<Vec<_>, _>>()?;
            let first = &parts[0];
            resp::write_array_len(&mut out, Some(first.len()));
            for (i, f) in first.iter().enumerate() {
                if i % 2 == 0 {
                    f.encode_resp2(&mut out);
                    continue;
                }
                let mut sum = 0i64;
                for p in &parts {
                    match p.get(i) {
                        Some(Frame::Integer(v)) => sum = sum.saturating_add(*v),
                        _ => return Err(error("ERR kvrouter: servers answered unlike arrays")),
                    }
                }
                resp::write_integer(&mut out, sum);
            }
        }
        Merge::Scan => return Err(error("ERR kvrouter: SCAN is merged by scan_reply")),
    }
    Ok(out.freeze())
}

/// A SCAN cursor as redis-server reads it (`strtoull`: a leading `-` wraps around, so `SCAN -1`
/// is a valid, huge cursor); None when it is not a number.
pub fn parse_cursor(arg: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(arg).ok()?;
    match s.strip_prefix('-') {
        Some(rest) if !rest.starts_with(['-', '+']) => {
            rest.parse::<u64>().ok().map(u64::wrapping_neg)
        }
        _ => s.parse::<u64>().ok(),
    }
}

/// One step of the proxy's SCAN over `n_servers`: the server it runs on and the request to send
/// there (the client's, with that server's own cursor); None when the cursor is not a number.
pub fn scan_step(args: &[Bytes], n_servers: usize) -> Option<(usize, Bytes)> {
    let (server, backend_cursor) = split_cursor(parse_cursor(args.get(1)?)?, n_servers);
    let cursor = backend_cursor.to_string();
    let mut words: Vec<&[u8]> = args.iter().map(|a| a.as_ref()).collect();
    words[1] = cursor.as_bytes();
    Some((server, super::encode_request(&words).raw))
}

/// The proxy's SCAN cursor: `backend_cursor * n_servers + server_index`. Cursor 0 starts on
/// server 0; when a server's own scan ends, the walk continues at cursor 0 of the next server
/// (proxy cursor `server + 1`), and proxy cursor 0 is returned after the last server.
pub fn split_cursor(cursor: u64, n_servers: usize) -> (usize, u64) {
    let n = n_servers as u64;
    ((cursor % n) as usize, cursor / n)
}

/// Rewrite a server's SCAN reply `[next, [keys...]]` with the proxy cursor.
pub fn scan_reply(reply: &Bytes, server: usize, n_servers: usize) -> Bytes {
    if reply.first() == Some(&b'-') {
        return reply.clone();
    }
    let result = (|| {
        let parts = array(reply)?;
        let (Some(Frame::Bulk(Some(next))), Some(keys)) = (parts.first(), parts.get(1)) else {
            return Err(error("ERR kvrouter: unexpected SCAN reply from the server"));
        };
        let next: u64 = std::str::from_utf8(next)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| error("ERR kvrouter: bad cursor from the server"))?;
        let n = n_servers as u64;
        let cursor = if next == 0 {
            if server + 1 < n_servers {
                server as u64 + 1
            } else {
                0
            }
        } else {
            next.checked_mul(n)
                .and_then(|c| c.checked_add(server as u64))
                .ok_or_else(|| {
                    error("ERR kvrouter: the server's SCAN cursor is too large to encode")
                })?
        };
        let mut out = BytesMut::new();
        resp::write_array_len(&mut out, Some(2));
        resp::write_bulk(&mut out, Some(cursor.to_string().as_bytes()));
        keys.encode_resp2(&mut out);
        Ok(out.freeze())
    })();
    match result {
        Ok(b) | Err(b) => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_read_as_redis_reads_them() {
        assert_eq!(parse_cursor(b"0"), Some(0));
        assert_eq!(parse_cursor(b"+7"), Some(7));
        assert_eq!(parse_cursor(b"-1"), Some(u64::MAX));
        assert_eq!(parse_cursor(b"-0"), Some(0));
        for bad in [
            &b"--1"[..],
            b"-+1",
            b"-",
            b"",
            b" 1",
            b"1x",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_cursor(bad), None, "{bad:?}");
        }
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn merges() {
        let mget = merge(
            Merge::KeyOrderArray,
            &[b("*2\r\n$1\r\na\r\n$-1\r\n"), b("*1\r\n$1\r\nb\r\n")],
            &[0, 1, 0],
        );
        assert_eq!(mget, b("*3\r\n$1\r\na\r\n$1\r\nb\r\n$-1\r\n"));
        assert_eq!(
            merge(Merge::Sum, &[b(":2\r\n"), b(":3\r\n")], &[]),
            b(":5\r\n")
        );
        assert_eq!(
            merge(Merge::AllOk, &[b("+OK\r\n"), b("+OK\r\n")], &[]),
            b("+OK\r\n")
        );
        assert_eq!(
            merge(Merge::AllOk, &[b("+OK\r\n"), b("-OOM no\r\n")], &[]),
            b("-OOM no\r\n")
        );
        assert_eq!(
            merge(
                Merge::Concat,
                &[b("*1\r\n$1\r\na\r\n"), b("*0\r\n"), b("*1\r\n$1\r\nc\r\n")],
                &[]
            ),
            b("*2\r\n$1\r\na\r\n$1\r\nc\r\n")
        );
        assert_eq!(
            merge(Merge::FirstNonNil, &[b("$-1\r\n"), b("$1\r\nk\r\n")], &[]),
            b("$1\r\nk\r\n")
        );
        assert_eq!(
            merge(
                Merge::ElementwiseMin,
                &[b("*2\r\n:1\r\n:1\r\n"), b("*2\r\n:0\r\n:1\r\n")],
                &[]
            ),
            b("*2\r\n:0\r\n:1\r\n")
        );
        assert!(
            merge(Merge::AllEqual, &[b("$1\r\na\r\n"), b("$1\r\nb\r\n")], &[]).starts_with(b"-ERR")
        );
        assert!(merge(Merge::Sum, &[b("+OK\r\n")], &[]).starts_with(b"-ERR kvrouter"));
    }

    #[test]
    fn scan_cursor_walks_every_server() {
        assert_eq!(split_cursor(0, 3), (0, 0));
        assert_eq!(split_cursor(2, 3), (2, 0));
        assert_eq!(split_cursor(3 * 17 + 1, 3), (1, 17));
        let reply = |c: &str| b(&format!("*2\r\n${}\r\n{c}\r\n*1\r\n$1\r\nk\r\n", c.len()));
        assert_eq!(
            scan_reply(&reply("17"), 1, 3),
            b("*2\r\n$2\r\n52\r\n*1\r\n$1\r\nk\r\n")
        );
        assert!(scan_reply(&reply("0"), 1, 3).starts_with(b"*2\r\n$1\r\n2\r\n"));
        assert!(scan_reply(&reply("0"), 2, 3).starts_with(b"*2\r\n$1\r\n0\r\n"));
        assert!(scan_reply(&reply("18446744073709551615"), 2, 3).starts_with(b"-ERR"));
    }

    #[test]
    fn bulk_payloads() {
        let b = |s: &'static [u8]| bulk_payload(&Bytes::from_static(s));
        assert_eq!(b(b"$5\r\nhello\r\n").as_deref(), Some(&b"hello"[..]));
        assert_eq!(b(b"$0\r\n\r\n").as_deref(), Some(&b""[..]));
        assert_eq!(b(b"$-1\r\n"), None);
        assert_eq!(b(b"+OK\r\n"), None);
        assert_eq!(b(b"$5\r\nhel"), None);
    }

    #[test]
    fn pubsub_merges() {
        let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        let chans = merge(
            Merge::Union,
            &[
                b("*2\r\n$1\r\na\r\n$1\r\nb\r\n"),
                b("*2\r\n$1\r\nb\r\n$1\r\nc\r\n"),
                b("*0\r\n"),
            ],
            &[],
        );
        assert_eq!(chans, b("*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n"));
        let numsub = merge(
            Merge::PairSums,
            &[
                b("*4\r\n$1\r\nx\r\n:1\r\n$1\r\ny\r\n:0\r\n"),
                b("*4\r\n$1\r\nx\r\n:2\r\n$1\r\ny\r\n:5\r\n"),
            ],
            &[],
        );
        assert_eq!(numsub, b("*4\r\n$1\r\nx\r\n:3\r\n$1\r\ny\r\n:5\r\n"));
    }
}
