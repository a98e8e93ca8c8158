//! The `NETLINK_NETFILTER` socket: sends a batch and waits for the kernel's answer to each
//! of its messages, or sends a get/dump request and collects the reply messages.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::sockopt::{self, Timeout};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

use super::message::{self, Attributes, Message, NLM_F_DUMP_INTR, NLMSG_DONE, NLMSG_ERROR};

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
#[derive(Debug)]
pub(super) struct Socket {
    fd: OwnedFd,
    /// The next sequence number; replies to earlier requests (e.g. after a time-out) are
    /// told apart by theirs.
    seq: u32,
    buf: Vec<u8>,
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
            // Any start will do; a clock-based one keeps two sockets' numbers apart in
            // traces.
            seq: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs() as u32),
            buf: vec![0; RECV_BUFFER],
        })
    }

    fn take_seq(&mut self, count: u32) -> u32 {
        let first = self.seq;
        self.seq = self.seq.wrapping_add(count);
        first
    }

    /// Reads one datagram into the buffer; its length.
    fn recv(&mut self, flags: RecvFlags) -> Result<usize, Failure> {
        let (_, len) = rustix::net::recv(&self.fd, &mut self.buf[..], flags)?;
        if len > self.buf.len() {
            return Err(Failure::Malformed(format!(
                "a reply of {len} bytes, larger than the {}-byte buffer",
                self.buf.len()
            )));
        }
        Ok(len)
    }

    /// Applies `messages` as one batch: `Ok` once the kernel acknowledged every message,
    /// else the first errno it reported (the kernel then applied none of them).
    pub fn apply(&mut self, messages: Vec<Message>) -> Result<(), Failure> {
        let count = messages.len() as u32;
        let begin = self.take_seq(count + 2);
        let bytes = message::batch(messages, begin);
        rustix::net::send(&self.fd, &bytes, SendFlags::empty())?;
        let wanted = begin.wrapping_add(1)..begin.wrapping_add(1).wrapping_add(count);
        let mut answered = vec![false; count as usize];
        let mut first_error: Option<(u32, i32)> = None;
        while answered.iter().any(|a| !a) {
            // After an error the kernel has queued everything it will say: drain without
            // waiting.
            let flags = if first_error.is_some() {
                RecvFlags::DONTWAIT
            } else {
                RecvFlags::empty()
            };
            let len = match self.recv(flags) {
                Err(Failure::Errno(libc::EAGAIN)) if first_error.is_some() => break,
                Err(Failure::Errno(libc::EAGAIN)) => {
                    return Err(Failure::Errno(libc::ETIMEDOUT));
                }
                other => other?,
            };
            for reply in message::replies(&self.buf[..len]).map_err(Failure::Malformed)? {
                if reply.kind != NLMSG_ERROR {
                    continue;
                }
                let (errno, seq) = reply.error().map_err(Failure::Malformed)?;
                if seq == begin && errno != 0 {
                    // The kernel refused the batch as a whole (e.g. out of memory).
                    return Err(Failure::Errno(errno));
                }
                let index = seq.wrapping_sub(wanted.start);
                if index >= count {
                    continue; // an answer to an earlier request
                }
                answered[index as usize] = true;
                if errno != 0 && first_error.is_none_or(|(at, _)| index < at) {
                    first_error = Some((index, errno));
                }
            }
        }
        match first_error {
            Some((_, errno)) => Err(Failure::Errno(errno)),
            None => Ok(()),
        }
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
            let mut out = Vec::new();
            let mut interrupted = false;
            'reading: loop {
                let len = match self.recv(RecvFlags::empty()) {
                    Err(Failure::Errno(libc::EAGAIN)) => {
                        return Err(Failure::Errno(libc::ETIMEDOUT));
                    }
                    other => other?,
                };
                for reply in message::replies(&self.buf[..len]).map_err(Failure::Malformed)? {
                    if reply.seq != seq {
                        continue;
                    }
                    interrupted |= reply.flags & NLM_F_DUMP_INTR != 0;
                    match reply.kind {
                        NLMSG_DONE => match reply.done_errno() {
                            0 => break 'reading,
                            errno => return Err(Failure::Errno(errno)),
                        },
                        NLMSG_ERROR => match reply.error().map_err(Failure::Malformed)?.0 {
                            0 => break 'reading,
                            errno => return Err(Failure::Errno(errno)),
                        },
                        _ if reply.nft_kind().is_some() => {
                            let attributes = reply.attributes().map_err(Failure::Malformed)?;
                            parse(&attributes, &mut out).map_err(Failure::Malformed)?;
                        }
                        _ => {}
                    }
                }
            }
            if !interrupted {
                return Ok(out);
            }
        }
        Err(Failure::Errno(libc::EINTR))
    }
}
