//! Reconciliation messages from a hostile peer: a responder fed any bytes as a Hello, and an
//! initiator fed any bytes as the reply, never panic, and every entry they store verifies.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ues_sync::Replica;
use ues_sync::hlc::Hlc;
use ues_sync::recon::{Scope, ScopeCache, Session, SyncConfig};
use ues_sync::sim::{Generated, generate};

fn log() -> &'static Generated {
    static G: OnceLock<Generated> = OnceLock::new();
    G.get_or_init(|| generate(40, 1, 2, 1))
}

fn replica(g: &Generated, take: usize) -> Replica {
    let end = g.end_ms;
    let mut r = Replica::in_memory(g.keys.clone(), Hlc::with_physical(60_000, move || end), None);
    r.apply_verified(g.entries.iter().take(take).cloned());
    r
}

fuzz_target!(|data: &[u8]| {
    let g = log();
    let scope = Scope::new(g.dids.iter().cloned());
    let cfg = SyncConfig { leaf: 2, first_parts: 4, ..SyncConfig::default() };
    let mut b = replica(g, 30);
    let mut cache = ScopeCache::default();
    cache.insert(scope.clone());
    let _ = Session::respond(&mut b, &mut cache, cfg, data);
    let mut a = replica(g, 20);
    let before = a.len();
    let (mut s, _hello) = Session::initiate(&a, scope, cfg, false);
    let _ = s.receive(&mut a, data);
    // Only genuine entries (signed by the generated devices) can have been added.
    assert!(a.len() <= before + g.entries.len());
});
