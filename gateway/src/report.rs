//! What the gateway tells others about its meters: the Prometheus text of the metrics
//! endpoint, and the capture's flows as the connections telemetry (contract 3) wants them.
//! Pure: the daemon hands in what it holds.

use std::collections::HashMap;
use std::fmt::Display;

use edgeshare_shared::backend::telemetry::{Connection, FlowStatus, Protocol};
use edgeshare_shared::prometheus::{Exposition, Kind};
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
    /// What the previous run of the daemon counted and the agent had not fetched when it
    /// stopped: the first `flows` reply hands it over, as that run's.
    pub handover: Option<Handover>,
}

/// The flows a stopping daemon kept for the agent, as its run (`instance`) named them: the
/// agent adds them to what it had of that run before it reads the new run's.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Handover {
    pub instance: u64,
    pub connections: Vec<Connection>,
}

impl FlowBook {
    pub fn new(limit: usize) -> Self {
        FlowBook {
            flows: HashMap::new(),
            limit,
            dropped: 0,
            handover: None,
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

/// One sample per meter and direction of `pair`, after the labels given.
fn pair_samples(out: &mut Exposition, name: &str, labels: &[(&str, &dyn Display)], pair: &Pair) {
    for (meter, usage) in [("kernel", pair.kernel), ("capture", pair.capture)] {
        for (direction, bytes) in [("up", usage.up), ("down", usage.down)] {
            let mut all = labels.to_vec();
            all.extend([("meter", &meter as &dyn Display), ("direction", &direction)]);
            out.sample(name, &all, bytes);
        }
    }
}

/// The Prometheus text exposition of the gateway's figures.
pub fn metrics_text(figures: &GatewayFigures<'_>, audit: Option<&Audit>) -> String {
    let mut out = Exposition::new();
    out.single(
        "edgeshare_sessions",
        Kind::Gauge,
        "Live sessions (codes in use).",
        figures.sessions,
    );
    out.single(
        "edgeshare_clients_online",
        Kind::Gauge,
        "Devices let through now.",
        figures.online,
    );
    out.single(
        "edgeshare_unattributed_bytes_total",
        Kind::Counter,
        "Bytes the kernel counted for clients in no session.",
        figures.unattributed_bytes,
    );
    let name = "edgeshare_client_billed_bytes";
    out.family(
        name,
        Kind::Gauge,
        "Billable bytes of each online device in its session so far (kernel meter).",
    );
    for (client, usage) in figures.billed {
        for (direction, bytes) in [("up", usage.up), ("down", usage.down)] {
            let labels: [(&str, &dyn Display); 3] = [
                ("mac", &client.mac),
                ("ip", &client.ip),
                ("direction", &direction),
            ];
            out.sample(name, &labels, bytes);
        }
    }
    out.single(
        "edgeshare_flows_dropped_total",
        Kind::Counter,
        "Flow tallies dropped because nobody fetched them.",
        figures.flows_dropped,
    );
    let Some(audit) = audit else {
        return out.finish();
    };
    let iface = figures.capture_interface.unwrap_or("");
    let interface: [(&str, &dyn Display); 1] = [("interface", &iface)];
    let name = "edgeshare_metered_bytes_total";
    out.family(
        name,
        Kind::Counter,
        "Forwarded client bytes by meter (kernel: the billing meter; capture: the audit) since the daemon started.",
    );
    pair_samples(&mut out, name, &[], &audit.totals());
    let name = "edgeshare_client_metered_bytes";
    out.family(
        name,
        Kind::Gauge,
        "Each online device's bytes by meter since it came online in this run of the daemon.",
    );
    let mut clients: Vec<_> = audit.clients().collect();
    clients.sort_by_key(|(client, _, _)| **client);
    for (client, pair, _) in &clients {
        pair_samples(
            &mut out,
            name,
            &[("mac", &client.mac), ("ip", &client.ip)],
            pair,
        );
    }
    let name = "edgeshare_client_meter_drift_ratio";
    out.family(
        name,
        Kind::Gauge,
        "(capture - kernel) / kernel for each device, when it was last quiet in both meters.",
    );
    for (client, _, drift) in &clients {
        if let Some(drift) = drift {
            out.sample(name, &[("mac", &client.mac), ("ip", &client.ip)], drift);
        }
    }
    let name = "edgeshare_meter_drift_ratio";
    out.family(
        name,
        Kind::Gauge,
        "(capture - kernel) / kernel over all clients, when all were last quiet.",
    );
    if let Some(drift) = audit.total_drift() {
        out.sample(name, &[], drift);
    }
    out.single(
        "edgeshare_meter_drift_explained_bytes",
        Kind::Gauge,
        "Download bytes the kernel counted and the capture missed that the LAN queue's drops explain, over all clients when all were last quiet.",
        audit.explained,
    );
    let name = "edgeshare_lan_queue_drops_total";
    out.family(
        name,
        Kind::Counter,
        "Packets the LAN interface's egress queue dropped since the daemon started (counted by the kernel meter, not seen by the capture).",
    );
    out.sample(name, &interface, audit.lan_queue_drops);
    let name = "edgeshare_capture_packets_total";
    out.family(
        name,
        Kind::Counter,
        "Frames that reached the capture socket (kernel count).",
    );
    out.sample(name, &interface, audit.capture_packets);
    let name = "edgeshare_capture_drops_total";
    out.family(
        name,
        Kind::Counter,
        "Frames the kernel dropped because the capture socket's buffer was full: the audit meter missed them.",
    );
    out.sample(name, &interface, audit.capture_drops);
    let name = "edgeshare_capture_buffer_bytes";
    out.family(
        name,
        Kind::Gauge,
        "The capture socket's receive buffer as the kernel reports it (twice capture.buffer_bytes: it counts its own overhead).",
    );
    out.sample(name, &interface, figures.capture_buffer_bytes);
    out.single(
        "edgeshare_capture_untracked_flow_packets_total",
        Kind::Counter,
        "Packets of flows beyond capture.max_flows (counted for their client, not as a flow).",
        audit.untracked_flow_packets,
    );
    out.finish()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::capture::{KernelStats, Tally};
    use crate::core::Usage;
    use crate::net::Mac;

    /// A TCP flow from client port `port`, seen for `last_seen` ms, with traffic both ways.
    pub(crate) fn flow(port: u16, last_seen: u64, ended: bool) -> Flow {
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
