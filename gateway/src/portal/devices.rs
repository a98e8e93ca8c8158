//! Who is asking: the portal counts connections and code attempts per *device*, not per
//! address, because a device has as many addresses as it likes (IPv4 aliases, IPv6 privacy
//! addresses): with per-address limits one device with 30 addresses held all 256 portal
//! connections. A device is the MAC the kernel's neighbour table names for the address.
//!
//! The table always has that MAC when a connection is accepted: the kernel resolved it to
//! send the SYN-ACK the peer just acknowledged. A device that answers neighbour resolution
//! with a made-up MAC per address counts as that many devices (a Wi-Fi access point drops
//! frames for stations that are not associated, so there it cannot finish the handshake);
//! the portal-wide caps still hold it. Should the lookup fail all the same (the table read
//! failed), the address is not counted on its own, which would let it round the limits:
//! every such IPv4 address shares one bucket, and every such IPv6 address one bucket per
//! /64 ([`Device::of`]).
//!
//! [`Connections`] is the pure count of open portal connections per device, no I/O and no
//! clock; `serve` keeps it behind a mutex.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::net::Mac;

/// Portal connections open (or waiting for a slot) at once per device: a browser opens 6
/// or so per host, the OS's captive-portal check a few more.
pub const MAX_CONNECTIONS_PER_DEVICE: usize = 16;
/// Addresses one device may hold portal connections from at once: a phone uses an IPv4
/// address, a stable IPv6 address and a privacy address or two. Connections from a further
/// address wait until one of these has none left.
pub const MAX_ADDRESSES_PER_DEVICE: usize = 4;

/// What the portal's limits count against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    /// The device with this MAC, all its addresses together.
    Mac(Mac),
    /// Addresses without a known MAC: all of IPv4 (`0.0.0.0`), or one IPv6 /64 (its prefix).
    Unknown(IpAddr),
}

impl Device {
    /// The device at `ip`, whose MAC the neighbour table gave as `mac` (`None`: not found).
    pub fn of(ip: IpAddr, mac: Option<Mac>) -> Device {
        match (mac, ip) {
            (Some(mac), _) => Device::Mac(mac),
            (None, IpAddr::V4(_)) => Device::Unknown(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            (None, IpAddr::V6(v6)) => {
                let prefix = u128::from(v6) & !u128::from(u64::MAX);
                Device::Unknown(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Mac(mac) => write!(f, "{mac}"),
            Device::Unknown(IpAddr::V4(_)) => f.write_str("unknown-mac-ipv4"),
            Device::Unknown(IpAddr::V6(prefix)) => write!(f, "unknown-mac-{prefix}/64"),
        }
    }
}

/// Why a device may not open another portal connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// It has [`MAX_CONNECTIONS_PER_DEVICE`] open.
    Connections,
    /// Its connections come from [`MAX_ADDRESSES_PER_DEVICE`] other addresses already.
    Addresses,
}

/// Open portal connections per device and per address of it. Only devices with a
/// connection are kept, so it holds at most as many devices as the portal has connections.
#[derive(Debug, Default)]
pub struct Connections {
    devices: HashMap<Device, Held>,
}

#[derive(Debug, Default)]
struct Held {
    open: usize,
    /// Each address with open connections, and how many; at most
    /// [`MAX_ADDRESSES_PER_DEVICE`] entries.
    addresses: Vec<(IpAddr, usize)>,
}

impl Connections {
    /// Counts one more connection of `device` from `ip`, unless the device is full.
    pub fn take(&mut self, device: Device, ip: IpAddr) -> Result<(), Full> {
        let held = self.devices.entry(device).or_default();
        if held.open >= MAX_CONNECTIONS_PER_DEVICE {
            return Err(Full::Connections);
        }
        match held.addresses.iter().position(|(known, _)| *known == ip) {
            Some(index) => held.addresses[index].1 += 1,
            None if held.addresses.len() >= MAX_ADDRESSES_PER_DEVICE => {
                return Err(Full::Addresses);
            }
            None => held.addresses.push((ip, 1)),
        }
        held.open += 1;
        Ok(())
    }

    /// Gives back a connection [`Connections::take`] counted.
    pub fn give_back(&mut self, device: Device, ip: IpAddr) {
        let Some(held) = self.devices.get_mut(&device) else {
            return;
        };
        if let Some(index) = held.addresses.iter().position(|(known, _)| *known == ip) {
            held.open -= 1;
            held.addresses[index].1 -= 1;
            if held.addresses[index].1 == 0 {
                held.addresses.swap_remove(index);
            }
        }
        if held.open == 0 {
            self.devices.remove(&device);
        }
    }

    /// Connections `device` has open.
    #[cfg(test)]
    pub fn open(&self, device: Device) -> usize {
        self.devices.get(&device).map_or(0, |held| held.open)
    }

    /// Devices with a connection open.
    #[cfg(test)]
    pub fn devices(&self) -> usize {
        self.devices.len()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn mac(n: u8) -> Device {
        Device::Mac(Mac([2, 0, 0, 0, 0, n]))
    }

    fn v4(n: u8) -> IpAddr {
        IpAddr::from([10, 66, 0, n])
    }

    #[test]
    fn a_device_is_its_mac_and_unknown_ones_share_a_bucket() {
        let known = Some(Mac([2, 0, 0, 0, 0, 1]));
        assert_eq!(Device::of(v4(2), known), Device::of(v4(3), known));
        assert_eq!(
            Device::of("fd00:66::2".parse().unwrap(), known),
            Device::of(v4(3), known)
        );
        // Without a MAC: every IPv4 address together, IPv6 by /64.
        assert_eq!(Device::of(v4(2), None), Device::of(v4(200), None));
        let a = Device::of("fd00:66::1:2:3:4".parse().unwrap(), None);
        let b = Device::of("fd00:66::9".parse().unwrap(), None);
        let other = Device::of("fd00:67::9".parse().unwrap(), None);
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert_eq!(a.to_string(), "unknown-mac-fd00:66::/64");
        assert_ne!(Device::of(v4(2), None), a);
    }

    #[test]
    fn one_device_gets_its_share_whatever_its_addresses() {
        let mut table = Connections::default();
        for n in 0..MAX_CONNECTIONS_PER_DEVICE {
            let ip = v4(2 + (n % MAX_ADDRESSES_PER_DEVICE) as u8);
            assert_eq!(table.take(mac(1), ip), Ok(()));
        }
        assert_eq!(table.take(mac(1), v4(2)), Err(Full::Connections));
        // Another device is not affected.
        assert_eq!(table.take(mac(2), v4(50)), Ok(()));
        table.give_back(mac(1), v4(3));
        assert_eq!(table.take(mac(1), v4(3)), Ok(()));
    }

    #[test]
    fn a_device_uses_a_few_addresses_at_once() {
        let mut table = Connections::default();
        for n in 0..MAX_ADDRESSES_PER_DEVICE as u8 {
            assert_eq!(table.take(mac(1), v4(2 + n)), Ok(()));
        }
        assert_eq!(table.take(mac(1), v4(100)), Err(Full::Addresses));
        // Once an address has no connection left, another may take its place.
        table.give_back(mac(1), v4(2));
        assert_eq!(table.take(mac(1), v4(100)), Ok(()));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Take { device: u8, ip: u8 },
        GiveBack(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..4_u8, 0..12_u8).prop_map(|(device, ip)| Op::Take { device, ip }),
            1 => any::<usize>().prop_map(Op::GiveBack),
        ]
    }

    proptest! {
        /// Whatever the order of connections and hang-ups: no device holds more than its
        /// share or uses more than its few addresses, a device under both limits is never
        /// refused, and once everything is given back nothing is left.
        #[test]
        fn shares_hold_and_all_comes_back(ops in proptest::collection::vec(op(), 0..400)) {
            let mut table = Connections::default();
            let mut held: Vec<(Device, IpAddr)> = Vec::new();
            for op in ops {
                match op {
                    Op::Take { device, ip } => {
                        let (device, ip) = (mac(device), v4(ip));
                        let mine: Vec<IpAddr> =
                            held.iter().filter(|(d, _)| *d == device).map(|(_, ip)| *ip).collect();
                        let mut addresses = mine.clone();
                        addresses.sort();
                        addresses.dedup();
                        let expected = if mine.len() >= MAX_CONNECTIONS_PER_DEVICE {
                            Err(Full::Connections)
                        } else if !addresses.contains(&ip)
                            && addresses.len() >= MAX_ADDRESSES_PER_DEVICE
                        {
                            Err(Full::Addresses)
                        } else {
                            Ok(())
                        };
                        prop_assert_eq!(table.take(device, ip), expected);
                        if expected.is_ok() {
                            held.push((device, ip));
                        }
                    }
                    Op::GiveBack(pick) if !held.is_empty() => {
                        let (device, ip) = held.swap_remove(pick % held.len());
                        table.give_back(device, ip);
                    }
                    Op::GiveBack(_) => {}
                }
                for n in 0..4 {
                    let open = held.iter().filter(|(d, _)| *d == mac(n)).count();
                    prop_assert_eq!(table.open(mac(n)), open);
                    prop_assert!(open <= MAX_CONNECTIONS_PER_DEVICE);
                }
            }
            for (device, ip) in held.drain(..) {
                table.give_back(device, ip);
            }
            prop_assert_eq!(table.devices(), 0);
        }
    }
}
