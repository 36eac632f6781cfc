//! The whole system on a two-node lab: the test kube-apiserver, the
//! controller, an agent per node, pods through the CNI binary. Tenancy is
//! changed the operator's way (a raw `etcdctl put` of the record's JSON) and
//! the friendly way (`k8s-ovs-ctl`); each change is observed by ping.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use lab::cluster::{cni, ctl, start_controller, start_kube_api, Agent, CniCall, Daemon};
use lab::kube_api::KubeApi;
use lab::tenancy::{matrix_matches_etcd, netns_key, record, vni_of, TestPod};
use lab::{traffic, Lab};

/// Puts `json` as namespace `ns`'s record with etcdctl, then requires the
/// path `from` -> `to` to become `reach` within 1 s of the write (the time
/// is that of the first probe showing it).
fn operator_edit_then(
    lab: &Lab,
    ns: &str,
    json: &str,
    from: &TestPod,
    to: &TestPod,
    reach: bool,
) -> Result<Duration> {
    let t = Instant::now();
    lab.etcdctl(&["put", &netns_key(ns), json])?;
    let took = traffic::time_until(&from.netns, &to.ip, reach, t, Duration::from_secs(1))?;
    match took {
        Some(d) => Ok(d),
        None => bail!("{} -> {}: reach={reach} not seen within 1 s of the edit", from.name, to.name),
    }
}

/// The test apiserver with the lab's two nodes and `namespaces`, the
/// controller, and an agent per node.
fn cluster(lab: &Lab, namespaces: &[&str]) -> Result<(KubeApi, Daemon, Vec<Agent>)> {
    cluster_with(lab, namespaces, &[])
}

/// [`cluster`] with more flags for the agents.
fn cluster_with(
    lab: &Lab,
    namespaces: &[&str],
    agent_flags: &[&str],
) -> Result<(KubeApi, Daemon, Vec<Agent>)> {
    let api = start_kube_api(lab)?;
    for i in 1..=2 {
        api.create_node(&format!("n{i}"), &lab.node(i).ip)?;
    }
    for ns in namespaces {
        api.create_namespace(ns)?;
    }
    let url = api.url();
    let controller = start_controller(lab, &url, "c1", &[])?;
    let mut flags = vec!["--kube-url", &url];
    flags.extend_from_slice(agent_flags);
    let agents = (1..=2).map(|i| Agent::start(lab, i, &flags)).collect::<Result<Vec<_>>>()?;
    Ok((api, controller, agents))
}

/// ADD of pod `name` in `ns` on `node` through the CNI binary.
fn add_pod(lab: &mut Lab, agents: &[Agent], node: usize, ns: &str, name: &str) -> Result<TestPod> {
    let netns = lab.pod_netns(name)?;
    let out = cni(lab, node, "ADD", &CniCall::pod(&format!("cid-{name}"), &netns, ns, name))?;
    ensure!(out.code == Some(0), "ADD {name}: {} {}", out.stdout, agents[node - 1].log_tail());
    let ip =
        out.stdout["ips"][0]["address"].as_str().unwrap_or_default().split('/').next().unwrap_or_default();
    Ok(TestPod { name: name.into(), namespace: ns.into(), netns, ip: ip.into() })
}

#[test]
fn lab_cluster_operator_actions_apply_end_to_end() -> Result<()> {
    lab::needs_root!();
    let mut lab = Lab::start(2)?;
    let (api, _controller, agents) = cluster(&lab, &["red", "blue", "green", "kube-system"])?;
    let mut pods = Vec::new();
    // 3 namespaces x 2 pods on each node.
    for node in 1..=2 {
        for (ns, k) in ["red", "blue", "green"].into_iter().flat_map(|ns| [(ns, 1), (ns, 2)]) {
            pods.push(add_pod(&mut lab, &agents, node, ns, &format!("{ns}-n{node}-{k}"))?);
        }
    }
    // Every namespace has its own VNI from the controller; kube-system is global.
    let (red, blue, green) = (vni_of(&lab, "red")?, vni_of(&lab, "blue")?, vni_of(&lab, "green")?);
    ensure!(red != blue && blue != green && red != green && red >= 10, "VNIs {red} {blue} {green}");
    ensure!(vni_of(&lab, "kube-system")? == 0);
    matrix_matches_etcd(&lab, &pods)?;
    let by = |n: &str| pods.iter().find(|p| p.name == n).expect("pod");

    // join, the operator's way: red takes blue's NetID.
    let took = operator_edit_then(
        &lab,
        "red",
        &format!(r#"{{"NetName":"red","NetID":{red},"Action":"join","Namespace":"blue"}}"#),
        by("red-n1-1"),
        by("blue-n2-1"),
        true,
    )?;
    eprintln!("join observed {took:?} after the etcdctl put");
    ensure!(vni_of(&lab, "red")? == blue && record(&lab, "red")?["Action"] == "");
    // The Namespace's history: an Event with the action and both NetIDs.
    let joined = "joined blue (etcd edit at revision";
    let event =
        wait_event(&api, "red", |m| m.starts_with(joined) && m.ends_with(&format!("NetID {red} -> {blue}")))?;
    ensure!(
        event["involvedObject"]["kind"] == "Namespace" && event["metadata"]["namespace"] == "red",
        "{event}"
    );
    ensure!(event["involvedObject"]["uid"].is_string(), "the Event names this Namespace's uid: {event}");
    matrix_matches_etcd(&lab, &pods)?;
    // isolate: red gets its own NetID back.
    let took = operator_edit_then(
        &lab,
        "red",
        &format!(r#"{{"NetName":"red","NetID":{blue},"Action":"isolate","Namespace":""}}"#),
        by("red-n1-1"),
        by("blue-n2-1"),
        false,
    )?;
    eprintln!("isolate observed {took:?} after the etcdctl put");
    matrix_matches_etcd(&lab, &pods)?;
    // global: green reaches, and is reached by, everybody.
    let took = operator_edit_then(
        &lab,
        "green",
        &format!(r#"{{"NetName":"green","NetID":{green},"Action":"global","Namespace":""}}"#),
        by("green-n1-1"),
        by("red-n2-1"),
        true,
    )?;
    eprintln!("global observed {took:?} after the etcdctl put");
    ensure!(vni_of(&lab, "green")? == 0);
    wait_event(&api, "green", |m| {
        m.starts_with("made global") && m.ends_with(&format!("NetID {green} -> 0"))
    })?;
    matrix_matches_etcd(&lab, &pods)?;

    // The friendly way: k8s-ovs-ctl with --wait returns once applied.
    let (code, out, err) = ctl(&lab, &["join", "blue", "--to", "red", "--wait"])?;
    ensure!(code == Some(0), "ctl join: {out} {err}");
    ensure!(
        traffic::reachable(&by("blue-n1-2").netns, &by("red-n2-1").ip, Duration::from_secs(1))?,
        "blue -> red after ctl join"
    );
    matrix_matches_etcd(&lab, &pods)?;
    let (code, out, err) = ctl(&lab, &["isolate", "blue", "--wait"])?;
    ensure!(code == Some(0), "ctl isolate: {out} {err}");
    matrix_matches_etcd(&lab, &pods)?;
    let (code, out, _) = ctl(&lab, &["list"])?;
    ensure!(code == Some(0) && out.contains("blue") && out.contains("green"), "ctl list: {out}");
    Ok(())
}

/// Waits (5 s at most) for a TenancyChanged Event on namespace `ns` whose
/// message passes `matches`, as the test apiserver stored it.
fn wait_event(api: &KubeApi, ns: &str, matches: impl Fn(&str) -> bool) -> Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = api.objects(lab::kube_api::Kind::Event).into_iter().find(|e| {
            e["reason"] == "TenancyChanged"
                && e["involvedObject"]["name"] == ns
                && e["message"].as_str().is_some_and(&matches)
        });
        if let Some(e) = found {
            return Ok(e);
        }
        if Instant::now() > deadline {
            let all: Vec<String> =
                api.objects(lab::kube_api::Kind::Event).iter().map(|e| e["message"].to_string()).collect();
            bail!("no TenancyChanged event on {ns}; events: {all:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The flow operations that take `before` to `after` (flows as
/// `flows_without_cookies` gives them): identities added or removed, and
/// identities whose actions changed (one modify each).
fn flow_ops(before: &[String], after: &[String]) -> usize {
    use std::collections::BTreeMap;
    let by_key = |v: &[String]| -> BTreeMap<String, String> {
        v.iter()
            .map(|f| {
                f.split_once(" actions=").map_or((f.clone(), String::new()), |(k, a)| (k.into(), a.into()))
            })
            .collect()
    };
    let (b, a) = (by_key(before), by_key(after));
    let changed = a.iter().filter(|(k, v)| b.get(*k) != Some(v)).count();
    changed + b.keys().filter(|k| !a.contains_key(*k)).count()
}

/// `k8s-ovs-ctl join --dry-run` writes nothing, and what it predicts is
/// what the join then does: the namespaces red newly reaches (and no
/// other reach changes, measured by ping before and after), and the flow
/// operations each node's switch gets (its flows read back before and
/// after).
#[test]
fn lab_cluster_a_dry_run_predicts_what_the_action_does() -> Result<()> {
    lab::needs_root!();
    let mut lab = Lab::start(2)?;
    let (_api, _controller, agents) = cluster(&lab, &["red", "blue", "green"])?;
    // red on both nodes, blue only on node 2, green only on node 1.
    let mut pods = Vec::new();
    for (node, ns, name) in
        [(1, "red", "red-1"), (2, "red", "red-2"), (2, "blue", "blue-2"), (1, "green", "green-1")]
    {
        pods.push(add_pod(&mut lab, &agents, node, ns, name)?);
    }
    let red_before = vni_of(&lab, "red")?;
    matrix_matches_etcd(&lab, &pods)?;
    // Whom red's first pod reaches, by namespace (ping).
    let reached = || -> Result<Vec<String>> {
        let mut out = Vec::new();
        for p in pods.iter().filter(|p| p.namespace != "red") {
            if traffic::ping_count(&pods[0].netns, &p.ip, 2, 1)? > 0 {
                out.push(p.namespace.clone());
            }
        }
        Ok(out)
    };
    let reach_before = reached()?;

    let (code, out, err) = ctl(&lab, &["join", "red", "--to", "blue", "--dry-run"])?;
    ensure!(code == Some(0), "dry run: {out} {err}");
    eprintln!("{out}");
    ensure!(
        vni_of(&lab, "red")? == red_before && record(&lab, "red")?["Action"] == "",
        "the dry run wrote etcd"
    );
    let line =
        |prefix: &str| out.lines().find_map(|l| l.strip_prefix(prefix)).unwrap_or_default().to_string();
    ensure!(line("newly reaches: ") == "blue", "{out}");
    ensure!(line("stops reaching: ") == "(none)", "{out}");
    let predicted: Vec<(String, usize)> = out
        .lines()
        .skip_while(|l| !l.starts_with("NODE"))
        .skip(1)
        .filter_map(|l| {
            let (ip, n) = l.split_once(' ')?;
            Some((ip.to_string(), n.trim().parse().ok()?))
        })
        .collect();
    ensure!(predicted.len() == 2, "a figure for each node: {out}");

    let flows_before =
        [lab::cluster::flows_without_cookies(&lab, 1)?, lab::cluster::flows_without_cookies(&lab, 2)?];
    let (code, o, e) = ctl(&lab, &["join", "red", "--to", "blue", "--wait"])?;
    ensure!(code == Some(0), "join: {o} {e}");
    lab::tenancy::wait_reach(&pods[0], &pods[2], true)?;
    matrix_matches_etcd(&lab, &pods)?;
    let reach_after = reached()?;
    let newly: Vec<&String> = reach_after.iter().filter(|n| !reach_before.contains(n)).collect();
    let lost: Vec<&String> = reach_before.iter().filter(|n| !reach_after.contains(n)).collect();
    ensure!(newly == ["blue"] && lost.is_empty(), "measured: newly {newly:?}, lost {lost:?}");
    for (i, before) in flows_before.iter().enumerate() {
        let node = i + 1;
        let after = lab::cluster::flows_without_cookies(&lab, node)?;
        let ip = lab.node(node).ip.clone();
        let want = predicted.iter().find(|(p, _)| *p == ip).map(|(_, n)| *n);
        let got = flow_ops(before, &after);
        eprintln!("node {node} ({ip}): predicted {want:?} flow operations, the join made {got}");
        ensure!(want == Some(got), "node {node}: predicted {want:?}, the switch changed {got}");
    }
    Ok(())
}

/// The value of the counter `name{labels}` in an agent's `/metrics` answer
/// (0 when the series is not there yet).
fn counter(metrics: &str, name: &str, labels: &str) -> u64 {
    let head = format!("{name}{{{labels}}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&head)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// Tenant traffic as the switches count it: a known volume red -> red
/// (across nodes), red -> global and refused red -> blue (for blue, and for
/// red's VNI as the sender), and forged packets from a red pod, appear in
/// the agents' metrics with the right counts (to the counters'
/// granularity: at least the pings, at most a few ARP packets more), and
/// `k8s-ovs-ctl top` shows the rates while it flows; then a NetworkPolicy's
/// refusals count for the isolated pods' namespace, in and out.
#[test]
fn lab_cluster_tenant_traffic_is_counted_per_namespace_and_shown_by_top() -> Result<()> {
    lab::needs_root!();
    let mut lab = Lab::start(2)?;
    let (api, _controller, agents) =
        cluster_with(&lab, &["red", "blue", "kube-system"], &["--traffic-stats-secs", "1"])?;
    let red1 = add_pod(&mut lab, &agents, 1, "red", "red-1")?;
    let red2 = add_pod(&mut lab, &agents, 2, "red", "red-2")?;
    let blue2 = add_pod(&mut lab, &agents, 2, "blue", "blue-2")?;
    let sys2 = add_pod(&mut lab, &agents, 2, "kube-system", "dns-2")?;
    let (red, blue) = (vni_of(&lab, "red")?, vni_of(&lab, "blue")?);
    ensure!(red != blue && vni_of(&lab, "kube-system")? == 0);
    // Warm up: the tunnel's underlay neighbour and the pods' ARP caches.
    lab::tenancy::wait_reach(&red1, &red2, true)?;
    lab::tenancy::wait_reach(&red1, &sys2, true)?;
    // red-1 knows blue-2's MAC (isolation drops its ARP too, so without it
    // red-1's kernel would send no IP packet at all): each ping is one
    // packet refused at blue's ISOLATION.
    let blue_mac = {
        let ip: std::net::Ipv4Addr = blue2.ip.parse()?;
        ovs_flows::Mac::for_ipv4(ip).to_string()
    };
    red1.netns.exec(&[
        "ip",
        "neigh",
        "replace",
        &blue2.ip,
        "lladdr",
        &blue_mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ])?;
    // A second address on red-1 that is not its own: what it sends from it
    // is forged, and dropped at its port.
    let forged = "192.0.2.99";
    red1.netns.exec(&["ip", "addr", "add", &format!("{forged}/32"), "dev", "eth0"])?;
    std::thread::sleep(Duration::from_secs(3));
    let metrics = |node: usize| lab::cluster::agent_http(&lab, node, "/metrics");
    let before = [metrics(1)?, metrics(2)?];

    const N: u64 = 20;
    const FORGED: u64 = 5;
    // ICMP echo of ping's default 56 bytes: 98-byte frames.
    const FRAME: u64 = 98;
    let replies = std::thread::scope(|s| {
        let own = s.spawn(|| traffic::ping_count(&red1.netns, &red2.ip, N as u32, 1));
        let global = s.spawn(|| traffic::ping_count(&red1.netns, &sys2.ip, N as u32, 1));
        let refused = s.spawn(|| traffic::ping_count(&red1.netns, &blue2.ip, N as u32, 1));
        let spoofed = s.spawn(|| {
            let c = FORGED.to_string();
            red1.netns.exec_full(
                &["ping", "-n", "-q", "-c", &c, "-i", "0.2", "-W", "1", "-I", forged, &red2.ip],
                Duration::from_secs(15),
            )
        });
        let join = |h: std::thread::ScopedJoinHandle<'_, Result<u32>>| {
            h.join().map_err(|_| anyhow::anyhow!("ping panicked"))?
        };
        let r = (join(own)?, join(global)?, join(refused)?);
        spoofed.join().map_err(|_| anyhow::anyhow!("ping panicked"))??;
        anyhow::Ok(r)
    })?;
    ensure!(replies == (N as u32, N as u32, 0), "ping replies (own VNI, global, refused): {replies:?}");

    let red_l = |dir: &str, peer: &str| {
        format!("namespace=\"red\",vni=\"{red}\",direction=\"{dir}\",peer=\"{peer}\"")
    };
    let sys_other =
        "namespace=\"kube-system\",vni=\"0\",direction=\"received\",peer=\"other_vni\"".to_string();
    let blue_refused = format!("namespace=\"blue\",vni=\"{blue}\"");
    let from_red = format!("vni=\"{red}\"");
    let spoof_l = "namespace=\"red\",pod=\"red-1\"".to_string();
    let pk = "k8s_ovs_namespace_packets_total";
    let by = "k8s_ovs_namespace_bytes_total";
    let rp = "k8s_ovs_namespace_refused_packets_total";
    let rb = "k8s_ovs_namespace_refused_bytes_total";
    let sp = "k8s_ovs_pod_spoofed_packets_total";
    // (what, node, family, labels, at least, at most): every echo request
    // and reply once where it is delivered or dropped; a few ARP packets
    // (42 bytes) more at most.
    let arp = 4;
    let checks: Vec<(&str, usize, &str, String, u64, u64)> = vec![
        ("red -> red delivered", 2, pk, red_l("received", "own_vni"), N, N + arp),
        ("red -> red bytes", 2, by, red_l("received", "own_vni"), N * FRAME, N * FRAME + arp * 42),
        ("red <- red replies", 1, pk, red_l("received", "own_vni"), N, N + arp),
        ("red -> global delivered", 2, pk, sys_other.clone(), N, N + arp),
        ("red <- global replies", 1, pk, red_l("received", "global"), N, N + arp),
        ("red -> blue refused", 2, rp, blue_refused.clone(), N, N + 1),
        ("red -> blue refused bytes", 2, rb, blue_refused.clone(), N * FRAME, N * FRAME + 42),
        (
            "red -> blue refused, by red's VNI",
            2,
            "k8s_ovs_vni_refused_packets_total",
            from_red.clone(),
            N,
            N + 1,
        ),
        (
            "red's VNI refused bytes",
            2,
            "k8s_ovs_vni_refused_bytes_total",
            from_red,
            N * FRAME,
            N * FRAME + 42,
        ),
        ("red sent (3 streams)", 1, pk, red_l("sent", "any"), 3 * N, 3 * N + 3 * arp),
        ("red-1 forged", 1, sp, spoof_l.clone(), FORGED, FORGED + 3),
    ];
    check_counters(&before, &checks, || Ok([metrics(1)?, metrics(2)?]))?;

    // `k8s-ovs-ctl top` over 3 s while red talks to red and to blue.
    let (top, pinged) = std::thread::scope(|s| {
        let a = s.spawn(|| traffic::ping_count(&red1.netns, &red2.ip, 25, 1));
        let b = s.spawn(|| traffic::ping_count(&red1.netns, &blue2.ip, 25, 1));
        std::thread::sleep(Duration::from_millis(500));
        let top = ctl(&lab, &["top", "--interval-secs", "3"]);
        let pinged = (a.join().ok(), b.join().ok());
        (top, pinged)
    });
    let (code, out, err) = top?;
    eprintln!("{out}");
    ensure!(code == Some(0), "top: {out} {err}");
    ensure!(matches!(pinged, (Some(Ok(25)), Some(Ok(0)))), "pings during top: {pinged:?}");
    let column = |ns: &str, col: usize| -> Option<f64> {
        let line = out.lines().find(|l| l.split_whitespace().next() == Some(ns))?;
        line.split_whitespace().nth(col)?.trim_end_matches(['k', 'M', 'G']).parse().ok()
    };
    // 5 pings a second to red-2 and 5 to blue-2: red sends 15/s (10 from
    // red-1, 5 replies from red-2) and receives 10/s (5 each side); blue
    // refuses 5/s. The counters move once a second: roughly.
    let sent = column("red", 1).unwrap_or(0.0);
    let received = column("red", 3).unwrap_or(0.0);
    let refused = column("blue", 6).unwrap_or(0.0);
    let refused_out = column("red", 7).unwrap_or(0.0);
    ensure!((9.0..=21.0).contains(&sent), "red SENT-PPS {sent}: {out}");
    ensure!((6.0..=14.0).contains(&received), "red RECV-PPS {received}: {out}");
    ensure!((3.0..=8.0).contains(&refused), "blue REFUSED-IN-PPS {refused}: {out}");
    ensure!((3.0..=8.0).contains(&refused_out), "red REFUSED-OUT-PPS {refused_out}: {out}");
    ensure!(out.contains("2 of 2 nodes"), "{out}");

    // A NetworkPolicy isolating red's pods both ways (it selects them all):
    // red-1's pings to red-2 are refused by its egress on node 1, the DNS
    // pod's to red-2 by red-2's ingress on node 2.
    api.create(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny-all", "namespace": "red"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    }))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while ![metrics(1)?, metrics(2)?].iter().all(|m| m.contains("\nk8s_ovs_network_policies 1\n")) {
        ensure!(Instant::now() < deadline, "the agents did not take the NetworkPolicy");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Past the next counter read, so its growth is all this phase's.
    std::thread::sleep(Duration::from_millis(1500));
    let before = [metrics(1)?, metrics(2)?];
    let replies = std::thread::scope(|s| {
        let out = s.spawn(|| traffic::ping_count(&red1.netns, &red2.ip, N as u32, 1));
        let into = s.spawn(|| traffic::ping_count(&sys2.netns, &red2.ip, N as u32, 1));
        let join = |h: std::thread::ScopedJoinHandle<'_, Result<u32>>| {
            h.join().map_err(|_| anyhow::anyhow!("ping panicked"))?
        };
        anyhow::Ok((join(out)?, join(into)?))
    })?;
    ensure!(replies == (0, 0), "pings through a deny-all policy answered: {replies:?}");
    let red_policy = |dir: &str| format!("namespace=\"red\",vni=\"{red}\",direction=\"{dir}\"");
    let pp = "k8s_ovs_namespace_policy_refused_packets_total";
    let checks: Vec<(&str, usize, &str, String, u64, u64)> = vec![
        ("red-1 -> red-2 refused by red-1's egress", 1, pp, red_policy("sent"), N, N + 1),
        ("dns-2 -> red-2 refused by red-2's ingress", 2, pp, red_policy("received"), N, N + 1),
        ("nothing refused out on node 2", 2, pp, red_policy("sent"), 0, 0),
        ("nothing refused in on node 1", 1, pp, red_policy("received"), 0, 0),
    ];
    check_counters(&before, &checks, || Ok([metrics(1)?, metrics(2)?]))
}

/// Waits until every counter of `checks` (what, node, family, labels, at
/// least, at most) grew from `before` by at least its least, one period or
/// two more, then fails naming each that is out of its range.
fn check_counters(
    before: &[String; 2],
    checks: &[(&str, usize, &str, String, u64, u64)],
    read: impl Fn() -> Result<[String; 2]>,
) -> Result<()> {
    let grown = |after: &[String; 2]| -> Vec<u64> {
        checks
            .iter()
            .map(|(_, node, name, labels, _, _)| {
                counter(&after[node - 1], name, labels).saturating_sub(counter(
                    &before[node - 1],
                    name,
                    labels,
                ))
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let deltas = loop {
        let d = grown(&read()?);
        if d.iter().zip(checks).all(|(v, c)| *v >= c.4) || Instant::now() > deadline {
            // One more period or two, so a late count would show as too many.
            std::thread::sleep(Duration::from_millis(2500));
            break grown(&read()?);
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let mut wrong = Vec::new();
    for ((what, node, name, labels, lo, hi), got) in checks.iter().zip(&deltas) {
        eprintln!("{what}: n{node} {name}{{{labels}}} +{got} (expected {lo}..={hi})");
        if got < lo || got > hi {
            wrong.push(format!("{what}: +{got}, expected {lo}..={hi}"));
        }
    }
    ensure!(wrong.is_empty(), "counters off:\n{}", wrong.join("\n"));
    Ok(())
}
