//! `shadow`: the main route answers; a `fraction` of requests is also sent to the shadow route,
//! whose replies are dropped (mirroring traffic to a new pool before it takes any).

use std::rc::Rc;

use super::{build as build_route, Build, Handle, Leaf, Node, Pending};
use crate::config::Route;
use crate::failover::policy::OpClass;

struct ShadowRoute<L: Leaf> {
    main: Node<L>,
    shadow: Node<L>,
    fraction: f64,
}

pub(super) fn build<L: Leaf>(main: &Route, shadow: &Route, fraction: f64, b: &Build<L>) -> Node<L> {
    Rc::new(ShadowRoute {
        main: build_route(main, b),
        shadow: build_route(shadow, b),
        fraction,
    })
}

impl<L: Leaf> Handle<L> for ShadowRoute<L> {
    fn route(&self, op: L::Op) -> Pending {
        let main = self.main.route(op.clone());
        if self.fraction >= 1.0 || fastrand::f64() < self.fraction {
            let copy = self.shadow.route(op);
            tokio::task::spawn_local(async move {
                let _ = copy.await;
            });
        }
        main
    }

    fn home(&self, class: OpClass, key: &[u8]) -> Option<&L::Target> {
        self.main.home(class, key)
    }
}
