//! `k8s-ovs-ctl trace` names the NetworkPolicy that decided a pair (issue
//! 16): a two-node lab with the test apiserver, the controller and an agent
//! per node (binaries), Namespace and Pod objects written as the kubelet
//! does (the Pod before its CNI ADD, `status.podIP` after it), and a policy
//! admitting one TCP port into red/web. Once its effect is measured (the
//! admitted port answers, the other not), `trace --protocol tcp --port`
//! names the admitting rule (exit 0) and the isolating policy (exit 3).
//! Every address used lives inside namespaces the lab made.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
// Servers started in pods, ended by PID when dropped (also on failure).
use lab::cluster::Children as Servers;
use lab::cluster::{cni, ctl, start_controller, start_kube_api, Agent, CniCall, Daemon};
use lab::kube_api::KubeApi;
use lab::services::{ask, spawn_echo};
use lab::{traffic, Lab, Netns};
use serde_json::{json, Value};

/// Until the agents have applied the policy; only turns a hang into a failure.
const CONVERGE: Duration = Duration::from_secs(60);
const ADMITTED: u16 = 8080;
const REFUSED: u16 = 9090;

struct Pod {
    netns: Netns,
    ip: String,
}

/// Pod `red/name` with `labels` on node `node`: the object first, then the
/// CNI ADD, then its address in the status (as the kubelet reports it).
fn add_pod(
    lab: &mut Lab,
    api: &KubeApi,
    agents: &[Agent],
    node: usize,
    name: &str,
    app: &str,
) -> Result<Pod> {
    let mut object = json!({"kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": "red", "labels": {"app": app}},
        "spec": {"nodeName": format!("n{node}"), "containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": "Pending"}});
    api.create(object.clone())?;
    let netns = lab.pod_netns(name)?;
    let out = cni(lab, node, "ADD", &CniCall::pod(&format!("cid-{name}"), &netns, "red", name))?;
    ensure!(out.code == Some(0), "ADD {name}: {} {}", out.stdout, agents[node - 1].log_tail());
    let ip = out.stdout["ips"][0]["address"].as_str().unwrap_or_default();
    let ip = ip.split('/').next().unwrap_or_default().to_string();
    object["status"] = json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]});
    api.update(object)?;
    Ok(Pod { netns, ip })
}

fn network_policy() -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": "web-from-client", "namespace": "red"},
           "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                                 "ports": [{"protocol": "TCP", "port": ADMITTED}]}]}})
}

/// Waits until `client` reaches `web` on `port` (`reach`) or the deadline.
fn wait_tcp(client: &Pod, web: &Pod, port: u16, reach: bool, deadline: Instant) -> Result<()> {
    loop {
        if ask(&client.netns, "tcp", &web.ip, port)?.is_some() == reach {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("client -> web tcp/{port}: reach={reach} not seen within {CONVERGE:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn lab_netpol_trace_names_the_admitting_rule_and_the_isolating_policy() -> Result<()> {
    lab::needs_root!();
    let mut lab = Lab::start(2)?;
    let api = start_kube_api(&lab)?;
    for i in 1..=2 {
        api.create_node(&format!("n{i}"), &lab.node(i).ip)?;
    }
    api.create_namespace("red")?;
    let url = api.url();
    let _controller: Daemon = start_controller(&lab, &url, "c1", &[])?;
    let agents = (1..=2).map(|i| Agent::start(&lab, i, &["--kube-url", &url])).collect::<Result<Vec<_>>>()?;
    let client = add_pod(&mut lab, &api, &agents, 1, "client", "client")?;
    let web = add_pod(&mut lab, &api, &agents, 2, "web", "web")?;
    let mut servers = Servers::default();
    for port in [ADMITTED, REFUSED] {
        servers.0.push(spawn_echo(&web.netns, &web.ip, "tcp", port, "web")?);
    }
    // Before the policy both ports answer (across the nodes).
    let deadline = Instant::now() + CONVERGE;
    wait_tcp(&client, &web, ADMITTED, true, deadline)?;
    wait_tcp(&client, &web, REFUSED, true, deadline)?;

    api.create(network_policy())?;
    let deadline = Instant::now() + CONVERGE;
    wait_tcp(&client, &web, REFUSED, false, deadline)?;
    wait_tcp(&client, &web, ADMITTED, true, deadline)?;

    let trace = |args: &[&str]| -> Result<(Option<i32>, String, String)> {
        let mut argv = vec!["trace", "red/client", "red/web"];
        argv.extend_from_slice(args);
        let (code, out, err) = ctl(&lab, &argv)?;
        eprintln!("$ k8s-ovs-ctl {}  -> {code:?}\n{out}{err}", argv.join(" "));
        Ok((code, out, err))
    };
    let admitted = ADMITTED.to_string();
    let (code, out, _) = trace(&["--protocol", "tcp", "--port", &admitted])?;
    ensure!(code == Some(0), "the admitted port: exit {code:?}: {out}");
    ensure!(
        out.contains(
            "netpol  ingress of red/web: admitted by NetworkPolicy red/web-from-client (ingress rule 1)"
        ),
        "{out}"
    );
    ensure!(
        out.contains("netpol  egress of red/client: no NetworkPolicy selects red/client for egress"),
        "{out}"
    );
    ensure!(out.contains("probe   TCP to port 8080") && out.contains("verdict ALLOWED"), "{out}");

    let refused = REFUSED.to_string();
    let (code, out, _) = trace(&["--protocol", "tcp", "--port", &refused])?;
    ensure!(code == Some(3), "the refused port: exit {code:?}: {out}");
    ensure!(
        out.contains(
            "refused by NetworkPolicy: red/web is isolated for ingress by red/web-from-client, \
             and no rule of theirs admits this packet"
        ),
        "{out}"
    );
    ensure!(
        out.contains("dropped in table 62 INGRESS_POLICY on") && out.contains("DENIED by NetworkPolicy"),
        "{out}"
    );
    ensure!(!out.contains("MISMATCH"), "{out}");

    // The default probe, an echo, is no TCP to 8080: refused too, as ping says.
    let (code, out, _) = trace(&[])?;
    ensure!(code == Some(3) && out.contains("refused by NetworkPolicy"), "{out}");
    ensure!(traffic::unreachable(&client.netns, &web.ip, 2)?, "trace said refused, ping passes");

    // The flags are checked before anything is asked.
    let (code, _, err) = trace(&["--port", "80"])?;
    ensure!(code == Some(1) && err.contains("--port needs --protocol tcp or udp"), "{err}");
    let (code, _, err) = trace(&["--protocol", "udp"])?;
    ensure!(code == Some(1) && err.contains("--protocol udp needs --port N"), "{err}");
    drop(servers);
    Ok(())
}
