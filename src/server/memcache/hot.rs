//! Hot keys on memcached listeners: what is cached for a hot key is the item as the client
//! gets it (`VALUE key flags bytes\r\ndata\r\n`), or nothing for a miss (a miss is cached too).
//! A split copy `KEY::i.SSSS.copy` holds the same value and flags as the original, with at most
//! COPY_TTL to live; it is read with `get` and filled from the original's `mg KEY s v f t` with
//! `ms COPY <bytes> F<flags> T<ttl>`. The shared machinery (detector, cache, flights) is in
//! `crate::hotkey`; this file is the memcached side of it.

use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use super::*;
use crate::hotkey::{split::copy_key, Flights, HotKeys};

const END: &[u8] = b"END\r\n";

/// The longest key memcached accepts; a key whose copy names would be longer is not split.
const MAX_KEY: usize = 250;

impl Conn {
    /// A `get` with at least one hot key: hot keys are answered by `hot_get`, the others as
    /// usual, merged in the client's order.
    pub(super) fn hot_retrieval(&mut self, req: Request) -> Pending {
        let ctx = self.ctx.clone();
        let hot = ctx.hot.as_ref().expect("hot keys configured");
        let cmd = command_index(req.command);
        if req.keys.len() == 1 {
            return Pending::Single {
                rx: self.hot_get(hot, &req.keys[0]),
                server: None,
                noreply: false,
                hit_check: true,
                cmd,
                quiet: false,
            };
        }
        let mut parts: Vec<Part> = Vec::new();
        let mut part_of = Vec::with_capacity(req.keys.len());
        // Cold keys of a plain pool: one part per server, sent once all keys are placed.
        let mut groups: Vec<(usize, usize, Vec<Bytes>)> = Vec::new(); // (server, part, keys)
        for key in &req.keys {
            if hot.shared.detector.is_hot(key) {
                parts.push(Part {
                    server: None,
                    rx: Some(self.hot_get(hot, key)),
                    result: None,
                });
                part_of.push(parts.len() - 1);
                continue;
            }
            if ctx.route.target().is_none() {
                let bytes =
                    memcache::compose_retrieval(Command::Get, None, std::slice::from_ref(key));
                let (rx, server) = ctx.send(self.op(Command::Get, key, bytes));
                parts.push(Part {
                    server,
                    rx: Some(rx),
                    result: None,
                });
                part_of.push(parts.len() - 1);
                continue;
            }
            let Some(server) = ctx.pool.server_for(key) else {
                return self.no_server();
            };
            match groups.iter_mut().find(|g| g.0 == server) {
                Some(g) => {
                    g.2.push(key.clone());
                    part_of.push(g.1);
                }
                None => {
                    parts.push(Part {
                        server: Some(server),
                        rx: None,
                        result: None,
                    });
                    groups.push((server, parts.len() - 1, vec![key.clone()]));
                    part_of.push(parts.len() - 1);
                }
            }
        }
        for (server, p, keys) in groups {
            let bytes = memcache::compose_retrieval(Command::Get, None, &keys);
            parts[p].rx = Some(self.backend(server).send(bytes, ReplyKind::McRetrieval));
        }
        Pending::Multi(Box::new(MultiGet {
            cmd,
            keys: req.keys,
            part_of,
            parts,
        }))
    }

    /// A `get` of hot `key`: from the local cache when fresh; else a share of this worker's
    /// read of it in flight; else a new read (of a split copy, or of the original), whose
    /// reply fills the cache.
    pub(super) fn hot_get(&self, hot: &HotCtx, key: &Bytes) -> oneshot::Receiver<Reply> {
        let hk = &hot.shared;
        if let Some(cache) = &hk.cache {
            if let Some(item) = cache.get(key) {
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(Ok(with_end(&item)));
                return rx;
            }
        }
        if let Some(rx) = hot.flights.borrow_mut().join(key, &hk.writes) {
            HotKeys::count(&hk.coalesced, 1);
            return rx;
        }
        let cache_ticket = hk.cache.as_ref().map(|c| c.ticket(key));
        let started = hot
            .flights
            .borrow_mut()
            .start(key.clone(), hk.writes.ticket(key));
        // The first backend request is sent now, so it is queued after this client's earlier
        // requests on the same connection.
        let fetch = fetch_hot(&self.ctx, self.client_id, hot, key.clone());
        let (tx, rx) = oneshot::channel();
        let (shared, flights, key) = (hk.clone(), hot.flights.clone(), key.clone());
        tokio::task::spawn_local(async move {
            let reply = fetch.await;
            if let (Some(cache), Some(ticket), Ok(b)) = (&shared.cache, cache_ticket, &reply) {
                if let Some(item) = cacheable(b) {
                    cache.fill(key.clone(), item, ticket);
                }
            }
            Flights::land(&flights, &key, started, &reply);
            let _ = tx.send(reply);
        });
        rx
    }

    /// A write of `key` (its backend reply arrives on `rx`). When the key is hot or cooled
    /// recently: invalidate it (local cache, flights) and delete its split copies now, and
    /// again once the original acknowledged the write; the client gets the original's reply
    /// once both rounds of copy deletes are acknowledged too.
    pub(super) fn hot_write(
        &self,
        key: &Bytes,
        rx: oneshot::Receiver<Reply>,
    ) -> oneshot::Receiver<Reply> {
        let Some(hot) = &self.ctx.hot else { return rx };
        if !hot.shared.detector.is_guarded(key) {
            return rx;
        }
        hot.shared.invalidate(key);
        hot.flights.borrow_mut().forget(key);
        let first = delete_copies(&self.ctx, self.client_id, hot, key);
        let (tx, out) = oneshot::channel();
        let ctx = self.ctx.clone();
        let (client_id, key) = (self.client_id, key.clone());
        tokio::task::spawn_local(async move {
            let reply = flatten(rx.await);
            for d in first {
                let _ = d.await;
            }
            let hot = ctx.hot.as_ref().expect("checked");
            hot.shared.invalidate(&key);
            hot.flights.borrow_mut().forget(&key);
            for d in delete_copies(&ctx, client_id, hot, &key) {
                let _ = d.await;
            }
            let _ = tx.send(reply);
        });
        out
    }
}

/// Send a single-key request the way this listener routes `key` (route tree or pool).
fn send_key(
    ctx: &McContext,
    client_id: usize,
    command: Command,
    key: &Bytes,
    bytes: Bytes,
) -> oneshot::Receiver<Reply> {
    let op = McOp {
        command,
        key: key.clone(),
        bytes,
        client_id,
        quiet: false,
    };
    ctx.send(op).0
}

/// A backend outcome as bytes for the client (`SERVER_ERROR ...` when it failed).
fn reply_bytes(r: Reply) -> Bytes {
    match r {
        Ok(b) => b,
        Err(e) => Bytes::from(format!("SERVER_ERROR {e}\r\n")),
    }
}

fn with_end(item: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(item.len() + END.len());
    out.extend_from_slice(item);
    out.extend_from_slice(END);
    out.freeze()
}

/// What a single-key `get` reply puts in the local cache: the item (empty for a miss); None
/// for an error.
fn cacheable(reply: &Bytes) -> Option<Bytes> {
    if reply.as_ref() == END {
        return Some(Bytes::new());
    }
    if reply.starts_with(b"VALUE ") && reply.ends_with(END) {
        return Some(reply.slice(..reply.len() - END.len()));
    }
    None
}

/// Read hot `key` from the backends: the first request is sent before this returns.
fn fetch_hot(
    ctx: &Rc<McContext>,
    client_id: usize,
    hot: &HotCtx,
    key: Bytes,
) -> futures_util::future::LocalBoxFuture<'static, Reply> {
    use futures_util::FutureExt;
    let copy = hot
        .shared
        .pick_copy()
        .map(|i| copy_key(&key, i, hot.tag))
        .filter(|c| c.len() <= MAX_KEY);
    let Some(copy) = copy else {
        let bytes = memcache::compose_retrieval(Command::Get, None, std::slice::from_ref(&key));
        let rx = send_key(ctx, client_id, Command::Get, &key, bytes);
        return async move { flatten(rx.await) }.boxed_local();
    };
    let bytes = memcache::compose_retrieval(Command::Get, None, std::slice::from_ref(&copy));
    let rx = send_key(ctx, client_id, Command::Get, &copy, bytes);
    let ctx = ctx.clone();
    let shared = hot.shared.clone();
    async move {
        let first = flatten(rx.await);
        match &first {
            Ok(b) if b.starts_with(b"VALUE ") => {
                if let Some(item) = rename_item(b, &copy, &key) {
                    HotKeys::count(&shared.copy_hits, 1);
                    return Ok(item);
                }
            }
            Ok(b) if b.as_ref() == END => {}
            // The copy's server failed: read the original (and leave the copy alone).
            _ => {
                let bytes =
                    memcache::compose_retrieval(Command::Get, None, std::slice::from_ref(&key));
                return flatten(send_key(&ctx, client_id, Command::Get, &key, bytes).await);
            }
        }
        HotKeys::count(&shared.copy_misses, 1);
        read_original_and_fill(&ctx, client_id, &shared, key, copy).await
    }
    .boxed_local()
}

/// A copy missed: read the original with `mg KEY s v f t` (value, flags, remaining TTL), answer
/// with it, and fill the copy unless a write of the key went through the proxy meanwhile.
async fn read_original_and_fill(
    ctx: &McContext,
    client_id: usize,
    shared: &HotKeys,
    key: Bytes,
    copy: Bytes,
) -> Reply {
    let ticket = shared.writes.ticket(&key);
    let mut mg = BytesMut::with_capacity(key.len() + 16);
    mg.extend_from_slice(b"mg ");
    mg.extend_from_slice(&key);
    mg.extend_from_slice(b" s v f t\r\n");
    let reply = reply_bytes(flatten(
        send_key(ctx, client_id, Command::MetaGet, &key, mg.freeze()).await,
    ));
    if reply.starts_with(b"EN") {
        return Ok(Bytes::from_static(END));
    }
    let Some(meta) = parse_meta_value(&reply) else {
        if reply.starts_with(b"SERVER_ERROR") {
            return Ok(reply);
        }
        let line = String::from_utf8_lossy(trim_crlf(
            reply.split(|&b| b == b'\n').next().unwrap_or(&[]),
        ));
        return Ok(Bytes::from(format!(
            "SERVER_ERROR unexpected reply to mg: {line}\r\n"
        )));
    };
    let mut item = BytesMut::with_capacity(meta.data.len() + key.len() + 32);
    item.extend_from_slice(b"VALUE ");
    item.extend_from_slice(&key);
    item.extend_from_slice(format!(" {} {}\r\n", meta.flags, meta.data.len()).as_bytes());
    item.extend_from_slice(&meta.data);
    item.extend_from_slice(b"\r\n");
    item.extend_from_slice(END);
    // t-1: no expiry (the copy gets COPY_TTL); t0: expiring this second (no fill: T0 would
    // mean "never expires").
    let cap = shared.copy_ttl.as_secs() as i64;
    let ttl = if meta.ttl < 0 { cap } else { meta.ttl.min(cap) };
    if ttl > 0 && shared.writes.valid(&ticket) {
        let mut ms = BytesMut::with_capacity(copy.len() + meta.data.len() + 40);
        ms.extend_from_slice(b"ms ");
        ms.extend_from_slice(&copy);
        ms.extend_from_slice(format!(" {} F{} T{ttl}\r\n", meta.data.len(), meta.flags).as_bytes());
        ms.extend_from_slice(&meta.data);
        ms.extend_from_slice(b"\r\n");
        // The reply (HD, or an error: the copy just stays missing) is not waited for, but its
        // receiver is kept: a backend connection skips requests nobody waits for.
        let rx = send_key(ctx, client_id, Command::MetaSet, &copy, ms.freeze());
        tokio::task::spawn_local(async move {
            let _ = rx.await;
        });
        HotKeys::count(&shared.copy_fills, 1);
    }
    Ok(item.freeze())
}

struct MetaValue {
    data: Bytes,
    flags: u32,
    /// Remaining TTL in seconds; -1: never expires.
    ttl: i64,
}

/// `VA <size> s<size> f<flags> t<ttl>\r\n<data>\r\n`.
fn parse_meta_value(reply: &Bytes) -> Option<MetaValue> {
    let nl = memchr::memchr(b'\n', reply)?;
    let line = std::str::from_utf8(trim_crlf(&reply[..=nl])).ok()?;
    let mut tokens = line.split(' ');
    if tokens.next()? != "VA" {
        return None;
    }
    let size: usize = tokens.next()?.parse().ok()?;
    let (mut flags, mut ttl) = (0u32, -1i64);
    for t in tokens {
        match t.as_bytes().first() {
            Some(b'f') => flags = t[1..].parse().ok()?,
            Some(b't') => ttl = t[1..].parse().ok()?,
            _ => {}
        }
    }
    let start = nl + 1;
    if reply.len() < start + size + 2 {
        return None;
    }
    Some(MetaValue {
        data: reply.slice(start..start + size),
        flags,
        ttl,
    })
}

/// `VALUE COPY ...` → `VALUE KEY ...` (+ END): the client asked for KEY.
fn rename_item(reply: &Bytes, copy: &[u8], key: &[u8]) -> Option<Bytes> {
    let items = memcache::split_items(reply).ok()?;
    let [item] = items.as_slice() else {
        return None;
    };
    if item.key != copy {
        return None;
    }
    let rest = &item.raw[b"VALUE ".len() + copy.len()..];
    let mut out = BytesMut::with_capacity(item.raw.len() + key.len() + END.len());
    out.extend_from_slice(b"VALUE ");
    out.extend_from_slice(key);
    out.extend_from_slice(rest);
    out.extend_from_slice(END);
    Some(out.freeze())
}

/// Delete every split copy of `key` (nothing without split); the replies arrive on the
/// receivers (a failed delete leaves that copy to expire: COPY_TTL at most).
fn delete_copies(
    ctx: &McContext,
    client_id: usize,
    hot: &HotCtx,
    key: &Bytes,
) -> Vec<oneshot::Receiver<Reply>> {
    let Some(n) = hot.shared.split else {
        return Vec::new();
    };
    HotKeys::count(&hot.shared.copy_deletes, n as u64);
    (0..n)
        .map(|i| copy_key(key, i, hot.tag))
        .filter(|c| c.len() <= MAX_KEY)
        .map(|c| {
            let mut del = BytesMut::with_capacity(c.len() + 9);
            del.extend_from_slice(b"delete ");
            del.extend_from_slice(&c);
            del.extend_from_slice(b"\r\n");
            send_key(ctx, client_id, Command::Delete, &c, del.freeze())
        })
        .collect()
}
