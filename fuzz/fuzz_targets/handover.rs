//! Account hand-overs from a peer: decoding any bytes never panics, and a hand-over that
//! decodes carries only authorizations of the account signed by its key, and round-trips.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ues_sync::handover::{Handover, MAX_HANDOVER_AUTHS};
use ues_sync::repo::syntax::Did;

fn did() -> &'static Did {
    static D: OnceLock<Did> = OnceLock::new();
    D.get_or_init(|| Did::new("did:plc:ewvi7nxzyoun6zhxrhs64oiz").expect("a valid DID"))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Handover::decode(data, did()) {
        assert!(h.auths.len() <= MAX_HANDOVER_AUTHS);
        let again = Handover::decode(&h.encode(), did()).expect("a decoded hand-over re-encodes");
        assert_eq!(again.auths, h.auths);
        assert_eq!(again.key.public(), h.key.public());
    }
});
