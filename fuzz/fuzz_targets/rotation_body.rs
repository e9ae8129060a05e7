//! Key-rotation bodies as they arrive with a rotation entry: decoding any bytes never panics,
//! stays within its bounds, and a body that decodes is canonical (re-encodes to the same
//! bytes) and opens for no device it was not sealed to.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ues_sync::rotation::{MAX_ROTATION_BYTES, MAX_SEALS, RotationBody};

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = RotationBody::decode(data) {
        assert!(data.len() <= MAX_ROTATION_BYTES);
        assert!(b.seals.len() <= MAX_SEALS);
        assert_eq!(b.encode().1, data, "a decoded body is canonical");
        let stranger = ed25519_dalek::SigningKey::from_bytes(&[0x5a; 32]);
        if !b.seals.contains_key(&stranger.verifying_key().to_bytes()) {
            assert!(b.open(&stranger).is_none());
        }
    }
});
