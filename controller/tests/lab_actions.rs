//! Actions and bad edits on a real etcd, written exactly as operators type
//! them (`etcdctl put`), through `k8s-ovs-ctl` (library and binary), with a
//! real controller watching the lab's test kube-apiserver.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Result;
use controller::ctl::{self, Outcome};
use etcd_schema::Action;
use lab::kube_api::KubeApi;
use support::*;

async fn cluster(namespaces: &[&str]) -> Result<(TestEtcd, KubeApi, Controller)> {
    let etcd = TestEtcd::start()?;
    let api = KubeApi::start()?;
    for ns in namespaces {
        api.create_namespace(ns)?;
    }
    let c = Controller::spawn("c1", &etcd, Some(&api), 10)?;
    for ns in namespaces {
        wait_settled(&etcd, ns).await?;
    }
    Ok((etcd, api, c))
}

fn netns_json(ns: &str, id: u32, action: &str, target: &str) -> String {
    format!(r#"{{"NetName":"{ns}","NetID":{id},"Action":"{action}","Namespace":"{target}"}}"#)
}

/// Puts `value` and waits until the controller cleared Action.
async fn operator_put(etcd: &TestEtcd, ns: &str, value: &str) -> Result<(i64, etcd_schema::NetNamespace)> {
    let rev = etcd.put(&keys().netnamespace(ns), value)?;
    let rec = eventually("Action cleared", Duration::from_secs(30), || async {
        let key = keys().netnamespace(ns);
        let raw = etcd.etcd.etcdctl(&["get", "-w", "json", &key])?;
        let v: serde_json::Value = serde_json::from_str(&raw)?;
        let mod_rev = v["kvs"][0]["mod_revision"].as_i64().unwrap_or(0);
        Ok(if mod_rev > rev { settled(etcd, ns)? } else { None })
    })
    .await?;
    Ok((rev, rec))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_every_action_by_etcdctl() -> Result<()> {
    lab::needs_root!();
    let (etcd, _api, c) = cluster(&["a", "b", "kube-system", "admin"]).await?;
    let (a, b) = (wait_settled(&etcd, "a").await?.net_id, wait_settled(&etcd, "b").await?.net_id);
    assert!(a >= 10 && b >= 10 && a != b);
    assert_eq!(wait_settled(&etcd, "kube-system").await?.net_id, 0);
    assert_eq!(wait_settled(&etcd, "admin").await?.net_id, 0);

    // join, exactly as K8S-OVS's operators typed it.
    let (_, rec) = operator_put(&etcd, "a", &netns_json("a", a, "join", "b")).await?;
    assert_eq!(rec.net_id, b, "a took b's NetID");
    assert_eq!(wait_settled(&etcd, "b").await?.net_id, b);
    assert_eq!(etcd.get(&keys().netnamespace_error("a"))?, None);

    // isolate a shared NetID: a fresh one for a, b keeps its own.
    let (_, rec) = operator_put(&etcd, "a", &netns_json("a", b, "isolate", "")).await?;
    let fresh = rec.net_id;
    assert!(fresh >= 10 && fresh != b);
    assert_eq!(wait_settled(&etcd, "b").await?.net_id, b);

    // isolate when already alone: nothing changes but the cleared Action.
    let (_, rec) = operator_put(&etcd, "a", &netns_json("a", fresh, "isolate", "")).await?;
    assert_eq!(rec.net_id, fresh);

    // global.
    let (_, rec) = operator_put(&etcd, "a", &netns_json("a", fresh, "global", "")).await?;
    assert_eq!(rec.net_id, 0);

    // isolate out of global.
    let (_, rec) = operator_put(&etcd, "a", &netns_json("a", 0, "isolate", "")).await?;
    assert!(rec.net_id >= 10 && rec.net_id != b);
    c.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_ctl_writes_the_same_edits_and_waits() -> Result<()> {
    lab::needs_root!();
    let (etcd, _api, c) = cluster(&["a", "b", "c"]).await?;
    let b = wait_settled(&etcd, "b").await?.net_id;
    let mut client = controller::store::connect(&[etcd.endpoint()]).await?;
    let (_, keys) = ctl::network(&mut client, PREFIX).await?;
    let rev = ctl::request(&mut client, &keys, "a", Action::Join("b".into())).await?;
    assert_eq!(ctl::wait(&mut client, &keys, "a", rev, Duration::from_secs(30)).await?, Outcome::Applied(b));
    let rev = ctl::request(&mut client, &keys, "a", Action::Join("nope".into())).await?;
    match ctl::wait(&mut client, &keys, "a", rev, Duration::from_secs(30)).await? {
        Outcome::Rejected(e) => assert!(e.contains("namespace nope does not exist"), "{e}"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    let rows = ctl::list(&mut client, &keys).await?;
    let a_row = rows.iter().find(|r| r.namespace == "a").expect("row of a");
    assert_eq!(a_row.net_id, Some(b), "a kept its NetID after the bad join");
    assert!(a_row.error.contains("nope"));

    // The binary, as an operator runs it.
    let bin = env!("CARGO_BIN_EXE_k8s-ovs-ctl");
    let ep = etcd.endpoint();
    let run = |args: &[&str]| {
        std::process::Command::new(bin).args(["--endpoints", &ep, "--wait"]).args(args).output()
    };
    let out = run(&["global", "c"])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "c: NetID 0");
    let out = run(&["join", "c", "--to", "c"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot join itself"));
    let out = run(&["list"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.starts_with("c ") && l.contains(" 0 ")), "{text}");
    c.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_bad_edits_never_lose_or_corrupt_a_record() -> Result<()> {
    lab::needs_root!();
    let (etcd, _api, c) = cluster(&["a", "b", "kube-system"]).await?;
    let a = wait_settled(&etcd, "a").await?.net_id;
    let key = keys().netnamespace("a");
    let cases = [
        (netns_json("a", a, "merge", ""), "field Action"),
        (netns_json("a", a, "join", "missing"), "namespace missing does not exist"),
        (netns_json("a", a, "join", "a"), "cannot join itself"),
        (r#"{"NetName":"a","NetID":"#.to_string(), "malformed JSON"),
        (netns_json("a", 16_777_216, "", ""), "out of range"),
        (netns_json("a", 99_999_999, "isolate", ""), "out of range"),
        (netns_json("a", 5, "", ""), "reserved"),
        (netns_json("a", 4242, "", ""), "changed without an action"),
    ];
    for (value, why) in cases {
        let rev = etcd.put(&key, &value)?;
        let err = wait_error(&etcd, "a", rev).await?;
        assert!(err.error.contains(why), "{value}: {}", err.error);
        assert!(err.error.contains(&key), "the error names the key: {}", err.error);
        assert_eq!(err.edit, value, "the rejected edit is kept verbatim");
        let rec = wait_settled(&etcd, "a").await?;
        assert_eq!(rec.net_id, a, "{value}: the record is back to its last safe state");
    }
    // kube-system stays global.
    let rev = etcd.put(&keys().netnamespace("kube-system"), &netns_json("kube-system", 0, "isolate", ""))?;
    assert!(wait_error(&etcd, "kube-system", rev).await?.error.contains("admin namespace"));
    assert_eq!(wait_settled(&etcd, "kube-system").await?.net_id, 0);

    // A record for a namespace that does not exist: removed, error beside it.
    let rev = etcd.put(&keys().netnamespace("ghost"), &netns_json("ghost", 77, "", ""))?;
    let err = wait_error(&etcd, "ghost", rev).await?;
    assert!(err.error.contains("does not exist"), "{}", err.error);
    assert_eq!(etcd.get(&keys().netnamespace("ghost"))?, None);

    // After all that, a good action still works and clears the error.
    let b = wait_settled(&etcd, "b").await?.net_id;
    let (_, rec) = operator_put(&etcd, "a", &netns_json("a", a, "join", "b")).await?;
    assert_eq!(rec.net_id, b);
    assert_eq!(etcd.get(&keys().netnamespace_error("a"))?, None);
    c.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_concurrent_edits_are_all_applied() -> Result<()> {
    lab::needs_root!();
    // 40 namespaces; 20 join their partner, all at once from 20 clients,
    // while the controller is busy creating the records of 20 more.
    let names: Vec<String> = (0..40).map(|i| format!("ns{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (etcd, api, c) = cluster(&refs).await?;
    for i in 0..20 {
        api.create_namespace(&format!("late{i}"))?;
    }
    let mut tasks = Vec::new();
    for i in 0..20 {
        let ep = etcd.endpoint();
        tasks.push(tokio::spawn(async move {
            let mut client = controller::store::connect(&[ep]).await?;
            let (_, keys) = ctl::network(&mut client, PREFIX).await?;
            let (ns, to) = (format!("ns{i}"), format!("ns{}", i + 20));
            let rev = ctl::request(&mut client, &keys, &ns, Action::Join(to)).await?;
            ctl::wait(&mut client, &keys, &ns, rev, Duration::from_secs(60)).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let outcome = t.await??;
        let partner = wait_settled(&etcd, &format!("ns{}", i + 20)).await?.net_id;
        assert_eq!(outcome, Outcome::Applied(partner), "ns{i}");
    }
    let mut ids = BTreeSet::new();
    for i in 0..20 {
        ids.insert(wait_settled(&etcd, &format!("late{i}")).await?.net_id);
        ids.insert(wait_settled(&etcd, &format!("ns{}", i + 20)).await?.net_id);
    }
    assert_eq!(ids.len(), 40, "no VNI handed out twice");
    c.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_startup_resync_collects_creates_and_repairs() -> Result<()> {
    lab::needs_root!();
    let etcd = TestEtcd::start()?;
    let api = KubeApi::start()?;
    for ns in ["kept", "broken", "new"] {
        api.create_namespace(ns)?;
    }
    // State left by an earlier controller: a record for a namespace that has
    // gone meanwhile, a valid one, and one an operator broke while no
    // controller ran (its previous version had NetID 4321).
    etcd.put(&keys().config(), &config().to_json())?;
    etcd.put(&keys().netnamespace("gone"), &netns_json("gone", 1234, "", ""))?;
    etcd.put(&keys().netnamespace("kept"), &netns_json("kept", 300924, "", ""))?;
    etcd.put(&keys().netnamespace("broken"), &netns_json("broken", 4321, "", ""))?;
    let rev = etcd.put(&keys().netnamespace("broken"), r#"{"NetName":"broken","NetID":4321,"Action":"jo"#)?;

    let c = Controller::spawn("c1", &etcd, Some(&api), 10)?;
    assert_eq!(wait_settled(&etcd, "kept").await?.net_id, 300924, "valid records are kept");
    let n = wait_settled(&etcd, "new").await?.net_id;
    assert!(n >= 10 && n != 300924 && n != 4321);
    assert_eq!(wait_settled(&etcd, "broken").await?.net_id, 4321, "restored from etcd history");
    assert!(wait_error(&etcd, "broken", rev).await?.error.contains("malformed JSON"));
    eventually("collection of gone", Duration::from_secs(30), || async {
        Ok(etcd.get(&keys().netnamespace("gone"))?.is_none().then_some(()))
    })
    .await?;
    assert_eq!(etcd.get(&keys().netnamespace_error("gone"))?, None, "a vanished namespace is no error");
    c.stop().await
}
