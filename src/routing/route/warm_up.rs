//! `warm_up` (mcrouter's WarmUpRoute): a read that misses on `cold` is read from `warm`; a value
//! found there answers the client and is stored in cold with `exptime`, so a new pool fills from
//! an old one instead of from the database. Everything else goes to cold only.

use std::rc::Rc;
use std::time::Duration;

use futures_util::future::FutureExt;

use super::{build as build_route, Build, Handle, Leaf, Node, Pending};
use crate::config::Route;
use crate::failover::policy::OpClass;

struct WarmUpRoute<L: Leaf> {
    cold: Node<L>,
    warm: Node<L>,
    exptime: Duration,
}

pub(super) fn build<L: Leaf>(
    cold: &Route,
    warm: &Route,
    exptime: Duration,
    b: &Build<L>,
) -> Node<L> {
    Rc::new(WarmUpRoute {
        cold: build_route(cold, b),
        warm: build_route(warm, b),
        exptime,
    })
}

impl<L: Leaf> Handle<L> for WarmUpRoute<L> {
    fn route(&self, op: L::Op) -> Pending {
        let Some(warm_op) = L::warm_read(&op) else {
            return self.cold.route(op);
        };
        let first = self.cold.route(op.clone());
        let (cold, warm, exptime) = (self.cold.clone(), self.warm.clone(), self.exptime);
        async move {
            let first = first.await;
            if !first.as_ref().is_ok_and(L::is_miss) {
                return first;
            }
            let from_warm = warm.route(warm_op).await;
            let fill = match &from_warm {
                Ok(b) => L::warm_fill(&op, b, exptime),
                Err(_) => None,
            };
            let Some(fill) = fill else {
                return first; // a miss there too, or a failure: cold's answer stands
            };
            if L::reread_after_fill(&op) {
                let _ = cold.route(fill).await;
                return cold.route(op).await;
            }
            tokio::task::spawn_local(cold.route(fill));
            from_warm
        }
        .boxed_local()
    }

    fn home(&self, class: OpClass, key: &[u8]) -> Option<&L::Target> {
        self.cold.home(class, key)
    }
}
