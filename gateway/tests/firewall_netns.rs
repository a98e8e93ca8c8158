//! The nftables firewall (and the capture meter that audits its counters) against the real
//! kernel: real `nft`, real netlink, real veth pairs,
//! three network namespaces (client — gw — up, see `support::Testbed`), traffic from
//! `std::net` probes. The behaviour tests drive [`NetlinkFirewall`], what the daemon runs
//! (netlink per login and per tick; `nft -j` through [`NftFirewall`] to install and
//! uninstall); what it leaves in the kernel is cross-checked with nft's own listings
//! (`nft -j list`), and [`NftFirewall`]'s errors are nft's. Needs root; skips with a
//! message when not root, fails when not root in CI.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use edgeshare_gateway::firewall::{
    Change, ClientCounters, Firewall, FirewallConfig, FirewallError, NetlinkFirewall, NftFirewall,
    SessionQuota,
};
use edgeshare_gateway::forwarding;
use edgeshare_gateway::net::{Client, Mac};
use support::probe::Event;
use support::{Testbed, sock, unique_name};

netns_probe_entry!();

const PORTAL_PORT: u16 = 8080;
/// How long a connection that should fail is given: on veth a working one takes well under
/// a millisecond.
const BLOCKED: Duration = Duration::from_millis(700);
/// How long a connection that should work is given.
const OPEN: Duration = Duration::from_secs(3);
const GARDEN: &str = "10.77.0.128/25";

fn client_mac() -> Mac {
    Testbed::CLIENT_MAC.parse().expect("test MAC")
}

fn client4() -> Client {
    Client {
        mac: client_mac(),
        ip: Testbed::client_v4(),
    }
}

fn client6() -> Client {
    Client {
        mac: client_mac(),
        ip: Testbed::client_v6(),
    }
}

fn config() -> FirewallConfig {
    FirewallConfig {
        table: unique_name("t"),
        lan: Testbed::GW_LAN_IF.to_owned(),
        wan: Some(Testbed::GW_WAN_IF.to_owned()),
        nat: false,
        portal_port: PORTAL_PORT,
        garden: vec![GARDEN.parse().expect("garden")],
        dns: vec![Testbed::up_extra_v4()],
    }
}

/// The firewall of the bed's gateway namespace: nft runs there through `ip netns exec`, the
/// netlink socket is opened from a thread inside it. The gateway's own forwarding switches
/// are turned on there, as the daemon does beside its firewall (this module has none).
fn firewall(bed: &Testbed, config: FirewallConfig) -> NetlinkFirewall {
    bed.gw
        .in_thread(|| forwarding::turn_on(std::path::Path::new("/proc/sys"), config.wan.as_deref()))
        .expect("forwarding on in gw");
    let mut fw = NetlinkFirewall::with_command(config, bed.gw.command_prefix("nft"));
    bed.gw
        .in_thread(|| fw.open())
        .expect("netlink socket in gw");
    fw
}

/// Is this the refusal of a call that needs our table when there is none (the kernel's
/// ENOENT over netlink)?
fn no_table(result: Result<impl std::fmt::Debug, FirewallError>) -> bool {
    matches!(
        result,
        Err(FirewallError::Netlink {
            errno: libc::ENOENT,
            ..
        })
    )
}

fn counters_of(firewall: &mut NetlinkFirewall, client: &Client) -> Option<ClientCounters> {
    firewall
        .clients()
        .expect("clients")
        .into_iter()
        .find(|c| c.client == *client)
}

/// Asserts that a counter holds the payload plus between 40 (IP + TCP headers, no options)
/// and 80 bytes of headers per counted packet: the element counters count IP packets.
fn assert_ip_bytes(what: &str, counted_bytes: u64, packets: u64, payload: u64) {
    assert!(packets > 0, "{what}: no packets counted");
    assert!(
        counted_bytes > payload,
        "{what}: counted {counted_bytes} bytes for {payload} bytes of payload"
    );
    let (low, high) = (payload + 40 * packets, payload + 80 * packets);
    assert!(
        (low..=high).contains(&counted_bytes),
        "{what}: {counted_bytes} bytes in {packets} packets for a payload of {payload} \
         (expected {low}..={high})"
    );
}

fn ping_installed() -> bool {
    std::process::Command::new("ping")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn captive_client_gets_dns_the_garden_and_the_portal_only() {
    if !support::require_root() {
        return;
    }
    let bed = Testbed::new();
    let mut fw = firewall(&bed, config());
    fw.install().expect("install");
    println!(
        "{}",
        bed.gw
            .run_ok(&["nft", "-a", "list", "table", "inet", &fw.config().table])
    );

    let https4 = bed.up.tcp_listen(sock(Testbed::up_v4(), 443), 100);
    let _https6 = bed.up.tcp_listen(sock(Testbed::up_v6(), 443), 100);
    let garden = bed.up.tcp_listen(sock(Testbed::up_extra_v4(), 443), 100);
    let _dns4 = bed.up.udp_echo(sock(Testbed::up_v4(), 53));
    let _dns6 = bed.up.udp_echo(sock(Testbed::up_v6(), 53));
    let _resolver = bed.up.udp_echo(sock(Testbed::up_extra_v4(), 53));
    let tcp53 = bed.up.tcp_listen(sock(Testbed::up_v4(), 53), 100);
    let _other_udp = bed.up.udp_echo(sock(Testbed::up_v4(), 5353));
    let garden_ssh = bed.up.tcp_listen(sock(Testbed::up_extra_v4(), 22), 100);
    let garden_web = bed.up.tcp_listen(sock(Testbed::up_extra_v4(), 80), 100);
    let portal = bed.gw.tcp_listen("0.0.0.0:8080".parse().expect("addr"), 10);

    // Anything else to the internet is dropped, IPv4 and IPv6 alike.
    let err = bed
        .client
        .tcp_send(sock(Testbed::up_v4(), 443), 10, BLOCKED)
        .expect_err("HTTPS must be dropped while captive");
    assert!(err.starts_with("connect"), "{err}");
    assert!(
        !bed.client
            .tcp_connects(sock(Testbed::up_v6(), 443), BLOCKED),
        "IPv6 must be dropped while captive (no IPv6 bypass)"
    );
    assert!(
        bed.client
            .udp_query(sock(Testbed::up_v4(), 5353), BLOCKED)
            .is_err(),
        "UDP other than DNS must be dropped"
    );
    if ping_installed() {
        let ping = bed
            .client
            .run(&["ping", "-c", "1", "-W", "1", &Testbed::up_v4().to_string()]);
        assert!(
            !ping.status.success(),
            "ICMP to the internet must be dropped"
        );
    } else {
        println!("note: ping is not installed; the ICMP check is left out");
    }

    // DNS passes to the configured resolver only: port 53 elsewhere is dropped, UDP and TCP,
    // IPv4 and IPv6 (unbilled, it would be a free tunnel).
    assert!(
        bed.client
            .udp_query(sock(Testbed::up_extra_v4(), 53), OPEN)
            .is_ok(),
        "DNS to the configured resolver passes"
    );
    for server in [Testbed::up_v4(), Testbed::up_v6()] {
        assert!(
            bed.client.udp_query(sock(server, 53), BLOCKED).is_err(),
            "UDP 53 to {server}, not a configured resolver, must be dropped"
        );
    }
    assert!(
        !bed.client.tcp_connects(sock(Testbed::up_v4(), 53), BLOCKED),
        "TCP 53 to a host that is not a configured resolver must be dropped"
    );
    assert!(tcp53.events_so_far().is_empty());

    // Only the garden's own port: its host's ssh is dropped, its port 80 ends at the portal.
    assert!(
        !bed.client
            .tcp_connects(sock(Testbed::up_extra_v4(), 22), BLOCKED),
        "the garden host's ssh must be dropped"
    );
    assert!(garden_ssh.events_so_far().is_empty());

    // The walled garden is reachable, both ways for the connection.
    let sent = bed
        .client
        .tcp_send(sock(Testbed::up_extra_v4(), 443), 1000, OPEN)
        .expect("the walled garden is open");
    assert_eq!((sent.sent, sent.received), (1000, 100));
    match garden.next_event(OPEN) {
        Some(Event::Accepted { peer, received, .. }) => {
            assert_eq!(peer.ip(), Testbed::client_v4());
            assert_eq!(received, 1000);
        }
        other => panic!("garden listener: {other:?}"),
    }

    // Port 80 anywhere ends at the portal on the gateway (nothing listens on up's port 80).
    let sent = bed
        .client
        .tcp_send(sock(Testbed::up_v4(), 80), 18, OPEN)
        .expect("port 80 is redirected to the portal");
    assert_eq!(sent.received, 10, "the portal's answer");
    match portal.next_event(OPEN) {
        Some(Event::Accepted {
            peer,
            local,
            received,
            ..
        }) => {
            assert_eq!(peer.ip(), Testbed::client_v4());
            assert_eq!(local, sock(Testbed::gw_lan_v4(), PORTAL_PORT));
            assert_eq!(received, 18);
        }
        other => panic!("portal listener: {other:?}"),
    }
    let sent = bed
        .client
        .tcp_send(sock(Testbed::up_extra_v4(), 80), 18, OPEN)
        .expect("port 80 of the garden host is redirected to the portal");
    assert_eq!(sent.received, 10, "the portal's answer");
    assert!(
        garden_web.events_so_far().is_empty(),
        "the garden host's port 80 must not be reached"
    );
    assert!(
        https4.events_so_far().is_empty(),
        "nothing may have reached up's port 443"
    );
    assert!(
        fw.clients().expect("clients").is_empty(),
        "no one is allowed"
    );
}

#[test]
fn gateway_and_lan_are_closed_to_everything_else() {
    if !support::require_root() {
        return;
    }
    let bed = Testbed::new();
    let mut fw = firewall(&bed, config());
    fw.install().expect("install");
    let _gw_ssh = bed.gw.tcp_listen("[::]:2222".parse().expect("addr"), 0);
    let _portal = bed.gw.tcp_listen("[::]:8080".parse().expect("addr"), 0);
    let _gw_dns = bed.gw.udp_echo("0.0.0.0:53".parse().expect("addr"));
    let on_client = bed.client.tcp_listen("[::]:9000".parse().expect("addr"), 0);

    // On the gateway: the portal and DNS yes, any other port no.
    assert!(
        bed.client
            .tcp_connects(sock(Testbed::gw_lan_v4(), PORTAL_PORT), OPEN)
    );
    assert!(
        bed.client
            .tcp_connects(sock(Testbed::gw_lan_v6(), PORTAL_PORT), OPEN)
    );
    assert!(
        bed.client
            .udp_query(sock(Testbed::gw_lan_v4(), 53), OPEN)
            .is_ok()
    );
    assert!(
        !bed.client
            .tcp_connects(sock(Testbed::gw_lan_v4(), 2222), BLOCKED)
    );
    assert!(
        !bed.client
            .tcp_connects(sock(Testbed::gw_lan_v6(), 2222), BLOCKED)
    );
    // Traffic from the gateway's other side is not ours to filter.
    assert!(bed.up.tcp_connects(sock(Testbed::gw_wan_v4(), 2222), OPEN));

    // Nothing unsolicited into the LAN, captive or allowed.
    let into_lan = |bed: &Testbed| {
        bed.up
            .tcp_connects(sock(Testbed::client_v4(), 9000), BLOCKED)
            || bed
                .up
                .tcp_connects(sock(Testbed::client_v6(), 9000), BLOCKED)
    };
    assert!(!into_lan(&bed), "captive client reachable from outside");
    fw.allow(&client4(), Duration::from_secs(60))
        .expect("allow");
    fw.allow(&client6(), Duration::from_secs(60))
        .expect("allow");
    assert!(!into_lan(&bed), "allowed client reachable from outside");
    assert!(on_client.events_so_far().is_empty());
    for counters in fw.clients().expect("clients") {
        assert_eq!(
            (counters.down_bytes, counters.down_packets),
            (0, 0),
            "unsolicited traffic must not be billed: {counters:?}"
        );
    }
}

#[test]
fn allowed_client_passes_is_counted_and_revoked() {
    if !support::require_root() {
        return;
    }
    let bed = Testbed::new();
    let mut fw = firewall(&bed, config());
    fw.install().expect("install");
    const UP4: u64 = 200_000;
    const DOWN4: u64 = 300_000;
    const UP6: u64 = 120_000;
    const DOWN6: u64 = 50_000;
    let https4 = bed.up.tcp_listen(sock(Testbed::up_v4(), 443), DOWN4);
    let _https6 = bed.up.tcp_listen(sock(Testbed::up_v6(), 443), DOWN6);
    let http4 = bed.up.tcp_listen(sock(Testbed::up_v4(), 80), 5);
    assert!(
        !bed.client
            .tcp_connects(sock(Testbed::up_v4(), 443), BLOCKED)
    );

    let started = Instant::now();
    fw.allow(&client4(), Duration::from_secs(60))
        .expect("allow v4");
    fw.allow(&client6(), Duration::from_secs(60))
        .expect("allow v6");
    let sent = bed
        .client
        .tcp_send(sock(Testbed::up_v4(), 443), UP4, OPEN)
        .expect("allowed client reaches the internet");
    assert_eq!((sent.sent, sent.received), (UP4, DOWN4));
    match https4.next_event(OPEN) {
        Some(Event::Accepted { peer, received, .. }) => {
            assert_eq!(peer.ip(), Testbed::client_v4(), "no NAT in this test");
            assert_eq!(received, UP4);
        }
        other => panic!("listener: {other:?}"),
    }
    let sent6 = bed
        .client
        .tcp_send(sock(Testbed::up_v6(), 443), UP6, OPEN)
        .expect("allowed client reaches the internet over IPv6");
    assert_eq!((sent6.sent, sent6.received), (UP6, DOWN6));

    // The kernel counted exactly these two connections, at the IP level.
    let all = fw.clients().expect("clients");
    assert_eq!(all.len(), 2, "{all:?}");
    let v4 = counters_of(&mut fw, &client4()).expect("v4 counters");
    println!("after {UP4} up / {DOWN4} down over IPv4: {v4:?}");
    assert_ip_bytes("IPv4 upload", v4.up_bytes, v4.up_packets, UP4);
    assert_ip_bytes("IPv4 download", v4.down_bytes, v4.down_packets, DOWN4);
    let timeout_left = Duration::from_secs(60).saturating_sub(started.elapsed());
    assert!(
        v4.expires_in <= Duration::from_secs(60)
            && v4.expires_in + Duration::from_secs(2) >= timeout_left,
        "{v4:?}"
    );
    let v6 = counters_of(&mut fw, &client6()).expect("v6 counters");
    println!("after {UP6} up / {DOWN6} down over IPv6: {v6:?}");
    // IPv6 headers are 20 bytes longer than IPv4's.
    assert_ip_bytes(
        "IPv6 upload",
        v6.up_bytes - 20 * v6.up_packets,
        v6.up_packets,
        UP6,
    );
    assert_ip_bytes(
        "IPv6 download",
        v6.down_bytes - 20 * v6.down_packets,
        v6.down_packets,
        DOWN6,
    );

    // An allowed client's port 80 is not redirected.
    let sent = bed
        .client
        .tcp_send(sock(Testbed::up_v4(), 80), 7, OPEN)
        .expect("port 80 of an allowed client");
    assert_eq!(sent.received, 5);
    assert!(matches!(
        http4.next_event(OPEN),
        Some(Event::Accepted { received: 7, .. })
    ));

    // Revoked: blocked at once, gone from the listing; revoking again is fine.
    fw.revoke(&client4()).expect("revoke");
    assert!(
        !bed.client
            .tcp_connects(sock(Testbed::up_v4(), 443), BLOCKED)
    );
    assert_eq!(counters_of(&mut fw, &client4()), None);
    fw.revoke(&client4()).expect("revoking twice");
    assert!(
        bed.client.tcp_connects(sock(Testbed::up_v6(), 443), OPEN),
        "the IPv6 address stays allowed"
    );
    fw.revoke(&client6()).expect("revoke v6");
    assert!(fw.clients().expect("clients").is_empty());
}

#[test]
fn only_the_allowed_mac_passes_with_the_allowed_ip() {
    if !support::require_root() {
        return;
    }
    let bed = Testbed::new();
    let mut fw = firewall(&bed, config());
    fw.install().expect("install");
    let _https = bed.up.tcp_listen(sock(Testbed::up_v4(), 443), 0);
    fw.allow(&client4(), Duration::from_secs(60))
        .expect("allow");
    let target = sock(Testbed::up_v4(), 443);
    assert!(bed.client.tcp_connects(target, OPEN));

    let set_mac = |mac: &str| {
        bed.client.set_mac(Testbed::CLIENT_IF, mac);
        // So that only the firewall can make the difference, not a stale neighbour entry.
        bed.gw.ip(&["neigh", "flush", "dev", Testbed::GW_LAN_IF]);
    };
    set_mac("02:00:00:66:00:99");
    assert!(
        !bed.client.tcp_connects(target, BLOCKED),
        "another device must not pass by taking an allowed IP"
    );
    set_mac(Testbed::CLIENT_MAC);
    assert!(bed.client.tcp_connects(target, OPEN));
}

#[test]
fn kernel_timeout_closes_access_by_itself() {
    if !support::require_root() {
        return;
    }
    let bed = Testbed::new();
    let mut fw = firewall(&bed, config());
    fw.install().expect("install");
    let _https = bed.up.tcp_listen(sock(Testbed::up_v4(), 443), 0);
    let target = sock(Testbed::up_v4(), 443);

    let allowed_at = Instant::now();
    // 1.5 s is ceiled to 2 s.
    fw.allow(&client4(), Duration::from_millis(1_500))
        .expect("allow");
    assert!(bed.client.tcp_connects(target, OPEN));
    let listed = counters_of(&mut fw, &client4()).expect("listed");
    assert!(listed.expires_in <= Duration::from_secs(2), "{listed:?}");

    // No daemon involved from here: the kernel alone ends the access.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(allowed_at.elapsed()));
    assert!(
        !bed.client.tcp_connects(target, BLOCKED),
        "expired yet open"
    );
    assert_eq!(counters_of(&mut fw, &client4()), None);
}

#[test]
fn install_is_idempotent_keeps_clients_and_replaces_the_garden() {
    if !support::require_root() {
        return;
    }
    let bed = Testbed::new();
    let config = config();
    let mut fw = firewall(&bed, config.clone());
    fw.install().expect("install");
    let _https = bed.up.tcp_listen(sock(Testbed::up_v4(), 443), 1_000);
    let _garden = bed.up.tcp_listen(sock(Testbed::up_extra_v4(), 443), 0);
    fw.allow(&client4(), Duration::from_secs(60))
        .expect("allow");
    bed.client
        .tcp_send(sock(Testbed::up_v4(), 443), 5_000, OPEN)
        .expect("allowed");
    let before = counters_of(&mut fw, &client4()).expect("counters");
    let listing = |fw: &NetlinkFirewall| {
        bed.gw.run_ok(&[
            "nft",
            "list",
            "chain",
            "inet",
            &fw.config().table,
            "forward",
        ])
    };
    let rules_before = listing(&fw);

    // A restarted daemon installs again, twice even: same rules, same clients, same counts.
    fw.install().expect("install again");
    fw.install().expect("and again");
    assert!(fw.is_installed().expect("check"));
    assert_eq!(listing(&fw), rules_before, "rules duplicated or changed");
    let after = counters_of(&mut fw, &client4()).expect("client survived the reinstall");
    assert_eq!(
        (after.up_bytes, after.down_bytes),
        (before.up_bytes, before.down_bytes),
        "counters survive a reinstall"
    );
    assert!(bed.client.tcp_connects(sock(Testbed::up_v4(), 443), OPEN));

    // The garden is replaced, not added to.
    fw.revoke(&client4()).expect("revoke");
    let garden = sock(Testbed::up_extra_v4(), 443);
    assert!(bed.client.tcp_connects(garden, OPEN));
    let mut no_garden = config.clone();
    no_garden.garden.clear();
    firewall(&bed, no_garden)
        .install()
        .expect("install without garden");
    assert!(
        !bed.client.tcp_connects(garden, BLOCKED),
        "old garden still open"
    );
    let mut nested = config;
    nested.garden.push("10.77.0.130".parse().expect("host"));
    nested.garden.push("fd00:77::/64".parse().expect("v6 net"));
    firewall(&bed, nested)
        .install()
        .expect("install with nested garden");
    assert!(bed.client.tcp_connects(garden, OPEN));
}

#[test]
fn flushes_are_detected_and_repaired_and_uninstall_removes_the_table() {
    if !support::require_root() {
        return;
    }
    let bed = Testbed::new();
    let mut fw = firewall(&bed, config());
    let table = fw.config().table.clone();
    let _https = bed.up.tcp_listen(sock(Testbed::up_v4(), 443), 0);
    let target = sock(Testbed::up_v4(), 443);
    assert!(!fw.is_installed().expect("check"), "nothing installed yet");

    fw.install().expect("install");
    assert!(fw.is_installed().expect("check"));
    bed.gw.run_ok(&["nft", "flush", "ruleset"]);
    assert!(!fw.is_installed().expect("check after flush ruleset"));
    fw.install().expect("repair");
    assert!(fw.is_installed().expect("check"));
    assert!(!bed.client.tcp_connects(target, BLOCKED), "captive again");

    bed.gw.run_ok(&["nft", "flush", "table", "inet", &table]);
    assert!(
        !fw.is_installed().expect("check after flush table"),
        "empty chains are not installed"
    );
    fw.install().expect("repair");
    assert!(fw.is_installed().expect("check"));

    fw.uninstall().expect("uninstall");
    let tables = bed.gw.run_ok(&["nft", "list", "tables"]);
    assert!(!tables.contains(&table), "{tables}");
    assert!(!fw.is_installed().expect("check"));
    fw.uninstall().expect("uninstalling twice");
    assert!(no_table(fw.clients()), "clients without a table");
    // With our table gone, nothing of ours blocks the client any more.
    assert!(bed.client.tcp_connects(target, OPEN));
}

#[test]
fn nat_masquerades_on_the_wan_interface() {
    if !support::require_root() {
        return;
    }
    let bed = Testbed::new();
    let mut config = config();
    config.nat = true;
    let mut fw = firewall(&bed, config);
    fw.install().expect("install");
    // IPv6 likewise (NAT66 on the uplink's address): what the README promises a LAN on a
    // unique local prefix behind a single-address uplink.
    for (client, up, wan) in [
        (client4(), Testbed::up_v4(), Testbed::gw_wan_v4()),
        (client6(), Testbed::up_v6(), Testbed::gw_wan_v6()),
    ] {
        let https = bed.up.tcp_listen(sock(up, 443), 0);
        fw.allow(&client, Duration::from_secs(60)).expect("allow");
        bed.client
            .tcp_send(sock(up, 443), 10, OPEN)
            .expect("allowed");
        match https.next_event(OPEN) {
            Some(Event::Accepted { peer, .. }) => assert_eq!(peer.ip(), wan),
            other => panic!("listener on {up}: {other:?}"),
        }
        let counters = counters_of(&mut fw, &client).expect("counted before NAT");
        assert!(counters.up_bytes > 10, "{counters:?}");
    }
}

#[test]
fn bad_batches_are_refused_with_the_kernels_reason() {
    if !support::require_root() {
        return;
    }
    let bed = Testbed::new();
    let mut fw = firewall(&bed, config());
    // Allowing before the table exists: the kernel's errno says why, and the error names the
    // client.
    let err = fw
        .allow(&client4(), Duration::from_secs(5))
        .expect_err("no table yet");
    let message = err.to_string();
    assert!(message.contains("10.66.0.2"), "{message}");
    assert!(message.contains("No such file or directory"), "{message}");
    match &err {
        FirewallError::Netlink { errno, .. } => assert_eq!(*errno, libc::ENOENT),
        other => panic!("{other:?}"),
    }
}

#[test]
fn without_netbase_the_install_error_is_nfts_own_and_names_the_package() {
    if !support::require_root() {
        return;
    }
    let bed = Testbed::new();
    // A minimal image without netbase: nft (the real one) finds no /etc/protocols and no
    // /etc/services. Both are hidden in a mount namespace of nft's own.
    let mut command = bed.gw.command_prefix("unshare");
    command.extend(
        [
            "--mount",
            "sh",
            "-c",
            "mount --bind /dev/null /etc/protocols && mount --bind /dev/null /etc/services && exec nft \"$@\"",
            "nft",
        ]
        .map(std::ffi::OsString::from),
    );
    let fw = NftFirewall::with_command(config(), command);
    let err = fw.install().expect_err("nft cannot resolve protocol names");
    let message = err.to_string();
    let FirewallError::Refused { stderr, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(
        stderr.contains("Could not resolve protocol name"),
        "{stderr}"
    );
    assert!(
        message.starts_with(stderr.as_str()),
        "nft's own words come first: {message}"
    );
    assert!(
        message.ends_with("install the netbase package"),
        "the hint names the cause: {message}"
    );
    assert!(!message.contains("CAP_NET_ADMIN"), "{message}");
}

// ---- session quotas ----

/// How long a transfer waits for a stalled direction before it counts as stopped.
const STALL: Duration = Duration::from_millis(1_500);
const MB: u64 = 1_000_000;

/// What the client elements counted for `clients` (upload + download): the IP bytes the
/// forward chain let through, after the quota rules.
fn forwarded(fw: &mut NetlinkFirewall, clients: &[Client]) -> u64 {
    clients
        .iter()
        .filter_map(|c| counters_of(fw, c))
        .map(|c| c.up_bytes + c.down_bytes)
        .sum()
}

fn quota_of(fw: &mut NetlinkFirewall, session: &str) -> Option<SessionQuota> {
    fw.list_quotas().expect("list_quotas").remove(session)
}

/// Moves the bed's only client device to another MAC and IPv4 address: a second device.
fn become_device(bed: &Testbed, mac: &str, old_ip: &str, new_ip: &str) {
    bed.client.set_mac(Testbed::CLIENT_IF, mac);
    bed.client.ip(&[
        "addr",
        "del",
        &format!("{old_ip}/24"),
        "dev",
        Testbed::CLIENT_IF,
    ]);
    bed.client.ip(&[
        "addr",
        "add",
        &format!("{new_ip}/24"),
        "dev",
        Testbed::CLIENT_IF,
    ]);
    bed.client.add_route("default", "10.66.0.1");
    bed.gw.ip(&["neigh", "flush", "dev", Testbed::GW_LAN_IF]);
}

#[test]
fn session_quota_stops_a_full_speed_download_in_the_kernel() {
    if !support::require_root() {
        return;
    }
    let bed = Testbed::new();
    let config = config();
    let mut fw = firewall(&bed, config.clone());
    fw.install().expect("install");
    let _sink = bed
        .up
        .tcp_sink(sock(Testbed::up_v4(), 443), 200 * MB, STALL);
    fw.allow(&client4(), Duration::from_secs(60))
        .expect("allow");
    fw.set_quota("sess-1", &[client4()], MB, 0)
        .expect("set_quota");
    assert_eq!(
        quota_of(&mut fw, "sess-1"),
        Some(SessionQuota {
            limit_bytes: MB,
            used_bytes: 0
        })
    );
    assert!(fw.is_installed().expect("check"), "quota rules are ours");

    // No daemon from here on: nothing reads counters while the kernel enforces the quota.
    drop(fw);
    let started = Instant::now();
    let download = bed
        .client
        .tcp_transfer(sock(Testbed::up_v4(), 443), 0, OPEN, STALL)
        .expect("connects");
    let took = started.elapsed().saturating_sub(STALL);

    let mut fw = firewall(&bed, config);
    let counted = counters_of(&mut fw, &client4()).expect("counters");
    let through = counted.up_bytes + counted.down_bytes;
    let quota = quota_of(&mut fw, "sess-1").expect("quota");
    println!(
        "1 MB quota, 200 MB offered at veth speed: client received {} payload bytes in ~{took:?} \
         (eof: {}); forwarded {} IP bytes ({} up + {} down, {} packets down); overshoot past \
         the quota: {} bytes; quota listed {quota:?}",
        download.received,
        download.eof,
        through,
        counted.up_bytes,
        counted.down_bytes,
        counted.down_packets,
        through as i64 - MB as i64,
    );
    assert!(!download.eof, "the download must have been stopped");
    assert!(
        through <= MB,
        "forwarded {through} IP bytes, past the {MB}-byte quota"
    );
    assert!(
        download.received <= MB && download.received >= MB / 2,
        "received {} payload bytes",
        download.received
    );
    assert_eq!(
        quota.used_bytes, MB,
        "used up (nft lists at most the limit)"
    );
    assert!(
        !bed.client
            .tcp_connects(sock(Testbed::up_v4(), 443), BLOCKED),
        "a used-up session cannot open new connections"
    );

    // A new quota (more bytes) in one batch, started at what the session has used (as the
    // daemon sets it): 2 MB more flow, and the kernel's quota holds the session's total.
    fw.set_quota("sess-1", &[client4()], 3 * MB, MB)
        .expect("replace the quota");
    assert_eq!(
        quota_of(&mut fw, "sess-1"),
        Some(SessionQuota {
            limit_bytes: 3 * MB,
            used_bytes: MB
        })
    );
    let before = forwarded(&mut fw, &[client4()]);
    let again = bed
        .client
        .tcp_transfer(sock(Testbed::up_v4(), 443), 0, OPEN, STALL)
        .expect("connects after the new quota");
    let through = forwarded(&mut fw, &[client4()]) - before;
    println!(
        "3 MB quota with 1 MB used: received {} payload bytes, forwarded {through} IP bytes, overshoot {}",
        again.received,
        through as i64 - 2 * MB as i64
    );
    assert!(!again.eof);
    assert!(
        through <= 2 * MB && again.received > MB,
        "{again:?} {through}"
    );
    assert_eq!(
        quota_of(&mut fw, "sess-1").map(|q| q.used_bytes),
        Some(3 * MB),
        "the session's total, used up"
    );

    // Lifting the quota: the client is back to its plain allowance.
    fw.clear_quota("sess-1").expect("clear_quota");
    fw.clear_quota("sess-1").expect("clearing twice");
    assert_eq!(quota_of(&mut fw, "sess-1"), None);
    let free = bed.client.tcp_send(sock(Testbed::up_v4(), 443), 0, OPEN);
    // The sink sends 200 MB; with no quota it all arrives.
    assert_eq!(free.map(|s| s.received), Ok(200 * MB));
}

#[test]
fn session_quota_counts_upload_and_download_of_all_its_clients() {
    if !support::require_root() {
        return;
    }
    let bed = Testbed::new();
    let mut fw = firewall(&bed, config());
    fw.install().expect("install");
    const MAC_B: &str = "02:00:00:66:00:03";
    let device_a = client4();
    let device_a6 = client6();
    let device_b = Client {
        mac: MAC_B.parse().expect("mac"),
        ip: "10.66.0.3".parse().expect("ip"),
    };
    let all = [device_a, device_a6, device_b];
    for client in &all {
        fw.allow(client, Duration::from_secs(60)).expect("allow");
    }
    const QUOTA: u64 = 2 * MB;
    fw.set_quota("shared", &all, QUOTA, 0).expect("set_quota");
    let listen = |reply: u64| {
        (
            bed.up.tcp_sink(sock(Testbed::up_v4(), 443), reply, STALL),
            bed.up.tcp_sink(sock(Testbed::up_v6(), 443), reply, STALL),
        )
    };

    // Upload counts.
    let sinks = listen(0);
    let up = bed
        .client
        .tcp_transfer(sock(Testbed::up_v4(), 443), 400_000, OPEN, STALL)
        .expect("upload");
    assert_eq!((up.sent, up.eof), (400_000, true), "{up:?}");
    let used_up = quota_of(&mut fw, "shared").expect("quota").used_bytes;
    println!("after a 400 kB upload: quota used {used_up}");
    assert!((400_000..460_000).contains(&used_up), "{used_up}");
    drop(sinks);

    // Download counts, into the same quota, and IPv6 too.
    let sinks = listen(300_000);
    let down = bed
        .client
        .tcp_transfer(sock(Testbed::up_v6(), 443), 0, OPEN, STALL)
        .expect("download over IPv6");
    assert_eq!((down.received, down.eof), (300_000, true), "{down:?}");
    let used_down = quota_of(&mut fw, "shared").expect("quota").used_bytes;
    println!("after a 300 kB IPv6 download: quota used {used_down}");
    assert!(
        (used_up + 300_000..used_up + 360_000).contains(&used_down),
        "{used_down}"
    );
    drop(sinks);

    // Device B (another MAC and IP) uses up the rest, uploading: the kernel stops it.
    become_device(&bed, MAC_B, "10.66.0.2", "10.66.0.3");
    let sink = bed.up.tcp_sink(sock(Testbed::up_v4(), 443), 0, STALL);
    let upload = bed
        .client
        .tcp_transfer(sock(Testbed::up_v4(), 443), 100 * MB, OPEN, STALL)
        .expect("device B connects");
    let served = match sink.next_event(OPEN + STALL * 2) {
        Some(Event::Transferred { received, eof, .. }) => {
            assert!(!eof, "the upload must have been stopped");
            received
        }
        other => panic!("sink: {other:?}"),
    };
    let through = forwarded(&mut fw, &all);
    println!(
        "device B uploading 100 MB into the rest of a {QUOTA}-byte shared quota: the socket took \
         {} bytes, up received {served}; the session's clients forwarded {through} IP bytes in \
         all, overshoot {}",
        upload.sent,
        through as i64 - QUOTA as i64
    );
    assert!(through <= QUOTA, "{through} > {QUOTA}");
    assert!(served < QUOTA - used_down, "{served}");
    assert_eq!(
        quota_of(&mut fw, "shared").map(|q| q.used_bytes),
        Some(QUOTA)
    );
    drop(sink);

    // The quota is the session's: device A is stopped as well, IPv4 and IPv6.
    let _sinks = listen(0);
    assert!(
        !bed.client
            .tcp_connects(sock(Testbed::up_v4(), 443), BLOCKED),
        "device B is stopped"
    );
    become_device(&bed, Testbed::CLIENT_MAC, "10.66.0.3", "10.66.0.2");
    assert!(
        !bed.client
            .tcp_connects(sock(Testbed::up_v4(), 443), BLOCKED),
        "device A shares the used-up quota"
    );
    assert!(
        !bed.client
            .tcp_connects(sock(Testbed::up_v6(), 443), BLOCKED),
        "and so does its IPv6 address"
    );

    // Moving device A to a session of its own frees it; B stays stopped.
    fw.set_quota("own", &[device_a], MB, 0).expect("move A");
    assert!(
        bed.client.tcp_connects(sock(Testbed::up_v4(), 443), OPEN),
        "device A on its own quota"
    );
    // A reinstall keeps quotas and their maps.
    fw.install().expect("reinstall");
    assert!(fw.is_installed().expect("check"));
    assert!(quota_of(&mut fw, "own").is_some_and(|q| q.used_bytes > 0));
    assert!(
        !bed.client
            .tcp_connects(sock(Testbed::up_v6(), 443), BLOCKED),
        "A's IPv6 address is still in the used-up session"
    );
    fw.clear_quota("shared").expect("clear");
    assert!(
        bed.client.tcp_connects(sock(Testbed::up_v6(), 443), OPEN),
        "cleared: IPv6 of A flows again"
    );
    fw.clear_quota("own").expect("clear");
    let listed = bed
        .gw
        .run_ok(&["nft", "list", "table", "inet", &fw.config().table]);
    assert!(!listed.contains("quota q_"), "{listed}");
}

#[test]
fn session_quota_calls_are_checked() {
    if !support::require_root() {
        return;
    }
    let bed = Testbed::new();
    let mut fw = firewall(&bed, config());
    assert!(no_table(fw.set_quota("s", &[client4()], MB, 0)));
    fw.install().expect("install");
    assert!(matches!(
        fw.set_quota("not a session id", &[client4()], MB, 0),
        Err(FirewallError::InvalidConfig {
            field: "session",
            ..
        })
    ));
    assert_eq!(quota_of(&mut fw, "s"), None);
    // Zero bytes left: nothing passes.
    let _https = bed.up.tcp_listen(sock(Testbed::up_v4(), 443), 0);
    fw.allow(&client4(), Duration::from_secs(60))
        .expect("allow");
    fw.set_quota("s", &[client4()], 0, 0).expect("zero quota");
    assert!(
        !bed.client
            .tcp_connects(sock(Testbed::up_v4(), 443), BLOCKED)
    );
    fw.set_quota("s", &[client4()], u64::MAX, 0)
        .expect("huge quota");
    assert_eq!(
        quota_of(&mut fw, "s").map(|q| q.limit_bytes),
        Some(i64::MAX as u64)
    );
    assert!(bed.client.tcp_connects(sock(Testbed::up_v4(), 443), OPEN));
}

/// A plan's changes in one batch: a client moved to another session's quota and the first
/// session cleared in the same batch leave exactly what the same changes one by one would
/// (each quota change's deletions follow the maps as the changes before it left them); a
/// batch with a bad change applies none of them.
#[test]
fn a_batch_of_changes_is_applied_whole_or_not_at_all() {
    if !support::require_root() {
        return;
    }
    let bed = Testbed::new();
    let mut fw = firewall(&bed, config());
    fw.install().expect("install");
    let third = Client {
        mac: "02:00:00:66:00:03".parse().expect("mac"),
        ip: "10.66.0.3".parse().expect("ip"),
    };
    let allow = |client: Client| Change::Allow {
        client,
        timeout: Duration::from_secs(60),
    };
    let quota = |session: &str, clients: &[Client]| Change::SetQuota {
        session: session.to_owned(),
        clients: clients.to_vec(),
        limit_bytes: MB,
        used_bytes: 0,
    };
    fw.apply(&[
        allow(client4()),
        allow(third),
        quota("s1", &[client4(), third]),
        quota("s2", &[third]),
        Change::ClearQuota("s1".to_owned()),
    ])
    .expect("one batch");
    let clients: Vec<Client> = fw
        .clients()
        .expect("clients")
        .iter()
        .map(|c| c.client)
        .collect();
    assert_eq!(clients, [client4(), third]);
    let quotas = fw.list_quotas().expect("quotas");
    assert_eq!(quotas.keys().collect::<Vec<_>>(), ["s2"]);
    let table = fw.config().table.clone();
    let down4 = bed
        .gw
        .run_ok(&["nft", "list", "map", "inet", &table, "quota4_down"]);
    assert!(
        down4.contains("10.66.0.3") && down4.contains("q_s2") && !down4.contains("q_s1"),
        "{down4}"
    );
    assert!(!down4.contains("10.66.0.2"), "cleared with s1: {down4}");

    let refused = fw.apply(&[
        Change::Revoke(client4()),
        quota("not a session id", &[third]),
    ]);
    assert!(refused.is_err(), "{refused:?}");
    assert!(
        counters_of(&mut fw, &client4()).is_some(),
        "the revoke in the refused batch was not applied"
    );
    let _https = bed.up.tcp_listen(sock(Testbed::up_v4(), 443), 20_000);
    assert!(bed.client.tcp_connects(sock(Testbed::up_v4(), 443), OPEN));
}

// ---- the netlink firewall, cross-checked with nft's own listings ----

/// `nft -j list KIND inet TABLE NAME` in the bed's gateway, parsed.
fn nft_list(bed: &Testbed, what: &[&str]) -> serde_json::Value {
    let mut args = vec!["nft", "-j", "list"];
    args.extend(what);
    serde_json::from_str(&bed.gw.run_ok(&args)).expect("nft -j output")
}

/// The elements of the one set or map in an `nft -j list set|map` listing.
fn nft_elements(listing: &serde_json::Value) -> Vec<serde_json::Value> {
    listing["nftables"]
        .as_array()
        .expect("nftables array")
        .iter()
        .find_map(|o| o.get("set").or_else(|| o.get("map")))
        .and_then(|s| s.get("elem"))
        .and_then(serde_json::Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// A client-set element as nft lists it: (key, timeout s, expires s, bytes, packets).
fn nft_client_element(element: &serde_json::Value) -> (String, u64, u64, u64, u64) {
    let elem = &element["elem"];
    let key = match &elem["val"] {
        serde_json::Value::String(ip) => ip.clone(),
        concat => {
            let parts = concat["concat"].as_array().expect("concat");
            format!(
                "{}.{}",
                parts[0].as_str().expect("mac"),
                parts[1].as_str().expect("ip")
            )
        }
    };
    let number = |v: &serde_json::Value| v.as_u64().expect("a number");
    (
        key,
        number(&elem["timeout"]),
        number(&elem["expires"]),
        number(&elem["counter"]["bytes"]),
        number(&elem["counter"]["packets"]),
    )
}

#[test]
fn netlink_changes_are_exactly_what_nft_lists() {
    if !support::require_root() {
        return;
    }
    let bed = Testbed::new();
    let config = config();
    let table = config.table.clone();
    let mut fw = firewall(&bed, config);
    fw.install().expect("install");
    let third = Client {
        mac: "02:00:00:66:00:03".parse().expect("mac"),
        ip: "10.66.0.3".parse().expect("ip"),
    };
    fw.allow(&client4(), Duration::from_secs(60))
        .expect("allow v4");
    fw.allow(&client6(), Duration::from_millis(119_001))
        .expect("allow v6");
    fw.allow(&third, Duration::from_secs(30))
        .expect("allow third");
    let _https = bed.up.tcp_listen(sock(Testbed::up_v4(), 443), 20_000);
    bed.client
        .tcp_send(sock(Testbed::up_v4(), 443), 50_000, OPEN)
        .expect("allowed");

    // The sets hold exactly the elements asked for, with their timeouts, and the counters
    // nft lists are the ones NetlinkFirewall reads.
    let listed = |set: &str| -> Vec<(String, u64, u64, u64, u64)> {
        let mut all: Vec<_> = nft_elements(&nft_list(&bed, &["set", "inet", &table, set]))
            .iter()
            .map(nft_client_element)
            .collect();
        all.sort();
        all
    };
    let ours = fw.clients().expect("netlink clients");
    let up4 = listed("clients4_up");
    let down4 = listed("clients4_down");
    let up6 = listed("clients6_up");
    let down6 = listed("clients6_down");
    println!("nft lists {up4:?} {down4:?} {up6:?} {down6:?}\nnetlink reads {ours:?}");
    let keys = |l: &[(String, u64, u64, u64, u64)]| -> Vec<(String, u64)> {
        l.iter().map(|e| (e.0.clone(), e.1)).collect()
    };
    assert_eq!(
        keys(&up4),
        [
            (format!("{}.10.66.0.2", Testbed::CLIENT_MAC), 60),
            ("02:00:00:66:00:03.10.66.0.3".to_owned(), 30)
        ]
    );
    assert_eq!(
        keys(&down4),
        [("10.66.0.2".to_owned(), 60), ("10.66.0.3".to_owned(), 30)]
    );
    assert_eq!(
        keys(&up6),
        [(
            format!("{}.{}", Testbed::CLIENT_MAC, Testbed::client_v6()),
            120
        )]
    );
    assert_eq!(keys(&down6), [(Testbed::client_v6().to_string(), 120)]);
    assert_eq!(ours.len(), 3, "{ours:?}");
    for counters in &ours {
        let key = format!("{}.{}", counters.client.mac, counters.client.ip);
        let up = up4
            .iter()
            .chain(&up6)
            .find(|e| e.0 == key)
            .expect("listed up");
        let down = down4
            .iter()
            .chain(&down6)
            .find(|e| e.0 == counters.client.ip.to_string())
            .expect("listed down");
        assert_eq!(
            (counters.up_bytes, counters.up_packets),
            (up.3, up.4),
            "{key}"
        );
        assert_eq!(
            (counters.down_bytes, counters.down_packets),
            (down.3, down.4),
            "{key}"
        );
        let expires = counters.expires_in.as_secs();
        assert!(
            up.2.abs_diff(expires) <= 1,
            "{key}: {expires} s, nft {}",
            up.2
        );
    }
    let v4 = ours.iter().find(|c| c.client == client4()).expect("v4");
    assert!(v4.up_bytes > 50_000 && v4.down_bytes > 20_000, "{v4:?}");
    // And nft's listings, joined per client (each upload element with the download element
    // of its IP), are exactly NetlinkFirewall's clients.
    let mut theirs: Vec<_> = up4
        .iter()
        .chain(&up6)
        .map(|up| {
            let (mac, ip) = up.0.split_once('.').expect("MAC . IP");
            let client = Client {
                mac: mac.parse().expect("listed MAC"),
                ip: ip.parse().expect("listed IP"),
            };
            let (down_bytes, down_packets) = down4
                .iter()
                .chain(&down6)
                .find(|down| down.0 == ip)
                .map_or((0, 0), |down| (down.3, down.4));
            (client, up.3, up.4, down_bytes, down_packets)
        })
        .collect();
    theirs.sort();
    let counts: Vec<_> = ours
        .iter()
        .map(|c| {
            (
                c.client,
                c.up_bytes,
                c.up_packets,
                c.down_bytes,
                c.down_packets,
            )
        })
        .collect();
    assert_eq!(counts, theirs);

    // Allowing again replaces the elements: counters start at zero, the new timeout holds.
    fw.allow(&client4(), Duration::from_secs(90))
        .expect("allow again");
    let again = listed("clients4_up");
    let replaced = again
        .iter()
        .find(|e| e.0.ends_with(".10.66.0.2"))
        .expect("listed");
    assert_eq!(
        (replaced.1, replaced.3, replaced.4),
        (90, 0, 0),
        "{replaced:?}"
    );
    assert!(
        listed("clients4_down")
            .iter()
            .any(|e| e.0 == "10.66.0.2" && e.3 == 0)
    );

    // Quotas: the objects and the map elements nft lists are the ones asked for, a
    // session's quota starting at what it has used.
    fw.set_quota("s1", &[client4(), client6()], 5 * MB, 2 * MB)
        .expect("s1");
    fw.set_quota("s2", &[third], MB, 0).expect("s2");
    let map = |name: &str| -> Vec<String> {
        let mut all: Vec<String> = nft_elements(&nft_list(&bed, &["map", "inet", &table, name]))
            .iter()
            .map(|e| {
                let [key, quota] = e.as_array().expect("pair").as_slice() else {
                    panic!("{e}");
                };
                let key = match key {
                    serde_json::Value::String(ip) => ip.clone(),
                    concat => {
                        let parts = concat["concat"].as_array().expect("concat");
                        format!(
                            "{}.{}",
                            parts[0].as_str().expect("mac"),
                            parts[1].as_str().expect("ip")
                        )
                    }
                };
                format!("{key}:{}", quota.as_str().expect("quota name"))
            })
            .collect();
        all.sort();
        all
    };
    assert_eq!(
        map("quota4_up"),
        [
            format!("{}.10.66.0.2:q_s1", Testbed::CLIENT_MAC),
            "02:00:00:66:00:03.10.66.0.3:q_s2".to_owned()
        ]
    );
    assert_eq!(map("quota4_down"), ["10.66.0.2:q_s1", "10.66.0.3:q_s2"]);
    assert_eq!(
        map("quota6_up"),
        [format!(
            "{}.{}:q_s1",
            Testbed::CLIENT_MAC,
            Testbed::client_v6()
        )]
    );
    assert_eq!(
        map("quota6_down"),
        [format!("{}:q_s1", Testbed::client_v6())]
    );
    let nft_quotas = || -> Vec<(String, u64, u64, bool)> {
        let quotas = nft_list(&bed, &["quotas", "table", "inet", &table]);
        let mut all: Vec<_> = quotas["nftables"]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|o| o.get("quota"))
            .map(|q| {
                (
                    q["name"].as_str().expect("name").to_owned(),
                    q["bytes"].as_u64().expect("bytes"),
                    q["used"].as_u64().expect("used"),
                    q["inv"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        all.sort();
        all
    };
    assert_eq!(
        nft_quotas(),
        [
            ("q_s1".to_owned(), 5 * MB, 2 * MB, true),
            ("q_s2".to_owned(), MB, 0, true)
        ]
    );
    bed.client
        .tcp_send(sock(Testbed::up_v4(), 443), 10_000, OPEN)
        .expect("allowed");
    let ours = fw.list_quotas().expect("netlink quotas");
    assert!(ours["s1"].used_bytes > 2 * MB + 10_000, "{ours:?}");
    // What nft lists, by session, is what NetlinkFirewall reads.
    let theirs: BTreeMap<String, SessionQuota> = nft_quotas()
        .into_iter()
        .map(|(name, limit_bytes, used_bytes, _)| {
            let session = name.strip_prefix("q_").expect("a session quota");
            (
                session.to_owned(),
                SessionQuota {
                    limit_bytes,
                    used_bytes,
                },
            )
        })
        .collect();
    assert_eq!(ours, theirs);

    // Moving a client and clearing a session leave exactly what is asked.
    fw.set_quota("s2", &[third, client4()], MB, 0)
        .expect("move v4 to s2");
    assert_eq!(
        map("quota4_down"),
        ["10.66.0.2:q_s2", "10.66.0.3:q_s2"],
        "v4 moved, one element per key"
    );
    fw.clear_quota("s2").expect("clear s2");
    assert_eq!(map("quota4_up"), Vec::<String>::new());
    assert_eq!(
        map("quota6_down"),
        [format!("{}:q_s1", Testbed::client_v6())]
    );
    assert_eq!(fw.list_quotas().expect("quotas").len(), 1);
    fw.revoke(&third).expect("revoke");
    assert_eq!(keys(&listed("clients4_up")).len(), 1);
    assert!(fw.is_installed().expect("check"));
    // A rule of ours replaced by another one with the same count is noticed.
    bed.gw.run_ok(&[
        "nft",
        "delete",
        "rule",
        "inet",
        &table,
        "input",
        "handle",
        &input_rule_handle(&bed, &table),
    ]);
    bed.gw
        .run_ok(&["nft", "add", "rule", "inet", &table, "input", "accept"]);
    assert!(
        !fw.is_installed().expect("check"),
        "a stranger's rule in our chain"
    );
    fw.install().expect("repair");
    assert!(fw.is_installed().expect("check"));
}

/// The handle of the first rule of our input chain.
fn input_rule_handle(bed: &Testbed, table: &str) -> String {
    let text = bed
        .gw
        .run_ok(&["nft", "-j", "-a", "list", "chain", "inet", table, "input"]);
    let listing: serde_json::Value = serde_json::from_str(&text).expect("nft -j output");
    listing["nftables"]
        .as_array()
        .expect("array")
        .iter()
        .find_map(|o| o.get("rule"))
        .and_then(|r| r["handle"].as_u64())
        .expect("a rule with a handle")
        .to_string()
}

/// A program prefix that counts its runs in `count` and runs the real nft in `ns`.
fn counting_nft(dir: &std::path::Path, ns: &str) -> (Vec<std::ffi::OsString>, std::path::PathBuf) {
    let count = dir.join("nft-runs");
    let script = dir.join("nft");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$*\" >> {count:?}\nexec ip netns exec {ns} nft \"$@\"\n"),
    )
    .expect("wrapper");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    (vec![script.into_os_string()], count)
}

fn runs(count: &std::path::Path) -> usize {
    std::fs::read_to_string(count).map_or(0, |text| text.lines().count())
}

/// The firewall calls of one login (allow, then the session's quota), of one daemon tick
/// (counters, quotas, the install check) and of one logout, counted in `nft` runs: none;
/// the install and the uninstall one each.
#[test]
fn netlink_runs_no_nft_per_login_or_per_tick() {
    if !support::require_root() {
        return;
    }
    let bed = Testbed::new();
    let dir = tempfile::tempdir().expect("dir");
    let (command, count) = counting_nft(dir.path(), bed.gw.name());
    let mut fw = NetlinkFirewall::with_command(config(), command);
    bed.gw.in_thread(|| fw.open()).expect("socket");
    fw.install().expect("install");
    let install = runs(&count);
    fw.allow(&client4(), Duration::from_secs(60))
        .expect("allow");
    fw.set_quota("s", &[client4()], MB, 0).expect("quota");
    let login = runs(&count) - install;
    fw.clients().expect("clients");
    fw.list_quotas().expect("quotas");
    assert!(fw.is_installed().expect("check"));
    let tick = runs(&count) - install - login;
    fw.revoke(&client4()).expect("revoke");
    fw.clear_quota("s").expect("clear");
    let logout = runs(&count) - install - login - tick;
    fw.uninstall().expect("uninstall");
    let uninstall = runs(&count) - install - login - tick - logout;
    println!(
        "nft processes: install {install}, login {login}, tick {tick}, logout {logout}, uninstall {uninstall}"
    );
    assert_eq!(
        (install, login, tick, logout, uninstall),
        (1, 0, 0, 0, 1),
        "the wrapper counts nft's runs: one to install, one to uninstall, none between"
    );
}

/// The capture meter judges each frame by the clients allowed when the kernel received it,
/// not when its thread got to it (on a loaded Pi, frames wait in its socket): frames that
/// arrived before the kernel's change and are read after it count by the list before,
/// both when a client is let in and when it is cut off.
#[test]
fn the_capture_judges_each_frame_by_the_clients_allowed_when_it_arrived() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::SystemTime;

    use edgeshare_gateway::capture::{Capture, CaptureSettings};
    if !support::require_root() {
        return;
    }
    let bed = Testbed::new();
    let (reports_tx, reports) = std::sync::mpsc::channel();
    // While set, the capture thread is held in its report: frames queue in its socket.
    let hold = Arc::new(AtomicBool::new(false));
    let held = Arc::clone(&hold);
    let capture = bed
        .gw
        .in_thread(|| {
            Capture::start(
                CaptureSettings {
                    interface: Testbed::GW_LAN_IF.to_owned(),
                    buffer_bytes: 1 << 20,
                    local: vec![Testbed::gw_lan_v4(), Testbed::gw_lan_v6()],
                    max_flows: 64,
                    max_clients: 16,
                    flow_idle: Duration::from_secs(60),
                    report_every: Duration::from_millis(100),
                },
                move |report| {
                    drop(reports_tx.send(report));
                    while held.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                },
            )
        })
        .expect("the capture starts in the gateway's namespace");
    // The client's upload bytes the capture counted in the reports of the next `wait`.
    let counted = |wait: Duration| -> u64 {
        let until = Instant::now() + wait;
        let mut up = 0;
        while let Ok(report) = reports.recv_timeout(until.saturating_duration_since(Instant::now()))
        {
            up += report
                .batch
                .clients
                .iter()
                .filter(|(client, _)| *client == client4())
                .map(|(_, tally)| tally.up_bytes)
                .sum::<u64>();
        }
        up
    };
    let send = || {
        let (sent, _) = bed.client.udp_scatter(&[sock(Testbed::up_v4(), 9); 4]);
        assert_eq!(sent, 4, "the client sends its datagrams");
    };
    // Well within `capture::follow::LATE`, and long enough for a loaded machine's probes.
    let ahead = Duration::from_secs(2);

    for (before, after) in [(vec![], vec![client4()]), (vec![client4()], vec![])] {
        capture.set_clients(before.clone(), SystemTime::now());
        counted(Duration::from_millis(300));
        hold.store(true, Ordering::Relaxed);
        // Held by its next report.
        counted(Duration::from_millis(300));
        let change = Instant::now() + ahead;
        capture.set_clients(after.clone(), SystemTime::now() + ahead);
        send();
        assert!(
            Instant::now() + Duration::from_millis(500) < change,
            "the datagrams were sent well before the change (the machine is very slow)"
        );
        // Read only after the change: they still count by the list before it.
        std::thread::sleep(change.saturating_duration_since(Instant::now()) + ahead / 4);
        hold.store(false, Ordering::Relaxed);
        let early = counted(Duration::from_millis(500));
        send();
        let late = counted(Duration::from_millis(500));
        println!(
            "{} then {} clients allowed from 2 s on, the frames before read after it: {early} \
             bytes counted before, {late} after",
            before.len(),
            after.len()
        );
        assert_eq!(
            (early > 0, late > 0),
            (!before.is_empty(), !after.is_empty()),
            "each frame is judged by the list of its arrival time"
        );
    }
    capture.finish();
}
