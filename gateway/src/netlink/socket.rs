//! A netlink socket for requests answered by a dump or an acknowledgement: the neighbour
//! table (rtnetlink), the connection-tracking table (ctnetlink) and nf_tables' listings are
//! read through it; the firewall sends its nf_tables batches over it too (`firewall::netlink`
//! reads their acknowledgements itself). A dump's answer is read by [`Dump`], pure, so that
//! recorded replies can be fed to it in tests.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

pub(crate) use rustix::net::RecvFlags;
use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::sockopt::{self, Timeout};
use rustix::net::{AddressFamily, Protocol, SendFlags, SocketFlags, SocketType};

use super::{NLM_F_DUMP_INTR, NLMSG_DONE, NLMSG_ERROR, Reply, replies};

/// How long to wait for the kernel. It answers a dump at once, and an nf_tables batch
/// before `send` returns (in the sender's context); this only bounds an answer that never
/// comes.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// A dump datagram is at most 32 KiB (the kernel's `netlink_dump` cap).
const RECV_BUFFER: usize = 64 * 1024;
/// A dump the kernel marks interrupted (the table changed under it) is read again, at most
/// this many times.
const DUMP_ATTEMPTS: usize = 3;

/// One netlink socket, in the network namespace it was opened in.
pub(crate) struct Socket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Socket {
    // Without the 64 KiB receive buffer.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("fd", &self.fd)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Socket {
    /// A socket of `protocol` (`None`: protocol 0, `NETLINK_ROUTE`).
    pub fn open(protocol: Option<Protocol>) -> io::Result<Socket> {
        Socket::subscribed(protocol, 0)
    }

    /// A socket of `protocol` that also receives the kernel's notifications to the
    /// multicast `groups` (a bit mask, `RTMGRP_*`).
    pub fn subscribed(protocol: Option<Protocol>, groups: u32) -> io::Result<Socket> {
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            protocol,
        )?;
        rustix::net::bind(&fd, &SocketAddrNetlink::new(0, groups))?;
        sockopt::set_socket_timeout(&fd, Timeout::Recv, Some(REPLY_TIMEOUT))?;
        Ok(Socket {
            fd,
            seq: fastrand::u32(..),
            buf: vec![0; RECV_BUFFER],
        })
    }

    /// The index of interface `name` in the socket's network namespace (`SIOCGIFINDEX`, as
    /// `if_nametoindex` asks it; any socket answers it), so that a name and the dump it
    /// filters come from the same namespace, whatever `/sys` shows.
    pub fn interface_index(&self, name: &str) -> io::Result<u32> {
        rustix::net::netdevice::name_to_index(&self.fd, name).map_err(|errno| {
            io::Error::new(
                io::Error::from(errno).kind(),
                format!("interface {name}: {errno}"),
            )
        })
    }

    /// `count` fresh sequence numbers in a row; the first.
    pub fn take_seq(&mut self, count: u32) -> u32 {
        let first = self.seq.wrapping_add(1);
        self.seq = self.seq.wrapping_add(count);
        first
    }

    /// Sends one datagram (a request, or a batch of them).
    pub fn send(&self, bytes: &[u8]) -> io::Result<()> {
        rustix::net::send(&self.fd, bytes, SendFlags::empty())?;
        Ok(())
    }

    /// Reads one datagram. Past the time-out: `TimedOut`; an empty queue with `DONTWAIT`:
    /// `WouldBlock`.
    pub fn recv(&mut self, flags: RecvFlags) -> io::Result<&[u8]> {
        match rustix::net::recv(&self.fd, &mut self.buf[..], flags) {
            Ok((_, len)) => self.buf.get(..len).ok_or_else(|| {
                io::Error::other(format!("a netlink answer of {len} bytes was cut"))
            }),
            Err(rustix::io::Errno::AGAIN) if flags.is_empty() => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the kernel did not answer",
            )),
            Err(errno) => Err(errno.into()),
        }
    }

    /// Sends a dump request and collects what `parse` finds in each message of the answer,
    /// in order. A dump the kernel marks interrupted is read again; the kernel's refusal is
    /// the error.
    pub fn dump<T>(
        &mut self,
        request: impl Fn(u32) -> Vec<u8>,
        mut parse: impl FnMut(&Reply<'_>, &mut Vec<T>) -> Result<(), String>,
    ) -> io::Result<Vec<T>> {
        for _ in 0..DUMP_ATTEMPTS {
            let seq = self.take_seq(1);
            self.send(&request(seq))?;
            let mut dump = Dump::new(seq, &mut parse);
            while !dump.feed(self.recv(RecvFlags::empty())?)? {}
            if !dump.interrupted {
                return Ok(dump.out);
            }
        }
        Err(io::Error::other(
            "the kernel's table kept changing while it was read",
        ))
    }

    /// Sends a request that asks for an acknowledgement (`NLM_F_ACK`) and waits for it; the
    /// kernel's refusal is the error.
    pub fn acknowledged(&mut self, request: impl Fn(u32) -> Vec<u8>) -> io::Result<()> {
        let seq = self.take_seq(1);
        self.send(&request(seq))?;
        let mut ack = Dump::new(seq, |_: &Reply<'_>, _: &mut Vec<()>| Ok(()));
        while !ack.feed(self.recv(RecvFlags::empty())?)? {}
        Ok(())
    }
}

/// The answer to the dump or get numbered `seq`, read datagram by datagram: each message
/// parsed by `parse` into `out`, in order; answers to other requests (an earlier one that
/// timed out) skipped.
pub(crate) struct Dump<T, P> {
    seq: u32,
    parse: P,
    pub out: Vec<T>,
    /// The kernel marked the dump inconsistent (the table changed while it ran).
    pub interrupted: bool,
}

impl<T, P> Dump<T, P>
where
    P: FnMut(&Reply<'_>, &mut Vec<T>) -> Result<(), String>,
{
    pub fn new(seq: u32, parse: P) -> Self {
        Dump {
            seq,
            parse,
            out: Vec::new(),
            interrupted: false,
        }
    }

    /// Reads one datagram; `Ok(true)` once the answer is complete (`NLMSG_DONE`, or the
    /// acknowledgement of a get), the kernel's errno as the error.
    pub fn feed(&mut self, datagram: &[u8]) -> io::Result<bool> {
        for reply in replies(datagram).map_err(io::Error::other)? {
            if reply.seq != self.seq {
                continue;
            }
            self.interrupted |= reply.flags & NLM_F_DUMP_INTR != 0;
            match reply.kind {
                NLMSG_DONE => {
                    return match reply.done_errno() {
                        0 => Ok(true),
                        errno => Err(io::Error::from_raw_os_error(errno)),
                    };
                }
                NLMSG_ERROR => {
                    return match reply.error().map_err(io::Error::other)?.0 {
                        0 => Ok(true),
                        errno => Err(io::Error::from_raw_os_error(errno)),
                    };
                }
                _ => (self.parse)(&reply, &mut self.out).map_err(io::Error::other)?,
            }
        }
        Ok(false)
    }
}
