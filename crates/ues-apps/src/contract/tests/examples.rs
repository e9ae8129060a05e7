//! The example contracts in `contracts/` do what their headers say.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{Value, json};

use super::{Deployed, contracts_dir, env_at, sent_by, wasm};
use crate::contract::{ContractError, Entry, Limits, Sandbox};

fn contract(name: &str) -> Vec<u8> {
    let path = contracts_dir().join(name);
    wasm(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

const ADMIN: &str = "did:plc:admin";
const ALICE: &str = "did:plc:alice";
const BOB: &str = "did:plc:bob";
const CAROL: &str = "did:web:carol.example";

fn transfer(from: &str, to: &str, amount: u64) -> Value {
    json!({ "from": from, "to": to, "amount": amount.to_string() })
}

fn allowlist(sandbox: &Sandbox) -> Deployed<'_> {
    let mut list = Deployed::new(sandbox, contract("allowlist.wat"));
    let reply =
        list.run(Entry::Instantiate, &env_at(1), Some(&sent_by(ADMIN)), &json!({ "allowed": [ALICE, BOB] })).unwrap();
    assert_eq!(reply, json!({ "allowed": 2 }));
    list
}

fn allows(list: &Deployed<'_>, to: &str) -> Value {
    list.call(Entry::OnTransfer, &env_at(2), Some(&sent_by(ALICE)), &transfer(ALICE, to, 5)).unwrap().data
}

#[test]
fn allowlist_instantiate_stores_the_admin_and_each_did() {
    let sandbox = Sandbox::new(Limits::default());
    let list = allowlist(&sandbox);
    let keys: Vec<&[u8]> = list.state.keys().map(Vec::as_slice).collect();
    assert_eq!(keys, [b"a:did:plc:alice".as_slice(), b"a:did:plc:bob", b"admin"]);
    assert_eq!(list.state[b"admin".as_slice()], ADMIN.as_bytes());
    assert_eq!(list.query(&json!({ "admin": {} })).unwrap(), json!({ "admin": ADMIN }));
}

#[test]
fn allowlist_hook_allows_only_listed_recipients() {
    let sandbox = Sandbox::new(Limits::default());
    let list = allowlist(&sandbox);
    assert_eq!(allows(&list, BOB), json!({ "allow": true }));
    assert_eq!(allows(&list, CAROL), json!({ "allow": false, "reason": "recipient is not on the allowlist" }));
    // the optional token id changes nothing
    let with_token = json!({ "from": ALICE, "to": BOB, "amount": 1, "tokenId": "t1" });
    let reply = list.call(Entry::OnTransfer, &env_at(2), Some(&sent_by(ALICE)), &with_token).unwrap();
    assert_eq!(reply.data, json!({ "allow": true }));
    assert!(reply.writes.is_empty(), "the hook only reads");
    assert_eq!(
        list.call(Entry::OnTransfer, &env_at(2), None, &json!({ "from": ALICE })),
        Err(refused("msg.to must be a string"))
    );
}

fn refused(reason: &str) -> ContractError {
    ContractError::Refused(reason.into())
}

#[test]
fn allowlist_admin_edits_and_others_are_refused() {
    let sandbox = Sandbox::new(Limits::default());
    let mut list = allowlist(&sandbox);
    let allow_carol = json!({ "allow": CAROL });
    assert_eq!(
        list.run(Entry::Execute, &env_at(3), Some(&sent_by(ALICE)), &allow_carol),
        Err(refused("only the admin may change the allowlist"))
    );
    assert_eq!(allows(&list, CAROL)["allow"], false);

    assert_eq!(list.run(Entry::Execute, &env_at(3), Some(&sent_by(ADMIN)), &allow_carol), Ok(json!({})));
    assert_eq!(allows(&list, CAROL), json!({ "allow": true }));

    let deny_bob = json!({ "deny": BOB });
    let outcome = list.call(Entry::Execute, &env_at(4), Some(&sent_by(ADMIN)), &deny_bob).unwrap();
    assert_eq!(outcome.writes, vec![(b"a:did:plc:bob".to_vec(), None)]);
    list.run(Entry::Execute, &env_at(4), Some(&sent_by(ADMIN)), &deny_bob).unwrap();
    assert_eq!(allows(&list, BOB)["allow"], false);
    assert_eq!(list.query(&json!({ "allowed": BOB })), Ok(json!({ "allowed": false })));
    assert_eq!(list.query(&json!({ "allowed": CAROL })), Ok(json!({ "allowed": true })));

    assert_eq!(
        list.run(Entry::Execute, &env_at(5), Some(&sent_by(ADMIN)), &json!({ "grant": CAROL })),
        Err(refused("unknown message"))
    );
    assert_eq!(
        list.run(Entry::Execute, &env_at(5), Some(&sent_by(ADMIN)), &json!({ "allow": 7 })),
        Err(refused("the value to allow or deny must be a string"))
    );
    assert_eq!(list.run(Entry::Execute, &env_at(5), None, &allow_carol), Err(refused("info.sender must be a string")));
}

#[test]
fn allowlist_refuses_a_malformed_list() {
    let sandbox = Sandbox::new(Limits::default());
    let list = Deployed::new(&sandbox, contract("allowlist.wat"));
    for msg in [json!({ "allowed": ALICE }), json!({ "allowed": [ALICE, 3] }), json!({})] {
        assert_eq!(
            list.call(Entry::Instantiate, &env_at(1), Some(&sent_by(ADMIN)), &msg),
            Err(refused("msg.allowed must be an array of strings")),
            "{msg}"
        );
    }
    let empty = list.call(Entry::Instantiate, &env_at(1), Some(&sent_by(ADMIN)), &json!({ "allowed": [] })).unwrap();
    assert_eq!(empty.data, json!({ "allowed": 0 }));
    assert_eq!(empty.writes, vec![(b"admin".to_vec(), Some(ADMIN.as_bytes().to_vec()))]);
    assert_eq!(list.query(&json!({ "admin": {} })), Err(refused("not instantiated")));
}

/// The schedule the vesting contract implements, in u128.
fn vested_model(total: u64, start: u64, cliff: u64, duration: u64, time: u64) -> u64 {
    if time < start + cliff {
        0
    } else if time >= start + duration {
        total
    } else {
        (u128::from(total) * u128::from(time - start) / u128::from(duration)) as u64
    }
}

const BEN: &str = "did:plc:beneficiary";

fn vesting(sandbox: &Sandbox, total: Value, start: u64, cliff: u64, duration: u64) -> Deployed<'_> {
    let mut schedule = Deployed::new(sandbox, contract("vesting.wat"));
    let msg = json!({ "beneficiary": BEN, "total": total, "start": start, "cliff": cliff, "duration": duration });
    assert_eq!(schedule.run(Entry::Instantiate, &env_at(0), Some(&sent_by(ADMIN)), &msg), Ok(json!({})));
    schedule
}

fn vested_at(schedule: &Deployed<'_>, time: u64) -> Value {
    schedule.query(&json!({ "vested": { "time": time } })).unwrap()["vested"].clone()
}

#[test]
fn vesting_is_linear_after_the_cliff_and_rounds_down() {
    let sandbox = Sandbox::new(Limits::default());
    let schedule = vesting(&sandbox, json!(1000), 1000, 100, 1000);
    for (time, expected) in
        [(0, "0"), (999, "0"), (1099, "0"), (1100, "100"), (1500, "500"), (1999, "999"), (2000, "1000"), (9000, "1000")]
    {
        assert_eq!(vested_at(&schedule, time), json!(expected), "at {time}");
    }
    let thirds = vesting(&sandbox, json!("10"), 0, 0, 3);
    assert_eq!(vested_at(&thirds, 1), json!("3"));
    assert_eq!(vested_at(&thirds, 2), json!("6"));
    assert_eq!(vested_at(&thirds, 3), json!("10"));
}

#[test]
fn vesting_matches_the_schedule_up_to_the_largest_amounts() {
    let sandbox = Sandbox::new(Limits::default());
    let max_duration = u64::from(u32::MAX);
    for (total, duration) in [(10, 4), (1_000_003, 7), (u64::MAX, max_duration), (u64::MAX - 1, max_duration - 2)] {
        let schedule = vesting(&sandbox, json!(total.to_string()), 5, 1, duration);
        let times = [5, 6, 7, 5 + duration / 3, 5 + duration / 2, 5 + duration - 1, 5 + duration, u64::MAX];
        for time in times {
            let expected = vested_model(total, 5, 1, duration, time);
            assert_eq!(vested_at(&schedule, time), json!(expected.to_string()), "{total} over {duration} at {time}");
        }
    }
}

#[test]
fn vesting_release_records_what_was_released() {
    let sandbox = Sandbox::new(Limits::default());
    let mut schedule = vesting(&sandbox, json!(1000), 1000, 100, 1000);
    let release = json!({ "release": {} });
    let mut release_at = |time: u64| schedule.run(Entry::Execute, &env_at(time), Some(&sent_by(BEN)), &release);
    assert_eq!(release_at(1050), Ok(json!({ "released": "0" })));
    assert_eq!(release_at(1500), Ok(json!({ "released": "500" })));
    assert_eq!(release_at(1500), Ok(json!({ "released": "0" })));
    assert_eq!(release_at(1200), Ok(json!({ "released": "0" })), "a clock behind the last release");
    assert_eq!(release_at(1700), Ok(json!({ "released": "200" })));
    assert_eq!(release_at(2500), Ok(json!({ "released": "300" })));
    assert_eq!(release_at(3000), Ok(json!({ "released": "0" })));
    assert_eq!(schedule.state[b"r".as_slice()], 1000u64.to_le_bytes());
    assert_eq!(
        schedule.run(Entry::Execute, &json!({}), Some(&sent_by(BEN)), &release),
        Err(refused("env.time is required"))
    );
}

#[test]
fn vesting_hook_bounds_the_beneficiarys_transfers() {
    let sandbox = Sandbox::new(Limits::default());
    let mut schedule = vesting(&sandbox, json!(1000), 1000, 100, 1000);
    let mut send = |time: u64, from: &str, amount: u64| {
        schedule.run(Entry::OnTransfer, &env_at(time), Some(&sent_by(from)), &transfer(from, ALICE, amount))
    };
    let refusal = json!({ "allow": false, "reason": "amount exceeds the vested balance" });
    assert_eq!(send(1050, BEN, 1), Ok(refusal.clone()), "before the cliff");
    assert_eq!(send(1300, BEN, 200), Ok(json!({ "allow": true })));
    assert_eq!(send(1300, BEN, 100), Ok(json!({ "allow": true })));
    assert_eq!(send(1300, BEN, 1), Ok(refusal.clone()), "300 vested, 300 moved");
    assert_eq!(send(1300, ALICE, 1_000_000), Ok(json!({ "allow": true })), "others are not bounded");
    assert_eq!(send(2000, BEN, 701), Ok(refusal));
    assert_eq!(send(2000, BEN, 700), Ok(json!({ "allow": true })));
    assert_eq!(schedule.state[b"r".as_slice()], 1000u64.to_le_bytes());
    let outcome = schedule.call(Entry::Execute, &env_at(2000), None, &json!({ "release": {} })).unwrap();
    assert_eq!(outcome.data, json!({ "released": "0" }), "what moved counts as released");
}

#[test]
fn vesting_refuses_bad_schedules() {
    let sandbox = Sandbox::new(Limits::default());
    let schedule = Deployed::new(&sandbox, contract("vesting.wat"));
    let bounds = "need 0 < duration < 2^32, cliff <= duration and start + duration < 2^64";
    let required = "beneficiary, total, start, cliff and duration are required";
    let base = json!({ "beneficiary": BEN, "total": 10, "start": 0, "cliff": 0, "duration": 10 });
    let with = |field: &str, value: Value| {
        let mut msg = base.clone();
        msg[field] = value;
        msg
    };
    for (msg, reason) in [
        (with("duration", json!(0)), bounds),
        (with("duration", json!(1u64 << 32)), bounds),
        (with("cliff", json!(11)), bounds),
        (with("start", json!(u64::MAX - 5)), bounds),
        (with("total", json!(-1)), required),
        (with("total", json!(1.5)), required),
        (with("total", json!("12a")), required),
        (with("total", json!("18446744073709551616")), required),
        (with("beneficiary", json!(7)), required),
        (json!({ "beneficiary": BEN }), required),
    ] {
        assert_eq!(schedule.call(Entry::Instantiate, &env_at(0), None, &msg), Err(refused(reason)), "{msg}");
    }
    assert_eq!(schedule.query(&json!({ "vested": { "time": 5 } })), Err(refused("not instantiated")));
    assert_eq!(schedule.query(&json!({ "vested": {} })), Err(refused("unknown message")));
}

/// AssemblyScript's compiler: `$UES_ASC`, or the repository's `tests/js` install.
fn asc() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("UES_ASC") {
        return Some(path.into());
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    [manifest.join("../../tests/js/node_modules/.bin/asc"), manifest.join("tests/js/node_modules/.bin/asc")]
        .into_iter()
        .find(|path| path.is_file())
}

/// The fee hook compiled once, or `None` (loudly) when asc is absent outside CI.
fn fee_hook() -> Option<&'static [u8]> {
    static WASM: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    WASM.get_or_init(|| {
        let Some(asc) = asc() else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "asc not found: install tests/js (npm ci) or set UES_ASC"
            );
            // Straight to stderr: the test harness captures `eprintln!`.
            let _ =
                writeln!(std::io::stderr(), "SKIPPED: fee hook tests: asc not found (install tests/js or set UES_ASC)");
            return None;
        };
        let out = std::env::temp_dir().join(format!("ues-fee-hook-{}.wasm", std::process::id()));
        let status = Command::new(&asc)
            .arg(contracts_dir().join("fee-hook/index.ts"))
            .args(["--runtime", "stub", "--noAssert", "--optimize", "-o"])
            .arg(&out)
            .status()
            .unwrap_or_else(|e| panic!("running {}: {e}", asc.display()));
        assert!(status.success(), "asc failed: {status}");
        let bytes = std::fs::read(&out).expect("asc wrote the module");
        let _ = std::fs::remove_file(&out);
        Some(bytes)
    })
    .as_deref()
}

fn fee_hook_with(sandbox: &Sandbox, bps: Value) -> Option<Deployed<'_>> {
    let mut hook = Deployed::new(sandbox, fee_hook()?.to_vec());
    let msg = json!({ "bps": bps, "to": "did:plc:treasury" });
    assert_eq!(hook.run(Entry::Instantiate, &env_at(0), Some(&sent_by(ADMIN)), &msg), Ok(json!({})));
    Some(hook)
}

fn fee_on(hook: &Deployed<'_>, amount: Value) -> Result<Value, ContractError> {
    let msg = json!({ "from": ALICE, "to": BOB, "amount": amount, "tokenId": "t" });
    hook.call(Entry::OnTransfer, &env_at(1), Some(&sent_by(ALICE)), &msg).map(|outcome| outcome.data)
}

fn fee_reply(fee: u64) -> Value {
    json!({ "allow": true, "fee": { "amount": fee.to_string(), "to": "did:plc:treasury" } })
}

#[test]
fn fee_hook_is_admitted_integer_only() {
    let Some(bytes) = fee_hook() else { return };
    // Admission validates with floats disabled: passing it means no f32/f64 anywhere.
    let info = Sandbox::new(Limits::default()).check(bytes).unwrap();
    assert!(info.exports.iter().any(|e| e == "on_transfer"), "{info:?}");
    assert!(info.imports.iter().all(|i| i.starts_with("ues.") || i == "env.abort"), "{info:?}");
}

#[test]
fn fee_hook_charges_basis_points_rounded_down() {
    let sandbox = Sandbox::new(Limits::default());
    let Some(hook) = fee_hook_with(&sandbox, json!(250)) else { return };
    assert_eq!(fee_on(&hook, json!("1000")), Ok(fee_reply(25)));
    assert_eq!(fee_on(&hook, json!(10_000)), Ok(fee_reply(250)));
    assert_eq!(fee_on(&hook, json!(39)), Ok(fee_reply(0)), "0.975 rounds down");
    assert_eq!(fee_on(&hook, json!(41)), Ok(fee_reply(1)));
    let max = u64::MAX;
    assert_eq!(fee_on(&hook, json!(max.to_string())), Ok(fee_reply((u128::from(max) * 250 / 10_000) as u64)));
    assert_eq!(hook.query(&json!({ "config": {} })), Ok(json!({ "bps": "250", "to": "did:plc:treasury" })));
}

#[test]
fn fee_hook_bounds_and_refusals() {
    let sandbox = Sandbox::new(Limits::default());
    let Some(all) = fee_hook_with(&sandbox, json!("10000")) else { return };
    assert_eq!(fee_on(&all, json!("12345")), Ok(fee_reply(12345)));
    let free = fee_hook_with(&sandbox, json!(0)).unwrap();
    assert_eq!(fee_on(&free, json!("12345")), Ok(fee_reply(0)));

    let fresh = Deployed::new(&sandbox, fee_hook().unwrap().to_vec());
    assert_eq!(fee_on(&fresh, json!(1)), Err(refused("not instantiated")));
    let too_much = json!({ "bps": 10_001, "to": "did:plc:treasury" });
    assert_eq!(
        fresh.call(Entry::Instantiate, &env_at(0), None, &too_much),
        Err(refused("bps must be an integer from 0 to 10000"))
    );
    assert_eq!(
        fresh.call(Entry::Instantiate, &env_at(0), None, &json!({ "bps": 5 })),
        Err(refused("to must be a DID"))
    );
    let hook = fee_hook_with(&sandbox, json!(1)).unwrap();
    for amount in [json!(-5), json!(2.5), json!("x"), json!(null)] {
        assert_eq!(fee_on(&hook, amount.clone()), Err(refused("amount must be an unsigned integer")), "{amount}");
    }
}
