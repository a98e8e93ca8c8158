//! What the telemetry task knows, as pure data with the time passed in: the flows the backend
//! holds as active (their baselines), the connections waiting to be posted, the window being
//! counted and the snapshots waiting. All of it is saved to disk after every change
//! ([`super::store`]), so that an agent restart neither loses what waits nor counts a flow's
//! history again.
//!
//! - **Ids across gateway restarts.** The gateway names a flow by its 5-tuple and first-seen
//!   time, and a restarted gateway counts from zero: a flow that goes on shows up with the same
//!   5-tuple under a new id and a new instance (`Flows::instance`). It keeps the id the backend
//!   already has, and its new counts are added to the old ones ([`Live::carried`]).
//! - **No record stays active.** The gateway reports each ended flow once; a flow read nothing
//!   of for longer than the gateway's idle time (plus a margin) was lost, by a gateway restart
//!   or a reading that never arrived, and gets a final `inactive` reading here.
//! - **Windows** of `window` length on multiples of it (60 s on the minute), dated at their
//!   start; a reading taken at a boundary belongs to the window it ends.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use edgeshare_shared::backend::telemetry::{Connection, FlowStatus, MetricsSnapshot, Protocol};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// How much a cumulative counter grew from `last` to `now`. A total below the last one means
/// the counter started over: all of it is new, rather than a negative or wrapped-around
/// growth.
pub fn growth(last: u64, now: u64) -> u64 {
    if now >= last { now - last } else { now }
}

/// The start of the window a reading taken at `at` belongs to: windows of `length` on
/// multiples of it since the Unix epoch, a reading at a boundary closing the window before it.
pub fn window_of(at: OffsetDateTime, length: Duration) -> OffsetDateTime {
    let length = length.as_nanos().max(1) as i128;
    let nanos = at.unix_timestamp_nanos() - 1;
    let start = nanos.div_euclid(length) * length;
    OffsetDateTime::from_unix_timestamp_nanos(start).unwrap_or(at)
}

/// When to read the flows next after `now`: the next multiple of `interval`, or the next
/// window boundary if that comes first, so that every window's last reading is taken at its
/// end (a window of 60 s is 60 s whatever the interval).
pub fn next_read(now: OffsetDateTime, interval: Duration, window: Duration) -> OffsetDateTime {
    let next = |step: Duration| {
        let step = step.as_nanos().max(1) as i128;
        let nanos = (now.unix_timestamp_nanos().div_euclid(step) + 1) * step;
        OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(now)
    };
    next(interval).min(next(window))
}

/// A flow's four counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub packets_out: u64,
}

impl Counters {
    fn of(c: &Connection) -> Self {
        Counters {
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            packets_in: c.packets_in,
            packets_out: c.packets_out,
        }
    }

    fn zip(self, other: Counters, f: impl Fn(u64, u64) -> u64) -> Counters {
        Counters {
            bytes_in: f(self.bytes_in, other.bytes_in),
            bytes_out: f(self.bytes_out, other.bytes_out),
            packets_in: f(self.packets_in, other.packets_in),
            packets_out: f(self.packets_out, other.packets_out),
        }
    }

    fn write_to(self, c: &mut Connection) {
        c.bytes_in = self.bytes_in;
        c.bytes_out = self.bytes_out;
        c.packets_in = self.packets_in;
        c.packets_out = self.packets_out;
    }
}

/// The 5-tuple, as the gateway's meter keys its flows.
type Tuple = (Protocol, IpAddr, u16, IpAddr, u16);

fn tuple(c: &Connection) -> Tuple {
    (
        c.protocol,
        c.source_ip,
        c.source_port,
        c.dest_ip,
        c.dest_port,
    )
}

/// A flow the backend holds as active.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Live {
    /// Its latest state as posted: the backend's id for it, the totals of every gateway run.
    conn: Connection,
    /// The gateway's id of the flow in its current run, and that run.
    gateway_id: String,
    instance: Option<u64>,
    /// What earlier runs of the gateway counted: the gateway's totals start after them.
    carried: Counters,
    /// When this agent last had a reading of it.
    read_at: OffsetDateTime,
}

/// The traffic of one window, as the backend's dashboard reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Window {
    start: OffsetDateTime,
    bytes_in: u64,
    bytes_out: u64,
    /// Flows seen in it, ended ones included (backend ids).
    seen: BTreeSet<String>,
    ended: BTreeSet<String>,
}

impl Window {
    fn new(start: OffsetDateTime) -> Self {
        Window {
            start,
            bytes_in: 0,
            bytes_out: 0,
            seen: BTreeSet::new(),
            ended: BTreeSet::new(),
        }
    }
}

/// Bounds and lengths, from the settings (not saved: a new setting applies at a restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections waiting to be posted at most; also the flows followed at most.
    pub max_flows: usize,
    pub max_snapshots: usize,
    pub window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_flows: 16_384,
            max_snapshots: 1440,
            window: Duration::from_secs(60),
        }
    }
}

/// Flows followed, connections and snapshots waiting, the window being counted. See the
/// module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowBook {
    #[serde(skip)]
    limits: Limits,
    /// By backend id.
    live: HashMap<String, Live>,
    #[serde(skip)]
    by_tuple: HashMap<Tuple, String>,
    #[serde(skip)]
    by_gateway_id: HashMap<String, String>,
    /// Connections waiting, oldest first; `pending` holds their latest state.
    order: VecDeque<String>,
    pending: HashMap<String, Connection>,
    dropped: u64,
    window: Option<Window>,
    snapshots: VecDeque<MetricsSnapshot>,
    snapshots_dropped: u64,
    /// Flows this agent ended (read nothing of for longer than the gateway's idle time).
    ended_here: u64,
}

impl FlowBook {
    pub fn new(limits: Limits) -> Self {
        FlowBook {
            limits: Limits {
                max_flows: limits.max_flows.max(1),
                max_snapshots: limits.max_snapshots.max(1),
                ..limits
            },
            live: HashMap::new(),
            by_tuple: HashMap::new(),
            by_gateway_id: HashMap::new(),
            order: VecDeque::new(),
            pending: HashMap::new(),
            dropped: 0,
            window: None,
            snapshots: VecDeque::new(),
            snapshots_dropped: 0,
            ended_here: 0,
        }
    }

    /// A book read back from disk, under the current `limits`.
    pub fn restored(mut self, limits: Limits) -> Self {
        let fresh = FlowBook::new(limits);
        self.limits = fresh.limits;
        self.by_tuple = self
            .live
            .iter()
            .map(|(id, live)| (tuple(&live.conn), id.clone()))
            .collect();
        self.by_gateway_id = self
            .live
            .iter()
            .map(|(id, live)| (live.gateway_id.clone(), id.clone()))
            .collect();
        self.bound_pending();
        self.bound_snapshots();
        self
    }

    /// Connections dropped (never posted) to stay within the bound.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Snapshots dropped (never posted) to stay within the bound.
    pub fn snapshots_dropped(&self) -> u64 {
        self.snapshots_dropped
    }

    /// Flows ended here, the gateway never having said so.
    pub fn ended_here(&self) -> u64 {
        self.ended_here
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Flows the backend holds as active.
    pub fn active(&self) -> usize {
        self.live.len()
    }

    /// Takes in a `flows` reply of the gateway run `instance`, read at `at`: windows that
    /// ended by `at` are closed first (a reading at a boundary still counts in the window it
    /// ends), then each reading counts its growth since the last one of its flow.
    pub fn read(&mut self, flows: Vec<Connection>, instance: Option<u64>, at: OffsetDateTime) {
        self.roll(at);
        for reading in flows {
            self.take(reading, instance, at);
        }
        self.close_due(at);
    }

    /// Ends every flow read nothing of since `at - silent`: the gateway would have reported
    /// its end by then. Call only after a reply of the gateway (it holds what changed).
    pub fn end_silent(&mut self, at: OffsetDateTime, silent: Duration) {
        let Ok(silent) = time::Duration::try_from(silent) else {
            return;
        };
        self.roll(at);
        let lost: Vec<String> = self
            .live
            .iter()
            .filter(|(_, live)| live.read_at + silent <= at)
            .map(|(id, _)| id.clone())
            .collect();
        for id in lost {
            self.end(&id);
            self.ended_here += 1;
        }
        self.close_due(at);
    }

    fn roll(&mut self, at: OffsetDateTime) {
        let start = window_of(at, self.limits.window);
        match &self.window {
            // A clock set back keeps the window it had.
            Some(window) if window.start >= start => {}
            Some(_) => {
                self.close();
                self.window = Some(Window::new(start));
            }
            None => self.window = Some(Window::new(start)),
        }
    }

    fn close_due(&mut self, at: OffsetDateTime) {
        let length = time::Duration::try_from(self.limits.window).unwrap_or(time::Duration::MAX);
        if let Some(window) = &self.window
            && window.start + length <= at
        {
            let next = window.start + length;
            self.close();
            self.window = Some(Window::new(next));
        }
    }

    /// Queues the current window's snapshot.
    fn close(&mut self) {
        let Some(window) = self.window.take() else {
            return;
        };
        self.snapshots.push_back(MetricsSnapshot {
            timestamp: window.start,
            connections: window.seen.len() as u64,
            bandwidth_in: window.bytes_in,
            bandwidth_out: window.bytes_out,
            inactive: window.ended.len() as u64,
        });
        self.bound_snapshots();
    }

    fn window(&mut self) -> &mut Window {
        self.window
            .get_or_insert_with(|| Window::new(OffsetDateTime::UNIX_EPOCH))
    }

    fn take(&mut self, reading: Connection, instance: Option<u64>, at: OffsetDateTime) {
        let raw = Counters::of(&reading);
        let key = tuple(&reading);
        let known = self
            .by_gateway_id
            .get(&reading.id)
            .or_else(|| self.by_tuple.get(&key))
            .cloned();
        let mut live = match known.and_then(|id| self.live.remove(&id)) {
            // The same flow in the same run of the gateway.
            Some(live) if live.gateway_id == reading.id => live,
            // The gateway restarted and the flow goes on: its new counts start from zero.
            Some(mut live) if live.instance != instance => {
                self.by_gateway_id.remove(&live.gateway_id);
                live.carried = Counters::of(&live.conn);
                live.gateway_id = reading.id.clone();
                live.instance = instance;
                live
            }
            // The same 5-tuple again in the same run: the old flow ended (its end never came)
            // and this is a new one.
            Some(old) => {
                let id = old.conn.id.clone();
                self.live.insert(id.clone(), old);
                self.end(&id);
                self.ended_here += 1;
                Live::new(&reading, instance, at)
            }
            None => Live::new(&reading, instance, at),
        };
        let before = Counters::of(&live.conn).zip(live.carried, u64::saturating_sub);
        let grown = before.zip(raw, growth);
        let total = Counters::of(&live.conn).zip(grown, u64::saturating_add);
        let id = live.conn.id.clone();
        let start = live.conn.start_time;
        live.conn = Connection {
            id: id.clone(),
            start_time: start,
            duration: u64::try_from((reading.last_activity - start).whole_milliseconds()).ok(),
            ..reading
        };
        total.write_to(&mut live.conn);
        // Growth below the last reading (a counter that started over) leaves the carried part
        // where the posted total says it is.
        live.carried = total.zip(raw, u64::saturating_sub);
        live.read_at = at;
        let window = self.window();
        window.bytes_in = window.bytes_in.saturating_add(grown.bytes_in);
        window.bytes_out = window.bytes_out.saturating_add(grown.bytes_out);
        window.seen.insert(id.clone());
        let conn = live.conn.clone();
        if conn.status == FlowStatus::Inactive {
            self.by_tuple.remove(&key);
            self.by_gateway_id.remove(&live.gateway_id);
            self.window().ended.insert(id.clone());
        } else {
            self.by_tuple.insert(key, id.clone());
            self.by_gateway_id
                .insert(live.gateway_id.clone(), id.clone());
            self.live.insert(id, live);
            self.bound_live();
        }
        self.keep(conn);
    }

    /// Posts a final `inactive` reading of a live flow, its totals as last posted.
    fn end(&mut self, id: &str) {
        let Some(mut live) = self.live.remove(id) else {
            return;
        };
        self.by_tuple.remove(&tuple(&live.conn));
        self.by_gateway_id.remove(&live.gateway_id);
        live.conn.status = FlowStatus::Inactive;
        let window = self.window();
        window.seen.insert(id.to_owned());
        window.ended.insert(id.to_owned());
        self.keep(live.conn);
    }

    /// Flows followed stay within `max_flows`: the longest unread ends first. Only a
    /// `max_flows` below the gateway's `capture.max_flows` gets here; such a flow read again
    /// starts a new record, counted whole (its baseline is gone), and is counted in
    /// [`FlowBook::ended_here`].
    fn bound_live(&mut self) {
        while self.live.len() > self.limits.max_flows {
            let Some(oldest) = self
                .live
                .iter()
                .min_by_key(|(_, live)| live.read_at)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            self.end(&oldest);
            self.ended_here += 1;
        }
    }

    fn keep(&mut self, flow: Connection) {
        if self.pending.insert(flow.id.clone(), flow.clone()).is_none() {
            self.order.push_back(flow.id);
        }
        self.bound_pending();
    }

    fn bound_pending(&mut self) {
        while self.pending.len() > self.limits.max_flows {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if self.pending.remove(&oldest).is_some() {
                self.dropped += 1;
            }
        }
    }

    fn bound_snapshots(&mut self) {
        while self.snapshots.len() > self.limits.max_snapshots {
            self.snapshots.pop_front();
            self.snapshots_dropped += 1;
        }
    }

    /// The oldest waiting connections, at most `max_flows` and `max_bytes` of JSON.
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

    /// A batch that could not be posted goes back to the front, except connections a newer
    /// reading has replaced meanwhile.
    pub fn put_back(&mut self, batch: Vec<Connection>) {
        for flow in batch.into_iter().rev() {
            if self.pending.contains_key(&flow.id) {
                continue;
            }
            self.order.push_front(flow.id.clone());
            self.pending.insert(flow.id.clone(), flow);
        }
        self.bound_pending();
    }

    /// Closed windows waiting.
    pub fn waiting_snapshots(&self) -> usize {
        self.snapshots.len()
    }

    /// The closed windows waiting, oldest first.
    pub fn snapshots(&self) -> Vec<MetricsSnapshot> {
        self.snapshots.iter().cloned().collect()
    }

    /// The `count` oldest snapshots were posted.
    pub fn snapshots_posted(&mut self, count: usize) {
        self.snapshots.drain(..count.min(self.snapshots.len()));
    }
}

impl Live {
    fn new(reading: &Connection, instance: Option<u64>, at: OffsetDateTime) -> Self {
        let mut conn = reading.clone();
        Counters::default().write_to(&mut conn);
        Live {
            conn,
            gateway_id: reading.id.clone(),
            instance,
            carried: Counters::default(),
            read_at: at,
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: OffsetDateTime = time::macros::datetime!(2026-11-21 12:00:00 UTC);

    fn secs(n: i64) -> OffsetDateTime {
        T0 + time::Duration::seconds(n)
    }

    fn limits() -> Limits {
        Limits {
            max_flows: 100,
            max_snapshots: 100,
            window: Duration::from_secs(60),
        }
    }

    /// A reading of the flow from client port `port`, under gateway id `gid`.
    fn flow(gid: &str, port: u16, bytes_in: u64, status: FlowStatus) -> Connection {
        Connection {
            id: gid.into(),
            source_ip: "10.66.0.2".parse().unwrap(),
            dest_ip: "192.0.2.1".parse().unwrap(),
            source_port: port,
            dest_port: 443,
            protocol: Protocol::Tcp,
            status,
            start_time: T0,
            last_activity: T0,
            duration: None,
            bytes_in,
            bytes_out: bytes_in / 10,
            packets_in: bytes_in / 1000,
            packets_out: 1,
        }
    }

    pub(in crate::telemetry) fn active(gid: &str, port: u16, bytes_in: u64) -> Connection {
        flow(gid, port, bytes_in, FlowStatus::Active)
    }

    fn ids(batch: &[Connection]) -> Vec<&str> {
        batch.iter().map(|c| c.id.as_str()).collect()
    }

    /// Everything posted so far, by backend id: the latest state wins, as on the backend.
    fn post_all(book: &mut FlowBook, backend: &mut HashMap<String, Connection>) {
        for c in book.take_batch(usize::MAX, usize::MAX) {
            backend.insert(c.id.clone(), c);
        }
    }

    /// Saved and read back, as across an agent restart.
    fn restart(book: &FlowBook) -> FlowBook {
        let text = serde_json::to_vec(book).unwrap();
        serde_json::from_slice::<FlowBook>(&text)
            .unwrap()
            .restored(book.limits)
    }

    #[test]
    fn windows_are_on_boundaries_and_a_boundary_reading_ends_its_window() {
        let len = Duration::from_secs(60);
        assert_eq!(window_of(secs(0), len), secs(-60));
        assert_eq!(window_of(secs(1), len), secs(0));
        assert_eq!(window_of(secs(60), len), secs(0));
        assert_eq!(window_of(secs(61), len), secs(60));
        let five = Duration::from_secs(5);
        assert_eq!(next_read(secs(1), five, len), secs(5));
        assert_eq!(next_read(secs(5), five, len), secs(10));
        // 7 s reads still take one at the minute.
        assert_eq!(next_read(secs(59), Duration::from_secs(7), len), secs(60));
    }

    #[test]
    fn a_window_totals_each_flows_growth_and_counts_every_flow_seen() {
        let mut book = FlowBook::new(limits());
        book.read(
            vec![active("a", 1, 100), active("b", 2, 200)],
            Some(1),
            secs(5),
        );
        book.read(
            vec![active("a", 1, 700), flow("b", 2, 250, FlowStatus::Inactive)],
            Some(1),
            secs(60),
        );
        let s = book.snapshots().remove(0);
        assert_eq!(s.timestamp, T0, "dated at its start");
        assert_eq!(s.bandwidth_in, 700 + 250, "bytes, not bytes per second");
        assert_eq!(s.bandwidth_out, 70 + 25);
        assert_eq!(
            (s.connections, s.inactive),
            (2, 1),
            "the ended b counts too"
        );
        book.read(vec![active("a", 1, 760)], Some(1), secs(65));
        book.read(vec![], Some(1), secs(120));
        let s = book.snapshots().remove(1);
        assert_eq!(s.timestamp, secs(60), "windows follow each other");
        assert_eq!((s.connections, s.inactive, s.bandwidth_in), (1, 0, 60));
        assert_eq!(book.snapshots().len(), 2, "60 s each, not 65");
    }

    #[test]
    fn the_latest_reading_of_a_flow_wins_and_order_is_first_seen() {
        let mut book = FlowBook::new(limits());
        book.read(vec![active("a", 1, 10), active("b", 2, 5)], None, secs(1));
        book.read(vec![active("a", 1, 30)], None, secs(2));
        let batch = book.take_batch(10, usize::MAX);
        assert_eq!(ids(&batch), ["a", "b"]);
        assert_eq!(batch[0].bytes_in, 30);
        assert_eq!(book.pending(), 0);
    }

    #[test]
    fn a_failed_batch_goes_back_unless_superseded() {
        let mut book = FlowBook::new(limits());
        book.read(vec![active("a", 1, 10), active("b", 2, 5)], None, secs(1));
        let batch = book.take_batch(10, usize::MAX);
        book.read(vec![active("b", 2, 50), active("c", 3, 1)], None, secs(2));
        book.put_back(batch);
        let again = book.take_batch(10, usize::MAX);
        assert_eq!(ids(&again), ["a", "b", "c"]);
        assert_eq!(again[1].bytes_in, 50, "the newer reading of b stays");
    }

    #[test]
    fn the_bounds_drop_the_oldest_and_count_them() {
        let mut book = FlowBook::new(Limits {
            max_flows: 3,
            max_snapshots: 2,
            ..limits()
        });
        book.read(
            (0..5)
                .map(|i| flow(&format!("f{i}"), i, 1, FlowStatus::Inactive))
                .collect(),
            None,
            secs(1),
        );
        assert_eq!(book.dropped(), 2);
        assert_eq!(ids(&book.take_batch(2, usize::MAX)), ["f2", "f3"]);
        for minute in 1..=4 {
            book.read(vec![], None, secs(60 * minute));
        }
        assert_eq!(book.snapshots().len(), 2);
        assert_eq!(book.snapshots_dropped(), 2);
        assert_eq!(book.snapshots()[0].timestamp, secs(120), "the newest kept");
    }

    #[test]
    fn past_max_flows_the_longest_unread_flow_is_ended() {
        let mut book = FlowBook::new(Limits {
            max_flows: 2,
            ..limits()
        });
        book.read(vec![active("a", 1, 10)], None, secs(1));
        book.read(vec![active("b", 2, 10)], None, secs(2));
        book.read(vec![active("a", 1, 20), active("c", 3, 10)], None, secs(3));
        assert_eq!(book.active(), 2);
        assert_eq!(book.ended_here(), 1);
        let mut backend = HashMap::new();
        post_all(&mut book, &mut backend);
        assert_eq!(backend["b"].status, FlowStatus::Inactive);
        assert_eq!(backend["c"].status, FlowStatus::Active);
        assert_eq!(book.dropped(), 1, "a's reading made room (the same bound)");
    }

    #[test]
    fn an_agent_restart_counts_no_flows_history_again_and_loses_nothing() {
        let mut book = FlowBook::new(limits());
        book.read(vec![active("a", 1, 3_200_000)], Some(1), secs(10));
        book.read(vec![active("a", 1, 5_000_000)], Some(1), secs(60));
        // Stopped mid-window with the flow posted, the closed window not yet.
        let mut backend = HashMap::new();
        post_all(&mut book, &mut backend);
        book.read(vec![active("a", 1, 6_000_000)], Some(1), secs(80));
        let mut book = restart(&book);
        book.read(vec![active("a", 1, 7_900_000)], Some(1), secs(100));
        book.read(vec![], Some(1), secs(120));
        let windows = book.snapshots();
        assert_eq!(windows.len(), 2, "the waiting window survived");
        assert_eq!(windows[0].bandwidth_in, 5_000_000);
        assert_eq!(windows[1].bandwidth_in, 2_900_000, "only the growth");
        post_all(&mut book, &mut backend);
        assert_eq!(backend["a"].bytes_in, 7_900_000);
    }

    #[test]
    fn a_flow_going_on_across_a_gateway_restart_keeps_its_id_and_total() {
        let mut book = FlowBook::new(limits());
        let mut backend = HashMap::new();
        book.read(vec![active("g1", 1, 1000)], Some(1), secs(5));
        post_all(&mut book, &mut backend);
        // The gateway restarts: the same 5-tuple, a new id, counting from zero.
        book.read(vec![active("g2", 1, 300)], Some(2), secs(10));
        book.read(vec![active("g2", 1, 500)], Some(2), secs(15));
        post_all(&mut book, &mut backend);
        assert_eq!(backend.len(), 1, "{backend:?}");
        assert_eq!(backend["g1"].bytes_in, 1500);
        assert_eq!(backend["g1"].start_time, T0);
        book.read(
            vec![flow("g2", 1, 600, FlowStatus::Inactive)],
            Some(2),
            secs(20),
        );
        post_all(&mut book, &mut backend);
        assert_eq!(backend["g1"].bytes_in, 1600);
        assert_eq!(backend["g1"].status, FlowStatus::Inactive);
        book.read(vec![], Some(2), secs(60));
        assert_eq!(book.snapshots()[0].bandwidth_in, 1600);
        assert_eq!(book.active(), 0);
    }

    #[test]
    fn a_flow_whose_end_never_comes_is_ended_after_the_idle_time() {
        let mut book = FlowBook::new(limits());
        let mut backend = HashMap::new();
        book.read(
            vec![active("a", 1, 10), active("b", 2, 10)],
            Some(1),
            secs(1),
        );
        book.read(vec![active("b", 2, 20)], Some(1), secs(30));
        book.end_silent(secs(121), Duration::from_secs(120));
        assert_eq!(book.active(), 1, "b was read at 30 s");
        post_all(&mut book, &mut backend);
        assert_eq!(backend["a"].status, FlowStatus::Inactive);
        assert_eq!(backend["a"].bytes_in, 10, "its totals as last read");
        assert_eq!(backend["b"].status, FlowStatus::Active);
        assert_eq!(book.ended_here(), 1);
        // The same 5-tuple again in the same gateway run: the old flow ended, a new one began.
        book.read(vec![active("b2", 2, 5)], Some(1), secs(150));
        post_all(&mut book, &mut backend);
        assert_eq!(backend["b"].status, FlowStatus::Inactive);
        assert_eq!(backend["b2"].bytes_in, 5);
    }

    #[test]
    fn a_counter_that_starts_over_counts_its_new_total() {
        assert_eq!(growth(1000, 1300), 300);
        assert_eq!(growth(1000, 300), 300);
        let mut book = FlowBook::new(limits());
        book.read(vec![active("a", 1, 1000)], None, secs(1));
        book.read(vec![active("a", 1, 300)], None, secs(2));
        book.read(vec![active("a", 1, 400)], None, secs(3));
        book.read(vec![], None, secs(60));
        assert_eq!(book.snapshots()[0].bandwidth_in, 1000 + 300 + 100);
        assert_eq!(book.take_batch(1, usize::MAX)[0].bytes_in, 1400);
    }

    /// One step of a flow's life in the property test.
    #[derive(Debug, Clone)]
    enum Step {
        /// The flow carries this many bytes in; the agent reads them.
        Carry(u64),
        /// The agent restarts (its book saved and read back).
        AgentRestart,
        /// The gateway restarts: the flow goes on under a new id, counted from zero.
        GatewayRestart,
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        proptest::collection::vec(
            prop_oneof![
                6 => (0u64..1 << 30).prop_map(Step::Carry),
                1 => Just(Step::AgentRestart),
                1 => Just(Step::GatewayRestart),
            ],
            1..40,
        )
    }

    proptest! {
        /// Flows carrying bytes through agent and gateway restarts, read every 5 s: the sum
        /// of the windows and each flow's posted total are exactly the bytes carried, each
        /// flow keeps one id, and none stays active after it ended.
        #[test]
        fn totals_are_exact_across_restarts(flows in proptest::collection::vec(steps(), 1..5)) {
            let mut book = FlowBook::new(limits());
            let mut backend = HashMap::new();
            let mut instance = 1u64;
            let mut raw: Vec<u64> = vec![0; flows.len()];
            let mut carried = 0u64;
            let longest = flows.iter().map(Vec::len).max().unwrap_or(0);
            let mut t = 0;
            for step in 0..longest {
                t += 5;
                // Restarts first: a reply comes from one run of the gateway.
                for life in &flows {
                    match life.get(step) {
                        Some(Step::AgentRestart) => book = restart(&book),
                        Some(Step::GatewayRestart) => {
                            instance += 1;
                            raw.iter_mut().for_each(|r| *r = 0);
                        }
                        _ => {}
                    }
                }
                let mut readings = Vec::new();
                for (i, life) in flows.iter().enumerate() {
                    if let Some(Step::Carry(n)) = life.get(step) {
                        raw[i] += n;
                        carried += n;
                        let gid = format!("f{i}-{instance}");
                        readings.push(active(&gid, i as u16, raw[i]));
                    }
                }
                book.read(readings, Some(instance), secs(t));
                if step % 3 == 0 {
                    post_all(&mut book, &mut backend);
                }
            }
            // Every flow ends: the gateway says so (or never does, after its restart).
            let ends: Vec<Connection> = (0..flows.len())
                .map(|i| flow(&format!("f{i}-{instance}"), i as u16, raw[i], FlowStatus::Inactive))
                .collect();
            book.read(ends, Some(instance), secs(t + 5));
            book.end_silent(secs(t + 500), Duration::from_secs(130));
            book.read(vec![], Some(instance), secs(t + 600));
            post_all(&mut book, &mut backend);
            let windows: u64 = book.snapshots().iter().map(|s| s.bandwidth_in).sum();
            prop_assert_eq!(windows, carried);
            prop_assert!(backend.len() <= flows.len(), "one record per flow: {:?}", backend.keys());
            let posted: u64 = backend.values().map(|c| c.bytes_in).sum();
            prop_assert_eq!(posted, carried);
            prop_assert!(backend.values().all(|c| c.status == FlowStatus::Inactive));
            prop_assert_eq!(book.active(), 0);
            let mut starts: Vec<_> = book.snapshots().iter().map(|s| s.timestamp).collect();
            starts.dedup();
            prop_assert_eq!(starts.len(), book.snapshots().len(), "no window twice");
        }

        /// Whatever the readings (counters that start over included), a window never counts
        /// more than the readings' totals add up to.
        #[test]
        fn readings_never_give_a_negative_or_huge_total(
            readings in proptest::collection::vec((0u16..4, 0u64..1 << 40, proptest::bool::ANY), 0..40),
        ) {
            let mut book = FlowBook::new(limits());
            for (i, total, ends) in &readings {
                let status = if *ends { FlowStatus::Inactive } else { FlowStatus::Active };
                book.read(vec![flow(&format!("f{i}"), *i, *total, status)], None, secs(1));
            }
            book.read(vec![], None, secs(60));
            let bound: u64 = readings.iter().map(|r| r.1).sum();
            prop_assert!(book.snapshots().iter().map(|s| s.bandwidth_in).sum::<u64>() <= bound);
        }

        /// Reads at any times: every window is `window` long, on a multiple of it, dated at
        /// its start, and they follow each other.
        #[test]
        fn windows_are_whole_and_follow_each_other(gaps in proptest::collection::vec(1i64..50_000, 1..200)) {
            let mut book = FlowBook::new(limits());
            let mut at = T0;
            for gap in gaps {
                at += time::Duration::milliseconds(gap);
                book.read(vec![], None, at);
            }
            let starts: Vec<OffsetDateTime> = book.snapshots().iter().map(|s| s.timestamp).collect();
            for pair in starts.windows(2) {
                prop_assert_eq!(pair[1] - pair[0], time::Duration::minutes(1));
            }
            for start in starts {
                prop_assert_eq!(start.unix_timestamp() % 60, 0);
                prop_assert_eq!(start.nanosecond(), 0);
            }
        }
    }
}
