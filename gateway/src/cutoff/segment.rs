//! TCP segments built by hand (IP header included) for a raw socket: the probes that make
//! each end of a cut-off connection speak at once. Pure functions, no I/O.

use std::net::{IpAddr, SocketAddr};

const TCP: u8 = 6;
const TCP_HEADER: usize = 20;
const IPV4_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
pub(crate) const SYN: u8 = 0x02;
pub(crate) const ACK: u8 = 0x10;

/// A TCP segment without options or payload from `src` to `dst` with `flags`, in an IPv4
/// or IPv6 packet (TTL / hop limit 64), checksums filled in. `None` if the two addresses
/// are of different families.
pub(crate) fn tcp_segment(
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: u32,
    flags: u8,
) -> Option<Vec<u8>> {
    let mut packet = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut ip = vec![0u8; IPV4_HEADER];
            ip[0] = 0x45; // version 4, 5 words of header
            ip[2..4].copy_from_slice(&((IPV4_HEADER + TCP_HEADER) as u16).to_be_bytes());
            ip[8] = 64;
            ip[9] = TCP;
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            let sum = checksum(&[&ip]);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            ip
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut ip = vec![0u8; IPV6_HEADER];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&(TCP_HEADER as u16).to_be_bytes());
            ip[6] = TCP;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&s.octets());
            ip[24..40].copy_from_slice(&d.octets());
            ip
        }
        _ => return None,
    };
    let mut tcp = [0u8; TCP_HEADER];
    tcp[0..2].copy_from_slice(&src.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = ((TCP_HEADER / 4) as u8) << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&1024u16.to_be_bytes()); // window: any, nothing is sent
    let sum = checksum(&[&pseudo_header(src.ip(), dst.ip(), TCP_HEADER), &tcp]);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    packet.extend_from_slice(&tcp);
    Some(packet)
}

/// The pseudo-header TCP's checksum covers (RFC 9293 3.1, RFC 8200 8.1).
fn pseudo_header(src: IpAddr, dst: IpAddr, tcp_len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, TCP]);
            p.extend_from_slice(&(tcp_len as u16).to_be_bytes());
        }
        _ => {
            for ip in [src, dst] {
                if let IpAddr::V6(ip) = ip {
                    p.extend_from_slice(&ip.octets());
                }
            }
            p.extend_from_slice(&(tcp_len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, TCP]);
        }
    }
    p
}

/// The Internet checksum (RFC 1071) of the parts one after the other (each of even length,
/// as headers are).
pub(crate) fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        for word in part.chunks(2) {
            let hi = u32::from(word[0]) << 8;
            let lo = word.get(1).copied().map_or(0, u32::from);
            sum += hi | lo;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("a test address")
    }

    #[test]
    fn checksum_matches_rfc_1071_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2, checksum 220d.
        assert_eq!(
            checksum(&[&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]]),
            0x220d
        );
    }

    #[test]
    fn an_ipv4_syn_is_laid_out_and_its_checksums_verify() {
        let p = tcp_segment(addr("10.66.0.2:40000"), addr("10.77.0.2:9000"), 7, 0, SYN)
            .expect("one family");
        assert_eq!(p.len(), 40);
        assert_eq!(p[0], 0x45);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 40);
        assert_eq!((p[8], p[9]), (64, 6));
        assert_eq!(&p[12..16], &[10, 66, 0, 2]);
        assert_eq!(&p[16..20], &[10, 77, 0, 2]);
        // A header with its checksum in sums to zero.
        assert_eq!(checksum(&[&p[..20]]), 0);
        let tcp = &p[20..];
        assert_eq!(u16::from_be_bytes([tcp[0], tcp[1]]), 40000);
        assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), 9000);
        assert_eq!(u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]), 7);
        assert_eq!((tcp[12], tcp[13]), (0x50, SYN));
        let pseudo = pseudo_header(p_ip(&p[12..16]), p_ip(&p[16..20]), 20);
        assert_eq!(checksum(&[&pseudo, tcp]), 0);
    }

    fn p_ip(octets: &[u8]) -> IpAddr {
        let o: [u8; 4] = octets.try_into().expect("4 bytes");
        IpAddr::from(o)
    }

    #[test]
    fn a_known_ipv4_segment_has_the_checksums_worked_out_separately() {
        // Worked out separately with Python's struct module (RFC 1071 sums over the packed
        // headers): IPv4 10.77.0.2 -> 10.66.0.2, TTL 64; TCP 9000 -> 40000, seq 1, ack 2,
        // SYN|ACK, window 1024: checksums 0x663e (IP) and 0xd7d4 (TCP).
        let p = tcp_segment(
            addr("10.77.0.2:9000"),
            addr("10.66.0.2:40000"),
            1,
            2,
            SYN | ACK,
        )
        .expect("one family");
        assert_eq!(u16::from_be_bytes([p[10], p[11]]), 0x663e);
        assert_eq!(u16::from_be_bytes([p[36], p[37]]), 0xd7d4);
    }

    #[test]
    fn an_ipv6_segment_is_laid_out_and_its_checksum_verifies() {
        let (src, dst) = (addr("[fd00:66::2]:40000"), addr("[fd00:77::2]:443"));
        let p = tcp_segment(src, dst, u32::MAX, 5, SYN | ACK).expect("one family");
        assert_eq!(p.len(), 60);
        assert_eq!(p[0] >> 4, 6);
        assert_eq!(u16::from_be_bytes([p[4], p[5]]), 20);
        assert_eq!((p[6], p[7]), (6, 64));
        assert_eq!(
            &p[8..24],
            &"fd00:66::2"
                .parse::<std::net::Ipv6Addr>()
                .expect("v6")
                .octets()
        );
        assert_eq!(p[40 + 13], SYN | ACK);
        let pseudo = pseudo_header(src.ip(), dst.ip(), 20);
        assert_eq!(checksum(&[&pseudo, &p[40..]]), 0);
    }

    #[test]
    fn mixed_families_give_nothing() {
        assert!(tcp_segment(addr("10.0.0.1:1"), addr("[::1]:2"), 0, 0, SYN).is_none());
    }
}
