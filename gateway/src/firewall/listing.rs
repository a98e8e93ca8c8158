//! Reading nft's JSON listings: set elements with their counters, and whether our table is
//! complete. Pure functions, no I/O.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;

use super::rules::{CHAINS, FAMILY, QUOTA_MAPS, QUOTA_PREFIX, QuotaElement, QuotaKey, Rule, SETS};
use super::{ClientCounters, SessionQuota};
use crate::net::{Client, Mac};

/// One element of a client set, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Element<K> {
    pub key: K,
    /// `None` when nft printed no `expires` (an element without timeout).
    pub expires: Option<Duration>,
    pub bytes: u64,
    pub packets: u64,
}

/// The objects of a listing (`{"nftables": [ {..}, .. ]}`).
fn objects(listing: &Value) -> Result<&Vec<Value>, String> {
    listing
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| "no \"nftables\" array".to_owned())
}

/// The elements of the one set in the output of `nft -j list set inet TABLE NAME`, each key
/// read by `key`.
fn set_elements<K>(
    text: &str,
    set_name: &str,
    key: impl Fn(&Value) -> Option<K>,
) -> Result<Vec<Element<K>>, String> {
    let listing: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let set = objects(&listing)?
        .iter()
        .filter_map(|object| object.get("set"))
        .find(|set| set.get("name").and_then(Value::as_str) == Some(set_name))
        .ok_or_else(|| format!("set {set_name} is not in the listing"))?;
    let Some(elements) = set.get("elem") else {
        // nft leaves "elem" out of an empty set.
        return Ok(Vec::new());
    };
    let elements = elements
        .as_array()
        .ok_or_else(|| format!("\"elem\" of {set_name} is not an array"))?;
    elements
        .iter()
        .map(|element| {
            // With timeouts and counters every element is {"elem": {"val": .., ..}}.
            let elem = element
                .get("elem")
                .ok_or_else(|| format!("element without counter in {set_name}: {element}"))?;
            let val = elem
                .get("val")
                .ok_or_else(|| format!("element without value in {set_name}: {element}"))?;
            let key = key(val).ok_or_else(|| format!("unexpected key in {set_name}: {val}"))?;
            let counter = elem
                .get("counter")
                .ok_or_else(|| format!("element without counter in {set_name}: {element}"))?;
            let number = |field: &str| {
                counter
                    .get(field)
                    .and_then(Value::as_u64)
                    .ok_or_else(|| format!("counter without {field} in {set_name}: {element}"))
            };
            Ok(Element {
                key,
                expires: elem
                    .get("expires")
                    .and_then(Value::as_u64)
                    .map(Duration::from_secs),
                bytes: number("bytes")?,
                packets: number("packets")?,
            })
        })
        .collect()
}

fn ip_key(val: &Value) -> Option<IpAddr> {
    val.as_str()?.parse().ok()
}

fn mac_ip_key(val: &Value) -> Option<Client> {
    match val.get("concat")?.as_array()?.as_slice() {
        [mac, ip] => Some(Client {
            mac: mac.as_str()?.parse::<Mac>().ok()?,
            ip: ip_key(ip)?,
        }),
        _ => None,
    }
}

/// The elements of an upload set (`ether_addr . ipvN_addr`).
pub(crate) fn up_elements(text: &str, set_name: &str) -> Result<Vec<Element<Client>>, String> {
    set_elements(text, set_name, mac_ip_key)
}

/// The elements of a download set (`ipvN_addr`).
pub(crate) fn down_elements(text: &str, set_name: &str) -> Result<Vec<Element<IpAddr>>, String> {
    set_elements(text, set_name, ip_key)
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

/// Does the output of `nft -j -t list table inet TABLE` show every set and map, every chain on its
/// hook, and exactly `expected` rules in each chain? (A table someone flushed with
/// `nft flush table` keeps its chains but loses the rules; a stray rule added to one of our
/// chains also counts as "not installed", so the repair puts the table back as we wrote it.)
pub(crate) fn is_complete(text: &str, table: &str, expected: &[Rule]) -> Result<bool, String> {
    let listing: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let objects = objects(&listing)?;
    let ours = |object: &Value| {
        object.get("family").and_then(Value::as_str) == Some(FAMILY)
            && object.get("table").and_then(Value::as_str) == Some(table)
    };
    let has_table = objects.iter().filter_map(|o| o.get("table")).any(|t| {
        t.get("family").and_then(Value::as_str) == Some(FAMILY)
            && t.get("name").and_then(Value::as_str) == Some(table)
    });
    if !has_table {
        return Ok(false);
    }
    let sets: Vec<&str> = objects
        .iter()
        .filter_map(|o| o.get("set"))
        .filter(|s| ours(s))
        .filter_map(|s| s.get("name").and_then(Value::as_str))
        .collect();
    if !SETS.iter().all(|decl| sets.contains(&decl.name)) {
        return Ok(false);
    }
    let maps: Vec<&str> = objects
        .iter()
        .filter_map(|o| o.get("map"))
        .filter(|m| ours(m))
        .filter_map(|m| m.get("name").and_then(Value::as_str))
        .collect();
    if !QUOTA_MAPS.iter().all(|decl| maps.contains(&decl.name)) {
        return Ok(false);
    }
    let chains: Vec<&Value> = objects
        .iter()
        .filter_map(|o| o.get("chain"))
        .filter(|c| ours(c))
        .collect();
    let rules: Vec<&str> = objects
        .iter()
        .filter_map(|o| o.get("rule"))
        .filter(|r| ours(r))
        .filter_map(|r| r.get("chain").and_then(Value::as_str))
        .collect();
    for decl in &CHAINS {
        let hooked = chains.iter().any(|c| {
            c.get("name").and_then(Value::as_str) == Some(decl.name)
                && c.get("hook").and_then(Value::as_str) == Some(decl.hook)
        });
        let listed = rules.iter().filter(|chain| **chain == decl.name).count();
        let wanted = expected.iter().filter(|r| r.chain == decl.name).count();
        if !hooked || listed != wanted {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Does the output of `nft -j list tables` name our table?
pub(crate) fn has_table(text: &str, table: &str) -> Result<bool, String> {
    let listing: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    Ok(objects(&listing)?
        .iter()
        .filter_map(|o| o.get("table"))
        .any(|t| {
            t.get("family").and_then(Value::as_str) == Some(FAMILY)
                && t.get("name").and_then(Value::as_str) == Some(table)
        }))
}

/// The elements of the one quota map in the output of `nft -j list map inet TABLE NAME`
/// (`"elem": [[key, "quota"], ..]`).
pub(crate) fn quota_map_elements(text: &str, map_name: &str) -> Result<Vec<QuotaElement>, String> {
    let listing: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let map = objects(&listing)?
        .iter()
        .filter_map(|object| object.get("map"))
        .find(|map| map.get("name").and_then(Value::as_str) == Some(map_name))
        .ok_or_else(|| format!("map {map_name} is not in the listing"))?;
    let Some(elements) = map.get("elem") else {
        return Ok(Vec::new());
    };
    let elements = elements
        .as_array()
        .ok_or_else(|| format!("\"elem\" of {map_name} is not an array"))?;
    let up = map_name.ends_with("_up");
    elements
        .iter()
        .map(|element| {
            let unexpected = || format!("unexpected element in {map_name}: {element}");
            let [key, quota] = element.as_array().map(Vec::as_slice).unwrap_or(&[]) else {
                return Err(unexpected());
            };
            let key = if up {
                mac_ip_key(key).map(QuotaKey::Up)
            } else {
                ip_key(key).map(QuotaKey::Down)
            };
            match (key, quota.as_str()) {
                (Some(key), Some(quota)) => Ok(QuotaElement {
                    key,
                    quota: quota.to_owned(),
                }),
                _ => Err(unexpected()),
            }
        })
        .collect()
}

/// The quota object `name` of our table in the output of `nft -j list quotas table inet
/// TABLE`, if there: its limit and what it has used (nft lists at most the limit).
pub(crate) fn quotas(text: &str, table: &str) -> Result<BTreeMap<String, SessionQuota>, String> {
    let listing: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let mut quotas = BTreeMap::new();
    for quota in objects(&listing)?
        .iter()
        .filter_map(|object| object.get("quota"))
        .filter(|q| {
            q.get("family").and_then(Value::as_str) == Some(FAMILY)
                && q.get("table").and_then(Value::as_str) == Some(table)
        })
    {
        let name = quota
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        // Only our session quotas; anything else someone put in the table is not ours to read.
        let Some(session) = name.strip_prefix(QUOTA_PREFIX) else {
            continue;
        };
        let number = |field: &str| {
            quota
                .get(field)
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("quota {name} without {field}: {quota}"))
        };
        quotas.insert(
            session.to_owned(),
            SessionQuota {
                limit_bytes: number("bytes")?,
                used_bytes: number("used")?,
            },
        );
    }
    Ok(quotas)
}
