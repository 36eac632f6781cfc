//! The `NetNamespace` object (`k8s-ovs.io/v1`, cluster-scoped, one per
//! namespace): the Kubernetes API's way to ask for join / isolate / global,
//! and a view of what etcd holds. Pure: the object's type, what its spec asks
//! (validated again here, whatever the apiserver let through), and the status
//! derived from etcd's records; the I/O is in `kube_objects`.
//!
//! A request is one generation of one object: the apiserver bumps
//! `metadata.generation` on every spec change and on nothing else, so the
//! controller takes each generation once (etcd's `kube/netnamespaces/<ns>`
//! says which it took) and a manifest applied twice asks nothing the second
//! time. docs/etcd-schema.md argues the design.

use std::borrow::Cow;
use std::collections::BTreeMap;

use etcd_schema::{Action, KubeRequest, RequestOutcome, GLOBAL_VNI};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{json, Value};

pub const GROUP: &str = "k8s-ovs.io";
pub const VERSION: &str = "v1";
pub const KIND: &str = "NetNamespace";
pub const PLURAL: &str = "netnamespaces";
/// The longest namespace name (a DNS-1123 label).
pub const MAX_NAME: usize = 63;
/// Status texts (errors, pending actions) are cut to this many characters:
/// an etcd edit may carry a megabyte of garbage, the status never does
/// (the CRD allows 1024).
pub const MAX_TEXT: usize = 1000;

/// The object as the controller reads it. `spec` and `status` stay JSON:
/// a typed spec would make one malformed object (possible where the CRD's
/// schema is not enforced) fail the whole list, and with it every object's
/// status; [`asked`] judges a spec instead. An object without `spec` asks
/// nothing: it is the view the controller creates for every namespace.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct NetNamespaceObject {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<Value>,
    #[serde(default)]
    pub status: Option<Value>,
}

impl Serialize for NetNamespaceObject {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("apiVersion", &format!("{GROUP}/{VERSION}"))?;
        m.serialize_entry("kind", KIND)?;
        m.serialize_entry("metadata", &self.metadata)?;
        if let Some(spec) = &self.spec {
            m.serialize_entry("spec", spec)?;
        }
        if let Some(status) = &self.status {
            m.serialize_entry("status", status)?;
        }
        m.end()
    }
}

impl NetNamespaceObject {
    /// A view of namespace `name` (no spec: it asks nothing).
    pub fn view(name: &str) -> NetNamespaceObject {
        NetNamespaceObject {
            metadata: ObjectMeta { name: Some(name.to_string()), ..ObjectMeta::default() },
            ..NetNamespaceObject::default()
        }
    }
}

impl kube::Resource for NetNamespaceObject {
    type DynamicType = ();
    type Scope = kube::core::ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        KIND.into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        PLURAL.into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// What the controller keeps of an object (the `KubeView`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectView {
    pub uid: String,
    pub generation: i64,
    pub resource_version: String,
    pub spec: Option<Value>,
    pub status: Option<Value>,
}

impl ObjectView {
    pub fn of(o: &NetNamespaceObject) -> ObjectView {
        ObjectView {
            uid: o.metadata.uid.clone().unwrap_or_default(),
            generation: o.metadata.generation.unwrap_or(0),
            resource_version: o.metadata.resource_version.clone().unwrap_or_default(),
            spec: o.spec.clone(),
            status: o.status.clone(),
        }
    }

    /// Whether `taken` (etcd's record of the last request taken) covers
    /// this object's current generation.
    pub fn taken_by(&self, taken: Option<&KubeRequest>) -> bool {
        taken.is_some_and(|t| t.uid == self.uid && t.generation >= self.generation)
    }
}

/// Why a spec asks nothing valid. The text names the field and the value
/// (cut short) and is what the object's condition and etcd's error record show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("spec = {0}: must be an object")]
    NotObject(String),
    #[error("spec.action = {0}: must be a string")]
    ActionNotString(String),
    #[error("spec.action = {0}: unknown action; expected join, isolate or global")]
    UnknownAction(String),
    #[error("spec.target: join needs the namespace to join")]
    MissingTarget,
    #[error("spec.target = {0}: must be a string")]
    TargetNotString(String),
    #[error("spec.target = {0}: not a namespace name (a DNS-1123 label: at most 63 of a-z, 0-9 and '-', starting and ending with a letter or digit)")]
    BadTarget(String),
    #[error("spec.target = {0}: a namespace cannot join itself")]
    JoinItself(String),
    #[error("spec.target = {0}: only join takes a target")]
    TargetWithoutJoin(String),
}

/// `s` cut to `max` characters (an ellipsis marks the cut).
pub fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// A JSON value as an error shows it: compact, cut to 80 characters.
fn shown(v: &Value) -> String {
    clip(&v.to_string(), 80)
}

/// Whether `s` is a namespace name (DNS-1123 label), as the apiserver checks them.
pub fn is_dns_label(s: &str) -> bool {
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME
        && b.iter().all(|&c| alnum(c) || c == b'-')
        && alnum(b[0])
        && alnum(b[b.len() - 1])
}

/// What the spec of object `name` asks: `None` without a spec (a view). A
/// missing `spec.action` is `isolate`, the CRD's default: the object means
/// the same whether or not the apiserver defaulted it.
pub fn asked(name: &str, spec: Option<&Value>) -> Result<Option<Action>, SpecError> {
    let Some(spec) = spec else { return Ok(None) };
    let Some(fields) = spec.as_object() else { return Err(SpecError::NotObject(shown(spec))) };
    let action = match fields.get("action") {
        None | Some(Value::Null) => "isolate",
        Some(Value::String(s)) => s.as_str(),
        Some(v) => return Err(SpecError::ActionNotString(shown(v))),
    };
    let target = match fields.get("target") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(v) => return Err(SpecError::TargetNotString(shown(v))),
    };
    let quoted = |s: &str| shown(&Value::from(s));
    match (action, target) {
        ("join", None | Some("")) => Err(SpecError::MissingTarget),
        ("join", Some(t)) if !is_dns_label(t) => Err(SpecError::BadTarget(quoted(t))),
        ("join", Some(t)) if t == name => Err(SpecError::JoinItself(quoted(t))),
        ("join", Some(t)) => Ok(Some(Action::Join(t.to_string()))),
        ("isolate" | "global", Some(t)) => Err(SpecError::TargetWithoutJoin(quoted(t))),
        ("isolate", None) => Ok(Some(Action::Isolate)),
        ("global", None) => Ok(Some(Action::Global)),
        (other, _) => Err(SpecError::UnknownAction(quoted(other))),
    }
}

/// An action as `k8s-ovs-ctl list` and the status show it.
pub fn describe(action: &Action) -> String {
    match action {
        Action::Join(to) => format!("join {to}"),
        Action::Isolate => "isolate".into(),
        Action::Global => "global".into(),
    }
}

/// An object's request that etcd's record says is not taken yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untaken {
    pub uid: String,
    pub generation: i64,
    /// The spec as JSON text (the `Edit` of an error record).
    pub spec: String,
    pub asked: Result<Action, SpecError>,
}

impl Untaken {
    /// The record of taking this request with `outcome`.
    pub fn taken(&self, outcome: RequestOutcome, message: String) -> KubeRequest {
        KubeRequest { uid: self.uid.clone(), generation: self.generation, outcome, message }
    }
}

/// The request of `object` (of namespace `name`) not taken yet, if it makes one.
pub fn untaken(name: &str, object: &ObjectView, taken: Option<&KubeRequest>) -> Option<Untaken> {
    if object.taken_by(taken) {
        return None;
    }
    let asked = asked(name, object.spec.as_ref()).transpose()?;
    Some(Untaken {
        uid: object.uid.clone(),
        generation: object.generation,
        spec: object.spec.as_ref().map(Value::to_string).unwrap_or_default(),
        asked,
    })
}

/// One status condition (metav1.Condition's fields; the time as the RFC 3339
/// text the apiserver stores, so an unchanged condition compares equal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: &'static str,
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    pub last_transition_time: String,
}

/// The `Applied` condition: how the last request was answered.
pub const APPLIED: &str = "Applied";
/// The `InSync` condition: whether the namespace's network is what the spec asks now.
pub const IN_SYNC: &str = "InSync";

/// The status of an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The NetID agents program (the controller's applied copy).
    #[serde(rename = "netID", skip_serializing_if = "Option::is_none")]
    pub net_id: Option<u32>,
    /// The generation the controller has handled: taken, or asking nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// An action not applied yet: the etcd record's, else this object's.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pending: String,
    /// The last rejected edit of the namespace's network, from either path
    /// (etcd's error record beside the record).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub last_error: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// What the status of one object is derived from.
pub struct StatusInputs<'a> {
    pub name: &'a str,
    pub object: &'a ObjectView,
    /// Kubernetes has the namespace.
    pub exists: bool,
    /// The NetID of every namespace (applied copies, else valid records).
    pub ids: &'a BTreeMap<String, u32>,
    /// The action pending in the etcd record, if any.
    pub etcd_pending: Option<&'a Action>,
    /// The Error of etcd's error record beside the record.
    pub error: Option<&'a str>,
    pub taken: Option<&'a KubeRequest>,
    /// RFC 3339, for conditions that change now.
    pub now: &'a str,
}

/// The status an object should have. Conditions that keep their status
/// keep the `lastTransitionTime` the current status has.
pub fn status(inp: &StatusInputs<'_>) -> Status {
    let obj = inp.object;
    let taken = inp.taken.filter(|t| t.uid == obj.uid);
    let untaken = untaken(inp.name, obj, taken);
    let mut conditions = Vec::new();
    let applied = match (&untaken, taken) {
        (Some(u), _) => Some(pending_condition(inp, u)),
        (None, Some(t)) => Some(taken_condition(t)),
        (None, None) => None,
    };
    conditions.extend(applied);
    if let Ok(Some(action)) = asked(inp.name, obj.spec.as_ref()) {
        if inp.exists {
            conditions.push(in_sync(inp, &action));
        }
    }
    let previous = obj.status.as_ref().and_then(|s| s.get("conditions")).and_then(Value::as_array);
    for c in &mut conditions {
        let same = previous.and_then(|p| {
            p.iter().find(|o| o["type"] == c.type_ && o["status"] == c.status)?["lastTransitionTime"]
                .as_str()
                .map(str::to_string)
        });
        c.last_transition_time = same.unwrap_or_else(|| inp.now.to_string());
    }
    let pending = match (inp.etcd_pending, &untaken) {
        (Some(a), _) => describe(a),
        (None, Some(Untaken { asked: Ok(a), .. })) => describe(a),
        _ => String::new(),
    };
    let observed = match (&untaken, taken) {
        (None, _) => Some(obj.generation),
        (Some(_), Some(t)) => Some(t.generation),
        (Some(_), None) => None,
    };
    Status {
        net_id: inp.ids.get(inp.name).copied().filter(|_| inp.exists),
        observed_generation: observed,
        pending: clip(&pending, MAX_TEXT),
        last_error: clip(inp.error.unwrap_or_default(), MAX_TEXT),
        conditions,
    }
}

fn condition(
    type_: &'static str,
    status: &'static str,
    reason: &'static str,
    message: String,
    generation: i64,
) -> Condition {
    Condition {
        type_,
        status,
        reason,
        message: clip(&message, MAX_TEXT),
        observed_generation: Some(generation),
        last_transition_time: String::new(),
    }
}

fn taken_condition(t: &KubeRequest) -> Condition {
    let (status, reason) = match t.outcome {
        RequestOutcome::Applied => ("True", "Applied"),
        RequestOutcome::Rejected => ("False", "Rejected"),
        RequestOutcome::Superseded => ("False", "Superseded"),
    };
    condition(APPLIED, status, reason, t.message.clone(), t.generation)
}

/// A request the controller has not taken: why it waits (or that it is
/// about to be taken: the controller writes etcd before the status).
fn pending_condition(inp: &StatusInputs<'_>, u: &Untaken) -> Condition {
    let (reason, message) = if !inp.exists {
        ("NamespaceNotFound", format!("waiting for namespace {} to exist", inp.name))
    } else {
        ("Pending", "not applied yet".to_string())
    };
    condition(APPLIED, "Unknown", reason, message, u.generation)
}

fn in_sync(inp: &StatusInputs<'_>, action: &Action) -> Condition {
    let g = inp.object.generation;
    let Some(&id) = inp.ids.get(inp.name) else {
        return condition(IN_SYNC, "Unknown", "NoNetID", "the namespace has no NetID yet".into(), g);
    };
    let holds = match action {
        Action::Join(to) => match inp.ids.get(to) {
            Some(&t) if t == id => Ok(format!("NetID {id}, as {to}")),
            Some(&t) => Err(format!("NetID {id}; {to} has NetID {t}")),
            None => Err(format!("NetID {id}; {to} has no NetID")),
        },
        Action::Global if id == GLOBAL_VNI => Ok("global (NetID 0)".to_string()),
        Action::Global => Err(format!("NetID {id}, not global")),
        Action::Isolate if id == GLOBAL_VNI => Err("global (NetID 0), not isolated".to_string()),
        Action::Isolate => {
            let shared: Vec<&str> =
                inp.ids.iter().filter(|(n, &i)| *n != inp.name && i == id).map(|(n, _)| n.as_str()).collect();
            if shared.is_empty() {
                Ok(format!("NetID {id}, alone"))
            } else {
                Err(format!("NetID {id} is shared with {}", shared.join(", ")))
            }
        }
    };
    match holds {
        Ok(m) => condition(IN_SYNC, "True", "InSync", m, g),
        Err(m) => condition(IN_SYNC, "False", "OutOfSync", m, g),
    }
}

/// `status` as the JSON the object holds.
pub fn status_json(s: &Status) -> Value {
    serde_json::to_value(s).unwrap_or_else(|_| json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_asks_one_action_and_anything_else_is_named() {
        let ask = |v: Value| asked("red", Some(&v));
        assert_eq!(asked("red", None), Ok(None));
        assert_eq!(ask(json!({"action": "join", "target": "blue"})), Ok(Some(Action::Join("blue".into()))));
        assert_eq!(ask(json!({"action": "global"})), Ok(Some(Action::Global)));
        assert_eq!(ask(json!({"action": "isolate", "target": null})), Ok(Some(Action::Isolate)));
        assert_eq!(ask(json!({})), Ok(Some(Action::Isolate)), "the CRD's default");
        assert_eq!(
            ask(json!({"action": "join", "target": "blue", "extra": 1})),
            Ok(Some(Action::Join("blue".into())))
        );
        assert_eq!(ask(json!("join")), Err(SpecError::NotObject("\"join\"".into())));
        assert_eq!(ask(json!({"action": 3})), Err(SpecError::ActionNotString("3".into())));
        assert_eq!(ask(json!({"action": "merge"})), Err(SpecError::UnknownAction("\"merge\"".into())));
        assert_eq!(ask(json!({"action": ""})), Err(SpecError::UnknownAction("\"\"".into())));
        assert_eq!(ask(json!({"action": "join"})), Err(SpecError::MissingTarget));
        assert_eq!(ask(json!({"action": "join", "target": ""})), Err(SpecError::MissingTarget));
        assert_eq!(
            ask(json!({"action": "join", "target": "red"})),
            Err(SpecError::JoinItself("\"red\"".into()))
        );
        assert_eq!(
            ask(json!({"action": "join", "target": ["a"]})),
            Err(SpecError::TargetNotString("[\"a\"]".into()))
        );
        assert_eq!(
            ask(json!({"action": "global", "target": "blue"})),
            Err(SpecError::TargetWithoutJoin("\"blue\"".into()))
        );
        for bad in ["Blue", "-a", "a-", "a.b", "a_b", &"a".repeat(64)] {
            assert!(
                matches!(ask(json!({"action": "join", "target": bad})), Err(SpecError::BadTarget(_))),
                "{bad}"
            );
        }
        assert!(ask(json!({"action": "join", "target": "a".repeat(63)})).is_ok());
    }

    #[test]
    fn huge_values_are_cut_short_in_every_message() {
        let huge = "x".repeat(1 << 20);
        let e = asked("red", Some(&json!({"action": huge}))).expect_err("unknown");
        assert!(e.to_string().len() < 200, "{} bytes", e.to_string().len());
        let e = asked("red", Some(&json!({"action": "join", "target": huge}))).expect_err("bad target");
        assert!(e.to_string().len() < 400, "{} bytes", e.to_string().len());
        assert_eq!(clip("héllo", 2), "hé…");
        assert_eq!(clip("ab", 2), "ab");
    }

    fn object(uid: &str, generation: i64, spec: Option<Value>) -> ObjectView {
        ObjectView { uid: uid.into(), generation, resource_version: "1".into(), spec, status: None }
    }

    fn taken(uid: &str, generation: i64, outcome: RequestOutcome, message: &str) -> KubeRequest {
        KubeRequest { uid: uid.into(), generation, outcome, message: message.into() }
    }

    #[test]
    fn a_generation_is_taken_once_and_a_new_object_asks_again() {
        let o = object("u1", 2, Some(json!({"action": "global"})));
        assert!(untaken("red", &o, None).is_some());
        assert!(untaken("red", &o, Some(&taken("u1", 1, RequestOutcome::Applied, ""))).is_some());
        assert!(untaken("red", &o, Some(&taken("u1", 2, RequestOutcome::Rejected, ""))).is_none());
        assert!(
            untaken("red", &o, Some(&taken("u0", 5, RequestOutcome::Applied, ""))).is_some(),
            "re-created"
        );
        assert!(untaken("red", &object("u1", 1, None), None).is_none(), "a view asks nothing");
        let bad =
            untaken("red", &object("u1", 1, Some(json!({"action": "merge"}))), None).expect("a request");
        assert!(bad.asked.is_err());
        assert_eq!(bad.spec, r#"{"action":"merge"}"#);
    }

    struct Case {
        object: ObjectView,
        ids: BTreeMap<String, u32>,
        taken: Option<KubeRequest>,
        exists: bool,
        etcd_pending: Option<Action>,
        error: Option<String>,
    }

    impl Case {
        fn new(spec: Option<Value>, generation: i64) -> Case {
            Case {
                object: object("u1", generation, spec),
                ids: [("red", 12), ("blue", 13), ("green", 0)].map(|(n, i)| (n.to_string(), i)).into(),
                taken: None,
                exists: true,
                etcd_pending: None,
                error: None,
            }
        }

        fn status(&self, now: &str) -> Status {
            status(&StatusInputs {
                name: "red",
                object: &self.object,
                exists: self.exists,
                ids: &self.ids,
                etcd_pending: self.etcd_pending.as_ref(),
                error: self.error.as_deref(),
                taken: self.taken.as_ref(),
                now,
            })
        }
    }

    fn cond<'a>(s: &'a Status, t: &str) -> Option<&'a Condition> {
        s.conditions.iter().find(|c| c.type_ == t)
    }

    #[test]
    fn a_view_shows_the_netid_pending_action_and_error_and_no_conditions() {
        let mut c = Case::new(None, 1);
        c.etcd_pending = Some(Action::Join("blue".into()));
        c.error = Some("e".repeat(5000));
        let s = c.status("t0");
        assert_eq!((s.net_id, s.observed_generation, s.pending.as_str()), (Some(12), Some(1), "join blue"));
        assert_eq!(s.last_error.chars().count(), MAX_TEXT + 1, "cut, with the ellipsis");
        assert!(s.conditions.is_empty());
        let v = status_json(&s);
        assert_eq!(v["netID"], 12);
        assert!(v.get("conditions").is_none());
    }

    #[test]
    fn conditions_follow_the_request_and_the_network() {
        let mut c = Case::new(Some(json!({"action": "join", "target": "blue"})), 3);
        // Not taken yet: the controller writes etcd first, then the status.
        let s = c.status("t0");
        let a = cond(&s, APPLIED).expect("Applied");
        assert_eq!((a.status, a.reason, a.observed_generation), ("Unknown", "Pending", Some(3)));
        assert_eq!((s.observed_generation, s.pending.as_str()), (None, "join blue"));
        assert_eq!(cond(&s, IN_SYNC).map(|c| c.status), Some("False"));
        // Applied: red now has blue's NetID.
        c.taken = Some(taken("u1", 3, RequestOutcome::Applied, "join blue: NetID 13"));
        c.ids.insert("red".into(), 13);
        let s = c.status("t1");
        let a = cond(&s, APPLIED).expect("Applied");
        assert_eq!((a.status, a.reason, a.message.as_str()), ("True", "Applied", "join blue: NetID 13"));
        assert_eq!((s.observed_generation, s.pending.as_str()), (Some(3), ""));
        let i = cond(&s, IN_SYNC).expect("InSync");
        assert_eq!((i.status, i.message.as_str()), ("True", "NetID 13, as blue"));
        // An etcd isolate later: still applied, no longer in sync.
        c.ids.insert("red".into(), 14);
        let s = c.status("t2");
        assert_eq!(cond(&s, APPLIED).map(|c| c.status), Some("True"));
        let i = cond(&s, IN_SYNC).expect("InSync");
        assert_eq!(
            (i.status, i.reason, i.message.as_str()),
            ("False", "OutOfSync", "NetID 14; blue has NetID 13")
        );
    }

    #[test]
    fn unchanged_conditions_keep_their_transition_time() {
        let mut c = Case::new(Some(json!({"action": "global"})), 1);
        c.taken = Some(taken("u1", 1, RequestOutcome::Rejected, "no"));
        let first = c.status("t0");
        c.object.status = Some(status_json(&first));
        let again = c.status("t9");
        assert_eq!(again, first, "nothing changed, nothing to write");
        c.taken = Some(taken("u1", 1, RequestOutcome::Applied, "global: NetID 0"));
        c.ids.insert("red".into(), 0);
        let changed = c.status("t9");
        assert_eq!(cond(&changed, APPLIED).map(|c| c.last_transition_time.as_str()), Some("t9"));
    }

    #[test]
    fn a_request_for_a_namespace_that_does_not_exist_waits() {
        let mut c = Case::new(Some(json!({"action": "global"})), 1);
        c.exists = false;
        let s = c.status("t0");
        let a = cond(&s, APPLIED).expect("Applied");
        assert_eq!((a.status, a.reason), ("Unknown", "NamespaceNotFound"));
        assert_eq!((s.net_id, s.pending.as_str()), (None, "global"));
        assert!(cond(&s, IN_SYNC).is_none());
    }

    #[test]
    fn isolate_holds_only_alone_and_off_global() {
        let mut c = Case::new(Some(json!({"action": "isolate"})), 1);
        assert_eq!(cond(&c.status("t"), IN_SYNC).map(|c| c.status), Some("True"));
        c.ids.insert("blue".into(), 12);
        let s = c.status("t");
        assert_eq!(cond(&s, IN_SYNC).map(|c| c.message.as_str()), Some("NetID 12 is shared with blue"));
        c.ids.insert("red".into(), 0);
        assert_eq!(cond(&c.status("t"), IN_SYNC).map(|c| c.status), Some("False"));
    }
}
