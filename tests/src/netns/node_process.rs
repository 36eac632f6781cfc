//! Starting a program as a process of a lab node, the way the kubelet's
//! runtime execs a CNI plugin: a plain fork and exec by a process that already
//! lives in the node's network namespace and sees the node's own `/sys`.
//!
//! `ip netns exec` gets a program there too, but as a process of its own
//! that first makes a mount namespace and remounts `/sys`, then execs: about
//! 2 ms per call that a real kubelet never pays, and that would count in every
//! CNI ADD and DEL the lab times, ours and upstream's alike. Here one thread
//! per namespace does that setup once (`setns`, a mount namespace of its own
//! with the node's sysfs, as `ip netns exec` makes it), and every program is
//! spawned from that thread: a child starts in the namespaces of the thread
//! that spawned it.

use std::collections::HashMap;
use std::fs::File;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Mutex, OnceLock};

use anyhow::{anyhow, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

type Job = Box<dyn FnOnce() + Send>;

/// The spawning thread of each namespace, by name; created on first use.
fn threads() -> &'static Mutex<HashMap<String, Sender<Job>>> {
    static THREADS: OnceLock<Mutex<HashMap<String, Sender<Job>>>> = OnceLock::new();
    THREADS.get_or_init(Default::default)
}

/// Runs `job` on the spawning thread of namespace `ns` (`/run/netns/<ns>`):
/// processes it spawns are processes of that node. Returns what `job` returns.
/// One job at a time per node: a job should spawn and return (the caller
/// waits for the child), so that concurrent callers' programs run at once.
pub fn run<T: Send + 'static>(ns: &str, job: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let sender = {
        let mut threads = threads().lock().map_err(|_| anyhow!("node process threads: lock poisoned"))?;
        match threads.get(ns) {
            Some(s) => s.clone(),
            None => {
                let s = start(ns)?;
                threads.insert(ns.to_string(), s.clone());
                s
            }
        }
    };
    let (done, result) = mpsc::channel();
    sender
        .send(Box::new(move || {
            let _ = done.send(job());
        }))
        .map_err(|_| anyhow!("the spawning thread of {ns} is gone"))?;
    result.recv().map_err(|_| anyhow!("the spawning thread of {ns} ended during a job"))
}

/// Ends namespace `ns`'s spawning thread (when the namespace goes): it holds
/// the namespace, which would otherwise live on, devices and all, until the
/// test process exits.
pub fn forget(ns: &str) {
    if let Ok(mut threads) = threads().lock() {
        threads.remove(ns);
    }
}

fn start(ns: &str) -> Result<Sender<Job>> {
    let (jobs, queue) = mpsc::channel::<Job>();
    let (ready, is_ready) = mpsc::channel();
    let name = ns.to_string();
    std::thread::Builder::new()
        .name(format!("node-process-{ns}"))
        .spawn(move || {
            let entered = enter(&name);
            let ok = entered.is_ok();
            let _ = ready.send(entered);
            if ok {
                serve(queue);
            }
        })
        .context("spawn a node process thread")?;
    is_ready.recv().map_err(|_| anyhow!("the spawning thread of {ns} ended at start"))??;
    Ok(jobs)
}

/// Moves the calling thread into the node: its network namespace, then a
/// mount namespace of its own where `/sys` is the node's (sysfs shows the
/// network namespace of whoever mounts it), with mounts kept from
/// propagating back to the machine's.
fn enter(ns: &str) -> Result<()> {
    let path = std::path::Path::new("/run/netns").join(ns);
    let f = File::open(&path).with_context(|| format!("open {}", path.display()))?;
    setns(&f, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into {ns}"))?;
    unshare(CloneFlags::CLONE_NEWNS).context("unshare the mount namespace")?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>)
        .context("make / a slave mount")?;
    // As `ip netns exec`: the old sysfs may be busy; detach it either way.
    let _ = umount2("/sys", MntFlags::MNT_DETACH);
    mount(Some(ns), "/sys", Some("sysfs"), MsFlags::empty(), None::<&str>)
        .with_context(|| format!("mount {ns}'s sysfs"))?;
    Ok(())
}

fn serve(queue: Receiver<Job>) {
    while let Ok(job) = queue.recv() {
        job();
    }
}
