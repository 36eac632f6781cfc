//! Talking to the node agent: one request per connection over its unix
//! socket, with a deadline, and a clear message when it is not running.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::protocol::{Request, Response};
use crate::spec::{CniError, ErrorCode};

/// Sends `req` and waits at most `timeout` for the response.
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, CniError> {
    let mut s = UnixStream::connect(socket).map_err(|e| {
        CniError::new(
            ErrorCode::TryAgainLater,
            format!("the k8s-ovs agent is not running on this node (cannot connect to {})", socket.display()),
        )
        .with_details(e.to_string())
    })?;
    let io_err = |what: &str, e: std::io::Error| {
        let msg = if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
            format!("the k8s-ovs agent did not answer within {timeout:?} ({what})")
        } else {
            format!("talking to the k8s-ovs agent failed ({what})")
        };
        CniError::new(ErrorCode::IoFailure, msg).with_details(e.to_string())
    };
    s.set_read_timeout(Some(timeout)).map_err(|e| io_err("set timeout", e))?;
    s.set_write_timeout(Some(timeout)).map_err(|e| io_err("set timeout", e))?;
    let body = serde_json::to_vec(req).map_err(|e| {
        CniError::new(ErrorCode::IoFailure, "cannot encode the request").with_details(e.to_string())
    })?;
    s.write_all(&body).map_err(|e| io_err("send", e))?;
    s.shutdown(std::net::Shutdown::Write).map_err(|e| io_err("send", e))?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).map_err(|e| io_err("receive", e))?;
    serde_json::from_slice(&reply).map_err(|e| {
        CniError::new(ErrorCode::IoFailure, "the k8s-ovs agent sent an unreadable reply")
            .with_details(e.to_string())
    })
}
