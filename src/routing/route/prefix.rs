//! `prefix`: the child of the longest key prefix that matches, else `default`. Every key of a
//! multi-key request must select the same child (or the same pool).

use std::rc::Rc;

use super::{build as build_route, select_for_all, Build, Handle, Leaf, Node, Pending};
use crate::config::Route;
use crate::failover::policy::OpClass;

/// The longest matching prefix's child, else the default: a selector that holds already-built
/// children of any type and knows no config, pools or connections.
pub struct ByPrefix<N> {
    /// Longest prefix first, so the most specific one wins.
    prefixes: Vec<(Vec<u8>, N)>,
    default: Option<N>,
}

impl<N> ByPrefix<N> {
    pub fn new(mut prefixes: Vec<(Vec<u8>, N)>, default: Option<N>) -> ByPrefix<N> {
        prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        ByPrefix { prefixes, default }
    }

    /// None when no prefix matches and there is no default.
    pub fn select(&self, key: &[u8]) -> Option<&N> {
        self.prefixes
            .iter()
            .find(|(p, _)| key.starts_with(p))
            .map(|(_, c)| c)
            .or(self.default.as_ref())
    }
}

struct PrefixRoute<L: Leaf>(ByPrefix<Node<L>>);

pub(super) fn build<L: Leaf>(
    prefixes: &[(String, Route)],
    default: Option<&Route>,
    b: &Build<L>,
) -> Node<L> {
    Rc::new(PrefixRoute(ByPrefix::new(
        prefixes
            .iter()
            .map(|(p, r)| (p.as_bytes().to_vec(), build_route(r, b)))
            .collect(),
        default.map(|r| build_route(r, b)),
    )))
}

impl<L: Leaf> Handle<L> for PrefixRoute<L> {
    fn route(&self, op: L::Op) -> Pending {
        let child = select_for_all(
            &op,
            |k| self.0.select(k),
            |k| {
                format!(
                    "no route for key '{}' (no prefix matches and no default)",
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
        self.0.select(key)?.home(class, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_whatever_the_config_order() {
        let p = ByPrefix::new(
            vec![
                (b"a".to_vec(), 1),
                (b"abc".to_vec(), 3),
                (b"ab".to_vec(), 2),
            ],
            Some(0),
        );
        assert_eq!(p.select(b"abcd"), Some(&3));
        assert_eq!(p.select(b"abx"), Some(&2));
        assert_eq!(p.select(b"a"), Some(&1));
        assert_eq!(p.select(b"zzz"), Some(&0));
        assert_eq!(p.select(b""), Some(&0));
        let no_default = ByPrefix::new(vec![(b"user:".to_vec(), 1)], None);
        assert_eq!(no_default.select(b"session:1"), None);
        assert_eq!(no_default.select(b"user:1"), Some(&1));
    }
}
