//! Blob copy messages from a peer: a piece request and an answer. Decoding any bytes never
//! panics; whatever decodes stays within its bounds and re-encodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ues_sync::blobcopy::{Answer, MAX_PIECE, MAX_REQUEST, PieceRequest};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = PieceRequest::decode(data) {
        assert!(data.len() <= MAX_REQUEST);
        assert_eq!(PieceRequest::decode(&r.encode()).expect("a decoded request re-encodes"), r);
    }
    if let Ok(a) = Answer::decode(data) {
        if let Answer::Piece { data, .. } = &a {
            assert!(data.len() <= MAX_PIECE);
        }
        assert_eq!(Answer::decode(&a.encode()).expect("a decoded answer re-encodes"), a);
    }
});
