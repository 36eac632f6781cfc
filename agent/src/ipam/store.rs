//! The IPAM allocator kept on disk.
//!
//! Format: a log, `<dir>/allocations.jsonl`, one JSON record per line: a
//! header (format version, subnet), then `alloc` and `free` records as they
//! happen (and a `last` record for the round-robin cursor in a snapshot).
//! Opening the store replays the log, validates it, and rewrites it as a
//! compact snapshot (temporary file, fsync, rename, directory fsync); the
//! log is compacted the same way when it grows long.
//!
//! Why a log rather than a JSON file rewritten on every change, or
//! host-local's file per address: a change is one small append (tens of
//! microseconds), where rewriting + renaming a file costs 3-12 ms on this
//! machine's ext4 (the rename forces a data flush) with a p99 above 100 ms
//! while builds run: too much for a CNI ADD budget of ~15 ms. And unlike a
//! file per address, the log holds the cursor and makes `gc` one write.
//!
//! Durability: every change is written (to the page cache) before the
//! caller sees it, so an agent crash or restart never loses one: a restart
//! never hands an address out twice. Appends are not fsynced: only a machine
//! crash can lose the tail of the log, and it takes every pod that tail
//! concerns with it. A record cut short by such a crash (the last line, no
//! newline) is dropped on open; any other unreadable or inconsistent record
//! (an address allocated twice, a free of a free address, outside the
//! subnet) is a clear error naming the file and line: the store never falls
//! back to "empty", which would hand out addresses running pods still hold.
//! The agent opens it with the addresses of the pods' ports on the bridge
//! (`open_with_claims`): those are allocated whatever the log says, so a log
//! lost, cut short or corrupted (set aside, then rebuilt from the ports)
//! still never hands a running pod's address out.
//!
//! A mutex serialises callers in the process and an exclusive `flock` on
//! `<dir>/lock`, held while the store is open, keeps a second agent process
//! off the same directory.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use ipnetwork::Ipv4Network;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::{Allocator, Claim, ClaimReport, IpamError, Owner};

const LOG: &str = "allocations.jsonl";
/// Where a corrupted log is moved before the store is rebuilt from the ports.
const CORRUPT: &str = "allocations.jsonl.corrupt";
const TMP: &str = "allocations.jsonl.tmp";
const LOCK: &str = "lock";
const FORMAT_VERSION: u32 = 1;
/// Compact when the log holds this many records more than live allocations.
const COMPACT_SLACK: usize = 4096;

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
    #[error("IPAM store {path}: an earlier write failed half-way; reopen the store")]
    Broken { path: PathBuf },
    #[error(transparent)]
    Ipam(#[from] IpamError),
}

/// What [`IpamStore::open_with_claims`] found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogState {
    /// The log was read (the claims may still have completed it).
    Intact,
    /// No log: a first start, or a state dir removed under running pods.
    Missing,
    /// The log was unreadable; moved to `set_aside`, rebuilt from the claims.
    Corrupt { set_aside: PathBuf, reason: String },
}

/// How the store was brought in line with the bridge's ports at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub log: LogState,
    pub report: ClaimReport,
}

impl Recovery {
    /// Whether the log lost anything the ports still hold (to log and count).
    pub fn rebuilt(&self) -> bool {
        self.report.changed() || matches!(self.log, LogState::Corrupt { .. })
    }
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Record {
    Header {
        version: u32,
        subnet: String,
    },
    Alloc {
        ip: Ipv4Addr,
        container_id: String,
        ifname: String,
    },
    Free {
        ip: Ipv4Addr,
    },
    /// The round-robin cursor, in snapshots (an `alloc` also moves it).
    Last {
        ip: Ipv4Addr,
    },
}

#[derive(Debug)]
struct State {
    alloc: Allocator,
    log: File,
    /// Bytes of complete records in the log (a failed append is cut back to it).
    len: u64,
    records: usize,
    broken: bool,
}

/// A persistent allocator for one node subnet. All methods take `&self` and
/// are safe to call from several threads.
#[derive(Debug)]
pub struct IpamStore {
    dir: PathBuf,
    state: Mutex<State>,
    _lock: Flock<File>,
}

impl IpamStore {
    /// Opens (or creates) the store in `dir` for `subnet`. Fails when another
    /// process holds the store, when the log is corrupted, or when it holds
    /// another subnet's allocations.
    pub fn open(dir: &Path, subnet: Ipv4Network) -> Result<IpamStore, StoreError> {
        let lock = Self::lock_dir(dir)?;
        let alloc = load(&dir.join(LOG), subnet)?;
        Self::finish_open(dir, lock, alloc)
    }

    /// Opens the store for an agent whose bridge holds running pods: every
    /// address in `claims` (the pods' ports, in a stable order) is made
    /// allocated to its pod before the store is used. A log that is missing
    /// or lost its tail is completed from the claims; a corrupted one is set
    /// aside (`allocations.jsonl.corrupt`, for the operator) and the store
    /// rebuilt from the claims alone: the ports are what runs, so no running
    /// pod's address can be handed out again. A log of another subnet is
    /// still refused (the node changed subnet: its pods are wrong anyway).
    pub fn open_with_claims(
        dir: &Path,
        subnet: Ipv4Network,
        claims: Vec<Claim>,
    ) -> Result<(IpamStore, Recovery), StoreError> {
        let lock = Self::lock_dir(dir)?;
        let path = dir.join(LOG);
        let (alloc, report, log) = match load(&path, subnet) {
            Ok(mut alloc) => {
                let state = if path.exists() { LogState::Intact } else { LogState::Missing };
                let report = alloc.take_claims(claims);
                if state == LogState::Missing && report.changed() {
                    // After the highest running pod, as a rebuild does.
                    alloc.last = alloc.allocations.keys().next_back().copied();
                }
                (alloc, report, state)
            }
            Err(StoreError::Corrupt { reason, .. }) => {
                let aside = dir.join(CORRUPT);
                std::fs::rename(&path, &aside).map_err(io(&path, "set the corrupted log aside"))?;
                let (alloc, report) = Allocator::rebuild(subnet, claims)?;
                (alloc, report, LogState::Corrupt { set_aside: aside, reason })
            }
            Err(e) => return Err(e),
        };
        let store = Self::finish_open(dir, lock, alloc)?;
        Ok((store, Recovery { log, report }))
    }

    fn lock_dir(dir: &Path) -> Result<Flock<File>, StoreError> {
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
        Ok(lock)
    }

    fn finish_open(dir: &Path, lock: Flock<File>, alloc: Allocator) -> Result<IpamStore, StoreError> {
        let (log, len, records) = write_snapshot(dir, &alloc)?;
        Ok(IpamStore {
            dir: dir.to_path_buf(),
            state: Mutex::new(State { alloc, log, len, records, broken: false }),
            _lock: lock,
        })
    }

    pub fn subnet(&self) -> Ipv4Network {
        self.lock().alloc.subnet()
    }

    /// The node gateway address (never handed to a pod).
    pub fn gateway(&self) -> Ipv4Addr {
        self.lock().alloc.gateway()
    }

    /// The address of `owner`: the one it holds, else a new one, recorded
    /// before this returns.
    pub fn allocate(&self, owner: &Owner) -> Result<Ipv4Addr, StoreError> {
        self.update(|a| a.allocate(owner).map_err(StoreError::from))
    }

    /// Frees `owner`'s address (recorded); `None` if it held none.
    pub fn release(&self, owner: &Owner) -> Result<Option<Ipv4Addr>, StoreError> {
        self.update(|a| Ok(a.release(owner)))
    }

    /// Frees every address of a container (recorded).
    pub fn release_container(&self, container_id: &str) -> Result<Vec<Ipv4Addr>, StoreError> {
        self.update(|a| Ok(a.release_container(container_id)))
    }

    /// Frees every allocation of a container not in `keep` (recorded in one
    /// write); returns what it freed.
    pub fn gc(&self, keep: &HashSet<String>) -> Result<Vec<(Ipv4Addr, Owner)>, StoreError> {
        self.update(|a| Ok(a.gc(keep)))
    }

    pub fn lookup(&self, owner: &Owner) -> Option<Ipv4Addr> {
        self.lock().alloc.lookup(owner)
    }

    /// Addresses held by any interface of the container.
    pub fn lookup_container(&self, container_id: &str) -> Vec<(Ipv4Addr, Owner)> {
        self.lock().alloc.lookup_container(container_id).into_iter().map(|(ip, o)| (ip, o.clone())).collect()
    }

    /// Every allocation, by address.
    pub fn allocations(&self) -> Vec<(Ipv4Addr, Owner)> {
        self.lock().alloc.allocations().map(|(ip, o)| (ip, o.clone())).collect()
    }

    /// Path of the log (for operators and tests).
    pub fn path(&self) -> PathBuf {
        self.dir.join(LOG)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The allocator is only replaced whole after a successful write, so
        // a panic in another holder cannot leave it half-changed.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `change` to a copy, appends the difference to the log, then
    /// makes the copy the current state.
    fn update<T>(
        &self,
        change: impl FnOnce(&mut Allocator) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let path = self.path();
        let mut st = self.lock();
        if st.broken {
            return Err(StoreError::Broken { path });
        }
        let mut next = st.alloc.clone();
        let out = change(&mut next)?;
        let records = diff(&st.alloc, &next);
        if records.is_empty() {
            return Ok(out);
        }
        let mut bytes = Vec::new();
        for r in &records {
            encode(r, &mut bytes).map_err(io(&path, "encode"))?;
        }
        // One write of whole lines; a failure is cut back so the log never
        // keeps half a record in its middle.
        if let Err(e) = st.log.write_all(&bytes) {
            let len = st.len;
            if st.log.set_len(len).is_err() {
                st.broken = true;
            }
            return Err(StoreError::Io { path, op: "append", source: e });
        }
        st.len += bytes.len() as u64;
        st.records += records.len();
        st.alloc = next;
        if st.records > st.alloc.len() + COMPACT_SLACK {
            // Best effort: the log is complete either way.
            match write_snapshot(&self.dir, &st.alloc) {
                Ok((log, len, n)) => (st.log, st.len, st.records) = (log, len, n),
                Err(e) => tracing::warn!(error = %e, "compacting the IPAM log failed"),
            }
        }
        Ok(out)
    }
}

fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { path: path.to_path_buf(), op, source }
}

fn encode(r: &Record, out: &mut Vec<u8>) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, r)?;
    out.push(b'\n');
    Ok(())
}

/// The records that turn `old` into `new`.
fn diff(old: &Allocator, new: &Allocator) -> Vec<Record> {
    let mut out: Vec<Record> = old
        .allocations()
        .filter(|(ip, o)| new.allocations.get(ip) != Some(*o))
        .map(|(ip, _)| Record::Free { ip })
        .collect();
    let mut added: Vec<Record> = new
        .allocations()
        .filter(|(ip, o)| old.allocations.get(ip) != Some(*o))
        .map(|(ip, o)| Record::Alloc { ip, container_id: o.container_id.clone(), ifname: o.ifname.clone() })
        .collect();
    // The newest allocation goes last: replaying an alloc moves the cursor.
    if let Some(last) = new.last_allocated() {
        if let Some(pos) = added.iter().position(|r| matches!(r, Record::Alloc { ip, .. } if *ip == last)) {
            let r = added.remove(pos);
            added.push(r);
        }
    }
    out.extend(added);
    if out.is_empty() && new.last_allocated() != old.last_allocated() {
        if let Some(ip) = new.last_allocated() {
            out.push(Record::Last { ip });
        }
    }
    out
}

fn load(path: &Path, subnet: Ipv4Network) -> Result<Allocator, StoreError> {
    let configured = Allocator::new(subnet)?;
    let text = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(configured),
        Err(e) => return Err(StoreError::Io { path: path.to_path_buf(), op: "read", source: e }),
    };
    let corrupt = |line: usize, reason: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: if line > 0 { format!("line {line}: {reason}") } else { reason },
    };
    let mut lines: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
    // After the last newline: "" for a complete log, else a record a machine
    // crash cut short. It was never complete on disk; drop it.
    if let Some(tail) = lines.pop() {
        if !tail.is_empty() {
            tracing::warn!(path = %path.display(), "IPAM log ends in a partial record; dropping it");
        }
    }
    let mut records = lines.iter().enumerate().map(|(i, l)| {
        serde_json::from_slice::<Record>(l).map(|r| (i + 1, r)).map_err(|e| corrupt(i + 1, e.to_string()))
    });
    match records.next().transpose()? {
        Some((_, Record::Header { version, subnet: stored })) => {
            if version != FORMAT_VERSION {
                return Err(corrupt(
                    1,
                    format!("unknown format version {version} (expected {FORMAT_VERSION})"),
                ));
            }
            let stored: Ipv4Network =
                stored.parse().map_err(|e| corrupt(1, format!("subnet {stored:?}: {e}")))?;
            if stored != configured.subnet() {
                return Err(StoreError::SubnetMismatch {
                    path: path.to_path_buf(),
                    stored,
                    configured: configured.subnet(),
                });
            }
        }
        Some((n, other)) => return Err(corrupt(n, format!("expected the header, found {other:?}"))),
        None => return Err(corrupt(0, "empty log (no header)".into())),
    }
    let mut alloc = configured;
    for rec in records {
        let (n, rec) = rec?;
        alloc.replay(&rec).map_err(|reason| corrupt(n, reason))?;
    }
    Ok(alloc)
}

impl Allocator {
    /// Applies one log record, refusing any that contradicts the state.
    fn replay(&mut self, rec: &Record) -> Result<(), String> {
        match rec {
            Record::Header { .. } => Err("a second header".into()),
            Record::Alloc { ip, container_id, ifname } => {
                let owner = Owner::new(container_id.clone(), ifname.clone());
                if !self.in_pod_range(*ip) {
                    return Err(format!("{ip} is outside the pod range of {}", self.subnet()));
                }
                if let Some(first) = self.allocations.get(ip) {
                    return Err(IpamError::DuplicateAddress { ip: *ip, first: first.clone(), second: owner }
                        .to_string());
                }
                if let Some(first) = self.lookup(&owner) {
                    return Err(IpamError::DuplicateOwner { owner, first, second: *ip }.to_string());
                }
                self.allocations.insert(*ip, owner);
                self.last = Some(*ip);
                Ok(())
            }
            Record::Free { ip } => match self.allocations.remove(ip) {
                Some(_) => Ok(()),
                None => Err(format!("free of {ip}, which is not allocated")),
            },
            Record::Last { ip } => {
                self.last = Some(*ip).filter(|ip| self.in_pod_range(*ip));
                Ok(())
            }
        }
    }
}

/// Writes `alloc` as a fresh log (durably: a crash leaves the old or the new
/// one) and returns it opened for appending, with its length and records.
fn write_snapshot(dir: &Path, alloc: &Allocator) -> Result<(File, u64, usize), StoreError> {
    let tmp = dir.join(TMP);
    let dest = dir.join(LOG);
    let mut records = vec![Record::Header { version: FORMAT_VERSION, subnet: alloc.subnet().to_string() }];
    records.extend(alloc.allocations().map(|(ip, o)| Record::Alloc {
        ip,
        container_id: o.container_id.clone(),
        ifname: o.ifname.clone(),
    }));
    if let Some(ip) = alloc.last_allocated() {
        records.push(Record::Last { ip });
    }
    let mut bytes = Vec::new();
    for r in &records {
        encode(r, &mut bytes).map_err(io(&tmp, "encode"))?;
    }
    let mut f = File::create(&tmp).map_err(io(&tmp, "create"))?;
    f.write_all(&bytes).map_err(io(&tmp, "write"))?;
    f.sync_all().map_err(io(&tmp, "fsync"))?;
    drop(f);
    std::fs::rename(&tmp, &dest).map_err(io(&dest, "rename"))?;
    // The rename is durable only once the directory entry is on disk.
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir, "fsync directory"))?;
    let log = OpenOptions::new().append(true).open(&dest).map_err(io(&dest, "open for append"))?;
    Ok((log, bytes.len() as u64, records.len()))
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
    fn every_change_is_on_disk_before_the_call_returns() {
        // What a crash right after the call would find: the log as it is.
        let dir = TempDir::new("durable");
        let subnet = net("10.7.0.0/24");
        let s = IpamStore::open(&dir.0, subnet).expect("open");
        let a = s.allocate(&owner("a")).expect("a");
        s.allocate(&owner("b")).expect("b");
        s.release(&owner("b")).expect("release");
        let copy = TempDir::new("durable-copy");
        std::fs::create_dir_all(&copy.0).expect("mkdir");
        std::fs::copy(s.path(), copy.0.join(LOG)).expect("copy log");
        let seen = IpamStore::open(&copy.0, subnet).expect("open the copy");
        assert_eq!(seen.allocations(), [(a, owner("a"))]);
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused() {
        let dir = TempDir::new("lock");
        let _s = IpamStore::open(&dir.0, net("10.7.0.0/24")).expect("open");
        let err = IpamStore::open(&dir.0, net("10.7.0.0/24")).expect_err("locked");
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    }

    /// A log with allocations a, b, c and b freed, as written by the store.
    fn sample_log(dir: &TempDir, subnet: Ipv4Network) -> String {
        let s = IpamStore::open(&dir.0, subnet).expect("open");
        for c in ["a", "b", "c"] {
            s.allocate(&owner(c)).expect("ip");
        }
        s.release(&owner("b")).expect("release");
        std::fs::read_to_string(s.path()).expect("read")
    }

    #[test]
    fn corrupted_log_is_a_clear_error() {
        let dir = TempDir::new("corrupt");
        let subnet = net("10.7.0.0/24");
        let good = sample_log(&dir, subnet);
        let path = dir.0.join(LOG);
        let lines: Vec<&str> = good.lines().collect();
        let cases = [
            // Garbage in the middle.
            format!("{}\n{{\"op\":\"alloc\",\"ip\":\"10.7\n{}\n", lines[0], lines[1..].join("\n")),
            // No header.
            String::new(),
            format!("{}\n", lines[1..].join("\n")),
            good.replace("\"version\":1", "\"version\":9"),
            // The gateway handed out.
            good.replace("10.7.0.2", "10.7.0.1"),
            // A free of a free address.
            format!("{good}{{\"op\":\"free\",\"ip\":\"10.7.0.9\"}}\n"),
        ];
        for bad in cases {
            std::fs::write(&path, &bad).expect("write");
            let err = IpamStore::open(&dir.0, subnet).expect_err(&format!("corrupt: {bad}"));
            assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
            assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
        }
        // One address to two containers.
        let dup = r#"{"op":"alloc","ip":"10.7.0.2","container_id":"z","ifname":"eth0"}"#;
        std::fs::write(&path, format!("{good}{dup}\n")).expect("write");
        let err = IpamStore::open(&dir.0, subnet).expect_err("duplicate");
        assert!(err.to_string().contains("allocated twice"), "{err}");
    }

    #[test]
    fn a_record_cut_short_by_a_crash_is_dropped_and_the_rest_kept() {
        let dir = TempDir::new("torn");
        let subnet = net("10.7.0.0/24");
        let good = sample_log(&dir, subnet);
        let path = dir.0.join(LOG);
        std::fs::write(&path, format!("{good}{{\"op\":\"alloc\",\"ip\":\"10.7.0.")).expect("write");
        let s = IpamStore::open(&dir.0, subnet).expect("torn tail tolerated");
        let held: Vec<String> = s.allocations().into_iter().map(|(_, o)| o.container_id).collect();
        assert_eq!(held, ["a", "c"]);
        // The snapshot written on open no longer has the torn bytes.
        assert!(std::fs::read_to_string(&path).expect("read").ends_with('\n'));
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
    fn concurrent_allocations_get_unique_addresses_and_all_are_recorded() {
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
    fn full_subnet_error_writes_nothing() {
        let dir = TempDir::new("full");
        let s = IpamStore::open(&dir.0, net("10.7.0.0/30")).expect("open");
        s.allocate(&owner("a")).expect("a");
        let before = std::fs::read(s.path()).expect("read");
        let err = s.allocate(&owner("b")).expect_err("full");
        assert!(err.to_string().contains("is full"), "{err}");
        assert_eq!(std::fs::read(s.path()).expect("read"), before);
    }

    #[test]
    fn gc_and_release_are_recorded_and_idempotent() {
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

    #[test]
    fn a_long_log_is_compacted_and_keeps_its_meaning() {
        let dir = TempDir::new("compact");
        let subnet = net("10.7.0.0/24");
        let s = IpamStore::open(&dir.0, subnet).expect("open");
        s.allocate(&owner("keep")).expect("ip");
        for i in 0..(COMPACT_SLACK / 2 + 10) {
            let o = owner(&format!("churn{i}"));
            s.allocate(&o).expect("ip");
            s.release(&o).expect("release");
        }
        let lines = std::fs::read_to_string(s.path()).expect("read").lines().count();
        assert!(lines < COMPACT_SLACK, "compacted: {lines} lines");
        let next = s.allocate(&owner("next")).expect("ip");
        drop(s);
        let s = IpamStore::open(&dir.0, subnet).expect("reopen");
        let held: Vec<(Ipv4Addr, String)> =
            s.allocations().into_iter().map(|(ip, o)| (ip, o.container_id)).collect();
        let first: Ipv4Addr = "10.7.0.2".parse().expect("ip");
        assert_eq!(held, [(first, "keep".to_string()), (next, "next".to_string())]);
    }

    fn claims_of(s: &IpamStore) -> Vec<Claim> {
        s.allocations()
            .into_iter()
            .map(|(ip, owner)| Claim { ip, port: format!("kov-{}", owner.container_id), owner })
            .collect()
    }

    /// The claims of pods a, b and c, allocated by a store in `dir`.
    fn three_pods(dir: &TempDir, subnet: Ipv4Network) -> Vec<Claim> {
        let s = IpamStore::open(&dir.0, subnet).expect("open");
        for c in ["a", "b", "c"] {
            s.allocate(&owner(c)).expect("ip");
        }
        claims_of(&s)
    }

    #[test]
    fn a_removed_log_is_rebuilt_from_the_ports_and_no_running_address_is_reused() {
        let dir = TempDir::new("removed");
        let subnet = net("10.7.0.0/24");
        let claims = three_pods(&dir, subnet);
        std::fs::remove_dir_all(&dir.0).expect("remove the state dir");
        let (s, rec) = IpamStore::open_with_claims(&dir.0, subnet, claims.clone()).expect("open");
        assert_eq!(rec.log, LogState::Missing);
        assert!(rec.rebuilt());
        assert_eq!(rec.report.added.len(), 3);
        let new = s.allocate(&owner("new")).expect("ip");
        assert!(claims.iter().all(|c| c.ip != new), "{new} is a running pod's");
        drop(s);
        // Written down: a plain reopen knows them all.
        let s = IpamStore::open(&dir.0, subnet).expect("reopen");
        assert_eq!(s.allocations().len(), 4);
        drop(s);
        // And a first start (no log, no ports) is no rebuild.
        let fresh = TempDir::new("fresh");
        let (_, rec) = IpamStore::open_with_claims(&fresh.0, subnet, vec![]).expect("open");
        assert_eq!(rec.log, LogState::Missing);
        assert!(!rec.rebuilt());
    }

    #[test]
    fn a_corrupted_log_is_set_aside_and_rebuilt_from_the_ports() {
        let dir = TempDir::new("corrupt-rebuild");
        let subnet = net("10.7.0.0/24");
        let good = sample_log(&dir, subnet);
        let claims = claims_of(&IpamStore::open(&dir.0, subnet).expect("open"));
        let bad = format!("{good}garbage\n");
        std::fs::write(dir.0.join(LOG), &bad).expect("write");
        let (s, rec) = IpamStore::open_with_claims(&dir.0, subnet, claims.clone()).expect("open");
        let LogState::Corrupt { set_aside, reason } = &rec.log else { panic!("{rec:?}") };
        assert!(reason.contains("line"), "{reason}");
        assert_eq!(std::fs::read_to_string(set_aside).expect("kept for the operator"), bad);
        assert!(rec.rebuilt());
        let held: Vec<Ipv4Addr> = s.allocations().into_iter().map(|(ip, _)| ip).collect();
        assert_eq!(held, claims.iter().map(|c| c.ip).collect::<Vec<_>>());
        let new = s.allocate(&owner("new")).expect("ip");
        assert!(claims.iter().all(|c| c.ip != new));
    }

    #[test]
    fn a_log_that_lost_records_is_completed_from_the_ports() {
        let dir = TempDir::new("truncated");
        let subnet = net("10.7.0.0/24");
        let claims = three_pods(&dir, subnet);
        // Cut after the header and the first allocation (whole lines).
        let text = std::fs::read_to_string(dir.0.join(LOG)).expect("read");
        let kept: Vec<&str> = text.lines().take(2).collect();
        std::fs::write(dir.0.join(LOG), format!("{}\n", kept.join("\n"))).expect("write");
        let (s, rec) = IpamStore::open_with_claims(&dir.0, subnet, claims.clone()).expect("open");
        assert_eq!(rec.log, LogState::Intact);
        assert_eq!(rec.report.added.len(), 2, "{rec:?}");
        let new = s.allocate(&owner("new")).expect("ip");
        assert!(claims.iter().all(|c| c.ip != new));
        drop(s);
        // Consistent now: the next start has nothing to recover.
        let (_, rec) = IpamStore::open_with_claims(&dir.0, subnet, claims).expect("open");
        assert!(!rec.rebuilt(), "{rec:?}");
    }

    #[test]
    fn diff_puts_the_newest_allocation_last() {
        let mut old = Allocator::new(net("10.7.0.0/24")).expect("alloc");
        old.allocate(&owner("a")).expect("ip");
        let mut new = old.clone();
        new.release(&owner("a"));
        new.allocate(&owner("b")).expect("ip");
        let recs = diff(&old, &new);
        assert!(matches!(recs[0], Record::Free { .. }));
        assert!(matches!(&recs[1], Record::Alloc { container_id, .. } if container_id == "b"));
        let mut replayed = old.clone();
        for r in &recs {
            replayed.replay(r).expect("replay");
        }
        assert_eq!(replayed, new);
    }
}
