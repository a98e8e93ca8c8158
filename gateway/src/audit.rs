//! Checking the billing meter (the kernel's counters) against the audit meter (packet
//! capture), per client and in total. Pure: the daemon feeds it both meters' deltas.
//!
//! The two meters are read at different moments (the kernel's counters when the daemon
//! ticks, the capture when its thread reports), so while a client is sending their totals
//! differ by whatever is in flight between the two readings. They are compared only when a
//! client is quiet in both (the last reading of each saw nothing new): then both totals are
//! complete and must agree. The gateway-wide totals are compared when every client is quiet.
//!
//! One drift is expected: the LAN interface's egress queue sits between the kernel meter
//! (the forward hook) and the capture's tap, so when the LAN is the bottleneck (a busy
//! Wi-Fi) the queue drops packets the kernel counted and the capture never sees. Download
//! drift up to what the queue's drop counter accounts for is explained, not a warning; the
//! rest still is. Reading the queue is the one piece of I/O here ([`Audit::kernel`]); the
//! arithmetic is in [`Audit::kernel_reading`] and [`explained_bytes`].

use std::collections::HashMap;

use crate::capture::{KernelStats, Tally};
use crate::core::Usage;
use crate::net::{Client, LARGEST_PACKET, QueueDrops};

/// Drift above this share of the kernel's count is logged.
pub const DRIFT_WARN_RATIO: f64 = 0.001;

/// Both meters' totals for one client (or all).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pair {
    pub kernel: Usage,
    pub capture: Usage,
}

impl Pair {
    /// `(capture - kernel) / kernel`, over both directions; 0 when the kernel counted nothing
    /// and neither did the capture.
    pub fn drift_ratio(&self) -> f64 {
        let kernel = self.kernel.total() as f64;
        let capture = self.capture.total() as f64;
        if kernel == 0.0 {
            return if capture == 0.0 { 0.0 } else { 1.0 };
        }
        (capture - kernel) / kernel
    }

    /// The drift left once `explained` download bytes the capture missed are accounted for.
    pub fn unexplained_ratio(&self, explained: u64) -> f64 {
        let mut accounted = *self;
        accounted.capture.down += explained;
        accounted.drift_ratio()
    }

    fn add(&mut self, other: &Pair) {
        self.kernel.up += other.kernel.up;
        self.kernel.down += other.kernel.down;
        self.capture.up += other.capture.up;
        self.capture.down += other.capture.down;
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct ClientAudit {
    pair: Pair,
    /// The last kernel reading / capture report had nothing new for this client.
    kernel_quiet: bool,
    capture_quiet: bool,
    /// The drift at the last comparison.
    drift: Option<f64>,
    /// Packets the LAN queue dropped while this client was online, and how many bytes of
    /// its drift they explained at the last comparison. The queue is shared and its drops
    /// are not per client, so each online client may claim them all; the gateway-wide
    /// comparison, where they count once, bounds what all clients claim together.
    queue_drops: u64,
    explained: u64,
}

/// Of a pair's drift, the bytes the LAN queue's drops explain: download bytes the kernel
/// counted and the capture did not see, up to [`LARGEST_PACKET`] per dropped packet. The
/// queue counts drops per socket buffer, and one buffer is a GSO super-packet as often as a
/// wire-sized one (a veth passes them whole, and GRO builds them on a NIC): a netns test
/// measured 2.7 KB of drift per drop. An MTU per drop would leave most of such drift
/// "unexplained". The bound is in IP bytes, as both meters count; the queue's own byte
/// figures (sent, backlog) are frames, 14 bytes of Ethernet header more per packet, and are
/// not used. Upload drift and a capture that saw more than the kernel are never explained by
/// the LAN's egress queue.
pub fn explained_bytes(pair: &Pair, dropped_packets: u64) -> u64 {
    let missed = pair.kernel.down.saturating_sub(pair.capture.down);
    missed.min(dropped_packets.saturating_mul(LARGEST_PACKET))
}

/// The LAN interface whose egress queue the audit reads (the daemon's only; tests feed
/// [`Audit::kernel_reading`] instead).
#[derive(Debug)]
struct LanQueue {
    queue: QueueDrops,
    /// The last read failed (logged once until a read works again).
    failing: bool,
}

impl LanQueue {
    fn read(&mut self) -> Option<u64> {
        match self.queue.read() {
            Ok(counters) => {
                self.failing = false;
                Some(counters)
            }
            Err(err) => {
                if !self.failing {
                    tracing::warn!(
                        error = %err,
                        "cannot read the LAN queue's drops: drift it causes is warned about as unexplained"
                    );
                }
                self.failing = true;
                None
            }
        }
    }
}

/// A drift worth a warning, found by a comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriftFound {
    /// `None`: the gateway-wide totals.
    pub client: Option<Client>,
    pub pair: Pair,
    /// The drift the LAN queue's drops do not explain, as a share of the kernel's count.
    pub ratio: f64,
    /// Download bytes the kernel counted and the capture missed that the drops explain.
    pub explained_bytes: u64,
}

impl DriftFound {
    fn is_warning(&self) -> bool {
        self.ratio.abs() > DRIFT_WARN_RATIO
    }
}

#[derive(Debug, Default)]
pub struct Audit {
    clients: HashMap<Client, ClientAudit>,
    /// Clients no longer online: their totals, still part of the gateway-wide ones.
    retired: Pair,
    /// The gateway-wide drift at the last moment every client was quiet.
    total_drift: Option<f64>,
    /// The kernel's counts of what reached the capture socket, and what it dropped.
    pub capture_packets: u64,
    pub capture_drops: u64,
    pub untracked_flow_packets: u64,
    /// Packets the LAN queue dropped since the audit started.
    pub lan_queue_drops: u64,
    /// Of the gateway-wide drift, the bytes those drops explained when all were last quiet.
    pub explained: u64,
    lan_queue: Option<LanQueue>,
    /// The queue's drop counter at the last reading.
    queue_last: Option<u64>,
}

impl Audit {
    /// An audit that reads the egress queue of `lan_interface` with each kernel reading.
    pub fn watching_lan_queue(lan_interface: &str) -> Audit {
        Audit {
            lan_queue: Some(LanQueue {
                queue: QueueDrops::new(lan_interface),
                failing: false,
            }),
            ..Audit::default()
        }
    }

    /// A kernel reading: each client's bytes since the previous one (all online clients,
    /// zero deltas included: silence is what makes a client comparable). The LAN queue's
    /// drops are read now too, so the drops of the bytes just counted are in.
    pub fn kernel(&mut self, deltas: &[(Client, Usage)], online: &[Client]) -> Vec<DriftFound> {
        let queue = self.lan_queue.as_mut().and_then(LanQueue::read);
        let found = self.kernel_reading(deltas, online, queue);
        log_explained(found)
    }

    /// [`Audit::kernel`] with the queue's drop counter as read (`None`: not read). Returns
    /// the explained drifts too.
    pub fn kernel_reading(
        &mut self,
        deltas: &[(Client, Usage)],
        online: &[Client],
        queue_drops: Option<u64>,
    ) -> Vec<DriftFound> {
        for client in online {
            let audit = self.clients.entry(*client).or_default();
            audit.kernel_quiet = true;
        }
        if let Some(counter) = queue_drops {
            // A counter below the last reading belongs to a new queue (the qdisc was
            // replaced): it counts from zero.
            let dropped = match self.queue_last {
                Some(last) if counter >= last => counter - last,
                Some(_) => counter,
                // The first reading is the baseline: drops before the audit are not ours.
                None => 0,
            };
            self.queue_last = Some(counter);
            self.lan_queue_drops += dropped;
            for client in online {
                if let Some(audit) = self.clients.get_mut(client) {
                    audit.queue_drops += dropped;
                }
            }
        }
        for (client, delta) in deltas {
            let audit = self.clients.entry(*client).or_default();
            audit.pair.kernel.up += delta.up;
            audit.pair.kernel.down += delta.down;
            audit.kernel_quiet = delta.total() == 0;
        }
        self.compare()
    }

    /// A capture report.
    pub fn capture(
        &mut self,
        tallies: &[(Client, Tally)],
        kernel: KernelStats,
        untracked: u64,
    ) -> Vec<DriftFound> {
        let found = self.capture_report(tallies, kernel, untracked);
        log_explained(found)
    }

    /// [`Audit::capture`], returning the explained drifts too.
    pub fn capture_report(
        &mut self,
        tallies: &[(Client, Tally)],
        kernel: KernelStats,
        untracked: u64,
    ) -> Vec<DriftFound> {
        self.capture_packets += kernel.packets;
        self.capture_drops += kernel.drops;
        self.untracked_flow_packets += untracked;
        for audit in self.clients.values_mut() {
            audit.capture_quiet = true;
        }
        for (client, tally) in tallies {
            let bytes = Usage {
                up: tally.up_bytes,
                down: tally.down_bytes,
            };
            match self.clients.get_mut(client) {
                Some(audit) => {
                    audit.pair.capture.up += bytes.up;
                    audit.pair.capture.down += bytes.down;
                    audit.capture_quiet = bytes.total() == 0;
                }
                // Counted just before the client went offline: its kernel bytes are retired.
                None => {
                    self.retired.capture.up += bytes.up;
                    self.retired.capture.down += bytes.down;
                }
            }
        }
        self.compare()
    }

    /// The clients online now (after every change). A client that went offline is retired
    /// (its last kernel bytes were read before it was cut off): its totals stay in the
    /// gateway-wide ones, and capture tallies that come for it later join them there.
    pub fn set_online(&mut self, online: &[Client]) {
        let gone: Vec<Client> = self
            .clients
            .keys()
            .filter(|client| !online.contains(client))
            .copied()
            .collect();
        for client in gone {
            if let Some(audit) = self.clients.remove(&client) {
                self.retired.add(&audit.pair);
            }
        }
        for client in online {
            self.clients.entry(*client).or_default();
        }
    }

    /// Every online client's meters since it came online.
    pub fn clients(&self) -> impl Iterator<Item = (&Client, &Pair, Option<f64>)> {
        self.clients
            .iter()
            .map(|(client, audit)| (client, &audit.pair, audit.drift))
    }

    /// Both meters over every client since the daemon started.
    pub fn totals(&self) -> Pair {
        let mut totals = self.retired;
        for audit in self.clients.values() {
            totals.add(&audit.pair);
        }
        totals
    }

    /// The gateway-wide drift at the last moment all clients were quiet.
    pub fn total_drift(&self) -> Option<f64> {
        self.total_drift
    }

    /// Compares the quiet clients (and all, if all are quiet). Returns each drift that
    /// changed and is worth a word: a warning, or a drift the queue explains.
    fn compare(&mut self) -> Vec<DriftFound> {
        let mut found = Vec::new();
        let mut all_quiet = true;
        for (client, audit) in &mut self.clients {
            if !(audit.kernel_quiet && audit.capture_quiet) {
                all_quiet = false;
                continue;
            }
            let explained = explained_bytes(&audit.pair, audit.queue_drops);
            let changed = compared(
                &mut audit.drift,
                &mut audit.explained,
                &audit.pair,
                explained,
            );
            if changed {
                found.push(DriftFound {
                    client: Some(*client),
                    pair: audit.pair,
                    ratio: audit.pair.unexplained_ratio(explained),
                    explained_bytes: explained,
                });
            }
        }
        if all_quiet {
            let totals = self.totals();
            let explained = explained_bytes(&totals, self.lan_queue_drops);
            if compared(
                &mut self.total_drift,
                &mut self.explained,
                &totals,
                explained,
            ) {
                found.push(DriftFound {
                    client: None,
                    pair: totals,
                    ratio: totals.unexplained_ratio(explained),
                    explained_bytes: explained,
                });
            }
        }
        found.retain(|f| f.is_warning() || f.explained_bytes > 0);
        found
    }
}

/// Records a comparison's drift and explained bytes; whether either changed.
fn compared(
    drift: &mut Option<f64>,
    last_explained: &mut u64,
    pair: &Pair,
    explained: u64,
) -> bool {
    let ratio = pair.drift_ratio();
    let changed = *drift != Some(ratio) || *last_explained != explained;
    *drift = Some(ratio);
    *last_explained = explained;
    changed
}

/// Logs the drifts the LAN queue explains and returns the warnings.
fn log_explained(found: Vec<DriftFound>) -> Vec<DriftFound> {
    found
        .into_iter()
        .filter(|drift| {
            if !drift.is_warning() {
                let who = drift
                    .client
                    .map_or_else(|| "all clients".to_owned(), |c| c.to_string());
                tracing::info!(
                    client = %who,
                    kernel_bytes = drift.pair.kernel.total(),
                    capture_bytes = drift.pair.capture.total(),
                    explained_bytes = drift.explained_bytes,
                    "the capture missed bytes the LAN queue dropped (a LAN slower than the traffic); billing follows the kernel counters"
                );
            }
            drift.is_warning()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::Mac;

    fn client(n: u8) -> Client {
        Client {
            mac: Mac([2, 0, 0, 0, 0, n]),
            ip: std::net::IpAddr::from([10, 0, 0, n]),
        }
    }

    fn usage(up: u64, down: u64) -> Usage {
        Usage { up, down }
    }

    fn tally(up: u64, down: u64) -> Tally {
        Tally {
            up_bytes: up,
            up_packets: 1,
            down_bytes: down,
            down_packets: 1,
        }
    }

    #[test]
    fn meters_in_flight_are_not_compared_until_both_are_quiet() {
        let mut audit = Audit::default();
        let a = client(1);
        // The kernel read 1000 down; the capture saw 600 so far (the rest in flight).
        assert!(audit.kernel(&[(a, usage(0, 1_000))], &[a]).is_empty());
        assert!(
            audit
                .capture(&[(a, tally(0, 600))], KernelStats::default(), 0)
                .is_empty()
        );
        // The capture catches up, then both go quiet: equal, no drift.
        assert!(
            audit
                .capture(&[(a, tally(0, 400))], KernelStats::default(), 0)
                .is_empty()
        );
        assert!(audit.kernel(&[(a, usage(0, 0))], &[a]).is_empty());
        assert!(audit.capture(&[], KernelStats::default(), 0).is_empty());
        assert_eq!(audit.total_drift(), Some(0.0));
        let (_, pair, drift) = audit.clients().next().unwrap();
        assert_eq!(pair.kernel, pair.capture);
        assert_eq!(drift, Some(0.0));
    }

    #[test]
    fn a_new_clients_first_capture_waits_for_its_kernel_reading() {
        let mut audit = Audit::default();
        let a = client(1);
        audit.set_online(&[a]);
        // The capture saw the first bytes before the kernel was read.
        let found = audit.capture(&[(a, tally(0, 700))], KernelStats::default(), 0);
        assert!(found.is_empty(), "{found:?}");
        audit.kernel(&[(a, usage(0, 700))], &[a]);
        audit.capture(&[], KernelStats::default(), 0);
        assert!(audit.kernel(&[], &[a]).is_empty());
        assert_eq!(audit.total_drift(), Some(0.0));
    }

    #[test]
    fn a_capture_that_missed_bytes_is_reported_once() {
        let mut audit = Audit::default();
        let a = client(1);
        audit.kernel(&[(a, usage(0, 100_000))], &[a]);
        let stats = KernelStats {
            packets: 90,
            drops: 10,
        };
        audit.capture(&[(a, tally(0, 99_000))], stats, 0);
        audit.kernel(&[], &[a]);
        let found = audit.capture(&[], KernelStats::default(), 0);
        assert_eq!(found.len(), 2, "the client and the total: {found:?}");
        assert!((found[0].ratio + 0.01).abs() < 1e-9);
        assert_eq!(audit.capture_drops, 10);
        // Still quiet, same drift: not reported again.
        assert!(audit.kernel(&[], &[a]).is_empty());
    }

    /// One client downloads `kernel_down` bytes of which the capture sees `capture_down`,
    /// while the LAN queue's counter goes from 1_000 to 1_000 + `drops`; then both go quiet.
    /// The findings of the comparisons.
    fn download(kernel_down: u64, capture_down: u64, drops: u64) -> (Audit, Vec<DriftFound>) {
        let mut audit = Audit::default();
        let a = client(1);
        audit.set_online(&[a]);
        let mut found = audit.kernel_reading(&[], &[a], Some(1_000));
        found.extend(audit.kernel_reading(
            &[(a, usage(0, kernel_down))],
            &[a],
            Some(1_000 + drops),
        ));
        found.extend(audit.capture_report(
            &[(a, tally(0, capture_down))],
            KernelStats::default(),
            0,
        ));
        found.extend(audit.kernel_reading(&[], &[a], Some(1_000 + drops)));
        found.extend(audit.capture_report(&[], KernelStats::default(), 0));
        (audit, found)
    }

    #[test]
    fn drift_the_lan_queue_dropped_is_explained_not_warned() {
        // 3 % missed by the capture, one packet dropped by the queue (the drops before the
        // audit's first reading are not counted).
        let (audit, found) = download(1_000_000, 970_000, 1);
        assert_eq!(found.len(), 2, "the client and the total: {found:?}");
        assert!(
            found
                .iter()
                .all(|f| f.explained_bytes == 30_000 && f.ratio == 0.0)
        );
        assert!(log_explained(found).is_empty(), "no warning");
        assert_eq!((audit.lan_queue_drops, audit.explained), (1, 30_000));
        assert_eq!(
            audit.total_drift(),
            Some(-0.03),
            "the raw drift is still exported"
        );
    }

    #[test]
    fn drift_beyond_what_the_queue_dropped_still_warns() {
        // One packet dropped explains at most 64 KiB of the 100_000 bytes missed.
        let (_, found) = download(1_000_000, 900_000, 1);
        let warnings = log_explained(found);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings.iter().all(|f| f.explained_bytes == 65_536));
        assert!((warnings[0].ratio + 0.034_464).abs() < 1e-9, "{warnings:?}");
        // No drops: all unexplained.
        assert_eq!(log_explained(download(1_000_000, 970_000, 0).1).len(), 2);
    }

    #[test]
    fn upload_drift_and_a_capture_that_saw_more_are_never_explained() {
        let pair = Pair {
            kernel: usage(50_000, 10_000),
            capture: usage(40_000, 10_000),
        };
        assert_eq!(explained_bytes(&pair, 100), 0);
        let more = Pair {
            kernel: usage(0, 10_000),
            capture: usage(0, 12_000),
        };
        assert_eq!(explained_bytes(&more, 100), 0);
        assert_eq!(log_explained(download(100_000, 103_000, 100).1).len(), 2);
    }

    #[test]
    fn a_replaced_queue_counts_from_zero() {
        let mut audit = Audit::default();
        let a = client(1);
        audit.kernel_reading(&[], &[a], Some(500));
        audit.kernel_reading(&[], &[a], Some(510));
        audit.kernel_reading(&[], &[a], Some(3));
        assert_eq!(audit.lan_queue_drops, 13);
    }

    proptest::proptest! {
        /// The explained part never exceeds what the capture missed downstream nor the
        /// largest packet per drop, and takes all of the missed bytes the drops can cover.
        #[test]
        fn explained_bytes_are_bounded_by_the_drift_and_the_drops(
            kernel in (0..1u64 << 40, 0..1u64 << 40),
            capture in (0..1u64 << 40, 0..1u64 << 40),
            drops in 0..1u64 << 20,
        ) {
            let pair = Pair { kernel: usage(kernel.0, kernel.1), capture: usage(capture.0, capture.1) };
            let explained = explained_bytes(&pair, drops);
            let missed = kernel.1.saturating_sub(capture.1);
            proptest::prop_assert_eq!(explained, missed.min(drops * LARGEST_PACKET));
            proptest::prop_assert!(capture.1 + explained <= kernel.1.max(capture.1));
        }

        /// A download whose only loss is packets the queue dropped (each at most the
        /// largest packet) is never warned about; add a loss the drops do not cover, above
        /// the threshold, and it always is.
        #[test]
        fn only_drift_the_drops_do_not_cover_warns(
            kernel_down in 10_000..1u64 << 34,
            sizes in proptest::collection::vec(40..=LARGEST_PACKET, 0..200),
            extra in 0..1u64 << 24,
        ) {
            let dropped: u64 = sizes.iter().sum();
            proptest::prop_assume!(dropped + extra <= kernel_down);
            let drops = sizes.len() as u64;
            let capture_down = kernel_down - dropped - extra;
            let warnings = log_explained(download(kernel_down, capture_down, drops).1);
            // What the drops can cover beyond the bytes they took.
            let slack = (drops * LARGEST_PACKET - dropped).min(extra);
            let unexplained = (extra - slack) as f64 / kernel_down as f64;
            proptest::prop_assert_eq!(!warnings.is_empty(), unexplained > DRIFT_WARN_RATIO, "{:?}", warnings);
        }
    }

    #[test]
    fn retired_clients_stay_in_the_totals_with_their_late_capture() {
        let mut audit = Audit::default();
        let (a, b) = (client(1), client(2));
        audit.set_online(&[a, b]);
        audit.kernel(&[(a, usage(10, 90)), (b, usage(5, 0))], &[a, b]);
        audit.set_online(&[b]);
        // The capture thread's last tally of `a` arrives after it went offline.
        audit.capture(
            &[(a, tally(10, 90)), (b, tally(5, 0))],
            KernelStats::default(),
            0,
        );
        audit.kernel(&[], &[b]);
        audit.capture(&[], KernelStats::default(), 0);
        let totals = audit.totals();
        assert_eq!(totals.kernel, usage(15, 90));
        assert_eq!(totals.capture, usage(15, 90));
        assert_eq!(audit.total_drift(), Some(0.0));
    }
}
