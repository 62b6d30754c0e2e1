//! Replies on their way to a memcached client, one `Pending` per request in request order: a
//! reply from one backend connection, a multi-get's parts merged in the client's key order,
//! `flush_all` on every server, or a reply ready at once. `Pending::poll` yields the bytes the
//! client gets (`SERVER_ERROR ...` for a failed server, misses for a multi-get's failed part).

use super::*;

/// One request's reply, in the order the client sent it.
pub(super) enum Pending {
    Ready(Bytes),
    Single {
        rx: oneshot::Receiver<Reply>,
        /// The server it went to (None: it went down a route tree, which reports its own errors).
        server: Option<usize>,
        noreply: bool,
        hit_check: bool,
        cmd: usize,
        /// A quiet meta request sent with `mn` after it: strip the `MN` from the reply.
        quiet: bool,
    },
    Multi(Box<MultiGet>),
    Flush {
        /// Each server's address and its reply.
        rxs: Vec<(String, Option<oneshot::Receiver<Reply>>)>,
        failed: Option<String>,
        noreply: bool,
        cmd: usize,
    },
    /// Plain `stats`, reported when its turn comes: it includes every request before it.
    Stats,
    /// `stats items|slabs`: every server's reply, summed (`stats::sum_stat_replies`); a server
    /// that fails is left out.
    StatsSum {
        rxs: Vec<Option<oneshot::Receiver<Reply>>>,
        got: Vec<Bytes>,
    },
    Quit,
}

/// A retrieval whose keys live on several servers.
pub(super) struct MultiGet {
    pub(super) cmd: usize,
    pub(super) keys: Vec<Bytes>,
    /// For each client key, the part that carries it.
    pub(super) part_of: Vec<usize>,
    pub(super) parts: Vec<Part>,
}

pub(super) struct Part {
    /// None: the key went down a route tree (its errors arrive as SERVER_ERROR replies).
    pub(super) server: Option<usize>,
    pub(super) rx: Option<oneshot::Receiver<Reply>>,
    pub(super) result: Option<Reply>,
}

/// The reply to a request, once complete; None means close the connection (quit).
type Done = Option<Bytes>;

impl Pending {
    pub(super) fn poll(&mut self, cx: &mut Context<'_>, ctx: &McContext) -> Poll<Done> {
        match self {
            Pending::Ready(b) => Poll::Ready(Some(std::mem::take(b))),
            Pending::Quit => Poll::Ready(None),
            Pending::Stats => {
                let report = ctx.stats.memcache_report(ctx.threads);
                Poll::Ready(Some(Bytes::from(report)))
            }
            Pending::StatsSum { rxs, got } => {
                let mut waiting = false;
                for slot in rxs.iter_mut() {
                    if let Some(rx) = slot.as_mut() {
                        match Pin::new(rx).poll(cx) {
                            Poll::Pending => waiting = true,
                            Poll::Ready(r) => {
                                *slot = None;
                                match flatten(r) {
                                    Ok(b) if b.starts_with(b"STAT ") || b.starts_with(b"END") => {
                                        got.push(b)
                                    }
                                    Ok(_) | Err(_) => bump(&ctx.stats.server_errors, 1),
                                }
                            }
                        }
                    }
                }
                if waiting {
                    return Poll::Pending;
                }
                let sum = super::super::stats::sum_stat_replies(got.iter().map(|b| &b[..]));
                Poll::Ready(Some(Bytes::from(sum)))
            }
            Pending::Single {
                rx,
                server,
                noreply,
                hit_check,
                cmd,
                quiet,
            } => {
                let reply = match Pin::new(rx).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => flatten(r),
                };
                let out = match reply {
                    Ok(mut bytes) => {
                        if *quiet {
                            bytes = memcache::strip_quiet_sentinel(bytes);
                        }
                        ctx.metrics.request(*cmd, Outcome::of_reply(&bytes));
                        if *hit_check && bytes.starts_with(b"SERVER_ERROR") {
                            ctx.metrics.failed.inc();
                        } else if *hit_check {
                            // get: `VALUE`; mg: `VA` or `HD` (a miss is `EN`, or nothing when quiet).
                            let hit = bytes.starts_with(b"VALUE ")
                                || bytes.starts_with(b"VA ")
                                || bytes.starts_with(b"HD");
                            bump(
                                if hit {
                                    &ctx.stats.get_hits
                                } else {
                                    &ctx.stats.get_misses
                                },
                                1,
                            );
                            if hit {
                                ctx.metrics.hits.inc();
                            } else {
                                ctx.metrics.misses.inc();
                            }
                        }
                        bytes
                    }
                    Err(e) => {
                        ctx.metrics.request(*cmd, Outcome::Error);
                        server_error(ctx, *server, &e)
                    }
                };
                Poll::Ready(Some(if *noreply { Bytes::new() } else { out }))
            }
            Pending::Multi(m) => {
                let mut waiting = false;
                for p in m.parts.iter_mut() {
                    if let Some(rx) = p.rx.as_mut() {
                        match Pin::new(rx).poll(cx) {
                            Poll::Pending => waiting = true,
                            Poll::Ready(r) => {
                                p.result = Some(flatten(r));
                                p.rx = None;
                            }
                        }
                    }
                }
                if waiting {
                    return Poll::Pending;
                }
                Poll::Ready(Some(m.merge(ctx)))
            }
            Pending::Flush {
                rxs,
                failed,
                noreply,
                cmd,
            } => {
                let mut waiting = false;
                for (addr, slot) in rxs.iter_mut() {
                    if let Some(rx) = slot.as_mut() {
                        match Pin::new(rx).poll(cx) {
                            Poll::Pending => waiting = true,
                            Poll::Ready(r) => {
                                *slot = None;
                                let why = match flatten(r) {
                                    Ok(b) if b.as_ref() == b"OK\r\n" => None,
                                    Ok(b) => {
                                        Some(String::from_utf8_lossy(trim_crlf(&b)).into_owned())
                                    }
                                    Err(e) => Some(e.to_string()),
                                };
                                if let (Some(why), None) = (why, failed.as_ref()) {
                                    *failed = Some(format!("flush_all failed on {addr}: {why}"));
                                }
                            }
                        }
                    }
                }
                if waiting {
                    return Poll::Pending;
                }
                let out = match failed.take() {
                    None => Bytes::from_static(b"OK\r\n"),
                    Some(why) => Bytes::from(format!("SERVER_ERROR {why}\r\n")),
                };
                ctx.metrics.request(*cmd, Outcome::of_reply(&out));
                Poll::Ready(Some(if *noreply { Bytes::new() } else { out }))
            }
        }
    }
}

pub(super) fn flatten(r: Result<Reply, oneshot::error::RecvError>) -> Reply {
    r.unwrap_or_else(|_| Err(BackendError::Closed("backend connection went away".into())))
}

pub(super) fn trim_crlf(b: &[u8]) -> &[u8] {
    b.strip_suffix(b"\r\n").unwrap_or(b)
}

pub(super) fn server_error(ctx: &McContext, server: Option<usize>, e: &BackendError) -> Bytes {
    bump(&ctx.stats.server_errors, 1);
    match server {
        Some(s) => {
            let addr = &ctx.pool.specs[s].address;
            Bytes::from(format!("SERVER_ERROR backend {addr} {e}\r\n"))
        }
        None => Bytes::from(format!("SERVER_ERROR {e}\r\n")),
    }
}

impl MultiGet {
    /// Items in the client's key order, one END. memcached answers a part's keys in the order
    /// they were sent (skipping misses), so one cursor per part pairs items with keys, repeated
    /// keys included.
    pub(super) fn merge(&mut self, ctx: &McContext) -> Bytes {
        let mut items: Vec<Result<Vec<memcache::Item>, String>> =
            Vec::with_capacity(self.parts.len());
        for p in &self.parts {
            items.push(match p.result.as_ref().expect("part complete") {
                Ok(reply) => memcache::split_items(reply)
                    .map_err(|line| String::from_utf8_lossy(trim_crlf(&line)).into_owned()),
                Err(e) => Err(match p.server {
                    Some(s) => format!("backend {} {e}", ctx.pool.specs[s].address),
                    None => e.to_string(),
                }),
            });
        }
        if let Some(Err(why)) = items.first() {
            if items.iter().all(|i| i.is_err()) {
                bump(&ctx.stats.server_errors, 1);
                ctx.metrics.request(self.cmd, Outcome::Error);
                let why = why.strip_prefix("SERVER_ERROR ").unwrap_or(why);
                return Bytes::from(format!("SERVER_ERROR {why}\r\n"));
            }
        }
        let memcache::MergedGet {
            reply,
            hits,
            misses,
            failed,
        } = memcache::merge_items(&self.keys, &self.part_of, &items);
        bump(&ctx.stats.get_hits, hits);
        bump(&ctx.stats.get_misses, misses + failed);
        bump(&ctx.stats.get_failed_keys, failed);
        ctx.metrics.request(self.cmd, Outcome::Ok);
        ctx.metrics.hits.inc_by(hits);
        ctx.metrics.misses.inc_by(misses);
        if failed > 0 {
            ctx.metrics.failed.inc_by(failed);
            ctx.pool.metrics.get_failed_keys.inc_by(failed);
        }
        reply
    }
}
