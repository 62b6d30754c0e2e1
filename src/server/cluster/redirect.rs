//! Following a Redis Cluster's redirections: MOVED (fix the map's slot, retry on the new owner),
//! ASK (`ASKING` then the command on the node named, map untouched), TRYAGAIN and CLUSTERDOWN
//! (back off 50/100/200 ms), within the pool timeout and at most `MAX_REDIRECTS` hops. Plain
//! requests (`retry`, behind `ClusterRx`), transactions (`transaction`, the queued block resent
//! whole) and, through `ClusterShared::redirection`, blocking commands and shard subscriptions.

use super::*;

impl ClusterShared {
    /// Where a MOVED or ASK `reply` sends the command: the node, and whether `ASKING` must
    /// come first. A MOVED fixes the map at once.
    pub fn redirection(self: &Arc<Self>, reply: &[u8]) -> Option<(String, bool)> {
        match redirect(reply)? {
            Redirect::Moved(slot, to) => {
                self.moved(slot, &to);
                Some((to, false))
            }
            Redirect::Ask(to) => Some((to, true)),
            _ => None,
        }
    }
}

pub(super) enum Redirect {
    Moved(u16, String),
    Ask(String),
    Again,
    Down,
}

pub(super) fn redirect(b: &[u8]) -> Option<Redirect> {
    if b.first() != Some(&b'-') {
        return None;
    }
    let line = b.strip_suffix(b"\r\n").unwrap_or(b);
    let text = std::str::from_utf8(line).ok()?;
    let mut words = text[1..].split(' ');
    match words.next()? {
        "MOVED" => {
            let slot = words.next()?.parse().ok()?;
            Some(Redirect::Moved(slot, words.next()?.to_string()))
        }
        "ASK" => {
            words.next()?;
            Some(Redirect::Ask(words.next()?.to_string()))
        }
        "TRYAGAIN" => Some(Redirect::Again),
        "CLUSTERDOWN" => Some(Redirect::Down),
        _ => None,
    }
}

pub(super) async fn retry(w: Rc<ClusterWorker>, call: Call, first: Option<Reply>) -> Bytes {
    let shared = w.shared.clone();
    let deadline = call.started + w.budget;
    let read_from = shared.config.read_from;
    let mut replica = call.read && read_from != ReadFrom::Primary;
    let mut next: Option<(String, bool)> = None;
    let mut pending = first;
    let (mut redirects, mut tries) = (0u32, 0u32);
    let mut addr = {
        let map = shared.map();
        w.target(&map, call.slot, replica, call.client)
            .map(|(a, _)| a.to_string())
            .unwrap_or_default()
    };
    loop {
        let on_replica;
        let reply = match pending.take() {
            Some(r) => {
                on_replica = replica;
                r
            }
            None => {
                let (to, ro, asking) = match next.take() {
                    Some((a, asking)) => (a, false, asking),
                    None => {
                        let chosen = {
                            let map = shared.map();
                            w.target(&map, call.slot, replica, call.client)
                                .map(|(a, ro)| (a.to_string(), ro))
                        };
                        match chosen {
                            Ok((a, ro)) => (a, ro, false),
                            Err(msg) => {
                                shared.refresh();
                                tries += 1;
                                if tries > MAX_TRIES || Instant::now() >= deadline {
                                    return error(&msg);
                                }
                                shared.refreshed_by(deadline).await;
                                backoff(tries, deadline).await;
                                continue;
                            }
                        }
                    }
                };
                addr = to;
                on_replica = ro;
                // ASKING and the command back to back on one connection. The ASKING reply's
                // receiver is kept until the command's reply is in: a request whose receiver
                // is gone is never sent.
                let _asking = asking.then(|| w.send_on(&addr, false, call.client, asking_bytes()));
                let rx = w.send_on(&addr, ro, call.client, call.raw.clone());
                match tokio::time::timeout_at(deadline, rx).await {
                    Ok(r) => r.unwrap_or_else(|_| {
                        Err(BackendError::Closed("backend connection went away".into()))
                    }),
                    Err(_) => {
                        shared.refresh();
                        return w.failed(&addr, &BackendError::Timeout(w.budget));
                    }
                }
            }
        };
        match reply {
            Ok(b) => match redirect(&b) {
                None => return b,
                Some(r) => match follow(&shared, r, &mut redirects, &mut tries, deadline).await {
                    Some(n) => next = n,
                    None => return b,
                },
            },
            Err(e) => {
                shared.refresh();
                if on_replica && read_from == ReadFrom::PreferReplica {
                    replica = false; // the primary answers instead
                    continue;
                }
                // Retry only what cannot have run (never sent) or is safe to run twice.
                let unsent = matches!(
                    e,
                    BackendError::Connect(_) | BackendError::Auth(_) | BackendError::Down
                );
                tries += 1;
                if !(unsent || call.read) || tries > MAX_TRIES {
                    return w.failed(&addr, &e);
                }
                shared.refreshed_by(deadline).await;
                if !backoff(tries, deadline).await {
                    return w.failed(&addr, &e);
                }
            }
        }
    }
}

/// A transaction (MULTI, `cmds`, EXEC; every key in `slot`) on the slot's owner, following
/// redirections: the proxy queued the commands itself, so when the node answers a queued command
/// with MOVED or ASK (it then discards the whole transaction) the block is sent again, whole, to
/// the node named (after `ASKING` for ASK, which lasts through the MULTI block). TRYAGAIN backs
/// off and retries. With WATCH, whose connection holds the watch on the old owner, a
/// redirection makes EXEC answer nil: the transaction did not run, as redis itself answers when
/// the migration deleted the watched key.
pub async fn transaction(
    w: Rc<ClusterWorker>,
    slot: u16,
    cmds: Vec<Bytes>,
    exec: Bytes,
    watch: Option<Dedicated>,
) -> Bytes {
    let shared = w.shared.clone();
    let deadline = Instant::now() + w.budget;
    let watched = watch.is_some();
    let mut conn = watch;
    let mut next: Option<(String, bool)> = None;
    let (mut redirects, mut tries) = (0u32, 0u32);
    loop {
        let (addr, asking) = match next.take() {
            Some(n) => n,
            None => match shared.map().shard(slot) {
                Some(s) => (s.primary.clone(), false),
                None => {
                    shared.refresh();
                    tries += 1;
                    if tries > MAX_TRIES || !backoff(tries, deadline).await {
                        return error(&format!("CLUSTERDOWN Hash slot {slot} not served"));
                    }
                    continue;
                }
            },
        };
        let c = match conn.take() {
            Some(c) => c,
            None => Dedicated::open(shared.spec(&addr, false), shared.template.timeout),
        };
        let mut rxs = Vec::with_capacity(cmds.len() + 3);
        if asking {
            rxs.push(c.send(asking_bytes()));
        }
        rxs.push(c.send(Bytes::from_static(b"*1\r\n$5\r\nMULTI\r\n")));
        rxs.extend(cmds.iter().map(|cmd| c.send(cmd.clone())));
        rxs.push(c.send(exec.clone()));
        let mut replies = Vec::with_capacity(rxs.len());
        for rx in rxs {
            let r = match tokio::time::timeout_at(deadline, rx).await {
                Ok(r) => r.unwrap_or_else(|_| {
                    Err(BackendError::Closed("backend connection went away".into()))
                }),
                Err(_) => Err(BackendError::Timeout(w.budget)),
            };
            match r {
                Ok(b) => replies.push(b),
                Err(e) => {
                    shared.refresh();
                    return w.failed(&addr, &e);
                }
            }
        }
        let replies = &replies[usize::from(asking)..];
        if replies[0].as_ref() != b"+OK\r\n" {
            return replies[0].clone(); // MULTI itself failed: that is the answer
        }
        let exec_reply = replies[replies.len() - 1].clone();
        let queued = &replies[1..replies.len() - 1];
        match queued.iter().find_map(|b| redirect(b)) {
            None => return exec_reply,
            Some(_) if watched => return Bytes::from_static(b"*-1\r\n"),
            Some(r) => match follow(&shared, r, &mut redirects, &mut tries, deadline).await {
                Some(n) => next = n,
                None => return exec_reply,
            },
        }
    }
}

/// Act on a redirection. Some(where to try next: an address and whether to send `ASKING`
/// first, or None for the slot's owner by the map); None: give up and return the reply.
pub(super) async fn follow(
    shared: &Arc<ClusterShared>,
    r: Redirect,
    redirects: &mut u32,
    tries: &mut u32,
    deadline: Instant,
) -> Option<Option<(String, bool)>> {
    match r {
        Redirect::Moved(slot, to) => {
            *redirects += 1;
            if *redirects > MAX_REDIRECTS {
                return None;
            }
            shared.moved(slot, &to);
            Some(Some((to, false)))
        }
        Redirect::Ask(to) => {
            *redirects += 1;
            (*redirects <= MAX_REDIRECTS).then_some(Some((to, true)))
        }
        Redirect::Again | Redirect::Down => {
            *tries += 1;
            if matches!(r, Redirect::Down) {
                shared.refresh();
            }
            if *tries > MAX_TRIES || !backoff(*tries, deadline).await {
                return None;
            }
            Some(None)
        }
    }
}

pub fn asking_bytes() -> Bytes {
    Bytes::from_static(b"*1\r\n$6\r\nASKING\r\n")
}

/// Sleep 50, 100, 200 ms (by try) unless that passes `deadline`: false when it would.
pub(super) async fn backoff(tries: u32, deadline: Instant) -> bool {
    let wait = Duration::from_millis(50 << (tries.clamp(1, 3) - 1));
    let until = Instant::now() + wait;
    if until >= deadline {
        return false;
    }
    tokio::time::sleep_until(until).await;
    true
}

/// A cluster request's reply on its way. Transport errors come back as `-ERR backend ...`
/// replies (a cluster pool has no fixed server index to name).
pub enum ClusterRx {
    Direct {
        rx: oneshot::Receiver<Reply>,
        call: Call,
        worker: Rc<ClusterWorker>,
    },
    Fixed {
        rx: oneshot::Receiver<Reply>,
        addr: String,
        stats: Arc<Stats>,
    },
    Slow(oneshot::Receiver<Bytes>),
    Done,
}

impl ClusterRx {
    pub(super) fn slow(worker: Rc<ClusterWorker>, call: Call, first: Option<Reply>) -> ClusterRx {
        let (tx, rx) = oneshot::channel();
        tokio::task::spawn_local(async move {
            let _ = tx.send(retry(worker, call, first).await);
        });
        ClusterRx::Slow(rx)
    }

    /// An answer known now (an error decided before sending).
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Bytes> {
        loop {
            match self {
                ClusterRx::Direct { rx, .. } => {
                    let r = match Pin::new(rx).poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(r) => r.unwrap_or_else(|_| {
                            Err(BackendError::Closed("backend connection went away".into()))
                        }),
                    };
                    if let Ok(b) = &r {
                        if b.first() != Some(&b'-') || redirect(b).is_none() {
                            return Poll::Ready(r.expect("ok"));
                        }
                    }
                    let ClusterRx::Direct { call, worker, .. } =
                        std::mem::replace(self, ClusterRx::Done)
                    else {
                        unreachable!()
                    };
                    *self = ClusterRx::slow(worker, call, Some(r));
                }
                ClusterRx::Fixed { rx, addr, stats } => {
                    return Pin::new(rx).poll(cx).map(|r| match r {
                        Ok(Ok(b)) => b,
                        Ok(Err(e)) => {
                            bump(&stats.server_errors, 1);
                            error(&format!("ERR backend {addr} {e}"))
                        }
                        Err(_) => error(&format!("ERR backend {addr} connection went away")),
                    })
                }
                ClusterRx::Slow(rx) => {
                    return Pin::new(rx)
                        .poll(cx)
                        .map(|r| r.unwrap_or_else(|_| error("ERR kvrouter cluster retry stopped")))
                }
                ClusterRx::Done => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirections_are_recognised() {
        assert!(matches!(
            redirect(b"-MOVED 3999 127.0.0.1:6381\r\n"),
            Some(Redirect::Moved(3999, a)) if a == "127.0.0.1:6381"
        ));
        assert!(matches!(
            redirect(b"-ASK 3999 127.0.0.1:6381\r\n"),
            Some(Redirect::Ask(a)) if a == "127.0.0.1:6381"
        ));
        assert!(matches!(
            redirect(b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n"),
            Some(Redirect::Again)
        ));
        assert!(matches!(
            redirect(b"-CLUSTERDOWN The cluster is down\r\n"),
            Some(Redirect::Down)
        ));
        assert!(redirect(b"-ERR wrong type\r\n").is_none());
        assert!(redirect(b"+OK\r\n").is_none());
    }
}
