//! Reconciliation sessions between two in-memory replicas of a 100,000-operation log (the
//! 1,000,000-operation runs with bytes and round trips are `ues bench sync`): identical,
//! 100 recent differences, 100 scattered differences. Each iteration rebuilds the lagging
//! replica outside the timed part and times one whole session (both sides, one thread).
#![allow(missing_docs)] // criterion_group! generates undocumented items

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ues_sync::recon::{Scope, ScopeCache, SyncConfig, run_session};
use ues_sync::sim::{Missing, generate, replicas};

fn sessions(c: &mut Criterion) {
    let g = generate(100_000, 1, 3, 7);
    let scope = Scope::new(g.dids.iter().cloned());
    let mut group = c.benchmark_group("sync_100k");
    group.sample_size(10);
    for (name, missing) in [
        ("identical", Missing::Nothing),
        ("recent_100", Missing::Recent(100)),
        ("scattered_100", Missing::Scattered(100)),
    ] {
        group.bench_function(name, |bench| {
            bench.iter_batched(
                || replicas(&g, missing, 11),
                |(mut a, mut b, _)| {
                    let mut cache = ScopeCache::default();
                    cache.insert(scope.clone());
                    let s = run_session(&mut a, &mut b, scope.clone(), SyncConfig::default(), &mut cache, 10_000)
                        .expect("session");
                    assert!(s.round_trips <= 4);
                    (a, b)
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, sessions);
criterion_main!(benches);
