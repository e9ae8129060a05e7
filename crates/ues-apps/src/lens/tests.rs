//! The maintained views against recomputation: random creates, updates and deletes across
//! accounts, applied in random batches with the database closed and opened again between some
//! of them, must leave every view equal to the view computed from scratch, and the differences
//! told along the way must add up to it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use proptest::prelude::*;
use serde_json::{Value, json};
use ues_protocol::sync::repo::ipld::storage::rusqlite::{Connection, params};
use ues_protocol::sync::repo::lexicon::Lexicons;

use super::def::{self, View};
use super::engine::{self, Diff, Maint};

const SCORE: &str = r#"{"lexicon":1,"id":"com.example.score","defs":{"main":{"type":"record","key":"any","record":{"type":"object","required":["subject","value"],"properties":{"subject":{"type":"string"},"value":{"type":"integer"},"tags":{"type":"array","items":{"type":"string"}}}}}}}"#;

fn lexicons() -> &'static Lexicons {
    static LEX: std::sync::OnceLock<Lexicons> = std::sync::OnceLock::new();
    LEX.get_or_init(|| {
        let mut l = Lexicons::new();
        l.load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../lexicons")).expect("the node's lexicons load");
        l.add(&serde_json::from_str(SCORE).expect("json")).expect("the test lexicon loads");
        l
    })
}

/// The views under test: the grouped join of the documentation, a left join, an ungrouped
/// top-k, a three-way join with every aggregate, a filter on a joined side, and a self-join.
fn definitions() -> Vec<Value> {
    vec![
        json!({"name": "likesPerPost", "from": {"collection": "app.bsky.feed.like", "as": "l"},
            "join": [{"collection": "app.bsky.feed.post", "as": "p", "on": ["l.subject.uri", "p.uri"], "kind": "inner"}],
            "where": {"and": [{"eq": ["p.langs.0", "en"]}, {"contains": ["p.text", "rust"]}]},
            "groupBy": ["l.subject.uri"],
            "select": {"post": "l.subject.uri", "likes": {"count": "*"}, "firstLike": {"min": "l.createdAt"}},
            "orderBy": [{"field": "likes", "desc": true}], "limit": 100}),
        json!({"name": "postsWithLikes", "from": {"collection": "app.bsky.feed.post", "as": "p"},
            "join": [{"collection": "app.bsky.feed.like", "as": "l", "on": ["p.uri", "l.subject.uri"], "kind": "left"}],
            "groupBy": ["p.uri", "p.did"],
            "select": {"uri": "p.uri", "author": "p.did", "likes": {"count": "l.uri"}, "last": {"max": "l.createdAt"}},
            "orderBy": [{"field": "likes", "desc": true}, {"field": "uri"}], "limit": 4}),
        json!({"name": "recent", "from": {"collection": "app.bsky.feed.post", "as": "p"},
            "where": {"or": [{"contains": ["p.text", "a"]}, {"not": {"exists": "p.langs"}}]},
            "select": {"uri": "p.uri", "text": "p.text", "at": "p.createdAt"},
            "orderBy": [{"field": "at", "desc": true}], "limit": 3}),
        json!({"name": "scores", "from": {"collection": "com.example.score", "as": "s"},
            "join": [
                {"collection": "app.bsky.feed.post", "as": "p", "on": ["s.subject", "p.uri"]},
                {"collection": "app.bsky.feed.like", "as": "l", "on": ["p.uri", "l.subject.uri"], "kind": "left"}
            ],
            "where": {"ge": ["s.value", -50]},
            "groupBy": ["p.did"],
            "select": {"author": "p.did", "n": {"count": "*"}, "total": {"sum": "s.value"}, "mean": {"avg": "s.value"},
                "low": {"min": "s.value"}, "high": {"max": "s.value"}, "liked": {"count": "l.uri"}},
            "orderBy": [{"field": "total"}], "limit": 10}),
        json!({"name": "tagged", "from": {"collection": "com.example.score", "as": "s"},
            "join": [{"collection": "app.bsky.graph.follow", "as": "f", "on": ["s.did", "f.subject"], "kind": "left"}],
            "where": {"in": ["s.tags.0", ["x", "y"]]},
            "select": {"score": "s.uri", "follower": "f.did", "v": "s.value"},
            "orderBy": [{"field": "v", "desc": true}], "limit": 6}),
        json!({"name": "coLikes", "from": {"collection": "app.bsky.feed.like", "as": "a"},
            "join": [{"collection": "app.bsky.feed.like", "as": "b", "on": ["a.subject.uri", "b.subject.uri"]}],
            "where": {"ne": ["a.did", {"path": "b.did"}]},
            "groupBy": ["a.subject.uri"],
            "select": {"post": "a.subject.uri", "pairs": {"count": "*"}, "first": {"min": "b.createdAt"}},
            "orderBy": [{"field": "pairs", "desc": true}], "limit": 3}),
    ]
}

const DIDS: [&str; 3] = ["did:plc:aaaa", "did:plc:bbbb", "did:plc:cccc"];

/// One step of a run.
#[derive(Debug, Clone)]
enum Step {
    /// Write (create or replace) a record: account, collection index, key, content seed.
    Put(usize, usize, u8, u16),
    /// Delete a record (nothing if absent).
    Delete(usize, usize, u8),
    /// End the batch.
    Commit,
    /// End the batch and close and open the database.
    Restart,
}

const COLLECTIONS: [&str; 4] =
    ["app.bsky.feed.post", "app.bsky.feed.like", "com.example.score", "app.bsky.graph.follow"];

fn post_uri(seed: u16) -> String {
    format!("at://{}/app.bsky.feed.post/p{}", DIDS[(seed as usize / 5) % 3], seed % 5)
}

fn record(collection: usize, seed: u16) -> Value {
    let words = ["rust", "Rustacean", "tea", "a", "zig", "RUST!"];
    let langs = ["en", "fr"];
    match collection {
        0 => {
            let mut p = json!({"$type": COLLECTIONS[0], "text": format!("{} {}", words[seed as usize % 6], words[(seed as usize / 6) % 6]),
                "createdAt": format!("2026-01-01T00:00:{:02}Z", seed % 60)});
            if !seed.is_multiple_of(7) {
                p["langs"] = json!([langs[(seed as usize / 3) % 2]]);
            }
            p
        }
        1 => {
            json!({"$type": COLLECTIONS[1], "subject": {"uri": post_uri(seed / 4), "cid": "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"},
            "createdAt": format!("2026-01-02T00:00:{:02}Z", seed % 60)})
        }
        2 => {
            let tags = ["x", "y", "z"];
            json!({"$type": COLLECTIONS[2], "subject": post_uri(seed / 3), "value": (seed as i64 % 130) - 60,
                "tags": [tags[seed as usize % 3]]})
        }
        _ => json!({"$type": COLLECTIONS[3], "subject": DIDS[seed as usize % 3], "createdAt": "2026-01-03T00:00:00Z"}),
    }
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0..3usize, 0..4usize, 0..6u8, any::<u16>()).prop_map(|(a, c, k, s)| Step::Put(a, c, k, s)),
        3 => (0..3usize, 0..4usize, 0..6u8).prop_map(|(a, c, k)| Step::Delete(a, c, k)),
        2 => Just(Step::Commit),
        1 => Just(Step::Restart),
    ]
}

/// The node's database with the views' own attached beside it, as the node opens them.
fn open(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("the database opens");
    let side = path.with_extension("lens.sqlite");
    conn.execute("ATTACH DATABASE ?1 AS lens", [side.to_str().expect("UTF-8")]).expect("attached");
    conn.pragma_update(Some("lens"), "page_size", super::DATABASE.page_size).expect("page size");
    conn
}

struct Run {
    views: Vec<(i64, View)>,
    /// The records now: (collection, URI) → JSON with meta.
    records: BTreeMap<(String, String), Value>,
    /// What subscribers rebuilt from the differences, per view: row → count.
    told: Vec<HashMap<String, i64>>,
}

impl Run {
    fn inputs(&self, view: &View) -> Vec<Vec<(String, engine::Row)>> {
        view.aliases
            .iter()
            .enumerate()
            .map(|(i, a)| {
                self.records
                    .iter()
                    .filter(|((c, _), _)| *c == a.collection)
                    .map(|((_, uri), v)| (uri.clone(), engine::row_of(view, i, v)))
                    .collect()
            })
            .collect()
    }

    fn check(&self, conn: &Connection) -> Result<(), TestCaseError> {
        for (n, (id, view)) in self.views.iter().enumerate() {
            let (rows, _) = engine::rows(conn, *id, None, def::MAX_LIMIT).expect("rows read");
            let expected = engine::recompute(view, &self.inputs(view));
            prop_assert_eq!(&rows, &expected, "view {} differs from its recomputation", view.name);
            let mut held: HashMap<String, i64> = HashMap::new();
            for r in &rows {
                *held.entry(r.to_string()).or_default() += 1;
            }
            let told: HashMap<String, i64> =
                self.told[n].iter().filter(|(_, c)| **c != 0).map(|(k, c)| (k.clone(), *c)).collect();
            prop_assert_eq!(held, told, "view {}: the differences told do not add up to its rows", view.name);
        }
        Ok(())
    }
}

fn run(steps: &[Step], dir: &Path) -> Result<(), TestCaseError> {
    let lex = lexicons();
    let path = dir.join("node.sqlite");
    let mut conn = open(&path);
    conn.execute_batch(engine::SCHEMA_SQL).expect("tables");
    let mut views = Vec::new();
    for d in definitions() {
        let view = def::compile(&d, lex).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        conn.execute(
            "INSERT INTO lens_view (did, name, cid, definition, built_seq, created_at) VALUES ('did:plc:owner', ?1, 'c', ?2, 0, 0)",
            params![view.name, d.to_string()],
        )
        .expect("view row");
        views.push((conn.last_insert_rowid(), view));
    }
    let mut r = Run { told: vec![HashMap::new(); views.len()], views, records: BTreeMap::new() };
    let mut pending: Vec<Step> = Vec::new();
    let flush = |conn: &mut Connection, r: &mut Run, pending: &mut Vec<Step>| -> Result<(), TestCaseError> {
        let tx = conn.transaction().expect("tx");
        {
            let mut maints: Vec<Maint<'_>> =
                r.views.iter().map(|(id, v)| Maint::new(&tx, *id, v, 1_000_000).expect("maint")).collect();
            for s in pending.drain(..) {
                let (a, c, k, seed) = match s {
                    Step::Put(a, c, k, seed) => (a, c, k, Some(seed)),
                    Step::Delete(a, c, k) => (a, c, k, None),
                    _ => continue,
                };
                let collection = COLLECTIONS[c];
                let rkey = match c {
                    0 => format!("p{k}"),
                    _ => format!("r{k}"),
                };
                let uri = format!("at://{}/{collection}/{rkey}", DIDS[a]);
                let value = seed.map(|s| {
                    let serde_json::Value::Object(m) = record(c, s) else { unreachable!() };
                    def::with_meta(m, DIDS[a], collection, &rkey, &format!("cid{s}"))
                });
                match &value {
                    Some(v) => r.records.insert((collection.to_string(), uri.clone()), v.clone()),
                    None => r.records.remove(&(collection.to_string(), uri.clone())),
                };
                for (n, (_, view)) in r.views.iter().enumerate() {
                    let mut diff = Diff::default();
                    for alias in view.aliases_of(collection).collect::<Vec<_>>() {
                        let row = value.as_ref().map(|v| engine::row_of(view, alias, v));
                        maints[n]
                            .change(alias, &uri, row, &mut diff)
                            .map_err(|e| TestCaseError::fail(format!("{e}")))?;
                    }
                    diff.net();
                    for row in &diff.removed {
                        *r.told[n].entry(row.to_string()).or_default() -= 1;
                    }
                    for row in &diff.added {
                        *r.told[n].entry(row.to_string()).or_default() += 1;
                    }
                }
            }
            for m in maints {
                m.finish().expect("counters");
            }
        }
        tx.commit().expect("commit");
        Ok(())
    };
    for s in steps {
        match s {
            Step::Commit => flush(&mut conn, &mut r, &mut pending)?,
            Step::Restart => {
                flush(&mut conn, &mut r, &mut pending)?;
                drop(conn);
                conn = open(&path);
                r.check(&conn)?;
            }
            other => pending.push(other.clone()),
        }
    }
    flush(&mut conn, &mut r, &mut pending)?;
    r.check(&conn)?;
    // The counters kept match the rows stored.
    for (id, view) in &r.views {
        let (top, state): (i64, i64) = conn
            .query_row("SELECT top_n, state_n FROM lens_view WHERE id = ?1", [id], |x| Ok((x.get(0)?, x.get(1)?)))
            .expect("row");
        let counted: i64 = conn
            .query_row(
                "SELECT (SELECT count(*) FROM lens_in WHERE view = ?1)
                 + (SELECT count(*) FROM lens_mm WHERE view = ?1) + (SELECT count(*) FROM lens_out WHERE view = ?1)",
                [id],
                |x| x.get(0),
            )
            .expect("count");
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM lens_out WHERE view = ?1 AND top = 1", [id], |x| x.get(0))
            .expect("count");
        prop_assert_eq!(top, rows, "view {}: its row count", view.name);
        prop_assert_eq!(state, counted, "view {}: its stored-row count", view.name);
        // The rows kept in order (the view's, then the pool's) are a prefix of the order, and
        // the view's come first.
        type Key = Option<Vec<u8>>;
        let (indexed_last, down_first, view_last, pool_first): (Key, Key, Key, Key) = conn
            .query_row(
                "SELECT (SELECT max(sort) FROM lens_out WHERE view = ?1 AND top IS NOT NULL),
                        (SELECT min(sort) FROM lens_out WHERE view = ?1 AND top IS NULL),
                        (SELECT max(sort) FROM lens_out WHERE view = ?1 AND top = 1),
                        (SELECT min(sort) FROM lens_out WHERE view = ?1 AND top = 0)",
                [id],
                |x| Ok((x.get(0)?, x.get(1)?, x.get(2)?, x.get(3)?)),
            )
            .expect("order");
        if let (Some(a), Some(b)) = (&indexed_last, &down_first) {
            prop_assert!(a < b, "view {}: a row further down comes before one kept in order", view.name);
        }
        if let (Some(a), Some(b)) = (&view_last, &pool_first) {
            prop_assert!(a < b, "view {}: a row of the pool comes before one of the view", view.name);
        }
        let (pool_n, pooled): (i64, i64) = conn
            .query_row(
                "SELECT pool_n, (SELECT count(*) FROM lens_out WHERE view = ?1 AND top = 0) FROM lens_view WHERE id = ?1",
                [id],
                |x| Ok((x.get(0)?, x.get(1)?)),
            )
            .expect("pool");
        prop_assert_eq!(pool_n, pooled, "view {}: its pool count", view.name);
        prop_assert!(
            pool_n <= 2 * engine::pool_size(view.limit, state) as i64,
            "view {}: its pool grew past its bound",
            view.name
        );
        if top < view.limit as i64 {
            prop_assert!(
                pool_first.is_none() && down_first.is_none(),
                "view {}: not full, yet rows outside",
                view.name
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn incremental_views_equal_recomputation_across_restarts(steps in proptest::collection::vec(step(), 1..160)) {
        let dir = tempfile::tempdir().expect("tempdir");
        run(&steps, dir.path())?;
    }
}

#[test]
fn the_documented_definition_compiles_and_bad_ones_are_refused_with_the_reason() {
    let lex = lexicons();
    let ok = &definitions()[0];
    let v = def::compile(ok, lex).expect("the documented shape works as written");
    assert!(v.grouped());
    let refused = |d: Value, why: &str| {
        let e = def::compile(&d, lex).expect_err("refused");
        assert!(e.0.contains(why), "{} should say {why:?}", e.0);
    };
    let mut d = ok.clone();
    d["join"][0]["on"] = json!(["x.subject.uri", "p.uri"]);
    refused(d, "no alias \"x\"");
    let mut d = ok.clone();
    d["where"] = json!({"eq": ["p.nosuchfield", 1]});
    refused(d, "no field \"nosuchfield\"");
    let mut d = ok.clone();
    d.as_object_mut().expect("object").remove("limit");
    refused(d, "needs \"limit\"");
    let mut d = ok.clone();
    d["limit"] = json!(1_000_000);
    refused(d, "\"limit\" is 1-");
    let mut d = ok.clone();
    d["select"]["text"] = json!("p.text");
    refused(d, "grouped view");
    let mut d = ok.clone();
    d["from"]["collection"] = json!("com.example.nolexicon");
    refused(d, "no lexicon");
    let mut d = ok.clone();
    d["where"] = json!({"regex": ["p.text", "x"]});
    refused(d, "unknown operator");
    // Deep: a predicate nested past the bound.
    let mut deep = json!({"exists": "p.text"});
    for _ in 0..40 {
        deep = json!({"not": deep});
    }
    let mut d = ok.clone();
    d["where"] = deep;
    refused(d, "deeper");
    // Wide: more parts than allowed.
    let mut d = ok.clone();
    d["where"] = json!({"and": vec![json!({"exists": "p.text"}); 100]});
    refused(d, "more than");
    // A join onto itself or a later alias (a cycle) cannot be said.
    let mut d = ok.clone();
    d["join"][0]["on"] = json!(["p.uri", "p.uri"]);
    refused(d, "no alias \"p\" here");
    let mut d = ok.clone();
    d["join"] = json!([{"collection": "app.bsky.feed.post", "as": "l", "on": ["l.subject.uri", "l.uri"]}]);
    refused(d, "used twice");
    // A path through a string.
    let mut d = ok.clone();
    d["where"] = json!({"eq": ["p.text.length", 1]});
    refused(d, "no fields");
    // Big.
    let mut d = ok.clone();
    d["description"] = json!("x".repeat(20_000));
    refused(d, "bytes");
    refused(json!([1, 2]), "JSON object");
    refused(json!({"name": "x y"}), "\"name\"");
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[a-z.0-9*]{0,12}".prop_map(Value::String),
        prop::sample::select(vec!["l.subject.uri", "p.uri", "p.langs.0", "p.text", "l", "eq", "and", "count", "*"])
            .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "name",
                    "from",
                    "join",
                    "where",
                    "groupBy",
                    "select",
                    "orderBy",
                    "limit",
                    "collection",
                    "as",
                    "on",
                    "kind",
                    "eq",
                    "lt",
                    "in",
                    "contains",
                    "exists",
                    "and",
                    "or",
                    "not",
                    "count",
                    "min",
                    "field",
                    "desc",
                    "path",
                    "zz",
                ])
                .prop_map(str::to_string),
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Any JSON, and the documented definition with any part replaced by any JSON: a definition
    /// or a typed refusal, never a panic.
    #[test]
    fn definitions_from_arbitrary_input_compile_or_are_refused(
        v in arb_json(),
        part in prop::sample::select(vec!["name", "from", "join", "where", "groupBy", "select", "orderBy", "limit"]),
    ) {
        let lex = lexicons();
        let _ = def::compile(&v, lex);
        let mut d = definitions()[0].clone();
        d[part] = v;
        let _ = def::compile(&d, lex);
    }
}

/// 64-bit integers, most of them past 2^53 (where neighbours share an f64).
fn big_int() -> impl Strategy<Value = i128> {
    prop_oneof![
        any::<i64>().prop_map(i128::from),
        any::<u64>().prop_map(i128::from),
        (-3000i128..3000).prop_map(|d| (1i128 << 53) + d),
        (-3000i128..3000).prop_map(|d| (1i128 << 63) + d).prop_filter("u64", |v| *v <= u64::MAX as i128),
        (0i128..3000).prop_map(|d| u64::MAX as i128 - d),
        (0i128..3000).prop_map(|d| i64::MIN as i128 + d),
    ]
}

fn number(v: i128) -> Value {
    match i64::try_from(v) {
        Ok(i) => json!(i),
        Err(_) => json!(u64::try_from(v).expect("in range")),
    }
}

proptest! {
    /// Views order numbers exactly: 64-bit integers by their exact value (also past 2^53),
    /// floats by value, an integer and a float by their values.
    #[test]
    fn numbers_order_exactly(a in big_int(), b in big_int(), x in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
        prop_assert_eq!(engine::compare(&number(a), &number(b)), a.cmp(&b));
        let fx = json!(x);
        let ord = engine::compare(&fx, &number(a));
        let exact = if x.fract() == 0.0 && x.abs() < 1e38 {
            (x as i128).cmp(&a)
        } else {
            x.partial_cmp(&(a as f64)).expect("finite")
        };
        if x != 0.0 || a != 0 {
            prop_assert_eq!(ord, exact, "{} against {}", x, a);
        }
    }
}
