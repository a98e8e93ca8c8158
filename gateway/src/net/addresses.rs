//! The gateway's own addresses, read over rtnetlink: an `RTM_GETADDR` dump, what `ip addr`
//! shows, without starting `ip`. The request and the parser are pure functions over bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Context as _;

use crate::netlink::{Attributes, NLM_F_DUMP, Reply, Socket, ne_u32, request};

const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
/// `struct ifaddrmsg`: family, prefix length, flags, scope (u8 each), interface index (u32).
const IFADDRMSG_LEN: usize = 8;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// An interface's address and the length of its network prefix, e.g. 10.66.0.1/24.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub address: IpAddr,
    pub prefix: u8,
}

impl Network {
    /// Whether `ip` is on this network (the same family and the same first `prefix` bits).
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn same_prefix(a: u128, b: u128, bits: u32, prefix: u8) -> bool {
            let prefix = u32::from(prefix).min(bits);
            prefix == 0 || (a ^ b) >> (bits - prefix) == 0
        }
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => same_prefix(
                u128::from(u32::from(net)),
                u128::from(u32::from(ip)),
                32,
                self.prefix,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                same_prefix(u128::from(net), u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// The first IPv4 address of an interface.
pub fn interface_ipv4(interface: &str) -> anyhow::Result<Ipv4Addr> {
    let networks =
        interface_networks(interface).with_context(|| format!("lan.interface {interface}"))?;
    first_ipv4(&networks).with_context(|| {
        format!("lan.interface {interface} has no IPv4 address; give it one (the portal is served on it) and start again")
    })
}

fn first_ipv4(networks: &[Network]) -> Option<Ipv4Addr> {
    networks.iter().find_map(|net| match net.address {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    })
}

/// The networks of one interface (the LAN's, whose devices the dashboard refuses).
pub fn interface_networks(interface: &str) -> anyhow::Result<Vec<Network>> {
    networks(Some(interface))
}

/// The gateway's own addresses on every interface: traffic to them is delivered here, not
/// forwarded, so the capture meter must not bill it. Read once at start; an uplink that gets
/// a new address later only matters for traffic aimed at the gateway's WAN address.
pub fn local_addresses() -> anyhow::Result<Vec<IpAddr>> {
    Ok(networks(None)?.into_iter().map(|net| net.address).collect())
}

/// The addresses of `interface`, or of every interface with `None`, IPv4 before IPv6 (the
/// kernel dumps one family after the other), each family in the kernel's order.
fn networks(interface: Option<&str>) -> anyhow::Result<Vec<Network>> {
    let mut socket = Socket::open(None).context("opening an rtnetlink socket to read addresses")?;
    let ifindex = interface
        .map(|name| socket.interface_index(name))
        .transpose()?;
    socket
        .dump(dump_request, |reply, found| {
            found.extend(network(reply, ifindex)?);
            Ok(())
        })
        .with_context(|| match interface {
            Some(name) => format!("reading the addresses of {name} over rtnetlink"),
            None => "reading the addresses over rtnetlink".to_owned(),
        })
}

/// `RTM_GETADDR` dump of every family and interface (the kernel does not filter a dump by
/// the index of a plain request).
fn dump_request(seq: u32) -> Vec<u8> {
    request(RTM_GETADDR, NLM_F_DUMP, seq, &[0; IFADDRMSG_LEN], &[])
}

/// One message of the dump: the address, if it is on `ifindex` (`None`: any) and IPv4 or
/// IPv6. The local address (`IFA_LOCAL`) where there is one, as `ip` shows it: on a
/// point-to-point link `IFA_ADDRESS` is the peer's.
fn network(reply: &Reply<'_>, ifindex: Option<u32>) -> Result<Option<Network>, String> {
    if reply.kind != RTM_NEWADDR {
        return Ok(None);
    }
    let (header, attributes) = reply.split(
        IFADDRMSG_LEN,
        "an address message shorter than its ifaddrmsg",
    )?;
    let (family, prefix) = (header[0], header[1]);
    let on = ne_u32(header, 4);
    if ifindex.is_some_and(|index| index != on) || !matches!(family, AF_INET | AF_INET6) {
        return Ok(None);
    }
    let attributes = Attributes::parse(attributes)?;
    let raw = attributes
        .get(IFA_LOCAL)
        .or_else(|| attributes.get(IFA_ADDRESS))
        .ok_or("an address message without an address")?;
    let address = match (family, raw.len()) {
        (AF_INET, 4) => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
        (AF_INET6, 16) => {
            let octets: [u8; 16] = raw.try_into().map_err(|_| "bad IPv6 address")?;
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        (_, len) => return Err(format!("an address of {len} bytes in family {family}")),
    };
    Ok(Some(Network { address, prefix }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::{attribute, replies};

    /// An `RTM_NEWADDR` message as the kernel sends it.
    fn message(ifindex: u32, prefix: u8, attributes: &[(u16, &[u8])]) -> Vec<u8> {
        let family = if attributes[0].1.len() == 4 {
            AF_INET
        } else {
            AF_INET6
        };
        let mut fixed = vec![family, prefix, 0x80, 0];
        fixed.extend_from_slice(&ifindex.to_ne_bytes());
        let mut bytes = Vec::new();
        for (kind, value) in attributes {
            bytes.extend(attribute(*kind, value));
        }
        bytes.extend(attribute(3, b"lan0\0"));
        request(RTM_NEWADDR, 0x2, 7, &fixed, &bytes)
    }

    fn v6(text: &str) -> Vec<u8> {
        text.parse::<Ipv6Addr>().unwrap().octets().to_vec()
    }

    fn parse(datagram: &[u8], ifindex: Option<u32>) -> Result<Vec<Network>, String> {
        let mut found = Vec::new();
        for reply in replies(datagram)? {
            found.extend(network(&reply, ifindex)?);
        }
        Ok(found)
    }

    /// What the kernel dumps for lo (1) and lan0 (2): IPv4 first, then IPv6.
    fn dump() -> Vec<u8> {
        let mut datagram = Vec::new();
        for part in [
            message(
                1,
                8,
                &[(IFA_ADDRESS, &[127, 0, 0, 1]), (IFA_LOCAL, &[127, 0, 0, 1])],
            ),
            message(
                2,
                24,
                &[(IFA_ADDRESS, &[10, 66, 0, 1]), (IFA_LOCAL, &[10, 66, 0, 1])],
            ),
            message(1, 128, &[(IFA_ADDRESS, &v6("::1"))]),
            message(2, 64, &[(IFA_ADDRESS, &v6("fd00:66::1"))]),
        ] {
            datagram.extend(part);
        }
        datagram
    }

    #[test]
    fn the_lan_address_is_read_from_the_dump() {
        let lan = parse(&dump(), Some(2)).unwrap();
        assert_eq!(first_ipv4(&lan), Some(Ipv4Addr::new(10, 66, 0, 1)));
        let v6_only = message(2, 64, &[(IFA_ADDRESS, &v6("fd00:66::1"))]);
        assert_eq!(first_ipv4(&parse(&v6_only, Some(2)).unwrap()), None);
        assert_eq!(first_ipv4(&parse(&dump(), Some(9)).unwrap()), None);
        assert_eq!(parse(&[], Some(2)), Ok(Vec::new()));
    }

    #[test]
    fn every_interfaces_addresses_without_an_index() {
        let all: Vec<String> = parse(&dump(), None)
            .unwrap()
            .iter()
            .map(|net| format!("{}/{}", net.address, net.prefix))
            .collect();
        assert_eq!(
            all,
            ["127.0.0.1/8", "10.66.0.1/24", "::1/128", "fd00:66::1/64"]
        );
    }

    #[test]
    fn a_point_to_point_address_is_the_local_end() {
        // `ip addr add 10.8.0.1 peer 10.8.0.2 dev tun0`: IFA_ADDRESS is the peer.
        let tunnel = message(
            5,
            32,
            &[(IFA_ADDRESS, &[10, 8, 0, 2]), (IFA_LOCAL, &[10, 8, 0, 1])],
        );
        let found = parse(&tunnel, Some(5)).unwrap();
        assert_eq!(found[0].address, IpAddr::V4(Ipv4Addr::new(10, 8, 0, 1)));
        assert_eq!(found[0].prefix, 32);
    }

    #[test]
    fn networks_hold_the_addresses_under_their_prefix_only() {
        let nets = parse(&dump(), Some(2)).unwrap();
        assert_eq!(nets.len(), 2);
        let on_lan = |ip: &str| nets.iter().any(|n| n.contains(ip.parse().unwrap()));
        assert!(on_lan("10.66.0.200"));
        assert!(on_lan("fd00:66::abcd:1"));
        assert!(!on_lan("10.66.1.2"));
        assert!(!on_lan("127.0.0.1"));
        assert!(!on_lan("fd00:67::1"));
        let any = Network {
            address: "0.0.0.0".parse().unwrap(),
            prefix: 0,
        };
        assert!(any.contains("192.0.2.1".parse().unwrap()));
        assert!(!any.contains("::1".parse().unwrap()));
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        let good = dump();
        for cut in 0..good.len() {
            let _ = parse(&good[..cut], None);
        }
        let one = message(2, 24, &[(IFA_ADDRESS, &[10, 66, 0, 1])]);
        for cut in 16..one.len() {
            let mut cut_message = one[..cut].to_vec();
            cut_message[..4].copy_from_slice(&(cut as u32).to_ne_bytes());
            let _ = parse(&cut_message, None);
        }
        let odd = message(2, 24, &[(IFA_ADDRESS, &[10, 66, 0])]);
        assert!(parse(&odd, None).unwrap_err().contains("3 bytes"));
        let mut fixed = vec![AF_INET, 24, 0, 0];
        fixed.extend_from_slice(&2u32.to_ne_bytes());
        let bare = request(RTM_NEWADDR, 0x2, 7, &fixed, &attribute(3, b"lan0\0"));
        assert!(
            parse(&bare, None)
                .unwrap_err()
                .contains("without an address")
        );
        let mut short = one[..16 + 4].to_vec();
        short[..4].copy_from_slice(&20u32.to_ne_bytes());
        assert!(parse(&short, None).is_err(), "no whole ifaddrmsg");
    }

    #[test]
    fn the_dump_request_asks_for_every_family() {
        let bytes = dump_request(9);
        let reply = replies(&bytes).unwrap()[0];
        assert_eq!(reply.kind, RTM_GETADDR);
        assert_eq!(reply.flags, 0x1 | 0x300, "request, dump");
        assert_eq!(reply.payload, &[0; IFADDRMSG_LEN]);
    }
}
