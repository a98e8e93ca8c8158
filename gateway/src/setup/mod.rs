//! `edgeshare-gateway setup`: from a fresh Raspberry Pi OS to a working hotspot in one command.
//!
//! [`plan`] is pure: from what was found on the system ([`Detected`], read by [`detect`]) and
//! the provider's answers ([`Request`]) it returns every file to write and every command to
//! run ([`Plan`]), or an error before anything is touched. [`files`] writes a plan's files with
//! a backup of each one it replaces and a manifest, and undoes them; the CLI runs the commands.

pub mod country;
pub mod detect;
pub mod files;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::net::Network;

pub const GATEWAY_TOML: &str = "/etc/edgeshare/gateway.toml";
pub const HOSTAPD_CONF: &str = "/etc/hostapd/hostapd.conf";
pub const DNSMASQ_CONF: &str = "/etc/dnsmasq.d/edgeshare.conf";
pub const NM_CONF: &str = "/etc/NetworkManager/conf.d/edgeshare.conf";
pub const DHCPCD_CONF: &str = "/etc/dhcpcd.conf";
pub const INTERFACES: &str = "/etc/network/interfaces";

/// The ifupdown stanza that gives the LAN interface its addresses.
pub fn stanza_path(lan: &str) -> PathBuf {
    PathBuf::from(format!("/etc/network/interfaces.d/edgeshare-{lan}"))
}

/// Every file whose current text [`plan`] needs (to keep, edit or compare).
pub fn files_read(lan_candidates: &[String]) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = [
        GATEWAY_TOML,
        HOSTAPD_CONF,
        DNSMASQ_CONF,
        NM_CONF,
        DHCPCD_CONF,
        INTERFACES,
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    paths.extend(lan_candidates.iter().map(|lan| stanza_path(lan)));
    paths
}

/// Marks the lines setup adds to a file it shares with the system (dhcpcd.conf), so that a
/// second run replaces them instead of adding them again.
const BEGIN: &str = "# edgeshare-gateway setup: begin (setup --undo restores this file)";
const END: &str = "# edgeshare-gateway setup: end";
const HEADER: &str = "# Written by `edgeshare-gateway setup`; `edgeshare-gateway setup --undo` puts back what was here.";

/// What the provider asked for.
#[derive(Debug, Clone)]
pub struct Request {
    pub ssid: String,
    pub country: String,
    /// The Wi-Fi interface; found by itself if `None`.
    pub lan: Option<String>,
    /// The uplink; the default route's interface if `None`.
    pub wan: Option<String>,
    /// WPA2 passphrase; an open network (the portal is the gate) if `None`.
    pub passphrase: Option<String>,
}

/// Who manages the network on this system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// Raspberry Pi OS Bookworm.
    NetworkManager,
    /// Raspberry Pi OS Bullseye.
    Dhcpcd,
    /// Plain Debian.
    Ifupdown,
}

impl Stack {
    pub fn name(self) -> &'static str {
        match self {
            Stack::NetworkManager => "NetworkManager",
            Stack::Dhcpcd => "dhcpcd",
            Stack::Ifupdown => "ifupdown",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Interface {
    pub name: String,
    pub wireless: bool,
    pub networks: Vec<Network>,
}

/// What [`detect`] found.
#[derive(Debug, Clone)]
pub struct Detected {
    /// `None`: none of the stacks setup knows is in use.
    pub stack: Option<Stack>,
    /// `ifup` is installed (NetworkManager systems need it for the LAN's static address).
    pub has_ifupdown: bool,
    pub interfaces: Vec<Interface>,
    /// The IPv4 default route's interface.
    pub default_route: Option<String>,
    /// /etc/machine-id: the ULA prefix is derived from it, so it is the same at every run.
    pub machine_id: String,
    /// The current text of each file of [`files_read`] that exists.
    pub files: BTreeMap<PathBuf, String>,
}

/// A file to write: its absolute path on the target system, whole content and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileWrite {
    pub path: PathBuf,
    pub content: String,
    pub mode: u32,
}

/// When a command runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum When {
    Always,
    /// Only if one of these files changed in this run (a second run restarts nothing).
    Changed(Vec<PathBuf>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub argv: Vec<String>,
    pub when: When,
    /// Its failure stops setup; otherwise it is a warning (hostapd without a radio).
    pub required: bool,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub stack: Stack,
    pub lan: String,
    pub wan: String,
    pub ipv4: Ipv4Addr,
    /// The LAN's ULA address (`…::1` of its /64).
    pub ula: Ipv6Addr,
    pub portal_port: u16,
    pub files: Vec<FileWrite>,
    pub actions: Vec<Action>,
}

impl Plan {
    pub fn portal_url(&self) -> String {
        format!("http://{}:{}/", self.ipv4, self.portal_port)
    }

    /// The RFC 8908 API that DHCP option 114 names.
    pub fn api_url(&self) -> String {
        format!(
            "http://{}:{}/captive-portal/api",
            self.ipv4, self.portal_port
        )
    }

    /// The planned text of `path` (the gateway's config, to check it before writing).
    pub fn file(&self, path: &str) -> Option<&FileWrite> {
        self.files.iter().find(|f| f.path == Path::new(path))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SetupError {
    #[error(
        "no Wi-Fi interface found (interfaces: {}): name the access point's interface with --lan (e.g. --lan wlan0); if the Pi's Wi-Fi is blocked, `sudo rfkill unblock wifi` first",
        list(.found)
    )]
    NoWifi { found: Vec<String> },
    #[error("several Wi-Fi interfaces ({}): name the access point's with --lan", list(.0))]
    SeveralWifi(Vec<String>),
    #[error("--{option} {name}: no such interface (interfaces: {})", list(.found))]
    NoSuchInterface {
        option: &'static str,
        name: String,
        found: Vec<String>,
    },
    #[error("--lan and --wan are both {0}: the access point and the uplink must be two interfaces")]
    SameInterface(String),
    #[error(
        "no default route, so the uplink is unknown: connect it (e.g. a cable in eth0) or name it with --wan"
    )]
    NoUplink,
    #[error(
        "--country {0}: not a country the kernel's regulatory database knows; give its ISO 3166 two-letter code (GB, not UK; DE, FR, US…)"
    )]
    Country(String),
    #[error("--ssid: {0}")]
    Ssid(&'static str),
    #[error("--passphrase: WPA2 needs 8 to 63 printable ASCII characters")]
    Passphrase,
    #[error(
        "no supported network stack found (NetworkManager, dhcpcd or ifupdown): install ifupdown (`sudo apt install ifupdown`) and run setup again, or follow the README's manual steps"
    )]
    UnsupportedStack,
    #[error(
        "NetworkManager runs here, and setup gives {lan} its fixed address with ifupdown, which is not installed: `sudo apt install ifupdown`, then run setup again"
    )]
    NoIfupdown { lan: String },
    #[error(
        "{file} already configures {lan} (line {line}: `{text}`): remove that stanza, or choose another interface with --lan"
    )]
    ForeignStanza {
        file: String,
        lan: String,
        line: usize,
        text: String,
    },
    #[error("{GATEWAY_TOML} is not valid TOML, so setup cannot fill it in: {0}")]
    GatewayToml(String),
    #[error(
        "no free 10.66–10.99.0.0/24 network for the LAN: every one is in use on another interface"
    )]
    NoFreeNetwork,
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// Checks the request against the system and returns everything setup will change.
pub fn plan(detected: &Detected, request: &Request) -> Result<Plan, SetupError> {
    let country = country::known(&request.country)
        .ok_or_else(|| SetupError::Country(request.country.clone()))?;
    check_ssid(&request.ssid)?;
    if let Some(passphrase) = &request.passphrase
        && (!(8..=63).contains(&passphrase.len())
            || !passphrase.bytes().all(|b| (0x20..0x7f).contains(&b)))
    {
        return Err(SetupError::Passphrase);
    }
    let names: Vec<String> = detected.interfaces.iter().map(|i| i.name.clone()).collect();
    let exists = |option: &'static str, name: &String| {
        if names.contains(name) {
            Ok(name.clone())
        } else {
            Err(SetupError::NoSuchInterface {
                option,
                name: name.clone(),
                found: names.clone(),
            })
        }
    };
    let lan = match &request.lan {
        Some(lan) => exists("lan", lan)?,
        None => {
            let wireless: Vec<String> = detected
                .interfaces
                .iter()
                .filter(|i| i.wireless)
                .map(|i| i.name.clone())
                .collect();
            match wireless.as_slice() {
                [one] => one.clone(),
                [] => return Err(SetupError::NoWifi { found: names }),
                _ => return Err(SetupError::SeveralWifi(wireless)),
            }
        }
    };
    let wan = match (&request.wan, &detected.default_route) {
        (Some(wan), _) => exists("wan", wan)?,
        (None, Some(route)) => route.clone(),
        (None, None) => return Err(SetupError::NoUplink),
    };
    if lan == wan {
        return Err(SetupError::SameInterface(lan));
    }
    let stack = detected.stack.ok_or(SetupError::UnsupportedStack)?;
    if stack == Stack::NetworkManager && !detected.has_ifupdown {
        return Err(SetupError::NoIfupdown { lan });
    }
    let ipv4 = free_network(&detected.interfaces, &lan)?;
    let ula = ula(&detected.machine_id);
    let text = |path: &str| detected.files.get(Path::new(path)).map(String::as_str);

    let (gateway_toml, portal_port) = gateway_toml(text(GATEWAY_TOML), &lan, &wan, &request.ssid)?;
    let mut files = Vec::new();
    let mut actions = Vec::new();
    let mut network_files = Vec::new();
    match stack {
        Stack::NetworkManager | Stack::Ifupdown => {
            if stack == Stack::NetworkManager {
                files.push(FileWrite {
                    path: NM_CONF.into(),
                    content: format!(
                        "{HEADER}\n[keyfile]\nunmanaged-devices=interface-name:{lan}\n"
                    ),
                    mode: 0o644,
                });
                actions.push(Action {
                    argv: argv(&["systemctl", "reload", "NetworkManager"]),
                    when: When::Changed(vec![NM_CONF.into()]),
                    required: true,
                });
                network_files.push(PathBuf::from(NM_CONF));
            }
            if let Some(interfaces) = with_source_line(text(INTERFACES), &lan)? {
                files.push(FileWrite {
                    path: INTERFACES.into(),
                    content: interfaces,
                    mode: 0o644,
                });
            }
            let stanza = stanza_path(&lan);
            files.push(FileWrite {
                path: stanza.clone(),
                content: format!(
                    "{HEADER}\nallow-hotplug {lan}\niface {lan} inet static\n    address {ipv4}/24\n\
                     iface {lan} inet6 static\n    address {ula}/64\n    dad-attempts 0\n"
                ),
                mode: 0o644,
            });
            network_files.push(INTERFACES.into());
            network_files.push(stanza.clone());
            // A changed stanza replaces the addresses the interface has (ifup only adds).
            actions.push(Action {
                argv: argv(&["ip", "address", "flush", "dev", &lan, "scope", "global"]),
                when: When::Changed(vec![stanza.clone()]),
                required: true,
            });
            actions.push(Action {
                argv: argv(&["ifup", "--force", &lan]),
                when: When::Changed(vec![stanza]),
                required: true,
            });
        }
        Stack::Dhcpcd => {
            let block = format!(
                "{BEGIN}\ninterface {lan}\n    static ip_address={ipv4}/24\n    static ip6_address={ula}/64\n    nohook wpa_supplicant\n    noipv6rs\n{END}\n"
            );
            files.push(FileWrite {
                path: DHCPCD_CONF.into(),
                content: with_block(text(DHCPCD_CONF).unwrap_or(""), &block),
                mode: 0o644,
            });
            network_files.push(DHCPCD_CONF.into());
            actions.push(Action {
                argv: argv(&["systemctl", "restart", "dhcpcd"]),
                when: When::Changed(vec![DHCPCD_CONF.into()]),
                required: true,
            });
        }
    }
    files.push(FileWrite {
        path: HOSTAPD_CONF.into(),
        content: hostapd_conf(&lan, &request.ssid, &country, request.passphrase.as_deref()),
        // The passphrase is a secret.
        mode: if request.passphrase.is_some() {
            0o600
        } else {
            0o644
        },
    });
    // Always a valid URL: an IPv4 address and a port.
    let option_114 =
        crate::portal::dnsmasq_captive_option(&format!("http://{ipv4}:{portal_port}/"))
            .unwrap_or_default();
    files.push(FileWrite {
        path: DNSMASQ_CONF.into(),
        content: format!(
            "{HEADER}\n\
             # DHCP and DNS for the access point only.\n\
             interface={lan}\n\
             bind-dynamic\n\
             dhcp-range={net}.10,{net}.250,255.255.255.0,1h\n\
             dhcp-option=option:router,{ipv4}\n\
             dhcp-option=option:dns-server,{ipv4}\n\
             # RFC 8910: where devices find the portal's RFC 8908 API.\n\
             {option_114}\n\
             # IPv6: router advertisements of the interface's ULA /64 (SLAAC), the gateway as DNS.\n\
             enable-ra\n\
             dhcp-range=::,constructor:{lan},ra-stateless,1h\n\
             dhcp-option=option6:dns-server,[::]\n",
            net = network_prefix(ipv4),
        ),
        mode: 0o644,
    });
    files.push(FileWrite {
        path: GATEWAY_TOML.into(),
        content: gateway_toml,
        mode: 0o644,
    });

    let mut dnsmasq_inputs = network_files.clone();
    dnsmasq_inputs.push(DNSMASQ_CONF.into());
    let mut gateway_inputs = network_files;
    gateway_inputs.push(GATEWAY_TOML.into());
    actions.extend([
        // Debian ships hostapd masked until it has a configuration.
        Action {
            argv: argv(&["systemctl", "unmask", "hostapd"]),
            when: When::Always,
            required: true,
        },
        Action {
            argv: argv(&[
                "systemctl",
                "enable",
                "hostapd",
                "dnsmasq",
                "edgeshare-portal-only",
                "edgeshare-gateway",
            ]),
            when: When::Always,
            required: true,
        },
        Action {
            argv: argv(&["systemctl", "restart", "dnsmasq"]),
            when: When::Changed(dnsmasq_inputs),
            required: true,
        },
        // Without a working radio (or with one that cannot do AP mode) hostapd fails: the rest
        // still works on a wired LAN port, so this is a warning.
        Action {
            argv: argv(&["systemctl", "restart", "hostapd"]),
            when: When::Changed(vec![HOSTAPD_CONF.into()]),
            required: false,
        },
        Action {
            argv: argv(&["systemctl", "start", "edgeshare-portal-only"]),
            when: When::Always,
            required: true,
        },
        Action {
            argv: argv(&["systemctl", "restart", "edgeshare-gateway"]),
            when: When::Changed(gateway_inputs),
            required: true,
        },
        Action {
            argv: argv(&["systemctl", "start", "edgeshare-gateway"]),
            when: When::Always,
            required: true,
        },
    ]);
    Ok(Plan {
        stack,
        lan,
        wan,
        ipv4,
        ula,
        portal_port,
        files,
        actions,
    })
}

/// The units setup enables; their state before it is kept for undo.
pub const UNITS: [&str; 4] = [
    "hostapd",
    "dnsmasq",
    "edgeshare-portal-only",
    "edgeshare-gateway",
];

/// What undo runs once the files are back: the LAN interface loses the addresses setup gave
/// it, the network managers and services re-read their restored files, and the units setup
/// enabled or unmasked are disabled or masked again. Each a warning if it fails: the files,
/// what matters at the next boot, are back already.
pub fn undo_actions(undone: &files::Undone) -> Vec<Action> {
    let warn = |words: &[&str]| Action {
        argv: argv(words),
        when: When::Always,
        required: false,
    };
    let touched = |path: &str| {
        undone
            .restored
            .iter()
            .chain(&undone.removed)
            .any(|p| p == Path::new(path))
    };
    let mut actions = Vec::new();
    if let Some(lan) = &undone.before.lan {
        actions.push(warn(&[
            "ip", "address", "flush", "dev", lan, "scope", "global",
        ]));
    }
    if touched(NM_CONF) {
        // A restart, not a reload: NetworkManager's ifupdown plugin (Debian's default, with
        // `managed=false`) reads /etc/network/interfaces only when it starts, so once it has
        // started with setup's stanza a reload leaves the interface unmanaged until the next
        // boot. A restart keeps the connections NetworkManager has up.
        actions.push(warn(&["systemctl", "try-restart", "NetworkManager"]));
    }
    if touched(DHCPCD_CONF) {
        actions.push(warn(&["systemctl", "restart", "dhcpcd"]));
    }
    for unit in UNITS {
        match undone.before.units.get(unit).map(String::as_str) {
            Some("disabled") => actions.push(warn(&["systemctl", "disable", unit])),
            Some("masked") => {
                actions.push(warn(&["systemctl", "disable", unit]));
                actions.push(warn(&["systemctl", "mask", unit]));
            }
            // Enabled before setup (or unknown): it stays so.
            _ => {}
        }
        // Running before: again, with its restored configuration; else stopped as it was.
        if undone.before.running.iter().any(|r| r == unit) {
            actions.push(warn(&["systemctl", "try-restart", unit]));
        } else {
            actions.push(warn(&["systemctl", "stop", unit]));
        }
    }
    actions
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

fn check_ssid(ssid: &str) -> Result<(), SetupError> {
    if ssid.is_empty() || ssid.len() > 32 {
        return Err(SetupError::Ssid("1 to 32 bytes (UTF-8) are allowed"));
    }
    if ssid.chars().any(char::is_control) {
        return Err(SetupError::Ssid(
            "no control characters (line breaks, tabs)",
        ));
    }
    Ok(())
}

/// "10.66.0" of 10.66.0.1.
fn network_prefix(ip: Ipv4Addr) -> String {
    let [a, b, c, _] = ip.octets();
    format!("{a}.{b}.{c}")
}

/// 10.66.0.1, or the first of 10.67.0.1 … 10.99.0.1 whose /24 no other interface is on (the
/// uplink of a home router at 10.66.0.0/16, say). The LAN interface's own addresses do not
/// count: they are ours from an earlier run, or about to be replaced.
fn free_network(interfaces: &[Interface], lan: &str) -> Result<Ipv4Addr, SetupError> {
    let taken: Vec<&Network> = interfaces
        .iter()
        .filter(|i| i.name != lan)
        .flat_map(|i| &i.networks)
        .filter(|n| n.address.is_ipv4())
        .collect();
    (66..=99)
        .map(|b| Ipv4Addr::new(10, b, 0, 1))
        .find(|candidate| {
            !taken.iter().any(|net| {
                let prefix = net.prefix.min(24);
                let ours = Network {
                    address: IpAddr::V4(*candidate),
                    prefix,
                };
                ours.contains(net.address)
            })
        })
        .ok_or(SetupError::NoFreeNetwork)
}

/// RFC 4193: fd00::/8 and a 40-bit global ID, here from the machine's id (the same at every
/// run, different on every Pi), subnet 0x0066; the gateway is `::1`.
fn ula(machine_id: &str) -> Ipv6Addr {
    let digest = Sha256::digest(format!("edgeshare ULA {}", machine_id.trim()).as_bytes());
    let mut bytes = [0u8; 16];
    bytes[0] = 0xfd;
    bytes[1..6].copy_from_slice(&digest[..5]);
    bytes[6..8].copy_from_slice(&0x0066u16.to_be_bytes());
    bytes[15] = 1;
    Ipv6Addr::from(bytes)
}

fn hostapd_conf(lan: &str, ssid: &str, country: &str, passphrase: Option<&str>) -> String {
    let mut conf = format!(
        "{HEADER}\n\
         interface={lan}\n\
         driver=nl80211\n\
         ssid={ssid}\n\
         utf8_ssid=1\n\
         country_code={country}\n\
         ieee80211d=1\n\
         hw_mode=g\n\
         channel=6\n\
         wmm_enabled=1\n\
         auth_algs=1\n\
         # Clients reach each other only through the gateway's nftables table (see the README).\n\
         ap_isolate=1\n"
    );
    match passphrase {
        Some(passphrase) => {
            let _ = write!(
                conf,
                "wpa=2\nwpa_key_mgmt=WPA-PSK\nrsn_pairwise=CCMP\nwpa_passphrase={passphrase}\n"
            );
        }
        None => conf.push_str("# An open network: the portal is the gate.\n"),
    }
    conf
}

/// /etc/network/interfaces with the line that reads interfaces.d (Debian's has it; a
/// hand-written one may not); `None` if nothing is to change. A stanza for the LAN interface
/// there would clash with ours: an error.
fn with_source_line(current: Option<&str>, lan: &str) -> Result<Option<String>, SetupError> {
    let current = current.unwrap_or("");
    for (n, line) in current.lines().enumerate() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["iface", name, ..] | ["auto" | "allow-hotplug", name] = words.as_slice()
            && *name == lan
        {
            return Err(SetupError::ForeignStanza {
                file: INTERFACES.to_owned(),
                lan: lan.to_owned(),
                line: n + 1,
                text: line.trim().to_owned(),
            });
        }
    }
    let sourced = current.lines().any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        matches!(
            words.as_slice(),
            ["source", "/etc/network/interfaces.d/*"]
                | [
                    "source-directory",
                    "/etc/network/interfaces.d" | "/etc/network/interfaces.d/"
                ]
        )
    });
    if sourced {
        return Ok(None);
    }
    let mut text = current.to_owned();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str("source /etc/network/interfaces.d/*\n");
    Ok(Some(text))
}

/// `current` with setup's block (between [`BEGIN`] and [`END`]) replaced, or added at the end.
fn with_block(current: &str, block: &str) -> String {
    if let Some(start) = current.find(BEGIN)
        && let Some(end) = current[start..].find(END)
    {
        let mut after = start + end + END.len();
        if current[after..].starts_with('\n') {
            after += 1;
        }
        return format!("{}{block}{}", &current[..start], &current[after..]);
    }
    let mut text = current.to_owned();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(block);
    text
}

/// The gateway's configuration with the interfaces and the SSID set, everything else (and
/// every comment) kept; and the portal's port it gives.
fn gateway_toml(
    current: Option<&str>,
    lan: &str,
    wan: &str,
    ssid: &str,
) -> Result<(String, u16), SetupError> {
    let mut doc: toml_edit::DocumentMut = current
        .unwrap_or("")
        .parse()
        .map_err(|e: toml_edit::TomlError| SetupError::GatewayToml(e.to_string()))?;
    for (table, key, value) in [
        ("lan", "interface", lan),
        ("wan", "interface", wan),
        ("portal", "ssid", ssid),
    ] {
        let item = doc
            .entry(table)
            .or_insert_with(|| toml_edit::Item::Table(toml_edit::Table::new()));
        let table_like = item.as_table_like_mut().ok_or_else(|| {
            SetupError::GatewayToml(format!("`{table}` must be a table ([{table}])"))
        })?;
        // Only when different, so an unchanged file keeps its bytes (and a second run is idle).
        if table_like.get(key).and_then(|v| v.as_str()) != Some(value) {
            table_like.insert(key, toml_edit::value(value));
        }
    }
    let port = doc
        .get("portal")
        .and_then(|p| p.get("port"))
        .and_then(|p| p.as_integer())
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(crate::config::Portal::default().port);
    Ok((doc.to_string(), port))
}

#[cfg(test)]
mod tests;
