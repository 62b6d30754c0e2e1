//! The route-tree nodes that pick a child from the request alone: `prefix` (the longest key
//! prefix that matches) and `operation` (the request's get/set/delete class).
//!
//! design.md's route grammar is one tree for both protocols. The memcached and Redis trees
//! differ in their leaves and in the nodes that act on outcomes (failover, gutter, shadow, ...),
//! so each embeds these two selectors rather than building and matching them twice. A selector
//! holds already-built children of any type: it knows no config, pools or connections.

use crate::failover::policy::OpClass;

/// `prefix`: the child of the longest matching key prefix, else the default.
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

/// `operation`: the child for the request's class, else the default.
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
