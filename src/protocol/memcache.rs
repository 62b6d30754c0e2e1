//! The memcached ASCII protocol: request parser (client side) and reply scanner (backend side).
//!
//! Requests are parsed once into a `Request` whose fields are `Bytes` slices of the client's read
//! buffer (no copies). Replies from backends are only *scanned* for their length; the proxy
//! forwards them as they are, except multi-key retrievals which are split into items and merged.
//!
//! Why a full parser rather than "find the line end and forward": the proxy must know the key(s)
//! to route, the data block length to frame storage commands, and it must refuse bad requests
//! itself, because a request that a backend would misparse (e.g. a data block read as commands)
//! would desynchronise a backend connection shared by many clients.
//!
//! Compatibility follows memcached 1.6 (`proto_text.c`): tokens are separated by one or more
//! spaces, a line ends with `\n` optionally preceded by `\r`, command names are lowercase, and the
//! error texts are memcached's own: a wrong number of tokens is `ERROR`, a bad token
//! `CLIENT_ERROR ...`. Where memcached refuses a storage command before reading its data block
//! (wrong token count, bad number, key too long), it reads that block as commands; so does the
//! proxy, which keeps the client's replies in step with memcached's, and is safe because each
//! of those lines is parsed like any request (never forwarded blindly). Where memcached swallows
//! the block (object too large), so does the proxy. Errors for a request that ends in `noreply`
//! are silent, as in memcached: `Parsed::Error::reply` is then empty.

use bytes::{BufMut, Bytes, BytesMut};
use memchr::memchr;

/// Limits applied while parsing; they come from the pool/listener config.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest key accepted (memcached: 250).
    pub max_key_len: usize,
    /// Largest data block accepted for storage commands (memcached's item_size_max, default 1 MiB).
    pub item_size_max: usize,
    /// Longest command line (without data block) before the connection is considered broken.
    pub max_line_len: usize,
    /// Longest command line forwarded, `\r` included and `\n` excluded, for everything but
    /// `get`/`gets` (see [`MEMCACHED_LINE_MAX`]); longer ones get `CLIENT_ERROR line too long`.
    pub max_forward_line: usize,
}

/// memcached 1.6 closes a connection whose read buffer holds more than 2048 bytes of one command
/// line with no `\n` yet (`try_read_command_ascii`), unless the line starts, after at most 100
/// spaces, with `get ` or `gets `. Whether a 3000-byte line arrives in one read is up to TCP, so
/// forwarding one on a backend connection shared by many clients could drop all of their
/// requests in flight.
pub const MEMCACHED_LINE_MAX: usize = 2048;

/// Leading spaces memcached tolerates before a long `get`/`gets` line.
const MEMCACHED_GET_SPACES_MAX: usize = 100;

/// What routes may add to a line they rewrite (a gutter's capped exptime, a meta `T<ttl>`
/// flag): client lines are held this far under [`MEMCACHED_LINE_MAX`].
pub const LINE_REWRITE_HEADROOM: usize = 128;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_len: 250,
            item_size_max: 1024 * 1024,
            max_line_len: 1024 * 1024,
            max_forward_line: MEMCACHED_LINE_MAX - LINE_REWRITE_HEADROOM,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    Get,
    Gets,
    Gat,
    Gats,
    Set,
    Add,
    Replace,
    Append,
    Prepend,
    Cas,
    Incr,
    Decr,
    Touch,
    Delete,
    Version,
    Verbosity,
    Quit,
    Stats,
    FlushAll,
    /// Meta commands (memcached 1.6): `mg`, `ms`, `md`, `ma`, `mn`, `me`.
    MetaGet,
    MetaSet,
    MetaDelete,
    MetaArithmetic,
    MetaNoop,
    MetaDebug,
}

impl Command {
    /// The command word as sent on the wire (`get`, `flush_all`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Command::Get => "get",
            Command::Gets => "gets",
            Command::Gat => "gat",
            Command::Gats => "gats",
            Command::Set => "set",
            Command::Add => "add",
            Command::Replace => "replace",
            Command::Append => "append",
            Command::Prepend => "prepend",
            Command::Cas => "cas",
            Command::Incr => "incr",
            Command::Decr => "decr",
            Command::Touch => "touch",
            Command::Delete => "delete",
            Command::Version => "version",
            Command::Verbosity => "verbosity",
            Command::Quit => "quit",
            Command::Stats => "stats",
            Command::FlushAll => "flush_all",
            Command::MetaGet => "mg",
            Command::MetaSet => "ms",
            Command::MetaDelete => "md",
            Command::MetaArithmetic => "ma",
            Command::MetaNoop => "mn",
            Command::MetaDebug => "me",
        }
    }

    /// The command for a wire word; case-sensitive like memcached.
    fn from_name(word: &[u8]) -> Option<Command> {
        Some(match word {
            b"get" => Command::Get,
            b"gets" => Command::Gets,
            b"gat" => Command::Gat,
            b"gats" => Command::Gats,
            b"set" => Command::Set,
            b"add" => Command::Add,
            b"replace" => Command::Replace,
            b"append" => Command::Append,
            b"prepend" => Command::Prepend,
            b"cas" => Command::Cas,
            b"incr" => Command::Incr,
            b"decr" => Command::Decr,
            b"touch" => Command::Touch,
            b"delete" => Command::Delete,
            b"version" => Command::Version,
            b"verbosity" => Command::Verbosity,
            b"quit" => Command::Quit,
            b"stats" => Command::Stats,
            b"flush_all" => Command::FlushAll,
            b"mg" => Command::MetaGet,
            b"ms" => Command::MetaSet,
            b"md" => Command::MetaDelete,
            b"ma" => Command::MetaArithmetic,
            b"mn" => Command::MetaNoop,
            b"me" => Command::MetaDebug,
            _ => return None,
        })
    }

    /// get, gets, gat, gats: replies are `VALUE ...` items ended by `END`.
    pub fn is_retrieval(self) -> bool {
        matches!(
            self,
            Command::Get | Command::Gets | Command::Gat | Command::Gats
        )
    }

    /// mg, ms, md, ma, mn, me: replies are meta replies (one line, or `VA <size> ...` and data).
    pub fn is_meta(self) -> bool {
        matches!(
            self,
            Command::MetaGet
                | Command::MetaSet
                | Command::MetaDelete
                | Command::MetaArithmetic
                | Command::MetaNoop
                | Command::MetaDebug
        )
    }

    /// set, add, replace, append, prepend, cas: the command line is followed by a data block.
    /// (`ms` also carries one, but has its own syntax: see `is_meta`.)
    pub fn is_storage(self) -> bool {
        matches!(
            self,
            Command::Set
                | Command::Add
                | Command::Replace
                | Command::Append
                | Command::Prepend
                | Command::Cas
        )
    }
}

/// One parsed client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub command: Command,
    /// The keys: one for keyed commands, one or more for retrievals, none for the rest.
    pub keys: Vec<Bytes>,
    /// The exptime argument of gat/gats (as its raw token), used to compose per-server requests.
    pub gat_exptime: Option<Bytes>,
    /// The request ended with `noreply`: the client wants no reply bytes at all.
    pub noreply: bool,
    /// A meta command with the `q` flag (a flag token starting with `q`, as memcached reads it):
    /// memcached suppresses its nominal replies (mg: `EN`; ms/md/ma: `HD`; ...). The proxy
    /// forwards it as is followed by `mn` (see `QUIET_SENTINEL`), so every request still gets a
    /// reply on a shared backend connection, and what precedes `MN` is exactly what memcached
    /// chose to send.
    pub quiet: bool,
    /// The whole request exactly as received: command line, and data block with its `\r\n` for
    /// storage commands.
    pub raw: Bytes,
}

impl Request {
    /// The bytes to send to a backend: `raw` without the `noreply` token (the proxy always wants a
    /// reply from the backend so the backend stream stays in step; it drops it for the client).
    /// Zero-copy when the request has no `noreply`.
    pub fn to_backend(&self) -> Bytes {
        if !self.noreply {
            return self.raw.clone();
        }
        let raw = &self.raw[..];
        let Some(nl) = memchr(b'\n', raw) else {
            return self.raw.clone();
        };
        // `content_end`: end of the command line before its `\r\n` / `\n`.
        let content_end = if nl > 0 && raw[nl - 1] == b'\r' {
            nl - 1
        } else {
            nl
        };
        let end = trim_spaces_end(raw, content_end);
        if end < 8 || &raw[end - 7..end] != b"noreply" || raw[end - 8] != b' ' {
            return self.raw.clone();
        }
        let cut = trim_spaces_end(raw, end - 7);
        let mut out = BytesMut::with_capacity(raw.len() - (content_end - cut));
        out.extend_from_slice(&raw[..cut]);
        out.extend_from_slice(&raw[content_end..]);
        out.freeze()
    }
}

/// The result of parsing the front of a client buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A complete request (its bytes were removed from the buffer).
    Request(Request),
    /// A bad request: its command line was removed from the buffer; send `reply` (a complete
    /// protocol line such as `CLIENT_ERROR bad data chunk\r\n` or `ERROR\r\n`), then discard the
    /// next `swallow` bytes as they arrive (a refused data block), and go on parsing after them.
    /// `reply` is empty when the request carried `noreply` (memcached is silent then too).
    /// For `bad data chunk` the whole data block has already been removed (`swallow` is 0).
    Error { reply: Bytes, swallow: usize },
    /// A `set` or `ms` refused as too large: as `Error`, and the key's old item must go too,
    /// as memcached unlinks it ("avoid stale data persisting"): the caller sends `unlink` (a
    /// `delete`/`md` of the key, whose reply nobody wants) where the refused request would
    /// have gone.
    TooLarge {
        reply: Bytes,
        swallow: usize,
        unlink: Request,
    },
}

/// The stream cannot be resynchronised (e.g. a command line longer than `max_line_len` with no
/// newline, or an HTTP request line). The caller sends `reply` (possibly empty) and closes the
/// connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fatal {
    pub reply: Bytes,
}

// Reply texts, exactly as memcached 1.6 sends them.
const ERROR: &[u8] = b"ERROR\r\n";
const BAD_FORMAT: &[u8] = b"CLIENT_ERROR bad command line format\r\n";
const BAD_DELETE: &[u8] =
    b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n";
const BAD_DELTA: &[u8] = b"CLIENT_ERROR invalid numeric delta argument\r\n";
const BAD_EXPTIME: &[u8] = b"CLIENT_ERROR invalid exptime argument\r\n";
const BAD_CHUNK: &[u8] = b"CLIENT_ERROR bad data chunk\r\n";
const TOO_LARGE: &[u8] = b"SERVER_ERROR object too large for cache\r\n";
const LINE_TOO_LONG: &[u8] = b"CLIENT_ERROR line too long\r\n";
// memcached says "bad command line format" for a key over 250 bytes; we keep its text. It has no
// check for control characters (we refuse them: they would corrupt the lines we compose).
const KEY_TOO_LONG: &[u8] = BAD_FORMAT;
const BAD_KEY: &[u8] = b"CLIENT_ERROR bad key\r\n";
/// What memcached answers a `gat <exptime>` without keys (not an error, but answered here).
const EMPTY_RETRIEVAL: &[u8] = b"END\r\n";

/// Most argument tokens any non-retrieval command takes (cas: 5, plus `noreply`), plus one so
/// that "too many" is detectable.
const MAX_ARGS: usize = 7;

/// Parse one request from the front of `buf`. Ok(None): need more bytes (nothing is consumed).
pub fn parse_request(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Parsed>, Fatal> {
    let parsed = parse_line(buf, limits)?;
    match parsed {
        Some(Parsed::Request(r)) if !forwardable(&r.raw, limits) => {
            // Already consumed whole, data block included: nothing to swallow.
            Ok(Some(error_reply(LINE_TOO_LONG, 0, r.noreply)))
        }
        other => Ok(other),
    }
}

/// Whether a request's command line is one memcached reads without closing the connection.
fn forwardable(raw: &[u8], limits: &Limits) -> bool {
    let line = memchr(b'\n', raw).unwrap_or(raw.len());
    if line <= limits.max_forward_line {
        return true;
    }
    let spaces = raw.iter().take_while(|&&c| c == b' ').count();
    let word = &raw[spaces..];
    spaces <= MEMCACHED_GET_SPACES_MAX && (word.starts_with(b"get ") || word.starts_with(b"gets "))
}

fn parse_line(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Parsed>, Fatal> {
    let (line_len, content_end) = match find_line(buf, limits.max_line_len) {
        LineEnd::Found { len, content_end } => (len, content_end),
        LineEnd::Incomplete => return Ok(None),
        LineEnd::TooLong => {
            return Err(Fatal {
                reply: Bytes::from_static(LINE_TOO_LONG),
            })
        }
    };
    let line = &buf[..content_end];
    let mut toks = Tokens { line, pos: 0 };
    let Some(word) = toks.next() else {
        // Empty (or all spaces) line: memcached answers ERROR.
        return Ok(Some(error(buf, line_len, ERROR, 0, false)));
    };
    let Some(command) = Command::from_name(&line[word.0..word.1]) else {
        if looks_like_http(line, word.0) {
            let _ = buf.split_to(line_len);
            return Err(Fatal {
                reply: Bytes::new(),
            });
        }
        return Ok(Some(error(buf, line_len, ERROR, 0, false)));
    };
    if command.is_meta() {
        return Ok(parse_meta(buf, line_len, content_end, command, limits));
    }
    if command.is_retrieval() {
        return Ok(Some(parse_retrieval(
            buf,
            line_len,
            content_end,
            command,
            limits,
        )));
    }

    let mut args = [(0usize, 0usize); MAX_ARGS];
    let mut nargs = 0;
    for t in toks {
        if nargs == MAX_ARGS {
            nargs += 1; // too many; the exact count no longer matters
            break;
        }
        args[nargs] = t;
        nargs += 1;
    }
    let arg = |i: usize| &line[args[i].0..args[i].1];
    // memcached (`set_noreply_maybe`): the last token, whatever the count, means noreply when it
    // is exactly `noreply`; an optional last token is accepted whatever it is.
    let last_is_noreply = |nargs: usize| nargs > 0 && arg(nargs - 1) == b"noreply";

    if command.is_storage() {
        return Ok(parse_storage(
            buf,
            line_len,
            command,
            &args[..nargs.min(MAX_ARGS)],
            nargs,
            limits,
        ));
    }

    let ok = |buf: &mut BytesMut, key: Option<(usize, usize)>, noreply: bool| {
        let raw = buf.split_to(line_len).freeze();
        let keys = key.map(|(s, e)| vec![raw.slice(s..e)]).unwrap_or_default();
        Some(Parsed::Request(Request {
            command,
            keys,
            gat_exptime: None,
            noreply,
            quiet: false,
            raw,
        }))
    };

    match command {
        Command::Incr | Command::Decr | Command::Touch => {
            if nargs != 2 && nargs != 3 {
                return Ok(Some(error(buf, line_len, ERROR, 0, false)));
            }
            let noreply = last_is_noreply(nargs);
            if let Err(reply) = check_key(arg(0), limits) {
                return Ok(Some(error(buf, line_len, reply, 0, noreply)));
            }
            let valid = if command == Command::Touch {
                parse_i64(arg(1)).is_some()
            } else {
                strtoull(arg(1)).is_some()
            };
            if !valid {
                let reply = if command == Command::Touch {
                    BAD_EXPTIME
                } else {
                    BAD_DELTA
                };
                return Ok(Some(error(buf, line_len, reply, 0, noreply)));
            }
            Ok(ok(buf, Some(args[0]), noreply))
        }
        Command::Delete => {
            if !(1..=3).contains(&nargs) {
                return Ok(Some(error(buf, line_len, ERROR, 0, false)));
            }
            // Valid: `delete k`, `delete k 0`, `delete k noreply`, `delete k 0 noreply`.
            let noreply = nargs > 1 && arg(nargs - 1) == b"noreply";
            let hold_zero = nargs > 1 && arg(1) == b"0";
            let valid =
                nargs == 1 || (nargs == 2 && (hold_zero || noreply)) || (hold_zero && noreply);
            if !valid {
                return Ok(Some(error(buf, line_len, BAD_DELETE, 0, noreply)));
            }
            if let Err(reply) = check_key(arg(0), limits) {
                return Ok(Some(error(buf, line_len, reply, 0, noreply)));
            }
            Ok(ok(buf, Some(args[0]), noreply))
        }
        Command::Verbosity => {
            if nargs != 1 && nargs != 2 {
                return Ok(Some(error(buf, line_len, ERROR, 0, false)));
            }
            let noreply = last_is_noreply(nargs);
            if strtoull(arg(0)).is_none() {
                return Ok(Some(error(buf, line_len, BAD_FORMAT, 0, noreply)));
            }
            Ok(ok(buf, None, noreply))
        }
        Command::FlushAll => {
            if nargs > 2 {
                return Ok(Some(error(buf, line_len, ERROR, 0, false)));
            }
            let noreply = nargs > 0 && arg(nargs - 1) == b"noreply";
            // `flush_all noreply` has no delay; otherwise the first argument is the delay (a
            // second one that is not `noreply` is ignored, as memcached does). memcached parses
            // it as a signed number and accepts e.g. -1, so we do too.
            let has_delay = nargs == 2 || (nargs == 1 && !noreply);
            if has_delay && parse_i64(arg(0)).is_none() {
                return Ok(Some(error(buf, line_len, BAD_EXPTIME, 0, noreply)));
            }
            Ok(ok(buf, None, noreply))
        }
        // memcached ignores any arguments of version and quit; stats arguments go to the backend.
        Command::Version | Command::Quit | Command::Stats => Ok(ok(buf, None, false)),
        _ => unreachable!("retrieval and storage commands are handled above"),
    }
}

/// Tokens memcached 1.6 splits a command line into; the rest of a longer line is not looked at.
const MEMCACHED_TOKENS: usize = 23;

/// memcached closes, without a reply, a connection whose unknown command line ends in a token
/// starting with `HTTP/` (`GET / HTTP/1.0`): a guard against cross-protocol requests. Its
/// dispatch looks at the command's first byte, and unknown words starting with one of
/// `acdgist` get `ERROR` without the check; "ends" means the 23rd token on a longer line.
fn looks_like_http(line: &[u8], word_start: usize) -> bool {
    if b"acdgist".contains(&line[word_start]) {
        return false;
    }
    let last = Tokens { line, pos: 0 }.take(MEMCACHED_TOKENS).last();
    last.is_some_and(|(s, _)| line[s..].starts_with(b"HTTP/"))
}

/// get/gets/gat/gats: every outcome consumes exactly the command line.
fn parse_retrieval(
    buf: &mut BytesMut,
    line_len: usize,
    content_end: usize,
    command: Command,
    limits: &Limits,
) -> Parsed {
    let raw = buf.split_to(line_len).freeze();
    let mut toks = Tokens {
        line: &raw[..content_end],
        pos: 0,
    };
    toks.next(); // the command word
    let gat = matches!(command, Command::Gat | Command::Gats);
    let mut gat_exptime = None;
    if gat {
        let Some((s, e)) = toks.next() else {
            return error_reply(ERROR, 0, false);
        };
        if parse_i64(&raw[s..e]).is_none() {
            return error_reply(BAD_EXPTIME, 0, false);
        }
        gat_exptime = Some(raw.slice(s..e));
    }
    let mut keys = Vec::new();
    for (s, e) in toks {
        if let Err(reply) = check_key(&raw[s..e], limits) {
            return error_reply(reply, 0, false);
        }
        keys.push(raw.slice(s..e));
    }
    if keys.is_empty() {
        // memcached: `get` alone is `ERROR`; `gat 10` (no key) is an empty answer.
        return error_reply(if gat { EMPTY_RETRIEVAL } else { ERROR }, 0, false);
    }
    Parsed::Request(Request {
        command,
        keys,
        gat_exptime,
        noreply: false,
        quiet: false,
        raw,
    })
}

/// set/add/replace/append/prepend/cas. `args` are the (first MAX_ARGS) argument tokens, `nargs`
/// their real count.
fn parse_storage(
    buf: &mut BytesMut,
    line_len: usize,
    command: Command,
    args: &[(usize, usize)],
    nargs: usize,
    limits: &Limits,
) -> Option<Parsed> {
    let required = if command == Command::Cas { 5 } else { 4 };
    let arg = |i: usize| &buf[args[i].0..args[i].1];
    // The data length, when its token is there and sane; memcached reads it as an int32 and then
    // adds 2 for the `\r\n`.
    let bytes = if nargs > 3 { data_length(arg(3)) } else { None };
    // Refused before the data block, like memcached: the block is then read as commands.
    if nargs != required && nargs != required + 1 {
        return Some(error(buf, line_len, ERROR, 0, false));
    }
    let noreply = arg(nargs - 1) == b"noreply";
    let numbers_ok = strtoull(arg(1)).is_some()
        && parse_i64(arg(2)).is_some()
        && (command != Command::Cas || strtoull(arg(4)).is_some());
    let bytes = match bytes {
        Some(b) if numbers_ok && arg(0).len() <= limits.max_key_len => b,
        _ => return Some(error(buf, line_len, BAD_FORMAT, 0, noreply)),
    };
    // From here on memcached would read the data block: it is swallowed with the error.
    let swallow = bytes + 2;
    if let Err(reply) = check_key(arg(0), limits) {
        return Some(error(buf, line_len, reply, swallow, noreply));
    }
    if bytes > limits.item_size_max {
        if command != Command::Set {
            return Some(error(buf, line_len, TOO_LARGE, swallow, noreply));
        }
        let key = Bytes::copy_from_slice(arg(0));
        let _ = buf.split_to(line_len);
        return Some(Parsed::TooLarge {
            reply: if noreply {
                Bytes::new()
            } else {
                Bytes::from_static(TOO_LARGE)
            },
            swallow,
            unlink: unlink_request(Command::Delete, key.clone(), &key, false),
        });
    }
    let total = line_len + bytes + 2;
    if buf.len() < total {
        return None;
    }
    if &buf[total - 2..total] != b"\r\n" {
        // memcached reads exactly <bytes>+2 and then refuses them.
        return Some(error(buf, total, BAD_CHUNK, 0, noreply));
    }
    let key = args[0];
    let raw = buf.split_to(total).freeze();
    Some(Parsed::Request(Request {
        command,
        keys: vec![raw.slice(key.0..key.1)],
        gat_exptime: None,
        noreply,
        quiet: false,
        raw,
    }))
}

/// Most flag tokens memcached 1.6 takes on an `ms` line (`MFLAG_MAX_OPT_LENGTH`): with more, it
/// answers an error *without* reading the data block, which would then be read as commands.
pub const META_MAX_FLAGS: usize = 16;

const META_FLAGS_TOO_LONG: &[u8] = b"CLIENT_ERROR options flags too long\r\n";

/// What the proxy appends to a quiet (`q`) meta request towards a backend: memcached answers
/// `mn` with `MN\r\n` after whatever the quiet request sent (possibly nothing).
pub const QUIET_SENTINEL: &[u8] = b"mn\r\n";

/// The reply to `mn`, which the proxy answers itself (replies are already in request order).
pub const META_NOOP_REPLY: &[u8] = b"MN\r\n";

/// mg, ms, md, ma, mn, me. Flags are passed through for the backend to judge; the proxy only
/// needs the key (decoded from base64 with the `b` flag, to route), the data block length of
/// `ms`, and whether the request is quiet. It refuses what would desynchronise a shared backend
/// stream: an `ms` whose data block memcached would not swallow, and bad data blocks.
fn parse_meta(
    buf: &mut BytesMut,
    line_len: usize,
    content_end: usize,
    command: Command,
    limits: &Limits,
) -> Option<Parsed> {
    let line = &buf[..content_end];
    let mut toks = Tokens { line, pos: 0 };
    toks.next(); // the command word
    if command == Command::MetaNoop {
        // memcached ignores anything after `mn`.
        let raw = buf.split_to(line_len).freeze();
        return Some(Parsed::Request(Request {
            command,
            keys: Vec::new(),
            gat_exptime: None,
            noreply: false,
            quiet: false,
            raw,
        }));
    }
    let Some(key) = toks.next() else {
        let reply = if command == Command::MetaDebug {
            BAD_FORMAT
        } else {
            ERROR
        };
        return Some(error(buf, line_len, reply, 0, false));
    };
    let mut data_len = None;
    if command == Command::MetaSet {
        let n = toks.next().and_then(|(s, e)| data_length(&line[s..e]));
        match n {
            Some(n) => data_len = Some(n),
            // memcached cannot tell the data block's length either: nothing to swallow.
            None => return Some(error(buf, line_len, BAD_FORMAT, 0, false)),
        }
    }
    let (mut quiet, mut base64, mut nflags) = (false, false, 0usize);
    for (s, _) in toks {
        nflags += 1;
        match line[s] {
            b'q' => quiet = true,
            b'b' => base64 = true,
            _ => {}
        }
    }
    let swallow = data_len.map_or(0, |n| n + 2);
    let key_bytes = &line[key.0..key.1];
    if let Err(reply) = check_key(key_bytes, limits) {
        // memcached refuses a long key before the data block (then read as commands); a
        // control character is the proxy's own refusal: the block goes with it.
        let swallow = if reply == KEY_TOO_LONG { 0 } else { swallow };
        return Some(error(buf, line_len, reply, swallow, false));
    }
    let decoded = if base64 {
        base64_decode(key_bytes).map(Bytes::from)
    } else {
        None
    };
    let total = match data_len {
        None => line_len,
        Some(n) => {
            if nflags > META_MAX_FLAGS {
                // Refused before the data block, which memcached then reads as commands.
                return Some(error(buf, line_len, META_FLAGS_TOO_LONG, 0, false));
            }
            if n > limits.item_size_max {
                let token = Bytes::copy_from_slice(key_bytes);
                let route_key = decoded.map_or_else(|| token.clone(), Bytes::from);
                let _ = buf.split_to(line_len);
                let unlink = unlink_request(Command::MetaDelete, route_key, &token, base64);
                return Some(Parsed::TooLarge {
                    reply: Bytes::from_static(TOO_LARGE),
                    swallow,
                    unlink,
                });
            }
            let total = line_len + n + 2;
            if buf.len() < total {
                return None;
            }
            if &buf[total - 2..total] != b"\r\n" {
                return Some(error(buf, total, BAD_CHUNK, 0, false));
            }
            total
        }
    };
    let raw = buf.split_to(total).freeze();
    let route_key = decoded.unwrap_or_else(|| raw.slice(key.0..key.1));
    Some(Parsed::Request(Request {
        command,
        keys: vec![route_key],
        gat_exptime: None,
        noreply: false,
        quiet,
        raw,
    }))
}

/// Standard base64 (RFC 4648, `+/`, `=` padding), as memcached's `b` flag reads keys. None when
/// the text is not valid base64 (memcached then answers `CLIENT_ERROR error decoding key`).
pub fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    if text.is_empty() || !text.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let chunks = text.len() / 4;
    for (i, c) in text.chunks_exact(4).enumerate() {
        let pad = match (c[2], c[3]) {
            (b'=', b'=') => 2,
            (_, b'=') => 1,
            _ => 0,
        };
        if pad > 0 && i + 1 != chunks {
            return None;
        }
        let mut n = 0u32;
        for &ch in &c[..4 - pad] {
            n = (n << 6) | val(ch)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

/// The request followed by `QUIET_SENTINEL` (for a quiet meta request).
pub fn with_quiet_sentinel(bytes: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(bytes.len() + QUIET_SENTINEL.len());
    out.put_slice(bytes);
    out.put_slice(QUIET_SENTINEL);
    out.freeze()
}

/// A quiet request's reply without its trailing `MN\r\n`: what memcached would have sent the
/// client for the quiet request itself (often nothing).
pub fn strip_quiet_sentinel(reply: Bytes) -> Bytes {
    if reply.ends_with(META_NOOP_REPLY) {
        reply.slice(..reply.len() - META_NOOP_REPLY.len())
    } else {
        reply
    }
}

/// Cap the TTLs a meta request sets (`bytes` as sent to a backend): every `T<ttl>` flag, and
/// the vivify TTL `N<ttl>` of mg/ma, become `f(ttl)`; an `ms` without `T` stores with TTL 0
/// (never expires), so it gets `T<f(0)>`. None when nothing changes.
pub fn rewrite_meta_ttl(command: Command, bytes: &Bytes, f: impl Fn(i64) -> i64) -> Option<Bytes> {
    let first_flag = match command {
        Command::MetaSet => 3,
        Command::MetaGet | Command::MetaArithmetic | Command::MetaDelete => 2,
        _ => return None,
    };
    let nl = memchr(b'\n', bytes)?;
    let line = strip_cr(&bytes[..nl]);
    let toks: Vec<(usize, usize)> = Tokens { line, pos: 0 }.collect();
    let mut out = BytesMut::with_capacity(bytes.len() + 16);
    let mut copied = 0;
    let mut has_t = false;
    let mut changed = false;
    for &(s, e) in toks.iter().skip(first_flag) {
        let flag = line[s];
        let ttl_flag = flag == b'T'
            || (flag == b'N' && command != Command::MetaSet && command != Command::MetaDelete);
        if !ttl_flag {
            continue;
        }
        has_t |= flag == b'T';
        // A bad token is left for memcached to refuse.
        let Some(old) = parse_i64(&line[s + 1..e]) else {
            continue;
        };
        out.put_slice(&bytes[copied..s + 1]);
        out.put_slice(f(old).to_string().as_bytes());
        copied = e;
        changed = true;
    }
    if command == Command::MetaSet && !has_t {
        out.put_slice(&bytes[copied..line.len()]);
        out.put_slice(format!(" T{}", f(0)).as_bytes());
        copied = line.len();
        changed = true;
    }
    if !changed {
        return None;
    }
    out.put_slice(&bytes[copied..]);
    Some(out.freeze())
}

/// `delete <key>` or `md <token> [b]`: the unlink of a refused `set`/`ms`. `key` routes it.
fn unlink_request(command: Command, key: Bytes, token: &[u8], base64: bool) -> Request {
    let mut raw = BytesMut::with_capacity(token.len() + 12);
    raw.put_slice(command.name().as_bytes());
    raw.put_u8(b' ');
    raw.put_slice(token);
    if base64 {
        raw.put_slice(b" b");
    }
    raw.put_slice(b"\r\n");
    Request {
        command,
        keys: vec![key],
        gat_exptime: None,
        noreply: true,
        quiet: false,
        raw: raw.freeze(),
    }
}

/// Drop `consume` bytes and build the error (silent when the request had noreply).
fn error(
    buf: &mut BytesMut,
    consume: usize,
    reply: &'static [u8],
    swallow: usize,
    noreply: bool,
) -> Parsed {
    let _ = buf.split_to(consume);
    error_reply(reply, swallow, noreply)
}

fn error_reply(reply: &'static [u8], swallow: usize, noreply: bool) -> Parsed {
    Parsed::Error {
        reply: if noreply {
            Bytes::new()
        } else {
            Bytes::from_static(reply)
        },
        swallow,
    }
}

fn check_key(key: &[u8], limits: &Limits) -> Result<(), &'static [u8]> {
    if key.len() > limits.max_key_len {
        Err(KEY_TOO_LONG)
    } else if key.iter().any(|&c| c < 0x21 || c == 0x7f) {
        Err(BAD_KEY)
    } else {
        Ok(())
    }
}

enum LineEnd {
    /// `len` includes the `\n`; `content_end` excludes the `\r\n` (or `\n`).
    Found {
        len: usize,
        content_end: usize,
    },
    Incomplete,
    TooLong,
}

/// Find the first line; it must fit, `\n` included, in `max_line_len` bytes. Deciding on the
/// first `max_line_len` bytes only makes the outcome independent of how the input was split.
fn find_line(buf: &[u8], max_line_len: usize) -> LineEnd {
    let window = &buf[..buf.len().min(max_line_len)];
    match memchr(b'\n', window) {
        Some(nl) => LineEnd::Found {
            len: nl + 1,
            content_end: if nl > 0 && buf[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            },
        },
        None if !buf.is_empty() && buf.len() >= max_line_len => LineEnd::TooLong,
        None => LineEnd::Incomplete,
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_spaces_end(b: &[u8], mut end: usize) -> usize {
    while end > 0 && b[end - 1] == b' ' {
        end -= 1;
    }
    end
}

/// Space-separated tokens of a line as `(start, end)` ranges; runs of spaces are one separator.
struct Tokens<'a> {
    line: &'a [u8],
    pos: usize,
}

impl Iterator for Tokens<'_> {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        let line = self.line;
        while self.pos < line.len() && line[self.pos] == b' ' {
            self.pos += 1;
        }
        if self.pos == line.len() {
            return None;
        }
        let start = self.pos;
        let end = memchr(b' ', &line[start..]).map_or(line.len(), |i| start + i);
        self.pos = end;
        Some((start, end))
    }
}

/// Unsigned decimal, optional leading `+` (strtoul accepts it), no overflow.
fn parse_u64(t: &[u8]) -> Option<u64> {
    let digits = t.strip_prefix(b"+").unwrap_or(t);
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &c| {
        if c.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(c - b'0'))
        } else {
            None
        }
    })
}

fn parse_u32(t: &[u8]) -> Option<u32> {
    parse_u64(t).and_then(|n| u32::try_from(n).ok())
}

/// memcached's `safe_strtoul`/`safe_strtoull` (flags, cas unique, delta, verbosity): strtoul's
/// syntax (optional sign), any value up to u64 (flags are then truncated to 32 bits), and a
/// minus sign only where the negated value still reads as non-negative (e.g. `-0`).
fn strtoull(t: &[u8]) -> Option<u64> {
    match t.strip_prefix(b"-") {
        Some(rest) if !rest.starts_with(b"+") => {
            let v = parse_u64(rest)?.wrapping_neg();
            (v as i64 >= 0).then_some(v)
        }
        Some(_) => None,
        None => parse_u64(t),
    }
}

/// A data block length as memcached reads it: `safe_strtol` into an int32 (so 4294967301 is 5),
/// then 0 ..= INT_MAX - 2.
fn data_length(t: &[u8]) -> Option<usize> {
    let n = parse_i64(t)? as i32;
    (0..=i32::MAX - 2).contains(&n).then_some(n as usize)
}

/// Signed decimal (exptime: negative means "already expired").
fn parse_i64(t: &[u8]) -> Option<i64> {
    match t.strip_prefix(b"-") {
        Some(rest) if !rest.starts_with(b"+") => {
            let n = parse_u64(rest)?;
            if n == 1 << 63 {
                Some(i64::MIN)
            } else {
                i64::try_from(n).ok().map(|n| -n)
            }
        }
        Some(_) => None,
        None => parse_u64(t).and_then(|n| i64::try_from(n).ok()),
    }
}

/// Compose a retrieval request for a subset of keys: `get k1 k2\r\n`, `gat 10 k1 k2\r\n`.
pub fn compose_retrieval(command: Command, gat_exptime: Option<&[u8]>, keys: &[Bytes]) -> Bytes {
    let name = command.name().as_bytes();
    let len = name.len()
        + gat_exptime.map_or(0, |e| e.len() + 1)
        + keys.iter().map(|k| k.len() + 1).sum::<usize>()
        + 2;
    let mut out = BytesMut::with_capacity(len);
    out.put_slice(name);
    if let Some(e) = gat_exptime {
        out.put_u8(b' ');
        out.put_slice(e);
    }
    for k in keys {
        out.put_u8(b' ');
        out.put_slice(k);
    }
    out.put_slice(b"\r\n");
    out.freeze()
}

/// Rewrite the exptime argument of a request (`bytes` as sent to a backend, no `noreply`):
/// storage commands, `touch`, `gat`/`gats`. None for commands without an exptime or when the
/// token does not parse (the parser already refused those).
pub fn rewrite_exptime(
    command: Command,
    bytes: &Bytes,
    f: impl FnOnce(i64) -> i64,
) -> Option<Bytes> {
    let index = match command {
        c if c.is_storage() => 3,
        Command::Touch => 2,
        Command::Gat | Command::Gats => 1,
        _ => return None,
    };
    let nl = memchr(b'\n', bytes)?;
    let line = strip_cr(&bytes[..nl]);
    let mut seen = 0;
    let mut i = 0;
    let (tok_start, tok_end) = loop {
        while i < line.len() && line[i] == b' ' {
            i += 1;
        }
        if i >= line.len() {
            return None;
        }
        let s = i;
        while i < line.len() && line[i] != b' ' {
            i += 1;
        }
        if seen == index {
            break (s, i);
        }
        seen += 1;
    };
    let old: i64 = std::str::from_utf8(&line[tok_start..tok_end])
        .ok()?
        .parse()
        .ok()?;
    let new = f(old).to_string();
    let mut out = BytesMut::with_capacity(bytes.len() + new.len());
    out.put_slice(&bytes[..tok_start]);
    out.put_slice(new.as_bytes());
    out.put_slice(&bytes[tok_end..]);
    Some(out.freeze())
}

/// A `set` that stores `item` (a retrieval item: `VALUE key flags bytes [cas]\r\n<data>\r\n`)
/// with `exptime`; None when the item does not parse.
pub fn set_from_item(item: &Item, exptime: i64) -> Option<Bytes> {
    let nl = memchr(b'\n', &item.raw)?;
    let line = strip_cr(&item.raw[..nl]);
    let mut tokens = line.split(|&b| b == b' ').filter(|t| !t.is_empty());
    let (_value, key, flags, len) = (
        tokens.next()?,
        tokens.next()?,
        tokens.next()?,
        tokens.next()?,
    );
    let data = item.raw.get(nl + 1..)?;
    let mut out = BytesMut::with_capacity(item.raw.len() + 32);
    out.put_slice(b"set ");
    out.put_slice(key);
    out.put_u8(b' ');
    out.put_slice(flags);
    out.put_slice(format!(" {exptime} ").as_bytes());
    out.put_slice(len);
    out.put_slice(b"\r\n");
    out.put_slice(data);
    Some(out.freeze())
}

mod reply;
#[cfg(test)]
use reply::MAX_REPLY_LINE;
pub use reply::*;

#[cfg(test)]
mod tests;
