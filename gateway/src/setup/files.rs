//! Writing a plan's files so that `setup --undo` can put the system back: before a file is
//! first replaced, a copy goes to `STATE/backup/` and the manifest (`STATE/manifest.json`)
//! says whether setup created or replaced it. Later runs keep those first copies, so undo
//! always returns to the system as it was before setup. Each file is written whole to a
//! temporary file beside it and renamed over it: never half-written. Every path is under a
//! `root` (`/` in use, a temporary directory in tests).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::FileWrite;

/// Where setup keeps its manifest and backups, under the root.
pub const STATE: &str = "/var/lib/edgeshare/setup";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub entries: Vec<Entry>,
    /// The system as the first run found it, beyond its files.
    #[serde(default)]
    pub before: Before,
}

/// What undo needs besides the files to put the system back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Before {
    /// The interface setup gave its addresses.
    pub lan: Option<String>,
    /// `systemctl is-enabled` of each unit setup enables ("enabled", "disabled", "masked").
    pub units: std::collections::BTreeMap<String, String>,
    /// The units of `units` that were running.
    #[serde(default)]
    pub running: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The file's absolute path on the system.
    pub path: PathBuf,
    pub was: Was,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Was {
    /// Not there before setup: undo removes it.
    Created,
    /// Replaced: undo puts back the copy (a file name in `STATE/backup/`) with its mode.
    Replaced { backup: String, mode: u32 },
}

/// What a file of the plan means for the system now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Create,
    Replace,
    Unchanged,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Create => "create",
            Change::Replace => "replace",
            Change::Unchanged => "unchanged",
        }
    }
}

/// `path` (absolute) under `root`.
pub fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn state(root: &Path) -> PathBuf {
    under(root, Path::new(STATE))
}

fn manifest_path(root: &Path) -> PathBuf {
    state(root).join("manifest.json")
}

/// What writing `file` would do.
pub fn change_of(root: &Path, file: &FileWrite) -> anyhow::Result<Change> {
    let path = under(root, &file.path);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let mode = std::fs::metadata(&path)?.permissions().mode() & 0o7777;
            Ok(if bytes == file.content.as_bytes() && mode == file.mode {
                Change::Unchanged
            } else {
                Change::Replace
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Change::Create),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

impl Manifest {
    /// The manifest, or an empty one if setup never wrote anything.
    pub fn load(root: &Path) -> anyhow::Result<Manifest> {
        let path = manifest_path(root);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is damaged", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Manifest::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn save(&self, root: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        write_atomic(&manifest_path(root), text.as_bytes(), 0o600)
    }

    fn entry(&self, path: &Path) -> Option<&Entry> {
        self.entries.iter().find(|e| e.path == path)
    }
}

/// Writes `content` to `path` whole: a temporary file beside it, synced, then renamed over it.
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no folder", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.edgeshare-setup"));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(content)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// The files a run changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub created: Vec<PathBuf>,
    pub replaced: Vec<PathBuf>,
    pub unchanged: Vec<PathBuf>,
}

impl Written {
    pub fn changed(&self, path: &Path) -> bool {
        self.created.iter().chain(&self.replaced).any(|p| p == path)
    }
}

/// A file's bytes and mode.
type Contents = (Vec<u8>, u32);

/// Writes every file of the plan that differs, backing up first what it replaces. If one
/// cannot be written, those written before it in this run are put back as they were, and
/// the error returned: all or nothing. `before` is kept from the first run only.
pub fn apply(root: &Path, files: &[FileWrite], before: &Before) -> anyhow::Result<Written> {
    let original = Manifest::load(root)?;
    let mut manifest = original.clone();
    if manifest.entries.is_empty() {
        manifest.before = before.clone();
    }
    let mut written = Written::default();
    // What this run wrote, to put back on failure: each path and what it held before.
    let mut undo_log: Vec<(PathBuf, Option<Contents>)> = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        for file in files {
            let change = change_of(root, file)?;
            let path = under(root, &file.path);
            let before = match change {
                Change::Unchanged => {
                    written.unchanged.push(file.path.clone());
                    continue;
                }
                Change::Create => None,
                Change::Replace => {
                    let bytes = std::fs::read(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let mode = std::fs::metadata(&path)?.permissions().mode() & 0o7777;
                    Some((bytes, mode))
                }
            };
            if manifest.entry(&file.path).is_none() {
                let was = match &before {
                    None => Was::Created,
                    Some((bytes, mode)) => {
                        let backup = backup_name(&file.path);
                        write_atomic(&state(root).join("backup").join(&backup), bytes, 0o600)?;
                        Was::Replaced {
                            backup,
                            mode: *mode,
                        }
                    }
                };
                manifest.entries.push(Entry {
                    path: file.path.clone(),
                    was,
                });
                // The manifest first: a crash after the file's write still leaves it undoable.
                manifest.save(root)?;
            }
            undo_log.push((file.path.clone(), before.clone()));
            write_atomic(&path, file.content.as_bytes(), file.mode)?;
            match before {
                None => written.created.push(file.path.clone()),
                Some(_) => written.replaced.push(file.path.clone()),
            }
        }
        Ok(())
    })();
    if let Err(err) = result {
        for (path, before) in undo_log.into_iter().rev() {
            let on_disk = under(root, &path);
            let _ = match before {
                None => std::fs::remove_file(&on_disk).map_err(anyhow::Error::from),
                Some((bytes, mode)) => write_atomic(&on_disk, &bytes, mode),
            };
        }
        if original.entries.is_empty() {
            let _ = std::fs::remove_dir_all(state(root));
        } else {
            original.save(root)?;
        }
        return Err(err.context("nothing was changed (the files written before were put back)"));
    }
    Ok(written)
}

/// "etc%network%interfaces.d%edgeshare-wlan0": one flat folder, each name telling its file.
fn backup_name(path: &Path) -> String {
    path.to_string_lossy()
        .trim_start_matches('/')
        .replace('/', "%")
}

/// What undo did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Undone {
    pub restored: Vec<PathBuf>,
    pub removed: Vec<PathBuf>,
    pub before: Before,
}

/// Puts back every file setup replaced and removes those it created; then forgets the
/// manifest and backups (a later setup starts afresh).
pub fn undo(root: &Path) -> anyhow::Result<Undone> {
    let manifest = Manifest::load(root)?;
    anyhow::ensure!(
        !manifest.entries.is_empty(),
        "nothing to undo: {} has no record of files written by setup",
        manifest_path(root).display()
    );
    let mut undone = Undone {
        before: manifest.before.clone(),
        ..Undone::default()
    };
    for entry in manifest.entries.iter().rev() {
        let path = under(root, &entry.path);
        match &entry.was {
            Was::Created => match std::fs::remove_file(&path) {
                Ok(()) => undone.removed.push(entry.path.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("removing {}", path.display()));
                }
            },
            Was::Replaced { backup, mode } => {
                let copy = state(root).join("backup").join(backup);
                let bytes = std::fs::read(&copy).with_context(|| {
                    format!(
                        "reading the copy of {} ({})",
                        entry.path.display(),
                        copy.display()
                    )
                })?;
                write_atomic(&path, &bytes, *mode)?;
                undone.restored.push(entry.path.clone());
            }
        }
    }
    std::fs::remove_dir_all(state(root))
        .with_context(|| format!("removing {}", state(root).display()))?;
    Ok(undone)
}
