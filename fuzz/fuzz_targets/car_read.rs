//! CAR reading: never panics, never hands out a block that does not match its CID.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ues_ipld::car::{CarLimits, CarReader};
use ues_ipld::storage::verify_block;

fuzz_target!(|data: &[u8]| {
    let limits = CarLimits { max_header: 4096, max_block: 64 * 1024 };
    if let Ok(reader) = CarReader::with_limits(data, limits) {
        for block in reader.take(10_000) {
            match block {
                Ok((cid, bytes)) => assert!(verify_block(&cid, &bytes).is_ok()),
                Err(_) => break,
            }
        }
    }
});
