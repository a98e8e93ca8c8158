//! Tracing set-up shared by both daemons: `-v`/`-q`, `--log-format json`, and no timestamps
//! or colours under journald (which stamps every line itself).

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event, for log shippers.
    Json,
}

/// Command-line flags for logging, flattened into each daemon's CLI.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// More detail: -v for debug, -vv for trace. RUST_LOG, if set, takes precedence.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Less detail: -q for warnings and errors only, -qq for errors only.
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "verbose")]
    pub quiet: u8,
    /// Log line format.
    #[arg(long, value_enum, default_value_t, global = true)]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// The filter directive for these flags: our crates at the chosen level, dependencies one
    /// level quieter (hyper and rustls at debug would drown our own lines).
    pub fn directive(&self) -> String {
        const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
        let ours = (2 + i32::from(self.verbose) - i32::from(self.quiet)).clamp(0, 4);
        let theirs = (ours - 1).clamp(0, 4);
        let [ours, theirs] = [ours, theirs].map(|l| LEVELS[usize::try_from(l).unwrap_or(0)]);
        format!(
            "{theirs},edgeshare={ours},edgeshare_shared={ours},edgeshare_gateway={ours},edgeshare_agent={ours},edgeshare_standin={ours}"
        )
    }
}

/// Installs the global subscriber, writing to stderr. Call once, first thing in `main`.
pub fn init(args: &LogArgs) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(args.directive()));
    // systemd sets JOURNAL_STREAM when stderr goes to the journal, which adds its own time.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!journald && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second init (tests) is not an error worth failing for.
    let _ = match (args.log_format, journald) {
        (LogFormat::Json, true) => builder.json().without_time().try_init(),
        (LogFormat::Json, false) => builder.json().try_init(),
        (LogFormat::Text, true) => builder.without_time().try_init(),
        (LogFormat::Text, false) => builder.try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        log: LogArgs,
    }

    fn directive(args: &[&str]) -> String {
        let mut argv = vec!["test"];
        argv.extend_from_slice(args);
        Cli::parse_from(argv).log.directive()
    }

    #[test]
    fn verbosity_flags_map_to_levels() {
        assert!(directive(&[]).starts_with("warn,edgeshare=info"));
        assert!(directive(&["-v"]).starts_with("info,edgeshare=debug"));
        assert!(directive(&["-vvvv"]).starts_with("debug,edgeshare=trace"));
        assert!(directive(&["-q"]).starts_with("error,edgeshare=warn"));
        assert!(directive(&["-qqq"]).starts_with("error,edgeshare=error"));
    }

    #[test]
    fn verbose_and_quiet_conflict() {
        assert!(Cli::try_parse_from(["test", "-v", "-q"]).is_err());
    }

    #[test]
    fn json_format_parses() {
        let cli = Cli::parse_from(["test", "--log-format", "json"]);
        assert_eq!(cli.log.log_format, LogFormat::Json);
    }
}
