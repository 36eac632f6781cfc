//! The Kubernetes manifests under `deploy/` and the images' Dockerfiles,
//! checked without a cluster: every document parses into its k8s-openapi
//! type with no field lost on the way (so a misspelt field fails, not only a
//! wrong kind), and the parts that make the network work agree with the
//! code: binary names and flags exist (`<binary> --help`), mounts match the
//! paths the flags name, the conflist is one the plugin accepts, RBAC grants
//! what the daemons watch and nothing more. The Open vSwitch sidecar shares
//! the agent's host directories, and the host-OVS overlay's patch, applied
//! here as kustomize applies it, removes exactly the sidecar; its image's
//! entrypoint runs for real (root, in a lab namespace, on this machine's
//! Debian Open vSwitch, the one the image installs).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The kustomize base: every manifest (`kubectl apply -k deploy/` names it).
const BASE: &str = "deploy/base";
/// The overlay for hosts that run Open vSwitch themselves.
const HOST_OVS: &str = "deploy/overlays/host-ovs";
/// The image of the root `Dockerfile` (the binaries) and that of
/// `deploy/images/ovs` (Open vSwitch), as the manifests name them.
const IMAGE: &str = "k8s-ovs";
const OVS_IMAGE: &str = "k8s-ovs-openvswitch";
const OVS_IMAGE_DIR: &str = "deploy/images/ovs";

/// The YAML documents of `path`, as JSON values.
fn yaml_documents(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let v = serde_json::Value::deserialize(doc).with_context(|| format!("{}: YAML", path.display()))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// Every document of every YAML file of the base except the kustomization,
/// as (file, JSON value).
fn documents() -> Result<Vec<(String, serde_json::Value)>> {
    let mut docs = Vec::new();
    for file in yaml_files()? {
        if file == "kustomization.yaml" {
            continue;
        }
        for v in yaml_documents(&repo().join(BASE).join(&file))? {
            docs.push((file.clone(), v));
        }
    }
    Ok(docs)
}

fn yaml_files() -> Result<Vec<String>> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(repo().join(BASE))? {
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
    crds: Vec<CustomResourceDefinition>,
}

/// Parses `v` as `T` and requires serializing it back to give `v` again: a
/// field k8s-openapi does not know (a typo) would be dropped and differ.
fn typed<T: DeserializeOwned + Serialize>(file: &str, v: &serde_json::Value) -> Result<T> {
    let t: T = serde_json::from_value(v.clone()).with_context(|| format!("{BASE}/{file}: {}", v["kind"]))?;
    let back = serde_json::to_value(&t)?;
    if !diff(v, &back, "").is_empty() {
        bail!(
            "{BASE}/{file}: {} {} has fields its type does not know:\n{}",
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
        // A float field written as an integer (`minimum: 0`) comes back as 0.0: the same value.
        (serde_json::Value::Number(a), serde_json::Value::Number(b)) if a.as_f64() == b.as_f64() => {
            String::new()
        }
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
            "CustomResourceDefinition" => m.crds.push(typed(&file, &v)?),
            other => bail!("{BASE}/{file}: kind {other:?} is not checked by this test; add it"),
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
    ensure!(
        m.cluster_roles.len() == 3 && m.bindings.len() == 2,
        "the daemons' two ClusterRoles and their bindings, and the tenant-network admins' (not bound)"
    );
    ensure!(m.crds.len() == 1, "one CustomResourceDefinition (NetNamespace)");
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

/// The parts of a `kustomization.yaml` these manifests use.
#[derive(Deserialize)]
struct Kustomization {
    namespace: Option<String>,
    resources: Vec<String>,
    #[serde(default)]
    patches: Vec<PatchRef>,
}

/// A patch file, targeted (as kustomize does without `target:`) by the
/// kind, name and namespace it names itself.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchRef {
    path: String,
}

fn kustomization(dir: &str) -> Result<Kustomization> {
    let text = std::fs::read_to_string(repo().join(dir).join("kustomization.yaml"))?;
    serde_norway::from_str(&text).with_context(|| format!("{dir}/kustomization.yaml"))
}

/// `resource` of the kustomization in `dir`, as a canonical path.
fn resolve(dir: &str, resource: &str) -> Result<PathBuf> {
    let p = repo().join(dir).join(resource);
    p.canonicalize().with_context(|| format!("{dir}: resource {resource} does not exist"))
}

#[test]
fn kustomizations_install_the_base_with_or_without_the_ovs_sidecar() -> Result<()> {
    let k = kustomization(BASE)?;
    let listed: BTreeSet<String> = k.resources.into_iter().collect();
    let files: BTreeSet<String> = yaml_files()?.into_iter().filter(|f| f != "kustomization.yaml").collect();
    ensure!(listed == files, "{BASE}: kustomization resources {listed:?} != files {files:?}");
    let ns = k.namespace.context("the base sets the namespace")?;
    for (file, v) in documents()? {
        if let Some(n) = v["metadata"]["namespace"].as_str() {
            ensure!(n == ns, "{BASE}/{file}: namespace {n}, kustomization says {ns}");
        }
    }
    // `kubectl apply -k deploy/` and `kubectl apply -k deploy/overlays/host-ovs`
    // both install the base, the first unchanged (kustomize refuses an
    // overlay inside its base's directory: the base cannot be deploy/ itself).
    let base = repo().join(BASE).canonicalize()?;
    let top = kustomization("deploy")?;
    ensure!(top.patches.is_empty(), "deploy/: the base as it is");
    let top_res: Vec<PathBuf> = top.resources.iter().map(|r| resolve("deploy", r)).collect::<Result<_>>()?;
    ensure!(top_res == [base.clone()], "deploy/ installs {top_res:?}, not the base alone");
    let overlay = kustomization(HOST_OVS)?;
    let res: Vec<PathBuf> = overlay.resources.iter().map(|r| resolve(HOST_OVS, r)).collect::<Result<_>>()?;
    ensure!(res == [base], "{HOST_OVS} builds on {res:?}, not on the base alone");
    ensure!(!overlay.patches.is_empty(), "{HOST_OVS}: no patch");
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

/// The image's name without its tag.
fn image_name(c: &Container) -> &str {
    let image = c.image.as_deref().unwrap_or_default();
    image.split(':').next().unwrap_or_default()
}

/// The `ovs` sidecar: an init container that keeps running.
fn ovs_sidecar(pod: &PodSpec) -> Result<&Container> {
    pod.init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "ovs")
        .context("no init container ovs (the Open vSwitch sidecar)")
}

/// The plain value of env `name` (not a reference).
fn env_value<'a>(c: &'a Container, name: &str) -> Result<&'a str> {
    env_of(c, name).0.with_context(|| format!("container {}: no env {name}", c.name))
}

/// The hostPath volume behind the container's mount at `path`.
fn host_path_type(pod: &PodSpec, c: &Container, path: &str) -> Result<Option<String>> {
    let mount = c.volume_mounts.iter().flatten().find(|m| m.mount_path == path).context("mount")?;
    let vol = pod.volumes.iter().flatten().find(|v| v.name == mount.name).context("volume")?;
    Ok(vol.host_path.as_ref().and_then(|h| h.type_.clone()))
}

/// A Kubernetes quantity of memory (`128Mi`, `1Gi`) in bytes.
fn bytes(q: &str) -> Result<u64> {
    let (n, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    let mult = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => bail!("quantity {q}: unit {unit} not handled here"),
    };
    Ok(n.parse::<u64>()? * mult)
}

#[test]
fn ovs_sidecar_starts_before_the_agent_on_the_hosts_ovs_directories() -> Result<()> {
    let m = load()?;
    let pod = agent_pod(&m)?;
    let agent = container(pod, "agent")?;
    let ovs = ovs_sidecar(pod)?;
    ensure!(image_name(ovs) == OVS_IMAGE, "the sidecar runs {OVS_IMAGE}, not {:?}", ovs.image);
    // A sidecar: restartPolicy Always keeps it running (a plain init container
    // would have to exit before the agent starts), and the kubelet starts the
    // agent, a main container, only once its startup probe has passed.
    ensure!(ovs.restart_policy.as_deref() == Some("Always"), "ovs: restartPolicy Always (a sidecar)");
    ensure!(ovs.startup_probe.is_some(), "ovs: a startup probe, which the agent's start waits for");
    ensure!(pod.containers.iter().all(|c| c.name != "ovs"), "ovs is an init container, not a main one");
    ensure!(pod.host_network == Some(true), "the pod's network is the host's: OVS's devices are the node's");

    // The agent's --ovs-rundir is the sidecar's OVS_RUNDIR, and both are the
    // host's /var/run/openvswitch (db.sock and br0.mgmt live there).
    let rundir = flag_value(agent, "--ovs-rundir")?;
    ensure!(
        env_value(ovs, "OVS_RUNDIR")? == rundir,
        "ovs: OVS_RUNDIR is not the agent's --ovs-rundir {rundir}"
    );
    let host_run = host_path_at(pod, ovs, &rundir)?;
    ensure!(host_run == "/var/run/openvswitch", "ovs: {rundir} is the host's {host_run}");
    ensure!(host_path_at(pod, agent, &rundir)? == host_run, "agent and ovs see different {rundir}");
    // The database on the host, so that a restarted container (or an
    // upgraded image) finds the bridges and ports the agent made.
    let dbdir = env_value(ovs, "OVS_DBDIR")?;
    ensure!(
        host_path_at(pod, ovs, dbdir)? == "/etc/openvswitch",
        "ovs: {dbdir} is not the host's /etc/openvswitch"
    );
    // A fresh host has neither directory: `Directory` would keep the pod from starting.
    for dir in [rundir.as_str(), dbdir] {
        let t = host_path_type(pod, ovs, dir)?;
        ensure!(t.as_deref() == Some("DirectoryOrCreate"), "ovs: hostPath {dir} of type {t:?}");
    }
    // The kernel datapath: modprobe of the host kernel's module.
    ensure!(host_path_at(pod, ovs, "/lib/modules")? == "/lib/modules", "ovs: the host's /lib/modules");
    let ro =
        ovs.volume_mounts.iter().flatten().find(|v| v.mount_path == "/lib/modules").and_then(|v| v.read_only);
    ensure!(ro == Some(true), "ovs: /lib/modules read-only");
    let datapath = flag_value(agent, "--datapath-type")?;
    ensure!(env_value(ovs, "OVS_DATAPATH")? == datapath, "ovs: OVS_DATAPATH is not the agent's {datapath}");
    // flow-restore-wait is lifted by the agent's /healthz: the port it listens on.
    let metrics = flag_value(agent, "--metrics-addr")?;
    let port = metrics.rsplit(':').next().unwrap_or_default();
    ensure!(
        env_value(ovs, "AGENT_HEALTHZ_PORT")? == port,
        "ovs: AGENT_HEALTHZ_PORT is not the agent's {metrics}"
    );
    let privileged = ovs.security_context.as_ref().and_then(|s| s.privileged);
    ensure!(privileged == Some(true), "ovs: privileged (docs/operations.md says why)");

    // Requests, so that the node reserves room for it; a memory limit above them.
    let res = ovs.resources.as_ref().context("ovs: resources")?;
    let req = res.requests.as_ref().context("ovs: requests")?;
    ensure!(req.contains_key("cpu"), "ovs: a CPU request");
    let req_mem = bytes(&req.get("memory").context("ovs: a memory request")?.0)?;
    let lim_mem =
        bytes(&res.limits.as_ref().and_then(|l| l.get("memory")).context("ovs: a memory limit")?.0)?;
    ensure!(lim_mem > req_mem, "ovs: memory limit {lim_mem} not above the request {req_mem}");
    Ok(())
}

/// The `--timeout=N` seconds of the commands `ovs-daemons check` runs, one
/// after the other: what a probe must leave it.
fn check_timeouts(script: &str) -> Result<u64> {
    let body = script.split("\ncheck() {").nth(1).context("ovs-daemons: no check()")?;
    let body = body.split("\n}").next().unwrap_or_default();
    let timeouts: Vec<u64> = body
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--timeout="))
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    ensure!(timeouts.len() == 2, "check(): a timeout for each of ovsdb-client and ovs-appctl: {timeouts:?}");
    Ok(timeouts.iter().sum())
}

#[test]
fn ovs_probes_run_the_images_check_with_room_for_its_timeouts() -> Result<()> {
    let m = load()?;
    let ovs = ovs_sidecar(agent_pod(&m)?)?;
    let script = std::fs::read_to_string(repo().join(OVS_IMAGE_DIR).join("ovs-daemons"))?;
    let needs = check_timeouts(&script)?;
    let installed = ovs_image_script()?;
    let probes = [
        ("startup", &ovs.startup_probe),
        ("readiness", &ovs.readiness_probe),
        ("liveness", &ovs.liveness_probe),
    ];
    for (what, probe) in probes {
        let p = probe.as_ref().with_context(|| format!("ovs: no {what} probe"))?;
        let cmd = p.exec.as_ref().and_then(|e| e.command.clone()).unwrap_or_default();
        ensure!(cmd == [installed.clone(), "check".into()], "ovs {what} probe runs {cmd:?}");
        // The kubelet's default is 1 s: it would fail a slow but answering switch.
        let timeout = p.timeout_seconds.unwrap_or(1) as u64;
        ensure!(timeout > needs, "ovs {what} probe: {timeout} s for a check of up to {needs} s");
    }
    // A restart costs the node's new connections until the agent has replayed:
    // not before half a minute without an answer.
    let live = ovs.liveness_probe.as_ref().context("liveness")?;
    let patience = live.failure_threshold.unwrap_or(3) * live.period_seconds.unwrap_or(10);
    ensure!(patience >= 30, "ovs liveness gives up after {patience} s");
    // The first start may convert a large database before the daemons answer.
    let start = ovs.startup_probe.as_ref().context("startup")?;
    let budget = start.failure_threshold.unwrap_or(3) * start.period_seconds.unwrap_or(10);
    ensure!(budget >= 60, "ovs startup probe gives up after {budget} s");
    Ok(())
}

/// Where the Open vSwitch image's Dockerfile installs `ovs-daemons`.
fn ovs_image_script() -> Result<String> {
    let text = std::fs::read_to_string(repo().join(OVS_IMAGE_DIR).join("Dockerfile"))?;
    let copy = text
        .lines()
        .find_map(|l| l.strip_prefix("COPY ovs-daemons "))
        .context("the ovs Dockerfile does not COPY ovs-daemons")?;
    Ok(copy.trim().to_string())
}

#[test]
fn ovs_image_is_debians_openvswitch_switch_running_its_script() -> Result<()> {
    let dir = repo().join(OVS_IMAGE_DIR);
    let text = std::fs::read_to_string(dir.join("Dockerfile"))?;
    let from: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    // The same Debian as the k8s-ovs image's runtime stage (and as this
    // machine, where lab_ovs_daemons_run_both_daemons_... runs the script).
    let root = std::fs::read_to_string(repo().join("Dockerfile"))?;
    let root_runtime = root.lines().rfind(|l| l.starts_with("FROM ")).context("root Dockerfile: FROM")?;
    ensure!(from == [root_runtime], "the ovs image is one stage on {root_runtime}: {from:?}");
    let install = text
        .split("apt-get install")
        .nth(1)
        .and_then(|rest| rest.split("&&").next())
        .context("the ovs Dockerfile installs no package")?;
    let pkgs: BTreeSet<&str> =
        install.split_whitespace().filter(|w| !w.starts_with('-') && *w != "\\").collect();
    for pkg in ["openvswitch-switch", "kmod"] {
        ensure!(pkgs.contains(pkg), "the ovs image does not install {pkg}: {pkgs:?}");
    }
    // The script the sidecar runs is the one copied, executable (COPY keeps
    // the mode), and the image's default command too.
    let installed = ovs_image_script()?;
    let mode = std::fs::metadata(dir.join("ovs-daemons"))?.permissions().mode();
    ensure!(mode & 0o111 == 0o111, "deploy/images/ovs/ovs-daemons is not executable ({mode:o})");
    ensure!(
        text.contains(&format!("CMD [\"{installed}\", \"start\"]")),
        "the image's CMD is not {installed} start"
    );
    let m = load()?;
    let ovs = ovs_sidecar(agent_pod(&m)?)?;
    let cmd = ovs.command.clone().unwrap_or_default();
    ensure!(cmd == [installed, "start".into()], "the sidecar runs {cmd:?}");
    Ok(())
}

/// Applies a strategic merge patch as the API server and kustomize do, for
/// the fields a pod template patch touches: maps merge key by key; lists
/// with a merge key (containers, initContainers, volumes and env by `name`,
/// volumeMounts by `mountPath`) merge element by element, an element with
/// `$patch: delete` deleting its namesake; other lists and values replace.
fn strategic_merge(base: &mut serde_json::Value, patch: &serde_json::Value, field: &str) -> Result<()> {
    use serde_json::Value;
    let key = match field {
        "containers" | "initContainers" | "volumes" | "env" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        _ => None,
    };
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            ensure!(!p.contains_key("$patch"), "{field}: a $patch directive on a map is not handled here");
            for (k, pv) in p {
                match b.get_mut(k) {
                    Some(bv) => strategic_merge(bv, pv, k)?,
                    None => {
                        b.insert(k.clone(), pv.clone());
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(p)) if key.is_some() => {
            let key = key.unwrap_or_default();
            for pe in p {
                let id = pe.get(key).with_context(|| format!("{field}: an element without {key}"))?;
                let at = b.iter().position(|be| be.get(key) == Some(id));
                let mut pe = pe.clone();
                let delete = pe.as_object_mut().and_then(|o| o.remove("$patch"));
                match (delete, at) {
                    (Some(d), _) if d != "delete" => bail!("{field}: $patch {d} is not handled here"),
                    (Some(_), Some(i)) => {
                        b.remove(i);
                    }
                    (Some(_), None) => {}
                    (None, Some(i)) => strategic_merge(&mut b[i], &pe, "")?,
                    (None, None) => b.push(pe),
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
    Ok(())
}

#[test]
fn strategic_merge_deletes_merges_and_adds_by_the_merge_key() -> Result<()> {
    // The overlay test below is only as good as this.
    let mut base = serde_json::json!({"spec": {"volumes": [
        {"name": "a", "hostPath": {"path": "/a", "type": "DirectoryOrCreate"}},
        {"name": "b", "hostPath": {"path": "/b"}}], "hostNetwork": true}});
    let patch = serde_json::json!({"spec": {"volumes": [
        {"name": "b", "$patch": "delete"},
        {"name": "a", "hostPath": {"type": "Directory"}},
        {"name": "c", "emptyDir": {}}]}});
    strategic_merge(&mut base, &patch, "")?;
    let want = serde_json::json!({"spec": {"volumes": [
        {"name": "a", "hostPath": {"path": "/a", "type": "Directory"}},
        {"name": "c", "emptyDir": {}}], "hostNetwork": true}});
    ensure!(base == want, "got {base}");
    Ok(())
}

#[test]
fn host_ovs_overlay_removes_the_ovs_sidecar_and_nothing_the_agent_uses() -> Result<()> {
    let overlay = kustomization(HOST_OVS)?;
    let (file, base_ds) =
        documents()?.into_iter().find(|(_, v)| v["kind"] == "DaemonSet").context("the base's DaemonSet")?;
    let mut patched = base_ds.clone();
    for p in &overlay.patches {
        for patch in yaml_documents(&repo().join(HOST_OVS).join(&p.path))? {
            // kustomize finds the patch's target by kind, name and namespace:
            // one that matches nothing fails the build.
            for k in [&["kind"][..], &["metadata", "name"], &["metadata", "namespace"]] {
                let (want, got) =
                    (k.iter().fold(&patch, |v, f| &v[*f]), k.iter().fold(&base_ds, |v, f| &v[*f]));
                ensure!(
                    want == got,
                    "{HOST_OVS}/{}: {} {want} is not the base DaemonSet's {got}",
                    p.path,
                    k.join(".")
                );
            }
            strategic_merge(&mut patched, &patch, "")?;
        }
    }
    let ds: DaemonSet = typed(&file, &patched)?;
    let pod = pod_spec(ds.spec.template.spec.as_ref(), "patched DaemonSet")?;
    let base: DaemonSet = typed(&file, &base_ds)?;
    let base_pod = pod_spec(base.spec.template.spec.as_ref(), "base DaemonSet")?;

    let all: Vec<&Container> = pod.containers.iter().chain(pod.init_containers.iter().flatten()).collect();
    ensure!(
        all.iter().all(|c| c.name != "ovs" && image_name(c) != OVS_IMAGE),
        "the ovs sidecar is still there"
    );
    // Every other container exactly as in the base.
    let others: Vec<&Container> = base_pod
        .containers
        .iter()
        .chain(base_pod.init_containers.iter().flatten())
        .filter(|c| c.name != "ovs")
        .collect();
    ensure!(all == others, "the patch changed containers other than ovs");
    // No volume left that nothing mounts (the host's /etc/openvswitch).
    for v in pod.volumes.iter().flatten() {
        let used = all.iter().any(|c| c.volume_mounts.iter().flatten().any(|m| m.name == v.name));
        ensure!(used, "volume {} is mounted by no container", v.name);
    }
    // The host's Open vSwitch made its run directory: without it, a pod that
    // does not start says so, instead of an agent that cannot reach OVSDB.
    let agent = container(pod, "agent")?;
    let rundir = flag_value(agent, "--ovs-rundir")?;
    ensure!(
        host_path_at(pod, agent, &rundir)? == "/var/run/openvswitch",
        "the agent keeps the host's run dir"
    );
    let t = host_path_type(pod, agent, &rundir)?;
    ensure!(t.as_deref() == Some("Directory"), "host-ovs: {rundir} must exist on the host, type {t:?}");
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

/// The debug token (for `/debug/*`) and the metrics token (for the tenant
/// series of `/metrics`) each come from an optional Secret of their own,
/// readable by the agent only.
#[test]
fn agent_tokens_come_from_optional_secrets() -> Result<()> {
    let m = load()?;
    let pod = agent_pod(&m)?;
    let c = container(pod, "agent")?;
    for (env, secret_name) in [
        ("K8S_OVS_DEBUG_TOKEN_FILE", "k8s-ovs-debug-token"),
        ("K8S_OVS_METRICS_TOKEN_FILE", "k8s-ovs-metrics-token"),
    ] {
        let file = env_of(c, env).0.context(env)?;
        let (secret, dir) = secret_mount(pod, c, secret_name)?;
        ensure!(
            Path::new(file).parent() == Some(Path::new(&dir)),
            "{file} is not in the Secret's mount {dir}"
        );
        let key = Path::new(file).file_name().context("token file name")?.to_string_lossy();
        ensure!(key == "token", "the token file is the Secret's key `token` (docs/operations.md)");
        ensure!(secret.optional == Some(true), "without {secret_name} the agent runs, that part off");
        ensure!(secret.default_mode == Some(0o400), "{secret_name} is readable by the agent only");
    }
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
            let image = image_name(c);
            ensure!(
                image == IMAGE || image == OVS_IMAGE,
                "container {}: image {image} is neither of ours",
                c.name
            );
            if image == OVS_IMAGE {
                continue; // Open vSwitch's image: ovs_image_is_debians_openvswitch_switch_running_its_script
            }
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

/// A ClusterRole's grants as (API group, resource, verb).
fn grants(m: &Manifests, name: &str) -> Result<BTreeSet<(String, String, String)>> {
    let role = m
        .cluster_roles
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(name))
        .with_context(|| format!("ClusterRole {name}"))?;
    let mut grants = BTreeSet::new();
    for r in role.rules.iter().flatten() {
        ensure!(r.resource_names.is_none(), "{name}: no resourceNames (see tenant_network_admins_...)");
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    grants.insert((g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
    Ok(grants)
}

fn triples(v: &[(&str, &str, &[&str])]) -> BTreeSet<(String, String, String)> {
    v.iter()
        .flat_map(|(g, r, verbs)| verbs.iter().map(move |v| (g.to_string(), r.to_string(), v.to_string())))
        .collect()
}

#[test]
fn rbac_grants_only_what_each_daemon_watches_and_posts() -> Result<()> {
    let m = load()?;
    ensure!(
        grants(&m, "k8s-ovs-controller")?
            == triples(&[
                ("", "events", &["create"]),
                ("", "namespaces", &["get", "list", "watch"]),
                ("", "nodes", &["list", "watch"]),
                ("k8s-ovs.io", "netnamespaces", &["create", "delete", "list", "watch"]),
                ("k8s-ovs.io", "netnamespaces/status", &["update"]),
            ]),
        "controller: list/watch namespaces and nodes (kube_watch.rs); the NetNamespace objects' views and \
         statuses (kube_objects.rs), never their spec; an Event on a namespace whose NetID changed (run.rs, \
         its uid read with get); nothing else"
    );
    ensure!(
        grants(&m, "k8s-ovs-agent")?
            == triples(&[
                ("", "events", &["create"]),
                ("", "namespaces", &["list", "watch"]),
                ("", "pods", &["get", "list", "watch"]),
                ("", "services", &["list", "watch"]),
                ("networking.k8s.io", "networkpolicies", &["list", "watch"]),
            ]),
        "agent: list/watch services, get/list/watch pods (agent/src/kube_source.rs, dataplane.rs), list/watch \
         namespaces and networkpolicies (policy_source.rs), create events (kube_events.rs), nothing else"
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

/// `ovs-daemons` of the Open vSwitch image, run for real: as root in a lab
/// namespace, on this machine's Debian Open vSwitch (the package the image
/// installs, from the same Debian release), with the userspace datapath
/// (no kernel module needed) and run and database directories of its own
/// in place of the host's.
struct OvsDaemons {
    lab: lab::Lab,
    env: Vec<(String, String)>,
    script: String,
}

impl OvsDaemons {
    fn start_lab() -> Result<OvsDaemons> {
        let lab = lab::Lab::start_with(lab::LabConfig { etcd: false, ..lab::LabConfig::nodes(0) })?;
        let d = |s: &str| lab.dir.join(s).to_string_lossy().into_owned();
        let env = vec![
            ("OVS_RUNDIR".into(), d("run")),
            ("OVS_DBDIR".into(), d("etc")),
            ("OVS_DATAPATH".into(), "netdev".into()),
            ("AGENT_HEALTHZ_PORT".into(), "9190".into()),
        ];
        let script = repo().join(OVS_IMAGE_DIR).join("ovs-daemons").to_string_lossy().into_owned();
        Ok(OvsDaemons { lab, env, script })
    }

    fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    /// Runs a command in the namespace with the directories' environment.
    fn run(&self, args: &[&str]) -> Result<lab::cmd::Output> {
        lab::cmd::run_full(&self.lab.ctl.wrap(args), &self.env(), Duration::from_secs(20))
    }

    fn vsctl(&self, args: &[&str]) -> Result<String> {
        let mut v = vec!["ovs-vsctl", "--timeout=5"];
        v.extend_from_slice(args);
        let out = self.run(&v)?;
        ensure!(out.success(), "ovs-vsctl {args:?}: {}", out.stderr);
        Ok(out.stdout)
    }

    fn check(&self) -> Result<bool> {
        Ok(self.run(&[&self.script, "check"])?.success())
    }

    /// `ovs-daemons start` in the background, its output in `log`.
    fn spawn_start(&self, log: &str) -> Result<std::process::Child> {
        let out = std::fs::File::create(self.lab.dir.join(log))?;
        let argv = self.lab.ctl.wrap(&[&self.script, "start"]);
        let child = std::process::Command::new(argv[0])
            .args(&argv[1..])
            .envs(self.env())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        Ok(child)
    }

    fn log(&self, log: &str) -> String {
        std::fs::read_to_string(self.lab.dir.join(log)).unwrap_or_default()
    }

    fn wait_for(&self, what: &str, secs: u64, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !done()? {
            ensure!(Instant::now() < deadline, "{what}: not within {secs} s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn pid(&self, daemon: &str) -> Result<i32> {
        let file = self.lab.dir.join("run").join(format!("{daemon}.pid"));
        let text = std::fs::read_to_string(&file).with_context(|| format!("{}", file.display()))?;
        Ok(text.trim().parse()?)
    }

    /// The same, read from the database file (no server running).
    fn flow_restore_wait_in_db(&self) -> Result<bool> {
        let db = self.lab.dir.join("etc/conf.db").to_string_lossy().into_owned();
        let q = r#"["Open_vSwitch",{"op":"select","table":"Open_vSwitch","where":[],"columns":["other_config"]}]"#;
        let rows = lab::cmd::run(&["ovsdb-tool", "query", &db, q])?;
        ensure!(rows.contains("other_config"), "ovsdb-tool query: {rows}");
        Ok(rows.contains("flow-restore-wait"))
    }

    fn flow_restore_wait(&self) -> Result<bool> {
        Ok(self.vsctl(&["get", "Open_vSwitch", ".", "other_config"])?.contains("flow-restore-wait=\"true\""))
    }
}

/// Waits for `child` to exit (the script has no reason to take long).
fn exit_status(child: &mut std::process::Child, secs: u64) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        ensure!(Instant::now() < deadline, "ovs-daemons did not exit within {secs} s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) -> Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)?;
    Ok(())
}

#[test]
fn lab_ovs_daemons_run_both_daemons_keep_the_database_and_stop_as_the_kubelet_expects() -> Result<()> {
    lab::needs_root!();
    use nix::sys::signal::Signal;
    let d = OvsDaemons::start_lab()?;
    ensure!(!d.check()?, "check passes with no daemon running");

    let mut first = d.spawn_start("start-1.log")?;
    d.wait_for("both daemons answering check", 30, || d.check())?;
    let (ovsdb, vswitchd) = (d.pid("ovsdb-server")?, d.pid("ovs-vswitchd")?);
    // ovs-vswitchd works from the database the script created: a bridge added
    // there gets its port.
    d.vsctl(&["add-br", "br-t", "--", "set", "bridge", "br-t", "datapath_type=netdev"])?;
    d.wait_for("br-t's ofport", 10, || {
        Ok(d.vsctl(&["get", "interface", "br-t", "ofport"])?.trim() == "65534")
    })?;

    // flow-restore-wait holds until the agent's /healthz answers 200, not on
    // another answer (a stand-in server: 404 while it has no healthz file).
    ensure!(d.flow_restore_wait()?, "ovs-vswitchd started without flow-restore-wait");
    let www = d.lab.dir.join("www");
    std::fs::create_dir_all(&www)?;
    let www_s = www.to_string_lossy().into_owned();
    let server_log = std::fs::File::create(d.lab.dir.join("http.log"))?;
    let argv = d.lab.ctl.wrap(&[
        "python3",
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        "--directory",
        &www_s,
        "9190",
    ]);
    let mut server = std::process::Command::new(argv[0]).args(&argv[1..]).stderr(server_log).spawn()?;
    d.wait_for("the script asking /healthz", 15, || {
        Ok(d.log("http.log").contains("\"GET /healthz HTTP/1.0\" 404"))
    })?;
    ensure!(d.flow_restore_wait()?, "a 404 from /healthz lifted flow-restore-wait");
    std::fs::write(www.join("healthz"), "ok\n")?;
    d.wait_for("flow-restore-wait lifted after a 200", 15, || Ok(!d.flow_restore_wait()?))?;
    let _ = server.kill();
    let _ = server.wait();

    // A second start while this one serves (as a host's Open vSwitch would)
    // is refused, naming the overlay, and leaves the running one alone.
    let second = d.run(&[&d.script, "start"])?;
    ensure!(!second.success(), "a second ovs-daemons started beside a running ovsdb-server");
    ensure!(
        second.stderr.contains("deploy/overlays/host-ovs"),
        "the refusal says what to do: {}",
        second.stderr
    );
    ensure!(d.check()? && d.pid("ovsdb-server")? == ovsdb, "the refused start disturbed the running daemons");

    // SIGTERM, as the kubelet stops a container: both daemons end, exit 0.
    signal(first.id() as i32, Signal::SIGTERM)?;
    let status = exit_status(&mut first, 15)?;
    ensure!(status.success(), "SIGTERM: exit {status}\n{}", d.log("start-1.log"));
    ensure!(!lab::netns::alive(ovsdb) && !lab::netns::alive(vswitchd), "a daemon outlived the container");
    ensure!(!d.check()?, "check passes after the stop");

    // Again on the same directories (a restarted container): the database
    // kept the bridge.
    let mut again = d.spawn_start("start-2.log")?;
    d.wait_for("both daemons answering check after a restart", 30, || d.check())?;
    ensure!(d.run(&["ovs-vsctl", "br-exists", "br-t"])?.success(), "the bridge is gone from the database");
    ensure!(d.flow_restore_wait()?, "a restarted ovs-vswitchd starts without flow-restore-wait");
    // ovs-vswitchd dying by itself ends the container, non-zero (the kubelet
    // starts it again), and ovsdb-server with it.
    let ovsdb = d.pid("ovsdb-server")?;
    signal(d.pid("ovs-vswitchd")?, Signal::SIGKILL)?;
    let status = exit_status(&mut again, 15)?;
    ensure!(!status.success(), "ovs-vswitchd died and the script exited {status}");
    ensure!(!lab::netns::alive(ovsdb), "ovsdb-server outlived ovs-vswitchd's death");
    // Stopped before the agent was ready: flow-restore-wait is not left in
    // the database for an Open vSwitch that would never lift it.
    ensure!(!d.flow_restore_wait_in_db()?, "the stop left flow-restore-wait in the database");
    Ok(())
}

fn crd(m: &Manifests) -> Result<&CustomResourceDefinition> {
    m.crds
        .iter()
        .find(|c| c.spec.names.kind == controller::netns_object::KIND)
        .context("the NetNamespace CRD")
}

/// The CRD's openAPIV3Schema as JSON (what the apiserver applies).
fn crd_schema(m: &Manifests) -> Result<serde_json::Value> {
    let v = serde_json::to_value(&crd(m)?.spec.versions[0])?;
    Ok(v["schema"]["openAPIV3Schema"].clone())
}

/// What the apiserver does to a NetNamespace's body before storing it
/// (defaults, then validation: the test apiserver's code): the causes.
fn apiserver_verdict(schema: &serde_json::Value, spec: &serde_json::Value) -> Vec<String> {
    let mut obj = serde_json::json!({ "spec": spec });
    lab::kube_api::schema::default(schema, &mut obj);
    let mut causes = Vec::new();
    lab::kube_api::schema::validate(schema, &obj, "", &mut causes);
    causes.into_iter().map(|c| c.message).collect()
}

#[test]
fn netnamespace_crd_serves_the_object_the_controller_reads_and_validates_what_it_validates() -> Result<()> {
    use controller::netns_object as obj;
    let m = load()?;
    let c = crd(&m)?;
    ensure!(
        c.spec.group == obj::GROUP && c.spec.names.plural == obj::PLURAL,
        "group and plural the controller asks for"
    );
    ensure!(c.spec.scope == "Cluster", "cluster-scoped: no RoleBinding in a namespace can grant it");
    let [v] = c.spec.versions.as_slice() else { bail!("one version (no conversion)") };
    ensure!(v.name == obj::VERSION && v.served && v.storage, "v1 served and stored");
    ensure!(
        v.subresources.as_ref().is_some_and(|s| s.status.is_some()),
        "the status subresource: status is the controller's alone"
    );
    let schema = crd_schema(&m)?;
    let action = &schema["properties"]["spec"]["properties"]["action"];
    ensure!(
        action["enum"] == serde_json::json!(["join", "isolate", "global"]),
        "the actions: {}",
        action["enum"]
    );
    ensure!(action["default"] == "isolate", "isolate by default (a join removed from a manifest isolates)");
    let target = &schema["properties"]["spec"]["properties"]["target"];
    ensure!(target["maxLength"] == obj::MAX_NAME, "a target is a namespace name");
    // The schema the apiserver checks and the controller's own check agree,
    // spec by spec (the controller checks again: a CRD installed without the
    // schema must not let a bad request through); the one thing only the
    // controller can know is that a namespace joins itself.
    let long = "a".repeat(64);
    let specs = [
        (serde_json::json!({"action": "join", "target": "blue"}), true),
        (serde_json::json!({"action": "isolate"}), true),
        (serde_json::json!({"action": "global"}), true),
        (serde_json::json!({}), true),
        (serde_json::json!({"action": "merge"}), false),
        (serde_json::json!({"action": "join"}), false),
        (serde_json::json!({"action": "join", "target": ""}), false),
        (serde_json::json!({"action": "join", "target": "Blue"}), false),
        (serde_json::json!({"action": "join", "target": long}), false),
        (serde_json::json!({"action": "global", "target": "blue"}), false),
        (serde_json::json!({"action": 7}), false),
        (serde_json::json!({"target": "blue"}), false),
    ];
    for (spec, ok) in specs {
        let apiserver = apiserver_verdict(&schema, &spec);
        let controller = obj::asked("red", Some(&spec));
        ensure!(apiserver.is_empty() == ok, "apiserver on {spec}: {apiserver:?}");
        ensure!(controller.is_ok() == ok, "controller on {spec}: {controller:?}");
    }
    ensure!(apiserver_verdict(&schema, &serde_json::json!({"action": "join", "target": "red"})).is_empty());
    ensure!(
        obj::asked("red", Some(&serde_json::json!({"action": "join", "target": "red"}))).is_err(),
        "joining itself"
    );
    Ok(())
}

#[test]
fn netnamespace_status_fits_its_schema_and_the_printer_columns_show_it() -> Result<()> {
    use controller::netns_object as obj;
    use etcd_schema::{KubeRequest, RequestOutcome};
    let m = load()?;
    let schema = crd_schema(&m)?;
    let ids = [("red".to_string(), 12u32), ("blue".to_string(), 13)].into();
    let object = obj::ObjectView {
        uid: "u1".into(),
        generation: 3,
        resource_version: "9".into(),
        spec: Some(serde_json::json!({"action": "join", "target": "blue"})),
        status: None,
    };
    let taken = KubeRequest {
        uid: "u1".into(),
        generation: 3,
        outcome: RequestOutcome::Rejected,
        message: "x".repeat(5000),
    };
    let error = "e".repeat(1 << 20);
    let status = obj::status_json(&obj::status(&obj::StatusInputs {
        name: "red",
        object: &object,
        exists: true,
        ids: &ids,
        etcd_pending: Some(&etcd_schema::Action::Global),
        error: Some(&error),
        taken: Some(&taken),
        now: "2026-01-02T03:04:05Z",
    }));
    let full = serde_json::json!({"metadata": {"name": "red"}, "spec": object.spec, "status": status});
    let mut causes = Vec::new();
    let without_meta = serde_json::json!({"spec": full["spec"], "status": full["status"]});
    lab::kube_api::schema::validate(&schema, &without_meta, "", &mut causes);
    ensure!(causes.is_empty(), "the controller's status breaks the CRD's schema: {causes:?}");
    let v = &crd(&m)?.spec.versions[0];
    let columns = v.additional_printer_columns.as_deref().unwrap_or_default();
    let cell = |name: &str| -> Result<serde_json::Value> {
        let c = columns.iter().find(|c| c.name == name).with_context(|| format!("no column {name}"))?;
        let got = lab::kube_api::jsonpath::eval(&full, &c.json_path).map_err(anyhow::Error::msg)?;
        Ok(got.into_iter().next().unwrap_or_default())
    };
    ensure!(cell("NetID")? == 12, "NetID column: {}", cell("NetID")?);
    ensure!(cell("Pending")? == "global", "Pending column: {}", cell("Pending")?);
    ensure!(cell("Error")?.as_str().is_some_and(|e| e.starts_with("eee")), "Error column");
    ensure!(cell("Applied")? == "Rejected", "Applied column: {}", cell("Applied")?);
    ensure!(cell("Action")? == "join" && cell("Target")? == "blue", "the request");
    Ok(())
}

/// Who asks, as the RBAC authorizer sees a request's user.
struct User<'a> {
    name: &'a str,
    groups: &'a [&'a str],
}

/// One request's attributes (`namespace`: None for a cluster-scoped resource).
struct Attrs<'a> {
    verb: &'a str,
    group: &'a str,
    resource: &'a str,
    subresource: Option<&'a str>,
    namespace: Option<&'a str>,
}

/// kube-apiserver's RBAC rule match (rbac/v1 helpers: VerbMatches,
/// APIGroupMatches, ResourceMatches with `*/subresource`, ResourceNameMatches:
/// a rule with resourceNames never grants list, watch or create).
fn rule_allows(r: &k8s_openapi::api::rbac::v1::PolicyRule, a: &Attrs<'_>) -> bool {
    let any = |list: &[String], want: &str| list.iter().any(|x| x == "*" || x == want);
    let combined = match a.subresource {
        Some(s) => format!("{}/{s}", a.resource),
        None => a.resource.to_string(),
    };
    let resource = r.resources.iter().flatten().any(|x| {
        x == "*" || *x == combined || a.subresource.is_some_and(|s| x.strip_prefix("*/") == Some(s))
    });
    any(&r.verbs, a.verb)
        && any(r.api_groups.as_deref().unwrap_or_default(), a.group)
        && resource
        && r.resource_names.as_ref().is_none_or(|n| n.is_empty())
}

fn subject_is(s: &k8s_openapi::api::rbac::v1::Subject, u: &User<'_>) -> bool {
    match s.kind.as_str() {
        "User" => s.name == u.name,
        "Group" => u.groups.contains(&s.name.as_str()),
        "ServiceAccount" => {
            format!("system:serviceaccount:{}:{}", s.namespace.as_deref().unwrap_or(""), s.name) == u.name
        }
        _ => false,
    }
}

/// The RBAC authorizer over ClusterRoleBindings (everywhere) and
/// RoleBindings (only requests in their namespace: never a cluster-scoped
/// resource).
struct Authorizer<'a> {
    cluster_roles: &'a [ClusterRole],
    cluster_bindings: Vec<ClusterRoleBinding>,
    /// (binding, the Role it names if it names a Role).
    bindings: Vec<(k8s_openapi::api::rbac::v1::RoleBinding, Option<k8s_openapi::api::rbac::v1::Role>)>,
}

impl Authorizer<'_> {
    fn cluster_role(&self, name: &str) -> Vec<k8s_openapi::api::rbac::v1::PolicyRule> {
        self.cluster_roles
            .iter()
            .filter(|r| r.metadata.name.as_deref() == Some(name))
            .flat_map(|r| r.rules.clone().unwrap_or_default())
            .collect()
    }

    fn allows(&self, u: &User<'_>, a: &Attrs<'_>) -> bool {
        let by_cluster = self
            .cluster_bindings
            .iter()
            .filter(|b| b.subjects.iter().flatten().any(|s| subject_is(s, u)))
            .any(|b| self.cluster_role(&b.role_ref.name).iter().any(|r| rule_allows(r, a)));
        let by_namespace =
            self.bindings.iter().filter(|(b, _)| b.subjects.iter().flatten().any(|s| subject_is(s, u))).any(
                |(b, role)| {
                    let in_ns = a.namespace.is_some() && a.namespace == b.metadata.namespace.as_deref();
                    let rules = match (&b.role_ref.kind[..], role) {
                        ("Role", Some(role)) => role.rules.clone().unwrap_or_default(),
                        ("ClusterRole", _) => self.cluster_role(&b.role_ref.name),
                        _ => Vec::new(),
                    };
                    in_ns && rules.iter().any(|r| rule_allows(r, a))
                },
            );
        by_cluster || by_namespace
    }
}

#[test]
fn rbac_keeps_tenancy_from_namespace_admins_and_status_from_tenant_network_admins() -> Result<()> {
    use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    const TENANT_ROLE: &str = "k8s-ovs-tenant-network-admin";
    let m = load()?;
    // A request for a NetNamespace names a namespace only if the CRD makes
    // them namespaced (it must not: that is what keeps alice out, below).
    let scoped_to = (crd(&m)?.spec.scope == "Namespaced").then_some("red");
    let tenant_role = m
        .cluster_roles
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(TENANT_ROLE))
        .context(TENANT_ROLE)?;
    let labels = tenant_role.metadata.labels.clone().unwrap_or_default();
    ensure!(
        labels.keys().all(|k| !k.starts_with("rbac.authorization.k8s.io/aggregate-to-")),
        "{TENANT_ROLE} must not be aggregated into admin/edit/view: {labels:?}"
    );
    ensure!(
        !m.bindings.iter().any(|b| b.role_ref.name == TENANT_ROLE),
        "{TENANT_ROLE} is the operator's to bind"
    );
    let subject = |kind: &str, name: &str, ns: Option<&str>| Subject {
        kind: kind.into(),
        name: name.into(),
        namespace: ns.map(str::to_string),
        api_group: None,
    };
    // Bound as docs/operations.md says: a ClusterRoleBinding to a group.
    let mut cluster_bindings = m.bindings.clone();
    cluster_bindings.push(ClusterRoleBinding {
        metadata: ObjectMeta { name: Some("tenant-network-admins".into()), ..ObjectMeta::default() },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: TENANT_ROLE.into(),
        },
        subjects: Some(vec![subject("Group", "tenant-network-admins", None)]),
    });
    // A namespace's admin: everything in namespace red (a wildcard Role), and
    // every shipped ClusterRole, the tenant role included, bound in red by
    // RoleBindings (a mistake an operator could make).
    let all = PolicyRule {
        api_groups: Some(vec!["*".into()]),
        resources: Some(vec!["*".into()]),
        verbs: vec!["*".into()],
        ..PolicyRule::default()
    };
    let in_red =
        ObjectMeta { namespace: Some("red".into()), name: Some("red-admin".into()), ..ObjectMeta::default() };
    let red_role = Role { metadata: in_red.clone(), rules: Some(vec![all]) };
    let binding = |kind: &str, name: &str| RoleBinding {
        metadata: in_red.clone(),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: kind.into(),
            name: name.into(),
        },
        subjects: Some(vec![subject("User", "alice", None)]),
    };
    let mut bindings = vec![(binding("Role", "red-admin"), Some(red_role))];
    for r in &m.cluster_roles {
        bindings.push((binding("ClusterRole", r.metadata.name.as_deref().unwrap_or_default()), None));
    }
    let authz = Authorizer { cluster_roles: &m.cluster_roles, cluster_bindings, bindings };

    let netns = |verb: &'static str, sub: Option<&'static str>| Attrs {
        verb,
        group: "k8s-ovs.io",
        resource: "netnamespaces",
        subresource: sub,
        namespace: scoped_to,
    };
    let write_verbs = ["create", "update", "patch", "delete"];
    let all_verbs = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"];
    let admin = User { name: "bob", groups: &["tenant-network-admins"] };
    for v in ["get", "list", "watch"].iter().chain(&write_verbs) {
        ensure!(authz.allows(&admin, &netns(v, None)), "a tenant-network admin may {v} NetNamespaces");
    }
    for v in ["update", "patch"] {
        ensure!(
            !authz.allows(&admin, &netns(v, Some("status"))),
            "a tenant-network admin must not {v} the status"
        );
    }
    let ns_update =
        Attrs { verb: "update", group: "", resource: "namespaces", subresource: None, namespace: None };
    ensure!(!authz.allows(&admin, &ns_update), "the tenant role grants NetNamespaces only");

    let controller = User { name: "system:serviceaccount:kube-system:k8s-ovs-controller", groups: &[] };
    ensure!(authz.allows(&controller, &netns("update", Some("status"))), "the controller writes the status");
    for v in ["create", "delete", "list", "watch"] {
        ensure!(authz.allows(&controller, &netns(v, None)), "the controller may {v} NetNamespaces");
    }
    for v in ["update", "patch"] {
        ensure!(!authz.allows(&controller, &netns(v, None)), "the controller never writes a spec ({v})");
    }
    let agent = User { name: "system:serviceaccount:kube-system:k8s-ovs-agent", groups: &[] };
    let alice = User { name: "alice", groups: &["system:authenticated"] };
    for (who, u) in [("the agent", &agent), ("a namespace's admin", &alice)] {
        for v in all_verbs {
            for sub in [None, Some("status")] {
                ensure!(
                    !authz.allows(u, &netns(v, sub)),
                    "{who} may {v} NetNamespaces{}",
                    sub.map(|s| format!("/{s}")).unwrap_or_default()
                );
            }
        }
    }
    // NetworkPolicy: the agent watches policies, pods and namespaces of the
    // whole cluster (no namespace: a cluster-wide list), and writes none.
    for (group, resource) in [("networking.k8s.io", "networkpolicies"), ("", "pods"), ("", "namespaces")] {
        let at = |verb| Attrs { verb, group, resource, subresource: None, namespace: None };
        for v in ["list", "watch"] {
            ensure!(authz.allows(&agent, &at(v)), "the agent may {v} {resource} cluster-wide");
        }
        for v in write_verbs {
            ensure!(!authz.allows(&agent, &at(v)), "the agent must not {v} {resource}");
        }
    }
    // The evaluator is not one that refuses everything: alice owns red.
    let pods_in_red =
        Attrs { verb: "create", group: "", resource: "pods", subresource: None, namespace: Some("red") };
    ensure!(authz.allows(&alice, &pods_in_red), "alice administers red");
    Ok(())
}

/// The Grafana dashboard in deploy/grafana imports as is (a dashboard
/// object with a title, uid, panels placed on the grid, a Prometheus
/// datasource variable) and queries only metrics the agent exports: every
/// `k8s_ovs_*` name in its queries is a family of the agent's golden
/// `/metrics` exposition (agent/tests/golden/metrics.txt).
#[test]
fn the_grafana_dashboard_queries_only_metrics_the_agent_exports() -> Result<()> {
    let path = repo().join("deploy/grafana/k8s-ovs-tenants.json");
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path)?).context("dashboard JSON")?;
    ensure!(
        d["title"].is_string() && d["uid"].is_string() && d["schemaVersion"].is_u64(),
        "dashboard header"
    );
    let vars = d["templating"]["list"].as_array().context("templating")?;
    ensure!(
        vars.iter().any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "datasource variable"
    );
    let golden = std::fs::read_to_string(repo().join("agent/tests/golden/metrics.txt"))?;
    let mut exported = BTreeSet::new();
    for l in golden.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (Some(name), Some(kind)) = (it.next(), it.next()) else { continue };
            exported.insert(name.to_string());
            if kind == "histogram" {
                for s in ["_bucket", "_sum", "_count"] {
                    exported.insert(format!("{name}{s}"));
                }
            }
        }
    }
    let mut queries: Vec<String> = Vec::new();
    let panels = d["panels"].as_array().context("panels")?;
    ensure!(!panels.is_empty(), "no panels");
    for p in panels {
        ensure!(p["gridPos"]["w"].is_u64() && p["gridPos"]["h"].is_u64(), "panel {} placed", p["title"]);
        ensure!(
            p["datasource"]["uid"] == "${datasource}",
            "panel {} uses the datasource variable",
            p["title"]
        );
        let targets = p["targets"].as_array().context("targets")?;
        ensure!(!targets.is_empty(), "panel {} queries nothing", p["title"]);
        queries.extend(targets.iter().filter_map(|t| t["expr"].as_str().map(str::to_string)));
    }
    queries.extend(vars.iter().filter_map(|v| v["definition"].as_str().map(str::to_string)));
    let name = regex::Regex::new(r"k8s_ovs_[a-z0-9_]+")?;
    let mut used = BTreeSet::new();
    for q in &queries {
        for m in name.find_iter(q) {
            ensure!(
                exported.contains(m.as_str()),
                "the dashboard queries {}, which the agent does not export: {q}",
                m.as_str()
            );
            used.insert(m.as_str().to_string());
        }
    }
    for family in [
        "k8s_ovs_namespace_bytes_total",
        "k8s_ovs_namespace_refused_packets_total",
        "k8s_ovs_pod_spoofed_packets_total",
    ] {
        ensure!(used.contains(family), "the dashboard shows {family}");
    }
    Ok(())
}
