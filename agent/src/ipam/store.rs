//! The IPAM allocator kept on disk.
//!
//! Format: one JSON file, `<dir>/allocations.json`, rewritten whole on every
//! change: written to a temporary file, fsynced, renamed over the old one,
//! then the directory fsynced. Why one file rather than host-local's one file
//! per address:
//! - every state on disk is a complete, consistent snapshot (an allocation
//!   and the round-robin cursor move together; `gc` frees many addresses in
//!   one atomic step), so a crash at any point leaves either the old or the
//!   new state, never a half-applied one;
//! - corruption is detectable as a whole: the file parses and validates (no
//!   address twice, all inside the subnet) or the store refuses to open with
//!   an error naming the file. It never falls back to "empty", which would
//!   hand out addresses that running pods still hold;
//! - a node holds at most a few hundred pods (a /22 has 1021 pod addresses),
//!   so the file stays small and a rewrite costs one small write + fsync.
//!
//! Every change is persisted before the caller sees it: the new state is
//! computed on a copy, written, and only then becomes the in-memory state, so
//! a failed write changes nothing. A mutex serialises callers in the process
//! and an exclusive `flock` on `<dir>/lock`, held while the store is open,
//! keeps a second agent process off the same directory.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use ipnetwork::Ipv4Network;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::{Allocator, IpamError, Owner};

const FILE: &str = "allocations.json";
const TMP: &str = "allocations.json.tmp";
const LOCK: &str = "lock";
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("IPAM store {path}: {op}: {source}")]
    Io { path: PathBuf, op: &'static str, source: std::io::Error },
    #[error("IPAM store {path} is in use by another process (lock held)")]
    Locked { path: PathBuf },
    #[error("IPAM store {path} is corrupted, refusing to use it (fix or remove it by hand; running pods may hold its addresses): {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("IPAM store {path} holds allocations of subnet {stored}, but the node subnet is {configured}")]
    SubnetMismatch { path: PathBuf, stored: Ipv4Network, configured: Ipv4Network },
    #[error(transparent)]
    Ipam(#[from] IpamError),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    version: u32,
    subnet: String,
    last: Option<Ipv4Addr>,
    allocations: Vec<FileAllocation>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAllocation {
    ip: Ipv4Addr,
    container_id: String,
    ifname: String,
}

/// A persistent allocator for one node subnet. All methods take `&self` and
/// are safe to call from several threads.
#[derive(Debug)]
pub struct IpamStore {
    dir: PathBuf,
    state: Mutex<Allocator>,
    _lock: Flock<File>,
}

impl IpamStore {
    /// Opens (or creates) the store in `dir` for `subnet`. Fails when another
    /// process holds the store, when the file is corrupted, or when it holds
    /// another subnet's allocations.
    pub fn open(dir: &Path, subnet: Ipv4Network) -> Result<IpamStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(io(dir, "create directory"))?;
        let lock_path = dir.join(LOCK);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path, "open lock file"))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
            if errno == nix::errno::Errno::EWOULDBLOCK {
                StoreError::Locked { path: dir.to_path_buf() }
            } else {
                StoreError::Io { path: lock_path.clone(), op: "lock", source: errno.into() }
            }
        })?;
        let allocator = load(&dir.join(FILE), subnet)?;
        Ok(IpamStore { dir: dir.to_path_buf(), state: Mutex::new(allocator), _lock: lock })
    }

    pub fn subnet(&self) -> Ipv4Network {
        self.lock().subnet()
    }

    /// The node gateway address (never handed to a pod).
    pub fn gateway(&self) -> Ipv4Addr {
        self.lock().gateway()
    }

    /// The address of `owner`: the one it holds, else a new one, persisted
    /// before this returns.
    pub fn allocate(&self, owner: &Owner) -> Result<Ipv4Addr, StoreError> {
        self.update(|a| a.allocate(owner).map_err(StoreError::from))
    }

    /// Frees `owner`'s address (persisted); `None` if it held none.
    pub fn release(&self, owner: &Owner) -> Result<Option<Ipv4Addr>, StoreError> {
        self.update(|a| Ok(a.release(owner)))
    }

    /// Frees every address of a container (persisted).
    pub fn release_container(&self, container_id: &str) -> Result<Vec<Ipv4Addr>, StoreError> {
        self.update(|a| Ok(a.release_container(container_id)))
    }

    /// Frees every allocation of a container not in `keep` (persisted);
    /// returns what it freed.
    pub fn gc(&self, keep: &HashSet<String>) -> Result<Vec<(Ipv4Addr, Owner)>, StoreError> {
        self.update(|a| Ok(a.gc(keep)))
    }

    pub fn lookup(&self, owner: &Owner) -> Option<Ipv4Addr> {
        self.lock().lookup(owner)
    }

    /// Addresses held by any interface of the container.
    pub fn lookup_container(&self, container_id: &str) -> Vec<(Ipv4Addr, Owner)> {
        self.lock().lookup_container(container_id).into_iter().map(|(ip, o)| (ip, o.clone())).collect()
    }

    /// Every allocation, by address.
    pub fn allocations(&self) -> Vec<(Ipv4Addr, Owner)> {
        self.lock().allocations().map(|(ip, o)| (ip, o.clone())).collect()
    }

    /// Path of the JSON file (for operators and tests).
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    fn lock(&self) -> MutexGuard<'_, Allocator> {
        // State is only replaced whole after a successful write, so a panic
        // in another holder cannot leave it half-changed: poisoning is moot.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `change` to a copy, persists the copy if it differs, then makes
    /// it the current state.
    fn update<T>(
        &self,
        change: impl FnOnce(&mut Allocator) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = self.lock();
        let mut next = guard.clone();
        let out = change(&mut next)?;
        if next != *guard {
            save(&self.dir, &next)?;
            *guard = next;
        }
        Ok(out)
    }
}

fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { path: path.to_path_buf(), op, source }
}

fn load(path: &Path, subnet: Ipv4Network) -> Result<Allocator, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Allocator::new(subnet)?),
        Err(e) => return Err(StoreError::Io { path: path.to_path_buf(), op: "read", source: e }),
    };
    let corrupt = |reason: String| StoreError::Corrupt { path: path.to_path_buf(), reason };
    let file: FileFormat = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if file.version != FORMAT_VERSION {
        return Err(corrupt(format!("unknown format version {} (expected {FORMAT_VERSION})", file.version)));
    }
    let stored: Ipv4Network =
        file.subnet.parse().map_err(|e| corrupt(format!("subnet {:?}: {e}", file.subnet)))?;
    let configured = Allocator::new(subnet)?.subnet();
    if stored != configured {
        return Err(StoreError::SubnetMismatch { path: path.to_path_buf(), stored, configured });
    }
    let allocations = file
        .allocations
        .into_iter()
        .map(|a| (a.ip, Owner { container_id: a.container_id, ifname: a.ifname }));
    Allocator::restore(configured, allocations, file.last).map_err(|e| corrupt(e.to_string()))
}

fn save(dir: &Path, a: &Allocator) -> Result<(), StoreError> {
    let file = FileFormat {
        version: FORMAT_VERSION,
        subnet: a.subnet().to_string(),
        last: a.last_allocated(),
        allocations: a
            .allocations()
            .map(|(ip, o)| FileAllocation {
                ip,
                container_id: o.container_id.clone(),
                ifname: o.ifname.clone(),
            })
            .collect(),
    };
    let tmp = dir.join(TMP);
    let dest = dir.join(FILE);
    let json = serde_json::to_vec_pretty(&file).map_err(|e| StoreError::Io {
        path: tmp.clone(),
        op: "encode",
        source: e.into(),
    })?;
    let mut f = File::create(&tmp).map_err(io(&tmp, "create"))?;
    f.write_all(&json).map_err(io(&tmp, "write"))?;
    f.sync_all().map_err(io(&tmp, "fsync"))?;
    drop(f);
    std::fs::rename(&tmp, &dest).map_err(io(&dest, "rename"))?;
    // The rename is durable only once the directory entry is on disk.
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir, "fsync directory"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ipam::tests::{net, owner};

    /// A unique, self-removing temporary directory.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let p = std::env::temp_dir().join(format!("k8s-ovs-ipam-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn allocations_survive_a_restart_and_are_never_handed_out_twice() {
        let dir = TempDir::new("restart");
        let subnet = net("10.7.0.0/24");
        let (a, b) = {
            let s = IpamStore::open(&dir.0, subnet).expect("open");
            let a = s.allocate(&owner("a")).expect("a");
            let b = s.allocate(&owner("b")).expect("b");
            s.release(&owner("a")).expect("release");
            (a, b)
        };
        let s = IpamStore::open(&dir.0, subnet).expect("reopen");
        assert_eq!(s.lookup(&owner("b")), Some(b));
        assert_eq!(s.lookup(&owner("a")), None);
        assert_eq!(s.allocate(&owner("b")).expect("repeat"), b, "repeated ADD returns the same address");
        let c = s.allocate(&owner("c")).expect("c");
        assert_ne!(c, b);
        assert_ne!(c, a, "the cursor survived the restart: the just-freed address is not reused");
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused() {
        let dir = TempDir::new("lock");
        let _s = IpamStore::open(&dir.0, net("10.7.0.0/24")).expect("open");
        let err = IpamStore::open(&dir.0, net("10.7.0.0/24")).expect_err("locked");
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    }

    #[test]
    fn corrupted_file_is_a_clear_error() {
        let dir = TempDir::new("corrupt");
        let subnet = net("10.7.0.0/24");
        {
            let s = IpamStore::open(&dir.0, subnet).expect("open");
            s.allocate(&owner("a")).expect("a");
        }
        let path = dir.0.join(FILE);
        let good = std::fs::read_to_string(&path).expect("read");
        for bad in [
            good[..good.len() / 2].to_string(),
            String::new(),
            good.replace("10.7.0.2", "10.7.0.1"),
            good.replace("\"version\": 1", "\"version\": 9"),
        ] {
            std::fs::write(&path, &bad).expect("write");
            let err = IpamStore::open(&dir.0, subnet).expect_err("corrupt");
            assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
            assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
        }
        // Two owners on one address (as a hand edit could make).
        let dup = good.replace(
            "\"allocations\": [",
            "\"allocations\": [\n    {\"ip\": \"10.7.0.2\", \"container_id\": \"z\", \"ifname\": \"eth0\"},",
        );
        std::fs::write(&path, dup).expect("write");
        let err = IpamStore::open(&dir.0, subnet).expect_err("duplicate");
        assert!(err.to_string().contains("allocated twice"), "{err}");
    }

    #[test]
    fn another_subnet_on_disk_is_refused() {
        let dir = TempDir::new("subnet");
        {
            let s = IpamStore::open(&dir.0, net("10.7.0.0/24")).expect("open");
            s.allocate(&owner("a")).expect("a");
        }
        let err = IpamStore::open(&dir.0, net("10.8.0.0/24")).expect_err("mismatch");
        assert!(matches!(err, StoreError::SubnetMismatch { .. }), "{err}");
    }

    #[test]
    fn concurrent_allocations_get_unique_addresses_and_all_are_persisted() {
        let dir = TempDir::new("concurrent");
        let subnet = net("10.7.0.0/24");
        let s = Arc::new(IpamStore::open(&dir.0, subnet).expect("open"));
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    (0..25).map(|i| s.allocate(&owner(&format!("t{t}-{i}"))).expect("ip")).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<Ipv4Addr> = handles.into_iter().flat_map(|h| h.join().expect("thread")).collect();
        all.sort();
        let n = all.len();
        all.dedup();
        assert_eq!(all.len(), n, "no address handed out twice");
        assert_eq!(n, 200);
        drop(s);
        let s = IpamStore::open(&dir.0, subnet).expect("reopen");
        assert_eq!(s.allocations().len(), 200);
    }

    #[test]
    fn full_subnet_error_leaves_the_file_unchanged() {
        let dir = TempDir::new("full");
        let s = IpamStore::open(&dir.0, net("10.7.0.0/30")).expect("open");
        s.allocate(&owner("a")).expect("a");
        let before = std::fs::read(s.path()).expect("read");
        let err = s.allocate(&owner("b")).expect_err("full");
        assert!(err.to_string().contains("is full"), "{err}");
        assert_eq!(std::fs::read(s.path()).expect("read"), before);
    }

    #[test]
    fn gc_and_release_are_persisted_and_idempotent() {
        let dir = TempDir::new("gc");
        let subnet = net("10.7.0.0/24");
        {
            let s = IpamStore::open(&dir.0, subnet).expect("open");
            for c in ["a", "b", "c"] {
                s.allocate(&owner(c)).expect("ip");
            }
            let keep: HashSet<String> = ["b".to_string()].into();
            assert_eq!(s.gc(&keep).expect("gc").len(), 2);
            assert!(s.gc(&keep).expect("gc again").is_empty());
            assert_eq!(s.release(&owner("zz")).expect("unknown"), None);
        }
        let s = IpamStore::open(&dir.0, subnet).expect("reopen");
        let left: Vec<String> = s.allocations().into_iter().map(|(_, o)| o.container_id).collect();
        assert_eq!(left, ["b"]);
        assert_eq!(s.release_container("b").expect("release").len(), 1);
        assert!(s.lookup_container("b").is_empty());
    }
}
