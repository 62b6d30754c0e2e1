//! Redis Cluster pools: a standalone view of a real cluster.
//!
//! **Topology.** A cluster pool configures seeds, not servers. `ClusterShared` (one per pool,
//! shared by every worker) holds the slot map (`routing::slots::ClusterMap`, read through
//! arc-swap) built from `CLUSTER SLOTS` of the first node that answers (the seeds first, then
//! every node of the current map). It is refreshed lazily every 5 s while there is traffic, and
//! on demand after MOVED, CLUSTERDOWN and connection errors. Refreshes are coalesced: one in
//! flight per pool, and at most one every 100 ms, so a burst of MOVED costs one refresh.
//!
//! **Connections.** Each worker keeps its own backend connections per node address, created
//! lazily on first use (`ClusterWorker`): nodes come and go at run time. Replica connections
//! send `READONLY` at connect (the `init` mechanism of backend connections).
//!
//! **Redirections.** A request goes straight to the slot's owner; its reply is checked for
//! `-MOVED`, `-ASK`, `-TRYAGAIN`, `-CLUSTERDOWN` and for connection errors (one byte compare
//! for the common reply). Only then a retry task takes over (`retry`): MOVED updates the map's
//! slot (and triggers a refresh) and retries on the new owner; ASK sends `ASKING` and the
//! command back to back on the target's connection without touching the map; TRYAGAIN and
//! CLUSTERDOWN back off 50/100/200 ms; a connection error retries after a refresh only when the
//! request cannot have run (connect failed) or is read-only. Everything stays within the pool
//! timeout counted from the first send, and at most 5 redirections per request.
//!
//! The redirection following lives in `redirect.rs`.
//!
//! **Transactions.** The proxy queues a MULTI block and sends it whole at EXEC (`transaction`),
//! so a block the node discarded with MOVED/ASK is sent again whole to the node named. A WATCH
//! answered MOVED/ASK makes EXEC answer nil (the transaction did not run). A blocking command
//! answered MOVED/ASK is sent again to the node named (`server::redis`'s `Pending::Blocking`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::metrics::Families;
use super::stats::{bump, Stats};
use crate::backend::health::now_ms;
use crate::backend::{
    BackendError, BackendHandle, Dedicated, Reply, ReplyKind, ServerHealth, ServerSpec,
};
use crate::config::{ClusterConfig, PoolConfig, ReadFrom};
use crate::protocol::resp::merge::error;
use crate::protocol::resp::{encode_request, parse_frame, Frame};
use crate::routing::slots::{ClusterMap, Shard};

mod redirect;

pub use redirect::{asking_bytes, transaction, ClusterRx};

const REFRESH_EVERY_MS: u64 = 5000;
/// The shortest gap between two refreshes asked for by errors.
const REFRESH_GAP_MS: u64 = 100;
pub(crate) const MAX_REDIRECTS: u32 = 5;
const MAX_TRIES: u32 = 3;
/// The budget of one request when the pool has no timeout.
const DEFAULT_BUDGET: Duration = Duration::from_secs(5);

/// The cluster state of one pool, shared by all workers.
pub struct ClusterShared {
    pub config: ClusterConfig,
    pool: String,
    map: ArcSwap<ClusterMap>,
    refreshing: AtomicBool,
    /// `now_ms()` when the last refresh started (0 = never).
    last_refresh: AtomicU64,
    refreshed: Notify,
    /// Node specs by (address, readonly), so health and metrics are per node across workers.
    specs: Mutex<HashMap<(String, bool), Arc<ServerSpec>>>,
    template: ServerSpec,
    families: Families,
    versions: AtomicU64,
    /// Completed refreshes (for INFO and tests).
    pub refreshes: AtomicU64,
}

impl ClusterShared {
    /// `template`: a spec with the pool's connection settings (its address is replaced).
    pub fn new(config: &PoolConfig, template: ServerSpec, families: &Families) -> ClusterShared {
        ClusterShared {
            config: config.cluster.clone().expect("a cluster pool"),
            pool: config.name.clone(),
            map: ArcSwap::from_pointee(ClusterMap::default()),
            refreshing: AtomicBool::new(false),
            last_refresh: AtomicU64::new(0),
            refreshed: Notify::new(),
            specs: Mutex::new(HashMap::new()),
            template,
            families: families.clone(),
            versions: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
        }
    }

    /// Whether a pool built from `config` with `template` can keep this state (on reload).
    pub fn reusable(&self, config: &PoolConfig, template: &ServerSpec) -> bool {
        config.cluster.as_ref() == Some(&self.config)
            && self.pool == config.name
            && self.template.timeout == template.timeout
            && self.template.init == template.init
            && self.template.tcpkeepalive == template.tcpkeepalive
            && self.template.tls.is_none()
            && template.tls.is_none()
    }

    pub fn map(&self) -> arc_swap::Guard<Arc<ClusterMap>> {
        self.map.load()
    }

    /// The spec of node `addr` (readonly: a replica connection that sent READONLY).
    pub fn spec(&self, addr: &str, readonly: bool) -> Arc<ServerSpec> {
        let mut specs = self.specs.lock().unwrap_or_else(|e| e.into_inner());
        specs
            .entry((addr.to_string(), readonly))
            .or_insert_with(|| {
                let mut init = self.template.init.clone();
                let name = if readonly {
                    init.push(("READONLY".into(), encode_request(&["READONLY"]).raw));
                    format!("{addr} readonly")
                } else {
                    addr.to_string()
                };
                Arc::new(ServerSpec {
                    address: addr.to_string(),
                    health: Arc::new(ServerHealth::default()),
                    init,
                    metrics: self.families.server(&self.pool, &name),
                    ..self.template.clone()
                })
            })
            .clone()
    }

    /// Start a refresh (on this worker) unless one is in flight or one started very recently.
    pub fn refresh(self: &Arc<Self>) {
        let now = now_ms();
        let last = self.last_refresh.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < REFRESH_GAP_MS {
            return;
        }
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        self.last_refresh.store(now, Ordering::Relaxed);
        let me = self.clone();
        tokio::task::spawn_local(async move {
            me.refresh_now().await;
            me.refreshing.store(false, Ordering::Release);
            me.refreshed.notify_waiters();
        });
    }

    /// Refresh when the map is older than the refresh period (or there is none yet).
    #[inline]
    pub fn maybe_refresh(self: &Arc<Self>) {
        let last = self.last_refresh.load(Ordering::Relaxed);
        if last == 0 || now_ms().saturating_sub(last) >= REFRESH_EVERY_MS {
            self.refresh();
        }
    }

    /// Wait until the refresh in flight (if any) is done, or `deadline`.
    async fn refreshed_by(&self, deadline: Instant) {
        let notified = self.refreshed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !self.refreshing.load(Ordering::Acquire) {
            return;
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }

    async fn refresh_now(&self) {
        let mut candidates = self.config.seeds.clone();
        for a in self.map.load().addresses() {
            if !candidates.contains(&a) {
                candidates.push(a);
            }
        }
        let mut last_err = String::new();
        for addr in candidates {
            match self.fetch(&addr).await {
                Ok(ranges) => {
                    let version = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
                    let map = ClusterMap::from_ranges(&ranges, version);
                    let changed = {
                        let old = self.map.load();
                        (0..crate::routing::slots::SLOTS as u16)
                            .any(|s| old.shard(s) != map.shard(s))
                    };
                    if changed {
                        tracing::info!(pool = %self.pool, from = %addr, shards = map.shards.len(),
                            complete = map.complete(), "cluster slot map updated");
                    }
                    self.map.store(Arc::new(map));
                    self.refreshes.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(e) => last_err = format!("{addr}: {e}"),
            }
        }
        tracing::warn!(pool = %self.pool, error = %last_err, "no cluster node answered CLUSTER SLOTS");
    }

    /// CLUSTER SLOTS of one node, on a connection of its own.
    async fn fetch(&self, addr: &str) -> Result<Vec<(u16, u16, Shard)>, String> {
        let spec = Arc::new(ServerSpec {
            address: addr.to_string(),
            health: Arc::new(ServerHealth::default()),
            metrics: crate::backend::ServerMetrics::unregistered(),
            ..self.template.clone()
        });
        // A connection of its own that closes when dropped, even if the node never answers.
        let budget = self.template.timeout.unwrap_or(DEFAULT_BUDGET);
        let conn = Dedicated::open(spec, Some(budget));
        let rx = conn.send(encode_request(&["CLUSTER", "SLOTS"]).raw);
        let reply = tokio::time::timeout(budget, rx)
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|_| "connection went away".to_string())?
            .map_err(|e| e.to_string())?;
        parse_slots(&reply, addr)
    }

    /// A MOVED told us `slot` is owned by `addr`: fix the map now, refresh the rest.
    fn moved(self: &Arc<Self>, slot: u16, addr: &str) {
        if self
            .map
            .load()
            .shard(slot)
            .is_none_or(|s| s.primary != addr)
        {
            self.map.rcu(|m| {
                if m.shard(slot).is_some_and(|s| s.primary == addr) {
                    Arc::clone(m)
                } else {
                    let version = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
                    Arc::new(m.with_slot_moved(slot, addr, version))
                }
            });
        }
        self.refresh();
    }
}

/// Parse a `CLUSTER SLOTS` reply into `(first, last, shard)` ranges. A node listed with an
/// empty IP is the node asked (`asked`'s host).
pub fn parse_slots(reply: &Bytes, asked: &str) -> Result<Vec<(u16, u16, Shard)>, String> {
    let (frame, _) = parse_frame(reply).map_err(|e| e.to_string())?;
    let items = match frame {
        Frame::Array(Some(v)) => v,
        Frame::Error(e) => return Err(String::from_utf8_lossy(&e).into_owned()),
        other => return Err(format!("unexpected CLUSTER SLOTS reply {other:?}")),
    };
    let asked_host = asked.rsplit_once(':').map_or(asked, |(h, _)| h);
    let node = |f: &Frame| -> Result<String, String> {
        let Frame::Array(Some(v)) = f else {
            return Err("bad node entry".into());
        };
        let host = match v.first() {
            Some(Frame::Bulk(Some(h))) if !h.is_empty() && h.as_ref() != b"?" => {
                String::from_utf8_lossy(h).into_owned()
            }
            _ => asked_host.to_string(),
        };
        let Some(Frame::Integer(port)) = v.get(1) else {
            return Err("bad node port".into());
        };
        Ok(if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        })
    };
    let mut out = Vec::new();
    for item in &items {
        let Frame::Array(Some(v)) = item else {
            return Err("bad slot range entry".into());
        };
        let (Some(Frame::Integer(first)), Some(Frame::Integer(last)), Some(primary)) =
            (v.first(), v.get(1), v.get(2))
        else {
            return Err("bad slot range entry".into());
        };
        let shard = Shard {
            primary: node(primary)?,
            replicas: v[3..].iter().map(node).collect::<Result<_, _>>()?,
        };
        out.push((*first as u16, *last as u16, shard));
    }
    Ok(out)
}

/// One worker's side of a cluster pool: its connections per node, created on first use.
pub struct ClusterWorker {
    pub shared: Arc<ClusterShared>,
    connections: usize,
    budget: Duration,
    stats: Arc<Stats>,
    rw: RefCell<HashMap<String, Vec<BackendHandle>>>,
    ro: RefCell<HashMap<String, Vec<BackendHandle>>>,
    /// The slot map version the connections were last pruned against.
    pruned: std::cell::Cell<u64>,
}

/// What a retry needs to know about a request.
pub struct Call {
    raw: Bytes,
    slot: u16,
    /// Read-only (may go to a replica).
    read: bool,
    client: usize,
    started: Instant,
}

impl ClusterWorker {
    pub fn new(shared: Arc<ClusterShared>, connections: usize, stats: Arc<Stats>) -> ClusterWorker {
        let budget = shared.template.timeout.unwrap_or(DEFAULT_BUDGET);
        ClusterWorker {
            shared,
            connections: connections.max(1),
            budget,
            stats,
            rw: RefCell::new(HashMap::new()),
            ro: RefCell::new(HashMap::new()),
            pruned: std::cell::Cell::new(0),
        }
    }

    /// Drop the connections to nodes the slot map no longer lists (they left the cluster, or
    /// a replica was removed). Requests already queued on them still get their replies: a
    /// backend connection ends once its queue is empty and no handle is left.
    fn prune(&self, map: &ClusterMap) {
        self.pruned.set(map.version);
        if map.shards.is_empty() {
            return; // no map (yet): nothing to compare with
        }
        let live = map.addresses();
        for conns in [&self.rw, &self.ro] {
            conns.borrow_mut().retain(|addr, _| {
                let keep = live.contains(addr);
                if !keep {
                    tracing::info!(pool = %self.shared.pool, node = %addr,
                        "node left the cluster slot map: closing this worker's connections to it");
                }
                keep
            });
        }
    }

    /// Queue `bytes` on this worker's connection to `addr`.
    fn send_on(
        &self,
        addr: &str,
        readonly: bool,
        client: usize,
        bytes: Bytes,
    ) -> oneshot::Receiver<Reply> {
        let map = if readonly { &self.ro } else { &self.rw };
        if let Some(conns) = map.borrow().get(addr) {
            return conns[client % conns.len()].send(bytes, ReplyKind::Resp);
        }
        let spec = self.shared.spec(addr, readonly);
        let conns: Vec<BackendHandle> = (0..self.connections)
            .map(|_| BackendHandle::spawn(spec.clone(), false))
            .collect();
        let rx = conns[client % conns.len()].send(bytes, ReplyKind::Resp);
        map.borrow_mut().insert(addr.to_string(), conns);
        rx
    }

    /// Where a request for `slot` goes: (address, replica connection).
    fn target<'m>(
        &self,
        map: &'m ClusterMap,
        slot: u16,
        replica: bool,
        client: usize,
    ) -> Result<(&'m str, bool), String> {
        let Some(shard) = map.shard(slot) else {
            return Err(if map.version == 0 {
                "CLUSTERDOWN kvrouter has no slot map yet (no cluster node answered CLUSTER SLOTS)"
                    .to_string()
            } else {
                format!("CLUSTERDOWN Hash slot {slot} not served")
            });
        };
        if replica {
            if !shard.replicas.is_empty() {
                let r = &shard.replicas[client % shard.replicas.len()];
                return Ok((r.as_str(), true));
            }
            if self.shared.config.read_from == ReadFrom::Replica {
                return Err(format!(
                    "CLUSTERDOWN no replica serves slot {slot} (read_from: replica)"
                ));
            }
        }
        Ok((shard.primary.as_str(), false))
    }

    /// Send a request for `slot`, following redirections.
    pub fn send(self: &Rc<Self>, slot: u16, raw: Bytes, read: bool, client: usize) -> ClusterRx {
        self.shared.maybe_refresh();
        let call = Call {
            raw,
            slot,
            read,
            client,
            started: Instant::now(),
        };
        let replica = read && self.shared.config.read_from != ReadFrom::Primary;
        let map = self.shared.map();
        if map.version != self.pruned.get() {
            self.prune(&map);
        }
        match self.target(&map, slot, replica, client) {
            Ok((addr, ro)) => ClusterRx::Direct {
                rx: self.send_on(addr, ro, client, call.raw.clone()),
                call,
                worker: self.clone(),
            },
            Err(_) => {
                drop(map);
                ClusterRx::slow(self.clone(), call, None)
            }
        }
    }

    /// Send a request to one node (fan-out commands): no redirection is followed.
    pub fn send_to(&self, addr: &str, raw: Bytes, client: usize) -> ClusterRx {
        ClusterRx::Fixed {
            rx: self.send_on(addr, false, client, raw),
            addr: addr.to_string(),
            stats: self.stats.clone(),
        }
    }

    fn failed(&self, addr: &str, e: &BackendError) -> Bytes {
        bump(&self.stats.server_errors, 1);
        error(&format!("ERR backend {addr} {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_slots_reply() {
        let reply = Bytes::from_static(
            b"*2\r\n*4\r\n:0\r\n:5460\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$2\r\nid\r\n*3\r\n$0\r\n\r\n:7003\r\n$2\r\nid\r\n\
*3\r\n:5461\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:7001\r\n$2\r\nid\r\n",
        );
        let r = parse_slots(&reply, "10.0.0.1:7000").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].0, 0);
        assert_eq!(r[0].1, 5460);
        assert_eq!(r[0].2.primary, "127.0.0.1:7000");
        assert_eq!(r[0].2.replicas, vec!["10.0.0.1:7003".to_string()]);
        assert_eq!(r[1].2.primary, "127.0.0.1:7001");
        assert!(r[1].2.replicas.is_empty());
        assert!(parse_slots(&Bytes::from_static(b"-ERR no cluster\r\n"), "a:1").is_err());
    }
}
