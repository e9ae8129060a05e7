//! Lexicon evolution rules: which changes to a published schema keep every record that was
//! valid under the old one valid under the new one (and old readers reading new data sane).
//!
//! Refused: removing a definition or a field, changing a type or a reference, making an
//! optional field required or a nullable one non-nullable, narrowing any constraint (bounds,
//! enums, accepted MIME types, formats, constants), closing an open union or dropping a member
//! of a closed one, changing a record's key type. Adding optional fields, new definitions, new
//! union members and widening constraints are fine.

use serde_json::Value;

/// One incompatible change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatibility {
    /// Where (`#main.record.text.maxLength`).
    pub path: String,
    /// What changed.
    pub reason: String,
}

/// Compares two versions of one Lexicon document.
pub fn check_evolution(old: &Value, new: &Value) -> Vec<Incompatibility> {
    let mut out = Vec::new();
    if old.get("id") != new.get("id") {
        out.push(Incompatibility { path: "id".into(), reason: "the document id changed".into() });
    }
    let empty = serde_json::Map::new();
    let old_defs = old.get("defs").and_then(Value::as_object).unwrap_or(&empty);
    let new_defs = new.get("defs").and_then(Value::as_object).unwrap_or(&empty);
    for (name, o) in old_defs {
        match new_defs.get(name) {
            None => out.push(Incompatibility { path: format!("#{name}"), reason: "definition removed".into() }),
            Some(n) => compare(o, n, &format!("#{name}"), &mut out),
        }
    }
    out
}

fn push(out: &mut Vec<Incompatibility>, path: &str, reason: impl Into<String>) {
    out.push(Incompatibility { path: path.to_string(), reason: reason.into() });
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn str_list(v: &Value, key: &str) -> Option<Vec<String>> {
    v.get(key).and_then(Value::as_array).map(|a| a.iter().map(|x| x.to_string()).collect())
}

fn compare(old: &Value, new: &Value, path: &str, out: &mut Vec<Incompatibility>) {
    let (ot, nt) = (old.get("type").and_then(Value::as_str), new.get("type").and_then(Value::as_str));
    if ot != nt {
        push(out, path, format!("type changed from {ot:?} to {nt:?}"));
        return;
    }
    // Lower bounds may only go down, upper bounds only up.
    for key in ["minimum", "minLength", "minGraphemes"] {
        match (num(old, key), num(new, key)) {
            (o, Some(n)) if o.is_none_or(|o| n > o) => push(out, &format!("{path}.{key}"), format!("raised to {n}")),
            _ => {}
        }
    }
    for key in ["maximum", "maxLength", "maxGraphemes", "maxSize"] {
        match (num(old, key), num(new, key)) {
            (o, Some(n)) if o.is_none_or(|o| n < o) => push(out, &format!("{path}.{key}"), format!("lowered to {n}")),
            _ => {}
        }
    }
    for key in ["enum", "accept"] {
        if let Some(n) = str_list(new, key) {
            match str_list(old, key) {
                None => push(out, &format!("{path}.{key}"), "constraint added"),
                Some(o) => {
                    let accepts_all = key == "accept" && n.iter().any(|p| p == "\"*/*\"");
                    if !accepts_all && o.iter().any(|x| !n.contains(x)) {
                        push(out, &format!("{path}.{key}"), "values removed");
                    }
                }
            }
        }
    }
    for key in ["const", "format", "ref"] {
        if new.get(key).is_some() && old.get(key) != new.get(key) {
            push(out, &format!("{path}.{key}"), format!("changed from {:?} to {:?}", old.get(key), new.get(key)));
        }
    }
    if ot == Some("record") && old.get("key") != new.get("key") {
        push(out, &format!("{path}.key"), "record key type changed");
    }
    if ot == Some("union") {
        let was_closed = old.get("closed").and_then(Value::as_bool).unwrap_or(false);
        let is_closed = new.get("closed").and_then(Value::as_bool).unwrap_or(false);
        if is_closed && !was_closed {
            push(out, &format!("{path}.closed"), "an open union was closed");
        }
        if is_closed
            && let (Some(o), Some(n)) = (str_list(old, "refs"), str_list(new, "refs"))
            && o.iter().any(|r| !n.contains(r))
        {
            push(out, &format!("{path}.refs"), "members removed from a closed union");
        }
    }
    if matches!(ot, Some("object" | "params")) {
        let empty = serde_json::Map::new();
        let op = old.get("properties").and_then(Value::as_object).unwrap_or(&empty);
        let np = new.get("properties").and_then(Value::as_object).unwrap_or(&empty);
        for (name, o) in op {
            match np.get(name) {
                None => push(out, &format!("{path}.{name}"), "field removed"),
                Some(n) => compare(o, n, &format!("{path}.{name}"), out),
            }
        }
        let old_req = str_list(old, "required").unwrap_or_default();
        for r in str_list(new, "required").unwrap_or_default() {
            if !old_req.contains(&r) {
                push(out, &format!("{path}.{}", r.trim_matches('"')), "became required");
            }
        }
        let new_null = str_list(new, "nullable").unwrap_or_default();
        for r in str_list(old, "nullable").unwrap_or_default() {
            if !new_null.contains(&r) {
                push(out, &format!("{path}.{}", r.trim_matches('"')), "no longer nullable");
            }
        }
    }
    for key in ["items", "record", "parameters"] {
        if let (Some(o), Some(n)) = (old.get(key), new.get(key)) {
            compare(o, n, &format!("{path}.{key}"), out);
        }
    }
    for key in ["input", "output", "message"] {
        if let (Some(o), Some(n)) =
            (old.get(key).and_then(|b| b.get("schema")), new.get(key).and_then(|b| b.get("schema")))
        {
            compare(o, n, &format!("{path}.{key}"), out);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn doc(record: Value) -> Value {
        json!({"lexicon": 1, "id": "com.example.thing", "defs": {"main": {"type": "record", "key": "tid", "record": record}}})
    }

    #[test]
    fn compatible_and_incompatible_changes() {
        let base = doc(json!({"type": "object", "required": ["a"], "properties": {
            "a": {"type": "string", "maxLength": 100}, "b": {"type": "integer"},
            "u": {"type": "union", "refs": ["#x"]}}}));
        let wider = doc(json!({"type": "object", "required": ["a"], "properties": {
            "a": {"type": "string", "maxLength": 200}, "b": {"type": "integer"}, "c": {"type": "boolean"},
            "u": {"type": "union", "refs": ["#x", "#y"]}}}));
        assert!(check_evolution(&base, &wider).is_empty(), "{:?}", check_evolution(&base, &wider));
        let cases = [
            (
                json!({"type": "object", "required": ["a"], "properties": {"a": {"type": "string", "maxLength": 100}, "u": {"type": "union", "refs": ["#x"]}}}),
                "field removed",
            ),
            (
                json!({"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}, "u": {"type": "union", "refs": ["#x"]}}}),
                "type changed",
            ),
            (
                json!({"type": "object", "required": ["a", "b"], "properties": {"a": {"type": "string", "maxLength": 100}, "b": {"type": "integer"}, "u": {"type": "union", "refs": ["#x"]}}}),
                "became required",
            ),
            (
                json!({"type": "object", "required": ["a"], "properties": {"a": {"type": "string", "maxLength": 50}, "b": {"type": "integer"}, "u": {"type": "union", "refs": ["#x"]}}}),
                "lowered",
            ),
            (
                json!({"type": "object", "required": ["a"], "properties": {"a": {"type": "string", "maxLength": 100}, "b": {"type": "integer"}, "u": {"type": "union", "refs": ["#x"], "closed": true}}}),
                "closed",
            ),
        ];
        for (record, expect) in cases {
            let issues = check_evolution(&base, &doc(record));
            assert!(issues.iter().any(|i| i.reason.contains(expect)), "expected {expect:?}: {issues:?}");
        }
    }
}
