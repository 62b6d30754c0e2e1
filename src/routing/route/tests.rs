//! The route handles against a scripted leaf: which pools a request reaches, what the client
//! gets back, and what is counted. (Against real servers: tests/routes.rs, tests/failover.rs,
//! tests/redis_failover.rs.)

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;

use super::*;
use crate::config::{AllSyncReply, FailoverOn, Location};

/// A pool that answers from a script: `Ok(reply)` or a failure, and logs what it was sent.
struct Fake {
    name: String,
    answer: Outcome,
    log: Rc<RefCell<Vec<String>>>,
}

#[derive(Clone)]
struct Op {
    class: OpClass,
    keys: Vec<Vec<u8>>,
    ttl: u64,
}

enum Scripted {}

impl Leaf for Scripted {
    type Target = Rc<Fake>;
    type Op = Op;

    fn send(t: &Rc<Fake>, op: &Op) -> Pending {
        let keys: Vec<String> = op
            .keys
            .iter()
            .map(|k| String::from_utf8_lossy(k).into())
            .collect();
        t.log
            .borrow_mut()
            .push(format!("{} {} ttl={}", t.name, keys.join(","), op.ttl));
        ready(t.answer.clone())
    }
    fn same_target(a: &Rc<Fake>, b: &Rc<Fake>) -> bool {
        Rc::ptr_eq(a, b)
    }
    fn class(op: &Op) -> OpClass {
        op.class
    }
    fn key(op: &Op, i: usize) -> Option<&[u8]> {
        op.keys.get(i).map(|k| k.as_slice())
    }
    fn name(_: &Op) -> String {
        "MGET".into()
    }
    fn is_ok(b: &Bytes) -> bool {
        !b.starts_with(b"-")
    }
    fn is_miss(b: &Bytes) -> bool {
        b.as_ref() == b"nil"
    }
    fn for_gutter(op: Op, max_ttl: Duration) -> (Op, Vec<Op>) {
        let ttl = op.ttl.min(max_ttl.as_secs());
        (Op { ttl, ..op }, Vec::new())
    }
    fn warm_read(op: &Op) -> Option<Op> {
        (op.class == OpClass::Get).then(|| op.clone())
    }
    fn warm_fill(op: &Op, _reply: &Bytes, exptime: Duration) -> Option<Op> {
        Some(Op {
            class: OpClass::Set,
            ttl: exptime.as_secs(),
            ..op.clone()
        })
    }
    fn reread_after_fill(_: &Op) -> bool {
        true
    }
}

struct World {
    pools: HashMap<String, Rc<Fake>>,
    log: Rc<RefCell<Vec<String>>>,
    failovers: prometheus::IntCounter,
    gutter: prometheus::IntCounter,
}

fn world(answers: &[(&str, Outcome)]) -> World {
    let log = Rc::new(RefCell::new(Vec::new()));
    let pools = answers
        .iter()
        .map(|(n, a)| {
            let fake = Fake {
                name: n.to_string(),
                answer: a.clone(),
                log: log.clone(),
            };
            (n.to_string(), Rc::new(fake))
        })
        .collect();
    World {
        pools,
        log,
        failovers: prometheus::IntCounter::new("f", "f").unwrap(),
        gutter: prometheus::IntCounter::new("g", "g").unwrap(),
    }
}

impl World {
    fn run(&self, route: &Route, op: Op) -> Outcome {
        let target = |n: &str| self.pools[n].clone();
        let gutter = |_: &str| self.gutter.clone();
        let b = Build {
            target: &target,
            failovers: self.failovers.clone(),
            gutter_used: &gutter,
        };
        build::<Scripted>(route, &b)
            .route(op)
            .now_or_never()
            .expect("scripted pools answer at once")
    }

    fn sent(&self) -> Vec<String> {
        self.log.borrow().clone()
    }
}

fn at() -> Location {
    Location { line: 1, col: 1 }
}

fn pool(n: &str) -> Route {
    Route::Pool {
        name: n.into(),
        location: at(),
    }
}

fn failover(children: Vec<Route>) -> Route {
    Route::Failover {
        children,
        limit: None,
        on: FailoverOn::default(),
        writes: true,
        location: at(),
    }
}

fn gutter(n: &str) -> Route {
    Route::Gutter {
        pool: n.into(),
        max_ttl: Duration::from_secs(10),
        location: at(),
    }
}

fn op(class: OpClass, keys: &[&str]) -> Op {
    Op {
        class,
        keys: keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
        ttl: 3600,
    }
}

fn down() -> Outcome {
    Err(Failed::new(Failure::Tko, "a is marked down"))
}

fn ok(b: &'static str) -> Outcome {
    Ok(Bytes::from_static(b.as_bytes()))
}

#[test]
fn failover_tries_children_in_order_counts_and_caps_the_gutter() {
    let w = world(&[("a", down()), ("g", ok("stored"))]);
    let route = failover(vec![pool("a"), gutter("g")]);
    assert_eq!(w.run(&route, op(OpClass::Set, &["k"])), ok("stored"));
    assert_eq!(w.sent(), ["a k ttl=3600", "g k ttl=10"]);
    assert_eq!(w.failovers.get(), 1);
    assert_eq!(w.gutter.get(), 1);
}

#[test]
fn writes_false_and_on_keep_a_failure() {
    let w = world(&[("a", down()), ("b", ok("stored"))]);
    let no_writes = Route::Failover {
        children: vec![pool("a"), pool("b")],
        limit: None,
        on: FailoverOn::default(),
        writes: false,
        location: at(),
    };
    assert_eq!(w.run(&no_writes, op(OpClass::Set, &["k"])), down());
    assert_eq!(w.run(&no_writes, op(OpClass::Get, &["k"])), ok("stored"));
    assert_eq!(w.failovers.get(), 1, "only the get failed over");
}

#[test]
fn deletes_reach_the_primary_and_every_gutter() {
    let w = world(&[("a", ok("deleted")), ("g", ok("not found"))]);
    let route = failover(vec![pool("a"), gutter("g")]);
    assert_eq!(w.run(&route, op(OpClass::Delete, &["k"])), ok("deleted"));
    assert_eq!(w.sent(), ["g k ttl=10", "a k ttl=3600"]);
    assert_eq!(w.failovers.get(), 0);
}

#[test]
fn a_multi_key_request_takes_one_route_only() {
    let w = world(&[("a", ok("x")), ("b", ok("y"))]);
    let route = Route::Prefix {
        prefixes: vec![("user:".into(), pool("a")), ("vip:".into(), pool("a"))],
        default: Some(Box::new(pool("b"))),
        location: at(),
    };
    assert_eq!(
        w.run(&route, op(OpClass::Get, &["user:1", "vip:2"])),
        ok("x")
    );
    let refused = w
        .run(&route, op(OpClass::Get, &["user:1", "other"]))
        .unwrap_err();
    assert!(
        refused
            .why
            .contains("take different routes ('user:1' and 'other')"),
        "{refused:?}"
    );
    assert_eq!(
        w.sent(),
        ["a user:1,vip:2 ttl=3600"],
        "nothing sent for the refused one"
    );
}

#[test]
fn all_sync_all_ok_answers_the_first_failure() {
    let w = world(&[("a", ok("ok")), ("b", ok("-ERR no")), ("c", ok("ok"))]);
    let route = |reply| Route::AllSync {
        children: vec![pool("a"), pool("b"), pool("c")],
        reply,
        location: at(),
    };
    assert_eq!(
        w.run(&route(AllSyncReply::AllOk), op(OpClass::Set, &["k"])),
        ok("-ERR no")
    );
    assert_eq!(
        w.run(&route(AllSyncReply::First), op(OpClass::Set, &["k"])),
        ok("ok")
    );
    assert_eq!(w.sent().len(), 6);
}

#[test]
fn warm_up_reads_warm_on_a_miss_and_fills_cold() {
    let w = world(&[("cold", ok("nil")), ("warm", ok("value"))]);
    let route = Route::WarmUp {
        cold: Box::new(pool("cold")),
        warm: Box::new(pool("warm")),
        exptime: Duration::from_secs(60),
        location: at(),
    };
    // Reread after the fill: the client gets cold's answer (here still the scripted miss).
    assert_eq!(w.run(&route, op(OpClass::Get, &["k"])), ok("nil"));
    assert_eq!(
        w.sent(),
        [
            "cold k ttl=3600",
            "warm k ttl=3600",
            "cold k ttl=60",
            "cold k ttl=3600"
        ]
    );
    w.log.borrow_mut().clear();
    assert_eq!(w.run(&route, op(OpClass::Set, &["k"])), ok("nil"));
    assert_eq!(w.sent(), ["cold k ttl=3600"], "writes go to cold only");
}
