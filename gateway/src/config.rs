//! The gateway's configuration (`/etc/edgeshare/gateway.toml`); every key is shown, with
//! comments, in `packaging/gateway.example.toml`.

use std::path::PathBuf;

use edgeshare_shared::backend::HttpSettings;
use edgeshare_shared::backend::crowd::CrowdConfig;
use edgeshare_shared::config::{Problems, Validate};
use edgeshare_shared::paths::StateSettings;
use serde::Deserialize;

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
}

/// The interface consumers join (the Wi-Fi access point or a LAN port).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lan {
    pub interface: String,
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
}

impl Default for Portal {
    fn default() -> Self {
        Portal { port: 8080 }
    }
}

/// Where access codes are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CodeSource {
    /// A code store on this device, managed with `edgeshare-gateway codes …`; no backend.
    #[default]
    Local,
    /// The crowdsourced-internet backend's authorize-code (needs `[backend]`).
    Backend,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Codes {
    pub source: CodeSource,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Control {
    /// Unix socket for `status`, `clients`, `kick` and `codes`.
    pub socket: PathBuf,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            socket: PathBuf::from("/run/edgeshare/gateway.sock"),
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
    fn validate(&self, problems: &mut Problems) {
        check_interface("lan.interface", &self.lan.interface, problems);
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
