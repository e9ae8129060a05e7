//! View definitions: the JSON an app declares, checked and compiled once at creation into the
//! plan the engine runs (aliases, join edges, a predicate, groups, the selected columns, the
//! order and the bound). Everything a definition can say is bounded here, so nothing past
//! creation can be surprised by its size or shape.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use ues_protocol::sync::repo::lexicon::{Def, Field, Lexicons};

/// Largest definition accepted (bytes of its JSON).
pub const MAX_DEFINITION_BYTES: usize = 16 * 1024;
/// Deepest JSON nesting accepted in a definition.
pub const MAX_DEPTH: usize = 24;
/// Most collections one view reads (the `from` and its joins).
pub const MAX_ALIASES: usize = 8;
/// Most predicate nodes in `where`.
pub const MAX_PREDICATE_NODES: usize = 64;
/// Most selected columns.
pub const MAX_SELECT: usize = 32;
/// Most path segments.
pub const MAX_SEGMENTS: usize = 12;
/// Largest `limit`.
pub const MAX_LIMIT: usize = 10_000;

/// Why a definition is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DefError(pub String);

fn bad<T>(msg: impl Into<String>) -> Result<T, DefError> {
    Err(DefError(msg.into()))
}

/// The parts of a record every alias offers besides its fields.
pub const META: [&str; 4] = ["uri", "did", "rkey", "cid"];

/// One step into a value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Seg {
    /// An object's field.
    Key(String),
    /// An array's element.
    Index(usize),
}

/// A column of an alias: a path into its records (or one of [`META`], as a one-key path
/// starting with `$`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Column(pub Vec<Seg>);

impl Column {
    /// Its value in `record` (a record's JSON, with `$uri`, `$did`, `$rkey`, `$cid` added).
    pub fn get<'a>(&self, record: &'a Value) -> Option<&'a Value> {
        let mut v = record;
        for s in &self.0 {
            v = match (s, v) {
                (Seg::Key(k), Value::Object(m)) => m.get(k)?,
                (Seg::Index(i), Value::Array(a)) => a.get(*i)?,
                _ => return None,
            };
        }
        (!v.is_null()).then_some(v)
    }
}

/// A reference to a column of an alias, in the compiled plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ref {
    /// The alias (0 is `from`).
    pub alias: usize,
    /// The column (an index into the alias's columns).
    pub col: usize,
}

/// A collection the view reads, under a name.
#[derive(Debug, Clone)]
pub struct Alias {
    /// Its name in paths.
    pub name: String,
    /// The collection (NSID).
    pub collection: String,
    /// The columns the view reads of its records.
    pub columns: Vec<Column>,
}

/// A join: `child` joins the earlier alias `parent` where `parent_col` equals `child_col`.
#[derive(Debug, Clone)]
pub struct Edge {
    /// The earlier alias.
    pub parent: usize,
    /// Its column.
    pub parent_col: usize,
    /// The joined alias (edge `e` joins alias `e + 1`).
    pub child: usize,
    /// Its column.
    pub child_col: usize,
    /// A left join (the parent's rows without a match are kept, the child absent).
    pub left: bool,
}

/// An operand of a comparison.
#[derive(Debug, Clone)]
pub enum Operand {
    /// A column.
    Col(Ref),
    /// A constant.
    Lit(Value),
}

/// A predicate.
#[derive(Debug, Clone)]
pub enum Pred {
    /// Comparison (`eq`, `ne`, `lt`, `le`, `gt`, `ge`).
    Cmp(Cmp, Ref, Operand),
    /// Membership in a list of constants.
    In(Ref, Vec<Value>),
    /// Case-insensitive substring of a string (or an element of an array of strings).
    Contains(Ref, String),
    /// Present and not null.
    Exists(Ref),
    /// All of.
    And(Vec<Pred>),
    /// Any of.
    Or(Vec<Pred>),
    /// Not.
    Not(Box<Pred>),
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// =
    Eq,
    /// ≠
    Ne,
    /// <
    Lt,
    /// ≤
    Le,
    /// >
    Gt,
    /// ≥
    Ge,
}

/// An aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    /// Rows (`"*"`), or rows where the column is present.
    Count,
    /// Sum of the integer values.
    Sum,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Mean of the integer values.
    Avg,
}

/// A selected column.
#[derive(Debug, Clone)]
pub enum Sel {
    /// A column's value (in a grouped view, one of the groups' columns).
    Col(Ref),
    /// An aggregate over the group's rows (`None`: `count("*")`).
    Agg(Agg, Option<Ref>),
}

/// A view, checked and compiled.
#[derive(Debug, Clone)]
pub struct View {
    /// Its name (unique per account; also its record key).
    pub name: String,
    /// The collections read; 0 is `from`.
    pub aliases: Vec<Alias>,
    /// The joins (edge `e` brings in alias `e + 1`).
    pub edges: Vec<Edge>,
    /// The filter.
    pub filter: Option<Pred>,
    /// The group columns (empty: a row per joined row).
    pub group_by: Vec<Ref>,
    /// The selected columns, in the definition's order.
    pub select: Vec<(String, Sel)>,
    /// The order: (selected column index, descending).
    pub order: Vec<(usize, bool)>,
    /// How many rows the view holds (the first in its order).
    pub limit: usize,
}

impl View {
    /// Whether the view groups.
    pub fn grouped(&self) -> bool {
        !self.group_by.is_empty() || self.select.iter().any(|(_, s)| matches!(s, Sel::Agg(..)))
    }

    /// The aliases reading `collection`.
    pub fn aliases_of<'a>(&'a self, collection: &'a str) -> impl Iterator<Item = usize> + 'a {
        self.aliases.iter().enumerate().filter(move |(_, a)| a.collection == collection).map(|(i, _)| i)
    }

    /// The edge bringing in `alias` (none for `from`).
    pub fn edge_into(&self, alias: usize) -> Option<(usize, &Edge)> {
        alias.checked_sub(1).map(|e| (e, &self.edges[e]))
    }
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Whether `name` can name a view (it is also a record key).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

struct Compiler<'a> {
    lexicons: &'a Lexicons,
    aliases: Vec<Alias>,
    columns: Vec<BTreeMap<Column, usize>>,
    nodes: usize,
}

impl Compiler<'_> {
    fn alias(&self, name: &str) -> Option<usize> {
        self.aliases.iter().position(|a| a.name == name)
    }

    /// A path `alias.seg.seg`, checked against the alias's collection's lexicon.
    fn path(&mut self, path: &Value, upto: usize) -> Result<Ref, DefError> {
        let Some(text) = path.as_str() else { return bad(format!("a path must be a string: {path}")) };
        let mut parts = text.split('.');
        let head = parts.next().unwrap_or_default();
        let Some(alias) = self.alias(head).filter(|a| *a < upto) else {
            return bad(format!("{text:?}: no alias {head:?} here (known: {})", self.known(upto)));
        };
        let rest: Vec<&str> = parts.collect();
        if rest.is_empty() {
            return bad(format!("{text:?} names a whole record: name a field, or one of uri, did, rkey, cid"));
        }
        if rest.len() > MAX_SEGMENTS {
            return bad(format!("{text:?} is deeper than {MAX_SEGMENTS} steps"));
        }
        let column = if rest.len() == 1 && META.contains(&rest[0]) {
            Column(vec![Seg::Key(format!("${}", rest[0]))])
        } else {
            let segs: Vec<Seg> = rest
                .iter()
                .map(|s| match s.parse::<usize>() {
                    Ok(i) if !s.starts_with('+') => Seg::Index(i),
                    _ => Seg::Key(s.to_string()),
                })
                .collect();
            if segs.iter().any(|s| matches!(s, Seg::Key(k) if k.is_empty())) {
                return bad(format!("{text:?} has an empty step"));
            }
            let collection = self.aliases[alias].collection.clone();
            check_path(self.lexicons, &collection, &segs).map_err(|why| DefError(format!("{text:?}: {why}")))?;
            Column(segs)
        };
        let cols = &mut self.columns[alias];
        let n = cols.len();
        let col = *cols.entry(column.clone()).or_insert(n);
        if col == n {
            self.aliases[alias].columns.push(column);
        }
        Ok(Ref { alias, col })
    }

    fn known(&self, upto: usize) -> String {
        self.aliases[..upto].iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(", ")
    }

    fn pred(&mut self, v: &Value) -> Result<Pred, DefError> {
        self.nodes += 1;
        if self.nodes > MAX_PREDICATE_NODES {
            return bad(format!("\"where\" has more than {MAX_PREDICATE_NODES} parts"));
        }
        let Some(m) = v.as_object().filter(|m| m.len() == 1) else {
            return bad(format!("a predicate is an object with one operator: {}", short(v)));
        };
        let (op, arg) = m.iter().next().expect("one entry");
        let all = self.aliases.len();
        let pair = |c: &mut Self| -> Result<(Ref, &Value), DefError> {
            match arg.as_array().map(Vec::as_slice) {
                Some([p, x]) => Ok((c.path(p, all)?, x)),
                _ => bad(format!("\"{op}\" takes [path, value]")),
            }
        };
        Ok(match op.as_str() {
            "eq" | "ne" | "lt" | "le" | "gt" | "ge" => {
                let cmp = match op.as_str() {
                    "eq" => Cmp::Eq,
                    "ne" => Cmp::Ne,
                    "lt" => Cmp::Lt,
                    "le" => Cmp::Le,
                    "gt" => Cmp::Gt,
                    _ => Cmp::Ge,
                };
                let (r, x) = pair(self)?;
                let operand = match x {
                    Value::Object(o) if o.len() == 1 && o.contains_key("path") => {
                        Operand::Col(self.path(&o["path"], all)?)
                    }
                    Value::Object(_) | Value::Array(_) => {
                        return bad(format!(
                            "\"{op}\" compares with a string, number, boolean, null or {{\"path\": ...}}"
                        ));
                    }
                    lit => Operand::Lit(lit.clone()),
                };
                Pred::Cmp(cmp, r, operand)
            }
            "in" => {
                let (r, x) = pair(self)?;
                let Some(list) = x.as_array().filter(|l| l.len() <= 256) else {
                    return bad("\"in\" takes [path, [values]] (at most 256)");
                };
                if list.iter().any(|v| v.is_object() || v.is_array()) {
                    return bad("\"in\" values are strings, numbers, booleans or null");
                }
                Pred::In(r, list.clone())
            }
            "contains" => {
                let (r, x) = pair(self)?;
                let Some(s) = x.as_str() else { return bad("\"contains\" takes [path, string]") };
                Pred::Contains(r, s.to_lowercase())
            }
            "exists" => {
                let p = match arg {
                    Value::Array(a) if a.len() == 1 => &a[0],
                    other => other,
                };
                Pred::Exists(self.path(p, all)?)
            }
            "and" | "or" => {
                let Some(list) = arg.as_array().filter(|l| !l.is_empty()) else {
                    return bad(format!("\"{op}\" takes a non-empty list of predicates"));
                };
                let parts = list.iter().map(|p| self.pred(p)).collect::<Result<Vec<_>, _>>()?;
                if op == "and" { Pred::And(parts) } else { Pred::Or(parts) }
            }
            "not" => Pred::Not(Box::new(self.pred(arg)?)),
            other => {
                return bad(format!(
                    "unknown operator {other:?} (eq, ne, lt, le, gt, ge, in, contains, exists, and, or, not)"
                ));
            }
        })
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() <= 80 {
        return s;
    }
    let mut end = 80;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Checks that `segs` can lead somewhere in a record of `collection`.
fn check_path(lexicons: &Lexicons, collection: &str, segs: &[Seg]) -> Result<(), String> {
    match lexicons.get(collection) {
        Some(Def::Record { record, .. }) => walk_object(lexicons, collection, record, segs, 0),
        Some(_) => Err(format!("{collection} is not a record type")),
        None => Err(format!("no lexicon for {collection} on this node, so its paths cannot be checked")),
    }
}

fn walk_object(
    lexicons: &Lexicons,
    doc: &str,
    obj: &ues_protocol::sync::repo::lexicon::ObjectDef,
    segs: &[Seg],
    hops: usize,
) -> Result<(), String> {
    let Some((first, rest)) = segs.split_first() else { return Ok(()) };
    match first {
        Seg::Key(k) => match obj.properties.get(k) {
            Some(f) => walk_field(lexicons, doc, f, rest, hops),
            None => Err(format!("the lexicon has no field {k:?} there")),
        },
        Seg::Index(i) => Err(format!("an object has no element {i}")),
    }
}

fn walk_field(lexicons: &Lexicons, doc: &str, f: &Field, segs: &[Seg], hops: usize) -> Result<(), String> {
    if hops > 16 {
        return Err("the lexicon's references go too deep".into());
    }
    if segs.is_empty() {
        return Ok(());
    }
    let absolute = |r: &str| if let Some(name) = r.strip_prefix('#') { format!("{doc}#{name}") } else { r.to_string() };
    let resolve = |r: &str| -> Result<(String, Field), String> {
        let full = absolute(r);
        let id = full.split('#').next().unwrap_or_default().to_string();
        match lexicons.get(&full) {
            Some(Def::Field(f)) => Ok((id, f.clone())),
            Some(Def::Record { record, .. }) => Ok((id, Field::Object(record.clone()))),
            _ => Err(format!("the lexicon's reference {full} is not loaded")),
        }
    };
    match f {
        Field::Object(o) | Field::Params(o) => walk_object(lexicons, doc, o, segs, hops),
        Field::Array { items, .. } => match segs[0] {
            Seg::Index(_) => walk_field(lexicons, doc, items, &segs[1..], hops),
            Seg::Key(ref k) => Err(format!("{k:?} steps into an array: give an element's index")),
        },
        Field::Ref { target } => {
            let (id, f) = resolve(target)?;
            walk_field(lexicons, &id, &f, segs, hops + 1)
        }
        Field::Union { refs, .. } => {
            let mut why = String::from("no member of the union has it");
            for r in refs {
                match resolve(r) {
                    Ok((id, f)) => match walk_field(lexicons, &id, &f, segs, hops + 1) {
                        Ok(()) => return Ok(()),
                        Err(e) => why = e,
                    },
                    Err(e) => why = e,
                }
            }
            Err(why)
        }
        Field::Unknown => Ok(()),
        Field::Blob { .. } => match &segs[0] {
            Seg::Key(k) if segs.len() == 1 && matches!(k.as_str(), "mimeType" | "size") => Ok(()),
            Seg::Key(k) if k == "ref" && segs.len() <= 2 => Ok(()),
            _ => Err("a blob has only mimeType, size and ref".into()),
        },
        _ => Err("steps into a value that has no fields".into()),
    }
}

/// Parses and checks a definition against the node's lexicons.
pub fn compile(def: &Value, lexicons: &Lexicons) -> Result<View, DefError> {
    let size = serde_json::to_vec(def).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > MAX_DEFINITION_BYTES {
        return bad(format!("the definition is {size} bytes; at most {MAX_DEFINITION_BYTES}"));
    }
    if depth(def) > MAX_DEPTH {
        return bad(format!("the definition nests deeper than {MAX_DEPTH}"));
    }
    let Some(d) = def.as_object() else { return bad("a definition is a JSON object") };
    const KEYS: [&str; 8] = ["name", "from", "join", "where", "groupBy", "select", "orderBy", "limit"];
    if let Some(k) = d.keys().find(|k| !KEYS.contains(&k.as_str()) && k.as_str() != "description") {
        return bad(format!("unknown part {k:?} (name, from, join, where, groupBy, select, orderBy, limit)"));
    }
    let name = d.get("name").and_then(Value::as_str).unwrap_or_default();
    if !valid_name(name) {
        return bad("\"name\" must be 1-64 letters, digits, '-' or '_', starting with a letter");
    }
    let source = |v: &Value, what: &str| -> Result<(String, String), DefError> {
        let collection = v.get("collection").and_then(Value::as_str).unwrap_or_default();
        let alias = v.get("as").and_then(Value::as_str).unwrap_or_default();
        if ues_protocol::sync::repo::syntax::Nsid::new(collection).is_err() {
            return bad(format!("{what}: \"collection\" must be an NSID"));
        }
        let ok = !alias.is_empty()
            && alias.len() <= 32
            && alias.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && alias.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return bad(format!("{what}: \"as\" must be a short name (letters, digits, '_')"));
        }
        Ok((collection.to_string(), alias.to_string()))
    };
    let mut c = Compiler { lexicons, aliases: Vec::new(), columns: Vec::new(), nodes: 0 };
    let (collection, alias) = source(d.get("from").unwrap_or(&Value::Null), "from")?;
    c.aliases.push(Alias { name: alias, collection, columns: Vec::new() });
    c.columns.push(BTreeMap::new());
    let joins: &[Value] = match d.get("join") {
        None => &[],
        Some(Value::Array(j)) => j,
        Some(_) => return bad("\"join\" is a list"),
    };
    if joins.len() + 1 > MAX_ALIASES {
        return bad(format!("a view reads at most {MAX_ALIASES} collections"));
    }
    let mut edges = Vec::new();
    for (i, j) in joins.iter().enumerate() {
        let what = format!("join {i}");
        let (collection, alias) = source(j, &what)?;
        if c.alias(&alias).is_some() {
            return bad(format!("{what}: the alias {alias:?} is used twice"));
        }
        let child = c.aliases.len();
        c.aliases.push(Alias { name: alias, collection, columns: Vec::new() });
        c.columns.push(BTreeMap::new());
        let left = match j.get("kind").map(|k| k.as_str()) {
            None | Some(Some("inner")) => false,
            Some(Some("left")) => true,
            _ => return bad(format!("{what}: \"kind\" is \"inner\" or \"left\"")),
        };
        let Some([a, b]) = j.get("on").and_then(Value::as_array).map(Vec::as_slice) else {
            return bad(format!("{what}: \"on\" is [path, path]"));
        };
        // One side is the joined alias, the other an earlier one: joins form a tree, never a
        // cycle.
        let alias_of = |p: &Value| p.as_str().and_then(|s| s.split('.').next()).map(str::to_string);
        let joined = c.aliases[child].name.clone();
        let (pp, cp) = if alias_of(b).as_deref() == Some(joined.as_str()) { (a, b) } else { (b, a) };
        if alias_of(cp).as_deref() != Some(joined.as_str()) {
            return bad(format!("{what}: \"on\" must compare a path of {joined:?} with a path of an earlier alias"));
        }
        let parent = c.path(pp, child).map_err(|e| DefError(format!("{what}: {e}")))?;
        let child_ref = c.path(cp, child + 1)?;
        edges.push(Edge { parent: parent.alias, parent_col: parent.col, child, child_col: child_ref.col, left });
    }
    let filter = match d.get("where") {
        None => None,
        Some(w) => Some(c.pred(w).map_err(|e| DefError(format!("where: {e}")))?),
    };
    let all = c.aliases.len();
    let group_paths: Vec<Value> = match d.get("groupBy") {
        None => Vec::new(),
        Some(Value::Array(g)) if !g.is_empty() && g.len() <= 8 => g.clone(),
        Some(_) => return bad("\"groupBy\" is a list of 1-8 paths"),
    };
    let group_by = group_paths.iter().map(|p| c.path(p, all)).collect::<Result<Vec<_>, _>>()?;
    let Some(sel) = d.get("select").and_then(Value::as_object).filter(|s| !s.is_empty() && s.len() <= MAX_SELECT)
    else {
        return bad(format!("\"select\" is an object of 1-{MAX_SELECT} columns"));
    };
    let mut select = Vec::new();
    for (out, s) in sel {
        if out.is_empty() || out.len() > 64 {
            return bad("a selected column's name is 1-64 characters");
        }
        let entry = match s {
            Value::String(_) => Sel::Col(c.path(s, all).map_err(|e| DefError(format!("select.{out}: {e}")))?),
            Value::Object(m) if m.len() == 1 => {
                let (k, arg) = m.iter().next().expect("one entry");
                let agg = match k.as_str() {
                    "count" => Agg::Count,
                    "sum" => Agg::Sum,
                    "min" => Agg::Min,
                    "max" => Agg::Max,
                    "avg" => Agg::Avg,
                    other => {
                        return bad(format!("select.{out}: unknown aggregate {other:?} (count, sum, min, max, avg)"));
                    }
                };
                let col = if agg == Agg::Count && arg == "*" {
                    None
                } else {
                    Some(c.path(arg, all).map_err(|e| DefError(format!("select.{out}: {e}")))?)
                };
                Sel::Agg(agg, col)
            }
            _ => return bad(format!("select.{out}: a path, or {{\"count\"|\"sum\"|\"min\"|\"max\"|\"avg\": path}}")),
        };
        select.push((out.clone(), entry));
    }
    let grouped = !group_by.is_empty() || select.iter().any(|(_, s)| matches!(s, Sel::Agg(..)));
    if grouped {
        for (out, s) in &select {
            if let Sel::Col(r) = s
                && !group_by.contains(r)
            {
                return bad(format!("select.{out}: a grouped view selects its groupBy paths or aggregates"));
            }
        }
    }
    let mut order = Vec::new();
    match d.get("orderBy") {
        None => {}
        Some(Value::Array(o)) if o.len() <= 4 => {
            for (i, entry) in o.iter().enumerate() {
                let field = entry.get("field").and_then(Value::as_str).unwrap_or_default();
                let Some(idx) = select.iter().position(|(n, _)| n == field) else {
                    return bad(format!("orderBy {i}: \"field\" names a selected column"));
                };
                let desc = match entry.get("desc") {
                    None => false,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return bad(format!("orderBy {i}: \"desc\" is true or false")),
                };
                order.push((idx, desc));
            }
        }
        Some(_) => return bad("\"orderBy\" is a list of at most 4 {\"field\", \"desc\"}"),
    }
    let limit = match d.get("limit") {
        None => return bad("a view needs \"limit\": its result is bounded"),
        Some(l) => match l.as_u64() {
            Some(n) if (1..=MAX_LIMIT as u64).contains(&n) => n as usize,
            _ => return bad(format!("\"limit\" is 1-{MAX_LIMIT}")),
        },
    };
    for a in &mut c.aliases {
        // Every alias keeps its URI: it names its rows.
        let uri = Column(vec![Seg::Key("$uri".into())]);
        if !a.columns.contains(&uri) {
            a.columns.push(uri);
        }
    }
    Ok(View { name: name.to_string(), aliases: c.aliases, edges, filter, group_by, select, order, limit })
}

/// A record's JSON with the parts every alias offers (`$uri`, `$did`, `$rkey`, `$cid`).
pub fn with_meta(mut record: Map<String, Value>, did: &str, collection: &str, rkey: &str, cid: &str) -> Value {
    record.insert("$uri".into(), Value::String(format!("at://{did}/{collection}/{rkey}")));
    record.insert("$did".into(), Value::String(did.to_string()));
    record.insert("$rkey".into(), Value::String(rkey.to_string()));
    record.insert("$cid".into(), Value::String(cid.to_string()));
    Value::Object(record)
}

/// The index of an alias's `$uri` column.
pub fn uri_col(alias: &Alias) -> usize {
    alias.columns.iter().position(|c| c.0 == [Seg::Key("$uri".into())]).unwrap_or(0)
}
