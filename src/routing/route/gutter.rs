//! `gutter`: a failover child that absorbs a down server's keys for a short while ("Scaling
//! Memcache at Facebook"). Everything written there gets a time to live of at most `max_ttl`
//! (`failover::gutter` computes the cap; the protocol's `Leaf::for_gutter` applies it), so once
//! the server is back, whatever the gutter still holds is not served stale for long.

use std::time::Duration;

use futures_util::future::{join_all, FutureExt};

use super::{Build, Handle, Leaf, Node, Pending};
use crate::failover::policy::OpClass;

struct GutterRoute<L: Leaf> {
    target: L::Target,
    max_ttl: Duration,
    /// Requests this gutter took (`kvrouter_route_gutter_total`).
    used: prometheus::IntCounter,
}

pub(super) fn build<L: Leaf>(pool: &str, max_ttl: Duration, b: &Build<L>) -> Node<L> {
    std::rc::Rc::new(GutterRoute::<L> {
        target: (b.target)(pool),
        max_ttl,
        used: (b.gutter_used)(pool),
    })
}

impl<L: Leaf> Handle<L> for GutterRoute<L> {
    fn route(&self, op: L::Op) -> Pending {
        self.used.inc();
        let (op, after) = L::for_gutter(op, self.max_ttl);
        let main = L::send(&self.target, &op);
        if after.is_empty() {
            return main;
        }
        // Sent now, behind `op` on the same connections; the client's reply waits for them so
        // an acknowledged write is already capped.
        let after: Vec<_> = after.iter().map(|a| L::send(&self.target, a)).collect();
        async move {
            let out = main.await;
            join_all(after).await;
            out
        }
        .boxed_local()
    }

    fn target(&self) -> Option<&L::Target> {
        Some(&self.target)
    }

    fn home(&self, _class: OpClass, _key: &[u8]) -> Option<&L::Target> {
        Some(&self.target)
    }

    fn is_gutter(&self) -> bool {
        true
    }
}
