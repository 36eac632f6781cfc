//! The agent's NetworkPolicy source against the lab's test apiserver (in
//! process, on 127.0.0.1, no root): the published view follows policies,
//! pods and namespaces, and nothing is published before all three lists.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_ovs_agent::policy_source::{fetch_pod, run_policies};
use kube::Client;
use lab::kube_api::{Kind, KubeApi};
use ovs_flows::policy::{PolicyProtocol, PolicyView};
use serde_json::{json, Value};
use tokio::sync::watch;

fn client(api: &KubeApi) -> Result<Client> {
    let config = kube::Config::new(api.url().parse().context("url")?);
    Ok(Client::try_from(config)?)
}

fn key(ns: &str, name: &str) -> (String, String) {
    (ns.to_string(), name.to_string())
}

/// The published view once `pred` holds (bounded, so a bug fails instead
/// of hanging).
async fn view_when(
    rx: &mut watch::Receiver<Arc<PolicyView>>,
    what: &str,
    pred: impl Fn(&PolicyView) -> bool,
) -> Result<Arc<PolicyView>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let view = rx.borrow_and_update().clone();
        if pred(&view) {
            return Ok(view);
        }
        tokio::time::timeout_at(deadline, rx.changed())
            .await
            .with_context(|| format!("{what}: not published within 30 s; last view {view:#?}"))??;
    }
}

fn pod(ns: &str, name: &str, labels: Value, ip: Option<&str>) -> Value {
    let status = match ip {
        Some(ip) => json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}),
        None => json!({"phase": "Pending"}),
    };
    json!({
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "x", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": status
    })
}

async fn wait_lists(api: &KubeApi, kind: Kind, n: u64) -> Result<()> {
    for _ in 0..300 {
        if api.list_count(kind) >= n {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{kind:?} not listed {n} times within 30 s")
}

#[tokio::test]
async fn the_policy_view_follows_policies_pods_and_namespaces() -> Result<()> {
    let api = KubeApi::start()?;
    api.create_namespace("default")?;
    api.create(
        json!({"kind": "Namespace", "metadata": {"name": "myproject", "labels": {"project": "myproject"}}}),
    )?;
    api.create(pod("default", "db", json!({"role": "db"}), Some("10.1.0.2")))?;
    api.create(pod("default", "frontend", json!({"role": "frontend"}), None))?;
    // A pod kube-rs cannot read: the pod list fails (and is retried) until
    // it is gone, while the policies and namespaces list at once.
    api.create(json!({"kind": "Pod", "metadata": {"name": "broken", "namespace": "default"},
                      "spec": {"containers": "not a list"}}))?;
    api.create(json!({
        "kind": "NetworkPolicy",
        "apiVersion": "networking.k8s.io/v1",
        "metadata": {"name": "test-network-policy", "namespace": "default"},
        "spec": {
            "podSelector": {"matchLabels": {"role": "db"}},
            "ingress": [{
                "from": [
                    {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
                    {"namespaceSelector": {"matchLabels": {"project": "myproject"}}},
                    {"podSelector": {"matchLabels": {"role": "frontend"}}}
                ],
                "ports": [{"port": 6379}]
            }],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}], "ports": [{"port": 5978}]}]
        }
    }))?;

    let (tx, mut rx) = watch::channel(Arc::new(PolicyView::default()));
    let task = tokio::spawn(run_policies(client(&api)?, tx));

    // Policies and namespaces listed, pods listed and failed twice.
    wait_lists(&api, Kind::NetworkPolicy, 1).await?;
    wait_lists(&api, Kind::Namespace, 1).await?;
    wait_lists(&api, Kind::Pod, 2).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!rx.has_changed()?, "published before the pod list completed: {:#?}", rx.borrow());
    assert_eq!(**rx.borrow(), PolicyView::default());

    api.delete(Kind::Pod, Some("default"), "broken")?;
    tokio::time::timeout(Duration::from_secs(30), rx.changed()).await.context("first view")??;
    // The first view is whole: all three kinds at once.
    let v = rx.borrow_and_update().clone();
    assert_eq!(v.policies.keys().cloned().collect::<Vec<_>>(), [key("default", "test-network-policy")]);
    let p = &v.policies[&key("default", "test-network-policy")];
    // The server defaulted policyTypes (egress rules: both) and protocols.
    assert!(p.ingress.is_some() && p.egress.is_some(), "{p:#?}");
    assert_eq!(p.ingress.as_ref().and_then(|r| r[0].peers.as_ref()).map(Vec::len), Some(3));
    assert_eq!(
        v.pods.keys().cloned().collect::<Vec<_>>(),
        [key("default", "db"), key("default", "frontend")]
    );
    assert_eq!(v.pods[&key("default", "db")].ip, Some(Ipv4Addr::new(10, 1, 0, 2)));
    let frontend = &v.pods[&key("default", "frontend")];
    assert_eq!(frontend.ip, None, "a pod without an address is kept");
    assert_eq!(frontend.named_ports.get(&("http".to_string(), PolicyProtocol::Tcp)), Some(&8080));
    assert_eq!(v.namespaces.keys().collect::<Vec<_>>(), ["default", "myproject"]);
    assert_eq!(v.namespaces["myproject"].get("project").map(String::as_str), Some("myproject"));
    assert_eq!(
        v.namespaces["myproject"].get("kubernetes.io/metadata.name").map(String::as_str),
        Some("myproject")
    );

    // The kubelet reports the address: a MODIFIED pod.
    api.update(pod("default", "frontend", json!({"role": "frontend"}), Some("10.1.0.3")))?;
    view_when(&mut rx, "frontend's address", |v| {
        v.pods.get(&key("default", "frontend")).is_some_and(|p| p.ip == Some(Ipv4Addr::new(10, 1, 0, 3)))
    })
    .await?;

    // A change policies do not read (an annotation) publishes nothing.
    let mut annotated = pod("default", "frontend", json!({"role": "frontend"}), Some("10.1.0.3"));
    annotated["metadata"]["annotations"] = json!({"note": "x"});
    api.update(annotated)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!rx.has_changed()?, "an annotation is not part of the view");

    // New objects of each kind, then deletions.
    api.create(pod("myproject", "client", json!({"app": "client"}), Some("10.1.0.4")))?;
    api.create(json!({"kind": "Namespace", "metadata": {"name": "other"}}))?;
    view_when(&mut rx, "the new pod and namespace", |v| {
        v.pods.contains_key(&key("myproject", "client")) && v.namespaces.contains_key("other")
    })
    .await?;
    api.delete(Kind::NetworkPolicy, Some("default"), "test-network-policy")?;
    api.delete(Kind::Pod, Some("default"), "db")?;
    api.delete_namespace("other")?;
    let v = view_when(&mut rx, "the deletions", |v| {
        v.policies.is_empty()
            && !v.pods.contains_key(&key("default", "db"))
            && !v.namespaces.contains_key("other")
    })
    .await?;
    assert_eq!(v.pods.len(), 2);

    // A relist after expired history: the same objects, so no new view.
    let lists = api.list_count(Kind::Pod);
    api.expire_history();
    wait_lists(&api, Kind::Pod, lists + 1).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(**rx.borrow(), *v, "a relist of the same objects changes nothing");

    task.abort();
    Ok(())
}

#[tokio::test]
async fn fetch_pod_reads_one_pod_or_none() -> Result<()> {
    let api = KubeApi::start()?;
    api.create_namespace("red")?;
    api.create(pod("red", "web", json!({"app": "web"}), Some("10.1.0.9")))?;
    let client = client(&api)?;
    let p = fetch_pod(&client, "red", "web").await?.context("web exists")?;
    assert_eq!((p.namespace.as_str(), p.name.as_str()), ("red", "web"));
    assert_eq!(p.ip, Some(Ipv4Addr::new(10, 1, 0, 9)));
    assert_eq!(p.labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(p.named_ports.get(&("http".to_string(), PolicyProtocol::Tcp)), Some(&8080));
    assert!(fetch_pod(&client, "red", "missing").await?.is_none());
    assert!(fetch_pod(&client, "nowhere", "web").await?.is_none());
    Ok(())
}
