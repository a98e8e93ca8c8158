//! Quota objects (`NFT_OBJECT_QUOTA`): the `NEWOBJ`/`DELOBJ` requests for a session's
//! `quota q_<session> { over N bytes used M bytes }` and the `GETOBJ` dump that lists what each has used.

use super::message::{Attributes, Message, NLM_F_CREATE, NLM_F_DUMP, msg};
use crate::firewall::SessionQuota;
use crate::firewall::rules::{MAX_QUOTA_BYTES, QUOTA_PREFIX};

// enum nft_object_attributes
const OBJ_TABLE: u16 = 1;
const OBJ_NAME: u16 = 2;
const OBJ_TYPE: u16 = 3;
const OBJ_DATA: u16 = 4;
const NFT_OBJECT_QUOTA: u32 = 2;
// enum nft_quota_attributes
const QUOTA_BYTES: u16 = 1;
const QUOTA_FLAGS: u16 = 2;
const QUOTA_CONSUMED: u16 = 4;
/// `NFT_QUOTA_F_INV`: `over`, the quota matches once used up (what the drop rules need).
const NFT_QUOTA_F_INV: u32 = 1;

fn object(kind: u16, flags: u16, table: &str, name: &str) -> Message {
    let mut message = Message::new(kind, flags);
    message
        .put_str(OBJ_TABLE, table)
        .put_str(OBJ_NAME, name)
        .put_u32(OBJ_TYPE, NFT_OBJECT_QUOTA);
    message
}

/// `add quota TABLE NAME { over BYTES bytes used USED bytes }` (at most `i64::MAX`, the
/// kernel's limit; `used` at most `bytes`): as nft sends it. An existing quota is updated,
/// not replaced.
pub(super) fn add(table: &str, name: &str, bytes: u64, used: u64) -> Message {
    let bytes = bytes.min(MAX_QUOTA_BYTES);
    let mut message = object(msg::NEWOBJ, NLM_F_CREATE, table, name);
    message
        .begin(OBJ_DATA)
        .put_u64(QUOTA_BYTES, bytes)
        .put_u64(QUOTA_CONSUMED, used.min(bytes))
        .put_u32(QUOTA_FLAGS, NFT_QUOTA_F_INV)
        .end();
    message
}

pub(super) fn delete(table: &str, name: &str) -> Message {
    object(msg::DELOBJ, 0, table, name)
}

/// The `GETOBJ` dump of the table's quotas (the kernel filters by table and type).
pub(super) fn dump_request(table: &str) -> Message {
    let mut message = Message::new(msg::GETOBJ, NLM_F_DUMP);
    message
        .put_str(OBJ_TABLE, table)
        .put_u32(OBJ_TYPE, NFT_OBJECT_QUOTA);
    message
}

/// One message of the `GETOBJ` dump: a session's quota, `None` for an object of another
/// table or type, or one not named `q_<session>` (not ours to read). The kernel lists
/// `consumed` at most the limit, as nft's `used`.
pub(super) fn parse(
    message: &Attributes<'_>,
    table: &str,
) -> Result<Option<(String, SessionQuota)>, String> {
    if message.str(OBJ_TABLE, "object table")? != table
        || message.u32(OBJ_TYPE, "object type")? != NFT_OBJECT_QUOTA
    {
        return Ok(None);
    }
    let name = message.str(OBJ_NAME, "object name")?;
    let Some(session) = name.strip_prefix(QUOTA_PREFIX) else {
        return Ok(None);
    };
    let data = message.nested(OBJ_DATA, "quota data")?;
    Ok(Some((
        session.to_owned(),
        SessionQuota {
            limit_bytes: data.u64(QUOTA_BYTES, "quota bytes")?,
            used_bytes: data.u64(QUOTA_CONSUMED, "quota consumed")?,
        },
    )))
}
