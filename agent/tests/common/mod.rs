//! Scratch namespaces and private OVS instances for the agent's lab tests.
//!
//! Names follow the lab's `<prefix><pid>x<tag>` scheme so `lab::sweep`
//! removes what a crashed run left behind; everything is removed on drop,
//! also when a test panics.

#![allow(dead_code)] // each test binary uses a different part

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Result;
use lab::ovs::Ovs;
use lab::Netns;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique name `kovs<pid>xag<seq>-<tag>` (the "ag" keeps it apart from
/// names `lab::Lab` makes in the same process).
pub fn unique_name(tag: &str) -> String {
    format!("{}{}xag{}-{tag}", lab::DEFAULT_PREFIX, std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst))
}

/// A network namespace removed on drop.
pub struct ScratchNetns {
    pub netns: Netns,
}

impl ScratchNetns {
    pub fn create(tag: &str) -> Result<ScratchNetns> {
        lab::sweep::sweep(lab::DEFAULT_PREFIX, &lab::base_dir());
        Ok(ScratchNetns { netns: Netns::create(&unique_name(tag))? })
    }

    /// `/run/netns/<name>`, as a CNI runtime would pass it.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.netns.name)
    }
}

impl Drop for ScratchNetns {
    fn drop(&mut self) {
        self.netns.destroy();
    }
}

/// A private OVS (ovsdb-server + ovs-vswitchd, netdev) in its own namespace.
pub struct ScratchOvs {
    // Field order is drop order: daemons first, then namespace and files.
    pub ovs: Ovs,
    pub ns: ScratchNetns,
    dir: PathBuf,
}

impl ScratchOvs {
    pub fn start(tag: &str) -> Result<ScratchOvs> {
        let ns = ScratchNetns::create(tag)?;
        let dir = lab::base_dir().join(&ns.netns.name);
        let ovs = Ovs::start(&ns.netns, &dir)?;
        Ok(ScratchOvs { ovs, ns, dir })
    }

    /// The OVSDB endpoint in `unix:<path>` form.
    pub fn endpoint(&self) -> String {
        format!("unix:{}", self.ovs.db_sock().display())
    }
}

impl Drop for ScratchOvs {
    fn drop(&mut self) {
        self.ovs.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
