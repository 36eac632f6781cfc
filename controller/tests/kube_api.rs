//! The lab's test kube-apiserver, driven by kube-rs itself: lists, watches,
//! selectors, 410 Gone leading to a relist, and listening inside a namespace.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::ListParams;
use kube::runtime::watcher::{self, watcher, Event};
use kube::{Api, Client, ResourceExt};
use lab::kube_api::{Kind, KubeApi};
use serde_json::json;

fn client(api: &KubeApi) -> Result<Client> {
    let config = kube::Config::new(api.url().parse().context("url")?);
    Ok(Client::try_from(config)?)
}

/// Waits (bounded, so a bug fails instead of hanging) for the next event
/// that is not an Init* bookkeeping step.
async fn next_change<S>(stream: &mut S) -> Result<Event<Namespace>>
where
    S: futures::Stream<Item = Result<Event<Namespace>, watcher::Error>> + Unpin,
{
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .context("no watch event within 30 s")?
            .context("stream ended")??;
        match ev {
            Event::Apply(_) | Event::Delete(_) | Event::InitDone => return Ok(ev),
            _ => {}
        }
    }
}

#[tokio::test]
async fn kube_rs_lists_and_watches_namespaces() -> Result<()> {
    let api = KubeApi::start()?;
    api.create_namespace("a")?;
    api.create_namespace("b")?;
    let ns: Api<Namespace> = Api::all(client(&api)?);

    let listed: BTreeSet<String> =
        ns.list(&ListParams::default()).await?.items.iter().map(|n| n.name_any()).collect();
    assert_eq!(listed, BTreeSet::from(["a".to_string(), "b".to_string()]));
    assert_eq!(ns.get("a").await?.name_any(), "a");
    assert!(ns.get("missing").await.is_err());

    let mut stream = watcher(ns.clone(), watcher::Config::default().any_semantic()).boxed();
    assert!(matches!(next_change(&mut stream).await?, Event::InitDone));
    api.create_namespace("c")?;
    match next_change(&mut stream).await? {
        Event::Apply(n) => assert_eq!(n.name_any(), "c"),
        other => panic!("expected Apply(c), got {other:?}"),
    }
    api.delete_namespace("a")?;
    match next_change(&mut stream).await? {
        Event::Delete(n) => assert_eq!(n.name_any(), "a"),
        other => panic!("expected Delete(a), got {other:?}"),
    }

    // Expired history: the open watch ends, the resumed one gets 410 Gone,
    // kube-rs relists and carries on.
    let lists_before = api.list_count(Kind::Namespace);
    api.expire_history();
    api.create_namespace("d")?;
    let mut seen_d = false;
    while !seen_d {
        let ev =
            tokio::time::timeout(Duration::from_secs(30), stream.next()).await?.context("stream ended")?;
        match ev {
            // After the relist "d" arrives as part of the new initial list.
            Ok(Event::Apply(n) | Event::InitApply(n)) if n.name_any() == "d" => seen_d = true,
            Ok(_) => {}
            // The 410 surfaces once as an error before the relist.
            Err(e) => assert!(e.to_string().contains("410") || e.to_string().contains("too old"), "{e}"),
        }
    }
    assert!(api.list_count(Kind::Namespace) > lists_before, "kube-rs relisted after 410");
    Ok(())
}

#[tokio::test]
async fn pods_of_one_node_by_field_selector() -> Result<()> {
    let api = KubeApi::start()?;
    for (name, node, ns) in [("p1", "n1", "default"), ("p2", "n2", "default"), ("p3", "n1", "other")] {
        api.create(
            json!({"kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
                          "spec": {"nodeName": node, "containers": []}}),
        )?;
    }
    let pods: Api<Pod> = Api::all(client(&api)?);
    let on_n1 = ListParams::default().fields("spec.nodeName=n1");
    let names: BTreeSet<String> = pods.list(&on_n1).await?.items.iter().map(|p| p.name_any()).collect();
    assert_eq!(names, BTreeSet::from(["p1".to_string(), "p3".to_string()]));
    let by_label = pods.list(&ListParams::default().labels("app=p2")).await?;
    assert_eq!(by_label.items.len(), 1);
    let in_default: Api<Pod> = Api::namespaced(client(&api)?, "default");
    assert_eq!(in_default.list(&ListParams::default()).await?.items.len(), 2);

    // The agent's watch: only its node's pods, and updates to them.
    let cfg = watcher::Config::default().fields("spec.nodeName=n1");
    let mut stream = watcher(pods, cfg).boxed();
    let mut seen = BTreeSet::new();
    api.create(json!({"kind": "Pod", "metadata": {"name": "p4", "namespace": "default"}, "spec": {"nodeName": "n2", "containers": []}}))?;
    api.create(json!({"kind": "Pod", "metadata": {"name": "p5", "namespace": "default"}, "spec": {"nodeName": "n1", "containers": []}}))?;
    while !seen.contains("p5") {
        let ev = tokio::time::timeout(Duration::from_secs(30), stream.try_next()).await??.context("ended")?;
        if let Event::Apply(p) | Event::InitApply(p) = ev {
            seen.insert(p.name_any());
        }
    }
    assert!(!seen.contains("p2") && !seen.contains("p4"), "pods of n2 filtered out: {seen:?}");
    Ok(())
}

/// A netns named by the lab's scheme, removed even when the test fails.
struct TempNetns(lab::Netns);

impl Drop for TempNetns {
    fn drop(&mut self) {
        self.0.destroy();
    }
}

#[test]
fn lab_kube_api_listens_inside_a_namespace() -> Result<()> {
    lab::needs_root!();
    lab::sweep::sweep(lab::DEFAULT_PREFIX, &lab::base_dir());
    let ns =
        TempNetns(lab::Netns::create(&format!("{}{}x900-kapi", lab::DEFAULT_PREFIX, std::process::id()))?);
    let api = KubeApi::start_in(&ns.0, "127.0.0.1", 0)?;
    api.create_namespace("inside")?;
    let url = format!("{}/api/v1/namespaces", api.url());
    let body = ns.0.exec(&["curl", "-sS", "--max-time", "10", &url])?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(v["kind"], "NamespaceList");
    assert_eq!(v["items"][0]["metadata"]["name"], "inside");
    // The socket lives in the namespace: from ours, nothing listens there.
    assert!(std::net::TcpStream::connect(api.addr()).is_err());
    Ok(())
}

mod custom_resources {
    //! NetNamespace objects (the CRD of deploy/) through kube-rs, as the
    //! controller and `k8s-ovs-ctl --via kube` use them: what the test
    //! apiserver must do the way kube-apiserver does.

    use super::*;
    use controller::netns_object::NetNamespaceObject;
    use kube::api::{DeleteParams, PostParams, Preconditions};

    fn objects(api: &KubeApi) -> Result<Api<NetNamespaceObject>> {
        let crd =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/netnamespace-crd.yaml");
        api.create_crds_from(&crd)?;
        Ok(Api::all(client(api)?))
    }

    fn asking(name: &str, spec: serde_json::Value) -> NetNamespaceObject {
        let mut o = NetNamespaceObject::view(name);
        o.spec = Some(spec);
        o
    }

    fn api_error(r: Result<NetNamespaceObject, kube::Error>) -> Box<kube::core::Status> {
        match r {
            Err(kube::Error::Api(s)) => s,
            other => panic!("expected an API error, got {other:?}"),
        }
    }

    fn rv(o: &NetNamespaceObject) -> String {
        o.metadata.resource_version.clone().unwrap_or_default()
    }

    #[tokio::test]
    async fn writes_follow_the_custom_resource_rules() -> Result<()> {
        let api = KubeApi::start()?;
        let objects = objects(&api)?;
        let pp = PostParams::default();
        // Create: generation 1, the body's status dropped (status subresource).
        let mut o = asking("red", json!({"action": "join", "target": "blue"}));
        o.status = Some(json!({"netID": 5}));
        let v1 = objects.create(&pp, &o).await?;
        assert_eq!((v1.metadata.generation, v1.status.is_none()), (Some(1), true));
        assert!(v1.metadata.uid.is_some() && v1.metadata.creation_timestamp.is_some());
        assert_eq!(api_error(objects.create(&pp, &o).await).code, 409, "AlreadyExists");
        // An update that changes nothing stores nothing.
        assert_eq!(rv(&objects.replace("red", &pp, &v1).await?), rv(&v1));
        // A spec change: generation 2.
        let mut changed = v1.clone();
        changed.spec = Some(json!({"action": "global"}));
        let v2 = objects.replace("red", &pp, &changed).await?;
        assert_eq!(v2.metadata.generation, Some(2));
        // On a stale resourceVersion: 409 Conflict; without one: 422.
        let stale = api_error(objects.replace("red", &pp, &changed).await);
        assert_eq!((stale.code, stale.reason.as_str()), (409, "Conflict"));
        assert!(stale.message.contains("the object has been modified"), "{}", stale.message);
        let mut unconditional = v2.clone();
        unconditional.metadata.resource_version = None;
        let e = api_error(objects.replace("red", &pp, &unconditional).await);
        assert!(e.code == 422 && e.message.contains("metadata.resourceVersion"), "{e:?}");
        // Status through the main resource: ignored.
        let mut with_status = v2.clone();
        with_status.status = Some(json!({"netID": 7}));
        let same = objects.replace("red", &pp, &with_status).await?;
        assert_eq!((same.status.clone(), rv(&same)), (None, rv(&v2)));
        // The status subresource: the status only, the generation kept.
        let mut st = v2.clone();
        st.status = Some(json!({"netID": 7}));
        st.spec = Some(json!({"action": "isolate"}));
        let v3 = objects.replace_status("red", &pp, &st).await?;
        assert_eq!(v3.status, Some(json!({"netID": 7})));
        assert_eq!((v3.spec.clone(), v3.metadata.generation), (Some(json!({"action": "global"})), Some(2)));
        let mut bad_status = v3.clone();
        bad_status.status = Some(json!({"netID": -1}));
        let e = api_error(objects.replace_status("red", &pp, &bad_status).await);
        assert!(e.code == 422 && e.message.contains("status.netID"), "{e:?}");
        // Delete on a stale uid: 409; on the right one, gone.
        let dp = |uid: &str| DeleteParams {
            preconditions: Some(Preconditions { uid: Some(uid.into()), resource_version: None }),
            ..DeleteParams::default()
        };
        assert!(
            matches!(objects.delete("red", &dp("other")).await, Err(kube::Error::Api(s)) if s.code == 409)
        );
        objects.delete("red", &dp(v3.metadata.uid.as_deref().unwrap_or_default())).await?;
        assert!(objects.get_opt("red").await?.is_none());
        Ok(())
    }

    #[tokio::test]
    async fn the_schema_is_enforced_with_the_apiservers_messages() -> Result<()> {
        let api = KubeApi::start()?;
        let objects = objects(&api)?;
        let pp = PostParams::default();
        let cases = [
            (
                json!({"action": "merge"}),
                r#"spec.action: Unsupported value: "merge": supported values: "join", "isolate", "global""#,
            ),
            (
                json!({"action": "join"}),
                "spec: Invalid value: \"object\": spec in body must validate one and only one schema (oneOf)",
            ),
            (json!({"action": "global", "target": "blue"}), "must validate one and only one schema (oneOf)"),
            (json!({"action": "join", "target": "Blue"}), "spec.target in body should match"),
            (
                json!({"action": "join", "target": "b".repeat(64)}),
                "spec.target: Too long: may not be more than 63 bytes",
            ),
        ];
        for (spec, want) in cases {
            let e = api_error(objects.create(&pp, &asking("red", spec.clone())).await);
            assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"), "{spec}");
            assert!(
                e.message.starts_with("NetNamespace.k8s-ovs.io \"red\" is invalid: ")
                    && e.message.contains(want),
                "{spec}: {}",
                e.message
            );
        }
        let e = api_error(objects.create(&pp, &asking("Not_A_Name", json!({}))).await);
        assert!(e.code == 422 && e.message.contains("metadata.name"), "{e:?}");
        // Defaults in, unknown fields out.
        let o = objects.create(&pp, &asking("red", json!({"color": "red"}))).await?;
        assert_eq!(o.spec, Some(json!({"action": "isolate"})));
        // A body over 3 MiB: 413, before anything is decoded.
        let huge = asking("big", json!({"action": "join", "target": "x".repeat(4 << 20)}));
        assert!(matches!(objects.create(&pp, &huge).await, Err(kube::Error::Api(s)) if s.code == 413));
        Ok(())
    }

    async fn next_event<S>(stream: &mut S) -> Result<Event<NetNamespaceObject>>
    where
        S: futures::Stream<Item = Result<Event<NetNamespaceObject>, watcher::Error>> + Unpin,
    {
        let ev = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .context("no watch event within 30 s")?
            .context("stream ended")??;
        Ok(ev)
    }

    #[tokio::test]
    async fn watches_see_every_write_in_order() -> Result<()> {
        let api = KubeApi::start()?;
        let objects = objects(&api)?;
        let mut stream = watcher(objects.clone(), watcher::Config::default()).boxed();
        assert!(matches!(next_event(&mut stream).await?, Event::Init));
        assert!(matches!(next_event(&mut stream).await?, Event::InitDone));
        let pp = PostParams::default();
        let o = objects.create(&pp, &asking("red", json!({"action": "global"}))).await?;
        let mut s = o.clone();
        s.status = Some(json!({"netID": 0}));
        objects.replace_status("red", &pp, &s).await?;
        objects.delete("red", &Default::default()).await?;
        match next_event(&mut stream).await? {
            Event::Apply(o) => assert!(o.status.is_none()),
            other => panic!("{other:?}"),
        }
        match next_event(&mut stream).await? {
            Event::Apply(o) => assert_eq!(o.status, Some(json!({"netID": 0}))),
            other => panic!("{other:?}"),
        }
        assert!(matches!(next_event(&mut stream).await?, Event::Delete(_)));
        Ok(())
    }
}
