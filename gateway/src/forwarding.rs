//! The kernel switches that make this host a router: IPv4 and IPv6 forwarding, and an uplink
//! that keeps accepting router advertisements once IPv6 forwarding is on. The daemon turns
//! them on itself, once its table is in place (so forwarding is never on without the table),
//! and logs what it changed; nothing else (no `sysctl.conf` line, no install step) has to.
//!
//! Why `accept_ra` on the uplink: with `net.ipv6.conf.all.forwarding=1` Linux treats every
//! interface as a router's, and a router ignores router advertisements on any interface
//! whose `accept_ra` is 1 (the default). Worse, switching forwarding on purges the default
//! routes learnt from advertisements on those interfaces at once. An uplink that gets its
//! IPv6 address and default route by SLAAC (most home routers and phones' hotspots) would
//! lose both, and the gateway its own IPv6. `accept_ra = 2` ("accept even when forwarding")
//! on `wan.interface` keeps them, so it is set *before* forwarding goes on. Only a 1 is
//! raised: 0 means the uplink is configured without advertisements, or a network manager
//! (systemd-networkd, NetworkManager) handles them itself, and 2 is already right.
//!
//! The values are per network namespace and read from `/proc/sys` (the caller names the
//! root, so the rules are tested on a directory of files).

use std::path::{Path, PathBuf};

/// One kernel setting this module may write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    /// As `sysctl` names it: `net.ipv6.conf.all.forwarding`.
    pub key: String,
    /// Under the `/proc/sys` root: `net/ipv6/conf/all/forwarding`.
    path: PathBuf,
}

impl Switch {
    fn new(path: &str) -> Switch {
        Switch {
            // Interface names may hold dots (eth0.10): only the path's separators become
            // dots, as `sysctl` shows a key.
            key: path.replace('/', "."),
            path: PathBuf::from(path),
        }
    }
}

/// What became of one switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It had the value wanted already.
    Kept(String),
    /// It was changed from the first value to the second.
    Changed(String, String),
    /// Left as it was on purpose: the value found, and why.
    Left(String, &'static str),
    /// It could not be read or written: the error.
    Failed(String),
}

/// What [`turn_on`] found and did, in the order it did it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub switches: Vec<(Switch, Outcome)>,
    /// Whether clients get IPv6 (forwarding on); the reason when not.
    pub ipv6: Result<(), String>,
}

/// The value `accept_ra` should have on the uplink, given the one it has: `None` to leave it.
pub fn uplink_accept_ra(current: &str) -> Option<&'static str> {
    (current.trim() == "1").then_some("2")
}

fn read(root: &Path, switch: &Switch) -> Result<String, String> {
    std::fs::read_to_string(root.join(&switch.path))
        .map(|value| value.trim().to_owned())
        .map_err(|err| format!("cannot read {}: {err}", switch.key))
}

/// Sets `switch` to `want` unless it has it already.
fn set(root: &Path, switch: &Switch, want: &str) -> Outcome {
    let was = match read(root, switch) {
        Ok(was) => was,
        Err(err) => return Outcome::Failed(err),
    };
    if was == want {
        return Outcome::Kept(was);
    }
    match std::fs::write(root.join(&switch.path), want) {
        Ok(()) => Outcome::Changed(was, want.to_owned()),
        Err(err) => Outcome::Failed(format!("cannot set {} to {want}: {err}", switch.key)),
    }
}

/// Turns forwarding on under `root` (normally `/proc/sys`), the uplink `wan` kept accepting
/// router advertisements first. IPv4 forwarding is the gateway's whole job: failing to turn
/// it on is an error. IPv6 forwarding is left off (clients then get IPv4 only, never an open
/// door: the table drops IPv6 like IPv4) when it cannot be turned on, or when the uplink's
/// advertisements cannot be kept, which would cost the gateway its own IPv6 route.
pub fn turn_on(root: &Path, wan: Option<&str>) -> anyhow::Result<Report> {
    let mut switches = Vec::new();
    let ipv4 = Switch::new("net/ipv4/ip_forward");
    let outcome = set(root, &ipv4, "1");
    if let Outcome::Failed(err) = &outcome {
        anyhow::bail!(
            "turning on IPv4 forwarding: {err} (the gateway needs to write /proc/sys: run it as root, without ProtectKernelTunables=)"
        );
    }
    switches.push((ipv4, outcome));

    let ipv6 = if !root.join("net/ipv6").exists() {
        Err("this kernel has no IPv6".to_owned())
    } else {
        let uplink_ok = match wan {
            Some(wan) => {
                let accept_ra = Switch::new(&format!("net/ipv6/conf/{wan}/accept_ra"));
                let outcome = match read(root, &accept_ra) {
                    Err(err) => Outcome::Failed(err),
                    Ok(current) => match uplink_accept_ra(&current) {
                        Some(want) => set(root, &accept_ra, want),
                        None if current == "2" => Outcome::Kept(current),
                        None => Outcome::Left(
                            current,
                            "router advertisements are off on the uplink, or its network manager handles them",
                        ),
                    },
                };
                let ok = match &outcome {
                    Outcome::Failed(err) => Err(format!(
                        "{err}; forwarding would stop wan.interface {wan} from accepting router advertisements (losing its SLAAC address and default route)"
                    )),
                    _ => Ok(()),
                };
                switches.push((accept_ra, outcome));
                ok
            }
            None => Ok(()),
        };
        uplink_ok.and_then(|()| {
            let forwarding = Switch::new("net/ipv6/conf/all/forwarding");
            let outcome = set(root, &forwarding, "1");
            let ok = match &outcome {
                Outcome::Failed(err) => Err(err.clone()),
                _ => Ok(()),
            };
            switches.push((forwarding, outcome));
            ok
        })
    };
    Ok(Report { switches, ipv6 })
}

/// [`turn_on`] under `/proc/sys`, every change logged; an uplink that is not named gets a
/// warning (its advertisements cannot be kept).
pub fn turn_on_and_log(wan: Option<&str>) -> anyhow::Result<()> {
    let report = turn_on(Path::new("/proc/sys"), wan)?;
    for (switch, outcome) in &report.switches {
        let key = &switch.key;
        match outcome {
            Outcome::Kept(value) => tracing::debug!(%key, %value, "kernel setting already right"),
            Outcome::Changed(was, now) => {
                tracing::info!(%key, %was, %now, "kernel setting changed for forwarding")
            }
            Outcome::Left(value, why) => tracing::info!(%key, %value, "kernel setting left: {why}"),
            Outcome::Failed(err) => tracing::warn!(%key, "{err}"),
        }
    }
    match (&report.ipv6, wan) {
        (Err(why), _) => tracing::warn!(
            "IPv6 forwarding stays off ({why}): online clients get IPv4 only; IPv6 stays closed to captive ones"
        ),
        (Ok(()), None) => tracing::warn!(
            "IPv6 forwarding is on but wan.interface is not set: an uplink that gets its IPv6 address by SLAAC stops accepting router advertisements; name it in wan.interface"
        ),
        (Ok(()), Some(_)) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `/proc/sys` of plain files: each key with its value.
    fn proc_sys(values: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (path, value) in values {
            let file = root.path().join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, format!("{value}\n")).unwrap();
        }
        root
    }

    fn value(root: &Path, path: &str) -> String {
        std::fs::read_to_string(root.join(path))
            .unwrap()
            .trim()
            .to_owned()
    }

    const V4: &str = "net/ipv4/ip_forward";
    const V6: &str = "net/ipv6/conf/all/forwarding";
    const RA: &str = "net/ipv6/conf/wan0/accept_ra";

    #[test]
    fn both_families_are_turned_on_and_the_uplink_keeps_its_advertisements_first() {
        let root = proc_sys(&[(V4, "0"), (V6, "0"), (RA, "1")]);
        let report = turn_on(root.path(), Some("wan0")).unwrap();
        assert_eq!(report.ipv6, Ok(()));
        assert_eq!(
            (value(root.path(), V4), value(root.path(), V6)),
            ("1".into(), "1".into())
        );
        assert_eq!(value(root.path(), RA), "2");
        let order: Vec<&str> = report
            .switches
            .iter()
            .map(|(s, _)| s.key.as_str())
            .collect();
        assert_eq!(
            order,
            [
                "net.ipv4.ip_forward",
                "net.ipv6.conf.wan0.accept_ra",
                "net.ipv6.conf.all.forwarding"
            ],
            "accept_ra before IPv6 forwarding: switching it on purges the uplink's learnt routes"
        );
        assert!(
            report
                .switches
                .iter()
                .all(|(_, o)| matches!(o, Outcome::Changed(was, _) if was == "0" || was == "1"))
        );
    }

    #[test]
    fn accept_ra_is_raised_from_1_only() {
        assert_eq!(uplink_accept_ra("1\n"), Some("2"));
        for left in ["0", "2", ""] {
            assert_eq!(uplink_accept_ra(left), None, "{left:?}");
        }
        let root = proc_sys(&[(V4, "1"), (V6, "1"), (RA, "0")]);
        let report = turn_on(root.path(), Some("wan0")).unwrap();
        assert_eq!(
            value(root.path(), RA),
            "0",
            "an uplink without RAs stays so"
        );
        assert!(matches!(report.switches[1].1, Outcome::Left(ref v, _) if v == "0"));
        assert!(matches!(report.switches[0].1, Outcome::Kept(_)));
    }

    #[test]
    fn an_interface_name_with_a_dot_is_one_path_component() {
        let root = proc_sys(&[
            (V4, "0"),
            (V6, "0"),
            ("net/ipv6/conf/eth0.10/accept_ra", "1"),
        ]);
        let report = turn_on(root.path(), Some("eth0.10")).unwrap();
        assert_eq!(value(root.path(), "net/ipv6/conf/eth0.10/accept_ra"), "2");
        assert_eq!(report.switches[1].0.key, "net.ipv6.conf.eth0.10.accept_ra");
    }

    #[test]
    fn no_ipv6_in_the_kernel_leaves_ipv4_on_and_says_so() {
        let root = proc_sys(&[(V4, "0")]);
        let report = turn_on(root.path(), Some("wan0")).unwrap();
        assert_eq!(value(root.path(), V4), "1");
        assert!(report.ipv6.is_err());
    }

    #[test]
    fn an_uplink_whose_advertisements_cannot_be_kept_leaves_ipv6_forwarding_off() {
        // wan0 has no accept_ra (it does not exist in this namespace, say).
        let root = proc_sys(&[(V4, "0"), (V6, "0")]);
        let report = turn_on(root.path(), Some("wan0")).unwrap();
        assert_eq!(value(root.path(), V6), "0");
        let why = report.ipv6.unwrap_err();
        assert!(why.contains("net.ipv6.conf.wan0.accept_ra"), "{why}");
        // Without a named uplink there is nothing to keep.
        let report = turn_on(root.path(), None).unwrap();
        assert_eq!((report.ipv6, value(root.path(), V6)), (Ok(()), "1".into()));
    }

    #[test]
    fn ipv4_forwarding_that_cannot_be_turned_on_is_an_error_naming_the_key() {
        let root = proc_sys(&[]);
        let err = turn_on(root.path(), None).unwrap_err().to_string();
        assert!(err.contains("net.ipv4.ip_forward"), "{err}");
    }
}
