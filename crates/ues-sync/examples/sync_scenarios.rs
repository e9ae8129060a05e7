//! Runs the reconciliation scenarios at a chosen size and prints one JSON-ish line each:
//! `cargo run --release -p ues-sync --example sync_scenarios -- 100000`.

use ues_sync::recon::SyncConfig;
use ues_sync::sim::{Missing, generate, replicas, run};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let t = std::time::Instant::now();
    let g = generate(n, 1, 3, 7);
    eprintln!("generated {} entries in {:?}", g.entries.len(), t.elapsed());
    for (name, missing) in [
        ("identical", Missing::Nothing),
        ("recent_100", Missing::Recent(100)),
        ("scattered_100", Missing::Scattered(100)),
        ("recent_100_both_sides", Missing::RecentBoth(100)),
        ("scattered_100_both_sides", Missing::ScatteredBoth(100)),
    ] {
        let t = std::time::Instant::now();
        let (mut a, mut b, d) = replicas(&g, missing, 11);
        eprintln!("loaded in {:?}", t.elapsed());
        let r = run(name, &g, &mut a, &mut b, d, SyncConfig::default(), 50.0);
        println!("{r:?}");
    }
}
