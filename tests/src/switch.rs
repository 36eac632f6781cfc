//! One private Open vSwitch with one OpenFlow bridge, in its own namespace:
//! what the flow tests and the flow benchmark program against.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};

use crate::lab::{base_dir, DEFAULT_PREFIX};
use crate::netns::Netns;
use crate::ovs::Ovs;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A netns + OVS + bridge (netdev datapath, OpenFlow 1.3 and 1.5, fail_mode
/// secure so only our flows forward). Everything is removed on drop; the
/// names follow the lab's `<prefix><pid>x<seq>` scheme so `sweep` removes
/// what a crashed run left behind.
pub struct PrivateSwitch {
    // Field order is drop order: daemons first, then the namespace, then files.
    pub ovs: Ovs,
    pub netns: Netns,
    pub dir: PathBuf,
    pub bridge: String,
}

impl PrivateSwitch {
    pub fn start(bridge: &str) -> Result<PrivateSwitch> {
        let name =
            format!("{DEFAULT_PREFIX}{}x{}-sw", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst));
        let dir = base_dir().join(&name);
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let netns = Netns::create(&name)?;
        let ovs = match Ovs::start(&netns, &dir) {
            Ok(o) => o,
            Err(e) => {
                netns.destroy();
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let sw = PrivateSwitch { ovs, netns, dir, bridge: bridge.to_string() };
        sw.ovs.add_bridge(bridge, &["protocols=OpenFlow13,OpenFlow15", "fail_mode=secure"])?;
        Ok(sw)
    }

    /// `unix:<rundir>/<bridge>.mgmt`.
    pub fn endpoint(&self) -> String {
        format!("unix:{}", self.ovs.mgmt_sock(&self.bridge).display())
    }

    /// `ovs-ofctl -O OpenFlow15 <cmd> <bridge> <rest>`.
    pub fn ofctl(&self, cmd: &str, rest: &[&str]) -> Result<String> {
        let target = self.endpoint();
        let mut v = vec!["ovs-ofctl", "-O", "OpenFlow15", cmd, target.as_str()];
        v.extend_from_slice(rest);
        self.ovs.exec(&v)
    }

    /// `dump-flows --no-stats`, one trimmed line per flow, sorted.
    pub fn dump_flows(&self) -> Result<Vec<String>> {
        let out = self.ofctl("dump-flows", &["--no-stats"])?;
        let mut v: Vec<String> =
            out.lines().map(str::trim).filter(|l| l.contains("actions=")).map(str::to_string).collect();
        v.sort();
        Ok(v)
    }

    /// PID of this switch's ovs-vswitchd (for CPU accounting in benchmarks).
    pub fn vswitchd_pid(&self) -> Option<i32> {
        self.ovs.pids().first().copied()
    }
}

impl Drop for PrivateSwitch {
    fn drop(&mut self) {
        self.ovs.stop();
        self.netns.destroy();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
