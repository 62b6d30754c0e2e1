//! How a client connection moves to a newer config generation.
//!
//! Each worker rebuilds its per-listener contexts when a reload swaps in a new generation. A
//! client holds the context it was given and, at its next request batch, asks its `Follow`
//! whether a newer one exists (one relaxed atomic load when nothing changed). The worker is
//! reached through the `Contexts` trait, so a protocol's connection code never names the
//! worker that builds its contexts: data flows worker → protocol only.

use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A worker's newest per-listener contexts of one protocol.
pub trait Contexts<C> {
    /// The context for new requests of `listener`'s clients; None when the listener is gone.
    fn newest(&self, listener: u64) -> Option<Rc<C>>;
}

/// Lets a client connection notice that a newer generation is active, and fetch its context.
pub struct Follow<C: 'static> {
    listener: u64,
    built_for: u64,
    current: Arc<AtomicU64>,
    worker: Weak<dyn Contexts<C>>,
}

impl<C: 'static> Follow<C> {
    /// `built_for`: the generation the context holding this was built from; `current`: the
    /// active generation's id, bumped by every reload.
    pub fn new(
        listener: u64,
        built_for: u64,
        current: Arc<AtomicU64>,
        worker: Weak<dyn Contexts<C>>,
    ) -> Follow<C> {
        Follow {
            listener,
            built_for,
            current,
            worker,
        }
    }

    /// The newer context for this client's listener, if a reload happened since this one was
    /// built.
    #[inline]
    pub fn newer(&self) -> Option<Rc<C>> {
        if self.current.load(Ordering::Relaxed) == self.built_for {
            return None;
        }
        self.worker.upgrade()?.newest(self.listener)
    }
}
