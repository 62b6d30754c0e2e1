//! Commands that need a backend connection of their own for a while: transactions (MULTI/EXEC,
//! WATCH), blocking commands, and pub/sub. Each pins the client to a dedicated connection
//! (`backend::Dedicated`) on the server its keys (or channels) map to, so nothing shared waits on
//! them and no other client's request is interleaved with them.

use super::*;

/// How often a slot's shard subscriptions may move between two of its messages.
const MAX_SHARD_MOVES: u32 = 8;

impl Conn {
    /// Commands needing a connection of their own (outside MULTI and subscribed mode).
    pub(super) fn dedicated(&mut self, info: &CommandInfo, req: RespRequest) {
        match info.name {
            "multi" => {
                self.multi = Some(Multi {
                    cmds: Vec::new(),
                    server: None,
                    abort: None,
                });
                return self.reply_static(b"+OK\r\n");
            }
            "exec" => return self.reject("ERR EXEC without MULTI"),
            "discard" => return self.reject("ERR DISCARD without MULTI"),
            "unwatch" => {
                self.watch = None;
                return self.reply_static(b"+OK\r\n");
            }
            "subscribe" | "psubscribe" | "ssubscribe" => {
                if self.defer(&req) {
                    return;
                }
                return self.subscribed(info, req);
            }
            "unsubscribe" | "punsubscribe" | "sunsubscribe" => {
                // Not subscribed: redis answers one confirmation per name, count 0.
                return self.unsubscribe_none(info, &req.args);
            }
            _ => {}
        }
        // WATCH and blocking commands: all keys on one server.
        let server = match self.server_of(info, &req.args) {
            Ok(Some(s)) => s,
            Ok(None) => {
                return self.reject(&format!(
                    "ERR {} without keys cannot be routed by kvrouter",
                    info.name.to_uppercase()
                ))
            }
            Err(e) => return self.reject(&e),
        };
        if info.name == "watch" {
            if let Some((w, _)) = &self.watch {
                if *w != server {
                    let msg = self.crossslot("WATCH keys of this client don't");
                    return self.reject(&msg);
                }
            }
            if self.defer(&req) {
                return;
            }
            let spec = match self.spec_of(server) {
                Ok(s) => s,
                Err(e) => return self.reject(&e),
            };
            let timeout = self.ctx.pool.config.timeout;
            if self.watch.is_none() {
                self.watch_moved = Rc::new(std::cell::Cell::new(false));
            }
            let (_, conn) = self
                .watch
                .get_or_insert_with(|| (server, Dedicated::open(spec, timeout)));
            let rx = conn.send(req.raw);
            self.barrier = true;
            if let Some(c) = &self.ctx.cluster {
                // The slot is moving (ASK) or moved (MOVED): this node cannot watch the key,
                // so EXEC will answer nil (the transaction did not run) and the client retries,
                // by then on the new owner.
                let (shared, moved) = (c.shared.clone(), self.watch_moved.clone());
                let task = tokio::task::spawn_local(async move {
                    match flatten(rx.await) {
                        Ok(b) if shared.redirection(&b).is_some() => {
                            moved.set(true);
                            Bytes::from_static(b"+OK\r\n")
                        }
                        Ok(b) => b,
                        Err(e) => error(&format!("ERR backend {e}")),
                    }
                });
                return self.pending.push_back(Pending::Routed(task));
            }
            let rx = rx.into();
            return self.pending.push_back(Pending::Single { rx, server });
        }
        // A blocking command: its own connection, no pool timeout (its timeout argument rules).
        if self.defer(&req) {
            return;
        }
        let spec = match self.spec_of(server) {
            Ok(s) => s,
            Err(e) => return self.reject(&e),
        };
        // Reused while alive and still on the server (cluster: node) the key lives on.
        if !matches!(&self.blocker, Some((s, c)) if *s == server && c.is_alive() && c.spec.address == spec.address)
        {
            self.blocker = Some((server, Dedicated::open(spec, None)));
        }
        let conn = &self.blocker.as_ref().expect("just set").1;
        let rx = conn.send(req.raw.clone());
        self.barrier = true;
        self.blocking = true;
        if self.ctx.cluster.is_some() {
            return self.pending.push_back(Pending::Blocking(Box::new(Blocking {
                rx,
                raw: req.raw,
                server,
                redirects: 0,
                hop: None,
            })));
        }
        self.pending.push_back(Pending::Single {
            rx: rx.into(),
            server,
        });
    }

    /// Inside MULTI: check and queue, or run EXEC / DISCARD.
    pub(super) fn queue(&mut self, info: &CommandInfo, req: RespRequest) {
        match info.name {
            "exec" => return self.exec(req),
            "discard" => {
                self.multi = None;
                self.watch = None; // closing the connection drops the watch on the server
                return self.reply_static(b"+OK\r\n");
            }
            "multi" => return self.reply(error("ERR MULTI calls can not be nested")),
            "watch" => return self.reply(error("ERR WATCH inside MULTI is not allowed")),
            "quit" | "reset" => return self.local(info, req),
            _ => {}
        }
        let allowed = match handling_for(info, &req.args) {
            Handling::Route | Handling::Split => true,
            // Inside a transaction a blocking command does not block (redis runs it at once).
            Handling::Dedicated => info.has_flag(flags::BLOCKING) || info.name.starts_with("xread"),
            Handling::Local => matches!(info.name, "ping" | "echo"),
            _ => false,
        };
        if !allowed {
            return self.reject(&format!(
                "ERR {} inside MULTI is not supported by kvrouter",
                info.name.replace('|', " ").to_uppercase()
            ));
        }
        let server = if matches!(info.name, "ping" | "echo") {
            None
        } else {
            match self.server_of(info, &req.args) {
                Ok(s) => s,
                Err(e) => return self.reject(&e),
            }
        };
        let watched = self.watch.as_ref().map(|(s, _)| *s);
        let m = self.multi.as_mut().expect("in multi");
        if let Some(s) = server {
            match m.server.or(watched) {
                Some(t) if t != s => {
                    m.abort = Some("keys on different servers");
                    bump(&self.ctx.stats.client_errors, 1);
                    let cross = self.crossslot(
                        "Keys in this command and earlier commands of the transaction don't",
                    );
                    return self.reply(error(&cross));
                }
                _ => m.server = Some(s),
            }
        }
        m.cmds.push(req.raw);
        self.reply_static(b"+QUEUED\r\n");
    }

    pub(super) fn exec(&mut self, req: RespRequest) {
        if self.defer(&req) {
            return;
        }
        let m = self.multi.take().expect("in multi");
        let watch = self.watch.take();
        if watch.is_some() && self.watch_moved.get() {
            // A WATCH met a slot on the move: the transaction cannot be watched, so it does
            // not run (nil), as when a watched key changes.
            return self.reply_static(b"*-1\r\n");
        }
        if let Some(why) = m.abort {
            // Nothing was sent; dropping the WATCH connection discards the watch on the server.
            return self.reply(error(&format!(
                "EXECABORT Transaction discarded because of: {why}"
            )));
        }
        let server = m.server.or(watch.as_ref().map(|(s, _)| *s)).unwrap_or(0);
        if let (Some(c), true) = (&self.ctx.cluster, server < slots::SLOTS) {
            // A cluster slot: run it where the slot lives, following MOVED/ASK.
            let task = tokio::task::spawn_local(crate::server::cluster::transaction(
                c.clone(),
                server as u16,
                m.cmds,
                req.raw,
                watch.map(|(_, c)| c),
            ));
            self.barrier = true;
            return self.pending.push_back(Pending::Routed(task));
        }
        let conn = match watch {
            Some((_, c)) => c,
            None => match self.spec_of(server) {
                Ok(spec) => Dedicated::open(spec, self.ctx.pool.config.timeout),
                Err(e) => return self.reject(&e),
            },
        };
        let mut rxs = VecDeque::with_capacity(m.cmds.len() + 2);
        rxs.push_back(conn.send(Bytes::from_static(b"*1\r\n$5\r\nMULTI\r\n")));
        for c in m.cmds {
            rxs.push_back(conn.send(c));
        }
        rxs.push_back(conn.send(req.raw));
        self.barrier = true;
        self.pending.push_back(Pending::Exec {
            rxs,
            first: None,
            last: None,
            server,
            _conn: conn,
        });
    }

    /// Replies to UNSUBSCRIBE/PUNSUBSCRIBE/SUNSUBSCRIBE of a client with no subscriptions.
    pub(super) fn unsubscribe_none(&mut self, info: &CommandInfo, args: &[Bytes]) {
        let mut out = BytesMut::new();
        if args.len() == 1 {
            push_msg(&mut out, info.name, None, 0);
        }
        for a in &args[1..] {
            push_msg(&mut out, info.name, Some(a), 0);
        }
        self.reply(out.freeze());
    }

    /// Subscribed mode: only the subscribe family, PING, QUIT and RESET.
    pub(super) fn subscribed(&mut self, info: &CommandInfo, req: RespRequest) {
        let args = &req.args;
        match info.name {
            "ping" => {
                let mut out = BytesMut::new();
                resp::write_array_len(&mut out, Some(2));
                resp::write_bulk(&mut out, Some(b"pong"));
                resp::write_bulk(&mut out, Some(args.get(1).map_or(&b""[..], |a| a)));
                return self.reply(out.freeze());
            }
            "quit" | "reset" => return self.local(info, req),
            "subscribe" | "psubscribe" | "ssubscribe" | "unsubscribe" | "punsubscribe"
            | "sunsubscribe" => {}
            other => {
                return self.reject(&format!(
                    "ERR Can't execute '{other}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
                ))
            }
        }
        let n = self.ctx.pool.specs.len();
        let cluster = self.ctx.cluster.clone();
        let pool = self.ctx.pool.clone();
        let ps = self.pubsub.get_or_insert_with(|| {
            let (sink, rx) = mpsc::unbounded_channel();
            Box::new(PubSub {
                conns: std::collections::HashMap::new(),
                sink,
                rx,
                channels: Vec::new(),
                patterns: Vec::new(),
                shard: Vec::new(),
                moves: std::collections::HashMap::new(),
                nodes: Vec::new(),
                homes: std::collections::HashMap::new(),
                awaiting: std::collections::HashMap::new(),
                commands: 0,
                closing: false,
            })
        });
        ps.closing = false;
        let name = info.name;
        let pattern = name.starts_with('p');
        let shard = matches!(name, "ssubscribe" | "sunsubscribe");
        let subscribe = !name.contains("unsub");
        let mut names: Vec<Bytes> = args[1..].to_vec();
        if !subscribe && names.is_empty() {
            names = if pattern {
                ps.patterns.clone()
            } else if shard {
                ps.shard.clone()
            } else {
                ps.channels.clone()
            };
        }
        // What to send to each server, and each name's confirmation with the servers it waits
        // for.
        let mut per_server: std::collections::BTreeMap<usize, Vec<Bytes>> = Default::default();
        let mut confirms: Vec<(Bytes, Bytes, Vec<usize>)> = Vec::new();
        let mut failed = None;
        for ch in &names {
            let set = if pattern {
                &mut ps.patterns
            } else if shard {
                &mut ps.shard
            } else {
                &mut ps.channels
            };
            let had = set.iter().position(|c| c == ch);
            let changed = match (subscribe, had) {
                (true, None) => {
                    set.push(ch.clone());
                    true
                }
                (false, Some(i)) => {
                    set.swap_remove(i);
                    true
                }
                _ => false,
            };
            let mut servers = Vec::new();
            if changed {
                if pattern && cluster.is_none() {
                    servers.extend(0..n);
                } else if let Some(c) = cluster.as_ref().filter(|_| !pattern && !shard) {
                    // A classic channel on a cluster: on the node of its slot, where PUBLISH
                    // through the proxy goes, so PUBLISH counts its subscribers (a cluster
                    // delivers the message on every node either way).
                    let home = if subscribe {
                        let owner = c
                            .shared
                            .map()
                            .shard(slots::key_slot(ch))
                            .map(|s| s.primary.clone());
                        let key = match owner {
                            Some(addr) => {
                                let i =
                                    ps.nodes.iter().position(|a| *a == addr).unwrap_or_else(|| {
                                        ps.nodes.push(addr);
                                        ps.nodes.len() - 1
                                    });
                                slots::SLOTS + 1 + i
                            }
                            None => slots::SLOTS,
                        };
                        ps.homes.insert(ch.clone(), key);
                        Some(key)
                    } else {
                        ps.homes.remove(ch)
                    };
                    servers.extend(home);
                } else if cluster.is_some() {
                    servers.push(if shard {
                        slots::key_slot(ch) as usize
                    } else {
                        slots::SLOTS
                    });
                } else {
                    match pool.server_for(ch) {
                        Some(s) => servers.push(s),
                        None => failed = Some(ch.clone()),
                    }
                }
                for &s in &servers {
                    per_server.entry(s).or_default().push(ch.clone());
                }
            }
            let count = if shard { ps.shard.len() } else { ps.count() };
            let mut out = BytesMut::new();
            push_msg(&mut out, name, Some(ch), count);
            confirms.push((out.freeze(), ch.clone(), servers));
        }
        if names.is_empty() {
            let mut out = BytesMut::new();
            let count = if shard { ps.shard.len() } else { ps.count() };
            push_msg(&mut out, name, None, count);
            confirms.push((out.freeze(), Bytes::new(), Vec::new()));
        }
        // The connections to open (cluster: the slot's owner now; it is kept while subscribed).
        let mut specs = std::collections::HashMap::new();
        let mut no_node = false;
        for &server in per_server.keys() {
            let ps = self.pubsub.as_ref().expect("subscribed");
            if ps.conns.contains_key(&server) {
                continue;
            }
            let spec = match (&cluster, server.checked_sub(slots::SLOTS + 1)) {
                (Some(c), Some(i)) => Ok(c.shared.spec(&ps.nodes[i], false)),
                _ => self.spec_of(server),
            };
            match spec {
                Ok(spec) => {
                    specs.insert(server, spec);
                }
                Err(_) => no_node = true,
            }
        }
        let ps = self.pubsub.as_mut().expect("subscribed");
        ps.commands += 1;
        let command = ps.commands;
        let mut sent = std::collections::HashSet::new();
        for (server, chans) in per_server {
            let conn = match ps.conns.entry(server) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => match specs.remove(&server) {
                    Some(spec) => v.insert(Dedicated::open_push(spec, server, ps.sink.clone())),
                    None => continue,
                },
            };
            let mut words: Vec<&[u8]> = vec![name.as_bytes()];
            words.extend(chans.iter().map(|c| c.as_ref()));
            conn.send_raw(encode_request(&words).raw);
            sent.insert(server);
        }
        // Each confirmation goes out once every server it was sent to confirmed it: a client
        // that saw it can PUBLISH and be counted.
        let mut pendings = Vec::with_capacity(confirms.len());
        for (out, ch, servers) in confirms {
            let mut gates = Vec::new();
            for server in servers.into_iter().filter(|s| sent.contains(s)) {
                let (tx, rx) = oneshot::channel();
                ps.awaiting.entry(server).or_default().push_back(Await {
                    kind: name,
                    name: ch.clone(),
                    command,
                    tx,
                });
                gates.push(rx);
            }
            pendings.push(if gates.is_empty() {
                Pending::Ready(out)
            } else {
                Pending::Gated { gates, out }
            });
        }
        if ps.count() == 0 && ps.shard.is_empty() {
            if ps.awaiting.is_empty() {
                self.pubsub = None; // closing the connections ends the subscriptions
            } else {
                ps.closing = true; // closed once the servers confirmed
            }
        }
        for p in pendings {
            self.pending.push_back(p);
        }
        if no_node {
            self.reject(NO_MAP);
        }
        if let Some(ch) = failed {
            self.reject(&format!(
                "ERR {} for channel {}",
                self.ctx.pool.no_server(),
                String::from_utf8_lossy(&ch)
            ));
        }
    }

    /// Something a subscription connection delivered. Messages are forwarded; the servers'
    /// own confirmations release the proxy's (which carry the client's count, not one
    /// server's).
    /// Returns false when the connection failed: the client is told and disconnected, so it
    /// resubscribes instead of silently missing messages.
    pub(super) fn pushed(&mut self, server: usize, reply: Reply) -> bool {
        match reply {
            Ok(frame) => {
                if server < slots::SLOTS && self.shard_moved(server, &frame) {
                    // A confirmation of a resubscription after a move may still open a gate.
                    if let (Some(ps), false) = (self.pubsub.as_mut(), frame.first() == Some(&b'-'))
                    {
                        ps.confirmed(server, &frame);
                    }
                    return true;
                }
                if self
                    .pubsub
                    .as_mut()
                    .is_some_and(|ps| ps.confirmed(server, &frame))
                {
                    return true;
                }
                let kind = push_kind(&frame);
                let message = matches!(kind, Some(b"message" | b"pmessage" | b"smessage"));
                if message || frame.first() == Some(&b'-') {
                    self.reply(frame);
                }
                true
            }
            Err(e) => {
                let addr = self.pubsub.as_ref().and_then(|p| p.conns.get(&server));
                let addr = addr.map_or_else(String::new, |c| c.spec.address.clone());
                let msg = format!(
                    "ERR backend {addr} {e}: subscriptions on that server are lost, resubscribe"
                );
                self.reply(error(&msg));
                self.pending.push_back(Pending::Quit);
                self.pubsub = None;
                false
            }
        }
    }

    /// Cluster shard subscriptions (connections by slot) follow their slot (at most
    /// `MAX_SHARD_MOVES` times between two messages):
    /// - a MOVED answer to SSUBSCRIBE: subscribe on the node named, on a new connection;
    /// - a `sunsubscribe` the client did not ask for (the node lost the slot and dropped its
    ///   channels): subscribe again on the same node, whose MOVED then leads to the new owner.
    ///
    /// True when `frame` was handled here.
    fn shard_moved(&mut self, slot: usize, frame: &Bytes) -> bool {
        let Some(c) = self.ctx.cluster.clone() else {
            return false;
        };
        let Some(ps) = self.pubsub.as_mut() else {
            return false;
        };
        let in_slot = |ch: &Bytes| slots::key_slot(ch) as usize == slot;
        if frame.first() == Some(&b'-') {
            let Some((to, _)) = c.shared.redirection(frame) else {
                return false;
            };
            let moves = ps.moves.entry(slot).or_default();
            *moves += 1;
            if *moves > MAX_SHARD_MOVES {
                return false; // the client gets the redirection and decides
            }
            let chans: Vec<Bytes> = ps.shard.iter().filter(|ch| in_slot(ch)).cloned().collect();
            if chans.is_empty() {
                ps.conns.remove(&slot);
                return true;
            }
            tracing::info!(slot, node = %to, "shard channel subscriptions follow their slot");
            let conn = Dedicated::open_push(c.shared.spec(&to, false), slot, ps.sink.clone());
            let mut words: Vec<&[u8]> = vec![b"ssubscribe"];
            words.extend(chans.iter().map(|ch| ch.as_ref()));
            conn.send_raw(encode_request(&words).raw);
            ps.conns.insert(slot, conn); // the old connection closes
            return true;
        }
        match push_kind(frame) {
            Some(b"sunsubscribe") => {}
            Some(b"smessage") => {
                ps.moves.remove(&slot);
                return false;
            }
            _ => return false,
        }
        let Ok((resp::Frame::Array(Some(parts)), _)) = resp::parse_frame(frame) else {
            return false;
        };
        let Some(resp::Frame::Bulk(Some(ch))) = parts.get(1) else {
            return false;
        };
        if !ps.shard.contains(ch) {
            return false; // the client's own SUNSUBSCRIBE: its confirmation was already sent
        }
        if let Some(conn) = ps.conns.get(&slot) {
            conn.send_raw(encode_request(&[&b"ssubscribe"[..], ch]).raw);
        }
        true
    }
}

impl PubSub {
    /// A server's own (un)subscribe confirmation (or error) opens the gates waiting for it.
    /// True when `frame` was one.
    pub(super) fn confirmed(&mut self, server: usize, frame: &Bytes) -> bool {
        let Some(queue) = self.awaiting.get_mut(&server) else {
            return false;
        };
        if frame.first() == Some(&b'-') {
            // An error answers a whole command: every name of the oldest one on that server.
            if let Some(cmd) = queue.front().map(|a| a.command) {
                queue.retain(|a| a.command != cmd);
            }
            if queue.is_empty() {
                self.awaiting.remove(&server);
            }
            return false; // forwarded to the client
        }
        let Some(kind) = push_kind(frame) else {
            return false;
        };
        if !kind.ends_with(b"subscribe") {
            return false;
        }
        let Ok((resp::Frame::Array(Some(parts)), _)) = resp::parse_frame(frame) else {
            return true;
        };
        let ch = match parts.get(1) {
            Some(resp::Frame::Bulk(Some(ch))) => ch.clone(),
            _ => Bytes::new(),
        };
        // A server confirms in the order it was asked: normally the front.
        if let Some(i) = queue
            .iter()
            .position(|a| a.kind.as_bytes() == kind && a.name == ch)
        {
            if let Some(a) = queue.remove(i) {
                let _ = a.tx.send(());
            }
        }
        if queue.is_empty() {
            self.awaiting.remove(&server);
        }
        true
    }
}
