//! RESP (the Redis protocol): request parser (client side), reply scanner (backend side), and a
//! `Frame` tree for the few replies the proxy must look inside.
//!
//! - [`parse_request`] takes one command from the client's read buffer: a multibulk array of
//!   bulk strings, or an inline line as redis-cli and telnet send. Arguments are `Bytes` slices of
//!   the buffer (no copies) and `raw` is the exact bytes received, so the request is forwarded
//!   unchanged. Errors carry redis-server's own texts (networking.c `processMultibulkBuffer` /
//!   `processInlineBuffer`) so a client sees what the server would have said.
//! - [`scan_reply`] / [`ReplyScanner`] only *measure* a reply (RESP2 and RESP3): the proxy
//!   forwards replies as they are. The scan is iterative with a fixed-size stack (no recursion,
//!   no allocation) so `*1\r\n*1\r\n...` cannot blow the stack; nesting is capped at
//!   [`MAX_DEPTH`]. `ReplyScanner` resumes where it stopped, so a huge reply arriving in many
//!   reads is scanned once, not once per read.
//! - [`Frame`] / [`parse_frame`] build a tree when replies must be merged (MGET arrays, summed
//!   integers); [`Frame::encode`] writes RESP3 and [`Frame::encode_resp2`] downgrades RESP3-only
//!   types for RESP2 clients (what redis-server itself does for a RESP2 connection).

use bytes::{BufMut, Bytes, BytesMut};
use std::borrow::Cow;
use std::fmt;

/// redis's PROTO_INLINE_MAX_SIZE: the longest unterminated inline request or count line.
pub const PROTO_INLINE_MAX_SIZE: usize = 64 * 1024;

/// Deepest reply nesting accepted by [`scan_reply`] and [`parse_frame`].
pub const MAX_DEPTH: usize = 1024;

/// Limits applied while parsing requests; they come from the listener config.
#[derive(Clone, Copy, Debug)]
pub struct RespLimits {
    /// Largest bulk argument (redis's proto-max-bulk-len, default 512 MiB).
    pub max_bulk_len: usize,
    /// Most arguments in one multibulk request.
    pub max_multibulk_len: usize,
    /// Longest unterminated inline request before giving up (redis: 64 KiB).
    pub max_inline_len: usize,
}

impl Default for RespLimits {
    fn default() -> Self {
        RespLimits {
            max_bulk_len: 512 * 1024 * 1024,
            max_multibulk_len: 1024 * 1024,
            max_inline_len: PROTO_INLINE_MAX_SIZE,
        }
    }
}

/// A protocol error. For requests the caller replies `-ERR <message>\r\n` and closes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RespError(Cow<'static, str>);

impl RespError {
    fn new(msg: &'static str) -> RespError {
        RespError(Cow::Borrowed(msg))
    }

    pub fn message(&self) -> &str {
        &self.0
    }

    /// The error reply a client gets: `-ERR <message>\r\n`.
    pub fn to_reply(&self) -> Bytes {
        Bytes::from(format!("-ERR {}\r\n", self.0))
    }
}

impl fmt::Display for RespError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RespError {}

const E_MBULK_LEN: &str = "Protocol error: invalid multibulk length";
const E_BULK_LEN: &str = "Protocol error: invalid bulk length";
const E_BIG_MBULK: &str = "Protocol error: too big mbulk count string";
const E_BIG_BULK: &str = "Protocol error: too big bulk count string";
const E_QUOTES: &str = "Protocol error: unbalanced quotes in request";
const E_BIG_INLINE: &str = "Protocol error: too big inline request";
const E_BULK_CRLF: &str = "Protocol error: bulk data not terminated by CRLF";
const E_REPLY: &str = "Protocol error: invalid reply";
const E_DEPTH: &str = "Protocol error: reply nested too deeply";
const E_INCOMPLETE: &str = "Protocol error: incomplete reply";

/// One client command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RespRequest {
    /// The arguments, `args[0]` being the command name; slices of `raw`.
    pub args: Vec<Bytes>,
    /// The request as received (multibulk), or re-encoded as multibulk for inline commands.
    pub raw: Bytes,
}

/// redis's `string2ll`: optional `-`, no `+`, no spaces, no leading zeros, fits an i64.
fn string2ll(b: &[u8]) -> Option<i64> {
    let (neg, digits) = match b {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 19 || (digits[0] == b'0' && (digits.len() > 1 || neg)) {
        return None;
    }
    let mut v: i64 = 0;
    for &c in digits {
        if !c.is_ascii_digit() {
            return None;
        }
        let d = (c - b'0') as i64;
        v = v.checked_mul(10)?;
        v = if neg {
            v.checked_sub(d)?
        } else {
            v.checked_add(d)?
        };
    }
    Some(v)
}

enum Scan {
    Incomplete,
    /// An empty request (`*0`, `*-1`, blank inline line) of this many bytes: drop it.
    Skip(usize),
    /// A complete request of this many bytes with this many arguments.
    Done(usize, usize),
}

/// The position of the `\r` ending the line that starts at `from`, looking at most `max` bytes.
/// `Ok(None)`: no `\r` yet; `Err(())`: nothing within `max` bytes.
fn find_cr(buf: &[u8], from: usize, max: usize) -> Result<Option<usize>, ()> {
    let end = buf.len().min(from.saturating_add(max + 1));
    match memchr::memchr(b'\r', &buf[from..end]) {
        Some(i) => Ok(Some(from + i)),
        None if buf.len() - from > max => Err(()),
        None => Ok(None),
    }
}

/// Measure one multibulk request at the start of `buf` without allocating.
fn scan_multibulk(buf: &[u8], limits: &RespLimits) -> Result<Scan, RespError> {
    let cr = match find_cr(buf, 0, PROTO_INLINE_MAX_SIZE) {
        Ok(Some(cr)) => cr,
        Ok(None) => return Ok(Scan::Incomplete),
        Err(()) => return Err(RespError::new(E_BIG_MBULK)),
    };
    if cr + 1 >= buf.len() {
        return Ok(Scan::Incomplete);
    }
    let n = match string2ll(&buf[1..cr]) {
        Some(n) if n <= limits.max_multibulk_len as i64 && buf[cr + 1] == b'\n' => n,
        _ => return Err(RespError::new(E_MBULK_LEN)),
    };
    let mut pos = cr + 2;
    if n <= 0 {
        return Ok(Scan::Skip(pos));
    }
    for _ in 0..n {
        if pos >= buf.len() {
            return Ok(Scan::Incomplete);
        }
        if buf[pos] != b'$' {
            let c = buf[pos];
            let shown = if c.is_ascii_graphic() || c == b' ' {
                (c as char).to_string()
            } else {
                format!("\\x{c:02x}")
            };
            return Err(RespError(Cow::Owned(format!(
                "Protocol error: expected '$', got '{shown}'"
            ))));
        }
        let cr = match find_cr(buf, pos, PROTO_INLINE_MAX_SIZE) {
            Ok(Some(cr)) => cr,
            Ok(None) => return Ok(Scan::Incomplete),
            Err(()) => return Err(RespError::new(E_BIG_BULK)),
        };
        if cr + 1 >= buf.len() {
            return Ok(Scan::Incomplete);
        }
        let len = match string2ll(&buf[pos + 1..cr]) {
            Some(l) if l >= 0 && l as u64 <= limits.max_bulk_len as u64 && buf[cr + 1] == b'\n' => {
                l as usize
            }
            _ => return Err(RespError::new(E_BULK_LEN)),
        };
        let data = cr + 2;
        let end = data + len + 2;
        if end > buf.len() {
            return Ok(Scan::Incomplete);
        }
        if &buf[end - 2..end] != b"\r\n" {
            return Err(RespError::new(E_BULK_CRLF));
        }
        pos = end;
    }
    Ok(Scan::Done(pos, n as usize))
}

/// Slice the arguments out of a multibulk request already validated by `scan_multibulk`.
fn multibulk_args(raw: &Bytes, n: usize) -> Vec<Bytes> {
    let mut args = Vec::with_capacity(n);
    let mut pos = memchr::memchr(b'\n', raw).map_or(raw.len(), |i| i + 1);
    for _ in 0..n {
        let cr = pos + memchr::memchr(b'\r', &raw[pos..]).unwrap_or(0);
        let len = string2ll(&raw[pos + 1..cr]).unwrap_or(0) as usize;
        args.push(raw.slice(cr + 2..cr + 2 + len));
        pos = cr + 2 + len + 2;
    }
    args
}

/// redis's `sdssplitargs`: words separated by blanks; `"..."` with `\xHH`, `\n`, `\r`, `\t`,
/// `\b`, `\a` escapes and `'...'` with `\'`. A closing quote must be followed by a blank or the
/// end. Like the C original, a NUL byte ends the line. `None` on unbalanced quotes.
fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let line = &line[..memchr::memchr(0, line).unwrap_or(line.len())];
    let at = |i: usize| line.get(i).copied().unwrap_or(0);
    let is_space = |c: u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    let mut out = Vec::new();
    let mut p = 0;
    loop {
        while p < line.len() && is_space(line[p]) {
            p += 1;
        }
        if p >= line.len() {
            return Some(out);
        }
        let (mut inq, mut insq) = (false, false);
        let mut cur = Vec::new();
        loop {
            let c = at(p);
            if inq {
                if c == b'\\'
                    && at(p + 1) == b'x'
                    && at(p + 2).is_ascii_hexdigit()
                    && at(p + 3).is_ascii_hexdigit()
                {
                    let hex = |h: u8| (h as char).to_digit(16).unwrap_or(0) as u8;
                    cur.push(hex(at(p + 2)) * 16 + hex(at(p + 3)));
                    p += 3;
                } else if c == b'\\' && at(p + 1) != 0 {
                    p += 1;
                    cur.push(match at(p) {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        o => o,
                    });
                } else if c == b'"' {
                    if at(p + 1) != 0 && !is_space(at(p + 1)) {
                        return None;
                    }
                    p += 1;
                    break;
                } else if c == 0 {
                    return None;
                } else {
                    cur.push(c);
                }
            } else if insq {
                if c == b'\\' && at(p + 1) == b'\'' {
                    p += 1;
                    cur.push(b'\'');
                } else if c == b'\'' {
                    if at(p + 1) != 0 && !is_space(at(p + 1)) {
                        return None;
                    }
                    p += 1;
                    break;
                } else if c == 0 {
                    return None;
                } else {
                    cur.push(c);
                }
            } else {
                match c {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => break,
                    b'"' => inq = true,
                    b'\'' => insq = true,
                    o => cur.push(o),
                }
            }
            p += 1;
        }
        out.push(cur);
    }
}

/// Measure an inline request: `Done` carries the line length including its `\n`.
fn scan_inline(buf: &[u8], limits: &RespLimits) -> Result<Option<usize>, RespError> {
    match memchr::memchr(b'\n', buf) {
        Some(nl) => Ok(Some(nl + 1)),
        None if buf.len() > limits.max_inline_len => Err(RespError::new(E_BIG_INLINE)),
        None => Ok(None),
    }
}

/// Take one request from the front of `buf`.
///
/// `Ok(None)`: incomplete, nothing consumed (empty requests before it, `*0`, `*-1` and blank
/// lines, are dropped like redis does). `Err`: the connection is unusable; reply
/// `err.to_reply()` and close.
pub fn parse_request(
    buf: &mut BytesMut,
    limits: &RespLimits,
) -> Result<Option<RespRequest>, RespError> {
    loop {
        if buf.is_empty() {
            return Ok(None);
        }
        if buf[0] == b'*' {
            match scan_multibulk(buf, limits)? {
                Scan::Incomplete => return Ok(None),
                Scan::Skip(n) => {
                    let _ = buf.split_to(n);
                }
                Scan::Done(len, n) => {
                    let raw = buf.split_to(len).freeze();
                    let args = multibulk_args(&raw, n);
                    return Ok(Some(RespRequest { args, raw }));
                }
            }
        } else {
            let Some(len) = scan_inline(buf, limits)? else {
                return Ok(None);
            };
            let mut line = &buf[..len - 1];
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            let words = split_args(line).ok_or(RespError::new(E_QUOTES))?;
            let _ = buf.split_to(len);
            if words.is_empty() {
                continue;
            }
            return Ok(Some(encode_request(&words)));
        }
    }
}

/// Encode arguments as a multibulk request (used for inline commands; handy for tests and
/// for requests the proxy builds itself).
pub fn encode_request<A: AsRef<[u8]>>(words: &[A]) -> RespRequest {
    let mut out = BytesMut::new();
    write_array_len(&mut out, Some(words.len()));
    let mut ranges = Vec::with_capacity(words.len());
    for w in words {
        let w = w.as_ref();
        out.put_u8(b'$');
        put_int(&mut out, w.len() as i64);
        out.put_slice(b"\r\n");
        ranges.push(out.len()..out.len() + w.len());
        out.put_slice(w);
        out.put_slice(b"\r\n");
    }
    let raw = out.freeze();
    let args = ranges.into_iter().map(|r| raw.slice(r)).collect();
    RespRequest { args, raw }
}

/// Resumable reply scanner: call [`scan`](ReplyScanner::scan) with the growing buffer (same
/// start each time) until it returns the length of the first complete reply; it then resets.
/// Work already done is kept between calls, so a large reply is scanned once.
pub struct ReplyScanner {
    /// Where the next element starts.
    pos: usize,
    /// Elements still expected by the top level (1, or 2 after an attribute).
    top: u64,
    /// Elements still expected by each open aggregate.
    stack: [u32; MAX_DEPTH],
    depth: usize,
}

impl Default for ReplyScanner {
    fn default() -> Self {
        ReplyScanner {
            pos: 0,
            top: 1,
            stack: [0; MAX_DEPTH],
            depth: 0,
        }
    }
}

/// The line starting at `from` (without its `\r\n`), and where the next byte starts.
#[inline]
fn line_at(buf: &[u8], from: usize) -> Result<Option<(&[u8], usize)>, RespError> {
    match memchr::memchr(b'\n', &buf[from..]) {
        Some(i) if i > 0 && buf[from + i - 1] == b'\r' => {
            Ok(Some((&buf[from..from + i - 1], from + i + 1)))
        }
        Some(_) => Err(RespError::new(E_REPLY)),
        None => Ok(None),
    }
}

/// What one element header says.
enum Elem {
    /// A complete scalar (or null/empty aggregate) ending here.
    Scalar(usize),
    /// An aggregate header ending here, with this many children; `attr` for attributes.
    Aggregate {
        end: usize,
        children: u64,
        attr: bool,
    },
}

/// Read one element header at `pos` (bulk payloads included).
#[inline]
fn read_elem(buf: &[u8], pos: usize) -> Result<Option<Elem>, RespError> {
    let t = buf[pos];
    let Some((line, next)) = line_at(buf, pos + 1)? else {
        return Ok(None);
    };
    let elem = match t {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Elem::Scalar(next),
        b'$' | b'!' | b'=' => match string2ll(line) {
            Some(-1) if t == b'$' => Elem::Scalar(next),
            Some(n) if n >= 0 => {
                let end = (next as u64).saturating_add(n as u64 + 2);
                if end > buf.len() as u64 {
                    return Ok(None);
                }
                let end = end as usize;
                if &buf[end - 2..end] != b"\r\n" {
                    return Err(RespError::new(E_REPLY));
                }
                Elem::Scalar(end)
            }
            _ => return Err(RespError::new(E_REPLY)),
        },
        b'*' | b'~' | b'>' | b'%' | b'|' => match string2ll(line) {
            Some(-1) if t == b'*' => Elem::Scalar(next),
            Some(0) if t != b'|' => Elem::Scalar(next),
            Some(n) if n >= 0 && n <= (u32::MAX / 2) as i64 => {
                let pairs = matches!(t, b'%' | b'|');
                Elem::Aggregate {
                    end: next,
                    children: n as u64 * if pairs { 2 } else { 1 },
                    attr: t == b'|',
                }
            }
            _ => return Err(RespError::new(E_REPLY)),
        },
        _ => return Err(RespError::new(E_REPLY)),
    };
    Ok(Some(elem))
}

impl ReplyScanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// The length of the first complete reply in `buf`, `Ok(None)` if more bytes are needed.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, RespError> {
        let r = self.scan_inner(buf);
        if !matches!(r, Ok(None)) {
            self.pos = 0;
            self.top = 1;
            self.depth = 0;
        }
        r
    }

    fn scan_inner(&mut self, buf: &[u8]) -> Result<Option<usize>, RespError> {
        loop {
            if self.pos >= buf.len() {
                return Ok(None);
            }
            let Some(elem) = read_elem(buf, self.pos)? else {
                return Ok(None);
            };
            match elem {
                Elem::Scalar(end) => self.pos = end,
                Elem::Aggregate {
                    end,
                    children,
                    attr,
                } => {
                    self.pos = end;
                    if attr {
                        // The attribute takes a slot; the frame it annotates needs one more.
                        match self.depth {
                            0 => self.top += 1,
                            d => self.stack[d - 1] += 1,
                        }
                    }
                    if children > 0 {
                        if self.depth == MAX_DEPTH {
                            return Err(RespError::new(E_DEPTH));
                        }
                        self.stack[self.depth] = children as u32;
                        self.depth += 1;
                        continue;
                    }
                    // `|0`: an empty attribute is complete at once.
                }
            }
            // One element complete: close every aggregate it completes.
            loop {
                if self.depth == 0 {
                    self.top -= 1;
                    if self.top == 0 {
                        return Ok(Some(self.pos));
                    }
                    break;
                }
                self.stack[self.depth - 1] -= 1;
                if self.stack[self.depth - 1] > 0 {
                    break;
                }
                self.depth -= 1;
            }
        }
    }
}

/// The length of the first complete reply in `buf` (RESP2 or RESP3), `Ok(None)` if incomplete.
pub fn scan_reply(buf: &[u8]) -> Result<Option<usize>, RespError> {
    if buf.is_empty() {
        return Ok(None);
    }
    // Fast path: one scalar (status, error, integer, bulk) needs no stack.
    if !matches!(buf[0], b'*' | b'~' | b'>' | b'%' | b'|') {
        return Ok(read_elem(buf, 0)?.map(|e| match e {
            Elem::Scalar(end) | Elem::Aggregate { end, .. } => end,
        }));
    }
    ReplyScanner::new().scan(buf)
}

mod frame;
pub mod merge;
pub use frame::*;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, String> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match parse_request(&mut buf, &RespLimits::default()) {
                Ok(Some(r)) => {
                    // raw always re-parses to the same arguments
                    let mut again = BytesMut::from(&r.raw[..]);
                    let back = parse_request(&mut again, &RespLimits::default())
                        .unwrap()
                        .unwrap();
                    assert_eq!(back.args, r.args);
                    assert!(again.is_empty());
                    out.push(r.args.iter().map(|a| a.to_vec()).collect())
                }
                Ok(None) => return Ok(out),
                Err(e) => return Err(e.message().to_string()),
            }
        }
    }

    fn err(input: &[u8]) -> String {
        parse_all(input).unwrap_err()
    }

    #[test]
    fn multibulk() {
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING"[..]);
        let r = parse_request(&mut buf, &RespLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(
            r.args,
            vec![Bytes::from_static(b"GET"), Bytes::from_static(b"k")]
        );
        assert_eq!(&r.raw[..], b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        assert!(parse_request(&mut buf, &RespLimits::default())
            .unwrap()
            .is_none());
        assert_eq!(&buf[..], b"*1\r\n$4\r\nPING", "incomplete consumes nothing");
        // empty multibulks are skipped, binary data kept
        assert_eq!(
            parse_all(b"*0\r\n*-1\r\n*1\r\n$3\r\na\r\n\r\n").unwrap(),
            vec![vec![b"a\r\n".to_vec()]]
        );
    }

    #[test]
    fn error_texts_match_redis() {
        assert_eq!(err(b"*x\r\n"), "Protocol error: invalid multibulk length");
        assert_eq!(
            err(b"*2000000\r\n"),
            "Protocol error: invalid multibulk length"
        );
        assert_eq!(err(b"*+1\r\n"), "Protocol error: invalid multibulk length");
        assert_eq!(err(b"*1\r\n$-1\r\n"), "Protocol error: invalid bulk length");
        assert_eq!(err(b"*1\r\n$x\r\n"), "Protocol error: invalid bulk length");
        assert_eq!(
            err(b"*1\r\n$536870913\r\n"),
            "Protocol error: invalid bulk length"
        );
        assert_eq!(
            err(b"*1\r\nx3\r\n"),
            "Protocol error: expected '$', got 'x'"
        );
        assert_eq!(
            err(b"SET \"a b\n"),
            "Protocol error: unbalanced quotes in request"
        );
        assert_eq!(
            err(b"SET 'a'b\n"),
            "Protocol error: unbalanced quotes in request"
        );
        assert_eq!(
            err(&vec![b'x'; 65537]),
            "Protocol error: too big inline request"
        );
        assert!(parse_all(&vec![b'x'; 65536]).unwrap().is_empty());
        let mut big = b"*".to_vec();
        big.extend(std::iter::repeat_n(b'1', 65536));
        assert_eq!(err(&big), "Protocol error: too big mbulk count string");
        let mut big = b"*1\r\n$".to_vec();
        big.extend(std::iter::repeat_n(b'1', 65536));
        assert_eq!(err(&big), "Protocol error: too big bulk count string");
        assert_eq!(
            err(b"*1\r\n$1\r\nab\r\n"),
            "Protocol error: bulk data not terminated by CRLF"
        );
        let small = RespLimits {
            max_bulk_len: 3,
            max_multibulk_len: 2,
            ..Default::default()
        };
        let mut b = BytesMut::from(&b"*1\r\n$4\r\nabcd\r\n"[..]);
        assert_eq!(
            parse_request(&mut b, &small).unwrap_err().message(),
            "Protocol error: invalid bulk length"
        );
        let mut b = BytesMut::from(&b"*3\r\n"[..]);
        assert_eq!(
            parse_request(&mut b, &small).unwrap_err().to_reply(),
            "-ERR Protocol error: invalid multibulk length\r\n"
        );
    }

    #[test]
    fn inline_with_quotes() {
        let p = |s: &str| parse_all(s.as_bytes()).unwrap();
        assert_eq!(p("PING\n"), vec![vec![b"PING".to_vec()]]);
        assert_eq!(p(" \t PING\t\r\n\r\n\n"), vec![vec![b"PING".to_vec()]]);
        assert_eq!(
            p("set \"a b\" 'c d'\r\n"),
            vec![vec![b"set".to_vec(), b"a b".to_vec(), b"c d".to_vec()]]
        );
        assert_eq!(
            p("x \"\\x41\\n\\\"\\q\" 'it\\'s'\n")[0][1..],
            [b"A\n\"q".to_vec(), b"it's".to_vec()]
        );
        assert_eq!(p("set k \"\"\n")[0][2], b"");
        assert_eq!(p("a\"b c\" d\n")[0], vec![b"ab c".to_vec(), b"d".to_vec()]);
        assert_eq!(
            p("echo a\0junk\n")[0],
            vec![b"echo".to_vec(), b"a".to_vec()]
        );
        let r = encode_request(&["SET", "k", ""]);
        assert_eq!(&r.raw[..], b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }

    /// Feed `input` in two pieces split at every boundary: same requests, never an error.
    #[test]
    fn split_at_every_boundary() {
        let input: &[u8] = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n*0\r\nPING\r\nset \"a b\" c\n*1\r\n$4\r\nQUIT\r\n";
        let whole = parse_all(input).unwrap();
        assert_eq!(whole.len(), 4);
        for cut in 0..=input.len() {
            let mut buf = BytesMut::from(&input[..cut]);
            let mut got = Vec::new();
            while let Some(r) = parse_request(&mut buf, &RespLimits::default()).unwrap() {
                got.push(r.args.iter().map(|a| a.to_vec()).collect::<Vec<_>>());
            }
            buf.extend_from_slice(&input[cut..]);
            while let Some(r) = parse_request(&mut buf, &RespLimits::default()).unwrap() {
                got.push(r.args.iter().map(|a| a.to_vec()).collect());
            }
            assert_eq!(got, whole, "cut at {cut}");
            assert!(buf.is_empty());
        }
    }

    const REPLIES: &[&[u8]] = &[
        b"+OK\r\n",
        b"-ERR x\r\n",
        b":-12\r\n",
        b"$-1\r\n",
        b"$0\r\n\r\n",
        b"$3\r\na\r\n\r\n",
        b"*-1\r\n",
        b"*0\r\n",
        b"*3\r\n:1\r\n*2\r\n$1\r\na\r\n*0\r\n+x\r\n",
        b"_\r\n",
        b",1.5\r\n",
        b",inf\r\n",
        b"#t\r\n",
        b"(-123456789012345678901234567890\r\n",
        b"=8\r\ntxt:abcd\r\n",
        b"!3\r\nbad\r\n",
        b"%2\r\n+a\r\n:1\r\n+b\r\n~1\r\n#f\r\n",
        b">2\r\n+message\r\n$2\r\nhi\r\n",
        b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n",
        b"*2\r\n|1\r\n+a\r\n+b\r\n:1\r\n:2\r\n",
    ];

    #[test]
    fn scan_and_parse_replies() {
        for r in REPLIES {
            let mut two = r.to_vec();
            two.extend_from_slice(b"+next\r\n");
            assert_eq!(
                scan_reply(&two).unwrap(),
                Some(r.len()),
                "{:?}",
                String::from_utf8_lossy(r)
            );
            for cut in 0..r.len() {
                assert_eq!(scan_reply(&r[..cut]).unwrap(), None);
                // resumable: first a prefix, then the whole
                let mut s = ReplyScanner::new();
                assert_eq!(s.scan(&r[..cut]).unwrap(), None);
                assert_eq!(s.scan(&two).unwrap(), Some(r.len()));
            }
            let (f, n) = parse_frame(&Bytes::copy_from_slice(&two)).unwrap();
            assert_eq!(n, r.len());
            let mut out = BytesMut::new();
            f.encode(&mut out);
            if r != b",inf\r\n" {
                assert_eq!(&out[..], *r, "round trip");
            }
            let mut r2 = BytesMut::new();
            f.encode_resp2(&mut r2);
            let back = parse_frame(&r2.freeze()).unwrap().0;
            assert!(!matches!(
                back,
                Frame::Null | Frame::Map(_) | Frame::Boolean(_) | Frame::Double(_)
            ));
        }
        assert!(scan_reply(b"?x\r\n").is_err());
        assert!(scan_reply(b"+OK\n").is_err());
        assert!(scan_reply(b"$1\r\nab\r\n").is_err());
        assert!(parse_frame(&Bytes::from_static(b"*2\r\n:1\r\n")).is_err());
    }

    #[test]
    fn resp2_downgrade() {
        let enc = |f: Frame| {
            let mut o = BytesMut::new();
            f.encode_resp2(&mut o);
            o
        };
        assert_eq!(enc(Frame::Null), "$-1\r\n");
        assert_eq!(enc(Frame::Boolean(true)), ":1\r\n");
        assert_eq!(enc(Frame::Double(0.1)), "$19\r\n0.10000000000000001\r\n");
        assert_eq!(
            enc(Frame::Map(vec![(
                Frame::Simple("a".into()),
                Frame::Integer(1)
            )])),
            "*2\r\n+a\r\n:1\r\n"
        );
        assert_eq!(format_double(1.5), "1.5");
        assert_eq!(format_double(1e300), "1.0000000000000001e+300");
        assert_eq!(format_double(-2.0), "-2");
        assert_eq!(format_double(1e-5), "1.0000000000000001e-05");
        assert_eq!(format_double(123456.0), "123456");
    }

    #[test]
    fn deep_nesting_is_refused_not_a_crash() {
        let deep = b"*1\r\n".repeat(100_000);
        assert_eq!(scan_reply(&deep).unwrap_err().message(), E_DEPTH);
        let mut ok = b"*1\r\n".repeat(MAX_DEPTH);
        ok.extend_from_slice(b":1\r\n");
        assert_eq!(scan_reply(&ok).unwrap(), Some(ok.len()));
        let (_, n) = parse_frame(&Bytes::from(ok.clone())).unwrap();
        assert_eq!(n, ok.len());
        let mut too = b"*1\r\n".repeat(MAX_DEPTH + 1);
        too.extend_from_slice(b":1\r\n");
        assert!(parse_frame(&Bytes::from(too)).is_err());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = parse_request(&mut buf, &RespLimits::default()) {}
            let _ = scan_reply(&data);
            let _ = parse_frame(&Bytes::from(data.clone()));
        }

        #[test]
        fn protocol_shaped_bytes_never_panic(parts in proptest::collection::vec(
            prop_oneof![
                Just(&b"*"[..]), Just(&b"$"[..]), Just(&b"\r\n"[..]), Just(&b"1"[..]), Just(&b"-1"[..]),
                Just(&b"%"[..]), Just(&b"|"[..]), Just(&b"2"[..]), Just(&b"="[..]), Just(&b"txt:"[..]),
                Just(&b":"[..]), Just(&b"\""[..]), Just(&b"'"[..]), Just(&b" "[..]), Just(&b"\\x4"[..]),
                Just(&b"\n"[..]), Just(&b"0"[..]), Just(&b","[..]), Just(&b"#t"[..]), Just(&b"_"[..]),
            ], 0..40)) {
            let data: Vec<u8> = parts.concat();
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = parse_request(&mut buf, &RespLimits::default()) {}
            if let Ok(Some(n)) = scan_reply(&data) {
                prop_assert!(n <= data.len());
            }
            let _ = parse_frame(&Bytes::from(data.clone()));
        }

        #[test]
        fn encoded_requests_parse_back(args in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..20), 1..8), cut in 0usize..400) {
            let r = encode_request(&args);
            let cut = cut.min(r.raw.len());
            let mut buf = BytesMut::from(&r.raw[..cut]);
            let first = parse_request(&mut buf, &RespLimits::default()).unwrap();
            prop_assert_eq!(first.is_some(), cut == r.raw.len());
            buf.extend_from_slice(&r.raw[cut..]);
            let got = first.or_else(|| parse_request(&mut buf, &RespLimits::default()).unwrap()).unwrap();
            prop_assert_eq!(got, r);
        }
    }
}
