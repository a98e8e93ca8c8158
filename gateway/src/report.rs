//! What the gateway tells others about its meters: the Prometheus text of the metrics
//! endpoint, and the capture's flows as the connections telemetry (contract 3) wants them.
//! Pure: the daemon hands in what it holds.

use std::collections::HashMap;
use std::fmt::Write as _;

use edgeshare_shared::backend::telemetry::{Connection, FlowStatus, Protocol};
use sha2::Digest;
use time::OffsetDateTime;

use crate::audit::{Audit, Pair};
use crate::capture::parse::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
use crate::capture::{Flow, FlowKey};
use crate::net::{Client, Millis};

/// Flow tallies waiting for the agent's next `flows` request: the latest of each flow.
/// Bounded: when the agent does not come for them, the oldest flows make room (telemetry,
/// not billing).
#[derive(Debug)]
pub struct FlowBook {
    flows: HashMap<FlowKey, Flow>,
    limit: usize,
    /// Flows dropped for room since the daemon started.
    pub dropped: u64,
}

impl FlowBook {
    pub fn new(limit: usize) -> Self {
        FlowBook {
            flows: HashMap::new(),
            limit,
            dropped: 0,
        }
    }

    pub fn add(&mut self, flows: &[Flow]) {
        for flow in flows {
            self.flows.insert(flow.key, *flow);
        }
        let excess = self.flows.len().saturating_sub(self.limit);
        if excess > 0 {
            let mut by_age: Vec<(Millis, FlowKey)> = self
                .flows
                .values()
                .map(|flow| (flow.last_seen, flow.key))
                .collect();
            by_age.sort();
            for (_, key) in by_age.into_iter().take(excess) {
                self.flows.remove(&key);
            }
            self.dropped += excess as u64;
        }
    }

    /// Everything waiting, oldest activity first; the book is empty afterwards.
    pub fn drain(&mut self) -> Vec<Flow> {
        let mut flows: Vec<Flow> = self.flows.drain().map(|(_, flow)| flow).collect();
        flows.sort_by_key(|flow| (flow.last_seen, flow.key));
        flows
    }
}

fn datetime(at: Millis) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(at.0) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// A flow as contract 3's connection: the client is the source; `bytes_out` is what it sent.
/// The id stays the same for the flow's whole life (the backend upserts by it).
pub fn connection(flow: &Flow) -> Connection {
    let key = &flow.key;
    let id_source = format!(
        "{}|{}|{}|{}|{}|{}",
        key.protocol,
        key.client_ip,
        key.client_port,
        key.remote_ip,
        key.remote_port,
        flow.first_seen.0
    );
    let digest = sha2::Sha256::digest(id_source.as_bytes());
    let id: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    let duration_ms = flow.last_seen.0.saturating_sub(flow.first_seen.0);
    Connection {
        id,
        source_ip: key.client_ip,
        dest_ip: key.remote_ip,
        source_port: key.client_port,
        dest_port: key.remote_port,
        protocol: match key.protocol {
            PROTO_TCP => Protocol::Tcp,
            PROTO_UDP => Protocol::Udp,
            PROTO_ICMP | PROTO_ICMPV6 => Protocol::Icmp,
            _ => Protocol::Other,
        },
        status: if flow.ended {
            FlowStatus::Inactive
        } else {
            FlowStatus::Active
        },
        start_time: datetime(flow.first_seen),
        last_activity: datetime(flow.last_seen),
        duration: Some(duration_ms),
        bytes_in: flow.tally.down_bytes,
        bytes_out: flow.tally.up_bytes,
        packets_in: flow.tally.down_packets,
        packets_out: flow.tally.up_packets,
    }
}

/// What the metrics endpoint shows besides the audit.
#[derive(Debug)]
pub struct GatewayFigures<'a> {
    pub sessions: usize,
    pub online: usize,
    pub unattributed_bytes: u64,
    /// Each online client's billed bytes in its session so far (kernel meter).
    pub billed: &'a [(Client, crate::core::Usage)],
    pub capture_interface: Option<&'a str>,
    pub capture_buffer_bytes: usize,
    pub flows_dropped: u64,
}

fn help(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn pair_lines(out: &mut String, name: &str, labels: &str, pair: &Pair) {
    let sep = if labels.is_empty() { "" } else { "," };
    for (meter, usage) in [("kernel", pair.kernel), ("capture", pair.capture)] {
        for (direction, bytes) in [("up", usage.up), ("down", usage.down)] {
            let _ = writeln!(
                out,
                "{name}{{{labels}{sep}meter=\"{meter}\",direction=\"{direction}\"}} {bytes}"
            );
        }
    }
}

/// The Prometheus text exposition of the gateway's figures.
pub fn metrics_text(figures: &GatewayFigures<'_>, audit: Option<&Audit>) -> String {
    let mut out = String::new();
    help(
        &mut out,
        "edgeshare_sessions",
        "gauge",
        "Live sessions (codes in use).",
    );
    let _ = writeln!(out, "edgeshare_sessions {}", figures.sessions);
    help(
        &mut out,
        "edgeshare_clients_online",
        "gauge",
        "Devices let through now.",
    );
    let _ = writeln!(out, "edgeshare_clients_online {}", figures.online);
    help(
        &mut out,
        "edgeshare_unattributed_bytes_total",
        "counter",
        "Bytes the kernel counted for clients in no session.",
    );
    let _ = writeln!(
        out,
        "edgeshare_unattributed_bytes_total {}",
        figures.unattributed_bytes
    );
    help(
        &mut out,
        "edgeshare_client_billed_bytes",
        "gauge",
        "Billable bytes of each online device in its session so far (kernel meter).",
    );
    for (client, usage) in figures.billed {
        for (direction, bytes) in [("up", usage.up), ("down", usage.down)] {
            let _ = writeln!(
                out,
                "edgeshare_client_billed_bytes{{mac=\"{}\",ip=\"{}\",direction=\"{direction}\"}} {bytes}",
                client.mac, client.ip
            );
        }
    }
    help(
        &mut out,
        "edgeshare_flows_dropped_total",
        "counter",
        "Flow tallies dropped because nobody fetched them.",
    );
    let _ = writeln!(
        out,
        "edgeshare_flows_dropped_total {}",
        figures.flows_dropped
    );
    let Some(audit) = audit else {
        return out;
    };
    let iface = figures.capture_interface.unwrap_or("");
    help(
        &mut out,
        "edgeshare_metered_bytes_total",
        "counter",
        "Forwarded client bytes by meter (kernel: the billing meter; capture: the audit) since the daemon started.",
    );
    pair_lines(
        &mut out,
        "edgeshare_metered_bytes_total",
        "",
        &audit.totals(),
    );
    help(
        &mut out,
        "edgeshare_client_metered_bytes",
        "gauge",
        "Each online device's bytes by meter since it came online in this run of the daemon.",
    );
    let mut clients: Vec<_> = audit.clients().collect();
    clients.sort_by_key(|(client, _, _)| **client);
    for (client, pair, _) in &clients {
        let labels = format!("mac=\"{}\",ip=\"{}\"", client.mac, client.ip);
        pair_lines(&mut out, "edgeshare_client_metered_bytes", &labels, pair);
    }
    help(
        &mut out,
        "edgeshare_client_meter_drift_ratio",
        "gauge",
        "(capture - kernel) / kernel for each device, when it was last quiet in both meters.",
    );
    for (client, _, drift) in &clients {
        if let Some(drift) = drift {
            let _ = writeln!(
                out,
                "edgeshare_client_meter_drift_ratio{{mac=\"{}\",ip=\"{}\"}} {drift}",
                client.mac, client.ip
            );
        }
    }
    help(
        &mut out,
        "edgeshare_meter_drift_ratio",
        "gauge",
        "(capture - kernel) / kernel over all clients, when all were last quiet.",
    );
    if let Some(drift) = audit.total_drift() {
        let _ = writeln!(out, "edgeshare_meter_drift_ratio {drift}");
    }
    help(
        &mut out,
        "edgeshare_meter_drift_explained_bytes",
        "gauge",
        "Download bytes the kernel counted and the capture missed that the LAN queue's drops explain, over all clients when all were last quiet.",
    );
    let _ = writeln!(
        out,
        "edgeshare_meter_drift_explained_bytes {}",
        audit.explained
    );
    help(
        &mut out,
        "edgeshare_lan_queue_drops_total",
        "counter",
        "Packets the LAN interface's egress queue dropped since the daemon started (counted by the kernel meter, not seen by the capture).",
    );
    let _ = writeln!(
        out,
        "edgeshare_lan_queue_drops_total{{interface=\"{iface}\"}} {}",
        audit.lan_queue_drops
    );
    help(
        &mut out,
        "edgeshare_capture_packets_total",
        "counter",
        "Frames that reached the capture socket (kernel count).",
    );
    let _ = writeln!(
        out,
        "edgeshare_capture_packets_total{{interface=\"{iface}\"}} {}",
        audit.capture_packets
    );
    help(
        &mut out,
        "edgeshare_capture_drops_total",
        "counter",
        "Frames the kernel dropped because the capture socket's buffer was full: the audit meter missed them.",
    );
    let _ = writeln!(
        out,
        "edgeshare_capture_drops_total{{interface=\"{iface}\"}} {}",
        audit.capture_drops
    );
    help(
        &mut out,
        "edgeshare_capture_buffer_bytes",
        "gauge",
        "The capture socket's receive buffer as the kernel reports it (twice capture.buffer_bytes: it counts its own overhead).",
    );
    let _ = writeln!(
        out,
        "edgeshare_capture_buffer_bytes{{interface=\"{iface}\"}} {}",
        figures.capture_buffer_bytes
    );
    help(
        &mut out,
        "edgeshare_capture_untracked_flow_packets_total",
        "counter",
        "Packets of flows beyond capture.max_flows (counted for their client, not as a flow).",
    );
    let _ = writeln!(
        out,
        "edgeshare_capture_untracked_flow_packets_total {}",
        audit.untracked_flow_packets
    );
    out
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::capture::{KernelStats, Tally};
    use crate::core::Usage;
    use crate::net::Mac;

    fn flow(port: u16, last_seen: u64, ended: bool) -> Flow {
        Flow {
            key: FlowKey {
                protocol: PROTO_TCP,
                client_ip: IpAddr::from([10, 0, 0, 2]),
                client_port: port,
                remote_ip: IpAddr::from([192, 0, 2, 1]),
                remote_port: 443,
            },
            mac: Mac([2, 0, 0, 0, 0, 2]),
            first_seen: Millis(1_700_000_000_000),
            last_seen: Millis(1_700_000_000_000 + last_seen),
            tally: Tally {
                up_bytes: 1_000,
                up_packets: 10,
                down_bytes: 9_000,
                down_packets: 9,
            },
            ended,
        }
    }

    #[test]
    fn a_flow_becomes_a_connection_with_a_stable_id() {
        let first = connection(&flow(40000, 2_000, false));
        let later = connection(&flow(40000, 5_000, true));
        assert_eq!(first.id, later.id);
        assert_ne!(first.id, connection(&flow(40001, 2_000, false)).id);
        assert_eq!((first.bytes_out, first.bytes_in), (1_000, 9_000));
        assert_eq!(first.duration, Some(2_000));
        assert_eq!(later.status, FlowStatus::Inactive);
        let json = serde_json::to_value(&first).unwrap();
        assert_eq!(json["sourcePort"], 40000);
        assert_eq!(json["protocol"], "TCP", "as contract 3 spells it");
    }

    #[test]
    fn the_flow_book_keeps_the_latest_and_makes_room_from_the_oldest() {
        let mut book = FlowBook::new(2);
        book.add(&[flow(1, 10, false), flow(2, 20, false)]);
        book.add(&[flow(1, 30, false), flow(3, 40, false)]);
        let flows = book.drain();
        let ports: Vec<u16> = flows.iter().map(|f| f.key.client_port).collect();
        assert_eq!(ports, [1, 3], "port 2 was the oldest");
        assert_eq!(flows[0].last_seen.0, 1_700_000_000_030);
        assert_eq!(book.dropped, 1);
        assert!(book.drain().is_empty());
    }

    #[test]
    fn metrics_name_both_meters_and_the_drops() {
        let client = Client {
            mac: Mac([2, 0, 0, 0, 0, 2]),
            ip: IpAddr::from([10, 0, 0, 2]),
        };
        let mut audit = Audit::default();
        audit.kernel(&[(client, Usage { up: 5, down: 7 })], &[client]);
        audit.capture(
            &[(
                client,
                Tally {
                    up_bytes: 5,
                    up_packets: 1,
                    down_bytes: 7,
                    down_packets: 1,
                },
            )],
            KernelStats {
                packets: 2,
                drops: 3,
            },
            0,
        );
        let billed = [(client, Usage { up: 5, down: 7 })];
        let text = metrics_text(
            &GatewayFigures {
                sessions: 1,
                online: 1,
                unattributed_bytes: 0,
                billed: &billed,
                capture_interface: Some("lan0"),
                capture_buffer_bytes: 1 << 23,
                flows_dropped: 0,
            },
            Some(&audit),
        );
        for line in [
            "edgeshare_metered_bytes_total{meter=\"kernel\",direction=\"down\"} 7",
            "edgeshare_metered_bytes_total{meter=\"capture\",direction=\"up\"} 5",
            "edgeshare_capture_drops_total{interface=\"lan0\"} 3",
            "edgeshare_client_billed_bytes{mac=\"02:00:00:00:00:02\",ip=\"10.0.0.2\",direction=\"up\"} 5",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
