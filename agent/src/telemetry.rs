//! The gateway's flows to the connection-telemetry backend (contract 3): connections as
//! cumulative upserts, and a summary snapshot per `snapshot_interval`.
//!
//! The gateway's `flows` reply drains its tallies, so what cannot be delivered yet stays
//! here, in [`FlowBook`]: one entry per flow id with its latest totals (a newer reading
//! replaces an older one: the backend overwrites by id anyway), bounded, oldest dropped
//! first and counted. Batches follow the backend's own client: at most 200 connections and
//! 1.5 MB per call. Sign-in, the tenant's client token (renewed before its 12 h expiry) and
//! `X-Tenant-Id` on every call are [`TelemetryClient`]'s.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use edgeshare_shared::backend::telemetry::{
    Connection, FlowStatus, MetricsSnapshot, TelemetryClient,
};
use edgeshare_shared::backend::{BackendError, Rejection};
use edgeshare_shared::control::{self, ControlError, Flows};
use edgeshare_shared::retry::Backoff;
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// Connections per ingest call at most (the backend's own client's batch).
pub const BATCH_FLOWS: usize = 200;
/// Bytes per ingest call at most, under the backend's 2 MB body limit.
pub const BATCH_BYTES: usize = 1_500_000;
/// Snapshots kept while the backend is unreachable (an hour at one a minute).
const MAX_SNAPSHOTS: usize = 60;

/// How much a cumulative counter grew from `last` to `now`. A total below the last one means
/// the counter started over (the flow restarted under the same id, the gateway restarted):
/// all of it is new, rather than a negative or wrapped-around growth.
pub fn growth(last: u64, now: u64) -> u64 {
    if now >= last { now - last } else { now }
}

/// The traffic of one snapshot window, as the backend's dashboard reads it: byte totals
/// over the window, every flow seen in it, the flows that ended in it.
#[derive(Debug, Default)]
struct Window {
    bytes_in: u64,
    bytes_out: u64,
    seen: HashSet<String>,
    ended: HashSet<String>,
}

/// Flows waiting to be posted, and the tallies behind the next snapshot. No I/O, no clock:
/// times are passed in.
#[derive(Debug)]
pub struct FlowBook {
    max_flows: usize,
    /// Flow ids, oldest first; `pending` holds their latest reading.
    order: VecDeque<String>,
    pending: HashMap<String, Connection>,
    dropped: u64,
    /// Last totals (in, out) of each live flow, so that a window counts only its growth.
    totals: HashMap<String, (u64, u64)>,
    window: Window,
}

impl FlowBook {
    pub fn new(max_flows: usize) -> Self {
        FlowBook {
            max_flows: max_flows.max(1),
            order: VecDeque::new(),
            pending: HashMap::new(),
            dropped: 0,
            totals: HashMap::new(),
            window: Window::default(),
        }
    }

    /// Flows dropped (never posted) to stay within the bound.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Takes in a `flows` reply. A flow's first reading counts whole: its bytes were not
    /// in any earlier window of this agent.
    pub fn add(&mut self, flows: Vec<Connection>) {
        for flow in flows {
            let (last_in, last_out) = match flow.status {
                // Ended: no later reading comes, so its last totals are forgotten.
                FlowStatus::Inactive => {
                    self.window.ended.insert(flow.id.clone());
                    self.totals.remove(&flow.id)
                }
                FlowStatus::Active => self
                    .totals
                    .insert(flow.id.clone(), (flow.bytes_in, flow.bytes_out)),
            }
            .unwrap_or((0, 0));
            let window = &mut self.window;
            window.bytes_in = window
                .bytes_in
                .saturating_add(growth(last_in, flow.bytes_in));
            window.bytes_out = window
                .bytes_out
                .saturating_add(growth(last_out, flow.bytes_out));
            window.seen.insert(flow.id.clone());
            self.keep(flow);
        }
    }

    fn keep(&mut self, flow: Connection) {
        if self.pending.insert(flow.id.clone(), flow.clone()).is_none() {
            self.order.push_back(flow.id);
        }
        while self.pending.len() > self.max_flows {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if self.pending.remove(&oldest).is_some() {
                self.dropped += 1;
            }
        }
    }

    /// The oldest waiting flows, at most `max_flows` and `max_bytes` of JSON.
    pub fn take_batch(&mut self, max_flows: usize, max_bytes: usize) -> Vec<Connection> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while batch.len() < max_flows {
            let Some(id) = self.order.front() else { break };
            let Some(flow) = self.pending.get(id) else {
                self.order.pop_front();
                continue;
            };
            let size = serde_json::to_vec(flow).map_or(0, |v| v.len()) + 1;
            if !batch.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            if let Some(flow) = self.pending.remove(id) {
                batch.push(flow);
            }
            self.order.pop_front();
        }
        batch
    }

    /// A batch that could not be posted goes back to the front, except flows a newer
    /// reading has replaced meanwhile.
    pub fn put_back(&mut self, batch: Vec<Connection>) {
        for flow in batch.into_iter().rev() {
            if self.pending.contains_key(&flow.id) {
                continue;
            }
            self.order.push_front(flow.id.clone());
            self.pending.insert(flow.id.clone(), flow);
        }
        while self.pending.len() > self.max_flows {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if self.pending.remove(&oldest).is_some() {
                self.dropped += 1;
            }
        }
    }

    /// Closes the window that ends at `now` after `length`, and starts the next one. The
    /// start is `now - length`, `length` measured on the monotonic clock: a wall clock
    /// stepped during the window (a device without a real-time clock meeting NTP) then
    /// dates the window by the corrected clock.
    pub fn snapshot(&mut self, now: OffsetDateTime, length: Duration) -> MetricsSnapshot {
        let window = std::mem::take(&mut self.window);
        let start = time::Duration::try_from(length)
            .ok()
            .and_then(|length| now.checked_sub(length))
            .unwrap_or(now);
        MetricsSnapshot {
            timestamp: start,
            connections: window.seen.len() as u64,
            bandwidth_in: window.bytes_in,
            bandwidth_out: window.bytes_out,
            inactive: window.ended.len() as u64,
        }
    }
}

/// `[telemetry]` settings the task needs besides the client.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    pub control_socket: PathBuf,
    pub interval: Duration,
    pub snapshot_interval: Duration,
    pub max_flows: usize,
    /// How posting backs off while the backend refuses the account ([`REFUSED_BACKOFF`]).
    pub refused: Backoff,
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

/// Polls the gateway's flows every `interval` and posts them; a snapshot every
/// `snapshot_interval`. No gateway (no socket): idle, said once at debug level.
pub async fn run(
    settings: TelemetrySettings,
    client: Arc<TelemetryClient>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut book = FlowBook::new(settings.max_flows);
    let mut snapshots: VecDeque<MetricsSnapshot> = VecDeque::new();
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut window_start = Instant::now();
    let mut absent_logged = false;
    let mut failing = false;
    let mut refusals = Refusals::new(settings.refused);
    loop {
        tokio::select! {
            () = crate::daemon::stopped(&mut shutdown) => return,
            _ = ticker.tick() => {}
        }
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
                book.add(flows.connections);
            }
            Ok(Err(ControlError::NotRunning { path })) => {
                if !absent_logged {
                    tracing::debug!(socket = %path.display(), "no gateway control socket: no flows to send");
                    absent_logged = true;
                }
                continue;
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "cannot read the gateway's flows");
                metrics.set_last_error(&format!("reading the gateway's flows: {err}"));
                continue;
            }
            Err(err) => {
                tracing::error!(error = %err, "flows task failed");
                continue;
            }
        }
        let length = window_start.elapsed();
        if length >= settings.snapshot_interval {
            window_start += length;
            snapshots.push_back(book.snapshot(OffsetDateTime::now_utc(), length));
            if snapshots.len() > MAX_SNAPSHOTS {
                snapshots.pop_front();
            }
        }
        // While backing off, flows and snapshots are still read and kept for later.
        if !refusals.may_post(Instant::now()) {
            continue;
        }
        let result = post(&client, &mut book, &mut snapshots, &metrics).await;
        metrics
            .telemetry_flows_dropped
            .store(book.dropped(), Ordering::Relaxed);
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
    snapshots: &mut VecDeque<MetricsSnapshot>,
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
    if !snapshots.is_empty() {
        let all: Vec<MetricsSnapshot> = snapshots.iter().cloned().collect();
        client.post_metrics(&all).await?;
        Metrics::add(&metrics.telemetry_snapshots_posted, all.len() as u64);
        snapshots.clear();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(id: &str, bytes_in: u64, status: FlowStatus) -> Connection {
        let at = time::macros::datetime!(2026-11-21 12:00:00 UTC);
        Connection {
            id: id.into(),
            source_ip: "10.66.0.2".parse().unwrap(),
            dest_ip: "192.0.2.1".parse().unwrap(),
            source_port: 40000,
            dest_port: 443,
            protocol: edgeshare_shared::backend::telemetry::Protocol::Tcp,
            status,
            start_time: at,
            last_activity: at,
            duration: None,
            bytes_in,
            bytes_out: bytes_in / 10,
            packets_in: 1,
            packets_out: 1,
        }
    }

    fn ids(batch: &[Connection]) -> Vec<&str> {
        batch.iter().map(|c| c.id.as_str()).collect()
    }

    #[test]
    fn the_latest_reading_of_a_flow_wins_and_order_is_first_seen() {
        let mut book = FlowBook::new(100);
        book.add(vec![
            flow("a", 10, FlowStatus::Active),
            flow("b", 5, FlowStatus::Active),
        ]);
        book.add(vec![flow("a", 30, FlowStatus::Active)]);
        let batch = book.take_batch(10, BATCH_BYTES);
        assert_eq!(ids(&batch), ["a", "b"]);
        assert_eq!(batch[0].bytes_in, 30);
        assert_eq!(book.pending(), 0);
    }

    #[test]
    fn a_failed_batch_goes_back_unless_superseded() {
        let mut book = FlowBook::new(100);
        book.add(vec![
            flow("a", 10, FlowStatus::Active),
            flow("b", 5, FlowStatus::Active),
        ]);
        let batch = book.take_batch(10, BATCH_BYTES);
        book.add(vec![
            flow("b", 50, FlowStatus::Active),
            flow("c", 1, FlowStatus::Active),
        ]);
        book.put_back(batch);
        let again = book.take_batch(10, BATCH_BYTES);
        assert_eq!(ids(&again), ["a", "b", "c"]);
        assert_eq!(again[1].bytes_in, 50, "the newer reading of b stays");
    }

    #[test]
    fn batches_respect_count_and_size_and_the_bound_drops_oldest() {
        let mut book = FlowBook::new(3);
        book.add(
            (0..5)
                .map(|i| flow(&format!("f{i}"), i, FlowStatus::Active))
                .collect(),
        );
        assert_eq!(book.dropped(), 2);
        assert_eq!(ids(&book.take_batch(2, BATCH_BYTES)), ["f2", "f3"]);
        let one = serde_json::to_vec(&flow("f4", 4, FlowStatus::Active))
            .unwrap()
            .len();
        let mut book = FlowBook::new(10);
        book.add(
            (0..5)
                .map(|i| flow(&format!("g{i}"), 1, FlowStatus::Active))
                .collect(),
        );
        assert_eq!(book.take_batch(10, one * 2 + 2).len(), 2);
    }

    const NOW: OffsetDateTime = time::macros::datetime!(2026-11-21 12:01:00 UTC);

    #[test]
    fn a_window_totals_each_flows_growth_and_counts_every_flow_seen() {
        let mut book = FlowBook::new(100);
        book.add(vec![
            flow("a", 100, FlowStatus::Active),
            flow("b", 200, FlowStatus::Active),
        ]);
        book.add(vec![
            flow("a", 700, FlowStatus::Active),
            flow("b", 250, FlowStatus::Inactive),
        ]);
        let s = book.snapshot(NOW, Duration::from_secs(60));
        assert_eq!(s.bandwidth_in, 700 + 250, "bytes, not bytes per second");
        assert_eq!(s.bandwidth_out, 70 + 25);
        assert_eq!(s.connections, 2, "the ended flow b counts too");
        assert_eq!(s.inactive, 1);
        assert_eq!(
            s.timestamp,
            time::macros::datetime!(2026-11-21 12:00:00 UTC)
        );

        book.add(vec![flow("a", 760, FlowStatus::Active)]);
        let s = book.snapshot(NOW + time::Duration::minutes(1), Duration::from_secs(60));
        assert_eq!((s.connections, s.inactive, s.bandwidth_in), (1, 0, 60));
        assert_eq!(s.timestamp, NOW, "windows follow each other");

        let s = book.snapshot(NOW, Duration::from_secs(60));
        assert_eq!((s.connections, s.bandwidth_in, s.bandwidth_out), (0, 0, 0));
    }

    #[test]
    fn a_counter_that_starts_over_counts_its_new_total() {
        assert_eq!(growth(1000, 1300), 300);
        assert_eq!(growth(1000, 300), 300);
        let mut book = FlowBook::new(100);
        book.add(vec![flow("a", 1000, FlowStatus::Active)]);
        book.add(vec![flow("a", 300, FlowStatus::Active)]);
        book.add(vec![flow("a", 400, FlowStatus::Active)]);
        let s = book.snapshot(NOW, Duration::from_secs(60));
        assert_eq!(s.bandwidth_in, 1000 + 300 + 100);
    }

    proptest::proptest! {
        /// Flows that carried N bytes during the window (each seen before it, some ending in
        /// it) give exactly N, and each counts once in `connections`.
        #[test]
        fn a_window_total_is_exactly_the_bytes_carried_in_it(
            flows in proptest::collection::vec(
                (0u64..1 << 40, proptest::collection::vec(0u64..1 << 30, 1..6), proptest::bool::ANY),
                1..8,
            ),
        ) {
            let mut book = FlowBook::new(100);
            let id = |i: usize| format!("f{i}");
            book.add(flows.iter().enumerate().map(|(i, (before, _, _))| flow(&id(i), *before, FlowStatus::Active)).collect());
            book.snapshot(NOW, Duration::from_secs(60));
            let mut carried = 0;
            for (i, (before, steps, ends)) in flows.iter().enumerate() {
                let mut total = *before;
                for (n, step) in steps.iter().enumerate() {
                    total += step;
                    carried += step;
                    let last = n + 1 == steps.len();
                    let status = if last && *ends { FlowStatus::Inactive } else { FlowStatus::Active };
                    book.add(vec![flow(&id(i), total, status)]);
                }
            }
            let s = book.snapshot(NOW, Duration::from_secs(60));
            proptest::prop_assert_eq!(s.bandwidth_in, carried);
            proptest::prop_assert_eq!(s.connections, flows.len() as u64);
            proptest::prop_assert_eq!(s.inactive, flows.iter().filter(|f| f.2).count() as u64);
        }

        /// Whatever the readings (counters that start over included), a window never
        /// counts more than the readings' totals add up to.
        #[test]
        fn readings_never_give_a_negative_or_huge_total(
            readings in proptest::collection::vec((0usize..4, 0u64..1 << 40, proptest::bool::ANY), 0..40),
        ) {
            let mut book = FlowBook::new(100);
            for (i, total, ends) in &readings {
                let status = if *ends { FlowStatus::Inactive } else { FlowStatus::Active };
                book.add(vec![flow(&format!("f{i}"), *total, status)]);
            }
            let s = book.snapshot(NOW, Duration::from_secs(60));
            let bound: u64 = readings.iter().map(|r| r.1).sum();
            proptest::prop_assert!(s.bandwidth_in <= bound);
        }

        #[test]
        fn the_timestamp_is_the_windows_start(millis in 0u64..86_400_000) {
            let mut book = FlowBook::new(1);
            let s = book.snapshot(NOW, Duration::from_millis(millis));
            proptest::prop_assert_eq!(s.timestamp + time::Duration::milliseconds(millis as i64), NOW);
        }
    }

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
