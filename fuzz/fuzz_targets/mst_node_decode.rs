//! MST node decoding: never panics; an accepted node re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ues_ipld::mst::{decode_node, encode_node};

fuzz_target!(|data: &[u8]| {
    if let Ok(node) = decode_node(data, 1024) {
        let again = encode_node(
            node.left.as_ref(),
            node.entries.iter().map(|(k, v, r)| (k.as_slice(), v, r.as_ref())),
        );
        assert_eq!(again, data, "accepted a non-canonical node");
    }
});
