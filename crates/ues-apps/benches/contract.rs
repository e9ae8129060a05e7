//! Contract sandbox costs: admitting a module, a no-op call on a cached module (a fresh store
//! and instance each time), the allowlist hook, and a guest loop burning a whole call's fuel.
//!
//! In the scratch crate the library is `contract_lab`; in ues-apps it is `ues_apps`.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use sha2::{Digest, Sha256};
use ues_apps::contract::{Entry, Limits, Sandbox};

const NOOP: &str = r#"(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (data (i32.const 16) "{\"ok\":null}")
  (func $region (param $ptr i32) (param $len i32) (result i32)
    (local $r i32)
    (local.set $r (global.get $heap))
    (global.set $heap (i32.add (local.get $r) (i32.const 12)))
    (i32.store (local.get $r) (local.get $ptr))
    (i32.store offset=4 (local.get $r) (local.get $len))
    (i32.store offset=8 (local.get $r) (local.get $len))
    (local.get $r))
  (func (export "allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (local.get $n)))
    (call $region (local.get $p) (local.get $n)))
  (func (export "deallocate") (param i32))
  (func (export "ues_abi_1"))
  (func (export "execute") (param i32 i32 i32) (result i32) (call $region (i32.const 16) (i32.const 11)))
  (func (export "query") (param i32 i32) (result i32) (loop $l (br $l)) (i32.const 0))
)"#;

fn contracts_dir() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    [manifest.join("../../contracts"), manifest.join("contracts")]
        .into_iter()
        .find(|dir| dir.join("allowlist.wat").is_file())
        .expect("a contracts/ directory")
}

fn bench(c: &mut Criterion) {
    let sandbox = Sandbox::new(Limits::default());
    let state = BTreeMap::<Vec<u8>, Vec<u8>>::new();
    let (env, info) = (json!({ "time": 1 }), json!({ "sender": "did:plc:admin" }));

    let noop = wat::parse_str(NOOP).expect("valid WAT");
    let noop_key: [u8; 32] = Sha256::digest(&noop).into();
    c.bench_function("contract/noop_call_cached", |b| {
        b.iter(|| sandbox.call(noop_key, &noop, Entry::Execute, &env, Some(&info), &json!({}), &state).unwrap())
    });

    let allowlist = wat::parse_file(contracts_dir().join("allowlist.wat")).expect("valid WAT");
    let allowlist_key: [u8; 32] = Sha256::digest(&allowlist).into();
    c.bench_function("contract/check_allowlist", |b| b.iter(|| sandbox.check(black_box(&allowlist)).unwrap()));
    let msg = json!({ "allowed": ["did:plc:alice", "did:plc:bob"] });
    let written = sandbox.call(allowlist_key, &allowlist, Entry::Instantiate, &env, Some(&info), &msg, &state).unwrap();
    let listed: BTreeMap<Vec<u8>, Vec<u8>> =
        written.writes.into_iter().map(|(k, v)| (k, v.expect("instantiate only writes"))).collect();
    let transfer = json!({ "from": "did:plc:alice", "to": "did:plc:bob", "amount": "10" });
    c.bench_function("contract/allowlist_on_transfer", |b| {
        b.iter(|| {
            sandbox.call(allowlist_key, &allowlist, Entry::OnTransfer, &env, Some(&info), &transfer, &listed).unwrap()
        })
    });

    let mut slow = c.benchmark_group("contract/slow");
    slow.sample_size(10);
    slow.bench_function("fuel_loop_10M", |b| {
        b.iter(|| sandbox.call(noop_key, &noop, Entry::Query, &env, None, &json!({}), &state).unwrap_err())
    });
    slow.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
