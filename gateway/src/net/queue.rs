//! The drops of an interface's egress queue (its root qdisc), read over rtnetlink: an
//! `RTM_GETQDISC` dump, the same the kernel gives `tc -s qdisc show`, without starting `tc`
//! on every reading. The request and the parser are pure functions over bytes.

use std::io;

use crate::netlink::{Attributes, NLM_F_DUMP, Reply, Socket, ne_u32, request};

const RTM_NEWQDISC: u16 = 36;
const RTM_GETQDISC: u16 = 38;
/// `struct tcmsg`: family, three pad bytes, interface index (i32), handle, parent, info
/// (u32 each).
const TCMSG_LEN: usize = 20;
/// The parent of an interface's root qdisc (`TC_H_ROOT`).
const TC_H_ROOT: u32 = 0xFFFF_FFFF;
const TCA_STATS: u16 = 3;
const TCA_STATS2: u16 = 7;
/// In `TCA_STATS2`: `struct gnet_stats_queue` (qlen, backlog, drops, requeues, overlimits;
/// u32 each).
const TCA_STATS_QUEUE: u16 = 3;
const GNET_QUEUE_DROPS: usize = 8;
/// In `TCA_STATS`, the old `struct tc_stats`: bytes (u64), packets, drops, … (u32 each).
const TC_STATS_DROPS: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot open an rtnetlink socket to read the LAN queue: {0}")]
    Open(#[source] io::Error),
    #[error("cannot find lan.interface {interface}: {source}")]
    Interface {
        interface: String,
        #[source]
        source: io::Error,
    },
    #[error("reading the qdiscs of {interface} over rtnetlink: {source}")]
    Dump {
        interface: String,
        #[source]
        source: io::Error,
    },
}

/// The egress queue of one interface, read over an rtnetlink socket held across readings
/// (one dump per reading; the socket is opened again after a failure).
#[derive(Debug)]
pub struct QueueDrops {
    interface: String,
    socket: Option<Socket>,
}

impl QueueDrops {
    pub fn new(interface: &str) -> Self {
        QueueDrops {
            interface: interface.to_owned(),
            socket: None,
        }
    }

    /// Packets the egress queue (root qdisc) of the interface dropped since it was set up.
    /// The queue sits after the forward hook, where the kernel meter counts, and before the
    /// capture's tap, so what it drops is counted by one meter only. Queue statistics count
    /// drops in packets (socket buffers, GSO super-packets included) only: there is no
    /// dropped-bytes counter (`struct gnet_stats_queue`), and the interface's `tx_dropped`
    /// stays 0 when its queue drops (checked on a veth with `tbf`).
    pub fn read(&mut self) -> Result<u64, QueueError> {
        let socket = match &mut self.socket {
            Some(socket) => socket,
            None => self
                .socket
                .insert(Socket::open(None).map_err(QueueError::Open)?),
        };
        let read = read_drops(socket, &self.interface);
        if read.is_err() {
            self.socket = None;
        }
        read
    }
}

/// One reading over `socket`. The index is looked up each time: an interface made again
/// (a Wi-Fi driver reloaded) has a new one.
fn read_drops(socket: &mut Socket, interface: &str) -> Result<u64, QueueError> {
    let ifindex = socket
        .interface_index(interface)
        .map_err(|source| QueueError::Interface {
            interface: interface.to_owned(),
            source,
        })?;
    let roots = socket
        .dump(
            |seq| dump_request(seq, ifindex),
            |reply, found| {
                found.extend(root_drops(reply, ifindex)?);
                Ok(())
            },
        )
        .map_err(|source| QueueError::Dump {
            interface: interface.to_owned(),
            source,
        })?;
    Ok(roots_drops(&roots))
}

/// The drops of the root qdisc among the dump's roots of the interface. A root that holds
/// other qdiscs (`mq`, `tbf` with a child) counts its children's drops too, so the children
/// are not added (they are not roots). No qdisc at all (a device never up has only the
/// built-in `noop`, which is not dumped) is no queue, so no drops.
fn roots_drops(roots: &[u64]) -> u64 {
    roots.first().copied().unwrap_or(0)
}

/// `RTM_GETQDISC` dump. The kernel dumps the qdiscs of every interface (the index does not
/// filter it); the index is sent as `tc` sends it.
fn dump_request(seq: u32, ifindex: u32) -> Vec<u8> {
    let mut fixed = [0u8; TCMSG_LEN];
    fixed[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    request(RTM_GETQDISC, NLM_F_DUMP, seq, &fixed, &[])
}

/// One message of the dump: the drop count, if it is the root qdisc of `ifindex` (its
/// parent `TC_H_ROOT`; ingress and clsact have other parents). Its statistics are in
/// `TCA_STATS2`, or in the older `TCA_STATS` without it, as `tc` reads them; a root with
/// neither has no drop count, an error.
fn root_drops(reply: &Reply<'_>, ifindex: u32) -> Result<Option<u64>, String> {
    if reply.kind != RTM_NEWQDISC {
        return Ok(None);
    }
    let (header, attributes) = reply.split(TCMSG_LEN, "a qdisc message shorter than its tcmsg")?;
    if ne_u32(header, 4) != ifindex || ne_u32(header, 12) != TC_H_ROOT {
        return Ok(None);
    }
    let attributes = Attributes::parse(attributes)?;
    let (stats, at, what) = if attributes.get(TCA_STATS2).is_some() {
        let stats2 = attributes.nested(TCA_STATS2, "TCA_STATS2")?;
        let queue = stats2.required(TCA_STATS_QUEUE, "TCA_STATS_QUEUE")?;
        (queue, GNET_QUEUE_DROPS, "TCA_STATS_QUEUE")
    } else {
        let stats = attributes
            .get(TCA_STATS)
            .ok_or("the root qdisc has no statistics (neither TCA_STATS2 nor TCA_STATS)")?;
        (stats, TC_STATS_DROPS, "TCA_STATS")
    };
    let drops = stats
        .get(at..at + 4)
        .ok_or_else(|| format!("{what} of {} bytes has no drop count", stats.len()))?;
    Ok(Some(u64::from(u32::from_ne_bytes([
        drops[0], drops[1], drops[2], drops[3],
    ]))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::{NLA_F_NESTED, attribute, replies};

    const TCA_KIND: u16 = 1;

    /// `gnet_stats_queue` with `drops`, the other counts made up.
    fn gnet_queue(drops: u32) -> Vec<u8> {
        [28u32, 29_176, drops, 0, 5]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect()
    }

    /// `tc_stats` with `drops` (40 bytes, as the kernel pads it on 64-bit).
    fn tc_stats(drops: u32) -> Vec<u8> {
        let mut stats = 142_020u64.to_ne_bytes().to_vec();
        for v in [140u32, drops, 0, 0, 0, 28, 29_176, 0] {
            stats.extend_from_slice(&v.to_ne_bytes());
        }
        stats
    }

    /// An `RTM_NEWQDISC` message as the kernel sends it: both statistics when `stats2`
    /// (the kernel's own), the old one alone otherwise.
    fn qdisc(
        ifindex: u32,
        handle: u32,
        parent: u32,
        kind: &str,
        drops: u32,
        stats2: bool,
    ) -> Vec<u8> {
        let mut fixed = vec![0u8; TCMSG_LEN];
        fixed[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        fixed[8..12].copy_from_slice(&handle.to_ne_bytes());
        fixed[12..16].copy_from_slice(&parent.to_ne_bytes());
        fixed[16..20].copy_from_slice(&2u32.to_ne_bytes());
        let mut attributes = attribute(TCA_KIND, format!("{kind}\0").as_bytes());
        if stats2 {
            let mut nest = attribute(1, &[0; 16]);
            nest.extend(attribute(TCA_STATS_QUEUE, &gnet_queue(drops)));
            attributes.extend(attribute(TCA_STATS2 | NLA_F_NESTED, &nest));
        }
        attributes.extend(attribute(TCA_STATS, &tc_stats(drops)));
        request(RTM_NEWQDISC, 0x2, 7, &fixed, &attributes)
    }

    fn drops_in(datagram: &[u8], ifindex: u32) -> Result<u64, String> {
        let mut roots = Vec::new();
        for reply in replies(datagram)? {
            roots.extend(root_drops(&reply, ifindex)?);
        }
        Ok(roots_drops(&roots))
    }

    #[test]
    fn the_root_qdiscs_drops_are_the_queues() {
        // A veth (index 3) with a tbf root and a pfifo child; another device's root; an
        // ingress qdisc of the same device (parent ffff:fff1).
        let mut datagram = Vec::new();
        for part in [
            qdisc(2, 0, TC_H_ROOT, "noqueue", 0, true),
            qdisc(3, 0x1_0000, TC_H_ROOT, "tbf", 303_419, true),
            qdisc(3, 0x10_0000, 0x1_0001, "pfifo", 303_419, true),
            qdisc(3, 0xFFFF_0000, 0xFFFF_FFF1, "ingress", 12, true),
        ] {
            datagram.extend(part);
        }
        assert_eq!(
            drops_in(&datagram, 3),
            Ok(303_419),
            "the children not added"
        );
        assert_eq!(drops_in(&datagram, 2), Ok(0));
        assert_eq!(
            drops_in(&datagram, 9),
            Ok(0),
            "no qdisc (a device never up)"
        );
        assert_eq!(drops_in(&[], 3), Ok(0));
    }

    #[test]
    fn the_old_statistics_serve_when_the_new_are_absent() {
        let old = qdisc(3, 0x1_0000, TC_H_ROOT, "tbf", 77, false);
        assert_eq!(drops_in(&old, 3), Ok(77));
    }

    #[test]
    fn a_root_without_a_drop_count_is_an_error() {
        let mut fixed = vec![0u8; TCMSG_LEN];
        fixed[4..8].copy_from_slice(&3u32.to_ne_bytes());
        fixed[12..16].copy_from_slice(&TC_H_ROOT.to_ne_bytes());
        let bare = request(
            RTM_NEWQDISC,
            0x2,
            7,
            &fixed,
            &attribute(TCA_KIND, b"noqueue\0"),
        );
        assert!(drops_in(&bare, 3).unwrap_err().contains("no statistics"));
        let nest = attribute(1, &[0; 16]);
        let no_queue = request(
            RTM_NEWQDISC,
            0x2,
            7,
            &fixed,
            &attribute(TCA_STATS2 | NLA_F_NESTED, &nest),
        );
        assert!(
            drops_in(&no_queue, 3)
                .unwrap_err()
                .contains("TCA_STATS_QUEUE")
        );
        let short = request(
            RTM_NEWQDISC,
            0x2,
            7,
            &fixed,
            &attribute(TCA_STATS2, &attribute(TCA_STATS_QUEUE, &[0; 8])),
        );
        assert!(drops_in(&short, 3).unwrap_err().contains("no drop count"));
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        let good = qdisc(3, 0x1_0000, TC_H_ROOT, "tbf", 5, true);
        for cut in 0..good.len() {
            let _ = drops_in(&good[..cut], 3);
        }
        // The message's length is cut to what is left, so that the attributes are cut.
        for cut in 16..good.len() {
            let mut cut_message = good[..cut].to_vec();
            cut_message[..4].copy_from_slice(&(cut as u32).to_ne_bytes());
            let _ = drops_in(&cut_message, 3);
        }
        let mut header_only = good[..16 + 8].to_vec();
        header_only[..4].copy_from_slice(&24u32.to_ne_bytes());
        assert!(drops_in(&header_only, 3).is_err(), "no whole tcmsg");
    }

    #[test]
    fn the_dump_request_names_the_interface() {
        let bytes = dump_request(9, 3);
        let reply = replies(&bytes).unwrap()[0];
        assert_eq!(reply.kind, RTM_GETQDISC);
        assert_eq!(reply.flags, 0x1 | 0x300, "request, dump");
        assert_eq!(reply.seq, 9);
        assert_eq!(reply.payload.len(), TCMSG_LEN);
        assert_eq!(&reply.payload[4..8], &3u32.to_ne_bytes());
        assert!(reply.payload[8..].iter().all(|b| *b == 0));
    }
}
