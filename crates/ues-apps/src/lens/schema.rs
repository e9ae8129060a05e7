//! Bidirectional schema lenses for Lexicon records.
//!
//! A [`SchemaLens`] lets an app that speaks one version of a Lexicon record schema (the *target*) read and
//! write records stored under another version (the *source*). [`SchemaLens::get`] reads a source record as a
//! target record; [`SchemaLens::put`] turns a target record back into a source record, using the source record
//! it came from (when there is one) to restore what reading had to leave out. [`SchemaLens::check`] compares a
//! lens with the two Lexicon documents before it is used.
//!
//! A lens is a list of small operations ([`Op`]). Reading applies them in order; writing undoes them in reverse
//! order, each one handed the matching intermediate form of the original record. For source records valid under
//! the source schema and target records valid under the target schema, two round-trip rules hold:
//!
//! * reading and writing back unchanged gives the original: `put(&get(s)?, Some(&s))? == s`;
//! * writing and reading again gives what was written: `get(&put(&t, Some(&s))?)? == t`, and the same with no
//!   original.
//!
//! The second rule can only hold for target records the source can represent. Three operations narrow that set,
//! and a target schema should say so for the rule to hold on all its records: a field created by `add` always
//! reads as its default (declare it `const`), a field created by `wrap` always holds exactly one element
//! (`check` requires `minLength` 1 and `maxLength` 1 there), and after `hoist` a host object that lost its last
//! field is left out, so a target record with an empty host next to the hoisted field reads back without it.
//!
//! Absent fields stay absent: an operation whose field is missing does nothing. A field holding a value of the
//! wrong JSON type is an [`LensError::Apply`] naming its path (`meta.tags[2].name`). Operations never overwrite
//! a field that is already there; such a clash is an error too, since writing back could not tell the two
//! values apart.

#![warn(missing_docs)]

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

/// The most operations one lens may hold, counting those nested inside `in` and `map`.
pub const MAX_OPS: usize = 256;
/// The deepest nesting of operation lists: the top-level list is level 1 and each `in` or `map` adds one.
pub const MAX_DEPTH: usize = 16;
/// The longest field name an operation may use, in characters.
pub const MAX_NAME_CHARS: usize = 128;
/// The most entries one direction of a `convert` table may hold.
pub const MAX_TABLE_ENTRIES: usize = 1024;

/// Deepest schema nesting that `check` follows in a Lexicon document.
const MAX_SCHEMA_DEPTH: usize = 64;
/// Longest chain of references that `check` follows before giving up.
const MAX_REF_HOPS: usize = 32;

type Record = Map<String, Value>;

/// Why a lens could not be read, checked or applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LensError {
    /// The lens or a Lexicon document is malformed; the text says what is wrong and where.
    #[error("invalid lens: {0}")]
    Invalid(String),
    /// The lens does not turn the source schema into the target schema; `path` names the first difference.
    #[error("schema mismatch at {}: {reason}", shown(.path))]
    Mismatch {
        /// Dotted path of the field in question (`author.did`, `items[].name`); empty for the record itself.
        path: String,
        /// What differs.
        reason: String,
    },
    /// A record could not be translated; `path` names the offending field.
    #[error("cannot translate the record at {}: {reason}", shown(.path))]
    Apply {
        /// Dotted path of the field in question (`tracks[2].rating`); empty for the record itself.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

fn shown(path: &str) -> String {
    if path.is_empty() { "the record root".to_string() } else { format!("`{path}`") }
}

fn invalid(reason: impl Into<String>) -> LensError {
    LensError::Invalid(reason.into())
}

fn mismatch(path: impl Into<String>, reason: impl Into<String>) -> LensError {
    LensError::Mismatch { path: path.into(), reason: reason.into() }
}

fn apply_err(path: impl Into<String>, reason: impl Into<String>) -> LensError {
    LensError::Apply { path: path.into(), reason: reason.into() }
}

/// A bidirectional translation between records of two versions of a Lexicon record schema.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SchemaLens {
    /// The operations, applied in this order when reading and undone in reverse order when writing.
    pub ops: Vec<Op>,
}

/// One step of a lens. Each step acts on the fields of one JSON object: the record itself, or an object reached
/// through [`Op::In`] or [`Op::Map`].
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Renames a field. JSON: `{"op":"rename","from":"a","to":"b"}`.
    Rename {
        /// Name in the source.
        from: String,
        /// Name in the target.
        to: String,
    },
    /// Moves field `name` out of the object `host` up next to it. JSON: `{"op":"hoist","host":"a","name":"b"}`.
    /// A host left with no fields is dropped; writing back creates it again.
    Hoist {
        /// The object field that holds the field in the source.
        host: String,
        /// The field that moves.
        name: String,
    },
    /// Moves field `name` down into the object `host`, creating the object when it is absent.
    /// JSON: `{"op":"plunge","host":"a","name":"b"}`.
    Plunge {
        /// The object field that holds the field in the target.
        host: String,
        /// The field that moves.
        name: String,
    },
    /// Turns a single value into a one-element array. JSON: `{"op":"wrap","name":"x"}`.
    /// Writing back takes the only element; an empty array writes the field as absent.
    Wrap {
        /// The field to wrap.
        name: String,
    },
    /// Turns an array into its first element; an empty array reads as absent. JSON: `{"op":"head","name":"x"}`.
    /// Writing back puts the new first element in front of the original's remaining elements.
    Head {
        /// The array field.
        name: String,
    },
    /// Applies nested operations inside the object field `name`. JSON: `{"op":"in","name":"x","ops":[...]}`.
    In {
        /// The object field.
        name: String,
        /// The operations applied inside it.
        ops: Vec<Op>,
    },
    /// Applies nested operations to each object element of the array field `name`; other elements are left as
    /// they are. JSON: `{"op":"map","name":"x","ops":[...]}`. Writing back pairs elements with the original's by
    /// position.
    Map {
        /// The array field.
        name: String,
        /// The operations applied to each object element.
        ops: Vec<Op>,
    },
    /// Translates the value of field `name` through a table. JSON:
    /// `{"op":"convert","name":"x","mapping":[{"draft":"unpublished"},{"unpublished":"draft"}]}` for string
    /// values, or `"mapping":[[[from,to],...],[[from,to],...]]` for any JSON values. Writing back keeps the
    /// original value when it still reads as the written one, and otherwise uses the backward table.
    Convert {
        /// The field whose value is translated.
        name: String,
        /// Source value to target value, used when reading.
        forward: Vec<(Value, Value)>,
        /// Target value to source value, used when writing.
        backward: Vec<(Value, Value)>,
    },
    /// Adds a field that the source does not have, holding `default` when read; writing back drops it.
    /// JSON: `{"op":"add","name":"x","default":v}`.
    Add {
        /// The new field.
        name: String,
        /// The value it reads as.
        default: Value,
    },
    /// Leaves out a field of the source. Writing back restores it from the original record, or sets `default`
    /// when there is no original. JSON: `{"op":"remove","name":"x","default":v}`.
    Remove {
        /// The field left out.
        name: String,
        /// The value written back when there is no original record.
        default: Value,
    },
}

// ---------------------------------------------------------------------------------------------------------------
// Reading a lens from JSON
// ---------------------------------------------------------------------------------------------------------------

/// Reads a lens from its JSON form: `{"ops":[...]}` (other top-level keys are ignored) or a bare array of ops.
///
/// A lens holds at most [`MAX_OPS`] operations in all, nests at most [`MAX_DEPTH`] levels, and names fields of
/// 1 to [`MAX_NAME_CHARS`] characters without `.`. Anything else is refused with [`LensError::Invalid`] saying
/// which op is wrong and why. No JSON input makes this function panic.
pub fn parse(v: &Value) -> Result<SchemaLens, LensError> {
    let list = match v {
        Value::Array(list) => list,
        Value::Object(o) => match o.get("ops") {
            Some(Value::Array(list)) => list,
            Some(other) => return Err(invalid(format!("`ops` must be an array, found {}", kind_of(other)))),
            None => return Err(invalid("missing `ops`")),
        },
        other => {
            return Err(invalid(format!(
                "a lens must be an object with `ops` or an array of ops, found {}",
                kind_of(other)
            )));
        }
    };
    let mut budget = MAX_OPS;
    let ops = parse_ops(list, 1, &mut budget, "ops")?;
    Ok(SchemaLens { ops })
}

fn parse_ops(list: &[Value], depth: usize, budget: &mut usize, at: &str) -> Result<Vec<Op>, LensError> {
    if depth > MAX_DEPTH {
        return Err(invalid(format!("{at}: ops nest more than {MAX_DEPTH} levels deep")));
    }
    if list.len() > *budget {
        return Err(invalid(format!("the lens has more than {MAX_OPS} ops")));
    }
    *budget -= list.len();
    list.iter().enumerate().map(|(i, op)| parse_op(op, depth, budget, &format!("{at}[{i}]"))).collect()
}

fn parse_op(v: &Value, depth: usize, budget: &mut usize, at: &str) -> Result<Op, LensError> {
    let Value::Object(o) = v else {
        return Err(invalid(format!("{at}: an op must be a JSON object, found {}", kind_of(v))));
    };
    let kind = match o.get("op") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(other) => return Err(invalid(format!("{at}: `op` must be a string, found {}", kind_of(other)))),
        None => return Err(invalid(format!("{at}: missing `op`"))),
    };
    let keys: &[&str] = match kind {
        "rename" => &["op", "from", "to"],
        "hoist" | "plunge" => &["op", "host", "name"],
        "wrap" | "head" => &["op", "name"],
        "in" | "map" => &["op", "name", "ops"],
        "convert" => &["op", "name", "mapping"],
        "add" | "remove" => &["op", "name", "default"],
        other => return Err(invalid(format!("{at}: unknown op {}", show(&Value::String(other.to_string()))))),
    };
    if let Some(extra) = o.keys().find(|k| !keys.contains(&k.as_str())) {
        return Err(invalid(format!("{at}: unknown key {} in a `{kind}` op", show(&Value::String(extra.clone())))));
    }
    let name = |key: &str| field_name(o, key, at);
    let op = match kind {
        "rename" => {
            let (from, to) = (name("from")?, name("to")?);
            if from == to {
                return Err(invalid(format!("{at}: renames `{from}` to itself")));
            }
            Op::Rename { from, to }
        }
        "hoist" | "plunge" => {
            let (host, field) = (name("host")?, name("name")?);
            if host == field {
                return Err(invalid(format!("{at}: `host` and `name` are both `{host}`")));
            }
            if kind == "hoist" { Op::Hoist { host, name: field } } else { Op::Plunge { host, name: field } }
        }
        "wrap" => Op::Wrap { name: name("name")? },
        "head" => Op::Head { name: name("name")? },
        "in" | "map" => {
            let field = name("name")?;
            let list = match o.get("ops") {
                Some(Value::Array(list)) => list,
                Some(other) => return Err(invalid(format!("{at}: `ops` must be an array, found {}", kind_of(other)))),
                None => return Err(invalid(format!("{at}: missing `ops`"))),
            };
            let ops = parse_ops(list, depth + 1, budget, &format!("{at}.ops"))?;
            if kind == "in" { Op::In { name: field, ops } } else { Op::Map { name: field, ops } }
        }
        "convert" => {
            let field = name("name")?;
            let (forward, backward) = parse_mapping(o.get("mapping"), at)?;
            Op::Convert { name: field, forward, backward }
        }
        _ => {
            let field = name("name")?;
            let default = o.get("default").cloned().ok_or_else(|| invalid(format!("{at}: missing `default`")))?;
            if kind == "add" { Op::Add { name: field, default } } else { Op::Remove { name: field, default } }
        }
    };
    Ok(op)
}

fn field_name(o: &Record, key: &str, at: &str) -> Result<String, LensError> {
    match o.get(key) {
        None => Err(invalid(format!("{at}: missing `{key}`"))),
        Some(Value::String(s)) => {
            let chars = s.chars().count();
            if chars == 0 {
                Err(invalid(format!("{at}: `{key}` must not be empty")))
            } else if chars > MAX_NAME_CHARS {
                Err(invalid(format!("{at}: `{key}` is longer than {MAX_NAME_CHARS} characters")))
            } else if s.contains('.') {
                Err(invalid(format!(
                    "{at}: `{key}` {} must not contain '.'; use `in` to reach nested fields",
                    show(&Value::String(s.clone()))
                )))
            } else {
                Ok(s.clone())
            }
        }
        Some(other) => Err(invalid(format!("{at}: `{key}` must be a string, found {}", kind_of(other)))),
    }
}

type Table = Vec<(Value, Value)>;

fn parse_mapping(m: Option<&Value>, at: &str) -> Result<(Table, Table), LensError> {
    let shape = || invalid(format!("{at}: `mapping` must be an array of two tables, forward then backward"));
    let Some(Value::Array(tables)) = m else {
        return Err(shape());
    };
    let [forward, backward] = tables.as_slice() else {
        return Err(shape());
    };
    Ok((parse_table(forward, at, "forward")?, parse_table(backward, at, "backward")?))
}

fn parse_table(v: &Value, at: &str, which: &str) -> Result<Table, LensError> {
    let too_big = || invalid(format!("{at}: the {which} table has more than {MAX_TABLE_ENTRIES} entries"));
    let pairs: Table = match v {
        Value::Object(o) => {
            if o.len() > MAX_TABLE_ENTRIES {
                return Err(too_big());
            }
            o.iter().map(|(k, w)| (Value::String(k.clone()), w.clone())).collect()
        }
        Value::Array(entries) => {
            if entries.len() > MAX_TABLE_ENTRIES {
                return Err(too_big());
            }
            entries
                .iter()
                .map(|entry| match entry.as_array().map(Vec::as_slice) {
                    Some([from, to]) => Ok((from.clone(), to.clone())),
                    _ => Err(invalid(format!("{at}: each entry of the {which} table must be a [from, to] pair"))),
                })
                .collect::<Result<_, _>>()?
        }
        other => {
            return Err(invalid(format!(
                "{at}: the {which} table must be an object or an array of pairs, found {}",
                kind_of(other)
            )));
        }
    };
    for (i, (from, _)) in pairs.iter().enumerate() {
        if pairs.iter().take(i).any(|(earlier, _)| earlier == from) {
            return Err(invalid(format!("{at}: the {which} table maps {} twice", show(from))));
        }
    }
    Ok(pairs)
}

// ---------------------------------------------------------------------------------------------------------------
// Translating records
// ---------------------------------------------------------------------------------------------------------------

impl SchemaLens {
    /// Reads a source record as a target record.
    ///
    /// Fails with [`LensError::Apply`] when the record is not a JSON object, a field has a type the lens cannot
    /// work on, a converted value has no mapping, or a field would overwrite one already there.
    pub fn get(&self, source: &Value) -> Result<Value, LensError> {
        let Value::Object(record) = source else {
            return Err(apply_err("", format!("expected a JSON object, found {}", kind_of(source))));
        };
        let mut record = record.clone();
        get_ops(&self.ops, &mut record, "")?;
        Ok(Value::Object(record))
    }

    /// Turns a target record back into a source record.
    ///
    /// `original` is the source record the target record was read from, if any; what reading left out (removed
    /// fields, the tail of an array read through `head`, a converted value that reads the same) is taken from it.
    /// Without it, removed fields get their defaults. Fails with [`LensError::Apply`] like [`SchemaLens::get`],
    /// and also when the original itself cannot be read through the lens.
    pub fn put(&self, target: &Value, original: Option<&Value>) -> Result<Value, LensError> {
        let Value::Object(record) = target else {
            return Err(apply_err("", format!("expected a JSON object, found {}", kind_of(target))));
        };
        let original = match original {
            None => None,
            Some(Value::Object(o)) => Some(o),
            Some(other) => {
                return Err(apply_err(
                    "",
                    format!("the original record must be a JSON object, found {}", kind_of(other)),
                ));
            }
        };
        put_ops(&self.ops, record.clone(), original, "").map(Value::Object)
    }
}

fn join(prefix: &str, name: &str) -> String {
    format!("{prefix}{name}")
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Compact JSON text of a value for messages, cut short when long.
fn show(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() <= 80 { text } else { format!("{}...", text.chars().take(77).collect::<String>()) }
}

fn lookup<'a>(table: &'a [(Value, Value)], v: &Value) -> Option<&'a Value> {
    table.iter().find(|(from, _)| from == v).map(|(_, to)| to)
}

fn get_ops(ops: &[Op], record: &mut Record, prefix: &str) -> Result<(), LensError> {
    ops.iter().try_for_each(|op| get_op(op, record, prefix))
}

fn get_op(op: &Op, record: &mut Record, prefix: &str) -> Result<(), LensError> {
    match op {
        Op::Rename { from, to } => rename(record, from, to, prefix),
        Op::Hoist { host, name } => lift(record, host, name, prefix, true),
        Op::Plunge { host, name } => sink(record, host, name, prefix),
        Op::Wrap { name } => match record.get_mut(name) {
            None => Ok(()),
            Some(Value::Array(_)) => Err(apply_err(join(prefix, name), "expected a single value, found an array")),
            Some(value) => {
                let single = value.take();
                *value = Value::Array(vec![single]);
                Ok(())
            }
        },
        Op::Head { name } => {
            let first = match record.get_mut(name) {
                None | Some(Value::Null) => return Ok(()),
                Some(Value::Array(items)) => std::mem::take(items).into_iter().next(),
                Some(other) => {
                    return Err(apply_err(join(prefix, name), format!("expected an array, found {}", kind_of(other))));
                }
            };
            match first {
                Some(first) => record.insert(name.clone(), first),
                None => record.remove(name),
            };
            Ok(())
        }
        Op::In { name, ops } => match record.get_mut(name) {
            None | Some(Value::Null) => Ok(()),
            Some(Value::Object(inner)) => get_ops(ops, inner, &format!("{prefix}{name}.")),
            Some(other) => Err(apply_err(join(prefix, name), format!("expected an object, found {}", kind_of(other)))),
        },
        Op::Map { name, ops } => match record.get_mut(name) {
            None | Some(Value::Null) => Ok(()),
            Some(Value::Array(items)) => items.iter_mut().enumerate().try_for_each(|(i, item)| match item {
                Value::Object(inner) => get_ops(ops, inner, &format!("{prefix}{name}[{i}].")),
                _ => Ok(()),
            }),
            Some(other) => Err(apply_err(join(prefix, name), format!("expected an array, found {}", kind_of(other)))),
        },
        Op::Convert { name, forward, .. } => {
            let Some(value) = record.get_mut(name) else {
                return Ok(());
            };
            match lookup(forward, value) {
                Some(mapped) => {
                    *value = mapped.clone();
                    Ok(())
                }
                None => Err(apply_err(join(prefix, name), format!("the lens has no mapping for {}", show(value)))),
            }
        }
        Op::Add { name, default } => {
            if !record.contains_key(name) {
                record.insert(name.clone(), default.clone());
            }
            Ok(())
        }
        Op::Remove { name, .. } => {
            record.remove(name);
            Ok(())
        }
    }
}

fn put_ops(ops: &[Op], target: Record, original: Option<&Record>, prefix: &str) -> Result<Record, LensError> {
    // The original as each op saw it on the way in: states[i] is the input of ops[i].
    let states = match original {
        None => None,
        Some(original) => {
            let mut states = Vec::with_capacity(ops.len());
            let mut current = original.clone();
            for op in ops {
                let mut next = current.clone();
                get_op(op, &mut next, prefix).map_err(|e| match e {
                    LensError::Apply { path, reason } => {
                        apply_err(path, format!("the original record cannot be read through the lens: {reason}"))
                    }
                    other => other,
                })?;
                states.push(current);
                current = next;
            }
            Some(states)
        }
    };
    let mut record = target;
    for (i, op) in ops.iter().enumerate().rev() {
        let original = states.as_ref().and_then(|states| states.get(i));
        record = put_op(op, record, original, prefix)?;
    }
    Ok(record)
}

fn put_op(op: &Op, mut record: Record, original: Option<&Record>, prefix: &str) -> Result<Record, LensError> {
    let original_field = |name: &str| original.and_then(|o| o.get(name));
    match op {
        Op::Rename { from, to } => rename(&mut record, to, from, prefix)?,
        Op::Hoist { host, name } => sink(&mut record, host, name, prefix)?,
        Op::Plunge { host, name } => {
            let keep_empty = matches!(original_field(host), Some(Value::Object(o)) if o.is_empty());
            lift(&mut record, host, name, prefix, !keep_empty)?;
        }
        Op::Wrap { name } => {
            let single = match record.get_mut(name) {
                None => None,
                Some(Value::Array(items)) if items.len() <= 1 => items.pop(),
                Some(Value::Array(items)) => {
                    return Err(apply_err(
                        join(prefix, name),
                        format!("the source holds a single value here, so {} elements cannot be written", items.len()),
                    ));
                }
                Some(other) => {
                    return Err(apply_err(join(prefix, name), format!("expected an array, found {}", kind_of(other))));
                }
            };
            match single {
                Some(single) => record.insert(name.clone(), single),
                None => record.remove(name),
            };
        }
        Op::Head { name } => {
            let before = original_field(name);
            match record.get_mut(name) {
                None => {
                    if let Some(Value::Array(_)) = before {
                        record.insert(name.clone(), Value::Array(Vec::new()));
                    }
                }
                Some(Value::Null) if before.is_some_and(Value::is_null) => {}
                Some(value) => {
                    let mut items = vec![value.take()];
                    if let Some(Value::Array(rest)) = before {
                        items.extend(rest.iter().skip(1).cloned());
                    }
                    *value = Value::Array(items);
                }
            }
        }
        Op::In { name, ops } => {
            let before = original_field(name).and_then(Value::as_object);
            match record.get_mut(name) {
                None | Some(Value::Null) => {}
                Some(Value::Object(inner)) => {
                    let taken = std::mem::take(inner);
                    *inner = put_ops(ops, taken, before, &format!("{prefix}{name}."))?;
                }
                Some(other) => {
                    return Err(apply_err(join(prefix, name), format!("expected an object, found {}", kind_of(other))));
                }
            }
        }
        Op::Map { name, ops } => {
            let before = original_field(name).and_then(Value::as_array);
            match record.get_mut(name) {
                None | Some(Value::Null) => {}
                Some(Value::Array(items)) => {
                    for (i, item) in items.iter_mut().enumerate() {
                        if let Value::Object(inner) = item {
                            let paired = before.and_then(|b| b.get(i)).and_then(Value::as_object);
                            let taken = std::mem::take(inner);
                            *inner = put_ops(ops, taken, paired, &format!("{prefix}{name}[{i}]."))?;
                        }
                    }
                }
                Some(other) => {
                    return Err(apply_err(join(prefix, name), format!("expected an array, found {}", kind_of(other))));
                }
            }
        }
        Op::Convert { name, forward, backward } => {
            let before = original_field(name);
            if let Some(value) = record.get_mut(name) {
                *value = convert_back(forward, backward, value, before, &join(prefix, name))?;
            }
        }
        Op::Add { name, .. } => {
            record.remove(name);
            if let Some(before) = original_field(name) {
                record.insert(name.clone(), before.clone());
            }
        }
        Op::Remove { name, default } => {
            if !record.contains_key(name) {
                let restored = match original {
                    Some(o) => o.get(name).cloned(),
                    None => Some(default.clone()),
                };
                if let Some(restored) = restored {
                    record.insert(name.clone(), restored);
                }
            }
        }
    }
    Ok(record)
}

fn convert_back(
    forward: &[(Value, Value)],
    backward: &[(Value, Value)],
    value: &Value,
    before: Option<&Value>,
    path: &str,
) -> Result<Value, LensError> {
    if let Some(before) = before
        && lookup(forward, before) == Some(value)
    {
        return Ok(before.clone());
    }
    let Some(back) = lookup(backward, value) else {
        return Err(apply_err(path, format!("the lens has no mapping back for {}", show(value))));
    };
    match lookup(forward, back) {
        Some(again) if again == value => Ok(back.clone()),
        _ => Err(apply_err(
            path,
            format!("{} maps back to {}, which does not map forward to {} again", show(value), show(back), show(value)),
        )),
    }
}

fn rename(record: &mut Record, from: &str, to: &str, prefix: &str) -> Result<(), LensError> {
    if record.contains_key(to) {
        return Err(apply_err(
            join(prefix, to),
            format!("the record already has this field, so `{from}` cannot be renamed to it"),
        ));
    }
    if let Some(value) = record.remove(from) {
        record.insert(to.to_string(), value);
    }
    Ok(())
}

/// Moves `host.name` up to `name`; drops the host when that leaves it empty and `drop_empty` is set.
fn lift(record: &mut Record, host: &str, name: &str, prefix: &str, drop_empty: bool) -> Result<(), LensError> {
    if record.contains_key(name) {
        return Err(apply_err(
            join(prefix, name),
            format!("the record already has this field, so `{host}.{name}` cannot move here"),
        ));
    }
    let (value, emptied) = match record.get_mut(host) {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(inner)) => match inner.remove(name) {
            Some(value) => (value, inner.is_empty()),
            None => return Ok(()),
        },
        Some(other) => {
            return Err(apply_err(join(prefix, host), format!("expected an object, found {}", kind_of(other))));
        }
    };
    if emptied && drop_empty {
        record.remove(host);
    }
    record.insert(name.to_string(), value);
    Ok(())
}

/// Moves `name` down into `host.name`, creating the host object when it is absent.
fn sink(record: &mut Record, host: &str, name: &str, prefix: &str) -> Result<(), LensError> {
    match record.get(host) {
        Some(Value::Object(inner)) if inner.contains_key(name) => {
            return Err(apply_err(
                format!("{prefix}{host}.{name}"),
                format!("the record already has this field, so `{name}` cannot move here"),
            ));
        }
        None | Some(Value::Object(_)) => {}
        Some(Value::Null) if !record.contains_key(name) => {}
        Some(other) => {
            return Err(apply_err(join(prefix, host), format!("expected an object, found {}", kind_of(other))));
        }
    }
    let Some(value) = record.remove(name) else {
        return Ok(());
    };
    if let Some(Value::Object(inner)) = record.get_mut(host) {
        inner.insert(name.to_string(), value);
    } else {
        let mut inner = Map::new();
        inner.insert(name.to_string(), value);
        record.insert(host.to_string(), Value::Object(inner));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Checking a lens against two Lexicon documents
// ---------------------------------------------------------------------------------------------------------------

impl SchemaLens {
    /// Checks that this lens turns the `main` record schema of `source_doc` into that of `target_doc`.
    ///
    /// The operations are applied to the source schema (local references are followed as needed) and the result
    /// is compared with the target schema: the same fields, the same types all the way down, no constraint looser
    /// than the target's (a target enum must contain every value the lens can give, a target `maxLength` must not
    /// be below the source's, and so on), and every field the target requires always provided. `convert` tables
    /// must cover every value the source allows, write back only values the source allows, agree with each other,
    /// and map back every value a target enum allows. `add` defaults must be valid in the target and `remove`
    /// defaults in the source. The first difference is reported as [`LensError::Mismatch`]; an op naming a field
    /// the schema does not have at that point is one too. A malformed document is [`LensError::Invalid`].
    pub fn check(&self, source_doc: &Value, target_doc: &Value) -> Result<(), LensError> {
        let docs = Docs { source: load_doc(source_doc, "source")?, target: load_doc(target_doc, "target")? };
        let source = main_object(&docs, Side::Source)?;
        let target = main_object(&docs, Side::Target)?;
        let lensed = schema_ops(&self.ops, source, "", &docs)?;
        compare_objects(&lensed, &target, "", &docs, 0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Target,
}

struct Doc<'a> {
    label: &'static str,
    id: &'a str,
    defs: &'a Record,
}

struct Docs<'a> {
    source: Doc<'a>,
    target: Doc<'a>,
}

impl<'a> Docs<'a> {
    fn doc(&self, side: Side) -> &Doc<'a> {
        match side {
            Side::Source => &self.source,
            Side::Target => &self.target,
        }
    }
}

/// A schema as `check` sees it.
#[derive(Debug, Clone)]
enum Ty {
    Null,
    Boolean(Option<bool>),
    Integer(IntRule),
    Str(StrRule),
    Bytes {
        min: Option<u64>,
        max: Option<u64>,
    },
    CidLink,
    Blob,
    Array(Box<ArrayTy>),
    Object(Obj),
    /// A reference not yet followed, with the document it belongs to and its full name (`nsid#def`).
    Ref {
        side: Side,
        full: String,
    },
    /// A reference into another Lexicon document, which is compared by name only.
    External(String),
    Union {
        side: Side,
        refs: Vec<String>,
        closed: bool,
    },
    Unknown,
    Other(String),
    /// Exactly these values: what `convert` and `add` give. `back` lists the values `convert` can write back.
    Fixed {
        values: Vec<Value>,
        back: Option<Vec<Value>>,
    },
}

#[derive(Debug, Clone, Default)]
struct IntRule {
    min: Option<i64>,
    max: Option<i64>,
    choices: Option<Vec<i64>>,
    konst: Option<i64>,
}

#[derive(Debug, Clone, Default)]
struct StrRule {
    min_bytes: Option<u64>,
    max_bytes: Option<u64>,
    min_graphemes: Option<u64>,
    max_graphemes: Option<u64>,
    choices: Option<Vec<String>>,
    konst: Option<String>,
    format: Option<String>,
}

#[derive(Debug, Clone)]
struct ArrayTy {
    items: Ty,
    min: Option<u64>,
    max: Option<u64>,
    /// Made by `wrap`: always exactly one element, and only one can be written back.
    single: bool,
}

#[derive(Debug, Clone, Default)]
struct Obj {
    props: BTreeMap<String, Ty>,
    required: BTreeSet<String>,
    nullable: BTreeSet<String>,
}

struct Field {
    ty: Ty,
    required: bool,
    nullable: bool,
}

impl Obj {
    fn has(&self, name: &str, prefix: &str) -> Result<(), LensError> {
        if self.props.contains_key(name) {
            Ok(())
        } else {
            Err(mismatch(join(prefix, name), "no such field in the source at this point"))
        }
    }

    fn free(&self, name: &str, prefix: &str) -> Result<(), LensError> {
        if self.props.contains_key(name) {
            Err(mismatch(
                join(prefix, name),
                "the source already has this field at this point, so the lens would overwrite it",
            ))
        } else {
            Ok(())
        }
    }

    fn take(&mut self, name: &str, prefix: &str) -> Result<Field, LensError> {
        let ty = self
            .props
            .remove(name)
            .ok_or_else(|| mismatch(join(prefix, name), "no such field in the source at this point"))?;
        Ok(Field { ty, required: self.required.remove(name), nullable: self.nullable.remove(name) })
    }

    fn place(&mut self, name: &str, field: Field) {
        self.props.insert(name.to_string(), field.ty);
        if field.required {
            self.required.insert(name.to_string());
        }
        if field.nullable {
            self.nullable.insert(name.to_string());
        }
    }
}

fn load_doc<'a>(v: &'a Value, label: &'static str) -> Result<Doc<'a>, LensError> {
    let o = v.as_object().ok_or_else(|| invalid(format!("the {label} document is not a JSON object")))?;
    let id = o.get("id").and_then(Value::as_str).ok_or_else(|| invalid(format!("the {label} document has no `id`")))?;
    let defs = o
        .get("defs")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid(format!("the {label} document has no `defs`")))?;
    Ok(Doc { label, id, defs })
}

fn main_object(docs: &Docs, side: Side) -> Result<Obj, LensError> {
    let doc = docs.doc(side);
    let main =
        doc.defs.get("main").ok_or_else(|| invalid(format!("the {} document has no `main` definition", doc.label)))?;
    match parse_ty(main, side, doc, 0)? {
        Ty::Object(o) => Ok(o),
        _ => Err(invalid(format!("the {} document's `main` definition is not a record", doc.label))),
    }
}

/// The full name of a reference written in document `doc_id`: `#x` becomes `doc_id#x`, `nsid` becomes `nsid#main`.
fn full_ref(r: &str, doc_id: &str) -> String {
    if r.starts_with('#') {
        format!("{doc_id}{r}")
    } else if r.contains('#') {
        r.to_string()
    } else {
        format!("{r}#main")
    }
}

fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    v.and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).map(String::from).collect())
}

fn parse_ty(v: &Value, side: Side, doc: &Doc, depth: usize) -> Result<Ty, LensError> {
    let label = doc.label;
    if depth > MAX_SCHEMA_DEPTH {
        return Err(invalid(format!("the {label} document nests schemas more than {MAX_SCHEMA_DEPTH} levels deep")));
    }
    let o = v.as_object().ok_or_else(|| invalid(format!("the {label} document has a schema that is not an object")))?;
    let kind = o
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("the {label} document has a schema without `type`")))?;
    let uint = |key: &str| o.get(key).and_then(Value::as_u64);
    let int = |key: &str| o.get(key).and_then(Value::as_i64);
    Ok(match kind {
        "null" => Ty::Null,
        "boolean" => Ty::Boolean(o.get("const").and_then(Value::as_bool)),
        "integer" => Ty::Integer(IntRule {
            min: int("minimum"),
            max: int("maximum"),
            choices: o.get("enum").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_i64).collect()),
            konst: int("const"),
        }),
        "string" => Ty::Str(StrRule {
            min_bytes: uint("minLength"),
            max_bytes: uint("maxLength"),
            min_graphemes: uint("minGraphemes"),
            max_graphemes: uint("maxGraphemes"),
            choices: strings(o.get("enum")),
            konst: o.get("const").and_then(Value::as_str).map(String::from),
            format: o.get("format").and_then(Value::as_str).map(String::from),
        }),
        "bytes" => Ty::Bytes { min: uint("minLength"), max: uint("maxLength") },
        "cid-link" => Ty::CidLink,
        "blob" => Ty::Blob,
        "array" => {
            let items =
                o.get("items").ok_or_else(|| invalid(format!("the {label} document has an array without `items`")))?;
            Ty::Array(Box::new(ArrayTy {
                items: parse_ty(items, side, doc, depth + 1)?,
                min: uint("minLength"),
                max: uint("maxLength"),
                single: false,
            }))
        }
        "object" => {
            let mut obj = Obj::default();
            match o.get("properties") {
                None => {}
                Some(Value::Object(props)) => {
                    for (name, schema) in props {
                        obj.props.insert(name.clone(), parse_ty(schema, side, doc, depth + 1)?);
                    }
                }
                Some(_) => return Err(invalid(format!("the {label} document has `properties` that is not an object"))),
            }
            obj.required = strings(o.get("required")).unwrap_or_default().into_iter().collect();
            obj.nullable = strings(o.get("nullable")).unwrap_or_default().into_iter().collect();
            Ty::Object(obj)
        }
        "record" => {
            let record = o
                .get("record")
                .ok_or_else(|| invalid(format!("the {label} document has a record without `record`")))?;
            parse_ty(record, side, doc, depth + 1)?
        }
        "ref" => {
            let r = o
                .get("ref")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("the {label} document has a ref without `ref`")))?;
            Ty::Ref { side, full: full_ref(r, doc.id) }
        }
        "union" => Ty::Union {
            side,
            refs: strings(o.get("refs")).unwrap_or_default().iter().map(|r| full_ref(r, doc.id)).collect(),
            closed: o.get("closed").and_then(Value::as_bool).unwrap_or(false),
        },
        "unknown" => Ty::Unknown,
        other => Ty::Other(other.to_string()),
    })
}

/// Follows references until a schema that is not one.
fn resolve<'t>(ty: &'t Ty, docs: &Docs) -> Result<Cow<'t, Ty>, LensError> {
    let mut current = Cow::Borrowed(ty);
    for _ in 0..MAX_REF_HOPS {
        let Ty::Ref { side, full } = current.as_ref() else {
            return Ok(current);
        };
        let doc = docs.doc(*side);
        let (nsid, def) = full.split_once('#').unwrap_or((full.as_str(), "main"));
        if nsid != doc.id {
            return Ok(Cow::Owned(Ty::External(full.clone())));
        }
        let schema = doc.defs.get(def).ok_or_else(|| {
            invalid(format!("the {} document refers to `{full}`, which it does not define", doc.label))
        })?;
        let next = parse_ty(schema, *side, doc, 0)?;
        current = Cow::Owned(next);
    }
    Err(invalid(format!("references chain more than {MAX_REF_HOPS} times without reaching a schema")))
}

fn describe(ty: &Ty) -> String {
    match ty {
        Ty::Null => "null".into(),
        Ty::Boolean(_) => "a boolean".into(),
        Ty::Integer(_) => "an integer".into(),
        Ty::Str(_) => "a string".into(),
        Ty::Bytes { .. } => "bytes".into(),
        Ty::CidLink => "a cid-link".into(),
        Ty::Blob => "a blob".into(),
        Ty::Array(_) => "an array".into(),
        Ty::Object(_) => "an object".into(),
        Ty::Ref { full, .. } | Ty::External(full) => format!("a reference to `{full}`"),
        Ty::Union { .. } => "a union".into(),
        Ty::Unknown => "an unknown object".into(),
        Ty::Other(kind) => format!("a `{kind}`"),
        Ty::Fixed { values, .. } => format!("the values {}", show(&Value::Array(values.clone()))),
    }
}

fn as_object(ty: &Ty, docs: &Docs, path: &str) -> Result<Obj, LensError> {
    match resolve(ty, docs)?.into_owned() {
        Ty::Object(o) => Ok(o),
        other => Err(mismatch(path, format!("expected an object here, but the source has {}", describe(&other)))),
    }
}

fn schema_ops(ops: &[Op], mut obj: Obj, prefix: &str, docs: &Docs) -> Result<Obj, LensError> {
    for op in ops {
        schema_op(op, &mut obj, prefix, docs)?;
    }
    Ok(obj)
}

fn schema_op(op: &Op, obj: &mut Obj, prefix: &str, docs: &Docs) -> Result<(), LensError> {
    match op {
        Op::Rename { from, to } => {
            obj.has(from, prefix)?;
            obj.free(to, prefix)?;
            let field = obj.take(from, prefix)?;
            obj.place(to, field);
        }
        Op::Hoist { host, name } => {
            obj.has(host, prefix)?;
            obj.free(name, prefix)?;
            let host_field = obj.take(host, prefix)?;
            let mut inner = as_object(&host_field.ty, docs, &join(prefix, host))?;
            let moved = inner.take(name, &format!("{prefix}{host}."))?;
            // The host is dropped when it empties, so it stays required only if it keeps a required field.
            let host_required = host_field.required && !inner.required.is_empty();
            let name_required = host_field.required && moved.required;
            obj.place(host, Field { ty: Ty::Object(inner), required: host_required, nullable: host_field.nullable });
            obj.place(name, Field { ty: moved.ty, required: name_required, nullable: moved.nullable });
        }
        Op::Plunge { host, name } => {
            obj.has(name, prefix)?;
            let (mut inner, host_required, host_nullable) = match obj.props.get(host) {
                Some(ty) => (
                    as_object(ty, docs, &join(prefix, host))?,
                    obj.required.contains(host),
                    obj.nullable.contains(host),
                ),
                None => (Obj::default(), false, false),
            };
            inner.free(name, &format!("{prefix}{host}."))?;
            let moved = obj.take(name, prefix)?;
            let name_required = moved.required;
            inner.place(name, moved);
            obj.props.remove(host);
            obj.required.remove(host);
            obj.nullable.remove(host);
            obj.place(
                host,
                Field { ty: Ty::Object(inner), required: host_required || name_required, nullable: host_nullable },
            );
        }
        Op::Wrap { name } => {
            let field = obj.take(name, prefix)?;
            if let Ty::Array(_) = resolve(&field.ty, docs)?.as_ref() {
                return Err(mismatch(
                    join(prefix, name),
                    "the source already has an array here, so it cannot be wrapped",
                ));
            }
            let array = ArrayTy { items: field.ty, min: Some(1), max: Some(1), single: true };
            obj.place(name, Field { ty: Ty::Array(Box::new(array)), required: field.required, nullable: false });
        }
        Op::Head { name } => {
            let field = obj.take(name, prefix)?;
            let array = match resolve(&field.ty, docs)?.into_owned() {
                Ty::Array(array) => array,
                other => {
                    let reason = format!("expected an array here, but the source has {}", describe(&other));
                    return Err(mismatch(join(prefix, name), reason));
                }
            };
            let required = field.required && array.min.is_some_and(|min| min >= 1);
            obj.place(name, Field { ty: array.items, required, nullable: field.nullable });
        }
        Op::In { name, ops } => {
            let field = obj.take(name, prefix)?;
            let path = join(prefix, name);
            let inner = schema_ops(ops, as_object(&field.ty, docs, &path)?, &format!("{path}."), docs)?;
            obj.place(name, Field { ty: Ty::Object(inner), ..field });
        }
        Op::Map { name, ops } => {
            let field = obj.take(name, prefix)?;
            let path = join(prefix, name);
            let mut array = match resolve(&field.ty, docs)?.into_owned() {
                Ty::Array(array) => array,
                other => {
                    return Err(mismatch(
                        path,
                        format!("expected an array here, but the source has {}", describe(&other)),
                    ));
                }
            };
            let items = format!("{path}[]");
            array.items =
                Ty::Object(schema_ops(ops, as_object(&array.items, docs, &items)?, &format!("{items}."), docs)?);
            obj.place(name, Field { ty: Ty::Array(array), ..field });
        }
        Op::Convert { name, forward, backward } => {
            let field = obj.take(name, prefix)?;
            let path = join(prefix, name);
            for (to, from) in backward {
                match lookup(forward, from) {
                    Some(again) if again == to => {}
                    Some(again) => {
                        return Err(mismatch(
                            path,
                            format!(
                                "the tables disagree: {} maps back to {}, which maps forward to {}",
                                show(to),
                                show(from),
                                show(again)
                            ),
                        ));
                    }
                    None => {
                        return Err(mismatch(
                            path,
                            format!(
                                "the tables disagree: {} maps back to {}, which has no forward mapping",
                                show(to),
                                show(from)
                            ),
                        ));
                    }
                }
                if !(field.nullable && from.is_null())
                    && let Err(misfit) = fits(&field.ty, from, docs, 0)
                {
                    return Err(mismatch(
                        path,
                        format!("the lens writes back {}, but the source field {misfit}", show(from)),
                    ));
                }
            }
            let mut values: Vec<Value> = Vec::new();
            match finite_values(&field.ty, field.nullable, docs)? {
                Some(domain) => {
                    for v in &domain {
                        let mapped = lookup(forward, v).ok_or_else(|| {
                            mismatch(path.clone(), format!("the lens has no mapping for the source value {}", show(v)))
                        })?;
                        if !values.contains(mapped) {
                            values.push(mapped.clone());
                        }
                    }
                }
                None => {
                    for (_, mapped) in forward {
                        if !values.contains(mapped) {
                            values.push(mapped.clone());
                        }
                    }
                }
            }
            let back = Some(backward.iter().map(|(to, _)| to.clone()).collect());
            obj.place(name, Field { ty: Ty::Fixed { values, back }, required: field.required, nullable: false });
        }
        Op::Add { name, default } => {
            obj.free(name, prefix)?;
            obj.place(
                name,
                Field { ty: Ty::Fixed { values: vec![default.clone()], back: None }, required: true, nullable: false },
            );
        }
        Op::Remove { name, default } => {
            let field = obj.take(name, prefix)?;
            if !(field.nullable && default.is_null())
                && let Err(misfit) = fits(&field.ty, default, docs, 0)
            {
                return Err(mismatch(
                    join(prefix, name),
                    format!("the default {} does not fit the source field, which {misfit}", show(default)),
                ));
            }
        }
    }
    Ok(())
}

/// Every value a schema allows, when there are finitely many that are easy to list.
fn finite_values(ty: &Ty, nullable: bool, docs: &Docs) -> Result<Option<Vec<Value>>, LensError> {
    let mut values: Vec<Value> = match resolve(ty, docs)?.as_ref() {
        Ty::Null => vec![Value::Null],
        Ty::Boolean(Some(b)) => vec![Value::Bool(*b)],
        Ty::Boolean(None) => vec![Value::Bool(false), Value::Bool(true)],
        Ty::Integer(rule) => match int_choices(rule) {
            Some(choices) => choices.into_iter().map(Value::from).collect(),
            None => return Ok(None),
        },
        Ty::Str(rule) => match str_choices(rule) {
            Some(choices) => choices.into_iter().map(Value::from).collect(),
            None => return Ok(None),
        },
        Ty::Fixed { values, .. } => values.clone(),
        _ => return Ok(None),
    };
    if nullable && !values.contains(&Value::Null) {
        values.push(Value::Null);
    }
    Ok(Some(values))
}

fn int_choices(rule: &IntRule) -> Option<Vec<i64>> {
    match (&rule.konst, &rule.choices) {
        (Some(k), _) => Some(vec![*k]),
        (None, Some(choices)) => Some(choices.clone()),
        (None, None) => None,
    }
}

fn str_choices(rule: &StrRule) -> Option<Vec<String>> {
    match (&rule.konst, &rule.choices) {
        (Some(k), _) => Some(vec![k.clone()]),
        (None, Some(choices)) => Some(choices.clone()),
        (None, None) => None,
    }
}

/// Why a value does not fit a schema: a rule phrased to follow "the field" (`allows only [...]`), and where.
struct Misfit {
    at: String,
    rule: String,
}

impl std::fmt::Display for Misfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.at.is_empty() { write!(f, "{}", self.rule) } else { write!(f, "{} (at `{}`)", self.rule, self.at) }
    }
}

fn misfit(rule: impl Into<String>) -> Misfit {
    Misfit { at: String::new(), rule: rule.into() }
}

fn nested(at: &str, inner: Misfit) -> Misfit {
    let at = if inner.at.is_empty() {
        at.to_string()
    } else if inner.at.starts_with('[') {
        format!("{at}{}", inner.at)
    } else {
        format!("{at}.{}", inner.at)
    };
    Misfit { at, rule: inner.rule }
}

/// Whether a value is valid under a schema, as far as `check` needs to know (formats are not checked).
fn fits(ty: &Ty, v: &Value, docs: &Docs, depth: usize) -> Result<(), Misfit> {
    if depth > MAX_SCHEMA_DEPTH {
        return Err(misfit("nests too deeply to check"));
    }
    let resolved = resolve(ty, docs).map_err(|e| misfit(format!("cannot be checked: {e}")))?;
    match resolved.as_ref() {
        Ty::Null => {
            if v.is_null() {
                Ok(())
            } else {
                Err(misfit("expects null"))
            }
        }
        Ty::Boolean(konst) => match (v.as_bool(), konst) {
            (None, _) => Err(misfit("expects a boolean")),
            (Some(b), Some(k)) if b != *k => Err(misfit(format!("allows only {k}"))),
            _ => Ok(()),
        },
        Ty::Integer(rule) => {
            let Some(n) = v.as_i64() else {
                return Err(misfit("expects an integer"));
            };
            if let Some(choices) = int_choices(rule)
                && !choices.contains(&n)
            {
                return Err(misfit(format!("allows only {}", show(&Value::from(choices)))));
            }
            if let Some(min) = rule.min
                && n < min
            {
                return Err(misfit(format!("allows integers from {min}")));
            }
            if let Some(max) = rule.max
                && n > max
            {
                return Err(misfit(format!("allows integers up to {max}")));
            }
            Ok(())
        }
        Ty::Str(rule) => {
            let Some(s) = v.as_str() else {
                return Err(misfit("expects a string"));
            };
            if let Some(choices) = str_choices(rule)
                && !choices.iter().any(|c| c == s)
            {
                return Err(misfit(format!("allows only {}", show(&Value::from(choices)))));
            }
            let bytes = s.len() as u64;
            let chars = s.chars().count() as u64;
            if let Some(max) = rule.max_bytes
                && bytes > max
            {
                return Err(misfit(format!("allows at most {max} bytes")));
            }
            if let Some(min) = rule.min_bytes
                && bytes < min
            {
                return Err(misfit(format!("needs at least {min} bytes")));
            }
            if let Some(max) = rule.max_graphemes
                && chars > max
            {
                return Err(misfit(format!("allows at most {max} characters")));
            }
            if let Some(min) = rule.min_graphemes
                && chars < min
            {
                return Err(misfit(format!("needs at least {min} characters")));
            }
            Ok(())
        }
        Ty::Bytes { .. } => match v.get("$bytes") {
            Some(Value::String(_)) => Ok(()),
            _ => Err(misfit("expects bytes ({\"$bytes\": ...})")),
        },
        Ty::CidLink => match v.get("$link") {
            Some(Value::String(_)) => Ok(()),
            _ => Err(misfit("expects a cid-link ({\"$link\": ...})")),
        },
        Ty::Blob | Ty::Unknown => {
            if v.is_object() {
                Ok(())
            } else {
                Err(misfit("expects an object"))
            }
        }
        Ty::Array(array) => {
            let Some(items) = v.as_array() else {
                return Err(misfit("expects an array"));
            };
            let len = items.len() as u64;
            if let Some(max) = array.max
                && len > max
            {
                return Err(misfit(format!("allows at most {max} elements")));
            }
            if let Some(min) = array.min
                && len < min
            {
                return Err(misfit(format!("needs at least {min} elements")));
            }
            for (i, item) in items.iter().enumerate() {
                fits(&array.items, item, docs, depth + 1).map_err(|m| nested(&format!("[{i}]"), m))?;
            }
            Ok(())
        }
        Ty::Object(obj) => {
            let Some(fields) = v.as_object() else {
                return Err(misfit("expects an object"));
            };
            if let Some(missing) = obj.required.iter().find(|name| !fields.contains_key(*name)) {
                return Err(misfit(format!("requires the field `{missing}`")));
            }
            for (name, value) in fields {
                let Some(ty) = obj.props.get(name) else {
                    continue;
                };
                if value.is_null() && obj.nullable.contains(name) {
                    continue;
                }
                fits(ty, value, docs, depth + 1).map_err(|m| nested(name, m))?;
            }
            Ok(())
        }
        Ty::Union { side, refs, closed } => {
            let Some(kind) = v.get("$type").and_then(Value::as_str) else {
                return Err(misfit("expects an object with `$type`"));
            };
            let full = full_ref(kind, docs.doc(*side).id);
            if refs.contains(&full) {
                fits(&Ty::Ref { side: *side, full }, v, docs, depth + 1)
            } else if *closed {
                Err(misfit(format!("allows only the types {}", show(&Value::from(refs.clone())))))
            } else {
                Ok(())
            }
        }
        Ty::Fixed { values, .. } => {
            if values.contains(v) {
                Ok(())
            } else {
                Err(misfit(format!("allows only {}", show(&Value::Array(values.clone())))))
            }
        }
        Ty::Ref { .. } | Ty::External(_) | Ty::Other(_) => Ok(()),
    }
}

fn compare_objects(lensed: &Obj, target: &Obj, path: &str, docs: &Docs, depth: usize) -> Result<(), LensError> {
    let names: BTreeSet<&String> = lensed.props.keys().chain(target.props.keys()).collect();
    for name in names {
        let at = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
        match (lensed.props.get(name), target.props.get(name)) {
            (Some(_), None) => return Err(mismatch(at, "the lens gives this field but the target has no such field")),
            (None, Some(_)) => {
                return Err(mismatch(at, "the target has this field but nothing in the lens provides it"));
            }
            (Some(from), Some(to)) => {
                if target.required.contains(name) && !lensed.required.contains(name) {
                    return Err(mismatch(at, "the target requires this field but the lens does not always provide it"));
                }
                if lensed.nullable.contains(name) && !target.nullable.contains(name) {
                    return Err(mismatch(at, "the lens may give null here but the target does not allow null"));
                }
                compare(from, to, &at, docs, depth + 1)?;
            }
            (None, None) => {}
        }
    }
    Ok(())
}

fn compare(lensed: &Ty, target: &Ty, path: &str, docs: &Docs, depth: usize) -> Result<(), LensError> {
    if depth > MAX_SCHEMA_DEPTH {
        // Only recursive schemas get this deep; what is left repeats what was already compared.
        return Ok(());
    }
    let from = resolve(lensed, docs)?;
    let to = resolve(target, docs)?;
    let differ = |reason: String| Err(mismatch(path, reason));
    match (from.as_ref(), to.as_ref()) {
        (Ty::Fixed { values, back }, to_ty) => {
            for v in values {
                if let Err(m) = fits(to_ty, v, docs, 0) {
                    return differ(format!("the target {m} but the lens gives {}", show(v)));
                }
            }
            if let Some(back) = back
                && let Some(wanted) = finite_values(to_ty, false, docs)?
                && let Some(gap) = wanted.iter().find(|y| !back.contains(y))
            {
                return differ(format!("the target allows {} but the lens has no mapping to write it back", show(gap)));
            }
            Ok(())
        }
        (Ty::Object(_) | Ty::Unknown | Ty::Union { .. } | Ty::External(_), Ty::Unknown) => Ok(()),
        (Ty::External(a), Ty::External(b)) if a == b => Ok(()),
        (Ty::Null, Ty::Null)
        | (Ty::CidLink, Ty::CidLink)
        | (Ty::Blob, Ty::Blob)
        | (Ty::Union { .. }, Ty::Union { .. }) => Ok(()),
        (Ty::Other(a), Ty::Other(b)) if a == b => Ok(()),
        (Ty::Boolean(a), Ty::Boolean(b)) => match b {
            Some(k) if *a != Some(*k) => differ(format!("the target allows only {k} but the lens gives any boolean")),
            _ => Ok(()),
        },
        (Ty::Integer(a), Ty::Integer(b)) => {
            if let Some(choices) = int_choices(a) {
                for n in choices {
                    if let Err(m) = fits(to.as_ref(), &Value::from(n), docs, 0) {
                        return differ(format!("the target {m} but the lens gives {n}"));
                    }
                }
                return Ok(());
            }
            if let Some(choices) = int_choices(b) {
                return differ(format!(
                    "the target allows only {} but the lens gives any integer",
                    show(&Value::from(choices))
                ));
            }
            if let Some(min) = b.min
                && a.min.is_none_or(|m| m < min)
            {
                return differ(format!("the target allows integers from {min} but the lens may give smaller ones"));
            }
            if let Some(max) = b.max
                && a.max.is_none_or(|m| m > max)
            {
                return differ(format!("the target allows integers up to {max} but the lens may give larger ones"));
            }
            Ok(())
        }
        (Ty::Str(a), Ty::Str(b)) => {
            if let Some(choices) = str_choices(a) {
                for s in choices {
                    let v = Value::String(s);
                    if let Err(m) = fits(to.as_ref(), &v, docs, 0) {
                        return differ(format!("the target {m} but the lens gives {}", show(&v)));
                    }
                }
                return Ok(());
            }
            if let Some(choices) = str_choices(b) {
                return differ(format!(
                    "the target allows only {} but the lens gives any string",
                    show(&Value::from(choices))
                ));
            }
            if let Some(max) = b.max_bytes
                && a.max_bytes.is_none_or(|m| m > max)
            {
                return differ(format!("the target allows at most {max} bytes but the lens may give longer strings"));
            }
            if let Some(min) = b.min_bytes
                && a.min_bytes.is_none_or(|m| m < min)
            {
                return differ(format!("the target needs at least {min} bytes but the lens may give shorter strings"));
            }
            if let Some(max) = b.max_graphemes
                && a.max_graphemes.or(a.max_bytes).is_none_or(|m| m > max)
            {
                return differ(format!(
                    "the target allows at most {max} characters but the lens may give longer strings"
                ));
            }
            if let Some(min) = b.min_graphemes
                && a.min_graphemes.is_none_or(|m| m < min)
            {
                return differ(format!(
                    "the target needs at least {min} characters but the lens may give shorter strings"
                ));
            }
            if let Some(format) = &b.format
                && a.format.as_ref() != Some(format)
            {
                let given = a.format.as_ref().map_or("strings of any format".to_string(), |f| format!("`{f}` strings"));
                return differ(format!("the target requires `{format}` strings but the lens gives {given}"));
            }
            Ok(())
        }
        (Ty::Bytes { min: a_min, max: a_max }, Ty::Bytes { min: b_min, max: b_max }) => {
            if let Some(max) = b_max
                && a_max.is_none_or(|m| m > *max)
            {
                return differ(format!("the target allows at most {max} bytes but the lens may give more"));
            }
            if let Some(min) = b_min
                && a_min.is_none_or(|m| m < *min)
            {
                return differ(format!("the target needs at least {min} bytes but the lens may give fewer"));
            }
            Ok(())
        }
        (Ty::Array(a), Ty::Array(b)) => {
            compare(&a.items, &b.items, &format!("{path}[]"), docs, depth + 1)?;
            if let Some(max) = b.max
                && a.max.is_none_or(|m| m > max)
            {
                return differ(format!("the target allows at most {max} elements but the lens may give more"));
            }
            if let Some(min) = b.min
                && a.min.is_none_or(|m| m < min)
            {
                return differ(format!("the target needs at least {min} elements but the lens may give fewer"));
            }
            if a.single && !(b.max.is_some_and(|m| m <= 1) && b.min.is_some_and(|m| m >= 1)) {
                return differ(
                    "the lens wraps a single value here, so the target must set minLength 1 and maxLength 1 for \
                     every written array to fit back"
                        .to_string(),
                );
            }
            Ok(())
        }
        (Ty::Object(a), Ty::Object(b)) => compare_objects(a, b, path, docs, depth),
        (from_ty, to_ty) => {
            differ(format!("the target expects {} but the lens gives {}", describe(to_ty), describe(from_ty)))
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Random valid records, for property tests
// ---------------------------------------------------------------------------------------------------------------

/// Random records valid under the `main` record schema of a Lexicon document.
///
/// Respects `required`, `nullable`, `enum`, `const`, `knownValues`, string `maxLength`/`minLength` (in UTF-8
/// bytes) and `maxGraphemes`, integer bounds, array lengths and local references. Bytes, cid-links, blobs,
/// unions and unknown objects get simple valid stand-ins; common string formats get plausible values.
#[cfg(test)]
pub fn arb_record(doc: &Value) -> proptest::strategy::BoxedStrategy<Value> {
    use proptest::prelude::*;
    let generator = RecordGen {
        id: doc.get("id").and_then(Value::as_str).unwrap_or_default().to_string(),
        defs: doc.get("defs").and_then(Value::as_object).cloned().unwrap_or_default(),
    };
    match generator.defs.get("main") {
        Some(main) => generator.node(main, 0),
        None => Just(Value::Object(Map::new())).boxed(),
    }
}

#[cfg(test)]
const STAND_IN_CID: &str = "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm";

#[cfg(test)]
type FieldStrategy = proptest::strategy::BoxedStrategy<Option<(String, Value)>>;

#[cfg(test)]
struct RecordGen {
    id: String,
    defs: Record,
}

#[cfg(test)]
impl RecordGen {
    fn node(&self, schema: &Value, depth: usize) -> proptest::strategy::BoxedStrategy<Value> {
        use proptest::prelude::*;
        match schema.get("type").and_then(Value::as_str).unwrap_or_default() {
            "null" => Just(Value::Null).boxed(),
            "boolean" => match schema.get("const").and_then(Value::as_bool) {
                Some(b) => Just(Value::Bool(b)).boxed(),
                None => any::<bool>().prop_map(Value::Bool).boxed(),
            },
            "integer" => Self::integer(schema),
            "string" => Self::string(schema),
            "bytes" => Just(serde_json::json!({"$bytes": "aGVsbG8gd29ybGQ"})).boxed(),
            "cid-link" => Just(serde_json::json!({"$link": STAND_IN_CID})).boxed(),
            "blob" => Just(serde_json::json!({
                "$type": "blob", "ref": {"$link": STAND_IN_CID}, "mimeType": "image/png", "size": 1234
            }))
            .boxed(),
            "array" => {
                let items = self.node(&schema["items"], depth + 1);
                let min = schema.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize;
                let max = schema.get("maxLength").and_then(Value::as_u64).map_or(min + 3, |m| m as usize);
                let max = if depth > 6 { min } else { max.clamp(min, min + 4) };
                proptest::collection::vec(items, min..=max).prop_map(Value::Array).boxed()
            }
            "object" => self.object(schema, depth),
            "record" => self.node(&schema["record"], depth),
            "ref" => match schema.get("ref").and_then(Value::as_str).and_then(|r| self.local(r)) {
                Some(def) if depth < 12 => self.node(&def, depth + 1),
                _ => Just(Value::Object(Map::new())).boxed(),
            },
            "union" => {
                let refs = strings(schema.get("refs")).unwrap_or_default();
                let choices: Vec<proptest::strategy::BoxedStrategy<Value>> = refs
                    .iter()
                    .filter_map(|r| {
                        let full = full_ref(r, &self.id);
                        let def = self.local(r)?;
                        Some(
                            self.node(&def, depth + 1)
                                .prop_map(move |mut v| {
                                    if let Value::Object(o) = &mut v {
                                        o.insert("$type".into(), Value::String(full.clone()));
                                    }
                                    v
                                })
                                .boxed(),
                        )
                    })
                    .collect();
                if choices.is_empty() || depth > 10 {
                    let kind = refs.first().map_or("com.example.unknown#main".to_string(), |r| full_ref(r, &self.id));
                    Just(serde_json::json!({ "$type": kind })).boxed()
                } else {
                    proptest::strategy::Union::new(choices).boxed()
                }
            }
            _ => Just(serde_json::json!({"$type": "com.example.unknown", "note": "stand-in"})).boxed(),
        }
    }

    fn local(&self, r: &str) -> Option<Value> {
        let full = full_ref(r, &self.id);
        let (nsid, def) = full.split_once('#')?;
        if nsid == self.id { self.defs.get(def).cloned() } else { None }
    }

    fn object(&self, schema: &Value, depth: usize) -> proptest::strategy::BoxedStrategy<Value> {
        use proptest::prelude::*;
        let required = strings(schema.get("required")).unwrap_or_default();
        let nullable = strings(schema.get("nullable")).unwrap_or_default();
        let props = schema.get("properties").and_then(Value::as_object).cloned().unwrap_or_default();
        let fields: Vec<FieldStrategy> = props
            .iter()
            .map(|(name, sub)| {
                let mut value = self.node(sub, depth + 1);
                if nullable.contains(name) {
                    value = prop_oneof![3 => value, 1 => Just(Value::Null)].boxed();
                }
                let key = name.clone();
                if required.contains(name) {
                    value.prop_map(move |v| Some((key.clone(), v))).boxed()
                } else if depth > 6 {
                    Just(None).boxed()
                } else {
                    proptest::option::of(value).prop_map(move |v| v.map(|v| (key.clone(), v))).boxed()
                }
            })
            .collect();
        fields.prop_map(|fields| Value::Object(fields.into_iter().flatten().collect())).boxed()
    }

    fn integer(schema: &Value) -> proptest::strategy::BoxedStrategy<Value> {
        use proptest::prelude::*;
        if let Some(k) = schema.get("const").and_then(Value::as_i64) {
            return Just(Value::from(k)).boxed();
        }
        if let Some(choices) = schema.get("enum").and_then(Value::as_array).filter(|a| !a.is_empty()) {
            return proptest::sample::select(choices.clone()).boxed();
        }
        let min = schema.get("minimum").and_then(Value::as_i64);
        let max = schema.get("maximum").and_then(Value::as_i64);
        let lo = min.unwrap_or_else(|| max.map_or(-1000, |m| m.saturating_sub(1000)));
        let hi = max.unwrap_or_else(|| lo.saturating_add(2000));
        if hi < lo { Just(Value::from(lo)).boxed() } else { (lo..=hi).prop_map(Value::from).boxed() }
    }

    fn string(schema: &Value) -> proptest::strategy::BoxedStrategy<Value> {
        use proptest::prelude::*;
        if let Some(k) = schema.get("const").and_then(Value::as_str) {
            return Just(Value::from(k)).boxed();
        }
        if let Some(choices) = strings(schema.get("enum")).filter(|c| !c.is_empty()) {
            return proptest::sample::select(choices).prop_map(Value::from).boxed();
        }
        let lower: Vec<char> = "abcdefghijklmnopqrstuvwxyz".chars().collect();
        let word = move |n: std::ops::RangeInclusive<usize>| {
            proptest::collection::vec(proptest::sample::select(lower.clone()), n).prop_map(String::from_iter)
        };
        let formatted = match schema.get("format").and_then(Value::as_str) {
            Some("did") => Some(word(24..=24).prop_map(|s| format!("did:plc:{s}")).boxed()),
            Some("handle") => Some(word(1..=12).prop_map(|s| format!("{s}.example.com")).boxed()),
            Some("uri") => Some(word(0..=8).prop_map(|s| format!("https://example.com/{s}")).boxed()),
            Some("at-uri") => {
                Some(word(13..=13).prop_map(|s| format!("at://did:plc:abc/com.example.post/{s}")).boxed())
            }
            Some("language") => {
                Some(proptest::sample::select(vec!["en", "fr", "pt-BR", "ja"]).prop_map(String::from).boxed())
            }
            Some("datetime") => Some(
                (2000u32..2030, 1u32..=12, 1u32..=28, 0u32..24, 0u32..60, 0u32..60)
                    .prop_map(|(y, mo, d, h, mi, s)| format!("{y}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.000Z"))
                    .boxed(),
            ),
            Some("nsid") => Some(word(1..=8).prop_map(|s| format!("com.example.{s}")).boxed()),
            Some("cid") => Some(Just(STAND_IN_CID.to_string()).boxed()),
            _ => None,
        };
        let max_bytes = schema.get("maxLength").and_then(Value::as_u64).map(|m| m as usize);
        let min_bytes = schema.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize;
        let max_chars = schema.get("maxGraphemes").and_then(Value::as_u64).map(|m| m as usize);
        let min_chars = schema.get("minGraphemes").and_then(Value::as_u64).unwrap_or(0) as usize;
        let pool: Vec<char> = vec!['a', 'b', 'k', 'z', 'Q', '0', '7', ' ', '-', 'é', 'ü', 'ß', '中', '文', '🙂', '🦋'];
        let plain = proptest::collection::vec(proptest::sample::select(pool), 0..=24)
            .prop_map(move |chars| {
                let mut s: String = chars.into_iter().take(max_chars.unwrap_or(usize::MAX)).collect();
                while max_bytes.is_some_and(|m| s.len() > m) {
                    s.pop();
                }
                while s.len() < min_bytes || s.chars().count() < min_chars {
                    s.push('a');
                }
                s
            })
            .boxed();
        let base = formatted.unwrap_or(plain);
        match strings(schema.get("knownValues")).filter(|k| !k.is_empty()) {
            Some(known) => prop_oneof![proptest::sample::select(known), base].prop_map(Value::from).boxed(),
            None => base.prop_map(Value::from).boxed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    // -----------------------------------------------------------------------------------------------------------
    // Helpers
    // -----------------------------------------------------------------------------------------------------------

    fn lens(v: Value) -> SchemaLens {
        parse(&v).unwrap()
    }

    fn refused(v: Value) -> String {
        match parse(&v) {
            Err(LensError::Invalid(reason)) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn apply_path(result: Result<Value, LensError>) -> String {
        match result {
            Err(LensError::Apply { path, .. }) => path,
            other => panic!("expected an apply error, got {other:?}"),
        }
    }

    fn mismatch_of(result: Result<(), LensError>) -> (String, String) {
        match result {
            Err(LensError::Mismatch { path, reason }) => (path, reason),
            other => panic!("expected a mismatch, got {other:?}"),
        }
    }

    /// Validates a record against the `main` record schema of a Lexicon document, strictly: unknown fields are
    /// refused. Covers the same subset as `arb_record`.
    fn valid(doc: &Value, v: &Value) -> Result<(), String> {
        let main = &doc["defs"]["main"];
        let schema = if main["type"] == "record" { &main["record"] } else { main };
        validate(doc, schema, v, "$", 0)
    }

    fn local_def<'a>(doc: &'a Value, r: &str) -> Option<&'a Value> {
        let id = doc["id"].as_str()?;
        let full = full_ref(r, id);
        let (nsid, def) = full.split_once('#')?;
        if nsid == id { doc["defs"].get(def) } else { None }
    }

    fn validate(doc: &Value, schema: &Value, v: &Value, at: &str, depth: usize) -> Result<(), String> {
        if depth > 64 {
            return Err(format!("{at}: too deep"));
        }
        let fail = |why: String| Err(format!("{at}: {why}"));
        match schema["type"].as_str() {
            Some("null") => {
                if v.is_null() {
                    Ok(())
                } else {
                    fail("expected null".into())
                }
            }
            Some("boolean") => match v.as_bool() {
                None => fail("expected a boolean".into()),
                Some(b) if schema.get("const").is_some_and(|k| *k != json!(b)) => fail("not the const".into()),
                Some(_) => Ok(()),
            },
            Some("integer") => {
                let Some(n) = v.as_i64() else { return fail(format!("expected an integer, got {v}")) };
                if schema.get("const").is_some_and(|k| *k != json!(n)) {
                    return fail("not the const".into());
                }
                if let Some(e) = schema["enum"].as_array()
                    && !e.contains(v)
                {
                    return fail(format!("{v} not in enum"));
                }
                if schema["minimum"].as_i64().is_some_and(|m| n < m)
                    || schema["maximum"].as_i64().is_some_and(|m| n > m)
                {
                    return fail(format!("{n} out of range"));
                }
                Ok(())
            }
            Some("string") => {
                let Some(s) = v.as_str() else { return fail(format!("expected a string, got {v}")) };
                if schema.get("const").is_some_and(|k| k != v) {
                    return fail(format!("{v} is not the const"));
                }
                if let Some(e) = schema["enum"].as_array()
                    && !e.contains(v)
                {
                    return fail(format!("{v} not in enum"));
                }
                let (bytes, chars) = (s.len() as u64, s.chars().count() as u64);
                if schema["maxLength"].as_u64().is_some_and(|m| bytes > m)
                    || schema["minLength"].as_u64().is_some_and(|m| bytes < m)
                {
                    return fail(format!("{v} has {bytes} bytes"));
                }
                if schema["maxGraphemes"].as_u64().is_some_and(|m| chars > m)
                    || schema["minGraphemes"].as_u64().is_some_and(|m| chars < m)
                {
                    return fail(format!("{v} has {chars} characters"));
                }
                if schema["format"] == "did" && !s.starts_with("did:") {
                    return fail(format!("{v} is not a did"));
                }
                Ok(())
            }
            Some("bytes") => {
                if v["$bytes"].is_string() {
                    Ok(())
                } else {
                    fail("expected bytes".into())
                }
            }
            Some("cid-link") => {
                if v["$link"].is_string() {
                    Ok(())
                } else {
                    fail("expected a cid-link".into())
                }
            }
            Some("blob") => {
                if v["$type"] == "blob" {
                    Ok(())
                } else {
                    fail("expected a blob".into())
                }
            }
            Some("unknown") => {
                if v.is_object() {
                    Ok(())
                } else {
                    fail("expected an object".into())
                }
            }
            Some("array") => {
                let Some(items) = v.as_array() else { return fail(format!("expected an array, got {v}")) };
                let len = items.len() as u64;
                if schema["maxLength"].as_u64().is_some_and(|m| len > m)
                    || schema["minLength"].as_u64().is_some_and(|m| len < m)
                {
                    return fail(format!("array of {len} elements"));
                }
                for (i, item) in items.iter().enumerate() {
                    validate(doc, &schema["items"], item, &format!("{at}[{i}]"), depth + 1)?;
                }
                Ok(())
            }
            Some("object") => {
                let Some(fields) = v.as_object() else { return fail(format!("expected an object, got {v}")) };
                let props = schema["properties"].as_object().cloned().unwrap_or_default();
                for name in schema["required"].as_array().into_iter().flatten() {
                    if !fields.contains_key(name.as_str().unwrap_or_default()) {
                        return fail(format!("missing required {name}"));
                    }
                }
                for (name, value) in fields {
                    if name == "$type" {
                        continue;
                    }
                    let Some(sub) = props.get(name) else { return fail(format!("unexpected field {name}")) };
                    let nullable = schema["nullable"].as_array().is_some_and(|n| n.contains(&json!(name)));
                    if value.is_null() && nullable {
                        continue;
                    }
                    validate(doc, sub, value, &format!("{at}.{name}"), depth + 1)?;
                }
                Ok(())
            }
            Some("ref") => match local_def(doc, schema["ref"].as_str().unwrap_or_default()) {
                Some(def) => validate(doc, def, v, at, depth + 1),
                None => Ok(()),
            },
            Some("union") => {
                let Some(kind) = v["$type"].as_str() else { return fail("union member without $type".into()) };
                let id = doc["id"].as_str().unwrap_or_default();
                let refs: Vec<String> = schema["refs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(|r| full_ref(r, id))
                    .collect();
                if !refs.contains(&full_ref(kind, id)) {
                    return fail(format!("{kind} is not one of the union's refs"));
                }
                match local_def(doc, kind) {
                    Some(def) => validate(doc, def, v, at, depth + 1),
                    None => Ok(()),
                }
            }
            Some("record") => validate(doc, &schema["record"], v, at, depth + 1),
            other => fail(format!("unsupported type {other:?}")),
        }
    }

    // -----------------------------------------------------------------------------------------------------------
    // Realistic lens pairs
    // -----------------------------------------------------------------------------------------------------------

    struct Pair {
        source: Value,
        target: Value,
        lens: SchemaLens,
    }

    fn post_v1() -> Value {
        json!({
            "lexicon": 1,
            "id": "com.example.post",
            "defs": {"main": {"type": "record", "key": "tid", "record": {
                "type": "object",
                "required": ["text", "status", "authorDid", "createdAt"],
                "properties": {
                    "text": {"type": "string", "maxLength": 300},
                    "tags": {"type": "array", "items": {"type": "string", "maxLength": 64}, "maxLength": 8},
                    "status": {"type": "string", "enum": ["draft", "published"]},
                    "authorName": {"type": "string", "maxLength": 64},
                    "authorDid": {"type": "string", "format": "did"},
                    "legacyScore": {"type": "integer", "minimum": 0, "maximum": 100},
                    "createdAt": {"type": "string", "format": "datetime"}
                }
            }}}
        })
    }

    fn post_v2() -> Value {
        json!({
            "lexicon": 1,
            "id": "com.example.post",
            "defs": {
                "main": {"type": "record", "key": "tid", "record": {
                    "type": "object",
                    "required": ["body", "state", "author", "lang", "createdAt"],
                    "properties": {
                        "body": {"type": "string", "maxLength": 300},
                        "tag": {"type": "string", "maxLength": 64},
                        "state": {"type": "string", "enum": ["unpublished", "live"]},
                        "author": {"type": "ref", "ref": "#author"},
                        "lang": {"type": "string", "const": "en"},
                        "createdAt": {"type": "string", "format": "datetime"}
                    }
                }},
                "author": {"type": "object", "required": ["did"], "properties": {
                    "name": {"type": "string", "maxLength": 64},
                    "did": {"type": "string", "format": "did"}
                }}
            }
        })
    }

    fn post_lens() -> Value {
        json!({"ops": [
            {"op": "rename", "from": "text", "to": "body"},
            {"op": "head", "name": "tags"},
            {"op": "rename", "from": "tags", "to": "tag"},
            {"op": "convert", "name": "status", "mapping": [
                {"draft": "unpublished", "published": "live"},
                {"unpublished": "draft", "live": "published"}
            ]},
            {"op": "rename", "from": "status", "to": "state"},
            {"op": "rename", "from": "authorName", "to": "name"},
            {"op": "plunge", "host": "author", "name": "name"},
            {"op": "rename", "from": "authorDid", "to": "did"},
            {"op": "plunge", "host": "author", "name": "did"},
            {"op": "add", "name": "lang", "default": "en"},
            {"op": "remove", "name": "legacyScore", "default": 0}
        ]})
    }

    fn post_pair() -> Pair {
        Pair { source: post_v1(), target: post_v2(), lens: lens(post_lens()) }
    }

    fn playlist_pair() -> Pair {
        let source = json!({
            "lexicon": 1,
            "id": "com.example.music.playlist",
            "defs": {
                "main": {"type": "record", "key": "tid", "record": {
                    "type": "object",
                    "required": ["name", "tracks", "createdAt"],
                    "properties": {
                        "name": {"type": "string", "maxLength": 100},
                        "description": {"type": "string", "maxLength": 1000, "maxGraphemes": 300},
                        "tracks": {"type": "array", "items": {"type": "ref", "ref": "#track"}, "maxLength": 10},
                        "createdAt": {"type": "string", "format": "datetime"}
                    }
                }},
                "track": {"type": "object", "required": ["title"], "properties": {
                    "title": {"type": "string", "maxLength": 100},
                    "artistName": {"type": "string", "maxLength": 100},
                    "durationMs": {"type": "integer", "minimum": 0, "maximum": 3_600_000},
                    "rating": {"type": "integer", "enum": [1, 2, 3]},
                    "explicit": {"type": "boolean"}
                }}
            }
        });
        let target = json!({
            "lexicon": 1,
            "id": "com.example.music.playlistV2",
            "defs": {
                "main": {"type": "record", "key": "tid", "record": {
                    "type": "object",
                    "required": ["name", "items", "createdAt"],
                    "properties": {
                        "name": {"type": "string", "maxLength": 100},
                        "summary": {"type": "string", "maxLength": 1000, "maxGraphemes": 300},
                        "items": {
                            "type": "array",
                            "items": {"type": "ref", "ref": "com.example.music.playlistV2#item"},
                            "maxLength": 10
                        },
                        "createdAt": {"type": "string", "format": "datetime"}
                    }
                }},
                "item": {"type": "object", "required": ["name"], "properties": {
                    "name": {"type": "string", "maxLength": 100},
                    "artist": {"type": "string", "maxLength": 100},
                    "lengthMs": {"type": "integer", "minimum": 0, "maximum": 3_600_000},
                    "rating": {"type": "string", "enum": ["low", "mid", "high"]}
                }}
            }
        });
        let ops = json!({"ops": [
            {"op": "rename", "from": "tracks", "to": "items"},
            {"op": "map", "name": "items", "ops": [
                {"op": "rename", "from": "title", "to": "name"},
                {"op": "rename", "from": "artistName", "to": "artist"},
                {"op": "rename", "from": "durationMs", "to": "lengthMs"},
                {"op": "convert", "name": "rating", "mapping": [
                    [[1, "low"], [2, "mid"], [3, "high"]],
                    [["low", 1], ["mid", 2], ["high", 3]]
                ]},
                {"op": "remove", "name": "explicit", "default": false}
            ]},
            {"op": "rename", "from": "description", "to": "summary"}
        ]});
        Pair { source, target, lens: lens(ops) }
    }

    fn profile_pair() -> Pair {
        let source = json!({
            "lexicon": 1,
            "id": "com.example.profile",
            "defs": {
                "main": {"type": "record", "key": "literal:self", "record": {
                    "type": "object",
                    "required": ["displayName", "settings"],
                    "properties": {
                        "displayName": {"type": "string", "maxLength": 64},
                        "pronoun": {"type": "string", "maxLength": 20},
                        "website": {"type": "string", "format": "uri"},
                        "settings": {"type": "ref", "ref": "#settings"}
                    }
                }},
                "settings": {"type": "object", "required": ["theme"], "properties": {
                    "theme": {"type": "string", "enum": ["light", "dark"]},
                    "lang": {"type": "string", "format": "language"},
                    "notify": {"type": "boolean"}
                }}
            }
        });
        let target = json!({
            "lexicon": 1,
            "id": "com.example.profile",
            "defs": {
                "main": {"type": "record", "key": "literal:self", "record": {
                    "type": "object",
                    "required": ["displayName", "settings"],
                    "properties": {
                        "displayName": {"type": "string", "maxLength": 64},
                        "pronouns": {
                            "type": "array", "items": {"type": "string", "maxLength": 20}, "minLength": 1, "maxLength": 1
                        },
                        "websites": {
                            "type": "array", "items": {"type": "string", "format": "uri"}, "minLength": 1, "maxLength": 1
                        },
                        "lang": {"type": "string", "format": "language"},
                        "settings": {"type": "object", "required": ["theme"], "properties": {
                            "theme": {"type": "string", "enum": ["day", "night"]},
                            "notifications": {"type": "boolean"}
                        }}
                    }
                }}
            }
        });
        let ops = json!([
            {"op": "wrap", "name": "pronoun"},
            {"op": "rename", "from": "pronoun", "to": "pronouns"},
            {"op": "wrap", "name": "website"},
            {"op": "rename", "from": "website", "to": "websites"},
            {"op": "hoist", "host": "settings", "name": "lang"},
            {"op": "in", "name": "settings", "ops": [
                {"op": "rename", "from": "notify", "to": "notifications"},
                {"op": "convert", "name": "theme", "mapping": [
                    {"light": "day", "dark": "night"},
                    {"day": "light", "night": "dark"}
                ]}
            ]}
        ]);
        Pair { source, target, lens: lens(ops) }
    }

    /// Flattening an optional nested object: its fields move up and the emptied object is dropped.
    fn note_pair() -> Pair {
        let source = json!({
            "lexicon": 1,
            "id": "com.example.note",
            "defs": {"main": {"type": "record", "key": "tid", "record": {
                "type": "object",
                "required": ["title"],
                "nullable": ["color"],
                "properties": {
                    "title": {"type": "string", "maxLength": 50},
                    "color": {"type": "string", "knownValues": ["red", "blue"], "maxLength": 10},
                    "meta": {"type": "object", "properties": {
                        "lang": {"type": "string", "format": "language"},
                        "pinned": {"type": "boolean"}
                    }}
                }
            }}}
        });
        let target = json!({
            "lexicon": 1,
            "id": "com.example.note",
            "defs": {"main": {"type": "record", "key": "tid", "record": {
                "type": "object",
                "required": ["title"],
                "nullable": ["color"],
                "properties": {
                    "title": {"type": "string", "maxLength": 50},
                    "color": {"type": "string", "maxLength": 10},
                    "lang": {"type": "string", "format": "language"},
                    "pinned": {"type": "boolean"}
                }
            }}}
        });
        let ops = json!({"ops": [
            {"op": "hoist", "host": "meta", "name": "lang"},
            {"op": "hoist", "host": "meta", "name": "pinned"},
            {"op": "remove", "name": "meta", "default": {}}
        ]});
        Pair { source, target, lens: lens(ops) }
    }

    fn pairs() -> Vec<(&'static str, Pair)> {
        vec![("post", post_pair()), ("playlist", playlist_pair()), ("profile", profile_pair()), ("note", note_pair())]
    }

    /// The source (even `i`) or target (odd `i`) document of one of the realistic pairs.
    fn doc_of(i: usize) -> Value {
        let all = pairs();
        let (_, pair) = &all[(i / 2) % all.len()];
        if i.is_multiple_of(2) { pair.source.clone() } else { pair.target.clone() }
    }

    #[test]
    fn the_test_validator_refuses_invalid_records() {
        let ok =
            json!({"text": "hi", "status": "draft", "authorDid": "did:plc:x", "createdAt": "2024-01-01T00:00:00Z"});
        assert_eq!(valid(&post_v1(), &ok), Ok(()));
        let mut bad = vec![];
        for (key, value) in [
            ("text", json!(5)),
            ("text", json!("é".repeat(151))),
            ("status", json!("archived")),
            ("tags", Value::from(vec!["a"; 9])),
            ("legacyScore", json!(101)),
            ("authorDid", json!("bob")),
            ("extra", json!(1)),
        ] {
            let mut v = ok.clone();
            v[key] = value;
            bad.push(v);
        }
        let mut missing = ok.clone();
        missing.as_object_mut().unwrap().remove("text");
        bad.push(missing);
        for v in bad {
            assert!(valid(&post_v1(), &v).is_err(), "{v}");
        }
    }

    /// GetPut, PutGet (with and without an original), validity of what `get` gives, and validity of what `put`
    /// gives for these pairs.
    fn assert_laws(pair: &Pair, s: &Value, t: &Value) -> Result<(), TestCaseError> {
        prop_assert_eq!(valid(&pair.source, s), Ok(()));
        prop_assert_eq!(valid(&pair.target, t), Ok(()));
        let lens = &pair.lens;
        let got = lens.get(s).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(valid(&pair.target, &got), Ok(()), "get gave {}", got);
        let back = lens.put(&got, Some(s)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&back, s, "GetPut");
        for original in [Some(s), None] {
            let written = lens.put(t, original).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(valid(&pair.source, &written), Ok(()), "put gave {}", written);
            let again = lens.get(&written).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&again, t, "PutGet with original {:?}", original);
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------------------------
    // Operations, both ways
    // -----------------------------------------------------------------------------------------------------------

    #[test]
    fn rename_moves_a_field_and_back() {
        let l = lens(json!([{"op": "rename", "from": "text", "to": "body"}]));
        let s = json!({"text": "hi", "other": 1});
        let t = l.get(&s).unwrap();
        assert_eq!(t, json!({"body": "hi", "other": 1}));
        assert_eq!(l.put(&t, Some(&s)).unwrap(), s);
        assert_eq!(l.put(&json!({"other": 2}), None).unwrap(), json!({"other": 2}));
        assert_eq!(l.get(&json!({})).unwrap(), json!({}));
    }

    #[test]
    fn rename_refuses_to_overwrite() {
        let l = lens(json!([{"op": "rename", "from": "text", "to": "body"}]));
        assert_eq!(apply_path(l.get(&json!({"text": "a", "body": "b"}))), "body");
        assert_eq!(apply_path(l.get(&json!({"body": "b"}))), "body");
        assert_eq!(apply_path(l.put(&json!({"body": "a", "text": "b"}), None)), "text");
    }

    #[test]
    fn hoist_moves_up_and_back() {
        let l = lens(json!([{"op": "hoist", "host": "meta", "name": "lang"}]));
        let s = json!({"meta": {"lang": "en", "x": 1}});
        let t = l.get(&s).unwrap();
        assert_eq!(t, json!({"meta": {"x": 1}, "lang": "en"}));
        assert_eq!(l.put(&t, Some(&s)).unwrap(), s);
        // A host left empty is dropped, and writing back creates it again.
        let s = json!({"meta": {"lang": "en"}});
        let t = l.get(&s).unwrap();
        assert_eq!(t, json!({"lang": "en"}));
        assert_eq!(l.put(&t, Some(&s)).unwrap(), s);
        assert_eq!(l.put(&t, None).unwrap(), s);
        // Absent host or absent field: nothing moves.
        for s in [json!({}), json!({"meta": {}}), json!({"meta": null})] {
            assert_eq!(l.get(&s).unwrap(), s);
            assert_eq!(l.put(&s, Some(&s)).unwrap(), s);
        }
    }

    #[test]
    fn hoist_errors() {
        let l = lens(json!([{"op": "hoist", "host": "meta", "name": "lang"}]));
        assert_eq!(apply_path(l.get(&json!({"meta": 3}))), "meta");
        assert_eq!(apply_path(l.get(&json!({"meta": {"lang": "en"}, "lang": "fr"}))), "lang");
        assert_eq!(apply_path(l.put(&json!({"meta": {"lang": "en"}, "lang": "fr"}), None)), "meta.lang");
        assert_eq!(apply_path(l.put(&json!({"meta": [], "lang": "fr"}), None)), "meta");
    }

    #[test]
    fn plunge_creates_the_host_and_put_removes_it() {
        let l = lens(json!([{"op": "plunge", "host": "author", "name": "did"}]));
        let s = json!({"did": "did:plc:x"});
        let t = l.get(&s).unwrap();
        assert_eq!(t, json!({"author": {"did": "did:plc:x"}}));
        assert_eq!(l.put(&t, Some(&s)).unwrap(), s);
        assert_eq!(l.put(&t, None).unwrap(), s);
        assert_eq!(l.get(&json!({})).unwrap(), json!({}));
        // An empty host that was there before stays.
        let s = json!({"did": "did:plc:x", "author": {}});
        let t = l.get(&s).unwrap();
        assert_eq!(t, json!({"author": {"did": "did:plc:x"}}));
        assert_eq!(l.put(&t, Some(&s)).unwrap(), s);
        // A written empty host is kept so that it reads back the same.
        let t = json!({"author": {}});
        assert_eq!(l.get(&l.put(&t, None).unwrap()).unwrap(), t);
    }

    #[test]
    fn plunge_errors() {
        let l = lens(json!([{"op": "plunge", "host": "author", "name": "did"}]));
        assert_eq!(apply_path(l.get(&json!({"did": "x", "author": "bob"}))), "author");
        assert_eq!(apply_path(l.get(&json!({"did": "x", "author": null}))), "author");
        assert_eq!(apply_path(l.get(&json!({"did": "x", "author": {"did": "y"}}))), "author.did");
        assert_eq!(apply_path(l.put(&json!({"did": "x", "author": {"did": "y"}}), None)), "did");
    }

    #[test]
    fn wrap_both_ways() {
        let l = lens(json!([{"op": "wrap", "name": "x"}]));
        let s = json!({"x": "a"});
        let t = l.get(&s).unwrap();
        assert_eq!(t, json!({"x": ["a"]}));
        assert_eq!(l.put(&t, Some(&s)).unwrap(), s);
        assert_eq!(l.get(&json!({"x": null})).unwrap(), json!({"x": [null]}));
        assert_eq!(l.get(&json!({})).unwrap(), json!({}));
        assert_eq!(l.put(&json!({"x": []}), Some(&s)).unwrap(), json!({}));
        assert_eq!(apply_path(l.get(&json!({"x": [1]}))), "x");
        assert_eq!(apply_path(l.put(&json!({"x": [1, 2]}), None)), "x");
        assert_eq!(apply_path(l.put(&json!({"x": 1}), None)), "x");
    }

    #[test]
    fn head_both_ways() {
        let l = lens(json!([{"op": "head", "name": "tags"}]));
        let s = json!({"tags": ["a", "b", "c"]});
        let t = l.get(&s).unwrap();
        assert_eq!(t, json!({"tags": "a"}));
        assert_eq!(l.put(&t, Some(&s)).unwrap(), s);
        assert_eq!(l.put(&json!({"tags": "z"}), Some(&s)).unwrap(), json!({"tags": ["z", "b", "c"]}));
        assert_eq!(l.put(&json!({"tags": "z"}), None).unwrap(), json!({"tags": ["z"]}));
        // Empty arrays read as absent; absent writes back as empty when the original had the array.
        let empty = json!({"tags": []});
        assert_eq!(l.get(&empty).unwrap(), json!({}));
        assert_eq!(l.put(&json!({}), Some(&empty)).unwrap(), empty);
        assert_eq!(l.put(&json!({}), Some(&s)).unwrap(), empty);
        assert_eq!(l.put(&json!({}), Some(&json!({}))).unwrap(), json!({}));
        assert_eq!(l.put(&json!({}), None).unwrap(), json!({}));
        // Null stays null.
        let null = json!({"tags": null});
        assert_eq!(l.get(&null).unwrap(), null);
        assert_eq!(l.put(&null, Some(&null)).unwrap(), null);
        assert_eq!(apply_path(l.get(&json!({"tags": "a"}))), "tags");
    }

    #[test]
    fn in_recurses_and_names_nested_paths() {
        let l = lens(json!([{"op": "in", "name": "meta", "ops": [
            {"op": "rename", "from": "a", "to": "b"},
            {"op": "remove", "name": "gone", "default": 0}
        ]}]));
        let s = json!({"meta": {"a": 1, "gone": 5}, "z": 0});
        let t = l.get(&s).unwrap();
        assert_eq!(t, json!({"meta": {"b": 1}, "z": 0}));
        assert_eq!(l.put(&t, Some(&s)).unwrap(), s);
        assert_eq!(l.put(&t, None).unwrap(), json!({"meta": {"a": 1, "gone": 0}, "z": 0}));
        assert_eq!(l.get(&json!({})).unwrap(), json!({}));
        assert_eq!(apply_path(l.get(&json!({"meta": [1]}))), "meta");
        assert_eq!(apply_path(l.get(&json!({"meta": {"a": 1, "b": 2}}))), "meta.b");
    }

    #[test]
    fn map_pairs_elements_by_position() {
        let l = lens(json!([{"op": "map", "name": "items", "ops": [
            {"op": "rename", "from": "title", "to": "name"},
            {"op": "remove", "name": "secret", "default": "none"}
        ]}]));
        let s = json!({"items": [{"title": "a", "secret": "s1"}, {"title": "b", "secret": "s2"}, 7]});
        let t = l.get(&s).unwrap();
        assert_eq!(t, json!({"items": [{"name": "a"}, {"name": "b"}, 7]}));
        assert_eq!(l.put(&t, Some(&s)).unwrap(), s);
        let longer = json!({"items": [{"name": "x"}, {"name": "y"}, 7, {"name": "z"}]});
        assert_eq!(
            l.put(&longer, Some(&s)).unwrap(),
            json!({"items": [{"title": "x", "secret": "s1"}, {"title": "y", "secret": "s2"}, 7,
                             {"title": "z", "secret": "none"}]})
        );
        assert_eq!(apply_path(l.get(&json!({"items": {"title": "a"}}))), "items");
        assert_eq!(
            apply_path(l.get(&json!({"items": [{"title": "a"}, {"title": "b", "name": "c"}]}))),
            "items[1].name"
        );
    }

    #[test]
    fn convert_both_ways_and_prefers_the_original() {
        let l = lens(json!([{"op": "convert", "name": "status", "mapping": [
            {"draft": "unpublished", "hidden": "unpublished", "published": "live"},
            {"unpublished": "draft", "live": "published"}
        ]}]));
        let hidden = json!({"status": "hidden"});
        let t = l.get(&hidden).unwrap();
        assert_eq!(t, json!({"status": "unpublished"}));
        assert_eq!(l.put(&t, Some(&hidden)).unwrap(), hidden);
        assert_eq!(l.put(&t, None).unwrap(), json!({"status": "draft"}));
        assert_eq!(l.put(&json!({"status": "live"}), Some(&hidden)).unwrap(), json!({"status": "published"}));
        assert_eq!(l.get(&json!({})).unwrap(), json!({}));
    }

    #[test]
    fn convert_errors() {
        let l = lens(json!([{"op": "convert", "name": "status", "mapping": [
            {"draft": "unpublished"}, {"unpublished": "draft", "gone": "archived"}
        ]}]));
        let err = l.get(&json!({"status": "archived"})).unwrap_err();
        assert_eq!(
            err,
            LensError::Apply { path: "status".into(), reason: "the lens has no mapping for \"archived\"".into() }
        );
        assert_eq!(apply_path(l.put(&json!({"status": "live"}), None)), "status");
        // The backward table sends "gone" to a value that does not read back as "gone".
        assert_eq!(apply_path(l.put(&json!({"status": "gone"}), None)), "status");
    }

    #[test]
    fn convert_handles_non_string_values() {
        let l = lens(json!([{"op": "convert", "name": "n", "mapping": [
            [[1, true], [0, false], [null, false]],
            [[true, 1], [false, 0]]
        ]}]));
        assert_eq!(l.get(&json!({"n": 1})).unwrap(), json!({"n": true}));
        assert_eq!(l.get(&json!({"n": null})).unwrap(), json!({"n": false}));
        assert_eq!(l.put(&json!({"n": false}), Some(&json!({"n": null}))).unwrap(), json!({"n": null}));
        assert_eq!(l.put(&json!({"n": false}), None).unwrap(), json!({"n": 0}));
    }

    #[test]
    fn add_and_remove_both_ways() {
        let add = lens(json!([{"op": "add", "name": "lang", "default": "en"}]));
        assert_eq!(add.get(&json!({})).unwrap(), json!({"lang": "en"}));
        assert_eq!(add.put(&json!({"lang": "en"}), Some(&json!({}))).unwrap(), json!({}));
        assert_eq!(add.put(&json!({"lang": "fr"}), None).unwrap(), json!({}));
        // A record that already has the field keeps it both ways.
        let s = json!({"lang": "de"});
        assert_eq!(add.get(&s).unwrap(), s);
        assert_eq!(add.put(&s, Some(&s)).unwrap(), s);

        let remove = lens(json!([{"op": "remove", "name": "score", "default": 0}]));
        let s = json!({"score": 7, "a": 1});
        let t = remove.get(&s).unwrap();
        assert_eq!(t, json!({"a": 1}));
        assert_eq!(remove.put(&t, Some(&s)).unwrap(), s);
        assert_eq!(remove.put(&t, None).unwrap(), json!({"a": 1, "score": 0}));
        assert_eq!(remove.put(&t, Some(&json!({"a": 5}))).unwrap(), json!({"a": 1}));
    }

    #[test]
    fn put_threads_the_original_through_every_step() {
        // The remove needs the original as it looks after the rename.
        let l = lens(json!([
            {"op": "rename", "from": "a", "to": "b"},
            {"op": "in", "name": "b", "ops": [{"op": "remove", "name": "x", "default": 0}]}
        ]));
        let s = json!({"a": {"x": 9, "y": 1}});
        let t = l.get(&s).unwrap();
        assert_eq!(t, json!({"b": {"y": 1}}));
        assert_eq!(l.put(&t, Some(&s)).unwrap(), s);
    }

    #[test]
    fn records_must_be_objects_and_originals_must_read() {
        let l = lens(json!([{"op": "head", "name": "tags"}]));
        assert_eq!(apply_path(l.get(&json!([1]))), "");
        assert_eq!(apply_path(l.put(&json!("x"), None)), "");
        assert_eq!(apply_path(l.put(&json!({}), Some(&json!(3)))), "");
        let err = l.put(&json!({"tags": "a"}), Some(&json!({"tags": 5}))).unwrap_err();
        assert!(err.to_string().contains("the original record cannot be read"), "{err}");
    }

    #[test]
    fn errors_read_well() {
        let e = LensError::Mismatch { path: "status".into(), reason: "it differs".into() };
        assert_eq!(e.to_string(), "schema mismatch at `status`: it differs");
        let e = LensError::Apply { path: String::new(), reason: "expected a JSON object, found null".into() };
        assert_eq!(e.to_string(), "cannot translate the record at the record root: expected a JSON object, found null");
        assert_eq!(LensError::Invalid("x".into()).to_string(), "invalid lens: x");
    }

    // -----------------------------------------------------------------------------------------------------------
    // Parsing
    // -----------------------------------------------------------------------------------------------------------

    #[test]
    fn parse_accepts_both_forms() {
        let ops = json!([
            {"op": "rename", "from": "a", "to": "b"},
            {"op": "hoist", "host": "h", "name": "n"},
            {"op": "plunge", "host": "h", "name": "n"},
            {"op": "wrap", "name": "w"},
            {"op": "head", "name": "h"},
            {"op": "in", "name": "i", "ops": [{"op": "wrap", "name": "w"}]},
            {"op": "map", "name": "m", "ops": []},
            {"op": "convert", "name": "c", "mapping": [{"a": "b"}, [["b", "a"]]]},
            {"op": "add", "name": "x", "default": null},
            {"op": "remove", "name": "y", "default": [1]}
        ]);
        let bare = parse(&ops).unwrap();
        let wrapped = parse(&json!({"ops": ops, "description": "v1 to v2"})).unwrap();
        assert_eq!(bare, wrapped);
        assert_eq!(bare.ops.len(), 10);
        assert_eq!(bare.ops[5], Op::In { name: "i".into(), ops: vec![Op::Wrap { name: "w".into() }] });
        assert_eq!(
            bare.ops[7],
            Op::Convert {
                name: "c".into(),
                forward: vec![(json!("a"), json!("b"))],
                backward: vec![(json!("b"), json!("a"))]
            }
        );
    }

    #[test]
    fn parse_refusals() {
        assert!(refused(json!([{"op": "frobnicate", "name": "x"}])).contains("unknown op \"frobnicate\""));
        assert!(refused(json!([{"op": "wrap"}])).contains("missing `name`"));
        assert!(refused(json!([{"name": "x"}])).contains("missing `op`"));
        assert!(refused(json!([{"op": 3}])).contains("`op` must be a string"));
        assert!(refused(json!([5])).contains("an op must be a JSON object"));
        assert!(refused(json!("ops")).contains("a lens must be"));
        assert!(refused(json!({"ops": {}})).contains("`ops` must be an array"));
        assert!(refused(json!({"lens": []})).contains("missing `ops`"));
        assert!(refused(json!([{"op": "wrap", "name": "a.b"}])).contains("must not contain '.'"));
        assert!(refused(json!([{"op": "wrap", "name": ""}])).contains("must not be empty"));
        assert!(refused(json!([{"op": "wrap", "name": 4}])).contains("must be a string"));
        assert!(refused(json!([{"op": "wrap", "name": "x".repeat(129)}])).contains("longer than 128"));
        parse(&json!([{"op": "wrap", "name": "é".repeat(128)}])).unwrap();
        assert!(refused(json!([{"op": "wrap", "name": "x", "nmae": "y"}])).contains("unknown key \"nmae\""));
        assert!(refused(json!([{"op": "rename", "from": "a", "to": "a"}])).contains("to itself"));
        assert!(refused(json!([{"op": "hoist", "host": "a", "name": "a"}])).contains("both"));
        assert!(refused(json!([{"op": "add", "name": "a"}])).contains("missing `default`"));
        assert!(refused(json!([{"op": "in", "name": "a"}])).contains("missing `ops`"));
        assert!(refused(json!([{"op": "map", "name": "a", "ops": 1}])).contains("`ops` must be an array"));
        let bad_mappings = [
            json!({"op": "convert", "name": "a"}),
            json!({"op": "convert", "name": "a", "mapping": [{}]}),
            json!({"op": "convert", "name": "a", "mapping": [{}, {}, {}]}),
            json!({"op": "convert", "name": "a", "mapping": [{}, 3]}),
            json!({"op": "convert", "name": "a", "mapping": [{}, [[1, 2, 3]]]}),
        ];
        for m in bad_mappings {
            assert!(refused(json!([m])).contains("mapping") || refused(json!([m])).contains("table"), "{m}");
        }
        let dup = json!([{"op": "convert", "name": "a", "mapping": [[[1, "a"], [1, "b"]], []]}]);
        assert!(refused(dup).contains("maps 1 twice"));
        let nested = json!([{"op": "in", "name": "a", "ops": [{"op": "bogus"}]}]);
        assert!(refused(nested).starts_with("ops[0].ops[0]: unknown op"));
    }

    #[test]
    fn parse_limits_size_and_depth() {
        let many = |n: usize| Value::Array((0..n).map(|i| json!({"op": "wrap", "name": format!("f{i}")})).collect());
        assert_eq!(parse(&many(MAX_OPS)).unwrap().ops.len(), MAX_OPS);
        assert!(refused(many(MAX_OPS + 1)).contains("more than 256 ops"));
        // Nested ops count too.
        let split = json!([{"op": "in", "name": "a", "ops": many(200)}, {"op": "map", "name": "b", "ops": many(56)}]);
        assert!(refused(split).contains("more than 256 ops"));

        let nest = |levels: usize| {
            let mut ops = json!([{"op": "wrap", "name": "x"}]);
            for _ in 1..levels {
                ops = json!([{"op": "in", "name": "x", "ops": ops}]);
            }
            ops
        };
        parse(&nest(MAX_DEPTH)).unwrap();
        assert!(refused(nest(MAX_DEPTH + 1)).contains("more than 16 levels"));
        assert!(refused(nest(100)).contains("more than 16 levels"));
    }

    // -----------------------------------------------------------------------------------------------------------
    // Checking against Lexicon documents
    // -----------------------------------------------------------------------------------------------------------

    #[test]
    fn check_accepts_the_realistic_pairs() {
        for (name, pair) in pairs() {
            assert_eq!(pair.lens.check(&pair.source, &pair.target), Ok(()), "{name}");
        }
    }

    fn post_with(ops: Value) -> Result<(), LensError> {
        lens(ops).check(&post_v1(), &post_v2())
    }

    fn ops_replacing(index: usize, op: Value) -> Value {
        let mut ops = post_lens();
        ops["ops"][index] = op;
        ops
    }

    #[test]
    fn check_refuses_a_missing_field() {
        let ops = ops_replacing(0, json!({"op": "rename", "from": "titel", "to": "body"}));
        assert_eq!(
            post_with(ops),
            Err(LensError::Mismatch {
                path: "titel".into(),
                reason: "no such field in the source at this point".into()
            })
        );
        let nested = json!([{"op": "in", "name": "author", "ops": []}]);
        assert_eq!(mismatch_of(post_with(nested)).0, "author");
        let hoist = json!([{"op": "hoist", "host": "text", "name": "x"}]);
        let (path, reason) = mismatch_of(post_with(hoist));
        assert_eq!(path, "text");
        assert!(reason.contains("expected an object"), "{reason}");
    }

    #[test]
    fn check_refuses_an_unmapped_enum_value() {
        let mut source = post_v1();
        source["defs"]["main"]["record"]["properties"]["status"]["enum"] = json!(["draft", "published", "archived"]);
        let (path, reason) = mismatch_of(lens(post_lens()).check(&source, &post_v2()));
        assert_eq!(path, "status");
        assert_eq!(reason, "the lens has no mapping for the source value \"archived\"");

        // Mapped, but to a value the target does not allow.
        let ops = ops_replacing(
            3,
            json!({"op": "convert", "name": "status", "mapping": [
                {"draft": "unpublished", "published": "live", "archived": "archived"},
                {"unpublished": "draft", "live": "published"}
            ]}),
        );
        let (path, reason) = mismatch_of(lens(ops).check(&source, &post_v2()));
        assert_eq!(path, "state");
        assert_eq!(reason, "the target allows only [\"unpublished\",\"live\"] but the lens gives \"archived\"");
    }

    #[test]
    fn check_refuses_inconsistent_convert_tables() {
        let back_gap = ops_replacing(
            3,
            json!({"op": "convert", "name": "status", "mapping": [
                {"draft": "unpublished", "published": "live"}, {"unpublished": "draft"}
            ]}),
        );
        let (path, reason) = mismatch_of(post_with(back_gap));
        assert_eq!(path, "state");
        assert!(reason.contains("no mapping to write it back"), "{reason}");

        let disagree = ops_replacing(
            3,
            json!({"op": "convert", "name": "status", "mapping": [
                {"draft": "unpublished", "published": "live"}, {"unpublished": "published", "live": "published"}
            ]}),
        );
        assert!(mismatch_of(post_with(disagree)).1.contains("the tables disagree"));

        let foreign = ops_replacing(
            3,
            json!({"op": "convert", "name": "status", "mapping": [
                {"draft": "unpublished", "published": "live", "old": "live"},
                {"unpublished": "draft", "live": "old"}
            ]}),
        );
        assert!(mismatch_of(post_with(foreign)).1.contains("the lens writes back \"old\""));
    }

    #[test]
    fn check_refuses_an_unprovided_required_field() {
        let mut target = post_v2();
        target["defs"]["main"]["record"]["properties"]["summary"] = json!({"type": "string"});
        let (path, reason) = mismatch_of(lens(post_lens()).check(&post_v1(), &target));
        assert_eq!(path, "summary");
        assert_eq!(reason, "the target has this field but nothing in the lens provides it");

        let mut target = post_v2();
        target["defs"]["main"]["record"]["required"] = json!(["body", "state", "author", "lang", "createdAt", "tag"]);
        let (path, reason) = mismatch_of(lens(post_lens()).check(&post_v1(), &target));
        assert_eq!(path, "tag");
        assert!(reason.contains("requires this field"), "{reason}");

        // A field the lens gives that the target does not have.
        let without_remove = json!({"ops": post_lens()["ops"].as_array().unwrap()[..10].to_vec()});
        assert_eq!(mismatch_of(post_with(without_remove)).0, "legacyScore");
    }

    #[test]
    fn check_refuses_type_mismatches_and_looser_constraints() {
        let mut target = post_v2();
        target["defs"]["main"]["record"]["properties"]["body"] = json!({"type": "integer"});
        let (path, reason) = mismatch_of(lens(post_lens()).check(&post_v1(), &target));
        assert_eq!(
            (path.as_str(), reason.as_str()),
            ("body", "the target expects an integer but the lens gives a string")
        );

        let mut target = post_v2();
        target["defs"]["author"]["properties"]["name"]["maxLength"] = json!(10);
        let (path, reason) = mismatch_of(lens(post_lens()).check(&post_v1(), &target));
        assert_eq!(path, "author.name");
        assert!(reason.contains("at most 10 bytes"), "{reason}");

        let mut target = post_v2();
        target["defs"]["author"]["properties"]["did"] = json!({"type": "string", "format": "handle"});
        assert!(mismatch_of(lens(post_lens()).check(&post_v1(), &target)).1.contains("`handle`"));

        // The added field's default must fit the target.
        let mut target = post_v2();
        target["defs"]["main"]["record"]["properties"]["lang"] = json!({"type": "string", "maxLength": 1});
        assert!(mismatch_of(lens(post_lens()).check(&post_v1(), &target)).1.contains("at most 1 bytes"));

        // The removed field's default must fit the source.
        let bad_default = ops_replacing(10, json!({"op": "remove", "name": "legacyScore", "default": 1000}));
        let (path, reason) = mismatch_of(post_with(bad_default));
        assert_eq!(path, "legacyScore");
        assert!(reason.contains("allows integers up to 100"), "{reason}");

        // head on a string, wrap on an array.
        assert!(mismatch_of(post_with(json!([{"op": "head", "name": "text"}]))).1.contains("expected an array"));
        assert!(mismatch_of(post_with(json!([{"op": "wrap", "name": "tags"}]))).1.contains("already has an array"));
    }

    #[test]
    fn check_requires_single_element_arrays_where_the_lens_wraps() {
        let pair = profile_pair();
        let mut target = pair.target.clone();
        target["defs"]["main"]["record"]["properties"]["pronouns"] =
            json!({"type": "array", "items": {"type": "string", "maxLength": 20}});
        let (path, reason) = mismatch_of(pair.lens.check(&pair.source, &target));
        assert_eq!(path, "pronouns");
        assert!(reason.contains("minLength 1 and maxLength 1"), "{reason}");
    }

    #[test]
    fn check_refuses_malformed_documents() {
        let l = lens(post_lens());
        assert!(matches!(l.check(&json!(1), &post_v2()), Err(LensError::Invalid(_))));
        assert!(matches!(l.check(&post_v1(), &json!({"id": "x", "defs": {}})), Err(LensError::Invalid(_))));
        let mut target = post_v2();
        target["defs"]["main"]["record"]["properties"]["author"]["ref"] = json!("#nobody");
        assert!(matches!(l.check(&post_v1(), &target), Err(LensError::Invalid(_))));
        let looping = json!({"id": "a.b", "defs": {
            "main": {"type": "record", "record": {"type": "object", "properties": {"x": {"type": "ref", "ref": "#l"}}}},
            "l": {"type": "ref", "ref": "#l"}
        }});
        assert!(matches!(lens(json!([])).check(&looping, &looping), Err(LensError::Invalid(_))));
    }

    #[test]
    fn check_handles_recursive_and_external_refs() {
        let doc = json!({"id": "com.example.tree", "defs": {
            "main": {"type": "record", "record": {"type": "object", "required": ["root"], "properties": {
                "root": {"type": "ref", "ref": "#node"},
                "embed": {"type": "union", "refs": ["app.bsky.embed.images", "#node"]},
                "label": {"type": "ref", "ref": "com.atproto.label.defs#selfLabels"}
            }}},
            "node": {"type": "object", "properties": {
                "kids": {"type": "array", "items": {"type": "ref", "ref": "#node"}},
                "name": {"type": "string"}
            }}
        }});
        lens(json!([])).check(&doc, &doc).unwrap();
        let renamed =
            lens(json!([{"op": "in", "name": "root", "ops": [{"op": "rename", "from": "name", "to": "title"}]}]));
        let (path, _) = mismatch_of(renamed.check(&doc, &doc));
        assert_eq!(path, "root.name");
    }

    // -----------------------------------------------------------------------------------------------------------
    // Property tests
    // -----------------------------------------------------------------------------------------------------------

    fn arb_json() -> impl Strategy<Value = Value> {
        let words = vec![
            "op", "name", "from", "to", "host", "ops", "mapping", "default", "rename", "hoist", "plunge", "wrap",
            "head", "in", "map", "convert", "add", "remove", "a", "b", "a.b", "", "$type",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            proptest::sample::select(words.clone()).prop_map(Value::from),
            ".{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(6, 96, 8, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                proptest::collection::btree_map(proptest::sample::select(words.clone()), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
            ]
        })
    }

    /// Well-formed ops over a small set of field names, so that lenses often apply to random records.
    fn arb_op() -> impl Strategy<Value = Value> {
        let name = || proptest::sample::select(vec!["a", "b", "c", "d"]);
        let leaf = prop_oneof![
            (name(), name()).prop_map(|(from, to)| json!({"op": "rename", "from": from, "to": to})),
            (name(), name()).prop_map(|(host, n)| json!({"op": "hoist", "host": host, "name": n})),
            (name(), name()).prop_map(|(host, n)| json!({"op": "plunge", "host": host, "name": n})),
            name().prop_map(|n| json!({"op": "wrap", "name": n})),
            name().prop_map(|n| json!({"op": "head", "name": n})),
            name()
                .prop_map(|n| json!({"op": "convert", "name": n, "mapping": [[[1, "one"], [null, 2]], [["one", 1]]]})),
            (name(), any::<u8>()).prop_map(|(n, d)| json!({"op": "add", "name": n, "default": d})),
            (name(), any::<u8>()).prop_map(|(n, d)| json!({"op": "remove", "name": n, "default": d})),
        ];
        leaf.prop_recursive(3, 24, 4, move |inner| {
            (proptest::sample::select(vec!["in", "map"]), name(), proptest::collection::vec(inner, 0..4))
                .prop_map(|(kind, n, ops)| json!({"op": kind, "name": n, "ops": ops}))
        })
    }

    fn arb_small_record() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            Just(json!(1)),
            Just(json!("one")),
            Just(json!(2)),
            any::<bool>().prop_map(Value::Bool)
        ];
        let value = leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                proptest::collection::btree_map(proptest::sample::select(vec!["a", "b", "c", "d"]), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
            ]
        });
        proptest::collection::btree_map(proptest::sample::select(vec!["a", "b", "c", "d"]), value, 0..4)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn parse_never_panics(v in arb_json()) {
            if let Ok(l) = parse(&v) {
                let _ = l.get(&v);
                let _ = l.put(&v, Some(&v));
                let _ = l.check(&v, &v);
            }
            let _ = parse(&json!({"ops": [v]}));
        }

        #[test]
        fn check_never_panics_on_arbitrary_documents(doc in arb_json(), ops in proptest::collection::vec(arb_op(), 0..6)) {
            let Ok(l) = parse(&Value::Array(ops)) else { return Ok(()) };
            let _ = l.check(&doc, &post_v2());
            let _ = l.check(&post_v1(), &doc);
            let _ = l.check(&post_v1(), &post_v2());
        }

        /// GetPut holds for any well-formed lens on any record it can read, not only on schema-valid ones.
        #[test]
        fn random_lenses_keep_get_put(ops in proptest::collection::vec(arb_op(), 0..6), s in arb_small_record()) {
            let Ok(l) = parse(&Value::Array(ops)) else { return Ok(()) };
            if let Ok(t) = l.get(&s) {
                prop_assert_eq!(l.put(&t, Some(&s)), Ok(s.clone()));
            }
        }

        #[test]
        fn generated_records_are_valid((i, r) in (0usize..8).prop_flat_map(|i| (Just(i), arb_record(&doc_of(i))))) {
            prop_assert_eq!(valid(&doc_of(i), &r), Ok(()));
        }

        #[test]
        fn post_lens_laws(s in arb_record(&post_v1()), t in arb_record(&post_v2())) {
            assert_laws(&post_pair(), &s, &t)?;
        }

        #[test]
        fn playlist_lens_laws(s in arb_record(&playlist_pair().source), t in arb_record(&playlist_pair().target)) {
            assert_laws(&playlist_pair(), &s, &t)?;
        }

        #[test]
        fn profile_lens_laws(s in arb_record(&profile_pair().source), t in arb_record(&profile_pair().target)) {
            assert_laws(&profile_pair(), &s, &t)?;
        }

        #[test]
        fn note_lens_laws(s in arb_record(&note_pair().source), t in arb_record(&note_pair().target)) {
            assert_laws(&note_pair(), &s, &t)?;
        }
    }
}
