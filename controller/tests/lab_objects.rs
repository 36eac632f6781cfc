//! Tenant actions through the Kubernetes API: NetNamespace objects on the
//! lab's test apiserver (the CRD of deploy/, enforced as kube-apiserver
//! enforces it), a real etcd, the controller in-process. The object's
//! request applies through etcd, etcd's state shows in the object's status,
//! a request and an etcd edit made at once resolve to the etcd edit, and bad
//! requests change nothing.

mod support;

use std::time::Duration;

use anyhow::{bail, Context, Result};
use controller::netns_object::NetNamespaceObject;
use kube::api::{Patch, PatchParams};
use kube::Api;
use lab::kube_api::KubeApi;
use serde_json::{json, Value};
use support::*;

fn crd_file(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name)
}

struct World {
    etcd: TestEtcd,
    api: KubeApi,
    objects: Api<NetNamespaceObject>,
    controller: Option<Controller>,
}

impl World {
    /// etcd, the apiserver with the CRD (`crd`: a manifest under the repo)
    /// and `namespaces`, a controller, and every namespace's view made.
    async fn start(namespaces: &[&str], crd: &str) -> Result<World> {
        let etcd = TestEtcd::start()?;
        let api = KubeApi::start()?;
        api.create_crds_from(&crd_file(crd))?;
        for ns in namespaces {
            api.create_namespace(ns)?;
        }
        let client = kube::Client::try_from(kube::Config::new(api.url().parse()?))?;
        let objects: Api<NetNamespaceObject> = Api::all(client);
        let controller = Some(Controller::spawn("c1", &etcd, Some(&api), 10)?);
        let w = World { etcd, api, objects, controller };
        for ns in namespaces {
            wait_settled(&w.etcd, ns).await?;
            w.status_where(ns, "its view's status", |s| s["netID"].is_u64()).await?;
        }
        Ok(w)
    }

    fn net_id(&self, ns: &str) -> Result<u32> {
        settled(&self.etcd, ns)?.map(|r| r.net_id).with_context(|| format!("{ns}: no settled record"))
    }

    /// (mod_revision, value) of `key`.
    fn revision_of(&self, key: &str) -> Result<i64> {
        let raw = self.etcd.etcd.etcdctl(&["get", "-w", "json", key])?;
        let v: Value = serde_json::from_str(&raw)?;
        Ok(v["kvs"][0]["mod_revision"].as_i64().unwrap_or(0))
    }

    /// The object's status once `cond` holds on it.
    async fn status_where(&self, ns: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Result<Value> {
        eventually(&format!("{ns}: {what}"), Duration::from_secs(30), || async {
            let o = self.objects.get_opt(ns).await?;
            Ok(o.and_then(|o| o.status).filter(|s| cond(s)))
        })
        .await
    }

    /// Sets `ns`'s spec as `kubectl patch --type merge` does; the generation
    /// the apiserver gave it.
    async fn ask(&self, ns: &str, spec: Value) -> Result<i64> {
        let o = self.objects.patch(ns, &PatchParams::default(), &Patch::Merge(json!({"spec": spec}))).await?;
        o.metadata.generation.context("generation")
    }

    /// The `Applied` condition once the controller has handled `generation`.
    async fn answer(&self, ns: &str, generation: i64) -> Result<Value> {
        let s = self
            .status_where(ns, &format!("generation {generation} handled"), |s| {
                s["observedGeneration"].as_i64().is_some_and(|g| g >= generation)
            })
            .await?;
        condition(&s, "Applied").with_context(|| format!("{ns}: no Applied condition in {s}"))
    }
}

fn condition(status: &Value, type_: &str) -> Option<Value> {
    status["conditions"].as_array()?.iter().find(|c| c["type"] == type_).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_object_requests_apply_through_etcd_and_the_status_follows_etcd() -> Result<()> {
    lab::needs_root!();
    let w = World::start(&["a", "b", "kube-system"], "deploy/base/netnamespace-crd.yaml").await?;
    let (a, b) = (w.net_id("a")?, w.net_id("b")?);
    let view = w.objects.get("a").await?;
    assert!(view.spec.is_none(), "a view asks nothing");
    assert_eq!(view.status.as_ref().map(|s| s["netID"].clone()), Some(json!(a)));
    assert_eq!(w.objects.get("kube-system").await?.status.map(|s| s["netID"].clone()), Some(json!(0)));

    // join: the etcd record (and the applied copy agents program) take b's NetID.
    let g = w.ask("a", json!({"action": "join", "target": "b"})).await?;
    let applied = w.answer("a", g).await?;
    assert_eq!(
        (applied["status"].as_str(), applied["reason"].as_str()),
        (Some("True"), Some("Applied")),
        "{applied}"
    );
    assert_eq!(w.net_id("a")?, b);
    let copy = w.etcd.get(&keys().applied_netnamespace("a"))?.context("applied copy")?;
    assert!(copy.contains(&format!("\"NetID\":{b}")), "{copy}");
    let status = w.objects.get("a").await?.status.context("status")?;
    assert_eq!(status["netID"], b);
    assert_eq!(condition(&status, "InSync").map(|c| c["status"].clone()), Some(json!("True")));

    // The same manifest applied again: no new generation, nothing written to etcd.
    let (record_rev, request_rev) =
        (w.revision_of(&keys().netnamespace("a"))?, w.revision_of(&keys().kube_request("a"))?);
    assert_eq!(w.ask("a", json!({"action": "join", "target": "b"})).await?, g);
    // Something else for the controller to do, so it has planned since.
    w.api.create_namespace("c")?;
    wait_settled(&w.etcd, "c").await?;
    w.status_where("c", "a view", |s| s["netID"].is_u64()).await?;
    assert_eq!(w.revision_of(&keys().netnamespace("a"))?, record_rev, "the record untouched");
    assert_eq!(w.revision_of(&keys().kube_request("a"))?, request_rev, "the request not taken again");

    // The join removed from the manifest (the spec back to its default):
    // isolated again.
    let g = w.ask("a", json!({"action": null, "target": null})).await?;
    assert_eq!(w.objects.get("a").await?.spec, Some(json!({"action": "isolate"})), "the CRD's default");
    assert_eq!(w.answer("a", g).await?["reason"], "Applied");
    let alone = w.net_id("a")?;
    assert!(alone >= 10 && alone != b, "a has a NetID of its own again: {alone}");
    let g = w.ask("a", json!({"action": "global"})).await?;
    assert_eq!(w.answer("a", g).await?["reason"], "Applied");
    assert_eq!(w.net_id("a")?, 0);

    // An etcd edit shows in the status: isolated by etcdctl, out of sync
    // with the spec, which is not applied again (etcd is the source of truth).
    w.etcd
        .put(&keys().netnamespace("a"), r#"{"NetName":"a","NetID":0,"Action":"isolate","Namespace":""}"#)?;
    let s = w.status_where("a", "the etcd isolate", |s| s["netID"] != json!(0)).await?;
    let new_id = w.net_id("a")?;
    assert_eq!(s["netID"], new_id);
    let in_sync = condition(&s, "InSync").context("InSync")?;
    assert_eq!(
        (in_sync["status"].as_str(), in_sync["reason"].as_str()),
        (Some("False"), Some("OutOfSync")),
        "{in_sync}"
    );
    assert_eq!(
        condition(&s, "Applied").map(|c| c["status"].clone()),
        Some(json!("True")),
        "generation {g} was applied"
    );
    let _ = a;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_an_etcd_edit_and_an_object_request_at_once_resolve_to_the_etcd_edit() -> Result<()> {
    lab::needs_root!();
    let mut w = World::start(&["a", "b", "c"], "deploy/base/netnamespace-crd.yaml").await?;
    let (a, b, c) = (w.net_id("a")?, w.net_id("b")?, w.net_id("c")?);
    // Both edits made while no controller leads: pending together.
    w.controller.take().context("controller")?.stop().await?;
    let edit_rev = w.etcd.put(
        &keys().netnamespace("a"),
        &format!(r#"{{"NetName":"a","NetID":{a},"Action":"join","Namespace":"b"}}"#),
    )?;
    let g = w.ask("a", json!({"action": "join", "target": "c"})).await?;
    w.controller = Some(Controller::spawn("c2", &w.etcd, Some(&w.api), 10)?);
    let answer = w.answer("a", g).await?;
    assert_eq!(
        (answer["status"].as_str(), answer["reason"].as_str()),
        (Some("False"), Some("Superseded")),
        "{answer}"
    );
    let message = answer["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("etcd edit at revision {edit_rev} (join b)")), "{message}");
    assert_eq!(w.net_id("a")?, b, "the etcd edit won");

    // Never a flip-flop: the request is answered for good, by this leader
    // and by the next.
    let record_rev = w.revision_of(&keys().netnamespace("a"))?;
    for (i, id) in ["c3", "c4"].iter().enumerate() {
        w.controller.take().context("controller")?.stop().await?;
        w.controller = Some(Controller::spawn(id, &w.etcd, Some(&w.api), 10)?);
        let ns = format!("later{i}");
        w.api.create_namespace(&ns)?;
        wait_settled(&w.etcd, &ns).await?;
        w.status_where(&ns, "a view", |s| s["netID"].is_u64()).await?;
        assert_eq!(w.revision_of(&keys().netnamespace("a"))?, record_rev, "a's record changed again");
        assert_eq!(w.net_id("a")?, b);
    }
    assert_ne!(w.net_id("a")?, c);
    // Asking again is a new generation: it applies (a merge patch drops the
    // target: global takes none, the CRD's schema says so).
    let g = w.ask("a", json!({"action": "global", "target": null})).await?;
    assert_eq!(w.answer("a", g).await?["reason"], "Applied");
    assert_eq!(w.net_id("a")?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_bad_object_requests_are_refused_with_a_condition_and_change_nothing() -> Result<()> {
    lab::needs_root!();
    let w = World::start(&["a", "b", "kube-system"], "deploy/base/netnamespace-crd.yaml").await?;
    let a = w.net_id("a")?;
    let record_rev = w.revision_of(&keys().netnamespace("a"))?;
    let copy_rev = w.revision_of(&keys().applied_netnamespace("a"))?;

    // The apiserver refuses what the CRD's schema refuses: nothing stored.
    for (spec, why) in [
        (json!({"action": "merge"}), r#"spec.action: Unsupported value: "merge""#),
        (json!({"action": "join"}), "must validate one and only one schema (oneOf)"),
        (json!({"action": "join", "target": "x".repeat(100_000)}), "spec.target: Too long"),
    ] {
        match w.ask("a", spec.clone()).await {
            Err(e) => {
                let e = e.downcast::<kube::Error>()?;
                let kube::Error::Api(s) = &e else { bail!("{spec}: {e}") };
                assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"), "{spec}: {s:?}");
                assert!(s.message.contains(why), "{spec}: {}", s.message);
            }
            Ok(g) => bail!("{spec}: accepted as generation {g}"),
        }
    }
    assert!(w.objects.get("a").await?.spec.is_none(), "nothing stored");

    // What only the controller knows: refused with a condition, beside the
    // record in etcd too, and the network unchanged.
    for (spec, why) in [
        (json!({"action": "join", "target": "nope"}), "namespace nope does not exist"),
        (json!({"action": "join", "target": "a"}), "cannot join itself"),
    ] {
        let g = w.ask("a", spec.clone()).await?;
        let answer = w.answer("a", g).await?;
        assert_eq!(
            (answer["status"].as_str(), answer["reason"].as_str()),
            (Some("False"), Some("Rejected")),
            "{answer}"
        );
        assert!(answer["message"].as_str().is_some_and(|m| m.contains(why)), "{answer}");
        let s = w.objects.get("a").await?.status.context("status")?;
        assert!(
            s["lastError"]
                .as_str()
                .is_some_and(|e| e.contains(why) && e.contains(&format!("generation {g}"))),
            "{s}"
        );
        let e: etcd_schema::RecordError =
            serde_json::from_str(&w.etcd.get(&keys().netnamespace_error("a"))?.context("error record")?)?;
        assert!(e.error.contains(why) && e.edit_revision == 0, "{e:?}");
        assert_eq!(w.net_id("a")?, a);
        assert_eq!(w.revision_of(&keys().netnamespace("a"))?, record_rev, "{spec}: the record untouched");
        assert_eq!(
            w.revision_of(&keys().applied_netnamespace("a"))?,
            copy_rev,
            "{spec}: what agents program untouched"
        );
    }
    let g = w.ask("kube-system", json!({"action": "isolate"})).await?;
    let answer = w.answer("kube-system", g).await?;
    assert!(answer["message"].as_str().is_some_and(|m| m.contains("admin namespace")), "{answer}");
    assert_eq!(w.net_id("kube-system")?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_the_controller_checks_again_what_a_schemaless_crd_lets_through() -> Result<()> {
    lab::needs_root!();
    // A CRD installed without the schema (by hand, or an older manifest):
    // the apiserver stores any spec; the controller must refuse, per object,
    // and keep serving the others.
    let w = World::start(&["a", "b"], "controller/tests/data/netnamespace-crd-schemaless.yaml").await?;
    let (a, b) = (w.net_id("a")?, w.net_id("b")?);
    let huge = "y".repeat(1 << 20);
    for (spec, why) in [
        (json!({"action": "merge"}), "unknown action"),
        (json!({"action": 5}), "must be a string"),
        (json!({"action": "join", "target": huge}), "not a namespace name"),
        (json!("join b"), "must be an object"),
    ] {
        let g = w.ask("a", spec.clone()).await?;
        let answer = w.answer("a", g).await?;
        assert_eq!(answer["reason"], "Rejected", "{spec}: {answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(why) && message.len() < 2000,
            "{}: {}",
            why,
            &message[..message.len().min(300)]
        );
        assert_eq!(w.net_id("a")?, a);
    }
    // A good request on another object still works.
    let g = w.ask("b", json!({"action": "global"})).await?;
    assert_eq!(w.answer("b", g).await?["reason"], "Applied");
    assert_eq!(w.net_id("b")?, 0);
    assert_ne!(b, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_ctl_via_kube_asks_and_waits_without_etcd_credentials() -> Result<()> {
    lab::needs_root!();
    let w = World::start(&["a", "b"], "deploy/base/netnamespace-crd.yaml").await?;
    let b = w.net_id("b")?;
    let url = w.api.url();
    // An etcd nobody listens on: --via kube must not need one.
    let ctl = |args: &[&str]| -> Result<lab::cmd::Output> {
        let bin = lab::cluster::bin("k8s-ovs-ctl")?;
        let bin = bin.to_string_lossy();
        let mut argv =
            vec![bin.as_ref(), "--etcd-endpoints", "http://127.0.0.1:1", "--via", "kube", "--kube-url", &url];
        argv.extend_from_slice(args);
        lab::cmd::run_full(&argv, &[], Duration::from_secs(60))
    };
    let out = ctl(&["--wait", "join", "a", "--to", "b"])?;
    assert!(out.success(), "{} {}", out.stdout, out.stderr);
    assert_eq!(out.stdout.trim(), format!("a: NetID {b}"));
    assert_eq!(w.net_id("a")?, b);
    let out = ctl(&["--wait", "join", "a", "--to", "b"])?;
    assert_eq!(out.stdout.trim(), format!("a: already so (NetID {b})"), "{}", out.stderr);
    let out = ctl(&["--wait", "join", "a", "--to", "nope"])?;
    assert!(
        !out.success() && out.stderr.contains("namespace nope does not exist"),
        "{} {}",
        out.stdout,
        out.stderr
    );
    let out = ctl(&["--wait", "join", "a", "--to", "b"])?;
    assert!(out.success(), "{}", out.stderr);
    // The same spec again after an etcd edit undid it: asked again (the
    // object re-created: a new request), applied again.
    w.etcd.put(
        &keys().netnamespace("a"),
        &format!(r#"{{"NetName":"a","NetID":{b},"Action":"isolate","Namespace":""}}"#),
    )?;
    eventually("a isolated by etcd", Duration::from_secs(30), || async {
        Ok(settled(&w.etcd, "a")?.filter(|r| r.net_id != b))
    })
    .await?;
    let out = ctl(&["--wait", "join", "a", "--to", "b"])?;
    assert_eq!(out.stdout.trim(), format!("a: NetID {b}"), "{}", out.stderr);
    assert_eq!(w.net_id("a")?, b);
    let out = ctl(&["--wait", "global", "a"])?;
    assert!(out.success(), "{}", out.stderr);
    let out = ctl(&["list"])?;
    assert!(out.success(), "{}", out.stderr);
    let row = out.stdout.lines().find(|l| l.starts_with("a ")).context("a row")?;
    assert_eq!(row.split_whitespace().nth(1), Some("0"), "{}", out.stdout);
    let out = ctl(&["subnets"])?;
    assert!(!out.success() && out.stderr.contains("--via kube serves"), "{}", out.stderr);
    Ok(())
}
