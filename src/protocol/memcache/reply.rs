//! memcached replies: finding where each reply ends in a pipelined stream (`ReplyScanner`,
//! resumable across reads, for text and meta replies) and taking a retrieval reply apart into
//! its items (`split_items`).

use bytes::{Bytes, BytesMut};

use super::*;

/// A reply stream that cannot be parsed (the backend connection must be closed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyError(pub String);

/// A reply line (not data) longer than this means the backend stream is garbage: memcached's own
/// lines are a few hundred bytes at most.
pub(super) const MAX_REPLY_LINE: usize = 64 * 1024;

/// Scan one complete reply at the front of `buf` without consuming it. `retrieval` says whether
/// the request was get/gets/gat/gats (then the reply is VALUE items ended by END, or one error
/// line); otherwise a reply is one `\r\n`-terminated line. Ok(Some(n)): the reply is `buf[..n]`.
///
/// Also: a `stats` reply (`STAT`/`ITEM`/`PREFIX` lines) runs to its `END` line; an error line
/// after some items ends a retrieval reply (memcached sends that on e.g. out of memory).
pub fn scan_reply(buf: &[u8], retrieval: bool) -> Result<Option<usize>, ReplyError> {
    ReplyScanner::new().scan(buf, retrieval)
}

/// A resumable `scan_reply`: it remembers the complete items (or stats lines) already seen, so a
/// large reply arriving in many reads is not re-parsed from its start each time.
///
/// Use one per backend connection: call `scan` with the same, growing buffer until it returns
/// `Some(n)`; the scanner then resets itself, expecting the caller to drop `buf[..n]` before the
/// next call. Call `reset` if the buffer is discarded otherwise.
#[derive(Clone, Debug, Default)]
pub struct ReplyScanner {
    /// Offset of the first line not yet accepted.
    pub(super) pos: usize,
    /// Inside a multi-line stats reply.
    multiline: bool,
}

impl ReplyScanner {
    pub fn new() -> ReplyScanner {
        ReplyScanner::default()
    }

    pub fn reset(&mut self) {
        *self = ReplyScanner::default();
    }

    /// See `scan_reply`.
    pub fn scan(&mut self, buf: &[u8], retrieval: bool) -> Result<Option<usize>, ReplyError> {
        let r = self.scan_inner(buf, retrieval);
        if !matches!(r, Ok(None)) {
            self.reset();
        }
        r
    }

    /// Scan a meta reply: one line, or `VA <size> <flags>*` and a data block. With `quiet`, the
    /// request was sent followed by `mn`: the reply is everything up to and including `MN\r\n`.
    pub fn scan_meta(&mut self, buf: &[u8], quiet: bool) -> Result<Option<usize>, ReplyError> {
        let r = self.scan_meta_inner(buf, quiet);
        if !matches!(r, Ok(None)) {
            self.reset();
        }
        r
    }

    fn scan_meta_inner(&mut self, buf: &[u8], quiet: bool) -> Result<Option<usize>, ReplyError> {
        loop {
            let start = self.pos;
            let rest = buf.get(start..).unwrap_or_default();
            let Some(nl) = memchr(b'\n', &rest[..rest.len().min(MAX_REPLY_LINE)]) else {
                if rest.len() >= MAX_REPLY_LINE {
                    return Err(ReplyError("reply line too long".into()));
                }
                return Ok(None);
            };
            let line_end = start + nl + 1;
            let line = strip_cr(&rest[..nl]);
            let end = if let Some(args) = line.strip_prefix(b"VA ") {
                let mut toks = Tokens { line: args, pos: 0 };
                let size = toks
                    .next()
                    .and_then(|(s, e)| parse_u64(&args[s..e]))
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| bad_line("(VA size)", line))?;
                let data_end = line_end
                    .checked_add(size)
                    .and_then(|n| n.checked_add(2))
                    .ok_or_else(|| bad_line("(VA size)", line))?;
                if buf.len() < data_end {
                    return Ok(None);
                }
                if &buf[data_end - 2..data_end] != b"\r\n" {
                    return Err(ReplyError("VA data not followed by \\r\\n".into()));
                }
                data_end
            } else {
                if line.starts_with(b"VALUE ") || line.starts_with(b"STAT ") {
                    return Err(bad_line("for a meta request", line));
                }
                line_end
            };
            if !quiet || line == b"MN" {
                return Ok(Some(end));
            }
            self.pos = end;
        }
    }

    fn scan_inner(&mut self, buf: &[u8], retrieval: bool) -> Result<Option<usize>, ReplyError> {
        loop {
            let start = self.pos;
            let rest = buf.get(start..).unwrap_or_default();
            let Some(nl) = memchr(b'\n', &rest[..rest.len().min(MAX_REPLY_LINE)]) else {
                if rest.len() >= MAX_REPLY_LINE {
                    return Err(ReplyError("reply line too long".into()));
                }
                return Ok(None);
            };
            let line_end = start + nl + 1;
            let line = strip_cr(&rest[..nl]);
            if !retrieval {
                let stat = line.starts_with(b"STAT ")
                    || line.starts_with(b"ITEM ")
                    || line.starts_with(b"PREFIX ");
                if stat {
                    self.multiline = true;
                    self.pos = line_end;
                    continue;
                }
                if self.multiline && line != b"END" {
                    return Err(bad_line("in a stats reply", line));
                }
                if line.starts_with(b"VALUE ") {
                    return Err(bad_line("for a non-retrieval request", line));
                }
                return Ok(Some(line_end));
            }
            if line == b"END" || is_error_reply(line) {
                return Ok(Some(line_end));
            }
            let Some(header) = parse_value_line(line) else {
                return Err(bad_line("in a retrieval reply", line));
            };
            let data_end = line_end
                .checked_add(header.bytes)
                .and_then(|n| n.checked_add(2))
                .ok_or_else(|| bad_line("(size)", line))?;
            if buf.len() < data_end {
                return Ok(None);
            }
            if &buf[data_end - 2..data_end] != b"\r\n" {
                return Err(ReplyError("VALUE data not followed by \\r\\n".into()));
            }
            self.pos = data_end;
        }
    }
}

fn bad_line(what: &str, line: &[u8]) -> ReplyError {
    let shown = &line[..line.len().min(80)];
    ReplyError(format!(
        "unexpected line {what}: {:?}",
        String::from_utf8_lossy(shown)
    ))
}

struct ValueHeader {
    /// Key range within the line.
    key: (usize, usize),
    bytes: usize,
}

/// `VALUE <key> <flags> <bytes> [<cas>]`
fn parse_value_line(line: &[u8]) -> Option<ValueHeader> {
    let mut toks = Tokens { line, pos: 0 };
    if toks.next().map(|(s, e)| &line[s..e]) != Some(b"VALUE") {
        return None;
    }
    let key = toks.next()?;
    let (fs, fe) = toks.next()?;
    parse_u32(&line[fs..fe])?;
    let (bs, be) = toks.next()?;
    let bytes = usize::try_from(parse_u64(&line[bs..be])?).ok()?;
    if let Some((cs, ce)) = toks.next() {
        parse_u64(&line[cs..ce])?;
    }
    if toks.next().is_some() {
        return None;
    }
    Some(ValueHeader { key, bytes })
}

/// One item of a retrieval reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub key: Bytes,
    /// The whole item as sent: `VALUE key flags bytes [cas]\r\n<data>\r\n`.
    pub raw: Bytes,
}

/// A multi-get's parts merged into one reply: items in the client's key order under one `END`.
#[derive(Debug, PartialEq, Eq)]
pub struct MergedGet {
    pub reply: Bytes,
    pub hits: u64,
    pub misses: u64,
    /// Keys of failed parts: answered as misses (a miss is always safe for a cache).
    pub failed: u64,
}

/// Merge the items of a multi-get's parts (`parts[p]`: the items part `p` returned, or Err when
/// it failed) for the client's `keys`, `part_of[i]` being the part key `i` went to. memcached
/// answers a part's keys in the order they were sent, skipping misses, so one cursor per part
/// pairs items with keys, repeated keys included.
pub fn merge_items<E>(
    keys: &[Bytes],
    part_of: &[usize],
    parts: &[Result<Vec<Item>, E>],
) -> MergedGet {
    let mut cursor = vec![0usize; parts.len()];
    let mut out = BytesMut::new();
    let (mut hits, mut misses, mut failed) = (0u64, 0u64, 0u64);
    for (key, &p) in keys.iter().zip(part_of) {
        match &parts[p] {
            Ok(list) => match list.get(cursor[p]) {
                Some(item) if item.key == key => {
                    out.extend_from_slice(&item.raw);
                    cursor[p] += 1;
                    hits += 1;
                }
                _ => misses += 1,
            },
            Err(_) => failed += 1,
        }
    }
    out.extend_from_slice(b"END\r\n");
    MergedGet {
        reply: out.freeze(),
        hits,
        misses,
        failed,
    }
}

/// Split a complete retrieval reply (as found by `scan_reply`) into its items. Err when the reply
/// is an error line instead of items (the line is returned).
///
/// An error line after some items also gives Err(that line): the request failed part-way. Input
/// that `scan_reply` would not accept gives Err(the rest of the reply from the bad point).
pub fn split_items(reply: &Bytes) -> Result<Vec<Item>, Bytes> {
    let mut items = Vec::new();
    let mut pos = 0;
    loop {
        let rest = &reply[pos..];
        let Some(nl) = memchr(b'\n', rest) else {
            return Err(reply.slice(pos..));
        };
        let line_end = pos + nl + 1;
        let line = strip_cr(&rest[..nl]);
        if line == b"END" {
            return Ok(items);
        }
        let Some(header) = parse_value_line(line) else {
            return Err(reply.slice(pos..line_end));
        };
        let data_end = match header
            .bytes
            .checked_add(2)
            .and_then(|b| line_end.checked_add(b))
        {
            Some(n) if n <= reply.len() && &reply[n - 2..n] == b"\r\n" => n,
            _ => return Err(reply.slice(pos..)),
        };
        items.push(Item {
            key: reply.slice(pos + header.key.0..pos + header.key.1),
            raw: reply.slice(pos..data_end),
        });
        pos = data_end;
    }
}

/// True when a single-line reply is an error (`ERROR`, `CLIENT_ERROR ...`, `SERVER_ERROR ...`).
pub fn is_error_reply(line: &[u8]) -> bool {
    line.starts_with(b"ERROR")
        || line.starts_with(b"CLIENT_ERROR")
        || line.starts_with(b"SERVER_ERROR")
}
