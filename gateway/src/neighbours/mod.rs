//! The neighbour table (ARP for IPv4, neighbour discovery for IPv6), read over rtnetlink:
//! which MAC uses which address on the LAN. The portal finds a device's MAC by the address
//! it connects from, IPv6 included; every tick the daemon learns each online device's other
//! addresses from it (its SLAAC and privacy IPv6 addresses, its IPv4 address after an IPv6
//! login; see `Core::learn_addresses`).
//!
//! The kernel has an entry for an address once it has exchanged packets with it: ARP or
//! neighbour discovery for the gateway's own address (a phone's DNS queries to the gateway,
//! its router solicitations), or replies the gateway forwarded to it.
//!
//! Any device on the LAN can rewrite an entry (an unsolicited Neighbour Advertisement with
//! the override flag, a gratuitous ARP): [`guard`] decides what the table may tell the core
//! about the addresses of online devices, [`NeighbourTable::probe`] points an entry back at
//! its holder and has the kernel ask the holder whether it still answers, and
//! [`NeighbourWatch`] tells of each change as the kernel makes it.

pub mod guard;
pub mod limits;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;

use crate::net::{Client, Mac};
use crate::netlink::{
    Attributes, NLM_F_ACK, NLM_F_DUMP, RecvFlags, Reply, Socket, attribute, ne_u32, replies,
    request,
};

const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// `struct ndmsg`: family, two pad bytes, interface index (i32), state (u16), flags, type.
const NDMSG_LEN: usize = 12;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
/// The states of an entry whose MAC is known and was confirmed or in use lately
/// (`NUD_REACHABLE`, `NUD_STALE`, `NUD_DELAY`, `NUD_PERMANENT`).
const NUD_ANSWERED: u16 = 0x02 | 0x04 | 0x08 | 0x80;
/// The kernel is sending unicast solicitations to the entry's MAC, waiting for an answer.
const NUD_PROBE: u16 = 0x10;
/// No MAC: the kernel is looking for one (`NUD_INCOMPLETE`), or gave up (`NUD_FAILED`).
const NUD_UNANSWERED: u16 = 0x01 | 0x20;

/// How far the kernel got with a neighbour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reach {
    /// Its MAC answered or was in use lately (REACHABLE, STALE, DELAY, PERMANENT).
    Answered,
    /// The kernel asks its MAC, unicast, whether it still answers (PROBE).
    Probing,
    /// No MAC: it did not answer (FAILED), or the kernel is still looking (INCOMPLETE).
    Unanswered,
}

/// One entry of the neighbour table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Entry {
    pub ip: IpAddr,
    /// `None` when [`Reach::Unanswered`].
    pub mac: Option<Mac>,
    pub reach: Reach,
}

impl Entry {
    /// The device using the address, if the kernel has a MAC for it.
    pub fn client(&self) -> Option<Client> {
        self.mac.map(|mac| Client { mac, ip: self.ip })
    }
}

/// The neighbour table, read over an rtnetlink socket of the network namespace it was
/// opened in.
#[derive(Debug)]
pub struct NeighbourTable {
    socket: Socket,
}

impl NeighbourTable {
    pub fn open() -> io::Result<Self> {
        Ok(NeighbourTable {
            socket: Socket::open(None)?,
        })
    }

    /// The index of interface `name`, for [`NeighbourTable::read`] and
    /// [`NeighbourTable::entries`].
    pub fn interface_index(&self, name: &str) -> io::Result<u32> {
        self.socket.interface_index(name)
    }

    /// Every neighbour with a known MAC and an address worth letting through (see
    /// [`usable`]), on the interface with index `ifindex`, or on every interface with 0.
    pub fn read(&mut self, ifindex: u32) -> io::Result<Vec<Client>> {
        self.socket.dump(dump_request, |reply, found| {
            found.extend(neighbour(reply, ifindex)?);
            Ok(())
        })
    }

    /// Every entry for a [`usable`] address on the interface with index `ifindex` (0: any),
    /// also those without a MAC (no answer), with how far the kernel got.
    pub fn entries(&mut self, ifindex: u32) -> io::Result<Vec<Entry>> {
        self.socket.dump(dump_request, |reply, found| {
            found.extend(entry(reply, ifindex)?);
            Ok(())
        })
    }

    /// Points the entry of `client.ip` on interface `ifindex` at `client.mac` in the PROBE
    /// state: the kernel sends its unicast solicitations (ARP requests, Neighbour
    /// Solicitations; `ucast_solicit`, 3, one each `retrans_time`, 1 s) to that MAC at once,
    /// and the entry becomes REACHABLE when it answers, FAILED after about 3 s when it does
    /// not. Meanwhile packets to the address go to that MAC, not to whoever rewrote the
    /// entry.
    pub fn probe(&mut self, ifindex: u32, client: Client) -> io::Result<()> {
        self.socket
            .acknowledged(|seq| probe_request(seq, ifindex, client))
    }
}

/// The kernel's notifications of the neighbour entries that change (`RTMGRP_NEIGH`), so
/// that a claim on an online device's address is seen when it is made, not at the next
/// reading of the table. Read by a task: its own non-blocking socket (not a [`Socket`],
/// which blocks up to its reply time-out), so that the daemon's stop ends the wait at once.
#[derive(Debug)]
pub struct NeighbourWatch {
    socket: tokio::io::unix::AsyncFd<OwnedFd>,
    buf: Vec<u8>,
    ifindex: u32,
}

/// The rtnetlink multicast group of neighbour changes.
const RTMGRP_NEIGH: u32 = 0x4;
/// A notification datagram holds a few entries; a dump's largest is 32 KiB.
const WATCH_BUFFER: usize = 64 * 1024;

impl NeighbourWatch {
    /// Watches the entries of the interface with index `ifindex`. Needs the tokio runtime.
    pub fn open(ifindex: u32) -> io::Result<Self> {
        use rustix::net::{AddressFamily, SocketFlags, SocketType, netlink::SocketAddrNetlink};
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        rustix::net::bind(&fd, &SocketAddrNetlink::new(0, RTMGRP_NEIGH))?;
        // Deprecated for types whose descriptor may change or close under it; an `OwnedFd`
        // owned by the `AsyncFd` cannot, and the safe way (`register`) takes `unsafe`.
        #[allow(deprecated)]
        let socket = tokio::io::unix::AsyncFd::new(fd)?;
        Ok(NeighbourWatch {
            socket,
            buf: vec![0; WATCH_BUFFER],
            ifindex,
        })
    }

    /// The entries of the next notification, once one comes. Entries deleted are not told.
    /// A flood the socket could not hold is an error (`ENOBUFS`); the next call goes on.
    pub async fn changed(&mut self) -> io::Result<Vec<Entry>> {
        loop {
            let mut ready = self.socket.readable().await?;
            let buf = &mut self.buf;
            let received = ready.try_io(|socket| {
                Ok(rustix::net::recv(socket.get_ref(), &mut buf[..], RecvFlags::empty())?.1)
            });
            if let Ok(len) = received {
                return self.entries(len?);
            }
        }
    }

    /// The entries of the notifications already waiting, without waiting for one.
    pub fn waiting(&mut self) -> io::Result<Vec<Entry>> {
        match rustix::net::recv(
            self.socket.get_ref(),
            &mut self.buf[..],
            RecvFlags::DONTWAIT,
        ) {
            Ok((_, len)) => self.entries(len),
            Err(rustix::io::Errno::AGAIN) => Ok(Vec::new()),
            Err(errno) => Err(errno.into()),
        }
    }

    fn entries(&self, len: usize) -> io::Result<Vec<Entry>> {
        let datagram = self.buf.get(..len).ok_or_else(|| {
            io::Error::other(format!("a netlink notification of {len} bytes was cut"))
        })?;
        let mut found = Vec::new();
        for reply in replies(datagram).map_err(io::Error::other)? {
            found.extend(entry(&reply, self.ifindex).map_err(io::Error::other)?);
        }
        Ok(found)
    }
}

/// `RTM_NEWNEIGH` (create or replace, acknowledged) of `client` on `ifindex` in `NUD_PROBE`.
fn probe_request(seq: u32, ifindex: u32, client: Client) -> Vec<u8> {
    let (family, dst) = match client.ip {
        IpAddr::V4(v4) => (AF_INET, v4.octets().to_vec()),
        IpAddr::V6(v6) => (AF_INET6, v6.octets().to_vec()),
    };
    let mut fixed = vec![family, 0, 0, 0];
    fixed.extend_from_slice(&ifindex.to_ne_bytes());
    fixed.extend_from_slice(&NUD_PROBE.to_ne_bytes());
    fixed.extend_from_slice(&[0, 0]);
    let mut attributes = attribute(NDA_DST, &dst);
    attributes.extend(attribute(NDA_LLADDR, &client.mac.0));
    request(
        RTM_NEWNEIGH,
        NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        seq,
        &fixed,
        &attributes,
    )
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

/// `RTM_GETNEIGH` dump of every family.
fn dump_request(seq: u32) -> Vec<u8> {
    request(RTM_GETNEIGH, NLM_F_DUMP, seq, &[0; NDMSG_LEN], &[])
}

/// One message of the dump: the neighbour, if it is on `ifindex` (0: any), its MAC is
/// known and its address [`usable`].
fn neighbour(reply: &Reply<'_>, ifindex: u32) -> Result<Option<Client>, String> {
    Ok(entry(reply, ifindex)?.and_then(|entry| entry.client()))
}

/// One message of the dump: the entry, if it is on `ifindex` (0: any), its address is
/// [`usable`], and it has a MAC or is waiting for one (not `NUD_NOARP`, not `NUD_NONE`).
fn entry(reply: &Reply<'_>, ifindex: u32) -> Result<Option<Entry>, String> {
    if reply.kind != RTM_NEWNEIGH {
        return Ok(None);
    }
    let (header, attributes) =
        reply.split(NDMSG_LEN, "a neighbour message shorter than its ndmsg")?;
    let on = ne_u32(header, 4);
    let state = u16::from_ne_bytes([header[8], header[9]]);
    let reach = if state & NUD_ANSWERED != 0 {
        Reach::Answered
    } else if state & NUD_PROBE != 0 {
        Reach::Probing
    } else if state & NUD_UNANSWERED != 0 {
        Reach::Unanswered
    } else {
        return Ok(None);
    };
    if ifindex != 0 && on != ifindex {
        return Ok(None);
    }
    let attributes = Attributes::parse(attributes)?;
    let Some(dst) = attributes.get(NDA_DST) else {
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
    let mac = match (reach, attributes.get(NDA_LLADDR)) {
        // The kernel keeps the MAC it gave up on, but does not show it.
        (Reach::Unanswered, _) => None,
        (_, Some(lladdr)) => match <[u8; 6]>::try_from(lladdr) {
            Ok(mac) => Some(Mac(mac)),
            // Not Ethernet (an IP-in-IP tunnel's neighbours, say): not a LAN device.
            Err(_) => return Ok(None),
        },
        (_, None) => return Ok(None),
    };
    Ok(usable(ip).then_some(Entry { ip, mac, reach }))
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
    fn message(ifindex: u32, state: u16, dst: &[u8], lladdr: Option<&[u8]>) -> Vec<u8> {
        let mut fixed = vec![if dst.len() == 4 { 2 } else { 10 }, 0, 0, 0];
        fixed.extend_from_slice(&ifindex.to_ne_bytes());
        fixed.extend_from_slice(&state.to_ne_bytes());
        fixed.extend_from_slice(&[0, 1]);
        let mut attributes = attribute(NDA_DST, dst);
        if let Some(lladdr) = lladdr {
            attributes.extend(attribute(NDA_LLADDR, lladdr));
        }
        request(RTM_NEWNEIGH, 0x2, 7, &fixed, &attributes)
    }

    fn parse_all(datagram: &[u8], ifindex: u32) -> Result<Vec<Client>, String> {
        let mut found = Vec::new();
        for reply in replies(datagram)? {
            found.extend(neighbour(&reply, ifindex)?);
        }
        Ok(found)
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
            message(3, REACHABLE, &[10, 66, 0, 2], Some(&MAC)),
            message(3, STALE, &v6("fd00:66::2"), Some(&MAC)),
            message(3, STALE, &v6("2001:db8::1234"), Some(&MAC)),
            // Link-local, another interface, no answer, no MAC.
            message(3, REACHABLE, &v6("fe80::1"), Some(&MAC)),
            message(4, REACHABLE, &[10, 99, 0, 2], Some(&MAC)),
            message(3, FAILED, &[10, 66, 0, 9], Some(&MAC)),
            message(3, REACHABLE, &[10, 66, 0, 8], None),
        ] {
            datagram.extend(part);
        }
        let found = parse_all(&datagram, 3).unwrap();
        let ips: Vec<String> = found.iter().map(|c| c.ip.to_string()).collect();
        assert_eq!(ips, ["10.66.0.2", "fd00:66::2", "2001:db8::1234"]);
        assert!(found.iter().all(|c| c.mac == Mac(MAC)));
        assert_eq!(parse_all(&datagram, 0).unwrap().len(), 4, "any interface");
    }

    #[test]
    fn entries_tell_probing_and_unanswered_neighbours_apart() {
        const PROBE: u16 = 0x10;
        const INCOMPLETE: u16 = 0x01;
        const NOARP: u16 = 0x40;
        let mut datagram = Vec::new();
        for part in [
            message(3, PROBE, &v6("fd00:66::2"), Some(&MAC)),
            // The kernel sends no MAC with a FAILED entry; one sent is not shown either.
            message(3, FAILED, &[10, 66, 0, 9], Some(&MAC)),
            message(3, INCOMPLETE, &v6("fd00:66::9"), None),
            message(3, NOARP, &[10, 66, 0, 7], None),
            message(3, STALE, &[10, 66, 0, 8], None),
        ] {
            datagram.extend(part);
        }
        let mut found = Vec::new();
        for reply in replies(&datagram).unwrap() {
            found.extend(entry(&reply, 3).unwrap());
        }
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert_eq!(
            found,
            [
                Entry {
                    ip: ip("fd00:66::2"),
                    mac: Some(Mac(MAC)),
                    reach: Reach::Probing
                },
                Entry {
                    ip: ip("10.66.0.9"),
                    mac: None,
                    reach: Reach::Unanswered
                },
                Entry {
                    ip: ip("fd00:66::9"),
                    mac: None,
                    reach: Reach::Unanswered
                },
            ]
        );
        // What the core learns from: a probing entry still names its MAC.
        assert_eq!(parse_all(&datagram, 3).unwrap().len(), 1);
    }

    #[test]
    fn a_probe_replaces_the_entry_in_the_probe_state() {
        let client = Client {
            mac: Mac(MAC),
            ip: "fd00:66::2".parse().unwrap(),
        };
        let bytes = probe_request(5, 3, client);
        let reply = replies(&bytes).unwrap()[0];
        assert_eq!(reply.kind, RTM_NEWNEIGH);
        assert_eq!(
            reply.flags,
            0x1 | 0x4 | 0x100 | 0x400,
            "request, ack, replace, create"
        );
        let p = reply.payload;
        assert_eq!(p[0], AF_INET6);
        assert_eq!(u32::from_ne_bytes([p[4], p[5], p[6], p[7]]), 3);
        assert_eq!(u16::from_ne_bytes([p[8], p[9]]), NUD_PROBE);
        let attributes = Attributes::parse(&p[NDMSG_LEN..]).unwrap();
        assert_eq!(attributes.get(NDA_DST), Some(&v6("fd00:66::2")[..]));
        assert_eq!(attributes.get(NDA_LLADDR), Some(&MAC[..]));
        let v4 = probe_request(
            5,
            3,
            Client {
                mac: Mac(MAC),
                ip: "10.66.0.2".parse().unwrap(),
            },
        );
        assert_eq!(replies(&v4).unwrap()[0].payload[0], AF_INET);
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
        let good = message(3, REACHABLE, &[10, 66, 0, 2], Some(&MAC));
        for cut in 0..good.len() {
            let _ = parse_all(&good[..cut], 0);
        }
        let odd = message(3, REACHABLE, &[10, 66, 0], Some(&MAC));
        assert!(parse_all(&odd, 0).is_err());
    }
}
