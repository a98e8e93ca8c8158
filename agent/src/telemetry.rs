//! The gateway's flows to the connection-telemetry backend (contract 3): connections as
//! cumulative upserts, and a summary snapshot per `snapshot_interval`.
//!
//! The gateway's `flows` reply drains its tallies, so what cannot be delivered yet stays
//! here, in [`FlowBook`]: one entry per flow id with its latest totals (a newer reading
//! replaces an older one: the backend overwrites by id anyway), bounded, oldest dropped
//! first and counted. Batches follow the backend's own client: at most 200 connections and
//! 1.5 MB per call. Sign-in, the tenant's client token (renewed before its 12 h expiry) and
//! `X-Tenant-Id` on every call are [`TelemetryClient`]'s.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use edgeshare_shared::backend::telemetry::{
    Connection, FlowStatus, MetricsSnapshot, TelemetryClient,
};
use edgeshare_shared::control::{self, ControlError, Flows};
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// Connections per ingest call at most (the backend's own client's batch).
pub const BATCH_FLOWS: usize = 200;
/// Bytes per ingest call at most, under the backend's 2 MB body limit.
pub const BATCH_BYTES: usize = 1_500_000;
/// Snapshots kept while the backend is unreachable (an hour at one a minute).
const MAX_SNAPSHOTS: usize = 60;

/// Flows waiting to be posted, and the tallies behind the next snapshot. No I/O.
#[derive(Debug)]
pub struct FlowBook {
    max_flows: usize,
    /// Flow ids, oldest first; `pending` holds their latest reading.
    order: VecDeque<String>,
    pending: HashMap<String, Connection>,
    dropped: u64,
    /// Last totals seen per flow (in, out), for the snapshot's byte rates.
    totals: HashMap<String, (u64, u64)>,
    window_in: u64,
    window_out: u64,
    window_active: HashMap<String, ()>,
    window_inactive: u64,
}

impl FlowBook {
    pub fn new(max_flows: usize) -> Self {
        FlowBook {
            max_flows: max_flows.max(1),
            order: VecDeque::new(),
            pending: HashMap::new(),
            dropped: 0,
            totals: HashMap::new(),
            window_in: 0,
            window_out: 0,
            window_active: HashMap::new(),
            window_inactive: 0,
        }
    }

    /// Flows dropped (never posted) to stay within the bound.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Takes in a `flows` reply.
    pub fn add(&mut self, flows: Vec<Connection>) {
        for flow in flows {
            let (last_in, last_out) = self.totals.get(&flow.id).copied().unwrap_or((0, 0));
            self.window_in += flow.bytes_in.saturating_sub(last_in);
            self.window_out += flow.bytes_out.saturating_sub(last_out);
            match flow.status {
                FlowStatus::Active => {
                    self.totals
                        .insert(flow.id.clone(), (flow.bytes_in, flow.bytes_out));
                    self.window_active.insert(flow.id.clone(), ());
                }
                FlowStatus::Inactive => {
                    self.totals.remove(&flow.id);
                    self.window_active.remove(&flow.id);
                    self.window_inactive += 1;
                }
            }
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

    /// The summary of the window since the last snapshot (`seconds` long), and a new window.
    pub fn snapshot(&mut self, at: OffsetDateTime, seconds: f64) -> MetricsSnapshot {
        let seconds = seconds.max(1e-3);
        let snapshot = MetricsSnapshot {
            timestamp: at,
            connections: self.window_active.len() as u64,
            bandwidth_in: (self.window_in as f64 / seconds).round(),
            bandwidth_out: (self.window_out as f64 / seconds).round(),
            inactive: self.window_inactive,
        };
        self.window_in = 0;
        self.window_out = 0;
        self.window_active.clear();
        self.window_inactive = 0;
        snapshot
    }
}

/// `[telemetry]` settings the task needs besides the client.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    pub control_socket: PathBuf,
    pub interval: Duration,
    pub snapshot_interval: Duration,
    pub max_flows: usize,
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
    let mut window_start = tokio::time::Instant::now();
    let mut absent_logged = false;
    let mut failing = false;
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
        if window_start.elapsed() >= settings.snapshot_interval {
            let seconds = window_start.elapsed().as_secs_f64();
            window_start = tokio::time::Instant::now();
            snapshots.push_back(book.snapshot(OffsetDateTime::now_utc(), seconds));
            if snapshots.len() > MAX_SNAPSHOTS {
                snapshots.pop_front();
            }
        }
        let result = post(&client, &mut book, &mut snapshots, &metrics).await;
        metrics
            .telemetry_flows_dropped
            .store(book.dropped(), Ordering::Relaxed);
        match result {
            Ok(()) if failing => {
                tracing::info!("telemetry backend reachable again");
                failing = false;
            }
            Ok(()) => {}
            Err(err) => {
                if crate::auth::is_auth_failure(&err) {
                    Metrics::add(&metrics.auth_failures, 1);
                }
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
) -> Result<(), edgeshare_shared::backend::BackendError> {
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
            bandwidth: 0.0,
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

    #[test]
    fn snapshots_sum_the_window() {
        let mut book = FlowBook::new(100);
        book.add(vec![
            flow("a", 100, FlowStatus::Active),
            flow("b", 200, FlowStatus::Active),
        ]);
        book.add(vec![
            flow("a", 700, FlowStatus::Active),
            flow("b", 200, FlowStatus::Inactive),
        ]);
        let at = time::macros::datetime!(2026-11-21 12:01:00 UTC);
        let s = book.snapshot(at, 60.0);
        assert_eq!(s.connections, 1);
        assert_eq!(s.inactive, 1);
        assert_eq!(s.bandwidth_in, 15.0, "(700 + 200) bytes over 60 s");
        book.add(vec![flow("a", 760, FlowStatus::Active)]);
        let s = book.snapshot(at, 60.0);
        assert_eq!((s.connections, s.bandwidth_in), (1, 1.0));
    }
}
