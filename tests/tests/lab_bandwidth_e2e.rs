//! Pod bandwidth end to end on the lab: annotations read by the agent (pod
//! watch on the test apiserver), shaping installed at ADD through the CNI
//! binary, changed live, removed live, gone after DEL; rates measured with
//! iperf3 (first second omitted). The lab runs the userspace datapath:
//! ingress is a tbf on the host veth, egress an OpenFlow meter in the switch
//! (named after the pod's ofport), and a pod that deletes every qdisc it can
//! see stays at its limit.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use lab::cluster::{cni, start_kube_api, Agent, CniCall};
use lab::kube_api::{Kind, KubeApi};
use lab::{traffic, Lab, Netns};
use serde_json::json;

fn pod_object(name: &str, annotations: serde_json::Value) -> serde_json::Value {
    json!({"kind": "Pod", "apiVersion": "v1",
           "metadata": {"name": name, "namespace": "shop", "annotations": annotations},
           "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x"}]}})
}

fn add(lab: &mut Lab, name: &str) -> Result<(Netns, String, lab::cluster::CniOutput)> {
    let netns = lab.pod_netns(name)?;
    let out = cni(lab, 1, "ADD", &CniCall::pod(&format!("cid-{name}"), &netns, "shop", name))?;
    let ip = out.stdout["ips"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    Ok((netns, ip, out))
}

/// One lab node with the test apiserver, multi-tenant, namespace `shop` at VNI 100.
fn one_node() -> Result<(Lab, KubeApi, String)> {
    let lab = Lab::start(1)?;
    let api: KubeApi = start_kube_api(&lab)?;
    lab.put_network_config("k8s-ovs-multitenant")?;
    lab.put_node_subnet(1)?;
    lab.put_netnamespace("shop", 100)?;
    let url = api.url();
    Ok((lab, api, url))
}

/// Waits until `read()`'s text shows (or stops showing) `want`.
fn wait_shows(what: &str, want: &str, present: bool, read: impl Fn() -> Result<String>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = read()?;
        if text.contains(want) == present {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{what}: waiting for {want:?} present={present}: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the agent's shaping of `dev` (in `ns`) shows `want` in `tc qdisc show`.
fn wait_qdisc(ns: &Netns, dev: &str, want: &str, present: bool) -> Result<()> {
    wait_shows(dev, want, present, || ns.exec(&["tc", "qdisc", "show", "dev", dev]))
}

/// `ovs-ofctl dump-meters` on node 1's br0.
fn meters(lab: &Lab) -> Result<String> {
    lab.node(1).ovs.ofctl("dump-meters", "br0", &[])
}

/// Waits until node 1's meters show (or stop showing) `want`.
fn wait_meter(lab: &Lab, want: &str, present: bool) -> Result<()> {
    wait_shows("meters", want, present, || meters(lab))
}

fn within(measured: f64, want: f64, tolerance: f64) -> bool {
    (measured - want).abs() <= want * tolerance
}

#[test]
fn lab_bandwidth_annotations_shape_pods_live() -> Result<()> {
    lab::needs_root!();
    let (mut lab, api, url) = one_node()?;
    // A resync every second: it repairs a meter deleted behind its back.
    let agent = Agent::start(&lab, 1, &["--kube-url", &url, "--flow-resync-secs", "1"])?;

    // An invalid value fails the ADD with an error naming pod, annotation and value.
    api.create(pod_object("bad", json!({"kubernetes.io/ingress-bandwidth": "-5M"})))?;
    let (_, _, out) = add(&mut lab, "bad")?;
    ensure!(out.code == Some(1) && out.stdout["code"] == 101, "bad annotation: {}", out.stdout);
    let msg = out.stdout["msg"].as_str().unwrap_or_default();
    ensure!(
        msg.contains("shop/bad") && msg.contains("kubernetes.io/ingress-bandwidth") && msg.contains("-5M"),
        "{msg}"
    );

    api.create(pod_object(
        "shaped",
        json!({"kubernetes.io/ingress-bandwidth": "10M", "kubernetes.io/egress-bandwidth": "5M"}),
    ))?;
    api.create(pod_object("free", json!({})))?;
    api.create(pod_object("peer", json!({})))?;
    let (shaped, shaped_ip, out) = add(&mut lab, "shaped")?;
    ensure!(out.code == Some(0), "ADD shaped: {} {}", out.stdout, agent.log_tail());
    let (free, free_ip, _) = add(&mut lab, "free")?;
    let (peer, peer_ip, _) = add(&mut lab, "peer")?;
    ensure!(traffic::reachable(&peer, &shaped_ip, Duration::from_secs(5))?);

    let to_shaped = traffic::iperf3(&shaped, &shaped_ip, &peer, 4, false)?; // pod ingress
    let from_shaped = traffic::iperf3(&peer, &peer_ip, &shaped, 4, false)?; // pod egress
    let to_free = traffic::iperf3(&free, &free_ip, &peer, 4, false)?;
    eprintln!("ingress 10M: {to_shaped:.2} Mbit/s, egress 5M: {from_shaped:.2}, unshaped: {to_free:.2}");
    ensure!(within(to_shaped, 10.0, 0.15), "ingress 10M measured {to_shaped:.2}");
    ensure!(within(from_shaped, 5.0, 0.15), "egress 5M measured {from_shaped:.2}");
    ensure!(to_free >= 5.0 * to_shaped, "unshaped {to_free:.2} not 5x faster than {to_shaped:.2}");
    // Egress is the switch's meter (5000 kbit/s, its bucket 250 ms at the
    // rate), nothing inside the pod.
    ensure!(meters(&lab)?.contains("rate=5000 burst_size=1250"), "{}", meters(&lab)?);
    ensure!(!shaped.exec(&["tc", "qdisc", "show", "dev", "eth0"])?.contains("tbf"), "a qdisc inside the pod");

    // CHECK confirms the installed qdiscs match.
    let mut check = CniCall::pod("cid-shaped", &shaped, "shop", "shaped");
    let mut conf = lab.cni_conf(1);
    conf["prevResult"] = out.stdout.clone();
    check.conf = Some(conf);
    ensure!(cni(&lab, 1, "CHECK", &check)?.code == Some(0), "CHECK of the shaped pod");
    let hv = out.stdout["interfaces"][0]["name"].as_str().unwrap_or_default().to_string();
    // ... and notices when the meter was deleted behind the agent's back (the switch
    // drops the flows that named it too); the resync puts both back.
    let ofport = lab.node(1).ovs.vsctl(&["get", "Interface", &hv, "ofport"])?.trim().to_string();
    lab.node(1).ovs.ofctl("del-meter", "br0", &[&format!("meter={ofport}")])?;
    let r = cni(&lab, 1, "CHECK", &check)?;
    let details = r.stdout["details"].as_str().unwrap_or_default().to_string();
    ensure!(
        r.code == Some(1) && details.contains("gone from the switch"),
        "CHECK after del-meter: {}",
        r.stdout
    );
    wait_meter(&lab, &format!("meter={ofport} "), true)?;
    ensure!(cni(&lab, 1, "CHECK", &check)?.code == Some(0), "CHECK after the resync");
    lab.node(1).netns.exec(&["tc", "qdisc", "del", "dev", &hv, "root"])?;
    let r = cni(&lab, 1, "CHECK", &check)?;
    ensure!(r.code == Some(1), "CHECK after the tbf was removed by hand: {}", r.stdout);

    // Live change 10M -> 20M: the running pod is reshaped, not recreated.
    let host_veth = out.stdout["interfaces"][0]["name"].as_str().unwrap_or_default().to_string();
    api.update(pod_object(
        "shaped",
        json!({"kubernetes.io/ingress-bandwidth": "20M", "kubernetes.io/egress-bandwidth": "8M"}),
    ))?;
    wait_qdisc(&lab.node(1).netns, &host_veth, "rate 20Mbit", true)?;
    wait_meter(&lab, "rate=8000 burst_size=2000", true)?;
    let to_shaped_20 = traffic::iperf3(&shaped, &shaped_ip, &peer, 4, false)?;
    eprintln!("ingress after the live change to 20M: {to_shaped_20:.2} Mbit/s");
    ensure!(within(to_shaped_20, 20.0, 0.15), "ingress 20M measured {to_shaped_20:.2}");

    // An invalid new value keeps the previous shaping.
    api.update(pod_object(
        "shaped",
        json!({"kubernetes.io/ingress-bandwidth": "abc", "kubernetes.io/egress-bandwidth": "5M"}),
    ))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab::cluster::agent_http(&lab, 1, "/metrics")?.contains("k8s_ovs_bandwidth_errors_total 1") {
        ensure!(Instant::now() < deadline, "the invalid value was not reported");
        std::thread::sleep(Duration::from_millis(50));
    }
    ensure!(lab.node(1).netns.exec(&["tc", "qdisc", "show", "dev", &host_veth])?.contains("rate 20Mbit"));
    ensure!(meters(&lab)?.contains("rate=8000"), "the egress meter changed: {}", meters(&lab)?);
    // ...and tells the pod's owner: a Warning Event on this pod (kubectl describe pod).
    let events = || api.objects(Kind::Event);
    while events().is_empty() {
        ensure!(Instant::now() < deadline, "no Event posted for the invalid value");
        std::thread::sleep(Duration::from_millis(50));
    }
    let uid = api.get(Kind::Pod, Some("shop"), "shaped").map(|p| p["metadata"]["uid"].clone());
    let e = &events()[0];
    ensure!(e["type"] == "Warning" && e["reason"] == "InvalidBandwidth", "{e}");
    ensure!(e["involvedObject"]["kind"] == "Pod" && e["involvedObject"]["name"] == "shaped", "{e}");
    ensure!(Some(&e["involvedObject"]["uid"]) == uid.as_ref(), "the Event is not tied to the pod's uid: {e}");
    let msg = e["message"].as_str().unwrap_or_default();
    ensure!(msg.contains("kubernetes.io/ingress-bandwidth") && msg.contains("abc"), "{msg}");
    ensure!(e["source"]["host"] == "n1" && e["metadata"]["namespace"] == "shop", "{e}");
    // Another pod's change re-runs the shaping pass: the warning is not repeated.
    api.update(pod_object("free", json!({"kubernetes.io/ingress-bandwidth": "50M"})))?;
    std::thread::sleep(Duration::from_millis(1500));
    ensure!(events().len() == 1, "the warning was repeated: {:?}", events());
    ensure!(lab::cluster::agent_http(&lab, 1, "/metrics")?.contains("k8s_ovs_bandwidth_errors_total 1"));

    // Removing the annotations restores full speed.
    api.update(pod_object("shaped", json!({})))?;
    wait_qdisc(&lab.node(1).netns, &host_veth, "tbf", false)?;
    wait_meter(&lab, "meter=", false)?;
    let unshaped_again = traffic::iperf3(&shaped, &shaped_ip, &peer, 4, false)?;
    eprintln!("after removing the annotations: {unshaped_again:.2} Mbit/s");
    ensure!(unshaped_again >= 5.0 * 10.0, "full speed back: {unshaped_again:.2}");

    // Shaped again, then DEL: no qdisc or ifb remains.
    api.update(pod_object(
        "shaped",
        json!({"kubernetes.io/ingress-bandwidth": "10M", "kubernetes.io/egress-bandwidth": "5M"}),
    ))?;
    wait_qdisc(&lab.node(1).netns, &host_veth, "tbf", true)?;
    wait_meter(&lab, "rate=5000", true)?;
    ensure!(cni(&lab, 1, "DEL", &CniCall::pod("cid-shaped", &shaped, "shop", "shaped"))?.code == Some(0));
    let links = lab.node(1).netns.exec(&["ip", "-o", "link"])?;
    ensure!(!links.contains(&host_veth) && !links.contains("ifb"), "left after DEL: {links}");
    ensure!(!meters(&lab)?.contains("meter="), "a meter left after DEL: {}", meters(&lab)?);
    ensure!(!shaped.exec(&["tc", "qdisc", "show", "dev", "lo"])?.contains("tbf"));
    let pod_links = shaped.exec(&["ip", "-o", "link"])?;
    ensure!(!pod_links.contains("eth0"), "pod eth0 left: {pod_links}");
    Ok(())
}

/// A hostile tenant with CAP_NET_ADMIN in its own namespace (root there, as
/// the test is) deletes every qdisc it can see, on every interface, both
/// hooks, and still sends at its egress limit: the limit is a meter in
/// ovs-vswitchd, not a qdisc the pod owns. (It failed before the meter: the
/// in-pod tbf went, and the pod sent at full speed.)
#[test]
fn lab_hostile_a_pod_with_net_admin_cannot_lift_its_egress_limit() -> Result<()> {
    lab::needs_root!();
    let (mut lab, api, url) = one_node()?;
    let mut agent = Agent::start(&lab, 1, &["--kube-url", &url])?;
    api.create(pod_object("capped", json!({"kubernetes.io/egress-bandwidth": "5M"})))?;
    api.create(pod_object("peer", json!({})))?;
    let (capped, capped_ip, out) = add(&mut lab, "capped")?;
    ensure!(out.code == Some(0), "ADD capped: {} {}", out.stdout, agent.log_tail());
    let (peer, peer_ip, _) = add(&mut lab, "peer")?;
    let before = traffic::iperf3(&peer, &peer_ip, &capped, 4, false)?;

    // Every qdisc the pod sees, root and ingress, on every interface.
    let links = capped.exec(&["ip", "-o", "link", "show"])?;
    let mut deleted = 0;
    for dev in links.lines().filter_map(|l| l.split(": ").nth(1)).map(|d| d.split('@').next().unwrap_or(d)) {
        for hook in ["root", "ingress"] {
            deleted += u32::from(capped.exec(&["tc", "qdisc", "del", "dev", dev, hook]).is_ok());
        }
    }
    let left = capped.exec(&["tc", "qdisc", "show"])?;
    ensure!(!left.contains("tbf") && !left.contains("htb"), "a shaping qdisc survived: {left}");
    let after = traffic::iperf3(&peer, &peer_ip, &capped, 4, false)?;
    eprintln!("egress 5M: {before:.2} Mbit/s; after the pod deleted {deleted} qdiscs: {after:.2}");
    ensure!(within(before, 5.0, 0.15), "egress 5M measured {before:.2}");
    ensure!(
        within(after, 5.0, 0.15),
        "the pod lifted its limit: {after:.2} Mbit/s after deleting its qdiscs"
    );

    // The limit outlives the agent (the restarted agent reads it back from
    // the meter and leaves it as it is) and ovs-vswitchd (whose meters are
    // gone after a restart: the agent adds them before replaying the flows
    // that name them, or the switch would refuse the bundle).
    let held = meters(&lab)?;
    agent.stop();
    let mut agent = Agent::start(&lab, 1, &["--kube-url", &url])?;
    std::thread::sleep(Duration::from_secs(1));
    ensure!(meters(&lab)? == held, "the meter changed across an agent restart: {held} -> {}", meters(&lab)?);
    lab.node(1).ovs.restart_vswitchd()?;
    ensure!(traffic::reachable(&peer, &capped_ip, Duration::from_secs(15))?, "capped after vswitchd restart");
    let replayed = traffic::iperf3(&peer, &peer_ip, &capped, 4, false)?;
    eprintln!("after agent and ovs-vswitchd restarts: {replayed:.2} Mbit/s; {}", meters(&lab)?.trim());
    ensure!(within(replayed, 5.0, 0.15), "after the restarts: {replayed:.2} Mbit/s");
    agent.stop();
    Ok(())
}

/// ovs-vswitchd resets a new port's qdiscs while it takes the port, after it
/// reports the port on OpenFlow: the ingress tbf of a shaped pod must go on
/// after that, so it is there when the ADD returns and stays there. Many
/// pods, back to back, on a bridge that grows (its reconfiguration takes
/// longer with each port): a tbf put on too early is lost for some of them.
#[test]
fn lab_bandwidth_shaping_is_in_place_when_add_returns() -> Result<()> {
    lab::needs_root!();
    let (mut lab, _api, _url) = one_node()?;
    let _agent = Agent::start(&lab, 1, &["--no-kube"])?;
    let mut shaped = Vec::new();
    for i in 0..24 {
        let name = format!("s{i}");
        let netns = lab.pod_netns(&name)?;
        let mut call = CniCall::pod(&format!("cid-{name}"), &netns, "shop", &name);
        let mut conf = lab.cni_conf(1);
        conf["runtimeConfig"] = json!({"bandwidth": {"ingressRate": 10_000_000, "ingressBurst": 100_000}});
        call.conf = Some(conf);
        let out = cni(&lab, 1, "ADD", &call)?;
        ensure!(out.code == Some(0), "ADD {name}: {}", out.stdout);
        let hv = out.stdout["interfaces"][0]["name"].as_str().unwrap_or_default().to_string();
        let qdisc = lab.node(1).netns.exec(&["tc", "qdisc", "show", "dev", &hv])?;
        ensure!(qdisc.contains("tbf"), "{name}: no tbf on {hv} when the ADD returned: {qdisc}");
        shaped.push((name, hv, netns, call));
    }
    // Whatever ovs-vswitchd still had to do for the last ports is done by now.
    std::thread::sleep(Duration::from_secs(1));
    for (name, hv, _, call) in &shaped {
        let qdisc = lab.node(1).netns.exec(&["tc", "qdisc", "show", "dev", hv])?;
        ensure!(qdisc.contains("tbf"), "{name}: the tbf on {hv} went away: {qdisc}");
        ensure!(cni(&lab, 1, "DEL", call)?.code == Some(0), "DEL {name}");
    }
    Ok(())
}
