//! The structural OpenAPI v3 schema of a CustomResourceDefinition, applied
//! as kube-apiserver applies it to a custom resource on every write: null
//! values of non-nullable fields dropped, defaults filled in, unknown fields
//! pruned (reported for `fieldValidation`), then validation, with errors in
//! the apiserver's form (`<field>: <kind of error>: <detail>`).
//!
//! Only the keywords of [`KEYWORDS`] are implemented. A CRD whose schema uses
//! another is refused when it is created, so this server never accepts
//! silently what the real one would check. Not implemented (refused that
//! way): CEL rules (`x-kubernetes-validations`), `x-kubernetes-int-or-string`,
//! embedded resources, `multipleOf`, `uniqueItems`, `exclusiveMinimum/Maximum`,
//! min/maxProperties.

use regex::Regex;
use serde_json::{Map, Value};

/// The schema keywords this server implements.
pub const KEYWORDS: &[&str] = &[
    "type",
    "description",
    "title",
    "example",
    "properties",
    "required",
    "enum",
    "default",
    "maxLength",
    "minLength",
    "pattern",
    "minimum",
    "maximum",
    "format",
    "items",
    "maxItems",
    "minItems",
    "oneOf",
    "anyOf",
    "allOf",
    "not",
    "nullable",
    "additionalProperties",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
];

/// Formats checked (others are refused at CRD creation).
const FORMATS: &[&str] = &["int32", "int64", "date-time", "float", "double", "byte"];

/// Refuses a schema that uses anything this server does not implement (or
/// a pattern that does not compile), naming where.
pub fn check(schema: &Value, at: &str) -> Result<(), String> {
    let Some(map) = schema.as_object() else { return Err(format!("{at}: a schema must be an object")) };
    for (k, v) in map {
        if !KEYWORDS.contains(&k.as_str()) {
            return Err(format!("{at}: schema keyword {k} is not implemented by the test apiserver"));
        }
        match k.as_str() {
            "properties" => {
                for (name, s) in v.as_object().into_iter().flatten() {
                    check(s, &format!("{at}.properties.{name}"))?;
                }
            }
            "items" | "not" => check(v, &format!("{at}.{k}"))?,
            "additionalProperties" if v.is_object() => check(v, &format!("{at}.{k}"))?,
            "oneOf" | "anyOf" | "allOf" => {
                for (i, s) in v.as_array().into_iter().flatten().enumerate() {
                    check(s, &format!("{at}.{k}[{i}]"))?;
                }
            }
            "pattern" => {
                let p = v.as_str().unwrap_or_default();
                Regex::new(p).map_err(|e| format!("{at}.pattern {p:?}: {e}"))?;
            }
            "format" if !FORMATS.contains(&v.as_str().unwrap_or_default()) => {
                return Err(format!("{at}: format {v} is not implemented by the test apiserver"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// One validation error, as the apiserver reports it in a Status's causes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueNotSupported`, `FieldValueRequired`, ...
    pub reason: &'static str,
    pub field: String,
    /// `<field>: <kind>: <detail>`, the line of the Status message.
    pub message: String,
}

fn join(at: &str, name: &str) -> String {
    if at.is_empty() {
        name.to_string()
    } else {
        format!("{at}.{name}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_type(v: &Value, t: &str) -> bool {
    let actual = type_name(v);
    actual == t || (t == "number" && actual == "integer")
}

fn nullable(schema: &Value) -> bool {
    schema["nullable"] == Value::Bool(true)
}

fn properties(schema: &Value) -> Option<&Map<String, Value>> {
    schema.get("properties").and_then(Value::as_object)
}

/// Drops nulls of non-nullable fields, then fills in defaults of absent
/// fields (the apiserver's order: a null field gets its default).
pub fn default(schema: &Value, v: &mut Value) {
    match v {
        Value::Object(map) => {
            let Some(props) = properties(schema) else { return };
            map.retain(|k, val| !(val.is_null() && props.get(k).is_some_and(|s| !nullable(s))));
            for (k, s) in props {
                if let (None, Some(d)) = (map.get(k), s.get("default")) {
                    map.insert(k.clone(), d.clone());
                }
                if let Some(child) = map.get_mut(k) {
                    default(s, child);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                items.iter_mut().for_each(|i| default(s, i));
            }
        }
        _ => {}
    }
}

/// Removes the fields the schema does not know (unless it preserves them),
/// recording their paths.
pub fn prune(schema: &Value, v: &mut Value, at: &str, pruned: &mut Vec<String>) {
    if schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true) {
        return;
    }
    match v {
        Value::Object(map) => {
            let props = properties(schema);
            let extra = schema.get("additionalProperties");
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                let path = join(at, &k);
                match (props.and_then(|p| p.get(&k)), extra) {
                    (Some(s), _) => prune(s, map.get_mut(&k).expect("present"), &path, pruned),
                    (None, Some(s)) if s.is_object() => {
                        prune(s, map.get_mut(&k).expect("present"), &path, pruned)
                    }
                    (None, Some(Value::Bool(true))) => {}
                    _ => {
                        map.remove(&k);
                        pruned.push(path);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(s, item, &format!("{at}[{i}]"), pruned);
                }
            }
        }
        _ => {}
    }
}

fn shown(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 120 {
        format!("{}...", &s[..s.char_indices().nth(117).map_or(s.len(), |(i, _)| i)])
    } else {
        s
    }
}

fn invalid(at: &str, value: String, detail: String) -> Cause {
    Cause {
        reason: "FieldValueInvalid",
        field: at.into(),
        message: format!("{at}: Invalid value: {value}: {detail}"),
    }
}

/// Appends to `out` every way `v` (at `at`) breaks `schema`.
pub fn validate(schema: &Value, v: &Value, at: &str, out: &mut Vec<Cause>) {
    let shown_at = if at.is_empty() { "<root>" } else { at };
    if v.is_null() && nullable(schema) {
        return;
    }
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        if !is_type(v, t) {
            let actual = type_name(v);
            out.push(invalid(
                shown_at,
                format!("\"{actual}\""),
                format!("{shown_at} in body must be of type {t}: \"{actual}\""),
            ));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(v) {
            let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
            out.push(Cause {
                reason: "FieldValueNotSupported",
                field: shown_at.into(),
                message: format!(
                    "{shown_at}: Unsupported value: {}: supported values: {}",
                    shown(v),
                    list.join(", ")
                ),
            });
        }
    }
    match v {
        Value::String(s) => validate_string(schema, s, shown_at, out),
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                if x < min {
                    out.push(invalid(
                        shown_at,
                        n.to_string(),
                        format!("{shown_at} in body should be greater than or equal to {min}"),
                    ));
                }
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                if x > max {
                    out.push(invalid(
                        shown_at,
                        n.to_string(),
                        format!("{shown_at} in body should be less than or equal to {max}"),
                    ));
                }
            }
        }
        Value::Array(items) => validate_array(schema, items, at, shown_at, out),
        Value::Object(map) => {
            for r in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                let Some(name) = r.as_str() else { continue };
                if !map.contains_key(name) {
                    let field = join(at, name);
                    out.push(Cause {
                        reason: "FieldValueRequired",
                        message: format!("{field}: Required value"),
                        field,
                    });
                }
            }
            let props = properties(schema);
            for (k, child) in map {
                let s = props
                    .and_then(|p| p.get(k))
                    .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()));
                if let Some(s) = s {
                    validate(s, child, &join(at, k), out);
                }
            }
        }
        _ => {}
    }
    junctors(schema, v, at, shown_at, out);
}

fn validate_string(schema: &Value, s: &str, at: &str, out: &mut Vec<Cause>) {
    let runes = s.chars().count() as u64;
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
        if runes > max {
            out.push(Cause {
                reason: "FieldValueTooLong",
                field: at.into(),
                message: format!("{at}: Too long: may not be more than {max} bytes"),
            });
        }
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
        if runes < min {
            out.push(invalid(
                at,
                shown(&Value::from(s)),
                format!("{at} in body should be at least {min} chars long"),
            ));
        }
    }
    if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
        // Compiled at CRD creation (`check`), so this cannot fail here.
        if Regex::new(p).is_ok_and(|re| !re.is_match(s)) {
            out.push(invalid(at, shown(&Value::from(s)), format!("{at} in body should match '{p}'")));
        }
    }
    if schema.get("format").and_then(Value::as_str) == Some("date-time") && !is_date_time(s) {
        out.push(invalid(
            at,
            shown(&Value::from(s)),
            format!("{at} in body must be of type date-time: {}", shown(&Value::from(s))),
        ));
    }
}

fn validate_array(schema: &Value, items: &[Value], at: &str, shown_at: &str, out: &mut Vec<Cause>) {
    if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
        if items.len() as u64 > max {
            out.push(Cause {
                reason: "FieldValueTooMany",
                field: shown_at.into(),
                message: format!("{shown_at}: Too many: {}: must have at most {max} items", items.len()),
            });
        }
    }
    if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
        if (items.len() as u64) < min {
            out.push(invalid(
                shown_at,
                items.len().to_string(),
                format!("{shown_at} in body should have at least {min} items"),
            ));
        }
    }
    if let Some(s) = schema.get("items") {
        for (i, item) in items.iter().enumerate() {
            validate(s, item, &format!("{at}[{i}]"), out);
        }
    }
    // Lists of type map are keyed: two items with the same keys are one too many.
    let keys: Vec<&str> = schema
        .get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let key_of = |item: &Value| -> Value {
        match schema["x-kubernetes-list-type"].as_str() {
            Some("map") => Value::Object(keys.iter().map(|k| (k.to_string(), item[*k].clone())).collect()),
            _ => item.clone(),
        }
    };
    if matches!(schema["x-kubernetes-list-type"].as_str(), Some("map" | "set")) {
        for (i, item) in items.iter().enumerate() {
            let k = key_of(item);
            if items[..i].iter().any(|prev| key_of(prev) == k) {
                out.push(Cause {
                    reason: "FieldValueDuplicate",
                    field: format!("{at}[{i}]"),
                    message: format!("{at}[{i}]: Duplicate value: {k}"),
                });
            }
        }
    }
}

fn matches(schema: &Value, v: &Value, at: &str) -> bool {
    let mut scratch = Vec::new();
    validate(schema, v, at, &mut scratch);
    scratch.is_empty()
}

/// oneOf / anyOf / allOf / not: value validations over the same value.
fn junctors(schema: &Value, v: &Value, at: &str, shown_at: &str, out: &mut Vec<Cause>) {
    let kind = type_name(v);
    if let Some(all) = schema.get("oneOf").and_then(Value::as_array) {
        let valid = all.iter().filter(|s| matches(s, v, at)).count();
        if valid != 1 {
            let found = if valid == 0 {
                "Found none valid".to_string()
            } else {
                format!("Found {valid} valid alternatives")
            };
            out.push(invalid(
                shown_at,
                format!("\"{kind}\""),
                format!("{shown_at} in body must validate one and only one schema (oneOf). {found}"),
            ));
        }
    }
    if let Some(all) = schema.get("anyOf").and_then(Value::as_array) {
        if !all.iter().any(|s| matches(s, v, at)) {
            out.push(invalid(
                shown_at,
                format!("\"{kind}\""),
                format!("{shown_at} in body must validate at least one schema (anyOf)"),
            ));
        }
    }
    for s in schema.get("allOf").and_then(Value::as_array).into_iter().flatten() {
        validate(s, v, at, out);
    }
    if let Some(s) = schema.get("not") {
        if matches(s, v, at) {
            out.push(invalid(
                shown_at,
                format!("\"{kind}\""),
                format!("{shown_at} in body must not validate the schema (not)"),
            ));
        }
    }
}

/// RFC 3339 `date-time` (what Go's strfmt accepts, less its leniencies).
fn is_date_time(s: &str) -> bool {
    let re = Regex::new(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$");
    re.is_ok_and(|re| re.is_match(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": {
                "action": {"type": "string", "enum": ["join", "isolate", "global"], "default": "isolate"},
                "target": {"type": "string", "maxLength": 63, "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}},
                "oneOf": [
                    {"properties": {"action": {"enum": ["join"]}}, "required": ["target"]},
                    {"properties": {"action": {"enum": ["isolate", "global"]}}, "not": {"required": ["target"]}}]},
            "status": {"type": "object", "properties": {
                "netID": {"type": "integer", "minimum": 0, "maximum": 16777215},
                "conditions": {"type": "array", "maxItems": 2, "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["type"],
                    "items": {"type": "object", "required": ["type"], "properties": {
                        "type": {"type": "string"}, "at": {"type": "string", "format": "date-time"}}}}}}}})
    }

    fn errors(v: Value) -> Vec<String> {
        let mut v = v;
        default(&schema(), &mut v);
        let mut out = Vec::new();
        validate(&schema(), &v, "", &mut out);
        out.into_iter().map(|c| c.message).collect()
    }

    #[test]
    fn valid_objects_pass_and_defaults_fill_in() {
        assert!(errors(json!({"spec": {"action": "join", "target": "blue"}})).is_empty());
        assert!(errors(json!({"spec": {"action": "global"}})).is_empty());
        let mut v = json!({"spec": {"action": null}});
        default(&schema(), &mut v);
        assert_eq!(v, json!({"spec": {"action": "isolate"}}), "a null gets the default");
        assert!(errors(json!({})).is_empty(), "no spec, nothing to default");
    }

    #[test]
    fn errors_read_like_the_apiservers() {
        let e = errors(json!({"spec": {"action": "merge"}}));
        assert!(
            e.contains(
                &r#"spec.action: Unsupported value: "merge": supported values: "join", "isolate", "global""#
                    .to_string()
            ),
            "{e:?}"
        );
        let e = errors(json!({"spec": {"action": "join"}}));
        assert!(
            e[0].contains("spec in body must validate one and only one schema (oneOf). Found none valid"),
            "{e:?}"
        );
        let e = errors(json!({"spec": {"action": "isolate", "target": "x"}}));
        assert_eq!(e.len(), 1, "{e:?}");
        let e = errors(json!({"spec": {"action": "join", "target": "x".repeat(64)}}));
        assert!(e.contains(&"spec.target: Too long: may not be more than 63 bytes".to_string()), "{e:?}");
        let e = errors(json!({"spec": {"action": "join", "target": "Bad_Name"}}));
        assert!(e.iter().any(|m| m.contains("should match")), "{e:?}");
        let e = errors(json!({"spec": {"action": 5}}));
        assert!(
            e[0].starts_with(
                r#"spec.action: Invalid value: "integer": spec.action in body must be of type string"#
            ),
            "{e:?}"
        );
        let e = errors(json!({"status": {"netID": -1}}));
        assert!(e[0].contains("should be greater than or equal to 0"), "{e:?}");
        let dup = json!({"status": {"conditions": [{"type": "A"}, {"type": "A"}, {"type": "B"}]}});
        let e = errors(dup);
        assert!(e.iter().any(|m| m.starts_with("status.conditions: Too many: 3")), "{e:?}");
        assert!(e.iter().any(|m| m.starts_with("status.conditions[1]: Duplicate value")), "{e:?}");
        let e = errors(json!({"status": {"conditions": [{"at": "yesterday"}]}}));
        assert!(e.iter().any(|m| m == "status.conditions[0].type: Required value"), "{e:?}");
        assert!(e.iter().any(|m| m.contains("must be of type date-time")), "{e:?}");
        assert!(errors(json!({"status": {"conditions": [{"type": "A", "at": "2026-01-02T03:04:05Z"}]}}))
            .is_empty());
    }

    #[test]
    fn unknown_fields_are_pruned_and_reported() {
        let mut v = json!({"spec": {"action": "global", "color": "red"}, "extra": 1});
        let mut pruned = Vec::new();
        prune(&schema(), &mut v, "", &mut pruned);
        assert_eq!(v, json!({"spec": {"action": "global"}}));
        assert_eq!(pruned, ["extra", "spec.color"]);
    }

    #[test]
    fn schemas_with_keywords_not_implemented_are_refused() {
        assert!(check(&schema(), "schema").is_ok());
        let cel = json!({"type": "object", "x-kubernetes-validations": [{"rule": "self.a == 1"}]});
        let e = check(&cel, "schema").expect_err("CEL");
        assert!(e.contains("x-kubernetes-validations is not implemented"), "{e}");
        let nested = json!({"properties": {"a": {"type": "string", "uniqueItems": true}}});
        assert!(check(&nested, "s").expect_err("nested").contains("s.properties.a"));
        assert!(check(&json!({"type": "string", "pattern": "("}), "s").is_err());
        assert!(check(&json!({"type": "string", "format": "email"}), "s").is_err());
    }
}
