//! `k8s-ovs-agent`: the node agent. Thin: flags, logging, signals; the
//! work is in `k8s_ovs_agent::run`.

use clap::Parser;
use k8s_ovs_agent::config::AgentConfig;
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cfg = AgentConfig::parse();
    let mut term = signal(SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    k8s_ovs_agent::run::run(cfg, shutdown).await
}
