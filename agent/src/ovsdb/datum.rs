//! OVSDB values (RFC 7047 section 5.1) to and from JSON.
//!
//! An atom is a JSON string, number or boolean, or `["uuid", ..]` /
//! `["named-uuid", ..]`; a set is `["set", [atoms]]` but a one-element set
//! may be sent as the bare atom; a map is `["map", [[key, value], ..]]`.
//! Optional columns (`ofport`, `error`) are sets of zero or one atom.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::OvsdbError;

pub fn uuid(id: &str) -> Value {
    json!(["uuid", id])
}

pub fn named_uuid(name: &str) -> Value {
    json!(["named-uuid", name])
}

pub fn set(atoms: impl IntoIterator<Item = Value>) -> Value {
    json!(["set", atoms.into_iter().collect::<Vec<_>>()])
}

/// A string-to-string map.
pub fn map(m: &BTreeMap<String, String>) -> Value {
    let pairs: Vec<Value> = m.iter().map(|(k, v)| json!([k, v])).collect();
    json!(["map", pairs])
}

/// An optional integer column: the empty set or the value.
pub fn opt_int(v: Option<i64>) -> Value {
    match v {
        Some(i) => json!(i),
        None => set([]),
    }
}

/// The atoms of a set (a bare atom is a one-element set).
pub fn atoms(v: &Value) -> Vec<&Value> {
    match v.as_array().map(Vec::as_slice) {
        Some([tag, Value::Array(items)]) if tag == "set" => items.iter().collect(),
        _ => vec![v],
    }
}

/// The id of a `["uuid", id]` atom.
pub fn as_uuid(v: &Value) -> Option<&str> {
    match v.as_array().map(Vec::as_slice) {
        Some([tag, Value::String(id)]) if tag == "uuid" => Some(id),
        _ => None,
    }
}

/// The uuids of a set-of-uuid column.
pub fn uuids(v: &Value) -> Vec<&str> {
    atoms(v).into_iter().filter_map(as_uuid).collect()
}

/// An optional integer column.
pub fn as_opt_int(v: &Value) -> Option<i64> {
    atoms(v).first().and_then(|a| a.as_i64())
}

/// An optional string column.
pub fn as_opt_str(v: &Value) -> Option<&str> {
    atoms(v).first().and_then(|a| a.as_str())
}

/// A string-to-string map column.
pub fn as_map(v: &Value) -> Result<BTreeMap<String, String>, OvsdbError> {
    let bad = || OvsdbError::Protocol(format!("expected a string map, got {v}"));
    let pairs = match v.as_array().map(Vec::as_slice) {
        Some([tag, Value::Array(pairs)]) if tag == "map" => pairs,
        _ => return Err(bad()),
    };
    pairs
        .iter()
        .map(|p| match p.as_array().map(Vec::as_slice) {
            Some([Value::String(k), Value::String(v)]) => Ok((k.clone(), v.clone())),
            _ => Err(bad()),
        })
        .collect()
}

/// The string atoms of a set-of-string column.
pub fn as_str_set(v: &Value) -> Vec<String> {
    atoms(v).into_iter().filter_map(|a| a.as_str().map(str::to_string)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_accept_the_bare_atom_form() {
        assert_eq!(uuids(&json!(["uuid", "a"])), ["a"]);
        assert_eq!(uuids(&json!(["set", [["uuid", "a"], ["uuid", "b"]]])), ["a", "b"]);
        assert!(uuids(&json!(["set", []])).is_empty());
        assert_eq!(as_str_set(&json!("OpenFlow13")), ["OpenFlow13"]);
        assert_eq!(as_str_set(&json!(["set", ["OpenFlow13", "OpenFlow15"]])), ["OpenFlow13", "OpenFlow15"]);
    }

    #[test]
    fn optional_columns() {
        assert_eq!(as_opt_int(&json!(7)), Some(7));
        assert_eq!(as_opt_int(&json!(["set", []])), None);
        assert_eq!(as_opt_str(&json!("boom")), Some("boom"));
        assert_eq!(as_opt_str(&json!(["set", []])), None);
        assert_eq!(opt_int(None), json!(["set", []]));
        assert_eq!(opt_int(Some(3)), json!(3));
    }

    #[test]
    fn maps_round_trip_and_reject_other_shapes() {
        let m: BTreeMap<String, String> = [("k".to_string(), "v".to_string())].into();
        assert_eq!(map(&m), json!(["map", [["k", "v"]]]));
        assert_eq!(as_map(&map(&m)).expect("map"), m);
        assert!(as_map(&json!(["map", []])).expect("empty").is_empty());
        assert!(as_map(&json!(["set", []])).is_err());
        assert!(as_map(&json!(["map", [["k", 1]]])).is_err());
    }
}
