//! What the agent measures: system data (sysinfo), sensor files, sensor commands, and the
//! gateway's live usage. Each source samples on its own interval and queues one message
//! `{device_id, timestamp, data: {...}}` per sample in the outbox.
//!
//! A failing source logs when it starts failing and when it recovers (not on every sample)
//! and counts its failures; it never stops the others.

pub mod parse;
pub mod system;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use edgeshare_shared::backend::depin::Reading;
use edgeshare_shared::control::{self, ControlError, LiveUsage};
use edgeshare_shared::supervisor::stopped;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};

use crate::config::{FileFormat, SourceConfig, SourceKind};
use crate::metrics::Metrics;
use crate::outbox::OutboxHandle;
use crate::spool::Kind;

/// Where samples go.
#[derive(Debug, Clone)]
pub struct Sink {
    pub device_id: String,
    pub outbox: OutboxHandle,
    pub wake: Arc<Notify>,
    pub metrics: Arc<Metrics>,
}

impl Sink {
    /// Queues one sample and wakes the link.
    pub async fn push(&self, kind: Kind, timestamp: OffsetDateTime, data: Map<String, Value>) {
        let reading = Reading {
            device_id: self.device_id.clone(),
            timestamp,
            data,
        };
        let pushed = self
            .outbox
            .push(kind, reading)
            .await
            .and_then(|(pushed, stats)| {
                self.metrics.set_outbox(stats);
                Ok((pushed?, stats))
            });
        match pushed {
            Ok((appended, stats)) if appended.refused > 0 => tracing::warn!(
                refused_total = stats.refused,
                "spool full of usage messages: sensor sample refused"
            ),
            Ok(_) => {}
            Err(err) => {
                tracing::error!(error = %err, "cannot queue a sample");
                self.metrics.set_last_error(&err.to_string());
            }
        }
        Metrics::add(&self.metrics.samples, 1);
        self.wake.notify_one();
    }
}

/// Logs a source's failures once when they start and once when they end.
#[derive(Debug, Default)]
struct Health {
    failing: bool,
}

impl Health {
    fn failed(&mut self, source: &str, error: &str, metrics: &Metrics) {
        Metrics::add(&metrics.sample_errors, 1);
        if !self.failing {
            tracing::warn!(
                source,
                error,
                "source failing (logged once until it recovers)"
            );
            metrics.set_last_error(&format!("source {source}: {error}"));
        }
        self.failing = true;
    }

    fn ok(&mut self, source: &str) {
        if self.failing {
            tracing::info!(source, "source recovered");
        }
        self.failing = false;
    }
}

/// Runs one configured source until `shutdown`.
pub async fn run(config: SourceConfig, sink: Sink, mut shutdown: watch::Receiver<bool>) {
    let label = config.label();
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut health = Health::default();
    let mut system = match config.kind {
        SourceKind::System => Some(system::Sampler::new()),
        _ => None,
    };
    loop {
        tokio::select! {
            () = stopped(&mut shutdown) => return,
            _ = ticker.tick() => {}
        }
        let now = OffsetDateTime::now_utc();
        let sampled = match config.kind {
            SourceKind::System => match system.take() {
                Some(mut sampler) => {
                    // sysinfo reads /proc and /sys: blocking, if quick.
                    match tokio::task::spawn_blocking(move || {
                        let data = sampler.sample();
                        (sampler, data)
                    })
                    .await
                    {
                        Ok((sampler, data)) => {
                            system = Some(sampler);
                            Ok(data)
                        }
                        Err(err) => Err(format!("sampling task failed: {err}")),
                    }
                }
                // The last sampling task died with the sampler: start with a new one.
                None => {
                    system = Some(system::Sampler::new());
                    continue;
                }
            },
            SourceKind::File => sample_file(&config).await,
            SourceKind::Command => sample_command(&config).await,
        };
        match sampled {
            Ok(data) => {
                health.ok(&label);
                sink.push(Kind::Sensor, now, data).await;
            }
            Err(error) => health.failed(&label, &error, &sink.metrics),
        }
    }
}

async fn sample_file(config: &SourceConfig) -> Result<Map<String, Value>, String> {
    let Some(path) = config.path.clone() else {
        return Err("no path".to_owned());
    };
    let name = config.label();
    let text = tokio::fs::read_to_string(&path)
        .await
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    let value = parse::file_value(&text, config.format, config.scale)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut data = Map::new();
    data.insert(name, json!(round(value, config.format)));
    Ok(data)
}

/// Milli-unit values are exact to three decimals; keep them so (no 23.125000000000004).
fn round(value: f64, format: FileFormat) -> f64 {
    match format {
        FileFormat::Milli | FileFormat::W1Slave => (value * 1000.0).round() / 1000.0,
        FileFormat::Number => value,
    }
}

async fn sample_command(config: &SourceConfig) -> Result<Map<String, Value>, String> {
    let Some((program, args)) = config.command.as_deref().and_then(<[String]>::split_first) else {
        return Err("no command".to_owned());
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let output = tokio::time::timeout(config.timeout, child.wait_with_output())
        .await
        .map_err(|_| {
            format!(
                "{program} did not finish within {} (killed)",
                humantime::format_duration(config.timeout)
            )
        })?
        .map_err(|e| format!("waiting for {program}: {e}"))?;
    if !output.status.success() {
        let stderr: String = String::from_utf8_lossy(&output.stderr)
            .trim()
            .chars()
            .take(200)
            .collect();
        return Err(format!("{program} failed ({}): {stderr}", output.status));
    }
    parse::command_output(&String::from_utf8_lossy(&output.stdout), &config.label())
        .map_err(|e| format!("{program}: {e}"))
}

/// The `data` of a usage message: totals over every online client, never per-client
/// details (MACs, addresses, session ids that carry the access code stay on the device).
pub fn usage_data(usage: &LiveUsage) -> Map<String, Value> {
    let sum = |f: fn(&control::ClientUsage) -> f64| usage.clients.iter().map(f).sum::<f64>();
    let mut data = Map::new();
    data.insert("gateway_clients".into(), usage.clients.len().into());
    data.insert(
        "gateway_up_bytes".into(),
        usage.clients.iter().map(|c| c.up_bytes).sum::<u64>().into(),
    );
    data.insert(
        "gateway_down_bytes".into(),
        usage
            .clients
            .iter()
            .map(|c| c.down_bytes)
            .sum::<u64>()
            .into(),
    );
    data.insert("gateway_up_rate".into(), json!(sum(|c| c.up_rate)));
    data.insert("gateway_down_rate".into(), json!(sum(|c| c.down_rate)));
    data
}

/// Streams the gateway's live usage every `interval`. A missing socket means no gateway on
/// this device: the source stays idle and says so once (debug), then quietly checks again.
pub async fn run_gateway(
    socket: PathBuf,
    interval: Duration,
    sink: Sink,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut absent_logged = false;
    let mut health = Health::default();
    loop {
        tokio::select! {
            () = stopped(&mut shutdown) => return,
            _ = ticker.tick() => {}
        }
        let path = socket.clone();
        // A gateway that does not answer holds this call for its read timeout; stopping
        // does not wait for it.
        let reply = tokio::select! {
            () = stopped(&mut shutdown) => return,
            reply = tokio::task::spawn_blocking(move || {
                control::call(&path, &json!({"cmd": "usage"})).and_then(|value| {
                    serde_json::from_value::<LiveUsage>(value)
                        .map_err(|e| ControlError::BadReply(e.to_string()))
                })
            }) => reply,
        };
        match reply {
            Ok(Ok(usage)) => {
                sink.metrics.gateway_present.store(true, Ordering::Relaxed);
                absent_logged = false;
                health.ok("gateway");
                let at =
                    OffsetDateTime::from_unix_timestamp_nanos(i128::from(usage.at_ms) * 1_000_000)
                        .unwrap_or_else(|_| OffsetDateTime::now_utc());
                sink.push(Kind::Usage, at, usage_data(&usage)).await;
            }
            Ok(Err(ControlError::NotRunning { path })) => {
                sink.metrics.gateway_present.store(false, Ordering::Relaxed);
                if !absent_logged {
                    tracing::debug!(
                        socket = %path.display(),
                        "no gateway control socket: gateway usage source idle"
                    );
                    absent_logged = true;
                }
            }
            Ok(Err(err)) => {
                sink.metrics.gateway_present.store(false, Ordering::Relaxed);
                health.failed("gateway", &err.to_string(), &sink.metrics);
            }
            Err(err) => health.failed("gateway", &err.to_string(), &sink.metrics),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_summed_and_keeps_no_client_details() {
        let usage: LiveUsage = serde_json::from_value(json!({
            "at_ms": 1_790_000_000_000u64,
            "clients": [
                {"mac": "aa:bb:cc:dd:ee:01", "ip": "10.66.0.2", "session": "ABCD2345-1",
                 "up_bytes": 100, "down_bytes": 1000, "up_rate": 1.5, "down_rate": 10.0},
                {"mac": "aa:bb:cc:dd:ee:02", "ip": "10.66.0.3", "session": "EFGH6789-2",
                 "up_bytes": 50, "down_bytes": 500, "up_rate": 0.5, "down_rate": 5.0}
            ]
        }))
        .unwrap();
        let data = Value::Object(usage_data(&usage));
        assert_eq!(
            data,
            json!({"gateway_clients": 2, "gateway_up_bytes": 150, "gateway_down_bytes": 1500,
                   "gateway_up_rate": 2.0, "gateway_down_rate": 15.0})
        );
        let text = data.to_string();
        assert!(!text.contains("ABCD2345") && !text.contains("aa:bb"));
    }
}
