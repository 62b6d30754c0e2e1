//! Replies on their way to a Redis client, one `Pending` per command in request order: a
//! reply from one backend connection (`Rx`), parts on several servers merged when all are in,
//! a SCAN step, a transaction block, a blocking command that follows cluster redirections, or a
//! routed task. `Pending::poll` yields the bytes the client gets, errors included.
//!
//! The queue (`Queue`) tags each reply with the request it answers, so the request is counted
//! (`kvrouter_requests_total`) when its reply is complete, whichever way it went.

use super::*;
use crate::server::metrics::Outcome;

/// A `Queue` tag meaning "count nothing".
const UNCOUNTED: usize = usize::MAX;

/// The replies in flight, in request order. A reply pushed right after `count_next(cmd)` counts
/// one request of command index `cmd`; any other reply (a second reply of the same request, a
/// pub/sub message) counts nothing.
pub(super) struct Queue {
    q: VecDeque<Counted>,
    next: usize,
}

impl Default for Queue {
    fn default() -> Queue {
        Queue {
            q: VecDeque::new(),
            next: UNCOUNTED,
        }
    }
}

impl Queue {
    /// The next reply pushed answers a request of command index `cmd`.
    pub(super) fn count_next(&mut self, cmd: usize) {
        self.next = cmd;
    }

    /// The request being handled pushed no reply (yet): count nothing for it.
    pub(super) fn count_none(&mut self) {
        self.next = UNCOUNTED;
    }

    pub(super) fn push_back(&mut self, p: Pending) {
        let cmd = std::mem::replace(&mut self.next, UNCOUNTED);
        self.q.push_back(Counted { cmd, p });
    }

    pub(super) fn front_mut(&mut self) -> Option<&mut Counted> {
        self.q.front_mut()
    }

    pub(super) fn pop_front(&mut self) -> Option<Counted> {
        self.q.pop_front()
    }

    pub(super) fn clear(&mut self) {
        self.q.clear();
    }

    pub(super) fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.q.len()
    }
}

/// A reply and the command index its request counts under (`UNCOUNTED`: none).
pub(super) struct Counted {
    cmd: usize,
    p: Pending,
}

impl Counted {
    /// `Pending::poll`, counting the request by the reply it completes with.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>, ctx: &RedisContext) -> Poll<Option<Bytes>> {
        let done = self.p.poll(cx, ctx);
        if let Poll::Ready(Some(reply)) = &done {
            if self.cmd != UNCOUNTED {
                ctx.metrics
                    .request(self.cmd, Outcome::of_redis_reply(reply));
            }
        }
        done
    }
}

/// One command's reply, in the order the client sent it.
pub(super) enum Pending {
    Ready(Bytes),
    /// A reply passed through from one server.
    Single {
        rx: Rx,
        server: usize,
    },
    /// Parts on several servers, merged when all are in.
    Merged(Box<Merged>),
    /// One step of a SCAN walk: the server's cursor is rewritten.
    Scan {
        rx: Rx,
        server: usize,
        n: usize,
    },
    /// MULTI, the queued commands and EXEC on a dedicated connection; the EXEC reply is the
    /// client's (the connection is closed when this completes).
    Exec {
        rxs: VecDeque<oneshot::Receiver<Reply>>,
        first: Option<Bytes>,
        last: Option<Bytes>,
        server: usize,
        _conn: Dedicated,
    },
    /// A command sent through the route tree (`leaf`): the task yields the reply.
    Routed(tokio::task::JoinHandle<Bytes>),
    /// A blocking command on a cluster pool: a MOVED/ASK reply (it did not run) sends it again
    /// to the node named, on a connection this pending owns, so a client that leaves still
    /// cancels it by closing that connection.
    Blocking(Box<Blocking>),
    /// A (un)subscribe confirmation, sent once every server it went to has confirmed (a gate
    /// whose sender is gone opens too: the connection failed, and its error follows).
    Gated {
        gates: Vec<oneshot::Receiver<()>>,
        out: Bytes,
    },
    /// Close after the replies before it.
    Quit,
}

pub(super) struct Blocking {
    pub(super) rx: oneshot::Receiver<Reply>,
    pub(super) raw: Bytes,
    pub(super) server: usize,
    pub(super) redirects: u32,
    /// The connection to the node a redirection named, and the ASKING reply's receiver (a
    /// request nobody waits for is not sent).
    pub(super) hop: Option<(Dedicated, Option<oneshot::Receiver<Reply>>)>,
}

pub(super) struct Merged {
    pub(super) how: Merge,
    pub(super) parts: Vec<Part>,
    pub(super) part_of: Vec<usize>,
}

pub(super) struct Part {
    pub(super) server: usize,
    pub(super) rx: Option<Rx>,
    pub(super) result: Option<Reply>,
}

/// A reply on its way: from one backend connection, or a cluster request that follows
/// redirections (whose transport errors arrive already turned into `-ERR` replies).
pub(super) enum Rx {
    Plain(oneshot::Receiver<Reply>),
    Cluster(ClusterRx),
    /// Through the route tree (hot-key copies of a tree listener): errors arrive as replies.
    Routed(tokio::task::JoinHandle<Bytes>),
}

impl From<oneshot::Receiver<Reply>> for Rx {
    fn from(rx: oneshot::Receiver<Reply>) -> Rx {
        Rx::Plain(rx)
    }
}

impl Rx {
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Reply> {
        match self {
            Rx::Plain(rx) => Pin::new(rx).poll(cx).map(flatten),
            Rx::Cluster(c) => c.poll(cx).map(Ok),
            Rx::Routed(t) => Pin::new(t)
                .poll(cx)
                .map(|r| r.map_err(|e| BackendError::Closed(format!("routing task failed: {e}")))),
        }
    }
}

pub(super) fn flatten(r: Result<Reply, oneshot::error::RecvError>) -> Reply {
    r.unwrap_or_else(|_| Err(BackendError::Closed("backend connection went away".into())))
}

pub(super) fn backend_error(ctx: &RedisContext, server: usize, e: &BackendError) -> Bytes {
    bump(&ctx.stats.server_errors, 1);
    let addr = server_address(ctx, server);
    error(&format!("ERR backend {addr} {e}"))
}

/// The address of `server` for messages (cluster pools: the current owner of that slot).
pub(super) fn server_address(ctx: &RedisContext, server: usize) -> String {
    match &ctx.cluster {
        Some(c) => c
            .shared
            .map()
            .shard(server.min(u16::MAX as usize) as u16)
            .map_or_else(|| "(cluster)".to_string(), |s| s.primary.clone()),
        None => ctx.pool.specs[server].address.clone(),
    }
}

impl Pending {
    /// The reply once complete; `None` means close the connection.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>, ctx: &RedisContext) -> Poll<Option<Bytes>> {
        match self {
            Pending::Ready(b) => Poll::Ready(Some(std::mem::take(b))),
            Pending::Quit => Poll::Ready(None),
            Pending::Gated { gates, out } => {
                while let Some(g) = gates.last_mut() {
                    if Pin::new(g).poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    gates.pop();
                }
                Poll::Ready(Some(std::mem::take(out)))
            }
            Pending::Routed(task) => Pin::new(task).poll(cx).map(|r| {
                Some(r.unwrap_or_else(|e| error(&format!("ERR kvrouter routing task failed: {e}"))))
            }),
            Pending::Single { rx, server } => match rx.poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(r) => Poll::Ready(Some(match r {
                    Ok(b) => b,
                    Err(e) => backend_error(ctx, *server, &e),
                })),
            },
            Pending::Scan { rx, server, n } => match rx.poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(r) => Poll::Ready(Some(match r {
                    Ok(b) => merge::scan_reply(&b, *server, *n),
                    Err(e) => backend_error(ctx, *server, &e),
                })),
            },
            Pending::Merged(m) => {
                let mut waiting = false;
                for p in m.parts.iter_mut() {
                    if let Some(rx) = p.rx.as_mut() {
                        match rx.poll(cx) {
                            Poll::Pending => waiting = true,
                            Poll::Ready(r) => {
                                p.result = Some(r);
                                p.rx = None;
                            }
                        }
                    }
                }
                if waiting {
                    return Poll::Pending;
                }
                let mut replies = Vec::with_capacity(m.parts.len());
                for p in &m.parts {
                    match p.result.as_ref().expect("part complete") {
                        Ok(b) => replies.push(b.clone()),
                        Err(e) => return Poll::Ready(Some(backend_error(ctx, p.server, e))),
                    }
                }
                Poll::Ready(Some(merge::merge(m.how, &replies, &m.part_of)))
            }
            Pending::Blocking(b) => loop {
                let r = match Pin::new(&mut b.rx).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => flatten(r),
                };
                if let (Ok(reply), Some(c)) = (&r, &ctx.cluster) {
                    if b.redirects < crate::server::cluster::MAX_REDIRECTS {
                        if let Some((to, asking)) = c.shared.redirection(reply) {
                            b.redirects += 1;
                            let conn = Dedicated::open(c.shared.spec(&to, false), None);
                            let ask =
                                asking.then(|| conn.send(crate::server::cluster::asking_bytes()));
                            b.rx = conn.send(b.raw.clone());
                            b.hop = Some((conn, ask));
                            continue;
                        }
                    }
                }
                return Poll::Ready(Some(match r {
                    Ok(reply) => reply,
                    Err(e) => backend_error(ctx, b.server, &e),
                }));
            },
            Pending::Exec {
                rxs,
                first,
                last,
                server,
                _conn: _,
            } => {
                while let Some(rx) = rxs.front_mut() {
                    let r = match Pin::new(rx).poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(r) => flatten(r),
                    };
                    rxs.pop_front();
                    match r {
                        Err(e) => {
                            rxs.clear();
                            return Poll::Ready(Some(backend_error(ctx, *server, &e)));
                        }
                        Ok(b) if first.is_none() => *first = Some(b),
                        Ok(b) => *last = Some(b),
                    }
                }
                let first = first.take().unwrap_or_default();
                Poll::Ready(Some(if first.as_ref() != b"+OK\r\n" {
                    first // MULTI itself failed (e.g. NOAUTH): that is the answer
                } else {
                    last.take().unwrap_or_default()
                }))
            }
        }
    }
}
