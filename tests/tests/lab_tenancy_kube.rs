//! Tenancy through the Kubernetes API (issue 18) on the whole system: a
//! two-node lab, the controller and agents as binaries, pods through the CNI
//! binary, and the real `kubectl` against the lab's test apiserver with the
//! NetNamespace CRD of deploy/ (its schema enforced as kube-apiserver
//! enforces it). join, isolate and global are asked the ways operators and
//! GitOps tools ask them (`kubectl apply` of a manifest, `kubectl patch`,
//! `kubectl edit`), and every change is observed by the ping matrix; etcd
//! stays the source of truth: an etcd edit shows in the objects' status, an
//! etcd edit and a request made at once resolve to the etcd edit, and a bad
//! request is refused with a condition and changes nothing.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use lab::cluster::{start_controller, start_kube_api_with, Agent, Daemon};
use lab::kube_api::KubeApi;
use lab::kubectl::Kubectl;
use lab::tenancy::{add_pod, matrix_matches_etcd, netns_key, vni_of, wait_reach, TestPod};
use lab::Lab;
use serde_json::Value;

const CRD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/base/netnamespace-crd.yaml");

struct World {
    lab: Lab,
    api: KubeApi,
    kubectl: Kubectl,
    controller: Option<Daemon>,
    _agents: Vec<Agent>,
    pods: Vec<TestPod>,
}

impl World {
    /// red, blue and green with a pod on each node; the CRD installed with
    /// `kubectl apply`, as an operator installs deploy/.
    fn start() -> Result<World> {
        let mut lab = Lab::start(2)?;
        let api = start_kube_api_with(&lab, &["red", "blue", "green", "kube-system"])?;
        let kubectl = Kubectl::new(&api.url(), &lab.dir.join("kubectl"), Some(&lab.ctl))?;
        kubectl.ok(&["apply", "-f", CRD])?;
        let url = api.url();
        let controller = Some(start_controller(&lab, &url, "c1", &[])?);
        let agents =
            (1..=2).map(|i| Agent::start(&lab, i, &["--kube-url", &url])).collect::<Result<Vec<_>>>()?;
        let mut pods = Vec::new();
        for node in 1..=2 {
            for ns in ["red", "blue", "green"] {
                pods.push(add_pod(&mut lab, node, ns, &format!("{ns}-n{node}"))?);
            }
        }
        let w = World { lab, api, kubectl, controller, _agents: agents, pods };
        for ns in ["red", "blue", "green", "kube-system"] {
            w.status_where(ns, "its view", |s| s["netID"].is_u64())?;
        }
        Ok(w)
    }

    fn pod(&self, name: &str) -> &TestPod {
        self.pods.iter().find(|p| p.name == name).expect("pod")
    }

    fn object(&self, ns: &str) -> Option<Value> {
        self.api.get("NetNamespace", None, ns)
    }

    /// The object's status once `cond` holds (the controller writes it).
    fn status_where(&self, ns: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.object(ns).map(|o| o["status"].clone()).filter(|s| cond(s)) {
                return Ok(s);
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "{ns}: {what} not seen within 30 s: {:?}",
                self.object(ns)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn generation(&self, ns: &str) -> Result<i64> {
        self.object(ns).and_then(|o| o["metadata"]["generation"].as_i64()).context("generation")
    }

    /// The `Applied` condition once the controller has handled the object's
    /// current generation.
    fn answer(&self, ns: &str) -> Result<Value> {
        let g = self.generation(ns)?;
        let s = self.status_where(ns, &format!("generation {g} handled"), |s| {
            s["observedGeneration"].as_i64() >= Some(g)
        })?;
        let applied = s["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Applied");
        applied.cloned().with_context(|| format!("{ns}: no Applied condition: {s}"))
    }

    /// `kubectl patch --type merge` of `ns`'s object.
    fn try_patch(&self, ns: &str, patch: &str) -> Result<lab::cmd::Output> {
        self.kubectl.run(&["patch", "netnamespace", ns, "--type", "merge", "-p", patch])
    }

    fn patch(&self, ns: &str, patch: &str) -> Result<()> {
        let out = self.try_patch(ns, patch)?;
        ensure!(out.success(), "kubectl patch {ns} {patch}: {}", out.stderr);
        Ok(())
    }

    fn record_revision(&self, ns: &str) -> Result<i64> {
        let v: Value = serde_json::from_str(&self.lab.etcdctl(&["get", "-w", "json", &netns_key(ns)])?)?;
        v["kvs"][0]["mod_revision"].as_i64().context("mod_revision")
    }

    /// `kubectl get netnamespaces`, as (NAME -> the row's cells by column).
    fn table(&self) -> Result<Vec<std::collections::BTreeMap<String, String>>> {
        let out = self.kubectl.ok(&["get", "netnamespaces"])?;
        let mut lines = out.lines();
        let head = lines.next().context("no header")?;
        // Columns start where the header's words start.
        let starts: Vec<usize> = head
            .char_indices()
            .filter(|(i, c)| *c != ' ' && (*i == 0 || head.as_bytes()[i - 1] == b' '))
            .map(|(i, _)| i)
            .collect();
        let names: Vec<&str> = head.split_whitespace().collect();
        Ok(lines
            .map(|l| {
                names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        let end = starts.get(i + 1).copied().unwrap_or(l.len()).min(l.len());
                        let cell = l.get(starts[i].min(l.len())..end).unwrap_or("").trim().to_string();
                        (n.to_string(), cell)
                    })
                    .collect()
            })
            .collect())
    }

    fn row(&self, ns: &str) -> Result<std::collections::BTreeMap<String, String>> {
        self.table()?
            .into_iter()
            .find(|r| r.get("NAME").map(String::as_str) == Some(ns))
            .with_context(|| format!("no row for {ns}"))
    }
}

/// A NetNamespace manifest with `spec` (its YAML, from `spec:` on).
fn manifest(ns: &str, spec: &str) -> String {
    format!("apiVersion: k8s-ovs.io/v1\nkind: NetNamespace\nmetadata:\n  name: {ns}\n{spec}")
}

#[test]
fn lab_tenancy_join_isolate_global_with_kubectl_and_gitops() -> Result<()> {
    lab::needs_root!();
    let w = World::start()?;
    let (red, blue, green) = (vni_of(&w.lab, "red")?, vni_of(&w.lab, "blue")?, vni_of(&w.lab, "green")?);
    ensure!(red != blue && blue != green && red != green, "VNIs {red} {blue} {green}");
    // `kubectl get netnamespaces` lists what `k8s-ovs-ctl list` lists.
    for (ns, id) in [("red", red), ("blue", blue), ("green", green), ("kube-system", 0)] {
        let row = w.row(ns)?;
        ensure!(row["NETID"] == id.to_string(), "{ns}: {row:?}");
    }
    matrix_matches_etcd(&w.lab, &w.pods)?;

    // join, from a manifest (what a GitOps tool applies).
    let join = manifest("red", "spec:\n  action: join\n  target: blue\n");
    let out = w.kubectl.apply(&join)?;
    ensure!(out.success() && out.stdout.contains("configured"), "{} {}", out.stdout, out.stderr);
    ensure!(w.answer("red")?["reason"] == "Applied");
    ensure!(vni_of(&w.lab, "red")? == blue, "red took blue's NetID");
    wait_reach(w.pod("red-n1"), w.pod("blue-n2"), true)?;
    matrix_matches_etcd(&w.lab, &w.pods)?;
    let row = w.row("red")?;
    ensure!(
        row["NETID"] == blue.to_string() && row["ACTION"] == "join" && row["TARGET"] == "blue",
        "{row:?}"
    );
    ensure!(row["APPLIED"] == "Applied", "{row:?}");

    // The same manifest again: kubectl sends nothing, etcd is not written.
    let before = w.record_revision("red")?;
    let out = w.kubectl.apply(&join)?;
    ensure!(out.success() && out.stdout.contains("unchanged"), "{} {}", out.stdout, out.stderr);
    let out = w.kubectl.apply(&manifest("green", "spec:\n  action: global\n"))?;
    ensure!(out.success(), "{}", out.stderr);
    ensure!(w.answer("green")?["reason"] == "Applied");
    ensure!(w.record_revision("red")? == before, "red's record was written again");
    wait_reach(w.pod("green-n1"), w.pod("red-n2"), true)?;
    matrix_matches_etcd(&w.lab, &w.pods)?;

    // The join removed from the repository: the object goes back to its
    // default, isolated; red gets a network of its own again.
    let out = w.kubectl.apply(&manifest("red", "spec: {}\n"))?;
    ensure!(out.success(), "{} {}", out.stdout, out.stderr);
    ensure!(w.answer("red")?["reason"] == "Applied");
    let isolated = vni_of(&w.lab, "red")?;
    ensure!(isolated != blue && isolated != 0, "red isolated: {isolated}");
    ensure!(
        w.object("red").map(|o| o["spec"].clone()) == Some(serde_json::json!({"action": "isolate"})),
        "the default"
    );
    wait_reach(w.pod("red-n1"), w.pod("blue-n2"), false)?;
    matrix_matches_etcd(&w.lab, &w.pods)?;

    // `kubectl patch` and `kubectl edit`, as an admin at a terminal.
    w.patch("green", r#"{"spec":{"action":"isolate"}}"#)?;
    ensure!(w.answer("green")?["reason"] == "Applied");
    ensure!(vni_of(&w.lab, "green")? != 0);
    wait_reach(w.pod("green-n1"), w.pod("red-n2"), false)?;
    matrix_matches_etcd(&w.lab, &w.pods)?;
    // The "editor" adds a spec to blue's view, as an admin would type it.
    let editor = w.lab.dir.join("editor.sh");
    std::fs::write(&editor, "#!/bin/sh\nprintf 'spec:\\n  action: join\\n  target: green\\n' >> \"$1\"\n")?;
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let editor = editor.to_string_lossy().into_owned();
    let out = w.kubectl.run_with(&["edit", "netnamespace", "blue"], &[("KUBE_EDITOR", &editor)], None)?;
    ensure!(out.success(), "kubectl edit: {} {}", out.stdout, out.stderr);
    ensure!(w.answer("blue")?["reason"] == "Applied", "{:?}", w.object("blue"));
    ensure!(vni_of(&w.lab, "blue")? == vni_of(&w.lab, "green")?, "blue joined green");
    wait_reach(w.pod("blue-n1"), w.pod("green-n2"), true)?;
    matrix_matches_etcd(&w.lab, &w.pods)?;

    // An etcd edit shows in the status: green global by etcdctl.
    let id = vni_of(&w.lab, "green")?;
    let edit = format!(r#"{{"NetName":"green","NetID":{id},"Action":"global","Namespace":""}}"#);
    w.lab.etcdctl(&["put", &netns_key("green"), &edit])?;
    w.status_where("green", "NetID 0 from etcd", |s| s["netID"] == 0)?;
    let row = w.row("green")?;
    ensure!(row["NETID"] == "0" && row["ACTION"] == "isolate", "the spec stays, etcd's NetID shows: {row:?}");
    let out = w.kubectl.ok(&[
        "get",
        "netnamespace",
        "green",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"InSync\")].status}",
    ])?;
    ensure!(out == "False", "green's spec (isolate) no longer holds: {out}");
    wait_reach(w.pod("green-n1"), w.pod("red-n2"), true)?;
    matrix_matches_etcd(&w.lab, &w.pods)?;
    Ok(())
}

#[test]
fn lab_tenancy_conflicts_resolve_to_etcd_and_bad_requests_change_nothing() -> Result<()> {
    lab::needs_root!();
    let mut w = World::start()?;
    let (red, blue, green) = (vni_of(&w.lab, "red")?, vni_of(&w.lab, "blue")?, vni_of(&w.lab, "green")?);

    // What the apiserver refuses (the CRD's schema): nothing stored.
    let out = w.try_patch("red", r#"{"spec":{"action":"merge"}}"#)?;
    ensure!(
        !out.success() && out.stderr.contains(r#"spec.action: Unsupported value: "merge""#),
        "{}",
        out.stderr
    );
    let out = w.kubectl.apply(&manifest("red", "spec:\n  action: join\n"))?;
    ensure!(!out.success() && out.stderr.contains("is invalid"), "join without target: {}", out.stderr);
    ensure!(
        w.object("red").is_some_and(|o| o.get("spec").is_none()),
        "nothing stored: {:?}",
        w.object("red")
    );

    // What only the controller knows: a condition, etcd's error, the network unchanged.
    let before = w.record_revision("red")?;
    let out = w.kubectl.apply(&manifest("red", "spec:\n  action: join\n  target: nope\n"))?;
    ensure!(out.success(), "{}", out.stderr);
    let answer = w.answer("red")?;
    ensure!(answer["status"] == "False" && answer["reason"] == "Rejected", "{answer}");
    ensure!(
        answer["message"].as_str().is_some_and(|m| m.contains("namespace nope does not exist")),
        "{answer}"
    );
    let row = w.row("red")?;
    ensure!(row["APPLIED"] == "Rejected" && row["ERROR"].contains("nope"), "{row:?}");
    ensure!(w.record_revision("red")? == before && vni_of(&w.lab, "red")? == red, "red's record changed");
    let err = w.lab.etcdctl(&[
        "get",
        "--print-value-only",
        &format!("{}/k8ssdn/errors/netnamespaces/red", lab::cluster::PREFIX),
    ])?;
    ensure!(err.contains("NetNamespace red (generation") && err.contains("nope"), "etcd's error: {err}");
    matrix_matches_etcd(&w.lab, &w.pods)?;

    // Both asked at once: an etcd join to green and an object join to blue,
    // while no controller runs. The etcd edit wins; the object says so.
    drop(w.controller.take());
    w.lab.etcdctl(&[
        "put",
        &netns_key("red"),
        &format!(r#"{{"NetName":"red","NetID":{red},"Action":"join","Namespace":"green"}}"#),
    ])?;
    w.patch("red", r#"{"spec":{"target":"blue"}}"#)?;
    w.controller = Some(start_controller(&w.lab, &w.api.url(), "c2", &[])?);
    let answer = w.answer("red")?;
    ensure!(answer["reason"] == "Superseded", "{answer}");
    ensure!(answer["message"].as_str().is_some_and(|m| m.contains("(join green)")), "{answer}");
    ensure!(vni_of(&w.lab, "red")? == green, "the etcd edit won");
    wait_reach(w.pod("red-n1"), w.pod("green-n2"), true)?;
    matrix_matches_etcd(&w.lab, &w.pods)?;
    // Never a flip-flop: another change later, and the next leader, leave red alone.
    let settled = w.record_revision("red")?;
    w.patch("blue", r#"{"spec":{"action":"global"}}"#)?;
    ensure!(w.answer("blue")?["reason"] == "Applied");
    drop(w.controller.take());
    w.controller = Some(start_controller(&w.lab, &w.api.url(), "c3", &[])?);
    w.api.create_namespace("later")?;
    w.status_where("later", "its view", |s| s["netID"].is_u64())?;
    ensure!(w.record_revision("red")? == settled && vni_of(&w.lab, "red")? == green, "red flipped");
    ensure!(vni_of(&w.lab, "red")? != blue);
    wait_reach(w.pod("blue-n1"), w.pod("red-n2"), true)?;
    matrix_matches_etcd(&w.lab, &w.pods)?;

    // k8s-ovs-ctl through the Kubernetes API: no etcd flags at all.
    let ctl = lab::cluster::bin("k8s-ovs-ctl")?;
    let ctl = ctl.to_string_lossy();
    let url = w.api.url();
    let out = w.lab.ctl.exec_full(
        &[&ctl, "--via", "kube", "--kube-url", &url, "--wait", "isolate", "red"],
        Duration::from_secs(60),
    )?;
    ensure!(out.success(), "{} {}", out.stdout, out.stderr);
    let alone = vni_of(&w.lab, "red")?;
    ensure!(alone != green && out.stdout.trim() == format!("red: NetID {alone}"), "{}", out.stdout);
    let out =
        w.lab.ctl.exec_full(&[&ctl, "--via", "kube", "--kube-url", &url, "list"], Duration::from_secs(60))?;
    let line = out.stdout.lines().find(|l| l.starts_with("red ")).context("red in the list")?;
    ensure!(line.split_whitespace().nth(1) == Some(alone.to_string().as_str()), "{}", out.stdout);
    wait_reach(w.pod("red-n1"), w.pod("green-n2"), false)?;
    matrix_matches_etcd(&w.lab, &w.pods)?;
    Ok(())
}
