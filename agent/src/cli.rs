//! The agent's command line.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use edgeshare_shared::backend::HttpClient;
use edgeshare_shared::backend::depin::DepinAuth;
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
    /// Run the daemon: stream sources (and the gateway's usage) until SIGTERM or SIGINT.
    Run,
    /// Check the configuration and exit: 0 if good, 78 with every problem listed if not.
    CheckConfig,
    /// Show the running daemon's health (read from its metrics endpoint, metrics.listen).
    Status,
    /// Register this device as a producer with the streaming platform (safe to run again).
    ///
    /// Posts stream.username, stream.password and device.id to stream.auth_url +
    /// stream.paths.register. An account that exists already is verified by logging in
    /// (stream.paths.login). Exit 0 when registered or already registered, 1 when refused
    /// (an existing account with another password included), 78 for a configuration problem.
    Register,
}

/// How long blocking threads still running after the daemon stopped are waited for.
const BLOCKING_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // Two workers are plenty for a handful of sockets and timers on a small device.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    edgeshare_shared::logging::init(&cli.log);
    match cli.command {
        Command::CheckConfig => {
            edgeshare_shared::cli::check_config::<AgentConfig>(&cli.config, Daemon::Agent).map(drop)
        }
        Command::Run => {
            let config: AgentConfig = cli
                .config
                .load(Daemon::Agent)
                .context("the agent configuration is not usable")?;
            let runtime = runtime()?;
            let ran = runtime.block_on(async {
                let signal = crate::daemon::termination();
                // Listening for the signals before anything runs, so an early SIGTERM is
                // not lost.
                let signal = tokio::spawn(signal);
                let stop = async move {
                    match signal.await {
                        Ok(Ok(())) => {}
                        Ok(Err(err)) => tracing::error!(error = %err, "no signal handling"),
                        Err(err) => tracing::error!(error = %err, "signal task failed"),
                    }
                };
                crate::daemon::run(config, stop, |_| {}).await
            });
            // Dropping the runtime would wait for every blocking thread, and one may sit in
            // a control-socket read or a DNS lookup for seconds; the daemon is done, so they
            // are left to end with the process.
            runtime.shutdown_timeout(BLOCKING_GRACE);
            ran
        }
        Command::Register => {
            let config: AgentConfig = cli
                .config
                .load(Daemon::Agent)
                .context("the agent configuration is not usable")?;
            let stream = crate::register::stream_section(&config, &cli.config.path(Daemon::Agent))
                .context("the agent configuration is not usable")?;
            let http = HttpClient::new(&config.http).context("setting up the HTTP client")?;
            let auth = DepinAuth::new(
                &http,
                &stream.auth_url,
                stream.paths.clone(),
                stream.username.clone(),
                stream.password.clone(),
            );
            let outcome = runtime()?.block_on(crate::register::register(
                &auth,
                &stream.username,
                &config.device.id,
            ))?;
            println!(
                "{} at {} as the producer of device {}: {outcome}",
                stream.username, stream.auth_url, config.device.id
            );
            Ok(())
        }
        Command::Status => {
            let config: AgentConfig = cli
                .config
                .load(Daemon::Agent)
                .context("the agent configuration is not usable")?;
            let text = runtime()?.block_on(edgeshare_shared::prometheus::fetch_agent(
                config.metrics.listen,
            ))?;
            print!("{}", crate::status::render(&text));
            Ok(())
        }
    }
}
