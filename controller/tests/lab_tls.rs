//! etcd over TLS with client certificates: the controller and k8s-ovs-ctl
//! connect with --etcd-ca / --etcd-cert / --etcd-key.

mod support;

use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use controller::run::{run, Settings};
use controller::store::{self, EtcdTls};
use lab::etcd::Etcd;
use lab::pki::Pki;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_controller_and_ctl_talk_tls_to_etcd() -> Result<()> {
    lab::needs_root!();
    let dir = TempDir::new("etcd-tls")?;
    let pki = Pki::create(&dir.0.join("pki"), "127.0.0.1")?;
    let etcd = Etcd::start_with(None, "127.0.0.1", free_port_pair()?, &dir.0, Some(&pki))?;
    let endpoint = etcd.endpoint.clone();
    let tls = EtcdTls {
        ca: Some(pki.read("ca.crt")?),
        identity: Some((pki.read("client.crt")?, pki.read("client.key")?)),
    };

    let settings = Settings {
        endpoints: vec![endpoint.clone()],
        etcd_tls: Some(tls.clone()),
        prefix: PREFIX.into(),
        bootstrap: Some(config()),
        admin_namespaces: vec![],
        id: "tls1".into(),
        lease_ttl_secs: 10,
        subnet_grace: std::time::Duration::from_secs(300),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(run(settings, None, async move {
        let _ = stop_rx.await;
    }));
    let leader = eventually("the controller leads over TLS", Duration::from_secs(30), || async {
        let Ok(mut c) = store::connect_with(std::slice::from_ref(&endpoint), Some(&tls)).await else {
            return Ok(None);
        };
        let Ok(resp) = c.get(keys().leader(), None).await else { return Ok(None) };
        Ok(resp.kvs().first().and_then(|kv| kv.value_str().ok().map(str::to_string)))
    })
    .await?;
    assert_eq!(leader, "tls1");

    let ctl = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_k8s-ovs-ctl"))
            .args(["--endpoints", &endpoint])
            .args(extra)
            .arg("subnets")
            .output()
    };
    let p = |f: &str| pki.path(f);
    let ok =
        ctl(&["--etcd-ca", &p("ca.crt"), "--etcd-cert", &p("client.crt"), "--etcd-key", &p("client.key")])?;
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("HOSTIP"));
    // Without the client certificate etcd refuses the connection.
    let refused = ctl(&["--etcd-ca", &p("ca.crt")])?;
    assert!(!refused.status.success());

    let _ = stop_tx.send(());
    controller.await?
}
