//! The gateway's flows to the connection-telemetry backend (contract 3): connections as
//! cumulative upserts, and a summary snapshot per `snapshot_interval` window.
//!
//! The gateway's `flows` reply drains its tallies, so what cannot be delivered yet stays
//! here, in the [`FlowBook`] (pure: [`book`]), saved to disk after every change ([`store`]):
//! an agent restart loses no flow or window waiting for the backend and counts no flow's
//! history again. Reads are taken on multiples of `interval` and at every window boundary,
//! so that a window is `snapshot_interval` long on multiples of it (60 s on the minute).
//! Batches follow the backend's own client: at most 200 connections and 1.5 MB per call.
//! Sign-in, the tenant's client token (renewed late in its life) and `X-Tenant-Id` on every
//! call are [`TelemetryClient`]'s.
//!
//! A window is posted at least once: it leaves the saved book once the backend has answered
//! 202, so only an agent killed between that answer and the save (milliseconds) sends it again.

pub mod book;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use edgeshare_shared::backend::telemetry::TelemetryClient;
use edgeshare_shared::backend::{BackendError, Rejection};
use edgeshare_shared::control::{self, ControlError, Flows};
use edgeshare_shared::retry::Backoff;
use edgeshare_shared::supervisor::stopped;
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::time::Instant;

pub use book::{FlowBook, Limits};

use crate::metrics::Metrics;

/// Connections per ingest call at most (the backend's own client's batch).
pub const BATCH_FLOWS: usize = 200;
/// Bytes per ingest call at most, under the backend's 2 MB body limit.
pub const BATCH_BYTES: usize = 1_500_000;
/// Snapshots kept while the backend is unreachable: a day at one a minute (about 190 kB).
pub const MAX_SNAPSHOTS: usize = 1440;
/// The book's file in `state.dir`.
pub const STATE_FILE: &str = "telemetry.json";
/// The gateway's default `capture.flow_idle`, for a gateway whose `flows` reply does not
/// say (one older than this agent).
const DEFAULT_FLOW_IDLE: Duration = Duration::from_secs(120);

/// How long a flow may go unread before it is taken as lost and ended here: the gateway's
/// idle time, plus time for the gateway's report of its end to come (its report tick, one
/// read interval) and a margin.
pub fn silent_after(flow_idle: Duration, interval: Duration) -> Duration {
    flow_idle + interval * 2 + Duration::from_secs(5)
}

/// `[telemetry]` settings the task needs besides the client.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    pub control_socket: PathBuf,
    pub interval: Duration,
    pub snapshot_interval: Duration,
    pub max_flows: usize,
    /// Where the book is saved (`telemetry.json` in `state.dir`).
    pub state_file: PathBuf,
    /// How posting backs off while the backend refuses the account ([`REFUSED_BACKOFF`]).
    pub refused: Backoff,
}

impl TelemetrySettings {
    fn limits(&self) -> Limits {
        Limits {
            max_flows: self.max_flows,
            max_snapshots: MAX_SNAPSHOTS,
            window: self.snapshot_interval,
        }
    }
}

/// Retries while the backend refuses the account (a 403 for the tenant, a refused sign-in):
/// each one signs in again (a password hash on the backend) and fails the same way until
/// someone fixes the account, so they back off from 5 s, doubling, to 5 min, jittered.
pub const REFUSED_BACKOFF: Backoff = Backoff {
    initial: Duration::from_secs(5),
    max: Duration::from_secs(5 * 60),
    multiplier: 2.0,
};

/// When posting may go on after the backend refused the account. No clock: times are
/// passed in.
#[derive(Debug)]
pub struct Refusals {
    policy: Backoff,
    /// Refusals in a row.
    count: u32,
    until: Option<Instant>,
}

impl Refusals {
    pub fn new(policy: Backoff) -> Self {
        Refusals {
            policy,
            count: 0,
            until: None,
        }
    }

    /// True unless backing off at `now`.
    pub fn may_post(&self, now: Instant) -> bool {
        self.until.is_none_or(|until| now >= until)
    }

    /// Records a refusal at `now` (`unit_random` in [0, 1) is the jitter): the next post
    /// waits the returned time.
    pub fn refused(&mut self, now: Instant, unit_random: f64) -> Duration {
        let wait = self.policy.delay(self.count, unit_random);
        self.count = self.count.saturating_add(1);
        self.until = Some(now + wait);
        wait
    }

    /// A post went through. True if it ended a run of refusals.
    pub fn accepted(&mut self) -> bool {
        self.until = None;
        std::mem::take(&mut self.count) > 0
    }
}

/// What to do about a refusal, naming the account and the tenant (never the password).
pub fn refusal_advice(err: &BackendError, email: &str, tenant: &str) -> String {
    match err.rejection() {
        Some(Rejection::BadCredentials) => format!(
            "the telemetry backend refused the sign-in of {email}: check telemetry.email and telemetry.password"
        ),
        Some(Rejection::Forbidden) => format!(
            "the telemetry backend does not let {email} send for tenant {tenant}: give that account the tenant on the backend, or set telemetry.tenant to one it owns"
        ),
        _ => format!(
            "the telemetry backend refused the client token of {email} for tenant {tenant} even after a new sign-in: check the account on the backend"
        ),
    }
}

/// Saves the book off the runtime's threads, when it changed since the last save (an idle
/// gateway costs no writes). A failure is logged and counted in the last error; the book
/// stays in memory and the next save tries again.
struct Saver {
    path: PathBuf,
    /// What is on disk.
    saved: Vec<u8>,
}

impl Saver {
    async fn save(&mut self, book: &FlowBook, metrics: &Metrics) {
        let bytes = store::encode(book);
        if bytes == self.saved {
            return;
        }
        let path = self.path.clone();
        let written = bytes.clone();
        match tokio::task::spawn_blocking(move || store::save(&path, &written)).await {
            Ok(Ok(())) => self.saved = bytes,
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "cannot save the telemetry state; an agent restart now would lose what waits");
                metrics.set_last_error(&err.to_string());
            }
            Err(err) => tracing::error!(error = %err, "telemetry state save task failed"),
        }
    }
}

fn publish(book: &FlowBook, metrics: &Metrics) {
    metrics
        .telemetry_flows_dropped
        .store(book.dropped(), Ordering::Relaxed);
    metrics
        .telemetry_snapshots_dropped
        .store(book.snapshots_dropped(), Ordering::Relaxed);
    metrics
        .telemetry_flows_ended_here
        .store(book.ended_here(), Ordering::Relaxed);
}

/// Reads the gateway's flows on multiples of `interval` and at every window boundary, and
/// posts them and the closed windows. No gateway (no socket): idle, said once at debug
/// level.
pub async fn run(
    settings: TelemetrySettings,
    client: Arc<TelemetryClient>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = settings.limits();
    let path = settings.state_file.clone();
    let loaded = tokio::task::spawn_blocking(move || store::load(&path, limits)).await;
    let mut book = match loaded {
        Ok((book, None)) => book,
        Ok((book, Some(err))) => {
            tracing::error!(error = %err, "telemetry state");
            metrics.set_last_error(&err.to_string());
            book
        }
        Err(err) => {
            tracing::error!(error = %err, "telemetry state load task failed");
            FlowBook::new(limits)
        }
    };
    if book.pending() > 0 || book.waiting_snapshots() > 0 {
        tracing::info!(
            connections = book.pending(),
            snapshots = book.waiting_snapshots(),
            "telemetry waiting from before the restart"
        );
    }
    publish(&book, &metrics);
    let mut saver = Saver {
        path: settings.state_file.clone(),
        saved: store::encode(&book),
    };
    let mut absent_logged = false;
    let mut failing = false;
    let mut refusals = Refusals::new(settings.refused);
    loop {
        let now = OffsetDateTime::now_utc();
        let at = book::next_read(now, settings.interval, settings.snapshot_interval);
        let wait = Duration::try_from(at - now).unwrap_or_default();
        tokio::select! {
            () = stopped(&mut shutdown) => return,
            () = tokio::time::sleep(wait) => {}
        }
        // Dated by the read's planned time (a window's last read is at its end), unless the
        // clock was stepped meanwhile.
        let woke = OffsetDateTime::now_utc();
        let at = if (woke - at).unsigned_abs() > settings.interval {
            woke
        } else {
            at
        };
        let socket = settings.control_socket.clone();
        let reply = tokio::task::spawn_blocking(move || {
            control::call(&socket, &json!({"cmd": "flows"})).and_then(|value| {
                serde_json::from_value::<Flows>(value)
                    .map_err(|e| ControlError::BadReply(e.to_string()))
            })
        })
        .await;
        match reply {
            Ok(Ok(flows)) => {
                absent_logged = false;
                let idle = flows
                    .flow_idle_ms
                    .map_or(DEFAULT_FLOW_IDLE, Duration::from_millis);
                book.read(flows.connections, flows.instance, at);
                book.end_silent(at, silent_after(idle, settings.interval));
                // The gateway has forgotten what it handed over: on disk before anything else.
                saver.save(&book, &metrics).await;
            }
            Ok(Err(ControlError::NotRunning { path })) => {
                if !absent_logged {
                    tracing::debug!(socket = %path.display(), "no gateway control socket: no flows to send");
                    absent_logged = true;
                }
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "cannot read the gateway's flows");
                metrics.set_last_error(&format!("reading the gateway's flows: {err}"));
            }
            Err(err) => tracing::error!(error = %err, "flows task failed"),
        }
        publish(&book, &metrics);
        // While backing off, flows and snapshots are still read and kept for later.
        if (book.pending() == 0 && book.waiting_snapshots() == 0)
            || !refusals.may_post(Instant::now())
        {
            continue;
        }
        let result = post(&client, &mut book, &metrics).await;
        saver.save(&book, &metrics).await;
        publish(&book, &metrics);
        match result {
            Ok(()) => {
                if refusals.accepted() {
                    tracing::info!(
                        email = client.email(),
                        tenant = client.tenant(),
                        "the telemetry backend accepts the account again"
                    );
                } else if failing {
                    tracing::info!("telemetry backend reachable again");
                }
                failing = false;
            }
            Err(err) if crate::auth::is_auth_failure(&err) => {
                Metrics::add(&metrics.auth_failures, 1);
                let wait = refusals.refused(Instant::now(), fastrand::f64());
                // Once per step of the backoff, so at most a few lines an hour.
                tracing::warn!(
                    error = %err,
                    retry_in = format!("{:.1}s", wait.as_secs_f64()),
                    waiting = book.pending(),
                    "{}; keeping the flows",
                    refusal_advice(&err, client.email(), client.tenant())
                );
                failing = true;
                metrics.set_last_error(&err.to_string());
            }
            Err(err) => {
                if !failing {
                    tracing::warn!(error = %err, waiting = book.pending(), "cannot post to the telemetry backend; keeping the flows");
                }
                failing = true;
                metrics.set_last_error(&err.to_string());
            }
        }
    }
}

async fn post(
    client: &TelemetryClient,
    book: &mut FlowBook,
    metrics: &Metrics,
) -> Result<(), BackendError> {
    loop {
        let batch = book.take_batch(BATCH_FLOWS, BATCH_BYTES);
        if batch.is_empty() {
            break;
        }
        if let Err(err) = client.post_connections(&batch).await {
            book.put_back(batch);
            return Err(err);
        }
        Metrics::add(&metrics.telemetry_flows_posted, batch.len() as u64);
    }
    let snapshots = book.snapshots();
    if !snapshots.is_empty() {
        client.post_metrics(&snapshots).await?;
        book.snapshots_posted(snapshots.len());
        Metrics::add(&metrics.telemetry_snapshots_posted, snapshots.len() as u64);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_back_off_doubling_and_end_with_a_post_that_goes_through() {
        let t0 = Instant::now();
        let mut refusals = Refusals::new(REFUSED_BACKOFF);
        assert!(refusals.may_post(t0));
        let waits: Vec<u64> = (0..9)
            .map(|_| refusals.refused(t0, 1.0).as_secs())
            .collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert!(!refusals.may_post(t0 + Duration::from_secs(299)));
        assert!(refusals.may_post(t0 + Duration::from_secs(300)));
        assert!(refusals.accepted());
        assert!(refusals.may_post(t0));
        assert_eq!(refusals.refused(t0, 1.0), Duration::from_secs(5), "anew");
        assert!(refusals.accepted());
        assert!(!refusals.accepted(), "no refusal since");
    }

    proptest::proptest! {
        /// An account refused for an hour, flows read every 5 s: at most 30 sign-ins, where
        /// retrying at every read would make 720, whatever the jitter.
        #[test]
        fn an_hour_of_refusals_makes_few_attempts(jitter in proptest::collection::vec(0.0f64..1.0, 720)) {
            let t0 = Instant::now();
            let mut refusals = Refusals::new(REFUSED_BACKOFF);
            let mut attempts = 0;
            for (tick, r) in jitter.iter().enumerate() {
                let now = t0 + Duration::from_secs(5 * tick as u64);
                if refusals.may_post(now) {
                    attempts += 1;
                    refusals.refused(now, *r);
                }
            }
            proptest::prop_assert!((8..=30).contains(&attempts), "{attempts}");
        }
    }

    #[test]
    fn refusal_advice_names_the_account_and_what_to_change() {
        let refused = |status: u16, message: &str, kind| BackendError::Rejected {
            endpoint: "POST /auth/client-token".into(),
            status: reqwest::StatusCode::from_u16(status).unwrap(),
            message: message.into(),
            kind,
        };
        let forbidden = refusal_advice(
            &refused(
                403,
                "Forbidden: no authorized tenants",
                Rejection::Forbidden,
            ),
            "edge@example.com",
            "tenant-x",
        );
        assert!(forbidden.contains("edge@example.com") && forbidden.contains("tenant tenant-x"));
        assert!(forbidden.contains("telemetry.tenant"), "{forbidden}");
        let signin = refusal_advice(
            &refused(401, "Invalid credentials", Rejection::BadCredentials),
            "edge@example.com",
            "tenant-x",
        );
        assert!(signin.contains("telemetry.password"), "{signin}");
    }
}
