//! Our table as data: its sets, maps, chains and rules (which `netlink::check` compares the
//! kernel's with), the nft JSON batches that install and remove it, and the names and keys
//! of the per-client elements and session quotas (which `netlink` sends). Built from typed
//! values only (validated names, `Mac`, `IpAddr`, `u16`): no nft text is ever assembled
//! here. Pure functions, no I/O.

use std::net::IpAddr;

use serde_json::{Value, json};

use super::FirewallConfig;
use super::cidr::{GardenEntry, garden_cover};
use crate::net::Client;

pub(crate) const FAMILY: &str = "inet";

pub(crate) const CLIENTS4_UP: &str = "clients4_up";
pub(crate) const CLIENTS4_DOWN: &str = "clients4_down";
pub(crate) const CLIENTS6_UP: &str = "clients6_up";
pub(crate) const CLIENTS6_DOWN: &str = "clients6_down";
pub(crate) const GARDEN4: &str = "garden4_tcp";
pub(crate) const GARDEN6: &str = "garden6_tcp";
pub(crate) const DNS4: &str = "dns4";
pub(crate) const DNS6: &str = "dns6";
pub(crate) const QUOTA4_UP: &str = "quota4_up";
pub(crate) const QUOTA4_DOWN: &str = "quota4_down";
pub(crate) const QUOTA6_UP: &str = "quota6_up";
pub(crate) const QUOTA6_DOWN: &str = "quota6_down";

/// The prefix of a session's quota object: `q_<session>`.
pub(crate) const QUOTA_PREFIX: &str = "q_";
/// The longest session id [`quota_name`] takes.
pub(crate) const MAX_SESSION_LEN: usize = 64;
/// The largest quota the kernel takes (it refuses more than `i64::MAX` bytes).
pub(crate) const MAX_QUOTA_BYTES: u64 = i64::MAX as u64;

pub(crate) const PREROUTING: &str = "prerouting";
pub(crate) const FORWARD: &str = "forward";
pub(crate) const INPUT: &str = "input";
pub(crate) const POSTROUTING: &str = "postrouting";

/// Every set of the table: name, key type, flags, per-element counter.
pub(crate) const SETS: [SetDecl; 8] = [
    SetDecl {
        name: CLIENTS4_UP,
        key: &["ether_addr", "ipv4_addr"],
        flags: "timeout",
        counter: true,
    },
    SetDecl {
        name: CLIENTS4_DOWN,
        key: &["ipv4_addr"],
        flags: "timeout",
        counter: true,
    },
    SetDecl {
        name: CLIENTS6_UP,
        key: &["ether_addr", "ipv6_addr"],
        flags: "timeout",
        counter: true,
    },
    SetDecl {
        name: CLIENTS6_DOWN,
        key: &["ipv6_addr"],
        flags: "timeout",
        counter: true,
    },
    SetDecl {
        name: GARDEN4,
        key: &["ipv4_addr", "inet_service"],
        flags: "interval",
        counter: false,
    },
    SetDecl {
        name: GARDEN6,
        key: &["ipv6_addr", "inet_service"],
        flags: "interval",
        counter: false,
    },
    SetDecl {
        name: DNS4,
        key: &["ipv4_addr"],
        flags: "interval",
        counter: false,
    },
    SetDecl {
        name: DNS6,
        key: &["ipv6_addr"],
        flags: "interval",
        counter: false,
    },
];

/// Every chain: name, type, hook, priority (see the module doc for why these priorities).
pub(crate) const CHAINS: [ChainDecl; 4] = [
    ChainDecl {
        name: PREROUTING,
        kind: "nat",
        hook: "prerouting",
        priority: -100,
    },
    ChainDecl {
        name: FORWARD,
        kind: "filter",
        hook: "forward",
        priority: 0,
    },
    ChainDecl {
        name: INPUT,
        kind: "filter",
        hook: "input",
        priority: 0,
    },
    ChainDecl {
        name: POSTROUTING,
        kind: "nat",
        hook: "postrouting",
        priority: 100,
    },
];

/// Every quota map (client key to a session's named quota object): name, key type. No
/// timeout, no counter: an element lives until `set_quota` moves it or `clear_quota` ends it.
pub(crate) const QUOTA_MAPS: [MapDecl; 4] = [
    MapDecl {
        name: QUOTA4_UP,
        key: &["ether_addr", "ipv4_addr"],
    },
    MapDecl {
        name: QUOTA4_DOWN,
        key: &["ipv4_addr"],
    },
    MapDecl {
        name: QUOTA6_UP,
        key: &["ether_addr", "ipv6_addr"],
    },
    MapDecl {
        name: QUOTA6_DOWN,
        key: &["ipv6_addr"],
    },
];

#[derive(Debug, Clone, Copy)]
pub(crate) struct MapDecl {
    pub name: &'static str,
    pub key: &'static [&'static str],
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct SetDecl {
    pub name: &'static str,
    pub key: &'static [&'static str],
    pub flags: &'static str,
    pub counter: bool,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct ChainDecl {
    pub name: &'static str,
    pub kind: &'static str,
    pub hook: &'static str,
    pub priority: i32,
}

/// One rule of our table, before it is wrapped in an `add` command.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub chain: &'static str,
    /// Why the rule exists; nft keeps it with the rule (at most 128 bytes).
    pub comment: &'static str,
    pub expr: Vec<Value>,
}

// Expression builders. Each returns one statement of a rule's "expr" list.

fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn is(left: Value, right: Value) -> Value {
    json!({"match": {"op": "==", "left": left, "right": right}})
}

fn is_not(left: Value, right: Value) -> Value {
    json!({"match": {"op": "!=", "left": left, "right": right}})
}

/// `left @set` (a lookup; on a set with counters it also counts the packet for the element).
fn in_set(left: Value, set: &str) -> Value {
    is(left, Value::String(format!("@{set}")))
}

fn not_in_set(left: Value, set: &str) -> Value {
    is_not(left, Value::String(format!("@{set}")))
}

fn iif(name: &str) -> Value {
    is(meta("iifname"), json!(name))
}

fn oif(name: &str) -> Value {
    is(meta("oifname"), json!(name))
}

fn tcp_or_udp() -> Value {
    is(meta("l4proto"), json!({"set": ["tcp", "udp"]}))
}

fn l4proto(name: &str) -> Value {
    is(meta("l4proto"), json!(name))
}

fn established() -> Value {
    json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}})
}

/// `ct state established`, without `related`: a connection this chain let through before.
fn established_only() -> Value {
    json!({"match": {"op": "==", "left": {"ct": {"key": "state"}}, "right": "established"}})
}

/// The bit of the conntrack mark that says "the daemon cut this connection off" (set by
/// `crate::cutoff`); the other bits are left to other tools.
pub(crate) const CUT_MARK: u32 = 0x1000_0000;

/// `ct mark & CUT_MARK == CUT_MARK`.
fn marked_cut() -> Value {
    json!({"match": {"op": "==", "left": {"&": [{"ct": {"key": "mark"}}, CUT_MARK]}, "right": CUT_MARK}})
}

/// `reject with tcp reset`: the sender gets a RST whose sequence number is the one it
/// acknowledged, so it takes it.
fn tcp_reset() -> Value {
    json!({"reject": {"type": "tcp reset"}})
}

fn accept() -> Value {
    json!({"accept": null})
}

fn drop() -> Value {
    json!({"drop": null})
}

/// `quota name KEY map @MAP`: looks the packet's key up in a quota map and runs the named
/// quota it finds (which adds the packet's length to what that quota has used). For a quota
/// `over N bytes` the rule goes on only when the quota is used up (the packet that reaches N
/// included); no element, or a quota not yet used up, ends the rule there.
fn quota_map(key: Value, map: &str) -> Value {
    json!({"quota": {"map": {"key": key, "data": format!("@{map}")}}})
}

fn mac_ip(ip_protocol: &str) -> Value {
    json!({"concat": [payload("ether", "saddr"), payload(ip_protocol, "saddr")]})
}

/// `ADDR . tcp PORT` (`field`s "daddr" and "dport", or "saddr" and "sport"): the key of the
/// garden sets.
fn addr_port(ip_protocol: &str, addr: &str, port: &str) -> Value {
    json!({"concat": [payload(ip_protocol, addr), payload("tcp", port)]})
}

/// Port-80 traffic from the LAN of one family (`ip`, `ip6`) to the portal: not that of
/// allowed clients (`clients`), to the garden (`garden`) or to the gateway itself.
fn captive_http_to_portal(
    lan: &str,
    family: &str,
    clients: &str,
    garden: &str,
    portal_port: u16,
) -> Vec<Value> {
    vec![
        iif(lan),
        is(payload("tcp", "dport"), json!(80)),
        not_in_set(mac_ip(family), clients),
        not_in_set(addr_port(family, "daddr", "dport"), garden),
        is_not(
            json!({"fib": {"result": "type", "flags": ["daddr"]}}),
            json!("local"),
        ),
        json!({"redirect": {"port": portal_port}}),
    ]
}

/// Every rule of the table for `config`, chain by chain, in order.
pub(crate) fn rules(config: &FirewallConfig) -> Vec<Rule> {
    let lan = config.lan.as_str();
    let rule = |chain, comment, expr| Rule {
        chain,
        comment,
        expr,
    };
    let mut rules = vec![
        rule(
            PREROUTING,
            "captive HTTP goes to the portal (not allowed clients, the garden, or the gateway itself)",
            captive_http_to_portal(lan, "ip", CLIENTS4_UP, GARDEN4, config.portal_port),
        ),
        rule(
            PREROUTING,
            "captive IPv6 HTTP goes to the portal too (a phone may try IPv6 first)",
            captive_http_to_portal(lan, "ip6", CLIENTS6_UP, GARDEN6, config.portal_port),
        ),
        rule(
            FORWARD,
            "session quota, IPv4 upload: counts against the session's quota, drops once used up",
            vec![iif(lan), quota_map(mac_ip("ip"), QUOTA4_UP), drop()],
        ),
        rule(
            FORWARD,
            "session quota, IPv4 download (replies only): same quota, drops once used up",
            vec![
                oif(lan),
                established(),
                quota_map(payload("ip", "daddr"), QUOTA4_DOWN),
                drop(),
            ],
        ),
        rule(
            FORWARD,
            "session quota, IPv6 upload: counts against the session's quota, drops once used up",
            vec![iif(lan), quota_map(mac_ip("ip6"), QUOTA6_UP), drop()],
        ),
        rule(
            FORWARD,
            "session quota, IPv6 download (replies only): same quota, drops once used up",
            vec![
                oif(lan),
                established(),
                quota_map(payload("ip6", "daddr"), QUOTA6_DOWN),
                drop(),
            ],
        ),
        rule(
            FORWARD,
            "allowed IPv4 client, upload: this lookup is the client's upload meter",
            vec![iif(lan), in_set(mac_ip("ip"), CLIENTS4_UP), accept()],
        ),
        rule(
            FORWARD,
            "allowed IPv4 client, download, replies only: this lookup is its download meter",
            vec![
                oif(lan),
                established(),
                in_set(payload("ip", "daddr"), CLIENTS4_DOWN),
                accept(),
            ],
        ),
        rule(
            FORWARD,
            "allowed IPv6 client, upload: this lookup is the client's upload meter",
            vec![iif(lan), in_set(mac_ip("ip6"), CLIENTS6_UP), accept()],
        ),
        rule(
            FORWARD,
            "allowed IPv6 client, download, replies only: this lookup is its download meter",
            vec![
                oif(lan),
                established(),
                in_set(payload("ip6", "daddr"), CLIENTS6_DOWN),
                accept(),
            ],
        ),
        rule(
            FORWARD,
            "walled garden while captive: only each entry's own TCP port (backend API, payment page)",
            vec![
                iif(lan),
                in_set(addr_port("ip", "daddr", "dport"), GARDEN4),
                accept(),
            ],
        ),
        rule(
            FORWARD,
            "walled garden while captive, IPv6: only each entry's own TCP port",
            vec![
                iif(lan),
                in_set(addr_port("ip6", "daddr", "dport"), GARDEN6),
                accept(),
            ],
        ),
        rule(
            FORWARD,
            "garden replies only: the garden cannot open connections into the LAN",
            vec![
                oif(lan),
                in_set(addr_port("ip", "saddr", "sport"), GARDEN4),
                established(),
                accept(),
            ],
        ),
        rule(
            FORWARD,
            "garden replies only, IPv6",
            vec![
                oif(lan),
                in_set(addr_port("ip6", "saddr", "sport"), GARDEN6),
                established(),
                accept(),
            ],
        ),
        rule(
            FORWARD,
            "captive DNS to the configured resolvers only: unbilled, so port 53 elsewhere is a tunnel",
            vec![
                iif(lan),
                tcp_or_udp(),
                is(payload("th", "dport"), json!(53)),
                in_set(payload("ip", "daddr"), DNS4),
                accept(),
            ],
        ),
        rule(
            FORWARD,
            "captive DNS to the configured resolvers only, IPv6",
            vec![
                iif(lan),
                tcp_or_udp(),
                is(payload("th", "dport"), json!(53)),
                in_set(payload("ip6", "daddr"), DNS6),
                accept(),
            ],
        ),
        rule(
            FORWARD,
            "DNS replies from the configured resolvers to captive clients",
            vec![
                oif(lan),
                tcp_or_udp(),
                is(payload("th", "sport"), json!(53)),
                in_set(payload("ip", "saddr"), DNS4),
                established(),
                accept(),
            ],
        ),
        rule(
            FORWARD,
            "DNS replies from the configured resolvers, IPv6",
            vec![
                oif(lan),
                tcp_or_udp(),
                is(payload("th", "sport"), json!(53)),
                in_set(payload("ip6", "saddr"), DNS6),
                established(),
                accept(),
            ],
        ),
        rule(
            FORWARD,
            "access ended mid-connection (marked cut off): reset the client's end, not leave it to hang",
            vec![
                iif(lan),
                l4proto("tcp"),
                established_only(),
                marked_cut(),
                tcp_reset(),
            ],
        ),
        rule(
            FORWARD,
            "access ended mid-connection (marked cut off): reset the far end too",
            vec![
                oif(lan),
                l4proto("tcp"),
                established_only(),
                marked_cut(),
                tcp_reset(),
            ],
        ),
        rule(
            FORWARD,
            "everything else from the LAN is captive: dropped, IPv4 and IPv6 (no IPv6 bypass)",
            vec![iif(lan), drop()],
        ),
        rule(FORWARD, "nothing else into the LAN", vec![oif(lan), drop()]),
        rule(
            INPUT,
            "replies to what the gateway itself sent to the LAN",
            vec![iif(lan), established(), accept()],
        ),
        rule(
            INPUT,
            "DHCP server: clients need an address before anything else",
            vec![iif(lan), is(payload("udp", "dport"), json!(67)), accept()],
        ),
        rule(
            INPUT,
            "DHCPv6 server",
            vec![iif(lan), is(payload("udp", "dport"), json!(547)), accept()],
        ),
        rule(
            INPUT,
            "DNS resolver on the gateway",
            vec![
                iif(lan),
                tcp_or_udp(),
                is(payload("th", "dport"), json!(53)),
                accept(),
            ],
        ),
        rule(
            INPUT,
            "the portal, also the target of the port-80 redirect",
            vec![
                iif(lan),
                is(payload("tcp", "dport"), json!(config.portal_port)),
                accept(),
            ],
        ),
        rule(
            INPUT,
            "ICMP: ping and error messages (path MTU)",
            vec![iif(lan), l4proto("icmp"), accept()],
        ),
        rule(
            INPUT,
            "ICMPv6: neighbour and router discovery, without which IPv6 on the LAN breaks",
            vec![iif(lan), l4proto("ipv6-icmp"), accept()],
        ),
        rule(
            INPUT,
            "nothing else on the gateway is open to the LAN (ssh, metrics, control)",
            vec![iif(lan), drop()],
        ),
    ];
    if let (true, Some(wan)) = (config.nat, config.wan.as_deref()) {
        rules.push(rule(
            POSTROUTING,
            "NAT: forwarded traffic leaves with the uplink's address",
            vec![oif(wan), json!({"masquerade": null})],
        ));
    }
    rules
}

/// Flushes `set` and adds `elements` (if any) to it.
fn replace_elements(
    commands: &mut Vec<Value>,
    table: &str,
    set: &str,
    elements: impl Iterator<Item = Value>,
) {
    commands.push(json!({"flush": {"set": set_ref(table, set)}}));
    let elements: Vec<Value> = elements.collect();
    if !elements.is_empty() {
        let mut element = set_ref(table, set);
        element["elem"] = Value::Array(elements);
        commands.push(json!({"add": {"element": element}}));
    }
}

fn table_ref(table: &str) -> Value {
    json!({"family": FAMILY, "name": table})
}

fn set_ref(table: &str, set: &str) -> Value {
    json!({"family": FAMILY, "table": table, "name": set})
}

fn batch(commands: Vec<Value>) -> Value {
    let mut all = Vec::with_capacity(commands.len() + 1);
    all.push(json!({"metainfo": {"json_schema_version": 1}}));
    all.extend(commands);
    json!({ "nftables": all })
}

fn set_declaration(table: &str, decl: &SetDecl) -> Value {
    let key = match decl.key {
        [one] => json!(one),
        many => json!(many),
    };
    let mut set = json!({
        "family": FAMILY,
        "table": table,
        "name": decl.name,
        "type": key,
        "flags": [decl.flags],
    });
    if decl.counter {
        set["stmt"] = json!([{"counter": null}]);
    }
    set
}

fn map_declaration(table: &str, decl: &MapDecl) -> Value {
    let key = match decl.key {
        [one] => json!(one),
        many => json!(many),
    };
    json!({
        "family": FAMILY,
        "table": table,
        "name": decl.name,
        "type": key,
        "map": "quota",
    })
}

/// A garden-set element: `ADDR . PORT`, the address bare for a single host, else a prefix.
fn garden_element(entry: &GardenEntry) -> Value {
    let net = &entry.net;
    let addr = if net.is_host() {
        json!(net.addr.to_string())
    } else {
        json!({"prefix": {"addr": net.addr.to_string(), "len": net.prefix}})
    };
    json!({"concat": [addr, entry.port]})
}

/// The install batch: table, sets (added, never flushed, except the garden and DNS sets),
/// chains (added, flushed, refilled). `config` must have been validated.
pub(crate) fn install_batch(config: &FirewallConfig) -> Value {
    let table = config.table.as_str();
    let mut commands = vec![json!({"add": {"table": table_ref(table)}})];
    for decl in &SETS {
        commands.push(json!({"add": {"set": set_declaration(table, decl)}}));
    }
    for decl in &QUOTA_MAPS {
        commands.push(json!({"add": {"map": map_declaration(table, decl)}}));
    }
    for (set, v4) in [(GARDEN4, true), (GARDEN6, false)] {
        let members = garden_cover(
            config
                .garden
                .iter()
                .copied()
                .filter(|e| e.net.is_ipv4() == v4),
        );
        replace_elements(
            &mut commands,
            table,
            set,
            members.iter().map(garden_element),
        );
    }
    for (set, v4) in [(DNS4, true), (DNS6, false)] {
        let mut members: Vec<_> = config.dns.iter().filter(|ip| ip.is_ipv4() == v4).collect();
        members.sort();
        members.dedup();
        replace_elements(
            &mut commands,
            table,
            set,
            members.iter().map(|ip| json!(ip.to_string())),
        );
    }
    for chain in &CHAINS {
        commands.push(json!({"add": {"chain": {
            "family": FAMILY,
            "table": table,
            "name": chain.name,
            "type": chain.kind,
            "hook": chain.hook,
            "prio": chain.priority,
            "policy": "accept",
        }}}));
        commands.push(json!({"flush": {"chain": {
            "family": FAMILY, "table": table, "name": chain.name,
        }}}));
    }
    for rule in rules(config) {
        commands.push(json!({"add": {"rule": {
            "family": FAMILY,
            "table": table,
            "chain": rule.chain,
            "comment": rule.comment,
            "expr": rule.expr,
        }}}));
    }
    batch(commands)
}

/// The sets a client's elements live in: (upload set, download set).
pub(crate) fn client_sets(ip: IpAddr) -> (&'static str, &'static str) {
    match ip {
        IpAddr::V4(_) => (CLIENTS4_UP, CLIENTS4_DOWN),
        IpAddr::V6(_) => (CLIENTS6_UP, CLIENTS6_DOWN),
    }
}

/// Add then delete the table: removing a table that is not there is not an error.
pub(crate) fn uninstall_batch(table: &str) -> Value {
    batch(vec![
        json!({"add": {"table": table_ref(table)}}),
        json!({"delete": {"table": table_ref(table)}}),
    ])
}

// ---- session quotas ----

/// The quota object of a session: `q_<session>`, or `None` if `session` is not 1 to
/// [`MAX_SESSION_LEN`] ASCII letters, digits, `_`, `-` or `.` (so the object name is always
/// a plain nft identifier, and one session id gives one object).
pub(crate) fn quota_name(session: &str) -> Option<String> {
    let valid = !session.is_empty()
        && session.len() <= MAX_SESSION_LEN
        && session
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    valid.then(|| format!("{QUOTA_PREFIX}{session}"))
}

/// The key of one quota-map element: a client's upload key (MAC . IP) or download key (IP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum QuotaKey {
    Up(Client),
    Down(IpAddr),
}

impl QuotaKey {
    /// The quota map this key lives in.
    pub fn map(&self) -> &'static str {
        match self {
            QuotaKey::Up(Client {
                ip: IpAddr::V4(_), ..
            }) => QUOTA4_UP,
            QuotaKey::Up(Client {
                ip: IpAddr::V6(_), ..
            }) => QUOTA6_UP,
            QuotaKey::Down(IpAddr::V4(_)) => QUOTA4_DOWN,
            QuotaKey::Down(IpAddr::V6(_)) => QUOTA6_DOWN,
        }
    }
}

/// One element of a quota map: a client key and the quota object it counts against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QuotaElement {
    pub key: QuotaKey,
    pub quota: String,
}

/// The quota-map keys of `clients`: each client's upload key and its IP's download key,
/// sorted, without duplicates.
pub(crate) fn quota_keys(clients: &[Client]) -> Vec<QuotaKey> {
    let mut keys: Vec<QuotaKey> = clients
        .iter()
        .flat_map(|c| [QuotaKey::Up(*c), QuotaKey::Down(c.ip)])
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The elements to delete before the quota object `name` can be deleted or `keys` added:
/// those counting against `name`, and those of `keys` counting against another quota (a
/// map element cannot be re-added with a new quota).
pub(crate) fn stale_keys(
    name: &str,
    keys: &[QuotaKey],
    existing: &[QuotaElement],
) -> Vec<QuotaKey> {
    let mut stale: Vec<QuotaKey> = existing
        .iter()
        .filter(|e| e.quota == name || keys.contains(&e.key))
        .map(|e| e.key)
        .collect();
    stale.sort();
    stale.dedup();
    stale
}
