//! The memcached ASCII protocol: request parser (client side) and reply scanner (backend side).
//!
//! Requests are parsed once into a `Request` whose fields are `Bytes` slices of the client's read
//! buffer (no copies). Replies from backends are only *scanned* for their length; the proxy
//! forwards them as they are, except multi-key retrievals which are split into items and merged.

use bytes::{Bytes, BytesMut};

/// Limits applied while parsing; they come from the pool/listener config.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest key accepted (memcached: 250).
    pub max_key_len: usize,
    /// Largest data block accepted for storage commands (memcached's item_size_max, default 1 MiB).
    pub item_size_max: usize,
    /// Longest command line (without data block) before the connection is considered broken.
    pub max_line_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_len: 250,
            item_size_max: 1024 * 1024,
            max_line_len: 1024 * 1024,
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
}

impl Command {
    /// The command word as sent on the wire (`get`, `flush_all`, ...).
    pub fn name(self) -> &'static str {
        unimplemented!()
    }

    /// get, gets, gat, gats: replies are `VALUE ...` items ended by `END`.
    pub fn is_retrieval(self) -> bool {
        matches!(
            self,
            Command::Get | Command::Gets | Command::Gat | Command::Gats
        )
    }

    /// set, add, replace, append, prepend, cas: the command line is followed by a data block.
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
    /// The whole request exactly as received: command line, and data block with its `\r\n` for
    /// storage commands.
    pub raw: Bytes,
}

impl Request {
    /// The bytes to send to a backend: `raw` without the `noreply` token (the proxy always wants a
    /// reply from the backend so the backend stream stays in step; it drops it for the client).
    /// Zero-copy when the request has no `noreply`.
    pub fn to_backend(&self) -> Bytes {
        unimplemented!()
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
    Error { reply: Bytes, swallow: usize },
}

/// The stream cannot be resynchronised (e.g. a command line longer than `max_line_len` with no
/// newline). The caller sends `reply` and closes the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fatal {
    pub reply: Bytes,
}

/// Parse one request from the front of `buf`. Ok(None): need more bytes (nothing is consumed).
pub fn parse_request(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Parsed>, Fatal> {
    let _ = (buf, limits);
    unimplemented!()
}

/// Compose a retrieval request for a subset of keys: `get k1 k2\r\n`, `gat 10 k1 k2\r\n`.
pub fn compose_retrieval(command: Command, gat_exptime: Option<&[u8]>, keys: &[Bytes]) -> Bytes {
    let _ = (command, gat_exptime, keys);
    unimplemented!()
}

/// A reply stream that cannot be parsed (the backend connection must be closed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyError(pub String);

/// Scan one complete reply at the front of `buf` without consuming it. `retrieval` says whether
/// the request was get/gets/gat/gats (then the reply is VALUE items ended by END, or one error
/// line); otherwise a reply is one `\r\n`-terminated line. Ok(Some(n)): the reply is `buf[..n]`.
pub fn scan_reply(buf: &[u8], retrieval: bool) -> Result<Option<usize>, ReplyError> {
    let _ = (buf, retrieval);
    unimplemented!()
}

/// One item of a retrieval reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub key: Bytes,
    /// The whole item as sent: `VALUE key flags bytes [cas]\r\n<data>\r\n`.
    pub raw: Bytes,
}

/// Split a complete retrieval reply (as found by `scan_reply`) into its items. Err when the reply
/// is an error line instead of items (the line is returned).
pub fn split_items(reply: &Bytes) -> Result<Vec<Item>, Bytes> {
    let _ = reply;
    unimplemented!()
}

/// True when a single-line reply is an error (`ERROR`, `CLIENT_ERROR ...`, `SERVER_ERROR ...`).
pub fn is_error_reply(line: &[u8]) -> bool {
    line.starts_with(b"ERROR")
        || line.starts_with(b"CLIENT_ERROR")
        || line.starts_with(b"SERVER_ERROR")
}
