//! The real `kubectl`, pointed at a test apiserver: a kubeconfig and a
//! discovery cache of its own (in a directory the caller owns), so
//! concurrent tests never share cached discovery, and commands run inside
//! the namespace the apiserver listens in.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cmd::Output;
use crate::netns::Netns;

pub struct Kubectl {
    kubeconfig: PathBuf,
    cache: PathBuf,
    /// Where kubectl runs (None: this process's namespace).
    netns: Option<Netns>,
}

impl Kubectl {
    /// A kubectl for the apiserver at `url`, its files under `dir`.
    pub fn new(url: &str, dir: &Path, netns: Option<&Netns>) -> Result<Kubectl> {
        std::fs::create_dir_all(dir)?;
        let kubeconfig = dir.join("kubeconfig");
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {url}\n\
             contexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\n\
             users:\n- name: lab\n  user: {{}}\ncurrent-context: lab\n"
        );
        std::fs::write(&kubeconfig, config).context("write the kubeconfig")?;
        Ok(Kubectl { kubeconfig, cache: dir.join("kube-cache"), netns: netns.cloned() })
    }

    /// `kubectl <args>`, with `stdin` if given; (exit code, stdout, stderr).
    pub fn run_with(&self, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Result<Output> {
        let (kc, cache) = (self.kubeconfig.to_string_lossy(), self.cache.to_string_lossy());
        let mut argv: Vec<&str> = vec!["kubectl", "--kubeconfig", &kc, "--cache-dir", &cache];
        argv.extend_from_slice(args);
        let argv = match &self.netns {
            Some(ns) => ns.wrap(&argv),
            None => argv,
        };
        crate::cmd::run_stdin(&argv, env, stdin, Duration::from_secs(60))
    }

    pub fn run(&self, args: &[&str]) -> Result<Output> {
        self.run_with(args, &[], None)
    }

    /// `kubectl apply -f -` of `manifest`.
    pub fn apply(&self, manifest: &str) -> Result<Output> {
        self.run_with(&["apply", "-f", "-"], &[], Some(manifest))
    }

    /// Runs `args`; fails with kubectl's stderr unless it exits 0.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        anyhow::ensure!(out.success(), "kubectl {}: {}{}", args.join(" "), out.stdout, out.stderr);
        Ok(out.stdout)
    }
}
