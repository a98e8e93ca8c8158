//! The agent's configuration (`/etc/edgeshare/agent.toml`); every key is shown, with
//! comments, in `packaging/agent.example.toml`. Each backend section is optional: an agent
//! with only `[stream]` is a plain sensor node.

use edgeshare_shared::backend::HttpSettings;
use edgeshare_shared::backend::crowd::CrowdConfig;
use edgeshare_shared::backend::depin::{DepinPaths, Framing};
use edgeshare_shared::config::{Problems, Validate};
use edgeshare_shared::paths::StateSettings;
use edgeshare_shared::secret::Secret;
use serde::Deserialize;
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
        if self.backend.is_none() && self.stream.is_none() && self.telemetry.is_none() {
            problems.push(
                "stream",
                "nothing to do: configure at least one of [backend], [stream], [telemetry]",
            );
        }
    }
}
