//! Ending a client's TCP connections the moment its access ends (quota, expiry, kick,
//! revoke), so that its apps see them close instead of waiting for their own heartbeat to
//! time out (a chat app's WebSocket may sit idle for minutes).
//!
//! The firewall's part (see "Cut-off" in [`crate::firewall`]): a segment of a TCP
//! connection marked as cut off (`CUT_MARK`, one bit of its conntrack mark) gets
//! `reject with tcp reset`, so whichever end speaks next is reset with a sequence number it
//! accepts. This module's part: for each of the client's open connections in the conntrack
//! table it sets the mark (over ctnetlink), then makes both ends speak at once: it sends,
//! from a raw socket, a SYN to the server along the connection's original tuple and a
//! SYN/ACK to the client along its reply tuple. Both are locally generated packets of the
//! tracked connection (conntrack ignores a SYN or SYN/ACK inside an open connection, also
//! in the CLOSE state a reset leaves, but keeps it attached), so its NAT applies: the server
//! sees the SYN come from the gateway's WAN address and the masqueraded port. A TCP end
//! that gets a SYN in a synchronized connection answers with an ACK carrying its true
//! sequence numbers (RFC 5961 4.2: a challenge ACK for any SYN; before it, RFC 793 asked
//! for an ACK to any unacceptable segment); that ACK is forwarded, meets the reset rule,
//! and its sender gets a RST it takes. Nothing is guessed and nothing needs capturing: the
//! ends tell their own numbers. An end that stays silent still gets its RST at its next
//! segment.
//!
//! A connection of an allowed client is never touched (only the clients just cut off are
//! looked up, and their challenge ACKs would pass the allow rules anyway), nor one with the
//! gateway itself (the portal, also behind the port-80 redirect): the input chain, not the
//! reset rule, sees those, and a cut-off leaves them open.
//!
//! Cost: one conntrack dump per cut-off (the whole table, filtered here: 10,000 entries
//! took 31-34 ms in a debug build), then per connection of the client one ctnetlink update
//! and two packets, on the daemon's owner thread like the nft calls around it.

mod conntrack;
mod segment;

use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};

use rustix::fd::OwnedFd;
use rustix::net::{
    AddressFamily, SendFlags, SocketFlags, SocketType, ipproto, sendto, socket_with,
};

use crate::firewall::CUT_MARK;
use conntrack::{Conntrack, TcpConnection};
use segment::{ACK, SYN, tcp_segment};

/// Raw sockets (one per family) that send the probes; opening them needs CAP_NET_RAW, the
/// conntrack dump CAP_NET_ADMIN.
#[derive(Debug)]
pub struct Cutoff {
    v4: OwnedFd,
    v6: OwnedFd,
    /// The gateway's own addresses: connections to them are left alone.
    gateway: Vec<IpAddr>,
}

impl Cutoff {
    /// Opens the raw sockets (`IPPROTO_RAW`: we write the IP header ourselves); `gateway`
    /// are the gateway's own addresses.
    pub fn open(gateway: Vec<IpAddr>) -> io::Result<Cutoff> {
        let raw = |family| {
            socket_with(
                family,
                SocketType::RAW,
                SocketFlags::CLOEXEC,
                Some(ipproto::RAW),
            )
        };
        Ok(Cutoff {
            v4: raw(AddressFamily::INET)?,
            v6: raw(AddressFamily::INET6)?,
            gateway,
        })
    }

    /// Makes both ends of every open TCP connection that `clients` opened answer at
    /// once (see the module doc); call after their elements are gone from the firewall.
    /// Returns how many connections were probed; every connection is tried, the last send
    /// error is returned if any failed.
    pub fn end_connections(&self, clients: &[IpAddr]) -> io::Result<usize> {
        let mut probed = 0;
        let mut failed = None;
        let mut conntrack = Conntrack::open()?;
        let connections = conntrack.tcp_connections()?;
        for connection in connections.iter().filter(|c| {
            c.open && clients.contains(&c.original.src.ip()) && !is_local(&self.gateway, c)
        }) {
            // Marked first: the reset rule resets only connections marked as cut off.
            if let Err(err) = conntrack.set_mark_bits(&connection.original, CUT_MARK) {
                failed = Some(err);
                continue;
            }
            for (to, packet) in probes(connection, fastrand::u32(..)) {
                let sent = match to {
                    IpAddr::V4(ip) => sendto(
                        &self.v4,
                        &packet,
                        SendFlags::empty(),
                        &SocketAddrV4::new(ip, 0),
                    ),
                    IpAddr::V6(ip) => sendto(
                        &self.v6,
                        &packet,
                        SendFlags::empty(),
                        &SocketAddrV6::new(ip, 0, 0, 0),
                    ),
                };
                if let Err(err) = sent {
                    failed = Some(io::Error::from(err));
                }
            }
            probed += 1;
        }
        match failed {
            Some(err) => Err(err),
            None => Ok(probed),
        }
    }
}

/// A connection with the gateway itself: to one of its addresses `gateway`, or redirected
/// to one (the reply comes from it).
fn is_local(gateway: &[IpAddr], connection: &TcpConnection) -> bool {
    [connection.original.dst.ip(), connection.reply.src.ip()]
        .iter()
        .any(|ip| gateway.contains(ip))
}

/// The two probes of one connection, each with the address to send it to: a SYN along the
/// original tuple (to the server) and a SYN/ACK along the reply tuple (to the client).
/// The SYN/ACK does not acknowledge the SYN (`seq + 1`): conntrack would take that pair for
/// a new handshake and resynchronise the connection's state on it.
fn probes(connection: &TcpConnection, seq: u32) -> Vec<(IpAddr, Vec<u8>)> {
    let along = |src: SocketAddr, dst: SocketAddr, flags| {
        tcp_segment(src, dst, seq, if flags & ACK != 0 { seq } else { 0 }, flags)
            .map(|packet| (dst.ip(), packet))
    };
    let (original, reply) = (connection.original, connection.reply);
    [
        along(original.src, original.dst, SYN),
        along(reply.src, reply.dst, SYN | ACK),
    ]
    .into_iter()
    .flatten()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::conntrack::Tuple;
    use super::*;

    fn connection(original: (&str, &str), reply: (&str, &str)) -> TcpConnection {
        let addr = |t: &str| t.parse::<SocketAddr>().expect("a test address");
        TcpConnection {
            original: Tuple {
                src: addr(original.0),
                dst: addr(original.1),
            },
            reply: Tuple {
                src: addr(reply.0),
                dst: addr(reply.1),
            },
            open: true,
        }
    }

    #[test]
    fn connections_with_the_gateway_itself_are_left_alone() {
        let gateway = [
            "10.66.0.1".parse().expect("ip"),
            "10.77.0.1".parse().expect("ip"),
        ];
        let portal = connection(
            ("10.66.0.2:40000", "10.66.0.1:8080"),
            ("10.66.0.1:8080", "10.66.0.2:40000"),
        );
        let redirected = connection(
            ("10.66.0.2:40001", "93.184.216.34:80"),
            ("10.66.0.1:8080", "10.66.0.2:40001"),
        );
        let forwarded = connection(
            ("10.66.0.2:40002", "10.77.0.2:443"),
            ("10.77.0.2:443", "10.77.0.1:40002"),
        );
        assert!(is_local(&gateway, &portal));
        assert!(is_local(&gateway, &redirected));
        assert!(!is_local(&gateway, &forwarded));
    }

    #[test]
    fn a_natted_connection_gets_a_syn_to_the_server_and_a_syn_ack_to_the_gateway_side() {
        let addr = |t: &str| t.parse::<SocketAddr>().expect("a test address");
        let natted = connection(
            ("10.66.0.2:40000", "10.77.0.2:9000"),
            ("10.77.0.2:9000", "10.77.0.1:61000"),
        );
        let probes = probes(&natted, 1000);
        assert_eq!(probes.len(), 2);
        let (to, syn) = &probes[0];
        assert_eq!(*to, addr("10.77.0.2:9000").ip());
        assert_eq!(
            &syn[12..16],
            &[10, 66, 0, 2],
            "from the client, as conntrack knows it"
        );
        assert_eq!(syn[33], SYN);
        let (to, syn_ack) = &probes[1];
        // To the reply tuple's destination: conntrack's NAT turns it into the client.
        assert_eq!(*to, addr("10.77.0.1:61000").ip());
        assert_eq!(&syn_ack[16..20], &[10, 77, 0, 1]);
        assert_eq!(u16::from_be_bytes([syn_ack[22], syn_ack[23]]), 61000);
        assert_eq!(syn_ack[33], SYN | ACK);
        let ack = u32::from_be_bytes(syn_ack[28..32].try_into().expect("4 bytes"));
        assert_ne!(ack, 1001, "not the SYN's acknowledgement");
    }
}
