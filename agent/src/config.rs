//! The agent's configuration (`/etc/edgeshare/agent.toml`); every key is shown, with
//! comments, in `packaging/agent.example.toml`. Each backend section is optional: an agent
//! with only `[stream]` is a plain sensor node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use edgeshare_shared::backend::HttpSettings;
use edgeshare_shared::backend::crowd::CrowdConfig;
use edgeshare_shared::backend::depin::{DepinPaths, Framing};
use edgeshare_shared::config::{Problems, Validate};
use edgeshare_shared::ledger;
use edgeshare_shared::paths::StateSettings;
use edgeshare_shared::retry::Backoff;
use edgeshare_shared::secret::Secret;
use serde::Deserialize;
use url::Url;

/// The spool's folder name in `state.dir`.
const SPOOL_DIR: &str = "spool";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub device: Device,
    /// Usage reports to the crowdsourced-internet backend (contract 1).
    #[serde(default)]
    pub backend: Option<CrowdConfig>,
    /// Sensor and system data to the DePin streaming platform (contract 2).
    #[serde(default)]
    pub stream: Option<StreamConfig>,
    /// Connections and metrics to the telemetry backend (contract 3).
    #[serde(default)]
    pub telemetry: Option<TelemetryConfig>,
    /// How the gateway's usage ledger is reported; only used with `[backend]`.
    #[serde(default)]
    pub usage: Option<UsageSettings>,
    #[serde(default)]
    pub http: HttpSettings,
    #[serde(default)]
    pub state: StateSettings,
    /// What is measured and streamed (`[[source]]`, one table per source). Absent: the system
    /// source every 10 s; `source = []` streams no sensor data.
    #[serde(default)]
    pub source: Option<Vec<SourceConfig>>,
    /// The gateway on this device, if any, whose live usage is streamed too.
    #[serde(default)]
    pub gateway: GatewaySettings,
    #[serde(default)]
    pub spool: SpoolSettings,
    #[serde(default)]
    pub metrics: MetricsSettings,
}

impl AgentConfig {
    /// The sources to run: the configured ones, or the system source alone.
    pub fn sources(&self) -> Vec<SourceConfig> {
        self.source
            .clone()
            .unwrap_or_else(|| vec![SourceConfig::system(Duration::from_secs(10))])
    }

    /// Where the spool lives: `spool.dir`, or `spool` in the state directory (beside the
    /// usage cursor), so the packaged `state.dir = "/var/lib/edgeshare/agent"` puts it in
    /// `/var/lib/edgeshare/agent/spool`.
    pub fn spool_dir(&self) -> PathBuf {
        self.spool
            .dir
            .clone()
            .unwrap_or_else(|| self.state.dir.join(SPOOL_DIR))
    }

    /// Where versions up to 0.1.0 put the spool by default (`agent/spool` in `state.dir`);
    /// `None` where `spool.dir` is set.
    pub fn legacy_spool_dir(&self) -> Option<PathBuf> {
        self.spool
            .dir
            .is_none()
            .then(|| self.state.dir.join("agent").join(SPOOL_DIR))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// This device's id on the streaming platform (`device_id` in every message).
    pub id: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// The auth service, e.g. `https://auth.example.org`.
    pub auth_url: Url,
    /// The producer socket, e.g. `wss://stream.example.org:8001/producer`.
    pub ws_url: Url,
    pub username: String,
    pub password: Secret,
    #[serde(default)]
    pub framing: Framing,
    #[serde(default)]
    pub paths: DepinPaths,
    /// A link that has received nothing (no pong, no message) for this long is dead and
    /// is replaced; pings go out every third of it. Catches a peer that vanished without a
    /// close (power cut, a NAT that forgot the connection, packets silently dropped).
    #[serde(default = "default_dead_after", with = "humantime_serde")]
    pub dead_after: Duration,
    /// Messages sent but not yet confirmed (acked, or covered by a pong) at most.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Reconnect delays: jittered, growing from `initial` by `multiplier` up to `max`.
    #[serde(default = "default_backoff")]
    pub backoff: Backoff,
}

fn default_dead_after() -> Duration {
    Duration::from_secs(30)
}

fn default_max_in_flight() -> usize {
    64
}

fn default_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(500),
        max: Duration::from_secs(60),
        multiplier: 2.0,
    }
}

/// What a source measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// CPU, memory, load, uptime, disks, network rx/tx, temperatures (sysinfo).
    System,
    /// A sensor file: `/sys/class/thermal/…/temp`, hwmon `…_input`, 1-wire `w1_slave`.
    File,
    /// A command whose output is a number or a JSON object.
    Command,
}

/// How a sensor file's text is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    /// A number, times `scale`.
    #[default]
    Number,
    /// An integer in thousandths (thermal zones, hwmon `temp*_input`: milli-°C).
    Milli,
    /// A 1-wire sensor's `w1_slave`: CRC line ending in `YES`, then `t=` in milli-°C.
    W1Slave,
}

/// One `[[source]]` table. Kept flat (not an enum per kind) so that every bad key is
/// reported with its own name and line.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub kind: SourceKind,
    /// The key of the value in `data` (file and command; the system source uses its own).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// file: the file to read.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// file: how to read it.
    #[serde(default)]
    pub format: FileFormat,
    /// file with format "number": a factor applied to the value.
    #[serde(default)]
    pub scale: Option<f64>,
    /// command: the program and its arguments (no shell).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// command: killed if it runs longer than this.
    #[serde(default = "default_command_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_command_timeout() -> Duration {
    Duration::from_secs(5)
}

impl SourceConfig {
    pub fn system(interval: Duration) -> Self {
        SourceConfig {
            kind: SourceKind::System,
            name: None,
            interval,
            path: None,
            format: FileFormat::default(),
            scale: None,
            command: None,
            timeout: default_command_timeout(),
        }
    }

    /// A name for logs and metrics: the `name` key, or the kind.
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            match self.kind {
                SourceKind::System => "system",
                SourceKind::File => "file",
                SourceKind::Command => "command",
            }
            .to_owned()
        })
    }

    fn validate(&self, key: &str, problems: &mut Problems) {
        if self.interval < Duration::from_millis(100) {
            problems.push(format!("{key}.interval"), "must be at least 100ms");
        }
        let needs_name = matches!(self.kind, SourceKind::File | SourceKind::Command);
        match &self.name {
            Some(name) if name.trim().is_empty() => {
                problems.push(format!("{key}.name"), "must not be empty");
            }
            None if needs_name => problems.push(
                format!("{key}.name"),
                "is required for this kind (the key of the value in `data`)",
            ),
            _ => {}
        }
        let only = |problems: &mut Problems, field: &str, set: bool, kind: &str| {
            if set {
                problems.push(
                    format!("{key}.{field}"),
                    format!("is only used by kind = \"{kind}\""),
                );
            }
        };
        match self.kind {
            SourceKind::System => {
                only(problems, "path", self.path.is_some(), "file");
                only(problems, "command", self.command.is_some(), "command");
            }
            SourceKind::File => {
                if self.path.is_none() {
                    problems.push(
                        format!("{key}.path"),
                        "is required for kind = \"file\" (e.g. \"/sys/class/thermal/thermal_zone0/temp\")",
                    );
                }
                only(problems, "command", self.command.is_some(), "command");
                if self.scale.is_some() && self.format != FileFormat::Number {
                    problems.push(
                        format!("{key}.scale"),
                        "is only used with format = \"number\"",
                    );
                }
            }
            SourceKind::Command => {
                match &self.command {
                    None => problems.push(
                        format!("{key}.command"),
                        "is required for kind = \"command\" (e.g. [\"/usr/local/bin/read-sensor\", \"--json\"])",
                    ),
                    Some(argv) if argv.first().is_none_or(|p| p.trim().is_empty()) => {
                        problems.push(format!("{key}.command"), "must name a program");
                    }
                    Some(_) => {}
                }
                only(problems, "path", self.path.is_some(), "file");
                if self.timeout.is_zero() {
                    problems.push(format!("{key}.timeout"), "must be more than 0");
                }
            }
        }
    }
}

/// `[gateway]`: the gateway daemon on this device, if it is installed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySettings {
    /// The gateway's control socket (its `control.socket`). No socket: no gateway here; the
    /// usage source stays idle.
    pub control_socket: PathBuf,
    /// How often its live usage is read and streamed.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            // The gateway's own default (gateway/src/config.rs, `control.socket`).
            control_socket: PathBuf::from("/run/edgeshare/gateway.sock"),
            interval: Duration::from_secs(10),
        }
    }
}

/// `[spool]`: where messages wait while the stream is down.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSettings {
    /// Default: `spool` in `state.dir`.
    pub dir: Option<PathBuf>,
    /// Disk used at most (bytes). When full, the oldest sensor samples go first; usage
    /// messages are never dropped.
    pub max_bytes: u64,
}

impl Default for SpoolSettings {
    fn default() -> Self {
        SpoolSettings {
            dir: None,
            max_bytes: 50 * 1024 * 1024,
        }
    }
}

/// `[metrics]`: health and counters in Prometheus text format.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Local address of `GET /metrics` (also read by `edgeshare-agent status`).
    pub listen: SocketAddr,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 9465)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    pub url: Url,
    pub email: String,
    pub password: Secret,
    /// Sent as `X-Tenant-Id` on every ingest call.
    pub tenant: String,
    /// How often the gateway's flows are read and posted.
    #[serde(default = "default_telemetry_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How often a metrics snapshot is posted.
    #[serde(default = "default_snapshot_interval", with = "humantime_serde")]
    pub snapshot_interval: Duration,
    /// Connections kept at most while the backend is away (the oldest go first), and flows
    /// followed at most: at least the gateway's `capture.max_flows`, or a flow past it is
    /// ended and its next reading starts a new record.
    #[serde(default = "default_max_flows")]
    pub max_flows: usize,
}

fn default_telemetry_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_snapshot_interval() -> Duration {
    Duration::from_secs(60)
}

/// The gateway's default `capture.max_flows`.
fn default_max_flows() -> usize {
    16_384
}

/// The `[usage]` section: reporting the gateway's usage ledger to `[backend]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageSettings {
    /// The gateway's ledger directory (the agent needs read access, e.g. through the group).
    pub ledger: PathBuf,
    /// A code's usage is reported in whole MiB once this many bytes (rounded up to whole
    /// MiB) are pending: the backend grants points per whole MiB of each report. The
    /// remainder goes in the code's last report.
    pub min_report_bytes: u64,
    /// How often the ledger is read (every second while a code is near its expiry).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A code's last report (the remainder under a MiB included) goes as soon as its
    /// sessions have ended this close to its expiry: after `expireAt` the backend refuses
    /// every report. Keep it above the gateway's `codes.expiry_margin`.
    #[serde(with = "humantime_serde")]
    pub flush_ahead: Duration,
    /// A code whose sessions ended this long ago has its remainder reported, even though it
    /// might be used again (then its next remainder may cost the provider one point).
    #[serde(with = "humantime_serde")]
    pub fraction_hold: Duration,
    /// How often the account's points and bytesShared are compared with the backend's usage
    /// log (which lists only its latest 200 entries: read it before more than that are
    /// written by all the account's gateways, or lost credit may go unseen).
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
}

impl Default for UsageSettings {
    fn default() -> Self {
        UsageSettings {
            ledger: ledger::default_dir(),
            min_report_bytes: 1 << 20,
            interval: Duration::from_secs(10),
            flush_ahead: Duration::from_secs(60),
            fraction_hold: Duration::from_secs(3600),
            reconcile_interval: Duration::from_secs(10),
        }
    }
}

fn check_scheme(key: &str, url: &Url, allowed: [&str; 2], problems: &mut Problems) {
    if !allowed.contains(&url.scheme()) {
        problems.push(
            key,
            format!("must be a {} or {} URL", allowed[0], allowed[1]),
        );
    }
}

fn check_not_empty(key: &str, value: &str, problems: &mut Problems) {
    if value.trim().is_empty() {
        problems.push(key, "must not be empty");
    }
}

impl Validate for AgentConfig {
    fn validate(&self, problems: &mut Problems) {
        check_not_empty("device.id", &self.device.id, problems);
        if let Some(backend) = &self.backend {
            backend.validate("backend", problems);
        }
        if let Some(stream) = &self.stream {
            check_scheme(
                "stream.auth_url",
                &stream.auth_url,
                ["http", "https"],
                problems,
            );
            check_scheme("stream.ws_url", &stream.ws_url, ["ws", "wss"], problems);
            check_not_empty("stream.username", &stream.username, problems);
            check_not_empty("stream.password", stream.password.expose(), problems);
            if stream.dead_after < Duration::from_secs(1) {
                problems.push("stream.dead_after", "must be at least 1s");
            }
            if stream.max_in_flight == 0 {
                problems.push("stream.max_in_flight", "must be at least 1");
            }
            if stream.backoff.initial.is_zero() || stream.backoff.max < stream.backoff.initial {
                problems.push("stream.backoff", "needs initial > 0 and max >= initial");
            }
        }
        for (i, source) in self.source.iter().flatten().enumerate() {
            source.validate(&format!("source.{i}"), problems);
        }
        if self.gateway.interval < Duration::from_millis(100) {
            problems.push("gateway.interval", "must be at least 100ms");
        }
        if self.spool.max_bytes < 64 * 1024 {
            problems.push("spool.max_bytes", "must be at least 65536 (64 KiB)");
        }
        if let Some(telemetry) = &self.telemetry {
            check_scheme("telemetry.url", &telemetry.url, ["http", "https"], problems);
            check_not_empty("telemetry.email", &telemetry.email, problems);
            check_not_empty("telemetry.password", telemetry.password.expose(), problems);
            check_not_empty("telemetry.tenant", &telemetry.tenant, problems);
            if telemetry.interval < Duration::from_millis(100) {
                problems.push("telemetry.interval", "must be at least 100ms");
            }
            if telemetry.snapshot_interval < Duration::from_secs(1) {
                problems.push("telemetry.snapshot_interval", "must be at least 1s");
            }
            if telemetry.max_flows == 0 {
                problems.push("telemetry.max_flows", "must be at least 1");
            }
        }
        if let Some(usage) = &self.usage {
            if self.backend.is_none() {
                problems.push(
                    "usage",
                    "reports go to [backend], which is not configured: add [backend] or remove [usage]",
                );
            }
            if usage.min_report_bytes == 0 {
                problems.push(
                    "usage.min_report_bytes",
                    "must be at least 1 (1048576 earns points)",
                );
            }
            if usage.interval.is_zero() {
                problems.push("usage.interval", "must be longer than 0 (e.g. \"10s\")");
            }
            if usage.reconcile_interval.is_zero() {
                problems.push(
                    "usage.reconcile_interval",
                    "must be longer than 0 (e.g. \"10s\")",
                );
            }
            if usage.ledger.as_os_str().is_empty() {
                problems.push("usage.ledger", "must not be empty");
            }
        }
        if self.backend.is_none() && self.stream.is_none() && self.telemetry.is_none() {
            problems.push(
                "stream",
                "nothing to do: configure at least one of [backend], [stream], [telemetry]",
            );
        }
    }
}
