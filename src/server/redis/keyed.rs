//! Commands routed by their keys on a Redis client connection: one server (route), split per
//! server and merged (MGET, MSET, DEL, ...), or sent to every server (fan-out: DBSIZE, SCAN,
//! SCRIPT, ...). A "server" is a server index of the pool, or on a cluster pool a slot whose
//! owner `ClusterWorker` finds and follows.

use super::*;
use crate::routing::split::Split;

impl Conn {
    /// The one server all keys of the command map to (None: the command has no key).
    pub(super) fn server_of(
        &self,
        info: &CommandInfo,
        args: &[Bytes],
    ) -> Result<Option<usize>, String> {
        let keys = key_indices(info, args).map_err(|e| format!("ERR {e}"))?;
        let mut server = None;
        for k in keys {
            if !self.ctx.direct {
                super::leaf::check_home(&self.ctx.routing, &self.ctx.pool, info, &args[k])?;
            }
            let s = self
                .place(&args[k])
                .ok_or_else(|| format!("ERR {}", self.ctx.pool.no_server()))?;
            match server {
                None => server = Some(s),
                Some(x) if x != s => return Err(self.crossslot("Keys in request don't")),
                _ => {}
            }
        }
        Ok(server)
    }

    pub(super) fn crossslot(&self, what: &str) -> String {
        if self.ctx.cluster.is_some() {
            return format!("CROSSSLOT {what} hash to the same slot");
        }
        let how = if self.ctx.pool.config.hash_tag.is_some() {
            "use hash tags {...} to force them together"
        } else {
            "set the pool's hash_tag, e.g. \"{}\", and use hash tags {...} to force them together"
        };
        format!("CROSSSLOT {what} hash to the same server ({how})")
    }

    pub(super) fn route(&mut self, info: &CommandInfo, req: RespRequest) {
        if let Some(p) = self.hot_get(info, &req) {
            return self.pending.push_back(p);
        }
        match self.server_of(info, &req.args) {
            Ok(Some(server)) => {
                let hot_keys = self.hot_written_keys(info, &req);
                let rx = self.send(server, req.raw, info.is_readonly());
                let pending = match hot_keys {
                    Some(keys) => self.hot_write(keys, server, rx),
                    None => Pending::Single { rx, server },
                };
                self.pending.push_back(pending);
            }
            Ok(None) => self.reject(&format!(
                "ERR {} without keys cannot be routed by kvrouter: there is no key to pick a server",
                info.name.to_uppercase()
            )),
            Err(e) => self.reject(&e),
        }
    }

    /// MGET, MSET, DEL, UNLINK, EXISTS, TOUCH: one request per server with its keys.
    pub(super) fn split(&mut self, info: &CommandInfo, req: RespRequest) {
        let args = &req.args;
        let keys = match key_indices(info, args) {
            Ok(k) => k,
            Err(e) => return self.reject(&format!("ERR {e}")),
        };
        let hot_keys = self.hot_written_keys(info, &req);
        let Some(Split { servers, part_of }) =
            Split::by_server(keys.iter().map(|&k| &args[k][..]), |key| self.place(key))
        else {
            let msg = format!("ERR {}", self.ctx.pool.no_server());
            return self.reject(&msg);
        };
        let part_args = split_args(info, args, &keys, servers.len(), &part_of);
        let read = info.is_readonly();
        if servers.len() == 1 {
            let server = servers[0];
            let rx = self.send(server, req.raw, read);
            return self.pending.push_back(Pending::Single { rx, server });
        }
        let how = rc::merge(info).unwrap_or(Merge::Sum);
        let parts = servers
            .iter()
            .zip(&part_args)
            .map(|(&server, a)| Part {
                server,
                rx: Some(self.send(server, encode_request(a).raw, read)),
                result: None,
            })
            .collect();
        let merged = Pending::Merged(Box::new(Merged {
            how,
            parts,
            part_of,
        }));
        let pending = match hot_keys {
            None => merged,
            // MSET/DEL/UNLINK of hot keys: the same two invalidation rounds as a single write.
            Some(keys) => {
                let ctx = self.ctx.clone();
                let mut merged = merged;
                let task = tokio::task::spawn_local(async move {
                    poll_fn(|cx| merged.poll(cx, &ctx))
                        .await
                        .unwrap_or_default()
                });
                self.hot_write(keys, 0, Rx::Routed(task))
            }
        };
        self.pending.push_back(pending);
    }

    /// A request no key places (see `rc::to_first_server`), and COMMAND: to the pool's first
    /// server (cluster pools: the first primary of the slot map), so `SCRIPT LOAD` (sent to
    /// every server) then `EVALSHA sha 0` finds its script.
    pub(super) fn first_server(&mut self, raw: Bytes) {
        let rx = match &self.ctx.cluster {
            Some(c) => match c.shared.map().primaries().first() {
                Some(addr) => Rx::Cluster(c.send_to(addr, raw, self.client_id)),
                None => {
                    c.shared.refresh();
                    return self.reject(NO_MAP);
                }
            },
            None => self.backend(0).send(raw, ReplyKind::Resp).into(),
        };
        self.pending.push_back(Pending::Single { rx, server: 0 });
    }

    pub(super) fn fan_out(&mut self, info: &CommandInfo, req: RespRequest) {
        if let Some(c) = self.ctx.cluster.clone() {
            return self.cluster_fan_out(&c, info, req);
        }
        let n = self.ctx.pool.specs.len();
        if info.name == "scan" {
            let Some((server, raw)) = merge::scan_step(&req.args, n) else {
                return self.reject("ERR invalid cursor");
            };
            let rx = self.backend(server).send(raw, ReplyKind::Resp).into();
            return self.pending.push_back(Pending::Scan { rx, server, n });
        }
        let how = rc::merge(info).unwrap_or(Merge::AllEqual);
        let parts = (0..n)
            .map(|server| Part {
                server,
                rx: Some(
                    self.backend(server)
                        .send(req.raw.clone(), ReplyKind::Resp)
                        .into(),
                ),
                result: None,
            })
            .collect();
        self.pending.push_back(Pending::Merged(Box::new(Merged {
            how,
            parts,
            part_of: Vec::new(),
        })));
    }
}

/// Each part's arguments: the command name, then its keys (MSET: with their values).
pub(super) fn split_args<'a>(
    info: &CommandInfo,
    args: &'a [Bytes],
    keys: &[usize],
    parts: usize,
    part_of: &[usize],
) -> Vec<Vec<&'a Bytes>> {
    let with_value = info.name == "mset";
    let mut part_args: Vec<Vec<&Bytes>> = vec![vec![&args[0]]; parts];
    for (&k, &p) in keys.iter().zip(part_of) {
        part_args[p].push(&args[k]);
        if with_value {
            part_args[p].extend(args.get(k + 1));
        }
    }
    part_args
}

/// A cluster pool whose map has no owner for what a command needs.
pub(super) const NO_MAP: &str =
    "CLUSTERDOWN kvrouter knows no cluster node for this yet (refreshing the slot map); try again";

/// Where `key` goes: its server (sharded pools) or its slot (cluster pools).
pub(super) fn place(ctx: &RedisContext, key: &[u8]) -> Option<usize> {
    if ctx.cluster.is_some() {
        return Some(slots::key_slot(key) as usize);
    }
    ctx.pool.server_for(key)
}

/// Send a request to `server` on the connection `client_id` uses; on a cluster pool to the
/// owner of that slot (or a replica for reads, per `read_from`), following redirections.
pub(super) fn send(
    ctx: &RedisContext,
    client_id: usize,
    server: usize,
    raw: Bytes,
    read: bool,
) -> Rx {
    match &ctx.cluster {
        Some(c) => Rx::Cluster(c.send(server as u16, raw, read, client_id)),
        None => {
            let conns = &ctx.backends[server];
            conns[client_id % conns.len()]
                .send(raw, ReplyKind::Resp)
                .into()
        }
    }
}

/// Cluster pools (see `cluster.rs`): a "server" index is a slot; `SLOTS` stands for "any node"
/// (SUBSCRIBE and PSUBSCRIBE: a cluster broadcasts PUBLISH to every node).
impl Conn {
    pub(super) fn place(&self, key: &[u8]) -> Option<usize> {
        place(&self.ctx, key)
    }

    pub(super) fn send(&self, server: usize, raw: Bytes, read: bool) -> Rx {
        send(&self.ctx, self.client_id, server, raw, read)
    }

    /// The spec of a dedicated connection to `server` (cluster pools: the slot's primary).
    pub(super) fn spec_of(&self, server: usize) -> Result<Arc<ServerSpec>, String> {
        let Some(c) = &self.ctx.cluster else {
            return Ok(self.ctx.pool.specs[server].clone());
        };
        let map = c.shared.map();
        let addr = if server < slots::SLOTS {
            map.shard(server as u16).map(|s| s.primary.clone())
        } else {
            map.primaries().first().cloned()
        };
        match addr {
            Some(a) => Ok(c.shared.spec(&a, false)),
            None => {
                c.shared.refresh();
                Err(NO_MAP.to_string())
            }
        }
    }

    /// DBSIZE, SCAN, RANDOMKEY, SCRIPT ...: over the primaries of the current map. The SCAN
    /// cursor encodes the primary's index, so a walk is only complete while the topology is
    /// stable.
    pub(super) fn cluster_fan_out(
        &mut self,
        c: &Rc<ClusterWorker>,
        info: &CommandInfo,
        req: RespRequest,
    ) {
        let primaries = c.shared.map().primaries();
        if primaries.is_empty() {
            c.shared.refresh();
            return self.reject(NO_MAP);
        }
        let n = primaries.len();
        if info.name == "scan" {
            let Some((server, raw)) = merge::scan_step(&req.args, n) else {
                return self.reject("ERR invalid cursor");
            };
            let rx = Rx::Cluster(c.send_to(&primaries[server], raw, self.client_id));
            return self.pending.push_back(Pending::Scan { rx, server, n });
        }
        let how = rc::merge(info).unwrap_or(Merge::AllEqual);
        let parts = primaries
            .iter()
            .enumerate()
            .map(|(server, addr)| Part {
                server,
                rx: Some(Rx::Cluster(c.send_to(
                    addr,
                    req.raw.clone(),
                    self.client_id,
                ))),
                result: None,
            })
            .collect();
        self.pending.push_back(Pending::Merged(Box::new(Merged {
            how,
            parts,
            part_of: Vec::new(),
        })));
    }
}
