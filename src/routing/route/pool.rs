//! `pool`: a leaf. The pool's placement picks the server; the protocol's `Leaf::send` sends.

use super::{Build, Handle, Leaf, Node, Pending};
use crate::failover::policy::OpClass;

struct PoolRoute<L: Leaf> {
    target: L::Target,
}

pub(super) fn build<L: Leaf>(name: &str, b: &Build<L>) -> Node<L> {
    std::rc::Rc::new(PoolRoute::<L> {
        target: (b.target)(name),
    })
}

impl<L: Leaf> Handle<L> for PoolRoute<L> {
    fn route(&self, op: L::Op) -> Pending {
        L::send(&self.target, &op)
    }

    fn target(&self) -> Option<&L::Target> {
        Some(&self.target)
    }

    fn home(&self, _class: OpClass, _key: &[u8]) -> Option<&L::Target> {
        Some(&self.target)
    }
}
