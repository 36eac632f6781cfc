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
