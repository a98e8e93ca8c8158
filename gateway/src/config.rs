//! The gateway's configuration (`/etc/edgeshare/gateway.toml`); every key is shown, with
//! comments, in `packaging/gateway.example.toml`.

use std::path::PathBuf;

use edgeshare_shared::backend::HttpSettings;
use edgeshare_shared::backend::crowd::CrowdConfig;
use edgeshare_shared::config::{Problems, Validate};
use edgeshare_shared::paths::StateSettings;
use edgeshare_shared::secret::Secret;
use serde::Deserialize;

use crate::firewall::{FirewallConfig, GardenEntry, split_garden_port};
use crate::net::Network;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    pub lan: Lan,
    #[serde(default)]
    pub wan: Wan,
    #[serde(default)]
    pub portal: Portal,
    #[serde(default)]
    pub codes: Codes,
    /// Required when `codes.source = "backend"`.
    #[serde(default)]
    pub backend: Option<CrowdConfig>,
    #[serde(default)]
    pub http: HttpSettings,
    #[serde(default)]
    pub state: StateSettings,
    #[serde(default)]
    pub control: Control,
    #[serde(default)]
    pub session: Session,
    #[serde(default)]
    pub firewall: Firewall,
    #[serde(default)]
    pub capture: Capture,
    #[serde(default)]
    pub metrics: Metrics,
    #[serde(default)]
    pub dashboard: Dashboard,
}

/// The interface consumers join (the Wi-Fi access point or a LAN port).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lan {
    pub interface: String,
    /// Most devices expected on the LAN at once: the kernel's neighbour-table limits are
    /// raised to fit them at start (see `neigh`), and the capture meter is sized for them.
    #[serde(default = "default_max_clients")]
    pub max_clients: u32,
}

/// Twice the kernel's default neighbour-table limit (1,024 entries).
fn default_max_clients() -> u32 {
    2048
}

/// The uplink to the internet.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Wan {
    /// Required when `nat` is on.
    pub interface: Option<String>,
    /// Masquerade consumers' traffic behind the WAN address.
    pub nat: bool,
}

impl Default for Wan {
    fn default() -> Self {
        Wan {
            interface: None,
            nat: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Portal {
    /// TCP port of the portal's HTTP server on the LAN address; port-80 traffic of captive
    /// clients is redirected to it.
    pub port: u16,
    /// What captive clients may reach before logging in, each entry a host or CIDR on one
    /// TCP port: `host` (443), `host:port`, `[v6]:port`. The backend's host on its URL's
    /// port is always included when codes are checked there. Host names are resolved at start.
    pub walled_garden: Vec<String>,
    /// DNS servers besides the gateway itself that captive clients may query (those DHCP
    /// hands out); DNS to any other host is dropped until they log in.
    pub dns_servers: Vec<std::net::IpAddr>,
    /// Failed code attempts (and account passwords) allowed per device (its MAC, all its
    /// addresses together) per minute. Its old name, per client, is still read.
    #[serde(alias = "attempts_per_client")]
    pub attempts_per_device: u32,
    /// Failed attempts per minute of all devices that keep guessing (3 or more of their
    /// own); devices with fewer are checked up to 4 times this in all.
    pub attempts_global: u32,
    /// Catalogue files (`<tag>.toml`) that add languages to the portal or change texts of the
    /// built-in ones. A missing directory means none.
    pub locales_dir: PathBuf,
    pub brand: Brand,
    /// The Wi-Fi network consumers join, for the printed vouchers' "join the Wi-Fi" QR code
    /// (`codes create --print`); without it the vouchers have the portal's QR code only.
    pub ssid: Option<String>,
}

/// The provider's name, logo, colours and terms on the portal; all optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Brand {
    pub name: Option<String>,
    /// A .png, .jpg or .svg file, served by the portal itself.
    pub logo: Option<PathBuf>,
    /// Terms of use as text, or in a file (not both).
    pub terms: Option<String>,
    pub terms_file: Option<PathBuf>,
    pub colors: BrandColors,
}

/// Colours as `#rgb` or `#rrggbb`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrandColors {
    /// Buttons and the name bar.
    pub accent: Option<String>,
    /// Text on the accent colour; black or white, whichever reads better, if unset.
    pub accent_text: Option<String>,
}

impl Default for Portal {
    fn default() -> Self {
        Portal {
            port: 8080,
            walled_garden: Vec::new(),
            dns_servers: Vec::new(),
            attempts_per_device: 5,
            attempts_global: 60,
            locales_dir: PathBuf::from("/etc/edgeshare/locales"),
            brand: Brand::default(),
            ssid: None,
        }
    }
}

/// How a code's session behaves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Session {
    /// Devices that may be online with one code at once; a further device moves the session.
    pub devices_per_code: u32,
    /// A device with no traffic for this long is logged out (it may enter its code again);
    /// "0s" turns this off.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: std::time::Duration,
    /// Longest session when the code source gives no expiry.
    #[serde(with = "humantime_serde")]
    pub max_duration: std::time::Duration,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            devices_per_code: 1,
            idle_timeout: std::time::Duration::from_secs(30 * 60),
            max_duration: std::time::Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Firewall {
    /// Our own nftables table (family inet).
    pub table: String,
    /// Delete the table when the daemon stops. Off by default: with the table in place the
    /// LAN stays closed to captive clients and online clients keep their access until their
    /// kernel timeouts, even while the daemon restarts or after it crashed.
    pub remove_on_exit: bool,
}

impl Default for Firewall {
    fn default() -> Self {
        Firewall {
            table: "edgeshare".to_owned(),
            remove_on_exit: false,
        }
    }
}

/// Where access codes are checked.
/// The packet-capture meter that audits the kernel's counters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Capture {
    pub enabled: bool,
    /// Socket receive buffer, bytes. The kernel drops what does not fit while the capture
    /// thread is behind.
    pub buffer_bytes: usize,
    pub max_flows: usize,
    #[serde(with = "humantime_serde")]
    pub flow_idle: std::time::Duration,
}

impl Default for Capture {
    fn default() -> Self {
        Capture {
            enabled: true,
            buffer_bytes: 8 * 1024 * 1024,
            max_flows: 16_384,
            flow_idle: std::time::Duration::from_secs(120),
        }
    }
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// `host:port`; empty turns the endpoint off.
    pub listen: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            listen: "127.0.0.1:9464".to_owned(),
        }
    }
}

/// The provider's dashboard: a web page for the provider, never for the LAN's consumers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dashboard {
    /// `host:port`; loopback by default (reach it on the Pi itself, or through an SSH
    /// tunnel). It may be the WAN side's address, never the LAN's: connections from the
    /// LAN are refused by the firewall and by the dashboard itself.
    pub listen: std::net::SocketAddr,
    /// The provider's password; empty (the default) turns the dashboard off. Set it in
    /// gateway.env as `EDGESHARE_DASHBOARD__PASSWORD`, not here.
    pub password: Secret,
    /// The agent's metrics endpoint (its `metrics.listen`), for its health on the dashboard.
    pub agent_metrics: std::net::SocketAddr,
}

impl Default for Dashboard {
    fn default() -> Self {
        Dashboard {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8090)),
            password: Secret::default(),
            agent_metrics: std::net::SocketAddr::from(([127, 0, 0, 1], 9465)),
        }
    }
}

impl Dashboard {
    /// Why `listen` cannot be used beside a LAN on `lan` (the networks of `lan_interface`):
    /// the dashboard is the provider's, never the consumers'. The one rule `check-config`
    /// and `run` both apply.
    pub fn listen_problem(&self, lan_interface: &str, lan: &[Network]) -> Option<String> {
        let listen = self.listen;
        lan.iter().any(|net| net.contains(listen.ip())).then(|| {
            format!(
                "{listen} is on lan.interface {lan_interface}: the dashboard must not face the consumers; use 127.0.0.1 or the WAN side's address"
            )
        })
    }
}

/// A dashboard password shorter than this is refused: the login is rate-limited, but a
/// password of a few characters falls to patient guessing all the same.
pub const DASHBOARD_PASSWORD_MIN: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CodeSource {
    /// A code store on this device, managed with `edgeshare-gateway codes …`; no backend.
    #[default]
    Local,
    /// The crowdsourced-internet backend's authorize-code (needs `[backend]`).
    Backend,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Codes {
    pub source: CodeSource,
    /// A backend code's session ends this long before the code's `expireAt`, so that its
    /// last usage report reaches the backend while the code is still valid (after it, the
    /// backend refuses the report and the provider loses those bytes).
    #[serde(with = "humantime_serde")]
    pub expiry_margin: std::time::Duration,
    /// Serve codes of other backend accounts. Off by default: the backend credits a code's
    /// points and `bytesShared` to the code's OWNER, never to the gateway that carried the
    /// bytes, so serving them is a favour to that account, not income.
    pub serve_other_accounts: bool,
    /// Replaced by `serve_other_accounts` (other accounts' codes are refused unless it is
    /// on). Still read, so that a config written for an older gateway starts: `true` is the
    /// default now, and `false` no longer turns serving on (it used to, on the false premise
    /// that this account was credited); a warning says so.
    pub own_codes_only: Option<bool>,
    /// How often a session of another account's code asks authorize-code again: its expiry
    /// is not told (only the provider's own list has it), so this bounds how long it is
    /// served past it. At most 30 s.
    #[serde(with = "humantime_serde")]
    pub recheck_every: std::time::Duration,
    /// How often the provider's own code list (what each code has left, and its expiry) is
    /// read and kept in the state directory: while the backend is unreachable, codes on
    /// that list still admit consumers, capped at what they had left.
    #[serde(with = "humantime_serde")]
    pub list_refresh: std::time::Duration,
}

/// The longest `codes.recheck_every`: another account's code is carried at most about this
/// long past its expiry.
pub const MAX_RECHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

impl Default for Codes {
    fn default() -> Self {
        Codes {
            source: CodeSource::default(),
            expiry_margin: std::time::Duration::from_secs(15),
            serve_other_accounts: false,
            own_codes_only: None,
            // Below the 30 s bound, so that one slow backend reply still fits in it.
            recheck_every: std::time::Duration::from_secs(20),
            list_refresh: std::time::Duration::from_secs(60),
        }
    }
}

impl Codes {
    /// What a config that still has `codes.own_codes_only = false` should be told: it no
    /// longer serves other accounts' codes.
    pub fn deprecation(&self) -> Option<&'static str> {
        (self.own_codes_only == Some(false) && !self.serve_other_accounts).then_some(
            "codes.own_codes_only is replaced by codes.serve_other_accounts: other accounts' codes are now refused (the backend credits their owner, not you); set codes.serve_other_accounts = true to serve them anyway, and remove codes.own_codes_only",
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Control {
    /// Unix socket for `status`, `clients`, `kick` and `codes revoke`.
    pub socket: PathBuf,
    /// A group whose members may use the socket besides root (mode 0660); none: root only.
    pub group: Option<String>,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            socket: PathBuf::from("/run/edgeshare/gateway.sock"),
            group: None,
        }
    }
}

impl GatewayConfig {
    /// What the nftables table enforces for this configuration, with `garden` as the walled
    /// garden (resolved by the caller: the daemon resolves host names, the boot-time install
    /// cannot).
    pub fn firewall_config(&self, garden: Vec<GardenEntry>) -> FirewallConfig {
        FirewallConfig {
            table: self.firewall.table.clone(),
            lan: self.lan.interface.clone(),
            wan: self.wan.interface.clone(),
            nat: self.wan.nat,
            portal_port: self.portal.port,
            garden,
            dns: self.portal.dns_servers.clone(),
        }
    }
}

/// Linux interface names are at most 15 bytes and contain no '/' or whitespace.
fn check_interface(key: &str, name: &str, problems: &mut Problems) {
    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\t', '\n']) {
        problems.push(
            key,
            format!(
                "\"{name}\" is not a network interface name (1-15 characters, no '/' or spaces)"
            ),
        );
    }
}

impl Validate for GatewayConfig {
    /// The portal's look (its files and colours) is read as the portal reads it at start:
    /// `check-config` reports what the portal would leave out; `run` serves without it.
    fn check_files(&self, problems: &mut Problems) {
        let (_, look_problems) = crate::portal::Look::load(&self.portal);
        for (key, message) in look_problems {
            problems.push(key, message);
        }
        // Not a file, but as `run` finds it at start (where it stops the daemon): the LAN's
        // networks on this host. A LAN interface that is not there yet is `run`'s to report.
        if !self.dashboard.password.is_empty() {
            if let Ok(lan) = crate::net::interface_networks(&self.lan.interface) {
                if let Some(problem) = self.dashboard.listen_problem(&self.lan.interface, &lan) {
                    problems.push("dashboard.listen", problem);
                }
            }
        }
    }

    fn validate(&self, problems: &mut Problems) {
        check_interface("lan.interface", &self.lan.interface, problems);
        if !(1..=65_536).contains(&self.lan.max_clients) {
            problems.push("lan.max_clients", "must be from 1 to 65536");
        }
        match (&self.wan.interface, self.wan.nat) {
            (Some(wan), _) => {
                check_interface("wan.interface", wan, problems);
                if *wan == self.lan.interface {
                    problems.push("wan.interface", "must differ from lan.interface");
                }
            }
            (None, true) => problems.push(
                "wan.interface",
                "is required while wan.nat is on (name the uplink, e.g. \"eth0\")",
            ),
            (None, false) => {}
        }
        if self.portal.port == 0 {
            problems.push("portal.port", "must be a port number from 1 to 65535");
        }
        for entry in &self.portal.walled_garden {
            if let Err(bad) = split_garden_port(entry) {
                problems.push("portal.walled_garden", bad.to_string());
            }
        }
        if let Some(ssid) = &self.portal.ssid {
            if ssid.is_empty() || ssid.len() > 32 {
                problems.push(
                    "portal.ssid",
                    format!("{ssid:?} is not a Wi-Fi network name (1 to 32 bytes)"),
                );
            }
        }
        if self.session.devices_per_code == 0 {
            problems.push("session.devices_per_code", "must be at least 1");
        }
        if self.session.max_duration.is_zero() {
            problems.push("session.max_duration", "must be longer than 0s");
        }
        let table_ok = !self.firewall.table.is_empty()
            && self.firewall.table.len() <= 64
            && self
                .firewall
                .table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !table_ok {
            problems.push("firewall.table", "must be 1-64 letters, digits, '_' or '-'");
        }
        if self.capture.enabled {
            if !(64 * 1024..=1024 * 1024 * 1024).contains(&self.capture.buffer_bytes) {
                problems.push("capture.buffer_bytes", "must be from 65536 to 1073741824");
            }
            if self.capture.max_flows == 0 {
                problems.push("capture.max_flows", "must be at least 1");
            }
            if self.capture.flow_idle.is_zero() {
                problems.push("capture.flow_idle", "must be longer than 0s");
            }
        }
        if !self.metrics.listen.is_empty()
            && self.metrics.listen.parse::<std::net::SocketAddr>().is_err()
        {
            problems.push(
                "metrics.listen",
                format!(
                    "\"{}\" is not an address and port like \"127.0.0.1:9464\" (empty turns metrics off)",
                    self.metrics.listen
                ),
            );
        }
        if !self.dashboard.password.is_empty()
            && self.dashboard.password.expose().chars().count() < DASHBOARD_PASSWORD_MIN
        {
            problems.push(
                "dashboard.password",
                format!(
                    "must be at least {DASHBOARD_PASSWORD_MIN} characters (or empty to turn the dashboard off)"
                ),
            );
        }
        if self.codes.own_codes_only == Some(true) && self.codes.serve_other_accounts {
            problems.push(
                "codes.own_codes_only",
                "contradicts codes.serve_other_accounts = true; remove codes.own_codes_only (replaced by codes.serve_other_accounts)",
            );
        }
        if self.codes.recheck_every.is_zero() || self.codes.recheck_every > MAX_RECHECK_EVERY {
            problems.push(
                "codes.recheck_every",
                "must be from 1s to 30s (another account's code is served up to this long past its expiry)",
            );
        }
        if self.codes.list_refresh < std::time::Duration::from_secs(1) {
            problems.push("codes.list_refresh", "must be at least 1s");
        }
        match (&self.backend, self.codes.source) {
            (Some(backend), _) => backend.validate("backend", problems),
            (None, CodeSource::Backend) => problems.push(
                "backend",
                "section is required when codes.source = \"backend\" (url, email, password)",
            ),
            (None, CodeSource::Local) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dashboard_may_not_listen_on_the_lans_networks() {
        let lan = [
            Network {
                address: "10.66.0.1".parse().unwrap(),
                prefix: 24,
            },
            Network {
                address: "fd00:66::1".parse().unwrap(),
                prefix: 64,
            },
        ];
        let on = |listen: &str| {
            let dashboard = Dashboard {
                listen: listen.parse().unwrap(),
                ..Dashboard::default()
            };
            dashboard.listen_problem("wlan0", &lan)
        };
        for refused in ["10.66.0.1:8090", "10.66.0.77:8090", "[fd00:66::1]:8090"] {
            let problem = on(refused).unwrap_or_else(|| panic!("{refused} accepted"));
            assert!(problem.contains("lan.interface wlan0"), "{problem}");
        }
        for allowed in [
            "127.0.0.1:8090",
            "192.168.1.20:8090",
            "[::1]:8090",
            "[fd00:77::1]:8090",
        ] {
            assert_eq!(on(allowed), None, "{allowed}");
        }
    }
}
