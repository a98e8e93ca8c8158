//! The control socket: a Unix socket, one JSON request per line, one JSON reply per line.
//! `edgeshare-gateway status|clients|kick|codes revoke` talk to the daemon through it.
//!
//! Only root (or the configured group) may connect: the socket is mode 0600 (0660 with a
//! group), in a directory only root can write.

use std::io::{BufRead, BufReader, Read as _, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgeshare_shared::code::AccessCode;
use serde::{Deserialize, Serialize};

use crate::net::Mac;

/// Longest request line the daemon reads.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    Status,
    Clients,
    Kick { mac: Mac },
    RevokeCode { code: AccessCode },
}

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
pub fn call(socket: &Path, request: &Request) -> Result<serde_json::Value, ControlError> {
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

/// Binds the control socket at `path`: its directory is created (mode 0755), a stale socket
/// from a crashed run is replaced, and the socket is made 0600, or 0660 for `group`.
pub fn bind(path: &Path, group: Option<u32>) -> std::io::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    Ok(listener)
}

/// The id of a group by name, from /etc/group.
pub fn group_id(name: &str) -> Option<u32> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    parse_group_id(&groups, name)
}

fn parse_group_id(groups: &str, name: &str) -> Option<u32> {
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        let found = fields.next()? == name;
        let gid = fields.nth(1)?.parse().ok()?;
        found.then_some(gid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let kick = Request::Kick {
            mac: "02:00:00:00:00:02".parse().unwrap(),
        };
        assert_eq!(
            serde_json::to_string(&kick).unwrap(),
            r#"{"cmd":"kick","mac":"02:00:00:00:00:02"}"#
        );
        let revoke: Request =
            serde_json::from_str(r#"{"cmd":"revoke-code","code":"abcd2345"}"#).unwrap();
        assert_eq!(
            revoke,
            Request::RevokeCode {
                code: AccessCode::parse("ABCD2345").unwrap()
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"kick","mac":"nope"}"#).is_err());
        assert_eq!(
            serde_json::to_string(&Reply::Error("x".into())).unwrap(),
            r#"{"error":"x"}"#
        );
    }

    #[test]
    fn group_lookup() {
        let groups = "root:x:0:\nedgeshare:x:998:pi\n";
        assert_eq!(parse_group_id(groups, "edgeshare"), Some(998));
        assert_eq!(parse_group_id(groups, "nope"), None);
    }

    #[test]
    fn a_missing_socket_says_the_daemon_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let err = call(&dir.path().join("gw.sock"), &Request::Status).unwrap_err();
        assert!(matches!(err, ControlError::NotRunning { .. }));
        assert!(err.to_string().contains("not running"));
    }
}
