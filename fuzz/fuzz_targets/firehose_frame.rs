//! Frames of another server's firehose (anyone's, up to the reader's bounds): reading one
//! never panics, a commit read from one is checked without panicking whatever its blocks,
//! operations and CIDs, and a check that passes names the commit's own revision.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ues_sync::repo::crypto::{KeyType, Keypair, PublicKey};
use ues_sync::repo::firehose::{Frame, FrameLimits, decode_frame, verify_commit};

fuzz_target!(|data: &[u8]| {
    let Ok(Frame::Commit(ev)) = decode_frame(data, &FrameLimits::default()) else { return };
    static KEY: OnceLock<PublicKey> = OnceLock::new();
    let key = KEY.get_or_init(|| Keypair::generate(KeyType::P256).public());
    if let Ok(v) = verify_commit(&ev, key, None) {
        assert_eq!(v.rev, ev.rev);
        assert_eq!(v.records.len(), ev.ops.len());
    }
});
