//! Head announcements from gossip: verifying any bytes never panics, and what verifies is
//! within the size bound and verifies the same way again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ues_sync::head::{Head, MAX_HEAD_BYTES};

fuzz_target!(|data: &[u8]| {
    if let Ok(head) = Head::verify(data) {
        assert!(data.len() <= MAX_HEAD_BYTES);
        assert_eq!(Head::verify(data).ok(), Some(head));
    }
});
