//! One worker's connections to the servers of a generation's pools: what each protocol builds
//! its per-listener context from. The worker (`worker`) fills it when a generation appears,
//! keeping the connections of servers that a reload left unchanged.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use super::cluster::ClusterWorker;
use super::metrics::Families;
use super::pool::PoolRuntime;
use super::stats::Stats;
use super::Generation;
use crate::backend::BackendHandle;

/// `[server][connection]`.
pub type ServerConns = Rc<Vec<Vec<BackendHandle>>>;
/// `[server][replica][connection]`.
pub type ReplicaConns = Rc<Vec<Vec<Vec<BackendHandle>>>>;

pub struct WorkerPools<'a> {
    pub generation: &'a Generation,
    /// By pool index: this worker's connections to each server of every pool a route reaches.
    pub servers: HashMap<usize, ServerConns>,
    pub replicas: HashMap<usize, ReplicaConns>,
    /// This worker's side of each cluster pool, keyed by its `ClusterShared`.
    pub clusters: HashMap<usize, Rc<ClusterWorker>>,
    pub stats: Arc<Stats>,
    /// Each memcached listener's own counters.
    pub listener_stats: &'a super::stats::ByListener,
    pub threads: usize,
    pub families: &'a Families,
}

impl WorkerPools<'_> {
    /// The index of pool `name` (routes name known pools: checked by config).
    pub fn index(&self, name: &str) -> usize {
        self.generation
            .pools
            .iter()
            .position(|p| p.config.name == name)
            .expect("routes name known pools (checked by config)")
    }

    pub fn pool(&self, index: usize) -> &Arc<PoolRuntime> {
        &self.generation.pools[index]
    }

    /// This worker's side of a cluster pool.
    pub fn cluster(&self, pool: &PoolRuntime) -> Option<Rc<ClusterWorker>> {
        let c = pool.cluster.as_ref()?;
        self.clusters.get(&(Arc::as_ptr(c) as usize)).cloned()
    }
}
