//! Enforcement: the nftables table that keeps captive clients on the portal and lets
//! allowed clients through, behind the small [`Firewall`] trait.
//!
//! Two implementations: [`NetlinkFirewall`] (what the daemon runs) speaks to the kernel
//! over netlink for every per-login and per-tick call, and installs and uninstalls the
//! table with [`NftFirewall`] (the real `nft`, JSON on stdin, one atomic batch each; the
//! CLI's `firewall install` and `firewall remove` use it alone); [`MemoryFirewall`] records
//! calls for unit tests of the daemon shell. nft's batches are built by pure functions
//! (`rules`), the netlink messages and the reading of their replies likewise (`netlink`,
//! `listing`), so all are unit-tested without a kernel.
//!
//! What this module does not do: it does not turn IP forwarding on (the daemon does, once
//! the table is in place, with [`crate::forwarding`]: `net.ipv4.ip_forward=1`, the uplink's
//! `accept_ra=2`, `net.ipv6.conf.all.forwarding=1`; without them nothing is forwarded
//! whatever the table says), it runs no DHCP or DNS server, and it resolves no host
//! names (the walled garden arrives as [`GardenEntry`]s: a network and a TCP port each).
//!
//! # The table
//!
//! Everything lives in one table of our own, `table inet <table>` (default `edgeshare`):
//! `inet` so that one set of chains sees IPv4 and IPv6 alike (no IPv6 bypass), and a table of
//! our own so that another tool reloading its rules does not touch ours, and `uninstall` is
//! one `delete table`. `nft flush ruleset` still removes it: the daemon's repair loop checks
//! [`Firewall::is_installed`] and installs again.
//!
//! Sets (all created with `add`, which leaves an existing set and its elements alone):
//! - `clients4_up` (`ether_addr . ipv4_addr`), `clients6_up` (`ether_addr . ipv6_addr`):
//!   allowed clients, matched on the source of what they send. Binding MAC and IP together
//!   stops a captive device from borrowing an allowed device's IP (or MAC) alone.
//! - `clients4_down` (`ipv4_addr`), `clients6_down` (`ipv6_addr`): the same clients as
//!   destinations. Only the IP is known there: at the forward hook the frame that will carry
//!   the packet to the client has not been built yet.
//! - All four have `flags timeout` (each element has the time left on the client's code, so
//!   the kernel closes access at expiry even if the daemon is down) and `counter` (a packet
//!   and byte counter per element, updated by the forward chain's lookups: the billing meter).
//! - `garden4_tcp` (`ipv4_addr . inet_service`), `garden6_tcp` (`ipv6_addr . inet_service`),
//!   `flags interval`: the walled garden, a network and a TCP destination port per element,
//!   flushed and refilled in every install batch (nested networks of one port merged, which
//!   interval sets require). Only the named port of a garden host is open: its ssh, plain
//!   HTTP (that goes to the portal) and everything else stay closed to captive clients.
//! - `dns4`, `dns6`: the DNS servers besides the gateway that captive clients may query
//!   (`FirewallConfig::dns`), flushed and refilled with the garden. Port 53 to any other
//!   host is dropped while captive: DNS is unbilled, so an open port 53 would be a free,
//!   unmetered tunnel to any server listening there.
//! - `quota4_up`, `quota6_up` (`ether_addr . ipvN_addr : quota`), `quota4_down`,
//!   `quota6_down` (`ipvN_addr : quota`): maps from a client's keys to the named quota object
//!   of its session (see "Session quotas"). Added by `install`, never flushed.
//!
//! `add set` with a declaration that differs from the existing set's fails: a version that
//! changes a set's type or flags must delete the table (losing online clients) first.
//!
//! Chains, and why each sits at its priority:
//! - `prerouting` (nat, hook prerouting, priority `dstnat` = -100): redirects captive
//!   clients' TCP port 80 to the portal. `dstnat` is the standard place for destination NAT:
//!   after conntrack (-200), so the redirect is bound to the connection (nat chains see only
//!   its first packet), and before the routing decision, so the redirected packet is routed
//!   to this host's input. Not redirected: allowed clients, the walled garden, and addresses
//!   of the gateway itself (they reach the input chain as they are). IPv4 and IPv6 alike:
//!   a phone may try IPv6 first, and its captive-portal probe must land on the portal.
//! - `forward` (filter, hook forward, priority `filter` = 0): the enforcement. Session
//!   quotas first (see below), then allowed clients (their lookups are the per-client
//!   meters; towards a client only established/related traffic, so nothing unsolicited gets
//!   in or is billed to it), then the walled garden (replies only towards the LAN), then
//!   DNS to the configured resolvers only, then TCP of connections the daemon cut off gets
//!   a reset (see "Cut-off"), then everything else to or from the LAN is dropped, IPv4 and
//!   IPv6. Priority 0 runs after dstnat, so it sees the
//!   real destination. Every base chain on a hook must accept a packet for it to pass, so
//!   our drops hold whatever other tables do, and their drops hold over our accepts (a host
//!   firewall that drops forwarded traffic must let the LAN through).
//! - `input` (filter, hook input, priority `filter` = 0): what LAN clients may reach on the
//!   gateway itself: DHCP, DHCPv6, DNS, the portal port (also the target of the redirect),
//!   ICMP and ICMPv6 (neighbour discovery must work), replies; nothing else from the LAN.
//!   Traffic from other interfaces is left to the host's own firewall.
//! - `postrouting` (nat, hook postrouting, priority `srcnat` = 100): masquerade on the WAN
//!   interface when NAT is on (empty otherwise), after every filter has had its say.
//!
//! Every rule carries a comment saying why it is there; `nft list table inet edgeshare`
//! shows them.
//!
//! # Counting
//!
//! The element counters count what the `forward` chain accepted for the client: IP packets
//! as the kernel forwards them (IP header included, link-layer header not; with GRO one
//! aggregated packet counts once), upload and download separately. DNS and walled-garden
//! traffic of captive clients is not counted, nor is unsolicited traffic towards a client
//! (dropped); traffic to the gateway itself never is. Counting happens before NAT.
//! Re-allowing a client replaces its elements, which starts their counters again at zero:
//! read [`Firewall::clients`] before, and treat a counter lower than last time as restarted.
//!
//! # Session quotas
//!
//! [`Firewall::set_quota`] makes the kernel itself enforce a byte quota shared by all the
//! devices of a session, upload and download together, so that a client cannot go past it
//! between two reads of the counters, nor while the daemon is down. Each session has a named
//! quota object `q_<session>` (`quota q_S { over N bytes }`), and each of its clients has an
//! element in the quota maps pointing at it (upload: MAC . IP, download: IP). The first four
//! `forward` rules, before the allowed-client accepts, are
//! `iifname LAN quota name ether saddr . ip saddr map @quota4_up drop` and
//! `oifname LAN ct state established,related quota name ip daddr map @quota4_down drop`
//! (and the same for IPv6): each packet of a client with an element adds its IP length to
//! the session's quota, and the packet that reaches the limit, and every one after it, is
//! dropped. A client without an element is not affected (the map lookup fails, the rule
//! ends). The quota counts what the element counters count, plus a client's traffic that a
//! later rule drops (towards an allowed client only established traffic, as for the
//! meters) and, once used up, the dropped packets themselves (nft lists `used` at most the
//! limit). A quota outlives a revoke: call [`Firewall::clear_quota`] when the session
//! ends, or a captive device whose quota is used up cannot reach DNS, the garden or the portal.
//!
//! # Cut-off
//!
//! When a client's access ends, its open TCP connections must not hang until its apps'
//! heartbeats time out. Two `forward` rules after every accept and before the final drops,
//! `iifname LAN meta l4proto tcp ct state established ct mark & CUT == CUT reject with tcp
//! reset` and the same with `oifname`, answer each segment of a connection the daemon
//! marked as cut off (`CUT_MARK`, one bit of the conntrack mark, 0x1000_0000, set by
//! `crate::cutoff` at the cut-off), either way, with a RST whose sequence number is what
//! that segment acknowledged, so its sender takes it (RFC 5961 needs an exact match);
//! recent kernels then put the connection in conntrack's CLOSE state. The daemon then makes
//! both ends speak at once (`crate::cutoff`).
//!
//! Why these conditions: after the accepts, the rules see only traffic of clients not
//! allowed (no set lookup there, so the element counters count exactly as before);
//! `established` without `related` and the mark mean a connection this chain accepted
//! once and the daemon cut off: a captive device's own attempts are never established
//! (their first packet is dropped, so conntrack forgets them) and stay dropped silently,
//! so nothing new is told to a captive device. The mark, not the absence of the client's
//! elements, because the elements are also absent for a moment while the repair loop puts
//! a flushed table back (its sets come back empty): a busy connection of an online client
//! then loses a segment, as before, instead of being reset. For the same reason an
//! element the kernel's timeout removed while the daemon was down drops silently, as
//! before, until the daemon is back and cuts the session off. A reset rather than an
//! ICMP error: TCP stacks need not abort an established connection on "administratively
//! prohibited" (a soft error, RFC 5461), a RST they take. With a used-up quota, the quota
//! rules, which come first, drop silently until the daemon ends the session (at most one
//! tick) and clears the quota; the daemon marks and probes after that.
//!
//! Calls wait for the kernel (or `nft`): from async code call them inside `spawn_blocking`.

mod cidr;
mod listing;
mod memory;
mod netlink;
mod nft;
mod rules;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::IpAddr;
use std::process::ExitStatus;
use std::time::Duration;

use crate::net::Client;

pub use cidr::{
    BadCidr, BadGardenEntry, Cidr, GARDEN_DEFAULT_PORT, GardenEntry, split_garden_port,
};
pub use memory::{Call, MemoryFirewall};
pub use netlink::NetlinkFirewall;
pub use nft::NftFirewall;
pub(crate) use rules::CUT_MARK;

/// The longest kernel timeout [`Firewall::allow`] sets: 2^32 - 1 milliseconds, the limit of
/// older kernels' timeout arithmetic. Longer times are clamped: allow the client again before
/// this runs out.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(4_294_967);

/// What the table enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallConfig {
    /// Our own table (family `inet`), default `edgeshare`: 1-64 letters, digits, `_`, `-`.
    pub table: String,
    /// The interface consumers join (the Wi-Fi access point or a LAN port).
    pub lan: String,
    /// The uplink; needed for NAT.
    pub wan: Option<String>,
    /// Masquerade forwarded traffic leaving on `wan`.
    pub nat: bool,
    /// The portal's TCP port on the gateway; captive port-80 traffic is redirected here.
    pub portal_port: u16,
    /// What captive clients may reach besides DNS and the portal: each entry one network on
    /// one TCP port (the backend's API, extra hosts or CIDRs).
    pub garden: Vec<GardenEntry>,
    /// DNS servers other than the gateway itself that captive clients may query (port 53,
    /// UDP and TCP): the ones DHCP hands out. DNS to any other host is dropped while captive.
    pub dns: Vec<IpAddr>,
}

impl FirewallConfig {
    /// The defaults around a LAN interface: table `edgeshare`, no WAN, no NAT, portal on
    /// 8080, empty garden, DNS only to the gateway itself.
    pub fn new(lan: impl Into<String>) -> Self {
        FirewallConfig {
            table: "edgeshare".to_owned(),
            lan: lan.into(),
            wan: None,
            nat: false,
            portal_port: 8080,
            garden: Vec::new(),
            dns: Vec::new(),
        }
    }

    /// Checks every name and number that ends up in a rule. [`Firewall::install`] runs this
    /// first; it is public so that a `check-config` can run it too.
    pub fn validate(&self) -> Result<(), FirewallError> {
        let invalid = |field, problem: String| Err(FirewallError::InvalidConfig { field, problem });
        if !valid_table_name(&self.table) {
            return invalid(
                "table",
                format!(
                    "{:?} is not a table name (1-64 letters, digits, '_' or '-')",
                    self.table
                ),
            );
        }
        if !valid_interface_name(&self.lan) {
            return invalid("lan", interface_problem(&self.lan));
        }
        if let Some(wan) = &self.wan {
            if !valid_interface_name(wan) {
                return invalid("wan", interface_problem(wan));
            }
            if *wan == self.lan {
                return invalid("wan", format!("{wan:?} must differ from the LAN interface"));
            }
        }
        if self.nat && self.wan.is_none() {
            return invalid(
                "wan",
                "is needed for NAT (masquerade on the uplink)".to_owned(),
            );
        }
        if self.portal_port == 0 {
            return invalid("portal_port", "must be a port from 1 to 65535".to_owned());
        }
        for entry in &self.garden {
            if let Err(bad) = entry.net.validated() {
                return invalid("garden", bad.to_string());
            }
            if entry.port == 0 {
                return invalid("garden", format!("{entry}: port 0 is not a port"));
            }
        }
        Ok(())
    }
}

fn interface_problem(name: &str) -> String {
    format!("{name:?} is not an interface name (1-15 bytes; no '/', ':', '*', spaces or quotes)")
}

/// Linux's own rule (`dev_valid_name`) plus `*` (a wildcard in nft's interface matches),
/// quotes and control characters.
fn valid_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '/' | ':' | '*' | '"' | '\\')
        })
}

fn valid_table_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// One allowed client as the kernel counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCounters {
    pub client: Client,
    /// Until the kernel removes the client (whole seconds, rounded down, as nft lists it).
    pub expires_in: Duration,
    /// What the client sent that was forwarded (IP bytes and packets).
    pub up_bytes: u64,
    pub up_packets: u64,
    /// What was forwarded to the client.
    pub down_bytes: u64,
    pub down_packets: u64,
}

/// A session's kernel-side quota as listed: [`Firewall::list_quotas`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionQuota {
    /// The limit given to the last [`Firewall::set_quota`] (at most `i64::MAX`).
    pub limit_bytes: u64,
    /// What the session has used: what the last [`Firewall::set_quota`] said it had used,
    /// plus what its clients used since (IP bytes, both directions). nft lists at most
    /// `limit_bytes`: at the limit the quota is used up and the kernel drops the session's
    /// traffic.
    pub used_bytes: u64,
}

/// What the firewall was doing when it failed (for error messages and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    Install,
    CheckInstalled,
    Allow(Client),
    Revoke(Client),
    /// Listing one set's elements for [`Firewall::clients`].
    ListSet(&'static str),
    Uninstall,
    /// [`Firewall::set_quota`] of a session (its opaque id).
    SetQuota(String),
    /// [`Firewall::clear_quota`] of a session.
    ClearQuota(String),
    /// [`Firewall::list_quotas`].
    ListQuotas,
    /// Listing one quota map's elements, for `set_quota` and `clear_quota`.
    ListMap(&'static str),
    /// Opening the netlink socket ([`NetlinkFirewall::open`]).
    OpenSocket,
    /// A batch of this many changes ([`Firewall::apply`]).
    Apply(usize),
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::Install => f.write_str("install the table"),
            Operation::CheckInstalled => f.write_str("check the table"),
            Operation::Allow(client) => write!(f, "allow client {client}"),
            Operation::Revoke(client) => write!(f, "revoke client {client}"),
            Operation::ListSet(set) => write!(f, "list set {set}"),
            Operation::Uninstall => f.write_str("delete the table"),
            Operation::SetQuota(session) => write!(f, "set the quota of session {session}"),
            Operation::ClearQuota(session) => write!(f, "clear the quota of session {session}"),
            Operation::ListQuotas => f.write_str("list the session quotas"),
            Operation::ListMap(map) => write!(f, "list map {map}"),
            Operation::OpenSocket => f.write_str("open the nf_tables netlink socket"),
            Operation::Apply(count) => write!(f, "apply a batch of {count} changes"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("firewall configuration: {field} {problem}")]
    InvalidConfig {
        field: &'static str,
        problem: String,
    },
    #[error("cannot {operation}: {program:?} not found (is nftables installed?)")]
    NftNotFound {
        program: OsString,
        operation: Operation,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {operation}: running {program:?} failed")]
    Spawn {
        program: OsString,
        operation: Operation,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{stderr} (nft, {status}, refused to {operation}){}",
        refusal_hint(stderr)
    )]
    Refused {
        operation: Operation,
        status: ExitStatus,
        stderr: String,
    },
    /// The kernel refused a netlink request (or the netlink socket could not be opened).
    #[error(
        "cannot {operation}: the kernel said {} over netlink{}",
        std::io::Error::from_raw_os_error(*errno),
        errno_hint(*errno)
    )]
    Netlink { operation: Operation, errno: i32 },
    /// A netlink reply that does not parse.
    #[error("cannot {operation}: unexpected netlink reply: {detail}")]
    Reply {
        operation: Operation,
        detail: String,
    },
    #[error("cannot {operation}: failure injected by MemoryFirewall::fail_next")]
    Injected { operation: Operation },
}

/// What to do about a refusal, from nft's own words; empty where its text says it all.
fn refusal_hint(stderr: &str) -> &'static str {
    if stderr.contains("Could not resolve protocol name")
        || stderr.contains("Could not resolve service")
    {
        // nft 1.0 looks protocol and port names up in /etc/protocols and /etc/services,
        // which minimal images lack.
        "; nft reads protocol and service names from /etc/protocols and /etc/services: install the netbase package"
    } else if stderr.contains("Operation not permitted") {
        errno_hint(libc::EPERM)
    } else if stderr.contains("Protocol not supported") {
        errno_hint(libc::EPROTONOSUPPORT)
    } else {
        ""
    }
}

/// What to do about a refusal with this errno (nft's words for these are the errno's).
fn errno_hint(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => {
            "; changing nftables needs CAP_NET_ADMIN: run as root, or grant it to the service"
        }
        libc::EPROTONOSUPPORT => {
            "; the kernel has no nf_tables support loaded (modprobe nf_tables, or a kernel with it)"
        }
        _ => "",
    }
}

impl FirewallError {
    /// The operation that failed, if the error came from one.
    pub fn operation(&self) -> Option<&Operation> {
        match self {
            FirewallError::InvalidConfig { .. } => None,
            FirewallError::NftNotFound { operation, .. }
            | FirewallError::Spawn { operation, .. }
            | FirewallError::Refused { operation, .. }
            | FirewallError::Netlink { operation, .. }
            | FirewallError::Reply { operation, .. }
            | FirewallError::Injected { operation } => Some(operation),
        }
    }
}

/// One change of the kernel's per-client state (see [`Firewall::apply`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// [`Firewall::allow`].
    Allow { client: Client, timeout: Duration },
    /// [`Firewall::revoke`].
    Revoke(Client),
    /// [`Firewall::set_quota`].
    SetQuota {
        session: String,
        clients: Vec<Client>,
        limit_bytes: u64,
        used_bytes: u64,
    },
    /// [`Firewall::clear_quota`].
    ClearQuota(String),
}

impl Change {
    /// What this change does, for an error naming it.
    pub fn operation(&self) -> Operation {
        match self {
            Change::Allow { client, .. } => Operation::Allow(*client),
            Change::Revoke(client) => Operation::Revoke(*client),
            Change::SetQuota { session, .. } => Operation::SetQuota(session.clone()),
            Change::ClearQuota(session) => Operation::ClearQuota(session.clone()),
        }
    }
}

/// The operation of a batch of `changes`: the change's own when there is one.
fn batch_operation(changes: &[Change]) -> Operation {
    match changes {
        [one] => one.operation(),
        _ => Operation::Apply(changes.len()),
    }
}

/// The enforcement the daemon shell drives: reads, and batches of changes each applied
/// atomically ([`Firewall::apply`]); `allow`, `revoke`, `set_quota` and `clear_quota` are
/// batches of one.
pub trait Firewall: Send {
    /// Creates or repairs our table in ONE atomic batch, idempotently: sets are added if
    /// missing and never flushed (online clients survive a daemon restart), chains are added
    /// if missing, flushed and refilled, the walled-garden sets are replaced.
    fn install(&mut self) -> Result<(), FirewallError>;

    /// True if our table is in place with all its sets and chains, each chain holding
    /// exactly the rules `install` puts there (the repair loop installs again when not, e.g.
    /// after `nft flush ruleset`, or `nft flush table`).
    fn is_installed(&mut self) -> Result<bool, FirewallError>;

    /// Applies `changes` in order as one batch: all of them, or (on an error) none.
    fn apply(&mut self, changes: &[Change]) -> Result<(), FirewallError>;

    /// Lets `client` through for `timeout` (ceiled to whole seconds, at least 1 s, at most
    /// [`MAX_TIMEOUT`]): adds or replaces its elements in the upload set (MAC . IP) and the
    /// download set (IP). Replacing restarts the element counters at zero.
    ///
    /// The download set is keyed by IP alone: when a session moves to another MAC on the
    /// same IP, revoke the old client before allowing the new one, not after.
    fn allow(&mut self, client: &Client, timeout: Duration) -> Result<(), FirewallError> {
        self.apply(&[Change::Allow {
            client: *client,
            timeout,
        }])
    }

    /// Stops `client` now; not an error if it is not allowed.
    fn revoke(&mut self, client: &Client) -> Result<(), FirewallError> {
        self.apply(&[Change::Revoke(*client)])
    }

    /// Every allowed client with its time left and kernel counters, sorted by client.
    fn clients(&mut self) -> Result<Vec<ClientCounters>, FirewallError>;

    /// Deletes our table (`stop`); not an error if it is not there.
    fn uninstall(&mut self) -> Result<(), FirewallError>;

    /// Gives `session` (an opaque id, 1-64 ASCII letters, digits, `_`, `-`, `.`; not the
    /// code) a kernel-side quota of `limit_bytes` (at most `i64::MAX`) of which `used_bytes`
    /// are already used, shared by `clients`, upload and download together (see "Session
    /// quotas" in the module doc): once they have used it up, the kernel drops their
    /// forwarded traffic. Starting the quota at what the session has used keeps the
    /// session's total in the kernel, where it outlives the daemon and its state file:
    /// [`Firewall::list_quotas`] gives it back, with what was counted while the daemon was
    /// down.
    ///
    /// Replaces the session's quota and client list: what the kernel counted before is
    /// replaced by `used_bytes`, the session's clients not in `clients` stop counting
    /// against it, and a client of another session's quota moves to this one. `clients` should be allowed clients (a quota lets
    /// nothing through; `revoke` still closes access). Not atomic with the listing it reads
    /// first, so make quota calls from one thread.
    fn set_quota(
        &mut self,
        session: &str,
        clients: &[Client],
        limit_bytes: u64,
        used_bytes: u64,
    ) -> Result<(), FirewallError> {
        self.apply(&[Change::SetQuota {
            session: session.to_owned(),
            clients: clients.to_vec(),
            limit_bytes,
            used_bytes,
        }])
    }

    /// Removes the session's quota and its clients' elements (they are no longer limited);
    /// not an error if the session has none.
    fn clear_quota(&mut self, session: &str) -> Result<(), FirewallError> {
        self.apply(&[Change::ClearQuota(session.to_owned())])
    }

    /// Every session's quota and what it has used, by session id (one listing for all, as
    /// the daemon checks them every tick).
    fn list_quotas(&mut self) -> Result<BTreeMap<String, SessionQuota>, FirewallError>;
}

/// The quota object of `session`, or the error for an id that cannot be one.
pub(crate) fn session_quota_name(session: &str) -> Result<String, FirewallError> {
    rules::quota_name(session).ok_or_else(|| FirewallError::InvalidConfig {
        field: "session",
        problem: format!(
            "{session:?} is not a session id (1-{} ASCII letters, digits, '_', '-' or '.')",
            rules::MAX_SESSION_LEN
        ),
    })
}

/// The kernel timeout for a requested one: whole seconds rounded up, 1 s to [`MAX_TIMEOUT`].
pub fn kernel_timeout(requested: Duration) -> Duration {
    let secs = requested
        .as_secs()
        .saturating_add(u64::from(requested.subsec_nanos() > 0));
    Duration::from_secs(secs.clamp(1, MAX_TIMEOUT.as_secs()))
}
