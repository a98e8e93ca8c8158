//! Who a LAN client is: its MAC and IP address, and how to learn the MAC of an IP from the
//! kernel's neighbour table; the gateway's own addresses, from `ip -j addr`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

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

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("running `tc -s -j qdisc show dev {interface}` (is iproute2 installed?)")]
    Spawn {
        interface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`tc -s -j qdisc show dev {interface}` failed: {stderr}")]
    Failed { interface: String, stderr: String },
    #[error("unexpected output of `tc -s -j qdisc show dev {interface}`: {problem}")]
    Output { interface: String, problem: String },
}

/// The drops of the root qdisc in `tc -s -j qdisc show` output. A root that holds other
/// qdiscs (`mq`, `tbf` with a child) counts its children's drops too, so the children are
/// not added. No qdisc at all (loopback) is no queue, so no drops.
pub fn root_queue_drops(tc_json: &str) -> Result<u64, String> {
    let qdiscs: Vec<serde_json::Value> =
        serde_json::from_str(tc_json).map_err(|err| format!("not a JSON list: {err}"))?;
    let Some(root) = qdiscs
        .iter()
        .find(|q| q["root"] == serde_json::Value::Bool(true))
    else {
        return Ok(0);
    };
    root["drops"]
        .as_u64()
        .ok_or_else(|| format!("the root qdisc has no \"drops\" count: {root}"))
}

/// Packets the egress queue (root qdisc) of `interface` dropped since it was set up (runs
/// `tc`). The queue sits after the forward hook, where the kernel meter counts, and before
/// the capture's tap, so what it drops is counted by one meter only. Queue statistics count
/// drops in packets (socket buffers, GSO super-packets included) only: there is no
/// dropped-bytes counter (`struct gnet_stats_queue`), and the interface's `tx_dropped` stays
/// 0 when its queue drops (checked on a veth with `tbf`).
pub fn queue_drops(interface: &str) -> Result<u64, QueueError> {
    let out = std::process::Command::new("tc")
        .args(["-s", "-j", "qdisc", "show", "dev", interface])
        .output()
        .map_err(|source| QueueError::Spawn {
            interface: interface.to_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(QueueError::Failed {
            interface: interface.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    root_queue_drops(&String::from_utf8_lossy(&out.stdout)).map_err(|problem| QueueError::Output {
        interface: interface.to_owned(),
        problem,
    })
}

/// The first IPv4 address of an interface, from `ip -j -4 addr show dev IFACE`.
pub fn interface_ipv4(interface: &str) -> anyhow::Result<Ipv4Addr> {
    let json = ip_json(&["-4", "addr", "show", "dev", interface])
        .with_context(|| format!("lan.interface {interface}"))?;
    parse_ipv4(&json).with_context(|| {
        format!("lan.interface {interface} has no IPv4 address; give it one (the portal is served on it) and start again")
    })
}

fn parse_ipv4(ip_json: &[u8]) -> Option<Ipv4Addr> {
    parse_addresses(ip_json)
        .into_iter()
        .find_map(|ip| match ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
}

/// Every address in `ip -j addr` output.
fn parse_addresses(ip_json: &[u8]) -> Vec<IpAddr> {
    parse_networks(ip_json)
        .into_iter()
        .map(|net| net.address)
        .collect()
}

/// An interface's address and the length of its network prefix, e.g. 10.66.0.1/24.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub address: IpAddr,
    pub prefix: u8,
}

impl Network {
    /// Whether `ip` is on this network (the same family and the same first `prefix` bits).
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn same_prefix(a: u128, b: u128, bits: u32, prefix: u8) -> bool {
            let prefix = u32::from(prefix).min(bits);
            prefix == 0 || (a ^ b) >> (bits - prefix) == 0
        }
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => same_prefix(
                u128::from(u32::from(net)),
                u128::from(u32::from(ip)),
                32,
                self.prefix,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                same_prefix(u128::from(net), u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// Every address and prefix in `ip -j addr` output.
fn parse_networks(ip_json: &[u8]) -> Vec<Network> {
    #[derive(Deserialize)]
    struct Link {
        #[serde(default)]
        addr_info: Vec<AddrInfo>,
    }
    #[derive(Deserialize)]
    struct AddrInfo {
        local: Option<String>,
        prefixlen: Option<u8>,
    }
    let links: Vec<Link> = serde_json::from_slice(ip_json).unwrap_or_default();
    links
        .iter()
        .flat_map(|l| &l.addr_info)
        .filter_map(|a| {
            let address: IpAddr = a.local.as_deref()?.parse().ok()?;
            let full = if address.is_ipv4() { 32 } else { 128 };
            Some(Network {
                address,
                prefix: a.prefixlen.unwrap_or(full),
            })
        })
        .collect()
}

/// The networks of one interface (the LAN's, whose devices the dashboard refuses).
pub fn interface_networks(interface: &str) -> anyhow::Result<Vec<Network>> {
    Ok(parse_networks(&ip_json(&[
        "addr", "show", "dev", interface,
    ])?))
}

/// The JSON output of `ip -j ARGS…`; its complaint if it fails.
fn ip_json(args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let out = std::process::Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .context("running `ip` (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!(
            "ip -j {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// The gateway's own addresses on every interface: traffic to them is delivered here, not
/// forwarded, so the capture meter must not bill it. Read once at start; an uplink that gets
/// a new address later only matters for traffic aimed at the gateway's WAN address.
pub fn local_addresses() -> anyhow::Result<Vec<IpAddr>> {
    Ok(parse_addresses(&ip_json(&["addr", "show"])?))
}

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
    fn the_root_qdiscs_drops_are_the_queues() {
        // `tc -s -j qdisc show` of a veth with a tbf root and a pfifo child.
        let tbf = r#"[{"kind":"tbf","handle":"1:","root":true,"bytes":142020,"packets":140,
            "drops":303419,"backlog":29176,"qlen":28},
            {"kind":"pfifo","handle":"10:","parent":"1:1","drops":303419}]"#;
        assert_eq!(root_queue_drops(tbf), Ok(303_419));
        assert_eq!(root_queue_drops("[]"), Ok(0), "no qdisc (loopback)");
        assert!(root_queue_drops(r#"[{"kind":"noqueue","root":true}]"#).is_err());
        assert!(root_queue_drops("Cannot find device").is_err());
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

    #[test]
    fn the_lan_address_is_read_from_ip_json() {
        let json = br#"[{"ifindex":2,"ifname":"veth0","addr_info":[{"family":"inet","local":"10.66.0.1","prefixlen":24}]}]"#;
        assert_eq!(parse_ipv4(json), Some(Ipv4Addr::new(10, 66, 0, 1)));
        assert_eq!(parse_ipv4(br#"[{"ifindex":2,"addr_info":[]}]"#), None);
        assert_eq!(parse_ipv4(b"[]"), None);
        assert_eq!(parse_ipv4(b"garbage"), None);
    }

    #[test]
    fn networks_hold_the_addresses_under_their_prefix_only() {
        let json = br#"[{"ifname":"lan0","addr_info":[{"local":"10.66.0.1","prefixlen":24},{"local":"fd00:66::1","prefixlen":64}]}]"#;
        let nets = parse_networks(json);
        assert_eq!(nets.len(), 2);
        let on_lan = |ip: &str| nets.iter().any(|n| n.contains(ip.parse().unwrap()));
        assert!(on_lan("10.66.0.200"));
        assert!(on_lan("fd00:66::abcd:1"));
        assert!(!on_lan("10.66.1.2"));
        assert!(!on_lan("127.0.0.1"));
        assert!(!on_lan("fd00:67::1"));
        let any = Network {
            address: "0.0.0.0".parse().unwrap(),
            prefix: 0,
        };
        assert!(any.contains("192.0.2.1".parse().unwrap()));
        assert!(!any.contains("::1".parse().unwrap()));
    }
}
