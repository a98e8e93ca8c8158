//! Unit tests of the firewall module: batches, listings, CIDRs, the in-memory firewall.
//! (The real kernel is exercised by `tests/firewall_netns.rs`.)

use std::net::IpAddr;
use std::time::Duration;

use serde_json::{Value, json};

use super::cidr::minimal_cover;
use super::listing::{self, Element};
use super::rules::{self, CHAINS, QuotaElement, QuotaKey};
use super::*;
use crate::net::{Client, Mac};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

fn mac(text: &str) -> Mac {
    text.parse().expect("test MAC")
}

fn cidr(text: &str) -> Cidr {
    text.parse().expect("test CIDR")
}

fn garden(text: &str) -> GardenEntry {
    text.parse().expect("test garden entry")
}

#[test]
fn garden_entries_name_one_tcp_port_443_unless_given() {
    for (text, host, port) in [
        ("192.0.2.7", "192.0.2.7", 443),
        ("192.0.2.0/24:8443", "192.0.2.0/24", 8443),
        ("pay.example.com", "pay.example.com", 443),
        ("pay.example.com:80", "pay.example.com", 80),
        ("2001:db8::7", "2001:db8::7", 443),
        ("[2001:db8::7]", "2001:db8::7", 443),
        ("[2001:db8::/32]:8443", "2001:db8::/32", 8443),
    ] {
        assert_eq!(split_garden_port(text).unwrap(), (host, port), "{text}");
    }
    for bad in [
        "host:",
        "host:0",
        "host:+80",
        "host:70000",
        "[2001:db8::7",
        "[::1]8443",
    ] {
        assert!(
            matches!(split_garden_port(bad), Err(BadGardenEntry::Port(_))),
            "{bad}"
        );
    }
    assert_eq!(garden("192.0.2.7:8443").to_string(), "192.0.2.7/32:8443");
    assert_eq!(garden("2001:db8::7").to_string(), "[2001:db8::7/128]:443");
    assert!(matches!(
        "10.0.0.1/8".parse::<GardenEntry>(),
        Err(BadGardenEntry::Net(_))
    ));
}

fn client4() -> Client {
    device("02:00:00:00:00:02", "10.0.0.2")
}

fn client6() -> Client {
    device("02:00:00:00:00:06", "fd00:66::2")
}

fn config() -> FirewallConfig {
    FirewallConfig {
        table: "es_test".to_owned(),
        lan: "lan0".to_owned(),
        wan: Some("wan0".to_owned()),
        nat: true,
        portal_port: 8080,
        garden: vec![
            garden("192.0.2.0/24"),
            garden("192.0.2.7"),
            garden("198.51.100.9"),
            garden("192.0.2.7:8443"),
            garden("[2001:db8::/32]"),
        ],
        dns: vec![ip("192.0.2.53"), ip("2001:db8::53"), ip("192.0.2.53")],
    }
}

/// The commands of a batch, without the leading metainfo object.
fn commands(batch: &Value) -> &[Value] {
    let all = batch["nftables"].as_array().expect("nftables array");
    assert_eq!(all[0]["metainfo"]["json_schema_version"], 1);
    &all[1..]
}

/// (verb, object kind, object) of each command.
fn verbs(batch: &Value) -> Vec<(&str, &str, &Value)> {
    commands(batch)
        .iter()
        .map(|command| {
            let (verb, inner) = command
                .as_object()
                .expect("command")
                .iter()
                .next()
                .expect("verb");
            let (kind, object) = inner
                .as_object()
                .expect("object")
                .iter()
                .next()
                .expect("kind");
            (verb.as_str(), kind.as_str(), object)
        })
        .collect()
}

/// A client by its MAC and IP as text.
fn device(mac_text: &str, ip_text: &str) -> Client {
    Client {
        mac: mac(mac_text),
        ip: ip(ip_text),
    }
}

/// The counters of `client`, (bytes, packets) each way.
fn counters(
    client: Client,
    expires_in_secs: u64,
    (up_bytes, up_packets): (u64, u64),
    (down_bytes, down_packets): (u64, u64),
) -> ClientCounters {
    ClientCounters {
        client,
        expires_in: Duration::from_secs(expires_in_secs),
        up_bytes,
        up_packets,
        down_bytes,
        down_packets,
    }
}

/// The key of a client set: source MAC . source address of `proto`.
fn mac_and(proto: &str) -> Value {
    json!({"concat": [
        {"payload": {"protocol": "ether", "field": "saddr"}},
        {"payload": {"protocol": proto, "field": "saddr"}}]})
}

fn allowed(client: Client, timeout: Duration) -> Call {
    Call::Change(Change::Allow { client, timeout })
}

fn element(key: QuotaKey, quota: &str) -> QuotaElement {
    QuotaElement {
        key,
        quota: quota.to_owned(),
    }
}

/// The rules of the forward chain, in order.
fn forward_rules() -> Vec<rules::Rule> {
    rules::rules(&config())
        .into_iter()
        .filter(|r| r.chain == "forward")
        .collect()
}

/// The objects of the commands `verb kind`.
fn objects<'a>(verbs: &[(&str, &str, &'a Value)], verb: &str, kind: &str) -> Vec<&'a Value> {
    verbs
        .iter()
        .filter(|(v, k, _)| *v == verb && *k == kind)
        .map(|(_, _, object)| *object)
        .collect()
}

// ---- Cidr ----

#[test]
fn cidrs_parse_validate_and_print() {
    let cases = [
        ("10.0.0.0/8", "10.0.0.0/8"),
        (" 10.1.2.3 ", "10.1.2.3/32"),
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("fd00::1", "fd00::1/128"),
        ("192.168.1.128/25", "192.168.1.128/25"),
    ];
    for (text, shown) in cases {
        let parsed: Cidr = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(parsed.to_string(), shown);
        assert_eq!(shown.parse::<Cidr>().expect("round trip"), parsed);
    }
    assert!(cidr("10.1.2.3").is_host());
    assert!(!cidr("10.0.0.0/8").is_host());

    for bad in [
        "",
        "10.0.0.0/",
        "/8",
        "10.0.0/8",
        "10.0.0.0/+8",
        "10.0.0.0/ 8",
        "example.org",
        "10.0.0.0/8/8",
    ] {
        assert_eq!(
            bad.parse::<Cidr>(),
            Err(BadCidr::Syntax(bad.to_owned())),
            "{bad:?}"
        );
    }
    assert!(matches!(
        "10.0.0.0/33".parse::<Cidr>(),
        Err(BadCidr::Prefix { max: 32, .. })
    ));
    assert!(matches!(
        "fd00::/129".parse::<Cidr>(),
        Err(BadCidr::Prefix { max: 128, .. })
    ));
    assert!(matches!(
        "10.0.0.0/256".parse::<Cidr>(),
        Err(BadCidr::Syntax(_))
    ));
    assert_eq!(
        "192.168.1.10/24".parse::<Cidr>(),
        Err(BadCidr::HostBits {
            addr: ip("192.168.1.10"),
            prefix: 24,
            network: ip("192.168.1.0"),
        })
    );
    assert!("fd00::1/64".parse::<Cidr>().is_err());
    // A value built through the public fields is checked again before use.
    let forged = Cidr {
        addr: ip("10.0.0.1"),
        prefix: 8,
    };
    assert!(forged.validated().is_err());
}

#[test]
fn cidr_containment_and_serde() {
    let net = cidr("10.0.0.0/8");
    assert!(net.contains(ip("10.200.0.1")));
    assert!(!net.contains(ip("11.0.0.1")));
    assert!(!net.contains(ip("::a00:1")), "never across families");
    assert!(net.covers(&cidr("10.1.0.0/16")));
    assert!(!cidr("10.1.0.0/16").covers(&net));
    assert!(cidr("0.0.0.0/0").contains(ip("203.0.113.1")));
    assert!(cidr("::/0").contains(ip("2001:db8::1")));

    let parsed: Vec<Cidr> =
        serde_json::from_value(json!(["10.0.0.0/8", "fd00::1"])).expect("serde");
    assert_eq!(parsed, vec![cidr("10.0.0.0/8"), cidr("fd00::1/128")]);
    assert!(serde_json::from_value::<Cidr>(json!("10.0.0.1/8")).is_err());
    assert_eq!(
        serde_json::to_value(cidr("10.0.0.0/8")).expect("serde"),
        json!("10.0.0.0/8")
    );
}

#[test]
fn nested_and_duplicate_networks_are_dropped_for_interval_sets() {
    let kept = minimal_cover(
        [
            "10.1.0.0/16",
            "10.0.0.0/8",
            "10.0.0.0/8",
            "10.2.3.4",
            "11.0.0.1",
            "11.0.0.0/31",
            "12.0.0.0/24",
            "12.0.1.0/24",
        ]
        .map(cidr),
    );
    assert_eq!(
        kept,
        ["10.0.0.0/8", "11.0.0.0/31", "12.0.0.0/24", "12.0.1.0/24"].map(cidr)
    );
}

// ---- configuration and timeouts ----

#[test]
fn config_is_validated_before_use() {
    assert!(config().validate().is_ok());
    let mut plain = FirewallConfig::new("wlan0");
    assert_eq!(plain.table, "edgeshare");
    assert!(plain.validate().is_ok(), "defaults are valid");
    plain.nat = true;
    assert!(matches!(
        plain.validate(),
        Err(FirewallError::InvalidConfig { field: "wan", .. })
    ));

    type Spoil = Box<dyn Fn(&mut FirewallConfig)>;
    let bad: Vec<(&str, Spoil)> = vec![
        ("table", Box::new(|c| c.table = String::new())),
        ("table", Box::new(|c| c.table = "has space".to_owned())),
        ("table", Box::new(|c| c.table = "x".repeat(65))),
        ("lan", Box::new(|c| c.lan = String::new())),
        ("lan", Box::new(|c| c.lan = "a".repeat(16))),
        ("lan", Box::new(|c| c.lan = "eth*".to_owned())),
        ("lan", Box::new(|c| c.lan = "a/b".to_owned())),
        ("lan", Box::new(|c| c.lan = "a b".to_owned())),
        ("lan", Box::new(|c| c.lan = "a\"b".to_owned())),
        ("lan", Box::new(|c| c.lan = "..".to_owned())),
        ("wan", Box::new(|c| c.wan = Some("lan0".to_owned()))),
        ("wan", Box::new(|c| c.wan = Some("eth0:1".to_owned()))),
        ("portal_port", Box::new(|c| c.portal_port = 0)),
        (
            "garden",
            Box::new(|c| {
                c.garden.push(GardenEntry {
                    net: Cidr {
                        addr: ip("10.0.0.1"),
                        prefix: 8,
                    },
                    port: 443,
                })
            }),
        ),
    ];
    for (field, spoil) in bad {
        let mut config = config();
        spoil(&mut config);
        match config.validate() {
            Err(FirewallError::InvalidConfig { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{config:?}: {other:?}"),
        }
    }
}

#[test]
fn kernel_timeouts_are_whole_seconds_rounded_up() {
    for (asked, kernel) in [
        (Duration::ZERO, Duration::from_secs(1)),
        (Duration::from_millis(1), Duration::from_secs(1)),
        (Duration::from_secs(2), Duration::from_secs(2)),
        (Duration::from_millis(2001), Duration::from_secs(3)),
        (Duration::MAX, MAX_TIMEOUT),
        (MAX_TIMEOUT, MAX_TIMEOUT),
    ] {
        assert_eq!(kernel_timeout(asked), kernel, "{asked:?}");
    }
}

// ---- batches ----

#[test]
fn install_batch_creates_sets_without_flushing_clients_and_refills_chains() {
    let config = config();
    let batch = rules::install_batch(&config);
    let verbs = verbs(&batch);

    assert_eq!(verbs[0].0, "add");
    assert_eq!(verbs[0].1, "table");
    assert_eq!(verbs[0].2, &json!({"family": "inet", "name": "es_test"}));

    // Every set is added with its declaration; client sets count per element.
    let sets: Vec<&Value> = objects(&verbs, "add", "set");
    assert_eq!(sets.len(), 8);
    let set = |name: &str| {
        *sets
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("set {name}"))
    };
    for (name, kind) in [
        ("clients4_up", json!(["ether_addr", "ipv4_addr"])),
        ("clients6_up", json!(["ether_addr", "ipv6_addr"])),
        ("clients4_down", json!("ipv4_addr")),
        ("clients6_down", json!("ipv6_addr")),
        ("garden4_tcp", json!(["ipv4_addr", "inet_service"])),
        ("garden6_tcp", json!(["ipv6_addr", "inet_service"])),
    ] {
        assert_eq!(set(name)["type"], kind, "{name}");
    }
    for name in [
        "clients4_up",
        "clients4_down",
        "clients6_up",
        "clients6_down",
    ] {
        assert_eq!(set(name)["flags"], json!(["timeout"]), "{name}");
        assert_eq!(set(name)["stmt"], json!([{"counter": null}]), "{name}");
        assert_eq!(set(name)["table"], "es_test");
    }
    for name in ["garden4_tcp", "garden6_tcp", "dns4", "dns6"] {
        assert_eq!(set(name)["flags"], json!(["interval"]), "{name}");
        assert!(set(name).get("stmt").is_none());
    }

    // Only the garden and DNS sets are flushed, and refilled (nested networks of one port
    // merged, bare hosts, each with its port; resolvers once each).
    let flushed_sets: Vec<&Value> = verbs
        .iter()
        .filter(|(verb, kind, _)| *verb == "flush" && *kind == "set")
        .map(|(_, _, set)| &set["name"])
        .collect();
    assert_eq!(
        flushed_sets,
        ["garden4_tcp", "garden6_tcp", "dns4", "dns6"]
            .map(|s| json!(s))
            .iter()
            .collect::<Vec<_>>()
    );
    let elements: Vec<&Value> = objects(&verbs, "add", "element");
    assert_eq!(elements.len(), 4);
    assert_eq!(elements[0]["name"], "garden4_tcp");
    assert_eq!(
        elements[0]["elem"],
        json!([
            {"concat": [{"prefix": {"addr": "192.0.2.0", "len": 24}}, 443]},
            {"concat": ["198.51.100.9", 443]},
            {"concat": ["192.0.2.7", 8443]},
        ])
    );
    assert_eq!(elements[1]["name"], "garden6_tcp");
    assert_eq!(
        elements[1]["elem"],
        json!([{"concat": [{"prefix": {"addr": "2001:db8::", "len": 32}}, 443]}])
    );
    assert_eq!(elements[2]["name"], "dns4");
    assert_eq!(elements[2]["elem"], json!(["192.0.2.53"]));
    assert_eq!(elements[3]["name"], "dns6");
    assert_eq!(elements[3]["elem"], json!(["2001:db8::53"]));

    // Each chain is added on its hook and priority, then flushed, before any rule.
    let first_rule = verbs
        .iter()
        .position(|(_, kind, _)| *kind == "rule")
        .expect("rules");
    for decl in &CHAINS {
        let added = verbs
            .iter()
            .position(|(verb, kind, c)| {
                *verb == "add" && *kind == "chain" && c["name"] == decl.name
            })
            .unwrap_or_else(|| panic!("chain {}", decl.name));
        let chain = verbs[added].2;
        assert_eq!(chain["hook"], decl.hook);
        assert_eq!(chain["type"], decl.kind);
        assert_eq!(chain["prio"], decl.priority);
        assert_eq!(chain["policy"], "accept");
        assert_eq!(verbs[added + 1].0, "flush");
        assert_eq!(verbs[added + 1].2["name"], decl.name);
        assert!(added < first_rule);
    }
    assert!(
        verbs[first_rule..]
            .iter()
            .all(|(verb, kind, _)| *verb == "add" && *kind == "rule")
    );
    assert_eq!(verbs.len(), first_rule + rules::rules(&config).len());
    // Chain names nft would not parse in a listing are avoided.
    assert!(CHAINS.iter().all(|c| c.name != "fwd"));
}

#[test]
fn every_rule_says_why_and_uses_only_configured_values() {
    let config = config();
    let batch = rules::install_batch(&config);
    let rules: Vec<&Value> = verbs(&batch)
        .into_iter()
        .filter(|(_, kind, _)| *kind == "rule")
        .map(|(_, _, rule)| rule)
        .collect();
    for rule in &rules {
        let comment = rule["comment"].as_str().expect("comment");
        assert!(!comment.is_empty() && comment.len() <= 128, "{comment}");
        // The interface matches name our two interfaces and nothing else.
        for statement in rule["expr"].as_array().expect("expr") {
            let left = &statement["match"]["left"]["meta"]["key"];
            if left == "iifname" || left == "oifname" {
                let name = &statement["match"]["right"];
                assert!(name == "lan0" || name == "wan0", "{statement}");
            }
        }
    }
    let in_chain = |chain: &str| -> Vec<&Value> {
        rules
            .iter()
            .copied()
            .filter(|r| r["chain"] == chain)
            .collect()
    };

    let not_in = |key: Value, set: &str| json!({"match": {"op": "!=", "left": key, "right": set}});
    // prerouting: one redirect per family with the negated MAC . IP lookup, garden and
    // local excluded.
    let pre = in_chain("prerouting");
    assert_eq!(pre.len(), 2);
    let expr6 = &pre[1]["expr"];
    assert_eq!(expr6[2], not_in(mac_and("ip6"), "@clients6_up"));
    assert_eq!(expr6[3]["match"]["right"], "@garden6_tcp");
    assert_eq!(expr6[5], json!({"redirect": {"port": 8080}}));
    let expr = &pre[0]["expr"];
    assert_eq!(expr[2], not_in(mac_and("ip"), "@clients4_up"));
    assert_eq!(expr[1]["match"]["right"], 80);
    assert_eq!(expr[3]["match"]["right"], "@garden4_tcp");
    assert_eq!(
        expr[3]["match"]["left"],
        json!({"concat": [
            {"payload": {"protocol": "ip", "field": "daddr"}},
            {"payload": {"protocol": "tcp", "field": "dport"}}]})
    );
    assert_eq!(expr[3]["match"]["op"], "!=");
    assert_eq!(expr[4]["match"]["left"]["fib"]["result"], "type");
    assert_eq!(expr[4]["match"]["op"], "!=");
    assert_eq!(expr[5], json!({"redirect": {"port": 8080}}));

    // forward: the four session-quota rules come first (see
    // `quota_rules_come_first_and_drop_once_used_up`), then the four client lookups, each
    // ending in accept; downloads only for connections the client opened (unsolicited
    // traffic is neither let in nor billed).
    let all_forward = in_chain("forward");
    let forward = &all_forward[4..];
    let lookup = |rule: &Value| -> Value {
        rule["expr"]
            .as_array()
            .expect("expr")
            .iter()
            .map(|statement| &statement["match"]["right"])
            .find(|right| right.as_str().is_some_and(|s| s.starts_with('@')))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let lookups: Vec<Value> = forward[..4].iter().map(|r| lookup(r)).collect();
    assert_eq!(
        lookups,
        [
            "@clients4_up",
            "@clients4_down",
            "@clients6_up",
            "@clients6_down"
        ]
        .map(|s| json!(s))
    );
    for rule in &forward[..4] {
        assert_eq!(
            rule["expr"].as_array().expect("expr").last(),
            Some(&json!({"accept": null}))
        );
    }
    for rule in [forward[1], forward[3]] {
        assert_eq!(
            rule["expr"][1]["match"]["left"]["ct"]["key"], "state",
            "{rule}"
        );
        assert_eq!(
            rule["expr"][1]["match"]["right"],
            json!(["established", "related"])
        );
    }
    let n = forward.len();
    assert_eq!(
        forward[n - 2]["expr"],
        json!([{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "lan0"}}, {"drop": null}])
    );
    assert_eq!(
        forward[n - 1]["expr"],
        json!([{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "lan0"}}, {"drop": null}])
    );
    // Garden replies only for established connections.
    let replies: Vec<&&Value> = forward
        .iter()
        .filter(|r| {
            r["expr"][1]["match"]["right"]
                .as_str()
                .is_some_and(|s| s.starts_with("@garden"))
        })
        .filter(|r| r["expr"][0]["match"]["left"]["meta"]["key"] == "oifname")
        .collect();
    assert_eq!(replies.len(), 2);
    for reply in replies {
        assert_eq!(reply["expr"][2]["match"]["left"]["ct"]["key"], "state");
    }

    // input: the portal port is open, everything else from the LAN ends in a drop.
    let input = in_chain("input");
    assert!(input.iter().any(|r| r["expr"][1]["match"]["right"] == 8080));
    assert_eq!(
        input.last().expect("input rules")["expr"][1],
        json!({"drop": null})
    );
    for proto in ["icmp", "ipv6-icmp"] {
        assert!(
            input
                .iter()
                .any(|r| r["expr"][1]["match"]["right"] == proto),
            "{proto}"
        );
    }

    // postrouting: masquerade on the WAN only with NAT on.
    let post = in_chain("postrouting");
    assert_eq!(post.len(), 1);
    assert_eq!(post[0]["expr"][0]["match"]["right"], "wan0");
    assert_eq!(post[0]["expr"][1], json!({"masquerade": null}));
    let mut no_nat = config.clone();
    no_nat.nat = false;
    assert!(
        rules::rules(&no_nat)
            .iter()
            .all(|r| r.chain != "postrouting"),
        "no masquerade without NAT"
    );
}

#[test]
fn the_uninstall_batch_does_not_fail_on_an_absent_table() {
    let batch = rules::uninstall_batch("es_test");
    let plan: Vec<(&str, &str)> = verbs(&batch)
        .iter()
        .map(|(verb, kind, _)| (*verb, *kind))
        .collect();
    assert_eq!(plan, [("add", "table"), ("delete", "table")]);
}

// ---- listings ----

fn listed<K>(key: K, expires_secs: u64, bytes: u64, packets: u64) -> Element<K> {
    Element {
        key,
        expires: Some(Duration::from_secs(expires_secs)),
        bytes,
        packets,
    }
}

#[test]
fn listed_elements_become_client_counters() {
    let other = device("02:00:00:00:00:03", "10.0.0.3");
    let up = vec![listed(client4(), 3599, 3456, 12), listed(other, 7, 0, 0)];
    let down = vec![
        listed(client4().ip, 3599, 98765, 20),
        listed(ip("10.0.0.9"), 3599, 60, 1),
    ];
    let joined = listing::join(up, down);
    assert_eq!(
        joined,
        vec![
            counters(client4(), 3599, (3456, 12), (98765, 20)),
            // No download element (yet, or any more): zero, not missing.
            counters(other, 7, (0, 0), (0, 0)),
        ],
        "10.0.0.9 has no upload element and no MAC: left out"
    );

    let v6 = listing::join(
        vec![listed(client6(), 118, 240, 3)],
        vec![listed(client6().ip, 118, 400, 4)],
    );
    assert_eq!(v6, vec![counters(client6(), 118, (240, 3), (400, 4))]);
    assert_eq!(listing::join(Vec::new(), Vec::new()), Vec::new());
}

// ---- errors ----

#[test]
fn errors_name_the_operation() {
    let error = FirewallError::Injected {
        operation: Operation::Allow(client4()),
    };
    assert_eq!(error.operation(), Some(&Operation::Allow(client4())));
    assert!(
        error
            .to_string()
            .contains("allow client 02:00:00:00:00:02 10.0.0.2"),
        "{error}"
    );
    assert_eq!(
        Operation::ListSet("clients4_up").to_string(),
        "list set clients4_up"
    );
}

#[test]
fn missing_nft_is_its_own_error() {
    let firewall = NftFirewall::with_command(
        FirewallConfig::new("lan0"),
        vec!["/nonexistent/edgeshare-test/nft".into()],
    );
    match firewall.install() {
        Err(FirewallError::NftNotFound { operation, .. }) => {
            assert_eq!(operation, Operation::Install)
        }
        other => panic!("{other:?}"),
    }
    // An invalid configuration never reaches nft.
    let bad =
        NftFirewall::with_command(FirewallConfig::new("a/b"), vec!["/nonexistent/nft".into()]);
    assert!(matches!(
        bad.install(),
        Err(FirewallError::InvalidConfig { field: "lan", .. })
    ));
}

#[test]
fn nft_refusals_carry_stderr_and_the_operation() {
    // `false` stands in for an nft that refuses: exit status 1, no output.
    let firewall = NftFirewall::with_command(FirewallConfig::new("lan0"), vec!["false".into()]);
    match firewall.install() {
        Err(FirewallError::Refused {
            operation, status, ..
        }) => {
            assert_eq!(operation, Operation::Install);
            assert!(!status.success());
        }
        other => panic!("{other:?}"),
    }
    // nft's own words, whatever its exit status, are the error's.
    let refusing = [
        "sh",
        "-c",
        "cat >/dev/null; echo 'Error: no table' >&2; exit 3",
        "nft",
    ];
    let firewall = NftFirewall::with_command(
        FirewallConfig::new("lan0"),
        refusing.iter().map(Into::into).collect(),
    );
    match firewall.uninstall() {
        Err(FirewallError::Refused {
            operation, stderr, ..
        }) => {
            assert_eq!(operation, Operation::Uninstall);
            assert_eq!(stderr, "Error: no table");
        }
        other => panic!("{other:?}"),
    }
}

// ---- MemoryFirewall ----

#[test]
fn memory_firewall_models_the_kernel_table() {
    let mut firewall = MemoryFirewall::new();
    let probe = firewall.clone();
    assert!(matches!(
        firewall.allow(&client4(), Duration::from_secs(10)),
        Err(FirewallError::Refused { .. })
    ));
    firewall.install().expect("install");
    assert!(firewall.is_installed().expect("check"));
    firewall
        .allow(&client4(), Duration::from_millis(9_200))
        .expect("allow");
    firewall
        .allow(&client6(), Duration::from_secs(60))
        .expect("allow");
    assert_eq!(probe.allowed(), vec![client4(), client6()]);
    assert_eq!(probe.expires_in(&client4()), Some(Duration::from_secs(10)));

    assert!(probe.set_counters(&client4(), 1_000, 20_000));
    assert!(probe.set_packets(&client4(), 10, 20));
    let unknown = device("02:00:00:00:00:99", "10.0.0.99");
    assert!(!probe.set_counters(&unknown, 1, 1));
    let clients = firewall.clients().expect("clients");
    assert_eq!(clients.len(), 2);
    assert_eq!(
        clients[0],
        counters(client4(), 10, (1_000, 10), (20_000, 20))
    );

    // install again keeps clients (sets are never flushed).
    firewall.install().expect("reinstall");
    assert_eq!(probe.allowed().len(), 2);
    // Re-allowing replaces the elements: new timeout, counters from zero.
    firewall
        .allow(&client4(), Duration::from_secs(30))
        .expect("re-allow");
    let again = firewall.clients().expect("clients");
    assert_eq!(again[0].up_bytes, 0);
    assert_eq!(again[0].expires_in, Duration::from_secs(30));

    // Time runs out on its own.
    probe.advance(Duration::from_secs(30));
    assert_eq!(probe.allowed(), vec![client6()]);
    firewall.revoke(&client6()).expect("revoke");
    firewall.revoke(&client6()).expect("revoking twice is fine");
    assert!(firewall.clients().expect("clients").is_empty());

    assert_eq!(
        probe.calls(),
        vec![
            allowed(client4(), Duration::from_secs(10)),
            Call::Install,
            Call::IsInstalled,
            allowed(client4(), Duration::from_millis(9_200)),
            allowed(client6(), Duration::from_secs(60)),
            Call::Clients,
            Call::Install,
            allowed(client4(), Duration::from_secs(30)),
            Call::Clients,
            Call::Change(Change::Revoke(client6())),
            Call::Change(Change::Revoke(client6())),
            Call::Clients,
        ]
    );
}

#[test]
fn memory_firewall_fails_on_request_and_can_be_flushed() {
    let mut firewall = MemoryFirewall::new();
    firewall.install().expect("install");
    firewall
        .allow(&client4(), Duration::from_secs(60))
        .expect("allow");
    firewall.fail_next(2);
    match firewall.revoke(&client4()) {
        Err(FirewallError::Injected { operation }) => {
            assert_eq!(operation, Operation::Revoke(client4()))
        }
        other => panic!("{other:?}"),
    }
    assert!(firewall.clients().is_err());
    assert_eq!(
        firewall.allowed(),
        vec![client4()],
        "a failed call changes nothing"
    );
    assert_eq!(firewall.clients().expect("third call works").len(), 1);

    // `nft flush ruleset`: the repair loop sees it and installs again; the clients are gone.
    firewall.flush_ruleset();
    assert!(!firewall.is_installed().expect("check"));
    assert!(firewall.clients().is_err());
    firewall.install().expect("repair");
    assert!(firewall.clients().expect("clients").is_empty());

    firewall.uninstall().expect("uninstall");
    assert!(!firewall.installed());
    firewall.uninstall().expect("uninstall twice");
    firewall.clear_calls();
    assert!(firewall.calls().is_empty());
}

#[test]
fn firewalls_are_usable_as_trait_objects() {
    let mut boxed: Vec<Box<dyn Firewall>> = vec![
        Box::new(MemoryFirewall::new()),
        Box::new(NetlinkFirewall::new(FirewallConfig::new("lan0"))),
    ];
    assert!(boxed[0].install().is_ok());
    fn is_send<T: Send>(_: &T) {}
    is_send(&boxed);
    boxed.clear();
}

// ---- session quotas ----

#[test]
fn install_batch_adds_quota_maps_without_flushing_them() {
    let batch = rules::install_batch(&config());
    let verbs = verbs(&batch);
    let maps: Vec<&Value> = objects(&verbs, "add", "map");
    assert_eq!(
        maps,
        [
            &json!({"family": "inet", "table": "es_test", "name": "quota4_up", "type": ["ether_addr", "ipv4_addr"], "map": "quota"}),
            &json!({"family": "inet", "table": "es_test", "name": "quota4_down", "type": "ipv4_addr", "map": "quota"}),
            &json!({"family": "inet", "table": "es_test", "name": "quota6_up", "type": ["ether_addr", "ipv6_addr"], "map": "quota"}),
            &json!({"family": "inet", "table": "es_test", "name": "quota6_down", "type": "ipv6_addr", "map": "quota"}),
        ]
    );
    assert!(
        !verbs
            .iter()
            .any(|(verb, kind, _)| *verb == "flush" && *kind == "map"),
        "quota maps are never flushed"
    );
    assert!(
        !verbs.iter().any(|(_, kind, _)| *kind == "quota"),
        "install leaves quota objects alone"
    );
}

#[test]
fn quota_rules_come_first_and_drop_once_used_up() {
    let forward = forward_rules();
    let lan =
        |dir: &str| json!({"match": {"op": "==", "left": {"meta": {"key": dir}}, "right": "lan0"}});
    let established = json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}});
    let quota = |key: Value, map: &str| json!({"quota": {"map": {"key": key, "data": map}}});
    let drop = json!({"drop": null});
    assert_eq!(
        forward[0].expr,
        [
            lan("iifname"),
            quota(mac_and("ip"), "@quota4_up"),
            drop.clone()
        ]
    );
    assert_eq!(
        forward[1].expr,
        [
            lan("oifname"),
            established.clone(),
            quota(
                json!({"payload": {"protocol": "ip", "field": "daddr"}}),
                "@quota4_down"
            ),
            drop.clone()
        ]
    );
    assert_eq!(
        forward[2].expr,
        [
            lan("iifname"),
            quota(mac_and("ip6"), "@quota6_up"),
            drop.clone()
        ]
    );
    assert_eq!(
        forward[3].expr,
        [
            lan("oifname"),
            established,
            quota(
                json!({"payload": {"protocol": "ip6", "field": "daddr"}}),
                "@quota6_down"
            ),
            drop
        ]
    );
    for rule in &forward[..4] {
        assert!(
            rule.comment.starts_with("session quota"),
            "{}",
            rule.comment
        );
    }
    // The client meters follow, untouched: a quota rule never looks up a client set (that
    // lookup would count the packet twice).
    assert!(forward[..4].iter().all(|r| !r.expr.iter().any(|e| {
        e["match"]["right"]
            .as_str()
            .is_some_and(|s| s.starts_with("@clients"))
    })));
    assert_eq!(forward[4].expr[1]["match"]["right"], "@clients4_up");
}

#[test]
fn session_ids_become_plain_quota_names() {
    assert_eq!(
        rules::quota_name("abc-1_2.3"),
        Some("q_abc-1_2.3".to_owned())
    );
    assert_eq!(
        rules::quota_name(&"x".repeat(64)),
        Some(format!("q_{}", "x".repeat(64)))
    );
    for bad in ["", " ", "a b", "a\"b", "a/b", "é", "a;b", &"x".repeat(65)] {
        assert_eq!(rules::quota_name(bad), None, "{bad:?}");
        assert!(matches!(
            session_quota_name(bad),
            Err(FirewallError::InvalidConfig {
                field: "session",
                ..
            })
        ));
    }
}

fn other4() -> Client {
    device("02:00:00:00:00:03", "10.0.0.3")
}

#[test]
fn set_quota_moves_only_the_right_elements() {
    let existing = [
        // Ours from before: a device no longer in the session, and one still in it.
        element(QuotaKey::Up(other4()), "q_s1"),
        element(QuotaKey::Down(other4().ip), "q_s1"),
        element(QuotaKey::Up(client4()), "q_s1"),
        // The IPv6 client's IP counted against another session: it moves.
        element(QuotaKey::Down(client6().ip), "q_s2"),
        // Another session's device: left alone.
        element(
            QuotaKey::Up(device("02:00:00:00:00:09", "10.0.0.9")),
            "q_s2",
        ),
    ];
    let keys = rules::quota_keys(&[client4(), client6(), client4()]);
    assert_eq!(
        keys,
        [
            QuotaKey::Up(client4()),
            QuotaKey::Up(client6()),
            QuotaKey::Down(client4().ip),
            QuotaKey::Down(client6().ip),
        ]
    );
    let in_map = |keys: &[QuotaKey], map: &str| -> Vec<QuotaKey> {
        keys.iter().copied().filter(|k| k.map() == map).collect()
    };
    let stale = rules::stale_keys("q_s1", &keys, &existing);
    assert_eq!(
        in_map(&stale, "quota4_up"),
        [QuotaKey::Up(client4()), QuotaKey::Up(other4())]
    );
    assert_eq!(in_map(&stale, "quota4_down"), [QuotaKey::Down(other4().ip)]);
    assert!(in_map(&stale, "quota6_up").is_empty());
    assert_eq!(
        in_map(&stale, "quota6_down"),
        [QuotaKey::Down(client6().ip)]
    );
    assert_eq!(stale.len(), 4);

    // Clearing deletes the session's own elements only; nothing listed, nothing to delete.
    assert_eq!(
        rules::stale_keys("q_s2", &[], &existing),
        [
            QuotaKey::Up(device("02:00:00:00:00:09", "10.0.0.9")),
            QuotaKey::Down(client6().ip),
        ]
    );
    assert!(rules::stale_keys("q_s1", &keys, &[]).is_empty());
}

#[test]
fn memory_firewall_models_session_quotas() {
    let mut fw = MemoryFirewall::new();
    assert!(
        fw.set_quota("s1", &[client4()], 10, 0).is_err(),
        "not installed"
    );
    fw.install().expect("install");
    fw.set_quota("s1", &[client4(), client6()], 1_000, 0)
        .expect("set");
    assert_eq!(fw.quota_session(&client4()).as_deref(), Some("s1"));
    assert_eq!(fw.quota_session(&client6()).as_deref(), Some("s1"));
    assert!(fw.use_quota("s1", 400));
    assert!(!fw.quota_exhausted("s1"));
    assert_eq!(
        fw.list_quotas().expect("used").get("s1").copied(),
        Some(SessionQuota {
            limit_bytes: 1_000,
            used_bytes: 400
        })
    );
    assert!(fw.use_quota("s1", 4_000));
    assert!(fw.quota_exhausted("s1"));
    assert_eq!(
        fw.list_quotas()
            .expect("used")
            .get("s1")
            .map(|q| q.used_bytes),
        Some(1_000),
        "listed at most the limit, as nft does"
    );

    // Replacing: a fresh limit, and a client moves to another session.
    fw.set_quota("s1", &[client4()], 50, 0).expect("set again");
    assert_eq!(fw.quota_session(&client6()), None);
    fw.set_quota("s2", &[client4()], 70, 0)
        .expect("other session");
    assert_eq!(fw.quota_session(&client4()).as_deref(), Some("s2"));
    assert_eq!(
        fw.list_quotas().expect("used").get("s1").copied(),
        Some(SessionQuota {
            limit_bytes: 50,
            used_bytes: 0
        })
    );

    fw.clear_quota("s2").expect("clear");
    fw.clear_quota("s2").expect("clearing twice");
    assert_eq!(fw.quota_session(&client4()), None);
    assert_eq!(fw.list_quotas().expect("used").get("s2"), None);
    assert!(!fw.use_quota("s2", 1));
    assert!(matches!(
        fw.set_quota("bad id", &[], 1, 0),
        Err(FirewallError::InvalidConfig {
            field: "session",
            ..
        })
    ));
    assert_eq!(
        fw.calls()[1..4],
        [
            Call::Install,
            Call::Change(Change::SetQuota {
                session: "s1".to_owned(),
                clients: vec![client4(), client6()],
                limit_bytes: 1_000,
                used_bytes: 0,
            }),
            Call::ListQuotas,
        ]
    );
    fw.flush_ruleset();
    assert!(fw.quotas().is_empty());
}

#[test]
fn mid_connection_tcp_of_clients_no_longer_allowed_is_reset_and_nothing_else_is() {
    let forward = forward_rules();
    let n = forward.len();
    let reset = |dir: &str| {
        json!([
            {"match": {"op": "==", "left": {"meta": {"key": dir}}, "right": "lan0"}},
            {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
            {"match": {"op": "==", "left": {"ct": {"key": "state"}}, "right": "established"}},
            {"match": {"op": "==", "left": {"&": [{"ct": {"key": "mark"}}, 0x1000_0000]}, "right": 0x1000_0000}},
            {"reject": {"type": "tcp reset"}}
        ])
    };
    // After every accept (so only clients no longer allowed get there, and no lookup there
    // counts for an element), just before the final drops.
    assert_eq!(json!(forward[n - 4].expr), reset("iifname"));
    assert_eq!(json!(forward[n - 3].expr), reset("oifname"));
    let last_accept = forward
        .iter()
        .rposition(|r| r.expr.last() == Some(&json!({"accept": null})))
        .expect("accept rules");
    assert_eq!(last_accept, n - 5);
    // The only rejects: whatever else a captive device sends is dropped without an answer.
    let rejects = rules::rules(&config())
        .iter()
        .filter(|r| r.expr.iter().any(|e| e.get("reject").is_some()))
        .count();
    assert_eq!(rejects, 2);
}
