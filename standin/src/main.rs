//! `edgeshare-standin`: runs the backend stand-in for the local demo and for shell tests.
//!
//! Prints `edgeshare-standin listening on <base URL>` and one `seed code: XXXXXXXX` line per
//! seeded code to stdout once it accepts connections; logs go to stderr. Stops on SIGINT or
//! SIGTERM. Exit code 78 for a bad configuration (seed codes, TLS files), 1 otherwise.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use edgeshare_standin::{StandinConfig, TlsFiles};
use tracing_subscriber::EnvFilter;

/// A stand-in for the three central backends (tests and demo only).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (all three contracts share it).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Seed this access code instead of three random ones (repeatable).
    #[arg(long = "seed-code", value_name = "CODE")]
    seed_codes: Vec<String>,
    /// Serve HTTPS with this certificate chain (PEM).
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Read-to-write window of report-usage, e.g. `5ms`, `0s`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5ms")]
    report_race_window: Duration,
    /// Read-to-write window of report-usage's credit to the owner's and consumer's accounts.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5ms")]
    credit_race_window: Duration,
    /// How long an expired code answers 400 before it answers 404.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    expired_code_ttl: Duration,
    /// Lifetime of DePin access tokens.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    access_token_ttl: Duration,
    /// Lifetime of telemetry client tokens.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "12h")]
    client_token_ttl: Duration,
    /// HS256 secret of the tokens issued.
    #[arg(long, env = "STANDIN_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// A problem with the arguments, as opposed to one while running.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct ConfigError(anyhow::Error);

fn main() -> ExitCode {
    let args = Args::parse();
    let level = match args.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(78)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let defaults = StandinConfig::default();
    let config = StandinConfig {
        seed_codes: args.seed_codes,
        report_race_window: args.report_race_window,
        credit_race_window: args.credit_race_window,
        expired_code_ttl: args.expired_code_ttl,
        access_token_ttl: args.access_token_ttl,
        client_token_ttl: args.client_token_ttl,
        jwt_secret: args.jwt_secret.unwrap_or(defaults.jwt_secret.clone()),
        tls: args
            .tls_cert
            .zip(args.tls_key)
            .map(|(cert, key)| TlsFiles { cert, key }),
        ..defaults
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    // `start` fails only on its configuration: seed codes and TLS files.
    let standin = edgeshare_standin::start(listener, config)
        .await
        .map_err(ConfigError)?;
    println!("edgeshare-standin listening on {}", standin.base_url());
    for code in standin.seed_codes() {
        println!("seed code: {code}");
    }
    wait_for_signal().await?;
    tracing::info!("stopping");
    standin.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
