//! Reading the kernel's acknowledgements of a batch, datagram by datagram, without I/O
//! ([`Acks`]; a dump's answer is read by the shared `crate::netlink::Dump`). The socket
//! feeds it what it receives; tests feed it recorded replies.

use super::message::{self, NLMSG_ERROR};
use super::socket::Failure;

/// The answers to a batch whose begin message was numbered `begin` and whose `count`
/// messages follow it (each asked for an acknowledgement).
#[derive(Debug)]
pub(super) struct Acks {
    begin: u32,
    answered: Vec<bool>,
    /// The errno of the earliest message the kernel refused, and its index.
    first_error: Option<(usize, i32)>,
}

impl Acks {
    pub fn new(begin: u32, count: usize) -> Self {
        Acks {
            begin,
            answered: vec![false; count],
            first_error: None,
        }
    }

    /// Reads one datagram. `Err` at once for a refusal of the batch as a whole; answers
    /// to other requests (an earlier one that timed out) are skipped.
    pub fn feed(&mut self, datagram: &[u8]) -> Result<(), Failure> {
        for reply in message::replies(datagram).map_err(Failure::Malformed)? {
            if reply.kind != NLMSG_ERROR {
                continue;
            }
            let (errno, seq) = reply.error().map_err(Failure::Malformed)?;
            if seq == self.begin && errno != 0 {
                // E.g. out of memory while queueing the answers: none will come.
                return Err(Failure::Errno(errno));
            }
            let index = seq.wrapping_sub(self.begin.wrapping_add(1)) as usize;
            let Some(answered) = self.answered.get_mut(index) else {
                continue;
            };
            *answered = true;
            if errno != 0 && self.first_error.is_none_or(|(at, _)| index < at) {
                self.first_error = Some((index, errno));
            }
        }
        Ok(())
    }

    /// Has every message been answered?
    pub fn complete(&self) -> bool {
        self.answered.iter().all(|a| *a)
    }

    /// Has the kernel refused a message? (Then it has already queued all it will say.)
    pub fn refused(&self) -> bool {
        self.first_error.is_some()
    }

    /// The outcome once complete, or once a refusal was read and nothing more came: the
    /// earliest refusal's errno (the kernel then applied nothing), else `Ok`.
    pub fn outcome(&self) -> Result<(), Failure> {
        match self.first_error {
            Some((_, errno)) => Err(Failure::Errno(errno)),
            None if self.complete() => Ok(()),
            None => Err(Failure::Malformed(
                "the kernel left messages of the batch unanswered".to_owned(),
            )),
        }
    }
}
