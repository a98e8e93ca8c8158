//! The flows a stopping daemon counted but the agent had not fetched yet (up to its last
//! read interval, plus the capture's last report): saved at a stop to `flows-handover.json`
//! in `state.dir`, read back and removed at the next start, and handed over in the first
//! `flows` reply under the stopped run's instance. Without it a restart lost those bytes
//! from the telemetry. A crash leaves no file: those bytes are lost, as is the traffic
//! forwarded while no daemon captures.

use std::path::Path;

use crate::report::Handover;

pub(super) const FILE: &str = "flows-handover.json";

/// Saves `handover` (nothing if it holds no flow). Logs a failure: telemetry, not billing.
pub(super) fn save(path: &Path, handover: &Handover) {
    if handover.connections.is_empty() {
        return;
    }
    let result = serde_json::to_vec(handover)
        .map_err(std::io::Error::other)
        .and_then(|json| edgeshare_shared::secret::write_private(path, &json));
    if let Err(err) = result {
        tracing::warn!(path = %path.display(), error = %err, "cannot keep the flows the agent has not fetched; their last bytes are lost to the telemetry");
    }
}

/// The handover a previous run left, removed from disk so that it is handed over once.
pub(super) fn take(path: &Path) -> Option<Handover> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "cannot read the flows the last run kept for the agent");
            return None;
        }
    };
    if let Err(err) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %err, "cannot remove the flows handed over; they would be handed over again at the next start");
    }
    match serde_json::from_slice(&bytes) {
        Ok(handover) => Some(handover),
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "unreadable flows kept by the last run; ignored");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::connection;
    use crate::report::tests::flow;

    #[test]
    fn a_handover_is_read_back_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let handover = Handover {
            instance: 42,
            connections: vec![connection(&flow(40000, 0, false))],
        };
        save(&path, &handover);
        assert_eq!(take(&path), Some(handover));
        assert_eq!(take(&path), None, "once");
        save(
            &path,
            &Handover {
                instance: 43,
                connections: vec![],
            },
        );
        assert!(!path.exists(), "nothing to keep, no file");
    }
}
