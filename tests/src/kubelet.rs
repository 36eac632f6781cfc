//! What the kubelet does around a pod's network, for labs with the test
//! apiserver: the Pod object exists (labels, `spec.nodeName`, containers
//! with their named ports) before the runtime runs the CNI ADD, and once the
//! ADD returned the kubelet writes the address the CNI result gave into
//! `status.podIP` / `status.podIPs`. Agents that read pods (their labels at
//! ADD, their addresses for policy peers) see them as in a real cluster.

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::cluster::{self, CniPod};
use crate::kube_api::{Kind, KubeApi};
use crate::Lab;

/// A container port of the pod's spec: (name, protocol "TCP"/"UDP", port).
pub type ContainerPort<'a> = (Option<&'a str>, &'a str, u16);

/// The Pod object as a user creates it and the scheduler binds it to node
/// `n<node>` (no status yet: Pending).
pub fn pod_object(
    namespace: &str,
    name: &str,
    node: usize,
    labels: &Value,
    ports: &[ContainerPort<'_>],
) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, proto, port)| {
            let mut p = json!({"containerPort": port, "protocol": proto});
            if let Some(n) = n {
                p["name"] = json!(n);
            }
            p
        })
        .collect();
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"nodeName": format!("n{node}"),
                 "containers": [{"name": "main", "image": "k8s-ovs.io/lab:none", "ports": ports}]},
        "status": {"phase": "Pending"}
    })
}

/// Runs pod `namespace/name` on node `node` as the kubelet does: creates the
/// Pod object in `api`, runs the CNI ADD through the plugin binary, then
/// writes the result's address into the pod's status (phase Running).
pub fn run_pod(
    lab: &mut Lab,
    api: &KubeApi,
    node: usize,
    namespace: &str,
    name: &str,
    labels: &Value,
    ports: &[ContainerPort<'_>],
) -> Result<CniPod> {
    let netns = lab.pod_netns(name)?;
    run_pod_in(lab, api, node, netns, namespace, name, labels, ports)
}

/// [`run_pod`] in a sandbox the caller made already (`Lab::pod_netns`).
#[allow(clippy::too_many_arguments)]
pub fn run_pod_in(
    lab: &Lab,
    api: &KubeApi,
    node: usize,
    netns: crate::Netns,
    namespace: &str,
    name: &str,
    labels: &Value,
    ports: &[ContainerPort<'_>],
) -> Result<CniPod> {
    api.create(pod_object(namespace, name, node, labels, ports))
        .with_context(|| format!("create Pod {namespace}/{name}"))?;
    let pod = cluster::add_pod_in(lab, node, netns, namespace, name)?;
    set_running(api, lab, &pod)?;
    Ok(pod)
}

/// The kubelet's status update after the sandbox's network is up.
pub fn set_running(api: &KubeApi, lab: &Lab, pod: &CniPod) -> Result<()> {
    let mut obj = api
        .get(Kind::Pod, Some(&pod.namespace), &pod.name)
        .with_context(|| format!("Pod {}/{} vanished", pod.namespace, pod.name))?;
    obj["status"] = json!({
        "phase": "Running",
        "hostIP": lab.node(pod.node).ip,
        "podIP": pod.ip,
        "podIPs": [{"ip": pod.ip}],
    });
    api.update(obj).with_context(|| format!("status of Pod {}/{}", pod.namespace, pod.name))?;
    Ok(())
}
