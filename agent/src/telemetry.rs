//! Flows and metrics for the connections-telemetry backend (contract 3), from the gateway's
//! capture meter (its `flows` control request).
//!
//! [`Outbox`] is the pure part: flows in (the latest cumulative tallies of each), batches out
//! (at most [`MAX_BATCH_CONNECTIONS`] connections and [`MAX_BATCH_BYTES`] of JSON, as the
//! backend's own client sent them), a snapshot a minute. The backend upserts connections by
//! id, so a flow that changes again before it is sent goes once, with its latest tallies.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use edgeshare_shared::backend::telemetry::{Connection, FlowStatus, MetricsSnapshot};
use time::OffsetDateTime;

/// Most connections in one `POST /api/connections`.
pub const MAX_BATCH_CONNECTIONS: usize = 200;
/// Most bytes of JSON in one `POST /api/connections` (the backend takes 2 MB).
pub const MAX_BATCH_BYTES: usize = 1_500_000;
/// How often flows are fetched from the gateway and sent.
pub const SEND_EVERY: Duration = Duration::from_secs(5);
/// How often a metrics snapshot is sent.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(60);
/// Most connections kept while the backend is unreachable; the oldest go first (telemetry,
/// not billing).
pub const MAX_PENDING: usize = 20_000;
/// Most snapshots kept while the backend is unreachable.
pub const MAX_PENDING_SNAPSHOTS: usize = 60;

/// What waits to be sent, and the current minute's figures.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Connection ids in the order they first became pending.
    order: VecDeque<String>,
    pending: HashMap<String, Connection>,
    snapshots: VecDeque<MetricsSnapshot>,
    /// Each flow's cumulative bytes (in, out) when last seen, for the minute's bandwidth.
    last_seen: HashMap<String, (u64, u64)>,
    window_in: u64,
    window_out: u64,
    active_in_window: HashMap<String, ()>,
    inactive_in_window: u64,
    /// Connections and snapshots dropped for room since start.
    pub dropped_connections: u64,
    pub dropped_snapshots: u64,
}

impl Outbox {
    /// The gateway's latest flow tallies.
    pub fn add(&mut self, connections: Vec<Connection>) {
        for connection in connections {
            let (bytes_in, bytes_out) = (connection.bytes_in, connection.bytes_out);
            let (seen_in, seen_out) = self
                .last_seen
                .get(&connection.id)
                .copied()
                .unwrap_or((0, 0));
            self.window_in += bytes_in.saturating_sub(seen_in);
            self.window_out += bytes_out.saturating_sub(seen_out);
            match connection.status {
                FlowStatus::Active => {
                    self.last_seen
                        .insert(connection.id.clone(), (bytes_in, bytes_out));
                    self.active_in_window.insert(connection.id.clone(), ());
                }
                FlowStatus::Inactive => {
                    // Its last report: nothing will come after it.
                    self.last_seen.remove(&connection.id);
                    self.active_in_window.remove(&connection.id);
                    self.inactive_in_window += 1;
                }
            }
            if !self.pending.contains_key(&connection.id) {
                self.order.push_back(connection.id.clone());
            }
            self.pending.insert(connection.id.clone(), connection);
        }
        while self.order.len() > MAX_PENDING {
            if let Some(id) = self.order.pop_front() {
                self.pending.remove(&id);
                self.dropped_connections += 1;
            }
        }
    }

    /// The next batch to send: the oldest pending connections, within both limits (a single
    /// connection is always small enough).
    pub fn next_batch(&self) -> Vec<Connection> {
        let mut batch = Vec::new();
        // `{"connections":[` … `]}` plus commas.
        let mut bytes = 20;
        for id in self.order.iter().take(MAX_BATCH_CONNECTIONS) {
            let Some(connection) = self.pending.get(id) else {
                continue;
            };
            let size = serde_json::to_vec(connection).map_or(0, |json| json.len()) + 1;
            if !batch.is_empty() && bytes + size > MAX_BATCH_BYTES {
                break;
            }
            bytes += size;
            batch.push(connection.clone());
        }
        batch
    }

    /// The backend took `sent` (the last [`Outbox::next_batch`]). A connection updated
    /// since (a newer tally under the same id) stays pending.
    pub fn confirm(&mut self, sent: &[Connection]) {
        for connection in sent {
            if self.pending.get(&connection.id) == Some(connection) {
                self.pending.remove(&connection.id);
            }
        }
        let pending = &self.pending;
        self.order.retain(|id| pending.contains_key(id));
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Closes the minute ending `now` (of length `window`): its snapshot joins those to send.
    pub fn close_minute(&mut self, now: OffsetDateTime, window: Duration) {
        let seconds = window.as_secs_f64().max(1.0);
        self.snapshots.push_back(MetricsSnapshot {
            timestamp: now,
            connections: self.active_in_window.len() as u64,
            bandwidth_in: self.window_in as f64 / seconds,
            bandwidth_out: self.window_out as f64 / seconds,
            inactive: self.inactive_in_window,
        });
        // Flows still active carry into the next minute once they are reported again.
        self.active_in_window.clear();
        self.window_in = 0;
        self.window_out = 0;
        self.inactive_in_window = 0;
        while self.snapshots.len() > MAX_PENDING_SNAPSHOTS {
            self.snapshots.pop_front();
            self.dropped_snapshots += 1;
        }
    }

    /// The snapshots waiting to be sent, oldest first.
    pub fn snapshots(&self) -> Vec<MetricsSnapshot> {
        self.snapshots.iter().cloned().collect()
    }

    /// The backend took the first `count` snapshots.
    pub fn confirm_snapshots(&mut self, count: usize) {
        for _ in 0..count.min(self.snapshots.len()) {
            self.snapshots.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use edgeshare_shared::backend::telemetry::Protocol;

    use super::*;

    fn connection(id: usize, bytes_in: u64, status: FlowStatus) -> Connection {
        let at = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        Connection {
            id: format!("flow-{id}"),
            source_ip: "10.0.0.2".parse().unwrap(),
            dest_ip: "192.0.2.1".parse().unwrap(),
            source_port: 40_000,
            dest_port: 443,
            protocol: Protocol::Tcp,
            status,
            start_time: at,
            last_activity: at,
            duration: Some(0),
            bytes_in,
            bytes_out: 10,
            packets_in: 1,
            packets_out: 1,
            bandwidth: 0.0,
        }
    }

    #[test]
    fn batches_respect_both_limits_and_keep_the_order() {
        let mut outbox = Outbox::default();
        outbox.add(
            (0..450)
                .map(|i| connection(i, 1, FlowStatus::Active))
                .collect(),
        );
        let first = outbox.next_batch();
        assert_eq!(first.len(), MAX_BATCH_CONNECTIONS);
        assert_eq!(first[0].id, "flow-0");
        outbox.confirm(&first);
        assert_eq!(outbox.pending(), 250);
        assert_eq!(outbox.next_batch()[0].id, "flow-200");

        // Big connections: the byte limit cuts the batch first.
        let mut big = Outbox::default();
        let mut fat = connection(0, 1, FlowStatus::Active);
        fat.id = "x".repeat(100_000);
        big.add(
            (0..30)
                .map(|i| {
                    let mut c = fat.clone();
                    c.id.push_str(&i.to_string());
                    c
                })
                .collect(),
        );
        let batch = big.next_batch();
        let json = serde_json::to_vec(&batch).unwrap();
        assert!(json.len() <= MAX_BATCH_BYTES, "{}", json.len());
        assert_eq!(batch.len(), 14);
    }

    #[test]
    fn a_flow_updated_while_its_batch_is_in_flight_is_sent_again_with_the_update() {
        let mut outbox = Outbox::default();
        outbox.add(vec![connection(1, 100, FlowStatus::Active)]);
        let batch = outbox.next_batch();
        outbox.add(vec![connection(1, 500, FlowStatus::Active)]);
        outbox.confirm(&batch);
        let again = outbox.next_batch();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].bytes_in, 500);
        outbox.confirm(&again);
        assert_eq!(outbox.pending(), 0);
        assert!(outbox.next_batch().is_empty());
    }

    #[test]
    fn a_minute_counts_new_bytes_once_and_flows_that_ended() {
        let mut outbox = Outbox::default();
        outbox.add(vec![
            connection(1, 6_000, FlowStatus::Active),
            connection(2, 600, FlowStatus::Active),
        ]);
        // Flow 1 reported again with more; flow 2 ends.
        outbox.add(vec![
            connection(1, 12_000, FlowStatus::Active),
            connection(2, 600, FlowStatus::Inactive),
        ]);
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        outbox.close_minute(now, Duration::from_secs(60));
        let snapshot = &outbox.snapshots()[0];
        assert_eq!(snapshot.connections, 1);
        assert_eq!(snapshot.inactive, 1);
        assert!((snapshot.bandwidth_in - 12_600.0 / 60.0).abs() < 1e-9);
        assert!((snapshot.bandwidth_out - 20.0 / 60.0).abs() < 1e-9);
        outbox.confirm_snapshots(1);
        assert!(outbox.snapshots().is_empty());
    }

    #[test]
    fn an_unreachable_backend_costs_the_oldest_flows_not_memory() {
        let mut outbox = Outbox::default();
        outbox.add(
            (0..MAX_PENDING + 5)
                .map(|i| connection(i, 1, FlowStatus::Active))
                .collect(),
        );
        assert_eq!(outbox.pending(), MAX_PENDING);
        assert_eq!(outbox.dropped_connections, 5);
        assert_eq!(outbox.next_batch()[0].id, "flow-5");
        let now = OffsetDateTime::UNIX_EPOCH;
        for _ in 0..MAX_PENDING_SNAPSHOTS + 2 {
            outbox.close_minute(now, SNAPSHOT_EVERY);
        }
        assert_eq!(outbox.snapshots().len(), MAX_PENDING_SNAPSHOTS);
        assert_eq!(outbox.dropped_snapshots, 2);
    }
}
