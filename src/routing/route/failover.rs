//! `failover`: children in order, up to `limit`, while a try fails in a way `on:` lists
//! (mcrouter's FailoverRoute). Sets fail over unless `writes: false`. A delete also goes to every
//! gutter child, so no stale value survives in a gutter when its server recovers.

use std::rc::Rc;

use futures_util::future::{join_all, FutureExt};

use super::{build as build_route, Build, Failed, Handle, Leaf, Node, Outcome, Pending};
use crate::config::{FailoverOn, Route};
use crate::failover::policy::{fails_over, Failure, OpClass};

struct FailoverRoute<L: Leaf> {
    /// The children a request tries, in order (deletes: the non-gutter ones), at most `limit`.
    tries: Rc<[Node<L>]>,
    /// The gutter children, which every delete reaches too.
    gutters: Vec<Node<L>>,
    /// All children, as configured (reads and writes try them in order).
    children: Rc<[Node<L>]>,
    limit: usize,
    on: FailoverOn,
    writes: bool,
    /// Requests sent on to a next child (`kvrouter_route_failovers_total`).
    failovers: prometheus::IntCounter,
}

pub(super) fn build<L: Leaf>(
    children: &[Route],
    limit: Option<usize>,
    on: FailoverOn,
    writes: bool,
    b: &Build<L>,
) -> Node<L> {
    let children: Rc<[Node<L>]> = children.iter().map(|c| build_route(c, b)).collect();
    Rc::new(FailoverRoute::<L> {
        tries: children
            .iter()
            .filter(|c| !c.is_gutter())
            .cloned()
            .collect(),
        gutters: children.iter().filter(|c| c.is_gutter()).cloned().collect(),
        limit: limit.unwrap_or(children.len()).max(1),
        children,
        on,
        writes,
        failovers: b.failovers.clone(),
    })
}

fn no_route() -> Failed {
    Failed::new(Failure::ServerError, "no route")
}

impl<L: Leaf> Handle<L> for FailoverRoute<L> {
    fn route(&self, op: L::Op) -> Pending {
        let class = L::class(&op);
        if class == OpClass::Delete && !self.gutters.is_empty() {
            let gutters: Vec<_> = self.gutters.iter().map(|g| g.route(op.clone())).collect();
            let first = self.run(self.tries.clone(), class, op);
            return async move {
                let first = first.await;
                let gutter_outs = join_all(gutters).await;
                if first.is_ok() {
                    return first;
                }
                gutter_outs.into_iter().find(Result::is_ok).unwrap_or(first)
            }
            .boxed_local();
        }
        self.run(self.children.clone(), class, op)
    }

    fn home(&self, class: OpClass, key: &[u8]) -> Option<&L::Target> {
        self.children.first()?.home(class, key)
    }
}

impl<L: Leaf> FailoverRoute<L> {
    /// Try `children` in order; the first try is sent before this returns.
    fn run(&self, children: Rc<[Node<L>]>, class: OpClass, op: L::Op) -> Pending {
        let Some(first) = children.first() else {
            return super::ready(Err(no_route()));
        };
        let first = first.route(op.clone());
        let (limit, on, writes) = (self.limit, self.on, self.writes);
        let failovers = self.failovers.clone();
        async move {
            let mut out: Outcome = first.await;
            for child in children.iter().take(limit).skip(1) {
                match &out {
                    Err(f) if fails_over(on, writes, class, f.failure) => {}
                    _ => break,
                }
                failovers.inc();
                out = child.route(op.clone()).await;
            }
            out
        }
        .boxed_local()
    }
}
