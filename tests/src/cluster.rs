//! k8s-ovs on the lab: the network's etcd records, agents on the nodes, and
//! the CNI plugin exec'd exactly as a runtime does (CNI_* environment, the
//! network configuration on stdin).

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::netns;
use crate::Lab;

/// The pod network of every lab cluster: /22 per node (HostSubnetLength 10).
pub const NETWORK: &str = "172.11.0.0/16";
pub const SERVICE_NETWORK: &str = "10.96.0.0/12";
pub const PREFIX: &str = "/k8s.ovs.com/ovs/network";
pub const NAME: &str = "k8ssdn";

/// A workspace binary (`k8s-ovs`, `k8s-ovs-agent`, ...) next to the test
/// executable's directory (`target/<profile>/`), as `cargo nextest run
/// --workspace` builds them.
pub fn bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| if deps.ends_with("deps") { deps.parent() } else { Some(deps) })
        .context("test executable has no directory")?;
    let p = profile_dir.join(name);
    if !p.exists() {
        bail!(
            "{} not built: run `cargo build --workspace --bins` (or the README's test command)",
            p.display()
        );
    }
    Ok(p)
}

/// Node `i`'s pod subnet (`172.11.<4(i-1)>.0/22`).
pub fn node_subnet(i: usize) -> String {
    format!("172.11.{}.0/22", (i - 1) * 4)
}

impl Lab {
    /// `<prefix>/config` with the given PluginName.
    pub fn put_network_config(&self, plugin: &str) -> Result<()> {
        self.put_network_config_with(plugin, NETWORK, 10)
    }

    /// `<prefix>/config` with another pod network (e.g. room for more than
    /// the 64 nodes of `NETWORK`), written before a controller starts so it
    /// takes this one instead of its `--network`.
    pub fn put_network_config_with(
        &self,
        plugin: &str,
        network: &str,
        host_subnet_length: u32,
    ) -> Result<()> {
        let v = json!({"Name": NAME, "Network": network, "HostSubnetLength": host_subnet_length,
                       "ServiceNetwork": SERVICE_NETWORK, "PluginName": plugin});
        self.etcdctl(&["put", &format!("{PREFIX}/config"), &v.to_string()])?;
        Ok(())
    }

    /// A subnet record for lab node `i`, as the controller writes it.
    pub fn put_node_subnet(&self, i: usize) -> Result<()> {
        let ip = &self.node(i).ip;
        let v = json!({"Host": format!("n{i}"), "HostIP": ip, "Subnet": node_subnet(i), "Assign": false});
        self.etcdctl(&["put", &format!("{PREFIX}/{NAME}/subnets/{ip}"), &v.to_string()])?;
        Ok(())
    }

    /// A netnamespace record with no pending action.
    pub fn put_netnamespace(&self, ns: &str, vni: u32) -> Result<()> {
        let v = json!({"NetName": ns, "NetID": vni, "Action": "", "Namespace": ""});
        self.etcdctl(&["put", &format!("{PREFIX}/{NAME}/netnamespaces/{ns}"), &v.to_string()])?;
        Ok(())
    }

    /// Where node `i`'s agent listens for the CNI plugin.
    pub fn cni_socket(&self, i: usize) -> PathBuf {
        self.node(i).dir.join("cni-server.sock")
    }

    /// The network configuration a runtime hands the plugin on node `i`.
    pub fn cni_conf(&self, i: usize) -> Value {
        json!({"cniVersion": "1.0.0", "name": "k8s-ovs", "type": "k8s-ovs",
               "agentSocket": self.cni_socket(i), "timeoutSeconds": 20})
    }
}

/// A k8s-ovs daemon started by a test inside a lab namespace; ended by PID
/// (SIGTERM, then SIGKILL) on drop. Its output goes to `log`.
pub struct Daemon {
    child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(netns: &crate::Netns, binary: &str, args: &[String], log: PathBuf) -> Result<Daemon> {
        let out = File::options().create(true).append(true).open(&log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &netns.name])
            .arg(bin(binary)?)
            .args(args)
            .env("RUST_LOG", std::env::var("K8S_OVS_LAB_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("spawn {binary}"))?;
        Ok(Daemon { child, log })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// `Some(status)` once it exited.
    pub fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            netns::terminate_pids(&[self.pid()], Duration::from_secs(5));
        }
        let _ = self.child.wait();
    }

    /// SIGKILL: a crash, no shutdown path runs.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Processes a test started (servers in pods), ended by PID when dropped,
/// also when the test fails.
#[derive(Default)]
pub struct Children(pub Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Node `node`'s br0 flows, sorted, without their cookies and counters: the
/// same set compares equal across cookie rounds.
pub fn flows_without_cookies(lab: &Lab, node: usize) -> Result<Vec<String>> {
    let dump = lab.node(node).ovs.ofctl("dump-flows", "br0", &["--no-stats"])?;
    let mut v: Vec<String> = dump
        .lines()
        .filter(|l| l.contains("actions="))
        .map(|l| l.trim().split_once(", ").map(|(_, rest)| rest.to_string()).unwrap_or_default())
        .collect();
    v.sort();
    Ok(v)
}

/// A running `k8s-ovs-agent` on a lab node.
pub struct Agent {
    pub daemon: Daemon,
    pub node: usize,
}

impl Agent {
    /// Starts node `i`'s agent (netdev datapath, the node's own OVS, the lab's
    /// etcd) and waits until its CNI socket answers.
    pub fn start(lab: &Lab, i: usize, extra: &[&str]) -> Result<Agent> {
        Agent::start_etcd(lab, i, lab.etcd_flags(), extra)
    }

    /// `start` with the given etcd flags (e.g. `Lab::etcd_flags_as`).
    pub fn start_etcd(lab: &Lab, i: usize, etcd: Vec<String>, extra: &[&str]) -> Result<Agent> {
        let mut args = Agent::args(lab, i);
        args.extend(etcd);
        args.extend(extra.iter().map(|s| s.to_string()));
        let node = lab.node(i);
        let daemon = Daemon::start(&node.netns, "k8s-ovs-agent", &args, node.dir.join("agent.log"))?;
        let mut a = Agent { daemon, node: i };
        a.wait_ready(lab, Duration::from_secs(30))?;
        Ok(a)
    }

    /// Node `i`'s agent flags, all but how to reach etcd.
    pub fn args(lab: &Lab, i: usize) -> Vec<String> {
        let node = lab.node(i);
        let (rundir, state, sock) = (node.ovs.rundir(), node.dir.join("agent-state"), lab.cni_socket(i));
        let mut args: Vec<String> = vec![
            "--node-name".into(),
            format!("n{i}"),
            "--node-ip".into(),
            node.ip.clone(),
            "--datapath-type".into(),
            "netdev".into(),
            "--metrics-addr".into(),
            format!("{}:9190", node.ip),
        ];
        let (token, metrics_token) = (lab.debug_token_file(), lab.metrics_token_file());
        for (flag, p) in [
            ("--ovs-rundir", &rundir),
            ("--state-dir", &state),
            ("--cni-socket", &sock),
            ("--debug-token-file", &token),
            ("--metrics-token-file", &metrics_token),
        ] {
            args.push(flag.into());
            args.push(p.to_string_lossy().into_owned());
        }
        args
    }

    fn wait_ready(&mut self, lab: &Lab, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.daemon.exited()? {
                bail!("agent on n{} exited ({st}): {}", self.node, self.log_tail());
            }
            let status = cni(lab, self.node, "STATUS", &CniCall::default())?;
            if status.code == Some(0) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("agent on n{} not ready within {timeout:?}: {}", self.node, self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_tail(&self) -> String {
        self.daemon.log_tail()
    }

    pub fn stop(&mut self) {
        self.daemon.stop();
    }

    pub fn kill(&mut self) {
        self.daemon.kill();
    }
}

/// A pod wired by the CNI plugin (ADD exec'd as a runtime does).
#[derive(Debug, Clone)]
pub struct CniPod {
    pub name: String,
    pub namespace: String,
    pub node: usize,
    pub netns: crate::Netns,
    pub ip: String,
    pub cid: String,
}

/// Creates pod `namespace/name` on node `node` through the CNI binary and
/// checks the result is a well-formed CNI 1.0 result for its sandbox.
pub fn add_pod(lab: &mut Lab, node: usize, namespace: &str, name: &str) -> Result<CniPod> {
    let netns = lab.pod_netns(name)?;
    add_pod_in(lab, node, netns, namespace, name)
}

/// [`add_pod`] into a sandbox the caller made already (`Lab::pod_netns`),
/// e.g. with a process waiting inside before the pod has its network.
pub fn add_pod_in(
    lab: &Lab,
    node: usize,
    netns: crate::Netns,
    namespace: &str,
    name: &str,
) -> Result<CniPod> {
    let cid = format!("cid-{name}");
    let out = cni(lab, node, "ADD", &CniCall::pod(&cid, &netns, namespace, name))?;
    if out.code != Some(0) {
        bail!("ADD {name} failed: {} {}", out.stdout, out.stderr);
    }
    let r = &out.stdout;
    if r["cniVersion"] != "1.0.0" {
        bail!("result version: {r}");
    }
    let iface = r["ips"][0]["interface"].as_u64().unwrap_or(99) as usize;
    if r["interfaces"][iface]["sandbox"] != netns.path().to_string_lossy().as_ref()
        || !r["interfaces"][iface]["mac"].is_string()
    {
        bail!("sandbox or mac missing from the result: {r}");
    }
    let addr = r["ips"][0]["address"].as_str().unwrap_or_default();
    let ip = addr.split('/').next().unwrap_or_default().to_string();
    Ok(CniPod { name: name.into(), namespace: namespace.into(), node, netns, ip, cid })
}

/// The lab's Kubernetes API server on the control host (`http://<ctl>:6443`).
pub fn start_kube_api(lab: &Lab) -> Result<crate::kube_api::KubeApi> {
    crate::kube_api::KubeApi::start_in(&lab.ctl, crate::CTL_IP, 6443)
}

/// `start_kube_api` holding every lab node (with its InternalIP) and the
/// given namespaces: what a controller needs to allocate subnets and VNIs.
pub fn start_kube_api_with(lab: &Lab, namespaces: &[&str]) -> Result<crate::kube_api::KubeApi> {
    let api = start_kube_api(lab)?;
    for n in &lab.nodes {
        api.create_node(&format!("n{}", n.index), &n.ip)?;
    }
    for ns in namespaces {
        api.create_namespace(ns)?;
    }
    Ok(api)
}

/// A `k8s-ovs-controller` on the control host, against the lab's etcd and
/// the given API server URL; it writes the network config itself.
pub fn start_controller(lab: &Lab, kube_url: &str, id: &str, extra: &[&str]) -> Result<Daemon> {
    start_controller_etcd(lab, kube_url, id, lab.etcd_flags(), extra)
}

/// `start_controller` with the given etcd flags (e.g. `Lab::etcd_flags_as`).
pub fn start_controller_etcd(
    lab: &Lab,
    kube_url: &str,
    id: &str,
    etcd: Vec<String>,
    extra: &[&str],
) -> Result<Daemon> {
    let mut args: Vec<String> = etcd;
    args.extend(
        [
            "--kube-url",
            kube_url,
            "--id",
            id,
            "--network",
            NETWORK,
            "--host-subnet-length",
            "10",
            "--service-network",
            SERVICE_NETWORK,
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    Daemon::start(&lab.ctl, "k8s-ovs-controller", &args, lab.dir.join(format!("controller-{id}.log")))
}

/// `k8s-ovs-ctl <args>` on the control host; returns (exit code, stdout, stderr).
pub fn ctl(lab: &Lab, args: &[&str]) -> Result<(Option<i32>, String, String)> {
    let b = bin("k8s-ovs-ctl")?;
    let b = b.to_string_lossy();
    let mut etcd = lab.etcd_flags();
    for (flag, file) in
        [("--debug-token-file", lab.debug_token_file()), ("--metrics-token-file", lab.metrics_token_file())]
    {
        etcd.extend([flag.to_string(), file.to_string_lossy().into_owned()]);
    }
    let mut argv = vec![b.as_ref()];
    argv.extend(etcd.iter().map(String::as_str));
    argv.extend_from_slice(args);
    let o = lab.ctl.exec_full(&argv, Duration::from_secs(60))?;
    Ok((o.status, o.stdout, o.stderr))
}

/// One CNI invocation's inputs (beyond the command).
#[derive(Debug, Clone, Default)]
pub struct CniCall {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: String,
    /// Replaces the lab's default configuration when set.
    pub conf: Option<Value>,
    /// Extra variables, or `("CNI_X", None)` to leave one out.
    pub env: Vec<(String, Option<String>)>,
    /// Raw stdin instead of the JSON configuration.
    pub raw_stdin: Option<Vec<u8>>,
}

impl CniCall {
    /// A kubelet-style call for pod `namespace/name` with container id `cid`.
    pub fn pod(cid: &str, netns: &crate::Netns, namespace: &str, name: &str) -> CniCall {
        CniCall {
            container_id: cid.into(),
            netns: netns.path().to_string_lossy().into_owned(),
            ifname: "eth0".into(),
            args: format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID={cid}"),
            ..CniCall::default()
        }
    }
}

/// What the plugin printed and its exit code.
#[derive(Debug, Clone)]
pub struct CniOutput {
    pub code: Option<i32>,
    pub stdout: Value,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Execs the `k8s-ovs` plugin in node `node`'s namespace, as a runtime would.
pub fn cni(lab: &Lab, node: usize, command: &str, call: &CniCall) -> Result<CniOutput> {
    let conf = call.conf.clone().unwrap_or_else(|| lab.cni_conf(node));
    exec_plugin(lab, node, &bin("k8s-ovs")?, command, call, conf)
}

/// Execs an upstream reference plugin (`/usr/lib/cni/<plugin>`) in node
/// `node`'s namespace with the configuration entry `conf` (prevResult and
/// runtimeConfig included), as libcni does in a chain.
pub fn upstream(
    lab: &Lab,
    node: usize,
    plugin: &str,
    command: &str,
    call: &CniCall,
    conf: Value,
) -> Result<CniOutput> {
    upstream_in(&lab.node(node).netns.name, plugin, command, call, conf)
}

/// [`upstream`] from the namespace named `netns` (a node of its own, with
/// no OVS in it).
pub fn upstream_in(
    netns: &str,
    plugin: &str,
    command: &str,
    call: &CniCall,
    conf: Value,
) -> Result<CniOutput> {
    exec_in(netns, &PathBuf::from(UPSTREAM_CNI_DIR).join(plugin), command, call, conf)
}

/// Where Debian's containernetworking-plugins live.
pub const UPSTREAM_CNI_DIR: &str = "/usr/lib/cni";

fn exec_plugin(
    lab: &Lab,
    node: usize,
    plugin: &std::path::Path,
    command: &str,
    call: &CniCall,
    conf: Value,
) -> Result<CniOutput> {
    exec_in(&lab.node(node).netns.name, plugin, command, call, conf)
}

fn exec_in(
    netns: &str,
    plugin: &std::path::Path,
    command: &str,
    call: &CniCall,
    conf: Value,
) -> Result<CniOutput> {
    let stdin = call.raw_stdin.clone().unwrap_or_else(|| conf.to_string().into_bytes());
    let mut cmd = Command::new(plugin);
    cmd.env_clear();
    cmd.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &call.container_id)
        .env("CNI_NETNS", &call.netns)
        .env("CNI_IFNAME", &call.ifname)
        .env("CNI_ARGS", &call.args)
        .env("CNI_PATH", UPSTREAM_CNI_DIR);
    for (k, v) in &call.env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // Spawned by a process of the node, as the kubelet's runtime execs it;
    // only the spawn goes through the node's thread, so concurrent ADDs
    // (a kubelet starting many pods) run concurrently.
    let name = plugin.display().to_string();
    let (mut child, start) = netns::node_process::run(netns, move || -> Result<_> {
        let start = Instant::now();
        Ok((cmd.spawn().with_context(|| format!("spawn {name}"))?, start))
    })??;
    {
        use std::io::Write;
        let mut si = child.stdin.take().context("stdin")?;
        si.write_all(&stdin)?;
    }
    let out = child.wait_with_output()?;
    let elapsed = start.elapsed();
    let stdout = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("plugin stdout is not JSON: {}", String::from_utf8_lossy(&out.stdout)))?
    };
    Ok(CniOutput {
        code: out.status.code(),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed,
    })
}

/// `GET <path>` from node `i`'s agent metrics listener (`/metrics`, `/healthz`),
/// fetched from inside the node namespace with the metrics token, as
/// Prometheus scrapes it; returns the whole HTTP response.
pub fn agent_http(lab: &Lab, i: usize, path: &str) -> Result<String> {
    http_get_from(&lab.node(i).netns, &lab.node(i).ip, path, Some(&lab.metrics_token()?))
}

/// `GET http://<ip>:9190<path>` from inside `netns` (a node's or a pod's),
/// with `token` as a bearer token if given; the whole HTTP response.
/// HTTP/1.1 as Prometheus and the kubelet speak it (the agent answers an
/// HTTP/1.0 request in HTTP/1.0), closed after the one answer.
pub fn http_get_from(netns: &crate::Netns, ip: &str, path: &str, token: Option<&str>) -> Result<String> {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\\r\\n")).unwrap_or_default();
    let script = format!(
        "exec 3<>/dev/tcp/{ip}/9190 && \
         printf 'GET {path} HTTP/1.1\\r\\nHost: {ip}\\r\\nConnection: close\\r\\n{auth}\\r\\n' >&3 && cat <&3"
    );
    netns.exec(&["timeout", "5", "bash", "-c", &script])
}
