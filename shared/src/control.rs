//! The gateway's control socket as other programs see it: a Unix socket, one JSON request
//! per line (`{"cmd": "…", …}`), one JSON reply per line (`{"ok": …}` or `{"error": "…"}`).
//! The gateway's CLI and the agent are its clients; the requests themselves are defined by
//! the gateway, the replies other programs read are typed here.

use std::io::{BufRead, BufReader, Read as _, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest request line the daemon reads.
pub const MAX_REQUEST: usize = 64 * 1024;

/// A reply: `{"ok": …}` or `{"error": "…"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply {
    Ok(serde_json::Value),
    Error(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the gateway daemon is not running (no control socket at {}); start it with `edgeshare-gateway run` or `systemctl start edgeshare-gateway`", path.display())]
    NotRunning { path: PathBuf },
    #[error("no permission to use the control socket {}: run as root (or as a member of control.group)", path.display())]
    Denied { path: PathBuf },
    #[error("talking to the daemon over {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon sent a reply this command does not understand: {0}")]
    BadReply(String),
    #[error("the daemon refused: {0}")]
    Refused(String),
}

/// Sends one request to the daemon and waits (at most 10 s) for its reply.
pub fn call(socket: &Path, request: &impl Serialize) -> Result<serde_json::Value, ControlError> {
    let io = |source: std::io::Error| ControlError::Io {
        path: socket.to_owned(),
        source,
    };
    let stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ControlError::NotRunning {
                path: socket.to_owned(),
            }
        }
        std::io::ErrorKind::PermissionDenied => ControlError::Denied {
            path: socket.to_owned(),
        },
        _ => io(e),
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    let mut line = serde_json::to_string(request).map_err(|e| io(e.into()))?;
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(io)?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .take(MAX_REQUEST as u64 * 16)
        .read_line(&mut reply)
        .map_err(io)?;
    match serde_json::from_str::<Reply>(&reply) {
        Ok(Reply::Ok(value)) => Ok(value),
        Ok(Reply::Error(message)) => Err(ControlError::Refused(message)),
        Err(_) => Err(ControlError::BadReply(reply.trim().to_owned())),
    }
}

/// Reply to `{"cmd":"usage"}`: every online client's usage in its current session, as the
/// kernel counted it (the billing meter), and its rates over the last counter interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveUsage {
    /// Unix milliseconds when the counters were read.
    pub at_ms: u64,
    pub clients: Vec<ClientUsage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientUsage {
    /// `aa:bb:cc:dd:ee:ff`
    pub mac: String,
    pub ip: IpAddr,
    /// The session the client's bytes are billed to: the same id as in the usage ledger.
    pub session: String,
    /// Billable bytes (IP total length) since the session started, client to WAN.
    pub up_bytes: u64,
    /// Billable bytes since the session started, WAN to client.
    pub down_bytes: u64,
    /// Bytes per second over the last interval.
    pub up_rate: f64,
    pub down_rate: f64,
}

/// Reply to `{"cmd":"flows"}`: the latest tallies of every flow (5-tuple) that carried bytes
/// since the previous `flows` request, as the capture meter saw them, plus the flows that
/// ended since then (status `inactive`). Each request drains them: the caller keeps what it
/// could not deliver yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flows {
    pub connections: Vec<crate::backend::telemetry::Connection>,
    /// This run of the gateway daemon (its start, Unix milliseconds). A restarted daemon
    /// counts its flows from zero under new ids: a flow that goes on carries the same 5-tuple
    /// under a new instance, and its caller adds the new counts to the old ones.
    #[serde(default)]
    pub instance: Option<u64>,
    /// After this long without a packet the gateway ends a flow (and says so once, with
    /// status `inactive`): a flow silent for longer, never ended, was lost (a restart).
    #[serde(default)]
    pub flow_idle_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_have_a_stable_wire_form() {
        assert_eq!(
            serde_json::to_string(&Reply::Error("x".into())).unwrap(),
            r#"{"error":"x"}"#
        );
        let ok: Reply = serde_json::from_str(r#"{"ok":{"n":1}}"#).unwrap();
        assert_eq!(ok, Reply::Ok(serde_json::json!({"n": 1})));
    }

    #[test]
    fn a_missing_socket_says_the_daemon_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let err = call(
            &dir.path().join("gw.sock"),
            &serde_json::json!({"cmd": "status"}),
        )
        .unwrap_err();
        assert!(matches!(err, ControlError::NotRunning { .. }));
        assert!(err.to_string().contains("not running"));
    }
}
