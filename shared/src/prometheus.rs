//! The Prometheus text exposition format (version 0.0.4) that both daemons' metrics
//! endpoints serve: each family's `# HELP` and `# TYPE` lines, then its samples, with label
//! values and help texts escaped as the format demands. Pure text: no registry; the daemons
//! hand in names, labels and values they already hold. Also the reading side: a sample's
//! value or label, and [`fetch_agent`], the one call that reads another daemon's endpoint.
//!
//! (Not `prometheus-client`: it writes OpenMetrics, whose counters' `# HELP`/`# TYPE` lines
//! drop the `_total` suffix and whose text ends in `# EOF`, so every existing series and
//! scraper expectation would change, and it wants each value moved into its registry's
//! metric types. What the daemons need is ~60 lines.)

use std::fmt::{self, Display, Write as _};

use anyhow::Context as _;

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// An exposition being written.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    pub fn new() -> Self {
        Exposition::default()
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines. Its samples follow with
    /// [`Exposition::sample`].
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", Escaped::help(help));
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.as_str());
    }

    /// One sample of the current family; `labels` in the order given, values escaped.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &dyn Display)], value: impl Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, label_value)) in labels.iter().enumerate() {
                let sep = if i == 0 { "" } else { "," };
                let escaped = Escaped::label(&label_value.to_string()).to_string();
                let _ = write!(self.text, "{sep}{label}=\"{escaped}\"");
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// A family of one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    pub fn finish(self) -> String {
        self.text
    }
}

/// Text escaped for the exposition: label values escape backslash, double quote and
/// newline; help texts backslash and newline.
struct Escaped<'a> {
    text: &'a str,
    quote: bool,
}

impl<'a> Escaped<'a> {
    fn label(text: &'a str) -> Self {
        Escaped { text, quote: true }
    }

    fn help(text: &'a str) -> Self {
        Escaped { text, quote: false }
    }
}

impl Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.text.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '"' if self.quote => f.write_str("\\\"")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// A label value as written by [`Exposition::sample`], unescaped (for readers of our own
/// expositions, such as `edgeshare-agent status`). `None` if it is not validly escaped.
pub fn unescape_label_value(escaped: &str) -> Option<String> {
    let mut out = String::with_capacity(escaped.len());
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '\\' => out.push('\\'),
            '"' => out.push('"'),
            'n' => out.push('\n'),
            _ => return None,
        }
    }
    Some(out)
}

/// The value of the sample `series` (one without labels) in an exposition.
pub fn read_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == series).then(|| value.trim().parse().ok())?
    })
}

/// The first sample of `series` whose only label is `label`: the label's value, unescaped,
/// and the sample's value.
pub fn read_label(text: &str, series: &str, label: &str) -> Option<(String, f64)> {
    let prefix = format!("{series}{{{label}=\"");
    let line = text.lines().find(|l| l.starts_with(&prefix))?;
    let rest = &line[prefix.len()..];
    let end = rest.rfind("\"} ")?;
    let value = unescape_label_value(&rest[..end])?;
    let sample = rest[end + 3..].trim().parse().ok()?;
    Some((value, sample))
}

/// Fetches the metrics text of a running agent (its `metrics.listen`): for `edgeshare-agent
/// status` and the gateway's dashboard.
pub async fn fetch_agent(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    // Plain HTTP on a local port; the TLS set-up is only there because reqwest wants one.
    let tls = crate::tls::client_config(None).context("setting up TLS")?;
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(std::time::Duration::from_secs(3))
        .build()
        .context("setting up an HTTP client")?;
    let url = format!("http://{addr}/metrics");
    let response = client.get(&url).send().await.with_context(|| {
        format!(
            "the agent is not running, or not listening on {addr} (metrics.listen): start it with `edgeshare-agent run` or `systemctl start edgeshare-agent`"
        )
    })?;
    response
        .error_for_status()
        .with_context(|| format!("{url} answered with an error"))?
        .text()
        .await
        .with_context(|| format!("reading {url}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_samples_in_the_text_format() {
        let mut out = Exposition::new();
        out.single("up_seconds", Kind::Gauge, "Seconds up.", 5);
        out.family("bytes_total", Kind::Counter, "Bytes by direction.");
        out.sample(
            "bytes_total",
            &[("ip", &"10.0.0.2"), ("direction", &"up")],
            7u64,
        );
        out.sample(
            "bytes_total",
            &[("ip", &"10.0.0.2"), ("direction", &"down")],
            0.5,
        );
        assert_eq!(
            out.finish(),
            "# HELP up_seconds Seconds up.\n# TYPE up_seconds gauge\nup_seconds 5\n\
             # HELP bytes_total Bytes by direction.\n# TYPE bytes_total counter\n\
             bytes_total{ip=\"10.0.0.2\",direction=\"up\"} 7\n\
             bytes_total{ip=\"10.0.0.2\",direction=\"down\"} 0.5\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut out = Exposition::new();
        out.family("e", Kind::Gauge, "a \\ b\nc \"q\"");
        out.sample("e", &[("error", &"C:\\dir \"x\"\nnext")], 1);
        assert_eq!(
            out.finish(),
            "# HELP e a \\\\ b\\nc \"q\"\n# TYPE e gauge\ne{error=\"C:\\\\dir \\\"x\\\"\\nnext\"} 1\n"
        );
    }

    #[test]
    fn escaped_label_values_read_back() {
        for value in ["", "plain", "a\\nb", "\\", "\"\n\\\"", "ünïcode \\\\n"] {
            let escaped = Escaped::label(value).to_string();
            assert!(!escaped.contains('\n'), "{escaped}");
            assert_eq!(unescape_label_value(&escaped).as_deref(), Some(value));
        }
        assert_eq!(unescape_label_value("bad \\x"), None);
        assert_eq!(unescape_label_value("trailing \\"), None);
    }
}
