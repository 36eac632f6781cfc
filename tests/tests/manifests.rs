//! The Kubernetes manifests under `deploy/` and the `Dockerfile`, checked
//! without a cluster: every document parses into its k8s-openapi type with
//! no field lost on the way (so a misspelt field fails, not only a wrong
//! kind), and the parts that make the network work agree with the code:
//! binary names and flags exist (`<binary> --help`), mounts match the paths
//! the flags name, the conflist is one the plugin accepts, RBAC grants what
//! the daemons watch and nothing more.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every document of every YAML file under `deploy/` except the
/// kustomization, as (file, JSON value).
fn documents() -> Result<Vec<(String, serde_json::Value)>> {
    let mut docs = Vec::new();
    for file in yaml_files()? {
        if file == "kustomization.yaml" {
            continue;
        }
        let text = std::fs::read_to_string(repo().join("deploy").join(&file))?;
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v = serde_json::Value::deserialize(doc).with_context(|| format!("deploy/{file}: YAML"))?;
            if !v.is_null() {
                docs.push((file.clone(), v));
            }
        }
    }
    Ok(docs)
}

fn yaml_files() -> Result<Vec<String>> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(repo().join("deploy"))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            files.push(name);
        }
    }
    files.sort();
    Ok(files)
}

/// The typed objects of the manifests.
#[derive(Default)]
struct Manifests {
    daemonsets: Vec<DaemonSet>,
    deployments: Vec<Deployment>,
    config_maps: Vec<ConfigMap>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
}

/// Parses `v` as `T` and requires serializing it back to give `v` again: a
/// field k8s-openapi does not know (a typo) would be dropped and differ.
fn typed<T: DeserializeOwned + Serialize>(file: &str, v: &serde_json::Value) -> Result<T> {
    let t: T = serde_json::from_value(v.clone()).with_context(|| format!("deploy/{file}: {}", v["kind"]))?;
    let back = serde_json::to_value(&t)?;
    if &back != v {
        bail!(
            "deploy/{file}: {} {} has fields its type does not know:\n{}",
            v["kind"],
            v["metadata"]["name"],
            diff(v, &back, "")
        );
    }
    Ok(t)
}

/// Paths present in `want` but missing or different in `got`.
fn diff(want: &serde_json::Value, got: &serde_json::Value, at: &str) -> String {
    use serde_json::Value::{Array, Object};
    match (want, got) {
        (Object(a), Object(b)) => a
            .iter()
            .map(|(k, v)| diff(v, b.get(k).unwrap_or(&serde_json::Value::Null), &format!("{at}.{k}")))
            .collect(),
        (Array(a), Array(b)) if a.len() == b.len() => {
            a.iter().zip(b).enumerate().map(|(i, (x, y))| diff(x, y, &format!("{at}[{i}]"))).collect()
        }
        _ if want == got => String::new(),
        _ => format!("  {at}: {want} became {got}\n"),
    }
}

fn load() -> Result<Manifests> {
    let mut m = Manifests::default();
    for (file, v) in documents()? {
        match v["kind"].as_str().unwrap_or_default() {
            "DaemonSet" => m.daemonsets.push(typed(&file, &v)?),
            "Deployment" => m.deployments.push(typed(&file, &v)?),
            "ConfigMap" => m.config_maps.push(typed(&file, &v)?),
            "ServiceAccount" => m.service_accounts.push(typed(&file, &v)?),
            "ClusterRole" => m.cluster_roles.push(typed(&file, &v)?),
            "ClusterRoleBinding" => m.bindings.push(typed(&file, &v)?),
            other => bail!("deploy/{file}: kind {other:?} is not checked by this test; add it"),
        }
    }
    Ok(m)
}

fn pod_spec<'a>(spec: Option<&'a PodSpec>, what: &str) -> Result<&'a PodSpec> {
    spec.with_context(|| format!("{what}: no pod spec"))
}

fn daemonset(m: &Manifests) -> Result<&DaemonSet> {
    ensure!(m.daemonsets.len() == 1, "one DaemonSet (the agent), found {}", m.daemonsets.len());
    Ok(&m.daemonsets[0])
}

fn deployment(m: &Manifests) -> Result<&Deployment> {
    ensure!(m.deployments.len() == 1, "one Deployment (the controller), found {}", m.deployments.len());
    Ok(&m.deployments[0])
}

fn agent_pod(m: &Manifests) -> Result<&PodSpec> {
    let ds = daemonset(m)?;
    pod_spec(ds.spec.template.spec.as_ref(), "DaemonSet")
}

fn controller_pod(m: &Manifests) -> Result<&PodSpec> {
    let d = deployment(m)?;
    pod_spec(d.spec.template.spec.as_ref(), "Deployment")
}

fn container<'a>(pod: &'a PodSpec, name: &str) -> Result<&'a Container> {
    pod.containers.iter().find(|c| c.name == name).with_context(|| format!("no container {name}"))
}

/// Every word of a container's command and args (shell scripts included).
fn words(c: &Container) -> Vec<String> {
    c.command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .flat_map(|s| s.split_whitespace())
        .map(|w| w.trim_matches(|ch| ch == '"' || ch == '\'' || ch == ';').to_string())
        .collect()
}

/// `--flag` words (value after `=` cut off; a bare `--` is not a flag).
fn flags(c: &Container) -> BTreeSet<String> {
    words(c)
        .into_iter()
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.split('=').next().unwrap_or_default().to_string())
        .collect()
}

/// The host path behind the container's mount at `path`.
fn host_path_at(pod: &PodSpec, c: &Container, path: &str) -> Result<String> {
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == path)
        .with_context(|| format!("container {}: nothing mounted at {path}", c.name))?;
    let vol = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .with_context(|| format!("no volume {}", mount.name))?;
    let hp = vol.host_path.as_ref().with_context(|| format!("volume {} is not a hostPath", vol.name))?;
    Ok(hp.path.clone())
}

/// Value of `--flag=value` in the container's args.
fn flag_value(c: &Container, flag: &str) -> Result<String> {
    let prefix = format!("{flag}=");
    words(c)
        .into_iter()
        .find_map(|w| w.strip_prefix(&prefix).map(str::to_string))
        .with_context(|| format!("container {}: no {flag}=...", c.name))
}

/// The binaries the final image stage copies to /usr/local/bin.
fn image_binaries() -> Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(repo().join("Dockerfile"))?;
    let last_stage = text.rsplit("\nFROM ").next().context("Dockerfile: no stage")?;
    let copy = last_stage
        .lines()
        .find(|l| l.starts_with("COPY --from=builder") && l.trim_end().ends_with("/usr/local/bin/"))
        .context("Dockerfile: no COPY of the binaries to /usr/local/bin/")?;
    Ok(copy
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("/src/target/release/"))
        .map(str::to_string)
        .collect())
}

fn help(binary: &str) -> Result<String> {
    let out = std::process::Command::new(lab::cluster::bin(binary)?).arg("--help").output()?;
    ensure!(out.status.success(), "{binary} --help failed");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn every_manifest_parses_into_its_kubernetes_type_without_unknown_fields() -> Result<()> {
    let m = load()?;
    ensure!(
        m.config_maps.len() == 1 && m.service_accounts.len() == 2,
        "one ConfigMap and two ServiceAccounts"
    );
    ensure!(m.cluster_roles.len() == 2 && m.bindings.len() == 2, "two ClusterRoles and their bindings");
    daemonset(&m)?;
    deployment(&m)?;
    Ok(())
}

#[test]
fn typed_parse_rejects_a_misspelt_field() -> Result<()> {
    // The check above is only worth something if a typo fails it.
    let v = serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "x"}, "automountServiceAccountTokn": false});
    ensure!(typed::<ServiceAccount>("test", &v).is_err(), "a misspelt field was accepted");
    let v = serde_json::json!({"apiVersion": "v1", "kind": "ServiceAcount", "metadata": {"name": "x"}});
    ensure!(typed::<ServiceAccount>("test", &v).is_err(), "a misspelt kind was accepted");
    Ok(())
}

#[test]
fn kustomization_lists_every_manifest() -> Result<()> {
    #[derive(Deserialize)]
    struct Kustomization {
        namespace: String,
        resources: Vec<String>,
    }
    let text = std::fs::read_to_string(repo().join("deploy/kustomization.yaml"))?;
    let k: Kustomization = serde_norway::from_str(&text)?;
    let listed: BTreeSet<String> = k.resources.into_iter().collect();
    let files: BTreeSet<String> = yaml_files()?.into_iter().filter(|f| f != "kustomization.yaml").collect();
    ensure!(listed == files, "kustomization resources {listed:?} != files {files:?}");
    for (file, v) in documents()? {
        if let Some(ns) = v["metadata"]["namespace"].as_str() {
            ensure!(ns == k.namespace, "deploy/{file}: namespace {ns}, kustomization says {}", k.namespace);
        }
    }
    Ok(())
}

#[test]
fn agent_daemonset_runs_privileged_on_the_host_network_with_its_mounts() -> Result<()> {
    let m = load()?;
    let pod = agent_pod(&m)?;
    ensure!(pod.host_network == Some(true), "agent: hostNetwork");
    let agent = container(pod, "agent")?;
    let privileged = agent.security_context.as_ref().and_then(|s| s.privileged);
    ensure!(privileged == Some(true), "agent: privileged");
    ensure!(words(agent).iter().any(|w| w == "/usr/local/bin/k8s-ovs-agent"), "runs k8s-ovs-agent");

    // The directories the flags name are the host's, at the same paths.
    for (flag, host) in [("--ovs-rundir", "/var/run/openvswitch"), ("--state-dir", "/var/lib/k8s-ovs")] {
        let dir = flag_value(agent, flag)?;
        ensure!(host_path_at(pod, agent, &dir)? == host, "{flag} {dir} is not the host's {host}");
    }
    let socket = flag_value(agent, "--cni-socket")?;
    ensure!(socket == cni::DEFAULT_AGENT_SOCKET, "--cni-socket {socket} differs from the plugin's default");
    let sock_dir = Path::new(&socket).parent().context("socket dir")?.to_string_lossy().into_owned();
    ensure!(host_path_at(pod, agent, &sock_dir)? == sock_dir, "the CNI socket's directory is not the host's");
    ensure!(host_path_at(pod, agent, "/var/run/netns")? == "/var/run/netns", "pod netns paths");

    // NODE_NAME / NODE_IP from the downward API.
    let env: BTreeMap<&str, Option<&str>> = agent
        .env
        .iter()
        .flatten()
        .map(|e| {
            let field =
                e.value_from.as_ref().and_then(|f| f.field_ref.as_ref()).map(|f| f.field_path.as_str());
            (e.name.as_str(), field)
        })
        .collect();
    ensure!(env.get("NODE_NAME") == Some(&Some("spec.nodeName")), "NODE_NAME from spec.nodeName");
    ensure!(env.get("NODE_IP") == Some(&Some("status.hostIP")), "NODE_IP from status.hostIP");
    let tolerate_all =
        pod.tolerations.iter().flatten().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none());
    ensure!(tolerate_all, "the agent must run on every node, tainted or not");
    Ok(())
}

#[test]
fn init_container_installs_the_plugin_and_a_conflist_the_plugin_accepts() -> Result<()> {
    let m = load()?;
    let pod = agent_pod(&m)?;
    let init = pod
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "install-cni")
        .context("init container install-cni")?;
    ensure!(host_path_at(pod, init, "/host/opt/cni/bin")? == "/opt/cni/bin");
    ensure!(host_path_at(pod, init, "/host/etc/cni/net.d")? == "/etc/cni/net.d");
    let w = words(init);
    for want in
        ["/usr/local/bin/k8s-ovs", "/host/opt/cni/bin/k8s-ovs", "/host/etc/cni/net.d/10-k8s-ovs.conflist"]
    {
        ensure!(w.iter().any(|x| x == want), "install-cni does not mention {want}: {w:?}");
    }
    ensure!(image_binaries()?.contains("k8s-ovs"), "the image lacks the plugin binary");

    // The conflist from the ConfigMap: every plugin entry, with the list's
    // cniVersion and name merged in as a runtime does, parses as the
    // plugin's own NetConf; ours comes first and points at the agent socket.
    let cm = &m.config_maps[0];
    let text =
        cm.data.as_ref().and_then(|d| d.get("10-k8s-ovs.conflist")).context("conflist in the ConfigMap")?;
    let list: serde_json::Value = serde_json::from_str(text).context("conflist JSON")?;
    let plugins = list["plugins"].as_array().context("plugins")?;
    for p in plugins {
        let mut entry = p.clone();
        entry["cniVersion"] = list["cniVersion"].clone();
        entry["name"] = list["name"].clone();
        let conf = cni::spec::NetConf::parse(entry.to_string().as_bytes())
            .map_err(|e| anyhow::anyhow!("conflist entry {p}: {e:?}"))?;
        if conf.plugin_type == "k8s-ovs" {
            ensure!(conf.agent_socket.as_deref() == Some(cni::DEFAULT_AGENT_SOCKET), "agentSocket");
        }
    }
    ensure!(plugins.first().map(|p| &p["type"]) == Some(&serde_json::json!("k8s-ovs")), "k8s-ovs first");
    let item_ok = pod.volumes.iter().flatten().any(|v| {
        v.config_map.as_ref().is_some_and(|c| {
            c.name == "k8s-ovs-config" && c.items.iter().flatten().any(|i| i.key == "10-k8s-ovs.conflist")
        })
    });
    ensure!(item_ok, "the conflist volume takes the ConfigMap's conflist key");
    Ok(())
}

#[test]
fn controller_deployment_runs_two_replicas_and_reads_the_config() -> Result<()> {
    let m = load()?;
    let d = deployment(&m)?;
    ensure!(d.spec.replicas == Some(2), "two controllers (one leads)");
    let pod = controller_pod(&m)?;
    ensure!(pod.host_network == Some(true), "the controller runs before the pod network exists");
    let c = container(pod, "controller")?;
    ensure!(words(c).iter().any(|w| w == "/usr/local/bin/k8s-ovs-controller"), "runs k8s-ovs-controller");
    let secret =
        pod.volumes.iter().flatten().find_map(|v| v.secret.as_ref()).context("the etcd TLS Secret volume")?;
    ensure!(secret.default_mode == Some(0o444), "readable by the non-root controller");
    Ok(())
}

/// The Secret volume named `secret` of `pod` and where `c` mounts it.
fn secret_mount<'a>(
    pod: &'a PodSpec,
    c: &'a Container,
    secret: &str,
) -> Result<(&'a k8s_openapi::api::core::v1::SecretVolumeSource, String)> {
    let (vol, src) = pod
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.secret.as_ref().filter(|s| s.secret_name.as_deref() == Some(secret)).map(|s| (v, s)))
        .with_context(|| format!("{}: no volume of Secret {secret}", c.name))?;
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == vol.name)
        .with_context(|| format!("{}: Secret {secret} is not mounted", c.name))?;
    Ok((src, mount.mount_path.clone()))
}

/// The value of a plain `env` entry, or the ConfigMap key it is read from.
fn env_of<'a>(c: &'a Container, name: &str) -> (Option<&'a str>, Option<&'a str>) {
    let e = c.env.iter().flatten().find(|e| e.name == name);
    let value = e.and_then(|e| e.value.as_deref());
    let key = e
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.config_map_key_ref.as_ref())
        .map(|k| k.key.as_str());
    (value, key)
}

#[test]
fn both_daemons_require_etcd_tls_by_default_and_plain_etcd_is_an_explicit_opt_in() -> Result<()> {
    let m = load()?;
    let data = m.config_maps[0].data.as_ref().context("ConfigMap data")?;
    let endpoints = data.get("etcd-endpoints").context("etcd-endpoints")?;
    ensure!(
        endpoints.split(',').all(|e| e.trim().starts_with("https://")),
        "the shipped endpoints must be https: {endpoints}"
    );
    ensure!(
        data.get("etcd-insecure").map(String::as_str) == Some("false"),
        "etcd-insecure must ship \"false\""
    );
    // One certificate (etcd user) each: the agents' only reads.
    let daemons = [
        (agent_pod(&m)?, "agent", "k8s-ovs-agent-etcd-tls"),
        (controller_pod(&m)?, "controller", "k8s-ovs-etcd-tls"),
    ];
    for (pod, name, secret_name) in daemons {
        let c = container(pod, name)?;
        let (secret, path) = secret_mount(pod, c, secret_name)?;
        ensure!(secret.optional != Some(true), "{name}: the etcd TLS Secret must be required");
        ensure!(
            path == "/etc/k8s-ovs/etcd-tls",
            "{name}: the Secret is not mounted where the script reads it"
        );
        let f = flags(c);
        for flag in ["--etcd-ca", "--etcd-cert", "--etcd-key"] {
            ensure!(f.contains(flag), "{name}: never passes {flag}");
        }
        let script = words(c).join(" ");
        for file in ["$tls/ca.crt", "$tls/tls.crt", "$tls/tls.key"] {
            ensure!(script.contains(file), "{name}: does not use {file} of the Secret");
        }
        ensure!(
            env_of(c, "K8S_OVS_ETCD_INSECURE").1 == Some("etcd-insecure"),
            "{name}: K8S_OVS_ETCD_INSECURE must come from the ConfigMap's etcd-insecure"
        );
    }
    Ok(())
}

#[test]
fn agent_debug_token_comes_from_an_optional_secret() -> Result<()> {
    let m = load()?;
    let pod = agent_pod(&m)?;
    let c = container(pod, "agent")?;
    let file = env_of(c, "K8S_OVS_DEBUG_TOKEN_FILE").0.context("K8S_OVS_DEBUG_TOKEN_FILE")?;
    let (secret, dir) = secret_mount(pod, c, "k8s-ovs-debug-token")?;
    ensure!(Path::new(file).parent() == Some(Path::new(&dir)), "{file} is not in the Secret's mount {dir}");
    let key = Path::new(file).file_name().context("token file name")?.to_string_lossy();
    ensure!(key == "token", "the token file is the Secret's key `token` (docs/operations.md)");
    ensure!(secret.optional == Some(true), "without the Secret the agent runs with /debug/* off");
    ensure!(secret.default_mode == Some(0o400), "the token is readable by the agent only");
    Ok(())
}

#[test]
fn commands_use_real_binaries_flags_and_config_keys() -> Result<()> {
    let m = load()?;
    let in_image = image_binaries()?;
    for b in ["k8s-ovs", "k8s-ovs-agent", "k8s-ovs-controller", "k8s-ovs-ctl"] {
        ensure!(in_image.contains(b), "the image lacks {b}: {in_image:?}");
    }
    let cm_keys: BTreeSet<&String> = m.config_maps[0].data.iter().flatten().map(|(k, _)| k).collect();
    let pods = [agent_pod(&m)?, controller_pod(&m)?];
    for pod in pods {
        for c in pod.containers.iter().chain(pod.init_containers.iter().flatten()) {
            let binaries: Vec<String> = words(c)
                .iter()
                .filter_map(|w| w.strip_prefix("/usr/local/bin/"))
                .map(str::to_string)
                .collect();
            ensure!(!binaries.is_empty(), "container {} runs none of the image's binaries", c.name);
            for b in &binaries {
                ensure!(in_image.contains(b), "container {}: {b} is not in the image", c.name);
            }
            let daemons: Vec<&String> = binaries.iter().filter(|b| *b != "k8s-ovs").collect();
            let mut helps = String::new();
            for b in &daemons {
                helps.push_str(&help(b)?);
            }
            let known: BTreeSet<&str> =
                helps.split(|ch: char| ch.is_whitespace() || ch == ',' || ch == '[' || ch == ']').collect();
            for f in flags(c) {
                ensure!(known.contains(f.as_str()), "container {}: {daemons:?} has no flag {f}", c.name);
            }
            for e in c.env.iter().flatten() {
                if e.name.starts_with("K8S_OVS_") || e.name.starts_with("NODE_") {
                    ensure!(
                        helps.contains(&format!("[env: {}=", e.name)),
                        "container {}: {daemons:?} does not read ${}",
                        c.name,
                        e.name
                    );
                }
                if let Some(k) = e.value_from.as_ref().and_then(|v| v.config_map_key_ref.as_ref()) {
                    ensure!(
                        k.name == "k8s-ovs-config" && cm_keys.contains(&k.key),
                        "ConfigMap key {}",
                        k.key
                    );
                }
            }
        }
    }
    Ok(())
}

#[test]
fn rbac_grants_only_what_each_daemon_watches_and_posts() -> Result<()> {
    let m = load()?;
    let rules = |name: &str| -> Result<BTreeSet<(String, String)>> {
        let role = m
            .cluster_roles
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(name))
            .with_context(|| format!("ClusterRole {name}"))?;
        let mut grants = BTreeSet::new();
        for r in role.rules.iter().flatten() {
            ensure!(r.api_groups.iter().flatten().all(|g| g.is_empty()), "{name}: core API group only");
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    grants.insert((res.clone(), v.clone()));
                }
            }
        }
        Ok(grants)
    };
    let set =
        |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<BTreeSet<_>>();
    ensure!(
        rules("k8s-ovs-controller")?
            == set(&[("namespaces", "list"), ("namespaces", "watch"), ("nodes", "list"), ("nodes", "watch")]),
        "controller: list/watch namespaces and nodes, nothing else"
    );
    ensure!(
        rules("k8s-ovs-agent")?
            == set(&[
                ("events", "create"),
                ("pods", "get"),
                ("pods", "list"),
                ("pods", "watch"),
                ("services", "list"),
                ("services", "watch")
            ]),
        "agent: list/watch services, get/list/watch pods (agent/src/kube_source.rs, dataplane.rs), create events (kube_events.rs), nothing else"
    );
    // Each daemon's ServiceAccount exists and is bound to its role.
    for (pod, role) in [(agent_pod(&m)?, "k8s-ovs-agent"), (controller_pod(&m)?, "k8s-ovs-controller")] {
        let sa = pod.service_account_name.as_deref().context("serviceAccountName")?;
        ensure!(
            m.service_accounts.iter().any(|s| s.metadata.name.as_deref() == Some(sa)),
            "no ServiceAccount {sa}"
        );
        let bound = m.bindings.iter().any(|b| {
            b.role_ref.name == role
                && b.subjects.iter().flatten().any(|s| s.kind == "ServiceAccount" && s.name == sa)
        });
        ensure!(bound, "{sa} is not bound to {role}");
    }
    Ok(())
}

#[test]
fn dockerfile_builds_with_protoc_and_runs_on_debian_slim_with_iptables() -> Result<()> {
    let text = std::fs::read_to_string(repo().join("Dockerfile"))?;
    let stages: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    ensure!(stages.len() == 2 && stages[0].ends_with(" AS builder"), "builder + runtime stages: {stages:?}");
    ensure!(stages[1].contains("debian:") && stages[1].contains("-slim"), "runtime on Debian slim");
    let (build, run) = text.split_once(stages[1]).context("stages")?;
    for pkg in ["protobuf-compiler", "libprotobuf-dev"] {
        ensure!(build.contains(pkg), "builder installs {pkg}");
    }
    ensure!(build.contains("cargo build --release --locked"), "a locked release build");
    ensure!(run.contains("iptables"), "runtime installs iptables (the agent's masquerade rule)");
    Ok(())
}
