//! Health and counters, served in Prometheus text format on `[metrics] listen` (local only
//! by default) and read back by `edgeshare-agent status`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use edgeshare_shared::prometheus::{Exposition, Kind, read_label, read_value};
use edgeshare_shared::supervisor::Spawner;

use crate::outbox::OutboxStats;

/// Every metric's name starts with this.
pub const PREFIX: &str = "edgeshare_agent_";

/// The daemon's counters; shared by every task.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    /// Whether a stream is configured at all (a reporter-only agent has none).
    pub stream_configured: AtomicBool,
    pub connected: AtomicBool,
    pub connects: AtomicU64,
    pub reconnects: AtomicU64,
    pub messages_sent: AtomicU64,
    pub messages_confirmed: AtomicU64,
    pub messages_refused: AtomicU64,
    pub auth_failures: AtomicU64,
    pub dead_links: AtomicU64,
    pub samples: AtomicU64,
    pub sample_errors: AtomicU64,
    pub gateway_present: AtomicBool,
    pub telemetry_flows_posted: AtomicU64,
    pub telemetry_flows_dropped: AtomicU64,
    pub telemetry_snapshots_posted: AtomicU64,
    /// Windows never posted (over a day's while the backend was away).
    pub telemetry_snapshots_dropped: AtomicU64,
    /// Flows ended by the agent: the gateway never said (it restarted, or its word was lost).
    pub telemetry_flows_ended_here: AtomicU64,
    /// Usage bytes the backend took in applied reports (contract 1), since start.
    pub usage_reported_bytes: AtomicU64,
    /// Usage bytes in the ledger not yet settled with the backend.
    pub usage_pending_bytes: AtomicU64,
    /// Whether the usage reporter runs (a `[backend]` is configured).
    pub usage_configured: AtomicBool,
    /// Usage bytes the backend could not bill (code used up or gone), since start.
    pub usage_written_off_bytes: AtomicU64,
    /// Reports the backend applied only half (code debited, account not credited).
    pub usage_half_applied: AtomicU64,
    pub usage_uncredited_bytes: AtomicU64,
    /// Unix seconds since the reporter's rounds fail; 0 while they succeed.
    pub usage_failing_since: AtomicU64,
    /// Whether the account's credit has been reconciled with its usage log (a shortfall
    /// figure exists).
    pub usage_credit_reconciled: AtomicBool,
    /// Points and `bytesShared` the account is short of its usage log since the agent
    /// started (credit lost to reports crediting it at once, from any of its gateways).
    pub usage_credit_shortfall_points: AtomicU64,
    pub usage_credit_shortfall_bytes: AtomicU64,
    /// Usage log entries may have gone unseen: the shortfall may be larger.
    pub usage_credit_entries_missed: AtomicBool,
    outbox: Mutex<OutboxStats>,
    last_error: Mutex<Option<(String, u64)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            stream_configured: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            connects: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            messages_confirmed: AtomicU64::new(0),
            messages_refused: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            dead_links: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            sample_errors: AtomicU64::new(0),
            gateway_present: AtomicBool::new(false),
            telemetry_flows_posted: AtomicU64::new(0),
            telemetry_flows_dropped: AtomicU64::new(0),
            telemetry_snapshots_posted: AtomicU64::new(0),
            telemetry_snapshots_dropped: AtomicU64::new(0),
            telemetry_flows_ended_here: AtomicU64::new(0),
            usage_reported_bytes: AtomicU64::new(0),
            usage_pending_bytes: AtomicU64::new(0),
            usage_configured: AtomicBool::new(false),
            usage_written_off_bytes: AtomicU64::new(0),
            usage_half_applied: AtomicU64::new(0),
            usage_uncredited_bytes: AtomicU64::new(0),
            usage_failing_since: AtomicU64::new(0),
            usage_credit_reconciled: AtomicBool::new(false),
            usage_credit_shortfall_points: AtomicU64::new(0),
            usage_credit_shortfall_bytes: AtomicU64::new(0),
            usage_credit_entries_missed: AtomicBool::new(false),
            outbox: Mutex::new(OutboxStats::default()),
            last_error: Mutex::new(None),
        }
    }
}

/// Seconds since the epoch, as the `*_since` gauges hold them.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set_outbox(&self, stats: OutboxStats) {
        *self.outbox.lock().unwrap_or_else(PoisonError::into_inner) = stats;
    }

    pub fn outbox(&self) -> OutboxStats {
        *self.outbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the latest error (already free of secrets: tokens never enter error texts).
    pub fn set_last_error(&self, error: &str) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((error.to_owned(), unix_now()));
    }

    pub fn last_error(&self) -> Option<(String, u64)> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Exposition::new();
        let mut metric = |name: &str, kind: Kind, help: &str, value: String| {
            out.single(&format!("{PREFIX}{name}"), kind, help, value);
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed).to_string();
        let flag = |b: &AtomicBool| u8::from(b.load(Ordering::Relaxed)).to_string();
        let outbox = self.outbox();
        metric(
            "uptime_seconds",
            Kind::Gauge,
            "Seconds since the agent started.",
            self.started.elapsed().as_secs().to_string(),
        );
        metric(
            "stream_configured",
            Kind::Gauge,
            "1 if a [stream] is configured.",
            flag(&self.stream_configured),
        );
        metric(
            "connected",
            Kind::Gauge,
            "1 while the producer WebSocket is up.",
            flag(&self.connected),
        );
        metric(
            "connects_total",
            Kind::Counter,
            "WebSocket connections established.",
            get(&self.connects),
        );
        metric(
            "reconnects_total",
            Kind::Counter,
            "Connections established after a lost one.",
            get(&self.reconnects),
        );
        metric(
            "dead_links_total",
            Kind::Counter,
            "Connections given up because the peer went silent past stream.dead_after.",
            get(&self.dead_links),
        );
        metric(
            "messages_sent_total",
            Kind::Counter,
            "Messages written to the WebSocket (resends after a reconnect included).",
            get(&self.messages_sent),
        );
        metric(
            "messages_confirmed_total",
            Kind::Counter,
            "Messages the server has read (acked, refused, or covered by a pong): no longer waiting.",
            get(&self.messages_confirmed),
        );
        metric(
            "messages_refused_total",
            Kind::Counter,
            "Messages the server answered with an error.",
            get(&self.messages_refused),
        );
        metric(
            "auth_failures_total",
            Kind::Counter,
            "Refused logins, refreshes and stream tokens.",
            get(&self.auth_failures),
        );
        metric(
            "samples_total",
            Kind::Counter,
            "Samples taken by the sources.",
            get(&self.samples),
        );
        metric(
            "sample_errors_total",
            Kind::Counter,
            "Samples a source failed to take.",
            get(&self.sample_errors),
        );
        metric(
            "gateway_present",
            Kind::Gauge,
            "1 if the gateway's control socket answered the last usage poll.",
            flag(&self.gateway_present),
        );
        metric(
            "telemetry_flows_posted_total",
            Kind::Counter,
            "Connections posted to the telemetry backend.",
            get(&self.telemetry_flows_posted),
        );
        metric(
            "telemetry_flows_dropped_total",
            Kind::Counter,
            "Connections never posted: over telemetry.max_flows while the backend was away.",
            get(&self.telemetry_flows_dropped),
        );
        metric(
            "telemetry_snapshots_posted_total",
            Kind::Counter,
            "Metric snapshots posted to the telemetry backend.",
            get(&self.telemetry_snapshots_posted),
        );
        metric(
            "telemetry_snapshots_dropped_total",
            Kind::Counter,
            "Metric snapshots never posted: over a day's worth waiting while the backend was away.",
            get(&self.telemetry_snapshots_dropped),
        );
        metric(
            "telemetry_flows_ended_by_agent_total",
            Kind::Counter,
            "Flows the agent marked inactive because the gateway never reported their end (a gateway restart, a lost reading).",
            get(&self.telemetry_flows_ended_here),
        );
        metric(
            "usage_reported_bytes_total",
            Kind::Counter,
            "Usage bytes the backend took in reports known to be applied, since start.",
            get(&self.usage_reported_bytes),
        );
        metric(
            "usage_pending_bytes",
            Kind::Gauge,
            "Usage bytes of the gateway's ledger not yet settled with the backend.",
            get(&self.usage_pending_bytes),
        );
        metric(
            "usage_configured",
            Kind::Gauge,
            "1 if the usage reporter runs (a [backend] is configured).",
            flag(&self.usage_configured),
        );
        metric(
            "usage_written_off_bytes_total",
            Kind::Counter,
            "Usage bytes the backend could not bill (code used up, expired or deleted), since start.",
            get(&self.usage_written_off_bytes),
        );
        metric(
            "usage_half_applied_total",
            Kind::Counter,
            "Reports the backend applied only half (code debited, account never credited), since start.",
            get(&self.usage_half_applied),
        );
        metric(
            "usage_uncredited_bytes_total",
            Kind::Counter,
            "Bytes of half-applied reports never credited to the account, since start.",
            get(&self.usage_uncredited_bytes),
        );
        metric(
            "usage_credit_reconciled",
            Kind::Gauge,
            "1 once the account's points and bytesShared have been compared with its usage log.",
            flag(&self.usage_credit_reconciled),
        );
        metric(
            "usage_credit_shortfall_points",
            Kind::Gauge,
            "Points the account is short of what its usage log earned since the agent started (credit lost to reports crediting it at once, from any of its gateways).",
            get(&self.usage_credit_shortfall_points),
        );
        metric(
            "usage_credit_shortfall_bytes",
            Kind::Gauge,
            "bytesShared the account is short of what its usage log earned since the agent started.",
            get(&self.usage_credit_shortfall_bytes),
        );
        metric(
            "usage_credit_entries_missed",
            Kind::Gauge,
            "1 if usage log entries may have gone unseen (more than a page between two readings): the shortfall may be larger.",
            flag(&self.usage_credit_entries_missed),
        );
        metric(
            "usage_failing_since_seconds",
            Kind::Gauge,
            "When the usage reporter's rounds began to fail (Unix seconds); 0 while they succeed.",
            get(&self.usage_failing_since),
        );
        metric(
            "spool_depth",
            Kind::Gauge,
            "Messages waiting to be confirmed (memory and disk).",
            outbox.depth.to_string(),
        );
        metric(
            "spool_disk_messages",
            Kind::Gauge,
            "Messages in the disk spool.",
            outbox.disk_entries.to_string(),
        );
        metric(
            "spool_bytes",
            Kind::Gauge,
            "Bytes in the disk spool.",
            outbox.disk_bytes.to_string(),
        );
        metric(
            "spool_dropped_total",
            Kind::Counter,
            "Oldest sensor samples dropped to keep the spool within spool.max_bytes.",
            outbox.dropped.to_string(),
        );
        metric(
            "spool_refused_total",
            Kind::Counter,
            "Sensor samples refused because the spool was full of usage messages.",
            outbox.refused.to_string(),
        );
        metric(
            "spool_lost_total",
            Kind::Counter,
            "Messages lost because the spool could not write them (disk full, I/O error).",
            outbox.lost.to_string(),
        );
        let (error, at) = self.last_error().unwrap_or_default();
        let name = format!("{PREFIX}last_error_info");
        out.family(
            &name,
            Kind::Gauge,
            "The latest error, as a label; its value is when it happened (Unix seconds, 0: none).",
        );
        out.sample(&name, &[("error", &error)], at);
        out.finish()
    }
}

/// Serves `GET /metrics` (and `/` for a person with a browser) until the stop; each
/// connection is a task of `tasks`.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, tasks: Spawner) {
    use axum::routing::get;
    let handler = move || {
        let metrics = metrics.clone();
        async move {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                metrics.render(),
            )
        }
    };
    let app = axum::Router::new()
        .route("/metrics", get(handler.clone()))
        .route("/", get(handler));
    edgeshare_shared::serve::serve(listener, app, tasks, "metrics connection").await;
}

/// Binds the metrics listener; a clear error if the port is taken.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context as _;
    tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot listen on {addr} for metrics (metrics.listen): is another agent running? choose another port"
        )
    })
}

/// Reads one of the agent's samples (no labels) from its exposition.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    read_value(text, &format!("{PREFIX}{name}"))
}

/// Reads the `error` label of `last_error_info`, unescaped, and its value.
pub fn last_error_sample(text: &str) -> Option<(String, u64)> {
    let (error, at) = read_label(text, &format!("{PREFIX}last_error_info"), "error")?;
    Some((error, at as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_reads_back() {
        let m = Metrics::default();
        m.connected.store(true, Ordering::Relaxed);
        Metrics::add(&m.reconnects, 3);
        m.set_outbox(OutboxStats {
            depth: 7,
            dropped: 2,
            ..OutboxStats::default()
        });
        m.set_last_error("cannot reach \"x\"\nnext");
        let text = m.render();
        assert_eq!(sample(&text, "connected"), Some(1.0));
        assert_eq!(sample(&text, "reconnects_total"), Some(3.0));
        assert_eq!(sample(&text, "spool_depth"), Some(7.0));
        assert_eq!(sample(&text, "spool_dropped_total"), Some(2.0));
        let (error, at) = last_error_sample(&text).unwrap();
        assert_eq!(error, "cannot reach \"x\"\nnext");
        assert!(at > 0);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with(PREFIX), "{line}");
            assert_eq!(line.matches('\n').count(), 0);
        }
    }
}
