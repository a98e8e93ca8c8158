//! Times the firewall calls the daemon makes per login and per tick, over netlink
//! ([`NetlinkFirewall`]; a benchmark: it prints a table and asserts only that the listings
//! are complete). Run it as root in a network namespace of its own, as `bench/firewall.sh`
//! does:
//!
//! ```text
//! unshare --net target/release/examples/firewall_bench [CLIENTS...]
//! ```
//!
//! For each client count (default 1000 and 2000) it installs a fresh table, allows that many
//! clients (each an upload and a download element), then times one more allow and one
//! `clients()` listing (wall time: the median of `ROUNDS` calls; CPU: this process's and its
//! children's over the `ROUNDS` calls, per call, from `/proc/self/stat` in 10 ms ticks), and
//! removes the table.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use edgeshare_gateway::firewall::{Firewall, FirewallConfig, NetlinkFirewall};
use edgeshare_gateway::net::{Client, Mac};

const ROUNDS: usize = 21;
const TABLE: &str = "es_bench";

fn client(n: u32) -> Client {
    let [_, a, b, c] = n.to_be_bytes();
    Client {
        mac: Mac([0x02, 0, 0, a, b, c]),
        ip: IpAddr::V4(Ipv4Addr::new(10, 66 + a, b, c)),
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// CPU time of this process and its waited-for children so far (user + system), from
/// `/proc/self/stat` (fields 14-17, in USER_HZ = 100 ticks a second on Linux).
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let after_name = stat.rsplit_once(')').expect("stat format").1;
    let ticks: u64 = after_name
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|field| field.parse::<u64>().expect("a tick count"))
        .sum();
    Duration::from_millis(ticks * 10)
}

/// Wall time (the median) and CPU time (the mean) of one call.
fn time(mut call: impl FnMut()) -> (Duration, Duration) {
    let cpu_before = cpu();
    let wall = median(
        (0..ROUNDS)
            .map(|_| {
                let started = Instant::now();
                call();
                started.elapsed()
            })
            .collect(),
    );
    (wall, (cpu() - cpu_before) / ROUNDS as u32)
}

fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

/// A CPU time per call; zero means under one tick over all `ROUNDS` calls.
fn cpu_ms(duration: Duration) -> String {
    if duration.is_zero() {
        format!("<{:.2} ms", 10.0 / ROUNDS as f64)
    } else {
        ms(duration)
    }
}

fn main() {
    let counts: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a client count"))
        .collect();
    let counts = if counts.is_empty() {
        vec![1000, 2000]
    } else {
        counts
    };
    let mut config = FirewallConfig::new("lan0");
    config.table = TABLE.to_owned();
    println!(
        "{:>8}  {:>10}  {:>10}  {:>14}  {:>14}",
        "clients", "allow", "allow CPU", "clients()", "clients() CPU"
    );
    for count in counts {
        let mut firewall = NetlinkFirewall::new(config.clone());
        firewall.install().expect("install");
        for n in 0..count {
            firewall
                .allow(&client(n), Duration::from_secs(3600))
                .expect("allow");
        }
        let extra = client(count);
        let allow = time(|| {
            firewall
                .allow(&extra, Duration::from_secs(3600))
                .expect("allow")
        });
        let listing = time(|| {
            let listed = firewall.clients().expect("clients");
            assert_eq!(listed.len() as u32, count + 1, "every client listed");
        });
        println!(
            "{count:>8}  {:>10}  {:>10}  {:>14}  {:>14}",
            ms(allow.0),
            cpu_ms(allow.1),
            ms(listing.0),
            cpu_ms(listing.1)
        );
        firewall.uninstall().expect("uninstall");
    }
}
