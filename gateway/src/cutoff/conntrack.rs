//! The kernel's connection-tracking table, read over netlink (ctnetlink): just enough to
//! find a client's open TCP connections and their tuples as NAT left them, and to mark
//! them. The messages are built and parsed by pure functions; [`Conntrack`] is the I/O.
//!
//! Our own small code rather than a dependency: a dump is one request and a handful of
//! nested attributes to read. The `conntrack` tool would be one more package on the device,
//! a process per cut-off and a text format to parse.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use rustix::fd::OwnedFd;
use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::sockopt::{Timeout, set_socket_timeout};
use rustix::net::{
    AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType, bind, recv, sendto, socket_with,
};

// <linux/netlink.h>, <linux/netfilter/nfnetlink.h>, <linux/netfilter/nfnetlink_conntrack.h>.
const NLMSG_HEADER: usize = 16;
const NFGENMSG: usize = 4;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const NLA_TYPE_MASK: u16 = 0x3fff;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_PROTOINFO: u16 = 4;
const CTA_MARK: u16 = 8;
const CTA_MARK_MASK: u16 = 21;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
/// The TCP states in which both ends may still hold the connection: ESTABLISHED, the
/// half-closes (FIN_WAIT, CLOSE_WAIT, LAST_ACK), and CLOSE, which is where the kernel puts a
/// connection as soon as the firewall's reset rule has reset one end (`nf_ct_set_closing`):
/// the other end, often the idle server, still holds it. Left out: handshakes not yet
/// done, and TIME_WAIT (both ends have closed).
const OPEN_STATES: [u8; 5] = [3, 4, 5, 6, 8];
const IPPROTO_TCP: u8 = 6;

/// How long the kernel may keep us waiting for its next answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// One direction of a connection as conntrack keys it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tuple {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// A TCP connection in the table: `original` as its first packet came (client to server),
/// `reply` as the answers come (with NAT: from the server to the gateway's WAN address and
/// the port masquerade chose).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TcpConnection {
    pub original: Tuple,
    pub reply: Tuple,
    /// Both ends may still hold it (see [`OPEN_STATES`]).
    pub open: bool,
}

/// The request for a dump of the whole table (both families).
pub(crate) fn dump_request(seq: u32) -> Vec<u8> {
    let mut msg = Vec::with_capacity(NLMSG_HEADER + NFGENMSG);
    msg.extend_from_slice(&((NLMSG_HEADER + NFGENMSG) as u32).to_ne_bytes());
    msg.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET).to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: AF_UNSPEC (every family), NFNETLINK_V0, resource id 0.
    msg.extend_from_slice(&[0, 0, 0, 0]);
    msg
}

/// What one datagram of a dump held.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct DumpPart {
    pub connections: Vec<TcpConnection>,
    /// The dump is over (`NLMSG_DONE`).
    pub done: bool,
}

/// Parses one datagram of a dump answer: its TCP connections (others skipped), whether the
/// dump ended, or the kernel's error.
pub(crate) fn parse_dump(mut buf: &[u8]) -> io::Result<DumpPart> {
    let mut part = DumpPart::default();
    while buf.len() >= NLMSG_HEADER {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if len < NLMSG_HEADER || len > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated netlink message",
            ));
        }
        let body = &buf[NLMSG_HEADER..len];
        match kind {
            NLMSG_DONE => part.done = true,
            NLMSG_ERROR => {
                let errno = body
                    .get(0..4)
                    .map_or(0, |e| i32::from_ne_bytes(e.try_into().expect("4 bytes")));
                if errno != 0 {
                    return Err(io::Error::from_raw_os_error(-errno));
                }
            }
            _ if kind >> 8 == NFNL_SUBSYS_CTNETLINK && body.len() >= NFGENMSG => {
                part.connections.extend(parse_connection(&body[NFGENMSG..]));
            }
            _ => {}
        }
        buf = &buf[align(len).min(buf.len())..];
    }
    Ok(part)
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// The attributes in `buf`: (type without the nested/byte-order flags, payload).
fn attributes(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[align(len).min(buf.len())..];
        Some((kind, payload))
    })
}

fn attribute(buf: &[u8], wanted: u16) -> Option<&[u8]> {
    attributes(buf)
        .find(|(kind, _)| *kind == wanted)
        .map(|(_, p)| p)
}

/// One conntrack entry, if it is TCP with both tuples.
fn parse_connection(attrs: &[u8]) -> Option<TcpConnection> {
    let original = parse_tuple(attribute(attrs, CTA_TUPLE_ORIG)?)?;
    let reply = parse_tuple(attribute(attrs, CTA_TUPLE_REPLY)?)?;
    let state = attribute(attrs, CTA_PROTOINFO)
        .and_then(|info| attribute(info, CTA_PROTOINFO_TCP))
        .and_then(|tcp| attribute(tcp, CTA_PROTOINFO_TCP_STATE))
        .and_then(|state| state.first().copied());
    Some(TcpConnection {
        original,
        reply,
        open: state.is_some_and(|state| OPEN_STATES.contains(&state)),
    })
}

/// A TCP tuple (`None` for other protocols).
fn parse_tuple(tuple: &[u8]) -> Option<Tuple> {
    let ip = attribute(tuple, CTA_TUPLE_IP)?;
    let proto = attribute(tuple, CTA_TUPLE_PROTO)?;
    if attribute(proto, CTA_PROTO_NUM)?.first() != Some(&IPPROTO_TCP) {
        return None;
    }
    let port = |kind| {
        attribute(proto, kind)
            .and_then(|p| p.try_into().ok())
            .map(u16::from_be_bytes)
    };
    let v4 = |kind| {
        attribute(ip, kind)
            .and_then(|a| <[u8; 4]>::try_from(a).ok())
            .map(|a| IpAddr::V4(Ipv4Addr::from(a)))
    };
    let v6 = |kind| {
        attribute(ip, kind)
            .and_then(|a| <[u8; 16]>::try_from(a).ok())
            .map(|a| IpAddr::V6(Ipv6Addr::from(a)))
    };
    let src = v4(CTA_IP_V4_SRC).or_else(|| v6(CTA_IP_V6_SRC))?;
    let dst = v4(CTA_IP_V4_DST).or_else(|| v6(CTA_IP_V6_DST))?;
    Some(Tuple {
        src: SocketAddr::new(src, port(CTA_PROTO_SRC_PORT)?),
        dst: SocketAddr::new(dst, port(CTA_PROTO_DST_PORT)?),
    })
}

/// A ctnetlink socket of this network namespace (needs CAP_NET_ADMIN).
#[derive(Debug)]
pub(crate) struct Conntrack {
    socket: OwnedFd,
    buf: Vec<u8>,
}

impl Conntrack {
    pub fn open() -> io::Result<Conntrack> {
        let socket = socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            Some(netlink::NETFILTER),
        )?;
        bind(&socket, &SocketAddrNetlink::new(0, 0))?;
        set_socket_timeout(&socket, Timeout::Recv, Some(REPLY_TIMEOUT))?;
        Ok(Conntrack {
            socket,
            // Large enough for any one datagram of a dump (the kernel fills a page or so).
            buf: vec![0u8; 64 * 1024],
        })
    }

    fn send(&self, request: &[u8]) -> io::Result<()> {
        sendto(
            &self.socket,
            request,
            SendFlags::empty(),
            &SocketAddrNetlink::new(0, 0),
        )?;
        Ok(())
    }

    /// The next datagram of answers, parsed.
    fn answer(&mut self) -> io::Result<DumpPart> {
        let (n, _) = recv(&self.socket, &mut self.buf[..], RecvFlags::empty())?;
        parse_dump(&self.buf[..n.min(self.buf.len())])
    }

    /// Every TCP connection in the table.
    pub fn tcp_connections(&mut self) -> io::Result<Vec<TcpConnection>> {
        self.send(&dump_request(fastrand::u32(..)))?;
        let mut connections = Vec::new();
        loop {
            let part = self.answer()?;
            connections.extend(part.connections);
            if part.done {
                return Ok(connections);
            }
        }
    }

    /// Sets the `bits` of the conntrack mark of the connection whose original tuple is
    /// `original`, leaving its other bits alone; an error if it is gone.
    pub fn set_mark_bits(&mut self, original: &Tuple, bits: u32) -> io::Result<()> {
        let request = set_mark_request(fastrand::u32(..), original, bits)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "mixed families"))?;
        self.send(&request)?;
        // The acknowledgement (an error message with error 0), or the error.
        self.answer().map(drop)
    }
}

/// The request that sets the `bits` of a connection's mark (`IPCTNL_MSG_CT_NEW` without
/// `NLM_F_CREATE`: an update of the connection with this original tuple; `CTA_MARK_MASK`
/// keeps the other bits, which other tools may use), acknowledged. `None` if the tuple
/// mixes families.
pub(crate) fn set_mark_request(seq: u32, original: &Tuple, bits: u32) -> Option<Vec<u8>> {
    let (family, src, dst) = match (original.src.ip(), original.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (
            AF_INET,
            attribute_bytes(CTA_IP_V4_SRC, &s.octets()),
            attribute_bytes(CTA_IP_V4_DST, &d.octets()),
        ),
        (IpAddr::V6(s), IpAddr::V6(d)) => (
            AF_INET6,
            attribute_bytes(CTA_IP_V6_SRC, &s.octets()),
            attribute_bytes(CTA_IP_V6_DST, &d.octets()),
        ),
        _ => return None,
    };
    let proto = [
        attribute_bytes(CTA_PROTO_NUM, &[IPPROTO_TCP]),
        attribute_bytes(CTA_PROTO_SRC_PORT, &original.src.port().to_be_bytes()),
        attribute_bytes(CTA_PROTO_DST_PORT, &original.dst.port().to_be_bytes()),
    ]
    .concat();
    let tuple = [
        attribute_bytes(CTA_TUPLE_IP | NLA_F_NESTED, &[src, dst].concat()),
        attribute_bytes(CTA_TUPLE_PROTO | NLA_F_NESTED, &proto),
    ]
    .concat();
    let body = [
        attribute_bytes(CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple),
        attribute_bytes(CTA_MARK, &bits.to_be_bytes()),
        attribute_bytes(CTA_MARK_MASK, &bits.to_be_bytes()),
    ]
    .concat();
    let len = NLMSG_HEADER + NFGENMSG + body.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW).to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&[family, 0, 0, 0]);
    msg.extend_from_slice(&body);
    Some(msg)
}

/// One netlink attribute: header, payload, padding to 4 bytes.
fn attribute_bytes(kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(align(4 + payload.len()));
    a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    a.extend_from_slice(&kind.to_ne_bytes());
    a.extend_from_slice(payload);
    a.resize(align(a.len()), 0);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        attribute_bytes(kind, payload)
    }

    fn nested(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        attr(kind | NLA_F_NESTED, &parts.concat())
    }

    fn tuple(kind: u16, src: SocketAddr, dst: SocketAddr, proto: u8) -> Vec<u8> {
        let ip = |a: IpAddr, v4, v6| match a {
            IpAddr::V4(a) => attr(v4, &a.octets()),
            IpAddr::V6(a) => attr(v6, &a.octets()),
        };
        nested(
            kind,
            &[
                nested(
                    CTA_TUPLE_IP,
                    &[
                        ip(src.ip(), CTA_IP_V4_SRC, CTA_IP_V6_SRC),
                        ip(dst.ip(), CTA_IP_V4_DST, CTA_IP_V6_DST),
                    ],
                ),
                nested(
                    CTA_TUPLE_PROTO,
                    &[
                        attr(CTA_PROTO_NUM, &[proto]),
                        attr(CTA_PROTO_SRC_PORT, &src.port().to_be_bytes()),
                        attr(CTA_PROTO_DST_PORT, &dst.port().to_be_bytes()),
                    ],
                ),
            ],
        )
    }

    /// A conntrack message as the kernel sends it in a dump (`IPCTNL_MSG_CT_NEW`, with a
    /// status attribute before the protocol info, as there is in real ones).
    fn message(attrs: &[Vec<u8>]) -> Vec<u8> {
        let body = attrs.concat();
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HEADER + NFGENMSG + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&(NFNL_SUBSYS_CTNETLINK << 8).to_ne_bytes());
        m.extend_from_slice(&0x2u16.to_ne_bytes()); // NLM_F_MULTI
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(&[2, 0, 0, 0]);
        m.extend_from_slice(&body);
        m
    }

    fn tcp_state(state: u8) -> Vec<u8> {
        nested(
            CTA_PROTOINFO,
            &[nested(
                CTA_PROTOINFO_TCP,
                &[attr(CTA_PROTOINFO_TCP_STATE, &[state])],
            )],
        )
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("a test address")
    }

    fn done() -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&20u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        m.extend_from_slice(&[0; 14]);
        m
    }

    #[test]
    fn the_dump_request_asks_ctnetlink_for_everything() {
        let r = dump_request(7);
        assert_eq!(r.len(), 20);
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 20);
        assert_eq!(u16::from_ne_bytes([r[4], r[5]]), 0x0101);
        assert_eq!(u16::from_ne_bytes([r[6], r[7]]), 0x0301);
        assert_eq!(u32::from_ne_bytes(r[8..12].try_into().unwrap()), 7);
        assert_eq!(&r[16..], &[0, 0, 0, 0]);
    }

    #[test]
    fn tcp_connections_are_read_with_both_tuples_and_whether_they_are_open() {
        let (client, server, wan) = (
            addr("10.66.0.2:40000"),
            addr("10.77.0.2:9000"),
            addr("10.77.0.1:61000"),
        );
        let mut datagram = message(&[
            tuple(CTA_TUPLE_ORIG, client, server, 6),
            tuple(CTA_TUPLE_REPLY, server, wan, 6),
            attr(3, &0x18eu32.to_be_bytes()), // CTA_STATUS
            tcp_state(3),                     // ESTABLISHED
        ]);
        datagram.extend(message(&[
            tuple(
                CTA_TUPLE_ORIG,
                addr("10.66.0.2:5353"),
                addr("10.66.0.1:53"),
                17,
            ),
            tuple(
                CTA_TUPLE_REPLY,
                addr("10.66.0.1:53"),
                addr("10.66.0.2:5353"),
                17,
            ),
        ]));
        let v6 = (addr("[fd00:66::2]:1234"), addr("[fd00:77::2]:443"));
        datagram.extend(message(&[
            tuple(CTA_TUPLE_ORIG, v6.0, v6.1, 6),
            tuple(CTA_TUPLE_REPLY, v6.1, v6.0, 6),
            tcp_state(7), // TIME_WAIT
        ]));
        // One end reset by the firewall's reject rule: CLOSE, the other end still holds it.
        let reset = (addr("10.66.0.2:40001"), addr("10.77.0.2:9000"));
        datagram.extend(message(&[
            tuple(CTA_TUPLE_ORIG, reset.0, reset.1, 6),
            tuple(CTA_TUPLE_REPLY, reset.1, reset.0, 6),
            tcp_state(8), // CLOSE
        ]));
        let part = parse_dump(&datagram).expect("parses");
        assert!(!part.done);
        assert_eq!(
            part.connections,
            [
                TcpConnection {
                    original: Tuple {
                        src: client,
                        dst: server
                    },
                    reply: Tuple {
                        src: server,
                        dst: wan
                    },
                    open: true,
                },
                TcpConnection {
                    original: Tuple {
                        src: v6.0,
                        dst: v6.1
                    },
                    reply: Tuple {
                        src: v6.1,
                        dst: v6.0
                    },
                    open: false,
                },
                TcpConnection {
                    original: Tuple {
                        src: reset.0,
                        dst: reset.1
                    },
                    reply: Tuple {
                        src: reset.1,
                        dst: reset.0
                    },
                    open: true,
                },
            ]
        );
        assert!(parse_dump(&done()).expect("parses").done);
    }

    #[test]
    fn a_mark_request_updates_only_our_bits_of_the_connection_with_this_original_tuple() {
        let original = Tuple {
            src: addr("10.66.0.2:40000"),
            dst: addr("10.77.0.2:9000"),
        };
        let r = set_mark_request(9, &original, 0x1000_0000).expect("one family");
        assert_eq!(
            u32::from_ne_bytes(r[0..4].try_into().unwrap()) as usize,
            r.len()
        );
        assert_eq!(
            u16::from_ne_bytes([r[4], r[5]]),
            0x0100,
            "IPCTNL_MSG_CT_NEW"
        );
        assert_eq!(
            u16::from_ne_bytes([r[6], r[7]]),
            NLM_F_REQUEST | NLM_F_ACK,
            "an update (no NLM_F_CREATE), acknowledged"
        );
        assert_eq!(r[16], AF_INET);
        let attrs = &r[NLMSG_HEADER + NFGENMSG..];
        // The tuple reads back as it went in, with the parser the dump uses.
        assert_eq!(
            parse_tuple(attribute(attrs, CTA_TUPLE_ORIG).expect("tuple")),
            Some(original)
        );
        assert_eq!(attribute(attrs, CTA_MARK), Some(&[0x10, 0, 0, 0][..]));
        assert_eq!(attribute(attrs, CTA_MARK_MASK), Some(&[0x10, 0, 0, 0][..]));

        let v6 = Tuple {
            src: addr("[fd00:66::2]:1"),
            dst: addr("[fd00:77::2]:2"),
        };
        let r = set_mark_request(1, &v6, 1).expect("one family");
        assert_eq!(r[16], AF_INET6);
        let attrs = &r[NLMSG_HEADER + NFGENMSG..];
        assert_eq!(
            parse_tuple(attribute(attrs, CTA_TUPLE_ORIG).expect("tuple")),
            Some(v6)
        );
        let mixed = Tuple {
            src: addr("10.0.0.1:1"),
            dst: addr("[::1]:2"),
        };
        assert_eq!(set_mark_request(1, &mixed, 1), None);
    }

    #[test]
    fn kernel_errors_and_truncated_messages_are_errors() {
        let mut error = Vec::new();
        error.extend_from_slice(&36u32.to_ne_bytes());
        error.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        error.extend_from_slice(&[0; 10]);
        error.extend_from_slice(&(-1i32).to_ne_bytes()); // -EPERM
        error.extend_from_slice(&[0; 16]);
        let err = parse_dump(&error).expect_err("EPERM");
        assert_eq!(err.raw_os_error(), Some(1));

        let mut truncated = message(&[tcp_state(3)]);
        truncated.truncate(truncated.len() - 2);
        assert!(parse_dump(&truncated).is_err());
        // Attributes that run past their message end the parse, not the process.
        let mut bad = message(&[attr(CTA_TUPLE_ORIG, &[0; 8])]);
        bad[NLMSG_HEADER + NFGENMSG] = 200;
        assert_eq!(parse_dump(&bad).expect("skipped").connections, []);
    }
}
