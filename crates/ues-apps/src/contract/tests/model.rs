//! A key-value contract's write set equals a model's, for random operations over random state.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::{Kv, code_key, wasm};
use crate::contract::{Entry, Limits, Sandbox};

/// `execute` takes a JSON string of operations, each ending in `;`: `w<key>=<value>` writes,
/// `x<key>` removes, `c<from>><to>` copies what `from` reads (through this call's own writes)
/// to `to`, removing `to` if `from` is absent.
const KV: &str = r#"(module
  (import "ues" "db_read" (func $db_read (param i32) (result i32)))
  (import "ues" "db_write" (func $db_write (param i32 i32)))
  (import "ues" "db_remove" (func $db_remove (param i32)))
  (memory (export "memory") 2)
  ;; runtime
  ;; the first position from $p holding $stop, or $end
  (func $until (param $p i32) (param $end i32) (param $stop i32) (result i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (br_if $done (i32.eq (i32.load8_u (local.get $p)) (local.get $stop)))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next)))
    (local.get $p))
  (func $span (param $from i32) (param $to i32) (result i32)
    (call $region (local.get $from) (i32.sub (local.get $to) (local.get $from))))
  (func (export "execute") (param $env i32) (param $info i32) (param $msg i32) (result i32)
    (local $p i32) (local $end i32) (local $op i32) (local $k i32) (local $ke i32) (local $v i32) (local $ve i32)
    (local $r i32)
    ;; inside the quotes of the JSON string
    (local.set $p (i32.add (i32.load (local.get $msg)) (i32.const 1)))
    (local.set $end (i32.sub (i32.add (i32.load (local.get $msg)) (i32.load offset=8 (local.get $msg))) (i32.const 1)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $op (i32.load8_u (local.get $p)))
        (local.set $k (i32.add (local.get $p) (i32.const 1)))
        (if (i32.eq (local.get $op) (i32.const 119))
          (then
            (local.set $ke (call $until (local.get $k) (local.get $end) (i32.const 61)))
            (local.set $v (i32.add (local.get $ke) (i32.const 1)))
            (local.set $ve (call $until (local.get $v) (local.get $end) (i32.const 59)))
            (call $db_write (call $span (local.get $k) (local.get $ke)) (call $span (local.get $v) (local.get $ve)))
            (local.set $p (i32.add (local.get $ve) (i32.const 1)))
            (br $next)))
        (if (i32.eq (local.get $op) (i32.const 120))
          (then
            (local.set $ke (call $until (local.get $k) (local.get $end) (i32.const 59)))
            (call $db_remove (call $span (local.get $k) (local.get $ke)))
            (local.set $p (i32.add (local.get $ke) (i32.const 1)))
            (br $next)))
        (local.set $ke (call $until (local.get $k) (local.get $end) (i32.const 62)))
        (local.set $v (i32.add (local.get $ke) (i32.const 1)))
        (local.set $ve (call $until (local.get $v) (local.get $end) (i32.const 59)))
        (local.set $r (call $db_read (call $span (local.get $k) (local.get $ke))))
        (if (local.get $r)
          (then (call $db_write (call $span (local.get $v) (local.get $ve)) (local.get $r)))
          (else (call $db_remove (call $span (local.get $v) (local.get $ve)))))
        (local.set $p (i32.add (local.get $ve) (i32.const 1)))
        (br $next)))
    (call $region (i32.const 16) (i32.const 11)))
)"#;

#[derive(Debug, Clone)]
enum Op {
    Write(String, String),
    Remove(String),
    Copy(String, String),
}

fn key() -> impl Strategy<Value = String> {
    "[a-d]{1,2}"
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (key(), "[a-z0-9]{0,6}").prop_map(|(k, v)| Op::Write(k, v)),
        key().prop_map(Op::Remove),
        (key(), key()).prop_map(|(from, to)| Op::Copy(from, to)),
    ]
}

fn encode(ops: &[Op]) -> Value {
    let text: String = ops
        .iter()
        .map(|op| match op {
            Op::Write(k, v) => format!("w{k}={v};"),
            Op::Remove(k) => format!("x{k};"),
            Op::Copy(from, to) => format!("c{from}>{to};"),
        })
        .collect();
    json!(text)
}

/// The write set the operations should leave over `state`.
fn model(state: &Kv, ops: &[Op]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let mut overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    for op in ops {
        match op {
            Op::Write(k, v) => {
                overlay.insert(k.as_bytes().to_vec(), Some(v.as_bytes().to_vec()));
            }
            Op::Remove(k) => {
                overlay.insert(k.as_bytes().to_vec(), None);
            }
            Op::Copy(from, to) => {
                let from = from.as_bytes();
                let value = overlay.get(from).cloned().unwrap_or_else(|| state.get(from).cloned());
                overlay.insert(to.as_bytes().to_vec(), value);
            }
        }
    }
    overlay.into_iter().collect()
}

fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| Sandbox::new(Limits::default()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn write_set_matches_the_model(
        state in proptest::collection::btree_map(key().prop_map(String::into_bytes), "[a-z]{0,4}".prop_map(String::into_bytes), 0..6),
        ops in proptest::collection::vec(op(), 0..24),
    ) {
        let bytes = wasm(&KV.replace("  ;; runtime\n", super::RUNTIME));
        let msg = encode(&ops);
        let call = || sandbox().call(code_key(&bytes), &bytes, Entry::Execute, &json!({}), None, &msg, &state);
        let outcome = call().unwrap();
        prop_assert_eq!(&outcome.writes, &model(&state, &ops));
        prop_assert_eq!(outcome.data, Value::Null);
        prop_assert_eq!(call().unwrap().fuel_used, outcome.fuel_used);
    }
}
