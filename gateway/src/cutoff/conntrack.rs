//! The kernel's connection-tracking table, read over netlink (ctnetlink): just enough to
//! find a client's open TCP connections and their tuples as NAT left them, and to mark
//! them. The messages are built and parsed by pure functions; [`Conntrack`] is the I/O.
//!
//! Our own small code (on the framing in `crate::netlink`) rather than a dependency: a dump
//! is one request and a handful of nested attributes to read. The `conntrack` tool would be
//! one more package on the device, a process per cut-off and a text format to parse.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use rustix::net::netlink;

use crate::netlink::{
    Attributes, NLA_F_NESTED, NLM_F_ACK, NLM_F_DUMP, Reply, Socket, attribute, request,
};

// <linux/netfilter/nfnetlink.h>, <linux/netfilter/nfnetlink_conntrack.h>.
/// `struct nfgenmsg`: family, version, resource id.
const NFGENMSG: usize = 4;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
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
    // nfgenmsg: AF_UNSPEC (every family), NFNETLINK_V0, resource id 0.
    request(
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
        NLM_F_DUMP,
        seq,
        &[0; NFGENMSG],
        &[],
    )
}

/// One message of a dump: its connection, if it is a conntrack entry of TCP with both
/// tuples.
pub(crate) fn connection(reply: &Reply<'_>) -> Result<Option<TcpConnection>, String> {
    if reply.kind >> 8 != NFNL_SUBSYS_CTNETLINK {
        return Ok(None);
    }
    let attributes = reply
        .payload
        .get(NFGENMSG..)
        .ok_or("a conntrack message shorter than its nfgenmsg")?;
    parse_connection(&Attributes::parse(attributes)?)
}

fn parse_connection(attributes: &Attributes<'_>) -> Result<Option<TcpConnection>, String> {
    let (Some(original), Some(reply)) = (
        attributes.get(CTA_TUPLE_ORIG),
        attributes.get(CTA_TUPLE_REPLY),
    ) else {
        return Ok(None);
    };
    let (Some(original), Some(reply)) = (parse_tuple(original)?, parse_tuple(reply)?) else {
        return Ok(None);
    };
    let state = match attributes.get(CTA_PROTOINFO) {
        Some(info) => Attributes::parse(info)?
            .get(CTA_PROTOINFO_TCP)
            .map(Attributes::parse)
            .transpose()?
            .and_then(|tcp| tcp.get(CTA_PROTOINFO_TCP_STATE))
            .and_then(|state| state.first().copied()),
        None => None,
    };
    Ok(Some(TcpConnection {
        original,
        reply,
        open: state.is_some_and(|state| OPEN_STATES.contains(&state)),
    }))
}

/// A TCP tuple (`None` for other protocols).
fn parse_tuple(tuple: &[u8]) -> Result<Option<Tuple>, String> {
    let tuple = Attributes::parse(tuple)?;
    let ip = tuple.nested(CTA_TUPLE_IP, "tuple address")?;
    let proto = tuple.nested(CTA_TUPLE_PROTO, "tuple protocol")?;
    if proto.get(CTA_PROTO_NUM).and_then(<[u8]>::first) != Some(&IPPROTO_TCP) {
        return Ok(None);
    }
    let port = |kind| {
        proto
            .get(kind)
            .and_then(|p| p.try_into().ok())
            .map(u16::from_be_bytes)
    };
    let address = |v4, v6| {
        ip.get(v4)
            .and_then(|a| <[u8; 4]>::try_from(a).ok())
            .map(|a| IpAddr::V4(Ipv4Addr::from(a)))
            .or_else(|| {
                ip.get(v6)
                    .and_then(|a| <[u8; 16]>::try_from(a).ok())
                    .map(|a| IpAddr::V6(Ipv6Addr::from(a)))
            })
    };
    let (Some(src), Some(dst), Some(src_port), Some(dst_port)) = (
        address(CTA_IP_V4_SRC, CTA_IP_V6_SRC),
        address(CTA_IP_V4_DST, CTA_IP_V6_DST),
        port(CTA_PROTO_SRC_PORT),
        port(CTA_PROTO_DST_PORT),
    ) else {
        return Err("a TCP tuple without its addresses or ports".to_owned());
    };
    Ok(Some(Tuple {
        src: SocketAddr::new(src, src_port),
        dst: SocketAddr::new(dst, dst_port),
    }))
}

/// A ctnetlink socket of this network namespace (needs CAP_NET_ADMIN).
#[derive(Debug)]
pub(crate) struct Conntrack {
    socket: Socket,
}

impl Conntrack {
    pub fn open() -> io::Result<Conntrack> {
        Ok(Conntrack {
            socket: Socket::open(Some(netlink::NETFILTER))?,
        })
    }

    /// Every TCP connection in the table.
    pub fn tcp_connections(&mut self) -> io::Result<Vec<TcpConnection>> {
        self.socket.dump(dump_request, |reply, found| {
            found.extend(connection(reply)?);
            Ok(())
        })
    }

    /// Sets the `bits` of the conntrack mark of the connection whose original tuple is
    /// `original`, leaving its other bits alone; an error if it is gone.
    pub fn set_mark_bits(&mut self, original: &Tuple, bits: u32) -> io::Result<()> {
        if set_mark_request(0, original, bits).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "mixed families",
            ));
        }
        self.socket
            .acknowledged(|seq| set_mark_request(seq, original, bits).unwrap_or_default())
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
            attribute(CTA_IP_V4_SRC, &s.octets()),
            attribute(CTA_IP_V4_DST, &d.octets()),
        ),
        (IpAddr::V6(s), IpAddr::V6(d)) => (
            AF_INET6,
            attribute(CTA_IP_V6_SRC, &s.octets()),
            attribute(CTA_IP_V6_DST, &d.octets()),
        ),
        _ => return None,
    };
    let proto = [
        attribute(CTA_PROTO_NUM, &[IPPROTO_TCP]),
        attribute(CTA_PROTO_SRC_PORT, &original.src.port().to_be_bytes()),
        attribute(CTA_PROTO_DST_PORT, &original.dst.port().to_be_bytes()),
    ]
    .concat();
    let tuple = [
        attribute(CTA_TUPLE_IP | NLA_F_NESTED, &[src, dst].concat()),
        attribute(CTA_TUPLE_PROTO | NLA_F_NESTED, &proto),
    ]
    .concat();
    let body = [
        attribute(CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple),
        attribute(CTA_MARK, &bits.to_be_bytes()),
        attribute(CTA_MARK_MASK, &bits.to_be_bytes()),
    ]
    .concat();
    Some(request(
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW,
        NLM_F_ACK,
        seq,
        &[family, 0, 0, 0],
        &body,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::{NLM_F_REQUEST, NLMSG_HDRLEN, replies};

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        attribute(kind, payload)
    }

    /// Every connection in a datagram of a dump.
    fn parse_all(datagram: &[u8]) -> Result<Vec<TcpConnection>, String> {
        let mut found = Vec::new();
        for reply in replies(datagram)? {
            found.extend(connection(&reply)?);
        }
        Ok(found)
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
        // NLM_F_MULTI, as in a dump.
        request(
            NFNL_SUBSYS_CTNETLINK << 8,
            0x2,
            0,
            &[AF_INET, 0, 0, 0],
            &attrs.concat(),
        )
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
        assert_eq!(
            parse_all(&datagram).expect("parses"),
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
        let attrs = Attributes::parse(&r[NLMSG_HDRLEN + NFGENMSG..]).expect("attributes");
        // The tuple reads back as it went in, with the parser the dump uses.
        assert_eq!(
            parse_tuple(attrs.get(CTA_TUPLE_ORIG).expect("tuple")),
            Ok(Some(original))
        );
        assert_eq!(attrs.get(CTA_MARK), Some(&[0x10, 0, 0, 0][..]));
        assert_eq!(attrs.get(CTA_MARK_MASK), Some(&[0x10, 0, 0, 0][..]));

        let v6 = Tuple {
            src: addr("[fd00:66::2]:1"),
            dst: addr("[fd00:77::2]:2"),
        };
        let r = set_mark_request(1, &v6, 1).expect("one family");
        assert_eq!(r[16], AF_INET6);
        let attrs = Attributes::parse(&r[NLMSG_HDRLEN + NFGENMSG..]).expect("attributes");
        assert_eq!(
            parse_tuple(attrs.get(CTA_TUPLE_ORIG).expect("tuple")),
            Ok(Some(v6))
        );
        let mixed = Tuple {
            src: addr("10.0.0.1:1"),
            dst: addr("[::1]:2"),
        };
        assert_eq!(set_mark_request(1, &mixed, 1), None);
    }

    #[test]
    fn truncated_messages_and_attributes_are_errors_not_panics() {
        let mut truncated = message(&[tcp_state(3)]);
        truncated.truncate(truncated.len() - 2);
        assert!(parse_all(&truncated).is_err());
        // An attribute that runs past its message.
        let mut bad = message(&[attr(CTA_TUPLE_ORIG, &[0; 8])]);
        bad[NLMSG_HDRLEN + NFGENMSG] = 200;
        assert!(parse_all(&bad).is_err());
        let good = message(&[
            tuple(CTA_TUPLE_ORIG, addr("10.66.0.2:1"), addr("10.77.0.2:2"), 6),
            tuple(CTA_TUPLE_REPLY, addr("10.77.0.2:2"), addr("10.66.0.2:1"), 6),
        ]);
        for cut in 0..good.len() {
            let _ = parse_all(&good[..cut]);
        }
    }
}
