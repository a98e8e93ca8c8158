//! The meters beside billing ([`Meters`]): the capture meter, the second byte meter that the
//! kernel's counters are audited against; the flow tallies kept for the agent; and each
//! online device's live rates over the last counter reading.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use edgeshare_shared::backend::telemetry::Connection;

use super::TICK;
use crate::audit::{Audit, DriftFound};
use crate::capture::{Capture, CaptureSettings, Report};
use crate::config::GatewayConfig;
use crate::core::Usage;
use crate::dashboard::view;
use crate::net::{Client, Millis, local_addresses};
use crate::report::{self, FlowBook, GatewayFigures, Handover};

/// How often the capture meter reports.
const CAPTURE_REPORT_EVERY: Duration = Duration::from_secs(1);
/// Most flow tallies kept for the agent between two of its `flows` requests.
const FLOW_BOOK_LIMIT: usize = 50_000;

/// The capture meter (`None` when off or it could not start) with its comparison against the
/// kernel's counters, the flows waiting for the agent, and the live rates.
pub(super) struct Meters {
    capture: Option<Capture>,
    audit: Option<Audit>,
    flows: FlowBook,
    /// Each online client's bytes at the last counter reading, and how long that reading
    /// covered.
    rates: HashMap<Client, Usage>,
    rate_window: Duration,
    read_at: Option<Millis>,
}

impl Meters {
    pub(super) fn new() -> Self {
        Meters {
            capture: None,
            audit: None,
            flows: FlowBook::new(FLOW_BOOK_LIMIT),
            rates: HashMap::new(),
            rate_window: TICK,
            read_at: None,
        }
    }

    /// The capture meter started (on `lan`, audited with its egress queue's drops).
    pub(super) fn capture_started(&mut self, capture: Capture, lan: &str) {
        self.capture = Some(capture);
        self.audit = Some(Audit::watching_lan_queue(lan));
    }

    /// The flows a previous run kept for the agent (see [`Meters::flows_for_agent`]).
    pub(super) fn keep_handover(&mut self, kept: Option<Handover>) {
        self.flows.handover = kept;
    }

    /// A kernel counter reading at `now`: the bytes each client used since the last one,
    /// and the clients it listed.
    pub(super) fn kernel_read(
        &mut self,
        deltas: &[(Client, Usage)],
        listed: &[Client],
        now: Millis,
    ) {
        if let Some(last) = self.read_at {
            self.rate_window = last.until(now).max(Duration::from_millis(1));
        }
        self.read_at = Some(now);
        self.rates = deltas.iter().copied().collect();
        if let Some(audit) = &mut self.audit {
            warn_drift(&audit.kernel(deltas, listed));
        }
    }

    /// The client was cut off: it has no rate.
    pub(super) fn forget(&mut self, client: &Client) {
        self.rates.remove(client);
    }

    /// Tells the capture meter and the audit which clients are let through from `at` on,
    /// when the kernel's table took them.
    pub(super) fn follow(&mut self, online: Vec<Client>, at: SystemTime) {
        if let Some(audit) = &mut self.audit {
            audit.set_online(&online);
        }
        if let Some(capture) = &self.capture {
            capture.set_clients(online, at);
        }
    }

    /// A report of the capture meter: checked against the kernel's counts, flows kept for
    /// the agent.
    pub(super) fn capture_report(&mut self, report: &Report) {
        if report.kernel.drops > 0 {
            tracing::warn!(
                dropped = report.kernel.drops,
                received = report.kernel.packets,
                "the capture meter lost packets (its socket buffer was full): raise capture.buffer_bytes; billing is unaffected (the kernel counters bill)"
            );
        }
        if let Some(audit) = &mut self.audit {
            warn_drift(&audit.capture(
                &report.batch.clients,
                report.kernel,
                report.batch.untracked_packets,
            ));
        }
        self.flows.add(&report.batch.flows);
    }

    /// When the counters were last read (0 before the first reading).
    pub(super) fn read_at(&self) -> Millis {
        self.read_at.unwrap_or_default()
    }

    /// A device's rates up and down, in bytes per second over the last counter interval.
    pub(super) fn rate(&self, client: &Client) -> (f64, f64) {
        let window = self.rate_window.as_secs_f64();
        let bytes = self.rates.get(client).copied().unwrap_or_default();
        (bytes.up as f64 / window, bytes.down as f64 / window)
    }

    /// Both meters' totals for the dashboard (`None` without the capture meter).
    pub(super) fn dashboard(&self) -> Option<view::Meters> {
        self.audit.as_ref().map(|audit| {
            let totals = audit.totals();
            view::Meters {
                kernel_up: totals.kernel.up,
                kernel_down: totals.kernel.down,
                capture_up: totals.capture.up,
                capture_down: totals.capture.down,
                drift: audit.total_drift(),
                explained_bytes: audit.explained,
                capture_drops: audit.capture_drops,
                lan_queue_drops: audit.lan_queue_drops,
            }
        })
    }

    /// The Prometheus text of the metrics endpoint, the meters' part filled in.
    pub(super) fn metrics<'a>(
        &self,
        mut figures: GatewayFigures<'a>,
        capture_interface: &'a str,
    ) -> String {
        figures.capture_interface = self.capture.as_ref().map(|_| capture_interface);
        figures.capture_buffer_bytes = self.capture.as_ref().map_or(0, |c| c.buffer_bytes);
        figures.flows_dropped = self.flows.dropped;
        report::metrics_text(&figures, self.audit.as_ref())
    }

    /// What the agent's `flows` request gets, as `(instance, connections)`: what the previous
    /// run kept first, under its own instance; then this run's (`instance`).
    pub(super) fn flows_for_agent(&mut self, instance: u64) -> (u64, Vec<Connection>) {
        match self.flows.handover.take() {
            Some(kept) => (kept.instance, kept.connections),
            None => (
                instance,
                self.flows.drain().iter().map(report::connection).collect(),
            ),
        }
    }

    /// Stops the capture meter (joining its thread within its read timeout) and returns
    /// every flow not yet fetched, its last tallies included, for the next run to hand over.
    pub(super) fn finish(&mut self, instance: u64) -> Handover {
        if let Some(capture) = self.capture.take() {
            self.flows.add(&capture.finish().flows);
        }
        Handover {
            instance,
            connections: self.flows.drain().iter().map(report::connection).collect(),
        }
    }
}

/// Starts the capture meter on the LAN interface; each of its reports goes to `report`. A
/// capture that cannot start is logged, not fatal: billing runs on the kernel's counters.
pub(super) fn start_capture(
    config: &GatewayConfig,
    report: impl Fn(Report) + Send + 'static,
) -> Option<Capture> {
    if !config.capture.enabled {
        tracing::info!("the capture meter is off (capture.enabled = false)");
        return None;
    }
    let local = match local_addresses() {
        Ok(local) => local,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "the capture meter cannot start");
            return None;
        }
    };
    let settings = CaptureSettings {
        interface: config.lan.interface.clone(),
        buffer_bytes: config.capture.buffer_bytes,
        local,
        max_flows: config.capture.max_flows,
        max_clients: usize::try_from(config.lan.max_clients).unwrap_or(usize::MAX),
        flow_idle: config.capture.flow_idle,
        report_every: CAPTURE_REPORT_EVERY,
    };
    match Capture::start(settings, report) {
        Ok(capture) => {
            tracing::info!(
                interface = %config.lan.interface,
                buffer_bytes = capture.buffer_bytes,
                "capture meter running"
            );
            Some(capture)
        }
        Err(err) => {
            tracing::error!(
                interface = %config.lan.interface,
                error = %err,
                "the capture meter cannot start (needs CAP_NET_RAW); billing goes on with the kernel counters alone"
            );
            None
        }
    }
}

fn warn_drift(found: &[DriftFound]) {
    for drift in found {
        let who = drift
            .client
            .map_or_else(|| "all clients".to_owned(), |c| c.to_string());
        tracing::warn!(
            client = %who,
            kernel_bytes = drift.pair.kernel.total(),
            capture_bytes = drift.pair.capture.total(),
            drift_percent = drift.ratio * 100.0,
            "the capture meter and the kernel counters disagree by more than 0.1% (billing follows the kernel counters)"
        );
    }
}
