//! Who a LAN client is: its MAC and IP address; the gateway's own addresses
//! (`addresses`) and its LAN queue's drops (`queue`), both read over rtnetlink.

mod addresses;
mod queue;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use addresses::{Network, interface_ipv4, interface_networks, local_addresses};
pub use queue::{QueueDrops, QueueError};

/// An Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Mac(pub [u8; 6]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("\"{0}\" is not a MAC address (expected six hex pairs like aa:bb:cc:dd:ee:ff)")]
pub struct BadMac(String);

impl FromStr for Mac {
    type Err = BadMac;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadMac(text.to_owned());
        let mut bytes = [0u8; 6];
        let mut parts = text.trim().split([':', '-']);
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(bytes))
    }
}

impl TryFrom<String> for Mac {
    type Error = BadMac;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Mac> for String {
    fn from(mac: Mac) -> Self {
        mac.to_string()
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mac({self})")
    }
}

/// One device on the LAN as the firewall sees it: the pair that must match for its traffic
/// to pass (binding both stops another device from taking over an IP or a MAC alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Client {
    pub mac: Mac,
    pub ip: IpAddr,
}

/// Client number `n` of the unit tests: MAC `02:00:00:00:00:n`, IP `10.66.0.n`.
#[cfg(test)]
pub(crate) fn test_client(n: u8) -> Client {
    Client {
        mac: Mac([2, 0, 0, 0, 0, n]),
        ip: IpAddr::from([10, 66, 0, n]),
    }
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.mac, self.ip)
    }
}

/// Milliseconds since the Unix epoch: the time type of the pure core, passed in by the shell.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Millis(pub u64);

impl Millis {
    /// The wall clock now; only the async shell calls this.
    pub fn now() -> Self {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Millis(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn plus(self, duration: std::time::Duration) -> Self {
        let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Millis(self.0.saturating_add(ms))
    }

    /// Time from `self` until `later`, zero if `later` is not later.
    pub fn until(self, later: Millis) -> std::time::Duration {
        std::time::Duration::from_millis(later.0.saturating_sub(self.0))
    }
}

/// The largest IP packet the kernel forwards or queues: a GRO/GSO super-packet of 64 KiB
/// (larger only with BIG TCP, which is opt-in per interface).
pub const LARGEST_PACKET: u64 = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_print() {
        let mac: Mac = "AA:bb:0c:DD:ee:01".parse().unwrap();
        assert_eq!(mac.to_string(), "aa:bb:0c:dd:ee:01");
        assert_eq!("aa-bb-0c-dd-ee-01".parse::<Mac>().unwrap(), mac);
        for bad in [
            "",
            "aa:bb",
            "aa:bb:cc:dd:ee:ff:00",
            "aa:bb:cc:dd:ee:gg",
            "aaa:b:cc:dd:ee:ff",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }

    #[test]
    fn millis_arithmetic_saturates() {
        let t = Millis(1_000);
        assert_eq!(t.plus(std::time::Duration::from_secs(2)), Millis(3_000));
        assert_eq!(t.until(Millis(500)), std::time::Duration::ZERO);
        assert_eq!(
            Millis(u64::MAX).plus(std::time::Duration::from_secs(1)),
            Millis(u64::MAX)
        );
    }
}
