//! The agent's command line.

use clap::{Parser, Subcommand};
use edgeshare_shared::cli::ConfigArgs;
use edgeshare_shared::logging::LogArgs;
use edgeshare_shared::paths::Daemon;

use crate::config::AgentConfig;

/// edgeshare agent: reports usage and streams sensor and system data to the backends, and
/// keeps doing so through a flaky uplink.
#[derive(Debug, Parser)]
#[command(name = "edgeshare-agent", version)]
pub struct Cli {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the configuration and exit: 0 if good, 78 with every problem listed if not.
    CheckConfig,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    edgeshare_shared::logging::init(&cli.log);
    match cli.command {
        Command::CheckConfig => {
            edgeshare_shared::cli::check_config::<AgentConfig>(&cli.config, Daemon::Agent).map(drop)
        }
    }
}
