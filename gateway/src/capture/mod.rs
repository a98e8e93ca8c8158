//! Meter 1, the audit meter: packet capture (pnet on our own AF_PACKET socket) on the LAN
//! interface, counting each allowed client's forwarded bytes both ways and per flow.
//!
//! The kernel's nftables counters are the billing meter (they keep counting while the daemon
//! is down); this one checks them, and its per-flow tallies feed the connections telemetry.
//! A thread reads every frame ([`parse`], [`meter`]) and about once a second hands the daemon
//! a [`Report`]: the clients' tallies since the last one, the flows that changed, and the
//! kernel's count of frames the socket dropped (a meter that loses packets must say so).

pub mod follow;
pub mod meter;
pub mod parse;
mod socket;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use follow::{ClientsFrom, Pending};
pub use meter::{Batch, Flow, FlowKey, Tally};
use meter::{Meter, MeterConfig};
use socket::CaptureSocket;
pub use socket::KernelStats;

use crate::net::{Client, Millis};

/// How long a read waits before the thread looks at the clock (and its stop flag).
const READ_TIMEOUT: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct CaptureSettings {
    pub interface: String,
    /// Socket receive buffer. The kernel drops frames that do not fit while the thread is
    /// behind: 8 MiB dropped none here at ~100k packets/s.
    pub buffer_bytes: usize,
    /// The gateway's own addresses (their traffic is not forwarded, so not billable).
    pub local: Vec<IpAddr>,
    pub max_flows: usize,
    pub max_clients: usize,
    pub flow_idle: Duration,
    /// How often a report is handed over.
    pub report_every: Duration,
}

/// What the capture counted since the previous report.
#[derive(Debug, Clone)]
pub struct Report {
    pub at: Millis,
    pub batch: Batch,
    pub kernel: KernelStats,
}

struct Shared {
    stop: AtomicBool,
    /// Set when `clients` holds new lists; checked per packet (one relaxed load).
    clients_changed: AtomicBool,
    clients: Mutex<Vec<ClientsFrom>>,
}

/// The running capture thread.
pub struct Capture {
    shared: Arc<Shared>,
    /// Gives back the meter when it ends, with what it counted since its last report.
    thread: Option<JoinHandle<Meter>>,
    pub buffer_bytes: usize,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("buffer_bytes", &self.buffer_bytes)
            .finish_non_exhaustive()
    }
}

impl Capture {
    /// Opens the socket (errors here are the caller's to report: no such interface, no
    /// CAP_NET_RAW) and starts the thread, which calls `deliver` with each report.
    pub fn start(
        settings: CaptureSettings,
        deliver: impl Fn(Report) + Send + 'static,
    ) -> std::io::Result<Capture> {
        let socket = CaptureSocket::open(&settings.interface, settings.buffer_bytes, READ_TIMEOUT)?;
        let buffer_bytes = socket.buffer_bytes;
        let meter = Meter::new(MeterConfig {
            gateway_mac: socket.mac,
            local: settings.local.clone(),
            max_flows: settings.max_flows,
            flow_idle_ms: u64::try_from(settings.flow_idle.as_millis()).unwrap_or(u64::MAX),
            max_clients: settings.max_clients,
        });
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            clients_changed: AtomicBool::new(false),
            clients: Mutex::new(Vec::new()),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("capture {}", settings.interface))
            .spawn(move || run(socket, meter, &settings, &thread_shared, deliver))?;
        Ok(Capture {
            shared,
            thread: Some(thread),
            buffer_bytes,
        })
    }

    /// The clients the firewall lets through from `at` on, the wall-clock time its table
    /// took them (see [`follow`]: frames that arrived before are judged by the list before).
    pub fn set_clients(&self, clients: Vec<Client>, at: SystemTime) {
        self.shared
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(ClientsFrom { clients, at });
        self.shared.clients_changed.store(true, Ordering::Release);
    }
}

impl Capture {
    /// Stops the thread and takes what the meter counted since its last report (flows
    /// included), so that a stopping daemon can keep it for the agent.
    pub fn finish(mut self) -> Batch {
        self.stop()
            .map(|mut meter| meter.take(Millis::now()))
            .unwrap_or_default()
    }

    fn stop(&mut self) -> Option<Meter> {
        self.shared.stop.store(true, Ordering::Relaxed);
        // It notices within one read timeout.
        self.thread.take().and_then(|thread| thread.join().ok())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(
    mut socket: CaptureSocket,
    mut meter: Meter,
    settings: &CaptureSettings,
    shared: &Shared,
    deliver: impl Fn(Report),
) -> Meter {
    let mut next_report = Instant::now() + settings.report_every;
    let mut failing = false;
    let mut pending = Pending::default();
    while !shared.stop.load(Ordering::Relaxed) {
        if shared.clients_changed.swap(false, Ordering::Acquire) {
            let received = Instant::now();
            for list in shared
                .clients
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .drain(..)
            {
                pending.push(list, received);
            }
        }
        // Frames are stamped only while a list waits for its time.
        match socket.next(!pending.is_empty()) {
            Ok((frame, stamp)) => {
                failing = false;
                if !pending.is_empty() {
                    // A frame without a stamp is taken as arriving now.
                    let stamp = stamp.unwrap_or_else(SystemTime::now);
                    if let Some(clients) = pending.due(stamp, Instant::now()) {
                        meter.set_clients(&clients);
                    }
                }
                if let Some(packet) = parse::parse(frame) {
                    meter.observe(&packet, Millis::now());
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::TimedOut => {
                // Nothing queued: every list of the past is due.
                if let Some(clients) = pending.due(SystemTime::now(), Instant::now()) {
                    meter.set_clients(&clients);
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => {
                // The interface went down, say: keep trying, say so once per streak.
                if !failing {
                    tracing::error!(interface = %settings.interface, error = %err, "packet capture failed; retrying");
                    failing = true;
                }
                std::thread::sleep(READ_TIMEOUT);
            }
        }
        let now = Instant::now();
        if now >= next_report {
            next_report = now + settings.report_every;
            let kernel = socket.statistics().unwrap_or_else(|err| {
                tracing::warn!(error = %err, "cannot read the capture socket's statistics");
                KernelStats::default()
            });
            let at = Millis::now();
            deliver(Report {
                at,
                batch: meter.take(at),
                kernel,
            });
        }
    }
    meter
}
