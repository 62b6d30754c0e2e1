//! Route expressions (design.md's route grammar). Only `POOL` / `{ pool: POOL }` is served by
//! this version; every other handle is still checked structurally, and each pool it names must
//! exist and speak the listener's protocol, so `kvrouter -t` catches mistakes today. Such routes
//! come back as `Route::Unsupported`, which the server refuses at startup.

use serde_saphyr::Spanned;

use super::syntax::{self, protocol_name};
use super::yaml::{loc, problem, Node, Res};
use super::{PoolConfig, Protocol, Route};

const HANDLES: &str = "pool, failover, gutter, prefix, operation, all_sync, shadow, warm_up";

struct Checker<'a> {
    protocol: Protocol,
    pools: &'a [PoolConfig],
}

pub(super) fn parse(node: &Spanned<Node>, protocol: Protocol, pools: &[PoolConfig]) -> Res<Route> {
    Checker { protocol, pools }.route(node)
}

impl Checker<'_> {
    /// A pool reference: it must exist and speak the listener's protocol.
    fn pool(&self, node: &Spanned<Node>) -> Res<String> {
        let Node::Scalar(name) = &node.value else {
            return problem(
                loc(node),
                format!("expected a pool name, found {}", node.value.kind()),
            );
        };
        let Some(pool) = self.pools.iter().find(|p| &p.name == name) else {
            return problem(loc(node), format!("unknown pool '{name}'"));
        };
        if pool.protocol != self.protocol {
            return problem(
                loc(node),
                format!(
                    "pool '{name}' speaks {}, but this listener speaks {}",
                    protocol_name(pool.protocol),
                    protocol_name(self.protocol)
                ),
            );
        }
        Ok(name.clone())
    }

    fn route(&self, node: &Spanned<Node>) -> Res<Route> {
        let entries = match &node.value {
            Node::Scalar(_) => {
                return Ok(Route::Pool {
                    name: self.pool(node)?,
                    location: loc(node),
                })
            }
            Node::Map(entries) => entries,
            other => {
                return problem(
                    loc(node),
                    format!(
                        "expected a route (a pool name or a mapping), found {}",
                        other.kind()
                    ),
                )
            }
        };
        let Some((key, value)) = entries.first() else {
            return problem(loc(node), format!("empty route, expected one of {HANDLES}"));
        };
        let handle = key.value.as_str();
        // Keys allowed next to the handle key.
        let extra: &[&str] = match handle {
            "gutter" => &["max_ttl"],
            "all_sync" => &["reply"],
            _ => &[],
        };
        for (k, _) in &entries[1..] {
            if !extra.contains(&k.value.as_str()) {
                return problem(
                    loc(k),
                    format!("unexpected key `{}` in a `{handle}` route", k.value),
                );
            }
        }
        match handle {
            "pool" => {
                return Ok(Route::Pool {
                    name: self.pool(value)?,
                    location: loc(value),
                })
            }
            "failover" => self.failover(value)?,
            "gutter" => {
                self.pool(value)?;
                if let Some((_, ttl)) = entries.iter().find(|(k, _)| k.value == "max_ttl") {
                    duration(ttl)?;
                }
            }
            "prefix" => {
                for (_, child) in map(value, "prefix")? {
                    self.route(child)?;
                }
            }
            "operation" => self.fields(
                value,
                "operation",
                &["get", "set", "delete", "default"],
                &[],
            )?,
            "all_sync" => {
                self.children(value, "all_sync")?;
                if let Some((_, reply)) = entries.iter().find(|(k, _)| k.value == "reply") {
                    one_of(reply, &["first", "all_ok"])?;
                }
            }
            "shadow" => self.fields(value, "shadow", &["route", "shadow"], &["fraction"])?,
            "warm_up" => self.fields(value, "warm_up", &["cold", "warm"], &["exptime"])?,
            _ => {
                return problem(
                    loc(key),
                    format!("unknown route handle `{handle}`, expected one of {HANDLES}"),
                )
            }
        }
        Ok(Route::Unsupported {
            handle: handle.to_string(),
            location: loc(key),
        })
    }

    /// A list of child routes.
    fn children(&self, node: &Spanned<Node>, handle: &str) -> Res<()> {
        let Node::Seq(items) = &node.value else {
            return problem(loc(node), format!("`{handle}` expects a list of routes"));
        };
        for item in items {
            self.route(item)?;
        }
        Ok(())
    }

    /// `failover: [routes]` or `failover: { children, limit, on, writes }`.
    fn failover(&self, node: &Spanned<Node>) -> Res<()> {
        if let Node::Seq(_) = node.value {
            return self.children(node, "failover");
        }
        for (k, v) in map(node, "failover")? {
            match k.value.as_str() {
                "children" => self.children(v, "failover")?,
                "limit" => number(v)?,
                "writes" => one_of(v, &["true", "false"])?,
                "on" => {
                    let Node::Seq(items) = &v.value else {
                        return problem(loc(v), "`on` expects a list");
                    };
                    for i in items {
                        one_of(i, &["timeout", "refused", "tko", "server_error"])?;
                    }
                }
                other => return problem(loc(k), format!("unexpected key `{other}` in `failover`")),
            }
        }
        Ok(())
    }

    /// A mapping whose `routes` keys hold child routes and `scalars` keys hold plain values.
    fn fields(
        &self,
        node: &Spanned<Node>,
        handle: &str,
        routes: &[&str],
        scalars: &[&str],
    ) -> Res<()> {
        for (k, v) in map(node, handle)? {
            let key = k.value.as_str();
            if routes.contains(&key) {
                self.route(v)?;
            } else if key == "exptime" {
                duration(v)?;
            } else if key == "fraction" {
                let ok = matches!(&v.value, Node::Scalar(s) if s.parse::<f64>().is_ok_and(|f| (0.0..=1.0).contains(&f)));
                if !ok {
                    return problem(loc(v), "`fraction` must be a number from 0.0 to 1.0");
                }
            } else if !scalars.contains(&key) {
                return problem(loc(k), format!("unexpected key `{key}` in `{handle}`"));
            }
        }
        Ok(())
    }
}

fn map<'n>(node: &'n Spanned<Node>, handle: &str) -> Res<&'n [(Spanned<String>, Spanned<Node>)]> {
    match &node.value {
        Node::Map(entries) => Ok(entries),
        other => problem(
            loc(node),
            format!("`{handle}` expects a mapping, found {}", other.kind()),
        ),
    }
}

fn duration(node: &Spanned<Node>) -> Res<()> {
    match &node.value {
        Node::Scalar(s) => syntax::parse_duration(s)
            .map(|_| ())
            .or_else(|reason| problem(loc(node), reason)),
        other => problem(
            loc(node),
            format!("expected a duration, found {}", other.kind()),
        ),
    }
}

fn number(node: &Spanned<Node>) -> Res<()> {
    match &node.value {
        Node::Scalar(s) if s.parse::<u32>().is_ok() => Ok(()),
        _ => problem(loc(node), "expected a non-negative integer"),
    }
}

fn one_of(node: &Spanned<Node>, allowed: &[&str]) -> Res<()> {
    match &node.value {
        Node::Scalar(s) if allowed.contains(&s.as_str()) => Ok(()),
        _ => problem(loc(node), format!("expected one of {}", allowed.join(", "))),
    }
}
