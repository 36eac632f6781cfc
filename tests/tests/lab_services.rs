//! Services as a real cluster runs them: Service and EndpointSlice objects in
//! the test apiserver, kube-proxy's own iptables rules on every node (the
//! lab's stand-in generates them from the objects; no test writes a NAT
//! rule), the agents programming the SERVICE table from their watch.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use lab::cluster::{Agent, CniPod};
use lab::kube_proxy::ProxyConfig;
use lab::services::{
    ask, ask_big_udp, resolve, send_udp, udp_received, use_cluster_dns, wait_answer, ServiceLab, KUBE_DNS_IP,
};

const WITHIN: Duration = Duration::from_secs(10);

fn kubeadm_proxy() -> ProxyConfig {
    ProxyConfig { cluster_cidr: Some(lab::cluster::NETWORK.into()), masquerade_all: false }
}

/// The answer of `ip:port` from `from`, waiting for the watch and the rules.
fn answer(from: &CniPod, proto: &str, ip: &str, port: u16) -> Result<String> {
    wait_answer(&from.netns, proto, ip, port, WITHIN)?
        .with_context(|| format!("{} got no {proto} answer from {ip}:{port}", from.name))
}

/// No answer on three tries (denied traffic gets no second chance).
fn refused(from: &lab::Netns, proto: &str, ip: &str, port: u16) -> Result<bool> {
    for _ in 0..3 {
        if ask(from, proto, ip, port)?.is_some() {
            return Ok(false);
        }
    }
    Ok(true)
}

fn peer_ip(answer: &str) -> &str {
    answer.split("peer=").nth(1).and_then(|p| p.split(':').next()).unwrap_or_default()
}

/// ClusterIP over TCP and UDP, client and endpoint on one node and on two,
/// hairpin and the node's own connections, through the rules kube-proxy
/// writes with `clusterCIDR` set or not.
fn cluster_ip_paths(proxy: ProxyConfig) -> Result<()> {
    let masquerade_all = proxy.masquerade_all;
    let mut s = ServiceLab::start(2, &[("red", 100)], proxy)?;
    let ep2 = s.add_pod(2, "red", "ep2")?;
    let ep1 = s.add_pod(1, "red", "ep1")?;
    let red1 = s.add_pod(1, "red", "red1")?;
    let red2 = s.add_pod(2, "red", "red2")?;
    for ep in [&ep1, &ep2] {
        s.serve(ep, "tcp", 8080)?;
        s.serve(ep, "udp", 5353)?;
    }
    let ports = [("http", "TCP", 80, 8080), ("echo", "UDP", 53, 5353)];
    s.service("red", "remote", "10.96.5.5", &ports, &[], Some(&[&ep2]))?;
    s.service("red", "local", "10.96.5.6", &ports, &[], Some(&[&ep1]))?;
    s.proxy_synced()?;
    for (svc, ep) in [("10.96.5.5", &ep2), ("10.96.5.6", &ep1)] {
        for client in [&red1, &red2] {
            for (proto, port) in [("tcp", 80), ("udp", 53)] {
                let a = answer(client, proto, svc, port)?;
                ensure!(
                    a.starts_with(&format!("{} ", ep.name)),
                    "{svc}:{port}/{proto} from {}: {a}",
                    client.name
                );
                // kube-proxy does not masquerade cluster sources: the
                // endpoint sees the client pod itself (with masqueradeAll,
                // the client node's gateway).
                let gw = if client.node == 1 { "172.11.0.1" } else { "172.11.4.1" };
                let want = if masquerade_all { gw } else { client.ip.as_str() };
                ensure!(peer_ip(&a) == want, "{} seen as {a}", client.name);
            }
        }
    }
    // Hairpin: an endpoint reaching its own service is masqueraded by
    // kube-proxy (`-s <endpoint> -j KUBE-MARK-MASQ`) to its node's gateway.
    let a = answer(&ep2, "tcp", "10.96.5.5", 80)?;
    ensure!(a.starts_with("ep2 ") && peer_ip(&a) == "172.11.4.1", "hairpin: {a}");
    let a = answer(&ep2, "udp", "10.96.5.5", 53)?;
    ensure!(a.starts_with("ep2 "), "hairpin udp: {a}");
    // The node's own connections: out of tun0 with the gateway address.
    for (node, svc, ep, gw) in [(1, "10.96.5.5", "ep2", "172.11.0.1"), (2, "10.96.5.6", "ep1", "172.11.4.1")]
    {
        let host = &s.lab.node(node).netns;
        let a =
            wait_answer(host, "tcp", svc, 80, WITHIN)?.with_context(|| format!("node {node} -> {svc}"))?;
        ensure!(a.starts_with(&format!("{ep} ")) && peer_ip(&a) == gw, "node {node}: {a}");
        ensure!(wait_answer(host, "udp", svc, 53, WITHIN)?.is_some(), "node {node} -> {svc} udp");
    }
    Ok(())
}

#[test]
fn lab_services_cluster_ip_with_kubeadm_cluster_cidr() -> Result<()> {
    lab::needs_root!();
    cluster_ip_paths(kubeadm_proxy())
}

#[test]
fn lab_services_cluster_ip_without_cluster_cidr() -> Result<()> {
    lab::needs_root!();
    cluster_ip_paths(ProxyConfig::default())
}

#[test]
fn lab_services_cluster_ip_with_masquerade_all() -> Result<()> {
    lab::needs_root!();
    cluster_ip_paths(ProxyConfig { cluster_cidr: Some(lab::cluster::NETWORK.into()), masquerade_all: true })
}

/// Isolation at the VIP and at the endpoint: own tenant allowed, another
/// denied, global allowed; a selector-less Service of red whose hand-written
/// EndpointSlice names blue pods does not open blue to red.
#[test]
fn lab_services_isolation_holds_at_the_vip_and_at_the_endpoint() -> Result<()> {
    lab::needs_root!();
    let mut s = ServiceLab::start(2, &[("red", 100), ("blue", 200), ("glob", 0)], kubeadm_proxy())?;
    let web = s.add_pod(2, "red", "web")?;
    let blue_far = s.add_pod(2, "blue", "bluefar")?;
    let blue_near = s.add_pod(1, "blue", "bluenear")?;
    let glob_ep = s.add_pod(2, "glob", "globep")?;
    let red1 = s.add_pod(1, "red", "red1")?;
    let blue1 = s.add_pod(1, "blue", "blue1")?;
    let glob1 = s.add_pod(1, "glob", "glob1")?;
    for p in [&web, &blue_far, &blue_near, &glob_ep] {
        s.serve(p, "tcp", 8080)?;
        s.serve(p, "udp", 5353)?;
    }
    let http = [("http", "TCP", 80, 8080), ("dns", "UDP", 53, 5353)];
    s.service("red", "web", "10.96.5.5", &http, &[], Some(&[&web]))?;
    // Selector-less Services with EndpointSlices written by hand.
    s.service("red", "far", "10.96.5.7", &http, &[], None)?;
    s.endpoints("red", "far", &http, &[&blue_far])?;
    s.service("red", "near", "10.96.5.8", &http, &[], None)?;
    s.endpoints("red", "near", &http, &[&blue_near])?;
    // A red Service backed by a global pod: global endpoints serve everyone.
    s.service("red", "toglob", "10.96.5.9", &http, &[], None)?;
    s.endpoints("red", "toglob", &http, &[&glob_ep])?;
    s.proxy_synced()?;
    ensure!(answer(&red1, "tcp", "10.96.5.5", 80)?.starts_with("web "), "own tenant");
    ensure!(
        answer(&glob1, "tcp", "10.96.5.5", 80)?.starts_with("web "),
        "a global pod reaches every service"
    );
    ensure!(refused(&blue1.netns, "tcp", "10.96.5.5", 80)?, "blue reached red's service");
    ensure!(answer(&red1, "tcp", "10.96.5.9", 80)?.starts_with("globep "), "global endpoint");
    // The VIP check passes (red to red's service); the endpoint's ISOLATION
    // must still refuse red's packets to a blue pod, on either node. A
    // connection fails anyway (the blue pod cannot ARP for red), so what
    // counts is whether one-way datagrams reach the blue pod at all.
    ensure!(
        refused(&red1.netns, "tcp", "10.96.5.7", 80)?,
        "red reached a blue pod on the other node via a Service"
    );
    ensure!(
        refused(&red1.netns, "tcp", "10.96.5.8", 80)?,
        "red reached a blue pod on its node via a Service"
    );
    // A datagram larger than the MTU leaves the pod in fragments: the
    // later ones carry no port, and still pass for red's own service only.
    ensure!(
        ask_big_udp(&red1.netns, "10.96.5.5", 53, 4000)?.is_some(),
        "a fragmented datagram to red's service got no answer"
    );
    let before = udp_received(&web.netns)?;
    ensure!(
        ask_big_udp(&blue1.netns, "10.96.5.5", 53, 4000)?.is_none(),
        "blue's fragments reached red's service"
    );
    ensure!(udp_received(&web.netns)? == before, "blue's fragmented datagram reached red's endpoint");
    let web_before = udp_received(&web.netns)?;
    send_udp(&red1.netns, "10.96.5.5", 53, 10)?;
    ensure!(
        udp_received(&web.netns)? >= web_before + 10,
        "red's datagrams to its own service did not arrive"
    );
    for (vip, victim) in [("10.96.5.7", &blue_far), ("10.96.5.8", &blue_near)] {
        let before = udp_received(&victim.netns)?;
        send_udp(&red1.netns, vip, 53, 20)?;
        let after = udp_received(&victim.netns)?;
        ensure!(
            after == before,
            "{} datagrams from red reached {} through {vip}",
            after - before,
            victim.name
        );
    }
    // Those blue pods are up: blue reaches them directly.
    ensure!(answer(&blue1, "tcp", &blue_far.ip, 8080)?.starts_with("bluefar "));
    ensure!(answer(&blue1, "tcp", &blue_near.ip, 8080)?.starts_with("bluenear "));
    // k8s-ovs-ctl trace explains both: red's own service is handed to the
    // gateway (kube-proxy), another tenant's packet dies in SERVICE_VNI.
    let url = s.api.url();
    let (code, out, err) =
        lab::cluster::ctl(&s.lab, &["trace", "red/red1", "10.96.5.5:80", "--kube-url", &url])?;
    eprintln!("$ k8s-ovs-ctl trace red/red1 10.96.5.5:80\n{out}{err}");
    ensure!(code == Some(0) && out.contains("handed to the gateway (tun0)"), "{out}{err}");
    ensure!(out.contains("same namespace red (VNI 100)") && out.contains("30 SERVICE"), "{out}");
    // ...and on to the endpoint: through kube-proxy's DNAT, delivered on node 2.
    ensure!(
        out.contains(&format!("{}:8080 red/web on", web.ip)) && out.contains("delivered to port"),
        "{out}"
    );
    ensure!(out.contains("15 GATEWAY_IN") && out.contains("60 ISOLATION"), "{out}");
    // The foreign endpoint: allowed at the ClusterIP, refused at the endpoint.
    let (code, out, err) =
        lab::cluster::ctl(&s.lab, &["trace", "red/red1", "10.96.5.7:80", "--kube-url", &url])?;
    eprintln!("$ k8s-ovs-ctl trace red/red1 10.96.5.7:80\n{out}{err}");
    ensure!(code == Some(3), "a Service into another tenant must trace as denied: {out}{err}");
    ensure!(out.contains("policy denied") && out.contains("dropped in table 61 REFUSED"), "{out}");
    let (code, out, err) = lab::cluster::ctl(&s.lab, &["trace", "blue/blue1", "10.96.5.5:80"])?;
    eprintln!("$ k8s-ovs-ctl trace blue/blue1 10.96.5.5:80\n{out}{err}");
    ensure!(code == Some(3) && out.contains("dropped in table 35 SERVICE_VNI"), "{out}{err}");
    // Without a Kubernetes API to ask, the trace stops at the ClusterIP.
    let (code, out, err) = lab::cluster::ctl(&s.lab, &["trace", "glob/glob1", "10.96.5.5:80"])?;
    ensure!(code == Some(0) && out.contains("glob is global (VNI 0)"), "{out}{err}");
    ensure!(err.contains("the endpoints were not followed"), "{err}");
    // Nor can a tenant route around isolation through the node: red sends
    // to blue's pod via the gateway (the node kernel must not forward it).
    red1.netns.ip(&["route", "add", &format!("{}/32", blue_near.ip), "via", "172.11.0.1"])?;
    ensure!(refused(&red1.netns, "tcp", &blue_near.ip, 8080)?, "red reached blue through the gateway");
    // Deleting the service removes its flow and its rules.
    s.api.delete(lab::kube_api::Kind::Service, Some("red"), "web")?;
    let deadline = Instant::now() + WITHIN;
    while ask(&red1.netns, "tcp", "10.96.5.5", 80)?.is_some() {
        ensure!(Instant::now() < deadline, "deleted service still answers");
    }
    Ok(())
}

/// Cluster DNS is a ClusterIP: a pod on the other node resolves through
/// dnsmasq behind kube-dns; NodePorts behave as docs/operations.md says.
#[test]
fn lab_services_dns_and_node_ports() -> Result<()> {
    lab::needs_root!();
    let mut s = ServiceLab::start(2, &[("red", 100), ("blue", 200), ("kube-system", 0)], kubeadm_proxy())?;
    let dns = s.add_pod(2, "kube-system", "coredns")?;
    let web = s.add_pod(2, "red", "web")?;
    let red1 = s.add_pod(1, "red", "red1")?;
    let blue1 = s.add_pod(1, "blue", "blue1")?;
    s.serve_dns(&dns, &[("web.red.svc.cluster.local", "10.96.5.5")])?;
    s.serve(&web, "tcp", 8080)?;
    s.service(
        "kube-system",
        "kube-dns",
        KUBE_DNS_IP,
        &[("dns", "UDP", 53, 53), ("dns-tcp", "TCP", 53, 53)],
        &[],
        Some(&[&dns]),
    )?;
    s.service("red", "web", "10.96.5.5", &[("http", "TCP", 80, 8080)], &[30080], Some(&[&web]))?;
    s.proxy_synced()?;
    for p in [&red1, &blue1] {
        use_cluster_dns(&p.netns)?;
        let deadline = Instant::now() + WITHIN;
        let got = loop {
            match resolve(&p.netns, "web.red.svc.cluster.local")? {
                Some(a) => break a,
                None if Instant::now() < deadline => continue,
                None => anyhow::bail!("{} could not resolve through {KUBE_DNS_IP}", p.name),
            }
        };
        ensure!(got == "10.96.5.5", "{} resolved {got}", p.name);
        // The short name, through the search path, as applications use it.
        ensure!(resolve(&p.netns, "web.red")?.as_deref() == Some("10.96.5.5"), "{}: search path", p.name);
    }
    ensure!(answer(&red1, "tcp", "10.96.5.5", 80)?.starts_with("web "));
    // A NodePort exposes the service outside the cluster: every node's
    // address answers, masqueraded, for any client, another tenant's pods
    // included (as on OpenShift SDN) and a host that is not a node.
    let n1 = s.lab.node(1).ip.clone();
    let n2 = s.lab.node(2).ip.clone();
    for ip in [&n1, &n2] {
        let a = answer(&blue1, "tcp", ip, 30080)?;
        ensure!(a.starts_with("web "), "blue via NodePort {ip}: {a}");
        ensure!(
            peer_ip(&a).starts_with("172.11.") && peer_ip(&a).ends_with(".1"),
            "NodePort traffic is masqueraded: {a}"
        );
        let a = wait_answer(&s.lab.ctl, "tcp", ip, 30080, WITHIN)?.context("fabric host via NodePort")?;
        ensure!(a.starts_with("web "), "{a}");
    }
    // An externalIP, routed to node 1 by the network (the operator's job):
    // the same, for the fabric host and for blue.
    let mut web_svc = s.api.get(lab::kube_api::Kind::Service, Some("red"), "web").context("web")?;
    web_svc["spec"]["externalIPs"] = serde_json::json!(["192.0.2.50"]);
    s.api.update(web_svc)?;
    s.proxy_synced()?;
    s.lab.ctl.ip(&["route", "add", "192.0.2.50/32", "via", &n1])?;
    let a =
        wait_answer(&s.lab.ctl, "tcp", "192.0.2.50", 80, WITHIN)?.context("fabric host via externalIP")?;
    ensure!(a.starts_with("web "), "{a}");
    ensure!(answer(&blue1, "tcp", "192.0.2.50", 80)?.starts_with("web "), "blue via externalIP");
    // The ClusterIP itself stays closed to blue.
    ensure!(refused(&blue1.netns, "tcp", "10.96.5.5", 80)?, "NodePort must not open the ClusterIP");
    Ok(())
}

/// An agent restarted while the apiserver is down keeps every service flow:
/// a red pod resolving through kube-dns at 10 lookups/s misses none.
#[test]
fn lab_services_agent_restart_with_apiserver_down_keeps_dns() -> Result<()> {
    lab::needs_root!();
    let mut s = ServiceLab::start(2, &[("red", 100), ("kube-system", 0)], kubeadm_proxy())?;
    let dns = s.add_pod(2, "kube-system", "coredns")?;
    let red1 = s.add_pod(1, "red", "red1")?;
    s.serve_dns(&dns, &[("web.red.svc.cluster.local", "10.96.5.5")])?;
    s.service("kube-system", "kube-dns", KUBE_DNS_IP, &[("dns", "UDP", 53, 53)], &[], Some(&[&dns]))?;
    s.proxy_synced()?;
    use_cluster_dns(&red1.netns)?;
    let deadline = Instant::now() + WITHIN;
    while resolve(&red1.netns, "web.red.svc.cluster.local")?.is_none() {
        ensure!(Instant::now() < deadline, "no DNS before the restart");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    // 10 lookups a second, each in its own thread so a slow (failing) one
    // does not lower the rate.
    let prober = {
        let (stop, ok, failed, pod) = (stop.clone(), ok.clone(), failed.clone(), red1.netns.clone());
        std::thread::spawn(move || {
            let mut lookups = Vec::new();
            let start = Instant::now();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let (ok, failed, pod) = (ok.clone(), failed.clone(), pod.clone());
                lookups.push(std::thread::spawn(move || {
                    match resolve(&pod, "web.red.svc.cluster.local") {
                        Ok(Some(a)) if a == "10.96.5.5" => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }));
                n += 1;
                std::thread::sleep(
                    (start + Duration::from_millis(100) * n).saturating_duration_since(Instant::now()),
                );
            }
            for l in lookups {
                let _ = l.join();
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    // The log file is shared by both agent runs: count, not search.
    let listed = |a: &Agent| -> usize {
        std::fs::read_to_string(&a.daemon.log).unwrap_or_default().matches("services listed").count()
    };
    let before = listed(&s.agents[0]);
    s.api.set_down(true);
    let mut old = s.agents.remove(0);
    old.stop();
    let url = s.api.url();
    let agent = Agent::start(&s.lab, 1, &["--kube-url", &url])?;
    s.agents.insert(0, agent);
    // The agent runs without its Service list for a while...
    std::thread::sleep(Duration::from_secs(3));
    ensure!(listed(&s.agents[0]) == before, "the apiserver was down, yet: {}", s.agents[0].log_tail());
    // ...then the apiserver comes back and the watch takes over.
    s.api.set_down(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    while listed(&s.agents[0]) == before {
        ensure!(Instant::now() < deadline, "the agent never listed services: {}", s.agents[0].log_tail());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    prober.join().map_err(|_| anyhow::anyhow!("prober panicked"))?;
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("lookups across the restart: {ok} answered, {failed} failed");
    ensure!(failed == 0 && ok >= 40, "{failed} failed lookups of {}", ok + failed);
    Ok(())
}

/// hostPort, the way kubelet wires it: the portmap plugin chained after
/// k8s-ovs (its DNAT in the node, CNI-HOSTPORT-*). portmap masquerades
/// every source inside the pod's network (the cluster range our result
/// gives) as hairpin traffic, so a pod of any tenant reaches the port from
/// the node's gateway address (global), as from outside the cluster: the
/// port is open to all, as docs/operations.md says.
#[test]
fn lab_services_host_port_through_the_portmap_plugin() -> Result<()> {
    lab::needs_root!();
    use lab::cluster::{cni, upstream, CniCall};
    let mut s = ServiceLab::start(2, &[("red", 100), ("blue", 200)], kubeadm_proxy())?;
    let netns = s.lab.pod_netns("hp")?;
    let call = CniCall::pod("cid-hp", &netns, "red", "hp");
    let added = cni(&s.lab, 1, "ADD", &call)?;
    ensure!(added.code == Some(0), "ADD: {}", added.stdout);
    let ip = added.stdout["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .context("ip")?
        .to_string();
    // What libcni hands the next plugin of the conflist.
    let portmap = serde_json::json!({
        "cniVersion": "1.0.0", "name": "k8s-ovs", "type": "portmap", "snat": true,
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [{"hostPort": 30500, "containerPort": 8080, "protocol": "tcp"}]},
        "prevResult": added.stdout,
    });
    let pm = upstream(&s.lab, 1, "portmap", "ADD", &call, portmap)?;
    ensure!(pm.code == Some(0), "portmap ADD: {} {}", pm.stdout, pm.stderr);
    let hp = CniPod { name: "hp".into(), namespace: "red".into(), node: 1, netns, ip, cid: "cid-hp".into() };
    s.serve(&hp, "tcp", 8080)?;
    let red1 = s.add_pod(1, "red", "red1")?;
    let blue1 = s.add_pod(1, "blue", "blue1")?;
    let blue2 = s.add_pod(2, "blue", "blue2")?;
    let n1 = s.lab.node(1).ip.clone();
    let a = wait_answer(&s.lab.ctl, "tcp", &n1, 30500, WITHIN)?.context("fabric host via hostPort")?;
    ensure!(a.starts_with("hp "), "{a}");
    ensure!(answer(&red1, "tcp", &n1, 30500)?.starts_with("hp "), "own tenant, same node");
    ensure!(
        answer(&blue2, "tcp", &n1, 30500)?.starts_with("hp "),
        "another node's pod, masqueraded by its node"
    );
    let a = answer(&blue1, "tcp", &n1, 30500)?;
    ensure!(
        a.starts_with("hp ") && peer_ip(&a) == "172.11.0.1",
        "another tenant's pod, masqueraded by portmap: {a}"
    );
    Ok(())
}

/// A UDP client of a ClusterIP whose endpoint has nothing on the port is
/// refused at once, as behind kube-proxy on any network: the endpoint's
/// ICMP port unreachable goes back through the node kernel, whose
/// conntrack turns it into one from the ClusterIP (delivered straight, it
/// names the endpoint's address, which the client never sent to, and the
/// client waits for its timeout; a resolver moves on to its next server
/// only then). Only the endpoint can have that done: another pod's forged
/// error about the same connection, from the client's node or over the
/// tunnel, is never turned into a refusal from the ClusterIP.
#[test]
fn lab_services_udp_to_a_closed_port_is_refused_and_only_by_its_endpoint() -> Result<()> {
    lab::needs_root!();
    let mut s = ServiceLab::start(2, &[("red", 100)], kubeadm_proxy())?;
    let ep1 = s.add_pod(1, "red", "ep1")?;
    let ep2 = s.add_pod(2, "red", "ep2")?;
    let client = s.add_pod(1, "red", "client")?;
    let mallory1 = s.add_pod(1, "red", "mallory1")?;
    let mallory2 = s.add_pod(2, "red", "mallory2")?;
    s.serve(&ep1, "udp", 5353)?;
    s.serve(&ep2, "udp", 5353)?;
    // Port 54 -> 5454, where nothing listens; 55 -> 5555, a sink.
    let ports = [("echo", "UDP", 53, 5353), ("closed", "UDP", 54, 5454), ("sink", "UDP", 55, 5555)];
    s.service("red", "local", "10.96.5.6", &ports, &[], Some(&[&ep1]))?;
    s.service("red", "remote", "10.96.5.5", &ports, &[], Some(&[&ep2]))?;
    s.proxy_synced()?;
    let _sink = lab::raw::UdpSink::start(&ep2.netns, &ep2.ip, 5555)?;
    // The client's refusals once it has `n`, or after 3 s (a convergence
    // wait: each of its asks waits 0.2 s for an answer).
    let refusals_reaching = |c: &lab::raw::UdpClient, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(3);
        while c.refusals() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        c.refusals()
    };
    for vip in ["10.96.5.6", "10.96.5.5"] {
        answer(&client, "udp", vip, 53)?;
        // The endpoint's own error, on its node (local) and across the tunnel.
        let refused = lab::raw::UdpClient::start(&client.netns, &client.ip, 40054, vip, 54)?;
        let got = refusals_reaching(&refused, 3);
        ensure!(got >= 3, "{vip}:54 from the client: {got} refusals, want 3 within 3 s");
        ensure!(refused.answers() == 0, "{vip}:54 answered");
    }
    // Forged: both mallories quote the client's real connection to the
    // sink (its conntrack entries exist: the client keeps asking).
    let sink_client = lab::raw::UdpClient::start(&client.netns, &client.ip, 40055, "10.96.5.5", 55)?;
    let client_ip: std::net::Ipv4Addr = client.ip.parse()?;
    let ep2_ip: std::net::Ipv4Addr = ep2.ip.parse()?;
    let quoted = lab::forge::udp(client_ip, ep2_ip, 40055, 5555, b"ask");
    // Port unreachable about that datagram, 20 times out of `from`'s eth0
    // with its own addresses.
    let port_unreachable_from = |from: &lab::cluster::CniPod| -> Result<()> {
        let ip: std::net::Ipv4Addr = from.ip.parse()?;
        let error = lab::forge::icmp_error(ip, client_ip, 3, 3, &quoted);
        let frame = lab::forge::ether(lab::forge::mac_for(ip), lab::forge::mac_for(client_ip), &error);
        lab::raw::send_frames(&from.netns, "eth0", &[frame], 20)
    };
    for m in [&mallory1, &mallory2] {
        port_unreachable_from(m)?;
    }
    std::thread::sleep(Duration::from_millis(500));
    ensure!(
        sink_client.refusals() == 0,
        "a forged port unreachable reached the client as a refusal from the ClusterIP ({} times)",
        sink_client.refusals()
    );
    // Control: the same error from the endpoint itself is one.
    port_unreachable_from(&ep2)?;
    ensure!(
        refusals_reaching(&sink_client, 1) > 0,
        "the endpoint's own error about the connection was not a refusal"
    );
    Ok(())
}
