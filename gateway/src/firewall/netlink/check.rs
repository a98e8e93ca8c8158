//! Is our table complete? Four small netlink reads compared with what `install` puts there:
//! the table (`GETTABLE`), its sets and maps by name (`GETSET` dump), its chains on their
//! hooks (`GETCHAIN` dump) and, chain by chain, its rules in order, each known by the
//! comment nft stored with it (`GETRULE` dump, `NFTA_RULE_USERDATA`).
//!
//! Comparing comments, not just counting rules per chain, also catches a rule of ours
//! replaced by someone else's. The rules' expressions are not compared: they are nft's
//! translation of ours, and a chain holding exactly our comments in our order was filled by
//! our install batch (a flushed or edited chain loses or gains rules).

use super::message::{Attributes, Message, NLM_F_ACK, NLM_F_DUMP, msg, text};
use crate::firewall::rules::{CHAINS, QUOTA_MAPS, Rule, SETS};

const TABLE_NAME: u16 = 1;
const CHAIN_TABLE: u16 = 1;
const CHAIN_NAME: u16 = 3;
const CHAIN_HOOK: u16 = 4;
const HOOK_HOOKNUM: u16 = 1;
const RULE_TABLE: u16 = 1;
const RULE_CHAIN: u16 = 2;
const RULE_USERDATA: u16 = 7;
const SET_TABLE: u16 = 1;
const SET_NAME: u16 = 2;
/// libnftnl's `NFTNL_UDATA_RULE_COMMENT`: the comment's record in a rule's user data
/// (records of type, length, value).
const UDATA_RULE_COMMENT: u8 = 0;

/// The netfilter hook number of a hook name in `CHAINS` (`enum nf_inet_hooks`).
fn hook_number(hook: &str) -> Option<u32> {
    match hook {
        "prerouting" => Some(0),
        "input" => Some(1),
        "forward" => Some(2),
        "output" => Some(3),
        "postrouting" => Some(4),
        _ => None,
    }
}

/// `GETTABLE` of our table (a get, acknowledged): fails with `ENOENT` when it is missing.
pub(super) fn table_request(table: &str) -> Message {
    let mut message = Message::new(msg::GETTABLE, NLM_F_ACK);
    message.put_str(TABLE_NAME, table);
    message
}

pub(super) fn parse_table(message: &Attributes<'_>, out: &mut Vec<String>) -> Result<(), String> {
    out.push(message.str(TABLE_NAME, "table name")?.to_owned());
    Ok(())
}

pub(super) fn sets_request(table: &str) -> Message {
    let mut message = Message::new(msg::GETSET, NLM_F_DUMP);
    message.put_str(SET_TABLE, table);
    message
}

/// The name of a set (or map) of `table`.
pub(super) fn parse_set(
    message: &Attributes<'_>,
    table: &str,
    out: &mut Vec<String>,
) -> Result<(), String> {
    if message.str(SET_TABLE, "set table")? == table {
        out.push(message.str(SET_NAME, "set name")?.to_owned());
    }
    Ok(())
}

pub(super) fn chains_request(table: &str) -> Message {
    let mut message = Message::new(msg::GETCHAIN, NLM_F_DUMP);
    message.put_str(CHAIN_TABLE, table);
    message
}

/// A chain of `table`: its name and hook number (`None` for a regular chain).
pub(super) fn parse_chain(
    message: &Attributes<'_>,
    table: &str,
    out: &mut Vec<(String, Option<u32>)>,
) -> Result<(), String> {
    if message.str(CHAIN_TABLE, "chain table")? != table {
        return Ok(());
    }
    let hook = match message.get(CHAIN_HOOK) {
        Some(_) => Some(
            message
                .nested(CHAIN_HOOK, "chain hook")?
                .u32(HOOK_HOOKNUM, "hook number")?,
        ),
        None => None,
    };
    out.push((message.str(CHAIN_NAME, "chain name")?.to_owned(), hook));
    Ok(())
}

pub(super) fn rules_request(table: &str) -> Message {
    let mut message = Message::new(msg::GETRULE, NLM_F_DUMP);
    message.put_str(RULE_TABLE, table);
    message
}

/// A rule of `table`: its chain and comment (empty if it has none).
pub(super) fn parse_rule(
    message: &Attributes<'_>,
    table: &str,
    out: &mut Vec<(String, String)>,
) -> Result<(), String> {
    if message.str(RULE_TABLE, "rule table")? != table {
        return Ok(());
    }
    let chain = message.str(RULE_CHAIN, "rule chain")?.to_owned();
    let comment = match message.get(RULE_USERDATA) {
        Some(userdata) => comment(userdata)?,
        None => String::new(),
    };
    out.push((chain, comment));
    Ok(())
}

/// The comment record in a rule's user data (empty if there is none).
fn comment(mut userdata: &[u8]) -> Result<String, String> {
    while let [kind, len, rest @ ..] = userdata {
        let value = rest
            .get(..usize::from(*len))
            .ok_or("rule user data record longer than the data")?;
        if *kind == UDATA_RULE_COMMENT {
            return text(value)
                .map(str::to_owned)
                .map_err(|e| format!("rule comment: {e}"));
        }
        userdata = &rest[usize::from(*len)..];
    }
    if userdata.is_empty() {
        Ok(String::new())
    } else {
        Err("rule user data ends inside a record header".to_owned())
    }
}

/// What the four reads found, compared with what `install` makes: every set and map,
/// every chain on its hook, and in each chain exactly the expected rules' comments, in
/// order.
pub(super) fn complete(
    sets: &[String],
    chains: &[(String, Option<u32>)],
    rules: &[(String, String)],
    expected: &[Rule],
) -> bool {
    let has_set = |name: &str| sets.iter().any(|s| s == name);
    if !SETS
        .iter()
        .map(|d| d.name)
        .chain(QUOTA_MAPS.iter().map(|d| d.name))
        .all(has_set)
    {
        return false;
    }
    CHAINS.iter().all(|decl| {
        let hooked = chains.iter().any(|(name, hook)| {
            name == decl.name && hook.is_some() && *hook == hook_number(decl.hook)
        });
        let listed = rules
            .iter()
            .filter(|(chain, _)| chain == decl.name)
            .map(|(_, comment)| comment.as_str());
        let wanted = expected
            .iter()
            .filter(|r| r.chain == decl.name)
            .map(|r| r.comment);
        hooked && listed.eq(wanted)
    })
}
