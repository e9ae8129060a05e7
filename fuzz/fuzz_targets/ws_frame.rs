//! A `/ws` client frame as the gateway reads it: a text frame is JSON; a binary frame is
//! DAG-CBOR, turned into its JSON form and read as the same message. Whatever the bytes, this
//! never panics and never recurses past the data model's depth.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ues_ipld::dagcbor::decode_atproto;
use ues_ipld::json::{from_json, to_json};

fuzz_target!(|data: &[u8]| {
    // Binary frame: DAG-CBOR → JSON text → JSON value, as the socket does before parsing.
    if let Ok(value) = decode_atproto(data) {
        let text = to_json(&value).to_string();
        if let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) {
            let _ = from_json(&json);
        }
    }
    // Text frame: JSON, then (for DAG-CBOR sockets) the JSON form turned back into IPLD.
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(json) = serde_json::from_str::<serde_json::Value>(text)
    {
        let _ = from_json(&json);
    }
});
