//! The client sets' elements as listed (a netlink dump, or the in-memory model), joined
//! into one [`ClientCounters`] per client. Pure functions, no I/O.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use super::ClientCounters;
use crate::net::Client;

/// One element of a client set, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Element<K> {
    pub key: K,
    /// `None` for an element without timeout.
    pub expires: Option<Duration>,
    pub bytes: u64,
    pub packets: u64,
}

/// One [`ClientCounters`] per upload element, with the download element of its IP (zero if
/// the kernel has none, e.g. it expired a moment earlier). Download elements without an
/// upload element are left out: there is no MAC to report them under, and the client is no
/// longer let through. Sorted by client.
pub(crate) fn join(up: Vec<Element<Client>>, down: Vec<Element<IpAddr>>) -> Vec<ClientCounters> {
    let down: HashMap<IpAddr, Element<IpAddr>> = down.into_iter().map(|e| (e.key, e)).collect();
    let mut joined: BTreeMap<Client, ClientCounters> = BTreeMap::new();
    for element in up {
        let (down_bytes, down_packets) = down
            .get(&element.key.ip)
            .map_or((0, 0), |d| (d.bytes, d.packets));
        joined.insert(
            element.key,
            ClientCounters {
                client: element.key,
                expires_in: element.expires.unwrap_or(Duration::MAX),
                up_bytes: element.bytes,
                up_packets: element.packets,
                down_bytes,
                down_packets,
            },
        );
    }
    joined.into_values().collect()
}
