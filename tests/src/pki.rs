//! A throwaway PKI for etcd over TLS: a CA, a server certificate for one IP
//! and a client certificate (etcd's `--client-cert-auth`), made with the
//! `openssl` command line.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

/// The PEM files of [`Pki::create`], all in one directory.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// Creates `ca.{crt,key}`, `server.{crt,key}` (valid for `server_ip`)
    /// and `client.{crt,key}` in `dir`, each valid for one day.
    pub fn create(dir: &Path, server_ip: &str) -> Result<Pki> {
        std::fs::create_dir_all(dir)?;
        let mut ca = vec!["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key"];
        ca.extend(["-out", "ca.crt", "-days", "1", "-subj", "/CN=k8s-ovs-test-ca"]);
        ca.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
        ca.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        openssl(dir, &ca)?;
        let pki = Pki { dir: dir.to_path_buf() };
        pki.issue("server", "serverAuth,clientAuth", server_ip)?;
        pki.issue("client", "clientAuth", server_ip)?;
        Ok(pki)
    }

    /// Another client certificate, `<cn>.{crt,key}` with CN `cn`: with etcd's
    /// `--client-cert-auth` and auth enabled the CN is the etcd user.
    pub fn issue_client(&self, cn: &str) -> Result<()> {
        self.issue(cn, "clientAuth", "127.0.0.1")
    }

    fn issue(&self, name: &str, usage: &str, ip: &str) -> Result<()> {
        let dir = self.dir.as_path();
        let ext = format!("{name}.ext");
        std::fs::write(
            dir.join(&ext),
            format!("subjectAltName=IP:{ip}\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"),
        )?;
        let (key, csr, crt) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"));
        let subject = format!("/CN={name}");
        openssl(
            dir,
            &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", &subject],
        )?;
        let mut sign = vec!["x509", "-req", "-in", &csr, "-CA", "ca.crt", "-CAkey", "ca.key"];
        sign.extend(["-CAcreateserial", "-out", &crt, "-days", "1", "-extfile", &ext]);
        openssl(dir, &sign)?;
        Ok(())
    }

    /// Absolute path of one of the files, as text (for command lines).
    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().into_owned()
    }

    /// The PEM bytes of one of the files.
    pub fn read(&self, file: &str) -> Result<Vec<u8>> {
        std::fs::read(self.dir.join(file)).with_context(|| format!("read {file}"))
    }

    /// `--etcd-ca/--etcd-cert/--etcd-key` as the k8s-ovs binaries take them.
    pub fn client_flags(&self) -> Vec<String> {
        self.client_flags_as("client")
    }

    /// `client_flags` with the certificate `<cn>.crt` of `issue_client`.
    pub fn client_flags_as(&self, cn: &str) -> Vec<String> {
        let (crt, key) = (format!("{cn}.crt"), format!("{cn}.key"));
        let mut v = Vec::new();
        for (flag, file) in
            [("--etcd-ca", "ca.crt"), ("--etcd-cert", crt.as_str()), ("--etcd-key", key.as_str())]
        {
            v.push(flag.to_string());
            v.push(self.path(file));
        }
        v
    }
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl").args(args).current_dir(dir).output().context("run openssl")?;
    anyhow::ensure!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}
