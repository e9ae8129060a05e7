//! Live pushes from a hostile peer: decoding any bytes never panics, and applying what decodes
//! to a replica stores only genuine entries (signed by the generated devices), holding at most
//! the bounded pending bytes for the rest.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ues_sync::Replica;
use ues_sync::hlc::Hlc;
use ues_sync::live;
use ues_sync::replica::MAX_PENDING_BYTES;
use ues_sync::sim::{Generated, generate};

fn log() -> &'static Generated {
    static G: OnceLock<Generated> = OnceLock::new();
    G.get_or_init(|| generate(40, 1, 2, 1))
}

fuzz_target!(|data: &[u8]| {
    let g = log();
    if let Ok(entries) = live::decode(data) {
        assert!(entries.len() <= live::MAX_LIVE_ENTRIES);
    }
    let end = g.end_ms;
    let mut r = Replica::in_memory(g.keys.clone(), Hlc::with_physical(60_000, move || end), None);
    r.apply_verified(g.entries.iter().take(20).cloned());
    let before = r.len();
    let peers = [0u8, 1, 2];
    if let Ok(relayed) = live::receive(&mut r, data, &0u8, &peers) {
        for (_, targets) in &relayed.forward {
            assert!(!targets.contains(&0), "never echoed to its sender");
        }
    }
    assert!(r.len() <= before + g.entries.len());
    assert!(r.pending_bytes() <= MAX_PENDING_BYTES);
});
