//! Incremental view maintenance over Z-sets, with its state in the node's database.
//!
//! Each input record is a row of its alias (the columns the view reads). A change to one record
//! (insert, update, delete) is turned into the joined rows it takes away and brings (the
//! difference of the joined rows around it before and after, found through indexed join
//! keys), then those rows, filtered, update their groups (a count, integer sums, and for `min`
//! and `max` a multiset of values), and the groups (or, ungrouped, the rows) update the
//! ordered output, of which the first `limit` rows are the view. The work is proportional to
//! the rows the change touches, never to the size of the view.
//!
//! The state lives in SQLite tables written in the transaction that moves the application's
//! cursor, so a restart resumes exactly where the last committed batch ended.
//!
//! Hand-written rather than built on Feldera's `dbsp`: see `docs/lenses.md` for the measured
//! cost of that crate and why its in-memory, statically typed circuits do not fit views that
//! accounts create at run time and that must persist with the event cursor.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;

use serde_json::{Map, Value, json};
use ues_protocol::sync::repo::ipld::storage::rusqlite::{self, Connection, OptionalExtension, params};

use super::def::{Agg, Cmp, Operand, Pred, Ref, Sel, View};

/// The tables, in the application's own database (attached as `lens`; made again, and every
/// view built again, when their layout changes).
///
/// Records, join keys and groups are keyed by digests, not by their text: a record by its
/// account's (8 bytes, so an account's records lie together) and its URI's (16), a join key
/// and a group by their JSON's (16; BLAKE3). Keys that short keep the B-trees shallow: with the
/// texts as keys a million-row view took 2.4 GB and a change to it twice the time.
pub const SCHEMA_SQL: &str = "
CREATE TABLE lens.lens_view (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    did TEXT NOT NULL,
    name TEXT NOT NULL,
    cid TEXT NOT NULL,
    definition TEXT NOT NULL,
    built_seq INTEGER NOT NULL,
    top_n INTEGER NOT NULL DEFAULT 0,
    pool_n INTEGER NOT NULL DEFAULT 0,
    state_n INTEGER NOT NULL DEFAULT 0,
    stopped TEXT,
    created_at INTEGER NOT NULL,
    UNIQUE (did, name)
);
CREATE TABLE lens.lens_in (
    view INTEGER NOT NULL, alias INTEGER NOT NULL, r BLOB NOT NULL, cols TEXT NOT NULL,
    PRIMARY KEY (view, alias, r)
) WITHOUT ROWID;
CREATE TABLE lens.lens_key (
    view INTEGER NOT NULL, edge INTEGER NOT NULL, side INTEGER NOT NULL, k BLOB NOT NULL, r BLOB NOT NULL,
    PRIMARY KEY (view, edge, side, k, r)
) WITHOUT ROWID;
CREATE TABLE lens.lens_mm (
    view INTEGER NOT NULL, g BLOB NOT NULL, agg INTEGER NOT NULL, v BLOB NOT NULL, val TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (view, g, agg, v)
) WITHOUT ROWID;
CREATE TABLE lens.lens_out (
    view INTEGER NOT NULL, k BLOB NOT NULL, sort BLOB NOT NULL, top INTEGER, row TEXT NOT NULL,
    n INTEGER NOT NULL DEFAULT 0, acc TEXT,
    PRIMARY KEY (view, k)
) WITHOUT ROWID;
CREATE INDEX lens.lens_out_order ON lens_out (view, top, sort) WHERE top IS NOT NULL;
";

/// Output rows kept in order past the view's end: the next to move into the view when one of
/// its rows leaves. At least 256 and twice the view's `limit`, and one per 1,024 rows the view
/// stores.
///
/// The output is ordered by an index over the view's rows and a pool of the rows that come
/// next, not over every row: a row further down changes place without an index entry to move
/// (on a million-row view, most changes). The rows indexed are always a prefix of the order. A
/// pool grown to twice its size gives its last rows back to the rows further down; an empty
/// one, when a row leaves the view, is filled by a scan of the view's output for the best rows
/// further down. That scan happens at most once per pool's worth of changes, and a pool in
/// proportion to the view keeps its cost, spread over those changes, at about a thousand rows
/// read per change, however large the view.
pub(crate) fn pool_size(limit: usize, stored: i64) -> usize {
    // Small in the engine's own tests, so that they find the pool empty again and again.
    if cfg!(test) { 1 } else { (2 * limit).max(256).max((stored.max(0) / 1024) as usize) }
}

/// Joined rows one record change may touch at most (past it the view stops, with the reason).
pub const MAX_FANOUT: usize = 250_000;

/// Index lookups and records read one record change may make at most (a join whose matches
/// lead nowhere costs work without making rows: this bounds it too).
pub const MAX_VISITS: usize = 1_000_000;

/// An input record's columns (in its alias's column order).
pub type Row = Vec<Value>;

/// A failure maintaining a view.
#[derive(Debug, thiserror::Error)]
pub enum LensError {
    /// The database failed (the batch rolls back and is retried).
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
    /// The view cannot go on (its bound was passed): it stops with this reason.
    #[error("{0}")]
    Stop(String),
}

/// What a change did to a view's rows.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Diff {
    /// Rows that joined the view.
    pub added: Vec<Value>,
    /// Rows that left it.
    pub removed: Vec<Value>,
}

impl Diff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }

    /// Cancels rows both removed and added (a row that left and came back unchanged).
    pub fn net(&mut self) {
        if self.added.is_empty() || self.removed.is_empty() {
            return;
        }
        let mut counts: HashMap<String, i64> = HashMap::new();
        for r in &self.added {
            *counts.entry(r.to_string()).or_default() += 1;
        }
        for r in &self.removed {
            *counts.entry(r.to_string()).or_default() -= 1;
        }
        let mut keep = |rows: &mut Vec<Value>, sign: i64| {
            rows.retain(|r| {
                let c = counts.get_mut(&r.to_string()).expect("counted");
                if *c * sign > 0 {
                    *c -= sign;
                    true
                } else {
                    false
                }
            });
        };
        keep(&mut self.added, 1);
        keep(&mut self.removed, -1);
    }
}

/// An alias's columns of a record (its JSON with the meta parts added).
pub fn row_of(view: &View, alias: usize, record: &Value) -> Row {
    view.aliases[alias].columns.iter().map(|c| c.get(record).cloned().unwrap_or(Value::Null)).collect()
}

fn key_text(v: &Value) -> Option<String> {
    (!v.is_null()).then(|| v.to_string())
}

/// A 16-byte digest (BLAKE3): how join keys, groups and record URIs are keyed in the state.
/// Collision-resistant, so two different texts never share a key in practice, whoever wrote
/// them.
fn digest(text: &str) -> [u8; 16] {
    let mut out = [0; 16];
    out.copy_from_slice(&blake3::hash(text.as_bytes()).as_bytes()[..16]);
    out
}

/// The prefix of the keys of an account's records.
fn account_key(did: &str) -> [u8; 8] {
    let mut out = [0; 8];
    out.copy_from_slice(&blake3::hash(did.as_bytes()).as_bytes()[..8]);
    out
}

/// A record's key: its account's digest, then its URI's.
fn record_key(uri: &str) -> Vec<u8> {
    let did = uri.strip_prefix("at://").and_then(|r| r.split('/').next()).unwrap_or(uri);
    let mut out = Vec::with_capacity(24);
    out.extend(account_key(did));
    out.extend(digest(uri));
    out
}

/// A group's key (or, ungrouped, a joined row's).
fn group_key(text: &str) -> Vec<u8> {
    digest(text).to_vec()
}

// Order-preserving encoding of values (for sort keys and min/max multisets): a type tag, then
// the value; numbers as f64 with the sign bit flipped (and all bits for negatives); strings
// with 0x00 escaped and a 0x00 0x00 terminator, so no encoding is a prefix of another.
fn encode(v: &Value, out: &mut Vec<u8>) {
    fn text(s: &str, out: &mut Vec<u8>) {
        for b in s.bytes() {
            out.push(b);
            if b == 0 {
                out.push(0xff);
            }
        }
        out.extend([0, 0]);
    }
    match v {
        Value::Null => out.push(1),
        Value::Bool(false) => out.push(2),
        Value::Bool(true) => out.push(3),
        Value::Number(n) => {
            out.push(4);
            let f = n.as_f64().unwrap_or(0.0);
            let bits = f.to_bits();
            let bits = if f.is_sign_negative() { !bits } else { bits ^ (1 << 63) };
            out.extend(bits.to_be_bytes());
            // Integers past 2^53 share an f64 with their neighbours: how far the exact value
            // lies from its f64 breaks the tie. For 64-bit integers that is within ±2^10, so
            // two bytes (sort keys stay short: they are index keys).
            let exact = n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from));
            let off = exact.map_or(0, |e| (e - f as i128).clamp(-32768, 32767) as i32);
            out.extend(((off + 32768) as u16).to_be_bytes());
        }
        Value::String(s) => {
            out.push(5);
            text(s, out);
        }
        other => {
            out.push(6);
            text(&other.to_string(), out);
        }
    }
}

fn encoded(v: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    encode(v, &mut out);
    out
}

/// Compares two values the way views order them (null < booleans < numbers < strings < the
/// rest).
pub fn compare(a: &Value, b: &Value) -> std::cmp::Ordering {
    encoded(a).cmp(&encoded(b))
}

/// A row's place in the view's order: its ordered columns, then its key (ties are broken by
/// the key's digest: stable, but in no meaningful order).
fn sort_key(view: &View, row: &Value, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    for &(i, desc) in &view.order {
        let start = out.len();
        encode(row.get(&view.select[i].0).unwrap_or(&Value::Null), &mut out);
        if desc {
            for b in &mut out[start..] {
                *b = !*b;
            }
        }
    }
    out.extend_from_slice(key);
    out
}

/// A joined row: each alias's record (none for a left join without a match) and its id.
#[derive(Clone, Debug)]
struct Tuple {
    rows: Vec<Option<Rc<Row>>>,
}

impl Tuple {
    fn col(&self, r: Ref) -> &Value {
        self.rows[r.alias].as_ref().and_then(|row| row.get(r.col)).unwrap_or(&Value::Null)
    }

    fn id(&self, view: &View) -> String {
        let mut id = String::new();
        for (i, r) in self.rows.iter().enumerate() {
            if i > 0 {
                id.push(' ');
            }
            if let Some(r) = r {
                id.push_str(r[super::def::uri_col(&view.aliases[i])].as_str().unwrap_or_default());
            } else {
                id.push('-');
            }
        }
        id
    }
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn cmp_values(op: Cmp, a: &Value, b: &Value) -> bool {
    use std::cmp::Ordering::*;
    if a.is_null() || b.is_null() {
        // Absent compares equal only to null, and is never ordered.
        return match op {
            Cmp::Eq => a.is_null() && b.is_null(),
            Cmp::Ne => !(a.is_null() && b.is_null()),
            _ => false,
        };
    }
    let ord = match (a, b) {
        (Value::Number(_), Value::Number(_)) => num(a).partial_cmp(&num(b)),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    };
    match (op, ord) {
        (Cmp::Eq, o) => o == Some(Equal) || (o.is_none() && a == b),
        (Cmp::Ne, o) => !(o == Some(Equal) || (o.is_none() && a == b)),
        (_, None) => false,
        (Cmp::Lt, Some(o)) => o == Less,
        (Cmp::Le, Some(o)) => o != Greater,
        (Cmp::Gt, Some(o)) => o == Greater,
        (Cmp::Ge, Some(o)) => o != Less,
    }
}

fn eval(p: &Pred, t: &Tuple) -> bool {
    match p {
        Pred::Cmp(op, r, x) => {
            let b = match x {
                Operand::Col(c) => t.col(*c),
                Operand::Lit(v) => v,
            };
            cmp_values(*op, t.col(*r), b)
        }
        Pred::In(r, list) => {
            let v = t.col(*r);
            !v.is_null() && list.iter().any(|x| cmp_values(Cmp::Eq, v, x))
        }
        Pred::Contains(r, needle) => match t.col(*r) {
            Value::String(s) => s.to_lowercase().contains(needle.as_str()),
            Value::Array(a) => a.iter().any(|e| e.as_str().is_some_and(|s| s.to_lowercase().contains(needle.as_str()))),
            _ => false,
        },
        Pred::Exists(r) => !t.col(*r).is_null(),
        Pred::And(ps) => ps.iter().all(|p| eval(p, t)),
        Pred::Or(ps) => ps.iter().any(|p| eval(p, t)),
        Pred::Not(p) => !eval(p, t),
    }
}

/// The aggregates over a column, with that column's value in `t` where it is present: (selected
/// column index, aggregate, value).
fn agg_inputs<'t>(view: &'t View, t: &'t Tuple) -> impl Iterator<Item = (usize, Agg, &'t Value)> + 't {
    view.select.iter().enumerate().filter_map(move |(i, (_, s))| match s {
        Sel::Agg(agg, Some(r)) => Some((i, *agg, t.col(*r))).filter(|(_, _, v)| !v.is_null()),
        _ => None,
    })
}

/// Adds `w` rows holding `v` to a count, sum or average accumulator (`[sum, count]`).
fn accumulate(acc: &mut (i64, i64), agg: Agg, v: &Value, w: i64) {
    match agg {
        Agg::Count => acc.1 += w,
        Agg::Sum | Agg::Avg => {
            if let Some(x) = v.as_i64() {
                acc.0 = acc.0.wrapping_add(x.wrapping_mul(w));
                acc.1 += w;
            }
        }
        Agg::Min | Agg::Max => {}
    }
}

/// A row of an ungrouped view.
fn select_row(view: &View, t: &Tuple) -> Value {
    let mut m = Map::new();
    for (name, s) in &view.select {
        if let Sel::Col(r) = s {
            m.insert(name.clone(), t.col(*r).clone());
        }
    }
    Value::Object(m)
}

fn group_values(view: &View, t: &Tuple) -> Vec<Value> {
    view.group_by.iter().map(|r| t.col(*r).clone()).collect()
}

/// The accumulators of a group: per selected column, `[sum, count]` for sums, averages and
/// counts of a column (unused for the rest). Sums wrap on overflow, so every change can be
/// taken back exactly.
type Acc = Vec<(i64, i64)>;

fn group_row(view: &View, values: &[Value], n: i64, acc: &Acc, extreme: &dyn Fn(usize) -> Value) -> Value {
    let mut m = Map::new();
    for (i, (name, s)) in view.select.iter().enumerate() {
        let v = match s {
            Sel::Col(r) => {
                let g = view.group_by.iter().position(|x| x == r).expect("checked at creation");
                values[g].clone()
            }
            Sel::Agg(Agg::Count, None) => json!(n),
            Sel::Agg(Agg::Count, Some(_)) => json!(acc[i].1),
            Sel::Agg(Agg::Sum, _) => {
                if acc[i].1 == 0 {
                    Value::Null
                } else {
                    json!(acc[i].0)
                }
            }
            Sel::Agg(Agg::Avg, _) => {
                if acc[i].1 == 0 {
                    Value::Null
                } else {
                    json!(acc[i].0 as f64 / acc[i].1 as f64)
                }
            }
            Sel::Agg(Agg::Min | Agg::Max, _) => extreme(i),
        };
        m.insert(name.clone(), v);
    }
    Value::Object(m)
}

/// A view's counters, read once per batch and written back at its end.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    /// Rows in the view (the first `limit` of the output).
    pub top_n: i64,
    /// Rows in the pool (the rows next after the view's, kept in order).
    pub pool_n: i64,
    /// Stored rows (inputs and outputs), held under the configured bound.
    pub state_n: i64,
}

/// One view's maintenance inside a transaction.
pub struct Maint<'a> {
    conn: &'a Connection,
    id: i64,
    view: &'a View,
    /// Its counters.
    pub counters: Counters,
    max_state: i64,
    visits: std::cell::Cell<usize>,
    /// Rows moved into or out of the view so far (a row read before may be stale since).
    moves: u64,
    /// The view's last row (key, sort key, row) once read; forgotten when the view's rows
    /// change.
    last: Option<Option<Boundary>>,
    /// The sort key of the pool's last row once read; forgotten when the pool changes.
    tail: Option<Option<Vec<u8>>>,
}

/// A group being changed: its values, row count and accumulators, its output row as it was,
/// and per `min`/`max` column the extreme so far (or that it must be read again: the old
/// extreme's last copy left).
struct GroupState {
    values: Vec<Value>,
    n: i64,
    acc: Acc,
    prev: Option<OutRow>,
    /// `moves` when `prev` was read.
    read_at: u64,
    ext: Vec<Option<Value>>,
    dirty: Vec<bool>,
}

/// An output row as stored.
struct OutRow {
    sort: Vec<u8>,
    top: Place,
    row: String,
}

/// Where an output row stands: in the view, in the pool of rows that come next (both indexed
/// in order), or further down (not indexed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    View,
    Pool,
    Down,
}

impl Place {
    fn column(self) -> Option<i64> {
        match self {
            Place::View => Some(1),
            Place::Pool => Some(0),
            Place::Down => None,
        }
    }

    fn of(column: Option<i64>) -> Self {
        match column {
            Some(0) => Place::Pool,
            Some(_) => Place::View,
            None => Place::Down,
        }
    }
}

/// A row at the view's edge: (key, sort key, row).
type Boundary = (Vec<u8>, Vec<u8>, String);

/// The records found for join keys during one change (a key looked up again is not read
/// again).
type Found = HashMap<(usize, i64, String), Vec<Rc<Row>>>;

impl<'a> Maint<'a> {
    /// Starts maintaining view `id` (its counters read from the database); it stops when its
    /// stored rows would pass `max_state`.
    pub fn new(conn: &'a Connection, id: i64, view: &'a View, max_state: i64) -> rusqlite::Result<Self> {
        let (top_n, pool_n, state_n) = conn
            .prepare_cached("SELECT top_n, pool_n, state_n FROM lens_view WHERE id = ?1")?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(Maint {
            conn,
            id,
            view,
            counters: Counters { top_n, pool_n, state_n },
            max_state,
            visits: std::cell::Cell::new(0),
            moves: 0,
            last: None,
            tail: None,
        })
    }

    /// Writes the counters back.
    pub fn finish(self) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached("UPDATE lens_view SET top_n = ?2, pool_n = ?3, state_n = ?4 WHERE id = ?1")?
            .execute(params![self.id, self.counters.top_n, self.counters.pool_n, self.counters.state_n])?;
        Ok(())
    }

    fn read(&self, alias: usize, r: &[u8]) -> rusqlite::Result<Option<Row>> {
        let text: Option<String> = self
            .conn
            .prepare_cached("SELECT cols FROM lens_in WHERE view = ?1 AND alias = ?2 AND r = ?3")?
            .query_row(params![self.id, alias as i64, r], |r| r.get(0))
            .optional()?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// Counts work against the change's budget.
    fn visit(&self, n: usize) -> Result<(), LensError> {
        let v = self.visits.get() + n;
        self.visits.set(v);
        if v > MAX_VISITS {
            return Err(LensError::Stop(format!("one change needed more than {MAX_VISITS} lookups")));
        }
        Ok(())
    }

    /// Whether the records of `alias` are joined on their URI (column `col` is `$uri`): then
    /// they are read by their key, and need no index of their own.
    fn by_uri(&self, alias: usize, col: usize) -> bool {
        col == super::def::uri_col(&self.view.aliases[alias])
    }

    /// The records on side `side` of join `e` (1: its child, found by the child's column; 0:
    /// its parent) whose join column holds `key`.
    fn matches(&self, e: usize, side: i64, key: &Value, found: &mut Found) -> Result<Vec<Rc<Row>>, LensError> {
        let edge = &self.view.edges[e];
        let (alias, col) = if side == 1 { (edge.child, edge.child_col) } else { (edge.parent, edge.parent_col) };
        let Some(text) = key_text(key) else { return Ok(Vec::new()) };
        if let Some(rows) = found.get(&(e, side, text.clone())) {
            return Ok(rows.clone());
        }
        let rows: Vec<Rc<Row>> = if self.by_uri(alias, col) {
            self.visit(1)?;
            match key {
                Value::String(uri) => self.read(alias, &record_key(uri))?.map(Rc::new).into_iter().collect(),
                _ => Vec::new(),
            }
        } else {
            let mut s = self.conn.prepare_cached(
                "SELECT i.cols FROM lens_key k JOIN lens_in i ON i.view = k.view AND i.alias = ?5 AND i.r = k.r
                 WHERE k.view = ?1 AND k.edge = ?2 AND k.side = ?3 AND k.k = ?4 LIMIT ?6",
            )?;
            // Each match is an index entry and a record read.
            let room = MAX_VISITS.saturating_sub(self.visits.get()) / 2 + 1;
            let texts: Vec<String> = s
                .query_map(params![self.id, e as i64, side, &digest(&text)[..], alias as i64, room as i64], |r| {
                    r.get(0)
                })?
                .collect::<rusqlite::Result<_>>()?;
            self.visit(2 * texts.len() + 1)?;
            texts.iter().filter_map(|t| serde_json::from_str(t).ok()).map(Rc::new).collect()
        };
        found.insert((e, side, text), rows.clone());
        Ok(rows)
    }

    /// The indexed join keys a record of `alias` is found by: (edge, side, key digest).
    fn keys(&self, alias: usize, row: &Row) -> Vec<(usize, i64, [u8; 16])> {
        let mut out = Vec::new();
        for (e, edge) in self.view.edges.iter().enumerate() {
            if edge.parent == alias
                && !self.by_uri(alias, edge.parent_col)
                && let Some(k) = key_text(&row[edge.parent_col])
            {
                out.push((e, 0, digest(&k)));
            }
            if edge.child == alias
                && !self.by_uri(alias, edge.child_col)
                && let Some(k) = key_text(&row[edge.child_col])
            {
                out.push((e, 1, digest(&k)));
            }
        }
        out
    }

    /// Writes the record's own row now, where nothing around it is read before it changes,
    /// and returns what it held: one B-tree step for a create (the usual change) or a delete.
    fn swap_row(&self, alias: usize, r: &[u8], new: Option<&Row>) -> rusqlite::Result<Option<Row>> {
        let Some(new) = new else {
            let old: Option<String> = self
                .conn
                .prepare_cached("DELETE FROM lens_in WHERE view = ?1 AND alias = ?2 AND r = ?3 RETURNING cols")?
                .query_row(params![self.id, alias as i64, r], |x| x.get(0))
                .optional()?;
            return Ok(old.and_then(|t| serde_json::from_str(&t).ok()));
        };
        let text = serde_json::to_string(new).unwrap_or_default();
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT INTO lens_in (view, alias, r, cols) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (view, alias, r) DO NOTHING",
            )?
            .execute(params![self.id, alias as i64, r, text])?;
        if inserted == 1 {
            return Ok(None);
        }
        let old = self.read(alias, r)?;
        if old.as_ref() != Some(new) {
            self.conn
                .prepare_cached("UPDATE lens_in SET cols = ?4 WHERE view = ?1 AND alias = ?2 AND r = ?3")?
                .execute(params![self.id, alias as i64, r, text])?;
        }
        Ok(old)
    }

    /// Writes the record's row (unless `row_written`) and its join keys; counts it.
    fn store(
        &mut self,
        alias: usize,
        r: &[u8],
        old: Option<&Row>,
        new: Option<&Row>,
        row_written: bool,
    ) -> Result<(), LensError> {
        if let Some(old) = old {
            let mut s = self.conn.prepare_cached(
                "DELETE FROM lens_key WHERE view = ?1 AND edge = ?2 AND side = ?3 AND k = ?4 AND r = ?5",
            )?;
            for (e, side, k) in self.keys(alias, old) {
                s.execute(params![self.id, e as i64, side, &k[..], r])?;
            }
        }
        match new {
            Some(new) => {
                if !row_written {
                    self.conn
                        .prepare_cached(
                            "INSERT INTO lens_in (view, alias, r, cols) VALUES (?1, ?2, ?3, ?4)
                             ON CONFLICT (view, alias, r) DO UPDATE SET cols = excluded.cols",
                        )?
                        .execute(params![self.id, alias as i64, r, serde_json::to_string(new).unwrap_or_default()])?;
                }
                let mut s = self.conn.prepare_cached(
                    "INSERT OR IGNORE INTO lens_key (view, edge, side, k, r) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for (e, side, k) in self.keys(alias, new) {
                    s.execute(params![self.id, e as i64, side, &k[..], r])?;
                }
                if old.is_none() {
                    self.grow(1)?;
                }
            }
            None => {
                if !row_written {
                    self.conn
                        .prepare_cached("DELETE FROM lens_in WHERE view = ?1 AND alias = ?2 AND r = ?3")?
                        .execute(params![self.id, alias as i64, r])?;
                }
                self.counters.state_n -= 1;
            }
        }
        Ok(())
    }

    fn grow(&mut self, n: i64) -> Result<(), LensError> {
        self.counters.state_n += n;
        if self.counters.state_n > self.max_state {
            return Err(LensError::Stop(format!(
                "the view passed its bound of {} stored rows ([lens] max_view_rows)",
                self.max_state
            )));
        }
        Ok(())
    }

    /// Every joined row holding the record `r` of `alias` (`known`: its columns, when they are
    /// not to be read).
    fn tuples_of(
        &self,
        alias: usize,
        r: &[u8],
        known: Option<Option<&Row>>,
        out: &mut HashMap<String, Tuple>,
    ) -> Result<(), LensError> {
        let row = match known {
            Some(r) => r.cloned(),
            None => self.read(alias, r)?,
        };
        let Some(row) = row else { return Ok(()) };
        let n = self.view.aliases.len();
        // Visit the aliases outward from this one, each reached through one join edge.
        let mut order: Vec<(usize, usize, bool)> = Vec::new(); // (alias, edge, reached as the child)
        let mut seen = vec![false; n];
        seen[alias] = true;
        let mut queue = vec![alias];
        while let Some(y) = queue.pop() {
            for (e, edge) in self.view.edges.iter().enumerate() {
                if edge.parent == y && !seen[edge.child] {
                    seen[edge.child] = true;
                    order.push((edge.child, e, true));
                    queue.push(edge.child);
                } else if edge.child == y && !seen[edge.parent] {
                    seen[edge.parent] = true;
                    order.push((edge.parent, e, false));
                    queue.push(edge.parent);
                }
            }
        }
        let mut rows: Vec<Option<Rc<Row>>> = vec![None; n];
        rows[alias] = Some(Rc::new(row));
        self.expand(&order, 0, &mut rows, &mut Found::new(), out)
    }

    fn expand(
        &self,
        order: &[(usize, usize, bool)],
        at: usize,
        rows: &mut Vec<Option<Rc<Row>>>,
        found: &mut Found,
        out: &mut HashMap<String, Tuple>,
    ) -> Result<(), LensError> {
        let Some(&(x, e, as_child)) = order.get(at) else {
            let t = Tuple { rows: rows.clone() };
            out.insert(t.id(self.view), t);
            if out.len() > MAX_FANOUT {
                return Err(LensError::Stop(format!("one change touched more than {MAX_FANOUT} joined rows")));
            }
            return Ok(());
        };
        let edge = &self.view.edges[e];
        let (from, col, side) =
            if as_child { (edge.parent, edge.parent_col, 1) } else { (edge.child, edge.child_col, 0) };
        let key = rows[from].as_ref().map(|r| r[col].clone()).unwrap_or(Value::Null);
        let matched = self.matches(e, side, &key, found)?;
        if matched.is_empty() {
            if as_child && edge.left {
                rows[x] = None;
                self.expand(order, at + 1, rows, found, out)?;
            }
            return Ok(());
        }
        for r in matched {
            rows[x] = Some(r);
            self.expand(order, at + 1, rows, found, out)?;
        }
        rows[x] = None;
        Ok(())
    }

    /// Applies a change to one record of `alias` (`new`: its columns now, none when deleted),
    /// adding what it did to the view's rows to `diff`.
    pub fn change(&mut self, alias: usize, rid: &str, new: Option<Row>, diff: &mut Diff) -> Result<(), LensError> {
        self.visits.set(0);
        let r = record_key(rid);
        // The optional side of a left join: the rows of the records it matches are read as they
        // were before its own row changes. Otherwise its row can change first.
        let left = self.view.edge_into(alias).is_some_and(|(_, e)| e.left);
        let old = if left { self.read(alias, &r)? } else { self.swap_row(alias, &r, new.as_ref())? };
        if old == new {
            return Ok(());
        }
        // The joined rows that can change: those holding this record, and, when it is the
        // optional side of a left join, those of the records it matches there (their rows
        // without a match come or go).
        let mut anchors: Vec<(usize, Vec<u8>, Option<Rc<Row>>)> = vec![(alias, r.clone(), None)];
        if let Some((e, edge)) = self.view.edge_into(alias)
            && edge.left
        {
            let uri_col = super::def::uri_col(&self.view.aliases[edge.parent]);
            let mut found = Found::new();
            for row in [&old, &new].into_iter().flatten() {
                for p in self.matches(e, 0, &row[edge.child_col], &mut found)? {
                    let key = record_key(p[uri_col].as_str().unwrap_or_default());
                    anchors.push((edge.parent, key, Some(p)));
                }
            }
        }
        anchors.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        anchors.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
        let known = |a: usize, k: &[u8], row: &Option<Rc<Row>>, mine: Option<&Row>| -> Option<Option<Row>> {
            if a == alias && k == r.as_slice() {
                Some(mine.cloned())
            } else {
                row.as_ref().map(|p| Some(Row::clone(p)))
            }
        };
        let mut before = HashMap::new();
        for (a, k, row) in &anchors {
            let row = known(*a, k, row, old.as_ref());
            self.tuples_of(*a, k, row.as_ref().map(Option::as_ref), &mut before)?;
        }
        self.store(alias, &r, old.as_ref(), new.as_ref(), !left)?;
        let mut after = HashMap::new();
        for (a, k, row) in &anchors {
            let row = known(*a, k, row, new.as_ref());
            self.tuples_of(*a, k, row.as_ref().map(Option::as_ref), &mut after)?;
        }
        let mut minus = Vec::new();
        let mut plus = Vec::new();
        for (id, t) in &before {
            if after.get(id).is_none_or(|u| !same(t, u)) {
                minus.push((id.clone(), t.clone()));
            }
        }
        for (id, t) in after {
            if before.get(&id).is_none_or(|u| !same(&t, u)) {
                plus.push((id, t));
            }
        }
        self.tuples(minus, plus, diff)
    }

    fn tuples(
        &mut self,
        minus: Vec<(String, Tuple)>,
        plus: Vec<(String, Tuple)>,
        diff: &mut Diff,
    ) -> Result<(), LensError> {
        let view = self.view;
        let keep = |t: &Tuple| view.filter.as_ref().is_none_or(|p| eval(p, t));
        if !view.grouped() {
            for (id, _) in minus.iter().filter(|(_, t)| keep(t)) {
                self.out_remove(&group_key(id), None, diff)?;
            }
            for (id, t) in plus.iter().filter(|(_, t)| keep(t)) {
                self.out_put(&group_key(id), select_row(view, t), 0, None, None, diff)?;
            }
            return Ok(());
        }
        let mut groups: BTreeMap<Vec<u8>, GroupState> = BTreeMap::new();
        let changes = minus.iter().map(|(_, t)| (-1i64, t)).chain(plus.iter().map(|(_, t)| (1i64, t)));
        for (w, t) in changes {
            if !keep(t) {
                continue;
            }
            let values = group_values(view, t);
            let g = group_key(&Value::Array(values.clone()).to_string());
            if !groups.contains_key(&g) {
                let st = self.group(&g, values)?;
                groups.insert(g.clone(), st);
            }
            let st = groups.get_mut(&g).expect("inserted");
            st.n += w;
            for (i, agg, v) in agg_inputs(view, t) {
                match agg {
                    Agg::Count | Agg::Sum | Agg::Avg => accumulate(&mut st.acc[i], agg, v, w),
                    Agg::Min | Agg::Max => {
                        let left = self.extreme_add(&g, i, v, w)?;
                        let want = if agg == Agg::Min { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater };
                        if w > 0 {
                            if st.ext[i].as_ref().is_none_or(|e| compare(v, e) == want) {
                                st.ext[i] = Some(v.clone());
                            }
                        } else if left <= 0 && st.ext[i].as_ref().is_some_and(|e| compare(v, e).is_eq()) {
                            st.dirty[i] = true;
                        }
                    }
                }
            }
        }
        for (g, mut st) in groups {
            // Another group's change may have moved this row in or out of the view since.
            if st.read_at != self.moves && st.prev.is_some() {
                st.prev = self.out_get(&g)?.map(|(p, ..)| p);
            }
            if st.n <= 0 {
                if st.prev.is_some() {
                    self.out_remove(&g, Some(st.prev), diff)?;
                }
                continue;
            }
            for i in 0..st.dirty.len() {
                if st.dirty[i] {
                    st.ext[i] = Some(self.extreme(&g, i)?).filter(|v| !v.is_null());
                }
            }
            let row = group_row(view, &st.values, st.n, &st.acc, &|i| st.ext[i].clone().unwrap_or(Value::Null));
            let acc = serde_json::to_string(&st.acc).unwrap_or_default();
            self.out_put(&g, row, st.n, Some(&acc), Some(st.prev), diff)?;
        }
        Ok(())
    }

    fn group(&self, g: &[u8], values: Vec<Value>) -> rusqlite::Result<GroupState> {
        let len = self.view.select.len();
        let (prev, n, acc) = match self.out_get(g)? {
            Some((p, n, acc)) => {
                let acc = acc.and_then(|a| serde_json::from_str(&a).ok()).unwrap_or_else(|| vec![(0, 0); len]);
                (Some(p), n, acc)
            }
            None => (None, 0, vec![(0, 0); len]),
        };
        // The extremes the row shows now are where min/max start from.
        let shown: Value = prev.as_ref().and_then(|p| serde_json::from_str(&p.row).ok()).unwrap_or(Value::Null);
        let ext = self
            .view
            .select
            .iter()
            .map(|(name, s)| match s {
                Sel::Agg(Agg::Min | Agg::Max, _) => shown.get(name).filter(|v| !v.is_null()).cloned(),
                _ => None,
            })
            .collect();
        Ok(GroupState { values, n, acc, prev, read_at: self.moves, ext, dirty: vec![false; len] })
    }

    /// Adds `w` copies of `v` to a group's multiset for column `i`; how many are left.
    fn extreme_add(&mut self, g: &[u8], i: usize, v: &Value, w: i64) -> Result<i64, LensError> {
        let enc = encoded(v);
        let now: i64 = self
            .conn
            .prepare_cached(
                "INSERT INTO lens_mm (view, g, agg, v, val, n) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (view, g, agg, v) DO UPDATE SET n = n + excluded.n RETURNING n",
            )?
            .query_row(params![self.id, g, i as i64, enc, v.to_string(), w], |r| r.get(0))?;
        let inserted = now == w;
        if now <= 0 {
            self.conn
                .prepare_cached("DELETE FROM lens_mm WHERE view = ?1 AND g = ?2 AND agg = ?3 AND v = ?4")?
                .execute(params![self.id, g, i as i64, enc])?;
            if !inserted {
                self.counters.state_n -= 1;
            }
        } else if inserted {
            self.grow(1)?;
        }
        Ok(now)
    }

    fn extreme(&self, g: &[u8], i: usize) -> rusqlite::Result<Value> {
        let desc = matches!(self.view.select[i].1, Sel::Agg(Agg::Max, _));
        let sql = if desc {
            "SELECT val FROM lens_mm WHERE view = ?1 AND g = ?2 AND agg = ?3 ORDER BY v DESC LIMIT 1"
        } else {
            "SELECT val FROM lens_mm WHERE view = ?1 AND g = ?2 AND agg = ?3 ORDER BY v LIMIT 1"
        };
        let val: Option<String> =
            self.conn.prepare_cached(sql)?.query_row(params![self.id, g, i as i64], |r| r.get(0)).optional()?;
        Ok(val.and_then(|v| serde_json::from_str(&v).ok()).unwrap_or(Value::Null))
    }

    /// An output row, with its group's count and accumulators.
    fn out_get(&self, k: &[u8]) -> rusqlite::Result<Option<(OutRow, i64, Option<String>)>> {
        self.conn
            .prepare_cached("SELECT sort, top, row, n, acc FROM lens_out WHERE view = ?1 AND k = ?2")?
            .query_row(params![self.id, k], |r| {
                Ok((OutRow { sort: r.get(0)?, top: Place::of(r.get(1)?), row: r.get(2)? }, r.get(3)?, r.get(4)?))
            })
            .optional()
    }

    /// The view's last row: (key, sort key, row).
    fn last_row(&mut self) -> rusqlite::Result<Option<Boundary>> {
        if let Some(last) = &self.last {
            return Ok(last.clone());
        }
        let last: Option<Boundary> = self
            .conn
            .prepare_cached("SELECT k, sort, row FROM lens_out WHERE view = ?1 AND top = 1 ORDER BY sort DESC LIMIT 1")?
            .query_row([self.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        self.last = Some(last.clone());
        Ok(last)
    }

    /// The sort key of the last row kept in order (the pool's last, or the view's when the pool
    /// is empty): a row past it is not indexed.
    fn frontier(&mut self) -> rusqlite::Result<Option<Vec<u8>>> {
        if self.tail.is_none() {
            let tail: Option<Vec<u8>> = self
                .conn
                .prepare_cached("SELECT sort FROM lens_out WHERE view = ?1 AND top = 0 ORDER BY sort DESC LIMIT 1")?
                .query_row([self.id], |r| r.get(0))
                .optional()?;
            self.tail = Some(tail);
        }
        match self.tail.clone().flatten() {
            Some(t) => Ok(Some(t)),
            None => Ok(self.last_row()?.map(|(_, sort, _)| sort)),
        }
    }

    /// Where a row outside the view goes (the view being full): into the pool when it comes
    /// before the last row kept in order, further down otherwise.
    fn outside(&mut self, sort: &[u8]) -> rusqlite::Result<Place> {
        Ok(match self.frontier()? {
            Some(f) if sort < f.as_slice() => Place::Pool,
            _ => Place::Down,
        })
    }

    /// The pool's first row: (key, row); the pool filled from the rows further down first when
    /// it is empty.
    fn next_in(&mut self) -> rusqlite::Result<Option<(Vec<u8>, String)>> {
        let first = |m: &Self| {
            m.conn
                .prepare_cached("SELECT k, row FROM lens_out WHERE view = ?1 AND top = 0 ORDER BY sort LIMIT 1")?
                .query_row([m.id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        };
        if let Some(found) = first(self)? {
            return Ok(Some(found));
        }
        // The best rows further down: a scan of the view's output, not counted against one
        // change's lookups (bounded by the view's size, which its bound holds).
        let keys: Vec<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT k FROM lens_out WHERE view = ?1 AND top IS NULL ORDER BY sort LIMIT ?2")?
            .query_map(params![self.id, pool_size(self.view.limit, self.counters.state_n) as i64], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if keys.is_empty() {
            return Ok(None);
        }
        for k in &keys {
            self.set_place(k, Place::Down, Place::Pool)?;
        }
        first(self)
    }

    /// Removes an output row (`prev`: as already read, if it was).
    fn out_remove(&mut self, k: &[u8], prev: Option<Option<OutRow>>, diff: &mut Diff) -> Result<(), LensError> {
        let prev = match prev {
            Some(p) => p,
            None => self.out_get(k)?.map(|(p, ..)| p),
        };
        let Some(prev) = prev else { return Ok(()) };
        self.conn.prepare_cached("DELETE FROM lens_out WHERE view = ?1 AND k = ?2")?.execute(params![self.id, k])?;
        self.counters.state_n -= 1;
        self.placed(Some(prev.top), None);
        if prev.top == Place::View {
            diff.removed.push(serde_json::from_str(&prev.row).unwrap_or(Value::Null));
            // The first row past the view's end moves in.
            if let Some((nk, nrow)) = self.next_in()? {
                self.set_place(&nk, Place::Pool, Place::View)?;
                diff.added.push(serde_json::from_str(&nrow).unwrap_or(Value::Null));
            }
        }
        Ok(())
    }

    /// Moves another row than the one being written: its place only.
    fn set_place(&mut self, k: &[u8], from: Place, to: Place) -> rusqlite::Result<()> {
        self.conn.prepare_cached("UPDATE lens_out SET top = ?3 WHERE view = ?1 AND k = ?2")?.execute(params![
            self.id,
            k,
            to.column()
        ])?;
        self.placed(Some(from), Some(to));
        self.moves += 1;
        Ok(())
    }

    /// Counts a row's move (`None`: it was not there, or is gone) and forgets what it changes.
    fn placed(&mut self, from: Option<Place>, to: Option<Place>) {
        if from == to {
            return;
        }
        for (place, sign) in [(from, -1), (to, 1)] {
            match place {
                Some(Place::View) => {
                    self.counters.top_n += sign;
                    self.last = None;
                }
                Some(Place::Pool) => {
                    self.counters.pool_n += sign;
                    self.tail = None;
                }
                _ => {}
            }
        }
    }

    /// Gives the pool's last rows back to the rows further down once it has grown to twice its
    /// size.
    fn trim(&mut self) -> rusqlite::Result<()> {
        let size = pool_size(self.view.limit, self.counters.state_n) as i64;
        if self.counters.pool_n <= 2 * size {
            return Ok(());
        }
        let keys: Vec<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT k FROM lens_out WHERE view = ?1 AND top = 0 ORDER BY sort DESC LIMIT ?2")?
            .query_map(params![self.id, self.counters.pool_n - size], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for k in &keys {
            self.set_place(k, Place::Pool, Place::Down)?;
        }
        Ok(())
    }

    /// Sets an output row (with its group's count and accumulators; `prev`: the row as already
    /// read, if it was), keeping the first `limit` rows marked.
    fn out_put(
        &mut self,
        k: &[u8],
        row: Value,
        n: i64,
        acc: Option<&str>,
        prev: Option<Option<OutRow>>,
        diff: &mut Diff,
    ) -> Result<(), LensError> {
        let text = row.to_string();
        let sort = sort_key(self.view, &row, k);
        let prev = match prev {
            Some(p) => p,
            None => self.out_get(k)?.map(|(p, ..)| p),
        };
        let limit = self.view.limit as i64;
        if let Some(old) = prev {
            // Same place (the order's columns did not change): rewritten where it stands.
            if old.sort == sort {
                self.conn
                    .prepare_cached("UPDATE lens_out SET row = ?3, n = ?4, acc = ?5 WHERE view = ?1 AND k = ?2")?
                    .execute(params![self.id, k, text, n, acc])?;
                if old.top == Place::View {
                    self.last = None;
                    if old.row != text {
                        diff.removed.push(serde_json::from_str(&old.row).unwrap_or(Value::Null));
                        diff.added.push(row);
                    }
                }
                return Ok(());
            }
            let update = |m: &mut Self, place: Place| {
                m.conn
                    .prepare_cached(
                        "UPDATE lens_out SET sort = ?3, top = ?4, row = ?5, n = ?6, acc = ?7 WHERE view = ?1 AND k = ?2",
                    )?
                    .execute(params![m.id, k, sort, place.column(), text, n, acc])
            };
            // In the view, and still before its last row (or the view not full): it stays in.
            if old.top == Place::View {
                let stays = self.counters.top_n < limit
                    || self.last_row()?.is_some_and(|(_, last, _)| sort.as_slice() < last.as_slice());
                if stays {
                    update(self, Place::View)?;
                    self.last = None;
                    diff.removed.push(serde_json::from_str(&old.row).unwrap_or(Value::Null));
                    diff.added.push(row);
                    return Ok(());
                }
            }
            // Past the view's end it stays, unless it now comes before the view's last row:
            // then only its place changes (in the pool or further down).
            if old.top != Place::View && self.counters.top_n >= limit {
                let stays = self.last_row()?.is_none_or(|(_, last, _)| sort > last);
                if stays {
                    let place = self.outside(&sort)?;
                    update(self, place)?;
                    self.placed(Some(old.top), Some(place));
                    // The pool's order changed (its last row may have).
                    if old.top == Place::Pool {
                        self.tail = None;
                    }
                    return self.trim().map_err(LensError::from);
                }
            }
            self.out_remove(k, Some(Some(old)), diff)?;
        }
        let mut place = Place::View;
        if self.counters.top_n >= limit {
            match self.last_row()? {
                Some((lk, lsort, lrow)) if sort < lsort => {
                    self.set_place(&lk, Place::View, Place::Pool)?;
                    diff.removed.push(serde_json::from_str(&lrow).unwrap_or(Value::Null));
                }
                _ => place = self.outside(&sort)?,
            }
        }
        self.conn
            .prepare_cached(
                "INSERT INTO lens_out (view, k, sort, top, row, n, acc) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![self.id, k, sort, place.column(), text, n, acc])?;
        self.grow(1)?;
        self.placed(None, Some(place));
        if place == Place::View {
            diff.added.push(row);
        }
        self.trim().map_err(LensError::from)
    }
}

fn same(a: &Tuple, b: &Tuple) -> bool {
    a.rows.len() == b.rows.len()
        && a.rows.iter().zip(&b.rows).all(|(x, y)| match (x, y) {
            (Some(x), Some(y)) => x == y,
            (None, None) => true,
            _ => false,
        })
}

/// The view's rows in order, after `after` (a sort key, as the cursor gives it), at most `n`;
/// and the sort key of the last one.
pub fn rows(
    conn: &Connection,
    id: i64,
    after: Option<&[u8]>,
    n: usize,
) -> rusqlite::Result<(Vec<Value>, Option<Vec<u8>>)> {
    let mut s = conn.prepare_cached(
        "SELECT sort, row FROM lens_out WHERE view = ?1 AND top = 1 AND sort > ?2 ORDER BY sort LIMIT ?3",
    )?;
    let found: Vec<(Vec<u8>, String)> = s
        .query_map(params![id, after.unwrap_or_default(), n as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let last = found.last().map(|(s, _)| s.clone());
    Ok((found.into_iter().map(|(_, r)| serde_json::from_str(&r).unwrap_or(Value::Null)).collect(), last))
}

/// Removes a view's state.
pub fn drop_state(conn: &Connection, id: i64) -> rusqlite::Result<()> {
    for table in ["lens_in", "lens_key", "lens_mm", "lens_out"] {
        conn.execute(&format!("DELETE FROM {table} WHERE view = ?1"), [id])?;
    }
    conn.execute("UPDATE lens_view SET top_n = 0, pool_n = 0, state_n = 0 WHERE id = ?1", [id])?;
    Ok(())
}

/// The URIs of the records of `alias` (in `view`) a view holds of the account `did`.
pub fn held(conn: &Connection, id: i64, view: &View, alias: usize, did: &str) -> rusqlite::Result<Vec<String>> {
    let low = account_key(did).to_vec();
    // Every record key is 24 bytes: past the account's prefix and 17 0xff bytes is past all.
    let mut high = low.clone();
    high.extend([0xff; 17]);
    let mut s =
        conn.prepare_cached("SELECT cols FROM lens_in WHERE view = ?1 AND alias = ?2 AND r >= ?3 AND r < ?4")?;
    let texts = s.query_map(params![id, alias as i64, low, high], |r| r.get::<_, String>(0))?;
    let col = super::def::uri_col(&view.aliases[alias]);
    let prefix = format!("at://{did}/");
    let mut out = Vec::new();
    for t in texts {
        let row: Row = serde_json::from_str(&t?).unwrap_or_default();
        // Another account's key may share the 8-byte prefix: its URI tells.
        if let Some(uri) = row.get(col).and_then(Value::as_str).filter(|u| u.starts_with(&prefix)) {
            out.push(uri.to_string());
        }
    }
    Ok(out)
}

/// The view computed from scratch over `inputs` (each alias's records: URI and columns): what
/// the maintained state must always equal. Joins are evaluated left to right, as SQL does.
pub fn recompute(view: &View, inputs: &[Vec<(String, Row)>]) -> Vec<Value> {
    let mut tuples: Vec<Tuple> = inputs[0]
        .iter()
        .map(|(_, r)| {
            let mut rows = vec![None; view.aliases.len()];
            rows[0] = Some(Rc::new(r.clone()));
            Tuple { rows }
        })
        .collect();
    for edge in &view.edges {
        let mut index: HashMap<String, Vec<Rc<Row>>> = HashMap::new();
        for (_, r) in &inputs[edge.child] {
            if let Some(k) = key_text(&r[edge.child_col]) {
                index.entry(k).or_default().push(Rc::new(r.clone()));
            }
        }
        let mut next = Vec::new();
        for t in tuples {
            let matches =
                t.rows[edge.parent].as_ref().and_then(|p| key_text(&p[edge.parent_col])).and_then(|k| index.get(&k));
            match matches {
                Some(ms) => {
                    for m in ms {
                        let mut u = t.clone();
                        u.rows[edge.child] = Some(m.clone());
                        next.push(u);
                    }
                }
                None if edge.left => next.push(t),
                None => {}
            }
        }
        tuples = next;
    }
    tuples.retain(|t| view.filter.as_ref().is_none_or(|p| eval(p, t)));
    let mut out: Vec<(Vec<u8>, Value)> = Vec::new();
    if view.grouped() {
        struct G {
            values: Vec<Value>,
            n: i64,
            acc: Acc,
            seen: Vec<Vec<Value>>,
        }
        let mut groups: BTreeMap<String, G> = BTreeMap::new();
        for t in &tuples {
            let values = group_values(view, t);
            let g = groups.entry(Value::Array(values.clone()).to_string()).or_insert_with(|| G {
                values,
                n: 0,
                acc: vec![(0, 0); view.select.len()],
                seen: vec![Vec::new(); view.select.len()],
            });
            g.n += 1;
            for (i, agg, v) in agg_inputs(view, t) {
                match agg {
                    Agg::Count | Agg::Sum | Agg::Avg => accumulate(&mut g.acc[i], agg, v, 1),
                    Agg::Min | Agg::Max => g.seen[i].push(v.clone()),
                }
            }
        }
        for (key, g) in groups {
            let extreme = |i: usize| {
                let it = g.seen[i].iter();
                let best = if matches!(view.select[i].1, Sel::Agg(Agg::Max, _)) {
                    it.max_by(|a, b| compare(a, b))
                } else {
                    it.min_by(|a, b| compare(a, b))
                };
                best.cloned().unwrap_or(Value::Null)
            };
            let row = group_row(view, &g.values, g.n, &g.acc, &extreme);
            out.push((sort_key(view, &row, &group_key(&key)), row));
        }
    } else {
        let mut ids = HashSet::new();
        for t in &tuples {
            let id = t.id(view);
            if ids.insert(id.clone()) {
                let row = select_row(view, t);
                out.push((sort_key(view, &row, &group_key(&id)), row));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.truncate(view.limit);
    out.into_iter().map(|(_, r)| r).collect()
}
