//! Route expressions (the route grammar, README "Route trees"), parsed into `Route` trees.
//! Every pool a route names must exist and speak the listener's protocol; every error carries
//! its location.

use serde_saphyr::Spanned;

use super::syntax::{self, protocol_name};
use super::yaml::{loc, problem, Node, Res};
use super::{AllSyncReply, FailoverOn, PoolConfig, Protocol, Route, DEFAULT_GUTTER_TTL};

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
        self.route_in(node, false)
    }

    /// A route; `gutter_ok` when it is a direct child of a failover route.
    fn route_in(&self, node: &Spanned<Node>, gutter_ok: bool) -> Res<Route> {
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
        let location = loc(key);
        let sibling = |name: &str| {
            entries
                .iter()
                .find(|(k, _)| k.value == name)
                .map(|(_, v)| v)
        };
        Ok(match handle {
            "pool" => Route::Pool {
                name: self.pool(value)?,
                location: loc(value),
            },
            "failover" => self.failover(value, location)?,
            "gutter" => {
                if !gutter_ok {
                    return problem(
                        location,
                        "`gutter` is a failover child: use it inside `failover: [...]`",
                    );
                }
                Route::Gutter {
                    pool: self.pool(value)?,
                    max_ttl: match sibling("max_ttl") {
                        Some(ttl) => duration(ttl)?,
                        None => DEFAULT_GUTTER_TTL,
                    },
                    location,
                }
            }
            "prefix" => {
                let mut prefixes = Vec::new();
                let mut default = None;
                for (k, child) in map(value, "prefix")? {
                    let route = self.route(child)?;
                    if k.value == "default" {
                        default = Some(Box::new(route));
                    } else {
                        prefixes.push((k.value.clone(), route));
                    }
                }
                Route::Prefix {
                    prefixes,
                    default,
                    location,
                }
            }
            "operation" => {
                let mut ops: [Option<Box<Route>>; 4] = Default::default();
                for (k, v) in map(value, "operation")? {
                    let i = match k.value.as_str() {
                        "get" => 0,
                        "set" => 1,
                        "delete" => 2,
                        "default" => 3,
                        other => {
                            return problem(
                                loc(k),
                                format!("unexpected key `{other}` in `operation` (get, set, delete, default)"),
                            )
                        }
                    };
                    ops[i] = Some(Box::new(self.route(v)?));
                }
                let [get, set, delete, default] = ops;
                if default.is_none() && (get.is_none() || set.is_none() || delete.is_none()) {
                    return problem(
                        location,
                        "`operation` needs a `default` route unless get, set and delete are all given",
                    );
                }
                Route::Operation {
                    get,
                    set,
                    delete,
                    default,
                    location,
                }
            }
            "all_sync" => Route::AllSync {
                children: self.children(value, "all_sync", false)?,
                reply: match sibling("reply") {
                    Some(r) => match one_of(r, &["first", "all_ok"])? {
                        "first" => AllSyncReply::First,
                        _ => AllSyncReply::AllOk,
                    },
                    None => AllSyncReply::First,
                },
                location,
            },
            "shadow" => {
                let f = self.fields(value, "shadow", &["route", "shadow"])?;
                Route::Shadow {
                    route: Box::new(f.routes[0].clone().expect("required")),
                    shadow: Box::new(f.routes[1].clone().expect("required")),
                    fraction: f.fraction.unwrap_or(1.0),
                    location,
                }
            }
            "warm_up" => {
                let f = self.fields(value, "warm_up", &["cold", "warm"])?;
                Route::WarmUp {
                    cold: Box::new(f.routes[0].clone().expect("required")),
                    warm: Box::new(f.routes[1].clone().expect("required")),
                    exptime: f.exptime.unwrap_or(std::time::Duration::ZERO),
                    location,
                }
            }
            _ => {
                return problem(
                    location,
                    format!("unknown route handle `{handle}`, expected one of {HANDLES}"),
                )
            }
        })
    }

    /// A list of child routes.
    fn children(&self, node: &Spanned<Node>, handle: &str, gutter_ok: bool) -> Res<Vec<Route>> {
        let Node::Seq(items) = &node.value else {
            return problem(loc(node), format!("`{handle}` expects a list of routes"));
        };
        if items.is_empty() {
            return problem(loc(node), format!("`{handle}` needs at least one route"));
        }
        items.iter().map(|i| self.route_in(i, gutter_ok)).collect()
    }

    /// `failover: [routes]` or `failover: { children, limit, on, writes }`.
    fn failover(&self, node: &Spanned<Node>, location: super::Location) -> Res<Route> {
        if let Node::Seq(_) = node.value {
            return Ok(Route::Failover {
                children: self.children(node, "failover", true)?,
                limit: None,
                on: FailoverOn::default(),
                writes: true,
                location,
            });
        }
        let mut children = None;
        let mut limit = None;
        let mut on = FailoverOn::default();
        let mut writes = true;
        for (k, v) in map(node, "failover")? {
            match k.value.as_str() {
                "children" => children = Some(self.children(v, "failover", true)?),
                "limit" => {
                    let n = number(v)?;
                    if n == 0 {
                        return problem(loc(v), "`limit` must be at least 1");
                    }
                    limit = Some(n as usize);
                }
                "writes" => writes = one_of(v, &["true", "false"])? == "true",
                "on" => {
                    let Node::Seq(items) = &v.value else {
                        return problem(loc(v), "`on` expects a list");
                    };
                    on = FailoverOn {
                        timeout: false,
                        refused: false,
                        tko: false,
                        server_error: false,
                    };
                    for i in items {
                        match one_of(i, &["timeout", "refused", "tko", "server_error"])? {
                            "timeout" => on.timeout = true,
                            "refused" => on.refused = true,
                            "tko" => on.tko = true,
                            _ => on.server_error = true,
                        }
                    }
                }
                other => return problem(loc(k), format!("unexpected key `{other}` in `failover`")),
            }
        }
        let Some(children) = children else {
            return problem(location, "`failover` needs `children: [route, ...]`");
        };
        Ok(Route::Failover {
            children,
            limit,
            on,
            writes,
            location,
        })
    }

    /// A mapping with the child routes `routes` (all required) and the optional scalars
    /// `exptime` and `fraction`.
    fn fields(&self, node: &Spanned<Node>, handle: &str, routes: &[&str]) -> Res<Fields> {
        let mut f = Fields {
            routes: vec![None; routes.len()],
            exptime: None,
            fraction: None,
        };
        for (k, v) in map(node, handle)? {
            let key = k.value.as_str();
            if let Some(i) = routes.iter().position(|r| *r == key) {
                f.routes[i] = Some(self.route(v)?);
            } else if key == "exptime" && handle == "warm_up" {
                f.exptime = Some(duration(v)?);
            } else if key == "fraction" && handle == "shadow" {
                match &v.value {
                    Node::Scalar(s) if s.parse::<f64>().is_ok_and(|f| (0.0..=1.0).contains(&f)) => {
                        f.fraction = s.parse().ok();
                    }
                    _ => return problem(loc(v), "`fraction` must be a number from 0.0 to 1.0"),
                }
            } else {
                return problem(loc(k), format!("unexpected key `{key}` in `{handle}`"));
            }
        }
        for (i, r) in routes.iter().enumerate() {
            if f.routes[i].is_none() {
                return problem(loc(node), format!("`{handle}` needs `{r}`"));
            }
        }
        Ok(f)
    }
}

struct Fields {
    routes: Vec<Option<Route>>,
    exptime: Option<std::time::Duration>,
    fraction: Option<f64>,
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

fn duration(node: &Spanned<Node>) -> Res<std::time::Duration> {
    match &node.value {
        Node::Scalar(s) => syntax::parse_duration(s).or_else(|reason| problem(loc(node), reason)),
        other => problem(
            loc(node),
            format!("expected a duration, found {}", other.kind()),
        ),
    }
}

fn number(node: &Spanned<Node>) -> Res<u32> {
    match &node.value {
        Node::Scalar(s) if s.parse::<u32>().is_ok() => Ok(s.parse().expect("checked")),
        _ => problem(loc(node), "expected a non-negative integer"),
    }
}

fn one_of<'a>(node: &Spanned<Node>, allowed: &[&'a str]) -> Res<&'a str> {
    match &node.value {
        Node::Scalar(s) if allowed.contains(&s.as_str()) => {
            Ok(allowed.iter().find(|a| **a == s.as_str()).expect("checked"))
        }
        _ => problem(loc(node), format!("expected one of {}", allowed.join(", "))),
    }
}
