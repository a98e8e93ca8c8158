//! Reading the kernel's answers, datagram by datagram, without I/O: the acknowledgements of
//! a batch ([`Acks`]) and the messages of a dump or get ([`Dump`]). The socket feeds them
//! what it receives; tests feed them recorded replies.

use super::message::{self, Attributes, NLM_F_DUMP_INTR, NLMSG_DONE, NLMSG_ERROR};
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

/// The reply to the dump (or acknowledged get) numbered `seq`: each nf_tables message
/// parsed by `parse` into `out`, in order.
#[derive(Debug)]
pub(super) struct Dump<T, P> {
    seq: u32,
    parse: P,
    pub out: Vec<T>,
    /// The kernel marked the dump inconsistent (the ruleset changed while it ran).
    pub interrupted: bool,
}

impl<T, P> Dump<T, P>
where
    P: FnMut(&Attributes<'_>, &mut Vec<T>) -> Result<(), String>,
{
    pub fn new(seq: u32, parse: P) -> Self {
        Dump {
            seq,
            parse,
            out: Vec::new(),
            interrupted: false,
        }
    }

    /// Reads one datagram; `Ok(true)` once the reply is complete (`NLMSG_DONE`, or the
    /// acknowledgement of a get).
    pub fn feed(&mut self, datagram: &[u8]) -> Result<bool, Failure> {
        for reply in message::replies(datagram).map_err(Failure::Malformed)? {
            if reply.seq != self.seq {
                continue;
            }
            self.interrupted |= reply.flags & NLM_F_DUMP_INTR != 0;
            match reply.kind {
                NLMSG_DONE => {
                    return match reply.done_errno() {
                        0 => Ok(true),
                        errno => Err(Failure::Errno(errno)),
                    };
                }
                NLMSG_ERROR => {
                    return match reply.error().map_err(Failure::Malformed)?.0 {
                        0 => Ok(true),
                        errno => Err(Failure::Errno(errno)),
                    };
                }
                _ if message::nft_kind(&reply).is_some() => {
                    let attributes = message::nft_attributes(&reply).map_err(Failure::Malformed)?;
                    (self.parse)(&attributes, &mut self.out).map_err(Failure::Malformed)?;
                }
                _ => {}
            }
        }
        Ok(false)
    }
}
