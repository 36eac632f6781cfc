//! CustomResourceDefinitions and their custom resources, as kube-apiserver
//! (its apiextensions part) serves them: a CRD creates a served type; its
//! objects' writes follow the real server's strategy for custom resources
//! (apiextensions-apiserver's `customResourceStrategy` and status strategy):
//!
//! - create: `metadata.generation` = 1; with the status subresource the
//!   body's status is dropped; uid, resourceVersion, creationTimestamp set;
//! - update (PUT, and PATCH after applying the patch): `resourceVersion`
//!   required (custom resources allow no unconditional update: 422) and a
//!   409 Conflict when it is not the current one; with the status
//!   subresource the body's status is replaced by the stored one; the
//!   generation grows by one when anything but `metadata` (and `status`)
//!   changed; an update that changes nothing stores nothing (no new
//!   resourceVersion, no watch event);
//! - status (PUT/PATCH `.../status`): the stored object with the body's
//!   status, nothing else, generation unchanged;
//! - every write: the structural schema (`schema.rs`), names and annotations
//!   checked, errors as `Status` objects with the real reasons and codes.
//!
//! Discovery, the OpenAPI v3 kubectl reads, and server-side printing
//! (Tables) live here too.

use std::time::{SystemTime, UNIX_EPOCH};

use regex::Regex;
use serde_json::{json, Map, Value};

use super::{jsonpath, schema, Inner, Kind, Request, Resource, State};

/// What a CRD adds to its resource type.
#[derive(Debug)]
pub(super) struct Custom {
    /// The structural schema (`openAPIV3Schema`).
    schema: Value,
    /// The status subresource is on.
    pub(super) status: bool,
    /// `additionalPrinterColumns`, as written.
    columns: Vec<Value>,
}

/// A failed request, answered as a `Status` object.
#[derive(Debug, Clone)]
pub(super) struct ApiError {
    pub(super) code: u16,
    reason: &'static str,
    pub(super) message: String,
    details: Value,
}

impl ApiError {
    pub(super) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { code, reason, message: message.into(), details: Value::Null }
    }

    pub(super) fn not_found(message: &str) -> ApiError {
        ApiError::new(404, "NotFound", message)
    }

    fn conflict(res: &Resource, name: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                res.qualified()
            ),
        )
    }

    /// 422 Invalid, with the causes in the Status's details.
    fn invalid(res: &Resource, name: &str, causes: &[schema::Cause]) -> ApiError {
        let lines: Vec<&str> = causes.iter().map(|c| c.message.as_str()).collect();
        let what = if lines.len() == 1 { lines[0].to_string() } else { format!("[{}]", lines.join(", ")) };
        let group_kind =
            if res.group.is_empty() { res.kind.clone() } else { format!("{}.{}", res.kind, res.group) };
        let causes: Vec<Value> = causes
            .iter()
            .map(|c| {
                let detail = c.message.strip_prefix(&format!("{}: ", c.field)).unwrap_or(&c.message);
                json!({"reason": c.reason, "message": detail, "field": c.field})
            })
            .collect();
        ApiError {
            code: 422,
            reason: "Invalid",
            message: format!("{group_kind} \"{name}\" is invalid: {what}"),
            details: json!({"name": name, "group": res.group, "kind": res.kind, "causes": causes}),
        }
    }

    pub(super) fn status(&self) -> Value {
        let mut s = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": self.message, "reason": self.reason, "code": self.code});
        if !self.details.is_null() {
            s["details"] = self.details.clone();
        }
        s
    }
}

/// How a write treats fields its schema does not know (`fieldValidation`).
#[derive(Debug, Clone, Default)]
pub(super) struct WriteOpts {
    /// "Strict" (400), "Warn" (a `Warning` header; the default), "Ignore".
    field_validation: String,
}

impl WriteOpts {
    pub(super) fn of(req: &Request) -> WriteOpts {
        WriteOpts { field_validation: req.query.get("fieldValidation").cloned().unwrap_or_default() }
    }
}

/// The stored object and the `Warning`s of its write.
type Written = (Value, Vec<String>);

fn crd_kind() -> &'static str {
    Kind::CustomResourceDefinition.name()
}

/// `apiVersion` and `kind` of the body must be the resource's.
fn check_kind(res: &Resource, object: &Value) -> Result<(), ApiError> {
    let Some(kind) = object["kind"].as_str() else {
        let text: String = object.to_string().chars().take(200).collect();
        return Err(ApiError::new(400, "BadRequest", format!("Object 'Kind' is missing in '{text}'")));
    };
    if kind != res.kind {
        return Err(ApiError::new(
            400,
            "BadRequest",
            format!("the kind in the data ({kind}) does not match the expected kind ({})", res.kind),
        ));
    }
    let want = res.api_version();
    match object["apiVersion"].as_str() {
        Some(v) if v == want => Ok(()),
        v => Err(ApiError::new(
            400,
            "BadRequest",
            format!(
                "the API version in the data ({}) does not match the expected API version ({want})",
                v.unwrap_or("")
            ),
        )),
    }
}

fn is_subdomain(s: &str) -> bool {
    let re = Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$");
    s.len() <= 253 && re.is_ok_and(|re| re.is_match(s))
}

/// ObjectMeta's checks on what a client may set: the name, annotations' size.
fn check_meta(object: &Value) -> Vec<schema::Cause> {
    let mut out = Vec::new();
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    if name.len() > 253 {
        out.push(cause(
            "FieldValueInvalid",
            "metadata.name",
            format!("Invalid value: {:?}: must be no more than 253 characters", clip(name)),
        ));
    } else if !is_subdomain(name) {
        out.push(cause(
            "FieldValueInvalid",
            "metadata.name",
            format!(
                "Invalid value: {:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
                clip(name)
            ),
        ));
    }
    let size: usize = object["metadata"]["annotations"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
        .sum();
    if size > 256 * 1024 {
        out.push(cause(
            "FieldValueTooLong",
            "metadata.annotations",
            format!("Too long: must have at most {} bytes", 256 * 1024),
        ));
    }
    out
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

fn cause(reason: &'static str, field: &str, detail: String) -> schema::Cause {
    schema::Cause { reason, field: field.into(), message: format!("{field}: {detail}") }
}

/// The schema applied to a custom resource as its write is decoded: nulls
/// and unknown fields out, defaults in, then validation.
fn apply_schema(res: &Resource, object: &mut Value, opts: &WriteOpts) -> Result<Vec<String>, ApiError> {
    let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let mut causes = check_meta(object);
    let mut warnings = Vec::new();
    if let Some(custom) = &res.custom {
        // apiVersion, kind and metadata are the server's, not the schema's.
        let map = object
            .as_object_mut()
            .ok_or_else(|| ApiError::new(400, "BadRequest", "the body must be an object"))?;
        let meta: Vec<(String, Value)> = ["apiVersion", "kind", "metadata"]
            .iter()
            .filter_map(|k| map.remove(*k).map(|v| (k.to_string(), v)))
            .collect();
        let mut rest = Value::Object(std::mem::take(map));
        let mut pruned = Vec::new();
        schema::prune(&custom.schema, &mut rest, "", &mut pruned);
        schema::default(&custom.schema, &mut rest);
        schema::validate(&custom.schema, &rest, "", &mut causes);
        let mut map: Map<String, Value> = meta.into_iter().collect();
        map.extend(rest.as_object().cloned().unwrap_or_default());
        *object = Value::Object(map);
        let unknown: Vec<String> = pruned.iter().map(|p| format!("unknown field {:?}", p)).collect();
        match opts.field_validation.as_str() {
            "Strict" if !unknown.is_empty() => {
                return Err(ApiError::new(
                    400,
                    "BadRequest",
                    format!("strict decoding error: {}", unknown.join(", ")),
                ));
            }
            "Ignore" => {}
            _ => warnings = unknown,
        }
    }
    if causes.is_empty() {
        Ok(warnings)
    } else {
        Err(ApiError::invalid(res, &name, &causes))
    }
}

/// Now as the apiserver writes times (RFC 3339, whole seconds, UTC).
fn now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn key(res: &Resource, ns: Option<&str>, name: &str) -> (String, String, String) {
    (
        res.kind.clone(),
        if res.namespaced { ns.unwrap_or("default").to_string() } else { String::new() },
        name.to_string(),
    )
}

/// POST of a custom resource or a CRD.
pub(super) fn create(
    inner: &Inner,
    res: &Resource,
    ns: Option<&str>,
    mut object: Value,
    opts: &WriteOpts,
) -> Result<Written, ApiError> {
    check_kind(res, &object)?;
    if object["metadata"]["name"].as_str().is_none_or(str::is_empty) {
        let Some(prefix) = object["metadata"]["generateName"].as_str().filter(|p| !p.is_empty()) else {
            let c = cause(
                "FieldValueRequired",
                "metadata.name",
                "Required value: name or generateName is required".into(),
            );
            return Err(ApiError::invalid(res, "", &[c]));
        };
        let n = inner.lock().uid + 1;
        object["metadata"]["name"] = json!(format!("{prefix}{n:05}"));
    }
    if res.custom.as_ref().is_some_and(|c| c.status) {
        // Create cannot set status: only the status subresource can.
        object.as_object_mut().map(|m| m.remove("status"));
    }
    let warnings = apply_schema(res, &mut object, opts)?;
    let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let st = inner.lock();
    let key = key(res, ns, &name);
    if st.objects.contains_key(&key) {
        return Err(ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", res.qualified()),
        ));
    }
    let mut st = st;
    let meta = &mut object["metadata"];
    if res.namespaced {
        meta["namespace"] = json!(key.1);
    } else if let Some(m) = meta.as_object_mut() {
        m.remove("namespace");
    }
    meta["uid"] = json!(st.next_uid());
    meta["creationTimestamp"] = json!(now());
    meta["generation"] = json!(1);
    Ok((store(inner, st, res, key, object, "ADDED")?, warnings))
}

/// Stores a write (a CRD's also serves its type) and wakes the watches.
fn store(
    inner: &Inner,
    mut st: std::sync::MutexGuard<'_, State>,
    res: &Resource,
    key: (String, String, String),
    mut object: Value,
    event: &'static str,
) -> Result<Value, ApiError> {
    if res.kind == crd_kind() {
        register_crd(&mut st, &mut object)?;
    }
    st.record(&res.kind, event, &mut object);
    st.objects.insert(key, object.clone());
    drop(st);
    inner.changed.notify_all();
    Ok(object)
}

/// Everything but `metadata` (and `status`, with the status subresource):
/// what a change of bumps the generation.
fn content(object: &Value, without_status: bool) -> Value {
    let mut v = object.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        if without_status {
            m.remove("status");
        }
    }
    v
}

/// PUT of an object (`status`: of its status subresource).
pub(super) fn update(
    inner: &Inner,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    mut object: Value,
    opts: &WriteOpts,
    status: bool,
) -> Result<Written, ApiError> {
    let strict_types = res.custom.is_some() || res.kind == crd_kind();
    if strict_types {
        check_kind(res, &object)?;
    }
    match object["metadata"]["name"].as_str() {
        None | Some("") => object["metadata"]["name"] = json!(name),
        Some(n) if n != name => {
            return Err(ApiError::new(
                400,
                "BadRequest",
                format!("the name of the object ({n}) does not match the name on the URL ({name})"),
            ));
        }
        Some(_) => {}
    }
    let key = key(res, ns, name);
    let current = inner.lock().objects.get(&key).cloned();
    let Some(current) = current else {
        return Err(ApiError::not_found(&format!("{} \"{name}\" not found", res.qualified())));
    };
    let current_rv = current["metadata"]["resourceVersion"].clone();
    match object["metadata"]["resourceVersion"].as_str().filter(|r| !r.is_empty()) {
        // Custom resources allow no unconditional update.
        None if strict_types => {
            let c = cause(
                "FieldValueInvalid",
                "metadata.resourceVersion",
                "Invalid value: 0x0: must be specified for an update".into(),
            );
            return Err(ApiError::invalid(res, name, &[c]));
        }
        Some(rv) if Some(rv) != current_rv.as_str() => return Err(ApiError::conflict(res, name)),
        _ => {}
    }
    let status_sub = res.custom.as_ref().is_some_and(|c| c.status);
    let mut new = if status {
        // The status subresource writes the status and nothing else.
        let mut n = current.clone();
        match object.get("status") {
            Some(s) => n["status"] = s.clone(),
            None => {
                n.as_object_mut().map(|m| m.remove("status"));
            }
        }
        n
    } else {
        if status_sub {
            match current.get("status") {
                Some(s) => object["status"] = s.clone(),
                None => {
                    object.as_object_mut().map(|m| m.remove("status"));
                }
            }
        }
        // What the server owns in metadata stays the server's.
        for field in ["uid", "creationTimestamp", "generation", "namespace"] {
            match current["metadata"].get(field) {
                Some(v) => object["metadata"][field] = v.clone(),
                None => {
                    object["metadata"].as_object_mut().map(|m| m.remove(field));
                }
            }
        }
        object
    };
    new["metadata"]["resourceVersion"] = current_rv;
    let warnings = if strict_types { apply_schema(res, &mut new, opts)? } else { Vec::new() };
    if !status && res.custom.is_some() && content(&new, status_sub) != content(&current, status_sub) {
        let g = current["metadata"]["generation"].as_i64().unwrap_or(0);
        new["metadata"]["generation"] = json!(g + 1);
    }
    if new == current {
        return Ok((current, warnings)); // nothing changed: nothing stored
    }
    let st = inner.lock();
    // Re-checked under the lock: a write in between makes this one stale.
    if st.objects.get(&key).map(|o| &o["metadata"]["resourceVersion"])
        != Some(&current["metadata"]["resourceVersion"])
    {
        return Err(ApiError::conflict(res, name));
    }
    Ok((store(inner, st, res, key, new, "MODIFIED")?, warnings))
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// PATCH: a JSON merge patch applied to the stored object, then written as
/// an update on the resourceVersion it was applied to (the patch's own
/// `metadata.resourceVersion`, if it has one, is a precondition). A write in
/// between makes the server apply the patch again, as the real one does.
#[allow(clippy::too_many_arguments, reason = "one PATCH request's parts")]
pub(super) fn patch(
    inner: &Inner,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    content_type: &str,
    patch: Value,
    opts: &WriteOpts,
    status: bool,
) -> Result<Written, ApiError> {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    match media {
        "application/merge-patch+json" => {}
        "application/strategic-merge-patch+json" if res.custom.is_some() => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            ));
        }
        other => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!("patch type {other:?} is not implemented by the test apiserver (merge patch only)"),
            ));
        }
    }
    let precondition = patch["metadata"]["resourceVersion"].as_str().map(str::to_string);
    loop {
        let current = inner.lock().objects.get(&key(res, ns, name)).cloned();
        let Some(current) = current else {
            return Err(ApiError::not_found(&format!("{} \"{name}\" not found", res.qualified())));
        };
        let rv = current["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string();
        if precondition.as_ref().is_some_and(|p| *p != rv) {
            return Err(ApiError::conflict(res, name));
        }
        let mut new = current;
        merge_patch(&mut new, &patch);
        new["metadata"]["resourceVersion"] = json!(rv);
        match update(inner, res, ns, name, new, opts, status) {
            Err(e) if e.code == 409 && precondition.is_none() => continue,
            r => return r,
        }
    }
}

/// DELETE, with DeleteOptions' preconditions. Deleting a CRD deletes its
/// objects and stops serving them.
pub(super) fn delete(
    inner: &Inner,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    options: &Value,
) -> Result<Value, ApiError> {
    let mut st = inner.lock();
    let key = key(res, ns, name);
    let Some(current) = st.objects.get(&key).cloned() else {
        return Err(ApiError::not_found(&format!("{} \"{name}\" not found", res.qualified())));
    };
    for (field, label) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
        let want = options["preconditions"][field].as_str();
        let got = current["metadata"][field].as_str().unwrap_or_default();
        if let Some(want) = want.filter(|w| *w != got) {
            let msg = format!(
                "Precondition failed: {label} in precondition: {want}, {label} in object meta: {got}"
            );
            return Err(ApiError::new(409, "Conflict", msg));
        }
    }
    let mut gone = st.objects.remove(&key).unwrap_or(current);
    st.record(&res.kind, "DELETED", &mut gone);
    if res.kind == crd_kind() {
        if let Some(kind) = gone["spec"]["names"]["kind"].as_str() {
            st.custom.remove(kind);
            let keys: Vec<_> = st.objects.keys().filter(|k| k.0 == kind).cloned().collect();
            for k in keys {
                if let Some(mut o) = st.objects.remove(&k) {
                    st.record(kind, "DELETED", &mut o);
                }
            }
        }
    }
    drop(st);
    inner.changed.notify_all();
    Ok(gone)
}

/// Serves a CRD's type (refused, 422, where this server could not serve
/// it as the real one does) and fills in the status the real server sets.
fn register_crd(st: &mut State, crd: &mut Value) -> Result<(), ApiError> {
    let res = Resource::builtin(Kind::CustomResourceDefinition);
    let name = crd["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let bad = |field: &str, detail: String| {
        ApiError::invalid(&res, &name, &[cause("FieldValueInvalid", field, detail)])
    };
    let spec = &crd["spec"];
    let (group, names) = (spec["group"].as_str().unwrap_or_default(), &spec["names"]);
    let kind = names["kind"].as_str().unwrap_or_default().to_string();
    let plural = names["plural"].as_str().unwrap_or_default().to_string();
    if group.is_empty() || kind.is_empty() || plural.is_empty() {
        return Err(bad(
            "spec",
            "Invalid value: spec.group, spec.names.kind and spec.names.plural are required".into(),
        ));
    }
    if name != format!("{plural}.{group}") {
        return Err(bad(
            "metadata.name",
            format!("Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    if Kind::from_name(&kind).is_some() || st.custom.get(&kind).is_some_and(|r| r.group != group) {
        return Err(bad(
            "spec.names.kind",
            format!("Invalid value: {kind:?}: the test apiserver serves that kind already"),
        ));
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    let [version] = versions.as_slice() else {
        return Err(bad(
            "spec.versions",
            "Invalid value: exactly one version: the test apiserver does no conversion".into(),
        ));
    };
    if version["served"] != true || version["storage"] != true {
        return Err(bad(
            "spec.versions[0]",
            "Invalid value: the one version must be served and stored".into(),
        ));
    }
    let at = "spec.versions[0].schema.openAPIV3Schema";
    let schema = version["schema"]["openAPIV3Schema"].clone();
    if schema.is_null() {
        return Err(ApiError::invalid(
            &res,
            &name,
            &[cause("FieldValueRequired", at, "Required value: schemas are required".into())],
        ));
    }
    schema::check(&schema, at).map_err(|e| bad(at, format!("Invalid value: {e}")))?;
    let columns = version["additionalPrinterColumns"].as_array().cloned().unwrap_or_default();
    for (i, c) in columns.iter().enumerate() {
        let path = c["jsonPath"].as_str().unwrap_or_default();
        jsonpath::check(path).map_err(|e| {
            bad(
                &format!("spec.versions[0].additionalPrinterColumns[{i}].jsonPath"),
                format!("Invalid value: {e}"),
            )
        })?;
    }
    let version_name = version["name"].as_str().unwrap_or("v1").to_string();
    let singular = names["singular"].as_str().map_or_else(|| kind.to_lowercase(), str::to_string);
    let short_names = names["shortNames"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect();
    let custom = Custom { schema, status: !version["subresources"]["status"].is_null(), columns };
    st.custom.insert(
        kind.clone(),
        Resource {
            group: group.into(),
            version: version_name.clone(),
            kind,
            plural,
            singular,
            short_names,
            namespaced: spec["scope"] == "Namespaced",
            custom: Some(std::sync::Arc::new(custom)),
        },
    );
    let t = now();
    crd["status"] = json!({
        "acceptedNames": names,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": t},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": t},
        ],
        "storedVersions": [version_name],
    });
    Ok(())
}

/// A `meta.k8s.io/v1` Table of `items` (server-side printing): the name,
/// then a custom resource's printer columns (no columns: its age).
pub(super) fn table(res: &Resource, items: &[Value], list_meta: &Value) -> Value {
    let columns: Vec<Value> = res.custom.as_ref().map(|c| c.columns.clone()).unwrap_or_default();
    let mut defs = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
    ];
    for c in &columns {
        defs.push(json!({"name": c["name"], "type": c["type"], "format": c.get("format").cloned().unwrap_or(json!("")),
                          "description": c.get("description").cloned().unwrap_or(json!("")), "priority": c.get("priority").cloned().unwrap_or(json!(0))}));
    }
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut cells = vec![o["metadata"]["name"].clone()];
            for c in &columns {
                let path = c["jsonPath"].as_str().unwrap_or_default();
                // Checked at CRD creation; no value is a null cell.
                let v = jsonpath::eval(o, path).ok().and_then(|v| v.into_iter().next()).unwrap_or(Value::Null);
                cells.push(v);
            }
            let partial = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]});
            json!({"cells": cells, "object": partial})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "columnDefinitions": defs, "rows": rows})
}

/// `GET /api`.
pub(super) fn api_versions(req: &Request) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"],
           "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": req.header("host")}]})
}

/// `GET /apis` (the legacy, unaggregated form).
pub(super) fn api_groups(st: &State) -> Value {
    let mut groups: Vec<(String, String)> =
        st.resources().into_iter().filter(|r| !r.group.is_empty()).map(|r| (r.group, r.version)).collect();
    groups.sort();
    groups.dedup();
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /api/v1`, `GET /apis/<group>/<version>`.
pub(super) fn api_resources(st: &State, group: &str, version: &str) -> Option<Value> {
    let served: Vec<Resource> =
        st.resources().into_iter().filter(|r| r.group == group && r.version == version).collect();
    if served.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for r in &served {
        let mut entry = json!({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind, "verbs": r.verbs()});
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        resources.push(entry);
        if r.custom.as_ref().is_some_and(|c| c.status) {
            resources.push(
                json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced,
                                  "kind": r.kind, "verbs": ["get", "patch", "update"]}),
            );
        }
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}

/// The group-versions with an OpenAPI v3 document here: the CRDs' and the custom resources'.
fn openapi_group_versions(st: &State) -> Vec<(String, String)> {
    let mut gvs: Vec<(String, String)> =
        st.custom.values().map(|r| (r.group.clone(), r.version.clone())).collect();
    gvs.push(("apiextensions.k8s.io".into(), "v1".into()));
    gvs.sort();
    gvs.dedup();
    gvs
}

/// `GET /openapi/v3`.
pub(super) fn openapi_root(st: &State) -> Value {
    let paths: Map<String, Value> = openapi_group_versions(st)
        .into_iter()
        .map(|(g, v)| {
            let url = format!("/openapi/v3/apis/{g}/{v}?hash={}", st.custom.len());
            (format!("apis/{g}/{v}"), json!({"serverRelativeURL": url}))
        })
        .collect();
    json!({"paths": paths})
}

/// `GET /openapi/v3/apis/<group>/<version>`: the PATCH of each resource with
/// its `fieldValidation` parameter (what kubectl checks before it sends
/// `fieldValidation=Strict`); schemas are not described.
pub(super) fn openapi_group(st: &State, group: &str, version: &str) -> Option<Value> {
    if !openapi_group_versions(st).contains(&(group.to_string(), version.to_string())) {
        return None;
    }
    let mut paths = Map::new();
    for r in st.resources().into_iter().filter(|r| r.group == group && r.version == version) {
        let ns = if r.namespaced { "namespaces/{namespace}/" } else { "" };
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let param = json!({"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}});
        let op = json!({"x-kubernetes-group-version-kind": gvk, "parameters": [param],
                        "responses": {"200": {"description": "OK"}}, "operationId": format!("patch{}", r.kind)});
        paths.insert(format!("/apis/{group}/{version}/{ns}{}/{{name}}", r.plural), json!({"patch": op}));
    }
    Some(
        json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.34.0"}, "paths": paths, "components": {"schemas": {}}}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patches_follow_rfc_7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
        merge_patch(&mut t, &json!({"c": [1]}));
        assert_eq!(t, json!({"a": "z", "c": [1]}));
    }

    #[test]
    fn times_are_rfc_3339_utc() {
        let t = now();
        assert!(Regex::new(r"^20\d\d-\d\d-\d\dT\d\d:\d\d:\d\dZ$").expect("re").is_match(&t), "{t}");
    }

    #[test]
    fn names_are_dns_subdomains() {
        assert!(is_subdomain("red") && is_subdomain("a.b-c"));
        assert!(!is_subdomain("Red") && !is_subdomain("-a") && !is_subdomain(&"a".repeat(254)));
    }
}
