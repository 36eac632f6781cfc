//! The agent's side of the CNI socket: accepts one JSON request per
//! connection, hands it to the agent loop and writes the loop's answer.
//! The socket is root-only (0600): whoever can talk to it can wire pods.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use cni::protocol::{Command, Request, Response};
use cni::spec::{CniError, ErrorCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::timing::Stages;

/// A CNI request on its way to the agent loop, with where to answer.
pub type CniCall = (Request, oneshot::Sender<Response>);

/// Requests larger than this are refused (a config is a few KiB).
const MAX_REQUEST: u64 = 1 << 20;

/// Binds the socket (replacing a stale one from an earlier run), 0600.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("remove stale {}", path.display())),
    }
    let l = UnixListener::bind(path).with_context(|| format!("bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(l)
}

/// Serves connections until the loop goes away.
pub async fn serve(listener: UnixListener, to_loop: mpsc::Sender<CniCall>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "CNI socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let tx = to_loop.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, tx).await {
                debug!(error = %e, "CNI connection ended early");
            }
        });
    }
}

async fn handle(mut stream: UnixStream, to_loop: mpsc::Sender<CniCall>) -> Result<()> {
    let mut stages = Stages::new();
    let mut body = Vec::new();
    (&mut stream).take(MAX_REQUEST).read_to_end(&mut body).await?;
    stages.lap("read");
    let mut command = None;
    let response = match serde_json::from_slice::<Request>(&body) {
        Err(e) => Response::Error(
            CniError::new(ErrorCode::DecodeFailure, "the agent cannot decode the request")
                .with_details(e.to_string()),
        ),
        Ok(req) => {
            command = Some(req.command);
            let (tx, rx) = oneshot::channel();
            if to_loop.send((req, tx)).await.is_err() {
                Response::Error(CniError::new(ErrorCode::TryAgainLater, "the agent is shutting down"))
            } else {
                rx.await.unwrap_or_else(|_| {
                    Response::Error(CniError::new(ErrorCode::TryAgainLater, "the agent dropped the request"))
                })
            }
        }
    };
    stages.lap("loop");
    stream.write_all(&serde_json::to_vec(&response)?).await?;
    stream.shutdown().await?;
    stages.lap("write");
    match command {
        Some(Command::Add) => stages.log("serve_ADD"),
        Some(Command::Del) => stages.log("serve_DEL"),
        _ => {}
    }
    Ok(())
}
