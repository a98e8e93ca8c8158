//! The agent's configuration (`/etc/edgeshare/agent.toml`); every key is shown, with
//! comments, in `packaging/agent.example.toml`. Each backend section is optional: an agent
//! with only `[stream]` is a plain sensor node.

use edgeshare_shared::backend::HttpSettings;
use edgeshare_shared::backend::crowd::CrowdConfig;
use edgeshare_shared::backend::depin::{DepinPaths, Framing};
use edgeshare_shared::config::{Problems, Validate};
use edgeshare_shared::ledger;
use edgeshare_shared::paths::StateSettings;
use edgeshare_shared::secret::Secret;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;
use url::Url;

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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    pub url: Url,
    pub email: String,
    pub password: Secret,
    /// Sent as `X-Tenant-Id` on every ingest call.
    pub tenant: String,
}

/// The `[usage]` section: reporting the gateway's usage ledger to `[backend]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageSettings {
    /// The gateway's ledger directory (the agent needs read access, e.g. through the group).
    pub ledger: PathBuf,
    /// A code's usage is reported once this many bytes are pending, or when a session ends:
    /// the backend grants points per whole MiB of each report.
    pub min_report_bytes: u64,
    /// How often the ledger is read.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for UsageSettings {
    fn default() -> Self {
        UsageSettings {
            ledger: ledger::default_dir(),
            min_report_bytes: 1 << 20,
            interval: Duration::from_secs(10),
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
        }
        if let Some(telemetry) = &self.telemetry {
            check_scheme("telemetry.url", &telemetry.url, ["http", "https"], problems);
            check_not_empty("telemetry.email", &telemetry.email, problems);
            check_not_empty("telemetry.password", telemetry.password.expose(), problems);
            check_not_empty("telemetry.tenant", &telemetry.tenant, problems);
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
