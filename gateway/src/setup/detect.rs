//! What [`super::plan`] needs to know of the system: read here, and nothing else does I/O.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

use super::files::under;
use super::{Detected, Interface, Stack};
use crate::net::Network;

/// Reads the system under `root` (`/`); interfaces and routes come from `ip`, which sees the
/// running system whatever the root.
pub fn detect(root: &Path) -> anyhow::Result<Detected> {
    let interfaces = interfaces(root)?;
    let names: Vec<String> = interfaces.iter().map(|i| i.name.clone()).collect();
    let mut files = BTreeMap::new();
    for path in super::files_read(&names) {
        match std::fs::read_to_string(under(root, &path)) {
            Ok(text) => {
                files.insert(path, text);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    let exists = |path: &str| under(root, Path::new(path)).exists();
    // A service counts when it is enabled (its link in a target's wants); a leftover binary
    // of a stack that is not used does not.
    let enabled = |unit: &str| {
        exists(&format!(
            "/etc/systemd/system/multi-user.target.wants/{unit}.service"
        ))
    };
    let has_ifupdown = exists("/sbin/ifup") || exists("/usr/sbin/ifup");
    let stack = if enabled("NetworkManager") {
        Some(Stack::NetworkManager)
    } else if enabled("dhcpcd") {
        Some(Stack::Dhcpcd)
    } else if has_ifupdown {
        Some(Stack::Ifupdown)
    } else {
        None
    };
    let machine_id = std::fs::read_to_string(under(root, Path::new("/etc/machine-id")))
        .context("reading /etc/machine-id (the LAN's IPv6 prefix is made from it)")?;
    Ok(Detected {
        stack,
        has_ifupdown,
        interfaces,
        default_route: default_route()?,
        machine_id,
        files,
    })
}

fn ip_json(args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let out = std::process::Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .context("running `ip` (is iproute2 installed?)")?;
    anyhow::ensure!(
        out.status.success(),
        "ip -j {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out.stdout)
}

/// Every interface but loopback, with its addresses; Wi-Fi ones have `/sys/class/net/X/wireless`.
fn interfaces(root: &Path) -> anyhow::Result<Vec<Interface>> {
    Ok(parse_interfaces(&ip_json(&["address", "show"])?)
        .into_iter()
        .map(|(name, networks)| Interface {
            wireless: under(root, Path::new("/sys/class/net"))
                .join(&name)
                .join("wireless")
                .exists(),
            name,
            networks,
        })
        .collect())
}

fn parse_interfaces(json: &[u8]) -> Vec<(String, Vec<Network>)> {
    #[derive(Deserialize)]
    struct Link {
        ifname: String,
        #[serde(default)]
        link_type: String,
        #[serde(default)]
        addr_info: Vec<AddrInfo>,
    }
    #[derive(Deserialize)]
    struct AddrInfo {
        local: Option<String>,
        prefixlen: Option<u8>,
    }
    let links: Vec<Link> = serde_json::from_slice(json).unwrap_or_default();
    links
        .into_iter()
        .filter(|l| l.link_type != "loopback")
        .map(|l| {
            let networks = l
                .addr_info
                .iter()
                .filter_map(|a| {
                    Some(Network {
                        address: a.local.as_deref()?.parse().ok()?,
                        prefix: a.prefixlen?,
                    })
                })
                .collect();
            (l.ifname, networks)
        })
        .collect()
}

fn default_route() -> anyhow::Result<Option<String>> {
    #[derive(Deserialize)]
    struct Route {
        dev: Option<String>,
    }
    let routes: Vec<Route> =
        serde_json::from_slice(&ip_json(&["-4", "route", "show", "default"])?).unwrap_or_default();
    Ok(routes.into_iter().find_map(|r| r.dev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interfaces_come_from_ip_json() {
        let json = br#"[{"ifname":"lo","link_type":"loopback","addr_info":[{"local":"127.0.0.1","prefixlen":8}]},
            {"ifname":"eth0","link_type":"ether","addr_info":[{"family":"inet","local":"192.168.1.20","prefixlen":24}]},
            {"ifname":"wlan0","link_type":"ether","addr_info":[]}]"#;
        let found = parse_interfaces(json);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].0, "eth0");
        assert_eq!(found[0].1[0].prefix, 24);
        assert_eq!(found[1].0, "wlan0");
        assert!(found[1].1.is_empty());
    }
}
