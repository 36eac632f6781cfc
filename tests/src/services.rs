//! Services on the lab as a cluster runs them: the test apiserver holds the
//! Service and EndpointSlice objects, the kube-proxy stand-in
//! ([`crate::kube_proxy`]) turns them into each node's NAT rules, and the
//! agents (watching the apiserver) program the SERVICE table. Tests write
//! objects, never rules.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::cluster::{self, Agent, CniPod};
use crate::kube_api::KubeApi;
use crate::kube_proxy::{self, KubeProxy, ProxyConfig};
use crate::{Lab, Netns};

/// The cluster DNS service's address (kubeadm's default: the 10th of the range).
pub const KUBE_DNS_IP: &str = "10.96.0.10";

pub struct ServiceLab {
    /// Drops last: everything below runs inside its namespaces.
    pub agents: Vec<Agent>,
    pub proxy: Option<KubeProxy>,
    pub api: KubeApi,
    /// Servers started in pods (ended by PID on drop).
    servers: Vec<Child>,
    pub lab: Lab,
}

/// A port of a Service: (name, protocol "TCP"/"UDP", port, target port).
pub type PortSpec<'a> = (&'a str, &'a str, u16, u16);

impl ServiceLab {
    /// A multi-tenant `nodes`-node lab with the namespaces' VNIs in etcd, the
    /// apiserver, an agent per node watching it and kube-proxy with `proxy`.
    pub fn start(nodes: usize, vnis: &[(&str, u32)], proxy: ProxyConfig) -> Result<ServiceLab> {
        ServiceLab::start_with(nodes, vnis, proxy, &[])
    }

    /// [`ServiceLab::start`] with extra agent flags.
    pub fn start_with(
        nodes: usize,
        vnis: &[(&str, u32)],
        proxy: ProxyConfig,
        agent_flags: &[&str],
    ) -> Result<ServiceLab> {
        let lab = Lab::start(nodes)?;
        let api = cluster::start_kube_api(&lab)?;
        lab.put_network_config("k8s-ovs-multitenant")?;
        for i in 1..=nodes {
            lab.put_node_subnet(i)?;
        }
        for (ns, vni) in vnis {
            lab.put_netnamespace(ns, *vni)?;
        }
        let url = api.url();
        let flags = [&["--kube-url", url.as_str()][..], agent_flags].concat();
        let agents = (1..=nodes).map(|i| Agent::start(&lab, i, &flags)).collect::<Result<Vec<_>>>()?;
        let nodes_for_proxy = (1..=nodes).map(|i| (lab.node(i).netns.clone(), format!("n{i}"))).collect();
        let proxy = Some(KubeProxy::start(api.store(), nodes_for_proxy, proxy)?);
        Ok(ServiceLab { agents, proxy, api, servers: Vec::new(), lab })
    }

    pub fn add_pod(&mut self, node: usize, namespace: &str, name: &str) -> Result<CniPod> {
        cluster::add_pod(&mut self.lab, node, namespace, name)
    }

    /// Starts `lab-echo serve` in `pod` on `proto` ("tcp"/"udp") `port`,
    /// answering with the pod's name, and waits until it answers locally.
    pub fn serve(&mut self, pod: &CniPod, proto: &str, port: u16) -> Result<()> {
        self.servers.push(spawn_echo(&pod.netns, &pod.ip, proto, port, &pod.name)?);
        Ok(())
    }

    /// A Service `namespace/name` (see [`apply_service`]) and, when
    /// `endpoints` is given, its EndpointSlice as the EndpointSlice
    /// controller writes it for the pods its selector picks.
    pub fn service(
        &self,
        namespace: &str,
        name: &str,
        cluster_ip: &str,
        ports: &[PortSpec<'_>],
        node_ports: &[u16],
        endpoints: Option<&[&CniPod]>,
    ) -> Result<()> {
        apply_service(&self.api, (namespace, name), cluster_ip, ports, node_ports, endpoints.is_some())?;
        if let Some(eps) = endpoints {
            self.endpoints(namespace, name, ports, eps)?;
        }
        Ok(())
    }

    /// Writes the EndpointSlice of `namespace/name` with `pods` as its ready
    /// endpoints (by hand for a selector-less Service, as an operator does).
    pub fn endpoints(
        &self,
        namespace: &str,
        name: &str,
        ports: &[PortSpec<'_>],
        pods: &[&CniPod],
    ) -> Result<()> {
        let nodes: Vec<String> = pods.iter().map(|p| format!("n{}", p.node)).collect();
        let eps: Vec<(&str, &str, &str)> =
            pods.iter().zip(&nodes).map(|(p, n)| (p.ip.as_str(), n.as_str(), p.name.as_str())).collect();
        apply_endpoints(&self.api, (namespace, name), ports, &eps)
    }

    /// Waits until kube-proxy has the rules of every object written so far.
    pub fn proxy_synced(&self) -> Result<()> {
        match &self.proxy {
            Some(p) => p.wait_synced(Duration::from_secs(10)),
            None => Ok(()),
        }
    }

    /// Starts dnsmasq in `pod`: the cluster DNS server (see [`spawn_dns`]).
    pub fn serve_dns(&mut self, pod: &CniPod, records: &[(&str, &str)]) -> Result<()> {
        self.servers.push(spawn_dns(&pod.netns, &pod.ip, records)?);
        Ok(())
    }
}

/// A Service `namespace/name` with `cluster_ip` and `ports`, as a user
/// applies it (type NodePort when `node_ports` gives a node port for
/// `ports[i]`; a selector when `selector`, else selector-less).
pub fn apply_service(
    api: &KubeApi,
    (namespace, name): (&str, &str),
    cluster_ip: &str,
    ports: &[PortSpec<'_>],
    node_ports: &[u16],
    selector: bool,
) -> Result<()> {
    let mut spec_ports = Vec::new();
    for (i, (pname, proto, port, target)) in ports.iter().enumerate() {
        let mut p = json!({"name": pname, "protocol": proto, "port": port, "targetPort": target});
        if let Some(np) = node_ports.get(i) {
            p["nodePort"] = json!(np);
        }
        spec_ports.push(p);
    }
    let typ = if node_ports.is_empty() { "ClusterIP" } else { "NodePort" };
    let mut spec = json!({"type": typ, "clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "ports": spec_ports,
                          "sessionAffinity": "None", "internalTrafficPolicy": "Cluster"});
    if typ == "NodePort" {
        spec["externalTrafficPolicy"] = json!("Cluster");
    }
    if selector {
        spec["selector"] = json!({"app": name});
    }
    api.apply(json!({"kind": "Service", "metadata": {"name": name, "namespace": namespace}, "spec": spec}))?;
    Ok(())
}

/// The EndpointSlice of `namespace/name`: `endpoints` (ip, node name, pod
/// name) ready at the ports' target ports.
pub fn apply_endpoints(
    api: &KubeApi,
    (namespace, name): (&str, &str),
    ports: &[PortSpec<'_>],
    endpoints: &[(&str, &str, &str)],
) -> Result<()> {
    let slice_ports: Vec<(&str, &str, u16)> = ports.iter().map(|(n, p, _, t)| (*n, *p, *t)).collect();
    api.apply(kube_proxy::endpoint_slice(namespace, name, endpoints, &slice_ports))?;
    Ok(())
}

/// Starts `lab-echo serve` in `netns` on `ip:port` answering as `name`,
/// once it answers locally. The caller ends the child.
pub fn spawn_echo(netns: &Netns, ip: &str, proto: &str, port: u16, name: &str) -> Result<Child> {
    let bin = cluster::bin("lab-echo")?.to_string_lossy().to_string();
    let addr = format!("{ip}:{port}");
    let argv = netns.wrap(&[&bin, "serve", proto, &addr, name]);
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start lab-echo")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while ask(netns, proto, ip, port)?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{name} did not start serving {proto} {addr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}

/// Starts dnsmasq in `netns` (UDP 53 on `ip`) answering `records` (name,
/// IPv4) and nothing else: the cluster DNS server behind kube-dns. The
/// caller ends the child.
pub fn spawn_dns(netns: &Netns, ip: &str, records: &[(&str, &str)]) -> Result<Child> {
    let mut args = vec![
        "dnsmasq".to_string(),
        "-k".into(),
        "--conf-file=/dev/null".into(),
        "--no-resolv".into(),
        "--no-hosts".into(),
        "--user=root".into(),
        "--bind-interfaces".into(),
        format!("--listen-address={ip}"),
        "--port=53".into(),
        "--pid-file=".into(),
    ];
    args.extend(records.iter().map(|(n, a)| format!("--host-record={n},{a}")));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let argv = netns.wrap(&argv);
    let child = Command::new(argv[0])
        .args(&argv[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start dnsmasq")?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(child)
}

impl Drop for ServiceLab {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.proxy = None;
    }
}

/// Points the pod's resolver at the cluster DNS service, as the kubelet
/// writes a pod's resolv.conf (`ip netns exec` bind-mounts it).
pub fn use_cluster_dns(pod: &Netns) -> Result<()> {
    let dir = std::path::Path::new("/etc/netns").join(&pod.name);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("resolv.conf"),
        format!("search svc.cluster.local cluster.local\nnameserver {KUBE_DNS_IP}\noptions ndots:5 timeout:1 attempts:2\n"),
    )?;
    Ok(())
}

/// Resolves `name` from inside `pod` with the C library's resolver (what
/// an application in the pod does); the address, or `None` if it failed.
pub fn resolve(pod: &Netns, name: &str) -> Result<Option<String>> {
    let out = pod.exec_full(&["getent", "ahostsv4", name], Duration::from_secs(10))?;
    Ok(out.success().then(|| out.stdout.split_whitespace().next().unwrap_or_default().to_string()))
}

/// One `lab-echo ask`: the answer line (`<server name> peer=<ip:port>`),
/// or `None` if nothing answered within a second.
pub fn ask(from: &Netns, proto: &str, ip: &str, port: u16) -> Result<Option<String>> {
    let bin = cluster::bin("lab-echo")?;
    let bin = bin.to_string_lossy().to_string();
    let addr = format!("{ip}:{port}");
    let out =
        from.exec_full(&[&bin, "ask", proto, &addr, "--timeout-ms", "1000"], Duration::from_secs(10))?;
    Ok(out.success().then(|| out.stdout.trim().to_string()))
}

/// Asks until an answer comes (the agent's watch and kube-proxy's sync
/// take a moment after an object is written), or `within` has passed.
pub fn wait_answer(
    from: &Netns,
    proto: &str,
    ip: &str,
    port: u16,
    within: Duration,
) -> Result<Option<String>> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(a) = ask(from, proto, ip, port)? {
            return Ok(Some(a));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
    }
}

/// UDP datagrams the namespace's stack has received (`Udp: InDatagrams` of
/// /proc/net/snmp): counts what reached a pod, whether or not it answered.
pub fn udp_received(pod: &Netns) -> Result<u64> {
    let snmp = pod.exec(&["cat", "/proc/net/snmp"])?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().context("no Udp header")?, udp.next().context("no Udp values")?);
    let i = names.split_whitespace().position(|n| n == "InDatagrams").context("no InDatagrams")?;
    values.split_whitespace().nth(i).context("short Udp line")?.parse().context("InDatagrams")
}

/// One UDP datagram of `size` bytes to `ip:port` (fragmented by the pod
/// above its MTU); the answer, if any came within a second.
pub fn ask_big_udp(from: &Netns, ip: &str, port: u16, size: usize) -> Result<Option<String>> {
    let bin = cluster::bin("lab-echo")?.to_string_lossy().to_string();
    let (addr, size) = (format!("{ip}:{port}"), size.to_string());
    let out = from.exec_full(
        &[&bin, "ask", "udp", &addr, "--size", &size, "--timeout-ms", "1000"],
        Duration::from_secs(10),
    )?;
    Ok(out.success().then(|| out.stdout.trim().to_string()))
}

/// Sends `n` datagrams to `ip:port` from `from` (answers are not awaited
/// beyond a moment: one-way traffic is what an attacker needs).
pub fn send_udp(from: &Netns, ip: &str, port: u16, n: u32) -> Result<()> {
    let bin = cluster::bin("lab-echo")?;
    let bin = bin.to_string_lossy().to_string();
    let addr = format!("{ip}:{port}");
    let count = n.to_string();
    from.exec_full(
        &[&bin, "ask", "udp", &addr, "--count", &count, "--timeout-ms", "50"],
        Duration::from_secs(30),
    )?;
    Ok(())
}
