//! Checking the billing meter (the kernel's counters) against the audit meter (packet
//! capture), per client and in total. Pure: the daemon feeds it both meters' deltas.
//!
//! The two meters are read at different moments (the kernel's counters when the daemon
//! ticks, the capture when its thread reports), so while a client is sending their totals
//! differ by whatever is in flight between the two readings. They are compared only when a
//! client is quiet in both (the last reading of each saw nothing new): then both totals are
//! complete and must agree. The gateway-wide totals are compared when every client is quiet.

use std::collections::HashMap;

use crate::capture::{KernelStats, Tally};
use crate::core::Usage;
use crate::net::Client;

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
}

/// A drift worth a warning, found by a comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriftFound {
    /// `None`: the gateway-wide totals.
    pub client: Option<Client>,
    pub pair: Pair,
    pub ratio: f64,
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
}

impl Audit {
    /// A kernel reading: each client's bytes since the previous one (all online clients,
    /// zero deltas included: silence is what makes a client comparable).
    pub fn kernel(&mut self, deltas: &[(Client, Usage)], online: &[Client]) -> Vec<DriftFound> {
        for client in online {
            let audit = self.clients.entry(*client).or_default();
            audit.kernel_quiet = true;
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

    fn compare(&mut self) -> Vec<DriftFound> {
        let mut found = Vec::new();
        let mut all_quiet = true;
        for (client, audit) in &mut self.clients {
            if !(audit.kernel_quiet && audit.capture_quiet) {
                all_quiet = false;
                continue;
            }
            let ratio = audit.pair.drift_ratio();
            let changed = audit.drift != Some(ratio);
            audit.drift = Some(ratio);
            if changed && ratio.abs() > DRIFT_WARN_RATIO {
                found.push(DriftFound {
                    client: Some(*client),
                    pair: audit.pair,
                    ratio,
                });
            }
        }
        if all_quiet {
            let totals = self.totals();
            let ratio = totals.drift_ratio();
            let changed = self.total_drift != Some(ratio);
            self.total_drift = Some(ratio);
            if changed && ratio.abs() > DRIFT_WARN_RATIO {
                found.push(DriftFound {
                    client: None,
                    pair: totals,
                    ratio,
                });
            }
        }
        found
    }
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
