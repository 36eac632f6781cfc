//! Running a piece of code inside another network namespace.
//!
//! `setns(CLONE_NEWNET)` switches only the calling thread, so the code runs
//! on a fresh thread that enters the namespace and then exits: no thread of
//! the agent's runtime ever changes namespace. Sockets opened there keep that
//! namespace for their whole life, which is how a netlink connection (or an
//! ethtool ioctl socket) for a pod namespace is made.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

use super::NetlinkError;

/// Runs `f` on a new thread inside the network namespace at `path`
/// (`/run/netns/<name>`, `/proc/<pid>/ns/net`, ...) and returns its result.
pub fn run_in<T, F>(path: &Path, f: F) -> Result<T, NetlinkError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, NetlinkError> + Send + 'static,
{
    let ns = open(path)?;
    let owned = path.to_path_buf();
    std::thread::Builder::new()
        .name("k8s-ovs-netns".into())
        .spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetlinkError::Netns { path: owned, source: std::io::Error::from(e) })?;
            f()
        })
        .map_err(|e| NetlinkError::Netns { path: path.to_path_buf(), source: e })?
        .join()
        .map_err(|_| NetlinkError::Netns {
            path: path.to_path_buf(),
            source: std::io::Error::other("thread inside the namespace panicked"),
        })?
}

/// Opens a namespace file: the handle that moves a device there or lets a
/// thread enter it.
pub fn open(path: &Path) -> Result<File, NetlinkError> {
    File::open(path).map_err(|e| NetlinkError::Netns { path: PathBuf::from(path), source: e })
}
