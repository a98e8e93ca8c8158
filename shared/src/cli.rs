//! Command-line plumbing both daemons share: where the config is, and how an error becomes
//! an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use serde::de::DeserializeOwned;

use crate::config::{ConfigError, EXIT_CONFIG, Validate};
use crate::paths::{Daemon, StandardPaths};

/// `--config` and `--env-file`, flattened into each daemon's CLI.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// Configuration file [default: /etc/edgeshare/<daemon>.toml as root, else
    /// ~/.config/edgeshare/<daemon>.toml].
    #[arg(
        long,
        short = 'c',
        env = "EDGESHARE_CONFIG",
        global = true,
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    /// Env file with secrets (`EDGESHARE_BACKEND__PASSWORD=…`) [default: the config file's
    /// name with `.env`, if it exists].
    #[arg(long, env = "EDGESHARE_ENV_FILE", global = true, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
}

impl ConfigArgs {
    /// The config file to read for `daemon`.
    pub fn path(&self, daemon: Daemon) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| StandardPaths::for_current_user(daemon).config_file)
    }

    /// Loads and validates the config for `daemon`.
    pub fn load<T: DeserializeOwned + Validate>(&self, daemon: Daemon) -> Result<T, ConfigError> {
        crate::config::load(&self.path(daemon), self.env_file.as_deref())
    }

    /// [`ConfigArgs::load`], with the files the config names checked too (`check-config`).
    pub fn load_for_check<T: DeserializeOwned + Validate>(
        &self,
        daemon: Daemon,
    ) -> Result<T, ConfigError> {
        crate::config::load_for_check(&self.path(daemon), self.env_file.as_deref())
    }
}

/// Turns a daemon's result into its exit code, printing the whole error chain:
/// 78 (`EX_CONFIG`) for a configuration problem, 1 for anything else.
pub fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", describe(&err));
            if err.chain().any(|cause| cause.is::<ConfigError>()) {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// An error and its causes on one line. Errors that are also logged alone carry their
/// cause in their own text; a cause already shown is not repeated.
pub fn describe(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// The `check-config` subcommand: loads the config, prints that it is good, returns it.
pub fn check_config<T>(args: &ConfigArgs, daemon: Daemon) -> anyhow::Result<T>
where
    T: DeserializeOwned + Validate + std::fmt::Debug,
{
    use anyhow::Context;
    let path = args.path(daemon);
    let config: T = args
        .load_for_check(daemon)
        .with_context(|| format!("the {} configuration is not usable", daemon.name()))?;
    tracing::debug!(?config, "configuration loaded");
    println!("{}: configuration OK", path.display());
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read f.toml: {source}")]
    struct WithCause {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn causes_are_shown_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = anyhow::Error::new(WithCause { source: io }).context("config not usable");
        assert_eq!(
            describe(&err),
            "config not usable: cannot read f.toml: no such file"
        );

        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(describe(&plain), "outer: inner");
    }
}
