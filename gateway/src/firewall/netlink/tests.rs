//! Unit tests of the netlink encoding and decoding, without a kernel: requests compared
//! byte for byte with what nft 1.0.6 sends for the same change (recorded with `strace -e
//! trace=sendmsg` and `nft --debug=mnl`), replies recorded from the kernel (6.18, `strace -e
//! read=3` of `nft -j list ...`) decoded, and malformed replies refused without a panic.

use std::net::IpAddr;
use std::time::Duration;

use proptest::prelude::*;

use super::exchange::Acks;
use super::message::{self, Message};
use super::socket::Failure;
use super::{
    allow_batch, check, clear_quota_batch, elements, objects, revoke_batch, set_quota_batch,
};
use crate::firewall::listing::Element;
use crate::firewall::rules::{self, QuotaElement, QuotaKey};
use crate::firewall::{FirewallConfig, SessionQuota};
use crate::net::Client;
use crate::netlink::{Dump, Reply};

fn client(mac: &str, ip: &str) -> Client {
    Client {
        mac: mac.parse().expect("test MAC"),
        ip: ip.parse().expect("test IP"),
    }
}

/// nft's `add element inet t clients4_up { 02:00:00:00:00:02 . 10.0.0.2 timeout 60s }`:
/// the NEWSETELEM message of its batch, as sent (sequence 1).
const NFT_ADD_UP: [u8; 92] = [
    0x5c, 0x00, 0x00, 0x00, // length 92
    0x0c, 0x0a, // NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWSETELEM
    0x01, 0x04, // NLM_F_REQUEST | NLM_F_CREATE
    0x01, 0x00, 0x00, 0x00, // sequence 1
    0x00, 0x00, 0x00, 0x00, // port
    0x01, 0x00, 0x00, 0x00, // nfgenmsg: NFPROTO_INET, version 0, res_id 0
    0x06, 0x00, 0x01, 0x00, b't', 0x00, 0x00, 0x00, // NFTA_SET_ELEM_LIST_TABLE "t"
    0x10, 0x00, 0x02, 0x00, b'c', b'l', b'i', b'e', b'n', b't', b's', b'4', b'_', b'u', b'p',
    0x00, // NFTA_SET_ELEM_LIST_SET "clients4_up"
    0x08, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x01, // NFTA_SET_ELEM_LIST_SET_ID 1
    0x28, 0x00, 0x03, 0x80, // NFTA_SET_ELEM_LIST_ELEMENTS (nested)
    0x24, 0x00, 0x01, 0x80, // NFTA_LIST_ELEM (nested)
    0x0c, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xea,
    0x60, // TIMEOUT 60000 ms
    0x14, 0x00, 0x01, 0x80, // NFTA_SET_ELEM_KEY (nested)
    0x10, 0x00, 0x01, 0x00, // NFTA_DATA_VALUE, 12 bytes:
    0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, // ether_addr, padded to 8
    0x0a, 0x00, 0x00, 0x02, // ipv4_addr
];

/// nft's `delete element inet t clients4_up { 02:00:00:00:00:02 . 10.0.0.2 }`.
const NFT_DELETE_UP: [u8; 72] = [
    0x48, 0x00, 0x00, 0x00, 0x0e, 0x0a, 0x01, 0x00, // length 72, DELSETELEM, NLM_F_REQUEST
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // sequence 1, port
    0x01, 0x00, 0x00, 0x00, // nfgenmsg
    0x06, 0x00, 0x01, 0x00, b't', 0x00, 0x00, 0x00, 0x10, 0x00, 0x02, 0x00, b'c', b'l', b'i', b'e',
    b'n', b't', b's', b'4', b'_', b'u', b'p', 0x00, // table, set
    0x1c, 0x00, 0x03, 0x80, 0x18, 0x00, 0x01, 0x80, 0x14, 0x00, 0x01, 0x80, 0x10, 0x00, 0x01,
    0x00, // elements, element, key, value:
    0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x02,
];

/// What we send where nft sent `nft_bytes`: the same message asking for an acknowledgement
/// (`NLM_F_ACK`, so that every message's fate is known without waiting on a timer), without
/// nft's `NFTA_SET_ELEM_LIST_SET_ID` attribute if it has one (a reference to a set created
/// in the same batch; ours are looked up by name), numbered `seq`.
fn as_we_send(nft_bytes: &[u8], seq: u32) -> Vec<u8> {
    let mut bytes = nft_bytes.to_vec();
    let set_id = [0x08, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x01];
    if let Some(at) = bytes.windows(8).position(|w| w == set_id) {
        bytes.drain(at..at + 8);
    }
    let len = bytes.len() as u32;
    bytes[0..4].copy_from_slice(&len.to_ne_bytes());
    bytes[6] |= 0x04;
    bytes[8..12].copy_from_slice(&seq.to_ne_bytes());
    bytes
}

/// The messages of a framed batch.
fn framed(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let len = u32::from_ne_bytes(rest[0..4].try_into().expect("length")) as usize;
        out.push(rest[..len].to_vec());
        rest = &rest[len..];
    }
    out
}

fn batch_bytes(messages: Vec<Message>, begin: u32) -> Vec<Vec<u8>> {
    framed(&message::batch(messages, begin))
}

#[test]
fn the_allow_batch_is_what_nft_sends_for_the_same_element() {
    let client = client("02:00:00:00:00:02", "10.0.0.2");
    let messages = batch_bytes(allow_batch("t", &client, Duration::from_secs(60)), 100);
    assert_eq!(messages.len(), 8, "begin, 6 messages, end");
    // The batch delimiters, as nft frames its batches (res_id NFNL_SUBSYS_NFTABLES).
    let delimiter = |kind: u8, seq: u32| {
        let mut bytes = vec![0x14, 0, 0, 0, kind, 0, 0x01, 0x00];
        bytes.extend(seq.to_ne_bytes());
        bytes.extend([0, 0, 0, 0, 0x00, 0x00, 0x00, 0x0a]);
        bytes
    };
    assert_eq!(messages[0], delimiter(0x10, 100));
    assert_eq!(messages[7], delimiter(0x11, 107));
    // Add (so that the delete cannot fail), delete, add with the timeout: upload element
    // first, then download, as `rules::allow_batch`.
    assert_eq!(messages[1], as_we_send(&NFT_ADD_UP, 101));
    assert_eq!(messages[3], as_we_send(&NFT_DELETE_UP, 103));
    assert_eq!(messages[5], as_we_send(&NFT_ADD_UP, 105));
    // The download element: set clients4_down, key the bare address, same timeout.
    let down = &messages[2];
    assert_eq!(&down[4..6], &[0x0c, 0x0a]);
    assert!(down.windows(12).any(|w| w == b"clients4_dow"));
    assert!(down.ends_with(&[0x08, 0x00, 0x01, 0x00, 0x0a, 0x00, 0x00, 0x02]));
    assert!(
        down.windows(12)
            .any(|w| w == [0x0c, 0x00, 0x04, 0x00, 0, 0, 0, 0, 0, 0, 0xea, 0x60])
    );
    assert_eq!(&messages[4][4..6], &[0x0e, 0x0a], "DELSETELEM");
    assert_eq!(
        messages[6],
        messages[2][..8]
            .iter()
            .chain(&106u32.to_ne_bytes())
            .chain(&messages[2][12..])
            .copied()
            .collect::<Vec<u8>>()
    );
}

#[test]
fn allow_ceils_and_clamps_the_timeout_and_keys_ipv6_clients_by_24_bytes() {
    let client = client("02:00:00:00:00:06", "fd00:66::2");
    let messages = batch_bytes(allow_batch("t", &client, Duration::from_millis(1_500)), 1);
    let up = &messages[1];
    assert!(
        up.windows(14)
            .any(|w| w == b"clients6_up\0\0\0" as &[u8] || w[..12] == *b"clients6_up\0")
    );
    // 1.5 s is ceiled to 2 s, as nft gets it.
    assert!(
        up.windows(12)
            .any(|w| w == [0x0c, 0x00, 0x04, 0x00, 0, 0, 0, 0, 0, 0, 0x07, 0xd0])
    );
    let mut key = vec![0x1c, 0x00, 0x01, 0x00, 0x02, 0, 0, 0, 0, 0x06, 0, 0];
    key.extend(
        "fd00:66::2"
            .parse::<std::net::Ipv6Addr>()
            .expect("v6")
            .octets(),
    );
    assert!(up.ends_with(&key), "{up:02x?}");
    let long = batch_bytes(allow_batch("t", &client, Duration::from_secs(u64::MAX)), 1);
    let max_ms = (crate::firewall::MAX_TIMEOUT.as_millis() as u64).to_be_bytes();
    assert!(long[1].windows(8).any(|w| w == max_ms));
}

#[test]
fn revoke_adds_then_deletes_both_elements() {
    let client = client("02:00:00:00:00:02", "10.0.0.2");
    let messages = batch_bytes(revoke_batch("t", &client), 10);
    let kinds: Vec<&[u8]> = messages.iter().map(|m| &m[4..6]).collect();
    assert_eq!(
        kinds,
        [
            &[0x10, 0][..],
            &[0x0c, 0x0a],
            &[0x0c, 0x0a],
            &[0x0e, 0x0a],
            &[0x0e, 0x0a],
            &[0x11, 0]
        ]
    );
    assert_eq!(messages[3], as_we_send(&NFT_DELETE_UP, 13));
}

/// nft's `add quota inet t q_x { over 5000 bytes }` (as `nft --debug=mnl` printed it).
const NFT_ADD_QUOTA: [u8; 80] = [
    0x50, 0x00, 0x00, 0x00, 0x12, 0x0a, 0x01, 0x04, // length 80, NEWOBJ, REQUEST | CREATE
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // sequence 1, port
    0x01, 0x00, 0x00, 0x00, // nfgenmsg
    0x06, 0x00, 0x01, 0x00, b't', 0x00, 0x00, 0x00, // NFTA_OBJ_TABLE
    0x08, 0x00, 0x02, 0x00, b'q', b'_', b'x', 0x00, // NFTA_OBJ_NAME
    0x08, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x02, // NFTA_OBJ_TYPE quota
    0x24, 0x00, 0x04, 0x80, // NFTA_OBJ_DATA (nested)
    0x0c, 0x00, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0x13, 0x88, // NFTA_QUOTA_BYTES 5000
    0x0c, 0x00, 0x04, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, // NFTA_QUOTA_CONSUMED 0
    0x08, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // NFTA_QUOTA_FLAGS NFT_QUOTA_F_INV
];

/// nft's `add element inet t quota4_up { 02:00:00:00:00:02 . 10.0.0.2 : "q_s" }`.
const NFT_ADD_QUOTA_ELEMENT: [u8; 88] = [
    0x58, 0x00, 0x00, 0x00, 0x0c, 0x0a, 0x01, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, // header, nfgenmsg
    0x06, 0x00, 0x01, 0x00, b't', 0x00, 0x00, 0x00, 0x0e, 0x00, 0x02, 0x00, b'q', b'u', b'o', b't',
    b'a', b'4', b'_', b'u', b'p', 0x00, 0x00, 0x00, // table, map
    0x08, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x01, // set id (nft's was 3; see below)
    0x24, 0x00, 0x03, 0x80, 0x20, 0x00, 0x01, 0x80, 0x14, 0x00, 0x01, 0x80, 0x10, 0x00, 0x01, 0x00,
    0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x0a, 0x00, 0x00,
    0x02, // elements, element, key
    0x08, 0x00, 0x09, 0x00, b'q', b'_', b's', 0x00, // NFTA_SET_ELEM_OBJREF "q_s"
];

#[test]
fn quota_objects_and_map_elements_are_what_nft_sends() {
    let mut add = objects::add("t", "q_x", 5000, 0);
    assert_eq!(framed(&add.clone().request(1))[0], NFT_ADD_QUOTA);
    add = objects::add("t", "q_x", u64::MAX, 0);
    let bytes = add.request(1);
    assert!(
        bytes
            .windows(8)
            .any(|w| w == (i64::MAX as u64).to_be_bytes()),
        "clamped"
    );
    // What was used is at most the limit (nft refuses more): both carry the same number.
    let limit = 5000u64.to_be_bytes();
    let bytes = objects::add("t", "q_x", 5000, 9000).request(1);
    assert_eq!(bytes.windows(8).filter(|w| *w == limit).count(), 2);

    let session = client("02:00:00:00:00:02", "10.0.0.2");
    let messages = batch_bytes(set_quota_batch("t", "q_s", &[session], (5000, 0), &[]), 20);
    // add quota, delete quota, add quota (resets what it used), then the elements.
    let kinds: Vec<&[u8]> = messages.iter().map(|m| &m[4..6]).collect();
    assert_eq!(
        kinds,
        [
            &[0x10, 0][..],
            &[0x12, 0x0a],
            &[0x14, 0x0a],
            &[0x12, 0x0a],
            &[0x0c, 0x0a],
            &[0x0c, 0x0a],
            &[0x11, 0]
        ]
    );
    // nft 1.0.6 numbers the set in its SET_ID attribute after its cache (3 here); as_we_send
    // drops the attribute, so the recording above carries 1.
    assert_eq!(messages[4], as_we_send(&NFT_ADD_QUOTA_ELEMENT, 24));
    assert!(messages[5].windows(12).any(|w| w == b"quota4_down\0"));
}

#[test]
fn set_and_clear_quota_first_delete_the_elements_in_the_way() {
    let a = client("02:00:00:00:00:02", "10.0.0.2");
    let b = client("02:00:00:00:00:03", "10.0.0.3");
    let existing = vec![
        QuotaElement {
            key: QuotaKey::Up(a),
            quota: "q_other".to_owned(),
        },
        QuotaElement {
            key: QuotaKey::Down(b.ip),
            quota: "q_s".to_owned(),
        },
    ];
    let messages = batch_bytes(set_quota_batch("t", "q_s", &[a], (1, 0), &existing), 1);
    let dels: Vec<&Vec<u8>> = messages.iter().filter(|m| m[4] == 0x0e).collect();
    assert_eq!(dels.len(), 2, "one per map with stale keys");
    assert!(dels[0].windows(10).any(|w| w == b"quota4_up\0"));
    assert!(
        dels[1].ends_with(&[0x08, 0x00, 0x01, 0x00, 10, 0, 0, 3]),
        "B's download key"
    );
    let cleared = batch_bytes(clear_quota_batch("t", "q_s", &existing), 1);
    let kinds: Vec<u8> = cleared.iter().map(|m| m[4]).collect();
    assert_eq!(
        kinds,
        [0x10, 0x12, 0x0e, 0x14, 0x11],
        "add, delete B's element, delete quota"
    );
}

/// The kernel's reply to nft's `GETSETELEM` dump of `clients4_up` holding
/// `02:00:00:00:00:03 . 10.0.0.3` (timeout 2 h) and `02:00:00:00:00:02 . 10.0.0.2`
/// (timeout 1 h), one datagram, then the `NLMSG_DONE` datagram (sequence 0, port 0x57a9).
/// nft listed them with "expires" 7199 and 3599 and zero counters.
const RECORDED_CLIENTS4_UP: [u8; 232] = [
    0xe8, 0x00, 0x00, 0x00, 0x0c, 0x0a, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0xa9, 0x57, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x0b, 0x06, 0x00, 0x01, 0x00, 0x74, 0x00, 0x00, 0x00, 0x10, 0x00, 0x02, 0x00,
    0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x73, 0x34, 0x5f, 0x75, 0x70, 0x00, 0xbc, 0x00, 0x03, 0x00,
    0x5c, 0x00, 0x01, 0x00, 0x14, 0x00, 0x01, 0x00, 0x10, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00,
    0x00, 0x03, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x03, 0x2c, 0x00, 0x07, 0x00, 0x0c, 0x00, 0x01, 0x00,
    0x63, 0x6f, 0x75, 0x6e, 0x74, 0x65, 0x72, 0x00, 0x1c, 0x00, 0x02, 0x00, 0x0c, 0x00, 0x01, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x0c, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x6d, 0xdd, 0x00,
    0x0c, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x6d, 0xdc, 0xe8, 0x5c, 0x00, 0x01, 0x00,
    0x14, 0x00, 0x01, 0x00, 0x10, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00,
    0x0a, 0x00, 0x00, 0x02, 0x2c, 0x00, 0x07, 0x00, 0x0c, 0x00, 0x01, 0x00, 0x63, 0x6f, 0x75, 0x6e,
    0x74, 0x65, 0x72, 0x00, 0x1c, 0x00, 0x02, 0x00, 0x0c, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x0c, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x36, 0xee, 0x80, 0x0c, 0x00, 0x05, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x36, 0xee, 0x68,
];
const RECORDED_DONE: [u8; 20] = [
    0x14, 0x00, 0x00, 0x00, 0x03, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0xa9, 0x57, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,
];

/// Feeds `datagrams` to a dump of `clients4_up` (sequence 0) as the socket would.
fn dump_up(datagrams: &[&[u8]]) -> Result<(bool, Vec<Element<Client>>), Failure> {
    let mut dump = Dump::new(0, |reply: &Reply<'_>, out: &mut Vec<Element<Client>>| {
        let message = message::nft_attributes(reply)?;
        elements::parse_dump(&message, "clients4_up", out, |listed| {
            elements::client_element(listed, elements::decode_mac_ip_key)
        })
    });
    let mut done = false;
    for datagram in datagrams {
        done = dump.feed(datagram).map_err(Failure::from)?;
    }
    Ok((done, dump.out))
}

#[test]
fn a_recorded_getsetelem_reply_decodes_as_nft_listed_it() {
    let (done, listed) = dump_up(&[&RECORDED_CLIENTS4_UP, &RECORDED_DONE]).expect("decodes");
    assert!(done);
    assert_eq!(
        listed,
        vec![
            Element {
                key: client("02:00:00:00:00:03", "10.0.0.3"),
                expires: Some(Duration::from_secs(7199)),
                bytes: 0,
                packets: 0,
            },
            Element {
                key: client("02:00:00:00:00:02", "10.0.0.2"),
                expires: Some(Duration::from_secs(3599)),
                bytes: 0,
                packets: 0,
            },
        ]
    );
    // The same reply with counters: bytes and packets are read from their own attributes.
    let mut counted = RECORDED_CLIENTS4_UP;
    counted[0x67] = 0x2a; // first element's NFTA_COUNTER_BYTES = 42
    counted[0x73] = 0x01; // its NFTA_COUNTER_PACKETS = 1
    let (_, listed) = dump_up(&[&counted]).expect("decodes");
    assert_eq!((listed[0].bytes, listed[0].packets), (42, 1));
    assert_eq!((listed[1].bytes, listed[1].packets), (0, 0));
}

#[test]
fn a_recorded_quota_map_and_quota_listing_decode() {
    // `nft -j list map inet t quota4_up`: two elements pointing at q_s.
    const MAP: [u8; 112] = [
        0x70, 0x00, 0x00, 0x00, 0x0c, 0x0a, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0xce, 0x57, 0x00,
        0x00, 0x01, 0x00, 0x00, 0x0b, 0x06, 0x00, 0x01, 0x00, 0x74, 0x00, 0x00, 0x00, 0x0e, 0x00,
        0x02, 0x00, 0x71, 0x75, 0x6f, 0x74, 0x61, 0x34, 0x5f, 0x75, 0x70, 0x00, 0x00, 0x00, 0x44,
        0x00, 0x03, 0x00, 0x20, 0x00, 0x01, 0x00, 0x14, 0x00, 0x01, 0x00, 0x10, 0x00, 0x01, 0x00,
        0x02, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x03, 0x08, 0x00, 0x09,
        0x00, 0x71, 0x5f, 0x73, 0x00, 0x20, 0x00, 0x01, 0x00, 0x14, 0x00, 0x01, 0x00, 0x10, 0x00,
        0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x02, 0x08,
        0x00, 0x09, 0x00, 0x71, 0x5f, 0x73, 0x00,
    ];
    let replies = message::replies(&MAP).expect("framing");
    let mut keys = Vec::new();
    elements::parse_dump(
        &message::nft_attributes(&replies[0]).expect("attributes"),
        "quota4_up",
        &mut keys,
        |l| {
            Ok((
                elements::decode_mac_ip_key(l.key),
                l.objref.map(str::to_owned),
                l.counter,
            ))
        },
    )
    .expect("decodes");
    assert_eq!(
        keys,
        vec![
            (
                Some(client("02:00:00:00:00:03", "10.0.0.3")),
                Some("q_s".to_owned()),
                None
            ),
            (
                Some(client("02:00:00:00:00:02", "10.0.0.2")),
                Some("q_s".to_owned()),
                None
            ),
        ]
    );

    // `nft -j list quotas`: q_s (1000 bytes) in one message; nft listed "used": 0, "inv".
    const QUOTA: [u8; 100] = [
        0x64, 0x00, 0x00, 0x00, 0x12, 0x0a, 0x02, 0x08, 0x00, 0x00, 0x00, 0x00, 0xd5, 0x57, 0x00,
        0x00, 0x01, 0x00, 0x00, 0x0b, 0x06, 0x00, 0x01, 0x00, 0x74, 0x00, 0x00, 0x00, 0x08, 0x00,
        0x02, 0x00, 0x71, 0x5f, 0x73, 0x00, 0x08, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x02, 0x0c,
        0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x05, 0x00,
        0x00, 0x00, 0x00, 0x02, 0x24, 0x00, 0x04, 0x00, 0x0c, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x03, 0xe8, 0x0c, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x08, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01,
    ];
    let replies = message::replies(&QUOTA).expect("framing");
    let attributes = message::nft_attributes(&replies[0]).expect("attributes");
    assert_eq!(
        objects::parse(&attributes, "t").expect("decodes"),
        Some((
            "s".to_owned(),
            SessionQuota {
                limit_bytes: 1000,
                used_bytes: 0
            }
        ))
    );
    assert_eq!(objects::parse(&attributes, "other").expect("decodes"), None);
}

#[test]
fn malformed_replies_are_errors_not_panics() {
    // Every truncation of the recorded reply: a framing error, never a panic or a
    // silently shorter listing.
    for len in 1..RECORDED_CLIENTS4_UP.len() {
        assert!(
            dump_up(&[&RECORDED_CLIENTS4_UP[..len]]).is_err(),
            "truncated to {len} bytes"
        );
    }
    let mut broken = RECORDED_CLIENTS4_UP;
    broken[0x30] = 0xff; // first element's length past the end of its list
    assert!(matches!(dump_up(&[&broken]), Err(Failure::Malformed(_))));
    let mut wrong_key = RECORDED_CLIENTS4_UP;
    wrong_key[0x3c + 6] = 0x01; // non-zero padding after the MAC
    assert!(matches!(dump_up(&[&wrong_key]), Err(Failure::Malformed(e)) if e.contains("key")));
    let mut other_set = RECORDED_CLIENTS4_UP;
    other_set[0x28] = b'6'; // "clients6_up": not the set asked for
    assert!(matches!(dump_up(&[&other_set]), Err(Failure::Malformed(_))));
    // A counter attribute of the wrong size.
    let mut short_counter = RECORDED_CLIENTS4_UP;
    short_counter[0x5c] = 0x0b; // NFTA_COUNTER_BYTES of 7 bytes
    assert!(dump_up(&[&short_counter]).is_err());
    // An error in place of the listing is the kernel's errno.
    let mut enoent = vec![0x24, 0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    enoent.extend((-libc::ENOENT).to_ne_bytes());
    enoent.extend([0; 16]);
    assert!(matches!(
        dump_up(&[&enoent]),
        Err(Failure::Errno(libc::ENOENT))
    ));
    // A dump that fails midway says so in its NLMSG_DONE.
    let mut done_error = RECORDED_DONE;
    done_error[16..20].copy_from_slice(&(-libc::EINTR).to_ne_bytes());
    assert!(matches!(
        dump_up(&[&done_error]),
        Err(Failure::Errno(libc::EINTR))
    ));
}

proptest! {
    #[test]
    fn arbitrary_replies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = dump_up(&[&bytes]);
        let mut acks = Acks::new(0, 2);
        let _ = acks.feed(&bytes);
        if let Ok(replies) = message::replies(&bytes) {
            for reply in replies {
                if let Ok(attributes) = message::nft_attributes(&reply) {
                    let _ = objects::parse(&attributes, "t");
                    let _ = check::parse_rule(&attributes, "t", &mut Vec::new());
                    let _ = check::parse_chain(&attributes, "t", &mut Vec::new());
                }
            }
        }
    }

    /// Flipping any one byte of the recorded reply gives a result or an error, no panic.
    #[test]
    fn corrupted_recordings_never_panic(at in 0..232usize, value in any::<u8>()) {
        let mut bytes = RECORDED_CLIENTS4_UP;
        bytes[at] = value;
        let _ = dump_up(&[&bytes]);
    }
}

/// An `NLMSG_ERROR` answering request `seq` with `errno` (0: an acknowledgement).
fn ack(seq: u32, errno: i32) -> Vec<u8> {
    let mut bytes = vec![0x24, 0, 0, 0, 0x02, 0, 0, 0];
    bytes.extend(seq.to_ne_bytes());
    bytes.extend([0; 4]);
    bytes.extend((-errno).to_ne_bytes());
    // The echoed request header: length, type, flags, its sequence number, port.
    bytes.extend([0x14, 0, 0, 0, 0x0c, 0x0a, 0x05, 0x04]);
    bytes.extend(seq.to_ne_bytes());
    bytes.extend([0; 4]);
    bytes
}

#[test]
fn a_batch_succeeds_only_when_every_message_is_acknowledged() {
    let mut acks = Acks::new(10, 2);
    acks.feed(&ack(11, 0)).expect("ack");
    assert!(!acks.complete());
    assert!(acks.outcome().is_err(), "one message unanswered");
    // An answer to an earlier request is not one of ours.
    acks.feed(&ack(9, 0)).expect("stale ack");
    assert!(!acks.complete());
    acks.feed(&[ack(12, 0), ack(13, 0)].concat()).expect("acks");
    assert!(acks.complete());
    assert!(acks.outcome().is_ok());

    // The earliest refusal is the batch's error.
    let mut acks = Acks::new(10, 3);
    acks.feed(&[ack(11, 0), ack(13, libc::EEXIST), ack(12, libc::ENOENT)].concat())
        .expect("answers");
    assert!(matches!(acks.outcome(), Err(Failure::Errno(libc::ENOENT))));
    // A refusal of the batch as a whole (its begin message) is final at once.
    let mut acks = Acks::new(10, 3);
    assert!(matches!(
        acks.feed(&ack(10, libc::ENOMEM)),
        Err(Failure::Errno(libc::ENOMEM))
    ));
}

#[test]
fn the_install_check_compares_sets_hooks_and_rule_comments_in_order() {
    let config = FirewallConfig::new("lan0");
    let expected = rules::rules(&config);
    let sets: Vec<String> = rules::SETS
        .iter()
        .map(|d| d.name)
        .chain(rules::QUOTA_MAPS.iter().map(|d| d.name))
        .map(str::to_owned)
        .collect();
    let hooks = [
        ("prerouting", 0),
        ("forward", 2),
        ("input", 1),
        ("postrouting", 4),
    ];
    let chains: Vec<(String, Option<u32>)> = hooks
        .iter()
        .map(|(n, h)| (n.to_string(), Some(*h)))
        .collect();
    let listed: Vec<(String, String)> = expected
        .iter()
        .map(|r| (r.chain.to_owned(), r.comment.to_owned()))
        .collect();
    assert!(check::complete(&sets, &chains, &listed, &expected));

    assert!(
        !check::complete(&sets[1..], &chains, &listed, &expected),
        "a set missing"
    );
    let mut unhooked = chains.clone();
    unhooked[1].1 = None;
    assert!(
        !check::complete(&sets, &unhooked, &listed, &expected),
        "forward not hooked"
    );
    let mut wrong_hook = chains.clone();
    wrong_hook[1].1 = Some(1);
    assert!(!check::complete(&sets, &wrong_hook, &listed, &expected));
    assert!(
        !check::complete(&sets, &chains, &[], &expected),
        "flushed chains"
    );
    let mut extra = listed.clone();
    extra.push(("forward".to_owned(), String::new()));
    assert!(
        !check::complete(&sets, &chains, &extra, &expected),
        "a stray rule"
    );
    // Two rules of one chain swapped (the forward chain's first two).
    let forward = listed
        .iter()
        .position(|(chain, _)| chain == "forward")
        .expect("forward rules");
    let mut swapped = listed.clone();
    swapped.swap(forward, forward + 1);
    assert!(
        !check::complete(&sets, &chains, &swapped, &expected),
        "rules out of order"
    );
}

#[test]
fn rule_comments_are_read_from_the_rule_user_data() {
    let mut rule = Message::new(6, 0);
    rule.put_str(1, "t").put_str(2, "forward");
    // nft's user data: the comment record (type 0, length with its NUL), as libnftnl writes it.
    let mut userdata = vec![0u8, 6];
    userdata.extend(b"hello\0");
    rule.put(7, &userdata);
    let bytes = rule.request(1);
    let replies = message::replies(&bytes).expect("framing");
    let mut out = Vec::new();
    check::parse_rule(
        &message::nft_attributes(&replies[0]).expect("attributes"),
        "t",
        &mut out,
    )
    .expect("rule");
    assert_eq!(out, [("forward".to_owned(), "hello".to_owned())]);

    let mut bad = Message::new(6, 0);
    bad.put_str(1, "t")
        .put_str(2, "forward")
        .put(7, &[0, 200, b'x']);
    let bytes = bad.request(1);
    let replies = message::replies(&bytes).expect("framing");
    assert!(
        check::parse_rule(
            &message::nft_attributes(&replies[0]).expect("attributes"),
            "t",
            &mut Vec::new()
        )
        .is_err()
    );
}

#[test]
fn keys_round_trip() {
    for c in [
        client("02:00:00:00:00:02", "10.0.0.2"),
        client("aa:bb:cc:dd:ee:ff", "fd00::1"),
    ] {
        assert_eq!(
            elements::decode_mac_ip_key(&elements::mac_ip_key(&c)),
            Some(c)
        );
        assert_eq!(elements::decode_ip_key(&elements::ip_key(c.ip)), Some(c.ip));
    }
    assert_eq!(elements::decode_ip_key(&[1, 2, 3]), None);
    assert_eq!(elements::decode_mac_ip_key(&[0; 13]), None);
    let ip: IpAddr = "10.0.0.2".parse().expect("ip");
    assert_eq!(elements::quota_key(&QuotaKey::Down(ip)), vec![10, 0, 0, 2]);
}

#[test]
fn netlink_errors_name_the_operation_the_errno_and_what_to_do() {
    use super::failed;
    use crate::firewall::{FirewallError, Operation};
    let who = client("02:00:00:00:00:02", "10.0.0.2");
    let err = failed(&Operation::Allow(who), Failure::Errno(libc::EPERM));
    assert!(matches!(
        err,
        FirewallError::Netlink {
            errno: libc::EPERM,
            ..
        }
    ));
    assert_eq!(err.operation(), Some(&Operation::Allow(who)));
    let message = err.to_string();
    assert!(message.starts_with("cannot allow client"), "{message}");
    assert!(message.contains("Operation not permitted"), "{message}");
    assert!(
        message.ends_with("run as root, or grant it to the service"),
        "{message}"
    );
    let message = failed(
        &Operation::OpenSocket,
        Failure::Errno(libc::EPROTONOSUPPORT),
    )
    .to_string();
    assert!(message.contains("modprobe nf_tables"), "{message}");
    let message = failed(&Operation::ListQuotas, Failure::Errno(libc::ENOENT)).to_string();
    assert!(message.contains("No such file or directory"), "{message}");
    assert!(!message.contains("CAP_NET_ADMIN"), "{message}");
    let err = failed(
        &Operation::ListSet("clients4_up"),
        Failure::Malformed("x".to_owned()),
    );
    assert!(matches!(err, FirewallError::Reply { .. }));
    assert_eq!(
        err.to_string(),
        "cannot list set clients4_up: unexpected netlink reply: x"
    );
}
