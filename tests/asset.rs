//! The asset registry (`dev.ues.asset`) through running nodes: classes and their ledgers made
//! and read over XRPC and REST as clients do, refusals with their typed errors and nothing
//! changed, a hostile transaction record written around the registry, a restart, and two nodes
//! (an issuer on one, a holder on the other, through a PLC directory): the holder acts through
//! its own node, and the other node replays the issuer's ledger from its signed repository.

#[path = "support/plc.rs"]
mod plc;
#[path = "support/shared.rs"]
mod shared;
#[path = "support/node.rs"]
mod support;

use serde_json::{Value, json};
use support::{Running, agent, create_account, start_with, xrpc_post};

const CONFIG: &str = "[xrpc.rate_limits]\nenabled = false\n";

fn get(node: &Running, path: &str) -> (u16, Value) {
    let mut res = agent().get(format!("{}{path}", node.base)).call().unwrap();
    (res.status().as_u16(), res.body_mut().read_json().unwrap_or(Value::Null))
}

fn enc(s: &str) -> String {
    s.replace(':', "%3A").replace('/', "%2F")
}

fn balance(node: &Running, ledger: &str, holder: &str, token: Option<&str>) -> String {
    let mut path = format!("/xrpc/dev.ues.asset.getBalance?ledger={}&holder={}", enc(ledger), enc(holder));
    if let Some(t) = token {
        path.push_str(&format!("&tokenId={t}"));
    }
    let (status, v) = get(node, &path);
    assert_eq!(status, 200, "{v}");
    v["amount"].as_str().unwrap().to_string()
}

fn class_state(node: &Running, ledger: &str) -> Value {
    let (status, v) = get(node, &format!("/xrpc/dev.ues.asset.getClass?ledger={}", enc(ledger)));
    assert_eq!(status, 200, "{v}");
    v
}

fn verify(node: &Running, ledger: &str) -> Value {
    let (status, v) = get(node, &format!("/xrpc/dev.ues.asset.verifyLedger?ledger={}", enc(ledger)));
    assert_eq!(status, 200, "{v}");
    v
}

/// Calls `method`, expecting `status`; the answer.
fn op(node: &Running, method: &str, token: &str, body: Value, status: u16) -> Value {
    let (s, v) = xrpc_post(node, &format!("dev.ues.asset.{method}"), Some(token), body.clone());
    assert_eq!(s, status, "{method} {body}: {v}");
    v
}

#[test]
fn a_ledger_on_one_node_keeps_its_rules_and_replays() {
    let root = tempfile::tempdir().unwrap();
    let a = start_with(&root.path().join("a"), CONFIG);
    let (issuer, it) = create_account(&a.base, "issuer.test");
    let (alice, at) = create_account(&a.base, "alice.test");
    let (bob, bt) = create_account(&a.base, "bob.test");

    // A fungible class with a cap; a bad one refused.
    let v = op(
        &a,
        "createClass",
        &it,
        json!({"kind": "fungible", "name": "Coin", "symbol": "CN", "decimals": 2, "maxSupply": "1000"}),
        200,
    );
    let coin = v["uri"].as_str().unwrap().to_string();
    let v = op(
        &a,
        "createClass",
        &it,
        json!({"kind": "fungible", "name": "Bad", "royalty": {"receiver": issuer, "basisPoints": 10001}}),
        400,
    );
    assert_eq!(v["error"], "InvalidRequest", "the lexicon bounds basisPoints: {v}");
    let v = op(&a, "createClass", &it, json!({"kind": "nonFungible", "name": "Bad", "decimals": 2}), 400);
    assert_eq!(v["error"], "InvalidClass", "{v}");

    op(&a, "mint", &it, json!({"ledger": coin, "to": alice, "amount": "600"}), 200);
    // Refusals, each with its name, and nothing changed.
    let before = class_state(&a, &coin);
    for (token, body, status, name) in [
        (&it, json!({"ledger": coin, "to": alice, "amount": "401"}), 400, "MaxSupplyExceeded"),
        (&at, json!({"ledger": coin, "to": alice, "amount": "1"}), 403, "NotAuthorized"),
        (&it, json!({"ledger": coin, "to": alice, "amount": "1.5"}), 400, "InvalidAmount"),
        (&it, json!({"ledger": coin, "to": alice, "amount": "0"}), 400, "InvalidAmount"),
        (
            &it,
            json!({"ledger": coin, "to": alice, "amount": "340282366920938463463374607431768211456"}),
            400,
            "InvalidAmount",
        ),
        (&it, json!({"ledger": coin, "to": alice, "amount": "1", "tokenId": "x"}), 400, "InvalidRequest"),
    ] {
        let v = op(&a, "mint", token, body, status);
        assert_eq!(v["error"], name, "{v}");
    }
    for (token, method, body, status, name) in [
        (
            &bt,
            "transfer",
            json!({"ledger": coin, "from": alice, "to": bob, "amount": "5"}),
            400,
            "InsufficientAllowance",
        ),
        (&at, "transfer", json!({"ledger": coin, "to": bob, "amount": "601"}), 400, "InsufficientBalance"),
        (&bt, "burn", json!({"ledger": coin, "amount": "1"}), 400, "InsufficientBalance"),
        (&at, "transfer", json!({"ledger": format!("{coin}x"), "to": bob, "amount": "1"}), 400, "ClassNotFound"),
    ] {
        let v = op(&a, method, token, body, status);
        assert_eq!(v["error"], name, "{v}");
    }
    let (s, v) = xrpc_post(&a, "dev.ues.asset.transfer", None, json!({"ledger": coin, "to": bob, "amount": "1"}));
    assert_eq!(s, 401, "{v}");
    assert_eq!(class_state(&a, &coin), before, "refusals changed nothing");

    // Allowances are set and used up; a repeated nonce answers the first result.
    op(&a, "approve", &at, json!({"ledger": coin, "spender": bob, "amount": "70"}), 200);
    let first =
        op(&a, "transfer", &bt, json!({"ledger": coin, "from": alice, "to": bob, "amount": "50", "nonce": "n-1"}), 200);
    let again =
        op(&a, "transfer", &bt, json!({"ledger": coin, "from": alice, "to": bob, "amount": "50", "nonce": "n-1"}), 200);
    assert_eq!(first, again);
    let v =
        op(&a, "transfer", &bt, json!({"ledger": coin, "from": alice, "to": bob, "amount": "50", "nonce": "n-2"}), 400);
    assert_eq!(v["error"], "InsufficientAllowance", "20 left: {v}");
    op(&a, "burn", &bt, json!({"ledger": coin, "amount": "10"}), 200);
    assert_eq!(balance(&a, &coin, &alice, None), "550");
    assert_eq!(balance(&a, &coin, &bob, None), "40");
    let state = class_state(&a, &coin);
    assert_eq!((state["supply"].as_str(), state["seq"].as_i64()), (Some("590"), Some(4)), "{state}");

    // A class of unique tokens with metadata; approvals move with the token.
    let art = op(
        &a,
        "createClass",
        &it,
        json!({"kind": "nonFungible", "name": "Art", "royalty": {"receiver": issuer, "basisPoints": 250}}),
        200,
    )["uri"]
        .as_str()
        .unwrap()
        .to_string();
    op(
        &a,
        "mint",
        &it,
        json!({"ledger": art, "to": alice, "tokenId": "sunrise", "metadata": {"title": "Sunrise", "edition": 1}}),
        200,
    );
    let v = op(&a, "mint", &it, json!({"ledger": art, "to": bob, "tokenId": "sunrise"}), 400);
    assert_eq!(v["error"], "TokenExists");
    op(&a, "approve", &at, json!({"ledger": art, "spender": bob, "tokenId": "sunrise"}), 200);
    op(&a, "transfer", &bt, json!({"ledger": art, "from": alice, "to": bob, "tokenId": "sunrise"}), 200);
    // The approval went with the token.
    let v = op(&a, "transfer", &bt, json!({"ledger": art, "from": alice, "to": bob, "tokenId": "sunrise"}), 403);
    assert_eq!(v["error"], "NotAuthorized", "{v}");
    let (_, tokens) = get(&a, &format!("/xrpc/dev.ues.asset.listTokens?ledger={}", enc(&art)));
    assert_eq!(tokens["tokens"][0]["owner"], bob.as_str(), "{tokens}");
    assert_eq!(tokens["tokens"][0]["metadata"]["title"], "Sunrise", "{tokens}");
    let (_, held) = get(&a, &format!("/xrpc/dev.ues.asset.listTokens?ledger={}&holder={}", enc(&art), enc(&bob)));
    assert_eq!(held["tokens"], json!([{"tokenId": "sunrise", "amount": "1"}]), "{held}");

    // The REST mirror answers the same.
    let (status, v) = get(&a, &format!("/api/v1/assets/balance?ledger={}&holder={}", enc(&coin), enc(&alice)));
    assert_eq!((status, v["amount"].as_str()), (200, Some("550")), "{v}");
    let mut res = agent()
        .post(format!("{}/api/v1/assets/transfer", a.base))
        .header("Authorization", &format!("Bearer {at}"))
        .send_json(json!({"ledger": coin, "to": bob, "amount": "1"}))
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.body_mut().read_to_string().unwrap());
    let (_, history) = get(&a, &format!("/xrpc/dev.ues.asset.getHistory?ledger={}&limit=2", enc(&coin)));
    assert_eq!(history["txs"].as_array().unwrap().len(), 2);
    assert_eq!(history["txs"][0]["record"]["op"]["$type"], "dev.ues.asset.tx#mint", "{history}");
    let (_, rest) = get(
        &a,
        &format!("/xrpc/dev.ues.asset.getHistory?ledger={}&cursor={}", enc(&coin), history["cursor"].as_str().unwrap()),
    );
    assert_eq!(rest["txs"][0]["seq"], 3, "{rest}");

    // The replay from the signed repository agrees with the projection.
    let state = class_state(&a, &coin);
    let v = verify(&a, &coin);
    assert_eq!(
        (v["ok"].as_bool(), &v["seq"], &v["stateHash"]),
        (Some(true), &state["seq"], &state["stateHash"]),
        "{v}"
    );

    // A restart keeps every ledger as it was.
    drop(a);
    let a = start_with(&root.path().join("a"), CONFIG);
    assert_eq!(class_state(&a, &coin), state);
    assert_eq!(balance(&a, &art, &bob, Some("sunrise")), "1");

    // The issuer writes a transaction record around the registry (through createRecord): it
    // does not check, so the ledger stops there: writes refused, the replay names it.
    let seq = state["seq"].as_i64().unwrap() + 1;
    let rkey = format!("{}-{seq:016}", coin.rsplit('/').next().unwrap());
    let forged = json!({
        "$type": "dev.ues.asset.tx", "ledger": coin, "seq": seq, "actor": issuer,
        "op": {"$type": "dev.ues.asset.tx#transfer", "from": alice, "to": issuer, "amount": "500"},
        "stateHash": "0".repeat(64), "createdAt": "2026-12-05T00:00:00.000Z",
    });
    // (New sessions: the restarted node has another address, so another service DID.)
    let login = |did: &str| {
        let (_, v) = xrpc_post(
            &a,
            "com.atproto.server.createSession",
            None,
            json!({"identifier": did, "password": "a long password"}),
        );
        v["accessJwt"].as_str().unwrap().to_string()
    };
    let (it, at) = (login(&issuer), login(&alice));
    let (s, v) = xrpc_post(
        &a,
        "com.atproto.repo.createRecord",
        Some(&it),
        json!({"repo": issuer, "collection": "dev.ues.asset.tx", "rkey": rkey, "record": forged}),
    );
    assert_eq!(s, 200, "{v}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let stopped = loop {
        let c = class_state(&a, &coin);
        if !c["stopped"].is_null() || std::time::Instant::now() > deadline {
            break c;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(stopped["stopped"]["seq"], seq, "{stopped}");
    assert_eq!(stopped["stateHash"], state["stateHash"], "nothing applied: {stopped}");
    assert_eq!(balance(&a, &coin, &alice, None), "549");
    let v = op(&a, "transfer", &at, json!({"ledger": coin, "to": bob, "amount": "1"}), 409);
    assert_eq!(v["error"], "LedgerStopped", "{v}");
    let v = verify(&a, &coin);
    assert_eq!((v["ok"].as_bool(), &v["firstBad"]["seq"]), (Some(false), &json!(seq)), "{v}");
    assert!(v["firstBad"]["reason"].as_str().unwrap().contains("refused"), "{v}");
    // The other ledger is untouched.
    assert_eq!(verify(&a, &art)["ok"], true);
}

#[test]
fn a_holder_on_another_node_acts_through_it_and_the_ledger_replays_there() {
    let Some(js) = shared::node_tests() else { return };
    let root = tempfile::tempdir().unwrap();
    let directory = plc::start_directory(&js);
    let config = format!("[xrpc]\nplc_url = \"{}\"\n[xrpc.rate_limits]\nenabled = false\n", directory.url);
    let a = start_with(&root.path().join("a"), &config);
    // Node B fetches at most 1 MiB of another node's repository to replay it.
    let b = start_with(&root.path().join("b"), &format!("{config}[asset]\nmax_remote_repo_mib = 1\n"));
    let (issuer, it) = create_account(&a.base, "issuer.test");
    let (carol, ct) = create_account(&a.base, "carol.test");
    let (bob, bt) = create_account(&b.base, "bob.test");

    let coin = op(&a, "createClass", &it, json!({"kind": "fungible", "name": "Coin"}), 200)["uri"]
        .as_str()
        .unwrap()
        .to_string();
    op(&a, "mint", &it, json!({"ledger": coin, "to": bob, "amount": "1000"}), 200);
    // Bob, on node B, transfers through B: B calls A as Bob (service auth).
    let v = op(&b, "transfer", &bt, json!({"ledger": coin, "to": carol, "amount": "333", "nonce": "b-1"}), 200);
    assert_eq!(v["seq"], 2, "{v}");
    let v = op(&b, "transfer", &bt, json!({"ledger": coin, "to": carol, "amount": "1000"}), 400);
    assert_eq!(v["error"], "InsufficientBalance", "the issuer's refusal, relayed: {v}");
    // Bob may not move Carol's tokens through his node either.
    let v = op(&b, "transfer", &bt, json!({"ledger": coin, "from": carol, "to": bob, "amount": "1"}), 400);
    assert_eq!(v["error"], "InsufficientAllowance", "{v}");
    assert_eq!(balance(&a, &coin, &bob, None), "667");
    // Reads through B come from A.
    assert_eq!(balance(&b, &coin, &carol, None), "333");
    // A token for another audience is refused by A.
    let (s, _) = xrpc_post(
        &a,
        "dev.ues.asset.transfer",
        Some("eyJhbGciOiJFUzI1NksiLCJ0eXAiOiJKV1QifQ.e30.c2ln"),
        json!({"ledger": coin, "to": bob, "amount": "1"}),
    );
    assert_eq!(s, 401);

    // The marketplace across the nodes: Carol (node A) sells unique tokens for coins, Bob
    // (node B) buys through node B; each class's royalty goes to Dana (node A), rounded down,
    // the rest to Carol. Odd prices and basis points: (price, basis points, royalty).
    let (dana, _) = create_account(&a.base, "dana.test");
    op(&a, "mint", &it, json!({"ledger": coin, "to": bob, "amount": "20000"}), 200);
    let mut paid = (0u128, 0u128, 20_667u128); // (Dana, Carol beyond her 333, Bob)
    let mut arts = Vec::new();
    let table = [(999u128, 250u32, 24u128), (10_001, 333, 333), (1, 9_999, 0), (77, 10_000, 77), (100, 0, 0)];
    for (i, (price, bps, cut)) in table.into_iter().enumerate() {
        let royalty = json!({"receiver": dana, "basisPoints": bps});
        let body = json!({"kind": "nonFungible", "name": format!("Art {i}"), "royalty": royalty});
        let art = op(&a, "createClass", &it, body, 200)["uri"].as_str().unwrap().to_string();
        op(&a, "mint", &it, json!({"ledger": art, "to": carol, "tokenId": "piece"}), 200);
        let body = json!({"ledger": art, "tokenId": "piece", "priceLedger": coin, "price": price.to_string()});
        let listed = op(&a, "createListing", &ct, body, 200);
        let id = listed["listingId"].as_str().unwrap().to_string();
        assert_eq!(balance(&a, &art, &carol, Some("piece")), "0", "in escrow");
        if i == 0 {
            // Refusals change nothing: a price above the buyer's cap, the seller buying.
            let body = json!({"ledger": art, "listingId": id, "maxPrice": (price - 1).to_string()});
            let v = op(&b, "buyListing", &bt, body, 400);
            assert_eq!(v["error"], "PriceChanged", "{v}");
            let v = op(&a, "buyListing", &ct, json!({"ledger": art, "listingId": id}), 400);
            assert_eq!(v["error"], "InvalidRequest", "{v}");
        }
        let nonce = format!("buy-{i}");
        let body = json!({"ledger": art, "listingId": id, "maxPrice": price.to_string(), "nonce": nonce});
        let v = op(&b, "buyListing", &bt, body, 200);
        let (cut_s, rest_s) = (cut.to_string(), (price - cut).to_string());
        assert_eq!(
            (v["royalty"].as_str(), v["sellerGets"].as_str()),
            (Some(cut_s.as_str()), Some(rest_s.as_str())),
            "{v}"
        );
        assert_eq!(v["txs"].as_array().unwrap().len(), 2, "{v}");
        paid = (paid.0 + cut, paid.1 + price - cut, paid.2 - price);
        assert_eq!(balance(&a, &coin, &dana, None), paid.0.to_string());
        assert_eq!(balance(&a, &coin, &carol, None), (333 + paid.1).to_string());
        assert_eq!(balance(&a, &coin, &bob, None), paid.2.to_string());
        assert_eq!(balance(&b, &art, &bob, Some("piece")), "1");
        // The same purchase again (its nonce) answers the first; without, the listing is closed.
        let again = op(&b, "buyListing", &bt, json!({"ledger": art, "listingId": id, "nonce": nonce}), 200);
        assert_eq!(again["uri"], v["uri"], "{again}");
        let v = op(&b, "buyListing", &bt, json!({"ledger": art, "listingId": id}), 400);
        assert_eq!(v["error"], "ListingClosed", "{v}");
        arts.push(art);
    }
    assert_eq!(class_state(&a, &coin)["supply"], "21000", "coins are conserved");
    // A listing priced above what the buyer holds: refused, nothing moves; then withdrawn.
    op(&a, "mint", &it, json!({"ledger": arts[0], "to": carol, "tokenId": "dear"}), 200);
    let body = json!({"ledger": arts[0], "tokenId": "dear", "priceLedger": coin, "price": "100000"});
    let id = op(&a, "createListing", &ct, body, 200)["listingId"].as_str().unwrap().to_string();
    let before = class_state(&a, &coin);
    let v = op(&b, "buyListing", &bt, json!({"ledger": arts[0], "listingId": id}), 400);
    assert_eq!(v["error"], "InsufficientBalance", "{v}");
    assert_eq!(class_state(&a, &coin), before);
    let (_, listings) = get(&b, &format!("/xrpc/dev.ues.asset.getListings?ledger={}", enc(&arts[0])));
    assert_eq!(listings["listings"][0]["listingId"], id.as_str(), "{listings}");
    let v = op(&b, "cancelListing", &bt, json!({"ledger": arts[0], "listingId": id}), 403);
    assert_eq!(v["error"], "NotAuthorized", "only the seller withdraws: {v}");
    op(&a, "cancelListing", &ct, json!({"ledger": arts[0], "listingId": id}), 200);
    assert_eq!(balance(&a, &arts[0], &carol, Some("dear")), "1");

    // Node B replays A's ledgers from A's repository (a CAR checked against the issuer's DID
    // document): the same state hashes, every sale's payment checked against its listing.
    for ledger in std::iter::once(&coin).chain(&arts) {
        let on_a = class_state(&a, ledger);
        let on_b = verify(&b, ledger);
        assert_eq!(
            (on_b["ok"].as_bool(), &on_b["stateHash"], &on_b["seq"]),
            (Some(true), &on_a["stateHash"], &on_a["seq"]),
            "{on_b}"
        );
    }

    // The issuer's repository grows past what B fetches to replay (two records of 700 KB): B
    // refuses with the reason, reads no further, and still answers.
    for i in 0..2 {
        let record = json!({"$type": "dev.ues.test.padding", "text": "x".repeat(700_000)});
        let body =
            json!({"repo": issuer, "collection": "dev.ues.test.padding", "rkey": format!("p{i}"), "record": record});
        let (s, v) = xrpc_post(&a, "com.atproto.repo.createRecord", Some(&it), body);
        assert_eq!(s, 200, "{v}");
    }
    let (status, v) = get(&b, &format!("/xrpc/dev.ues.asset.verifyLedger?ledger={}", enc(&coin)));
    assert_eq!((status, v["error"].as_str()), (400, Some("RepoTooLarge")), "{v}");
    assert_eq!(balance(&b, &coin, &carol, None), balance(&a, &coin, &carol, None), "B still answers");
}
