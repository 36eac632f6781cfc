//! etcd over TLS with client certificates: the controller and k8s-ovs-ctl
//! connect with --etcd-ca / --etcd-cert / --etcd-key.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use controller::run::{run, Settings};
use controller::store::{self, EtcdTls};
use support::*;

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl").args(args).current_dir(dir).output().context("run openssl")?;
    anyhow::ensure!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// A throwaway CA, a server certificate for 127.0.0.1 and a client certificate.
fn make_pki(dir: &Path) -> Result<()> {
    let ca_ext =
        ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"];
    let mut ca = vec!["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt"];
    ca.extend(["-days", "1", "-subj", "/CN=k8s-ovs-test-ca"]);
    ca.extend(ca_ext);
    openssl(dir, &ca)?;
    for (name, usage) in [("server", "serverAuth,clientAuth"), ("client", "clientAuth")] {
        let ext = format!("{name}.ext");
        std::fs::write(
            dir.join(&ext),
            format!("subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"),
        )?;
        let (key, csr, crt) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"));
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "1",
                "-extfile",
                &ext,
            ],
        )?;
    }
    Ok(())
}

fn start_tls_etcd(dir: &Path, port: u16) -> Result<Daemon> {
    let client = format!("https://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{}", port + 1);
    let log = std::fs::File::create(dir.join("etcd.log"))?;
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let child = Command::new("etcd")
        .args(["--name", "tls", "--data-dir", &p("data"), "--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client, "--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer, "--initial-cluster", &format!("tls={peer}")])
        .args(["--cert-file", &p("server.crt"), "--key-file", &p("server.key")])
        .args(["--trusted-ca-file", &p("ca.crt"), "--client-cert-auth", "--log-level", "warn"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("spawn etcd")?;
    Ok(Daemon(child))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_controller_and_ctl_talk_tls_to_etcd() -> Result<()> {
    let dir = TempDir::new("etcd-tls")?;
    make_pki(&dir.0)?;
    let port = free_port_pair()?;
    let _etcd = start_tls_etcd(&dir.0, port)?;
    let endpoint = format!("https://127.0.0.1:{port}");
    let read = |f: &str| std::fs::read(dir.0.join(f));
    let tls =
        EtcdTls { ca: Some(read("ca.crt")?), identity: Some((read("client.crt")?, read("client.key")?)) };

    let settings = Settings {
        endpoints: vec![endpoint.clone()],
        etcd_tls: Some(tls.clone()),
        prefix: PREFIX.into(),
        bootstrap: Some(config()),
        admin_namespaces: vec![],
        id: "tls1".into(),
        lease_ttl_secs: 10,
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
    let p = |f: &str| dir.0.join(f).to_string_lossy().into_owned();
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
