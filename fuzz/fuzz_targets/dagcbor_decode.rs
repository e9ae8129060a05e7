//! Strict DAG-CBOR decoding: never panics, and whatever it accepts re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ues_ipld::dagcbor::{DecodeOptions, decode, encode};

fuzz_target!(|data: &[u8]| {
    for allow_floats in [false, true] {
        let opts = DecodeOptions { max_depth: 64, allow_floats };
        if let Ok(v) = decode(data, &opts) {
            assert_eq!(encode(&v), data, "accepted non-canonical input");
        }
    }
});
