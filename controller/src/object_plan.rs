//! What the leading controller does to the NetNamespace objects, as a pure
//! function of etcd's records (after its writes) and the Kubernetes view: a
//! view object for every namespace that has a record, the object of a
//! namespace that is gone deleted, and every object's status derived from
//! etcd (`netns_object::status`). `kube_objects` carries the operations out.

use std::collections::BTreeMap;

use etcd_schema::Keys;
use serde_json::Value;

use crate::model::{KubeView, Records};
use crate::netns_object::{status, status_json, ObjectView, StatusInputs};

/// One write to the Kubernetes API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectOp {
    /// The view of a namespace that has no object (no spec: it asks nothing).
    Create { name: String },
    /// The object of a namespace Kubernetes no longer has, if it asks
    /// nothing or its request was taken (for the namespace that went). One
    /// whose request waits stays: GitOps may create it before its namespace.
    Delete { name: String, uid: String },
    /// The status replaced, on the resourceVersion it was derived from
    /// (a 409 Conflict means the object changed: derive it again).
    Status { name: String, resource_version: String, status: Value },
}

/// The NetID agents program for every namespace: its applied copy, else its
/// record's (what `k8s-ovs-ctl list` shows).
pub fn net_ids(records: &Records) -> BTreeMap<String, u32> {
    let mut ids: BTreeMap<String, u32> =
        records.netns.iter().filter_map(|(n, e)| Some((n.clone(), e.parsed.as_ref().ok()?.net_id))).collect();
    for (n, e) in &records.applied {
        if let Ok(rec) = &e.parsed {
            ids.insert(n.clone(), rec.net_id);
        }
    }
    ids
}

/// Every write that brings the objects to etcd's state; nothing once they
/// are (`now`, RFC 3339, only stamps conditions that change).
pub fn plan_objects(keys: &Keys, records: &Records, kube: &KubeView, now: &str) -> Vec<ObjectOp> {
    let (Some(namespaces), Some(objects)) = (&kube.namespaces, &kube.objects) else { return Vec::new() };
    let ids = net_ids(records);
    let mut out = Vec::new();
    for name in namespaces.iter().filter(|n| records.netns.contains_key(*n) && !objects.contains_key(*n)) {
        out.push(ObjectOp::Create { name: name.clone() });
    }
    for (name, object) in objects {
        let exists = namespaces.contains(name);
        if !exists && (object.spec.is_none() || handled(object)) {
            out.push(ObjectOp::Delete { name: name.clone(), uid: object.uid.clone() });
            continue;
        }
        let etcd_pending = records.netns.get(name).and_then(|e| e.parsed.as_ref().ok()?.action.as_ref());
        let error = records.errors.get(&keys.netnamespace_error(name)).map(|e| e.error.as_str());
        let want = status_json(&status(&StatusInputs {
            name,
            object,
            exists,
            ids: &ids,
            etcd_pending,
            error,
            taken: records.taken(name),
            now,
        }));
        if object.status.as_ref() != Some(&want) {
            out.push(ObjectOp::Status {
                name: name.clone(),
                resource_version: object.resource_version.clone(),
                status: want,
            });
        }
    }
    out
}

/// The object's status says its current generation was handled.
fn handled(object: &ObjectView) -> bool {
    let observed = object.status.as_ref().and_then(|s| s["observedGeneration"].as_i64());
    observed.is_some_and(|g| g >= object.generation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_schema::{parse_network_config, NetworkConfig};
    use serde_json::json;

    const CONFIG: &str = r#"{"Name":"k8ssdn","Network":"172.11.0.0/16","HostSubnetLength":10,"ServiceNetwork":"10.96.0.0/12","PluginName":"k8s-ovs-multitenant"}"#;

    fn world(records: &[(&str, u32)], namespaces: &[&str]) -> (Keys, Records, KubeView) {
        let keys = Keys::new("/p", "k8ssdn");
        let config: NetworkConfig = parse_network_config("/p/config", CONFIG).expect("config");
        let mut r = Records::default();
        for (i, (ns, id)) in records.iter().enumerate() {
            let v = format!(r#"{{"NetName":"{ns}","NetID":{id},"Action":"","Namespace":""}}"#);
            r.load(&keys, &config, &keys.netnamespace(ns), v.as_bytes(), i as i64 + 2);
            r.load(&keys, &config, &keys.applied_netnamespace(ns), v.as_bytes(), i as i64 + 2);
        }
        let kube = KubeView {
            namespaces: Some(namespaces.iter().map(|s| s.to_string()).collect()),
            nodes: Some(BTreeMap::new()),
            objects: Some(BTreeMap::new()),
        };
        (keys, r, kube)
    }

    fn obj(uid: &str, spec: Option<Value>, status: Option<Value>) -> ObjectView {
        ObjectView { uid: uid.into(), generation: 1, resource_version: "7".into(), spec, status }
    }

    #[test]
    fn every_namespace_with_a_record_gets_a_view_then_its_status() {
        let (keys, records, mut kube) = world(&[("red", 12), ("blue", 13)], &["red", "blue", "new"]);
        let ops = plan_objects(&keys, &records, &kube, "t0");
        let created: Vec<&str> = ops
            .iter()
            .filter_map(|o| match o {
                ObjectOp::Create { name } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(created, ["blue", "red"], "not `new`: it has no record yet");
        kube.objects = Some([("red".to_string(), obj("u1", None, None))].into());
        let ops = plan_objects(&keys, &records, &kube, "t0");
        let status = ops.iter().find_map(|o| match o {
            ObjectOp::Status { name, resource_version, status } if name == "red" => {
                Some((resource_version, status))
            }
            _ => None,
        });
        let (rv, status) = status.expect("red's status");
        assert_eq!(
            (rv.as_str(), &status["netID"], &status["observedGeneration"]),
            ("7", &json!(12), &json!(1))
        );
        // Written: nothing more to do for red.
        kube.objects = Some([("red".to_string(), obj("u1", None, Some(status.clone())))].into());
        let ops = plan_objects(&keys, &records, &kube, "t5");
        assert_eq!(ops, vec![ObjectOp::Create { name: "blue".into() }]);
    }

    #[test]
    fn objects_of_gone_namespaces_go_unless_their_request_waits() {
        let (keys, records, mut kube) = world(&[("red", 12)], &["red"]);
        let handled = Some(json!({"observedGeneration": 1}));
        kube.objects = Some(
            [
                ("view".to_string(), obj("u1", None, None)),
                ("joined".to_string(), obj("u2", Some(json!({"action": "global"})), handled)),
                ("early".to_string(), obj("u3", Some(json!({"action": "global"})), None)),
            ]
            .into(),
        );
        let ops = plan_objects(&keys, &records, &kube, "t0");
        assert!(ops.contains(&ObjectOp::Delete { name: "view".into(), uid: "u1".into() }));
        assert!(ops.contains(&ObjectOp::Delete { name: "joined".into(), uid: "u2".into() }));
        let early = ops.iter().find_map(|o| match o {
            ObjectOp::Status { name, status, .. } if name == "early" => Some(status),
            _ => None,
        });
        let early = early.expect("early waits with a status");
        assert_eq!(early["conditions"][0]["reason"], "NamespaceNotFound");
        assert!(early.get("netID").is_none());
    }

    #[test]
    fn nothing_happens_before_both_lists_are_complete() {
        let (keys, records, mut kube) = world(&[("red", 12)], &["red"]);
        kube.objects = None;
        assert!(plan_objects(&keys, &records, &kube, "t").is_empty());
    }
}
