//! Starts the capture meter, the second byte meter that the kernel's counters are audited
//! against.

use std::time::Duration;

use crate::capture::{Capture, CaptureSettings, Report};
use crate::config::GatewayConfig;
use crate::net::local_addresses;

/// How often the capture meter reports.
const CAPTURE_REPORT_EVERY: Duration = Duration::from_secs(1);

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
