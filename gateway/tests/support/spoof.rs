//! What a device sends to take over another device's address on the LAN: unsolicited
//! Neighbour Advertisements with the override flag (IPv6) and gratuitous ARP (IPv4), each
//! naming the sender's own MAC, sent for real from an interface in a test namespace.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

use pnet_datalink::{Channel, NetworkInterface};
use rustix::net::{AddressFamily, SendFlags, SocketFlags, SocketType, ipproto, sendto, sockopt};

use super::Netns;

/// `interface` as seen from a thread inside `ns`'s network namespace.
fn interface_in(name: &str) -> NetworkInterface {
    pnet_datalink::interfaces()
        .into_iter()
        .find(|iface| iface.name == name)
        .unwrap_or_else(|| panic!("no interface {name} in this namespace"))
}

fn mac_of(iface: &NetworkInterface) -> [u8; 6] {
    iface
        .mac
        .unwrap_or_else(|| panic!("interface {} has no MAC", iface.name))
        .octets()
}

/// Sends `count` unsolicited Neighbour Advertisements to all nodes from `interface` in `ns`:
/// override flag set, target `target`, its target link-layer address the interface's own
/// MAC. The kernel fills in the ICMPv6 checksum and the link-local source.
pub fn unsolicited_na(ns: &Netns, interface: &str, target: Ipv6Addr, count: usize) {
    ns.in_thread(|| {
        let iface = interface_in(interface);
        let socket = rustix::net::socket_with(
            AddressFamily::INET6,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            Some(ipproto::ICMPV6),
        )
        .expect("an ICMPv6 raw socket (root)");
        // Neighbour discovery is accepted only with a hop limit of 255 (RFC 4861 7.1.2).
        sockopt::set_ipv6_multicast_hops(&socket, 255).expect("hop limit");
        // Type 136, code 0, checksum (kernel's), flags: override (0x20), reserved; the
        // target; option 2 (target link-layer address), 1 unit of 8 bytes, the MAC.
        let mut na = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
        na.extend_from_slice(&target.octets());
        na.extend_from_slice(&[2, 1]);
        na.extend_from_slice(&mac_of(&iface));
        let all_nodes = SocketAddrV6::new(
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
            0,
            0,
            iface.index,
        );
        for _ in 0..count {
            sendto(&socket, &na, SendFlags::empty(), &all_nodes).expect("sending an NA");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    });
}

/// Sends `count` gratuitous ARP requests (sender and target address both `ip`, sender MAC
/// the interface's own) to the broadcast address from `interface` in `ns`.
pub fn gratuitous_arp(ns: &Netns, interface: &str, ip: Ipv4Addr, count: usize) {
    ns.in_thread(|| {
        let iface = interface_in(interface);
        let mac = mac_of(&iface);
        let Channel::Ethernet(mut tx, _rx) =
            pnet_datalink::channel(&iface, pnet_datalink::Config::default())
                .expect("a packet socket (root)")
        else {
            panic!("not an Ethernet channel");
        };
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(&mac);
        frame.extend_from_slice(&[0x08, 0x06]);
        // Ethernet, IPv4, 6 and 4 bytes, request.
        frame.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
        frame.extend_from_slice(&mac);
        frame.extend_from_slice(&ip.octets());
        frame.extend_from_slice(&[0; 6]);
        frame.extend_from_slice(&ip.octets());
        // The Ethernet minimum.
        frame.resize(60, 0);
        for _ in 0..count {
            tx.send_to(&frame, None)
                .expect("a send")
                .expect("sending an ARP");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    });
}
