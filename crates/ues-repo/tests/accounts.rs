//! Many accounts on one node, their heads in SQLite, and the collection index.

use std::sync::Arc;

use ues_ipld::Ipld;
use ues_ipld::storage::{MemoryBlockstore, Sqlite, SqliteConfig};
use ues_repo::accounts::{AccountError, Accounts};
use ues_repo::crypto::KeyType;
use ues_repo::repo::{RepoError, Write};
use ues_repo::syntax::{Did, Handle, Nsid, RecordKey};

fn rec(fields: &[(&str, Ipld)]) -> Ipld {
    Ipld::Map(fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
}

fn s(v: &str) -> Ipld {
    Ipld::String(v.into())
}

#[test]
fn accounts_writes_and_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Sqlite::open(dir.path().join("i.sqlite"), &SqliteConfig::default()).unwrap());
    let store = MemoryBlockstore::new();
    let accts = Accounts::open(&store, db.clone(), 1).unwrap();
    let alice = Did::new("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa").unwrap();
    let bob = Did::new("did:plc:bbbbbbbbbbbbbbbbbbbbbbbb").unwrap();
    let (a, _, first) = accts.create(alice.clone(), Handle::new("Alice.test").unwrap(), KeyType::K256).unwrap();
    assert_eq!(a.handle.as_str(), "alice.test");
    assert_eq!(a.head, first.cid);
    accts.create(bob.clone(), Handle::new("bob.test").unwrap(), KeyType::P256).unwrap();
    assert!(matches!(
        accts.create(
            Did::new("did:plc:cccccccccccccccccccccccc").unwrap(),
            Handle::new("ALICE.test").unwrap(),
            KeyType::K256
        ),
        Err(AccountError::Taken(_))
    ));
    assert_eq!(accts.by_handle(&Handle::new("alice.TEST").unwrap()).unwrap().unwrap().did, alice);

    let post = Nsid::new("app.bsky.feed.post").unwrap();
    let like = Nsid::new("app.bsky.feed.like").unwrap();
    let writes: Vec<Write> = (0..30)
        .map(|i| Write::Create {
            collection: post.clone(),
            rkey: RecordKey::new(format!("p{i:02}")).unwrap(),
            record: rec(&[
                ("$type", s("app.bsky.feed.post")),
                ("text", s(&format!("post number {i} about {}", if i % 3 == 0 { "rust" } else { "cats" }))),
                ("createdAt", s("2026-11-24T00:00:00Z")),
            ]),
        })
        .collect();
    let res = accts.apply_writes(&alice, &writes, None).unwrap();
    assert_eq!(accts.get(&alice).unwrap().unwrap().head, res.cid);

    let page = accts.list_records(&alice, &post, None, 10, false).unwrap();
    assert_eq!(page.first().unwrap().rkey, "p00");
    let next = accts
        .list_records(&alice, &post, Some(&RecordKey::new(page.last().unwrap().rkey.clone()).unwrap()), 100, false)
        .unwrap();
    assert_eq!(next.len(), 20);
    let rev = accts.list_records(&alice, &post, None, 3, true).unwrap();
    assert_eq!(rev.iter().map(|r| r.rkey.as_str()).collect::<Vec<_>>(), ["p29", "p28", "p27"]);

    assert_eq!(accts.search("rust", 100).unwrap().len(), 10);
    assert_eq!(accts.search("RUST post", 100).unwrap().len(), 10);
    assert!(accts.search("\"; DROP TABLE record; --", 10).unwrap().is_empty(), "query syntax is inert");

    // Bob likes one of Alice's posts: a backlink.
    let target = format!("at://{alice}/app.bsky.feed.post/p03");
    let like_rec = rec(&[
        ("$type", s("app.bsky.feed.like")),
        ("subject", rec(&[("uri", s(&target)), ("cid", s(&res.ops[3].cid.unwrap().to_string()))])),
        ("createdAt", s("2026-11-24T00:00:00Z")),
    ]);
    accts
        .apply_writes(
            &bob,
            &[Write::Create { collection: like.clone(), rkey: RecordKey::new("l1").unwrap(), record: like_rec }],
            None,
        )
        .unwrap();
    let links = accts.backlinks(&target, 10).unwrap();
    assert_eq!((links.len(), links[0].did.as_str()), (1, bob.as_str()));

    // Update re-indexes the text; delete removes it everywhere.
    let p03 = RecordKey::new("p03").unwrap();
    let upd = Write::Update {
        collection: post.clone(),
        rkey: p03.clone(),
        record: rec(&[("text", s("now about zebras"))]),
        swap: None,
    };
    accts.apply_writes(&alice, &[upd], None).unwrap();
    assert_eq!(accts.search("rust", 100).unwrap().len(), 9);
    assert_eq!(accts.search("zebras", 100).unwrap().len(), 1);
    accts
        .apply_writes(&alice, &[Write::Delete { collection: post.clone(), rkey: p03.clone(), swap: None }], None)
        .unwrap();
    assert!(accts.search("zebras", 100).unwrap().is_empty());
    assert_eq!(accts.list_records(&alice, &post, None, 100, false).unwrap().len(), 29);

    // A refused batch leaves head and index alone.
    let head = accts.get(&alice).unwrap().unwrap().head;
    let dup = Write::Create {
        collection: post.clone(),
        rkey: RecordKey::new("p01").unwrap(),
        record: rec(&[("text", s("dup"))]),
    };
    assert!(
        matches!(accts.apply_writes(&alice, &[dup], None), Err(AccountError::Repo(e)) if matches!(*e, RepoError::RecordExists(_)))
    );
    assert_eq!(accts.get(&alice).unwrap().unwrap().head, head);

    // Reopening sees the same heads and index, and the repo's MST agrees with the index.
    drop(accts);
    let accts = Accounts::open(&store, db, 2).unwrap();
    assert_eq!(accts.get(&alice).unwrap().unwrap().head, head);
    let repo = accts.repo(&alice).unwrap();
    assert_eq!(repo.mst().unwrap().len().unwrap(), 29);
}

#[test]
fn export_since_a_revision_holds_only_newer_blocks() {
    use ues_ipld::car::CarReader;
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Sqlite::open(dir.path().join("i.sqlite"), &SqliteConfig::default()).unwrap());
    let store = MemoryBlockstore::new();
    let accts = Accounts::open(&store, db, 1).unwrap();
    let did = Did::new("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa").unwrap();
    accts.create(did.clone(), Handle::new("a.test").unwrap(), KeyType::K256).unwrap();
    let post = Nsid::new("app.bsky.feed.post").unwrap();
    let mk = |i: usize| Write::Create {
        collection: post.clone(),
        rkey: RecordKey::new(format!("r{i:03}")).unwrap(),
        record: rec(&[("text", s(&format!("t{i}")))]),
    };
    accts.apply_writes(&did, &(0..100).map(mk).collect::<Vec<_>>(), None).unwrap();
    let mid = accts.get(&did).unwrap().unwrap().rev;
    let res = accts.apply_writes(&did, &[mk(500)], None).unwrap();

    let full = accts.export_car(&did, None, Vec::new()).unwrap();
    let partial = accts.export_car(&did, Some(&mid), Vec::new()).unwrap();
    let blocks = |car: &[u8]| CarReader::new(car).unwrap().map(|b| b.unwrap().0).collect::<Vec<_>>();
    let (all, newer) = (blocks(&full), blocks(&partial));
    assert!(newer.len() < 15 && all.len() > 100, "{} vs {}", newer.len(), all.len());
    let mut expected: Vec<_> = res.blocks.iter().map(|b| b.0).collect();
    expected.sort();
    let mut got = newer.clone();
    got.sort();
    assert_eq!(got, expected, "exactly the last commit's blocks");
    assert_eq!(newer[0], res.cid, "the head commit first");
}

/// Secondary indexes a Lexicon declares: maintained on create, update and delete, queried across
/// accounts with a cursor, rebuilt from stored records when the declaration changes; plus the
/// by-time listing with a cursor that loses nothing when many records share a millisecond.
#[test]
fn declared_indexes_and_records_by_time() {
    use ues_repo::accounts::TimeCursor;
    use ues_repo::lexicon::{IndexValue, Lexicons};

    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Sqlite::open(dir.path().join("i.sqlite"), &SqliteConfig::default()).unwrap());
    let store = MemoryBlockstore::new();
    let mut accts = Accounts::open(&store, db.clone(), 1).unwrap();
    let mut lex = Lexicons::new();
    let doc = serde_json::json!({"lexicon": 1, "id": "com.example.like", "defs": {"main": {
        "type": "record", "key": "tid",
        "indexes": [{"name": "subject", "path": "subject.uri"}, {"name": "tag", "path": "tags"}, {"name": "stars", "path": "stars"}],
        "record": {"type": "object", "properties": {}}}}});
    lex.add(&doc).unwrap();
    let bad = serde_json::json!({"lexicon": 1, "id": "com.example.bad", "defs": {"main": {
        "type": "record", "key": "tid", "indexes": [{"name": "a", "path": "x"}, {"name": "a", "path": "y"}],
        "record": {"type": "object", "properties": {}}}}});
    assert!(lex.add(&bad).is_err(), "repeated index names are refused");
    assert!(accts.set_indexes(lex.indexes().clone()).unwrap().contains(&"com.example.like".to_string()));

    let like = Nsid::new("com.example.like").unwrap();
    let mk = |subject: &str, tags: &[&str], stars: i128| {
        rec(&[
            ("$type", s("com.example.like")),
            ("subject", rec(&[("uri", s(subject))])),
            ("tags", Ipld::List(tags.iter().map(|t| s(t)).collect())),
            ("stars", Ipld::Integer(stars)),
        ])
    };
    let target = "at://did:plc:aaaaaaaaaaaaaaaaaaaaaaaa/app.bsky.feed.post/p1";
    let mut dids = Vec::new();
    for (n, name) in ["carol", "dave", "erin"].iter().enumerate() {
        let did = Did::new(format!("did:plc:{}", name.repeat(24).get(..24).unwrap())).unwrap();
        accts.create(did.clone(), Handle::new(format!("{name}.test")).unwrap(), KeyType::K256).unwrap();
        let writes: Vec<Write> = (0..4)
            .map(|i| Write::Create {
                collection: like.clone(),
                rkey: RecordKey::new(format!("l{i}")).unwrap(),
                record: mk(if i < 2 { target } else { "at://other/x/y" }, &["rust", "cats"][..i % 2 + 1], n as i128),
            })
            .collect();
        accts.apply_writes(&did, &writes, None).unwrap();
        dids.push(did);
    }
    let q = |accts: &Accounts<&MemoryBlockstore>, v: IndexValue, name: &str, cursor: Option<(&str, &str)>, limit| {
        accts.query_index("com.example.like", name, &v, cursor, limit).unwrap()
    };
    let all = q(&accts, IndexValue::Text(target.into()), "subject", None, 100);
    assert_eq!(all.len(), 6, "two likes of the target from each of three accounts");
    let first = q(&accts, IndexValue::Text(target.into()), "subject", None, 4);
    let last = first.last().unwrap();
    let rest = q(&accts, IndexValue::Text(target.into()), "subject", Some((&last.did, &last.rkey)), 4);
    assert_eq!(first.len() + rest.len(), 6, "paging by cursor loses and repeats nothing");
    assert_eq!(q(&accts, IndexValue::Text("cats".into()), "tag", None, 100).len(), 6, "array values are indexed");
    assert_eq!(q(&accts, IndexValue::Integer(2), "stars", None, 100).len(), 4);

    // An update moves the record's values; a delete removes them.
    let carol = &dids[0];
    accts
        .apply_writes(
            carol,
            &[
                Write::Update {
                    collection: like.clone(),
                    rkey: RecordKey::new("l0").unwrap(),
                    record: mk("at://moved/x/y", &[], 0),
                    swap: None,
                },
                Write::Delete { collection: like.clone(), rkey: RecordKey::new("l1").unwrap(), swap: None },
            ],
            None,
        )
        .unwrap();
    assert_eq!(q(&accts, IndexValue::Text(target.into()), "subject", None, 100).len(), 4);
    assert_eq!(q(&accts, IndexValue::Text("at://moved/x/y".into()), "subject", None, 100).len(), 1);

    // A changed declaration rebuilds the collection's rows from the stored records.
    let mut lex2 = Lexicons::new();
    let mut doc2 = doc.clone();
    doc2["defs"]["main"]["indexes"] = serde_json::json!([{"name": "subject", "path": "subject.uri"}]);
    lex2.add(&doc2).unwrap();
    assert_eq!(accts.set_indexes(lex2.indexes().clone()).unwrap(), vec!["com.example.like".to_string()]);
    assert!(q(&accts, IndexValue::Text("cats".into()), "tag", None, 100).is_empty(), "dropped index emptied");
    assert_eq!(q(&accts, IndexValue::Text(target.into()), "subject", None, 100).len(), 4);
    assert!(accts.set_indexes(lex2.indexes().clone()).unwrap().is_empty(), "unchanged: nothing rebuilt");

    // By time: 12 records in three transactions; pages of 5 with the cursor see each exactly once.
    let mut seen = Vec::new();
    let mut cursor: Option<TimeCursor> = None;
    for _ in 0..10 {
        let page = accts.records_by_time(None, Some("com.example.like"), (0, i64::MAX), cursor.as_ref(), 5).unwrap();
        if page.is_empty() {
            break;
        }
        cursor = Some(page.last().unwrap().1.clone());
        let text = cursor.as_ref().unwrap().to_string();
        assert_eq!(text.parse::<TimeCursor>().unwrap(), *cursor.as_ref().unwrap(), "cursor round-trips as text");
        seen.extend(page.into_iter().map(|(r, _)| format!("{}/{}", r.did, r.rkey)));
    }
    let unique: std::collections::BTreeSet<_> = seen.iter().collect();
    assert_eq!((seen.len(), unique.len()), (11, 11), "11 likes left, none repeated or lost");
    let carols = accts.records_by_time(Some(carol.as_str()), None, (0, i64::MAX), None, 100).unwrap();
    assert_eq!(carols.len(), 3);
    assert!(accts.records_by_time(None, None, (0, 1), None, 100).unwrap().is_empty(), "time range applies");
}

/// Block ownership: each repository owns the blocks its commits introduced, not another's;
/// a deleted account owns nothing; `block_count` follows.
#[test]
fn block_ownership_per_repository() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Sqlite::open(dir.path().join("i.sqlite"), &SqliteConfig::default()).unwrap());
    let store = MemoryBlockstore::new();
    let accts = Accounts::open(&store, db, 1).unwrap();
    let coll = Nsid::new("com.example.note").unwrap();
    let mut heads = Vec::new();
    for (name, text) in [("a", "alpha"), ("b", "beta")] {
        let did = Did::new(format!("did:plc:{}", name.repeat(24))).unwrap();
        accts.create(did.clone(), Handle::new(format!("{name}.test")).unwrap(), KeyType::K256).unwrap();
        let w = Write::Create {
            collection: coll.clone(),
            rkey: RecordKey::new("r1").unwrap(),
            record: rec(&[("$type", s("com.example.note")), ("text", s(text))]),
        };
        let res = accts.apply_writes(&did, &[w], None).unwrap();
        heads.push((did, res.cid, res.ops[0].cid.unwrap()));
    }
    let (a, a_head, a_rec) = &heads[0];
    let (b, _, b_rec) = &heads[1];
    assert!(accts.owns_block(a, a_head).unwrap() && accts.owns_block(a, a_rec).unwrap());
    assert!(!accts.owns_block(a, b_rec).unwrap(), "another repository's record");
    assert!(accts.owns_block(b, b_rec).unwrap());
    assert!(accts.block_count(a).unwrap() >= 4, "two commits, the empty tree, a node, a record");
    accts.delete(b).unwrap();
    assert!(!accts.owns_block(b, b_rec).unwrap(), "a deleted account owns nothing");
    assert_eq!(accts.block_count(b).unwrap(), 0);
}

/// The full-text queue: a record changed and changed back before the indexer ran is indexed
/// once, with its current text; a deleted one not at all.
#[test]
fn text_queue_follows_the_latest_version() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Sqlite::open(dir.path().join("i.sqlite"), &SqliteConfig::default()).unwrap());
    let store = MemoryBlockstore::new();
    let accts = Accounts::open(&store, db, 1).unwrap();
    let did = Did::new("did:plc:qqqqqqqqqqqqqqqqqqqqqqqq").unwrap();
    accts.create(did.clone(), Handle::new("q.test").unwrap(), KeyType::K256).unwrap();
    let coll = Nsid::new("com.example.note").unwrap();
    let note = |t: &str| rec(&[("$type", s("com.example.note")), ("text", s(t))]);
    let put = |k: &str, t: &str, create: bool| {
        let (collection, rkey, record) = (coll.clone(), RecordKey::new(k).unwrap(), note(t));
        let w = if create {
            Write::Create { collection, rkey, record }
        } else {
            Write::Update { collection, rkey, record, swap: None }
        };
        accts.apply_writes(&did, &[w], None).unwrap();
    };
    put("a", "walnut", true);
    put("a", "chestnut", false);
    put("a", "walnut", false);
    put("b", "hazelnut", true);
    accts
        .apply_writes(
            &did,
            &[Write::Delete { collection: coll.clone(), rkey: RecordKey::new("b").unwrap(), swap: None }],
            None,
        )
        .unwrap();
    assert_eq!(accts.search("walnut", 10).unwrap().len(), 1, "indexed once, current text");
    assert!(accts.search("chestnut", 10).unwrap().is_empty(), "a replaced text is not indexed");
    assert!(accts.search("hazelnut", 10).unwrap().is_empty(), "a deleted record is not indexed");
    assert_eq!(accts.index_text(100).unwrap(), 0, "the queue is empty");
}

/// Group commit: 8 threads writing to one repository at once. Requests that queue together
/// are merged into one commit (or several, when they touch the same record or ask for a
/// swap): every write lands exactly once, each request is answered with its own operation, the
/// commits chain, the index agrees with the tree, and a request that fails inside a merged
/// commit (a record that exists) fails alone with its own typed error.
#[test]
fn concurrent_writers_are_group_committed() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Sqlite::open(dir.path().join("i.sqlite"), &SqliteConfig::default()).unwrap());
    let store = MemoryBlockstore::new();
    let accts = Accounts::open(&store, db, 1).unwrap();
    let did = Did::new("did:plc:gggggggggggggggggggggggg").unwrap();
    let (_, _, first) = accts.create(did.clone(), Handle::new("g.test").unwrap(), KeyType::K256).unwrap();
    let coll = Nsid::new("com.example.note").unwrap();
    type Answer = (String, Option<String>, Vec<String>);
    let results: Vec<Vec<Answer>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let (accts, did, coll) = (&accts, &did, &coll);
                scope.spawn(move || {
                    let mut answers = Vec::new();
                    for i in 0..50 {
                        let w = |k: String| Write::Create {
                            collection: coll.clone(),
                            rkey: RecordKey::new(k).unwrap(),
                            record: rec(&[("$type", s("com.example.note")), ("text", s("x"))]),
                        };
                        let res = accts.apply_writes(did, &[w(format!("t{t}-{i:02}"))], None).unwrap();
                        let paths = res.ops.iter().map(|o| o.path.clone()).collect();
                        answers.push((res.commit.rev.to_string(), res.since.as_ref().map(|t| t.to_string()), paths));
                        if i % 10 == 5 {
                            // A duplicate, queued among the others: refused alone, typed.
                            let again = accts.apply_writes(did, &[w(format!("t{t}-00"))], None);
                            assert!(
                                matches!(&again, Err(AccountError::Repo(e)) if matches!(**e, RepoError::RecordExists(_))),
                                "{again:?}"
                            );
                        }
                    }
                    answers
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let answers: Vec<(usize, Answer)> =
        results.into_iter().enumerate().flat_map(|(t, a)| a.into_iter().map(move |x| (t, x))).collect();
    assert_eq!(answers.len(), 400);
    // Each request saw exactly its own operation.
    for (t, (_, _, paths)) in &answers {
        assert_eq!(paths.len(), 1);
        assert!(paths[0].starts_with(&format!("com.example.note/t{t}-")), "{paths:?}");
    }
    let mut all_paths: Vec<&String> = answers.iter().map(|(_, (_, _, p))| &p[0]).collect();
    all_paths.sort();
    all_paths.dedup();
    assert_eq!(all_paths.len(), 400, "every write once");
    // The distinct commits form one chain from the first: every `since` is the previous one.
    let mut commits: Vec<(String, Option<String>)> =
        answers.iter().map(|(_, (r, s, _))| (r.clone(), s.clone())).collect();
    commits.sort();
    commits.dedup();
    let n = commits.len();
    assert!(n <= 400);
    eprintln!("400 requests from 8 threads became {n} commits");
    let mut by_since: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for (rev, since) in &commits {
        assert!(by_since.insert(since.clone().unwrap(), rev.clone()).is_none(), "two commits on one parent");
    }
    let mut at = first.commit.rev.to_string();
    for _ in 0..n {
        at = by_since.remove(&at).expect("the chain continues");
    }
    assert_eq!(accts.get(&did).unwrap().unwrap().rev, at, "the head is the chain's end");
    assert_eq!(accts.list_records(&did, &coll, None, 1000, false).unwrap().len(), 400);
    let tree = ues_ipld::mst::verify_tree(&store, accts.repo(&did).unwrap().commit().data).unwrap();
    assert_eq!((tree.entries, tree.missing_records), (400, 0));
    // A stale swap fails, alone.
    let stale = Some(first.cid);
    let w = |k: &str| Write::Create {
        collection: coll.clone(),
        rkey: RecordKey::new(k).unwrap(),
        record: rec(&[("$type", s("com.example.note")), ("text", s("y"))]),
    };
    assert!(accts.apply_writes(&did, &[w("late")], stale).is_err());
    accts.apply_writes(&did, &[w("fine")], None).unwrap();
    assert_eq!(accts.list_records(&did, &coll, None, 1000, false).unwrap().len(), 401);
}

/// Looking an account up by DID (served from memory after the first read) follows every change
/// to it: commits, a refused commit, handle, status, import, deletion; and a second `Accounts`
/// on the same database, which caches nothing of the first's, agrees.
#[test]
fn account_lookups_follow_every_change() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Sqlite::open(dir.path().join("i.sqlite"), &SqliteConfig::default()).unwrap());
    let store = MemoryBlockstore::new();
    let accts = Accounts::open(&store, db.clone(), 1).unwrap();
    let did = Did::new("did:plc:cachecachecachecachecach").unwrap();
    let (made, _, _) = accts.create(did.clone(), Handle::new("cache.test").unwrap(), KeyType::K256).unwrap();
    assert_eq!(accts.get(&did).unwrap().unwrap(), made);
    let fresh_view = || Accounts::open(&store, db.clone(), 2).unwrap().get(&did).unwrap();
    let coll = Nsid::new("com.example.note").unwrap();
    let note = |rkey: &str| Write::Create {
        collection: coll.clone(),
        rkey: RecordKey::new(rkey).unwrap(),
        record: rec(&[("$type", s("com.example.note")), ("text", s(rkey))]),
    };
    let mut last = None;
    for i in 0..5 {
        let res = accts.apply_writes(&did, &[note(&format!("n{i}"))], None).unwrap();
        let now = accts.get(&did).unwrap().unwrap();
        assert_eq!((now.head, now.rev.as_str()), (res.cid, res.commit.rev.as_str()));
        assert_eq!(fresh_view(), Some(now));
        last = Some(res);
    }
    let last = last.unwrap();
    // A refused commit (the key is taken) leaves the head where it was.
    assert!(accts.apply_writes(&did, &[note("n0")], None).is_err());
    assert_eq!(accts.get(&did).unwrap().unwrap().head, last.cid);
    accts.update_handle(&did, &Handle::new("renamed.test").unwrap()).unwrap();
    assert_eq!(accts.get(&did).unwrap().unwrap().handle.as_str(), "renamed.test");
    accts.set_status(&did, "deactivated").unwrap();
    assert_eq!(accts.get(&did).unwrap().unwrap().status, "deactivated");
    assert_eq!(fresh_view(), accts.get(&did).unwrap());
    accts.set_status(&did, "active").unwrap();
    // An import of an older state of the repository moves the head back.
    let mut car = Vec::new();
    accts.export_car(&did, None, &mut car).unwrap();
    accts.apply_writes(&did, &[note("later")], None).unwrap();
    let imported = accts.import_repo(&did, car.as_slice()).unwrap();
    assert_eq!(imported, last.cid);
    assert_eq!(accts.get(&did).unwrap().unwrap().head, last.cid);
    assert_eq!(fresh_view().unwrap().head, last.cid);
    accts.delete(&did).unwrap();
    assert_eq!(accts.get(&did).unwrap(), None);
}
