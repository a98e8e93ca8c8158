//! The capture meter's logic: which client a packet is billed to, in which direction, and
//! the per-flow tallies. Pure (time passed in), so it is tested without sockets; the capture
//! thread feeds it every frame and takes its tallies about once a second.
//!
//! A packet counts when the firewall would count it: forwarded between an allowed client and
//! the WAN. Upload: sent by the client (its MAC and IP, as the kernel's upload set is keyed)
//! to the gateway's MAC for an address that is not the gateway's own. Download: sent by the
//! gateway's MAC to a client's IP from an address that is not the gateway's own (its DNS,
//! DHCP and portal replies are not billable).
//!
//! The hot path ([`Meter::observe`]) takes no lock, logs nothing and allocates nothing: the
//! maps are sized up front and a flow past [`MeterConfig::max_flows`] is counted for its client
//! but not tracked on its own (and counted in `untracked_packets`).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use super::parse::Packet;
use crate::net::{Client, Mac, Millis};

#[derive(Debug, Clone)]
pub struct MeterConfig {
    /// The MAC of the gateway's LAN interface.
    pub gateway_mac: Mac,
    /// Every address of the gateway itself: traffic to or from them is not forwarded.
    pub local: Vec<IpAddr>,
    /// Most flows tracked at once.
    pub max_flows: usize,
    /// A flow with no packet for this long has ended: reported inactive, then forgotten.
    pub flow_idle_ms: u64,
    /// Most clients expected at once (maps are sized for them; more only cost a reallocation
    /// in [`Meter::set_clients`], off the per-packet path).
    pub max_clients: usize,
}

/// Bytes (IP total length) and packets each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub up_bytes: u64,
    pub up_packets: u64,
    pub down_bytes: u64,
    pub down_packets: u64,
}

impl Tally {
    pub fn add(&mut self, other: &Tally) {
        self.up_bytes += other.up_bytes;
        self.up_packets += other.up_packets;
        self.down_bytes += other.down_bytes;
        self.down_packets += other.down_packets;
    }

    pub fn is_zero(&self) -> bool {
        *self == Tally::default()
    }
}

/// A flow seen from its client: the client's side first, whichever side spoke first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub protocol: u8,
    pub client_ip: IpAddr,
    pub client_port: u16,
    pub remote_ip: IpAddr,
    pub remote_port: u16,
}

/// One flow's cumulative tallies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub key: FlowKey,
    pub mac: Mac,
    pub first_seen: Millis,
    pub last_seen: Millis,
    /// Up is client to remote.
    pub tally: Tally,
    /// No packet for the idle time: this is its last report.
    pub ended: bool,
}

#[derive(Debug, Clone, Copy)]
struct FlowState {
    flow: Flow,
    /// Changed since the last [`Meter::take`].
    dirty: bool,
}

/// What the meter counted since the last [`Meter::take`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Clients with traffic, and their tallies since the last take (including clients
    /// removed from the meter since then).
    pub clients: Vec<(Client, Tally)>,
    /// Flows that changed (their cumulative tallies) or ended.
    pub flows: Vec<Flow>,
    /// Packets of flows beyond `max_flows` since the last take.
    pub untracked_packets: u64,
}

#[derive(Debug)]
pub struct Meter {
    config: MeterConfig,
    /// Upload: by source MAC and IP together, as the kernel's upload sets are keyed. A device
    /// has several clients under one MAC (its IPv4 and IPv6 addresses, privacy addresses,
    /// aliases): keyed by the MAC alone, the uploads of all but the last listed went unseen,
    /// and every address a device added (an address flood, a spoofed one) came to a drift
    /// warning against the kernel's count.
    by_up: HashMap<(Mac, IpAddr), usize>,
    by_ip: HashMap<IpAddr, usize>,
    /// The allowed clients and their tallies since the last take.
    clients: Vec<(Client, Tally)>,
    /// Tallies of clients removed since the last take, still to be handed over.
    departed: Vec<(Client, Tally)>,
    flows: HashMap<FlowKey, FlowState>,
    untracked_packets: u64,
}

impl Meter {
    pub fn new(config: MeterConfig) -> Self {
        Meter {
            by_up: HashMap::with_capacity(config.max_clients),
            by_ip: HashMap::with_capacity(config.max_clients),
            clients: Vec::with_capacity(config.max_clients),
            departed: Vec::new(),
            flows: HashMap::with_capacity(config.max_flows),
            untracked_packets: 0,
            config,
        }
    }

    /// The clients the firewall lets through now. Tallies of clients that stay are kept;
    /// those of clients that left wait for the next [`Meter::take`]. Linear in the clients
    /// (it runs after every login; searching the lists was quadratic: millions of comparisons
    /// at 2,000 clients, with no packet read meanwhile).
    pub fn set_clients(&mut self, allowed: &[Client]) {
        let mut before: HashMap<Client, Tally> = self.clients.drain(..).collect();
        let mut kept: Vec<(Client, Tally)> = Vec::with_capacity(allowed.len());
        let mut listed = HashSet::with_capacity(allowed.len());
        for client in allowed {
            if listed.insert(*client) {
                kept.push((*client, before.remove(client).unwrap_or_default()));
            }
        }
        self.departed
            .extend(before.into_iter().filter(|(_, tally)| !tally.is_zero()));
        self.clients = kept;
        self.by_up.clear();
        self.by_ip.clear();
        for (index, (client, _)) in self.clients.iter().enumerate() {
            self.by_up.insert((client.mac, client.ip), index);
            self.by_ip.insert(client.ip, index);
        }
    }

    /// One captured packet.
    pub fn observe(&mut self, packet: &Packet, now: Millis) {
        let gateway = self.config.gateway_mac;
        let up = packet.dst_mac == gateway
            && packet.src_mac != gateway
            && !self.config.local.contains(&packet.dst_ip);
        let down = packet.src_mac == gateway && !self.config.local.contains(&packet.src_ip);
        let index = if up {
            match self.by_up.get(&(packet.src_mac, packet.src_ip)) {
                Some(&index) => index,
                None => return,
            }
        } else if down {
            match self.by_ip.get(&packet.dst_ip) {
                Some(&index) => index,
                None => return,
            }
        } else {
            return;
        };
        let bytes = u64::from(packet.ip_len);
        let (client, tally) = &mut self.clients[index];
        let key = if up {
            tally.up_bytes += bytes;
            tally.up_packets += 1;
            FlowKey {
                protocol: packet.protocol,
                client_ip: packet.src_ip,
                client_port: packet.src_port,
                remote_ip: packet.dst_ip,
                remote_port: packet.dst_port,
            }
        } else {
            tally.down_bytes += bytes;
            tally.down_packets += 1;
            FlowKey {
                protocol: packet.protocol,
                client_ip: packet.dst_ip,
                client_port: packet.dst_port,
                remote_ip: packet.src_ip,
                remote_port: packet.src_port,
            }
        };
        let mac = client.mac;
        let tracked = self.flows.len();
        let state = match self.flows.entry(key) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) if tracked < self.config.max_flows => entry.insert(FlowState {
                flow: Flow {
                    key,
                    mac,
                    first_seen: now,
                    last_seen: now,
                    tally: Tally::default(),
                    ended: false,
                },
                dirty: true,
            }),
            Entry::Vacant(_) => {
                self.untracked_packets += 1;
                return;
            }
        };
        let flow = &mut state.flow;
        if up {
            flow.tally.up_bytes += bytes;
            flow.tally.up_packets += 1;
        } else {
            flow.tally.down_bytes += bytes;
            flow.tally.down_packets += 1;
        }
        flow.last_seen = now;
        state.dirty = true;
    }

    /// Hands over what was counted since the last take and ends idle flows. Called about once
    /// a second, off the per-packet path (it allocates the batch).
    pub fn take(&mut self, now: Millis) -> Batch {
        let mut clients: Vec<(Client, Tally)> = std::mem::take(&mut self.departed);
        for (client, tally) in &mut self.clients {
            if !tally.is_zero() {
                clients.push((*client, std::mem::take(tally)));
            }
        }
        let idle_ms = self.config.flow_idle_ms;
        let mut flows = Vec::new();
        self.flows.retain(|_, state| {
            let ended = state.flow.last_seen.0.saturating_add(idle_ms) <= now.0;
            if state.dirty || ended {
                state.flow.ended = ended;
                flows.push(state.flow);
                state.dirty = false;
            }
            !ended
        });
        flows.sort_by_key(|flow| flow.key);
        Batch {
            clients,
            flows,
            untracked_packets: std::mem::take(&mut self.untracked_packets),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::capture::parse::tests::{GATEWAY, PHONE, ipv4_frame};
    use crate::capture::parse::{PROTO_TCP, PROTO_UDP, parse};

    const LAPTOP: Mac = Mac([0x02, 0, 0, 0, 0, 0x03]);
    const GATEWAY_IP: [u8; 4] = [10, 0, 0, 1];
    const PHONE_IP: [u8; 4] = [10, 0, 0, 2];
    const LAPTOP_IP: [u8; 4] = [10, 0, 0, 3];
    const SERVER_IP: [u8; 4] = [192, 0, 2, 80];

    fn meter(max_flows: usize) -> Meter {
        let mut meter = Meter::new(MeterConfig {
            gateway_mac: GATEWAY,
            local: vec![IpAddr::from(GATEWAY_IP), IpAddr::from([198, 51, 100, 7])],
            max_flows,
            flow_idle_ms: 60_000,
            max_clients: 4,
        });
        meter.set_clients(&[phone()]);
        meter
    }

    fn phone() -> Client {
        Client {
            mac: PHONE,
            ip: IpAddr::from(PHONE_IP),
        }
    }

    fn laptop() -> Client {
        Client {
            mac: LAPTOP,
            ip: IpAddr::from(LAPTOP_IP),
        }
    }

    fn packet(src_mac: Mac, dst_mac: Mac, src: [u8; 4], dst: [u8; 4], len: u16) -> Packet {
        let ports = if src == PHONE_IP || src == LAPTOP_IP {
            (40000, 80)
        } else {
            (80, 40000)
        };
        parse(&ipv4_frame(
            (src_mac, dst_mac),
            (src, dst),
            PROTO_TCP,
            ports,
            len,
            64,
        ))
        .unwrap()
    }

    #[test]
    fn forwarded_packets_count_each_way_and_local_traffic_does_not() {
        let mut meter = meter(16);
        let t = Millis(1_000);
        meter.observe(&packet(PHONE, GATEWAY, PHONE_IP, SERVER_IP, 1_000), t);
        meter.observe(&packet(GATEWAY, PHONE, SERVER_IP, PHONE_IP, 60_000), t);
        // DNS to the gateway, its reply, the portal: not forwarded.
        meter.observe(&packet(PHONE, GATEWAY, PHONE_IP, GATEWAY_IP, 70), t);
        meter.observe(&packet(GATEWAY, PHONE, GATEWAY_IP, PHONE_IP, 120), t);
        // To the gateway's WAN address: delivered locally, not forwarded.
        meter.observe(&packet(PHONE, GATEWAY, PHONE_IP, [198, 51, 100, 7], 300), t);
        // A captive laptop (not allowed) and a spoofed source IP are not billed to anyone.
        meter.observe(&packet(LAPTOP, GATEWAY, LAPTOP_IP, SERVER_IP, 500), t);
        meter.observe(&packet(PHONE, GATEWAY, LAPTOP_IP, SERVER_IP, 500), t);
        // Between two LAN devices (bridged Wi-Fi): not via the gateway's MAC.
        meter.observe(&packet(PHONE, LAPTOP, PHONE_IP, LAPTOP_IP, 800), t);

        let batch = meter.take(Millis(2_000));
        assert_eq!(
            batch.clients,
            [(
                phone(),
                Tally {
                    up_bytes: 1_000,
                    up_packets: 1,
                    down_bytes: 60_000,
                    down_packets: 1,
                }
            )]
        );
        assert_eq!(batch.flows.len(), 1, "{:?}", batch.flows);
        let flow = batch.flows[0];
        assert_eq!(flow.key.client_port, 40000);
        assert_eq!(flow.key.remote_ip, IpAddr::from(SERVER_IP));
        assert_eq!(
            (flow.tally.up_bytes, flow.tally.down_bytes),
            (1_000, 60_000)
        );
        assert!(!flow.ended);

        // Nothing new: an empty batch, the flow kept until it idles out.
        assert_eq!(meter.take(Millis(3_000)), Batch::default());
        let last = meter.take(Millis(61_000));
        assert!(last.flows[0].ended);
        assert_eq!(meter.take(Millis(62_000)), Batch::default());
    }

    /// One device (one MAC) online on several addresses, as a dual-stack phone or a device
    /// with aliases is: each address's upload and download count for that address, as the
    /// kernel's elements count them; another MAC sending from one of them counts for none.
    #[test]
    fn each_address_of_a_device_counts_its_own_upload() {
        let mut meter = meter(16);
        let addresses: Vec<[u8; 4]> = (2..=5).map(|last| [10, 0, 0, last]).collect();
        let clients: Vec<Client> = addresses
            .iter()
            .map(|ip| Client {
                mac: PHONE,
                ip: IpAddr::from(*ip),
            })
            .collect();
        meter.set_clients(&clients);
        let t = Millis(1_000);
        for ip in &addresses {
            meter.observe(&packet(PHONE, GATEWAY, *ip, SERVER_IP, 321), t);
            meter.observe(&packet(GATEWAY, PHONE, SERVER_IP, *ip, 1_440), t);
        }
        meter.observe(&packet(LAPTOP, GATEWAY, addresses[0], SERVER_IP, 500), t);
        let mut batch = meter.take(Millis(2_000)).clients;
        batch.sort_by_key(|(client, _)| *client);
        let each = Tally {
            up_bytes: 321,
            up_packets: 1,
            down_bytes: 1_440,
            down_packets: 1,
        };
        let expected: Vec<(Client, Tally)> = clients.iter().map(|c| (*c, each)).collect();
        assert_eq!(batch, expected);
    }

    #[test]
    fn clients_coming_and_going_keep_their_counts() {
        let mut meter = meter(16);
        meter.observe(&packet(PHONE, GATEWAY, PHONE_IP, SERVER_IP, 100), Millis(1));
        meter.set_clients(&[laptop()]);
        meter.observe(&packet(PHONE, GATEWAY, PHONE_IP, SERVER_IP, 100), Millis(2));
        meter.observe(
            &packet(LAPTOP, GATEWAY, LAPTOP_IP, SERVER_IP, 40),
            Millis(2),
        );
        let batch = meter.take(Millis(3));
        let by_client: HashMap<Client, Tally> = batch.clients.into_iter().collect();
        assert_eq!(by_client[&phone()].up_bytes, 100, "counted while allowed");
        assert_eq!(by_client[&laptop()].up_bytes, 40);
    }

    #[test]
    fn flows_past_the_limit_still_count_for_their_client() {
        let mut meter = meter(1);
        let other = ipv4_frame(
            (PHONE, GATEWAY),
            (PHONE_IP, SERVER_IP),
            PROTO_UDP,
            (5, 6),
            90,
            40,
        );
        meter.observe(&packet(PHONE, GATEWAY, PHONE_IP, SERVER_IP, 10), Millis(1));
        meter.observe(&parse(&other).unwrap(), Millis(1));
        let batch = meter.take(Millis(2));
        assert_eq!(batch.clients[0].1.up_bytes, 100);
        assert_eq!(batch.flows.len(), 1);
        assert_eq!(batch.untracked_packets, 1);
    }

    #[test]
    fn clients_past_the_expected_number_are_metered_once_each() {
        let mut meter = meter(16);
        let many: Vec<Client> = (0..3000u16)
            .map(|n| {
                let [hi, lo] = n.to_be_bytes();
                Client {
                    mac: Mac([2, 0, 0, hi, lo, 1]),
                    ip: IpAddr::from([10, 1, hi, lo]),
                }
            })
            .collect();
        let mut listed = many.clone();
        listed.push(many[0]);
        meter.set_clients(&listed);
        let last = many[2999];
        let IpAddr::V4(ip) = last.ip else {
            unreachable!()
        };
        meter.observe(
            &packet(last.mac, GATEWAY, ip.octets(), SERVER_IP, 700),
            Millis(1),
        );
        let batch = meter.take(Millis(2));
        assert_eq!(batch.clients.len(), 1);
        assert_eq!(batch.clients[0].0, last);
        assert_eq!(batch.clients[0].1.up_bytes, 700);
        assert_eq!(meter.clients.len(), 3000, "the repeated client is one");
    }

    proptest! {
        /// Whatever mix of packets, the clients' tallies add up to the forwarded bytes of
        /// allowed clients, and flows never hold more than their clients.
        #[test]
        fn tallies_add_up(
            packets in proptest::collection::vec((0..4u8, 0..3u8, 20..1500u16), 0..200),
        ) {
            let mut meter = meter(4);
            meter.set_clients(&[phone(), laptop()]);
            let mut expected = 0u64;
            for (who, way, len) in packets {
                let (mac, ip) = match who {
                    0 => (PHONE, PHONE_IP),
                    1 => (LAPTOP, LAPTOP_IP),
                    _ => (Mac([2, 0, 0, 0, 0, 9]), [10, 0, 0, 9]),
                };
                let p = match way {
                    0 => packet(mac, GATEWAY, ip, SERVER_IP, len),
                    1 => packet(GATEWAY, mac, SERVER_IP, ip, len),
                    _ => packet(mac, GATEWAY, ip, GATEWAY_IP, len),
                };
                if who < 2 && way < 2 {
                    expected += u64::from(len);
                }
                meter.observe(&p, Millis(5));
            }
            let batch = meter.take(Millis(6));
            let counted: u64 = batch.clients.iter().map(|(_, t)| t.up_bytes + t.down_bytes).sum();
            prop_assert_eq!(counted, expected);
            let in_flows: u64 = batch.flows.iter().map(|f| f.tally.up_bytes + f.tally.down_bytes).sum();
            prop_assert!(in_flows <= counted);
        }
    }
}
