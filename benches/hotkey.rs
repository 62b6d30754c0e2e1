//! Per-request cost of hot-key detection: recording a key in a worker's sampler, and checking
//! the published hot set, on a Zipf-like key stream.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use kvrouter::hotkey::detector::{Detector, Sampler};
use std::hint::black_box;

fn keys() -> Vec<Bytes> {
    let mut rng = fastrand::Rng::with_seed(7);
    (0..10_000)
        .map(|_| {
            // Skewed: small ranks far more often.
            let r = (rng.f64().powf(3.0) * 100_000.0) as u64;
            Bytes::from(format!("user:{r}:profile"))
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let keys = keys();
    // Workers drain every 100 ms; at 100k requests/s that is every 10k records.
    let mut s = Sampler::new(2000.0, 1);
    let mut i = 0;
    c.bench_function("sampler.record (every access)", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            s.record(black_box(&keys[i]));
            if i == 0 {
                black_box(s.drain());
            }
        })
    });
    let mut s8 = Sampler::new(2000.0, 8);
    c.bench_function("sampler.record (1 in 8)", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            s8.record(black_box(&keys[i]));
            if i == 0 {
                black_box(s8.drain());
            }
        })
    });
    let d = Detector::new(2000.0);
    c.bench_function("detector.is_hot (none hot)", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(d.is_hot(&keys[i]))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
