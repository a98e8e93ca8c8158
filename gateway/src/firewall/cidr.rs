//! Network prefixes and the walled garden's entries (a network and one TCP port): parsed,
//! validated, and reduced to a set nft's interval sets accept (no element inside another).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 or IPv6 network: `10.0.0.0/8`, `2001:db8::/32`, or one address (`/32`, `/128`).
///
/// The fields are public for reading and matching; [`Cidr::new`] and [`FromStr`] are the
/// validated ways in (prefix in range, no host bits set). The firewall checks a garden again
/// before it uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

/// Why a text or a pair is not a [`Cidr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadCidr {
    #[error("\"{0}\" is not an address or network (expected e.g. 10.0.0.0/8 or 2001:db8::/32)")]
    Syntax(String),
    #[error("prefix /{prefix} is too long for {addr} (at most /{max})")]
    Prefix { addr: IpAddr, prefix: u8, max: u8 },
    #[error("{addr}/{prefix} has host bits set; the network is {network}/{prefix}")]
    HostBits {
        addr: IpAddr,
        prefix: u8,
        network: IpAddr,
    },
}

impl Cidr {
    /// A validated network: `prefix` fits the address family and `addr` has no host bits.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, BadCidr> {
        let max = max_prefix(addr);
        if prefix > max {
            return Err(BadCidr::Prefix { addr, prefix, max });
        }
        let network = mask(addr, prefix);
        if network != addr {
            return Err(BadCidr::HostBits {
                addr,
                prefix,
                network,
            });
        }
        Ok(Cidr { addr, prefix })
    }

    /// One address as a network of one (`/32` or `/128`).
    pub fn host(addr: IpAddr) -> Self {
        Cidr {
            addr,
            prefix: max_prefix(addr),
        }
    }

    /// Checks a value that may have been built through the public fields.
    pub fn validated(self) -> Result<Self, BadCidr> {
        Cidr::new(self.addr, self.prefix)
    }

    /// True for a single address.
    pub fn is_host(&self) -> bool {
        self.prefix == max_prefix(self.addr)
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// True if `ip` lies in this network (never across address families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }

    /// True if `other` lies entirely inside `self`.
    pub fn covers(&self, other: &Cidr) -> bool {
        self.prefix <= other.prefix && self.contains(other.addr)
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// `addr` with every bit after the first `prefix` bits cleared (`prefix` is clamped).
fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let keep = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & keep))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let keep = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & keep))
        }
    }
}

impl FromStr for Cidr {
    type Err = BadCidr;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let syntax = || BadCidr::Syntax(text.to_owned());
        let trimmed = text.trim();
        match trimmed.split_once('/') {
            None => trimmed.parse().map(Cidr::host).map_err(|_| syntax()),
            Some((addr, prefix)) => {
                let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
                // Digits only: u8's parser would also take "+8".
                if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(syntax());
                }
                let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
                Cidr::new(addr, prefix)
            }
        }
    }
}

impl TryFrom<String> for Cidr {
    type Error = BadCidr;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Cidr> for String {
    fn from(cidr: Cidr) -> Self {
        cidr.to_string()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The TCP port a walled-garden entry without one opens: HTTPS, all a payment page or the
/// backend's API needs.
pub const GARDEN_DEFAULT_PORT: u16 = 443;

/// One walled-garden entry: a network captive clients may reach on one TCP port, and on
/// nothing else (a garden host's ssh, plain HTTP or other services stay closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GardenEntry {
    pub net: Cidr,
    pub port: u16,
}

/// Why a text is not a [`GardenEntry`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadGardenEntry {
    #[error(transparent)]
    Net(#[from] BadCidr),
    #[error(
        "\"{0}\" has no usable port after ':' (1-65535, e.g. 192.0.2.7:8443 or [2001:db8::7]:8443)"
    )]
    Port(String),
}

/// Splits a garden entry into what names the host (a network, an address or a host name)
/// and its TCP port: `host` (port 443), `host:port`, `[v6]` or `[v6]:port` (brackets, since
/// an IPv6 address has colons of its own; a bare IPv6 address or network takes port 443).
pub fn split_garden_port(text: &str) -> Result<(&str, u16), BadGardenEntry> {
    let text = text.trim();
    let bad_port = || BadGardenEntry::Port(text.to_owned());
    let parse_port = |text: &str| match text.parse::<u16>() {
        // Digits only: u16's parser would also take "+443".
        Ok(port) if port > 0 && text.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
        _ => Err(bad_port()),
    };
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad_port)?;
        return match after {
            "" => Ok((host, GARDEN_DEFAULT_PORT)),
            _ => Ok((
                host,
                parse_port(after.strip_prefix(':').ok_or_else(bad_port)?)?,
            )),
        };
    }
    match text.split_once(':') {
        Some((host, port)) if !port.contains(':') => Ok((host, parse_port(port)?)),
        _ => Ok((text, GARDEN_DEFAULT_PORT)),
    }
}

impl FromStr for GardenEntry {
    type Err = BadGardenEntry;
    /// `10.0.0.0/8`, `192.0.2.7:8443`, `[2001:db8::/32]:8443`; no host names (the daemon
    /// resolves those).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (host, port) = split_garden_port(text)?;
        Ok(GardenEntry {
            net: host.parse()?,
            port,
        })
    }
}

impl fmt::Display for GardenEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.net.addr {
            IpAddr::V4(_) => write!(f, "{}:{}", self.net, self.port),
            IpAddr::V6(_) => write!(f, "[{}]:{}", self.net, self.port),
        }
    }
}

/// The garden entries of one address family, as nft interval-set elements take them: per
/// port, [`minimal_cover`] of its networks; sorted by port, then network.
pub(crate) fn garden_cover(entries: impl IntoIterator<Item = GardenEntry>) -> Vec<GardenEntry> {
    let mut by_port: std::collections::BTreeMap<u16, Vec<Cidr>> = Default::default();
    for entry in entries {
        by_port.entry(entry.port).or_default().push(entry.net);
    }
    by_port
        .into_iter()
        .flat_map(|(port, nets)| {
            minimal_cover(nets)
                .into_iter()
                .map(move |net| GardenEntry { net, port })
        })
        .collect()
}

/// The networks of one address family with duplicates and networks inside others removed,
/// sorted: what an nft interval set takes without "conflicting intervals" errors. (Two
/// prefixes either nest or do not overlap at all, so dropping the nested ones suffices.)
pub(crate) fn minimal_cover(cidrs: impl IntoIterator<Item = Cidr>) -> Vec<Cidr> {
    let mut sorted: Vec<Cidr> = cidrs.into_iter().collect();
    sorted.sort_by_key(|c| (c.addr, c.prefix));
    let mut kept: Vec<Cidr> = Vec::with_capacity(sorted.len());
    for cidr in sorted {
        // Sorted by address then prefix, a network that covers `cidr` starts at or before it
        // and every network between them lies inside that one: checking the last kept one is
        // enough.
        if kept.last().is_some_and(|last| last.covers(&cidr)) {
            continue;
        }
        kept.push(cidr);
    }
    kept
}
