//! What [`super::plan`] needs to know of the system, read here so that the planner does no I/O.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;

use super::files::under;
use super::{Detected, Interface, Stack};

/// Reads the system under `root` (`/`); the interfaces' addresses come from rtnetlink, which sees
/// the running system whatever the root.
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
        default_route: default_route(root)?,
        machine_id,
        files,
    })
}

/// Every interface but loopback (`/sys/class/net`), with its addresses; Wi-Fi ones have a
/// `wireless` folder there.
fn interfaces(root: &Path) -> anyhow::Result<Vec<Interface>> {
    let sys = under(root, Path::new("/sys/class/net"));
    let mut names: Vec<String> = std::fs::read_dir(&sys)
        .with_context(|| format!("listing {}", sys.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name != "lo")
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            Ok(Interface {
                wireless: sys.join(&name).join("wireless").exists(),
                networks: crate::net::interface_networks(&name)?,
                name,
            })
        })
        .collect()
}

/// The IPv4 default route's interface, from `/proc/net/route`.
fn default_route(root: &Path) -> anyhow::Result<Option<String>> {
    let path = under(root, Path::new("/proc/net/route"));
    let table =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(default_route_in(&table))
}

/// The interface of the first route to 0.0.0.0/0 (destination and mask 00000000).
fn default_route_in(table: &str) -> Option<String> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [iface, "00000000", _, _, _, _, _, "00000000", ..] => Some((*iface).to_owned()),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_route_comes_from_proc_net_route() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     wlan0\t0042A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n";
        assert_eq!(default_route_in(table).as_deref(), Some("eth0"));
        let no_default = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                          eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n";
        assert_eq!(default_route_in(no_default), None);
    }
}
