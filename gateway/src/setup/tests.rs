use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::files::{self, Change, Manifest, Was};
use super::*;

fn iface(name: &str, wireless: bool, nets: &[(&str, u8)]) -> Interface {
    Interface {
        name: name.to_owned(),
        wireless,
        networks: nets
            .iter()
            .map(|(a, p)| Network {
                address: a.parse().unwrap(),
                prefix: *p,
            })
            .collect(),
    }
}

fn pi(stack: Stack) -> Detected {
    Detected {
        stack: Some(stack),
        has_ifupdown: true,
        interfaces: vec![
            iface("eth0", false, &[("192.168.1.20", 24)]),
            iface("wlan0", true, &[]),
        ],
        default_route: Some("eth0".to_owned()),
        machine_id: "0123456789abcdef0123456789abcdef\n".to_owned(),
        files: BTreeMap::new(),
    }
}

fn cafe() -> Request {
    Request {
        ssid: "Café Sol".to_owned(),
        country: "gb".to_owned(),
        lan: None,
        wan: None,
        passphrase: None,
    }
}

fn text<'a>(plan: &'a Plan, path: &str) -> &'a str {
    &plan
        .file(path)
        .unwrap_or_else(|| panic!("{path} not planned"))
        .content
}

fn paths(plan: &Plan) -> Vec<String> {
    plan.files
        .iter()
        .map(|f| f.path.display().to_string())
        .collect()
}

#[test]
fn bookworm_gets_networkmanager_kept_off_and_an_ifupdown_stanza() {
    let plan = plan(&pi(Stack::NetworkManager), &cafe()).unwrap();
    assert_eq!((plan.lan.as_str(), plan.wan.as_str()), ("wlan0", "eth0"));
    assert_eq!(plan.ipv4, Ipv4Addr::new(10, 66, 0, 1));
    assert_eq!(
        paths(&plan),
        [
            NM_CONF,
            INTERFACES,
            "/etc/network/interfaces.d/edgeshare-wlan0",
            HOSTAPD_CONF,
            DNSMASQ_CONF,
            GATEWAY_TOML
        ]
    );
    assert!(text(&plan, NM_CONF).contains("unmanaged-devices=interface-name:wlan0\n"));
    let stanza = text(&plan, "/etc/network/interfaces.d/edgeshare-wlan0");
    assert!(stanza.contains("iface wlan0 inet static\n    address 10.66.0.1/24\n"));
    assert!(stanza.contains(&format!(
        "iface wlan0 inet6 static\n    address {}/64\n",
        plan.ula
    )));
    assert_eq!(
        text(&plan, INTERFACES),
        "source /etc/network/interfaces.d/*\n"
    );
    assert!(
        plan.actions
            .iter()
            .any(|a| a.argv == ["systemctl", "reload", "NetworkManager"])
    );
}

#[test]
fn the_access_point_dhcp_and_router_advertisements() {
    let plan = plan(&pi(Stack::Ifupdown), &cafe()).unwrap();
    let hostapd = text(&plan, HOSTAPD_CONF);
    for line in [
        "interface=wlan0",
        "ssid=Café Sol",
        "country_code=GB",
        "ap_isolate=1",
    ] {
        assert!(hostapd.lines().any(|l| l == line), "{line} in {hostapd}");
    }
    assert!(!hostapd.contains("wpa="), "an open network by default");
    assert_eq!(plan.file(HOSTAPD_CONF).unwrap().mode, 0o644);
    let dnsmasq = text(&plan, DNSMASQ_CONF);
    for line in [
        "interface=wlan0",
        "dhcp-range=10.66.0.10,10.66.0.250,255.255.255.0,1h",
        "dhcp-option=option:dns-server,10.66.0.1",
        "dhcp-option=114,\"http://10.66.0.1:8080/captive-portal/api\"",
        "enable-ra",
        "dhcp-range=::,constructor:wlan0,ra-stateless,1h",
        "dhcp-option=option6:dns-server,[::]",
    ] {
        assert!(dnsmasq.lines().any(|l| l == line), "{line} in {dnsmasq}");
    }
    assert_eq!(plan.api_url(), "http://10.66.0.1:8080/captive-portal/api");
    // No NetworkManager: its file is not written.
    assert!(plan.file(NM_CONF).is_none());
}

#[test]
fn a_passphrase_makes_wpa2_and_a_private_file() {
    let request = Request {
        passphrase: Some("correct horse".to_owned()),
        ..cafe()
    };
    let plan = plan(&pi(Stack::Ifupdown), &request).unwrap();
    let hostapd = plan.file(HOSTAPD_CONF).unwrap();
    assert!(hostapd.content.contains("wpa=2\n"));
    assert!(hostapd.content.contains("wpa_passphrase=correct horse\n"));
    assert_eq!(hostapd.mode, 0o600);
    for bad in ["short", &"x".repeat(64), "tab\there!"] {
        let request = Request {
            passphrase: Some(bad.to_owned()),
            ..cafe()
        };
        assert_eq!(
            plan_err(&pi(Stack::Ifupdown), &request),
            SetupError::Passphrase
        );
    }
}

/// `text` as the file at `path`, as the machine has it.
fn put(detected: &mut Detected, path: &str, text: &str) {
    detected.files.insert(path.into(), text.to_owned());
}

/// A Pi with `stack` whose file at `path` holds `existing`, and the café's plan for it.
fn planned_over(stack: Stack, path: &str, existing: &str) -> (Detected, Plan) {
    let mut detected = pi(stack);
    put(&mut detected, path, existing);
    let plan = plan(&detected, &cafe()).unwrap();
    (detected, plan)
}

fn plan_err(detected: &Detected, request: &Request) -> SetupError {
    plan(detected, request).unwrap_err()
}

#[test]
fn bullseye_gets_a_dhcpcd_block_that_a_second_run_replaces() {
    let original = "hostname\nclientid\n# a comment\n";
    let (mut detected, first) = planned_over(Stack::Dhcpcd, DHCPCD_CONF, original);
    let conf = text(&first, DHCPCD_CONF).to_owned();
    assert!(conf.starts_with(original));
    assert!(conf.contains("interface wlan0\n    static ip_address=10.66.0.1/24\n"));
    assert!(first.file(INTERFACES).is_none());
    // A second run reads the file the first wrote: the same text, not a second block.
    detected.files.insert(DHCPCD_CONF.into(), conf.clone());
    let second = plan(&detected, &cafe()).unwrap();
    assert_eq!(text(&second, DHCPCD_CONF), conf);
    // With another interface, the block is replaced.
    detected.interfaces.push(iface("wlan1", true, &[]));
    let request = Request {
        lan: Some("wlan1".to_owned()),
        ..cafe()
    };
    let third = plan(&detected, &request).unwrap();
    let conf = text(&third, DHCPCD_CONF);
    assert_eq!(conf.matches("edgeshare-gateway setup: begin").count(), 1);
    assert!(conf.contains("interface wlan1\n") && !conf.contains("interface wlan0\n"));
}

#[test]
fn gateway_toml_keeps_what_is_there_and_fills_in_the_interfaces() {
    let existing = "# my gateway\n[lan]\ninterface = \"wlan0\" # the AP\n\n[portal]\nport = 8081\n\n[codes]\nsource = \"local\"\n";
    let (mut detected, plan) = planned_over(Stack::Ifupdown, GATEWAY_TOML, existing);
    let toml_text = text(&plan, GATEWAY_TOML);
    assert!(toml_text.starts_with("# my gateway\n[lan]\ninterface = \"wlan0\" # the AP\n"));
    let config: crate::config::GatewayConfig = toml::from_str(toml_text).unwrap();
    assert_eq!(config.lan.interface, "wlan0");
    assert_eq!(config.wan.interface.as_deref(), Some("eth0"));
    assert_eq!(config.portal.ssid.as_deref(), Some("Café Sol"));
    // The portal's port is the configuration's, in option 114 too.
    assert_eq!(plan.portal_port, 8081);
    assert!(text(&plan, DNSMASQ_CONF).contains("http://10.66.0.1:8081/captive-portal/api"));

    put(&mut detected, GATEWAY_TOML, "[lan\n");
    assert!(matches!(
        plan_err(&detected, &cafe()),
        SetupError::GatewayToml(_)
    ));
}

#[test]
fn errors_before_anything_is_planned() {
    let mut no_wifi = pi(Stack::Ifupdown);
    no_wifi.interfaces.retain(|i| !i.wireless);
    let err = plan_err(&no_wifi, &cafe());
    assert_eq!(
        err,
        SetupError::NoWifi {
            found: vec!["eth0".to_owned()]
        }
    );
    assert!(err.to_string().contains("--lan"), "{err}");

    let mut two = pi(Stack::Ifupdown);
    two.interfaces.push(iface("wlan1", true, &[]));
    assert!(matches!(
        plan_err(&two, &cafe()),
        SetupError::SeveralWifi(_)
    ));

    let request = Request {
        lan: Some("wlan9".to_owned()),
        ..cafe()
    };
    assert!(matches!(
        plan_err(&pi(Stack::Ifupdown), &request),
        SetupError::NoSuchInterface { option: "lan", .. }
    ));

    let request = Request {
        country: "UK".to_owned(),
        ..cafe()
    };
    let err = plan_err(&pi(Stack::Ifupdown), &request);
    assert_eq!(err, SetupError::Country("UK".to_owned()));
    assert!(err.to_string().contains("GB, not UK"), "{err}");

    let mut unsupported = pi(Stack::Ifupdown);
    unsupported.stack = None;
    assert_eq!(
        plan_err(&unsupported, &cafe()),
        SetupError::UnsupportedStack
    );

    let mut nm_only = pi(Stack::NetworkManager);
    nm_only.has_ifupdown = false;
    assert!(
        plan_err(&nm_only, &cafe())
            .to_string()
            .contains("sudo apt install ifupdown")
    );

    let mut no_route = pi(Stack::Ifupdown);
    no_route.default_route = None;
    assert_eq!(plan_err(&no_route, &cafe()), SetupError::NoUplink);

    let request = Request {
        wan: Some("wlan0".to_owned()),
        ..cafe()
    };
    assert!(matches!(
        plan_err(&pi(Stack::Ifupdown), &request),
        SetupError::SameInterface(_)
    ));

    for ssid in ["", &"x".repeat(33), "two\nlines"] {
        let request = Request {
            ssid: ssid.to_owned(),
            ..cafe()
        };
        assert!(matches!(
            plan_err(&pi(Stack::Ifupdown), &request),
            SetupError::Ssid(_)
        ));
    }

    let mut clash = pi(Stack::Ifupdown);
    clash.files.insert(
        INTERFACES.into(),
        "source /etc/network/interfaces.d/*\nauto lo\niface lo inet loopback\niface wlan0 inet dhcp\n"
            .to_owned(),
    );
    let err = plan_err(&clash, &cafe());
    assert!(
        matches!(err, SetupError::ForeignStanza { line: 4, .. }),
        "{err:?}"
    );
}

#[test]
fn the_lan_network_avoids_networks_in_use() {
    let mut detected = pi(Stack::Ifupdown);
    // The uplink is in a 10.66/16 home network: 10.66.0.0/24 would clash.
    detected.interfaces[0] = iface("eth0", false, &[("10.66.3.7", 16)]);
    assert_eq!(
        plan(&detected, &cafe()).unwrap().ipv4,
        Ipv4Addr::new(10, 67, 0, 1)
    );
    // The LAN's own address from an earlier run is no clash.
    detected.interfaces[1] = iface("wlan0", true, &[("10.67.0.1", 24)]);
    assert_eq!(
        plan(&detected, &cafe()).unwrap().ipv4,
        Ipv4Addr::new(10, 67, 0, 1)
    );
    detected.interfaces[0] = iface("eth0", false, &[("10.0.0.2", 8)]);
    assert_eq!(plan_err(&detected, &cafe()), SetupError::NoFreeNetwork);
}

#[test]
fn the_ula_is_rfc_4193_and_stable_per_machine() {
    let a = ula("0123456789abcdef0123456789abcdef\n");
    assert_eq!(a, ula("0123456789abcdef0123456789abcdef"));
    assert_ne!(a, ula("fedcba9876543210fedcba9876543210"));
    let segments = a.segments();
    assert_eq!(segments[0] >> 8, 0xfd);
    assert_eq!(segments[3], 0x0066);
    assert_eq!(&segments[4..], &[0, 0, 0, 1]);
}

// ---- files on a temporary root ----

fn write(root: &Path, path: &str, text: &str, mode: u32) {
    let full = files::under(root, Path::new(path));
    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
    std::fs::write(&full, text).unwrap();
    std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Every file under `root` but setup's own state, with its bytes and mode.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<PathBuf, (Vec<u8>, u32)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.starts_with(files::under(root, Path::new(files::STATE))) {
                continue;
            }
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
                out.insert(
                    path.strip_prefix(root).unwrap().to_owned(),
                    (std::fs::read(&path).unwrap(), mode),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn file(path: &str, content: &str, mode: u32) -> FileWrite {
    FileWrite {
        path: path.into(),
        content: content.to_owned(),
        mode,
    }
}

#[test]
fn apply_backs_up_twice_is_idle_and_undo_restores() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    write(root, "/etc/hostapd/hostapd.conf", "interface=old\n", 0o600);
    write(root, "/etc/other", "untouched\n", 0o644);
    let before = snapshot(root);
    let plan = [
        file(HOSTAPD_CONF, "interface=wlan0\n", 0o644),
        file(DNSMASQ_CONF, "interface=wlan0\n", 0o644),
    ];
    assert_eq!(files::change_of(root, &plan[0]).unwrap(), Change::Replace);
    assert_eq!(files::change_of(root, &plan[1]).unwrap(), Change::Create);

    let first = files::apply(root, &plan, &files::Before::default()).unwrap();
    assert_eq!(first.replaced, [PathBuf::from(HOSTAPD_CONF)]);
    assert_eq!(first.created, [PathBuf::from(DNSMASQ_CONF)]);
    let after = snapshot(root);
    assert_eq!(
        after[Path::new("etc/hostapd/hostapd.conf")],
        (b"interface=wlan0\n".to_vec(), 0o644)
    );
    let manifest = Manifest::load(root).unwrap();
    assert_eq!(
        manifest.entries[0].was,
        Was::Replaced {
            backup: "etc%hostapd%hostapd.conf".to_owned(),
            mode: 0o600
        }
    );
    assert_eq!(manifest.entries[1].was, Was::Created);

    // Twice: nothing written, the first backups kept.
    let second = files::apply(root, &plan, &files::Before::default()).unwrap();
    assert!(second.created.is_empty() && second.replaced.is_empty());
    assert_eq!(second.unchanged.len(), 2);
    assert_eq!(snapshot(root), after);
    assert_eq!(Manifest::load(root).unwrap(), manifest);

    // A changed plan replaces our own file, but the backup is still the original's.
    let changed = [file(HOSTAPD_CONF, "interface=wlan1\n", 0o644)];
    files::apply(root, &changed, &files::Before::default()).unwrap();
    assert_eq!(Manifest::load(root).unwrap(), manifest);

    let undone = files::undo(root).unwrap();
    assert_eq!(undone.restored, [PathBuf::from(HOSTAPD_CONF)]);
    assert_eq!(undone.removed, [PathBuf::from(DNSMASQ_CONF)]);
    // Byte for byte and mode for mode as before; setup's state gone.
    assert_eq!(snapshot(root), before);
    assert!(!files::under(root, Path::new(files::STATE)).exists());
    assert!(
        files::undo(root)
            .unwrap_err()
            .to_string()
            .contains("nothing to undo")
    );
}

#[test]
fn a_file_that_cannot_be_written_leaves_nothing_half_done() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    write(root, "/etc/hostapd/hostapd.conf", "interface=old\n", 0o644);
    // A folder where the plan wants a file: its write fails after the first file's.
    std::fs::create_dir_all(files::under(root, Path::new(DNSMASQ_CONF))).unwrap();
    let before = snapshot(root);
    let plan = [
        file(HOSTAPD_CONF, "interface=wlan0\n", 0o644),
        file(GATEWAY_TOML, "[lan]\n", 0o644),
        file(DNSMASQ_CONF, "interface=wlan0\n", 0o644),
    ];
    let err = files::apply(root, &plan, &files::Before::default()).unwrap_err();
    assert!(
        format!("{err:#}").contains("nothing was changed"),
        "{err:#}"
    );
    assert_eq!(snapshot(root), before);
    assert!(!files::under(root, Path::new(GATEWAY_TOML)).exists());
    assert!(Manifest::load(root).unwrap().entries.is_empty());
}

#[test]
fn a_planned_system_written_twice_then_undone() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    write(
        root,
        INTERFACES,
        "source /etc/network/interfaces.d/*\n",
        0o644,
    );
    write(root, GATEWAY_TOML, "[lan]\ninterface = \"wlan0\"\n", 0o644);
    let before = snapshot(root);
    let read = |root: &Path| {
        let mut detected = pi(Stack::NetworkManager);
        for path in files_read(&["wlan0".to_owned()]) {
            if let Ok(text) = std::fs::read_to_string(files::under(root, &path)) {
                detected.files.insert(path, text);
            }
        }
        detected
    };
    let first = plan(&read(root), &cafe()).unwrap();
    let written = files::apply(root, &first.files, &before_setup()).unwrap();
    assert_eq!(written.created.len(), 4, "{written:?}");
    assert_eq!(written.replaced, [PathBuf::from(GATEWAY_TOML)]);
    // The second run plans from what the first wrote: nothing to change, nothing restarted.
    let second = plan(&read(root), &cafe()).unwrap();
    let again = files::apply(root, &second.files, &files::Before::default()).unwrap();
    assert!(
        again.created.is_empty() && again.replaced.is_empty(),
        "{again:?}"
    );
    let restarts = second
        .actions
        .iter()
        .filter(|a| match &a.when {
            When::Always => false,
            When::Changed(paths) => paths.iter().any(|p| again.changed(p)),
        })
        .count();
    assert_eq!(restarts, 0);
    let undone = files::undo(root).unwrap();
    assert_eq!(snapshot(root), before);
    // The first run's record of the system, not the second's.
    assert_eq!(undone.before, before_setup());
    let argvs: Vec<String> = undo_actions(&undone)
        .iter()
        .map(|a| a.argv.join(" "))
        .collect();
    // NetworkManager is restarted, not reloaded: its ifupdown plugin reads
    // /etc/network/interfaces only when it starts, so after a reboot with setup's stanza a
    // reload would leave the Wi-Fi interface unmanaged until the next boot.
    assert_eq!(
        argvs,
        [
            "ip address flush dev wlan0 scope global",
            "systemctl try-restart NetworkManager",
            "systemctl disable hostapd",
            "systemctl mask hostapd",
            "systemctl stop hostapd",
            "systemctl try-restart dnsmasq",
            "systemctl disable edgeshare-portal-only",
            "systemctl stop edgeshare-portal-only",
            "systemctl stop edgeshare-gateway",
        ]
    );
}

fn before_setup() -> files::Before {
    files::Before {
        lan: Some("wlan0".to_owned()),
        units: [
            ("hostapd", "masked"),
            ("dnsmasq", "enabled"),
            ("edgeshare-portal-only", "disabled"),
            ("edgeshare-gateway", "enabled"),
        ]
        .into_iter()
        .map(|(u, s)| (u.to_owned(), s.to_owned()))
        .collect(),
        running: vec!["dnsmasq".to_owned()],
    }
}

#[test]
fn the_command_line() {
    use clap::Parser;
    let parse = |args: &[&str]| {
        crate::cli::Cli::try_parse_from(["edgeshare-gateway", "setup"].iter().chain(args))
    };
    let cli = parse(&[
        "--ssid",
        "Café Sol",
        "--country",
        "GB",
        "--lan",
        "wlan0",
        "--dry-run",
    ])
    .unwrap();
    let crate::cli::Command::Setup(args) = cli.command else {
        panic!("not setup: {:?}", cli.command)
    };
    assert_eq!(args.ssid.as_deref(), Some("Café Sol"));
    assert_eq!(args.lan.as_deref(), Some("wlan0"));
    assert!(args.dry_run && !args.undo);
    assert!(parse(&["--undo"]).is_ok());
    // The SSID and the country are required, and --undo takes nothing else.
    assert!(parse(&["--ssid", "x"]).is_err());
    assert!(parse(&["--country", "GB"]).is_err());
    assert!(parse(&["--undo", "--ssid", "x"]).is_err());
    assert!(parse(&["--undo", "--dry-run"]).is_err());
}
