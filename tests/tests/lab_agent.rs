//! The node agent and the CNI plugin on a two-node lab: real OVS, etcd and
//! namespaces; the etcd records are written the way the controller (or an
//! operator with etcdctl) writes them; pods are created by exec'ing the CNI
//! binary exactly as a runtime does.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use lab::cluster::{
    add_pod, cni, flows_without_cookies, node_subnet, upstream, Agent, CniCall, CniPod, Daemon,
};
use lab::{traffic, Lab, LabConfig, Netns};

fn start_cluster(plugin: &str, vnis: &[(&str, u32)]) -> Result<(Lab, Vec<Agent>)> {
    start_cluster_with(plugin, vnis, &[])
}

/// `start_cluster` with extra agent flags.
fn start_cluster_with(plugin: &str, vnis: &[(&str, u32)], flags: &[&str]) -> Result<(Lab, Vec<Agent>)> {
    let lab = Lab::start(2)?;
    lab.put_network_config(plugin)?;
    for i in 1..=2 {
        lab.put_node_subnet(i)?;
    }
    for (ns, vni) in vnis {
        lab.put_netnamespace(ns, *vni)?;
    }
    let flags = [&["--no-kube"][..], flags].concat();
    let agents = (1..=2).map(|i| Agent::start(&lab, i, &flags)).collect::<Result<Vec<_>>>()?;
    Ok((lab, agents))
}

/// All-pairs reachability, measured in parallel.
fn matrix(pods: &[CniPod]) -> Result<BTreeMap<(String, String), bool>> {
    let mut m = BTreeMap::new();
    std::thread::scope(|s| -> Result<()> {
        let mut hs = Vec::new();
        for a in pods {
            for b in pods.iter().filter(|b| b.name != a.name) {
                hs.push((
                    (a.name.clone(), b.name.clone()),
                    s.spawn(|| traffic::ping_count(&a.netns, &b.ip, 3, 1)),
                ));
            }
        }
        for (k, h) in hs {
            m.insert(k, h.join().expect("ping thread")? > 0);
        }
        Ok(())
    })?;
    Ok(m)
}

fn check_policy(pods: &[CniPod], vni: &BTreeMap<&str, u32>) -> Result<()> {
    let measured = matrix(pods)?;
    let mut wrong = Vec::new();
    let mut late = Vec::new();
    for a in pods {
        for b in pods.iter().filter(|b| b.name != a.name) {
            let (va, vb) = (vni[a.namespace.as_str()], vni[b.namespace.as_str()]);
            let allowed = va == vb || va == 0 || vb == 0;
            let got = measured[&(a.name.clone(), b.name.clone())];
            if allowed && !got {
                late.push((a, b));
            } else if got != allowed {
                wrong.push(format!("{}({va}) -> {}({vb}): policy {allowed}, measured {got}", a.name, b.name));
            }
        }
    }
    // Allowed pairs that missed the first round get the pods' ARP retry.
    let pairs: Vec<(&Netns, &str)> = late.iter().map(|(a, b)| (&a.netns, b.ip.as_str())).collect();
    for ((a, b), took) in late.iter().zip(traffic::retry_reach(&pairs, Duration::from_secs(5))?) {
        if took.is_none() {
            wrong.push(format!("{} -> {}: policy allows, never reached", a.name, b.name));
        }
    }
    ensure!(wrong.is_empty(), "reachability differs from the policy:\n{}", wrong.join("\n"));
    Ok(())
}

#[test]
fn lab_agent_wires_pods_and_follows_vni_changes() -> Result<()> {
    lab::needs_root!();
    let vnis = [("red", 100), ("blue", 200), ("glob", 0)];
    let (mut lab, agents) = start_cluster("k8s-ovs-multitenant", &vnis)?;
    let mut pods = Vec::new();
    for node in 1..=2 {
        for (ns, _) in vnis {
            pods.push(add_pod(&mut lab, node, ns, &format!("{ns}{node}"))?);
        }
    }
    for p in &pods {
        let subnet = node_subnet(p.node);
        let base = subnet.rsplit_once('.').map(|(b, _)| b).unwrap_or_default();
        let third: u32 = base.rsplit('.').next().and_then(|t| t.parse().ok()).unwrap_or(0);
        let pod_third: u32 = p.ip.split('.').nth(2).and_then(|t| t.parse().ok()).unwrap_or(999);
        ensure!((third..third + 4).contains(&pod_third), "{} got {} outside {subnet}", p.name, p.ip);
    }
    let mut policy: BTreeMap<&str, u32> = vnis.into_iter().collect();
    check_policy(&pods, &policy)?;

    // The controller joins red into blue: red's record takes blue's NetID.
    let t = Instant::now();
    lab.put_netnamespace("red", 200)?;
    let took = traffic::time_until(&pods[0].netns, &pods[4].ip, true, t, Duration::from_secs(1))?;
    ensure!(took.is_some(), "red1 -> blue2 not reachable within 1 s of the join");
    eprintln!("join observed after {took:?}");
    policy.insert("red", 200);
    check_policy(&pods, &policy)?;

    // The agent's metrics and health.
    let metrics = lab::cluster::agent_http(&lab, 1, "/metrics")?;
    ensure!(metrics.contains("k8s_ovs_pods 3"), "metrics: {metrics}");
    ensure!(metrics.contains("k8s_ovs_cni_add_seconds_count 3"), "metrics: {metrics}");
    ensure!(metrics.lines().any(|l| l.starts_with("k8s_ovs_bundle_flows_count ")), "metrics: {metrics}");
    ensure!(lab::cluster::agent_http(&lab, 1, "/healthz")?.starts_with("HTTP/1.1 200"), "healthz");

    // Repeated ADD returns the same address; DEL is idempotent.
    let again = cni(&lab, 1, "ADD", &CniCall::pod(&pods[0].cid, &pods[0].netns, "red", &pods[0].name))?;
    ensure!(again.code == Some(0), "repeated ADD: {}", again.stdout);
    ensure!(again.stdout["ips"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .starts_with(&format!("{}/", pods[0].ip)));
    for p in &pods {
        for _ in 0..2 {
            let out = cni(&lab, p.node, "DEL", &CniCall::pod(&p.cid, &p.netns, &p.namespace, &p.name))?;
            ensure!(out.code == Some(0), "DEL {}: {} {}", p.name, out.stdout, out.stderr);
        }
    }
    for i in 1..=2 {
        let ports = lab.node(i).ovs.vsctl(&["list-ports", "br0"])?;
        ensure!(
            ports.split_whitespace().collect::<Vec<_>>() == ["tun0", "vxlan0"],
            "node {i} ports left: {ports}"
        );
    }
    drop(agents);
    Ok(())
}

#[test]
fn lab_agent_single_tenant_all_pairs_connect() -> Result<()> {
    lab::needs_root!();
    let vnis = [("red", 100), ("blue", 200)];
    let (mut lab, _agents) = start_cluster("k8s-ovs-subnet", &vnis)?;
    let mut pods = Vec::new();
    for node in 1..=2 {
        for (ns, _) in vnis {
            pods.push(add_pod(&mut lab, node, ns, &format!("{ns}{node}"))?);
        }
    }
    // Single-tenant: every namespace is one network, whatever its NetID.
    let measured = matrix(&pods)?;
    let refused: Vec<_> = measured.iter().filter(|(_, ok)| !**ok).map(|(k, _)| k).collect();
    ensure!(refused.is_empty(), "pairs that did not connect: {refused:?}");
    Ok(())
}

fn ip_of(p: &CniPod) -> std::net::Ipv4Addr {
    p.ip.parse().expect("pod ip")
}

#[test]
fn lab_agent_drops_spoofed_ip_mac_and_arp() -> Result<()> {
    lab::needs_root!();
    let (mut lab, _agents) = start_cluster("k8s-ovs-multitenant", &[("red", 100)])?;
    let a = add_pod(&mut lab, 1, "red", "a")?;
    let b = add_pod(&mut lab, 1, "red", "b")?;
    let c = add_pod(&mut lab, 2, "red", "c")?;
    ensure!(traffic::reachable(&a.netns, &c.ip, Duration::from_secs(5))?, "a -> c before spoofing");
    ensure!(traffic::reachable(&b.netns, &c.ip, Duration::from_secs(5))?, "b -> c before spoofing");

    // Forged ARP: a claims c's address with its own MAC (gratuitous reply).
    let c_mac_at_b = |lab: &Lab| -> Result<String> {
        let _ = lab;
        Ok(b.netns.exec(&["ip", "neigh", "show", &c.ip])?.trim().to_string())
    };
    let before = c_mac_at_b(&lab)?;
    a.netns.ip(&["addr", "add", &format!("{}/32", c.ip), "dev", "eth0"])?;
    let _ = a
        .netns
        .exec_full(&["arping", "-U", "-c", "3", "-I", "eth0", "-s", &c.ip, &c.ip], Duration::from_secs(10))?;
    let after = c_mac_at_b(&lab)?;
    ensure!(
        before.split_whitespace().nth(2) == after.split_whitespace().nth(2),
        "b's entry for c changed: {before} -> {after}"
    );
    ensure!(traffic::reachable(&b.netns, &c.ip, Duration::from_secs(2))?, "b -> c after forged ARP");
    a.netns.ip(&["addr", "del", &format!("{}/32", c.ip), "dev", "eth0"])?;

    // A changed IP reaches nobody.
    let new_ip = std::net::Ipv4Addr::from(u32::from(ip_of(&a)) + 100);
    a.netns.ip(&["addr", "flush", "dev", "eth0"])?;
    a.netns.ip(&["addr", "add", &format!("{new_ip}/16"), "dev", "eth0"])?;
    a.netns.ip(&["route", "add", "default", "via", "172.11.0.1"])?;
    ensure!(traffic::unreachable(&a.netns, &b.ip, 3)?, "a with a new IP must not reach b");
    ensure!(traffic::unreachable(&a.netns, &c.ip, 3)?, "a with a new IP must not reach c");
    // A changed MAC (original IP back) reaches nobody either.
    a.netns.ip(&["addr", "flush", "dev", "eth0"])?;
    a.netns.ip(&["addr", "add", &format!("{}/16", a.ip), "dev", "eth0"])?;
    a.netns.ip(&["link", "set", "eth0", "address", "0a:58:de:ad:be:ef"])?;
    ensure!(traffic::unreachable(&a.netns, &b.ip, 3)?, "a with a new MAC must not reach b");
    ensure!(traffic::unreachable(&a.netns, &c.ip, 3)?, "a with a new MAC must not reach c");
    Ok(())
}

/// Pings at 100/s from `from` to `ip` in the background; returns (sent, received).
fn ping_during(from: &Netns, ip: &str, secs: u32, during: impl FnOnce() -> Result<()>) -> Result<(u32, u32)> {
    let count = (secs * 100).to_string();
    let argv = from.wrap(&["ping", "-n", "-q", "-i", "0.01", "-c", &count, "-W", "1", ip]);
    let child =
        std::process::Command::new(argv[0]).args(&argv[1..]).stdout(std::process::Stdio::piped()).spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    let r = during();
    let out = child.wait_with_output()?;
    r?;
    let s = String::from_utf8_lossy(&out.stdout);
    let line = s.lines().find(|l| l.contains("packets transmitted")).unwrap_or_default().to_string();
    let nums: Vec<u32> = line.split(',').filter_map(|p| p.split_whitespace().next()?.parse().ok()).collect();
    ensure!(nums.len() >= 2, "ping summary: {s}");
    Ok((nums[0], nums[1]))
}

#[test]
fn lab_agent_restart_loses_no_packet_and_keeps_the_flows() -> Result<()> {
    lab::needs_root!();
    let (mut lab, mut agents) = start_cluster("k8s-ovs-multitenant", &[("red", 100)])?;
    let a = add_pod(&mut lab, 1, "red", "a")?;
    let c = add_pod(&mut lab, 2, "red", "c")?;
    ensure!(traffic::reachable(&a.netns, &c.ip, Duration::from_secs(5))?);
    let before = flows_without_cookies(&lab, 1)?;
    let (sent, received) = ping_during(&a.netns, &c.ip, 6, || {
        agents[0].stop();
        agents[0] = Agent::start(&lab, 1, &["--no-kube"])?;
        // And once more, killed outright this time.
        agents[0].kill();
        agents[0] = Agent::start(&lab, 1, &["--no-kube"])?;
        Ok(())
    })?;
    ensure!(sent == received, "lost {} of {sent} packets across agent restarts", sent - received);
    let after = flows_without_cookies(&lab, 1)?;
    ensure!(before == after, "flows changed across the restart:\nbefore {before:#?}\nafter {after:#?}");
    // Every flow is of the newest round: the old rounds' flows were replaced.
    let dump = lab.node(1).ovs.ofctl("dump-flows", "br0", &["--no-stats"])?;
    let rounds: std::collections::BTreeSet<u64> = dump
        .lines()
        .filter_map(|l| l.trim().strip_prefix("cookie=0x")?.split(',').next())
        .filter_map(|hex| u64::from_str_radix(hex, 16).ok())
        .map(|cookie| cookie >> 48)
        .collect();
    ensure!(rounds.len() == 1, "flows of several rounds: {rounds:?}");
    // The restarted agent still serves the adopted pod: DEL works.
    let out = cni(&lab, 1, "DEL", &CniCall::pod(&a.cid, &a.netns, "red", "a"))?;
    ensure!(out.code == Some(0), "DEL after restart: {}", out.stdout);
    Ok(())
}

#[test]
fn lab_agent_replays_flows_when_vswitchd_restarts() -> Result<()> {
    lab::needs_root!();
    let (mut lab, _agents) = start_cluster("k8s-ovs-multitenant", &[("red", 100)])?;
    let a = add_pod(&mut lab, 1, "red", "a")?;
    let c = add_pod(&mut lab, 2, "red", "c")?;
    ensure!(traffic::reachable(&a.netns, &c.ip, Duration::from_secs(5))?);
    let before = flows_without_cookies(&lab, 1)?;
    lab.node(1).ovs.restart_vswitchd()?;
    // No operator action: the agent notices the reconnect and replays.
    ensure!(
        traffic::reachable(&a.netns, &c.ip, Duration::from_secs(15))?,
        "a -> c after ovs-vswitchd restart"
    );
    ensure!(flows_without_cookies(&lab, 1)? == before, "replayed flows differ");
    Ok(())
}

/// Packets from `src_ip` counted by an iptables rule in the pod (INPUT).
fn count_from(p: &CniPod, src_ip: &str) -> Result<u64> {
    let out = p.netns.exec(&["iptables", "-w", "5", "-L", "INPUT", "-v", "-x", "-n"])?;
    Ok(out
        .lines()
        .filter(|l| l.split_whitespace().nth(7) == Some(src_ip))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum())
}

#[test]
fn lab_agent_isolation_holds_while_namespaces_join_and_isolate() -> Result<()> {
    lab::needs_root!();
    let (mut lab, _agents) =
        start_cluster("k8s-ovs-multitenant", &[("red", 100), ("blue", 200), ("grey", 300)])?;
    let red = add_pod(&mut lab, 1, "red", "red1")?;
    let blue = add_pod(&mut lab, 2, "blue", "blue2")?;
    let grey = add_pod(&mut lab, 1, "grey", "grey1")?;
    for p in [&red, &blue] {
        p.netns.exec(&["iptables", "-w", "5", "-A", "INPUT", "-s", &grey.ip, "-j", "ACCEPT"])?;
    }
    // grey (never joined) sends to both all the time.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let cycles = std::thread::scope(|s| -> Result<u32> {
        let senders: Vec<_> = [&red.ip, &blue.ip]
            .into_iter()
            .map(|dst| {
                let (g, stop) = (&grey, &stop);
                s.spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let _ = traffic::ping_count(&g.netns, dst, 20, 1);
                    }
                })
            })
            .collect();
        let mut n = 0;
        let result = (|| -> Result<()> {
            for _ in 0..100 {
                lab.put_netnamespace("red", 200)?; // join red to blue
                lab.put_netnamespace("red", 100)?; // isolate again
                n += 1;
            }
            Ok(())
        })();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for h in senders {
            let _ = h.join();
        }
        result.map(|()| n)
    })?;
    ensure!(cycles == 100);
    // The joined pair really connects, so the edits took effect.
    lab.put_netnamespace("red", 200)?;
    ensure!(traffic::reachable(&red.netns, &blue.ip, Duration::from_secs(2))?, "red -> blue when joined");
    let (at_red, at_blue) = (count_from(&red, &grey.ip)?, count_from(&blue, &grey.ip)?);
    ensure!(at_red == 0 && at_blue == 0, "grey's packets delivered: {at_red} to red, {at_blue} to blue");
    // The counters do count: once grey joins red, its pings arrive.
    lab.put_netnamespace("grey", 200)?;
    ensure!(traffic::reachable(&grey.netns, &red.ip, Duration::from_secs(2))?, "grey -> red when joined");
    ensure!(count_from(&red, &grey.ip)? > 0, "the counter saw grey's packets");
    Ok(())
}

/// Whether a TCP connection from `from` to `ip:port` is accepted within 3 s.
#[test]
fn lab_agent_cni_edge_cases() -> Result<()> {
    lab::needs_root!();
    let (mut lab, mut agents) = start_cluster("k8s-ovs-multitenant", &[("red", 100)])?;
    let code = |o: &lab::cluster::CniOutput| o.stdout["code"].as_u64();

    // VERSION, as runtimes call it.
    let v = cni(
        &lab,
        1,
        "VERSION",
        &CniCall { netns: "dummy".into(), ifname: "dummy".into(), ..CniCall::default() },
    )?;
    ensure!(
        v.code == Some(0)
            && v.stdout["supportedVersions"].as_array().is_some_and(|a| a.iter().any(|x| x == "1.1.0")),
        "{}",
        v.stdout
    );
    // Bad stdin JSON: decode failure (6), exit 1.
    let p = lab.pod_netns("edge")?;
    let bad = cni(
        &lab,
        1,
        "ADD",
        &CniCall { raw_stdin: Some(b"{\"cniVersion\":".to_vec()), ..CniCall::pod("e1", &p, "red", "edge") },
    )?;
    ensure!(bad.code == Some(1) && code(&bad) == Some(6), "bad JSON: {}", bad.stdout);
    // Missing CNI_NETNS / CNI_COMMAND: invalid environment (4).
    let mut no_netns = CniCall::pod("e1", &p, "red", "edge");
    no_netns.env.push(("CNI_NETNS".into(), None));
    let r = cni(&lab, 1, "ADD", &no_netns)?;
    ensure!(r.code == Some(1) && code(&r) == Some(4), "missing CNI_NETNS: {}", r.stdout);
    let r = cni(&lab, 1, "", &CniCall::pod("e1", &p, "red", "edge"))?;
    ensure!(r.code == Some(1) && code(&r) == Some(4), "missing CNI_COMMAND: {}", r.stdout);
    // Unsupported version: 1.
    let mut old = CniCall::pod("e1", &p, "red", "edge");
    let mut conf = lab.cni_conf(1);
    conf["cniVersion"] = "0.2.0".into();
    old.conf = Some(conf);
    let r = cni(&lab, 1, "ADD", &old)?;
    ensure!(r.code == Some(1) && code(&r) == Some(1), "old version: {}", r.stdout);
    // DEL of a container never added: success.
    let r = cni(&lab, 1, "DEL", &CniCall::pod("never-added", &p, "red", "ghost"))?;
    ensure!(r.code == Some(0), "DEL unknown: {}", r.stdout);

    // CHECK: fine after ADD, an error once the veth is gone.
    let pod = add_pod(&mut lab, 1, "red", "checked")?;
    let add = cni(&lab, 1, "ADD", &CniCall::pod(&pod.cid, &pod.netns, "red", "checked"))?;
    let mut check = CniCall::pod(&pod.cid, &pod.netns, "red", "checked");
    let mut conf = lab.cni_conf(1);
    conf["prevResult"] = add.stdout.clone();
    check.conf = Some(conf);
    let r = cni(&lab, 1, "CHECK", &check)?;
    ensure!(r.code == Some(0), "CHECK of a healthy pod: {}", r.stdout);
    let host_veth = add.stdout["interfaces"][0]["name"].as_str().unwrap_or_default().to_string();
    lab.node(1).netns.ip(&["link", "del", &host_veth])?;
    let r = cni(&lab, 1, "CHECK", &check)?;
    ensure!(
        r.code == Some(1) && r.stdout["msg"].as_str().is_some_and(|m| m.contains("gone")),
        "CHECK after veth removal: {}",
        r.stdout
    );
    let r = cni(&lab, 1, "DEL", &check)?;
    ensure!(r.code == Some(0), "DEL after veth removal: {}", r.stdout);

    // 50 ADDs at once: all succeed, addresses unique.
    let netns: Vec<Netns> = (0..50).map(|i| lab.pod_netns(&format!("par{i}"))).collect::<Result<_>>()?;
    let results: Vec<Result<lab::cluster::CniOutput>> = std::thread::scope(|s| {
        let hs: Vec<_> = netns
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let lab = &lab;
                s.spawn(move || {
                    cni(lab, 1, "ADD", &CniCall::pod(&format!("par-{i}"), n, "red", &format!("par{i}")))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let mut ips = std::collections::BTreeSet::new();
    for (i, r) in results.into_iter().enumerate() {
        let r = r?;
        ensure!(r.code == Some(0), "parallel ADD {i}: {}", r.stdout);
        ips.insert(r.stdout["ips"][0]["address"].as_str().unwrap_or_default().to_string());
    }
    ensure!(ips.len() == 50, "addresses not unique: {} distinct", ips.len());

    // GC: the runtime still knows only par-0; every other attachment goes.
    let mut gc = CniCall::default();
    let mut conf = lab.cni_conf(1);
    conf["cniVersion"] = "1.1.0".into();
    conf["cni.dev/valid-attachments"] = serde_json::json!([{"containerID": "par-0", "ifname": "eth0"}]);
    gc.conf = Some(conf);
    let r = cni(&lab, 1, "GC", &gc)?;
    ensure!(r.code == Some(0), "GC: {}", r.stdout);
    let ports = lab.node(1).ovs.vsctl(&["list-ports", "br0"])?;
    ensure!(ports.split_whitespace().count() == 3, "after GC: tun0, vxlan0 and par-0's port: {ports}");
    // DEL after the pod's namespace is gone: success, and the port goes.
    netns[0].destroy();
    let r = cni(&lab, 1, "DEL", &CniCall::pod("par-0", &netns[0], "red", "par0"))?;
    ensure!(r.code == Some(0), "DEL with the netns gone: {}", r.stdout);
    let ports = lab.node(1).ovs.vsctl(&["list-ports", "br0"])?;
    ensure!(ports.split_whitespace().count() == 2, "after DEL: {ports}");
    // STATUS: the agent serves.
    ensure!(cni(&lab, 1, "STATUS", &CniCall::default())?.code == Some(0));

    // The agent not running: a clear error, "try again later" (11).
    agents[0].stop();
    let r = cni(&lab, 1, "ADD", &CniCall::pod("e2", &p, "red", "edge"))?;
    ensure!(r.code == Some(1) && code(&r) == Some(11), "agent down: {}", r.stdout);
    ensure!(r.stdout["msg"].as_str().is_some_and(|m| m.contains("not running")), "{}", r.stdout);
    Ok(())
}

/// etcd with client-certificate auth (as K8S-OVS ran it): an agent without a
/// client certificate gets nothing, agents with --etcd-ca/--etcd-cert/--etcd-key
/// wire pods and follow VNI edits over the TLS watch.
#[test]
fn lab_agent_talks_tls_to_etcd() -> Result<()> {
    lab::needs_root!();
    let mut lab = Lab::start_with(LabConfig { etcd_tls: true, ..LabConfig::nodes(2) })?;
    let pki = lab.pki().context("TLS lab without PKI")?.clone();
    lab.put_network_config("k8s-ovs-multitenant")?;
    for i in 1..=2 {
        lab.put_node_subnet(i)?;
    }
    lab.put_netnamespace("red", 100)?;
    lab.put_netnamespace("blue", 200)?;

    // etcd really demands a client certificate...
    let ep = lab.etcd_endpoint();
    let cacert = format!("--cacert={}", pki.path("ca.crt"));
    let bare = ["etcdctl", "--dial-timeout=2s", "--endpoints", &ep, &cacert, "get", "/", "--prefix"];
    ensure!(lab.ctl.exec_env(&bare, &[("ETCDCTL_API", "3")]).is_err(), "etcd answered without a client cert");
    // ...so an agent trusting the CA but without one never learns its subnet.
    let mut args = Agent::args(&lab, 1);
    args.extend(["--no-kube", "--etcd-endpoints", &ep, "--etcd-ca", &pki.path("ca.crt")].map(String::from));
    let node1 = lab.node(1);
    let mut lone = Daemon::start(&node1.netns, "k8s-ovs-agent", &args, node1.dir.join("agent-nocert.log"))?;
    std::thread::sleep(Duration::from_secs(4));
    ensure!(lone.exited()?.is_none(), "agent gave up instead of retrying: {}", lone.log_tail());
    let status = cni(&lab, 1, "STATUS", &CniCall::default())?;
    ensure!(status.code != Some(0), "agent without a client certificate reports ready");
    lone.stop();

    let _agents = (1..=2).map(|i| Agent::start(&lab, i, &["--no-kube"])).collect::<Result<Vec<_>>>()?;
    let red1 = add_pod(&mut lab, 1, "red", "red1")?;
    let red2 = add_pod(&mut lab, 2, "red", "red2")?;
    let blue2 = add_pod(&mut lab, 2, "blue", "blue2")?;
    ensure!(traffic::reachable(&red1.netns, &red2.ip, Duration::from_secs(5))?, "red1 -> red2 across nodes");
    ensure!(traffic::unreachable(&red1.netns, &blue2.ip, 2)?, "red1 reached blue2 before the join");
    lab.put_netnamespace("blue", 100)?;
    let edit = Instant::now();
    ensure!(
        traffic::time_until(&red1.netns, &blue2.ip, true, edit, Duration::from_secs(10))?.is_some(),
        "the VNI edit never reached the agents over TLS"
    );
    Ok(())
}

/// `k8s-ovs-ctl trace`: the verdict and its reason for an allowed and a
/// denied pair, on one node and across nodes, each confirmed by ping; and a
/// switch tampered behind the agent's back is reported as out of step.
#[test]
fn lab_agent_trace_explains_allowed_and_denied_pairs() -> Result<()> {
    lab::needs_root!();
    let (mut lab, _agents) = start_cluster("k8s-ovs-multitenant", &[("red", 100), ("blue", 200)])?;
    let red1 = add_pod(&mut lab, 1, "red", "red1")?;
    let blue1 = add_pod(&mut lab, 1, "blue", "blue1")?;
    let red2 = add_pod(&mut lab, 2, "red", "red2")?;
    let blue2 = add_pod(&mut lab, 2, "blue", "blue2")?;
    let (n1, n2) = (lab.node(1).ip.clone(), lab.node(2).ip.clone());
    let trace = |src: &str, dst: &str| -> Result<(Option<i32>, String)> {
        let (code, out, err) = lab::cluster::ctl(&lab, &["trace", src, dst])?;
        eprintln!("$ k8s-ovs-ctl trace {src} {dst}  -> {code:?}\n{out}{err}");
        Ok((code, out))
    };

    // Allowed, across nodes: traced on both, delivered to red2's port.
    let (code, out) = trace("red/red1", "red/red2")?;
    ensure!(code == Some(0), "allowed pair: exit {code:?}");
    ensure!(out.contains("verdict ALLOWED") && out.contains("same namespace red (VNI 100)"), "{out}");
    ensure!(out.contains("delivered to port") && out.contains(&format!("on {n2}")), "{out}");
    for table in ["SPOOF_GUARD", "REMOTE_NODE", "TUNNEL_IN", "LOCAL_POD", "ISOLATION"] {
        ensure!(out.contains(table), "the path lacks {table}: {out}");
    }
    ensure!(
        traffic::reachable(&red1.netns, &red2.ip, Duration::from_secs(5))?,
        "trace said allowed, ping fails"
    );

    // Denied on one node: dropped by ISOLATION on node 1.
    let (code, out) = trace("red/red1", "blue/blue1")?;
    ensure!(code == Some(3), "denied pair: exit {code:?}");
    ensure!(out.contains("verdict DENIED"), "{out}");
    ensure!(out.contains("red (VNI 100) and blue (VNI 200) differ and neither is global"), "{out}");
    ensure!(out.contains(&format!("dropped in table 61 REFUSED on {n1}")), "{out}");
    ensure!(traffic::unreachable(&red1.netns, &blue1.ip, 2)?, "trace said denied, ping passes");

    // Denied across nodes (by IP): the receiving node decides.
    let (code, out) = trace(&red1.ip, &blue2.ip)?;
    ensure!(code == Some(3) && out.contains(&format!("dropped in table 61 REFUSED on {n2}")), "{out}");

    // A global namespace reaches everyone.
    lab.put_netnamespace("blue", 0)?;
    let (code, out) = (0..50)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            trace("red/red1", "blue/blue1")
        })
        .find(|r| matches!(r, Ok((Some(0), _))) || r.is_err())
        .unwrap_or_else(|| trace("red/red1", "blue/blue1"))?;
    ensure!(code == Some(0) && out.contains("blue is global (VNI 0)"), "{out}");

    // Node 2's ISOLATION flow for red's own VNI 100 deleted behind the
    // agent's back: etcd still allows red1 -> red2, the switch drops it.
    lab.node(2).ovs.ofctl("del-flows", "br0", &["table=60,reg0=0x64"])?;
    let (code, out) = trace("red/red1", "red/red2")?;
    ensure!(code == Some(4) && out.contains("MISMATCH"), "{out}");
    ensure!(out.contains(&format!("dropped in table 61 REFUSED on {n2}")), "{out}");
    ensure!(traffic::unreachable(&red1.netns, &red2.ip, 2)?, "the tampered switch still delivers");

    // Unknown pods are refused with a clear message.
    let (code, err_out, err) = lab::cluster::ctl(&lab, &["trace", "red/nope", "red/red2"])?;
    ensure!(code == Some(1) && err.contains("red/nope: no such pod"), "{err_out}{err}");
    Ok(())
}

/// Flows changed behind the agent's back (a deleted isolation flow, a
/// stray flow carrying our cookie tag) are put back by the periodic resync;
/// a foreign flow (another cookie) in its tables is removed too.
#[test]
fn lab_agent_resync_repairs_flow_drift() -> Result<()> {
    lab::needs_root!();
    let (mut lab, _agents) = start_cluster_with(
        "k8s-ovs-multitenant",
        &[("red", 100), ("blue", 200)],
        &["--flow-resync-secs", "1"],
    )?;
    let red1 = add_pod(&mut lab, 1, "red", "red1")?;
    let red2 = add_pod(&mut lab, 2, "red", "red2")?;
    ensure!(traffic::reachable(&red1.netns, &red2.ip, Duration::from_secs(5))?);
    let before = flows_without_cookies(&lab, 2)?;
    let ovs = &lab.node(2).ovs;
    // Red's ISOLATION flow for its own VNI (whatever its namespace id).
    ovs.ofctl("del-flows", "br0", &["table=60,reg0=0x64"])?;
    // A stray flow in our cookie space (tag 0x4b), dropping red's traffic.
    ovs.ofctl("add-flow", "br0", &["cookie=0x1024b000000aa,table=60,priority=250,reg0=0x64,actions=drop"])?;
    ovs.ofctl("add-flow", "br0", &["cookie=0x77,table=0,priority=1,udp,tp_dst=9,actions=drop"])?;
    ensure!(flows_without_cookies(&lab, 2)? != before, "the tampering changed nothing");
    let tampered = Instant::now();
    ensure!(
        traffic::time_until(&red1.netns, &red2.ip, true, tampered, Duration::from_secs(10))?.is_some(),
        "red1 -> red2 never came back after the tampering"
    );
    eprintln!("drift repaired and red1 -> red2 back {:?} after the tampering", tampered.elapsed());
    // br0 belongs to the agent: the foreign flow in its table 0 goes too.
    let deadline = Instant::now() + Duration::from_secs(5);
    while flows_without_cookies(&lab, 2)? != before {
        ensure!(Instant::now() < deadline, "the flows differ after the resync");
        std::thread::sleep(Duration::from_millis(100));
    }
    let metrics = lab::cluster::agent_http(&lab, 2, "/metrics")?;
    ensure!(metrics.contains("k8s_ovs_flow_drift_total 3"), "drift not counted as 3 flows: {metrics}");
    Ok(())
}

#[test]
fn lab_agent_rides_out_an_etcd_outage() -> Result<()> {
    lab::needs_root!();
    let outage: u64 = std::env::var("K8S_OVS_OUTAGE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let (mut lab, _agents) = start_cluster("k8s-ovs-multitenant", &[("red", 100), ("blue", 200)])?;
    let red1 = add_pod(&mut lab, 1, "red", "red1")?;
    let blue1 = add_pod(&mut lab, 1, "blue", "blue1")?;
    let red2 = add_pod(&mut lab, 2, "red", "red2")?;
    ensure!(traffic::reachable(&red1.netns, &red2.ip, Duration::from_secs(5))?);
    ensure!(traffic::unreachable(&red1.netns, &blue1.ip, 2)?);

    // Node 1 loses etcd (packets to it vanish); the tunnel stays up.
    let n1 = lab.node(1).netns.clone();
    let rules = [
        ["OUTPUT", "-d", lab::CTL_IP, "-p", "tcp", "--dport", "2379", "-j", "DROP"],
        ["INPUT", "-s", lab::CTL_IP, "-p", "tcp", "--sport", "2379", "-j", "DROP"],
    ];
    for rule in &rules {
        n1.exec(&[&["iptables", "-w", "5", "-A"][..], &rule[..]].concat())?;
    }
    let start = Instant::now();
    // Meanwhile the operator joins blue to red (node 2's agent sees it at
    // once; blue has pods only on node 1, so the nodes' disagreement during
    // the outage cannot cut red's cross-node traffic).
    lab.put_netnamespace("blue", 100)?;
    // A new pod on node 1 still gets its network from the agent's cached state.
    let late = add_pod(&mut lab, 1, "red", "late1")?;
    ensure!(traffic::reachable(&late.netns, &red2.ip, Duration::from_secs(5))?, "new pod during the outage");
    // Running pods keep talking for the whole outage.
    while start.elapsed() < Duration::from_secs(outage) {
        ensure!(traffic::ping_count(&red1.netns, &red2.ip, 5, 1)? > 0, "red1 -> red2 lost during the outage");
    }
    // Node 1 never heard of the join yet: red1 and blue1 (both on node 1) stay apart.
    ensure!(traffic::unreachable(&red1.netns, &blue1.ip, 2)?, "node 1 applied an edit it cannot have seen");
    for rule in &rules {
        n1.exec(&[&["iptables", "-w", "5", "-D"][..], &rule[..]].concat())?;
    }
    // etcd back: the edit made meanwhile applies.
    let back = Instant::now();
    ensure!(
        traffic::time_until(&red1.netns, &blue1.ip, true, back, Duration::from_secs(30))?.is_some(),
        "the join made during the outage never applied on node 1"
    );
    eprintln!("outage {outage} s; edit applied {:?} after etcd came back", back.elapsed());
    Ok(())
}

#[test]
fn lab_agent_chains_with_upstream_plugins() -> Result<()> {
    lab::needs_root!();
    let (mut lab, _agents) = start_cluster("k8s-ovs-multitenant", &[("red", 100)])?;
    let server = add_pod(&mut lab, 1, "red", "server")?;
    let netns = lab.pod_netns("chained")?;
    let call = CniCall::pod("cid-chained", &netns, "red", "chained");
    let first = cni(&lab, 1, "ADD", &call)?;
    ensure!(first.code == Some(0), "k8s-ovs ADD: {}", first.stdout);
    // bandwidth, then portmap, each getting the previous result.
    let bw_conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "k8s-ovs", "type": "bandwidth", "capabilities": {"bandwidth": true},
        "runtimeConfig": {"bandwidth": {"ingressRate": 10_000_000, "ingressBurst": 100_000, "egressRate": 10_000_000, "egressBurst": 100_000}},
        "prevResult": first.stdout,
    });
    let bw = upstream(&lab, 1, "bandwidth", "ADD", &call, bw_conf.clone())?;
    ensure!(bw.code == Some(0), "bandwidth after k8s-ovs: {} {}", bw.stdout, bw.stderr);
    let pm_conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "k8s-ovs", "type": "portmap", "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]},
        "prevResult": bw.stdout,
    });
    let pm = upstream(&lab, 1, "portmap", "ADD", &call, pm_conf.clone())?;
    ensure!(pm.code == Some(0), "portmap after bandwidth: {} {}", pm.stdout, pm.stderr);
    // The chain's final result still names our interfaces and address.
    ensure!(pm.stdout["ips"] == first.stdout["ips"], "final result: {}", pm.stdout);
    // bandwidth really found our host veth in prevResult and shaped it.
    let host_veth = first.stdout["interfaces"][0]["name"].as_str().unwrap_or_default().to_string();
    let qdisc = lab.node(1).netns.exec(&["tc", "qdisc", "show", "dev", &host_veth])?;
    ensure!(qdisc.contains("tbf"), "no tbf on {host_veth}: {qdisc}");
    ensure!(traffic::reachable(&netns, &server.ip, Duration::from_secs(5))?, "chained pod is connected");
    // CHECK down the chain, then DEL in reverse order, as libcni does.
    let mut check = call.clone();
    let mut conf = lab.cni_conf(1);
    conf["prevResult"] = pm.stdout.clone();
    check.conf = Some(conf.clone());
    let r = cni(&lab, 1, "CHECK", &check)?;
    ensure!(r.code == Some(0), "CHECK with the chain's result: {}", r.stdout);
    let mut pm_del = pm_conf;
    pm_del["prevResult"] = pm.stdout.clone();
    ensure!(upstream(&lab, 1, "portmap", "DEL", &call, pm_del)?.code == Some(0));
    let mut bw_del = bw_conf;
    bw_del["prevResult"] = pm.stdout.clone();
    ensure!(upstream(&lab, 1, "bandwidth", "DEL", &call, bw_del)?.code == Some(0));
    let r = cni(&lab, 1, "DEL", &check)?;
    ensure!(r.code == Some(0), "k8s-ovs DEL last: {}", r.stdout);
    Ok(())
}
