//! Netlink framing for nf_tables: building request messages (header, `nfgenmsg`, nested
//! attributes) and batches, and reading replies back into messages and attributes. Pure
//! functions over bytes, no I/O; every read is bounds-checked and a malformed reply is an
//! `Err(String)`, never a panic.
//!
//! Layout (`linux/netlink.h`, `linux/netfilter/nfnetlink.h`): a message is a 16-byte
//! `nlmsghdr` (length, type, flags, sequence, port, host byte order), then for nf_tables a
//! 4-byte `nfgenmsg` (family, version 0, resource id, big endian), then attributes, each a
//! 4-byte header (length, type) and its value, padded to 4 bytes. Numbers inside nf_tables
//! attributes are big endian.

/// `NFNL_SUBSYS_NFTABLES`: the high byte of every nf_tables message type.
pub(super) const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFNL_MSG_BATCH_BEGIN` and `NFNL_MSG_BATCH_END` (`NLMSG_MIN_TYPE` and the next).
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

pub(super) const NLMSG_ERROR: u16 = 2;
pub(super) const NLMSG_DONE: u16 = 3;

pub(super) const NLM_F_REQUEST: u16 = 0x1;
pub(super) const NLM_F_ACK: u16 = 0x4;
pub(super) const NLM_F_DUMP_INTR: u16 = 0x10;
pub(super) const NLM_F_DUMP: u16 = 0x300;
pub(super) const NLM_F_CREATE: u16 = 0x400;

const NLA_F_NESTED: u16 = 0x8000;
/// The attribute-type bits (without `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER`).
const NLA_TYPE_MASK: u16 = 0x3fff;

/// `NFPROTO_INET`: our table's family.
pub(super) const NFPROTO_INET: u8 = 1;

const NLMSG_HDRLEN: usize = 16;
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

fn align4(len: usize) -> usize {
    (len + 3) & !3
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

/// One message of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Reply<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    /// What follows the `nlmsghdr`.
    pub payload: &'a [u8],
}

impl<'a> Reply<'a> {
    /// For `NLMSG_ERROR`: the errno (0 for an acknowledgement) and the sequence number of
    /// the request it answers (the echoed header's).
    pub fn error(&self) -> Result<(i32, u32), String> {
        let code = read_i32(self.payload, 0)?;
        let seq = self
            .payload
            .get(4 + 8..4 + 12)
            .map_or(self.seq, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
        Ok((code.saturating_neg(), seq))
    }

    /// For `NLMSG_DONE`: the errno a failed dump ends with (0 when it went through).
    pub fn done_errno(&self) -> i32 {
        read_i32(self.payload, 0).map_or(0, i32::saturating_neg)
    }

    /// The nf_tables message type, if this is one (else `None`).
    pub fn nft_kind(&self) -> Option<u16> {
        (self.kind >> 8 == NFNL_SUBSYS_NFTABLES).then_some(self.kind & 0xff)
    }

    /// An nf_tables message's attributes (after the `nfgenmsg`).
    pub fn attributes(&self) -> Result<Attributes<'a>, String> {
        let data = self
            .payload
            .get(NFGENMSG_LEN..)
            .ok_or("nf_tables message shorter than its nfgenmsg")?;
        Attributes::parse(data)
    }
}

fn read_i32(data: &[u8], at: usize) -> Result<i32, String> {
    data.get(at..at + 4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| "netlink error message too short".to_owned())
}

/// The messages in one datagram read from the socket.
pub(super) fn replies(mut data: &[u8]) -> Result<Vec<Reply<'_>>, String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let header = data
            .get(..NLMSG_HDRLEN)
            .ok_or_else(|| format!("{} stray bytes after the last message", data.len()))?;
        let field = |at: usize| [header[at], header[at + 1]];
        let len = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len < NLMSG_HDRLEN || len > data.len() {
            return Err(format!(
                "message length {len} with {} bytes left",
                data.len()
            ));
        }
        out.push(Reply {
            kind: u16::from_ne_bytes(field(4)),
            flags: u16::from_ne_bytes(field(6)),
            seq: u32::from_ne_bytes([header[8], header[9], header[10], header[11]]),
            payload: &data[NLMSG_HDRLEN..len],
        });
        data = data.get(align4(len)..).unwrap_or_default();
    }
    Ok(out)
}

/// The attributes at one level of a message, by type (the last of a repeated type wins in
/// [`Attributes::get`]; [`Attributes::all`] keeps them all, in order).
#[derive(Debug, Clone, Default)]
pub(super) struct Attributes<'a> {
    list: Vec<(u16, &'a [u8])>,
}

impl<'a> Attributes<'a> {
    pub fn parse(mut data: &'a [u8]) -> Result<Self, String> {
        let mut list = Vec::new();
        while data.len() >= 4 {
            let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
            let kind = u16::from_ne_bytes([data[2], data[3]]) & NLA_TYPE_MASK;
            if len < 4 || len > data.len() {
                return Err(format!(
                    "attribute {kind} of length {len} with {} bytes left",
                    data.len()
                ));
            }
            list.push((kind, &data[4..len]));
            data = data.get(align4(len)..).unwrap_or_default();
        }
        if !data.is_empty() {
            return Err(format!("{} stray bytes after the attributes", data.len()));
        }
        Ok(Attributes { list })
    }

    pub fn get(&self, kind: u16) -> Option<&'a [u8]> {
        self.list
            .iter()
            .rev()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| *v)
    }

    /// Every attribute of type `kind`, in order.
    pub fn all(&self, kind: u16) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.list
            .iter()
            .filter(move |(k, _)| *k == kind)
            .map(|(_, v)| *v)
    }

    pub fn required(&self, kind: u16, what: &str) -> Result<&'a [u8], String> {
        self.get(kind).ok_or_else(|| format!("no {what} attribute"))
    }

    pub fn nested(&self, kind: u16, what: &str) -> Result<Attributes<'a>, String> {
        Attributes::parse(self.required(kind, what)?).map_err(|e| format!("{what}: {e}"))
    }

    pub fn str(&self, kind: u16, what: &str) -> Result<&'a str, String> {
        text(self.required(kind, what)?).map_err(|e| format!("{what}: {e}"))
    }

    pub fn u32(&self, kind: u16, what: &str) -> Result<u32, String> {
        let value = self.required(kind, what)?;
        let bytes: [u8; 4] = value
            .try_into()
            .map_err(|_| format!("{what}: {} bytes, not 4", value.len()))?;
        Ok(u32::from_be_bytes(bytes))
    }

    pub fn u64(&self, kind: u16, what: &str) -> Result<u64, String> {
        let value = self.required(kind, what)?;
        let bytes: [u8; 8] = value
            .try_into()
            .map_err(|_| format!("{what}: {} bytes, not 8", value.len()))?;
        Ok(u64::from_be_bytes(bytes))
    }
}

/// A netlink string: UTF-8 up to its NUL terminator (the kernel always adds one).
pub(super) fn text(value: &[u8]) -> Result<&str, String> {
    let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
    std::str::from_utf8(&value[..end]).map_err(|_| "not UTF-8".to_owned())
}
