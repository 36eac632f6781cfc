//! The planner on hand-built views: every action, every bad edit, resync.

use super::*;
use crate::netns_object::ObjectView;
use etcd_schema::{parse_net_namespace, parse_network_config};

const CONFIG: &str = r#"{"Name":"k8ssdn","Network":"172.11.0.0/16","HostSubnetLength":10,"ServiceNetwork":"10.96.0.0/12","PluginName":"k8s-ovs-multitenant"}"#;

struct World {
    keys: Keys,
    config: NetworkConfig,
    records: Records,
    kube: KubeView,
    policy: Policy,
    vnis: VniAllocator,
    subnets: SubnetAllocator,
    grace: SubnetGrace,
    now: std::time::Instant,
    rev: i64,
    /// Error text shown beside each record (error key -> text).
    shown: BTreeMap<String, String>,
}

impl World {
    fn new(namespaces: &[&str]) -> World {
        let config = parse_network_config("/p/config", CONFIG).expect("config");
        let subnets = SubnetAllocator::new(&config);
        World {
            keys: Keys::new("/p", "k8ssdn"),
            config,
            records: Records::default(),
            kube: KubeView {
                namespaces: Some(namespaces.iter().map(|s| s.to_string()).collect()),
                nodes: Some(BTreeMap::new()),
                objects: Some(BTreeMap::new()),
            },
            policy: Policy::new(["admin".to_string()]),
            vnis: VniAllocator::default(),
            subnets,
            grace: SubnetGrace::new(std::time::Duration::from_secs(300)),
            now: std::time::Instant::now(),
            rev: 1,
            shown: BTreeMap::new(),
        }
    }

    /// Plans and commits every write, as a leader whose transactions all
    /// succeed, and plans again (the shell replans on each write's echo)
    /// until nothing is left: `applied/complete` follows the round that
    /// wrote the last applied copy.
    fn settle(&mut self) -> Vec<Write> {
        let mut all = Vec::new();
        for _ in 0..4 {
            let writes = self.settle_once();
            if writes.is_empty() {
                break;
            }
            all.extend(writes);
        }
        all
    }

    fn settle_once(&mut self) -> Vec<Write> {
        let inputs = Inputs {
            keys: &self.keys,
            config: &self.config,
            records: &self.records,
            kube: &self.kube,
            policy: &self.policy,
            now: self.now,
        };
        let writes = plan(&inputs, &mut self.vnis, &mut self.subnets, &mut self.grace);
        for w in &writes {
            self.rev += 1;
            self.records.committed(&self.keys, &self.config, w, self.rev);
            match &w.error {
                ErrorWrite::Put(e) => self.shown.insert(w.error_key.clone(), e.error.clone()),
                ErrorWrite::Clear => self.shown.remove(&w.error_key),
                ErrorWrite::Keep => None,
            };
        }
        writes
    }

    /// An operator's `etcdctl put`.
    fn put(&mut self, key: &str, value: &str) {
        self.rev += 1;
        self.records.observe_put(&self.keys, &self.config, key, value.as_bytes(), self.rev);
    }

    fn edit(&mut self, ns: &str, value: &str) {
        let key = self.keys.netnamespace(ns);
        self.put(&key, value);
    }

    fn id(&self, ns: &str) -> u32 {
        match &self.records.netns[ns].parsed {
            Ok(r) => {
                assert_eq!(r.action, None, "{ns} still has an action");
                r.net_id
            }
            Err(e) => panic!("{ns} is not valid: {e}"),
        }
    }

    fn error_of(&self, ns: &str) -> Option<&String> {
        self.shown.get(&self.keys.netnamespace_error(ns))
    }

    fn act(&mut self, ns: &str, action: &str, target: &str) {
        let id = self.id(ns);
        let v = format!(r#"{{"NetName":"{ns}","NetID":{id},"Action":"{action}","Namespace":"{target}"}}"#);
        self.edit(ns, &v);
        self.settle();
    }
}

/// The NetNamespace object of `ns` as the apiserver holds it (a new
/// `generation` each time its spec changes).
fn object(w: &mut World, ns: &str, uid: &str, generation: i64, spec: serde_json::Value) {
    let o = ObjectView {
        uid: uid.into(),
        generation,
        resource_version: "1".into(),
        spec: Some(spec),
        status: None,
    };
    w.kube.objects.get_or_insert_with(BTreeMap::new).insert(ns.to_string(), o);
}

fn taken(w: &World, ns: &str) -> Option<(i64, RequestOutcome, String)> {
    w.records.taken(ns).map(|t| (t.generation, t.outcome, t.message.clone()))
}

#[test]
fn object_requests_apply_like_etcd_edits_once_per_generation() {
    let mut w = World::new(&["a", "b"]);
    w.settle();
    let (a, b) = (w.id("a"), w.id("b"));
    object(&mut w, "a", "u1", 2, serde_json::json!({"action": "join", "target": "b"}));
    let read_at = w.records.netns["a"].rev;
    let writes = w.settle();
    assert_eq!(writes.len(), 1, "one transaction: record, applied copy, error, request record");
    assert!(writes[0].request.is_some() && writes[0].applied.is_some());
    assert_eq!(writes[0].expect_rev, read_at, "on the record as read");
    assert_eq!(w.id("a"), b);
    assert_eq!(w.records.applied["a"].parsed.as_ref().map(|r| r.net_id), Ok(b));
    assert_eq!(taken(&w, "a"), Some((2, RequestOutcome::Applied, format!("join b: NetID {b}"))));
    // The same manifest applied again: the apiserver keeps the generation.
    object(&mut w, "a", "u1", 2, serde_json::json!({"action": "join", "target": "b"}));
    assert!(w.settle().is_empty(), "a generation is taken once");
    // Back to isolated (the join removed from the manifest).
    object(&mut w, "a", "u1", 3, serde_json::json!({"action": "isolate"}));
    w.settle();
    assert!(w.id("a") >= 10 && w.id("a") != b, "a NetID of its own");
    let _ = a;
    object(&mut w, "a", "u1", 4, serde_json::json!({"action": "global"}));
    w.settle();
    assert_eq!(w.id("a"), 0);
    // Already global: taken, the record untouched.
    object(&mut w, "a", "u1", 5, serde_json::json!({"action": "global"}));
    let writes = w.settle();
    assert_eq!((writes.len(), &writes[0].record), (1, &RecordWrite::Keep));
    assert_eq!(taken(&w, "a").map(|t| t.0), Some(5));
    // A re-created object (new uid) is a new request, whatever its generation.
    object(&mut w, "a", "u2", 1, serde_json::json!({"action": "isolate"}));
    w.settle();
    assert!(w.id("a") >= 10);
}

#[test]
fn bad_object_requests_are_refused_beside_the_record_and_change_nothing() {
    let mut w = World::new(&["a", "b", "kube-system"]);
    w.settle();
    let a = w.id("a");
    let cases = [
        (serde_json::json!({"action": "merge"}), "unknown action"),
        (serde_json::json!({"action": "join"}), "join needs the namespace"),
        (serde_json::json!({"action": "join", "target": "nope"}), "namespace nope does not exist"),
        (serde_json::json!({"action": "join", "target": "a"}), "cannot join itself"),
        (serde_json::json!({"action": "join", "target": "x".repeat(100_000)}), "not a namespace name"),
        (serde_json::json!({"action": "global", "target": "b"}), "only join takes a target"),
    ];
    for (generation, (spec, why)) in (2..).zip(cases) {
        object(&mut w, "a", "u1", generation, spec.clone());
        let writes = w.settle();
        assert_eq!(writes.len(), 1, "{spec}");
        assert_eq!(writes[0].record, RecordWrite::Keep, "{spec}: the record is not rewritten");
        assert_eq!(w.id("a"), a, "{spec}");
        let shown = w.error_of("a").unwrap_or_else(|| panic!("{spec}: no error"));
        assert!(
            shown.contains(why) && shown.starts_with(&format!("NetNamespace a (generation {generation})")),
            "{shown}"
        );
        assert!(shown.len() < 500, "a huge value is cut short: {} bytes", shown.len());
        let e = &w.records.errors[&w.keys.netnamespace_error("a")];
        assert_eq!(e.edit_revision, 0, "not an etcd edit");
        assert_eq!(taken(&w, "a").map(|t| (t.0, t.1)), Some((generation, RequestOutcome::Rejected)));
        assert!(w.settle().is_empty(), "refused once, not again");
    }
    object(&mut w, "kube-system", "u9", 1, serde_json::json!({"action": "isolate"}));
    w.settle();
    assert_eq!(w.id("kube-system"), 0);
    assert!(w.error_of("kube-system").is_some_and(|e| e.contains("admin namespace")));
    // A good request afterwards clears the error.
    object(&mut w, "a", "u1", 20, serde_json::json!({"action": "join", "target": "b"}));
    w.settle();
    assert_eq!(w.error_of("a"), None);
}

#[test]
fn an_etcd_edit_and_an_object_request_at_once_resolve_to_the_etcd_edit() {
    let mut w = World::new(&["a", "b", "c"]);
    w.settle();
    let (b, c) = (w.id("b"), w.id("c"));
    // Both pending when the controller plans.
    object(&mut w, "a", "u1", 2, serde_json::json!({"action": "join", "target": "c"}));
    let id = w.id("a");
    w.edit("a", &format!(r#"{{"NetName":"a","NetID":{id},"Action":"join","Namespace":"b"}}"#));
    let edit_rev = w.rev;
    let writes = w.settle();
    assert_eq!(writes.len(), 1, "one transaction decides both");
    assert_eq!(w.id("a"), b);
    let (generation, outcome, message) = taken(&w, "a").expect("the object's request is answered");
    assert_eq!((generation, outcome), (2, RequestOutcome::Superseded));
    assert!(message.contains(&format!("revision {edit_rev} (join b)")), "{message}");
    // Never applied later: no flip-flop.
    for _ in 0..3 {
        assert!(w.settle().is_empty());
    }
    assert_ne!(w.id("a"), c);
    // A refused etcd edit does not hold a request back: it applies next.
    object(&mut w, "a", "u1", 3, serde_json::json!({"action": "join", "target": "c"}));
    w.edit("a", &format!(r#"{{"NetName":"a","NetID":{b},"Action":"merge","Namespace":""}}"#));
    w.settle();
    assert_eq!(w.id("a"), c);
    assert_eq!(taken(&w, "a").map(|t| t.1), Some(RequestOutcome::Applied));
}

#[test]
fn etcd_actions_wait_for_the_objects_first_list() {
    let mut w = World::new(&["a", "b", "c"]);
    w.settle();
    let (a, c) = (w.id("a"), w.id("c"));
    // A controller that just started: objects not listed yet.
    w.kube.objects = None;
    w.edit("a", &format!(r#"{{"NetName":"a","NetID":{a},"Action":"join","Namespace":"b"}}"#));
    assert!(w.settle().is_empty(), "the etcd action waits");
    // Listed: an object asked something too; both resolve at once.
    object(&mut w, "a", "u1", 2, serde_json::json!({"action": "join", "target": "c"}));
    w.settle();
    assert_eq!(taken(&w, "a").map(|t| t.1), Some(RequestOutcome::Superseded));
    assert_ne!(w.id("a"), c);
}

#[test]
fn request_records_go_with_their_namespace() {
    let mut w = World::new(&["a", "b"]);
    w.settle();
    object(&mut w, "a", "u1", 1, serde_json::json!({"action": "global"}));
    w.settle();
    assert!(w.records.requests.contains_key("a"));
    w.kube.namespaces = Some(["b".to_string()].into());
    let writes = w.settle();
    let collect = writes.iter().find(|x| x.key == w.keys.netnamespace("a")).expect("collected");
    assert_eq!(collect.request, Some((w.keys.kube_request("a"), RecordWrite::Delete)));
    assert!(w.records.requests.is_empty() && !w.records.netns.contains_key("a"));
    // One left by a record deleted by hand is collected too.
    let key = w.keys.kube_request("gone");
    w.put(&key, r#"{"UID":"u","Generation":1,"Outcome":"Applied","Message":""}"#);
    w.settle();
    assert!(w.records.requests.is_empty());
    // A namespace that appears: its waiting request applies once its record exists.
    object(&mut w, "late", "u3", 1, serde_json::json!({"action": "global"}));
    w.kube.namespaces = Some(["b".to_string(), "late".to_string()].into());
    w.settle();
    assert_eq!(w.id("late"), 0);
}

#[test]
fn namespaces_get_unique_vnis_and_admins_get_zero() {
    let mut w = World::new(&["a", "b", "c", "kube-system", "admin"]);
    let writes = w.settle();
    assert_eq!(writes.len(), 6, "five records with their applied copies, then applied/complete");
    assert!(writes.iter().all(|w| w.expect_rev == 0), "creates only");
    assert_eq!(writes[5].key, w.keys.applied_complete());
    assert!(w.records.applied_complete);
    assert_eq!((w.id("kube-system"), w.id("admin")), (0, 0));
    let ids: BTreeSet<u32> = ["a", "b", "c"].iter().map(|n| w.id(n)).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|&v| v >= 10));
    assert!(w.settle().is_empty(), "idempotent");
}

#[test]
fn join_isolate_global_follow_k8s_ovs() {
    let mut w = World::new(&["a", "b"]);
    w.settle();
    let b = w.id("b");
    w.act("a", "join", "b");
    assert_eq!(w.id("a"), b);
    assert_eq!(w.error_of("a"), None);
    // isolate of a shared NetID gives a fresh one; b keeps its own.
    w.act("a", "isolate", "");
    assert_ne!(w.id("a"), b);
    assert_eq!(w.id("b"), b);
    // isolate when alone: nothing changes except the cleared action.
    let a = w.id("a");
    w.act("a", "isolate", "");
    assert_eq!(w.id("a"), a);
    w.act("a", "global", "");
    assert_eq!(w.id("a"), 0);
    // isolate out of global gives a fresh VNI.
    w.act("a", "isolate", "");
    assert!(w.id("a") >= 10 && w.id("a") != b);
    assert!(w.settle().is_empty());
}

/// An action that changes a NetID says so for the namespace's Event (old
/// and new NetID, the action); one that changes nothing, and every other
/// write, carries no change.
#[test]
fn an_applied_action_that_changes_the_netid_names_the_change() {
    let mut w = World::new(&["a", "b"]);
    assert!(w.settle().iter().all(|x| x.tenancy.is_none()));
    let (a, b) = (w.id("a"), w.id("b"));
    let edit = |w: &mut World, action: &str, target: &str| {
        let v =
            format!(r#"{{"NetName":"a","NetID":{},"Action":"{action}","Namespace":"{target}"}}"#, w.id("a"));
        w.edit("a", &v);
        w.settle().into_iter().filter_map(|x| x.tenancy).collect::<Vec<_>>()
    };
    let joined = edit(&mut w, "join", "b");
    assert_eq!(joined.len(), 1, "{joined:?}");
    assert_eq!((joined[0].old_net_id, joined[0].new_net_id), (a, b));
    assert_eq!(joined[0].action, Action::Join("b".into()));
    assert!(joined[0].message().starts_with("joined b (etcd edit at revision"), "{}", joined[0].message());
    assert!(joined[0].message().ends_with(&format!("NetID {a} -> {b}")), "{}", joined[0].message());
    let isolated = edit(&mut w, "isolate", "");
    assert_eq!(isolated.len(), 1);
    assert_eq!(isolated[0].old_net_id, b);
    // Alone already: isolate changes nothing, no event.
    assert!(edit(&mut w, "isolate", "").is_empty());
    let global = edit(&mut w, "global", "");
    assert_eq!((global[0].new_net_id, global[0].action.clone()), (0, Action::Global));
}

#[test]
fn bad_edits_keep_the_last_safe_state_and_show_why() {
    let mut w = World::new(&["a", "b", "kube-system"]);
    w.settle();
    let a = w.id("a");
    let cases: [(&str, &str); 7] = [
        (r#"{"NetName":"a","NetID":AID,"Action":"merge","Namespace":""}"#, "field Action"),
        (
            r#"{"NetName":"a","NetID":AID,"Action":"join","Namespace":"nope"}"#,
            "namespace nope does not exist",
        ),
        (r#"{"NetName":"a","NetID":AID,"Action":"join","Namespace":"a"}"#, "cannot join itself"),
        (r#"{"NetName":"a","NetID":AID,"Action":"join""#, "malformed JSON"),
        (r#"{"NetName":"a","NetID":16777216,"Action":"","Namespace":""}"#, "out of range"),
        (r#"{"NetName":"a","NetID":12345,"Action":"","Namespace":""}"#, "changed without an action"),
        (r#"{"NetName":"zz","NetID":AID,"Action":"","Namespace":""}"#, "field NetName"),
    ];
    for (raw, why) in cases {
        w.edit("a", &raw.replace("AID", &a.to_string()));
        let writes = w.settle();
        assert_eq!(writes.len(), 1, "{raw}");
        assert_eq!(w.id("a"), a, "{raw}: NetID kept");
        let shown = w.error_of("a").unwrap_or_else(|| panic!("{raw}: no error shown"));
        assert!(shown.contains(why), "{raw}: {shown}");
        assert!(shown.contains("/p/k8ssdn/netnamespaces/a"), "names the key: {shown}");
    }
    // A good action afterwards clears the error.
    w.act("a", "global", "");
    assert_eq!(w.error_of("a"), None);
    // kube-system refuses actions.
    w.act("kube-system", "isolate", "");
    assert_eq!(w.id("kube-system"), 0);
    assert!(w.error_of("kube-system").is_some_and(|e| e.contains("admin namespace")));
}

#[test]
fn records_of_missing_namespaces_are_collected() {
    let mut w = World::new(&["a"]);
    w.settle();
    // An operator's record for a namespace that does not exist: removed, with an error.
    w.edit("ghost", r#"{"NetName":"ghost","NetID":77,"Action":"","Namespace":""}"#);
    let writes = w.settle();
    assert_eq!(writes[0].record, RecordWrite::Delete);
    assert!(!w.records.netns.contains_key("ghost"));
    assert!(w.shown[&w.keys.netnamespace_error("ghost")].contains("does not exist"));
    // A namespace that goes away: its record is removed quietly and its VNI is free again.
    let a = w.id("a");
    w.kube.namespaces = Some(BTreeSet::new());
    w.settle();
    assert!(w.records.netns.is_empty());
    assert_eq!(w.error_of("a"), None);
    w.vnis.reset_in_use([]);
    assert!(!w.vnis.is_in_use(a));
}

#[test]
fn nothing_is_created_or_collected_before_kube_listed() {
    let mut w = World::new(&[]);
    w.kube = KubeView::default();
    w.edit("a", r#"{"NetName":"a","NetID":10,"Action":"","Namespace":""}"#);
    assert!(w.settle().is_empty());
}

#[test]
fn startup_resync_keeps_valid_records() {
    let mut w = World::new(&["a", "b"]);
    w.records.load(
        &w.keys,
        &w.config,
        "/p/k8ssdn/netnamespaces/a",
        br#"{"NetName":"a","NetID":300924,"Action":"","Namespace":""}"#,
        5,
    );
    w.records.load(
        &w.keys,
        &w.config,
        "/p/k8ssdn/netnamespaces/old",
        br#"{"NetName":"old","NetID":11,"Action":"","Namespace":""}"#,
        6,
    );
    let writes = w.settle();
    assert_eq!(w.id("a"), 300924);
    assert!(!w.records.netns.contains_key("old"));
    assert!(w.id("b") >= 10 && w.id("b") != 300924);
    // Collect old, create b, copy a (an upgrade: it had no applied copy), complete.
    assert_eq!(writes.len(), 4);
    assert_eq!(w.records.applied["a"].parsed.as_ref().map(|r| r.net_id), Ok(300924));
    assert!(w.shown.is_empty(), "a vanished namespace is no error");
}

fn node(w: &mut World, name: &str, ip: &str) {
    w.kube.nodes.get_or_insert_with(BTreeMap::new).insert(name.to_string(), ip.parse().ok());
}

fn subnet_of(w: &World, ip: &str) -> Option<String> {
    w.records
        .subnets
        .get(ip)
        .and_then(|e| e.parsed.as_ref().ok())
        .and_then(|s| s.subnet)
        .map(|s| s.to_string())
}

#[test]
fn node_subnets_are_allocated_once_and_released() {
    let mut w = World::new(&[]);
    node(&mut w, "n1", "192.0.2.1");
    node(&mut w, "n2", "192.0.2.2");
    w.settle();
    assert_eq!(subnet_of(&w, "192.0.2.1").as_deref(), Some("172.11.0.0/22"));
    assert_eq!(subnet_of(&w, "192.0.2.2").as_deref(), Some("172.11.4.0/22"));
    assert!(w.settle().is_empty(), "never twice");
    // A manual request for a load-balancer host.
    w.put(&w.keys.subnet("192.0.2.9"), r#"{"Host":"lb1","HostIP":"192.0.2.9","Subnet":"","Assign":true}"#);
    w.settle();
    assert_eq!(subnet_of(&w, "192.0.2.9").as_deref(), Some("172.11.8.0/22"));
    // n1 goes: released; the manual record stays.
    w.kube.nodes.as_mut().map(|n| n.remove("n1"));
    w.settle();
    assert_eq!(subnet_of(&w, "192.0.2.1"), None);
    assert!(subnet_of(&w, "192.0.2.9").is_some());
    // A hand-typed duplicate is refused and the record rolled back.
    w.put(
        &w.keys.subnet("192.0.2.2"),
        r#"{"Host":"n2","HostIP":"192.0.2.2","Subnet":"172.11.8.0/22","Assign":false}"#,
    );
    w.settle();
    assert_eq!(subnet_of(&w, "192.0.2.2").as_deref(), Some("172.11.4.0/22"));
    assert!(w.shown[&w.keys.subnet_error("192.0.2.2")].contains("field Subnet"));
    // Malformed JSON on a manual record with no safe state: reported once, kept.
    w.put(&w.keys.subnet("192.0.2.10"), "{oops");
    assert_eq!(w.settle().len(), 1);
    assert!(w.settle().is_empty());
}

#[test]
fn single_tenant_mode_manages_subnets_only() {
    let mut w = World::new(&["a", "b"]);
    w.config.plugin = PluginName::Subnet;
    node(&mut w, "n1", "192.0.2.1");
    let writes = w.settle();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert!(w.records.netns.is_empty(), "no VNIs in k8s-ovs-subnet mode");
    assert!(subnet_of(&w, "192.0.2.1").is_some());
}

#[test]
fn a_value_that_is_not_utf8_is_restored_like_any_bad_edit() {
    let mut w = World::new(&["a", "b"]);
    w.settle();
    let a = w.id("a");
    let key = w.keys.netnamespace("a");
    w.rev += 1;
    w.records.observe_put(&w.keys, &w.config, &key, b"{\"NetName\":\"a\xff\",\"NetID\":5}", w.rev);
    let writes = w.settle();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(w.id("a"), a, "restored to its VNI, not re-created with a fresh one");
    assert!(w.error_of("a").is_some_and(|e| e.contains("not UTF-8")), "{:?}", w.error_of("a"));
}

#[test]
fn a_relist_restores_invalid_records_to_the_safe_state_known_before() {
    let mut w = World::new(&["a", "b"]);
    node(&mut w, "n1", "192.0.2.1");
    w.settle();
    let (a, b) = (w.id("a"), w.id("b"));
    let subnet = subnet_of(&w, "192.0.2.1");
    // A new session lists records that went bad meanwhile (and etcd's
    // history no longer has their last valid version).
    let before = std::mem::take(&mut w.records);
    let (ka, kb, ks) = (w.keys.netnamespace("a"), w.keys.netnamespace("b"), w.keys.subnet("192.0.2.1"));
    w.records.load(&w.keys, &w.config, &ka, b"{not json", 50);
    w.records.load(&w.keys, &w.config, &kb, b"\xff\xfe", 51);
    w.records.load(&w.keys, &w.config, &ks, b"{\"Host\":", 52);
    w.records.keep_safe_states_from(&before);
    w.settle();
    assert_eq!((w.id("a"), w.id("b")), (a, b), "each namespace back at its own VNI");
    assert_eq!(subnet_of(&w, "192.0.2.1"), subnet, "the node keeps its subnet");
    assert!(w.settle().is_empty());
}

/// The NetIDs `writes` put into applied copies (what agents program).
fn applied_ids(writes: &[Write], ns: &str) -> Vec<u32> {
    writes
        .iter()
        .filter_map(|w| match &w.applied {
            Some((k, RecordWrite::Put(v))) if k.ends_with(&format!("/applied/netnamespaces/{ns}")) => {
                parse_net_namespace(k, ns, v).ok().map(|r| r.net_id)
            }
            _ => None,
        })
        .collect()
}

fn applied_id(w: &World, ns: &str) -> Option<u32> {
    w.records.applied.get(ns).and_then(|e| e.parsed.as_ref().ok()).map(|r| r.net_id)
}

#[test]
fn every_validated_record_has_its_applied_copy_in_the_same_write() {
    let mut w = World::new(&["red", "blue"]);
    let writes = w.settle();
    for ns in ["red", "blue"] {
        let create = writes.iter().find(|x| x.key == w.keys.netnamespace(ns)).expect("created");
        assert_eq!(create.applied.as_ref().map(|(k, _)| k.clone()), Some(w.keys.applied_netnamespace(ns)));
        assert_eq!(applied_id(&w, ns), Some(w.id(ns)));
    }
    // A join moves the record and the copy in one transaction.
    w.act("red", "join", "blue");
    assert_eq!(applied_id(&w, "red"), Some(w.id("blue")));
}

#[test]
fn a_hand_written_net_id_never_reaches_the_applied_copy() {
    let mut w = World::new(&["red", "blue"]);
    w.settle();
    let (red, blue) = (w.id("red"), w.id("blue"));
    w.edit("red", &format!(r#"{{"NetName":"red","NetID":{blue},"Action":"","Namespace":""}}"#));
    let writes = w.settle();
    assert_eq!(applied_ids(&writes, "red"), vec![red], "restored; the copy keeps red's own NetID");
    assert_eq!((w.id("red"), applied_id(&w, "red")), (red, Some(red)));
    assert!(w.error_of("red").is_some_and(|e| e.contains("changed without an action")));
}

#[test]
fn a_record_deleted_and_recreated_with_another_tenants_net_id_is_rolled_back() {
    let mut w = World::new(&["red", "blue"]);
    w.settle();
    let (red, blue) = (w.id("red"), w.id("blue"));
    let key = w.keys.netnamespace("red");
    // Deleted and re-created before the controller could answer the delete.
    w.records.observe_delete(&w.keys, &key);
    w.edit("red", &format!(r#"{{"NetName":"red","NetID":{blue},"Action":"","Namespace":""}}"#));
    let writes = w.settle();
    assert_eq!(applied_ids(&writes, "red"), vec![red]);
    assert_eq!((w.id("red"), applied_id(&w, "red")), (red, Some(red)));
    // Only deleted: the record comes back with the NetID red still holds.
    w.records.observe_delete(&w.keys, &key);
    let writes = w.settle();
    assert_eq!(applied_ids(&writes, "red"), vec![red]);
    assert_eq!(w.id("red"), red);
}

#[test]
fn a_new_record_never_takes_another_tenants_or_the_global_net_id() {
    let mut w = World::new(&["blue", "kube-system"]);
    w.settle();
    let blue = w.id("blue");
    w.kube.namespaces.as_mut().map(|k| k.insert("red".to_string()));
    w.edit("red", &format!(r#"{{"NetName":"red","NetID":{blue},"Action":"","Namespace":""}}"#));
    w.settle();
    let red = w.id("red");
    assert!(red != blue && red != 0);
    assert_eq!(applied_id(&w, "red"), Some(red));
    assert!(w.error_of("red").is_some_and(|e| e.contains("held by namespace blue")));
    w.kube.namespaces.as_mut().map(|k| k.insert("green".to_string()));
    w.edit("green", r#"{"NetName":"green","NetID":0,"Action":"","Namespace":""}"#);
    w.settle();
    assert!(w.id("green") != 0 && w.error_of("green").is_some_and(|e| e.contains("global")));
    // A free NetID typed into a new record is taken as it is.
    w.kube.namespaces.as_mut().map(|k| k.insert("pink".to_string()));
    w.edit("pink", r#"{"NetName":"pink","NetID":4242,"Action":"","Namespace":""}"#);
    w.settle();
    assert_eq!((w.id("pink"), applied_id(&w, "pink")), (4242, Some(4242)));
}

/// A record as a starting controller reads it from etcd.
fn load_record(w: &mut World, ns: &str, id: u32, rev: i64) {
    let key = w.keys.netnamespace(ns);
    let v = format!(r#"{{"NetName":"{ns}","NetID":{id},"Action":"","Namespace":""}}"#);
    w.records.load(&w.keys, &w.config, &key, v.as_bytes(), rev);
}

#[test]
fn an_upgrade_writes_the_applied_copies_then_marks_them_complete() {
    let mut w = World::new(&["red", "blue"]);
    load_record(&mut w, "red", 100, 5);
    load_record(&mut w, "blue", 200, 6);
    let first = w.settle_once();
    assert_eq!(first.len(), 2, "one copy per record, no record changed");
    assert!(first.iter().all(|x| x.record == RecordWrite::Keep && x.error == ErrorWrite::Keep));
    assert!(!w.records.applied_complete, "complete only after every copy is in");
    let second = w.settle_once();
    assert_eq!(second.iter().map(|x| x.key.clone()).collect::<Vec<_>>(), vec![w.keys.applied_complete()]);
    assert!(w.settle().is_empty());

    // A new controller that finds a hand edit made while none ran judges it
    // against the applied copy, not against the record it reads.
    let before = std::mem::take(&mut w.records);
    for (k, e) in before.applied.iter().map(|(n, e)| (w.keys.applied_netnamespace(n), e)) {
        w.records.load(&w.keys, &w.config, &k, e.raw.as_bytes(), e.rev);
    }
    w.records.load(&w.keys, &w.config, &w.keys.applied_complete(), b"{}", 9);
    load_record(&mut w, "red", 200, 10);
    load_record(&mut w, "blue", 200, 6);
    let writes = w.settle();
    assert_eq!(w.id("red"), 100);
    assert_eq!(applied_ids(&writes, "red"), vec![100]);
}

#[test]
fn the_applied_copy_of_a_vanished_namespace_goes_with_it() {
    let mut w = World::new(&["red"]);
    w.settle();
    w.kube.namespaces = Some(BTreeSet::new());
    let writes = w.settle();
    let gone = writes.iter().find(|x| x.key == w.keys.netnamespace("red")).expect("collected");
    assert_eq!(gone.applied, Some((w.keys.applied_netnamespace("red"), RecordWrite::Delete)));
    assert!(w.records.applied.is_empty() && w.records.safe_netns.is_empty());
}

#[test]
fn a_node_without_its_internal_ip_keeps_its_subnet_for_the_grace_period() {
    let mut w = World::new(&[]);
    node(&mut w, "n1", "192.0.2.1");
    node(&mut w, "n2", "192.0.2.2");
    w.settle();
    let subnet = subnet_of(&w, "192.0.2.1");
    assert!(subnet.is_some());
    // n1 reports no InternalIP for a while: its subnet stays.
    w.kube.nodes.as_mut().map(|n| n.insert("n1".into(), None));
    assert!(w.settle().is_empty(), "nothing released inside the grace");
    w.now += std::time::Duration::from_secs(299);
    assert!(w.settle().is_empty());
    assert_eq!(w.grace.next_deadline(), Some(w.now + std::time::Duration::from_secs(1)));
    // Back with the same IP: kept, and the clock is gone.
    node(&mut w, "n1", "192.0.2.1");
    assert!(w.settle().is_empty());
    assert_eq!((subnet_of(&w, "192.0.2.1"), w.grace.next_deadline()), (subnet.clone(), None));
    // Gone for longer than the grace: released then, not before.
    w.kube.nodes.as_mut().map(|n| n.insert("n1".into(), None));
    w.settle();
    w.now += std::time::Duration::from_secs(300);
    let writes = w.settle();
    assert!(writes.iter().any(|x| x.record == RecordWrite::Delete && x.key == w.keys.subnet("192.0.2.1")));
    assert_eq!(subnet_of(&w, "192.0.2.1"), None);
    // A node deleted outright releases at once, as before.
    w.kube.nodes.as_mut().map(|n| n.remove("n2"));
    w.settle();
    assert_eq!(subnet_of(&w, "192.0.2.2"), None);
}
