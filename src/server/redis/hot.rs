//! Hot keys on redis listeners (one pool, sharded or cluster, or a route tree): a GET of a key
//! the listener's detector finds hot is served from the local cache while fresh; otherwise, with
//! `split`, from one random copy `KEY::i.SSSS.copy` (placed like any key: the pool's hash, the
//! cluster slot, or down the route tree; the suffix inside a hash tag), a copy miss reading the
//! original (GET + PTTL on one connection) and filling the copy with the original's remaining TTL
//! capped at `copy_ttl`. Writes of a hot (or recently cooled) key invalidate the cache and delete
//! the copies when sent and again once acknowledged; the client gets its reply after both rounds.
//! Cached values are the GET reply bytes exactly (bulk or nil). Only GET is eligible: it reads
//! one string value whose reply is a function of the key alone; other reads (types, ranges,
//! TTL-sensitive commands) pass through.

use std::future::poll_fn;

use bytes::Bytes;

use super::{backend_error, place, send, Conn, Pending, RedisContext, Rx};
use crate::backend::{BackendError, Reply};
use crate::hotkey::{split::copy_key, HotKeys};
use crate::protocol::redis_commands::{key_indices, lookup, CommandInfo};
use crate::protocol::resp::merge::{bulk_payload, error};
use crate::protocol::resp::{encode_request, RespRequest};
use crate::server::stats::bump;

type Fetch = futures_util::future::LocalBoxFuture<'static, Reply>;

/// Send `req` (a command on `key`) to where `key` lives: a server, a cluster slot's owner, or
/// down the listener's route tree like any command on that key.
fn send_key(
    ctx: &RedisContext,
    client_id: usize,
    key: &[u8],
    req: RespRequest,
    read: bool,
) -> Option<Rx> {
    if !ctx.direct {
        let info = lookup(&req.args[0])?;
        let stats = ctx.stats.clone();
        let task = super::leaf::dispatch(&ctx.routing, info, req, false, client_id, stats);
        return task.ok().map(Rx::Routed);
    }
    let server = place(ctx, key)?;
    Some(send(ctx, client_id, server, req.raw, read))
}

async fn reply_of(mut rx: Rx) -> Reply {
    poll_fn(|cx| rx.poll(cx)).await
}

fn is_bulk_hit(b: &[u8]) -> bool {
    b.starts_with(b"$") && !b.starts_with(b"$-1")
}

impl Conn {
    /// GET on a listener with `hot_keys`: count it; when hot, answer it the hot way. None: the
    /// normal path handles it.
    pub(super) fn hot_get(&mut self, info: &CommandInfo, req: &RespRequest) -> Option<Pending> {
        let hot = self.ctx.hot.as_ref()?;
        if info.name != "get" || req.args.len() != 2 {
            return None;
        }
        let key = req.args[1].clone();
        hot.sampler.borrow_mut().record(&key);
        let hk = hot.shared.clone();
        if !hk.detector.is_hot(&key) {
            return None;
        }
        if let Some(cache) = &hk.cache {
            if let Some(v) = cache.get(&key) {
                return Some(Pending::Ready(v));
            }
        }
        let cache_ticket = hk.cache.as_ref().map(|c| c.ticket(&key));
        let fetch = self.hot_fetch(&key, req.clone())?;
        let ctx = self.ctx.clone();
        let task = tokio::task::spawn_local(async move {
            match fetch.await {
                Ok(b) => {
                    if let (Some(c), Some(t)) = (&hk.cache, cache_ticket) {
                        if b.starts_with(b"$") {
                            c.fill(key, b.clone(), t);
                        }
                    }
                    b
                }
                Err(e) => {
                    bump(&ctx.stats.server_errors, 1);
                    error(&format!("ERR backend {e}"))
                }
            }
        });
        Some(Pending::Routed(task))
    }

    /// Read a hot key: a random copy when split, else the original. Requests are sent now.
    fn hot_fetch(&self, key: &Bytes, req: RespRequest) -> Option<Fetch> {
        let hot = self.ctx.hot.as_ref()?;
        let hk = hot.shared.clone();
        let (ctx, client_id) = (self.ctx.clone(), self.client_id);
        let Some(i) = hk.pick_copy() else {
            return Some(Box::pin(reply_of(send_key(
                &ctx, client_id, key, req, true,
            )?)));
        };
        let copy = copy_key(key, i, hot.tag);
        let write_ticket = hk.writes.ticket(key);
        let copy_rx = send_key(
            &ctx,
            client_id,
            &copy,
            encode_request(&[&b"GET"[..], &copy]),
            true,
        )?;
        let key = key.clone();
        Some(Box::pin(async move {
            if let Ok(b) = reply_of(copy_rx).await {
                if b.starts_with(b"$") && is_bulk_hit(&b) {
                    HotKeys::count(&hk.copy_hits, 1);
                    return Ok(b);
                }
            }
            HotKeys::count(&hk.copy_misses, 1);
            // The original: its value and remaining TTL, back to back on one connection.
            let get = send_key(
                &ctx,
                client_id,
                &key,
                encode_request(&[&b"GET"[..], &key]),
                true,
            );
            let pttl = send_key(
                &ctx,
                client_id,
                &key,
                encode_request(&[&b"PTTL"[..], &key]),
                true,
            );
            let (Some(get), Some(pttl)) = (get, pttl) else {
                return Err(BackendError::Down);
            };
            let value = reply_of(get).await?;
            let ttl = reply_of(pttl).await.ok();
            if let (Some(v), true) = (bulk_payload(&value), hk.writes.valid(&write_ticket)) {
                let cap = hk.copy_ttl.as_millis() as i64;
                let ms = match ttl.as_deref().and_then(|t| {
                    std::str::from_utf8(t.get(1..t.len() - 2)?)
                        .ok()?
                        .parse::<i64>()
                        .ok()
                }) {
                    Some(ms) if ms > 0 => ms.min(cap),
                    Some(-1) => cap,
                    _ => 0, // gone meanwhile, or unknown: no fill
                };
                if ms > 0 {
                    HotKeys::count(&hk.copy_fills, 1);
                    let set =
                        encode_request(&[&b"SET"[..], &copy, &v, b"PX", ms.to_string().as_bytes()]);
                    // Keep the receiver alive: a connection skips requests nobody waits for.
                    if let Some(rx) = send_key(&ctx, client_id, &copy, set, false) {
                        tokio::task::spawn_local(reply_of(rx));
                    }
                }
            }
            Ok(value)
        }))
    }

    /// The hot (or recently cooled) keys a write changes; None when it changes none (the
    /// common case costs one atomic load).
    pub(super) fn hot_written_keys(
        &self,
        info: &CommandInfo,
        req: &RespRequest,
    ) -> Option<Vec<Bytes>> {
        let detector = &self.ctx.hot.as_ref()?.shared.detector;
        if !info.is_write() || !detector.any_guarded() {
            return None;
        }
        let guarded: Vec<Bytes> = key_indices(info, &req.args)
            .unwrap_or_default()
            .into_iter()
            .map(|i| req.args[i].clone())
            .filter(|k| detector.is_guarded(k))
            .collect();
        (!guarded.is_empty()).then_some(guarded)
    }

    /// A write of the hot keys `guarded` whose reply arrives on `rx` from `server`: invalidate
    /// and delete copies now and again once acknowledged; the client's reply waits for both.
    pub(super) fn hot_write(&self, guarded: Vec<Bytes>, server: usize, mut rx: Rx) -> Pending {
        let first = self.hot_invalidate(&guarded);
        let (ctx, client_id) = (self.ctx.clone(), self.client_id);
        let task = tokio::task::spawn_local(async move {
            let reply = poll_fn(|cx| rx.poll(cx)).await;
            for d in first {
                reply_of(d).await.ok();
            }
            let again = hot_invalidate(&ctx, client_id, &guarded);
            for d in again {
                reply_of(d).await.ok();
            }
            match reply {
                Ok(b) => b,
                Err(e) => backend_error(&ctx, server, &e),
            }
        });
        Pending::Routed(task)
    }

    pub(super) fn hot_invalidate(&self, keys: &[Bytes]) -> Vec<Rx> {
        hot_invalidate(&self.ctx, self.client_id, keys)
    }
}

/// Invalidate `keys` in the local cache and flights, and send DELs of their copies.
fn hot_invalidate(ctx: &RedisContext, client_id: usize, keys: &[Bytes]) -> Vec<Rx> {
    let Some(hot) = ctx.hot.as_ref() else {
        return Vec::new();
    };
    let mut dels = Vec::new();
    for k in keys {
        hot.shared.invalidate(k);
        if let Some(n) = hot.shared.split {
            HotKeys::count(&hot.shared.copy_deletes, n as u64);
            for i in 0..n {
                let c = copy_key(k, i, hot.tag);
                if let Some(rx) = send_key(
                    ctx,
                    client_id,
                    &c,
                    encode_request(&[&b"DEL"[..], &c]),
                    false,
                ) {
                    dels.push(rx);
                }
            }
        }
    }
    dels
}
