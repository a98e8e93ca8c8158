//! Where edgeshare keeps its files: the system paths when running as root (a systemd
//! service), the user's XDG directories otherwise (a developer or a user-mode run).

use std::path::PathBuf;

/// Which daemon a path is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    Gateway,
    Agent,
}

impl Daemon {
    pub fn name(self) -> &'static str {
        match self {
            Daemon::Gateway => "gateway",
            Daemon::Agent => "agent",
        }
    }
}

/// The standard locations for one daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandardPaths {
    pub config_file: PathBuf,
    pub state_dir: PathBuf,
}

impl StandardPaths {
    /// The paths for this process: system paths if it runs as root.
    pub fn for_current_user(daemon: Daemon) -> Self {
        let dirs = directories::ProjectDirs::from("", "", "edgeshare");
        Self::resolve(daemon, rustix::process::geteuid().is_root(), dirs.as_ref())
    }

    /// `is_root` and the user's directories passed in, so both cases are testable anywhere.
    pub fn resolve(
        daemon: Daemon,
        is_root: bool,
        user_dirs: Option<&directories::ProjectDirs>,
    ) -> Self {
        let file = format!("{}.toml", daemon.name());
        match user_dirs {
            Some(dirs) if !is_root => StandardPaths {
                config_file: dirs.config_dir().join(file),
                state_dir: dirs
                    .state_dir()
                    .unwrap_or_else(|| dirs.data_local_dir())
                    .to_owned(),
            },
            // Root, or a user without a home directory: the system paths.
            _ => StandardPaths {
                config_file: PathBuf::from("/etc/edgeshare").join(file),
                state_dir: PathBuf::from("/var/lib/edgeshare"),
            },
        }
    }
}

/// The `[state]` section both daemons share.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateSettings {
    /// Where durable state lives (sessions, code store, usage ledger, cursors, spool).
    pub dir: PathBuf,
}

impl Default for StateSettings {
    fn default() -> Self {
        // The state directory does not depend on the daemon: both share /var/lib/edgeshare.
        StateSettings {
            dir: StandardPaths::for_current_user(Daemon::Gateway).state_dir,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_uses_system_paths() {
        let dirs = directories::ProjectDirs::from("", "", "edgeshare");
        let paths = StandardPaths::resolve(Daemon::Gateway, true, dirs.as_ref());
        assert_eq!(
            paths.config_file,
            PathBuf::from("/etc/edgeshare/gateway.toml")
        );
        assert_eq!(paths.state_dir, PathBuf::from("/var/lib/edgeshare"));
    }

    #[test]
    fn a_user_gets_xdg_paths() {
        let Some(dirs) = directories::ProjectDirs::from("", "", "edgeshare") else {
            return; // no home directory at all: nothing user-specific to check
        };
        let paths = StandardPaths::resolve(Daemon::Agent, false, Some(&dirs));
        assert_eq!(paths.config_file, dirs.config_dir().join("agent.toml"));
        assert!(paths.state_dir.ends_with("edgeshare"), "{paths:?}");
        assert!(!paths.state_dir.starts_with("/var/lib"));
    }
}
