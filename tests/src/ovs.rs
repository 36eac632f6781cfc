//! One private Open vSwitch (ovsdb-server + ovs-vswitchd) per lab node, with
//! its own run/db/log directories, running inside the node's namespace.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::{self, Netns};

const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

#[derive(Debug)]
pub struct Ovs {
    pub netns: Netns,
    /// Holds `run/`, `db/` and `log/`.
    pub dir: PathBuf,
    stopped: bool,
}

impl Ovs {
    /// Creates the database and starts both daemons inside `netns`.
    pub fn start(netns: &Netns, dir: &Path) -> Result<Ovs> {
        for sub in ["run", "db", "log"] {
            std::fs::create_dir_all(dir.join(sub)).with_context(|| format!("mkdir {}", dir.display()))?;
        }
        let ovs = Ovs { netns: netns.clone(), dir: dir.to_path_buf(), stopped: false };
        let db = dir.join("db/conf.db");
        ovs.exec(&["ovsdb-tool", "create", &db.to_string_lossy(), SCHEMA])?;
        ovs.start_ovsdb()?;
        ovs.vsctl(&["--no-wait", "init"])?;
        ovs.start_vswitchd()?;
        Ok(ovs)
    }

    pub fn rundir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// `unix:<rundir>/db.sock`, the OVSDB endpoint.
    pub fn db_sock(&self) -> PathBuf {
        self.rundir().join("db.sock")
    }

    /// `<rundir>/<bridge>.mgmt`, the bridge's OpenFlow management socket.
    pub fn mgmt_sock(&self, bridge: &str) -> PathBuf {
        self.rundir().join(format!("{bridge}.mgmt"))
    }

    fn env(&self) -> [(String, String); 3] {
        let d = |s: &str| self.dir.join(s).to_string_lossy().into_owned();
        [("OVS_RUNDIR".into(), d("run")), ("OVS_DBDIR".into(), d("db")), ("OVS_LOGDIR".into(), d("log"))]
    }

    /// Runs an OVS tool inside the node namespace, pointed at this instance.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.netns.exec_env(args, &env)
    }

    pub fn vsctl(&self, args: &[&str]) -> Result<String> {
        let mut v = vec!["ovs-vsctl", "--timeout=10"];
        v.extend_from_slice(args);
        self.exec(&v)
    }

    /// `ovs-ofctl -O OpenFlow13 <cmd> <bridge mgmt socket> <rest>`.
    pub fn ofctl(&self, cmd: &str, bridge: &str, rest: &[&str]) -> Result<String> {
        let target = format!("unix:{}", self.mgmt_sock(bridge).display());
        let mut v = vec!["ovs-ofctl", "-O", "OpenFlow13", cmd, target.as_str()];
        v.extend_from_slice(rest);
        self.exec(&v)
    }

    pub fn appctl(&self, args: &[&str]) -> Result<String> {
        let mut v = vec!["ovs-appctl", "--timeout=10"];
        v.extend_from_slice(args);
        self.exec(&v)
    }

    /// Adds a userspace (netdev) bridge and checks that its datapath really
    /// opened: `ovs-vsctl` exits 0 even when it did not.
    pub fn add_bridge(&self, name: &str, extra: &[&str]) -> Result<()> {
        let mut v = vec!["add-br", name, "--", "set", "bridge", name, "datapath_type=netdev"];
        v.extend_from_slice(extra);
        self.vsctl(&v)?;
        self.wait_ofport(name)?;
        Ok(())
    }

    /// Adds `br0`-style bridge `bridge` (netdev, fail_mode secure, OpenFlow
    /// 1.0/1.3/1.5) with a flow-based VXLAN port `vxlan0` at `vxlan_ofport`
    /// (`remote_ip=flow`, `key=flow`): what hand-built lab pipelines need.
    pub fn add_tunnel_bridge(&self, bridge: &str, vxlan_ofport: u32) -> Result<()> {
        self.add_bridge(bridge, &["fail_mode=secure", "protocols=OpenFlow10,OpenFlow13,OpenFlow15"])?;
        let ofport = format!("ofport_request={vxlan_ofport}");
        self.vsctl(&[
            "add-port",
            bridge,
            "vxlan0",
            "--",
            "set",
            "interface",
            "vxlan0",
            "type=vxlan",
            "options:remote_ip=flow",
            "options:key=flow",
            &ofport,
        ])?;
        self.wait_ofport("vxlan0")?;
        Ok(())
    }

    /// Attaches an existing device `iface` to `bridge` asking for `ofport`;
    /// returns the ofport ovs-vswitchd gave it.
    pub fn add_port_at(&self, bridge: &str, iface: &str, ofport: u32) -> Result<u32> {
        let request = format!("ofport_request={ofport}");
        self.vsctl(&["add-port", bridge, iface, "--", "set", "interface", iface, &request])?;
        self.wait_ofport(iface)
    }

    /// Waits until an interface has an ofport (> 0); fails with the
    /// interface's `error` column if it never gets one.
    pub fn wait_ofport(&self, iface: &str) -> Result<u32> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let port = self.vsctl(&["get", "interface", iface, "ofport"])?;
            if let Ok(p) = port.trim().parse::<i64>() {
                if p > 0 {
                    return Ok(p as u32);
                }
            }
            if Instant::now() > deadline {
                let err = self.vsctl(&["get", "interface", iface, "error"]).unwrap_or_default();
                bail!("interface {iface} got no ofport in {}: {}", self.netns.name, err.trim());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills ovs-vswitchd outright (its flows are gone, as after a crash)
    /// and starts it again on the same database.
    pub fn restart_vswitchd(&self) -> Result<()> {
        if let Some(pid) = self.pid("ovs-vswitchd") {
            netns::terminate_pids(&[pid], Duration::from_secs(5));
        }
        self.start_vswitchd()
    }

    /// Stops ovsdb-server (by its PID, as a package upgrade or crash would)
    /// and starts it again on the same database file and socket.
    /// ovs-vswitchd keeps running and reconnects by itself.
    pub fn restart_ovsdb(&self) -> Result<()> {
        self.stop_ovsdb();
        self.start_ovsdb()
    }

    /// Ends ovsdb-server by its PID and waits until it is gone: its socket
    /// then refuses connections until [`Ovs::start_ovsdb`].
    pub fn stop_ovsdb(&self) {
        if let Some(pid) = self.pid("ovsdb-server") {
            netns::terminate_pids(&[pid], Duration::from_secs(5));
        }
    }

    /// Starts ovsdb-server on `db/conf.db`, listening on `run/db.sock`.
    pub fn start_ovsdb(&self) -> Result<()> {
        let (db, r, l) = (self.dir.join("db/conf.db"), self.rundir(), self.dir.join("log"));
        let (db, r, l) = (db.to_string_lossy(), r.to_string_lossy(), l.to_string_lossy());
        self.exec(&[
            "ovsdb-server",
            &db,
            &format!("--remote=punix:{r}/db.sock"),
            &format!("--pidfile={r}/ovsdb-server.pid"),
            "--detach",
            "-vconsole:off",
            &format!("--log-file={l}/ovsdb-server.log"),
        ])?;
        Ok(())
    }

    fn start_vswitchd(&self) -> Result<()> {
        let (r, l) = (self.rundir(), self.dir.join("log"));
        let (r, l) = (r.to_string_lossy(), l.to_string_lossy());
        self.exec(&[
            "ovs-vswitchd",
            &format!("unix:{r}/db.sock"),
            &format!("--pidfile={r}/ovs-vswitchd.pid"),
            "--detach",
            "-vconsole:off",
            &format!("--log-file={l}/ovs-vswitchd.log"),
        ])?;
        Ok(())
    }

    fn pid(&self, daemon: &str) -> Option<i32> {
        std::fs::read_to_string(self.rundir().join(format!("{daemon}.pid")))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// PIDs of the two daemons, read from their pidfiles.
    pub fn pids(&self) -> Vec<i32> {
        ["ovs-vswitchd", "ovsdb-server"].iter().filter_map(|d| self.pid(d)).collect()
    }

    /// Stops the daemons: every bridge deleted first (else the netdev tap
    /// devices stay behind), `exit --cleanup`, then both PIDs ended.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if self.pid("ovs-vswitchd").is_some_and(netns::alive) {
            if let Ok(brs) = self.vsctl(&["list-br"]) {
                for br in brs.split_whitespace() {
                    let _ = self.vsctl(&["del-br", br]);
                }
            }
            let _ = self.appctl(&["-t", "ovs-vswitchd", "exit", "--cleanup"]);
        }
        let pids: Vec<i32> = self.pids().into_iter().filter(|&p| netns::alive(p)).collect();
        netns::terminate_pids(&pids, Duration::from_secs(5));
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        self.stop();
    }
}
