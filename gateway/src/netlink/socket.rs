//! A netlink socket for requests answered by a dump or an acknowledgement: the neighbour
//! table (rtnetlink) and the connection-tracking table (ctnetlink) are read through it. The
//! firewall's nf_tables batches have their own (`firewall::netlink`): a batch is answered by
//! one acknowledgement per message.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::sockopt::{self, Timeout};
use rustix::net::{AddressFamily, Protocol, RecvFlags, SendFlags, SocketFlags, SocketType};

use super::{NLM_F_DUMP_INTR, NLMSG_DONE, NLMSG_ERROR, Reply, replies};

/// How long to wait for the kernel. It answers at once; this only bounds an answer that
/// never comes.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
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
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            protocol,
        )?;
        rustix::net::bind(&fd, &SocketAddrNetlink::new(0, 0))?;
        sockopt::set_socket_timeout(&fd, Timeout::Recv, Some(REPLY_TIMEOUT))?;
        Ok(Socket {
            fd,
            seq: fastrand::u32(..),
            buf: vec![0; RECV_BUFFER],
        })
    }

    /// Sends the request `request(seq)` makes for a fresh sequence number; returns that
    /// number.
    fn send(&mut self, request: impl Fn(u32) -> Vec<u8>) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        rustix::net::send(&self.fd, &request(self.seq), SendFlags::empty())?;
        Ok(self.seq)
    }

    /// Reads the answer to the request numbered `seq` until `handle` says it is complete;
    /// messages answering other (older) requests are skipped.
    fn answer(
        &mut self,
        seq: u32,
        mut handle: impl FnMut(&Reply<'_>) -> io::Result<bool>,
    ) -> io::Result<()> {
        loop {
            let (_, len) = rustix::net::recv(&self.fd, &mut self.buf[..], RecvFlags::empty())?;
            let datagram = self.buf.get(..len).ok_or_else(|| {
                io::Error::other(format!("a netlink answer of {len} bytes was cut"))
            })?;
            for reply in replies(datagram).map_err(io::Error::other)? {
                if reply.seq == seq && handle(&reply)? {
                    return Ok(());
                }
            }
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
            let seq = self.send(&request)?;
            let mut found = Vec::new();
            let mut interrupted = false;
            self.answer(seq, |reply| {
                interrupted |= reply.flags & NLM_F_DUMP_INTR != 0;
                match reply.kind {
                    NLMSG_DONE => Ok(true),
                    NLMSG_ERROR => match refusal(reply)? {
                        err if err.raw_os_error() == Some(0) => Ok(true),
                        err => Err(err),
                    },
                    _ => {
                        parse(reply, &mut found).map_err(io::Error::other)?;
                        Ok(false)
                    }
                }
            })?;
            if !interrupted {
                return Ok(found);
            }
        }
        Err(io::Error::other(
            "the kernel's table kept changing while it was read",
        ))
    }

    /// Sends a request that asks for an acknowledgement (`NLM_F_ACK`) and waits for it; the
    /// kernel's refusal is the error.
    pub fn acknowledged(&mut self, request: impl Fn(u32) -> Vec<u8>) -> io::Result<()> {
        let seq = self.send(request)?;
        self.answer(seq, |reply| match reply.kind {
            NLMSG_ERROR => match refusal(reply)? {
                err if err.raw_os_error() == Some(0) => Ok(true),
                err => Err(err),
            },
            _ => Ok(false),
        })
    }
}

/// The error an `NLMSG_ERROR` message carries (errno 0: an acknowledgement).
fn refusal(reply: &Reply<'_>) -> io::Result<io::Error> {
    let (errno, _) = reply.error().map_err(io::Error::other)?;
    Ok(io::Error::from_raw_os_error(errno))
}
