//! Two controllers on one etcd: one leads, no VNI is handed out twice, and
//! when the leader dies (crash or SIGTERM) the other takes over.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use lab::kube_api::KubeApi;
use support::*;

/// NetID of every namespace record, once `want` records are settled.
async fn all_ids(etcd: &TestEtcd, want: usize) -> Result<BTreeMap<String, u32>> {
    let mut client = controller::store::connect(&[etcd.endpoint()]).await?;
    let keys = keys();
    let mut ids = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        ids.clear();
        let mut pending = false;
        for (key, raw, _) in controller::run::read_all(&mut client, &keys).await? {
            let Some(k) = keys.parse(&key).filter(|k| k.kind == etcd_schema::KeyKind::NetNamespace) else {
                continue;
            };
            match etcd_schema::parse_net_namespace(&key, &k.name, &raw) {
                Ok(r) if r.action.is_none() => {
                    ids.insert(k.name, r.net_id);
                }
                _ => pending = true,
            }
        }
        if !pending && ids.len() == want {
            return Ok(ids);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "gave up waiting for {want} settled records (have {})",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_unique(ids: &BTreeMap<String, u32>) {
    let mut seen: BTreeMap<u32, &String> = BTreeMap::new();
    for (ns, id) in ids {
        assert!(*id >= 10, "{ns} got {id}");
        if let Some(other) = seen.insert(*id, ns) {
            panic!("VNI {id} handed to both {other} and {ns}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_two_controllers_200_namespaces_then_leader_crash() -> Result<()> {
    lab::needs_root!();
    let ttl = 3;
    let etcd = TestEtcd::start()?;
    let api = KubeApi::start()?;
    let c1 = Controller::spawn("c1", &etcd, Some(&api), ttl)?;
    let c2 = Controller::spawn("c2", &etcd, Some(&api), ttl)?;
    let first = eventually("a leader", Duration::from_secs(30), || async { leader(&etcd) }).await?;
    for i in 0..200 {
        api.create_namespace(&format!("t{i:03}"))?;
    }
    let ids = all_ids(&etcd, 200).await?;
    assert_unique(&ids);

    // Crash the leader: its lease is not revoked, so the follower waits for
    // the lease to expire (the TTL) and takes over.
    let (dead, alive) = if first == "c1" { (c1, c2) } else { (c2, c1) };
    let crashed_at = Instant::now();
    dead.crash();
    let next = eventually("a new leader", Duration::from_secs(10 * ttl as u64), || async {
        Ok(leader(&etcd)?.filter(|l| *l != first))
    })
    .await?;
    let takeover = crashed_at.elapsed();
    eprintln!("takeover after a crash: {takeover:?} (lease TTL {ttl} s)");
    assert_eq!(next, alive.id);

    // Work continues: 50 more namespaces, 20 deleted (their VNIs freed), all unique.
    for i in 200..250 {
        api.create_namespace(&format!("t{i:03}"))?;
    }
    for i in 0..20 {
        api.delete_namespace(&format!("t{i:03}"))?;
    }
    let ids = all_ids(&etcd, 230).await?;
    assert_unique(&ids);
    assert!(!ids.contains_key("t000") && ids.contains_key("t249"));
    alive.stop().await?;
    assert_eq!(leader(&etcd)?, None, "a stopped controller resigns");
    Ok(())
}

fn daemon(etcd: &TestEtcd, api: &KubeApi, id: &str, dir: &TempDir) -> Result<Daemon> {
    let log = std::fs::File::create(dir.0.join(format!("{id}.log")))?;
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_k8s-ovs-controller"))
        .args([
            "--etcd-endpoints",
            &etcd.endpoint(),
            "--kube-url",
            &api.url(),
            "--id",
            id,
            "--network",
            "172.11.0.0/16",
        ])
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("spawn k8s-ovs-controller")?;
    Ok(Daemon(child))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_sigterm_resigns_and_the_other_takes_over_at_once() -> Result<()> {
    lab::needs_root!();
    let etcd = TestEtcd::start()?;
    let api = KubeApi::start()?;
    let dir = TempDir::new("ctl-logs")?;
    let d1 = daemon(&etcd, &api, "d1", &dir)?;
    let first = eventually("d1 leads", Duration::from_secs(30), || async { leader(&etcd) }).await?;
    assert_eq!(first, "d1");
    let d2 = daemon(&etcd, &api, "d2", &dir)?;
    api.create_namespace("x")?;
    wait_settled(&etcd, "x").await?;
    // SIGTERM (the default lease TTL is 10 s; a resign hands over at once).
    let stopped_at = Instant::now();
    drop(d1);
    eventually("d2 leads", Duration::from_secs(30), || async { Ok(leader(&etcd)?.filter(|l| l == "d2")) })
        .await?;
    eprintln!("takeover after SIGTERM: {:?}", stopped_at.elapsed());
    api.create_namespace("y")?;
    let y = wait_settled(&etcd, "y").await?;
    assert_ne!(y.net_id, wait_settled(&etcd, "x").await?.net_id);
    let log = std::fs::read_to_string(dir.0.join("d1.log"))?;
    assert!(log.contains("SIGTERM"), "d1 logged its shutdown: {log}");
    drop(d2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_controller_reconnects_after_etcd_restarts() -> Result<()> {
    lab::needs_root!();
    let mut etcd = TestEtcd::start()?;
    let api = KubeApi::start()?;
    api.create_namespace("before")?;
    let c = Controller::spawn("c1", &etcd, Some(&api), 3)?;
    let before = wait_settled(&etcd, "before").await?.net_id;

    // etcd goes away (same data, same port afterwards); meanwhile a namespace appears.
    let port: u16 = etcd.endpoint().rsplit(':').next().unwrap_or_default().parse()?;
    let dir = etcd.etcd.data_dir.parent().context("etcd dir")?.to_path_buf();
    etcd.etcd.stop();
    api.create_namespace("during")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    etcd.etcd = lab::etcd::Etcd::start(None, "127.0.0.1", port, &dir)?;

    let during = wait_settled(&etcd, "during").await?.net_id;
    assert!(during >= 10 && during != before);
    assert_eq!(wait_settled(&etcd, "before").await?.net_id, before);
    c.stop().await
}
