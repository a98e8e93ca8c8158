//! The `NETLINK_NETFILTER` socket of the firewall (on the shared `crate::netlink::Socket`):
//! a batch sent and the acknowledgement of each of its messages read (by `exchange::Acks`),
//! or a get or dump request sent and its nf_tables messages read.

use std::io;

use rustix::net::netlink;

use super::exchange::Acks;
use super::message::{self, Attributes, Message};
use crate::netlink::{RecvFlags, Socket as NetlinkSocket};

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
        match (error.raw_os_error(), error.kind()) {
            (Some(errno), _) => Failure::Errno(errno),
            (None, io::ErrorKind::TimedOut) => Failure::Errno(libc::ETIMEDOUT),
            (None, _) => Failure::Malformed(error.to_string()),
        }
    }
}

/// One netlink socket to nf_tables, in the network namespace it was opened in.
#[derive(Debug)]
pub(super) struct Socket {
    inner: NetlinkSocket,
}

impl Socket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Socket, Failure> {
        Ok(Socket {
            inner: NetlinkSocket::open(Some(netlink::NETFILTER))?,
        })
    }

    /// Applies `messages` as one batch: `Ok` once the kernel acknowledged every message,
    /// else the earliest errno it reported (the kernel then applied none of them).
    pub fn apply(&mut self, messages: Vec<Message>) -> Result<(), Failure> {
        let count = messages.len();
        let begin = self.inner.take_seq(count as u32 + 2);
        self.inner.send(&message::batch(messages, begin))?;
        let mut acks = Acks::new(begin, count);
        while !acks.complete() {
            // After a refusal the kernel has queued everything it will say: drain without
            // waiting.
            let flags = if acks.refused() {
                RecvFlags::DONTWAIT
            } else {
                RecvFlags::empty()
            };
            match self.inner.recv(flags) {
                Ok(datagram) => acks.feed(datagram)?,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => return Err(err.into()),
            }
        }
        acks.outcome()
    }

    /// Sends `request` (a dump, or a get asking for an acknowledgement) and parses each
    /// nf_tables message of the reply with `parse`, in order.
    pub fn dump<T>(
        &mut self,
        request: &Message,
        mut parse: impl FnMut(&Attributes<'_>, &mut Vec<T>) -> Result<(), String>,
    ) -> Result<Vec<T>, Failure> {
        let found = self.inner.dump(
            |seq| request.clone().request(seq),
            |reply, out| match message::nft_kind(reply) {
                Some(_) => parse(&message::nft_attributes(reply)?, out),
                None => Ok(()),
            },
        )?;
        Ok(found)
    }
}
