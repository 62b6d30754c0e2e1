//! `all_sync`: every child gets the request; the client gets the first child's reply (`first`)
//! or the first failure or non-success reply (`all_ok`), once all have answered.

use std::rc::Rc;

use futures_util::future::{join_all, FutureExt};

use super::{build as build_route, Build, Handle, Leaf, Node, Outcome, Pending};
use crate::config::{AllSyncReply, Route};
use crate::failover::policy::OpClass;

struct AllSyncRoute<L: Leaf> {
    children: Vec<Node<L>>,
    reply: AllSyncReply,
}

pub(super) fn build<L: Leaf>(children: &[Route], reply: AllSyncReply, b: &Build<L>) -> Node<L> {
    Rc::new(AllSyncRoute {
        children: children.iter().map(|c| build_route(c, b)).collect(),
        reply,
    })
}

impl<L: Leaf> Handle<L> for AllSyncRoute<L> {
    fn route(&self, op: L::Op) -> Pending {
        let all: Vec<_> = self.children.iter().map(|c| c.route(op.clone())).collect();
        let reply = self.reply;
        async move {
            let mut outs = join_all(all).await;
            let ok = |o: &Outcome| o.as_ref().is_ok_and(L::is_ok);
            let pick = match reply {
                AllSyncReply::First => 0,
                AllSyncReply::AllOk => outs.iter().position(|o| !ok(o)).unwrap_or(0),
            };
            outs.swap_remove(pick)
        }
        .boxed_local()
    }

    fn home(&self, class: OpClass, key: &[u8]) -> Option<&L::Target> {
        self.children.first()?.home(class, key)
    }
}
