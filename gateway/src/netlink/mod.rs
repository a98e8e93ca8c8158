//! Netlink shared by the gateway's kernel conversations: nf_tables (the firewall,
//! `firewall::netlink`), rtnetlink (the neighbour table, `neighbours`) and ctnetlink (the
//! connection-tracking table, `cutoff`). Building a request, splitting a datagram into
//! messages and a message into attributes: pure functions over bytes, every read
//! bounds-checked, a malformed reply an `Err(String)`, never a panic; and a [`Socket`] for
//! dumps and acknowledged requests.
//!
//! A message is a 16-byte `nlmsghdr` (length, type, flags, sequence, port; host byte order)
//! and a payload; attributes are a 4-byte header (length, type) and a value, padded to 4
//! bytes (`linux/netlink.h`).

mod socket;

// The dump reader itself is the socket's; tests feed it recorded replies.
#[cfg(test)]
pub(crate) use socket::Dump;
pub(crate) use socket::{RecvFlags, Socket};

pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;

pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_DUMP_INTR: u16 = 0x10;
pub(crate) const NLM_F_DUMP: u16 = 0x300;

pub(crate) const NLMSG_HDRLEN: usize = 16;
const NLA_TYPE_MASK: u16 = 0x3fff;

pub(crate) fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// Set on a nested attribute's type.
pub(crate) const NLA_F_NESTED: u16 = 0x8000;

/// One attribute: header, `payload`, padding to 4 bytes.
pub(crate) fn attribute(kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(align4(4 + payload.len()));
    // Attribute lengths are u16; ours are addresses, ports and small nests, far below that.
    bytes.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    bytes.extend_from_slice(&kind.to_ne_bytes());
    bytes.extend_from_slice(payload);
    bytes.resize(align4(bytes.len()), 0);
    bytes
}

/// One request message: the `nlmsghdr` (`kind`, `flags`, `seq`), the family's own fixed
/// header (`nfgenmsg`, `ndmsg`), and the attributes.
pub(crate) fn request(kind: u16, flags: u16, seq: u32, fixed: &[u8], attributes: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + fixed.len() + attributes.len();
    let mut bytes = Vec::with_capacity(len);
    bytes.extend_from_slice(&(len as u32).to_ne_bytes());
    bytes.extend_from_slice(&kind.to_ne_bytes());
    bytes.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    bytes.extend_from_slice(&seq.to_ne_bytes());
    bytes.extend_from_slice(&0u32.to_ne_bytes());
    bytes.extend_from_slice(fixed);
    bytes.extend_from_slice(attributes);
    bytes
}

/// The native-endian `u32` at `at` of a fixed header (one [`Reply::split`] gave, so long
/// enough).
pub(crate) fn ne_u32(header: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
}

/// One message of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reply<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    /// What follows the `nlmsghdr`.
    pub payload: &'a [u8],
}

impl<'a> Reply<'a> {
    /// The message's fixed header of `len` bytes (an `ndmsg`, `ifaddrmsg`, `tcmsg`,
    /// `nfgenmsg`) and the attributes after it; `too_short` is the error of a message
    /// without room for the header.
    pub fn split(&self, len: usize, too_short: &str) -> Result<(&'a [u8], &'a [u8]), String> {
        if self.payload.len() < len {
            return Err(too_short.to_owned());
        }
        Ok(self.payload.split_at(len))
    }

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
}

fn read_i32(data: &[u8], at: usize) -> Result<i32, String> {
    data.get(at..at + 4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| "netlink error message too short".to_owned())
}

/// The messages in one datagram read from the socket.
pub(crate) fn replies(mut data: &[u8]) -> Result<Vec<Reply<'_>>, String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let header = data
            .get(..NLMSG_HDRLEN)
            .ok_or_else(|| format!("{} stray bytes after the last message", data.len()))?;
        let field = |at: usize| [header[at], header[at + 1]];
        let len = ne_u32(header, 0) as usize;
        if len < NLMSG_HDRLEN || len > data.len() {
            return Err(format!(
                "message length {len} with {} bytes left",
                data.len()
            ));
        }
        out.push(Reply {
            kind: u16::from_ne_bytes(field(4)),
            flags: u16::from_ne_bytes(field(6)),
            seq: ne_u32(header, 8),
            payload: &data[NLMSG_HDRLEN..len],
        });
        data = data.get(align4(len)..).unwrap_or_default();
    }
    Ok(out)
}

/// The attributes at one level of a message, by type (the last of a repeated type wins in
/// [`Attributes::get`]; [`Attributes::all`] keeps them all, in order).
#[derive(Debug, Clone, Default)]
pub(crate) struct Attributes<'a> {
    /// The first [`INLINE_ATTRIBUTES`] (`inline[..inline_len]`), then the rest: a dump of
    /// thousands of set elements parses a few levels of attributes per element, each
    /// without a heap allocation.
    inline: [(u16, &'a [u8]); INLINE_ATTRIBUTES],
    inline_len: usize,
    more: Vec<(u16, &'a [u8])>,
}

/// Attributes of one level kept inline: more than a set element, a neighbour entry or a
/// counter has.
const INLINE_ATTRIBUTES: usize = 8;

impl<'a> Attributes<'a> {
    pub fn parse(mut data: &'a [u8]) -> Result<Self, String> {
        let mut attributes = Attributes::default();
        while data.len() >= 4 {
            let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
            let kind = u16::from_ne_bytes([data[2], data[3]]) & NLA_TYPE_MASK;
            if len < 4 || len > data.len() {
                return Err(format!(
                    "attribute {kind} of length {len} with {} bytes left",
                    data.len()
                ));
            }
            attributes.push((kind, &data[4..len]));
            data = data.get(align4(len)..).unwrap_or_default();
        }
        if !data.is_empty() {
            return Err(format!("{} stray bytes after the attributes", data.len()));
        }
        Ok(attributes)
    }

    fn push(&mut self, attribute: (u16, &'a [u8])) {
        match self.inline.get_mut(self.inline_len) {
            Some(slot) => {
                *slot = attribute;
                self.inline_len += 1;
            }
            None => self.more.push(attribute),
        }
    }

    /// Every attribute, in order.
    fn list(&self) -> impl DoubleEndedIterator<Item = &(u16, &'a [u8])> {
        self.inline[..self.inline_len].iter().chain(&self.more)
    }

    pub fn get(&self, kind: u16) -> Option<&'a [u8]> {
        self.list().rev().find(|(k, _)| *k == kind).map(|(_, v)| *v)
    }

    /// Every attribute of type `kind`, in order.
    pub fn all(&self, kind: u16) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.list()
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
pub(crate) fn text(value: &[u8]) -> Result<&str, String> {
    let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
    std::str::from_utf8(&value[..end]).map_err(|_| "not UTF-8".to_owned())
}
