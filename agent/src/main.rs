//! `k8s-ovs-agent`: the node agent. Thin: flags, logging, signals; the
//! work is in `k8s_ovs_agent::run`.

use std::time::Duration;

use clap::Parser;
use k8s_ovs_agent::config::AgentConfig;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tracing::warn;

/// How long a signalled agent may take to stop. The loop stops between two
/// inputs (a CNI request is never cut in half), which takes milliseconds; a
/// start-up step waiting on OVS or etcd is not a loop turn, so this bounds
/// it (well inside the DaemonSet's terminationGracePeriodSeconds).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

async fn signalled(term: &mut Signal) {
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cfg = AgentConfig::parse();
    let mut term = signal(SignalKind::terminate())?;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let shutdown = async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    };
    let agent = k8s_ovs_agent::run::run(cfg, shutdown);
    tokio::pin!(agent);
    tokio::select! {
        r = &mut agent => return r,
        () = signalled(&mut term) => {}
    }
    let _ = stop_tx.send(true);
    tokio::select! {
        r = &mut agent => r,
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            warn!(grace = ?SHUTDOWN_GRACE, "still starting up after the signal; exiting anyway");
            // Not a return: dropping the runtime would wait for blocking
            // work the start-up may have under way.
            std::process::exit(0)
        }
        () = signalled(&mut term) => {
            warn!("second signal; exiting at once");
            std::process::exit(0)
        }
    }
}
