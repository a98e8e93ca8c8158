//! The `NETLINK_NETFILTER` socket: sends a batch and waits for the kernel's answer to each
//! of its messages, or sends a get/dump request and collects the reply (the answers are
//! read by `exchange`).

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::sockopt::{self, Timeout};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

use super::exchange::{Acks, Dump};
use super::message::{self, Attributes, Message};

/// How long to wait for the kernel. It answers a batch before `send` returns (nf_tables
/// processes it in the sender's context) and a dump at once, so this only bounds a reply
/// that never comes.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// A dump reply datagram is at most 32 KiB (the kernel's `netlink_dump` cap).
const RECV_BUFFER: usize = 64 * 1024;
/// A dump the kernel marks interrupted (the ruleset changed under it) is started over,
/// at most this many times.
const DUMP_ATTEMPTS: usize = 3;

/// Why a netlink exchange failed.
#[derive(Debug)]
pub(super) enum Failure {
    /// The kernel (or the socket) said no: this errno.
    Errno(i32),
    /// The kernel's answer did not parse.
    Malformed(String),
}

impl From<io::Error> for Failure {
    fn from(error: io::Error) -> Self {
        Failure::Errno(error.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl From<rustix::io::Errno> for Failure {
    fn from(errno: rustix::io::Errno) -> Self {
        Failure::Errno(errno.raw_os_error())
    }
}

/// One netlink socket to nf_tables, in the network namespace it was opened in.
pub(super) struct Socket {
    fd: OwnedFd,
    /// The next sequence number; replies to earlier requests (e.g. after a time-out) are
    /// told apart by theirs.
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
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Socket, Failure> {
        let fd = rustix::net::socket(
            AddressFamily::NETLINK,
            SocketType::RAW,
            Some(netlink::NETFILTER),
        )?;
        rustix::net::bind(&fd, &SocketAddrNetlink::new(0, 0))?;
        sockopt::set_socket_timeout(&fd, Timeout::Recv, Some(REPLY_TIMEOUT))?;
        Ok(Socket {
            fd,
            seq: 1,
            buf: vec![0; RECV_BUFFER],
        })
    }

    fn take_seq(&mut self, count: usize) -> u32 {
        let first = self.seq;
        self.seq = self.seq.wrapping_add(count as u32);
        first
    }

    /// Reads one datagram; its bytes. A time-out is `ETIMEDOUT`, an empty queue with
    /// `DONTWAIT` is `EAGAIN`.
    fn recv(&mut self, flags: RecvFlags) -> Result<&[u8], Failure> {
        match rustix::net::recv(&self.fd, &mut self.buf[..], flags) {
            Ok((_, len)) if len > self.buf.len() => Err(Failure::Malformed(format!(
                "a reply of {len} bytes, larger than the {}-byte buffer",
                self.buf.len()
            ))),
            Ok((_, len)) => Ok(&self.buf[..len]),
            Err(rustix::io::Errno::AGAIN) if flags.is_empty() => {
                Err(Failure::Errno(libc::ETIMEDOUT))
            }
            Err(errno) => Err(errno.into()),
        }
    }

    /// Applies `messages` as one batch: `Ok` once the kernel acknowledged every message,
    /// else the earliest errno it reported (the kernel then applied none of them).
    pub fn apply(&mut self, messages: Vec<Message>) -> Result<(), Failure> {
        let count = messages.len();
        let begin = self.take_seq(count + 2);
        rustix::net::send(
            &self.fd,
            &message::batch(messages, begin),
            SendFlags::empty(),
        )?;
        let mut acks = Acks::new(begin, count);
        while !acks.complete() {
            // After a refusal the kernel has queued everything it will say: drain without
            // waiting.
            let flags = if acks.refused() {
                RecvFlags::DONTWAIT
            } else {
                RecvFlags::empty()
            };
            match self.recv(flags) {
                Ok(datagram) => acks.feed(datagram)?,
                Err(Failure::Errno(libc::EAGAIN)) => break,
                Err(other) => return Err(other),
            }
        }
        acks.outcome()
    }

    /// Sends `request` (a dump, or a get asking for an acknowledgement) and parses each
    /// nf_tables message of the reply with `parse`, in order. An interrupted dump is
    /// started over.
    pub fn dump<T>(
        &mut self,
        request: &Message,
        mut parse: impl FnMut(&Attributes<'_>, &mut Vec<T>) -> Result<(), String>,
    ) -> Result<Vec<T>, Failure> {
        for _ in 0..DUMP_ATTEMPTS {
            let seq = self.take_seq(1);
            rustix::net::send(&self.fd, &request.clone().request(seq), SendFlags::empty())?;
            let mut dump = Dump::new(seq, &mut parse);
            while !dump.feed(self.recv(RecvFlags::empty())?)? {}
            if !dump.interrupted {
                return Ok(dump.out);
            }
        }
        Err(Failure::Errno(libc::EINTR))
    }
}
