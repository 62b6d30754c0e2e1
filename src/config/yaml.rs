//! YAML plumbing shared by both formats: serde-saphyr error conversion, span helpers, an
//! order-preserving map (pool order is the file's order), and a small spanned tree used for
//! route expressions, whose shape is too free-form for derived structs.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use super::Location;

/// A problem found while loading: a location and the reason. `Config::parse` adds the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Problem {
    pub location: Location,
    pub reason: String,
}

pub(crate) type Res<T> = Result<T, Problem>;

/// Shorthand for building a `Problem`.
pub(crate) fn problem<T>(location: Location, reason: impl Into<String>) -> Res<T> {
    Err(Problem {
        location,
        reason: reason.into(),
    })
}

/// The location where a spanned value is used (an alias site counts as the use).
pub(crate) fn loc<T>(s: &Spanned<T>) -> Location {
    Location {
        line: s.referenced.line() as usize,
        col: s.referenced.column() as usize,
    }
}

/// Deserialize `text`, turning serde-saphyr's error (`msg at line L, column C` plus a snippet)
/// into a `Problem` with the location split out and the snippet dropped.
pub(crate) fn from_yaml<'a, T: Deserialize<'a>>(text: &'a str) -> Res<T> {
    serde_saphyr::from_str(text).map_err(|e| {
        let location = e
            .location()
            .map(|l| Location {
                line: l.line() as usize,
                col: l.column() as usize,
            })
            .filter(|l| l.line > 0)
            .unwrap_or(Location { line: 1, col: 1 });
        let mut reason = e.without_snippet().to_string();
        let suffix = format!(" at line {}, column {}", location.line, location.col);
        if let Some(r) = reason.strip_suffix(&suffix) {
            reason = r.to_string();
        }
        // The crate's hint about its options means nothing to a user of kvrouter.
        if let Some(rest) = reason.strip_prefix("duplicate mapping key: ") {
            let key = rest
                .split(", set DuplicateKeyPolicy")
                .next()
                .unwrap_or(rest);
            reason = format!("duplicate key `{key}`");
        }
        Problem { location, reason }
    })
}

/// A YAML mapping kept in file order, duplicates already refused by the parser.
#[derive(Debug)]
pub(crate) struct OrderedMap<K, V>(pub Vec<(K, V)>);

impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<K, V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V2<K, V>(PhantomData<(K, V)>);
        impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Visitor<'de> for V2<K, V> {
            type Value = OrderedMap<K, V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some(entry) = m.next_entry()? {
                    v.push(entry);
                }
                Ok(OrderedMap(v))
            }
        }
        d.deserialize_map(V2(PhantomData))
    }
}

/// A free-form YAML node with spans on every child, for route expressions.
#[derive(Debug)]
pub(crate) enum Node {
    /// Any scalar, as text (numbers and booleans too).
    Scalar(String),
    Null,
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
}

impl Node {
    pub fn kind(&self) -> &'static str {
        match self {
            Node::Scalar(_) => "a scalar",
            Node::Null => "null",
            Node::Seq(_) => "a list",
            Node::Map(_) => "a mapping",
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
                Ok(Node::Scalar(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
                Ok(Node::Scalar(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
                Ok(Node::Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
                Ok(Node::Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
                Ok(Node::Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
                Ok(Node::Scalar(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                Node::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Node, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = s.next_element()? {
                    v.push(x);
                }
                Ok(Node::Seq(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Node, A::Error> {
                let mut v = Vec::new();
                while let Some(entry) = m.next_entry()? {
                    v.push(entry);
                }
                Ok(Node::Map(v))
            }
        }
        d.deserialize_any(NodeVisitor)
    }
}
