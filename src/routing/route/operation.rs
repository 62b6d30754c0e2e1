//! `operation`: the child for the request's class (get, set, delete), else `default`.

use std::rc::Rc;

use super::{build as build_route, select_for_all, Build, Handle, Leaf, Node, Pending};
use crate::config::Route;
use crate::failover::policy::OpClass;

/// The child for a request's class, else the default.
pub struct ByOperation<N> {
    pub get: Option<N>,
    pub set: Option<N>,
    pub delete: Option<N>,
    pub default: Option<N>,
}

impl<N> ByOperation<N> {
    /// None when the class has no child and there is no default (`Other` only has the default).
    pub fn select(&self, class: OpClass) -> Option<&N> {
        match class {
            OpClass::Get => self.get.as_ref(),
            OpClass::Set => self.set.as_ref(),
            OpClass::Delete => self.delete.as_ref(),
            OpClass::Other => None,
        }
        .or(self.default.as_ref())
    }
}

struct OperationRoute<L: Leaf>(ByOperation<Node<L>>);

/// `children`: get, set, delete, default.
pub(super) fn build<L: Leaf>(children: [Option<&Route>; 4], b: &Build<L>) -> Node<L> {
    let [get, set, delete, default] = children.map(|c| c.map(|r| build_route(r, b)));
    Rc::new(OperationRoute(ByOperation {
        get,
        set,
        delete,
        default,
    }))
}

impl<L: Leaf> Handle<L> for OperationRoute<L> {
    fn route(&self, op: L::Op) -> Pending {
        let class = L::class(&op);
        let child = select_for_all(
            &op,
            |_| self.0.select(class),
            |k| {
                format!(
                    "no route for key '{}' (no route for its operation and no default)",
                    String::from_utf8_lossy(k)
                )
            },
        );
        match child {
            Ok(c) => c.route(op),
            Err(f) => super::ready(Err(f)),
        }
    }

    fn home(&self, class: OpClass, key: &[u8]) -> Option<&L::Target> {
        self.0.select(class)?.home(class, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_falls_back_to_the_default() {
        let o = ByOperation {
            get: Some("g"),
            set: None,
            delete: Some("d"),
            default: Some("x"),
        };
        assert_eq!(o.select(OpClass::Get), Some(&"g"));
        assert_eq!(o.select(OpClass::Set), Some(&"x"));
        assert_eq!(o.select(OpClass::Delete), Some(&"d"));
        assert_eq!(o.select(OpClass::Other), Some(&"x"));
        let strict = ByOperation { default: None, ..o };
        assert_eq!(strict.select(OpClass::Set), None);
        assert_eq!(strict.select(OpClass::Other), None);
    }
}
