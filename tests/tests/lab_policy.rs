//! NetworkPolicy (issue 16) on the whole system: a two-node lab, the
//! controller and an agent per node as binaries, the test apiserver holding
//! Namespaces, Pods (created before their CNI ADD and given their address
//! after it, as the kubelet does: `lab::kubelet`) and NetworkPolicies.
//!
//! - The truth table: for each set of policies, every pod (and each node,
//!   towards its own pods) probes every pod over TCP, UDP and ICMP; the
//!   measured matrix must equal the one `lab::policy_eval` computes from the
//!   stored objects and the VNIs (tenancy first, then both ends' policies).
//! - Atomic change: across 100 edits of a policy, no packet passes that
//!   neither version allows, and what both allow keeps passing.
//! - A new pod that a deny policy selects is never reachable, probed from
//!   before its ADD until well after it.
//!
//! Every address probed lives inside namespaces the test created (the new
//! pods' addresses are probed before the pods hold them: the agent's IPAM
//! hands out the next address round-robin, and the test checks it got it).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
// Servers started in pods, ended by PID when dropped (also on failure).
use lab::cluster::Children as Servers;
use lab::cluster::{ctl, start_controller, start_kube_api, Agent, CniPod, Daemon};
use lab::kube_api::{Kind, KubeApi};
use lab::kubelet::{self, ContainerPort};
use lab::policy_eval::{Cluster, End, Probe, Proto};
use lab::tenancy::vni_of;
use lab::traffic::{self, Prober};
use lab::{Lab, Netns};
use serde_json::{json, Value};

/// What every pod serves (one `lab-echo serve-many` per pod).
const TCP_PORTS: [u16; 5] = [53, 80, 81, 5001, 5003];
const UDP_PORTS: [u16; 2] = [53, 5001];
/// How long a probe waits for its answer; denied probes cost this much.
const PROBE_WAIT: Duration = Duration::from_millis(400);
/// An allowed probe that got no answer is tried again for this long (a
/// pod's first packet to a peer may wait for ARP, or for the other node's
/// first upcall); a denied probe that passes never gets a second look.
const RETRY_ALLOWED: Duration = Duration::from_secs(4);
/// Until the agents have applied a policy set; only turns a hang into a failure.
const CONVERGE: Duration = Duration::from_secs(60);

fn probes() -> Vec<Probe> {
    let mut v: Vec<Probe> = TCP_PORTS.iter().map(|p| Probe::tcp(*p)).collect();
    v.extend(UDP_PORTS.iter().map(|p| Probe::udp(*p)));
    v.push(Probe::icmp());
    v
}

/// Starts `lab-echo serve-many` in `netns` on `ip` (`0.0.0.0` before the
/// pod has an address) with every port of `TCP_PORTS` and `UDP_PORTS`.
fn spawn_server(netns: &Netns, ip: &str, name: &str) -> Result<Child> {
    let bin = lab::cluster::bin("lab-echo")?.to_string_lossy().into_owned();
    let mut args = vec![bin, "serve-many".into(), ip.into(), name.into()];
    args.extend(TCP_PORTS.iter().map(|p| format!("tcp/{p}")));
    args.extend(UDP_PORTS.iter().map(|p| format!("udp/{p}")));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let argv = netns.wrap(&argv);
    Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start lab-echo serve-many")
}

/// A NetworkPolicy object.
fn np(namespace: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": namespace}, "spec": spec})
}

/// The source of a probe: a pod (index into `World::pods`) or a node
/// (1-based), which probes only its own pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Src {
    Pod(usize),
    Node(usize),
}

/// (source, destination pod, probe).
type Key = (Src, usize, Probe);
/// Key -> reached (or, from the evaluator, allowed).
type Table = BTreeMap<Key, bool>;

struct World {
    servers: Servers,
    agents: Vec<Agent>,
    _controller: Daemon,
    api: KubeApi,
    pods: Vec<CniPod>,
    vnis: BTreeMap<String, u32>,
    lab: Lab,
}

impl World {
    /// A two-node lab with the apiserver (nodes, and `namespaces` with their
    /// labels), the controller and an agent per node watching the apiserver.
    fn start(namespaces: &[(&str, Value)]) -> Result<World> {
        let lab = Lab::start(2)?;
        let api = start_kube_api(&lab)?;
        for n in &lab.nodes {
            api.create_node(&format!("n{}", n.index), &n.ip)?;
        }
        for (ns, labels) in namespaces {
            api.create(json!({"kind": "Namespace", "metadata": {"name": ns, "labels": labels},
                              "spec": {}, "status": {"phase": "Active"}}))?;
        }
        let url = api.url();
        let controller = start_controller(&lab, &url, "c1", &[])?;
        let agents =
            (1..=2).map(|i| Agent::start(&lab, i, &["--kube-url", &url])).collect::<Result<Vec<_>>>()?;
        let mut vnis = BTreeMap::new();
        for (ns, _) in namespaces {
            vnis.insert(ns.to_string(), vni_of(&lab, ns)?);
        }
        Ok(World {
            servers: Servers::default(),
            agents,
            _controller: controller,
            api,
            pods: Vec::new(),
            vnis,
            lab,
        })
    }

    /// Re-reads the VNIs from etcd (after a join).
    fn read_vnis(&mut self) -> Result<()> {
        for (ns, vni) in self.vnis.iter_mut() {
            *vni = vni_of(&self.lab, ns)?;
        }
        Ok(())
    }

    /// Runs a pod through the kubelet helper and starts its server; its index.
    fn run(
        &mut self,
        node: usize,
        ns: &str,
        name: &str,
        labels: Value,
        ports: &[ContainerPort<'_>],
    ) -> Result<usize> {
        let pod = kubelet::run_pod(&mut self.lab, &self.api, node, ns, name, &labels, ports)
            .with_context(|| format!("agent n{node}: {}", self.agents[node - 1].log_tail()))?;
        self.servers.0.push(spawn_server(&pod.netns, &pod.ip, name)?);
        let deadline = Instant::now() + Duration::from_secs(5);
        while lab::services::ask(&pod.netns, "tcp", &pod.ip, 80)?.is_none() {
            ensure!(Instant::now() < deadline, "{name}'s server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.pods.push(pod);
        Ok(self.pods.len() - 1)
    }

    fn idx(&self, name: &str) -> usize {
        self.pods.iter().position(|p| p.name == name).unwrap_or_else(|| panic!("no pod {name}"))
    }

    fn ip(&self, name: &str) -> &str {
        &self.pods[self.idx(name)].ip
    }

    /// Replaces every NetworkPolicy with `set`.
    fn apply(&self, set: &[Value]) -> Result<()> {
        for p in self.api.objects(Kind::NetworkPolicy) {
            let (ns, name) = (p["metadata"]["namespace"].as_str(), p["metadata"]["name"].as_str());
            self.api.delete(Kind::NetworkPolicy, ns, name.unwrap_or_default())?;
        }
        for p in set {
            self.api.create(p.clone())?;
        }
        Ok(())
    }

    /// Every (source, destination) pair probed: pod to every other pod,
    /// each node to its own pods.
    fn pairs(&self) -> Vec<(Src, usize)> {
        let n = self.pods.len();
        let mut v: Vec<(Src, usize)> =
            (0..n).flat_map(|a| (0..n).filter(move |b| *b != a).map(move |b| (Src::Pod(a), b))).collect();
        for node in 1..=2 {
            v.extend((0..n).filter(|b| self.pods[*b].node == node).map(|b| (Src::Node(node), b)));
        }
        v
    }

    fn src_name(&self, s: Src) -> String {
        match s {
            Src::Pod(i) => self.pods[i].name.clone(),
            Src::Node(i) => format!("node n{i}"),
        }
    }

    fn src_netns(&self, s: Src) -> &Netns {
        match s {
            Src::Pod(i) => &self.pods[i].netns,
            Src::Node(i) => &self.lab.node(i).netns,
        }
    }

    /// The evaluator's table, from the objects the apiserver holds now.
    fn expected(&self) -> Result<Table> {
        let namespaces = self.api.objects(Kind::Namespace);
        let policies = self.api.objects(Kind::NetworkPolicy);
        let pods: Vec<Value> = self
            .pods
            .iter()
            .map(|p| self.api.get(Kind::Pod, Some(&p.namespace), &p.name).context("pod object"))
            .collect::<Result<_>>()?;
        let cluster = Cluster { namespaces: &namespaces, policies: &policies, vnis: &self.vnis };
        let node_names = ["n1".to_string(), "n2".to_string()];
        let mut t = Table::new();
        for (src, dst) in self.pairs() {
            let from = match src {
                Src::Pod(i) => End::Pod(&pods[i]),
                Src::Node(i) => End::Node { name: &node_names[i - 1], ip: self.lab.node(i).ip.parse()? },
            };
            for probe in probes() {
                t.insert((src, dst, probe), cluster.allowed(from, End::Pod(&pods[dst]), probe));
            }
        }
        Ok(t)
    }

    /// Probes every pair with every probe, all at once (a thread per probe,
    /// inside the source's namespace): one measurement costs about one
    /// denied probe's wait.
    fn measure(&self, want: &Table) -> Result<Table> {
        let keys: Vec<Key> = self
            .pairs()
            .into_iter()
            .flat_map(|(src, dst)| probes().into_iter().map(move |p| (src, dst, p)))
            .collect();
        std::thread::scope(|s| {
            let handles: Vec<_> = keys
                .iter()
                .map(|&key| {
                    let (src, dst, probe) = key;
                    let netns = self.src_netns(src);
                    let ip = self.pods[dst].ip.as_str();
                    s.spawn(move || -> Result<(Key, bool)> {
                        netns.enter_this_thread()?;
                        let mut got = probe_once(netns, ip, probe)?;
                        let until = Instant::now() + RETRY_ALLOWED;
                        while !got && want.get(&key) == Some(&true) && Instant::now() < until {
                            got = probe_once(netns, ip, probe)?;
                        }
                        Ok((key, got))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().map_err(|_| anyhow::anyhow!("probe thread panicked"))?)
                .collect()
        })
    }

    /// Polls the matrix until it equals the evaluator's, then measures it
    /// once more and requires it equal.
    fn converge(&self, label: &str, set: &[Value]) -> Result<()> {
        let t = Instant::now();
        let want = self.expected()?;
        let mut polls = 0;
        loop {
            polls += 1;
            let got = self.measure(&want)?;
            if got == want {
                break;
            }
            let wrong: Vec<String> = want
                .iter()
                .filter(|(k, v)| got.get(k) != Some(v))
                .map(|(k, v)| {
                    format!(
                        "{}->{} {}{}",
                        self.src_name(k.0),
                        self.pods[k.1].name,
                        k.2,
                        if *v { "X" } else { "!" }
                    )
                })
                .collect();
            eprintln!(
                "{label}: poll {polls}: {} differ: {}",
                wrong.len(),
                wrong.iter().take(6).cloned().collect::<Vec<_>>().join(" ")
            );
            if t.elapsed() > CONVERGE {
                let report = format!(
                    "{}{}{}{}",
                    self.render(&want, &got, set),
                    self.conntrack_of(&want, &got),
                    self.datapath_flows_of(&want, &got),
                    self.fresh_traces(&want, &got)
                );
                // Whether the switches' datapath flow caches hold the
                // difference (their OpenFlow tables being right): purged,
                // every packet is classified again. The test fails either way.
                for node in 1..=2 {
                    let _ = self.lab.node(node).ovs.appctl(&["revalidator/purge"]);
                }
                let after = self.measure(&want)?;
                let left = want.iter().filter(|(k, v)| after.get(k) != Some(v)).count();
                bail!(
                    "{label}: the measured matrix differs from the evaluator's after {:?} ({polls} polls); \
                     after purging the datapath flow caches (revalidator/purge) {left} probes differ\n{report}",
                    t.elapsed()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let settled = t.elapsed();
        let got = self.measure(&want)?;
        ensure!(
            got == want,
            "{label}: the matrix matched, then differed on the next measurement\n{}",
            self.render(&want, &got, set)
        );
        let allowed = want.values().filter(|v| **v).count();
        eprintln!(
            "{label}: {} probes ({allowed} allowed) equal the evaluator's after {settled:?} ({polls} polls), confirmed in {:?}",
            want.len(),
            t.elapsed() - settled
        );
        Ok(())
    }

    /// The (source, destination) addresses of the pod pairs that differ.
    fn differing_ends(&self, want: &Table, got: &Table) -> Vec<(String, String)> {
        want.iter()
            .filter(|(k, v)| got.get(k) != Some(v))
            .filter_map(|(k, _)| match k.0 {
                Src::Pod(a) => Some((self.pods[a].ip.clone(), self.pods[k.1].ip.clone())),
                Src::Node(_) => None,
            })
            .collect()
    }

    /// `ofproto/trace` on the source's node of a new packet of the first
    /// differing probes (pod sources), conntrack's answer `trk,new`: what
    /// the OpenFlow tables decide for a packet no cache has seen.
    fn fresh_traces(&self, want: &Table, got: &Table) -> String {
        let mut out = String::from("\nofproto/trace of new packets of differing probes:\n");
        let differing = want.iter().filter(|(k, v)| got.get(k) != Some(v));
        for (&(src, dst, probe), _) in differing.take(4) {
            let Src::Pod(src) = src else { continue };
            let (a, b) = (&self.pods[src], &self.pods[dst]);
            let verdict = (|| -> Result<String> {
                let ovs = &self.lab.node(a.node).ovs;
                let ifaces = ovs.vsctl(&[
                    "--format=csv",
                    "--no-headings",
                    "--columns=name,external_ids",
                    "list",
                    "Interface",
                ])?;
                let name = ifaces
                    .lines()
                    .find(|l| {
                        l.contains(&format!("\"{}\"", a.ip))
                            || l.contains(&format!("={},", a.ip))
                            || l.contains(&format!("={}\"", a.ip))
                    })
                    .and_then(|l| l.split(',').next())
                    .context("no interface with the pod's address")?
                    .trim_matches('"')
                    .to_string();
                let mac =
                    |n: &Netns| n.exec(&["cat", "/sys/class/net/eth0/address"]).map(|m| m.trim().to_string());
                let (proto, l4) = match probe.proto {
                    Proto::Icmp => ("icmp", "icmp_type=8".to_string()),
                    Proto::Tcp => ("tcp", format!("tp_dst={}", probe.port)),
                    Proto::Udp => ("udp", format!("tp_dst={}", probe.port)),
                    Proto::Sctp => ("sctp", format!("tp_dst={}", probe.port)),
                };
                let flow = format!(
                    "in_port={name},{proto},dl_src={},dl_dst={},nw_src={},nw_dst={},nw_ttl=64,{l4}",
                    mac(&a.netns)?,
                    mac(&b.netns)?,
                    a.ip,
                    b.ip
                );
                let t = ovs.appctl(&["ofproto/trace", "br0", &flow, "--ct-next", "trk,new"])?;
                Ok(t.lines().filter(|l| l.starts_with("Datapath actions")).collect::<Vec<_>>().join(" | "))
            })()
            .unwrap_or_else(|e| format!("{e:#}"));
            out += &format!("  {} -> {} {probe} on n{}: {verdict}\n", a.name, b.name, a.node);
        }
        out
    }

    /// Each node's datapath flows between the ends of the pairs that differ.
    fn datapath_flows_of(&self, want: &Table, got: &Table) -> String {
        let ips = self.differing_ends(want, got);
        let mut out = String::new();
        for node in 1..=2 {
            let dump =
                self.lab.node(node).ovs.appctl(&["dpctl/dump-flows"]).unwrap_or_else(|e| format!("{e:#}"));
            let upcalls =
                self.lab.node(node).ovs.appctl(&["upcall/show"]).unwrap_or_else(|e| format!("{e:#}"));
            out += &format!("\nupcall/show on n{node}:\n{upcalls}");
            out += &format!("\ndatapath flows of n{node} between differing pairs:\n");
            for line in dump.lines() {
                // The pair's flows, and its source's flows before conntrack
                // (recirc_id(0): they name the recirculation the packet resumes in).
                let pair = |(a, b): &(String, String)| {
                    line.contains(&format!("src={a}"))
                        && (line.contains(&format!("dst={b}")) || line.contains("recirc_id(0),"))
                };
                if !line.contains("tunnel(") && ips.iter().any(pair) {
                    out += line;
                    out += "\n";
                }
            }
        }
        out
    }

    /// Each node's conntrack entries between the ends of the pairs that
    /// differ (what a reply-direction pass would come from).
    fn conntrack_of(&self, want: &Table, got: &Table) -> String {
        let ips = self.differing_ends(want, got);
        let mut out = String::new();
        for node in 1..=2 {
            for table in ["36", "62"] {
                let flows = self.lab.node(node).ovs.ofctl("dump-flows", "br0", &[&format!("table={table}")]);
                out += &format!("\nn{node} table {table}:\n{}", flows.unwrap_or_else(|e| format!("{e:#}")));
            }
            let dump = self
                .lab
                .node(node)
                .ovs
                .appctl(&["dpctl/dump-conntrack"])
                .unwrap_or_else(|e| format!("{e:#}"));
            out += &format!("\nconntrack of n{node} between differing pairs:\n");
            for line in dump.lines() {
                if ips
                    .iter()
                    .any(|(a, b)| line.contains(&format!("={a},")) && line.contains(&format!("={b},")))
                {
                    out += line;
                    out += "\n";
                }
            }
        }
        out
    }

    /// The tables that differ, one per probe: rows are sources, columns
    /// destinations; `1` allowed and reached, `.` denied and not reached,
    /// `X` allowed but not reached, `!` denied but reached.
    fn render(&self, want: &Table, got: &Table, set: &[Value]) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(out, "policies:");
        for p in self.api.objects(Kind::NetworkPolicy) {
            let (ns, name) = (&p["metadata"]["namespace"], &p["metadata"]["name"]);
            let _ = writeln!(
                out,
                "  {}/{} {}",
                ns.as_str().unwrap_or_default(),
                name.as_str().unwrap_or_default(),
                p["spec"]
            );
        }
        if set.is_empty() {
            let _ = writeln!(out, "  (none)");
        }
        let _ = writeln!(out, "VNIs: {:?}", self.vnis);
        let _ = writeln!(
            out,
            "pods: {}",
            self.pods
                .iter()
                .map(|p| format!("{}/{}={}@n{}", p.namespace, p.name, p.ip, p.node))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let srcs: Vec<Src> = (0..self.pods.len()).map(Src::Pod).chain([Src::Node(1), Src::Node(2)]).collect();
        let mut wrong = Vec::new();
        for probe in probes() {
            let differs = want.iter().any(|(k, v)| k.2 == probe && got.get(k) != Some(v));
            if !differs {
                continue;
            }
            let _ = writeln!(out, "\n{probe} (1 allowed+reached, . denied+not reached, X allowed but not reached, ! denied but reached)");
            let _ = write!(out, "{:>10} ", "from\\to");
            for p in &self.pods {
                let _ = write!(out, "{:>8}", p.name);
            }
            let _ = writeln!(out);
            for &src in &srcs {
                let _ = write!(out, "{:>10} ", self.src_name(src));
                for dst in 0..self.pods.len() {
                    let key = (src, dst, probe);
                    let cell = match (want.get(&key), got.get(&key)) {
                        (Some(true), Some(true)) => "1",
                        (Some(false), Some(false)) => ".",
                        (Some(true), _) => "X",
                        (Some(false), _) => "!",
                        _ => " ",
                    };
                    let _ = write!(out, "{cell:>8}");
                }
                let _ = writeln!(out);
            }
            for (k, v) in want.iter().filter(|(k, v)| k.2 == probe && got.get(k) != Some(v)) {
                wrong.push(format!(
                    "{} -> {} ({}) {probe}: the rules say {}, measured {}",
                    self.src_name(k.0),
                    self.pods[k.1].name,
                    self.pods[k.1].ip,
                    if *v { "allowed" } else { "denied" },
                    if *v { "not reached" } else { "reached" }
                ));
            }
        }
        let _ = writeln!(out, "\n{} differences:\n{}", wrong.len(), wrong.join("\n"));
        out
    }
}

/// One probe from the calling thread's namespace: whether it was answered
/// (a refusal counts as reached: the packet got to the pod).
fn probe_once(netns: &Netns, ip: &str, probe: Probe) -> Result<bool> {
    let addr = SocketAddr::new(ip.parse::<IpAddr>()?, probe.port);
    Ok(match probe.proto {
        Proto::Tcp => match TcpStream::connect_timeout(&addr, PROBE_WAIT) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        },
        Proto::Udp => {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(PROBE_WAIT))?;
            s.connect(addr)?;
            s.send(b"probe\n")?;
            let mut buf = [0u8; 512];
            match s.recv(&mut buf) {
                Ok(_) => true,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
            }
        }
        Proto::Icmp => {
            let w = format!("{:.1}", PROBE_WAIT.as_secs_f64());
            netns.exec_full(&["ping", "-n", "-q", "-c", "1", "-W", &w, ip], Duration::from_secs(5))?.success()
        }
        Proto::Sctp => bail!("no SCTP probes"),
    })
}

/// The container ports of a truth-table pod: `http` is 80 on node 1's pods
/// and 81 on node 2's (a named port resolves per destination pod).
fn ports_of(node: usize) -> Vec<ContainerPort<'static>> {
    let (http, other) = if node == 1 { (80, 81) } else { (81, 80) };
    vec![
        (Some("dns"), "UDP", 53),
        (Some("dns-tcp"), "TCP", 53),
        (Some("http"), "TCP", http),
        (None, "TCP", other),
        (None, "TCP", 5001),
        (None, "TCP", 5003),
        (None, "UDP", 5001),
    ]
}

fn name_is(ns: &str) -> Value {
    json!({"matchLabels": {"kubernetes.io/metadata.name": ns}})
}

/// The policy sets of the truth table: (what it shows, its policies).
/// Pods: `<ns><node><a|b>`, `a` role=client, `b` role=server; coredns in
/// kube-system (global). Namespaces: red tier=front, blue and green
/// tier=back; red joined to blue, green on a VNI of its own.
fn policy_sets(w: &World) -> Vec<(&'static str, Vec<Value>)> {
    let deny_ingress =
        |ns: &str| np(ns, "deny-ingress", json!({"podSelector": {}, "policyTypes": ["Ingress"]}));
    vec![
        ("default deny ingress (red)", vec![deny_ingress("red")]),
        (
            "default deny egress with DNS allowed (blue)",
            vec![np(
                "blue",
                "deny-egress-but-dns",
                json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{
                    "to": [{"namespaceSelector": name_is("kube-system"),
                            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]}),
            )],
        ),
        (
            "allow from the same namespace (green, red)",
            vec![
                np("green", "same-ns", json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]})),
                np("red", "same-ns", json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]})),
            ],
        ),
        (
            "allow from a namespace label: red from tier=back (blue joined, green another VNI)",
            vec![np(
                "red",
                "from-back",
                json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"tier": "back"}}}]}]}),
            )],
        ),
        (
            "pod and namespace selector combined (blue servers), and as two peers (red servers)",
            vec![
                np(
                    "blue",
                    "front-clients",
                    json!({"podSelector": {"matchLabels": {"role": "server"}}, "ingress": [{"from": [{
                        "namespaceSelector": {"matchLabels": {"tier": "front"}},
                        "podSelector": {"matchLabels": {"role": "client"}}}]}]}),
                ),
                np(
                    "red",
                    "back-or-clients",
                    json!({"podSelector": {"matchLabels": {"role": "server"}}, "ingress": [{"from": [
                        {"namespaceSelector": {"matchLabels": {"tier": "back"}}},
                        {"podSelector": {"matchLabels": {"role": "client"}}}]}]}),
                ),
            ],
        ),
        (
            "ipBlock with except: red from node 1's pods but blue1a, blue to node 2's pods but red2b",
            vec![
                np(
                    "red",
                    "from-node1",
                    json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {
                        "cidr": lab::cluster::node_subnet(1), "except": [format!("{}/32", w.ip("blue1a"))]}}]}]}),
                ),
                np(
                    "blue",
                    "to-node2",
                    json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {
                        "cidr": lab::cluster::node_subnet(2), "except": [format!("{}/32", w.ip("red2b"))]}}]}]}),
                ),
            ],
        ),
        (
            "named ports: into red on http (80 on n1, 81 on n2); green out to dns/UDP and http only",
            vec![
                np("red", "http", json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "TCP", "port": "http"}]}]})),
                np(
                    "green",
                    "out-named",
                    json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [
                        {"protocol": "UDP", "port": "dns"}, {"protocol": "TCP", "port": "http"}]}]}),
                ),
            ],
        ),
        (
            "endPort range: into blue on TCP 5000-5002 only",
            vec![np(
                "blue",
                "range",
                json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "TCP", "port": 5000, "endPort": 5002}]}]}),
            )],
        ),
        (
            "a policy in a joined namespace: blue only from its clients; red clients out to blue only",
            vec![
                np(
                    "blue",
                    "own-clients",
                    json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]}),
                ),
                np(
                    "red",
                    "clients-to-blue",
                    json!({"podSelector": {"matchLabels": {"role": "client"}}, "policyTypes": ["Egress"],
                           "egress": [{"to": [{"namespaceSelector": name_is("blue")}]}]}),
                ),
            ],
        ),
        (
            "policies naming a namespace of another VNI: red from green, green from and to red",
            vec![
                np("red", "from-green", json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": name_is("green")}]}]})),
                np(
                    "green",
                    "red-only",
                    json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                           "ingress": [{"from": [{"namespaceSelector": name_is("red"), "podSelector": {}}]}],
                           "egress": [{"to": [{"namespaceSelector": name_is("red")}]}]}),
                ),
            ],
        ),
        (
            "global namespaces keep their meaning: green from kube-system; kube-system from tier=back",
            vec![
                np("green", "from-global", json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": name_is("kube-system")}]}]})),
                np(
                    "kube-system",
                    "from-back",
                    json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"tier": "back"}}}]}]}),
                ),
            ],
        ),
        (
            "empty versus absent, additive: green none but servers from all; red in on 80 and dns/UDP, out to red",
            vec![
                np("green", "none", json!({"podSelector": {}, "ingress": []})),
                np("green", "servers-open", json!({"podSelector": {"matchLabels": {"role": "server"}}, "ingress": [{}]})),
                np(
                    "red",
                    "narrow",
                    json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                           "ingress": [{"ports": [{"port": 80}, {"protocol": "UDP", "port": 53}]}],
                           "egress": [{"to": [{"podSelector": {}}], "ports": []}]}),
                ),
            ],
        ),
    ]
}

#[test]
fn lab_policy_truth_table_equals_the_kubernetes_rules() -> Result<()> {
    lab::needs_root!();
    let t0 = Instant::now();
    let mut w = World::start(&[
        ("red", json!({"tier": "front"})),
        ("blue", json!({"tier": "back"})),
        ("green", json!({"tier": "back"})),
        ("kube-system", json!({})),
    ])?;
    let (code, out, err) = ctl(&w.lab, &["join", "red", "--to", "blue", "--wait"])?;
    ensure!(code == Some(0), "join red to blue: {out} {err}");
    w.read_vnis()?;
    let v = w.vnis.clone();
    ensure!(
        v["red"] == v["blue"] && v["green"] != v["red"] && v["green"] != 0 && v["kube-system"] == 0,
        "VNIs: {v:?}"
    );
    for node in 1..=2 {
        for ns in ["red", "blue", "green"] {
            for (k, role) in [("a", "client"), ("b", "server")] {
                let name = format!("{ns}{node}{k}");
                w.run(node, ns, &name, json!({"role": role, "pod": name}), &ports_of(node))?;
            }
        }
    }
    w.run(2, "kube-system", "coredns", json!({"k8s-app": "kube-dns"}), &ports_of(2))?;
    eprintln!("lab with {} pods up in {:?}", w.pods.len(), t0.elapsed());

    w.converge("no policies (tenancy only)", &[])?;
    // K8S_OVS_POLICY_SETS=<text>|<text>...: only the sets whose label
    // contains one of them (to chase one).
    let only = std::env::var("K8S_OVS_POLICY_SETS").unwrap_or_default();
    let chosen = |l: &str| only.split('|').any(|o| l.contains(o));
    for (label, set) in policy_sets(&w).into_iter().filter(|(l, _)| chosen(l)) {
        w.apply(&set)?;
        w.converge(label, &set)?;
    }
    w.apply(&[])?;
    w.converge("all policies deleted", &[])?;
    eprintln!("truth table done in {:?}", t0.elapsed());
    Ok(())
}

/// A policy `flip` on the target: ingress from pods whose `grp` is in `groups`.
fn flip(groups: &[&str]) -> Value {
    np(
        "flip",
        "flip",
        json!({"podSelector": {"matchLabels": {"role": "target"}}, "ingress": [{"from": [{"podSelector":
            {"matchExpressions": [{"key": "grp", "operator": "In", "values": groups}]}}]}]}),
    )
}

/// Waits until `from` -> `to` (ping) is `reach`.
fn wait_ping(from: &CniPod, to: &CniPod, reach: bool) -> Result<()> {
    match traffic::time_until(&from.netns, &to.ip, reach, Instant::now(), CONVERGE)? {
        Some(_) => Ok(()),
        None => bail!("{} -> {}: reach={reach} not seen within {CONVERGE:?}", from.name, to.name),
    }
}

#[test]
fn lab_policy_edits_never_pass_what_neither_version_allows() -> Result<()> {
    lab::needs_root!();
    let mut w = World::start(&[("flip", json!({}))])?;
    let target = w.run(2, "flip", "target", json!({"role": "target"}), &[])?;
    let mut src = BTreeMap::new();
    for (node, grp) in [(1, "a"), (2, "b"), (1, "c"), (1, "both"), (2, "both2")] {
        let label = if grp == "both2" { "both" } else { grp };
        src.insert(grp, w.run(node, "flip", &format!("src-{grp}"), json!({"grp": label}), &[])?);
    }
    let pod = |k: &str| &w.pods[src[k]];
    let target = &w.pods[target];
    wait_ping(pod("c"), target, true)?;
    w.api.create(flip(&["a", "both"]))?;
    wait_ping(pod("c"), target, false)?;
    wait_ping(pod("b"), target, false)?;
    wait_ping(pod("a"), target, true)?;
    wait_ping(pod("both"), target, true)?;
    wait_ping(pod("both2"), target, true)?;

    let probers: Vec<(&str, Prober)> = ["a", "b", "c", "both", "both2"]
        .into_iter()
        .map(|k| Ok((k, Prober::start(&pod(k).netns, &target.ip)?)))
        .collect::<Result<_>>()?;
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    for i in 0..100u64 {
        let groups: &[&str] = if i % 2 == 0 { &["b", "both"] } else { &["a", "both"] };
        let mut p = w.api.get(Kind::NetworkPolicy, Some("flip"), "flip").context("the policy")?;
        p["spec"] = flip(groups)["spec"].clone();
        w.api.update(p)?;
        // 60-140 ms between edits: some land while the last is being applied.
        std::thread::sleep(Duration::from_millis(60 + (i * 37) % 80));
    }
    eprintln!("100 edits in {:?}", t.elapsed());
    std::thread::sleep(Duration::from_millis(500));
    let mut counts = BTreeMap::new();
    for (k, p) in probers {
        let (sent, received) = p.finish()?;
        eprintln!("prober src-{k} -> target: {sent} sent, {received} answered");
        counts.insert(k, (sent, received));
    }
    let (sent, received) = counts["c"];
    ensure!(received == 0, "{received} of {sent} pings that neither version allows reached the target");
    ensure!(sent >= 300, "the prober of src-c sent only {sent}");
    for k in ["both", "both2"] {
        let (sent, received) = counts[k];
        // The last probe may still be in flight when the prober is stopped.
        ensure!(
            sent >= 500 && sent - received <= 1,
            "src-{k}, allowed throughout: {received} of {sent} answered"
        );
    }
    for k in ["a", "b"] {
        let (sent, received) = counts[k];
        ensure!(
            received > 0 && received < sent,
            "src-{k} allowed half of the time: {received} of {sent} answered"
        );
    }
    // The last edit allowed a: it reaches the target, b does not.
    wait_ping(pod("a"), target, true)?;
    wait_ping(pod("b"), target, false)?;
    ensure!(
        traffic::unreachable(&pod("b").netns, &target.ip, 3)?,
        "src-b reaches the target after the last edit"
    );
    Ok(())
}

/// Probes `ip`:80 over TCP from `netns` every few ms until `stop`; counts
/// the connections made.
fn tcp_prober<'s>(
    s: &'s std::thread::Scope<'s, '_>,
    netns: &'s Netns,
    ip: String,
    stop: &'s AtomicBool,
    hits: &'s AtomicU32,
) -> std::thread::ScopedJoinHandle<'s, Result<u32>> {
    s.spawn(move || -> Result<u32> {
        netns.enter_this_thread()?;
        let addr = SocketAddr::new(ip.parse()?, 80);
        let mut tries = 0;
        while !stop.load(Ordering::Relaxed) {
            tries += 1;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                hits.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(tries)
    })
}

/// The address after `ip` (the IPAM's next round-robin pick on its node).
fn next_ip(ip: &str) -> Result<String> {
    let a: std::net::Ipv4Addr = ip.parse()?;
    Ok(std::net::Ipv4Addr::from(u32::from(a) + 1).to_string())
}

#[test]
fn lab_policy_a_new_pod_a_deny_policy_selects_is_never_reachable() -> Result<()> {
    lab::needs_root!();
    let mut w = World::start(&[("locked", json!({})), ("free", json!({}))])?;
    let src = w.run(1, "locked", "src", json!({"app": "client"}), &[])?;
    let fsrc = w.run(1, "free", "fsrc", json!({"app": "client"}), &[])?;
    let guard1 = w.run(1, "locked", "guard1", json!({"app": "guarded"}), &[])?;
    let guard2 = w.run(2, "locked", "guard2", json!({"app": "guarded"}), &[])?;
    w.api.create(np(
        "locked",
        "deny-guarded",
        json!({"podSelector": {"matchLabels": {"app": "guarded"}}, "policyTypes": ["Ingress"]}),
    ))?;
    // Both agents have the policy once the existing guarded pods are closed.
    wait_ping(&w.pods[src], &w.pods[guard1], false)?;
    wait_ping(&w.pods[src], &w.pods[guard2], false)?;

    // The new pods' addresses, before they exist; each sandbox serves TCP
    // (on every address) before its ADD.
    let new1_ip = next_ip(&w.pods[guard1].ip)?;
    let new2_ip = next_ip(&w.pods[guard2].ip)?;
    let late_ip = next_ip(&new2_ip)?;
    let mut sandboxes = Vec::new();
    for name in ["new1", "new2", "late"] {
        let netns = w.lab.pod_netns(name)?;
        w.servers.0.push(spawn_server(&netns, "0.0.0.0", name)?);
        sandboxes.push(netns);
    }
    let late = sandboxes.pop().context("late")?;
    let new2 = sandboxes.pop().context("new2")?;
    let new1 = sandboxes.pop().context("new1")?;

    let stop = AtomicBool::new(false);
    let hits = [AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)];
    let (src_pod, fsrc_pod) = (w.pods[src].clone(), w.pods[fsrc].clone());
    let pings = [
        Prober::start(&src_pod.netns, &new1_ip)?,
        Prober::start(&src_pod.netns, &new2_ip)?,
        Prober::start(&fsrc_pod.netns, &late_ip)?,
    ];
    let added = std::thread::scope(|s| -> Result<Vec<CniPod>> {
        let tcp = [
            tcp_prober(s, &src_pod.netns, new1_ip.clone(), &stop, &hits[0]),
            tcp_prober(s, &src_pod.netns, new2_ip.clone(), &stop, &hits[1]),
            tcp_prober(s, &fsrc_pod.netns, late_ip.clone(), &stop, &hits[2]),
        ];
        let result = (|| -> Result<Vec<CniPod>> {
            std::thread::sleep(Duration::from_millis(500));
            let guarded = json!({"app": "guarded"});
            let mut added = Vec::new();
            for (node, ns, netns, name, labels) in [
                (1, "locked", new1, "new1", &guarded),
                (2, "locked", new2, "new2", &guarded),
                (2, "free", late, "late", &json!({"app": "guarded"})),
            ] {
                let pod = kubelet::run_pod_in(
                    &w.lab,
                    &w.api,
                    node,
                    netns,
                    ns,
                    name,
                    labels,
                    &[(Some("http"), "TCP", 80)],
                )?;
                added.push(pod);
            }
            // Well after the ADDs: long enough for the control to answer
            // (its sender's ARP retry included).
            std::thread::sleep(Duration::from_secs(5));
            Ok(added)
        })();
        stop.store(true, Ordering::Relaxed);
        for h in tcp {
            let tries = h.join().map_err(|_| anyhow::anyhow!("tcp prober panicked"))??;
            ensure!(tries > 20, "a TCP prober made only {tries} tries");
        }
        result
    })?;
    let [p1, p2, p3] = pings;
    let counts = [p1.finish()?, p2.finish()?, p3.finish()?];
    for (pod, want) in added.iter().zip([&new1_ip, &new2_ip, &late_ip]) {
        ensure!(
            &pod.ip == want,
            "{} got {}, not the address probed ({want}): the IPAM's order changed",
            pod.name,
            pod.ip
        );
    }
    let hits: Vec<u32> = hits.iter().map(|h| h.load(Ordering::Relaxed)).collect();
    eprintln!(
        "pings (sent, answered): new1 {:?} new2 {:?} late {:?}; TCP connections: {hits:?}",
        counts[0], counts[1], counts[2]
    );
    ensure!(
        counts[0].1 == 0 && hits[0] == 0,
        "new1 (node 1, guarded) was reached: {:?} pings, {} connections",
        counts[0],
        hits[0]
    );
    ensure!(
        counts[1].1 == 0 && hits[1] == 0,
        "new2 (node 2, guarded) was reached: {:?} pings, {} connections",
        counts[1],
        hits[1]
    );
    ensure!(
        counts[2].1 > 0 && hits[2] > 0,
        "the control (no policy in its namespace) never became reachable: {:?} pings, {} connections",
        counts[2],
        hits[2]
    );
    // The guarded pods are up: their own node reaches them.
    for (pod, node) in [(&added[0], 1), (&added[1], 2)] {
        ensure!(
            traffic::reachable(&w.lab.node(node).netns, &pod.ip, Duration::from_secs(3))?,
            "{}: its node does not reach it",
            pod.name
        );
    }
    Ok(())
}
