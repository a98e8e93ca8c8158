//! Netlink framing for nf_tables: building request messages (header, `nfgenmsg`, nested
//! attributes) and batches, and reading an nf_tables reply's attributes (the framing all
//! netlink shares is in `crate::netlink`). Pure functions over bytes, no I/O; every read is
//! bounds-checked and a malformed reply is an `Err(String)`, never a panic.
//!
//! Layout (`linux/netlink.h`, `linux/netfilter/nfnetlink.h`): a message is a 16-byte
//! `nlmsghdr` (length, type, flags, sequence, port, host byte order), then for nf_tables a
//! 4-byte `nfgenmsg` (family, version 0, resource id, big endian), then attributes, each a
//! 4-byte header (length, type) and its value, padded to 4 bytes. Numbers inside nf_tables
//! attributes are big endian.

pub(super) use crate::netlink::{
    Attributes, NLM_F_ACK, NLM_F_DUMP, NLMSG_ERROR, Reply, replies, text,
};
use crate::netlink::{NLA_F_NESTED, NLM_F_REQUEST, NLMSG_HDRLEN, align4};

/// `NFNL_SUBSYS_NFTABLES`: the high byte of every nf_tables message type.
pub(super) const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFNL_MSG_BATCH_BEGIN` and `NFNL_MSG_BATCH_END` (`NLMSG_MIN_TYPE` and the next).
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

pub(super) const NLM_F_CREATE: u16 = 0x400;

/// `NFPROTO_INET`: our table's family.
pub(super) const NFPROTO_INET: u8 = 1;

const NFGENMSG_LEN: usize = 4;

/// The nf_tables message types we send and read (`enum nf_tables_msg_types`).
pub(super) mod msg {
    pub const GETTABLE: u16 = 1;
    pub const GETCHAIN: u16 = 4;
    pub const GETRULE: u16 = 7;
    pub const GETSET: u16 = 10;
    pub const NEWSETELEM: u16 = 12;
    pub const GETSETELEM: u16 = 13;
    pub const DELSETELEM: u16 = 14;
    pub const NEWOBJ: u16 = 18;
    pub const GETOBJ: u16 = 19;
    pub const DELOBJ: u16 = 20;
}

/// One nf_tables request being built. Its sequence number is set when it is framed.
#[derive(Debug, Clone)]
pub(super) struct Message {
    buf: Vec<u8>,
    /// Offsets of the nested attributes still open.
    open: Vec<usize>,
}

impl Message {
    /// A request of nf_tables message type `kind` (`msg::*`) for family inet.
    pub fn new(kind: u16, flags: u16) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | kind).to_ne_bytes());
        buf.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        buf.extend_from_slice(&[0; 8]); // sequence and port, set by `framed`
        buf.extend_from_slice(&[NFPROTO_INET, 0, 0, 0]);
        Message {
            buf,
            open: Vec::new(),
        }
    }

    /// A batch delimiter: no family, resource id `NFNL_SUBSYS_NFTABLES` (big endian).
    fn delimiter(kind: u16) -> Self {
        let mut message = Message {
            buf: Vec::with_capacity(NLMSG_HDRLEN + NFGENMSG_LEN),
            open: Vec::new(),
        };
        message.buf.extend_from_slice(&0u32.to_ne_bytes());
        message.buf.extend_from_slice(&kind.to_ne_bytes());
        message.buf.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        message.buf.extend_from_slice(&[0; 8]);
        message.buf.extend_from_slice(&[0, 0]);
        message
            .buf
            .extend_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
        message
    }

    pub fn put(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let len = 4 + value.len();
        // Attribute lengths are u16; ours are names, keys and numbers, far below that.
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    /// A string attribute, NUL-terminated as the kernel's `NLA_STRING` policy expects.
    pub fn put_str(&mut self, kind: u16, value: &str) -> &mut Self {
        let mut bytes = Vec::with_capacity(value.len() + 1);
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(0);
        self.put(kind, &bytes)
    }

    pub fn put_u32(&mut self, kind: u16, value: u32) -> &mut Self {
        self.put(kind, &value.to_be_bytes())
    }

    pub fn put_u64(&mut self, kind: u16, value: u64) -> &mut Self {
        self.put(kind, &value.to_be_bytes())
    }

    /// Opens a nested attribute; what is put until the matching [`Self::end`] goes inside.
    pub fn begin(&mut self, kind: u16) -> &mut Self {
        self.open.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(NLA_F_NESTED | kind).to_ne_bytes());
        self
    }

    pub fn end(&mut self) -> &mut Self {
        let start = self.open.pop().expect("end() without begin()");
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    /// The message's bytes with its length and sequence number filled in.
    fn framed(mut self, seq: u32) -> Vec<u8> {
        assert!(self.open.is_empty(), "a nested attribute left open");
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }

    /// One request on its own (a get or a dump), numbered `seq`.
    pub fn request(self, seq: u32) -> Vec<u8> {
        self.framed(seq)
    }
}

/// `messages` framed as one nf_tables batch (begin, the messages, end), numbered from
/// `first_seq` on: the kernel applies all of them or none. Each message asks for an
/// acknowledgement, so the reply names every message the kernel accepted.
pub(super) fn batch(messages: Vec<Message>, first_seq: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut seq = first_seq;
    let mut next = || {
        let this = seq;
        seq = seq.wrapping_add(1);
        this
    };
    out.extend(Message::delimiter(NFNL_MSG_BATCH_BEGIN).framed(next()));
    for mut message in messages {
        let flags = u16::from_ne_bytes([message.buf[6], message.buf[7]]) | NLM_F_ACK;
        message.buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        out.extend(message.framed(next()));
    }
    out.extend(Message::delimiter(NFNL_MSG_BATCH_END).framed(next()));
    out
}

/// The nf_tables message type of a reply, if it is one (else `None`).
pub(super) fn nft_kind(reply: &Reply<'_>) -> Option<u16> {
    (reply.kind >> 8 == NFNL_SUBSYS_NFTABLES).then_some(reply.kind & 0xff)
}

/// An nf_tables message's attributes (after the `nfgenmsg`).
pub(super) fn nft_attributes<'a>(reply: &Reply<'a>) -> Result<Attributes<'a>, String> {
    let (_, attributes) =
        reply.split(NFGENMSG_LEN, "nf_tables message shorter than its nfgenmsg")?;
    Attributes::parse(attributes)
}
