//! The client connection loop both protocols share: read, parse and dispatch, write the replies
//! back in request order, and keep what one client can cost bounded.
//!
//! A protocol plugs in as a [`Session`]: its parser and dispatch, its queue of replies on their
//! way (polled front first), its extra event sources (redis pub/sub pushes) and its pauses
//! (redis barrier commands). The loop owns the socket, the buffers and the limits:
//!
//! - **Output, in bytes.** What kvrouter holds for a client (replies waiting to be written, the
//!   pushes of its subscriptions) may not pass the listener's `max_client_output`: a client over
//!   it is disconnected, as redis-server does with `client-output-buffer-limit`. Before that, a
//!   client that pipelines faster than it reads is throttled: no more requests are read once a
//!   quarter of the limit is owed, counting each reply still in flight at the size of recent
//!   replies (a connection starts assuming large ones), so a client pipelining gets of big values
//!   keeps few of them in flight and the backend connections it shares with other clients hold
//!   little of its data in front of theirs.
//! - **Time.** `client_idle_timeout` closes a client with nothing in flight; a request must
//!   arrive whole within `client_request_timeout` of its first byte (or of the previous request),
//!   so a client trickling bytes cannot hold a connection forever.
//! - **Idle cost.** Read and write buffers are taken when there is something to read or write and
//!   given back when empty, to a small per-worker free list, so an idle connection holds no
//!   buffer and a busy one allocates none per request.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::Interest;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant, Sleep};

use super::metrics::{ListenerMetrics, CLOSE_IDLE, CLOSE_OUTPUT, CLOSE_REQUEST_TIMEOUT};
use crate::backend::io::{write_all, write_some, Io};
use crate::config::ListenerConfig;

/// While a barrier command waits, input is read but not parsed (so a client that goes away is
/// noticed); at most this much is buffered meanwhile.
const MAX_UNPARSED: usize = 1 << 20;
/// The size buffers are taken at, and the largest one the free list keeps.
const BUF: usize = 16 * 1024;
const BIG: usize = 64 * 1024;
/// Buffers a worker keeps for reuse.
const SPARE_BUFFERS: usize = 64;
/// What a new connection assumes a reply weighs until it has seen some: large, so a client
/// whose first pipeline asks for big values sends few of them before their size is known.
const FIRST_ESTIMATE: usize = 256 * 1024;

/// A listener's per-client limits.
#[derive(Clone, Copy, Debug)]
pub struct ClientLimits {
    pub idle_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
    pub max_output: usize,
}

impl ClientLimits {
    pub fn of(l: &ListenerConfig) -> ClientLimits {
        ClientLimits {
            idle_timeout: l.client_idle_timeout,
            request_timeout: l.client_request_timeout,
            max_output: l.max_client_output,
        }
    }
}

/// What a protocol's connection gives the loop.
pub(super) trait Session {
    /// Most replies one client may have outstanding.
    const MAX_PENDING: usize;
    fn limits(&self) -> &ClientLimits;
    fn metrics(&self) -> &ListenerMetrics;
    /// Requests waiting for their reply.
    fn queued(&self) -> usize;
    /// Poll the front of a non-empty queue: `Some(reply)` (taken off the queue), or `None`:
    /// close the connection (the queue is dropped).
    fn poll_front(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>>;
    /// Other event sources (pushes): Ready once something was queued.
    fn poll_events(&mut self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
    /// Input arrived (or may be parsed again): parse and dispatch at most `max` requests from
    /// `rbuf`; how many were.
    fn parse(&mut self, rbuf: &mut BytesMut, max: usize) -> usize;
    /// False once nothing more is to be parsed (quit, a fatal protocol error).
    fn parsing(&self) -> bool;
    /// A request is half read beyond what `rbuf` holds (memcached: a refused value skipped).
    fn mid_request(&self) -> bool {
        false
    }
    /// Parsing waits for the queue to drain (a redis barrier command).
    fn paused(&self) -> bool {
        false
    }
    /// The queue drained: end a pause; true when one ended (input may be parsed again).
    fn resume(&mut self) -> bool {
        false
    }
    /// The front request waits only for this client (a blocked BLPOP): its leaving cancels it.
    fn blocked(&self) -> bool {
        false
    }
    /// Subscribed: pushes may arrive at any time; never idle.
    fn subscribed(&self) -> bool {
        false
    }
}

thread_local! {
    /// This worker's spare buffers.
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

fn take_buf() -> BytesMut {
    SPARE
        .with(|s| s.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(BUF))
}

fn give_buf(b: BytesMut) {
    SPARE.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < SPARE_BUFFERS {
            s.push(b);
        }
    });
}

/// The loop's own state.
struct Client {
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// A buffer grew past `BIG`: free it instead of keeping it as a spare.
    rbig: bool,
    wbig: bool,
    /// False after EOF or shutdown.
    reading: bool,
    /// The last parse stopped at its limit: complete requests may wait in `rbuf`.
    unparsed: bool,
    /// When the request now half read started (or the one before it was completed).
    partial_since: Option<Instant>,
    /// Bytes a reply is expected to weigh (recent replies, the largest counting most).
    estimate: usize,
}

#[derive(Clone, Copy)]
enum Closed {
    Idle,
    RequestTimeout,
}

/// Serve one client until it quits, closes, breaks the protocol, goes over a limit, or the proxy
/// shuts down.
pub(super) async fn run<C: Session, S: Io>(
    conn: &mut C,
    stream: &S,
    shutdown: &mut watch::Receiver<bool>,
    client_id: usize,
) -> io::Result<()> {
    if *shutdown.borrow() {
        return Ok(());
    }
    // One registration for the connection's life, not one per loop turn.
    let mut stopping = std::pin::pin!(shutdown.changed());
    // Made on first use and reset after: a connection that never needs a timer carries none.
    let mut sleep: Option<std::pin::Pin<Box<Sleep>>> = None;
    let mut c = Client {
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        rbig: false,
        wbig: false,
        reading: true,
        unparsed: false,
        partial_since: None,
        estimate: FIRST_ESTIMATE,
    };
    loop {
        let limits = *conn.limits();
        // Move every completed reply at the front into the output buffer.
        let mut closing = false;
        {
            let mut cx = Context::from_waker(Waker::noop());
            while conn.queued() > 0 && c.wbuf.len() <= limits.max_output {
                match conn.poll_front(&mut cx) {
                    Poll::Ready(Some(b)) => c.out(&b),
                    Poll::Ready(None) => {
                        closing = true;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }
        if c.wbuf.len() > limits.max_output {
            tracing::info!(
                client = client_id,
                bytes = c.wbuf.len(),
                "closing a client over max_client_output"
            );
            conn.metrics().closed[CLOSE_OUTPUT].inc();
            return Ok(());
        }
        if !closing && conn.queued() == 0 && conn.resume() {
            c.unparsed = true; // the pause is over: carry on with the input
        }
        let room = c.room(conn, &limits);
        if c.unparsed && room > 0 && !closing && conn.parsing() && !conn.paused() {
            c.parse(conn, room);
            continue;
        }
        if !c.wbuf.is_empty() {
            write_some(stream, &mut c.wbuf)?;
        }
        let open = c.reading && conn.parsing();
        if closing || (!open && conn.queued() == 0 && !conn.paused()) {
            return write_all(stream, &mut c.wbuf).await;
        }
        let paused = conn.paused();
        let can_read = open && room > 0 && !(paused && c.rbuf.len() >= MAX_UNPARSED);
        let interest = match (can_read, !c.wbuf.is_empty()) {
            (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
            (true, false) => Some(Interest::READABLE),
            (false, true) => Some(Interest::WRITABLE),
            (false, false) => None,
        };
        // The earliest timer: idle (nothing in flight) or a request arriving too slowly.
        let idle = limits
            .idle_timeout
            .filter(|_| conn.queued() == 0 && c.wbuf.is_empty() && !conn.subscribed());
        let slow = match (limits.request_timeout, c.partial_since) {
            (Some(t), Some(since)) if can_read && !paused => Some(since + t),
            _ => None,
        };
        let timer = match (idle, slow) {
            (None, None) => None,
            (Some(t), None) => Some((Instant::now() + t, Closed::Idle)),
            (None, Some(at)) => Some((at, Closed::RequestTimeout)),
            (Some(t), Some(at)) => Some(match Instant::now() + t {
                idle_at if idle_at < at => (idle_at, Closed::Idle),
                _ => (at, Closed::RequestTimeout),
            }),
        };
        if let Some((at, _)) = timer {
            match sleep.as_mut() {
                Some(s) => s.as_mut().reset(at),
                None => sleep = Some(Box::pin(sleep_until(at))),
            }
        }
        let waiting = conn.queued() > 0 || conn.subscribed();
        c.release();
        tokio::select! {
            biased;
            ready = async { stream.ready(interest.expect("guarded")).await }, if interest.is_some() => {
                let ready = ready?;
                if ready.is_readable() && can_read {
                    match c.read(stream)? {
                        None => {}
                        Some(0) => {
                            c.reading = false;
                            if conn.blocked() {
                                return Ok(()); // the client left while blocked: cancel
                            }
                        }
                        Some(_) => c.parse(conn, room),
                    }
                }
            }
            done = poll_fn(|cx| {
                if conn.queued() > 0 {
                    if let Poll::Ready(r) = conn.poll_front(cx) {
                        return Poll::Ready(Some(r));
                    }
                }
                conn.poll_events(cx).map(|()| None)
            }), if waiting => {
                match done {
                    Some(Some(b)) => c.out(&b),
                    Some(None) => return write_all(stream, &mut c.wbuf).await,
                    None => {} // pushes were queued
                }
            }
            _ = &mut stopping, if c.reading => {
                c.reading = false;
                if conn.blocked() || conn.subscribed() {
                    return Ok(());
                }
            }
            _ = async { sleep.as_mut().expect("guarded").await }, if timer.is_some() => {
                let (metric, what) = match timer.expect("guarded").1 {
                    Closed::Idle => (CLOSE_IDLE, "closing an idle client"),
                    Closed::RequestTimeout => (CLOSE_REQUEST_TIMEOUT, "closing a client whose request did not arrive within client_request_timeout"),
                };
                tracing::debug!(client = client_id, "{what}");
                conn.metrics().closed[metric].inc();
                return Ok(());
            }
            else => return Ok(()),
        }
    }
}

impl Client {
    /// Queue a reply for writing.
    #[inline]
    fn out(&mut self, b: &[u8]) {
        if self.wbuf.capacity() == 0 && b.len() <= BUF {
            self.wbuf = take_buf();
        }
        self.wbuf.extend_from_slice(b);
        self.wbig |= self.wbuf.len() > BIG;
        let n = b.len();
        self.estimate = n.max(self.estimate - self.estimate / 8 + n / 8);
    }

    /// How many more requests may be dispatched now: the queue's limit, and the output budget
    /// (a quarter of `max_output`) less what is owed. One is always allowed into an empty queue.
    #[inline]
    fn room<C: Session>(&self, conn: &C, limits: &ClientLimits) -> usize {
        let queued = conn.queued();
        let owed = self.wbuf.len() + queued.saturating_mul(self.estimate);
        let by_bytes = (limits.max_output / 4).saturating_sub(owed) / self.estimate.max(1);
        let room = by_bytes.min(C::MAX_PENDING.saturating_sub(queued));
        if queued == 0 && self.wbuf.is_empty() {
            room.max(1)
        } else {
            room
        }
    }

    /// Read what arrived: `Some(0)` at end of input, `None` when nothing was there.
    fn read<S: Io>(&mut self, stream: &S) -> io::Result<Option<usize>> {
        if self.rbuf.capacity() == 0 {
            self.rbuf = take_buf();
        }
        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
            self.rbuf.reserve(BUF);
        }
        match stream.try_read_drain(&mut self.rbuf) {
            Ok(n) => {
                self.rbig |= self.rbuf.len() > BIG;
                Ok(Some(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn parse<C: Session>(&mut self, conn: &mut C, max: usize) {
        let n = conn.parse(&mut self.rbuf, max);
        self.unparsed = n >= max;
        if self.rbuf.is_empty() && !conn.mid_request() {
            self.partial_since = None;
        } else if n > 0 || self.partial_since.is_none() {
            self.partial_since = Some(Instant::now());
        }
    }

    /// Give back empty buffers before waiting: an idle connection holds none.
    #[inline]
    fn release(&mut self) {
        if self.rbuf.is_empty() {
            let b = std::mem::take(&mut self.rbuf);
            if !std::mem::take(&mut self.rbig) && b.capacity() > 0 {
                give_buf(b);
            }
        }
        if self.wbuf.is_empty() {
            let b = std::mem::take(&mut self.wbuf);
            if !std::mem::take(&mut self.wbig) && b.capacity() > 0 {
                give_buf(b);
            }
        }
    }
}
