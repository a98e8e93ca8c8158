//! Tracing set-up shared by both daemons: `-v`/`-q`, `--log-format json`, and no timestamps
//! or colours under journald (which stamps every line itself), and every line cleaned of
//! secrets in URLs before it is written.

use std::io::Write;

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
        .with_writer(|| Redacting(std::io::stderr()))
        .with_ansi(!journald && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second init (tests) is not an error worth failing for.
    let _ = match (args.log_format, journald) {
        (LogFormat::Json, true) => builder.json().without_time().try_init(),
        (LogFormat::Json, false) => builder.json().try_init(),
        (LogFormat::Text, true) => builder.without_time().try_init(),
        (LogFormat::Text, false) => builder.try_init(),
    };
}

/// Query parameters whose values are secrets wherever a URL is logged.
const SECRET_PARAMS: [&str; 2] = ["token=", "password="];

/// `text` with the value of every [`SECRET_PARAMS`] parameter replaced by `<redacted>`.
///
/// Our own code logs URLs redacted already; this is for the libraries', which we do not
/// control: at trace level tungstenite dumps its whole handshake request, and the producer
/// URL carries the access token (contract 2 puts it there).
pub fn redact_secrets(text: &str) -> std::borrow::Cow<'_, str> {
    if !SECRET_PARAMS.iter().any(|p| text.contains(p)) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((at, param)) = SECRET_PARAMS
        .iter()
        .filter_map(|p| rest.find(p).map(|at| (at, *p)))
        .min()
    {
        let value_start = at + param.len();
        out.push_str(&rest[..value_start]);
        let value = &rest[value_start..];
        let end = value
            .find(|c: char| matches!(c, '&' | '#' | '"' | '\'' | '\\') || c.is_whitespace())
            .unwrap_or(value.len());
        if end > 0 {
            out.push_str("<redacted>");
        }
        rest = &value[end..];
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

/// Stderr, with [`redact_secrets`] applied: the formatter writes each event in one call, so
/// a secret is never split between two writes.
struct Redacting(std::io::Stderr);

impl Write for Redacting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) => self.0.write_all(redact_secrets(text).as_bytes())?,
            Err(_) => self.0.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
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
    fn secrets_in_urls_are_redacted() {
        for (line, want) in [
            (
                "Request: \"GET /producer?token=eyJ.a-b_c HTTP/1.1\\r\\nHost: x\"",
                "Request: \"GET /producer?token=<redacted> HTTP/1.1\\r\\nHost: x\"",
            ),
            (
                "url=wss://h/p?a=1&access_token=abc&b=2#f password=hunter2",
                "url=wss://h/p?a=1&access_token=<redacted>&b=2#f password=<redacted>",
            ),
            ("token= and nothing", "token= and nothing"),
            ("no secrets here", "no secrets here"),
        ] {
            assert_eq!(redact_secrets(line), want);
        }
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
