//! Random TID-shaped record keys shared by the MST bench and the phase-timing example.

const B32: &[u8; 32] = b"234567abcdefghijklmnopqrstuvwxyz";

/// `n` keys `app.bsky.feed.post/<13 base32-sortable chars>`, deterministic per seed.
pub(crate) fn keys(n: usize, seed: u64) -> Vec<String> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut v = x;
            let tid: String = (0..13)
                .map(|_| {
                    let c = B32[(v & 31) as usize] as char;
                    v >>= 5;
                    c
                })
                .collect();
            format!("app.bsky.feed.post/{tid}")
        })
        .collect()
}
