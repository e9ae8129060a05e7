//! Repositories and records as typed operations every face calls: which repository a request
//! names (and whether it may be read or written), record validation against the lexicons, and
//! the record writes and reads. XRPC renders the results as its lexicons say; REST as its
//! OpenAPI document says. Each runs store work: call reads from [`super::blocking`] and writes
//! from [`super::write_blocking`].

use super::scopes::Action;
use serde::Serialize;
use serde_json::Value;
use ues_sync::repo::accounts::{Account, AccountError, IndexedRecord};
use ues_sync::repo::ipld::storage::Blockstore;
use ues_sync::repo::ipld::{Ipld, json as atjson};
use ues_sync::repo::lexicon::ValidationStatus;
use ues_sync::repo::repo::{CommitResult, RepoError, Write};
use ues_sync::repo::syntax::{AtIdentifier, Did, Nsid, RecordKey};

use super::{Claims, Node, NodeError};

/// A record as reads return it.
#[derive(Debug, Clone, Serialize)]
pub struct RecordView {
    /// `at://<did>/<collection>/<rkey>`.
    pub uri: String,
    /// The record's CID.
    pub cid: String,
    /// The record as JSON (the AT Protocol's JSON form of its data).
    pub value: Value,
}

impl RecordView {
    /// The record's collection and key, from its URI.
    pub fn path(&self) -> (&str, &str) {
        let mut parts = self.uri.strip_prefix("at://").unwrap_or(&self.uri).splitn(3, '/').skip(1);
        (parts.next().unwrap_or_default(), parts.next().unwrap_or_default())
    }
}

/// A page of records and the cursor of the next page, if there may be one.
#[derive(Debug, Clone, Default)]
pub struct RecordPage {
    /// The records.
    pub records: Vec<RecordView>,
    /// Where the next page starts.
    pub cursor: Option<String>,
}

/// The commit a write made.
#[derive(Debug, Clone, Serialize)]
pub struct CommitMeta {
    /// The commit's CID.
    pub cid: String,
    /// Its revision.
    pub rev: String,
}

impl CommitMeta {
    fn of(res: &CommitResult) -> Self {
        CommitMeta { cid: res.cid.to_string(), rev: res.commit.rev.to_string() }
    }
}

/// What a single-record write made.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Written {
    /// The record's URI.
    pub uri: String,
    /// The record's CID.
    pub cid: Option<String>,
    /// The commit.
    pub commit: CommitMeta,
    /// `valid` (checked against its lexicon) or `unknown` (no lexicon known, or not asked).
    pub validation_status: String,
}

/// A record to create or replace.
#[derive(Debug, Clone)]
pub struct RecordWrite {
    /// The repository (DID or handle); it must be the caller's own.
    pub repo: String,
    /// The collection (NSID).
    pub collection: String,
    /// The record key; a fresh TID when `None` (create only).
    pub rkey: Option<String>,
    /// The record, as JSON.
    pub record: Value,
    /// `Some(true)`: it must validate against a known lexicon; `Some(false)`: not validated;
    /// `None`: validated when the lexicon is known.
    pub validate: Option<bool>,
    /// Replace only if the record is this version (`Some(None)`: only if there is none).
    pub swap_record: Option<Option<cid::Cid>>,
    /// Commit only if the repository's head is this commit.
    pub swap_commit: Option<cid::Cid>,
}

/// A parsed NSID, or `InvalidRequest`.
pub fn nsid(s: &str) -> Result<Nsid, NodeError> {
    Nsid::new(s).map_err(|e| NodeError::invalid(e.to_string()))
}

/// A parsed record key, or `InvalidRequest`.
pub fn rkey(s: &str) -> Result<RecordKey, NodeError> {
    RecordKey::new(s).map_err(|e| NodeError::invalid(e.to_string()))
}

/// An optional CID parameter, or `InvalidRequest`.
pub fn cid_param(s: Option<&str>) -> Result<Option<cid::Cid>, NodeError> {
    s.map(|c| c.parse::<cid::Cid>().map_err(|e| NodeError::invalid(format!("bad CID {c}: {e}")))).transpose()
}

impl Node {
    /// The account a repository parameter (DID or handle) names.
    pub fn find_repo(&self, repo: &str) -> Result<Account, NodeError> {
        let id: AtIdentifier =
            repo.parse().map_err(|e: ues_sync::repo::syntax::SyntaxError| NodeError::invalid(e.to_string()))?;
        let found = match &id {
            AtIdentifier::Did(d) => self.accounts.get(d)?,
            AtIdentifier::Handle(h) => self.accounts.by_handle(h)?,
        };
        found.ok_or_else(|| NodeError::not_found("RepoNotFound", format!("Could not find repo: {repo}")))
    }

    /// A repository whose records anyone may read: a taken-down or suspended account's
    /// records are hidden from every read, as its sync data is.
    pub fn readable_repo(&self, repo: &str) -> Result<Account, NodeError> {
        let account = self.find_repo(repo)?;
        match account.status.as_str() {
            "takendown" => Err(NodeError::not_found("RepoTakendown", format!("Repo has been taken down: {repo}"))),
            "suspended" => Err(NodeError::not_found("RepoSuspended", format!("Repo has been suspended: {repo}"))),
            _ => Ok(account),
        }
    }

    /// A repository whose data may be served over sync: hosted here and active.
    pub fn served_did(&self, did: &str) -> Result<Did, NodeError> {
        let did = Did::new(did).map_err(|e| NodeError::invalid(e.to_string()))?;
        let account = self
            .accounts
            .get(&did)?
            .ok_or_else(|| NodeError::not_found("RepoNotFound", format!("Could not find repo for DID: {did}")))?;
        match account.status.as_str() {
            "active" => Ok(did),
            "takendown" => Err(NodeError::not_found("RepoTakendown", format!("Repo has been taken down: {did}"))),
            "suspended" => Err(NodeError::not_found("RepoSuspended", format!("Repo has been suspended: {did}"))),
            _ => Err(NodeError::not_found("RepoDeactivated", format!("Repo has been deactivated: {did}"))),
        }
    }

    /// The account a write targets: it must be the caller's own, and active.
    pub fn writable(&self, caller: &Claims, repo: &str) -> Result<Account, NodeError> {
        let account = self.find_repo(repo)?;
        if account.did.as_str() != caller.sub {
            return Err(NodeError::new(
                axum::http::StatusCode::FORBIDDEN,
                "InvalidRequest",
                "Token does not grant access to this repository",
            ));
        }
        match account.status.as_str() {
            "active" => Ok(account),
            "takendown" => Err(NodeError::bad("AccountTakedown", "Account has been taken down")),
            _ => Err(NodeError::bad("AccountDeactivated", "Account is deactivated")),
        }
    }

    /// The record key a client chose, or a fresh TID when it chose none.
    pub fn rkey_or_new(&self, chosen: Option<&str>) -> Result<RecordKey, NodeError> {
        match chosen {
            Some(r) => rkey(r),
            None => RecordKey::new(self.tids.next().to_string()).map_err(NodeError::internal),
        }
    }

    /// Converts and validates a record: `$type` set to the collection when absent, refused
    /// when it names another; validated against the collection's lexicon when one is known.
    pub fn prepare_record(
        &self,
        collection: &Nsid,
        rkey: &str,
        record: Value,
        validate: Option<bool>,
    ) -> Result<(Ipld, ValidationStatus), NodeError> {
        let mut record = record;
        let obj = record.as_object_mut().ok_or_else(|| NodeError::invalid("Record must be an object"))?;
        match obj.get("$type").and_then(Value::as_str) {
            None => {
                obj.insert("$type".into(), Value::String(collection.to_string()));
            }
            Some(t) if t != collection.as_str() => {
                return Err(NodeError::invalid(format!("Invalid $type: expected {collection}, got {t}")));
            }
            Some(_) => {}
        }
        let ipld = atjson::record_from_json(&record).map_err(|e| NodeError::invalid(format!("Invalid record: {e}")))?;
        if validate == Some(false) {
            return Ok((ipld, ValidationStatus::Unknown));
        }
        let status = self
            .lexicons
            .validate_record(collection.as_str(), rkey, &ipld)
            .map_err(|e| NodeError::invalid(format!("Invalid {collection} record: {e}")))?;
        if status == ValidationStatus::Unknown && validate == Some(true) {
            return Err(NodeError::invalid(format!("Lexicon not found: {collection}")));
        }
        Ok((ipld, status))
    }

    /// Creates a record (`origin`: the `/ws` session the write came from, if it said).
    pub fn create_record(&self, caller: &Claims, origin: Option<u64>, w: RecordWrite) -> Result<Written, NodeError> {
        let account = self.writable(caller, &w.repo)?;
        let collection = nsid(&w.collection)?;
        caller.check_repo(collection.as_str(), Action::Create)?;
        let rkey = self.rkey_or_new(w.rkey.as_deref())?;
        let (record, status) = self.prepare_record(&collection, rkey.as_str(), w.record, w.validate)?;
        let write = Write::Create { collection: collection.clone(), rkey: rkey.clone(), record };
        let res = self.commit(origin, &account.did, &[write], w.swap_commit)?;
        self.firehose.notify();
        Ok(written(&account, &collection, &rkey, &res, status))
    }

    /// Creates or replaces a record at its key.
    pub fn put_record(&self, caller: &Claims, origin: Option<u64>, w: RecordWrite) -> Result<Written, NodeError> {
        let account = self.writable(caller, &w.repo)?;
        let collection = nsid(&w.collection)?;
        // A put creates or replaces: the grant must allow both.
        caller.check_repo(collection.as_str(), Action::Create)?;
        caller.check_repo(collection.as_str(), Action::Update)?;
        let rkey = rkey(w.rkey.as_deref().unwrap_or_default())?;
        let (record, status) = self.prepare_record(&collection, rkey.as_str(), w.record, w.validate)?;
        let write = Write::Update { collection: collection.clone(), rkey: rkey.clone(), record, swap: w.swap_record };
        let res = self.commit(origin, &account.did, &[write], w.swap_commit)?;
        self.firehose.notify();
        Ok(written(&account, &collection, &rkey, &res, status))
    }

    /// Deletes a record; `Ok(None)` when it was not there (not an error: no commit is made).
    pub fn delete_record(
        &self,
        caller: &Claims,
        origin: Option<u64>,
        (repo, collection, key): (&str, &str, &str),
        swap_record: Option<cid::Cid>,
        swap_commit: Option<cid::Cid>,
    ) -> Result<Option<CommitMeta>, NodeError> {
        let account = self.writable(caller, repo)?;
        caller.check_repo(collection, Action::Delete)?;
        let write = Write::Delete { collection: nsid(collection)?, rkey: rkey(key)?, swap: swap_record };
        let outcome = self.commit(origin, &account.did, &[write], swap_commit);
        self.firehose.notify();
        match outcome {
            Ok(res) => Ok(Some(CommitMeta::of(&res))),
            Err(AccountError::Repo(e)) if matches!(*e, RepoError::RecordNotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// One record, read from the repository's tree (`cid`: only if it is that version).
    pub fn get_record(
        &self,
        repo: &str,
        collection: &str,
        key: &str,
        cid: Option<cid::Cid>,
    ) -> Result<RecordView, NodeError> {
        let account = self.readable_repo(repo)?;
        let (collection, rk) = (nsid(collection)?, rkey(key)?);
        let found = self.accounts.repo(&account.did)?.get_record(&collection, &rk)?;
        match found {
            Some((c, value)) if cid.is_none_or(|w| w == c) => Ok(RecordView {
                uri: format!("at://{}/{collection}/{rk}", account.did),
                cid: c.to_string(),
                value: atjson::to_json(&value),
            }),
            _ => Err(NodeError::not_found(
                "RecordNotFound",
                format!("Could not locate record: at://{}/{collection}/{rk}", account.did),
            )),
        }
    }

    /// A page of a collection's records, newest first (by key) unless `reverse`; `limit` 1-100.
    pub fn list_records(
        &self,
        repo: &str,
        collection: &str,
        limit: usize,
        cursor: Option<&str>,
        reverse: bool,
    ) -> Result<RecordPage, NodeError> {
        if !(1..=100).contains(&limit) {
            return Err(NodeError::invalid("limit must be an integer from 1 to 100"));
        }
        let account = self.readable_repo(repo)?;
        let collection = nsid(collection)?;
        let cursor = cursor.filter(|c| !c.is_empty()).map(rkey).transpose()?; // `cursor=` is no cursor
        let rows = self.accounts.list_records(&account.did, &collection, cursor.as_ref(), limit, !reverse)?;
        let cursor = (rows.len() == limit).then(|| rows.last().map(|r| r.rkey.clone())).flatten();
        Ok(RecordPage { records: self.record_views(&rows)?, cursor })
    }

    /// Full-text search over every record's text, best match first.
    pub fn search_records(&self, q: &str, limit: usize) -> Result<Vec<RecordView>, NodeError> {
        let rows = self.accounts.search(q, limit)?;
        self.record_views(&rows)
    }

    /// The collections a repository has records in, in order.
    pub fn collections(&self, did: &Did) -> Result<Vec<String>, NodeError> {
        Ok(self.accounts.collections(did)?)
    }

    /// Index rows as records, reading each record's block (one batched read for the page).
    pub fn record_views(&self, rows: &[IndexedRecord]) -> Result<Vec<RecordView>, NodeError> {
        let cids: Vec<cid::Cid> =
            rows.iter().map(|r| r.cid.parse()).collect::<Result<_, _>>().map_err(NodeError::internal)?;
        let blocks = self.accounts.blocks().get_many(&cids).map_err(NodeError::internal)?;
        let mut out = Vec::with_capacity(rows.len());
        for (r, bytes) in rows.iter().zip(blocks) {
            // One unreadable record (missing, or stored before the write path refused what the
            // decoder cannot read) is left out with a log line: it must not fail everyone's query.
            let value = match bytes.map(|b| ues_sync::repo::ipld::dagcbor::decode_atproto(&b)) {
                Some(Ok(v)) => v,
                Some(Err(e)) => {
                    tracing::warn!(did = %r.did, collection = %r.collection, rkey = %r.rkey, error = %e, "unreadable record left out");
                    continue;
                }
                None => {
                    tracing::warn!(did = %r.did, collection = %r.collection, rkey = %r.rkey, "record block missing; left out");
                    continue;
                }
            };
            out.push(RecordView {
                uri: format!("at://{}/{}/{}", r.did, r.collection, r.rkey),
                cid: r.cid.clone(),
                value: atjson::to_json(&value),
            });
        }
        Ok(out)
    }
}

fn written(
    account: &Account,
    collection: &Nsid,
    rkey: &RecordKey,
    res: &CommitResult,
    status: ValidationStatus,
) -> Written {
    Written {
        uri: format!("at://{}/{collection}/{rkey}", account.did),
        cid: res.ops[0].cid.map(|c| c.to_string()),
        commit: CommitMeta::of(res),
        validation_status: status.as_str().to_string(),
    }
}
