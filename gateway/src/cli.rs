//! The gateway's command line.

use clap::{Parser, Subcommand};
use edgeshare_shared::cli::ConfigArgs;
use edgeshare_shared::logging::LogArgs;
use edgeshare_shared::paths::Daemon;

use crate::config::GatewayConfig;

/// edgeshare gateway: a captive portal that lets consumers online with an access code and
/// counts the bytes they use.
#[derive(Debug, Parser)]
#[command(name = "edgeshare-gateway", version)]
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
            edgeshare_shared::cli::check_config::<GatewayConfig>(&cli.config, Daemon::Gateway)
                .map(drop)
        }
    }
}
