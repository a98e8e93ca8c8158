//! `edgeshare-agent status`: the running daemon's health, read from its metrics endpoint.
//!
//! The endpoint rather than a state file: it answers only while the daemon runs (no stale
//! file after a crash to mistake for health), it costs no SD-card writes, and it shows the
//! very figures Prometheus scrapes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::metrics::{last_error_sample, sample};

fn ago(unix: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    humantime::format_duration(Duration::from_secs(now.saturating_sub(unix))).to_string()
}

/// The report a person reads.
pub fn render(text: &str) -> String {
    let n = |name: &str| sample(text, name).unwrap_or(0.0) as u64;
    let mut out = format!(
        "edgeshare-agent: running for {}\n",
        humantime::format_duration(Duration::from_secs(n("uptime_seconds")))
    );
    if n("stream_configured") == 1 {
        let state = if n("connected") == 1 {
            "connected"
        } else {
            "DISCONNECTED (reconnecting)"
        };
        out.push_str(&format!(
            "stream:   {state}; {} connects, {} reconnects, {} dead links\n",
            n("connects_total"),
            n("reconnects_total"),
            n("dead_links_total"),
        ));
        out.push_str(&format!(
            "messages: {} sent, {} confirmed, {} refused by the server; {} samples ({} failed)\n",
            n("messages_sent_total"),
            n("messages_confirmed_total"),
            n("messages_refused_total"),
            n("samples_total"),
            n("sample_errors_total"),
        ));
        out.push_str(&format!(
            "spool:    {} waiting ({} on disk, {} bytes); {} sensor samples dropped, {} refused (full)\n",
            n("spool_depth"),
            n("spool_disk_messages"),
            n("spool_bytes"),
            n("spool_dropped_total"),
            n("spool_refused_total"),
        ));
    } else {
        out.push_str("stream:   not configured (no [stream])\n");
    }
    out.push_str(&format!(
        "auth:     {} failures\n",
        n("auth_failures_total")
    ));
    out.push_str(&format!(
        "gateway:  {}\n",
        if n("gateway_present") == 1 {
            "present (usage streamed)"
        } else {
            "not found (usage source idle)"
        }
    ));
    out.push_str(&format!(
        "usage:    {} bytes reported since start, {} bytes pending; telemetry: {} flows posted\n",
        n("usage_reported_bytes_total"),
        n("usage_pending_bytes"),
        n("telemetry_flows_posted_total"),
    ));
    out.push_str(&billing_line(&n));
    match last_error_sample(text) {
        Some((error, at)) if at > 0 => {
            out.push_str(&format!("last error ({} ago): {error}\n", ago(at)));
        }
        _ => out.push_str("last error: none\n"),
    }
    out
}

/// Whether usage reaches the backend, and what it could not bill or credit.
fn billing_line(n: &dyn Fn(&str) -> u64) -> String {
    if n("usage_configured") == 0 {
        return "billing:  not configured (no [backend])\n".to_owned();
    }
    let mut parts = Vec::new();
    match n("usage_failing_since_seconds") {
        0 => parts.push("reporting".to_owned()),
        since => parts.push(format!(
            "NOT REPORTING for {} (see the last error)",
            ago(since)
        )),
    }
    let half = n("usage_half_applied_total");
    if half > 0 {
        parts.push(format!(
            "{half} report(s) applied only half by the backend, {} bytes never credited (ask its operator)",
            n("usage_uncredited_bytes_total")
        ));
    }
    let written_off = n("usage_written_off_bytes_total");
    if written_off > 0 {
        parts.push(format!("{written_off} bytes could not be billed"));
    }
    let (points, bytes) = (
        n("usage_credit_shortfall_points"),
        n("usage_credit_shortfall_bytes"),
    );
    let missed = n("usage_credit_entries_missed") == 1;
    if points > 0 || bytes > 0 {
        parts.push(format!(
            "the account is {}{points} points and {bytes} bytes of bytesShared short of what its usage log earned since start (credit lost to reports crediting it at once, from any of its gateways: ask the backend's operator){}",
            if missed { "at least " } else { "" },
            if missed {
                "; log entries may have been missed"
            } else {
                ""
            }
        ));
    } else if missed {
        parts.push(
            "usage log entries may have been missed: lost credit may have gone unseen".to_owned(),
        );
    }
    format!("billing:  {}\n", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::usage::{store_shortfall, store_usage};
    use std::sync::atomic::Ordering;

    /// The metrics of an agent whose usage reporter is configured.
    fn billing_configured() -> Metrics {
        let m = Metrics::default();
        m.usage_configured.store(true, Ordering::Relaxed);
        m
    }

    /// The report once the reporter found the account 35 points and 36,700,000 bytes short,
    /// with or without usage log entries missed.
    fn report_short(m: &Metrics, entries_missed: bool) -> String {
        let shortfall = crate::usage::Shortfall {
            points: 35,
            bytes: 36_700_000,
            entries_missed,
        };
        store_shortfall(m, Some(shortfall));
        render(&m.render())
    }

    #[test]
    fn the_report_reads_the_exposition() {
        let m = Metrics::default();
        m.stream_configured.store(true, Ordering::Relaxed);
        Metrics::add(&m.reconnects, 2);
        Metrics::add(&m.usage_reported_bytes, 5_230_316);
        m.set_last_error("stream down");
        let report = render(&m.render());
        assert!(report.contains("DISCONNECTED"), "{report}");
        assert!(
            report.contains("usage:    5230316 bytes reported since start, 0 bytes pending"),
            "{report}"
        );
        assert!(report.contains("2 reconnects"), "{report}");
        assert!(report.contains("stream down"), "{report}");
        assert!(report.contains("not found"), "{report}");
        assert!(report.contains("billing:  not configured"), "{report}");
    }

    #[test]
    fn a_credit_shortfall_is_shown_with_its_size() {
        let m = billing_configured();
        let report = render(&m.render());
        assert!(!report.contains("short"), "{report}");
        let report = report_short(&m, false);
        assert!(
            report.contains("the account is 35 points and 36700000 bytes of bytesShared short"),
            "{report}"
        );
        let report = report_short(&m, true);
        assert!(report.contains("at least 35 points"), "{report}");
        assert!(report.contains("may have been missed"), "{report}");
    }

    #[test]
    fn a_reporter_that_cannot_report_says_so() {
        let m = billing_configured();
        let totals = crate::usage::Totals {
            reported_bytes: 0,
            written_off_bytes: 0,
            half_applied: 1,
            uncredited_bytes: 4_800_000,
        };
        store_usage(&m, totals, 10, true);
        let report = render(&m.render());
        assert!(report.contains("billing:  reporting; 1 report(s) applied only half by the backend, 4800000 bytes never credited"), "{report}");
        store_usage(&m, totals, 10, false);
        m.set_last_error("usage reporter: cannot read the provider's code list: 500");
        let report = render(&m.render());
        assert!(report.contains("billing:  NOT REPORTING for"), "{report}");
        assert!(!report.contains("last error: none"), "{report}");
        assert!(
            report.contains("cannot read the provider's code list"),
            "{report}"
        );
    }
}
