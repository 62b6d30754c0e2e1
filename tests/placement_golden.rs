//! Placement against golden vectors observed from a real nutcracker 0.5.0.
//!
//! Why: kvrouter must put every key on the server twemproxy would, so that a fleet can switch
//! proxies without cache misses. `tests/data/placement_golden.tsv` records where nutcracker put
//! random keys (non-ASCII bytes and hash tags included) for every hash x {ketama, modula} over
//! several server layouts; `scripts/gen_placement_golden.py` regenerates it. This test needs no
//! processes.

use std::collections::BTreeMap;

use kvrouter::routing::{DistributionKind, HashKind, Node, Placement};

struct Layout {
    hash_tag: Option<[u8; 2]>,
    nodes: Vec<Node>,
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn placement_matches_nutcracker_golden_vectors() {
    let text = include_str!("data/placement_golden.tsv");
    let mut layouts: BTreeMap<String, Layout> = BTreeMap::new();
    let mut placements: BTreeMap<(String, String, String), Placement> = BTreeMap::new();
    let mut checked = 0usize;
    let mut failures = Vec::new();
    let mut failed_combos: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_combo: BTreeMap<(String, String, String), usize> = BTreeMap::new();

    for (lineno, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        match f[0] {
            "layout" => {
                let tag = match f[2] {
                    "-" => None,
                    t => Some(<[u8; 2]>::try_from(t.as_bytes()).expect("two-byte hash tag")),
                };
                layouts.insert(
                    f[1].to_string(),
                    Layout {
                        hash_tag: tag,
                        nodes: Vec::new(),
                    },
                );
            }
            "server" => layouts.get_mut(f[1]).unwrap().nodes.push(Node {
                name: f[2].to_string(),
                weight: f[3].parse().unwrap(),
            }),
            "key" => {
                let (layout, hash, dist) = (f[1], f[2], f[3]);
                let l = &layouts[layout];
                let combo = (layout.to_string(), hash.to_string(), dist.to_string());
                let p = placements.entry(combo.clone()).or_insert_with(|| {
                    Placement::new(
                        DistributionKind::from_name(dist).expect("distribution"),
                        HashKind::from_name(hash).expect("hash"),
                        l.hash_tag,
                        &l.nodes,
                        &vec![true; l.nodes.len()],
                    )
                });
                let key = unhex(f[4]);
                let got = p.server_for(&key).map(|i| l.nodes[i].name.as_str());
                *per_combo.entry(combo).or_default() += 1;
                checked += 1;
                if got != Some(f[5]) {
                    *failed_combos
                        .entry(format!("{layout}/{hash}/{dist}"))
                        .or_default() += 1;
                    failures.push(format!(
                        "line {}: {layout} {hash} {dist} key {} -> {got:?}, nutcracker: {}",
                        lineno + 1,
                        f[4],
                        f[5]
                    ));
                }
            }
            other => panic!("line {}: unknown record {other:?}", lineno + 1),
        }
    }

    // Every hash x {ketama, modula} is covered for every layout.
    for layout in layouts.keys() {
        for h in HashKind::ALL {
            for d in ["ketama", "modula"] {
                let n = per_combo
                    .get(&(layout.clone(), h.name().to_string(), d.to_string()))
                    .copied()
                    .unwrap_or(0);
                assert!(
                    n >= 50,
                    "layout {layout} {} {d}: only {n} vectors",
                    h.name()
                );
            }
        }
    }
    assert!(checked > 0);
    assert!(
        failures.is_empty(),
        "{} of {checked} vectors differ from nutcracker ({failed_combos:?}), e.g.:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}
