//! Reading the few header fields the meter needs from a captured Ethernet frame. Pure, no
//! allocation, never panics on any input (a proptest feeds it garbage).
//!
//! The byte count is the IP header's total length, not the captured length: the capture
//! keeps only each frame's first 128 bytes (its headers), on veth and on NICs with
//! segmentation offload a frame can be a 64 KiB GSO/GRO super-packet, and the nftables
//! counters the meter is checked against count the IP length too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::net::Mac;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERNET_HEADER: usize = 14;
const IPV6_HEADER: usize = 40;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;

/// What the meter needs of one IP packet in an Ethernet frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    /// IP protocol number (the IPv6 next header when no extension header comes first).
    pub protocol: u8,
    /// TCP/UDP ports; 0 for other protocols and for IPv4 fragments after the first.
    pub src_port: u16,
    pub dst_port: u16,
    /// The IP packet's length as its header states it (billable bytes).
    pub ip_len: u32,
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

fn mac_at(bytes: &[u8], at: usize) -> Option<Mac> {
    Some(Mac(bytes.get(at..at + 6)?.try_into().ok()?))
}

/// The IP packet in `frame`, or `None` for anything else (ARP, a header cut short, …).
pub fn parse(frame: &[u8]) -> Option<Packet> {
    let dst_mac = mac_at(frame, 0)?;
    let src_mac = mac_at(frame, 6)?;
    let mut ethertype = u16_at(frame, 12)?;
    let mut at = ETHERNET_HEADER;
    if ethertype == ETHERTYPE_VLAN {
        ethertype = u16_at(frame, at + 2)?;
        at += 4;
    }
    let ip = frame.get(at..)?;
    let (src_ip, dst_ip, protocol, ip_len, transport) = match ethertype {
        ETHERTYPE_IPV4 => {
            let version_ihl = *ip.first()?;
            if version_ihl >> 4 != 4 {
                return None;
            }
            let header = usize::from(version_ihl & 0x0f) * 4;
            let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            let stated = u32::from(u16_at(ip, 2)?);
            // A super-packet past 64 KiB (BIG TCP, off unless gro_max_size is raised) states
            // 0, and the capture keeps only the headers: what was captured is all there is
            // to count, and the drift check against the kernel's counters will say so.
            let ip_len = if stated == 0 {
                u32::try_from(ip.len()).ok()?
            } else {
                stated
            };
            let fragment_offset = u16_at(ip, 6)? & 0x1fff;
            let transport = (fragment_offset == 0).then(|| ip.get(header..)).flatten();
            (
                IpAddr::V4(Ipv4Addr::from(src)),
                IpAddr::V4(Ipv4Addr::from(dst)),
                *ip.get(9)?,
                ip_len,
                transport,
            )
        }
        ETHERTYPE_IPV6 => {
            if *ip.first()? >> 4 != 6 {
                return None;
            }
            let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            let payload = u32::from(u16_at(ip, 4)?);
            let ip_len = if payload == 0 {
                u32::try_from(ip.len()).ok()?
            } else {
                payload + IPV6_HEADER as u32
            };
            (
                IpAddr::V6(Ipv6Addr::from(src)),
                IpAddr::V6(Ipv6Addr::from(dst)),
                *ip.get(6)?,
                ip_len,
                ip.get(IPV6_HEADER..),
            )
        }
        _ => return None,
    };
    let (src_port, dst_port) = match (protocol, transport) {
        (PROTO_TCP | PROTO_UDP, Some(t)) => (u16_at(t, 0).unwrap_or(0), u16_at(t, 2).unwrap_or(0)),
        _ => (0, 0),
    };
    Some(Packet {
        src_mac,
        dst_mac,
        src_ip,
        dst_ip,
        protocol,
        src_port,
        dst_port,
        ip_len,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;

    pub(crate) const GATEWAY: Mac = Mac([0x02, 0, 0, 0, 0, 0x01]);
    pub(crate) const PHONE: Mac = Mac([0x02, 0, 0, 0, 0, 0x02]);

    /// An Ethernet frame holding an IPv4 packet of `ip_len` bytes (as stated in its header),
    /// of which only the first `captured` IP bytes are present.
    pub(crate) fn ipv4_frame(
        (src_mac, dst_mac): (Mac, Mac),
        (src, dst): ([u8; 4], [u8; 4]),
        protocol: u8,
        ports: (u16, u16),
        ip_len: u16,
        captured: usize,
    ) -> Vec<u8> {
        let mut frame = Vec::new();
        frame.extend_from_slice(&dst_mac.0);
        frame.extend_from_slice(&src_mac.0);
        frame.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let mut ip = vec![0u8; usize::from(ip_len).max(28)];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        ip[9] = protocol;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        ip[20..22].copy_from_slice(&ports.0.to_be_bytes());
        ip[22..24].copy_from_slice(&ports.1.to_be_bytes());
        ip.truncate(captured.min(ip.len()));
        frame.extend_from_slice(&ip);
        frame
    }

    #[test]
    fn an_ipv4_tcp_packet_counts_its_stated_length_even_cut_short() {
        let frame = ipv4_frame(
            (PHONE, GATEWAY),
            ([10, 0, 0, 2], [192, 0, 2, 1]),
            PROTO_TCP,
            (40000, 443),
            65_000,
            1_500,
        );
        assert_eq!(
            parse(&frame),
            Some(Packet {
                src_mac: PHONE,
                dst_mac: GATEWAY,
                src_ip: "10.0.0.2".parse().unwrap(),
                dst_ip: "192.0.2.1".parse().unwrap(),
                protocol: PROTO_TCP,
                src_port: 40000,
                dst_port: 443,
                ip_len: 65_000,
            })
        );
    }

    #[test]
    fn ipv6_vlan_and_fragments() {
        let mut frame = Vec::new();
        frame.extend_from_slice(&GATEWAY.0);
        frame.extend_from_slice(&PHONE.0);
        frame.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        frame.extend_from_slice(&[0, 7]);
        frame.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        let mut ip = vec![0u8; 48];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&1_200u16.to_be_bytes());
        ip[6] = PROTO_UDP;
        ip[8] = 0xfd;
        ip[24] = 0x20;
        ip[40..42].copy_from_slice(&5353u16.to_be_bytes());
        ip[42..44].copy_from_slice(&53u16.to_be_bytes());
        frame.extend_from_slice(&ip);
        let packet = parse(&frame).unwrap();
        assert_eq!(packet.ip_len, 1_240);
        assert_eq!((packet.src_port, packet.dst_port), (5353, 53));
        assert_eq!(packet.src_ip, "fd00::".parse::<IpAddr>().unwrap());

        // A later IPv4 fragment has no ports, but its bytes count.
        let mut fragment = ipv4_frame(
            (PHONE, GATEWAY),
            ([10, 0, 0, 2], [192, 0, 2, 1]),
            PROTO_UDP,
            (1, 2),
            600,
            600,
        );
        fragment[ETHERNET_HEADER + 6..ETHERNET_HEADER + 8].copy_from_slice(&185u16.to_be_bytes());
        let packet = parse(&fragment).unwrap();
        assert_eq!(
            (packet.src_port, packet.dst_port, packet.ip_len),
            (0, 0, 600)
        );
    }

    #[test]
    fn non_ip_and_short_frames_are_not_packets() {
        let mut arp = ipv4_frame((PHONE, GATEWAY), ([0; 4], [0; 4]), 0, (0, 0), 28, 28);
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(parse(&arp), None);
        let frame = ipv4_frame(
            (PHONE, GATEWAY),
            ([1; 4], [2; 4]),
            PROTO_TCP,
            (1, 2),
            40,
            40,
        );
        assert_eq!(parse(&frame[..ETHERNET_HEADER + 19]), None);
        assert_eq!(parse(&[]), None);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(frame in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&frame);
        }
    }
}
