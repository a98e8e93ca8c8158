//! Set elements: the keys of our client sets and quota maps as the kernel stores them, the
//! `NEWSETELEM`/`DELSETELEM` requests that change them and the `GETSETELEM` dump that lists
//! them (with each element's time left and counter).
//!
//! A key is the concatenation of its fields, each padded to a 4-byte register: `ether_addr .
//! ipv4_addr` is 6 + 2 + 4 = 12 bytes, `ether_addr . ipv6_addr` 8 + 16, `ipv4_addr` 4,
//! `ipv6_addr` 16. Addresses are in network order.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use super::message::{Attributes, Message, NLM_F_CREATE, NLM_F_DUMP, msg};
use crate::firewall::listing::Element;
use crate::firewall::rules::QuotaKey;
use crate::net::{Client, Mac};

// enum nft_set_elem_list_attributes
const LIST_TABLE: u16 = 1;
const LIST_SET: u16 = 2;
const LIST_ELEMENTS: u16 = 3;
// enum nft_list_attributes
pub(super) const LIST_ELEM: u16 = 1;
// enum nft_set_elem_attributes
const ELEM_KEY: u16 = 1;
const ELEM_TIMEOUT: u16 = 4;
const ELEM_EXPIRATION: u16 = 5;
const ELEM_EXPR: u16 = 7;
const ELEM_OBJREF: u16 = 9;
const ELEM_EXPRESSIONS: u16 = 11;
// enum nft_data_attributes
const DATA_VALUE: u16 = 1;
// enum nft_expr_attributes, enum nft_counter_attributes
const EXPR_NAME: u16 = 1;
const EXPR_DATA: u16 = 2;
const COUNTER_BYTES: u16 = 1;
const COUNTER_PACKETS: u16 = 2;

/// A key as the kernel stores it.
pub(super) fn ip_key(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// `ether_addr . ipvN_addr`: the MAC padded to 8 bytes, then the address.
pub(super) fn mac_ip_key(client: &Client) -> Vec<u8> {
    let mut key = Vec::with_capacity(24);
    key.extend_from_slice(&client.mac.0);
    key.extend_from_slice(&[0, 0]);
    key.extend(ip_key(client.ip));
    key
}

pub(super) fn quota_key(key: &QuotaKey) -> Vec<u8> {
    match key {
        QuotaKey::Up(client) => mac_ip_key(client),
        QuotaKey::Down(ip) => ip_key(*ip),
    }
}

/// The download key (an address) back, or `None` for bytes that are not one.
pub(super) fn decode_ip_key(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(bytes).ok()?,
        ))),
        _ => None,
    }
}

/// The upload key (MAC . address) back; the padding must be zero.
pub(super) fn decode_mac_ip_key(bytes: &[u8]) -> Option<Client> {
    if bytes.len() != 12 && bytes.len() != 24 {
        return None;
    }
    let (mac, rest) = bytes.split_at(6);
    let (padding, ip) = rest.split_at(2);
    if padding != [0, 0] {
        return None;
    }
    Some(Client {
        mac: Mac(mac.try_into().ok()?),
        ip: decode_ip_key(ip)?,
    })
}

/// One element of a change: its key and, for `NEWSETELEM`, what goes with it.
#[derive(Debug, Clone)]
pub(super) struct Change<'a> {
    pub key: Vec<u8>,
    /// The element's timeout (only on sets with `flags timeout`).
    pub timeout: Option<Duration>,
    /// The quota object the element maps to (only on quota maps).
    pub objref: Option<&'a str>,
}

/// A request adding (`NEWSETELEM`, created if missing, left as it is if present) or
/// deleting (`DELSETELEM`) `changes` in `set` of `table`. `changes` must not be empty.
pub(super) fn change(table: &str, set: &str, add: bool, changes: &[Change<'_>]) -> Message {
    let mut message = if add {
        Message::new(msg::NEWSETELEM, NLM_F_CREATE)
    } else {
        Message::new(msg::DELSETELEM, 0)
    };
    message
        .put_str(LIST_TABLE, table)
        .put_str(LIST_SET, set)
        .begin(LIST_ELEMENTS);
    for change in changes {
        message.begin(LIST_ELEM);
        if let (true, Some(timeout)) = (add, change.timeout) {
            message.put_u64(ELEM_TIMEOUT, timeout.as_millis() as u64);
        }
        message.begin(ELEM_KEY).put(DATA_VALUE, &change.key).end();
        if let (true, Some(objref)) = (add, change.objref) {
            message.put_str(ELEM_OBJREF, objref);
        }
        message.end();
    }
    message.end();
    message
}

/// The `GETSETELEM` dump request of `set`.
pub(super) fn dump_request(table: &str, set: &str) -> Message {
    let mut message = Message::new(msg::GETSETELEM, NLM_F_DUMP);
    message.put_str(LIST_TABLE, table).put_str(LIST_SET, set);
    message
}

/// One listed element, its key still raw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Listed<'a> {
    pub key: &'a [u8],
    /// Time left (`NFTA_SET_ELEM_EXPIRATION`), if the element has a timeout.
    pub expires: Option<Duration>,
    /// `(bytes, packets)` of the element's counter, if it has one.
    pub counter: Option<(u64, u64)>,
    pub objref: Option<&'a str>,
}

/// The elements in one message of a `GETSETELEM` dump of `set`, each read by `each`.
pub(super) fn parse_dump<T>(
    message: &Attributes<'_>,
    set: &str,
    out: &mut Vec<T>,
    mut each: impl FnMut(Listed<'_>) -> Result<T, String>,
) -> Result<(), String> {
    let listed_set = message.str(LIST_SET, "set name")?;
    if listed_set != set {
        return Err(format!("elements of set {listed_set}, not {set}"));
    }
    // A message without elements is an empty set's.
    let Some(elements) = message.get(LIST_ELEMENTS) else {
        return Ok(());
    };
    for element in Attributes::parse(elements)?.all(LIST_ELEM) {
        let element = Attributes::parse(element)?;
        let key = element.nested(ELEM_KEY, "element key")?;
        let expires = match element.get(ELEM_EXPIRATION) {
            Some(_) => Some(Duration::from_millis(
                element.u64(ELEM_EXPIRATION, "expiration")?,
            )),
            None => None,
        };
        let objref = match element.get(ELEM_OBJREF) {
            Some(_) => Some(element.str(ELEM_OBJREF, "object reference")?),
            None => None,
        };
        let listed = Listed {
            key: key.required(DATA_VALUE, "key value")?,
            expires,
            counter: counter(&element)?,
            objref,
        };
        out.push(each(listed)?);
    }
    Ok(())
}

/// The element's counter: one expression in `NFTA_SET_ELEM_EXPR`, or one of a list in
/// `NFTA_SET_ELEM_EXPRESSIONS` (the kernel uses the list when a set has several).
fn counter(element: &Attributes<'_>) -> Result<Option<(u64, u64)>, String> {
    let list = match element.get(ELEM_EXPRESSIONS) {
        Some(list) => Attributes::parse(list)?,
        None => Attributes::default(),
    };
    for expression in element.all(ELEM_EXPR).chain(list.all(LIST_ELEM)) {
        let expression = Attributes::parse(expression)?;
        if expression.str(EXPR_NAME, "expression name")? != "counter" {
            continue;
        }
        let data = expression.nested(EXPR_DATA, "counter data")?;
        return Ok(Some((
            data.u64(COUNTER_BYTES, "counter bytes")?,
            data.u64(COUNTER_PACKETS, "counter packets")?,
        )));
    }
    Ok(None)
}

/// A client-set element as `listing` reports it: time left rounded down to whole seconds
/// (as nft lists it), and the counter every client-set element must have.
pub(super) fn client_element<K>(
    listed: Listed<'_>,
    key: impl Fn(&[u8]) -> Option<K>,
) -> Result<Element<K>, String> {
    let decoded = key(listed.key).ok_or_else(|| format!("unexpected key {:02x?}", listed.key))?;
    let (bytes, packets) = listed
        .counter
        .ok_or_else(|| format!("element {:02x?} without counter", listed.key))?;
    Ok(Element {
        key: decoded,
        expires: listed
            .expires
            .map(|left| Duration::from_secs(left.as_secs())),
        bytes,
        packets,
    })
}
