//! The neighbour table (ARP for IPv4, neighbour discovery for IPv6), read over rtnetlink:
//! which MAC uses which address on the LAN. The portal finds a device's MAC by the address
//! it connects from, IPv6 included; every tick the daemon learns each online device's other
//! addresses from it (its SLAAC and privacy IPv6 addresses, its IPv4 address after an IPv6
//! login; see `Core::learn_addresses`).
//!
//! The kernel has an entry for an address once it has exchanged packets with it: ARP or
//! neighbour discovery for the gateway's own address (a phone's DNS queries to the gateway,
//! its router solicitations), or replies the gateway forwarded to it.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::sockopt::{self, Timeout};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

use crate::net::{Client, Mac};
use crate::netlink::{
    Attributes, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_HDRLEN,
    replies,
};

const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
/// `struct ndmsg`: family, two pad bytes, interface index (i32), state (u16), flags, type.
const NDMSG_LEN: usize = 12;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
/// The states of an entry whose MAC is known and was in use lately (`NUD_REACHABLE`,
/// `NUD_STALE`, `NUD_DELAY`, `NUD_PROBE`, `NUD_PERMANENT`): not `NUD_INCOMPLETE` or
/// `NUD_FAILED` (no answer), nor `NUD_NOARP` (no MAC).
const NUD_KNOWN: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x80;
/// How long to wait for the kernel's answer, which comes at once: this only bounds one
/// that never comes.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// A dump datagram is at most 32 KiB (the kernel's `netlink_dump` cap).
const RECV_BUFFER: usize = 64 * 1024;
/// A dump the kernel marks interrupted (the table changed under it) is read again, at
/// most this many times.
const DUMP_ATTEMPTS: usize = 3;

/// A netlink socket for reading the neighbour table, in the network namespace it was
/// opened in.
pub struct NeighbourTable {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for NeighbourTable {
    // Without the 64 KiB receive buffer.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NeighbourTable")
            .field("fd", &self.fd)
            .finish_non_exhaustive()
    }
}

impl NeighbourTable {
    pub fn open() -> io::Result<Self> {
        // `None`: protocol 0, which for netlink is `NETLINK_ROUTE`.
        let fd = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, None)?;
        rustix::net::bind(&fd, &SocketAddrNetlink::new(0, 0))?;
        sockopt::set_socket_timeout(&fd, Timeout::Recv, Some(REPLY_TIMEOUT))?;
        Ok(NeighbourTable {
            fd,
            seq: 1,
            buf: vec![0; RECV_BUFFER],
        })
    }

    /// Every neighbour with a known MAC and an address worth letting through (see
    /// [`usable`]), on the interface with index `ifindex`, or on every interface with 0.
    pub fn read(&mut self, ifindex: u32) -> io::Result<Vec<Client>> {
        for _ in 0..DUMP_ATTEMPTS {
            let seq = self.seq;
            self.seq = self.seq.wrapping_add(1);
            rustix::net::send(&self.fd, &dump_request(seq), SendFlags::empty())?;
            let mut found = Vec::new();
            let mut interrupted = false;
            loop {
                let (_, len) = rustix::net::recv(&self.fd, &mut self.buf[..], RecvFlags::empty())?;
                let datagram = self.buf.get(..len).ok_or_else(|| {
                    io::Error::other(format!("a neighbour reply of {len} bytes was cut"))
                })?;
                match read_reply(datagram, seq, ifindex, &mut found).map_err(io::Error::other)? {
                    Progress::More { interrupted: i } => interrupted |= i,
                    Progress::Done { interrupted: i } => {
                        interrupted |= i;
                        break;
                    }
                }
            }
            if !interrupted {
                return Ok(found);
            }
        }
        Err(io::Error::other(
            "the neighbour table kept changing while it was read",
        ))
    }
}

/// The MAC of the device using `ip` on any interface, if the kernel knows it.
pub fn lookup_mac(ip: IpAddr) -> Option<Mac> {
    let mut table = NeighbourTable::open()
        .inspect_err(|err| tracing::warn!(error = %err, "cannot open the neighbour table"))
        .ok()?;
    let found = table
        .read(0)
        .inspect_err(|err| tracing::warn!(error = %err, "cannot read the neighbour table"))
        .ok()?;
    found.into_iter().find(|c| c.ip == ip).map(|c| c.mac)
}

/// The index of interface `name`, for [`NeighbourTable::read`].
pub fn interface_index(name: &str) -> io::Result<u32> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))?;
    text.trim()
        .parse()
        .map_err(|_| io::Error::other(format!("interface {name}: index {:?}", text.trim())))
}

/// `RTM_GETNEIGH` dump of every family.
fn dump_request(seq: u32) -> Vec<u8> {
    let len = NLMSG_HDRLEN + NDMSG_LEN;
    let mut buf = Vec::with_capacity(len);
    buf.extend_from_slice(&(len as u32).to_ne_bytes());
    buf.extend_from_slice(&RTM_GETNEIGH.to_ne_bytes());
    buf.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&[0; NDMSG_LEN]);
    buf
}

#[derive(Debug, PartialEq, Eq)]
enum Progress {
    More { interrupted: bool },
    Done { interrupted: bool },
}

/// One datagram of the dump answering `seq`: its neighbours on `ifindex` (0: any) into
/// `found`.
fn read_reply(
    datagram: &[u8],
    seq: u32,
    ifindex: u32,
    found: &mut Vec<Client>,
) -> Result<Progress, String> {
    let mut interrupted = false;
    for reply in replies(datagram)? {
        if reply.seq != seq {
            continue;
        }
        interrupted |= reply.flags & NLM_F_DUMP_INTR != 0;
        match reply.kind {
            NLMSG_DONE => return Ok(Progress::Done { interrupted }),
            NLMSG_ERROR => {
                let (errno, _) = reply.error()?;
                return Err(format!(
                    "the kernel refused the neighbour dump: {}",
                    io::Error::from_raw_os_error(errno)
                ));
            }
            RTM_NEWNEIGH => found.extend(neighbour(reply.payload, ifindex)?),
            _ => {}
        }
    }
    Ok(Progress::More { interrupted })
}

/// One `RTM_NEWNEIGH` payload: the neighbour, if it is on `ifindex` (0: any), its MAC is
/// known and its address [`usable`].
fn neighbour(payload: &[u8], ifindex: u32) -> Result<Option<Client>, String> {
    let header = payload
        .get(..NDMSG_LEN)
        .ok_or("a neighbour message shorter than its ndmsg")?;
    let on = u32::from_ne_bytes([header[4], header[5], header[6], header[7]]);
    let state = u16::from_ne_bytes([header[8], header[9]]);
    if (ifindex != 0 && on != ifindex) || state & NUD_KNOWN == 0 {
        return Ok(None);
    }
    let attributes = Attributes::parse(&payload[NDMSG_LEN..])?;
    let (Some(dst), Some(lladdr)) = (attributes.get(NDA_DST), attributes.get(NDA_LLADDR)) else {
        return Ok(None);
    };
    let ip = match dst.len() {
        4 => IpAddr::V4(Ipv4Addr::new(dst[0], dst[1], dst[2], dst[3])),
        16 => {
            let octets: [u8; 16] = dst.try_into().map_err(|_| "bad IPv6 address")?;
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        other => return Err(format!("a neighbour address of {other} bytes")),
    };
    let Ok(mac) = <[u8; 6]>::try_from(lladdr) else {
        // Not Ethernet (an IP-in-IP tunnel's neighbours, say): not a LAN device.
        return Ok(None);
    };
    Ok(usable(ip).then_some(Client { mac: Mac(mac), ip }))
}

/// An address a device uses to reach the internet through the gateway: not link-local
/// (never forwarded), multicast, unspecified or loopback.
fn usable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_link_local()
                || v4.is_multicast()
                || v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_broadcast())
        }
        IpAddr::V6(v6) => {
            !(v6.is_unicast_link_local()
                || v6.is_multicast()
                || v6.is_unspecified()
                || v6.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `RTM_NEWNEIGH` message as the kernel sends it.
    fn message(seq: u32, ifindex: u32, state: u16, dst: &[u8], lladdr: Option<&[u8]>) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&[if dst.len() == 4 { 2 } else { 10 }, 0, 0, 0]);
        body.extend_from_slice(&ifindex.to_ne_bytes());
        body.extend_from_slice(&state.to_ne_bytes());
        body.extend_from_slice(&[0, 1]);
        let mut attribute = |kind: u16, value: &[u8]| {
            body.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
            body.extend_from_slice(&kind.to_ne_bytes());
            body.extend_from_slice(value);
            body.resize(crate::netlink::align4(body.len()), 0);
        };
        attribute(NDA_DST, dst);
        if let Some(lladdr) = lladdr {
            attribute(NDA_LLADDR, lladdr);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&RTM_NEWNEIGH.to_ne_bytes());
        out.extend_from_slice(&0x2u16.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn done(seq: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&20u32.to_ne_bytes());
        out.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        out.extend_from_slice(&0x2u16.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&0i32.to_ne_bytes());
        out
    }

    const MAC: [u8; 6] = [2, 0, 0, 0x66, 0, 2];
    const REACHABLE: u16 = 0x02;
    const STALE: u16 = 0x04;
    const FAILED: u16 = 0x20;

    fn v6(text: &str) -> Vec<u8> {
        text.parse::<Ipv6Addr>().unwrap().octets().to_vec()
    }

    #[test]
    fn the_dump_gives_the_lans_usable_neighbours() {
        let mut datagram = Vec::new();
        for part in [
            message(7, 3, REACHABLE, &[10, 66, 0, 2], Some(&MAC)),
            message(7, 3, STALE, &v6("fd00:66::2"), Some(&MAC)),
            message(7, 3, STALE, &v6("2001:db8::1234"), Some(&MAC)),
            // Link-local, another interface, no answer, no MAC, another request's.
            message(7, 3, REACHABLE, &v6("fe80::1"), Some(&MAC)),
            message(7, 4, REACHABLE, &[10, 99, 0, 2], Some(&MAC)),
            message(7, 3, FAILED, &[10, 66, 0, 9], Some(&MAC)),
            message(7, 3, REACHABLE, &[10, 66, 0, 8], None),
            message(6, 3, REACHABLE, &[10, 66, 0, 7], Some(&MAC)),
        ] {
            datagram.extend(part);
        }
        let mut found = Vec::new();
        assert_eq!(
            read_reply(&datagram, 7, 3, &mut found),
            Ok(Progress::More { interrupted: false })
        );
        assert_eq!(
            read_reply(&done(7), 7, 3, &mut found),
            Ok(Progress::Done { interrupted: false })
        );
        let ips: Vec<String> = found.iter().map(|c| c.ip.to_string()).collect();
        assert_eq!(ips, ["10.66.0.2", "fd00:66::2", "2001:db8::1234"]);
        assert!(found.iter().all(|c| c.mac == Mac(MAC)));
    }

    #[test]
    fn the_dump_request_asks_for_every_family() {
        let request = dump_request(9);
        assert_eq!(request.len(), 28);
        assert_eq!(u16::from_ne_bytes([request[4], request[5]]), RTM_GETNEIGH);
        assert_eq!(
            u32::from_ne_bytes([request[8], request[9], request[10], request[11]]),
            9
        );
        assert_eq!(&request[16..], &[0; 12]);
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        let good = message(1, 3, REACHABLE, &[10, 66, 0, 2], Some(&MAC));
        for cut in 0..good.len() {
            let mut found = Vec::new();
            let _ = read_reply(&good[..cut], 1, 0, &mut found);
        }
        let mut found = Vec::new();
        let odd = message(1, 3, REACHABLE, &[10, 66, 0], Some(&MAC));
        assert!(read_reply(&odd, 1, 0, &mut found).is_err());
    }
}
