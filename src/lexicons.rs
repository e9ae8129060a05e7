//! The Lexicon documents built into the binary: every `*.json` under `lexicons/` at build time
//! (listed by `build.rs`).

/// Every embedded document, as JSON text.
pub(crate) const EMBEDDED: &[&str] = include!(concat!(env!("OUT_DIR"), "/lexicons.rs"));
