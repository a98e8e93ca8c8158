//! The control socket: a Unix socket, one JSON request per line, one JSON reply per line.
//! `edgeshare-gateway status|clients|kick|codes revoke` talk to the daemon through it.
//!
//! Only root (or the configured group) may connect: the socket is mode 0600 (0660 with a
//! group), in a directory only root can write.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use edgeshare_shared::code::AccessCode;
use serde::{Deserialize, Serialize};

use crate::net::Mac;

pub use edgeshare_shared::control::{ControlError, MAX_REQUEST, Reply, call};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    Status,
    Clients,
    Kick {
        mac: Mac,
    },
    RevokeCode {
        code: AccessCode,
    },
    /// Live usage per online device: [`edgeshare_shared::control::LiveUsage`].
    Usage,
    /// Flow tallies since the last request: [`edgeshare_shared::control::Flows`].
    Flows,
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
    }

    #[test]
    fn group_lookup() {
        let groups = "root:x:0:\nedgeshare:x:998:pi\n";
        assert_eq!(parse_group_id(groups, "edgeshare"), Some(998));
        assert_eq!(parse_group_id(groups, "nope"), None);
    }
}
