//! Log entries (operations, device authorizations): decoding never panics, and whatever it
//! accepts re-encodes to the same bytes (one encoding per entry, so one id).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ues_sync::Entry;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = Entry::decode(data) {
        assert_eq!(e.encode(), data, "accepted a non-canonical entry");
    }
});
