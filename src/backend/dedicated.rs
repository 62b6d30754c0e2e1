//! Dedicated backend connections: a connection opened for one client and used by nobody else.
//!
//! Redis keeps state per connection that a shared, multiplexed connection cannot hold for one
//! client: a transaction (WATCH, MULTI/EXEC), subscriptions, and a blocked BLPOP, which would
//! stall every client queued behind it. For those the client gets its own connection to the
//! server, opened with the same init commands (AUTH, SELECT) as the shared ones, closed when the
//! handle is dropped (so the server drops the watch, the subscriptions or the blocked call).
//!
//! Unlike the shared connections it never reconnects: server-side state lost with a broken
//! connection cannot be silently rebuilt, so every request after a failure fails. Its failures
//! are not counted in the server's health (a dead server shows up on the shared connections).

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};

use super::connection::{flush, open, BackendError, Reply, ServerSpec, Stream, READ_TURN};
use super::io::Io;
use crate::protocol::resp::ReplyScanner;

/// Where a push-mode connection delivers what the server sends: `(tag, reply)`.
pub type PushSink = mpsc::UnboundedSender<(usize, Reply)>;

enum Cmd {
    /// A request whose reply goes back on the oneshot, in order.
    Request(Bytes, oneshot::Sender<Reply>),
    /// Bytes whose replies (if any) go to the push sink.
    Raw(Bytes),
}

/// The handle of a dedicated connection; dropping it closes the connection.
pub struct Dedicated {
    tx: mpsc::UnboundedSender<Cmd>,
    pub spec: Arc<ServerSpec>,
}

impl Dedicated {
    /// A request/reply connection. `timeout` bounds each request (None: as long as it takes,
    /// for blocking commands whose own timeout argument governs). Connecting and the init
    /// commands are bounded by the pool timeout.
    pub fn open(spec: Arc<ServerSpec>, timeout: Option<Duration>) -> Dedicated {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::task::spawn_local(run(spec.clone(), timeout, rx, None));
        Dedicated { tx, spec }
    }

    /// A push connection (pub/sub): everything the server sends is delivered to `sink` tagged
    /// with `tag`, as it arrives. A failure is delivered once as `Err`, then the task ends.
    pub fn open_push(spec: Arc<ServerSpec>, tag: usize, sink: PushSink) -> Dedicated {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::task::spawn_local(run(spec.clone(), None, rx, Some((tag, sink))));
        Dedicated { tx, spec }
    }

    /// Queue a request; replies come back in request order.
    pub fn send(&self, bytes: Bytes) -> oneshot::Receiver<Reply> {
        let (reply, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(Cmd::Request(_, reply))) =
            self.tx.send(Cmd::Request(bytes, reply))
        {
            let _ = reply.send(Err(BackendError::Closed(
                "dedicated connection stopped".into(),
            )));
        }
        rx
    }

    /// False once the connection failed (or could not be opened): open a new one.
    pub fn is_alive(&self) -> bool {
        !self.tx.is_closed()
    }

    /// Queue bytes whose replies go to the push sink.
    pub fn send_raw(&self, bytes: Bytes) {
        let _ = self.tx.send(Cmd::Raw(bytes));
    }
}

type Push = Option<(usize, PushSink)>;

async fn run(
    spec: Arc<ServerSpec>,
    timeout: Option<Duration>,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    push: Push,
) {
    let result = match open(&spec).await {
        Ok(Stream::Tcp(s)) => serve(&s, timeout, &mut rx, &push).await,
        Ok(Stream::Unix(s)) => serve(&s, timeout, &mut rx, &push).await,
        Err((e, _)) => Err((e, VecDeque::new())),
    };
    let Err((err, inflight)) = result else {
        return; // the handle was dropped
    };
    tracing::debug!(server = %spec.address, error = %err, "dedicated connection failed");
    for reply in inflight {
        let _ = reply.send(Err(err.clone()));
    }
    if let Some((tag, sink)) = &push {
        let _ = sink.send((*tag, Err(err.clone())));
    }
    // Everything already queued fails too; later sends see a closed channel and fail at once.
    rx.close();
    while let Ok(cmd) = rx.try_recv() {
        if let Cmd::Request(_, reply) = cmd {
            let _ = reply.send(Err(err.clone()));
        }
    }
}

type Failed = (BackendError, VecDeque<oneshot::Sender<Reply>>);

async fn serve<S: Io>(
    stream: &S,
    timeout: Option<Duration>,
    rx: &mut mpsc::UnboundedReceiver<Cmd>,
    push: &Push,
) -> Result<(), Failed> {
    let mut inflight: VecDeque<(oneshot::Sender<Reply>, Option<Instant>)> = VecDeque::new();
    let mut wbuf = BytesMut::with_capacity(4096);
    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    let mut scanner = Box::<ReplyScanner>::default();
    let fail = |e: BackendError, inflight: VecDeque<(oneshot::Sender<Reply>, Option<Instant>)>| {
        Err((e, inflight.into_iter().map(|(r, _)| r).collect()))
    };
    loop {
        let interest = if wbuf.is_empty() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        };
        let deadline = inflight.front().and_then(|f| f.1);
        tokio::select! {
            biased;
            cmd = rx.recv() => {
                match cmd {
                    None => return Ok(()),
                    Some(Cmd::Request(bytes, reply)) => {
                        wbuf.extend_from_slice(&bytes);
                        inflight.push_back((reply, timeout.map(|t| Instant::now() + t)));
                    }
                    Some(Cmd::Raw(bytes)) => wbuf.extend_from_slice(&bytes),
                }
                if let Err(e) = flush(stream, &mut wbuf) {
                    return fail(e, inflight);
                }
            }
            ready = stream.ready(interest) => {
                let ready = match ready {
                    Ok(r) => r,
                    Err(e) => return fail(BackendError::Closed(e.to_string()), inflight),
                };
                if ready.is_writable() && !wbuf.is_empty() {
                    if let Err(e) = flush(stream, &mut wbuf) {
                        return fail(e, inflight);
                    }
                }
                let mut more = false;
                if ready.is_readable() {
                    // At most a turn's worth: a fast publisher cannot starve the worker, nor
                    // pile more than that into the push channel before the client takes it.
                    let mut turn = 0;
                    loop {
                        if rbuf.capacity() - rbuf.len() < 4096 {
                            rbuf.reserve(16 * 1024);
                        }
                        match stream.try_read_buf(&mut rbuf) {
                            Ok(0) => {
                                let e = BackendError::Closed("server closed the connection".into());
                                return fail(e, inflight);
                            }
                            Ok(n) => turn += n,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => return fail(BackendError::Closed(e.to_string()), inflight),
                        }
                        if turn >= READ_TURN {
                            more = true;
                            break;
                        }
                    }
                    loop {
                        let n = match scanner.scan(&rbuf) {
                            Ok(Some(n)) => n,
                            Ok(None) => break,
                            Err(e) => return fail(BackendError::Protocol(e.to_string()), inflight),
                        };
                        let frame = rbuf.split_to(n).freeze();
                        if let Some((reply, _)) = inflight.pop_front() {
                            let _ = reply.send(Ok(frame));
                        } else if let Some((tag, sink)) = push {
                            if sink.send((*tag, Ok(frame))).is_err() {
                                return Ok(()); // the client went away
                            }
                        } else {
                            let e = BackendError::Protocol("a reply with no request in flight".into());
                            return fail(e, inflight);
                        }
                    }
                }
                if more {
                    tokio::task::yield_now().await;
                }
            }
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                return fail(BackendError::Timeout(timeout.unwrap_or_default()), inflight);
            }
        }
    }
}
