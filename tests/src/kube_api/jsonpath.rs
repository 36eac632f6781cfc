//! The JSONPath of `additionalPrinterColumns` (client-go's jsonpath, as the
//! apiserver evaluates a column's `jsonPath` for `kubectl get`): fields
//! (`.a.b`, `['a']`), indexes (`[0]`, `[*]`) and filters on a field
//! (`[?(@.type=="Ready")]`, `==` or `!=`). Anything else is an error, so a
//! column this server cannot evaluate fails its CRD, not its cell.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
    All,
    Filter { path: Vec<String>, equal: bool, value: Value },
}

fn parse(path: &str) -> Result<Vec<Step>, String> {
    let p = path.trim();
    let p = p.strip_prefix('{').and_then(|p| p.strip_suffix('}')).unwrap_or(p);
    let p = p.strip_prefix('$').unwrap_or(p);
    let mut steps = Vec::new();
    let mut rest = p;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end == 0 {
                return Err(format!("{path}: empty field name"));
            }
            steps.push(Step::Field(r[..end].to_string()));
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').ok_or_else(|| format!("{path}: unclosed ["))?;
            // A filter may hold a ']' inside its quoted value: take up to ")]".
            let (inner, after) = if r.starts_with("?(") {
                let close = r.find(")]").ok_or_else(|| format!("{path}: unclosed filter"))?;
                (&r[..close + 1], &r[close + 2..])
            } else {
                (&r[..end], &r[end + 1..])
            };
            steps.push(bracket(path, inner)?);
            rest = after;
        } else {
            return Err(format!("{path}: expected . or [ at {rest:?}"));
        }
    }
    Ok(steps)
}

fn bracket(path: &str, inner: &str) -> Result<Step, String> {
    if inner == "*" {
        return Ok(Step::All);
    }
    if let Ok(i) = inner.parse::<usize>() {
        return Ok(Step::Index(i));
    }
    if let Some(q) = inner.strip_prefix('\'').and_then(|q| q.strip_suffix('\'')) {
        return Ok(Step::Field(q.to_string()));
    }
    let Some(f) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')')) else {
        return Err(format!("{path}: [{inner}] is not implemented by the test apiserver"));
    };
    let (lhs, equal, rhs) = match (f.split_once("=="), f.split_once("!=")) {
        (Some((l, r)), _) => (l, true, r),
        (None, Some((l, r))) => (l, false, r),
        _ => return Err(format!("{path}: filter {f} is not implemented by the test apiserver")),
    };
    let lhs = lhs.trim().strip_prefix("@.").ok_or_else(|| format!("{path}: filter on @.<field> only"))?;
    let rhs = rhs.trim();
    let value = if let Some(s) = rhs.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Value::from(s)
    } else if let Some(s) = rhs.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
        Value::from(s)
    } else {
        serde_json::from_str(rhs).map_err(|_| format!("{path}: filter value {rhs}"))?
    };
    Ok(Step::Filter { path: lhs.split('.').map(str::to_string).collect(), equal, value })
}

/// Checks that `path` is one this server evaluates.
pub fn check(path: &str) -> Result<(), String> {
    parse(path).map(|_| ())
}

/// Every value `path` selects in `root` (none when a field is missing).
pub fn eval(root: &Value, path: &str) -> Result<Vec<Value>, String> {
    let mut current = vec![root.clone()];
    for step in parse(path)? {
        let mut next = Vec::new();
        for v in current {
            match &step {
                Step::Field(f) => next.extend(v.get(f).cloned()),
                Step::Index(i) => next.extend(v.get(*i).cloned()),
                Step::All => next.extend(v.as_array().into_iter().flatten().cloned()),
                Step::Filter { path, equal, value } => {
                    for item in v.as_array().into_iter().flatten() {
                        let got = path.iter().try_fold(item, |at, k| at.get(k));
                        if got.is_some_and(|g| (g == value) == *equal) {
                            next.push(item.clone());
                        }
                    }
                }
            }
        }
        current = next;
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn printer_column_paths_select_like_client_go() {
        let o = json!({"spec": {"action": "join"}, "status": {"netID": 12, "conditions": [
            {"type": "Applied", "reason": "Rejected"}, {"type": "InSync", "reason": "OutOfSync"}]}});
        assert_eq!(eval(&o, ".status.netID"), Ok(vec![json!(12)]));
        assert_eq!(eval(&o, ".spec.target"), Ok(vec![]));
        assert_eq!(
            eval(&o, r#".status.conditions[?(@.type=="Applied")].reason"#),
            Ok(vec![json!("Rejected")])
        );
        assert_eq!(eval(&o, ".status.conditions[1].type"), Ok(vec![json!("InSync")]));
        assert_eq!(eval(&o, ".status.conditions[*].type").map(|v| v.len()), Ok(2));
        assert_eq!(eval(&o, "{.spec['action']}"), Ok(vec![json!("join")]));
        assert_eq!(
            eval(&o, r#".status.conditions[?(@.type!="Applied")].reason"#),
            Ok(vec![json!("OutOfSync")])
        );
        assert!(check(".status..netID").is_err());
        assert!(check(".a[?(@.x>1)]").is_err());
    }
}
