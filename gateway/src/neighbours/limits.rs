//! The kernel's neighbour tables (ARP for IPv4, NDP for IPv6) must hold an entry for every
//! LAN device the gateway talks to: the portal's reply, every forwarded packet and the
//! portal's MAC lookup ([`crate::neighbours::lookup_mac`]) need one. Their size limits,
//! `net.ipv{4,6}.neigh.default.gc_thresh1/2/3`, default to 128/512/1024 entries: past 1,024
//! devices a new entry is refused ("neighbour table overflow") unless one at least 5 s old can
//! be evicted, so devices lose the portal or their traffic, and evicted ones are learnt again
//! and again. [`fit`] raises the limits to fit `lan.max_clients`, never lowers them.
//!
//! The limits are the host's: one table holds every network namespace's entries, and only
//! the host's namespace has the keys (a namespace of its own, a container, has none), so
//! there [`fit`] can only say so. There are no per-interface limits either
//! (`/proc/sys/net/ipv4/neigh/<if>/` has no gc_thresh).

use std::path::Path;

/// Where the kernel's tunables are.
pub const PROC_SYS: &str = "/proc/sys";

/// Neighbour entries per device: IPv4 one; IPv6 a link-local, a stable and a temporary
/// (privacy) address.
const TABLES: [(&str, u64); 2] = [("ipv4", 1), ("ipv6", 3)];

/// The three limits for `entries` expected entries: below gc_thresh1 the garbage collector
/// leaves entries alone (no device's entry is dropped and learnt again while the LAN is
/// within `lan.max_clients`); past gc_thresh2 it works harder; gc_thresh3 is the hard limit,
/// with room for the stale entries of devices that left and for the other interfaces'
/// neighbours.
fn wanted(entries: u64) -> [u64; 3] {
    [entries, entries * 2, entries * 4]
}

/// One limit of one table: `net.ipv4.neigh.default.gc_thresh3`, say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub key: String,
    /// Its value before, if it could be read.
    pub was: Option<u64>,
    /// What `lan.max_clients` needs at least.
    pub wanted: u64,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It was high enough already.
    Enough,
    Raised,
    /// It could not be read or raised (read-only /proc/sys, no privilege): the error.
    Failed(String),
}

/// What [`fit`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fitting {
    /// Each limit of each table there is (the IPv6 one is missing with IPv6 off).
    Limits(Vec<Limit>),
    /// This network namespace has no neighbour-table limits: they are the host's.
    NotHostNamespace,
}

/// Raises the neighbour-table limits under `proc_sys` (normally [`PROC_SYS`]) to fit
/// `max_clients` devices. The hard limit is raised first, so the three never cross.
pub fn fit(proc_sys: &Path, max_clients: u32) -> Fitting {
    let mut limits = Vec::new();
    for (family, per_device) in TABLES {
        let family_dir = proc_sys.join("net").join(family);
        if !family_dir.exists() {
            continue;
        }
        let dir = family_dir.join("neigh").join("default");
        if !dir.join("gc_thresh3").exists() {
            return Fitting::NotHostNamespace;
        }
        let wanted = wanted(u64::from(max_clients) * per_device);
        for (index, wanted) in wanted.into_iter().enumerate().rev() {
            let name = format!("gc_thresh{}", index + 1);
            limits.push(fit_one(
                &dir.join(&name),
                format!("net.{family}.neigh.default.{name}"),
                wanted,
            ));
        }
    }
    Fitting::Limits(limits)
}

fn fit_one(path: &Path, key: String, wanted: u64) -> Limit {
    let read = std::fs::read_to_string(path)
        .map_err(|err| err.to_string())
        .and_then(|text| {
            text.trim()
                .parse::<u64>()
                .map_err(|_| format!("{path:?} holds {text:?}, not a number"))
        });
    let was = match read {
        Ok(was) => was,
        Err(err) => {
            return Limit {
                key,
                was: None,
                wanted,
                outcome: Outcome::Failed(err),
            };
        }
    };
    let outcome = if was >= wanted {
        Outcome::Enough
    } else {
        match std::fs::write(path, wanted.to_string()) {
            Ok(()) => Outcome::Raised,
            Err(err) => Outcome::Failed(err.to_string()),
        }
    };
    Limit {
        key,
        was: Some(was),
        wanted,
        outcome,
    }
}

impl Limit {
    /// One line for the log and the command line.
    pub fn describe(&self) -> String {
        let was = self
            .was
            .map_or_else(|| "unknown".to_owned(), |was| was.to_string());
        match &self.outcome {
            Outcome::Enough => format!("{} = {was} (at least {} needed)", self.key, self.wanted),
            Outcome::Raised => format!("{} = {} (raised from {was})", self.key, self.wanted),
            Outcome::Failed(err) => format!(
                "{} = {was}, {} needed, cannot be raised: {err}; set it with sysctl as root",
                self.key, self.wanted
            ),
        }
    }
}

/// What the daemon logs at start when the limits are not the namespace's to set.
pub const NOT_HOST_NAMESPACE: &str = "this network namespace has no neighbour-table limits: \
     they are the host's, shared by all its namespaces; run `edgeshare-gateway neighbour-limits` \
     in the host's namespace, or past 1,024 devices some lose the portal or their traffic";

/// Raises the limits for `max_clients` (see [`fit`]) and logs each change and each limit that
/// stays too low.
pub fn fit_and_log(max_clients: u32) {
    match fit(Path::new(PROC_SYS), max_clients) {
        Fitting::Limits(limits) => {
            for limit in limits {
                match limit.outcome {
                    Outcome::Enough => {}
                    Outcome::Raised => tracing::info!(
                        lan.max_clients = max_clients,
                        "neighbour table: {}",
                        limit.describe()
                    ),
                    Outcome::Failed(_) => tracing::warn!(
                        lan.max_clients = max_clients,
                        "neighbour table: {}",
                        limit.describe()
                    ),
                }
            }
        }
        Fitting::NotHostNamespace => {
            tracing::warn!(lan.max_clients = max_clients, "{NOT_HOST_NAMESPACE}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc_sys(families: &[(&str, [u64; 3])]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (family, values) in families {
            let dir = root.path().join("net").join(family).join("neigh/default");
            std::fs::create_dir_all(&dir).unwrap();
            for (i, value) in values.iter().enumerate() {
                std::fs::write(
                    dir.join(format!("gc_thresh{}", i + 1)),
                    format!("{value}\n"),
                )
                .unwrap();
            }
        }
        root
    }

    fn read(root: &Path, family: &str, n: u32) -> u64 {
        let path = root.join(format!("net/{family}/neigh/default/gc_thresh{n}"));
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn the_defaults_are_raised_to_fit_and_higher_values_are_kept() {
        let root = proc_sys(&[("ipv4", [128, 512, 1024]), ("ipv6", [128, 512, 50_000])]);
        let Fitting::Limits(limits) = fit(root.path(), 2048) else {
            panic!("the host's namespace");
        };
        assert_eq!(limits.len(), 6);
        assert_eq!(
            [1, 2, 3].map(|n| read(root.path(), "ipv4", n)),
            [2048, 4096, 8192]
        );
        assert_eq!(
            [1, 2, 3].map(|n| read(root.path(), "ipv6", n)),
            [6144, 12_288, 50_000]
        );
        let v6_hard = &limits[3];
        assert_eq!(v6_hard.key, "net.ipv6.neigh.default.gc_thresh3");
        assert_eq!(v6_hard.outcome, Outcome::Enough);
        assert_eq!(
            limits[0].describe(),
            "net.ipv4.neigh.default.gc_thresh3 = 8192 (raised from 1024)"
        );
        // Fitted already: nothing more to raise.
        let Fitting::Limits(again) = fit(root.path(), 2048) else {
            panic!("the host's namespace");
        };
        assert!(again.iter().all(|l| l.outcome == Outcome::Enough));
    }

    #[test]
    fn a_namespace_without_the_keys_says_so_and_no_ipv6_is_no_table() {
        let root = proc_sys(&[]);
        std::fs::create_dir_all(root.path().join("net/ipv4/neigh/lo")).unwrap();
        assert_eq!(fit(root.path(), 10), Fitting::NotHostNamespace);

        let root = proc_sys(&[("ipv4", [1, 2, 3])]);
        let Fitting::Limits(limits) = fit(root.path(), 10) else {
            panic!("the host's namespace");
        };
        assert_eq!(limits.len(), 3, "IPv4 only: {limits:?}");
    }

    #[test]
    fn an_unwritable_limit_is_reported_with_what_is_needed() {
        let root = proc_sys(&[("ipv4", [128, 512, 1024])]);
        let hard = root.path().join("net/ipv4/neigh/default/gc_thresh3");
        // A directory where the value should be: reading it fails like a blocked /proc/sys.
        std::fs::remove_file(&hard).unwrap();
        std::fs::create_dir(&hard).unwrap();
        let Fitting::Limits(limits) = fit(root.path(), 2048) else {
            panic!("the host's namespace");
        };
        assert!(
            matches!(limits[0].outcome, Outcome::Failed(_)),
            "{limits:?}"
        );
        assert!(
            limits[0]
                .describe()
                .starts_with("net.ipv4.neigh.default.gc_thresh3 = unknown, 8192 needed"),
            "{}",
            limits[0].describe()
        );
        assert_eq!(limits[1].outcome, Outcome::Raised);
    }
}
