//! RESP frames: a reply parsed into a tree (`Frame`, for the replies the proxy must look
//! inside: merges, CLUSTER SLOTS, tests) and written back as RESP2 or RESP3 (`write_*`).

use super::*;

/// A reply (or request) as a tree: RESP2 types plus RESP3's.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    Simple(Bytes),
    Error(Bytes),
    Integer(i64),
    /// `$-1` is `Bulk(None)`.
    Bulk(Option<Bytes>),
    /// `*-1` is `Array(None)`.
    Array(Option<Vec<Frame>>),
    /// RESP3 `_`.
    Null,
    Double(f64),
    Boolean(bool),
    /// Decimal digits, optionally signed.
    BigNumber(Bytes),
    /// RESP3 `!`: an error with a binary-safe message.
    BlobError(Bytes),
    /// RESP3 `=`: three-byte format (`txt`, `mkd`) and the text.
    Verbatim {
        format: [u8; 3],
        text: Bytes,
    },
    Map(Vec<(Frame, Frame)>),
    Set(Vec<Frame>),
    Push(Vec<Frame>),
    /// RESP3 `|`: out-of-band attributes annotating the frame that follows.
    Attribute {
        attrs: Vec<(Frame, Frame)>,
        frame: Box<Frame>,
    },
}

/// Parse the first complete reply of `buf`: the frame and its length. An incomplete reply is
/// an error here (call [`scan_reply`] first when data is still arriving).
pub fn parse_frame(buf: &Bytes) -> Result<(Frame, usize), RespError> {
    // The scan bounds depth and proves completeness, so the recursion below is safe.
    let len = scan_reply(buf)?.ok_or(RespError::new(E_INCOMPLETE))?;
    let mut pos = 0;
    let f = build(buf, &mut pos)?;
    debug_assert_eq!(pos, len);
    Ok((f, len))
}

/// An aggregate being built by `build`.
enum Open {
    /// Array, set or push (by type byte) with the items so far and how many are missing.
    List(u8, Vec<Frame>, usize),
    /// Map or attribute (by type byte): pairs so far, a key awaiting its value, missing items.
    Pairs(u8, Vec<(Frame, Frame)>, Option<Frame>, usize),
}

/// One header at `pos`: a finished frame, or an aggregate to fill.
enum Step {
    Done(Frame),
    Open(Open),
}

fn build_one(buf: &Bytes, pos: &mut usize) -> Result<Step, RespError> {
    let bad = || RespError::new(E_REPLY);
    let t = buf[*pos];
    let (line, next) = line_at(buf, *pos + 1)?.ok_or_else(bad)?;
    let line_bytes = || buf.slice(next - 2 - line.len()..next - 2);
    *pos = next;
    let count = || string2ll(line).ok_or_else(bad);
    let blob = |pos: &mut usize| -> Result<Option<Bytes>, RespError> {
        let n = count()?;
        if n < 0 {
            return Ok(None);
        }
        let b = buf.slice(next..next + n as usize);
        *pos = next + n as usize + 2;
        Ok(Some(b))
    };
    let cap = |n: i64| (n.max(0) as usize).min(1024);
    Ok(Step::Done(match t {
        b'+' => Frame::Simple(line_bytes()),
        b'-' => Frame::Error(line_bytes()),
        b':' => Frame::Integer(count()?),
        b'_' if line.is_empty() => Frame::Null,
        b',' => {
            let s = std::str::from_utf8(line).map_err(|_| bad())?;
            Frame::Double(s.parse().map_err(|_| bad())?)
        }
        b'#' => match line {
            b"t" => Frame::Boolean(true),
            b"f" => Frame::Boolean(false),
            _ => return Err(bad()),
        },
        b'(' => {
            let digits = line.strip_prefix(b"-").unwrap_or(line);
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err(bad());
            }
            Frame::BigNumber(line_bytes())
        }
        b'$' => Frame::Bulk(blob(pos)?),
        b'!' => Frame::BlobError(blob(pos)?.ok_or_else(bad)?),
        b'=' => {
            let b = blob(pos)?.ok_or_else(bad)?;
            if b.len() < 4 || b[3] != b':' {
                return Err(bad());
            }
            Frame::Verbatim {
                format: [b[0], b[1], b[2]],
                text: b.slice(4..),
            }
        }
        b'*' if count()? < 0 => Frame::Array(None),
        b'*' if count()? == 0 => Frame::Array(Some(Vec::new())),
        b'~' if count()? == 0 => Frame::Set(Vec::new()),
        b'>' if count()? == 0 => Frame::Push(Vec::new()),
        b'%' if count()? == 0 => Frame::Map(Vec::new()),
        b'*' | b'~' | b'>' => {
            let n = count()?;
            return Ok(Step::Open(Open::List(
                t,
                Vec::with_capacity(cap(n)),
                n as usize,
            )));
        }
        b'%' | b'|' => {
            let n = count()?;
            return Ok(Step::Open(Open::Pairs(
                t,
                Vec::with_capacity(cap(n)),
                None,
                2 * n as usize,
            )));
        }
        _ => return Err(bad()),
    }))
}

/// Build the frame at `pos` with an explicit stack (no recursion: deep replies are safe on
/// small thread stacks). The caller has already checked completeness with `scan_reply`.
fn build(buf: &Bytes, pos: &mut usize) -> Result<Frame, RespError> {
    let mut stack: Vec<Open> = Vec::new();
    loop {
        let mut f = match build_one(buf, pos)? {
            Step::Done(f) => f,
            Step::Open(o) => {
                stack.push(o);
                continue;
            }
        };
        // Hand the finished frame to its parent, closing every aggregate it completes.
        loop {
            let Some(top) = stack.last_mut() else {
                return Ok(f);
            };
            let complete = match top {
                Open::List(_, items, missing) => {
                    items.push(f);
                    *missing -= 1;
                    *missing == 0
                }
                Open::Pairs(t, pairs, key, missing) => {
                    if *missing == 0 {
                        // An attribute's pairs are done: this is the frame it annotates.
                        let attrs = std::mem::take(pairs);
                        stack.pop();
                        f = Frame::Attribute {
                            attrs,
                            frame: Box::new(f),
                        };
                        continue;
                    }
                    match key.take() {
                        None => *key = Some(f),
                        Some(k) => pairs.push((k, f)),
                    }
                    *missing -= 1;
                    *missing == 0 && *t == b'%'
                }
            };
            if !complete {
                break;
            }
            f = match stack.pop() {
                Some(Open::List(b'*', items, _)) => Frame::Array(Some(items)),
                Some(Open::List(b'~', items, _)) => Frame::Set(items),
                Some(Open::List(_, items, _)) => Frame::Push(items),
                Some(Open::Pairs(_, pairs, _, _)) => Frame::Map(pairs),
                None => unreachable!("stack checked non-empty above"),
            };
        }
    }
}

impl Frame {
    /// Encode as RESP3 (RESP2 types encode as themselves).
    pub fn encode(&self, out: &mut BytesMut) {
        self.encode_as(out, Proto::Resp3)
    }

    /// Encode for a RESP2 client: map -> flat array, set/push -> array, null -> `$-1`,
    /// double/big number/verbatim -> bulk, boolean -> integer, blob error -> error line,
    /// attributes dropped (what redis-server does on a RESP2 connection).
    pub fn encode_resp2(&self, out: &mut BytesMut) {
        self.encode_as(out, Proto::Resp2)
    }

    pub fn encode_as(&self, out: &mut BytesMut, proto: Proto) {
        let r3 = proto == Proto::Resp3;
        match self {
            Frame::Simple(s) => write_simple(out, s),
            Frame::Error(e) => {
                out.put_u8(b'-');
                out.put_slice(e);
                out.put_slice(b"\r\n");
            }
            Frame::Integer(i) => write_integer(out, *i),
            Frame::Bulk(b) => write_bulk(out, b.as_deref()),
            Frame::Array(None) => write_array_len(out, None),
            Frame::Array(Some(v)) => {
                write_array_len(out, Some(v.len()));
                v.iter().for_each(|f| f.encode_as(out, proto));
            }
            Frame::Null => write_null(out, proto),
            Frame::Double(d) => write_double(out, proto, *d),
            Frame::Boolean(b) => write_bool(out, proto, *b),
            Frame::BigNumber(n) if r3 => {
                out.put_u8(b'(');
                out.put_slice(n);
                out.put_slice(b"\r\n");
            }
            Frame::BigNumber(n) => write_bulk(out, Some(n)),
            Frame::BlobError(e) if r3 => write_blob(out, b'!', &[e]),
            Frame::BlobError(e) => {
                out.put_u8(b'-');
                out.extend(
                    e.iter()
                        .map(|&c| if c == b'\r' || c == b'\n' { b' ' } else { c }),
                );
                out.put_slice(b"\r\n");
            }
            Frame::Verbatim { format, text } if r3 => write_blob(out, b'=', &[format, b":", text]),
            Frame::Verbatim { text, .. } => write_bulk(out, Some(text)),
            Frame::Map(m) => {
                write_map_len(out, proto, m.len());
                for (k, v) in m {
                    k.encode_as(out, proto);
                    v.encode_as(out, proto);
                }
            }
            Frame::Set(v) | Frame::Push(v) => {
                match (self, r3) {
                    (Frame::Set(_), true) => write_len(out, b'~', v.len()),
                    (Frame::Push(_), true) => write_len(out, b'>', v.len()),
                    _ => write_array_len(out, Some(v.len())),
                }
                v.iter().for_each(|f| f.encode_as(out, proto));
            }
            Frame::Attribute { attrs, frame } => {
                if r3 {
                    write_len(out, b'|', attrs.len());
                    for (k, v) in attrs {
                        k.encode_as(out, proto);
                        v.encode_as(out, proto);
                    }
                }
                frame.encode_as(out, proto);
            }
        }
    }
}

/// The protocol a client negotiated (HELLO 2 / HELLO 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Proto {
    #[default]
    Resp2,
    Resp3,
}

pub(super) fn put_int(out: &mut BytesMut, v: i64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = v.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        out.put_u8(b'-');
    }
    out.put_slice(&buf[i..]);
}

fn write_len(out: &mut BytesMut, t: u8, n: usize) {
    out.put_u8(t);
    put_int(out, n as i64);
    out.put_slice(b"\r\n");
}

fn write_blob(out: &mut BytesMut, t: u8, parts: &[&[u8]]) {
    write_len(out, t, parts.iter().map(|p| p.len()).sum());
    parts.iter().for_each(|p| out.put_slice(p));
    out.put_slice(b"\r\n");
}

/// `+s\r\n` (the caller guarantees no CR/LF in `s`).
pub fn write_simple(out: &mut BytesMut, s: &[u8]) {
    out.put_u8(b'+');
    out.put_slice(s);
    out.put_slice(b"\r\n");
}

/// `-ERR msg\r\n`-style error: `msg` includes its code (`ERR ...`, `WRONGTYPE ...`).
pub fn write_error(out: &mut BytesMut, msg: &str) {
    out.put_u8(b'-');
    out.put_slice(msg.as_bytes());
    out.put_slice(b"\r\n");
}

pub fn write_integer(out: &mut BytesMut, v: i64) {
    out.put_u8(b':');
    put_int(out, v);
    out.put_slice(b"\r\n");
}

/// `$len\r\ndata\r\n`, or `$-1\r\n` for `None`.
pub fn write_bulk(out: &mut BytesMut, data: Option<&[u8]>) {
    match data {
        Some(d) => write_blob(out, b'$', &[d]),
        None => out.put_slice(b"$-1\r\n"),
    }
}

/// `*n\r\n`, or `*-1\r\n` for `None`.
pub fn write_array_len(out: &mut BytesMut, n: Option<usize>) {
    match n {
        Some(n) => write_len(out, b'*', n),
        None => out.put_slice(b"*-1\r\n"),
    }
}

/// RESP3 `_`; RESP2 `$-1`.
pub fn write_null(out: &mut BytesMut, proto: Proto) {
    out.put_slice(if proto == Proto::Resp3 {
        b"_\r\n"
    } else {
        b"$-1\r\n"
    });
}

/// RESP3 `%n` (n pairs follow); RESP2 `*2n`.
pub fn write_map_len(out: &mut BytesMut, proto: Proto, pairs: usize) {
    match proto {
        Proto::Resp3 => write_len(out, b'%', pairs),
        Proto::Resp2 => write_len(out, b'*', pairs * 2),
    }
}

/// RESP3 `~n`; RESP2 `*n`.
pub fn write_set_len(out: &mut BytesMut, proto: Proto, n: usize) {
    write_len(out, if proto == Proto::Resp3 { b'~' } else { b'*' }, n);
}

/// RESP3 `#t`/`#f`; RESP2 `:1`/`:0`.
pub fn write_bool(out: &mut BytesMut, proto: Proto, b: bool) {
    match proto {
        Proto::Resp3 => out.put_slice(if b { b"#t\r\n" } else { b"#f\r\n" }),
        Proto::Resp2 => write_integer(out, b as i64),
    }
}

/// RESP3 `,<double>`; RESP2 a bulk string. Formatted like redis's `%.17g`.
pub fn write_double(out: &mut BytesMut, proto: Proto, v: f64) {
    let s = format_double(v);
    match proto {
        Proto::Resp3 => {
            out.put_u8(b',');
            out.put_slice(s.as_bytes());
            out.put_slice(b"\r\n");
        }
        Proto::Resp2 => write_bulk(out, Some(s.as_bytes())),
    }
}

/// C's `%.17g` (what redis 7.0 uses for doubles), with `inf`, `-inf`, `nan`.
pub fn format_double(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.into();
    }
    let e = format!("{v:.16e}");
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    if !(-4..17).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{}{:02}", trim(mant), sign, exp.abs())
    } else {
        trim(&format!("{:.*}", (16 - exp) as usize, v))
    }
}
