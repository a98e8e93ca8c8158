//! The telemetry's [`FlowBook`] on disk: `telemetry.json` in `state.dir`, rewritten whole
//! and atomically (temp file, fsync, rename: [`write_atomic`]) after every change, so that a
//! power cut leaves the old or the new book, never half of one.
//!
//! Not the stream's [`crate::spool`]: that is an ordered log of messages each sent once, while
//! this is a table updated in place (a newer reading of a flow replaces the older one, a
//! window grows until it closes) plus the baselines the next readings are counted from. A log
//! would append every reading and need compacting into what this file is anyway. The book is
//! bounded (`telemetry.max_flows` connections and flows, [`super::MAX_SNAPSHOTS`] snapshots),
//! so the file is too.
//!
//! Plain blocking I/O: the task calls it through `spawn_blocking`, so a slow SD card holds up
//! the telemetry task alone, never the runtime's threads.

use std::path::{Path, PathBuf};

use edgeshare_shared::secret::write_atomic;
use serde::{Deserialize, Serialize};

use super::book::{FlowBook, Limits};

/// Version of the file's layout.
const VERSION: u32 = 1;

#[derive(Serialize)]
struct SavedRef<'a> {
    version: u32,
    book: &'a FlowBook,
}

#[derive(Deserialize)]
struct Saved {
    version: u32,
    book: FlowBook,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("telemetry state {}: {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("telemetry state {}: unreadable ({reason}); moved aside to {}, starting afresh", path.display(), aside.display())]
    Corrupt {
        path: PathBuf,
        aside: PathBuf,
        reason: String,
    },
}

/// The book as bytes to [`save`].
pub fn encode(book: &FlowBook) -> Vec<u8> {
    // A struct of strings, numbers and maps with string keys: serialising cannot fail.
    serde_json::to_vec(&SavedRef {
        version: VERSION,
        book,
    })
    .unwrap_or_default()
}

/// Writes the book's bytes (from [`encode`]) in place of the last.
pub fn save(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: path.to_owned(),
            action: "creating its directory",
            source,
        })?;
    }
    write_atomic(path, bytes, 0o600).map_err(|source| StoreError::Io {
        path: path.to_owned(),
        action: "writing",
        source,
    })
}

/// The saved book, or an empty one if there is none. An unreadable file (another layout, a
/// damaged disk) is moved aside, so that the next save does not overwrite the evidence, and
/// reported; the caller starts with an empty book rather than not at all.
pub fn load(path: &Path, limits: Limits) -> (FlowBook, Option<StoreError>) {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return (FlowBook::new(limits), None);
        }
        Err(source) => {
            let err = StoreError::Io {
                path: path.to_owned(),
                action: "reading",
                source,
            };
            return (FlowBook::new(limits), Some(err));
        }
    };
    let reason = match serde_json::from_slice::<Saved>(&bytes) {
        Ok(saved) if saved.version == VERSION => return (saved.book.restored(limits), None),
        Ok(saved) => format!(
            "layout version {}, this agent reads {VERSION}",
            saved.version
        ),
        Err(err) => err.to_string(),
    };
    let aside = path.with_extension("json.unreadable");
    let err = match std::fs::rename(path, &aside) {
        Ok(()) => StoreError::Corrupt {
            path: path.to_owned(),
            aside,
            reason,
        },
        Err(source) => StoreError::Io {
            path: path.to_owned(),
            action: "moving an unreadable file aside",
            source,
        },
    };
    (FlowBook::new(limits), Some(err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::book::tests::active;
    use edgeshare_shared::backend::telemetry::Connection;

    /// A reading of one flow with `bytes_in` so far (the flow book's fixture).
    fn reading(bytes_in: u64) -> Connection {
        active("g1", 40000, bytes_in)
    }

    #[test]
    fn a_saved_book_comes_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("telemetry.json");
        let limits = Limits::default();
        let (mut book, err) = load(&path, limits);
        assert!(err.is_none());
        let at = time::macros::datetime!(2026-11-21 12:00:05 UTC);
        book.read(vec![reading(4000)], Some(7), at);
        save(&path, &encode(&book)).unwrap();
        let (mut back, err) = load(&path, limits);
        assert!(err.is_none());
        assert_eq!(back, book);
        // The baseline came back too: the next reading counts only its growth.
        let later = time::macros::datetime!(2026-11-21 12:01:00 UTC);
        back.read(vec![reading(4500)], Some(7), later);
        assert_eq!(back.snapshots()[0].bandwidth_in, 4500);
        assert_eq!(back.take_batch(10, usize::MAX)[0].bytes_in, 4500);
    }

    #[test]
    fn an_unreadable_file_is_moved_aside_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("telemetry.json");
        std::fs::write(&path, b"{\"version\": 1, \"bo").unwrap();
        let (book, err) = load(&path, Limits::default());
        assert_eq!(book.pending(), 0);
        let err = err.unwrap().to_string();
        assert!(err.contains("telemetry.json.unreadable"), "{err}");
        assert!(dir.path().join("telemetry.json.unreadable").exists());
        assert!(!path.exists());
    }
}
